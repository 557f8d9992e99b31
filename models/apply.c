/*
 * apply.c - demucs.apply.apply_model + demucs.separate's normalisation, streamed.
 *
 * How apply_model's recursion maps onto a flat schedule:
 *
 *   A "pass" is one network of the bag run over the track with one shift. Without
 *   shifts the pass covers [0, frames). With a shift offset o (0 <= o <= max_shift,
 *   max_shift = samplerate / 2) apply_model pads the track with max_shift zeros on both
 *   sides and runs over the view starting at o, i.e. track positions [o - max_shift,
 *   frames); the first max_shift - o outputs are dropped. Every pass is cut into
 *   chunks at offsets k * stride (relative to the pass start) of length
 *   min(segment_length, rest). A chunk is centred in a window of segment_length
 *   samples taken from the zero-extended track (TensorChunk.padded), the window goes
 *   to the network zero-padded on the right to the model's segment_samples
 *   (HTDemucs.forward), and the output is cut back (length_pre_pad, center_trim).
 *
 *   apply_model overlap-adds weight[j] * out into `out` and `sum_weight`, divides, then
 *   averages the shifts and weights the bag per source. All of it is linear, so each
 *   chunk's contribution to the final track is
 *       coef[m][s] * weight[j] / W_pass(p) * out[s][c][j]
 *   where W_pass(p) is the sum of the weights of the chunks of that pass covering p (a
 *   property of the chunk grid, not of the data) and coef[m][s] =
 *   bag_weight[m][s] / sum_m bag_weight[m][s] / max(shifts, 1). The contributions of
 *   every pass land in one accumulator ring; a position is final once every pass has
 *   started a chunk beyond it, and is then de-normalised and written out.
 *
 * Chunks are scheduled by the smallest track position first (ties: bag order), and a
 * batch is extended with the following chunks of the same network while they fit in
 * the ring, so every pass advances together and memory stays independent of length.
 *
 * The schedule is a producer/consumer (sep_apply_begin/next/put/end): next hands out
 * a batch (its windows loaded into the caller's buffer) and records it as outstanding;
 * put accumulates its outputs, in any order of batches, and emits what became final.
 * With outstanding batches the final frontier is also held back by their first
 * positions. sep_apply_run is next -> sep_engine_forward -> put in a loop, which adds
 * the chunks in exactly the order of the one-piece schedule it replaced.
 */
#include "models/apply.h"
#include "models/util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATS_BLOCK 65536
#define EMIT_BLOCK 16384

typedef struct {
    int model;       /* network index in the bag */
    int64_t start;   /* track position of the pass's first sample (<= 0) */
    int64_t length;  /* samples covered by the pass */
    int64_t n_chunk; /* chunks in the pass */
    int64_t next;    /* next chunk to run (n_chunk when done) */
} apply_pass;

typedef struct {
    int n_sources, channels, n_stems;
    int64_t segment_length; /* window length (segment seconds * samplerate) */
    int64_t stride;         /* distance between chunk offsets */
    int64_t forward_length; /* the model's segment_samples */
    int64_t max_shift;      /* samplerate / 2 */
    int64_t ring;           /* accumulator ring length in frames */
    int batch;              /* chunks per forward call */
    int inflight;           /* batches handed out and not yet put back, at most */
    int n_passes;
} apply_plan;

void sep_apply_opts_default(sep_apply_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->shifts = 0;
    o->overlap = 0.25;
    o->transition_power = 1.0;
    o->segment = 0.0;
    o->two_stems = -1;
    o->max_batch = 1;
    o->max_inflight = 1;
    o->seed = 0x5eed5eedULL;
    o->shift_offsets = NULL;
}

