--[[
complete: a worker has written every stem (temp file + rename into {spool}/{id}/)
and finishes the job. Tests use it to stand in for workerd; it accepts a job that
was never claimed (still queued) as well as a running one.

KEYS[1]  {p}job:{id}
KEYS[2]  {p}stats
KEYS[3]  {p}q:high
KEYS[4]  {p}q:normal
KEYS[5]  {p}delayed
ARGV[1]  event channel {p}ev:{id}
ARGV[2]  consumer group name ("workers")
ARGV[3]  stems as JSON: {"vocals": {"file": "vocals.wav", "bytes": 123}, ...}
         (file names relative to {spool}/{id}/)
ARGV[4]  total bytes written (stats bytes_out), may be "0"
ARGV[5..] more job fields as name, value pairs (timing_decode_s,
         timing_separate_s, timing_encode_s, audio_seconds, audio_sample_rate,
         audio_channels, ...), optional

Effects: status completed, progress 1, stage done, finished_at, stems; error fields
         cleared; the stream entry acknowledged and deleted (XACK + XDEL); the
         record expires after its result_ttl; counters completed +1, bytes_out;
         gauge running -1 (or queued -1); a "completed" event.
Reply:   "OK"
Errors (the first word of the error is its code):
         "NOT_FOUND" (no such job), "NOT_ACTIVE" (already completed, failed or
         canceled), "BAD_STEMS" (ARGV[3] is not a JSON object)
]]
local job_key, stats_key, q_high, q_normal, delayed_key =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local channel, group, stems, bytes_out = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]) or 0

local job = redis.call('HMGET', job_key, 'id', 'status', 'priority', 'stream_id',
                       'result_ttl', 'created_at', 'timing_queued_s')
local id, status, priority, stream_id, ttl = job[1], job[2], job[3], job[4], tonumber(job[5])
local refused = inactive_job_error(status)
if refused then
    return refused
end
local ok, decoded = pcall(cjson.decode, stems)
if not ok or type(decoded) ~= 'table' then
    return redis.error_reply('BAD_STEMS stems must be a JSON object')
end

local now = now_ms()
local hset = {'HSET', job_key, 'status', 'completed', 'progress', '1', 'stage', 'done',
              'message', '', 'finished_at', now, 'stems', stems}
if not job[7] and tonumber(job[6]) then
    hset[#hset + 1] = 'timing_queued_s'
    hset[#hset + 1] = string.format('%.3f', (now - tonumber(job[6])) / 1000)
end
redis.call(unpack(append_argv_pairs(hset, 5)))
redis.call('HDEL', job_key, 'error_code', 'error_message', 'error_retryable', 'stream_id')

drop_stream_entry(priority_stream(priority, q_high, q_normal), group, stream_id)
redis.call('ZREM', delayed_key, id)

redis.call('HINCRBY', stats_key, 'completed', 1)
redis.call('HINCRBY', stats_key, status, -1)
if bytes_out > 0 then
    redis.call('HINCRBY', stats_key, 'bytes_out', bytes_out)
end
expire_finished(job_key, ttl)

publish_job(job_key, channel, 'completed')
return redis.status_reply('OK')
