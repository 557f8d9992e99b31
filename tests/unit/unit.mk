# tests/unit/: cmocka unit tests of shared/, built with ASan + UBSan from shared/'s
# sources (included from shared/shared.mk).
#
#   test-unit-shared     pure unit tests (ids, keys, options, sniffing, multipart,
#                        job record <-> JSON)
#   test-shared-scripts  the Lua scripts against a real redis-server listening on a
#                        Unix socket in its own temporary directory

UNIT_TESTS     := test_ids_keys test_options test_sniff test_multipart test_job
UNIT_SAN       := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
UNIT_SAN_OBJS  := $(patsubst shared/%.c,$(BUILD)/shared-san/%.o,$(SHARED_SRCS)) \
                  $(BUILD)/shared-san/sep_scripts.o
UNIT_BINS      := $(UNIT_TESTS:%=$(BUILD)/tests/unit/%)
SCRIPTS_BIN    := $(BUILD)/tests/unit/test_scripts

TEST_SUITES += test-unit-shared test-shared-scripts
.PHONY: test-unit-shared test-shared-scripts

.SECONDARY: $(UNIT_SAN_OBJS)

$(BUILD)/shared-san/%.o: shared/%.c $(SHARED_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(UNIT_SAN) -c $< -o $@

$(BUILD)/shared-san/sep_scripts.o: $(SHARED_GEN) shared/sep_scripts.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(UNIT_SAN) -c $< -o $@

$(BUILD)/tests/unit/%: tests/unit/%.c $(UNIT_SAN_OBJS) $(SHARED_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(UNIT_SAN) $< $(UNIT_SAN_OBJS) -o $@ -lcmocka -ljansson -lhiredis

test-unit-shared: $(UNIT_BINS)
	@tests/unit/run-cmocka unit-shared $(UNIT_BINS)

test-shared-scripts: $(SCRIPTS_BIN)
	@if ! command -v redis-server >/dev/null; then \
	  echo "SKIP: redis-server is not installed (make deps)"; exit 0; fi; \
	tests/unit/run-cmocka shared-scripts $(SCRIPTS_BIN)

# shared/sep_ring (the supervisor <-> device worker shm rings), on its own:
#   test-ring        cmocka, ASan + UBSan: layout, full/empty, wraparound, wakeups,
#                    corrupt indices, message validation, two threads, two processes
#   test-ring-tsan   the same file under ThreadSanitizer (two threads; no fork)
RING_TEST_BIN  := $(BUILD)/tests/unit/test_ring
RING_TSAN_BIN  := $(BUILD)/tests/unit/test_ring_tsan
TEST_SUITES    += test-ring test-ring-tsan
.PHONY: test-ring test-ring-tsan

$(RING_TEST_BIN): tests/unit/test_ring.c shared/sep_ring.c shared/sep_ring.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) $(UNIT_SAN) tests/unit/test_ring.c shared/sep_ring.c -o $@ -lcmocka -lpthread

$(RING_TSAN_BIN): tests/unit/test_ring.c shared/sep_ring.c shared/sep_ring.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -O1 -fsanitize=thread -DSEP_RING_TSAN tests/unit/test_ring.c \
	    shared/sep_ring.c -o $@ -lcmocka -lpthread

test-ring: $(RING_TEST_BIN)
	@tests/unit/run-cmocka ring $(RING_TEST_BIN)

test-ring-tsan: $(RING_TSAN_BIN)
	@TSAN_OPTIONS=halt_on_error=1 tests/unit/run-cmocka ring-tsan $(RING_TSAN_BIN) | \
	    sed 's/(ASan+UBSan)/(ThreadSanitizer)/'; exit $${PIPESTATUS[0]}
