/*
 * GET /v1/jobs/{id}/events: a job's progress as Server-Sent Events (text/event-stream).
 *
 * Fan-out: each nginx worker keeps ONE subscriber connection to Redis (beside the
 * command connection of ngx_http_sep_redis.c), opened when the first stream needs it.
 * A job followed by any number of clients of the worker is one channel here (an
 * rbtree node keyed by the job id, with a reference count and the list of its
 * streams) and one SUBSCRIBE {p}ev:{id} on that connection; each message is parsed and
 * rendered once and copied to every stream of the job. The last stream of a job to go
 * sends the UNSUBSCRIBE; a node whose UNSUBSCRIBE is in flight and gets a new stream is
 * subscribed again once Redis confirmed the UNSUBSCRIBE.
 *
 * A stream: WAITING (for its channel's SUBSCRIBE to be confirmed) -> READING (HGETALL
 * of the record on the command connection) -> LIVE. Subscribing before reading means
 * no event is lost: the record read is at least as new as every event published before
 * it, and events that come while it is read are kept and forwarded after it when they
 * are newer. Every event carries the job's `seq` (a per-job counter publish_job
 * increments, shared/lua/lib.lua) as its SSE id; a stream forwards only events newer
 * than what it sent. The current state goes first (as event progress, or the terminal
 * event of a finished job, which then ends the stream); a Last-Event-ID equal to the
 * record's seq skips it (a finished job then answers 204: EventSource stops
 * reconnecting). Errors before the stream starts are JSON like GET /v1/jobs/{id}
 * (404 job_not_found, 503 redis_*). A `: ping` comment every sep_events_heartbeat.
 * HEAD goes the same way up to the stream's head, which is then the whole answer.
 *
 * Redis lost (or silent: a PING on the subscriber connection every
 * SEP_EVENTS_KEEPALIVE gets its answer within sep_redis_timeout) ends every stream of
 * the worker with an `error` event; the next stream connects again (at most one
 * attempt per sep_redis_backoff MIN) and subscribes its job. A client that goes away
 * is noticed on the read side and leaves its channel at once. A worker that exits
 * (nginx -s reload, quit) ends its streams (clients reconnect to a new worker with
 * Last-Event-ID): the subscriber connection is marked idle, so nginx's graceful
 * shutdown hands it to its read handler with c->close set.
 */
#include "ngx_module/ngx_http_sep_module.h"
#include "ngx_module/ngx_http_sep_redis.h"

#include <sys/un.h>

#include "shared/sep_job.h"

#define SEP_EVENTS_KEEPALIVE 10000        /* ms between PINGs on the subscriber connection */
#define SEP_EVENTS_MAX_BUSY (1024 * 1024) /* unsent bytes after which a stream is dropped */
#define SEP_EVENTS_READ 16384

enum { SEP_SUB_DOWN = 0, SEP_SUB_CONNECTING, SEP_SUB_SETUP, SEP_SUB_UP };
enum { SEP_CHAN_NEW = 0, SEP_CHAN_SUBSCRIBING, SEP_CHAN_SUBSCRIBED, SEP_CHAN_UNSUBSCRIBING };
enum { SEP_STREAM_WAITING = 0, SEP_STREAM_READING, SEP_STREAM_LIVE };

typedef struct ngx_http_sep_chan_s ngx_http_sep_chan_t;
typedef struct ngx_http_sep_pending_s ngx_http_sep_pending_t;

struct ngx_http_sep_chan_s {
    ngx_str_node_t node; /* node.str: the job id (id[]) */
    u_char id[SEP_ID_LEN];
    ngx_queue_t streams;
    ngx_uint_t refs;
    ngx_uint_t state;
};

/* An event that came while the stream's record was read. */
struct ngx_http_sep_pending_s {
    ngx_http_sep_pending_t *next;
    int64_t seq;
    ngx_uint_t terminal;
    size_t len;
    u_char data[];
};

typedef struct {
    ngx_http_request_t *request;
    ngx_http_sep_ctx_t *ctx;
    ngx_http_sep_chan_t *chan; /* NULL once detached */
    ngx_queue_t queue;         /* in chan->streams */
    ngx_uint_t state;
    int64_t last_seq;   /* the newest event sent */
    int64_t client_seq; /* Last-Event-ID, or -1 */
    ngx_event_t timer;  /* WAITING: the subscription's deadline; LIVE: the heartbeat */
    ngx_msec_t heartbeat;
    ngx_http_sep_pending_t *pending, **pending_last;
    ngx_chain_t *free, *busy;
    unsigned headers_sent : 1;
    unsigned last_sent : 1;
    unsigned done : 1;
} ngx_http_sep_stream_t;

typedef struct {
    ngx_http_sep_main_conf_t *mcf;
    ngx_log_t *log;
    ngx_addr_t addr;
    ngx_peer_connection_t peer;
    ngx_connection_t *conn;
    ngx_uint_t state;
    ngx_uint_t setup_pending; /* AUTH replies still due */
    redisReader *reader;
    u_char *out; /* commands not written yet */
    size_t out_len, out_sent, out_cap;
    ngx_event_t connect_timer; /* connect + AUTH within sep_redis_timeout */
    ngx_event_t keepalive;     /* PING every SEP_EVENTS_KEEPALIVE */
    ngx_event_t pong_timer;    /* its answer within sep_redis_timeout */
    ngx_event_t retry;         /* a connect due after the backoff's MIN */
    ngx_msec_t last_attempt;
    ngx_uint_t attempted;
    ngx_rbtree_t tree;
    ngx_rbtree_node_t sentinel;
    ngx_uint_t channels;
    ngx_uint_t streams;
    ngx_log_t connect_log; /* at alert level: nginx's connect() errors (crit, error) left out */
    unsigned exiting : 1;
    unsigned down_logged : 1; /* an outage of this connection was logged */
    unsigned ping_pending : 1;
    unsigned ready : 1; /* init_process ran */
} ngx_http_sep_sub_t;

static ngx_http_sep_sub_t ngx_http_sep_sub;

static void ngx_http_sep_sub_connect(void);
static void ngx_http_sep_sub_lost(const char *why, ngx_uint_t exiting);
static void ngx_http_sep_sub_flush(void);
static void ngx_http_sep_stream_read_record(ngx_http_sep_stream_t *st);
static void ngx_http_sep_stream_end(ngx_http_sep_stream_t *st, ngx_int_t rc);
static void ngx_http_sep_stream_fail(ngx_http_sep_stream_t *st, ngx_uint_t status, const char *code,
                                     const char *message);
