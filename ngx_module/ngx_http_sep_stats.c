/*
 * Operations routes, answered from one Redis call each (EVALSHA stats,
 * shared/lua/stats.lua: the {p}stats hash, queue lengths and pending counts,
 * {p}delayed, {p}dead, {p}running and the live workers' heartbeat hashes):
 *
 *   GET|HEAD /v1/stats    JSON: queues, jobs by status, counters, histograms,
 *                         workers
 *   GET|HEAD /metrics     the same numbers as Prometheus text exposition 0.0.4
 *   GET|HEAD /v1/models   the models the live workers can run, with their sources
 *
 * The script's reply is a JSON text; shared/sep_stats.c reads it and builds the JSON
 * answers (the same document `workerd inspect --json` prints); /metrics is rendered
 * here.
 * Each handler returns NGX_DONE; the reply handler answers and finalizes.
 */
#include "ngx_module/ngx_http_sep_module.h"
#include "ngx_module/ngx_http_sep_redis.h"

#include "shared/sep_options.h"
#include "shared/sep_scripts.h"
#include "shared/sep_stats.h"

/* ---- a growing text buffer in the request pool --------------------------------- */

typedef struct {
    ngx_pool_t *pool;
    u_char *data;
    size_t len, cap;
    ngx_uint_t failed;
} ngx_http_sep_text_t;

static void ngx_http_sep_text_add(ngx_http_sep_text_t *t, const char *fmt, ...)
{
    u_char line[2048], *last, *grown; /* a line holds at most 4 labels of 256 bytes */
    size_t n, cap;
    va_list args;

    if (t->failed) {
        return;
    }
    va_start(args, fmt);
    last = ngx_vslprintf(line, line + sizeof(line), fmt, args);
    va_end(args);
    n = last - line;
    if (t->len + n > t->cap) {
        cap = ngx_max(t->cap * 2, t->len + n + 4096);
        grown = ngx_pnalloc(t->pool, cap);
        if (grown == NULL) {
            t->failed = 1;
            return;
        }
        if (t->len) {
            ngx_memcpy(grown, t->data, t->len);
        }
        t->data = grown;
        t->cap = cap;
    }
    ngx_memcpy(t->data + t->len, line, n);
    t->len += n;
}

/* A label value of the exposition format: \ " and newline escaped, at most 255
 * bytes kept, into buf (NUL-terminated). */
static const char *ngx_http_sep_label(char *buf, size_t cap, const char *s)
{
    size_t n = 0;

    for (; *s && n + 3 < cap && n < 255; s++) {
        if (*s == '\\' || *s == '"') {
            buf[n++] = '\\';
            buf[n++] = *s;
        } else if (*s == '\n') {
            buf[n++] = '\\';
            buf[n++] = 'n';
        } else {
            buf[n++] = *s;
        }
    }
    buf[n] = '\0';
    return buf;
}

/* Seconds from milliseconds, as "%d.%03d" text for ngx_slprintf (no %f there). */
#define NGX_HTTP_SEP_MS_FMT "%L.%03L"
#define NGX_HTTP_SEP_MS_ARGS(ms) (int64_t)((ms) / 1000), (int64_t)((ms) % 1000)

/* ---- GET /metrics -------------------------------------------------------------- */

