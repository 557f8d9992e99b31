/*
 * cpu_backend.c - the CPU implementation of the backend operation table (backend.h).
 *
 * Matrix work goes to a single-threaded sgemm (OpenBLAS, or oneDNN where it is faster:
 * cpu_gemm.c); the work is split across OpenMP threads here so one thread pool serves
 * everything,
 * convolutions are im2col + GEMM in column chunks of bounded size (1x1 convs are a
 * plain GEMM), transposed convolutions GEMM + col2im, attention is blocked over
 * query rows, STFT/iSTFT use FFTW3 (single precision). Reductions (norm statistics)
 * accumulate in double. "Device" memory is host memory; weights are used in place.
 *
 * This file is the reference for other backends: keep each operation simple enough
 * to read against the PyTorch definition it implements.
 */
#include "models/backend.h"
#include "models/cpu_gemm.h"
#include "models/cpu_kernels.h"
#include "models/util.h"

/* fftw3.h before cblas.h: cblas.h pulls in <complex.h>, which would turn
 * fftwf_complex into a C99 complex instead of float[2] */
#include <fftw3.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

/* im2col / col2im chunks: this many floats per thread (1 MiB, L2-sized) */
#define COL_CACHE_FLOATS (256u << 10)
/* attention tiles: query rows x keys (S tile of 256 KiB, in L2; 2688 x 2688 on Zen 4:
 * 1-2 % faster than 128 query rows with the AVX2 kernels, 0.5 % with AVX-512) */
#ifndef ATTN_QTILE
#define ATTN_QTILE 256
#endif
#ifndef ATTN_KTILE
#define ATTN_KTILE 256
#endif
#define MAX_FFT_PLANS 4

/* Splits [0, n) into chunks of at least `grain` for the threads. */
#define PAR_CHUNKS(be, n, grain, lo, hi, body)                                                     \
    do {                                                                                           \
        size_t n_ = (n), g_ = (grain);                                                             \
        int nt_ = (be)->threads;                                                                   \
        size_t per_ = (n_ + nt_ - 1) / nt_;                                                        \
        if (per_ < g_)                                                                             \
            per_ = g_;                                                                             \
        int chunks_ = (int)((n_ + per_ - 1) / per_);                                               \
        _Pragma("omp parallel for num_threads(nt_) schedule(static, 1) if (chunks_ > 1)") for (    \
            int c_ = 0; c_ < chunks_; c_++)                                                        \
        {                                                                                          \
            size_t lo = (size_t)c_ * per_, hi = lo + per_ < n_ ? lo + per_ : n_;                   \
            body;                                                                                  \
        }                                                                                          \
    } while (0)

typedef struct {
    int nfft;
    fftwf_plan r2c, c2r;
    float *window; /* periodic Hann, as torch.hann_window */
} fft_plan;

typedef struct {
    int threads;
    const cpu_kernels *k; /* this backend's instruction set (cpu_kernels.h) */
    sep_sgemm_fn sgemm;   /* its GEMM provider (cpu_gemm.h) */
    float *scratch;       /* grows as needed, kept between calls */
    size_t scratch_count;
    fft_plan plans[MAX_FFT_PLANS];
    int n_plans;
    int winograd; /* 3x3 convolutions by Winograd F(4x4, 3x3) where there are enough rows, else
                   * F(2x2, 3x3): 4 (SEP_CPU_WINOGRAD=2: F(2x2, 3x3) only, 0: im2col + GEMM) */
} cpu_impl;

static cpu_impl *impl_of(sep_backend *be)
{
    return be->impl;
}

/* C = alpha op(A) op(B) + beta C (row-major) on the calling thread (cpu_gemm.h) */
static inline void gemm(sep_backend *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
                        const float *a, int lda, const float *b, int ldb, float beta, float *c,
                        int ldc)
{
    impl_of(be)->sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static float *scratch(sep_backend *be, size_t count)
{
    cpu_impl *c = impl_of(be);
    if (count > c->scratch_count) {
        free(c->scratch);
        c->scratch = NULL;
        c->scratch_count = 0;
        if (posix_memalign((void **)&c->scratch, 64, count * sizeof(float)) != 0) {
            fprintf(stderr, "cpu backend: out of memory for %zu floats of scratch\n", count);
            abort();
        }
        c->scratch_count = count;
    }
    return c->scratch;
}

/* ---- memory ---- */

static void *cpu_alloc(sep_backend *be, size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0)
        return NULL;
    return p;
}

static void cpu_free(sep_backend *be, void *p)
{
    free(p);
}

static void cpu_copy(sep_backend *be, void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
}

static void cpu_zero(sep_backend *be, float *dst, size_t count)
{
    memset(dst, 0, count * sizeof(float));
}

static const float *cpu_weights(sep_backend *be, const float *host, size_t count)
{
    return host;
}

static void cpu_weights_free(sep_backend *be, const float *dev) {}

static void cpu_sync(sep_backend *be) {}

/* ---- convolutions ---- */

/* col[(ci,ki,kj)][p - p0] for output positions p in [p0, p1) (p = oh * wo + ow);
 * single-threaded, run by each thread on its own chunk. */
static void im2col(const sep_conv2d_desc *d, const float *x, float *col, int p0, int p1)
{
    int K = d->cin * d->kh * d->kw;
    size_t ncols = (size_t)(p1 - p0);
    for (int k = 0; k < K; k++) {
        int ci = k / (d->kh * d->kw), ki = (k / d->kw) % d->kh, kj = k % d->kw;
        const float *xc = x + (size_t)ci * d->h * d->w;
        float *row = col + (size_t)k * ncols;
        int p = p0;
        while (p < p1) {
            int oh = p / d->wo, ow0 = p % d->wo;
            int ow1 = d->wo;
            if (oh * d->wo + ow1 > p1)
                ow1 = p1 - oh * d->wo;
            float *dst = row + (p - p0);
            int ih = oh * d->sh + ki * d->dh - d->ph0;
            if (ih < 0 || ih >= d->h) {
                memset(dst, 0, (size_t)(ow1 - ow0) * sizeof(float));
            } else {
                const float *src = xc + (size_t)ih * d->w;
                int off = kj * d->dw - d->pw0;
                if (d->sw == 1) {
                    /* contiguous: valid ow with 0 <= ow + off < w */
                    int lo = ow0, hi = ow1;
                    int vlo = -off > lo ? -off : lo;
                    int vhi = d->w - off < hi ? d->w - off : hi;
                    if (vhi < vlo)
                        vhi = vlo = hi;
                    for (int ow = lo; ow < vlo; ow++)
                        dst[ow - lo] = 0.0f;
                    if (vhi > vlo)
                        memcpy(dst + (vlo - lo), src + vlo + off,
                               (size_t)(vhi - vlo) * sizeof(float));
                    for (int ow = vhi; ow < hi; ow++)
                        dst[ow - lo] = 0.0f;
                } else {
                    for (int ow = ow0; ow < ow1; ow++) {
                        int iw = ow * d->sw + off;
                        dst[ow - ow0] = iw >= 0 && iw < d->w ? src[iw] : 0.0f;
                    }
                }
            }
            p += ow1 - ow0;
        }
    }
}

/* Column chunk for a reduction of K rows: K x chunk floats stay in L2. */
static int col_chunk(int K, int N, int threads)
{
    int chunk = (int)(COL_CACHE_FLOATS / (size_t)K);
    chunk = chunk / 64 * 64;
    if (chunk < 256)
        chunk = 256;
    if (chunk > 4096)
        chunk = 4096;
    /* at least two chunks per thread for balance when N allows */
    int per = (N + 2 * threads - 1) / (2 * threads);
    if (per < chunk)
        chunk = per < 256 ? 256 : (per + 63) / 64 * 64;
    return chunk > N ? N : chunk;
}

/* Shrinks a chunk width so that [0, N) splits into a multiple of `threads` chunks of
 * nearly equal width (a multiple of 16): with a few large chunks, one left over
 * otherwise keeps a single thread busy at the end while the others wait. */
static int balanced_chunk(int chunk, int N, int threads)
{
    int nchunks = (N + chunk - 1) / chunk;
    nchunks = (nchunks + threads - 1) / threads * threads;
    int even = ((N + nchunks - 1) / nchunks + 15) / 16 * 16;
    return even < chunk ? even : chunk;
}

/* Direct convolution along rows (kernel 1 x kw, strides 1, no padding over rows) for
 * the shapes GEMM handles badly: few output channels or a short reduction (DConv's
 * compressing conv and its 1x1 expansion in the wide layers). Vectorised over the
 * output positions, the reduction over (ci, kj) runs in registers. */
static int use_direct_conv(const sep_conv2d_desc *d)
{
    return d->act != SEP_ACT_GLU && d->kh == 1 && d->sh == 1 && d->sw == 1 && d->ph0 == 0 &&
           d->ph1 == 0 && d->kw <= 8 && (d->cout <= 16 || d->cin * d->kw <= 16);
}

/* the same near the row ends, where taps outside the row read zeros */
static void conv_row_edge(float *y, const float *x, size_t plane, const float *w, int cin, int kw,
                          const int *off, float b, int t0, int t1, int width)
{
    for (int t = t0; t < t1; t++) {
        float acc = b;
        for (int ci = 0; ci < cin; ci++)
            for (int kj = 0; kj < kw; kj++) {
                int i = t + off[kj];
                if (i >= 0 && i < width)
                    acc += w[ci * kw + kj] * x[(size_t)ci * plane + i];
            }
        y[t] = acc;
    }
}

