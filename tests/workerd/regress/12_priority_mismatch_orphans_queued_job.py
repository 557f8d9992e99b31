#!/usr/bin/python3
"""12: a job whose record names another priority than the stream its entry is in
(here `priority` rewritten with HSET; any writer or migration that touches the field)
gets its only entry XACK + XDEL'd by claim ("drop stale_entry", although stream_id is
that very entry) and is left `queued` with no stream entry, not in {p}delayed, no
TTL: it never runs, never expires, and the `queued` gauge stays +1 for ever.

Expected: the job runs (or fails) from the entry it has; a job is never left in no
place at all (shared/README.md: "A job is always in exactly one place").
Observed: status queued, stage queued, no entry in either stream, TTL -1."""
import os
import sys
import time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import *  # noqa

svc = Service().start()
rc = 1
try:
    job = svc.submit_ok(wav(0.5))  # priority normal: its entry is in q:normal
    key = P + b"job:" + job.encode()
    svc.redis.hset(key, "priority", "high")
    svc.start_workerd()
    time.sleep(4)
    in_streams = job in svc.stack.stream_job_ids(P + b"q:normal") + \
        svc.stack.stream_job_ids(P + b"q:high")
    delayed = svc.redis.zscore(P + b"delayed", job) is not None
    print("status/stage:", stage(svc, job), "in a stream:", in_streams, "delayed:", delayed,
          "ttl:", svc.redis.ttl(key), "gauge queued:", svc.redis.hget(P + b"stats", "queued"))
    stuck = stage(svc, job)[0] == "queued" and not in_streams and not delayed
    rc = result(not stuck, "a queued job is never left without an entry")
finally:
    svc.stop()
sys.exit(rc)
