/*
 * cuda_host.h - page-locking host memory for the CUDA backend's copies, callable from
 * C (workerd pins its shared batch arena with it). Defined in cuda/backend.cu; only
 * exported by libsepcuda.so; C callers go through sep_cuda_host_pin() / _unpin()
 * (models/backend.h, models/cuda_loader.c), which load the library.
 */
#ifndef SEP_CUDA_HOST_H
#define SEP_CUDA_HOST_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cudaHostRegister(base, bytes, cudaHostRegisterPortable): 0; 1 when there is no CUDA
 * device (nothing to pin for); -1 when registering fails; err says why */
int sep_cuda_host_register(void *base, size_t bytes, char *err, size_t errlen);
void sep_cuda_host_unregister(void *base);

#ifdef __cplusplus
}
#endif

#endif