static void ngx_http_sep_metric_head(ngx_http_sep_text_t *t, const char *name, const char *type,
                                     const char *help)
{
    ngx_http_sep_text_add(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void ngx_http_sep_metric_int(ngx_http_sep_text_t *t, const char *name, const char *type,
                                    const char *help, json_int_t v)
{
    ngx_http_sep_metric_head(t, name, type, help);
    ngx_http_sep_text_add(t, "%s %L\n", name, (int64_t)v);
}

static void ngx_http_sep_metric_histogram(ngx_http_sep_text_t *t, json_t *root, json_t *stats,
                                          const char *name, const char *metric, const char *help)
{
    json_t *bounds = json_object_get(json_object_get(root, "buckets"), name);
    json_t *b;
    char field[96];
    size_t i;
    json_int_t sum;

    ngx_http_sep_metric_head(t, metric, "histogram", help);
    json_array_foreach(bounds, i, b)
    {
        const char *bound = json_string_value(b);
        if (bound == NULL) {
            continue;
        }
        snprintf(field, sizeof(field), "hist_%s_le_%s", name, bound);
        ngx_http_sep_text_add(t, "%s_bucket{le=\"%s\"} %L\n", metric, bound,
                              (int64_t)sep_stats_int(stats, field));
    }
    snprintf(field, sizeof(field), "hist_%s_count", name);
    ngx_http_sep_text_add(t, "%s_bucket{le=\"+Inf\"} %L\n", metric,
                          (int64_t)sep_stats_int(stats, field));
    snprintf(field, sizeof(field), "hist_%s_sum_ms", name);
    sum = sep_stats_int(stats, field);
    ngx_http_sep_text_add(t, "%s_sum " NGX_HTTP_SEP_MS_FMT "\n", metric, NGX_HTTP_SEP_MS_ARGS(sum));
    snprintf(field, sizeof(field), "hist_%s_count", name);
    ngx_http_sep_text_add(t, "%s_count %L\n", metric, (int64_t)sep_stats_int(stats, field));
}

/* One per-worker family: a line per live worker, labelled by its name. */
typedef enum { SEP_WM_RUNNING, SEP_WM_DONE, SEP_WM_FAILED, SEP_WM_MEMORY, SEP_WM_AGE } sep_wm_t;

static void ngx_http_sep_metric_workers(ngx_http_sep_text_t *t, json_t *workers, json_int_t now,
                                        const char *metric, const char *type, const char *help,
                                        sep_wm_t what)
{
    char name[600];
    json_t *w;
    size_t i;
    json_int_t v, last;

    ngx_http_sep_metric_head(t, metric, type, help);
    json_array_foreach(workers, i, w)
    {
        ngx_http_sep_label(name, sizeof(name), sep_stats_worker_str(w, "name"));
        switch (what) {
        case SEP_WM_RUNNING:
            v = sep_stats_worker_int(w, "running");
            break;
        case SEP_WM_DONE:
            v = sep_stats_worker_int(w, "jobs_done");
            break;
        case SEP_WM_FAILED:
            v = sep_stats_worker_int(w, "jobs_failed");
            break;
        case SEP_WM_MEMORY:
            v = sep_stats_worker_int(w, "memory_bytes");
            break;
        default:
            last = sep_stats_worker_int(w, "last_seen");
            v = last && now >= last ? now - last : 0;
            ngx_http_sep_text_add(t, "%s{worker=\"%s\"} " NGX_HTTP_SEP_MS_FMT "\n", metric, name,
                                  NGX_HTTP_SEP_MS_ARGS(v));
            continue;
        }
        ngx_http_sep_text_add(t, "%s{worker=\"%s\"} %L\n", metric, name, (int64_t)v);
    }
}

static ngx_int_t ngx_http_sep_metrics_text(ngx_http_sep_text_t *t, json_t *root)
{
    json_t *stats = json_object_get(root, "stats");
    json_t *queues = json_object_get(root, "queues");
    json_t *workers = sep_stats_workers(root), *w, *q;
    json_int_t now = sep_stats_int(root, "now_ms"), length, pending, audio;
    char name[600], host[600], device[600], state[600];
    static const char *prio[] = {"high", "normal"};
    size_t i;

    ngx_http_sep_metric_int(t, "sep_jobs_submitted_total", "counter", "Jobs submitted.",
                            sep_stats_int(stats, SEP_STAT_SUBMITTED));
    ngx_http_sep_metric_int(t, "sep_jobs_completed_total", "counter", "Jobs completed.",
                            sep_stats_int(stats, SEP_STAT_COMPLETED));
    ngx_http_sep_metric_int(t, "sep_jobs_failed_total", "counter",
                            "Jobs failed for good (no retry left).",
                            sep_stats_int(stats, SEP_STAT_FAILED));
    ngx_http_sep_metric_int(t, "sep_jobs_retried_total", "counter",
                            "Failed attempts scheduled for a retry.",
                            sep_stats_int(stats, SEP_STAT_RETRIED));
    ngx_http_sep_metric_int(t, "sep_jobs_canceled_total", "counter", "Jobs canceled.",
                            sep_stats_int(stats, SEP_STAT_CANCELED));
    ngx_http_sep_metric_int(t, "sep_bytes_in_total", "counter", "Bytes of audio uploaded.",
                            sep_stats_int(stats, SEP_STAT_BYTES_IN));
    ngx_http_sep_metric_int(t, "sep_bytes_out_total", "counter", "Bytes of stems written.",
                            sep_stats_int(stats, SEP_STAT_BYTES_OUT));
    audio = sep_stats_int(stats, SEP_STAT_AUDIO_MS);
    ngx_http_sep_metric_head(t, "sep_audio_seconds_total", "counter",
                             "Seconds of audio separated (completed jobs).");
    ngx_http_sep_text_add(t, "sep_audio_seconds_total " NGX_HTTP_SEP_MS_FMT "\n",
                          NGX_HTTP_SEP_MS_ARGS(audio));

    ngx_http_sep_metric_head(t, "sep_jobs", "gauge", "Jobs by status (queued includes delayed).");
    ngx_http_sep_text_add(t, "sep_jobs{status=\"queued\"} %L\nsep_jobs{status=\"running\"} %L\n",
                          (int64_t)sep_stats_int(stats, SEP_STAT_QUEUED),
                          (int64_t)sep_stats_int(stats, SEP_STAT_RUNNING));
    ngx_http_sep_metric_head(t, "sep_queue_depth", "gauge",
                             "Stream entries by priority: waiting for a worker, or delivered to "
                             "one (pending in the group: running, or read and about to run).");
    for (i = 0; i < 2; i++) {
        q = json_object_get(queues, prio[i]);
        length = sep_stats_int(q, "length");
        pending = sep_stats_int(q, "pending");
        ngx_http_sep_text_add(t,
                              "sep_queue_depth{priority=\"%s\",state=\"waiting\"} %L\n"
                              "sep_queue_depth{priority=\"%s\",state=\"delivered\"} %L\n",
                              prio[i], (int64_t)(length > pending ? length - pending : 0), prio[i],
                              (int64_t)pending);
    }
    ngx_http_sep_metric_int(t, "sep_delayed_jobs", "gauge", "Jobs waiting for a retry.",
                            sep_stats_int(root, "delayed"));
    ngx_http_sep_metric_int(t, "sep_dead_letters", "gauge", "Entries in the dead-letter stream.",
                            sep_stats_int(root, "dead"));

    ngx_http_sep_metric_histogram(t, root, stats, "wait", "sep_queue_wait_seconds",
                                  "Time from submission to the first claim.");
    ngx_http_sep_metric_histogram(t, root, stats, "processing", "sep_processing_seconds",
                                  "Time from the claim to completion of completed jobs.");

    ngx_http_sep_metric_int(t, "sep_workers", "gauge", "Live workers (unexpired heartbeats).",
                            sep_stats_int(root, "workers_total"));
    ngx_http_sep_metric_head(t, "sep_worker_info", "gauge",
                             "A live worker's host, device and state (value 1).");
    json_array_foreach(workers, i, w)
    {
        ngx_http_sep_text_add(
            t, "sep_worker_info{worker=\"%s\",host=\"%s\",device=\"%s\",state=\"%s\"} 1\n",
            ngx_http_sep_label(name, sizeof(name), sep_stats_worker_str(w, "name")),
            ngx_http_sep_label(host, sizeof(host), sep_stats_worker_str(w, "host")),
            ngx_http_sep_label(device, sizeof(device), sep_stats_worker_str(w, "device")),
            ngx_http_sep_label(state, sizeof(state), sep_stats_worker_str(w, "state")));
    }
    ngx_http_sep_metric_workers(t, workers, now, "sep_worker_running_jobs", "gauge",
                                "Jobs a worker runs now.", SEP_WM_RUNNING);
    ngx_http_sep_metric_workers(t, workers, now, "sep_worker_jobs_done_total", "counter",
                                "Jobs a worker finished since it started.", SEP_WM_DONE);
    ngx_http_sep_metric_workers(t, workers, now, "sep_worker_jobs_failed_total", "counter",
                                "Jobs a worker failed since it started.", SEP_WM_FAILED);
    ngx_http_sep_metric_workers(t, workers, now, "sep_worker_memory_bytes", "gauge",
                                "Resident memory of a worker's device processes.", SEP_WM_MEMORY);
    ngx_http_sep_metric_workers(t, workers, now, "sep_worker_heartbeat_age_seconds", "gauge",
                                "Seconds since a worker's last heartbeat.", SEP_WM_AGE);
    return t->failed ? NGX_ERROR : NGX_OK;
}

static ngx_int_t ngx_http_sep_send_metrics(ngx_http_request_t *r, ngx_http_sep_text_t *t)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    ngx_chain_t out;
    ngx_buf_t *b;
    ngx_int_t rc;

    if (ctx) {
        ctx->json = 1; /* the module's own answer */
    }
    r->headers_out.status = NGX_HTTP_OK;
    ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4; charset=utf-8");
    r->headers_out.content_type_len = sizeof("text/plain") - 1;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = t->len;

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }
    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }
    b->pos = t->data;
    b->last = t->data + t->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    out.buf = b;
    out.next = NULL;
    return ngx_http_output_filter(r, &out);
}

