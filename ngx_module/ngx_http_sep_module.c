/*
 * ngx_http_sep_module: the HTTP face of the separation service.
 *
 * This file is laid out like nginx's own modules: the directives table, the module
 * context and module struct, configuration create/merge, process hooks, then the
 * content handler that routes the v1 API, and the filter that answers nginx's own
 * error pages as JSON with the CORS headers: in sep_api locations (413 from
 * client_max_body_size, 400 on a broken body, 500, and the 401, 403 and 429 of access
 * control: auth_request, limit_req), and before any location for a URI that a sep_api
 * location would serve (400, 414, 494, 405, 501, 505 while nginx reads the request
 * head). Directives and behaviours are documented in ngx_module/README.md.
 */
#include "ngx_module/ngx_http_sep_module.h"
#include "ngx_module/ngx_http_sep_redis.h"

#include <sys/statvfs.h>

#define SEP_DEFAULT_REDIS_PORT 6379

static ngx_int_t ngx_http_sep_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_sep_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_sep_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_sep_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_sep_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child);
static ngx_int_t ngx_http_sep_init_process(ngx_cycle_t *cycle);
static void ngx_http_sep_exit_process(ngx_cycle_t *cycle);

static char *ngx_http_sep_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_sep_redis_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_sep_backoff_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_sep_prefix_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
static char *ngx_http_sep_model_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);

/* Bounds of the time directives: a TTL is at most 10 years (what shared/lua/submit.lua
 * accepts, far below what Redis' EXPIRE does), a Redis reply is waited for at most
 * 10 minutes. */
#define SEP_MAX_TTL_S 315360000
#define SEP_MAX_REDIS_TIMEOUT_MS 600000

/* Each numeric directive's bounds, checked as it is read (ngx_http_sep_conf.c). */
#define SEP_BOUNDS(name, kind, low, high, range)                                                   \
    static ngx_http_sep_bounds_t name = {ngx_http_sep_check_bounds, kind, low, high, range}
SEP_BOUNDS(sep_redis_timeout_bounds, SEP_BOUND_MSEC, 1, SEP_MAX_REDIS_TIMEOUT_MS,
           "between 1ms and 10m");
SEP_BOUNDS(sep_result_ttl_bounds, SEP_BOUND_SEC, 1, SEP_MAX_TTL_S, "between 1s and 10y");
SEP_BOUNDS(sep_idempotency_ttl_bounds, SEP_BOUND_SEC, 1, SEP_MAX_TTL_S, "between 1s and 10y");
SEP_BOUNDS(sep_cors_max_age_bounds, SEP_BOUND_SEC, 0, SEP_MAX_TTL_S, "between 0 and 10y");
SEP_BOUNDS(sep_events_heartbeat_bounds, SEP_BOUND_MSEC, 1, 3600000, "between 1ms and 1h");
SEP_BOUNDS(sep_max_queued_bounds, SEP_BOUND_NUM, 0, NGX_MAX_INT_T_VALUE, "0 or more");
SEP_BOUNDS(sep_max_attempts_bounds, SEP_BOUND_NUM, 1, 1000, "between 1 and 1000");
SEP_BOUNDS(sep_multipart_buffer_bounds, SEP_BOUND_SIZE, 4096, 16 * 1024 * 1024,
           "between 4k and 16m");
SEP_BOUNDS(sep_multipart_max_header_bounds, SEP_BOUND_SIZE, 256, 64 * 1024, "between 256 and 64k");
static ngx_conf_post_t sep_spool_post = {ngx_http_sep_check_spool};
static ngx_conf_post_t sep_stems_location_post = {ngx_http_sep_check_stems_location};

static ngx_http_output_header_filter_pt ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt ngx_http_next_body_filter;

