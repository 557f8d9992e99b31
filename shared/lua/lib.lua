--[[
lib: helpers shared by the scripts. Redis scripts cannot load modules, so
shared/gen-scripts.sh puts this file in front of each shared/lua/NAME.lua when it
builds sep_scripts[] (the SHA1 is that of the whole text); tests that EVAL a script
from its file do the same. Only local functions: nothing global is defined.
]]

-- The error reply for a job that complete/fail may not touch: gone, or already
-- finished (nil when it is queued or running).
local function inactive_job_error(status)
    if not status then
        return redis.error_reply('NOT_FOUND no such job')
    end
    if status ~= 'queued' and status ~= 'running' then
        return redis.error_reply('NOT_ACTIVE the job is already finished')
    end
    return nil
end

-- Redis server time in milliseconds.
local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Appends ARGV[first], ARGV[first + 1], ... (name, value pairs) to list.
local function append_argv_pairs(list, first)
    for i = first, #ARGV - 1, 2 do
        list[#list + 1] = ARGV[i]
        list[#list + 1] = ARGV[i + 1]
    end
    return list
end

-- Publishes {event = event, job = <the job's hash>} on channel; returns the hash
-- as HGETALL gives it (field, value, ...) and as a table.
local function publish_job(job_key, channel, event)
    local flat = redis.call('HGETALL', job_key)
    local map = {}
    for i = 1, #flat, 2 do
        map[flat[i]] = flat[i + 1]
    end
    redis.call('PUBLISH', channel, cjson.encode({event = event, job = map}))
    return flat, map
end

-- The stream of a job's priority.
local function priority_stream(priority, q_high, q_normal)
    return (priority == 'high') and q_high or q_normal
end

-- Acknowledges and deletes a job's stream entry (XACK + XDEL), if it has one.
local function drop_stream_entry(stream, group, stream_id)
    if stream_id then
        redis.call('XACK', stream, group, stream_id)
        redis.call('XDEL', stream, stream_id)
    end
end

-- Creates a stream and its consumer group on first use (from id 0, so the first
-- entry is delivered).
local function ensure_stream(stream, group)
    if redis.call('EXISTS', stream) == 0 then
        redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    end
end

-- Lets a finished job's record expire after its result_ttl (seconds; none if unset).
local function expire_finished(job_key, ttl)
    if ttl and ttl > 0 then
        redis.call('EXPIRE', job_key, ttl)
    end
end
