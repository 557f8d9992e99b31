/*
 * supervisor.c - `workerd run` (see supervisor.h for what it does and why).
 *
 * Threads: the main thread owns one Redis connection and does everything that is
 * not a job: the read loop (XREADGROUP, claim), the timers (heartbeat + touch,
 * promote, reclaim, janitor), signals and the drain. Each running job has a thread
 * of its own with its own connection; it talks to Redis only with its token
 * (progress, complete, fail, requeue). The two sides share one slot per job, whose
 * `stop` flag the main thread raises when `touch` reports a cancel or a lost claim.
 *
 * Lifecycle rules kept here (the scripts enforce the rest, shared/README.md):
 *   - late ack: `complete`/`fail` XACK + XDEL the entry, after the stems are renamed
 *     into place under this attempt's names;
 *   - a call refused with NOT_FOUND / NOT_RUNNING / STALE means the attempt is over:
 *     its files are removed and nothing else is written;
 *   - Redis unreachable when a job ends: the final call is retried (with backoff)
 *     until it gets an answer or the claim would have expired anyway.
 */
#include "workerd/supervisor.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "models/util.h"
#include "shared/sep_id.h"
#include "shared/sep_keys.h"
#include "workerd/jobexec.h"
#include "workerd/pool.h"
#include "workerd/redis_client.h"

#define JOB_KEYS SEP_JOB_KEYS
#define MAX_SLOTS 64

/* ---- logging: one line per event, with the job id where there is one ---------- */

static int log_verbose;

static void logf_(const char *level, const char *fmt, ...)
{
    char when[32];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    flockfile(stderr);
    fprintf(stderr, "%s.%03ldZ workerd[%d] %s: ", when, ts.tv_nsec / 1000000, getpid(), level);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}
#define log_info(...) logf_("info", __VA_ARGS__)
#define log_warn(...) logf_("warn", __VA_ARGS__)
#define log_error(...) logf_("error", __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_verbose)                                                                           \
            logf_("debug", __VA_ARGS__);                                                           \
    } while (0)

/* ---- state ------------------------------------------------------------------------ */

typedef struct supervisor supervisor;

typedef struct {
    supervisor *sv;
    atomic_int state; /* SLOT_FREE, SLOT_RUNNING, SLOT_DONE (thread finished) */
    pthread_t thread;
    char id[64];
    char token[96];
    char queue[8];
    char model[64], stems[40], format[16], input[128];
    int shifts;
    double overlap;
    int attempt;
    double started;
    atomic_int stop; /* SEP_JOB_STOP_* (jobexec reads it) */
    atomic_int lost; /* the claim is gone: write nothing more */
} job_slot;

enum { SLOT_FREE = 0, SLOT_RUNNING, SLOT_DONE };

struct supervisor {
    sep_supervisor_settings *s;
    pthread_mutex_t settings_lock;
    sep_redis_client rc;
    sep_pool *pool;     /* the device workers */
    sep_pool *cpu_pool; /* fallback when device is cuda (NULL otherwise) */
    job_slot slots[MAX_SLOTS];
    atomic_long jobs_done, jobs_failed;
    atomic_int draining;    /* SIGTERM: job threads read it too (drain_deadline first) */
    int unclaimed;          /* an entry was delivered to us with no slot free for it */
    char orphan_cursor[64]; /* the last spool directory the orphan sweep looked at */
    int slot_freed;         /* eventfd: a job thread ended (the loop waits on it when full) */
    int owner_warned;       /* the spool's owner marker names another service (logged) */
    double drain_deadline;
    char models[512]; /* comma-separated names in models_dir (heartbeat) */
};

static volatile sig_atomic_t got_term, got_hup;

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        got_hup = 1;
    else
        got_term = 1;
}

/* ---- keys ------------------------------------------------------------------------- */

typedef struct {
    sep_job_keys_t keys;
    const char *k[JOB_KEYS];
} job_keys;

/* KEYS of every job script, in the order of shared/README.md (shared/sep_keys.h). */
static void make_job_keys(job_keys *jk, const char *prefix, const char *id)
{
    sep_str_t p = {prefix, strlen(prefix)}, i = {id, strlen(id)};
    if (sep_job_keys(&jk->keys, p, i) != 0)
        memset(&jk->keys, 0, sizeof(jk->keys)); /* the scripts refuse empty keys */
    for (int n = 0; n < JOB_KEYS; n++)
        jk->k[n] = jk->keys.key[n];
}

static void key(char *buf, size_t cap, const char *prefix, const char *tail)
{
    snprintf(buf, cap, "%s%s", prefix, tail);
}

/* ---- reply helpers ------------------------------------------------------------------ */

static const char *reply_str(const redisReply *r)
{
    if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
              r->type == REDIS_REPLY_ERROR))
        return r->str;
    return NULL;
}

/* Value of `field` in a flat field/value array starting at element `from`. */
static const char *hash_field(const redisReply *r, size_t from, const char *field)
{
    if (!r || r->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = from; i + 1 < r->elements; i += 2) {
        const char *name = reply_str(r->element[i]);
        if (name && strcmp(name, field) == 0)
            return reply_str(r->element[i + 1]);
    }
    return NULL;
}

static void copy_field(char *dst, size_t cap, const redisReply *r, size_t from, const char *f,
                       const char *dflt)
{
    const char *v = hash_field(r, from, f);
    snprintf(dst, cap, "%s", v ? v : dflt);
}

/* ---- files --------------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf; 0 when the path is gone afterwards. */
static int remove_tree(const char *path)
{
    if (nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT)
        return -1;
    return 0;
}

/* Valid job id text: 36 chars of hex and '-' (nothing a path could abuse). */
static int id_ok(const char *id)
{
    return sep_id_valid(id, strlen(id));
}

/* ---- the job thread ------------------------------------------------------------------- */

typedef struct {
    job_slot *slot;
    sep_redis_client *rc;
    job_keys *jk;
    double last_fraction;
} job_ctx;

static double now_s(void)
{
    return sep_wall_seconds();
}

/* Overall fraction from the runner's stage fraction (decode 5 %, separate 85 %, encode). */
static double overall(const char *stage, double f)
{
    if (strcmp(stage, "decode") == 0)
        return 0.05 * f;
    if (strcmp(stage, "separate") == 0)
        return 0.05 + 0.85 * f;
    return 0.90 + 0.10 * f;
}

/* A reply that says this attempt is over. */
static int attempt_over(const redisReply *r)
{
    return sep_redis_reply_is_error(r, "STALE") || sep_redis_reply_is_error(r, "NOT_RUNNING") ||
           sep_redis_reply_is_error(r, "NOT_FOUND");
}

/* Redis prefixes script errors with "ERR " on some paths; the scripts' code follows. */
static int script_error_is(const redisReply *r, const char *code)
{
    if (!r || r->type != REDIS_REPLY_ERROR)
        return 0;
    const char *s = r->str;
    if (strncmp(s, "ERR ", 4) == 0 && strncmp(s + 4, code, strlen(code)) == 0)
        return 1;
    return sep_redis_reply_is_error(r, code);
}

static int over(const redisReply *r)
{
    return attempt_over(r) || script_error_is(r, "STALE") || script_error_is(r, "NOT_RUNNING") ||
           script_error_is(r, "NOT_FOUND");
}

/* An error reply that is the script's verdict (its arguments or the job's state), as
 * opposed to one from Redis itself (-LOADING, -BUSY, -OOM, -MASTERDOWN, ...), after
 * which the same call may succeed later. */
static int script_verdict(const redisReply *r)
{
    static const char *const codes[] = {
        "ERR_ARG",     "ERR_KEYS",   "NOT_FOUND",  "NOT_RUNNING",     "STALE",
        "NOT_OVERDUE", "QUEUE_FULL", "JOB_EXISTS", "ALREADY_DELETED", "BAD_STEMS"};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        if (script_error_is(r, codes[i]))
            return 1;
    return 0;
}

