/*
 * libs.c - OpenBLAS, BLIS and oneDNN on the GEMM and convolution shapes of the
 * full-size HTDemucs network, each run the way the CPU engine runs its GEMMs
 * (models/cpu_backend.c), against OpenBLAS and the engine's own conv2d.
 *
 *   libs [--threads N] [--reps R] [--quick] [--only check|linear|convgemm|conv]
 *
 * Engine-style rows ("chunks"): N OpenMP threads (default 2), each calling a
 * single-threaded GEMM on its own chunk, as the engine does:
 *   - transformer linears y = x W^T (x [rows][in], W [out][in], NoTrans/Trans): rows
 *     split in one chunk per thread (cpu_linear);
 *   - the 3x3 convolutions' GEMMs (M = cout, K = cin*9, N = one column chunk of the
 *     output positions, chunk widths as cpu_conv2d picks them, chunks handed out
 *     dynamically): timed on each thread's im2col buffer, into its own result buffer
 *     (the GLU convolutions' path); im2col itself is not timed here (it is the same
 *     for every library), the engine conv2d rows include it.
 * "own threads" rows hand the whole matrix to the library with N threads of its own.
 * Convolutions: the engine's conv2d (im2col + OpenBLAS, with and without its fused
 * GLU) against oneDNN's convolution primitive (direct, format_tag any: its JIT kernels
 * and blocked layouts, the NCHW reorders of src and dst timed separately; and the
 * same with plain NCHW/OIHW layouts forced), with N threads.
 *
 * Each measurement: one warm-up run (for the GEMMs the pass whose result is checked),
 * then R rounds (default 7, --quick 3) in which every variant of the shape runs once,
 * in a rotated order; median, min and max wall time; GFLOP/s of the
 * median; speed against the OpenBLAS (or engine conv2d) row; the largest difference
 * from that row's result relative to its largest magnitude (must stay under 1e-4).
 * Before timing, small shapes of every path are checked against a double-precision
 * loop (--only check: that alone). Exits 1 when a result disagrees, 2 on a library error.
 */
#include "bench/libs.h"
#include "models/backend.h"

#include <cblas.h>
#include <dlfcn.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* the engine's column-chunk size for im2col (cpu_backend.c: COL_CACHE_FLOATS) */
#define COL_CACHE_FLOATS (256u << 10)
#define MAX_REPS 64
#define AGREE_TOL 1e-4
#ifndef CHECK_TOL
#define CHECK_TOL 1e-5 /* the self-check against double precision */
#endif

static int threads = 2, reps = 7;
static int disagreements;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float *alloc_floats(size_t n)
{
    float *p = NULL;
    if (posix_memalign((void **)&p, 64, (n ? n : 1) * sizeof(float)) != 0) {
        fprintf(stderr, "out of memory (%zu floats)\n", n);
        exit(2);
    }
    return p;
}

static void fill_random(float *p, size_t n, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        p[i] = (float)((s >> 40) * (1.0 / (1ull << 24)) * 2.0 - 1.0);
    }
}

/* max |a - ref| / max |ref| */
static double rel_err(const float *a, const float *ref, size_t n)
{
    double dmax = 0, rmax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - ref[i]), r = fabs((double)ref[i]);
        if (d > dmax || d != d)
            dmax = d != d ? INFINITY : d;
        if (r > rmax)
            rmax = r;
    }
    return rmax > 0 ? dmax / rmax : dmax;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double median, min, max;
} timing;

static timing summarize(double *t, int n)
{
    qsort(t, n, sizeof(double), cmp_double);
    timing r = {n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]), t[0], t[n - 1]};
    return r;
}

/* R rounds of every variant of one measurement (run(ctx, v), v < nv), each round in
 * a rotated order so that no variant always runs after the same one and a slow
 * stretch of the machine is spread over all of them; the caller runs the warm-ups. */
