/*
 * cpu_kernels.h - the CPU backend's inner kernels, compiled once per instruction set.
 *
 * cpu_kernels_impl.h holds the kernels (element-wise functions, reductions, the
 * direct convolution's register block, an FMA probe); it is compiled once per set the
 * target has: cpu_kernels_generic.c (any target: plain C), on x86-64
 * cpu_kernels_avx2.c (x86-64-v3: AVX2 + FMA) and cpu_kernels_avx512.c (x86-64-v4:
 * AVX-512), on arm64 cpu_kernels_neon.c (Advanced SIMD, 32 registers). The CPU
 * backend picks one table at run time: the widest this CPU supports, or the one
 * SEP_CPU_ISA names (generic, avx2, avx512 on x86-64; generic, neon on arm64).
 */
#ifndef SEP_MODELS_CPU_KERNELS_H
#define SEP_MODELS_CPU_KERNELS_H

#include <stddef.h>

typedef struct {
    const char *name; /* "generic", "avx2", "avx512", "neon" */
    /* direct row convolution: co_block output channels x t_block positions per block */
    int co_block, t_block;
    void (*gelu)(float *out, const float *in, size_t n);
    /* out = a * sigmoid(g) */
    void (*glu)(float *out, const float *a, const float *g, size_t n);
    /* s = exp(s - max) in place; returns the sum */
    float (*softmax_exp)(float *s, int n, float max);
    /* x += k * (a*sa + ba) * sigmoid(g*sg + bg) */
    void (*norm_glu_residual)(float *x, const float *a, const float *g, float sa, float ba,
                              float sg, float bg, float k, int n);
    float (*max)(const float *s, int n);
    /* *s += sum x, *ss += sum x^2 (double accumulation) */
    void (*sum_squares)(const float *x, size_t n, double *s, double *ss);
    /* sum a[i] b[i] (double accumulation) */
    double (*dot)(const float *a, const float *b, size_t n);
    void (*scale)(float *s, int n, float k);
    /* y = x * sc + sh, then GELU when gelu is set */
    void (*affine)(float *y, const float *x, size_t n, float sc, float sh, int gelu);
    /* y[j][t] = b[j] + sum_{ci,kj} wb[ci*kw+kj][j] x[ci][t + off[kj]] for j < nco
     * (wb: [cin*kw][co_block]), t in [t0, t1) with every tap inside the row, in blocks
     * of t_block (the last one shifted back to end at t1); returns the first position
     * not done (t0 when the range is shorter than a block) */
    int (*conv_row_interior)(float *y, size_t oplane, int nco, const float *x, size_t plane,
                             const float *wb, int cin, int kw, const int *off, const float *b,
                             int t0, int t1);
    /* attention of one head: attention_pack repacks its nk keys and values once (kp:
     * attention_kp_floats(nk, hd) floats, vp: nk * hd), then attention_tile computes nq
     * query rows (a tile) against all of them: keys in tiles of attn_ktile, scores, an
     * online softmax, O += P V (register blocks of co_block x t_block); hd must be a
     * multiple of t_block. work: attention_work_floats(nq, hd) floats. */
    int attn_ktile;
    void (*attention_pack)(float *kp, float *vp, const float *k, size_t ldk, const float *v,
                           size_t ldv, int nk, int hd);
    void (*attention_tile)(float *out, size_t ldo, const float *q, size_t ldq, const float *kp,
                           const float *vp, int nq, int nk, int hd, float scale, float *work);
    size_t (*attention_kp_floats)(int nk, int hd);
    size_t (*attention_work_floats)(int nq, int hd);
    /* Winograd F(2x2, 3x3) transforms (cpu_backend.c conv3x3_winograd): the input
     * transform of n tiles of one tile row from its rows' even and odd columns, and
     * the output transform of n tiles of one channel (plus the bias) */
    void (*wino_input)(float *v, size_t vstride, const float *const ev[4], const float *const od[4],
                       int n);
    void (*wino_output)(float *y, size_t ystride, const float *m, size_t mstride, float b, int n);
    /* the same for Winograd F(4x4, 3x3): the input transform of n tiles from the six
     * rows' columns split by their position mod 4, the output transform of n tiles */
    void (*wino4_input)(float *v, size_t vstride, const float *const ph[6][4], int n);
    void (*wino4_output)(float *y, size_t ystride, const float *m, size_t mstride, float b, int n);
    /* a register-only FMA loop of `iters` iterations; returns the flops done */
    double (*fma_loop)(long iters);
} cpu_kernels;

extern const cpu_kernels cpu_kernels_generic;
#if defined(__x86_64__) && defined(__GNUC__)
#define SEP_CPU_HAVE_X86_KERNELS 1
extern const cpu_kernels cpu_kernels_avx2;
extern const cpu_kernels cpu_kernels_avx512;
#endif
#if defined(__aarch64__) && defined(__GNUC__)
#define SEP_CPU_HAVE_NEON_KERNELS 1
extern const cpu_kernels cpu_kernels_neon;
#endif

/* The instruction sets this build has kernels for, narrowest first, NULL-terminated
 * ("generic", "avx2", "avx512" on x86-64; "generic", "neon" on arm64), and the same
 * as one string, ", "-separated (the accepted values of SEP_CPU_ISA). */
extern const char *const sep_cpu_isas[];
extern const char sep_cpu_isa_names[];

/* The kernels this process uses (chosen on first use: SEP_CPU_ISA or the CPU's widest
 * supported set); NULL with a message in err when SEP_CPU_ISA names an unknown set or
 * one this CPU lacks. */
const cpu_kernels *sep_cpu_kernels(char *err, size_t errlen);

/* Whether this CPU can run the kernels named `isa` (one of sep_cpu_isas; 0 for a name
 * this build has no kernels for). */
int sep_cpu_isa_supported(const char *isa);

/* The FMA peak of this CPU for the kernels named `isa` (NULL: the ones SEP_CPU_ISA or
 * the CPU selects): GFLOP/s of `threads` threads each running the register-only FMA
 * loop, the best of five trials taking about `seconds` in all; 0 when the CPU lacks
 * `isa`. per_cpu_second (may be NULL): the best GFLOP per CPU-second of the process
 * (one core's peak, whatever else shares the cores). */
double sep_cpu_fma_peak_gflops(const char *isa, int threads, double seconds,
                               double *per_cpu_second);

#endif
