# workerd/: the daemon and its CLI (`workerd separate` today), plus the apply layer
# library and the two test suites that exercise them.
#
#   build/libsepapply.a   models/apply.c: demucs' apply_model + normalisation on an engine
#   build/workerd         `workerd <command>`: separate (offline CLI), device-worker
#                         (internal: the pool's worker process, workerd/device_worker.c)
#   make test-apply       apply layer on the real engine vs reference demucs outputs
#                         (tests/apply/, fixtures in tests/fixtures/apply/)
#   make test-cli         `workerd separate` end to end: formats, rates, layout, errors,
#                         parity with the reference on a 44.1 kHz input (tests/cli/)
#   make test-pool        the device-worker pool (workerd/pool.c) with real worker
#                         processes on the tiny model: parity with the in-process engine,
#                         cross-caller batches, kill -9, deadlines, recycling, stop
#
# The engine itself (build/libsepmodels.a) comes from models/models.mk; its link flags
# are taken from SEPMODELS_LDLIBS when models.mk sets it.

SEPMODELS_LIB    ?= $(BUILD)/libsepmodels.a
SEPMODELS_LDLIBS ?= -lopenblas -lfftw3f -lm -lpthread
SEPAPPLY_LIB     := $(BUILD)/libsepapply.a
WORKERD_BIN      := $(BUILD)/workerd
WORKERD_OBJDIR   := $(BUILD)/obj-workerd
WORKERD_SRCS     := workerd/main.c workerd/cmd_separate.c workerd/separate.c workerd/audio.c \
                    workerd/jobexec.c workerd/forward.c workerd/device_worker.c workerd/pool.c
WORKERD_OBJS     := $(patsubst workerd/%.c,$(WORKERD_OBJDIR)/%.o,$(WORKERD_SRCS))
WORKERD_LDLIBS   := -lsndfile -lsoxr -lm -lpthread
TEST_APPLY_BIN   := $(BUILD)/tests/test_apply
AUDIOTOOL_BIN    := $(BUILD)/tests/audiotool

# Only link against the engine when models.mk builds it (it adds its library to
# ALL_TARGETS); until then the suites say why they cannot run.
WORKERD_HAVE_ENGINE := $(if $(filter $(SEPMODELS_LIB),$(ALL_TARGETS)),1,)

ALL_TARGETS += $(SEPAPPLY_LIB) $(AUDIOTOOL_BIN)
ifeq ($(WORKERD_HAVE_ENGINE),1)
ALL_TARGETS += $(WORKERD_BIN) $(TEST_APPLY_BIN)
endif
TEST_SUITES += test-apply test-cli test-pool

.PHONY: test-apply test-cli test-pool

$(WORKERD_OBJDIR)/%.o: workerd/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -MMD -MP -c $< -o $@

$(WORKERD_OBJDIR)/apply.o: models/apply.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -MMD -MP -c $< -o $@

$(SEPAPPLY_LIB): $(WORKERD_OBJDIR)/apply.o
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(WORKERD_BIN): $(WORKERD_OBJS) $(SEPAPPLY_LIB) $(SEPMODELS_LIB) $(SHARED_LIB)
	$(CC) $(CFLAGS_COMMON) -o $@ $(WORKERD_OBJS) $(SEPAPPLY_LIB) $(SEPMODELS_LIB) $(SHARED_LIB) \
	    $(SEPMODELS_LDLIBS) $(WORKERD_LDLIBS)

$(TEST_APPLY_BIN): tests/apply/test_apply.c $(SEPAPPLY_LIB) $(SEPMODELS_LIB) models/apply.h models/engine.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -o $@ $< $(SEPAPPLY_LIB) $(SEPMODELS_LIB) $(SEPMODELS_LDLIBS) \
	    -ljansson -lsndfile -lm

$(AUDIOTOOL_BIN): tests/cli/audiotool.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -o $@ $< -lsndfile -lm

# The pool test: pool.c + sep_ring.c built with ASan + UBSan into the test; the
# workers it starts are the real build/workerd.
TEST_POOL_BIN    := $(BUILD)/tests/test_pool
$(TEST_POOL_BIN): tests/pool/test_pool.c workerd/pool.c workerd/pool.h shared/sep_ring.c \
                  shared/sep_ring.h $(SEPMODELS_LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(UNIT_SAN) -o $@ tests/pool/test_pool.c workerd/pool.c \
	    shared/sep_ring.c $(SEPMODELS_LIB) $(SEPMODELS_LDLIBS) -lcmocka -lm -lpthread

-include $(WORKERD_OBJS:.o=.d) $(WORKERD_OBJDIR)/apply.d

ifeq ($(WORKERD_HAVE_ENGINE),1)
test-apply: $(TEST_APPLY_BIN)
	$(TEST_APPLY_BIN) tests/fixtures/apply

test-cli: $(WORKERD_BIN) $(AUDIOTOOL_BIN)
	$(PY) tests/cli/test_cli.py --workerd $(WORKERD_BIN) --audiotool $(AUDIOTOOL_BIN) \
	    --fixtures tests/fixtures/apply

test-pool: $(TEST_POOL_BIN) $(WORKERD_BIN)
	@tests/unit/run-cmocka pool $(TEST_POOL_BIN)
else
test-apply test-cli test-pool:
	@echo "SKIP: the engine library $(SEPMODELS_LIB) is not built by models/models.mk"
endif
