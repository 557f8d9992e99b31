#!/usr/bin/python3
"""A submit answered 503 redis_timeout (Redis stalled, SIGSTOP) is run by Redis when it
wakes; the module cancels it only after it sees the reply. A worker blocked in
XREADGROUP on the queue (as workerd waits) is handed the job in between. Expected
(README "Redis errors": "nothing was stored"): no worker ever receives a job whose
client was told 503, whose upload was removed."""
import os, signal, sys, threading, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness, redis as redislib, localstack

stack = harness.Stack(worker_processes=1).start()
try:
    wav = harness.wav_bytes()
    r0 = stack.request("POST", "/v1/jobs", body=wav, headers={"Content-Type": "audio/wav"})
    q = b"{sep}:q:normal"
    try: stack.redis.xgroup_create(q, "workers", id="$", mkstream=True)
    except redislib.ResponseError: pass
    got = []
    w = redislib.Redis(unix_socket_path=localstack.redis_socket(stack.prefix), socket_timeout=20)
    w.xreadgroup("workers", "sim", {q: ">"}, count=100)  # take the warm-up job first
    def worker():
        try: got.append(w.xreadgroup("workers", "sim", {q: ">"}, count=10, block=15000))
        except Exception as e: got.append(repr(e))
    th = threading.Thread(target=worker); th.start()
    time.sleep(0.3)
    os.kill(stack.redis_proc.pid, signal.SIGSTOP)
    r1 = stack.request("POST", "/v1/jobs", body=wav, headers={"Content-Type": "audio/wav"}, timeout=10)
    os.kill(stack.redis_proc.pid, signal.SIGCONT)
    th.join(16)
    time.sleep(0.3)
    first = (r0.json or {}).get("id") if isinstance(r0.json, dict) else None
    entries = []
    for item in got:
        if isinstance(item, list):
            for _s, ents in item:
                for _eid, f in ents:
                    entries.append({k.decode(): v.decode() for k, v in f.items()})
    late = [e for e in entries if e.get("id") != first]
    print("warm submit:", r0.status, "stalled submit:", r1.status, (r1.json or {}).get("error", {}).get("code") if isinstance(r1.json, dict) else "")
    print("worker was handed:", entries)
    print("spool of those jobs:", [stack.spool_files(e["id"]) for e in late if "id" in e])
    ok = r1.status == 503 and not late
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    try: os.kill(stack.redis_proc.pid, signal.SIGCONT)
    except Exception: pass
    stack.stop()
