/*
 * htdemucs.c - HTDemucs (demucs/htdemucs.py, hdemucs.py, transformer.py, demucs.py)
 * in C: hyperparameters, layer structure and the forward pass, written once against
 * the backend operation table (backend.h).
 *
 * The structure mirrors the reference constructor line by line (htd_build), and the
 * forward mirrors HTDemucs.forward, HEncLayer/HDecLayer.forward, DConv and
 * CrossTransformerEncoder: same padding, cropping and reshapes, same order of
 * operations. Activations are [batch][channels][freq][time] (time-only tensors have
 * freq = 1, which is also the memory layout of PyTorch's 3-D views); the
 * transformer works on token-major [batch][tokens][dim].
 *
 * Workspace comes from an arena (arena.h). Allocation failure inside a pass jumps
 * back to htd_forward, which reports it and releases the workspace.
 */
#include "models/htdemucs.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "models/arena.h"

#define GN_EPS 1e-5f
#define LN_EPS 1e-5f
#define NORM_EPS 1e-5f /* HTDemucs.forward: (x - mean) / (1e-5 + std) */

/* ------------------------------------------------------------------------------ */
/* hyperparameters                                                                  */

static int json_to_double(json_t *v, double *out)
{
    if (json_is_integer(v))
        *out = (double)json_integer_value(v);
    else if (json_is_real(v))
        *out = json_real_value(v);
    else if (json_is_boolean(v))
        *out = json_is_true(v) ? 1 : 0;
    else
        return -1;
    return 0;
}

typedef struct {
    json_t *obj;
    char *err;
    size_t errlen;
    int failed;
} kw_reader;

static json_t *kw_get(kw_reader *r, const char *key)
{
    json_t *v = json_object_get(r->obj, key);
    if (!v && !r->failed) {
        snprintf(r->err, r->errlen, "model kwargs: missing \"%s\"", key);
        r->failed = 1;
    }
    return v;
}

static double kw_double(kw_reader *r, const char *key)
{
    json_t *v = kw_get(r, key);
    double d = 0;
    if (v && json_to_double(v, &d) && !r->failed) {
        snprintf(r->err, r->errlen, "model kwargs: \"%s\" is not a number", key);
        r->failed = 1;
    }
    return d;
}

/* A value for messages: integers without a fraction, others as %g. */
static void fmt_value(char *buf, size_t len, double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        snprintf(buf, len, "%.0f", v);
    else
        snprintf(buf, len, "%g", v);
}

__attribute__((format(printf, 4, 5))) static void kw_fail(kw_reader *r, const char *key, double v,
                                                          const char *rule, ...)
{
    if (r->failed)
        return;
    char value[48], why[256];
    fmt_value(value, sizeof(value), v);
    va_list ap;
    va_start(ap, rule);
    vsnprintf(why, sizeof(why), rule, ap);
    va_end(ap);
    snprintf(r->err, r->errlen, "hyperparameter %s = %s: %s", key, value, why);
    r->failed = 1;
}

/* An integer in [lo, hi]; the range is checked on the JSON number, before any cast. */
static int kw_int_in(kw_reader *r, const char *key, int lo, int hi)
{
    double d = kw_double(r, key);
    if (r->failed)
        return lo;
    if (d != floor(d) || d < lo || d > hi) {
        kw_fail(r, key, d, "must be an integer in [%d, %d]", lo, hi);
        return lo;
    }
    return (int)d;
}

/* null counts as 0 (e.g. channels_time). */
static int kw_int_or_null_in(kw_reader *r, const char *key, int lo, int hi)
{
    json_t *v = kw_get(r, key);
    return v && json_is_null(v) ? 0 : kw_int_in(r, key, lo, hi);
}

/* A finite number in (lo, hi] (open_lo) or [lo, hi]. */
static double kw_real_in(kw_reader *r, const char *key, double lo, double hi, int open_lo)
{
    double d = kw_double(r, key);
    if (r->failed)
        return d;
    if (!isfinite(d) || (open_lo ? d <= lo : d < lo) || d > hi) {
        char l[48], h[48];
        fmt_value(l, sizeof(l), lo);
        fmt_value(h, sizeof(h), hi);
        kw_fail(r, key, d, "must be a number in %s%s, %s]", open_lo ? "(" : "[", l, h);
        return open_lo ? hi : lo;
    }
    return d;
}

static int kw_unsupported(kw_reader *r, const char *what)
{
    if (!r->failed) {
        snprintf(r->err, r->errlen, "model kwargs: %s is not supported by this engine", what);
        r->failed = 1;
    }
    return -1;
}

/* A channel count computed in double (growth products), checked before the cast. */
static int check_count(kw_reader *r, const char *key, double keyval, double count, const char *what,
                       int layer)
{
    if (r->failed)
        return 1;
    if (!(count >= 1 && count <= HTD_MAX_CHANNELS)) {
        char c[48];
        fmt_value(c, sizeof(c), count);
        kw_fail(r, key, keyval, "%s %d would have %s channels, every count must be in [1, %d]",
                what, layer, c, HTD_MAX_CHANNELS);
        return 1;
    }
    return 0;
}

static void check_groups(kw_reader *r, const htd_hparams *hp, int64_t channels, const char *what,
                         int layer)
{
    if (!r->failed && channels % hp->norm_groups != 0)
        kw_fail(r, "norm_groups", hp->norm_groups,
                "must divide the channel count of every normalized layer (%s %d has %lld)", what,
                layer, (long long)channels);
}

static void check_dconv(kw_reader *r, const htd_hparams *hp, int64_t channels, const char *what,
                        int layer)
{
    if (r->failed || hp->dconv_depth == 0)
        return;
    double hidden = floor((double)channels / hp->dconv_comp);
    if (!(hidden >= 1 && hidden <= HTD_MAX_CHANNELS)) {
        char h[48];
        fmt_value(h, sizeof(h), hidden);
        kw_fail(r, "dconv_comp", hp->dconv_comp,
                "the DConv of %s %d would have %s hidden channels (%lld / dconv_comp), it needs "
                "[1, %d]",
                what, layer, h, (long long)channels, HTD_MAX_CHANNELS);
    }
}

/* The structure htd_build makes, walked with 64-bit counts: every layer's channel
 * count in [1, HTD_MAX_CHANNELS], norm_groups dividing every GroupNorm'd count, the
 * DConv hidden sizes, the frequency axis halving as the decoder expects, and the
 * transformer's dimensions. Mirrored by models/convert_lib/htdemucs_args.py. */
