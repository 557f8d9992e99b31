# bench/e2e.mk: `make bench-e2e` - a 60 s song through `workerd separate` and through the
# reference demucs CLI (build/refvenv), same weights (full-size htdemucs structure,
# random weights generated on the fly) and threads; wall time, peak RSS, ratio, and
# workerd's peak RSS at 180 s (bench/e2e; results in bench/results/e2e-<date>.txt).
.PHONY: bench-e2e

bench-e2e: deps-reference
	@$(MAKE) --no-print-directory all
	$(PY) bench/e2e
