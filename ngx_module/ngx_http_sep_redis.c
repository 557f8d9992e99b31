/*
 * hiredis inside nginx's event loop (contract in ngx_http_sep_redis.h).
 *
 * The adapter follows the shape of hiredis' own adapters (ae.h, libevent.h): hiredis asks for
 * read/write interest through addRead/delRead/addWrite/delWrite and announces the
 * end of the socket through cleanup; here those calls drive an ngx_connection_t
 * made with ngx_get_connection() over hiredis' file descriptor. Events are
 * level-triggered (hiredis reads one buffer per call and expects to be called
 * again while data is pending, like with ae).
 *
 * Connection life: DISCONNECTED -> (connect) CONNECTING -> CONNECTED. AUTH, SELECT,
 * SCRIPT LOAD of the module's scripts and a probe (EXISTS of the stats key) are
 * queued right after connect, so they precede every request's command on the wire;
 * the connection is "ready" once all of them succeeded. The connect and then each
 * setup round must be answered within sep_redis_timeout, else the connection is
 * dropped (a peer that accepts and never answers is given up on). A TCP connection
 * has TCP keepalive on (a peer gone without a close is noticed while idle). A failed
 * or lost connection is retried after a backoff (doubling from sep_redis_backoff's
 * MIN to MAX, reset once Redis answers), also in a worker that is shutting down
 * gracefully and still serves requests (every timer of this file is cancelable:
 * none keeps such a worker from exiting). A request that finds the connection down
 * does not wait for that timer: when the last attempt is older than MIN it starts
 * one at once (so a down Redis sees at most one attempt per MIN per worker from
 * traffic). While an attempt (connect + first setup) is in flight, commands are held
 * on the module's own queue (not sent): when the setup is answered they go out in
 * order; when the attempt fails each request gets 503 redis_unavailable; a request
 * that stops waiting first (sep_redis_timeout, client gone) leaves the queue and
 * nothing of it is ever sent. Within MIN of a failed attempt a request waits (held
 * the same way) for the next attempt, which is then due at the failed one + MIN.
 *
 * Redis that answers but cannot serve yet (-LOADING after a restart, -BUSY while a
 * script runs too long, -MASTERDOWN on a replica) keeps the connection: the setup is
 * repeated every MIN until it succeeds, the backoff is not doubled, and requests get
 * 503 redis_loading (their commands still go to Redis, so the first one after the
 * load is served; a NOSCRIPT then loads the script).
 *
 * A connection that stops answering while open (a request's reply is sep_redis_timeout
 * late) is checked with a spare connection, set up beside it while new commands are
 * held: if the spare's setup is answered and the current connection is still silent,
 * the spare replaces it (a NAT or load balancer forgot the flow; the old connection's
 * commands in flight get their 503 as for a lost connection); if Redis answers on the
 * current connection first, or the spare is not answered either (Redis is slow for
 * everyone: a long script), the spare is closed and the connection kept, so late
 * replies still arrive. Spares are tried at most once per sep_redis_timeout plus a
 * backoff doubling from MIN to MAX while they fail (section "a spare" below).
 *
 * Outages are logged twice: when serving stops (lost connection, failed first
 * connect, not-ready answer, a reply sep_redis_timeout late) and when it is back,
 * with the outage's length; the attempts in between and each late request log at
 * debug level only.
 *
 * Commands: each request's command gets a record (ngx_http_sep_cmd_t, recycled
 * through a free list) that hiredis keeps as privdata until the reply. The record,
 * not the request, is what outlives a timeout: when the request stops waiting, the
 * record forgets it, and the late reply is dropped, except for two commands whose
 * effect the client was told did not happen, or would happen:
 *   - a submit (its request was answered 503): when the late reply says the job was
 *     created, it is canceled at once with the request's Idempotency-Key, which the
 *     cancel deletes if it still names that job (the client's retry then creates a
 *     working job). submit.lua itself refuses to run after the request's deadline
 *     (PAST_DEADLINE), so this is only for a reply already on its way. A submit
 *     whose reply will never come (its connection lost or replaced by a spare) gets
 *     the same cancel once a connection is ready (the unsure queue);
 *   - a DELETE, and that compensating cancel: when the late reply says the job was
 *     canceled or purged, {spool}/{id}/ is removed (Redis now says files_deleted).
 * The record keeps what that takes (the id, the spool, the key). A worker that is
 * exiting waits for such replies (a non-cancelable timer, at most
 * SEP_LATE_WAIT_FACTOR * sep_redis_timeout); what is still due when it exits is
 * settled at exit: a submit gets its cancel pipelined behind it on the connection
 * (Redis runs the two in order, even after the close); a DELETE is logged with the
 * directory it may leave.
 */
#include "ngx_module/ngx_http_sep_redis.h"

#include <poll.h>

#include <hiredis/async.h>

#include "shared/sep_scripts.h"

enum { SEP_REDIS_DISCONNECTED = 0, SEP_REDIS_CONNECTING, SEP_REDIS_CONNECTED };

/* What a reply does that arrives after its request stopped waiting. */
enum { SEP_LATE_DROP = 0, SEP_LATE_CANCEL_IF_CREATED, SEP_LATE_REMOVE_IF_DELETED };

/* An exiting worker waits this many sep_redis_timeout for late replies to act on. */
#define SEP_LATE_WAIT_FACTOR 10

struct ngx_http_sep_cmd_s {
    ngx_queue_t queue;       /* in flight, or on the free list */
    ngx_http_sep_ctx_t *ctx; /* NULL once the request no longer waits */
    ngx_http_sep_reply_pt handler;
    ngx_int_t script; /* SEP_SCRIPT_* or -1 */
    char *formatted;  /* the command, kept for a NOSCRIPT retry */
    size_t formatted_len;
    unsigned retried : 1;
    unsigned late : 2;   /* SEP_LATE_*: set when the request stops waiting */
    unsigned held : 1;   /* on the held queue: not sent yet */
    unsigned unsure : 1; /* a submit whose reply was lost (on the unsure queue) */
    u_char job_id[SEP_ID_LEN];
    ngx_str_t *spool;    /* the job's spool (the location's sep_spool) */
    size_t idem_key_len; /* submit: {p}idem:{key} of the request, 0 without one */
    char idem_key[SEP_KEY_MAX];
};

typedef struct {
    ngx_http_sep_main_conf_t *mcf;
    redisAsyncContext *ac;
    ngx_connection_t *conn;
    ngx_uint_t state;
    ngx_event_t reconnect;
    ngx_event_t connect_timeout; /* the connect, then each setup round */
    ngx_event_t setup_retry;     /* Redis answered LOADING/BUSY/MASTERDOWN: setup again */
    redisAsyncContext *spare_ac; /* a replacement being set up while this one is silent */
    ngx_connection_t *spare_conn;
    ngx_event_t spare_timeout;
    ngx_uint_t spare_round;   /* tags the replies of the spare's setup */
    ngx_uint_t spare_pending; /* replies of the spare's setup still due */
    ngx_msec_t spare_backoff; /* wait after a failed spare, doubled up to MAX */
    ngx_msec_t spare_next;    /* no spare before this */
    ngx_msec_t backoff;
    ngx_msec_t last_attempt;  /* when the last connect started */
    ngx_msec_t down_since;    /* when serving stopped (while down) */
    ngx_uint_t attempts;      /* connects and setups since then */
    ngx_uint_t setup_round;   /* tags the replies of the current setup */
    ngx_uint_t setup_pending; /* replies of the current setup still due */
    ngx_queue_t inflight;
    ngx_queue_t held;   /* commands waiting for the connect attempt in flight */
    ngx_queue_t unsure; /* submits whose reply was lost: canceled once connected */
    ngx_event_t unsure_retry;
    ngx_queue_t free;
    ngx_uint_t late;    /* commands in flight with a late action (SEP_LATE_*) */
    ngx_event_t linger; /* not cancelable: keeps an exiting worker for those replies */
    ngx_log_t *log;
    unsigned exiting : 1;
    unsigned writing : 1;      /* inside redisAsyncHandleWrite */
    unsigned ready : 1;        /* the setup of this connection succeeded */
    unsigned setup_failed : 1; /* the current setup got a not-ready answer */
    unsigned down : 1;         /* an outage was logged, its end not yet */
    unsigned was_ready : 1;    /* some connection of this worker was ready */
    unsigned attempt : 1;      /* a connect and its first setup (or a spare) are in flight */
    unsigned stalled : 1;      /* a sent command's reply is overdue, nothing heard since */
    u_char not_ready[80];      /* the first not-ready answer of the setup */
} ngx_http_sep_redis_t;

/* One connection per worker process. */
static ngx_http_sep_redis_t ngx_http_sep_redis;

/* The scripts the module itself runs (loaded on every connect). */
static const sep_script_id_t ngx_http_sep_module_scripts[] = {SEP_SCRIPT_SUBMIT, SEP_SCRIPT_CANCEL};

