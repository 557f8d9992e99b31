--[[
stats: everything the operations endpoints show, read in one call (the module's
GET /v1/stats, GET /metrics and GET /v1/models; workerd inspect). Reads only.

KEYS[1]  {p}stats      KEYS[2]  {p}q:high    KEYS[3]  {p}q:normal
KEYS[4]  {p}delayed    KEYS[5]  {p}dead      KEYS[6]  {p}running
KEYS[7]  {p}workers
ARGV[1]  most workers to list (integer in 1..10000)

The script also reads {p}worker:{name} for each live name in {p}workers (at most
ARGV[1] of them, by the time their heartbeat expires): keys it cannot name in KEYS
before it has read the zset. They share the prefix, hence its hash tag, so they are
in the same Cluster slot as KEYS[1].

Reply: a JSON object (text):
  now_ms       Redis server time
  stats        {p}stats as field -> integer (counters, gauges, hist_* buckets)
  queues       {high = {length, pending}, normal = ...}: XLEN of the stream and the
               entries pending in the group (claimed by a worker: running jobs);
               length - pending entries wait for a worker
  delayed      ZCARD {p}delayed (jobs waiting for a retry)
  dead         XLEN {p}dead
  running      ZCARD {p}running
  workers      one object per live worker: its heartbeat hash (field -> text; bytes
               above 127 in a value are written as "?", so the reply is always UTF-8)
  workers_total  the number of live names in {p}workers
  buckets      {wait = {bound, ...}, processing = {...}}: the histogram bounds
               (seconds, as text) of the hist_* fields
Errors:  ERR_ARG, ERR_KEYS
]]
local SUFFIXES = {'stats', 'q:high', 'q:normal', 'delayed', 'dead', 'running', 'workers'}

local function queue(stream)
    local length = redis.call('XLEN', stream)
    local pending = 0
    if length > 0 then
        local ok, summary = pcall(redis.call, 'XPENDING', stream, GROUP)
        if ok and type(summary) == 'table' then
            pending = tonumber(summary[1]) or 0
        end
    end
    return {length = length, pending = pending}
end

local function main()
    if #KEYS ~= #SUFFIXES then
        refuse('ERR_KEYS', string.format('%d keys given; stats takes %d', #KEYS, #SUFFIXES))
    end
    local prefix = KEYS[1]:match('^(.*)stats$')
    if not prefix then
        refuse('ERR_KEYS', 'keys[1] must be {p}stats')
    end
    for i, suffix in ipairs(SUFFIXES) do
        if KEYS[i] ~= prefix .. suffix then
            refuse('ERR_KEYS', string.format('keys[%d] must be %s%s', i, prefix, suffix))
        end
    end
    local limit = arg_int(1, 'limit', 1, 10000)
    no_more_args(1)

    local now = now_ms()
    local stats = {}
    local flat = redis.call('HGETALL', KEYS[1])
    for i = 1, #flat, 2 do
        stats[flat[i]] = tonumber(flat[i + 1]) or 0
    end
    local names = redis.call('ZRANGE', KEYS[7], '(' .. int_str(now), '+inf', 'BYSCORE',
                             'LIMIT', 0, limit)
    local workers = {}
    for _, name in ipairs(names) do
        local h = redis.call('HGETALL', prefix .. 'worker:' .. name)
        if #h > 0 then
            local w = {}
            for i = 1, #h, 2 do
                -- a value may hold any bytes; the reply must be valid UTF-8 JSON
                w[h[i]] = (h[i + 1]:gsub('[\128-\255]', '?'))
            end
            workers[#workers + 1] = w
        end
    end
    return cjson.encode({
        now_ms = now,
        stats = stats,
        queues = {high = queue(KEYS[2]), normal = queue(KEYS[3])},
        delayed = redis.call('ZCARD', KEYS[4]),
        dead = redis.call('XLEN', KEYS[5]),
        running = redis.call('ZCARD', KEYS[6]),
        workers = workers,
        workers_total = redis.call('ZCOUNT', KEYS[7], '(' .. int_str(now), '+inf'),
        buckets = HIST_BUCKETS,
    })
end

return run(main)
