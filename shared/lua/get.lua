--[[
get: read job records (the module itself uses a plain HGETALL for one job; this
script reads several in one round trip, e.g. for listings and tools).

KEYS[1..n]  {p}job:{id} hashes
Reply:      one element per key: its HGETALL list (field, value, ...), empty when
            the job does not exist
]]
local out = {}
for i = 1, #KEYS do
    out[i] = redis.call('HGETALL', KEYS[i])
end
return out
