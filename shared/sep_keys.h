/*
 * The Redis key schema of the service, and builders for every key name.
 *
 * Every key starts with a configurable prefix {p}, default "{sep}:". Its braces are
 * a Redis Cluster hash tag: all keys of the service hash to one slot, so the Lua
 * scripts (which move a job between its hash, its queue and the indexes in one
 * step) run on a Cluster too. A prefix without a tag works on a standalone Redis
 * only. shared/README.md has the table with what bounds each key.
 *
 *   {p}job:{id}       hash    the job record (fields: shared/sep_job.h); gets a TTL
 *                             of result_ttl when the job reaches a terminal state
 *   {p}q:high         stream  queue of high-priority jobs, consumer group "workers";
 *   {p}q:normal       stream  ... normal priority. Entry fields: "id" {job id}.
 *                             One entry per queued or running job; the scripts
 *                             XACK + XDEL it when the job leaves the queue
 *   {p}delayed        zset    job ids waiting for a retry, score = due time (ms)
 *   {p}running        zset    running job ids, score = deadline (ms): last claim
 *                             or touch + the visibility timeout
 *   {p}expiry         zset    finished job ids, score = when the record expires
 *                             (ms); the janitor removes their spool directories
 *   {p}dead           stream  jobs failed for good: id, code, message, attempts
 *                             (capped with MAXLEN ~)
 *   {p}ev:{id}        pub/sub channel of one job's events (JSON, see sep_job.h)
 *   {p}worker:{name}  hash    a worker's heartbeat, with a TTL
 *   {p}workers        zset    worker names scored by when their heartbeat expires
 *   {p}stats          hash    counters and gauges (SEP_STAT_* below)
 *   {p}idem:{key}     string  Idempotency-Key -> job id, with a TTL
 *
 * Builders write the key into a caller buffer and return its length, or 0 when it
 * does not fit (nothing useful is ever 0 bytes long). They never allocate.
 */
#ifndef SEP_KEYS_H
#define SEP_KEYS_H

#include <stddef.h>

#include "shared/sep_str.h"

#define SEP_DEFAULT_PREFIX "{sep}:"
#define SEP_PREFIX_MAX 64
#define SEP_GROUP "workers"

/* Longest key any builder makes with a valid prefix and a key/name of at most
 * SEP_KEY_PART_MAX bytes. */
#define SEP_KEY_PART_MAX 255
#define SEP_KEY_MAX (SEP_PREFIX_MAX + 16 + SEP_KEY_PART_MAX)

/* {p}stats fields. Counters only grow; gauges follow the jobs' states. */
#define SEP_STAT_SUBMITTED "submitted"
#define SEP_STAT_COMPLETED "completed"
#define SEP_STAT_FAILED "failed"
#define SEP_STAT_RETRIED "retried"
#define SEP_STAT_CANCELED "canceled"
#define SEP_STAT_BYTES_IN "bytes_in"
#define SEP_STAT_BYTES_OUT "bytes_out"
#define SEP_STAT_AUDIO_MS "audio_ms" /* audio of completed jobs, ms */
#define SEP_STAT_QUEUED "queued"     /* gauge: jobs in status queued */
#define SEP_STAT_RUNNING "running"   /* gauge: jobs in status running */

typedef enum sep_priority { SEP_PRIORITY_NORMAL = 0, SEP_PRIORITY_HIGH = 1 } sep_priority_t;

/* 1 when prefix is usable: 1..SEP_PREFIX_MAX bytes of visible ASCII (no spaces,
 * no control characters). */
int sep_prefix_valid(sep_str_t prefix);

size_t sep_key_job(char *buf, size_t cap, sep_str_t prefix, sep_str_t id);
size_t sep_key_queue(char *buf, size_t cap, sep_str_t prefix, sep_priority_t priority);
size_t sep_key_delayed(char *buf, size_t cap, sep_str_t prefix);
size_t sep_key_dead(char *buf, size_t cap, sep_str_t prefix);
size_t sep_key_running(char *buf, size_t cap, sep_str_t prefix);
size_t sep_key_expiry(char *buf, size_t cap, sep_str_t prefix);
size_t sep_key_events(char *buf, size_t cap, sep_str_t prefix, sep_str_t id);
size_t sep_key_worker(char *buf, size_t cap, sep_str_t prefix, sep_str_t name);
size_t sep_key_workers(char *buf, size_t cap, sep_str_t prefix);
size_t sep_key_stats(char *buf, size_t cap, sep_str_t prefix);
size_t sep_key_idem(char *buf, size_t cap, sep_str_t prefix, sep_str_t key);

/*
 * The KEYS every job script (claim, touch, progress, complete, fail, requeue, cancel,
 * force_cancel) takes, in this order: {p}job:{id} {p}stats {p}q:high {p}q:normal
 * {p}delayed {p}running {p}expiry {p}dead (shared/README.md).
 */
#define SEP_JOB_KEYS 8
typedef struct sep_job_keys {
    char key[SEP_JOB_KEYS][SEP_KEY_MAX];
    size_t len[SEP_JOB_KEYS];
} sep_job_keys_t;

/* Fills keys for job id; 0, or -1 when the id or prefix makes no key. */
int sep_job_keys(sep_job_keys_t *keys, sep_str_t prefix, sep_str_t id);

/* "high" / "normal", and back (returns -1 for anything else). */
const char *sep_priority_name(sep_priority_t priority);
int sep_priority_from_name(sep_str_t name, sep_priority_t *out);

/* 1 when an Idempotency-Key header value is acceptable: 1..255 bytes of visible
 * ASCII (0x21..0x7e). */
int sep_idempotency_key_valid(sep_str_t key);

#endif
