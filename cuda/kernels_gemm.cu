/*
 * kernels_gemm.cu - the matrix operations of the CUDA backend: linear, conv2d and
 * conv_tr2d, on cuBLAS sgemm (fp32, pedantic math mode: no TF32).
 *
 * Row-major products are written as the column-major products cuBLAS computes:
 * row-major C[m][n] = A[m][k] B[k][n] is column-major C^T = B^T A^T, so the operands
 * are passed swapped, each with its row stride as leading dimension.
 *
 * conv2d: per sample and chunk of output positions, an im2col kernel gathers the
 * columns (zero padding, strides, dilation) into scratch, one sgemm multiplies the
 * weights [cout][cin*kh*kw] by them into scratch, and an epilogue kernel writes the
 * output with bias and activation (for GLU, the gated half).
 * conv_tr2d: the output is filled with the bias, then per chunk of input positions
 * an sgemm gives col[(co,ki,kj)][p] = sum_ci w[ci][(co,ki,kj)] x[ci][p] and a gather
 * kernel adds, for each output element the chunk reaches, the columns that land on it
 * (no atomics: each output element is written by one thread).
 * Chunks keep the column buffer under COL_FLOATS floats whatever the input length
 * (the time branch has 1-D signals of 10^5 samples).
 *
 * Batch invariance: every sample runs the same sequence of products of the same
 * shapes, and every product reads and writes 16-byte aligned operands (scratch, the
 * weights, or a sample's rows when they are aligned; linear stages a sample whose
 * rows are not): cuBLAS may choose its kernel by the operands' alignment, and a
 * different kernel may sum in another order. So a batch gives the same bits as
 * single runs.
 */
#include "cuda/cuda_internal.h"

#define COL_FLOATS ((size_t)1 << 24) /* 64 MiB of columns per chunk at most */

/* Columns per chunk when each column takes per_col floats of the chunk's buffers: as
 * many as COL_FLOATS allows, a multiple of 256 when more than 256, at most n. */
static size_t col_chunk(size_t per_col, size_t n)
{
    size_t chunk = COL_FLOATS / per_col;
    if (chunk > 256)
        chunk = chunk / 256 * 256;
    if (chunk < 1)
        chunk = 1;
    return chunk > n ? n : chunk;
}

/* row-major C[m][n] (ldc) = A[m][k] (lda) * B[k][n] (ldb); trans_a: A is stored as
 * [k][m] (lda) and used transposed */
static int gemm_rm(cuda_impl *c, int m, int n, int k, const float *A, int lda, int trans_a,
                   const float *B, int ldb, float *C, int ldc)
{
    const float one = 1.0f, zero = 0.0f;
    return CUBLAS_OK(c, cublasSgemm(c->blas, CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m,
                                    k, &one, B, ldb, A, lda, &zero, C, ldc))
               ? 0
               : -1;
}

/* ---- linear ---- */

void cuda_linear(sep_backend *be, float *out, const float *in, const float *w, const float *bias,
                 int batch, int rows, int in_dim, int out_dim, int act)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || batch <= 0 || rows <= 0 || out_dim <= 0)
        return;
    if (in_dim <= 0) {
        cuda_fail(c, "cuda: linear: input dimension %d", in_dim);
        return;
    }
    size_t x_count = (size_t)rows * in_dim, y_count = (size_t)rows * out_dim;
    for (int b = 0; b < batch; b++) {
        const float *x = in + (size_t)b * x_count;
        float *y = out + (size_t)b * y_count;
        /* A sample whose rows are not 16-byte aligned (the second sample of a batch with
         * an odd row size) goes through aligned copies, so that cuBLAS sees the same
         * alignment, hence picks the same kernel, for every sample. */
        int staged = ((uintptr_t)x | (uintptr_t)y) % 16 != 0;
        const float *gx = x;
        float *gy = y;
        if (staged) {
            size_t xb = cuda_align256(x_count * sizeof(float));
            char *base = (char *)cuda_scratch(c, xb + y_count * sizeof(float));
            if (!base)
                return;
            gx = (const float *)base;
            gy = (float *)(base + xb);
            if (!CU_OK(c, cudaMemcpyAsync((void *)gx, x, x_count * sizeof(float),
                                          cudaMemcpyDeviceToDevice, c->stream)))
                return;
        }
        /* y[rows][out] = x[rows][in] * w[out][in]^T */
        const float one = 1.0f, zero = 0.0f;
        if (!CUBLAS_OK(c, cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, out_dim, rows, in_dim,
                                      &one, w, in_dim, gx, in_dim, &zero, gy, out_dim)))
            return;
        if (staged && !CU_OK(c, cudaMemcpyAsync(y, gy, y_count * sizeof(float),
                                                cudaMemcpyDeviceToDevice, c->stream)))
            return;
        cuda_bias_act(c, y, (size_t)out_dim, rows, out_dim, bias, 0, act);
    }
}

