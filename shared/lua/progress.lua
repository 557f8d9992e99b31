--[[
progress: a worker reports how far a job it runs is.

KEYS     the job KEYS (shared/README.md)
ARGV[1]  token (from claim)
ARGV[2]  progress: a finite number, clamped to 0..1
ARGV[3]  stage: "" keeps the current one, else 1..32 of [a-z0-9_] (decode,
         separate, encode, ...)
ARGV[4]  message ("" clears it; at most 1024 bytes)
ARGV[5..] worker field pairs (shared/README.md: audio_seconds, audio_sample_rate,
         audio_channels, timing_*_s, device), optional

Reply:   1 when a cancel was requested (the worker stops and calls fail with code
         "canceled"), else 0. Publishes a "progress" event. Does not renew the
         claim: only touch does.
Errors:  NOT_FOUND, NOT_RUNNING <status>, STALE attempt <n> is live, ERR_ARG, ERR_KEYS
]]
local function main()
    local k = job_keys()
    local token = arg_token(1)
    local progress = arg_number(2, 'progress')
    local stage = arg_present(3, 'stage')
    if stage ~= '' and (#stage > 32 or not stage:match('^[a-z0-9_]+$')) then
        bad_arg(3, 'stage', 'must be "" or 1..32 of [a-z0-9_]')
    end
    local message = arg_message(4)
    local extra = arg_worker_pairs(5)
    local job = load_job(k)
    require_live(job, token)

    if progress < 0 then
        progress = 0
    elseif progress > 1 then
        progress = 1
    end
    local hset = {'HSET', k.job, 'progress', string.format('%.4g', progress), 'message', message}
    if stage ~= '' then
        hset[#hset + 1] = 'stage'
        hset[#hset + 1] = stage
    end
    for i = 1, #extra do
        hset[#hset + 1] = extra[i]
    end
    redis.call(unpack(hset))
    publish_job(k, 'progress')
    return job.cancel_requested and 1 or 0
end

return run(main)