int sep_apply_stems(const sep_model *m, const sep_apply_opts *o, char (*names)[40])
{
    const sep_model_info *info = sep_model_get_info(m);
    if (o->two_stems >= 0 && o->two_stems < info->n_sources) {
        if (names) {
            snprintf(names[0], 40, "%s", info->sources[o->two_stems]);
            snprintf(names[1], 40, "no_%s", info->sources[o->two_stems]);
        }
        return 2;
    }
    if (names)
        for (int s = 0; s < info->n_sources; s++)
            snprintf(names[s], 40, "%s", info->sources[s]);
    return info->n_sources;
}

int sep_apply_check(const sep_model *m, const sep_apply_opts *o, char *err, size_t errlen)
{
    const sep_model_info *info = sep_model_get_info(m);
    if (info->n_models < 1 || info->n_models > SEP_MAX_BAG || info->n_sources < 1 ||
        info->n_sources > SEP_MAX_SOURCES || info->samplerate <= 0 || info->audio_channels < 1 ||
        info->segment_samples <= 0) {
        sep_set_err(err, errlen, "model '%s' has an invalid description", info->name);
        return -1;
    }
    if (o->shifts < 0 || o->shifts > SEP_APPLY_MAX_SHIFTS) {
        sep_set_err(err, errlen, "shifts must be between 0 and %d (got %d)", SEP_APPLY_MAX_SHIFTS,
                    o->shifts);
        return -1;
    }
    if (!(o->overlap >= 0.0 && o->overlap < 1.0)) {
        sep_set_err(err, errlen, "overlap must be in [0, 1) (got %g)", o->overlap);
        return -1;
    }
    if (!(o->transition_power >= 1.0)) {
        sep_set_err(err, errlen, "transition_power must be >= 1 (got %g)", o->transition_power);
        return -1;
    }
    if (o->segment < 0.0 || isnan(o->segment)) {
        sep_set_err(err, errlen, "segment must be positive (got %g)", o->segment);
        return -1;
    }
    if (o->segment > 0.0) {
        double len = (double)info->samplerate * o->segment;
        if (len > (double)info->segment_samples || o->segment > info->segment_seconds) {
            sep_set_err(err, errlen,
                        "cannot use a segment longer than the model was trained for: maximum "
                        "segment is %g s (got %g)",
                        info->segment_seconds, o->segment);
            return -1;
        }
        if ((int64_t)len < 2) {
            sep_set_err(err, errlen, "segment %g s is too short", o->segment);
            return -1;
        }
    }
    int64_t segment_length =
        o->segment > 0.0 ? (int64_t)((double)info->samplerate * o->segment) : info->segment_samples;
    if ((int64_t)((1.0 - o->overlap) * (double)segment_length) < 1) {
        sep_set_err(err, errlen, "overlap %g leaves no stride between segments", o->overlap);
        return -1;
    }
    if (o->two_stems < -1 || o->two_stems >= info->n_sources) {
        sep_set_err(err, errlen, "two-stem source index %d out of range", o->two_stems);
        return -1;
    }
    if (o->max_batch < 0 || o->max_batch > 1024) {
        sep_set_err(err, errlen, "max_batch must be between 1 and 1024 (got %d)", o->max_batch);
        return -1;
    }
    for (int s = 0; s < info->n_sources; s++) {
        double total = 0.0;
        for (int b = 0; b < info->n_models; b++)
            total += info->bag_weights[b][s];
        if (total == 0.0) {
            sep_set_err(err, errlen, "bag weights of source '%s' sum to zero", info->sources[s]);
            return -1;
        }
    }
    if (o->max_inflight < 0 || o->max_inflight > 64) {
        sep_set_err(err, errlen, "max_inflight must be between 1 and 64 (got %d)", o->max_inflight);
        return -1;
    }
    if (o->shift_offsets && o->shifts > 0) {
        int max_shift = (int)(0.5 * info->samplerate);
        for (int i = 0; i < info->n_models * o->shifts; i++)
            if (o->shift_offsets[i] < 0 || o->shift_offsets[i] > max_shift) {
                sep_set_err(err, errlen, "shift offset %d out of [0, %d]", o->shift_offsets[i],
                            max_shift);
                return -1;
            }
    }
    return 0;
}