static void ngx_http_sep_redis_connect(void);
static void ngx_http_sep_redis_schedule_reconnect(void);
static void ngx_http_sep_redis_drop(const char *why);
static void ngx_http_sep_redis_spare_close(void);
static void ngx_http_sep_redis_heard(void);
static void ngx_http_sep_redis_release_held(ngx_uint_t send);
static void ngx_http_sep_cmd_release(ngx_http_sep_cmd_t *cmd);
static void ngx_http_sep_redis_late_cancel(ngx_http_sep_cmd_t *from);
static void ngx_http_sep_cmd_orphan(ngx_http_sep_cmd_t *cmd, ngx_http_sep_ctx_t *ctx);
static void ngx_http_sep_redis_reply(redisAsyncContext *ac, void *reply, void *privdata);
static void ngx_http_sep_redis_unsure_handler(ngx_event_t *ev);
static void ngx_http_sep_redis_settle_unsure(void);

/* ---- reply objects from an arena ----------------------------------------------
 *
 * hiredis builds a reply from one allocation per element and per string (an
 * HGETALL of a job is about 80). Replies are parsed one at a time: a reply is
 * complete, handed to its callback and freed before the next one is started, so all
 * the pieces of the current reply can come from one bump arena that is emptied when
 * hiredis frees the reply. The first chunk is kept for the next reply; bigger
 * replies take extra chunks that are freed with it.
 */

#define SEP_ARENA_CHUNK (64 * 1024)

typedef struct ngx_http_sep_chunk_s ngx_http_sep_chunk_t;

struct ngx_http_sep_chunk_s {
    ngx_http_sep_chunk_t *next;
    size_t size;
    size_t used;
    u_char data[];
};

static ngx_http_sep_chunk_t *ngx_http_sep_arena_base;
static ngx_http_sep_chunk_t *ngx_http_sep_arena_extra;

static void *ngx_http_sep_arena_alloc(size_t size, ngx_uint_t zero)
{
    ngx_http_sep_chunk_t *chunk =
        ngx_http_sep_arena_extra ? ngx_http_sep_arena_extra : ngx_http_sep_arena_base;
    size_t n;
    void *p;

    size = ngx_align(size, 8);
    if (chunk == NULL || chunk->size - chunk->used < size) {
        n = ngx_max(size, (size_t)SEP_ARENA_CHUNK);
        chunk = malloc(sizeof(ngx_http_sep_chunk_t) + n);
        if (chunk == NULL) {
            return NULL; /* hiredis reports out of memory and drops the connection */
        }
        chunk->size = n;
        chunk->used = 0;
        chunk->next = NULL;
        if (ngx_http_sep_arena_base == NULL) {
            ngx_http_sep_arena_base = chunk;
        } else {
            chunk->next = ngx_http_sep_arena_extra;
            ngx_http_sep_arena_extra = chunk;
        }
    }
    p = chunk->data + chunk->used;
    chunk->used += size;
    if (zero) {
        ngx_memzero(p, size);
    }
    return p;
}

static void ngx_http_sep_arena_reset(void)
{
    ngx_http_sep_chunk_t *chunk;

    while (ngx_http_sep_arena_extra) {
        chunk = ngx_http_sep_arena_extra;
        ngx_http_sep_arena_extra = chunk->next;
        free(chunk);
    }
    if (ngx_http_sep_arena_base) {
        ngx_http_sep_arena_base->used = 0;
    }
}

static void ngx_http_sep_arena_free(void)
{
    ngx_http_sep_arena_reset();
    free(ngx_http_sep_arena_base);
    ngx_http_sep_arena_base = NULL;
}

/* A reply object of the task's type, linked into its parent array. */
static redisReply *ngx_http_sep_reply_new(const redisReadTask *task, int type)
{
    redisReply *r = ngx_http_sep_arena_alloc(sizeof(redisReply), 1);

    if (r == NULL) {
        return NULL;
    }
    r->type = type;
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = r;
    }
    return r;
}

static void *ngx_http_sep_reply_string(const redisReadTask *task, char *str, size_t len)
{
    redisReply *r = ngx_http_sep_reply_new(task, task->type);
    char *buf = r ? ngx_http_sep_arena_alloc(len + 1, 0) : NULL;

    if (buf == NULL) {
        return NULL;
    }
    ngx_memcpy(buf, str, len);
    buf[len] = '\0';
    r->str = buf;
    r->len = len;
    return r;
}

static void *ngx_http_sep_reply_array(const redisReadTask *task, int elements)
{
    redisReply *r = ngx_http_sep_reply_new(task, REDIS_REPLY_ARRAY);

    if (r == NULL) {
        return NULL;
    }
    if (elements > 0) {
        r->element = ngx_http_sep_arena_alloc((size_t)elements * sizeof(redisReply *), 1);
        if (r->element == NULL) {
            return NULL;
        }
    }
    r->elements = elements;
    return r;
}

static void *ngx_http_sep_reply_integer(const redisReadTask *task, long long value)
{
    redisReply *r = ngx_http_sep_reply_new(task, REDIS_REPLY_INTEGER);

    if (r) {
        r->integer = value;
    }
    return r;
}

static void *ngx_http_sep_reply_nil(const redisReadTask *task)
{
    return ngx_http_sep_reply_new(task, REDIS_REPLY_NIL);
}

static void ngx_http_sep_reply_free(void *reply)
{
    ngx_http_sep_arena_reset();
}

static redisReplyObjectFunctions ngx_http_sep_reply_functions = {
    ngx_http_sep_reply_string, ngx_http_sep_reply_array, ngx_http_sep_reply_integer,
    ngx_http_sep_reply_nil, ngx_http_sep_reply_free};

/* ---- the event-loop adapter (hiredis' ev hooks) ----------------------------- */

static void ngx_http_sep_redis_add_read(void *privdata)
{
    ngx_connection_t *c = privdata;

    if (!c->read->active && ngx_add_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0, "sep: redis: cannot add read event");
    }
}

static void ngx_http_sep_redis_del_read(void *privdata)
{
    ngx_connection_t *c = privdata;

    if (c->read->active) {
        (void)ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }
}

/*
 * Commands queued while handling events are written once, at the end of the
 * event-loop iteration (a posted event): the socket is almost always writable, so
 * this saves an epoll_ctl() pair per batch and pipelines everything queued in the
 * iteration into one write. The real write event is used only to learn that
 * connect(2) finished and when a write left data behind (full socket buffer).
 */
static void ngx_http_sep_redis_add_write(void *privdata)
{
    ngx_connection_t *c = privdata;

    if (c->write->active) {
        return;
    }
    if (c == ngx_http_sep_redis.conn && ngx_http_sep_redis.state == SEP_REDIS_CONNECTED &&
        !ngx_http_sep_redis.writing) {
        if (!c->write->posted) {
            ngx_post_event(c->write, &ngx_posted_events);
        }
        return;
    }
    if (ngx_add_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0, "sep: redis: cannot add write event");
    }
}

static void ngx_http_sep_redis_del_write(void *privdata)
{
    ngx_connection_t *c = privdata;

    if (c->write->active) {
        (void)ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }
}

/* hiredis is about to close the socket: release the nginx side of it. */
static void ngx_http_sep_redis_cleanup(void *privdata)
{
    ngx_connection_t *c = privdata;

    if (c->read->active) {
        (void)ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }
    if (c->write->active) {
        (void)ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }
    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }
    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t)-1; /* hiredis closes it */

    if (ngx_http_sep_redis.conn == c) {
        ngx_http_sep_redis.conn = NULL;
    }
    if (ngx_http_sep_redis.spare_conn == c) {
        ngx_http_sep_redis.spare_conn = NULL;
    }
}

/* Bytes are waiting on the socket: the peer answers (EOF and errors read as 0). */
static ngx_uint_t ngx_http_sep_redis_readable(ngx_connection_t *c)
{
    int n = 0;

    return c != NULL && ioctl(c->fd, FIONREAD, &n) == 0 && n > 0;
}

/* The connection's context is c->data (the current connection or a spare). */
static void ngx_http_sep_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t *c = ev->data;
    redisAsyncContext *ac = c->data;

    if (c->close) { /* worker_shutdown_timeout: nginx closes every connection */
        ngx_http_sep_redis.exiting = 1;
        ngx_http_sep_redis_spare_close();
        ngx_http_sep_redis_drop("worker is shutting down");
        return;
    }
    /* While the current connection is silent (or a spare is being set up), its first bytes
     * end that: Redis answers on it after all. */
    if (ac == ngx_http_sep_redis.ac &&
        (ngx_http_sep_redis.stalled || ngx_http_sep_redis.spare_ac) &&
        ngx_http_sep_redis_readable(c)) {
        ngx_http_sep_redis_heard();
    }
    redisAsyncHandleRead(ac);
}

