/*
 * cpu_kernels_avx2.c - the CPU kernels for x86-64-v3 (AVX2 + FMA, 16 ymm registers):
 * the direct convolution keeps 6 channels x 2 vectors of 8 positions in 12
 * accumulators, leaving registers for the inputs and the broadcast weight.
 * Built with -march=x86-64-v3; only called when the CPU supports it.
 */
#define KTABLE cpu_kernels_avx2
#define KNAME "avx2"
#define VW 8
#define COB 6
#define NV 2
#include "models/cpu_kernels_impl.h"
