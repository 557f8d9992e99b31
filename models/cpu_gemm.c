/*
 * cpu_gemm.c - the SGEMM providers of the CPU backend (cpu_gemm.h).
 *
 * OpenBLAS is linked and runs single-threaded (cpu_backend.c sets it). oneDNN's
 * dnnl_sgemm (Debian's libdnnl2) is dlopen()ed on first use, so a machine without it
 * still runs and no binary links its 40 MiB. Which one: `make bench-libs` measured
 * both, one call per thread's chunk as the backend makes them (models/README.md). On an
 * AVX-512 CPU (Zen 4) oneDNN was faster on every linear and conv GEMM shape of the
 * network (1.04-1.19x); on AVX2 (Zen 3) neither won every shape of a family, so
 * OpenBLAS stays there. SEP_CPU_GEMM=openblas|onednn overrides the choice.
 *
 * oneDNN threads a call made outside an OpenMP parallel region over
 * omp_get_max_threads(); inside one it runs on the calling thread. The chunks are
 * sized for one thread, so a call from outside a region (one chunk, or one thread)
 * is made with the calling thread's thread count set to 1 for its duration.
 */
#include "models/cpu_gemm.h"

#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char sep_cpu_gemm_names[] = "openblas, onednn";

/* Builds under AddressSanitizer (the sanitized test binaries) take oneDNN only when
 * SEP_CPU_GEMM asks for it: the leak checkers of GCC 12 and LLVM 14 crash scanning the
 * dynamic TLS that libdnnl leaves in the OpenMP threads (glibc 2.36). */
#if defined(__SANITIZE_ADDRESS__)
#define ONEDNN_BY_DEFAULT 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ONEDNN_BY_DEFAULT 0
#endif
#endif
#ifndef ONEDNN_BY_DEFAULT
#define ONEDNN_BY_DEFAULT 1
#endif

static void openblas_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha,
                           const float *a, int lda, const float *b, int ldb, float beta, float *c,
                           int ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* dnnl.h: dnnl_status_t dnnl_sgemm(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N,
 * dnnl_dim_t K, float alpha, const float *A, dnnl_dim_t lda, const float *B,
 * dnnl_dim_t ldb, float beta, float *C, dnnl_dim_t ldc), row-major, dnnl_dim_t int64_t,
 * dnnl_success 0. Declared here so the build needs no oneDNN headers. */
typedef int (*dnnl_sgemm_fn)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t,
                             const float *, int64_t, float, float *, int64_t);
static dnnl_sgemm_fn dnnl_sgemm_ptr;

static void onednn_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    int status;
    if (omp_in_parallel()) {
        status = dnnl_sgemm_ptr(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    } else {
        int nt = omp_get_max_threads();
        omp_set_num_threads(1);
        status = dnnl_sgemm_ptr(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        omp_set_num_threads(nt);
    }
    /* only invalid arguments fail, and OpenBLAS takes the same ones */
    if (status != 0)
        openblas_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static const cpu_gemm gemm_openblas = {"openblas", openblas_sgemm};
static const cpu_gemm gemm_onednn = {"onednn", onednn_sgemm};

static pthread_once_t onednn_once = PTHREAD_ONCE_INIT;
static char onednn_error[512];

static void onednn_load(void)
{
    static const char *const names[] = {"libdnnl.so.2", "libdnnl.so"};
    void *lib = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !lib; i++) {
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        const char *e = lib ? NULL : dlerror();
        if (e && !onednn_error[0]) /* the first name's reason: the one that matters */
            snprintf(onednn_error, sizeof onednn_error, "oneDNN (libdnnl.so.2) not loadable: %s",
                     e);
    }
    if (!lib) {
        if (!onednn_error[0])
            snprintf(onednn_error, sizeof onednn_error, "oneDNN (libdnnl.so.2) not found");
        return;
    }
    onednn_error[0] = '\0';
    dnnl_sgemm_ptr = (dnnl_sgemm_fn)dlsym(lib, "dnnl_sgemm");
    if (!dnnl_sgemm_ptr)
        snprintf(onednn_error, sizeof onednn_error, "oneDNN: no dnnl_sgemm in libdnnl.so.2");
    /* the library stays loaded for the life of the process */
}

static const cpu_gemm *onednn(void)
{
    pthread_once(&onednn_once, onednn_load);
    return dnnl_sgemm_ptr ? &gemm_onednn : NULL;
}

const cpu_gemm *sep_cpu_gemm(const char *isa, char *err, size_t errlen)
{
    const char *want = getenv("SEP_CPU_GEMM");
    if (want && *want) {
        if (strcmp(want, "openblas") == 0)
            return &gemm_openblas;
        if (strcmp(want, "onednn") == 0) {
            const cpu_gemm *g = onednn();
            if (!g)
                snprintf(err, errlen, "SEP_CPU_GEMM=onednn: %s", onednn_error);
            return g;
        }
        snprintf(err, errlen, "SEP_CPU_GEMM=%s: unknown GEMM provider (%s)", want,
                 sep_cpu_gemm_names);
        return NULL;
    }
    if (ONEDNN_BY_DEFAULT && isa && strcmp(isa, "avx512") == 0) {
        const cpu_gemm *g = onednn();
        if (g)
            return g;
    }
    return &gemm_openblas;
}
