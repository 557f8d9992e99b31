/*
 * cpu_kernels_neon.c - the CPU kernels for arm64 (Advanced SIMD: 32 registers of 4
 * floats, fused multiply-add, both in the AArch64 base architecture): the direct
 * convolution keeps 8 channels x 2 vectors of 4 positions in 16 accumulators, leaving
 * registers for the inputs and the weights. Compiled on arm64 targets only.
 */
#define KTABLE cpu_kernels_neon
#define KNAME "neon"
#define VW 4
#define COB 8
#define NV 2
#include "models/cpu_kernels_impl.h"