static int on_progress(void *user, const char *stage, double fraction)
{
    job_ctx *c = user;
    job_slot *sl = c->slot;
    if (atomic_load(&sl->lost) || atomic_load(&sl->stop))
        return 1;
    double f = overall(stage, fraction);
    if (f < c->last_fraction)
        f = c->last_fraction;
    c->last_fraction = f;
    char frac[32];
    snprintf(frac, sizeof(frac), "%.4f", f);
    const char *args[] = {sl->token, frac, stage, ""};
    redisReply *r =
        sep_redis_client_script(c->rc, SEP_SCRIPT_PROGRESS, JOB_KEYS, c->jk->k, 4, args);
    if (!r) {
        /* Redis unreachable: keep working; touch and the final call will tell. */
        log_debug("job %s: progress not recorded: %s", sl->id, c->rc->err);
        return 0;
    }
    int stop = 0;
    if (over(r)) {
        log_warn("job %s: attempt %d lost its claim (%s); stopping", sl->id, sl->attempt, r->str);
        atomic_store(&sl->lost, 1);
        stop = 1;
    } else if (r->type == REDIS_REPLY_INTEGER && r->integer == 1) {
        log_info("job %s: cancel requested; stopping", sl->id);
        atomic_store(&sl->stop, SEP_JOB_STOP_CANCEL);
        stop = 1;
    } else if (r->type == REDIS_REPLY_ERROR && script_verdict(r)) {
        log_warn("job %s: progress refused: %s", sl->id, r->str);
    } else if (r->type == REDIS_REPLY_ERROR) { /* -BUSY, -LOADING: the next one may pass */
        log_debug("job %s: progress not recorded: %s", sl->id, r->str);
    }
    freeReplyObject(r);
    return stop;
}

/* Calls a finishing script until Redis answers (connection errors retried with
 * backoff, up to about the visibility timeout: after that the claim is gone anyway). */
static redisReply *final_call(job_ctx *c, sep_script_id_t id, int nargs, const char **args,
                              int *resent)
{
    supervisor *sv = c->slot->sv;
    double give_up = now_s() + sv->s->visibility_timeout + 5;
    double wait = 0.1;
    if (resent)
        *resent = 0;
    for (;;) {
        redisReply *r = sep_redis_client_script(c->rc, id, JOB_KEYS, c->jk->k, nargs, args);
        if (r && (r->type != REDIS_REPLY_ERROR || script_verdict(r)))
            return r;
        char why[1100];
        snprintf(why, sizeof(why), "%s", r ? r->str : c->rc->err);
        if (r) /* Redis refused to run it now (-LOADING, -BUSY, ...): nothing was written */
            freeReplyObject(r);
        else if (resent) /* it may have run: its reply was lost with the connection */
            *resent = 1;
        /* draining: the process must end near drain_timeout; the job stays claimed
         * and another host takes it after the visibility timeout */
        if (atomic_load(&sv->draining) && sv->drain_deadline + 2 < give_up)
            give_up = sv->drain_deadline + 2;
        if (now_s() + wait > give_up) {
            log_error("job %s: giving up on %s: %s", c->slot->id, sep_scripts[id].name, why);
            return NULL;
        }
        log_warn("job %s: %s: %s; retrying in %.1fs", c->slot->id, sep_scripts[id].name, why, wait);
        usleep((useconds_t)(wait * 1e6));
        wait = wait * 2 > 5 ? 5 : wait * 2;
    }
}

/* The attempt tag in a stem's file name "{stem}.{tag}.{ext}" ("" when none). */
static const char *tag_of(const sep_job_outcome *o)
{
    static __thread char tag[128];
    tag[0] = 0;
    if (o->n_stems > 0) {
        const char *f = o->stems[0].file;
        const char *a = strchr(f, '.'), *b = strrchr(f, '.');
        if (a && b > a + 1 && (size_t)(b - a - 1) < sizeof(tag)) {
            memcpy(tag, a + 1, (size_t)(b - a - 1));
            tag[b - a - 1] = 0;
        }
    }
    return tag;
}

/* Whether the record is completed with stems of this attempt (files tagged `tag`). */
static int completed_with_our_files(job_ctx *c, const char *tag)
{
    if (!tag[0])
        return 0;
    redisReply *r = sep_redis_client_commandf(c->rc, "HMGET %s status stems", c->jk->k[0]);
    int ours = r && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && reply_str(r->element[0]) &&
               strcmp(r->element[0]->str, "completed") == 0 && reply_str(r->element[1]) &&
               strstr(r->element[1]->str, tag) != NULL;
    if (r)
        freeReplyObject(r);
    return ours;
}

static void remove_stems(const char *dir, const sep_job_outcome *o)
{
    char path[2048];
    for (int i = 0; i < o->n_stems; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, o->stems[i].file);
        unlink(path);
    }
}

static int stems_json(const sep_job_outcome *o, char *buf, size_t cap, long long *total)
{
    size_t n = 0;
    *total = 0;
    n += (size_t)snprintf(buf + n, cap - n, "{");
    for (int i = 0; i < o->n_stems && n < cap; i++) {
        n += (size_t)snprintf(buf + n, cap - n, "%s\"%s\":{\"file\":\"%s\",\"bytes\":%lld}",
                              i ? "," : "", o->stems[i].name, o->stems[i].file,
                              (long long)o->stems[i].bytes);
        *total += o->stems[i].bytes;
    }
    if (n < cap)
        n += (size_t)snprintf(buf + n, cap - n, "}");
    return n < cap ? 0 : -1;
}

/* After our complete: stems other attempts left in the job's directory (one killed
 * after its renames, before its complete answered) are nobody's; they go, and so do the
 * temporaries of an attempt killed while it wrote them (".{stem}.{tag}.{ext}.{pid}.partial").
 * The input and our own files stay: a stem file is "{stem}.{tag}.{ext}" with a tag
 * "a<attempt>-...". */
static void remove_other_attempts(const char *dir, const char *ours)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char own[160];
    snprintf(own, sizeof(own), ".%s.", ours);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' && len > 8 && strcmp(e->d_name + len - 8, ".partial") == 0) {
            if (!strstr(e->d_name, own)) {
                char path[2048];
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                unlink(path);
            }
            continue;
        }
        const char *a = strchr(e->d_name, '.');
        const char *b = strrchr(e->d_name, '.');
        if (!a || b <= a + 2 || a[1] != 'a' || a == e->d_name)
            continue;
        size_t tl = (size_t)(b - a - 1);
        if (tl == strlen(ours) && strncmp(a + 1, ours, tl) == 0)
            continue;
        int tagged = 1;
        for (const char *p = a + 1; p < b; p++)
            if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
                tagged = 0;
        if (!tagged)
            continue;
        char path[2048];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

