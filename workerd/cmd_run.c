/*
 * cmd_run.c - `workerd run`: the settings (workerd/config.h: defaults < -c FILE <
 * flags) turned into the supervisor's (workerd/supervisor.h), then the supervisor.
 * SIGHUP loads the same file and flags again; what only a restart can change is
 * reported and kept.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "models/backend.h"
#include "workerd/commands.h"
#include "workerd/config.h"
#include "workerd/redis_client.h"
#include "workerd/supervisor.h"

typedef struct {
    int argc;
    char **argv;
    sep_workerd_config current;
} run_ctx;

/* device auto: "cuda" when this build has the CUDA backend and it starts on GPU 0,
 * else "cpu". The probe runs once (at startup: the device is a restart-only setting),
 * in a child process, so that this process never holds a CUDA context or GPU memory
 * (its device workers are separate processes, one per GPU). */
static const char *auto_device(void)
{
    static int probed = -1;
    if (probed >= 0)
        return probed ? "cuda" : "cpu";
    probed = 0;
    /* in a child: the supervisor never maps the CUDA libraries nor holds a context */
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char err[512];
        sep_backend *be = sep_cuda_backend_open(0, err, sizeof(err));
        if (!be) {
            if (!strstr(err, "has no CUDA backend")) /* a CPU-only build: nothing to say */
                fprintf(stderr, "workerd: device auto: %s; using the CPU\n", err);
            _exit(1);
        }
        be->ops->destroy(be);
        _exit(0);
    }
    int st = 0;
    probed = pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    return probed ? "cuda" : "cpu";
}

static int to_settings(const sep_workerd_config *c, sep_supervisor_settings *s, char *err,
                       size_t errlen)
{
    memset(s, 0, sizeof(*s));
    if (sep_redis_parse_spec(c->redis, s->redis, sizeof(s->redis), s->redis_user,
                             sizeof(s->redis_user), s->redis_password, sizeof(s->redis_password),
                             &s->redis_db, err, errlen) != 0)
        return -1;
    snprintf(s->prefix, sizeof(s->prefix), "%s", c->prefix);
    snprintf(s->name, sizeof(s->name), "%s", c->name);
    snprintf(s->spool, sizeof(s->spool), "%s", c->spool);
    snprintf(s->models_dir, sizeof(s->models_dir), "%s", c->models_dir);
    /* auto: GPUs when the build has the CUDA backend and it starts on GPU 0 */
    snprintf(s->device, sizeof(s->device), "%s",
             strcmp(c->device, "auto") == 0 ? auto_device() : c->device);
    s->gpus = c->gpus;
    s->cpu_workers = c->cpu_workers;
    s->threads = c->threads;
    if (s->threads == 0) { /* the cores shared among the CPU workers */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        s->threads = (int)(cores > 0 ? cores : 1) / (c->cpu_workers > 0 ? c->cpu_workers : 1);
        if (s->threads < 1)
            s->threads = 1;
    }
    s->max_batch = c->max_batch;
    s->max_jobs_per_worker = c->max_jobs_per_worker;
    s->concurrency = c->concurrency;
    s->visibility_timeout = c->visibility_timeout;
    s->heartbeat_interval = c->heartbeat_interval;
    s->soft_time_limit = c->soft_time_limit;
    s->hard_time_limit = c->hard_time_limit;
    s->drain_timeout = c->drain_timeout;
    s->janitor_interval = c->janitor_interval;
    s->orphan_age = c->orphan_age;
    s->retry_backoff_base_ms = (int)(c->retry_backoff_base * 1000);
    s->retry_backoff_max_ms = (int)(c->retry_backoff_max * 1000);
    s->dead_max = c->dead_max;
    s->verbose = c->verbose;
    return 0;
}

static int reload(sep_supervisor_settings *s, void *user)
{
    run_ctx *rc = user;
    sep_workerd_config next = rc->current;
    char err[1024], restart[512];
    if (sep_workerd_config_load(&next, rc->argc, rc->argv, err, sizeof(err)) != 0) {
        fprintf(stderr, "workerd: SIGHUP: %s\n", err);
        return -1;
    }
    if (sep_workerd_config_restart_needed(&rc->current, &next, restart, sizeof(restart)))
        fprintf(stderr, "workerd: SIGHUP: only a restart applies: %s\n", restart);
    char exe[sizeof(s->exe)];
    memcpy(exe, s->exe, sizeof(exe));
    if (to_settings(&next, s, err, sizeof(err)) != 0) {
        fprintf(stderr, "workerd: SIGHUP: %s\n", err);
        return -1;
    }
    memcpy(s->exe, exe, sizeof(exe));
    rc->current = next;
    return 0;
}

int workerd_cmd_run(int argc, char **argv)
{
    static run_ctx rc;
    static sep_supervisor_settings s;
    char err[1024];
    rc.argc = argc;
    rc.argv = argv;
    sep_workerd_config_defaults(&rc.current);
    int loaded = sep_workerd_config_load(&rc.current, argc, argv, err, sizeof(err));
    if (loaded == 1) {
        sep_workerd_config_help(stdout);
        return 0;
    }
    if (loaded != 0 || to_settings(&rc.current, &s, err, sizeof(err)) != 0) {
        fprintf(stderr, "workerd run: %s\n", err);
        return 2;
    }
    ssize_t n = readlink("/proc/self/exe", s.exe, sizeof(s.exe) - 1);
    if (n > 0)
        s.exe[n] = 0;
    else
        snprintf(s.exe, sizeof(s.exe), "%s", argv[0]);
    return sep_supervisor_run(&s, reload, &rc);
}
