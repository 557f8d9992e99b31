/*
 * kernels_attention.cu - multi-head attention of the CUDA backend, one fused kernel
 * (flash-attention style, fp32; no nq x nk matrix in memory).
 *
 * A block of ATT_BQ threads takes ATT_BQ queries of one (sample, head); each thread
 * owns one query row: its query vector and its output accumulator live in registers
 * (DM floats each, DM the head size rounded up to an instantiated width; the extra
 * lanes are zero). The keys and values are staged BK rows at a time in shared memory
 * (zero beyond nk and beyond the head size). Per key tile each thread computes its
 * scores s = scale * q.k into its own row of a shared tile, their max, the new running
 * max m' = max(m, tile max), rescales its accumulator and running sum l by
 * exp(m - m'), then adds exp(s - m') * v for the tile: the online softmax of the CPU
 * backend, with the same formulas. At the end the row is multiplied by 1 / l.
 */
#include "cuda/cuda_internal.h"

#include <math.h>

#define ATT_BQ 64

template <int DM, int BK>
__global__ void __launch_bounds__(ATT_BQ)
    k_attention(float *out, const float *q, const float *k, const float *v, sep_attention_desc d,
                float scale)
{
    __shared__ float ks[BK][DM];
    __shared__ float vs[BK][DM];
    __shared__ float sc[ATT_BQ][BK + 1]; /* +1: rows in different banks */
    const int b = blockIdx.z, h = blockIdx.y;
    const int t = threadIdx.x;
    const int qi = blockIdx.x * ATT_BQ + t;
    const bool active = qi < d.nq;
    const int D = d.head_dim;

    float qr[DM], o[DM];
    const float *qp = q + ((size_t)b * d.nq + (active ? qi : 0)) * d.ldq + (size_t)h * D;
#pragma unroll
    for (int i = 0; i < DM; i++) {
        qr[i] = (active && i < D) ? qp[i] : 0.0f;
        o[i] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const float *kb = k + (size_t)b * d.nk * d.ldk + (size_t)h * D;
    const float *vb = v + (size_t)b * d.nk * d.ldv + (size_t)h * D;

    for (int k0 = 0; k0 < d.nk; k0 += BK) {
        const int nk = d.nk - k0 < BK ? d.nk - k0 : BK;
        __syncthreads(); /* the previous tile is no longer read */
        for (int e = t; e < BK * DM; e += ATT_BQ) {
            int j = e / DM, i = e % DM;
            bool in = j < nk && i < D;
            ks[j][i] = in ? kb[(size_t)(k0 + j) * d.ldk + i] : 0.0f;
            vs[j][i] = in ? vb[(size_t)(k0 + j) * d.ldv + i] : 0.0f;
        }
        __syncthreads();
        if (active) {
            float mx = -INFINITY;
            for (int j = 0; j < nk; j++) {
                float s = 0.0f;
#pragma unroll
                for (int i = 0; i < DM; i++)
                    s += qr[i] * ks[j][i];
                s *= scale;
                sc[t][j] = s;
                mx = fmaxf(mx, s);
            }
            float mnew = fmaxf(m, mx);
            float alpha = expf(m - mnew); /* 0 on the first tile (m = -inf) */
            float psum = 0.0f;
            for (int j = 0; j < nk; j++) {
                float p = expf(sc[t][j] - mnew);
                sc[t][j] = p;
                psum += p;
            }
            l = l * alpha + psum;
#pragma unroll
            for (int i = 0; i < DM; i++)
                o[i] *= alpha;
            for (int j = 0; j < nk; j++) {
                float p = sc[t][j];
#pragma unroll
                for (int i = 0; i < DM; i++)
                    o[i] += p * vs[j][i];
            }
            m = mnew;
        }
    }
    if (!active)
        return;
    float inv = 1.0f / l;
    float *op = out + ((size_t)b * d.nq + qi) * d.ldo + (size_t)h * D;
#pragma unroll
    for (int i = 0; i < DM; i++)
        if (i < D)
            op[i] = o[i] * inv;
}

template <int DM, int BK>
static void launch(cuda_impl *c, const sep_attention_desc *d, float *out, const float *q,
                   const float *k, const float *v, float scale)
{
    dim3 grid((unsigned)((d->nq + ATT_BQ - 1) / ATT_BQ), (unsigned)d->heads, (unsigned)d->batch);
    /* through a pointer: a template name would split the launch macro's arguments */
    void (*kernel)(float *, const float *, const float *, const float *, sep_attention_desc,
                   float) = k_attention<DM, BK>;
    CUDA_LAUNCH_COOP(kernel, grid, ATT_BQ, c->stream)(out, q, k, v, *d, scale);
    LAUNCH_OK(c, "attention kernel");
}

void cuda_attention(sep_backend *be, const sep_attention_desc *d, float *out, const float *q,
                    const float *k, const float *v)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || d->batch <= 0 || d->heads <= 0 || d->nq <= 0)
        return;
    if (d->nk <= 0 || d->head_dim <= 0 || d->heads > 65535 || d->batch > 65535) {
        cuda_fail(c, "cuda: attention: unsupported shape (batch %d, heads %d, nk %d, head_dim %d)",
                  d->batch, d->heads, d->nk, d->head_dim);
        return;
    }
    float scale = 1.0f / sqrtf((float)d->head_dim);
    int hd = d->head_dim;
    if (hd <= 8)
        launch<8, 64>(c, d, out, q, k, v, scale);
    else if (hd <= 16)
        launch<16, 64>(c, d, out, q, k, v, scale);
    else if (hd <= 32)
        launch<32, 64>(c, d, out, q, k, v, scale);
    else if (hd <= 48)
        launch<48, 64>(c, d, out, q, k, v, scale);
    else if (hd <= 64)
        launch<64, 32>(c, d, out, q, k, v, scale);
    else if (hd <= 128)
        launch<128, 32>(c, d, out, q, k, v, scale);
    else
        cuda_fail(c, "cuda: attention: head_dim %d > 128 is not supported", hd);
}
