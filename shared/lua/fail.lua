--[[
fail: a job stopped with an error (or was canceled while running): retry it later,
or mark it failed for good, or canceled.

KEYS[1]  {p}job:{id}
KEYS[2]  {p}stats
KEYS[3]  {p}q:high
KEYS[4]  {p}q:normal
KEYS[5]  {p}delayed
KEYS[6]  {p}dead
ARGV[1]  event channel {p}ev:{id}
ARGV[2]  consumer group name ("workers")
ARGV[3]  error code (snake_case; "canceled" when the worker stopped on a cancel)
ARGV[4]  error message
ARGV[5]  "1" when the error is transient (retry allowed), "0" when permanent
ARGV[6]  backoff base in ms (delay = base * 2^(attempts-1), capped)
ARGV[7]  backoff cap in ms
ARGV[8]  jitter in ms, added to the delay (the caller draws it)
ARGV[9..] more job fields as name, value pairs, optional

Decision, after the stream entry is acknowledged and deleted (XACK + XDEL):
  cancel_requested=1 or code "canceled"   -> {"canceled"}: status canceled, event
                                             "canceled", counter canceled +1
  retryable and attempts < max_attempts   -> {"retry", due_ms}: status queued, stage
                                             retry_wait, the id in {p}delayed scored
                                             by due time (promote.lua puts it back in
                                             its stream), counter retried +1, gauge
                                             queued +1, event "progress"
  otherwise                               -> {"failed"}: status failed, entry in
                                             {p}dead (id, code, message, attempts),
                                             counter failed +1, event "failed"
Terminal outcomes set finished_at and expire the record after its result_ttl.
Gauge running -1 (queued -1 if the job was never claimed).
Errors (the first word of the error is its code):
         "NOT_FOUND", "NOT_ACTIVE" (already completed, failed or canceled)
]]
local job_key, stats_key, q_high, q_normal, delayed_key, dead_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local channel, group, code, message = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retryable = ARGV[5] == '1'
local base, cap, jitter = tonumber(ARGV[6]) or 1000, tonumber(ARGV[7]) or 60000,
                          tonumber(ARGV[8]) or 0

local job = redis.call('HMGET', job_key, 'id', 'status', 'priority', 'stream_id',
                       'result_ttl', 'attempts', 'max_attempts', 'cancel_requested')
local id, status, priority, stream_id, ttl = job[1], job[2], job[3], job[4], tonumber(job[5])
local attempts, max_attempts = tonumber(job[6]) or 0, tonumber(job[7]) or 1
local refused = inactive_job_error(status)
if refused then
    return refused
end

local now = now_ms()

drop_stream_entry(priority_stream(priority, q_high, q_normal), group, stream_id)
redis.call('HDEL', job_key, 'stream_id')
redis.call('HINCRBY', stats_key, status, -1)

local extra = append_argv_pairs({}, 9)
if #extra > 0 then
    redis.call('HSET', job_key, unpack(extra))
end

local function finish(final_status, stage, counter)
    redis.call('HSET', job_key, 'status', final_status, 'stage', stage, 'finished_at', now)
    redis.call('HINCRBY', stats_key, counter, 1)
    expire_finished(job_key, ttl)
end

if job[8] == '1' or code == 'canceled' then
    redis.call('HSET', job_key, 'message', 'canceled while running')
    finish('canceled', 'canceled', 'canceled')
    publish_job(job_key, channel, 'canceled')
    return {'canceled'}
end

redis.call('HSET', job_key, 'error_code', code, 'error_message', message,
           'error_retryable', retryable and '1' or '0')

if retryable and attempts < max_attempts then
    local delay = base * 2 ^ math.max(attempts - 1, 0)
    if delay > cap then
        delay = cap
    end
    local due = now + math.floor(delay + jitter)
    redis.call('HSET', job_key, 'status', 'queued', 'stage', 'retry_wait', 'progress', '0',
               'message', 'retrying after an error: ' .. message)
    redis.call('ZADD', delayed_key, due, id)
    redis.call('HINCRBY', stats_key, 'retried', 1)
    redis.call('HINCRBY', stats_key, 'queued', 1)
    publish_job(job_key, channel, 'progress')
    return {'retry', due}
end

redis.call('HSET', job_key, 'message', message)
finish('failed', 'failed', 'failed')
redis.call('XADD', dead_key, '*', 'id', id, 'code', code, 'message', message,
           'attempts', attempts)
publish_job(job_key, channel, 'failed')
return {'failed'}
