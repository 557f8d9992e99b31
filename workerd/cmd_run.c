/*
 * cmd_run.c - `workerd run`: settings from a config file and flags, then the
 * supervisor (supervisor.h).
 *
 * One table below lists every setting once: its config key (section-less INI,
 * `key = value`, parsed by inih), its long flag (--key), default and meaning; --help
 * prints it. Precedence: defaults < config file (-c FILE) < flags. SIGHUP reads the
 * file again and re-applies the flags, so a flag keeps winning after a reload.
 */
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "workerd/commands.h"
#include "workerd/supervisor.h"

typedef enum { T_STR, T_INT, T_SECONDS, T_FLAG } setting_type;

typedef struct {
    const char *key;
    setting_type type;
    size_t offset;
    size_t size; /* T_STR: buffer size */
    const char *dflt;
    double min, max; /* T_INT / T_SECONDS */
    const char *help;
} setting;

#define S_STR(k, field, d, h)                                                                      \
    {                                                                                              \
        k, T_STR, offsetof(sep_supervisor_settings, field),                                        \
            sizeof(((sep_supervisor_settings *)0)->field), d, 0, 0, h                              \
    }
#define S_INT(k, field, d, lo, hi, h)                                                              \
    {                                                                                              \
        k, T_INT, offsetof(sep_supervisor_settings, field), 0, d, lo, hi, h                        \
    }
#define S_SEC(k, field, d, lo, hi, h)                                                              \
    {                                                                                              \
        k, T_SECONDS, offsetof(sep_supervisor_settings, field), 0, d, lo, hi, h                    \
    }

static const setting settings[] = {
    S_STR("redis", redis, "127.0.0.1:6379", "Redis address: host:port or unix:/path"),
    S_STR("redis-password", redis_password, "", "AUTH password (empty: none)"),
    S_INT("redis-db", redis_db, "0", 0, 15, "Redis database number"),
    S_STR("prefix", prefix, "{sep}:", "key prefix; must equal nginx's sep_key_prefix"),
    S_STR("name", name, "", "consumer name of this host (default: hostname)"),
    S_STR("spool", spool, "/var/lib/sep/spool", "spool directory shared with nginx (sep_spool)"),
    S_STR("models-dir", models_dir, "models/weights", "directory of NAME.safetensors weights"),
    S_STR("device", device, "cpu", "cpu, or cuda (one device worker per GPU)"),
    S_INT("gpus", gpus, "1", 1, 64, "device workers for device=cuda"),
    S_INT("cpu-workers", cpu_workers, "1", 0, 64,
          "CPU device workers (the fallback when device=cuda)"),
    S_INT("threads", threads, "0", 0, 1024, "engine threads per CPU worker (0 = all cores)"),
    S_INT("max-batch", max_batch, "4", 1, 1024, "segments per forward pass (across jobs)"),
    S_INT("max-jobs-per-worker", max_jobs_per_worker, "0", 0, INT_MAX,
          "restart a device worker after this many batches (0 = never)"),
    S_INT("concurrency", concurrency, "2", 1, 64, "jobs in flight at once on this host"),
    S_SEC("visibility-timeout", visibility_timeout, "60", 0.2, 86400,
          "seconds a claim lives without a heartbeat before another host may take it"),
    S_SEC("heartbeat-interval", heartbeat_interval, "5", 0.05, 3600,
          "seconds between heartbeats (each refreshes this host's claims)"),
    S_SEC("soft-time-limit", soft_time_limit, "0", 0, 1e7,
          "seconds a job may run before it fails with time_limit (0 = none)"),
    S_SEC("hard-time-limit", hard_time_limit, "0", 0, 1e7,
          "seconds before its device worker is killed and the job retried (0 = none)"),
    S_SEC("drain-timeout", drain_timeout, "30", 0, 86400,
          "seconds SIGTERM waits for running jobs before giving them back"),
    S_SEC("janitor-interval", janitor_interval, "30", 0.1, 86400,
          "seconds between janitor passes (expired and orphaned spool directories)"),
    S_SEC("orphan-age", orphan_age, "3600", 1, 1e7,
          "seconds before a spool directory without a job record is removed"),
    S_INT("retry-backoff-base", retry_backoff_base_ms, "2000", 0, INT_MAX,
          "first retry delay in ms (doubled per attempt, plus jitter up to it)"),
    S_INT("retry-backoff-max", retry_backoff_max_ms, "300000", 0, INT_MAX,
          "longest retry delay in ms"),
    S_INT("dead-max", dead_max, "10000", 1, INT_MAX, "entries kept in the dead-letter stream"),
    {"verbose", T_FLAG, offsetof(sep_supervisor_settings, verbose), 0, "0", 0, 1,
     "debug logging (-v)"},
};
#define N_SETTINGS (sizeof(settings) / sizeof(settings[0]))

