# tests/: suites run by `make test` (each appends its target name to TEST_SUITES).
#
# test-integration  the HTTP API against a real redis-server + nginx with the module
#                   (tests/integration/test_http_api.py), on loopback, temporary prefix;
#                   CORS and preflight (tests/integration/test_cors.py);
#                   access control with conf/nginx-access.conf.in: API keys, auth_request
#                   to a local auth service, limit_req/limit_conn per key, refused
#                   uploads never read (tests/integration/test_access.py, about 3 s);
#                   what nginx -t and a starting worker say about the configuration
#                   (tests/integration/test_conf_checks.py);
#                   then Redis outages and a restart that loads a big RDB under traffic,
#                   with 2 and 4 workers (tests/integration/test_redis_outage.py, about
#                   1 minute; prints RESULT lines)
# test-events       GET /v1/jobs/{id}/events, Server-Sent Events (tests/integration/
#                   test_events.py): order to the terminal event, late subscriber,
#                   finished job, Last-Event-ID, 1,000 clients on one job, a client
#                   gone or not reading, 1,000 connect/disconnect cycles (worker RSS,
#                   Redis clients, channels), Redis stopped mid-stream, Redis with a
#                   password, heartbeat + CORS, nginx -s reload
# test-redis-faults the Redis connection under faults of the connection itself
#                   (tests/integration/test_redis_faults.py): a wedged connection behind a
#                   TCP relay is replaced, TCP keepalive, a slow Redis keeps its
#                   connection, an exiting worker reconnects, a silent peer is given up
#                   on, a stall is logged once, a lost submit reply cancels
#                   its job, a lost DELETE reply is
#                   cleaned up by the retry (about 22 s)
# test-upload-stream uploads read as they arrive (tests/integration/test_upload_stream.py):
#                   GETs beside a 300 MB multipart upload on one worker, 800 MB uploads
#                   not timed out by a stale clock, tiny chunks; a chunked 413 and a
#                   client gone or stalled mid-upload leave nothing in the spool;
#                   client_body_in_file_only makes no temp file; an upload filling a
#                   tmpfs spool frees it at the failed write (root only) (about 15 s)
# test-abuse        the HTTP surface abused (tests/integration/test_abuse.py, one nginx
#                   worker, 1 s header/body timeouts): slow heads and bodies, broken
#                   chunked bodies, Content-Length lies, pipelining, HEAD on every GET
#                   route, `..`/%2F/%00/long/non-UTF-8 ids, stem names, options and
#                   headers, a full tmpfs spool under concurrent uploads (root only),
#                   1,000 concurrent uploads twice (worker RSS); after each group no
#                   [alert] and no worker crash; nginx's own head-stage errors: JSON
#                   where the URI is the API's, nginx's 400 where it is unparsable
#                   (about 30 s)
# test-late-replies Redis replies that arrive after the request was answered 503
#                   (tests/integration/test_late_replies.py, Redis stalled with CLIENT
#                   PAUSE or SIGSTOP): a late DELETE/purge still removes the job's files,
#                   also from a worker exiting after a reload; a late submit never leaves
#                   a job (its deadline) and frees its Idempotency-Key; nginx -t refuses
#                   TTL/size/timeout directives out of range; the sniff of a small raw
#                   body stays in the body (about 40 s)
# test-stats        GET /v1/stats, GET /metrics (parsed by prometheus_client) and
#                   GET /v1/models (tests/integration/test_stats.py): jobs driven through
#                   the Lua scripts move the counters, gauges, queues and histogram
#                   buckets exactly; workers from heartbeats; one Redis call a request;
#                   405/404/503; then every route's answers, success and error, validated
#                   against the OpenAPI document shared/openapi.json with jsonschema
#                   (tests/integration/test_openapi.py) (about 10 s)
# test-schemathesis Schemathesis (PyPI, in build/stvenv from `make deps`; SCHEMATHESIS=
#                   names another st) generates requests from shared/openapi.json against
#                   a live stack: no 5xx, every answer as the document says (status,
#                   content type, headers, schema), schema-violating requests refused,
#                   405 with Allow for undocumented methods (tests/integration/
#                   run_schemathesis.py; fails when st is missing; about 40 s)
# test-integration-asan  the HTTP API, CORS, conf checks, stats, OpenAPI, events, late
#                   replies and Redis faults suites and the quick test_workerd cases once
#                   on the ASan + UBSan builds of the module (in Debian's nginx, libasan
#                   preloaded) and of workerd (LeakSanitizer on); fails on any sanitizer
#                   report or line, or a crashed nginx worker, after proving with
#                   tests/asan/probe.c and a SIGSEGV'd worker that it catches them
#                   (tests/asan/run_sanitized.py, about 2 minutes)
# test-workerd      `workerd run` end to end (tests/workerd/test_workerd.py): upload ->
#                   stems, bad inputs, crashes of device workers / supervisors / Redis,
#                   fencing, cancel, drain, time limits, priority, 200 jobs exactly once,
#                   /v1/stats, /metrics and /v1/models with a real worker
# test-browser      headless chromium (selenium) against a live stack + workerd: what a
#                   page on another origin can read with CORS on and off, the stems
#                   player (web/) uploading, following and decoding every stem
#                   (tests/browser/test_browser.py; screenshots in build/browser/)
# test-docs         the READMEs' curl examples run as written against a live stack + workerd;
#                   the error-code table against the module's sources and against what
#                   nginx answers (bad header, body timeout, long URI, limit_req); the
#                   spool layout, the record's fields, the systemd unit's install steps
#                   and nginx + workerd as two users of one group, each as documented
#                   (tests/docs/)
# test-local-stack  `make run` / `make stop` (conf/run-local, conf/stop-local) on a
#                   temporary run directory (bad ports and paths refused, a deleted run
#                   dir still stopped, the banner's examples, SEP_MODELS), and
#                   conf/nginx.conf being up to date
# test-gpu          the engine's CUDA backend on this machine's GPU: ops, fixtures, the
#                   full-size network against the CPU engine, workerd separate --device
#                   cuda (tests/gpu/, gpu.mk); SKIP without a usable CUDA device
# test-stress       SUITE=<suite> N=<runs>: one suite N times in a row; prints each run's
#                   outcome and how many failed (logs of failed runs kept)
# run / stop        start / stop the service under ./run/ (declared .PHONY at the root)

