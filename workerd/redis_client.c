/*
 * redis_client.c - blocking hiredis connection with reconnect, AUTH/SELECT and
 * EVALSHA-with-reload (see redis_client.h).
 */
#include "workerd/redis_client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

static struct timeval ms_tv(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

int sep_redis_parse_spec(const char *spec, char *address, size_t address_cap, char *user,
                         size_t user_cap, char *password, size_t password_cap, int *db, char *err,
                         size_t errlen)
{
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", spec);
    *db = 0;
    user[0] = 0;
    password[0] = 0;
    char *save = NULL;
    char *word = strtok_r(buf, " \t", &save);
    if (!word) {
        snprintf(err, errlen, "redis: no address");
        return -1;
    }
    snprintf(address, address_cap, "%s", word);
    while ((word = strtok_r(NULL, " \t", &save))) {
        if (strncmp(word, "db=", 3) == 0) {
            char *end;
            long v = strtol(word + 3, &end, 10);
            if (*end || end == word + 3 || v < 0 || v > 15) {
                snprintf(err, errlen, "redis: db must be 0..15 (%s)", word);
                return -1;
            }
            *db = (int)v;
        } else if (strncmp(word, "password=", 9) == 0) {
            snprintf(password, password_cap, "%s", word + 9);
        } else if (strncmp(word, "user=", 5) == 0 && word[5]) {
            snprintf(user, user_cap, "%s", word + 5);
        } else {
            snprintf(err, errlen, "redis: unknown option '%s' (db=N, user=NAME, password=SECRET)",
                     word);
            return -1;
        }
    }
    if (user[0] && !password[0]) {
        snprintf(err, errlen, "redis: user=%s needs a password=", user);
        return -1;
    }
    return 0;
}

void sep_redis_client_init(sep_redis_client *rc, const char *address, const char *user,
                           const char *password, int db, int timeout_ms)
{
    memset(rc, 0, sizeof(*rc));
    snprintf(rc->address, sizeof(rc->address), "%s", address);
    snprintf(rc->user, sizeof(rc->user), "%s", user ? user : "");
    snprintf(rc->password, sizeof(rc->password), "%s", password ? password : "");
    rc->db = db;
    rc->timeout_ms = timeout_ms > 0 ? timeout_ms : 2000;
}

void sep_redis_client_close(sep_redis_client *rc)
{
    if (rc->c)
        redisFree(rc->c);
    rc->c = NULL;
}

static void lost(sep_redis_client *rc, const char *what)
{
    snprintf(rc->err, sizeof(rc->err), "redis %s: %s", rc->address,
             rc->c && rc->c->errstr[0] ? rc->c->errstr : what);
    sep_redis_client_close(rc);
}

/* A setup command (AUTH, SELECT) that must answer OK. */
static int setup_command(sep_redis_client *rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc->c, fmt, ap);
    va_end(ap);
    if (!r) {
        lost(rc, "connection lost during setup");
        return -1;
    }
    int ok = r->type != REDIS_REPLY_ERROR;
    if (!ok) {
        snprintf(rc->err, sizeof(rc->err), "redis %s: %s", rc->address, r->str);
        sep_redis_client_close(rc);
    }
    freeReplyObject(r);
    return ok ? 0 : -1;
}

int sep_redis_client_connect(sep_redis_client *rc)
{
    if (rc->c)
        return 0;
    struct timeval tv = ms_tv(rc->timeout_ms);
    if (strncmp(rc->address, "unix:", 5) == 0) {
        rc->c = redisConnectUnixWithTimeout(rc->address + 5, tv);
    } else {
        char host[256];
        const char *colon = strrchr(rc->address, ':');
        int port = colon ? atoi(colon + 1) : 6379;
        size_t n = colon ? (size_t)(colon - rc->address) : strlen(rc->address);
        if (n >= sizeof(host))
            n = sizeof(host) - 1;
        memcpy(host, rc->address, n);
        host[n] = 0;
        rc->c = redisConnectWithTimeout(host, port, tv);
    }
    if (!rc->c) {
        snprintf(rc->err, sizeof(rc->err), "redis %s: out of memory", rc->address);
        return -1;
    }
    if (rc->c->err) {
        lost(rc, "cannot connect");
        return -1;
    }
    redisSetTimeout(rc->c, tv);
    if (rc->user[0] && setup_command(rc, "AUTH %s %s", rc->user, rc->password) != 0)
        return -1;
    if (!rc->user[0] && rc->password[0] && setup_command(rc, "AUTH %s", rc->password) != 0)
        return -1;
    if (rc->db && setup_command(rc, "SELECT %d", rc->db) != 0)
        return -1;
    return 0;
}

redisReply *sep_redis_client_command(sep_redis_client *rc, int timeout_ms, int argc,
                                     const char **argv)
{
    if (sep_redis_client_connect(rc) != 0)
        return NULL;
    if (timeout_ms > 0)
        redisSetTimeout(rc->c, ms_tv(timeout_ms));
    redisReply *r = redisCommandArgv(rc->c, argc, argv, NULL);
    if (!r) {
        lost(rc, "connection lost");
        return NULL;
    }
    if (timeout_ms > 0)
        redisSetTimeout(rc->c, ms_tv(rc->timeout_ms));
    return r;
}

redisReply *sep_redis_client_commandf(sep_redis_client *rc, const char *fmt, ...)
{
    if (sep_redis_client_connect(rc) != 0)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc->c, fmt, ap);
    va_end(ap);
    if (!r)
        lost(rc, "connection lost");
    return r;
}

int sep_redis_reply_is_error(const redisReply *r, const char *code)
{
    size_t n = strlen(code);
    return r && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, code, n) == 0 &&
           (r->str[n] == 0 || r->str[n] == ' ');
}

redisReply *sep_redis_client_script(sep_redis_client *rc, sep_script_id_t id, int nkeys,
                                    const char **keys, int nargs, const char **args)
{
    const sep_script_t *s = &sep_scripts[id];
    int argc = 3 + nkeys + nargs;
    const char **argv = calloc((size_t)argc, sizeof(*argv));
    if (!argv) {
        snprintf(rc->err, sizeof(rc->err), "out of memory");
        return NULL;
    }
    char numkeys[16];
    snprintf(numkeys, sizeof(numkeys), "%d", nkeys);
    argv[0] = "EVALSHA";
    argv[1] = s->sha1;
    argv[2] = numkeys;
    /* keys or args may be NULL when their count is 0 (memcpy from NULL is undefined) */
    if (nkeys > 0)
        memcpy(argv + 3, keys, (size_t)nkeys * sizeof(*argv));
    if (nargs > 0)
        memcpy(argv + 3 + nkeys, args, (size_t)nargs * sizeof(*argv));
    redisReply *r = sep_redis_client_command(rc, 0, argc, argv);
    if (sep_redis_reply_is_error(r, "NOSCRIPT")) {
        freeReplyObject(r);
        const char *load[] = {"SCRIPT", "LOAD", s->source};
        r = sep_redis_client_command(rc, 0, 3, load);
        if (r && r->type == REDIS_REPLY_ERROR) {
            snprintf(rc->err, sizeof(rc->err), "SCRIPT LOAD %s: %s", s->name, r->str);
        } else if (r) {
            freeReplyObject(r);
            r = sep_redis_client_command(rc, 0, argc, argv);
        }
    }
    free(argv);
    return r;
}
