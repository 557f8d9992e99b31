/*
 * cpu_kernels_impl.h - the body of one kernel table (cpu_kernels.h), included by
 * cpu_kernels_{generic,avx2,avx512,neon}.c, each compiled for its instruction set.
 *
 * The includer defines KTABLE (the table's name), VW (floats per vector register),
 * COB and NV (the direct convolution's register block: COB output channels x NV
 * vectors of positions, COB * NV accumulators kept in registers). Everything here
 * is static: only the table is visible outside the including file.
 */
#include "models/cpu_kernels.h"

#include <math.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>

typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(int32_t))));
#define TB (NV * VW) /* positions per block */

/* exp(x) = 2^n p for n = round(x / ln2): r = x - n ln2 in two steps (Cody-Waite), and
 * p = e^r = 1 + r + r^2 q(r) with q of degree 3, fitted for the least relative error on
 * |r| <= ln2 / 2 (1.05e-7; 1.6e-7 evaluated in float); scalars or vectors alike. */
#define EXP_REDUCED(r, p, x, n)                                                                    \
    do {                                                                                           \
        r = (x) - (n)*0.693359375f;                                                                \
        r = r - (n) * -2.12194440e-4f;                                                             \
        p = r * 8.3125298843e-3f + 4.1890114546e-2f;                                               \
        p = p * r + 1.6667114198e-1f;                                                              \
        p = p * r + 4.9999231100e-1f;                                                              \
        p = p * (r * r) + r + 1.0f;                                                                \
    } while (0)

/* Rounding by the magic constant 1.5 * 2^23: m = x / ln2 + 1.5 * 2^23 holds n = round(x /
 * ln2) in its low mantissa bits, so 2^n p is p with n added to its exponent bits,
 * (bits of m) << 23. Valid for a normal result: the clamps keep n in [-125, 127]. */
#define EXP_MAGIC 12582912.0f
#define EXP_MIN -86.5f
#define EXP_MAX 88.3f

/* expf for the vectorised loops (about 2 ulp), branch-free so loops vectorise. Inputs
 * are clamped to the finite range (below -86.5 the result is ~3e-38, not 0). */
static inline __attribute__((always_inline)) float vexp(float x)
{
    x = fmaxf(x, EXP_MIN);
    x = fminf(x, EXP_MAX);
    float m = x * 1.44269504088896341f + EXP_MAGIC, n = m - EXP_MAGIC;
    float r, p;
    EXP_REDUCED(r, p, x, n);
    union {
        int32_t i;
        float f;
    } mb = {.f = m}, pb = {.f = p};
    pb.i += (int32_t)((uint32_t)mb.i << 23);
    return pb.f;
}

/* erf(x) by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), the form PyTorch's
 * vectorised GELU uses. */
static inline __attribute__((always_inline)) float verf(float x)
{
    float a = fabsf(x);
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float y = 1.061405429f;
    y = y * t - 1.453152027f;
    y = y * t + 1.421413741f;
    y = y * t - 0.284496736f;
    y = y * t + 0.254829592f;
    y = 1.0f - y * t * vexp(-a * a);
    return copysignf(y, x);
}

static inline __attribute__((always_inline)) float vgelu(float x)
{
    return 0.5f * x * (1.0f + verf(x * 0.70710678118654752f));
}

static void k_gelu(float *out, const float *in, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        out[i] = vgelu(in[i]);
}

static void k_glu(float *out, const float *a, const float *g, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] / (1.0f + vexp(-g[i]));
}

/* vexp on a whole vector, for x <= 0 (softmax: scores minus their row maximum): the
 * same reduction and polynomial. AVX-512 scales by 2^n with vscalefps, which also
 * takes n below -126 to 0, so it needs no clamp; elsewhere x is clamped below and n
 * added to the exponent bits as in vexp. */
