# bench/: benchmarks (not tests); each prints its figures and the ratio to its peer.
#
# bench-http   successful submissions/s and status reads/s of nginx + the module, their
#              latency percentiles and server CPU-ms per request, against nginx DAV PUT
#              (upper bound) and the Celery-style Flask stack as the seeds run it and
#              tuned, in the same run, interleaved, checked (bench/http, bench/benchlib.py;
#              results in bench/results/http-<YYYYmmdd-HHMM>[-NOISY|-INVALID].txt)
# bench-queue  queue overhead: submit -> claimed and submit -> completed, p50/p99 over
#              1,000 tiny jobs through nginx + module + workerd, against the Celery-style
#              peer in the same run (bench/queue; results/queue-<date>.txt)
# bench-memory peak RSS of workerd (supervisor + device workers) for a 10-minute and a
#              60-minute input through the service, tiny model (bench/memory;
#              results/memory-<date>.txt)
# bench-service songs per hour, 20 x 10 s songs through the whole service with the
#              full-size htdemucs structure (random weights) against Flask + Celery +
#              reference demucs apply_model (bench/service; results/service-<date>.txt)
# bench-faults the request path under faults: a wedged Redis connection, GETs beside a
#              large multipart upload (bench/faults/*.py; results/faults-<date>.txt)
# bench-events SSE fan-out: 10,000 event streams on one nginx worker, spread over 100 jobs
#              and then all on one job: Redis connections, worker RSS, publish -> client
#              latency p50/p99 (bench/events; results/events-<date>.txt)
# bench-chaos  DURATION=S (1800): uploads while device workers, supervisors and Redis are
#              SIGKILLed and nginx reloaded at random; every accepted job must complete
#              exactly once, nothing left in the spool (bench/chaos; results appended
#              to results/chaos-<date>.txt). `make test-chaos` is its 2-minute run.
# deps-bench   the Debian packages of the Celery-style peer
# test-benchlib the statistics and verdict logic of bench/benchlib.py (the library every
#              bench uses: machine record, quiet check, interleaving, NOISY / INVALID)
#              on fixed numbers (bench/test_benchlib.py; a test suite, in TEST_SUITES)

BENCH_PEER_PKGS := python3-flask python3-celery gunicorn

.PHONY: bench-http bench-queue bench-memory bench-service bench-faults bench-events bench-chaos \
        test-chaos deps-bench test-benchlib

TEST_SUITES += test-benchlib

test-benchlib:
	$(PY) bench/test_benchlib.py

deps-bench: deps
	$(call apt_install_missing,$(BENCH_PEER_PKGS))

bench-http: deps-bench
	@$(MAKE) --no-print-directory all
	$(PY) bench/http

bench-queue: deps-bench
	@$(MAKE) --no-print-directory all
	$(PY) bench/queue

bench-memory: deps
	@$(MAKE) --no-print-directory all
	$(PY) bench/memory

bench-service: deps-bench deps-reference
	@$(MAKE) --no-print-directory all
	$(PY) bench/service

bench-faults: deps
	@$(MAKE) --no-print-directory all
	@for f in bench/faults/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

SSE_CLIENTS_BIN := $(BUILD)/bench/sse_clients

$(SSE_CLIENTS_BIN): bench/events/sse_clients.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -Wextra -Werror -o $@ $<

bench-events: deps $(SSE_CLIENTS_BIN)
	@$(MAKE) --no-print-directory all
	$(PY) bench/events/fanout.py | tee $(BUILD)/bench/events.txt

DURATION ?= 1800
bench-chaos: deps
	@$(MAKE) --no-print-directory all
	$(PY) bench/chaos $(DURATION) --record

TEST_SUITES += test-chaos
test-chaos: $(NGX_MODULE_SO) $(WORKERD_BIN)
	$(PY) bench/chaos 120

# end-to-end separation benchmark (workerd vs the demucs CLI), owned by workerd/
include bench/e2e.mk

# CPU engine vs PyTorch per segment, owned by models/
include bench/cpu.mk
