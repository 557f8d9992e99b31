--[[
heartbeat: a worker announces itself (workerd, every few seconds).

KEYS[1]  {p}worker:{name}
KEYS[2]  {p}workers                  zset of worker names by the time (ms) their
                                     heartbeat expires
ARGV[1]  worker name (1..255 visible ASCII)
ARGV[2]  TTL of the worker hash in seconds (integer in 1..86400; a few heartbeat
         periods)
ARGV[3..] worker fields as name, value pairs (names 1..64 of [a-z0-9_], not name,
         last_seen or expires_at): host, device, state, job, jobs_done,
         memory_bytes, models (comma-separated), ...

Effects: the hash gets the fields plus name, last_seen and expires_at (ms) and the
TTL; the name is scored by expires_at in {p}workers, and names whose heartbeat has
expired are dropped from it (each worker's own TTL decides its own expiry).
Reply:   last_seen (ms)
Errors:  ERR_ARG, ERR_KEYS
]]
local RESERVED = {name = true, last_seen = true, expires_at = true}

local function main()
    if #KEYS ~= 2 then
        refuse('ERR_KEYS', 'heartbeat takes {p}worker:{name} {p}workers')
    end
    local prefix = KEYS[2]:match('^(.*)workers$')
    local name = arg_match(1, 'name', VISIBLE, 255, 'must be 1..255 visible ASCII bytes')
    if not prefix or KEYS[1] ~= prefix .. 'worker:' .. name then
        refuse('ERR_KEYS', 'keys must be {p}worker:{name} {p}workers for the name in argv[1]')
    end
    local ttl = arg_int(2, 'ttl', 1, 86400)
    if (#ARGV - 2) % 2 ~= 0 then
        bad_arg(#ARGV, 'field pairs', 'must come as name, value pairs')
    end
    for i = 3, #ARGV, 2 do
        local field = ARGV[i]
        if #field > 64 or not field:match('^[a-z0-9_]+$') or RESERVED[field] then
            bad_arg(i, 'field', '"' .. shown(field) .. '" is not a field a worker may set')
        end
        if #ARGV[i + 1] > 4096 then
            bad_arg(i + 1, field, 'must be at most 4096 bytes')
        end
    end

    local now = now_ms()
    local expires = now + ttl * 1000
    local hset = {'HSET', KEYS[1], 'name', name, 'last_seen', int_str(now),
                  'expires_at', int_str(expires)}
    for i = 3, #ARGV do
        hset[#hset + 1] = ARGV[i]
    end
    redis.call(unpack(hset))
    redis.call('EXPIRE', KEYS[1], ttl)
    redis.call('ZADD', KEYS[2], int_str(expires), name)
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. int_str(now))
    return now
end

return run(main)