#define MAX_VARIANTS 16
static void measure_interleaved(int nv, void (*run)(void *ctx, int v), void *ctx, timing *out)
{
    static double t[MAX_VARIANTS][MAX_REPS];
    for (int r = 0; r < reps; r++)
        for (int j = 0; j < nv; j++) {
            int v = (j + r) % nv;
            double t0 = now();
            run(ctx, v);
            t[v][r] = now() - t0;
        }
    for (int v = 0; v < nv; v++)
        out[v] = summarize(t[v], reps);
}

/* ---- the libraries behind one GEMM signature ---- */

static void openblas_gemm(int trans_b, int m, int n, int k, const float *a, int lda, const float *b,
                          int ldb, float *c, int ldc, int nthreads)
{
    if (nthreads > 1)
        openblas_set_num_threads(nthreads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a,
                lda, b, ldb, 0.0f, c, ldc);
    if (nthreads > 1)
        openblas_set_num_threads(1);
}

typedef struct {
    const char *name;
    libs_gemm_fn *fn;
} gemm_lib;

static const gemm_lib gemm_libs[] = {
    {"OpenBLAS cblas_sgemm", openblas_gemm},
    {"BLIS bli_sgemm_ex", blis_gemm},
    {"oneDNN dnnl_sgemm", onednn_gemm},
    {"oneDNN matmul", onednn_matmul_gemm},
};
#define NLIBS ((int)(sizeof(gemm_libs) / sizeof(gemm_libs[0])))

/* ---- the engine's ways of splitting a GEMM ---- */

/* cpu_linear: rows in one chunk per thread (at least 64 rows, a multiple of 16) */
static void linear_chunks(libs_gemm_fn *fn, int rows, int in, int out, const float *x,
                          const float *w, float *y)
{
    int chunk = (rows + threads - 1) / threads;
    if (chunk < 64)
        chunk = 64;
    chunk = (chunk + 15) / 16 * 16;
    int nchunks = (rows + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (nchunks > 1)
    for (int c = 0; c < nchunks; c++) {
        int r0 = c * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
        fn(1, r1 - r0, out, in, x + (size_t)r0 * in, in, w, in, y + (size_t)r0 * out, out, 1);
    }
}

/* cpu_backend.c's col_chunk and balanced_chunk: the column chunk of cpu_conv2d */
static int conv_chunk(int K, int N)
{
    int chunk = (int)(COL_CACHE_FLOATS / (size_t)K);
    chunk = chunk / 64 * 64;
    if (chunk < 256)
        chunk = 256;
    if (chunk > 4096)
        chunk = 4096;
    int per = (N + 2 * threads - 1) / (2 * threads);
    if (per < chunk)
        chunk = per < 256 ? 256 : (per + 63) / 64 * 64;
    if (chunk > N)
        chunk = N;
    int nchunks = (N + chunk - 1) / chunk;
    nchunks = (nchunks + threads - 1) / threads * threads;
    int even = ((N + nchunks - 1) / nchunks + 15) / 16 * 16;
    return even < chunk ? even : chunk;
}

typedef struct {
    int cin, cout, h, w; /* 3x3, stride 1, padding 1 */
} conv_shape;

/* col[(ci, ki, kj)][p - p0] for output positions [p0, p1) of a 3x3 pad-1 conv */
static void im2col3x3(const conv_shape *s, const float *x, float *col, int p0, int p1)
{
    int nc = p1 - p0;
    for (int k = 0; k < s->cin * 9; k++) {
        int ci = k / 9, ki = k / 3 % 3, kj = k % 3;
        const float *xc = x + (size_t)ci * s->h * s->w;
        for (int p = p0; p < p1; p++) {
            int ih = p / s->w + ki - 1, iw = p % s->w + kj - 1;
            col[(size_t)k * nc + p - p0] =
                ih >= 0 && ih < s->h && iw >= 0 && iw < s->w ? xc[(size_t)ih * s->w + iw] : 0.0f;
        }
    }
}

/* cpu_conv2d's GEMMs: per column chunk, W [M][K] x col [K][nc]. With `y`, each chunk
 * is im2col'd and written to y [M][N] (the checked pass); without, each thread
 * multiplies its own (already filled) col buffer into its own result buffer. */
static void conv_gemm_chunks(libs_gemm_fn *fn, const conv_shape *s, const float *x, const float *w,
                             float *cols, float *res, float *y)
{
    int M = s->cout, K = s->cin * 9, N = s->h * s->w;
    int chunk = conv_chunk(K, N), nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int c = 0; c < nchunks; c++) {
        int p0 = c * chunk, p1 = p0 + chunk < N ? p0 + chunk : N, nc = p1 - p0;
        int t = omp_get_thread_num();
        float *col = cols + (size_t)t * K * chunk;
        if (y) {
            im2col3x3(s, x, col, p0, p1);
            fn(0, M, nc, K, w, K, col, nc, y + p0, N, 1);
        } else {
            fn(0, M, nc, K, w, K, col, nc, res + (size_t)t * M * chunk, nc, 1);
        }
    }
}

