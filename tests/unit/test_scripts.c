/*
 * Tests of the Lua scripts (shared/lua/NAME.lua, compiled in as sep_scripts[])
 * against a real redis-server, started by the group setup in a temporary directory,
 * listening only on a Unix socket there (--port 0), and stopped by the teardown (it
 * also dies with this process if the test crashes: PR_SET_PDEATHSIG).
 *
 * Every script runs through EVALSHA with the SHA1 the build computed and with the
 * keys of the C builders (sep_job_keys(), the sep_key_*() functions), so the test
 * also proves that the generated table matches what Redis caches and that C callers
 * build the KEYS the scripts check. Job lifecycles are driven the way the module and
 * workerd drive them (the contract in shared/README.md): submit, idempotency
 * (created / lookup / exists), backpressure, cancel in each state, XREADGROUP +
 * claim (attempt token), touch, progress, complete, fail-or-retry with promote, the
 * dead stream, heartbeats, and the events published on the job channel. The
 * regression cases of each review finding and the model-based test are in
 * tests/scripts/ (Python).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "shared/sep_id.h"
#include "shared/sep_job.h"
#include "shared/sep_keys.h"
#include "shared/sep_scripts.h"

#define PREFIX "{t}:"

typedef struct redis_server {
    pid_t pid;
    char dir[64];
    char sock[96];
    redisContext *c;
} redis_server_t;

static redis_server_t server;

static int start_redis(void **state)
{
    (void)state;
    snprintf(server.dir, sizeof(server.dir), "/tmp/sep-scripts-XXXXXX");
    if (mkdtemp(server.dir) == NULL)
        return -1;
    snprintf(server.sock, sizeof(server.sock), "%s/redis.sock", server.dir);
    server.pid = fork();
    if (server.pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", server.sock,
               "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", server.dir,
               (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 250; i++) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        server.c = redisConnectUnix(server.sock);
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
    fprintf(stderr, "redis-server did not start on %s\n", server.sock);
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

/* A job: its id, the job KEYS (sep_job_keys), its channel, and the attempt token of
 * its last claim. */
typedef struct job {
    char id[SEP_ID_LEN + 1];
    sep_job_keys_t keys;
    const char *keyv[SEP_JOB_KEYS + 1];
    char channel[SEP_KEY_MAX];
    char token[96];
    char entry[64];
} job_t;

static void new_job(job_t *j)
{
    memset(j, 0, sizeof(*j));
    assert_int_equal(sep_id_generate(j->id), 0);
    assert_int_equal(sep_job_keys(&j->keys, SEP_STR(PREFIX), SEP_STR(j->id)), 0);
    for (int i = 0; i < SEP_JOB_KEYS; i++)
        j->keyv[i] = j->keys.key[i];
    j->keyv[SEP_JOB_KEYS] = NULL;
    assert_true(sep_key_events(j->channel, sizeof(j->channel), SEP_STR(PREFIX), SEP_STR(j->id)) >
                0);
}

/* ARGV[4] of submit: the deadline in Redis ms ("0": none). */
static const char *submit_deadline = "0";

/* Submits a job; returns the reply (caller frees). earlier: the id a "lookup" named. */
static redisReply *submit(job_t *j, const char *priority, int max_queued, const char *idem_key,
                          const char *earlier, int max_attempts)
{
    char idem[300], earlier_key[SEP_KEY_MAX], maxq[16], attempts[16];
    snprintf(maxq, sizeof(maxq), "%d", max_queued);
    snprintf(attempts, sizeof(attempts), "%d", max_attempts);
    const char *keys[7] = {
        j->keys.key[0], PREFIX "stats", PREFIX "q:high", PREFIX "q:normal", NULL, NULL, NULL};
    if (idem_key) {
        snprintf(idem, sizeof(idem), PREFIX "idem:%s", idem_key);
        keys[4] = idem;
        if (earlier) {
            snprintf(earlier_key, sizeof(earlier_key), PREFIX "job:%s", earlier);
            keys[5] = earlier_key;
        }
    }
    const char *args[] = {
        j->id,          maxq,     "600",         submit_deadline, "model",        "htdemucs",
        "stems_option", "vocals", "format",      "wav",           "priority",     priority,
        "shifts",       "1",      "overlap",     "0.25",          "input",        "input.wav",
        "input_type",   "wav",    "input_bytes", "1000",          "max_attempts", attempts,
        "result_ttl",   "3600",   NULL};
    return run_script(SEP_SCRIPT_SUBMIT, keys, args);
}

