/*
 * cuda_loader.c - the CUDA backend, loaded on demand.
 *
 * The backend (cuda/, built by nvcc into libsepcuda.so when nvcc is found) links the
 * CUDA runtime, cuBLAS and cuFFT: about 160 MiB of shared libraries mapped and touched
 * at start. A process that runs on the CPU must not pay for them, nor need them
 * installed, so the binaries do not link the backend: the first request for a CUDA
 * engine dlopen()s it. Where it is looked for, in order: $SEP_CUDA_LIBRARY (a path),
 * libsepcuda.so beside the executable, one directory up (build/tests/, build/bench/
 * binaries), then the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache). A
 * binary that has the backend linked in statically (the emulated-runtime tests) uses
 * that instead.
 */
#include "models/backend.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef sep_backend *(*create_fn)(int, char *, size_t);
typedef int (*register_fn)(void *, size_t, char *, size_t);
typedef void (*unregister_fn)(void *);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *lib;
static char load_error[PATH_MAX + 1024];

/* Opens the library once; NULL with load_error set when none is found. */
static void *cuda_library(void)
{
    pthread_mutex_lock(&lock);
    if (!lib && !load_error[0]) {
        char exe[PATH_MAX], path[PATH_MAX + 32];
        const char *env = getenv("SEP_CUDA_LIBRARY");
        if (env && *env) {
            lib = dlopen(env, RTLD_NOW | RTLD_LOCAL);
            if (!lib)
                snprintf(load_error, sizeof(load_error),
                         "cannot load the CUDA backend SEP_CUDA_LIBRARY=%s: %s", env, dlerror());
        } else {
            ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
            exe[n > 0 ? n : 0] = '\0';
            for (int up = 0; up < 2 && !lib && n > 0; up++) {
                char *slash = strrchr(exe, '/');
                if (!slash)
                    break;
                *slash = '\0';
                snprintf(path, sizeof(path), "%s/libsepcuda.so", exe);
                if (access(path, F_OK) != 0)
                    continue;
                lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
                if (!lib) /* present but not loadable (a CUDA library missing): say so */
                    snprintf(load_error, sizeof(load_error), "cannot load the CUDA backend %s: %s",
                             path, dlerror());
            }
            if (!lib && !load_error[0]) {
                lib = dlopen("libsepcuda.so", RTLD_NOW | RTLD_LOCAL);
                if (!lib)
                    snprintf(load_error, sizeof(load_error),
                             "this build has no CUDA backend (no libsepcuda.so beside the "
                             "binary or on the library path; it is built where nvcc is found)");
            }
        }
    }
    void *h = lib;
    pthread_mutex_unlock(&lock);
    return h;
}

sep_backend *sep_cuda_backend_open(int device, char *err, size_t errlen)
{
    if (sep_cuda_backend_create) /* linked in */
        return sep_cuda_backend_create(device, err, errlen);
    void *h = cuda_library();
    create_fn create = h ? (create_fn)dlsym(h, "sep_cuda_backend_create") : NULL;
    if (!create) {
        snprintf(err, errlen, "cuda: %s",
                 h ? "libsepcuda.so lacks sep_cuda_backend_create" : load_error);
        return NULL;
    }
    return create(device, err, errlen);
}

int sep_cuda_host_pin(void *base, size_t bytes, char *err, size_t errlen)
{
    void *h = cuda_library();
    register_fn reg = h ? (register_fn)dlsym(h, "sep_cuda_host_register") : NULL;
    if (!reg) {
        snprintf(err, errlen, "%s", h ? "libsepcuda.so lacks sep_cuda_host_register" : load_error);
        return 1; /* nothing to pin for */
    }
    return reg(base, bytes, err, errlen);
}

void sep_cuda_host_unpin(void *base)
{
    void *h = cuda_library();
    unregister_fn unreg = h ? (unregister_fn)dlsym(h, "sep_cuda_host_unregister") : NULL;
    if (unreg)
        unreg(base);
}
