/*
 * test_pool.c - the device-worker pool (workerd/pool.h) with real `workerd
 * device-worker` processes on the tiny random-weight model
 * (tests/fixtures/apply/tiny_apply.safetensors, linked as htdemucs.safetensors in a
 * temporary models dir).
 *
 * Checks: outputs equal an in-process sep_engine_forward (max abs error printed,
 * <= 1e-6); several caller threads at once with batches that mix callers; kill -9 of
 * the worker running a batch (result still right, worker restarted) and twice on the
 * same segment (ECRASH, the pool still works); a deadline (ETIME, worker killed and
 * restarted, the pool still works); missing/unloadable models (EMODEL), bad
 * arguments (EINVAL); recycling after max_jobs_per_worker; "cuda" without a CUDA
 * backend (EDEVICE); a binary that cannot start; sep_pool_stop leaves no child.
 *
 * Run from the repository root (make test-pool); WORKERD_BIN overrides build/workerd.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>

#include "models/engine.h"
#include "shared/sep_ring.h"
#include "workerd/pool.h"

#define FIXTURE "tests/fixtures/apply/tiny_apply.safetensors"
#define MODEL "htdemucs"

static char models_dir[PATH_MAX];
static char exe[PATH_MAX];
static sep_model *ref_model;
static sep_engine *ref_engine;
static int SEG, CH, SRC; /* from the model's info */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* deterministic pseudo-random input, different per seed */
static float *make_input(int n, int length, unsigned seed)
{
    float *x = malloc((size_t)n * CH * length * sizeof(float));
    uint64_t s = 0x9e3779b97f4a7c15ull * (seed + 1);
    for (size_t i = 0; i < (size_t)n * CH * length; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0) * 0.5f;
    }
    return x;
}

/* max abs error of pool output vs the in-process engine, one segment at a time (the
 * engine is not reentrant: callers' threads take turns) */
static pthread_mutex_t ref_mu = PTHREAD_MUTEX_INITIALIZER;

static double check_against_engine(const float *in, int n, int length, const float *out)
{
    pthread_mutex_lock(&ref_mu);
    size_t per_in = (size_t)CH * length, per_out = per_in * SRC;
    float *ref = malloc(per_out * sizeof(float));
    double max_err = 0;
    char err[256];
    for (int i = 0; i < n; i++) {
        assert_int_equal(
            sep_engine_forward(ref_engine, 0, in + i * per_in, 1, length, ref, err, sizeof(err)),
            0);
        for (size_t k = 0; k < per_out; k++) {
            double d = fabs((double)ref[k] - (double)out[i * per_out + k]);
            if (!(d <= max_err)) /* NaN too */
                max_err = isnan(d) ? INFINITY : d;
        }
    }
    free(ref);
    pthread_mutex_unlock(&ref_mu);
    return max_err;
}

static sep_pool_config base_config(void)
{
    sep_pool_config c;
    memset(&c, 0, sizeof(c));
    c.exe = exe;
    c.models_dir = models_dir;
    c.device = "cpu";
    c.n_workers = 2;
    c.threads = 1;
    c.max_batch = 4;
    c.slots = 8;
    return c;
}

static sep_pool *start(const sep_pool_config *c)
{
    char err[512] = "";
    sep_pool *p = sep_pool_start(c, err, sizeof(err));
    if (!p)
        fprintf(stderr, "sep_pool_start: %s\n", err);
    assert_non_null(p);
    return p;
}

/* children of this process, from /proc (zombies included) */
static int count_children(void)
{
    DIR *d = opendir("/proc");
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        char path[300], buf[512];
        if (de->d_name[0] < '0' || de->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[len] = 0;
        char *rp = strrchr(buf, ')');
        int ppid = 0;
        char state;
        if (rp && sscanf(rp + 2, "%c %d", &state, &ppid) == 2 && ppid == getpid())
            n++;
    }
    closedir(d);
    return n;
}

static void stop(sep_pool *p)
{
    sep_pool_worker_stats st[8];
    int n = sep_pool_stats(p, st, 8);
    sep_pool_stop(p);
    for (int i = 0; i < n; i++)
        if (st[i].pid > 0)
            assert_true(kill(st[i].pid, 0) == -1 && errno == ESRCH);
    assert_int_equal(count_children(), 0);
}