static inline __attribute__((always_inline)) vf vexp_nonpositive(vf x)
{
#if defined(__AVX512F__) && VW == 16
    vf n = (vf)_mm512_roundscale_ps((__m512)(x * 1.44269504088896341f),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    vf lo = {0};
    lo += EXP_MIN;
    vi below = x < lo;
    x = (vf)((below & (vi)lo) | (~below & (vi)x));
    vf m = x * 1.44269504088896341f + EXP_MAGIC;
    vf n = m - EXP_MAGIC;
#endif
    vf r, p;
    EXP_REDUCED(r, p, x, n);
#if defined(__AVX512F__) && VW == 16
    return (vf)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
    return (vf)((vi)p + ((vi)m << 23));
#endif
}

/* s[i] = exp(s[i] - max) (every s[i] <= max); returns their sum. */
static float k_softmax_exp(float *s, int n, float max)
{
    int i = 0;
    vf acc = {0};
    for (; i + VW <= n; i += VW) {
        vf x;
        memcpy(&x, s + i, sizeof(vf));
        x = vexp_nonpositive(x - max);
        memcpy(s + i, &x, sizeof(vf));
        acc += x;
    }
    float sum = 0.0f;
    for (int j = 0; j < VW; j++)
        sum += acc[j];
    for (; i < n; i++) {
        s[i] = vexp(s[i] - max);
        sum += s[i];
    }
    return sum;
}

static void k_norm_glu_residual(float *x, const float *a, const float *g, float sa, float ba,
                                float sg, float bg, float k, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++) {
        float av = a[i] * sa + ba, gv = g[i] * sg + bg;
        x[i] += k * (av / (1.0f + vexp(-gv)));
    }
}

/* Written with explicit vectors: GCC 12 compiled the `omp simd reduction(max)` form of
 * this loop to scalar vmaxss once it was inlined into attention_tile (a fifth of that
 * kernel's time). */
static float k_max(const float *s, int n)
{
    float m = s[0];
    int i = 1;
    if (n >= 2 * VW) {
        vf mv;
        memcpy(&mv, s, sizeof(vf));
        for (i = VW; i + VW <= n; i += VW) {
            vf x;
            memcpy(&x, s + i, sizeof(vf));
            vi gt = x > mv;
            mv = (vf)((gt & (vi)x) | (~gt & (vi)mv));
        }
        for (int j = 0; j < VW; j++)
            m = mv[j] > m ? mv[j] : m;
    }
    for (; i < n; i++)
        m = s[i] > m ? s[i] : m;
    return m;
}

static void k_sum_squares(const float *x, size_t n, double *s, double *ss)
{
    double a = *s, b = *ss;
#pragma omp simd reduction(+ : a, b)
    for (size_t i = 0; i < n; i++) {
        a += x[i];
        b += (double)x[i] * x[i];
    }
    *s = a;
    *ss = b;
}

static double k_dot(const float *a, const float *b, size_t n)
{
    double d = 0;
#pragma omp simd reduction(+ : d)
    for (size_t i = 0; i < n; i++)
        d += (double)a[i] * b[i];
    return d;
}

static void k_scale(float *s, int n, float k)
{
#pragma omp simd
    for (int i = 0; i < n; i++)
        s[i] *= k;
}

static void k_affine(float *y, const float *x, size_t n, float sc, float sh, int gelu)
{
    if (gelu) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            y[i] = vgelu(x[i] * sc + sh);
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            y[i] = x[i] * sc + sh;
    }
}

/* COB channels x NV vectors of accumulators; each input vector is loaded once for the
 * COB channels, each weight broadcast once for the NV vectors. */
static int k_conv_row_interior(float *y, size_t oplane, int nco, const float *x, size_t plane,
                               const float *wb, int cin, int kw, const int *off, const float *b,
                               int t0, int t1)
{
    int t = t0;
    if (t1 - t0 < TB)
        return t0;
    while (t < t1) {
        if (t + TB > t1)
            t = t1 - TB;
        vf acc[COB][NV];
        for (int j = 0; j < COB; j++) {
            vf bj = {0};
            bj += b[j];
            for (int v = 0; v < NV; v++)
                acc[j][v] = bj;
        }
        for (int ci = 0; ci < cin; ci++) {
            const float *xc = x + (size_t)ci * plane + t;
            /* one input row per channel: too many streams for the hardware prefetcher;
             * every cache line of the block 8 blocks ahead (TB floats are two lines
             * with AVX-512) */
            for (int l = 0; l < TB; l += 16)
                __builtin_prefetch(xc + 8 * TB + l);
            for (int kj = 0; kj < kw; kj++) {
                const float *xp = xc + off[kj];
                const float *wk = wb + (size_t)(ci * kw + kj) * COB;
                vf xv[NV];
                for (int v = 0; v < NV; v++)
                    memcpy(&xv[v], xp + v * VW, sizeof(vf));
                for (int j = 0; j < COB; j++) {
                    float wj = wk[j];
                    for (int v = 0; v < NV; v++)
                        acc[j][v] += wj * xv[v];
                }
            }
        }
        for (int j = 0; j < nco; j++)
            for (int v = 0; v < NV; v++)
                memcpy(y + (size_t)j * oplane + t + v * VW, &acc[j][v], sizeof(vf));
        t += TB;
    }
    return t;
}

