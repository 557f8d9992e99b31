/*
 * POST /v1/jobs: accept an upload and queue a job.
 *
 * Before the body is read, everything the headers and the query string can refuse
 * is refused (Content-Type, options, Idempotency-Key, missing length). The body is
 * then read unbuffered (r->request_body_no_buffering): no temp file, nothing held
 * in memory beyond nginx's client_body_buffer_size. Each buffer is handed over as it
 * arrives and
 *
 *   raw body    is the audio file
 *   multipart   goes through the streaming multipart parser; the "file" part is the
 *               audio file, the option fields are collected
 *
 * The audio file's first SEP_SNIFF_BYTES are sniffed; audio opens {spool}/{id}/
 * input.part and every byte is written there as it comes (a refused upload is read
 * to its end and dropped). About sep_multipart_buffer bytes are read and stored per
 * event-loop turn, the rest in the next turns (ngx_posted_next_events), so a client
 * sending faster than the worker stores never keeps the worker's other connections
 * waiting. At the end input.part is renamed to input.{ext} (the same directory) and
 * one EVALSHA submit (shared/lua/submit.lua) creates the job and queues it, with a
 * deadline (Redis runs it no later than this request waits for it). Its reply timer
 * and that deadline are computed from a fresh clock (ngx_time_update), not from the
 * time nginx cached when the event-loop turn began.
 *
 * Whatever fails after the spool directory exists removes it again before the
 * answer is sent (a failed write at once, so that a full spool is not kept full
 * while the rest of that body comes in), so a refused upload leaves nothing behind, not even for a
 * moment after the client has its answer; a request that ends while its body is still coming in
 * (client gone, timeout, chunked body over client_max_body_size) removes it in its pool cleanup.
 */
#include "ngx_module/ngx_http_sep_module.h"
#include "ngx_module/ngx_http_sep_redis.h"

#include "shared/sep_job.h"
#include "shared/sep_multipart.h"
#include "shared/sep_scripts.h"
#include "shared/sep_sniff.h"

#define SEP_OPTION_VALUE_MAX 64
#define SEP_DIR_ACCESS 0775
#define SEP_FILE_ACCESS 0664

enum { SEP_FORM_IGNORE = 0, SEP_FORM_FILE, SEP_FORM_OPTION };

/* One upload while its body comes in (ctx->upload). */
struct ngx_http_sep_upload_s {
    ngx_http_request_t *request;
    ngx_http_sep_ctx_t *ctx;
    ngx_uint_t multipart;
    ngx_uint_t receiving; /* the body is still coming in */
    size_t turn;          /* bytes handed over in this event-loop turn */

    /* multipart: the parser and the current part */
    sep_multipart_t mp;
    sep_multipart_status_t st;
    u_char *header;  /* the parser's header buffer */
    ngx_uint_t part; /* SEP_FORM_* of the current part */
    u_char name[16];
    size_t name_len;
    u_char value[SEP_OPTION_VALUE_MAX + 1];
    size_t value_len;
    ngx_uint_t file_seen;

    /* the audio file: the raw body or the "file" part */
    ngx_fd_t fd; /* {spool}/{id}/input.part once the head is sniffed as audio */
    ngx_str_t part_path;
    off_t file_bytes;
    u_char head[SEP_SNIFF_BYTES];
    size_t head_len;
    ngx_uint_t sniffed;
    sep_audio_type_t type;

    /* why the upload is refused */
    ngx_uint_t status;
    const char *code;
    u_char message[256];
    ngx_err_t storage_err;
    const char *storage_what;
    u_char *storage_path;
};

typedef struct ngx_http_sep_upload_s ngx_http_sep_upload_t;

static void ngx_http_sep_upload_start(ngx_http_request_t *r);
static void ngx_http_sep_upload_abort(ngx_http_request_t *r, ngx_http_sep_upload_t *up);
static void ngx_http_sep_upload_cleanup(void *data);
static void ngx_http_sep_spool_remove(ngx_log_t *log, ngx_http_sep_ctx_t *ctx);
static int ngx_http_sep_form_begin(void *user, const sep_multipart_part_t *part);
static int ngx_http_sep_form_data(void *user, const char *data, size_t len);
static int ngx_http_sep_form_end(void *user);

static const sep_multipart_callbacks_t ngx_http_sep_form_callbacks = {
    ngx_http_sep_form_begin, ngx_http_sep_form_data, ngx_http_sep_form_end};
static ngx_int_t ngx_http_sep_submit(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx);
static void ngx_http_sep_submit_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                      redisReply *reply);

/* The submit's deadline is this much before the request's own (at most a tenth of
 * sep_redis_timeout). */
#define SEP_DEADLINE_EARLY_MS 5

/* ---- refusals that need no body ----------------------------------------------- */

static ngx_int_t ngx_http_sep_refuse(ngx_http_request_t *r, ngx_uint_t status, const char *code,
                                     const char *fmt, const char *detail)
{
    ngx_int_t rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }
    return ngx_http_sep_send_error(r, status, code, fmt, detail);
}

