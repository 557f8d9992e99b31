/*
 * ngx_http_sep_module: declarations shared by the module's files.
 *
 *   ngx_http_sep_module.c   directives, configuration, process hooks, routing,
 *                           the JSON error-page filter
 *   ngx_http_sep_redis.c    hiredis bound to nginx's event loop; commands with
 *                           per-request timeouts (ngx_http_sep_redis.h)
 *   ngx_http_sep_reply.c    JSON answers and errors
 *   ngx_http_sep_upload.c   POST /v1/jobs
 *   ngx_http_sep_jobs.c     GET and DELETE /v1/jobs/{id}, stem downloads
 *   ngx_http_sep_cors.c     CORS headers and the OPTIONS (preflight) answer
 *   ngx_http_sep_conf.c     directive bounds, and the checks of nginx -t and of a
 *                           starting worker (spool, locations)
 *   ngx_http_sep_events.c   GET /v1/jobs/{id}/events (Server-Sent Events) and the
 *                           worker's Redis subscriber connection
 *   ngx_http_sep_stats.c    GET /v1/stats, GET /metrics, GET /v1/models
 */
#ifndef NGX_HTTP_SEP_MODULE_H
#define NGX_HTTP_SEP_MODULE_H

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "shared/sep_id.h"
#include "shared/sep_keys.h"
#include "shared/sep_options.h"
#include "shared/sep_sniff.h"

/* One http{} block: the Redis connection settings and the key prefix. */
typedef struct {
    ngx_flag_t enabled; /* some location has sep_api */

    ngx_str_t redis_host; /* NUL-terminated IP text, or the unix socket path */
    ngx_int_t redis_port; /* 0 for a unix socket */
    ngx_str_t redis_addr; /* for log lines: "host:port" or "unix:/path" */
    ngx_int_t redis_db;
    ngx_str_t redis_user; /* an ACL user (AUTH user password); empty: the default user */
    ngx_str_t redis_password;
    ngx_msec_t redis_timeout;
    ngx_msec_t backoff_min;
    ngx_msec_t backoff_max;

    ngx_array_t *apis; /* of ngx_http_sep_api_loc_t: the sep_api locations */

    ngx_str_t key_prefix;
    /* keys that do not depend on a job, built once */
    ngx_str_t key_q_high;
    ngx_str_t key_q_normal;
    ngx_str_t key_stats;
} ngx_http_sep_main_conf_t;

typedef struct {
    ngx_flag_t api;
    ngx_str_t spool; /* no trailing slash */
    ngx_int_t default_model;
    ngx_int_t max_queued;
    time_t result_ttl;
    ngx_int_t max_attempts;
    time_t idempotency_ttl;
    ngx_str_t stems_location; /* starts and ends with '/' */
    size_t multipart_buffer;  /* bytes of an upload read per event-loop turn */
    size_t multipart_max_header;
    ngx_array_t *cors_origins; /* of ngx_http_complex_value_t; NULL: CORS off */
    ngx_flag_t cors_credentials;
    time_t cors_max_age;
    ngx_msec_t events_heartbeat; /* `: ping` comment interval of an event stream */
} ngx_http_sep_loc_conf_t;

/* A sep_api location, recorded for the checks of ngx_http_sep_conf.c. */
typedef struct {
    ngx_http_sep_loc_conf_t *lcf;
    ngx_http_core_loc_conf_t *clcf;   /* the location */
    ngx_http_core_loc_conf_t *server; /* its server's, with the location trees */
    ngx_str_t file;
    ngx_uint_t line;
} ngx_http_sep_api_loc_t;

/* ngx_http_sep_conf.c: bounds of a numeric directive, checked as it is read (the post
 * of its command), and the checks of the whole configuration and of a starting worker */
enum { SEP_BOUND_NUM, SEP_BOUND_SEC, SEP_BOUND_MSEC, SEP_BOUND_SIZE };
typedef struct {
    ngx_conf_post_handler_pt post_handler;
    int kind;
    int64_t low, high;
    const char *range; /* as the message says it: "between 1s and 10y" */
} ngx_http_sep_bounds_t;
char *ngx_http_sep_check_bounds(ngx_conf_t *cf, void *post, void *data);
char *ngx_http_sep_check_spool(ngx_conf_t *cf, void *post, void *data);
char *ngx_http_sep_check_stems_location(ngx_conf_t *cf, void *post, void *data);
ngx_int_t ngx_http_sep_conf_add_api(ngx_conf_t *cf, ngx_http_sep_main_conf_t *mcf,
                                    ngx_http_sep_loc_conf_t *lcf);
ngx_int_t ngx_http_sep_conf_check_locations(ngx_conf_t *cf, ngx_http_sep_main_conf_t *mcf);
void ngx_http_sep_conf_check_spools(ngx_cycle_t *cycle, ngx_http_sep_main_conf_t *mcf);

typedef struct ngx_http_sep_cmd_s ngx_http_sep_cmd_t;