static void submit_ok(job_t *j, const char *priority, int max_attempts)
{
    new_job(j);
    redisReply *r = submit(j, priority, 0, NULL, NULL, max_attempts);
    assert_kind(r, "created");
    freeReplyObject(r);
}

/* XREADGROUP one new entry of a stream as consumer "w1"; writes its entry id and job id. */
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

/* claim by w1 of the job's entry; keeps the token on "run". Returns the reply. */
static redisReply *claim_entry(job_t *j, const char *priority, const char *entry)
{
    const char *args[] = {"w1", priority, entry, "0123456789abcdef", "30000", "100", NULL};
    redisReply *r = run_script(SEP_SCRIPT_CLAIM, j->keyv, args);
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2 && strcmp(r->element[0]->str, "run") == 0)
        snprintf(j->token, sizeof(j->token), "%s", r->element[1]->str);
    return r;
}

/* Reads the job's entry (the next one of its stream) and claims it: must be "run". */
static void read_and_claim(job_t *j, const char *priority)
{
    char id[SEP_ID_LEN + 1];
    assert_true(read_entry(priority, j->entry, id));
    assert_string_equal(id, j->id);
    redisReply *r = claim_entry(j, priority, j->entry);
    assert_kind(r, "run");
    freeReplyObject(r);
}

static redisReply *complete(job_t *j)
{
    const char *args[] = {j->token,
                          "{\"vocals\":{\"file\":\"vocals.wav\",\"bytes\":10},"
                          "\"no_vocals\":{\"file\":\"no_vocals.wav\",\"bytes\":12}}",
                          "22",
                          "timing_separate_s",
                          "1.5",
                          "audio_seconds",
                          "3.25",
                          NULL};
    return run_script(SEP_SCRIPT_COMPLETE, j->keyv, args);
}

static redisReply *fail_job(job_t *j, const char *code, const char *retryable, const char *base_ms)
{
    const char *args[] = {j->token, code, "it broke", retryable, base_ms,
                          "60000",  "0",  "100",      NULL};
    return run_script(SEP_SCRIPT_FAIL, j->keyv, args);
}

static redisReply *progress(job_t *j, const char *value, const char *stage, const char *message)
{
    const char *args[] = {j->token, value, stage, message, NULL};
    return run_script(SEP_SCRIPT_PROGRESS, j->keyv, args);
}

static redisReply *cancel(job_t *j)
{
    const char *args[] = {NULL};
    return run_script(SEP_SCRIPT_CANCEL, j->keyv, args);
}

static redisReply *promote(job_t *j)
{
    const char *keys[] = {PREFIX "delayed", PREFIX "q:high", PREFIX "q:normal", j->keys.key[0],
                          NULL};
    const char *args[] = {NULL};
    return run_script(SEP_SCRIPT_PROMOTE, keys, args);
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
        assert_non_null(strstr(sep_scripts[i].source, "KEYS"));
        assert_non_null(strstr(sep_scripts[i].source, "return run(main)"));
    }
}

static void test_submit_creates_and_queues(void **state)
{
    (void)state;
    job_t j;
    new_job(&j);
    redisReply *r = submit(&j, "normal", 0, NULL, NULL, 3);
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
    assert_true(sep_str_eq(job.id, j.id));
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
    assert_int_equal(cmd_int("TTL %s", j.keys.key[0]), -1); /* no TTL while active */
    /* the group exists and delivers the entry */
    char entry[64], id[SEP_ID_LEN + 1];
    assert_true(read_entry("normal", entry, id));
    assert_string_equal(id, j.id);
    assert_string_equal(entry, hget(j.id, "stream_id"));
}

