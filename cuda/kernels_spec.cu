/*
 * kernels_spec.cu - the STFT / iSTFT pair of HTDemucs (_spec + _magnitude, _mask (cac)
 * + _ispec) on the CUDA backend, with cuFFT.
 *
 * The framing is the CPU backend's (cpu_backend.c), element for element:
 *   spec: signal s is reflect-padded as demucs' pad1d (with its zero extension of
 *     inputs shorter than the padding) by pad = 3 * hop / 2 on the left and
 *     pad + le * hop - length on the right; frame fr (fr < le = ceil(length / hop))
 *     is samples [fr * hop, fr * hop + nfft) of it times the periodic Hann window;
 *     its R2C transform times 1 / sqrt(nfft) gives out[s][0 re, 1 im][f][fr], f <
 *     nfft / 2 (the Nyquist bin dropped).
 *   ispec: bins f < nfft / 2 of each frame (Nyquist 0; the imaginary part of DC 0, as
 *     a real inverse transform reads it), C2R, times 1 / sqrt(nfft) and the window,
 *     overlap-added at (fr + 2) * hop (two empty frames each side), divided by the sum
 *     of squared windows over frames + 4 frames, cropped at nfft / 2 + pad.
 * A frame kernel builds the windowed frames, cuFFT transforms them (one call per
 * signal, the plan's batch being the frames of one signal: the same transforms
 * whatever the batch), and a scatter / overlap-add kernel writes the result. Plans
 * are made on first use per (nfft, frames, direction) and kept; the window is computed
 * on the host exactly as the CPU backend computes it and copied once per nfft.
 */
#include "cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>

static const float *get_window(cuda_impl *c, int nfft)
{
    for (int i = 0; i < c->n_windows; i++)
        if (c->windows[i].nfft == nfft)
            return c->windows[i].window;
    if (c->n_windows == CUDA_MAX_FFT_PLANS) {
        cuda_fail(c, "cuda: more than %d FFT sizes", CUDA_MAX_FFT_PLANS);
        return NULL;
    }
    float *host = (float *)malloc(sizeof(float) * nfft);
    if (!host) {
        cuda_fail(c, "cuda: out of host memory for a window");
        return NULL;
    }
    /* torch.hann_window(nfft) (periodic), computed in float like the CPU backend */
    float step = (float)(2.0 * M_PI / nfft);
    for (int i = 0; i < nfft; i++)
        host[i] = 0.5f - 0.5f * cosf((float)i * step);
    void *dev = NULL;
    cudaError_t e = cudaMalloc(&dev, sizeof(float) * nfft);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        free(host);
        cuda_fail(c, "cuda: out of device memory for a window: %s", cudaGetErrorString(e));
        return NULL;
    }
    /* on the backend's stream, waited for: a plain cudaMemcpy runs on the legacy default
     * stream, which a non-blocking stream does not wait for, and may return before a
     * copy from pageable memory has landed */
    int ok = CU_OK(c, cudaMemcpyAsync(dev, host, sizeof(float) * nfft, cudaMemcpyHostToDevice,
                                      c->stream)) &&
             CU_OK(c, cudaStreamSynchronize(c->stream));
    free(host);
    if (!ok) {
        cudaFree(dev);
        return NULL;
    }
    c->windows[c->n_windows].nfft = nfft;
    c->windows[c->n_windows].window = (float *)dev;
    c->n_windows++;
    return (const float *)dev;
}

/* The plan for `batch` transforms of size nfft (R2C, or C2R when inverse), made on
 * first use; the least recently used one is dropped when the cache is full. */
static cufftHandle get_plan(cuda_impl *c, int nfft, int batch, int inverse, int *ok)
{
    *ok = 0;
    c->plan_clock++;
    for (int i = 0; i < c->n_plans; i++) {
        cuda_fft_plan *p = &c->plans[i];
        if (p->nfft == nfft && p->batch == batch && p->inverse == inverse) {
            p->last_use = c->plan_clock;
            *ok = 1;
            return p->plan;
        }
    }
    int slot = c->n_plans;
    if (slot == CUDA_MAX_FFT_PLANS) {
        slot = 0;
        for (int i = 1; i < c->n_plans; i++)
            if (c->plans[i].last_use < c->plans[slot].last_use)
                slot = i;
        /* queued transforms may still use it */
        if (!CU_OK(c, cudaStreamSynchronize(c->stream)) ||
            !CUFFT_OK(c, cufftDestroy(c->plans[slot].plan)))
            return 0;
        c->plans[slot] = c->plans[--c->n_plans];
        slot = c->n_plans;
    }
    cufftHandle plan;
    if (!CUFFT_OK(c, cufftPlan1d(&plan, nfft, inverse ? CUFFT_C2R : CUFFT_R2C, batch)))
        return 0;
    /* whatever plan creation queued elsewhere (its tables) is done before our stream
     * uses the plan */
    if (!CUFFT_OK(c, cufftSetStream(plan, c->stream)) || !CU_OK(c, cudaDeviceSynchronize())) {
        cufftDestroy(plan);
        return 0;
    }
    c->plans[slot].nfft = nfft;
    c->plans[slot].batch = batch;
    c->plans[slot].inverse = inverse;
    c->plans[slot].plan = plan;
    c->plans[slot].last_use = c->plan_clock;
    c->n_plans++;
    *ok = 1;
    return plan;
}

