/*
 * emu.cc - the CPU emulation of the CUDA runtime, cuBLAS and cuFFT calls the CUDA
 * backend makes (declared in cuda_runtime.h, cublas_v2.h and cufft.h of this folder;
 * what it shows and what it cannot: cuda_runtime.h).
 */
#include "cublas_v2.h"
#include "cufft.h"
#include "cuda_runtime.h"

#include <math.h>
#include <mutex>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
static std::mutex launch_lock; /* one launch at a time: the globals above */

static cudaError_t last_error = cudaSuccess;
static std::mutex error_lock;

static cudaError_t set_error(cudaError_t e)
{
    std::lock_guard<std::mutex> g(error_lock);
    if (e != cudaSuccess)
        last_error = e;
    return e;
}

cudaError_t cudaGetDeviceCount(int *count)
{
    /* SEP_CUDA_EMU_DEVICES=0: a machine without a GPU */
    const char *n = getenv("SEP_CUDA_EMU_DEVICES");
    *count = n ? atoi(n) : 1;
    return *count > 0 ? cudaSuccess : cudaErrorNoDevice;
}

const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void)
{
    std::lock_guard<std::mutex> g(error_lock);
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}

cudaError_t cudaSetDevice(int device)
{
    int count;
    cudaGetDeviceCount(&count);
    return set_error(device >= 0 && device < count ? cudaSuccess : cudaErrorInvalidValue);
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (bytes > ((size_t)64 << 30)) /* a size no test should ask for */
        return set_error(cudaErrorMemoryAllocation);
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    return set_error(*p ? cudaSuccess : cudaErrorMemoryAllocation);
}

cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}

struct cuda_emu_stream {
    unsigned flags;
};

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags)
{
    *s = new cuda_emu_stream{flags};
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    return s ? cudaSuccess : set_error(cudaErrorInvalidValue);
}

