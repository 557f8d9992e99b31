/*
 * engine_test.c - the engine API around the network: loading, failure messages and
 * forward-pass arguments.
 *
 *   engine_test WEIGHTS.safetensors     (a small fixture from tests/fixtures/)
 *
 * Writes altered copies of the fixture (a tensor removed, hyperparameters that no
 * longer match the tensors, an option the engine does not implement, a tensor the
 * network does not use, a wrong format tag, a truncated file) and checks that
 * sep_model_load refuses each with a message naming the culprit. Untrusted files
 * (issue 17): unsafe or duplicate source names, hyperparameters out of range or
 * inconsistent (zero strides, overflowing channel progressions, norm_groups that
 * do not divide), data misaligned from the file start, overflowing shapes,
 * overlapping/aliased/holey tensor ranges, duplicate JSON keys, out-of-range integer
 * metadata: each refused naming the field, its value and the rule. Then checks the
 * model information, the engine's argument checks, and that a batch larger than
 * max_batch (split internally) gives the same bits as single runs.
 * Prints PASS/FAIL per check; exits non-zero when any failed.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "models/cpu_kernels.h"
#include "models/engine.h"

static int failures, checks;

static void check(int ok, const char *what, const char *detail)
{
    printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", what, detail ? ": " : "", detail ? detail : "");
    checks++;
    if (!ok)
        failures++;
}

typedef struct {
    unsigned char *bytes;
    size_t size;
    size_t hlen;
} blob;

static int read_file(const char *path, blob *b)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    fseek(f, 0, SEEK_END);
    b->size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    b->bytes = malloc(b->size);
    if (!b->bytes || fread(b->bytes, 1, b->size, f) != b->size) {
        fclose(f);
        return -1;
    }
    fclose(f);
    b->hlen = 0;
    for (int i = 7; i >= 0; i--)
        b->hlen = (b->hlen << 8) | b->bytes[i];
    return 0;
}

/* Writes 8-byte length + header text (padded with spaces to `hlen` bytes) + data to a
 * temporary file. Returns the path (static buffer) or NULL. */