/* ---- double-precision references for the self-check ---- */

static void ref_gemm(int trans_b, int m, int n, int k, const float *a, int lda, const float *b,
                     int ldb, float *c, int ldc)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int p = 0; p < k; p++)
                acc += (double)a[(size_t)i * lda + p] *
                       (trans_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j]);
            c[(size_t)i * ldc + j] = (float)acc;
        }
}

static void ref_conv3x3(const conv_shape *s, const float *x, const float *w, const float *bias,
                        float *y)
{
    for (int co = 0; co < s->cout; co++)
        for (int oh = 0; oh < s->h; oh++)
            for (int ow = 0; ow < s->w; ow++) {
                double acc = bias ? bias[co] : 0;
                for (int ci = 0; ci < s->cin; ci++)
                    for (int ki = 0; ki < 3; ki++)
                        for (int kj = 0; kj < 3; kj++) {
                            int ih = oh + ki - 1, iw = ow + kj - 1;
                            if (ih >= 0 && ih < s->h && iw >= 0 && iw < s->w)
                                acc += (double)w[((size_t)(co * s->cin + ci) * 3 + ki) * 3 + kj] *
                                       x[((size_t)ci * s->h + ih) * s->w + iw];
                        }
                y[((size_t)co * s->h + oh) * s->w + ow] = (float)acc;
            }
}

static int checks_run, checks_failed;

static void expect_close(const char *what, const char *lib, const float *got, const float *ref,
                         size_t n)
{
    double e = rel_err(got, ref, n);
    checks_run++;
    if (!(e < CHECK_TOL)) {
        checks_failed++;
        printf("FAIL check %s, %s: rel err %.2e (limit %.0e)\n", what, lib, e, CHECK_TOL);
    }
}

static sep_conv2d_desc conv_desc(const conv_shape *s, int act)
{
    sep_conv2d_desc d = {.n = 1,
                         .cin = s->cin,
                         .h = s->h,
                         .w = s->w,
                         .cout = s->cout,
                         .kh = 3,
                         .kw = 3,
                         .sh = 1,
                         .sw = 1,
                         .dh = 1,
                         .dw = 1,
                         .ph0 = 1,
                         .ph1 = 1,
                         .pw0 = 1,
                         .pw1 = 1,
                         .act = act};
    sep_conv2d_finish(&d);
    return d;
}

