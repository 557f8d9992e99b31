/*
 * emu.cc - the CPU emulation of the CUDA runtime, cuBLAS and cuFFT calls the CUDA
 * backend makes (declared in cuda_runtime.h, cublas_v2.h and cufft.h of this folder;
 * what it shows and what it cannot: cuda_runtime.h).
 */
#include "cublas_v2.h"
#include "cufft.h"
#include "cuda_runtime.h"

#include <barrier>
#include <math.h>
#include <memory>
#include <mutex>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <thread>
#include <vector>

thread_local uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

static cudaError_t last_error = cudaSuccess;
static std::mutex error_lock;

static cudaError_t set_error(cudaError_t e)
{
    std::lock_guard<std::mutex> g(error_lock);
    if (e != cudaSuccess)
        last_error = e;
    return e;
}

cudaError_t cudaGetDeviceCount(int *count)
{
    /* SEP_CUDA_EMU_DEVICES=0: a machine without a GPU */
    const char *n = getenv("SEP_CUDA_EMU_DEVICES");
    *count = n ? atoi(n) : 1;
    return *count > 0 ? cudaSuccess : cudaErrorNoDevice;
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void)
{
    std::lock_guard<std::mutex> g(error_lock);
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaSetDevice(int device)
{
    int count;
    cudaGetDeviceCount(&count);
    return set_error(device >= 0 && device < count ? cudaSuccess : cudaErrorInvalidValue);
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (bytes > ((size_t)64 << 30)) /* a size no test should ask for */
        return set_error(cudaErrorMemoryAllocation);
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    return set_error(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}

cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}

struct cuda_emu_stream {
    unsigned flags;
};

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    *s = new cuda_emu_stream{flags};
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    return s ? cudaSuccess : set_error(cudaErrorInvalidValue);
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if (bytes && (!dst || !src))
        return set_error(cudaErrorInvalidValue);
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s)
{
    if (!s)
        return set_error(cudaErrorInvalidValue);
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t s)
{
    if (!s || width > dpitch || width > spitch)
        return set_error(cudaErrorInvalidValue);
    for (size_t r = 0; r < height; r++)
        memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s)
{
    if (!s)
        return set_error(cudaErrorInvalidValue);
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned flags)
{
    return p && bytes ? cudaSuccess : set_error(cudaErrorInvalidValue);
}

cudaError_t cudaHostUnregister(void *p)
{
    return cudaSuccess;
}

/* ---- launches ---- */

static void die(const char *what)
{
    fprintf(stderr, "cuda emulation: %s\n", what);
    abort();
}

/* the cooperative launch in progress: its barriers and the shuffle exchange */
static std::barrier<> *block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static double shuffle_slot[1024];
static thread_local int in_coop_launch;

