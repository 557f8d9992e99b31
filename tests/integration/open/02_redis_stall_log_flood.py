#!/usr/bin/python3
"""A Redis that keeps its connection but stops answering (SIGSTOP, same as a host that
accepts TCP and hangs) is an outage like any other: the error log should get one line
when serving stops and one when it is back (ngx_module/README.md), not one line per
request. Here 60 requests during a 3 s stall."""
import os, signal, sys, threading, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

N = 60
stack = harness.Stack(worker_processes=1).start()
try:
    jid = "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"
    for _ in range(3):
        stack.request("GET", "/v1/jobs/" + jid)
    log = stack.values["ERROR_LOG"]
    off = os.path.getsize(log)
    os.kill(stack.redis_proc.pid, signal.SIGSTOP)
    res = []
    def one():
        try:
            res.append(stack.request("GET", "/v1/jobs/" + jid, timeout=10).status)
        except Exception as e:
            res.append(repr(e))
    ts = [threading.Thread(target=one) for _ in range(N)]
    for t in ts: t.start(); time.sleep(0.02)
    for t in ts: t.join()
    os.kill(stack.redis_proc.pid, signal.SIGCONT)
    time.sleep(0.5)
    after = stack.request("GET", "/v1/jobs/" + jid).status
    with open(log, errors="replace") as f:
        f.seek(off); lines = [l for l in f.read().splitlines() if "sep:" in l]
    print("statuses during stall:", {s: res.count(s) for s in set(res)}, "after:", after)
    print("sep error-log lines for one outage: %d" % len(lines))
    for l in lines[:3]: print("  ", l[:200])
    ok = len(lines) <= 4 and after == 404
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    try: os.kill(stack.redis_proc.pid, signal.SIGCONT)
    except Exception: pass
    stack.stop()