static void self_check(sep_backend *be)
{
    /* plain GEMMs with leading dimensions wider than the matrices */
    static const int gemms[][4] = {
        {37, 53, 29, 1}, {37, 53, 29, 0}, {130, 72, 48, 1}, {96, 300, 432, 0}};
    for (size_t g = 0; g < sizeof(gemms) / sizeof(gemms[0]); g++) {
        int m = gemms[g][0], n = gemms[g][1], k = gemms[g][2], tb = gemms[g][3];
        int lda = k + 3, ldb = (tb ? k : n) + 5, ldc = n + 7;
        float *a = alloc_floats((size_t)m * lda), *b = alloc_floats((size_t)(tb ? n : k) * ldb);
        float *c = alloc_floats((size_t)m * ldc), *ref = alloc_floats((size_t)m * ldc);
        fill_random(a, (size_t)m * lda, 1 + g);
        fill_random(b, (size_t)(tb ? n : k) * ldb, 11 + g);
        memset(ref, 0, (size_t)m * ldc * sizeof(float));
        ref_gemm(tb, m, n, k, a, lda, b, ldb, ref, ldc);
        char what[96];
        for (int l = 0; l < NLIBS; l++)
            for (int nt = 1; nt <= threads; nt += threads > 1 ? threads - 1 : 1) {
                memset(c, 0, (size_t)m * ldc * sizeof(float));
                gemm_libs[l].fn(tb, m, n, k, a, lda, b, ldb, c, ldc, nt);
                snprintf(what, sizeof what, "gemm %dx%dx%d %s, %d thread(s)", m, n, k,
                         tb ? "NT" : "NN", nt);
                expect_close(what, gemm_libs[l].name, c, ref, (size_t)m * ldc);
            }
        free(a), free(b), free(c), free(ref);
    }
    /* the engine-style splits: linear rows, conv column chunks (three chunks) */
    {
        int rows = 150, in = 48, out = 72;
        float *x = alloc_floats((size_t)rows * in), *w = alloc_floats((size_t)out * in);
        float *y = alloc_floats((size_t)rows * out), *ref = alloc_floats((size_t)rows * out);
        fill_random(x, (size_t)rows * in, 21);
        fill_random(w, (size_t)out * in, 22);
        ref_gemm(1, rows, out, in, x, in, w, in, ref, out);
        for (int l = 0; l < NLIBS; l++) {
            linear_chunks(gemm_libs[l].fn, rows, in, out, x, w, y);
            expect_close("linear chunks 150x48->72", gemm_libs[l].name, y, ref, (size_t)rows * out);
        }
        free(x), free(w), free(y), free(ref);
    }
    conv_shape s = {5, 6, 7, 90};
    int K = s.cin * 9, N = s.h * s.w, chunk = conv_chunk(K, N);
    float *x = alloc_floats((size_t)s.cin * N), *w = alloc_floats((size_t)s.cout * K);
    float *bias = alloc_floats(s.cout), *y = alloc_floats((size_t)s.cout * N);
    float *ref = alloc_floats((size_t)s.cout * N), *ref_nb = alloc_floats((size_t)s.cout * N);
    float *cols = alloc_floats((size_t)threads * K * chunk);
    fill_random(x, (size_t)s.cin * N, 31);
    fill_random(w, (size_t)s.cout * K, 32);
    fill_random(bias, s.cout, 33);
    ref_conv3x3(&s, x, w, bias, ref);
    ref_conv3x3(&s, x, w, NULL, ref_nb);
    for (int l = 0; l < NLIBS; l++) {
        conv_gemm_chunks(gemm_libs[l].fn, &s, x, w, cols, NULL, y);
        expect_close("conv gemm chunks cin5 cout6 7x90", gemm_libs[l].name, y, ref_nb,
                     (size_t)s.cout * N);
    }
    sep_conv2d_desc d = conv_desc(&s, SEP_ACT_NONE);
    be->ops->conv2d(be, &d, y, x, w, bias);
    expect_close("conv2d cin5 cout6 7x90", "engine conv2d", y, ref, (size_t)s.cout * N);
    for (int plain = 0; plain <= 1; plain++) {
        char err[256];
        onednn_conv *c =
            onednn_conv_create(s.cin, s.cout, s.h, s.w, 3, 3, 1, plain, w, bias, err, sizeof err);
        if (!c) {
            printf("FAIL check oneDNN convolution: %s\n", err);
            checks_run++, checks_failed++;
            continue;
        }
        memset(y, 0, (size_t)s.cout * N * sizeof(float));
        onednn_conv_bind(c, x, y);
        onednn_conv_load(c);
        onednn_conv_run(c);
        onednn_conv_store(c);
        expect_close("conv2d cin5 cout6 7x90", plain ? "oneDNN conv (plain)" : "oneDNN conv (any)",
                     y, ref, (size_t)s.cout * N);
        onednn_conv_destroy(c);
    }
    free(x), free(w), free(bias), free(y), free(ref), free(ref_nb), free(cols);
    printf("self-check: %d of %d passed\n", checks_run - checks_failed, checks_run);
}