static void ngx_http_sep_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t *c = ev->data;
    redisAsyncContext *ac = c->data;

    if (c->close) {
        ngx_http_sep_redis.exiting = 1;
        ngx_http_sep_redis_spare_close();
        ngx_http_sep_redis_drop("worker is shutting down");
        return;
    }
    if (ac != ngx_http_sep_redis.ac) {
        redisAsyncHandleWrite(ac);
        return;
    }
    ngx_http_sep_redis.writing = 1; /* a write that leaves data arms the event */
    redisAsyncHandleWrite(ac);
    ngx_http_sep_redis.writing = 0;
}

/* ---- connection life -------------------------------------------------------- */

/* Setup steps; a setup command's privdata is (round << 8) | step. */
enum { SEP_SETUP_AUTH = 0, SEP_SETUP_SELECT, SEP_SETUP_PROBE, SEP_SETUP_SCRIPT };

#define SEP_SETUP_TAG(round, step) ((void *)(uintptr_t)((((round)&0xffffff) << 8) | (step)))

static const char *ngx_http_sep_setup_step_name(ngx_uint_t step)
{
    switch (step) {
    case SEP_SETUP_AUTH:
        return "AUTH";
    case SEP_SETUP_SELECT:
        return "SELECT";
    case SEP_SETUP_PROBE:
        return "EXISTS (probe)";
    default:
        return "SCRIPT LOAD";
    }
}

ngx_uint_t ngx_http_sep_redis_not_ready(redisReply *reply)
{
    return ngx_http_sep_redis_error_is(reply, "LOADING") ||
           ngx_http_sep_redis_error_is(reply, "BUSY") ||
           ngx_http_sep_redis_error_is(reply, "MASTERDOWN");
}

/* Serving stopped: logged once per outage, whatever the number of attempts. */
static void ngx_http_sep_redis_outage_begins(const char *what, const char *detail)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    if (redis->down) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, redis->log, 0, "sep: redis still unavailable: %s: %s",
                       what, detail);
        return;
    }
    redis->down = 1;
    redis->down_since = ngx_current_msec;
    redis->attempts = 0;
    ngx_log_error(NGX_LOG_WARN, redis->log, 0,
                  "sep: redis %V unavailable: %s: %s; retrying every %M..%M ms, "
                  "requests get 503 until it is back",
                  &redis->mcf->redis_addr, what, detail, redis->mcf->backoff_min,
                  redis->mcf->backoff_max);
}

/* The current connection cannot serve (lost, refused, not set up). */
static void ngx_http_sep_redis_mark_down(const char *what, const char *detail)
{
    ngx_http_sep_redis.ready = 0;
    ngx_http_sep_redis_outage_begins(what, detail);
}

/* The setup of the current connection succeeded. */
static void ngx_http_sep_redis_mark_up(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    redis->ready = 1;
    redis->stalled = 0;
    redis->backoff = redis->mcf->backoff_min;
    if (redis->down) {
        redis->down = 0;
        ngx_log_error(NGX_LOG_WARN, redis->log, 0,
                      "sep: redis %V is back after %M ms unavailable (%ui attempts)",
                      &redis->mcf->redis_addr, (ngx_msec_t)(ngx_current_msec - redis->down_since),
                      redis->attempts);
    } else if (!redis->was_ready) {
        ngx_log_error(NGX_LOG_INFO, redis->log, 0, "sep: connected to redis %V",
                      &redis->mcf->redis_addr);
    }
    redis->was_ready = 1;
    /* before the held commands go out: a retry of a submit whose reply was lost
     * reaches Redis after that submit's cancel */
    ngx_http_sep_redis_settle_unsure();
}

/* Redis answers LOADING/BUSY/MASTERDOWN: keep the connection, set up again at MIN. */
static void ngx_http_sep_redis_not_ready_reply(const char *detail)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    ngx_http_sep_redis_mark_down("it cannot serve yet", detail);
    redis->backoff = redis->mcf->backoff_min; /* it answers: never doubled for this */
    if (redis->setup_pending == 0 && !redis->setup_retry.timer_set && !redis->exiting) {
        ngx_add_timer(&redis->setup_retry, redis->mcf->backoff_min);
    }
}

static void ngx_http_sep_redis_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    redisReply *rr = reply;
    uintptr_t tag = (uintptr_t)privdata;
    const char *what = ngx_http_sep_setup_step_name(tag & 0xff);

    if (rr == NULL) {
        return; /* the connection went away; that path logs and reconnects */
    }
    if ((tag >> 8) != (redis->setup_round & 0xffffff) || redis->setup_pending == 0) {
        return; /* a reply of an earlier setup */
    }
    if (rr->type == REDIS_REPLY_ERROR) {
        if (ngx_http_sep_redis_not_ready(rr)) {
            if (!redis->setup_failed) {
                ngx_cpystrn(redis->not_ready, (u_char *)rr->str, sizeof(redis->not_ready));
            }
            redis->setup_failed = 1;
        } else {
            /* AUTH refused, a script Redis will not load: reconnect with backoff */
            ngx_http_sep_redis_mark_down(what, rr->str);
            redis->setup_pending = 0;
            redisAsyncDisconnect(ac);
            return;
        }
    }
    if (--redis->setup_pending > 0) {
        return;
    }
    if (redis->connect_timeout.timer_set) {
        ngx_del_timer(&redis->connect_timeout);
    }
    if (redis->setup_failed) {
        ngx_http_sep_redis_not_ready_reply((const char *)redis->not_ready);
    } else {
        ngx_http_sep_redis_mark_up();
    }
    if (redis->attempt && redis->spare_ac == NULL) {
        /* the attempt is over: what waited for it goes out */
        redis->attempt = 0;
        ngx_http_sep_redis_release_held(1);
    }
}

/* Queues AUTH, SELECT, SCRIPT LOAD of the module's scripts and the probe, each reply
 * to fn tagged with round; returns how many were queued. */
static ngx_uint_t ngx_http_sep_redis_send_setup(redisAsyncContext *ac, redisCallbackFn *fn,
                                                ngx_uint_t round)
{
    ngx_http_sep_main_conf_t *mcf = ngx_http_sep_redis.mcf;
    ngx_uint_t i, queued = 0;

    if (mcf->redis_user.len) { /* an ACL user */
        if (redisAsyncCommand(ac, fn, SEP_SETUP_TAG(round, SEP_SETUP_AUTH), "AUTH %b %b",
                              mcf->redis_user.data, mcf->redis_user.len, mcf->redis_password.data,
                              mcf->redis_password.len) == REDIS_OK) {
            queued++;
        }
    } else if (mcf->redis_password.len) {
        if (redisAsyncCommand(ac, fn, SEP_SETUP_TAG(round, SEP_SETUP_AUTH), "AUTH %b",
                              mcf->redis_password.data, mcf->redis_password.len) == REDIS_OK) {
            queued++;
        }
    }
    if (mcf->redis_db > 0) {
        if (redisAsyncCommand(ac, fn, SEP_SETUP_TAG(round, SEP_SETUP_SELECT), "SELECT %d",
                              (int)mcf->redis_db) == REDIS_OK) {
            queued++;
        }
    }
    for (i = 0; i < sizeof(ngx_http_sep_module_scripts) / sizeof(sep_script_id_t); i++) {
        const sep_script_t *s = &sep_scripts[ngx_http_sep_module_scripts[i]];
        if (redisAsyncCommand(ac, fn, SEP_SETUP_TAG(round, SEP_SETUP_SCRIPT + i), "SCRIPT LOAD %b",
                              s->source, s->length) == REDIS_OK) {
            queued++;
        }
    }
    /* A data command: refused with LOADING, BUSY or MASTERDOWN like every request's
     * (SCRIPT LOAD is allowed on a stale replica). */
    if (redisAsyncCommand(ac, fn, SEP_SETUP_TAG(round, SEP_SETUP_PROBE), "EXISTS %b",
                          mcf->key_stats.data, mcf->key_stats.len) == REDIS_OK) {
        queued++;
    }
    return queued;
}

/* (Re)arms ev for ms from now: adding a set timer again may be a no-op. */
static void ngx_http_sep_redis_arm(ngx_event_t *ev, ngx_msec_t ms)
{
    if (ev->timer_set) {
        ngx_del_timer(ev);
    }
    ngx_add_timer(ev, ms);
}

/* One setup round on the current connection. On a connected socket its replies are
 * due within sep_redis_timeout (the connect timer is re-armed for them); a round
 * queued before the connect completes gets its limit when it does. */
static void ngx_http_sep_redis_setup(redisAsyncContext *ac)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    ngx_uint_t round;

    round = ++redis->setup_round;
    redis->setup_failed = 0;
    redis->attempts++;
    redis->setup_pending = ngx_http_sep_redis_send_setup(ac, ngx_http_sep_redis_setup_reply, round);
    if (redis->state == SEP_REDIS_CONNECTED && redis->setup_pending > 0) {
        ngx_http_sep_redis_arm(&redis->connect_timeout, redis->mcf->redis_timeout);
    }
}