/* ---- GET /v1/models ------------------------------------------------------------ */

/* {"models": [{name, sources, workers}]}: the models some live worker lists in its
 * heartbeat's `models` field (names the service does not know are left out). */
static json_t *ngx_http_sep_models_json(json_t *reply)
{
    unsigned count[SEP_MODEL_COUNT] = {0};
    json_t *list, *sources, *names, *n, *w;
    size_t i, j;

    json_array_foreach(sep_stats_workers(reply), i, w)
    {
        names = sep_stats_split(sep_stats_worker_str(w, "models"));
        json_array_foreach(names, j, n)
        {
            sep_model_t model;
            if (sep_model_from_name((sep_str_t){json_string_value(n), json_string_length(n)},
                                    &model) == 0)
                count[model]++;
        }
        json_decref(names);
    }
    list = json_array();
    for (int m = 0; list && m < SEP_MODEL_COUNT; m++) {
        const sep_model_info_t *info = sep_model_info((sep_model_t)m);
        if (count[m] == 0)
            continue;
        sources = json_array();
        for (unsigned s = 0; sources && s < info->n_sources; s++)
            json_array_append_new(sources, json_string(info->sources[s]));
        json_array_append_new(list, json_pack("{s:s,s:o,s:I}", "name", info->name, "sources",
                                              sources, "workers", (json_int_t)count[m]));
    }
    return list ? json_pack("{s:o}", "models", list) : NULL;
}

