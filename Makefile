# Root build for the separation service.
#   make          build the nginx module, the shared library code, the engine and workerd
#   make test     install what is missing, build, run every test suite, print a summary
#   make run      start redis + nginx (+ workerd) on 127.0.0.1:$(SEP_PORT) under ./run/
#   make stop     stop what `make run` started
#   make deps     install missing Debian packages (apt-get); `make deps-reference` adds the
#                 PyTorch reference (only for fixture generation and benchmarks)
# Each component has its own fragment (<dir>/*.mk) that appends to ALL_TARGETS and
# TEST_SUITES; this file only ties them together.
SHELL := /bin/bash
.DEFAULT_GOAL := all
.DELETE_ON_ERROR:

BUILD    := build
PY       := /usr/bin/python3
SEP_PORT ?= 8080
CC       ?= gcc
OPT      ?= -O2
CSTD     := -std=gnu11
WARNINGS := -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
CFLAGS_COMMON := $(CSTD) $(OPT) -g $(WARNINGS) -fPIC -D_GNU_SOURCE -I.
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Everything the build, the tests and `make run` need, from Debian's archive.
APT_PKGS := build-essential pkg-config curl bc python3 python3-redis python3-hypothesis \
            chromium chromium-driver python3-selenium \
            nginx-core nginx-dev libpcre2-dev libpcre3-dev zlib1g-dev libssl-dev \
            redis-server libhiredis-dev libjansson-dev libcmocka-dev \
            libsndfile1-dev libsoxr-dev libinih-dev libopenblas-dev libfftw3-dev wrk python3-numpy \
            clang-14 libclang-rt-14-dev
# The PyTorch reference (fixtures, full-size parity check, benchmarks).
APT_REF_PKGS := python3-torch python3-torchaudio libopenblas0-pthread python3-venv \
                python3-numpy python3-yaml python3-tqdm
REFVENV  := $(BUILD)/refvenv

ALL_TARGETS :=
TEST_SUITES :=

include shared/shared.mk
include models/models.mk
include workerd/workerd.mk
include ngx_module/module.mk
include tests/tests.mk
include tests/fuzz/fuzz.mk
include bench/bench.mk

.PHONY: all deps deps-reference test run stop clean format
all: $(ALL_TARGETS)

define apt_install_missing
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call apt_install_missing,$(APT_PKGS))

# Reference venv: Debian's torch + `pip install --no-deps demucs` and its pure-Python needs.
deps-reference: deps
	$(call apt_install_missing,$(APT_REF_PKGS))
	@# An install cut short (no PyPI) is removed: no half-made venv passes for the reference.
	@$(REFVENV)/bin/python -c 'import torch, demucs.htdemucs, lameenc' 2>/dev/null || { \
	  rm -rf $(REFVENV) && \
	  $(PY) -m venv --system-site-packages $(REFVENV) && \
	  $(REFVENV)/bin/pip install -q --no-deps -r tests/reference/requirements.txt && \
	  $(REFVENV)/bin/python -c 'import torch, demucs.htdemucs, lameenc'; } || { rm -rf $(REFVENV); exit 1; }

test: deps
	@$(MAKE) --no-print-directory all
	@tests/run-suites $(TEST_SUITES)

format:
	@git ls-files '*.c' '*.h' '*.cu' '*.cuh' | xargs -r clang-format -i

clean:
	rm -rf $(BUILD)