/* waits until some worker is BUSY with a pid other than `not_pid`; returns its pid */
static pid_t wait_busy(sep_pool *p, pid_t not_pid, double timeout)
{
    double until = now_s() + timeout;
    while (now_s() < until) {
        sep_pool_worker_stats st[8];
        int n = sep_pool_stats(p, st, 8);
        for (int i = 0; i < n; i++)
            if (st[i].state == SEP_WORKER_BUSY && st[i].pid > 0 && st[i].pid != not_pid)
                return st[i].pid;
        sleep_ms(2);
    }
    return 0;
}

static uint64_t total_restarts(sep_pool *p)
{
    sep_pool_worker_stats st[8];
    int n = sep_pool_stats(p, st, 8);
    uint64_t r = 0;
    for (int i = 0; i < n; i++)
        r += st[i].restarts;
    return r;
}

/* ------------------------------------------------------------------------ tests */

static void test_parity(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    sep_pool *p = start(&c);
    char err[512];
    const sep_model *m = sep_pool_model(p, MODEL, err, sizeof(err));
    assert_non_null(m);
    assert_int_equal(sep_model_get_info(m)->segment_samples, SEG);
    assert_ptr_equal(sep_pool_model(p, MODEL, err, sizeof(err)), m); /* cached */

    int lengths[] = {SEG, SEG - 1234};
    int counts[] = {1, 6, 9};
    for (int li = 0; li < 2; li++)
        for (int ci = 0; ci < 3; ci++) {
            int n = counts[ci], len = lengths[li];
            float *in = make_input(n, len, (unsigned)(li * 10 + ci));
            float *out = malloc((size_t)n * SRC * CH * len * sizeof(float));
            assert_int_equal(sep_pool_forward(p, MODEL, 0, in, n, len, out, 0, err, sizeof(err)),
                             SEP_POOL_OK);
            double e = check_against_engine(in, n, len, out);
            printf("parity: %d segments of %d samples: max abs err %.3g\n", n, len, e);
            assert_true(e <= 1e-6);
            free(in);
            free(out);
        }
    assert_int_equal(sep_pool_forward(p, MODEL, 0, NULL, 0, SEG, NULL, 0, err, sizeof(err)),
                     SEP_POOL_OK);
    sep_pool_counters k;
    sep_pool_get_counters(p, &k);
    assert_int_equal(k.segments, 2 * (1 + 6 + 9));
    assert_true(k.batches >= 2 * (1 + 2 + 3)); /* max_batch 4 */
    sep_pool_worker_stats st[4];
    assert_int_equal(sep_pool_stats(p, st, 4), 2);
    for (int i = 0; i < 2; i++) {
        assert_true(st[i].pid > 0);
        assert_string_equal(st[i].device, "cpu");
        assert_int_equal(st[i].restarts, 0);
        assert_true(st[i].rss_bytes > 0);
    }
    assert_int_equal(st[0].segments + st[1].segments, k.segments);
    stop(p);
}

typedef struct {
    sep_pool *p;
    int id, rounds, n;
    int rc;
    double max_err;
} caller_arg;

static void *caller(void *a)
{
    caller_arg *c = a;
    char err[512];
    for (int r = 0; r < c->rounds; r++) {
        float *in = make_input(c->n, SEG, (unsigned)(100 + c->id * 37 + r));
        float *out = malloc((size_t)c->n * SRC * CH * SEG * sizeof(float));
        int rc = sep_pool_forward(c->p, MODEL, 0, in, c->n, SEG, out, 0, err, sizeof(err));
        if (rc != SEP_POOL_OK) {
            fprintf(stderr, "caller %d: %d %s\n", c->id, rc, err);
            c->rc = rc;
        } else {
            double e = check_against_engine(in, c->n, SEG, out);
            if (e > c->max_err)
                c->max_err = e;
        }
        free(in);
        free(out);
    }
    return NULL;
}

static void test_concurrent_callers_share_batches(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    c.debug_delay_ms = 20; /* let segments queue up while the workers are busy */
    sep_pool *p = start(&c);
    enum { T = 6 };
    pthread_t th[T];
    caller_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (caller_arg){.p = p, .id = i, .rounds = 4, .n = 3};
        pthread_create(&th[i], NULL, caller, &args[i]);
    }
    double max_err = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].rc, SEP_POOL_OK);
        if (args[i].max_err > max_err)
            max_err = args[i].max_err;
    }
    sep_pool_counters k;
    sep_pool_get_counters(p, &k);
    printf("concurrent: %d callers x 4 x 3 segments: %llu batches, %llu mixing callers, "
           "max abs err %.3g\n",
           T, (unsigned long long)k.batches, (unsigned long long)k.mixed_batches, max_err);
    assert_true(max_err <= 1e-6);
    assert_int_equal(k.segments, T * 4 * 3);
    assert_true(k.mixed_batches > 0);
    assert_true(k.batches < T * 4 * 3); /* real batches, not one segment each */
    stop(p);
}

