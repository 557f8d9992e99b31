#!/usr/bin/python3
"""01: a `complete` whose reply is lost (connection cut after Redis ran it) makes
the supervisor retry it, get NOT_RUNNING, treat that as "refused" and delete the
stems of a job that Redis now records as completed.

Expected: the job is completed and its stems can be downloaded.
Observed: status completed, stems listed, every stem file gone (GET -> 404)."""
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa
from redisproxy import Proxy

svc = Service().start()
rc = 1
try:
    real = svc.stack.redis_address[len("unix:"):]
    proxy_path = os.path.join(svc.stack.prefix, "proxy.sock")
    # the complete call carries the stems JSON: '"file":'
    proxy = Proxy(proxy_path, real, needle=b'"file":')
    svc.stack.redis_address = "unix:" + proxy_path  # workerd goes through the proxy
    svc.start_workerd()
    job = svc.submit_ok(wav(2.0))
    rec = svc.wait(job, timeout=30)
    time.sleep(1.0)
    files = sorted(os.listdir(svc.stack.job_dir(job)))
    stems = rec.get("stems") or {}
    missing = []
    for name, s in stems.items():
        resp = svc.stack.request("GET", s["url"])
        if resp.status != 200:
            missing.append((name, resp.status))
    print("replies dropped by the proxy:", proxy.dropped)
    print("status:", rec["status"], "stems in record:", sorted(stems))
    print("files in the job directory:", files)
    print("stem downloads that failed:", missing)
    print("\n".join(l for l in svc.log("w1").splitlines() if job in l))
    rc = result(proxy.dropped == 1 and rec["status"] == "completed" and stems and not missing,
                "a completed job keeps its stems after a lost complete reply")
finally:
    svc.stop()
sys.exit(rc)
