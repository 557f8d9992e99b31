-- wrk script: PUT the body (the file named by BODY_FILE) to a fresh path each request,
-- so that nginx's DAV module stores every upload as a new file: the upper bound for an
-- endpoint that only has to get an upload onto disk.
local f = assert(io.open(assert(os.getenv("BODY_FILE"), "BODY_FILE not set"), "rb"))
local body = f:read("*all")
f:close()

-- Each wrk thread has its own Lua state: number them so their paths never collide.
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local n = 0
request = function()
  n = n + 1
  return wrk.format("PUT", "/up/" .. tostring(tid) .. "-" .. n .. ".bin",
                    {["Content-Type"] = "audio/wav"}, body)
end
