# bench/: benchmarks (not tests); each prints its figures and the ratio to its peer.
#
# bench-http   submissions/s and status reads/s of nginx + the module, against nginx DAV
#              PUT (upper bound) and the Celery-style Flask stack, in the same run
#              (bench/http; results in bench/results/http-<date>.txt)
# deps-bench   the Debian packages of the Celery-style peer

BENCH_PEER_PKGS := python3-flask python3-celery gunicorn

.PHONY: bench-http deps-bench

deps-bench: deps
	$(call apt_install_missing,$(BENCH_PEER_PKGS))

bench-http: deps-bench
	@$(MAKE) --no-print-directory all
	$(PY) bench/http

# end-to-end separation benchmark (workerd vs the demucs CLI), owned by workerd/
include bench/e2e.mk

# CPU engine vs PyTorch per segment, owned by models/
include bench/cpu.mk
