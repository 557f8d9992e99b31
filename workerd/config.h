/*
 * config.h - the settings of `workerd run`: an INI file (parsed with inih) and a long
 * flag for every setting, flags overriding the file.
 *
 *   workerd run -c conf/workerd.conf --concurrency 4 -v
 *
 * The file holds `key = value` lines, optionally under a `[workerd]` section; `#` and
 * `;` start comments; keys are the setting names below (`-` and `_` alike). Every
 * setting is also `--name VALUE` or `--name=VALUE` on the command line. Durations
 * take a unit: `500ms`, `30s` (the default unit), `5m`, `2h`, `1d`, combined as
 * `1h30m`. Every refusal
 * names where the value came from: `conf/workerd.conf:12: ...` or `--max-batch: ...`.
 *
 * Loading is pure (no global state): the supervisor calls sep_workerd_config_load
 * again on SIGHUP with the same argv, and on success compares the old and the new
 * config with sep_workerd_config_restart_needed (settings such as redis or device
 * only take effect on a restart; the limits, intervals and log level at once).
 *
 *   setting              default              meaning
 *   redis                127.0.0.1:6379       Redis: host:port or unix:/path [db=N] [password=S]
 *   prefix               {sep}:               prefix of every Redis key (nginx's sep_key_prefix)
 *   name                 (host name)          this supervisor's consumer/worker name
 *   spool                /var/lib/sep/spool   the spool shared with nginx (inputs, stems)
 *   models_dir           models/weights       NAME.safetensors files
 *   device               auto                 auto | cpu | cuda
 *   cpu_workers          1                    CPU worker processes when there is no GPU
 *   gpus                 1                    GPU worker processes with device cuda
 *   threads              0                    engine threads per CPU worker (0 = cores/workers)
 *   max_batch            4                    segments per device batch (several jobs mix)
 *   concurrency          2                    jobs in flight at once
 *   max_jobs_per_worker  0                    recycle a worker after N jobs (0 = never)
 *   visibility_timeout   60s                  a claim's lease; only dead supervisors' jobs
 *                                             are taken over after it
 *   heartbeat_interval   5s                   heartbeat + lease refresh (< visibility/2)
 *   retry_backoff_base   2s                   first retry delay, doubled per attempt (+ jitter)
 *   retry_backoff_max    5m                   cap of the retry delay
 *   soft_time_limit      1h                   job fails with time_limit (0 = none)
 *   hard_time_limit      65m                  worker killed, job retried (0 = none)
 *   drain_timeout        30s                  SIGTERM: wait this long for running jobs
 *   janitor_interval     60s                  sweep of expired/deleted spool directories
 *   orphan_age           1h                   age of a spool dir without a record to remove
 *   dead_max             10000                length kept of the {p}dead stream
 *   verbose              0                    log level: 0 info, 1 debug (-v, -vv)
 */
#ifndef WORKERD_CONFIG_H
#define WORKERD_CONFIG_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    char redis[512];
    char prefix[65];
    char name[256];
    char spool[1024];
    char models_dir[1024];
    char device[16]; /* "auto", "cpu" or "cuda" */
    int cpu_workers;
    int threads;
    int max_batch;
    int concurrency;
    int max_jobs_per_worker;
    int gpus;
    int dead_max;
    int verbose;
    /* seconds */
    double visibility_timeout;
    double heartbeat_interval;
    double retry_backoff_base;
    double retry_backoff_max;
    double soft_time_limit; /* 0 = none */
    double hard_time_limit; /* 0 = none */
    double drain_timeout;
    double janitor_interval;
    double orphan_age;
    /* where it came from */
    char config_path[1024]; /* the file read ("" when none) */
} sep_workerd_config;

/* Every setting at its default (name: the host name). */
void sep_workerd_config_defaults(sep_workerd_config *c);

/* Loads the config: defaults, then the file of `-c FILE` / `--config FILE` (when
 * given), then every other flag. argv are the command's arguments (argv[0], the
 * command name, is skipped). Returns 0 with *c filled, 1 when -h/--help was given
 * (nothing else is done: print sep_workerd_config_help), or -1 with a message naming
 * the file:line or flag; on -1 and 1, *c is left as it was (safe to call on SIGHUP). */
int sep_workerd_config_load(sep_workerd_config *c, int argc, char **argv, char *err, size_t errlen);

/* Reads one INI file over *c (no defaults first, no cross checks). 0 or -1. */
int sep_workerd_config_read_file(sep_workerd_config *c, const char *path, char *err, size_t errlen);

/* Sets one setting from text (key with `_` or `-`). 0, or -1 with a message about the
 * value (without the origin). */
int sep_workerd_config_set(sep_workerd_config *c, const char *key, const char *value, char *err,
                           size_t errlen);

/* Rules between settings (heartbeat_interval < visibility_timeout / 2, soft limit <=
 * hard limit, backoff base <= max). 0 or -1 with a message. */
int sep_workerd_config_check(const sep_workerd_config *c, char *err, size_t errlen);

/* `workerd run --help`: usage and every setting with its flag, default and meaning. */
void sep_workerd_config_help(FILE *f);

/* The effective settings as an INI file (readable back). */
void sep_workerd_config_print(const sep_workerd_config *c, FILE *f);

/* Names of the settings changed between old and new that only a restart applies,
 * comma-separated into buf; returns how many (0: the reload applies in full). */
int sep_workerd_config_restart_needed(const sep_workerd_config *old, const sep_workerd_config *new,
                                      char *buf, size_t cap);

#endif
