#!/usr/bin/python3
"""A wedged Redis connection: how long until GETs are served again.

One nginx worker talks to Redis (TCP) through a relay (tests/integration/harness.py
TcpRelay). After a warm-up the relay stops forwarding on the open connection, in both
directions, without closing it (a NAT or load balancer that forgot the flow, a
failover behind a virtual address); connections opened afterwards are forwarded as
before. A GET of an unknown job is sent every 100 ms on its own connection, until one
sent after the stall is answered 404 (served) plus 2 s, or for DURATION seconds.

Prints the time from the stall to the first successful GET's answer, the 503s by code,
the connections the worker opened through the relay, and one RESULT line against the
goal: served again within 2 x sep_redis_timeout of the stall.

    /usr/bin/python3 bench/faults/wedged_connection.py [DURATION]   (default 20)
"""

import os
import re
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "integration"))

import harness  # noqa: E402

UNKNOWN_JOB = "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"
EVERY = 0.1


def conf_seconds(conf_path, directive):
    """A time directive of the rendered nginx.conf, in seconds."""
    with open(conf_path, encoding="utf-8") as f:
        m = re.search(r"^\s*%s\s+(\d+)(ms|s)\s*;" % directive, f.read(), re.M)
    if not m:
        raise ValueError("%s not found in %s" % (directive, conf_path))
    return int(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)


def main(argv):
    duration = float(argv[1]) if len(argv) > 1 else 20.0
    relay = harness.TcpRelay(upstream=None)
    stack = harness.Stack(worker_processes=1, redis_tcp=True,
                          sep_redis=lambda _stack: relay.address)
    relay.upstream = lambda: ("127.0.0.1", stack.redis_port)
    results = []
    lock = threading.Lock()

    def one(t0):
        sent = time.monotonic() - t0
        try:
            r = stack.request("GET", UNKNOWN_JOB, timeout=10)
            code = (r.json or {}).get("error", {}).get("code") if isinstance(r.json, dict) \
                else None
            got = (r.status, code)
        except OSError as e:
            got = (0, type(e).__name__)
        with lock:
            results.append((sent, time.monotonic() - t0) + got)

    try:
        relay.start()
        stack.start()
        timeout = conf_seconds(stack.conf_path, "sep_redis_timeout")
        for _ in range(3):
            stack.request("GET", UNKNOWN_JOB)
        before = relay.accepted
        t0 = time.monotonic()
        relay.wedge()
        threads = []
        served = None
        while time.monotonic() - t0 < duration:
            t = threading.Thread(target=one, args=(t0,), daemon=True)
            t.start()
            threads.append(t)
            time.sleep(EVERY)
            with lock:
                ok = [r[1] for r in results if r[2] == 404]
            if ok:
                served = min(ok)
                if time.monotonic() - t0 > served + 2.0:
                    break
        for t in threads:
            t.join(15)
        with lock:
            done = sorted(results)
        codes = {}
        for r in done:
            if r[2] != 404:
                codes[r[3] or r[2]] = codes.get(r[3] or r[2], 0) + 1
        n503 = sum(1 for r in done if r[2] == 503)
        goal = 2 * timeout
        print("cpu: %s" % cpu_name())
        print("sep_redis_timeout %.3fs; GET every %d ms; %d GETs, %d answered 503 %s; "
              "connections opened through the relay after the stall: %d"
              % (timeout, EVERY * 1000, len(done), n503, codes, relay.accepted - before))
        if served is None:
            print("first GET served after the stall: never within %.0f s" % duration)
            print("RESULT wedged_connection served_again_after=never_within_%.0fs goal<=%.1fs "
                  "503s=%d not met" % (duration, goal, n503))
        else:
            print("first GET served %.3f s after the stall" % served)
            print("RESULT wedged_connection served_again_after=%.3fs goal<=%.1fs 503s=%d %s"
                  % (served, goal, n503, "met" if served <= goal else "not met"))
    finally:
        stack.stop()
        relay.stop()
    return 0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
