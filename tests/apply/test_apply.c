/*
 * test_apply.c - the apply layer (models/apply.c) on the real engine against the
 * reference demucs.separate pipeline.
 *
 * Fixtures (tests/fixtures/apply/, made by tests/reference/make_apply_fixtures.py):
 * a tiny random-weight HTDemucs, a bag of two, a stereo track and, per case, the
 * reference output of normalise -> apply_model -> de-normalise (-> two-stem sum).
 * For each case this runs sep_apply_run with the same options (explicit shift offsets
 * where the reference used them), compares every output sample as it is written and
 * prints `MAXERR <case> ...`; a case fails above TOLERANCE (absolute, on outputs whose
 * peak is about 0.2 to 0.5).
 *
 * It also checks: batching does not change the result; the write callback covers the
 * track exactly once, in order; progress is monotonic and ends at 1; output is
 * streamed (the distance between the furthest frame read and the frames written stays
 * bounded on a track 30x longer than a segment); seeded shifts are reproducible;
 * option errors and callback aborts are reported.
 *
 * The producer/consumer API (sep_apply_begin/next/put) is run on every reference case
 * with three batches in flight whose outputs are put back in reverse order, as a
 * device pool may return them: same outputs within TOLERANCE, and a batch's segments
 * always belong to one network of the bag.
 *
 * usage: test_apply FIXTURE_DIR
 */
#include <jansson.h>
#include <math.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/apply.h"
#include "models/engine.h"

#define TOLERANCE 2e-5

