-- wrk script: POST the same body (the file named by BODY_FILE) on every request.
-- CONTENT_TYPE sets its Content-Type (default audio/wav). Used by bench/http for
-- POST /v1/jobs on the module and POST /jobs on the Celery-style peer.
local f = assert(io.open(assert(os.getenv("BODY_FILE"), "BODY_FILE not set"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "audio/wav"
