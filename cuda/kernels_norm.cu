/*
 * kernels_norm.cu - the normalisations of the CUDA backend: GroupNorm (per group,
 * per frequency row, per token block), LayerNorm, the fused DConv residual, and the
 * per-sample moments / normalisation of the input.
 *
 * Statistics are reduced in double like the CPU backend: the elements of each
 * "segment" (one group, one row, one sample) are split into at most MAX_PARTS
 * contiguous parts; one block sums a part (sum and sum of squares in double, a
 * fixed-shape tree inside the block) into scratch, and a second kernel adds the parts
 * of each segment in order. The order of the sums depends only on the segment's size,
 * never on the batch, so a batch gives the same bits as single runs. The affine (and
 * activation) is then applied by an element-wise kernel with the CPU's formulas.
 */
#include "cuda/cuda_internal.h"

#define MAX_PARTS 128
#define PART_MIN 8192 /* elements per part at least */

/* Where the elements of a segment are: segment g starts at
 *   (g / inner) * outer_stride + (g % inner) * inner_stride
 * and holds nsub runs of sublen floats, substride apart. */
struct seg_layout {
    int nseg;
    int inner;
    size_t outer_stride, inner_stride;
    int nsub;
    size_t sublen, substride;
};

static __device__ __forceinline__ size_t seg_elem(const seg_layout &L, int g, size_t e)
{
    size_t base = (size_t)(g / L.inner) * L.outer_stride + (size_t)(g % L.inner) * L.inner_stride;
    return base + (e / L.sublen) * L.substride + e % L.sublen;
}

/* Block-wide sum of two doubles (CUDA_THREADS threads); every thread gets the result. */
static __device__ void block_sum2(double &a, double &b)
{
    __shared__ double sa[CUDA_THREADS / 32], sb[CUDA_THREADS / 32];
    for (int off = 16; off > 0; off >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, off);
        b += __shfl_down_sync(0xffffffffu, b, off);
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        sa[warp] = a;
        sb[warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        a = lane < CUDA_THREADS / 32 ? sa[lane] : 0.0;
        b = lane < CUDA_THREADS / 32 ? sb[lane] : 0.0;
        for (int off = 16; off > 0; off >>= 1) {
            a += __shfl_down_sync(0xffffffffu, a, off);
            b += __shfl_down_sync(0xffffffffu, b, off);
        }
        if (lane == 0) {
            sa[0] = a;
            sb[0] = b;
        }
    }
    __syncthreads();
    a = sa[0];
    b = sb[0];
    __syncthreads(); /* the shared slots may be reused by the next call */
}

/* grid (nseg, parts): partial[g * parts + p] = (sum x, sum x^2) over part p of segment g,
 * or with center (per segment, double): (sum x, sum (x - center)^2) */
__global__ void __launch_bounds__(CUDA_THREADS)
    k_seg_partial(const float *x, seg_layout L, int parts, size_t part_len, const double *center,
                  double2 *partial)
{
    int g = blockIdx.x, p = blockIdx.y;
    size_t total = (size_t)L.nsub * L.sublen;
    size_t e0 = (size_t)p * part_len, e1 = e0 + part_len < total ? e0 + part_len : total;
    double s = 0.0, ss = 0.0;
    double m = center ? center[g] : 0.0;
    for (size_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
        double v = (double)x[seg_elem(L, g, e)];
        s += v;
        if (center)
            ss += (v - m) * (v - m);
        else
            ss += v * v;
    }
    block_sum2(s, ss);
    if (threadIdx.x == 0)
        partial[(size_t)g * parts + p] = make_double2(s, ss);
}

/* Per segment: mean and rstd = 1 / sqrt(var + eps), var = E[x^2] - mean^2 (>= 0). */
__global__ void k_seg_norm_stats(const double2 *partial, int nseg, int parts, double count,
                                 float eps, float *mean_out, float *rstd_out)
{
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= nseg)
        return;
    double s = 0.0, ss = 0.0;
    for (int p = 0; p < parts; p++) {
        s += partial[(size_t)g * parts + p].x;
        ss += partial[(size_t)g * parts + p].y;
    }
    double m = s / count, var = ss / count - m * m;
    mean_out[g] = (float)m;
    rstd_out[g] = (float)(1.0 / sqrt((var > 0.0 ? var : 0.0) + (double)eps));
}