/* C[r][0..TB) (+)= alpha * sum_k A(r, k) B[k][0..TB) for rows r < nr (nr <= COB), with
 * A(r, k) = A[r * ar + k * ak]: the register block of the attention products. A is
 * read by broadcasts, B (row stride ldb) by vector loads. accumulate: C's values are
 * added to (and alpha is 1). */
static inline __attribute__((always_inline)) void mk_block(float *C, size_t ldc, const float *A,
                                                           size_t ar, size_t ak, const float *B,
                                                           size_t ldb, int kdim, int nr,
                                                           float alpha, int accumulate)
{
    vf acc[COB][NV];
    const float *arow[COB];
    for (int r = 0; r < COB; r++) {
        arow[r] = A + (size_t)(r < nr ? r : nr - 1) * ar;
        for (int v = 0; v < NV; v++) {
            vf z = {0};
            if (accumulate && r < nr)
                memcpy(&z, C + (size_t)r * ldc + v * VW, sizeof(vf));
            acc[r][v] = z;
        }
    }
    for (int k = 0; k < kdim; k++) {
        vf bv[NV];
        for (int v = 0; v < NV; v++)
            memcpy(&bv[v], B + (size_t)k * ldb + v * VW, sizeof(vf));
        for (int r = 0; r < COB; r++) {
            float a = arow[r][(size_t)k * ak];
            for (int v = 0; v < NV; v++)
                acc[r][v] += a * bv[v];
        }
    }
    for (int r = 0; r < nr; r++)
        for (int v = 0; v < NV; v++) {
            vf o = accumulate ? acc[r][v] : acc[r][v] * alpha;
            memcpy(C + (size_t)r * ldc + v * VW, &o, sizeof(vf));
        }
}

/* Keys and values of one head repacked for attention_tile: kp [nkp/TB][hd][TB] (each
 * panel TB keys wide, transposed: keys in vectors; keys past nk are zero) and
 * vp [hd/TB][nk][TB] (TB columns of every value row), nkp = nk rounded up to TB. */
static void k_attention_pack(float *kp, float *vp, const float *k, size_t ldk, const float *v,
                             size_t ldv, int nk, int hd)
{
    int nkp = (nk + TB - 1) / TB * TB;
    for (int j0 = 0; j0 < nkp; j0 += TB) {
        float *panel = kp + (size_t)j0 * hd;
        for (int d = 0; d < hd; d++)
            for (int j = 0; j < TB; j++)
                panel[(size_t)d * TB + j] = j0 + j < nk ? k[(size_t)(j0 + j) * ldk + d] : 0.0f;
    }
    for (int c = 0; c < hd; c += TB) {
        float *panel = vp + (size_t)c * nk;
        for (int j = 0; j < nk; j++)
            memcpy(panel + (size_t)j * TB, v + (size_t)j * ldv + c, TB * sizeof(float));
    }
}

/* One head and tile of nq query rows of attention (see cpu_kernels.h), on keys and
 * values packed by attention_pack. The tile's queries are copied contiguous (qc);
 * per tile of ATTN_KT keys: S = scale Q K^T (queries broadcast, TB keys per vector
 * block, each key panel reused from L1 by all query blocks), then per query row an
 * online softmax over the tile's keys (running max m and sum l; the output row is
 * rescaled by exp(m_old - m_new) when the max grows), then O += P V (P's rows
 * broadcast, a TB-wide column panel of V reused from L1 by all query blocks), and
 * O / l at the end. S rows are padded by a cache line (a row stride that is a large
 * power of two would map a column of rows onto a few L1 sets). */