typedef struct {
    sep_pool *p;
    int n;
    float *in, *out;
    int rc;
    char err[512];
    double deadline;
} fwd_arg;

static void *fwd(void *a)
{
    fwd_arg *f = a;
    f->rc = sep_pool_forward(f->p, MODEL, 0, f->in, f->n, SEG, f->out, f->deadline, f->err,
                             sizeof(f->err));
    return NULL;
}

static void test_kill_worker_mid_forward(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    c.debug_delay_ms = 400;
    sep_pool *p = start(&c);
    fwd_arg f = {.p = p, .n = 3};
    f.in = make_input(3, SEG, 7);
    f.out = malloc((size_t)3 * SRC * CH * SEG * sizeof(float));
    pthread_t t;
    pthread_create(&t, NULL, fwd, &f);
    pid_t victim = wait_busy(p, 0, 5.0);
    assert_true(victim > 0);
    sleep_ms(50); /* inside the forward pass */
    assert_int_equal(kill(victim, SIGKILL), 0);
    pthread_join(t, NULL);
    assert_int_equal(f.rc, SEP_POOL_OK);
    double e = check_against_engine(f.in, 3, SEG, f.out);
    printf("kill -9 mid-forward: result max abs err %.3g\n", e);
    assert_true(e <= 1e-6);
    sep_pool_counters k;
    sep_pool_get_counters(p, &k);
    assert_int_equal(k.reruns, 3);
    assert_int_equal(total_restarts(p), 1);
    /* the restarted worker is up again with a new pid */
    double until = now_s() + 5;
    int live = 0;
    while (now_s() < until && live < 2) {
        sep_pool_worker_stats st[4];
        sep_pool_stats(p, st, 4);
        live = 0;
        for (int i = 0; i < 2; i++)
            live += st[i].pid > 0 && st[i].pid != victim && st[i].state == SEP_WORKER_IDLE;
        sleep_ms(5);
    }
    assert_int_equal(live, 2);

    /* killed twice on the same segment: ECRASH, and the pool still works after */
    f.n = 1;
    pthread_create(&t, NULL, fwd, &f);
    pid_t v1 = wait_busy(p, 0, 5.0);
    assert_true(v1 > 0);
    kill(v1, SIGKILL);
    pid_t v2 = wait_busy(p, v1, 5.0);
    assert_true(v2 > 0);
    kill(v2, SIGKILL);
    pthread_join(t, NULL);
    assert_int_equal(f.rc, SEP_POOL_ECRASH);
    printf("killed twice: %s\n", f.err);
    assert_non_null(strstr(f.err, "died twice"));
    f.n = 2;
    fwd(&f);
    assert_int_equal(f.rc, SEP_POOL_OK);
    assert_true(check_against_engine(f.in, 2, SEG, f.out) <= 1e-6);
    assert_int_equal(total_restarts(p), 3);
    free(f.in);
    free(f.out);
    stop(p);
}

static void test_deadline(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    c.n_workers = 1;
    c.debug_delay_ms = 1500;
    sep_pool *p = start(&c);
    sep_pool_worker_stats st[2];
    sep_pool_stats(p, st, 2);
    pid_t before = st[0].pid;
    char err[512];
    float *in = make_input(2, SEG, 3);
    float *out = malloc((size_t)2 * SRC * CH * SEG * sizeof(float));
    double t0 = now_s();
    int rc = sep_pool_forward(p, MODEL, 0, in, 2, SEG, out, t0 + 0.2, err, sizeof(err));
    double took = now_s() - t0;
    printf("deadline: rc %d after %.3f s: %s\n", rc, took, err);
    assert_int_equal(rc, SEP_POOL_ETIME);
    assert_true(took >= 0.19 && took < 1.0);
    /* already past: fails without running */
    assert_int_equal(sep_pool_forward(p, MODEL, 0, in, 1, SEG, out, now_s() - 1, err, sizeof(err)),
                     SEP_POOL_ETIME);
    /* the worker was killed and restarted; the pool still works */
    assert_int_equal(sep_pool_forward(p, MODEL, 0, in, 2, SEG, out, now_s() + 30, err, sizeof(err)),
                     SEP_POOL_OK);
    assert_true(check_against_engine(in, 2, SEG, out) <= 1e-6);
    sep_pool_stats(p, st, 2);
    assert_true(st[0].pid != before);
    assert_int_equal(st[0].restarts, 1);
    free(in);
    free(out);
    stop(p);
}

