/*
 * POST /v1/jobs: accept an upload and queue a job.
 *
 * Before the body is read, everything the headers and the query string can refuse
 * is refused (Content-Type, options, Idempotency-Key, missing length). nginx then
 * writes the body to a temp file (request_body_in_file_only, as the DAV module
 * does for PUT), never holding it in memory. Then:
 *
 *   raw body    sniff the temp file's first bytes, mkdir {spool}/{id}, rename(2)
 *               the temp file to {spool}/{id}/input.{ext} (a copy only when
 *               client_body_temp_path is on another filesystem)
 *   multipart   stream the temp file through the multipart parser in
 *               sep_multipart_buffer reads; the "file" part goes straight into
 *               {spool}/{id}/input.part (sniffed from its first bytes, renamed to
 *               input.{ext} at the end), the option fields are collected
 *
 * and one EVALSHA submit (shared/lua/submit.lua) creates the job and queues it
 * (with a deadline: Redis runs it no later than this request waits for it).
 * Whatever fails after the spool directory exists removes it again before the
 * answer is sent, so a refused upload leaves nothing behind, not even for a moment
 * after the client has its answer.
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

static void ngx_http_sep_upload_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_sep_submit(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx);

/* The submit's deadline is this much before the request's own (at most a tenth of
 * sep_redis_timeout). */
#define SEP_DEADLINE_EARLY_MS 5
static void ngx_http_sep_submit_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                      redisReply *reply);

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
    sep_str_t boundary;
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

    /* The first body bytes usually arrive with the headers: keep them for the
     * sniff, which then needs no read of the temp file. Never more than the body:
     * bytes past it belong to the next pipelined request. */
    if (!multipart && !r->headers_in.chunked && r->header_in) {
        size_t preread = r->header_in->last - r->header_in->pos;
        size_t want = sizeof(ctx->head);
        if ((off_t)want > r->headers_in.content_length_n) {
            want = (size_t)r->headers_in.content_length_n;
        }
        if (preread >= want) {
            ctx->head_len = want;
            ngx_memcpy(ctx->head, r->header_in->pos, ctx->head_len);
        }
    }

    /* The body goes to a temp file that can be renamed into the spool. */
    r->request_body_in_file_only = 1;
    r->request_body_in_persistent_file = 1;
    r->request_body_in_clean_file = 1;
    r->request_body_file_group_access = 1;
    r->request_body_file_log_level = 0;

    rc = ngx_http_read_client_request_body(r, ngx_http_sep_upload_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }
    return NGX_DONE;
}

/* ---- the spool ---------------------------------------------------------------- */