/* ---- conv2d ---- */

struct conv_geom {
    int cin, h, w, kh, kw, sh, sw, dh, dw, ph0, pw0, wo;
};

/* col[k][j] for k = (ci, ki, kj) < K and output positions p0 + j, j < nc */
__global__ void k_im2col(float *col, const float *x, conv_geom g, int K, int p0, int nc)
{
    size_t total = (size_t)K * nc;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int k = (int)(i / nc), j = (int)(i % nc);
        int p = p0 + j;
        int oh = p / g.wo, ow = p % g.wo;
        int ci = k / (g.kh * g.kw), ki = (k / g.kw) % g.kh, kj = k % g.kw;
        int ih = oh * g.sh + ki * g.dh - g.ph0;
        int iw = ow * g.sw + kj * g.dw - g.pw0;
        float v = 0.0f;
        if (ih >= 0 && ih < g.h && iw >= 0 && iw < g.w)
            v = x[((size_t)ci * g.h + ih) * g.w + iw];
        col[i] = v;
    }
}

/* y[m][j] (ldy) = GLU of res [2*mout][nc] + bias: a * sigmoid(b) */
__global__ void k_glu_epilogue(float *y, size_t ldy, const float *res, int nc, int mout,
                               const float *bias)
{
    size_t total = (size_t)mout * nc;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int m = (int)(i / nc), j = (int)(i % nc);
        float a = res[(size_t)m * nc + j], g = res[(size_t)(m + mout) * nc + j];
        if (bias) {
            a += bias[m];
            g += bias[m + mout];
        }
        y[(size_t)m * ldy + j] = dev_glu(a, g);
    }
}

/* y[m][j] (ldy) = act(res[m][j] + bias[m]) */
__global__ void k_conv_epilogue(float *y, size_t ldy, const float *res, int nc, int m_count,
                                const float *bias, int act)
{
    size_t total = (size_t)m_count * nc;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int m = (int)(i / nc), j = (int)(i % nc);
        float v = res[i];
        if (bias)
            v += bias[m];
        y[(size_t)m * ldy + j] = dev_act(v, act);
    }
}

