--[[
claim: a worker takes a job whose stream entry it read (XREADGROUP, its own pending
entries after a restart, or XAUTOCLAIM) and learns what to do with it.

KEYS     the job KEYS (shared/README.md): {p}job:{id} {p}stats {p}q:high
         {p}q:normal {p}delayed {p}running {p}expiry {p}dead
ARGV[1]  worker: the consumer name that read the entry (1..255 visible ASCII)
ARGV[2]  queue the entry was read from: "high" | "normal"
ARGV[3]  stream entry id
ARGV[4]  nonce: 16..64 lowercase hex digits for the token, or "" (derived)
ARGV[5]  visibility ms (integer >= 1): the running deadline becomes now + this
ARGV[6]  {p}dead MAXLEN (integer >= 1), for the "dead" outcome

Reply: {reason, detail, field, value, ...} (the job's hash after the call, absent
for "drop gone" and "busy"):
  run       token   the caller runs the job: status running, attempts +1, token
                    "<attempts>:<nonce>", worker, started_at, stage starting,
                    progress 0, message ""; the entry's PEL owner set to the caller
                    (XCLAIM JUSTID); {p}running scored now + visibility;
                    timing_queued_s and the queue-wait histogram of {p}stats
                    (hist_wait_*) on the first claim only; gauges queued -1,
                    running +1 unless it was running (a reclaim); event progress.
                    A running job is reclaimed when its deadline has passed (its
                    worker is gone) or when its worker is the caller (restarted).
  drop      gone | finished | stale_entry
                    no record / finished / the entry is not the job's current one:
                    this entry is XACK + XDEL'd, nothing else changes
  busy      worker  running under another worker whose deadline has not passed:
                    the entry is handed back to that worker (XCLAIM JUSTID)
  dead      attempts  a reclaim with attempts >= max_attempts: failed with
                    error_code worker_lost, a {p}dead entry, event failed
  canceled  ""      a reclaim of a job whose cancel was requested: canceled,
                    event canceled
Errors: ERR_ARG (also when the job's current entry is not pending: it was not read
        through the group), ERR_KEYS (also when the entry belongs to another job).
]]
local function main()
    local k = job_keys()
    local worker = arg_match(1, 'worker', VISIBLE, 255, 'must be 1..255 visible ASCII bytes')
    local queue = arg_oneof(2, 'queue', {high = true, normal = true}, 'must be "high" or "normal"')
    local entry = arg_match(3, 'entry', '^%d+%-%d+$', 41, 'must be a stream entry id')
    local nonce = arg_present(4, 'nonce')
    if nonce ~= '' and (#nonce < 16 or #nonce > 64 or not nonce:match('^[0-9a-f]+$')) then
        bad_arg(4, 'nonce', 'must be 16..64 lowercase hex digits or ""')
    end
    local visibility = arg_int(5, 'visibility_ms', 1)
    local maxlen = arg_int(6, 'dead_maxlen', 1)
    no_more_args(6)

    local stream = (queue == 'high') and k.q_high or k.q_normal
    local rows = redis.call('XRANGE', stream, entry, entry)
    if rows[1] then
        local fields, owner = rows[1][2], nil
        for i = 1, #fields, 2 do
            if fields[i] == 'id' then
                owner = fields[i + 1]
            end
        end
        if owner ~= k.id then
            refuse('ERR_KEYS', 'keys[1] is not the job of entry ' .. entry)
        end
    end

    local job = load_job(k)
    local function drop(why)
        drop_stream_entry(stream, entry)
        if why == 'gone' then
            return {'drop', why}
        end
        return with_hash('drop', why, redis.call('HGETALL', k.job))
    end
    if not job.status then
        return drop('gone')
    end
    if job.status ~= 'queued' and job.status ~= 'running' then
        return drop('finished')
    end
    if job.stream_id ~= entry then
        return drop('stale_entry')
    end

    -- The entry must be pending (read through the group, or taken with XAUTOCLAIM):
    -- a running job always has a pending entry, so a reclaim can find it.
    if #redis.call('XPENDING', stream, GROUP, entry, entry, 1) == 0 then
        bad_arg(3, 'entry', 'is not pending in the group (read it with XREADGROUP first)')
    end

    -- The job's current entry is the truth about its queue: a record whose priority
    -- names the other stream (rewritten by hand, a migration) follows the entry, so
    -- later calls ack the right stream (dropping it would leave the job nowhere).
    if job_stream(k, job.priority) ~= stream then
        redis.call('HSET', k.job, 'priority', queue)
        job.priority = queue
    end

    local now = now_ms()
    if job.status == 'running' then
        local deadline = tonumber(redis.call('ZSCORE', k.running, k.id))
        if job.worker ~= worker and deadline and deadline > now then
            redis.call('XCLAIM', stream, GROUP, job.worker, '0', entry, 'JUSTID')
            return {'busy', job.worker}
        end
        if job.cancel_requested then
            return with_hash('canceled', '',
                             finish(k, job, 'canceled', 'canceled', now,
                                    {'message', 'canceled while its worker was lost'}))
        end
        if job.attempts >= job.max_attempts then
            local message = string.format('the worker running it was lost (attempt %d of %d)',
                                          job.attempts, job.max_attempts)
            local flat = finish(k, job, 'failed', 'failed', now,
                                {'message', message, 'error_code', 'worker_lost',
                                 'error_message', message, 'error_retryable', '1'})
            add_dead(k, maxlen, 'worker_lost', message, job.attempts)
            return with_hash('dead', int_str(job.attempts), flat)
        end
    end

    local attempt = job.attempts + 1
    if nonce == '' then
        nonce = redis.sha1hex(k.id .. ' ' .. entry .. ' ' .. worker .. ' ' .. int_str(now) ..
                              ' ' .. int_str(attempt)):sub(1, 16)
    end
    local token = int_str(attempt) .. ':' .. nonce
    local hset = {'HSET', k.job, 'status', 'running', 'stage', 'starting', 'progress', '0',
                  'message', '', 'worker', worker, 'started_at', int_str(now), 'token', token,
                  'attempts', int_str(attempt)}
    local first_claim = not job.timing_queued_s and job.created_at
    if first_claim then
        hset[#hset + 1] = 'timing_queued_s'
        hset[#hset + 1] = string.format('%.3f', (now - job.created_at) / 1000)
    end
    redis.call(unpack(hset))
    redis.call('XCLAIM', stream, GROUP, worker, '0', entry, 'JUSTID')
    redis.call('ZADD', k.running, int_str(now + visibility), k.id)
    if job.status == 'queued' then
        gauge_add(k.stats, 'queued', -1)
        redis.call('HINCRBY', k.stats, 'running', 1)
    end
    if first_claim then
        hist_observe(k.stats, 'wait', now - job.created_at)
    end
    return with_hash('run', token, (publish_job(k, 'progress')))
end

return run(main)