/* moments, pass 1: the mean in double (the center of pass 2) */
__global__ void k_seg_mean(const double2 *partial, int nseg, int parts, double count,
                           double *mean_out)
{
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= nseg)
        return;
    double s = 0.0;
    for (int p = 0; p < parts; p++)
        s += partial[(size_t)g * parts + p].x;
    mean_out[g] = s / count;
}

/* moments, pass 2: mean and unbiased standard deviation */
__global__ void k_seg_moments(const double2 *partial, int nseg, int parts, const double *mean,
                              int count, float *mean_out, float *std_out)
{
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= nseg)
        return;
    double ss = 0.0;
    for (int p = 0; p < parts; p++)
        ss += partial[(size_t)g * parts + p].y;
    mean_out[g] = (float)mean[g];
    std_out[g] = (float)sqrt(ss / (count > 1 ? count - 1 : 1));
}

/* The statistics buffers of one operation, carved from scratch. */
struct seg_stats {
    double2 *partial;
    double *center;
    float *mean, *rstd;
    int parts;
    size_t part_len;
};

static int seg_plan(cuda_impl *c, const seg_layout &L, seg_stats *st)
{
    size_t total = (size_t)L.nsub * L.sublen;
    size_t parts = (total + PART_MIN - 1) / PART_MIN;
    if (parts < 1)
        parts = 1;
    if (parts > MAX_PARTS)
        parts = MAX_PARTS;
    st->parts = (int)parts;
    st->part_len = (total + parts - 1) / parts;
    size_t nseg = (size_t)L.nseg;
    size_t b_partial = cuda_align256(nseg * parts * sizeof(double2));
    size_t b_center = cuda_align256(nseg * sizeof(double));
    size_t b_stat = cuda_align256(nseg * sizeof(float));
    char *base = (char *)cuda_scratch(c, b_partial + b_center + 2 * b_stat);
    if (!base)
        return -1;
    st->partial = (double2 *)base;
    st->center = (double *)(base + b_partial);
    st->mean = (float *)(base + b_partial + b_center);
    st->rstd = (float *)(base + b_partial + b_center + b_stat);
    return 0;
}

static int seg_partial(cuda_impl *c, const float *x, const seg_layout &L, seg_stats *st,
                       const double *center)
{
    dim3 grid((unsigned)L.nseg, (unsigned)st->parts);
    CUDA_LAUNCH_COOP(k_seg_partial, grid, CUDA_THREADS, c->stream)
    (x, L, st->parts, st->part_len, center, st->partial);
    return LAUNCH_OK(c, "normalisation statistics kernel") ? 0 : -1;
}

/* mean and rstd per segment into st->mean / st->rstd */
static int seg_norm_stats(cuda_impl *c, const float *x, const seg_layout &L, float eps,
                          seg_stats *st)
{
    if (seg_plan(c, L, st) || seg_partial(c, x, L, st, NULL))
        return -1;
    double count = (double)L.nsub * (double)L.sublen;
    CUDA_LAUNCH(k_seg_norm_stats, (L.nseg + 127) / 128, 128, c->stream)
    (st->partial, L.nseg, st->parts, count, eps, st->mean, st->rstd);
    return LAUNCH_OK(c, "normalisation statistics kernel (final)") ? 0 : -1;
}

/* ---- affine kernels, the CPU's formulas: sc = rstd * gamma, sh = beta - mean * sc ---- */

/* group_norm: x [n][c][spatial], segment = (b, group) */
__global__ void k_group_norm_apply(float *out, const float *in, const float *gamma,
                                   const float *beta, const float *mean, const float *rstd, int c,
                                   int cg, size_t spatial, size_t total, int act)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t bc = i / spatial;
        int ch = (int)(bc % c);
        size_t seg = (bc / c) * (c / cg) + ch / cg;
        float sc = rstd[seg] * gamma[ch];
        float sh = beta[ch] - mean[seg] * sc;
        out[i] = dev_act(in[i] * sc + sh, act);
    }
}

/* group_norm_rows: x [n][c][h][w], segment = (b, row) */
__global__ void k_group_norm_rows_apply(float *out, const float *in, const float *gamma,
                                        const float *beta, const float *mean, const float *rstd,
                                        int c, int h, size_t w, size_t total, int act)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / w; /* (b, ch, row) */
        int row = (int)(r % h);
        int ch = (int)((r / h) % c);
        size_t b = r / ((size_t)h * c);
        size_t seg = b * h + row;
        float sc = rstd[seg] * gamma[ch];
        float sh = beta[ch] - mean[seg] * sc;
        out[i] = dev_act(in[i] * sc + sh, act);
    }
}

