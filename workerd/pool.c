/*
 * pool.c - the device-worker pool (pool.h): worker processes, cross-caller batching,
 * crash detection, restarts, recycling and deadlines.
 *
 * Threads: callers of sep_pool_forward() only enqueue a request and sleep on its
 * condition variable; one dispatcher thread does everything else, under the pool's
 * mutex except while it sleeps in poll() and while it copies PCM between the callers'
 * buffers and the arena. Only the dispatcher ends a request (finish()), so the
 * requests named by a batch, and their buffers, stay valid without the lock:
 *
 *   poll(wake eventfd, every worker's event eventfd and pidfd; timeout = the next
 *        deadline, restart or stop grace)
 *   reap   a worker whose pidfd fired (or waitpid WNOHANG says it exited): the batch it
 *          was running counts one crash for each of its segments, which go back to the
 *          queue (a segment on its second crash fails its request with ECRASH); a
 *          batch queued behind it and the batches of a worker killed on purpose
 *          (deadline, recycle, stop) go back without a count. The rings are reset and
 *          the worker respawned (with a backoff while it dies before READY).
 *   events READY marks a worker dispatchable; DONE copies each segment's output to
 *          its caller (or fails the callers with the worker's error) and frees the
 *          slots; after max_jobs_per_worker DONEs the worker is drained and recycled.
 *   deadlines  a request past its deadline fails with ETIME at once; if one of its
 *          segments is in the batch a worker is running, that worker is SIGKILLed
 *          (and restarted as above; the other callers' segments re-run).
 *   schedule  while a worker has a free arena region and fewer than 2 batches in
 *          flight: take the oldest request with pending segments, fill a batch of up
 *          to max_batch segments of the same (model, network, length) from the
 *          requests in arrival order - so one batch mixes several callers - copy
 *          their inputs into the region packed, push BATCH.
 *
 * Arena: a worker's `slots` are split in regions of min(max_batch, slots) slots; one
 * batch uses one region, so batches are consecutive slots and the worker runs them
 * in place. Two regions give double buffering (the next batch is copied in while the
 * current one runs). Slot size: the largest model found in models_dir at start (or
 * htdemucs_6s' geometry, or the config's explicit sizes).
 *
 * Workers are spawned from the dispatcher thread only: PR_SET_PDEATHSIG fires when
 * the thread that forked a child exits, and the dispatcher lives as long as the pool.
 * The pool reaps its children by pid (never waitpid(-1)): the rest of the process
 * must not reap children it did not start.
 */
#include "workerd/pool.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/sep_ring.h"

extern char **environ;

#define MAX_OUT 2              /* batches in flight per worker */
#define START_TIMEOUT_S 30.0   /* sep_pool_start waits this long for every READY */
#define STOP_GRACE_S 2.0       /* STOP, then SIGKILL */
#define STOP_WAIT_S 5.0        /* a caller's raised stop flag: its batch gets this long */
#define STOP_POLL_S 0.25       /* how often stop flags are looked at */
#define BROKEN_AFTER 5         /* consecutive deaths before READY: the worker slot is broken */
#define DEFAULT_SEGMENT 343980 /* htdemucs / htdemucs_6s: 7.8 s at 44.1 kHz */
#define DEFAULT_CHANNELS 2
#define DEFAULT_SOURCES 6

enum { W_DEAD = 0, W_STARTING, W_READY, W_STOPPING };
enum { KILL_NONE = 0, KILL_DEADLINE, KILL_RECYCLE, KILL_STOP, KILL_PROTOCOL };

typedef struct req req;
struct req {
    const float *in;
    float *out;
    int n, length, model_index, channels, sources;
    size_t seg_in, seg_out; /* floats per segment */
    char model[SEP_RING_MODEL_MAX];
    double deadline;
    const atomic_int *stop; /* the caller's stop flag (NULL: none) */
    double stop_seen;       /* when it was first seen raised (0: not yet) */
    uint64_t serial;
    int next_seg; /* fresh segments [next_seg, n) not yet dispatched */
    int *rerun;   /* segments re-queued after a worker died */
    int n_rerun;
    unsigned char *crashes; /* per segment: worker deaths while it ran */
    int remaining;          /* segments without an output yet */
    int done, status;
    char *err;
    size_t errlen;
    pthread_cond_t cv;
    req *prev, *next; /* the pool's active list, in arrival order */
};

typedef struct {
    req *r;
    int seg;
} entry;

typedef struct {
    uint32_t id;
    int region, count;
    entry e[SEP_RING_MAX_BATCH];
} batch;

typedef struct {
    int index;
    sep_shm shm;
    pid_t pid;
    int pidfd;
    int state;
    int kill_reason;
    batch out[MAX_OUT]; /* FIFO: out[0] is the batch the worker is running */
    int n_out;
    unsigned region_busy; /* bit per region */
    uint32_t batch_seq;
    uint64_t forwards; /* DONEs of the current process */
    int recycle;       /* drain, then STOP and respawn */
    int fast_failures; /* consecutive deaths before READY */
    double restart_at, kill_at;
    char device[16];
    uint64_t segments, batches, restarts;
    char last_exit[96];
} wkr;

typedef struct {
    char name[SEP_RING_MODEL_MAX];
    sep_model *m;
} cached_model;

