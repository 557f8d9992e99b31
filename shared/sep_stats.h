/*
 * The operations numbers: the reply of the `stats` script (shared/lua/stats.lua, one
 * JSON text) read with jansson, and the JSON of GET /v1/stats built from it. The nginx
 * module answers that route (and renders /metrics and GET /v1/models from the same
 * reply); `workerd inspect --json` prints the same document.
 *
 * Call the script with EVALSHA sha 7 KEYS... ARGV[1] = SEP_STATS_WORKERS_MAX, the KEYS
 * from sep_stats_keys(); parse the reply with sep_stats_parse().
 */
#ifndef SEP_STATS_H
#define SEP_STATS_H

#include <jansson.h>
#include <stddef.h>

#include "shared/sep_keys.h"
#include "shared/sep_str.h"

#define SEP_STATS_KEYS 7
#define SEP_STATS_WORKERS_MAX "1000" /* most workers one answer lists */

/* KEYS of the stats script: {p}stats {p}q:high {p}q:normal {p}delayed {p}dead
 * {p}running {p}workers. */
typedef struct {
    char key[SEP_STATS_KEYS][SEP_KEY_MAX];
    size_t len[SEP_STATS_KEYS];
} sep_stats_keys_t;

/* 0, or -1 when the prefix makes no key. */
int sep_stats_keys(sep_stats_keys_t *k, sep_str_t prefix);

/* The script's reply text as a JSON object (new reference), or NULL. */
json_t *sep_stats_parse(const char *text, size_t len);

/* The body of GET /v1/stats (ngx_module/README.md), new reference or NULL. */
json_t *sep_stats_json(json_t *reply);

/* A comma-separated heartbeat field ("jobs", "models") as a JSON array of its non-empty
 * items; new reference or NULL. */
json_t *sep_stats_split(const char *s);

/* Readers of the reply (0 / "" / NULL when absent or malformed). */
json_int_t sep_stats_int(json_t *obj, const char *name);             /* a number member */
json_int_t sep_stats_worker_int(json_t *worker, const char *field);  /* a heartbeat field */
const char *sep_stats_worker_str(json_t *worker, const char *field); /* a heartbeat field */
json_t *sep_stats_workers(json_t *reply); /* the heartbeats array (borrowed) or NULL */

#endif
