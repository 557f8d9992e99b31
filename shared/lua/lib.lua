--[[
lib: helpers shared by the scripts. Redis scripts cannot load modules, so
shared/gen-scripts.sh puts this file in front of each shared/lua/NAME.lua when it
builds sep_scripts[] (the SHA1 is that of the whole text); tests that EVAL a script
from its file do the same. Only local functions: nothing global is defined.

Every script is `return run(main)`: main() first checks its KEYS and every ARGV
(refuse() raises "CODE message", which run() answers as a clean error reply), and
only then writes. Redis does not roll back a script that errors half-way, so no
check may come after the first write. The contract is in shared/README.md.
]]

local GROUP = 'workers'

-- Raises the error reply "CODE message" (answered by run()).
local function refuse(code, message)
    error({err = code .. ' ' .. message})
end

-- Runs main and answers its refusal as an error reply without Redis' "script:"
-- suffix (Redis 7's pcall hands an error table over as its message string); any
-- other Lua error becomes "ERR_SCRIPT <message>".
local function run(main)
    local ok, result = pcall(main)
    if ok then
        return result
    end
    if type(result) == 'table' and result.err then
        result = result.err
    end
    result = tostring(result)
    if result:match('^[A-Z][A-Z_]* ') then
        return redis.error_reply(result)
    end
    return redis.error_reply('ERR_SCRIPT ' .. result)
end

-- A value for an error message: at most 40 bytes, controls replaced.
local function shown(s)
    return (tostring(s):sub(1, 40):gsub('[%c]', '?'))
end

local function bad_arg(n, name, what)
    refuse('ERR_ARG', string.format('argv[%d] %s %s', n, name, what))
end

-- Redis server time in milliseconds.
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- An integer as text for a Redis argument (Lua would write 1e+15).
local function int_str(v)
    return string.format('%d', v)
end

-- Decimal integer text (no sign but "-", no spaces, no hex, at most 15 digits so
-- it is exact in a double), or nil.
local function parse_int(s)
    if type(s) ~= 'string' or not s:match('^%-?%d+$') or #s:gsub('^%-', '') > 15 then
        return nil
    end
    return tonumber(s)
end

-- A finite decimal number ("0.25", "-3", "1e-05"), or nil (nan, inf, hex, "").
local function parse_number(s)
    if type(s) ~= 'string' or #s > 32 then
        return nil
    end
    local mantissa = s:match('^(%-?%d*%.?%d*)$') or s:match('^(%-?%d*%.?%d*)[eE][-+]?%d+$')
    if not mantissa or not mantissa:match('%d') then
        return nil
    end
    local v = tonumber(s)
    if v == nil or v ~= v or v == math.huge or v == -math.huge then
        return nil
    end
    return v
end

local function arg_present(n, name)
    local v = ARGV[n]
    if v == nil then
        bad_arg(n, name, 'is missing')
    end
    return v
end

-- ARGV[n], a message for the record: present (may be ""), at most 1024 bytes.
local function arg_message(n)
    local message = arg_present(n, 'message')
    if #message > 1024 then
        bad_arg(n, 'message', 'must be at most 1024 bytes')
    end
    return message
end

-- ARGV[n] as an integer >= min (and <= max when given).
local function arg_int(n, name, min, max)
    local v = parse_int(arg_present(n, name))
    if v == nil or v < min or (max and v > max) then
        if max then
            bad_arg(n, name, string.format('must be an integer in %d..%d', min, max))
        end
        bad_arg(n, name, string.format('must be an integer >= %d', min))
    end
    return v
end

-- ARGV[n] as a finite number.
local function arg_number(n, name)
    local v = parse_number(arg_present(n, name))
    if v == nil then
        bad_arg(n, name, 'must be a finite number')
    end
    return v
end

-- ARGV[n] when it matches a Lua pattern and is at most max_len bytes.
local function arg_match(n, name, pattern, max_len, what)
    local v = arg_present(n, name)
    if #v > max_len or not v:match(pattern) then
        bad_arg(n, name, what)
    end
    return v
end

-- ARGV[n] when it is one of the keys of set.
local function arg_oneof(n, name, set, what)
    local v = arg_present(n, name)
    if not set[v] then
        bad_arg(n, name, what)
    end
    return v
end

-- Refuses ARGV beyond the last one a script takes.
local function no_more_args(last)
    if #ARGV > last then
        bad_arg(last + 1, 'argument', 'is one more than this script takes')
    end
end

local VISIBLE = '^[\33-\126]+$'

-- Fields a worker may set through trailing name, value pairs (progress, complete,
-- fail), with the kind of value each takes. Everything else is reserved.
local WORKER_FIELDS = {
    audio_seconds = 'number',
    timing_decode_s = 'number',
    timing_separate_s = 'number',
    timing_encode_s = 'number',
    audio_sample_rate = 'count',
    audio_channels = 'count',
    device = 'word',
}

-- ARGV[first..] as checked worker field pairs, returned as a flat list.
local function arg_worker_pairs(first)
    local out, seen = {}, {}
    if (#ARGV - first + 1) % 2 ~= 0 then
        bad_arg(#ARGV, 'field pairs', 'must come as name, value pairs')
    end
    for i = first, #ARGV, 2 do
        local name, value = ARGV[i], ARGV[i + 1]
        local kind = WORKER_FIELDS[name]
        if not kind then
            bad_arg(i, 'field', '"' .. shown(name) .. '" is not a field a worker may set')
        end
        if seen[name] then
            bad_arg(i, 'field', '"' .. name .. '" is given twice')
        end
        seen[name] = true
        if kind == 'number' then
            local v = parse_number(value)
            if v == nil or v < 0 then
                bad_arg(i + 1, name, 'must be a finite number >= 0')
            end
        elseif kind == 'count' then
            local v = parse_int(value)
            if v == nil or v < 1 then
                bad_arg(i + 1, name, 'must be an integer >= 1')
            end
        elseif #value < 1 or #value > 64 or not value:match(VISIBLE) then
            bad_arg(i + 1, name, 'must be 1..64 visible ASCII bytes')
        end
        out[#out + 1] = name
        out[#out + 1] = value
    end
    return out
end

-- The 8 KEYS every job script takes (shared/README.md), checked against the prefix
-- and id of KEYS[1] = {p}job:{id}; returns them by name, with the event channel.
local JOB_KEY_SUFFIXES = {'stats', 'q:high', 'q:normal', 'delayed', 'running', 'expiry', 'dead'}
local function job_keys(extra)
    if #KEYS ~= 8 and not (extra and #KEYS > 8 and #KEYS <= 8 + extra) then
        refuse('ERR_KEYS', string.format('%d keys given; job scripts take 8', #KEYS)
                               .. (extra and string.format(' (+ up to %d)', extra) or ''))
    end
    local prefix, id = KEYS[1]:match('^(.*)job:([^:]+)$')
    if not prefix then
        refuse('ERR_KEYS', 'keys[1] must be {p}job:{id}')
    end
    for i, suffix in ipairs(JOB_KEY_SUFFIXES) do
        if KEYS[i + 1] ~= prefix .. suffix then
            refuse('ERR_KEYS', string.format('keys[%d] must be %s%s', i + 1, prefix, suffix))
        end
    end
    return {job = KEYS[1], stats = KEYS[2], q_high = KEYS[3], q_normal = KEYS[4],
            delayed = KEYS[5], running = KEYS[6], expiry = KEYS[7], dead = KEYS[8],
            prefix = prefix, id = id, channel = prefix .. 'ev:' .. id}
end

-- The fields of a job the scripts decide on (nil members when absent).
local function load_job(k)
    local v = redis.call('HMGET', k.job, 'status', 'priority', 'stream_id', 'result_ttl',
                         'attempts', 'max_attempts', 'cancel_requested', 'token', 'worker',
                         'timing_queued_s', 'stage', 'created_at')
    return {status = v[1] or nil, priority = v[2] or nil, stream_id = v[3] or nil,
            result_ttl = tonumber(v[4]), attempts = tonumber(v[5]) or 0,
            max_attempts = tonumber(v[6]) or 1, cancel_requested = v[7] == '1',
            token = v[8] or nil, worker = v[9] or nil, timing_queued_s = v[10] or nil,
            stage = v[11] or nil, created_at = tonumber(v[12])}
end

local function job_stream(k, priority)
    return (priority == 'high') and k.q_high or k.q_normal
end

-- Refuses unless the job runs under token (NOT_FOUND, NOT_RUNNING, STALE).
local function require_live(job, token)
    if not job.status then
        refuse('NOT_FOUND', 'no such job')
    end
    if job.status ~= 'running' then
        refuse('NOT_RUNNING', job.status)
    end
    if job.token ~= token then
        refuse('STALE', 'attempt ' .. ((job.token or ''):match('^(%d+):') or '?') .. ' is live')
    end
end

-- The attempt token ARGV[n], checked for its shape.
local function arg_token(n)
    return arg_match(n, 'token', '^%d+:[0-9a-f]+$', 90, 'must be <attempt>:<hex> as claim gave it')
end

-- Publishes {event = event, job = <the job's hash>} on the job's channel; returns
-- the hash as HGETALL gives it (field, value, ...) and as a table. Each event first
-- increments the job's `seq` field: it orders the events of one job (the id of an
-- SSE event, GET /v1/jobs/{id}/events) and tells which events a record read already
-- covers.
local function publish_job(k, event)
    redis.call('HINCRBY', k.job, 'seq', 1)
    local flat = redis.call('HGETALL', k.job)
    local map = {}
    for i = 1, #flat, 2 do
        map[flat[i]] = flat[i + 1]
    end
    redis.call('PUBLISH', k.channel, cjson.encode({event = event, job = map}))
    return flat, map
end

-- {reason, detail, field, value, ...}; without detail when it is nil.
local function with_hash(reason, detail, flat)
    local out = {reason}
    if detail ~= nil then
        out[2] = detail
    end
    for i = 1, #flat do
        out[#out + 1] = flat[i]
    end
    return out
end

-- Acknowledges and deletes a stream entry (XACK + XDEL), if there is one.
local function drop_stream_entry(stream, entry)
    if entry then
        redis.call('XACK', stream, GROUP, entry)
        redis.call('XDEL', stream, entry)
    end
end

-- Creates a stream and its consumer group on first use (from id 0, so the first
-- entry is delivered).
local function ensure_stream(stream)
    if redis.call('EXISTS', stream) == 0 then
        redis.call('XGROUP', 'CREATE', stream, GROUP, '0', 'MKSTREAM')
    end
end

-- Adds delta to a {p}stats gauge, never below 0.
local function gauge_add(stats, name, delta)
    if redis.call('HINCRBY', stats, name, delta) < 0 then
        redis.call('HSET', stats, name, '0')
    end
end

-- Moves an active (queued or running) job to a terminal status: its stream entry
-- XACK + XDEL'd, out of {p}delayed and {p}running, token and stream_id removed,
-- its gauge -1 and counter +1, a TTL of result_ttl and an {p}expiry entry.
-- fields: more HSET pairs. Publishes event (the terminal status); returns the hash.
local function finish(k, job, status, stage, now, fields)
    drop_stream_entry(job_stream(k, job.priority), job.stream_id)
    redis.call('ZREM', k.delayed, k.id)
    redis.call('ZREM', k.running, k.id)
    local hset = {'HSET', k.job, 'status', status, 'stage', stage, 'finished_at', int_str(now)}
    for i = 1, #fields do
        hset[#hset + 1] = fields[i]
    end
    redis.call(unpack(hset))
    redis.call('HDEL', k.job, 'stream_id', 'token')
    gauge_add(k.stats, job.status, -1)
    redis.call('HINCRBY', k.stats, status, 1)
    local ttl = job.result_ttl
    if not ttl or ttl < 1 then
        ttl = 86400
    end
    redis.call('EXPIRE', k.job, ttl)
    redis.call('ZADD', k.expiry, int_str(now + ttl * 1000), k.id)
    return (publish_job(k, status))
end

-- Appends a {p}dead entry, capped at about maxlen entries.
local function add_dead(k, maxlen, code, message, attempts)
    redis.call('XADD', k.dead, 'MAXLEN', '~', int_str(maxlen), '*', 'id', k.id, 'code', code,
               'message', message, 'attempts', int_str(attempts))
end

-- Histogram buckets of {p}stats (upper bounds in seconds, as the field names spell
-- them): queue wait (created_at to first claim) and processing time (started_at of
-- the attempt that completed to completion). Field hist_<name>_le_<bound> counts the
-- observations <= bound (cumulative, as Prometheus' le buckets); hist_<name>_count
-- counts them all (the +Inf bucket) and hist_<name>_sum_ms adds them up in ms.
local HIST_BUCKETS = {
    wait = {'0.1', '0.5', '1', '5', '15', '60', '300', '900', '3600'},
    processing = {'1', '5', '10', '30', '60', '120', '300', '600', '1800', '3600'},
}

-- Counts one observation of ms milliseconds (>= 0) in histogram name.
local function hist_observe(stats, name, ms)
    if ms < 0 then
        ms = 0
    end
    for _, bound in ipairs(HIST_BUCKETS[name]) do
        if ms <= tonumber(bound) * 1000 then
            redis.call('HINCRBY', stats, 'hist_' .. name .. '_le_' .. bound, 1)
        end
    end
    redis.call('HINCRBY', stats, 'hist_' .. name .. '_count', 1)
    redis.call('HINCRBY', stats, 'hist_' .. name .. '_sum_ms', int_str(ms))
end
