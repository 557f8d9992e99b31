/*
 * profile.c - a backend that times every operation of another backend.
 *
 * sep_profile_wrap() returns a backend whose operations call the wrapped backend's,
 * synchronise, and add the elapsed wall time to a per-operation (and, for
 * convolutions and GEMMs, per-shape) table; the table is printed when the backend is
 * destroyed. The engine wraps its backend when SEP_PROFILE is set in the environment.
 * Works for any backend, so CPU and GPU kernels are profiled the same way.
 */
#include "models/profile.h"
#include "models/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROF_MAX 256

typedef struct {
    char key[96];
    double seconds;
    double cpu;      /* process CPU time (all threads; with OMP_WAIT_POLICY=passive: work only) */
    double min_call; /* fastest single call: robust to other load on the machine */
    double flops;
    long calls;
} prof_entry;

typedef struct {
    sep_backend *inner;
    sep_backend_ops ops; /* profile_ops, less what the inner backend lacks */
    prof_entry e[PROF_MAX];
    int n;
    double t0;
} prof_impl;

static prof_impl *P(sep_backend *be)
{
    return be->impl;
}

static sep_backend *IN(sep_backend *be)
{
    return P(be)->inner;
}

static double tic(sep_backend *be, double *cpu0)
{
    IN(be)->ops->sync(IN(be));
    *cpu0 = sep_cpu_seconds();
    return sep_wall_seconds();
}

static void toc(sep_backend *be, double t0, double cpu0, const char *key, double flops)
{
    IN(be)->ops->sync(IN(be));
    double dt = sep_wall_seconds() - t0;
    double dcpu = sep_cpu_seconds() - cpu0;
    prof_impl *p = P(be);
    for (int i = 0; i < p->n; i++) {
        if (strcmp(p->e[i].key, key) == 0) {
            p->e[i].seconds += dt;
            p->e[i].cpu += dcpu;
            p->e[i].flops += flops;
            p->e[i].calls++;
            if (dt < p->e[i].min_call)
                p->e[i].min_call = dt;
            return;
        }
    }
    if (p->n < PROF_MAX) {
        prof_entry *e = &p->e[p->n++];
        snprintf(e->key, sizeof(e->key), "%s", key);
        e->seconds = dt;
        e->cpu = dcpu;
        e->min_call = dt;
        e->flops = flops;
        e->calls = 1;
    }
}

/* memory operations are passed through untimed */
static void *w_alloc(sep_backend *be, size_t b)
{
    return IN(be)->ops->alloc(IN(be), b);
}
static void w_free(sep_backend *be, void *p)
{
    IN(be)->ops->free(IN(be), p);
}
static void w_upload(sep_backend *be, void *d, const void *s, size_t b)
{
    IN(be)->ops->upload(IN(be), d, s, b);
}
static void w_download(sep_backend *be, void *d, const void *s, size_t b)
{
    IN(be)->ops->download(IN(be), d, s, b);
}
static const float *w_weights(sep_backend *be, const float *h, size_t n)
{
    return IN(be)->ops->weights(IN(be), h, n);
}
static void w_weights_free(sep_backend *be, const float *d)
{
    IN(be)->ops->weights_free(IN(be), d);
}
static void w_sync(sep_backend *be)
{
    IN(be)->ops->sync(IN(be));
}
static int w_status(sep_backend *be, char *err, size_t errlen)
{
    return IN(be)->ops->status ? IN(be)->ops->status(IN(be), err, errlen) : 0;
}

#define TIMED(key, flops, call)                                                                    \
    do {                                                                                           \
        double c0_, t0_ = tic(be, &c0_);                                                           \
        call;                                                                                      \
        toc(be, t0_, c0_, key, flops);                                                             \
    } while (0)

static void w_zero(sep_backend *be, float *d, size_t n)
{
    TIMED("zero", 0, IN(be)->ops->zero(IN(be), d, n));
}

static void w_conv2d(sep_backend *be, const sep_conv2d_desc *d, float *o, const float *i,
                     const float *w, const float *b)
{
    char key[96];
    snprintf(key, sizeof(key), "conv2d %dx%d s%dx%d cin%d cout%d %dx%d%s", d->kh, d->kw, d->sh,
             d->sw, d->cin, d->cout, d->ho, d->wo,
             d->act == SEP_ACT_GELU  ? " +gelu"
             : d->act == SEP_ACT_GLU ? " +glu"
                                     : "");
    double fl = 2.0 * d->n * d->cout * d->cin * d->kh * d->kw * (double)d->ho * d->wo;
    TIMED(key, fl, IN(be)->ops->conv2d(IN(be), d, o, i, w, b));
}

