/*
 * ops_test.c - every backend operation against a plain reference loop.
 *
 *   ops_test [--device cpu|cuda] [--threads N]
 *   ops_test --isas      prints the CPU instruction sets this machine can run
 *   ops_test --paths     prints the CPU code paths to test, isa:gemm: each instruction
 *                        set with its default GEMM provider (cpu_gemm.h), and with
 *                        OpenBLAS too where that is not the default
 *
 * The CPU backend runs the kernels SEP_CPU_ISA names (generic, avx2, avx512 on x86-64;
 * generic, neon on arm64; default: the widest the CPU supports); make test-ops (and
 * make test-arm64) runs this once per supported set.
 *
 * Each operation of backend.h runs on seeded random data through the backend's own
 * memory (alloc/upload/download, so a GPU backend is tested the same way) and is
 * compared with a direct transcription of the PyTorch definition, accumulated in
 * double. The shapes are chosen to reach every code path of the CPU implementation:
 * the direct convolution's vector blocks, partial blocks and padded edges, dilation,
 * im2col in several chunks, 1x1 GEMMs, strided and asymmetric padding, transposed
 * convolutions over many chunks (both parities), attention with partial query blocks
 * and strided heads, reflect padding of inputs shorter than the padding (pad1d's
 * zero extension) in the STFT. Prints
 *     MAXERR <op/case> abs=... rel=... (<microseconds>)
 * and fails when rel (max |error| / max |reference|) exceeds 1e-5: float32 sums of a
 * few hundred terms are within ~1e-6 of the double reference.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/backend.h"
#include "models/cpu_gemm.h"
#include "models/cpu_kernels.h"
#include "models/util.h"

#define TOL 1e-5

static sep_backend *be;
static int failures, checks;
static unsigned rng = 12345;

static float frand(void)
{
    rng = rng * 1664525u + 1013904223u;
    return (float)((rng >> 8) & 0xffffff) / (float)0x1000000 * 2.0f - 1.0f;
}

static float *hrand(size_t n, float scale)
{
    float *p = malloc(n * sizeof(float) + 16);
    for (size_t i = 0; i < n; i++)
        p[i] = frand() * scale;
    return p;
}

static float *dev(const float *host, size_t n)
{
    float *d = be->ops->alloc(be, n * sizeof(float) + 16);
    if (host)
        be->ops->upload(be, d, host, n * sizeof(float));
    else
        be->ops->zero(be, d, n);
    return d;
}

static float *back(const float *d, size_t n)
{
    float *h = malloc(n * sizeof(float) + 16);
    be->ops->sync(be);
    be->ops->download(be, h, d, n * sizeof(float));
    return h;
}

/* compares device result d (n floats) with the double reference, frees both */
static void report(const char *name, float *d, double *ref, size_t n, double us)
{
    float *h = back(d, n);
    double maxref = 0, maxerr = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs(ref[i]), e = fabs((double)h[i] - ref[i]);
        maxref = r > maxref ? r : maxref;
        if (e > maxerr || isnan(e))
            maxerr = isnan(e) ? INFINITY : e;
    }
    double rel = maxref > 0 ? maxerr / maxref : maxerr;
    int bad = !(rel <= TOL);
    printf("MAXERR %-44s abs=%.2e rel=%.2e (%.0f us)%s\n", name, maxerr, rel, us,
           bad ? "  FAIL" : "");
    failures += bad;
    checks++;
    free(h);
    free(ref);
    be->ops->free(be, d);
}

/* Frees an operation's three inputs: the device copies and the host originals. */
static void free_operands(float *d0, float *d1, float *d2, float *h0, float *h1, float *h2)
{
    be->ops->free(be, d0);
    be->ops->free(be, d1);
    be->ops->free(be, d2);
    free(h0);
    free(h1);
    free(h2);
}

