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
 *
 * Two ways to drive it:
 *   sep_apply_run     the whole track through one engine, in this thread;
 *   sep_apply_begin   a producer/consumer of segment batches for a caller that runs
 *                     them elsewhere (the device-worker pool, mixing jobs in one
 *                     device batch): sep_apply_next gives the next segments to run
 *                     (all of one network of the bag, each model segment_samples
 *                     long), sep_apply_put takes their outputs back and writes every
 *                     region they complete; up to max_inflight batches may be out at
 *                     once and come back in any order.
 */
#ifndef SEP_MODELS_APPLY_H
#define SEP_MODELS_APPLY_H

#include <stddef.h>
#include <stdint.h>

#include "models/engine.h"

/* The limits of the HTTP API (SEP_SHIFTS_MAX, SEP_OVERLAP_LIMIT in shared/sep_options.h;
 * tests/cli/test_cli.py checks that they agree): one set for the CLI and the API. */
#define SEP_APPLY_MAX_SHIFTS 10
#define SEP_APPLY_OVERLAP_LIMIT 0.99

typedef struct {
    int shifts;              /* random time shifts averaged (0 = deterministic; demucs CLI: 1) */
    double overlap;          /* overlap between segments, [0, 1) (demucs: 0.25) */
    double transition_power; /* >= 1 (demucs: 1) */
    double segment;          /* seconds per segment; 0 = the model's (may not exceed it) */
    int two_stems;           /* source index for `src` + `no_src` output, or -1 for all */
    int max_batch;           /* segments per sep_engine_forward call (0 = 1) */
    int max_inflight;        /* batches handed out by sep_apply_next at once (0 = 1) */
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

/* ---- producer/consumer ------------------------------------------------------------ */

typedef struct sep_apply_state sep_apply_state;

/* One batch of segments handed out by sep_apply_next. */
typedef struct {
    int model_index; /* network of the bag every segment of the batch goes through */
    int n;           /* segments */
    int length;      /* samples per segment: the model's segment_samples */
    int channels;    /* input  [n][channels][length] */
    int sources;     /* output [n][sources][channels][length] */
    int slot;        /* identifies the batch (internal) */
    uint64_t seq;    /* identifies the batch (internal) */
} sep_apply_chunk;

/* Checks the options and the track, computes the normalisation (a first pass of reads
 * over the track) and plans the segments. NULL with a message on error. `io` is copied;
 * its progress callback is not used by the producer/consumer calls. */
sep_apply_state *sep_apply_begin(const sep_model *m, const sep_apply_opts *o,
                                 const sep_apply_io *io, char *err, size_t errlen);

/* Loads the next batch of at most `max` (and max_batch) segments into mix
 * [max][channels][length] and describes it in *desc. Returns the number of segments,
 * 0 when none can be handed out now (all handed out, or the ring or the in-flight
 * table is full until outputs are put back), -1 on error (a read failed; see
 * sep_apply_error; the state is then unusable). */
int sep_apply_next(sep_apply_state *st, float *mix, int max, sep_apply_chunk *desc);

/* Takes the outputs [n][sources][channels][length] of an outstanding batch (n =
 * desc->n), overlap-adds them and writes out every region now final. 0, or -1 on error
 * (the write callback failed, or desc is not outstanding). */
int sep_apply_put(sep_apply_state *st, const sep_apply_chunk *desc, const float *out, int n);

/* 1 when every frame of the track has been written. */
int sep_apply_done(const sep_apply_state *st);
/* Batches handed out and not yet put back. */
int sep_apply_pending(const sep_apply_state *st);
/* Segments put back over all segments of the track, 0..1. */
double sep_apply_fraction(const sep_apply_state *st);
/* Message of the last error. */
const char *sep_apply_error(const sep_apply_state *st);
/* Frees the state (outstanding batches are dropped). */
void sep_apply_end(sep_apply_state *st);

/* ---- in one piece -------------------------------------------------------------------- */

/* Separates the track. `e` must have been created from `m` with max_batch at least
 * o->max_batch. Returns 0, or -1 with a message in err (a callback's abort included). */
int sep_apply_run(sep_engine *e, const sep_model *m, const sep_apply_opts *o,
                  const sep_apply_io *io, char *err, size_t errlen);

#endif
