--[[
heartbeat: a worker announces itself (workerd, every few seconds).

KEYS[1]  {p}worker:{name}
KEYS[2]  {p}workers                  zset of worker names by last heartbeat (ms)
ARGV[1]  worker name
ARGV[2]  TTL of the worker hash in seconds (a few heartbeat periods)
ARGV[3..] worker fields as name, value pairs: host, device, state, job,
         jobs_done, memory_bytes, models (comma-separated), ...

Effects: the hash gets the fields plus last_seen (ms) and the TTL; the name is
scored in {p}workers; names not seen for 10 TTLs are dropped from the zset.
Reply:   last_seen (ms)
]]
local worker_key, workers_key = KEYS[1], KEYS[2]
local name, ttl = ARGV[1], tonumber(ARGV[2]) or 30

local now = now_ms()
redis.call(unpack(append_argv_pairs({'HSET', worker_key, 'name', name, 'last_seen', now}, 3)))
redis.call('EXPIRE', worker_key, ttl)
redis.call('ZADD', workers_key, now, name)
redis.call('ZREMRANGEBYSCORE', workers_key, '-inf', now - ttl * 10000)
return now
