/*
 * kernels_elementwise.cu - the element-wise and layout operations of the CUDA backend
 * (GELU, ReLU, GLU, additions, embeddings tables, permute4, copy_rows) and the bias +
 * activation epilogue the GEMM-based operations share.
 *
 * Every kernel is a grid-stride loop over its output elements with 64-bit indices;
 * each element is computed exactly as the CPU backend computes it.
 */
#include "cuda/cuda_internal.h"

__global__ void k_gelu(float *out, const float *in, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = dev_gelu(in[i]);
}

__global__ void k_relu(float *out, const float *in, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

/* out [n][c][spatial] from in [n][2c][spatial] */
__global__ void k_glu(float *out, const float *in, int n, size_t plane)
{
    size_t total = (size_t)n * plane;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t b = i / plane, j = i % plane;
        const float *a = in + b * 2 * plane;
        out[i] = dev_glu(a[j], a[plane + j]);
    }
}

__global__ void k_add(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void k_add_scaled_channels(float *x, const float *y, const float *scale, int c,
                                      size_t spatial, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += scale[(i / spatial) % c] * y[i];
}

__global__ void k_add_scaled_last(float *x, const float *y, const float *scale, int c, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        if (scale)
            x[i] += scale[i % c] * y[i];
        else
            x[i] += y[i];
    }
}

__global__ void k_add_table(float *x, const float *table, float alpha, size_t count, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += alpha * table[i % count];
}

/* x [n][c][f][t] += alpha * table[f][c] */
__global__ void k_add_freq_table(float *x, const float *table, float alpha, int c, int f, size_t t,
                                 size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / t;
        int fi = (int)(r % f), ch = (int)((r / f) % c);
        float v = alpha * table[(size_t)fi * c + ch];
        x[i] += v;
    }
}

struct permute_args {
    int od[4];        /* output dims */
    size_t stride[4]; /* input stride of each output dim */
};

__global__ void k_permute4(float *out, const float *in, permute_args a, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i;
        size_t i3 = r % a.od[3];
        r /= a.od[3];
        size_t i2 = r % a.od[2];
        r /= a.od[2];
        size_t i1 = r % a.od[1];
        size_t i0 = r / a.od[1];
        out[i] = in[i0 * a.stride[0] + i1 * a.stride[1] + i2 * a.stride[2] + i3 * a.stride[3]];
    }
}

__global__ void k_copy_rows(float *out, size_t out_stride, const float *in, size_t in_stride,
                            size_t len, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / len, j = i % len;
        out[r * out_stride + j] = in[r * in_stride + j];
    }
}

/* y[r][j] = act(y[r][j] + bias[r or j]) */
__global__ void k_bias_act(float *y, size_t ld, int rows, int cols, const float *bias,
                           int bias_per_row, int act)
{
    size_t total = (size_t)rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, j = i % cols;
        float *p = y + r * ld + j;
        float v = *p;
        if (bias)
            v += bias[bias_per_row ? r : j];
        *p = dev_act(v, act);
    }
}

/* ---- operations ---- */

void cuda_bias_act(cuda_impl *c, float *y, size_t ld, int rows, int cols, const float *bias,
                   int bias_per_row, int act)
{
    if (c->failed || rows <= 0 || cols <= 0)
        return;
    if (!bias && act != SEP_ACT_GELU && act != SEP_ACT_RELU)
        return;
    size_t n = (size_t)rows * cols;
    CUDA_LAUNCH(k_bias_act, cuda_blocks(n), CUDA_THREADS, c->stream)
    (y, ld, rows, cols, bias, bias_per_row, act);
    LAUNCH_OK(c, "bias_act kernel");
}

void cuda_gelu(sep_backend *be, float *out, const float *in, size_t count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || !count)
        return;
    CUDA_LAUNCH(k_gelu, cuda_blocks(count), CUDA_THREADS, c->stream)(out, in, count);
    LAUNCH_OK(c, "gelu kernel");
}

void cuda_relu(sep_backend *be, float *out, const float *in, size_t count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || !count)
        return;
    CUDA_LAUNCH(k_relu, cuda_blocks(count), CUDA_THREADS, c->stream)(out, in, count);
    LAUNCH_OK(c, "relu kernel");
}

void cuda_glu(sep_backend *be, float *out, const float *in, int n, int c_, int spatial)
{
    cuda_impl *c = cuda_enter(be);
    size_t plane = (size_t)c_ * spatial;
    if (!c || n <= 0 || !plane)
        return;
    CUDA_LAUNCH(k_glu, cuda_blocks(n * plane), CUDA_THREADS, c->stream)(out, in, n, plane);
    LAUNCH_OK(c, "glu kernel");
}

