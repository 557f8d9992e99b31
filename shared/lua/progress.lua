--[[
progress: a worker reports how far a running job is.

KEYS[1]  {p}job:{id}
ARGV[1]  event channel {p}ev:{id}
ARGV[2]  progress, 0..1 (clamped)
ARGV[3]  stage (decode, separate, encode, ...; "" keeps the current one)
ARGV[4]  message ("" clears it)
ARGV[5..] more job fields as name, value pairs (e.g. audio_seconds,
         audio_sample_rate, audio_channels, timing_decode_s), optional

Reply:   1 when a cancel was requested (the worker should stop and call fail.lua
         with code "canceled"), else 0. Publishes a "progress" event.
Errors (the first word of the error is its code):
         "NOT_RUNNING" when the job is not running (gone, canceled, finished)
]]
local job_key, channel = KEYS[1], ARGV[1]

local status = redis.call('HGET', job_key, 'status')
if status ~= 'running' then
    return redis.error_reply('NOT_RUNNING the job is not running')
end

local progress = tonumber(ARGV[2]) or 0
if progress < 0 then
    progress = 0
elseif progress > 1 then
    progress = 1
end
local hset = {'HSET', job_key, 'progress', tostring(progress), 'message', ARGV[4] or ''}
if ARGV[3] and ARGV[3] ~= '' then
    hset[#hset + 1] = 'stage'
    hset[#hset + 1] = ARGV[3]
end
redis.call(unpack(append_argv_pairs(hset, 5)))

local _, map = publish_job(job_key, channel, 'progress')
return map['cancel_requested'] == '1' and 1 or 0
