/*
 * libs_dnnl.c - oneDNN for bench/libs.c: dnnl_sgemm, the matmul primitive (one per
 * thread and shape, memory objects rebound to each call's pointers) and the
 * convolution primitive with its reorders from and to NCHW.
 *
 * Debian's oneDNN uses the OpenMP runtime (DNNL_CPU_RUNTIME_OMP, libgomp): outside a
 * parallel region it takes omp_get_max_threads() threads, inside one it runs on the
 * calling thread alone.
 */
#include "bench/libs.h"

#include <dlfcn.h>
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dnnl_engine_t engine;
static pthread_once_t engine_once = PTHREAD_ONCE_INIT;

static void engine_init(void)
{
    if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success)
        engine = NULL;
}

static dnnl_engine_t get_engine(void)
{
    pthread_once(&engine_once, engine_init);
    return engine;
}

static void die(const char *what, dnnl_status_t st)
{
    fprintf(stderr, "oneDNN: %s failed (status %d)\n", what, (int)st);
    exit(2);
}
#define CHECK(call)                                                                                \
    do {                                                                                           \
        dnnl_status_t st_ = (call);                                                                \
        if (st_ != dnnl_success)                                                                   \
            die(#call, st_);                                                                       \
    } while (0)

void onednn_gemm(int trans_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                 float *c, int ldc, int threads)
{
    if (!omp_in_parallel())
        omp_set_num_threads(threads);
    CHECK(dnnl_sgemm('N', trans_b ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc));
}

/* ---- matmul primitive ---- */

typedef struct matmul_entry {
    int key[7]; /* trans_b, m, n, k, lda, ldb, ldc */
    dnnl_primitive_t prim;
    dnnl_memory_t src, wei, dst;
    dnnl_stream_t stream;
    struct matmul_entry *next_all;
} matmul_entry;

#define MATMUL_CACHE 8
static __thread matmul_entry *thread_cache[MATMUL_CACHE];
static __thread int thread_cache_used;
static matmul_entry *all_entries;
static pthread_mutex_t all_lock = PTHREAD_MUTEX_INITIALIZER;

static matmul_entry *matmul_create(const int key[7])
{
    int trans_b = key[0];
    dnnl_dim_t m = key[1], n = key[2], k = key[3], lda = key[4], ldb = key[5], ldc = key[6];
    dnnl_memory_desc_t src_md, wei_md, dst_md;
    dnnl_dims_t src_dims = {m, k}, src_str = {lda, 1};
    dnnl_dims_t wei_dims = {k, n}, wei_str = {ldb, 1}, wei_str_t = {1, ldb};
    dnnl_dims_t dst_dims = {m, n}, dst_str = {ldc, 1};
    CHECK(dnnl_memory_desc_init_by_strides(&src_md, 2, src_dims, dnnl_f32, src_str));
    CHECK(dnnl_memory_desc_init_by_strides(&wei_md, 2, wei_dims, dnnl_f32,
                                           trans_b ? wei_str_t : wei_str));
    CHECK(dnnl_memory_desc_init_by_strides(&dst_md, 2, dst_dims, dnnl_f32, dst_str));
    dnnl_matmul_desc_t desc;
    CHECK(dnnl_matmul_desc_init(&desc, &src_md, &wei_md, NULL, &dst_md));
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_primitive_desc_create(&pd, &desc, NULL, get_engine(), NULL));
    matmul_entry *e = calloc(1, sizeof(*e));
    if (!e)
        die("calloc", dnnl_out_of_memory);
    memcpy(e->key, key, sizeof(e->key));
    CHECK(dnnl_primitive_create(&e->prim, pd));
    CHECK(dnnl_primitive_desc_destroy(pd));
    CHECK(dnnl_memory_create(&e->src, &src_md, get_engine(), DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&e->wei, &wei_md, get_engine(), DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&e->dst, &dst_md, get_engine(), DNNL_MEMORY_NONE));
    CHECK(dnnl_stream_create(&e->stream, get_engine(), dnnl_stream_default_flags));
    pthread_mutex_lock(&all_lock);
    e->next_all = all_entries;
    all_entries = e;
    pthread_mutex_unlock(&all_lock);
    return e;
}