cudaError_t cudaDeviceSynchronize(void)
{
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    delete s;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    if (bytes && (!dst || !src))
        return set_error(cudaErrorInvalidValue);
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s)
{
    if (!s)
        return set_error(cudaErrorInvalidValue);
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t s)
{
    if (!s || width > dpitch || width > spitch)
        return set_error(cudaErrorInvalidValue);
    for (size_t r = 0; r < height; r++)
        memcpy((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s)
{
    if (!s)
        return set_error(cudaErrorInvalidValue);
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned flags)
{
    return p && bytes ? cudaSuccess : set_error(cudaErrorInvalidValue);
}

cudaError_t cudaHostUnregister(void *p)
{
    return cudaSuccess;
}

/* ---- launches ---- */

static void die(const char *what)
{
    fprintf(stderr, "cuda emulation: %s\n", what);
    abort();
}

/* Cooperative launches run the threads of a block as fibers (ucontext) on the
 * calling thread: each runs until it waits at a barrier (__syncthreads, or its warp's
 * half of a shuffle), then the next; a barrier opens when all its threads arrived.
 * A round in which no thread arrives anywhere or finishes is a deadlock (a thread
 * that skipped a barrier the others wait at) and aborts. */
/* The switch between fibers: on x86-64 a few instructions saving the callee-saved
 * registers and the stack pointer (ucontext's swapcontext makes a system call per
 * switch for the signal mask, and a block switches thousands of times); elsewhere
 * ucontext. */
#if defined(__x86_64__)
extern "C" void cuda_emu_switch(void **save_sp, void *next_sp);
asm(".text\n"
    ".globl cuda_emu_switch\n"
    ".type cuda_emu_switch,@function\n"
    "cuda_emu_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size cuda_emu_switch, .-cuda_emu_switch\n");
struct emu_context {
    void *sp;
};
#else
struct emu_context {
    ucontext_t uc;
};
#endif

struct fiber {
    emu_context ctx;
    char *stack;
    uint3 tid;
    int done;
    void *fake_stack; /* AddressSanitizer's bookkeeping across switches */
};

#define FIBER_STACK ((size_t)256 << 10)
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SWITCH_START(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define SWITCH_FINISH(save, bottom, size) __sanitizer_finish_switch_fiber(save, bottom, size)
#else
#define SWITCH_START(save, bottom, size) ((void)0)
#define SWITCH_FINISH(save, bottom, size) ((void)0)
#endif

static std::vector<fiber> fibers;
static emu_context scheduler_ctx;
static void *scheduler_fake_stack;
static const void *scheduler_stack_bottom;
static size_t scheduler_stack_size;
static int current_fiber = -1;
static const std::function<void()> *fiber_body;
static unsigned long fiber_events; /* arrivals at barriers and finished threads */
static unsigned long block_gen, warp_gen[32];
static unsigned block_count, warp_count[32];
static double shuffle_slot[1024];
static int in_coop_launch;

/* from `from` to `to` (the current context is saved in `from`) */
static void context_switch(emu_context *from, emu_context *to)
{
#if defined(__x86_64__)
    cuda_emu_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

static void fiber_entry(void);

#if defined(__x86_64__)
static void fiber_trampoline(void)
{
    fiber_entry();
    die("a finished thread was resumed");
}
#endif

/* a context that starts fiber_entry() on the given stack */
static void context_make(emu_context *ctx, char *stack, size_t size)
{
#if defined(__x86_64__)
    uintptr_t top = ((uintptr_t)stack + size) & ~(uintptr_t)15;
    void **sp = (void **)(top - 16);
    sp[0] = (void *)fiber_trampoline; /* where the first switch returns to */
    sp -= 6;                          /* r15 r14 r13 r12 rbx rbp, popped as zeros */
    for (int i = 0; i < 6; i++)
        sp[i] = nullptr;
    ctx->sp = sp;
#else
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = stack;
    ctx->uc.uc_stack.ss_size = size;
    ctx->uc.uc_link = nullptr;
    makecontext(&ctx->uc, fiber_entry, 0);
#endif
}

static unsigned linear_thread(void)
{
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

static void fiber_yield(void)
{
    fiber *f = &fibers[current_fiber];
    SWITCH_START(&f->fake_stack, scheduler_stack_bottom, scheduler_stack_size);
    context_switch(&f->ctx, &scheduler_ctx);
    SWITCH_FINISH(f->fake_stack, nullptr, nullptr);
}

static void fiber_entry(void)
{
    SWITCH_FINISH(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
    (*fiber_body)();
    fiber *f = &fibers[current_fiber];
    f->done = 1;
    fiber_events++;
    SWITCH_START(nullptr, scheduler_stack_bottom, scheduler_stack_size); /* this fiber ends */
    context_switch(&f->ctx, &scheduler_ctx);
}

static void barrier_wait(unsigned long *gen, unsigned *count, unsigned participants)
{
    unsigned long mine = *gen;
    fiber_events++;
    if (++*count == participants) {
        *count = 0;
        ++*gen;
        return;
    }
    while (*gen == mine)
        fiber_yield();
}

void __syncthreads(void)
{
    if (!in_coop_launch)
        die("__syncthreads in a kernel not launched with CUDA_LAUNCH_COOP");
    barrier_wait(&block_gen, &block_count, blockDim.x * blockDim.y * blockDim.z);
}

static double shuffle_down(double v, int delta)
{
    if (!in_coop_launch)
        die("a warp shuffle in a kernel not launched with CUDA_LAUNCH_COOP");
    unsigned t = linear_thread(), lane = t % 32, warp = t / 32;
    if ((blockDim.x * blockDim.y * blockDim.z) % 32)
        die("a warp shuffle in a block that is not whole warps");
    shuffle_slot[t] = v;
    barrier_wait(&warp_gen[warp], &warp_count[warp], 32);
    double r = lane + delta < 32 ? shuffle_slot[t + delta] : v;
    barrier_wait(&warp_gen[warp], &warp_count[warp], 32);
    return r;
}

float __shfl_down_sync(unsigned mask, float v, int delta)
{
    return (float)shuffle_down(v, delta);
}

double __shfl_down_sync(unsigned mask, double v, int delta)
{
    return shuffle_down(v, delta);
}

/* one block of a cooperative launch, its threads as fibers */
static void run_block_fibers(size_t nthreads, dim3 block, const std::function<void()> &body)
{
    if (fibers.size() < nthreads)
        fibers.resize(nthreads);
    fiber_body = &body;
    block_count = 0;
    memset(warp_count, 0, sizeof(warp_count));
    for (size_t t = 0; t < nthreads; t++) {
        fiber *f = &fibers[t];
        if (!f->stack) {
            f->stack = (char *)mmap(nullptr, FIBER_STACK, PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (f->stack == MAP_FAILED)
                die("out of memory for thread stacks");
        }
        context_make(&f->ctx, f->stack, FIBER_STACK);
        f->tid = {(unsigned)(t % block.x), (unsigned)(t / block.x % block.y),
                  (unsigned)(t / ((size_t)block.x * block.y))};
        f->done = 0;
        f->fake_stack = nullptr;
    }
    size_t live = nthreads;
    while (live) {
        unsigned long before = fiber_events;
        for (size_t t = 0; t < nthreads; t++) {
            fiber *f = &fibers[t];
            if (f->done)
                continue;
            current_fiber = (int)t;
            threadIdx = f->tid;
            SWITCH_START(&scheduler_fake_stack, f->stack, FIBER_STACK);
            context_switch(&scheduler_ctx, &f->ctx);
            SWITCH_FINISH(scheduler_fake_stack, nullptr, nullptr);
            if (f->done)
                live--;
        }
        if (live && fiber_events == before)
            die("deadlock: a thread of the block does not reach a barrier the others wait at");
    }
    current_fiber = -1;
}

void cuda_emu_run(dim3 grid, dim3 block, int coop, const std::function<void()> &body)
{
    size_t nthreads = (size_t)block.x * block.y * block.z;
    /* the launch limits of every GPU the backend is built for */
    if (nthreads < 1 || nthreads > 1024 || block.z > 64 || grid.x < 1 || grid.y < 1 || grid.z < 1 ||
        grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
        set_error(cudaErrorInvalidConfiguration);
        return;
    }
    std::lock_guard<std::mutex> one_at_a_time(launch_lock);
    blockDim = block;
    gridDim = grid;
    in_coop_launch = coop;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                blockIdx = {bx, by, bz};
                if (coop) {
                    run_block_fibers(nthreads, block, body);
                    continue;
                }
                for (unsigned tz = 0; tz < block.z; tz++)
                    for (unsigned ty = 0; ty < block.y; ty++)
                        for (unsigned tx = 0; tx < block.x; tx++) {
                            threadIdx = {tx, ty, tz};
                            body();
                        }
            }
    in_coop_launch = 0;
}

/* ---- cuBLAS ---- */

struct cuda_emu_blas {
    cudaStream_t stream;
    cublasMath_t mode;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new cuda_emu_blas{nullptr, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode)
{
    h->mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    /* reference BLAS argument checks (op(A) is m x k, op(B) k x n, C m x n) */
    int rows_a = transa == CUBLAS_OP_N ? m : k, rows_b = transb == CUBLAS_OP_N ? k : n;
    if (!h || m < 0 || n < 0 || k < 0 || lda < (rows_a > 1 ? rows_a : 1) ||
        ldb < (rows_b > 1 ? rows_b : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (h->mode != CUBLAS_PEDANTIC_MATH)
        return CUBLAS_STATUS_NOT_SUPPORTED; /* the backend's fp32 parity mode */
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double acc = 0.0;
            for (int l = 0; l < k; l++) {
                double a = transa == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
                double b = transb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
                acc += a * b;
            }
            float *c = &C[i + (size_t)j * ldc];
            /* beta = 0: C is not read (it may hold anything, NaNs included) */
            *c = (float)(*alpha * acc + (*beta != 0.0f ? *beta * (double)*c : 0.0));
        }
    return CUBLAS_STATUS_SUCCESS;
}

/* ---- cuFFT ---- */

struct emu_plan {
    int n, batch, in_use;
    cufftType type;
    std::vector<double> cos_t, sin_t; /* cos, sin of 2 pi j / n */
};
static std::vector<emu_plan> plans;

cufftResult cufftPlan1d(cufftHandle *plan, int nx, cufftType type, int batch)
{
    if (nx < 2 || batch < 1 || (type != CUFFT_R2C && type != CUFFT_C2R))
        return CUFFT_INVALID_VALUE;
    emu_plan p{nx, batch, 1, type, {}, {}};
    for (int j = 0; j < nx; j++) {
        p.cos_t.push_back(cos(2.0 * M_PI * j / nx));
        p.sin_t.push_back(sin(2.0 * M_PI * j / nx));
    }
    plans.push_back(p);
    *plan = (cufftHandle)plans.size() - 1;
    return CUFFT_SUCCESS;
}

static emu_plan *plan_of(cufftHandle h, cufftType type)
{
    if (h < 0 || (size_t)h >= plans.size() || !plans[h].in_use || plans[h].type != type)
        return nullptr;
    return &plans[h];
}

cufftResult cufftSetStream(cufftHandle plan, cudaStream_t s)
{
    if (plan < 0 || (size_t)plan >= plans.size() || !plans[plan].in_use)
        return CUFFT_INVALID_PLAN;
    return CUFFT_SUCCESS;
}

cufftResult cufftExecR2C(cufftHandle plan, cufftReal *in, cufftComplex *out)
{
    emu_plan *p = plan_of(plan, CUFFT_R2C);
    if (!p)
        return CUFFT_INVALID_PLAN;
    int n = p->n, nb = n / 2 + 1;
    for (int b = 0; b < p->batch; b++) {
        const float *x = in + (size_t)b * n;
        cufftComplex *z = out + (size_t)b * nb;
        for (int f = 0; f < nb; f++) {
            double re = 0, im = 0;
            for (int t = 0; t < n; t++) { /* x[t] exp(-2 pi i f t / n) */
                size_t j = (size_t)((long)f * t % n);
                re += x[t] * p->cos_t[j];
                im -= x[t] * p->sin_t[j];
            }
            z[f].x = (float)re;
            z[f].y = (float)im;
        }
    }
    return CUFFT_SUCCESS;
}

cufftResult cufftExecC2R(cufftHandle plan, cufftComplex *in, cufftReal *out)
{
    emu_plan *p = plan_of(plan, CUFFT_C2R);
    if (!p)
        return CUFFT_INVALID_PLAN;
    int n = p->n, nb = n / 2 + 1;
    for (int b = 0; b < p->batch; b++) {
        const cufftComplex *z = in + (size_t)b * nb;
        float *x = out + (size_t)b * n;
        for (int t = 0; t < n; t++) {
            /* Hermitian extension: bins 0 and n/2 count by their real parts */
            double acc = z[0].x + (n % 2 == 0 ? z[n / 2].x * ((t % 2) ? -1.0 : 1.0) : 0.0);
            for (int f = 1; f < (n + 1) / 2; f++) { /* 2 Re(z[f] exp(2 pi i f t / n)) */
                size_t j = (size_t)((long)f * t % n);
                acc += 2.0 * (z[f].x * p->cos_t[j] - z[f].y * p->sin_t[j]);
            }
            x[t] = (float)acc;
        }
    }
    return CUFFT_SUCCESS;
}

cufftResult cufftDestroy(cufftHandle plan)
{
    if (plan < 0 || (size_t)plan >= plans.size() || !plans[plan].in_use)
        return CUFFT_INVALID_PLAN;
    plans[plan].in_use = 0;
    return CUFFT_SUCCESS;
}
