/*
 * backend.cu - the CUDA backend: creation, memory, synchronisation, errors, destroy,
 * and its operation table (the operations themselves are in kernels_*.cu).
 *
 * fp32 throughout (cuBLAS in pedantic math mode: no TF32), one non-blocking stream per
 * backend; every operation is queued on it. Uploads and downloads wait for their copy
 * (uploads too, so the host buffer may be freed or reused as soon as upload returns,
 * pinned or not). Creation failures return NULL with the reason, so callers can fall
 * back to the CPU; failures inside operations are recorded (cuda_internal.h).
 */
#include "cuda/cuda_host.h"
#include "cuda/cuda_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cuda_impl *cuda_impl_of(sep_backend *be)
{
    return (cuda_impl *)be->impl;
}

void cuda_fail(cuda_impl *c, const char *fmt, ...)
{
    if (c->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    c->failed = 1;
    fprintf(stderr, "cuda backend: %s\n", c->error);
}

int cuda_check(cuda_impl *c, cudaError_t e, const char *what, const char *file, int line)
{
    if (e == cudaSuccess)
        return 0;
    cuda_fail(c, "cuda: %s: %s (%s:%d)", what, cudaGetErrorString(e), file, line);
    return -1;
}

static const char *cublas_status_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
        return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
        return "cuBLAS error";
    }
}

int cublas_check(cuda_impl *c, cublasStatus_t s, const char *what, const char *file, int line)
{
    if (s == CUBLAS_STATUS_SUCCESS)
        return 0;
    cuda_fail(c, "cuda: %s: %s (%d) (%s:%d)", what, cublas_status_name(s), (int)s, file, line);
    return -1;
}

int cufft_check(cuda_impl *c, cufftResult r, const char *what, const char *file, int line)
{
    if (r == CUFFT_SUCCESS)
        return 0;
    cuda_fail(c, "cuda: %s: cuFFT error %d (%s:%d)", what, (int)r, file, line);
    return -1;
}

cuda_impl *cuda_enter(sep_backend *be)
{
    cuda_impl *c = cuda_impl_of(be);
    if (c->failed)
        return NULL;
    /* the current device is per host thread: an engine may run on another thread
     * than the one that created it */
    if (!CU_OK(c, cudaSetDevice(c->device)))
        return NULL;
    return c;
}

void *cuda_scratch(cuda_impl *c, size_t bytes)
{
    bytes = cuda_align256(bytes ? bytes : 1);
    if (bytes <= c->scratch_bytes)
        return c->scratch;
    /* queued operations may still read the old buffer */
    if (!CU_OK(c, cudaStreamSynchronize(c->stream)))
        return NULL;
    if (c->scratch && !CU_OK(c, cudaFree(c->scratch)))
        return NULL;
    c->scratch = NULL;
    c->scratch_bytes = 0;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is not sticky in the runtime */
        cuda_fail(c, "cuda: out of device memory for %zu bytes of scratch: %s", bytes,
                  cudaGetErrorString(e));
        return NULL;
    }
    c->scratch = (float *)p;
    c->scratch_bytes = bytes;
    return p;
}

/* ---- memory ---- */

static void *cu_alloc(sep_backend *be, size_t bytes)
{
    cuda_impl *c = cuda_enter(be);
    if (!c)
        return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 256);
    if (e != cudaSuccess) {
        /* out of memory: the caller reports it; clear the runtime's last error so the
         * next launch check does not see it */
        (void)cudaGetLastError();
        return NULL;
    }
    return p;
}

static void cu_free(sep_backend *be, void *p)
{
    cuda_impl *c = cuda_impl_of(be);
    if (!p)
        return;
    /* after a failure the context may be unusable; the memory goes with it */
    if (c->failed)
        return;
    if (!CU_OK(c, cudaSetDevice(c->device)))
        return;
    /* queued operations may still use the block */
    if (CU_OK(c, cudaStreamSynchronize(c->stream)))
        CU_OK(c, cudaFree(p));
}

static void cu_upload(sep_backend *be, void *dst, const void *host_src, size_t bytes)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || !bytes)
        return;
    if (CU_OK(c, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream)))
        CU_OK(c, cudaStreamSynchronize(c->stream));
}

static void cu_download(sep_backend *be, void *host_dst, const void *src, size_t bytes)
{
    cuda_impl *c = cuda_enter(be);
    if (c && bytes &&
        CU_OK(c, cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream)) &&
        CU_OK(c, cudaStreamSynchronize(c->stream)))
        return;
    /* after a failure: NaNs (all bits set), never stale numbers that could pass */
    if (bytes && cuda_impl_of(be)->failed)
        memset(host_dst, 0xff, bytes);
}

static void cu_zero(sep_backend *be, float *dst, size_t count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || !count)
        return;
    CU_OK(c, cudaMemsetAsync(dst, 0, count * sizeof(float), c->stream));
}

static const float *cu_weights(sep_backend *be, const float *host, size_t count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c)
        return NULL;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, count ? count * sizeof(float) : 256);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    if (count && (!CU_OK(c, cudaMemcpyAsync(p, host, count * sizeof(float), cudaMemcpyHostToDevice,
                                            c->stream)) ||
                  !CU_OK(c, cudaStreamSynchronize(c->stream)))) {
        cudaFree(p);
        return NULL;
    }
    return (const float *)p;
}

static void cu_weights_free(sep_backend *be, const float *dev)
{
    cu_free(be, (void *)dev);
}

static void cu_sync(sep_backend *be)
{
    cuda_impl *c = cuda_enter(be);
    if (c)
        CU_OK(c, cudaStreamSynchronize(c->stream));
}