void onednn_matmul_gemm(int trans_b, int m, int n, int k, const float *a, int lda, const float *b,
                        int ldb, float *c, int ldc, int threads)
{
    if (!omp_in_parallel())
        omp_set_num_threads(threads);
    int key[7] = {trans_b, m, n, k, lda, ldb, ldc};
    matmul_entry *e = NULL;
    for (int i = 0; i < thread_cache_used && !e; i++)
        if (memcmp(thread_cache[i]->key, key, sizeof(key)) == 0)
            e = thread_cache[i];
    if (!e) {
        e = matmul_create(key);
        /* a full cache forgets its oldest entry (still freed by onednn_release) */
        if (thread_cache_used == MATMUL_CACHE) {
            memmove(thread_cache, thread_cache + 1, (MATMUL_CACHE - 1) * sizeof(thread_cache[0]));
            thread_cache_used--;
        }
        thread_cache[thread_cache_used++] = e;
    }
    CHECK(dnnl_memory_set_data_handle(e->src, (void *)a));
    CHECK(dnnl_memory_set_data_handle(e->wei, (void *)b));
    CHECK(dnnl_memory_set_data_handle(e->dst, c));
    dnnl_exec_arg_t args[3] = {
        {DNNL_ARG_SRC, e->src}, {DNNL_ARG_WEIGHTS, e->wei}, {DNNL_ARG_DST, e->dst}};
    CHECK(dnnl_primitive_execute(e->prim, e->stream, 3, args));
    CHECK(dnnl_stream_wait(e->stream));
}

void onednn_release(void)
{
    pthread_mutex_lock(&all_lock);
    for (matmul_entry *e = all_entries, *next; e; e = next) {
        next = e->next_all;
        dnnl_primitive_destroy(e->prim);
        dnnl_memory_destroy(e->src);
        dnnl_memory_destroy(e->wei);
        dnnl_memory_destroy(e->dst);
        dnnl_stream_destroy(e->stream);
        free(e);
    }
    all_entries = NULL;
    pthread_mutex_unlock(&all_lock);
    /* the calling thread's cache pointed into the list */
    thread_cache_used = 0;
}

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_sse41:
        return "sse41";
    case dnnl_cpu_isa_avx:
        return "avx";
    case dnnl_cpu_isa_avx2:
        return "avx2";
    case dnnl_cpu_isa_avx2_vnni:
        return "avx2_vnni";
    case dnnl_cpu_isa_avx512_core:
        return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni:
        return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16:
        return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx:
        return "avx512_core_amx";
    default:
        return "other";
    }
}

int onednn_describe(char *out, size_t len)
{
    const dnnl_version_t *v = dnnl_version();
    if (!get_engine()) {
        snprintf(out, len, "oneDNN %d.%d.%d: no CPU engine", v->major, v->minor, v->patch);
        return -1;
    }
    snprintf(out, len, "oneDNN %d.%d.%d (%s), CPU runtime %s, ISA %s", v->major, v->minor, v->patch,
             v->hash ? v->hash : "?",
             v->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
             : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB"
             : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                  : "other",
             isa_name(dnnl_get_effective_cpu_isa()));
    return 0;
}

const char *onednn_library_path(void)
{
    Dl_info info;
    return dladdr((void *)dnnl_sgemm, &info) && info.dli_fname ? info.dli_fname : "?";
}

/* ---- convolution primitive ---- */

struct onednn_conv {
    dnnl_stream_t stream;
    dnnl_primitive_t conv, src_reorder, dst_reorder;
    dnnl_memory_t user_src, user_dst, src, wei, bias, dst;
    int src_reorder_needed, dst_reorder_needed;
    const char *impl;
    char layouts[160];
};