static int failures, checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) {                                                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

typedef struct {
    /* input: either a buffer [channels][frames] or a generated signal */
    const float *track;
    int64_t frames;
    int channels;
    int64_t read_end; /* furthest frame read during separation */
    int64_t max_lag;  /* max(read_end - written) seen at any read */
    /* output */
    const float *ref; /* [stems][channels][frames] or NULL */
    int n_stems;
    int64_t written;
    double max_err, max_ref;
    int order_ok;
    double checksum;
    float *keep; /* optional copy of the output [stems][channels][frames] */
    /* progress */
    double last_progress;
    int progress_ok;
    int progress_calls;
    int abort_write_at; /* abort when written >= this (0 = never) */
    int cancel_progress;
} run_ctx;

static float synth(int64_t t, int c)
{
    /* deterministic music-like signal for the long-track test */
    double x = t / 44100.0;
    return (float)(0.3 * sin(2 * M_PI * (110 + 30 * c) * x) * (0.6 + 0.4 * sin(2 * M_PI * x)) +
                   0.1 * sin(2 * M_PI * 1234.5 * x + c) + 0.01);
}

static int read_cb(void *user, int64_t start, int count, float *dst)
{
    run_ctx *r = user;
    if (start < 0 || count < 0 || start + count > r->frames)
        return -1;
    for (int c = 0; c < r->channels; c++)
        for (int t = 0; t < count; t++)
            dst[(size_t)c * count + t] =
                r->track ? r->track[(size_t)c * r->frames + start + t] : synth(start + t, c);
    if (r->progress_calls > 0) {
        if (start + count > r->read_end)
            r->read_end = start + count;
        if (r->read_end - r->written > r->max_lag)
            r->max_lag = r->read_end - r->written;
    }
    return 0;
}

static int write_cb(void *user, int64_t start, int count, const float *src)
{
    run_ctx *r = user;
    if (start != r->written || count <= 0 || start + count > r->frames)
        r->order_ok = 0;
    for (int s = 0; s < r->n_stems; s++)
        for (int c = 0; c < r->channels; c++)
            for (int t = 0; t < count; t++) {
                float v = src[((size_t)s * r->channels + c) * count + t];
                size_t at = ((size_t)s * r->channels + c) * r->frames + start + t;
                r->checksum += v * (1.0 + 1e-3 * ((start + t) % 1000));
                if (r->ref) {
                    double e = fabs((double)v - r->ref[at]);
                    if (!(e <= r->max_err))
                        r->max_err = isnan(e) ? INFINITY : e;
                    if (fabs(r->ref[at]) > r->max_ref)
                        r->max_ref = fabs(r->ref[at]);
                }
                if (r->keep)
                    r->keep[at] = v;
            }
    r->written += count;
    if (r->abort_write_at && r->written >= r->abort_write_at)
        return 1;
    return 0;
}

static int progress_cb(void *user, double f)
{
    run_ctx *r = user;
    if (f < r->last_progress || f > 1.0)
        r->progress_ok = 0;
    r->last_progress = f;
    r->progress_calls++;
    return r->cancel_progress && r->progress_calls > 2;
}

static void init_ctx(run_ctx *r, const float *track, int64_t frames, int channels, const float *ref,
                     int n_stems)
{
    memset(r, 0, sizeof(*r));
    r->track = track;
    r->frames = frames;
    r->channels = channels;
    r->ref = ref;
    r->n_stems = n_stems;
    r->order_ok = 1;
    r->progress_ok = 1;
}

static int run(sep_engine *e, const sep_model *m, const sep_apply_opts *o, run_ctx *r, char *err,
               size_t errlen)
{
    sep_apply_io io = {.frames = r->frames,
                       .channels = r->channels,
                       .read = read_cb,
                       .write = write_cb,
                       .progress = progress_cb,
                       .user = r};
    return sep_apply_run(e, m, o, &io, err, errlen);
}

static float *read_track(const char *path, int64_t *frames, int *channels)
{
    SF_INFO info = {0};
    SNDFILE *sf = sf_open(path, SFM_READ, &info);
    if (!sf)
        return NULL;
    float *inter = malloc(sizeof(float) * info.frames * info.channels);
    float *planar = malloc(sizeof(float) * info.frames * info.channels);
    sf_readf_float(sf, inter, info.frames);
    sf_close(sf);
    for (int c = 0; c < info.channels; c++)
        for (sf_count_t t = 0; t < info.frames; t++)
            planar[(size_t)c * info.frames + t] = inter[(size_t)t * info.channels + c];
    free(inter);
    *frames = info.frames;
    *channels = info.channels;
    return planar;
}

static float *read_f32(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    float *buf = malloc(sizeof(float) * n);
    size_t got = fread(buf, sizeof(float), n, f);
    fclose(f);
    if (got != n) {
        free(buf);
        return NULL;
    }
    return buf;
}

typedef struct {
    sep_model *model;
    sep_engine *engine;
    char path[1024];
} loaded_model;

static int load(loaded_model *lm, const char *dir, const char *file, int max_batch)
{
    char err[512];
    snprintf(lm->path, sizeof(lm->path), "%s/%s", dir, file);
    lm->model = sep_model_load(lm->path, err, sizeof(err));
    if (!lm->model) {
        printf("FAIL cannot load %s: %s\n", lm->path, err);
        failures++;
        return -1;
    }
    sep_engine_opts eo = {.device = "cpu", .threads = 1, .max_batch = max_batch};
    lm->engine = sep_engine_create(lm->model, &eo, err, sizeof(err));
    if (!lm->engine) {
        printf("FAIL cannot create engine for %s: %s\n", lm->path, err);
        failures++;
        sep_model_free(lm->model);
        return -1;
    }
    return 0;
}

static void unload(loaded_model *lm)
{
    sep_engine_free(lm->engine);
    sep_model_free(lm->model);
}

/* One reference case from cases.json, run with the given batch size. */
static void run_case(const char *dir, json_t *c, const float *track, int64_t frames, int channels,
                     int batch)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *file = json_string_value(json_object_get(c, "model"));
    const char *out = json_string_value(json_object_get(c, "output"));
    json_t *stems = json_object_get(c, "stems");
    loaded_model lm;
    if (load(&lm, dir, file, batch))
        return;
    sep_apply_opts o;
    sep_apply_opts_default(&o);
    o.overlap = json_real_value(json_object_get(c, "overlap"));
    o.shifts = (int)json_integer_value(json_object_get(c, "shifts"));
    json_t *seg = json_object_get(c, "segment");
    o.segment = json_is_number(seg) ? json_number_value(seg) : 0.0;
    json_t *two = json_object_get(c, "two_stems");
    o.two_stems =
        json_is_string(two) ? sep_model_source_index(lm.model, json_string_value(two)) : -1;
    o.max_batch = batch;
    int offsets[SEP_MAX_BAG * SEP_APPLY_MAX_SHIFTS];
    json_t *offs = json_object_get(c, "shift_offsets");
    for (size_t i = 0; i < json_array_size(offs) && i < sizeof(offsets) / sizeof(int); i++)
        offsets[i] = (int)json_integer_value(json_array_get(offs, i));
    o.shift_offsets = json_array_size(offs) ? offsets : NULL;

    char names[SEP_MAX_SOURCES][40];
    int n_stems = sep_apply_stems(lm.model, &o, names);
    CHECK(n_stems == (int)json_array_size(stems), "%s: %d stems, reference has %zu", name, n_stems,
          json_array_size(stems));
    for (int s = 0; s < n_stems && s < (int)json_array_size(stems); s++)
        CHECK(strcmp(names[s], json_string_value(json_array_get(stems, s))) == 0,
              "%s: stem %d is %s, reference %s", name, s, names[s],
              json_string_value(json_array_get(stems, s)));

    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, out);
    float *ref = read_f32(path, (size_t)n_stems * channels * frames);
    CHECK(ref != NULL, "cannot read %s", path);
    if (ref) {
        run_ctx r;
        init_ctx(&r, track, frames, channels, ref, n_stems);
        char err[512] = "";
        int rc = run(lm.engine, lm.model, &o, &r, err, sizeof(err));
        CHECK(rc == 0, "%s: sep_apply_run failed: %s", name, err);
        CHECK(r.order_ok && r.written == frames, "%s: output not written once in order", name);
        CHECK(r.progress_ok && r.last_progress == 1.0, "%s: progress not monotonic to 1", name);
        CHECK(r.max_err <= TOLERANCE, "%s (batch %d): max abs error %.3g > %.1g", name, batch,
              r.max_err, TOLERANCE);
        printf("MAXERR %-34s batch=%d max_abs=%.3g ref_peak=%.3f tol=%.0e\n", name, batch,
               r.max_err, r.max_ref, TOLERANCE);
        free(ref);
    }
    unload(&lm);
}

