#!/usr/bin/python3
"""03: a second supervisor started with the same --name (the default name is the
host name: e.g. a new process started while the old one still drains) reads the
consumer's pending list at start and `claim` hands it every job the first one is
running (worker == caller is taken as "the same worker restarted"). The live
attempt is thrown away half done and an attempt is spent.

Expected: a live worker of that name (fresh heartbeat, other pid) is detected and its
jobs are left alone (busy), or the second supervisor refuses to start.
Observed: attempt 1 is abandoned by the first supervisor, attempt 2 runs on the
second."""
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
try:
    a = svc.start_workerd("w1", visibility_timeout="30s")
    job = svc.submit_ok(wav(30.0), SLOW)
    wait_for(lambda: stage(svc, job) == ("running", "separate"), "job separating", 20)
    # a second process under the same name (log kept apart)
    svc.workers["w1b"] = None
    import subprocess
    args = [WORKERD, "run", "--redis", svc.stack.redis_address, "--prefix", PREFIX,
            "--name", "w1", "--spool", svc.stack.spool, "--models-dir", svc.models,
            "--cpu-workers", "1", "--threads", "1", "--visibility-timeout", "30s",
            "--heartbeat-interval", "500ms", "--janitor-interval", "5s"]
    log = open(svc.log_path("w1b"), "ab")
    b = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    svc.workers["w1b"] = b
    time.sleep(3)
    attempts = hget(svc, job, "attempts")
    la = [l for l in svc.log("w1").splitlines() if job in l]
    lb = [l for l in svc.log("w1b").splitlines() if job in l]
    print("attempts:", attempts)
    print("first supervisor:\n  " + "\n  ".join(la))
    print("second supervisor:\n  " + "\n  ".join(lb))
    stolen = any("running attempt" in l for l in lb)
    rc = result(attempts == "1" and not stolen,
                "a second supervisor with the same name leaves the live one's jobs alone")
finally:
    svc.stop()
sys.exit(rc)
