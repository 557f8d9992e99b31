# bench/cpu: CPU and wall seconds per full-size htdemucs segment, the C engine vs the
# reference PyTorch model with the same thread count, interleaved in one run (bench/cpu,
# bench/benchlib.py; results in bench/results/cpu-<YYYYmmdd-HHMM>[-NOISY|-INVALID].txt).
#
#   make bench-cpu      SEP_BENCH_THREADS (default 2), SEP_BENCH_RUNS (rounds, default 5),
#                       CPU_BENCH_ARGS (more options, e.g. --isa avx2)

CPU_BENCH_BIN := $(BUILD)/bench/cpu_engine
ALL_TARGETS += $(CPU_BENCH_BIN)

$(CPU_BENCH_BIN): bench/cpu_engine.c $(SEPMODELS_LIB) $(SEPCUDA_LIB) models/engine.h models/util.h
	@mkdir -p $(dir $@)
	$(CC) $(MODELS_CFLAGS) $(SEPCUDA_CFLAGS) bench/cpu_engine.c $(SEPMODELS_LIB) \
	    $(SEPCUDA_LDLIBS) $(SEPMODELS_LDLIBS) -o $@

.PHONY: bench-cpu
bench-cpu: $(CPU_BENCH_BIN) deps-reference
	$(PY) bench/cpu $(CPU_BENCH_ARGS)