/* Removes what this request put in the spool. */
static void ngx_http_sep_spool_cleanup(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx)
{
    if (ctx->input_path.len) {
        if (ngx_delete_file(ctx->input_path.data) == NGX_FILE_ERROR && ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno, "sep: cannot delete \"%V\"",
                          &ctx->input_path);
        }
        ctx->input_path.len = 0;
    }
    if (ctx->job_dir.len) {
        if (ngx_delete_dir(ctx->job_dir.data) == NGX_FILE_ERROR && ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, ngx_errno, "sep: cannot delete \"%V\"",
                          &ctx->job_dir);
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

/* A new id and its spool directory. NGX_OK or the answer sent. */
static ngx_int_t ngx_http_sep_make_job_dir(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                           ngx_uint_t *failed)
{
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    u_char *p;

    *failed = 1;
    if (sep_id_generate((char *)ctx->id_buf) != 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno, "sep: getrandom() failed");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->id.data = ctx->id_buf;
    ctx->id.len = SEP_ID_LEN;

    ctx->job_dir.len = lcf->spool.len + 1 + SEP_ID_LEN;
    ctx->job_dir.data = ngx_pnalloc(r->pool, ctx->job_dir.len + 1);
    if (ctx->job_dir.data == NULL) {
        ctx->job_dir.len = 0;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    p = ngx_cpymem(ctx->job_dir.data, lcf->spool.data, lcf->spool.len);
    *p++ = '/';
    p = ngx_cpymem(p, ctx->id.data, SEP_ID_LEN);
    *p = '\0';

    if (ngx_create_dir(ctx->job_dir.data, SEP_DIR_ACCESS) == NGX_FILE_ERROR) {
        ngx_err_t err = ngx_errno;
        ctx->job_dir.len = 0;
        return ngx_http_sep_storage_error(r, ctx, err, "mkdir", ctx->job_dir.data);
    }
    *failed = 0;
    return NGX_OK;
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

/* Moves from -> {job_dir}/input.{ext}; a rename(2) unless the temp file lives on
 * another filesystem (then nginx copies it, like the DAV module would). */
static ngx_int_t ngx_http_sep_move_input(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                         ngx_str_t *from, const char *ext, ngx_uint_t *failed)
{
    static ngx_uint_t warned_exdev;
    u_char name[16];
    ngx_str_t to;
    ngx_ext_rename_file_t ext_rename;
    ngx_err_t err;

    *failed = 1;
    ngx_sprintf(name, "input.%s%Z", ext);
    if (ngx_http_sep_job_file(r, ctx, (const char *)name, &to) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (ngx_rename_file(from->data, to.data) == NGX_FILE_ERROR) {
        err = ngx_errno;
        if (err != NGX_EXDEV) {
            return ngx_http_sep_storage_error(r, ctx, err, "rename to", to.data);
        }
        if (!warned_exdev) {
            warned_exdev = 1;
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "sep: client_body_temp_path is not on the filesystem of sep_spool: "
                          "uploads are copied instead of renamed");
        }
        ngx_memzero(&ext_rename, sizeof(ext_rename));
        ext_rename.access = 0;
        ext_rename.time = -1;
        ext_rename.create_path = 0;
        ext_rename.delete_file = 1;
        ext_rename.log = r->connection->log;
        if (ngx_ext_rename_file(from, &to, &ext_rename) != NGX_OK) {
            return ngx_http_sep_storage_error(r, ctx, ngx_errno, "copy to", to.data);
        }
    }
    ctx->input_path = to;
    *failed = 0;
    return NGX_OK;
}

static ngx_int_t ngx_http_sep_unsupported_audio(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx)
{
    return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                     "unsupported_media_type",
                                     "the upload is not audio this service reads (WAV, RF64, "
                                     "FLAC, Ogg Vorbis, Ogg Opus, MP3, AIFF)");
}

/* Raw body: sniff, then rename the temp file into the spool. */
static ngx_int_t ngx_http_sep_store_raw(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                        ngx_temp_file_t *tf, off_t size, ngx_uint_t *failed)
{
    u_char head[SEP_SNIFF_BYTES];
    sep_audio_type_t type;
    ssize_t n;
    ngx_int_t rc;

    *failed = 1;
    if (ctx->head_len > 0) {
        type = sep_sniff(ctx->head, ctx->head_len);
    } else {
        n = pread(tf->file.fd, head, sizeof(head), 0);
        if (n < 0) {
            ngx_log_error(NGX_LOG_CRIT, r->connection->log, ngx_errno, "sep: pread \"%V\" failed",
                          &tf->file.name);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        type = sep_sniff(head, (size_t)n);
    }
    if (type == SEP_AUDIO_UNKNOWN) {
        return ngx_http_sep_unsupported_audio(r, ctx);
    }

    rc = ngx_http_sep_make_job_dir(r, ctx, failed);
    if (*failed) {
        return rc;
    }
    rc = ngx_http_sep_move_input(r, ctx, &tf->file.name, sep_audio_type_ext(type), failed);
    if (*failed) {
        return rc;
    }
    ctx->input_type = sep_audio_type_name(type);
    ctx->input_bytes = size;
    return NGX_OK;
}

/* ---- multipart ---------------------------------------------------------------- */

enum { SEP_FORM_IGNORE = 0, SEP_FORM_FILE, SEP_FORM_OPTION };

typedef struct {
    ngx_http_request_t *request;
    ngx_http_sep_ctx_t *ctx;

    ngx_uint_t part; /* SEP_FORM_* of the current part */
    u_char name[16];
    size_t name_len;
    u_char value[SEP_OPTION_VALUE_MAX + 1];
    size_t value_len;

    ngx_fd_t fd; /* input.part while the file part streams in */
    ngx_str_t part_path;
    ngx_uint_t file_seen;
    off_t file_bytes;
    u_char head[SEP_SNIFF_BYTES];
    size_t head_len;

    /* why parsing was aborted */
    ngx_uint_t status;
    const char *code;
    u_char message[256];
    ngx_err_t storage_err;
} ngx_http_sep_form_t;

static int ngx_http_sep_form_refuse(ngx_http_sep_form_t *form, ngx_uint_t status, const char *code,
                                    const char *message)
{
    form->status = status;
    form->code = code;
    ngx_cpystrn(form->message, (u_char *)message, sizeof(form->message));
    return 1;
}

static int ngx_http_sep_form_begin(void *user, const sep_multipart_part_t *part)
{
    ngx_http_sep_form_t *form = user;

    form->part = SEP_FORM_IGNORE;
    form->value_len = 0;
    if (sep_str_eq(part->name, "file")) {
        if (form->file_seen) {
            return ngx_http_sep_form_refuse(form, NGX_HTTP_BAD_REQUEST, "duplicate_file",
                                            "the multipart body has more than one \"file\" part");
        }
        form->file_seen = 1;
        form->fd = ngx_open_file(form->part_path.data, NGX_FILE_WRONLY,
                                 NGX_FILE_CREATE_OR_OPEN | O_EXCL, SEP_FILE_ACCESS);
        if (form->fd == NGX_INVALID_FILE) {
            form->storage_err = ngx_errno;
            return 1;
        }
        form->part = SEP_FORM_FILE;
        return 0;
    }
    if (part->name.len < sizeof(form->name)) {
        ngx_memcpy(form->name, part->name.ptr, part->name.len);
        form->name_len = part->name.len;
        form->part = SEP_FORM_OPTION;
    }
    return 0;
}

static int ngx_http_sep_form_data(void *user, const char *data, size_t len)
{
    ngx_http_sep_form_t *form = user;
    size_t take;
    ssize_t n;

    if (form->part == SEP_FORM_OPTION) {
        take = ngx_min(len, SEP_OPTION_VALUE_MAX + 1 - form->value_len);
        ngx_memcpy(form->value + form->value_len, data, take);
        form->value_len += take;
        return 0;
    }
    if (form->part != SEP_FORM_FILE) {
        return 0;
    }
    if (form->head_len < sizeof(form->head)) {
        take = ngx_min(len, sizeof(form->head) - form->head_len);
        ngx_memcpy(form->head + form->head_len, data, take);
        form->head_len += take;
    }
    while (len > 0) {
        n = write(form->fd, data, len);
        if (n < 0) {
            if (ngx_errno == NGX_EINTR) {
                continue;
            }
            form->storage_err = ngx_errno;
            return 1;
        }
        data += n;
        len -= (size_t)n;
        form->file_bytes += n;
    }
    return 0;
}

static int ngx_http_sep_form_end(void *user)
{
    ngx_http_sep_form_t *form = user;
    char err[256];
    sep_option_result_t res;

    if (form->part != SEP_FORM_OPTION) {
        return 0;
    }
    res =
        sep_options_set(&form->ctx->options, (sep_str_t){(const char *)form->name, form->name_len},
                        (sep_str_t){(const char *)form->value, form->value_len}, err, sizeof(err));
    if (res == SEP_OPTION_INVALID) {
        return ngx_http_sep_form_refuse(form, NGX_HTTP_BAD_REQUEST, "invalid_option", err);
    }
    return 0;
}

static const sep_multipart_callbacks_t ngx_http_sep_form_callbacks = {
    ngx_http_sep_form_begin, ngx_http_sep_form_data, ngx_http_sep_form_end};

static ngx_int_t ngx_http_sep_store_multipart(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                              ngx_temp_file_t *tf, off_t size, ngx_uint_t *failed)
{
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    ngx_table_elt_t *ct = r->headers_in.content_type;
    sep_multipart_status_t st = SEP_MULTIPART_OK;
    ngx_http_sep_form_t *form;
    sep_multipart_t *mp;
    sep_str_t boundary;
    sep_audio_type_t type;
    u_char *buf, *header;
    off_t offset;
    ssize_t n;
    ngx_int_t rc;
    char err[256];

    *failed = 1;
    if (sep_multipart_boundary((sep_str_t){(const char *)ct->value.data, ct->value.len},
                               &boundary) != 0) {
        return NGX_HTTP_BAD_REQUEST;
    }
    form = ngx_pcalloc(r->pool, sizeof(ngx_http_sep_form_t));
    mp = ngx_palloc(r->pool, sizeof(sep_multipart_t));
    buf = ngx_palloc(r->pool, lcf->multipart_buffer);
    header = ngx_palloc(r->pool, lcf->multipart_max_header);
    if (form == NULL || mp == NULL || buf == NULL || header == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    form->request = r;
    form->ctx = ctx;
    form->fd = NGX_INVALID_FILE;

    rc = ngx_http_sep_make_job_dir(r, ctx, failed);
    if (*failed) {
        return rc;
    }
    *failed = 1;
    if (ngx_http_sep_job_file(r, ctx, "input.part", &form->part_path) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    /* From here on the part file is ours to remove on failure. */
    ctx->input_path = form->part_path;

    sep_multipart_init(mp, boundary, (char *)header, lcf->multipart_max_header,
                       &ngx_http_sep_form_callbacks, form);
    for (offset = 0; offset < size && st == SEP_MULTIPART_OK; offset += n) {
        n = pread(tf->file.fd, buf, (size_t)ngx_min((off_t)lcf->multipart_buffer, size - offset),
                  offset);
        if (n <= 0) {
            ngx_log_error(NGX_LOG_CRIT, r->connection->log, ngx_errno, "sep: pread \"%V\" failed",
                          &tf->file.name);
            break;
        }
        st = sep_multipart_feed(mp, (const char *)buf, (size_t)n);
    }
    if (st == SEP_MULTIPART_OK) {
        st = offset >= size ? sep_multipart_finish(mp) : SEP_MULTIPART_ERROR;
    }
    if (form->fd != NGX_INVALID_FILE) {
        (void)ngx_close_file(form->fd);
    }

    if (form->storage_err) {
        return ngx_http_sep_storage_error(r, ctx, form->storage_err, "writing",
                                          form->part_path.data);
    }
    if (form->code) {
        return ngx_http_sep_spool_refuse(r, ctx, form->status, form->code,
                                         (const char *)form->message);
    }
    if (st != SEP_MULTIPART_OK) {
        return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "invalid_multipart",
                                         sep_multipart_error(mp) ? sep_multipart_error(mp)
                                                                 : "the upload could not be read");
    }
    if (!form->file_seen) {
        return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "missing_file",
                                         "the multipart body has no part named \"file\"");
    }
    if (sep_options_finish(&ctx->options, err, sizeof(err)) != 0) {
        return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "invalid_option", err);
    }
    if (form->file_bytes == 0) {
        return ngx_http_sep_spool_refuse(r, ctx, NGX_HTTP_BAD_REQUEST, "empty_body",
                                         "the \"file\" part is empty");
    }
    type = sep_sniff(form->head, form->head_len);
    if (type == SEP_AUDIO_UNKNOWN) {
        return ngx_http_sep_unsupported_audio(r, ctx);
    }
    rc = ngx_http_sep_move_input(r, ctx, &form->part_path, sep_audio_type_ext(type), failed);
    if (*failed) {
        return rc;
    }
    ctx->input_type = sep_audio_type_name(type);
    ctx->input_bytes = form->file_bytes;
    return NGX_OK;
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

/* The whole body is in its temp file. */
static void ngx_http_sep_upload_body(ngx_http_request_t *r)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    ngx_http_request_body_t *rb = r->request_body;
    ngx_temp_file_t *tf;
    ngx_uint_t failed = 1;
    ngx_int_t rc;
    off_t size;

    if (ctx == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    tf = rb ? rb->temp_file : NULL;
    size = tf ? tf->file.offset : 0;
    if (tf == NULL || size == 0) {
        ngx_http_finalize_request(r, ngx_http_sep_send_error(r, NGX_HTTP_BAD_REQUEST, "empty_body",
                                                             "the upload is empty"));
        return;
    }

    if (r->headers_in.content_type && r->headers_in.content_type->value.len &&
        sep_multipart_is_form_data((sep_str_t){(const char *)r->headers_in.content_type->value.data,
                                               r->headers_in.content_type->value.len})) {
        rc = ngx_http_sep_store_multipart(r, ctx, tf, size, &failed);
    } else {
        rc = ngx_http_sep_store_raw(r, ctx, tf, size, &failed);
    }
    if (failed) {
        ngx_http_sep_spool_cleanup(r, ctx);
        ngx_http_finalize_request(r, rc);
        return;
    }

    rc = ngx_http_sep_submit(r, ctx);
    if (rc != NGX_DONE) {
        ngx_http_finalize_request(r, rc);
    }
    /* NGX_DONE: the submit reply finalizes; the count taken by reading the body
     * keeps the request alive until then */
}