static unsigned linear_thread(void)
{
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

void __syncthreads(void)
{
    if (!in_coop_launch)
        die("__syncthreads in a kernel not launched with CUDA_LAUNCH_COOP");
    block_barrier->arrive_and_wait();
}

static double shuffle_down(double v, int delta)
{
    if (!in_coop_launch)
        die("a warp shuffle in a kernel not launched with CUDA_LAUNCH_COOP");
    unsigned t = linear_thread(), lane = t % 32, warp = t / 32;
    unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
    if (nthreads % 32)
        die("a warp shuffle in a block that is not whole warps");
    shuffle_slot[t] = v;
    warp_barriers[warp]->arrive_and_wait();
    double r = lane + delta < 32 ? shuffle_slot[t + delta] : v;
    warp_barriers[warp]->arrive_and_wait();
    return r;
}

float __shfl_down_sync(unsigned mask, float v, int delta)
{
    return (float)shuffle_down(v, delta);
}

double __shfl_down_sync(unsigned mask, double v, int delta)
{
    return shuffle_down(v, delta);
}

void cuda_emu_run(dim3 grid, dim3 block, int coop, const std::function<void()> &body)
{
    size_t nthreads = (size_t)block.x * block.y * block.z;
    /* the launch limits of every GPU the backend is built for */
    if (nthreads < 1 || nthreads > 1024 || block.z > 64 || grid.x < 1 || grid.y < 1 ||
        grid.z < 1 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
        set_error(cudaErrorInvalidConfiguration);
        return;
    }
    blockDim = block;
    gridDim = grid;
    if (!coop) {
        for (unsigned bz = 0; bz < grid.z; bz++)
            for (unsigned by = 0; by < grid.y; by++)
                for (unsigned bx = 0; bx < grid.x; bx++) {
                    blockIdx = {bx, by, bz};
                    for (unsigned tz = 0; tz < block.z; tz++)
                        for (unsigned ty = 0; ty < block.y; ty++)
                            for (unsigned tx = 0; tx < block.x; tx++) {
                                threadIdx = {tx, ty, tz};
                                body();
                            }
                }
        return;
    }
    std::barrier<> bar((std::ptrdiff_t)nthreads);
    block_barrier = &bar;
    warp_barriers.clear();
    for (size_t w = 0; w < (nthreads + 31) / 32; w++) {
        size_t in_warp = nthreads - w * 32 < 32 ? nthreads - w * 32 : 32;
        warp_barriers.emplace_back(new std::barrier<>((std::ptrdiff_t)in_warp));
    }
    std::vector<std::thread> threads;
    for (size_t t = 0; t < nthreads; t++)
        threads.emplace_back([&, t] {
            in_coop_launch = 1;
            threadIdx = {(unsigned)(t % block.x), (unsigned)(t / block.x % block.y),
                         (unsigned)(t / ((size_t)block.x * block.y))};
            for (unsigned bz = 0; bz < grid.z; bz++)
                for (unsigned by = 0; by < grid.y; by++)
                    for (unsigned bx = 0; bx < grid.x; bx++) {
                        blockIdx = {bx, by, bz};
                        body();
                        bar.arrive_and_wait(); /* the block's shared memory is reused */
                    }
            in_coop_launch = 0;
        });
    for (auto &th : threads)
        th.join();
    block_barrier = nullptr;
    warp_barriers.clear();
}

/* ---- cuBLAS ---- */

struct cuda_emu_blas {
    cudaStream_t stream;
    cublasMath_t mode;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new cuda_emu_blas{nullptr, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    h->mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    /* reference BLAS argument checks (op(A) is m x k, op(B) k x n, C m x n) */
    int rows_a = transa == CUBLAS_OP_N ? m : k, rows_b = transb == CUBLAS_OP_N ? k : n;
    if (!h || m < 0 || n < 0 || k < 0 || lda < (rows_a > 1 ? rows_a : 1) ||
        ldb < (rows_b > 1 ? rows_b : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (h->mode != CUBLAS_PEDANTIC_MATH)
        return CUBLAS_STATUS_NOT_SUPPORTED; /* the backend's fp32 parity mode */
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double acc = 0.0;
            for (int l = 0; l < k; l++) {
                double a = transa == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                double b = transb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                acc += a * b;
            }
            float *c = &C[i + (size_t)j * ldc];
            /* beta = 0: C is not read (it may hold anything, NaNs included) */
            *c = (float)(*alpha * acc + (*beta != 0.0f ? *beta * (double)*c : 0.0));
        }
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuFFT ---- */

struct emu_plan {
    int n, batch, in_use;
    cufftType type;
};
static std::vector<emu_plan> plans;

cufftResult cufftPlan1d(cufftHandle *plan, int nx, cufftType type, int batch)
{
    if (nx < 2 || batch < 1 || (type != CUFFT_R2C && type != CUFFT_C2R))
        return CUFFT_INVALID_VALUE;
    plans.push_back(emu_plan{nx, batch, 1, type});
    *plan = (cufftHandle)plans.size() - 1;
    return CUFFT_SUCCESS;
}

static emu_plan *plan_of(cufftHandle h, cufftType type)
{
    if (h < 0 || (size_t)h >= plans.size() || !plans[h].in_use || plans[h].type != type)
        return nullptr;
    return &plans[h];
}

cufftResult cufftSetStream(cufftHandle plan, cudaStream_t s)
{
    if (plan < 0 || (size_t)plan >= plans.size() || !plans[plan].in_use)
        return CUFFT_INVALID_PLAN;
    return CUFFT_SUCCESS;
}

cufftResult cufftExecR2C(cufftHandle plan, cufftReal *in, cufftComplex *out)
{
    emu_plan *p = plan_of(plan, CUFFT_R2C);
    if (!p)
        return CUFFT_INVALID_PLAN;
    int n = p->n, nb = n / 2 + 1;
    for (int b = 0; b < p->batch; b++) {
        const float *x = in + (size_t)b * n;
        cufftComplex *z = out + (size_t)b * nb;
        for (int f = 0; f < nb; f++) {
            double re = 0, im = 0;
            for (int t = 0; t < n; t++) {
                double a = -2.0 * M_PI * (double)((long)f * t % n) / n;
                re += x[t] * cos(a);
                im += x[t] * sin(a);
            }
            z[f].x = (float)re;
            z[f].y = (float)im;
        }
    }
    return CUFFT_SUCCESS;
}

cufftResult cufftExecC2R(cufftHandle plan, cufftComplex *in, cufftReal *out)
{
    emu_plan *p = plan_of(plan, CUFFT_C2R);
    if (!p)
        return CUFFT_INVALID_PLAN;
    int n = p->n, nb = n / 2 + 1;
    for (int b = 0; b < p->batch; b++) {
        const cufftComplex *z = in + (size_t)b * nb;
        float *x = out + (size_t)b * n;
        for (int t = 0; t < n; t++) {
            /* Hermitian extension: bins 0 and n/2 count by their real parts */
            double acc = z[0].x + (n % 2 == 0 ? z[n / 2].x * ((t % 2) ? -1.0 : 1.0) : 0.0);
            for (int f = 1; f < (n + 1) / 2; f++) {
                double a = 2.0 * M_PI * (double)((long)f * t % n) / n;
                acc += 2.0 * (z[f].x * cos(a) - z[f].y * sin(a));
            }
            x[t] = (float)acc;
        }
    }
    return CUFFT_SUCCESS;
}

cufftResult cufftDestroy(cufftHandle plan)
{
    if (plan < 0 || (size_t)plan >= plans.size() || !plans[plan].in_use)
        return CUFFT_INVALID_PLAN;
    plans[plan].in_use = 0;
    return CUFFT_SUCCESS;
}
