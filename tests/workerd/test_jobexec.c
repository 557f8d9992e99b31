/*
 * test_jobexec.c - the job runner (workerd/jobexec.h) on the tiny fixture model
 * (tests/fixtures/apply/tiny_apply.safetensors) with the in-process forwarder and
 * scripted forwarders.
 *
 *   - a WAV input -> stems of the right length, rate and channels, sample for sample
 *     equal to sep_apply_run's output (float WAV, clip none); file names with a tag,
 *     sizes, timings; 16-bit defaults; two-stem mode
 *   - float output keeps samples beyond +-1 with clip none (f32), clamps otherwise
 *   - bad inputs: NaN and Inf samples, an empty file, a header without frames, a WAV
 *     and a FLAC cut short, garbage -> invalid_audio; a missing file -> input_missing;
 *     bad options -> invalid_options; no model -> model_unavailable; a temporary
 *     folder that cannot be written -> io_error; nothing left in the output folder
 *   - cancel from the progress callback and the stop flag -> canceled / interrupted,
 *     no files
 *   - forwarder codes: -1 model_unavailable, -2 worker_crashed (and crash_retries),
 *     -3 time_limit_hard, -4 device_error, or the fallback forwarder takes over
 *   - soft and hard time limits
 *   - progress throttling: reports at least progress_interval apart, every stage
 *     reported, at most 5 % apart when 5 % of the work takes longer than the interval
 *   - two jobs on two threads with one shared recording forwarder: their calls
 *     overlap in time (the runner does not serialise jobs) and interleave, and each
 *     job's stems equal a job run alone
 *
 * usage: test_jobexec FIXTURE_DIR   (cmocka)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sndfile.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/apply.h"
#include "models/engine.h"
#include "models/util.h"
#include "workerd/forward.h"
#include "workerd/jobexec.h"

static const char *fixtures;
static char tmp_root[512];
static sep_model *model;
static sep_engine *engine;
static sep_engine_forwarder engine_fwd;
static const sep_model_info *info;

/* ---- helpers ------------------------------------------------------------------------ */

static void path_in(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmp_root, name);
}

static float synth(int64_t t, int c)
{
    double x = t / 44100.0;
    return (float)(0.3 * sin(2 * M_PI * (110 + 30 * c) * x) * (0.6 + 0.4 * sin(2 * M_PI * x)) +
                   0.1 * sin(2 * M_PI * 1234.5 * x + c) + 0.01);
}

/* A WAV of `frames` synthetic frames; sample `bad_at` of channel 0 set to bad_value. */
static void write_wav(const char *path, int format, int rate, int channels, int64_t frames,
                      int64_t bad_at, float bad_value)
{
    SF_INFO si = {.samplerate = rate, .channels = channels, .format = format};
    SNDFILE *sf = sf_open(path, SFM_WRITE, &si);
    assert_non_null(sf);
    float *buf = malloc(sizeof(float) * 4096 * channels);
    for (int64_t pos = 0; pos < frames; pos += 4096) {
        int n = (int)(frames - pos < 4096 ? frames - pos : 4096);
        for (int t = 0; t < n; t++)
            for (int c = 0; c < channels; c++)
                buf[t * channels + c] = pos + t == bad_at && c == 0 ? bad_value : synth(pos + t, c);
        assert_int_equal(sf_writef_float(sf, buf, n), n);
    }
    free(buf);
    sf_close(sf);
}