/* dconv_residual: x [n][c][h][w] += scale[ch] * GLU(norm(y)), y [n][2c][h][w] */
__global__ void k_dconv_residual_apply(float *x, const float *y, const float *gamma,
                                       const float *beta, const float *scale, const float *mean,
                                       const float *rstd, int c, int h, size_t w, size_t total)
{
    size_t plane = (size_t)h * w;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t wi = i % w, r = i / w;
        int row = (int)(r % h);
        int ch = (int)((r / h) % c);
        size_t b = r / ((size_t)h * c);
        size_t seg = b * h + row;
        float m = mean[seg], rs = rstd[seg];
        float sa = rs * gamma[ch], ba = beta[ch] - m * sa;
        float sg = rs * gamma[ch + c], bg = beta[ch + c] - m * sg;
        const float *yb = y + b * 2 * c * plane + (size_t)row * w + wi;
        float av = yb[(size_t)ch * plane] * sa + ba;
        float gv = yb[(size_t)(ch + c) * plane] * sg + bg;
        x[i] += scale[ch] * dev_glu(av, gv);
    }
}

/* group_norm_tokens: x [n][tokens][c], segment = b */
__global__ void k_group_norm_tokens_apply(float *out, const float *in, const float *gamma,
                                          const float *beta, const float *mean, const float *rstd,
                                          int c, size_t per, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t b = i / per;
        int ch = (int)(i % c);
        float sc = rstd[b] * gamma[ch];
        out[i] = in[i] * sc + (beta[ch] - mean[b] * sc);
    }
}

/* layer_norm: x [rows][dim], y = (x - mean) * rstd * gamma + beta */
__global__ void k_layer_norm_apply(float *out, const float *in, const float *gamma,
                                   const float *beta, const float *mean, const float *rstd,
                                   size_t dim, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / dim, j = i % dim;
        out[i] = (in[i] - mean[r]) * rstd[r] * gamma[j] + beta[j];
    }
}

__global__ void k_normalize(float *out, const float *in, const float *mean, const float *std,
                            size_t count, size_t total, float eps)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t b = i / count;
        float m = mean[b], den = eps + std[b];
        out[i] = (in[i] - m) / den;
    }
}

__global__ void k_denormalize(float *out, const float *in, const float *mean, const float *std,
                              size_t count, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t b = i / count;
        out[i] = in[i] * std[b] + mean[b];
    }
}

/* ---- operations ---- */

void cuda_group_norm(sep_backend *be, float *out, const float *in, const float *gamma,
                     const float *beta, int n, int c_, int spatial, int groups, float eps, int act)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || c_ <= 0 || spatial <= 0)
        return;
    if (groups <= 0 || c_ % groups) {
        cuda_fail(c, "cuda: group_norm: %d groups do not divide %d channels", groups, c_);
        return;
    }
    int cg = c_ / groups;
    size_t len = (size_t)cg * spatial;
    seg_layout L = {n * groups, 1, len, 0, 1, len, len};
    seg_stats st;
    if (seg_norm_stats(c, in, L, eps, &st))
        return;
    size_t total = (size_t)n * c_ * spatial;
    CUDA_LAUNCH(k_group_norm_apply, cuda_blocks(total), CUDA_THREADS, c->stream)
    (out, in, gamma, beta, st.mean, st.rstd, c_, cg, (size_t)spatial, total, act);
    LAUNCH_OK(c, "group_norm kernel");
}

void cuda_group_norm_rows(sep_backend *be, float *out, const float *in, const float *gamma,
                          const float *beta, int n, int c_, int h, int w, float eps, int act)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || c_ <= 0 || h <= 0 || w <= 0)
        return;
    size_t plane = (size_t)h * w;
    seg_layout L = {n * h, h, (size_t)c_ * plane, (size_t)w, c_, (size_t)w, plane};
    seg_stats st;
    if (seg_norm_stats(c, in, L, eps, &st))
        return;
    size_t total = (size_t)n * c_ * plane;
    CUDA_LAUNCH(k_group_norm_rows_apply, cuda_blocks(total), CUDA_THREADS, c->stream)
    (out, in, gamma, beta, st.mean, st.rstd, c_, h, (size_t)w, total, act);
    LAUNCH_OK(c, "group_norm_rows kernel");
}

