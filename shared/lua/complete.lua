--[[
complete: a worker has written every stem (temp file + rename into {spool}/{id}/)
and finishes the job it runs.

KEYS     the job KEYS (shared/README.md)
ARGV[1]  token (from claim)
ARGV[2]  stems as a JSON object: {"vocals": {"file": "vocals.wav", "bytes": 123}, ...}
         (each file a plain name in {spool}/{id}/: no "/", not "." or "..";
         bytes an integer >= 0)
ARGV[3]  total bytes written (integer >= 0; counter bytes_out)
ARGV[4..] worker field pairs (shared/README.md: audio_seconds, audio_sample_rate,
         audio_channels, timing_*_s, device), optional

Effects: status completed, progress 1, stage done, message "", finished_at, stems;
         error fields and token removed; the stream entry XACK + XDEL'd; out of
         {p}running and {p}delayed; the record expires after its result_ttl and is
         scored in {p}expiry; counters completed +1, bytes_out, audio_ms (the
         audio_seconds pair in ms); the processing-time histogram of {p}stats
         (hist_processing_*: now - started_at); gauge running -1; a "completed" event.
Reply:   "OK"
Errors:  NOT_FOUND, NOT_RUNNING <status>, STALE attempt <n> is live,
         BAD_STEMS <why>, ERR_ARG, ERR_KEYS
]]
local function check_stems(text)
    local ok, decoded = pcall(cjson.decode, text)
    if not ok or type(decoded) ~= 'table' then
        refuse('BAD_STEMS', 'stems must be a JSON object')
    end
    local count = 0
    for name, stem in pairs(decoded) do
        count = count + 1
        if type(name) ~= 'string' or not name:match('^[a-z0-9_]+$') or #name > 64 then
            refuse('BAD_STEMS', 'stem names must be 1..64 of [a-z0-9_]')
        end
        if type(stem) ~= 'table' or type(stem.file) ~= 'string' or stem.file == '' or
            #stem.file > 255 or stem.file:find('/', 1, true) or stem.file == '.' or
            stem.file == '..' or stem.file:find('%c') then
            refuse('BAD_STEMS', 'stem "' .. name .. '" needs a plain file name')
        end
        if type(stem.bytes) ~= 'number' or stem.bytes < 0 or stem.bytes ~= math.floor(stem.bytes) or
            stem.bytes > 9007199254740991 then
            refuse('BAD_STEMS', 'stem "' .. name .. '" needs bytes, an integer >= 0')
        end
    end
    if count == 0 then
        refuse('BAD_STEMS', 'stems must name at least one stem')
    end
end

local function main()
    local k = job_keys()
    local token = arg_token(1)
    local stems = arg_present(2, 'stems')
    local bytes_out = arg_int(3, 'bytes_out', 0)
    local extra = arg_worker_pairs(4)
    local job = load_job(k)
    require_live(job, token)
    check_stems(stems)

    local now = now_ms()
    local started_at = tonumber(redis.call('HGET', k.job, 'started_at'))
    redis.call('HDEL', k.job, 'error_code', 'error_message', 'error_retryable')
    local fields = {'progress', '1', 'message', '', 'stems', stems}
    for i = 1, #extra do
        fields[#fields + 1] = extra[i]
    end
    finish(k, job, 'completed', 'done', now, fields)
    if bytes_out > 0 then
        redis.call('HINCRBY', k.stats, 'bytes_out', int_str(bytes_out))
    end
    if started_at then
        hist_observe(k.stats, 'processing', now - started_at)
    end
    for i = 1, #extra, 2 do
        if extra[i] == 'audio_seconds' then
            local ms = math.floor(tonumber(extra[i + 1]) * 1000 + 0.5)
            if ms > 0 and ms < 1e15 then
                redis.call('HINCRBY', k.stats, 'audio_ms', int_str(ms))
            end
        end
    end
    return redis.status_reply('OK')
end

return run(main)