/* Per-request state, from the request pool. */
typedef struct {
    ngx_http_request_t *request;

    ngx_http_sep_cmd_t *cmd; /* the Redis command this request waits for */
    ngx_event_t timeout;     /* its reply deadline */

    ngx_str_t id; /* validated job id (points into id_buf or the URI) */
    u_char id_buf[SEP_ID_LEN + 1];
    ngx_str_t stem; /* stem download: validated stem name and extension */
    ngx_str_t ext;

    /* upload: what this request created in the spool, removed on failure */
    ngx_str_t job_dir; /* {spool}/{id}, NUL-terminated */
    ngx_str_t input_path;
    sep_options_t options;
    ngx_str_t idempotency_key;
    ngx_str_t earlier_id; /* the job the key named, after a submit "lookup" reply */
    u_char earlier_id_buf[SEP_ID_LEN];
    ngx_uint_t lookups;
    off_t input_bytes;
    const char *input_type;
    struct ngx_http_sep_upload_s *upload; /* the body being read (ngx_http_sep_upload.c) */

    void *stream; /* GET .../events: the event stream (ngx_http_sep_events.c) */

    unsigned json : 1;            /* the response is the module's own JSON */
    unsigned error_body_sent : 1; /* the error filter replaced nginx's page */
    u_char *error_body;           /* JSON that replaces nginx's error page */
    size_t error_body_len;
} ngx_http_sep_ctx_t;

extern ngx_module_t ngx_http_sep_module;

ngx_http_sep_ctx_t *ngx_http_sep_get_ctx(ngx_http_request_t *r);

/* ngx_http_sep_reply.c: answers. Both return what ngx_http_output_filter returned;
 * the caller finalizes with it (or returns it from a content handler). */
ngx_int_t ngx_http_sep_send_json(ngx_http_request_t *r, ngx_uint_t status, u_char *body,
                                 size_t len);
ngx_int_t ngx_http_sep_send_error(ngx_http_request_t *r, ngx_uint_t status, const char *code,
                                  const char *fmt, ...);
/* The error JSON {"error": {"code": code, "message": printf(fmt, ...)}} from the pool. */
u_char *ngx_http_sep_error_body(ngx_pool_t *pool, const char *code, size_t *len, const char *fmt,
                                ...);
/* The error JSON for an nginx-generated status (413, 400, 500, ...; 494, nginx's "header
 * too large" that it sends as 400). */
u_char *ngx_http_sep_status_error_json(ngx_pool_t *pool, ngx_uint_t status, size_t *len);
ngx_int_t ngx_http_sep_set_location(ngx_http_request_t *r, ngx_str_t *id);

/* Reads a job from a hiredis reply (field, value, ... from element `first`); the
 * job's views point into the reply. Call sep_job_clear() after use. */
struct sep_job;
ngx_int_t ngx_http_sep_job_from_reply(ngx_http_request_t *r, void *reply, size_t first,
                                      struct sep_job *job);

/* Renders a job record reply (field, value, ... starting at element `first`) and
 * answers it with `status`. 404 when the record is empty. */
ngx_int_t ngx_http_sep_send_job(ngx_http_request_t *r, ngx_uint_t status, void *reply, size_t first,
                                ngx_uint_t with_location);

/* ngx_http_sep_upload.c */
ngx_int_t ngx_http_sep_upload_handler(ngx_http_request_t *r);

/* ngx_http_sep_jobs.c */
ngx_int_t ngx_http_sep_status_handler(ngx_http_request_t *r, ngx_str_t *id);
ngx_int_t ngx_http_sep_cancel_handler(ngx_http_request_t *r, ngx_str_t *id);
ngx_int_t ngx_http_sep_stem_handler(ngx_http_request_t *r, ngx_str_t *id, ngx_str_t *file);
/* Deletes {spool}/{id}/ and the plain files in it. */
void ngx_http_sep_remove_job_dir(ngx_log_t *log, ngx_str_t *spool, ngx_str_t *id);

/* ngx_http_sep_stats.c: the operations routes (one EVALSHA stats each) */
ngx_int_t ngx_http_sep_stats_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_sep_metrics_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_sep_models_handler(ngx_http_request_t *r);

/* ngx_http_sep_events.c: the event stream of a job; the worker's subscriber connection
 * (set up in init_process, connected when a stream needs it). */
ngx_int_t ngx_http_sep_events_handler(ngx_http_request_t *r, ngx_str_t *id);
ngx_int_t ngx_http_sep_events_init_process(ngx_cycle_t *cycle, ngx_http_sep_main_conf_t *mcf);
void ngx_http_sep_events_exit_process(ngx_cycle_t *cycle);

/* ngx_http_sep_cors.c: the sep_cors_origins directive; the CORS headers of an API answer
 * (from the header filter; adds nothing when CORS is off or the origin is not allowed);
 * the answer to OPTIONS on a path that takes `allow` (a comma-separated method list). */
char *ngx_http_sep_cors_origins_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_sep_cors_headers(ngx_http_request_t *r, ngx_http_sep_loc_conf_t *lcf);
ngx_int_t ngx_http_sep_options(ngx_http_request_t *r, const char *allow);

/* Builds {prefix}{kind}{suffix} in the pool; NULL on error. */
ngx_int_t ngx_http_sep_key(ngx_pool_t *pool, ngx_str_t *out, ngx_str_t *prefix, const char *kind,
                           ngx_str_t *suffix);

#endif /* NGX_HTTP_SEP_MODULE_H */
