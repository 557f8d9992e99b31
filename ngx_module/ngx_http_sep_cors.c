/*
 * CORS for browser clients on another origin: the headers on every API answer and the
 * preflight OPTIONS, answered by nginx alone (no Redis).
 *
 *   sep_cors_origins <origin|*|$variable> ... | off
 *                          origins allowed; each argument may hold variables (a `map`
 *                          of $http_origin computes it) and may evaluate to several
 *                          origins separated by spaces, to `*`, or to "" (none);
 *                          a literal origin is scheme://host[:port] as browsers send
 *                          it (no path, no default port), compared without case
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
    "RateLimit-Remaining, RateLimit-Reset, WWW-Authenticate"
#define SEP_CORS_ALLOW_HEADERS                                                                     \
    "Content-Type, Idempotency-Key, Authorization, Last-Event-ID, Range, X-API-Key"

static ngx_str_t ngx_http_sep_cors_origin_key = ngx_string("Origin");
static ngx_str_t ngx_http_sep_cors_acrm_key = ngx_string("Access-Control-Request-Method");

/*
 * What is wrong with a literal origin, or NULL: browsers send scheme://host[:port] in
 * lower case, without a path (not even "/") and without the scheme's default port, so
 * anything else would never match. Lower-cases it in place.
 */
static const char *ngx_http_sep_cors_check_origin(ngx_str_t *v)
{
    u_char *p, *end, *host, *colon = NULL;

    p = ngx_strlcasestrn(v->data, v->data + v->len, (u_char *)"://", 2);
    if (p == NULL || p == v->data) {
        return "is not an origin (scheme://host[:port]), \"*\" or a variable";
    }
    ngx_strlow(v->data, v->data, v->len);
    host = p + 3;
    end = v->data + v->len;
    for (p = host; p < end; p++) {
        if (*p == '/' || *p == '?' || *p == '#' || *p == '@') {
            return "has a path, query or user part (an origin is scheme://host[:port], "
                   "without even a trailing slash)";
        }
    }
    p = host;
    if (p < end && *p == '[') { /* an IPv6 literal: the port comes after the bracket */
        p = ngx_strlchr(p, end, ']');
        if (p == NULL) {
            return "has an unclosed IPv6 literal";
        }
        p++;
        if (p < end && *p != ':') {
            return "has something after its IPv6 literal that is no port";
        }
        colon = p < end ? p : NULL;
    } else {
        colon = ngx_strlchr(host, end, ':');
    }
    if ((colon ? colon : end) == host) {
        return "has no host";
    }
    if (colon != NULL) {
        if (colon + 1 == end) {
            return "has an empty port";
        }
        for (p = colon + 1; p < end; p++) {
            if (*p < '0' || *p > '9') {
                return "has a port that is not a number";
            }
        }
        if ((host - v->data == sizeof("http://") - 1 && ngx_strncmp(v->data, "http", 4) == 0 &&
             end - colon == 3 && ngx_strncmp(colon, ":80", 3) == 0) ||
            (host - v->data == sizeof("https://") - 1 && ngx_strncmp(v->data, "https", 5) == 0 &&
             end - colon == 4 && ngx_strncmp(colon, ":443", 4) == 0)) {
            return "names the scheme's default port, which browsers leave out of Origin";
        }
    }
    return NULL;
}

char *ngx_http_sep_cors_origins_conf(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_sep_loc_conf_t *lcf = conf;
    ngx_str_t *value = cf->args->elts;
    ngx_http_compile_complex_value_t ccv;
    ngx_http_complex_value_t *cv;
    const char *bad;
    ngx_uint_t i;

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
        if (ngx_strchr(value[i].data, '$') == NULL && ngx_strcmp(value[i].data, "*") != 0 &&
            (bad = ngx_http_sep_cors_check_origin(&value[i])) != NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "sep_cors_origins: \"%V\" %s", &value[i], bad);
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
                       ngx_strncasecmp(tok, origin->data, origin->len) == 0) {
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

/* Whether the answer already has a Vary header naming Origin. */
static ngx_uint_t ngx_http_sep_cors_varies(ngx_http_request_t *r)
{
    ngx_list_part_t *part = &r->headers_out.headers.part;
    ngx_table_elt_t *h = part->elts;
    ngx_uint_t i;

    for (i = 0; /* void */; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }
        if (h[i].hash != 0 && h[i].key.len == sizeof("Vary") - 1 &&
            ngx_strncasecmp(h[i].key.data, (u_char *)"Vary", sizeof("Vary") - 1) == 0 &&
            ngx_strlcasestrn(h[i].value.data, h[i].value.data + h[i].value.len, (u_char *)"origin",
                             sizeof("origin") - 2) != NULL) {
            return 1;
        }
    }
}

ngx_int_t ngx_http_sep_cors_headers(ngx_http_request_t *r, ngx_http_sep_loc_conf_t *lcf)
{
    static ngx_str_t acao = ngx_string("Access-Control-Allow-Origin");
    ngx_table_elt_t *origin;
    ngx_int_t how;

    /* off, or already added: an error page (a 416 of the range filter) sends the headers
     * a second time, with what the first pass added still in the list */
    if (lcf->cors_origins == NULL ||
        ngx_http_sep_find_header(&r->headers_out.headers, &acao) != NULL) {
        return NGX_OK;
    }
    origin = ngx_http_sep_cors_origin(r, lcf, &how);
    if (how < 0) {
        return NGX_ERROR;
    }
    if ((how != 2 || lcf->cors_credentials) && !ngx_http_sep_cors_varies(r)) {
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
