#!/usr/bin/python3
"""05: a device worker that stops answering (SIGSTOP here; a hung GPU driver or a
livelocked kernel in practice) pins its jobs until the hard time limit (65 min by
default): the job thread waits in sep_pool_forward() with hard_at as the only
deadline, so neither a client's cancel nor SIGTERM's drain (stop flag, read only
between segments) can end it, and the supervisor never finishes draining.

Expected: the cancel ends the job within a few seconds; SIGTERM's drain hands the
job back at drain_timeout (10 s here) and the process exits.
Observed: the job stays running, cancel_requested=1; the supervisor is still
draining long after drain_timeout."""
import os
import signal
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
stopped = []
try:
    w = svc.start_workerd(drain_timeout="10s")
    job = svc.submit_ok(wav(30.0), SLOW)
    wait_for(lambda: stage(svc, job) == ("running", "separate"), "separating", 20)
    time.sleep(0.5)
    for pid in device_worker_pids(w):
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)
    resp = svc.stack.request("DELETE", "/v1/jobs/" + job)
    print("DELETE ->", resp.status)
    # the heartbeat tells the job (0.5 s), its batch gets 5 s, then its worker is killed
    time.sleep(8)
    after_cancel = stage(svc, job)
    print("8 s after the cancel:", after_cancel)
    t0 = time.monotonic()
    w.send_signal(signal.SIGTERM)
    try:
        w.wait(timeout=20)
    except Exception:
        pass
    exited = w.poll() is not None
    print("SIGTERM with drain_timeout 10s: exited after 20 s?", exited,
          "job:", stage(svc, job))
    print("\n".join(svc.log("w1").splitlines()[-5:]))
    rc = result(after_cancel[0] != "running" and exited,
                "cancel and drain are not blocked by a hung device worker")
finally:
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
    svc.stop()
sys.exit(rc)
