/*
 * model.c - loading a weights file (models/FORMAT.md) into a sep_model.
 *
 * The file is mmap'd (safetensors.c); its metadata gives the sources, sample rate,
 * segment and, per network of the bag, the HTDemucs kwargs. Each network's structure
 * is built against the mapped tensors, which checks every tensor's presence and
 * shape (the error names the tensor); a tensor the structure does not use is an
 * error too, since it means the file and the hyperparameters disagree.
 *
 * Nothing the metadata says is trusted: integers are range-checked before any cast,
 * source names (they become stem file names) must match [A-Za-z0-9_-]{1,31} and be
 * distinct, the JSON values refuse duplicate keys, and htd_parse_hparams validates
 * each network's description before a structure is built.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/model_internal.h"

const st_tensor *sep_model_tensor(const sep_model *m, int model_index, const char *name, int ndim,
                                  const int *shape, char *err, size_t errlen)
{
    char full[320];
    snprintf(full, sizeof(full), "%d.%s", model_index, name);
    st_tensor *t = st_find(&m->file, full);
    if (!t) {
        snprintf(err, errlen, "missing tensor %s", full);
        return NULL;
    }
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        ok = t->shape[i] == shape[i];
    if (!ok) {
        char want[128] = "", have[128] = "";
        for (int i = 0; i < ndim; i++)
            snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%d", i ? ", " : "",
                     shape[i]);
        for (int i = 0; i < t->ndim; i++)
            snprintf(have + strlen(have), sizeof(have) - strlen(have), "%s%lld", i ? ", " : "",
                     (long long)t->shape[i]);
        snprintf(err, errlen, "tensor %s has shape [%s], the hyperparameters need [%s]", full, have,
                 want);
        return NULL;
    }
    t->used = 1;
    return t;
}

typedef struct {
    const sep_model *m;
    int index;
} host_binding;

static const float *host_tensor(void *ud, const char *name, int ndim, const int *shape, char *err,
                                size_t errlen)
{
    host_binding *hb = ud;
    const st_tensor *t = sep_model_tensor(hb->m, hb->index, name, ndim, shape, err, errlen);
    return t ? t->data : NULL;
}

/* A decimal integer in [lo, hi], checked before the cast. */
static int meta_int(const st_file *f, const char *key, int lo, int hi, int *out, char *err,
                    size_t errlen)
{
    const char *v = st_meta(f, key);
    char *end = NULL;
    errno = 0;
    long long x = v ? strtoll(v, &end, 10) : 0;
    if (!v || end == v || *end) {
        snprintf(err, errlen, "metadata \"%s\" %s", key, v ? "is not an integer" : "is missing");
        return -1;
    }
    if (errno == ERANGE || x < lo || x > hi) {
        snprintf(err, errlen, "metadata \"%s\" = %.40s: must be an integer in [%d, %d]", key, v, lo,
                 hi);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* `s` for a message: printable ASCII kept (quotes and backslashes escaped), the rest
 * as \xHH, cut at 48 characters. */
static void quote_name(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; s[i] && o + 5 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 48) {
            o += (size_t)snprintf(out + o, outlen - o, "...");
            break;
        }
        if (c == '"' || c == '\\')
            o += (size_t)snprintf(out + o, outlen - o, "\\%c", c);
        else if (c < 0x20 || c > 0x7e)
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    out[o < outlen ? o : outlen - 1] = '\0';
}

int sep_check_source_name(const char *name, char *err, size_t errlen)
{
    size_t n = strlen(name);
    int ok = n >= 1 && n <= SEP_SOURCE_NAME_MAX;
    for (size_t i = 0; ok && i < n; i++) {
        char c = name[i];
        ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '-';
    }
    if (!ok) {
        char q[256];
        quote_name(name, q, sizeof(q));
        snprintf(err, errlen, "source name \"%s\": must match [A-Za-z0-9_-]{1,%d}", q,
                 SEP_SOURCE_NAME_MAX);
        return -1;
    }
    return 0;
}

static json_t *meta_json(const st_file *f, const char *key, char *err, size_t errlen)
{
    const char *v = st_meta(f, key);
    if (!v) {
        snprintf(err, errlen, "metadata \"%s\" is missing", key);
        return NULL;
    }
    json_error_t jerr;
    json_t *j = json_loads(v, JSON_REJECT_DUPLICATES, &jerr);
    if (!j)
        snprintf(err, errlen, "metadata \"%s\": %s", key, jerr.text);
    return j;
}

static int load_info(sep_model *m, char *err, size_t errlen)
{
    const st_file *f = &m->file;
    sep_model_info *info = &m->info;
    const char *format = st_meta(f, "format");
    if (!format || strcmp(format, "sep-demucs/1") != 0) {
        snprintf(err, errlen, "metadata \"format\" is %s%s%s, expected sep-demucs/1",
                 format ? "\"" : "", format ? format : "missing", format ? "\"" : "");
        return -1;
    }
    const char *name = st_meta(f, "name");
    snprintf(info->name, sizeof(info->name), "%s", name ? name : "");
    if (meta_int(f, "samplerate", 1, HTD_MAX_SAMPLERATE, &info->samplerate, err, errlen) ||
        meta_int(f, "audio_channels", 1, HTD_MAX_AUDIO_CHANNELS, &info->audio_channels, err,
                 errlen) ||
        meta_int(f, "segment_samples", 1, SEP_MAX_SEGMENT_SAMPLES, &info->segment_samples, err,
                 errlen))
        return -1;
    /* "segment" (seconds) must say what segment_samples says: the samples a forward pass
     * takes are bounded by the segment the network was trained on, not by the cap alone */
    const char *seg = st_meta(f, "segment");
    char *seg_end = NULL;
    info->segment_seconds = seg ? strtod(seg, &seg_end) : NAN;
    double expect = info->segment_seconds * info->samplerate;
    if (!seg || seg_end == seg || *seg_end || !isfinite(info->segment_seconds) ||
        info->segment_seconds <= 0 || fabs(expect - info->segment_samples) > 1.0) {
        snprintf(err, errlen,
                 "metadata \"segment\" = %s: must be a number of seconds > 0 with segment x "
                 "samplerate = segment_samples (%d at %d Hz)",
                 seg ? seg : "missing", info->segment_samples, info->samplerate);
        return -1;
    }
    if (info->segment_samples <= 0 || info->samplerate <= 0 || info->audio_channels <= 0) {
        snprintf(err, errlen, "metadata: bad samplerate/audio_channels/segment_samples");
        return -1;
    }

    json_t *src = meta_json(f, "sources", err, errlen);
    if (!src)
        return -1;
    if (!json_is_array(src) || json_array_size(src) == 0 ||
        json_array_size(src) > SEP_MAX_SOURCES) {
        snprintf(err, errlen, "metadata \"sources\": expected 1..%d names", SEP_MAX_SOURCES);
        json_decref(src);
        return -1;
    }
    info->n_sources = (int)json_array_size(src);
    for (int i = 0; i < info->n_sources; i++) {
        json_t *s = json_array_get(src, (size_t)i);
        char sub[320];
        if (!json_is_string(s)) {
            snprintf(err, errlen, "metadata \"sources\": entry %d is not a string", i);
            json_decref(src);
            return -1;
        }
        if (sep_check_source_name(json_string_value(s), sub, sizeof(sub))) {
            snprintf(err, errlen, "metadata \"sources\": %s", sub);
            json_decref(src);
            return -1;
        }
        snprintf(info->sources[i], sizeof(info->sources[i]), "%s", json_string_value(s));
        for (int k = 0; k < i; k++)
            if (strcmp(info->sources[k], info->sources[i]) == 0) {
                snprintf(err, errlen,
                         "metadata \"sources\": source name \"%s\" appears twice: names must be "
                         "distinct",
                         info->sources[i]);
                json_decref(src);
                return -1;
            }
    }
    json_decref(src);

    json_t *models = meta_json(f, "models", err, errlen);
    if (!models)
        return -1;
    int rc = 0;
    if (!json_is_array(models) || json_array_size(models) == 0 ||
        json_array_size(models) > SEP_MAX_BAG) {
        snprintf(err, errlen, "metadata \"models\": expected 1..%d networks", SEP_MAX_BAG);
        rc = -1;
    }
    info->n_models = rc ? 0 : (int)json_array_size(models);
    for (int i = 0; rc == 0 && i < info->n_models; i++) {
        json_t *mo = json_array_get(models, (size_t)i);
        json_t *klass = json_object_get(mo, "class");
        json_t *kwargs = json_object_get(mo, "kwargs");
        json_t *sig = json_object_get(mo, "signature");
        snprintf(m->signature[i], sizeof(m->signature[i]), "%s",
                 json_is_string(sig) ? json_string_value(sig) : "");
        if (!json_is_string(klass) || strcmp(json_string_value(klass), "HTDemucs") != 0) {
            snprintf(err, errlen, "network %d: class %s is not supported (HTDemucs only)", i,
                     json_is_string(klass) ? json_string_value(klass) : "(missing)");
            rc = -1;
            break;
        }
        if (!json_is_object(kwargs)) {
            snprintf(err, errlen, "network %d: kwargs missing", i);
            rc = -1;
            break;
        }
        char *text = json_dumps(kwargs, JSON_COMPACT);
        htd_hparams hp;
        char sub[400];
        rc = htd_parse_hparams(&hp, text, info->n_sources, sub, sizeof(sub));
        free(text);
        if (rc) {
            snprintf(err, errlen, "network %d: %s", i, sub);
            break;
        }
        if (info->segment_samples < hp.nfft) {
            snprintf(err, errlen,
                     "metadata \"segment_samples\" = %d: must be at least network %d's nfft (%d)",
                     info->segment_samples, i, hp.nfft);
            rc = -1;
            break;
        }
        if (hp.audio_channels != info->audio_channels || hp.samplerate != info->samplerate) {
            snprintf(err, errlen, "network %d: audio_channels/samplerate differ from the file's",
                     i);
            rc = -1;
            break;
        }
        host_binding hb = {m, i};
        if (htd_build(&m->net[i], &hp, info->segment_samples, host_tensor, &hb, sub, sizeof(sub))) {
            snprintf(err, errlen, "network %d: %s", i, sub);
            rc = -1;
            break;
        }
    }
    json_decref(models);
    if (rc)
        return -1;

    /* bag weights: [n_models][n_sources], all 1 when absent */
    for (int i = 0; i < info->n_models; i++)
        for (int s = 0; s < info->n_sources; s++)
            info->bag_weights[i][s] = 1.0f;
    if (st_meta(f, "weights")) {
        json_t *w = meta_json(f, "weights", err, errlen);
        if (!w)
            return -1;
        int ok = json_is_array(w) && (int)json_array_size(w) == info->n_models;
        for (int i = 0; ok && i < info->n_models; i++) {
            json_t *row = json_array_get(w, (size_t)i);
            ok = json_is_array(row) && (int)json_array_size(row) == info->n_sources;
            for (int s = 0; ok && s < info->n_sources; s++) {
                double v;
                json_t *x = json_array_get(row, (size_t)s);
                ok = json_is_number(x);
                v = ok ? json_number_value(x) : 0;
                ok = ok && isfinite(v) && fabs(v) <= 1e6;
                info->bag_weights[i][s] = (float)v;
            }
        }
        json_decref(w);
        if (!ok) {
            snprintf(err, errlen, "metadata \"weights\": expected [%d][%d] finite numbers",
                     info->n_models, info->n_sources);
            return -1;
        }
    }
    for (int i = 0; i < f->n_tensors; i++) {
        if (!f->tensors[i].used) {
            snprintf(err, errlen,
                     "unexpected tensor %s (not part of the network the "
                     "hyperparameters describe)",
                     f->tensors[i].name);
            return -1;
        }
    }
    return 0;
}

sep_model *sep_model_load(const char *path, char *err, size_t errlen)
{
    sep_model *m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (st_open(&m->file, path, err, errlen)) {
        free(m);
        return NULL;
    }
    char sub[512];
    if (load_info(m, sub, sizeof(sub))) {
        snprintf(err, errlen, "%s: %s", path, sub);
        sep_model_free(m);
        return NULL;
    }
    return m;
}

const sep_model_info *sep_model_get_info(const sep_model *m)
{
    return &m->info;
}

int sep_model_source_index(const sep_model *m, const char *name)
{
    for (int i = 0; i < m->info.n_sources; i++)
        if (strcmp(m->info.sources[i], name) == 0)
            return i;
    return -1;
}

size_t sep_model_param_count(const sep_model *m, int model_index)
{
    char prefix[16];
    int pl = snprintf(prefix, sizeof(prefix), "%d.", model_index);
    size_t total = 0;
    for (int i = 0; i < m->file.n_tensors; i++)
        if (strncmp(m->file.tensors[i].name, prefix, (size_t)pl) == 0)
            total += m->file.tensors[i].count;
    return total;
}

void sep_model_print(const sep_model *m, FILE *out)
{
    const sep_model_info *info = &m->info;
    fprintf(out, "model %s: %d sources (", info->name, info->n_sources);
    for (int i = 0; i < info->n_sources; i++)
        fprintf(out, "%s%s", i ? ", " : "", info->sources[i]);
    fprintf(out, "), %d Hz, %d channels, segment %.4g s = %d samples, %d network%s\n",
            info->samplerate, info->audio_channels, info->segment_seconds, info->segment_samples,
            info->n_models, info->n_models > 1 ? "s" : "");
    for (int i = 0; i < info->n_models; i++) {
        fprintf(out, "  network %d (%s): %zu parameters, bag weights [", i, m->signature[i],
                sep_model_param_count(m, i));
        for (int s = 0; s < info->n_sources; s++)
            fprintf(out, "%s%g", s ? ", " : "", info->bag_weights[i][s]);
        fprintf(out, "]\n");
        htd_print_hparams(&m->net[i].hp, out);
    }
}

void sep_model_free(sep_model *m)
{
    if (!m)
        return;
    st_close(&m->file);
    free(m);
}