static ngx_int_t ngx_http_sep_stream_send(ngx_http_sep_stream_t *st, u_char *data, size_t len,
                                          ngx_uint_t last);

/* ---- the subscriber connection ------------------------------------------------ */

static ngx_int_t ngx_http_sep_sub_append(int argc, const char **argv, const size_t *argvlen)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    char *cmd;
    int len;
    u_char *p;
    size_t cap;

    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0) {
        return NGX_ERROR;
    }
    if (sub->out_sent == sub->out_len) {
        sub->out_sent = sub->out_len = 0;
    }
    if (sub->out_len + (size_t)len > sub->out_cap) {
        cap = ngx_max(sub->out_cap * 2, sub->out_len + (size_t)len + 4096);
        p = ngx_alloc(cap, sub->log);
        if (p == NULL) {
            redisFreeCommand(cmd);
            return NGX_ERROR;
        }
        if (sub->out) {
            ngx_memcpy(p, sub->out + sub->out_sent, sub->out_len - sub->out_sent);
            ngx_free(sub->out);
        }
        sub->out_len -= sub->out_sent;
        sub->out_sent = 0;
        sub->out = p;
        sub->out_cap = cap;
    }
    ngx_memcpy(sub->out + sub->out_len, cmd, (size_t)len);
    sub->out_len += (size_t)len;
    redisFreeCommand(cmd);
    return NGX_OK;
}

/* SUBSCRIBE / UNSUBSCRIBE {p}ev:{id} (written by ngx_http_sep_sub_flush). */
static ngx_int_t ngx_http_sep_sub_channel_cmd(const char *verb, ngx_http_sep_chan_t *ch)
{
    ngx_http_sep_main_conf_t *mcf = ngx_http_sep_sub.mcf;
    sep_str_t prefix = {(const char *)mcf->key_prefix.data, mcf->key_prefix.len};
    char key[SEP_KEY_MAX];
    const char *argv[2];
    size_t argvlen[2];

    argvlen[1] = sep_key_events(key, sizeof(key), prefix, (sep_str_t){(char *)ch->id, SEP_ID_LEN});
    if (argvlen[1] == 0) {
        return NGX_ERROR;
    }
    argv[0] = verb;
    argvlen[0] = ngx_strlen(verb);
    argv[1] = key;
    return ngx_http_sep_sub_append(2, argv, argvlen);
}

static void ngx_http_sep_sub_flush(void)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_connection_t *c = sub->conn;
    ssize_t n;

    if (c == NULL || sub->state < SEP_SUB_SETUP) {
        return; /* written once connected */
    }
    while (sub->out_sent < sub->out_len) {
        n = c->send(c, sub->out + sub->out_sent, sub->out_len - sub->out_sent);
        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                ngx_http_sep_sub_lost("cannot wait for the socket", 0);
            }
            return;
        }
        if (n == NGX_ERROR || n <= 0) {
            ngx_http_sep_sub_lost("write failed", 0);
            return;
        }
        sub->out_sent += (size_t)n;
    }
    sub->out_sent = sub->out_len = 0;
}

static ngx_http_sep_chan_t *ngx_http_sep_chan_lookup(const u_char *id, size_t len)
{
    ngx_str_t key = {len, (u_char *)id};
    ngx_str_node_t *n;

    n = ngx_str_rbtree_lookup(&ngx_http_sep_sub.tree, &key, ngx_crc32_short(key.data, key.len));
    return n ? (ngx_http_sep_chan_t *)n : NULL;
}

static void ngx_http_sep_chan_free(ngx_http_sep_chan_t *ch)
{
    ngx_rbtree_delete(&ngx_http_sep_sub.tree, &ch->node.node);
    ngx_http_sep_sub.channels--;
    ngx_free(ch);
}

/* Subscribes a channel that is not (or no longer) subscribed, once the connection is. */
static void ngx_http_sep_chan_subscribe(ngx_http_sep_chan_t *ch)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;

    ch->state = SEP_CHAN_NEW;
    if (sub->state != SEP_SUB_UP) {
        return; /* sent when the connection is set up */
    }
    if (ngx_http_sep_sub_channel_cmd("SUBSCRIBE", ch) == NGX_OK) {
        ch->state = SEP_CHAN_SUBSCRIBING;
    }
}

/* The last stream of a channel is gone. */
static void ngx_http_sep_chan_release(ngx_http_sep_chan_t *ch)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;

    if (ch->state == SEP_CHAN_UNSUBSCRIBING) {
        return; /* freed when Redis confirms */
    }
    if (sub->state == SEP_SUB_UP &&
        (ch->state == SEP_CHAN_SUBSCRIBING || ch->state == SEP_CHAN_SUBSCRIBED) &&
        ngx_http_sep_sub_channel_cmd("UNSUBSCRIBE", ch) == NGX_OK) {
        ch->state = SEP_CHAN_UNSUBSCRIBING;
        ngx_http_sep_sub_flush();
        return;
    }
    ngx_http_sep_chan_free(ch); /* never sent, or the connection is gone */
}

/* Every stream of every channel ends (Redis lost, worker exiting); the channels go. */
static void ngx_http_sep_sub_end_all(ngx_uint_t exiting)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_rbtree_node_t *node;
    ngx_http_sep_chan_t *ch;
    ngx_http_sep_stream_t *st;
    ngx_queue_t *q;

    while (sub->tree.root != sub->tree.sentinel) {
        node = ngx_rbtree_min(sub->tree.root, sub->tree.sentinel);
        ch = (ngx_http_sep_chan_t *)node;
        ch->state = SEP_CHAN_NEW; /* nothing to unsubscribe on a lost connection */
        ch->refs++;               /* held while its streams end */
        while (!ngx_queue_empty(&ch->streams)) {
            q = ngx_queue_head(&ch->streams);
            st = ngx_queue_data(q, ngx_http_sep_stream_t, queue);
            if (exiting && st->headers_sent) {
                ngx_http_sep_stream_end(st, NGX_OK);
            } else if (exiting) {
                ngx_http_sep_stream_fail(st, NGX_HTTP_SERVICE_UNAVAILABLE, "shutting_down",
                                         "the server is restarting; retry at once");
            } else {
                ngx_http_sep_stream_fail(st, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                         "the job store is unreachable; retry later");
            }
        }
        ngx_http_sep_chan_free(ch);
    }
}

