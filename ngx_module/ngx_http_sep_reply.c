/*
 * JSON answers of the module: the job record, errors
 * ({"error": {"code": ..., "message": ...}}), and the JSON that replaces nginx's
 * own error pages in sep_api locations. Every answer is
 * "application/json; charset=utf-8"; 429 and 503 carry "Retry-After: 1".
 */
#include "ngx_module/ngx_http_sep_module.h"
#include "ngx_module/ngx_http_sep_redis.h"

#include "shared/sep_job.h"
#include "shared/sep_json.h"

#define SEP_MESSAGE_MAX 512
#define SEP_REPLY_FIELDS_ON_STACK 128

static ngx_int_t ngx_http_sep_add_header(ngx_http_request_t *r, const char *key, ngx_str_t *value,
                                         ngx_table_elt_t **out)
{
    ngx_table_elt_t *h = ngx_list_push(&r->headers_out.headers);

    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key.data = (u_char *)key;
    h->key.len = ngx_strlen(key);
    h->value = *value;
    if (out) {
        *out = h;
    }
    return NGX_OK;
}

ngx_int_t ngx_http_sep_send_json(ngx_http_request_t *r, ngx_uint_t status, u_char *body, size_t len)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    ngx_chain_t out;
    ngx_buf_t *b;
    ngx_int_t rc;

    if (ctx) {
        ctx->json = 1;
    }
    r->headers_out.status = status;
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    ngx_str_set(&r->headers_out.charset, "utf-8");
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = len;
    if (status == NGX_HTTP_SERVICE_UNAVAILABLE || status == NGX_HTTP_TOO_MANY_REQUESTS) {
        ngx_str_t one = ngx_string("1");
        if (ngx_http_sep_add_header(r, "Retry-After", &one, NULL) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }
    b->pos = body;
    b->last = body + len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    out.buf = b;
    out.next = NULL;
    return ngx_http_output_filter(r, &out);
}

static u_char *ngx_http_sep_error_json(ngx_pool_t *pool, const char *code, u_char *msg,
                                       size_t msg_len, size_t *len)
{
    size_t cap = 64 + ngx_strlen(code) + sep_jw_string_bound(msg_len);
    u_char *buf = ngx_pnalloc(pool, cap);

    if (buf == NULL) {
        return NULL;
    }
    *len = sep_json_error((char *)buf, cap, code, (sep_str_t){(const char *)msg, msg_len});
    return *len ? buf : NULL;
}

u_char *ngx_http_sep_error_body(ngx_pool_t *pool, const char *code, size_t *len, const char *fmt,
                                ...)
{
    u_char msg[SEP_MESSAGE_MAX], *last;
    va_list args;

    va_start(args, fmt);
    last = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);
    return ngx_http_sep_error_json(pool, code, msg, last - msg, len);
}

ngx_int_t ngx_http_sep_send_error(ngx_http_request_t *r, ngx_uint_t status, const char *code,
                                  const char *fmt, ...)
{
    u_char msg[SEP_MESSAGE_MAX], *last, *body;
    size_t len;
    va_list args;

    va_start(args, fmt);
    last = ngx_vslprintf(msg, msg + sizeof(msg), fmt, args);
    va_end(args);

    body = ngx_http_sep_error_json(r->pool, code, msg, last - msg, &len);
    if (body == NULL) {
        return NGX_ERROR;
    }
    return ngx_http_sep_send_json(r, status, body, len);
}

u_char *ngx_http_sep_status_error_json(ngx_pool_t *pool, ngx_uint_t status, size_t *len)
{
    const char *code, *message;
    u_char text[64];

    switch (status) {
    case NGX_HTTP_BAD_REQUEST:
        code = "bad_request";
        message = "the request is malformed";
        break;
    case NGX_HTTP_UNAUTHORIZED:
        code = "unauthorized";
        message = "valid credentials (an API key, a session) are required";
        break;
    case NGX_HTTP_FORBIDDEN:
        code = "forbidden";
        message = "these credentials do not allow this request";
        break;
    case NGX_HTTP_NOT_FOUND:
        code = "not_found";
        message = "not found";
        break;
    case NGX_HTTP_NOT_ALLOWED:
        code = "method_not_allowed";
        message = "method not allowed";
        break;
    case NGX_HTTP_REQUEST_TIME_OUT:
        code = "request_timeout";
        message = "the request was not received in time";
        break;
    case NGX_HTTP_LENGTH_REQUIRED:
        code = "length_required";
        message = "Content-Length or chunked transfer encoding is required";
        break;
    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        code = "body_too_large";
        message = "the upload is larger than this server accepts (client_max_body_size)";
        break;
    case NGX_HTTP_REQUEST_URI_TOO_LARGE:
        code = "uri_too_long";
        message = "the request URI is too long";
        break;
    case NGX_HTTP_REQUEST_HEADER_TOO_LARGE:
        code = "header_too_large"; /* nginx's 494, sent as 400 */
        message = "a request header line, or all of them, is larger than this server accepts "
                  "(large_client_header_buffers)";
        break;
    case NGX_HTTP_UNSUPPORTED_MEDIA_TYPE:
        code = "unsupported_media_type";
        message = "unsupported media type";
        break;
    case NGX_HTTP_TOO_MANY_REQUESTS:
        code = "too_many_requests";
        message = "too many requests";
        break;
    case NGX_HTTP_SERVICE_UNAVAILABLE:
        code = "unavailable";
        message = "the service is unavailable; retry later";
        break;
    case NGX_HTTP_NOT_IMPLEMENTED:
        code = "not_implemented";
        message = "the request uses what this server does not implement (a Transfer-Encoding "
                  "other than chunked)";
        break;
    case NGX_HTTP_VERSION_NOT_SUPPORTED:
        code = "http_version_not_supported";
        message = "the HTTP version is not supported";
        break;
    case NGX_HTTP_INSUFFICIENT_STORAGE:
        code = "insufficient_storage";
        message = "the spool is full";
        break;
    default:
        if (status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
            code = "internal_error";
            message = "internal server error";
        } else {
            code = "http_error";
            ngx_sprintf(text, "HTTP error %ui%Z", status);
            message = (const char *)text;
        }
    }
    return ngx_http_sep_error_json(pool, code, (u_char *)message, ngx_strlen(message), len);
}

