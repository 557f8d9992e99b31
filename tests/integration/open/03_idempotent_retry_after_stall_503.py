#!/usr/bin/python3
"""A submit that got 503 (Redis stalled past sep_redis_timeout) was documented as
"nothing was stored" (ngx_module/README.md, "Redis errors"), so the client retries it
with the same Idempotency-Key. Expected: the retry creates a queued job (202).
The submit was queued in the module's connection and Redis runs it when it wakes; the
module then cancels it, but the Idempotency-Key keeps pointing at that canceled job."""
import os, signal, sys, threading, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

stack = harness.Stack(worker_processes=1).start()
try:
    wav = harness.wav_bytes()
    hdr = {"Content-Type": "audio/wav", "Idempotency-Key": "retry-me-1"}
    stack.request("GET", "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b")
    os.kill(stack.redis_proc.pid, signal.SIGSTOP)
    r1 = stack.request("POST", "/v1/jobs", body=wav, headers=hdr, timeout=10)
    left = stack.spool_files()
    os.kill(stack.redis_proc.pid, signal.SIGCONT)
    time.sleep(1.0)
    r2 = stack.request("POST", "/v1/jobs", body=wav, headers=hdr, timeout=10)
    j2 = r2.json if isinstance(r2.json, dict) else {}
    keys = sorted(k.decode() for k in stack.redis.keys("*job:*"))
    print("first submit:", r1.status, (r1.json or {}).get("error") if isinstance(r1.json, dict) else r1.body[:100])
    print("spool after the 503:", left)
    print("retry with same Idempotency-Key:", r2.status, "status=%s" % j2.get("status"), "error=%s" % j2.get("error"))
    print("job records in Redis:", [(k, stack.redis.hget(k, "status")) for k in keys])
    ok = r1.status == 503 and r2.status == 202 and j2.get("status") == "queued"
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    try: os.kill(stack.redis_proc.pid, signal.SIGCONT)
    except Exception: pass
    stack.stop()
