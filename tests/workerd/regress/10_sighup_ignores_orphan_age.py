#!/usr/bin/python3
"""10: orphan_age (and max_jobs_per_worker) are documented as reloadable (not marked
"restart" in `workerd run --help`), SIGHUP logs "settings reloaded", but the
supervisor's reload block never copies them: the old value stays in force, and
cmd_run's `current` now holds the new one, so no later SIGHUP reports it either.

Expected: after SIGHUP with orphan_age = 60s an orphan 2 minutes old is removed by
the next janitor pass.
Observed: it stays (orphan_age is still 1h)."""
import os
import signal
import subprocess
import sys
import time
import uuid
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
try:
    conf = os.path.join(svc.stack.prefix, "workerd.conf")
    with open(conf, "w") as f:
        f.write("orphan_age = 1h\njanitor_interval = 1s\n")
    args = [WORKERD, "run", "-c", conf, "--redis", svc.stack.redis_address, "--prefix", PREFIX,
            "--name", "w1", "--spool", svc.stack.spool, "--models-dir", svc.models,
            "--cpu-workers", "1", "--threads", "1"]
    log = open(svc.log_path("w1"), "ab")
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    svc.workers["w1"] = p
    orphan = os.path.join(svc.stack.spool, str(uuid.uuid4()))
    os.makedirs(orphan)
    t = time.time() - 120
    os.utime(orphan, (t, t))
    time.sleep(2)
    kept_before = os.path.isdir(orphan)
    with open(conf, "w") as f:
        f.write("orphan_age = 60s\njanitor_interval = 1s\n")
    p.send_signal(signal.SIGHUP)
    wait_for(lambda: "settings reloaded" in svc.log("w1"), "reload", 10)
    time.sleep(3)
    print("orphan (2 min old) kept under orphan_age 1h:", kept_before)
    print("orphan still there 3 s after SIGHUP set orphan_age 60s:", os.path.isdir(orphan))
    rc = result(kept_before and not os.path.isdir(orphan), "SIGHUP applies orphan_age")
finally:
    svc.stop()
sys.exit(rc)