static void ngx_http_sep_sub_close(void)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;

    if (sub->conn) {
        ngx_close_connection(sub->conn);
        sub->conn = NULL;
    }
    if (sub->reader) {
        redisReaderFree(sub->reader);
        sub->reader = NULL;
    }
    sub->out_len = sub->out_sent = 0;
    sub->state = SEP_SUB_DOWN;
    sub->setup_pending = 0;
    sub->ping_pending = 0;
    if (sub->connect_timer.timer_set) {
        ngx_del_timer(&sub->connect_timer);
    }
    if (sub->keepalive.timer_set) {
        ngx_del_timer(&sub->keepalive);
    }
    if (sub->pong_timer.timer_set) {
        ngx_del_timer(&sub->pong_timer);
    }
}

static void ngx_http_sep_sub_lost(const char *why, ngx_uint_t exiting)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;

    if (sub->state == SEP_SUB_UP && !exiting) {
        ngx_log_error(NGX_LOG_WARN, sub->log, 0,
                      "sep: redis subscriber connection lost: %s; %ui event streams end", why,
                      sub->streams);
        sub->down_logged = 1;
    } else if (!exiting && !sub->down_logged) {
        /* once per outage, as for the command connection; the attempts in between at
         * debug level */
        ngx_log_error(NGX_LOG_WARN, sub->log, 0,
                      "sep: redis %V: subscriber connection failed: %s; event streams get "
                      "503 until it is back",
                      &sub->mcf->redis_addr, why);
        sub->down_logged = 1;
    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, sub->log, 0, "sep: redis subscriber: %s", why);
    }
    ngx_http_sep_sub_close();
    if (exiting) {
        sub->exiting = 1;
    }
    ngx_http_sep_sub_end_all(exiting);
}

/* The connection is set up: every channel waiting for it is subscribed. */
static void ngx_http_sep_sub_up(void)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_rbtree_node_t *node;
    ngx_http_sep_chan_t *ch;

    sub->state = SEP_SUB_UP;
    if (sub->down_logged) {
        ngx_log_error(NGX_LOG_WARN, sub->log, 0, "sep: redis %V: subscriber connection is back",
                      &sub->mcf->redis_addr);
        sub->down_logged = 0;
    }
    if (sub->connect_timer.timer_set) {
        ngx_del_timer(&sub->connect_timer);
    }
    ngx_add_timer(&sub->keepalive, SEP_EVENTS_KEEPALIVE);
    if (sub->tree.root != sub->tree.sentinel) {
        for (node = ngx_rbtree_min(sub->tree.root, sub->tree.sentinel); node;
             node = ngx_rbtree_next(&sub->tree, node)) {
            ch = (ngx_http_sep_chan_t *)node;
            if (ch->state == SEP_CHAN_NEW) {
                ngx_http_sep_chan_subscribe(ch);
            }
        }
    }
    ngx_http_sep_sub_flush();
}

/* ---- events ------------------------------------------------------------------- */

static int64_t ngx_http_sep_parse_seq(const char *s, size_t len)
{
    int64_t v = 0;
    size_t i;

    if (len == 0 || len > 18) {
        return -1;
    }
    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static ngx_uint_t ngx_http_sep_terminal_name(sep_str_t ev)
{
    return (ev.len == 9 && ngx_strncmp(ev.ptr, "completed", 9) == 0) ||
           (ev.len == 6 && ngx_strncmp(ev.ptr, "failed", 6) == 0) ||
           (ev.len == 8 && ngx_strncmp(ev.ptr, "canceled", 8) == 0);
}

/* "event: NAME\nid: SEQ\ndata: RECORD\n\n" for job, from pool (ngx_alloc'ed when pool
 * is NULL); *len is its length. NULL on error. */
static u_char *ngx_http_sep_render_frame(ngx_pool_t *pool, sep_str_t event, int64_t seq,
                                         sep_job_t *job, size_t *len)
{
    size_t bound = sep_job_json_bound(job);
    size_t cap = sizeof("event: \nid: \ndata: \n\n") + event.len + NGX_INT64_LEN + bound;
    u_char *buf, *p;
    size_t n;

    buf = pool ? ngx_pnalloc(pool, cap) : ngx_alloc(cap, ngx_http_sep_sub.log);
    if (buf == NULL) {
        return NULL;
    }
    p = ngx_sprintf(buf, "event: %*s\nid: %L\ndata: ", event.len, event.ptr, seq);
    n = sep_job_render_json(job, (char *)p, buf + cap - p - 2);
    if (n == 0) {
        if (pool == NULL) {
            ngx_free(buf);
        }
        return NULL;
    }
    p += n;
    *p++ = '\n';
    *p++ = '\n';
    *len = p - buf;
    return buf;
}

/* A message on {p}ev:{id}: parsed and rendered once, copied to the channel's streams. */
static void ngx_http_sep_sub_message(ngx_http_sep_chan_t *ch, const char *msg, size_t msglen)
{
    ngx_http_sep_stream_t *st;
    ngx_http_sep_pending_t *pe;
    ngx_queue_t *q, *next;
    sep_event_t ev;
    json_t *seqv;
    int64_t seq = -1;
    ngx_uint_t terminal;
    u_char *frame;
    size_t len;
    ngx_int_t rc;

    if (ch->state != SEP_CHAN_SUBSCRIBED || ngx_queue_empty(&ch->streams)) {
        return;
    }
    if (sep_event_parse(&ev, msg, msglen) != 0) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_sep_sub.log, 0, "sep: unreadable event on job %*s",
                      (size_t)SEP_ID_LEN, ch->id);
        return;
    }
    seqv = json_object_get(json_object_get(ev.doc, "job"), "seq");
    if (json_is_string(seqv)) {
        seq = ngx_http_sep_parse_seq(json_string_value(seqv), json_string_length(seqv));
    }
    terminal = ngx_http_sep_terminal_name(ev.event);
    if (!terminal && !(ev.event.len == 8 && ngx_strncmp(ev.event.ptr, "progress", 8) == 0)) {
        ngx_log_error(NGX_LOG_ERR, ngx_http_sep_sub.log, 0,
                      "sep: event of an unknown kind on job %*s dropped", (size_t)SEP_ID_LEN,
                      ch->id);
        sep_event_clear(&ev);
        return;
    }
    frame = ngx_http_sep_render_frame(NULL, ev.event, seq, &ev.job, &len);
    sep_event_clear(&ev);
    if (frame == NULL || seq < 0) {
        if (frame) {
            ngx_free(frame);
        }
        ngx_log_error(NGX_LOG_ERR, ngx_http_sep_sub.log, 0,
                      "sep: event without a seq on job %*s dropped", (size_t)SEP_ID_LEN, ch->id);
        return;
    }

    ch->refs++; /* streams may end while being fed */
    for (q = ngx_queue_head(&ch->streams); q != ngx_queue_sentinel(&ch->streams); q = next) {
        next = ngx_queue_next(q);
        st = ngx_queue_data(q, ngx_http_sep_stream_t, queue);
        if (st->state == SEP_STREAM_READING) {
            pe = ngx_palloc(st->request->pool, sizeof(ngx_http_sep_pending_t) + len);
            if (pe == NULL) {
                continue;
            }
            pe->next = NULL;
            pe->seq = seq;
            pe->terminal = terminal;
            pe->len = len;
            ngx_memcpy(pe->data, frame, len);
            *st->pending_last = pe;
            st->pending_last = &pe->next;
            continue;
        }
        if (st->state != SEP_STREAM_LIVE || seq <= st->last_seq) {
            continue;
        }
        st->last_seq = seq;
        rc = ngx_http_sep_stream_send(st, frame, len, terminal);
        if (rc == NGX_ERROR || terminal) {
            ngx_http_sep_stream_end(st, rc);
        }
    }
    ngx_free(frame);
    if (--ch->refs == 0) {
        ngx_http_sep_chan_release(ch);
    }
}

