/*
 * CORS for browser clients on another origin: the headers on every API answer and the
 * preflight OPTIONS, answered by nginx alone (no Redis).
 *
 *   sep_cors_origins <origin|*|$variable> ... | off
 *                          origins allowed; each argument may hold variables (a `map`
 *                          of $http_origin computes it) and may evaluate to several
 *                          origins separated by spaces, to `*`, or to "" (none)
 *   sep_cors_credentials on|off
 *                          Access-Control-Allow-Credentials: true; the origin is then
 *                          echoed even where `*` allowed it (browsers refuse `*` there)
 *   sep_cors_max_age <time>  how long a browser may cache a preflight (default 10m)
 *
 * Off by default (no sep_cors_origins): answers carry no CORS header and OPTIONS gets
 * 204 with Allow only. With an allowed Origin every API answer (2xx..5xx, nginx's own
 * errors turned into JSON, stem downloads after the internal redirect) carries
 * Access-Control-Allow-Origin, Vary: Origin and Access-Control-Expose-Headers. A
 * disallowed origin gets no CORS header; the request itself is still served, as for
 * any non-browser client (CORS protects the browser's reader, not the server).
 */
#include "ngx_module/ngx_http_sep_module.h"

#define SEP_CORS_EXPOSE                                                                            \
    "Location, Retry-After, ETag, Content-Range, Content-Length, RateLimit-Limit, "                \
    "RateLimit-Remaining, RateLimit-Reset"
#define SEP_CORS_ALLOW_HEADERS                                                                     \
    "Content-Type, Idempotency-Key, Authorization, Last-Event-ID, Range, X-API-Key"

static ngx_str_t ngx_http_sep_cors_origin_key = ngx_string("Origin");
static ngx_str_t ngx_http_sep_cors_acrm_key = ngx_string("Access-Control-Request-Method");

char *ngx_http_sep_cors_origins_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sep_loc_conf_t *lcf = conf;
    ngx_str_t *value = cf->args->elts;
    ngx_http_compile_complex_value_t ccv;
    ngx_http_complex_value_t *cv;
    ngx_uint_t i;
    u_char *host;

    if (lcf->cors_origins != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }
    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        lcf->cors_origins = NULL;
        return NGX_CONF_OK;
    }
    lcf->cors_origins =
        ngx_array_create(cf->pool, cf->args->nelts - 1, sizeof(ngx_http_complex_value_t));
    if (lcf->cors_origins == NULL) {
        return NGX_CONF_ERROR;
    }
    for (i = 1; i < cf->args->nelts; i++) {
        if (value[i].len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sep_cors_origins: empty origin");
            return NGX_CONF_ERROR;
        }
        /* an Origin is scheme://host[:port]: no path, not even a trailing "/" */
        host = (u_char *)ngx_strstr(value[i].data, "://");
        if (ngx_strchr(value[i].data, '$') == NULL && ngx_strcmp(value[i].data, "*") != 0 &&
            (host == NULL || host[3] == '\0' || ngx_strchr(host + 3, '/') != NULL)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "sep_cors_origins: \"%V\" is not an origin "
                               "(scheme://host[:port]), \"*\" or a variable",
                               &value[i]);
            return NGX_CONF_ERROR;
        }
        cv = ngx_array_push(lcf->cors_origins);
        if (cv == NULL) {
            return NGX_CONF_ERROR;
        }
        ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));
        ccv.cf = cf;
        ccv.value = &value[i];
        ccv.complex_value = cv;
        if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
            return NGX_CONF_ERROR;
        }
    }
    return NGX_CONF_OK;
}

static ngx_table_elt_t *ngx_http_sep_find_header(ngx_list_t *headers, ngx_str_t *key)
{
    ngx_list_part_t *part = &headers->part;
    ngx_table_elt_t *h = part->elts;
    ngx_uint_t i;

    for (i = 0; /* void */; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }
        if (h[i].hash != 0 && h[i].key.len == key->len &&
            ngx_strncasecmp(h[i].key.data, key->data, key->len) == 0) {
            return &h[i];
        }
    }
}

static ngx_int_t ngx_http_sep_cors_push(ngx_http_request_t *r, const char *key, u_char *value,
                                        size_t len)
{
    ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);

    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key.data = (u_char *)key;
    h->key.len = ngx_strlen(key);
    h->value.data = value;
    h->value.len = len;
    return NGX_OK;
}

#define ngx_http_sep_cors_push_literal(r, key, text)                                               \
    ngx_http_sep_cors_push(r, key, (u_char *)(text), sizeof(text) - 1)

