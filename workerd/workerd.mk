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
#   make test-pool-tsan   the same test with pool.c and sep_ring.c under ThreadSanitizer
#   make test-jobexec     the job runner (workerd/jobexec.c) with in-process and scripted
#                         forwarders: stems vs sep_apply_run, bad inputs, cancel, codes,
#                         limits, progress throttling, two concurrent jobs (cmocka,
#                         ASan + UBSan on workerd's sources and the apply layer), and on
#                         the real pool: two jobs mixing batches, cuda -> CPU fallback
#   make test-workerd-config  `workerd run` settings (workerd/config.c): INI file (inih),
#                         flags, errors, reload, --help, conf/workerd.conf (cmocka, ASan)
#   make asan             build/asan/workerd: workerd, the apply layer, the engine and the
#                         shared code all built with ASan + UBSan (-O1, no recovery)
#   make test-cli-asan    the test-cli suite run on build/asan/workerd (RSS and
#                         address-space checks skipped; LeakSanitizer on)
#
# The engine itself (build/libsepmodels.a) comes from models/models.mk; its link flags
# are taken from SEPMODELS_LDLIBS when models.mk sets it.

SEPMODELS_LIB    ?= $(BUILD)/libsepmodels.a
SEPMODELS_LDLIBS ?= -lopenblas -lfftw3f -lm -lpthread
SEPAPPLY_LIB     := $(BUILD)/libsepapply.a
WORKERD_BIN      := $(BUILD)/workerd
WORKERD_OBJDIR   := $(BUILD)/obj-workerd
WORKERD_SRCS     := workerd/main.c workerd/cmd_separate.c workerd/separate.c workerd/audio.c \
                    workerd/jobexec.c workerd/forward.c workerd/config.c \
                    workerd/device_worker.c workerd/pool.c \
                    workerd/cmd_run.c workerd/supervisor.c workerd/redis_client.c \
                    workerd/cmd_inspect.c
WORKERD_OBJS     := $(patsubst workerd/%.c,$(WORKERD_OBJDIR)/%.o,$(WORKERD_SRCS))
WORKERD_LDLIBS   := -lsndfile -lsoxr -linih -lhiredis -ljansson -lm -lpthread
TEST_APPLY_BIN   := $(BUILD)/tests/test_apply
TEST_JOBEXEC_BIN := $(BUILD)/tests/test_jobexec
TEST_CONFIG_BIN  := $(BUILD)/tests/test_workerd_config
WORKERD_SAN      := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# the job runner and what it is built on, compiled again with the sanitizers
JOBEXEC_SAN_SRCS := workerd/jobexec.c workerd/forward.c workerd/audio.c workerd/separate.c \
                    models/apply.c
AUDIOTOOL_BIN    := $(BUILD)/tests/audiotool

# Only link against the engine when models.mk builds it (it adds its library to
# ALL_TARGETS); until then the suites say why they cannot run.
WORKERD_HAVE_ENGINE := $(if $(filter $(SEPMODELS_LIB),$(ALL_TARGETS)),1,)

ALL_TARGETS += $(SEPAPPLY_LIB) $(AUDIOTOOL_BIN) $(TEST_CONFIG_BIN)
ifeq ($(WORKERD_HAVE_ENGINE),1)
ALL_TARGETS += $(WORKERD_BIN) $(TEST_APPLY_BIN) $(TEST_JOBEXEC_BIN) $(TEST_JOBEXEC_POOL_BIN)
endif
TEST_SUITES += test-apply test-cli test-cli-asan test-pool test-pool-tsan test-jobexec \
               test-workerd-config

.PHONY: test-apply test-cli test-cli-asan test-pool test-pool-tsan test-jobexec \
        test-workerd-config asan

# ASan + UBSan build of the whole binary (objects under build/asan/obj/<source path>);
# the shared code goes into an archive, as in the normal link (only what is used).
WORKERD_ASAN_BIN  := $(BUILD)/asan/workerd
WORKERD_ASAN_SRCS := $(WORKERD_SRCS) models/apply.c $(MODELS_SRCS)
WORKERD_ASAN_OBJS := $(patsubst %.c,$(BUILD)/asan/obj/%.o,$(WORKERD_ASAN_SRCS))
SHARED_ASAN_OBJS  := $(patsubst %.c,$(BUILD)/asan/obj/%.o,$(SHARED_SRCS) $(SHARED_GEN))
SHARED_ASAN_LIB   := $(BUILD)/asan/libsepshared.a