static void ngx_http_sep_sub_reply(redisReply *rr)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_http_sep_main_conf_t *mcf = sub->mcf;
    ngx_http_sep_chan_t *ch;
    ngx_http_sep_stream_t *st;
    ngx_queue_t *q, *next;
    redisReply *kind, *name;
    size_t plen = mcf->key_prefix.len + 3;

    if (sub->setup_pending) { /* AUTH */
        sub->setup_pending--;
        if (rr->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, sub->log, 0, "sep: redis subscriber AUTH: %s", rr->str);
            ngx_http_sep_sub_lost("AUTH refused", 0);
            return;
        }
        if (sub->setup_pending == 0) {
            ngx_http_sep_sub_up();
        }
        return;
    }
    if (rr->type == REDIS_REPLY_STATUS || rr->type == REDIS_REPLY_ERROR) {
        /* PONG outside subscribed mode; an error is logged */
        if (rr->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, sub->log, 0, "sep: redis subscriber: %s", rr->str);
        }
        sub->ping_pending = 0;
        if (sub->pong_timer.timer_set) {
            ngx_del_timer(&sub->pong_timer);
        }
        return;
    }
    if (rr->type != REDIS_REPLY_ARRAY || rr->elements < 2 ||
        rr->element[0]->type != REDIS_REPLY_STRING) {
        return;
    }
    kind = rr->element[0];
    if (kind->len == 4 && ngx_strncmp(kind->str, "pong", 4) == 0) {
        sub->ping_pending = 0;
        if (sub->pong_timer.timer_set) {
            ngx_del_timer(&sub->pong_timer);
        }
        return;
    }
    name = rr->element[1];
    if (name->type != REDIS_REPLY_STRING || name->len != plen + SEP_ID_LEN ||
        ngx_strncmp(name->str, mcf->key_prefix.data, mcf->key_prefix.len) != 0) {
        return;
    }
    ch = ngx_http_sep_chan_lookup((u_char *)name->str + plen, SEP_ID_LEN);
    if (ch == NULL) {
        return;
    }

    if (kind->len == 7 && ngx_strncmp(kind->str, "message", 7) == 0 && rr->elements == 3 &&
        rr->element[2]->type == REDIS_REPLY_STRING) {
        ngx_http_sep_sub_message(ch, rr->element[2]->str, rr->element[2]->len);

    } else if (kind->len == 9 && ngx_strncmp(kind->str, "subscribe", 9) == 0) {
        if (ch->state != SEP_CHAN_SUBSCRIBING) {
            return; /* an UNSUBSCRIBE follows */
        }
        ch->state = SEP_CHAN_SUBSCRIBED;
        /* subscribed: now each waiting stream reads the record */
        ch->refs++;
        for (q = ngx_queue_head(&ch->streams); q != ngx_queue_sentinel(&ch->streams); q = next) {
            next = ngx_queue_next(q);
            st = ngx_queue_data(q, ngx_http_sep_stream_t, queue);
            if (st->state == SEP_STREAM_WAITING) {
                ngx_http_sep_stream_read_record(st);
            }
        }
        if (--ch->refs == 0) {
            ngx_http_sep_chan_release(ch);
        }

    } else if (kind->len == 11 && ngx_strncmp(kind->str, "unsubscribe", 11) == 0) {
        if (ch->state != SEP_CHAN_UNSUBSCRIBING) {
            return;
        }
        if (ch->refs == 0) {
            ngx_http_sep_chan_free(ch);
            return;
        }
        ngx_http_sep_chan_subscribe(ch); /* streams came meanwhile */
        ngx_http_sep_sub_flush();
    }
}

static void ngx_http_sep_sub_read_handler(ngx_event_t *rev)
{
    ngx_connection_t *c = rev->data;
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    u_char buf[SEP_EVENTS_READ];
    void *reply;
    ssize_t n;

    if (c->close) { /* graceful shutdown (the connection is marked idle) */
        ngx_http_sep_sub_lost("worker is shutting down", 1);
        return;
    }
    if (sub->state == SEP_SUB_CONNECTING) {
        return; /* the write event reports the connect */
    }
    for (;;) {
        n = c->recv(c, buf, sizeof(buf));
        if (n == NGX_AGAIN) {
            break;
        }
        if (n == 0 || n == NGX_ERROR) {
            ngx_http_sep_sub_lost(n == 0 ? "closed by redis" : "read failed", 0);
            return;
        }
        if (redisReaderFeed(sub->reader, (const char *)buf, (size_t)n) != REDIS_OK) {
            ngx_http_sep_sub_lost("protocol error", 0);
            return;
        }
        for (;;) {
            reply = NULL;
            if (redisReaderGetReply(sub->reader, &reply) != REDIS_OK) {
                ngx_http_sep_sub_lost("protocol error", 0);
                return;
            }
            if (reply == NULL) {
                break;
            }
            ngx_http_sep_sub_reply(reply);
            freeReplyObject(reply);
            if (sub->state == SEP_SUB_DOWN || sub->conn != c) {
                return; /* the connection went away while handling it */
            }
        }
    }
    if (ngx_handle_read_event(rev, 0) != NGX_OK) {
        ngx_http_sep_sub_lost("cannot wait for the socket", 0);
    }
}