static void check_structure(kw_reader *r, const htd_hparams *hp)
{
    int64_t S = hp->n_sources, C = hp->audio_channels;
    int64_t chin = C, chin_z = 2 * C;
    double chout = hp->channels_time ? hp->channels_time : hp->channels;
    double chout_z = hp->channels;
    int64_t freqs = hp->nfft / 2;
    if (check_count(r, "audio_channels", (double)C, (double)(2 * C * S), "the output layer", 0))
        return;
    for (int index = 0; index < hp->depth && !r->failed; index++) {
        int norm = index >= hp->norm_starts;
        int freq = freqs > 1;
        int ker = freq ? hp->kernel_size : 2 * hp->time_stride;
        int stri = freq ? hp->stride : hp->time_stride;
        int pad = 1, last_freq = 0;
        if (freq && freqs <= hp->kernel_size) {
            ker = (int)freqs;
            pad = 0;
            last_freq = 1;
        }
        if (last_freq) {
            chout_z = chout > chout_z ? chout : chout_z;
            chout = chout_z;
        }
        if (check_count(r, "growth", hp->growth, chout_z, "encoder layer", index) ||
            check_count(r, "growth", hp->growth, chout, "time encoder layer", index))
            return;
        int64_t cz = (int64_t)chout_z, ct = (int64_t)chout;
        if (freq && !last_freq) {
            /* conv (ker, stride, pad ker/4) must map freqs to freqs / stride, and the
             * decoder's transposed conv back again */
            int64_t p = ker / 4;
            int64_t out = freqs + 2 * p >= ker ? (freqs + 2 * p - ker) / stri + 1 : 0;
            if (freqs % stri != 0 || out != freqs / stri ||
                (out - 1) * stri + ker - 2 * p != freqs) {
                kw_fail(r, "kernel_size", hp->kernel_size,
                        "with stride %d, encoder layer %d maps %lld frequency bins to %lld, "
                        "not %lld / %d (and back)",
                        stri, index, (long long)freqs, (long long)out, (long long)freqs, stri);
                return;
            }
        }
        (void)pad;
        if (norm) {
            check_groups(r, hp, cz, "encoder layer", index);
            if (hp->rewrite)
                check_groups(r, hp, 2 * cz, "encoder layer", index);
        }
        if (hp->dconv_mode & 1)
            check_dconv(r, hp, cz, "encoder layer", index);
        if (freq && !last_freq) {
            if (norm) {
                check_groups(r, hp, ct, "time encoder layer", index);
                if (hp->rewrite)
                    check_groups(r, hp, 2 * ct, "time encoder layer", index);
            }
            if (hp->dconv_mode & 1)
                check_dconv(r, hp, ct, "time encoder layer", index);
        }
        if (index == 0) {
            chin = C * S;
            chin_z = 2 * chin;
        }
        /* decoder layer: chout_z -> chin_z; norm2 over its output, norm1 over 2 * input */
        if (norm) {
            check_groups(r, hp, chin_z, "decoder layer", hp->depth - 1 - index);
            if (hp->rewrite)
                check_groups(r, hp, 2 * cz, "decoder layer", hp->depth - 1 - index);
        }
        if (hp->dconv_mode & 2)
            check_dconv(r, hp, cz, "decoder layer", hp->depth - 1 - index);
        if (freq) {
            if (norm)
                check_groups(r, hp, chin, "time decoder layer", index);
            if (!last_freq) {
                if (norm && hp->rewrite)
                    check_groups(r, hp, 2 * ct, "time decoder layer", index);
                if (hp->dconv_mode & 2)
                    check_dconv(r, hp, ct, "time decoder layer", index);
            }
        }
        chin = ct;
        chin_z = cz;
        chout = floor(hp->growth * (double)ct);
        chout_z = floor(hp->growth * (double)cz);
        if (freq)
            freqs = freqs <= hp->kernel_size ? 1 : freqs / hp->stride;
    }
    if (r->failed)
        return;
    double tc = floor((double)hp->channels * pow(hp->growth, hp->depth - 1));
    if (check_count(r, "growth", hp->growth, tc, "the transformer input", 0))
        return;
    if ((hp->t_layers > 0 || hp->bottom_channels) &&
        ((int64_t)tc != chin_z || (int64_t)tc != chin)) {
        kw_fail(r, "growth", hp->growth,
                "the transformer takes channels * growth^(depth - 1) = %lld channels, the last "
                "encoder layers give %lld and %lld",
                (long long)tc, (long long)chin_z, (long long)chin);
        return;
    }
    if (hp->bottom_channels)
        tc = hp->bottom_channels;
    if (hp->t_layers > 0) {
        int64_t t = (int64_t)tc;
        if (t % hp->t_heads != 0 || t % 4 != 0) {
            kw_fail(r, "t_heads", hp->t_heads,
                    "the transformer dimension %lld must be a multiple of 4 and of t_heads",
                    (long long)t);
            return;
        }
        double hidden = floor(tc * hp->t_hidden_scale);
        if (!(hidden >= 1 && hidden <= 4 * HTD_MAX_CHANNELS)) {
            char h[48];
            fmt_value(h, sizeof(h), hidden);
            kw_fail(r, "t_hidden_scale", hp->t_hidden_scale,
                    "the transformer's hidden size would be %s, it needs [1, %d]", h,
                    4 * HTD_MAX_CHANNELS);
        }
    }
}

int htd_parse_hparams(htd_hparams *hp, const char *kwargs_json, int n_sources, char *err,
                      size_t errlen)
{
    memset(hp, 0, sizeof(*hp));
    json_error_t jerr;
    json_t *obj = json_loads(kwargs_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj || !json_is_object(obj)) {
        snprintf(err, errlen, "model kwargs: %s", obj ? "not an object" : jerr.text);
        json_decref(obj);
        return -1;
    }
    kw_reader r = {obj, err, errlen, 0};
    hp->n_sources = n_sources;
    json_t *src = json_object_get(obj, "sources");
    if (src && json_is_array(src) && (int)json_array_size(src) != n_sources) {
        snprintf(err, errlen, "model kwargs: %zu sources, the file lists %d", json_array_size(src),
                 n_sources);
        json_decref(obj);
        return -1;
    }
    /* every count >= 1 (or a documented 0) and under a cap (htdemucs.h) */
    hp->audio_channels = kw_int_in(&r, "audio_channels", 1, HTD_MAX_AUDIO_CHANNELS);
    hp->channels = kw_int_in(&r, "channels", 1, HTD_MAX_CHANNELS);
    hp->channels_time = kw_int_or_null_in(&r, "channels_time", 0, HTD_MAX_CHANNELS);
    hp->growth = kw_real_in(&r, "growth", 0, HTD_MAX_GROWTH, 1);
    hp->nfft = kw_int_in(&r, "nfft", 16, HTD_MAX_NFFT);
    hp->cac = kw_int_in(&r, "cac", 0, 1);
    hp->depth = kw_int_in(&r, "depth", 1, HTD_MAX_DEPTH);
    hp->rewrite = kw_int_in(&r, "rewrite", 0, 1);
    hp->freq_emb = kw_real_in(&r, "freq_emb", -1e6, 1e6, 0);
    hp->emb_scale = kw_real_in(&r, "emb_scale", -1e6, 1e6, 0);
    hp->kernel_size = kw_int_in(&r, "kernel_size", 1, HTD_MAX_KERNEL);
    hp->time_stride = kw_int_in(&r, "time_stride", 1, HTD_MAX_STRIDE);
    hp->stride = kw_int_in(&r, "stride", 1, HTD_MAX_STRIDE);
    hp->context = kw_int_in(&r, "context", 0, HTD_MAX_CONTEXT);
    hp->context_enc = kw_int_in(&r, "context_enc", 0, HTD_MAX_CONTEXT);
    hp->norm_starts = kw_int_in(&r, "norm_starts", 0, HTD_MAX_NORM_STARTS);
    hp->norm_groups = kw_int_in(&r, "norm_groups", 1, HTD_MAX_CHANNELS);
    hp->dconv_mode = kw_int_in(&r, "dconv_mode", 0, 3);
    hp->dconv_depth = kw_int_in(&r, "dconv_depth", -HTD_MAX_DCONV, HTD_MAX_DCONV);
    hp->dconv_comp = kw_real_in(&r, "dconv_comp", 0, HTD_MAX_CHANNELS, 1);
    hp->bottom_channels = kw_int_in(&r, "bottom_channels", 0, HTD_MAX_CHANNELS);
    hp->t_layers = kw_int_in(&r, "t_layers", 0, HTD_MAX_TLAYERS);
    int tl = hp->t_layers > 0;
    /* the transformer's settings only matter when there is one */
    hp->t_hidden_scale =
        tl ? kw_real_in(&r, "t_hidden_scale", 0, 64, 1) : kw_double(&r, "t_hidden_scale");
    double heads = kw_double(&r, "t_heads");
    if (tl)
        hp->t_heads = kw_int_in(&r, "t_heads", 1, HTD_MAX_HEADS);
    else
        hp->t_heads = heads >= 1 && heads <= HTD_MAX_HEADS ? (int)heads : 0;
    hp->t_norm_in = kw_int_in(&r, "t_norm_in", 0, 1);
    hp->t_norm_first = kw_int_in(&r, "t_norm_first", 0, 1);
    hp->t_norm_out = kw_int_in(&r, "t_norm_out", 0, INT_MAX);
    hp->t_max_period =
        tl ? kw_real_in(&r, "t_max_period", 0, 1e12, 1) : kw_double(&r, "t_max_period");
    hp->t_layer_scale = kw_int_in(&r, "t_layer_scale", 0, 1);
    hp->t_gelu = kw_int_in(&r, "t_gelu", 0, 1);
    hp->t_weight_pos_embed = kw_real_in(&r, "t_weight_pos_embed", -1e6, 1e6, 0);
    hp->t_cape_mean_normalize = kw_int_in(&r, "t_cape_mean_normalize", 0, 1);
    hp->t_cross_first = kw_int_in(&r, "t_cross_first", 0, 1);
    hp->samplerate = kw_int_in(&r, "samplerate", 1, HTD_MAX_SAMPLERATE);
    hp->segment = kw_real_in(&r, "segment", 0, HTD_MAX_SEGMENT, 1);
    hp->use_train_segment = kw_int_in(&r, "use_train_segment", 0, 1);

    json_t *emb = kw_get(&r, "t_emb");
    if (emb && !json_is_string(emb))
        kw_unsupported(&r, "non-string t_emb");
    else if (emb)
        snprintf(hp->t_emb, sizeof(hp->t_emb), "%s", json_string_value(emb));

    /* Options outside what the engine implements fail here, by name. */
    if (!r.failed) {
        json_t *mf = kw_get(&r, "multi_freqs");
        if (mf && !json_is_null(mf) && !(json_is_array(mf) && json_array_size(mf) == 0))
            kw_unsupported(&r, "multi_freqs (MultiWrap)");
        if (!hp->cac)
            kw_unsupported(&r, "cac=False (magnitude masking / Wiener filtering)");
        if (hp->t_layers > 0) {
            if (strcmp(hp->t_emb, "sin") != 0 && strcmp(hp->t_emb, "cape") != 0)
                kw_unsupported(&r, "t_emb other than \"sin\" or \"cape\"");
            if (kw_int_in(&r, "t_sparse_self_attn", 0, INT_MAX) ||
                kw_int_in(&r, "t_sparse_cross_attn", 0, INT_MAX))
                kw_unsupported(&r, "sparse attention (t_sparse_*_attn)");
            if (kw_int_in(&r, "t_group_norm", 0, INT_MAX))
                kw_unsupported(&r, "t_group_norm");
            if (!hp->t_norm_in && kw_int_in(&r, "t_norm_in_group", 0, INT_MAX))
                kw_unsupported(&r, "t_norm_in_group");
            if (kw_int_in(&r, "t_sin_random_shift", 0, INT_MAX))
                kw_unsupported(&r, "t_sin_random_shift (random positions at inference)");
            if (hp->t_norm_out > 1)
                kw_unsupported(&r, "t_norm_out with more than one group");
        }
        if (!r.failed && (hp->nfft & (hp->nfft - 1)))
            kw_fail(&r, "nfft", hp->nfft, "must be a power of two in [16, %d]", HTD_MAX_NFFT);
        if (!r.failed && hp->n_sources < 1)
            kw_fail(&r, "sources", hp->n_sources, "needs at least one source");
        check_structure(&r, hp);
    }
    json_decref(obj);
    return r.failed ? -1 : 0;
}

