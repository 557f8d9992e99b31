# tests/scripts/: the job-state scripts (shared/lua/) in Python against a real
# redis-server on a Unix socket in its own temporary directory (included from
# shared/shared.mk).
#
#   test-scripts-regress  one case per defect a review of the scripts reproduced
#   test-scripts-model    Hypothesis state machine: workers, crashes, pauses, late and
#                         replayed calls; invariants after every step
#                         (SEP_MODEL_STEPS steps, default 5000)
#   test-scripts-cluster  both on a one-node Redis Cluster (--cluster-enabled yes)
#   test-scripts-stress   the model with 50,000 steps (not part of `make test`; also
#                         run by `make test-stress`)

SCRIPTS_TEST_DEPS := shared/lua/lib.lua $(SHARED_LUA_SCRIPTS:%=shared/lua/%.lua) \
                     $(wildcard tests/scripts/*.py)
SCRIPTS_TEST_SKIP := if ! command -v redis-server >/dev/null; then \
                       echo "SKIP: redis-server is not installed (make deps)"; exit 0; fi; \
                     if ! $(PY) -c 'import hypothesis, redis' 2>/dev/null; then \
                       echo "SKIP: python3-hypothesis or python3-redis missing (make deps)"; exit 0; fi;

TEST_SUITES += test-scripts-regress test-scripts-model test-scripts-cluster
.PHONY: test-scripts-regress test-scripts-model test-scripts-cluster test-scripts-stress

test-scripts-regress: $(SCRIPTS_TEST_DEPS)
	@$(SCRIPTS_TEST_SKIP) $(PY) tests/scripts/test_regressions.py

test-scripts-model: $(SCRIPTS_TEST_DEPS)
	@$(SCRIPTS_TEST_SKIP) $(PY) tests/scripts/test_model.py

test-scripts-cluster: $(SCRIPTS_TEST_DEPS)
	@$(SCRIPTS_TEST_SKIP) $(PY) tests/scripts/test_cluster.py

test-scripts-stress: $(SCRIPTS_TEST_DEPS)
	@$(SCRIPTS_TEST_SKIP) SEP_MODEL_STEPS=$${SEP_MODEL_STEPS:-50000} $(PY) tests/scripts/test_model.py

# `make test-stress` (the issue's name; other fragments may add their own stress runs)
.PHONY: test-stress
test-stress: test-scripts-stress