#ifndef ATTN_KT
#define ATTN_KT 256
#endif
#define ATTN_LDS (ATTN_KT + 16)
static void k_attention_tile(float *out, size_t ldo, const float *q, size_t ldq, const float *kp,
                             const float *vp, int nq, int nk, int hd, float scale, float *work)
{
    float *qc = work;                     /* [nq][hd] */
    float *s = qc + (size_t)nq * hd;      /* [nq][ATTN_LDS] */
    float *o = s + (size_t)nq * ATTN_LDS; /* [nq][hd] */
    float *m = o + (size_t)nq * hd, *l = m + nq;
    /* the scale applied to the queries as they are copied (exact for power-of-two
     * head sizes: 1/8 at 64) */
    for (int i = 0; i < nq; i++)
        for (int c = 0; c < hd; c++)
            qc[(size_t)i * hd + c] = q[(size_t)i * ldq + c] * scale;
    for (int k0 = 0; k0 < nk; k0 += ATTN_KT) {
        int nkt = nk - k0 < ATTN_KT ? nk - k0 : ATTN_KT;
        for (int j0 = 0; j0 < nkt; j0 += TB)
            for (int i0 = 0; i0 < nq; i0 += COB) {
                int nr = nq - i0 < COB ? nq - i0 : COB;
                mk_block(s + (size_t)i0 * ATTN_LDS + j0, ATTN_LDS, qc + (size_t)i0 * hd, hd, 1,
                         kp + (size_t)(k0 + j0) * hd, TB, hd, nr, 1.0f, 0);
            }
        for (int i = 0; i < nq; i++) {
            float *si = s + (size_t)i * ATTN_LDS;
            float mx = k_max(si, nkt);
            if (k0 == 0) {
                m[i] = mx;
                l[i] = k_softmax_exp(si, nkt, mx);
            } else {
                float mnew = mx > m[i] ? mx : m[i];
                float alpha = vexp(m[i] - mnew);
                m[i] = mnew;
                l[i] = l[i] * alpha + k_softmax_exp(si, nkt, mnew);
                if (alpha != 1.0f)
                    k_scale(o + (size_t)i * hd, hd, alpha);
            }
        }
        for (int c = 0; c < hd; c += TB)
            for (int i0 = 0; i0 < nq; i0 += COB) {
                int nr = nq - i0 < COB ? nq - i0 : COB;
                mk_block(o + (size_t)i0 * hd + c, hd, s + (size_t)i0 * ATTN_LDS, ATTN_LDS, 1,
                         vp + (size_t)c * nk + (size_t)k0 * TB, TB, nkt, nr, 1.0f, k0 > 0);
            }
    }
    for (int i = 0; i < nq; i++) {
        float inv = 1.0f / l[i];
        const float *oi = o + (size_t)i * hd;
        float *yi = out + (size_t)i * ldo;
        for (int c = 0; c < hd; c++)
            yi[c] = oi[c] * inv;
    }
}

static size_t k_attention_kp_floats(int nk, int hd)
{
    return (size_t)(nk + TB - 1) / TB * TB * hd;
}

static size_t k_attention_work_floats(int nq, int hd)
{
    return 2 * (size_t)nq * hd + (size_t)nq * ATTN_LDS + 2 * (size_t)nq;
}

/* Winograd F(2x2, 3x3) input transform of n consecutive tiles of one tile row and
 * channel: ev[i] / od[i] are the even / odd columns of the tile row's input row i
 * (padded: column -1 first), so tile t's 4x4 patch row i is ev[i][t], od[i][t],
 * ev[i][t + 1], od[i][t + 1]; v[e * vstride + t] = (B^T d B)[e]. */