void cuda_spec_release(cuda_impl *c)
{
    for (int i = 0; i < c->n_plans; i++)
        cufftDestroy(c->plans[i].plan);
    c->n_plans = 0;
    for (int i = 0; i < c->n_windows; i++)
        cudaFree(c->windows[i].window);
    c->n_windows = 0;
}

/* pad1d reflect geometry (cpu_backend.c pad1d_reflect) */
struct pad_geom {
    int len, el, n, pl; /* signal length, zero extension on the left, extended length,
                           reflect padding left of the extended signal */
};

static pad_geom pad_geometry(int len, int left, int right)
{
    int max_pad = left > right ? left : right;
    int el = 0, er = 0;
    if (len <= max_pad) {
        int extra = max_pad - len + 1;
        er = right < extra ? right : extra;
        el = extra - er;
    }
    pad_geom g = {len, el, len + el + er, left - el};
    return g;
}

/* sample p of the padded signal */
static __device__ __forceinline__ float padded_sample(const float *x, pad_geom g, int p)
{
    int q = p - g.pl; /* index into the extended signal */
    if (q < 0)
        q = -q;
    if (q >= g.n)
        q = 2 * (g.n - 1) - q;
    int xi = q - g.el;
    return xi >= 0 && xi < g.len ? x[xi] : 0.0f;
}

/* frames[fr][i] = padded[fr * hop + i] * window[i] of one signal */
__global__ void k_frames(float *frames, const float *in, pad_geom g, const float *window, int nfft,
                         int hop, int le)
{
    size_t total = (size_t)le * nfft;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(e % nfft), fr = (int)(e / nfft);
        frames[e] = padded_sample(in, g, fr * hop + i) * window[i];
    }
}

/* out[0][f][fr] = re * norm, out[1][f][fr] = im * norm, f < F, of one signal */
__global__ void k_spec_scatter(float *out, const cufftComplex *z, int F, int le, float norm)
{
    size_t total = (size_t)F * le;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int fr = (int)(e % le), f = (int)(e / le);
        cufftComplex v = z[(size_t)fr * (F + 1) + f];
        out[(size_t)f * le + fr] = v.x * norm;
        out[(size_t)F * le + (size_t)f * le + fr] = v.y * norm;
    }
}

void cuda_spec(sep_backend *be, float *out, const float *in, int nsig, int length, int nfft)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || nsig <= 0)
        return;
    if (nfft < 8 || nfft % 8 || length <= 0) {
        cuda_fail(c, "cuda: spec: nfft %d, length %d", nfft, length);
        return;
    }
    int hl = nfft / 4, F = nfft / 2;
    int le = (length + hl - 1) / hl;
    int pad = hl / 2 * 3;
    pad_geom g = pad_geometry(length, pad, pad + le * hl - length);
    float norm = 1.0f / sqrtf((float)nfft);
    const float *window = get_window(c, nfft);
    if (!window)
        return;
    int ok;
    cufftHandle plan = get_plan(c, nfft, le, 0, &ok);
    if (!ok)
        return;
    /* one signal at a time (the stream orders them): frames, then their spectra */
    size_t frames_bytes = cuda_align256((size_t)le * nfft * sizeof(float));
    size_t z_bytes = (size_t)le * (F + 1) * sizeof(cufftComplex);
    char *base = (char *)cuda_scratch(c, frames_bytes + z_bytes);
    if (!base)
        return;
    float *fbuf = (float *)base;
    cufftComplex *z = (cufftComplex *)(base + frames_bytes);
    for (int s = 0; s < nsig; s++) {
        CUDA_LAUNCH(k_frames, cuda_blocks((size_t)le * nfft), CUDA_THREADS, c->stream)
        (fbuf, in + (size_t)s * length, g, window, nfft, hl, le);
        if (!LAUNCH_OK(c, "spec frame kernel"))
            return;
        if (!CUFFT_OK(c, cufftExecR2C(plan, fbuf, z)))
            return;
        CUDA_LAUNCH(k_spec_scatter, cuda_blocks((size_t)F * le), CUDA_THREADS, c->stream)
        (out + (size_t)s * 2 * F * le, z, F, le, norm);
        if (!LAUNCH_OK(c, "spec scatter kernel"))
            return;
    }
}