struct sep_pool {
    sep_pool_config cfg;
    char *exe, *models_dir, *device;
    int delay_ms;
    pthread_mutex_t mu;
    pthread_cond_t state_cv; /* workers' readiness (start), callers leaving (stop) */
    pthread_t thread;
    int thread_started;
    int wake_fd;
    int stopping, exited;
    int callers;
    wkr *w;
    int n;
    int reg_slots, n_regions, max_out;
    size_t slot_in, slot_out; /* floats */
    req *head, *tail;
    uint64_t serial;
    sep_pool_counters ctr;
    pthread_mutex_t model_mu;
    cached_model *models;
    int n_models, cap_models;
};

/* ---------------------------------------------------------------- helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "workerd pool: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

const char *sep_pool_strerror(int code)
{
    switch (code) {
    case SEP_POOL_OK:
        return "ok";
    case SEP_POOL_EMODEL:
        return "model unavailable";
    case SEP_POOL_ECRASH:
        return "device worker crashed";
    case SEP_POOL_ETIME:
        return "deadline passed";
    case SEP_POOL_EDEVICE:
        return "device error";
    case SEP_POOL_ESTOPPED:
        return "pool stopped";
    case SEP_POOL_EINVAL:
        return "invalid argument";
    default:
        return "unknown error";
    }
}

static int plain_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= SEP_RING_MODEL_MAX || s[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(c == '_' || c == '-' || c == '.' || (c >= '0' && c <= '9') ||
              (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return 0;
    }
    return 1;
}

static void wake(sep_pool *p)
{
    uint64_t one = 1;
    if (write(p->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        logf_("wake: %s", strerror(errno));
}

/* ---------------------------------------------------------------- models (caller side) */

static const sep_model *model_lookup(sep_pool *p, const char *name, char *err, size_t errlen)
{
    if (!name || !plain_name(name)) {
        set_err(err, errlen, "bad model name '%s'", name ? name : "(null)");
        return NULL;
    }
    pthread_mutex_lock(&p->model_mu);
    const sep_model *found = NULL;
    for (int i = 0; i < p->n_models; i++)
        if (strcmp(p->models[i].name, name) == 0)
            found = p->models[i].m;
    if (!found) {
        char path[4096], why[512];
        snprintf(path, sizeof(path), "%s/%s.safetensors", p->models_dir, name);
        sep_model *m = access(path, R_OK) == 0 ? sep_model_load(path, why, sizeof(why)) : NULL;
        if (!m && access(path, R_OK) != 0)
            snprintf(why, sizeof(why), "%.400s: %.100s", path, strerror(errno));
        if (m && p->n_models == p->cap_models) {
            int cap = p->cap_models ? 2 * p->cap_models : 8;
            cached_model *nm = realloc(p->models, (size_t)cap * sizeof(*nm));
            if (!nm) {
                sep_model_free(m);
                m = NULL;
                snprintf(why, sizeof(why), "out of memory");
            } else {
                p->models = nm;
                p->cap_models = cap;
            }
        }
        if (m) {
            snprintf(p->models[p->n_models].name, SEP_RING_MODEL_MAX, "%s", name);
            p->models[p->n_models++].m = m;
            found = m;
        } else {
            set_err(err, errlen, "model %s unavailable: %s", name, why);
        }
    }
    pthread_mutex_unlock(&p->model_mu);
    return found;
}

const sep_model *sep_pool_model(sep_pool *p, const char *model, char *err, size_t errlen)
{
    if (!p) {
        set_err(err, errlen, "no pool");
        return NULL;
    }
    return model_lookup(p, model, err, errlen);
}

/* ---------------------------------------------------------------- requests (under mu) */

static void list_remove(sep_pool *p, req *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else if (p->head == r)
        p->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else if (p->tail == r)
        p->tail = r->prev;
    r->prev = r->next = NULL;
}

/* Ends a request: off the active list, its entries in in-flight batches detached (their
 * outputs are dropped), the caller woken. The caller may return at once. */
static void finish(sep_pool *p, req *r, int status, const char *fmt, ...)
{
    if (r->done)
        return;
    r->done = 1;
    r->status = status;
    if (fmt && r->err && r->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->err, r->errlen, fmt, ap);
        va_end(ap);
    } else if (r->err && r->errlen) {
        snprintf(r->err, r->errlen, "%s", sep_pool_strerror(status));
    }
    list_remove(p, r);
    for (int i = 0; i < p->n; i++)
        for (int b = 0; b < p->w[i].n_out; b++)
            for (int k = 0; k < p->w[i].out[b].count; k++)
                if (p->w[i].out[b].e[k].r == r)
                    p->w[i].out[b].e[k].r = NULL;
    pthread_cond_signal(&r->cv);
}

static void fail_all(sep_pool *p, int code, const char *why)
{
    for (req *r = p->head, *nx; r; r = nx) {
        nx = r->next;
        finish(p, r, code, "%s", why);
    }
}

static int has_pending(const req *r)
{
    return !r->done && (r->n_rerun > 0 || r->next_seg < r->n);
}

static int take_seg(req *r)
{
    if (r->n_rerun > 0)
        return r->rerun[--r->n_rerun];
    return r->next_seg++;
}

static void requeue(req *r, int seg)
{
    r->rerun[r->n_rerun++] = seg; /* at most n: a segment is queued or in flight, once */
}

/* ---------------------------------------------------------------- workers (dispatcher) */

