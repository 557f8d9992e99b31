# bench/libs: OpenBLAS, BLIS and oneDNN on the network's GEMM and convolution shapes,
# each run the way the engine runs its GEMMs (2 OpenMP threads, single-threaded GEMMs on
# their chunks), against OpenBLAS and the engine's own conv2d (bench/libs.c; results in
# bench/results/libs-<YYYYmmdd-HHMM>.txt; comparison in models/README.md).
#
#   make deps-bench-libs  install Debian's libblis-dev and libdnnl-dev (not in make deps)
#   make bench-libs       build and run it; LIBS_BENCH_ARGS (e.g. --quick, --reps 9)
#
# `make all` builds it only where both libraries are installed.

LIBS_BENCH_BIN  := $(BUILD)/bench/libs
LIBS_BENCH_PKGS := libblis-dev libdnnl-dev
LIBS_BENCH_SRCS := bench/libs.c bench/libs_blis.c bench/libs_dnnl.c
LIBS_BENCH_ARGS ?=
# OpenBLAS first: BLIS exports a CBLAS of its own, and the first library given wins
# cblas_sgemm (the program checks that it came from OpenBLAS)
LIBS_BENCH_LDLIBS := $(SEPMODELS_LDLIBS) -lblis -ldnnl -ldl

LIBS_BENCH_HASH := \#
LIBS_BENCH_PRESENT := $(shell printf '$(LIBS_BENCH_HASH)include <blis.h>\n$(LIBS_BENCH_HASH)include <oneapi/dnnl/dnnl.h>\n' | \
    $(CC) -E -x c - -o /dev/null 2>/dev/null && \
    [ -e "$$($(CC) -print-file-name=libblis.so)" ] && \
    [ -e "$$($(CC) -print-file-name=libdnnl.so)" ] && echo yes)
ifeq ($(LIBS_BENCH_PRESENT),yes)
ALL_TARGETS += $(LIBS_BENCH_BIN)
endif

$(LIBS_BENCH_BIN): $(LIBS_BENCH_SRCS) bench/libs.h $(SEPMODELS_LIB) models/backend.h
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) $(LIBS_BENCH_SRCS) $(SEPMODELS_LIB) $(LIBS_BENCH_LDLIBS) -o $@

.PHONY: deps-bench-libs bench-libs
deps-bench-libs: deps-run
	$(call apt_install_missing,$(LIBS_BENCH_PKGS))

bench-libs: deps-bench-libs
	@$(MAKE) --no-print-directory $(LIBS_BENCH_BIN)
	@mkdir -p bench/results
	@out=bench/results/libs-$$(date +%Y%m%d-%H%M).txt; \
	  $(LIBS_BENCH_BIN) $(LIBS_BENCH_ARGS) | tee $$out; rc=$${PIPESTATUS[0]}; \
	  echo "results: $$out"; exit $$rc