static void finish_completed(job_ctx *c, const char *dir, const sep_job_outcome *o)
{
    job_slot *sl = c->slot;
    char stems[4096], bytes[32], secs[32], rate[16], chans[16], td[32], ts[32], te[32];
    long long total;
    if (stems_json(o, stems, sizeof(stems), &total) != 0) {
        log_error("job %s: stem list too long", sl->id);
        remove_stems(dir, o);
        return;
    }
    snprintf(bytes, sizeof(bytes), "%lld", total);
    snprintf(secs, sizeof(secs), "%.3f", o->audio_seconds);
    snprintf(rate, sizeof(rate), "%d", o->samplerate);
    snprintf(chans, sizeof(chans), "%d", o->channels);
    snprintf(td, sizeof(td), "%.3f", o->decode_s);
    snprintf(ts, sizeof(ts), "%.3f", o->separate_s);
    snprintf(te, sizeof(te), "%.3f", o->encode_s);
    const char *args[] = {sl->token,
                          stems,
                          bytes,
                          "audio_seconds",
                          secs,
                          "audio_sample_rate",
                          rate,
                          "audio_channels",
                          chans,
                          "timing_decode_s",
                          td,
                          "timing_separate_s",
                          ts,
                          "timing_encode_s",
                          te,
                          "device",
                          sl->sv->s->device};
    int resent = 0;
    redisReply *r =
        final_call(c, SEP_SCRIPT_COMPLETE, (int)(sizeof(args) / sizeof(args[0])), args, &resent);
    if (r && r->type == REDIS_REPLY_ERROR && resent && completed_with_our_files(c, tag_of(o))) {
        /* the first complete ran but its reply was lost with the connection: the
         * record is completed and points at our files; the resent one is refused */
        freeReplyObject(r);
        r = NULL;
        atomic_fetch_add(&sl->sv->jobs_done, 1);
        remove_other_attempts(dir, tag_of(o));
        log_info("job %s: completed (attempt %d; the reply was lost, the record says so)", sl->id,
                 sl->attempt);
        return;
    }
    if (r && r->type != REDIS_REPLY_ERROR) {
        atomic_fetch_add(&sl->sv->jobs_done, 1);
        remove_other_attempts(dir, tag_of(o));
        log_info("job %s: completed (attempt %d, %.1f s of audio, decode %.2fs separate %.2fs "
                 "encode %.2fs%s)",
                 sl->id, sl->attempt, o->audio_seconds, o->decode_s, o->separate_s, o->encode_s,
                 o->fell_back ? ", on the CPU fallback" : "");
    } else {
        /* refused (a newer attempt owns the job) or never answered: our files must
         * not stay; the record never points at them */
        log_warn("job %s: complete of attempt %d refused (%s); its files are removed", sl->id,
                 sl->attempt, r ? r->str : c->rc->err);
        remove_stems(dir, o);
    }
    if (r)
        freeReplyObject(r);
}

static void finish_failed(job_ctx *c, const sep_job_outcome *o)
{
    job_slot *sl = c->slot;
    const sep_supervisor_settings *s = sl->sv->s;
    if (o->code == SEP_JOB_INTERRUPTED) { /* drain: give it back at once */
        const char *args[] = {sl->token, "given back by its worker"};
        redisReply *r = final_call(c, SEP_SCRIPT_REQUEUE, 2, args, NULL);
        if (r && r->type != REDIS_REPLY_ERROR)
            log_info("job %s: given back to the queue", sl->id);
        else
            log_warn("job %s: could not be given back (%s); another host takes it after the "
                     "visibility timeout",
                     sl->id, r ? r->str : c->rc->err);
        if (r)
            freeReplyObject(r);
        return;
    }
    char retry[4], base[16], cap[16], jitter[16], maxlen[16];
    uint32_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd))
        rnd = (uint32_t)rand();
    snprintf(retry, sizeof(retry), "%d", o->retryable ? 1 : 0);
    snprintf(base, sizeof(base), "%d", s->retry_backoff_base_ms);
    snprintf(cap, sizeof(cap), "%d", s->retry_backoff_max_ms);
    snprintf(jitter, sizeof(jitter), "%u",
             s->retry_backoff_base_ms > 0 ? rnd % (unsigned)s->retry_backoff_base_ms : 0);
    snprintf(maxlen, sizeof(maxlen), "%d", s->dead_max);
    const char *code = o->code == SEP_JOB_CANCELED ? "canceled" : o->code_name;
    const char *args[] = {sl->token, code, o->message, retry, base, cap, jitter, maxlen};
    redisReply *r = final_call(c, SEP_SCRIPT_FAIL, 8, args, NULL);
    if (!r)
        return;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1) {
        const char *what = reply_str(r->element[0]);
        if (what && strcmp(what, "retry") == 0)
            log_info("job %s: %s (%s), retry scheduled", sl->id, code, o->message);
        else if (what && strcmp(what, "canceled") == 0) {
            /* a canceled job's files go at once (its input included), not at expiry */
            char dir[1200];
            snprintf(dir, sizeof(dir), "%s/%s", s->spool, sl->id);
            remove_tree(dir);
            log_info("job %s: canceled; its files are removed", sl->id);
        } else {
            atomic_fetch_add(&sl->sv->jobs_failed, 1);
            log_info("job %s: failed: %s (%s)", sl->id, code, o->message);
        }
    } else {
        log_warn("job %s: fail refused: %s", sl->id, r->type == REDIS_REPLY_ERROR ? r->str : "?");
    }
    freeReplyObject(r);
}

/* A job's forwarder: the pool, watching the job's stop flag (cancel, drain). */
typedef struct {
    sep_pool *pool;
    const atomic_int *stop;
} job_forwarder;

static int pool_forward(void *ctx, const char *model, int model_index, const float *in, int n,
                        int length, float *out, double deadline, char *err, size_t errlen)
{
    const job_forwarder *f = ctx;
    return sep_pool_forward_stoppable(f->pool, model, model_index, in, n, length, out, deadline,
                                      f->stop, err, errlen);
}

/* Whether another live supervisor offers `model` (its heartbeat's models list). */
static int offered_elsewhere(sep_redis_client *rc, const sep_supervisor_settings *s,
                             const char *model)
{
    char wset[256];
    key(wset, sizeof(wset), s->prefix, "workers");
    redisReply *names = sep_redis_client_commandf(rc, "ZRANGE %s 0 -1", wset);
    int found = 0;
    for (size_t i = 0; names && names->type == REDIS_REPLY_ARRAY && i < names->elements && !found;
         i++) {
        const char *name = reply_str(names->element[i]);
        if (!name || strcmp(name, s->name) == 0)
            continue;
        char wkey[400];
        snprintf(wkey, sizeof(wkey), "%sworker:%s", s->prefix, name);
        redisReply *m = sep_redis_client_commandf(rc, "HGET %s models", wkey);
        const char *list = reply_str(m);
        size_t ml = strlen(model);
        for (const char *p = list; p && *p && !found; p = strchr(p, ',') ? strchr(p, ',') + 1 : "")
            found = strncmp(p, model, ml) == 0 && (p[ml] == ',' || p[ml] == 0);
        if (m)
            freeReplyObject(m);
    }
    if (names)
        freeReplyObject(names);
    return found;
}

