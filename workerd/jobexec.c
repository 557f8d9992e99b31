/*
 * jobexec.c - one job from its input file to its stems (see jobexec.h).
 *
 *   decode    sep_audio_decode -> unnamed float32 spool in tmp_dir (NaN/Inf refused)
 *   separate  sep_apply_begin, then next -> forwarder -> put until done; finished
 *             regions go to the stem spool (unnamed files) as they complete
 *   encode    sep_stem_spool_finish: every stem under a temporary name, then all
 *             renamed into output_dir, or none
 *
 * All checks that end a job early (stop flag, soft and hard time limits, the progress
 * callback's cancel) go through job_tick(), called for every decode block, segment
 * batch and encode block. The runner keeps no global state and takes no lock: jobs on
 * several threads share a forwarder (the pool batches their segments together).
 */
#include "workerd/jobexec.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/apply.h"
#include "models/util.h"
#include "workerd/separate.h"

static const char *const code_names[SEP_JOB_CODE_COUNT] = {
    [SEP_JOB_OK] = "ok",
    [SEP_JOB_INPUT_MISSING] = "input_missing",
    [SEP_JOB_INVALID_AUDIO] = "invalid_audio",
    [SEP_JOB_INVALID_OPTIONS] = "invalid_options",
    [SEP_JOB_MODEL_UNAVAILABLE] = "model_unavailable",
    [SEP_JOB_TIME_LIMIT] = "time_limit",
    [SEP_JOB_CANCELED] = "canceled",
    [SEP_JOB_INTERNAL_ERROR] = "internal_error",
    [SEP_JOB_WORKER_CRASHED] = "worker_crashed",
    [SEP_JOB_TIME_LIMIT_HARD] = "time_limit_hard",
    [SEP_JOB_DEVICE_ERROR] = "device_error",
    [SEP_JOB_IO_ERROR] = "io_error",
    [SEP_JOB_INTERRUPTED] = "interrupted",
};

const char *sep_job_code_name(sep_job_code c)
{
    return (unsigned)c < SEP_JOB_CODE_COUNT ? code_names[c] : "internal_error";
}

int sep_job_code_retryable(sep_job_code c)
{
    return c == SEP_JOB_WORKER_CRASHED || c == SEP_JOB_TIME_LIMIT_HARD ||
           c == SEP_JOB_DEVICE_ERROR || c == SEP_JOB_IO_ERROR || c == SEP_JOB_INTERRUPTED;
}

void sep_job_spec_init(sep_job_spec *spec)
{
    memset(spec, 0, sizeof(*spec));
    spec->format = SEP_OUT_WAV16;
    spec->clip = SEP_CLIP_AUTO;
    spec->shifts = SEP_JOB_SHIFTS_DEFAULT;
    spec->overlap = SEP_JOB_OVERLAP_DEFAULT;
    spec->max_batch = 1;
    spec->progress_interval = SEP_JOB_PROGRESS_INTERVAL;
}

int sep_job_format_from_name(const char *name, sep_out_format *out)
{
    static const struct {
        const char *name;
        sep_out_format fmt;
    } table[] = {
        {"wav", SEP_OUT_WAV16},
        {"wav24", SEP_OUT_WAV24},
        {"f32", SEP_OUT_WAVF32},
        {"flac", SEP_OUT_FLAC16},
    };
    for (size_t i = 0; name && i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(name, table[i].name) == 0) {
            *out = table[i].fmt;
            return 0;
        }
    return -1;
}

typedef struct {
    const sep_job_spec *spec;
    sep_job_outcome *out;
    sep_decoded in;
    sep_stem_spool spool;
    double t0;
    double soft_at, hard_at; /* absolute, 0 = none */
    /* progress throttling */
    int reported;
    double last_report;
    const char *last_stage;
    double last_fraction;
    /* why job_tick stopped the job (SEP_JOB_OK = it did not) */
    sep_job_code stop_code;
    char stop_msg[160];
} job_ctx;