static void test_models_and_arguments(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    c.n_workers = 1;
    sep_pool *p = start(&c);
    char err[512], path[PATH_MAX + 64];
    float *in = make_input(1, SEG, 1);
    float *out = malloc((size_t)SRC * CH * SEG * sizeof(float));

    err[0] = 0;
    assert_null(sep_pool_model(p, "nope", err, sizeof(err)));
    assert_non_null(strstr(err, "nope"));
    assert_int_equal(sep_pool_forward(p, "nope", 0, in, 1, SEG, out, 0, err, sizeof(err)),
                     SEP_POOL_EMODEL);
    printf("missing model: %s\n", err);
    assert_int_equal(
        sep_pool_forward(p, "../models/htdemucs", 0, in, 1, SEG, out, 0, err, sizeof(err)),
        SEP_POOL_EMODEL);
    /* a file that is not a model */
    snprintf(path, sizeof(path), "%s/broken.safetensors", models_dir);
    FILE *f = fopen(path, "w");
    fputs("not a safetensors file", f);
    fclose(f);
    assert_int_equal(sep_pool_forward(p, "broken", 0, in, 1, SEG, out, 0, err, sizeof(err)),
                     SEP_POOL_EMODEL);
    unlink(path);
    /* known to the supervisor, gone when the worker loads it: the worker's EMODEL */
    char target[PATH_MAX];
    assert_non_null(realpath(FIXTURE, target));
    snprintf(path, sizeof(path), "%s/vanishing.safetensors", models_dir);
    assert_int_equal(symlink(target, path), 0);
    assert_non_null(sep_pool_model(p, "vanishing", err, sizeof(err)));
    unlink(path);
    assert_int_equal(sep_pool_forward(p, "vanishing", 0, in, 1, SEG, out, 0, err, sizeof(err)),
                     SEP_POOL_EMODEL);
    printf("worker-side missing model: %s\n", err);
    assert_non_null(strstr(err, "vanishing"));

    assert_int_equal(sep_pool_forward(p, MODEL, 1, in, 1, SEG, out, 0, err, sizeof(err)),
                     SEP_POOL_EINVAL); /* a single network, not a bag */
    assert_int_equal(sep_pool_forward(p, MODEL, 0, in, 1, SEG + 1, out, 0, err, sizeof(err)),
                     SEP_POOL_EINVAL);
    assert_int_equal(sep_pool_forward(p, MODEL, 0, NULL, 1, SEG, out, 0, err, sizeof(err)),
                     SEP_POOL_EINVAL);
    assert_int_equal(sep_pool_forward(p, MODEL, 0, in, -1, SEG, out, 0, err, sizeof(err)),
                     SEP_POOL_EINVAL);
    /* and after all that, it still works */
    assert_int_equal(sep_pool_forward(p, MODEL, 0, in, 1, SEG, out, 0, err, sizeof(err)),
                     SEP_POOL_OK);
    assert_true(check_against_engine(in, 1, SEG, out) <= 1e-6);
    assert_int_equal(total_restarts(p), 0);
    free(in);
    free(out);
    stop(p);
}

