--[[
promote: moves retries whose backoff is over from {p}delayed back to the stream of
their priority (workerd runs it on a timer).

KEYS[1]  {p}delayed
KEYS[2]  {p}q:high
KEYS[3]  {p}q:normal
KEYS[4..] {p}job:{id} of the ids to move: the caller reads them first, e.g.
         ZRANGE {p}delayed -inf +inf BYSCORE LIMIT 0 100
ARGV     none

For each id: not in {p}delayed, or not due yet (score > server time): left alone.
Due and its job queued in retry_wait: a new stream entry (stream and group created
when missing), stream_id set, stage back to "queued", out of the zset. Due but its
job gone or not waiting (an inconsistency): just dropped from the zset.
Reply:   the number of jobs put back in a stream
Errors:  ERR_ARG, ERR_KEYS
]]
local function main()
    if #KEYS < 3 then
        refuse('ERR_KEYS', 'promote takes {p}delayed {p}q:high {p}q:normal {p}job:{id}...')
    end
    local prefix = KEYS[1]:match('^(.*)delayed$')
    if not prefix then
        refuse('ERR_KEYS', 'keys[1] must be {p}delayed')
    end
    if KEYS[2] ~= prefix .. 'q:high' or KEYS[3] ~= prefix .. 'q:normal' then
        refuse('ERR_KEYS', 'keys[2] and keys[3] must be ' .. prefix .. 'q:high and ' .. prefix ..
                   'q:normal')
    end
    local ids = {}
    for i = 4, #KEYS do
        local head, id = KEYS[i]:sub(1, #prefix + 4), KEYS[i]:sub(#prefix + 5)
        if head ~= prefix .. 'job:' or id == '' or id:find(':', 1, true) then
            refuse('ERR_KEYS', string.format('keys[%d] must be %sjob:{id}', i, prefix))
        end
        ids[#ids + 1] = id
    end
    no_more_args(0)

    local now = now_ms()
    local moved = 0
    for i, id in ipairs(ids) do
        local score = tonumber(redis.call('ZSCORE', KEYS[1], id))
        if score and score <= now then
            redis.call('ZREM', KEYS[1], id)
            local job_key = KEYS[i + 3]
            local job = redis.call('HMGET', job_key, 'status', 'stage', 'priority', 'stream_id')
            if job[1] == 'queued' and job[2] == 'retry_wait' and not job[4] then
                local stream = (job[3] == 'high') and KEYS[2] or KEYS[3]
                ensure_stream(stream)
                local entry = redis.call('XADD', stream, '*', 'id', id)
                redis.call('HSET', job_key, 'stream_id', entry, 'stage', 'queued', 'message', '')
                moved = moved + 1
            end
        end
    end
    return moved
end

return run(main)
