/*
 * device_worker.c - `workerd device-worker`: the process that owns one device (a GPU,
 * or CPU threads) and runs segment batches for the supervisor's pool (pool.c).
 *
 * It is started by the pool with fork + exec and is not meant to be run by hand:
 *
 *   workerd device-worker --shm-fd N --cmd-fd N --evt-fd N --ppid PID --models DIR
 *                         [--device cpu|cuda] [--threads N] [--max-batch N] [--delay-ms N]
 *
 * The three fds are the region of shared/sep_ring.h (memfd, command and event
 * eventfds), inherited from the supervisor. The worker:
 *   - dies with its parent (PR_SET_PDEATHSIG, and a check that the parent is still
 *     the one that started it);
 *   - maps the region and (CUDA builds) registers the PCM arena as pinned memory;
 *   - answers READY, then serves BATCH commands in order, one DONE each; each model is
 *     loaded lazily once (sep_model_load + sep_engine_create with max_batch) and kept;
 *     the batch is read from and written to the arena in place;
 *   - exits 0 on STOP, when the command ring is corrupt (exit 3), or with its parent.
 *
 * Errors reported in DONE.status: SEP_MSG_EMODEL (the file is missing or does not
 * load), SEP_MSG_EDEVICE (the device cannot be initialised - a "cuda" worker in a
 * build without the CUDA backend - or a forward pass fails, e.g. out of memory),
 * SEP_MSG_EINVAL (a message that fails validation or does not match the model).
 * --delay-ms sleeps before every forward pass (tests: crash and deadline windows).
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "models/backend.h"
#include "models/engine.h"
#include "shared/sep_ring.h"
#include "workerd/commands.h"

#define MAX_MODELS 16

typedef struct {
    char name[SEP_RING_MODEL_MAX];
    sep_model *model;
    sep_engine *engine;
} loaded_model;

typedef struct {
    sep_shm shm;
    const char *models_dir;
    const char *device;
    int threads, max_batch, delay_ms;
    loaded_model models[MAX_MODELS];
    int n_models;
    int pinned; /* the shared region is registered with the CUDA driver */
} worker;

/* Pinned host memory: a cuda worker of a build with the CUDA backend registers the
 * whole shared region once (cudaHostRegister(base, size, cudaHostRegisterPortable),
 * cuda/cuda_host.h) so host<->device copies of batches are DMA from/to the shared
 * pages, and unregisters it at exit. Failing to pin is not fatal (the copies are then
 * staged by the driver): a warning, and the worker runs. The CPU has nothing to do. */
static void log_err(const char *fmt, ...);

static int arena_pin(worker *w, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    if (strncmp(w->device, "cuda", 4) == 0 && w->shm.base && w->shm.size) {
        char why[512];
        int r = sep_cuda_host_pin(w->shm.base, w->shm.size, why, sizeof(why));
        if (r == 0)
            w->pinned = 1;
        else if (r < 0) /* (no device at all: the engine reports it on the first batch) */
            log_err("warning: batch arena not pinned (%s); copies go through the driver", why);
    }
    return 0;
}

static void arena_unpin(worker *w)
{
    if (w->pinned)
        sep_cuda_host_unpin(w->shm.base);
    w->pinned = 0;
}

static void log_err(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "workerd device-worker[%d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void reply(worker *w, const sep_msg *cmd, int status, const char *fmt, ...)
{
    sep_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SEP_MSG_DONE;
    m.id = cmd->id;
    m.status = status;
    m.pid = (int32_t)getpid();
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m.text, sizeof(m.text), fmt, ap);
        va_end(ap);
    }
    /* The protocol keeps the event ring from filling; wait politely if it ever does. */
    while (sep_ring_push(&w->shm, SEP_RING_EVT, &m))
        usleep(1000);
}

static loaded_model *get_model(worker *w, const char *name, int *status, char *err, size_t errlen)
{
    for (int i = 0; i < w->n_models; i++)
        if (strcmp(w->models[i].name, name) == 0)
            return &w->models[i];
    if (w->n_models == MAX_MODELS) {
        *status = SEP_MSG_EMODEL;
        snprintf(err, errlen, "more than %d models in one worker", MAX_MODELS);
        return NULL;
    }
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/%s.safetensors", w->models_dir, name) >=
        (int)sizeof(path)) {
        *status = SEP_MSG_EMODEL;
        snprintf(err, errlen, "model path too long");
        return NULL;
    }
    char why[300];
    sep_model *m = sep_model_load(path, why, sizeof(why));
    if (!m) {
        *status = SEP_MSG_EMODEL;
        snprintf(err, errlen, "model %s: %.180s", name, why);
        return NULL;
    }
    sep_engine_opts o = {.device = w->device, .threads = w->threads, .max_batch = w->max_batch};
    sep_engine *e = sep_engine_create(m, &o, why, sizeof(why));
    if (!e) {
        sep_model_free(m);
        *status = SEP_MSG_EDEVICE;
        snprintf(err, errlen, "model %s on %.16s: %.160s", name, w->device, why);
        return NULL;
    }
    loaded_model *lm = &w->models[w->n_models++];
    snprintf(lm->name, sizeof(lm->name), "%s", name);
    lm->model = m;
    lm->engine = e;
    return lm;
}

