/*
 * cuda_internal.h - state and helpers shared by the files of the CUDA backend.
 *
 * One backend owns one stream, one cuBLAS handle, one scratch buffer and a small
 * cache of cuFFT plans. Every operation runs on the stream in order, so scratch may
 * be reused from one operation to the next without synchronising. Every CUDA,
 * cuBLAS and cuFFT call is checked; the first failure is recorded (sticky): later
 * operations do nothing, download() fills its destination with NaNs and the
 * backend's status() reports the message (the engine checks it after a forward).
 */
#ifndef SEP_CUDA_INTERNAL_H
#define SEP_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cufft.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "models/backend.h"
}

#define CUDA_MAX_FFT_PLANS 8
/* threads per block of the element-wise and reduction kernels */
#define CUDA_THREADS 256

typedef struct {
    int nfft, batch, inverse; /* R2C (inverse 0) or C2R (inverse 1) of `batch` frames */
    cufftHandle plan;
    unsigned long last_use;
} cuda_fft_plan;

typedef struct {
    int nfft;
    float *window; /* device copy of torch.hann_window(nfft) (periodic) */
} cuda_window;

typedef struct {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    float *scratch; /* grows as needed, kept between calls */
    size_t scratch_bytes;
    cuda_fft_plan plans[CUDA_MAX_FFT_PLANS];
    int n_plans;
    unsigned long plan_clock;
    cuda_window windows[CUDA_MAX_FFT_PLANS];
    int n_windows;
    int failed; /* sticky: the first failure, in `error` */
    char error[512];
} cuda_impl;

/* ---- backend.cu ---- */

cuda_impl *cuda_impl_of(sep_backend *be);
/* The backend's state for an operation, its device made current; NULL after a failure
 * (the operation then does nothing). */
