# shared/: C code linked into both the nginx module and workerd (job record, key
# schema, Lua scripts, JSON, ids, multipart, sniffing, option validation).
#
#   build/libsepshared.a                 the library (link with $(SHARED_LDLIBS))
#   build/gen/shared/sep_scripts.c       shared/lua/*.lua as C strings + SHA1s (each
#                                        script preceded by shared/lua/lib.lua)
#                                        (compiled into the library and the module)
# Unit tests (tests/unit/, cmocka) are declared in tests/unit/unit.mk, the Python
# tests of the scripts (regressions, model-based, Cluster) in tests/scripts/scripts.mk.

SHARED_LUA_SCRIPTS := submit cancel get claim progress complete fail promote heartbeat touch \
                      requeue force_cancel setup janitor stats
SHARED_SRCS    := $(wildcard shared/*.c)
SHARED_HDRS    := $(wildcard shared/*.h)
SHARED_GEN     := $(BUILD)/gen/shared/sep_scripts.c
SHARED_OBJS    := $(patsubst shared/%.c,$(BUILD)/shared/%.o,$(SHARED_SRCS)) \
                  $(BUILD)/shared/sep_scripts.o
SHARED_LIB     := $(BUILD)/libsepshared.a
SHARED_LDLIBS  := -ljansson

ALL_TARGETS += $(SHARED_LIB)

$(SHARED_GEN): shared/gen-scripts.sh shared/lua/lib.lua $(SHARED_LUA_SCRIPTS:%=shared/lua/%.lua) \
              shared/shared.mk
	@mkdir -p $(dir $@)
	shared/gen-scripts.sh $@ $(SHARED_LUA_SCRIPTS)

$(BUILD)/shared/%.o: shared/%.c $(SHARED_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -c $< -o $@

$(BUILD)/shared/sep_scripts.o: $(SHARED_GEN) shared/sep_scripts.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_COMMON) -c $< -o $@

$(SHARED_LIB): $(SHARED_OBJS)
	@rm -f $@
	ar rcs $@ $^

include tests/unit/unit.mk
include tests/scripts/scripts.mk