/* [channels][frames] of a file as libsndfile reads it. */
static float *read_planar(const char *path, SF_INFO *si)
{
    memset(si, 0, sizeof(*si));
    SNDFILE *sf = sf_open(path, SFM_READ, si);
    if (!sf)
        return NULL;
    float *inter = malloc(sizeof(float) * si->frames * si->channels);
    float *planar = malloc(sizeof(float) * si->frames * si->channels);
    sf_count_t got = sf_readf_float(sf, inter, si->frames);
    sf_close(sf);
    assert_int_equal(got, si->frames);
    for (int c = 0; c < si->channels; c++)
        for (sf_count_t t = 0; t < si->frames; t++)
            planar[(size_t)c * si->frames + t] = inter[(size_t)t * si->channels + c];
    free(inter);
    return planar;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* The output folder holds nothing (or does not exist). */
static void assert_no_files(const char *dir)
{
    int n = count_entries(dir);
    if (n > 0)
        fail_msg("'%s' holds %d entries after a failed job", dir, n);
}

static void base_spec(sep_job_spec *s, const char *input, const char *outdir)
{
    sep_job_spec_init(s);
    s->forward = sep_engine_forward_fn;
    s->forward_ctx = &engine_fwd;
    s->model = model;
    s->model_name = info->name;
    s->input_path = input;
    s->output_dir = outdir;
    s->seed = 7;
    s->max_batch = 2;
}

/* sep_apply_run's output for a planar track, [stems][channels][frames]. */
typedef struct {
    const float *track;
    int64_t frames;
    float *out;
    int n_stems;
} ref_ctx;

static int ref_read(void *user, int64_t start, int count, float *dst)
{
    ref_ctx *r = user;
    for (int c = 0; c < info->audio_channels; c++)
        memcpy(dst + (size_t)c * count, r->track + (size_t)c * r->frames + start,
               sizeof(float) * count);
    return 0;
}

static int ref_write(void *user, int64_t start, int count, const float *src)
{
    ref_ctx *r = user;
    for (int s = 0; s < r->n_stems; s++)
        for (int c = 0; c < info->audio_channels; c++)
            memcpy(r->out + ((size_t)s * info->audio_channels + c) * r->frames + start,
                   src + ((size_t)s * info->audio_channels + c) * count, sizeof(float) * count);
    return 0;
}

static float *reference(const char *input, const sep_job_spec *spec, int64_t *frames_out)
{
    SF_INFO si;
    float *track = read_planar(input, &si);
    assert_non_null(track);
    sep_apply_opts o;
    sep_apply_opts_default(&o);
    o.shifts = spec->shifts;
    o.overlap = spec->overlap;
    o.seed = spec->seed;
    o.max_batch = spec->max_batch;
    o.two_stems = spec->stems ? sep_model_source_index(model, spec->stems) : -1;
    ref_ctx r = {.track = track, .frames = si.frames, .n_stems = sep_apply_stems(model, &o, NULL)};
    r.out = malloc(sizeof(float) * r.n_stems * info->audio_channels * si.frames);
    sep_apply_io io = {.frames = si.frames,
                       .channels = info->audio_channels,
                       .read = ref_read,
                       .write = ref_write,
                       .user = &r};
    char err[256];
    assert_int_equal(sep_apply_run(engine, model, &o, &io, err, sizeof(err)), 0);
    free(track);
    *frames_out = si.frames;
    return r.out;
}

/* Largest |stem file - reference| over every stem of an outcome. */
static double compare_stems(const char *outdir, const sep_job_outcome *o, const float *ref,
                            int64_t frames)
{
    double max_err = 0;
    for (int s = 0; s < o->n_stems; s++) {
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", outdir, o->stems[s].file);
        SF_INFO si;
        float *got = read_planar(p, &si);
        assert_non_null(got);
        assert_int_equal(si.frames, frames);
        assert_int_equal(si.channels, info->audio_channels);
        assert_int_equal(si.samplerate, info->samplerate);
        for (int c = 0; c < si.channels; c++)
            for (int64_t t = 0; t < frames; t++) {
                double e = fabs((double)got[(size_t)c * frames + t] -
                                ref[((size_t)s * si.channels + c) * frames + t]);
                if (!(e <= max_err))
                    max_err = isnan(e) ? INFINITY : e;
            }
        free(got);
    }
    return max_err;
}

/* ---- scripted forwarders ------------------------------------------------------------ */

typedef struct {
    int fail_code;     /* returned ... */
    int fail_from;     /* ... from this call on (0-based) */
    int fail_count;    /* ... this many times (0 = forever) */
    double sleep_s;    /* per call */
    float gain;        /* 0: run the engine; else out = gain * in for every source */
    int nan_from;      /* > 0: outputs of this call on (1-based) hold a NaN */
    atomic_int calls;  /* calls made */
    atomic_int failed; /* failures returned */
} script_fwd;

static int script_forward(void *ctx, const char *m, int mi, const float *in, int n, int length,
                          float *out, double deadline, char *err, size_t errlen)
{
    script_fwd *f = ctx;
    int k = atomic_fetch_add(&f->calls, 1);
    if (f->sleep_s > 0)
        usleep((useconds_t)(f->sleep_s * 1e6));
    if (f->fail_code && k >= f->fail_from &&
        (f->fail_count == 0 || atomic_load(&f->failed) < f->fail_count)) {
        atomic_fetch_add(&f->failed, 1);
        snprintf(err, errlen, "scripted failure %d", f->fail_code);
        return f->fail_code;
    }
    if (f->nan_from > 0 && k + 1 >= f->nan_from) {
        int rc =
            sep_engine_forward_fn(&engine_fwd, m, mi, in, n, length, out, deadline, err, errlen);
        out[(size_t)n * info->n_sources * info->audio_channels * length - 1] = NAN;
        return rc;
    }
    if (f->gain != 0) {
        size_t seg = (size_t)info->audio_channels * length;
        for (int b = 0; b < n; b++)
            for (int s = 0; s < info->n_sources; s++)
                for (size_t i = 0; i < seg; i++)
                    out[((size_t)b * info->n_sources + s) * seg + i] = f->gain * in[b * seg + i];
        return 0;
    }
    return sep_engine_forward_fn(&engine_fwd, m, mi, in, n, length, out, deadline, err, errlen);
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_wav_to_stems_equals_apply(void **state)
{
    (void)state;
    char input[1024], outdir[1024];
    snprintf(input, sizeof(input), "%s/track.wav", fixtures);
    path_in(outdir, sizeof(outdir), "out_f32");
    sep_job_spec s;
    base_spec(&s, input, outdir);
    s.format = SEP_OUT_WAVF32;
    s.clip = SEP_CLIP_NONE;
    s.file_tag = "a1";
    sep_job_outcome o;
    int rc = sep_job_execute(&s, &o);
    if (rc)
        fail_msg("job failed: %s: %s", o.code_name, o.message);
    assert_int_equal(o.code, SEP_JOB_OK);
    assert_string_equal(o.code_name, "ok");
    assert_int_equal(o.n_stems, 4);
    assert_int_equal(o.samplerate, 44100);
    assert_int_equal(o.channels, 2);
    assert_int_equal(o.src_samplerate, 44100);
    assert_int_equal(o.src_channels, 2);
    assert_int_equal(o.frames, 7501);
    assert_true(fabs(o.audio_seconds - 7501 / 44100.0) < 1e-9);
    assert_true(o.decode_s >= 0 && o.separate_s > 0 && o.encode_s >= 0);
    assert_true(o.segments > 0 && o.batches > 0 && o.batches <= o.segments);
    assert_string_equal(o.stems[0].name, "drums");
    assert_string_equal(o.stems[0].file, "drums.a1.wav");
    assert_string_equal(o.stems[3].file, "vocals.a1.wav");
    for (int i = 0; i < o.n_stems; i++) {
        char p[1200];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", outdir, o.stems[i].file);
        assert_int_equal(stat(p, &st), 0);
        assert_int_equal(st.st_size, o.stems[i].bytes);
    }
    assert_int_equal(count_entries(outdir), 4); /* no temporary files left */
    int64_t frames;
    float *ref = reference(input, &s, &frames);
    double err = compare_stems(outdir, &o, ref, frames);
    printf("MAXERR jobexec_f32_vs_sep_apply_run max_abs=%.3g (4 stems, %lld frames)\n", err,
           (long long)frames);
    assert_true(err <= 1e-6);
    free(ref);

    /* API defaults: 16-bit WAV, names without a tag; two-stem mode */
    path_in(outdir, sizeof(outdir), "out_wav16");
    base_spec(&s, input, outdir);
    s.stems = "vocals";
    assert_int_equal(sep_job_execute(&s, &o), 0);
    assert_int_equal(o.n_stems, 2);
    assert_string_equal(o.stems[0].file, "vocals.wav");
    assert_string_equal(o.stems[1].file, "no_vocals.wav");
    char p[1200];
    snprintf(p, sizeof(p), "%s/no_vocals.wav", outdir);
    SF_INFO si = {0};
    SNDFILE *sf = sf_open(p, SFM_READ, &si);
    assert_non_null(sf);
    sf_close(sf);
    assert_int_equal(si.format, SF_FORMAT_WAV | SF_FORMAT_PCM_16);
    assert_int_equal(si.frames, 7501);
}

static void test_float_keeps_beyond_one(void **state)
{
    (void)state;
    char input[1024], outdir[1024];
    snprintf(input, sizeof(input), "%s/track.wav", fixtures);
    script_fwd f = {.gain = 4.0f}; /* every stem about 4x the mix: peaks well above 1 */
    struct {
        sep_out_format fmt;
        sep_clip_mode clip;
        const char *dir;
        int beyond; /* expect |x| > 1 in the file */
    } cases[] = {
        {SEP_OUT_WAVF32, SEP_CLIP_NONE, "float_none", 1},
        {SEP_OUT_WAVF32, SEP_CLIP_AUTO, "float_auto", 1}, /* format=f32 through the API */
        {SEP_OUT_WAVF32, SEP_CLIP_RESCALE, "float_rescale", 0},
        {SEP_OUT_WAV24, SEP_CLIP_NONE, "int24_none", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        path_in(outdir, sizeof(outdir), cases[i].dir);
        sep_job_spec s;
        base_spec(&s, input, outdir);
        s.forward = script_forward;
        s.forward_ctx = &f;
        s.format = cases[i].fmt;
        s.clip = cases[i].clip;
        sep_job_outcome o;
        assert_int_equal(sep_job_execute(&s, &o), 0);
        char p[1200];
        snprintf(p, sizeof(p), "%s/%s", outdir, o.stems[0].file);
        SF_INFO si;
        float *x = read_planar(p, &si);
        assert_non_null(x);
        float peak = 0;
        for (int64_t k = 0; k < si.frames * si.channels; k++)
            peak = fmaxf(peak, fabsf(x[k]));
        free(x);
        printf("RESULT %s: stem peak %.3f\n", cases[i].dir, peak);
        if (cases[i].beyond)
            assert_true(peak > 1.0f);
        else
            assert_true(peak <= 1.0f);
    }
}

static void expect_failure(const char *input, const char *outdir, sep_job_code code,
                           const char *needle)
{
    sep_job_spec s;
    base_spec(&s, input, outdir);
    sep_job_outcome o;
    int rc = sep_job_execute(&s, &o);
    assert_int_equal(rc, -1);
    if (o.code != code)
        fail_msg("%s: got %s (%s), expected %s", input, o.code_name, o.message,
                 sep_job_code_name(code));
    assert_string_equal(o.code_name, sep_job_code_name(code));
    assert_int_equal(o.retryable, sep_job_code_retryable(code));
    if (needle && !strstr(o.message, needle))
        fail_msg("message '%s' does not mention '%s'", o.message, needle);
    assert_int_equal(o.n_stems, 0);
    assert_no_files(outdir);
}

static void test_bad_inputs(void **state)
{
    (void)state;
    char p[1024], outdir[1024];
    path_in(outdir, sizeof(outdir), "out_bad");

    path_in(p, sizeof(p), "nan.wav");
    write_wav(p, SF_FORMAT_WAV | SF_FORMAT_FLOAT, 44100, 2, 20000, 12345, NAN);
    expect_failure(p, outdir, SEP_JOB_INVALID_AUDIO, "NaN");
    path_in(p, sizeof(p), "inf.wav");
    write_wav(p, SF_FORMAT_WAV | SF_FORMAT_FLOAT, 44100, 2, 20000, 3, -INFINITY);
    expect_failure(p, outdir, SEP_JOB_INVALID_AUDIO, "Inf");

    path_in(p, sizeof(p), "empty.wav");
    FILE *f = fopen(p, "wb");
    fclose(f);
    expect_failure(p, outdir, SEP_JOB_INVALID_AUDIO, "empty");

    path_in(p, sizeof(p), "noframes.wav");
    write_wav(p, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 44100, 2, 0, -1, 0);
    expect_failure(p, outdir, SEP_JOB_INVALID_AUDIO, "no audio frames");

    /* cut in half: a WAV whose data chunk says more, a FLAC stream ending early */
    const struct {
        const char *name;
        int format;
    } cut[] = {{"cut.wav", SF_FORMAT_WAV | SF_FORMAT_PCM_16},
               {"cut.flac", SF_FORMAT_FLAC | SF_FORMAT_PCM_16}};
    for (int i = 0; i < 2; i++) {
        char full[1024];
        path_in(full, sizeof(full), "full.tmp");
        write_wav(full, cut[i].format, 44100, 2, 44100, -1, 0);
        struct stat st;
        assert_int_equal(stat(full, &st), 0);
        path_in(p, sizeof(p), cut[i].name);
        assert_int_equal(rename(full, p), 0);
        assert_int_equal(truncate(p, st.st_size / 2), 0);
        expect_failure(p, outdir, SEP_JOB_INVALID_AUDIO, "truncated");
    }

    path_in(p, sizeof(p), "garbage.wav");
    f = fopen(p, "wb");
    for (int i = 0; i < 5000; i++)
        fputc((i * 7919 + 13) & 0xff, f);
    fclose(f);
    expect_failure(p, outdir, SEP_JOB_INVALID_AUDIO, "not a supported audio file");

    path_in(p, sizeof(p), "does-not-exist.wav");
    expect_failure(p, outdir, SEP_JOB_INPUT_MISSING, "No such file");
}

static void test_bad_options_model_io(void **state)
{
    (void)state;
    char input[1024], outdir[1024];
    snprintf(input, sizeof(input), "%s/track.wav", fixtures);
    path_in(outdir, sizeof(outdir), "out_opts");
    sep_job_spec s;
    sep_job_outcome o;

    base_spec(&s, input, outdir);
    s.stems = "kazoo";
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_INVALID_OPTIONS);
    assert_non_null(strstr(o.message, "kazoo"));
    assert_false(o.retryable);

    base_spec(&s, input, outdir);
    s.overlap = 1.0;
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_INVALID_OPTIONS);

    base_spec(&s, input, outdir);
    s.shifts = -1;
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_INVALID_OPTIONS);

    base_spec(&s, input, outdir);
    s.model = NULL;
    s.model_name = "htdemucs_9s";
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_MODEL_UNAVAILABLE);
    assert_false(o.retryable);

    /* the engine forwarder answers only to its own model name */
    sep_engine_forwarder named;
    sep_engine_forwarder_init(&named, engine, model, "htdemucs", 2);
    base_spec(&s, input, outdir);
    s.forward_ctx = &named;
    s.model_name = "htdemucs_6s";
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_MODEL_UNAVAILABLE);
    sep_engine_forwarder_destroy(&named);

    base_spec(&s, input, outdir);
    s.tmp_dir = "/nonexistent/tmp/dir";
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_IO_ERROR);
    assert_true(o.retryable);
    assert_no_files(outdir);

    assert_int_equal(sep_job_code_retryable(SEP_JOB_INVALID_AUDIO), 0);
    sep_out_format fmt;
    assert_int_equal(sep_job_format_from_name("f32", &fmt), 0);
    assert_int_equal(fmt, SEP_OUT_WAVF32);
    assert_int_equal(sep_job_format_from_name("flac", &fmt), 0);
    assert_int_equal(fmt, SEP_OUT_FLAC16);
    assert_int_equal(sep_job_format_from_name("mp3", &fmt), -1);
}

