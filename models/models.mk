# models/: the HTDemucs engine (safetensors loading, graph, CPU backend).
#
#   build/libsepmodels.a   engine.h API: sep_model_load, sep_engine_create/forward
#                          (link with $(SEPMODELS_LDLIBS), alias $(MODELS_LIBS))
#   build/tests/parity     C-vs-reference parity checker (tests/parity/parity.c)
#   make test-ops          each backend operation vs a plain reference loop
#   make test-engine       loading failures, API checks (tests/parity/engine_test.c)
#   make test-parity       every committed fixture in tests/fixtures/ (small configs)
#   make test-parity-asan  the same under ASan + UBSan
#   make test-ops-san      the ops test and the kernel stress test built by clang under
#                          ASan + UBSan (clang's UBSan also checks pointer arithmetic)
#   make test-kernel-stress  boundary shapes, random shapes and bit-exactness of the
#                          attention, dconv_tail and Winograd kernels (kernel_attack.c)
#   make test-parity-full  official htdemucs hyperparameters, random weights, one 7.8 s
#                          segment, reference generated on demand (needs build/refvenv)
#   make fixtures          regenerate tests/fixtures/ with the reference (build/refvenv)
#   make test-arm64        cross-built for arm64, run under qemu-aarch64 (models/arm64.mk;
#                          not in make test)
# apply.c / convert* in models/ belong to their own fragments.

# the kernel tables compiled for the target $(CC) builds for (cpu_kernels.h): plain C
# everywhere, AVX2 and AVX-512 on x86-64, NEON on arm64
MODELS_TARGET  := $(shell $(CC) -dumpmachine)
MODELS_KERNEL_SRCS := models/cpu_kernels_generic.c \
    $(if $(filter x86_64-%,$(MODELS_TARGET)),models/cpu_kernels_avx2.c models/cpu_kernels_avx512.c) \
    $(if $(filter aarch64-%,$(MODELS_TARGET)),models/cpu_kernels_neon.c)
MODELS_SRCS    := models/safetensors.c models/model.c models/engine.c models/htdemucs.c \
                  models/arena.c models/cpu_backend.c models/cpu_gemm.c models/profile.c models/cuda_loader.c \
                  $(MODELS_KERNEL_SRCS)
MODELS_HDRS    := models/engine.h models/backend.h models/htdemucs.h models/safetensors.h \
                  models/arena.h models/model_internal.h models/profile.h models/util.h \
                  models/cpu_kernels.h models/cpu_kernels_impl.h models/cpu_gemm.h
MODELS_OBJDIR  := $(BUILD)/obj-models
MODELS_OBJS    := $(patsubst models/%.c,$(MODELS_OBJDIR)/%.o,$(MODELS_SRCS))
BLAS_CFLAGS    := $(shell pkg-config --cflags openblas 2>/dev/null || echo -I/usr/include/$(MODELS_TARGET)/openblas-pthread)
BLAS_LIBS      := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
MODELS_CFLAGS  := $(CFLAGS_COMMON) -fopenmp $(BLAS_CFLAGS)
SEPMODELS_LIB  := $(BUILD)/libsepmodels.a
SEPMODELS_LDLIBS := -fopenmp $(BLAS_LIBS) -lfftw3f -ljansson -lpthread -lm -ldl
MODELS_LIBS    := $(SEPMODELS_LDLIBS)