/* audio/... or application/octet-stream (parameters ignored) */
static ngx_uint_t ngx_http_sep_raw_type_ok(ngx_str_t *ct)
{
    u_char *p = ct->data, *end = ct->data + ct->len;
    size_t len;

    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }
    len = end - p;
    if (len >= 6 && ngx_strncasecmp(p, (u_char *)"audio/", 6) == 0) {
        return 1;
    }
    if (len >= 24 && ngx_strncasecmp(p, (u_char *)"application/octet-stream", 24) == 0 &&
        (len == 24 || p[24] == ';' || p[24] == ' ' || p[24] == '\t')) {
        return 1;
    }
    return 0;
}

/* Applies the query string's options. NGX_OK, or the answer already sent. */
static ngx_int_t ngx_http_sep_query_options(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                            ngx_uint_t *refused)
{
    u_char *p = r->args.data, *end = r->args.data + r->args.len, *amp, *eq, *src, *dst;
    /* an escaped value is at most 3 bytes per character; longer ones are cut to a
     * length that is refused anyway */
    u_char name[32], value[3 * SEP_OPTION_VALUE_MAX + 1];
    size_t name_len, value_len, raw_len;
    sep_option_result_t res;
    char err[256];

    *refused = 0;
    while (p < end) {
        amp = ngx_strlchr(p, end, '&');
        if (amp == NULL) {
            amp = end;
        }
        eq = ngx_strlchr(p, amp, '=');
        src = p;
        raw_len = (eq ? eq : amp) - p;
        p = amp + 1;
        if (raw_len == 0 || raw_len >= sizeof(name)) {
            continue; /* no option has such a name */
        }
        dst = name;
        ngx_unescape_uri(&dst, &src, raw_len, NGX_UNESCAPE_URI);
        name_len = dst - name;

        src = eq ? eq + 1 : amp;
        raw_len = ngx_min((size_t)(amp - src), sizeof(value) - 1);
        dst = value;
        ngx_unescape_uri(&dst, &src, raw_len, NGX_UNESCAPE_URI);
        value_len = ngx_min((size_t)(dst - value), SEP_OPTION_VALUE_MAX + 1);

        res = sep_options_set(&ctx->options, (sep_str_t){(const char *)name, name_len},
                              (sep_str_t){(const char *)value, value_len}, err, sizeof(err));
        if (res == SEP_OPTION_INVALID) {
            *refused = 1;
            return ngx_http_sep_refuse(r, NGX_HTTP_BAD_REQUEST, "invalid_option", "%s", err);
        }
    }
    return NGX_OK;
}

static ngx_table_elt_t *ngx_http_sep_find_header(ngx_http_request_t *r, const char *name)
{
    ngx_list_part_t *part = &r->headers_in.headers.part;
    ngx_table_elt_t *h = part->elts;
    size_t len = ngx_strlen(name);
    ngx_uint_t i;

    for (i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }
        if (h[i].key.len == len && ngx_strncasecmp(h[i].key.data, (u_char *)name, len) == 0) {
            return &h[i];
        }
    }
}