static void test_recycle(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    c.n_workers = 1;
    c.max_jobs_per_worker = 2;
    sep_pool *p = start(&c);
    char err[512];
    float *in = make_input(1, SEG, 5);
    float *out = malloc((size_t)SRC * CH * SEG * sizeof(float));
    pid_t pids[5];
    for (int i = 0; i < 5; i++) {
        assert_int_equal(sep_pool_forward(p, MODEL, 0, in, 1, SEG, out, 0, err, sizeof(err)),
                         SEP_POOL_OK);
        assert_true(check_against_engine(in, 1, SEG, out) <= 1e-6);
        sep_pool_worker_stats st[1];
        sep_pool_stats(p, st, 1);
        pids[i] = st[0].pid;
    }
    /* forward calls 1-2 on the first process, 3-4 on the second, 5 on the third */
    double until = now_s() + 5;
    while (total_restarts(p) < 2 && now_s() < until)
        sleep_ms(5);
    sep_pool_worker_stats st[1];
    sep_pool_stats(p, st, 1);
    printf("recycle: pids %d %d %d %d %d, restarts %llu\n", pids[0], pids[1], pids[2], pids[3],
           pids[4], (unsigned long long)st[0].restarts);
    assert_int_equal(st[0].restarts, 2);
    assert_int_equal(st[0].segments, 5);
    assert_true(pids[0] != pids[4]);
    sep_pool_counters k;
    sep_pool_get_counters(p, &k);
    assert_int_equal(k.reruns, 0);
    free(in);
    free(out);
    stop(p);
}

