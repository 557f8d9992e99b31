/*
 * backend.h - the table of operations the HTDemucs graph (htdemucs.c) runs on.
 *
 * The network is written once against this table; a backend implements every
 * operation on memory it owns ("device" memory: host memory for the CPU backend,
 * GPU memory for the CUDA backend in cuda/). Pointers passed to operations are
 * device pointers obtained from alloc() or weights(); the graph only does pointer
 * arithmetic on them, never dereferences them.
 *
 * Layouts are PyTorch's contiguous layouts: activations [n][channels][rows][cols]
 * (a 1-D signal is rows = 1), token-major transformer activations [n][tokens][dim].
 * Every operation works sample by sample over its leading `n` so that a batch gives
 * the same numbers as running its samples one at a time. The CPU implementation
 * (cpu_backend.c) is the reference every other backend is tested against.
 *
 * Operations may run asynchronously; download() and sync() wait for them.
 */
#ifndef SEP_MODELS_BACKEND_H
#define SEP_MODELS_BACKEND_H

#include <stddef.h>

typedef struct sep_backend sep_backend;

/* Activation fused at the end of an operation. SEP_ACT_GLU (convolutions only)
 * halves the channels: out[c] = y[c] * sigmoid(y[c + cout/2]) (F.glu over dim 1). */
enum { SEP_ACT_NONE = 0, SEP_ACT_GELU = 1, SEP_ACT_RELU = 2, SEP_ACT_GLU = 3 };

/* 2-D convolution (PyTorch Conv2d; a Conv1d is h = 1, kh = 1). Zero padding may be
 * asymmetric. Weights [cout][cin][kh][kw], bias [cout] (may be NULL); `act` is
 * applied to the result (SEP_ACT_*). */
typedef struct {
    int n, cin, h, w;
    int cout, kh, kw;
    int sh, sw;             /* strides */
    int dh, dw;             /* dilations */
    int ph0, ph1, pw0, pw1; /* zero padding: top, bottom, left, right */
    int act;
    int ho, wo; /* output size: filled by sep_conv2d_finish() */
} sep_conv2d_desc;

/* Transposed 2-D convolution without padding (PyTorch ConvTranspose2d, padding 0):
 * weights [cin][cout][kh][kw], bias [cout]; ho = (h-1)*sh + kh, wo = (w-1)*sw + kw. */
typedef struct {
    int n, cin, h, w;
    int cout, kh, kw;
    int sh, sw;
    int ho, wo; /* filled by sep_conv_tr2d_finish() */
} sep_conv_tr2d_desc;

/* Multi-head scaled dot-product attention, no mask. q/k/v/out are token-major with
 * leading dimensions ldq/ldk/ldv/ldo (floats between consecutive tokens); head h
 * uses columns [h*head_dim, (h+1)*head_dim). Per batch item b the tokens start at
 * q + b*nq*ldq, k + b*nk*ldk, v + b*nk*ldv, out + b*nq*ldo. */
typedef struct {
    int batch, heads, nq, nk, head_dim;
    int ldq, ldk, ldv, ldo;
} sep_attention_desc;

