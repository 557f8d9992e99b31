/*
 * libs_blis.c - BLIS for bench/libs.c: row-major sgemm through bli_sgemm_ex, its
 * thread count fixed per call by a runtime object (Debian's libblis-dev may link the
 * serial, OpenMP or pthread build; each honours the runtime object).
 */
#include "bench/libs.h"

#include <blis.h>
#include <dlfcn.h>
#include <stdio.h>

void blis_gemm(int trans_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
               float *c, int ldc, int threads)
{
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(threads, &rntm);
    float one = 1.0f, zero = 0.0f;
    /* row-major: row stride ld, column stride 1 */
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, trans_b ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k, &one,
                 (float *)a, lda, 1, (float *)b, ldb, 1, &zero, c, ldc, 1, NULL, &rntm);
}

void blis_describe(char *out, size_t len)
{
    const char *threading = bli_info_get_enable_openmp()     ? "openmp"
                            : bli_info_get_enable_pthreads() ? "pthread"
                                                             : "serial";
    snprintf(out, len, "BLIS %s, threading %s, kernels %s", bli_info_get_version_str(), threading,
             bli_arch_string(bli_arch_query_id()));
}

const char *blis_library_path(void)
{
    Dl_info info;
    return dladdr((void *)bli_sgemm_ex, &info) && info.dli_fname ? info.dli_fname : "?";
}