/* ---- the full-size measurements ---- */

static void print_header(void)
{
    printf("%-32s %-34s %9s %9s %9s %8s %8s %9s\n", "shape", "library", "median_ms", "min_ms",
           "max_ms", "GFLOP/s", "speed", "rel_err");
}

/* speed = the baseline's median over this row's (> 1: faster than the baseline) */
static void print_row(const char *shape, const char *lib, timing t, double gflop, double base_s,
                      double err)
{
    int bad = !(err < AGREE_TOL);
    disagreements += bad;
    printf("%-32s %-34s %9.2f %9.2f %9.2f %8.1f %7.2fx %9.1e%s\n", shape, lib, t.median * 1e3,
           t.min * 1e3, t.max * 1e3, gflop / t.median, base_s / t.median, err,
           bad ? "  DISAGREES" : "");
    fflush(stdout);
}

typedef struct {
    sep_backend *be;
    int rows, in, out;
    const float *x, *w;
    float *y;
} linear_case;

/* variants: each library in chunks, each library with its own threads, the engine op */
static void run_linear(void *ctx, int v)
{
    linear_case *c = ctx;
    if (v < NLIBS)
        linear_chunks(gemm_libs[v].fn, c->rows, c->in, c->out, c->x, c->w, c->y);
    else if (v < 2 * NLIBS)
        gemm_libs[v - NLIBS].fn(1, c->rows, c->out, c->in, c->x, c->in, c->w, c->in, c->y, c->out,
                                threads);
    else
        c->be->ops->linear(c->be, c->y, c->x, c->w, NULL, 1, c->rows, c->in, c->out, SEP_ACT_NONE);
}

static void bench_linears(sep_backend *be)
{
    static const int dims[][2] = {{512, 2048}, {2048, 512}, {512, 1536}, {512, 512}, {512, 1024}};
    static const int row_counts[] = {2688, 1344};
    printf("\n== transformer linears y = x W^T (NoTrans, Trans), %d threads\n", threads);
    print_header();
    for (int r = 0; r < 2; r++)
        for (int d = 0; d < 5; d++) {
            int rows = row_counts[r], in = dims[d][0], out = dims[d][1];
            float *x = alloc_floats((size_t)rows * in), *w = alloc_floats((size_t)out * in);
            float *ref = alloc_floats((size_t)rows * out), *y = alloc_floats((size_t)rows * out);
            fill_random(x, (size_t)rows * in, 100 + d);
            fill_random(w, (size_t)out * in, 200 + d);
            linear_case c = {be, rows, in, out, x, w, ref};
            int nv = 2 * NLIBS + 1;
            double err[MAX_VARIANTS];
            run_linear(&c, 0); /* the reference result: OpenBLAS in chunks */
            c.y = y;
            for (int v = 0; v < nv; v++) { /* warm-up, checked */
                run_linear(&c, v);
                err[v] = rel_err(y, ref, (size_t)rows * out);
            }
            timing t[MAX_VARIANTS];
            measure_interleaved(nv, run_linear, &c, t);
            char shape[64], lib[64];
            snprintf(shape, sizeof shape, "linear %dx%d->%d", rows, in, out);
            double gflop = 2.0 * rows * in * out * 1e-9;
            for (int v = 0; v < nv; v++) {
                if (v < NLIBS)
                    snprintf(lib, sizeof lib, "%s, %d chunks", gemm_libs[v].name, threads);
                else if (v < 2 * NLIBS)
                    snprintf(lib, sizeof lib, "%s, own %d threads", gemm_libs[v - NLIBS].name,
                             threads);
                else
                    snprintf(lib, sizeof lib, "engine linear op");
                print_row(shape, lib, t[v], gflop, t[0].median, err[v]);
            }
            onednn_release();
            free(x), free(w), free(ref), free(y);
        }
}