static void make_plan(const sep_model *m, const sep_apply_opts *o, apply_plan *p)
{
    const sep_model_info *info = sep_model_get_info(m);
    memset(p, 0, sizeof(*p));
    p->n_sources = info->n_sources;
    p->channels = info->audio_channels;
    p->n_stems = sep_apply_stems(m, o, NULL);
    p->forward_length = info->segment_samples;
    p->segment_length =
        o->segment > 0.0 ? (int64_t)((double)info->samplerate * o->segment) : info->segment_samples;
    p->stride = (int64_t)((1.0 - o->overlap) * (double)p->segment_length);
    p->max_shift = (int64_t)(0.5 * info->samplerate);
    p->batch = o->max_batch > 0 ? o->max_batch : 1;
    p->n_passes = info->n_models * (o->shifts > 0 ? o->shifts : 1);
    p->inflight = o->max_inflight > 0 ? o->max_inflight : 1;
    /* Room for the batches in flight of one pass, plus the spread between passes. */
    p->ring = p->segment_length + (int64_t)p->batch * p->inflight * p->stride +
              (o->shifts > 0 ? p->max_shift : 0);
}

/* Stems held by the emit buffer (two-stem mode needs 2 even for a 1-source model). */
static int emit_rows(const apply_plan *p)
{
    return p->n_sources > p->n_stems ? p->n_sources : p->n_stems;
}

size_t sep_apply_memory_bytes(const sep_model *m, const sep_apply_opts *o)
{
    apply_plan p;
    make_plan(m, o, &p);
    size_t floats = 0;
    floats += (size_t)p.n_sources * p.channels * p.ring;                     /* accumulator */
    floats += (size_t)p.batch * p.channels * p.forward_length;               /* batch input */
    floats += (size_t)p.batch * p.n_sources * p.channels * p.forward_length; /* batch output */
    floats += (size_t)p.channels * p.segment_length;                         /* read scratch */
    floats += (size_t)p.segment_length * 2;                                  /* weights */
    floats += (size_t)emit_rows(&p) * p.channels * EMIT_BLOCK;               /* emit buffer */
    floats += (size_t)p.channels * STATS_BLOCK;                              /* stats block */
    return floats * sizeof(float) + (size_t)p.n_passes * sizeof(apply_pass) +
           (size_t)p.inflight * p.batch * (sizeof(int) + sizeof(int64_t));
}

/* splitmix64: small, seedable, good enough to draw shift offsets. */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform integer in [0, n] without modulo bias. */
static int64_t random_upto(uint64_t *state, int64_t n)
{
    uint64_t range = (uint64_t)n + 1, limit = UINT64_MAX - UINT64_MAX % range, r;
    do
        r = next_random(state);
    while (r >= limit);
    return (int64_t)(r % range);
}

/* Chunk k of a pass: offset within the pass and length. */
static int64_t chunk_offset(const apply_plan *p, int64_t k)
{
    return k * p->stride;
}

static int64_t chunk_length(const apply_plan *p, const apply_pass *ps, int64_t k)
{
    int64_t rest = ps->length - chunk_offset(p, k);
    return rest < p->segment_length ? rest : p->segment_length;
}

/* True when chunk k contributes to a retained output position (inside [0, frames)). */
static int chunk_useful(const apply_plan *p, const apply_pass *ps, int64_t k, int64_t frames)
{
    int64_t a = ps->start + chunk_offset(p, k), b = a + chunk_length(p, ps, k);
    return b > 0 && a < frames;
}

static void skip_useless(const apply_plan *p, apply_pass *ps, int64_t frames)
{
    while (ps->next < ps->n_chunk && !chunk_useful(p, ps, ps->next, frames))
        ps->next++;
}

/* Track position where the pass's next chunk starts (frames when it is done). */
static int64_t pass_frontier(const apply_plan *p, const apply_pass *ps, int64_t frames)
{
    if (ps->next >= ps->n_chunk)
        return frames;
    int64_t a = ps->start + chunk_offset(p, ps->next);
    return a < 0 ? 0 : a;
}

