--[[
cancel: DELETE /v1/jobs/{id} (run by the nginx module).

KEYS[1]  {p}job:{id}
KEYS[2]  {p}q:high
KEYS[3]  {p}q:normal
KEYS[4]  {p}delayed
KEYS[5]  {p}stats
ARGV[1]  event channel {p}ev:{id}
ARGV[2]  consumer group name ("workers")

Reply, then the job's hash after the change (field, value, ...):
  {"canceled", ...}          the job was queued (in its stream or waiting for a
                             retry): now canceled, its stream entry acknowledged
                             and deleted (XACK + XDEL, safe if a worker already read
                             it: claim refuses a canceled job), removed from the
                             retry zset; files_deleted=1, the caller deletes
                             {spool}/{id}/; event "canceled"; the record expires
                             after result_ttl
  {"cancel_requested", ...}  the job is running: cancel_requested=1 and a
                             "progress" event; workerd stops it and calls fail.lua,
                             which marks it canceled
  {"purge", ...}             the job is finished (completed, failed, canceled):
                             files_deleted=1, the caller deletes {spool}/{id}/
Errors (the first word of the error is its code):
         "NOT_FOUND"         no such job (or it expired)
         "ALREADY_DELETED"   finished and its files were already deleted
]]
local job_key, q_high, q_normal, delayed_key, stats_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, group = ARGV[1], ARGV[2]

local function answer(kind, flat)
    table.insert(flat, 1, kind)
    return flat
end

local job = redis.call('HMGET', job_key, 'id', 'status', 'priority', 'stream_id',
                       'result_ttl', 'cancel_requested', 'files_deleted')
local id, status, priority, stream_id, ttl, cancel_requested, files_deleted =
    job[1], job[2], job[3], job[4], tonumber(job[5]), job[6], job[7]
if not status then
    return redis.error_reply('NOT_FOUND no such job')
end

if status == 'queued' then
    drop_stream_entry(priority_stream(priority, q_high, q_normal), group, stream_id)
    redis.call('ZREM', delayed_key, id)
    redis.call('HSET', job_key, 'status', 'canceled', 'stage', 'canceled',
               'message', 'canceled before it started', 'finished_at', now_ms(),
               'files_deleted', '1')
    redis.call('HDEL', job_key, 'stream_id')
    redis.call('HINCRBY', stats_key, 'canceled', 1)
    redis.call('HINCRBY', stats_key, 'queued', -1)
    expire_finished(job_key, ttl)
    return answer('canceled', (publish_job(job_key, channel, 'canceled')))
end

if status == 'running' then
    if cancel_requested == '1' then
        return answer('cancel_requested', redis.call('HGETALL', job_key))
    end
    redis.call('HSET', job_key, 'cancel_requested', '1', 'message', 'cancel requested')
    return answer('cancel_requested', (publish_job(job_key, channel, 'progress')))
end

if files_deleted == '1' then
    return redis.error_reply('ALREADY_DELETED the job files were already deleted')
end
redis.call('HSET', job_key, 'files_deleted', '1')
return answer('purge', redis.call('HGETALL', job_key))