static const setting *find_setting(const char *key)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(settings[i].key, key) == 0)
            return &settings[i];
    /* the config file may spell keys with '_' */
    char alt[64];
    snprintf(alt, sizeof(alt), "%s", key);
    for (char *p = alt; *p; p++)
        if (*p == '_')
            *p = '-';
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(settings[i].key, alt) == 0)
            return &settings[i];
    return NULL;
}

/* Sets one value; 0, or -1 with a message in err. */
static int apply(sep_supervisor_settings *s, const setting *st, const char *value, char *err,
                 size_t errlen)
{
    char *base = (char *)s + st->offset;
    char *end;
    switch (st->type) {
    case T_STR:
        if (strlen(value) >= st->size) {
            snprintf(err, errlen, "%s: value too long (at most %zu bytes)", st->key, st->size - 1);
            return -1;
        }
        memcpy(base, value, strlen(value) + 1);
        return 0;
    case T_FLAG:
        if (strcmp(value, "1") == 0 || strcmp(value, "yes") == 0 || strcmp(value, "true") == 0 ||
            strcmp(value, "on") == 0)
            *(int *)base = 1;
        else if (strcmp(value, "0") == 0 || strcmp(value, "no") == 0 ||
                 strcmp(value, "false") == 0 || strcmp(value, "off") == 0)
            *(int *)base = 0;
        else {
            snprintf(err, errlen, "%s: expected yes or no, got \"%s\"", st->key, value);
            return -1;
        }
        return 0;
    case T_INT: {
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < st->min || v > st->max) {
            snprintf(err, errlen, "%s: expected an integer in [%.0f, %.0f], got \"%s\"", st->key,
                     st->min, st->max, value);
            return -1;
        }
        *(int *)base = (int)v;
        return 0;
    }
    case T_SECONDS: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v) || v < st->min || v > st->max) {
            snprintf(err, errlen, "%s: expected seconds in [%g, %g], got \"%s\"", st->key, st->min,
                     st->max, value);
            return -1;
        }
        *(double *)base = v;
        return 0;
    }
    }
    return -1;
}

static void set_defaults(sep_supervisor_settings *s)
{
    char err[256];
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < N_SETTINGS; i++)
        apply(s, &settings[i], settings[i].dflt, err, sizeof(err));
}

typedef struct {
    sep_supervisor_settings *s;
    const char *path;
    char err[512];
} file_ctx;

/* inih (Debian's build) passes no line number: a handler that returns 0 makes
 * ini_parse return the line of that first error, which load_file puts in front. */
static int on_ini(void *user, const char *section, const char *name, const char *value)
{
    file_ctx *fc = user;
    char why[300];
    if (fc->err[0])
        return 0;
    if (section && section[0]) {
        snprintf(fc->err, sizeof(fc->err), "sections are not used ([%s])", section);
        return 0;
    }
    const setting *st = find_setting(name);
    if (!st) {
        snprintf(fc->err, sizeof(fc->err), "unknown setting \"%s\" (workerd run --help)", name);
        return 0;
    }
    if (apply(fc->s, st, value, why, sizeof(why)) != 0) {
        snprintf(fc->err, sizeof(fc->err), "%s", why);
        return 0;
    }
    return 1;
}

