# tests/fuzz/: libFuzzer over the weights load path (tests/fuzz/fuzz_weights.c).
#
#   build/fuzz/fuzz_weights   the target: models/safetensors.c, model.c, htdemucs.c and
#                             arena.c built with clang-14, libFuzzer, ASan and UBSan
#   make test-fuzz            runs it for FUZZ_SECONDS (default 15; in `make test`) on a
#                             copy of the seed corpus tests/fuzz/weights/ (converted
#                             tiny models), with tests/fuzz/weights.dict; a crash fails
#                             the suite and leaves its input under build/fuzz/
#   make test-fuzz FUZZ_SECONDS=600   the long run
FUZZ_CC      ?= clang-14
FUZZ_BIN     := $(BUILD)/fuzz/fuzz_weights
FUZZ_SRCS    := tests/fuzz/fuzz_weights.c models/safetensors.c models/model.c models/htdemucs.c \
                models/arena.c
FUZZ_SECONDS ?= 15
FUZZ_FLAGS   := -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -Wall -Wextra -Wno-unused-parameter \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer

TEST_SUITES += test-fuzz
.PHONY: test-fuzz

$(FUZZ_BIN): $(FUZZ_SRCS) $(MODELS_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(FUZZ_SRCS) -ljansson -lm -o $@

test-fuzz: $(FUZZ_BIN)
	@tests/fuzz/run-fuzz $(FUZZ_BIN) $(FUZZ_SECONDS) tests/fuzz/weights $(BUILD)/fuzz