typedef struct {
    int calls, cancel_at;
    const char *cancel_stage;
    atomic_int *stop;
    int stop_value;
} cancel_ctx;

static int cancel_progress(void *user, const char *stage, double fraction)
{
    cancel_ctx *c = user;
    (void)fraction;
    if (strcmp(stage, c->cancel_stage) != 0)
        return 0;
    if (++c->calls < c->cancel_at)
        return 0;
    if (c->stop) {
        atomic_store(c->stop, c->stop_value);
        return 0;
    }
    return 1;
}

static void test_cancel(void **state)
{
    (void)state;
    char input[1024], outdir[1024];
    path_in(input, sizeof(input), "long.wav");
    write_wav(input, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 44100, 2, 44100 * 3, -1, 0);
    const struct {
        const char *stage;
        int stop_value; /* 0: the callback's return value cancels */
        sep_job_code code;
    } cases[] = {
        {"separate", 0, SEP_JOB_CANCELED},
        {"encode", 0, SEP_JOB_CANCELED},
        {"decode", 0, SEP_JOB_CANCELED},
        {"separate", SEP_JOB_STOP_CANCEL, SEP_JOB_CANCELED},
        {"separate", SEP_JOB_STOP_REQUEUE, SEP_JOB_INTERRUPTED},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        atomic_int stop = 0;
        cancel_ctx c = {.cancel_at = 2, .cancel_stage = cases[i].stage};
        if (cases[i].stop_value) {
            c.stop = &stop;
            c.stop_value = cases[i].stop_value;
        }
        path_in(outdir, sizeof(outdir), "out_cancel");
        sep_job_spec s;
        base_spec(&s, input, outdir);
        s.progress = cancel_progress;
        s.user = &c;
        s.progress_interval = 0;
        s.stop = &stop;
        sep_job_outcome o;
        assert_int_equal(sep_job_execute(&s, &o), -1);
        if (o.code != cases[i].code)
            fail_msg("cancel in %s: got %s (%s)", cases[i].stage, o.code_name, o.message);
        assert_int_equal(o.retryable, cases[i].code == SEP_JOB_INTERRUPTED);
        assert_no_files(outdir);
    }
}

