/*
 * forward.h - where a job's segments run, seen from the job runner (jobexec.h).
 *
 * A forwarder runs n segments of `length` samples through network `model_index` of
 * the bag of `model`: in [n][channels][length] -> out [n][sources][channels][length].
 * The signature is exactly that of the device-worker pool's sep_pool_forward()
 * (workerd/pool.h) but for its first parameter, so a pool becomes a forwarder with a
 * one-line adapter (calling through a cast function pointer would be undefined):
 *
 *   static int pool_forward(void *ctx, const char *model, int mi, const float *in, int n,
 *                           int length, float *out, double deadline, char *err, size_t len)
 *   { return sep_pool_forward(ctx, model, mi, in, n, length, out, deadline, err, len); }
 *
 * A forwarder must be callable from several job threads at once (the pool merges their
 * segments into shared device batches); the runner never holds a lock around it.
 *
 * deadline: CLOCK_MONOTONIC seconds (models/util.h sep_wall_seconds), 0 = none.
 *
 * The return codes are the pool's (SEP_POOL_* in workerd/pool.h, same values):
 *
 *    0  SEP_FWD_OK
 *   -1  SEP_FWD_EMODEL    model missing or unloadable (permanent)
 *   -2  SEP_FWD_ECRASH    the worker crashed on it (retryable)
 *   -3  SEP_FWD_ETIME     the hard deadline passed (retryable)
 *   -4  SEP_FWD_EDEVICE   device init failure / out of memory: use a CPU forwarder
 *   -5  SEP_FWD_ESTOPPED  the pool is stopping (retryable)
 *   -6  SEP_FWD_EINVAL    bad arguments (a bug)
 *
 * sep_engine_forwarder is the in-process forwarder over one sep_engine (the offline
 * CLI, tests, a CPU fallback inside the supervisor): calls are serialised on the
 * engine (an engine runs one forward pass at a time), batches larger than the
 * engine's max_batch are split.
 */
#ifndef WORKERD_FORWARD_H
#define WORKERD_FORWARD_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "models/engine.h"

typedef int (*sep_forward_fn)(void *ctx, const char *model, int model_index, const float *in, int n,
                              int length, float *out, double deadline, char *err, size_t errlen);

enum {
    SEP_FWD_OK = 0,
    SEP_FWD_EMODEL = -1,
    SEP_FWD_ECRASH = -2,
    SEP_FWD_ETIME = -3,
    SEP_FWD_EDEVICE = -4,
    SEP_FWD_ESTOPPED = -5,
    SEP_FWD_EINVAL = -6,
};

/* Short text for a SEP_FWD_* code. */
const char *sep_forward_strerror(int code);

typedef struct {
    sep_engine *engine;     /* not owned */
    const sep_model *model; /* the engine's model (checks model_index, sizes) */
    const char *name;       /* model name it answers to; NULL = any */
    int max_batch;          /* the engine's max_batch (0 = 1) */
    pthread_mutex_t lock;
    /* counters (under lock) */
    uint64_t calls, segments;
} sep_engine_forwarder;

/* Sets up a forwarder over `e` (created from `m` with max_batch segments at most). */
void sep_engine_forwarder_init(sep_engine_forwarder *f, sep_engine *e, const sep_model *m,
                               const char *name, int max_batch);
void sep_engine_forwarder_destroy(sep_engine_forwarder *f);

/* The sep_forward_fn of an sep_engine_forwarder (ctx = the forwarder). Returns
 * SEP_FWD_EMODEL for another model's name, SEP_FWD_ETIME when the deadline passed
 * before the pass could start, SEP_FWD_EINVAL for bad arguments, SEP_FWD_EDEVICE
 * when the engine fails. */
int sep_engine_forward_fn(void *ctx, const char *model, int model_index, const float *in, int n,
                          int length, float *out, double deadline, char *err, size_t errlen);

#endif