typedef struct sep_backend_ops {
    /* ---- memory ---- */
    void *(*alloc)(sep_backend *be, size_t bytes); /* NULL when out of memory */
    void (*free)(sep_backend *be, void *p);
    void (*upload)(sep_backend *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(sep_backend *be, void *host_dst, const void *src, size_t bytes);
    void (*zero)(sep_backend *be, float *dst, size_t count);
    /* Makes read-only weights resident; the CPU backend uses the host memory in
     * place (the mmap'd file), a GPU backend copies. NULL when out of memory. */
    const float *(*weights)(sep_backend *be, const float *host, size_t count);
    void (*weights_free)(sep_backend *be, const float *dev);
    void (*sync)(sep_backend *be);
    /* Optional (NULL: operations cannot fail). Operations return nothing; a backend
     * whose operations can fail (a GPU fault, a library error) records the first
     * failure and reports it here: 0, or -1 with the message in err. The engine
     * checks it after each forward pass. */
    int (*status)(sep_backend *be, char *err, size_t errlen);

    /* ---- convolutions and matrix products ---- */
    void (*conv2d)(sep_backend *be, const sep_conv2d_desc *d, float *out, const float *in,
                   const float *w, const float *bias);
    void (*conv_tr2d)(sep_backend *be, const sep_conv_tr2d_desc *d, float *out, const float *in,
                      const float *w, const float *bias);
    /* Optional (NULL: the graph runs conv_tr2d, then copy_rows): conv_tr2d keeping only
     * rows [top, top + oh) and columns [left, left + ow) of its ho x wo output, written
     * as [n][cout][oh][ow]; the rest is never stored. */
    void (*conv_tr2d_window)(sep_backend *be, const sep_conv_tr2d_desc *d, int top, int oh,
                             int left, int ow, float *out, const float *in, const float *w,
                             const float *bias);
    /* out[b][r][o] = act(sum_i in[b][r][i] * w[o][i] + bias[o]) (PyTorch Linear). */
    void (*linear)(sep_backend *be, float *out, const float *in, const float *w, const float *bias,
                   int batch, int rows, int in_dim, int out_dim, int act);
    void (*attention)(sep_backend *be, const sep_attention_desc *d, float *out, const float *q,
                      const float *k, const float *v);

    /* ---- normalisations ---- */
    /* GroupNorm over [n][c][spatial]: groups of c/groups channels, affine per channel,
     * then `act` (SEP_ACT_*). */
    void (*group_norm)(sep_backend *be, float *out, const float *in, const float *gamma,
                       const float *beta, int n, int c, int spatial, int groups, float eps,
                       int act);
    /* GroupNorm with one group applied to each row h of [n][c][h][w] on its own
     * (statistics over c and w): DConv's GroupNorm(1) on the frequency rows of a
     * frequency layer, without permuting them into a batch first. */
    void (*group_norm_rows)(sep_backend *be, float *out, const float *in, const float *gamma,
                            const float *beta, int n, int c, int h, int w, float eps, int act);
    /* The end of a DConv layer, in place on x [n][c][h][w]:
     *   x += scale[ch] * GLU(group_norm_rows(y)), y [n][2c][h][w] (not modified). */
    void (*dconv_residual)(sep_backend *be, float *x, const float *y, const float *gamma,
                           const float *beta, const float *scale, int n, int c, int h, int w,
                           float eps);
    /* The same end of a DConv layer from the layer's hidden activations z
     * [n][hid][h][w], the 1x1 convolution (w2 [2c][hid], b2 [2c]) fused in:
     *   x += scale[ch] * GLU(group_norm_rows(conv1x1(z))), no [n][2c][h][w] in memory.
     * Optional: NULL, or returning 0 for a shape it does not fuse (x untouched), makes
     * the graph run conv2d and dconv_residual instead; 1 when done. */
    int (*dconv_tail)(sep_backend *be, float *x, const float *z, const float *w2, const float *b2,
                      const float *gamma, const float *beta, const float *scale, int n, int c,
                      int hid, int h, int w, float eps);
    /* GroupNorm with one group on token-major [n][tokens][c] (demucs MyGroupNorm). */
    void (*group_norm_tokens)(sep_backend *be, float *out, const float *in, const float *gamma,
                              const float *beta, int n, int tokens, int c, float eps);
    /* LayerNorm over the last dimension of [rows][dim]. */
    void (*layer_norm)(sep_backend *be, float *out, const float *in, const float *gamma,
                       const float *beta, int rows, int dim, float eps);
    /* Per-sample mean and unbiased standard deviation of [n][count]. */
    void (*moments)(sep_backend *be, float *mean, float *std, const float *in, int n, int count);
    /* out = (in - mean[b]) / (eps + std[b]) */
    void (*normalize)(sep_backend *be, float *out, const float *in, const float *mean,
                      const float *std, int n, int count, float eps);
    /* out = in * std[b] + mean[b] */
    void (*denormalize)(sep_backend *be, float *out, const float *in, const float *mean,
                        const float *std, int n, int count);

    /* ---- element-wise ---- */
    void (*gelu)(sep_backend *be, float *out, const float *in, size_t count); /* erf form */
    void (*relu)(sep_backend *be, float *out, const float *in, size_t count);
    /* GLU over channels of [n][2c][spatial] -> [n][c][spatial]: a * sigmoid(b). */
    void (*glu)(sep_backend *be, float *out, const float *in, int n, int c, int spatial);
    void (*add)(sep_backend *be, float *out, const float *a, const float *b, size_t count);
    /* x[b][ch][s] += scale[ch] * y[b][ch][s] (LayerScale residual, channels first). */
    void (*add_scaled_channels)(sep_backend *be, float *x, const float *y, const float *scale,
                                int n, int c, int spatial);
    /* x[r][ch] += scale[ch] * y[r][ch] (channels last); scale NULL: x += y. */
    void (*add_scaled_last)(sep_backend *be, float *x, const float *y, const float *scale, int rows,
                            int c);
    /* x[b][i] += alpha * table[i] for i < count. */
    void (*add_table)(sep_backend *be, float *x, const float *table, float alpha, int n, int count);
    /* x[b][ch][f][t] += alpha * table[f][ch] (frequency embedding). */
    void (*add_freq_table)(sep_backend *be, float *x, const float *table, float alpha, int n, int c,
                           int f, int t);

    /* ---- layout ---- */
    /* out = in.permute(perm) for a contiguous 4-D in of size dims; out contiguous. */
    void (*permute4)(sep_backend *be, float *out, const float *in, const int dims[4],
                     const int perm[4]);
    /* out[r][0:len] = in[r][0:len], rows apart by out_stride / in_stride floats. */
    void (*copy_rows)(sep_backend *be, float *out, size_t out_stride, const float *in,
                      size_t in_stride, int rows, size_t len);

    /* ---- spectrogram ---- */
    /* HTDemucs._spec + _magnitude (complex as channels): signals [nsig][length] ->
     * out [nsig][2 (re, im)][nfft/2][frames], frames = ceil(length / (nfft/4)). */
    void (*spec)(sep_backend *be, float *out, const float *in, int nsig, int length, int nfft);
    /* HTDemucs._mask (cac) + _ispec: in [nsig][2][nfft/2][frames] -> out [nsig][length]. */
    void (*ispec)(sep_backend *be, float *out, const float *in, int nsig, int frames, int length,
                  int nfft);

    void (*destroy)(sep_backend *be);
} sep_backend_ops;

struct sep_backend {
    const char *name;
    const sep_backend_ops *ops;
    int threads;
    int host_memory; /* device pointers are host pointers (no copies needed) */
    void *impl;      /* backend private state */
};

/* The CPU backend (OpenBLAS + FFTW3 + OpenMP). threads <= 0: all cores. */
sep_backend *sep_cpu_backend_create(int threads, char *err, size_t errlen);

/* The CUDA backend (cuda/, built as libsepcuda.so where nvcc is found). Open it with
 * sep_cuda_backend_open() (models/cuda_loader.c): the library is dlopen()ed on first
 * use, so a process on the CPU never maps the CUDA libraries; NULL with the reason
 * (no library: "this build has no CUDA backend", no device, ...) in err. The weak
 * sep_cuda_backend_create is the library's entry point, non-NULL only in a binary that
 * links the backend statically (the emulated-runtime tests). */
sep_backend *sep_cuda_backend_open(int device, char *err, size_t errlen);
sep_backend *sep_cuda_backend_create(int device, char *err, size_t errlen) __attribute__((weak));
/* Page-locks host memory for the CUDA backend's copies (cudaHostRegister, portable):
 * 0 done; 1 nothing to pin for (no backend library or no device); -1 failed; err says
 * why. */
int sep_cuda_host_pin(void *base, size_t bytes, char *err, size_t errlen);
void sep_cuda_host_unpin(void *base);

/* Output sizes of a convolution descriptor; 0, or -1 when it has no output. */
static inline int sep_conv2d_finish(sep_conv2d_desc *d)
{
    int eh = d->dh * (d->kh - 1) + 1, ew = d->dw * (d->kw - 1) + 1;
    int hp = d->h + d->ph0 + d->ph1, wp = d->w + d->pw0 + d->pw1;
    if (hp < eh || wp < ew)
        return -1;
    d->ho = (hp - eh) / d->sh + 1;
    d->wo = (wp - ew) / d->sw + 1;
    return 0;
}

static inline void sep_conv_tr2d_finish(sep_conv_tr2d_desc *d)
{
    d->ho = (d->h - 1) * d->sh + d->kh;
    d->wo = (d->w - 1) * d->sw + d->kw;
}

#endif
