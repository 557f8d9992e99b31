/*
 * apply.h - demucs.apply.apply_model plus demucs' per-track normalisation, streamed.
 *
 * Runs a whole track of any length through an engine (engine.h) the way
 * `demucs.separate` does:
 *
 *   ref = mix mean over channels; mean = ref.mean(); std = ref.std() + 1e-8 (unbiased)
 *   out = apply_model(model, (mix - mean) / std, shifts, split=True, overlap, segment)
 *   out = out * std + mean
 *
 * with apply_model's semantics kept exactly: a bag of networks weighted per source,
 * `shifts` random offsets in [0, 0.5 s] (the track padded by 0.5 s of zeros on both
 * sides, outputs averaged), overlapping segments of `segment` seconds with triangle
 * weights raised to `transition_power`, each segment centred in its window and taking
 * the real neighbouring samples of the track (zeros beyond it), outputs centre-trimmed,
 * and a `segment` shorter than the model's still fed to the network zero-padded on the
 * right to the model's segment_samples. Two-stem mode emits the chosen source and
 * `no_{source}`, the sum of all the others (after de-normalisation, as demucs.separate).
 *
 * Memory is bounded by the segments in flight, never by the track length: the track
 * is read through `read` (random access, a first pass computes mean/std), and every
 * output region is handed to `write`, in order, as soon as no pending segment can
 * still change it (an overlap-add ring).
 */
#ifndef SEP_MODELS_APPLY_H
#define SEP_MODELS_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "models/engine.h"

#define SEP_APPLY_MAX_SHIFTS 64

typedef struct {
    int shifts;              /* random time shifts averaged (0 = deterministic; demucs CLI: 1) */
    double overlap;          /* overlap between segments, [0, 1) (demucs: 0.25) */
    double transition_power; /* >= 1 (demucs: 1) */
    double segment;          /* seconds per segment; 0 = the model's (may not exceed it) */
    int two_stems;           /* source index for `src` + `no_src` output, or -1 for all */
    int max_batch;           /* segments per sep_engine_forward call (0 = 1) */
    uint64_t seed;           /* seed of the shift offsets' generator */
    /* Optional explicit shift offsets in samples, [n_models][shifts] in bag order, each
     * in [0, samplerate / 2]; replaces the generator (used to reproduce a reference). */
    const int *shift_offsets;
} sep_apply_opts;

/* Fills the demucs.separate defaults except shifts, which is 0 (deterministic). */
void sep_apply_opts_default(sep_apply_opts *o);

typedef struct {
    int64_t frames; /* track length in frames at the model's rate */
    int channels;   /* must equal the model's audio_channels */
    /* Copies frames [start, start + count) of the track into dst laid out
     * [channels][count]; always 0 <= start and start + count <= frames.
     * Returns 0, or non-zero to abort. */
    int (*read)(void *user, int64_t start, int count, float *dst);
    /* Receives the final output of frames [start, start + count), laid out
     * [n_stems][channels][count]; called in order, covering [0, frames) exactly once.
     * Returns 0, or non-zero to abort. */
    int (*write)(void *user, int64_t start, int count, const float *src);
    /* Fraction of the work done, non-decreasing, ends at 1. Optional (NULL).
     * Returns 0, or non-zero to abort (cancel). */
    int (*progress)(void *user, double fraction);
    void *user;
} sep_apply_io;

/* Number of output stems for these options (n_sources, or 2 in two-stem mode) and
 * their names into names[SEP_MAX_SOURCES][40] (may be NULL). */
int sep_apply_stems(const sep_model *m, const sep_apply_opts *o, char (*names)[40]);

/* Checks the options against the model; 0 or -1 with a message. */
int sep_apply_check(const sep_model *m, const sep_apply_opts *o, char *err, size_t errlen);

/* Bytes of working memory sep_apply_run allocates for these options (independent of
 * the track length). */
size_t sep_apply_memory_bytes(const sep_model *m, const sep_apply_opts *o);

/* Separates the track. `e` must have been created from `m` with max_batch at least
 * o->max_batch. Returns 0, or -1 with a message in err (a callback's abort included). */
int sep_apply_run(sep_engine *e, const sep_model *m, const sep_apply_opts *o,
                  const sep_apply_io *io, char *err, size_t errlen);

#endif