static const char *md_tag(const dnnl_memory_desc_t *md, char *buf, size_t len)
{
    /* strides and inner blocks as oneDNN's verbose mode prints them */
    const dnnl_blocking_desc_t *b = &md->format_desc.blocking;
    int o = snprintf(buf, len, "blocks");
    for (int i = 0; i < b->inner_nblks && o < (int)len; i++)
        o += snprintf(buf + o, len - o, " %c%ld", "abcd"[b->inner_idxs[i]],
                      (long)b -> inner_blks[i]);
    if (!b->inner_nblks)
        snprintf(buf + o, len - o, " none (plain)");
    return buf;
}

static dnnl_primitive_t reorder_between(const dnnl_memory_desc_t *from,
                                        const dnnl_memory_desc_t *to)
{
    dnnl_primitive_desc_t pd;
    CHECK(dnnl_reorder_primitive_desc_create(&pd, from, get_engine(), to, get_engine(), NULL));
    dnnl_primitive_t p;
    CHECK(dnnl_primitive_create(&p, pd));
    CHECK(dnnl_primitive_desc_destroy(pd));
    return p;
}

static void run_reorder(dnnl_stream_t s, dnnl_primitive_t p, dnnl_memory_t from, dnnl_memory_t to)
{
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
    CHECK(dnnl_primitive_execute(p, s, 2, args));
    CHECK(dnnl_stream_wait(s));
}