/* z[fr][f] = (re[f][fr], im[f][fr]) for f < F (imaginary part of DC 0), z[fr][F] = 0 */
__global__ void k_ispec_gather(cufftComplex *z, const float *in, int F, int frames)
{
    size_t total = (size_t)frames * (F + 1);
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        int f = (int)(e % (F + 1)), fr = (int)(e / (F + 1));
        cufftComplex v;
        v.x = 0.0f;
        v.y = 0.0f;
        if (f < F) {
            v.x = in[(size_t)f * frames + fr];
            if (f > 0)
                v.y = in[(size_t)F * frames + (size_t)f * frames + fr];
        }
        z[e] = v;
    }
}

/* y[i] = ola[start + i] / env[start + i]: the overlap-add of the inverse frames
 * (frame fr at (fr + 2) * hop) and the sum of squared windows over `total` frames,
 * each added in frame order as the CPU backend adds them */
__global__ void k_ispec_ola(float *y, const float *frames, const float *window, int nfft, int hop,
                            int nframes, int total_frames, int start, int length, float norm)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < length; i += gridDim.x * blockDim.x) {
        int j = start + i; /* position in the overlap-add buffer; j >= 2 * hop */
        float acc = 0.0f;
        int a = j - 2 * hop - nfft + 1;
        int lo = a <= 0 ? 0 : (a + hop - 1) / hop;
        int hi = (j - 2 * hop) / hop;
        if (hi > nframes - 1)
            hi = nframes - 1;
        for (int fr = lo; fr <= hi; fr++) {
            int t = j - (fr + 2) * hop;
            if (t >= 0 && t < nfft)
                acc += frames[(size_t)fr * nfft + t] * norm * window[t];
        }
        float env = 0.0f;
        int b = j - nfft + 1;
        int tlo = b <= 0 ? 0 : (b + hop - 1) / hop;
        int thi = j / hop;
        if (thi > total_frames - 1)
            thi = total_frames - 1;
        for (int tf = tlo; tf <= thi; tf++) {
            int t = j - tf * hop;
            if (t >= 0 && t < nfft)
                env += window[t] * window[t];
        }
        y[i] = acc / env;
    }
}

void cuda_ispec(sep_backend *be, float *out, const float *in, int nsig, int frames, int length,
                int nfft)
{
    cuda_impl *c = cuda_enter(be);
    if (!c || nsig <= 0 || length <= 0)
        return;
    if (nfft < 8 || nfft % 8 || frames <= 0) {
        cuda_fail(c, "cuda: ispec: nfft %d, %d frames", nfft, frames);
        return;
    }
    int hl = nfft / 4, F = nfft / 2;
    int pad = hl / 2 * 3;
    int total = frames + 4;
    size_t ola_len = (size_t)nfft + (size_t)hl * (total - 1);
    size_t start = (size_t)nfft / 2 + pad;
    if (start + length > ola_len) {
        cuda_fail(c, "cuda: ispec: length %d exceeds %d frames", length, frames);
        return;
    }
    float norm = 1.0f / sqrtf((float)nfft);
    const float *window = get_window(c, nfft);
    if (!window)
        return;
    int ok;
    cufftHandle plan = get_plan(c, nfft, frames, 1, &ok);
    if (!ok)
        return;
    /* one signal at a time (the stream orders them): spectra, then their frames */
    size_t z_bytes = cuda_align256((size_t)frames * (F + 1) * sizeof(cufftComplex));
    size_t frames_bytes = (size_t)frames * nfft * sizeof(float);
    char *base = (char *)cuda_scratch(c, z_bytes + frames_bytes);
    if (!base)
        return;
    cufftComplex *z = (cufftComplex *)base;
    float *fbuf = (float *)(base + z_bytes);
    for (int s = 0; s < nsig; s++) {
        CUDA_LAUNCH(k_ispec_gather, cuda_blocks((size_t)frames * (F + 1)), CUDA_THREADS, c->stream)
        (z, in + (size_t)s * 2 * F * frames, F, frames);
        if (!LAUNCH_OK(c, "ispec gather kernel"))
            return;
        if (!CUFFT_OK(c, cufftExecC2R(plan, z, fbuf)))
            return;
        CUDA_LAUNCH(k_ispec_ola, cuda_blocks((size_t)length), CUDA_THREADS, c->stream)
        (out + (size_t)s * length, fbuf, window, nfft, hl, frames, total, (int)start, length, norm);
        if (!LAUNCH_OK(c, "ispec overlap-add kernel"))
            return;
    }
}
