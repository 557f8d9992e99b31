#!/usr/bin/python3
"""Model-based test of the job-state scripts (shared/lua/, contract in
shared/README.md): a Hypothesis RuleBasedStateMachine drives the real scripts on a
real redis-server with several workers that read, claim, touch, report progress,
complete, fail (retryable or not), requeue, crash, restart under their name, take
over entries with XAUTOCLAIM, pause and come back with late calls, and replay old
calls; clients submit and cancel; timers promote, heartbeat and run the janitor. A plain
Python model predicts every reply; after every step the invariants hold:

  * each job is in exactly one place (stream entry, {p}delayed, or terminal), the
    running index and the PEL match the running jobs, no orphan entries
    (sepredis.check_invariants);
  * Redis agrees with the model on every job's status, attempts and live token;
  * at most one attempt is live per job, and no call with a token that is not the
    live one is ever accepted (each such call is predicted as a refusal);
  * the gauges equal a recount; every key is bounded or has a TTL;
  * every script only touches keys in its KEYS (audit mode, sepredis.AUDIT_PRELUDE).

Time is Redis server time: a claim or touch gives either a long visibility (60 s:
the worker is alive for the whole run) or a short one (1 ms: the worker is about
to pause); before a call whose outcome depends on a short deadline the test waits
until it has surely passed.

    /usr/bin/python3 tests/scripts/test_model.py     (SEP_MODEL_STEPS, default 5000)

Runs examples until at least SEP_MODEL_STEPS steps were taken; prints
`PASS: N steps in M examples`.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402
from hypothesis import HealthCheck, settings, strategies as st  # noqa: E402
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant,  # noqa: E402
                                 precondition, rule, run_state_machine_as_test)

from sepredis import Jobs, RedisServer, check_invariants, error_code, pairs  # noqa: E402

WORKERS = ["w0", "w1", "w2", "w3"]
LONG_MS, SHORT_MS = 60000, 1
DEAD_MAXLEN = 10
SERVER = None
STATS = {"steps": 0, "examples": 0}
OUTCOMES = {}  # "claim run", "refused STALE", ... -> count


def seen(what):
    OUTCOMES[what] = OUTCOMES.get(what, 0) + 1
TERMINAL = ("completed", "failed", "canceled")


class Job:
    def __init__(self, job_id, priority, max_attempts):
        self.id = job_id
        self.priority = priority
        self.max_attempts = max_attempts
        self.status = "queued"
        self.place = "stream"  # stream | delayed | none
        self.entry = None
        self.attempts = 0
        self.token = None  # the live token
        self.worker = None
        self.cancel_requested = False
        self.short_deadline = False
        self.deadline_set = 0.0  # monotonic time of the last claim/touch
        self.delayed_due = False
        self.files_deleted = False
        self.tokens = []  # every token ever handed out


class Worker:
    def __init__(self, name):
        self.name = name
        self.reads = []  # (queue, entry, job id) read but not claimed
        self.held = {}  # job id -> token (live or, after a pause, stale)


class Refused(Exception):
    pass


class ScriptMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.r = SERVER.r
        self.j = Jobs(self.r)
        self.jobs = {}
        self.order = []
        self.workers = {n: Worker(n) for n in WORKERS}
        self.entries = {}  # (queue, entry) -> job id, for delivered-check

    @initialize()
    def start(self):
        STATS["examples"] += 1
        self.r.flushall()
        assert self.j.setup() == 2

    # helpers -------------------------------------------------------------------------

    def call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as e:
            raise Refused(error_code(e), str(e))

    def expect_refusal(self, codes, fn, *args, **kwargs):
        try:
            reply = fn(*args, **kwargs)
        except redis.ResponseError as e:
            assert error_code(e) in codes, "expected one of %s, got %s" % (codes, e)
            seen("refused " + error_code(e))
            return error_code(e)
        raise AssertionError("a call that must be refused (%s) was accepted: %r"
                             % (codes, reply))

    def overdue(self, job):
        """Whether a running job's deadline has passed, waiting until a short one has
        surely passed (so the prediction never sits on the boundary)."""
        if not job.short_deadline:
            return False
        wait = job.deadline_set + 0.004 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return True

    def refusal_for(self, job, token):
        """The error a token-checked call gets, or None when the token is live."""
        if job.status != "running":
            return "NOT_RUNNING"
        if token != job.token:
            return "STALE"
        return None

    def finish(self, job, status):
        job.status = status
        job.place = "none"
        job.token = None
        job.entry = None
        job.delayed_due = False

    def held_pairs(self):
        return [(w, jid) for w in WORKERS for jid in sorted(self.workers[w].held)]

    def pick(self, items, i):
        return items[i % len(items)]

    # clients -------------------------------------------------------------------------

    @rule(priority=st.sampled_from(["normal", "high"]), max_attempts=st.integers(1, 3),
          n=st.integers(1, 3))
    def submit(self, priority, max_attempts, n):
        for _ in range(n):
            self.submit_one(priority, max_attempts)

    def submit_one(self, priority, max_attempts):
        job_id = "%08x-0000-4000-8000-%012x" % (len(self.order), STATS["examples"])
        reply = self.call(self.j.submit, job_id, priority=priority, max_attempts=max_attempts)
        assert reply[0] == b"created"
        job = Job(job_id, priority, max_attempts)
        job.entry = pairs(reply[1:])["stream_id"]
        self.jobs[job_id] = job
        self.order.append(job_id)
        self.entries[(priority, job.entry)] = job_id

    @precondition(lambda self: self.order)
    @rule(i=st.integers(0, 1000))
    def cancel(self, i):
        active = [x for x in self.order if self.jobs[x].status not in TERMINAL]
        job = self.jobs[self.pick(active if active and i % 4 else self.order, i)]
        if job.status in TERMINAL:
            if job.files_deleted:
                self.expect_refusal(("ALREADY_DELETED",), self.j.cancel, job.id)
                return
            reply = self.call(self.j.cancel, job.id)
            assert reply[0] == b"purge", reply[:1]
            job.files_deleted = True
            return
        reply = self.call(self.j.cancel, job.id)
        seen("cancel " + reply[0].decode())
        if job.status == "queued" or self.overdue(job):
            assert reply[0] == b"canceled", reply[:1]
            self.finish(job, "canceled")
            job.files_deleted = True
        else:
            assert reply[0] == b"cancel_requested", reply[:1]
            job.cancel_requested = True

    # workers -------------------------------------------------------------------------

    @rule(w=st.sampled_from(WORKERS), short=st.booleans())
    def work(self, w, short):
        """The daemon's loop: read (high first), claim what was read."""
        for queue in ("high", "normal"):
            self.read(w, queue)
            if self.workers[w].reads:
                break
        while self.workers[w].reads:
            self.claim_read(w, len(self.workers[w].reads) - 1, short)

    @rule(w=st.sampled_from(WORKERS), short=st.booleans())
    def take_over(self, w, short):
        """The daemon's reclaim loop: XAUTOCLAIM both queues, claim what it took."""
        for queue in ("high", "normal"):
            self.autoclaim(w, queue, 0)
        while self.workers[w].reads:
            self.claim_read(w, len(self.workers[w].reads) - 1, short)

    @rule(w=st.sampled_from(WORKERS), queue=st.sampled_from(["normal", "high"]))
    def read(self, w, queue):
        for entry, job_id in self.j.read(w, queue):
            job = self.jobs[job_id]
            assert job.status == "queued" and job.place == "stream" and job.entry == entry, \
                "XREADGROUP delivered %s of job %s (%s)" % (entry, job_id, job.status)
            self.workers[w].reads.append((queue, entry, job_id))

    @rule(w=st.sampled_from(WORKERS), queue=st.sampled_from(["normal", "high"]))
    def restart_and_read_own(self, w, queue):
        """A worker restarted under its name: it knows nothing, and reads its own
        pending entries (XREADGROUP ... 0)."""
        worker = self.workers[w]
        worker.held.clear()
        worker.reads = [(q, e, j) for q, e, j in worker.reads if q != queue]
        for entry, job_id in self.j.read(w, queue, count=100, own=True):
            worker.reads.append((queue, entry, job_id))

    @rule(w=st.sampled_from(WORKERS))
    def crash(self, w):
        """A worker dies: what it held is gone with it (its PEL entries stay)."""
        self.workers[w].held.clear()
        self.workers[w].reads.clear()

    @rule(w=st.sampled_from(WORKERS), queue=st.sampled_from(["normal", "high"]),
          min_idle=st.sampled_from([0, 0, 5]))
    def autoclaim(self, w, queue, min_idle):
        """XAUTOCLAIM (min-idle 0 is the worst case: it takes live workers' entries
        too; claim must answer busy)."""
        for entry, job_id in self.j.autoclaim(w, queue, min_idle, count=3):
            self.workers[w].reads.append((queue, entry, job_id))

    @precondition(lambda self: any(w.reads for w in self.workers.values()))
    @rule(i=st.integers(0, 1000), short=st.booleans())
    def claim(self, i, short):
        candidates = [(w, k) for w in WORKERS for k in range(len(self.workers[w].reads))]
        w, k = self.pick(candidates, i)
        self.claim_read(w, k, short)

    def claim_read(self, w, k, short):
        worker = self.workers[w]
        queue, entry, job_id = worker.reads.pop(k)
        job = self.jobs[job_id]
        vis = SHORT_MS if short else LONG_MS
        if job.status in TERMINAL:
            expect = ("drop", "finished")
        elif job.entry != entry or job.priority != queue:
            expect = ("drop", "stale_entry")
        elif job.status == "queued":
            expect = ("run", None)
        elif job.worker != w and not self.overdue(job):
            expect = ("busy", job.worker)
        elif job.cancel_requested:
            expect = ("canceled", "")
        elif job.attempts >= job.max_attempts:
            expect = ("dead", str(job.attempts))
        else:
            expect = ("run", None)
        reply = self.call(self.j.claim, job_id, w, queue, entry, nonce=os.urandom(8).hex(),
                          visibility_ms=vis, dead_maxlen=DEAD_MAXLEN)
        reason = reply[0].decode()
        seen("claim " + reason + ("" if reason not in ("run", "drop") else
                                  " " + (expect[1] or ("reclaim" if job.status == "running"
                                                       else "fresh"))))
        assert reason == expect[0], "claim: expected %s, got %r" % (expect, reply[:2])
        if expect[1] is not None:
            assert reply[1].decode() == expect[1], "claim detail %r, want %r" % (reply[:2],
                                                                                 expect)
        if reason == "run":
            token = reply[1].decode()
            job.attempts += 1
            assert token.startswith("%d:" % job.attempts), token
            assert token not in job.tokens, "a token was handed out twice"
            if job.status == "queued":
                self.entries.pop((queue, entry), None)
            job.status = "running"
            job.token = token
            job.tokens.append(token)
            job.worker = w
            job.short_deadline = short
            job.deadline_set = time.monotonic()
            worker.held[job_id] = token
            owners = self.r.xpending_range(self.j.p + "q:" + queue, "workers", entry, entry, 1)
            assert owners and owners[0]["consumer"].decode() == w, "PEL owner after run"
        elif reason == "canceled":
            self.finish(job, "canceled")
        elif reason == "dead":
            self.finish(job, "failed")

    def held_call(self, i):
        w, job_id = self.pick(self.held_pairs(), i)
        return self.workers[w], self.jobs[job_id], self.workers[w].held[job_id]

    @precondition(lambda self: self.held_pairs())
    @rule(i=st.integers(0, 1000), short=st.booleans())
    def touch(self, i, short):
        worker, job, token = self.held_call(i)
        refusal = self.refusal_for(job, token)
        vis = SHORT_MS if short else LONG_MS
        if refusal:
            self.expect_refusal((refusal,), self.j.touch, job.id, token, visibility_ms=vis)
            del worker.held[job.id]
            return
        assert self.call(self.j.touch, job.id, token, visibility_ms=vis) == \
            (1 if job.cancel_requested else 0)
        job.short_deadline = short
        job.deadline_set = time.monotonic()
        queue = job.priority
        owners = self.r.xpending_range(self.j.p + "q:" + queue, "workers", job.entry, job.entry, 1)
        assert owners and owners[0]["consumer"].decode() == worker.name, "PEL owner after touch"

    @precondition(lambda self: self.held_pairs())
    @rule(i=st.integers(0, 1000), value=st.sampled_from(["0.25", "0.5", "1.5", "-1"]))
    def progress(self, i, value):
        worker, job, token = self.held_call(i)
        refusal = self.refusal_for(job, token)
        if refusal:
            self.expect_refusal((refusal,), self.j.progress, job.id, token, progress=value)
            del worker.held[job.id]
            return
        assert self.call(self.j.progress, job.id, token, progress=value) == \
            (1 if job.cancel_requested else 0)

    @precondition(lambda self: self.held_pairs())
    @rule(i=st.integers(0, 1000))
    def complete(self, i):
        worker, job, token = self.held_call(i)
        del worker.held[job.id]
        refusal = self.refusal_for(job, token)
        if refusal:
            self.expect_refusal((refusal,), self.j.complete, job.id, token)
            return
        assert self.call(self.j.complete, job.id, token) == b"OK"
        seen("complete OK")
        self.finish(job, "completed")

    @precondition(lambda self: self.held_pairs())
    @rule(i=st.integers(0, 1000), retryable=st.booleans(), later=st.booleans(),
          code=st.sampled_from(["gpu_oom", "gpu_oom", "canceled", "decode_failed"]))
    def fail(self, i, retryable, later, code):
        worker, job, token = self.held_call(i)
        del worker.held[job.id]
        refusal = self.refusal_for(job, token)
        base = "60000" if later else "0"
        if refusal:
            self.expect_refusal((refusal,), self.j.fail, job.id, token, code=code,
                                retryable="1" if retryable else "0", base_ms=base,
                                dead_maxlen=str(DEAD_MAXLEN))
            return
        reply = self.call(self.j.fail, job.id, token, code=code,
                          retryable="1" if retryable else "0", base_ms=base,
                          dead_maxlen=str(DEAD_MAXLEN))
        seen("fail " + reply[0].decode())
        if job.cancel_requested or code == "canceled":
            assert reply == [b"canceled"], reply
            self.finish(job, "canceled")
        elif retryable and job.attempts < job.max_attempts:
            assert reply[0] == b"retry", reply
            job.status = "queued"
            job.place = "delayed"
            job.token = None
            job.entry = None
            job.delayed_due = not later
        else:
            assert reply == [b"failed"], reply
            self.finish(job, "failed")

    @precondition(lambda self: self.held_pairs())
    @rule(i=st.integers(0, 1000))
    def requeue(self, i):
        worker, job, token = self.held_call(i)
        del worker.held[job.id]
        refusal = self.refusal_for(job, token)
        if refusal:
            self.expect_refusal((refusal,), self.j.requeue, job.id, token)
            return
        reply = self.call(self.j.requeue, job.id, token)
        seen("requeue " + reply[0].decode())
        if job.cancel_requested:
            assert reply == [b"canceled"], reply
            self.finish(job, "canceled")
            return
        assert reply[0] == b"queued", reply
        job.status = "queued"
        job.place = "stream"
        job.token = None
        job.attempts -= 1
        job.entry = reply[1].decode()
        self.entries[(job.priority, job.entry)] = job.id

    @precondition(lambda self: any(j.tokens for j in self.jobs.values()))
    @rule(i=st.integers(0, 1000), k=st.integers(0, 10),
          op=st.sampled_from(["touch", "progress", "complete", "fail", "requeue"]))
    def replay(self, i, k, op):
        """An old call comes again (a retried request, a worker back from a pause):
        any token that is not the live one is refused and changes nothing."""
        job = self.pick([j for j in self.jobs.values() if j.tokens], i)
        token = self.pick(job.tokens, k)
        if token == job.token and job.status == "running":
            return
        fn = {"touch": self.j.touch, "progress": self.j.progress, "complete": self.j.complete,
              "fail": self.j.fail, "requeue": self.j.requeue}[op]
        self.expect_refusal((self.refusal_for(job, token),), fn, job.id, token)

    @precondition(lambda self: any(j.status == "running" for j in self.jobs.values()))
    @rule(i=st.integers(0, 1000))
    def force_cancel(self, i):
        job = self.pick([j for j in self.jobs.values() if j.status == "running"], i)
        if not self.overdue(job):
            self.expect_refusal(("NOT_OVERDUE",), self.j.force_cancel, job.id, job.token)
            return
        stale = [t for t in job.tokens if t != job.token]
        if stale:
            self.expect_refusal(("STALE",), self.j.force_cancel, job.id, stale[-1])
        reply = self.call(self.j.force_cancel, job.id, job.token)
        seen("force_cancel " + reply[0].decode())
        assert reply[0] == b"canceled", reply[:1]
        self.finish(job, "canceled")
        job.files_deleted = True

    # timers --------------------------------------------------------------------------

    @rule()
    def promote(self):
        due = [j for j in self.jobs.values() if j.place == "delayed" and j.delayed_due]
        assert self.call(self.j.promote, 1000) == len(due)
        if due:
            seen("promote moved")
        for job in due:
            job.place = "stream"
            job.delayed_due = False
            job.entry = self.r.hget(self.j.p + "job:" + job.id, "stream_id").decode()
            self.entries[(job.priority, job.entry)] = job.id

    @rule(w=st.sampled_from(WORKERS))
    def heartbeat(self, w):
        self.call(self.j.heartbeat, w, "30", ["state", "busy" if self.workers[w].held else "idle"])
        names = {m.decode() for m in self.r.zrange(self.j.p + "workers", 0, -1)}
        assert w in names and names <= set(WORKERS), names

    @rule()
    def janitor(self):
        expired, overdue, _consumers = self.call(self.j.janitor, 1000, 1)
        assert expired == [], "records expired within the test: %r" % expired
        for k in range(0, len(overdue), 2):
            job = self.jobs[overdue[k].decode()]
            assert job.status == "running" and job.short_deadline, \
                "janitor calls %s overdue (%s)" % (job.id, job.status)

    # invariants ----------------------------------------------------------------------

    @invariant()
    def state_matches_model(self):
        STATS["steps"] += 1
        got = check_invariants(self.r, self.j.p, strict_owner=False)
        assert set(got) == set(self.jobs), "jobs in Redis %d, in the model %d" % (
            len(got), len(self.jobs))
        for job_id, job in self.jobs.items():
            rec = got[job_id]
            assert rec["status"] == job.status, "%s: %s, model %s" % (job_id, rec["status"],
                                                                    job.status)
            assert int(rec["attempts"]) == job.attempts, "%s attempts" % job_id
            assert rec.get("token") == job.token, "%s token %r, model %r" % (
                job_id, rec.get("token"), job.token)
            if job.status == "running":
                assert rec["worker"] == job.worker
            where = ("stream" if "stream_id" in rec else
                     "delayed" if self.r.zscore(self.j.p + "delayed", job_id) is not None
                     else "none")
            assert where == job.place, "%s is in %s, model %s" % (job_id, where, job.place)
        # at most one live attempt: every held token but the live one is refused
        for w in self.workers.values():
            for job_id, token in w.held.items():
                job = self.jobs[job_id]
                live = [x for x in self.workers.values()
                        if x.held.get(job_id) == job.token and job.token]
                assert len(live) <= 1, "two workers hold the live token of %s" % job_id
        # bounded keys
        assert self.r.xlen(self.j.p + "dead") <= DEAD_MAXLEN + 100
        active = sum(1 for j in self.jobs.values() if j.place == "stream")
        assert self.r.xlen(self.j.p + "q:high") + self.r.xlen(self.j.p + "q:normal") == active


def run(server, target):
    """Runs examples on server until at least target steps were taken."""
    global SERVER
    SERVER = server
    STATS["steps"] = STATS["examples"] = 0
    OUTCOMES.clear()
    while STATS["steps"] < target:
        # one long run per batch: Hypothesis starts each run with its smallest
        # examples, so many short runs would mostly test near-empty histories
        left = target - STATS["steps"]
        run_state_machine_as_test(
            ScriptMachine,
            settings=settings(max_examples=max(10, left // 80), stateful_step_count=100,
                              deadline=None, database=None, print_blob=True,
                              suppress_health_check=list(HealthCheck)))


def main():
    target = int(os.environ.get("SEP_MODEL_STEPS", "5000"))
    t0 = time.monotonic()
    with RedisServer() as server:
        run(server, target)
    print("outcomes: " + ", ".join("%s %d" % kv for kv in sorted(OUTCOMES.items())))
    print("PASS: %d steps in %d examples, %.1fs" % (STATS["steps"], STATS["examples"],
                                                     time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