#define DIRECT_TILE 1024
static void conv_rows_direct(sep_backend *be, const sep_conv2d_desc *d, float *out, const float *in,
                             const float *w, const float *bias)
{
    const cpu_kernels *ks = impl_of(be)->k;
    int off[8], lo = 0, hi = d->wo;
    for (int kj = 0; kj < d->kw; kj++) {
        off[kj] = kj * d->dw - d->pw0;
        if (-off[kj] > lo)
            lo = -off[kj];
        if (d->w - off[kj] < hi)
            hi = d->w - off[kj];
    }
    if (hi < lo)
        hi = lo;
    int K = d->cin * d->kw;
    int cob = ks->co_block;
    int cblocks = (d->cout + cob - 1) / cob;
    /* weights per block of cob output channels, transposed to [K][cob], zero padded */
    float *wt = scratch(be, (size_t)cblocks * K * cob + (size_t)cblocks * cob);
    float *bt = wt + (size_t)cblocks * K * cob;
    for (int cb = 0; cb < cblocks; cb++)
        for (int j = 0; j < cob; j++) {
            int co = cb * cob + j;
            bt[cb * cob + j] = co < d->cout && bias ? bias[co] : 0.0f;
            for (int k = 0; k < K; k++)
                wt[((size_t)cb * K + k) * cob + j] = co < d->cout ? w[(size_t)co * K + k] : 0.0f;
        }
    int tiles = (d->wo + DIRECT_TILE - 1) / DIRECT_TILE;
    int tasks = d->n * d->ho * tiles * cblocks;
    size_t in_plane = (size_t)d->h * d->w, out_plane = (size_t)d->ho * d->wo;
#pragma omp parallel for num_threads(be->threads) schedule(static)
    for (int task = 0; task < tasks; task++) {
        int cb = task % cblocks, rest = task / cblocks;
        int tile = rest % tiles, row = (rest / tiles) % d->ho, b = rest / (tiles * d->ho);
        int t0 = tile * DIRECT_TILE, t1 = t0 + DIRECT_TILE < d->wo ? t0 + DIRECT_TILE : d->wo;
        const float *xb = in + (size_t)b * d->cin * in_plane + (size_t)row * d->w;
        int co0 = cb * cob;
        int nco = d->cout - co0 < cob ? d->cout - co0 : cob;
        float *yb = out + ((size_t)b * d->cout + co0) * out_plane + (size_t)row * d->wo;
        int a0 = t0 > lo ? t0 : lo, a1 = t1 < hi ? t1 : hi; /* interior part of the tile */
        if (a1 < a0)
            a0 = a1 = t1;
        int done =
            ks->conv_row_interior(yb, out_plane, nco, xb, in_plane, wt + (size_t)cb * K * cob,
                                  d->cin, d->kw, off, bt + co0, a0, a1);
        for (int j = 0; j < nco; j++) {
            float *y = yb + (size_t)j * out_plane;
            const float *wc = w + (size_t)(co0 + j) * K;
            float b0 = bias ? bias[co0 + j] : 0.0f;
            conv_row_edge(y, xb, in_plane, wc, d->cin, d->kw, off, b0, t0, a0, d->w);
            conv_row_edge(y, xb, in_plane, wc, d->cin, d->kw, off, b0, done, t1, d->w);
            if (d->act == SEP_ACT_GELU)
                ks->gelu(y + t0, y + t0, (size_t)(t1 - t0));
        }
    }
}

/* 3x3 convolutions, stride 1, padding 1 (the rewrite convolutions) with many input
 * channels: Winograd F(2x2, 3x3). Each 2x2 block of outputs (a tile) comes from a 4x4
 * patch of the input: V = B^T d B per input channel, U = G g G^T per filter, then
 * for each of the 16 transformed positions e a GEMM M[e] = U[e] V[e] over the channels
 * (cout x cin by cin x tiles), and Y = A^T M A. The GEMMs do 16 cin cout multiply-adds
 * per tile where the direct form does 36; with few input channels the GEMMs are too
 * short to pay for the transforms (WINO_MIN_CIN: measured 1.2x at cin 48, 1.4-1.6x at
 * cin 96-384 on AVX2, the network's rewrite convolutions). The transforms' coefficients are
 * 0, +-1 and +-1/2 (exact in float); the sums are reordered, not approximated. */
#define WINO_MIN_CIN 32
static int use_winograd(const sep_conv2d_desc *d)
{
    return d->kh == 3 && d->kw == 3 && d->sh == 1 && d->sw == 1 && d->dh == 1 && d->dw == 1 &&
           d->ph0 == 1 && d->ph1 == 1 && d->pw0 == 1 && d->pw1 == 1 && d->cin >= WINO_MIN_CIN &&
           (d->act == SEP_ACT_NONE || d->act == SEP_ACT_GELU || d->act == SEP_ACT_GLU);
}

/* U[e][co][ci] = (G g G^T)[e] for g = w[co][ci] (3x3) */
static void wino_filters(float *U, const float *w, int cout, int cin, int threads)
{
    ptrdiff_t cc = (ptrdiff_t)cout * cin;
#pragma omp parallel for num_threads(threads) schedule(static) if (cc >= 4096)
    for (ptrdiff_t f = 0; f < cc; f++) {
        const float *g = w + f * 9;
        float t[4][3];
        for (int j = 0; j < 3; j++) {
            t[0][j] = g[j];
            t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
            t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
            t[3][j] = g[6 + j];
        }
        for (int i = 0; i < 4; i++) {
            U[(size_t)(4 * i + 0) * cc + f] = t[i][0];
            U[(size_t)(4 * i + 1) * cc + f] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
            U[(size_t)(4 * i + 2) * cc + f] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
            U[(size_t)(4 * i + 3) * cc + f] = t[i][2];
        }
    }
}

/* Winograd F(4x4, 3x3), for the same convolutions with at least WINO4_MIN_ROWS rows:
 * a 4x4 block of outputs from a 6x6 input patch, 36 GEMMs over the channels, 36 cin
 * cout multiply-adds per 16 outputs (F(2x2, 3x3): 16 per 4; direct: 144 per 16). Its
 * filter transform has the factors 1/4, 1/6, 1/12, 1/24 (computed in double, rounded
 * once) and the output transform 2, 4, 8: not exact as F(2x2, 3x3) is; its results are
 * about 20x further from the exact sums (the ops and parity tests measure it). */
#define WINO4_MIN_ROWS 16