static void *job_thread(void *arg)
{
    job_slot *sl = arg;
    supervisor *sv = sl->sv;
    sep_supervisor_settings s;
    pthread_mutex_lock(&sv->settings_lock);
    s = *sv->s;
    pthread_mutex_unlock(&sv->settings_lock);

    sep_redis_client rc;
    sep_redis_client_init(&rc, s.redis, s.redis_user, s.redis_password, s.redis_db, 10000);
    job_keys jk;
    make_job_keys(&jk, s.prefix, sl->id);
    job_ctx c = {sl, &rc, &jk, 0};

    char dir[1200], input[1400], tag[128], err[300];
    snprintf(dir, sizeof(dir), "%s/%s", s.spool, sl->id);
    snprintf(input, sizeof(input), "%s/%s", dir, sl->input);
    /* "3:9f1c..." -> "a3-9f1c...": this attempt's own file names */
    snprintf(tag, sizeof(tag), "a%s", sl->token);
    for (char *p = tag; *p; p++)
        if (*p == ':')
            *p = '-';

    sep_job_spec spec;
    sep_job_outcome o;
    memset(&o, 0, sizeof(o));
    sep_job_spec_init(&spec);
    job_forwarder dev = {sv->pool, &sl->stop}, cpu = {sv->cpu_pool, &sl->stop};
    spec.forward = pool_forward;
    spec.forward_ctx = &dev;
    if (sv->cpu_pool) {
        spec.fallback = pool_forward;
        spec.fallback_ctx = &cpu;
    }
    spec.model = sep_pool_model(sv->pool, sl->model, err, sizeof(err));
    spec.model_name = sl->model;
    spec.input_path = input;
    spec.output_dir = dir;
    spec.tmp_dir = dir;
    spec.file_tag = tag;
    spec.stems = sl->stems;
    spec.shifts = sl->shifts;
    spec.overlap = sl->overlap;
    spec.max_batch = s.max_batch > 0 ? s.max_batch : 1;
    spec.soft_time_limit = s.soft_time_limit;
    spec.hard_time_limit = s.hard_time_limit;
    spec.progress = on_progress;
    spec.user = &c;
    spec.stop = &sl->stop;
    spec.crash_retries = 1;
    if (sep_job_format_from_name(sl->format, &spec.format) != 0)
        spec.format = SEP_OUT_WAV16;
    if (strcmp(sl->format, "f32") == 0)
        spec.clip = SEP_CLIP_NONE;

    if (!spec.model) {
        o.code = SEP_JOB_MODEL_UNAVAILABLE;
        o.code_name = sep_job_code_name(o.code);
        o.retryable = 0;
        snprintf(o.message, sizeof(o.message), "model %s is not available on this worker: %s",
                 sl->model, err);
    } else {
        log_info("job %s: running attempt %d (model %s, stems %s, format %s)", sl->id, sl->attempt,
                 sl->model, sl->stems, sl->format);
        sep_job_execute(&spec, &o);
    }

    if (o.code == SEP_JOB_MODEL_UNAVAILABLE && !atomic_load(&sl->lost) &&
        offered_elsewhere(&rc, &s, sl->model)) {
        /* another host can run it: give it back (no attempt spent) instead of failing
         * it for good, and pause so that host gets to claim it first */
        o.code = SEP_JOB_INTERRUPTED;
        log_warn("job %s: model %s does not load here (%s); given back for a host that "
                 "offers it",
                 sl->id, sl->model, o.message);
        finish_failed(&c, &o);
        usleep(1000000);
    } else if (atomic_load(&sl->lost)) {
        /* the attempt is over: jobexec removed partial files; finished stems go too */
        if (o.code == SEP_JOB_OK)
            remove_stems(dir, &o);
        log_info("job %s: attempt %d abandoned (claim lost)", sl->id, sl->attempt);
    } else if (o.code == SEP_JOB_OK) {
        finish_completed(&c, dir, &o);
    } else {
        finish_failed(&c, &o);
    }
    sep_redis_client_close(&rc);
    atomic_store(&sl->state, SLOT_DONE);
    uint64_t one = 1; /* wake the main loop: a slot is free for the next claim */
    if (write(sv->slot_freed, &one, sizeof(one)) < 0) {
        /* the counter is full or closed: the loop's timeout catches up */
    }
    return NULL;
}

/* ---- the main thread: claims ----------------------------------------------------------- */

/* Over every slot, not only the first `concurrency`: a SIGHUP may have lowered it
 * while jobs run in the higher slots. */
static int running_count(supervisor *sv)
{
    int n = 0;
    for (int i = 0; i < MAX_SLOTS; i++)
        n += atomic_load(&sv->slots[i].state) != SLOT_FREE;
    return n;
}

static job_slot *free_slot(supervisor *sv)
{
    if (running_count(sv) >= sv->s->concurrency)
        return NULL;
    for (int i = 0; i < MAX_SLOTS; i++)
        if (atomic_load(&sv->slots[i].state) == SLOT_FREE)
            return &sv->slots[i];
    return NULL;
}

static void reap_slots(supervisor *sv)
{
    for (int i = 0; i < MAX_SLOTS; i++) {
        job_slot *sl = &sv->slots[i];
        if (atomic_load(&sl->state) == SLOT_DONE) {
            pthread_join(sl->thread, NULL);
            atomic_store(&sl->state, SLOT_FREE);
        }
    }
}

static void random_nonce(char *out)
{
    unsigned char b[8];
    if (getrandom(b, sizeof(b), 0) != sizeof(b))
        for (int i = 0; i < 8; i++)
            b[i] = (unsigned char)rand();
    for (int i = 0; i < 8; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

/* Claims one stream entry and, when the reply is `run`, starts its job thread.
 * Returns 1 when a job was started. */
static int claim_entry(supervisor *sv, const char *queue, const char *entry, const char *id)
{
    const sep_supervisor_settings *s = sv->s;
    if (!id_ok(id)) {
        log_warn("entry %s of q:%s names no valid job id (%s); dropped", entry, queue, id);
        char q[256];
        snprintf(q, sizeof(q), "%sq:%s", s->prefix, queue);
        redisReply *r = sep_redis_client_commandf(&sv->rc, "XACK %s workers %s", q, entry);
        if (r)
            freeReplyObject(r);
        r = sep_redis_client_commandf(&sv->rc, "XDEL %s %s", q, entry);
        if (r)
            freeReplyObject(r);
        return 0;
    }
    for (int i = 0; i < MAX_SLOTS; i++)
        if (atomic_load(&sv->slots[i].state) == SLOT_RUNNING && strcmp(sv->slots[i].id, id) == 0)
            return 0; /* ours and running: our own pending list read again, or an entry
                         XAUTOCLAIM gave back to us; claim would start it twice */
    job_slot *sl = free_slot(sv);
    if (!sl) {
        /* both queues answered one read with one slot free: the entry stays in our
         * pending list, claimed from there when a slot frees (not after the timeout) */
        sv->unclaimed = 1;
        return 0;
    }
    job_keys jk;
    make_job_keys(&jk, s->prefix, id);
    char nonce[20], vis[32], maxlen[16];
    random_nonce(nonce);
    snprintf(vis, sizeof(vis), "%lld", (long long)(s->visibility_timeout * 1000));
    snprintf(maxlen, sizeof(maxlen), "%d", s->dead_max);
    const char *args[] = {s->name, queue, entry, nonce, vis, maxlen};
    redisReply *r = sep_redis_client_script(&sv->rc, SEP_SCRIPT_CLAIM, JOB_KEYS, jk.k, 6, args);
    if (!r) {
        log_warn("job %s: claim failed: %s", id, sv->rc.err);
        return 0;
    }
    int started = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("job %s: claim refused: %s", id, r->str);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
        const char *reason = reply_str(r->element[0]);
        const char *detail = reply_str(r->element[1]);
        if (reason && strcmp(reason, "run") == 0 && detail) {
            memset(sl->id, 0, sizeof(sl->id));
            snprintf(sl->id, sizeof(sl->id), "%s", id);
            snprintf(sl->token, sizeof(sl->token), "%s", detail);
            snprintf(sl->queue, sizeof(sl->queue), "%s", queue);
            copy_field(sl->model, sizeof(sl->model), r, 2, "model", "htdemucs");
            copy_field(sl->stems, sizeof(sl->stems), r, 2, "stems_option", "all");
            copy_field(sl->format, sizeof(sl->format), r, 2, "format", "wav");
            copy_field(sl->input, sizeof(sl->input), r, 2, "input", "input");
            const char *v = hash_field(r, 2, "shifts");
            sl->shifts = v ? atoi(v) : SEP_JOB_SHIFTS_DEFAULT;
            v = hash_field(r, 2, "overlap");
            sl->overlap = v ? atof(v) : SEP_JOB_OVERLAP_DEFAULT;
            sl->attempt = atoi(detail);
            sl->started = now_s();
            atomic_store(&sl->stop, SEP_JOB_RUN);
            atomic_store(&sl->lost, 0);
            /* input names come from the module (sniffed extension): refuse anything
             * that is not one plain file name */
            if (strchr(sl->input, '/') || sl->input[0] == '.' || !sl->input[0])
                snprintf(sl->input, sizeof(sl->input), "input");
            atomic_store(&sl->state, SLOT_RUNNING);
            sl->sv = sv;
            if (pthread_create(&sl->thread, NULL, job_thread, sl) != 0) {
                log_error("job %s: cannot start a thread; giving it back", id);
                atomic_store(&sl->state, SLOT_FREE);
                const char *rq[] = {sl->token, "worker could not start a thread"};
                redisReply *q =
                    sep_redis_client_script(&sv->rc, SEP_SCRIPT_REQUEUE, JOB_KEYS, jk.k, 2, rq);
                if (q)
                    freeReplyObject(q);
            } else {
                log_info("job %s: claimed from q:%s (attempt %d)", id, queue, sl->attempt);
                started = 1;
            }
        } else if (reason && strcmp(reason, "canceled") == 0) {
            char dir[1200];
            snprintf(dir, sizeof(dir), "%s/%s", s->spool, id);
            remove_tree(dir);
            log_info("job %s: canceled before it ran again", id);
        } else if (reason && strcmp(reason, "dead") == 0) {
            log_info("job %s: failed for good (worker_lost after %s attempts)", id,
                     detail ? detail : "?");
        } else {
            log_debug("job %s: claim says %s %s", id, reason ? reason : "?", detail ? detail : "");
        }
    }
    freeReplyObject(r);
    return started;
}

/* Claims the entries of an XREADGROUP / XAUTOCLAIM entry list [[id, [f, v...]], ...]. */
static int claim_entries(supervisor *sv, const char *queue, const redisReply *entries)
{
    int started = 0;
    if (!entries || entries->type != REDIS_REPLY_ARRAY)
        return 0;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 || !reply_str(e->element[0]))
            continue;
        const char *entry = e->element[0]->str;
        const char *id = hash_field(e->element[1], 0, "id");
        if (!id) { /* the entry was deleted meanwhile: only its PEL record is left */
            char q[256];
            snprintf(q, sizeof(q), "%sq:%s", sv->s->prefix, queue);
            redisReply *r = sep_redis_client_commandf(&sv->rc, "XACK %s workers %s", q, entry);
            if (r)
                freeReplyObject(r);
            continue;
        }
        started += claim_entry(sv, queue, entry, id);
    }
    return started;
}

