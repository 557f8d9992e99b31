/*
 * cpu_kernels_generic.c - the CPU kernels in plain C for any target (baseline x86-64:
 * SSE2), the path every CPU can run (SEP_CPU_ISA=generic).
 */
#define KTABLE cpu_kernels_generic
#define KNAME "generic"
#define VW 4
#define COB 4
#define NV 2
#include "models/cpu_kernels_impl.h"