/* ---- the request ---------------------------------------------------------------- */

typedef enum { SEP_OPS_STATS, SEP_OPS_METRICS, SEP_OPS_MODELS } ngx_http_sep_ops_t;

static ngx_int_t ngx_http_sep_send_json_value(ngx_http_request_t *r, json_t *value)
{
    char *text;
    u_char *body;
    size_t len;

    if (value == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    text = json_dumps(value, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(value);
    if (text == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    len = strlen(text);
    body = ngx_pnalloc(r->pool, len + 1);
    if (body == NULL) {
        free(text);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(body, text, len);
    body[len] = '\n';
    free(text);
    return ngx_http_sep_send_json(r, NGX_HTTP_OK, body, len + 1);
}

static void ngx_http_sep_ops_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                   redisReply *reply, ngx_http_sep_ops_t what)
{
    ngx_http_sep_text_t text;
    json_t *root;
    ngx_int_t rc;

    if (reply == NULL || reply->type != REDIS_REPLY_STRING) {
        ngx_http_finalize_request(r, ngx_http_sep_redis_failure(r, ctx, reply));
        return;
    }
    root = sep_stats_parse(reply->str, reply->len);
    if (root == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sep: unreadable stats reply: %*s",
                      ngx_min(reply->len, 200), reply->str);
        ngx_http_finalize_request(r, ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                                             "redis_error",
                                                             "the job store failed; retry later"));
        return;
    }
    switch (what) {
    case SEP_OPS_STATS:
        rc = ngx_http_sep_send_json_value(r, sep_stats_json(root));
        break;
    case SEP_OPS_MODELS:
        rc = ngx_http_sep_send_json_value(r, ngx_http_sep_models_json(root));
        break;
    default:
        ngx_memzero(&text, sizeof(text));
        text.pool = r->pool;
        rc = ngx_http_sep_metrics_text(&text, root) == NGX_OK ? ngx_http_sep_send_metrics(r, &text)
                                                              : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    json_decref(root);
    ngx_http_finalize_request(r, rc);
}

static void ngx_http_sep_stats_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                     redisReply *reply)
{
    ngx_http_sep_ops_reply(r, ctx, reply, SEP_OPS_STATS);
}

static void ngx_http_sep_metrics_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                       redisReply *reply)
{
    ngx_http_sep_ops_reply(r, ctx, reply, SEP_OPS_METRICS);
}

