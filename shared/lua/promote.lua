--[[
promote: moves retries whose backoff is over from {p}delayed back to the stream of
their priority (workerd runs it periodically).

KEYS[1]  {p}delayed
KEYS[2]  {p}q:high
KEYS[3]  {p}q:normal
ARGV[1]  key prefix {p} (job hashes are {p}job:{id}; read, not declared)
ARGV[2]  most jobs to move in this call (default 100)

For each due id: removed from the zset; if its job is still queued, a new stream
entry is added (stream and group created when missing), the job's stream_id
updated and its stage set back to "queued". Ids of jobs that were canceled or
expired meanwhile are just dropped.
Reply:   the number of jobs put back in a stream
]]
local delayed_key, q_high, q_normal = KEYS[1], KEYS[2], KEYS[3]
local prefix, limit = ARGV[1], tonumber(ARGV[2]) or 100

local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', now_ms(), 'LIMIT', 0, limit)
local moved = 0
for _, id in ipairs(due) do
    redis.call('ZREM', delayed_key, id)
    local job_key = prefix .. 'job:' .. id
    local job = redis.call('HMGET', job_key, 'status', 'priority')
    if job[1] == 'queued' then
        local stream = priority_stream(job[2], q_high, q_normal)
        ensure_stream(stream, 'workers')
        local entry = redis.call('XADD', stream, '*', 'id', id)
        redis.call('HSET', job_key, 'stream_id', entry, 'stage', 'queued')
        moved = moved + 1
    end
end
return moved
