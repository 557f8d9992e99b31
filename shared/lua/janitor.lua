--[[
janitor: what a worker's janitor timer needs, bounded per call.

KEYS[1]  {p}expiry       zset: finished job ids by the time (ms) their record expires
KEYS[2]  {p}running      zset: running job ids by their deadline (ms)
KEYS[3]  {p}q:high
KEYS[4]  {p}q:normal
KEYS[5]  {p}workers      zset: worker names by the time their heartbeat expires
ARGV[1]  limit: most ids in each list of the reply (integer in 1..10000)
ARGV[2]  consumer idle ms (integer >= 1): consumers idle this long with nothing
         pending are deleted
ARGV[3..] ids whose spool directories the caller removed after an earlier reply

Effects: the ids of ARGV[3..] leave {p}expiry when their record has expired (so a
         crash between reply and removal only repeats the removal); consumers of
         either group with no pending entry and idle >= ARGV[2] are deleted
         (XGROUP DELCONSUMER: nothing is lost, a live worker is recreated by its
         next XREADGROUP); names whose heartbeat expired leave {p}workers.
Reply:   {expired, overdue, consumers}
           expired    up to limit ids whose record has expired: remove
                      {spool}/{id}/, then pass the ids back in ARGV[3..]
           overdue    up to limit id, deadline_ms pairs of running jobs past their
                      deadline (their worker is gone): XAUTOCLAIM reclaims them;
                      force_cancel those whose cancel was requested
           consumers  queue ("high" | "normal"), name pairs of deleted consumers
Errors:  ERR_ARG, ERR_KEYS
]]
local function main()
    local prefix = #KEYS == 5 and KEYS[1]:match('^(.*)expiry$')
    if not prefix then
        refuse('ERR_KEYS', 'janitor takes {p}expiry {p}running {p}q:high {p}q:normal {p}workers')
    end
    for i, suffix in ipairs({'running', 'q:high', 'q:normal', 'workers'}) do
        if KEYS[i + 1] ~= prefix .. suffix then
            refuse('ERR_KEYS', string.format('keys[%d] must be %s%s', i + 1, prefix, suffix))
        end
    end
    local limit = arg_int(1, 'limit', 1, 10000)
    local idle_ms = arg_int(2, 'consumer_idle_ms', 1)
    for i = 3, #ARGV do
        if ARGV[i] == '' or #ARGV[i] > 255 or ARGV[i]:find(':', 1, true) then
            bad_arg(i, 'id', 'must be a job id')
        end
    end

    local now = now_ms()
    for i = 3, #ARGV do
        local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i]))
        if score and score <= now then
            redis.call('ZREM', KEYS[1], ARGV[i])
        end
    end
    local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int_str(now), 'LIMIT', 0, limit)
    local overdue = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', int_str(now), 'WITHSCORES',
                               'LIMIT', 0, limit)

    local consumers = {}
    for i, queue in ipairs({'high', 'normal'}) do
        local stream = KEYS[i + 2]
        local list = {}
        if redis.call('EXISTS', stream) == 1 then
            local r = redis.pcall('XINFO', 'CONSUMERS', stream, GROUP)
            if type(r) == 'table' and not r.err then
                list = r
            end
        end
        for _, c in ipairs(list) do
            local info = {}
            for j = 1, #c, 2 do
                info[c[j]] = c[j + 1]
            end
            if tonumber(info.pending) == 0 and tonumber(info.idle) and
                tonumber(info.idle) >= idle_ms then
                redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, info.name)
                consumers[#consumers + 1] = queue
                consumers[#consumers + 1] = info.name
            end
        end
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', '(' .. int_str(now))
    return {expired, overdue, consumers}
end

return run(main)