static void ngx_http_sep_redis_setup_retry_handler(ngx_event_t *ev)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    if (!redis->exiting && redis->ac && redis->state == SEP_REDIS_CONNECTED && !redis->ready &&
        redis->setup_pending == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, redis->log, 0, "sep: redis setup again");
        ngx_http_sep_redis_setup(redis->ac);
    }
}

/* ---- a spare: a second connection for a current one that went silent ------------
 *
 * A reply overdue on the current connection (a request got 503 redis_timeout) either
 * means Redis is slow for everyone (a long script, a stall) or that this connection
 * alone is dead without a close (a NAT or load balancer that forgot the flow, a
 * failover behind a virtual address). A new connection tells them apart: it is opened
 * and set up while the current one is kept, and commands wait for it (held). If its
 * setup is answered while the current connection is still silent, it replaces that
 * one, whose commands in flight get their 503. If Redis answers on the current
 * connection first, or the spare gets no answer within sep_redis_timeout either, the
 * spare is closed and the current connection kept (late replies, and the compensation
 * of a late submit, still come on it); the next spare waits for the backoff, doubled
 * per failed spare.
 */

/* Forgets the spare without closing it (hiredis frees it, or it became the current
 * connection). */
static void ngx_http_sep_redis_spare_forget(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    redis->spare_ac = NULL;
    if (redis->spare_timeout.timer_set) {
        ngx_del_timer(&redis->spare_timeout);
    }
}

static void ngx_http_sep_redis_spare_close(void)
{
    redisAsyncContext *ac = ngx_http_sep_redis.spare_ac;

    if (ac == NULL) {
        return;
    }
    ngx_http_sep_redis_spare_forget();
    redisAsyncFree(ac); /* deferred by hiredis when called from one of its callbacks */
}

/* The spare is over and the current connection stays: what waited goes out on it. */
static void ngx_http_sep_redis_spare_done(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    ngx_http_sep_redis_spare_close();
    if (redis->attempt) {
        redis->attempt = 0;
        ngx_http_sep_redis_release_held(1);
    }
}

static void ngx_http_sep_redis_spare_failed(const char *why)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, redis->log, 0,
                   "sep: redis spare connection failed: %s; keeping the current one, next spare "
                   "in %M ms or later",
                   why, redis->spare_backoff);
    redis->spare_next = ngx_current_msec + redis->spare_backoff;
    redis->spare_backoff = ngx_min(redis->spare_backoff * 2, redis->mcf->backoff_max);
    ngx_http_sep_redis_spare_done();
}

/* Redis answers on the current connection again (a reply's first bytes). */
static void ngx_http_sep_redis_heard(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    if (redis->spare_ac) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, redis->log, 0,
                       "sep: redis answers on the current connection: spare closed");
        ngx_http_sep_redis_spare_done();
    }
    if (redis->stalled) {
        redis->stalled = 0;
        redis->spare_backoff = redis->mcf->backoff_min;
        if (redis->ready) {
            ngx_http_sep_redis_mark_up(); /* "is back" */
        }
    }
}

/* The spare is set up while the current connection is still silent: it takes over. */
static void ngx_http_sep_redis_replace(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    redisAsyncContext *old = redis->ac;
    redisAsyncContext *ac = redis->spare_ac;
    ngx_uint_t in_flight = 0;
    ngx_queue_t *q;

    for (q = ngx_queue_head(&redis->inflight); q != ngx_queue_sentinel(&redis->inflight);
         q = ngx_queue_next(q)) {
        in_flight++;
    }
    ngx_log_error(NGX_LOG_NOTICE, redis->log, 0,
                  "sep: redis %V: no reply on the connection for %M ms while a new one "
                  "answered: replacing it (%ui commands in flight on it get 503)",
                  &redis->mcf->redis_addr, (ngx_msec_t)(ngx_current_msec - redis->down_since),
                  in_flight);

    ngx_http_sep_redis_spare_forget();
    redis->ac = ac;
    redis->conn = redis->spare_conn;
    redis->spare_conn = NULL;
    ac->data = redis; /* the current connection from now on */
    redis->state = SEP_REDIS_CONNECTED;
    redis->setup_pending = 0;
    redis->stalled = 0;
    redis->spare_backoff = redis->mcf->backoff_min;
    if (redis->connect_timeout.timer_set) {
        ngx_del_timer(&redis->connect_timeout);
    }
    if (redis->setup_retry.timer_set) {
        ngx_del_timer(&redis->setup_retry);
    }
    if (old) {
        old->data = NULL;    /* its disconnect is not the current connection's */
        redisAsyncFree(old); /* its callbacks get NULL: those requests get 503 */
    }
    ngx_http_sep_redis_mark_up();
    redis->attempt = 0;
    ngx_http_sep_redis_release_held(1);
}

static void ngx_http_sep_redis_spare_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    redisReply *rr = reply;
    uintptr_t tag = (uintptr_t)privdata;

    if (rr == NULL || ac != redis->spare_ac || (tag >> 8) != (redis->spare_round & 0xffffff)) {
        return; /* a spare that is going away */
    }
    if (rr->type == REDIS_REPLY_ERROR) {
        /* refused or not ready: no sign that the current connection is the problem */
        ngx_http_sep_redis_spare_failed(rr->str);
        return;
    }
    if (--redis->spare_pending > 0) {
        return;
    }
    if (ngx_http_sep_redis_readable(redis->conn)) {
        ngx_http_sep_redis_heard(); /* its answer is already here: keep it */
        return;
    }
    ngx_http_sep_redis_replace();
}

static void ngx_http_sep_redis_spare_timeout_handler(ngx_event_t *ev)
{
    if (ngx_http_sep_redis.spare_ac) {
        ngx_http_sep_redis_spare_failed("no reply either");
    }
}

static ngx_int_t ngx_http_sep_redis_open(redisAsyncContext **acp, ngx_connection_t **cp,
                                         u_char *err, size_t errlen);

static void ngx_http_sep_redis_spare_start(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    redisAsyncContext *ac;
    ngx_connection_t *c;
    u_char err[128];

    redis->attempts++;
    if (ngx_http_sep_redis_open(&ac, &c, err, sizeof(err)) != NGX_OK) {
        ngx_http_sep_redis_spare_failed((const char *)err);
        return;
    }
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, redis->log, 0,
                   "sep: redis connection silent: setting up a spare");
    redis->spare_ac = ac;
    redis->spare_conn = c;
    redis->attempt = 1; /* new commands wait for the outcome */
    redis->spare_pending = ngx_http_sep_redis_send_setup(ac, ngx_http_sep_redis_spare_setup_reply,
                                                         ++redis->spare_round);
    ngx_http_sep_redis_arm(&redis->spare_timeout, redis->mcf->redis_timeout);
}

/* A sent command's reply is sep_redis_timeout late: the outage is logged once, and a
 * spare connection is set up unless one is or failed within the backoff. */
static void ngx_http_sep_redis_reply_overdue(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    u_char detail[64];

    if (redis->ac == NULL || redis->state != SEP_REDIS_CONNECTED) {
        return;
    }
    if (!redis->stalled) {
        redis->stalled = 1;
        if (redis->ready) {
            *ngx_snprintf(detail, sizeof(detail) - 1, "no reply within %M ms",
                          redis->mcf->redis_timeout) = '\0';
            ngx_http_sep_redis_outage_begins("not answering", (const char *)detail);
        }
    }
    /* not set up (LOADING, ...): the setup rounds have their own limit */
    if (redis->ready && !redis->attempt && redis->spare_ac == NULL && !redis->exiting &&
        (ngx_msec_int_t)(ngx_current_msec - redis->spare_next) >= 0) {
        ngx_http_sep_redis_spare_start();
    }
}

/* ---- connect, lose, retry ---------------------------------------------------------- */

static void ngx_http_sep_redis_on_connect(const redisAsyncContext *ac, int status)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    if (ac->data != redis) { /* a spare */
        if (ac != redis->spare_ac) {
            return;
        }
        if (status != REDIS_OK) {
            ngx_http_sep_redis_spare_forget(); /* hiredis frees it when this returns */
            ngx_http_sep_redis_spare_failed(ac->errstr);
            return;
        }
        ngx_http_sep_redis_arm(&redis->spare_timeout, redis->mcf->redis_timeout);
        return;
    }
    if (redis->connect_timeout.timer_set) {
        ngx_del_timer(&redis->connect_timeout);
    }
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns */
        ngx_http_sep_redis_mark_down("connect failed", ac->errstr);
        redis->ac = NULL;
        redis->state = SEP_REDIS_DISCONNECTED;
        redis->attempt = 0;
        ngx_http_sep_redis_schedule_reconnect();
        ngx_http_sep_redis_release_held(0);
        return;
    }
    redis->state = SEP_REDIS_CONNECTED;
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, redis->log, 0, "sep: redis %V: connected",
                   &redis->mcf->redis_addr);
    /* the setup queued at connect: answered within the limit, or the attempt failed */
    if (redis->setup_pending > 0) {
        ngx_http_sep_redis_arm(&redis->connect_timeout, redis->mcf->redis_timeout);
    }
}

