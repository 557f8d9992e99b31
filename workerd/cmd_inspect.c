/*
 * cmd_inspect.c - `workerd inspect` (what the queue holds, who works on what) and
 * `workerd purge [--queued|--dead|--all]` (empty parts of it), for operators.
 * `workerd inspect --json` prints the document of GET /v1/stats, from the same one
 * call of the `stats` script (shared/sep_stats.h).
 *
 * Both take the settings of `workerd run` (-c FILE, --redis, --prefix, ...) so they
 * talk to the same Redis under the same prefix. purge never edits records by hand:
 * queued jobs are canceled with the `cancel` script, exactly as DELETE /v1/jobs/{id}
 * does (gauges, events and the janitor's expiry index stay right; their spool
 * directories are removed here); the dead-letter stream is trimmed.
 */
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "shared/sep_keys.h"
#include "shared/sep_stats.h"
#include "workerd/commands.h"
#include "workerd/config.h"
#include "workerd/redis_client.h"

typedef struct {
    sep_redis_client rc;
    sep_workerd_config c;
} tool;

/* Loads the run settings from argv without the tool's own flags (listed in `own`,
 * NULL-terminated); those that were present are flagged in seen[]. 0, 1 (help), -1. */
static int load_settings(tool *t, int argc, char **argv, const char *const *own, int *seen)
{
    char **args = calloc((size_t)argc + 1, sizeof(*args));
    int n = 0;
    for (int i = 0; i < argc; i++) {
        int mine = 0;
        for (int k = 0; i > 0 && own && own[k]; k++)
            if (strcmp(argv[i], own[k]) == 0) {
                seen[k] = 1;
                mine = 1;
            }
        if (!mine)
            args[n++] = argv[i];
    }
    char err[1024];
    sep_workerd_config_defaults(&t->c);
    int rc = sep_workerd_config_load(&t->c, n, args, err, sizeof(err));
    free(args);
    if (rc < 0) {
        fprintf(stderr, "workerd %s: %s\n", argv[0], err);
        return -1;
    }
    if (rc == 1)
        return 1;
    char addr[512], user[128], pass[256];
    int db;
    if (sep_redis_parse_spec(t->c.redis, addr, sizeof(addr), user, sizeof(user), pass, sizeof(pass),
                             &db, err, sizeof(err)) != 0) {
        fprintf(stderr, "workerd %s: %s\n", argv[0], err);
        return -1;
    }
    sep_redis_client_init(&t->rc, addr, user, pass, db, 5000);
    if (sep_redis_client_connect(&t->rc) != 0) {
        fprintf(stderr, "workerd %s: %s\n", argv[0], t->rc.err);
        return -1;
    }
    return 0;
}

static long long int_reply(tool *t, const char *fmt, const char *key)
{
    redisReply *r = sep_redis_client_commandf(&t->rc, fmt, key);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r)
        freeReplyObject(r);
    return v;
}

static void keyname(char *buf, size_t cap, const tool *t, const char *tail)
{
    snprintf(buf, cap, "%s%s", t->c.prefix, tail);
}

static const char *elem(const redisReply *r, size_t i)
{
    return r && r->type == REDIS_REPLY_ARRAY && i < r->elements &&
                   r->element[i]->type == REDIS_REPLY_STRING
               ? r->element[i]->str
               : NULL;
}

/* elem(), or `dflt` when absent */
static const char *elem_or(const redisReply *r, size_t i, const char *dflt)
{
    const char *v = elem(r, i);
    return v ? v : dflt;
}

static void print_queue(tool *t, const char *queue)
{
    char k[256];
    snprintf(k, sizeof(k), "%sq:%s", t->c.prefix, queue);
    long long len = int_reply(t, "XLEN %s", k);
    long long pending = 0;
    redisReply *r = sep_redis_client_commandf(&t->rc, "XPENDING %s workers", k);
    if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER)
        pending = r->element[0]->integer;
    if (r)
        freeReplyObject(r);
    printf("  %-8s %lld waiting, %lld claimed (entries %lld)\n", queue,
           len >= 0 ? len - pending : 0, pending, len);
}