void htd_print_hparams(const htd_hparams *hp, FILE *out)
{
    fprintf(out,
            "  HTDemucs: sources=%d audio_channels=%d samplerate=%d segment=%.4gs\n"
            "    channels=%d channels_time=%d growth=%g depth=%d nfft=%d cac=%d rewrite=%d\n"
            "    kernel_size=%d stride=%d time_stride=%d context=%d context_enc=%d\n"
            "    norm_starts=%d norm_groups=%d dconv_mode=%d dconv_depth=%d dconv_comp=%g\n"
            "    freq_emb=%g emb_scale=%g bottom_channels=%d\n"
            "    t_layers=%d t_heads=%d t_hidden_scale=%g t_emb=%s t_norm_in=%d "
            "t_norm_first=%d t_norm_out=%d t_layer_scale=%d t_gelu=%d t_cross_first=%d\n",
            hp->n_sources, hp->audio_channels, hp->samplerate, hp->segment, hp->channels,
            hp->channels_time, hp->growth, hp->depth, hp->nfft, hp->cac, hp->rewrite,
            hp->kernel_size, hp->stride, hp->time_stride, hp->context, hp->context_enc,
            hp->norm_starts, hp->norm_groups, hp->dconv_mode, hp->dconv_depth, hp->dconv_comp,
            hp->freq_emb, hp->emb_scale, hp->bottom_channels, hp->t_layers, hp->t_heads,
            hp->t_hidden_scale, hp->t_emb, hp->t_norm_in, hp->t_norm_first, hp->t_norm_out,
            hp->t_layer_scale, hp->t_gelu, hp->t_cross_first);
}

/* ------------------------------------------------------------------------------ */
/* structure (HTDemucs.__init__)                                                    */

typedef struct {
    htd_tensor_fn get;
    void *ud;
    char *err;
    size_t errlen;
    int failed;
} binder;

static const float *bind(binder *b, int ndim, const int *shape, const char *fmt, ...)
{
    if (b->failed)
        return NULL;
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    const float *p = b->get(b->ud, name, ndim, shape, b->err, b->errlen);
    if (!p)
        b->failed = 1;
    return p;
}

static void bind_vec(binder *b, const float **dst, int n, const char *prefix, const char *what)
{
    *dst = bind(b, 1, (int[]){n}, "%s.%s", prefix, what);
}

/* Conv weights: freq 2-D convs [cout][cin][kh][kw], 1-D convs [cout][cin][k]. */
static void bind_conv(binder *b, htd_conv *c, const char *prefix, int cout, int cin, int kh, int kw,
                      int two_d, int transposed)
{
    c->cout = cout;
    c->cin = cin;
    c->kh = kh;
    c->kw = kw;
    int d0 = transposed ? cin : cout, d1 = transposed ? cout : cin;
    if (two_d)
        c->w = bind(b, 4, (int[]){d0, d1, kh, kw}, "%s.weight", prefix);
    else
        c->w = bind(b, 3, (int[]){d0, d1, kw}, "%s.weight", prefix);
    c->b = bind(b, 1, (int[]){cout}, "%s.bias", prefix);
}

static void bind_norm(binder *b, htd_norm *n, const char *prefix, int channels)
{
    bind_vec(b, &n->w, channels, prefix, "weight");
    bind_vec(b, &n->b, channels, prefix, "bias");
}

static void bind_dconv(binder *b, htd_dconv *d, const char *prefix, int channels,
                       const htd_hparams *hp)
{
    d->depth = abs(hp->dconv_depth);
    int dilate = hp->dconv_depth > 0;
    int hidden = (int)(channels / hp->dconv_comp);
    char p[200];
    for (int i = 0; i < d->depth; i++) {
        htd_dconv_layer *l = &d->layers[i];
        l->dilation = dilate ? 1 << i : 1;
        snprintf(p, sizeof(p), "%s.dconv.layers.%d.0", prefix, i);
        bind_conv(b, &l->conv1, p, hidden, channels, 1, 3, 0, 0);
        snprintf(p, sizeof(p), "%s.dconv.layers.%d.1", prefix, i);
        bind_norm(b, &l->norm1, p, hidden);
        snprintf(p, sizeof(p), "%s.dconv.layers.%d.3", prefix, i);
        bind_conv(b, &l->conv2, p, 2 * channels, hidden, 1, 1, 0, 0);
        snprintf(p, sizeof(p), "%s.dconv.layers.%d.4", prefix, i);
        bind_norm(b, &l->norm2, p, 2 * channels);
        l->scale = bind(b, 1, (int[]){channels}, "%s.dconv.layers.%d.6.scale", prefix, i);
    }
}

/* HEncLayer(chin, chout, kernel_size, stride, norm_groups, empty, freq, dconv, norm,
 *           context, dconv_kw, pad, rewrite) */
static void build_enc(binder *b, htd_layer *L, const char *prefix, const htd_hparams *hp, int chin,
                      int chout, int kernel, int stride, int freq, int empty, int pad, int norm,
                      int dconv, int context)
{
    memset(L, 0, sizeof(*L));
    L->freq = freq;
    L->empty = empty;
    L->norm = norm;
    L->pad = pad ? kernel / 4 : 0;
    L->kernel = kernel;
    L->stride = stride;
    L->chin = chin;
    L->chout = chout;
    L->context = context;
    char p[200];
    snprintf(p, sizeof(p), "%s.conv", prefix);
    bind_conv(b, &L->conv, p, chout, chin, freq ? kernel : 1, freq ? 1 : kernel, freq, 0);
    if (empty)
        return;
    if (norm) {
        snprintf(p, sizeof(p), "%s.norm1", prefix);
        bind_norm(b, &L->norm1, p, chout);
    }
    L->has_rewrite = hp->rewrite;
    if (hp->rewrite) {
        int k = 1 + 2 * context;
        snprintf(p, sizeof(p), "%s.rewrite", prefix);
        bind_conv(b, &L->rewrite, p, 2 * chout, chout, freq ? k : 1, k, freq, 0);
        if (norm) {
            snprintf(p, sizeof(p), "%s.norm2", prefix);
            bind_norm(b, &L->norm2, p, 2 * chout);
        }
    }
    L->has_dconv = dconv;
    if (dconv)
        bind_dconv(b, &L->dconv, prefix, chout, hp);
}

/* HDecLayer(chin, chout, last, kernel_size, stride, norm_groups, empty, freq, dconv,
 *           norm, context, dconv_kw, pad, context_freq=True, rewrite) */
static void build_dec(binder *b, htd_layer *L, const char *prefix, const htd_hparams *hp, int chin,
                      int chout, int last, int kernel, int stride, int freq, int empty, int pad,
                      int norm, int dconv, int context)
{
    memset(L, 0, sizeof(*L));
    L->freq = freq;
    L->empty = empty;
    L->last = last;
    L->norm = norm;
    L->pad = pad ? kernel / 4 : 0;
    L->kernel = kernel;
    L->stride = stride;
    L->chin = chin;
    L->chout = chout;
    L->context = context;
    L->context_freq = 1;
    char p[200];
    snprintf(p, sizeof(p), "%s.conv_tr", prefix);
    bind_conv(b, &L->conv, p, chout, chin, freq ? kernel : 1, freq ? 1 : kernel, freq, 1);
    if (norm) {
        snprintf(p, sizeof(p), "%s.norm2", prefix);
        bind_norm(b, &L->norm2, p, chout);
    }
    if (empty)
        return;
    L->has_rewrite = hp->rewrite;
    if (hp->rewrite) {
        int k = 1 + 2 * context;
        snprintf(p, sizeof(p), "%s.rewrite", prefix);
        bind_conv(b, &L->rewrite, p, 2 * chin, chin, freq ? k : 1, k, freq, 0);
        if (norm) {
            snprintf(p, sizeof(p), "%s.norm1", prefix);
            bind_norm(b, &L->norm1, p, 2 * chin);
        }
    }
    L->has_dconv = dconv;
    if (dconv)
        bind_dconv(b, &L->dconv, prefix, chin, hp);
}

