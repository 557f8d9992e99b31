--[[
submit: create a job and queue it (one atomic step; run by the nginx module).

KEYS[1]  {p}job:{id}                 the new job's hash
KEYS[2]  {p}stats
KEYS[3]  {p}q:high
KEYS[4]  {p}q:normal                 (the job goes to the stream of its priority)
KEYS[5]  {p}idem:{key}               only when the request had an Idempotency-Key
KEYS[6]  {p}job:{earlier id}         only when repeating the call after a "lookup"
ARGV[1]  job id (the {id} of KEYS[1])
ARGV[2]  max queued jobs (integer >= 0, 0 = no limit; compared with the gauge
         "queued")
ARGV[3]  idempotency key TTL in seconds (integer in 1..MAX_TTL, 10 years)
ARGV[4]  deadline: Redis time in ms (integer >= 0, 0 = none) after which the call
         is refused with PAST_DEADLINE and writes nothing (the caller stopped
         waiting for the reply at that time and told its client the submit failed)
ARGV[5..] job fields as name, value pairs (see shared/sep_job.h), each at most
         once: model, stems_option, format, input_type (1..64 of [A-Za-z0-9_.-]),
         input (a plain file name), priority ("high" | "normal"), shifts,
         input_bytes (integers >= 0), overlap (a finite number), max_attempts (integer >= 1),
         result_ttl (integer in 1..MAX_TTL); priority, max_attempts and result_ttl are
         required

Reply:   {"created", field, value, ...}  the new job's hash (all its fields)
         {"exists", field, value, ...}   the job the idempotency key names
                                         (nothing was written)
         {"lookup", id}                  the idempotency key names job id, which
                                         was not given as KEYS[6]: call again with
                                         KEYS[6] = {p}job:{id} (nothing written; if
                                         that job has expired, the repeated call
                                         creates the new job and moves the key)
Errors:  PAST_DEADLINE <now> <deadline>  run after ARGV[4]'s deadline (nothing written)
         QUEUE_FULL <queued> <max>       backpressure: the queue is full
         JOB_EXISTS                      the id is taken (never with random ids)
         ERR_ARG, ERR_KEYS

The stream and its consumer group "workers" are created on first use (from id 0,
so the first entry is delivered). Counters: submitted +1, bytes_in +input_bytes,
gauge queued +1.

Every check comes before the first write, and the idempotency key (the write with
an argument Redis itself checks: the TTL) is the first write: a call that fails
leaves nothing behind.
]]
local WORD = '^[%w_%.%-]+$'
local FIELDS = {
    model = 'word', stems_option = 'word', format = 'word', input_type = 'word',
    input = 'file', priority = 'priority', shifts = 'count0', input_bytes = 'count0',
    overlap = 'number', max_attempts = 'count1', result_ttl = 'ttl',
}
local MAX_TTL = 315360000 -- 10 years, in seconds: far below what EXPIRE accepts
local REQUIRED = {'priority', 'max_attempts', 'result_ttl'}