/* U[e][co][ci] = (G g G^T)[e] for g = w[co][ci] (3x3) */
static void wino4_filters(float *U, const float *w, int cout, int cin, int threads)
{
    static const double G[6][3] = {{0.25, 0, 0},
                                   {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                   {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                   {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                   {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                   {0, 0, 1}};
    ptrdiff_t cc = (ptrdiff_t)cout * cin;
#pragma omp parallel for num_threads(threads) schedule(static) if (cc >= 4096)
    for (ptrdiff_t f = 0; f < cc; f++) {
        const float *g = w + f * 9;
        double t[6][3];
        for (int a = 0; a < 6; a++)
            for (int j = 0; j < 3; j++)
                t[a][j] = G[a][0] * g[j] + G[a][1] * g[3 + j] + G[a][2] * g[6 + j];
        for (int a = 0; a < 6; a++)
            for (int b = 0; b < 6; b++)
                U[(size_t)(6 * a + b) * cc + f] =
                    (float)(t[a][0] * G[b][0] + t[a][1] * G[b][1] + t[a][2] * G[b][2]);
    }
}

/* V[e][ci][t - t0] = (B^T d B)[e] for the tiles t in [t0, t1) (tw tiles per tile row)
 * of the input plane x [cin][h][w], F(m x m, 3x3); outside the plane d is 0 (the
 * padding). Per tile row and channel, the columns the chunk's tiles read of the m + 2
 * input rows are split by their position mod m (rows[], zero where the padding is), so
 * the transform (the kernels' wino_input, wino4_input) reads contiguous streams: tile t
 * reads columns m t - 1 .. m t + m of row i, column m k - 1 + p in phase p at k. */
static inline __attribute__((always_inline)) void wino_inputs(const cpu_kernels *ks, int m,
                                                              float *V, size_t ldv, float *rows,
                                                              const float *x, int cin, int h, int w,
                                                              int tw, int t0, int t1)
{
    size_t plane = (size_t)h * w, vstride = (size_t)cin * ldv;
    int len = tw + 1; /* one phase of one row: tiles + 1 */
    for (int tr = t0 / tw; tr * tw < t1; tr++) {
        int c0 = tr * tw < t0 ? t0 - tr * tw : 0;
        int c1 = (tr + 1) * tw > t1 ? t1 - tr * tw : tw;
        for (int ci = 0; ci < cin; ci++) {
            const float *xc = x + (size_t)ci * plane;
            const float *ph[6][4];
            for (int i = 0; i < m + 2; i++) {
                int r = m * tr - 1 + i;
                float *P = rows + (size_t)(m * i) * len;
                if (r < 0 || r >= h) {
                    for (int p = 0; p < m; p++)
                        memset(P + (size_t)p * len + c0, 0, (size_t)(c1 + 1 - c0) * sizeof(float));
                } else {
                    const float *xr = xc + (size_t)r * w;
                    for (int k = c0; k <= c1; k++) {
                        int col = m * k - 1;
                        if (col >= 0 && col + m - 1 < w) {
                            for (int p = 0; p < m; p++)
                                P[(size_t)p * len + k] = xr[col + p];
                        } else {
                            for (int p = 0; p < m; p++)
                                P[(size_t)p * len + k] =
                                    col + p >= 0 && col + p < w ? xr[col + p] : 0.0f;
                        }
                    }
                }
                for (int p = 0; p < m; p++)
                    ph[i][p] = P + (size_t)p * len + c0;
            }
            float *v = V + (size_t)ci * ldv + ((size_t)tr * tw + c0 - (size_t)t0);
            if (m == 4) {
                ks->wino4_input(v, vstride, (const float *const(*)[4])ph, c1 - c0);
            } else {
                const float *ev[4] = {ph[0][0], ph[1][0], ph[2][0], ph[3][0]};
                const float *od[4] = {ph[0][1], ph[1][1], ph[2][1], ph[3][1]};
                ks->wino_input(v, vstride, ev, od, c1 - c0);
            }
        }
    }
}

/* Winograd F(m x m, 3x3), m = 2 or 4: per chunk of tiles, the input transform of every
 * channel, (m + 2)^2 GEMMs, the output transform with the bias, the activation, and the
 * tiles' m x m outputs written into the output rows. Inlined with m constant (the loops
 * over a tile's columns unrolled). */
static inline __attribute__((always_inline)) void
conv3x3_winograd(sep_backend *be, const sep_conv2d_desc *d, int m, float *out, const float *in,
                 const float *w, const float *bias)
{
    const cpu_kernels *ks = impl_of(be)->k;
    int cin = d->cin, cout = d->cout, h = d->h, wd = d->w;
    int glu = d->act == SEP_ACT_GLU, mout = glu ? cout / 2 : cout;
    int th = (h + m - 1) / m, tw = (wd + m - 1) / m, tiles = th * tw;
    int nt = be->threads, pos = (m + 2) * (m + 2), outs = m * m;
    /* tiles per chunk: V and M of a chunk about COL_CACHE_FLOATS * 4 */
    int chunk = (int)(4 * (size_t)COL_CACHE_FLOATS / (pos * (size_t)(cin + cout))) / 16 * 16;
    if (chunk < 128 / m)
        chunk = 128 / m;
    int per = (tiles + 2 * nt - 1) / (2 * nt);
    if (per < chunk)
        chunk = per < 16 ? 16 : (per + 15) / 16 * 16;
    int nchunks = (tiles + chunk - 1) / chunk;
    size_t ufl = (size_t)pos * cout * cin;
    /* V, M, the outputs Y, the GLU's, and the input rows split by column phase */
    size_t per_thread = (size_t)pos * cin * chunk + (size_t)pos * cout * chunk +
                        (size_t)cout * outs * chunk + (size_t)outs * chunk +
                        (size_t)(m + 2) * m * (size_t)(tw + 1);
    float *U = scratch(be, ufl + (size_t)nt * per_thread);
    float *bufs = U + ufl;
    if (m == 4)
        wino4_filters(U, w, cout, cin, nt);
    else
        wino_filters(U, w, cout, cin, nt);
    void (*output)(float *, size_t, const float *, size_t, float, int) =
        m == 4 ? ks->wino4_output : ks->wino_output;
    size_t oplane = (size_t)h * wd;
    for (int b = 0; b < d->n; b++) {
        const float *x = in + (size_t)b * cin * oplane;
        float *y = out + (size_t)b * mout * oplane;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int c = 0; c < nchunks; c++) {
            int t0 = c * chunk, t1 = t0 + chunk < tiles ? t0 + chunk : tiles, n = t1 - t0;
            float *V = bufs + (size_t)omp_get_thread_num() * per_thread;
            float *M = V + (size_t)pos * cin * chunk;
            float *Y = M + (size_t)pos * cout * chunk;
            float *G = Y + (size_t)cout * outs * chunk;
            float *rows = G + (size_t)outs * chunk;
            wino_inputs(ks, m, V, (size_t)n, rows, x, cin, h, wd, tw, t0, t1);
            for (int e = 0; e < pos; e++)
                gemm(be, 0, 0, cout, n, cin, 1.0f, U + (size_t)e * cout * cin, cin,
                     V + (size_t)e * cin * n, n, 0.0f, M + (size_t)e * cout * n, n);
            for (int co = 0; co < cout; co++)
                output(Y + (size_t)co * outs * n, (size_t)n, M + (size_t)co * n, (size_t)cout * n,
                       bias ? bias[co] : 0.0f, n);
            for (int co = 0; co < mout; co++) {
                float *yc = Y + (size_t)co * outs * n;
                if (glu) {
                    ks->glu(G, yc, Y + (size_t)(co + mout) * outs * n, (size_t)outs * n);
                    yc = G;
                } else if (d->act == SEP_ACT_GELU) {
                    ks->gelu(yc, yc, (size_t)outs * n);
                }
                float *oc = y + (size_t)co * oplane;
                for (int tr = t0 / tw; tr * tw < t1; tr++) {
                    int c0 = tr * tw < t0 ? t0 - tr * tw : 0;
                    int c1 = (tr + 1) * tw > t1 ? t1 - tr * tw : tw;
                    /* tile tc of this tile row is column first + tc of the chunk (>= 0 for
                     * tc >= c0: a tile row that began in an earlier chunk starts before it) */
                    ptrdiff_t first = (ptrdiff_t)tr * tw - t0;
                    int full = wd / m < c1 ? wd / m : c1; /* tiles with all m columns */
                    for (int i = 0; i < m && m * tr + i < h; i++) {
                        float *orow = oc + (size_t)(m * tr + i) * wd;
                        const float *si = yc + (size_t)(m * i) * n + first;
                        for (int tc = c0; tc < full; tc++)
                            for (int j = 0; j < m; j++)
                                orow[m * tc + j] = si[(size_t)j * n + tc];
                        for (int tc = full > c0 ? full : c0; tc < c1; tc++)
                            for (int j = 0; j < m && m * tc + j < wd; j++)
                                orow[m * tc + j] = si[(size_t)j * n + tc];
                    }
                }
            }
        }
    }
}

/* Convolution: direct for small shapes, a GEMM on the input for 1x1 convs, else
 * im2col + GEMM on column chunks, each chunk done by one thread in its own buffer
 * (im2col output still in cache when the GEMM reads it, no barrier per chunk). */
static void cpu_conv2d(sep_backend *be, const sep_conv2d_desc *d, float *out, const float *in,
                       const float *w, const float *bias)
{
    const cpu_kernels *ks = impl_of(be)->k;
    if (use_direct_conv(d)) {
        conv_rows_direct(be, d, out, in, w, bias);
        return;
    }
    if (impl_of(be)->winograd && use_winograd(d)) {
        if (impl_of(be)->winograd == 4 && d->h >= WINO4_MIN_ROWS)
            conv3x3_winograd(be, d, 4, out, in, w, bias);
        else
            conv3x3_winograd(be, d, 2, out, in, w, bias);
        return;
    }
    int M = d->cout, K = d->cin * d->kh * d->kw;
    int N = d->ho * d->wo;
    int pointwise = d->kh == 1 && d->kw == 1 && d->sh == 1 && d->sw == 1 && !d->ph0 && !d->ph1 &&
                    !d->pw0 && !d->pw1;
    int glu = d->act == SEP_ACT_GLU, Mout = glu ? M / 2 : M;
    int nt = be->threads;
    int chunk = balanced_chunk(col_chunk(K, N, nt), N, nt);
    int nchunks = (N + chunk - 1) / chunk;
    /* per thread: the im2col chunk, and for GLU the full-width GEMM result */
    size_t per_thread = (pointwise ? 0 : (size_t)K * chunk) + (glu ? (size_t)M * chunk : 0);
    float *bufs = per_thread ? scratch(be, (size_t)nt * per_thread) : NULL;
    for (int b = 0; b < d->n; b++) {
        const float *x = in + (size_t)b * d->cin * d->h * d->w;
        float *y = out + (size_t)b * Mout * N;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
        for (int c = 0; c < nchunks; c++) {
            int p0 = c * chunk, p1 = p0 + chunk < N ? p0 + chunk : N;
            int nc = p1 - p0;
            float *buf = bufs ? bufs + (size_t)omp_get_thread_num() * per_thread : NULL;
            float *col = pointwise ? NULL : buf;
            float *res = glu ? buf + (pointwise ? 0 : (size_t)K * chunk) : y + p0;
            int ldr = glu ? nc : N;
            const float *B = x + p0;
            int ldb = N;
            if (!pointwise) {
                im2col(d, x, col, p0, p1);
                B = col;
                ldb = nc;
            }
            /* the bias written first, accumulated onto (as in cpu_linear) */
            for (int m = 0; bias && m < M; m++) {
                float *yr = res + (size_t)m * ldr, bm = bias[m];
                for (int i = 0; i < nc; i++)
                    yr[i] = bm;
            }
            gemm(be, 0, 0, M, nc, K, 1.0f, w, K, B, ldb, bias ? 1.0f : 0.0f, res, ldr);
            for (int m = 0; d->act == SEP_ACT_GELU && m < M; m++)
                ks->gelu(res + (size_t)m * ldr, res + (size_t)m * ldr, (size_t)nc);
            if (glu)
                for (int m = 0; m < Mout; m++)
                    ks->glu(y + (size_t)m * N + p0, res + (size_t)m * nc,
                            res + (size_t)(m + Mout) * nc, (size_t)nc);
        }
    }
}

/* col2im of one chunk of input positions [p0, p1) into the output window of rows
 * [top, top + oh) and columns [left, left + ow):
 * y[co][ih*sh + ki - top][iw*sw + kj - left] += col[(co,ki,kj)][p - p0]. */
static void col2im_chunk(const sep_conv_tr2d_desc *d, const float *col, float *y, int p0, int p1,
                         int top, int oh, int left, int ow)
{
    int kk = d->kh * d->kw, nc = p1 - p0;
    size_t on = (size_t)oh * ow;
    for (int co = 0; co < d->cout; co++) {
        float *yc = y + (size_t)co * on;
        for (int ki = 0; ki < d->kh; ki++) {
            for (int kj = 0; kj < d->kw; kj++) {
                const float *row = col + ((size_t)co * kk + ki * d->kw + kj) * nc;
                /* input columns whose output column falls in the window */
                int wlo = left - kj > 0 ? (left - kj + d->sw - 1) / d->sw : 0;
                int whi = (left + ow - kj + d->sw - 1) / d->sw;
                if (whi > d->w)
                    whi = d->w;
                int p = p0;
                while (p < p1) {
                    int ih = p / d->w, iw0 = p % d->w;
                    int iw1 = p1 - (p - iw0) < d->w ? p1 - (p - iw0) : d->w;
                    int orow = ih * d->sh + ki - top;
                    if (orow >= 0 && orow < oh) {
                        int a = iw0 > wlo ? iw0 : wlo, e = iw1 < whi ? iw1 : whi;
                        float *dst = yc + (size_t)orow * ow + kj - left;
                        const float *src = row + (p - p0) - iw0;
                        if (d->sw == 1)
                            for (int iw = a; iw < e; iw++)
                                dst[iw] += src[iw];
                        else
                            for (int iw = a; iw < e; iw++)
                                dst[(size_t)iw * d->sw] += src[iw];
                    }
                    p += iw1 - iw0;
                }
            }
        }
    }
}

/* Transposed convolution into an output window: per chunk of input positions, a GEMM
 * into the thread's own buffer and its col2im. Chunks are whole input rows (or, for
 * 1-D signals, column ranges) at least as long as the kernel overlap, so a chunk's
 * output overlaps only its neighbours': even chunks run in parallel, then odd ones. */
static void cpu_conv_tr2d_window(sep_backend *be, const sep_conv_tr2d_desc *d, int top, int oh,
                                 int left, int ow, float *out, const float *in, const float *w,
                                 const float *bias)
{
    int kk = d->kh * d->kw;
    int M = d->cout * kk, K = d->cin, N = d->h * d->w;
    size_t on = (size_t)oh * ow;
    int nt = be->threads;
    int chunk = col_chunk(M, N, nt);
    if (d->h > 1) { /* whole rows, at least ceil(kh / sh) of them */
        int rows = chunk / d->w;
        int minrows = (d->kh + d->sh - 1) / d->sh;
        if (rows < minrows)
            rows = minrows;
        chunk = rows * d->w;
    } else if (chunk < d->kw) {
        chunk = d->kw;
    }
    if (chunk > N)
        chunk = N;
    int nchunks = (N + chunk - 1) / chunk;
    float *cols = scratch(be, (size_t)nt * M * chunk);
    for (int b = 0; b < d->n; b++) {
        const float *x = in + (size_t)b * K * N;
        float *y = out + (size_t)b * d->cout * on;
#pragma omp parallel num_threads(nt)
        {
#pragma omp for schedule(static)
            for (int co = 0; co < d->cout; co++) {
                float v = bias ? bias[co] : 0.0f;
                float *p = y + (size_t)co * on;
                for (size_t i = 0; i < on; i++)
                    p[i] = v;
            }
            float *col = cols + (size_t)omp_get_thread_num() * M * chunk;
            for (int phase = 0; phase < 2; phase++) {
#pragma omp for schedule(dynamic, 1)
                for (int c = phase; c < nchunks; c += 2) {
                    int p0 = c * chunk, p1 = p0 + chunk < N ? p0 + chunk : N;
                    int nc = p1 - p0;
                    /* col[(co,ki,kj)][p] = sum_ci w[ci][(co,ki,kj)] x[ci][p] */
                    gemm(be, 1, 0, M, nc, K, 1.0f, w, M, x + p0, N, 0.0f, col, nc);
                    col2im_chunk(d, col, y, p0, p1, top, oh, left, ow);
                }
            }
        }
    }
}

static void cpu_conv_tr2d(sep_backend *be, const sep_conv_tr2d_desc *d, float *out, const float *in,
                          const float *w, const float *bias)
{
    cpu_conv_tr2d_window(be, d, 0, d->ho, 0, d->wo, out, in, w, bias);
}

/* Linear layer: rows split in one chunk per thread, each a single-threaded sgemm
 * followed by bias and activation while the rows are in cache (finer chunks measured
 * slower: every chunk packs the whole weight matrix again). */
static void cpu_linear(sep_backend *be, float *out, const float *in, const float *w,
                       const float *bias, int batch, int rows, int in_dim, int out_dim, int act)
{
    const cpu_kernels *ks = impl_of(be)->k;
    int nt = be->threads;
    int chunk = (rows + nt - 1) / nt;
    if (chunk < 64)
        chunk = 64;
    chunk = (chunk + 15) / 16 * 16;
    int nchunks = (rows + chunk - 1) / chunk;
    for (int b = 0; b < batch; b++) {
        const float *x = in + (size_t)b * rows * in_dim;
        float *y = out + (size_t)b * rows * out_dim;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nchunks > 1)
        for (int c = 0; c < nchunks; c++) {
            int r0 = c * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
            float *yc = y + (size_t)r0 * out_dim;
            /* the bias written first and accumulated onto (beta 1): OpenBLAS would
             * otherwise clear the rows in a pass of its own, and the bias take another */
            for (int r = r0; bias && r < r1; r++)
                memcpy(y + (size_t)r * out_dim, bias, (size_t)out_dim * sizeof(float));
            gemm(be, 0, 1, r1 - r0, out_dim, in_dim, 1.0f, x + (size_t)r0 * in_dim, in_dim, w,
                 in_dim, bias ? 1.0f : 0.0f, yc, out_dim);
            for (int r = r0; act != SEP_ACT_NONE && r < r1; r++) {
                float *p = y + (size_t)r * out_dim;
                if (act == SEP_ACT_GELU)
                    ks->gelu(p, p, (size_t)out_dim);
                else if (act == SEP_ACT_RELU)
                    for (int o = 0; o < out_dim; o++)
                        p[o] = p[o] > 0.0f ? p[o] : 0.0f;
            }
        }
    }
}

/* Attention, blocked and fused (no nq x nk matrix): per head and tile of ATTN_QTILE
 * query rows, the keys are taken ATTN_KTILE at a time: S = scale Q K^T for the tile
 * (in L2), an online softmax (running row max m and sum l; when the max grows, the
 * output row and l are rescaled by exp(m_old - m_new)), then O += P V. The output
 * rows are divided by l at the end. */
static void cpu_attention(sep_backend *be, const sep_attention_desc *d, float *out, const float *q,
                          const float *k, const float *v)
{
    const cpu_kernels *ks = impl_of(be)->k;
    int nt = be->threads;
    /* query tiles of one head equal in size (a multiple of 16) */
    int qtiles = (d->nq + ATTN_QTILE - 1) / ATTN_QTILE;
    int qtile = ((d->nq + qtiles - 1) / qtiles + 15) / 16 * 16;
    qtiles = (d->nq + qtile - 1) / qtile;
    int ktile = d->nk < ATTN_KTILE ? d->nk : ATTN_KTILE;
    int tasks = d->batch * d->heads * qtiles;
    float scale = 1.0f / sqrtf((float)d->head_dim);
    if (d->head_dim % ks->t_block == 0) {
        /* the kernels' own register-blocked products: per batch item, every head's keys
         * and values packed once (in parallel over heads), then all query tiles */
        size_t kpf = ks->attention_kp_floats(d->nk, d->head_dim);
        size_t vpf = (size_t)d->nk * d->head_dim;
        size_t packed = (size_t)d->heads * (kpf + vpf);
        size_t work = ks->attention_work_floats(qtile, d->head_dim);
        float *pbuf = scratch(be, packed + (size_t)nt * work);
        float *wbuf = pbuf + packed;
        int head_tasks = d->heads * qtiles;
        for (int b = 0; b < d->batch; b++) {
#pragma omp parallel num_threads(nt)
            {
#pragma omp for schedule(dynamic, 1)
                for (int h = 0; h < d->heads; h++)
                    ks->attention_pack(
                        pbuf + (size_t)h * (kpf + vpf), pbuf + (size_t)h * (kpf + vpf) + kpf,
                        k + (size_t)b * d->nk * d->ldk + (size_t)h * d->head_dim, d->ldk,
                        v + (size_t)b * d->nk * d->ldv + (size_t)h * d->head_dim, d->ldv, d->nk,
                        d->head_dim);
#pragma omp for schedule(dynamic, 1)
                for (int task = 0; task < head_tasks; task++) {
                    int qb = task % qtiles, h = task / qtiles;
                    int q0 = qb * qtile;
                    int nq = d->nq - q0 < qtile ? d->nq - q0 : qtile;
                    const float *kp = pbuf + (size_t)h * (kpf + vpf);
                    ks->attention_tile(
                        out + ((size_t)b * d->nq + q0) * d->ldo + (size_t)h * d->head_dim, d->ldo,
                        q + ((size_t)b * d->nq + q0) * d->ldq + (size_t)h * d->head_dim, d->ldq, kp,
                        kp + kpf, nq, d->nk, d->head_dim, scale,
                        wbuf + (size_t)omp_get_thread_num() * work);
                }
            }
        }
        return;
    }
    /* other head sizes: the same tiles with sgemm */
    size_t per_thread = (size_t)qtile * ktile + 2 * (size_t)qtile;
    float *sbuf = scratch(be, (size_t)nt * per_thread);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int task = 0; task < tasks; task++) {
        int qb = task % qtiles, h = (task / qtiles) % d->heads, b = task / (qtiles * d->heads);
        int q0 = qb * qtile;
        int nq = d->nq - q0 < qtile ? d->nq - q0 : qtile;
        float *s = sbuf + (size_t)omp_get_thread_num() * per_thread;
        float *m = s + (size_t)qtile * ktile, *l = m + qtile;
        const float *qp = q + ((size_t)b * d->nq + q0) * d->ldq + (size_t)h * d->head_dim;
        const float *kp = k + (size_t)b * d->nk * d->ldk + (size_t)h * d->head_dim;
        const float *vp = v + (size_t)b * d->nk * d->ldv + (size_t)h * d->head_dim;
        float *op = out + ((size_t)b * d->nq + q0) * d->ldo + (size_t)h * d->head_dim;
        for (int k0 = 0; k0 < d->nk; k0 += ktile) {
            int nk = d->nk - k0 < ktile ? d->nk - k0 : ktile;
            gemm(be, 0, 1, nq, nk, d->head_dim, scale, qp, d->ldq, kp + (size_t)k0 * d->ldk, d->ldk,
                 0.0f, s, nk);
            for (int i = 0; i < nq; i++) {
                float *si = s + (size_t)i * nk;
                float mx = ks->max(si, nk);
                if (k0 == 0) {
                    m[i] = mx;
                    l[i] = ks->softmax_exp(si, nk, mx);
                } else {
                    float mnew = mx > m[i] ? mx : m[i];
                    float alpha = expf(m[i] - mnew);
                    m[i] = mnew;
                    l[i] = l[i] * alpha + ks->softmax_exp(si, nk, mnew);
                    if (alpha != 1.0f)
                        ks->scale(op + (size_t)i * d->ldo, d->head_dim, alpha);
                }
            }
            gemm(be, 0, 0, nq, d->head_dim, nk, 1.0f, s, nk, vp + (size_t)k0 * d->ldv, d->ldv,
                 k0 ? 1.0f : 0.0f, op, d->ldo);
        }
        for (int i = 0; i < nq; i++)
            ks->scale(op + (size_t)i * d->ldo, d->head_dim, 1.0f / l[i]);
    }
}

/* ---- normalisations ---- */

static void block_stats(const cpu_kernels *ks, const float *x, size_t len, double *mean,
                        double *var)
{
    double s = 0, ss = 0;
    ks->sum_squares(x, len, &s, &ss);
    double m = s / (double)len;
    double v = ss / (double)len - m * m;
    *mean = m;
    *var = v > 0 ? v : 0;
}

static void block_stats_parallel(sep_backend *be, const float *x, size_t len, double *mean,
                                 double *var)
{
    double s = 0, ss = 0;
#pragma omp parallel for simd num_threads(be->threads) reduction(+ : s, ss)
    for (size_t i = 0; i < len; i++) {
        s += x[i];
        ss += (double)x[i] * x[i];
    }
    double m = s / (double)len;
    double v = ss / (double)len - m * m;
    *mean = m;
    *var = v > 0 ? v : 0;
}

/* One channel (or row) of a normalisation: y = x * sc + sh with sc = rstd * gamma and
 * sh = beta - mean * sc, then `act` (GELU or none). */
static void norm_channel(const cpu_kernels *ks, float *y, const float *x, size_t len, double mean,
                         float rstd, float gamma, float beta, int act)
{
    float sc = rstd * gamma;
    float sh = beta - (float)mean * sc;
    ks->affine(y, x, len, sc, sh, act == SEP_ACT_GELU);
}

static void cpu_group_norm(sep_backend *be, float *out, const float *in, const float *gamma,
                           const float *beta, int n, int c, int spatial, int groups, float eps,
                           int act)
{
    const cpu_kernels *ks = impl_of(be)->k;
    int cg = c / groups;
    size_t len = (size_t)cg * spatial;
    int blocks = n * groups;
    int par_blocks = blocks >= 2 * be->threads;
#pragma omp parallel for num_threads(be->threads) if (par_blocks) schedule(static)
    for (int blk = 0; blk < blocks; blk++) {
        const float *x = in + (size_t)blk * len;
        float *y = out + (size_t)blk * len;
        double mean, var;
        if (par_blocks)
            block_stats(ks, x, len, &mean, &var);
        else
            block_stats_parallel(be, x, len, &mean, &var);
        float rstd = (float)(1.0 / sqrt(var + eps));
        int g = blk % groups;
#pragma omp parallel for num_threads(be->threads) if (!par_blocks)
        for (int j = 0; j < cg; j++) {
            int ch = g * cg + j;
            norm_channel(ks, y + (size_t)j * spatial, x + (size_t)j * spatial, (size_t)spatial,
                         mean, rstd, gamma[ch], beta[ch], act);
        }
    }
}

/* Statistics of row `row` of sample b of [n][c][h][w] over (c, w). */
static void row_stats_finish(double s, double ss, double cnt, double *mean, float *rstd, float eps)
{
    double m = s / cnt, var = ss / cnt - m * m;
    *mean = m;
    *rstd = (float)(1.0 / sqrt((var > 0 ? var : 0) + eps));
}

static void row_stats(const cpu_kernels *ks, const float *x, int c, size_t plane, int w,
                      double *mean, float *rstd, float eps)
{
    double s = 0, ss = 0;
    for (int ch = 0; ch < c; ch++) {
        double cs = 0, css = 0;
        ks->sum_squares(x + (size_t)ch * plane, (size_t)w, &cs, &css);
        s += cs;
        ss += css;
    }
    row_stats_finish(s, ss, (double)c * w, mean, rstd, eps);
}

/* The same statistics with the channels split across the threads (a single long row:
 * the time branch). Per-channel sums are added in channel order as in row_stats, so
 * the bits are the same whatever the thread count or batch size. */
static void row_stats_parallel(sep_backend *be, const float *x, int c, size_t plane, int w,
                               double *mean, float *rstd, float eps)
{
    const cpu_kernels *ks = impl_of(be)->k;
    double *partial = (double *)scratch(be, 4 * (size_t)c); /* c pairs of doubles */
#pragma omp parallel for num_threads(be->threads) schedule(static)
    for (int ch = 0; ch < c; ch++) {
        partial[2 * ch] = partial[2 * ch + 1] = 0;
        ks->sum_squares(x + (size_t)ch * plane, (size_t)w, &partial[2 * ch], &partial[2 * ch + 1]);
    }
    double s = 0, ss = 0;
    for (int ch = 0; ch < c; ch++) {
        s += partial[2 * ch];
        ss += partial[2 * ch + 1];
    }
    row_stats_finish(s, ss, (double)c * w, mean, rstd, eps);
}

/* One channel of one row of the DConv residual: GroupNorm(1) affine of both GLU halves
 * with the row's statistics, GLU, LayerScale, added into x (channel planes xplane
 * apart; y's, yplane). */
static inline void dconv_residual_channel(const cpu_kernels *ks, float *x, size_t xplane,
                                          const float *y, size_t yplane, int ch, int c, int w,
                                          double mean, float rstd, const float *gamma,
                                          const float *beta, const float *scale)
{
    float sa = rstd * gamma[ch], ba = beta[ch] - (float)mean * sa;
    float sg = rstd * gamma[ch + c], bg = beta[ch + c] - (float)mean * sg;
    ks->norm_glu_residual(x + (size_t)ch * xplane, y + (size_t)ch * yplane,
                          y + (size_t)(ch + c) * yplane, sa, ba, sg, bg, scale[ch], w);
}

static void cpu_dconv_residual(sep_backend *be, float *xo, const float *yin, const float *gamma,
                               const float *beta, const float *scale, int n, int c, int h, int w,
                               float eps)
{
    const cpu_kernels *ks = impl_of(be)->k;
    size_t plane = (size_t)h * w;
    int rows = n * h;
    if (rows < be->threads) {
        /* fewer rows than threads (the time branch): split each row's channels */
        for (int r = 0; r < rows; r++) {
            int b = r / h, row = r % h;
            const float *y = yin + (size_t)b * 2 * c * plane + (size_t)row * w;
            float *x = xo + (size_t)b * c * plane + (size_t)row * w;
            double mean;
            float rstd;
            row_stats_parallel(be, y, 2 * c, plane, w, &mean, &rstd, eps);
#pragma omp parallel for num_threads(be->threads) schedule(static)
            for (int ch = 0; ch < c; ch++)
                dconv_residual_channel(ks, x, plane, y, plane, ch, c, w, mean, rstd, gamma, beta,
                                       scale);
        }
        return;
    }
#pragma omp parallel for num_threads(be->threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        int b = r / h, row = r % h;
        const float *y = yin + (size_t)b * 2 * c * plane + (size_t)row * w;
        float *x = xo + (size_t)b * c * plane + (size_t)row * w;
        double mean;
        float rstd;
        row_stats(ks, y, 2 * c, plane, w, &mean, &rstd, eps);
        for (int ch = 0; ch < c; ch++)
            dconv_residual_channel(ks, x, plane, y, plane, ch, c, w, mean, rstd, gamma, beta,
                                   scale);
    }
}