/* Mean and unbiased standard deviation of the channel-mean signal (demucs.separate's
 * `ref = wav.mean(0)`), one pass, blocks merged with Chan et al.'s formula. */
static int track_stats(const sep_apply_io *io, float *block, double *mean_out, double *std_out,
                       char *err, size_t errlen)
{
    double n = 0, mean = 0, m2 = 0;
    for (int64_t pos = 0; pos < io->frames; pos += STATS_BLOCK) {
        int count = (int)(io->frames - pos < STATS_BLOCK ? io->frames - pos : STATS_BLOCK);
        if (io->read(io->user, pos, count, block)) {
            sep_set_err(err, errlen, "reading the track failed at frame %lld", (long long)pos);
            return -1;
        }
        double bsum = 0;
        for (int t = 0; t < count; t++) {
            float r = 0;
            for (int c = 0; c < io->channels; c++)
                r += block[(size_t)c * count + t];
            block[t] = r / (float)io->channels; /* in place: row 0 is read before written */
            bsum += block[t];
        }
        double bmean = bsum / count, bm2 = 0;
        for (int t = 0; t < count; t++)
            bm2 += ((double)block[t] - bmean) * ((double)block[t] - bmean);
        double total = n + count, delta = bmean - mean;
        mean += delta * count / total;
        m2 += bm2 + delta * delta * n * count / total;
        n = total;
    }
    *mean_out = mean;
    *std_out = n > 1 ? sqrt(m2 / (n - 1)) : 0.0;
    return 0;
}

/* One batch handed out by sep_apply_next and not yet put back. */
typedef struct {
    int active;
    uint64_t seq;
    int model, n;
    int *pass;       /* [batch] */
    int64_t *chunk;  /* [batch] */
    int64_t min_pos; /* smallest retained track position the batch writes */
} apply_batch;

struct sep_apply_state {
    const sep_model_info *info;
    sep_apply_io io;
    apply_plan plan;
    apply_pass *passes;
    apply_batch *out_batches; /* [inflight] */
    int inflight, pending;
    uint64_t seq;
    float coef[SEP_MAX_BAG][SEP_MAX_SOURCES];
    float mean, std;
    float *acc;     /* [sources][channels][ring] */
    float *scratch; /* [channels][segment_length] */
    float *weight;  /* [segment_length] triangle ** transition_power */
    float *wnorm;   /* [segment_length] weight / pass weight sum for one chunk */
    float *emit;    /* [stems][channels][EMIT_BLOCK] */
    float *stats;   /* [channels][STATS_BLOCK] */
    int two_stems;
    int failed;
    int64_t emitted;     /* frames written so far */
    int64_t total, done; /* useful chunks in all passes; put back so far */
    char err[256];
};

/* weight[j] / (sum of weights of the pass's chunks covering j), for chunk k, summed in
 * chunk order as apply_model's sum_weight is. */
static void chunk_weights(sep_apply_state *st, const apply_pass *ps, int64_t k, int64_t len)
{
    const apply_plan *p = &st->plan;
    int64_t off = chunk_offset(p, k);
    for (int64_t j = 0; j < len; j++) {
        int64_t pos = off + j;
        /* chunks k' with off_k' <= pos < off_k' + segment_length */
        int64_t first = pos - p->segment_length + 1;
        int64_t k0 = first <= 0 ? 0 : (first + p->stride - 1) / p->stride;
        int64_t k1 = pos / p->stride;
        if (k1 > ps->n_chunk - 1)
            k1 = ps->n_chunk - 1;
        float sum = 0.0f;
        for (int64_t kk = k0; kk <= k1; kk++)
            sum += st->weight[pos - chunk_offset(p, kk)];
        st->wnorm[j] = st->weight[j] / sum;
    }
}

/* Builds the network input of one chunk: the window of segment_length samples around the
 * chunk from the zero-extended, normalised track, then zeros up to forward_length. */