static void ngx_http_sep_redis_on_disconnect(const redisAsyncContext *ac, int status)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    if (ac->data != redis) { /* a spare, or a connection replaced by one */
        if (ac == redis->spare_ac) {
            ngx_http_sep_redis_spare_forget(); /* hiredis is freeing it */
            ngx_http_sep_redis_spare_failed(ac->errstr[0] ? ac->errstr : "closed");
        }
        return;
    }
    redis->ac = NULL;
    redis->state = SEP_REDIS_DISCONNECTED;
    redis->ready = 0;
    redis->setup_pending = 0;
    redis->attempt = 0;
    redis->stalled = 0;
    if (redis->connect_timeout.timer_set) {
        ngx_del_timer(&redis->connect_timeout);
    }
    if (redis->setup_retry.timer_set) {
        ngx_del_timer(&redis->setup_retry);
    }
    ngx_http_sep_redis_spare_close();
    if (!redis->exiting) {
        ngx_http_sep_redis_mark_down("lost the connection", ac->errstr[0] ? ac->errstr : "closed");
        ngx_http_sep_redis_schedule_reconnect();
    }
    ngx_http_sep_redis_release_held(0);
}

static void ngx_http_sep_redis_reconnect_handler(ngx_event_t *ev)
{
    if (!ngx_http_sep_redis.exiting && ngx_http_sep_redis.ac == NULL) {
        ngx_http_sep_redis_connect();
    }
}

/* The connect, or a setup round (AUTH, SELECT, SCRIPT LOAD, probe), got no answer
 * within sep_redis_timeout: a peer that accepts and never answers is given up on. */
static void ngx_http_sep_redis_connect_timeout_handler(ngx_event_t *ev)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    u_char detail[64];

    if (redis->state == SEP_REDIS_CONNECTING) {
        ngx_http_sep_redis_mark_down("connect", "timed out");
        ngx_http_sep_redis_drop("connect timed out");
        ngx_http_sep_redis_schedule_reconnect();
    } else if (redis->state == SEP_REDIS_CONNECTED && redis->setup_pending > 0) {
        *ngx_snprintf(detail, sizeof(detail) - 1, "no reply within %M ms",
                      redis->mcf->redis_timeout) = '\0';
        ngx_http_sep_redis_mark_down("setup", (const char *)detail);
        ngx_http_sep_redis_drop("setup not answered");
        ngx_http_sep_redis_schedule_reconnect();
    }
}

/* Also in a worker that is shutting down gracefully: it still serves its requests
 * (the timer is cancelable, so it never keeps the worker from exiting). */
static void ngx_http_sep_redis_schedule_reconnect(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    if (redis->exiting || ngx_terminate || redis->reconnect.timer_set) {
        return;
    }
    ngx_add_timer(&redis->reconnect, redis->backoff);
    redis->backoff = ngx_min(redis->backoff * 2, redis->mcf->backoff_max);
}

/* Frees the context now: pending commands get a NULL reply. */
static void ngx_http_sep_redis_drop(const char *why)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    redisAsyncContext *ac = redis->ac;

    if (ac == NULL) {
        return;
    }
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, redis->log, 0, "sep: dropping redis connection: %s", why);
    redis->ac = NULL;
    redis->state = SEP_REDIS_DISCONNECTED;
    redis->ready = 0;
    redis->setup_pending = 0;
    redis->stalled = 0;
    if (redis->connect_timeout.timer_set) {
        ngx_del_timer(&redis->connect_timeout);
    }
    if (redis->setup_retry.timer_set) {
        ngx_del_timer(&redis->setup_retry);
    }
    ngx_http_sep_redis_spare_close();
    redis->attempt = 0;
    redisAsyncFree(ac);
    ngx_http_sep_redis_release_held(0);
}

/*
 * A non-blocking hiredis connection bound to the event loop (the current one or a
 * spare: ac->data tells, see on_connect). A TCP one has TCP keepalive on (idle 15 s,
 * then a keepalive probe every 5 s, dead after 3 unanswered), so a peer gone without
 * a close is noticed on an idle connection too. On NGX_ERROR, err holds why.
 */
static ngx_int_t ngx_http_sep_redis_open(redisAsyncContext **acp, ngx_connection_t **cp,
                                         u_char *err, size_t errlen)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    ngx_http_sep_main_conf_t *mcf = redis->mcf;
    redisAsyncContext *ac;
    ngx_connection_t *c;

    if (mcf->redis_port == 0) {
        ac = redisAsyncConnectUnix((const char *)mcf->redis_host.data);
    } else {
        ac = redisAsyncConnect((const char *)mcf->redis_host.data, (int)mcf->redis_port);
    }
    if (ac == NULL || ac->err) {
        ngx_cpystrn(err, (u_char *)(ac ? ac->errstr : "out of memory"), errlen);
        if (ac) {
            redisAsyncFree(ac);
        }
        return NGX_ERROR;
    }
    if (mcf->redis_port != 0 && redisEnableKeepAlive(&ac->c) != REDIS_OK) {
        ngx_log_error(NGX_LOG_WARN, redis->log, 0, "sep: redis: cannot enable TCP keepalive: %s",
                      ac->c.errstr);
        ac->c.err = 0; /* the connection itself is fine */
        ac->c.errstr[0] = '\0';
    }

    c = ngx_get_connection(ac->c.fd, redis->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_cpystrn(err, (u_char *)"no free nginx connection", errlen);
        return NGX_ERROR;
    }
    c->data = ac;
    c->log = redis->log;
    c->read->log = redis->log;
    c->write->log = redis->log;
    c->read->handler = ngx_http_sep_redis_read_handler;
    c->write->handler = ngx_http_sep_redis_write_handler;

    ac->c.reader->fn = &ngx_http_sep_reply_functions;
    ac->data = NULL; /* a spare until the caller says otherwise */
    ac->ev.data = c;
    ac->ev.addRead = ngx_http_sep_redis_add_read;
    ac->ev.delRead = ngx_http_sep_redis_del_read;
    ac->ev.addWrite = ngx_http_sep_redis_add_write;
    ac->ev.delWrite = ngx_http_sep_redis_del_write;
    ac->ev.cleanup = ngx_http_sep_redis_cleanup;

    /* Setting the connect callback arms the write event that reports the
     * connect(2) outcome; the adapter must be attached before. */
    redisAsyncSetConnectCallback(ac, ngx_http_sep_redis_on_connect);
    redisAsyncSetDisconnectCallback(ac, ngx_http_sep_redis_on_disconnect);

    *acp = ac;
    *cp = c;
    return NGX_OK;
}

static void ngx_http_sep_redis_connect(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    redisAsyncContext *ac;
    ngx_connection_t *c;
    u_char err[128];

    redis->last_attempt = ngx_current_msec;

    if (ngx_http_sep_redis_open(&ac, &c, err, sizeof(err)) != NGX_OK) {
        redis->attempts++;
        ngx_http_sep_redis_mark_down("connect failed", (const char *)err);
        ngx_http_sep_redis_schedule_reconnect();
        ngx_http_sep_redis_release_held(0);
        return;
    }
    ac->data = redis;
    redis->ac = ac;
    redis->conn = c;
    redis->state = SEP_REDIS_CONNECTING;
    redis->ready = 0;
    redis->stalled = 0;
    redis->attempt = 1;

    ngx_http_sep_redis_setup(ac);

    ngx_add_timer(&redis->connect_timeout, redis->mcf->redis_timeout);
}

/* The wait for late replies is over: an exiting worker may go (what is still due is
 * settled in exit_process). */
static void ngx_http_sep_redis_linger_handler(ngx_event_t *ev)
{
    if (ngx_http_sep_redis.late) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0, "sep: %ui late redis replies still due after %M ms",
                      ngx_http_sep_redis.late,
                      (ngx_msec_t)(SEP_LATE_WAIT_FACTOR * ngx_http_sep_redis.mcf->redis_timeout));
    }
}

/* Writes what hiredis has buffered, blocking up to about 100 ms (at exit only). */
static void ngx_http_sep_redis_flush_now(redisAsyncContext *ac)
{
    struct pollfd pfd;
    int done = 0;

    for (int i = 0; i < 10 && !done; i++) {
        if (redisBufferWrite(&ac->c, &done) == REDIS_ERR) {
            return;
        }
        if (!done) {
            pfd.fd = ac->c.fd;
            pfd.events = POLLOUT;
            (void)poll(&pfd, 1, 10);
        }
    }
}

