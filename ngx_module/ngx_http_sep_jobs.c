/*
 * Job routes other than submission:
 *
 *   GET|HEAD /v1/jobs/{id}                 one HGETALL, the record rendered as JSON
 *   DELETE /v1/jobs/{id}                   one EVALSHA cancel (shared/lua/cancel.lua);
 *                                          the module deletes the job's spool files
 *                                          when the script says so
 *   GET|HEAD /v1/jobs/{id}/stems/{s}.{e}   one HGETALL, then an internal redirect to
 *                                          sep_stems_location so nginx serves the
 *                                          file (sendfile, Range, ETag)
 *
 * Each handler validates what it can from the URI, sends one Redis command and
 * returns NGX_DONE; the reply handler answers and finalizes the request.
 */
#include "ngx_module/ngx_http_sep_module.h"
#include "ngx_module/ngx_http_sep_redis.h"

#include "shared/sep_job.h"
#include "shared/sep_scripts.h"

ngx_int_t ngx_http_sep_redis_failure(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                     redisReply *reply)
{
    if (reply == NULL && ctx->timeout.timedout) {
        return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_timeout",
                                       "the job store did not answer in time; retry later");
    }
    if (reply == NULL) {
        return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                       "the job store is unreachable; retry later");
    }
    if (ngx_http_sep_redis_not_ready(reply)) {
        return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_loading",
                                       "the job store is starting up; retry later");
    }
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "sep: unexpected redis reply (type %d): %*s",
                  reply->type, reply->type == REDIS_REPLY_ERROR ? reply->len : 0,
                  reply->type == REDIS_REPLY_ERROR ? reply->str : "");
    return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_error",
                                   "the job store failed; retry later");
}

ngx_int_t ngx_http_sep_send_command(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                    ngx_http_sep_reply_pt handler, ngx_int_t script, int argc,
                                    const char **argv, const size_t *argvlen)
{
    ngx_int_t rc = ngx_http_sep_redis_command(r, ctx, handler, script, argc, argv, argvlen);

    if (rc == NGX_DECLINED) {
        return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                       "the job store is unreachable; retry later");
    }
    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->main->count++;
    return NGX_DONE;
}

static ngx_int_t ngx_http_sep_job_key(ngx_http_request_t *r, ngx_str_t *id, char *buf, size_t cap,
                                      size_t *len)
{
    ngx_http_sep_main_conf_t *mcf = ngx_http_get_module_main_conf(r, ngx_http_sep_module);
    sep_str_t prefix = {(const char *)mcf->key_prefix.data, mcf->key_prefix.len};

    *len = sep_key_job(buf, cap, prefix, (sep_str_t){(const char *)id->data, id->len});
    return *len ? NGX_OK : NGX_ERROR;
}

static ngx_int_t ngx_http_sep_no_such_job(ngx_http_request_t *r)
{
    return ngx_http_sep_send_error(r, NGX_HTTP_NOT_FOUND, "job_not_found",
                                   "no job with this id (it may have expired)");
}

/* ---- GET /v1/jobs/{id} -------------------------------------------------------- */

static void ngx_http_sep_status_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                      redisReply *reply)
{
    ngx_int_t rc;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        rc = ngx_http_sep_redis_failure(r, ctx, reply);
    } else {
        rc = ngx_http_sep_send_job(r, NGX_HTTP_OK, reply, 0, 0);
    }
    ngx_http_finalize_request(r, rc);
}

ngx_int_t ngx_http_sep_status_handler(ngx_http_request_t *r, ngx_str_t *id)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    char key[SEP_KEY_MAX];
    const char *argv[2];
    size_t argvlen[2];

    if (!sep_id_valid((const char *)id->data, id->len)) {
        return ngx_http_sep_no_such_job(r);
    }
    if (ngx_http_sep_job_key(r, id, key, sizeof(key), &argvlen[1]) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->id = *id;
    argv[0] = "HGETALL";
    argvlen[0] = 7;
    argv[1] = key;
    return ngx_http_sep_send_command(r, ctx, ngx_http_sep_status_reply, -1, 2, argv, argvlen);
}