ngx_int_t ngx_http_sep_upload_handler(ngx_http_request_t *r)
{
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    ngx_table_elt_t *ct = r->headers_in.content_type, *idem;
    ngx_uint_t refused, multipart = 0;
    ngx_http_sep_upload_t *up;
    ngx_pool_cleanup_t *cln;
    sep_str_t boundary = {NULL, 0};
    char err[256];
    ngx_int_t rc;

    sep_options_init(&ctx->options, (sep_model_t)lcf->default_model);

    if (ct && ct->value.len) {
        sep_str_t type = {(const char *)ct->value.data, ct->value.len};
        if (sep_multipart_is_form_data(type)) {
            if (sep_multipart_boundary(type, &boundary) != 0) {
                return ngx_http_sep_refuse(r, NGX_HTTP_BAD_REQUEST, "invalid_multipart", "%s",
                                           "multipart/form-data needs a valid boundary parameter");
            }
            multipart = 1;
        } else if (!ngx_http_sep_raw_type_ok(&ct->value)) {
            return ngx_http_sep_refuse(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                       "%s",
                                       "send audio as audio/*, application/octet-stream or "
                                       "multipart/form-data with a \"file\" part");
        }
    }

    rc = ngx_http_sep_query_options(r, ctx, &refused);
    if (refused || rc != NGX_OK) {
        return rc;
    }
    /* A raw upload has all its options now: refuse before reading the body. */
    if (!multipart && sep_options_finish(&ctx->options, err, sizeof(err)) != 0) {
        return ngx_http_sep_refuse(r, NGX_HTTP_BAD_REQUEST, "invalid_option", "%s", err);
    }

    idem = ngx_http_sep_find_header(r, "Idempotency-Key");
    if (idem) {
        if (!sep_idempotency_key_valid(
                (sep_str_t){(const char *)idem->value.data, idem->value.len})) {
            return ngx_http_sep_refuse(r, NGX_HTTP_BAD_REQUEST, "invalid_idempotency_key", "%s",
                                       "Idempotency-Key must be 1 to 255 visible ASCII "
                                       "characters");
        }
        ctx->idempotency_key = idem->value;
    }

    if (r->headers_in.content_length_n == 0) {
        return ngx_http_sep_refuse(r, NGX_HTTP_BAD_REQUEST, "empty_body", "%s",
                                   "the upload is empty");
    }
    if (r->headers_in.content_length_n < 0 && !r->headers_in.chunked) {
        return ngx_http_sep_refuse(r, NGX_HTTP_LENGTH_REQUIRED, "length_required", "%s",
                                   "send Content-Length or use chunked transfer encoding");
    }

    up = ngx_pcalloc(r->pool, sizeof(ngx_http_sep_upload_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (up == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    up->request = r;
    up->ctx = ctx;
    up->fd = NGX_INVALID_FILE;
    up->multipart = multipart;
    up->receiving = 1;
    ctx->upload = up;
    cln->handler = ngx_http_sep_upload_cleanup;
    cln->data = up;
    if (multipart) {
        up->header = ngx_palloc(r->pool, lcf->multipart_max_header);
        if (up->header == NULL ||
            sep_multipart_init(&up->mp, boundary, (char *)up->header, lcf->multipart_max_header,
                               &ngx_http_sep_form_callbacks, up) != 0) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* The body is handed to this module as it arrives (no temp file): it is parsed
     * and stored straight into the spool, a bounded amount per event-loop turn. */
    r->request_body_no_buffering = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_sep_upload_start);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        ngx_http_sep_upload_abort(r, up);
        return rc;
    }
    return NGX_DONE;
}

/* ---- the spool ---------------------------------------------------------------- */

/* Removes what this request put in the spool. */
static void ngx_http_sep_spool_cleanup(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx)
{
    ngx_http_sep_spool_remove(r->connection->log, ctx);
}

static void ngx_http_sep_spool_remove(ngx_log_t *log, ngx_http_sep_ctx_t *ctx)
{
    if (ctx->input_path.len) {
        if (ngx_delete_file(ctx->input_path.data) == NGX_FILE_ERROR && ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno, "sep: cannot delete \"%V\"",
                          &ctx->input_path);
        }
        ctx->input_path.len = 0;
    }
    if (ctx->job_dir.len) {
        if (ngx_delete_dir(ctx->job_dir.data) == NGX_FILE_ERROR && ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno, "sep: cannot delete \"%V\"", &ctx->job_dir);
        }
        ctx->job_dir.len = 0;
    }
}

/* Refuses the upload: what it put in the spool is removed first, so that no
 * {spool}/{id}/ is left when the client reads the answer. */
static ngx_int_t ngx_http_sep_spool_refuse(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                           ngx_uint_t status, const char *code, const char *message)
{
    ngx_http_sep_spool_cleanup(r, ctx);
    return ngx_http_sep_send_error(r, status, code, "%s", message);
}

static ngx_int_t ngx_http_sep_storage_error(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                            ngx_err_t err, const char *what, u_char *path)
{
    ngx_log_error(NGX_LOG_CRIT, r->connection->log, err, "sep: %s \"%s\" failed", what, path);
    if (err == NGX_ENOSPC || err == EDQUOT) {
        return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_INSUFFICIENT_STORAGE,
                                         "insufficient_storage", "the spool is full; retry later");
    }
    return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_INTERNAL_SERVER_ERROR, "internal_error",
                                     "the upload could not be stored");
}

/* {job_dir}/{name}, NUL-terminated, into *path. */
static ngx_int_t ngx_http_sep_job_file(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                       const char *name, ngx_str_t *path)
{
    size_t name_len = ngx_strlen(name);
    u_char *p;

    path->len = ctx->job_dir.len + 1 + name_len;
    path->data = ngx_pnalloc(r->pool, path->len + 1);
    if (path->data == NULL) {
        return NGX_ERROR;
    }
    p = ngx_cpymem(path->data, ctx->job_dir.data, ctx->job_dir.len);
    *p++ = '/';
    p = ngx_cpymem(p, name, name_len);
    *p = '\0';
    return NGX_OK;
}

static ngx_int_t ngx_http_sep_unsupported_audio(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx)
{
    return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                     "unsupported_media_type",
                                     "the upload is not audio this service reads (WAV, RF64, "
                                     "FLAC, Ogg Vorbis, Ogg Opus, MP3, AIFF)");
}

/* ---- the audio file: the raw body or the "file" part -------------------------- */

/* A storage failure while the body streams in; reported once the body is read. What
 * the upload put in the spool goes now: a full spool is not kept full by a partial
 * file while the rest of its body comes in (and is dropped). */
static void ngx_http_sep_file_failed(ngx_http_sep_upload_t *up, ngx_err_t err, const char *what,
                                     u_char *path)
{
    if (up->storage_err == 0) {
        up->storage_err = err ? err : EIO;
        up->storage_what = what;
        up->storage_path = path;
    }
    if (up->fd != NGX_INVALID_FILE) {
        (void)ngx_close_file(up->fd);
        up->fd = NGX_INVALID_FILE;
    }
    ngx_http_sep_spool_remove(up->request->connection->log, up->ctx);
}