/* Producer/consumer: up to 3 batches out at once, put back newest first. */
static void run_case_pc(const char *dir, json_t *c, const float *track, int64_t frames,
                        int channels)
{
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *file = json_string_value(json_object_get(c, "model"));
    const char *outname = json_string_value(json_object_get(c, "output"));
    enum { BATCH = 2, INFLIGHT = 3 };
    loaded_model lm;
    if (load(&lm, dir, file, BATCH))
        return;
    const sep_model_info *info = sep_model_get_info(lm.model);
    sep_apply_opts o;
    sep_apply_opts_default(&o);
    o.overlap = json_real_value(json_object_get(c, "overlap"));
    o.shifts = (int)json_integer_value(json_object_get(c, "shifts"));
    json_t *seg = json_object_get(c, "segment");
    o.segment = json_is_number(seg) ? json_number_value(seg) : 0.0;
    json_t *two = json_object_get(c, "two_stems");
    o.two_stems =
        json_is_string(two) ? sep_model_source_index(lm.model, json_string_value(two)) : -1;
    o.max_batch = BATCH;
    o.max_inflight = INFLIGHT;
    int offsets[SEP_MAX_BAG * SEP_APPLY_MAX_SHIFTS];
    json_t *offs = json_object_get(c, "shift_offsets");
    for (size_t i = 0; i < json_array_size(offs) && i < sizeof(offsets) / sizeof(int); i++)
        offsets[i] = (int)json_integer_value(json_array_get(offs, i));
    o.shift_offsets = json_array_size(offs) ? offsets : NULL;
    int n_stems = sep_apply_stems(lm.model, &o, NULL);
    char path[1200];
    snprintf(path, sizeof(path), "%s/%s", dir, outname);
    float *ref = read_f32(path, (size_t)n_stems * channels * frames);
    CHECK(ref != NULL, "cannot read %s", path);
    size_t seg_floats = (size_t)info->audio_channels * info->segment_samples;
    float *in = malloc(sizeof(float) * BATCH * seg_floats);
    float *out[INFLIGHT];
    for (int i = 0; i < INFLIGHT; i++)
        out[i] = malloc(sizeof(float) * BATCH * info->n_sources * seg_floats);
    run_ctx r;
    init_ctx(&r, track, frames, channels, ref, n_stems);
    r.progress_calls = 1; /* track read-ahead from the start */
    sep_apply_io io = {
        .frames = frames, .channels = channels, .read = read_cb, .write = write_cb, .user = &r};
    char err[512] = "";
    sep_apply_state *st = ref ? sep_apply_begin(lm.model, &o, &io, err, sizeof(err)) : NULL;
    CHECK(!ref || st, "%s: sep_apply_begin failed: %s", name, err);
    int max_out = 0, rounds = 0, one_model = 1;
    double last_fraction = 0.0;
    while (st && !sep_apply_done(st) && rounds < 100000) {
        sep_apply_chunk desc[INFLIGHT];
        int k = 0;
        while (k < INFLIGHT) {
            int n = sep_apply_next(st, in, BATCH, &desc[k]);
            CHECK(n >= 0, "%s: sep_apply_next: %s", name, sep_apply_error(st));
            if (n <= 0)
                break;
            CHECK(desc[k].n == n && desc[k].length == info->segment_samples &&
                      desc[k].model_index >= 0 && desc[k].model_index < info->n_models,
                  "%s: bad descriptor", name);
            /* the network runs the whole batch: one model_index for all its segments */
            if (sep_engine_forward(lm.engine, desc[k].model_index, in, n, desc[k].length, out[k],
                                   err, sizeof(err)))
                one_model = 0;
            k++;
        }
        if (k == 0) {
            CHECK(0, "%s: nothing handed out before the end (pending %d)", name,
                  sep_apply_pending(st));
            break;
        }
        if (k > max_out)
            max_out = k;
        CHECK(sep_apply_pending(st) == k, "%s: pending %d, handed out %d", name,
              sep_apply_pending(st), k);
        /* a put of a batch that is not outstanding is refused */
        sep_apply_chunk bogus = desc[0];
        bogus.seq += 1000;
        CHECK(sep_apply_put(st, &bogus, out[0], bogus.n) != 0, "%s: stale put accepted", name);
        for (int j = k - 1; j >= 0; j--)
            CHECK(sep_apply_put(st, &desc[j], out[j], desc[j].n) == 0, "%s: put: %s", name,
                  sep_apply_error(st));
        CHECK(sep_apply_fraction(st) >= last_fraction, "%s: fraction went back", name);
        last_fraction = sep_apply_fraction(st);
        rounds++;
    }
    if (st) {
        CHECK(sep_apply_done(st) && r.order_ok && r.written == frames,
              "%s: producer/consumer output not written once in order", name);
        CHECK(last_fraction == 1.0, "%s: fraction ends at %g", name, last_fraction);
        CHECK(one_model, "%s: forward failed", name);
        CHECK(r.max_err <= TOLERANCE, "%s (producer/consumer): max abs error %.3g > %.1g", name,
              r.max_err, TOLERANCE);
        printf("MAXERR %-34s pc batch=%d inflight=%d (max out %d) max_abs=%.3g tol=%.0e\n", name,
               BATCH, INFLIGHT, max_out, r.max_err, TOLERANCE);
        sep_apply_end(st);
    }
    free(in);
    for (int i = 0; i < INFLIGHT; i++)
        free(out[i]);
    free(ref);
    unload(&lm);
}