static int inspect(tool *t)
{
    char k[256], stats[256];
    keyname(stats, sizeof(stats), t, "stats");
    printf("redis %s, prefix %s\n\nqueues:\n", t->rc.address, t->c.prefix);
    print_queue(t, "high");
    print_queue(t, "normal");
    keyname(k, sizeof(k), t, "delayed");
    printf("  delayed  %lld waiting for a retry\n", int_reply(t, "ZCARD %s", k));
    keyname(k, sizeof(k), t, "dead");
    printf("  dead     %lld failed for good\n", int_reply(t, "XLEN %s", k));

    redisReply *r = sep_redis_client_commandf(&t->rc, "HGETALL %s", stats);
    printf("\ncounters:");
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
        printf(" %s=%s", elem_or(r, i, "?"), elem_or(r, i + 1, "?"));
    printf("\n");
    if (r)
        freeReplyObject(r);

    keyname(k, sizeof(k), t, "workers");
    r = sep_redis_client_commandf(&t->rc, "ZRANGE %s 0 -1", k);
    printf("\nworkers:\n");
    size_t nw = r && r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    for (size_t i = 0; i < nw; i++) {
        char wk[512];
        snprintf(wk, sizeof(wk), "%sworker:%s", t->c.prefix, elem_or(r, i, ""));
        redisReply *h = sep_redis_client_commandf(
            &t->rc, "HMGET %s host pid device state running jobs jobs_done jobs_failed last_seen",
            wk);
        if (h && h->type == REDIS_REPLY_ARRAY && h->elements == 9 && elem(h, 8)) {
            double age = (double)time(NULL) - atof(elem(h, 8)) / 1000.0;
            printf("  %-20s host %s pid %s device %s %s, running %s [%s], done %s, failed %s, "
                   "seen %.0fs ago\n",
                   elem_or(r, i, "?"), elem_or(h, 0, "?"), elem_or(h, 1, "?"), elem_or(h, 2, "?"),
                   elem_or(h, 3, "?"), elem_or(h, 4, "0"), elem_or(h, 5, ""), elem_or(h, 6, "0"),
                   elem_or(h, 7, "0"), age);
        } else {
            printf("  %-20s (no heartbeat)\n", elem_or(r, i, "?"));
        }
        if (h)
            freeReplyObject(h);
    }
    if (!nw)
        printf("  none\n");
    if (r)
        freeReplyObject(r);

    keyname(k, sizeof(k), t, "running");
    r = sep_redis_client_commandf(&t->rc, "ZRANGE %s 0 -1 WITHSCORES", k);
    printf("\nrunning jobs:\n");
    size_t nr = r && r->type == REDIS_REPLY_ARRAY ? r->elements / 2 : 0;
    for (size_t i = 0; i < nr; i++) {
        char jk[512];
        snprintf(jk, sizeof(jk), "%sjob:%s", t->c.prefix, elem_or(r, 2 * i, ""));
        redisReply *h =
            sep_redis_client_commandf(&t->rc, "HMGET %s worker attempts stage progress", jk);
        double left = atof(elem_or(r, 2 * i + 1, "0")) / 1000.0 - (double)time(NULL);
        printf("  %s worker %s attempt %s stage %s progress %s, claim %s %.0fs\n",
               elem_or(r, 2 * i, "?"), elem_or(h, 0, "?"), elem_or(h, 1, "?"), elem_or(h, 2, "?"),
               elem_or(h, 3, "?"), left >= 0 ? "expires in" : "EXPIRED", left >= 0 ? left : -left);
        if (h)
            freeReplyObject(h);
    }
    if (!nr)
        printf("  none\n");
    if (r)
        freeReplyObject(r);
    return 0;
}

/* The GET /v1/stats document on stdout; 0, or 1 when Redis refused or failed. */
static int inspect_json(tool *t)
{
    sep_stats_keys_t k;
    const char *keys[SEP_STATS_KEYS], *args[] = {SEP_STATS_WORKERS_MAX};
    if (sep_stats_keys(&k, (sep_str_t){t->c.prefix, strlen(t->c.prefix)}) != 0) {
        fprintf(stderr, "workerd inspect: the key prefix is too long\n");
        return 1;
    }
    for (int i = 0; i < SEP_STATS_KEYS; i++)
        keys[i] = k.key[i];
    redisReply *r =
        sep_redis_client_script(&t->rc, SEP_SCRIPT_STATS, SEP_STATS_KEYS, keys, 1, args);
    json_t *root = r && r->type == REDIS_REPLY_STRING ? sep_stats_parse(r->str, r->len) : NULL;
    json_t *doc = root ? sep_stats_json(root) : NULL;
    char *text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) : NULL;
    if (text)
        printf("%s\n", text);
    else
        fprintf(stderr, "workerd inspect: the stats script failed: %s\n",
                r && r->type == REDIS_REPLY_ERROR ? r->str : t->rc.err);
    free(text);
    json_decref(doc);
    json_decref(root);
    if (r)
        freeReplyObject(r);
    return text ? 0 : 1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Cancels one job with the `cancel` script; 1 when it was canceled. */