/* the key and floating-point operations of a transposed convolution (either op) */
static double conv_tr_key(char *key, size_t size, const sep_conv_tr2d_desc *d)
{
    snprintf(key, size, "conv_tr2d %dx%d cin%d cout%d %dx%d", d->kh, d->kw, d->cin, d->cout, d->h,
             d->w);
    return 2.0 * d->n * d->cout * d->cin * d->kh * d->kw * (double)d->h * d->w;
}

static void w_conv_tr2d(sep_backend *be, const sep_conv_tr2d_desc *d, float *o, const float *i,
                        const float *w, const float *b)
{
    char key[96];
    double fl = conv_tr_key(key, sizeof(key), d);
    TIMED(key, fl, IN(be)->ops->conv_tr2d(IN(be), d, o, i, w, b));
}

static void w_conv_tr2d_window(sep_backend *be, const sep_conv_tr2d_desc *d, int top, int oh,
                               int left, int ow, float *o, const float *i, const float *w,
                               const float *b)
{
    char key[96];
    double fl = conv_tr_key(key, sizeof(key), d);
    TIMED(key, fl, IN(be)->ops->conv_tr2d_window(IN(be), d, top, oh, left, ow, o, i, w, b));
}

static void w_linear(sep_backend *be, float *o, const float *i, const float *w, const float *b,
                     int batch, int rows, int in_dim, int out_dim, int act)
{
    char key[96];
    snprintf(key, sizeof(key), "linear %dx%d->%d%s", rows, in_dim, out_dim,
             act == SEP_ACT_GELU   ? " +gelu"
             : act == SEP_ACT_RELU ? " +relu"
                                   : "");
    double fl = 2.0 * batch * rows * (double)in_dim * out_dim;
    TIMED(key, fl, IN(be)->ops->linear(IN(be), o, i, w, b, batch, rows, in_dim, out_dim, act));
}

static void w_attention(sep_backend *be, const sep_attention_desc *d, float *o, const float *q,
                        const float *k, const float *v)
{
    char key[96];
    snprintf(key, sizeof(key), "attention %dx%d", d->nq, d->nk);
    double fl = 4.0 * d->batch * d->heads * (double)d->nq * d->nk * d->head_dim;
    TIMED(key, fl, IN(be)->ops->attention(IN(be), d, o, q, k, v));
}

