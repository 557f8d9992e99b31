/*
 * test_jobexec_pool.c - the job runner on the real device-worker pool (workerd/pool.h,
 * worker processes of build/workerd on the tiny fixture model):
 *
 *   - four jobs on four threads through one pool of one worker: all complete, their
 *     stems equal a job run on the in-process engine, and the pool mixed segments of
 *     several jobs into shared device batches (sep_pool_counters.mixed_batches; the
 *     pool keeps two batches in flight per worker, so two jobs alone never wait)
 *   - a "cuda" pool in a build without the CUDA backend answers SEP_POOL_EDEVICE: with
 *     a CPU pool as the fallback the job completes on it; without one it fails
 *     device_error (retryable)
 *   - an unknown model name: model_unavailable
 *
 * usage: test_jobexec_pool   (cmocka; WORKERD_BIN overrides build/workerd)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/engine.h"
#include "workerd/forward.h"
#include "workerd/jobexec.h"
#include "workerd/pool.h"

#define FIXTURE "tests/fixtures/apply/tiny_apply.safetensors"
#define MODEL "htdemucs"

static char exe[PATH_MAX], root[PATH_MAX], models_dir[PATH_MAX + 16], input[PATH_MAX + 16];
static sep_model *model;
static sep_engine *engine;
static sep_engine_forwarder engine_fwd;

static int pool_forward(void *ctx, const char *m, int mi, const float *in, int n, int length,
                        float *out, double deadline, char *err, size_t errlen)
{
    return sep_pool_forward(ctx, m, mi, in, n, length, out, deadline, err, errlen);
}

static sep_pool *start_pool(const char *device)
{
    sep_pool_config c;
    memset(&c, 0, sizeof(c));
    c.exe = exe;
    c.models_dir = models_dir;
    c.device = device;
    c.n_workers = 1;
    c.threads = 1;
    c.max_batch = 4;
    c.slots = 8;
    char err[512] = "";
    sep_pool *p = sep_pool_start(&c, err, sizeof(err));
    if (!p)
        fail_msg("sep_pool_start(%s): %s", device, err);
    return p;
}

static void spec_for(sep_job_spec *s, const char *outdir)
{
    sep_job_spec_init(s);
    s->model = model;
    s->model_name = MODEL;
    s->input_path = input;
    s->output_dir = outdir;
    s->format = SEP_OUT_WAVF32;
    s->clip = SEP_CLIP_NONE;
    s->seed = 3;
    s->max_batch = 2;
}

static float *read_planar(const char *path, int64_t *frames)
{
    SF_INFO si = {0};
    SNDFILE *sf = sf_open(path, SFM_READ, &si);
    assert_non_null(sf);
    float *x = malloc(sizeof(float) * si.frames * si.channels);
    assert_int_equal(sf_readf_float(sf, x, si.frames), si.frames);
    sf_close(sf);
    *frames = si.frames;
    return x;
}

/* max |a - b| over the stems of two finished jobs */
static double stems_diff(const char *dir_a, const char *dir_b, const sep_job_outcome *o)
{
    double m = 0;
    for (int s = 0; s < o->n_stems; s++) {
        char pa[PATH_MAX + 200], pb[PATH_MAX + 200];
        snprintf(pa, sizeof(pa), "%s/%s", dir_a, o->stems[s].file);
        snprintf(pb, sizeof(pb), "%s/%s", dir_b, o->stems[s].file);
        int64_t fa, fb;
        float *a = read_planar(pa, &fa), *b = read_planar(pb, &fb);
        assert_int_equal(fa, fb);
        for (int64_t i = 0; i < fa * 2; i++) {
            double d = fabs((double)a[i] - b[i]);
            if (!(d <= m))
                m = isnan(d) ? INFINITY : d;
        }
        free(a);
        free(b);
    }
    return m;
}

typedef struct {
    sep_job_spec spec;
    sep_job_outcome out;
    int rc;
} job;

static void *run_job(void *arg)
{
    job *j = arg;
    j->rc = sep_job_execute(&j->spec, &j->out);
    return NULL;
}

