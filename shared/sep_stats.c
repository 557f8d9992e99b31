/*
 * The stats script's reply and the JSON of GET /v1/stats (sep_stats.h). Nothing
 * here needs sep_options.c (workerd links its own model table).
 */
#include "shared/sep_stats.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const sep_stats_suffixes[SEP_STATS_KEYS] = {
    "stats", "q:high", "q:normal", "delayed", "dead", "running", "workers"};

int sep_stats_keys(sep_stats_keys_t *k, sep_str_t prefix)
{
    for (int i = 0; i < SEP_STATS_KEYS; i++) {
        int n = snprintf(k->key[i], sizeof(k->key[i]), "%.*s%s", (int)prefix.len, prefix.ptr,
                         sep_stats_suffixes[i]);
        if (prefix.len > SEP_PREFIX_MAX || n < 0 || (size_t)n >= sizeof(k->key[i]))
            return -1;
        k->len[i] = (size_t)n;
    }
    return 0;
}

json_t *sep_stats_parse(const char *text, size_t len)
{
    json_t *root = json_loadb(text, len, 0, NULL);

    if (root && !json_is_object(root)) {
        json_decref(root);
        return NULL;
    }
    return root;
}

json_int_t sep_stats_int(json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);

    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_real(v))
        return (json_int_t)json_real_value(v);
    return 0;
}

json_int_t sep_stats_worker_int(json_t *worker, const char *field)
{
    const char *s = json_string_value(json_object_get(worker, field));
    char *end;
    long long v;

    if (s == NULL || *s == '\0')
        return 0;
    v = strtoll(s, &end, 10);
    return *end == '\0' ? (json_int_t)v : 0;
}

const char *sep_stats_worker_str(json_t *worker, const char *field)
{
    const char *s = json_string_value(json_object_get(worker, field));

    return s ? s : "";
}

json_t *sep_stats_workers(json_t *reply)
{
    json_t *w = json_object_get(reply, "workers");

    return json_is_array(w) ? w : NULL; /* cjson writes an empty list as {} */
}

json_t *sep_stats_split(const char *s)
{
    json_t *out = json_array();
    const char *p = s, *comma;

    while (out && *p) {
        comma = strchr(p, ',');
        if (comma == NULL)
            comma = p + strlen(p);
        if (comma > p)
            json_array_append_new(out, json_stringn(p, (size_t)(comma - p)));
        p = *comma ? comma + 1 : comma;
    }
    return out;
}

static json_t *histogram(json_t *reply, json_t *stats, const char *name)
{
    json_t *bounds = json_object_get(json_object_get(reply, "buckets"), name);
    json_t *buckets = json_array(), *b;
    char field[96];
    size_t i;
    json_int_t count, sum;

    if (buckets == NULL)
        return NULL;
    json_array_foreach(bounds, i, b)
    {
        const char *bound = json_string_value(b);
        if (bound == NULL)
            continue;
        snprintf(field, sizeof(field), "hist_%s_le_%s", name, bound);
        json_array_append_new(buckets, json_pack("{s:f,s:I}", "le", strtod(bound, NULL), "count",
                                                 sep_stats_int(stats, field)));
    }
    snprintf(field, sizeof(field), "hist_%s_count", name);
    count = sep_stats_int(stats, field);
    snprintf(field, sizeof(field), "hist_%s_sum_ms", name);
    sum = sep_stats_int(stats, field);
    json_array_append_new(buckets, json_pack("{s:s,s:I}", "le", "+Inf", "count", count));
    return json_pack("{s:o,s:I,s:f}", "buckets", buckets, "count", count, "sum_seconds",
                     (double)sum / 1000.0);
}

static json_t *worker(json_t *w, json_int_t now)
{
    json_int_t last_seen = sep_stats_worker_int(w, "last_seen");

    return json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:f,s:o,s:o}", "name",
        sep_stats_worker_str(w, "name"), "host", sep_stats_worker_str(w, "host"), "device",
        sep_stats_worker_str(w, "device"), "state", sep_stats_worker_str(w, "state"), "running",
        sep_stats_worker_int(w, "running"), "concurrency", sep_stats_worker_int(w, "concurrency"),
        "jobs_done", sep_stats_worker_int(w, "jobs_done"), "jobs_failed",
        sep_stats_worker_int(w, "jobs_failed"), "memory_bytes",
        sep_stats_worker_int(w, "memory_bytes"), "heartbeat_age_seconds",
        last_seen && now >= last_seen ? (double)(now - last_seen) / 1000.0 : 0.0, "jobs",
        sep_stats_split(sep_stats_worker_str(w, "jobs")), "models",
        sep_stats_split(sep_stats_worker_str(w, "models")));
}

static json_t *queue(json_t *q)
{
    json_int_t length = sep_stats_int(q, "length");
    json_int_t pending = sep_stats_int(q, "pending");

    return json_pack("{s:I,s:I}", "waiting", length > pending ? length - pending : 0, "delivered",
                     pending);
}

json_t *sep_stats_json(json_t *reply)
{
    json_t *stats = json_object_get(reply, "stats");
    json_t *queues = json_object_get(reply, "queues");
    json_t *list = json_array(), *w;
    json_int_t now = sep_stats_int(reply, "now_ms");
    size_t i;

    if (list == NULL)
        return NULL;
    json_array_foreach(sep_stats_workers(reply), i, w)
    {
        json_array_append_new(list, worker(w, now));
    }
    return json_pack(
        "{s:{s:o,s:o},s:I,s:I,s:{s:I,s:I},s:{s:I,s:I,s:I,s:I,s:I},s:{s:I,s:I},s:f,s:o,s:o,s:I,s:o}",
        "queues", "high", queue(json_object_get(queues, "high")), "normal",
        queue(json_object_get(queues, "normal")), "delayed", sep_stats_int(reply, "delayed"),
        "dead", sep_stats_int(reply, "dead"), "jobs", "queued",
        sep_stats_int(stats, SEP_STAT_QUEUED), "running", sep_stats_int(stats, SEP_STAT_RUNNING),
        "counters", "submitted", sep_stats_int(stats, SEP_STAT_SUBMITTED), "completed",
        sep_stats_int(stats, SEP_STAT_COMPLETED), "failed", sep_stats_int(stats, SEP_STAT_FAILED),
        "retried", sep_stats_int(stats, SEP_STAT_RETRIED), "canceled",
        sep_stats_int(stats, SEP_STAT_CANCELED), "bytes", "in",
        sep_stats_int(stats, SEP_STAT_BYTES_IN), "out", sep_stats_int(stats, SEP_STAT_BYTES_OUT),
        "audio_seconds", (double)sep_stats_int(stats, SEP_STAT_AUDIO_MS) / 1000.0,
        "queue_wait_seconds", histogram(reply, stats, "wait"), "processing_seconds",
        histogram(reply, stats, "processing"), "workers_live",
        sep_stats_int(reply, "workers_total"), "workers", list);
}