static const conv_shape conv_shapes[] = {
    {48, 96, 512, 336}, {96, 192, 128, 336}, {192, 384, 32, 336}, {384, 768, 8, 336}};

typedef struct {
    const conv_shape *s;
    const float *x, *w;
    float *cols, *res;
} conv_gemm_case;

static void run_conv_gemm(void *ctx, int v)
{
    conv_gemm_case *c = ctx;
    conv_gemm_chunks(gemm_libs[v].fn, c->s, c->x, c->w, c->cols, c->res, NULL);
}

static void bench_conv_gemms(void)
{
    printf("\n== 3x3 convolutions' GEMMs (M = cout, K = cin*9, N = column chunk; im2col not "
           "timed), %d threads\n",
           threads);
    print_header();
    for (size_t i = 0; i < sizeof(conv_shapes) / sizeof(conv_shapes[0]); i++) {
        const conv_shape *s = &conv_shapes[i];
        int M = s->cout, K = s->cin * 9, N = s->h * s->w, chunk = conv_chunk(K, N);
        float *x = alloc_floats((size_t)s->cin * N), *w = alloc_floats((size_t)M * K);
        float *ref = alloc_floats((size_t)M * N), *y = alloc_floats((size_t)M * N);
        float *cols = alloc_floats((size_t)threads * K * chunk);
        float *res = alloc_floats((size_t)threads * M * chunk);
        fill_random(x, (size_t)s->cin * N, 300 + i);
        fill_random(w, (size_t)M * K, 400 + i);
        double err[NLIBS];
        /* warm-ups with im2col, checked; they leave real columns in the thread buffers */
        for (int l = 0; l < NLIBS; l++) {
            conv_gemm_chunks(gemm_libs[l].fn, s, x, w, cols, res, l ? y : ref);
            err[l] = l ? rel_err(y, ref, (size_t)M * N) : 0;
        }
        conv_gemm_case c = {s, x, w, cols, res};
        timing t[NLIBS];
        measure_interleaved(NLIBS, run_conv_gemm, &c, t);
        char shape[64], lib[80];
        snprintf(shape, sizeof shape, "M%d K%d N%d (chunk %d)", M, K, N, chunk);
        double gflop = 2.0 * M * K * N * 1e-9;
        for (int l = 0; l < NLIBS; l++) {
            snprintf(lib, sizeof lib, "%s, chunks", gemm_libs[l].name);
            print_row(shape, lib, t[l], gflop, t[0].median, err[l]);
        }
        printf("%-32s (conv2d 3x3 cin%d cout%d %dx%d)\n", "", s->cin, s->cout, s->h, s->w);
        onednn_release();
        free(x), free(w), free(ref), free(y), free(cols), free(res);
    }
}

typedef struct {
    sep_backend *be;
    sep_conv2d_desc plain, glu;
    const float *x, *w, *bias;
    float *y;
    onednn_conv *dnnl[2]; /* format any, plain layouts */
} conv_case;

/* variants: engine conv2d, engine conv2d +glu, then per oneDNN convolution its run,
 * its src reorder and its dst reorder */