ngx_int_t ngx_http_sep_redis_init_process(ngx_cycle_t *cycle, ngx_http_sep_main_conf_t *mcf)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    ngx_memzero(redis, sizeof(*redis));
    redis->mcf = mcf;
    redis->log = cycle->log;
    redis->backoff = mcf->backoff_min;
    redis->spare_backoff = mcf->backoff_min;
    ngx_queue_init(&redis->inflight);
    ngx_queue_init(&redis->held);
    ngx_queue_init(&redis->unsure);
    ngx_queue_init(&redis->free);

    redis->reconnect.handler = ngx_http_sep_redis_reconnect_handler;
    redis->reconnect.data = redis;
    redis->reconnect.log = cycle->log;
    redis->reconnect.cancelable = 1; /* never keeps an exiting worker alive */

    redis->connect_timeout.handler = ngx_http_sep_redis_connect_timeout_handler;
    redis->connect_timeout.data = redis;
    redis->connect_timeout.log = cycle->log;
    redis->connect_timeout.cancelable = 1;

    redis->setup_retry.handler = ngx_http_sep_redis_setup_retry_handler;
    redis->setup_retry.data = redis;
    redis->setup_retry.log = cycle->log;
    redis->setup_retry.cancelable = 1;

    redis->spare_timeout.handler = ngx_http_sep_redis_spare_timeout_handler;
    redis->spare_timeout.data = redis;
    redis->spare_timeout.log = cycle->log;
    redis->spare_timeout.cancelable = 1;

    redis->unsure_retry.handler = ngx_http_sep_redis_unsure_handler;
    redis->unsure_retry.data = redis;
    redis->unsure_retry.log = cycle->log;
    redis->unsure_retry.cancelable = 1;
    redis->linger.handler = ngx_http_sep_redis_linger_handler;
    redis->linger.data = redis;
    redis->linger.log = cycle->log;

    ngx_http_sep_redis_connect();
    return NGX_OK;
}

/* Sends the cancel of every submit whose reply was lost (the "unsure" queue), each
 * with its Idempotency-Key, and forgets them. */
static void ngx_http_sep_redis_cancel_unsure(ngx_http_sep_redis_t *redis)
{
    ngx_http_sep_cmd_t *cmd;
    ngx_queue_t *q;

    if (redis->unsure_retry.timer_set) {
        ngx_del_timer(&redis->unsure_retry);
    }
    while (!ngx_queue_empty(&redis->unsure)) {
        q = ngx_queue_head(&redis->unsure);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_sep_cmd_t, queue);
        ngx_http_sep_redis_late_cancel(cmd);
        ngx_http_sep_cmd_release(cmd);
    }
}

void ngx_http_sep_redis_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    ngx_queue_t *q;
    ngx_http_sep_cmd_t *cmd;
    ngx_http_sep_ctx_t *ctx;

    if (redis->mcf == NULL) {
        return;
    }
    redis->exiting = 1;
    if (redis->reconnect.timer_set) {
        ngx_del_timer(&redis->reconnect);
    }
    if (redis->setup_retry.timer_set) {
        ngx_del_timer(&redis->setup_retry);
    }

    /* Requests still waiting die with the process (their clients get no answer):
     * they stop waiting as for a timeout. Then the late actions still due are settled
     * as far as they can be without a reply: a submit gets its cancel pipelined
     * behind it (if Redis runs the submit at all, it runs the cancel next), and its
     * upload goes; a DELETE's directory is left to what Redis did, and logged. */
    for (q = ngx_queue_head(&redis->inflight); q != ngx_queue_sentinel(&redis->inflight);
         q = ngx_queue_next(q)) {
        cmd = ngx_queue_data(q, ngx_http_sep_cmd_t, queue);
        if (cmd->ctx) {
            ctx = cmd->ctx;
            ngx_http_sep_cmd_orphan(cmd, ctx);
            ctx->cmd = NULL;
        }
    }
    for (q = ngx_queue_head(&redis->inflight); q != ngx_queue_sentinel(&redis->inflight);
         q = ngx_queue_next(q)) {
        cmd = ngx_queue_data(q, ngx_http_sep_cmd_t, queue);
        if (cmd->late == SEP_LATE_CANCEL_IF_CREATED) {
            ngx_http_sep_redis_late_cancel(cmd);
            ngx_http_sep_remove_job_dir(redis->log, cmd->spool,
                                        &(ngx_str_t){SEP_ID_LEN, cmd->job_id});
        } else if (cmd->late == SEP_LATE_REMOVE_IF_DELETED) {
            ngx_log_error(NGX_LOG_WARN, redis->log, 0,
                          "sep: job %*s: worker exits before the reply to its cancel; if "
                          "Redis canceled it, \"%V/%*s\" stays",
                          (size_t)SEP_ID_LEN, cmd->job_id, cmd->spool, (size_t)SEP_ID_LEN,
                          cmd->job_id);
        }
    }
    ngx_http_sep_redis_cancel_unsure(redis);
    if (redis->ac && redis->state == SEP_REDIS_CONNECTED) {
        ngx_http_sep_redis_flush_now(redis->ac);
    }
    if (redis->linger.timer_set) {
        ngx_del_timer(&redis->linger);
    }
    while (!ngx_queue_empty(&redis->held)) {
        q = ngx_queue_head(&redis->held);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_sep_cmd_t, queue);
        cmd->held = 0;
        if (cmd->ctx) {
            cmd->ctx->cmd = NULL;
        }
        ngx_http_sep_cmd_release(cmd);
    }
    ngx_http_sep_redis_spare_close();
    ngx_http_sep_redis_drop("worker exit");

    ngx_http_sep_arena_free();

    while (!ngx_queue_empty(&redis->free)) {
        q = ngx_queue_head(&redis->free);
        ngx_queue_remove(q);
        ngx_free(ngx_queue_data(q, ngx_http_sep_cmd_t, queue));
    }
}

/* ---- commands --------------------------------------------------------------- */

static ngx_http_sep_cmd_t *ngx_http_sep_cmd_alloc(void)
{
    ngx_http_sep_cmd_t *cmd;
    ngx_queue_t *q;

    if (!ngx_queue_empty(&ngx_http_sep_redis.free)) {
        q = ngx_queue_head(&ngx_http_sep_redis.free);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_sep_cmd_t, queue);
    } else {
        cmd = ngx_alloc(sizeof(ngx_http_sep_cmd_t), ngx_http_sep_redis.log);
        if (cmd == NULL) {
            return NULL;
        }
    }
    ngx_memzero(cmd, sizeof(*cmd));
    cmd->script = -1;
    return cmd;
}

static void ngx_http_sep_cmd_release(ngx_http_sep_cmd_t *cmd)
{
    if (cmd->late != SEP_LATE_DROP) {
        cmd->late = SEP_LATE_DROP;
        if (--ngx_http_sep_redis.late == 0 && ngx_http_sep_redis.linger.timer_set) {
            ngx_del_timer(&ngx_http_sep_redis.linger);
        }
    }
    if (cmd->formatted) {
        redisFreeCommand(cmd->formatted);
        cmd->formatted = NULL;
    }
    cmd->ctx = NULL;
    ngx_queue_insert_head(&ngx_http_sep_redis.free, &cmd->queue);
}

ngx_uint_t ngx_http_sep_redis_error_is(redisReply *reply, const char *code)
{
    size_t n = ngx_strlen(code);
    const char *s;
    size_t len;

    if (reply == NULL || reply->type != REDIS_REPLY_ERROR) {
        return 0;
    }
    s = reply->str;
    len = reply->len;
    /* Redis puts "ERR " before a script error that is a bare word */
    if (len > 4 && ngx_strncmp(s, "ERR ", 4) == 0 &&
        !(n == 3 && ngx_strncmp(code, "ERR", 3) == 0)) {
        s += 4;
        len -= 4;
    }
    return len >= n && ngx_strncmp(s, code, n) == 0 && (len == n || s[n] == ' ');
}

static void ngx_http_sep_redis_log_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    redisReply *rr = reply;

    if (rr && rr->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_sep_redis.log, 0, "sep: redis %s: %s",
                      (const char *)privdata, rr->str);
    }
}

ngx_int_t ngx_http_sep_cancel_command(ngx_http_sep_main_conf_t *mcf, sep_str_t id,
                                      ngx_http_sep_cancel_command_t *cmd)
{
    const sep_script_t *script = &sep_scripts[SEP_SCRIPT_CANCEL];
    sep_str_t prefix = {(const char *)mcf->key_prefix.data, mcf->key_prefix.len};
    int argc = 0;

    if (sep_job_keys(&cmd->keys, prefix, id) != 0) {
        return NGX_ERROR;
    }
    cmd->argv[argc] = "EVALSHA";
    cmd->argvlen[argc++] = 7;
    cmd->argv[argc] = script->sha1;
    cmd->argvlen[argc++] = 40;
    _Static_assert(SEP_JOB_KEYS == 8, "numkeys below");
    cmd->argv[argc] = "8";
    cmd->argvlen[argc++] = 1;
    for (int i = 0; i < SEP_JOB_KEYS; i++) {
        cmd->argv[argc] = cmd->keys.key[i];
        cmd->argvlen[argc++] = cmd->keys.len[i];
    }
    return NGX_OK;
}