/* A new id, {spool}/{id}/ and {spool}/{id}/input.part open for writing. */
static ngx_int_t ngx_http_sep_file_open(ngx_http_sep_upload_t *up)
{
    ngx_http_request_t *r = up->request;
    ngx_http_sep_ctx_t *ctx = up->ctx;
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    ngx_err_t err;
    u_char *p;

    if (sep_id_generate((char *)ctx->id_buf) != 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno, "sep: getrandom() failed");
        ngx_http_sep_file_failed(up, EIO, "getrandom", (u_char *)"");
        return NGX_ERROR;
    }
    ctx->id.data = ctx->id_buf;
    ctx->id.len = SEP_ID_LEN;

    ctx->job_dir.len = lcf->spool.len + 1 + SEP_ID_LEN;
    ctx->job_dir.data = ngx_pnalloc(r->pool, ctx->job_dir.len + 1);
    if (ctx->job_dir.data == NULL) {
        ctx->job_dir.len = 0;
        ngx_http_sep_file_failed(up, NGX_ENOMEM, "allocating", (u_char *)"");
        return NGX_ERROR;
    }
    p = ngx_cpymem(ctx->job_dir.data, lcf->spool.data, lcf->spool.len);
    *p++ = '/';
    p = ngx_cpymem(p, ctx->id.data, SEP_ID_LEN);
    *p = '\0';

    if (ngx_create_dir(ctx->job_dir.data, SEP_DIR_ACCESS) == NGX_FILE_ERROR) {
        err = ngx_errno;
        ctx->job_dir.len = 0; /* not ours to remove */
        ngx_http_sep_file_failed(up, err, "mkdir", ctx->job_dir.data);
        return NGX_ERROR;
    }
    if (ngx_http_sep_job_file(r, ctx, "input.part", &up->part_path) != NGX_OK) {
        ngx_http_sep_file_failed(up, NGX_ENOMEM, "allocating", (u_char *)"");
        return NGX_ERROR;
    }
    up->fd = ngx_open_file(up->part_path.data, NGX_FILE_WRONLY, NGX_FILE_CREATE_OR_OPEN | O_EXCL,
                           SEP_FILE_ACCESS);
    if (up->fd == NGX_INVALID_FILE) {
        ngx_http_sep_file_failed(up, ngx_errno, "open", up->part_path.data);
        return NGX_ERROR;
    }
    /* from here on the part file is ours to remove on failure */
    ctx->input_path = up->part_path;
    return NGX_OK;
}

static void ngx_http_sep_file_store(ngx_http_sep_upload_t *up, const u_char *data, size_t len)
{
    ssize_t n;

    while (len > 0 && up->storage_err == 0) {
        n = write(up->fd, data, len);
        if (n < 0) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }
            ngx_http_sep_file_failed(up, ngx_errno, "writing", up->part_path.data);
            return;
        }
        data += n;
        len -= (size_t)n;
    }
}

/* The first bytes are in: sniff them; audio opens the spool file and stores them. */
static void ngx_http_sep_file_sniff(ngx_http_sep_upload_t *up)
{
    up->sniffed = 1;
    up->type = sep_sniff(up->head, up->head_len);
    if (up->type == SEP_AUDIO_UNKNOWN) {
        return; /* answered 415 once the body is read; nothing is stored */
    }
    if (ngx_http_sep_file_open(up) == NGX_OK) {
        ngx_http_sep_file_store(up, up->head, up->head_len);
    }
}

/* The next bytes of the audio file. The first SEP_SNIFF_BYTES are held until they
 * can be sniffed: no spool directory exists for what is not audio. */
static void ngx_http_sep_file_data(ngx_http_sep_upload_t *up, const u_char *data, size_t len)
{
    size_t take;

    up->file_bytes += len;
    if (!up->sniffed) {
        take = ngx_min(len, sizeof(up->head) - up->head_len);
        ngx_memcpy(up->head + up->head_len, data, take);
        up->head_len += take;
        data += take;
        len -= take;
        if (up->head_len < sizeof(up->head)) {
            return;
        }
        ngx_http_sep_file_sniff(up);
    }
    if (up->fd != NGX_INVALID_FILE && len > 0) {
        ngx_http_sep_file_store(up, data, len);
    }
}

/* The audio file is complete (a short one is sniffed now). */
static void ngx_http_sep_file_end(ngx_http_sep_upload_t *up)
{
    if (!up->sniffed && up->head_len > 0) {
        ngx_http_sep_file_sniff(up);
    }
}

static void ngx_http_sep_file_close(ngx_http_sep_upload_t *up)
{
    ngx_fd_t fd = up->fd;

    if (fd != NGX_INVALID_FILE) {
        up->fd = NGX_INVALID_FILE;
        if (ngx_close_file(fd) == NGX_FILE_ERROR) {
            ngx_http_sep_file_failed(up, ngx_errno, "closing", up->part_path.data);
        }
    }
}