/* the value of NAME in a process's environment ("" when absent) */
static void proc_env(pid_t pid, const char *name, char *out, size_t outlen)
{
    char path[64], buf[65536];
    snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
    out[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    size_t nl = strlen(name);
    for (size_t i = 0; i < n; i += strlen(buf + i) + 1)
        if (strncmp(buf + i, name, nl) == 0 && buf[i + nl] == '=')
            snprintf(out, outlen, "%s", buf + i + nl + 1);
}

static void test_cuda_without_backend(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    c.device = "cuda";
    c.n_workers = 2;
    setenv("CUDA_VISIBLE_DEVICES", "5,7", 1); /* the operator's GPUs: workers get one each */
    sep_pool *p = start(&c);
    unsetenv("CUDA_VISIBLE_DEVICES");
    char err[512];
    float *in = make_input(1, SEG, 9);
    float *out = malloc((size_t)SRC * CH * SEG * sizeof(float));
    int rc = sep_pool_forward(p, MODEL, 0, in, 1, SEG, out, 0, err, sizeof(err));
    printf("cuda: rc %d: %s\n", rc, err);
    assert_int_equal(rc, SEP_POOL_EDEVICE);
    sep_pool_worker_stats st[2];
    assert_int_equal(sep_pool_stats(p, st, 2), 2);
    assert_string_equal(st[0].device, "cuda:0");
    assert_string_equal(st[1].device, "cuda:1");
    char v[64];
    proc_env(st[0].pid, "CUDA_VISIBLE_DEVICES", v, sizeof(v));
    assert_string_equal(v, "5");
    proc_env(st[1].pid, "CUDA_VISIBLE_DEVICES", v, sizeof(v));
    assert_string_equal(v, "7");
    free(in);
    free(out);
    stop(p);
    /* without an operator list: device i */
    c.n_workers = 1;
    p = start(&c);
    sep_pool_stats(p, st, 1);
    proc_env(st[0].pid, "CUDA_VISIBLE_DEVICES", v, sizeof(v));
    assert_string_equal(v, "0");
    stop(p);
}

static void test_start_errors(void **state)
{
    (void)state;
    char err[512];
    sep_pool_config c = base_config();
    c.exe = "/bin/false"; /* runs, exits 1 before READY */
    assert_null(sep_pool_start(&c, err, sizeof(err)));
    printf("bad exe: %s\n", err);
    assert_non_null(strstr(err, "did not start"));
    c.exe = "/nonexistent/workerd";
    assert_null(sep_pool_start(&c, err, sizeof(err)));
    c = base_config();
    c.device = "tpu";
    assert_null(sep_pool_start(&c, err, sizeof(err)));
    c = base_config();
    c.n_workers = 0;
    assert_null(sep_pool_start(&c, err, sizeof(err)));
    assert_int_equal(count_children(), 0);
}

static void test_stop_with_callers_waiting(void **state)
{
    (void)state;
    sep_pool_config c = base_config();
    c.n_workers = 1;
    c.debug_delay_ms = 3000;
    sep_pool *p = start(&c);
    fwd_arg f = {.p = p, .n = 2};
    f.in = make_input(2, SEG, 11);
    f.out = malloc((size_t)2 * SRC * CH * SEG * sizeof(float));
    pthread_t t;
    pthread_create(&t, NULL, fwd, &f);
    assert_true(wait_busy(p, 0, 5.0) > 0);
    double t0 = now_s();
    stop(p); /* the caller gets ESTOPPED; the busy worker is killed, not waited for */
    pthread_join(t, NULL);
    printf("stop with a caller waiting: %.2f s, rc %d\n", now_s() - t0, f.rc);
    assert_int_equal(f.rc, SEP_POOL_ESTOPPED);
    assert_true(now_s() - t0 < 1.0);
    free(f.in);
    free(f.out);
}

/* --- the worker process on its own, driven through a region made here ---------- */

static pid_t spawn_worker(sep_shm *s)
{
    char a[3][16], ppid[16];
    snprintf(a[0], 16, "%d", s->memfd);
    snprintf(a[1], 16, "%d", sep_ring_fd(s, SEP_RING_CMD));
    snprintf(a[2], 16, "%d", sep_ring_fd(s, SEP_RING_EVT));
    snprintf(ppid, sizeof(ppid), "%d", (int)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        fcntl(s->memfd, F_SETFD, 0);
        fcntl(sep_ring_fd(s, SEP_RING_CMD), F_SETFD, 0);
        fcntl(sep_ring_fd(s, SEP_RING_EVT), F_SETFD, 0);
        execl(exe, exe, "device-worker", "--shm-fd", a[0], "--cmd-fd", a[1], "--evt-fd", a[2],
              "--ppid", ppid, "--models", models_dir, "--threads", "1", "--max-batch", "2",
              (char *)NULL);
        _exit(127);
    }
    return pid;
}

static sep_msg expect_event(sep_shm *s, int type)
{
    sep_msg m;
    memset(&m, 0, sizeof(m));
    int r = sep_ring_wait_pop(s, SEP_RING_EVT, &m, 10000);
    assert_int_equal(r, 1);
    assert_int_equal(m.type, type);
    return m;
}

static sep_msg good_batch(uint32_t id)
{
    sep_msg m;
    memset(&m, 0, sizeof(m));
    m.type = SEP_MSG_BATCH;
    m.id = id;
    strcpy(m.model, MODEL);
    m.length = SEG;
    m.channels = CH;
    m.sources = SRC;
    m.slot = 0;
    m.count = 2;
    return m;
}

static void test_worker_protocol(void **state)
{
    (void)state;
    sep_shm s;
    char err[256];
    assert_int_equal(
        sep_shm_create(&s, 16, 2, (size_t)CH * SEG, (size_t)SRC * CH * SEG, err, sizeof(err)), 0);
    pid_t pid = spawn_worker(&s);
    assert_true(pid > 0);
    sep_msg m = expect_event(&s, SEP_MSG_READY);
    assert_int_equal(m.pid, pid);

    /* bad messages are answered EINVAL, never acted on */
    struct {
        sep_msg m;
        const char *what;
    } bad[8];
    int nb = 0;
    bad[nb].m = good_batch(10), bad[nb].m.slot = 2, bad[nb++].what = "slot past the arena";
    bad[nb].m = good_batch(11), bad[nb].m.count = 3, bad[nb++].what = "range past the arena";
    bad[nb].m = good_batch(12), bad[nb].m.length = SEG * 4, bad[nb++].what = "segment too long";
    bad[nb].m = good_batch(13), strcpy(bad[nb].m.model, "../../etc/x"), bad[nb++].what = "path";
    bad[nb].m = good_batch(14), bad[nb].m.type = 99, bad[nb++].what = "type";
    bad[nb].m = good_batch(15), bad[nb].m.channels = 1, bad[nb].m.sources = 8,
    bad[nb++].what = "not the model's geometry";
    bad[nb].m = good_batch(16), bad[nb].m.model_index = 3, bad[nb++].what = "network index";
    for (int i = 0; i < nb; i++) {
        assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &bad[i].m), 0);
        m = expect_event(&s, SEP_MSG_DONE);
        printf("worker rejects %s: %s\n", bad[i].what, m.text);
        assert_int_equal(m.id, bad[i].m.id);
        assert_int_equal(m.status, SEP_MSG_EINVAL);
    }
    /* a missing model */
    sep_msg mm = good_batch(20);
    strcpy(mm.model, "absent");
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &mm), 0);
    m = expect_event(&s, SEP_MSG_DONE);
    assert_int_equal(m.status, SEP_MSG_EMODEL);

    /* a good batch runs in place */
    float *in = make_input(2, SEG, 21);
    memcpy(sep_shm_in(&s, 0), in, (size_t)2 * CH * SEG * sizeof(float));
    sep_msg g = good_batch(30);
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &g), 0);
    m = expect_event(&s, SEP_MSG_DONE);
    assert_int_equal(m.id, 30);
    assert_int_equal(m.status, SEP_MSG_OK);
    assert_true(check_against_engine(in, 2, SEG, sep_shm_out(&s, 0)) <= 1e-6);

    /* STOP: exits 0 */
    sep_msg stop;
    memset(&stop, 0, sizeof(stop));
    stop.type = SEP_MSG_STOP;
    assert_int_equal(sep_ring_push(&s, SEP_RING_CMD, &stop), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);

    /* a corrupt command ring: the worker exits 3 instead of reading garbage */
    sep_shm_reset(&s);
    pid = spawn_worker(&s);
    expect_event(&s, SEP_MSG_READY);
    atomic_store(&s.ring[SEP_RING_CMD].ctl->tail, 1000);
    uint64_t one = 1;
    assert_int_equal(write(sep_ring_fd(&s, SEP_RING_CMD), &one, 8), 8);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 3);
    free(in);
    sep_shm_close(&s);
}