/* 1 when reply is an array whose first element is the string `kind`. */
static ngx_uint_t ngx_http_sep_reply_kind(redisReply *reply, const char *kind)
{
    size_t n = ngx_strlen(kind);

    return reply && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
           reply->element[0]->type == REDIS_REPLY_STRING && reply->element[0]->len == n &&
           ngx_strncmp(reply->element[0]->str, kind, n) == 0;
}

/* The request of cmd stops waiting (timeout, client gone, worker exit): what its
 * reply must still do is kept in the record. */
static void ngx_http_sep_cmd_orphan(ngx_http_sep_cmd_t *cmd, ngx_http_sep_ctx_t *ctx)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    ngx_http_sep_loc_conf_t *lcf;
    sep_str_t prefix;
    ngx_uint_t late = SEP_LATE_DROP;

    cmd->ctx = NULL;
    if (ctx->id.len != SEP_ID_LEN || cmd->late != SEP_LATE_DROP) {
        return;
    }
    if (cmd->script == SEP_SCRIPT_SUBMIT) {
        late = SEP_LATE_CANCEL_IF_CREATED;
    } else if (cmd->script == SEP_SCRIPT_CANCEL) {
        late = SEP_LATE_REMOVE_IF_DELETED;
    } else {
        return;
    }
    lcf = ngx_http_get_module_loc_conf(ctx->request, ngx_http_sep_module);
    ngx_memcpy(cmd->job_id, ctx->id.data, SEP_ID_LEN);
    cmd->spool = &lcf->spool;
    cmd->idem_key_len = 0;
    if (late == SEP_LATE_CANCEL_IF_CREATED && ctx->idempotency_key.len) {
        prefix = (sep_str_t){(const char *)redis->mcf->key_prefix.data, redis->mcf->key_prefix.len};
        cmd->idem_key_len = sep_key_idem(
            cmd->idem_key, sizeof(cmd->idem_key), prefix,
            (sep_str_t){(const char *)ctx->idempotency_key.data, ctx->idempotency_key.len});
    }
    cmd->late = late;
    redis->late++;
    if (!redis->linger.timer_set) {
        ngx_add_timer(&redis->linger, SEP_LATE_WAIT_FACTOR * redis->mcf->redis_timeout);
    }
}

/*
 * A job was created by a submit whose request had already been answered 503 (or
 * whose worker exits): cancel it, so that no job exists the client was told failed,
 * with the request's Idempotency-Key (freed if it still names the job). The cancel's
 * own reply removes {spool}/{id}/ when it says canceled (a late record of its own);
 * at exit it is sent with no record (its reply will not be read).
 */
static void ngx_http_sep_redis_late_cancel(ngx_http_sep_cmd_t *from)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    ngx_http_sep_cancel_command_t cc;
    ngx_http_sep_cmd_t *cmd;
    char *formatted = NULL;
    int argc = NGX_HTTP_SEP_CANCEL_ARGC, len;

    if (redis->ac == NULL || redis->state != SEP_REDIS_CONNECTED ||
        ngx_http_sep_cancel_command(redis->mcf, (sep_str_t){(const char *)from->job_id, SEP_ID_LEN},
                                    &cc) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, redis->log, 0,
                      from->unsure ? "sep: job %*s: the reply to its submit was lost and it "
                                     "cannot be canceled now (if Redis created it, it has no "
                                     "input)"
                                   : "sep: job %*s was created after its request timed out "
                                     "and cannot be canceled now",
                      (size_t)SEP_ID_LEN, from->job_id);
        return;
    }
    if (from->idem_key_len) {
        cc.argv[2] = "9";
        cc.argv[argc] = from->idem_key;
        cc.argvlen[argc++] = from->idem_key_len;
    }
    if (from->unsure) {
        /* most often Redis never ran it: the cancel is then answered NOT_FOUND */
        ngx_log_error(NGX_LOG_INFO, redis->log, 0,
                      "sep: job %*s: the reply to its submit was lost; canceling it in case "
                      "Redis created it",
                      (size_t)SEP_ID_LEN, from->job_id);
    } else {
        ngx_log_error(NGX_LOG_WARN, redis->log, 0,
                      "sep: job %*s was created after its request timed out; canceling it",
                      (size_t)SEP_ID_LEN, from->job_id);
    }
    if (redis->exiting) {
        redisAsyncCommandArgv(redis->ac, ngx_http_sep_redis_log_reply, "cancel of a late submit",
                              argc, cc.argv, cc.argvlen);
        return;
    }
    len = redisFormatCommandArgv(&formatted, argc, cc.argv, cc.argvlen);
    cmd = len < 0 ? NULL : ngx_http_sep_cmd_alloc();
    if (cmd == NULL) {
        if (formatted) {
            redisFreeCommand(formatted);
        }
        return;
    }
    cmd->script = SEP_SCRIPT_CANCEL;
    cmd->formatted = formatted;
    cmd->formatted_len = (size_t)len;
    if (redisAsyncFormattedCommand(redis->ac, ngx_http_sep_redis_reply, cmd, formatted,
                                   (size_t)len) != REDIS_OK) {
        ngx_http_sep_cmd_release(cmd);
        return;
    }
    ngx_memcpy(cmd->job_id, from->job_id, SEP_ID_LEN);
    cmd->spool = from->spool;
    cmd->late = SEP_LATE_REMOVE_IF_DELETED;
    redis->late++;
    if (!redis->linger.timer_set) {
        ngx_add_timer(&redis->linger, SEP_LATE_WAIT_FACTOR * redis->mcf->redis_timeout);
    }
    ngx_queue_insert_tail(&redis->inflight, &cmd->queue);
}

/* A reply that came after its request stopped waiting. */
static void ngx_http_sep_redis_late_reply(ngx_http_sep_cmd_t *cmd, redisReply *rr)
{
    if (cmd->late == SEP_LATE_CANCEL_IF_CREATED && ngx_http_sep_reply_kind(rr, "created")) {
        ngx_http_sep_redis_late_cancel(cmd);
    } else if (cmd->late == SEP_LATE_REMOVE_IF_DELETED &&
               (ngx_http_sep_reply_kind(rr, "canceled") || ngx_http_sep_reply_kind(rr, "purge"))) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_http_sep_redis.log, 0,
                      "sep: job %*s was canceled after its request stopped waiting; removing "
                      "its files",
                      (size_t)SEP_ID_LEN, cmd->job_id);
        ngx_http_sep_remove_job_dir(ngx_http_sep_redis.log, cmd->spool,
                                    &(ngx_str_t){SEP_ID_LEN, cmd->job_id});
    }
}

/* Hands a reply (NULL: none will come) to the request waiting in ctx: detached from its
 * command, its reply timer stopped, then the requests the handler posted run. */
static void ngx_http_sep_redis_answer(ngx_http_sep_ctx_t *ctx, ngx_http_sep_reply_pt handler,
                                      redisReply *rr)
{
    ngx_http_request_t *r = ctx->request;
    ngx_connection_t *c = r->connection;

    ctx->cmd = NULL;
    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }
    handler(r, ctx, rr);
    ngx_http_run_posted_requests(c);
}