static int pidfd_open_(pid_t pid)
{
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

static void spawn(sep_pool *p, wkr *w)
{
    char fds[3][16], ppid[16], threads[16], mb[16], delay[16], dev_env[48];
    snprintf(fds[0], 16, "%d", w->shm.memfd);
    snprintf(fds[1], 16, "%d", sep_ring_fd(&w->shm, SEP_RING_CMD));
    snprintf(fds[2], 16, "%d", sep_ring_fd(&w->shm, SEP_RING_EVT));
    snprintf(ppid, sizeof(ppid), "%d", (int)getpid());
    snprintf(threads, sizeof(threads), "%d", p->cfg.threads);
    snprintf(mb, sizeof(mb), "%d", p->reg_slots);
    snprintf(delay, sizeof(delay), "%d", p->delay_ms);
    int cuda = strncmp(p->device, "cuda", 4) == 0;
    /* GPU i: the i-th entry of our own CUDA_VISIBLE_DEVICES when the operator set one
     * (e.g. "2,3" -> workers see GPU 2 and GPU 3), else device i */
    snprintf(dev_env, sizeof(dev_env), "CUDA_VISIBLE_DEVICES=%d", w->index);
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (cuda && vis && *vis) {
        const char *q = vis;
        for (int i = 0; i < w->index && q; i++) {
            q = strchr(q, ',');
            if (q)
                q++;
        }
        if (q && *q && *q != ',') {
            size_t len = strcspn(q, ",");
            if (len < sizeof(dev_env) - 22)
                snprintf(dev_env, sizeof(dev_env), "CUDA_VISIBLE_DEVICES=%.*s", (int)len, q);
        }
    }
    char *argv[] = {p->exe,     "device-worker", "--shm-fd", fds[0],       "--cmd-fd",
                    fds[1],     "--evt-fd",      fds[2],     "--ppid",     ppid,
                    "--models", p->models_dir,   "--device", p->device,    "--threads",
                    threads,    "--max-batch",   mb,         "--delay-ms", delay,
                    NULL};
    /* environment: ours, with CUDA_VISIBLE_DEVICES pinned for GPU workers */
    size_t ne = 0;
    while (environ && environ[ne])
        ne++;
    char **envp = calloc(ne + 2, sizeof(char *));
    if (!envp) {
        w->restart_at = now_s() + 1.0;
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (!cuda || strncmp(environ[i], "CUDA_VISIBLE_DEVICES=", 21) != 0)
            envp[k++] = environ[i];
    if (cuda)
        envp[k++] = dev_env;
    envp[k] = NULL;
    int keep[3] = {w->shm.memfd, sep_ring_fd(&w->shm, SEP_RING_CMD),
                   sep_ring_fd(&w->shm, SEP_RING_EVT)};
    sep_shm_reset(&w->shm);
    pid_t pid = fork();
    if (pid == 0) {
        /* child: async-signal-safe calls only until exec */
        for (int i = 0; i < 3; i++)
            fcntl(keep[i], F_SETFD, 0); /* inherit these three across exec */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        for (int s = 1; s < 32; s++)
            if (s != SIGKILL && s != SIGSTOP)
                sigaction(s, &sa, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(p->exe, argv, envp);
        _exit(127);
    }
    free(envp);
    if (pid < 0) {
        logf_("worker %d: fork: %s", w->index, strerror(errno));
        w->restart_at = now_s() + 1.0;
        return;
    }
    w->pid = pid;
    w->pidfd = pidfd_open_(pid);
    w->state = W_STARTING;
    w->kill_reason = KILL_NONE;
    w->forwards = 0;
    w->recycle = 0;
    w->n_out = 0;
    w->region_busy = 0;
    w->kill_at = 0;
    snprintf(w->device, sizeof(w->device), cuda ? "cuda:%d" : "cpu", w->index);
}

static void kill_worker(wkr *w, int reason)
{
    if (w->pid <= 0 || w->kill_reason == KILL_DEADLINE || w->kill_reason == KILL_PROTOCOL)
        return;
    w->kill_reason = reason;
    kill(w->pid, SIGKILL);
}

/* The worker's process exited with wait status st: settle its batches, reset. */
static void drain_events(sep_pool *p, wkr *w);

static void on_exit_(sep_pool *p, wkr *w, int st)
{
    drain_events(p, w); /* a DONE pushed just before it died still counts */
    if (w->pidfd >= 0)
        close(w->pidfd);
    w->pidfd = -1;
    int was_ready = w->state == W_READY || w->state == W_STOPPING;
    int deliberate = w->kill_reason != KILL_NONE || p->stopping;
    if (WIFSIGNALED(st))
        snprintf(w->last_exit, sizeof(w->last_exit), "pid %d killed by signal %d", (int)w->pid,
                 WTERMSIG(st));
    else
        snprintf(w->last_exit, sizeof(w->last_exit), "pid %d exited with status %d", (int)w->pid,
                 WEXITSTATUS(st));
    for (int b = 0; b < w->n_out; b++) {
        batch *bt = &w->out[b];
        for (int k = 0; k < bt->count; k++) {
            req *r = bt->e[k].r;
            if (!r)
                continue;
            int seg = bt->e[k].seg;
            if (b == 0 && !deliberate && ++r->crashes[seg] >= 2) {
                finish(p, r, SEP_POOL_ECRASH, "device worker %d died twice on segment %d (%s)",
                       w->index, seg, w->last_exit);
                continue;
            }
            requeue(r, seg);
            if (b == 0 && !deliberate)
                p->ctr.reruns++;
        }
    }
    if (!deliberate)
        logf_("worker %d (%s): %s%s", w->index, w->device, w->last_exit,
              w->n_out ? ", its batches re-queued" : "");
    w->n_out = 0;
    w->region_busy = 0;
    w->pid = 0;
    w->state = W_DEAD;
    sep_shm_reset(&w->shm);
    if (p->stopping)
        return;
    w->restarts++;
    p->ctr.restarts++;
    if (was_ready || w->kill_reason != KILL_NONE) {
        w->fast_failures = 0;
        w->restart_at = 0;
    } else {
        w->fast_failures++;
        w->restart_at = now_s() + fmin(5.0, 0.05 * (double)(1 << (w->fast_failures - 1)));
    }
    w->kill_reason = KILL_NONE;
}

static void reap(sep_pool *p, wkr *w)
{
    if (w->pid <= 0)
        return;
    int st;
    pid_t r = waitpid(w->pid, &st, WNOHANG);
    if (r == w->pid)
        on_exit_(p, w, st);
    else if (r < 0 && errno == ECHILD)
        on_exit_(p, w, 0); /* reaped by someone else: treat as gone */
}

static int all_broken(sep_pool *p)
{
    for (int i = 0; i < p->n; i++)
        if (p->w[i].state == W_READY || p->w[i].fast_failures < BROKEN_AFTER)
            return 0;
    return 1;
}

static void on_done(sep_pool *p, wkr *w, const sep_msg *m)
{
    if (w->n_out == 0 || m->id != w->out[0].id) {
        logf_("worker %d: unexpected DONE %u; killing it", w->index, m->id);
        kill_worker(w, KILL_PROTOCOL);
        return;
    }
    batch bt = w->out[0];
    memmove(&w->out[0], &w->out[1], sizeof(batch) * (size_t)(w->n_out - 1));
    w->n_out--;
    const float *outs = sep_shm_out(&w->shm, (uint32_t)(bt.region * p->reg_slots));
    if (m->status == SEP_MSG_OK) {
        /* outputs to the callers without the lock (as in schedule) */
        pthread_mutex_unlock(&p->mu);
        for (int k = 0; k < bt.count; k++)
            if (bt.e[k].r)
                memcpy(bt.e[k].r->out + (size_t)bt.e[k].seg * bt.e[k].r->seg_out,
                       outs + (size_t)k * bt.e[k].r->seg_out, bt.e[k].r->seg_out * sizeof(float));
        pthread_mutex_lock(&p->mu);
    }
    for (int k = 0; k < bt.count; k++) {
        req *r = bt.e[k].r;
        if (!r)
            continue;
        if (m->status != SEP_MSG_OK) {
            int code = m->status == SEP_MSG_EMODEL    ? SEP_POOL_EMODEL
                       : m->status == SEP_MSG_EDEVICE ? SEP_POOL_EDEVICE
                                                      : SEP_POOL_EINVAL;
            char text[SEP_RING_TEXT_MAX];
            memcpy(text, m->text, sizeof(text));
            text[sizeof(text) - 1] = 0;
            finish(p, r, code, "%s", text[0] ? text : sep_pool_strerror(code));
            continue;
        }
        if (--r->remaining == 0)
            finish(p, r, SEP_POOL_OK, NULL);
    }
    w->region_busy &= ~(1u << bt.region);
    w->forwards++;
    w->batches++;
    if (m->status == SEP_MSG_OK) {
        w->segments += (uint64_t)bt.count;
        p->ctr.segments += (uint64_t)bt.count;
    }
    if (p->cfg.max_jobs_per_worker > 0 && w->forwards >= (uint64_t)p->cfg.max_jobs_per_worker)
        w->recycle = 1;
}

static void drain_events(sep_pool *p, wkr *w)
{
    sep_msg m;
    char err[256];
    sep_ring_clear(&w->shm, SEP_RING_EVT);
    while (w->pid > 0) {
        int r = sep_ring_pop(&w->shm, SEP_RING_EVT, &m);
        if (r == 0)
            break;
        if (r < 0 || sep_msg_validate(&w->shm, &m, err, sizeof(err)) ||
            (m.type != SEP_MSG_READY && m.type != SEP_MSG_DONE)) {
            logf_("worker %d: bad event (%s); killing it", w->index, r < 0 ? "corrupt ring" : err);
            kill_worker(w, KILL_PROTOCOL);
            break;
        }
        if (m.type == SEP_MSG_READY) {
            if (w->state == W_STARTING)
                w->state = W_READY;
            w->fast_failures = 0;
            pthread_cond_broadcast(&p->state_cv);
        } else {
            on_done(p, w, &m);
        }
    }
}

/* Picks the worker for the next batch: ready, not draining, a free region, fewest in
 * flight (an idle one first). */
static wkr *pick_worker(sep_pool *p)
{
    wkr *best = NULL;
    for (int i = 0; i < p->n; i++) {
        wkr *w = &p->w[i];
        if (w->state != W_READY || w->recycle || w->kill_reason || w->n_out >= p->max_out)
            continue;
        if (w->region_busy == (1u << p->n_regions) - 1)
            continue;
        if (!best || w->n_out < best->n_out)
            best = w;
    }
    return best;
}

static int same_group(const req *a, const req *b)
{
    return a->model_index == b->model_index && a->length == b->length &&
           strcmp(a->model, b->model) == 0;
}

static void schedule(sep_pool *p)
{
    for (;;) {
        req *first = p->head;
        while (first && !has_pending(first))
            first = first->next;
        if (!first)
            return;
        wkr *w = pick_worker(p);
        if (!w)
            return;
        int region = 0;
        while (w->region_busy & (1u << region))
            region++;
        batch *bt = &w->out[w->n_out];
        memset(bt, 0, sizeof(*bt));
        bt->region = region;
        uint32_t slot = (uint32_t)(region * p->reg_slots);
        float *ins = sep_shm_in(&w->shm, slot);
        req *last = NULL;
        int callers = 0;
        for (req *r = first; r && bt->count < p->reg_slots; r = r->next) {
            if (!has_pending(r) || !same_group(first, r))
                continue;
            while (has_pending(r) && bt->count < p->reg_slots) {
                int seg = take_seg(r);
                bt->e[bt->count].r = r;
                bt->e[bt->count].seg = seg;
                bt->count++;
                if (r != last)
                    callers++;
                last = r;
            }
        }
        /* Copy the inputs without the lock: only this thread finishes requests, so
         * the entries' requests (and their buffers) stay valid meanwhile. */
        pthread_mutex_unlock(&p->mu);
        for (int k = 0; k < bt->count; k++) {
            const req *r = bt->e[k].r;
            memcpy(ins + (size_t)k * r->seg_in, r->in + (size_t)bt->e[k].seg * r->seg_in,
                   r->seg_in * sizeof(float));
        }
        pthread_mutex_lock(&p->mu);
        sep_msg m;
        memset(&m, 0, sizeof(m));
        m.type = SEP_MSG_BATCH;
        m.id = bt->id = ++w->batch_seq;
        snprintf(m.model, sizeof(m.model), "%s", first->model);
        m.model_index = first->model_index;
        m.length = first->length;
        m.channels = first->channels;
        m.sources = first->sources;
        m.slot = slot;
        m.count = bt->count;
        if (sep_ring_push(&w->shm, SEP_RING_CMD, &m)) {
            /* cannot happen with MAX_OUT batches and a larger ring; undo, kill it */
            for (int k = bt->count - 1; k >= 0; k--)
                requeue(bt->e[k].r, bt->e[k].seg);
            logf_("worker %d: command ring full; killing it", w->index);
            kill_worker(w, KILL_PROTOCOL);
            continue;
        }
        w->region_busy |= 1u << region;
        w->n_out++;
        p->ctr.batches++;
        if (callers > 1)
            p->ctr.mixed_batches++;
    }
}

/* Deadlines: returns the earliest future deadline (0 = none). A request whose stop
 * flag was raised gets STOP_WAIT_S to finish, then is treated as past its deadline
 * (a hung worker must not hold a cancel or a drain until the hard time limit). */
static double check_deadlines(sep_pool *p, double now)
{
    double next = 0;
    for (req *r = p->head, *nx; r; r = nx) {
        nx = r->next;
        if (r->stop) {
            if (r->stop_seen == 0 && atomic_load(r->stop))
                r->stop_seen = now;
            double wake = r->stop_seen ? r->stop_seen + STOP_WAIT_S : now + STOP_POLL_S;
            if (r->stop_seen && (r->deadline <= 0 || wake < r->deadline))
                r->deadline = wake;
            if (!r->stop_seen && (next == 0 || wake < next))
                next = wake;
        }
        if (r->deadline <= 0)
            continue;
        if (r->deadline > now) {
            if (next == 0 || r->deadline < next)
                next = r->deadline;
            continue;
        }
        /* kill the worker running one of its segments */
        for (int i = 0; i < p->n; i++) {
            wkr *w = &p->w[i];
            if (w->n_out == 0)
                continue;
            for (int k = 0; k < w->out[0].count; k++)
                if (w->out[0].e[k].r == r) {
                    logf_("worker %d (%s): deadline passed on pid %d; killing it", w->index,
                          w->device, (int)w->pid);
                    kill_worker(w, KILL_DEADLINE);
                    break;
                }
        }
        if (r->stop_seen)
            finish(p, r, SEP_POOL_ESTOPPED, "stopped: its batch did not finish within %.0fs",
                   STOP_WAIT_S);
        else
            finish(p, r, SEP_POOL_ETIME, "deadline passed (%d of %d segments done)",
                   r->n - r->remaining, r->n);
    }
    return next;
}

static void *dispatcher(void *arg)
{
    sep_pool *p = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the supervisor's business */
    struct pollfd *pfd = calloc((size_t)(1 + 2 * p->n), sizeof(*pfd));
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n; i++)
        spawn(p, &p->w[i]);
    double stop_deadline = 0;
    while (pfd) {
        double now = now_s(), poll_until = 0;
        for (int i = 0; i < p->n; i++) {
            drain_events(p, &p->w[i]);
            reap(p, &p->w[i]);
        }
        if (p->stopping) {
            int alive = 0;
            fail_all(p, SEP_POOL_ESTOPPED, "the device pool is stopping");
            if (stop_deadline == 0) {
                stop_deadline = now + STOP_GRACE_S;
                sep_msg stop;
                memset(&stop, 0, sizeof(stop));
                stop.type = SEP_MSG_STOP;
                /* every request is failed already: a busy worker's batch is moot */
                for (int i = 0; i < p->n; i++)
                    if (p->w[i].pid > 0 &&
                        (p->w[i].n_out > 0 || sep_ring_push(&p->w[i].shm, SEP_RING_CMD, &stop)))
                        kill_worker(&p->w[i], KILL_STOP);
            }
            for (int i = 0; i < p->n; i++)
                if (p->w[i].pid > 0) {
                    alive++;
                    if (now >= stop_deadline)
                        kill_worker(&p->w[i], KILL_STOP);
                }
            if (!alive)
                break;
            poll_until = now >= stop_deadline ? 0 : stop_deadline;
        } else {
            double next = check_deadlines(p, now);
            for (int i = 0; i < p->n; i++) {
                wkr *w = &p->w[i];
                if (w->state == W_DEAD && w->restart_at <= now)
                    spawn(p, w);
                if (w->state == W_DEAD && (next == 0 || w->restart_at < next))
                    next = w->restart_at;
                if (w->recycle && w->state == W_READY && w->n_out == 0) {
                    sep_msg stop;
                    memset(&stop, 0, sizeof(stop));
                    stop.type = SEP_MSG_STOP;
                    w->state = W_STOPPING;
                    w->kill_reason = KILL_RECYCLE;
                    w->kill_at = now + STOP_GRACE_S;
                    if (sep_ring_push(&w->shm, SEP_RING_CMD, &stop))
                        kill(w->pid, SIGKILL);
                }
                if (w->state == W_STOPPING && w->pid > 0) {
                    if (now >= w->kill_at)
                        kill(w->pid, SIGKILL);
                    else if (next == 0 || w->kill_at < next)
                        next = w->kill_at;
                }
            }
            if (all_broken(p))
                fail_all(p, SEP_POOL_EDEVICE, "no device worker could start");
            schedule(p);
            pthread_cond_broadcast(&p->state_cv);
            poll_until = next;
        }
        int nf = 0, need_tick = 0;
        pfd[nf++] = (struct pollfd){.fd = p->wake_fd, .events = POLLIN};
        for (int i = 0; i < p->n; i++) {
            if (p->w[i].pid <= 0)
                continue;
            pfd[nf++] =
                (struct pollfd){.fd = sep_ring_fd(&p->w[i].shm, SEP_RING_EVT), .events = POLLIN};
            if (p->w[i].pidfd >= 0)
                pfd[nf++] = (struct pollfd){.fd = p->w[i].pidfd, .events = POLLIN};
            else
                need_tick = 1; /* no pidfd: poll waitpid */
        }
        int timeout = -1;
        if (poll_until > 0)
            timeout = (int)ceil(fmax(0.0, poll_until - now_s()) * 1000.0);
        if (need_tick && (timeout < 0 || timeout > 50))
            timeout = 50;
        if (p->stopping && timeout < 0)
            timeout = 50; /* past the grace: SIGKILLed, waiting for the pidfds */
        pthread_mutex_unlock(&p->mu);
        poll(pfd, (nfds_t)nf, timeout);
        uint64_t v;
        if (pfd[0].revents & POLLIN)
            (void)!read(p->wake_fd, &v, sizeof(v));
        pthread_mutex_lock(&p->mu);
    }
    /* stopped: every worker is reaped (or the allocation failed: kill and reap now) */
    for (int i = 0; i < p->n; i++)
        if (p->w[i].pid > 0) {
            int st;
            kill(p->w[i].pid, SIGKILL);
            waitpid(p->w[i].pid, &st, 0);
            on_exit_(p, &p->w[i], st);
        }
    fail_all(p, SEP_POOL_ESTOPPED, "the device pool is stopping");
    p->exited = 1;
    pthread_cond_broadcast(&p->state_cv);
    pthread_mutex_unlock(&p->mu);
    free(pfd);
    return NULL;
}

/* ---------------------------------------------------------------- public API */

/* The arena's slot size: the largest model in models_dir (each also cached). */
static void size_slots(sep_pool *p, int *channels, int *segment, int *sources)
{
    *channels = *segment = *sources = 0;
    DIR *d = opendir(p->models_dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        const char *ext = ".safetensors";
        if (len <= strlen(ext) || strcmp(de->d_name + len - strlen(ext), ext) != 0)
            continue;
        char name[SEP_RING_MODEL_MAX];
        if (len - strlen(ext) >= sizeof(name))
            continue;
        memcpy(name, de->d_name, len - strlen(ext));
        name[len - strlen(ext)] = 0;
        char err[256];
        const sep_model *m = model_lookup(p, name, err, sizeof(err));
        if (!m)
            continue;
        const sep_model_info *in = sep_model_get_info(m);
        if (in->audio_channels > *channels)
            *channels = in->audio_channels;
        if (in->segment_samples > *segment)
            *segment = in->segment_samples;
        if (in->n_sources > *sources)
            *sources = in->n_sources;
    }
    if (d)
        closedir(d);
}

static void free_pool(sep_pool *p)
{
    if (p->w) {
        for (int i = 0; i < p->n; i++)
            sep_shm_close(&p->w[i].shm);
        free(p->w);
    }
    for (int i = 0; i < p->n_models; i++)
        sep_model_free(p->models[i].m);
    free(p->models);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->model_mu);
    pthread_cond_destroy(&p->state_cv);
    free(p->exe);
    free(p->models_dir);
    free(p->device);
    free(p);
}

sep_pool *sep_pool_start(const sep_pool_config *c, char *err, size_t errlen)
{
    if (!c || !c->exe || !c->models_dir) {
        set_err(err, errlen, "pool: exe and models_dir are required");
        return NULL;
    }
    const char *device = c->device ? c->device : "cpu";
    if (strcmp(device, "cpu") != 0 && strcmp(device, "cuda") != 0) {
        set_err(err, errlen, "pool: unknown device \"%s\" (cpu or cuda)", device);
        return NULL;
    }
    if (c->n_workers < 1 || c->n_workers > 64 || c->threads < 0 || c->max_batch < 0 ||
        c->max_batch > SEP_RING_MAX_BATCH || c->slots < 0 || c->slots > 1024 ||
        c->max_jobs_per_worker < 0) {
        set_err(err, errlen,
                "pool: bad config (n_workers 1..64, max_batch 0..%d, slots 0..1024, "
                "threads/max_jobs_per_worker >= 0)",
                SEP_RING_MAX_BATCH);
        return NULL;
    }
    if (access(c->exe, X_OK) != 0) {
        set_err(err, errlen, "pool: %s: %s", c->exe, strerror(errno));
        return NULL;
    }
    sep_pool *p = calloc(1, sizeof(*p));
    if (!p) {
        set_err(err, errlen, "pool: out of memory");
        return NULL;
    }
    p->cfg = *c;
    p->wake_fd = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->model_mu, NULL);
    pthread_cond_init(&p->state_cv, NULL);
    p->exe = strdup(c->exe);
    p->models_dir = strdup(c->models_dir);
    p->device = strdup(device);
    p->delay_ms = c->debug_delay_ms > 0 ? c->debug_delay_ms : 0;
    p->n = c->n_workers;
    int max_batch = c->max_batch > 0 ? c->max_batch : 1;
    int slots = c->slots > 0 ? c->slots : MAX_OUT * max_batch;
    p->reg_slots = slots < max_batch ? slots : max_batch;
    p->n_regions = slots / p->reg_slots;
    if (p->n_regions > 32)
        p->n_regions = 32;
    p->max_out = p->n_regions < MAX_OUT ? p->n_regions : MAX_OUT;
    p->w = calloc((size_t)p->n, sizeof(wkr));
    p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!p->exe || !p->models_dir || !p->device || !p->w || p->wake_fd < 0) {
        set_err(err, errlen, "pool: out of memory or fds");
        free_pool(p);
        return NULL;
    }
    int ch, seg, src;
    size_slots(p, &ch, &seg, &src);
    if (c->segment_samples > 0) {
        seg = c->segment_samples;
        ch = c->channels > 0 ? c->channels : DEFAULT_CHANNELS;
        src = c->sources > 0 ? c->sources : DEFAULT_SOURCES;
    } else if (seg == 0) {
        seg = DEFAULT_SEGMENT;
        ch = DEFAULT_CHANNELS;
        src = DEFAULT_SOURCES;
    }
    p->slot_in = (size_t)ch * (size_t)seg;
    p->slot_out = p->slot_in * (size_t)src;
    for (int i = 0; i < p->n; i++) {
        p->w[i].index = i;
        p->w[i].pidfd = -1;
        if (sep_shm_create(&p->w[i].shm, 4 * MAX_OUT + 8, (uint32_t)(p->n_regions * p->reg_slots),
                           p->slot_in, p->slot_out, err, errlen)) {
            for (int j = 0; j < i; j++)
                sep_shm_close(&p->w[j].shm);
            p->n = i;
            free_pool(p);
            return NULL;
        }
    }
    if (pthread_create(&p->thread, NULL, dispatcher, p)) {
        set_err(err, errlen, "pool: cannot start the dispatcher thread");
        free_pool(p);
        return NULL;
    }
    p->thread_started = 1;
    /* wait for every worker's READY (or a worker that cannot start) */
    double until = now_s() + START_TIMEOUT_S;
    pthread_mutex_lock(&p->mu);
    int ok = 0;
    for (;;) {
        int ready = 0, failed = -1;
        for (int i = 0; i < p->n; i++) {
            if (p->w[i].state == W_READY)
                ready++;
            else if (p->w[i].fast_failures > 0)
                failed = i;
        }
        if (ready == p->n) {
            ok = 1;
            break;
        }
        if (failed >= 0) {
            set_err(err, errlen, "pool: device worker %d did not start (%s; %s device-worker)",
                    failed, p->w[failed].last_exit, p->exe);
            break;
        }
        if (now_s() >= until || p->exited) {
            set_err(err, errlen, "pool: device workers not ready after %.0f s", START_TIMEOUT_S);
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->state_cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    if (!ok) {
        sep_pool_stop(p);
        return NULL;
    }
    return p;
}

void sep_pool_stop(sep_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1; /* the dispatcher fails the waiting calls with ESTOPPED */
    wake(p);
    while (p->callers > 0 && p->thread_started)
        pthread_cond_wait(&p->state_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    if (p->thread_started)
        pthread_join(p->thread, NULL);
    free_pool(p);
}

int sep_pool_forward(sep_pool *p, const char *model, int model_index, const float *in, int n,
                     int length, float *out, double deadline, char *err, size_t errlen)
{
    return sep_pool_forward_stoppable(p, model, model_index, in, n, length, out, deadline, NULL,
                                      err, errlen);
}

int sep_pool_forward_stoppable(sep_pool *p, const char *model, int model_index, const float *in,
                               int n, int length, float *out, double deadline,
                               const atomic_int *stop, char *err, size_t errlen)
{
    if (!p || !model || n < 0 || (n > 0 && (!in || !out)) || length < 1) {
        set_err(err, errlen, "pool: bad arguments");
        return SEP_POOL_EINVAL;
    }
    const sep_model *m = model_lookup(p, model, err, errlen);
    if (!m)
        return SEP_POOL_EMODEL;
    const sep_model_info *info = sep_model_get_info(m);
    if (model_index < 0 || model_index >= info->n_models) {
        set_err(err, errlen, "model %s: network %d out of range (bag of %d)", model, model_index,
                info->n_models);
        return SEP_POOL_EINVAL;
    }
    if (length > info->segment_samples) {
        set_err(err, errlen, "model %s: length %d is longer than its segment (%d)", model, length,
                info->segment_samples);
        return SEP_POOL_EINVAL;
    }
    size_t seg_in = (size_t)info->audio_channels * (size_t)length;
    size_t seg_out = seg_in * (size_t)info->n_sources;
    if (seg_in > p->slot_in || seg_out > p->slot_out) {
        set_err(err, errlen,
                "model %s: a segment (%zu + %zu floats) does not fit the pool's arena slots "
                "(%zu + %zu; sized from %s at start)",
                model, seg_in, seg_out, p->slot_in, p->slot_out, p->models_dir);
        return SEP_POOL_EMODEL;
    }
    if (n == 0)
        return SEP_POOL_OK;
    req r;
    memset(&r, 0, sizeof(r));
    r.in = in;
    r.out = out;
    r.n = r.remaining = n;
    r.length = length;
    r.model_index = model_index;
    r.channels = info->audio_channels;
    r.sources = info->n_sources;
    r.seg_in = seg_in;
    r.seg_out = seg_out;
    snprintf(r.model, sizeof(r.model), "%s", model);
    r.deadline = deadline;
    r.stop = stop;
    r.err = err;
    r.errlen = errlen;
    r.rerun = malloc((size_t)n * sizeof(int));
    r.crashes = calloc((size_t)n, 1);
    if (!r.rerun || !r.crashes) {
        free(r.rerun);
        free(r.crashes);
        set_err(err, errlen, "pool: out of memory");
        return SEP_POOL_EINVAL;
    }
    pthread_cond_init(&r.cv, NULL);
    pthread_mutex_lock(&p->mu);
    if (p->stopping || p->exited) {
        pthread_mutex_unlock(&p->mu);
        pthread_cond_destroy(&r.cv);
        free(r.rerun);
        free(r.crashes);
        set_err(err, errlen, "the device pool is stopping");
        return SEP_POOL_ESTOPPED;
    }
    p->callers++;
    r.serial = ++p->serial;
    r.prev = p->tail;
    if (p->tail)
        p->tail->next = &r;
    else
        p->head = &r;
    p->tail = &r;
    wake(p);
    while (!r.done)
        pthread_cond_wait(&r.cv, &p->mu);
    if (--p->callers == 0 && p->stopping)
        pthread_cond_broadcast(&p->state_cv);
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&r.cv);
    free(r.rerun);
    free(r.crashes);
    return r.status;
}

static uint64_t rss_of(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    unsigned long size = 0, res = 0;
    int ok = fscanf(f, "%lu %lu", &size, &res) == 2;
    fclose(f);
    return ok ? (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

int sep_pool_stats(sep_pool *p, sep_pool_worker_stats *out, int max)
{
    if (!p)
        return 0;
    pthread_mutex_lock(&p->mu);
    int n = p->n;
    for (int i = 0; i < n && i < max; i++) {
        wkr *w = &p->w[i];
        sep_pool_worker_stats *s = &out[i];
        memset(s, 0, sizeof(*s));
        s->index = i;
        s->pid = w->pid;
        snprintf(s->device, sizeof(s->device), "%s", w->device[0] ? w->device : p->device);
        s->state = w->state == W_READY      ? (w->n_out ? SEP_WORKER_BUSY : SEP_WORKER_IDLE)
                   : w->state == W_DEAD     ? SEP_WORKER_DEAD
                   : w->state == W_STOPPING ? SEP_WORKER_BUSY
                                            : SEP_WORKER_STARTING;
        s->segments = w->segments;
        s->batches = w->batches;
        s->restarts = w->restarts;
        s->pid = w->pid;
    }
    pthread_mutex_unlock(&p->mu);
    /* RSS outside the lock: /proc reads may be slow */
    for (int i = 0; i < n && i < max; i++)
        if (out[i].pid > 0)
            out[i].rss_bytes = rss_of(out[i].pid);
    return n;
}

void sep_pool_get_counters(sep_pool *p, sep_pool_counters *out)
{
    memset(out, 0, sizeof(*out));
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    *out = p->ctr;
    pthread_mutex_unlock(&p->mu);
}