__attribute__((format(printf, 3, 4))) static int fail(job_ctx *j, sep_job_code code,
                                                      const char *fmt, ...)
{
    sep_job_outcome *o = j->out;
    o->code = code;
    o->code_name = sep_job_code_name(code);
    o->retryable = sep_job_code_retryable(code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->message, sizeof(o->message), fmt, ap);
    va_end(ap);
    return -1;
}

/* Every check that may end the job, then the throttled progress report. Returns
 * non-zero to stop (j->stop_code says why). */
static int job_tick(job_ctx *j, const char *stage, double fraction)
{
    const sep_job_spec *s = j->spec;
    if (j->stop_code != SEP_JOB_OK)
        return 1;
    int stop = s->stop ? atomic_load(s->stop) : SEP_JOB_RUN;
    double now = sep_wall_seconds();
    if (stop == SEP_JOB_STOP_CANCEL) {
        j->stop_code = SEP_JOB_CANCELED;
        snprintf(j->stop_msg, sizeof(j->stop_msg), "canceled during %s", stage);
        return 1;
    }
    if (stop != SEP_JOB_RUN) {
        j->stop_code = SEP_JOB_INTERRUPTED;
        snprintf(j->stop_msg, sizeof(j->stop_msg), "interrupted during %s (handed back)", stage);
        return 1;
    }
    if (j->hard_at > 0 && now > j->hard_at) {
        j->stop_code = SEP_JOB_TIME_LIMIT_HARD;
        snprintf(j->stop_msg, sizeof(j->stop_msg), "hard time limit of %g s passed during %s",
                 s->hard_time_limit, stage);
        return 1;
    }
    if (j->soft_at > 0 && now > j->soft_at) {
        j->stop_code = SEP_JOB_TIME_LIMIT;
        snprintf(j->stop_msg, sizeof(j->stop_msg), "time limit of %g s passed during %s",
                 s->soft_time_limit, stage);
        return 1;
    }
    if (!s->progress)
        return 0;
    if (fraction < 0)
        fraction = 0;
    if (fraction > 1)
        fraction = 1;
    int changed = !j->reported || strcmp(stage, j->last_stage) != 0 || fraction != j->last_fraction;
    if (!changed || (j->reported && now - j->last_report < s->progress_interval))
        return 0;
    j->reported = 1;
    j->last_report = now;
    j->last_stage = stage;
    j->last_fraction = fraction;
    if (s->progress(s->user, stage, fraction)) {
        j->stop_code = SEP_JOB_CANCELED;
        snprintf(j->stop_msg, sizeof(j->stop_msg), "canceled during %s", stage);
        return 1;
    }
    return 0;
}

static int decode_progress(void *user, double fraction)
{
    return job_tick(user, "decode", fraction);
}

static int encode_progress(void *user, double fraction)
{
    return job_tick(user, "encode", fraction);
}

static int read_cb(void *user, int64_t start, int count, float *dst)
{
    job_ctx *j = user;
    return sep_decoded_read(&j->in, start, count, dst);
}

static int write_cb(void *user, int64_t start, int count, const float *src)
{
    job_ctx *j = user;
    (void)start; /* regions arrive in order */
    return sep_stem_spool_append(&j->spool, count, src);
}

/* A failure that job_tick caused, or the audio layer's own. */
static int fail_audio(job_ctx *j, sep_audio_error e, const char *msg)
{
    if (j->stop_code != SEP_JOB_OK)
        return fail(j, j->stop_code, "%s", j->stop_msg);
    switch (e) {
    case SEP_AUDIO_EMISSING:
        return fail(j, SEP_JOB_INPUT_MISSING, "%s", msg);
    case SEP_AUDIO_EINVALID:
        return fail(j, SEP_JOB_INVALID_AUDIO, "%s", msg);
    case SEP_AUDIO_ECANCELED:
        return fail(j, SEP_JOB_CANCELED, "%s", msg);
    default:
        return fail(j, SEP_JOB_IO_ERROR, "%s", msg);
    }
}