PARITY_BIN     := $(BUILD)/tests/parity
ENGINE_TEST_BIN := $(BUILD)/tests/engine_test
OPS_TEST_BIN   := $(BUILD)/tests/ops_test
PARITY_ASAN_BIN := $(BUILD)/tests/parity-asan
KERNEL_STRESS_BIN := $(BUILD)/tests/kernel_attack
OPS_SAN_BIN    := $(BUILD)/tests/ops_test-san
KERNEL_SAN_BIN := $(BUILD)/tests/kernel_attack-san
PARITY_FIXTURES := $(sort $(patsubst %.weights.safetensors,%,$(wildcard tests/fixtures/*.weights.safetensors)))
PARITY_FULL_DIR := $(BUILD)/parity-full

ALL_TARGETS += $(SEPMODELS_LIB) $(PARITY_BIN) $(ENGINE_TEST_BIN) $(OPS_TEST_BIN)
TEST_SUITES += test-ops test-engine test-parity test-parity-asan test-parity-full \
               test-kernel-stress test-ops-san

$(MODELS_OBJDIR)/%.o: models/%.c $(MODELS_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) -c $< -o $@

# the CPU kernels: -O3 for the vectoriser (element-wise loops, im2col, norms)
$(MODELS_OBJDIR)/cpu_backend.o: MODELS_CFLAGS += -O3
# one kernel table per instruction set, picked at run time (cpu_kernels.h); their
# inputs are finite, so min/max compile to single instructions
$(MODELS_OBJDIR)/cpu_kernels_generic.o: MODELS_CFLAGS += -O3 -ffinite-math-only
$(MODELS_OBJDIR)/cpu_kernels_avx2.o: MODELS_CFLAGS += -O3 -ffinite-math-only -march=x86-64-v3
$(MODELS_OBJDIR)/cpu_kernels_avx512.o: MODELS_CFLAGS += -O3 -ffinite-math-only -march=x86-64-v4
# (Advanced SIMD and FMA are in the AArch64 base architecture: no -march)
$(MODELS_OBJDIR)/cpu_kernels_neon.o: MODELS_CFLAGS += -O3 -ffinite-math-only

$(SEPMODELS_LIB): $(MODELS_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(PARITY_BIN): tests/parity/parity.c $(SEPMODELS_LIB) $(SEPCUDA_LIB) $(MODELS_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) $(SEPCUDA_CFLAGS) tests/parity/parity.c $(SEPMODELS_LIB) \
	    $(SEPCUDA_LDLIBS) $(SEPMODELS_LDLIBS) -o $@

$(ENGINE_TEST_BIN): tests/parity/engine_test.c $(SEPMODELS_LIB) $(SEPCUDA_LIB) $(MODELS_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) $(SEPCUDA_CFLAGS) tests/parity/engine_test.c $(SEPMODELS_LIB) \
	    $(SEPCUDA_LDLIBS) $(SEPMODELS_LDLIBS) -o $@

$(OPS_TEST_BIN): tests/parity/ops_test.c $(SEPMODELS_LIB) $(SEPCUDA_LIB) $(MODELS_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) $(SEPCUDA_CFLAGS) tests/parity/ops_test.c $(SEPMODELS_LIB) \
	    $(SEPCUDA_LDLIBS) $(SEPMODELS_LDLIBS) -o $@

# the engine and the parity checker built with AddressSanitizer + UBSan, from source
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
$(PARITY_ASAN_BIN): tests/parity/parity.c $(MODELS_SRCS) $(MODELS_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) -O1 $(SANITIZE) tests/parity/parity.c $(MODELS_SRCS) \
	    $(SEPMODELS_LDLIBS) -o $@

$(KERNEL_STRESS_BIN): tests/parity/kernel_attack.c tests/parity/ops_test.c $(SEPMODELS_LIB) \
                     $(MODELS_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) tests/parity/kernel_attack.c $(SEPMODELS_LIB) $(SEPMODELS_LDLIBS) -o $@

# clang's -fsanitize=undefined includes pointer-overflow (a pointer moved out of its
# object and back), which GCC's does not check; each kernel table is compiled with its
# own -march as in the library
SAN_CC      ?= clang-14
SAN_FLAGS   := -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
               -fno-omit-frame-pointer
SAN_OBJDIR  := $(BUILD)/obj-models-san
SAN_OBJS    := $(patsubst models/%.c,$(SAN_OBJDIR)/%.o,$(MODELS_SRCS))
$(SAN_OBJDIR)/%.o: models/%.c $(MODELS_HDRS)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(CSTD) -fPIC -D_GNU_SOURCE -I. -fopenmp $(BLAS_CFLAGS) $(SAN_FLAGS) \
	    $(SAN_KERNEL_FLAGS) -c $< -o $@
$(SAN_OBJDIR)/cpu_kernels_generic.o: SAN_KERNEL_FLAGS := -ffinite-math-only
$(SAN_OBJDIR)/cpu_kernels_avx2.o: SAN_KERNEL_FLAGS := -ffinite-math-only -march=x86-64-v3
$(SAN_OBJDIR)/cpu_kernels_avx512.o: SAN_KERNEL_FLAGS := -ffinite-math-only -march=x86-64-v4
$(SAN_OBJDIR)/cpu_kernels_neon.o: SAN_KERNEL_FLAGS := -ffinite-math-only
$(OPS_SAN_BIN): tests/parity/ops_test.c $(SAN_OBJS)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(CSTD) -D_GNU_SOURCE -I. -fopenmp $(BLAS_CFLAGS) $(SAN_FLAGS) $< $(SAN_OBJS) \
	    $(SEPMODELS_LDLIBS) -o $@
$(KERNEL_SAN_BIN): tests/parity/kernel_attack.c tests/parity/ops_test.c $(SAN_OBJS)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(CSTD) -D_GNU_SOURCE -I. -fopenmp $(BLAS_CFLAGS) $(SAN_FLAGS) $< $(SAN_OBJS) \
	    $(SEPMODELS_LDLIBS) -o $@

.PHONY: test-ops test-engine test-parity test-parity-asan test-parity-full fixtures \
        test-kernel-stress test-ops-san
# every backend operation against a plain double-precision loop (tests/parity/ops_test.c)
# test-ops, test-parity and the kernel tests run once per CPU code path this machine has:
# each instruction set it supports (SEP_CPU_ISA=generic, avx2, avx512) with its default
# GEMM provider, and with OpenBLAS too where that is not the default (SEP_CPU_GEMM; see
# models/README.md). CPU_PATH_ENV sets both for the path in $$p (isa:gemm).
CPU_PATHS = $(shell $(OPS_TEST_BIN) --paths 2>/dev/null || echo generic:openblas)
CPU_PATH_ENV = SEP_CPU_ISA=$${p%%:*} SEP_CPU_GEMM=$${p\#*:}
test-ops: $(OPS_TEST_BIN)
	@rc=0; for p in $(CPU_PATHS); do \
	  echo "== $(CPU_PATH_ENV)"; \
	  $(CPU_PATH_ENV) $(OPS_TEST_BIN) --threads 2 || rc=1; \
	done; exit $$rc

# once per instruction set: the boundary shapes and bit checks, then 150 random shapes
test-kernel-stress: $(KERNEL_STRESS_BIN) $(OPS_TEST_BIN)
	@rc=0; for p in $(CPU_PATHS); do \
	  echo "== $(CPU_PATH_ENV)"; \
	  $(CPU_PATH_ENV) $(KERNEL_STRESS_BIN) --threads 3 || rc=1; \
	  $(CPU_PATH_ENV) $(KERNEL_STRESS_BIN) --threads 2 --fuzz 150 1 || rc=1; \
	done; exit $$rc

# the ops test (odd thread count) and the kernel stress test's random shapes under the
# sanitizers, once per code path (LeakSanitizer off for the stress test: LLVM's
# OpenMP runtime keeps a little memory per thread-count change; and on the oneDNN
# paths: LLVM 14's LeakSanitizer crashes scanning the dynamic TLS of the dlopen()ed
# libdnnl, so leaks are checked on the OpenBLAS paths, which run the same code)
test-ops-san: $(OPS_SAN_BIN) $(KERNEL_SAN_BIN) $(OPS_TEST_BIN)
	@rc=0; for p in $(CPU_PATHS); do \
	  echo "== $(CPU_PATH_ENV)"; \
	  leaks=1; [ "$${p#*:}" = onednn ] && leaks=0; \
	  $(CPU_PATH_ENV) ASAN_OPTIONS=detect_leaks=$$leaks UBSAN_OPTIONS=print_stacktrace=1 \
	    $(OPS_SAN_BIN) --threads 3 || rc=1; \
	  $(CPU_PATH_ENV) ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(KERNEL_SAN_BIN) --threads 3 --fuzz 60 2 || rc=1; \
	done; exit $$rc

test-engine: $(ENGINE_TEST_BIN)
	@$(ENGINE_TEST_BIN) tests/fixtures/tiny_transformer.weights.safetensors

# ASan/UBSan over every fixture (LeakSanitizer on: the engine must free what it takes)
test-parity-asan: $(PARITY_ASAN_BIN)
	@rc=0; for f in $(PARITY_FIXTURES); do \
	  echo "== $$f"; \
	  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(PARITY_ASAN_BIN) $$f.weights.safetensors $$f.activations.safetensors --threads 2 || rc=1; \
	done; exit $$rc

test-parity: $(PARITY_BIN) $(OPS_TEST_BIN)
	@[ -n "$(PARITY_FIXTURES)" ] || { echo "no fixtures in tests/fixtures"; exit 1; }
	@rc=0; for p in $(CPU_PATHS); do for f in $(PARITY_FIXTURES); do \
	  echo "== $(CPU_PATH_ENV) $$f"; \
	  $(CPU_PATH_ENV) $(PARITY_BIN) $$f.weights.safetensors $$f.activations.safetensors \
	    --threads 2 || rc=1; \
	done; done; exit $$rc

# the full-size check once per code path too (SEP_PARITY_FULL_PATHS to narrow it)
test-parity-full: $(PARITY_BIN) $(OPS_TEST_BIN)
	@rc=0; for p in $${SEP_PARITY_FULL_PATHS:-$(CPU_PATHS)}; do \
	  echo "== $(CPU_PATH_ENV)"; \
	  $(CPU_PATH_ENV) tests/parity/full-check $(REFVENV) $(PARITY_FULL_DIR) $(PARITY_BIN) || rc=1; \
	done; exit $$rc

fixtures:
	$(REFVENV)/bin/python tests/reference/make_fixtures.py --out tests/fixtures
include models/arm64.mk
include models/convert.mk
