/*
 * cpu_kernels_impl.h - the body of one kernel table (cpu_kernels.h), included by
 * cpu_kernels_{generic,avx2,avx512}.c, each compiled for its instruction set.
 *
 * The includer defines KTABLE (the table's name), VW (floats per vector register),
 * COB and NV (the direct convolution's register block: COB output channels x NV
 * vectors of positions, COB * NV accumulators kept in registers). Everything here
 * is static: only the table is visible outside the including file.
 */
#include "models/cpu_kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float vf __attribute__((vector_size(VW * sizeof(float))));
#define TB (NV * VW) /* positions per block */

/* expf for the vectorised loops: Cody-Waite range reduction x = n ln2 + r and the
 * Cephes degree-6 polynomial (about 1 ulp); branch-free so loops vectorise. Inputs
 * are clamped to the finite range (below -87.3 the result is ~1e-38, not 0). */
static inline __attribute__((always_inline)) float vexp(float x)
{
    x = fmaxf(x, -87.3f);
    x = fminf(x, 88.7f);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)n + 127) << 23};
    return p * scale.f;
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

static float k_softmax_exp(float *s, int n, float max)
{
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int i = 0; i < n; i++) {
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

static float k_max(const float *s, int n)
{
    float m = s[0];
#pragma omp simd reduction(max : m)
    for (int i = 1; i < n; i++)
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
            /* one input row per channel: too many streams for the hardware prefetcher */
            __builtin_prefetch(xc + 8 * TB);
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
    .scale = k_scale,
    .affine = k_affine,
    .conv_row_interior = k_conv_row_interior,
    .fma_loop = k_fma_loop,
};
