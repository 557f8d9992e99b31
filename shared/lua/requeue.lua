--[[
requeue: a worker gives a job it runs back to its queue at once, no attempt spent
(drain on SIGTERM: the job is not left to wait for the visibility timeout).

KEYS     the job KEYS (shared/README.md)
ARGV[1]  token (from claim)
ARGV[2]  message for the record (may be ""; at most 1024 bytes)

Effects: the old stream entry XACK + XDEL'd, a new entry at the tail of the job's
         stream (stream_id), status queued, stage queued, progress 0, attempts -1,
         token removed, out of {p}running; gauges running -1, queued +1; event
         "progress". When a cancel was requested the job is canceled instead.
Reply:   {"queued", <new entry id>} or {"canceled"}
Errors:  NOT_FOUND, NOT_RUNNING <status>, STALE attempt <n> is live, ERR_ARG, ERR_KEYS
]]
local function main()
    local k = job_keys()
    local token = arg_token(1)
    local message = arg_message(2)
    no_more_args(2)
    local job = load_job(k)
    require_live(job, token)

    local now = now_ms()
    if job.cancel_requested then
        finish(k, job, 'canceled', 'canceled', now, {'message', 'canceled while running'})
        return {'canceled'}
    end
    local stream = job_stream(k, job.priority)
    drop_stream_entry(stream, job.stream_id)
    local entry = redis.call('XADD', stream, '*', 'id', k.id)
    redis.call('ZREM', k.running, k.id)
    redis.call('HDEL', k.job, 'token')
    redis.call('HSET', k.job, 'status', 'queued', 'stage', 'queued', 'progress', '0',
               'message', message, 'stream_id', entry,
               'attempts', int_str(math.max(job.attempts - 1, 0)))
    gauge_add(k.stats, 'running', -1)
    redis.call('HINCRBY', k.stats, 'queued', 1)
    publish_job(k, 'progress')
    return {'queued', entry}
end

return run(main)
