--[[
touch: a worker renews its claim on a job it runs (on every heartbeat), so that
XAUTOCLAIM with min-idle = the visibility timeout only ever takes jobs of dead
workers.

KEYS     the job KEYS (shared/README.md)
ARGV[1]  token (from claim)
ARGV[2]  visibility ms (integer >= 1): the running deadline becomes now + this

Effects: XCLAIM <its stream> workers <worker> 0 <stream_id> JUSTID (resets the
         entry's idle time; the owner stays the worker); {p}running scored
         now + visibility.
Reply:   1 when a cancel was requested (the worker stops and calls fail with code
         "canceled"), else 0
Errors:  NOT_FOUND, NOT_RUNNING <status>, STALE attempt <n> is live, ERR_ARG, ERR_KEYS
]]
local function main()
    local k = job_keys()
    local token = arg_token(1)
    local visibility = arg_int(2, 'visibility_ms', 1)
    no_more_args(2)
    local job = load_job(k)
    require_live(job, token)

    local now = now_ms()
    redis.call('XCLAIM', job_stream(k, job.priority), GROUP, job.worker, '0', job.stream_id,
               'JUSTID')
    redis.call('ZADD', k.running, int_str(now + visibility), k.id)
    return job.cancel_requested and 1 or 0
end

return run(main)