static void ngx_http_sep_sub_write_handler(ngx_event_t *wev)
{
    ngx_connection_t *c = wev->data;
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_http_sep_main_conf_t *mcf = sub->mcf;
    int err = 0;
    socklen_t len = sizeof(err);
    const char *argv[3];
    size_t argvlen[3];
    int n;

    if (c->close) {
        ngx_http_sep_sub_lost("worker is shutting down", 1);
        return;
    }
    if (sub->state == SEP_SUB_CONNECTING) {
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, (void *)&err, &len) == -1) {
            err = ngx_socket_errno;
        }
        if (err) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, sub->log, 0,
                           "sep: redis subscriber connect failed: errno %d", err);
            ngx_http_sep_sub_lost("connect failed", 0);
            return;
        }
        sub->state = SEP_SUB_SETUP;
        if (mcf->redis_password.len) {
            /* AUTH [user] password, first on the wire: before any SUBSCRIBE */
            n = 0;
            argv[n] = "AUTH";
            argvlen[n++] = 4;
            if (mcf->redis_user.len) { /* an ACL user */
                argv[n] = (const char *)mcf->redis_user.data;
                argvlen[n++] = mcf->redis_user.len;
            }
            argv[n] = (const char *)mcf->redis_password.data;
            argvlen[n++] = mcf->redis_password.len;
            if (ngx_http_sep_sub_append(n, argv, argvlen) == NGX_OK) {
                sub->setup_pending = 1;
            }
        }
        if (sub->setup_pending == 0) {
            ngx_http_sep_sub_up();
            return;
        }
    }
    ngx_http_sep_sub_flush();
}

static void ngx_http_sep_sub_connect_timeout(ngx_event_t *ev)
{
    ngx_http_sep_sub_lost("connect timed out", 0);
}

static void ngx_http_sep_sub_keepalive_handler(ngx_event_t *ev)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    const char *argv[1] = {"PING"};
    size_t argvlen[1] = {4};

    if (sub->state != SEP_SUB_UP) {
        return;
    }
    if (!sub->ping_pending && ngx_http_sep_sub_append(1, argv, argvlen) == NGX_OK) {
        sub->ping_pending = 1;
        ngx_add_timer(&sub->pong_timer, sub->mcf->redis_timeout);
        ngx_http_sep_sub_flush();
    }
    if (sub->state == SEP_SUB_UP) {
        ngx_add_timer(&sub->keepalive, SEP_EVENTS_KEEPALIVE);
    }
}

static void ngx_http_sep_sub_pong_timeout(ngx_event_t *ev)
{
    ngx_http_sep_sub_lost("no answer to PING", 0);
}

static void ngx_http_sep_sub_retry_handler(ngx_event_t *ev)
{
    if (ngx_http_sep_sub.state == SEP_SUB_DOWN && ngx_http_sep_sub.channels > 0) {
        ngx_http_sep_sub_connect();
    }
}

static void ngx_http_sep_sub_connect(void)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_connection_t *c;
    ngx_int_t rc;

    sub->last_attempt = ngx_current_msec;
    sub->attempted = 1;
    ngx_memzero(&sub->peer, sizeof(ngx_peer_connection_t));
    sub->peer.sockaddr = sub->addr.sockaddr;
    sub->peer.socklen = sub->addr.socklen;
    sub->peer.name = &sub->addr.name;
    sub->peer.get = ngx_event_get_peer;
    sub->peer.log = &sub->connect_log; /* nginx's own connect() error line: see sub_lost */
    sub->peer.log_error = NGX_ERROR_ERR;

    rc = ngx_event_connect_peer(&sub->peer);
    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (sub->peer.connection) {
            ngx_close_connection(sub->peer.connection);
            sub->peer.connection = NULL;
        }
        ngx_http_sep_sub_lost("connect failed", 0);
        return;
    }
    c = sub->peer.connection;
    c->data = sub;
    c->idle = 1; /* graceful shutdown: nginx calls the read handler with c->close */
    c->read->handler = ngx_http_sep_sub_read_handler;
    c->write->handler = ngx_http_sep_sub_write_handler;
    c->log = sub->log;
    c->read->log = sub->log;
    c->write->log = sub->log;
    sub->conn = c;
    sub->reader = redisReaderCreate();
    if (sub->reader == NULL) {
        ngx_http_sep_sub_lost("out of memory", 0);
        return;
    }
    sub->state = SEP_SUB_CONNECTING;
    ngx_add_timer(&sub->connect_timer, sub->mcf->redis_timeout);
    if (rc == NGX_OK) { /* connected at once (a unix socket) */
        ngx_http_sep_sub_write_handler(c->write);
    }
}

/* A stream needs the connection: connect now, or after MIN since the last attempt. */
static void ngx_http_sep_sub_need(void)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_msec_t since;

    if (sub->state != SEP_SUB_DOWN || sub->retry.timer_set) {
        return;
    }
    since = ngx_current_msec - sub->last_attempt;
    if (!sub->attempted || since >= sub->mcf->backoff_min) {
        ngx_http_sep_sub_connect();
    } else {
        ngx_add_timer(&sub->retry, sub->mcf->backoff_min - since);
    }
}

/* ---- streams ------------------------------------------------------------------- */

static void ngx_http_sep_stream_detach(ngx_http_sep_stream_t *st)
{
    ngx_http_sep_chan_t *ch = st->chan;

    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }
    if (st->timer.posted) {
        ngx_delete_posted_event(&st->timer);
    }
    st->pending = NULL; /* pool memory: freed with the request */
    st->pending_last = &st->pending;
    if (ch == NULL) {
        return;
    }
    st->chan = NULL;
    ngx_queue_remove(&st->queue);
    ngx_http_sep_sub.streams--;
    if (--ch->refs == 0) {
        ngx_http_sep_chan_release(ch);
    }
}

static void ngx_http_sep_stream_cleanup(void *data)
{
    ngx_http_sep_stream_t *st = data;

    st->done = 1;
    ngx_http_sep_stream_detach(st);
}

