/*
 * cpu_engine.c - times the C engine on full-size segments (used by bench/cpu).
 *
 *   cpu_engine WEIGHTS [--threads N] [--runs R] [--batch B] [--device D]
 *   cpu_engine --fma-peak [--threads N]
 *
 * Runs R forward passes of B segments (the model's segment length) of a seeded
 * random mix after one warm-up pass, and prints machine-readable lines:
 *   engine_run_seconds <t1> <t2> ...
 *   engine_median_seconds <median per forward pass>
 *   engine_per_segment_seconds <median / B>
 *   engine_peak_rss_mib <peak resident set size of this process>
 *   engine_run_peak_rss_mib <peak RSS from the warm-up pass on: the peak reset
 *                           (/proc/self/clear_refs) after the model is loaded, as
 *                           bench/cpu_torch.py does, so both sides count the same span>
 *   engine_workspace_mib <activation workspace held by the engine>
 *   engine_cpu_seconds <median CPU time (user + system, all threads) per pass>
 *   engine_isa <CPU kernels used: generic, avx2, avx512 (SEP_CPU_ISA forces one)>
 *   engine_gemm <GEMM provider used: openblas, onednn (SEP_CPU_GEMM forces one)>
 * --fma-peak prints, for each instruction set this CPU supports, the GFLOP/s of N
 * threads running a register-only FMA loop (best of five short trials):
 *   fma_peak_gflops <isa> <GFLOP/s>
 *   fma_peak_gflops_per_cpu_second <isa> <GFLOP per CPU-second: one core's peak>
 * and the set the engine would use (engine_isa).
 * CPU time is less sensitive than wall time to other processes on the machine; with
 * OMP_WAIT_POLICY=passive it excludes threads spinning at barriers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "models/cpu_gemm.h"
#include "models/cpu_kernels.h"
#include "models/engine.h"
#include "models/util.h"

/* Resets the peak RSS (VmHWM) to the current RSS; 0 on success. */
static int reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return -1;
    int bad = fputs("5", f) < 0;
    return fclose(f) != 0 || bad ? -1 : 0;
}

/* VmHWM of this process in MiB, or -1. */
static double peak_rss_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    double mib = -1;
    while (fgets(line, sizeof line, f)) {
        long kib;
        if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) {
            mib = kib / 1024.0;
            break;
        }
    }
    fclose(f);
    return mib;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *device = "cpu";
    int threads = 0, runs = 3, batch = 1, peak = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--fma-peak") == 0) {
            peak = 1;
            continue;
        }
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
            device = argv[++i];
        else
            path = argv[i];
    }
    char err[512];
    if (peak) {
        for (int i = 0; sep_cpu_isas[i]; i++)
            if (sep_cpu_isa_supported(sep_cpu_isas[i])) {
                const char *isa = sep_cpu_isas[i];
                double per_cpu, g = sep_cpu_fma_peak_gflops(isa, threads, 1.0, &per_cpu);
                printf("fma_peak_gflops %s %.1f\n", isa, g);
                printf("fma_peak_gflops_per_cpu_second %s %.1f\n", isa, per_cpu);
            }
        const cpu_kernels *k = sep_cpu_kernels(err, sizeof(err));
        if (!k) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        printf("engine_isa %s\n", k->name);
        return 0;
    }
    if (!path || runs < 1 || batch < 1) {
        fprintf(stderr,
                "usage: %s WEIGHTS [--threads N] [--runs R] [--batch B] [--device D]\n"
                "       %s --fma-peak [--threads N]\n",
                argv[0], argv[0]);
        return 2;
    }
    sep_model *m = sep_model_load(path, err, sizeof(err));
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const sep_model_info *info = sep_model_get_info(m);
    sep_engine_opts opts = {.device = device, .threads = threads, .max_batch = batch};
    sep_engine *e = sep_engine_create(m, &opts, err, sizeof(err));
    if (!e) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int len = info->segment_samples;
    size_t in_n = (size_t)batch * info->audio_channels * len;
    float *mix = malloc(in_n * sizeof(float));
    float *out = malloc(in_n * info->n_sources * sizeof(float));
    unsigned s = 12345;
    for (size_t i = 0; i < in_n; i++) {
        s = s * 1103515245u + 12345u;
        mix[i] = ((float)((s >> 8) & 0xffff) / 65536.0f - 0.5f) * 0.5f;
    }
    int peak_reset = reset_peak_rss() == 0;
    if (sep_engine_forward(e, 0, mix, batch, len, out, err, sizeof(err))) { /* warm-up */
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    double *t = calloc((size_t)runs, sizeof(double));
    double *cpu = calloc((size_t)runs, sizeof(double));
    printf("engine_run_seconds");
    for (int r = 0; r < runs; r++) {
        double t0 = sep_wall_seconds(), c0 = sep_cpu_seconds();
        if (sep_engine_forward(e, 0, mix, batch, len, out, err, sizeof(err))) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        t[r] = sep_wall_seconds() - t0;
        cpu[r] = sep_cpu_seconds() - c0;
        printf(" %.5f", t[r]);
        fflush(stdout);
    }
    printf("\n");
    qsort(t, (size_t)runs, sizeof(double), cmp_double);
    qsort(cpu, (size_t)runs, sizeof(double), cmp_double);
    double med = runs % 2 ? t[runs / 2] : 0.5 * (t[runs / 2 - 1] + t[runs / 2]);
    double cmed = runs % 2 ? cpu[runs / 2] : 0.5 * (cpu[runs / 2 - 1] + cpu[runs / 2]);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double run_peak_mib = peak_reset ? peak_rss_mib() : -1;
    printf("engine_median_seconds %.5f\n", med);
    printf("engine_per_segment_seconds %.5f\n", med / batch);
    printf("engine_peak_rss_mib %.1f\n", ru.ru_maxrss / 1024.0);
    if (peak_reset)
        printf("engine_run_peak_rss_mib %.1f\n", run_peak_mib);
    printf("engine_workspace_mib %.1f\n", sep_engine_workspace_bytes(e) / 1048576.0);
    printf("engine_best_seconds %.5f\n", t[0] / batch);
    printf("engine_cpu_seconds %.3f\n", cmed / batch);
    if (strcmp(device, "cpu") == 0) {
        const char *isa = sep_cpu_kernels(err, sizeof(err))->name;
        printf("engine_isa %s\n", isa);
        printf("engine_gemm %s\n", sep_cpu_gemm(isa, err, sizeof(err))->name);
    }
    free(cpu);
    free(t);
    free(mix);
    free(out);
    sep_engine_free(e);
    sep_model_free(m);
    return 0;
}
