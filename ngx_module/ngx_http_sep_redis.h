/*
 * Redis for the module: one persistent, pipelined hiredis async connection per
 * nginx worker, driven by nginx's event loop, and commands issued on behalf of
 * requests with a per-request reply deadline.
 *
 * A request sends at most one command at a time. Its reply handler is called once:
 * with the reply, or with NULL when the connection failed or the deadline passed
 * (ctx->timeout.timedout tells which). After that the request owes nothing to this
 * layer: a reply that arrives late never touches the request; it is dropped, except
 * that a late submit that created a job cancels it and a late DELETE that canceled
 * or purged a job removes its spool directory (ngx_http_sep_redis.c).
 */
#ifndef NGX_HTTP_SEP_REDIS_H
#define NGX_HTTP_SEP_REDIS_H

#include <hiredis/hiredis.h>

#include "ngx_module/ngx_http_sep_module.h"
#include "shared/sep_keys.h"

typedef void (*ngx_http_sep_reply_pt)(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                      redisReply *reply);

/* Process hooks: connect in each worker; close at exit. */
ngx_int_t ngx_http_sep_redis_init_process(ngx_cycle_t *cycle, ngx_http_sep_main_conf_t *mcf);
void ngx_http_sep_redis_exit_process(ngx_cycle_t *cycle);

/*
 * Sends argv for request r and arms its deadline. script is the SEP_SCRIPT_* the
 * command runs with EVALSHA (a NOSCRIPT answer then loads it and repeats the
 * command once), or -1. Returns NGX_OK (the handler will be called), NGX_DECLINED
 * when Redis cannot be reached (answer 503 at once: the worker is exiting) or
 * NGX_ERROR. A connection that is down is retried at once, or at the last attempt +
 * the backoff's MIN; the command is held (not sent) until that attempt's setup is
 * answered, and its handler gets NULL if the attempt fails.
 */
ngx_int_t ngx_http_sep_redis_command(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                     ngx_http_sep_reply_pt handler, ngx_int_t script, int argc,
                                     const char **argv, const size_t *argvlen);

/* ngx_http_sep_jobs.c: sends argv for the request (as ngx_http_sep_redis_command);
 * NGX_DONE when the reply handler will answer, else the answer's result (503 when
 * Redis cannot be reached). */
ngx_int_t ngx_http_sep_send_command(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                    ngx_http_sep_reply_pt handler, ngx_int_t script, int argc,
                                    const char **argv, const size_t *argvlen);

/* ngx_http_sep_jobs.c: the 503 answer for a failed command (reply NULL: connection
 * lost or deadline passed; a not-ready or unexpected reply). */
ngx_int_t ngx_http_sep_redis_failure(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                     redisReply *reply);

/* Forgets the request's pending command (request pool cleanup). */
void ngx_http_sep_redis_detach(ngx_http_sep_ctx_t *ctx);

/* EVALSHA cancel (shared/lua/cancel.lua) for one job: the argv and the job KEYS it
 * points into (shared/README.md; no ARGV). One more slot for an optional KEYS[9]
 * ({p}idem:{key}, numkeys then "9"). */
#define NGX_HTTP_SEP_CANCEL_ARGC (3 + SEP_JOB_KEYS)
typedef struct {
    sep_job_keys_t keys;
    const char *argv[NGX_HTTP_SEP_CANCEL_ARGC + 1];
    size_t argvlen[NGX_HTTP_SEP_CANCEL_ARGC + 1];
} ngx_http_sep_cancel_command_t;

/* Fills cmd for job id. NGX_OK, or NGX_ERROR when the id makes no key. */
ngx_int_t ngx_http_sep_cancel_command(ngx_http_sep_main_conf_t *mcf, sep_str_t id,
                                      ngx_http_sep_cancel_command_t *cmd);

/* 1 when reply is an error whose code (first word) is `code`. */
ngx_uint_t ngx_http_sep_redis_error_is(redisReply *reply, const char *code);

/* 1 when reply says Redis cannot serve yet (LOADING, BUSY, MASTERDOWN): the command
 * did not run; the request answers 503 redis_loading. */
ngx_uint_t ngx_http_sep_redis_not_ready(redisReply *reply);

#endif /* NGX_HTTP_SEP_REDIS_H */