/* XREADGROUP of one or both queues; `start` is ">" (new entries) or "0" (our own
 * pending ones, after a restart). */
static int read_queues(supervisor *sv, int count, int block_ms, int both, const char *start)
{
    char high[256], normal[256], cnt[16], blk[16];
    key(high, sizeof(high), sv->s->prefix, "q:high");
    key(normal, sizeof(normal), sv->s->prefix, "q:normal");
    snprintf(cnt, sizeof(cnt), "%d", count);
    snprintf(blk, sizeof(blk), "%d", block_ms);
    const char *argv[14];
    int argc = 0;
    argv[argc++] = "XREADGROUP";
    argv[argc++] = "GROUP";
    argv[argc++] = "workers";
    argv[argc++] = sv->s->name;
    argv[argc++] = "COUNT";
    argv[argc++] = cnt;
    if (block_ms >= 0) {
        argv[argc++] = "BLOCK";
        argv[argc++] = blk;
    }
    argv[argc++] = "STREAMS";
    argv[argc++] = high;
    if (both)
        argv[argc++] = normal;
    argv[argc++] = start;
    if (both)
        argv[argc++] = start;
    redisReply *r =
        sep_redis_client_command(&sv->rc, block_ms > 0 ? block_ms + 2000 : 0, argc, argv);
    if (!r)
        return -1;
    int started = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("XREADGROUP: %s", r->str);
        if (strstr(r->str, "NOGROUP")) {
            const char *keys[] = {high, normal};
            redisReply *g = sep_redis_client_script(&sv->rc, SEP_SCRIPT_SETUP, 2, keys, 0, NULL);
            if (g)
                freeReplyObject(g);
        }
    } else if (r->type == REDIS_REPLY_ARRAY) {
        /* high's list first when both streams answered: priority order */
        for (size_t i = 0; i < r->elements; i++) {
            const redisReply *st = r->element[i];
            if (st->type != REDIS_REPLY_ARRAY || st->elements < 2 || !reply_str(st->element[0]))
                continue;
            const char *queue = strcmp(st->element[0]->str, high) == 0 ? "high" : "normal";
            started += claim_entries(sv, queue, st->element[1]);
        }
    }
    freeReplyObject(r);
    return started;
}

/* Takes over entries of dead supervisors (idle past the visibility timeout). */
static void reclaim(supervisor *sv)
{
    static const char *const queues[] = {"high", "normal"};
    for (int q = 0; q < 2; q++) {
        int room = sv->s->concurrency - running_count(sv);
        if (room <= 0 || sv->draining)
            return;
        char stream[256], idle[32], cnt[16];
        snprintf(stream, sizeof(stream), "%sq:%s", sv->s->prefix, queues[q]);
        snprintf(idle, sizeof(idle), "%lld", (long long)(sv->s->visibility_timeout * 1000));
        snprintf(cnt, sizeof(cnt), "%d", room);
        const char *argv[] = {"XAUTOCLAIM", stream, "workers", sv->s->name,
                              idle,         "0-0",  "COUNT",   cnt};
        redisReply *r = sep_redis_client_command(&sv->rc, 0, 8, argv);
        if (!r)
            return;
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
            if (r->element[1]->type == REDIS_REPLY_ARRAY && r->element[1]->elements)
                log_info("reclaiming %zu entr%s of q:%s idle for %.0fs", r->element[1]->elements,
                         r->element[1]->elements == 1 ? "y" : "ies", queues[q],
                         sv->s->visibility_timeout);
            claim_entries(sv, queues[q], r->element[1]);
        }
        freeReplyObject(r);
    }
}

/* ---- timers ------------------------------------------------------------------------------ */

static void heartbeat(supervisor *sv)
{
    const sep_supervisor_settings *s = sv->s;
    char wkey[400], wset[256], ttl[16], pid[16], running[16], done[24], failed[24], jobs[2048],
        rss[32], wcount[16];
    snprintf(wkey, sizeof(wkey), "%sworker:%s", s->prefix, s->name);
    key(wset, sizeof(wset), s->prefix, "workers");
    int t = (int)(s->heartbeat_interval * 3 + 1);
    snprintf(ttl, sizeof(ttl), "%d", t < 2 ? 2 : t);
    snprintf(pid, sizeof(pid), "%d", getpid());
    snprintf(running, sizeof(running), "%d", running_count(sv));
    snprintf(done, sizeof(done), "%ld", atomic_load(&sv->jobs_done));
    snprintf(failed, sizeof(failed), "%ld", atomic_load(&sv->jobs_failed));
    size_t n = 0;
    jobs[0] = 0;
    for (int i = 0; i < MAX_SLOTS; i++)
        if (atomic_load(&sv->slots[i].state) == SLOT_RUNNING && n + 40 < sizeof(jobs))
            n +=
                (size_t)snprintf(jobs + n, sizeof(jobs) - n, "%s%s", n ? "," : "", sv->slots[i].id);
    sep_pool_worker_stats ws[32];
    int nw = sep_pool_stats(sv->pool, ws, 32);
    unsigned long long mem = 0;
    for (int i = 0; i < nw; i++)
        mem += ws[i].rss_bytes;
    snprintf(rss, sizeof(rss), "%llu", mem);
    snprintf(wcount, sizeof(wcount), "%d", nw);
    char host[128] = "";
    gethostname(host, sizeof(host) - 1);
    const char *state = sv->draining ? "draining" : (n ? "busy" : "idle");
    const char *keys[] = {wkey, wset};
    const char *args[] = {
        s->name,        ttl,       "host",           host,   "pid",         pid,
        "device",       s->device, "state",          state,  "running",     running,
        "jobs",         jobs,      "jobs_done",      done,   "jobs_failed", failed,
        "memory_bytes", rss,       "device_workers", wcount, "models",      sv->models,
        "concurrency",  running /* replaced below */};
    char conc[16];
    snprintf(conc, sizeof(conc), "%d", s->concurrency);
    args[sizeof(args) / sizeof(args[0]) - 1] = conc;
    redisReply *r = sep_redis_client_script(&sv->rc, SEP_SCRIPT_HEARTBEAT, 2, keys,
                                            (int)(sizeof(args) / sizeof(args[0])), args);
    if (r) {
        if (r->type == REDIS_REPLY_ERROR)
            log_warn("heartbeat refused: %s", r->str);
        freeReplyObject(r);
    }

    /* touch: our claims stay ours while we live */
    char vis[32];
    snprintf(vis, sizeof(vis), "%lld", (long long)(s->visibility_timeout * 1000));
    for (int i = 0; i < MAX_SLOTS; i++) {
        job_slot *sl = &sv->slots[i];
        if (atomic_load(&sl->state) != SLOT_RUNNING || atomic_load(&sl->lost))
            continue;
        job_keys jk;
        make_job_keys(&jk, s->prefix, sl->id);
        const char *targs[] = {sl->token, vis};
        r = sep_redis_client_script(&sv->rc, SEP_SCRIPT_TOUCH, JOB_KEYS, jk.k, 2, targs);
        if (!r)
            return; /* Redis down: try again next beat */
        if (over(r)) {
            log_warn("job %s: touch says the attempt is over (%s); stopping it", sl->id, r->str);
            atomic_store(&sl->lost, 1);
            atomic_store(&sl->stop, SEP_JOB_STOP_CANCEL);
        } else if (r->type == REDIS_REPLY_INTEGER && r->integer == 1 &&
                   atomic_load(&sl->stop) == SEP_JOB_RUN) {
            log_info("job %s: cancel requested; stopping", sl->id);
            atomic_store(&sl->stop, SEP_JOB_STOP_CANCEL);
        } else if (r->type == REDIS_REPLY_ERROR && script_verdict(r)) {
            log_warn("job %s: touch refused: %s", sl->id, r->str);
        } else if (r->type == REDIS_REPLY_ERROR) { /* -BUSY, -OOM: the next beat retries */
            log_debug("job %s: touch not recorded: %s", sl->id, r->str);
        }
        freeReplyObject(r);
    }
}

