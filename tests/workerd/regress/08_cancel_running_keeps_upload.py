#!/usr/bin/python3
"""08: DELETE of a queued job removes {spool}/{id}/ at once (files_deleted=1), but
DELETE of a running job only requests the cancel; when the worker stops it calls
`fail ... canceled` and nobody removes the directory: the client's upload stays on
disk (and files_deleted stays unset) until the record expires (result_ttl, 24 h by
default), although the job is `canceled`.

Expected: once the running job is canceled its upload is gone, as for a queued one.
Observed: status canceled, {spool}/{id}/input.wav still there."""
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
try:
    svc.start_workerd()
    queued_job = None
    job = svc.submit_ok(wav(20.0), SLOW)
    wait_for(lambda: stage(svc, job) == ("running", "separate"), "separating", 20)
    resp = svc.stack.request("DELETE", "/v1/jobs/" + job)
    print("DELETE ->", resp.status)
    rec = svc.wait(job)
    time.sleep(2)  # a janitor pass (janitor_interval 1 s)
    d = svc.stack.job_dir(job)
    left = sorted(os.listdir(d)) if os.path.isdir(d) else []
    print("status:", rec["status"], "files_deleted:", hget(svc, job, "files_deleted"),
          "left in the spool:", left)
    rc = result(rec["status"] == "canceled" and not left,
                "a canceled running job does not keep its upload on disk")
finally:
    svc.stop()
sys.exit(rc)