static ngx_command_t ngx_http_sep_commands[] = {

    {ngx_string("sep_api"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, ngx_http_sep_api,
     NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},

    {ngx_string("sep_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE, ngx_http_sep_redis_conf,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL},

    {ngx_string("sep_redis_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_msec_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_http_sep_main_conf_t, redis_timeout),
     &sep_redis_timeout_bounds},

    {ngx_string("sep_redis_backoff"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE2,
     ngx_http_sep_backoff_conf, NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL},

    {ngx_string("sep_key_prefix"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_http_sep_prefix_conf,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, NULL},

    {ngx_string("sep_spool"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ngx_http_sep_loc_conf_t, spool),
     &sep_spool_post},

    {ngx_string("sep_default_model"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_http_sep_model_conf, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, default_model), NULL},

    {ngx_string("sep_max_queued"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ngx_http_sep_loc_conf_t, max_queued),
     &sep_max_queued_bounds},

    {ngx_string("sep_result_ttl"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_sec_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(ngx_http_sep_loc_conf_t, result_ttl),
     &sep_result_ttl_bounds},

    {ngx_string("sep_max_attempts"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, max_attempts), &sep_max_attempts_bounds},

    {ngx_string("sep_idempotency_ttl"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_sec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, idempotency_ttl), &sep_idempotency_ttl_bounds},

    {ngx_string("sep_stems_location"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_str_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, stems_location), &sep_stems_location_post},

    {ngx_string("sep_multipart_buffer"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, multipart_buffer), &sep_multipart_buffer_bounds},

    {ngx_string("sep_multipart_max_header"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, multipart_max_header), &sep_multipart_max_header_bounds},

    {ngx_string("sep_cors_origins"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     ngx_http_sep_cors_origins_conf, NGX_HTTP_LOC_CONF_OFFSET, 0, NULL},

    {ngx_string("sep_cors_credentials"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, cors_credentials), NULL},

    {ngx_string("sep_cors_max_age"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_sec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, cors_max_age), &sep_cors_max_age_bounds},

    {ngx_string("sep_events_heartbeat"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET,
     offsetof(ngx_http_sep_loc_conf_t, events_heartbeat), &sep_events_heartbeat_bounds},

    ngx_null_command};

static ngx_http_module_t ngx_http_sep_module_ctx = {
    NULL,                           /* preconfiguration */
    ngx_http_sep_postconfiguration, /* postconfiguration */

    ngx_http_sep_create_main_conf, /* create main configuration */
    ngx_http_sep_init_main_conf,   /* init main configuration */

    NULL, /* create server configuration */
    NULL, /* merge server configuration */

    ngx_http_sep_create_loc_conf, /* create location configuration */
    ngx_http_sep_merge_loc_conf   /* merge location configuration */
};

ngx_module_t ngx_http_sep_module = {NGX_MODULE_V1,
                                    &ngx_http_sep_module_ctx,  /* module context */
                                    ngx_http_sep_commands,     /* module directives */
                                    NGX_HTTP_MODULE,           /* module type */
                                    NULL,                      /* init master */
                                    NULL,                      /* init module */
                                    ngx_http_sep_init_process, /* init process */
                                    NULL,                      /* init thread */
                                    NULL,                      /* exit thread */
                                    ngx_http_sep_exit_process, /* exit process */
                                    NULL,                      /* exit master */
                                    NGX_MODULE_V1_PADDING};

/* ---- configuration ---------------------------------------------------------- */

static void *ngx_http_sep_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_sep_main_conf_t *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_sep_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }
    mcf->enabled = 0;
    mcf->redis_port = NGX_CONF_UNSET;
    mcf->redis_db = 0;
    mcf->redis_timeout = NGX_CONF_UNSET_MSEC;
    mcf->backoff_min = NGX_CONF_UNSET_MSEC;
    mcf->backoff_max = NGX_CONF_UNSET_MSEC;
    return mcf;
}

ngx_int_t ngx_http_sep_key(ngx_pool_t *pool, ngx_str_t *out, ngx_str_t *prefix, const char *kind,
                           ngx_str_t *suffix)
{
    size_t kind_len = ngx_strlen(kind);
    size_t len = prefix->len + kind_len + (suffix ? suffix->len : 0);
    u_char *p;

    out->data = ngx_pnalloc(pool, len + 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }
    p = ngx_cpymem(out->data, prefix->data, prefix->len);
    p = ngx_cpymem(p, kind, kind_len);
    if (suffix) {
        p = ngx_cpymem(p, suffix->data, suffix->len);
    }
    *p = '\0';
    out->len = len;
    return NGX_OK;
}

static char *ngx_http_sep_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_sep_main_conf_t *mcf = conf;

    if (mcf->redis_host.data == NULL) {
        ngx_str_set(&mcf->redis_host, "127.0.0.1");
        mcf->redis_port = SEP_DEFAULT_REDIS_PORT;
    }
    mcf->redis_addr.data = ngx_pnalloc(cf->pool, mcf->redis_host.len + NGX_INT_T_LEN + 8);
    if (mcf->redis_addr.data == NULL) {
        return NGX_CONF_ERROR;
    }
    mcf->redis_addr.len =
        (mcf->redis_port
             ? ngx_sprintf(mcf->redis_addr.data, "%V:%i", &mcf->redis_host, mcf->redis_port)
             : ngx_sprintf(mcf->redis_addr.data, "unix:%V", &mcf->redis_host)) -
        mcf->redis_addr.data;
    ngx_conf_init_msec_value(mcf->redis_timeout, 1000);
    ngx_conf_init_msec_value(mcf->backoff_min, 100);
    ngx_conf_init_msec_value(mcf->backoff_max, 5000);
    if (mcf->key_prefix.data == NULL) {
        ngx_str_set(&mcf->key_prefix, SEP_DEFAULT_PREFIX);
    }

    if (ngx_http_sep_key(cf->pool, &mcf->key_q_high, &mcf->key_prefix, "q:high", NULL) != NGX_OK ||
        ngx_http_sep_key(cf->pool, &mcf->key_q_normal, &mcf->key_prefix, "q:normal", NULL) !=
            NGX_OK ||
        ngx_http_sep_key(cf->pool, &mcf->key_stats, &mcf->key_prefix, "stats", NULL) != NGX_OK) {
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

static void *ngx_http_sep_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_sep_loc_conf_t *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_sep_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }
    /* spool and stems_location: zeroed (unset) by ngx_pcalloc */
    lcf->api = NGX_CONF_UNSET;
    lcf->default_model = NGX_CONF_UNSET;
    lcf->max_queued = NGX_CONF_UNSET;
    lcf->result_ttl = NGX_CONF_UNSET;
    lcf->max_attempts = NGX_CONF_UNSET;
    lcf->idempotency_ttl = NGX_CONF_UNSET;
    lcf->multipart_buffer = NGX_CONF_UNSET_SIZE;
    lcf->multipart_max_header = NGX_CONF_UNSET_SIZE;
    lcf->cors_origins = NGX_CONF_UNSET_PTR;
    lcf->cors_credentials = NGX_CONF_UNSET;
    lcf->cors_max_age = NGX_CONF_UNSET;
    lcf->events_heartbeat = NGX_CONF_UNSET_MSEC;
    return lcf;
}

static char *ngx_http_sep_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_sep_loc_conf_t *prev = parent;
    ngx_http_sep_loc_conf_t *conf = child;

    ngx_conf_merge_value(conf->api, prev->api, 0);
    ngx_conf_merge_str_value(conf->spool, prev->spool, "");
    ngx_conf_merge_value(conf->default_model, prev->default_model, SEP_MODEL_HTDEMUCS);
    ngx_conf_merge_value(conf->max_queued, prev->max_queued, 10000);
    ngx_conf_merge_sec_value(conf->result_ttl, prev->result_ttl, 86400);
    ngx_conf_merge_value(conf->max_attempts, prev->max_attempts, 3);
    ngx_conf_merge_sec_value(conf->idempotency_ttl, prev->idempotency_ttl, 86400);
    ngx_conf_merge_str_value(conf->stems_location, prev->stems_location, "/_sep_stems/");
    ngx_conf_merge_size_value(conf->multipart_buffer, prev->multipart_buffer, 64 * 1024);
    ngx_conf_merge_size_value(conf->multipart_max_header, prev->multipart_max_header, 8 * 1024);
    ngx_conf_merge_ptr_value(conf->cors_origins, prev->cors_origins, NULL);
    ngx_conf_merge_value(conf->cors_credentials, prev->cors_credentials, 0);
    ngx_conf_merge_sec_value(conf->cors_max_age, prev->cors_max_age, 600);
    ngx_conf_merge_msec_value(conf->events_heartbeat, prev->events_heartbeat, 15000);

    if (conf->api && conf->spool.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sep_api needs sep_spool");
        return NGX_CONF_ERROR;
    }
    if (conf->cors_credentials && conf->cors_origins) {
        ngx_http_complex_value_t *cv = conf->cors_origins->elts;
        ngx_uint_t i;
        for (i = 0; i < conf->cors_origins->nelts; i++) {
            if (cv[i].lengths == NULL && cv[i].value.len == 1 && cv[i].value.data[0] == '*') {
                /* every site could read answers made with the user's credentials */
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "sep_cors_origins * with sep_cors_credentials on would let "
                                   "every site read answers sent with the browser's "
                                   "credentials; name the origins instead");
                return NGX_CONF_ERROR;
            }
        }
    }
    return NGX_CONF_OK;
}

static ngx_int_t ngx_http_sep_handler(ngx_http_request_t *r);

static char *ngx_http_sep_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sep_loc_conf_t *lcf = conf;
    ngx_http_core_loc_conf_t *clcf;
    ngx_http_sep_main_conf_t *mcf;

    if (lcf->api != NGX_CONF_UNSET) {
        return "is duplicate";
    }
    lcf->api = 1;
    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_sep_handler;
    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_sep_module);
    mcf->enabled = 1;
    if (ngx_http_sep_conf_add_api(cf, mcf, lcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }
    return NGX_CONF_OK;
}

/* sep_redis host:port | unix:/path [db=N] [user=NAME] [password=SECRET] */
static char *ngx_http_sep_redis_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sep_main_conf_t *mcf = conf;
    ngx_str_t *value = cf->args->elts;
    ngx_uint_t i;
    ngx_url_t u;
    u_char *p;
    size_t n;

    if (mcf->redis_host.data) {
        return "is duplicate";
    }

    if (value[1].len > 5 && ngx_strncmp(value[1].data, "unix:", 5) == 0) {
        if (value[1].data[5] != '/') {
            return "needs an absolute unix socket path";
        }
        mcf->redis_host.len = value[1].len - 5;
        mcf->redis_host.data = ngx_pnalloc(cf->pool, mcf->redis_host.len + 1);
        if (mcf->redis_host.data == NULL) {
            return NGX_CONF_ERROR;
        }
        ngx_cpystrn(mcf->redis_host.data, value[1].data + 5, mcf->redis_host.len + 1);
        mcf->redis_port = 0;
    } else {
        /* Resolved here, once: hiredis would resolve with a blocking call. */
        ngx_memzero(&u, sizeof(ngx_url_t));
        u.url = value[1];
        u.default_port = SEP_DEFAULT_REDIS_PORT;
        if (ngx_parse_url(cf->pool, &u) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s in sep_redis \"%V\"",
                               u.err ? u.err : "invalid address", &u.url);
            return NGX_CONF_ERROR;
        }
        if (u.naddrs == 0 || u.addrs == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sep_redis \"%V\" has no address", &u.url);
            return NGX_CONF_ERROR;
        }
        p = ngx_pnalloc(cf->pool, NGX_SOCKADDR_STRLEN + 1);
        if (p == NULL) {
            return NGX_CONF_ERROR;
        }
        n = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, p, NGX_SOCKADDR_STRLEN, 0);
        p[n] = '\0';
        mcf->redis_host.data = p;
        mcf->redis_host.len = n;
        mcf->redis_port = u.port;
    }

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_strncmp(value[i].data, "db=", 3) == 0) {
            mcf->redis_db = ngx_atoi(value[i].data + 3, value[i].len - 3);
            if (mcf->redis_db == NGX_ERROR) {
                return "has an invalid db= number";
            }
        } else if (ngx_strncmp(value[i].data, "password=", 9) == 0 && value[i].len > 9) {
            mcf->redis_password.data = value[i].data + 9;
            mcf->redis_password.len = value[i].len - 9;
        } else if (ngx_strncmp(value[i].data, "user=", 5) == 0 && value[i].len > 5) {
            mcf->redis_user.data = value[i].data + 5;
            mcf->redis_user.len = value[i].len - 5;
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid sep_redis parameter \"%V\"",
                               &value[i]);
            return NGX_CONF_ERROR;
        }
    }
    if (mcf->redis_user.len && mcf->redis_password.len == 0) {
        return "has user= without password=";
    }
    return NGX_CONF_OK;
}

