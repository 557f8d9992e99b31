# ngx_module/: the nginx dynamic module, built through Debian's nginx-dev build system.
#
#   build/nginx/                         a copy of /usr/share/nginx/src (made once)
#   build/nginx/.configured              its ./configure with Debian's own flags
#                                        (conf_flags) + --add-dynamic-module=.
#   build/nginx/objs/ngx_http_sep_module.so
#                                        `make modules` there; loads into the stock
#                                        /usr/sbin/nginx with load_module
#   build/asan/nginx/objs/ngx_http_sep_module.so
#                                        the same configured tree copied and built with
#                                        ASan + UBSan (`make asan-module`); loads into the
#                                        stock nginx with LD_PRELOAD=$(NGX_ASAN_RUNTIME)
# The root `config` lists the sources; configure runs again when it changes.

NGX_SRC_DIR     := /usr/share/nginx/src
NGX_BUILD_DIR   := $(BUILD)/nginx
NGX_MODULE_SO   := $(NGX_BUILD_DIR)/objs/ngx_http_sep_module.so
NGX_MODULE_SRCS := $(wildcard ngx_module/*.c ngx_module/*.h)
# Debian's own compiler and linker options for its nginx build.
NGX_CC_OPT      := -g -O2 -fstack-protector-strong -Wformat -Werror=format-security -fPIC \
                   -Wdate-time -D_FORTIFY_SOURCE=2
NGX_LD_OPT      := -Wl,-z,relro -Wl,-z,now -fPIC

ALL_TARGETS += $(NGX_MODULE_SO)

$(NGX_BUILD_DIR)/.copied:
	@[ -f $(NGX_SRC_DIR)/configure ] || { echo "nginx-dev is not installed (make deps)"; exit 1; }
	rm -rf $(NGX_BUILD_DIR)
	mkdir -p $(NGX_BUILD_DIR)
	cp -a $(NGX_SRC_DIR)/. $(NGX_BUILD_DIR)/
	touch $@

$(NGX_BUILD_DIR)/.configured: $(NGX_BUILD_DIR)/.copied config
	cd $(NGX_BUILD_DIR) && source ./conf_flags && \
	  ./configure "$${NGX_CONF_FLAGS[@]}" --with-cc-opt="$(NGX_CC_OPT)" \
	    --with-ld-opt="$(NGX_LD_OPT)" --add-dynamic-module=$(CURDIR) >configure.log 2>&1 || \
	  { tail -n 30 configure.log; exit 1; }
	touch $@

$(NGX_MODULE_SO): $(NGX_BUILD_DIR)/.configured $(NGX_MODULE_SRCS) $(SHARED_SRCS) $(SHARED_HDRS) \
                  $(SHARED_GEN)
	$(MAKE) --no-print-directory -C $(NGX_BUILD_DIR) -f objs/Makefile modules
	@touch $@

# The sanitized module: a copy of the configured tree (the same ngx_auto_config.h as the
# module Debian's nginx loads), its objects rebuilt with the sanitizers added to the
# compiler and the linker (CC is both in objs/Makefile).
NGX_ASAN_BUILD_DIR := $(BUILD)/asan/nginx
NGX_ASAN_MODULE_SO := $(NGX_ASAN_BUILD_DIR)/objs/ngx_http_sep_module.so
NGX_SAN            := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
NGX_ASAN_RUNTIME    = $(shell $(CC) -print-file-name=libasan.so)

$(NGX_ASAN_BUILD_DIR)/.configured: $(NGX_BUILD_DIR)/.configured
	rm -rf $(NGX_ASAN_BUILD_DIR)
	mkdir -p $(NGX_ASAN_BUILD_DIR)
	cp -a $(NGX_BUILD_DIR)/. $(NGX_ASAN_BUILD_DIR)/
	find $(NGX_ASAN_BUILD_DIR)/objs \( -name "*.o" -o -name "*.so" \) -delete
	touch $@

$(NGX_ASAN_MODULE_SO): $(NGX_ASAN_BUILD_DIR)/.configured $(NGX_MODULE_SRCS) $(SHARED_SRCS) \
                       $(SHARED_HDRS) $(SHARED_GEN)
	$(MAKE) --no-print-directory -C $(NGX_ASAN_BUILD_DIR) -f objs/Makefile modules \
	    CC="$(CC) $(NGX_SAN)"
	@touch $@

.PHONY: asan-module
asan-module: $(NGX_ASAN_MODULE_SO)

# Module-level tests (Redis timeouts and late replies, NOSCRIPT, AUTH/SELECT over a
# unix socket, JSON error pages, graceful quit with requests in flight) against a
# real redis-server and nginx; the HTTP API itself is tests/integration's.
TEST_SUITES += test-ngx-module
.PHONY: test-ngx-module
test-ngx-module: $(NGX_MODULE_SO)
	$(PY) ngx_module/t/test_module.py