void cuda_add(sep_backend *be, float *out, const float *a, const float *b, size_t count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || !count)
        return;
    CUDA_LAUNCH(k_add, cuda_blocks(count), CUDA_THREADS, c->stream)(out, a, b, count);
    LAUNCH_OK(c, "add kernel");
}

void cuda_add_scaled_channels(sep_backend *be, float *x, const float *y, const float *scale, int n,
                              int c_, int spatial)
{
    cuda_impl *c = cuda_enter(be);
    size_t total = (size_t)n * c_ * spatial;
    if (!c || n <= 0 || c_ <= 0 || spatial <= 0)
        return;
    CUDA_LAUNCH(k_add_scaled_channels, cuda_blocks(total), CUDA_THREADS, c->stream)
    (x, y, scale, c_, (size_t)spatial, total);
    LAUNCH_OK(c, "add_scaled_channels kernel");
}

void cuda_add_scaled_last(sep_backend *be, float *x, const float *y, const float *scale, int rows,
                          int c_)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || rows <= 0 || c_ <= 0)
        return;
    size_t total = (size_t)rows * c_;
    CUDA_LAUNCH(k_add_scaled_last, cuda_blocks(total), CUDA_THREADS, c->stream)
    (x, y, scale, c_, total);
    LAUNCH_OK(c, "add_scaled_last kernel");
}

void cuda_add_table(sep_backend *be, float *x, const float *table, float alpha, int n, int count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || count <= 0)
        return;
    size_t total = (size_t)n * count;
    CUDA_LAUNCH(k_add_table, cuda_blocks(total), CUDA_THREADS, c->stream)
    (x, table, alpha, (size_t)count, total);
    LAUNCH_OK(c, "add_table kernel");
}

void cuda_add_freq_table(sep_backend *be, float *x, const float *table, float alpha, int n, int c_,
                         int f, int t)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || c_ <= 0 || f <= 0 || t <= 0)
        return;
    size_t total = (size_t)n * c_ * f * t;
    CUDA_LAUNCH(k_add_freq_table, cuda_blocks(total), CUDA_THREADS, c->stream)
    (x, table, alpha, c_, f, (size_t)t, total);
    LAUNCH_OK(c, "add_freq_table kernel");
}

void cuda_permute4(sep_backend *be, float *out, const float *in, const int dims[4],
                   const int perm[4])
{
    cuda_impl *c = cuda_enter(be);
    if (!c)
        return;
    size_t istride[4];
    istride[3] = 1;
    for (int i = 2; i >= 0; i--)
        istride[i] = istride[i + 1] * (size_t)dims[i + 1];
    permute_args a;
    size_t total = 1;
    for (int i = 0; i < 4; i++) {
        if (perm[i] < 0 || perm[i] > 3 || dims[perm[i]] < 0) {
            cuda_fail(c, "cuda: permute4: bad permutation or dimensions");
            return;
        }
        a.od[i] = dims[perm[i]];
        a.stride[i] = istride[perm[i]];
        total *= (size_t)a.od[i];
    }
    if (!total)
        return;
    CUDA_LAUNCH(k_permute4, cuda_blocks(total), CUDA_THREADS, c->stream)(out, in, a, total);
    LAUNCH_OK(c, "permute4 kernel");
}

void cuda_copy_rows(sep_backend *be, float *out, size_t out_stride, const float *in,
                    size_t in_stride, int rows, size_t len)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || rows <= 0 || !len)
        return;
    if (rows == 1) { /* a plain copy (the strides do not matter) */
        CU_OK(c,
              cudaMemcpyAsync(out, in, len * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
        return;
    }
    if (out_stride >= len && in_stride >= len) {
        CU_OK(c, cudaMemcpy2DAsync(out, out_stride * sizeof(float), in, in_stride * sizeof(float),
                                   len * sizeof(float), (size_t)rows, cudaMemcpyDeviceToDevice,
                                   c->stream));
        return;
    }
    /* overlapping rows (a stride shorter than a row): element by element */
    size_t total = (size_t)rows * len;
    CUDA_LAUNCH(k_copy_rows, cuda_blocks(total), CUDA_THREADS, c->stream)
    (out, out_stride, in, in_stride, len, total);
    LAUNCH_OK(c, "copy_rows kernel");
}