static void promote(supervisor *sv)
{
    const char *p = sv->s->prefix;
    char delayed[256], high[256], normal[256];
    key(delayed, sizeof(delayed), p, "delayed");
    key(high, sizeof(high), p, "q:high");
    key(normal, sizeof(normal), p, "q:normal");
    redisReply *due =
        sep_redis_client_commandf(&sv->rc, "ZRANGE %s -inf +inf BYSCORE LIMIT 0 100", delayed);
    if (!due)
        return;
    if (due->type == REDIS_REPLY_ARRAY && due->elements > 0) {
        size_t n = due->elements;
        const char **keys = calloc(n + 3, sizeof(*keys));
        char(*jobs)[256] = calloc(n, sizeof(*jobs));
        if (keys && jobs) {
            keys[0] = delayed;
            keys[1] = high;
            keys[2] = normal;
            for (size_t i = 0; i < n; i++) {
                snprintf(jobs[i], sizeof(jobs[i]), "%sjob:%s", p,
                         reply_str(due->element[i]) ? due->element[i]->str : "");
                keys[3 + i] = jobs[i];
            }
            redisReply *r =
                sep_redis_client_script(&sv->rc, SEP_SCRIPT_PROMOTE, (int)(n + 3), keys, 0, NULL);
            if (r) {
                if (r->type == REDIS_REPLY_INTEGER && r->integer > 0)
                    log_info("%lld retr%s back in the queue", r->integer,
                             r->integer == 1 ? "y" : "ies");
                else if (r->type == REDIS_REPLY_ERROR)
                    log_warn("promote: %s", r->str);
                freeReplyObject(r);
            }
        }
        free(keys);
        free(jobs);
    }
    freeReplyObject(due);
}

/* Spool directories whose job has no record, older than orphan_age (an upload whose
 * submit never happened, a record that expired before the janitor saw it). */
#define ORPHAN_BATCH 500

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether the spool is ours to sweep: {spool}/.sep-owner names the prefix and Redis db
 * of the service it belongs to (written by the first supervisor that sweeps it). A
 * supervisor with another prefix or db (a typo, a staging instance on the production
 * spool) would find no record for any directory and delete them all. */
static int spool_is_ours(supervisor *sv)
{
    char path[1200], want[200], have[200] = "";
    snprintf(path, sizeof(path), "%s/.sep-owner", sv->s->spool);
    snprintf(want, sizeof(want), "prefix=%s db=%d\n", sv->s->prefix, sv->s->redis_db);
    FILE *f = fopen(path, "r");
    if (f) {
        if (!fgets(have, sizeof(have), f))
            have[0] = 0;
        fclose(f);
    } else if (errno == ENOENT) {
        char tmp[1300];
        snprintf(tmp, sizeof(tmp), "%s.%d", path, getpid());
        f = fopen(tmp, "w");
        if (f) {
            fputs(want, f);
            if (fclose(f) == 0 && link(tmp, path) == 0) /* first writer wins */
                snprintf(have, sizeof(have), "%s", want);
            unlink(tmp);
        }
        if (!have[0])
            return 0; /* another supervisor wrote it first: read the winner next pass */
    }
    if (strcmp(have, want) == 0)
        return 1;
    if (!sv->owner_warned) {
        size_t n = strlen(have);
        if (n && have[n - 1] == '\n')
            have[n - 1] = 0;
        log_warn("spool %s belongs to %s, not to prefix=%s db=%d: its orphan sweep is off "
                 "(fix --prefix/--redis, or remove %s if the spool is really this service's)",
                 sv->s->spool, have[0] ? have : "another service", sv->s->prefix, sv->s->redis_db,
                 path);
        sv->owner_warned = 1;
    }
    return 0;
}