static int cancel_job(tool *t, const char *id)
{
    sep_job_keys_t jk;
    const char *keys[SEP_JOB_KEYS];
    if (sep_job_keys(&jk, (sep_str_t){t->c.prefix, strlen(t->c.prefix)},
                     (sep_str_t){id, strlen(id)}) != 0)
        return 0;
    for (int i = 0; i < SEP_JOB_KEYS; i++)
        keys[i] = jk.key[i];
    redisReply *r = sep_redis_client_script(&t->rc, SEP_SCRIPT_CANCEL, SEP_JOB_KEYS, keys, 0, NULL);
    int done =
        r && r->type == REDIS_REPLY_ARRAY && elem(r, 0) && strcmp(elem(r, 0), "canceled") == 0;
    if (r)
        freeReplyObject(r);
    if (done && strlen(id) == 36 && !strchr(id, '/')) {
        char dir[2048];
        snprintf(dir, sizeof(dir), "%s/%s", t->c.spool, id);
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    return done;
}

/* Cancels every queued job: stream entries not claimed by anyone, then retries. */
static long purge_queued(tool *t)
{
    long n = 0;
    static const char *const queues[] = {"high", "normal"};
    for (int q = 0; q < 2; q++) {
        char k[256];
        snprintf(k, sizeof(k), "%sq:%s", t->c.prefix, queues[q]);
        redisReply *r = sep_redis_client_commandf(&t->rc, "XRANGE %s - +", k);
        for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 2)
                continue;
            const redisReply *f = e->element[1];
            for (size_t j = 0; f->type == REDIS_REPLY_ARRAY && j + 1 < f->elements; j += 2)
                if (strcmp(elem_or(f, j, ""), "id") == 0) {
                    char jk[512];
                    snprintf(jk, sizeof(jk), "%sjob:%s", t->c.prefix, elem_or(f, j + 1, ""));
                    redisReply *s = sep_redis_client_commandf(&t->rc, "HGET %s status", jk);
                    int queued =
                        s && s->type == REDIS_REPLY_STRING && strcmp(s->str, "queued") == 0;
                    if (s)
                        freeReplyObject(s);
                    if (queued)
                        n += cancel_job(t, elem(f, j + 1));
                }
        }
        if (r)
            freeReplyObject(r);
    }
    char k[256];
    keyname(k, sizeof(k), t, "delayed");
    redisReply *r = sep_redis_client_commandf(&t->rc, "ZRANGE %s 0 -1", k);
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++)
        if (elem(r, i))
            n += cancel_job(t, elem(r, i));
    if (r)
        freeReplyObject(r);
    return n;
}

int workerd_cmd_inspect(int argc, char **argv)
{
    static tool t;
    static const char *const own[] = {"--json", NULL};
    int seen[1] = {0};
    int rc = load_settings(&t, argc, argv, own, seen);
    if (rc == 1) {
        printf("usage: workerd inspect [--json] [-c FILE] [--redis ADDR] [--prefix P]\n"
               "Prints the queues (waiting, claimed, delayed, dead), the counters, the live\n"
               "workers and the running jobs with their claims. --json prints the document\n"
               "of GET /v1/stats instead (the same numbers). Takes the settings of\n"
               "`workerd run` (see workerd run --help).\n");
        return 0;
    }
    if (rc != 0)
        return 2;
    rc = seen[0] ? inspect_json(&t) : inspect(&t);
    sep_redis_client_close(&t.rc);
    return rc;
}

int workerd_cmd_purge(int argc, char **argv)
{
    static tool t;
    static const char *const own[] = {"--queued", "--dead", "--all", NULL};
    int seen[3] = {0, 0, 0};
    int rc = load_settings(&t, argc, argv, own, seen);
    if (rc == 1 || (rc == 0 && !seen[0] && !seen[1] && !seen[2])) {
        printf("usage: workerd purge --queued|--dead|--all [-c FILE] [--redis ADDR] [--prefix P]\n"
               "  --queued  cancel every job waiting in a queue or for a retry (as DELETE does)\n"
               "  --dead    empty the dead-letter stream\n"
               "  --all     both\n"
               "Running jobs are left alone: DELETE /v1/jobs/{id} asks them to stop.\n");
        return rc == 1 ? 0 : 2;
    }
    if (rc != 0)
        return 2;
    if (seen[0] || seen[2])
        printf("canceled %ld queued job(s)\n", purge_queued(&t));
    if (seen[1] || seen[2]) {
        char k[256];
        keyname(k, sizeof(k), &t, "dead");
        printf("removed %lld dead-letter entr%s\n", int_reply(&t, "XTRIM %s MAXLEN 0", k), "ies");
    }
    sep_redis_client_close(&t.rc);
    return 0;
}