static void w_group_norm(sep_backend *be, float *o, const float *i, const float *g, const float *b,
                         int n, int c, int s, int groups, float eps, int act)
{
    char key[96];
    snprintf(key, sizeof(key), "group_norm %dx%dx%d g%d%s", n, c, s, groups, act ? " +gelu" : "");
    TIMED(key, 0, IN(be)->ops->group_norm(IN(be), o, i, g, b, n, c, s, groups, eps, act));
}
static void w_group_norm_rows(sep_backend *be, float *o, const float *i, const float *g,
                              const float *b, int n, int c, int h, int w, float eps, int act)
{
    char key[96];
    snprintf(key, sizeof(key), "group_norm_rows %dx%dx%dx%d%s", n, c, h, w, act ? " +gelu" : "");
    TIMED(key, 0, IN(be)->ops->group_norm_rows(IN(be), o, i, g, b, n, c, h, w, eps, act));
}
static void w_dconv_residual(sep_backend *be, float *x, const float *y, const float *g,
                             const float *b, const float *sc, int n, int c, int h, int w, float eps)
{
    char key[96];
    snprintf(key, sizeof(key), "dconv_residual %dx%dx%dx%d", n, c, h, w);
    TIMED(key, 0, IN(be)->ops->dconv_residual(IN(be), x, y, g, b, sc, n, c, h, w, eps));
}
static int w_dconv_tail(sep_backend *be, float *x, const float *z, const float *w2, const float *b2,
                        const float *g, const float *b, const float *sc, int n, int c, int hid,
                        int h, int w, float eps)
{
    char key[96];
    int done = 0;
    snprintf(key, sizeof(key), "dconv_tail %dx%dx%dx%d hid%d", n, c, h, w, hid);
    double cpu0, t0 = tic(be, &cpu0);
    done = IN(be)->ops->dconv_tail(IN(be), x, z, w2, b2, g, b, sc, n, c, hid, h, w, eps);
    if (done) /* a declined shape runs as conv2d + dconv_residual, timed as those */
        toc(be, t0, cpu0, key, 2.0 * hid * 2 * c * (double)n * h * w);
    return done;
}
static void w_group_norm_tokens(sep_backend *be, float *o, const float *i, const float *g,
                                const float *b, int n, int t, int c, float eps)
{
    TIMED("group_norm_tokens", 0, IN(be)->ops->group_norm_tokens(IN(be), o, i, g, b, n, t, c, eps));
}
static void w_layer_norm(sep_backend *be, float *o, const float *i, const float *g, const float *b,
                         int rows, int dim, float eps)
{
    char key[96];
    snprintf(key, sizeof(key), "layer_norm %dx%d", rows, dim);
    TIMED(key, 0, IN(be)->ops->layer_norm(IN(be), o, i, g, b, rows, dim, eps));
}
static void w_moments(sep_backend *be, float *m, float *s, const float *i, int n, int c)
{
    TIMED("moments", 0, IN(be)->ops->moments(IN(be), m, s, i, n, c));
}
static void w_normalize(sep_backend *be, float *o, const float *i, const float *m, const float *s,
                        int n, int c, float eps)
{
    TIMED("normalize", 0, IN(be)->ops->normalize(IN(be), o, i, m, s, n, c, eps));
}
static void w_denormalize(sep_backend *be, float *o, const float *i, const float *m, const float *s,
                          int n, int c)
{
    TIMED("denormalize", 0, IN(be)->ops->denormalize(IN(be), o, i, m, s, n, c));
}
static void w_gelu(sep_backend *be, float *o, const float *i, size_t n)
{
    char key[96];
    snprintf(key, sizeof(key), "gelu %zu", n);
    TIMED(key, 0, IN(be)->ops->gelu(IN(be), o, i, n));
}
static void w_relu(sep_backend *be, float *o, const float *i, size_t n)
{
    TIMED("relu", 0, IN(be)->ops->relu(IN(be), o, i, n));
}
static void w_glu(sep_backend *be, float *o, const float *i, int n, int c, int s)
{
    char key[96];
    snprintf(key, sizeof(key), "glu %dx%dx%d", n, c, s);
    TIMED(key, 0, IN(be)->ops->glu(IN(be), o, i, n, c, s));
}
static void w_add(sep_backend *be, float *o, const float *a, const float *b, size_t n)
{
    char key[96];
    snprintf(key, sizeof(key), "add %zu", n);
    TIMED(key, 0, IN(be)->ops->add(IN(be), o, a, b, n));
}
static void w_add_scaled_channels(sep_backend *be, float *x, const float *y, const float *s, int n,
                                  int c, int sp)
{
    char key[96];
    snprintf(key, sizeof(key), "add_scaled_channels %dx%dx%d", n, c, sp);
    TIMED(key, 0, IN(be)->ops->add_scaled_channels(IN(be), x, y, s, n, c, sp));
}
static void w_add_scaled_last(sep_backend *be, float *x, const float *y, const float *s, int rows,
                              int c)
{
    char key[96];
    snprintf(key, sizeof(key), "add_scaled_last %dx%d", rows, c);
    TIMED(key, 0, IN(be)->ops->add_scaled_last(IN(be), x, y, s, rows, c));
}
static void w_add_table(sep_backend *be, float *x, const float *t, float a, int n, int c)
{
    TIMED("add_table", 0, IN(be)->ops->add_table(IN(be), x, t, a, n, c));
}
static void w_add_freq_table(sep_backend *be, float *x, const float *t, float a, int n, int c,
                             int f, int tt)
{
    TIMED("add_freq_table", 0, IN(be)->ops->add_freq_table(IN(be), x, t, a, n, c, f, tt));
}
static void w_permute4(sep_backend *be, float *o, const float *i, const int dims[4],
                       const int perm[4])
{
    char key[96];
    snprintf(key, sizeof(key), "permute4 %d%d%d%d %dx%dx%dx%d", perm[0], perm[1], perm[2], perm[3],
             dims[0], dims[1], dims[2], dims[3]);
    TIMED(key, 0, IN(be)->ops->permute4(IN(be), o, i, dims, perm));
}
static void w_copy_rows(sep_backend *be, float *o, size_t os, const float *i, size_t is, int r,
                        size_t l)
{
    char key[96];
    snprintf(key, sizeof(key), "copy_rows %dx%zu", r, l);
    TIMED(key, 0, IN(be)->ops->copy_rows(IN(be), o, os, i, is, r, l));
}
static void w_spec(sep_backend *be, float *o, const float *i, int ns, int len, int nfft)
{
    TIMED("spec", 0, IN(be)->ops->spec(IN(be), o, i, ns, len, nfft));
}
static void w_ispec(sep_backend *be, float *o, const float *i, int ns, int fr, int len, int nfft)
{
    TIMED("ispec", 0, IN(be)->ops->ispec(IN(be), o, i, ns, fr, len, nfft));
}