static int load_file(sep_supervisor_settings *s, const char *path, char *err, size_t errlen)
{
    file_ctx fc = {s, path, ""};
    int rc = ini_parse(path, on_ini, &fc);
    if (fc.err[0]) {
        snprintf(err, errlen, "%s:%d: %s", path, rc, fc.err);
        return -1;
    }
    if (rc < 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    if (rc > 0) {
        snprintf(err, errlen, "%s:%d: not a key = value line", path, rc);
        return -1;
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: workerd run [-c FILE] [--SETTING VALUE]... [-v]\n\n"
               "Runs the daemon: claims queued jobs from Redis, separates them on device\n"
               "workers and writes their stems into the spool. Every setting can be given in\n"
               "the config file (`key = value`) or as a flag; flags win.\n\n"
               "  -c, --config FILE   the config file (e.g. conf/workerd.conf)\n"
               "  -v, --verbose       debug logging\n"
               "  -h, --help          this text\n\n"
               "settings (default):\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        if (settings[i].type == T_FLAG)
            continue;
        fprintf(f, "  --%-22s %s (%s)\n", settings[i].key, settings[i].help,
                settings[i].dflt[0] ? settings[i].dflt : "\"\"");
    }
}

typedef struct {
    const char *config;
    int argc;
    char **argv;
} run_ctx;

/* Settings from scratch: defaults, the file, then the flags (so a reload keeps flags). */
static int build(sep_supervisor_settings *s, const run_ctx *rc, char *err, size_t errlen)
{
    set_defaults(s);
    if (rc->config && load_file(s, rc->config, err, errlen) != 0)
        return -1;
    static struct option longopts[N_SETTINGS + 4];
    size_t n = 0;
    for (size_t i = 0; i < N_SETTINGS; i++)
        longopts[n++] = (struct option){
            settings[i].key, settings[i].type == T_FLAG ? no_argument : required_argument, NULL,
            1000 + (int)i};
    longopts[n++] = (struct option){"config", required_argument, NULL, 'c'};
    longopts[n++] = (struct option){"help", no_argument, NULL, 'h'};
    longopts[n] = (struct option){0, 0, 0, 0};
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(rc->argc, rc->argv, "c:vh", longopts, NULL)) != -1) {
        if (c == 'c' || c == 'h')
            continue;
        if (c == 'v') {
            s->verbose = 1;
            continue;
        }
        if (c >= 1000 && c < 1000 + (int)N_SETTINGS) {
            const setting *st = &settings[c - 1000];
            if (st->type == T_FLAG) {
                *(int *)((char *)s + st->offset) = 1;
                continue;
            }
            if (apply(s, st, optarg, err, errlen) != 0)
                return -1;
            continue;
        }
        snprintf(err, errlen, "unknown or incomplete option \"%s\" (workerd run --help)",
                 rc->argv[optind - 1]);
        return -1;
    }
    if (optind < rc->argc) {
        snprintf(err, errlen, "unexpected argument \"%s\"", rc->argv[optind]);
        return -1;
    }
    if (!s->name[0]) {
        char host[100] = "workerd";
        gethostname(host, sizeof(host) - 1);
        snprintf(s->name, sizeof(s->name), "%s", host);
    }
    for (const char *p = s->name; *p; p++)
        if (*p <= ' ' || *p > '~') {
            snprintf(err, errlen, "name: only visible ASCII without spaces");
            return -1;
        }
    if (strcmp(s->device, "cpu") != 0 && strcmp(s->device, "cuda") != 0) {
        snprintf(err, errlen, "device: cpu or cuda, got \"%s\"", s->device);
        return -1;
    }
    if (strcmp(s->device, "cpu") == 0 && s->cpu_workers < 1) {
        snprintf(err, errlen, "cpu-workers: at least 1 with device=cpu");
        return -1;
    }
    if (s->heartbeat_interval * 2 > s->visibility_timeout) {
        snprintf(err, errlen,
                 "heartbeat-interval (%gs) must be at most half the visibility-timeout (%gs): "
                 "claims are refreshed on every heartbeat",
                 s->heartbeat_interval, s->visibility_timeout);
        return -1;
    }
    if (s->retry_backoff_max_ms < s->retry_backoff_base_ms) {
        snprintf(err, errlen, "retry-backoff-max must be >= retry-backoff-base");
        return -1;
    }
    return 0;
}

static int reload(sep_supervisor_settings *s, void *user)
{
    char err[512];
    if (build(s, user, err, sizeof(err)) != 0) {
        fprintf(stderr, "workerd: reload: %s\n", err);
        return -1;
    }
    return 0;
}

int workerd_cmd_run(int argc, char **argv)
{
    run_ctx rc = {NULL, argc, argv};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc)
            rc.config = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            rc.config = argv[i] + 9;
    }
    static sep_supervisor_settings s;
    char err[512];
    if (build(&s, &rc, err, sizeof(err)) != 0) {
        fprintf(stderr, "workerd run: %s\n", err);
        return 2;
    }
    if (!s.exe[0]) {
        ssize_t n = readlink("/proc/self/exe", s.exe, sizeof(s.exe) - 1);
        if (n <= 0)
            snprintf(s.exe, sizeof(s.exe), "%s", argv[0]);
        else
            s.exe[n] = 0;
    }
    return sep_supervisor_run(&s, reload, &rc);
}