ngx_int_t ngx_http_sep_set_location(ngx_http_request_t *r, ngx_str_t *id)
{
    ngx_str_t value;
    ngx_table_elt_t *h;

    value.len = sizeof(SEP_API_JOBS_PATH) - 1 + id->len;
    value.data = ngx_pnalloc(r->pool, value.len);
    if (value.data == NULL) {
        return NGX_ERROR;
    }
    ngx_memcpy(ngx_cpymem(value.data, SEP_API_JOBS_PATH, sizeof(SEP_API_JOBS_PATH) - 1), id->data,
               id->len);
    /*
     * A plain header, not r->headers_out.location: nginx would make that absolute from
     * its own listen port and the Host header, which is wrong behind a TLS proxy or on
     * another port. A relative reference is valid in Location (RFC 9110, 10.2.2).
     */
    if (ngx_http_sep_add_header(r, "Location", &value, &h) != NGX_OK) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

ngx_int_t ngx_http_sep_job_from_reply(ngx_http_request_t *r, void *reply, size_t first,
                                      sep_job_t *job)
{
    redisReply *rr = reply;
    const char *stack_items[SEP_REPLY_FIELDS_ON_STACK], **items = stack_items;
    size_t stack_lens[SEP_REPLY_FIELDS_ON_STACK], *lens = stack_lens;
    size_t n, i;

    sep_job_init(job);
    n = rr->elements > first ? (rr->elements - first) & ~(size_t)1 : 0;
    if (n > SEP_REPLY_FIELDS_ON_STACK) {
        items = ngx_palloc(r->pool, n * sizeof(char *));
        lens = ngx_palloc(r->pool, n * sizeof(size_t));
        if (items == NULL || lens == NULL) {
            return NGX_ERROR;
        }
    }
    for (i = 0; i < n; i++) {
        redisReply *e = rr->element[first + i];
        if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) {
            items[i] = e->str;
            lens[i] = e->len;
        } else {
            items[i] = "";
            lens[i] = 0;
        }
    }
    (void)sep_job_from_fields(job, n, items, lens);
    return NGX_OK;
}

ngx_int_t ngx_http_sep_send_job(ngx_http_request_t *r, ngx_uint_t status, void *reply, size_t first,
                                ngx_uint_t with_location)
{
    size_t cap, len;
    sep_job_t job;
    u_char *buf;
    ngx_str_t id;

    if (ngx_http_sep_job_from_reply(r, reply, first, &job) != NGX_OK) {
        return NGX_ERROR;
    }
    if (!sep_job_exists(&job)) {
        sep_job_clear(&job);
        return ngx_http_sep_send_error(r, NGX_HTTP_NOT_FOUND, "job_not_found",
                                       "no job with this id (it may have expired)");
    }

    cap = sep_job_json_bound(&job) + 1;
    buf = ngx_pnalloc(r->pool, cap);
    len = buf ? sep_job_render_json(&job, (char *)buf, cap - 1) : 0;
    if (len == 0) {
        sep_job_clear(&job);
        return NGX_ERROR;
    }
    buf[len++] = '\n';

    if (with_location && sep_id_valid(job.id.ptr, job.id.len)) {
        id.data = (u_char *)job.id.ptr;
        id.len = job.id.len;
        if (ngx_http_sep_set_location(r, &id) != NGX_OK) {
            sep_job_clear(&job);
            return NGX_ERROR;
        }
    }
    sep_job_clear(&job);
    return ngx_http_sep_send_json(r, status, buf, len);
}