static int load_window(sep_apply_state *st, const apply_pass *ps, int64_t k, float *dst)
{
    const apply_plan *p = &st->plan;
    const sep_apply_io *io = &st->io;
    int64_t len = chunk_length(p, ps, k);
    int64_t delta = p->segment_length - len;
    int64_t wstart = ps->start + chunk_offset(p, k) - delta / 2;
    int64_t a = wstart < 0 ? 0 : wstart;
    int64_t b = wstart + p->segment_length;
    if (b > io->frames)
        b = io->frames;
    memset(dst, 0, sizeof(float) * p->channels * p->forward_length);
    if (b <= a)
        return 0;
    int count = (int)(b - a);
    if (io->read(io->user, a, count, st->scratch))
        return -1;
    for (int c = 0; c < p->channels; c++) {
        float *row = dst + (size_t)c * p->forward_length + (a - wstart);
        const float *src = st->scratch + (size_t)c * count;
        for (int t = 0; t < count; t++)
            row[t] = (src[t] - st->mean) / st->std;
    }
    return 0;
}

/* Adds one chunk's network output into the accumulator ring. */
static void accumulate(sep_apply_state *st, const apply_pass *ps, int64_t k, const float *y)
{
    const apply_plan *p = &st->plan;
    int64_t len = chunk_length(p, ps, k);
    int64_t delta = p->segment_length - len;
    int64_t abs0 = ps->start + chunk_offset(p, k);
    chunk_weights(st, ps, k, len);
    int64_t j0 = abs0 < 0 ? -abs0 : 0;
    int64_t j1 = abs0 + len > st->io.frames ? st->io.frames - abs0 : len;
    for (int s = 0; s < p->n_sources; s++) {
        float coef = st->coef[ps->model][s];
        for (int c = 0; c < p->channels; c++) {
            const float *src = y + ((size_t)s * p->channels + c) * p->forward_length + delta / 2;
            float *acc = st->acc + ((size_t)s * p->channels + c) * p->ring;
            for (int64_t j = j0; j < j1; j++) {
                int64_t slot = (abs0 + j) % p->ring;
                acc[slot] += coef * (st->wnorm[j] * src[j]);
            }
        }
    }
}

/* De-normalises and writes out every final frame in [emitted, upto). */
static int emit_until(sep_apply_state *st, int64_t upto)
{
    const apply_plan *p = &st->plan;
    while (st->emitted < upto) {
        int count = (int)(upto - st->emitted < EMIT_BLOCK ? upto - st->emitted : EMIT_BLOCK);
        for (int c = 0; c < p->channels; c++) {
            float *first = st->emit + (size_t)c * count;
            float *rest = st->emit + ((size_t)p->channels + c) * count;
            if (st->two_stems >= 0)
                memset(rest, 0, sizeof(float) * count);
            for (int s = 0; s < p->n_sources; s++) {
                float *acc = st->acc + ((size_t)s * p->channels + c) * p->ring;
                float *dst =
                    st->two_stems >= 0 ? NULL : st->emit + ((size_t)s * p->channels + c) * count;
                for (int t = 0; t < count; t++) {
                    int64_t slot = (st->emitted + t) % p->ring;
                    float v = acc[slot] * st->std + st->mean;
                    acc[slot] = 0.0f;
                    if (!dst) {
                        if (s == st->two_stems)
                            first[t] = v;
                        else
                            rest[t] += v;
                    } else {
                        dst[t] = v;
                    }
                }
            }
        }
        if (st->io.write(st->io.user, st->emitted, count, st->emit)) {
            snprintf(st->err, sizeof(st->err), "writing the output failed at frame %lld",
                     (long long)st->emitted);
            return -1;
        }
        st->emitted += count;
    }
    return 0;
}

/* First frame that is not final yet: every pass's next chunk to hand out and every
 * chunk handed out but not put back may still add to the frames from its start on. */
