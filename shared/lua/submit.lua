--[[
submit: create a job and queue it (one atomic step; run by the nginx module).

KEYS[1]  {p}job:{id}                 the new job's hash
KEYS[2]  {p}q:high | {p}q:normal      the stream of the job's priority
KEYS[3]  {p}stats
KEYS[4]  {p}idem:{key}                only when the request had an Idempotency-Key
ARGV[1]  job id
ARGV[2]  max queued jobs (0 = no limit; compared with the stats gauge "queued")
ARGV[3]  idempotency key TTL in seconds
ARGV[4]  key prefix {p} (to read the job an idempotency key already names)
ARGV[5..] job hash fields as name, value pairs: model, stems_option, format,
         priority, shifts, overlap, input, input_type, input_bytes, max_attempts,
         result_ttl (see shared/sep_job.h)

Reply:   {"created", field, value, ...}  the new job's hash (all its fields)
         {"exists", field, value, ...}   the job the idempotency key already names
                                         (nothing was written)
Errors (the first word of the error is its code):
         "QUEUE_FULL <queued> <max>"     backpressure: the queue is full
         "JOB_EXISTS"                    the id is taken (never with random ids)

The stream and its consumer group "workers" are created on first use (from id 0,
so the first entry is delivered). Counters: submitted +1, bytes_in +input_bytes,
gauge queued +1.
]]
local job_key, stream_key, stats_key, idem_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
local max_queued = tonumber(ARGV[2]) or 0
local idem_ttl = tonumber(ARGV[3]) or 86400
local prefix = ARGV[4]

if idem_key then
    local existing = redis.call('GET', idem_key)
    if existing then
        local fields = redis.call('HGETALL', prefix .. 'job:' .. existing)
        if #fields > 0 then
            table.insert(fields, 1, 'exists')
            return fields
        end
    end
end

if max_queued > 0 then
    local queued = tonumber(redis.call('HGET', stats_key, 'queued') or '0') or 0
    if queued >= max_queued then
        return redis.error_reply('QUEUE_FULL ' .. queued .. ' ' .. max_queued)
    end
end

if redis.call('EXISTS', job_key) == 1 then
    return redis.error_reply('JOB_EXISTS the job id is taken')
end

local now = now_ms()

local hset = {'HSET', job_key, 'id', id, 'status', 'queued', 'progress', '0',
              'stage', 'queued', 'message', '', 'attempts', '0', 'created_at', tostring(now)}
local input_bytes = 0
for i = 5, #ARGV - 1, 2 do
    hset[#hset + 1] = ARGV[i]
    hset[#hset + 1] = ARGV[i + 1]
    if ARGV[i] == 'input_bytes' then
        input_bytes = tonumber(ARGV[i + 1]) or 0
    end
end

ensure_stream(stream_key, 'workers')
local entry = redis.call('XADD', stream_key, '*', 'id', id)
hset[#hset + 1] = 'stream_id'
hset[#hset + 1] = entry
redis.call(unpack(hset))

redis.call('HINCRBY', stats_key, 'submitted', 1)
redis.call('HINCRBY', stats_key, 'queued', 1)
if input_bytes > 0 then
    redis.call('HINCRBY', stats_key, 'bytes_in', input_bytes)
end
if idem_key then
    redis.call('SET', idem_key, id, 'EX', idem_ttl)
end

-- The new hash is exactly what was just written: answer it without reading it back.
hset[1] = 'created'
table.remove(hset, 2)
return hset