/* input.part -> input.{ext} in the same directory. */
static ngx_int_t ngx_http_sep_file_commit(ngx_http_sep_upload_t *up, ngx_uint_t *failed)
{
    ngx_http_request_t *r = up->request;
    ngx_http_sep_ctx_t *ctx = up->ctx;
    u_char name[16];
    ngx_str_t to;

    *failed = 1;
    ngx_sprintf(name, "input.%s%Z", sep_audio_type_ext(up->type));
    if (ngx_http_sep_job_file(r, ctx, (const char *)name, &to) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (ngx_rename_file(up->part_path.data, to.data) == NGX_FILE_ERROR) {
        return ngx_http_sep_storage_error(r, ctx, ngx_errno, "rename to", to.data);
    }
    ctx->input_path = to;
    ctx->input_type = sep_audio_type_name(up->type);
    ctx->input_bytes = up->file_bytes;
    *failed = 0;
    return NGX_OK;
}

/* ---- multipart ---------------------------------------------------------------- */

static int ngx_http_sep_form_refuse(ngx_http_sep_upload_t *up, ngx_uint_t status, const char *code,
                                    const char *message)
{
    up->status = status;
    up->code = code;
    ngx_cpystrn(up->message, (u_char *)message, sizeof(up->message));
    return 1;
}

static int ngx_http_sep_form_begin(void *user, const sep_multipart_part_t *part)
{
    ngx_http_sep_upload_t *up = user;

    up->part = SEP_FORM_IGNORE;
    up->value_len = 0;
    if (sep_str_eq(part->name, "file")) {
        if (up->file_seen) {
            return ngx_http_sep_form_refuse(up, NGX_HTTP_BAD_REQUEST, "duplicate_file",
                                            "the multipart body has more than one \"file\" part");
        }
        up->file_seen = 1;
        up->part = SEP_FORM_FILE;
        return 0;
    }
    if (part->name.len < sizeof(up->name)) {
        ngx_memcpy(up->name, part->name.ptr, part->name.len);
        up->name_len = part->name.len;
        up->part = SEP_FORM_OPTION;
    }
    return 0;
}

static int ngx_http_sep_form_data(void *user, const char *data, size_t len)
{
    ngx_http_sep_upload_t *up = user;
    size_t take;

    if (up->part == SEP_FORM_OPTION) {
        take = ngx_min(len, SEP_OPTION_VALUE_MAX + 1 - up->value_len);
        ngx_memcpy(up->value + up->value_len, data, take);
        up->value_len += take;
    } else if (up->part == SEP_FORM_FILE) {
        ngx_http_sep_file_data(up, (const u_char *)data, len);
    }
    return 0;
}

static int ngx_http_sep_form_end(void *user)
{
    ngx_http_sep_upload_t *up = user;
    char err[256];
    sep_option_result_t res;

    if (up->part == SEP_FORM_FILE) {
        ngx_http_sep_file_end(up);
        return 0;
    }
    if (up->part != SEP_FORM_OPTION) {
        return 0;
    }
    res = sep_options_set(&up->ctx->options, (sep_str_t){(const char *)up->name, up->name_len},
                          (sep_str_t){(const char *)up->value, up->value_len}, err, sizeof(err));
    if (res == SEP_OPTION_INVALID) {
        return ngx_http_sep_form_refuse(up, NGX_HTTP_BAD_REQUEST, "invalid_option", err);
    }
    return 0;
}

/* ---- reading the body --------------------------------------------------------- */

/* What the body reader handed over: parsed (multipart) or stored (raw), and the
 * buffers given back. Once the answer is known to be a refusal the rest of the body
 * is read and dropped. */
static void ngx_http_sep_upload_consume(ngx_http_request_t *r, ngx_http_sep_upload_t *up)
{
    ngx_http_request_body_t *rb = r->request_body;
    ngx_chain_t *cl;
    ngx_buf_t *b;
    size_t len;

    while (rb && rb->bufs) {
        cl = rb->bufs;
        rb->bufs = cl->next;
        b = cl->buf;
        len = b->last - b->pos;
        up->turn += len;
        if (len > 0) {
            if (!up->multipart) {
                ngx_http_sep_file_data(up, b->pos, len);
            } else if (up->st == SEP_MULTIPART_OK) {
                up->st = sep_multipart_feed(&up->mp, (const char *)b->pos, len);
            }
        }
        b->pos = b->last;
        ngx_free_chain(r->pool, cl);
    }
}

/* Stops reading: the request is finalized by the caller with an error. */
static void ngx_http_sep_upload_abort(ngx_http_request_t *r, ngx_http_sep_upload_t *up)
{
    up->receiving = 0;
    ngx_http_sep_file_close(up);
    ngx_http_sep_spool_cleanup(r, up->ctx);
}

/* Request pool cleanup: a request that ends while its body is still coming in (the
 * client went away, a timeout) leaves nothing in the spool. */
static void ngx_http_sep_upload_cleanup(void *data)
{
    ngx_http_sep_upload_t *up = data;

    if (up->fd != NGX_INVALID_FILE) {
        (void)ngx_close_file(up->fd);
        up->fd = NGX_INVALID_FILE;
    }
    if (up->receiving) {
        up->receiving = 0;
        ngx_http_sep_spool_remove(ngx_cycle->log, up->ctx);
    }
}

/* The whole body is read: the answer to a refused upload, or the stored file
 * renamed into place. *failed 0: submit; else the answer was sent (or not) and the
 * result is what to finalize with. */
static ngx_int_t ngx_http_sep_upload_verdict(ngx_http_request_t *r, ngx_http_sep_upload_t *up,
                                             ngx_uint_t *failed)
{
    ngx_http_sep_ctx_t *ctx = up->ctx;
    char err[256];

    if (up->multipart && up->st == SEP_MULTIPART_OK) {
        up->st = sep_multipart_finish(&up->mp);
    } else if (!up->multipart) {
        ngx_http_sep_file_end(up);
    }
    ngx_http_sep_file_close(up);

    *failed = 1;
    if (up->storage_err) {
        return ngx_http_sep_storage_error(r, ctx, up->storage_err, up->storage_what,
                                          up->storage_path);
    }
    if (up->multipart) {
        if (up->code) {
            return ngx_http_sep_spool_refuse(r, ctx, up->status, up->code,
                                             (const char *)up->message);
        }
        if (up->st != SEP_MULTIPART_OK) {
            return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "invalid_multipart",
                                             sep_multipart_error(&up->mp)
                                                 ? sep_multipart_error(&up->mp)
                                                 : "the upload could not be read");
        }
        if (!up->file_seen) {
            return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "missing_file",
                                             "the multipart body has no part named \"file\"");
        }
        if (sep_options_finish(&ctx->options, err, sizeof(err)) != 0) {
            return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "invalid_option", err);
        }
        if (up->file_bytes == 0) {
            return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "empty_body",
                                             "the \"file\" part is empty");
        }
    } else if (up->file_bytes == 0) {
        return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "empty_body",
                                         "the upload is empty");
    }
    if (up->type == SEP_AUDIO_UNKNOWN) {
        return ngx_http_sep_unsupported_audio(r, ctx);
    }
    return ngx_http_sep_file_commit(up, failed);
}