static int64_t final_frontier(sep_apply_state *st)
{
    int64_t f = st->io.frames;
    for (int i = 0; i < st->plan.n_passes; i++) {
        int64_t pf = pass_frontier(&st->plan, &st->passes[i], st->io.frames);
        if (pf < f)
            f = pf;
    }
    for (int i = 0; i < st->inflight; i++)
        if (st->out_batches[i].active && st->out_batches[i].min_pos < f)
            f = st->out_batches[i].min_pos;
    return f;
}

/* Index of the pass (optionally restricted to one network) whose next chunk starts
 * first, or -1 when all are done. */
static int earliest_pass(sep_apply_state *st, int model)
{
    int best = -1;
    int64_t best_pos = 0;
    for (int i = 0; i < st->plan.n_passes; i++) {
        apply_pass *ps = &st->passes[i];
        if (ps->next >= ps->n_chunk || (model >= 0 && ps->model != model))
            continue;
        int64_t pos = ps->start + chunk_offset(&st->plan, ps->next);
        if (best < 0 || pos < best_pos) {
            best = i;
            best_pos = pos;
        }
    }
    return best;
}

static void state_free(sep_apply_state *st)
{
    if (!st)
        return;
    if (st->out_batches)
        for (int i = 0; i < st->inflight; i++) {
            free(st->out_batches[i].pass);
            free(st->out_batches[i].chunk);
        }
    free(st->out_batches);
    free(st->passes);
    free(st->acc);
    free(st->scratch);
    free(st->weight);
    free(st->wnorm);
    free(st->emit);
    free(st->stats);
    free(st);
}

sep_apply_state *sep_apply_begin(const sep_model *m, const sep_apply_opts *o,
                                 const sep_apply_io *io, char *err, size_t errlen)
{
    const sep_model_info *info = sep_model_get_info(m);
    if (sep_apply_check(m, o, err, errlen))
        return NULL;
    if (io->channels != info->audio_channels) {
        sep_set_err(err, errlen, "track has %d channels, the model expects %d", io->channels,
                    info->audio_channels);
        return NULL;
    }
    if (io->frames < 1) {
        sep_set_err(err, errlen, "the track is empty");
        return NULL;
    }
    if (!io->read || !io->write) {
        sep_set_err(err, errlen, "read and write callbacks are required");
        return NULL;
    }

    sep_apply_state *st = calloc(1, sizeof(*st));
    if (!st) {
        sep_set_err(err, errlen, "out of memory");
        return NULL;
    }
    st->info = info;
    st->io = *io;
    st->two_stems = o->two_stems;
    make_plan(m, o, &st->plan);
    apply_plan *p = &st->plan;
    st->inflight = o->max_inflight > 0 ? o->max_inflight : 1;

    st->passes = calloc((size_t)p->n_passes, sizeof(apply_pass));
    st->out_batches = calloc((size_t)st->inflight, sizeof(apply_batch));
    st->acc = calloc((size_t)p->n_sources * p->channels * p->ring, sizeof(float));
    st->scratch = malloc(sizeof(float) * p->channels * p->segment_length);
    st->weight = malloc(sizeof(float) * p->segment_length);
    st->wnorm = malloc(sizeof(float) * p->segment_length);
    st->emit = malloc(sizeof(float) * emit_rows(p) * p->channels * EMIT_BLOCK);
    st->stats = malloc(sizeof(float) * p->channels * STATS_BLOCK);
    int ok = st->passes && st->out_batches && st->acc && st->scratch && st->weight && st->wnorm &&
             st->emit && st->stats;
    for (int i = 0; ok && i < st->inflight; i++) {
        st->out_batches[i].pass = malloc(sizeof(int) * p->batch);
        st->out_batches[i].chunk = malloc(sizeof(int64_t) * p->batch);
        ok = st->out_batches[i].pass && st->out_batches[i].chunk;
    }
    if (!ok) {
        sep_set_err(err, errlen, "out of memory (%zu bytes of working memory)",
                    sep_apply_memory_bytes(m, o));
        state_free(st);
        return NULL;
    }

    /* Triangle weights: 1..L/2 then L-L/2..1, over their maximum, ** transition_power. */
    int64_t half = p->segment_length / 2;
    float wmax = (float)(half > p->segment_length - half ? half : p->segment_length - half);
    for (int64_t j = 0; j < p->segment_length; j++) {
        int64_t v = j < half ? j + 1 : p->segment_length - j;
        float w = (float)v / wmax;
        st->weight[j] = o->transition_power == 1.0 ? w : powf(w, (float)o->transition_power);
    }

    for (int s = 0; s < p->n_sources; s++) {
        float total = 0.0f;
        for (int b = 0; b < info->n_models; b++)
            total += info->bag_weights[b][s];
        for (int b = 0; b < info->n_models; b++)
            st->coef[b][s] =
                info->bag_weights[b][s] / total / (float)(o->shifts > 0 ? o->shifts : 1);
    }

    /* Passes in apply_model's order: bag member, then shift (offsets drawn in that order). */
    uint64_t rng = o->seed;
    for (int b = 0, i = 0; b < info->n_models; b++) {
        for (int sh = 0; sh < (o->shifts > 0 ? o->shifts : 1); sh++, i++) {
            apply_pass *ps = &st->passes[i];
            ps->model = b;
            if (o->shifts > 0) {
                int64_t off = o->shift_offsets ? o->shift_offsets[b * o->shifts + sh]
                                               : random_upto(&rng, p->max_shift);
                ps->start = off - p->max_shift;
            }
            ps->length = io->frames - ps->start;
            ps->n_chunk = (ps->length + p->stride - 1) / p->stride;
            for (int64_t k = 0; k < ps->n_chunk; k++)
                st->total += chunk_useful(p, ps, k, io->frames);
            skip_useless(p, ps, io->frames);
        }
    }

    double mean, sd;
    if (track_stats(io, st->stats, &mean, &sd, err, errlen)) {
        state_free(st);
        return NULL;
    }
    st->mean = (float)mean;
    st->std = (float)sd + 1e-8f;
    return st;
}