/* The fused DConv tail, for a short reduction (hid <= DCONV_TAIL_MAX_HID: the 1x1
 * convolution is then bound by writing its 2c-channel output, which the fusion avoids;
 * with more hidden channels the GEMM path plus dconv_residual is faster, and 0 is
 * returned: on Zen 4, fused against unfused, 2.6x at hid 6, 1.8x at hid 12, 1.3x at
 * hid 24, 0.75x at hid 48 with AVX-512). Each
 * row (n x h of them) is cut into chunks of positions (the chunk width depends on c
 * alone, so the bits do not depend on the thread count). Pass 1 takes
 * each chunk's moments of the hidden channels, sum z_k and sum z_k z_l (double): the
 * GroupNorm statistics of y = W z + b follow from them without computing y, since
 * sum y_ch = w_ch . S + N b_ch and sum y_ch^2 = w_ch^T P w_ch + 2 b_ch w_ch . S + N b_ch^2
 * (the row's moments added in chunk order). Pass 2 computes the chunk's 1x1
 * convolution, all 2c channels, into a per-thread buffer that stays in cache and adds
 * the normalised GLU into x. */
#define DCONV_TAIL_CHUNK_FLOATS (16u << 10) /* 64 KiB: 2c channels x chunk positions */
#define DCONV_TAIL_MAX_HID 24
static int cpu_dconv_tail(sep_backend *be, float *xo, const float *z, const float *w2,
                          const float *b2, const float *gamma, const float *beta,
                          const float *scale, int n, int c, int hid, int h, int w, float eps)
{
    if (hid > DCONV_TAIL_MAX_HID)
        return 0;
    const cpu_kernels *ks = impl_of(be)->k;
    int nt = be->threads, cob = ks->co_block, c2 = 2 * c;
    int cblocks = (c2 + cob - 1) / cob;
    int chunk = (int)(DCONV_TAIL_CHUNK_FLOATS / (unsigned)c2) / ks->t_block * ks->t_block;
    if (chunk < ks->t_block)
        chunk = ks->t_block;
    if (chunk > w)
        chunk = w;
    /* the last chunk takes the remainder too: one narrower than a vector block would
     * run on the scalar edge code */
    int chunks = w / chunk, rows = n * h, tasks = rows * chunks;
    int ystride = w - (chunks - 1) * chunk; /* the widest chunk */
    size_t plane = (size_t)h * w;
    size_t wt_floats = (size_t)cblocks * hid * cob + (size_t)cblocks * cob;
    size_t ybuf_floats = (size_t)cblocks * cob * ystride;
    size_t head = (wt_floats + (size_t)nt * ybuf_floats + 1) / 2 * 2; /* doubles follow */
    /* per task the hidden channels' moments (S[hid], then P[hid][hid], upper triangle
     * filled), then per row mean and rstd */
    size_t mom = (size_t)hid + (size_t)hid * hid;
    size_t part_doubles = (size_t)tasks * mom, stat_doubles = 2 * (size_t)rows;
    float *wt = scratch(be, head + 2 * (part_doubles + stat_doubles));
    float *bt = wt + (size_t)cblocks * hid * cob;
    float *ybufs = wt + wt_floats;
    double *part = (double *)(wt + head), *stats = part + part_doubles;
    for (int cb = 0; cb < cblocks; cb++)
        for (int j = 0; j < cob; j++) {
            int co = cb * cob + j;
            bt[cb * cob + j] = co < c2 && b2 ? b2[co] : 0.0f;
            for (int k = 0; k < hid; k++)
                wt[((size_t)cb * hid + k) * cob + j] = co < c2 ? w2[(size_t)co * hid + k] : 0.0f;
        }
    /* the weights' part of the row statistics, the same for every row: summed over the
     * 2c channels, sum y = A . S + N B1 and sum y^2 = sum_{k<=l} G_kl P_kl + 2 C . S + N B2
     * with A = sum w_ch, C = sum b_ch w_ch, G_kk = sum w_chk^2, G_kl = 2 sum w_chk w_chl,
     * B1 = sum b_ch, B2 = sum b_ch^2 */
    double A[DCONV_TAIL_MAX_HID] = {0}, C[DCONV_TAIL_MAX_HID] = {0};
    double G[DCONV_TAIL_MAX_HID * DCONV_TAIL_MAX_HID] = {0}, B1 = 0, B2 = 0;
    for (int ch = 0; ch < c2; ch++) {
        const float *wc = w2 + (size_t)ch * hid;
        double bc = b2 ? b2[ch] : 0.0;
        B1 += bc;
        B2 += bc * bc;
        for (int k = 0; k < hid; k++) {
            A[k] += wc[k];
            C[k] += bc * wc[k];
            G[k * hid + k] += (double)wc[k] * wc[k];
            for (int l = k + 1; l < hid; l++)
                G[k * hid + l] += 2.0 * wc[k] * wc[l];
        }
    }
    const int off0 = 0;
    for (int pass = 0; pass < 2; pass++) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int task = 0; task < tasks; task++) {
            int r = task / chunks, t0 = (task % chunks) * chunk;
            int len = task % chunks == chunks - 1 ? w - t0 : chunk;
            int b = r / h, row = r % h;
            const float *zr = z + (size_t)b * hid * plane + (size_t)row * w + t0;
            if (pass == 0) {
                double *S = part + (size_t)task * mom, *P = S + hid;
                for (int k = 0; k < hid; k++) {
                    const float *zk = zr + (size_t)k * plane;
                    S[k] = 0;
                    P[k * hid + k] = 0;
                    ks->sum_squares(zk, (size_t)len, &S[k], &P[k * hid + k]);
                    for (int l = k + 1; l < hid; l++)
                        P[k * hid + l] = ks->dot(zk, zr + (size_t)l * plane, (size_t)len);
                }
                continue;
            }
            float *y = ybufs + (size_t)omp_get_thread_num() * ybuf_floats;
            float *x = xo + (size_t)b * c * plane + (size_t)row * w + t0;
            /* x's part of the chunk, one short segment per channel a plane apart (too
             * many streams for the hardware prefetcher), fetched while the convolution
             * below computes */
            for (int ch = 0; ch < c; ch++)
                for (int l = 0; l < len; l += 16)
                    __builtin_prefetch(x + (size_t)ch * plane + l, 1);
            for (int cb = 0; cb < cblocks; cb++) {
                int co0 = cb * cob, nco = c2 - co0 < cob ? c2 - co0 : cob;
                const float *wb = wt + (size_t)cb * hid * cob;
                int done = ks->conv_row_interior(y + (size_t)co0 * ystride, (size_t)ystride, nco,
                                                 zr, plane, wb, hid, 1, &off0, bt + co0, 0, len);
                for (int j = 0; j < nco; j++)
                    conv_row_edge(y + (size_t)(co0 + j) * ystride, zr, plane,
                                  w2 + (size_t)(co0 + j) * hid, hid, 1, &off0,
                                  b2 ? b2[co0 + j] : 0.0f, done, len, len);
            }
            double mean = stats[2 * r];
            float rstd = (float)stats[2 * r + 1];
            for (int ch = 0; ch < c; ch++)
                dconv_residual_channel(ks, x, plane, y, (size_t)ystride, ch, c, len, mean, rstd,
                                       gamma, beta, scale);
        }
        if (pass == 1)
            break;
        for (int r = 0; r < rows; r++) {
            /* the row's moments: its chunks' in chunk order, into the first chunk's */
            double *S = part + (size_t)r * chunks * mom, *P = S + hid;
            for (int k = 1; k < chunks; k++) {
                const double *q = S + (size_t)k * mom;
                for (size_t i = 0; i < mom; i++)
                    S[i] += q[i];
            }
            double npos = w, s = npos * B1, ss = npos * B2;
            for (int k = 0; k < hid; k++) {
                s += A[k] * S[k];
                ss += 2.0 * C[k] * S[k];
                for (int l = k; l < hid; l++)
                    ss += G[k * hid + l] * P[k * hid + l];
            }
            double mean;
            float rstd;
            row_stats_finish(s, ss, (double)c2 * w, &mean, &rstd, eps);
            stats[2 * r] = mean;
            stats[2 * r + 1] = rstd;
        }
    }
    return 1;
}

