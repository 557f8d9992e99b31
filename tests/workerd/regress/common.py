"""Shared setup of the workerd regression scripts (one defect each, reproduced by a
review; each exits 0 and prints PASS when the defect is gone): the end-to-end test's
Service (redis-server on a Unix socket + nginx with the module + `build/workerd run`).
tests/workerd/test_workerd.py runs every NN_*.py here as one case."""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.join(REPO, "tests", "workerd"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import test_workerd as tw  # noqa: E402
import harness  # noqa: E402

Service = tw.Service
wav = tw.wav
PREFIX = tw.PREFIX
P = PREFIX.encode()
WORKERD = tw.WORKERD
SLOW = tw.SLOW
device_worker_pids = tw.device_worker_pids


def wait_for(cond, what, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for " + what)
        time.sleep(step)


def hget(svc, job_id, field):
    v = svc.redis.hget(P + b"job:" + job_id.encode(), field)
    return v.decode() if v is not None else None


def stage(svc, job_id):
    return (hget(svc, job_id, "status"), hget(svc, job_id, "stage"))


def result(ok, what):
    print(("PASS: " if ok else "FAIL: ") + what)
    return 0 if ok else 1