/* Streaming: a track 30 segments long; written output must follow the reads closely. */
static void test_streaming(const char *dir)
{
    loaded_model lm;
    if (load(&lm, dir, "tiny_apply.safetensors", 2))
        return;
    const sep_model_info *info = sep_model_get_info(lm.model);
    sep_apply_opts o;
    sep_apply_opts_default(&o);
    o.shifts = 1;
    o.max_batch = 2;
    int64_t frames = (int64_t)info->segment_samples * 30 + 123;
    run_ctx r;
    init_ctx(&r, NULL, frames, info->audio_channels, NULL, info->n_sources);
    char err[512] = "";
    int rc = run(lm.engine, lm.model, &o, &r, err, sizeof(err));
    CHECK(rc == 0, "streaming run failed: %s", err);
    CHECK(r.order_ok && r.written == frames, "streaming: output not complete and in order");
    /* read-ahead bound: one window plus a batch of strides plus the shift padding */
    int64_t seg = info->segment_samples, stride = (int64_t)(0.75 * seg);
    int64_t bound = 2 * seg + 2 * stride + info->samplerate / 2;
    CHECK(r.max_lag <= bound, "streaming: read ran %lld frames ahead of output (bound %lld)",
          (long long)r.max_lag, (long long)bound);
    printf("RESULT streaming: %lld frames, max read-ahead of output %lld frames (bound %lld), "
           "working memory %zu bytes\n",
           (long long)frames, (long long)r.max_lag, (long long)bound,
           sep_apply_memory_bytes(lm.model, &o));
    unload(&lm);
}

/* Seeded shifts are reproducible; another seed gives another result. */
static void test_seeded_shifts(const float *track, int64_t frames, int channels, const char *dir)
{
    loaded_model lm;
    if (load(&lm, dir, "tiny_apply.safetensors", 1))
        return;
    sep_apply_opts o;
    sep_apply_opts_default(&o);
    o.shifts = 2;
    double sums[3];
    uint64_t seeds[3] = {42, 42, 43};
    for (int i = 0; i < 3; i++) {
        run_ctx r;
        init_ctx(&r, track, frames, channels, NULL, 4);
        o.seed = seeds[i];
        char err[512] = "";
        CHECK(run(lm.engine, lm.model, &o, &r, err, sizeof(err)) == 0, "shifts run: %s", err);
        sums[i] = r.checksum;
    }
    CHECK(sums[0] == sums[1], "same seed gave different outputs");
    CHECK(sums[0] != sums[2], "different seeds gave identical outputs");
    unload(&lm);
}