static char *ngx_http_sep_backoff_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sep_main_conf_t *mcf = conf;
    ngx_str_t *value = cf->args->elts;

    if (mcf->backoff_min != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }
    mcf->backoff_min = ngx_parse_time(&value[1], 0);
    mcf->backoff_max = ngx_parse_time(&value[2], 0);
    if (mcf->backoff_min == (ngx_msec_t)NGX_ERROR || mcf->backoff_max == (ngx_msec_t)NGX_ERROR ||
        mcf->backoff_min == 0 || mcf->backoff_max < mcf->backoff_min) {
        return "needs two times MIN MAX with 0 < MIN <= MAX";
    }
    return NGX_CONF_OK;
}

static char *ngx_http_sep_prefix_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sep_main_conf_t *mcf = conf;
    ngx_str_t *value = cf->args->elts;

    if (mcf->key_prefix.data) {
        return "is duplicate";
    }
    if (!sep_prefix_valid((sep_str_t){(const char *)value[1].data, value[1].len})) {
        return "needs 1 to 64 visible ASCII characters";
    }
    mcf->key_prefix = value[1];
    return NGX_CONF_OK;
}

static char *ngx_http_sep_model_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sep_loc_conf_t *lcf = conf;
    ngx_str_t *value = cf->args->elts;
    sep_model_t model;

    if (lcf->default_model != NGX_CONF_UNSET) {
        return "is duplicate";
    }
    if (sep_model_from_name((sep_str_t){(const char *)value[1].data, value[1].len}, &model) != 0) {
        return "must be htdemucs, htdemucs_6s or htdemucs_ft";
    }
    lcf->default_model = model;
    return NGX_CONF_OK;
}

