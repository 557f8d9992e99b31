/*
 * parity.c - layer-by-layer and end-to-end parity of the C engine against the
 * PyTorch reference (fixtures from tests/reference/make_fixtures.py).
 *
 *   parity WEIGHTS.safetensors ACTIVATIONS.safetensors [--tol REL] [--threads N]
 *          [--device cpu|cuda] [--compare-device cpu|cuda] [--quick]
 *
 * Runs the fixture's mix through sep_engine_forward_traced and compares every traced
 * activation the fixture holds, printing for each
 *     MAXERR <name> abs=<max |c - ref|> rel=<abs / max |ref|>
 * and fails when rel exceeds the tolerance or a fixture activation is never produced.
 *
 * Tolerance (default 1e-4, relative to the activation's largest magnitude): float32
 * reimplementations of the same arithmetic in a different summation order differ
 * by a few 1e-7 per operation, which grows to ~1e-5 over the ~100 operations of the
 * network (measured: see tests/fixtures/README.md). An indexing mistake is orders of
 * magnitude above that: the test proves it on each fixture by shifting the input by
 * one sample (what an off-by-one in a padding does) and requiring that the output
 * then differs by more than 10x the tolerance.
 *
 * --compare-device D also runs the fixture's mix through a second engine on device D
 * (the same weights) and compares the two outputs:
 *     MAXERR output-vs-<D> abs=... rel=...
 * failing above the same tolerance (a GPU engine checked against the CPU engine).
 *
 * Unless --quick, it also checks that the engine is deterministic across batching
 * (a batch of two gives bit-identical results to two single runs) and that an input
 * shorter than the segment gives the zero-padded result, cropped (the reference's
 * behaviour).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/cpu_kernels.h"
#include "models/engine.h"
#include "models/safetensors.h"

typedef struct {
    st_file *acts;
    double tol;
    int failures;
    int compared;
    double max_rel; /* over every compared activation */
    char seen[256][96];
    int n_seen;
} checker;

typedef struct {
    double abs, rel;
} err_pair;

static err_pair compare(const float *c, const float *ref, size_t n)
{
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)ref[i]);
        double d = fabs((double)c[i] - (double)ref[i]);
        if (r > maxref)
            maxref = r;
        if (d > maxdiff || isnan(d))
            maxdiff = isnan(d) ? INFINITY : d;
    }
    err_pair e = {maxdiff, maxref > 0 ? maxdiff / maxref : maxdiff};
    return e;
}

static void on_trace(void *ud, const char *name, const float *data, int ndim, const int *shape)
{
    checker *ck = ud;
    st_tensor *ref = st_find(ck->acts, name);
    if (!ref)
        return; /* not captured by the fixture (e.g. full-size subset) */
    if (ck->n_seen < 256)
        snprintf(ck->seen[ck->n_seen++], sizeof(ck->seen[0]), "%s", name);
    int same = ref->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = ref->shape[i] == shape[i];
    if (!same) {
        printf("FAIL %s: shape [", name);
        for (int i = 0; i < ndim; i++)
            printf("%s%d", i ? ", " : "", shape[i]);
        printf("], reference [");
        for (int i = 0; i < ref->ndim; i++)
            printf("%s%lld", i ? ", " : "", (long long)ref->shape[i]);
        printf("]\n");
        ck->failures++;
        return;
    }
    err_pair e = compare(data, ref->data, ref->count);
    ck->compared++;
    if (!(e.rel <= ck->max_rel))
        ck->max_rel = e.rel;
    int bad = !(e.rel <= ck->tol);
    printf("MAXERR %-32s abs=%.3e rel=%.3e%s\n", name, e.abs, e.rel, bad ? "  FAIL" : "");
    if (bad)
        ck->failures++;
}

