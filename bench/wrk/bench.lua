-- bench/wrk/bench.lua: the one load generator of bench/http, for every measurement
-- (module POST, DAV PUT, module GET, the peers' POST and GET), so that each side pays
-- the same client cost per request: wrk shares the cores with the servers, and a
-- cheaper generator on one side would flatter it.
--
-- Every request is built in request() with wrk.format (the body, when there is one,
-- copied into each request), none is prebuilt. Environment:
--   METHOD        GET, POST or PUT (default GET)
--   BODY_FILE     file whose bytes are the body of every request (none: no body)
--   CONTENT_TYPE  Content-Type of the body (default audio/wav)
--   FRESH_PATH    a prefix such as /up/: each request goes to PREFIX<thread>-<n>.bin,
--                 so that DAV stores every upload as a new file; unset: the URL's path
-- done() prints one line for bench/http, the latency percentiles in microseconds and
-- the count of answers with a status >= 400 (wrk's own "Non-2xx or 3xx" count):
--   BENCH latency_us p50=.. p90=.. p99=.. p999=.. max=.. status_errors=..
local method = os.getenv("METHOD") or "GET"
local body = nil
local headers = {}
local body_file = os.getenv("BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  body = f:read("*all")
  f:close()
  headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "audio/wav"
end
local fresh = os.getenv("FRESH_PATH")
if fresh == "" then fresh = nil end

-- Each wrk thread has its own Lua state: number them so their paths never collide.
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local n = 0
request = function()
  local path = nil -- nil: the path of the URL given to wrk
  if fresh then
    n = n + 1
    path = fresh .. tid .. "-" .. n .. ".bin"
  end
  return wrk.format(method, path, headers, body)
end

done = function(summary, latency, requests)
  io.write(string.format(
    "BENCH latency_us p50=%d p90=%d p99=%d p999=%d max=%d status_errors=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, summary.errors.status))
end
