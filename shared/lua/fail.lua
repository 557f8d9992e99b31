--[[
fail: a job a worker runs stopped with an error (or was canceled): retry it later,
mark it failed for good, or canceled.

KEYS     the job KEYS (shared/README.md)
ARGV[1]  token (from claim)
ARGV[2]  error code: 1..64 of [a-z0-9_] ("canceled" when the worker stopped on a
         cancel)
ARGV[3]  error message (may be ""; at most 1024 bytes)
ARGV[4]  "1" when the error is transient (retry allowed), "0" when permanent
ARGV[5]  backoff base in ms (integer >= 0): delay = base * 2^(attempts-1), capped
ARGV[6]  backoff cap in ms (integer >= 0)
ARGV[7]  jitter in ms (integer >= 0), added to the delay (the caller draws it)
ARGV[8]  {p}dead MAXLEN (integer >= 1)
ARGV[9..] worker field pairs (shared/README.md), optional

The stream entry is XACK + XDEL'd and the job leaves {p}running, then:
  cancel_requested=1 or code "canceled"   -> {"canceled"}: status canceled, event
                                             "canceled", counter canceled +1
  retryable and attempts < max_attempts   -> {"retry", due_ms}: status queued, stage
                                             retry_wait, no stream_id, the id in
                                             {p}delayed scored by due time (promote
                                             puts it back in its stream), counter
                                             retried +1, gauge queued +1, event
                                             "progress"
  otherwise                               -> {"failed"}: status failed, a {p}dead
                                             entry (id, code, message, attempts),
                                             counter failed +1, event "failed"
Terminal outcomes set finished_at, expire the record after its result_ttl and score
it in {p}expiry. Gauge running -1. The token is removed in every outcome.
Errors:  NOT_FOUND, NOT_RUNNING <status>, STALE attempt <n> is live, ERR_ARG, ERR_KEYS
]]
local function main()
    local k = job_keys()
    local token = arg_token(1)
    local code = arg_match(2, 'code', '^[a-z0-9_]+$', 64, 'must be 1..64 of [a-z0-9_]')
    local message = arg_message(3)
    local retryable = arg_oneof(4, 'retryable', {['0'] = true, ['1'] = true}, 'must be "0" or "1"') ==
                          '1'
    local base = arg_int(5, 'backoff_base_ms', 0)
    local cap = arg_int(6, 'backoff_cap_ms', 0)
    local jitter = arg_int(7, 'jitter_ms', 0)
    local maxlen = arg_int(8, 'dead_maxlen', 1)
    local extra = arg_worker_pairs(9)
    local job = load_job(k)
    require_live(job, token)

    local now = now_ms()
    if job.cancel_requested or code == 'canceled' then
        local fields = {'message', 'canceled while running'}
        for i = 1, #extra do
            fields[#fields + 1] = extra[i]
        end
        finish(k, job, 'canceled', 'canceled', now, fields)
        return {'canceled'}
    end

    local fields = {'error_code', code, 'error_message', message,
                    'error_retryable', retryable and '1' or '0'}
    for i = 1, #extra do
        fields[#fields + 1] = extra[i]
    end

    if retryable and job.attempts < job.max_attempts then
        local delay = base * 2 ^ math.max(job.attempts - 1, 0)
        if delay > cap then
            delay = cap
        end
        local due = now + math.floor(delay) + jitter
        drop_stream_entry(job_stream(k, job.priority), job.stream_id)
        redis.call('ZREM', k.running, k.id)
        redis.call('HDEL', k.job, 'stream_id', 'token')
        local hset = {'HSET', k.job, 'status', 'queued', 'stage', 'retry_wait', 'progress', '0',
                      'message', 'retrying after an error: ' .. message}
        for i = 1, #fields do
            hset[#hset + 1] = fields[i]
        end
        redis.call(unpack(hset))
        redis.call('ZADD', k.delayed, int_str(due), k.id)
        redis.call('HINCRBY', k.stats, 'retried', 1)
        gauge_add(k.stats, 'running', -1)
        redis.call('HINCRBY', k.stats, 'queued', 1)
        publish_job(k, 'progress')
        return {'retry', due}
    end

    fields[#fields + 1] = 'message'
    fields[#fields + 1] = message
    finish(k, job, 'failed', 'failed', now, fields)
    add_dead(k, maxlen, code, message, job.attempts)
    return {'failed'}
end

return run(main)