/* ---- process hooks ---------------------------------------------------------- */

static ngx_int_t ngx_http_sep_init_process(ngx_cycle_t *cycle)
{
    ngx_http_sep_main_conf_t *mcf;

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK;
    }
    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_sep_module);
    if (mcf == NULL || !mcf->enabled) {
        return NGX_OK;
    }
    ngx_http_sep_conf_check_spools(cycle, mcf);
    if (ngx_http_sep_events_init_process(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }
    return ngx_http_sep_redis_init_process(cycle, mcf);
}

static void ngx_http_sep_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_sep_events_exit_process(cycle);
    ngx_http_sep_redis_exit_process(cycle);
}

/* ---- requests --------------------------------------------------------------- */

static void ngx_http_sep_ctx_cleanup(void *data)
{
    ngx_http_sep_redis_detach(data);
}

ngx_http_sep_ctx_t *ngx_http_sep_get_ctx(ngx_http_request_t *r)
{
    ngx_http_sep_ctx_t *ctx;
    ngx_pool_cleanup_t *cln;

    ctx = ngx_http_get_module_ctx(r, ngx_http_sep_module);
    if (ctx) {
        return ctx;
    }
    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_sep_ctx_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (ctx == NULL || cln == NULL) {
        return NULL;
    }
    ctx->request = r;
    cln->handler = ngx_http_sep_ctx_cleanup;
    cln->data = ctx;
    ngx_http_set_ctx(r, ctx, ngx_http_sep_module);
    return ctx;
}

/*
 * The routes (paths from "/v1/"; /metrics is the one path outside it), with the
 * methods each takes (every API path answers OPTIONS too):
 *   /metrics                   GET, HEAD (text/plain; version=0.0.4)
 *   stats, models              GET, HEAD
 *   jobs                       POST
 *   jobs/{id}                  GET, HEAD, DELETE
 *   jobs/{id}/events           GET (text/event-stream), HEAD (its head, no events)
 *   jobs/{id}/stems/{file}     GET, HEAD
 *   openapi.json               GET, HEAD: the location's static file (the handler declines)
 */
typedef enum {
    SEP_ROUTE_NONE = 0,
    SEP_ROUTE_METRICS,
    SEP_ROUTE_STATS,
    SEP_ROUTE_MODELS,
    SEP_ROUTE_JOBS,
    SEP_ROUTE_JOB,
    SEP_ROUTE_EVENTS,
    SEP_ROUTE_STEM,
    SEP_ROUTE_OPENAPI
} ngx_http_sep_route_t;

static const struct {
    ngx_uint_t methods;
    const char *allow; /* the same methods as the Allow header lists them */
} ngx_http_sep_route_methods[] = {
    [SEP_ROUTE_NONE] = {0, NULL},
    [SEP_ROUTE_METRICS] = {NGX_HTTP_GET | NGX_HTTP_HEAD, "GET, HEAD"},
    [SEP_ROUTE_STATS] = {NGX_HTTP_GET | NGX_HTTP_HEAD, "GET, HEAD"},
    [SEP_ROUTE_MODELS] = {NGX_HTTP_GET | NGX_HTTP_HEAD, "GET, HEAD"},
    [SEP_ROUTE_JOBS] = {NGX_HTTP_POST, "POST"},
    [SEP_ROUTE_JOB] = {NGX_HTTP_GET | NGX_HTTP_HEAD | NGX_HTTP_DELETE, "GET, HEAD, DELETE"},
    [SEP_ROUTE_EVENTS] = {NGX_HTTP_GET | NGX_HTTP_HEAD, "GET, HEAD"},
    [SEP_ROUTE_STEM] = {NGX_HTTP_GET | NGX_HTTP_HEAD, "GET, HEAD"},
    [SEP_ROUTE_OPENAPI] = {NGX_HTTP_GET | NGX_HTTP_HEAD, "GET, HEAD"},
};