static void test_forwarder_codes(void **state)
{
    (void)state;
    char input[1024], outdir[1024];
    snprintf(input, sizeof(input), "%s/track.wav", fixtures);
    path_in(outdir, sizeof(outdir), "out_fwd");
    const struct {
        int code;
        sep_job_code want;
        int retryable;
    } cases[] = {
        {SEP_FWD_EMODEL, SEP_JOB_MODEL_UNAVAILABLE, 0}, {SEP_FWD_ECRASH, SEP_JOB_WORKER_CRASHED, 1},
        {SEP_FWD_ETIME, SEP_JOB_TIME_LIMIT_HARD, 1},    {SEP_FWD_EDEVICE, SEP_JOB_DEVICE_ERROR, 1},
        {SEP_FWD_ESTOPPED, SEP_JOB_INTERRUPTED, 1},     {SEP_FWD_EINVAL, SEP_JOB_INTERNAL_ERROR, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        script_fwd f = {.fail_code = cases[i].code, .fail_from = 1};
        sep_job_spec s;
        base_spec(&s, input, outdir);
        s.forward = script_forward;
        s.forward_ctx = &f;
        sep_job_outcome o;
        assert_int_equal(sep_job_execute(&s, &o), -1);
        if (o.code != cases[i].want)
            fail_msg("forwarder %d: got %s (%s)", cases[i].code, o.code_name, o.message);
        assert_int_equal(o.retryable, cases[i].retryable);
        assert_no_files(outdir);
    }

    /* -4 with a fallback: the fallback takes over (and keeps the job), same stems */
    path_in(input, sizeof(input), "long.wav"); /* 3 s: about 20 batches of 2 */
    script_fwd gpu = {.fail_code = SEP_FWD_EDEVICE, .fail_from = 2};
    script_fwd cpu = {0};
    sep_job_spec s;
    base_spec(&s, input, outdir);
    s.forward = script_forward;
    s.forward_ctx = &gpu;
    s.fallback = script_forward;
    s.fallback_ctx = &cpu;
    s.format = SEP_OUT_WAVF32;
    s.clip = SEP_CLIP_NONE;
    sep_job_outcome o;
    assert_int_equal(sep_job_execute(&s, &o), 0);
    assert_int_equal(o.fell_back, 1);
    assert_int_equal(atomic_load(&gpu.calls), 3); /* 2 good, 1 failed, then never again */
    assert_int_equal(atomic_load(&cpu.calls), o.batches - 2);
    int64_t frames;
    float *ref = reference(input, &s, &frames);
    double err = compare_stems(outdir, &o, ref, frames);
    printf("MAXERR jobexec_fallback_vs_sep_apply_run max_abs=%.3g\n", err);
    assert_true(err <= 1e-6);
    free(ref);

    /* NaN in a forwarder's output: device_error, or the fallback takes over */
    script_fwd broken = {.nan_from = 2};
    path_in(outdir, sizeof(outdir), "out_nan");
    base_spec(&s, input, outdir);
    s.forward = script_forward;
    s.forward_ctx = &broken;
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_DEVICE_ERROR);
    assert_non_null(strstr(o.message, "non-finite"));
    assert_no_files(outdir);
    script_fwd broken2 = {.nan_from = 2}, good = {0};
    s.forward_ctx = &broken2;
    s.fallback = script_forward;
    s.fallback_ctx = &good;
    assert_int_equal(sep_job_execute(&s, &o), 0);
    assert_int_equal(o.fell_back, 1);

    /* a crash re-sent once with crash_retries = 1 */
    script_fwd flaky = {.fail_code = SEP_FWD_ECRASH, .fail_from = 1, .fail_count = 1};
    path_in(outdir, sizeof(outdir), "out_flaky");
    base_spec(&s, input, outdir);
    s.forward = script_forward;
    s.forward_ctx = &flaky;
    s.crash_retries = 1;
    assert_int_equal(sep_job_execute(&s, &o), 0);
    assert_int_equal(atomic_load(&flaky.failed), 1);
}

