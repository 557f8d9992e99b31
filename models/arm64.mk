# models/arm64.mk: the engine cross-built for arm64 and tested under qemu-user.
#
#   make deps-arm64   the cross compiler (gcc-aarch64-linux-gnu), qemu-user and the
#                     engine's libraries for arm64 from Debian's multiarch archive
#                     (dpkg --add-architecture arm64; libopenblas-dev:arm64, ...);
#                     the two targets below run it first
#   make arm64        build/arm64/: libsepmodels.a, tests/ops_test, tests/parity,
#                     tests/engine_test for aarch64-linux-gnu (the same rules as the
#                     native build: models.mk read again with CC and BUILD set)
#   make test-arm64   those binaries under qemu-aarch64, once per instruction set the
#                     arm64 build has (generic, neon): ops, engine checks, every fixture
ARM64_CC       := aarch64-linux-gnu-gcc
ARM64_TRIPLET  := aarch64-linux-gnu
ARM64_BUILD    := $(BUILD)/arm64
# dynamically linked against the multiarch :arm64 libc and libraries (its loader is
# /lib/ld-linux-aarch64.so.1 of libc6:arm64): no -L prefix, with qemu 7.2 a program
# run with -L /usr/aarch64-linux-gnu (the cross libc) hangs in its first pthread_create
ARM64_RUN      := qemu-aarch64
ARM64_BINS     := $(ARM64_BUILD)/tests/ops_test $(ARM64_BUILD)/tests/parity \
                  $(ARM64_BUILD)/tests/engine_test
APT_ARM64_PKGS := gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user \
                  libopenblas-dev:arm64 libfftw3-dev:arm64 libjansson-dev:arm64

# Not in TEST_SUITES: under qemu the runs take about 75 CPU-seconds, 82-164 s on the
# shared 2-core development VM, 122 s with the cross build from a clean build/arm64
# (over the 90 s a suite of make test may take); and its packages (about 350 MiB
# installed) are not in make deps.

.PHONY: deps-arm64 arm64 test-arm64
deps-arm64:
	@if ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	  if [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; then \
	    echo "deps: the arm64 architecture is not enabled for dpkg"; \
	    echo "deps: run \`make $@\` as root (or install sudo) to add it"; exit 1; \
	  fi; \
	  echo "deps: adding the arm64 architecture (dpkg --add-architecture arm64)"; \
	  $(SUDO) dpkg --add-architecture arm64 || exit 1; \
	fi
	$(call apt_install_missing,$(APT_ARM64_PKGS))

# pkg-config reads the arm64 .pc files (openblas' include and library directories);
# NVCC is emptied: this machine's nvcc builds for itself, not for arm64
arm64: deps-arm64
	@PKG_CONFIG_LIBDIR=/usr/lib/$(ARM64_TRIPLET)/pkgconfig:/usr/share/pkgconfig \
	  $(MAKE) --no-print-directory CC=$(ARM64_CC) BUILD=$(ARM64_BUILD) NVCC= $(ARM64_BINS)

test-arm64: arm64
	@ARM64_RUN="$(ARM64_RUN)" tests/parity/arm64-check $(ARM64_BUILD)/tests $(PARITY_FIXTURES)
