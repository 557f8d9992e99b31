/*
 * engine_test.c - the engine API around the network: loading, failure messages and
 * forward-pass arguments.
 *
 *   engine_test WEIGHTS.safetensors     (a small fixture from tests/fixtures/)
 *
 * Writes altered copies of the fixture (a tensor removed, hyperparameters that no
 * longer match the tensors, an option the engine does not implement, a tensor the
 * network does not use, a wrong format tag, a truncated file) and checks that
 * sep_model_load refuses each with a message naming the culprit. Then checks the
 * model information, the engine's argument checks, and that a batch larger than
 * max_batch (split internally) gives the same bits as single runs.
 * Prints PASS/FAIL per check; exits non-zero when any failed.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* A copy of the fixture with header `h` and the original tensor data, truncated to
 * `keep` bytes of data when keep != (size_t)-1. Returns the path (static buffer). */
static const char *write_variant(const blob *b, json_t *h, size_t keep)
{
    static char path[] = "/tmp/sep-engine-test-XXXXXX";
    strcpy(path, "/tmp/sep-engine-test-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    char *text = json_dumps(h, JSON_COMPACT);
    size_t n = strlen(text);
    size_t padded = (n + 7) / 8 * 8;
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(padded >> (8 * i));
    size_t data = b->size - 8 - b->hlen;
    if (keep != (size_t)-1 && keep < data)
        data = keep;
    int ok = write(fd, len, 8) == 8 && write(fd, text, n) == (ssize_t)n;
    for (size_t i = n; ok && i < padded; i++)
        ok = write(fd, " ", 1) == 1;
    ok = ok && write(fd, b->bytes + 8 + b->hlen, data) == (ssize_t)data;
    close(fd);
    free(text);
    return ok ? path : NULL;
}

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
    json_object_set(h, "0.extra_tensor", json_object_get(h, "0.decoder.0.rewrite.bias"));
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
        check(strstr(err, "CUDA") != NULL, "cuda refused with a reason (CPU-only build)", err);
    }

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