static void test_time_limits(void **state)
{
    (void)state;
    char input[1024], outdir[1024];
    path_in(input, sizeof(input), "long.wav"); /* 3 s: about 40 segments */
    path_in(outdir, sizeof(outdir), "out_limits");
    script_fwd slow = {.sleep_s = 0.02, .gain = 1};
    sep_job_spec s;
    sep_job_outcome o;
    base_spec(&s, input, outdir);
    s.max_batch = 1;
    s.forward = script_forward;
    s.forward_ctx = &slow;
    s.soft_time_limit = 0.15;
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_TIME_LIMIT);
    assert_false(o.retryable);
    assert_no_files(outdir);

    base_spec(&s, input, outdir);
    s.max_batch = 1;
    s.forward = script_forward;
    s.forward_ctx = &slow;
    s.hard_time_limit = 0.15;
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_TIME_LIMIT_HARD);
    assert_true(o.retryable);
    assert_no_files(outdir);
}

typedef struct {
    double t[4096];
    char stage[4096][12];
    double f[4096];
    int n;
} progress_log;

static int log_progress(void *user, const char *stage, double fraction)
{
    progress_log *l = user;
    if (l->n < 4096) {
        l->t[l->n] = sep_wall_seconds();
        snprintf(l->stage[l->n], sizeof(l->stage[0]), "%s", stage);
        l->f[l->n] = fraction;
        l->n++;
    }
    return 0;
}

