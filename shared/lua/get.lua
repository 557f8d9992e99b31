--[[
get: read job records (the module itself uses a plain HGETALL for one job; this
script reads several in one round trip, e.g. for listings and tools).

KEYS[1..n]  {p}job:{id} hashes
ARGV        none
Reply:      one element per key: its HGETALL list (field, value, ...), empty when
            the job does not exist
Errors:     ERR_ARG, ERR_KEYS
]]
local function main()
    for i = 1, #KEYS do
        if not KEYS[i]:match('job:[^:]+$') then
            refuse('ERR_KEYS', string.format('keys[%d] must be {p}job:{id}', i))
        end
    end
    no_more_args(0)
    local out = {}
    for i = 1, #KEYS do
        out[i] = redis.call('HGETALL', KEYS[i])
    end
    return out
end

return run(main)
