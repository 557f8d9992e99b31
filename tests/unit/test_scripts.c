/*
 * Tests of the Lua scripts (shared/lua/NAME.lua, compiled in as sep_scripts[])
 * against a real redis-server, started by the group setup on a free loopback port
 * in a temporary directory and stopped by the teardown (it also dies with this
 * process if the test crashes: PR_SET_PDEATHSIG).
 *
 * Every script runs through EVALSHA with the SHA1 the build computed, so the test
 * also proves that the generated table matches what Redis caches. Job lifecycles
 * are driven the way the module and workerd drive them: submit, idempotency,
 * backpressure, cancel in each state, XREADGROUP + claim, progress, complete,
 * fail-or-retry with promote, the dead stream, heartbeats, and the events
 * published on the job channel.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "shared/sep_id.h"
#include "shared/sep_job.h"
#include "shared/sep_keys.h"
#include "shared/sep_scripts.h"

#define PREFIX "t:"

typedef struct redis_server {
    pid_t pid;
    int port;
    char dir[64];
    redisContext *c;
} redis_server_t;

static redis_server_t server;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(addr.sin_port);
}

static int start_redis(void **state)
{
    (void)state;
    snprintf(server.dir, sizeof(server.dir), "/tmp/sep-scripts-XXXXXX");
    if (mkdtemp(server.dir) == NULL)
        return -1;
    server.port = free_port();
    char port[16];
    snprintf(port, sizeof(port), "%d", server.port);
    server.pid = fork();
    if (server.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", server.dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100; i++) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        server.c = redisConnect("127.0.0.1", server.port);
        if (server.c && !server.c->err) {
            redisReply *r = redisCommand(server.c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            freeReplyObject(r);
            if (ok)
                return 0;
        }
        if (server.c)
            redisFree(server.c);
        server.c = NULL;
    }
    fprintf(stderr, "redis-server did not start on port %d\n", server.port);
    return -1;
}

static int stop_redis(void **state)
{
    (void)state;
    if (server.c)
        redisFree(server.c);
    if (server.pid > 0) {
        kill(server.pid, SIGTERM);
        waitpid(server.pid, NULL, 0);
    }
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", server.dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int flush_db(void **state)
{
    (void)state;
    redisReply *r = redisCommand(server.c, "FLUSHALL");
    freeReplyObject(r);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------- */

typedef struct argv_builder {
    const char *argv[64];
    size_t lens[64];
    char owned[64][64];
    int argc;
} argv_builder_t;

static void arg(argv_builder_t *b, const char *s)
{
    b->argv[b->argc] = s;
    b->lens[b->argc] = strlen(s);
    b->argc++;
}

static void argf(argv_builder_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->owned[b->argc], sizeof(b->owned[0]), fmt, ap);
    va_end(ap);
    arg(b, b->owned[b->argc]);
}

/* EVALSHA script with KEYS then ARGV (NULL-terminated lists). */
static redisReply *run_script(sep_script_id_t id, const char *const *keys, const char *const *args)
{
    argv_builder_t b = {.argc = 0};
    int nkeys = 0;
    arg(&b, "EVALSHA");
    arg(&b, sep_scripts[id].sha1);
    while (keys[nkeys])
        nkeys++;
    argf(&b, "%d", nkeys);
    for (int i = 0; keys[i]; i++)
        arg(&b, keys[i]);
    for (int i = 0; args[i]; i++)
        arg(&b, args[i]);
    redisReply *r = redisCommandArgv(server.c, b.argc, b.argv, b.lens);
    assert_non_null(r);
    return r;
}