static void ngx_http_sep_models_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                      redisReply *reply)
{
    ngx_http_sep_ops_reply(r, ctx, reply, SEP_OPS_MODELS);
}

static ngx_int_t ngx_http_sep_ops_handler(ngx_http_request_t *r, ngx_http_sep_reply_pt handler)
{
    ngx_http_sep_main_conf_t *mcf = ngx_http_get_module_main_conf(r, ngx_http_sep_module);
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    const char *argv[4 + SEP_STATS_KEYS];
    size_t argvlen[4 + SEP_STATS_KEYS];
    sep_stats_keys_t *keys;
    ngx_int_t rc;
    int i;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    keys = ngx_palloc(r->pool, sizeof(*keys)); /* argv points into it until the reply */
    if (keys == NULL || sep_stats_keys(keys, (sep_str_t){(const char *)mcf->key_prefix.data,
                                                         mcf->key_prefix.len}) != 0) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    argv[0] = "EVALSHA";
    argvlen[0] = 7;
    argv[1] = sep_scripts[SEP_SCRIPT_STATS].sha1;
    argvlen[1] = 40;
    _Static_assert(SEP_STATS_KEYS == 7, "numkeys below");
    argv[2] = "7";
    argvlen[2] = 1;
    for (i = 0; i < SEP_STATS_KEYS; i++) {
        argv[3 + i] = keys->key[i];
        argvlen[3 + i] = keys->len[i];
    }
    argv[3 + i] = SEP_STATS_WORKERS_MAX;
    argvlen[3 + i] = sizeof(SEP_STATS_WORKERS_MAX) - 1;
    return ngx_http_sep_send_command(r, ctx, handler, SEP_SCRIPT_STATS, 4 + SEP_STATS_KEYS, argv,
                                     argvlen);
}

ngx_int_t ngx_http_sep_stats_handler(ngx_http_request_t *r)
{
    return ngx_http_sep_ops_handler(r, ngx_http_sep_stats_reply);
}

ngx_int_t ngx_http_sep_metrics_handler(ngx_http_request_t *r)
{
    return ngx_http_sep_ops_handler(r, ngx_http_sep_metrics_reply);
}

ngx_int_t ngx_http_sep_models_handler(ngx_http_request_t *r)
{
    return ngx_http_sep_ops_handler(r, ngx_http_sep_models_reply);
}