static void cpu_group_norm_rows(sep_backend *be, float *out, const float *in, const float *gamma,
                                const float *beta, int n, int c, int h, int w, float eps, int act)
{
    const cpu_kernels *ks = impl_of(be)->k;
    size_t plane = (size_t)h * w;
    int rows = n * h;
#pragma omp parallel for num_threads(be->threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        int b = r / h, row = r % h;
        const float *x = in + (size_t)b * c * plane + (size_t)row * w;
        float *y = out + (size_t)b * c * plane + (size_t)row * w;
        double mean;
        float rstd;
        row_stats(ks, x, c, plane, w, &mean, &rstd, eps);
        for (int ch = 0; ch < c; ch++)
            norm_channel(ks, y + (size_t)ch * plane, x + (size_t)ch * plane, (size_t)w, mean, rstd,
                         gamma[ch], beta[ch], act);
    }
}

static void cpu_group_norm_tokens(sep_backend *be, float *out, const float *in, const float *gamma,
                                  const float *beta, int n, int tokens, int c, float eps)
{
    size_t len = (size_t)tokens * c;
    for (int b = 0; b < n; b++) {
        const float *x = in + (size_t)b * len;
        float *y = out + (size_t)b * len;
        double mean, var;
        block_stats_parallel(be, x, len, &mean, &var);
        float rstd = (float)(1.0 / sqrt(var + eps));
        float m = (float)mean;
#pragma omp parallel for num_threads(be->threads)
        for (int t = 0; t < tokens; t++) {
            const float *xs = x + (size_t)t * c;
            float *ys = y + (size_t)t * c;
            for (int ch = 0; ch < c; ch++) {
                float sc = rstd * gamma[ch];
                ys[ch] = xs[ch] * sc + (beta[ch] - m * sc);
            }
        }
    }
}