static int cmp_entry_best(const void *a, const void *b)
{
    const prof_entry *x = a, *y = b;
    double bx = x->min_call * x->calls, by = y->min_call * y->calls;
    return bx < by ? 1 : bx > by ? -1 : 0;
}

/* Per operation and shape: total seconds, and "best" = fastest call x calls, the time
 * the operations would take on a machine no one else is using. */
void sep_profile_report(sep_backend *be, FILE *out)
{
    prof_impl *p = P(be);
    qsort(p->e, (size_t)p->n, sizeof(prof_entry), cmp_entry_best);
    double total = 0, best = 0, cpu = 0, flops = 0;
    for (int i = 0; i < p->n; i++) {
        total += p->e[i].seconds;
        cpu += p->e[i].cpu;
        best += p->e[i].min_call * p->e[i].calls;
        flops += p->e[i].flops;
    }
    fprintf(out,
            "profile (%s backend): %.3f s in operations, best case %.3f s, CPU %.3f s, "
            "%.1f GFLOP\n",
            p->inner->name, total, best, cpu, flops * 1e-9);
    fprintf(out, "  %8s %8s %8s %6s %6s %9s %9s  %s\n", "seconds", "best", "cpu", "share", "calls",
            "GFLOP/s*", "GF/cpu-s", "operation (* at best)");
    for (int i = 0; i < p->n; i++) {
        const prof_entry *e = &p->e[i];
        double b = e->min_call * e->calls;
        fprintf(out, "  %8.3f %8.3f %8.3f %5.1f%% %6ld %9.1f %9.1f  %s\n", e->seconds, b, e->cpu,
                100 * b / best, e->calls, e->flops > 0 ? e->flops / b * 1e-9 : 0.0,
                e->flops > 0 && e->cpu > 0 ? e->flops / e->cpu * 1e-9 : 0.0, e->key);
    }
}

static void w_destroy(sep_backend *be)
{
    sep_profile_report(be, stderr);
    IN(be)->ops->destroy(IN(be));
    free(be->impl);
    free(be);
}

static const sep_backend_ops profile_ops = {
    .alloc = w_alloc,
    .free = w_free,
    .upload = w_upload,
    .download = w_download,
    .zero = w_zero,
    .weights = w_weights,
    .weights_free = w_weights_free,
    .sync = w_sync,
    .status = w_status,
    .conv2d = w_conv2d,
    .conv_tr2d = w_conv_tr2d,
    .conv_tr2d_window = w_conv_tr2d_window,
    .linear = w_linear,
    .attention = w_attention,
    .group_norm = w_group_norm,
    .group_norm_rows = w_group_norm_rows,
    .dconv_residual = w_dconv_residual,
    .dconv_tail = w_dconv_tail,
    .group_norm_tokens = w_group_norm_tokens,
    .layer_norm = w_layer_norm,
    .moments = w_moments,
    .normalize = w_normalize,
    .denormalize = w_denormalize,
    .gelu = w_gelu,
    .relu = w_relu,
    .glu = w_glu,
    .add = w_add,
    .add_scaled_channels = w_add_scaled_channels,
    .add_scaled_last = w_add_scaled_last,
    .add_table = w_add_table,
    .add_freq_table = w_add_freq_table,
    .permute4 = w_permute4,
    .copy_rows = w_copy_rows,
    .spec = w_spec,
    .ispec = w_ispec,
    .destroy = w_destroy,
};

sep_backend *sep_profile_wrap(sep_backend *inner)
{
    sep_backend *be = calloc(1, sizeof(*be));
    prof_impl *p = calloc(1, sizeof(*p));
    if (!be || !p) {
        free(be);
        free(p);
        return inner;
    }
    p->inner = inner;
    p->t0 = sep_wall_seconds();
    be->name = inner->name;
    p->ops = profile_ops;
    if (!inner->ops->dconv_tail)
        p->ops.dconv_tail = NULL;
    if (!inner->ops->conv_tr2d_window)
        p->ops.conv_tr2d_window = NULL;
    be->ops = &p->ops;
    be->threads = inner->threads;
    be->host_memory = inner->host_memory;
    be->impl = p;
    return be;
}