static void run_conv(void *ctx, int v)
{
    conv_case *c = ctx;
    if (v == 0)
        c->be->ops->conv2d(c->be, &c->plain, c->y, c->x, c->w, c->bias);
    else if (v == 1)
        c->be->ops->conv2d(c->be, &c->glu, c->y, c->x, c->w, c->bias);
    else {
        onednn_conv *d = c->dnnl[(v - 2) / 3];
        int part = (v - 2) % 3;
        if (part == 0)
            onednn_conv_run(d);
        else if (part == 1)
            onednn_conv_load(d);
        else
            onednn_conv_store(d);
    }
}

static void bench_convs(sep_backend *be)
{
    printf("\n== 3x3 convolutions (stride 1, padding 1, batch 1, bias), %d threads\n", threads);
    print_header();
    omp_set_num_threads(threads);
    for (size_t i = 0; i < sizeof(conv_shapes) / sizeof(conv_shapes[0]); i++) {
        const conv_shape *s = &conv_shapes[i];
        int M = s->cout, K = s->cin * 9, N = s->h * s->w;
        float *x = alloc_floats((size_t)s->cin * N), *w = alloc_floats((size_t)M * K);
        float *bias = alloc_floats(M), *ref = alloc_floats((size_t)M * N);
        float *y = alloc_floats((size_t)M * N);
        fill_random(x, (size_t)s->cin * N, 500 + i);
        fill_random(w, (size_t)M * K, 600 + i);
        fill_random(bias, M, 700 + i);
        char shape[64], lib[96];
        snprintf(shape, sizeof shape, "conv2d 3x3 cin%d cout%d %dx%d", s->cin, s->cout, s->h, s->w);
        conv_case c = {be, conv_desc(s, SEP_ACT_NONE), conv_desc(s, SEP_ACT_GLU), x, w, bias, y};
        double err[2] = {0, 0};
        be->ops->conv2d(be, &c.plain, ref, x, w, bias); /* the reference result */
        for (int pl = 0; pl <= 1; pl++) {
            char why[256];
            c.dnnl[pl] = onednn_conv_create(s->cin, s->cout, s->h, s->w, 3, 3, 1, pl, w, bias, why,
                                            sizeof why);
            if (!c.dnnl[pl]) {
                printf("FAIL %s oneDNN conv (%s): %s\n", shape, pl ? "plain" : "any", why);
                exit(2);
            }
            memset(y, 0, (size_t)M * N * sizeof(float));
            onednn_conv_bind(c.dnnl[pl], x, y);
            onednn_conv_load(c.dnnl[pl]);
            onednn_conv_run(c.dnnl[pl]);
            onednn_conv_store(c.dnnl[pl]);
            err[pl] = rel_err(y, ref, (size_t)M * N);
        }
        int nv = 8;
        for (int v = 0; v < nv; v++) /* warm-up */
            run_conv(&c, v);
        timing t[8];
        measure_interleaved(nv, run_conv, &c, t);
        double gflop = 2.0 * M * K * N * 1e-9, base = t[0].median;
        print_row(shape, "engine conv2d (as chosen)", t[0], gflop, base, 0);
        print_row(shape, "engine conv2d +glu (as run)", t[1], gflop, base, 0);
        for (int pl = 0; pl <= 1; pl++) {
            onednn_conv *d = c.dnnl[pl];
            timing tr = t[2 + 3 * pl], tl = t[3 + 3 * pl], ts = t[4 + 3 * pl];
            snprintf(lib, sizeof lib, "oneDNN conv %s %s", pl ? "plain" : "any",
                     onednn_conv_impl(d));
            print_row(shape, lib, tr, gflop, base, err[pl]);
            if (onednn_conv_reorders(d)) {
                timing sum = {tr.median + tl.median + ts.median, tr.min + tl.min + ts.min,
                              tr.max + tl.max + ts.max};
                print_row(shape, "  + NCHW reorders of src and dst", sum, gflop, base, err[pl]);
                printf("%-32s   (reorders: src %.2f ms, dst %.2f ms)\n", "", tl.median * 1e3,
                       ts.median * 1e3);
            }
            printf("%-32s   (layouts: %s)\n", "", onednn_conv_layouts(d));
            onednn_conv_destroy(d);
        }
        free(x), free(w), free(bias), free(ref), free(y);
    }
}