static redisReply *cmd(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(server.c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    return r;
}

static long long cmd_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(server.c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    long long v = -1;
    if (r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r->type == REDIS_REPLY_STRING)
        v = strtoll(r->str, NULL, 10);
    else if (r->type == REDIS_REPLY_NIL)
        v = 0;
    freeReplyObject(r);
    return v;
}

/* HGET as a C string in a static buffer ("" when missing). */
static const char *hget(const char *id, const char *field)
{
    static char buf[8][1024];
    static int slot;
    char *out = buf[slot++ % 8];
    redisReply *r = cmd("HGET " PREFIX "job:%s %s", id, field);
    out[0] = '\0';
    if (r->type == REDIS_REPLY_STRING)
        snprintf(out, 1024, "%s", r->str);
    freeReplyObject(r);
    return out;
}

static void assert_error_code(redisReply *r, const char *code)
{
    if (r->type != REDIS_REPLY_ERROR || strncmp(r->str, code, strlen(code)) != 0)
        fail_msg("expected error %s, got type %d: %s", code, r->type,
                 r->type == REDIS_REPLY_ERROR || r->type == REDIS_REPLY_STRING ? r->str : "");
}

static void assert_kind(redisReply *r, const char *kind)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || strcmp(r->element[0]->str, kind) != 0)
        fail_msg("expected reply kind %s, got type %d %s", kind, r->type,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
}

typedef struct job_keys {
    char id[SEP_ID_LEN + 1];
    char job[SEP_KEY_MAX];
    char channel[SEP_KEY_MAX];
} job_keys_t;

static void new_job_keys(job_keys_t *k)
{
    assert_int_equal(sep_id_generate(k->id), 0);
    snprintf(k->job, sizeof(k->job), PREFIX "job:%s", k->id);
    snprintf(k->channel, sizeof(k->channel), PREFIX "ev:%s", k->id);
}

/* Submits a job; returns the reply (caller frees). */
static redisReply *submit(job_keys_t *k, const char *priority, int max_queued, const char *idem_key,
                          int max_attempts)
{
    char stream[64], idem[300], maxq[16], attempts[16];
    snprintf(stream, sizeof(stream), PREFIX "q:%s", priority);
    snprintf(maxq, sizeof(maxq), "%d", max_queued);
    snprintf(attempts, sizeof(attempts), "%d", max_attempts);
    const char *keys[5] = {k->job, stream, PREFIX "stats", NULL, NULL};
    if (idem_key) {
        snprintf(idem, sizeof(idem), PREFIX "idem:%s", idem_key);
        keys[3] = idem;
    }
    const char *args[] = {
        k->id,     maxq,           "600",    PREFIX,       "model",      "htdemucs", "stems_option",
        "vocals",  "format",       "wav",    "priority",   priority,     "shifts",   "1",
        "overlap", "0.25",         "input",  "input.wav",  "input_type", "wav",      "input_bytes",
        "1000",    "max_attempts", attempts, "result_ttl", "3600",       NULL};
    return run_script(SEP_SCRIPT_SUBMIT, keys, args);
}

static void submit_ok(job_keys_t *k, const char *priority, int max_attempts)
{
    new_job_keys(k);
    redisReply *r = submit(k, priority, 0, NULL, max_attempts);
    assert_kind(r, "created");
    freeReplyObject(r);
}

/* XREADGROUP one entry of a stream as consumer "w1"; writes its entry id and job id. */
static int read_entry(const char *priority, char *entry_id, char *job_id)
{
    redisReply *r = cmd("XREADGROUP GROUP workers w1 COUNT 1 STREAMS " PREFIX "q:%s >", priority);
    if (r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return 0;
    }
    redisReply *entry = r->element[0]->element[1]->element[0];
    snprintf(entry_id, 64, "%s", entry->element[0]->str);
    snprintf(job_id, SEP_ID_LEN + 1, "%s", entry->element[1]->element[1]->str);
    freeReplyObject(r);
    return 1;
}

static redisReply *claim(job_keys_t *k, const char *reclaim)
{
    const char *keys[] = {k->job, PREFIX "stats", NULL};
    const char *args[] = {"worker-1", k->channel, reclaim, NULL};
    return run_script(SEP_SCRIPT_CLAIM, keys, args);
}

static redisReply *complete(job_keys_t *k)
{
    const char *keys[] = {
        k->job, PREFIX "stats", PREFIX "q:high", PREFIX "q:normal", PREFIX "delayed", NULL};
    const char *args[] = {k->channel,
                          "workers",
                          "{\"vocals\":{\"file\":\"vocals.wav\",\"bytes\":10},"
                          "\"no_vocals\":{\"file\":\"no_vocals.wav\",\"bytes\":12}}",
                          "22",
                          "timing_separate_s",
                          "1.5",
                          "audio_seconds",
                          "3.25",
                          NULL};
    return run_script(SEP_SCRIPT_COMPLETE, keys, args);
}