static void remove_orphans(supervisor *sv)
{
    if (!spool_is_ours(sv))
        return;
    /* A pass looks at the next ORPHAN_BATCH job directories after the last one looked
     * at, in name order (ids are random: a fair sample of the spool), and wraps around,
     * so every directory is reached however many there are. */
    DIR *d = opendir(sv->s->spool);
    if (!d)
        return;
    size_t cap = 0, n = 0;
    char **names = NULL;
    struct dirent *e;
    while ((e = readdir(d))) {
        /* ".incoming" (nginx's body temp files) and anything not a job's are left */
        if (!id_ok(e->d_name) || strcmp(e->d_name, sv->orphan_cursor) <= 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            char **more = realloc(names, cap * sizeof(*names));
            if (!more)
                break;
            names = more;
        }
        if (!(names[n] = strdup(e->d_name)))
            break;
        n++;
    }
    closedir(d);
    if (n > 1) /* names is NULL when there is none (qsort of NULL is undefined) */
        qsort(names, n, sizeof(*names), cmp_names);
    size_t take = n < ORPHAN_BATCH ? n : ORPHAN_BATCH;
    time_t now = time(NULL);
    char *orphan = calloc(take ? take : 1, 1);
    size_t n_orphans = 0, n_records = 0, looked = 0;
    for (size_t i = 0; orphan && i < take; i++, looked++) {
        char path[1400];
        struct stat st;
        snprintf(path, sizeof(path), "%s/%s", sv->s->spool, names[i]);
        if (lstat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
            continue;
        }
        char jkey[256];
        snprintf(jkey, sizeof(jkey), "%sjob:%s", sv->s->prefix, names[i]);
        redisReply *r = sep_redis_client_commandf(&sv->rc, "EXISTS %s", jkey);
        if (!r)
            break;
        if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
            n_records++;
        else if (difftime(now, st.st_mtime) >= sv->s->orphan_age)
            orphan[i] = 1, n_orphans++;
        freeReplyObject(r);
    }
    /* many old directories and not one record: more likely the wrong prefix or db (or
     * a flushed Redis) than that many orphans; nothing is removed, an operator decides */
    if (n_orphans >= 10 && n_records == 0) {
        if (!sv->owner_warned)
            log_warn("orphan sweep: none of %zu old spool directories has a record under "
                     "prefix %s db %d; nothing removed (check --prefix/--redis)",
                     n_orphans, sv->s->prefix, sv->s->redis_db);
        sv->owner_warned = 1;
        n_orphans = 0;
    }
    for (size_t i = 0; n_orphans && i < looked; i++) {
        char path[1400];
        snprintf(path, sizeof(path), "%s/%s", sv->s->spool, names[i]);
        if (orphan[i] && remove_tree(path) == 0)
            log_info("job %s: orphaned spool directory removed", names[i]);
    }
    if (looked)
        snprintf(sv->orphan_cursor, sizeof(sv->orphan_cursor), "%s", names[looked - 1]);
    free(orphan);
    if (take == n && looked == take) /* the end of the spool: start again next pass */
        sv->orphan_cursor[0] = 0;
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

static void janitor(supervisor *sv, char (*removed)[64], int *n_removed)
{
    const char *p = sv->s->prefix;
    char kexp[256], krun[256], khigh[256], knorm[256], kwork[256], idle[32];
    key(kexp, sizeof(kexp), p, "expiry");
    key(krun, sizeof(krun), p, "running");
    key(khigh, sizeof(khigh), p, "q:high");
    key(knorm, sizeof(knorm), p, "q:normal");
    key(kwork, sizeof(kwork), p, "workers");
    snprintf(idle, sizeof(idle), "%lld", (long long)(sv->s->visibility_timeout * 1000 * 10));
    const char *keys[] = {kexp, krun, khigh, knorm, kwork};
    const char *args[2 + 100];
    int nargs = 0;
    args[nargs++] = "100";
    args[nargs++] = idle;
    for (int i = 0; i < *n_removed; i++)
        args[nargs++] = removed[i];
    redisReply *r = sep_redis_client_script(&sv->rc, SEP_SCRIPT_JANITOR, 5, keys, nargs, args);
    if (!r)
        return;
    *n_removed = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("janitor: %s", r->str);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
        const redisReply *expired = r->element[0];
        for (size_t i = 0; expired->type == REDIS_REPLY_ARRAY && i < expired->elements; i++) {
            const char *id = reply_str(expired->element[i]);
            if (!id || !id_ok(id))
                continue;
            char dir[1200];
            snprintf(dir, sizeof(dir), "%s/%s", sv->s->spool, id);
            if (remove_tree(dir) == 0 && *n_removed < 100) {
                snprintf(removed[*n_removed], 64, "%s", id);
                (*n_removed)++;
                log_debug("job %s: expired; spool directory removed", id);
            }
        }
        /* overdue running jobs with a cancel request: nobody will run them again */
        const redisReply *overdue = r->element[1];
        for (size_t i = 0; overdue->type == REDIS_REPLY_ARRAY && i + 1 < overdue->elements;
             i += 2) {
            const char *id = reply_str(overdue->element[i]);
            if (!id || !id_ok(id))
                continue;
            job_keys jk;
            make_job_keys(&jk, p, id);
            redisReply *h =
                sep_redis_client_commandf(&sv->rc, "HMGET %s cancel_requested token", jk.k[0]);
            if (h && h->type == REDIS_REPLY_ARRAY && h->elements == 2 && reply_str(h->element[0]) &&
                strcmp(h->element[0]->str, "1") == 0 && reply_str(h->element[1])) {
                const char *fargs[] = {h->element[1]->str, "canceled; its worker is gone"};
                redisReply *f = sep_redis_client_script(&sv->rc, SEP_SCRIPT_FORCE_CANCEL, JOB_KEYS,
                                                        jk.k, 2, fargs);
                if (f && f->type == REDIS_REPLY_ARRAY) {
                    char dir[1200];
                    snprintf(dir, sizeof(dir), "%s/%s", sv->s->spool, id);
                    remove_tree(dir);
                    log_info("job %s: canceled (its worker is gone)", id);
                }
                if (f)
                    freeReplyObject(f);
            }
            if (h)
                freeReplyObject(h);
        }
    }
    freeReplyObject(r);
    remove_orphans(sv);
}

/* ---- models ------------------------------------------------------------------------------- */

static void list_models(supervisor *sv)
{
    sv->models[0] = 0;
    DIR *d = opendir(sv->s->models_dir);
    if (!d) {
        log_warn("models_dir %s: %s; every job will fail with model_unavailable", sv->s->models_dir,
                 strerror(errno));
        return;
    }
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        const char *ext = ".safetensors";
        size_t el = strlen(ext);
        if (len <= el || strcmp(e->d_name + len - el, ext) != 0 || e->d_name[0] == '.')
            continue;
        if (n + len + 2 >= sizeof(sv->models) || len - el >= 64)
            break;
        /* only what loads is advertised: a corrupt file is not a model we can run */
        char name[64], err[300];
        snprintf(name, sizeof(name), "%.*s", (int)(len - el), e->d_name);
        if (!sep_pool_model(sv->pool, name, err, sizeof(err))) {
            log_warn("model %s is not offered: %s", name, err);
            continue;
        }
        n += (size_t)snprintf(sv->models + n, sizeof(sv->models) - n, "%s%s", n ? "," : "", name);
    }
    closedir(d);
    if (n == 0)
        log_warn("models_dir %s holds no model that loads (NAME.safetensors); every job will "
                 "fail with model_unavailable (make get-weights MODEL=htdemucs)",
                 sv->s->models_dir);
}

/* ---- one name, one supervisor ------------------------------------------------------------ */

/* Another live supervisor under our name would have its running jobs taken as ours
 * after a restart (claim reclaims a worker's own entries). 0 when the name is free (no
 * heartbeat, or the heartbeat of a dead process of this host: our own previous life),
 * -1 when someone else holds it, 1 when Redis could not tell. */
static int name_is_free(supervisor *sv)
{
    char wkey[400], host[128] = "";
    snprintf(wkey, sizeof(wkey), "%sworker:%s", sv->s->prefix, sv->s->name);
    gethostname(host, sizeof(host) - 1);
    redisReply *r = sep_redis_client_commandf(&sv->rc, "HMGET %s host pid", wkey);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        if (r)
            freeReplyObject(r);
        return 1;
    }
    int rc = 0;
    const char *h = reply_str(r->element[0]), *p = reply_str(r->element[1]);
    if (h && p) {
        int pid = atoi(p);
        if (strcmp(h, host) != 0) {
            log_error("another supervisor named %s is alive on host %s (pid %s); names must "
                      "be unique: set --name (its heartbeat expires if it is gone)",
                      sv->s->name, h, p);
            rc = -1;
        } else if (pid > 0 && pid != getpid() && kill(pid, 0) == 0) {
            log_error("another supervisor named %s runs on this host (pid %d); names must be "
                      "unique: set --name",
                      sv->s->name, pid);
            rc = -1;
        }
    }
    freeReplyObject(r);
    return rc;
}

/* ---- run ------------------------------------------------------------------------------------ */

static sep_pool *start_pool(const sep_supervisor_settings *s, const char *device, int n)
{
    char err[512];
    sep_pool_config pc = {
        .exe = s->exe,
        .models_dir = s->models_dir,
        .device = device,
        .n_workers = n,
        .threads = s->threads,
        .max_batch = s->max_batch > 0 ? s->max_batch : 1,
        .max_jobs_per_worker = s->max_jobs_per_worker,
        .slots = 0,
    };
    sep_pool *p = sep_pool_start(&pc, err, sizeof(err));
    if (!p)
        log_error("cannot start %d %s device worker%s: %s", n, device, n == 1 ? "" : "s", err);
    return p;
}

