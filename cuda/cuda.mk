# cuda/: the CUDA backend of the engine (sep_cuda_backend_create, models/backend.h).
#
#   build/libsepcuda.a   every .cu of cuda/, compiled by nvcc for sm_80, sm_89, sm_90
#                        (+ compute_90 PTX for later GPUs), when nvcc is found
#   make cuda-archs      the cubins / PTX in each of its members (cuda/fatbin-archs)
#
# Built only when `nvcc` is on PATH (or NVCC=/path/to/nvcc is given); without it every
# variable below is empty and the engine builds CPU-only, as before. With it, the
# binaries that create engines (build/workerd, build/tests/{ops_test,parity,
# engine_test}, build/bench/cpu_engine) link $(SEPCUDA_LDLIBS) and are compiled with
# $(SEPCUDA_CFLAGS) (-DSEP_HAVE_CUDA). The backend is defined behind a weak reference
# (backend.h), which does not pull an archive member by itself: the link names the
# symbol (--undefined) so the library is always taken.

NVCC ?= $(shell command -v nvcc 2>/dev/null)

ifneq ($(strip $(NVCC)),)
CUDA_HOME      ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
CUDA_LIBDIR    := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib \
                    $(CUDA_HOME)/targets/x86_64-linux/lib))
CUDA_GENCODE   := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_89,code=sm_89 \
                  -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
NVCC_FLAGS     := -std=c++17 -O3 $(CUDA_GENCODE) -Xcompiler -Wall,-fPIC -I. -D_GNU_SOURCE
CUDA_SRCS      := $(wildcard cuda/*.cu)
CUDA_HDRS      := cuda/cuda_internal.h cuda/cuda_host.h models/backend.h
CUDA_OBJDIR    := $(BUILD)/obj-cuda
CUDA_OBJS      := $(patsubst cuda/%.cu,$(CUDA_OBJDIR)/%.o,$(CUDA_SRCS))
SEPCUDA_LIB    := $(BUILD)/libsepcuda.a
SEPCUDA_CFLAGS := -DSEP_HAVE_CUDA
SEPCUDA_LDLIBS := -Wl,--undefined=sep_cuda_backend_create $(SEPCUDA_LIB) -L$(CUDA_LIBDIR) \
                  -Wl,-rpath,$(CUDA_LIBDIR) -lcufft -lcublas -lcudart -lstdc++

ALL_TARGETS += $(SEPCUDA_LIB)

$(CUDA_OBJDIR)/%.o: cuda/%.cu $(CUDA_HDRS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(SEPCUDA_LIB): $(CUDA_OBJS)
	@rm -f $@
	ar rcs $@ $^

# `make cuda` builds the library; `make cuda-archs` lists the GPU code in each member
.PHONY: cuda cuda-archs
cuda: $(SEPCUDA_LIB)

cuda-archs: $(SEPCUDA_LIB)
	@cuda/fatbin-archs $(SEPCUDA_LIB)
else
SEPCUDA_LIB    :=
SEPCUDA_CFLAGS :=
SEPCUDA_LDLIBS :=
endif
