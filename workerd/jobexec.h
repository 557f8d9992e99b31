/*
 * jobexec.h - the job runner: one job's input file -> its stems in the output dir.
 *
 *   decode (libsndfile + soxr, to the model's rate and channels, into a float spool;
 *           NaN/Inf samples refused) -> separate (models/apply.h as a chunk
 *           producer/consumer: the next segments go to a forwarder, forward.h, and
 *           their outputs are overlap-added back) -> encode (every stem into a
 *           temporary name in the output dir, then all renamed; on any failure none
 *           of the job's files is left there).
 *
 * Where segments run is the forwarder's business: the device-worker pool in the
 * daemon, an sep_engine_forwarder in the CLI and the tests. Several jobs may run at
 * once, each on its own thread, with one shared forwarder: the runner holds no lock
 * of its own, so the pool can merge their segments into one device batch.
 *
 * Every failure ends with an outcome code (snake_case, for error.code in the job
 * record), a message for people and whether retrying can help:
 *
 *   permanent  input_missing      the input file does not exist
 *              invalid_audio      undecodable, truncated, no channels or frames,
 *                                 non-finite samples (NaN/Inf)
 *              invalid_options    bad stems/format/shifts/overlap/segment/limits
 *              model_unavailable  no model, or the forwarder does not have it
 *              time_limit         the soft time limit passed
 *              canceled           progress callback or stop flag asked to cancel
 *              internal_error     a forwarder refused its arguments (a bug)
 *   retryable  worker_crashed     the device worker died running our segments
 *              time_limit_hard    the hard time limit passed (the worker was killed)
 *              device_error       GPU init/OOM, or NaN/Inf in the network's output, and
 *                                 no fallback forwarder (or it failed too)
 *              io_error           reading/writing the spool or output failed (ENOSPC)
 *              interrupted        the stop flag asked to give the job back (drain)
 *
 * Progress: `progress(user, stage, fraction)` with stage "decode", "separate" or
 * "encode" and the fraction of that stage. The runner throttles it: a report is made
 * only when the stage or fraction changed and at least progress_interval seconds
 * (default 0.5) passed since the previous one, the first report ("decode", 0) being
 * made at once; so the fraction moves by at most 5 % between reports whenever 5 % of
 * the stage takes longer than the interval. A non-zero return cancels the job
 * (outcome `canceled`, its files removed). The stop flag is read before every
 * segment batch and decode/encode block, so a cancel takes effect at the next segment.
 */
#ifndef WORKERD_JOBEXEC_H
#define WORKERD_JOBEXEC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "models/engine.h"
#include "workerd/audio.h"
#include "workerd/forward.h"

#define SEP_JOB_SHIFTS_DEFAULT 1     /* the API's default (shared/sep_options.h) */
#define SEP_JOB_OVERLAP_DEFAULT 0.25 /* the API's default */
#define SEP_JOB_PROGRESS_INTERVAL 0.5
#define SEP_JOB_STEMS_MAX 8
#define SEP_JOB_NAME_MAX 40
#define SEP_JOB_FILE_MAX 128

/* Values of *spec->stop. */
enum {
    SEP_JOB_RUN = 0,
    SEP_JOB_STOP_CANCEL = 1, /* outcome canceled (permanent), files removed */
    SEP_JOB_STOP_REQUEUE = 2 /* outcome interrupted (retryable), files removed */
};

typedef enum {
    SEP_JOB_OK = 0,
    SEP_JOB_INPUT_MISSING,
    SEP_JOB_INVALID_AUDIO,
    SEP_JOB_INVALID_OPTIONS,
    SEP_JOB_MODEL_UNAVAILABLE,
    SEP_JOB_TIME_LIMIT,
    SEP_JOB_CANCELED,
    SEP_JOB_INTERNAL_ERROR,
    SEP_JOB_WORKER_CRASHED,
    SEP_JOB_TIME_LIMIT_HARD,
    SEP_JOB_DEVICE_ERROR,
    SEP_JOB_IO_ERROR,
    SEP_JOB_INTERRUPTED,
    SEP_JOB_CODE_COUNT
} sep_job_code;