static const char *write_raw(const char *text, size_t hlen, const unsigned char *data,
                             size_t data_len)
{
    static char path[] = "/tmp/sep-engine-test-XXXXXX";
    strcpy(path, "/tmp/sep-engine-test-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    size_t n = strlen(text);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(hlen >> (8 * i));
    int ok = n <= hlen && write(fd, len, 8) == 8 && write(fd, text, n) == (ssize_t)n;
    for (size_t i = n; ok && i < hlen; i++)
        ok = write(fd, " ", 1) == 1;
    ok = ok && (data_len == 0 || write(fd, data, data_len) == (ssize_t)data_len);
    close(fd);
    return ok ? path : NULL;
}

/* A copy of the fixture with header `h` whose tensors' data_offsets still point into
 * the original data: each tensor's bytes are copied, back to back, and its offsets
 * rewritten (so a removed or added tensor leaves a well-formed file). The data is
 * cut to `keep` bytes when keep != (size_t)-1. The header is padded to a multiple of
 * 8 (aligned data). Returns the path (static buffer). */
static const char *write_variant(const blob *b, json_t *h, size_t keep)
{
    const unsigned char *orig = b->bytes + 8 + b->hlen;
    size_t cap = b->size * 2, pos = 0;
    unsigned char *data = malloc(cap);
    const char *key;
    json_t *v;
    json_object_foreach(h, key, v)
    {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        json_t *offs = json_object_get(v, "data_offsets");
        size_t begin = (size_t)json_integer_value(json_array_get(offs, 0));
        size_t end = (size_t)json_integer_value(json_array_get(offs, 1));
        if (end < begin || end > b->size - 8 - b->hlen || pos + (end - begin) > cap)
            continue;
        memcpy(data + pos, orig + begin, end - begin);
        json_t *no = json_array();
        json_array_append_new(no, json_integer((json_int_t)pos));
        json_array_append_new(no, json_integer((json_int_t)(pos + end - begin)));
        json_object_set_new(v, "data_offsets", no);
        pos += end - begin;
    }
    if (keep != (size_t)-1 && keep < pos)
        pos = keep;
    char *text = json_dumps(h, JSON_COMPACT);
    size_t n = strlen(text);
    const char *path = write_raw(text, (n + 7) / 8 * 8, data, pos);
    free(text);
    free(data);
    return path;
}

/* The fixture's own header text with `hlen` bytes (>= its length, space-padded) and
 * its own data: same tensors, data starting at 8 + hlen. */
static const char *write_shifted(const blob *b, size_t hlen)
{
    char *text = malloc(b->hlen + 1);
    memcpy(text, b->bytes + 8, b->hlen);
    text[b->hlen] = '\0';
    const char *path = write_raw(text, hlen, b->bytes + 8 + b->hlen, b->size - 8 - b->hlen);
    free(text);
    return path;
}

static json_t *header(const blob *b);
static json_t *header(const blob *b)
{
    return json_loadb((const char *)b->bytes + 8, b->hlen, 0, NULL);
}

/* kwargs of network 0, as a JSON object to edit, and a setter writing them back. */
static json_t *kwargs_of(json_t *h)
{
    json_t *meta = json_object_get(h, "__metadata__");
    json_t *models = json_loads(json_string_value(json_object_get(meta, "models")), 0, NULL);
    return models;
}

static void set_models(json_t *h, json_t *models)
{
    json_t *meta = json_object_get(h, "__metadata__");
    char *text = json_dumps(models, JSON_COMPACT);
    json_object_set_new(meta, "models", json_string(text));
    free(text);
}

static void set_kwarg(json_t *h, const char *key, json_t *value)
{
    json_t *models = kwargs_of(h);
    json_object_set_new(json_object_get(json_array_get(models, 0), "kwargs"), key, value);
    set_models(h, models);
    json_decref(models);
}

static void set_meta(json_t *h, const char *key, const char *value)
{
    json_object_set_new(json_object_get(h, "__metadata__"), key, json_string(value));
}

static void expect_load_error(const char *what, const char *path, const char *needle1,
                              const char *needle2);

/* Hyperparameter `key` set to the JSON text `value` (and `key2` to `value2` when not
 * NULL): the load must fail with `needle` in the message. */
static void expect_kwarg_error(const blob *b, const char *key, const char *value, const char *key2,
                               const char *value2, const char *needle)
{
    json_t *h = header(b);
    set_kwarg(h, key, json_loads(value, JSON_DECODE_ANY, NULL));
    if (key2)
        set_kwarg(h, key2, json_loads(value2, JSON_DECODE_ANY, NULL));
    char what[160];
    snprintf(what, sizeof(what), "hyperparameter %s = %s%s%s%s refused", key, value,
             key2 ? " with " : "", key2 ? key2 : "", key2 ? " set" : "");
    expect_load_error(what, write_variant(b, h, (size_t)-1), needle, NULL);
    json_decref(h);
}

/* Loads `path`, expects failure with every needle in the message. */
static void expect_load_error(const char *what, const char *path, const char *needle1,
                              const char *needle2)
{
    char err[512] = "";
    sep_model *m = path ? sep_model_load(path, err, sizeof(err)) : NULL;
    int ok = path && !m && strstr(err, needle1) && (!needle2 || strstr(err, needle2));
    check(ok, what, m ? "loaded" : err);
    sep_model_free(m);
    if (path)
        unlink(path);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s WEIGHTS.safetensors\n", argv[0]);
        return 2;
    }
    blob b;
    if (read_file(argv[1], &b)) {
        printf("FAIL cannot read %s\n", argv[1]);
        return 1;
    }

    json_t *h = header(&b);
    json_object_del(h, "0.decoder.0.rewrite.bias");
    expect_load_error("missing tensor is named", write_variant(&b, h, (size_t)-1),
                      "missing tensor 0.decoder.0.rewrite.bias", NULL);
    json_decref(h);

    h = header(&b);
    json_t *models = kwargs_of(h);
    json_object_set_new(json_object_get(json_array_get(models, 0), "kwargs"), "channels",
                        json_integer(16));
    set_models(h, models);
    json_decref(models);
    expect_load_error("shape mismatch names the tensor", write_variant(&b, h, (size_t)-1),
                      "tensor 0.encoder.0.conv.weight has shape", "need [16,");
    json_decref(h);

    h = header(&b);
    models = kwargs_of(h);
    json_t *mf = json_array();
    json_array_append_new(mf, json_real(0.5));
    json_object_set_new(json_object_get(json_array_get(models, 0), "kwargs"), "multi_freqs", mf);
    set_models(h, models);
    json_decref(models);
    expect_load_error("unsupported option is named", write_variant(&b, h, (size_t)-1),
                      "multi_freqs", "not supported");
    json_decref(h);

    h = header(&b);
    models = kwargs_of(h);
    json_object_del(json_object_get(json_array_get(models, 0), "kwargs"), "nfft");
    set_models(h, models);
    json_decref(models);
    expect_load_error("missing hyperparameter is named", write_variant(&b, h, (size_t)-1),
                      "missing \"nfft\"", NULL);
    json_decref(h);

    h = header(&b);
    json_object_set_new(h, "0.extra_tensor",
                        json_deep_copy(json_object_get(h, "0.decoder.0.rewrite.bias")));
    expect_load_error("unused tensor is named", write_variant(&b, h, (size_t)-1),
                      "unexpected tensor 0.extra_tensor", NULL);
    json_decref(h);

    h = header(&b);
    json_object_set_new(json_object_get(h, "__metadata__"), "format", json_string("other/2"));
    expect_load_error("wrong format tag", write_variant(&b, h, (size_t)-1), "format", NULL);
    json_decref(h);

    h = header(&b);
    expect_load_error("truncated file", write_variant(&b, h, 1000), "do not match", NULL);
    json_decref(h);
    expect_load_error("missing file", "/nonexistent/weights.safetensors", "No such file", NULL);

    /* Case 1: source names become file names: only [A-Za-z0-9_-]{1,31}, distinct. */
    h = header(&b);
    set_meta(h, "sources", "[\"/../../../../pwned\", \"bass\", \"other\", \"vocals\"]");
    expect_load_error("source name with a path is refused", write_variant(&b, h, (size_t)-1),
                      "source name \"/../../../../pwned\": must match [A-Za-z0-9_-]{1,31}", NULL);
    json_decref(h);
    const char *bad_names[] = {"[\"..\", \"bass\", \"other\", \"vocals\"]",
                               "[\"\", \"bass\", \"other\", \"vocals\"]",
                               "[\"a.b\", \"bass\", \"other\", \"vocals\"]",
                               "[\"drums\", \"ba ss\", \"other\", \"vocals\"]",
                               "[\"drums\", \"bass\", \"other\", "
                               "\"abcdefghijabcdefghijabcdefghijab\"]"};
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
        h = header(&b);
        set_meta(h, "sources", bad_names[i]);
        char what[200];
        snprintf(what, sizeof(what), "sources %s refused", bad_names[i]);
        expect_load_error(what, write_variant(&b, h, (size_t)-1),
                          "metadata \"sources\": source name", NULL);
        json_decref(h);
    }
    h = header(&b);
    set_meta(h, "sources", "[\"a\", \"a\", \"a\", \"a\"]");
    expect_load_error("duplicate source names are refused", write_variant(&b, h, (size_t)-1),
                      "source name \"a\" appears twice: names must be distinct", NULL);
    json_decref(h);

    /* Case 2: hyperparameters: counts >= 1 under a cap, int64 progressions, norm_groups. */
    expect_kwarg_error(&b, "stride", "0", NULL, NULL,
                       "hyperparameter stride = 0: must be an integer in [1, 64]");
    expect_kwarg_error(&b, "norm_groups", "0", NULL, NULL,
                       "hyperparameter norm_groups = 0: must be an integer in [1, 16384]");
    expect_kwarg_error(&b, "norm_groups", "-1", NULL, NULL, "hyperparameter norm_groups = -1:");
    expect_kwarg_error(&b, "kernel_size", "0", NULL, NULL, "hyperparameter kernel_size = 0:");
    expect_kwarg_error(&b, "time_stride", "0", NULL, NULL, "hyperparameter time_stride = 0:");
    expect_kwarg_error(&b, "growth", "0", NULL, NULL,
                       "hyperparameter growth = 0: must be a number in (0, 16]");
    expect_kwarg_error(&b, "channels", "10000000000", NULL, NULL,
                       "hyperparameter channels = 10000000000: must be an integer in [1, 16384]");
    expect_kwarg_error(&b, "growth", "1e30", NULL, NULL, "hyperparameter growth = 1e+30:");
    expect_kwarg_error(&b, "growth", "16", "channels", "4096", "every count must be in [1, 16384]");
    expect_kwarg_error(&b, "growth", "0.1", NULL, NULL,
                       "hyperparameter growth = 0.1: encoder layer");
    expect_kwarg_error(&b, "context_enc", "1073741824", NULL, NULL,
                       "hyperparameter context_enc = 1073741824: must be an integer in [0, 16]");
    expect_kwarg_error(&b, "depth", "0", NULL, NULL, "hyperparameter depth = 0:");
    expect_kwarg_error(&b, "nfft", "1000", NULL, NULL,
                       "hyperparameter nfft = 1000: must be a power of two in [16, 65536]");
    expect_kwarg_error(&b, "dconv_comp", "0", NULL, NULL, "hyperparameter dconv_comp = 0:");
    expect_kwarg_error(&b, "dconv_comp", "1e-300", NULL, NULL,
                       "hyperparameter dconv_comp = 1e-300:");
    expect_kwarg_error(&b, "t_heads", "0", NULL, NULL, "hyperparameter t_heads = 0:");
    expect_kwarg_error(&b, "t_heads", "3", NULL, NULL, "must be a multiple of 4 and of t_heads");
    expect_kwarg_error(&b, "t_hidden_scale", "1e300", NULL, NULL,
                       "hyperparameter t_hidden_scale = 1e+300:");
    expect_kwarg_error(&b, "segment", "-1", NULL, NULL, "hyperparameter segment = -1:");
    expect_kwarg_error(&b, "norm_groups", "3", "norm_starts", "0",
                       "hyperparameter norm_groups = 3: must divide the channel count of every "
                       "normalized layer");
    expect_kwarg_error(&b, "norm_groups", "1000", "norm_starts", "0",
                       "hyperparameter norm_groups = 1000: must divide");
    expect_kwarg_error(&b, "kernel_size", "3", NULL, NULL,
                       "hyperparameter kernel_size = 3: with stride 4, encoder layer 0 maps");

    /* Case 3: data aligned from the start of the file, not from the data area. */
    expect_load_error("tensor data misaligned in the file is refused (header 8k+1)",
                      write_shifted(&b, (b.hlen + 8) / 8 * 8 + 1), "not 4-byte aligned", NULL);
    expect_load_error("tensor data misaligned in the file is refused (header 8k+2)",
                      write_shifted(&b, (b.hlen + 8) / 8 * 8 + 2), "not 4-byte aligned", NULL);

    /* Case 7: shapes, ranges, duplicate keys, integer metadata. */
    h = header(&b);
    json_object_set_new(json_object_get(h, "0.decoder.0.rewrite.bias"), "shape",
                        json_loads("[4611686018427387904]", 0, NULL));
    expect_load_error("shape [2^62] is refused", write_variant(&b, h, (size_t)-1),
                      "element count overflows", NULL);
    json_decref(h);
    h = header(&b);
    json_object_set_new(json_object_get(h, "0.decoder.0.rewrite.bias"), "shape",
                        json_loads("[2147483648, 2147483648, 4]", 0, NULL));
    expect_load_error("shape with a 2^64 product is refused", write_variant(&b, h, (size_t)-1),
                      "element count overflows", NULL);
    json_decref(h);
    {
        h = header(&b);
        json_object_set_new(h, "0.extra_tensor",
                            json_deep_copy(json_object_get(h, "0.decoder.0.rewrite.bias")));
        char *text = json_dumps(h, JSON_COMPACT);
        expect_load_error(
            "aliased tensor ranges are refused",
            write_raw(text, (strlen(text) + 7) / 8 * 8, b.bytes + 8 + b.hlen, b.size - 8 - b.hlen),
            "overlap tensor", NULL);
        free(text);
        json_decref(h);

        h = header(&b);
        json_t *t = json_object_get(h, "0.decoder.0.rewrite.bias");
        json_t *offs = json_object_get(t, "data_offsets");
        json_int_t b0 = json_integer_value(json_array_get(offs, 0));
        json_array_set_new(offs, 0, json_integer(b0 - 4)); /* one float into the previous */
        json_array_set_new(offs, 1, json_integer(json_integer_value(json_array_get(offs, 1)) - 4));
        text = json_dumps(h, JSON_COMPACT);
        expect_load_error(
            "overlapping tensor ranges are refused",
            write_raw(text, (strlen(text) + 7) / 8 * 8, b.bytes + 8 + b.hlen, b.size - 8 - b.hlen),
            "overlap tensor", NULL);
        free(text);
        json_decref(h);

        h = header(&b);
        json_object_del(h, "0.decoder.0.rewrite.bias");
        text = json_dumps(h, JSON_COMPACT);
        const char *path =
            write_raw(text, (strlen(text) + 7) / 8 * 8, b.bytes + 8 + b.hlen, b.size - 8 - b.hlen);
        expect_load_error("a hole between tensors is refused", path, "leave a hole", NULL);
        free(text);
        json_decref(h);

        unsigned char *more = calloc(1, b.size + 64);
        memcpy(more, b.bytes + 8 + b.hlen, b.size - 8 - b.hlen);
        char *own = strndup((const char *)b.bytes + 8, b.hlen);
        expect_load_error("bytes after the last tensor are refused",
                          write_raw(own, b.hlen, more, b.size - 8 - b.hlen + 64),
                          "belong to no tensor", NULL);
        /* a second "__metadata__" key at the front of the header */
        char *dup = malloc(b.hlen + 64);
        snprintf(dup, b.hlen + 64, "{\"__metadata__\":{},%s", own + 1);
        expect_load_error(
            "duplicate header keys are refused",
            write_raw(dup, (strlen(dup) + 7) / 8 * 8, b.bytes + 8 + b.hlen, b.size - 8 - b.hlen),
            "duplicate", NULL);
        free(dup);
        free(own);
        free(more);
    }
    h = header(&b);
    {
        json_t *meta = json_object_get(h, "__metadata__");
        const char *mtext = json_string_value(json_object_get(meta, "models"));
        const char *at = strstr(mtext, "\"class\":");
        char *dup = malloc(strlen(mtext) + 64);
        snprintf(dup, strlen(mtext) + 64, "%.*s\"class\": \"HTDemucs\", %s", (int)(at - mtext),
                 mtext, at);
        set_meta(h, "models", dup);
        free(dup);
    }
    expect_load_error("duplicate keys inside the metadata JSON are refused",
                      write_variant(&b, h, (size_t)-1), "duplicate", NULL);
    json_decref(h);
    h = header(&b);
    set_meta(h, "segment_samples", "4294971706");
    expect_load_error(
        "segment_samples beyond int is refused (no truncation)", write_variant(&b, h, (size_t)-1),
        "metadata \"segment_samples\" = 4294971706: must be an integer in [1, ", NULL);
    json_decref(h);
    h = header(&b);
    set_meta(h, "segment_samples", "8820"); /* twice what "segment" (0.1 s) says */
    expect_load_error("segment_samples that disagrees with segment is refused",
                      write_variant(&b, h, (size_t)-1),
                      "metadata \"segment\" = 0.1: must be a number of seconds > 0", NULL);
    json_decref(h);
    h = header(&b);
    set_meta(h, "segment", "nan");
    expect_load_error("a segment that is not a number is refused", write_variant(&b, h, (size_t)-1),
                      "metadata \"segment\" = nan: must be a number", NULL);
    json_decref(h);
    h = header(&b);
    set_meta(h, "segment_samples", "100");
    set_meta(h, "segment", "0.0022675736961451248"); /* 100 samples at 44.1 kHz */
    expect_load_error("segment_samples below nfft is refused", write_variant(&b, h, (size_t)-1),
                      "must be at least network 0's nfft", NULL);
    json_decref(h);
    h = header(&b);
    set_meta(h, "audio_channels", "0");
    expect_load_error("audio_channels 0 is refused", write_variant(&b, h, (size_t)-1),
                      "metadata \"audio_channels\" = 0: must be an integer in [1, 8]", NULL);
    json_decref(h);

    /* the real file */
    char err[512];
    sep_model *m = sep_model_load(argv[1], err, sizeof(err));
    check(m != NULL, "fixture loads", m ? NULL : err);
    if (!m)
        return 1;
    const sep_model_info *info = sep_model_get_info(m);
    check(info->n_models == 1 && info->audio_channels == 2 && info->samplerate == 44100 &&
              info->segment_samples > 0,
          "model info", NULL);
    int last = info->n_sources - 1;
    check(sep_model_source_index(m, info->sources[last]) == last &&
              sep_model_source_index(m, "kazoo") == -1,
          "source index", NULL);
    check(sep_model_param_count(m, 0) > 0, "parameter count", NULL);

    sep_engine_opts bad = {.device = "tpu"};
    sep_engine *e = sep_engine_create(m, &bad, err, sizeof(err));
    check(!e && strstr(err, "unknown device"), "unknown device refused", err);
    sep_engine_opts cuda = {.device = "cuda"};
    e = sep_engine_create(m, &cuda, err, sizeof(err));
    if (e) {
        check(strcmp(sep_engine_device(e), "cuda") == 0, "cuda engine", NULL);
        sep_engine_free(e);
    } else {
        check(strstr(err, "CUDA") != NULL,
              "cuda refused with a reason (no GPU here, or a CPU-only build)", err);
    }

    /* SEP_CPU_ISA: an unknown set (or one of another architecture) and a set this CPU
     * lacks are refused by name; a supported one runs (this process's later engines
     * use the default again) */
    const char *isa_env = getenv("SEP_CPU_ISA");
    char *isa_saved = isa_env ? strdup(isa_env) : NULL;
    sep_engine_opts one = {.device = "cpu", .threads = 1, .max_batch = 1};
    static const char *const all_isas[] = {"sse9", "generic", "avx2", "avx512", "neon"};
    for (size_t i = 0; i < sizeof(all_isas) / sizeof(all_isas[0]); i++) {
        const char *isa = all_isas[i];
        int built = 0;
        for (int j = 0; sep_cpu_isas[j]; j++)
            built |= strcmp(sep_cpu_isas[j], isa) == 0;
        setenv("SEP_CPU_ISA", isa, 1);
        e = sep_engine_create(m, &one, err, sizeof(err));
        char what[128], want[64];
        snprintf(want, sizeof(want), "SEP_CPU_ISA=%s", isa);
        if (!built) {
            snprintf(what, sizeof(what),
                     "SEP_CPU_ISA=%s (not in this build) refused, naming the accepted sets", isa);
            check(!e && strstr(err, want) && strstr(err, sep_cpu_isa_names), what,
                  e ? "created" : err);
        } else if (sep_cpu_isa_supported(isa)) {
            snprintf(what, sizeof(what), "SEP_CPU_ISA=%s (supported) runs", isa);
            const cpu_kernels *k = sep_cpu_kernels(err, sizeof(err));
            check(e && k && strcmp(k->name, isa) == 0, what, e ? NULL : err);
        } else {
            snprintf(what, sizeof(what), "SEP_CPU_ISA=%s refused on a CPU without it", isa);
            check(!e && strstr(err, "this CPU does not support it"), what, e ? "created" : err);
        }
        sep_engine_free(e);
    }
    if (isa_saved)
        setenv("SEP_CPU_ISA", isa_saved, 1);
    else
        unsetenv("SEP_CPU_ISA");
    free(isa_saved);

    sep_engine_opts opts = {.device = "cpu", .threads = 2, .max_batch = 2};
    e = sep_engine_create(m, &opts, err, sizeof(err));
    check(e != NULL && strcmp(sep_engine_device(e), "cpu") == 0, "cpu engine", e ? NULL : err);
    if (!e)
        return 1;
    int L = info->segment_samples, C = info->audio_channels, S = info->n_sources;
    size_t in_per = (size_t)C * L, out_per = (size_t)S * in_per;
    float *mix = malloc(3 * in_per * sizeof(float));
    float *out3 = malloc(3 * out_per * sizeof(float));
    float *out1 = malloc(out_per * sizeof(float));
    unsigned s = 1;
    for (size_t i = 0; i < 3 * in_per; i++) {
        s = s * 1664525u + 1013904223u;
        mix[i] = ((float)(s >> 9) / (float)(1u << 23) - 0.5f) * 0.4f;
    }
    check(sep_engine_forward(e, 1, mix, 1, L, out1, err, sizeof(err)) != 0 &&
              strstr(err, "model index"),
          "model index out of range refused", err);
    float *longmix = calloc(in_per + 2 * C, sizeof(float));
    float *longout = calloc(out_per + 2 * S * C, sizeof(float));
    check(sep_engine_forward(e, 0, longmix, 1, L + 1, longout, err, sizeof(err)) != 0 &&
              strstr(err, "longer than the training length"),
          "input longer than the segment refused", err);
    int rc = sep_engine_forward(e, 0, mix, 3, L, out3, err, sizeof(err));
    check(rc == 0, "batch of 3 with max_batch 2", rc ? err : NULL);
    int same = rc == 0;
    for (int k = 0; same && k < 3; k++) {
        same = sep_engine_forward(e, 0, mix + k * in_per, 1, L, out1, err, sizeof(err)) == 0 &&
               memcmp(out1, out3 + k * out_per, out_per * sizeof(float)) == 0;
    }
    check(same, "batch split across max_batch equals single runs bit for bit", NULL);
    int finite = 1;
    for (size_t i = 0; i < 3 * out_per; i++)
        finite = finite && out3[i] == out3[i] && out3[i] < 1e30f && out3[i] > -1e30f;
    check(finite, "outputs are finite", NULL);

    free(mix);
    free(out3);
    free(out1);
    free(longmix);
    free(longout);
    sep_engine_free(e);
    sep_model_free(m);
    free(b.bytes);
    printf("%s engine: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
    printf("CASES: %d passed, %d failed, 0 skipped\n", checks - failures, failures);
    return failures ? 1 : 0;
}