static void run_batch(worker *w, const sep_msg *c)
{
    char err[SEP_RING_TEXT_MAX];
    int status = SEP_MSG_OK;
    loaded_model *lm = get_model(w, c->model, &status, err, sizeof(err));
    if (!lm) {
        reply(w, c, status, "%s", err);
        return;
    }
    const sep_model_info *info = sep_model_get_info(lm->model);
    if (c->channels != info->audio_channels || c->sources != info->n_sources ||
        c->model_index >= info->n_models || c->length > info->segment_samples) {
        reply(w, c, SEP_MSG_EINVAL,
              "batch %u does not match model %s (%d channels, %d sources, %d networks, "
              "segment %d)",
              c->id, c->model, info->audio_channels, info->n_sources, info->n_models,
              info->segment_samples);
        return;
    }
    if (w->delay_ms > 0) {
        struct timespec ts = {w->delay_ms / 1000, (long)(w->delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) && errno == EINTR)
            ;
    }
    /* Packed in place: [count][channels][length] from in(slot), outputs from out(slot). */
    const float *in = sep_shm_in(&w->shm, c->slot);
    float *out = sep_shm_out(&w->shm, c->slot);
    if (sep_engine_forward(lm->engine, c->model_index, in, c->count, c->length, out, err,
                           sizeof(err))) {
        reply(w, c, SEP_MSG_EDEVICE, "forward on %s: %s", w->device, err);
        return;
    }
    reply(w, c, SEP_MSG_OK, NULL);
}

static int parse_int(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < INT_MIN || v > INT_MAX)
        return -1;
    *out = (int)v;
    return 0;
}

int workerd_cmd_device_worker(int argc, char **argv)
{
    static const struct option opts[] = {{"shm-fd", required_argument, 0, 's'},
                                         {"cmd-fd", required_argument, 0, 'c'},
                                         {"evt-fd", required_argument, 0, 'e'},
                                         {"ppid", required_argument, 0, 'p'},
                                         {"models", required_argument, 0, 'm'},
                                         {"device", required_argument, 0, 'd'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"max-batch", required_argument, 0, 'b'},
                                         {"delay-ms", required_argument, 0, 'D'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    worker w;
    memset(&w, 0, sizeof(w));
    w.device = "cpu";
    w.max_batch = 1;
    int shm_fd = -1, cmd_fd = -1, evt_fd = -1, ppid = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        int *dst = NULL;
        switch (c) {
        case 's':
            dst = &shm_fd;
            break;
        case 'c':
            dst = &cmd_fd;
            break;
        case 'e':
            dst = &evt_fd;
            break;
        case 'p':
            dst = &ppid;
            break;
        case 'j':
            dst = &w.threads;
            break;
        case 'b':
            dst = &w.max_batch;
            break;
        case 'D':
            dst = &w.delay_ms;
            break;
        case 'm':
            w.models_dir = optarg;
            break;
        case 'd':
            w.device = optarg;
            break;
        case 'h':
            printf("usage: workerd device-worker --shm-fd N --cmd-fd N --evt-fd N --ppid PID\n"
                   "         --models DIR [--device cpu|cuda] [--threads N] [--max-batch N]\n"
                   "Started by the workerd supervisor; serves segment batches over shared\n"
                   "memory (shared/sep_ring.h). Not meant to be run by hand.\n");
            return 0;
        default:
            return 2;
        }
        if (dst && parse_int(optarg, dst)) {
            log_err("bad number '%s'", optarg);
            return 2;
        }
    }
    if (shm_fd < 0 || cmd_fd < 0 || evt_fd < 0 || ppid <= 0 || !w.models_dir || w.max_batch < 1 ||
        w.threads < 0) {
        log_err("missing or bad options (see --help)");
        return 2;
    }
    /* Die with the supervisor; it may already be gone (reparented before the prctl). */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != (pid_t)ppid)
        return 1;
    char err[SEP_RING_TEXT_MAX];
    if (sep_shm_attach(&w.shm, shm_fd, cmd_fd, evt_fd, err, sizeof(err))) {
        log_err("%s", err);
        return 1;
    }
    if (arena_pin(&w, err, sizeof(err))) {
        log_err("%s", err);
        sep_shm_close(&w.shm);
        return 1;
    }
    sep_msg ready;
    memset(&ready, 0, sizeof(ready));
    ready.type = SEP_MSG_READY;
    ready.pid = (int32_t)getpid();
    snprintf(ready.text, sizeof(ready.text), "%s", w.device);
    sep_ring_push(&w.shm, SEP_RING_EVT, &ready);

    int rc = 0;
    for (;;) {
        sep_msg m;
        int r = sep_ring_wait_pop(&w.shm, SEP_RING_CMD, &m, -1);
        if (r == 0)
            continue;
        if (r < 0) {
            log_err("command ring is corrupt; exiting");
            rc = 3;
            break;
        }
        if (sep_msg_validate(&w.shm, &m, err, sizeof(err))) {
            reply(&w, &m, SEP_MSG_EINVAL, "%s", err);
            continue;
        }
        if (m.type == SEP_MSG_STOP)
            break;
        if (m.type == SEP_MSG_BATCH)
            run_batch(&w, &m);
        else
            reply(&w, &m, SEP_MSG_EINVAL, "unexpected message type %u", m.type);
    }
    for (int i = 0; i < w.n_models; i++) {
        sep_engine_free(w.models[i].engine);
        sep_model_free(w.models[i].model);
    }
    arena_unpin(&w);
    sep_shm_close(&w.shm);
    return rc;
}