cuda_impl *cuda_enter(sep_backend *be);
/* Records a failure (the first one is kept) and prints it once. */
void cuda_fail(cuda_impl *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Checks a call's result: 0 when it succeeded, else records the failure and -1. */
int cuda_check(cuda_impl *c, cudaError_t e, const char *what, const char *file, int line);
int cublas_check(cuda_impl *c, cublasStatus_t s, const char *what, const char *file, int line);
int cufft_check(cuda_impl *c, cufftResult r, const char *what, const char *file, int line);
/* At least `bytes` of device scratch (256-byte aligned); NULL (recorded) when out of
 * memory. The previous contents are not kept when it grows. */
void *cuda_scratch(cuda_impl *c, size_t bytes);

/* true when the check passed (usable as a statement too) */
static inline bool cuda_ok(int check_result)
{
    return check_result == 0;
}
#define CU_OK(c, call) cuda_ok(cuda_check((c), (call), #call, __FILE__, __LINE__))
#define CUBLAS_OK(c, call) cuda_ok(cublas_check((c), (call), #call, __FILE__, __LINE__))
#define CUFFT_OK(c, call) cuda_ok(cufft_check((c), (call), #call, __FILE__, __LINE__))
/* after a kernel launch: the launch configuration was accepted */
#define LAUNCH_OK(c, name) cuda_ok(cuda_check((c), cudaGetLastError(), name, __FILE__, __LINE__))

/* Kernel launches: CUDA_LAUNCH(kernel, grid, block, stream)(arguments...). A kernel
 * whose threads cooperate (__syncthreads, warp shuffles) is launched with
 * CUDA_LAUNCH_COOP. Both are the <<<>>> launch here; the CPU emulation of the CUDA
 * runtime (cuda/emu/) runs the threads of a plain launch one after the other and those
 * of a cooperative one concurrently. */
#ifdef SEP_CUDA_EMULATION
#define CUDA_LAUNCH(kernel, grid, block, stream) cuda_emu_launch(kernel, (grid), (block), 0)
#define CUDA_LAUNCH_COOP(kernel, grid, block, stream) cuda_emu_launch(kernel, (grid), (block), 1)
#else
#define CUDA_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#define CUDA_LAUNCH_COOP(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>
#endif

/* Rounds up to a multiple of 256 bytes (carving several buffers out of scratch). */
static inline size_t cuda_align256(size_t bytes)
{
    return (bytes + 255) / 256 * 256;
}

/* Blocks for a grid-stride loop over n items with CUDA_THREADS threads per block. */
static inline unsigned cuda_blocks(size_t n)
{
    size_t b = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    if (b < 1)
        b = 1;
    if (b > 65536)
        b = 65536;
    return (unsigned)b;
}

/* ---- operations (one file per family) ---- */

/* kernels_gemm.cu */
void cuda_conv2d(sep_backend *be, const sep_conv2d_desc *d, float *out, const float *in,
                 const float *w, const float *bias);
void cuda_conv_tr2d(sep_backend *be, const sep_conv_tr2d_desc *d, float *out, const float *in,
                    const float *w, const float *bias);
void cuda_linear(sep_backend *be, float *out, const float *in, const float *w, const float *bias,
                 int batch, int rows, int in_dim, int out_dim, int act);

/* kernels_attention.cu */
void cuda_attention(sep_backend *be, const sep_attention_desc *d, float *out, const float *q,
                    const float *k, const float *v);

/* kernels_norm.cu */
void cuda_group_norm(sep_backend *be, float *out, const float *in, const float *gamma,
                     const float *beta, int n, int c, int spatial, int groups, float eps, int act);
void cuda_group_norm_rows(sep_backend *be, float *out, const float *in, const float *gamma,
                          const float *beta, int n, int c, int h, int w, float eps, int act);
void cuda_dconv_residual(sep_backend *be, float *x, const float *y, const float *gamma,
                         const float *beta, const float *scale, int n, int c, int h, int w,
                         float eps);
void cuda_group_norm_tokens(sep_backend *be, float *out, const float *in, const float *gamma,
                            const float *beta, int n, int tokens, int c, float eps);
void cuda_layer_norm(sep_backend *be, float *out, const float *in, const float *gamma,
                     const float *beta, int rows, int dim, float eps);
void cuda_moments(sep_backend *be, float *mean, float *std, const float *in, int n, int count);
void cuda_normalize(sep_backend *be, float *out, const float *in, const float *mean,
                    const float *std, int n, int count, float eps);
void cuda_denormalize(sep_backend *be, float *out, const float *in, const float *mean,
                      const float *std, int n, int count);

/* kernels_elementwise.cu */
void cuda_gelu(sep_backend *be, float *out, const float *in, size_t count);
void cuda_relu(sep_backend *be, float *out, const float *in, size_t count);
void cuda_glu(sep_backend *be, float *out, const float *in, int n, int c, int spatial);
void cuda_add(sep_backend *be, float *out, const float *a, const float *b, size_t count);
void cuda_add_scaled_channels(sep_backend *be, float *x, const float *y, const float *scale, int n,
                              int c, int spatial);
void cuda_add_scaled_last(sep_backend *be, float *x, const float *y, const float *scale, int rows,
                          int c);
void cuda_add_table(sep_backend *be, float *x, const float *table, float alpha, int n, int count);
void cuda_add_freq_table(sep_backend *be, float *x, const float *table, float alpha, int n, int c,
                         int f, int t);
void cuda_permute4(sep_backend *be, float *out, const float *in, const int dims[4],
                   const int perm[4]);
void cuda_copy_rows(sep_backend *be, float *out, size_t out_stride, const float *in,
                    size_t in_stride, int rows, size_t len);
/* bias + activation over y[rows][cols] (row stride ld): y = act(y + bias[row or col]) */
void cuda_bias_act(cuda_impl *c, float *y, size_t ld, int rows, int cols, const float *bias,
                   int bias_per_row, int act);

/* kernels_spec.cu */
void cuda_spec(sep_backend *be, float *out, const float *in, int nsig, int length, int nfft);
void cuda_ispec(sep_backend *be, float *out, const float *in, int nsig, int frames, int length,
                int nfft);
void cuda_spec_release(cuda_impl *c); /* plans and windows, at destroy */

/* ---- device helpers ---- */

/* GELU, erf form (torch.nn.functional.gelu default) */
static __device__ __forceinline__ float dev_gelu(float x)
{
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* x * sigmoid(g), written as the CPU kernels write it */
static __device__ __forceinline__ float dev_glu(float a, float g)
{
    return a / (1.0f + expf(-g));
}

static __device__ __forceinline__ float dev_act(float x, int act)
{
    if (act == SEP_ACT_GELU)
        return dev_gelu(x);
    if (act == SEP_ACT_RELU)
        return x > 0.0f ? x : 0.0f;
    return x;
}

#endif