static double gelu_d(double x)
{
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

static double act_d(double x, int act)
{
    return act == SEP_ACT_GELU ? gelu_d(x) : act == SEP_ACT_RELU ? (x > 0 ? x : 0) : x;
}

#define TIMED(call)                                                                                \
    ({                                                                                             \
        be->ops->sync(be);                                                                         \
        double t0_ = sep_wall_seconds();                                                           \
        call;                                                                                      \
        be->ops->sync(be);                                                                         \
        (sep_wall_seconds() - t0_) * 1e6;                                                          \
    })

/* ---- convolutions ---- */

static void test_conv(const char *name, sep_conv2d_desc d)
{
    if (sep_conv2d_finish(&d)) {
        printf("FAIL %s: bad shape\n", name);
        failures++;
        return;
    }
    int glu = d.act == SEP_ACT_GLU, cout_y = glu ? d.cout / 2 : d.cout;
    size_t ni = (size_t)d.n * d.cin * d.h * d.w, no = (size_t)d.n * cout_y * d.ho * d.wo;
    size_t nfull = (size_t)d.n * d.cout * d.ho * d.wo;
    size_t nw = (size_t)d.cout * d.cin * d.kh * d.kw;
    float *x = hrand(ni, 1.0f), *w = hrand(nw, 1.0f / sqrtf((float)(d.cin * d.kh * d.kw)));
    float *b = hrand((size_t)d.cout, 0.5f);
    double *ref = calloc(nfull, sizeof(double));
    for (int n = 0; n < d.n; n++)
        for (int co = 0; co < d.cout; co++)
            for (int oh = 0; oh < d.ho; oh++)
                for (int ow = 0; ow < d.wo; ow++) {
                    double acc = b[co];
                    for (int ci = 0; ci < d.cin; ci++)
                        for (int ki = 0; ki < d.kh; ki++)
                            for (int kj = 0; kj < d.kw; kj++) {
                                int ih = oh * d.sh + ki * d.dh - d.ph0;
                                int iw = ow * d.sw + kj * d.dw - d.pw0;
                                if (ih < 0 || ih >= d.h || iw < 0 || iw >= d.w)
                                    continue;
                                acc +=
                                    (double)w[((size_t)(co * d.cin + ci) * d.kh + ki) * d.kw + kj] *
                                    x[((size_t)(n * d.cin + ci) * d.h + ih) * d.w + iw];
                            }
                    ref[(((size_t)n * d.cout + co) * d.ho + oh) * d.wo + ow] =
                        glu ? acc : act_d(acc, d.act);
                }
    if (glu) { /* F.glu(y, dim=1), in place into the first half layout */
        size_t plane = (size_t)d.ho * d.wo;
        double *g = malloc(no * sizeof(double));
        for (int n = 0; n < d.n; n++)
            for (int co = 0; co < cout_y; co++)
                for (size_t i = 0; i < plane; i++) {
                    double a = ref[((size_t)n * d.cout + co) * plane + i];
                    double gg = ref[((size_t)n * d.cout + co + cout_y) * plane + i];
                    g[((size_t)n * cout_y + co) * plane + i] = a / (1 + exp(-gg));
                }
        free(ref);
        ref = g;
    }
    float *dx = dev(x, ni), *dw = dev(w, nw), *db = dev(b, (size_t)d.cout), *dy = dev(NULL, no);
    double us = TIMED(be->ops->conv2d(be, &d, dy, dx, dw, db));
    report(name, dy, ref, no, us);
    free_operands(dx, dw, db, x, w, b);
}

static void test_conv_tr(const char *name, sep_conv_tr2d_desc d)
{
    sep_conv_tr2d_finish(&d);
    size_t ni = (size_t)d.n * d.cin * d.h * d.w, no = (size_t)d.n * d.cout * d.ho * d.wo;
    size_t nw = (size_t)d.cin * d.cout * d.kh * d.kw;
    float *x = hrand(ni, 1.0f), *w = hrand(nw, 1.0f / sqrtf((float)d.cin)),
          *b = hrand((size_t)d.cout, 0.5f);
    double *ref = calloc(no, sizeof(double));
    for (int n = 0; n < d.n; n++)
        for (int co = 0; co < d.cout; co++)
            for (size_t i = 0; i < (size_t)d.ho * d.wo; i++)
                ref[((size_t)n * d.cout + co) * d.ho * d.wo + i] = b[co];
    for (int n = 0; n < d.n; n++)
        for (int ci = 0; ci < d.cin; ci++)
            for (int ih = 0; ih < d.h; ih++)
                for (int iw = 0; iw < d.w; iw++) {
                    double xv = x[((size_t)(n * d.cin + ci) * d.h + ih) * d.w + iw];
                    for (int co = 0; co < d.cout; co++)
                        for (int ki = 0; ki < d.kh; ki++)
                            for (int kj = 0; kj < d.kw; kj++)
                                ref[(((size_t)n * d.cout + co) * d.ho + ih * d.sh + ki) * d.wo +
                                    iw * d.sw + kj] +=
                                    xv * w[((size_t)(ci * d.cout + co) * d.kh + ki) * d.kw + kj];
                }
    float *dx = dev(x, ni), *dw = dev(w, nw), *db = dev(b, (size_t)d.cout), *dy = dev(NULL, no);
    if (be->ops->conv_tr2d_window) {
        /* a window cut from the same output: rows and columns dropped on both sides
         * (unequal ones on the columns), as the decoders crop their padding */
        int top = d.ho > 8 ? 2 : 0, oh = d.ho - 2 * top;
        int left = d.wo > 16 ? 3 : 0, ow = d.wo - left - (d.wo > 16 ? 5 : 0);
        size_t nwin = (size_t)d.n * d.cout * oh * ow;
        double *wref = malloc(nwin * sizeof(double));
        for (int nc = 0; nc < d.n * d.cout; nc++)
            for (int r = 0; r < oh; r++)
                for (int c = 0; c < ow; c++)
                    wref[((size_t)nc * oh + r) * ow + c] =
                        ref[((size_t)nc * d.ho + top + r) * d.wo + left + c];
        float *dwin = dev(NULL, nwin);
        char wname[96];
        snprintf(wname, sizeof(wname), "%s window", name);
        double wus = TIMED(be->ops->conv_tr2d_window(be, &d, top, oh, left, ow, dwin, dx, dw, db));
        report(wname, dwin, wref, nwin, wus);
    }
    double us = TIMED(be->ops->conv_tr2d(be, &d, dy, dx, dw, db));
    report(name, dy, ref, no, us);
    free_operands(dx, dw, db, x, w, b);
}

static void test_linear(const char *name, int batch, int rows, int in, int out, int act)
{
    size_t nx = (size_t)batch * rows * in, ny = (size_t)batch * rows * out;
    float *x = hrand(nx, 1.0f), *w = hrand((size_t)out * in, 1.0f / sqrtf((float)in)),
          *b = hrand((size_t)out, 0.5f);
    double *ref = malloc(ny * sizeof(double));
    for (size_t r = 0; r < (size_t)batch * rows; r++)
        for (int o = 0; o < out; o++) {
            double acc = b[o];
            for (int i = 0; i < in; i++)
                acc += (double)x[r * in + i] * w[(size_t)o * in + i];
            ref[r * out + o] = act_d(acc, act);
        }
    float *dx = dev(x, nx), *dw = dev(w, (size_t)out * in), *db = dev(b, (size_t)out),
          *dy = dev(NULL, ny);
    double us = TIMED(be->ops->linear(be, dy, dx, dw, db, batch, rows, in, out, act));
    report(name, dy, ref, ny, us);
    free_operands(dx, dw, db, x, w, b);
}

/* q and k uniform in [-amp, amp]: a large amp gives peaked softmax rows whose maximum
 * moves between key tiles (the online softmax's rescaling) */
static void test_attention(const char *name, sep_attention_desc d, float amp, int integer_qk)
{
    size_t nq = (size_t)d.batch * d.nq * d.ldq, nk = (size_t)d.batch * d.nk * d.ldk;
    size_t nv = (size_t)d.batch * d.nk * d.ldv, no = (size_t)d.batch * d.nq * d.ldo;
    /* integer_qk: q and k rounded to integers, so that the scores are exact and only the
     * softmax and the products with v can err */
    float *q = hrand(nq, amp), *k = hrand(nk, amp), *v = hrand(nv, 1.0f);
    for (size_t i = 0; integer_qk && i < nq; i++)
        q[i] = roundf(q[i]);
    for (size_t i = 0; integer_qk && i < nk; i++)
        k[i] = roundf(k[i]);
    double *ref = calloc(no, sizeof(double));
    double *s = malloc((size_t)d.nk * sizeof(double));
    double scale = 1.0 / sqrt((double)d.head_dim);
    for (int b = 0; b < d.batch; b++)
        for (int h = 0; h < d.heads; h++)
            for (int i = 0; i < d.nq; i++) {
                const float *qi = q + ((size_t)b * d.nq + i) * d.ldq + (size_t)h * d.head_dim;
                double m = -INFINITY, sum = 0;
                for (int j = 0; j < d.nk; j++) {
                    const float *kj = k + ((size_t)b * d.nk + j) * d.ldk + (size_t)h * d.head_dim;
                    double dot = 0;
                    for (int c = 0; c < d.head_dim; c++)
                        dot += (double)qi[c] * kj[c];
                    s[j] = dot * scale;
                    m = s[j] > m ? s[j] : m;
                }
                for (int j = 0; j < d.nk; j++)
                    sum += s[j] = exp(s[j] - m);
                double *o = ref + ((size_t)b * d.nq + i) * d.ldo + (size_t)h * d.head_dim;
                for (int j = 0; j < d.nk; j++) {
                    const float *vj = v + ((size_t)b * d.nk + j) * d.ldv + (size_t)h * d.head_dim;
                    for (int c = 0; c < d.head_dim; c++)
                        o[c] += s[j] / sum * vj[c];
                }
            }
    float *dq = dev(q, nq), *dk = dev(k, nk), *dv = dev(v, nv), *dy = dev(NULL, no);
    double us = TIMED(be->ops->attention(be, &d, dy, dq, dk, dv));
    report(name, dy, ref, no, us);
    free_operands(dq, dk, dv, q, k, v);
    free(s);
}

/* ---- normalisations ---- */

/* mean/variance of the `cnt` values at x[idx(i)] */
static void stats_d(const float *x, size_t cnt, size_t (*idx)(size_t, const int *), const int *p,
                    double *mean, double *rstd, double eps)
{
    double s = 0, ss = 0;
    for (size_t i = 0; i < cnt; i++)
        s += x[idx(i, p)];
    double m = s / cnt;
    for (size_t i = 0; i < cnt; i++)
        ss += (x[idx(i, p)] - m) * (x[idx(i, p)] - m);
    *mean = m;
    *rstd = 1.0 / sqrt(ss / cnt + eps);
}

/* p = {base, c, h, w, row}: element i of (channel, w) at fixed row */
static size_t idx_row(size_t i, const int *p)
{
    size_t ch = i / p[3], t = i % p[3];
    return (size_t)p[0] + (ch * p[2] + p[4]) * p[3] + t;
}

static size_t idx_lin(size_t i, const int *p)
{
    return (size_t)p[0] + i;
}

static void test_group_norm(const char *name, int n, int c, int spatial, int groups, int act)
{
    size_t cnt = (size_t)n * c * spatial;
    float *x = hrand(cnt, 2.0f), *g = hrand((size_t)c, 1.0f), *bt = hrand((size_t)c, 1.0f);
    for (size_t i = 0; i < cnt; i++)
        x[i] += 0.7f;
    double *ref = malloc(cnt * sizeof(double));
    int cg = c / groups;
    for (int b = 0; b < n; b++)
        for (int gi = 0; gi < groups; gi++) {
            int p[1] = {(b * c + gi * cg) * spatial};
            double m, r;
            stats_d(x, (size_t)cg * spatial, idx_lin, p, &m, &r, 1e-5);
            for (int j = 0; j < cg; j++)
                for (int s = 0; s < spatial; s++) {
                    size_t i = ((size_t)b * c + gi * cg + j) * spatial + s;
                    ref[i] = act_d((x[i] - m) * r * g[gi * cg + j] + bt[gi * cg + j], act);
                }
        }
    float *dx = dev(x, cnt), *dg = dev(g, (size_t)c), *db = dev(bt, (size_t)c),
          *dy = dev(NULL, cnt);
    double us = TIMED(be->ops->group_norm(be, dy, dx, dg, db, n, c, spatial, groups, 1e-5f, act));
    report(name, dy, ref, cnt, us);
    free_operands(dx, dg, db, x, g, bt);
}

static void test_group_norm_rows(const char *name, int n, int c, int h, int w, int act)
{
    size_t cnt = (size_t)n * c * h * w;
    float *x = hrand(cnt, 2.0f), *g = hrand((size_t)c, 1.0f), *bt = hrand((size_t)c, 1.0f);
    double *ref = malloc(cnt * sizeof(double));
    for (int b = 0; b < n; b++)
        for (int row = 0; row < h; row++) {
            int p[5] = {b * c * h * w, c, h, w, row};
            double m, r;
            stats_d(x, (size_t)c * w, idx_row, p, &m, &r, 1e-5);
            for (size_t i = 0; i < (size_t)c * w; i++) {
                size_t at = idx_row(i, p);
                int ch = (int)(i / w);
                ref[at] = act_d((x[at] - m) * r * g[ch] + bt[ch], act);
            }
        }
    float *dx = dev(x, cnt), *dg = dev(g, (size_t)c), *db = dev(bt, (size_t)c),
          *dy = dev(NULL, cnt);
    double us = TIMED(be->ops->group_norm_rows(be, dy, dx, dg, db, n, c, h, w, 1e-5f, act));
    report(name, dy, ref, cnt, us);
    free_operands(dx, dg, db, x, g, bt);
}

static void test_dconv_residual(const char *name, int n, int c, int h, int w)
{
    size_t cx = (size_t)n * c * h * w, cy = 2 * cx;
    float *x = hrand(cx, 1.0f), *y = hrand(cy, 2.0f), *g = hrand(2 * (size_t)c, 1.0f),
          *bt = hrand(2 * (size_t)c, 1.0f), *sc = hrand((size_t)c, 1.0f);
    double *ref = malloc(cx * sizeof(double));
    for (int b = 0; b < n; b++)
        for (int row = 0; row < h; row++) {
            int p[5] = {b * 2 * c * h * w, 2 * c, h, w, row};
            double m, r;
            stats_d(y, (size_t)2 * c * w, idx_row, p, &m, &r, 1e-5);
            for (int ch = 0; ch < c; ch++)
                for (int t = 0; t < w; t++) {
                    size_t ia = (((size_t)b * 2 * c + ch) * h + row) * w + t;
                    size_t ig = (((size_t)b * 2 * c + ch + c) * h + row) * w + t;
                    size_t ix = (((size_t)b * c + ch) * h + row) * w + t;
                    double a = (y[ia] - m) * r * g[ch] + bt[ch];
                    double gg = (y[ig] - m) * r * g[ch + c] + bt[ch + c];
                    ref[ix] = x[ix] + sc[ch] * a / (1 + exp(-gg));
                }
        }
    float *dx = dev(x, cx), *dy = dev(y, cy), *dg = dev(g, 2 * (size_t)c),
          *db = dev(bt, 2 * (size_t)c), *ds = dev(sc, (size_t)c);
    double us = TIMED(be->ops->dconv_residual(be, dx, dy, dg, db, ds, n, c, h, w, 1e-5f));
    report(name, dx, ref, cx, us);
    be->ops->free(be, dy);
    be->ops->free(be, dg);
    be->ops->free(be, db);
    be->ops->free(be, ds);
    free(x);
    free(y);
    free(g);
    free(bt);
    free(sc);
}

/* dconv_tail: the 1x1 convolution (hid -> 2c) then dconv_residual, in double. A backend
 * without the fused op, or one that declines the shape (returns 0, x untouched: checked),
 * reports a skip line only. */
static void test_dconv_tail(const char *name, int n, int c, int hid, int h, int w)
{
    if (!be->ops->dconv_tail)
        return;
    size_t plane = (size_t)h * w, cx = (size_t)n * c * plane, cz = (size_t)n * hid * plane;
    float *x = hrand(cx, 1.0f), *z = hrand(cz, 1.0f), *w2 = hrand((size_t)2 * c * hid, 1.0f),
          *b2 = hrand((size_t)2 * c, 0.5f), *g = hrand(2 * (size_t)c, 1.0f),
          *bt = hrand(2 * (size_t)c, 1.0f), *sc = hrand((size_t)c, 1.0f);
    double *ref = malloc(cx * sizeof(double)), *y = malloc((size_t)2 * c * w * sizeof(double));
    for (int b = 0; b < n; b++)
        for (int row = 0; row < h; row++) {
            double s = 0, ss = 0;
            for (int o = 0; o < 2 * c; o++)
                for (int t = 0; t < w; t++) {
                    double acc = b2[o];
                    for (int i = 0; i < hid; i++)
                        acc +=
                            (double)w2[o * hid + i] * z[(((size_t)b * hid + i) * h + row) * w + t];
                    y[(size_t)o * w + t] = acc;
                    s += acc;
                }
            double m = s / (2.0 * c * w);
            for (size_t i = 0; i < (size_t)2 * c * w; i++)
                ss += (y[i] - m) * (y[i] - m);
            double r = 1.0 / sqrt(ss / (2.0 * c * w) + 1e-5);
            for (int ch = 0; ch < c; ch++)
                for (int t = 0; t < w; t++) {
                    size_t ix = (((size_t)b * c + ch) * h + row) * w + t;
                    double a = (y[(size_t)ch * w + t] - m) * r * g[ch] + bt[ch];
                    double gg = (y[(size_t)(ch + c) * w + t] - m) * r * g[ch + c] + bt[ch + c];
                    ref[ix] = x[ix] + sc[ch] * a / (1 + exp(-gg));
                }
        }
    float *dx = dev(x, cx), *dz = dev(z, cz), *dw = dev(w2, (size_t)2 * c * hid),
          *dbias = dev(b2, (size_t)2 * c), *dg = dev(g, 2 * (size_t)c),
          *db = dev(bt, 2 * (size_t)c), *ds = dev(sc, (size_t)c);
    int done = 0;
    double us = TIMED(
        done = be->ops->dconv_tail(be, dx, dz, dw, dbias, dg, db, ds, n, c, hid, h, w, 1e-5f));
    if (done) {
        report(name, dx, ref, cx, us);
    } else {
        for (size_t i = 0; i < cx; i++)
            ref[i] = x[i];
        printf("%s: not fused by this backend (x must be unchanged)\n", name);
        report(name, dx, ref, cx, us);
    }
    float *bufs[] = {dz, dw, dbias, dg, db, ds}; /* report() freed dx */
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        be->ops->free(be, bufs[i]);
    free(x);
    free(z);
    free(w2);
    free(b2);
    free(g);
    free(bt);
    free(sc);
    free(y); /* and ref: report() freed it */
}

static void test_token_norms(void)
{
    int n = 2, t = 97, c = 24;
    size_t cnt = (size_t)n * t * c;
    float *x = hrand(cnt, 2.0f), *g = hrand((size_t)c, 1.0f), *bt = hrand((size_t)c, 1.0f);
    double *ref = malloc(cnt * sizeof(double));
    for (int b = 0; b < n; b++) {
        int p[1] = {b * t * c};
        double m, r;
        stats_d(x, (size_t)t * c, idx_lin, p, &m, &r, 1e-5);
        for (size_t i = 0; i < (size_t)t * c; i++)
            ref[p[0] + i] = (x[p[0] + i] - m) * r * g[i % c] + bt[i % c];
    }
    float *dx = dev(x, cnt), *dg = dev(g, (size_t)c), *db = dev(bt, (size_t)c),
          *dy = dev(NULL, cnt);
    double us = TIMED(be->ops->group_norm_tokens(be, dy, dx, dg, db, n, t, c, 1e-5f));
    report("group_norm_tokens 2x97x24", dy, ref, cnt, us);

    ref = malloc(cnt * sizeof(double));
    for (int r0 = 0; r0 < n * t; r0++) {
        int p[1] = {r0 * c};
        double m, r;
        stats_d(x, (size_t)c, idx_lin, p, &m, &r, 1e-5);
        for (int i = 0; i < c; i++)
            ref[p[0] + i] = (x[p[0] + i] - m) * r * g[i] + bt[i];
    }
    dy = dev(NULL, cnt);
    us = TIMED(be->ops->layer_norm(be, dy, dx, dg, db, n * t, c, 1e-5f));
    report("layer_norm 194x24", dy, ref, cnt, us);

    /* moments / normalize / denormalize */
    float *dm = dev(NULL, 2), *ds = dev(NULL, 2);
    be->ops->moments(be, dm, ds, dx, n, t * c);
    double *mref = malloc(4 * sizeof(double));
    for (int b = 0; b < n; b++) {
        double s = 0, ss = 0;
        for (int i = 0; i < t * c; i++)
            s += x[(size_t)b * t * c + i];
        double m = s / (t * c);
        for (int i = 0; i < t * c; i++)
            ss += (x[(size_t)b * t * c + i] - m) * (x[(size_t)b * t * c + i] - m);
        mref[b] = m;
        mref[2 + b] = sqrt(ss / (t * c - 1)); /* unbiased, as torch.std */
    }
    float *both = dev(NULL, 4);
    be->ops->copy_rows(be, both, 0, dm, 0, 1, 2);
    be->ops->copy_rows(be, both + 2, 0, ds, 0, 1, 2);
    float *hm = back(dm, 2), *hs = back(ds, 2);
    report("moments (mean, unbiased std)", both, mref, 4, 0);
    ref = malloc(cnt * sizeof(double));
    for (size_t i = 0; i < cnt; i++) {
        int b = (int)(i / ((size_t)t * c));
        ref[i] = (x[i] - (double)hm[b]) / (1e-5 + (double)hs[b]);
    }
    dy = dev(NULL, cnt);
    us = TIMED(be->ops->normalize(be, dy, dx, dm, ds, n, t * c, 1e-5f));
    float *hy = back(dy, cnt);
    report("normalize", dy, ref, cnt, us);
    ref = malloc(cnt * sizeof(double));
    for (size_t i = 0; i < cnt; i++) {
        int b = (int)(i / ((size_t)t * c));
        ref[i] = hy[i] * (double)hs[b] + hm[b];
    }
    float *dz = dev(NULL, cnt), *dyy = dev(hy, cnt);
    us = TIMED(be->ops->denormalize(be, dz, dyy, dm, ds, n, t * c));
    report("denormalize", dz, ref, cnt, us);
    be->ops->free(be, dyy);
    be->ops->free(be, dm);
    be->ops->free(be, ds);
    free_operands(dx, dg, db, x, g, bt);
    free(hm);
    free(hs);
    free(hy);
}

/* ---- element-wise and layout ---- */

/* glu of [nb][2c][s] (host values hx, their device copy dx) against double */
static void check_glu(const char *name, const float *hx, float *dx, int nb, int c, int s)
{
    size_t half = (size_t)nb * c * s;
    double *ref = malloc(half * sizeof(double));
    for (int b = 0; b < nb; b++)
        for (size_t i = 0; i < (size_t)c * s; i++) {
            double a = hx[(size_t)b * 2 * c * s + i], g = hx[(size_t)b * 2 * c * s + c * s + i];
            ref[(size_t)b * c * s + i] = a / (1 + exp(-g));
        }
    float *d = dev(NULL, half);
    double us = TIMED(be->ops->glu(be, d, dx, nb, c, s));
    report(name, d, ref, half, us);
}

static void test_elementwise(void)
{
    size_t n = 100003;
    float *x = hrand(n, 6.0f), *y = hrand(n, 3.0f);
    float *dx = dev(x, n), *dy = dev(y, n);
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        ref[i] = gelu_d(x[i]);
    float *d = dev(NULL, n);
    double us = TIMED(be->ops->gelu(be, d, dx, n));
    report("gelu 100003", d, ref, n, us);
    ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        ref[i] = x[i] > 0 ? x[i] : 0;
    d = dev(NULL, n);
    us = TIMED(be->ops->relu(be, d, dx, n));
    report("relu", d, ref, n, us);
    ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        ref[i] = (double)x[i] + y[i];
    d = dev(NULL, n);
    us = TIMED(be->ops->add(be, d, dx, dy, n));
    report("add", d, ref, n, us);

    int nb = 2, c = 7, s = 1301; /* glu: [2][14][1301] -> [2][7][1301] */
    size_t half = (size_t)nb * c * s;
    check_glu("glu 2x7x1301", x, dx, nb, c, s);
    /* gates far past both clamps of the exponential (no inf or NaN from 2^n) */
    float *xw = hrand(2 * half, 120.0f), *dxw = dev(xw, 2 * half);
    check_glu("glu 2x7x1301 gates +-120", xw, dxw, nb, c, s);
    be->ops->free(be, dxw);
    free(xw);

    float *sc = hrand(64, 1.0f), *dsc = dev(sc, 64);
    ref = malloc(half * sizeof(double));
    for (size_t i = 0; i < half; i++)
        ref[i] = x[i] + (double)sc[(i / s) % c] * y[i];
    d = dev(x, half);
    us = TIMED(be->ops->add_scaled_channels(be, d, dy, dsc, nb, c, s));
    report("add_scaled_channels", d, ref, half, us);
    int rows = 1000, cl = 48;
    ref = malloc((size_t)rows * cl * sizeof(double));
    for (size_t i = 0; i < (size_t)rows * cl; i++)
        ref[i] = x[i] + (double)sc[i % cl] * y[i];
    d = dev(x, (size_t)rows * cl);
    us = TIMED(be->ops->add_scaled_last(be, d, dy, dsc, rows, cl));
    report("add_scaled_last", d, ref, (size_t)rows * cl, us);
    ref = malloc((size_t)rows * cl * sizeof(double));
    for (size_t i = 0; i < (size_t)rows * cl; i++)
        ref[i] = (double)x[i] + y[i];
    d = dev(x, (size_t)rows * cl);
    us = TIMED(be->ops->add_scaled_last(be, d, dy, NULL, rows, cl));
    report("add_scaled_last (no scale)", d, ref, (size_t)rows * cl, us);
    ref = malloc(2 * 5000 * sizeof(double));
    for (size_t i = 0; i < 10000; i++)
        ref[i] = x[i] + 0.75 * y[i % 5000];
    d = dev(x, 10000);
    us = TIMED(be->ops->add_table(be, d, dy, 0.75f, 2, 5000));
    report("add_table", d, ref, 10000, us);
    int fc = 6, ff = 9, ft = 31; /* table [ff][fc] */
    size_t fn = (size_t)2 * fc * ff * ft;
    ref = malloc(fn * sizeof(double));
    for (size_t i = 0; i < fn; i++) {
        int f = (int)((i / ft) % ff), ch = (int)((i / ((size_t)ft * ff)) % fc);
        ref[i] = x[i] + 0.2 * y[f * fc + ch];
    }
    d = dev(x, fn);
    us = TIMED(be->ops->add_freq_table(be, d, dy, 0.2f, 2, fc, ff, ft));
    report("add_freq_table", d, ref, fn, us);

    int dims[4] = {2, 5, 7, 11}, perms[2][4] = {{0, 3, 2, 1}, {0, 2, 1, 3}};
    for (int k = 0; k < 2; k++) {
        const int *pm = perms[k];
        int od[4] = {dims[pm[0]], dims[pm[1]], dims[pm[2]], dims[pm[3]]};
        size_t cnt = 2 * 5 * 7 * 11;
        ref = malloc(cnt * sizeof(double));
        for (int a = 0; a < od[0]; a++)
            for (int b = 0; b < od[1]; b++)
                for (int e = 0; e < od[2]; e++)
                    for (int f = 0; f < od[3]; f++) {
                        int o[4] = {a, b, e, f}, in[4];
                        for (int q = 0; q < 4; q++)
                            in[pm[q]] = o[q];
                        ref[((size_t)(a * od[1] + b) * od[2] + e) * od[3] + f] =
                            x[((size_t)(in[0] * dims[1] + in[1]) * dims[2] + in[2]) * dims[3] +
                              in[3]];
                    }
        d = dev(NULL, cnt);
        us = TIMED(be->ops->permute4(be, d, dx, dims, pm));
        report(k ? "permute4 0213" : "permute4 0321", d, ref, cnt, us);
    }
    ref = malloc(13 * 40 * sizeof(double));
    for (int r = 0; r < 13; r++)
        for (int i = 0; i < 40; i++)
            ref[r * 40 + i] = x[r * 57 + 5 + i];
    d = dev(NULL, 13 * 40);
    us = TIMED(be->ops->copy_rows(be, d, 40, dx + 5, 57, 13, 40));
    report("copy_rows strided", d, ref, 13 * 40, us);

    free_operands(dx, dy, dsc, x, y, sc);
}

/* ---- spectrogram ---- */

static double hann(int i, int n)
{
    return 0.5 - 0.5 * cos(2 * M_PI * i / n);
}

/* pad1d(x, (l, r), "reflect") of demucs.hdemucs (zero extension for short inputs) */
static double pad1d_at(const float *x, int len, int left, int right, int p)
{
    int max_pad = left > right ? left : right, el = 0, er = 0;
    if (len <= max_pad) {
        int extra = max_pad - len + 1;
        er = right < extra ? right : extra;
        el = extra - er;
    }
    int n = len + el + er, q = p - (left - el);
    if (q < 0)
        q = -q;
    if (q >= n)
        q = 2 * (n - 1) - q;
    int xi = q - el;
    return xi >= 0 && xi < len ? x[xi] : 0.0;
}

static void test_spec(const char *name, int nsig, int length, int nfft)
{
    int hl = nfft / 4, F = nfft / 2, le = (length + hl - 1) / hl, pad = hl / 2 * 3;
    size_t no = (size_t)nsig * 2 * F * le;
    float *x = hrand((size_t)nsig * length, 1.0f);
    double *ref = malloc(no * sizeof(double));
    for (int s = 0; s < nsig; s++)
        for (int fr = 0; fr < le; fr++)
            for (int f = 0; f < F; f++) {
                double re = 0, im = 0;
                for (int i = 0; i < nfft; i++) {
                    double v = pad1d_at(x + (size_t)s * length, length, pad, pad + le * hl - length,
                                        fr * hl + i) *
                               hann(i, nfft);
                    re += v * cos(2 * M_PI * f * i / nfft);
                    im -= v * sin(2 * M_PI * f * i / nfft);
                }
                ref[((size_t)s * 2 * F + f) * le + fr] = re / sqrt(nfft);
                ref[((size_t)s * 2 * F + F + f) * le + fr] = im / sqrt(nfft);
            }
    float *dx = dev(x, (size_t)nsig * length), *dz = dev(NULL, no);
    double us = TIMED(be->ops->spec(be, dz, dx, nsig, length, nfft));
    report(name, dz, ref, no, us);
    be->ops->free(be, dx);
    free(x);
}

static void test_ispec(const char *name, int nsig, int frames, int length, int nfft)
{
    int hl = nfft / 4, F = nfft / 2, pad = hl / 2 * 3, total = frames + 4;
    size_t nz = (size_t)nsig * 2 * F * frames;
    float *z = hrand(nz, 1.0f);
    size_t ola = (size_t)nfft + (size_t)hl * (total - 1);
    double *y = malloc(ola * sizeof(double)), *env = calloc(ola, sizeof(double));
    double *ref = malloc((size_t)nsig * length * sizeof(double));
    for (int t = 0; t < total; t++)
        for (int i = 0; i < nfft; i++)
            env[(size_t)t * hl + i] += hann(i, nfft) * hann(i, nfft);
    for (int s = 0; s < nsig; s++) {
        memset(y, 0, ola * sizeof(double));
        for (int fr = 0; fr < frames; fr++)
            for (int i = 0; i < nfft; i++) {
                /* Hermitian inverse of bins 0..F-1 (bin F is zero; the imaginary part of
                 * bin 0 is ignored, as a c2r transform does) */
                double v = z[((size_t)s * 2 * F) * frames + fr];
                for (int f = 1; f < F; f++) {
                    double re = z[((size_t)s * 2 * F + f) * frames + fr];
                    double im = z[((size_t)s * 2 * F + F + f) * frames + fr];
                    v +=
                        2 * (re * cos(2 * M_PI * f * i / nfft) - im * sin(2 * M_PI * f * i / nfft));
                }
                y[(size_t)(fr + 2) * hl + i] += v / sqrt(nfft) * hann(i, nfft);
            }
        for (int i = 0; i < length; i++) {
            size_t j = (size_t)nfft / 2 + pad + i;
            ref[(size_t)s * length + i] = y[j] / env[j];
        }
    }
    float *dz = dev(z, nz), *dy = dev(NULL, (size_t)nsig * length);
    double us = TIMED(be->ops->ispec(be, dy, dz, nsig, frames, length, nfft));
    report(name, dy, ref, (size_t)nsig * length, us);
    be->ops->free(be, dz);
    free(z);
    free(y);
    free(env);
}

/* ---- the cases: shapes chosen to reach every code path of the CPU backend ---- */

/* clang-format off */
static const struct {
    const char *name;
    sep_conv2d_desc desc;
} conv_cases[] = {
    /* {name, {n, cin, h, w, cout, kh, kw, sh, sw, dh, dw, ph0, ph1, pw0, pw1, act}} */
    /* direct kernel: dilation 2, 32-wide blocks, the last block overlapping, edges */
    {"conv 1x3 dil2 direct cin24 cout6 3x150",       {2, 24,  3,  150,  6, 1, 3, 1, 1, 1, 2, 0, 0, 2, 2, SEP_ACT_NONE}},
    {"conv 1x3 direct narrow rows cin40 cout5 4x20", {1, 40,  4,   20,  5, 1, 3, 1, 1, 1, 1, 0, 0, 1, 1, SEP_ACT_NONE}},
    {"conv 1x1 direct cin6 cout20 +gelu 2x1100",     {1,  6,  2, 1100, 20, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, SEP_ACT_GELU}},
    /* channel blocks of every instruction set (4, 6, 8) with a partial last block,
     * rows just under, at and over one position block (8, 16, 32) */
    {"conv 1x3 direct cin9 cout13 2x17",             {1,  9,  2,   17, 13, 1, 3, 1, 1, 1, 1, 0, 0, 1, 1, SEP_ACT_NONE}},
    {"conv 1x3 direct cin7 cout11 3x33 +gelu",       {1,  7,  3,   33, 11, 1, 3, 1, 1, 1, 1, 0, 0, 1, 1, SEP_ACT_GELU}},
    {"conv 1x3 direct cin5 cout7 2x9",               {2,  5,  2,    9,  7, 1, 3, 1, 1, 1, 1, 0, 0, 1, 1, SEP_ACT_NONE}},
    {"conv 1x3 dil4 direct cin12 cout12 1x40",       {1, 12,  1,   40, 12, 1, 3, 1, 1, 1, 4, 0, 0, 4, 4, SEP_ACT_NONE}},
    {"conv 1x1 direct cin12 cout25 4x15",            {1, 12,  4,   15, 25, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, SEP_ACT_NONE}},
    {"conv 3x3 im2col cin16 cout24 9x37",            {2, 16,  9,   37, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_NONE}},
    {"conv 3x3 im2col chunks cin24 cout20 40x60",    {1, 24, 40,   60, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_NONE}},
    {"conv 3x3 im2col pad0 cin64 cout20 12x30",      {1, 64, 12,   30, 20, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, SEP_ACT_NONE}},
    /* Winograd F(2x2, 3x3): several chunks, odd sizes (partial tiles), one row */
    {"conv 3x3 winograd cin32 cout20 40x60",         {1, 32, 40,   60, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_NONE}},
    {"conv 3x3 winograd +glu cin72 cout30 9x37",     {2, 72,  9,   37, 30, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_GLU}},
    {"conv 3x3 winograd +gelu cin96 cout8 1x5",      {1, 96,  1,    5,  8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_GELU}},
    /* F(4x4, 3x3) (16 rows or more): tiles cut by the bottom and right edges */
    {"conv 3x3 winograd4 +glu cin48 cout24 17x38",   {2, 48, 17,   38, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_GLU}},
    {"conv 3x3 winograd4 +gelu cin40 cout12 33x5",   {1, 40, 33,    5, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_GELU}},
    {"conv 8x1 s4 freq cin4 cout24 +gelu 64x20",     {2,  4, 64,   20, 24, 8, 1, 4, 1, 1, 1, 2, 2, 0, 0, SEP_ACT_GELU}},
    {"conv 1x8 s4 time asym pad cin2 cout24 1x1001", {2,  2,  1, 1001, 24, 1, 8, 1, 4, 1, 1, 0, 0, 2, 5, SEP_ACT_NONE}},
    {"conv 3x3 +glu (rewrite) cin12 cout24 17x41",   {2, 12, 17,   41, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, SEP_ACT_GLU}},
    {"conv 1x1 +glu (rewrite) cin20 cout40 3x300",   {1, 20,  3,  300, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, SEP_ACT_GLU}},
    {"conv 1x1 gemm cin32 cout40 1x700",             {2, 32,  1,  700, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, SEP_ACT_NONE}},
};

static const struct {
    const char *name;
    sep_conv_tr2d_desc desc;
} conv_tr_cases[] = {
    /* {name, {n, cin, h, w, cout, kh, kw, sh, sw}} */
    {"conv_tr 8x1 s4 freq cin24 cout8 40x30",        {2, 24, 40,   30,  8, 8, 1, 4, 1}},
    {"conv_tr 1x8 s4 time cin24 cout8 1x2000",       {1, 24,  1, 2000,  8, 1, 8, 1, 4}},
    {"conv_tr 4x1 s4 (last freq) cin16 cout12 1x50", {1, 16,  1,   50, 12, 4, 1, 4, 1}},
    {"conv_tr 8x1 s4 freq cin48 cout16 128x64",      {1, 48, 128,  64, 16, 8, 1, 4, 1}},
};

static const struct {
    const char *name;
    sep_attention_desc desc;
    float amp;      /* q and k uniform in [-amp, amp] */
    int integer_qk; /* and rounded to integers */
} attention_cases[] = {
    /* {name, {batch, heads, nq, nk, head_dim, ldq, ldk, ldv, ldo}, amp, integer_qk} */
    {"attention self 2x3h 600x600 (ld 3C)", {2, 3, 600, 600, 16, 144, 144, 144, 48}, 1.0f},
    {"attention cross 1x4h 700x333",        {1, 4, 700, 333,  8,  32,  64,  64, 32}, 1.0f},
    /* several key tiles and a partial one, peaked rows: the running max changes */
    {"attention 1x2h 300x1000 hd64 peaked", {1, 2, 300, 1000, 64, 128, 128, 128, 128}, 3.0f},
    {"attention 2x2h 520x777 hd48 (ld 100)", {2, 2, 520, 777, 48, 100, 100, 100, 96}, 2.0f},
    {"attention 1x1h 5x7 tiny",             {1, 1,   5,    7,  4,   4,   4,   4,   4}, 2.0f},
    /* exact scores (dots of 64 integers in [-10, 10], scale 1/8), spread by about 33 per
     * standard deviation: many differences from the row maximum past the exp clamp */
    {"attention 1x2h 70x300 hd64 integer scores", {1, 2, 70, 300, 64, 128, 128, 128, 128}, 10.4f, 1},
};
/* clang-format on */

int main(int argc, char **argv)
{
    const char *device = "cpu";
    int threads = 2;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            device = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--isas") == 0) {
            for (int j = 0; sep_cpu_isas[j]; j++)
                if (sep_cpu_isa_supported(sep_cpu_isas[j]))
                    printf("%s%s", j ? " " : "", sep_cpu_isas[j]);
            printf("\n");
            return 0;
        } else if (strcmp(argv[i], "--paths") == 0) {
            unsetenv("SEP_CPU_GEMM");
            char gerr[256];
            for (int j = 0; sep_cpu_isas[j]; j++) {
                if (!sep_cpu_isa_supported(sep_cpu_isas[j]))
                    continue;
                const char *g = sep_cpu_gemm(sep_cpu_isas[j], gerr, sizeof(gerr))->name;
                printf("%s%s:%s", j ? " " : "", sep_cpu_isas[j], g);
                if (strcmp(g, "openblas") != 0)
                    printf(" %s:openblas", sep_cpu_isas[j]);
            }
            printf("\n");
            return 0;
        }
    }
    char err[256];
    if (strcmp(device, "cpu") == 0)
        be = sep_cpu_backend_create(threads, err, sizeof(err));
    else
        be = sep_cuda_backend_open(0, err, sizeof(err));
    if (!be) {
        printf("FAIL backend: %s\n", err);
        return 1;
    }
    if (strcmp(device, "cpu") == 0)
        printf("cpu kernels: %s\n", sep_cpu_kernels(err, sizeof(err))->name);
    for (size_t i = 0; i < sizeof(conv_cases) / sizeof(conv_cases[0]); i++)
        test_conv(conv_cases[i].name, conv_cases[i].desc);
    for (size_t i = 0; i < sizeof(conv_tr_cases) / sizeof(conv_tr_cases[0]); i++)
        test_conv_tr(conv_tr_cases[i].name, conv_tr_cases[i].desc);
    test_linear("linear 2x300x48->72", 2, 300, 48, 72, SEP_ACT_NONE);
    test_linear("linear 1x130x64->256 +gelu", 1, 130, 64, 256, SEP_ACT_GELU);
    test_linear("linear 1x70x32->40 +relu", 1, 70, 32, 40, SEP_ACT_RELU);
    for (size_t i = 0; i < sizeof(attention_cases) / sizeof(attention_cases[0]); i++)
        test_attention(attention_cases[i].name, attention_cases[i].desc, attention_cases[i].amp,
                       attention_cases[i].integer_qk);
    test_group_norm("group_norm 2x12x500 g4", 2, 12, 500, 4, SEP_ACT_NONE);
    test_group_norm("group_norm 1x8x30000 g1 +gelu (split block)", 1, 8, 30000, 1, SEP_ACT_GELU);
    test_group_norm_rows("group_norm_rows 2x10x7x90 +gelu", 2, 10, 7, 90, SEP_ACT_GELU);
    test_group_norm_rows("group_norm_rows 1x6x1x5000", 1, 6, 1, 5000, SEP_ACT_NONE);
    test_dconv_residual("dconv_residual 2x6x5x70", 2, 6, 5, 70);
    /* one row (the time branch): channels are split across threads instead of rows */
    test_dconv_residual("dconv_residual 1x6x1x500 single row", 1, 6, 1, 500);
    test_dconv_residual("dconv_residual 1x5x1x333 single row, odd channels", 1, 5, 1, 333);
    test_dconv_tail("dconv_tail 2x6x5x70 hid3", 2, 6, 3, 5, 70);
    /* one long row cut into many chunks (the time branch) */
    test_dconv_tail("dconv_tail 1x48x1x5000 hid6 (chunks)", 1, 48, 6, 1, 5000);
    test_dconv_tail("dconv_tail 1x5x3x333 hid2 odd channels", 1, 5, 2, 3, 333);
    test_dconv_tail("dconv_tail 2x24x3x7 hid8 (rows shorter than a block)", 2, 24, 8, 3, 7);
    test_dconv_tail("dconv_tail 1x96x4x50 hid12", 1, 96, 12, 4, 50);
    /* 2c = 384: chunks of 32 (AVX-512) leave 16 positions that the last chunk takes */
    test_dconv_tail("dconv_tail 1x192x2x336 hid24 (remainder chunk)", 1, 192, 24, 2, 336);
    test_dconv_tail("dconv_tail 1x40x1x1001 hid17", 1, 40, 17, 1, 1001);
    test_dconv_tail("dconv_tail 1x96x4x50 hid25 (declined by the CPU)", 1, 96, 25, 4, 50);
    test_token_norms();
    test_elementwise();
    test_spec("spec nfft256 3x1000", 3, 1000, 256);
    test_spec("spec nfft256 short input 2x50 (zero-extended)", 2, 50, 256);
    test_ispec("ispec nfft256 3x16 frames -> 1000", 3, 16, 1000, 256);
    be->ops->destroy(be);
    printf("%s ops: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    printf("CASES: %d passed, %d failed, 0 skipped\n", checks > failures ? checks - failures : 0,
           failures);
    return failures ? 1 : 0;
}
