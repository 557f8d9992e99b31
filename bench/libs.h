/*
 * libs.h - the interface between bench/libs.c (OpenBLAS, the engine's backend, timing)
 * and its BLIS and oneDNN wrappers (libs_blis.c, libs_dnnl.c), kept in their own
 * files: blis.h declares its own CBLAS, which clashes with OpenBLAS's cblas.h.
 *
 * Every GEMM here is row-major with alpha 1 and beta 0:
 *   c[m][n] = a[m][k] * op(b), op(b) = b[k][n] (trans_b 0) or b[n][k]^T (trans_b 1).
 * `threads` is the library's own thread count for that call: 1 inside the bench's
 * OpenMP chunks, more for a call that lets the library split the work itself.
 */
#ifndef SEP_BENCH_LIBS_H
#define SEP_BENCH_LIBS_H

#include <stddef.h>

typedef void libs_gemm_fn(int trans_b, int m, int n, int k, const float *a, int lda, const float *b,
                          int ldb, float *c, int ldc, int threads);

/* BLIS (bli_sgemm_ex with a runtime object fixing its thread count) */
libs_gemm_fn blis_gemm;
/* Library variant and kernels: "BLIS 0.9.0, threading openmp, kernels zen3". */
void blis_describe(char *out, size_t len);
/* The file the BLIS functions are loaded from. */
const char *blis_library_path(void);

/* oneDNN dnnl_sgemm. Built with OpenMP, it takes omp_get_max_threads() threads outside
 * a parallel region and one inside one: `threads` is passed through
 * omp_set_num_threads for calls outside. */
libs_gemm_fn onednn_gemm;
/* oneDNN's matmul primitive, one primitive per thread and shape (created on first use,
 * kept until onednn_release). */
libs_gemm_fn onednn_matmul_gemm;
/* Version, CPU runtime and the ISA its JIT kernels use; 0, or -1 when oneDNN fails. */
int onednn_describe(char *out, size_t len);
const char *onednn_library_path(void);
void onednn_release(void);

/* oneDNN convolution primitive: batch 1, fp32, stride 1, symmetric zero padding,
 * bias; weights [cout][cin][kh][kw] reordered once at creation. `plain` asks for NCHW
 * src/dst and OIHW weights; otherwise every layout is format_tag any (oneDNN's
 * choice, blocked for its JIT kernels) and src/dst need a reorder from/to NCHW. */
typedef struct onednn_conv onednn_conv;
onednn_conv *onednn_conv_create(int cin, int cout, int h, int w, int kh, int kw, int pad, int plain,
                                const float *weights, const float *bias, char *err, size_t errlen);
/* implementation name (e.g. jit:avx2), and the layouts chosen */
const char *onednn_conv_impl(const onednn_conv *c);
const char *onednn_conv_layouts(const onednn_conv *c);
/* 1 when src / dst are not plain NCHW (the reorders below do work) */
int onednn_conv_reorders(const onednn_conv *c);
/* the NCHW input and output buffers of the next load / run / store */
void onednn_conv_bind(onednn_conv *c, const float *in_nchw, float *out_nchw);
/* NCHW input -> oneDNN's src layout (nothing to do when it is NCHW) */
void onednn_conv_load(onednn_conv *c);
void onednn_conv_run(onednn_conv *c);
/* oneDNN's dst layout -> NCHW output (nothing to do when it is NCHW) */
void onednn_conv_store(onednn_conv *c);
void onednn_conv_destroy(onednn_conv *c);

#endif
