# bench/cpu: CPU seconds per full-size htdemucs segment, the C engine vs the reference
# PyTorch model with the same thread count, in one run (see bench/cpu).
#
#   make bench-cpu      SEP_BENCH_THREADS (default 2), SEP_BENCH_RUNS (default 3)

CPU_BENCH_BIN := $(BUILD)/bench/cpu_engine
ALL_TARGETS += $(CPU_BENCH_BIN)

$(CPU_BENCH_BIN): bench/cpu_engine.c $(SEPMODELS_LIB) models/engine.h models/util.h
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) bench/cpu_engine.c $(SEPMODELS_LIB) $(SEPMODELS_LDLIBS) -o $@

.PHONY: bench-cpu
bench-cpu: $(CPU_BENCH_BIN)
	bench/cpu