static void ngx_http_sep_stream_end(ngx_http_sep_stream_t *st, ngx_int_t rc)
{
    ngx_http_request_t *r = st->request;
    ngx_connection_t *c;
    ngx_chain_t out;
    ngx_buf_t *b;

    if (st->done) {
        return;
    }
    st->done = 1;
    ngx_http_sep_stream_detach(st);
    ngx_http_sep_redis_detach(st->ctx);
    if ((rc == NGX_OK || rc == NGX_AGAIN) && st->headers_sent && !st->last_sent &&
        !r->connection->error) {
        /* the end of the body, unless the terminal event carried it */
        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            rc = NGX_ERROR;
        } else {
            st->last_sent = 1;
            b->last_buf = 1;
            b->last_in_chain = 1;
            out.buf = b;
            out.next = NULL;
            rc = ngx_http_output_filter(r, &out);
        }
    }
    c = r->connection;
    ngx_http_finalize_request(r, rc);
    /* ended from another connection's event (a message, Redis lost): what the
     * finalization posted (a termination) runs now */
    ngx_http_run_posted_requests(c);
}

/* An error before the stream started is JSON (status; a 503 has Retry-After); after
 * it, an `error` event whose data is that JSON, and the stream ends. */
static void ngx_http_sep_stream_fail(ngx_http_sep_stream_t *st, ngx_uint_t status, const char *code,
                                     const char *message)
{
    ngx_http_request_t *r = st->request;
    ngx_connection_t *c = r->connection;
    u_char frame[512], *p;
    ngx_int_t rc;

    if (st->done) {
        return;
    }
    if (!st->headers_sent) {
        st->done = 1;
        ngx_http_sep_stream_detach(st);
        ngx_http_sep_redis_detach(st->ctx);
        rc = ngx_http_sep_send_error(r, status, code, "%s", message);
        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
        return;
    }
    p = ngx_snprintf(frame, sizeof(frame),
                     "event: error\ndata: {\"error\": {\"code\": \"%s\", \"message\": \"%s\"}}\n\n",
                     code, message);
    rc = ngx_http_sep_stream_send(st, frame, p - frame, 1);
    st->done = 1;
    ngx_http_sep_stream_detach(st);
    ngx_http_sep_redis_detach(st->ctx);
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

/* Writes what is left of the stream's output (the client's socket was full). */
static void ngx_http_sep_stream_writer(ngx_http_request_t *r)
{
    ngx_http_sep_ctx_t *ctx = ngx_http_get_module_ctx(r, ngx_http_sep_module);
    ngx_http_sep_stream_t *st = ctx ? ctx->stream : NULL;
    ngx_connection_t *c = r->connection;
    ngx_http_core_loc_conf_t *clcf;
    ngx_int_t rc;

    if (st == NULL || st->done) {
        return;
    }
    if (c->write->timedout) {
        c->timedout = 1;
        ngx_http_sep_stream_end(st, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }
    rc = ngx_http_output_filter(r, NULL);
    ngx_chain_update_chains(r->pool, &st->free, &st->busy, NULL,
                            (ngx_buf_tag_t)&ngx_http_sep_module);
    if (rc == NGX_ERROR) {
        ngx_http_sep_stream_end(st, NGX_ERROR);
        return;
    }
    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }
    if (c->buffered) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
        ngx_add_timer(c->write, clcf->send_timeout);
        if (ngx_handle_write_event(c->write, clcf->send_lowat) != NGX_OK) {
            ngx_http_sep_stream_end(st, NGX_ERROR);
        }
    }
}

/* Sends one frame (copied into a buffer of the stream's own) with a flush; `last` ends
 * the body with it. */
static ngx_int_t ngx_http_sep_stream_send(ngx_http_sep_stream_t *st, u_char *data, size_t len,
                                          ngx_uint_t last)
{
    ngx_http_request_t *r = st->request;
    ngx_connection_t *c = r->connection;
    ngx_http_core_loc_conf_t *clcf;
    ngx_chain_t *cl, *busy;
    ngx_buf_t *b;
    size_t size, pending = 0;
    ngx_int_t rc;

    if (c->error) {
        return NGX_ERROR;
    }
    for (busy = st->busy; busy; busy = busy->next) {
        pending += ngx_buf_size(busy->buf);
    }
    if (pending + len > SEP_EVENTS_MAX_BUSY) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "sep: event stream client reads too slowly (%uz bytes unsent): closing",
                      pending);
        return NGX_ERROR;
    }
    cl = ngx_chain_get_free_buf(r->pool, &st->free);
    if (cl == NULL) {
        return NGX_ERROR;
    }
    b = cl->buf;
    if (b->start == NULL || (size_t)(b->end - b->start) < len) {
        size = ngx_max(len, (size_t)2048);
        b->start = ngx_palloc(r->pool, size);
        if (b->start == NULL) {
            return NGX_ERROR;
        }
        b->end = b->start + size;
    }
    b->pos = b->start;
    b->last = ngx_cpymem(b->pos, data, len);
    b->temporary = 1;
    b->flush = 1;
    b->tag = (ngx_buf_tag_t)&ngx_http_sep_module;
    b->last_buf = last && r == r->main;
    b->last_in_chain = last;
    if (last) {
        st->last_sent = 1;
    }

    rc = ngx_http_output_filter(r, cl);
    ngx_chain_update_chains(r->pool, &st->free, &st->busy, &cl,
                            (ngx_buf_tag_t)&ngx_http_sep_module);
    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }
    if (!last && c->buffered && !c->write->timer_set) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
        ngx_add_timer(c->write, clcf->send_timeout);
        if (ngx_handle_write_event(c->write, clcf->send_lowat) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    return rc;
}

static void ngx_http_sep_stream_timer_handler(ngx_event_t *ev)
{
    ngx_http_sep_stream_t *st = ev->data;
    ngx_http_request_t *r = st->request;
    ngx_connection_t *c = r->connection;
    static u_char ping[] = ": ping\n\n";

    if (st->state != SEP_STREAM_LIVE) {
        ngx_http_sep_stream_fail(st, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_timeout",
                                 "the job store did not answer in time; retry later");
    } else if (ngx_http_sep_stream_send(st, ping, sizeof(ping) - 1, 0) == NGX_ERROR) {
        ngx_http_sep_stream_end(st, NGX_ERROR);
    } else {
        ngx_add_timer(&st->timer, st->heartbeat);
    }
    ngx_http_run_posted_requests(c);
}

static ngx_int_t ngx_http_sep_stream_headers(ngx_http_sep_stream_t *st)
{
    ngx_http_request_t *r = st->request;
    ngx_table_elt_t *h;
    ngx_int_t rc;

    r->headers_out.status = NGX_HTTP_OK;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;
    ngx_http_clear_content_length(r);
    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");
    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    st->ctx->json = 1; /* not an error page to replace */
    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        return NGX_ERROR;
    }
    st->headers_sent = 1;
    if (r->header_only) {
        /* HEAD: the stream's head is the whole answer */
        st->last_sent = 1;
        return NGX_OK;
    }