/* Whether `origin` is allowed: 1 exact match, 2 allowed by "*", 0 not, -1 error. */
static ngx_int_t ngx_http_sep_cors_allowed(ngx_http_request_t *r, ngx_http_sep_loc_conf_t *lcf,
                                           ngx_str_t *origin)
{
    ngx_http_complex_value_t *cv = lcf->cors_origins->elts;
    ngx_uint_t i, star = 0;
    ngx_str_t v;
    u_char *p, *end, *tok;

    for (i = 0; i < lcf->cors_origins->nelts; i++) {
        if (ngx_http_complex_value(r, &cv[i], &v) != NGX_OK) {
            return -1;
        }
        p = v.data;
        end = v.data + v.len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == '\t' || *p == ',')) {
                p++;
            }
            tok = p;
            while (p < end && *p != ' ' && *p != '\t' && *p != ',') {
                p++;
            }
            if (p == tok) {
                continue;
            }
            if (p - tok == 1 && *tok == '*') {
                star = 1;
            } else if ((size_t)(p - tok) == origin->len &&
                       ngx_strncmp(tok, origin->data, origin->len) == 0) {
                return 1;
            }
        }
    }
    return star ? 2 : 0;
}

/* The request's Origin when CORS is on and it is allowed; NULL otherwise. */
static ngx_table_elt_t *ngx_http_sep_cors_origin(ngx_http_request_t *r,
                                                 ngx_http_sep_loc_conf_t *lcf, ngx_int_t *how)
{
    ngx_table_elt_t *origin;

    *how = 0;
    if (lcf->cors_origins == NULL) {
        return NULL;
    }
    origin = ngx_http_sep_find_header(&r->headers_in.headers, &ngx_http_sep_cors_origin_key);
    if (origin == NULL || origin->value.len == 0) {
        return NULL;
    }
    *how = ngx_http_sep_cors_allowed(r, lcf, &origin->value);
    return *how > 0 ? origin : NULL;
}

ngx_int_t ngx_http_sep_cors_headers(ngx_http_request_t *r, ngx_http_sep_loc_conf_t *lcf)
{
    static ngx_str_t acao = ngx_string("Access-Control-Allow-Origin");
    ngx_table_elt_t *origin;
    ngx_int_t how;

    if (lcf->cors_origins == NULL ||
        ngx_http_sep_find_header(&r->headers_out.headers, &acao) != NULL) {
        return NGX_OK; /* off, or already added (an error page sends headers again) */
    }
    origin = ngx_http_sep_cors_origin(r, lcf, &how);
    if (how < 0) {
        return NGX_ERROR;
    }
    if (how != 2 || lcf->cors_credentials) {
        /* the answer depends on Origin: caches must keep one per origin */
        if (ngx_http_sep_cors_push_literal(r, "Vary", "Origin") != NGX_OK) {
            return NGX_ERROR;
        }
    }
    if (origin == NULL) {
        return NGX_OK;
    }
    if (how == 2 && !lcf->cors_credentials) {
        if (ngx_http_sep_cors_push_literal(r, "Access-Control-Allow-Origin", "*") != NGX_OK) {
            return NGX_ERROR;
        }
    } else if (ngx_http_sep_cors_push(r, "Access-Control-Allow-Origin", origin->value.data,
                                      origin->value.len) != NGX_OK) {
        return NGX_ERROR;
    }
    if (lcf->cors_credentials &&
        ngx_http_sep_cors_push_literal(r, "Access-Control-Allow-Credentials", "true") != NGX_OK) {
        return NGX_ERROR;
    }
    return ngx_http_sep_cors_push_literal(r, "Access-Control-Expose-Headers", SEP_CORS_EXPOSE);
}

ngx_int_t ngx_http_sep_options(ngx_http_request_t *r, const char *allow)
{
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    ngx_table_elt_t *origin, *method;
    ngx_int_t rc, how;
    u_char *methods, *p;
    size_t len;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    len = ngx_strlen(allow) + sizeof(", OPTIONS") - 1;
    methods = ngx_pnalloc(r->pool, len);
    if (methods == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    p = ngx_cpymem(methods, allow, ngx_strlen(allow));
    ngx_memcpy(p, ", OPTIONS", sizeof(", OPTIONS") - 1);
    if (ngx_http_sep_cors_push(r, "Allow", methods, len) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    origin = ngx_http_sep_cors_origin(r, lcf, &how);
    method = ngx_http_sep_find_header(&r->headers_in.headers, &ngx_http_sep_cors_acrm_key);
    if (origin != NULL && method != NULL) {
        /* a preflight of an allowed origin: what the path takes, cached max_age */
        p = ngx_pnalloc(r->pool, NGX_TIME_T_LEN);
        if (p == NULL ||
            ngx_http_sep_cors_push(r, "Access-Control-Allow-Methods", methods, len) != NGX_OK ||
            ngx_http_sep_cors_push_literal(r, "Access-Control-Allow-Headers",
                                           SEP_CORS_ALLOW_HEADERS) != NGX_OK ||
            ngx_http_sep_cors_push(r, "Access-Control-Max-Age", p,
                                   ngx_sprintf(p, "%T", lcf->cors_max_age) - p) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    r->headers_out.status = NGX_HTTP_NO_CONTENT;
    r->headers_out.content_length_n = 0;
    r->header_only = 1;
    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return rc;
    }
    return ngx_http_send_special(r, NGX_HTTP_LAST);
}
