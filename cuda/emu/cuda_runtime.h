/*
 * cuda_runtime.h (emulation) - the part of the CUDA runtime the backend uses, run on
 * the CPU, so that the backend's own code (kernels, launch geometry, cuBLAS / cuFFT
 * call conventions, scratch carving, chunking) can execute and be tested on a machine
 * without a GPU: `make test-cuda-emu` builds the .cu files of cuda/ with g++ against these headers
 * (-DSEP_CUDA_EMULATION) and runs the ops and parity tests on it.
 *
 * Device memory is host memory (under AddressSanitizer in the test build, so a kernel
 * reading or writing outside a buffer is caught). A launch runs every block in order;
 * the threads of a plain launch (CUDA_LAUNCH) run one after the other, those of a
 * cooperative one (CUDA_LAUNCH_COOP) as real threads with __syncthreads and warp
 * shuffles as barriers. Streams are synchronous. What this cannot show: races and
 * memory-model bugs, GPU resource limits beyond the launch geometry checked here,
 * the real libraries' numerics, and speed.
 */
#ifndef SEP_CUDA_EMU_RUNTIME_H
#define SEP_CUDA_EMU_RUNTIME_H

#include <functional>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct double2 {
    double x, y;
};
static inline double2 make_double2(double x, double y)
{
    double2 d = {x, y};
    return d;
}

/* one launch at a time in the process (launches from several host threads take
 * turns), so these are plain globals */
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorNoDevice = 100,
} cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

typedef struct cuda_emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 0x01
#define cudaHostRegisterPortable 0x01

cudaError_t cudaGetDeviceCount(int *count);
const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s);
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t s);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s);
cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned flags);
cudaError_t cudaHostUnregister(void *p);

/* device side */
void __syncthreads(void);
float __shfl_down_sync(unsigned mask, float v, int delta);
double __shfl_down_sync(unsigned mask, double v, int delta);

/* launches (cuda_internal.h's CUDA_LAUNCH / CUDA_LAUNCH_COOP) */
void cuda_emu_run(dim3 grid, dim3 block, int coop, const std::function<void()> &body);

template <class... P> struct cuda_emu_launcher {
    void (*kernel)(P...);
    dim3 grid, block;
    int coop;
    template <class... A> void operator()(A... args) const
    {
        cuda_emu_run(grid, block, coop, [&] { kernel(args...); });
    }
};

template <class... P>
cuda_emu_launcher<P...> cuda_emu_launch(void (*kernel)(P...), dim3 grid, dim3 block, int coop)
{
    return cuda_emu_launcher<P...>{kernel, grid, block, coop};
}

#endif