static void build_tlayer(binder *b, htd_tlayer *T, const char *prefix, const htd_hparams *hp,
                         int dim, int hidden, int cross)
{
    memset(T, 0, sizeof(*T));
    T->cross = cross;
    char p[200];
    const char *attn = cross ? "cross_attn" : "self_attn";
    T->attn.in_w = bind(b, 2, (int[]){3 * dim, dim}, "%s.%s.in_proj_weight", prefix, attn);
    T->attn.in_b = bind(b, 1, (int[]){3 * dim}, "%s.%s.in_proj_bias", prefix, attn);
    T->attn.out_w = bind(b, 2, (int[]){dim, dim}, "%s.%s.out_proj.weight", prefix, attn);
    T->attn.out_b = bind(b, 1, (int[]){dim}, "%s.%s.out_proj.bias", prefix, attn);
    T->linear1.cout = hidden;
    T->linear1.cin = dim;
    T->linear1.w = bind(b, 2, (int[]){hidden, dim}, "%s.linear1.weight", prefix);
    T->linear1.b = bind(b, 1, (int[]){hidden}, "%s.linear1.bias", prefix);
    T->linear2.cout = dim;
    T->linear2.cin = hidden;
    T->linear2.w = bind(b, 2, (int[]){dim, hidden}, "%s.linear2.weight", prefix);
    T->linear2.b = bind(b, 1, (int[]){dim}, "%s.linear2.bias", prefix);
    snprintf(p, sizeof(p), "%s.norm1", prefix);
    bind_norm(b, &T->norm1, p, dim);
    snprintf(p, sizeof(p), "%s.norm2", prefix);
    bind_norm(b, &T->norm2, p, dim);
    if (cross) {
        snprintf(p, sizeof(p), "%s.norm3", prefix);
        bind_norm(b, &T->norm3, p, dim);
    }
    if (hp->t_norm_first && hp->t_norm_out) {
        snprintf(p, sizeof(p), "%s.norm_out", prefix);
        bind_norm(b, &T->norm_out, p, dim);
    }
    if (hp->t_layer_scale) {
        T->gamma1 = bind(b, 1, (int[]){dim}, "%s.gamma_1.scale", prefix);
        T->gamma2 = bind(b, 1, (int[]){dim}, "%s.gamma_2.scale", prefix);
    }
}

int htd_build(htd_net *net, const htd_hparams *hp, int segment_samples, htd_tensor_fn get, void *ud,
              char *err, size_t errlen)
{
    memset(net, 0, sizeof(*net));
    net->hp = *hp;
    net->segment_samples = segment_samples;
    binder b = {get, ud, err, errlen, 0};
    char p[64];

    int S = hp->n_sources;
    int chin = hp->audio_channels;
    int chin_z = hp->cac ? 2 * chin : chin;
    int chout = hp->channels_time ? hp->channels_time : hp->channels;
    int chout_z = hp->channels;
    int freqs = hp->nfft / 2;
    htd_layer dec[HTD_MAX_DEPTH], tdec[HTD_MAX_DEPTH];
    int n_tdec = 0;

    for (int index = 0; index < hp->depth; index++) {
        int norm = index >= hp->norm_starts;
        int freq = freqs > 1;
        int stri = hp->stride, ker = hp->kernel_size;
        if (!freq) {
            ker = hp->time_stride * 2;
            stri = hp->time_stride;
        }
        int pad = 1, last_freq = 0;
        if (freq && freqs <= hp->kernel_size) {
            ker = freqs;
            pad = 0;
            last_freq = 1;
        }
        if (last_freq) {
            chout_z = chout > chout_z ? chout : chout_z;
            chout = chout_z;
        }
        snprintf(p, sizeof(p), "encoder.%d", index);
        build_enc(&b, &net->encoder[index], p, hp, chin_z, chout_z, ker, stri, freq, 0, pad, norm,
                  hp->dconv_mode & 1, hp->context_enc);
        if (freq) {
            snprintf(p, sizeof(p), "tencoder.%d", net->n_tenc);
            build_enc(&b, &net->tencoder[net->n_tenc], p, hp, chin, chout, hp->kernel_size,
                      hp->stride, 0, last_freq, 1, norm, hp->dconv_mode & 1, hp->context_enc);
            net->n_tenc++;
        }
        if (index == 0) {
            chin = hp->audio_channels * S;
            chin_z = hp->cac ? 2 * chin : chin;
        }
        /* decoder layers are inserted at the front: index i is built now, stored at
         * depth-1-i once the count is known; names follow the final positions. */
        dec[index] = (htd_layer){0};
        dec[index].chin = chout_z; /* remember the arguments, built below */
        dec[index].chout = chin_z;
        dec[index].last = index == 0;
        dec[index].kernel = ker;
        dec[index].stride = stri;
        dec[index].freq = freq;
        dec[index].pad = pad;
        dec[index].norm = norm;
        if (freq) {
            tdec[n_tdec] = (htd_layer){0};
            tdec[n_tdec].chin = chout;
            tdec[n_tdec].chout = chin;
            tdec[n_tdec].empty = last_freq;
            tdec[n_tdec].last = index == 0;
            tdec[n_tdec].norm = norm;
            n_tdec++;
        }
        chin = chout;
        chin_z = chout_z;
        chout = (int)(hp->growth * chout);
        chout_z = (int)(hp->growth * chout_z);
        if (freq) {
            if (freqs <= hp->kernel_size)
                freqs = 1;
            else
                freqs /= hp->stride;
        }
        if (index == 0 && hp->freq_emb != 0) {
            net->freq_emb_rows = freqs;
            net->freq_emb_dim = chin_z;
            net->freq_emb = bind(&b, 2, (int[]){freqs, chin_z}, "freq_emb.embedding.weight");
        }
    }
    net->n_enc = hp->depth;
    for (int index = 0; index < hp->depth; index++) {
        const htd_layer *a = &dec[index];
        int pos = hp->depth - 1 - index;
        snprintf(p, sizeof(p), "decoder.%d", pos);
        build_dec(&b, &net->decoder[pos], p, hp, a->chin, a->chout, a->last, a->kernel, a->stride,
                  a->freq, 0, a->pad, a->norm, hp->dconv_mode & 2, hp->context);
    }
    for (int i = 0; i < n_tdec; i++) {
        const htd_layer *a = &tdec[i];
        int pos = n_tdec - 1 - i;
        snprintf(p, sizeof(p), "tdecoder.%d", pos);
        build_dec(&b, &net->tdecoder[pos], p, hp, a->chin, a->chout, a->last, hp->kernel_size,
                  hp->stride, 0, a->empty, 1, a->norm, hp->dconv_mode & 2, hp->context);
    }

    int tc = (int)(hp->channels * pow(hp->growth, hp->depth - 1));
    if (hp->bottom_channels) {
        int bc = hp->bottom_channels;
        bind_conv(&b, &net->up, "channel_upsampler", bc, tc, 1, 1, 0, 0);
        bind_conv(&b, &net->down, "channel_downsampler", tc, bc, 1, 1, 0, 0);
        bind_conv(&b, &net->up_t, "channel_upsampler_t", bc, tc, 1, 1, 0, 0);
        bind_conv(&b, &net->down_t, "channel_downsampler_t", tc, bc, 1, 1, 0, 0);
        tc = bc;
    }
    if (hp->t_layers > 0 && !b.failed) {
        net->t_dim = tc;
        net->t_hidden = (int)(tc * hp->t_hidden_scale);
        if (hp->t_heads <= 0 || tc % hp->t_heads != 0 || tc % 4 != 0) {
            snprintf(err, errlen,
                     "transformer dimension %d must be a multiple of 4 and of t_heads=%d", tc,
                     hp->t_heads);
            return -1;
        }
        if (hp->t_norm_in) {
            bind_norm(&b, &net->norm_in, "crosstransformer.norm_in", tc);
            bind_norm(&b, &net->norm_in_t, "crosstransformer.norm_in_t", tc);
        }
        int classic_parity = hp->t_cross_first ? 1 : 0;
        for (int i = 0; i < hp->t_layers; i++) {
            int cross = i % 2 != classic_parity;
            snprintf(p, sizeof(p), "crosstransformer.layers.%d", i);
            build_tlayer(&b, &net->layers[i], p, hp, tc, net->t_hidden, cross);
            snprintf(p, sizeof(p), "crosstransformer.layers_t.%d", i);
            build_tlayer(&b, &net->layers_t[i], p, hp, tc, net->t_hidden, cross);
        }
    }
    return b.failed ? -1 : 0;
}