int sep_apply_next(sep_apply_state *st, float *mix, int max, sep_apply_chunk *desc)
{
    apply_plan *p = &st->plan;
    int64_t frames = st->io.frames;
    memset(desc, 0, sizeof(*desc));
    if (st->failed)
        return -1;
    if (max > p->batch)
        max = p->batch;
    int slot = -1;
    for (int i = 0; i < st->inflight && slot < 0; i++)
        if (!st->out_batches[i].active)
            slot = i;
    int first = earliest_pass(st, -1);
    if (first < 0 || slot < 0 || max < 1)
        return 0;
    apply_batch *bt = &st->out_batches[slot];
    size_t in_stride = (size_t)p->channels * p->forward_length;
    int model = st->passes[first].model, n = 0;
    int64_t min_pos = frames;
    while (n < max) {
        int i = n == 0 ? first : earliest_pass(st, model);
        if (i < 0)
            break;
        apply_pass *ps = &st->passes[i];
        int64_t a = ps->start + chunk_offset(p, ps->next);
        int64_t end = a + chunk_length(p, ps, ps->next);
        if (end > frames)
            end = frames;
        if (end - st->emitted > p->ring) {
            if (n == 0 && st->pending == 0) {
                snprintf(st->err, sizeof(st->err), "internal error: chunk does not fit the ring");
                st->failed = 1;
                return -1;
            }
            break; /* the ring is full until outstanding outputs are put back */
        }
        if (load_window(st, ps, ps->next, mix + n * in_stride)) {
            snprintf(st->err, sizeof(st->err), "reading the track failed");
            st->failed = 1;
            return -1;
        }
        if (a < 0)
            a = 0;
        if (a < min_pos)
            min_pos = a;
        bt->pass[n] = i;
        bt->chunk[n] = ps->next;
        n++;
        ps->next++;
        skip_useless(p, ps, frames);
    }
    if (n == 0)
        return 0;
    bt->active = 1;
    bt->seq = ++st->seq;
    bt->model = model;
    bt->n = n;
    bt->min_pos = min_pos;
    st->pending++;
    desc->model_index = model;
    desc->n = n;
    desc->length = (int)p->forward_length;
    desc->channels = p->channels;
    desc->sources = p->n_sources;
    desc->slot = slot;
    desc->seq = bt->seq;
    return n;
}