static void cpu_layer_norm(sep_backend *be, float *out, const float *in, const float *gamma,
                           const float *beta, int rows, int dim, float eps)
{
    const cpu_kernels *ks = impl_of(be)->k;
#pragma omp parallel for num_threads(be->threads) schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * dim;
        float *y = out + (size_t)r * dim;
        double mean, var;
        block_stats(ks, x, (size_t)dim, &mean, &var);
        float rstd = (float)(1.0 / sqrt(var + eps));
        float m = (float)mean;
        for (int i = 0; i < dim; i++)
            y[i] = (x[i] - m) * rstd * gamma[i] + beta[i];
    }
}

static void cpu_moments(sep_backend *be, float *mean, float *std, const float *in, int n, int count)
{
    for (int b = 0; b < n; b++) {
        const float *x = in + (size_t)b * count;
        double s = 0;
#pragma omp parallel for num_threads(be->threads) reduction(+ : s)
        for (int i = 0; i < count; i++)
            s += x[i];
        double m = s / count;
        double ss = 0;
#pragma omp parallel for num_threads(be->threads) reduction(+ : ss)
        for (int i = 0; i < count; i++)
            ss += ((double)x[i] - m) * ((double)x[i] - m);
        mean[b] = (float)m;
        std[b] = (float)sqrt(ss / (count > 1 ? count - 1 : 1));
    }
}

static void cpu_normalize(sep_backend *be, float *out, const float *in, const float *mean,
                          const float *std, int n, int count, float eps)
{
    for (int b = 0; b < n; b++) {
        const float *x = in + (size_t)b * count;
        float *y = out + (size_t)b * count;
        float m = mean[b], den = eps + std[b];
#pragma omp parallel for num_threads(be->threads) if (count > 65536)
        for (int i = 0; i < count; i++)
            y[i] = (x[i] - m) / den;
    }
}

static void cpu_denormalize(sep_backend *be, float *out, const float *in, const float *mean,
                            const float *std, int n, int count)
{
    for (int b = 0; b < n; b++) {
        const float *x = in + (size_t)b * count;
        float *y = out + (size_t)b * count;
        float m = mean[b], s = std[b];
#pragma omp parallel for num_threads(be->threads) if (count > 65536)
        for (int i = 0; i < count; i++)
            y[i] = x[i] * s + m;
    }
}

/* ---- element-wise ---- */