local function main()
    if #KEYS < 4 or #KEYS > 6 then
        refuse('ERR_KEYS', 'submit takes 4 to 6 keys')
    end
    local prefix, id = KEYS[1]:match('^(.*)job:([^:]+)$')
    if not prefix then
        refuse('ERR_KEYS', 'keys[1] must be {p}job:{id}')
    end
    for i, suffix in ipairs({'stats', 'q:high', 'q:normal'}) do
        if KEYS[i + 1] ~= prefix .. suffix then
            refuse('ERR_KEYS', string.format('keys[%d] must be %s%s', i + 1, prefix, suffix))
        end
    end
    local idem_key, earlier_key = KEYS[5], KEYS[6]
    if idem_key and (idem_key:sub(1, #prefix + 5) ~= prefix .. 'idem:' or #idem_key == #prefix + 5) then
        refuse('ERR_KEYS', 'keys[5] must be ' .. prefix .. 'idem:{key}')
    end
    if earlier_key and not earlier_key:match('job:[^:]+$') then
        refuse('ERR_KEYS', 'keys[6] must be ' .. prefix .. 'job:{id}')
    end
    if arg_present(1, 'id') ~= id then
        bad_arg(1, 'id', 'must be the {id} of keys[1]')
    end
    local max_queued = arg_int(2, 'max_queued', 0)
    local idem_ttl = arg_int(3, 'idempotency_ttl', 1, MAX_TTL)
    local deadline = arg_int(4, 'deadline_ms', 0)
    if (#ARGV - 4) % 2 ~= 0 then
        bad_arg(#ARGV, 'field pairs', 'must come as name, value pairs')
    end
    local fields = {}
    for i = 5, #ARGV, 2 do
        local name, value = ARGV[i], ARGV[i + 1]
        local kind = FIELDS[name]
        if not kind then
            bad_arg(i, 'field', '"' .. shown(name) .. '" is not a field submit may set')
        end
        if fields[name] then
            bad_arg(i, 'field', '"' .. name .. '" is given twice')
        end
        local v
        if kind == 'word' then
            if #value > 64 or not value:match(WORD) then
                bad_arg(i + 1, name, 'must be 1..64 of [A-Za-z0-9_.-]')
            end
        elseif kind == 'file' then
            if #value > 255 or not value:match(WORD) or value == '.' or value == '..' then
                bad_arg(i + 1, name, 'must be a plain file name')
            end
        elseif kind == 'priority' then
            if value ~= 'high' and value ~= 'normal' then
                bad_arg(i + 1, name, 'must be "high" or "normal"')
            end
        elseif kind == 'number' then
            if parse_number(value) == nil then
                bad_arg(i + 1, name, 'must be a finite number')
            end
        elseif kind == 'ttl' then
            v = parse_int(value)
            if v == nil or v < 1 or v > MAX_TTL then
                bad_arg(i + 1, name, string.format('must be an integer in 1..%d', MAX_TTL))
            end
        else
            v = parse_int(value)
            local min = (kind == 'count1') and 1 or 0
            if v == nil or v < min then
                bad_arg(i + 1, name, string.format('must be an integer >= %d', min))
            end
        end
        fields[name] = value
    end
    for _, name in ipairs(REQUIRED) do
        if not fields[name] then
            bad_arg(#ARGV + 1, name, 'is required')
        end
    end

    local now = now_ms()
    if deadline > 0 and now > deadline then
        refuse('PAST_DEADLINE', int_str(now) .. ' ' .. int_str(deadline))
    end

    if idem_key then
        local existing = redis.call('GET', idem_key)
        if existing then
            if earlier_key ~= prefix .. 'job:' .. existing then
                return {'lookup', existing}
            end
            local flat = redis.call('HGETALL', earlier_key)
            if #flat > 0 then
                table.insert(flat, 1, 'exists')
                return flat
            end
        end
    end

    if max_queued > 0 then
        local queued = tonumber(redis.call('HGET', KEYS[2], 'queued') or '0') or 0
        if queued >= max_queued then
            refuse('QUEUE_FULL', int_str(queued) .. ' ' .. int_str(max_queued))
        end
    end
    if redis.call('EXISTS', KEYS[1]) == 1 then
        refuse('JOB_EXISTS', 'the job id is taken')
    end

    -- The writes. The idempotency key first: SET checks its TTL itself.
    if idem_key then
        redis.call('SET', idem_key, id, 'EX', int_str(idem_ttl))
    end
    local stream = (fields.priority == 'high') and KEYS[3] or KEYS[4]
    ensure_stream(stream)
    local entry = redis.call('XADD', stream, '*', 'id', id)
    local hset = {'HSET', KEYS[1], 'id', id, 'status', 'queued', 'progress', '0',
                  'stage', 'queued', 'message', '', 'attempts', '0', 'created_at', int_str(now)}
    for i = 5, #ARGV do
        hset[#hset + 1] = ARGV[i]
    end
    hset[#hset + 1] = 'stream_id'
    hset[#hset + 1] = entry
    redis.call(unpack(hset))

    redis.call('HINCRBY', KEYS[2], 'submitted', 1)
    redis.call('HINCRBY', KEYS[2], 'queued', 1)
    if fields.input_bytes and fields.input_bytes ~= '0' then
        redis.call('HINCRBY', KEYS[2], 'bytes_in', int_str(parse_int(fields.input_bytes)))
    end

    -- The new hash is exactly what was just written: answer it without reading it back.
    hset[1] = 'created'
    table.remove(hset, 2)
    return hset
end

return run(main)