onednn_conv *onednn_conv_create(int cin, int cout, int h, int w, int kh, int kw, int pad, int plain,
                                const float *weights, const float *bias, char *err, size_t errlen)
{
    if (!get_engine()) {
        snprintf(err, errlen, "no oneDNN CPU engine");
        return NULL;
    }
    onednn_conv *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int ho = h + 2 * pad - kh + 1, wo = w + 2 * pad - kw + 1;
    dnnl_dims_t src_dims = {1, cin, h, w}, wei_dims = {cout, cin, kh, kw}, bias_dims = {cout};
    dnnl_dims_t dst_dims = {1, cout, ho, wo};
    dnnl_dims_t strides = {1, 1}, padding = {pad, pad};
    dnnl_memory_desc_t user_src_md, user_wei_md, user_dst_md, bias_md, src_md, wei_md, dst_md;
    CHECK(dnnl_memory_desc_init_by_tag(&user_src_md, 4, src_dims, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&user_wei_md, 4, wei_dims, dnnl_f32, dnnl_oihw));
    CHECK(dnnl_memory_desc_init_by_tag(&user_dst_md, 4, dst_dims, dnnl_f32, dnnl_nchw));
    CHECK(dnnl_memory_desc_init_by_tag(&bias_md, 1, bias_dims, dnnl_f32, dnnl_x));
    dnnl_format_tag_t any = dnnl_format_tag_any;
    CHECK(dnnl_memory_desc_init_by_tag(&src_md, 4, src_dims, dnnl_f32, plain ? dnnl_nchw : any));
    CHECK(dnnl_memory_desc_init_by_tag(&wei_md, 4, wei_dims, dnnl_f32, plain ? dnnl_oihw : any));
    CHECK(dnnl_memory_desc_init_by_tag(&dst_md, 4, dst_dims, dnnl_f32, plain ? dnnl_nchw : any));
    dnnl_convolution_desc_t desc;
    CHECK(dnnl_convolution_forward_desc_init(&desc, dnnl_forward_inference, dnnl_convolution_direct,
                                             &src_md, &wei_md, &bias_md, &dst_md, strides, padding,
                                             padding));
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_primitive_desc_create(&pd, &desc, NULL, get_engine(), NULL);
    if (st != dnnl_success) {
        snprintf(err, errlen, "no oneDNN convolution for this shape (status %d)", (int)st);
        free(c);
        return NULL;
    }
    const char *impl = "?";
    CHECK(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    c->impl = impl; /* static strings in oneDNN */
    const dnnl_memory_desc_t *csrc = dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
    const dnnl_memory_desc_t *cwei = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    const dnnl_memory_desc_t *cdst = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    char b1[48], b2[48], b3[48];
    snprintf(c->layouts, sizeof(c->layouts), "src %s, weights %s, dst %s",
             md_tag(csrc, b1, sizeof b1), md_tag(cwei, b2, sizeof b2), md_tag(cdst, b3, sizeof b3));
    CHECK(dnnl_stream_create(&c->stream, get_engine(), dnnl_stream_default_flags));
    CHECK(dnnl_primitive_create(&c->conv, pd));
    c->src_reorder_needed = !dnnl_memory_desc_equal(&user_src_md, csrc);
    c->dst_reorder_needed = !dnnl_memory_desc_equal(&user_dst_md, cdst);
    /* plain layouts use the caller's buffers (onednn_conv_bind), others their own */
    CHECK(dnnl_memory_create(&c->user_src, &user_src_md, get_engine(), DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&c->user_dst, &user_dst_md, get_engine(), DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&c->src, csrc, get_engine(),
                             c->src_reorder_needed ? DNNL_MEMORY_ALLOCATE : DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&c->dst, cdst, get_engine(),
                             c->dst_reorder_needed ? DNNL_MEMORY_ALLOCATE : DNNL_MEMORY_NONE));
    CHECK(dnnl_memory_create(&c->wei, cwei, get_engine(), DNNL_MEMORY_ALLOCATE));
    CHECK(dnnl_memory_create(&c->bias, &bias_md, get_engine(), (void *)bias));
    c->src_reorder = reorder_between(&user_src_md, csrc);
    c->dst_reorder = reorder_between(cdst, &user_dst_md);
    /* the weights once, as a model load would */
    dnnl_memory_t user_wei;
    CHECK(dnnl_memory_create(&user_wei, &user_wei_md, get_engine(), (void *)weights));
    dnnl_primitive_t wr = reorder_between(&user_wei_md, cwei);
    run_reorder(c->stream, wr, user_wei, c->wei);
    dnnl_primitive_destroy(wr);
    dnnl_memory_destroy(user_wei);
    CHECK(dnnl_primitive_desc_destroy(pd));
    return c;
}

const char *onednn_conv_impl(const onednn_conv *c)
{
    return c->impl;
}
const char *onednn_conv_layouts(const onednn_conv *c)
{
    return c->layouts;
}
int onednn_conv_reorders(const onednn_conv *c)
{
    return c->src_reorder_needed || c->dst_reorder_needed;
}

void onednn_conv_bind(onednn_conv *c, const float *in_nchw, float *out_nchw)
{
    CHECK(dnnl_memory_set_data_handle(c->user_src, (void *)in_nchw));
    CHECK(dnnl_memory_set_data_handle(c->user_dst, out_nchw));
    if (!c->src_reorder_needed)
        CHECK(dnnl_memory_set_data_handle(c->src, (void *)in_nchw));
    if (!c->dst_reorder_needed)
        CHECK(dnnl_memory_set_data_handle(c->dst, out_nchw));
}

void onednn_conv_load(onednn_conv *c)
{
    if (c->src_reorder_needed)
        run_reorder(c->stream, c->src_reorder, c->user_src, c->src);
}

void onednn_conv_run(onednn_conv *c)
{
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, c->src},
                               {DNNL_ARG_WEIGHTS, c->wei},
                               {DNNL_ARG_BIAS, c->bias},
                               {DNNL_ARG_DST, c->dst}};
    CHECK(dnnl_primitive_execute(c->conv, c->stream, 4, args));
    CHECK(dnnl_stream_wait(c->stream));
}

void onednn_conv_store(onednn_conv *c)
{
    if (c->dst_reorder_needed)
        run_reorder(c->stream, c->dst_reorder, c->dst, c->user_dst);
}

void onednn_conv_destroy(onednn_conv *c)
{
    if (!c)
        return;
    dnnl_primitive_destroy(c->conv);
    dnnl_primitive_destroy(c->src_reorder);
    dnnl_primitive_destroy(c->dst_reorder);
    dnnl_memory_destroy(c->user_src);
    dnnl_memory_destroy(c->user_dst);
    dnnl_memory_destroy(c->src);
    dnnl_memory_destroy(c->wei);
    dnnl_memory_destroy(c->bias);
    dnnl_memory_destroy(c->dst);
    dnnl_stream_destroy(c->stream);
    free(c);
}