static int was_seen(const checker *ck, const char *name)
{
    for (int i = 0; i < ck->n_seen; i++)
        if (strcmp(ck->seen[i], name) == 0)
            return 1;
    return 0;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

int main(int argc, char **argv)
{
    const char *wpath = NULL, *apath = NULL, *device = "cpu", *compare_device = NULL;
    double tol = 2e-5;
    int threads = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tol") == 0 && i + 1 < argc)
            tol = atof(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            device = argv[++i];
        else if (strcmp(argv[i], "--compare-device") == 0 && i + 1 < argc)
            compare_device = argv[++i];
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (!wpath)
            wpath = argv[i];
        else if (!apath)
            apath = argv[i];
        else {
            fprintf(stderr,
                    "usage: %s WEIGHTS ACTIVATIONS [--tol REL] [--threads N] "
                    "[--device D] [--compare-device D] [--quick]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!wpath || !apath) {
        fprintf(stderr,
                "usage: %s WEIGHTS ACTIVATIONS [--tol REL] [--threads N] [--device D] "
                "[--compare-device D] [--quick]\n",
                argv[0]);
        return 2;
    }
    char err[512];
    sep_model *model = sep_model_load(wpath, err, sizeof(err));
    if (!model) {
        printf("FAIL load: %s\n", err);
        return 1;
    }
    sep_model_print(model, stdout);
    const sep_model_info *info = sep_model_get_info(model);
    st_file acts;
    if (st_open(&acts, apath, err, sizeof(err))) {
        printf("FAIL activations: %s\n", err);
        return 1;
    }
    st_tensor *mix = st_find(&acts, "mix"), *ref_out = st_find(&acts, "output");
    if (!mix || !ref_out || mix->ndim != 3 || mix->shape[1] != info->audio_channels) {
        printf("FAIL activations: need mix [B][%d][L] and output\n", info->audio_channels);
        return 1;
    }
    int batch = (int)mix->shape[0], length = (int)mix->shape[2];
    sep_engine_opts opts = {.device = device, .threads = threads, .max_batch = 2};
    sep_engine *eng = sep_engine_create(model, &opts, err, sizeof(err));
    if (!eng) {
        printf("FAIL engine: %s\n", err);
        return 1;
    }
    size_t out_per = (size_t)info->n_sources * info->audio_channels * length;
    size_t in_per = (size_t)info->audio_channels * length;
    float *out = calloc((size_t)2 * batch * out_per + 1, sizeof(float));

    checker ck = {.acts = &acts, .tol = tol};
    if (sep_engine_forward_traced(eng, 0, mix->data, batch, length, out, on_trace, &ck, err,
                                  sizeof(err))) {
        printf("FAIL forward: %s\n", err);
        return 1;
    }
    for (int i = 0; i < acts.n_tensors; i++) {
        const char *name = acts.tensors[i].name;
        if (strcmp(name, "mix") != 0 && !was_seen(&ck, name)) {
            printf("FAIL %s: in the fixture but never produced by the engine\n", name);
            ck.failures++;
        }
    }
    err_pair end = compare(out, ref_out->data, ref_out->count);

    /* the same mix on a second engine (another device), output against output */
    int compared_devices = 0;
    if (compare_device) {
        sep_engine_opts copts = {.device = compare_device, .threads = threads, .max_batch = 2};
        sep_engine *other = sep_engine_create(model, &copts, err, sizeof(err));
        float *out_other = calloc((size_t)batch * out_per + 1, sizeof(float));
        if (!other || !out_other) {
            printf("FAIL engine (%s): %s\n", compare_device, other ? "out of memory" : err);
            return 1;
        }
        if (sep_engine_forward(other, 0, mix->data, batch, length, out_other, err, sizeof(err))) {
            printf("FAIL forward (%s): %s\n", compare_device, err);
            return 1;
        }
        err_pair d = compare(out, out_other, (size_t)batch * out_per);
        int bad = !(d.rel <= tol);
        printf("MAXERR output-vs-%-22s abs=%.3e rel=%.3e%s\n", compare_device, d.abs, d.rel,
               bad ? "  FAIL" : "");
        if (bad) {
            printf("FAIL %s vs %s: outputs differ by more than the tolerance\n", device,
                   compare_device);
            ck.failures++;
        }
        compared_devices = 1;
        free(out_other);
        sep_engine_free(other);
    }

    /* sensitivity: the same comparison on a one-sample shifted input must fail */
    float *shifted = calloc(in_per * batch, sizeof(float));
    float *out_shift = calloc(out_per * batch, sizeof(float));
    for (int r = 0; r < batch * info->audio_channels; r++)
        memcpy(shifted + (size_t)r * length + 1, mix->data + (size_t)r * length,
               (size_t)(length - 1) * sizeof(float));
    if (sep_engine_forward(eng, 0, shifted, batch, length, out_shift, err, sizeof(err))) {
        printf("FAIL forward (shifted): %s\n", err);
        return 1;
    }
    err_pair sh = compare(out_shift, ref_out->data, ref_out->count);
    printf("sensitivity: input shifted by one sample gives output rel=%.3e (must be > %.1e)\n",
           sh.rel, 10 * tol);
    if (!(sh.rel > 10 * tol)) {
        printf("FAIL sensitivity: the tolerance would not catch an off-by-one\n");
        ck.failures++;
    }

    if (!quick) {
        /* batching: [mix_0, shifted_0] as one batch == two single runs */
        float *pair = calloc(2 * in_per, sizeof(float));
        float *out_pair = calloc(2 * out_per, sizeof(float));
        float *single = calloc(out_per, sizeof(float));
        memcpy(pair, mix->data, in_per * sizeof(float));
        memcpy(pair + in_per, shifted, in_per * sizeof(float));
        if (sep_engine_forward(eng, 0, pair, 2, length, out_pair, err, sizeof(err)) ||
            sep_engine_forward(eng, 0, mix->data, 1, length, single, err, sizeof(err))) {
            printf("FAIL forward (batch): %s\n", err);
            return 1;
        }
        double d0 = max_abs_diff(out_pair, single, out_per);
        double d1 = max_abs_diff(out_pair + out_per, out_shift, out_per);
        printf("MAXERR batch2-vs-single abs=%.3e,%.3e (must be 0)\n", d0, d1);
        if (d0 != 0 || d1 != 0) {
            printf("FAIL batch: a batch of 2 differs from single runs\n");
            ck.failures++;
        }

        /* shorter input: same as the zero-padded segment, cropped */
        int cut = length - length / 7;
        float *shortmix = calloc(in_per, sizeof(float));
        float *padmix = calloc(in_per, sizeof(float));
        float *out_short = calloc(out_per, sizeof(float));
        float *out_pad = calloc(out_per, sizeof(float));
        for (int r = 0; r < info->audio_channels; r++) {
            memcpy(shortmix + (size_t)r * cut, mix->data + (size_t)r * length,
                   (size_t)cut * sizeof(float));
            memcpy(padmix + (size_t)r * length, mix->data + (size_t)r * length,
                   (size_t)cut * sizeof(float));
        }
        if (sep_engine_forward(eng, 0, shortmix, 1, cut, out_short, err, sizeof(err)) ||
            sep_engine_forward(eng, 0, padmix, 1, length, out_pad, err, sizeof(err))) {
            printf("FAIL forward (short input): %s\n", err);
            return 1;
        }
        double dshort = 0;
        int rows = info->n_sources * info->audio_channels;
        for (int r = 0; r < rows; r++) {
            double d = max_abs_diff(out_short + (size_t)r * cut, out_pad + (size_t)r * length,
                                    (size_t)cut);
            dshort = d > dshort ? d : dshort;
        }
        printf("MAXERR short-input-vs-padded abs=%.3e (must be 0)\n", dshort);
        if (dshort != 0) {
            printf("FAIL short input: differs from the zero-padded segment\n");
            ck.failures++;
        }
        free(pair);
        free(out_pair);
        free(single);
        free(shortmix);
        free(padmix);
        free(out_short);
        free(out_pad);
    }
    printf("workspace: %.1f MiB (largest batch run: %d)\n",
           sep_engine_workspace_bytes(eng) / 1048576.0, quick ? batch : 2);
    const char *isa = "-";
    if (strcmp(device, "cpu") == 0) {
        const cpu_kernels *k = sep_cpu_kernels(err, sizeof(err));
        isa = k ? k->name : "?";
    }
    printf("%s %s: %d activations compared, max rel=%.3e, end-to-end rel=%.3e (tol %.1e, "
           "device %s, isa %s)\n",
           ck.failures ? "FAIL" : "PASS", info->name, ck.compared, ck.max_rel, end.rel, tol, device,
           isa);
    /* one case per compared activation, plus the sensitivity and batching checks */
    int cases = ck.compared + 2 + compared_devices > ck.failures
                    ? ck.compared + 2 + compared_devices
                    : ck.failures;
    printf("CASES: %d passed, %d failed, 0 skipped\n", cases - ck.failures, ck.failures);
    free(shifted);
    free(out_shift);
    free(out);
    sep_engine_free(eng);
    st_close(&acts);
    sep_model_free(model);
    return ck.failures ? 1 : 0;
}