static int cu_status(sep_backend *be, char *err, size_t errlen)
{
    cuda_impl *c = cuda_impl_of(be);
    if (!c->failed) {
        /* errors of work already queued show up at a synchronisation */
        if (CU_OK(c, cudaSetDevice(c->device)))
            CU_OK(c, cudaStreamSynchronize(c->stream));
    }
    if (!c->failed)
        return 0;
    snprintf(err, errlen, "%s", c->error);
    return -1;
}

static void cu_destroy(sep_backend *be)
{
    if (!be)
        return;
    cuda_impl *c = cuda_impl_of(be);
    if (c) {
        cudaSetDevice(c->device);
        if (c->stream)
            cudaStreamSynchronize(c->stream);
        cuda_spec_release(c);
        if (c->scratch)
            cudaFree(c->scratch);
        if (c->blas)
            cublasDestroy(c->blas);
        if (c->stream)
            cudaStreamDestroy(c->stream);
        free(c);
    }
    free(be);
}

static const sep_backend_ops cuda_ops = {
    .alloc = cu_alloc,
    .free = cu_free,
    .upload = cu_upload,
    .download = cu_download,
    .zero = cu_zero,
    .weights = cu_weights,
    .weights_free = cu_weights_free,
    .sync = cu_sync,
    .status = cu_status,
    .conv2d = cuda_conv2d,
    .conv_tr2d = cuda_conv_tr2d,
    .linear = cuda_linear,
    .attention = cuda_attention,
    .group_norm = cuda_group_norm,
    .group_norm_rows = cuda_group_norm_rows,
    .dconv_residual = cuda_dconv_residual,
    .group_norm_tokens = cuda_group_norm_tokens,
    .layer_norm = cuda_layer_norm,
    .moments = cuda_moments,
    .normalize = cuda_normalize,
    .denormalize = cuda_denormalize,
    .gelu = cuda_gelu,
    .relu = cuda_relu,
    .glu = cuda_glu,
    .add = cuda_add,
    .add_scaled_channels = cuda_add_scaled_channels,
    .add_scaled_last = cuda_add_scaled_last,
    .add_table = cuda_add_table,
    .add_freq_table = cuda_add_freq_table,
    .permute4 = cuda_permute4,
    .copy_rows = cuda_copy_rows,
    .spec = cuda_spec,
    .ispec = cuda_ispec,
    .destroy = cu_destroy,
};

extern "C" sep_backend *sep_cuda_backend_create(int device, char *err, size_t errlen)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(err, errlen, "cuda: no CUDA device: %s", cudaGetErrorString(e));
        (void)cudaGetLastError();
        return NULL;
    }
    if (count < 1) {
        snprintf(err, errlen, "cuda: no CUDA device: the driver found none");
        return NULL;
    }
    if (device < 0 || device >= count) {
        snprintf(err, errlen, "cuda: no CUDA device %d (%d device%s)", device, count,
                 count == 1 ? "" : "s");
        return NULL;
    }
    sep_backend *be = (sep_backend *)calloc(1, sizeof(*be));
    cuda_impl *c = (cuda_impl *)calloc(1, sizeof(*c));
    if (!be || !c) {
        free(be);
        free(c);
        snprintf(err, errlen, "cuda: out of host memory");
        return NULL;
    }
    c->device = device;
    be->name = "cuda";
    be->ops = &cuda_ops;
    be->threads = 1;
    be->host_memory = 0;
    be->impl = c;
    const char *step = NULL;
    cublasStatus_t bs = CUBLAS_STATUS_SUCCESS;
    if ((e = cudaSetDevice(device)) != cudaSuccess)
        step = "cudaSetDevice";
    else if ((e = cudaFree(0)) != cudaSuccess) /* creates the context now */
        step = "creating the context";
    else if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
        step = "cudaStreamCreate";
    if (step) {
        snprintf(err, errlen, "cuda: device %d: %s: %s", device, step, cudaGetErrorString(e));
        (void)cudaGetLastError();
        cu_destroy(be);
        return NULL;
    }
    if ((bs = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS) {
        c->blas = NULL;
        step = "cublasCreate";
    } else if ((bs = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
        step = "cublasSetStream";
    /* fp32 parity mode: no TF32 or other reduced-precision shortcuts */
    else if ((bs = cublasSetMathMode(c->blas, CUBLAS_PEDANTIC_MATH)) != CUBLAS_STATUS_SUCCESS)
        step = "cublasSetMathMode";
    if (step) {
        snprintf(err, errlen, "cuda: device %d: %s: %s", device, step, cublas_status_name(bs));
        cu_destroy(be);
        return NULL;
    }
    /* what the handle's creation queued on other streams is done before ours runs */
    if ((e = cudaDeviceSynchronize()) != cudaSuccess) {
        snprintf(err, errlen, "cuda: device %d: cudaDeviceSynchronize: %s", device,
                 cudaGetErrorString(e));
        (void)cudaGetLastError();
        cu_destroy(be);
        return NULL;
    }
    return be;
}

/* ---- pinned host memory (workerd's shared arena) ---- */

extern "C" int sep_cuda_host_register(void *base, size_t bytes, char *err, size_t errlen)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count < 1) {
        (void)cudaGetLastError();
        snprintf(err, errlen, "no CUDA device: %s",
                 e != cudaSuccess ? cudaGetErrorString(e) : "the driver found none");
        return 1;
    }
    e = cudaHostRegister(base, bytes, cudaHostRegisterPortable);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        snprintf(err, errlen, "cudaHostRegister(%zu bytes): %s", bytes, cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

extern "C" void sep_cuda_host_unregister(void *base)
{
    if (cudaHostUnregister(base) != cudaSuccess)
        (void)cudaGetLastError();
}