void cuda_dconv_residual(sep_backend *be, float *x, const float *y, const float *gamma,
                         const float *beta, const float *scale, int n, int c_, int h, int w,
                         float eps)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || c_ <= 0 || h <= 0 || w <= 0)
        return;
    size_t plane = (size_t)h * w;
    /* statistics of y's rows over its 2c channels */
    seg_layout L = {n * h, h, (size_t)2 * c_ * plane, (size_t)w, 2 * c_, (size_t)w, plane};
    seg_stats st;
    if (seg_norm_stats(c, y, L, eps, &st))
        return;
    size_t total = (size_t)n * c_ * plane;
    CUDA_LAUNCH(k_dconv_residual_apply, cuda_blocks(total), CUDA_THREADS, c->stream)
    (x, y, gamma, beta, scale, st.mean, st.rstd, c_, h, (size_t)w, total);
    LAUNCH_OK(c, "dconv_residual kernel");
}

void cuda_group_norm_tokens(sep_backend *be, float *out, const float *in, const float *gamma,
                            const float *beta, int n, int tokens, int c_, float eps)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || tokens <= 0 || c_ <= 0)
        return;
    size_t per = (size_t)tokens * c_;
    seg_layout L = {n, 1, per, 0, 1, per, per};
    seg_stats st;
    if (seg_norm_stats(c, in, L, eps, &st))
        return;
    size_t total = (size_t)n * per;
    CUDA_LAUNCH(k_group_norm_tokens_apply, cuda_blocks(total), CUDA_THREADS, c->stream)
    (out, in, gamma, beta, st.mean, st.rstd, c_, per, total);
    LAUNCH_OK(c, "group_norm_tokens kernel");
}

void cuda_layer_norm(sep_backend *be, float *out, const float *in, const float *gamma,
                     const float *beta, int rows, int dim, float eps)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || rows <= 0 || dim <= 0)
        return;
    seg_layout L = {rows, 1, (size_t)dim, 0, 1, (size_t)dim, (size_t)dim};
    seg_stats st;
    if (seg_norm_stats(c, in, L, eps, &st))
        return;
    size_t total = (size_t)rows * dim;
    CUDA_LAUNCH(k_layer_norm_apply, cuda_blocks(total), CUDA_THREADS, c->stream)
    (out, in, gamma, beta, st.mean, st.rstd, (size_t)dim, total);
    LAUNCH_OK(c, "layer_norm kernel");
}

void cuda_moments(sep_backend *be, float *mean, float *std, const float *in, int n, int count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || count <= 0)
        return;
    /* two passes as the CPU: the mean, then the squared deviations from it */
    seg_layout L = {n, 1, (size_t)count, 0, 1, (size_t)count, (size_t)count};
    seg_stats st;
    if (seg_plan(c, L, &st) || seg_partial(c, in, L, &st, NULL))
        return;
    CUDA_LAUNCH(k_seg_mean, (n + 127) / 128, 128, c->stream)
    (st.partial, n, st.parts, (double)count, st.center);
    if (!LAUNCH_OK(c, "moments kernel (mean)") || seg_partial(c, in, L, &st, st.center))
        return;
    CUDA_LAUNCH(k_seg_moments, (n + 127) / 128, 128, c->stream)
    (st.partial, n, st.parts, st.center, count, mean, std);
    LAUNCH_OK(c, "moments kernel (std)");
}

void cuda_normalize(sep_backend *be, float *out, const float *in, const float *mean,
                    const float *std, int n, int count, float eps)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || count <= 0)
        return;
    size_t total = (size_t)n * count;
    CUDA_LAUNCH(k_normalize, cuda_blocks(total), CUDA_THREADS, c->stream)
    (out, in, mean, std, (size_t)count, total, eps);
    LAUNCH_OK(c, "normalize kernel");
}

void cuda_denormalize(sep_backend *be, float *out, const float *in, const float *mean,
                      const float *std, int n, int count)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || n <= 0 || count <= 0)
        return;
    size_t total = (size_t)n * count;
    CUDA_LAUNCH(k_denormalize, cuda_blocks(total), CUDA_THREADS, c->stream)
    (out, in, mean, std, (size_t)count, total);
    LAUNCH_OK(c, "denormalize kernel");
}