static void k_wino_input(float *v, size_t vstride, const float *const ev[4],
                         const float *const od[4], int n)
{
    const float *e0 = ev[0], *e1 = ev[1], *e2 = ev[2], *e3 = ev[3];
    const float *o0 = od[0], *o1 = od[1], *o2 = od[2], *o3 = od[3];
#pragma omp simd
    for (int t = 0; t < n; t++) {
        float d0[4] = {e0[t], o0[t], e0[t + 1], o0[t + 1]};
        float d1[4] = {e1[t], o1[t], e1[t + 1], o1[t + 1]};
        float d2[4] = {e2[t], o2[t], e2[t + 1], o2[t + 1]};
        float d3[4] = {e3[t], o3[t], e3[t + 1], o3[t + 1]};
        float u[4][4];
        for (int j = 0; j < 4; j++) {
            u[0][j] = d0[j] - d2[j];
            u[1][j] = d1[j] + d2[j];
            u[2][j] = d2[j] - d1[j];
            u[3][j] = d1[j] - d3[j];
        }
        for (int i = 0; i < 4; i++) {
            v[(size_t)(4 * i + 0) * vstride + t] = u[i][0] - u[i][2];
            v[(size_t)(4 * i + 1) * vstride + t] = u[i][1] + u[i][2];
            v[(size_t)(4 * i + 2) * vstride + t] = u[i][2] - u[i][1];
            v[(size_t)(4 * i + 3) * vstride + t] = u[i][1] - u[i][3];
        }
    }
}

/* Winograd F(2x2, 3x3) output transform of n tiles of one channel:
 * y[(2 i + j) * ystride + t] = (A^T M A)[i][j] + b, M[e] = m[e * mstride + t]. */
static void k_wino_output(float *y, size_t ystride, const float *m, size_t mstride, float b, int n)
{
#pragma omp simd
    for (int t = 0; t < n; t++) {
        float r0[4], r1[4];
        for (int j = 0; j < 4; j++) {
            float m0 = m[(size_t)j * mstride + t], m1 = m[(size_t)(4 + j) * mstride + t];
            float m2 = m[(size_t)(8 + j) * mstride + t], m3 = m[(size_t)(12 + j) * mstride + t];
            r0[j] = m0 + m1 + m2;
            r1[j] = m1 - m2 - m3;
        }
        y[t] = r0[0] + r0[1] + r0[2] + b;
        y[ystride + t] = r0[1] - r0[2] - r0[3] + b;
        y[2 * ystride + t] = r1[0] + r1[1] + r1[2] + b;
        y[3 * ystride + t] = r1[1] - r1[2] - r1[3] + b;
    }
}

/* Winograd F(4x4, 3x3) input transform (points 0, +-1, +-2, inf) of n consecutive
 * tiles of one tile row and channel: ph[i][p] holds the columns 4k - 1 + p (k from the
 * first tile on) of the tile row's input row i, so tile t's 6x6 patch row i is
 * ph[i][0..3][t], ph[i][0][t + 1], ph[i][1][t + 1]; v[e * vstride + t] = (B^T d B)[e]. */
/* B^T of F(4x4, 3x3) applied to one column (or row) d0..d5 of a patch */
#define WINO4_BT(o0, o1, o2, o3, o4, o5, d0, d1, d2, d3, d4, d5)                                   \
    do {                                                                                           \
        o0 = 4.0f * (d0)-5.0f * (d2) + (d4);                                                       \
        o1 = -4.0f * ((d1) + (d2)) + (d3) + (d4);                                                  \
        o2 = 4.0f * ((d1) - (d2)) - (d3) + (d4);                                                   \
        o3 = 2.0f * ((d3) - (d1)) - (d2) + (d4);                                                   \
        o4 = 2.0f * ((d1) - (d3)) - (d2) + (d4);                                                   \
        o5 = 4.0f * (d1)-5.0f * (d3) + (d5);                                                       \
    } while (0)

static void k_wino4_input(float *v, size_t vstride, const float *const ph[6][4], int n)
{
    /* rows first, each row's transform stored where its column pass reads it, then the
     * columns in place: two passes of six streams in and six out, which vectorise */
    for (int i = 0; i < 6; i++) {
        const float *p0 = ph[i][0], *p1 = ph[i][1], *p2 = ph[i][2], *p3 = ph[i][3];
        float *u0 = v + (size_t)(6 * i) * vstride;
        float *u1 = u0 + vstride, *u2 = u1 + vstride, *u3 = u2 + vstride, *u4 = u3 + vstride,
              *u5 = u4 + vstride;
#pragma omp simd
        for (int t = 0; t < n; t++)
            WINO4_BT(u0[t], u1[t], u2[t], u3[t], u4[t], u5[t], p0[t], p1[t], p2[t], p3[t],
                     p0[t + 1], p1[t + 1]);
    }
    for (int j = 0; j < 6; j++) {
        float *r0 = v + (size_t)j * vstride;
        float *r1 = r0 + 6 * vstride, *r2 = r1 + 6 * vstride, *r3 = r2 + 6 * vstride,
              *r4 = r3 + 6 * vstride, *r5 = r4 + 6 * vstride;
#pragma omp simd
        for (int t = 0; t < n; t++) {
            float d0 = r0[t], d1 = r1[t], d2 = r2[t], d3 = r3[t], d4 = r4[t], d5 = r5[t];
            WINO4_BT(r0[t], r1[t], r2[t], r3[t], r4[t], r5[t], d0, d1, d2, d3, d4, d5);
        }
    }
}

