# Root build for the separation service.
#   make          build the nginx module, the shared library code, the engine and workerd
#   make test     install what is missing, build, run every test suite, print a summary
#   make run      start redis + nginx (+ workerd) on 127.0.0.1:$(SEP_PORT) under ./run/
#   make stop     stop what `make run` started
#   make deps     install missing Debian packages (apt-get): `make deps-run` only what the
#                 build and `make run` need, `make deps` also what the tests and benches
#                 need (and from PyPI: Schemathesis into build/stvenv, atheris into
#                 build/fuzzvenv, tests/fuzz/fuzz.mk); `make deps-reference` adds the
#                 PyTorch reference (fixtures, benches)
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

# From Debian's archive: what `make` and `make run` need (build + runtime), and what only
# the tests and benchmarks add (`make deps` installs both, `make run` only the first).
# oneDNN's runtime library: the CPU engine's GEMM on AVX-512 CPUs, dlopen()ed when there
# (models/cpu_gemm.c); Debian builds it for amd64 only
APT_ONEDNN_PKG := $(if $(filter x86_64,$(shell uname -m)),libdnnl2)
APT_RUN_PKGS  := build-essential pkg-config curl python3 python3-numpy \
                 nginx-core nginx-dev libpcre2-dev libpcre3-dev zlib1g-dev libssl-dev \
                 redis-server libhiredis-dev libjansson-dev \
                 libsndfile1-dev libsoxr-dev libinih-dev libopenblas-dev libfftw3-dev \
                 $(APT_ONEDNN_PKG)
APT_TEST_PKGS := bc python3-redis python3-hypothesis libcmocka-dev wrk python3-jsonschema \
                 python3-prometheus-client chromium chromium-driver python3-selenium clang-14 \
                 libclang-rt-14-dev libomp-14-dev python3-venv
APT_PKGS      := $(APT_RUN_PKGS) $(APT_TEST_PKGS)
# The PyTorch reference (fixtures, full-size parity check, benchmarks).
APT_REF_PKGS := python3-torch python3-torchaudio libopenblas0-pthread python3-venv \
                python3-numpy python3-yaml python3-tqdm
REFVENV  := $(BUILD)/refvenv
# Schemathesis (PyPI; not in Debian) for `make test-schemathesis`, in a venv of Debian's
# python3 made by `make deps` from the pinned requirements below; the copy of them in the
# venv is its stamp (same pins: nothing to do; other pins: the venv is made anew).
STVENV          := $(BUILD)/stvenv
ST_REQUIREMENTS := tests/integration/schemathesis-requirements.txt

ALL_TARGETS :=
TEST_SUITES :=

include shared/shared.mk
include cuda/cuda.mk
include models/models.mk
include workerd/workerd.mk
include ngx_module/module.mk
include tests/tests.mk
include tests/fuzz/fuzz.mk
include bench/bench.mk

.PHONY: all deps deps-run deps-reference test run stop clean format
all: $(ALL_TARGETS)

# Installs the packages of $(1) that are missing; without root and without sudo it says
# how to get them instead of failing in apt-get.
define apt_install_missing
	@# `pkg:<arch>` too: a -dev package installed for a second architecture makes the
	@# bare name ambiguous to dpkg.
	@arch=$$(dpkg --print-architecture); \
	missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || \
	  dpkg -s $$p:$$arch >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; then \
	    echo "deps: missing Debian packages:" $$missing; \
	    echo "deps: run \`make $@\` as root (or install sudo) to install them"; exit 1; \
	  fi; \
	  echo "deps: installing" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps: deps-run
	$(call apt_install_missing,$(APT_TEST_PKGS))
	@# An install cut short (no PyPI) is removed, and `make deps` fails: the suite needs it.
	@cmp -s $(ST_REQUIREMENTS) $(STVENV)/requirements.txt && $(STVENV)/bin/st --version \
	  >/dev/null 2>&1 || { \
	  echo "deps: installing schemathesis into $(STVENV) ($(ST_REQUIREMENTS))" && \
	  rm -rf $(STVENV) && $(PY) -m venv $(STVENV) && \
	  $(STVENV)/bin/pip install -q --disable-pip-version-check --no-cache-dir \
	    -r $(ST_REQUIREMENTS) && \
	  $(STVENV)/bin/st --version >/dev/null && cp $(ST_REQUIREMENTS) $(STVENV)/requirements.txt; \
	  } || { rm -rf $(STVENV); echo "deps: could not install schemathesis"; exit 1; }

deps-run:
	$(call apt_install_missing,$(APT_RUN_PKGS))

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