static void ngx_http_sep_upload_done(ngx_http_request_t *r, ngx_http_sep_upload_t *up)
{
    ngx_uint_t failed;
    ngx_int_t rc;

    r->read_event_handler = ngx_http_block_reading;
    up->receiving = 0;
    rc = ngx_http_sep_upload_verdict(r, up, &failed);
    if (failed) {
        ngx_http_sep_spool_cleanup(r, up->ctx);
        ngx_http_finalize_request(r, rc);
        return;
    }
    /* The reply timer is armed from the current time, not from the time cached
     * when this event-loop turn began. */
    ngx_time_update();
    rc = ngx_http_sep_submit(r, up->ctx);
    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
    /* NGX_DONE: the submit reply finalizes; the count taken by reading the body
     * keeps the request alive until then */
}

/* Goes on reading in the next event-loop turn. HTTP/2 hands a stream's data over
 * itself (its read handler is called per DATA frame): there it is read on at once. */
static ngx_uint_t ngx_http_sep_upload_yield(ngx_http_request_t *r)
{
#if (NGX_HTTP_V2)
    if (r->stream) {
        return 0;
    }
#endif
    ngx_post_event(r->connection->read, &ngx_posted_next_events);
    return 1;
}

/* Reads what the client sent: sep_multipart_buffer bytes (or one read more), then the rest in a
 * later event-loop turn so that other connections of the worker are served in
 * between, however fast the client sends. */
static void ngx_http_sep_upload_read(ngx_http_request_t *r)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_sep_module);
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    ngx_http_sep_upload_t *up = ctx->upload;
    size_t before;
    ngx_int_t rc;

    up->turn = 0;
    for (;;) {
        before = up->turn;
        rc = ngx_http_read_unbuffered_request_body(r);
        if (rc >= NGX_HTTP_SPECIAL_RESPONSE || rc == NGX_ERROR) {
            ngx_http_sep_upload_abort(r, up);
            ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_HTTP_INTERNAL_SERVER_ERROR : rc);
            return;
        }
        ngx_http_sep_upload_consume(r, up);
        if (rc == NGX_OK) {
            ngx_http_sep_upload_done(r, up);
            return;
        }
        /* NGX_AGAIN: wait for the socket, or go on in the next turn */
        if (!r->connection->read->ready || up->turn == before) {
            return;
        }
        if (up->turn >= lcf->multipart_buffer && ngx_http_sep_upload_yield(r)) {
            return;
        }
    }
}

/* The body reader's first hand-over (the bytes that came with the headers and what
 * one read got); called once, with the whole body or with the start of it. */
