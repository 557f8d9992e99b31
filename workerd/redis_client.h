/*
 * redis_client.h - workerd's blocking Redis connection: one per thread that talks to
 * Redis (the supervisor's read loop, its timer work, each job thread).
 *
 * Address forms: "host:port", "unix:/path/to/redis.sock". AUTH and SELECT are sent on
 * every (re)connect. A command that fails on the connection (reset, timeout) closes
 * it; the next call reconnects, so a Redis restart costs the callers an error each,
 * never a stuck thread. Scripts are called by EVALSHA with the SHA1s of
 * shared/sep_scripts.h and loaded again on NOSCRIPT (after a Redis restart or a
 * SCRIPT FLUSH).
 */
#ifndef WORKERD_REDIS_CLIENT_H
#define WORKERD_REDIS_CLIENT_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "shared/sep_scripts.h"

typedef struct {
    char address[512];
    char user[128];     /* "" = AUTH with the password only (the default user) */
    char password[256]; /* "" = no AUTH */
    int db;
    int timeout_ms; /* connect and per-reply limit */
    redisContext *c;
    char err[1024]; /* the last connection error */
} sep_redis_client;

/* The `redis` setting "ADDRESS [db=N] [user=NAME] [password=SECRET]" split into its
 * parts (db 0, no user and no password when absent; a user is an ACL user and needs a
 * password). 0, or -1 with a message. */
int sep_redis_parse_spec(const char *spec, char *address, size_t address_cap, char *user,
                         size_t user_cap, char *password, size_t password_cap, int *db, char *err,
                         size_t errlen);

void sep_redis_client_init(sep_redis_client *rc, const char *address, const char *user,
                           const char *password, int db, int timeout_ms);
void sep_redis_client_close(sep_redis_client *rc);

/* Connects when not connected. 0, or -1 with rc->err. */
int sep_redis_client_connect(sep_redis_client *rc);

/* One command (argv form). The reply (freeReplyObject it), or NULL with rc->err on a
 * connection failure (the connection is then closed). A Redis error reply is returned
 * as a reply of type REDIS_REPLY_ERROR. `timeout_ms` > 0 overrides the reply limit for
 * this command (a blocking XREADGROUP). */
redisReply *sep_redis_client_command(sep_redis_client *rc, int timeout_ms, int argc,
                                     const char **argv);

/* printf-style command (hiredis' format: %s, %b, %d...). */
redisReply *sep_redis_client_commandf(sep_redis_client *rc, const char *fmt, ...);

/* EVALSHA of script `id` with nkeys keys then nargs arguments; NOSCRIPT loads it and
 * retries once. Same reply rules as sep_redis_client_command. */
redisReply *sep_redis_client_script(sep_redis_client *rc, sep_script_id_t id, int nkeys,
                                    const char **keys, int nargs, const char **args);

/* 1 when a reply is an error starting with `code` (e.g. "STALE"). */
int sep_redis_reply_is_error(const redisReply *r, const char *code);

#endif