/* The route of `uri`; a job's id and a stem's file name are pointed into it. */
static ngx_http_sep_route_t ngx_http_sep_route(ngx_str_t *uri, ngx_str_t *id, ngx_str_t *file)
{
    u_char *p = uri->data, *end = uri->data + uri->len, *slash;

    if (uri->len == 8 && ngx_strncmp(p, "/metrics", 8) == 0) {
        return SEP_ROUTE_METRICS;
    }
    if (uri->len < 4 || ngx_strncmp(p, "/v1/", 4) != 0) {
        return SEP_ROUTE_NONE;
    }
    p += 4;
    if (end - p == 5 && ngx_strncmp(p, "stats", 5) == 0) {
        return SEP_ROUTE_STATS;
    }
    if (end - p == 6 && ngx_strncmp(p, "models", 6) == 0) {
        return SEP_ROUTE_MODELS;
    }
    if (end - p == 12 && ngx_strncmp(p, "openapi.json", 12) == 0) {
        return SEP_ROUTE_OPENAPI;
    }
    if (end - p == 4 && ngx_strncmp(p, "jobs", 4) == 0) {
        return SEP_ROUTE_JOBS;
    }
    if (end - p <= 5 || ngx_strncmp(p, "jobs/", 5) != 0) {
        return SEP_ROUTE_NONE;
    }
    p += 5;
    slash = ngx_strlchr(p, end, '/');
    id->data = p;
    id->len = (slash ? slash : end) - p;
    if (slash == NULL) {
        return SEP_ROUTE_JOB;
    }
    p = slash + 1;
    if (end - p == 6 && ngx_strncmp(p, "events", 6) == 0) {
        return SEP_ROUTE_EVENTS;
    }
    if (end - p > 6 && ngx_strncmp(p, "stems/", 6) == 0 && ngx_strlchr(p + 6, end, '/') == NULL) {
        file->data = p + 6;
        file->len = end - file->data;
        return SEP_ROUTE_STEM;
    }
    return SEP_ROUTE_NONE;
}

/* Adds "Allow: {allow}, OPTIONS" (every API path answers OPTIONS); its value, or NULL. */
static ngx_str_t *ngx_http_sep_push_allow(ngx_http_request_t *r, const char *allow)
{
    ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);
    size_t len = ngx_strlen(allow);

    if (h == NULL) {
        return NULL;
    }
    h->hash = 1;
    ngx_str_set(&h->key, "Allow");
    h->value.len = len + sizeof(", OPTIONS") - 1;
    h->value.data = ngx_pnalloc(r->pool, h->value.len);
    if (h->value.data == NULL) {
        h->hash = 0;
        return NULL;
    }
    ngx_memcpy(ngx_cpymem(h->value.data, allow, len), ", OPTIONS", sizeof(", OPTIONS") - 1);
    return &h->value;
}

/* A method the path does not take: OPTIONS gets its 204 (a CORS preflight), others 405. */
static ngx_int_t ngx_http_sep_method_not_allowed(ngx_http_request_t *r, const char *allow)
{
    ngx_str_t *methods;
    ngx_int_t rc;

    if (r->method == NGX_HTTP_OPTIONS) {
        return ngx_http_sep_options(r, allow);
    }
    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    /* the same list an OPTIONS request gets */
    methods = ngx_http_sep_push_allow(r, allow);
    if (methods == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return ngx_http_sep_send_error(r, NGX_HTTP_NOT_ALLOWED, "method_not_allowed",
                                   "%V is not allowed here; allowed: %V", &r->method_name, methods);
}

static ngx_int_t ngx_http_sep_not_found(ngx_http_request_t *r)
{
    ngx_int_t rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }
    return ngx_http_sep_send_error(r, NGX_HTTP_NOT_FOUND, "not_found", "no such API path");
}

static ngx_int_t ngx_http_sep_handler(ngx_http_request_t *r)
{
    ngx_http_sep_route_t route;
    ngx_str_t id = ngx_null_string, file = ngx_null_string;
    ngx_int_t rc;

    if (ngx_http_sep_get_ctx(r) == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    route = ngx_http_sep_route(&r->uri, &id, &file);
    if (route == SEP_ROUTE_NONE) {
        return ngx_http_sep_not_found(r);
    }
    if (!(r->method & ngx_http_sep_route_methods[route].methods)) {
        return ngx_http_sep_method_not_allowed(r, ngx_http_sep_route_methods[route].allow);
    }

    switch (route) {
    case SEP_ROUTE_METRICS:
        return ngx_http_sep_metrics_handler(r);
    case SEP_ROUTE_STATS:
        return ngx_http_sep_stats_handler(r);
    case SEP_ROUTE_MODELS:
        return ngx_http_sep_models_handler(r);
    case SEP_ROUTE_JOBS:
        return ngx_http_sep_upload_handler(r);
    case SEP_ROUTE_JOB:
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }
        return r->method == NGX_HTTP_DELETE ? ngx_http_sep_cancel_handler(r, &id)
                                            : ngx_http_sep_status_handler(r, &id);
    case SEP_ROUTE_EVENTS:
        return ngx_http_sep_events_handler(r, &id);
    case SEP_ROUTE_STEM:
        rc = ngx_http_discard_request_body(r);
        return rc != NGX_OK ? rc : ngx_http_sep_stem_handler(r, &id, &file);
    case SEP_ROUTE_OPENAPI:
        /* nginx's static handler serves the document (`alias` of its location); the API
         * location gives it the rest: 405 with Allow, OPTIONS, CORS, JSON errors */
        return NGX_DECLINED;
    default:
        return ngx_http_sep_not_found(r);
    }
}

/* ---- JSON for nginx's own error pages in sep_api locations ------------------ */

/*
 * An API answer: the request is in a sep_api location, or it was redirected internally
 * to sep_stems_location by a stem download (the redirect clears the module's context and
 * changes the location, so the URI is what tells; that location is `internal`, nothing
 * else reaches it). nginx's own errors there (a stem gone from disk, an unsatisfiable
 * Range) are then JSON like every other answer under /v1/.
 */
static ngx_uint_t ngx_http_sep_answers_as_api(ngx_http_request_t *r, ngx_http_sep_loc_conf_t *lcf)
{
    if (lcf->api == 1) {
        return 1;
    }
    return r->internal && lcf->stems_location.len > 0 && r->uri.len > lcf->stems_location.len &&
           ngx_strncmp(r->uri.data, lcf->stems_location.data, lcf->stems_location.len) == 0;
}