$(SHARED_ASAN_LIB): $(SHARED_ASAN_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/asan/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -O1 -fopenmp $(BLAS_CFLAGS) $(WORKERD_SAN) -MMD -MP -c $< -o $@

$(WORKERD_ASAN_BIN): $(WORKERD_ASAN_OBJS) $(SHARED_ASAN_LIB)
	$(CC) $(CFLAGS_COMMON) $(WORKERD_SAN) -o $@ $(WORKERD_ASAN_OBJS) $(SHARED_ASAN_LIB) \
	    $(SEPMODELS_LDLIBS) $(WORKERD_LDLIBS)

asan: $(WORKERD_ASAN_BIN)

-include $(WORKERD_ASAN_OBJS:.o=.d) $(SHARED_ASAN_OBJS:.o=.d)

$(WORKERD_OBJDIR)/%.o: workerd/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -MMD -MP -c $< -o $@

$(WORKERD_OBJDIR)/apply.o: models/apply.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -MMD -MP -c $< -o $@

$(SEPAPPLY_LIB): $(WORKERD_OBJDIR)/apply.o
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

# a build with the CUDA backend (cuda/cuda.mk): the device workers pin their batch
# arena (device_worker.c) and `device auto` probes for a GPU (cmd_run.c)
$(WORKERD_OBJDIR)/device_worker.o $(WORKERD_OBJDIR)/cmd_run.o: CFLAGS_COMMON += $(SEPCUDA_CFLAGS)

$(WORKERD_BIN): $(WORKERD_OBJS) $(SEPAPPLY_LIB) $(SEPMODELS_LIB) $(SHARED_LIB) $(SEPCUDA_LIB)
	$(CC) $(CFLAGS_COMMON) -o $@ $(WORKERD_OBJS) $(SEPAPPLY_LIB) $(SEPMODELS_LIB) $(SHARED_LIB) \
	    $(SEPCUDA_LDLIBS) $(SEPMODELS_LDLIBS) $(WORKERD_LDLIBS)

$(TEST_APPLY_BIN): tests/apply/test_apply.c $(SEPAPPLY_LIB) $(SEPMODELS_LIB) models/apply.h models/engine.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -o $@ $< $(SEPAPPLY_LIB) $(SEPMODELS_LIB) $(SEPMODELS_LDLIBS) \
	    -ljansson -lsndfile -lm

$(TEST_JOBEXEC_BIN): tests/workerd/test_jobexec.c $(JOBEXEC_SAN_SRCS) $(SEPMODELS_LIB) \
                     workerd/jobexec.h workerd/forward.h workerd/audio.h workerd/separate.h \
                     models/apply.h models/engine.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(WORKERD_SAN) -o $@ $< $(JOBEXEC_SAN_SRCS) $(SEPMODELS_LIB) \
	    $(SEPMODELS_LDLIBS) -lsndfile -lsoxr -lcmocka -lm -lpthread

# the job runner on the real pool (workers: the real build/workerd)
TEST_JOBEXEC_POOL_BIN := $(BUILD)/tests/test_jobexec_pool
$(TEST_JOBEXEC_POOL_BIN): tests/workerd/test_jobexec_pool.c $(JOBEXEC_SAN_SRCS) workerd/pool.c \
                          workerd/pool.h shared/sep_ring.c shared/sep_ring.h $(SEPMODELS_LIB) \
                          workerd/jobexec.h workerd/forward.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(WORKERD_SAN) -o $@ $< $(JOBEXEC_SAN_SRCS) workerd/pool.c \
	    shared/sep_ring.c $(SEPMODELS_LIB) $(SEPMODELS_LDLIBS) -lsndfile -lsoxr -lcmocka -lm \
	    -lpthread

$(TEST_CONFIG_BIN): tests/workerd/test_config.c workerd/config.c workerd/config.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(WORKERD_SAN) -o $@ $< workerd/config.c -linih -lcmocka

test-workerd-config: $(TEST_CONFIG_BIN)
	@tests/unit/run-cmocka workerd-config $(TEST_CONFIG_BIN)

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

TEST_POOL_TSAN_BIN := $(BUILD)/tests/test_pool_tsan
$(TEST_POOL_TSAN_BIN): tests/pool/test_pool.c workerd/pool.c workerd/pool.h shared/sep_ring.c \
                       shared/sep_ring.h $(SEPMODELS_LIB)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -O1 -fsanitize=thread -o $@ tests/pool/test_pool.c workerd/pool.c \
	    shared/sep_ring.c $(SEPMODELS_LIB) $(SEPMODELS_LDLIBS) -lcmocka -lm -lpthread

-include $(WORKERD_OBJS:.o=.d) $(WORKERD_OBJDIR)/apply.d

ifeq ($(WORKERD_HAVE_ENGINE),1)
test-apply: $(TEST_APPLY_BIN)
	$(TEST_APPLY_BIN) tests/fixtures/apply

test-cli: $(WORKERD_BIN) $(AUDIOTOOL_BIN)
	$(PY) tests/cli/test_cli.py --workerd $(WORKERD_BIN) --audiotool $(AUDIOTOOL_BIN) \
	    --fixtures tests/fixtures/apply

test-cli-asan: $(WORKERD_ASAN_BIN) $(AUDIOTOOL_BIN)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	    $(PY) tests/cli/test_cli.py --workerd $(WORKERD_ASAN_BIN) --audiotool $(AUDIOTOOL_BIN) \
	    --fixtures tests/fixtures/apply --sanitized

test-pool: $(TEST_POOL_BIN) $(WORKERD_BIN)
	@tests/unit/run-cmocka pool $(TEST_POOL_BIN)

test-pool-tsan: $(TEST_POOL_TSAN_BIN) $(WORKERD_BIN)
	@TSAN_OPTIONS=halt_on_error=1 tests/unit/run-cmocka pool-tsan $(TEST_POOL_TSAN_BIN) | \
	    sed 's/(ASan+UBSan)/(ThreadSanitizer)/'; exit $${PIPESTATUS[0]}

test-jobexec: $(TEST_JOBEXEC_BIN) $(TEST_JOBEXEC_POOL_BIN) $(WORKERD_BIN)
	@tests/unit/run-cmocka jobexec $(TEST_JOBEXEC_BIN) $(TEST_JOBEXEC_POOL_BIN)
else
test-apply test-cli test-cli-asan test-pool test-pool-tsan test-jobexec:
	@echo "SKIP: the engine library $(SEPMODELS_LIB) is not built by models/models.mk"
endif