static void ngx_http_sep_upload_start(ngx_http_request_t *r)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_sep_module);
    ngx_http_sep_upload_t *up = ctx ? ctx->upload : NULL;

    if (up == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    up->turn = 0;
    ngx_http_sep_upload_consume(r, up);
    if (!r->request_body_no_buffering) {
        ngx_http_sep_upload_done(r, up); /* the whole body was there */
        return;
    }
    r->read_event_handler = ngx_http_sep_upload_read;
    if (r->connection->read->ready) {
        (void)ngx_http_sep_upload_yield(r);
    }
}

/* ---- submit ------------------------------------------------------------------- */

static ngx_int_t ngx_http_sep_submit(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx)
{
    ngx_http_sep_main_conf_t *mcf = ngx_http_get_module_main_conf(r, ngx_http_sep_module);
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    const sep_script_t *script = &sep_scripts[SEP_SCRIPT_SUBMIT];
    sep_options_t *o = &ctx->options;
    sep_str_t prefix = {(const char *)mcf->key_prefix.data, mcf->key_prefix.len};
    char job_key[SEP_KEY_MAX], idem_key[SEP_KEY_MAX], earlier_key[SEP_KEY_MAX], overlap[32];
    u_char max_queued[NGX_INT_T_LEN], idem_ttl[NGX_TIME_T_LEN], shifts[NGX_INT_T_LEN];
    u_char input_bytes[NGX_OFF_T_LEN], max_attempts[NGX_INT_T_LEN], result_ttl[NGX_TIME_T_LEN];
    u_char deadline[NGX_INT64_LEN];
    ngx_time_t *tp = ngx_timeofday();
    u_char *input_name;
    const char *argv[40];
    size_t argvlen[40], job_len, idem_len = 0, earlier_len = 0, overlap_len;
    char numkeys[2];
    int argc = 0;
    ngx_int_t rc;

    job_len = sep_key_job(job_key, sizeof(job_key), prefix,
                          (sep_str_t){(const char *)ctx->id.data, ctx->id.len});
    if (ctx->idempotency_key.len) {
        idem_len = sep_key_idem(
            idem_key, sizeof(idem_key), prefix,
            (sep_str_t){(const char *)ctx->idempotency_key.data, ctx->idempotency_key.len});
        if (idem_len && ctx->earlier_id.len) {
            /* a repeat after a "lookup" reply: the job the key named then */
            earlier_len =
                sep_key_job(earlier_key, sizeof(earlier_key), prefix,
                            (sep_str_t){(const char *)ctx->earlier_id.data, ctx->earlier_id.len});
        }
    }
    /* KEYS: job, stats, both queues (the script picks the priority's), [idem, [earlier]] */
    numkeys[0] = (char)('4' + (idem_len != 0) + (earlier_len != 0));
    numkeys[1] = '\0';
    overlap_len = sep_format_double(overlap, sizeof(overlap), o->overlap);
    /* the input's file name is the last component of its path */
    input_name = ctx->input_path.data + ctx->job_dir.len + 1;

#define SEP_ARG(p, n) (argv[argc] = (const char *)(p), argvlen[argc++] = (n))
#define SEP_ARG_STR(s) SEP_ARG((s), ngx_strlen(s))
#define SEP_ARG_NUM(buf, fmt, v) SEP_ARG((buf), ngx_sprintf((buf), fmt, v) - (buf))
    SEP_ARG("EVALSHA", 7);
    SEP_ARG(script->sha1, 40);
    SEP_ARG(numkeys, 1);
    SEP_ARG(job_key, job_len);
    SEP_ARG(mcf->key_stats.data, mcf->key_stats.len);
    SEP_ARG(mcf->key_q_high.data, mcf->key_q_high.len);
    SEP_ARG(mcf->key_q_normal.data, mcf->key_q_normal.len);
    if (idem_len) {
        SEP_ARG(idem_key, idem_len);
    }
    if (earlier_len) {
        SEP_ARG(earlier_key, earlier_len);
    }
    SEP_ARG(ctx->id.data, ctx->id.len);
    SEP_ARG_NUM(max_queued, "%i", lcf->max_queued);
    SEP_ARG_NUM(idem_ttl, "%T", lcf->idempotency_ttl);
    /* the wall-clock time in ms at which this request stops waiting for the reply,
     * a little early (both clocks are read in whole ms, and Redis compares its own in
     * whole ms): Redis refuses to run the submit later (PAST_DEADLINE), so that no job
     * is created that the client was told failed */
    SEP_ARG_NUM(deadline, "%L",
                (int64_t)tp->sec * 1000 + (int64_t)tp->msec + (int64_t)mcf->redis_timeout -
                    (int64_t)ngx_min(mcf->redis_timeout / 10, SEP_DEADLINE_EARLY_MS));
    SEP_ARG("model", 5);
    SEP_ARG_STR(sep_model_info(o->model)->name);
    SEP_ARG("stems_option", 12);
    SEP_ARG_STR(sep_options_stems_name(o));
    SEP_ARG("format", 6);
    SEP_ARG_STR(sep_format_name(o->format));
    SEP_ARG("priority", 8);
    SEP_ARG_STR(sep_priority_name(o->priority));
    SEP_ARG("shifts", 6);
    SEP_ARG_NUM(shifts, "%i", (ngx_int_t)o->shifts);
    SEP_ARG("overlap", 7);
    SEP_ARG(overlap, overlap_len);
    SEP_ARG("input", 5);
    SEP_ARG(input_name, ctx->input_path.len - (input_name - ctx->input_path.data));
    SEP_ARG("input_type", 10);
    SEP_ARG_STR(ctx->input_type);
    SEP_ARG("input_bytes", 11);
    SEP_ARG_NUM(input_bytes, "%O", ctx->input_bytes);
    SEP_ARG("max_attempts", 12);
    SEP_ARG_NUM(max_attempts, "%i", lcf->max_attempts);
    SEP_ARG("result_ttl", 10);
    SEP_ARG_NUM(result_ttl, "%T", lcf->result_ttl);
#undef SEP_ARG_NUM
#undef SEP_ARG_STR
#undef SEP_ARG

    rc = ngx_http_sep_redis_command(r, ctx, ngx_http_sep_submit_reply, SEP_SCRIPT_SUBMIT, argc,
                                    argv, argvlen);
    if (rc == NGX_OK) {
        return NGX_DONE;
    }
    ngx_http_sep_spool_cleanup(r, ctx);
    if (rc == NGX_DECLINED) {
        return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                       "the job store is unreachable; retry later");
    }
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}

