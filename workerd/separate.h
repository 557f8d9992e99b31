/*
 * separate.h - one track through the whole pipeline on an engine of this process:
 * decode + resample to a spool file, apply the model (models/apply.h), encode the
 * stems, all written or none.
 *
 * Used by `workerd separate`. It is a job of the daemon's job runner (jobexec.h) with
 * an in-process forwarder (forward.h) over the caller's engine, so both share one
 * path. The caller owns the loaded model and engine (loaded once, reused for every
 * track) and chooses where the stems go and where temporary files live (same
 * filesystem, so renames are atomic).
 */
#ifndef WORKERD_SEPARATE_H
#define WORKERD_SEPARATE_H

#include <stdint.h>

#include "models/apply.h"
#include "models/engine.h"
#include "workerd/audio.h"

typedef struct {
    sep_apply_opts apply;
    sep_out_format format;
    sep_clip_mode clip;
} sep_separate_opts;

typedef struct {
    int src_samplerate, src_channels;
    char src_format[64];
    int64_t frames;       /* at the model's rate */
    double audio_seconds; /* frames / model rate */
    double decode_s, separate_s, encode_s;
    int n_stems;
    char stems[SEP_MAX_SOURCES][40];
    int64_t bytes[SEP_MAX_SOURCES];
    int code; /* sep_job_code (jobexec.h) of a failure, 0 on success */
} sep_separate_result;

/* Stage is "decode", "separate" or "encode"; fraction is within the stage. Returns
 * non-zero to cancel. */
typedef int (*sep_stage_progress_fn)(void *user, const char *stage, double fraction);

/* Separates `in_path` into `{out_dir}/{stem}.{ext}` (out_dir created when the input
 * decodes). Temporary spool files go to tmp_dir. Returns 0, or -1 with a message. */
int sep_separate_file(sep_engine *e, const sep_model *m, const char *in_path, const char *out_dir,
                      const char *tmp_dir, const sep_separate_opts *o,
                      sep_stage_progress_fn progress, void *user, sep_separate_result *res,
                      char *err, size_t errlen);

/* mkdir -p; 0 or -1 with errno set. */
int sep_mkdirs(const char *path);

#endif