void cuda_conv2d(sep_backend *be, const sep_conv2d_desc *d, float *out, const float *in,
                 const float *w, const float *bias)
{
    cuda_impl *c = cuda_enter(be);
    if (!c)
        return;
    sep_conv2d_desc chk = *d;
    if (d->n < 0 || d->cin <= 0 || d->cout <= 0 || d->kh <= 0 || d->kw <= 0 || d->sh <= 0 ||
        d->sw <= 0 || d->dh <= 0 || d->dw <= 0 || sep_conv2d_finish(&chk) != 0 || chk.ho != d->ho ||
        chk.wo != d->wo) {
        cuda_fail(c, "cuda: conv2d: inconsistent descriptor (cin %d cout %d %dx%d -> %dx%d)",
                  d->cin, d->cout, d->h, d->w, d->ho, d->wo);
        return;
    }
    int glu = d->act == SEP_ACT_GLU;
    if (glu && d->cout % 2) {
        cuda_fail(c, "cuda: conv2d: GLU over an odd channel count %d", d->cout);
        return;
    }
    int M = d->cout, K = d->cin * d->kh * d->kw, N = d->ho * d->wo;
    int Mout = glu ? M / 2 : M;
    if (d->n == 0 || N == 0)
        return;
    /* columns per chunk: the im2col block (K rows) and the product (M rows), both in
     * scratch (a 1x1 convolution's columns are a copy of its input: every product
     * then reads and writes 256-byte aligned buffers with the same leading dimensions
     * for every sample, whatever the samples' offsets in the batch) */
    size_t per_col = (size_t)K + (size_t)M;
    size_t chunk = col_chunk(per_col, (size_t)N);
    size_t col_bytes = cuda_align256((size_t)K * chunk * sizeof(float));
    char *base = (char *)cuda_scratch(c, col_bytes + (size_t)M * chunk * sizeof(float));
    if (!base)
        return;
    float *col = (float *)base, *res = (float *)(base + col_bytes);
    conv_geom g = {d->cin, d->h,  d->w,  d->kh,  d->kw,  d->sh,
                   d->sw,  d->dh, d->dw, d->ph0, d->pw0, d->wo};
    size_t in_per = (size_t)d->cin * d->h * d->w, out_per = (size_t)Mout * N;
    for (int b = 0; b < d->n; b++) {
        const float *x = in + (size_t)b * in_per;
        float *y = out + (size_t)b * out_per;
        for (int p0 = 0; p0 < N; p0 += (int)chunk) {
            int nc = N - p0 < (int)chunk ? N - p0 : (int)chunk;
            CUDA_LAUNCH(k_im2col, cuda_blocks((size_t)K * nc), CUDA_THREADS, c->stream)
            (col, x, g, K, p0, nc);
            if (!LAUNCH_OK(c, "im2col kernel"))
                return;
            /* res[M][nc] = w[M][K] col[K][nc] */
            if (gemm_rm(c, M, nc, K, w, K, 0, col, nc, res, nc))
                return;
            if (glu)
                CUDA_LAUNCH(k_glu_epilogue, cuda_blocks((size_t)Mout * nc), CUDA_THREADS, c->stream)
            (y + p0, (size_t)N, res, nc, Mout, bias);
            else CUDA_LAUNCH(k_conv_epilogue, cuda_blocks((size_t)M * nc), CUDA_THREADS,
                             c->stream)(y + p0, (size_t)N, res, nc, M, bias, d->act);
            if (!LAUNCH_OK(c, "convolution epilogue kernel"))
                return;
        }
    }
}

/* ---- conv_tr2d ---- */

struct tr_geom {
    int cout, h, w, kh, kw, sh, sw, ho, wo;
};

/* y[co][oh][ow] = bias[co] (or 0) */
__global__ void k_fill_bias(float *y, const float *bias, size_t plane, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = bias ? bias[i / plane] : 0.0f;
}

/* For the outputs (co, oh0 + a, ow0 + b), a < noh, b < now: add every column of the
 * chunk (input positions p0 .. p0 + nc, rows ih0 .. ih1, columns iw0 .. iw1 of them)
 * that lands there: oh = ih * sh + ki, ow = iw * sw + kj. */
__global__ void k_col2im_gather(float *y, const float *col, tr_geom g, int p0, int nc, int ih0,
                                int ih1, int iw0, int iw1, int oh0, int noh, int ow0, int now)
{
    size_t total = (size_t)g.cout * noh * now;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        int ow = ow0 + (int)(i % now);
        int oh = oh0 + (int)((i / now) % noh);
        int co = (int)(i / ((size_t)now * noh));
        float acc = 0.0f;
        for (int ki = 0; ki < g.kh; ki++) {
            int t = oh - ki;
            if (t < 0)
                break;
            if (t % g.sh)
                continue;
            int ih = t / g.sh;
            if (ih < ih0 || ih >= ih1)
                continue;
            for (int kj = 0; kj < g.kw; kj++) {
                int u = ow - kj;
                if (u < 0)
                    break;
                if (u % g.sw)
                    continue;
                int iw = u / g.sw;
                if (iw < iw0 || iw >= iw1)
                    continue;
                int p = ih * g.w + iw - p0;
                acc += col[((size_t)(co * g.kh + ki) * g.kw + kj) * nc + p];
            }
        }
        y[((size_t)co * g.ho + oh) * g.wo + ow] += acc;
    }
}