static void ngx_http_sep_redis_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    ngx_http_sep_cmd_t *cmd = privdata;
    redisReply *rr = reply;
    ngx_http_sep_ctx_t *ctx;
    ngx_http_sep_reply_pt handler;

    /* The script cache was flushed since we connected: load it, repeat once. */
    if (cmd->script >= 0 && !cmd->retried && cmd->formatted &&
        ngx_http_sep_redis_error_is(rr, "NOSCRIPT")) {
        const sep_script_t *s = &sep_scripts[cmd->script];
        cmd->retried = 1;
        if (redisAsyncCommand(ac, ngx_http_sep_redis_log_reply, "SCRIPT LOAD", "SCRIPT LOAD %b",
                              s->source, s->length) == REDIS_OK &&
            redisAsyncFormattedCommand(ac, ngx_http_sep_redis_reply, cmd, cmd->formatted,
                                       cmd->formatted_len) == REDIS_OK) {
            ngx_log_error(NGX_LOG_NOTICE, ngx_http_sep_redis.log, 0,
                          "sep: redis lost script \"%s\", loaded it again", s->name);
            return;
        }
    }

    ngx_queue_remove(&cmd->queue);
    ctx = cmd->ctx;

    /* Redis stopped serving (a reload, a long script): stay connected, set up again. */
    if (ngx_http_sep_redis.ready && ngx_http_sep_redis_not_ready(rr)) {
        ngx_http_sep_redis_not_ready_reply(rr->str);
    }

    /* The connection went away (lost, or replaced by a spare) with a submit on it:
     * Redis may have run it, and its reply will never come. Its request gets its 503
     * as for any lost connection, and the job is canceled on the next connection,
     * with the request's Idempotency-Key, as for a late reply saying "created" (a
     * cancel of a job that was never created is answered NOT_FOUND). */
    if (rr == NULL && cmd->script == SEP_SCRIPT_SUBMIT && !ngx_http_sep_redis.exiting) {
        if (ctx) {
            ngx_http_sep_cmd_orphan(cmd, ctx);
        }
        if (cmd->late == SEP_LATE_CANCEL_IF_CREATED) {
            cmd->unsure = 1;
            ngx_queue_insert_tail(&ngx_http_sep_redis.unsure, &cmd->queue);
            if (!ngx_http_sep_redis.unsure_retry.timer_set) {
                ngx_add_timer(&ngx_http_sep_redis.unsure_retry, 1);
            }
            if (ctx) {
                ngx_http_sep_redis_answer(ctx, cmd->handler, NULL);
            }
            return;
        }
        cmd->ctx = ctx;
    }

    if (ctx == NULL) {
        ngx_http_sep_redis_late_reply(cmd, rr);
        ngx_http_sep_cmd_release(cmd);
        return;
    }

    handler = cmd->handler;
    ngx_http_sep_cmd_release(cmd);
    ngx_http_sep_redis_answer(ctx, handler, rr);
}

/* The submits whose reply was lost get their cancel on the connection now ready
 * (from mark_up: ahead of the commands held while it was set up). */
static void ngx_http_sep_redis_settle_unsure(void)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;

    if (redis->ac == NULL || redis->state != SEP_REDIS_CONNECTED || !redis->ready) {
        return;
    }
    ngx_http_sep_redis_cancel_unsure(redis);
}

/* The same when a submit's reply is lost while the connection is ready; else it
 * looks again every sep_redis_backoff MIN (a cancelable timer: an exiting worker
 * settles them in exit_process). */
static void ngx_http_sep_redis_unsure_handler(ngx_event_t *ev)
{
    ngx_http_sep_redis_settle_unsure();
    if (!ngx_queue_empty(&ngx_http_sep_redis.unsure) && !ev->timer_set) {
        ngx_add_timer(ev, ngx_http_sep_redis.mcf->backoff_min);
    }
}

/* A command that will not get a reply: its request is answered as for a lost
 * connection (503 redis_unavailable). */
static void ngx_http_sep_redis_fail_cmd(ngx_http_sep_cmd_t *cmd)
{
    ngx_http_sep_ctx_t *ctx = cmd->ctx;
    ngx_http_sep_reply_pt handler = cmd->handler;

    ngx_http_sep_cmd_release(cmd);
    if (ctx == NULL) {
        return;
    }
    ngx_http_sep_redis_answer(ctx, handler, NULL);
}

/*
 * The held commands leave the queue, in their order: when the attempt's setup was
 * answered (send) they go out; when it failed, each request gets its 503 now. A handler
 * run from here may detach other held commands, so the head is taken anew each time.
 */
static void ngx_http_sep_redis_release_held(ngx_uint_t send)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    ngx_http_sep_cmd_t *cmd;
    ngx_queue_t *q;

    while (!ngx_queue_empty(&redis->held)) {
        q = ngx_queue_head(&redis->held);
        ngx_queue_remove(q);
        cmd = ngx_queue_data(q, ngx_http_sep_cmd_t, queue);
        cmd->held = 0;
        if (send && redis->ac &&
            redisAsyncFormattedCommand(redis->ac, ngx_http_sep_redis_reply, cmd, cmd->formatted,
                                       cmd->formatted_len) == REDIS_OK) {
            if (cmd->script < 0) {
                redisFreeCommand(cmd->formatted);
                cmd->formatted = NULL;
            }
            ngx_queue_insert_tail(&redis->inflight, &cmd->queue);
            continue;
        }
        ngx_http_sep_redis_fail_cmd(cmd);
    }
}

static void ngx_http_sep_redis_timeout_handler(ngx_event_t *ev)
{
    ngx_http_sep_ctx_t *ctx = ev->data;
    ngx_http_request_t *r = ctx->request;
    ngx_connection_t *c = r->connection;
    ngx_http_sep_cmd_t *cmd = ctx->cmd;
    ngx_http_sep_reply_pt handler;

    if (cmd == NULL) {
        return;
    }
    handler = cmd->handler;
    if (cmd->held) { /* never sent: nothing will run late */
        ngx_queue_remove(&cmd->queue);
        cmd->held = 0;
        ngx_http_sep_cmd_release(cmd);
    } else {
        ngx_http_sep_cmd_orphan(cmd, ctx);
        ngx_http_sep_redis_reply_overdue(); /* the outage is logged there, once */
    }
    ctx->cmd = NULL;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0, "sep: no redis reply within %M ms",
                   ngx_http_sep_redis.mcf->redis_timeout);
    handler(r, ctx, NULL);
    ngx_http_run_posted_requests(c);
}

ngx_int_t ngx_http_sep_redis_command(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                     ngx_http_sep_reply_pt handler, ngx_int_t script, int argc,
                                     const char **argv, const size_t *argvlen)
{
    ngx_http_sep_redis_t *redis = &ngx_http_sep_redis;
    ngx_http_sep_cmd_t *cmd;
    ngx_msec_t since, wait;
    ngx_uint_t hold = 0;
    char *formatted = NULL;
    int len;

    /* Down: try at once unless an attempt started within MIN; then the next attempt
     * is due at that one + MIN (the backoff timer is pulled in; an idle worker keeps
     * its own). Either way the command waits for that attempt's outcome. */
    if (redis->ac == NULL && !redis->exiting) {
        since = ngx_current_msec - redis->last_attempt;
        if (since >= redis->mcf->backoff_min) {
            if (redis->reconnect.timer_set) {
                ngx_del_timer(&redis->reconnect);
            }
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, redis->log, 0, "sep: redis connect on demand");
            ngx_http_sep_redis_connect();
        } else {
            wait = redis->mcf->backoff_min - since;
            if (redis->reconnect.timer_set &&
                (ngx_msec_int_t)(redis->reconnect.timer.key - (ngx_current_msec + wait)) > 0) {
                ngx_del_timer(&redis->reconnect); /* re-adding a set timer may be a no-op */
            }
            if (!redis->reconnect.timer_set) {
                ngx_add_timer(&redis->reconnect, wait);
            }
            hold = 1;
        }
    }
    if (!hold && (redis->ac == NULL || redis->state == SEP_REDIS_DISCONNECTED)) {
        return NGX_DECLINED;
    }

    len = redisFormatCommandArgv(&formatted, argc, argv, argvlen);
    if (len < 0) {
        return NGX_ERROR;
    }
    cmd = ngx_http_sep_cmd_alloc();
    if (cmd == NULL) {
        redisFreeCommand(formatted);
        return NGX_ERROR;
    }
    cmd->ctx = ctx;
    cmd->handler = handler;
    cmd->script = script;
    cmd->formatted = formatted;
    cmd->formatted_len = (size_t)len;

    if (hold || redis->attempt) {
        /* held until the attempt's setup is answered: a request that stops waiting
         * (timeout, client gone) then has sent nothing */
        cmd->held = 1;
        ngx_queue_insert_tail(&redis->held, &cmd->queue);
    } else {
        if (redisAsyncFormattedCommand(redis->ac, ngx_http_sep_redis_reply, cmd, formatted,
                                       (size_t)len) != REDIS_OK) {
            ngx_http_sep_cmd_release(cmd);
            return NGX_DECLINED;
        }
        if (script < 0) {
            redisFreeCommand(formatted);
            cmd->formatted = NULL;
        }
        ngx_queue_insert_tail(&redis->inflight, &cmd->queue);
    }
    ctx->cmd = cmd;

    ctx->timeout.handler = ngx_http_sep_redis_timeout_handler;
    ctx->timeout.data = ctx;
    ctx->timeout.log = r->connection->log;
    ngx_add_timer(&ctx->timeout, redis->mcf->redis_timeout);
    return NGX_OK;
}

void ngx_http_sep_redis_detach(ngx_http_sep_ctx_t *ctx)
{
    ngx_http_sep_cmd_t *cmd = ctx->cmd;

    if (cmd && cmd->held) { /* never sent: forget it */
        ngx_queue_remove(&cmd->queue);
        cmd->held = 0;
        ngx_http_sep_cmd_release(cmd);
    } else if (cmd) {
        ngx_http_sep_cmd_orphan(cmd, ctx);
    }
    ctx->cmd = NULL;
    if (ctx->timeout.timer_set) {
        ngx_del_timer(&ctx->timeout);
    }
}
