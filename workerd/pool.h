/*
 * pool.h - the device-worker pool the supervisor calls to run segments through the
 * network.
 *
 * A pool owns n_workers child processes (`workerd device-worker ...`, fork + exec),
 * one per GPU (CUDA_VISIBLE_DEVICES=i) or n CPU workers. Each child maps a shared
 * memory region (shared/sep_ring.h: a command ring, an event ring and a PCM arena of
 * `slots` segment buffers), loads each model it is asked for once, and runs batches.
 *
 * Callers (the job runner's threads) call sep_pool_forward() concurrently; a
 * dispatcher thread gathers their pending segments into batches per (model,
 * model_index) - one batch may mix segments of several callers - and hands them to
 * idle workers with free arena slots. A worker crash is seen at once (pidfd), the
 * worker restarted and its in-flight segments re-run once; a deadline kills the
 * worker running the late segments; a worker is recycled after max_jobs_per_worker
 * forward calls.
 */
#ifndef WORKERD_POOL_H
#define WORKERD_POOL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "models/engine.h"

typedef struct sep_pool sep_pool;

typedef struct {
    /* the workerd binary; workers are fork+exec'd as `workerd device-worker ...` */
    const char *exe;
    const char *models_dir; /* NAME.safetensors files */
    const char *device;     /* "cpu" or "cuda" */
    /* processes; for "cuda" one per GPU, each with CUDA_VISIBLE_DEVICES=i */
    int n_workers;
    int threads;             /* engine threads per worker (0 = all cores) */
    int max_batch;           /* segments per forward pass */
    int max_jobs_per_worker; /* recycle a worker after this many forward calls (0 = never) */
    int slots;               /* PCM arena slots = segments in flight per worker (backpressure) */
    /* Optional (0 = automatic): the geometry an arena slot must hold. By default the
     * largest model found in models_dir at start, else htdemucs_6s' (2 channels x
     * 343980 samples, 6 sources). A model that does not fit fails with EMODEL. */
    int segment_samples, channels, sources;
    int debug_delay_ms; /* tests: every worker sleeps this long before each forward pass */
} sep_pool_config;

enum {
    SEP_POOL_OK = 0,
    SEP_POOL_EMODEL = -1,   /* model missing/unloadable: permanent */
    SEP_POOL_ECRASH = -2,   /* worker died twice on it: retryable */
    SEP_POOL_ETIME = -3,    /* deadline passed: worker killed+restarted */
    SEP_POOL_EDEVICE = -4,  /* device init failed / out of memory: fall back to CPU */
    SEP_POOL_ESTOPPED = -5, /* the pool is stopping or stopped */
    SEP_POOL_EINVAL = -6    /* bad arguments (index, length, n) */
};

typedef enum {
    SEP_WORKER_STARTING = 0, /* spawned, not yet ready */
    SEP_WORKER_IDLE,         /* ready, no batch in flight */
    SEP_WORKER_BUSY,         /* running a batch */
    SEP_WORKER_DEAD          /* exited; waiting to be restarted */
} sep_pool_worker_state;

/* sep_pool_forward that also watches the caller's stop flag: once it reads non-zero,
 * the segments get 5 s more; then the worker running them is killed (and restarted) and
 * SEP_POOL_ESTOPPED returned, so a hung worker never holds a cancel or a drain. */
int sep_pool_forward_stoppable(sep_pool *p, const char *model, int model_index, const float *in,
                               int n, int length, float *out, double deadline,
                               const atomic_int *stop, char *err, size_t errlen);
/* Per-worker stats for heartbeats. */
typedef struct {
    int index;                   /* 0..n_workers-1 */
    pid_t pid;                   /* current process (0 when none) */
    char device[16];             /* "cpu" or "cuda:N" */
    sep_pool_worker_state state; /* see above */
    uint64_t segments;           /* segments completed by this slot (all its processes) */
    uint64_t batches;            /* forward calls completed */
    uint64_t restarts;           /* crashes, kills and recycles */
    uint64_t rss_bytes;          /* resident set of the current process (0 when unknown) */
} sep_pool_worker_stats;

sep_pool *sep_pool_start(const sep_pool_config *c, char *err, size_t errlen);
void sep_pool_stop(sep_pool *p); /* stops and reaps every worker, frees the shm */
/* Model metadata for a name (mmap'd in the caller, cheap; cached). NULL + message when missing. */
const sep_model *sep_pool_model(sep_pool *p, const char *model, char *err, size_t errlen);
/* Runs n segments through network model_index of `model`: in [n][channels][length] -> out
 * [n][sources][channels][length]. Blocking and thread-safe: several job threads call it at once and
 * their segments are put into the same device batches (up to max_batch). deadline: CLOCK_MONOTONIC
 * seconds, 0 = none; past it, the worker running those segments is killed (SIGKILL) and restarted
 * and SEP_POOL_ETIME returned. A worker crash is detected at once (pidfd or SIGCHLD), the worker
 * restarted, and the in-flight segments re-run once on a live worker before SEP_POOL_ECRASH.
 * Returns one of the codes above with a message in err. */
int sep_pool_forward(sep_pool *p, const char *model, int model_index, const float *in, int n,
                     int length, float *out, double deadline, char *err, size_t errlen);
/* Per-worker stats for heartbeats: pid, device, state, segments done, restarts, RSS.
 * Fills up to max entries and returns the number of workers. */
int sep_pool_stats(sep_pool *p, sep_pool_worker_stats *out, int max);

/* Pool-wide counters (tests, metrics). */
typedef struct {
    uint64_t batches;       /* forward calls dispatched to workers */
    uint64_t segments;      /* segments completed */
    uint64_t mixed_batches; /* batches holding segments of more than one sep_pool_forward call */
    uint64_t reruns;        /* segments re-run after a worker crash */
    uint64_t restarts;      /* worker restarts (crash, deadline, recycle) */
} sep_pool_counters;
void sep_pool_get_counters(sep_pool *p, sep_pool_counters *out);

/* Message for a SEP_POOL_* code ("ok", "model unavailable", ...). */
const char *sep_pool_strerror(int code);

#endif