/* ------------------------------------------------------------------------------ */
/* runtime                                                                          */

struct htd_runtime {
    const htd_net *net;
    sep_backend *be;
    arena *ar;
    float *freq_table; /* freq_emb weight * emb_scale, [rows][dim] */
    float *pos2d;      /* [t1 * fr][dim] for (pos2d_fr, pos2d_t1) */
    int pos2d_fr, pos2d_t1;
    float *pos1d; /* [t2][dim] */
    int pos1d_t2;
};

htd_runtime *htd_runtime_create(const htd_net *net, sep_backend *be, char *err, size_t errlen)
{
    htd_runtime *rt = calloc(1, sizeof(*rt));
    if (!rt) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rt->net = net;
    rt->be = be;
    rt->ar = arena_create(be);
    if (!rt->ar) {
        free(rt);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    return rt;
}

void htd_runtime_free(htd_runtime *rt)
{
    if (!rt)
        return;
    if (rt->freq_table)
        rt->be->ops->free(rt->be, rt->freq_table);
    if (rt->pos2d)
        rt->be->ops->free(rt->be, rt->pos2d);
    if (rt->pos1d)
        rt->be->ops->free(rt->be, rt->pos1d);
    arena_destroy(rt->ar);
    free(rt);
}

size_t htd_runtime_workspace_bytes(const htd_runtime *rt)
{
    return arena_capacity(rt->ar);
}

/* ------------------------------------------------------------------------------ */
/* forward                                                                          */

typedef struct {
    float *d;
    int n, c, h, w; /* [n][c][h][w]; 1-D signals have h = 1 */
} tensor;

typedef struct {
    htd_runtime *rt;
    sep_backend *be;
    const sep_backend_ops *op;
    const htd_net *net;
    htd_trace_fn trace;
    void *trace_ud;
    jmp_buf oom;
} fwd;

static size_t numel(tensor t)
{
    return (size_t)t.n * t.c * t.h * t.w;
}

static float *alloc_f(fwd *f, size_t count)
{
    float *p = arena_alloc(f->rt->ar, count);
    if (!p)
        longjmp(f->oom, 1);
    return p;
}

static tensor new_tensor(fwd *f, int n, int c, int h, int w)
{
    tensor t = {NULL, n, c, h, w};
    t.d = alloc_f(f, numel(t));
    return t;
}

static void drop(fwd *f, tensor *t)
{
    if (t->d)
        arena_free(f->rt->ar, t->d);
    t->d = NULL;
}

static void trace4(fwd *f, const char *name, tensor t, int ndim)
{
    if (!f->trace)
        return;
    int shape[4];
    if (ndim == 4) {
        shape[0] = t.n, shape[1] = t.c, shape[2] = t.h, shape[3] = t.w;
    } else { /* 1-D signal [n][c][w] */
        shape[0] = t.n, shape[1] = t.c * t.h, shape[2] = t.w;
    }
    f->op->sync(f->be);
    f->trace(f->trace_ud, name, t.d, ndim, shape);
}

static void tracef(fwd *f, tensor t, int ndim, const char *fmt, ...)
{
    if (!f->trace)
        return;
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    trace4(f, name, t, ndim);
}

/* Convolution with a bound weight: 2-D kernel (kh x kw) over [n][c][h][w], then act. */
static tensor conv_act(fwd *f, const htd_conv *cw, tensor x, int sh, int sw, int dh, int dw,
                       int ph0, int ph1, int pw0, int pw1, int act)
{
    sep_conv2d_desc d = {.n = x.n,
                         .cin = x.c,
                         .h = x.h,
                         .w = x.w,
                         .cout = cw->cout,
                         .kh = cw->kh,
                         .kw = cw->kw,
                         .sh = sh,
                         .sw = sw,
                         .dh = dh,
                         .dw = dw,
                         .ph0 = ph0,
                         .ph1 = ph1,
                         .pw0 = pw0,
                         .pw1 = pw1,
                         .act = act};
    if (sep_conv2d_finish(&d) != 0)
        longjmp(f->oom, 2);
    tensor y = new_tensor(f, x.n, act == SEP_ACT_GLU ? cw->cout / 2 : cw->cout, d.ho, d.wo);
    f->op->conv2d(f->be, &d, y.d, x.d, cw->w, cw->b);
    return y;
}

static tensor conv(fwd *f, const htd_conv *cw, tensor x, int sh, int sw, int dh, int dw, int ph0,
                   int ph1, int pw0, int pw1)
{
    return conv_act(f, cw, x, sh, sw, dh, dw, ph0, ph1, pw0, pw1, SEP_ACT_NONE);
}

static void group_norm(fwd *f, tensor x, const htd_norm *nw, int groups, int act)
{
    f->op->group_norm(f->be, x.d, x.d, nw->w, nw->b, x.n, x.c, x.h * x.w, groups, GN_EPS, act);
}

static tensor glu(fwd *f, tensor x)
{
    tensor y = new_tensor(f, x.n, x.c / 2, x.h, x.w);
    f->op->glu(f->be, y.d, x.d, x.n, y.c, x.h * x.w);
    return y;
}

/* DConv, in place on y [n][c][h][w]: for each layer
 *   y = y + scale * GLU(GN(conv1x1(GELU(GN(conv3(y))))))
 * The reference runs a frequency layer's DConv on y.permute(0, 2, 1, 3).reshape(-1, C, T),
 * i.e. on every frequency row as its own sample. Here the convolutions run along w
 * with kernel (1, 3) on the unpermuted tensor (the same numbers) and the
 * GroupNorm(1)s are taken per row h (group_norm_rows), so no permute is needed. */
static void dconv(fwd *f, const htd_layer *L, tensor y)
{
    if (!L->has_dconv)
        return;
    const htd_dconv *dc = &L->dconv;
    for (int i = 0; i < dc->depth; i++) {
        const htd_dconv_layer *l = &dc->layers[i];
        int d = l->dilation;
        tensor h = conv(f, &l->conv1, y, 1, 1, 1, d, 0, 0, d, d);
        f->op->group_norm_rows(f->be, h.d, h.d, l->norm1.w, l->norm1.b, h.n, h.c, h.h, h.w, GN_EPS,
                               SEP_ACT_GELU);
        if (f->op->dconv_tail &&
            f->op->dconv_tail(f->be, y.d, h.d, l->conv2.w, l->conv2.b, l->norm2.w, l->norm2.b,
                              l->scale, y.n, y.c, h.c, y.h, y.w, GN_EPS)) {
            drop(f, &h);
            continue;
        }
        tensor h2 = conv(f, &l->conv2, h, 1, 1, 1, 1, 0, 0, 0, 0);
        drop(f, &h);
        f->op->dconv_residual(f->be, y.d, h2.d, l->norm2.w, l->norm2.b, l->scale, y.n, y.c, y.h,
                              y.w, GN_EPS);
        drop(f, &h2);
    }
}

/* HEncLayer.forward. x is not consumed. */
static tensor enc_forward(fwd *f, const htd_layer *L, tensor x, const float *inject,
                          size_t inject_count)
{
    tensor y;
    /* GELU fused into the conv when nothing comes between them */
    int act = !L->empty && !inject && !L->norm ? SEP_ACT_GELU : SEP_ACT_NONE;
    if (L->freq) {
        y = conv_act(f, &L->conv, x, L->stride, 1, 1, 1, L->pad, L->pad, 0, 0, act);
    } else {
        /* a 4-D input is viewed (B, C*F, T); the time is padded to a stride multiple */
        tensor v = {x.d, x.n, x.c * x.h, 1, x.w};
        int extra = x.w % L->stride ? L->stride - x.w % L->stride : 0;
        y = conv_act(f, &L->conv, v, 1, L->stride, 1, 1, 0, 0, L->pad, L->pad + extra, act);
    }
    if (L->empty)
        return y;
    if (inject) {
        if (inject_count != numel(y))
            longjmp(f->oom, 3);
        f->op->add(f->be, y.d, y.d, inject, numel(y));
    }
    if (L->norm)
        group_norm(f, y, &L->norm1, f->net->hp.norm_groups, SEP_ACT_GELU);
    else if (act == SEP_ACT_NONE)
        f->op->gelu(f->be, y.d, y.d, numel(y));
    dconv(f, L, y);
    if (!L->has_rewrite)
        return y;
    /* rewrite conv, norm, GLU; the GLU is fused into the conv when there is no norm */
    int c = L->context, ract = L->norm ? SEP_ACT_NONE : SEP_ACT_GLU;
    tensor z = L->freq ? conv_act(f, &L->rewrite, y, 1, 1, 1, 1, c, c, c, c, ract)
                       : conv_act(f, &L->rewrite, y, 1, 1, 1, 1, 0, 0, c, c, ract);
    drop(f, &y);
    if (!L->norm)
        return z;
    group_norm(f, z, &L->norm2, f->net->hp.norm_groups, SEP_ACT_NONE);
    tensor out = glu(f, z);
    drop(f, &z);
    return out;
}

/* HDecLayer.forward: returns z, sets *pre to y (the input of conv_tr). x is consumed
 * (it becomes y, or is freed); skip is not. */
static tensor dec_forward(fwd *f, const htd_layer *L, tensor x, const tensor *skip, int length,
                          tensor *pre)
{
    if (L->freq && x.h == 1 && x.c != L->chin) /* x.view(B, chin, -1, T) */
        x = (tensor){x.d, x.n, L->chin, x.c / L->chin, x.w};
    if (!L->freq && x.h != 1)
        x = (tensor){x.d, x.n, x.c * x.h, 1, x.w};
    tensor y = x;
    if (!L->empty) {
        if (numel(*skip) != numel(x))
            longjmp(f->oom, 3);
        f->op->add(f->be, x.d, x.d, skip->d, numel(x));
        if (L->has_rewrite) {
            int c = L->context, ract = L->norm ? SEP_ACT_NONE : SEP_ACT_GLU;
            tensor r = L->freq ? conv_act(f, &L->rewrite, x, 1, 1, 1, 1, c, c, c, c, ract)
                               : conv_act(f, &L->rewrite, x, 1, 1, 1, 1, 0, 0, c, c, ract);
            drop(f, &x);
            if (L->norm) {
                group_norm(f, r, &L->norm1, f->net->hp.norm_groups, SEP_ACT_NONE);
                y = glu(f, r);
                drop(f, &r);
            } else {
                y = r;
            }
        }
        dconv(f, L, y);
    }
    sep_conv_tr2d_desc d = {.n = y.n,
                            .cin = y.c,
                            .h = y.h,
                            .w = y.w,
                            .cout = L->chout,
                            .kh = L->freq ? L->kernel : 1,
                            .kw = L->freq ? 1 : L->kernel,
                            .sh = L->freq ? L->stride : 1,
                            .sw = L->freq ? 1 : L->stride};
    if (!L->freq) {
        d.cin = y.c * y.h;
        d.h = 1;
    }
    sep_conv_tr2d_finish(&d);
    if (!L->freq && L->pad + length > d.wo)
        longjmp(f->oom, 3);
    /* the part of the output the layer keeps: without the frequency padding's rows, or
     * without the time padding and what lies past `length` */
    int top = L->freq ? L->pad : 0, oh = L->freq ? d.ho - 2 * L->pad : 1;
    int left = L->freq ? 0 : L->pad, ow = L->freq ? d.wo : length;
    tensor out;
    if (!L->norm && f->op->conv_tr2d_window) {
        /* straight from the convolution (a norm takes its statistics over the whole
         * output, so not with one) */
        out = new_tensor(f, y.n, L->chout, oh, ow);
        f->op->conv_tr2d_window(f->be, &d, top, oh, left, ow, out.d, y.d, L->conv.w, L->conv.b);
    } else {
        tensor z = new_tensor(f, y.n, L->chout, d.ho, d.wo);
        f->op->conv_tr2d(f->be, &d, z.d, y.d, L->conv.w, L->conv.b);
        if (L->norm)
            group_norm(f, z, &L->norm2, f->net->hp.norm_groups, SEP_ACT_NONE);
        if (oh == d.ho && ow == d.wo) {
            out = z;
        } else {
            /* whole rows (frequency) or a run of the one row (time): one copy per plane */
            out = new_tensor(f, z.n, z.c, oh, ow);
            f->op->copy_rows(f->be, out.d, (size_t)oh * ow, z.d + (size_t)top * d.wo + left,
                             (size_t)d.ho * d.wo, z.n * z.c, (size_t)oh * ow);
            drop(f, &z);
        }
    }
    if (!L->last)
        f->op->gelu(f->be, out.d, out.d, numel(out));
    *pre = y;
    return out;
}

/* ---- transformer ---- */

static tensor linear_act(fwd *f, tensor x /* [n][rows][in] as (n, rows, 1, in) */, const float *w,
                         const float *b, int out_dim, int act)
{
    tensor y = new_tensor(f, x.n, x.c, 1, out_dim);
    f->op->linear(f->be, y.d, x.d, w, b, x.n, x.c, x.w, out_dim, act);
    return y;
}

static tensor linear(fwd *f, tensor x, const float *w, const float *b, int out_dim)
{
    return linear_act(f, x, w, b, out_dim, SEP_ACT_NONE);
}

static tensor layer_norm(fwd *f, tensor x, const htd_norm *nw)
{
    tensor y = new_tensor(f, x.n, x.c, 1, x.w);
    f->op->layer_norm(f->be, y.d, x.d, nw->w, nw->b, x.n * x.c, x.w, LN_EPS);
    return y;
}

/* nn.MultiheadAttention(q, kv, kv) without mask; q [n][nq][C], kv [n][nk][C]. */
static tensor mha(fwd *f, const htd_attn *a, tensor q, tensor kv, int self)
{
    int C = q.w, heads = f->net->hp.t_heads;
    tensor o = new_tensor(f, q.n, q.c, 1, C);
    sep_attention_desc d = {
        .batch = q.n, .heads = heads, .nq = q.c, .nk = kv.c, .head_dim = C / heads, .ldo = C};
    if (self) {
        tensor qkv = linear(f, q, a->in_w, a->in_b, 3 * C);
        d.ldq = d.ldk = d.ldv = 3 * C;
        f->op->attention(f->be, &d, o.d, qkv.d, qkv.d + C, qkv.d + 2 * C);
        drop(f, &qkv);
    } else {
        tensor qp = linear(f, q, a->in_w, a->in_b, C);
        tensor kvp = linear(f, kv, a->in_w + (size_t)C * C, a->in_b + C, 2 * C);
        d.ldq = C;
        d.ldk = d.ldv = 2 * C;
        f->op->attention(f->be, &d, o.d, qp.d, kvp.d, kvp.d + C);
        drop(f, &kvp);
        drop(f, &qp);
    }
    tensor out = linear(f, o, a->out_w, a->out_b, C);
    drop(f, &o);
    return out;
}

static tensor feed_forward(fwd *f, const htd_tlayer *T, tensor x)
{
    tensor h = linear_act(f, x, T->linear1.w, T->linear1.b, T->linear1.cout,
                          f->net->hp.t_gelu ? SEP_ACT_GELU : SEP_ACT_RELU);
    tensor y = linear(f, h, T->linear2.w, T->linear2.b, T->linear2.cout);
    drop(f, &h);
    return y;
}

static void residual(fwd *f, tensor x, tensor y, const float *gamma)
{
    f->op->add_scaled_last(f->be, x.d, y.d, gamma, x.n * x.c, x.w);
}

static void norm_out(fwd *f, const htd_tlayer *T, tensor x)
{
    if (T->norm_out.w)
        f->op->group_norm_tokens(f->be, x.d, x.d, T->norm_out.w, T->norm_out.b, x.n, x.c, x.w,
                                 GN_EPS);
}

/* MyTransformerEncoderLayer (self) or CrossTransformerEncoderLayer (cross): returns
 * the new token tensor; x and k are not consumed. */
static tensor tlayer_forward(fwd *f, const htd_tlayer *T, tensor x, tensor k)
{
    tensor out = new_tensor(f, x.n, x.c, 1, x.w);
    f->op->copy_rows(f->be, out.d, 0, x.d, 0, 1, numel(x));
    if (f->net->hp.t_norm_first) {
        tensor hq = layer_norm(f, x, &T->norm1);
        tensor a;
        if (T->cross) {
            tensor hk = layer_norm(f, k, &T->norm2);
            a = mha(f, &T->attn, hq, hk, 0);
            drop(f, &hk);
        } else {
            a = mha(f, &T->attn, hq, hq, 1);
        }
        drop(f, &hq);
        residual(f, out, a, T->gamma1);
        drop(f, &a);
        tensor h = layer_norm(f, out, T->cross ? &T->norm3 : &T->norm2);
        tensor ff = feed_forward(f, T, h);
        drop(f, &h);
        residual(f, out, ff, T->gamma2);
        drop(f, &ff);
        norm_out(f, T, out);
    } else {
        tensor a = T->cross ? mha(f, &T->attn, x, k, 0) : mha(f, &T->attn, x, x, 1);
        residual(f, out, a, T->gamma1);
        drop(f, &a);
        f->op->layer_norm(f->be, out.d, out.d, T->norm1.w, T->norm1.b, out.n * out.c, out.w,
                          LN_EPS);
        tensor ff = feed_forward(f, T, out);
        residual(f, out, ff, T->gamma2);
        drop(f, &ff);
        f->op->layer_norm(f->be, out.d, out.d, T->norm2.w, T->norm2.b, out.n * out.c, out.w,
                          LN_EPS);
    }
    return out;
}

/* create_2d_sin_embedding(C, Fr, T1) rearranged "b c fr t1 -> b (t1 fr) c", computed
 * in float like the reference. */
static void sin_embedding_2d(float *table, int C, int Fr, int T1, double max_period)
{
    int half = C / 2;
    float coef = (float)(-(log(max_period) / half));
    for (int t1 = 0; t1 < T1; t1++) {
        for (int fr = 0; fr < Fr; fr++) {
            float *row = table + ((size_t)t1 * Fr + fr) * C;
            for (int i = 0; i < half / 2; i++) {
                float div = expf((float)(2 * i) * coef);
                float pw = (float)t1 * div, ph = (float)fr * div;
                row[2 * i] = sinf(pw);
                row[2 * i + 1] = cosf(pw);
                row[half + 2 * i] = sinf(ph);
                row[half + 2 * i + 1] = cosf(ph);
            }
        }
    }
}

/* create_sin_embedding(T, C) (or the CAPE variant at inference: positions centred
 * on their mean), as [t][c]. */
static void sin_embedding_1d(float *table, int T, int C, double max_period, int cape,
                             int cape_mean_normalize)
{
    int half = C / 2;
    float shift = cape && cape_mean_normalize ? (float)(T - 1) / 2.0f : 0.0f;
    for (int t = 0; t < T; t++) {
        float pos = (float)t - shift;
        for (int i = 0; i < half; i++) {
            float e = (float)i / (float)(half - 1);
            float phase = pos / powf((float)max_period, e);
            table[(size_t)t * C + i] = cosf(phase);
            table[(size_t)t * C + half + i] = sinf(phase);
        }
    }
}

static const float *pos_table_2d(fwd *f, int C, int Fr, int T1)
{
    htd_runtime *rt = f->rt;
    if (rt->pos2d && rt->pos2d_fr == Fr && rt->pos2d_t1 == T1)
        return rt->pos2d;
    if (rt->pos2d)
        f->op->free(f->be, rt->pos2d);
    size_t n = (size_t)C * Fr * T1;
    float *host = malloc(n * sizeof(float));
    rt->pos2d = f->op->alloc(f->be, n * sizeof(float));
    if (!host || !rt->pos2d) {
        free(host);
        longjmp(f->oom, 1);
    }
    sin_embedding_2d(host, C, Fr, T1, f->net->hp.t_max_period);
    f->op->upload(f->be, rt->pos2d, host, n * sizeof(float));
    free(host);
    rt->pos2d_fr = Fr;
    rt->pos2d_t1 = T1;
    return rt->pos2d;
}

static const float *pos_table_1d(fwd *f, int C, int T2)
{
    htd_runtime *rt = f->rt;
    if (rt->pos1d && rt->pos1d_t2 == T2)
        return rt->pos1d;
    if (rt->pos1d)
        f->op->free(f->be, rt->pos1d);
    size_t n = (size_t)C * T2;
    float *host = malloc(n * sizeof(float));
    rt->pos1d = f->op->alloc(f->be, n * sizeof(float));
    if (!host || !rt->pos1d) {
        free(host);
        longjmp(f->oom, 1);
    }
    const htd_hparams *hp = &f->net->hp;
    sin_embedding_1d(host, T2, C, hp->t_max_period, strcmp(hp->t_emb, "cape") == 0,
                     hp->t_cape_mean_normalize);
    f->op->upload(f->be, rt->pos1d, host, n * sizeof(float));
    free(host);
    rt->pos1d_t2 = T2;
    return rt->pos1d;
}

/* CrossTransformerEncoder.forward: x [n][C][Fr][T1], xt [n][C][1][T2] -> same shapes
 * (new tensors; the inputs are not consumed). */
static void transformer_forward(fwd *f, tensor x, tensor xt, tensor *xo, tensor *xto)
{
    const htd_net *net = f->net;
    const htd_hparams *hp = &net->hp;
    int C = x.c, Fr = x.h, T1 = x.w, T2 = xt.w;
    float wpe = (float)hp->t_weight_pos_embed;

    tensor X = new_tensor(f, x.n, T1 * Fr, 1, C);
    f->op->permute4(f->be, X.d, x.d, (int[]){x.n, C, Fr, T1}, (int[]){0, 3, 2, 1});
    if (hp->t_norm_in)
        f->op->layer_norm(f->be, X.d, X.d, net->norm_in.w, net->norm_in.b, X.n * X.c, C, LN_EPS);
    f->op->add_table(f->be, X.d, pos_table_2d(f, C, Fr, T1), wpe, X.n, X.c * C);

    tensor XT = new_tensor(f, xt.n, T2, 1, C);
    f->op->permute4(f->be, XT.d, xt.d, (int[]){xt.n, C, 1, T2}, (int[]){0, 3, 2, 1});
    if (hp->t_norm_in)
        f->op->layer_norm(f->be, XT.d, XT.d, net->norm_in_t.w, net->norm_in_t.b, XT.n * XT.c, C,
                          LN_EPS);
    f->op->add_table(f->be, XT.d, pos_table_1d(f, C, T2), wpe, XT.n, XT.c * C);

    for (int i = 0; i < hp->t_layers; i++) {
        tensor Xn = tlayer_forward(f, &net->layers[i], X, XT);
        tensor XTn = tlayer_forward(f, &net->layers_t[i], XT, X);
        drop(f, &X);
        drop(f, &XT);
        X = Xn;
        XT = XTn;
        tracef(f, (tensor){X.d, X.n, X.c, 1, X.w}, 3, "crosstransformer.layers.%d", i);
        tracef(f, (tensor){XT.d, XT.n, XT.c, 1, XT.w}, 3, "crosstransformer.layers.%d_t", i);
    }
    *xo = new_tensor(f, x.n, C, Fr, T1);
    f->op->permute4(f->be, xo->d, X.d, (int[]){x.n, T1, Fr, C}, (int[]){0, 3, 2, 1});
    *xto = new_tensor(f, xt.n, C, 1, T2);
    f->op->permute4(f->be, xto->d, XT.d, (int[]){xt.n, T2, 1, C}, (int[]){0, 3, 2, 1});
    drop(f, &X);
    drop(f, &XT);
}

static tensor conv1x1(fwd *f, const htd_conv *cw, tensor x)
{
    tensor v = {x.d, x.n, x.c, 1, x.h * x.w};
    tensor y = conv(f, cw, v, 1, 1, 1, 1, 0, 0, 0, 0);
    y.h = x.h;
    y.w = x.w;
    return y;
}

static void forward_body(fwd *f, const float *mix, int B, int length, float *out)
{
    const htd_net *net = f->net;
    const htd_hparams *hp = &net->hp;
    const sep_backend_ops *op = f->op;
    int C = hp->audio_channels, S = hp->n_sources;
    int TL = hp->use_train_segment ? net->segment_samples : length;

    /* zero-pad a shorter input to the training length (F.pad(mix, (0, pad))) */
    tensor mixp = new_tensor(f, B, C, 1, TL);
    if (length < TL)
        op->zero(f->be, mixp.d, numel(mixp));
    op->copy_rows(f->be, mixp.d, (size_t)TL, mix, (size_t)length, B * C, (size_t)length);

    int nfft = hp->nfft, hop = nfft / 4, F = nfft / 2;
    int T = (TL + hop - 1) / hop;
    tensor x = new_tensor(f, B, 2 * C, F, T);
    op->spec(f->be, x.d, mixp.d, B * C, TL, nfft);
    trace4(f, "spec", x, 4);

    float *stats = alloc_f(f, 4 * (size_t)B);
    float *mean = stats, *std = stats + B, *meant = stats + 2 * B, *stdt = stats + 3 * B;
    int per = (int)(numel(x) / B);
    op->moments(f->be, mean, std, x.d, B, per);
    op->normalize(f->be, x.d, x.d, mean, std, B, per, NORM_EPS);
    tensor xt = new_tensor(f, B, C, 1, TL);
    op->moments(f->be, meant, stdt, mixp.d, B, C * TL);
    op->normalize(f->be, xt.d, mixp.d, meant, stdt, B, C * TL, NORM_EPS);
    drop(f, &mixp);

    tensor saved[HTD_MAX_DEPTH], saved_t[HTD_MAX_DEPTH];
    int lengths[HTD_MAX_DEPTH], lengths_t[HTD_MAX_DEPTH];
    int n_saved = 0, n_saved_t = 0, n_len = 0, n_len_t = 0;
    int xt_saved = 0; /* is xt one of saved_t (kept for a skip)? */
    for (int idx = 0; idx < net->n_enc; idx++) {
        lengths[n_len++] = x.w;
        const float *inject = NULL;
        size_t inject_count = 0;
        if (idx < net->n_tenc) {
            lengths_t[n_len_t++] = xt.w;
            const htd_layer *tenc = &net->tencoder[idx];
            tensor nxt = enc_forward(f, tenc, xt, NULL, 0);
            if (!xt_saved)
                drop(f, &xt);
            xt = nxt;
            tracef(f, xt, 3, "tencoder.%d", idx);
            if (!tenc->empty) {
                saved_t[n_saved_t++] = xt;
                xt_saved = 1;
            } else {
                inject = xt.d;
                inject_count = numel(xt);
                xt_saved = 0;
            }
        }
        tensor nx = enc_forward(f, &net->encoder[idx], x, inject, inject_count);
        if (idx == 0)
            drop(f, &x); /* the normalised spectrogram; later inputs are skips */
        x = nx;
        tracef(f, x, net->encoder[idx].freq ? 4 : 3, "encoder.%d", idx);
        if (idx == 0 && net->freq_emb) {
            if (f->trace) {
                int shape[2] = {net->freq_emb_rows, net->freq_emb_dim};
                f->trace(f->trace_ud, "freq_emb", f->rt->freq_table, 2, shape);
            }
            op->add_freq_table(f->be, x.d, f->rt->freq_table, (float)hp->freq_emb, x.n, x.c, x.h,
                               x.w);
            trace4(f, "freq_emb.added", x, 4);
        }
        saved[n_saved++] = x;
    }

    /* the bottom of the U: the transformer between the two branches */
    tensor xb = x; /* aliases saved[top] until replaced */
    if (net->hp.t_layers > 0) {
        tensor xin = xb, xtin = xt;
        if (hp->bottom_channels) {
            xin = conv1x1(f, &net->up, xb);
            trace4(f, "channel_upsampler", (tensor){xin.d, xin.n, xin.c, 1, xin.h * xin.w}, 3);
            xtin = conv1x1(f, &net->up_t, xt);
            trace4(f, "channel_upsampler_t", xtin, 3);
        }
        trace4(f, "crosstransformer.in", xin, 4);
        trace4(f, "crosstransformer.in_t", xtin, 3);
        tensor xo, xto;
        transformer_forward(f, xin, xtin, &xo, &xto);
        trace4(f, "crosstransformer.out", xo, 4);
        trace4(f, "crosstransformer.out_t", xto, 3);
        if (hp->bottom_channels) {
            drop(f, &xin);
            drop(f, &xtin);
            tensor d1 = conv1x1(f, &net->down, xo);
            trace4(f, "channel_downsampler", (tensor){d1.d, d1.n, d1.c, 1, d1.h * d1.w}, 3);
            tensor d2 = conv1x1(f, &net->down_t, xto);
            trace4(f, "channel_downsampler_t", d2, 3);
            drop(f, &xo);
            drop(f, &xto);
            xo = d1;
            xto = d2;
        }
        xb = xo;
        if (!xt_saved)
            drop(f, &xt);
        xt = xto;
        xt_saved = 0;
    } else {
        /* no transformer: the decoder adds the same tensor as its skip (x + x) */
        tensor copy = new_tensor(f, xb.n, xb.c, xb.h, xb.w);
        op->copy_rows(f->be, copy.d, 0, xb.d, 0, 1, numel(xb));
        xb = copy;
        if (xt_saved) {
            tensor tcopy = new_tensor(f, xt.n, xt.c, xt.h, xt.w);
            op->copy_rows(f->be, tcopy.d, 0, xt.d, 0, 1, numel(xt));
            xt = tcopy;
            xt_saved = 0;
        }
    }
    x = xb;

    int offset = net->n_enc - net->n_tenc;
    for (int idx = 0; idx < net->n_enc; idx++) {
        tensor skip = saved[--n_saved];
        tensor pre;
        tensor z = dec_forward(f, &net->decoder[idx], x, &skip, lengths[--n_len], &pre);
        drop(f, &skip);
        tracef(f, z, net->decoder[idx].freq ? 4 : 3, "decoder.%d", idx);
        if (idx >= offset) {
            const htd_layer *tdec = &net->tdecoder[idx - offset];
            int length_t = lengths_t[--n_len_t];
            tensor nxt, tpre;
            if (tdec->empty) {
                if (pre.h != 1)
                    longjmp(f->oom, 3);
                nxt = dec_forward(f, tdec, pre, NULL, length_t, &tpre);
                pre = (tensor){0};
                if (!xt_saved)
                    drop(f, &xt);
            } else {
                tensor skip_t = saved_t[--n_saved_t];
                if (xt_saved)
                    longjmp(f->oom, 3);
                nxt = dec_forward(f, tdec, xt, &skip_t, length_t, &tpre);
                drop(f, &skip_t);
            }
            drop(f, &tpre);
            xt = nxt;
            xt_saved = 0;
            tracef(f, xt, 3, "tdecoder.%d", idx - offset);
        }
        drop(f, &pre);
        x = z;
    }

    /* x: [B][S * 2C][F][T] -> denormalise, iSTFT; xt: [B][S * C][TL] */
    op->denormalize(f->be, x.d, x.d, mean, std, B, (int)(numel(x) / B));
    tensor xs = new_tensor(f, B, S * C, 1, TL);
    op->ispec(f->be, xs.d, x.d, B * S * C, T, TL, nfft);
    drop(f, &x);
    op->denormalize(f->be, xt.d, xt.d, meant, stdt, B, S * C * TL);
    op->add(f->be, xt.d, xt.d, xs.d, numel(xt));
    drop(f, &xs);
    op->copy_rows(f->be, out, (size_t)length, xt.d, (size_t)TL, B * S * C, (size_t)length);
    if (f->trace) {
        int shape[4] = {B, S, C, length};
        op->sync(f->be);
        f->trace(f->trace_ud, "output", out, 4, shape);
    }
    drop(f, &xt);
}

static int ensure_freq_table(htd_runtime *rt)
{
    const htd_net *net = rt->net;
    if (!net->freq_emb || rt->freq_table)
        return 0;
    size_t n = (size_t)net->freq_emb_rows * net->freq_emb_dim;
    float *host = malloc(n * sizeof(float));
    rt->freq_table = rt->be->ops->alloc(rt->be, n * sizeof(float));
    if (!host || !rt->freq_table) {
        free(host);
        return -1;
    }
    /* ScaledEmbedding.forward: embedding(x) * scale; the weights live on the device,
     * so the scaled table is computed from a download of them. */
    rt->be->ops->download(rt->be, host, net->freq_emb, n * sizeof(float));
    float scale = (float)net->hp.emb_scale;
    for (size_t i = 0; i < n; i++)
        host[i] = host[i] * scale;
    rt->be->ops->upload(rt->be, rt->freq_table, host, n * sizeof(float));
    free(host);
    return 0;
}

int htd_forward(htd_runtime *rt, const float *mix, int batch, int length, float *out,
                htd_trace_fn trace, void *trace_ud, char *err, size_t errlen)
{
    const htd_net *net = rt->net;
    if (batch < 1 || length < 1) {
        snprintf(err, errlen, "forward: batch %d, length %d", batch, length);
        return -1;
    }
    if (net->hp.use_train_segment && length > net->segment_samples) {
        snprintf(err, errlen, "forward: length %d is longer than the training length %d", length,
                 net->segment_samples);
        return -1;
    }
    if (ensure_freq_table(rt)) {
        snprintf(err, errlen, "forward: out of memory");
        return -1;
    }
    fwd *f = calloc(1, sizeof(*f));
    if (!f) {
        snprintf(err, errlen, "forward: out of memory");
        return -1;
    }
    f->rt = rt;
    f->be = rt->be;
    f->op = rt->be->ops;
    f->net = net;
    f->trace = trace;
    f->trace_ud = trace_ud;
    int rc = 0;
    int why = setjmp(f->oom);
    if (why == 0) {
        forward_body(f, mix, batch, length, out);
        f->op->sync(f->be);
    } else {
        if (why == 1)
            snprintf(err, errlen, "forward: out of %s memory (batch %d)", rt->be->name, batch);
        else if (why == 2)
            snprintf(err, errlen, "forward: input of %d samples is too short for the network",
                     length);
        else
            snprintf(err, errlen, "forward: inconsistent shapes inside the network");
        rc = -1;
    }
    free(f);
    arena_reset(rt->ar);
    arena_compact(rt->ar);
    return rc;
}
