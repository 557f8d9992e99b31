#!/usr/bin/python3
"""Redis that accepts the connection but never answers (a stuck proxy, a peer gone
without a RST, a Redis SIGSTOPped and then replaced). After the outage the worker
connects to it; the setup (AUTH/SELECT/SCRIPT LOAD/EXISTS) is never answered and
nothing ever gives up on that connection: the connect timeout is disarmed once the TCP
connect succeeds (ngx_http_sep_redis_on_connect), request timeouts do not drop it.
Then a healthy Redis comes up on the address. Expected: within a few seconds requests
are served again (404 for an unknown job). Observed: 503 redis_timeout forever."""
import os, socket, sys, threading, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness, localstack

stack = harness.Stack(worker_processes=1).start()
held = []
try:
    jid = "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"
    print("warm:", stack.request("GET", jid).status)
    stack.stop_redis()
    path = localstack.redis_socket(stack.prefix)
    try: os.unlink(path)
    except FileNotFoundError: pass
    fake = socket.socket(socket.AF_UNIX); fake.bind(path); fake.listen(64)
    def acceptor():
        while True:
            try: c, _ = fake.accept()
            except OSError: return
            held.append(c)          # read nothing, answer nothing, never close
    threading.Thread(target=acceptor, daemon=True).start()
    time.sleep(0.3)
    r = stack.request("GET", jid)
    print("against the silent peer:", r.status, (r.json or {}).get("error", {}).get("code") if isinstance(r.json, dict) else "")
    # the silent peer stops listening (its accepted connections stay open); Redis is back
    fake.close(); os.unlink(path)
    stack.start_redis()
    seen = []
    deadline = time.time() + 8
    while time.time() < deadline:
        r = stack.request("GET", jid, timeout=5)
        seen.append(r.status)
        if r.status == 404: break
        time.sleep(0.2)
    print("after a healthy Redis is back: %d requests, statuses %s, last %s" % (len(seen), sorted(set(seen)), seen[-1]))
    ok = seen[-1] == 404
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    for c in held: c.close()
    stack.stop()
