#!/usr/bin/python3
"""A submit whose reply is lost after Redis ran it: the connection to Redis still
carries nginx's commands to Redis, but Redis' replies no longer come back (a NAT or
load balancer that forgot the return path; a connection reset after the script ran).
The request waits sep_redis_timeout and is answered 503 redis_timeout, its upload is
removed from the spool, the spare connection replaces the silent one, and the reply
never arrives, so the late-submit cancel never runs. Redis keeps the job (queued, in
its stream) and the Idempotency-Key naming it: the client's retry with that key is
answered 202 with that job, whose {spool}/{id}/ is gone (a worker fails it for its
missing input), and a client without a key has a job it was told failed.
ngx_module/README.md "Known limits" names the job left without its input; what it
does not say is that the Idempotency-Key keeps naming that job, so the documented
remedy (retry with the key) gets the doomed job instead of a new one.
Expected: no queued job without its input; the retry with the key gets a job that
can run (its upload is in the spool), or the first job is canceled."""
import os, sys, time, json
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness


relay = harness.TcpRelay(upstream=None)
stack = harness.Stack(worker_processes=1, redis_tcp=True, sep_redis=lambda _s: relay.address)
relay.upstream = lambda: ("127.0.0.1", stack.redis_port)
KEY = "retry-me-7"
try:
    relay.start()
    stack.start()
    for _ in range(3):
        stack.request("GET", "/v1/jobs/00000000-0000-4000-8000-000000000000")
    print("muted connections:", relay.mute())
    wav = harness.wav_bytes(0.1)
    first = stack.request("POST", "/v1/jobs", wav, {"Content-Type": "audio/wav",
                                                     "Idempotency-Key": KEY}, timeout=15)
    print("first POST:", first.status, (first.body or b"")[:120])
    time.sleep(2.5)  # the spare has replaced the muted connection; any late action ran
    jobs = {}
    for k in stack.redis.scan_iter(b"{sep}:job:*"):
        h = stack.redis.hgetall(k)
        if h.get(b"id"):
            jobs[h[b"id"].decode()] = h
    for jid, h in jobs.items():
        print("job %s status=%s input in spool=%s" % (
            jid, h.get(b"status", b"").decode(),
            os.path.exists(os.path.join(stack.job_dir(jid), h.get(b"input", b"x").decode()))))
    retry = stack.request("POST", "/v1/jobs", wav, {"Content-Type": "audio/wav",
                                                     "Idempotency-Key": KEY}, timeout=15)
    print("retry POST:", retry.status, (retry.body or b"")[:120])
    bad = []
    if first.status == 503:
        for jid, h in jobs.items():
            if h.get(b"status") == b"queued" and not os.path.exists(
                    os.path.join(stack.job_dir(jid), h.get(b"input", b"x").decode())):
                bad.append("queued job %s has no input in the spool (its POST was "
                           "answered 503)" % jid)
    if retry.status == 202:
        rj = json.loads(retry.body)
        h = stack.redis.hgetall(b"{sep}:job:" + rj["id"].encode())
        if rj.get("status") == "queued" and not os.path.exists(
                os.path.join(stack.job_dir(rj["id"]), h.get(b"input", b"x").decode())):
            bad.append("the retry with the Idempotency-Key got job %s, queued, whose input "
                       "is gone" % rj["id"])
    else:
        bad.append("retry not 202: %d" % retry.status)
    for b in bad:
        print("  -", b)
    print("PASS" if not bad else "FAIL")
    sys.exit(0 if not bad else 1)
finally:
    stack.stop()
    relay.stop()
