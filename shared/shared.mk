# shared/: C code linked into both the nginx module and workerd (job record, key
# schema, Lua scripts, JSON, ids, multipart, sniffing, option validation).
