--[[
cancel: DELETE /v1/jobs/{id} (run by the nginx module).

KEYS     the job KEYS (shared/README.md), then optionally
KEYS[9]  {p}idem:{key}   an Idempotency-Key of the submit that created the job: it
                         is deleted when it still names this job (the module's
                         cancel of a job created after its POST was answered 503, so
                         that the client's retry with that key creates a new job)
ARGV     none

Reply, then the job's hash after the change (field, value, ...):
  {"canceled", ...}          the job was queued (in its stream or waiting for a
                             retry), or running with its deadline passed (its
                             worker is gone): now canceled, its stream entry
                             XACK + XDEL'd (a worker that read it gets "drop" from
                             claim; a late worker gets NOT_RUNNING), out of
                             {p}delayed and {p}running; files_deleted=1: the caller
                             deletes {spool}/{id}/; event "canceled"; the record
                             expires after result_ttl
  {"cancel_requested", ...}  the job is running: cancel_requested=1 and a
                             "progress" event; the worker learns it from touch or
                             progress, stops and calls fail with code "canceled"
  {"purge", ...}             the job is finished (completed, failed, canceled):
                             files_deleted=1, the caller deletes {spool}/{id}/
Errors:  NOT_FOUND (no such job, or it expired), ALREADY_DELETED (finished and its
         files were already deleted), ERR_ARG, ERR_KEYS
]]
local function main()
    local k = job_keys(1)
    local idem_key = KEYS[9]
    if idem_key and (idem_key:sub(1, #k.prefix + 5) ~= k.prefix .. 'idem:' or
                     #idem_key == #k.prefix + 5) then
        refuse('ERR_KEYS', 'keys[9] must be ' .. k.prefix .. 'idem:{key}')
    end
    no_more_args(0)
    local job = load_job(k)
    if not job.status then
        refuse('NOT_FOUND', 'no such job')
    end
    local finished = job.status ~= 'queued' and job.status ~= 'running'
    if finished and redis.call('HGET', k.job, 'files_deleted') == '1' then
        refuse('ALREADY_DELETED', 'the job files were already deleted')
    end
    -- No check follows: the key goes whatever the outcome below.
    if idem_key and redis.call('GET', idem_key) == k.id then
        redis.call('DEL', idem_key)
    end

    local now = now_ms()
    if job.status == 'queued' then
        return with_hash('canceled', nil, finish(k, job, 'canceled', 'canceled', now,
                                                 {'message', 'canceled before it started',
                                                  'files_deleted', '1'}))
    end
    if job.status == 'running' then
        local deadline = tonumber(redis.call('ZSCORE', k.running, k.id))
        if not deadline or deadline <= now then
            return with_hash('canceled', nil, finish(k, job, 'canceled', 'canceled', now,
                                                     {'message', 'canceled; its worker was gone',
                                                      'files_deleted', '1'}))
        end
        if not job.cancel_requested then
            redis.call('HSET', k.job, 'cancel_requested', '1', 'message', 'cancel requested')
            publish_job(k, 'progress')
        end
        local flat = redis.call('HGETALL', k.job)
        table.insert(flat, 1, 'cancel_requested')
        return flat
    end
    redis.call('HSET', k.job, 'files_deleted', '1')
    local flat = redis.call('HGETALL', k.job)
    table.insert(flat, 1, 'purge')
    return flat
end

return run(main)