/* ---- DELETE /v1/jobs/{id} ----------------------------------------------------- */

void ngx_http_sep_remove_job_dir(ngx_log_t *log, ngx_str_t *spool, ngx_str_t *id)
{
    u_char path[NGX_MAX_PATH + 1], *name_at;
    size_t dir_len, name_len;
    ngx_str_t dir_name;
    ngx_dir_t dir;

    dir_len = spool->len + 1 + id->len;
    if (dir_len + 2 > NGX_MAX_PATH) {
        return;
    }
    name_at = ngx_cpymem(path, spool->data, spool->len);
    *name_at++ = '/';
    name_at = ngx_cpymem(name_at, id->data, id->len);
    *name_at = '\0';

    dir_name.data = path;
    dir_name.len = dir_len;
    if (ngx_open_dir(&dir_name, &dir) == NGX_ERROR) {
        if (ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno, "sep: cannot open \"%s\"", path);
        }
        return;
    }
    *name_at++ = '/';
    for (;;) {
        ngx_set_errno(0);
        if (ngx_read_dir(&dir) == NGX_ERROR) {
            if (ngx_errno != NGX_ENOMOREFILES) {
                ngx_log_error(NGX_LOG_ERR, log, ngx_errno, "sep: cannot read a job directory");
            }
            break;
        }
        name_len = ngx_de_namelen(&dir);
        if (ngx_de_name(&dir)[0] == '.' &&
            (name_len == 1 || (name_len == 2 && ngx_de_name(&dir)[1] == '.'))) {
            continue;
        }
        if (dir_len + 1 + name_len > NGX_MAX_PATH) {
            continue;
        }
        ngx_cpystrn(name_at, ngx_de_name(&dir), name_len + 1);
        if (ngx_delete_file(path) == NGX_FILE_ERROR && ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_ERR, log, ngx_errno, "sep: cannot delete \"%s\"", path);
        }
    }
    (void)ngx_close_dir(&dir);

    path[dir_len] = '\0';
    if (ngx_delete_dir(path) == NGX_FILE_ERROR && ngx_errno != NGX_ENOENT) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno, "sep: cannot delete \"%s\"", path);
    }
}

static void ngx_http_sep_cancel_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                      redisReply *reply)
{
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    redisReply *kind;
    ngx_int_t rc;

    if (ngx_http_sep_redis_error_is(reply, "NOT_FOUND")) {
        rc = ngx_http_sep_no_such_job(r);
    } else if (ngx_http_sep_redis_error_is(reply, "ALREADY_DELETED")) {
        /* Redis says the files are deleted; what a DELETE whose reply was lost (or
         * came after its worker exited) left of them goes now */
        ngx_http_sep_remove_job_dir(r->connection->log, &lcf->spool, &ctx->id);
        rc = ngx_http_sep_send_error(r, NGX_HTTP_CONFLICT, "already_deleted",
                                     "the job is finished and its files were already deleted");
    } else if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
               reply->element[0]->type != REDIS_REPLY_STRING) {
        rc = ngx_http_sep_redis_failure(r, ctx, reply);
    } else {
        kind = reply->element[0];
        if (kind->len == 16 && ngx_strncmp(kind->str, "cancel_requested", 16) == 0) {
            rc = ngx_http_sep_send_job(r, NGX_HTTP_ACCEPTED, reply, 1, 0);
        } else {
            /* "canceled" (was queued) or "purge" (was finished): files go now */
            ngx_http_sep_remove_job_dir(r->connection->log, &lcf->spool, &ctx->id);
            rc = ngx_http_sep_send_job(r, NGX_HTTP_OK, reply, 1, 0);
        }
    }
    ngx_http_finalize_request(r, rc);
}