/* Winograd F(4x4, 3x3) output transform of n tiles of one channel:
 * y[(4 i + j) * ystride + t] = (A^T M A)[i][j] + b, M[e] = m[e * mstride + t]. */
static void k_wino4_output(float *y, size_t ystride, const float *m, size_t mstride, float b, int n)
{
#pragma omp simd
    for (int t = 0; t < n; t++) {
        float r[4][6];
        for (int j = 0; j < 6; j++) {
            float m0 = m[(size_t)j * mstride + t], m1 = m[(size_t)(6 + j) * mstride + t];
            float m2 = m[(size_t)(12 + j) * mstride + t], m3 = m[(size_t)(18 + j) * mstride + t];
            float m4 = m[(size_t)(24 + j) * mstride + t], m5 = m[(size_t)(30 + j) * mstride + t];
            float a = m1 + m2, s = m1 - m2, c = m3 + m4, e = m3 - m4;
            r[0][j] = m0 + a + c;
            r[1][j] = s + 2.0f * e;
            r[2][j] = a + 4.0f * c;
            r[3][j] = s + 8.0f * e + m5;
        }
        for (int i = 0; i < 4; i++) {
            float a = r[i][1] + r[i][2], s = r[i][1] - r[i][2], c = r[i][3] + r[i][4],
                  e = r[i][3] - r[i][4];
            y[(size_t)(4 * i + 0) * ystride + t] = r[i][0] + a + c + b;
            y[(size_t)(4 * i + 1) * ystride + t] = s + 2.0f * e + b;
            y[(size_t)(4 * i + 2) * ystride + t] = a + 4.0f * c + b;
            y[(size_t)(4 * i + 3) * ystride + t] = s + 8.0f * e + r[i][5] + b;
        }
    }
}

/* 10 independent multiply-add chains (enough to cover the FMA latency x throughput
 * of current cores); the result is kept so the loop is not removed */
static double k_fma_loop(long iters)
{
    vf a[10];
    vf m = {0}, c = {0};
    m += 0.999999f;
    c += 1e-7f;
    for (int j = 0; j < 10; j++) {
        vf z = {0};
        a[j] = z + (float)(j + 1);
    }
    for (long i = 0; i < iters; i++) {
        for (int j = 0; j < 10; j++)
            a[j] = a[j] * m + c;
    }
    vf s = {0};
    for (int j = 0; j < 10; j++)
        s += a[j];
    volatile float sink = s[0];
    (void)sink;
    return (double)iters * 10 * VW * 2;
}

const cpu_kernels KTABLE = {
    .name = KNAME,
    .co_block = COB,
    .t_block = TB,
    .gelu = k_gelu,
    .glu = k_glu,
    .softmax_exp = k_softmax_exp,
    .norm_glu_residual = k_norm_glu_residual,
    .max = k_max,
    .sum_squares = k_sum_squares,
    .dot = k_dot,
    .scale = k_scale,
    .affine = k_affine,
    .conv_row_interior = k_conv_row_interior,
    .attn_ktile = ATTN_KT,
    .attention_pack = k_attention_pack,
    .attention_tile = k_attention_tile,
    .attention_kp_floats = k_attention_kp_floats,
    .attention_work_floats = k_attention_work_floats,
    .wino_input = k_wino_input,
    .wino_output = k_wino_output,
    .wino4_input = k_wino4_input,
    .wino4_output = k_wino4_output,
    .fma_loop = k_fma_loop,
};