void cuda_conv_tr2d(sep_backend *be, const sep_conv_tr2d_desc *d, float *out, const float *in,
                    const float *w, const float *bias)
{
    cuda_impl *c = cuda_enter(be);
    if (!c)
        return;
    if (d->n < 0 || d->cin <= 0 || d->cout <= 0 || d->h <= 0 || d->w <= 0 || d->kh <= 0 ||
        d->kw <= 0 || d->sh <= 0 || d->sw <= 0 || d->ho != (d->h - 1) * d->sh + d->kh ||
        d->wo != (d->w - 1) * d->sw + d->kw) {
        cuda_fail(c, "cuda: conv_tr2d: inconsistent descriptor (cin %d cout %d %dx%d -> %dx%d)",
                  d->cin, d->cout, d->h, d->w, d->ho, d->wo);
        return;
    }
    if (d->n == 0)
        return;
    int kk = d->kh * d->kw;
    int M = d->cout * kk, K = d->cin, N = d->h * d->w;
    size_t on = (size_t)d->ho * d->wo;
    /* chunks: whole input rows for 2-D inputs, column ranges for 1-D ones; per column
     * the product (M floats) and a copy of the input (K floats), both in scratch (the
     * product reads an aligned copy: the same buffers and leading dimensions for every
     * sample, whatever its offset in the batch) */
    size_t per_col = (size_t)M + (size_t)K;
    size_t chunk;
    if (d->h > 1) {
        size_t rows = COL_FLOATS / (per_col * d->w);
        if (rows < 1)
            rows = 1;
        chunk = rows * d->w;
    } else {
        chunk = col_chunk(per_col, (size_t)N);
    }
    if (chunk > (size_t)N)
        chunk = (size_t)N;
    size_t col_bytes = cuda_align256((size_t)M * chunk * sizeof(float));
    char *base = (char *)cuda_scratch(c, col_bytes + (size_t)K * chunk * sizeof(float));
    if (!base)
        return;
    float *col = (float *)base, *xs = (float *)(base + col_bytes);
    tr_geom g = {d->cout, d->h, d->w, d->kh, d->kw, d->sh, d->sw, d->ho, d->wo};
    for (int b = 0; b < d->n; b++) {
        const float *x = in + (size_t)b * K * N;
        float *y = out + (size_t)b * d->cout * on;
        CUDA_LAUNCH(k_fill_bias, cuda_blocks(d->cout * on), CUDA_THREADS, c->stream)
        (y, bias, on, d->cout * on);
        if (!LAUNCH_OK(c, "conv_tr bias kernel"))
            return;
        for (int p0 = 0; p0 < N; p0 += (int)chunk) {
            int nc = N - p0 < (int)chunk ? N - p0 : (int)chunk;
            /* xs[K][nc] = x[K][p0 .. p0 + nc], col[M][nc] = w[K][M]^T xs */
            if (!CU_OK(c, cudaMemcpy2DAsync(xs, (size_t)nc * sizeof(float), x + p0,
                                            (size_t)N * sizeof(float), (size_t)nc * sizeof(float),
                                            (size_t)K, cudaMemcpyDeviceToDevice, c->stream)))
                return;
            if (gemm_rm(c, M, nc, K, w, M, 1, xs, nc, col, nc))
                return;
            int ih0, ih1, iw0, iw1, oh0, oh1, ow0, ow1;
            if (d->h > 1) { /* whole rows */
                ih0 = p0 / d->w;
                ih1 = (p0 + nc) / d->w;
                iw0 = 0;
                iw1 = d->w;
                oh0 = ih0 * d->sh;
                oh1 = (ih1 - 1) * d->sh + d->kh;
                ow0 = 0;
                ow1 = d->wo;
            } else {
                ih0 = 0;
                ih1 = 1;
                iw0 = p0;
                iw1 = p0 + nc;
                oh0 = 0;
                oh1 = d->ho;
                ow0 = iw0 * d->sw;
                ow1 = (iw1 - 1) * d->sw + d->kw;
            }
            int noh = oh1 - oh0, now = ow1 - ow0;
            size_t region = (size_t)d->cout * noh * now;
            CUDA_LAUNCH(k_col2im_gather, cuda_blocks(region), CUDA_THREADS, c->stream)
            (y, col, g, p0, nc, ih0, ih1, iw0, iw1, oh0, noh, ow0, now);
            if (!LAUNCH_OK(c, "col2im kernel"))
                return;
        }
    }
}
