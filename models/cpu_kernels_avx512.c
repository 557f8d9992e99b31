/*
 * cpu_kernels_avx512.c - the CPU kernels for x86-64-v4 (AVX-512, 32 zmm registers):
 * the direct convolution keeps 8 channels x 2 vectors of 16 positions in 16
 * accumulators. Built with -march=x86-64-v4; only called when the CPU supports it.
 */
#define KTABLE cpu_kernels_avx512
#define KNAME "avx512"
#define VW 16
#define COB 8
#define NV 2
#include "models/cpu_kernels_impl.h"