static redisReply *fail_job(job_keys_t *k, const char *code, const char *retryable,
                            const char *base_ms)
{
    const char *keys[] = {
        k->job, PREFIX "stats", PREFIX "q:high", PREFIX "q:normal", PREFIX "delayed", PREFIX "dead",
        NULL};
    const char *args[] = {k->channel, "workers", code, "it broke", retryable,
                          base_ms,    "60000",   "0",  NULL};
    return run_script(SEP_SCRIPT_FAIL, keys, args);
}

static redisReply *cancel(job_keys_t *k)
{
    const char *keys[] = {k->job,           PREFIX "q:high", PREFIX "q:normal",
                          PREFIX "delayed", PREFIX "stats",  NULL};
    const char *args[] = {k->channel, "workers", NULL};
    return run_script(SEP_SCRIPT_CANCEL, keys, args);
}

static long long stat_field(const char *field)
{
    return cmd_int("HGET " PREFIX "stats %s", field);
}

/* ---- tests --------------------------------------------------------------------- */

static void test_generated_table_matches_redis(void **state)
{
    (void)state;
    static const char *const names[] = {SEP_SCRIPT_NAMES};
    assert_int_equal(sizeof(names) / sizeof(names[0]), SEP_SCRIPT_COUNT);
    for (int i = 0; i < SEP_SCRIPT_COUNT; i++) {
        assert_string_equal(sep_scripts[i].name, names[i]);
        assert_int_equal(strlen(sep_scripts[i].source), sep_scripts[i].length);
        redisReply *r = cmd("SCRIPT LOAD %b", sep_scripts[i].source, sep_scripts[i].length);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        if (strcmp(r->str, sep_scripts[i].sha1) != 0)
            fail_msg("script %s: redis sha %s, table sha %s", names[i], r->str,
                     sep_scripts[i].sha1);
        freeReplyObject(r);
        /* each file documents its interface */
        assert_non_null(strstr(sep_scripts[i].source, "KEYS[1"));
    }
}

static void test_submit_creates_and_queues(void **state)
{
    (void)state;
    job_keys_t k;
    new_job_keys(&k);
    redisReply *r = submit(&k, "normal", 0, NULL, 3);
    assert_kind(r, "created");
    /* the reply is the hash: it renders as the public record */
    const char *items[64];
    size_t lens[64];
    size_t n = r->elements - 1;
    for (size_t i = 0; i < n; i++) {
        items[i] = r->element[i + 1]->str;
        lens[i] = r->element[i + 1]->len;
    }
    sep_job_t job;
    sep_job_init(&job);
    assert_int_equal(sep_job_from_fields(&job, n, items, lens), 0);
    assert_true(sep_job_exists(&job));
    assert_int_equal(sep_job_status(&job), SEP_STATUS_QUEUED);
    assert_true(sep_str_eq(job.id, k.id));
    assert_true(sep_str_eq(job.stems_option, "vocals"));
    assert_true(job.created_at > 1700000000000LL);
    assert_true(sep_str_is_set(job.stream_id));
    sep_job_clear(&job);
    freeReplyObject(r);

    assert_int_equal(cmd_int("XLEN " PREFIX "q:normal"), 1);
    assert_int_equal(cmd_int("XLEN " PREFIX "q:high"), 0);
    assert_int_equal(stat_field("submitted"), 1);
    assert_int_equal(stat_field("queued"), 1);
    assert_int_equal(stat_field("bytes_in"), 1000);
    assert_int_equal(cmd_int("TTL %s", k.job), -1); /* no TTL while active */
    /* the group exists and delivers the entry */
    char entry[64], id[SEP_ID_LEN + 1];
    assert_true(read_entry("normal", entry, id));
    assert_string_equal(id, k.id);
    assert_string_equal(entry, hget(k.id, "stream_id"));
}

