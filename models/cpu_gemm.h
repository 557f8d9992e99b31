/*
 * cpu_gemm.h - the single-threaded SGEMM under the CPU backend's matrix work.
 *
 * cpu_backend.c splits every product into chunks, one per OpenMP thread, and multiplies
 * each chunk with one call here on the calling thread. Two providers: OpenBLAS (linked)
 * and oneDNN's dnnl_sgemm, loaded at run time (cpu_gemm.c says when each is chosen).
 */
#ifndef SEP_CPU_GEMM_H
#define SEP_CPU_GEMM_H

#include <stddef.h>

/* C = alpha op(A) op(B) + beta C, row-major; op(X) is X, or X^T when trans_x is 1. */
typedef void (*sep_sgemm_fn)(int trans_a, int trans_b, int m, int n, int k, float alpha,
                             const float *a, int lda, const float *b, int ldb, float beta, float *c,
                             int ldc);

typedef struct {
    const char *name; /* "openblas", "onednn" */
    sep_sgemm_fn sgemm;
} cpu_gemm;

/* The provider for kernels of instruction set `isa` (cpu_kernels.h names): the one
 * SEP_CPU_GEMM names (openblas, onednn), else oneDNN on avx512 where it loads (not in
 * AddressSanitizer builds: cpu_gemm.c), else OpenBLAS. NULL with a message in err when SEP_CPU_GEMM
 * is unknown or cannot load. */
const cpu_gemm *sep_cpu_gemm(const char *isa, char *err, size_t errlen);

extern const char sep_cpu_gemm_names[];

#endif
