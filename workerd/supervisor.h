/*
 * supervisor.h - `workerd run`: the daemon that turns queued jobs into stems.
 *
 * One supervisor per host. It reads {p}q:high before {p}q:normal through the consumer
 * group, claims each entry with the `claim` script (an attempt token: fencing), runs
 * each job on its own thread through the job runner (workerd/jobexec.h), whose
 * segments go to the device-worker pool (workerd/pool.h), and finishes it with
 * `complete` (which acks: late ack) or `fail` (retry with backoff, or dead). On every
 * heartbeat it `touch`es each running job, which resets the stream entry's idle time,
 * so XAUTOCLAIM after the visibility timeout only takes jobs of dead supervisors; the
 * same timer promotes due retries, reclaims entries of dead supervisors and runs the
 * janitor (spool directories of expired records and orphaned uploads).
 *
 * Each attempt writes its stems under its own names ({stem}.{tag}.{ext}, tag from the
 * token), so an attempt whose token went stale never makes its files visible: its
 * `complete` is refused and it removes them.
 *
 * Signals: SIGTERM/SIGINT drain (no new claims; jobs that do not finish within
 * drain_timeout are given back at once with `requeue`; exit 0), SIGHUP reloads the
 * settings that can change while running (see sep_supervisor_reload).
 */
#ifndef WORKERD_SUPERVISOR_H
#define WORKERD_SUPERVISOR_H

#include <signal.h>

typedef struct {
    /* Redis */
    char redis[512];
    char redis_user[128];
    char redis_password[256];
    int redis_db;
    char prefix[72];
    /* this host */
    char name[256];
    char spool[1024];
    char models_dir[1024];
    char exe[1024]; /* the workerd binary, exec'd for device workers */
    /* device workers */
    char device[16]; /* "cpu" or "cuda" */
    int gpus;        /* device workers for "cuda" (one per GPU) */
    int cpu_workers; /* CPU device workers (also the fallback for "cuda") */
    int threads;     /* engine threads per CPU worker (0 = all cores) */
    int max_batch;   /* segments per forward pass */
    int max_jobs_per_worker;
    /* jobs */
    int concurrency;           /* jobs in flight at once */
    double visibility_timeout; /* s: a claim not touched for this long is a dead worker's */
    double heartbeat_interval; /* s */
    double soft_time_limit;    /* s, 0 = none: the job fails with time_limit */
    double hard_time_limit;    /* s, 0 = none: the device worker is killed, job retried */
    double drain_timeout;      /* s: SIGTERM waits this long before giving jobs back */
    double janitor_interval;   /* s */
    double orphan_age;         /* s: a spool dir with no record this old is removed */
    int retry_backoff_base_ms;
    int retry_backoff_max_ms;
    int dead_max; /* MAXLEN ~ of {p}dead */
    int verbose;
} sep_supervisor_settings;

/* Runs until SIGTERM/SIGINT (after the drain) or a fatal error. `reload`, when not
 * NULL, is called on SIGHUP to read the settings again into *s (returns 0 or -1 to
 * keep the old ones). Returns the process exit status. */
int sep_supervisor_run(sep_supervisor_settings *s,
                       int (*reload)(sep_supervisor_settings *s, void *user), void *user);

#endif
