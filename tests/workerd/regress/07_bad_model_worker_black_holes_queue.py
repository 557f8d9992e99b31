#!/usr/bin/python3
"""07: a supervisor whose weights file for a model is missing or corrupt still
claims every job of that model and fails each one at once, for good
(model_unavailable, retryable = 0), although another supervisor has a good copy.
Failing takes milliseconds, so the broken host drains the shared queue into
`failed` faster than the healthy hosts can compute.

Expected: a job is claimed only by a worker that can load its model (or
model_unavailable is retried elsewhere); all 12 jobs complete on the healthy worker.
Observed: most of the jobs fail with model_unavailable on the broken worker."""
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
try:
    good = svc.models
    bad = os.path.join(svc.stack.prefix, "models-bad")
    os.makedirs(bad)
    data = open(os.path.realpath(os.path.join(good, "htdemucs.safetensors")), "rb").read()
    with open(os.path.join(bad, "htdemucs.safetensors"), "wb") as f:
        f.write(data[: len(data) // 2])  # a truncated copy (an interrupted download)
    svc.start_workerd("healthy")
    svc.models = bad
    svc.start_workerd("broken")
    svc.models = good
    time.sleep(1.5)
    jobs = [svc.submit_ok(wav(2.0)) for _ in range(12)]
    recs = [svc.wait(j, timeout=60) for j in jobs]
    failed = [r for r in recs if r["status"] == "failed"]
    print("completed:", sum(r["status"] == "completed" for r in recs), "failed:", len(failed))
    if failed:
        print("e.g.:", failed[0]["error"])
    rc = result(not failed, "jobs are not failed for good by a worker lacking a usable model")
finally:
    svc.stop()
sys.exit(rc)