#if (NGX_HTTP_V2)
    if (r->stream == NULL)
#endif
    {
        (void)ngx_tcp_nodelay(r->connection); /* events are small and want out at once */
    }
    /* the head goes out now, also when no event follows yet */
    rc = ngx_http_send_special(r, NGX_HTTP_FLUSH);
    return rc == NGX_ERROR ? NGX_ERROR : NGX_OK;
}

static void ngx_http_sep_stream_record(ngx_http_request_t *r, ngx_http_sep_ctx_t *ctx,
                                       redisReply *reply)
{
    ngx_http_sep_stream_t *st = ctx->stream;
    ngx_http_sep_pending_t *pe;
    sep_job_t job;
    sep_job_status_t status;
    sep_str_t event;
    int64_t seq = 0;
    u_char *frame;
    size_t len, i;
    ngx_uint_t terminal;
    ngx_int_t rc;

    if (st == NULL || st->done) {
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        if (reply == NULL && ctx->timeout.timedout) {
            ngx_http_sep_stream_fail(st, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_timeout",
                                     "the job store did not answer in time; retry later");
        } else if (reply && ngx_http_sep_redis_not_ready(reply)) {
            ngx_http_sep_stream_fail(st, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_loading",
                                     "the job store is starting up; retry later");
        } else {
            ngx_http_sep_stream_fail(st, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                     "the job store is unreachable; retry later");
        }
        return;
    }
    if (ngx_http_sep_job_from_reply(r, reply, 0, &job) != NGX_OK) {
        ngx_http_sep_stream_end(st, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    if (!sep_job_exists(&job)) {
        sep_job_clear(&job);
        st->done = 1;
        ngx_http_sep_stream_detach(st);
        rc = ngx_http_sep_send_error(r, NGX_HTTP_NOT_FOUND, "job_not_found",
                                     "no job with this id (it may have expired)");
        ngx_http_finalize_request(r, rc);
        return;
    }
    for (i = 0; i + 1 < reply->elements; i += 2) {
        redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && k->len == 3 && ngx_strncmp(k->str, "seq", 3) == 0 &&
            v->type == REDIS_REPLY_STRING) {
            seq = ngx_http_sep_parse_seq(v->str, v->len);
            if (seq < 0) {
                seq = 0;
            }
        }
    }
    status = sep_job_status(&job);
    terminal = status == SEP_STATUS_COMPLETED || status == SEP_STATUS_FAILED ||
               status == SEP_STATUS_CANCELED;
    event =
        terminal ? sep_str_from_cstr(sep_job_status_name(status)) : sep_str_from_cstr("progress");

    if (st->client_seq == seq && terminal) {
        /* the client saw the end already: 204 tells EventSource to stop */
        sep_job_clear(&job);
        st->done = 1;
        ngx_http_sep_stream_detach(st);
        r->headers_out.status = NGX_HTTP_NO_CONTENT;
        r->header_only = 1;
        r->headers_out.content_length_n = 0;
        st->ctx->json = 1;
        ngx_http_finalize_request(r, ngx_http_send_header(r));
        return;
    }
    frame = NULL;
    len = 0;
    if (st->client_seq != seq) {
        /* rendered into memory freed once it is copied: its bound (every field at its
         * longest) is a large allocation a pool would keep for the stream's life */
        frame = ngx_http_sep_render_frame(NULL, event, seq, &job, &len);
        if (frame == NULL) {
            sep_job_clear(&job);
            ngx_http_sep_stream_end(st, NGX_HTTP_INTERNAL_SERVER_ERROR);
            return;
        }
    }
    sep_job_clear(&job);

    if (ngx_http_sep_stream_headers(st) != NGX_OK) {
        if (frame) {
            ngx_free(frame);
        }
        ngx_http_sep_stream_end(st, NGX_ERROR);
        return;
    }
    if (r->header_only) {
        if (frame) {
            ngx_free(frame);
        }
        ngx_http_sep_stream_end(st, NGX_OK);
        return;
    }
    st->state = SEP_STREAM_LIVE;
    st->last_seq = seq;
    if (frame) {
        rc = ngx_http_sep_stream_send(st, frame, len, terminal);
        ngx_free(frame);
        if (rc == NGX_ERROR || terminal) {
            ngx_http_sep_stream_end(st, rc);
            return;
        }
    }
    /* what came while the record was read, when newer */
    for (pe = st->pending; pe; pe = pe->next) {
        if (pe->seq <= st->last_seq) {
            continue;
        }
        st->last_seq = pe->seq;
        rc = ngx_http_sep_stream_send(st, pe->data, pe->len, pe->terminal);
        if (rc == NGX_ERROR || pe->terminal) {
            ngx_http_sep_stream_end(st, rc);
            return;
        }
    }
    st->pending = NULL;
    st->pending_last = &st->pending;
    ngx_add_timer(&st->timer, st->heartbeat);
}

/* The channel is subscribed: read the current record (HGETALL, as GET does). */
static void ngx_http_sep_stream_read_record(ngx_http_sep_stream_t *st)
{
    ngx_http_request_t *r = st->request;
    ngx_http_sep_main_conf_t *mcf = ngx_http_sep_sub.mcf;
    sep_str_t prefix = {(const char *)mcf->key_prefix.data, mcf->key_prefix.len};
    char key[SEP_KEY_MAX];
    const char *argv[2];
    size_t argvlen[2];
    ngx_int_t rc;

    if (st->timer.timer_set) {
        ngx_del_timer(&st->timer);
    }
    st->state = SEP_STREAM_READING;
    argv[0] = "HGETALL";
    argvlen[0] = 7;
    argv[1] = key;
    argvlen[1] =
        sep_key_job(key, sizeof(key), prefix, (sep_str_t){(char *)st->chan->id, SEP_ID_LEN});
    rc = ngx_http_sep_redis_command(r, st->ctx, ngx_http_sep_stream_record, -1, 2, argv, argvlen);
    if (rc != NGX_OK) {
        ngx_http_sep_stream_fail(st, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                 "the job store is unreachable; retry later");
    }
}

/* Last-Event-ID: the seq of the last event the client got, or -1. */
static int64_t ngx_http_sep_last_event_id(ngx_http_request_t *r)
{
    ngx_list_part_t *part = &r->headers_in.headers.part;
    ngx_table_elt_t *h = part->elts;
    ngx_uint_t i;

    for (i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }
            part = part->next;
            h = part->elts;
            i = 0;
        }
        if (h[i].key.len == 13 &&
            ngx_strncasecmp(h[i].key.data, (u_char *)"Last-Event-ID", 13) == 0) {
            return ngx_http_sep_parse_seq((const char *)h[i].value.data, h[i].value.len);
        }
    }
    return -1;
}