/* Whether the filesystem nginx writes upload bodies to (client_body_temp_path), or the
 * spool, has less room than one more write of the body: a 500 of nginx's own while it
 * read the body was then a full disk, which the API answers as 507. */
static ngx_flag_t ngx_http_sep_body_store_full(ngx_http_request_t *r, ngx_http_sep_loc_conf_t *lcf)
{
    ngx_http_core_loc_conf_t *clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    u_char path[NGX_MAX_PATH + 1];
    ngx_str_t *dirs[2];
    struct statvfs fs;
    ngx_uint_t i;

    dirs[0] = &clcf->client_body_temp_path->name;
    dirs[1] = &lcf->spool;
    for (i = 0; i < 2; i++) {
        if (dirs[i]->len == 0 || dirs[i]->len > NGX_MAX_PATH) {
            continue;
        }
        ngx_cpystrn(path, dirs[i]->data, dirs[i]->len + 1);
        if (statvfs((char *)path, &fs) == 0 &&
            (uint64_t)fs.f_bavail * fs.f_frsize < (uint64_t)clcf->client_body_buffer_size + 65536) {
            return 1;
        }
    }
    return 0;
}

/* ---- nginx's own errors before a location: JSON and CORS under the API ---------- */

/*
 * nginx answers some errors itself before it chooses a location: while it reads the
 * request head (400 for a malformed header, 414 for a request line over
 * large_client_header_buffers, 494 for a header over them, sent as 400, 505), right
 * after it (405 for TRACE and CONNECT, 501 for an unknown Transfer-Encoding, 400 for a
 * missing Host or a bad Content-Length), or from the server level's own directives.
 * Those answers go through the header filter with the server's configuration, where
 * no sep_api applies; without this their page is HTML and carries no CORS header, so a
 * browser page sees a network error and a client no error code.
 *
 * To tell whether such an answer belongs to the API, the filter asks the question nginx
 * would have asked next: which location would serve this URI. It walks the server's
 * own location tree (static prefixes and exact names, nested locations, then the
 * regular expressions, as ngx_http_core_find_location() does; that function is not
 * exported), and the answer is the API's when that location has sep_api. This rather
 * than a list of sep_api prefixes kept at configuration time, which would take a
 * `location /v1/docs/` of static files or a `location ~ \.php$` for the API,
 * and rather than error_page entries added to every server, which would fight the
 * operator's own error_page and lose the status nginx chose. The CORS headers are those
 * of that location's configuration, and answers outside the API (/, /ui/) keep
 * nginx's pages. Regular expressions are run without captures: they set no variable of
 * the request.
 *
 * The URI is the one nginx parsed. When nginx could not parse it (a malformed request
 * line, a URI it could not decode) the answer stays nginx's own: nothing is guessed.
 * Two answers come before nginx decodes the URI: a 505, whose target the parser has
 * delimited, is taken when it needs no decoding (no %-escape, no dot segment or double
 * slash); a 414 is taken by the start of its target as far as it was read, on the same
 * condition, and only when that start decides the location: no location's name goes on
 * from it, and no regular expression location that nginx would try could take a URI
 * that starts so (one not anchored with ^ always could). A 414 carries no CORS header:
 * nginx stops before the header lines, so the request's Origin is not known.
 */

/* As ngx_http_core_find_static_location(): the location found is put in *found. With
 * `open` (only the start of the URI was read: it may go on), *unsure is set where the
 * rest could lead elsewhere: a location's name that the part read is all or a start of. */
static ngx_int_t ngx_http_sep_find_static_location(ngx_http_location_tree_node_t *node,
                                                   ngx_str_t *uri, ngx_http_core_loc_conf_t **found,
                                                   ngx_uint_t open, ngx_uint_t *unsure)
{
    u_char *p = uri->data;
    size_t len = uri->len, n;
    ngx_int_t rc, rv = NGX_DECLINED;

    while (node) {
        n = (len <= (size_t)node->len) ? len : node->len;
        rc = ngx_filename_cmp(p, node->name, n);
        if (rc != 0) {
            node = (rc < 0) ? node->left : node->right;
            continue;
        }
        if (open && len <= (size_t)node->len) {
            *unsure = 1;
            return NGX_DECLINED;
        }
        if (len > (size_t)node->len) {
            if (node->inclusive) {
                *found = node->inclusive;
                rv = NGX_AGAIN;
                node = node->tree;
                p += n;
                len -= n;
                continue;
            }
            node = node->right; /* an exact location only */
            continue;
        }
        if (len == (size_t)node->len) {
            if (node->exact) {
                *found = node->exact;
                return NGX_OK;
            }
            *found = node->inclusive;
            return NGX_AGAIN;
        }
        if (len + 1 == (size_t)node->len && node->auto_redirect) {
            *found = node->exact ? node->exact : node->inclusive;
            rv = NGX_DONE;
        }
        node = node->left;
    }
    return rv;
}

#if (NGX_PCRE)
/*
 * For a URI of which only the start was read: whether the regular expression can match
 * no URI that starts so. Only an anchored one can tell (`~ ^/v1/docs/` and a start
 * "/v1/jobs/..."): PCRE2 finds not even a partial match. One that is not anchored may
 * match from where the part read ends (`~ \.css$`); one that matches, or partly, may
 * match the whole URI or not.
 */
static ngx_uint_t ngx_http_sep_regex_rules_out(ngx_regex_t *re, ngx_str_t *start)
{
#if (NGX_PCRE2)
    pcre2_match_data *match;
    uint32_t options = 0;
    int rc;

    if (pcre2_pattern_info(re, PCRE2_INFO_ALLOPTIONS, &options) != 0 ||
        !(options & PCRE2_ANCHORED)) {
        return 0;
    }
    match = pcre2_match_data_create(1, NULL);
    if (match == NULL) {
        return 0;
    }
    rc = pcre2_match(re, start->data, start->len, 0, PCRE2_PARTIAL_SOFT, match, NULL);
    pcre2_match_data_free(match);
    return rc == PCRE2_ERROR_NOMATCH;
#else
    return 0;
#endif
}
#endif