int sep_supervisor_run(sep_supervisor_settings *s,
                       int (*reload)(sep_supervisor_settings *s, void *user), void *user)
{
    static supervisor sv;
    memset(&sv, 0, sizeof(sv));
    sv.s = s;
    pthread_mutex_init(&sv.settings_lock, NULL);
    log_verbose = s->verbose;
    if (s->concurrency < 1)
        s->concurrency = 1;
    if (s->concurrency > MAX_SLOTS)
        s->concurrency = MAX_SLOTS;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* OpenMP threads of the CPU engine would spin between batches, taking the cores
     * from decode/encode and the other workers; an operator's own choice is kept */
    setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    sv.slot_freed = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (sv.slot_freed < 0) {
        log_error("eventfd: %s", strerror(errno));
        return 1;
    }
    int cuda = strcmp(s->device, "cuda") == 0;
    sv.pool = start_pool(s, s->device, cuda ? (s->gpus > 0 ? s->gpus : 1) : s->cpu_workers);
    if (cuda && sv.pool && s->cpu_workers > 0)
        sv.cpu_pool = start_pool(s, "cpu", s->cpu_workers);
    if (!sv.pool)
        return 1;
    list_models(&sv);
    if (mkdir(s->spool, 0755) != 0 && errno != EEXIST)
        log_warn("spool %s: %s", s->spool, strerror(errno));

    sep_redis_client_init(&sv.rc, s->redis, s->redis_user, s->redis_password, s->redis_db, 10000);
    log_info("started: name %s, redis %s, prefix %s, spool %s, device %s (%d worker%s), "
             "concurrency %d, models [%s]",
             s->name, s->redis, s->prefix, s->spool, s->device, cuda ? s->gpus : s->cpu_workers,
             (cuda ? s->gpus : s->cpu_workers) == 1 ? "" : "s", s->concurrency, sv.models);

    double next_beat = 0, next_promote = 0, next_reclaim = 0, next_janitor = 0;
    int recovered = 0, redis_up = -1, name_checked = 0;
    double down_since = 0;
    static char removed[100][64];
    int n_removed = 0;
    int rc_exit = 0;

    for (;;) {
        double now = now_s();
        reap_slots(&sv);
        if (got_hup) {
            got_hup = 0;
            if (reload) {
                sep_supervisor_settings next = *s;
                if (reload(&next, user) == 0) {
                    pthread_mutex_lock(&sv.settings_lock);
                    /* what can change while running; Redis, spool and the device
                     * workers need a restart */
                    s->concurrency = next.concurrency < 1           ? 1
                                     : next.concurrency > MAX_SLOTS ? MAX_SLOTS
                                                                    : next.concurrency;
                    s->visibility_timeout = next.visibility_timeout;
                    s->heartbeat_interval = next.heartbeat_interval;
                    s->soft_time_limit = next.soft_time_limit;
                    s->hard_time_limit = next.hard_time_limit;
                    s->drain_timeout = next.drain_timeout;
                    s->janitor_interval = next.janitor_interval;
                    s->orphan_age = next.orphan_age;
                    s->retry_backoff_base_ms = next.retry_backoff_base_ms;
                    s->retry_backoff_max_ms = next.retry_backoff_max_ms;
                    s->dead_max = next.dead_max;
                    s->verbose = log_verbose = next.verbose;
                    pthread_mutex_unlock(&sv.settings_lock);
                    list_models(&sv);
                    log_info("SIGHUP: settings reloaded (concurrency %d)", s->concurrency);
                } else {
                    log_warn("SIGHUP: the new settings were refused; keeping the old ones");
                }
            }
        }
        if (got_term && !sv.draining) {
            sv.drain_deadline = now + s->drain_timeout;
            atomic_store(&sv.draining, 1);
            log_info("draining: no new jobs; %d running get %.0fs to finish", running_count(&sv),
                     s->drain_timeout);
            next_beat = 0;
        }
        if (sv.draining) {
            if (running_count(&sv) == 0)
                break;
            if (now >= sv.drain_deadline) {
                for (int i = 0; i < MAX_SLOTS; i++)
                    if (atomic_load(&sv.slots[i].state) == SLOT_RUNNING) {
                        int expect = SEP_JOB_RUN;
                        atomic_compare_exchange_strong(&sv.slots[i].stop, &expect,
                                                       SEP_JOB_STOP_REQUEUE);
                    }
            }
        }

        if (redis_up != 1) { /* (re)connect, once per second at most, one log line each way */
            if (sep_redis_client_connect(&sv.rc) != 0) {
                if (redis_up != 0) {
                    log_warn("redis lost: %s", sv.rc.err);
                    down_since = now;
                }
                redis_up = 0;
                usleep(sv.draining ? 100000 : 500000);
                continue;
            }
            if (redis_up == 0)
                log_info("redis back after %.1fs", now - down_since);
            redis_up = 1;
            char high[256], normal[256];
            key(high, sizeof(high), s->prefix, "q:high");
            key(normal, sizeof(normal), s->prefix, "q:normal");
            const char *keys[] = {high, normal};
            redisReply *g = sep_redis_client_script(&sv.rc, SEP_SCRIPT_SETUP, 2, keys, 0, NULL);
            if (g) {
                if (g->type == REDIS_REPLY_ERROR) {
                    log_warn("setup: %s", g->str); /* -LOADING: try again */
                    freeReplyObject(g);
                    sep_redis_client_close(&sv.rc);
                    redis_up = 0;
                    down_since = now;
                    usleep(200000);
                    continue;
                }
                freeReplyObject(g);
            }
        }
        if (!name_checked) {
            int free_name = name_is_free(&sv);
            if (free_name < 0) {
                rc_exit = 1;
                break;
            }
            name_checked = free_name == 0;
            if (!name_checked) { /* Redis did not answer: reconnect and ask again */
                redis_up = 0;
                down_since = now;
                usleep(200000);
                continue;
            }
        }
        if (now >= next_beat) {
            heartbeat(&sv);
            next_beat = now + s->heartbeat_interval;
        }
        if (sv.unclaimed && running_count(&sv) < s->concurrency) {
            sv.unclaimed = 0;
            recovered = 0;
        }
        if (!recovered && !sv.draining) {
            /* our own pending entries (a restart under the same name): claim sees them
             * as this worker's and hands them out again */
            /* COUNT covers the entries of our running jobs too (claim_entry skips them) */
            int room = s->concurrency - running_count(&sv);
            if (room > 0 && read_queues(&sv, s->concurrency + 2, -1, 1, "0") >= 0)
                recovered = 1;
        }
        if (now >= next_promote) {
            promote(&sv);
            next_promote = now + 1.0;
        }
        if (now >= next_reclaim && !sv.draining) {
            reclaim(&sv);
            double step = s->visibility_timeout / 4;
            next_reclaim = now + (step < 0.2 ? 0.2 : step > 5 ? 5 : step);
        }
        if (now >= next_janitor) {
            janitor(&sv, removed, &n_removed);
            next_janitor = now + s->janitor_interval;
        }
        if (sv.rc.c == NULL) {
            redis_up = 0;
            down_since = now;
            log_warn("redis lost: %s", sv.rc.err);
            continue;
        }

        int room = s->concurrency - running_count(&sv);
        double until = next_beat < next_promote ? next_beat : next_promote;
        int block = (int)((until - now_s()) * 1000);
        if (block < 10)
            block = 10;
        if (block > 500)
            block = 500;
        if (room > 0 && !sv.draining) {
            /* high first: a non-blocking look at it, then both (blocking) */
            int got = read_queues(&sv, 1, -1, 0, ">");
            if (got == 0 && room > 0)
                got = read_queues(&sv, 1, block, 1, ">");
            if (got < 0) {
                redis_up = 0;
                down_since = now;
                log_warn("redis lost: %s", sv.rc.err);
            }
        } else {
            /* every slot busy (or draining): wait for a job to end, not a fixed time */
            struct pollfd pfd = {sv.slot_freed, POLLIN, 0};
            if (poll(&pfd, 1, block) > 0) {
                uint64_t n;
                if (read(sv.slot_freed, &n, sizeof(n)) < 0) {
                    /* nothing to read: another wakeup took it */
                }
            }
        }
    }

    log_info("%s; stopping the device workers", rc_exit ? "not started" : "drained");
    if (sv.rc.c && name_checked) { /* the heartbeat is ours only when the name was */
        char wkey[400], wset[256];
        snprintf(wkey, sizeof(wkey), "%sworker:%s", s->prefix, s->name);
        key(wset, sizeof(wset), s->prefix, "workers");
        redisReply *r = sep_redis_client_commandf(&sv.rc, "DEL %s", wkey);
        if (r)
            freeReplyObject(r);
        r = sep_redis_client_commandf(&sv.rc, "ZREM %s %s", wset, s->name);
        if (r)
            freeReplyObject(r);
    }
    sep_redis_client_close(&sv.rc);
    if (sv.cpu_pool)
        sep_pool_stop(sv.cpu_pool);
    sep_pool_stop(sv.pool);
    close(sv.slot_freed);
    log_info("stopped");
    return rc_exit;
}