/* "ok", "input_missing", ... */
const char *sep_job_code_name(sep_job_code c);
/* 1 for the retryable codes above. */
int sep_job_code_retryable(sep_job_code c);

typedef int (*sep_job_progress_fn)(void *user, const char *stage, double fraction);

typedef struct {
    /* where segments run */
    sep_forward_fn forward;
    void *forward_ctx;
    sep_forward_fn fallback; /* optional: takes over after SEP_FWD_EDEVICE */
    void *fallback_ctx;

    /* the model: metadata (sources, rate, segment) and the name given to forwarders */
    const sep_model *model; /* NULL -> model_unavailable */
    const char *model_name;

    /* files */
    const char *input_path;
    const char *output_dir; /* created when missing; stems land here */
    const char *tmp_dir;    /* decode/stem spools (unnamed files); "" or NULL = output_dir */
    /* Optional tag in the stem file names: "{stem}.{tag}.{ext}" (e.g. the attempt's
     * token, so each attempt writes its own files); NULL or "" = "{stem}.{ext}". */
    const char *file_tag;

    /* options (sep_job_spec_init sets the API's defaults) */
    const char *stems;     /* NULL, "" or "all": every source; else two-stem mode */
    sep_out_format format; /* wav16 (wav), wav24, f32, flac (16-bit) */
    sep_clip_mode clip;    /* rescale (default), clamp, none (f32 keeps |x| > 1) */
    int shifts;            /* 0..SEP_APPLY_MAX_SHIFTS (default 1) */
    double overlap;        /* [0, 1) (default 0.25) */
    double segment;        /* seconds, 0 = the model's */
    uint64_t seed;         /* shift offsets' generator */
    int max_batch;         /* segments per forward call (default 1) */

    /* limits, in seconds from the call (0 = none). soft -> time_limit (permanent),
     * hard -> the forwarder's deadline, time_limit_hard (retryable). */
    double soft_time_limit;
    double hard_time_limit;

    /* progress and cancel */
    sep_job_progress_fn progress; /* optional */
    void *user;
    double progress_interval; /* seconds between reports (default 0.5) */
    const atomic_int *stop;   /* optional: SEP_JOB_STOP_* */
    int crash_retries;        /* times a batch is re-sent after SEP_FWD_ECRASH (default 0) */
} sep_job_spec;

typedef struct {
    char name[SEP_JOB_NAME_MAX]; /* "vocals", "no_vocals" */
    char file[SEP_JOB_FILE_MAX]; /* file name inside output_dir: "vocals.wav" */
    int64_t bytes;
} sep_job_stem;

typedef struct {
    sep_job_code code; /* SEP_JOB_OK on success */
    const char *code_name;
    int retryable;
    char message[512];

    /* audio (set once the input decoded) */
    double audio_seconds; /* duration of the input */
    int samplerate;       /* of the stems (the model's rate) */
    int channels;         /* of the stems (the model's channels) */
    int64_t frames;       /* of the stems */
    int src_samplerate;   /* the input file's */
    int src_channels;     /* the input file's */
    char src_format[64];  /* e.g. "WAV (Microsoft), Signed 16 bit PCM" */

    /* timing, seconds */
    double decode_s, separate_s, encode_s, total_s;
    /* the work */
    int64_t segments; /* segments run */
    int64_t batches;  /* forward calls */
    int fell_back;    /* 1 when the fallback forwarder took over */

    /* stems, in the model's order (or {source, no_source}); only on success */
    int n_stems;
    sep_job_stem stems[SEP_JOB_STEMS_MAX];
} sep_job_outcome;

/* Fills the API's defaults: all stems, wav16, rescale, shifts 1, overlap 0.25, batch 1,
 * no limits, progress every 0.5 s. */
void sep_job_spec_init(sep_job_spec *spec);

/* "wav" | "wav24" | "f32" | "flac" (the API's format names) -> sep_out_format. 0 or -1. */
int sep_job_format_from_name(const char *name, sep_out_format *out);

/* Runs the job. Returns 0 (out->code == SEP_JOB_OK) or -1 with out->code, message and
 * retryable set. Thread-safe: run several jobs at once on their own threads. */
int sep_job_execute(const sep_job_spec *spec, sep_job_outcome *out);

#endif