static void test_idempotency_key(void **state)
{
    (void)state;
    job_keys_t first, second;
    new_job_keys(&first);
    redisReply *r = submit(&first, "high", 0, "key-1", 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    new_job_keys(&second);
    r = submit(&second, "high", 0, "key-1", 3);
    assert_kind(r, "exists");
    int found = 0;
    for (size_t i = 1; i + 1 < r->elements; i += 2) {
        if (strcmp(r->element[i]->str, "id") == 0)
            found = strcmp(r->element[i + 1]->str, first.id) == 0;
    }
    assert_true(found);
    freeReplyObject(r);
    assert_int_equal(cmd_int("EXISTS %s", second.job), 0);
    assert_int_equal(cmd_int("XLEN " PREFIX "q:high"), 1);
    assert_int_equal(stat_field("submitted"), 1);
    assert_true(cmd_int("TTL " PREFIX "idem:key-1") > 500);
    /* a key whose job expired is reused */
    cmd_int("DEL %s", first.job);
    r = submit(&second, "high", 0, "key-1", 3);
    assert_kind(r, "created");
    freeReplyObject(r);
}

static void test_queue_full_backpressure(void **state)
{
    (void)state;
    job_keys_t a, b, c;
    new_job_keys(&a);
    new_job_keys(&b);
    new_job_keys(&c);
    redisReply *r = submit(&a, "normal", 2, NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    r = submit(&b, "high", 2, NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    r = submit(&c, "normal", 2, NULL, 3);
    assert_error_code(r, "QUEUE_FULL 2 2");
    freeReplyObject(r);
    assert_int_equal(cmd_int("EXISTS %s", c.job), 0);
    /* a claimed job no longer counts as queued */
    r = claim(&a, NULL);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    assert_int_equal(stat_field("queued"), 1);
    assert_int_equal(stat_field("running"), 1);
    r = submit(&c, "normal", 2, NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    /* a canceled one neither */
    r = cancel(&c);
    assert_kind(r, "canceled");
    freeReplyObject(r);
    assert_int_equal(stat_field("queued"), 1);
}

static void test_cancel_in_every_state(void **state)
{
    (void)state;
    job_keys_t queued, running, done;
    submit_ok(&queued, "normal", 3);
    /* a worker already read the entry but did not claim it yet */
    char entry[64], id[SEP_ID_LEN + 1];
    assert_true(read_entry("normal", entry, id));
    redisReply *r = cancel(&queued);
    assert_kind(r, "canceled");
    freeReplyObject(r);
    assert_string_equal(hget(queued.id, "status"), "canceled");
    assert_string_equal(hget(queued.id, "files_deleted"), "1");
    assert_int_equal(cmd_int("XLEN " PREFIX "q:normal"), 0);
    r = cmd("XPENDING " PREFIX "q:normal workers");
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    assert_true(cmd_int("TTL %s", queued.job) > 3000);
    assert_int_equal(stat_field("canceled"), 1);
    /* the worker's claim now refuses it */
    r = claim(&queued, NULL);
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    r = cancel(&queued);
    assert_error_code(r, "ALREADY_DELETED");
    freeReplyObject(r);

    submit_ok(&running, "high", 3);
    r = claim(&running, NULL);
    freeReplyObject(r);
    r = cancel(&running);
    assert_kind(r, "cancel_requested");
    freeReplyObject(r);
    assert_string_equal(hget(running.id, "status"), "running");
    assert_string_equal(hget(running.id, "cancel_requested"), "1");
    r = cancel(&running); /* asking again changes nothing */
    assert_kind(r, "cancel_requested");
    freeReplyObject(r);
    {
        const char *keys[] = {running.job, NULL};
        const char *args[] = {running.channel, "0.5", "separate", "", NULL};
        r = run_script(SEP_SCRIPT_PROGRESS, keys, args);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        assert_int_equal(r->integer, 1); /* the worker learns it should stop */
        freeReplyObject(r);
    }
    r = fail_job(&running, "canceled", "0", "1000");
    assert_kind(r, "canceled");
    freeReplyObject(r);
    assert_string_equal(hget(running.id, "status"), "canceled");
    assert_int_equal(stat_field("running"), 0);

    submit_ok(&done, "normal", 3);
    r = complete(&done);
    freeReplyObject(r);
    r = cancel(&done);
    assert_kind(r, "purge");
    freeReplyObject(r);
    assert_string_equal(hget(done.id, "status"), "completed");
    assert_string_equal(hget(done.id, "files_deleted"), "1");
    r = cancel(&done);
    assert_error_code(r, "ALREADY_DELETED");
    freeReplyObject(r);

    job_keys_t unknown;
    new_job_keys(&unknown);
    r = cancel(&unknown);
    assert_error_code(r, "NOT_FOUND");
    freeReplyObject(r);
}

static void test_claim_progress_complete_with_events(void **state)
{
    (void)state;
    job_keys_t k;
    submit_ok(&k, "high", 3);

    redisContext *sub = redisConnect("127.0.0.1", server.port);
    assert_non_null(sub);
    redisReply *r = redisCommand(sub, "SUBSCRIBE %s", k.channel);
    freeReplyObject(r);

    char entry[64], id[SEP_ID_LEN + 1];
    assert_true(read_entry("high", entry, id));
    assert_string_equal(id, k.id);
    r = claim(&k, NULL);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    assert_string_equal(hget(k.id, "status"), "running");
    assert_string_equal(hget(k.id, "attempts"), "1");
    assert_string_equal(hget(k.id, "worker"), "worker-1");
    assert_true(strlen(hget(k.id, "timing_queued_s")) > 0);
    r = claim(&k, NULL); /* running elsewhere: refused */
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);

    {
        const char *keys[] = {k.job, NULL};
        const char *args[] = {k.channel,       "1.7",  "separate", "segment 3 of 8",
                              "audio_seconds", "3.25", NULL};
        r = run_script(SEP_SCRIPT_PROGRESS, keys, args);
        assert_int_equal(r->integer, 0);
        freeReplyObject(r);
    }
    assert_string_equal(hget(k.id, "progress"), "1"); /* clamped */
    assert_string_equal(hget(k.id, "stage"), "separate");
    assert_string_equal(hget(k.id, "message"), "segment 3 of 8");

    r = complete(&k);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    assert_string_equal(hget(k.id, "status"), "completed");
    assert_int_equal(cmd_int("XLEN " PREFIX "q:high"), 0);
    r = cmd("XPENDING " PREFIX "q:high workers");
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    long long ttl = cmd_int("TTL %s", k.job);
    assert_true(ttl > 3500 && ttl <= 3600);
    assert_int_equal(stat_field("completed"), 1);
    assert_int_equal(stat_field("running"), 0);
    assert_int_equal(stat_field("bytes_out"), 22);
    r = complete(&k);
    assert_error_code(r, "NOT_ACTIVE");
    freeReplyObject(r);

    /* events: claim (progress), progress, completed; each renders as a record */
    const char *expected[] = {"progress", "progress", "completed"};
    for (int i = 0; i < 3; i++) {
        redisReply *msg = NULL;
        assert_int_equal(redisGetReply(sub, (void **)&msg), REDIS_OK);
        assert_int_equal(msg->type, REDIS_REPLY_ARRAY);
        assert_string_equal(msg->element[0]->str, "message");
        sep_event_t ev;
        assert_int_equal(sep_event_parse(&ev, msg->element[2]->str, msg->element[2]->len), 0);
        if (!sep_str_eq(ev.event, expected[i]))
            fail_msg("event %d: %.*s, wanted %s", i, (int)ev.event.len, ev.event.ptr, expected[i]);
        assert_true(sep_str_eq(ev.job.id, k.id));
        if (i == 2) {
            assert_int_equal(sep_job_status(&ev.job), SEP_STATUS_COMPLETED);
            assert_int_equal(ev.job.n_stems, 2);
            assert_true(ev.job.audio_seconds == 3.25);
        }
        sep_event_clear(&ev);
        freeReplyObject(msg);
    }
    redisFree(sub);

    /* the record renders with its stems */
    r = cmd("HGETALL %s", k.job);
    const char *items[80];
    size_t lens[80];
    for (size_t i = 0; i < r->elements; i++) {
        items[i] = r->element[i]->str;
        lens[i] = r->element[i]->len;
    }
    sep_job_t job;
    sep_job_init(&job);
    sep_job_from_fields(&job, r->elements, items, lens);
    assert_non_null(sep_job_find_stem(&job, SEP_STR("no_vocals")));
    assert_true(job.timing_separate_s == 1.5);
    sep_job_clear(&job);
    freeReplyObject(r);
}

static void test_complete_stands_in_for_an_unclaimed_job(void **state)
{
    (void)state;
    job_keys_t k;
    submit_ok(&k, "normal", 3);
    redisReply *r = complete(&k);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    assert_string_equal(hget(k.id, "status"), "completed");
    assert_int_equal(stat_field("queued"), 0);
    assert_int_equal(cmd_int("XLEN " PREFIX "q:normal"), 0);
    assert_true(strlen(hget(k.id, "timing_queued_s")) > 0);

    job_keys_t bad;
    submit_ok(&bad, "normal", 3);
    const char *keys[] = {bad.job,           PREFIX "stats",   PREFIX "q:high",
                          PREFIX "q:normal", PREFIX "delayed", NULL};
    const char *args[] = {bad.channel, "workers", "not json", "0", NULL};
    r = run_script(SEP_SCRIPT_COMPLETE, keys, args);
    assert_error_code(r, "BAD_STEMS");
    freeReplyObject(r);
    assert_string_equal(hget(bad.id, "status"), "queued");
}

static void test_retry_promote_then_dead(void **state)
{
    (void)state;
    job_keys_t k;
    submit_ok(&k, "normal", 3);
    char entry[64], id[SEP_ID_LEN + 1];
    const char *promote_keys[] = {PREFIX "delayed", PREFIX "q:high", PREFIX "q:normal", NULL};
    const char *promote_args[] = {PREFIX, "10", NULL};

    for (int attempt = 1; attempt <= 3; attempt++) {
        assert_true(read_entry("normal", entry, id));
        assert_string_equal(id, k.id);
        redisReply *r = claim(&k, NULL);
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        freeReplyObject(r);
        char want[8];
        snprintf(want, sizeof(want), "%d", attempt);
        assert_string_equal(hget(k.id, "attempts"), want);

        r = fail_job(&k, "gpu_oom", "1", attempt == 1 ? "60000" : "0");
        if (attempt < 3) {
            assert_kind(r, "retry");
            long long due = r->element[1]->integer;
            freeReplyObject(r);
            assert_string_equal(hget(k.id, "status"), "queued");
            assert_string_equal(hget(k.id, "stage"), "retry_wait");
            assert_string_equal(hget(k.id, "error_code"), "gpu_oom");
            assert_int_equal(cmd_int("ZSCORE " PREFIX "delayed %s", k.id), due);
            assert_int_equal(cmd_int("XLEN " PREFIX "q:normal"), 0);
            if (attempt == 1) {
                /* not due yet: promote moves nothing; then make it due */
                r = run_script(SEP_SCRIPT_PROMOTE, promote_keys, promote_args);
                assert_int_equal(r->integer, 0);
                freeReplyObject(r);
                cmd_int("ZADD " PREFIX "delayed 0 %s", k.id);
            }
            r = run_script(SEP_SCRIPT_PROMOTE, promote_keys, promote_args);
            assert_int_equal(r->integer, 1);
            freeReplyObject(r);
            assert_int_equal(cmd_int("ZCARD " PREFIX "delayed"), 0);
            assert_int_equal(cmd_int("XLEN " PREFIX "q:normal"), 1);
            assert_string_equal(hget(k.id, "stage"), "queued");
        } else {
            assert_kind(r, "failed");
            freeReplyObject(r);
        }
    }
    assert_string_equal(hget(k.id, "status"), "failed");
    assert_string_equal(hget(k.id, "error_retryable"), "1");
    assert_int_equal(cmd_int("XLEN " PREFIX "dead"), 1);
    assert_int_equal(stat_field("retried"), 2);
    assert_int_equal(stat_field("failed"), 1);
    assert_int_equal(stat_field("queued"), 0);
    assert_int_equal(stat_field("running"), 0);
    assert_true(cmd_int("TTL %s", k.job) > 3000);
    redisReply *r = fail_job(&k, "x", "1", "0");
    assert_error_code(r, "NOT_ACTIVE");
    freeReplyObject(r);
}

static void test_permanent_failure_and_reclaim(void **state)
{
    (void)state;
    job_keys_t k;
    submit_ok(&k, "normal", 3);
    redisReply *r = claim(&k, NULL);
    freeReplyObject(r);
    /* the worker died: another takes the entry over and reclaims */
    r = claim(&k, "reclaim");
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    freeReplyObject(r);
    assert_string_equal(hget(k.id, "attempts"), "2");
    assert_int_equal(stat_field("running"), 1);
    r = fail_job(&k, "decode_failed", "0", "0");
    assert_kind(r, "failed");
    freeReplyObject(r);
    assert_string_equal(hget(k.id, "error_retryable"), "0");
    r = cmd("XRANGE " PREFIX "dead - +");
    assert_int_equal(r->elements, 1);
    redisReply *fields = r->element[0]->element[1];
    assert_string_equal(fields->element[1]->str, k.id);
    assert_string_equal(fields->element[3]->str, "decode_failed");
    freeReplyObject(r);

    /* a canceled job found in the retry zset is dropped by promote */
    job_keys_t c;
    submit_ok(&c, "normal", 3);
    r = claim(&c, NULL);
    freeReplyObject(r);
    r = fail_job(&c, "busy", "1", "0");
    freeReplyObject(r);
    r = cancel(&c);
    assert_kind(r, "canceled");
    freeReplyObject(r);
    assert_int_equal(cmd_int("ZCARD " PREFIX "delayed"), 0);
    const char *promote_keys[] = {PREFIX "delayed", PREFIX "q:high", PREFIX "q:normal", NULL};
    const char *promote_args[] = {PREFIX, "10", NULL};
    cmd_int("ZADD " PREFIX "delayed 0 %s", c.id);
    r = run_script(SEP_SCRIPT_PROMOTE, promote_keys, promote_args);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
}

static void test_heartbeat_and_batch_get(void **state)
{
    (void)state;
    const char *keys[] = {PREFIX "worker:gpu-1/0", PREFIX "workers", NULL};
    const char *args[] = {"gpu-1/0", "30", "device", "cuda:0", "state", "idle", NULL};
    redisReply *r = run_script(SEP_SCRIPT_HEARTBEAT, keys, args);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long now = r->integer;
    freeReplyObject(r);
    assert_int_equal(cmd_int("ZSCORE " PREFIX "workers gpu-1/0"), now);
    assert_true(cmd_int("TTL " PREFIX "worker:gpu-1/0") > 25);
    r = cmd("HGET " PREFIX "worker:gpu-1/0 device");
    assert_string_equal(r->str, "cuda:0");
    freeReplyObject(r);

    job_keys_t a, missing;
    submit_ok(&a, "normal", 3);
    new_job_keys(&missing);
    const char *get_keys[] = {a.job, missing.job, NULL};
    const char *no_args[] = {NULL};
    r = run_script(SEP_SCRIPT_GET, get_keys, no_args);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    assert_true(r->element[0]->elements > 10);
    assert_int_equal(r->element[1]->elements, 0);
    freeReplyObject(r);
}

static void test_noscript_after_flush(void **state)
{
    (void)state;
    redisReply *r = cmd("SCRIPT FLUSH");
    freeReplyObject(r);
    job_keys_t k;
    new_job_keys(&k);
    r = submit(&k, "normal", 0, NULL, 3);
    assert_error_code(r, "NOSCRIPT");
    freeReplyObject(r);
    r = cmd("SCRIPT LOAD %b", sep_scripts[SEP_SCRIPT_SUBMIT].source,
            sep_scripts[SEP_SCRIPT_SUBMIT].length);
    freeReplyObject(r);
    r = submit(&k, "normal", 0, NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
}

static int load_all(void **state)
{
    flush_db(state);
    for (int i = 0; i < SEP_SCRIPT_COUNT; i++) {
        redisReply *r =
            redisCommand(server.c, "SCRIPT LOAD %b", sep_scripts[i].source, sep_scripts[i].length);
        freeReplyObject(r);
    }
    return 0;
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup(fn, load_all)
    const struct CMUnitTest tests[] = {
        T(test_generated_table_matches_redis),
        T(test_submit_creates_and_queues),
        T(test_idempotency_key),
        T(test_queue_full_backpressure),
        T(test_cancel_in_every_state),
        T(test_claim_progress_complete_with_events),
        T(test_complete_stands_in_for_an_unclaimed_job),
        T(test_retry_promote_then_dead),
        T(test_permanent_failure_and_reclaim),
        T(test_heartbeat_and_batch_get),
        T(test_noscript_after_flush),
    };
#undef T
    return cmocka_run_group_tests_name("scripts", tests, start_redis, stop_redis);
}