static void print_machine(void)
{
    char line[256], model[160] = "?";
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "model name : %159[^\n]", model) == 1)
            break;
    if (f)
        fclose(f);
    double load[3] = {0};
    f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3)
            load[0] = -1;
        fclose(f);
    }
    printf("cpu: %s, %d processors, load average %.2f %.2f %.2f\n", model, omp_get_num_procs(),
           load[0], load[1], load[2]);
}

/* the file a library path links to (Debian's alternatives pick the BLIS variant) */
static const char *resolved(const char *path)
{
    static char buf[2][4096];
    static int next;
    char *b = buf[next++ % 2];
    return realpath(path, b) ? b : path;
}

static int describe_libraries(void)
{
    Dl_info info;
    const char *path = dladdr((void *)cblas_sgemm, &info) && info.dli_fname ? info.dli_fname : "?";
    char real[4096];
    if (realpath(path, real))
        path = real;
    printf("OpenBLAS: %s, core %s, cblas_sgemm from %s\n", openblas_get_config(),
           openblas_get_corename(), path);
    char desc[256];
    blis_describe(desc, sizeof desc);
    printf("BLIS: %s, from %s\n", desc, resolved(blis_library_path()));
    int dnnl_ok = onednn_describe(desc, sizeof desc);
    printf("oneDNN: %s, from %s\n", desc, resolved(onednn_library_path()));
    printf("OpenMP: max active levels %d (%s), OMP_WAIT_POLICY=%s\n", omp_get_max_active_levels(),
           omp_get_max_active_levels() > 1
               ? "nested regions get threads: a library's own OpenMP inside the chunks is not "
                 "single-threaded"
               : "a library's OpenMP region inside the chunks runs on the calling thread",
           getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "(unset)");
    /* BLIS exports a CBLAS too: the OpenBLAS rows must really be OpenBLAS */
    if (!strstr(path, "openblas")) {
        printf("FAIL cblas_sgemm does not come from OpenBLAS (%s): fix the link order\n", path);
        return -1;
    }
    return dnnl_ok;
}

int main(int argc, char **argv)
{
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0)
            reps = 3;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc &&
                 (strcmp(argv[i + 1], "check") == 0 || strcmp(argv[i + 1], "linear") == 0 ||
                  strcmp(argv[i + 1], "convgemm") == 0 || strcmp(argv[i + 1], "conv") == 0))
            only = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--reps R] [--quick] [--only "
                    "check|linear|convgemm|conv]\n",
                    argv[0]);
            return 2;
        }
    }
    if (threads < 1 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "--threads must be >= 1 and --reps 1..%d\n", MAX_REPS);
        return 2;
    }
    print_machine();
    char err[256];
    sep_backend *be = sep_cpu_backend_create(threads, err, sizeof err);
    if (!be) {
        fprintf(stderr, "engine backend: %s\n", err);
        return 2;
    }
    if (describe_libraries() != 0)
        return 2;
    printf("threads %d, runs per measurement %d after one warm-up\n", threads, reps);
    self_check(be);
    if (checks_failed) {
        be->ops->destroy(be);
        return 1;
    }
    double t0 = now();
    if (!only || strcmp(only, "linear") == 0)
        bench_linears(be);
    if (!only || strcmp(only, "convgemm") == 0)
        bench_conv_gemms();
    if (!only || strcmp(only, "conv") == 0)
        bench_convs(be);
    onednn_release();
    be->ops->destroy(be);
    print_machine();
    printf("%s: %d row(s) disagree beyond rel %.0e; %.1f s\n", disagreements ? "FAIL" : "PASS",
           disagreements, AGREE_TOL, now() - t0);
    return disagreements ? 1 : 0;
}