static void test_progress_throttling(void **state)
{
    (void)state;
    char input[1024], outdir[1024];
    /* 100 segments of 30 ms: 5 % of the work (150 ms) is longer than the interval */
    int64_t frames = (int64_t)(0.75 * info->segment_samples) * 99 + info->segment_samples;
    path_in(input, sizeof(input), "progress.wav");
    write_wav(input, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 44100, 2, frames, -1, 0);
    path_in(outdir, sizeof(outdir), "out_progress");
    script_fwd slow = {.sleep_s = 0.03, .gain = 1};
    progress_log *l = calloc(1, sizeof(*l));
    sep_job_spec s;
    base_spec(&s, input, outdir);
    s.shifts = 0;
    s.max_batch = 1;
    s.forward = script_forward;
    s.forward_ctx = &slow;
    s.progress = log_progress;
    s.user = l;
    s.progress_interval = 0.1;
    sep_job_outcome o;
    double t0 = sep_wall_seconds();
    assert_int_equal(sep_job_execute(&s, &o), 0);
    double total = sep_wall_seconds() - t0;
    assert_true(o.segments >= 95);
    assert_true(l->n >= 3);
    assert_string_equal(l->stage[0], "decode");
    assert_true(l->f[0] == 0.0);
    double min_gap = 1e9, max_step = 0;
    int saw_separate = 0;
    for (int i = 1; i < l->n; i++) {
        double gap = l->t[i] - l->t[i - 1];
        if (gap < min_gap)
            min_gap = gap;
        if (strcmp(l->stage[i], "separate") == 0) {
            saw_separate = 1;
            if (strcmp(l->stage[i - 1], "separate") == 0 && l->f[i] - l->f[i - 1] > max_step)
                max_step = l->f[i] - l->f[i - 1];
            assert_true(l->f[i] >= (strcmp(l->stage[i - 1], "separate") ? 0 : l->f[i - 1]));
        }
    }
    printf("RESULT progress: %d reports over %.2f s, min gap %.3f s (interval 0.1), largest "
           "separate step %.3f\n",
           l->n, total, min_gap, max_step);
    assert_true(saw_separate);
    assert_true(min_gap >= 0.1 - 1e-6);
    assert_true(max_step <= 0.05 + 1e-9);
    /* nothing is reported more often than the interval: total/interval bounds the count */
    assert_true(l->n <= (int)(total / 0.1) + 2);
    free(l);
}

