# bench/e2e.mk: `make bench-e2e` - a 60 s song through `workerd separate` and through the
# reference demucs CLI (build/refvenv), same weights (full-size htdemucs structure,
# random weights generated on the fly) and threads, 3 interleaved rounds after a warm-up;
# wall and CPU time, load time apart, peak RSS, ratios, and workerd's peak RSS at 180 s
# (bench/e2e, bench/benchlib.py; results in
# bench/results/e2e-<YYYYmmdd-HHMM>[-NOISY|-INVALID].txt).
.PHONY: bench-e2e

bench-e2e: deps-reference
	@$(MAKE) --no-print-directory all
	$(PY) bench/e2e