/* A "lookup" reply of submit: {"lookup", earlier id}. Repeats the submit with that
 * job's key (a few times: the key may move again between calls). NGX_DONE when it
 * was sent, else the status to finalize with (the upload is removed). */
static ngx_int_t ngx_http_sep_submit_again(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                           redisReply *reply)
{
    redisReply *id = reply->elements == 2 ? reply->element[1] : NULL;

    if (id == NULL || id->type != REDIS_REPLY_STRING || !sep_id_valid(id->str, id->len) ||
        ctx->lookups >= 3) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "sep: submit: unusable idempotency lookup (%ui tries)", ctx->lookups);
        ngx_http_sep_spool_cleanup(r, ctx);
        return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_error",
                                       "the job store failed; retry later");
    }
    ctx->lookups++;
    ngx_memcpy(ctx->earlier_id_buf, id->str, SEP_ID_LEN);
    ctx->earlier_id.data = ctx->earlier_id_buf;
    ctx->earlier_id.len = SEP_ID_LEN;
    return ngx_http_sep_submit(r, ctx);
}

static void ngx_http_sep_submit_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                      redisReply *reply)
{
    redisReply *kind;
    ngx_int_t rc;

    if (reply == NULL || ngx_http_sep_redis_error_is(reply, "PAST_DEADLINE")) {
        /* PAST_DEADLINE: Redis ran it in the last moments of the wait (or its clock is
         * ahead of ours): nothing was written, as for a timeout */
        ngx_http_sep_spool_cleanup(r, ctx);
        if (ctx->timeout.timedout || reply != NULL) {
            rc = ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_timeout",
                                         "the job store did not answer in time; retry later");
        } else {
            rc = ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                         "the job store is unreachable; retry later");
        }
    } else if (ngx_http_sep_redis_not_ready(reply)) {
        /* LOADING, BUSY, MASTERDOWN: the script did not run */
        ngx_http_sep_spool_cleanup(r, ctx);
        rc = ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_loading",
                                     "the job store is starting up; retry later");
    } else if (ngx_http_sep_redis_error_is(reply, "QUEUE_FULL")) {
        ngx_http_sep_spool_cleanup(r, ctx);
        rc = ngx_http_sep_send_error(
            r, NGX_HTTP_TOO_MANY_REQUESTS, "queue_full",
            "the queue is full (%i jobs waiting, the limit); retry later",
            ((ngx_http_sep_loc_conf_t *)ngx_http_get_module_loc_conf(r, ngx_http_sep_module))
                ->max_queued);
    } else if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
               reply->element[0]->type != REDIS_REPLY_STRING) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sep: submit failed: %*s",
                      reply->type == REDIS_REPLY_ERROR ? reply->len : 0,
                      reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        ngx_http_sep_spool_cleanup(r, ctx);
        rc = ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_error",
                                     "the job store failed; retry later");
    } else if (reply->element[0]->len == 6 &&
               ngx_strncmp(reply->element[0]->str, "lookup", 6) == 0) {
        /* the Idempotency-Key names an earlier job: submit again with its key in
         * KEYS (every key a script reads is declared, for Redis Cluster) */
        rc = ngx_http_sep_submit_again(r, ctx, reply);
        if (rc == NGX_DONE) {
            return;
        }
    } else {
        kind = reply->element[0];
        if (!(kind->len == 7 && ngx_strncmp(kind->str, "created", 7) == 0)) {
            /* "exists": the Idempotency-Key names an earlier job; this upload is
             * not needed */
            ngx_http_sep_spool_cleanup(r, ctx);
        }
        rc = ngx_http_sep_send_job(r, NGX_HTTP_ACCEPTED, reply, 1, 1);
    }
    ngx_http_finalize_request(r, rc);
}
