#!/usr/bin/python3
"""02: after SIGHUP lowers `concurrency`, running jobs in slots at or above the new
value are invisible to running_count(): SIGTERM's drain ends (and the process exits)
as soon as the low slots are empty, abandoning the other running jobs (neither
finished nor requeued) long before drain_timeout.

Expected: the drain waits for every running job (or requeues it at drain_timeout).
Observed: workerd exits at once; jobs stay `running` under a dead worker until the
visibility timeout and each loses an attempt."""
import os
import signal
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
proc = None
try:
    conf = os.path.join(svc.stack.prefix, "workerd.conf")
    with open(conf, "w") as f:
        f.write("[workerd]\nconcurrency = 4\n")
    args = [WORKERD, "run", "-c", conf, "--redis", svc.stack.redis_address, "--prefix", PREFIX,
            "--name", "w1", "--spool", svc.stack.spool, "--models-dir", svc.models,
            "--cpu-workers", "1", "--threads", "1", "--visibility-timeout", "60s",
            "--heartbeat-interval", "500ms", "--drain-timeout", "30s", "--janitor-interval", "5s"]
    log = open(svc.log_path("w1"), "ab")
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    svc.workers["w1"] = proc
    jobs = []
    for _ in range(4):
        jobs.append(svc.submit_ok(wav(30.0), SLOW))
        time.sleep(0.3)  # claimed in order: slots 0, 1, 2, 3
    wait_for(lambda: all(hget(svc, j, "status") == "running" for j in jobs), "4 running", 20)
    with open(conf, "w") as f:
        f.write("[workerd]\nconcurrency = 1\n")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "settings reloaded (concurrency 1)" in svc.log("w1"), "reload", 10)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    # the job of slot 0 is canceled by its client: slot 0 becomes free
    svc.stack.request("DELETE", "/v1/jobs/" + jobs[0])
    try:
        proc.wait(timeout=25)
    except subprocess.TimeoutExpired:
        pass
    took = time.monotonic() - t0
    states = [stage(svc, j) for j in jobs[1:]]
    exited = proc.poll() is not None
    print("workerd exited:", exited, "after %.1fs (drain_timeout 30s)" % took)
    print("jobs of slots 1..3 afterwards:", states)
    print("\n".join(svc.log("w1").splitlines()[-8:]))
    abandoned = [s for s in states if s[0] == "running"]
    rc = result(not (exited and abandoned),
                "no running job is abandoned when the drain ends")
finally:
    svc.stop()
sys.exit(rc)
