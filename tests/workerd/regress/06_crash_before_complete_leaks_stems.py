#!/usr/bin/python3
"""06: a supervisor killed (kill -9, OOM killer, host crash) after its stems were
renamed into {spool}/{id}/ but before `complete` answered leaves those files behind
for good: the next attempt writes stems under its own names and completes, and
nobody ever removes the dead attempt's files (full-size stems: for long audio
hundreds of MB per crash, kept until the record expires, result_ttl = 24 h).

Expected: after the job completes on attempt 2 its directory holds the input and
attempt 2's stems only.
Observed: attempt 1's four stems are still there, unreferenced."""
import os
import signal
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa
from redisproxy import Proxy

svc = Service().start()
rc = 1
try:
    real = svc.stack.redis_address
    proxy_path = os.path.join(svc.stack.prefix, "proxy.sock")
    proxy = Proxy(proxy_path, real[5:], needle=b'"file":', hold=True)  # complete hangs
    svc.stack.redis_address = "unix:" + proxy_path
    w = svc.start_workerd("w1")
    job = svc.submit_ok(wav(2.0))
    wait_for(lambda: proxy.held == 1, "complete sent", 20)
    time.sleep(0.3)
    w.kill()  # dies with its stems renamed, complete unanswered
    w.wait()
    svc.stack.redis_address = real
    svc.start_workerd("w1")  # same host restarts it
    rec = svc.wait(job, timeout=30)
    time.sleep(1)
    files = sorted(os.listdir(svc.stack.job_dir(job)))
    listed = sorted(s["file"] if "file" in s else s["url"].rsplit("/", 1)[-1]
                    for s in (rec.get("stems") or {}).values())
    print("status:", rec["status"], "attempts:", rec["attempts"])
    print("files in the job directory:", files)
    stray = [f for f in files if not f.startswith("input") and ".a1-" in f]
    print("attempt-1 files left:", stray)
    rc = result(rec["status"] == "completed" and not stray,
                "no files of a dead attempt stay in the job directory")
finally:
    svc.stop()
sys.exit(rc)