static sep_job_code forward_code(int rc)
{
    switch (rc) {
    case SEP_FWD_EMODEL:
        return SEP_JOB_MODEL_UNAVAILABLE;
    case SEP_FWD_ECRASH:
        return SEP_JOB_WORKER_CRASHED;
    case SEP_FWD_ETIME:
        return SEP_JOB_TIME_LIMIT_HARD;
    case SEP_FWD_EDEVICE:
        return SEP_JOB_DEVICE_ERROR;
    case SEP_FWD_ESTOPPED:
        return SEP_JOB_INTERRUPTED;
    default:
        return SEP_JOB_INTERNAL_ERROR;
    }
}

/* Index of the first NaN/Inf among n floats, or (size_t)-1. */
static size_t first_non_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return (size_t)-1;
}

/* Options -> apply options; 0, or -1 with the outcome set (invalid_options). */
static int build_options(job_ctx *j, sep_apply_opts *ao)
{
    const sep_job_spec *s = j->spec;
    const sep_model_info *info = sep_model_get_info(s->model);
    sep_apply_opts_default(ao);
    ao->shifts = s->shifts;
    ao->overlap = s->overlap;
    ao->segment = s->segment;
    ao->seed = s->seed;
    ao->max_batch = s->max_batch > 0 ? s->max_batch : 1;
    ao->two_stems = -1;
    if (s->stems && *s->stems && strcmp(s->stems, "all") != 0) {
        ao->two_stems = sep_model_source_index(s->model, s->stems);
        if (ao->two_stems < 0) {
            char list[SEP_MAX_SOURCES * 34] = "";
            for (int i = 0; i < info->n_sources; i++) {
                strcat(list, i ? ", " : "");
                strcat(list, info->sources[i]);
            }
            return fail(j, SEP_JOB_INVALID_OPTIONS,
                        "stems '%s' is not a source of model '%s' (all, %s)", s->stems, info->name,
                        list);
        }
    }
    if ((unsigned)s->format > SEP_OUT_FLAC24)
        return fail(j, SEP_JOB_INVALID_OPTIONS, "unknown output format %d", (int)s->format);
    if ((unsigned)s->clip > SEP_CLIP_AUTO)
        return fail(j, SEP_JOB_INVALID_OPTIONS, "unknown clip mode %d", (int)s->clip);
    if (!(s->soft_time_limit >= 0) || !(s->hard_time_limit >= 0))
        return fail(j, SEP_JOB_INVALID_OPTIONS, "time limits must be >= 0 seconds");
    char err[256];
    if (sep_apply_check(s->model, ao, err, sizeof(err)))
        return fail(j, SEP_JOB_INVALID_OPTIONS, "%s", err);
    return 0;
}