int sep_apply_put(sep_apply_state *st, const sep_apply_chunk *desc, const float *out, int n)
{
    apply_plan *p = &st->plan;
    if (st->failed)
        return -1;
    if (desc->slot < 0 || desc->slot >= st->inflight || !st->out_batches[desc->slot].active ||
        st->out_batches[desc->slot].seq != desc->seq || n != st->out_batches[desc->slot].n) {
        snprintf(st->err, sizeof(st->err), "sep_apply_put: not an outstanding batch");
        return -1;
    }
    apply_batch *bt = &st->out_batches[desc->slot];
    size_t out_stride = (size_t)p->n_sources * p->channels * p->forward_length;
    for (int b = 0; b < n; b++)
        accumulate(st, &st->passes[bt->pass[b]], bt->chunk[b], out + b * out_stride);
    bt->active = 0;
    st->pending--;
    st->done += n;
    if (emit_until(st, final_frontier(st))) {
        st->failed = 1;
        return -1;
    }
    return 0;
}

int sep_apply_done(const sep_apply_state *st)
{
    return !st->failed && st->emitted == st->io.frames;
}

int sep_apply_pending(const sep_apply_state *st)
{
    return st->pending;
}

double sep_apply_fraction(const sep_apply_state *st)
{
    return st->total > 0 ? (double)st->done / (double)st->total : 1.0;
}

const char *sep_apply_error(const sep_apply_state *st)
{
    return st->err[0] ? st->err : "no error";
}

void sep_apply_end(sep_apply_state *st)
{
    state_free(st);
}

int sep_apply_run(sep_engine *e, const sep_model *m, const sep_apply_opts *o,
                  const sep_apply_io *io, char *err, size_t errlen)
{
    sep_apply_state *st = sep_apply_begin(m, o, io, err, errlen);
    if (!st)
        return -1;
    const sep_model_info *info = sep_model_get_info(m);
    int batch = o->max_batch > 0 ? o->max_batch : 1;
    size_t seg = (size_t)info->audio_channels * info->segment_samples;
    float *in = malloc(sizeof(float) * batch * seg);
    float *out = malloc(sizeof(float) * batch * info->n_sources * seg);
    int rc = -1;
    if (!in || !out) {
        sep_set_err(err, errlen, "out of memory (%zu bytes of working memory)",
                    sep_apply_memory_bytes(m, o));
        goto done;
    }
    if (io->progress && io->progress(io->user, 0.0)) {
        sep_set_err(err, errlen, "canceled");
        goto done;
    }
    for (;;) {
        sep_apply_chunk desc;
        int n = sep_apply_next(st, in, batch, &desc);
        if (n < 0) {
            sep_set_err(err, errlen, "%s", sep_apply_error(st));
            goto done;
        }
        if (n == 0)
            break;
        if (sep_engine_forward(e, desc.model_index, in, n, desc.length, out, err, errlen))
            goto done;
        if (sep_apply_put(st, &desc, out, n)) {
            sep_set_err(err, errlen, "%s", sep_apply_error(st));
            goto done;
        }
        if (io->progress && io->progress(io->user, sep_apply_fraction(st))) {
            sep_set_err(err, errlen, "canceled");
            goto done;
        }
    }
    if (!sep_apply_done(st)) {
        sep_set_err(err, errlen, "internal error: the output is incomplete");
        goto done;
    }
    rc = 0;
done:
    free(in);
    free(out);
    sep_apply_end(st);
    return rc;
}
