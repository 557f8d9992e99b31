# tests/: suites run by `make test` (each appends its target name to TEST_SUITES).
#
# test-integration  the HTTP API against a real redis-server + nginx with the module
#                   (tests/integration/test_http_api.py), on loopback, temporary prefix
# test-local-stack  `make run` / `make stop` (conf/run-local, conf/stop-local) on a
#                   temporary run directory, and conf/nginx.conf being up to date
# run / stop        start / stop the service under ./run/ (declared .PHONY at the root)

SEP_MODULE_SO := $(BUILD)/nginx/objs/ngx_http_sep_module.so

TEST_SUITES += test-local-stack test-integration

.PHONY: test-integration test-local-stack

# The module is built by the root `all` (ngx_module/module.mk); these suites rebuild
# it when asked for on their own.
test-integration:
	@[ -f $(SEP_MODULE_SO) ] || $(MAKE) --no-print-directory all
	$(PY) tests/integration/test_http_api.py

test-local-stack:
	@[ -f $(SEP_MODULE_SO) ] || $(MAKE) --no-print-directory all
	$(PY) tests/integration/test_local_stack.py

run: deps
	@$(MAKE) --no-print-directory all
	@SEP_PORT=$(SEP_PORT) $(PY) conf/run-local

stop:
	@$(PY) conf/stop-local