/* The separate stage; 0 or -1 with the outcome set. */
static int run_separate(job_ctx *j, const sep_apply_opts *ao)
{
    const sep_job_spec *s = j->spec;
    const sep_model_info *info = sep_model_get_info(s->model);
    sep_apply_io io = {.frames = j->in.frames,
                       .channels = info->audio_channels,
                       .read = read_cb,
                       .write = write_cb,
                       .user = j};
    char err[512] = "";
    if (job_tick(j, "separate", 0.0))
        return fail(j, j->stop_code, "%s", j->stop_msg);
    sep_apply_state *st = sep_apply_begin(s->model, ao, &io, err, sizeof(err));
    if (!st)
        return fail(j, SEP_JOB_IO_ERROR, "%s", err);
    int batch = ao->max_batch;
    size_t seg = (size_t)info->audio_channels * info->segment_samples;
    float *in = malloc(sizeof(float) * batch * seg);
    float *out = malloc(sizeof(float) * batch * info->n_sources * seg);
    sep_forward_fn fwd = s->forward;
    void *fwd_ctx = s->forward_ctx;
    const char *name = s->model_name ? s->model_name : info->name;
    int rc = -1;
    if (!in || !out) {
        fail(j, SEP_JOB_IO_ERROR, "out of memory for %d segments", batch);
        goto done;
    }
    for (;;) {
        if (job_tick(j, "separate", sep_apply_fraction(st))) {
            fail(j, j->stop_code, "%s", j->stop_msg);
            goto done;
        }
        sep_apply_chunk desc;
        int n = sep_apply_next(st, in, batch, &desc);
        if (n < 0) {
            fail(j, SEP_JOB_IO_ERROR, "%s", sep_apply_error(st));
            goto done;
        }
        if (n == 0)
            break;
        int crash_left = s->crash_retries;
        for (;;) {
            err[0] = '\0';
            int frc = fwd(fwd_ctx, name, desc.model_index, in, n, desc.length, out, j->hard_at, err,
                          sizeof(err));
            if (frc == SEP_FWD_OK) {
                /* a device that computes garbage is a device error, not silent stems */
                size_t bad = first_non_finite(out, (size_t)n * info->n_sources * seg);
                if (bad == (size_t)-1)
                    break;
                frc = SEP_FWD_EDEVICE;
                snprintf(err, sizeof(err), "the network returned a non-finite value (segment %zu)",
                         bad / (info->n_sources * seg));
            }
            if (frc == SEP_FWD_EDEVICE && s->fallback && !j->out->fell_back) {
                fwd = s->fallback;
                fwd_ctx = s->fallback_ctx;
                j->out->fell_back = 1;
                continue;
            }
            if (frc == SEP_FWD_ECRASH && crash_left-- > 0)
                continue;
            sep_job_code code = forward_code(frc);
            if (code == SEP_JOB_TIME_LIMIT_HARD)
                fail(j, code, "hard time limit of %g s passed: %s", s->hard_time_limit, err);
            else
                fail(j, code, "running %d segment(s) of %s[%d]%s: %s (%s)", n, name,
                     desc.model_index, j->out->fell_back ? " on the fallback" : "",
                     err[0] ? err : sep_forward_strerror(frc), sep_forward_strerror(frc));
            goto done;
        }
        j->out->batches++;
        j->out->segments += n;
        if (sep_apply_put(st, &desc, out, n)) {
            fail(j, SEP_JOB_IO_ERROR, "%s (%s)", sep_apply_error(st), strerror(errno));
            goto done;
        }
    }
    if (!sep_apply_done(st)) {
        fail(j, SEP_JOB_INTERNAL_ERROR, "the separated output is incomplete");
        goto done;
    }
    rc = 0;
    job_tick(j, "separate", 1.0);
done:
    free(in);
    free(out);
    sep_apply_end(st);
    return rc;
}

