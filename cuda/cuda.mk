# cuda/: the CUDA backend of the engine (sep_cuda_backend_create, models/backend.h).
#
#   build/libsepcuda.so  every .cu of cuda/, compiled by nvcc for sm_80, sm_89, sm_90
#                        (+ compute_90 PTX for later GPUs), when nvcc is found, linked
#                        with the CUDA runtime, cuBLAS and cuFFT
#   make cuda-archs      the cubins / PTX in each object (cuda/fatbin-archs)
#
# Built only when `nvcc` is on PATH (or NVCC=/path/to/nvcc is given); without it the
# variables below are empty and nothing of cuda/ is built. The binaries never link the
# backend: they dlopen() libsepcuda.so when a CUDA engine is asked for
# (models/cuda_loader.c: beside the binary or one directory up, SEP_CUDA_LIBRARY, or
# the loader's path), so a process on the CPU maps none of the CUDA libraries (about
# 160 MiB of RSS) and runs where they are not installed. $(SEPCUDA_LIB) is a
# prerequisite of those binaries so that `make` of any of them builds it too.

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
SEPCUDA_LIB    := $(BUILD)/libsepcuda.so
SEPCUDA_CFLAGS :=
SEPCUDA_LDLIBS :=

ALL_TARGETS += $(SEPCUDA_LIB)

$(CUDA_OBJDIR)/%.o: cuda/%.cu $(CUDA_HDRS)
	@mkdir -p $(@D)
	$(NVCC) $(NVCC_FLAGS) -c $< -o $@

$(SEPCUDA_LIB): $(CUDA_OBJS)
	$(CXX) -shared -o $@ $^ -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcufft -lcublas \
	    -lcudart -Wl,--no-undefined

# `make cuda` builds the library; `make cuda-archs` lists the GPU code in each member
.PHONY: cuda cuda-archs
cuda: $(SEPCUDA_LIB)

cuda-archs: $(CUDA_OBJS)
	@cuda/fatbin-archs $(CUDA_OBJS)
else
SEPCUDA_LIB    :=
SEPCUDA_CFLAGS :=
SEPCUDA_LDLIBS :=
endif

# ---- the backend on an emulated CUDA runtime (no GPU, no nvcc: g++ only) ----
#
#   make test-cuda-emu   cuda/*.cu compiled by g++ against cuda/emu/ (the CUDA runtime,
#                        cuBLAS and cuFFT calls of the backend done on the CPU; kernels
#                        run thread by thread, AddressSanitizer + UBSan on), then
#                        `ops_test --device cuda` and `parity FIXTURE --device cuda`
#                        (--quick but on $(CUDA_EMU_FULL_FIXTURE)) on it: the backend's kernels, launch geometry, library call
#                        conventions and chunking against the same references as the
#                        CPU backend. Races, GPU limits and the libraries' own numerics
#                        need a GPU (cuda/README.md).
CUDA_EMU_DIR      := $(BUILD)/cuda-emu
CUDA_EMU_OBJS     := $(patsubst cuda/%.cu,$(CUDA_EMU_DIR)/%.o,$(wildcard cuda/*.cu)) \
                     $(CUDA_EMU_DIR)/emu.o
CUDA_EMU_HDRS     := cuda/cuda_internal.h cuda/cuda_host.h models/backend.h \
                     $(wildcard cuda/emu/*.h)
CUDA_EMU_SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer \
                     -fno-sanitize-recover=undefined
CUDA_EMU_CXXFLAGS := -std=c++20 -O2 -g -Wall -Wno-unknown-pragmas -DSEP_CUDA_EMULATION \
                     -D_GNU_SOURCE -Icuda/emu -I. -pthread $(CUDA_EMU_SAN)
CUDA_EMU_OPS_BIN    := $(BUILD)/tests/ops_test_cuda_emu
CUDA_EMU_PARITY_BIN := $(BUILD)/tests/parity_cuda_emu
TEST_SUITES += test-cuda-emu
# every fixture's activations; the batch-of-2 and short-input runs (three more forward
# passes, slow when emulated) on this one
CUDA_EMU_FULL_FIXTURE := tests/fixtures/tiny_merge

$(CUDA_EMU_DIR)/%.o: cuda/%.cu $(CUDA_EMU_HDRS)
	@mkdir -p $(@D)
	$(CXX) $(CUDA_EMU_CXXFLAGS) -x c++ -c $< -o $@

$(CUDA_EMU_DIR)/emu.o: cuda/emu/emu.cc $(CUDA_EMU_HDRS)
	@mkdir -p $(@D)
	$(CXX) $(CUDA_EMU_CXXFLAGS) -c $< -o $@

$(CUDA_EMU_DIR)/%_test.o $(CUDA_EMU_DIR)/parity.o: MODELS_CFLAGS += $(CUDA_EMU_SAN)
$(CUDA_EMU_DIR)/ops_test.o: tests/parity/ops_test.c $(BUILD)/libsepmodels.a
	@mkdir -p $(@D)
	$(CC) $(MODELS_CFLAGS) -c $< -o $@

$(CUDA_EMU_DIR)/parity.o: tests/parity/parity.c $(BUILD)/libsepmodels.a
	@mkdir -p $(@D)
	$(CC) $(MODELS_CFLAGS) -c $< -o $@

$(CUDA_EMU_OPS_BIN) $(CUDA_EMU_PARITY_BIN): $(BUILD)/tests/%_cuda_emu: $(CUDA_EMU_DIR)/%.o \
                                            $(CUDA_EMU_OBJS) $(BUILD)/libsepmodels.a
	@mkdir -p $(@D)
	$(CXX) $(CUDA_EMU_SAN) -pthread -o $@ $< $(CUDA_EMU_OBJS) $(BUILD)/libsepmodels.a \
	    $(SEPMODELS_LDLIBS)

.PHONY: test-cuda-emu
test-cuda-emu: $(CUDA_EMU_OPS_BIN) $(CUDA_EMU_PARITY_BIN)
	@rc=0; echo "== ops_test --device cuda (emulated CUDA runtime)"; \
	  ASAN_OPTIONS=detect_leaks=1 $(CUDA_EMU_OPS_BIN) --device cuda || rc=1; \
	  for f in $(PARITY_FIXTURES); do \
	    quick=--quick; [ "$$f" = $(CUDA_EMU_FULL_FIXTURE) ] && quick=; \
	    echo "== parity $$f --device cuda$${quick:+ $$quick} (emulated CUDA runtime)"; \
	    ASAN_OPTIONS=detect_leaks=1 $(CUDA_EMU_PARITY_BIN) $$f.weights.safetensors \
	      $$f.activations.safetensors --device cuda $$quick || rc=1; \
	  done; exit $$rc