/* As ngx_http_core_find_location(): *clcf is the enclosing location (the server's at
 * the top) and becomes the one nginx would choose for `uri`. With `open` (see above)
 * *unsure is also set where a regular expression location could take a URI that
 * starts so (see ngx_http_sep_regex_rules_out()). */
static ngx_int_t ngx_http_sep_find_location(ngx_str_t *uri, ngx_http_core_loc_conf_t **clcf,
                                            ngx_uint_t open, ngx_uint_t *unsure)
{
    ngx_http_core_loc_conf_t *pclcf = *clcf;
    ngx_int_t rc;
#if (NGX_PCRE)
    ngx_http_core_loc_conf_t **re;
    ngx_uint_t noregex = 0;
    ngx_int_t n;
#endif

    rc = ngx_http_sep_find_static_location(pclcf->static_locations, uri, clcf, open, unsure);
    if (rc == NGX_AGAIN) {
#if (NGX_PCRE)
        noregex = (*clcf)->noregex;
#endif
        rc = ngx_http_sep_find_location(uri, clcf, open, unsure); /* its nested locations */
    }
    if (rc == NGX_OK || rc == NGX_DONE || *unsure) {
        return rc;
    }
#if (NGX_PCRE)
    if (noregex == 0 && pclcf->regex_locations) {
        for (re = pclcf->regex_locations; *re; re++) {
            if (open) {
                if (ngx_http_sep_regex_rules_out((*re)->regex->regex, uri)) {
                    continue;
                }
                *unsure = 1;
                return rc;
            }
            n = ngx_regex_exec((*re)->regex->regex, uri, NULL, 0);
            if (n == NGX_REGEX_NO_MATCHED) {
                continue;
            }
            if (n < 0) {
                return NGX_ERROR;
            }
            *clcf = *re;
            rc = ngx_http_sep_find_location(uri, clcf, open, unsure);
            return rc == NGX_ERROR ? rc : NGX_OK;
        }
    }
#endif
    return rc;
}

/* Whether the request target nginx's parser read, [p, end), is a path that decodes to
 * itself: no %-escape, no "." or ".." segment, no "//" (the parser's complex_uri and
 * quoted_uri flags tell, for what it read). */
static ngx_uint_t ngx_http_sep_target_is_literal(ngx_http_request_t *r, u_char *p, u_char *end)
{
    return p < end && *p == '/' && !r->complex_uri && !r->quoted_uri && !r->empty_path_in_uri;
}

/* The URI an answer before any location is about (see above), or NGX_DECLINED; *open
 * is set when it is only the start of the URI (a 414 read no end of it). */
static ngx_int_t ngx_http_sep_head_error_uri(ngx_http_request_t *r, ngx_str_t *uri,
                                             ngx_uint_t *open)
{
    u_char *end;

    *open = 0;
    if (r->uri.len) { /* the request line was parsed and its URI decoded */
        *uri = r->uri;
        return NGX_OK;
    }
    if (r->uri_start == NULL || r->header_in == NULL || r->uri_start < r->header_in->start ||
        r->uri_start >= r->header_in->last) {
        return NGX_DECLINED;
    }
    if (r->headers_out.status == NGX_HTTP_VERSION_NOT_SUPPORTED && r->uri_end) {
        end = r->args_start ? r->args_start - 1 : r->uri_end;
    } else if (r->headers_out.status == NGX_HTTP_REQUEST_URI_TOO_LARGE) {
        /* the path as far as it was read; not r->uri_end: the parser sets it only once
         * the target ends, and moving the line to a larger buffer left it dangling */
        for (end = r->uri_start; end < r->header_in->pos && *end != ' ' && *end != '?'; end++) {
            /* void */
        }
        *open = (end == r->header_in->pos);
    } else {
        return NGX_DECLINED;
    }
    if (end < r->uri_start || end > r->header_in->last ||
        !ngx_http_sep_target_is_literal(r, r->uri_start, end)) {
        return NGX_DECLINED;
    }
    uri->data = r->uri_start;
    uri->len = end - r->uri_start;
    return NGX_OK;
}

/*
 * For an error nginx answers before it chose a location: the configuration of the
 * sep_api location that would serve the request's URI (put in *uri), or NULL (not the
 * API's, or no URI). *status becomes the status the JSON speaks of: 494 for nginx's
 * "header too large", which nginx sends as 400 (it alone leaves r->lingering_close set
 * while it reads the head: its other 400s clear it).
 */
static ngx_http_sep_loc_conf_t *ngx_http_sep_head_error_conf(ngx_http_request_t *r, ngx_str_t *uri,
                                                             ngx_uint_t *status)
{
    ngx_http_core_srv_conf_t *cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);
    ngx_http_core_loc_conf_t *server, *clcf;
    ngx_http_sep_loc_conf_t *lcf;
    ngx_uint_t open, unsure = 0;

    if (r->headers_out.status < NGX_HTTP_BAD_REQUEST || cscf == NULL ||
        r->loc_conf != cscf->ctx->loc_conf) { /* a location was chosen: it is not sep_api */
        return NULL;
    }
    if (ngx_http_sep_head_error_uri(r, uri, &open) != NGX_OK) {
        return NULL;
    }
    server = cscf->ctx->loc_conf[ngx_http_core_module.ctx_index];
    clcf = server;
    if (ngx_http_sep_find_location(uri, &clcf, open, &unsure) == NGX_ERROR || clcf == server) {
        return NULL; /* no location: the server's own configuration, never sep_api */
    }
    if (unsure) {
        return NULL; /* what was not read of the URI could choose another location */
    }
    lcf = clcf->loc_conf[ngx_http_sep_module.ctx_index];
    if (lcf == NULL || lcf->api != 1) {
        return NULL;
    }
    if (r->headers_out.status == NGX_HTTP_BAD_REQUEST && r->lingering_close &&
        r->http_state == NGX_HTTP_READING_REQUEST_STATE) {
        *status = NGX_HTTP_REQUEST_HEADER_TOO_LARGE;
    }
    return lcf;
}