int sep_job_execute(const sep_job_spec *spec, sep_job_outcome *out)
{
    job_ctx jc, *j = &jc;
    memset(j, 0, sizeof(*j));
    memset(out, 0, sizeof(*out));
    out->code = SEP_JOB_OK;
    out->code_name = sep_job_code_name(SEP_JOB_OK);
    j->spec = spec;
    j->out = out;
    j->in.fd = -1;
    for (int i = 0; i < SEP_STEMS_MAX; i++)
        j->spool.fds[i] = -1;
    j->t0 = sep_wall_seconds();
    if (spec->soft_time_limit > 0)
        j->soft_at = j->t0 + spec->soft_time_limit;
    if (spec->hard_time_limit > 0)
        j->hard_at = j->t0 + spec->hard_time_limit;

    if (!spec->model)
        return fail(j, SEP_JOB_MODEL_UNAVAILABLE, "model '%s' is not available",
                    spec->model_name ? spec->model_name : "(none)");
    if (!spec->forward)
        return fail(j, SEP_JOB_INTERNAL_ERROR, "no forwarder given");
    if (!spec->input_path || !*spec->input_path || !spec->output_dir || !*spec->output_dir)
        return fail(j, SEP_JOB_INVALID_OPTIONS, "the input path and output dir are required");
    sep_apply_opts ao;
    if (build_options(j, &ao))
        return -1;
    const sep_model_info *info = sep_model_get_info(spec->model);

    /* The output dir: made now when it also holds the spools, else once the input
     * decodes; removed again on failure when this call made it (and it is empty). */
    int made_dir = 0, rc = -1;
    const char *tmp_dir = spec->tmp_dir && *spec->tmp_dir ? spec->tmp_dir : spec->output_dir;
    struct stat st;
    int dir_existed = stat(spec->output_dir, &st) == 0;
    if (tmp_dir == spec->output_dir) {
        if (sep_mkdirs(spec->output_dir) != 0)
            return fail(j, SEP_JOB_IO_ERROR, "cannot create '%s': %s", spec->output_dir,
                        strerror(errno));
        made_dir = !dir_existed;
    }

    char err[512] = "";
    double t1 = sep_wall_seconds();
    if (job_tick(j, "decode", 0.0)) {
        fail(j, j->stop_code, "%s", j->stop_msg);
        goto done;
    }
    if (sep_audio_decode(spec->input_path, info->samplerate, info->audio_channels, tmp_dir, &j->in,
                         decode_progress, j, err, sizeof(err))) {
        fail_audio(j, j->in.error, err);
        goto done;
    }
    out->src_samplerate = j->in.src_samplerate;
    out->src_channels = j->in.src_channels;
    snprintf(out->src_format, sizeof(out->src_format), "%.63s", j->in.src_format);
    out->samplerate = info->samplerate;
    out->channels = info->audio_channels;
    out->frames = j->in.frames;
    out->audio_seconds = (double)j->in.src_frames / j->in.src_samplerate;
    job_tick(j, "decode", 1.0);
    double t2 = sep_wall_seconds();
    out->decode_s = t2 - t1;
    if (j->in.frames < 1) {
        fail(j, SEP_JOB_INVALID_AUDIO, "'%s' is too short to separate", spec->input_path);
        goto done;
    }

    if (!made_dir && !dir_existed) {
        if (sep_mkdirs(spec->output_dir) != 0) {
            fail(j, SEP_JOB_IO_ERROR, "cannot create '%s': %s", spec->output_dir, strerror(errno));
            goto done;
        }
        made_dir = 1;
    }
    char names[SEP_MAX_SOURCES][40];
    int n_stems = sep_apply_stems(spec->model, &ao, names);
    if (sep_stem_spool_open(&j->spool, n_stems, info->audio_channels, info->samplerate, tmp_dir,
                            err, sizeof(err))) {
        fail(j, SEP_JOB_IO_ERROR, "%s", err);
        goto done;
    }
    if (run_separate(j, &ao))
        goto done;
    double t3 = sep_wall_seconds();
    out->separate_s = t3 - t2;

    if (job_tick(j, "encode", 0.0)) {
        fail(j, j->stop_code, "%s", j->stop_msg);
        goto done;
    }
    char files[SEP_STEMS_MAX][SEP_STEM_FILE_MAX];
    int64_t bytes[SEP_STEMS_MAX];
    if (sep_stem_spool_finish(&j->spool, spec->output_dir, names, spec->file_tag, spec->format,
                              spec->clip, files, bytes, encode_progress, j, err, sizeof(err))) {
        fail_audio(j, j->spool.error, err);
        goto done;
    }
    out->encode_s = sep_wall_seconds() - t3;
    out->n_stems = n_stems;
    for (int i = 0; i < n_stems; i++) {
        snprintf(out->stems[i].name, sizeof(out->stems[i].name), "%.39s", names[i]);
        snprintf(out->stems[i].file, sizeof(out->stems[i].file), "%.127s", files[i]);
        out->stems[i].bytes = bytes[i];
    }
    rc = 0;
done:
    sep_stem_spool_close(&j->spool);
    sep_decoded_close(&j->in);
    if (rc != 0) {
        out->n_stems = 0;
        if (made_dir)
            rmdir(spec->output_dir); /* only when empty */
    }
    out->total_s = sep_wall_seconds() - j->t0;
    return rc;
}