static void test_two_jobs_on_pool(void **state)
{
    (void)state;
    enum { JOBS = 4 };
    char ref_dir[PATH_MAX + 16], dirs[JOBS][PATH_MAX + 16];
    snprintf(ref_dir, sizeof(ref_dir), "%s/ref", root);
    sep_job_spec s;
    sep_job_outcome ref;
    spec_for(&s, ref_dir);
    s.forward = sep_engine_forward_fn;
    s.forward_ctx = &engine_fwd;
    assert_int_equal(sep_job_execute(&s, &ref), 0);

    sep_pool *p = start_pool("cpu");
    char err[256];
    const sep_model *pm = sep_pool_model(p, MODEL, err, sizeof(err));
    assert_non_null(pm);
    job jobs[JOBS];
    pthread_t th[JOBS];
    for (int i = 0; i < JOBS; i++) {
        snprintf(dirs[i], sizeof(dirs[i]), "%s/pool%d", root, i);
        spec_for(&jobs[i].spec, dirs[i]);
        jobs[i].spec.model = pm; /* the pool's metadata, as the supervisor uses it */
        jobs[i].spec.forward = pool_forward;
        jobs[i].spec.forward_ctx = p;
        jobs[i].spec.hard_time_limit = 120;
        assert_int_equal(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
    }
    for (int i = 0; i < JOBS; i++)
        pthread_join(th[i], NULL);
    sep_pool_counters pc;
    sep_pool_get_counters(p, &pc);
    sep_pool_stop(p);
    int64_t segments = 0, calls = 0;
    for (int i = 0; i < JOBS; i++) {
        segments += jobs[i].out.segments;
        calls += jobs[i].out.batches;
        if (jobs[i].rc)
            fail_msg("job %d: %s: %s", i, jobs[i].out.code_name, jobs[i].out.message);
        double d = stems_diff(ref_dir, dirs[i], &jobs[i].out);
        printf("MAXERR jobexec_pool_job%d_vs_in_process max_abs=%.3g\n", i, d);
        assert_true(d <= 1e-5);
    }
    printf("RESULT pool: %d jobs, %lld forward calls -> %llu device batches, %llu segments, "
           "%llu mixed batches (segments of several jobs)\n",
           JOBS, (long long)calls, (unsigned long long)pc.batches, (unsigned long long)pc.segments,
           (unsigned long long)pc.mixed_batches);
    assert_int_equal(pc.segments, segments);
    assert_true(pc.mixed_batches > 0);
}

static void test_gpu_failure_falls_back_to_cpu(void **state)
{
    (void)state;
    char ref_dir[PATH_MAX + 16], dir[PATH_MAX + 16];
    snprintf(ref_dir, sizeof(ref_dir), "%s/ref", root);
    snprintf(dir, sizeof(dir), "%s/fallback", root);
    sep_pool *gpu = start_pool("cuda"); /* no CUDA backend in this build: EDEVICE */
    sep_pool *cpu = start_pool("cpu");
    sep_job_spec s;
    sep_job_outcome o;

    spec_for(&s, dir);
    s.forward = pool_forward;
    s.forward_ctx = gpu;
    assert_int_equal(sep_job_execute(&s, &o), -1);
    printf("RESULT cuda pool without fallback: %s (%s)\n", o.code_name, o.message);
    assert_int_equal(o.code, SEP_JOB_DEVICE_ERROR);
    assert_true(o.retryable);

    s.fallback = pool_forward;
    s.fallback_ctx = cpu;
    assert_int_equal(sep_job_execute(&s, &o), 0);
    assert_int_equal(o.fell_back, 1);
    double d = stems_diff(ref_dir, dir, &o);
    printf("MAXERR jobexec_cuda_fallback_to_cpu_pool max_abs=%.3g\n", d);
    assert_true(d <= 1e-5);

    spec_for(&s, dir);
    s.forward = pool_forward;
    s.forward_ctx = cpu;
    s.model_name = "htdemucs_9s";
    assert_int_equal(sep_job_execute(&s, &o), -1);
    assert_int_equal(o.code, SEP_JOB_MODEL_UNAVAILABLE);
    sep_pool_stop(gpu);
    sep_pool_stop(cpu);
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
    snprintf(root, sizeof(root), "%s/sep-jobexec-pool-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root))
        return -1;
    snprintf(models_dir, sizeof(models_dir), "%s/models", root);
    char target[PATH_MAX], link[PATH_MAX + 64], err[256];
    if (mkdir(models_dir, 0755) || !realpath(FIXTURE, target))
        return -1;
    snprintf(link, sizeof(link), "%s/" MODEL ".safetensors", models_dir);
    if (symlink(target, link))
        return -1;
    /* 3 s of a synthetic stereo signal: about 40 segments per job */
    snprintf(input, sizeof(input), "%s/input.wav", root);
    SF_INFO si = {.samplerate = 44100, .channels = 2, .format = SF_FORMAT_WAV | SF_FORMAT_PCM_16};
    SNDFILE *sf = sf_open(input, SFM_WRITE, &si);
    if (!sf)
        return -1;
    for (int t = 0; t < 3 * 44100; t++) {
        double x = t / 44100.0;
        float fr[2] = {(float)(0.3 * sin(2 * M_PI * 110 * x) + 0.1 * sin(2 * M_PI * 1234.5 * x)),
                       (float)(0.3 * sin(2 * M_PI * 140 * x) * (0.6 + 0.4 * sin(2 * M_PI * x)))};
        sf_writef_float(sf, fr, 1);
    }
    sf_close(sf);
    model = sep_model_load(link, err, sizeof(err));
    if (!model)
        return -1;
    sep_engine_opts eo = {.device = "cpu", .threads = 1, .max_batch = 2};
    engine = sep_engine_create(model, &eo, err, sizeof(err));
    if (!engine)
        return -1;
    sep_engine_forwarder_init(&engine_fwd, engine, model, NULL, 2);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sep_engine_forwarder_destroy(&engine_fwd);
    sep_engine_free(engine);
    sep_model_free(model);
    char cmd[PATH_MAX + 32];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_jobs_on_pool),
        cmocka_unit_test(test_gpu_failure_falls_back_to_cpu),
    };
    return cmocka_run_group_tests_name("jobexec_pool", tests, setup, teardown);
}