ngx_int_t ngx_http_sep_cancel_handler(ngx_http_request_t *r, ngx_str_t *id)
{
    ngx_http_sep_main_conf_t *mcf = ngx_http_get_module_main_conf(r, ngx_http_sep_module);
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    ngx_http_sep_cancel_command_t cmd;

    if (!sep_id_valid((const char *)id->data, id->len)) {
        return ngx_http_sep_no_such_job(r);
    }
    ctx->id = *id;
    if (ngx_http_sep_cancel_command(mcf, (sep_str_t){(const char *)id->data, id->len}, &cmd) !=
        NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return ngx_http_sep_send_command(r, ctx, ngx_http_sep_cancel_reply, SEP_SCRIPT_CANCEL,
                                     NGX_HTTP_SEP_CANCEL_ARGC, cmd.argv, cmd.argvlen);
}

/* ---- GET /v1/jobs/{id}/stems/{stem}.{ext} ------------------------------------- */

static ngx_int_t ngx_http_sep_no_such_stem(ngx_http_request_t *r, const char *why)
{
    return ngx_http_sep_send_error(r, NGX_HTTP_NOT_FOUND, "stem_not_found", "%s", why);
}

/*
 * The record's file for a stem: "{stem}.{ext}", or "{stem}.{tag}.{ext}" where the tag
 * ([a-z0-9-], 1..100 bytes) names the attempt that wrote it (workerd writes each
 * attempt's stems under its own names; the record points at the winner's).
 */
static ngx_uint_t ngx_http_sep_stem_file_valid(ngx_str_t *stem, ngx_str_t *ext, sep_str_t file)
{
    size_t i, tag;

    if (file.len < stem->len + 1 + ext->len || ngx_strncmp(file.ptr, stem->data, stem->len) != 0 ||
        file.ptr[stem->len] != '.' ||
        ngx_strncmp(file.ptr + file.len - ext->len, ext->data, ext->len) != 0) {
        return 0;
    }
    if (file.len == stem->len + 1 + ext->len) {
        return 1;
    }
    /* ".{tag}." between them */
    tag = file.len - stem->len - ext->len - 2;
    if (tag < 1 || tag > 100 || file.ptr[file.len - ext->len - 1] != '.') {
        return 0;
    }
    for (i = stem->len + 1; i < stem->len + 1 + tag; i++) {
        if (!((file.ptr[i] >= 'a' && file.ptr[i] <= 'z') ||
              (file.ptr[i] >= '0' && file.ptr[i] <= '9') || file.ptr[i] == '-')) {
            return 0;
        }
    }
    return 1;
}

static void ngx_http_sep_stem_reply(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                    redisReply *reply)
{
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    const sep_job_stem_t *listed;
    sep_str_t stem = {(const char *)ctx->stem.data, ctx->stem.len};
    sep_model_t model;
    sep_format_t format;
    sep_job_t job;
    ngx_str_t uri, file;
    ngx_int_t rc;
    ngx_uint_t serve = 0;
    u_char *p;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        ngx_http_finalize_request(r, ngx_http_sep_redis_failure(r, ctx, reply));
        return;
    }
    if (ngx_http_sep_job_from_reply(r, reply, 0, &job) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    if (!sep_job_exists(&job)) {
        rc = ngx_http_sep_no_such_job(r);
    } else if (sep_job_status(&job) != SEP_STATUS_COMPLETED) {
        rc = ngx_http_sep_send_error(
            r, NGX_HTTP_NOT_FOUND, "job_not_completed",
            "the job's status is %*s; stems are there only once it is completed", job.status.len,
            job.status.ptr);
    } else if (job.files_deleted) {
        rc = ngx_http_sep_no_such_stem(r, "the job's files were deleted");
    } else if (sep_model_from_name(job.model, &model) != 0 ||
               !sep_output_stem_valid(model, job.stems_option, stem) ||
               sep_format_from_name(job.format, &format) != 0 ||
               ctx->ext.len != ngx_strlen(sep_format_ext(format)) ||
               ngx_strncmp(ctx->ext.data, sep_format_ext(format), ctx->ext.len) != 0) {
        rc = ngx_http_sep_no_such_stem(r, "this job has no such stem");
    } else if ((listed = sep_job_find_stem(&job, stem)) == NULL ||
               !ngx_http_sep_stem_file_valid(&ctx->stem, &ctx->ext, listed->file)) {
        rc = ngx_http_sep_no_such_stem(r, "this job has no such stem");
    } else {
        file.len = listed->file.len;
        file.data = ngx_pnalloc(r->pool, file.len);
        if (file.data != NULL) {
            ngx_memcpy(file.data, listed->file.ptr, file.len);
        }
        serve = file.data != NULL;
        rc = serve ? NGX_OK : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    sep_job_clear(&job);
    if (!serve) { /* an answer was sent (or failed): rc is its result */
        ngx_http_finalize_request(r, rc);
        return;
    }

    /* {stems_location}{id}/{file}: only validated pieces make the path */
    uri.len = lcf->stems_location.len + ctx->id.len + 1 + file.len;
    uri.data = ngx_pnalloc(r->pool, uri.len);
    if (uri.data == NULL) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    p = ngx_cpymem(uri.data, lcf->stems_location.data, lcf->stems_location.len);
    p = ngx_cpymem(p, ctx->id.data, ctx->id.len);
    *p++ = '/';
    ngx_memcpy(p, file.data, file.len);

    /* CORS of this location: the stems location may have no sep_cors_origins of its own */
    if (ngx_http_sep_cors_headers(r, lcf) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    (void)ngx_http_internal_redirect(r, &uri, NULL);
    ngx_http_finalize_request(r, NGX_DONE);
}

/* A stem name: lowercase letters and '_', as the models' sources and "no_X". */
static ngx_uint_t ngx_http_sep_stem_name_valid(ngx_str_t *s)
{
    size_t i;

    if (s->len == 0 || s->len >= SEP_STEM_NAME_MAX) {
        return 0;
    }
    for (i = 0; i < s->len; i++) {
        if (!((s->data[i] >= 'a' && s->data[i] <= 'z') || s->data[i] == '_')) {
            return 0;
        }
    }
    return 1;
}

ngx_int_t ngx_http_sep_stem_handler(ngx_http_request_t *r, ngx_str_t *id, ngx_str_t *file)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    char key[SEP_KEY_MAX];
    const char *argv[2];
    size_t argvlen[2];
    u_char *dot, *p;

    if (!sep_id_valid((const char *)id->data, id->len)) {
        return ngx_http_sep_no_such_job(r);
    }
    dot = NULL;
    for (p = file->data + file->len; p > file->data; p--) {
        if (p[-1] == '.') {
            dot = p - 1;
            break;
        }
    }
    if (dot == NULL) {
        return ngx_http_sep_no_such_stem(r, "a stem is named {stem}.{ext}");
    }
    ctx->id = *id;
    ctx->stem.data = file->data;
    ctx->stem.len = dot - file->data;
    ctx->ext.data = dot + 1;
    ctx->ext.len = file->data + file->len - (dot + 1);
    if (!ngx_http_sep_stem_name_valid(&ctx->stem) ||
        !((ctx->ext.len == 3 && ngx_strncmp(ctx->ext.data, "wav", 3) == 0) ||
          (ctx->ext.len == 4 && ngx_strncmp(ctx->ext.data, "flac", 4) == 0))) {
        return ngx_http_sep_no_such_stem(r, "this job has no such stem");
    }

    if (ngx_http_sep_job_key(r, id, key, sizeof(key), &argvlen[1]) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    argv[0] = "HGETALL";
    argvlen[0] = 7;
    argv[1] = key;
    return ngx_http_sep_send_command(r, ctx, ngx_http_sep_stem_reply, -1, 2, argv, argvlen);
}