static void cpu_gelu(sep_backend *be, float *out, const float *in, size_t count)
{
    const cpu_kernels *ks = impl_of(be)->k;
    PAR_CHUNKS(be, count, 32768, lo, hi, ks->gelu(out + lo, in + lo, hi - lo));
}

static void cpu_relu(sep_backend *be, float *out, const float *in, size_t count)
{
#pragma omp parallel for num_threads(be->threads) if (count > 65536)
    for (size_t i = 0; i < count; i++)
        out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

static void cpu_glu(sep_backend *be, float *out, const float *in, int n, int c, int spatial)
{
    const cpu_kernels *ks = impl_of(be)->k;
    size_t plane = (size_t)c * spatial;
    for (int b = 0; b < n; b++) {
        const float *a = in + (size_t)b * 2 * plane, *g = a + plane;
        float *y = out + (size_t)b * plane;
        PAR_CHUNKS(be, plane, 32768, lo, hi, ks->glu(y + lo, a + lo, g + lo, hi - lo));
    }
}

static void cpu_add(sep_backend *be, float *out, const float *a, const float *b, size_t count)
{
#pragma omp parallel for num_threads(be->threads) if (count > 65536)
    for (size_t i = 0; i < count; i++)
        out[i] = a[i] + b[i];
}

static void cpu_add_scaled_channels(sep_backend *be, float *x, const float *y, const float *scale,
                                    int n, int c, int spatial)
{
    int rows = n * c;
#pragma omp parallel for num_threads(be->threads) if ((size_t)rows * spatial > 65536)
    for (int r = 0; r < rows; r++) {
        float s = scale[r % c];
        float *xp = x + (size_t)r * spatial;
        const float *yp = y + (size_t)r * spatial;
        for (int i = 0; i < spatial; i++)
            xp[i] += s * yp[i];
    }
}

static void cpu_add_scaled_last(sep_backend *be, float *x, const float *y, const float *scale,
                                int rows, int c)
{
#pragma omp parallel for num_threads(be->threads) if ((size_t)rows * c > 65536)
    for (int r = 0; r < rows; r++) {
        float *xp = x + (size_t)r * c;
        const float *yp = y + (size_t)r * c;
        if (scale)
            for (int i = 0; i < c; i++)
                xp[i] += scale[i] * yp[i];
        else
            for (int i = 0; i < c; i++)
                xp[i] += yp[i];
    }
}

static void cpu_add_table(sep_backend *be, float *x, const float *table, float alpha, int n,
                          int count)
{
    for (int b = 0; b < n; b++) {
        float *xp = x + (size_t)b * count;
#pragma omp parallel for num_threads(be->threads) if (count > 65536)
        for (int i = 0; i < count; i++)
            xp[i] += alpha * table[i];
    }
}

static void cpu_add_freq_table(sep_backend *be, float *x, const float *table, float alpha, int n,
                               int c, int f, int t)
{
    int rows = n * c * f;
#pragma omp parallel for num_threads(be->threads) if ((size_t)rows * t > 65536)
    for (int r = 0; r < rows; r++) {
        int fi = r % f, ch = (r / f) % c;
        float v = alpha * table[(size_t)fi * c + ch];
        float *xp = x + (size_t)r * t;
        for (int i = 0; i < t; i++)
            xp[i] += v;
    }
}

/* ---- layout ---- */

static void cpu_permute4(sep_backend *be, float *out, const float *in, const int dims[4],
                         const int perm[4])
{
    size_t istride[4];
    istride[3] = 1;
    for (int i = 2; i >= 0; i--)
        istride[i] = istride[i + 1] * (size_t)dims[i + 1];
    int od[4];
    size_t s[4];
    for (int i = 0; i < 4; i++) {
        od[i] = dims[perm[i]];
        s[i] = istride[perm[i]];
    }
    int outer = od[0] * od[1];
#pragma omp parallel for num_threads(be->threads) schedule(static)
    for (int o = 0; o < outer; o++) {
        int i0 = o / od[1], i1 = o % od[1];
        const float *src = in + i0 * s[0] + i1 * s[1];
        float *dst = out + (size_t)o * od[2] * od[3];
        for (int i2 = 0; i2 < od[2]; i2++) {
            const float *sp = src + i2 * s[2];
            float *dp = dst + (size_t)i2 * od[3];
            if (s[3] == 1)
                memcpy(dp, sp, (size_t)od[3] * sizeof(float));
            else
                for (int i3 = 0; i3 < od[3]; i3++)
                    dp[i3] = sp[i3 * s[3]];
        }
    }
}

static void cpu_copy_rows(sep_backend *be, float *out, size_t out_stride, const float *in,
                          size_t in_stride, int rows, size_t len)
{
    if (rows <= 0 || len == 0)
        return;
    /* fewer rows than threads (a whole tensor is one row): each row in pieces, unless
     * the two spans overlap (memmove's order then matters) */
    size_t ospan = (size_t)(rows - 1) * out_stride + len,
           ispan = (size_t)(rows - 1) * in_stride + len;
    int overlap = out < in + ispan && in < out + ospan;
    int pieces = rows < be->threads && !overlap ? be->threads : 1;
    size_t piece = (len + (size_t)pieces - 1) / (size_t)pieces;
#pragma omp parallel for num_threads(be->threads) if ((size_t)rows * len > 262144)
    for (int task = 0; task < rows * pieces; task++) {
        int r = task / pieces;
        size_t a = (size_t)(task % pieces) * piece, e = a + piece < len ? a + piece : len;
        if (a < e)
            memmove(out + (size_t)r * out_stride + a, in + (size_t)r * in_stride + a,
                    (e - a) * sizeof(float));
    }
}

/* ---- spectrogram ---- */

/* FFTW's planner is not thread-safe: every plan creation and destruction in the
 * process (all engines) goes through this lock. Plans are cached per backend. */
static pthread_mutex_t fftw_planner_lock = PTHREAD_MUTEX_INITIALIZER;

static const fft_plan *get_plan(sep_backend *be, int nfft)
{
    cpu_impl *c = impl_of(be);
    pthread_mutex_lock(&fftw_planner_lock);
    for (int i = 0; i < c->n_plans; i++) {
        if (c->plans[i].nfft == nfft) {
            pthread_mutex_unlock(&fftw_planner_lock);
            return &c->plans[i];
        }
    }
    if (c->n_plans == MAX_FFT_PLANS) {
        pthread_mutex_unlock(&fftw_planner_lock);
        fprintf(stderr, "cpu backend: too many FFT sizes\n");
        abort();
    }
    fft_plan *p = &c->plans[c->n_plans];
    float *r = fftwf_malloc(sizeof(float) * nfft);
    fftwf_complex *z = fftwf_malloc(sizeof(fftwf_complex) * (nfft / 2 + 1));
    p->r2c = fftwf_plan_dft_r2c_1d(nfft, r, z, FFTW_ESTIMATE);
    p->c2r = fftwf_plan_dft_c2r_1d(nfft, z, r, FFTW_ESTIMATE);
    fftwf_free(r);
    fftwf_free(z);
    p->window = fftwf_malloc(sizeof(float) * nfft);
    /* torch.hann_window(nfft) (periodic), computed in float like the reference */
    float step = (float)(2.0 * M_PI / nfft);
    for (int i = 0; i < nfft; i++)
        p->window[i] = 0.5f - 0.5f * cosf((float)i * step);
    p->nfft = nfft;
    c->n_plans++;
    pthread_mutex_unlock(&fftw_planner_lock);
    return p;
}

/* pad1d(x, (left, right), mode="reflect") from demucs.hdemucs, including its zero
 * extension of inputs shorter than the padding. */
static void pad1d_reflect(const float *x, int len, int left, int right, float *out)
{
    int max_pad = left > right ? left : right;
    int el = 0, er = 0;
    if (len <= max_pad) {
        int extra = max_pad - len + 1;
        er = right < extra ? right : extra;
        el = extra - er;
    }
    int n = len + el + er; /* the zero-extended signal */
    int pl = left - el;
    int total = len + left + right;
    for (int p = 0; p < total; p++) {
        int q = p - pl; /* index into the extended signal */
        if (q < 0)
            q = -q;
        if (q >= n)
            q = 2 * (n - 1) - q;
        int xi = q - el;
        out[p] = xi >= 0 && xi < len ? x[xi] : 0.0f;
    }
}

static void cpu_spec(sep_backend *be, float *out, const float *in, int nsig, int length, int nfft)
{
    const fft_plan *plan = get_plan(be, nfft);
    int hl = nfft / 4, F = nfft / 2;
    int le = (length + hl - 1) / hl;
    int pad = hl / 2 * 3;
    int plen = le * hl + 2 * pad;
    float norm = 1.0f / sqrtf((float)nfft);
    float *padded = scratch(be, (size_t)nsig * plen);
#pragma omp parallel num_threads(be->threads)
    {
        float *frame = fftwf_malloc(sizeof(float) * nfft);
        fftwf_complex *z = fftwf_malloc(sizeof(fftwf_complex) * (F + 1));
#pragma omp for schedule(static)
        for (int s = 0; s < nsig; s++)
            pad1d_reflect(in + (size_t)s * length, length, pad, pad + le * hl - length,
                          padded + (size_t)s * plen);
            /* stft(center=True) frames 2 .. 2+le of the padded signal start at fr * hl of
             * it (the centre padding of nfft/2 = 2 hops is cropped away exactly) */
#pragma omp for schedule(static)
        for (int job = 0; job < nsig * le; job++) {
            int s = job / le, fr = job % le;
            const float *src = padded + (size_t)s * plen + (size_t)fr * hl;
            for (int i = 0; i < nfft; i++)
                frame[i] = src[i] * plan->window[i];
            fftwf_execute_dft_r2c(plan->r2c, frame, z);
            float *re = out + (size_t)s * 2 * F * le, *im = re + (size_t)F * le;
            for (int f = 0; f < F; f++) {
                re[(size_t)f * le + fr] = z[f][0] * norm;
                im[(size_t)f * le + fr] = z[f][1] * norm;
            }
        }
        fftwf_free(frame);
        fftwf_free(z);
    }
}

static void cpu_ispec(sep_backend *be, float *out, const float *in, int nsig, int frames,
                      int length, int nfft)
{
    const fft_plan *plan = get_plan(be, nfft);
    int hl = nfft / 4, F = nfft / 2;
    int pad = hl / 2 * 3;
    /* istft over frames + 4 (two zero frames each side), centre: sample 0 of the
     * signal is at nfft/2 of the overlap-add buffer; then crop [pad, pad + length) */
    int total = frames + 4;
    size_t ola_len = (size_t)nfft + (size_t)hl * (total - 1);
    size_t start = (size_t)nfft / 2 + pad;
    if (start + length > ola_len) {
        fprintf(stderr, "cpu backend: ispec length %d exceeds %d frames\n", length, frames);
        abort();
    }
    float *env = scratch(be, ola_len + (size_t)be->threads * ola_len);
    memset(env, 0, ola_len * sizeof(float));
    for (int t = 0; t < total; t++)
        for (int i = 0; i < nfft; i++)
            env[(size_t)t * hl + i] += plan->window[i] * plan->window[i];
    float norm = 1.0f / sqrtf((float)nfft);
#pragma omp parallel num_threads(be->threads)
    {
        float *ola = env + ola_len * (1 + (size_t)omp_get_thread_num());
        float *frame = fftwf_malloc(sizeof(float) * nfft);
        fftwf_complex *z = fftwf_malloc(sizeof(fftwf_complex) * (F + 1));
#pragma omp for schedule(static)
        for (int s = 0; s < nsig; s++) {
            memset(ola, 0, ola_len * sizeof(float));
            const float *re = in + (size_t)s * 2 * F * frames, *im = re + (size_t)F * frames;
            for (int fr = 0; fr < frames; fr++) {
                for (int f = 0; f < F; f++) {
                    z[f][0] = re[(size_t)f * frames + fr];
                    z[f][1] = im[(size_t)f * frames + fr];
                }
                z[F][0] = z[F][1] = 0.0f;
                fftwf_execute_dft_c2r(plan->c2r, z, frame);
                float *dst = ola + (size_t)(fr + 2) * hl;
                for (int i = 0; i < nfft; i++)
                    dst[i] += frame[i] * norm * plan->window[i];
            }
            float *y = out + (size_t)s * length;
            for (int i = 0; i < length; i++)
                y[i] = ola[start + i] / env[start + i];
        }
        fftwf_free(frame);
        fftwf_free(z);
    }
}

/* ---- instruction set ---- */

/* the kernel tables of this build, narrowest first (the default is the last one the
 * CPU supports) */
static const cpu_kernels *const kernel_tables[] = {
    &cpu_kernels_generic,
#ifdef SEP_CPU_HAVE_X86_KERNELS
    &cpu_kernels_avx2,
    &cpu_kernels_avx512,
#endif
#ifdef SEP_CPU_HAVE_NEON_KERNELS
    &cpu_kernels_neon,
#endif
};
#define N_KERNEL_TABLES (sizeof(kernel_tables) / sizeof(kernel_tables[0]))

const char *const sep_cpu_isas[] = {
    "generic",
#ifdef SEP_CPU_HAVE_X86_KERNELS
    "avx2",    "avx512",
#endif
#ifdef SEP_CPU_HAVE_NEON_KERNELS
    "neon",
#endif
    NULL,
};

const char sep_cpu_isa_names[] = "generic"
#ifdef SEP_CPU_HAVE_X86_KERNELS
                                 ", avx2, avx512"
#endif
#ifdef SEP_CPU_HAVE_NEON_KERNELS
                                 ", neon"
#endif
    ;

int sep_cpu_isa_supported(const char *isa)
{
    if (strcmp(isa, "generic") == 0)
        return 1;
#ifdef SEP_CPU_HAVE_X86_KERNELS
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("bmi2");
    if (strcmp(isa, "avx2") == 0)
        return avx2;
    if (strcmp(isa, "avx512") == 0)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
#ifdef SEP_CPU_HAVE_NEON_KERNELS
    /* Advanced SIMD (with fused multiply-add) is part of the AArch64 base architecture */
    if (strcmp(isa, "neon") == 0)
        return 1;
#endif
    return 0;
}

static const cpu_kernels *kernels_named(const char *isa)
{
    for (size_t i = 0; i < N_KERNEL_TABLES; i++)
        if (strcmp(isa, kernel_tables[i]->name) == 0)
            return kernel_tables[i];
    return NULL;
}

const cpu_kernels *sep_cpu_kernels(char *err, size_t errlen)
{
    const char *want = getenv("SEP_CPU_ISA");
    if (want && *want) {
        const cpu_kernels *k = kernels_named(want);
        if (!k) {
            snprintf(err, errlen, "SEP_CPU_ISA=%s: unknown instruction set (%s)", want,
                     sep_cpu_isa_names);
            return NULL;
        }
        if (!sep_cpu_isa_supported(want)) {
            snprintf(err, errlen, "SEP_CPU_ISA=%s: this CPU does not support it", want);
            return NULL;
        }
        return k;
    }
    for (size_t i = N_KERNEL_TABLES; i-- > 0;)
        if (sep_cpu_isa_supported(kernel_tables[i]->name))
            return kernel_tables[i];
    return &cpu_kernels_generic;
}

double sep_cpu_fma_peak_gflops(const char *isa, int threads, double seconds, double *per_cpu_second)
{
    if (per_cpu_second)
        *per_cpu_second = 0;
    char err[256];
    const cpu_kernels *k = isa ? kernels_named(isa) : sep_cpu_kernels(err, sizeof err);
    if (!k || (isa && !sep_cpu_isa_supported(isa)))
        return 0;
    if (threads <= 0)
        threads = omp_get_num_procs();
    /* calibrate the iteration count on one thread for trials of seconds / 5, run the
     * trials on all threads at once and keep the best (other load only slows) */
    double trial = seconds / 5;
    long iters = 1 << 12;
    for (;;) {
        double t0 = omp_get_wtime();
        k->fma_loop(iters);
        double dt = omp_get_wtime() - t0;
        if (dt > trial / 10 || iters > (1L << 40)) {
            iters = (long)((double)iters * (trial / (dt > 0 ? dt : 1e-9)));
            break;
        }
        iters *= 4;
    }
    if (iters < 1)
        iters = 1;
    double best = 0;
    for (int t = 0; t < 5; t++) {
        double flops = 0, t0 = omp_get_wtime(), c0 = sep_cpu_seconds();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
        flops += k->fma_loop(iters);
        double g = flops / (omp_get_wtime() - t0) / 1e9;
        double gc = flops / (sep_cpu_seconds() - c0) / 1e9;
        best = g > best ? g : best;
        if (per_cpu_second && gc > *per_cpu_second)
            *per_cpu_second = gc;
    }
    return best;
}

static void cpu_destroy(sep_backend *be)
{
    if (!be)
        return;
    cpu_impl *c = impl_of(be);
    if (c) {
        pthread_mutex_lock(&fftw_planner_lock);
        for (int i = 0; i < c->n_plans; i++) {
            fftwf_destroy_plan(c->plans[i].r2c);
            fftwf_destroy_plan(c->plans[i].c2r);
            fftwf_free(c->plans[i].window);
        }
        pthread_mutex_unlock(&fftw_planner_lock);
        free(c->scratch);
        free(c);
    }
    free(be);
}

static const sep_backend_ops cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .zero = cpu_zero,
    .weights = cpu_weights,
    .weights_free = cpu_weights_free,
    .sync = cpu_sync,
    .conv2d = cpu_conv2d,
    .conv_tr2d = cpu_conv_tr2d,
    .conv_tr2d_window = cpu_conv_tr2d_window,
    .linear = cpu_linear,
    .attention = cpu_attention,
    .group_norm = cpu_group_norm,
    .group_norm_rows = cpu_group_norm_rows,
    .dconv_residual = cpu_dconv_residual,
    .dconv_tail = cpu_dconv_tail,
    .group_norm_tokens = cpu_group_norm_tokens,
    .layer_norm = cpu_layer_norm,
    .moments = cpu_moments,
    .normalize = cpu_normalize,
    .denormalize = cpu_denormalize,
    .gelu = cpu_gelu,
    .relu = cpu_relu,
    .glu = cpu_glu,
    .add = cpu_add,
    .add_scaled_channels = cpu_add_scaled_channels,
    .add_scaled_last = cpu_add_scaled_last,
    .add_table = cpu_add_table,
    .add_freq_table = cpu_add_freq_table,
    .permute4 = cpu_permute4,
    .copy_rows = cpu_copy_rows,
    .spec = cpu_spec,
    .ispec = cpu_ispec,
    .destroy = cpu_destroy,
};

sep_backend *sep_cpu_backend_create(int threads, char *err, size_t errlen)
{
    const cpu_kernels *k = sep_cpu_kernels(err, errlen);
    if (!k)
        return NULL;
    sep_backend *be = calloc(1, sizeof(*be));
    cpu_impl *c = calloc(1, sizeof(*c));
    if (!be || !c) {
        free(be);
        free(c);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (threads <= 0)
        threads = omp_get_num_procs();
    c->threads = threads;
    c->k = k;
    const cpu_gemm *g = sep_cpu_gemm(k->name, err, errlen);
    if (!g) {
        free(be);
        free(c);
        return NULL;
    }
    c->sgemm = g->sgemm;
    const char *wino = getenv("SEP_CPU_WINOGRAD");
    c->winograd = !wino ? 4 : strcmp(wino, "0") == 0 ? 0 : strcmp(wino, "2") == 0 ? 2 : 4;
    be->name = "cpu";
    be->ops = &cpu_ops;
    be->threads = threads;
    be->impl = c;
    be->host_memory = 1;
    /* OpenBLAS runs single-threaded inside our threads (see gemm()). */
    openblas_set_num_threads(1);
    return be;
}
