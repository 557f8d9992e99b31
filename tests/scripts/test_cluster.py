#!/usr/bin/python3
"""The job-state scripts on a real one-node Redis Cluster (redis-server
--cluster-enabled yes, owning slots 0..16383, cluster_state:ok).

On a Cluster a script's KEYS must all hash to one slot, and the scripts must touch
no key outside KEYS (the audit mode of tests/scripts/sepredis.py checks that part,
which a node owning every slot would not notice). The default prefix "{sep}:" is a
hash tag, so every key of the service is in one slot: shown with CLUSTER KEYSLOT,
then every regression case (test_regressions.py) and a model-based run
(test_model.py, SEP_MODEL_CLUSTER_STEPS steps, default 1000) run on the Cluster. A
prefix without a tag is refused with CROSSSLOT, which shows the Cluster checks are
live.

    /usr/bin/python3 tests/scripts/test_cluster.py
"""

import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402

import test_model  # noqa: E402
import test_regressions  # noqa: E402
from sepredis import Jobs, RedisServer  # noqa: E402


def main():
    t0 = time.monotonic()
    steps = int(os.environ.get("SEP_MODEL_CLUSTER_STEPS", "1000"))
    with RedisServer(cluster=True) as server:
        r = server.r
        info = r.execute_command("CLUSTER", "INFO").decode()
        assert "cluster_state:ok" in info and "cluster_slots_assigned:16384" in info, info
        job_id = str(uuid.uuid4())
        p = "{sep}:"
        keys = ([p + "job:" + job_id, p + "ev:" + job_id, p + "idem:k", p + "worker:w",
                 p + "workers"] +
                [p + s for s in ("stats", "q:high", "q:normal", "delayed", "running",
                                 "expiry", "dead")])
        slots = {r.execute_command("CLUSTER", "KEYSLOT", k) for k in keys}
        assert len(slots) == 1, "the keys span slots %s" % sorted(slots)
        print("ok   every key of prefix %s is in slot %d" % (p, slots.pop()))

        untagged = Jobs(r, prefix="sep:")
        refusal = None
        try:
            untagged.submit(job_id)
        except redis.ResponseError as e:
            refusal = str(e)
        assert refusal and "CROSSSLOT" in refusal, \
            "a submit with untagged keys ran on the Cluster: %r" % refusal
        print("ok   an untagged prefix (sep:) is refused: %s" % refusal.split(".")[0])

        ran, failed = test_regressions.run_cases(server)
        # the untagged-prefix check, the regression cases, then the model run
        print("CASES: %d passed, %d failed, 0 skipped" % (1 + ran - failed, failed))
        if failed:
            print("FAIL: %d of %d regression cases on the Cluster" % (failed, ran))
            return 1
        test_model.run(server, steps)
        print("ok   model: %d steps in %d examples" % (test_model.STATS["steps"],
                                                      test_model.STATS["examples"]))
    print("PASS: %d regression cases + %d model steps on a one-node Cluster, %.1fs"
          % (ran, test_model.STATS["steps"], time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
