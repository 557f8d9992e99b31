#!/usr/bin/python3
"""09: remove_orphans() looks at the first 1000 job-named directories that readdir
returns, on every pass, and readdir's order does not change between passes. A spool
with more than 1000 job directories (24 h of results on a busy host) has its orphan
sweep stuck on the same 1000 live directories for ever: orphans further on (uploads
whose submit never happened, records lost) are never removed.

Expected: every orphan older than orphan_age is removed within a few passes.
Observed: only the orphans among the first 1000 entries go; the rest stay."""
import os
import sys
import time
import uuid
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
try:
    spool = svc.stack.spool
    old = time.time() - 3600
    pipe = svc.redis.pipeline()
    orphans = []
    for i in range(int(os.environ.get("N", "3000"))):
        jid = str(uuid.uuid4())
        d = os.path.join(spool, jid)
        os.mkdir(d)
        os.utime(d, (old, old))
        if i % 60 == 0:
            orphans.append(jid)  # no record: an orphan
        else:  # a finished job that is still kept
            pipe.hset(P + b"job:" + jid.encode(), mapping={"status": "completed",
                                                           "priority": "normal"})
    pipe.execute()
    svc.start_workerd(janitor_interval="1s", orphan_age="60s")
    time.sleep(6)  # several janitor passes
    left = [o for o in orphans if os.path.isdir(os.path.join(spool, o))]
    print("orphans: %d, removed: %d, left after ~5 passes: %d"
          % (len(orphans), len(orphans) - len(left), len(left)))
    rc = result(not left, "every old orphan directory is removed")
finally:
    svc.stop()
sys.exit(rc)
