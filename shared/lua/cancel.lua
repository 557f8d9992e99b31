--[[
cancel: DELETE /v1/jobs/{id} (run by the nginx module).

KEYS     the job KEYS (shared/README.md)
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
    local k = job_keys()
    no_more_args(0)
    local job = load_job(k)
    if not job.status then
        refuse('NOT_FOUND', 'no such job')
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
    local files_deleted = redis.call('HGET', k.job, 'files_deleted')
    if files_deleted == '1' then
        refuse('ALREADY_DELETED', 'the job files were already deleted')
    end
    redis.call('HSET', k.job, 'files_deleted', '1')
    local flat = redis.call('HGETALL', k.job)
    table.insert(flat, 1, 'purge')
    return flat
end

return run(main)
