# tests/fuzz/: libFuzzer targets (clang-14, ASan + UBSan), one per parser of untrusted
# bytes; each has a committed seed corpus tests/fuzz/<name>/ (and <name>.dict if any):
#
#   fuzz_weights    the weights load path: models/safetensors.c, model.c, htdemucs.c,
#                   arena.c (a file given with -n FILE, or in the models directory)
#   fuzz_sniff      magic-byte sniffing of uploads (shared/sep_sniff.c)
#   fuzz_options    query/form option decoding (shared/sep_options.c)
#   fuzz_job        Redis hash -> job -> public JSON and back, event messages
#                   (shared/sep_job.c, sep_json.c)
#   fuzz_multipart  the streaming multipart/form-data parser, input fed in random
#                   splits (shared/sep_multipart.c)
#   fuzz_ring       shared-memory ring messages and region headers (shared/sep_ring.c)
#   fuzz_audio      workerd's decoder over libsndfile + libsoxr (workerd/audio.c)
#
#   make test-fuzz             replays every seed corpus, then fuzzes each target for
#                              FUZZ_SECONDS (default 7; in `make test`, about a minute
#                              in all); a crash fails the suite and leaves its input
#                              under build/fuzz/<name>/artifacts/
#   make fuzz FUZZ_SECONDS=600 the long run of every target (FUZZ_TARGETS=... to pick)
FUZZ_CC      ?= clang-14
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_SECONDS ?= 7
FUZZ_FLAGS   := -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -Wall -Wextra -Wno-unused-parameter \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer
FUZZ_TARGETS ?= fuzz_weights fuzz_sniff fuzz_options fuzz_job fuzz_multipart fuzz_ring \
                fuzz_audio
FUZZ_BINS    := $(addprefix $(FUZZ_DIR)/,$(FUZZ_TARGETS))
FUZZ_WEIGHTS_BIN := $(FUZZ_DIR)/fuzz_weights

TEST_SUITES += test-fuzz
.PHONY: test-fuzz fuzz

$(FUZZ_DIR)/fuzz_weights: tests/fuzz/fuzz_weights.c models/safetensors.c models/model.c \
                          models/htdemucs.c models/arena.c $(MODELS_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(filter %.c,$^) -ljansson -lm -o $@

$(FUZZ_DIR)/fuzz_sniff: tests/fuzz/fuzz_sniff.c shared/sep_sniff.c shared/sep_sniff.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(filter %.c,$^) -o $@

$(FUZZ_DIR)/fuzz_options: tests/fuzz/fuzz_options.c shared/sep_options.c shared/sep_keys.c \
                          shared/sep_options.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(filter %.c,$^) -lm -o $@

$(FUZZ_DIR)/fuzz_job: tests/fuzz/fuzz_job.c shared/sep_job.c shared/sep_json.c shared/sep_id.c \
                      shared/sep_options.c shared/sep_keys.c shared/sep_job.h shared/sep_json.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(filter %.c,$^) -ljansson -lm -o $@

$(FUZZ_DIR)/fuzz_multipart: tests/fuzz/fuzz_multipart.c shared/sep_multipart.c \
                            shared/sep_multipart.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(filter %.c,$^) -o $@

$(FUZZ_DIR)/fuzz_ring: tests/fuzz/fuzz_ring.c shared/sep_ring.c shared/sep_ring.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(filter %.c,$^) -o $@

$(FUZZ_DIR)/fuzz_audio: tests/fuzz/fuzz_audio.c workerd/audio.c workerd/audio.h
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_FLAGS) $(filter %.c,$^) -lsndfile -lsoxr -lm -o $@

test-fuzz: $(FUZZ_BINS)
	@tests/fuzz/run-fuzz $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_TARGETS)

fuzz: $(FUZZ_BINS)
	@tests/fuzz/run-fuzz $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_TARGETS)