/* ---- two jobs at once ----------------------------------------------------------------- */

typedef struct {
    pthread_mutex_t lock;
    atomic_int in_flight, max_in_flight;
    int n;
    int who[4096]; /* job of each call, in call order */
    int batch[4096];
} recorder;

static recorder rec = {.lock = PTHREAD_MUTEX_INITIALIZER};
static __thread int job_id;

static int recording_forward(void *ctx, const char *m, int mi, const float *in, int n, int length,
                             float *out, double deadline, char *err, size_t errlen)
{
    recorder *r = ctx;
    int now = atomic_fetch_add(&r->in_flight, 1) + 1;
    int seen = atomic_load(&r->max_in_flight);
    while (now > seen && !atomic_compare_exchange_weak(&r->max_in_flight, &seen, now))
        ;
    pthread_mutex_lock(&r->lock);
    if (r->n < 4096) {
        r->who[r->n] = job_id;
        r->batch[r->n] = n;
        r->n++;
    }
    pthread_mutex_unlock(&r->lock);
    usleep(3000); /* a device round trip: long enough for the other job to arrive */
    int rc = sep_engine_forward_fn(&engine_fwd, m, mi, in, n, length, out, deadline, err, errlen);
    atomic_fetch_sub(&r->in_flight, 1);
    return rc;
}

