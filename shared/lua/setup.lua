--[[
setup: creates both queues and their consumer group "workers" (workerd at start;
submit and promote also create a stream on first use). Safe to run any time.

KEYS[1]  {p}q:high
KEYS[2]  {p}q:normal
ARGV     none

Effects: XGROUP CREATE <q> workers 0 MKSTREAM for each stream whose group is
         missing (from id 0, so entries already there are delivered).
Reply:   the number of groups created (0..2)
Errors:  ERR_ARG, ERR_KEYS
]]
local function main()
    local prefix = #KEYS == 2 and KEYS[1]:match('^(.*)q:high$')
    if not prefix or KEYS[2] ~= prefix .. 'q:normal' then
        refuse('ERR_KEYS', 'setup takes {p}q:high {p}q:normal')
    end
    no_more_args(0)
    local created = 0
    for i = 1, 2 do
        local r = redis.pcall('XGROUP', 'CREATE', KEYS[i], GROUP, '0', 'MKSTREAM')
        if type(r) == 'table' and r.err then
            if not r.err:match('^BUSYGROUP') then
                return r
            end
        else
            created = created + 1
        end
    end
    return created
end

return run(main)