/*
 * nginx refused the method (TRACE, CONNECT) before the API saw the request: the API's
 * own answer for it, a 405 whose Allow lists the route's methods, or a 404 on a path
 * that is no route (whatever its method). The JSON body, or NULL.
 */
static u_char *ngx_http_sep_head_method_error(ngx_http_request_t *r, ngx_str_t *uri, size_t *len)
{
    ngx_http_sep_route_t route;
    ngx_str_t id = ngx_null_string, file = ngx_null_string, *methods;

    route = ngx_http_sep_route(uri, &id, &file);
    if (route == SEP_ROUTE_NONE) {
        r->headers_out.status = NGX_HTTP_NOT_FOUND;
        return ngx_http_sep_error_body(r->pool, "not_found", len, "no such API path");
    }
    methods = ngx_http_sep_push_allow(r, ngx_http_sep_route_methods[route].allow);
    if (methods == NULL) {
        return NULL;
    }
    return ngx_http_sep_error_body(r->pool, "method_not_allowed", len,
                                   "%V is not allowed here; allowed: %V", &r->method_name, methods);
}

static ngx_int_t ngx_http_sep_header_filter(ngx_http_request_t *r)
{
    ngx_http_sep_loc_conf_t *lcf;
    ngx_http_sep_ctx_t *ctx;
    ngx_table_elt_t *h;
    ngx_uint_t status, head_error = 0;
    ngx_str_t uri;
    u_char *body;
    size_t len;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }
    lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    if (lcf == NULL) {
        return ngx_http_next_header_filter(r);
    }
    status = r->headers_out.status;
    if (!ngx_http_sep_answers_as_api(r, lcf)) {
        lcf = ngx_http_sep_head_error_conf(r, &uri, &status);
        if (lcf == NULL) {
            return ngx_http_next_header_filter(r);
        }
        head_error = 1;
    }
    if (ngx_http_sep_cors_headers(r, lcf) != NGX_OK) {
        return NGX_ERROR;
    }
    if (r->headers_out.status < NGX_HTTP_BAD_REQUEST) {
        return ngx_http_next_header_filter(r);
    }
    ctx = ngx_http_get_module_ctx(r, ngx_http_sep_module);
    if (ctx && (ctx->json || ctx->error_body)) {
        return ngx_http_next_header_filter(r);
    }
    ctx = ngx_http_sep_get_ctx(r);
    if (ctx == NULL) {
        return ngx_http_next_header_filter(r);
    }
    if (status == NGX_HTTP_INTERNAL_SERVER_ERROR && r->method == NGX_HTTP_POST &&
        ngx_http_sep_body_store_full(r, lcf)) {
        /* nginx could not write the body to its temp file: the disk is full */
        r->headers_out.status = status = NGX_HTTP_INSUFFICIENT_STORAGE;
    }
    if (head_error && status == NGX_HTTP_NOT_ALLOWED &&
        (r->method & (NGX_HTTP_TRACE | NGX_HTTP_CONNECT))) {
        /* the methods nginx refuses itself; a 405 of the server's own `return` may be
         * for a method the route takes, which its Allow would list */
        body = ngx_http_sep_head_method_error(r, &uri, &len);
    } else {
        body = ngx_http_sep_status_error_json(r->pool, status, &len);
    }
    if (body == NULL) {
        return ngx_http_next_header_filter(r);
    }
    if (r->headers_out.status == NGX_HTTP_TOO_MANY_REQUESTS) {
        /* limit_req / limit_conn with their status 429: like every 429 of the API */
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }
        h->hash = 1;
        ngx_str_set(&h->key, "Retry-After");
        ngx_str_set(&h->value, "1");
    }
    ctx->error_body = body;
    ctx->error_body_len = len;

    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    ngx_str_set(&r->headers_out.charset, "utf-8");
    r->headers_out.content_type_lowcase = NULL;
    ngx_http_clear_content_length(r);
    r->headers_out.content_length_n = len;
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);
    return ngx_http_next_header_filter(r);
}

static ngx_int_t ngx_http_sep_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_http_sep_ctx_t *ctx;
    ngx_chain_t *cl, out;
    ngx_buf_t *b;

    ctx = ngx_http_get_module_ctx(r, ngx_http_sep_module);
    if (ctx == NULL || ctx->error_body == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    /* nginx's HTML page is dropped; the JSON goes out once, as the whole body */
    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        if (cl->buf->in_file) {
            cl->buf->file_pos = cl->buf->file_last;
        }
    }
    if (ctx->error_body_sent) {
        return ngx_http_next_body_filter(r, NULL);
    }
    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }
    b->pos = ctx->error_body;
    b->last = ctx->error_body + ctx->error_body_len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;
    out.buf = b;
    out.next = NULL;
    ctx->error_body_sent = 1;
    return ngx_http_next_body_filter(r, &out);
}

static ngx_int_t ngx_http_sep_postconfiguration(ngx_conf_t *cf)
{
    if (ngx_http_sep_conf_check_locations(
            cf, ngx_http_conf_get_module_main_conf(cf, ngx_http_sep_module)) != NGX_OK) {
        return NGX_ERROR;
    }
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_sep_header_filter;
    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_sep_body_filter;
    return NGX_OK;
}