TEST_SUITES += test-local-stack test-integration test-events test-redis-faults \
               test-late-replies test-upload-stream test-abuse test-workerd test-cli-regress \
               test-browser test-docs test-stats test-schemathesis test-integration-asan

.PHONY: test-stats test-schemathesis test-integration test-events test-redis-faults test-late-replies test-upload-stream test-abuse \
        test-local-stack test-stress test-workerd test-cli-regress test-browser test-docs \
        test-integration-asan

# Both need the nginx module ($(NGX_MODULE_SO), built by ngx_module/module.mk).
test-integration: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_http_api.py
	$(PY) tests/integration/test_cors.py
	$(PY) tests/integration/test_access.py
	$(PY) tests/integration/test_conf_checks.py
	$(PY) tests/integration/test_redis_outage.py

test-events: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_events.py

test-stats: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_stats.py
	$(PY) tests/integration/test_openapi.py

# Schemathesis from PyPI in the venv `make deps` makes (STVENV, in the root Makefile)
SCHEMATHESIS ?= $(STVENV)/bin/st
test-schemathesis: $(NGX_MODULE_SO)
	SCHEMATHESIS=$(SCHEMATHESIS) $(PY) tests/integration/run_schemathesis.py

test-docs: $(NGX_MODULE_SO) $(WORKERD_BIN)
	$(PY) tests/docs/test_docs.py

test-browser: $(NGX_MODULE_SO) $(WORKERD_BIN)
	$(PY) tests/browser/test_browser.py

# The module's Redis connection under faults of the connection (relay, SIGSTOP, reload)
test-redis-faults: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_redis_faults.py

# Uploads read as they arrive: one worker beside large uploads, bodies that end badly
test-upload-stream: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_upload_stream.py

# The HTTP surface abused: slow clients, broken framing, path tricks, 1,000 uploads
test-abuse: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_abuse.py

# Late Redis replies on the request path (CLIENT PAUSE / SIGSTOP stalls, reloads)
test-late-replies: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_late_replies.py

# The integration suites on the sanitized module and workerd (tests/asan/)
SAN_PROBE_BIN := $(BUILD)/asan/probe
$(SAN_PROBE_BIN): tests/asan/probe.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -O0 $(NGX_SAN) -o $@ $<

test-integration-asan: $(NGX_ASAN_MODULE_SO) $(WORKERD_ASAN_BIN) $(SAN_PROBE_BIN)
	$(PY) tests/asan/run_sanitized.py --module $(NGX_ASAN_MODULE_SO) \
	    --workerd $(WORKERD_ASAN_BIN) --probe $(SAN_PROBE_BIN) --preload $(NGX_ASAN_RUNTIME)

# workerd run end to end: redis + nginx + supervisors with CPU device workers
test-workerd: $(NGX_MODULE_SO) $(WORKERD_BIN)
	$(PY) tests/workerd/test_workerd.py

# workerd separate and the weights loader: one script per defect a review reproduced
# (tests/cli/regress/NN_*.py, each prints PASS or FAIL)
test-cli-regress: $(WORKERD_BIN)
	@p=0; f=0; for t in tests/cli/regress/[0-9][0-9]_*.py; do \
	  if out=$$(timeout 120 $(PY) $$t 2>&1) && printf '%s\n' "$$out" | grep -q '^PASS'; then \
	    p=$$((p + 1)); echo "ok   $$(basename $$t)"; \
	  else f=$$((f + 1)); echo "FAIL $$(basename $$t)"; printf '%s\n' "$$out" | tail -n 15; fi; \
	done; echo "CASES: $$p passed, $$f failed, 0 skipped"; [ $$f -eq 0 ]

test-local-stack: $(NGX_MODULE_SO)
	$(PY) tests/integration/test_local_stack.py

# `make run` needs only the runtime packages and builds only what it starts.
run: deps-run
	@$(MAKE) --no-print-directory $(NGX_MODULE_SO) $(WORKERD_BIN)
	@SEP_PORT=$(SEP_PORT) $(PY) conf/run-local

stop:
	@$(PY) conf/stop-local

SUITE ?= test-integration
N     ?= 20
test-stress: all
	@tests/stress-suite $(SUITE) $(N)

# the CUDA backend on a GPU, what a device run carries, and the GPU benchmark
# (tests/gpu/README.md, bench/README.md)
include tests/gpu/gpu.mk
include bench/gpu.mk
