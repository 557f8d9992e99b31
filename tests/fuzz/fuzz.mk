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
# and atheris targets (Python, build/fuzzvenv from `make deps`; build/fuzz/<target> is
# a wrapper around tests/fuzz/atheris-target) for the checkpoint converter, whose only
# allowed exception is its CheckpointError family:
#
#   fuzz_checkpoint models/convert on whole checkpoint files, zip and legacy, with a
#                   mutator that mutates the members of a zip / the pickles of a
#                   legacy file (tests/fuzz/fuzz_checkpoint.py)
#   fuzz_pickle     the restricted unpickler on bare data.pkl streams
#                   (tests/fuzz/fuzz_pickle.py, models/convert_lib/torch_checkpoint.py)
#
# Seeds of both: tests/fuzz/make-checkpoint-seeds.py. tests/fuzz/<name>.options holds a
# target's own libFuzzer flags (per-input -timeout, -rss_limit_mb, -max_len).
#
#   make test-fuzz             replays every seed corpus of the C targets, then fuzzes
#                              each for FUZZ_SECONDS (default 7; in `make test`, about a
#                              minute in all); a crash fails the suite and leaves its
#                              input under build/fuzz/<name>/artifacts/
#   make test-fuzz-convert     the same for the atheris targets, FUZZ_PY_SECONDS each
#                              (default 7; about 25 s in all); fails, not skips, when
#                              atheris is missing
#   make fuzz FUZZ_SECONDS=600 the long run of every target (FUZZ_TARGETS=... to pick)
FUZZ_CC      ?= clang-14
FUZZ_DIR     := $(BUILD)/fuzz
FUZZ_SECONDS ?= 7
FUZZ_FLAGS   := -std=gnu11 -g -O1 -D_GNU_SOURCE -I. -Wall -Wextra -Wno-unused-parameter \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer
FUZZ_C_TARGETS  := fuzz_weights fuzz_sniff fuzz_options fuzz_job fuzz_multipart fuzz_ring \
                   fuzz_audio
FUZZ_PY_TARGETS := fuzz_checkpoint fuzz_pickle
FUZZ_PY_SECONDS ?= 7
FUZZ_TARGETS ?= $(FUZZ_C_TARGETS) $(FUZZ_PY_TARGETS)
FUZZ_BINS    := $(addprefix $(FUZZ_DIR)/,$(FUZZ_TARGETS))
FUZZ_C_RUN   := $(filter $(FUZZ_C_TARGETS),$(FUZZ_TARGETS))
FUZZ_WEIGHTS_BIN := $(FUZZ_DIR)/fuzz_weights

# The atheris venv: a pinned wheel from PyPI (manylinux, no compiler needed) over
# Debian's python3 (numpy from apt); the stamp makes a second `make deps` do nothing.
FUZZVENV        ?= $(BUILD)/fuzzvenv
ATHERIS_VERSION := 3.0.0
FUZZVENV_STAMP  := $(FUZZVENV)/.atheris-$(ATHERIS_VERSION)

TEST_SUITES += test-fuzz test-fuzz-convert
.PHONY: test-fuzz test-fuzz-convert fuzz deps-fuzzvenv

deps: deps-fuzzvenv
deps-fuzzvenv: deps-run
	$(call apt_install_missing,python3-venv)
	@# An install cut short is removed: no half-made venv passes for atheris.
	@[ -f $(FUZZVENV_STAMP) ] || { \
	  echo "deps: installing atheris==$(ATHERIS_VERSION) into $(FUZZVENV)"; \
	  rm -rf $(FUZZVENV) && \
	  $(PY) -m venv --system-site-packages $(FUZZVENV) && \
	  $(FUZZVENV)/bin/pip install -q --disable-pip-version-check atheris==$(ATHERIS_VERSION) && \
	  $(FUZZVENV)/bin/python -c 'import atheris' && touch $(FUZZVENV_STAMP); } || \
	  { rm -rf $(FUZZVENV); exit 1; }

$(addprefix $(FUZZ_DIR)/,$(FUZZ_PY_TARGETS)): $(FUZZ_DIR)/%: tests/fuzz/%.py tests/fuzz/atheris-target
	@mkdir -p $(@D)
	@printf '#!/bin/sh\nexec %s %s "$$@"\n' "$(CURDIR)/tests/fuzz/atheris-target" \
	  "$(CURDIR)/tests/fuzz/$*.py" >$@ && chmod +x $@

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

test-fuzz: $(addprefix $(FUZZ_DIR)/,$(FUZZ_C_RUN))
	@tests/fuzz/run-fuzz $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_C_RUN)

test-fuzz-convert: $(addprefix $(FUZZ_DIR)/,$(FUZZ_PY_TARGETS))
	@tests/fuzz/run-fuzz $(FUZZ_PY_SECONDS) $(FUZZ_DIR) $(FUZZ_PY_TARGETS)

fuzz: $(FUZZ_BINS)
	@tests/fuzz/run-fuzz $(FUZZ_SECONDS) $(FUZZ_DIR) $(FUZZ_TARGETS)