/* The worker dies with its parent (PR_SET_PDEATHSIG). */
static void test_worker_dies_with_parent(void **state)
{
    (void)state;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t mid = fork();
    if (mid == 0) {
        close(fds[0]);
        sep_shm s;
        char err[256];
        if (sep_shm_create(&s, 16, 2, (size_t)CH * SEG, (size_t)SRC * CH * SEG, err, sizeof(err)))
            _exit(1);
        pid_t w = spawn_worker(&s);
        sep_msg m;
        if (sep_ring_wait_pop(&s, SEP_RING_EVT, &m, 10000) != 1 || m.type != SEP_MSG_READY)
            _exit(2);
        if (write(fds[1], &w, sizeof(w)) != sizeof(w))
            _exit(3);
        _exit(0); /* the worker's parent goes away without a STOP */
    }
    close(fds[1]);
    pid_t w = 0;
    assert_int_equal(read(fds[0], &w, sizeof(w)), sizeof(w));
    close(fds[0]);
    int st;
    assert_int_equal(waitpid(mid, &st, 0), mid);
    assert_int_equal(WEXITSTATUS(st), 0);
    double until = now_s() + 5;
    while (kill(w, 0) == 0 && now_s() < until)
        sleep_ms(5);
    assert_true(kill(w, 0) == -1 && errno == ESRCH);
}

static int setup(void **state)
{
    (void)state;
    const char *bin = getenv("WORKERD_BIN");
    if (!realpath(bin ? bin : "build/workerd", exe)) {
        fprintf(stderr, "workerd binary not found (%s)\n", bin ? bin : "build/workerd");
        return -1;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(models_dir, sizeof(models_dir), "%s/sep-pool-test-XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(models_dir))
        return -1;
    char target[PATH_MAX], link[PATH_MAX + 32];
    if (!realpath(FIXTURE, target))
        return -1;
    snprintf(link, sizeof(link), "%s/" MODEL ".safetensors", models_dir);
    if (symlink(target, link))
        return -1;
    char err[256];
    ref_model = sep_model_load(link, err, sizeof(err));
    if (!ref_model)
        return -1;
    const sep_model_info *in = sep_model_get_info(ref_model);
    SEG = in->segment_samples;
    CH = in->audio_channels;
    SRC = in->n_sources;
    sep_engine_opts o = {.device = "cpu", .threads = 1, .max_batch = 1};
    ref_engine = sep_engine_create(ref_model, &o, err, sizeof(err));
    printf("model: %d channels, %d sources, segment %d samples\n", CH, SRC, SEG);
    return ref_engine ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    sep_engine_free(ref_engine);
    sep_model_free(ref_model);
    char link[PATH_MAX + 32];
    snprintf(link, sizeof(link), "%s/" MODEL ".safetensors", models_dir);
    unlink(link);
    rmdir(models_dir);
    return 0;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parity),
        cmocka_unit_test(test_concurrent_callers_share_batches),
        cmocka_unit_test(test_kill_worker_mid_forward),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_models_and_arguments),
        cmocka_unit_test(test_recycle),
        cmocka_unit_test(test_cuda_without_backend),
        cmocka_unit_test(test_start_errors),
        cmocka_unit_test(test_stop_with_callers_waiting),
        cmocka_unit_test(test_worker_protocol),
        cmocka_unit_test(test_worker_dies_with_parent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