ngx_int_t ngx_http_sep_events_handler(ngx_http_request_t *r, ngx_str_t *id)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    ngx_http_sep_loc_conf_t *lcf = ngx_http_get_module_loc_conf(r, ngx_http_sep_module);
    ngx_http_sep_ctx_t *ctx = ngx_http_sep_get_ctx(r);
    ngx_http_sep_stream_t *st;
    ngx_http_sep_chan_t *ch;
    ngx_pool_cleanup_t *cln;
    ngx_int_t rc;

    if (!sep_id_valid((const char *)id->data, id->len)) {
        return ngx_http_sep_send_error(r, NGX_HTTP_NOT_FOUND, "job_not_found",
                                       "no job with this id (it may have expired)");
    }
    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    if (!sub->ready || sub->exiting || ngx_exiting) {
        return ngx_http_sep_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "redis_unavailable",
                                       "the job store is unreachable; retry later");
    }

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_sep_stream_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (st == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ch = ngx_http_sep_chan_lookup(id->data, id->len);
    if (ch == NULL) {
        ch = ngx_alloc(sizeof(ngx_http_sep_chan_t), r->connection->log);
        if (ch == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        ngx_memzero(ch, sizeof(*ch));
        ngx_memcpy(ch->id, id->data, SEP_ID_LEN);
        ch->node.str.data = ch->id;
        ch->node.str.len = SEP_ID_LEN;
        ch->node.node.key = ngx_crc32_short(ch->id, SEP_ID_LEN);
        ngx_queue_init(&ch->streams);
        ngx_rbtree_insert(&sub->tree, &ch->node.node);
        sub->channels++;
        ngx_http_sep_chan_subscribe(ch);
        ngx_http_sep_sub_flush();
    }
    st->request = r;
    st->ctx = ctx;
    st->chan = ch;
    st->client_seq = ngx_http_sep_last_event_id(r);
    st->heartbeat = lcf->events_heartbeat;
    st->pending_last = &st->pending;
    st->timer.handler = ngx_http_sep_stream_timer_handler;
    st->timer.data = st;
    st->timer.log = r->connection->log;
    st->timer.cancelable = 1;
    ngx_queue_insert_tail(&ch->streams, &st->queue);
    ch->refs++;
    sub->streams++;
    cln->handler = ngx_http_sep_stream_cleanup;
    cln->data = st;
    ctx->stream = st;
    ctx->id = *id;

    r->main->count++;
    r->read_event_handler = ngx_http_test_reading; /* a client gone ends the stream at once */
    r->write_event_handler = ngx_http_sep_stream_writer;

    if (ch->state == SEP_CHAN_SUBSCRIBED) {
        ngx_http_sep_stream_read_record(st);
    } else {
        ngx_add_timer(&st->timer, sub->mcf->redis_timeout);
        ngx_http_sep_sub_need();
    }
    return NGX_DONE;
}

/* ---- process hooks ------------------------------------------------------------- */

ngx_int_t ngx_http_sep_events_init_process(ngx_cycle_t *cycle, ngx_http_sep_main_conf_t *mcf)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;
    struct sockaddr_un *sun;
    ngx_int_t rc;

    ngx_memzero(sub, sizeof(*sub));
    sub->mcf = mcf;
    sub->log = cycle->log;
    sub->connect_log = *cycle->log;
    sub->connect_log.log_level = NGX_LOG_ALERT;
    ngx_rbtree_init(&sub->tree, &sub->sentinel, ngx_str_rbtree_insert_value);

    if (mcf->redis_port == 0) {
        sun = ngx_pcalloc(cycle->pool, sizeof(struct sockaddr_un));
        if (sun == NULL || mcf->redis_host.len >= sizeof(sun->sun_path)) {
            return NGX_ERROR;
        }
        sun->sun_family = AF_UNIX;
        ngx_memcpy(sun->sun_path, mcf->redis_host.data, mcf->redis_host.len);
        sub->addr.sockaddr = (struct sockaddr *)sun;
        sub->addr.socklen = sizeof(struct sockaddr_un);
    } else {
        rc = ngx_parse_addr(cycle->pool, &sub->addr, mcf->redis_host.data, mcf->redis_host.len);
        if (rc != NGX_OK) {
            ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "sep: cannot use redis address \"%V\"",
                          &mcf->redis_host);
            return NGX_ERROR;
        }
        ngx_inet_set_port(sub->addr.sockaddr, (in_port_t)mcf->redis_port);
    }
    sub->addr.name = mcf->redis_addr;

    sub->connect_timer.handler = ngx_http_sep_sub_connect_timeout;
    sub->keepalive.handler = ngx_http_sep_sub_keepalive_handler;
    sub->pong_timer.handler = ngx_http_sep_sub_pong_timeout;
    sub->retry.handler = ngx_http_sep_sub_retry_handler;
    sub->connect_timer.log = sub->keepalive.log = sub->pong_timer.log = sub->retry.log = cycle->log;
    sub->connect_timer.data = sub->keepalive.data = sub->pong_timer.data = sub->retry.data = sub;
    sub->connect_timer.cancelable = sub->keepalive.cancelable = 1;
    sub->pong_timer.cancelable = sub->retry.cancelable = 1;
    sub->ready = 1;
    return NGX_OK;
}

void ngx_http_sep_events_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_sep_sub_t *sub = &ngx_http_sep_sub;

    if (!sub->ready) {
        return;
    }
    sub->exiting = 1;
    if (sub->retry.timer_set) {
        ngx_del_timer(&sub->retry);
    }
    ngx_http_sep_sub_close();
    /* the requests die with the process; only the channels are ours to free */
    while (sub->tree.root != sub->tree.sentinel) {
        ngx_http_sep_chan_free(
            (ngx_http_sep_chan_t *)ngx_rbtree_min(sub->tree.root, sub->tree.sentinel));
    }
    if (sub->out) {
        ngx_free(sub->out);
        sub->out = NULL;
    }
    sub->ready = 0;
}
