/*
 * cufft.h (emulation) - 1-D batched R2C / C2R plans on the CPU for the emulated build
 * of the CUDA backend (see cuda_runtime.h here): cuFFT's layouts (batch b of an R2C
 * reads n reals at b * n and writes n/2 + 1 complex at b * (n/2 + 1); C2R the other
 * way), unnormalised, the C2R reading only the real parts of bins 0 and n/2; computed
 * as direct DFTs in double.
 */
#ifndef SEP_CUDA_EMU_CUFFT_H
#define SEP_CUDA_EMU_CUFFT_H

#include "cuda_runtime.h"

typedef enum {
    CUFFT_SUCCESS = 0,
    CUFFT_INVALID_PLAN = 1,
    CUFFT_ALLOC_FAILED = 2,
    CUFFT_INVALID_TYPE = 3,
    CUFFT_INVALID_VALUE = 4,
    CUFFT_EXEC_FAILED = 6,
} cufftResult;

typedef enum { CUFFT_R2C = 0x2a, CUFFT_C2R = 0x2c } cufftType;
typedef int cufftHandle;
typedef float cufftReal;
typedef struct {
    float x, y;
} cufftComplex;

cufftResult cufftPlan1d(cufftHandle *plan, int nx, cufftType type, int batch);
cufftResult cufftSetStream(cufftHandle plan, cudaStream_t s);
cufftResult cufftExecR2C(cufftHandle plan, cufftReal *in, cufftComplex *out);
cufftResult cufftExecC2R(cufftHandle plan, cufftComplex *in, cufftReal *out);
cufftResult cufftDestroy(cufftHandle plan);

#endif