typedef struct {
    int id;
    sep_job_spec spec;
    sep_job_outcome out;
    int rc;
    char outdir[1024];
} job_thread;

static void *job_main(void *arg)
{
    job_thread *t = arg;
    job_id = t->id;
    t->rc = sep_job_execute(&t->spec, &t->out);
    return NULL;
}

static void test_two_jobs_share_forwarder(void **state)
{
    (void)state;
    char input[1024];
    path_in(input, sizeof(input), "long.wav");
    job_thread jobs[2];
    for (int i = 0; i < 2; i++) {
        memset(&jobs[i], 0, sizeof(jobs[i]));
        jobs[i].id = i + 1;
        snprintf(jobs[i].outdir, sizeof(jobs[i].outdir), "%s/out_job%d", tmp_root, i + 1);
        base_spec(&jobs[i].spec, input, jobs[i].outdir);
        jobs[i].spec.forward = recording_forward;
        jobs[i].spec.forward_ctx = &rec;
        jobs[i].spec.format = SEP_OUT_WAVF32;
        jobs[i].spec.clip = SEP_CLIP_NONE;
        jobs[i].spec.max_batch = 1;
    }
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, job_main, &jobs[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++)
        if (jobs[i].rc)
            fail_msg("job %d: %s: %s", i + 1, jobs[i].out.code_name, jobs[i].out.message);
    /* interleaving: count switches between jobs in the call order */
    int switches = 0, calls[3] = {0};
    for (int i = 0; i < rec.n; i++) {
        calls[rec.who[i]]++;
        if (i && rec.who[i] != rec.who[i - 1])
            switches++;
    }
    printf("RESULT two jobs: %d forward calls (%d + %d), max %d in flight at once, %d switches "
           "between jobs\n",
           rec.n, calls[1], calls[2], atomic_load(&rec.max_in_flight), switches);
    assert_true(atomic_load(&rec.max_in_flight) >= 2);
    assert_true(switches >= 4);
    assert_int_equal(calls[1], jobs[0].out.batches);
    assert_int_equal(calls[2], jobs[1].out.batches);
    int64_t frames;
    float *ref = reference(input, &jobs[0].spec, &frames);
    for (int i = 0; i < 2; i++) {
        double err = compare_stems(jobs[i].outdir, &jobs[i].out, ref, frames);
        printf("MAXERR jobexec_concurrent_job%d_vs_sep_apply_run max_abs=%.3g\n", i + 1, err);
        assert_true(err <= 1e-6);
    }
    free(ref);
}

/* ---- setup ---------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    char p[1024], err[512];
    snprintf(p, sizeof(p), "%s/tiny_apply.safetensors", fixtures);
    model = sep_model_load(p, err, sizeof(err));
    if (!model) {
        fprintf(stderr, "cannot load %s: %s\n", p, err);
        return -1;
    }
    info = sep_model_get_info(model);
    sep_engine_opts eo = {.device = "cpu", .threads = 1, .max_batch = 2};
    engine = sep_engine_create(model, &eo, err, sizeof(err));
    if (!engine) {
        fprintf(stderr, "cannot create the engine: %s\n", err);
        return -1;
    }
    sep_engine_forwarder_init(&engine_fwd, engine, model, NULL, 2);
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof(tmp_root), "%s/sep-jobexec-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_root) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp_root);
    sep_engine_forwarder_destroy(&engine_fwd);
    sep_engine_free(engine);
    sep_model_free(model);
    return 0;
}

int main(int argc, char **argv)
{
    fixtures = argc > 1 ? argv[1] : "tests/fixtures/apply";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wav_to_stems_equals_apply),
        cmocka_unit_test(test_float_keeps_beyond_one),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_bad_options_model_io),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_forwarder_codes),
        cmocka_unit_test(test_time_limits),
        cmocka_unit_test(test_progress_throttling),
        cmocka_unit_test(test_two_jobs_share_forwarder),
    };
    return cmocka_run_group_tests_name("jobexec", tests, setup, teardown);
}