static void test_idempotency_key(void **state)
{
    (void)state;
    job_t first, second;
    new_job(&first);
    redisReply *r = submit(&first, "high", 0, "key-1", NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    new_job(&second);
    /* the key names a job this call did not declare: look it up, nothing written */
    r = submit(&second, "high", 0, "key-1", NULL, 3);
    assert_kind(r, "lookup");
    assert_string_equal(r->element[1]->str, first.id);
    freeReplyObject(r);
    r = submit(&second, "high", 0, "key-1", first.id, 3);
    assert_kind(r, "exists");
    int found = 0;
    for (size_t i = 1; i + 1 < r->elements; i += 2) {
        if (strcmp(r->element[i]->str, "id") == 0)
            found = strcmp(r->element[i + 1]->str, first.id) == 0;
    }
    assert_true(found);
    freeReplyObject(r);
    assert_int_equal(cmd_int("EXISTS %s", second.keys.key[0]), 0);
    assert_int_equal(cmd_int("XLEN " PREFIX "q:high"), 1);
    assert_int_equal(stat_field("submitted"), 1);
    assert_true(cmd_int("TTL " PREFIX "idem:key-1") > 500);
    /* a key whose job expired is reused */
    cmd_int("DEL %s", first.keys.key[0]);
    r = submit(&second, "high", 0, "key-1", first.id, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    r = cmd("GET " PREFIX "idem:key-1");
    assert_string_equal(r->str, second.id);
    freeReplyObject(r);
}

/* A submit run after its deadline writes nothing; the module's compensating cancel
 * (KEYS[9] = the POST's idempotency key) frees the key that names the job it cancels. */
static void test_deadline_and_compensating_cancel(void **state)
{
    (void)state;
    job_t late, job, retry;
    char deadline[32], idem[64] = PREFIX "idem:key-c";
    redisReply *r = cmd("TIME");
    long long now = atoll(r->element[0]->str) * 1000;
    freeReplyObject(r);

    snprintf(deadline, sizeof(deadline), "%lld", now - 1);
    submit_deadline = deadline;
    new_job(&late);
    r = submit(&late, "normal", 0, "key-c", NULL, 3);
    submit_deadline = "0";
    assert_error_code(r, "PAST_DEADLINE");
    freeReplyObject(r);
    assert_int_equal(cmd_int("EXISTS %s " PREFIX "idem:key-c " PREFIX "q:normal", late.keys.key[0]),
                     0);
    assert_int_equal(stat_field("submitted"), 0);

    snprintf(deadline, sizeof(deadline), "%lld", now + 60000);
    submit_deadline = deadline;
    new_job(&job);
    r = submit(&job, "normal", 0, "key-c", NULL, 3);
    submit_deadline = "0";
    assert_kind(r, "created");
    freeReplyObject(r);
    const char *keys[SEP_JOB_KEYS + 2];
    for (int i = 0; i < SEP_JOB_KEYS; i++)
        keys[i] = job.keyv[i];
    keys[SEP_JOB_KEYS] = idem;
    keys[SEP_JOB_KEYS + 1] = NULL;
    const char *args[] = {NULL};
    r = run_script(SEP_SCRIPT_CANCEL, keys, args);
    assert_kind(r, "canceled");
    freeReplyObject(r);
    assert_int_equal(cmd_int("EXISTS " PREFIX "idem:key-c"), 0);
    new_job(&retry);
    r = submit(&retry, "normal", 0, "key-c", NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
}

static void test_queue_full_backpressure(void **state)
{
    (void)state;
    job_t a, b, c;
    new_job(&a);
    new_job(&b);
    new_job(&c);
    redisReply *r = submit(&a, "normal", 2, NULL, NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    r = submit(&b, "high", 2, NULL, NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
    r = submit(&c, "normal", 2, NULL, NULL, 3);
    assert_error_code(r, "QUEUE_FULL 2 2");
    freeReplyObject(r);
    assert_int_equal(cmd_int("EXISTS %s", c.keys.key[0]), 0);
    /* a claimed job no longer counts as queued */
    read_and_claim(&a, "normal");
    assert_int_equal(stat_field("queued"), 1);
    assert_int_equal(stat_field("running"), 1);
    r = submit(&c, "normal", 2, NULL, NULL, 3);
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
    job_t queued, running, done;
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
    assert_true(cmd_int("TTL %s", queued.keys.key[0]) > 3000);
    assert_true(cmd_int("ZSCORE " PREFIX "expiry %s", queued.id) > 0);
    assert_int_equal(stat_field("canceled"), 1);
    /* the worker's claim now drops the entry */
    r = claim_entry(&queued, "normal", entry);
    assert_kind(r, "drop");
    assert_string_equal(r->element[1]->str, "finished");
    freeReplyObject(r);
    r = cancel(&queued);
    assert_error_code(r, "ALREADY_DELETED");
    freeReplyObject(r);

    submit_ok(&running, "high", 3);
    read_and_claim(&running, "high");
    r = cancel(&running);
    assert_kind(r, "cancel_requested");
    freeReplyObject(r);
    assert_string_equal(hget(running.id, "status"), "running");
    assert_string_equal(hget(running.id, "cancel_requested"), "1");
    r = cancel(&running); /* asking again changes nothing */
    assert_kind(r, "cancel_requested");
    freeReplyObject(r);
    r = progress(&running, "0.5", "separate", "");
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 1); /* the worker learns it should stop */
    freeReplyObject(r);
    r = fail_job(&running, "canceled", "0", "1000");
    assert_kind(r, "canceled");
    freeReplyObject(r);
    assert_string_equal(hget(running.id, "status"), "canceled");
    assert_int_equal(stat_field("running"), 0);

    submit_ok(&done, "normal", 3);
    read_and_claim(&done, "normal");
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

    job_t unknown;
    new_job(&unknown);
    r = cancel(&unknown);
    assert_error_code(r, "NOT_FOUND");
    freeReplyObject(r);
}

static void test_claim_touch_progress_complete_with_events(void **state)
{
    (void)state;
    job_t j;
    submit_ok(&j, "high", 3);

    redisContext *sub = redisConnectUnix(server.sock);
    assert_non_null(sub);
    redisReply *r = redisCommand(sub, "SUBSCRIBE %s", j.channel);
    freeReplyObject(r);

    read_and_claim(&j, "high");
    assert_string_equal(j.token, "1:0123456789abcdef");
    assert_string_equal(hget(j.id, "status"), "running");
    assert_string_equal(hget(j.id, "attempts"), "1");
    assert_string_equal(hget(j.id, "worker"), "w1");
    assert_string_equal(hget(j.id, "token"), j.token);
    assert_true(strlen(hget(j.id, "timing_queued_s")) > 0);
    assert_true(cmd_int("ZSCORE " PREFIX "running %s", j.id) > 0);

    {
        const char *args[] = {j.token, "30000", NULL};
        r = run_script(SEP_SCRIPT_TOUCH, j.keyv, args);
        assert_int_equal(r->type, REDIS_REPLY_INTEGER);
        assert_int_equal(r->integer, 0);
        freeReplyObject(r);
    }
    {
        const char *args[] = {j.token,         "1.7",  "separate", "segment 3 of 8",
                              "audio_seconds", "3.25", NULL};
        r = run_script(SEP_SCRIPT_PROGRESS, j.keyv, args);
        assert_int_equal(r->integer, 0);
        freeReplyObject(r);
    }
    assert_string_equal(hget(j.id, "progress"), "1"); /* clamped */
    assert_string_equal(hget(j.id, "stage"), "separate");
    assert_string_equal(hget(j.id, "message"), "segment 3 of 8");

    r = complete(&j);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    assert_string_equal(hget(j.id, "status"), "completed");
    assert_string_equal(hget(j.id, "token"), "");
    assert_int_equal(cmd_int("XLEN " PREFIX "q:high"), 0);
    r = cmd("XPENDING " PREFIX "q:high workers");
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    assert_int_equal(cmd_int("ZCARD " PREFIX "running"), 0);
    long long ttl = cmd_int("TTL %s", j.keys.key[0]);
    assert_true(ttl > 3500 && ttl <= 3600);
    assert_int_equal(stat_field("completed"), 1);
    assert_int_equal(stat_field("running"), 0);
    assert_int_equal(stat_field("bytes_out"), 22);
    r = complete(&j); /* a replay */
    assert_error_code(r, "NOT_RUNNING completed");
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
        assert_true(sep_str_eq(ev.job.id, j.id));
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
    r = cmd("HGETALL %s", j.keys.key[0]);
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

static void test_refusals_change_nothing(void **state)
{
    (void)state;
    job_t j;
    submit_ok(&j, "normal", 3);
    /* never claimed: no token is live */
    snprintf(j.token, sizeof(j.token), "1:0123456789abcdef");
    redisReply *r = complete(&j);
    assert_error_code(r, "NOT_RUNNING queued");
    freeReplyObject(r);

    read_and_claim(&j, "normal");
    const char *bad_stems[] = {j.token, "not json", "0", NULL};
    r = run_script(SEP_SCRIPT_COMPLETE, j.keyv, bad_stems);
    assert_error_code(r, "BAD_STEMS");
    freeReplyObject(r);
    const char *bad_bytes[] = {j.token, "{\"vocals\":{\"file\":\"v.wav\",\"bytes\":1}}", "1e17",
                               NULL};
    r = run_script(SEP_SCRIPT_COMPLETE, j.keyv, bad_bytes);
    assert_error_code(r, "ERR_ARG argv[3] bytes_out must be an integer >= 0");
    freeReplyObject(r);
    assert_string_equal(hget(j.id, "status"), "running");
    assert_int_equal(stat_field("running"), 1);

    /* a stale token: the job was reclaimed by a newer attempt */
    char stale[96];
    snprintf(stale, sizeof(stale), "%s", j.token);
    snprintf(j.token, sizeof(j.token), "1:ffffffffffffffff");
    r = progress(&j, "0.5", "", "");
    assert_error_code(r, "STALE attempt 1 is live");
    freeReplyObject(r);
    snprintf(j.token, sizeof(j.token), "%s", stale);

    /* wrong keys are refused before anything is read */
    const char *keys[] = {j.keys.key[0], PREFIX "stats", NULL};
    const char *args[] = {j.token, "30000", NULL};
    r = run_script(SEP_SCRIPT_TOUCH, keys, args);
    assert_error_code(r, "ERR_KEYS");
    freeReplyObject(r);
}

static void test_retry_promote_then_dead(void **state)
{
    (void)state;
    job_t j;
    submit_ok(&j, "normal", 3);

    for (int attempt = 1; attempt <= 3; attempt++) {
        read_and_claim(&j, "normal");
        char want[8];
        snprintf(want, sizeof(want), "%d", attempt);
        assert_string_equal(hget(j.id, "attempts"), want);

        redisReply *r = fail_job(&j, "gpu_oom", "1", attempt == 1 ? "60000" : "0");
        if (attempt < 3) {
            assert_kind(r, "retry");
            long long due = r->element[1]->integer;
            freeReplyObject(r);
            assert_string_equal(hget(j.id, "status"), "queued");
            assert_string_equal(hget(j.id, "stage"), "retry_wait");
            assert_string_equal(hget(j.id, "error_code"), "gpu_oom");
            assert_int_equal(cmd_int("ZSCORE " PREFIX "delayed %s", j.id), due);
            assert_int_equal(cmd_int("XLEN " PREFIX "q:normal"), 0);
            if (attempt == 1) {
                /* not due yet: promote moves nothing; then make it due */
                r = promote(&j);
                assert_int_equal(r->integer, 0);
                freeReplyObject(r);
                cmd_int("ZADD " PREFIX "delayed 0 %s", j.id);
            }
            r = promote(&j);
            assert_int_equal(r->integer, 1);
            freeReplyObject(r);
            assert_int_equal(cmd_int("ZCARD " PREFIX "delayed"), 0);
            assert_int_equal(cmd_int("XLEN " PREFIX "q:normal"), 1);
            assert_string_equal(hget(j.id, "stage"), "queued");
        } else {
            assert_kind(r, "failed");
            freeReplyObject(r);
        }
    }
    assert_string_equal(hget(j.id, "status"), "failed");
    assert_string_equal(hget(j.id, "error_retryable"), "1");
    assert_int_equal(cmd_int("XLEN " PREFIX "dead"), 1);
    assert_int_equal(stat_field("retried"), 2);
    assert_int_equal(stat_field("failed"), 1);
    assert_int_equal(stat_field("queued"), 0);
    assert_int_equal(stat_field("running"), 0);
    assert_true(cmd_int("TTL %s", j.keys.key[0]) > 3000);
    redisReply *r = fail_job(&j, "x", "1", "0");
    assert_error_code(r, "NOT_RUNNING failed");
    freeReplyObject(r);
}

static void test_permanent_failure_and_reclaim(void **state)
{
    (void)state;
    job_t j;
    submit_ok(&j, "normal", 3);
    read_and_claim(&j, "normal");
    char first[96];
    snprintf(first, sizeof(first), "%s", j.token);
    /* w1 restarted: its own pending entry, claimed again, is a reclaim */
    redisReply *r = claim_entry(&j, "normal", j.entry);
    assert_kind(r, "run");
    freeReplyObject(r);
    assert_string_equal(j.token, "2:0123456789abcdef");
    assert_string_equal(hget(j.id, "attempts"), "2");
    assert_int_equal(stat_field("running"), 1);
    r = fail_job(&j, "decode_failed", "0", "0");
    assert_kind(r, "failed");
    freeReplyObject(r);
    assert_string_equal(hget(j.id, "error_retryable"), "0");
    r = cmd("XRANGE " PREFIX "dead - +");
    assert_int_equal(r->elements, 1);
    redisReply *fields = r->element[0]->element[1];
    assert_string_equal(fields->element[1]->str, j.id);
    assert_string_equal(fields->element[3]->str, "decode_failed");
    freeReplyObject(r);

    /* a canceled job found in the retry zset is dropped by promote */
    job_t c;
    submit_ok(&c, "normal", 3);
    read_and_claim(&c, "normal");
    r = fail_job(&c, "busy", "1", "0");
    freeReplyObject(r);
    r = cancel(&c);
    assert_kind(r, "canceled");
    freeReplyObject(r);
    assert_int_equal(cmd_int("ZCARD " PREFIX "delayed"), 0);
    cmd_int("ZADD " PREFIX "delayed 0 %s", c.id);
    r = promote(&c);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    assert_int_equal(cmd_int("ZCARD " PREFIX "delayed"), 0);
}

static void test_heartbeat_setup_and_batch_get(void **state)
{
    (void)state;
    char worker_key[SEP_KEY_MAX], workers_key[SEP_KEY_MAX];
    assert_true(
        sep_key_worker(worker_key, sizeof(worker_key), SEP_STR(PREFIX), SEP_STR("gpu-1/0")) > 0);
    assert_true(sep_key_workers(workers_key, sizeof(workers_key), SEP_STR(PREFIX)) > 0);
    const char *keys[] = {worker_key, workers_key, NULL};
    const char *args[] = {"gpu-1/0", "30", "device", "cuda:0", "state", "idle", NULL};
    redisReply *r = run_script(SEP_SCRIPT_HEARTBEAT, keys, args);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long now = r->integer;
    freeReplyObject(r);
    long long expires = cmd_int("ZSCORE " PREFIX "workers gpu-1/0");
    assert_true(expires >= now + 30000 && expires <= now + 30001);
    assert_true(cmd_int("TTL " PREFIX "worker:gpu-1/0") > 25);
    r = cmd("HGET " PREFIX "worker:gpu-1/0 device");
    assert_string_equal(r->str, "cuda:0");
    freeReplyObject(r);

    const char *setup_keys[] = {PREFIX "q:high", PREFIX "q:normal", NULL};
    const char *no_args[] = {NULL};
    r = run_script(SEP_SCRIPT_SETUP, setup_keys, no_args);
    assert_int_equal(r->integer, 2);
    freeReplyObject(r);
    r = run_script(SEP_SCRIPT_SETUP, setup_keys, no_args);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);

    job_t a, missing;
    submit_ok(&a, "normal", 3);
    new_job(&missing);
    const char *get_keys[] = {a.keys.key[0], missing.keys.key[0], NULL};
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
    job_t j;
    new_job(&j);
    r = submit(&j, "normal", 0, NULL, NULL, 3);
    assert_error_code(r, "NOSCRIPT");
    freeReplyObject(r);
    r = cmd("SCRIPT LOAD %b", sep_scripts[SEP_SCRIPT_SUBMIT].source,
            sep_scripts[SEP_SCRIPT_SUBMIT].length);
    freeReplyObject(r);
    r = submit(&j, "normal", 0, NULL, NULL, 3);
    assert_kind(r, "created");
    freeReplyObject(r);
}

static int load_all(void **state)
{
    (void)state;
    redisReply *r = redisCommand(server.c, "FLUSHALL");
    freeReplyObject(r);
    for (int i = 0; i < SEP_SCRIPT_COUNT; i++) {
        r = redisCommand(server.c, "SCRIPT LOAD %b", sep_scripts[i].source, sep_scripts[i].length);
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
        T(test_deadline_and_compensating_cancel),
        T(test_queue_full_backpressure),
        T(test_cancel_in_every_state),
        T(test_claim_touch_progress_complete_with_events),
        T(test_refusals_change_nothing),
        T(test_retry_promote_then_dead),
        T(test_permanent_failure_and_reclaim),
        T(test_heartbeat_setup_and_batch_get),
        T(test_noscript_after_flush),
    };
#undef T
    return cmocka_run_group_tests_name("scripts", tests, start_redis, stop_redis);
}