static void test_errors(const float *track, int64_t frames, int channels, const char *dir)
{
    loaded_model lm;
    if (load(&lm, dir, "tiny_apply.safetensors", 1))
        return;
    char err[512];
    sep_apply_opts o;
    run_ctx r;

    sep_apply_opts_default(&o);
    o.segment = sep_model_get_info(lm.model)->segment_seconds + 0.1; /* past the model's */
    err[0] = '\0';
    init_ctx(&r, track, frames, channels, NULL, 4);
    CHECK(run(lm.engine, lm.model, &o, &r, err, sizeof(err)) != 0 && strstr(err, "segment"),
          "segment longer than the model's accepted (%s)", err);

    sep_apply_opts_default(&o);
    o.overlap = 1.0;
    CHECK(sep_apply_check(lm.model, &o, err, sizeof(err)) != 0, "overlap 1 accepted");

    sep_apply_opts_default(&o);
    init_ctx(&r, track, frames, 1, NULL, 4);
    CHECK(run(lm.engine, lm.model, &o, &r, err, sizeof(err)) != 0 && strstr(err, "channels"),
          "mono track accepted by a stereo model (%s)", err);

    init_ctx(&r, track, frames, channels, NULL, 4);
    r.abort_write_at = 1;
    CHECK(run(lm.engine, lm.model, &o, &r, err, sizeof(err)) != 0 && strstr(err, "writing"),
          "write abort not reported (%s)", err);

    init_ctx(&r, track, frames, channels, NULL, 4);
    r.cancel_progress = 1;
    CHECK(run(lm.engine, lm.model, &o, &r, err, sizeof(err)) != 0 && strstr(err, "canceled"),
          "progress cancel not reported (%s)", err);

    /* a track shorter than one segment and a one-frame track still come out whole */
    int64_t lengths[] = {1000, 1};
    for (int i = 0; i < 2; i++) {
        init_ctx(&r, track, lengths[i], channels, NULL, 4);
        r.track = NULL; /* generated signal */
        CHECK(run(lm.engine, lm.model, &o, &r, err, sizeof(err)) == 0 && r.written == lengths[i] &&
                  r.order_ok,
              "%lld-frame track failed (%s)", (long long)lengths[i], err);
    }
    unload(&lm);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    char path[1024];
    snprintf(path, sizeof(path), "%s/cases.json", dir);
    json_error_t jerr;
    json_t *manifest = json_load_file(path, 0, &jerr);
    if (!manifest) {
        printf("FAIL cannot read %s: %s\n", path, jerr.text);
        return 1;
    }
    snprintf(path, sizeof(path), "%s/%s", dir,
             json_string_value(json_object_get(manifest, "track")));
    int64_t frames;
    int channels;
    float *track = read_track(path, &frames, &channels);
    if (!track) {
        printf("FAIL cannot read %s\n", path);
        return 1;
    }
    json_t *cases = json_object_get(manifest, "cases");
    for (size_t i = 0; i < json_array_size(cases); i++)
        run_case(dir, json_array_get(cases, i), track, frames, channels, 1);
    /* batching: several segments (and passes) per forward call, same numbers */
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const char *name = json_string_value(json_object_get(json_array_get(cases, i), "name"));
        if (strcmp(name, "single_overlap25") == 0 || strcmp(name, "single_shifts2") == 0 ||
            strcmp(name, "bag_overlap50") == 0)
            run_case(dir, json_array_get(cases, i), track, frames, channels, 3);
    }
    for (size_t i = 0; i < json_array_size(cases); i++)
        run_case_pc(dir, json_array_get(cases, i), track, frames, channels);
    test_streaming(dir);
    test_seeded_shifts(track, frames, channels, dir);
    test_errors(track, frames, channels, dir);

    size_t n_cases = json_array_size(cases);
    free(track);
    json_decref(manifest);
    printf("CASES: %d passed, %d failed, 0 skipped\n", checks - failures, failures);
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("PASS apply: %zu reference cases + batching, producer/consumer, streaming, seeds, "
           "errors\n",
           n_cases);
    return 0;
}
