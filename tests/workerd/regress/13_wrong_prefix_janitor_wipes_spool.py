#!/usr/bin/python3
"""13: the orphan sweep decides "no record" with EXISTS under its own prefix and db
only. A supervisor started with another --prefix or Redis db than nginx's (a typo,
a staging instance pointed at the production spool, two services sharing a spool)
deletes every job directory older than orphan_age: the stems of completed jobs and
the uploads of queued jobs that the real service still serves and runs.

Expected: a supervisor that finds no sign that the spool is its own (none of the
directories has a record under its prefix, or the spool carries another prefix's
marker) refuses to sweep it.
Observed: all job directories are deleted; the completed job's stems give 404 and
the queued job fails with input_missing when a correct worker picks it."""
import os
import subprocess
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
try:
    svc.start_workerd("w1")
    done = svc.submit_ok(wav(1.0))
    rec = svc.wait(done)
    svc.workers["w1"].kill()
    svc.workers["w1"].wait()
    queued = svc.submit_ok(wav(1.0))  # nobody runs it yet
    old = time.time() - 7200  # both are two hours old (a day of retention is normal)
    for j in (done, queued):
        os.utime(svc.stack.job_dir(j), (old, old))
    # a supervisor with the wrong prefix, same spool
    args = [WORKERD, "run", "--redis", svc.stack.redis_address, "--prefix", "{sep-staging}:",
            "--name", "stg", "--spool", svc.stack.spool, "--models-dir", svc.models,
            "--cpu-workers", "1", "--threads", "1", "--janitor-interval", "1s"]
    log = open(svc.log_path("stg"), "ab")
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    svc.workers["stg"] = p
    time.sleep(3)
    gone = [j for j in (done, queued) if not os.path.isdir(svc.stack.job_dir(j))]
    print("directories deleted by the wrongly configured supervisor:", len(gone), "of 2")
    stem = list(rec["stems"].values())[0]["url"]
    print("GET stem of the completed job ->", svc.stack.request("GET", stem).status)
    rc = result(not gone, "a supervisor with another prefix leaves the spool alone")
finally:
    svc.stop()
sys.exit(rc)
