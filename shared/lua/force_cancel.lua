--[[
force_cancel: the janitor cancels a running job whose worker is gone (its running
deadline passed: no touch within the visibility timeout), e.g. one whose cancel was
requested, without waiting for another worker to reclaim it.

KEYS     the job KEYS (shared/README.md)
ARGV[1]  the live token, as the caller read it from the job's "token" field (a
         compare-and-set: a job claimed again meanwhile is refused)
ARGV[2]  message for the record ("" = "canceled; its worker was gone")

Effects: status canceled, files_deleted=1, the stream entry XACK + XDEL'd, out of
         {p}running and {p}delayed, token removed, gauge running -1, counter
         canceled +1, TTL result_ttl + {p}expiry, event "canceled". The caller
         deletes {spool}/{id}/.
Reply:   {"canceled", field, value, ...} (the hash after the change)
Errors:  NOT_FOUND, NOT_RUNNING <status>, STALE attempt <n> is live,
         NOT_OVERDUE <deadline ms> (the worker touched it in time), ERR_ARG, ERR_KEYS
]]
local function main()
    local k = job_keys()
    local token = arg_token(1)
    local message = arg_message(2)
    no_more_args(2)
    local job = load_job(k)
    require_live(job, token)
    local now = now_ms()
    local deadline = tonumber(redis.call('ZSCORE', k.running, k.id))
    if deadline and deadline > now then
        refuse('NOT_OVERDUE', int_str(deadline))
    end
    if message == '' then
        message = 'canceled; its worker was gone'
    end
    return with_hash('canceled', nil, finish(k, job, 'canceled', 'canceled', now,
                                             {'message', message, 'files_deleted', '1'}))
end

return run(main)
