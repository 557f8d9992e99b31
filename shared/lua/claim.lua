--[[
claim: a worker takes a job it read from a stream (XREADGROUP) and marks it running.

KEYS[1]  {p}job:{id}
KEYS[2]  {p}stats
ARGV[1]  worker name (stored in the job's "worker" field)
ARGV[2]  event channel {p}ev:{id}
ARGV[3]  "reclaim" when the entry was taken over from a dead worker (XAUTOCLAIM):
         a running job may then be claimed again (optional)

Reply:   the job's hash (field, value, ...) when the caller now runs it: status
         running, attempts +1, started_at, worker, stage "starting", progress 0,
         timing_queued_s (time since created_at); a "progress" event is published.
         nil when the job must not run: it is gone (expired), canceled, finished,
         or running elsewhere without "reclaim". The caller then XACKs and XDELs
         the stream entry.
Gauges:  queued -1, running +1 (not for a reclaim, which was already running).
]]
local job_key, stats_key = KEYS[1], KEYS[2]
local worker, channel, reclaim = ARGV[1], ARGV[2], ARGV[3] == 'reclaim'

local job = redis.call('HMGET', job_key, 'status', 'created_at')
local status, created_at = job[1], tonumber(job[2])
if status ~= 'queued' and not (reclaim and status == 'running') then
    return false
end

local now = now_ms()
redis.call('HINCRBY', job_key, 'attempts', 1)
redis.call('HSET', job_key, 'status', 'running', 'stage', 'starting', 'progress', '0',
           'message', '', 'worker', worker, 'started_at', now)
if created_at then
    redis.call('HSET', job_key, 'timing_queued_s', string.format('%.3f', (now - created_at) / 1000))
end
if status == 'queued' then
    redis.call('HINCRBY', stats_key, 'queued', -1)
    redis.call('HINCRBY', stats_key, 'running', 1)
end

return (publish_job(job_key, channel, 'progress'))
