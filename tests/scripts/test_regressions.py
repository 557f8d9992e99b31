#!/usr/bin/python3
"""Regression cases of the job-state scripts: one per finding of the review in issue
16 ("Reproduced" 1..11), each reproducing the finding's scenario against the
scripts on a real redis-server and checking the contract of shared/README.md holds.

Starts one redis-server on a Unix socket in a temporary directory (removed even on
failure), empties it before each case, runs every script in audit mode (a command
on a key missing from KEYS fails: tests/scripts/sepredis.py), and checks the state
invariants after each case. Prints one line per case and `PASS: N cases`; exits
non-zero when a case failed.

    /usr/bin/python3 tests/scripts/test_regressions.py [case-name-substring ...]
"""

import os
import sys
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis  # noqa: E402

from sepredis import (Jobs, RedisServer, check_invariants, error_code, pairs,  # noqa: E402
                      snapshot)

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def expect(cond, msg, *args):
    if not cond:
        raise AssertionError(msg % args if args else msg)


def refused(code, fn, *args, **kwargs):
    """Runs a script call that must fail with error `code`; returns the message."""
    try:
        reply = fn(*args, **kwargs)
    except redis.ResponseError as e:
        expect(error_code(e) == code, "expected %s, got %s", code, e)
        return str(e)
    raise AssertionError("expected %s, got reply %r" % (code, reply))


def new_id():
    return str(uuid.uuid4())


def queued_job(j, priority="normal", **kw):
    job_id = new_id()
    reply = j.submit(job_id, priority=priority, **kw)
    expect(reply[0] == b"created", "submit: %r", reply[:2])
    return job_id


def run_job(j, worker="w1", priority="normal", visibility_ms=30000, **kw):
    """Submits, reads and claims a job as worker: (job id, entry, token)."""
    job_id = queued_job(j, priority, **kw)
    (entry, got), = j.read(worker, priority)
    expect(got == job_id, "read another job")
    reply = j.claim(job_id, worker, priority, entry, visibility_ms=visibility_ms)
    expect(reply[0] == b"run", "claim: %r", reply[:2])
    return job_id, entry, reply[1].decode()


def pending_owner(j, queue, entry):
    for p in j.r.xpending_range(j.p + "q:" + queue, "workers", entry, entry, 1):
        return p["consumer"].decode()
    return None


# 1 ---------------------------------------------------------------------------------------
@case
def fencing_and_claim_refresh_one_execution(j):
    """A worker that touches keeps its job; a paused one loses it and every late call
    of its attempt is refused; only one attempt is ever live."""
    job_id, entry, t1 = run_job(j, "w1", visibility_ms=300)
    # w1 alive: touching every 50 ms keeps the entry's idle time low, so XAUTOCLAIM
    # with min-idle = the visibility timeout takes nothing
    for _ in range(8):
        time.sleep(0.05)
        expect(j.touch(job_id, t1, visibility_ms=300) == 0, "touch")
        expect(j.autoclaim("w2", "normal", 300) == [], "XAUTOCLAIM took a live job")
    # a misconfigured worker takes it anyway (min-idle 0): claim says busy and hands
    # the entry back to w1
    expect(j.autoclaim("w2", "normal", 0) == [(entry, job_id)], "forced XAUTOCLAIM")
    reply = j.claim(job_id, "w2", "normal", entry, visibility_ms=300)
    expect(reply == [b"busy", b"w1"], "claim of a live job: %r", reply[:2])
    expect(pending_owner(j, "normal", entry) == "w1", "entry not handed back to w1")
    # w1 pauses past its deadline: w2 reclaims
    time.sleep(0.35)
    expect(j.autoclaim("w2", "normal", 300) == [(entry, job_id)], "XAUTOCLAIM after the pause")
    reply = j.claim(job_id, "w2", "normal", entry, visibility_ms=30000)
    expect(reply[0] == b"run", "reclaim: %r", reply[:2])
    t2 = reply[1].decode()
    expect(t2.startswith("2:") and t2 != t1, "second token %s", t2)
    # w1 comes back: all its calls are refused, nothing changes
    before = snapshot(j.r)
    refused("STALE", j.progress, job_id, t1)
    refused("STALE", j.touch, job_id, t1)
    refused("STALE", j.fail, job_id, t1, retryable="1")
    refused("STALE", j.requeue, job_id, t1)
    refused("STALE", j.complete, job_id, t1)
    expect(snapshot(j.r) == before, "a stale call changed the state")
    # w3 finds nothing to take while w2 runs it
    expect(j.autoclaim("w3", "normal", 300) == [], "XAUTOCLAIM took w2's job")
    expect(j.complete(job_id, t2) == b"OK", "w2 complete")
    job = j.job(job_id)
    expect(job["status"] == "completed" and job["worker"] == "w2" and job["attempts"] == "2",
           "final record %r", job)


# 2 ---------------------------------------------------------------------------------------
@case
def poison_job_goes_dead_after_max_attempts(j):
    job_id, entry, _ = run_job(j, "w0", visibility_ms=1, max_attempts=3)
    runs = 1
    for n in range(1, 8):
        time.sleep(0.005)
        worker = "w%d" % n
        expect(j.autoclaim(worker, "normal", 1) == [(entry, job_id)], "takeover %d", n)
        reply = j.claim(job_id, worker, "normal", entry, visibility_ms=1)
        if reply[0] == b"run":
            runs += 1
            continue
        expect(reply[0] == b"dead" and reply[1] == b"3", "takeover %d: %r", n, reply[:2])
        break
    expect(runs == 3, "ran %d times with max_attempts 3", runs)
    job = j.job(job_id)
    expect(job["status"] == "failed" and job["error_code"] == "worker_lost", "record %r", job)
    dead = j.r.xrange(j.p + "dead")
    expect(len(dead) == 1 and dead[0][1][b"id"] == job_id.encode(), "dead stream %r", dead)
    expect(j.r.xlen(j.p + "q:normal") == 0, "the entry is still in the stream")
    expect(j.stat("running") == 0 and j.stat("failed") == 1, "stats")


# 3 ---------------------------------------------------------------------------------------
@case
def reclaim_of_a_cancel_requested_job_cancels_it(j):
    job_id, entry, _ = run_job(j, "w1", visibility_ms=200)
    reply = j.cancel(job_id)
    expect(reply[0] == b"cancel_requested", "cancel of a live job: %r", reply[:1])
    time.sleep(0.25)
    expect(j.autoclaim("w2", "normal", 200) == [(entry, job_id)], "XAUTOCLAIM")
    reply = j.claim(job_id, "w2", "normal", entry)
    expect(reply[0] == b"canceled", "reclaim ran a canceled job: %r", reply[:2])
    job = pairs(reply[2:])
    expect(job["status"] == "canceled" and job["cancel_requested"] == "1", "record %r", job)
    expect(job["attempts"] == "1", "the reclaim counted an attempt")
    expect(j.stat("running") == 0 and j.stat("canceled") == 1, "stats")
    # a DELETE of a running job whose worker is gone cancels it at once
    job_id, entry, token = run_job(j, "w3", visibility_ms=1)
    time.sleep(0.005)
    reply = j.cancel(job_id)
    expect(reply[0] == b"canceled" and pairs(reply[1:])["files_deleted"] == "1",
           "cancel of an overdue job: %r", reply[:1])
    refused("NOT_RUNNING", j.complete, job_id, token)


# 4 ---------------------------------------------------------------------------------------
@case
def every_argument_checked_before_the_first_write(j):
    job_id, entry, token = run_job(j, "w1")
    before = snapshot(j.r)
    checks = [
        (lambda: j.s.call("fail", j.keys(job_id), [token, "gpu_oom"]),
         "argv[3] message is missing"),
        (lambda: j.fail(job_id, token, base_ms="nan"), "argv[5] backoff_base_ms"),
        (lambda: j.fail(job_id, token, jitter_ms="inf"), "argv[7] jitter_ms"),
        (lambda: j.fail(job_id, token, cap_ms="1.5"), "argv[6] backoff_cap_ms"),
        (lambda: j.fail(job_id, token, retryable="yes"), "argv[4] retryable"),
        (lambda: j.fail(job_id, token, dead_maxlen="0"), "argv[8] dead_maxlen"),
        (lambda: j.fail(job_id, token, code="Bad Code"), "argv[2] code"),
        (lambda: j.complete(job_id, token, bytes_out="1e17"), "argv[3] bytes_out"),
        (lambda: j.complete(job_id, token, bytes_out="0x10"), "argv[3] bytes_out"),
        (lambda: j.complete(job_id, token, extra=["audio_seconds", "nan"]),
         "argv[5] audio_seconds"),
        (lambda: j.complete(job_id, token, extra=["audio_channels"]), "field pairs"),
        (lambda: j.touch(job_id, token, visibility_ms="0"), "argv[2] visibility_ms"),
        (lambda: j.progress(job_id, token, stage="Bad Stage"), "argv[3] stage"),
        (lambda: j.claim(job_id, "w1", "normal", entry, visibility_ms="2.5"),
         "argv[5] visibility_ms"),
        (lambda: j.claim(job_id, "w1", "low", entry), "argv[2] queue"),
        (lambda: j.claim(job_id, "w1", "normal", entry, nonce="XYZ"), "argv[4] nonce"),
        (lambda: j.claim(job_id, "w1", "normal", entry, dead_maxlen="-1"),
         "argv[6] dead_maxlen"),
    ]
    for fn, where in checks:
        msg = refused("ERR_ARG", fn)
        expect(where in msg, "error %r does not name %r", msg, where)
    expect(snapshot(j.r) == before, "a refused call changed the state")
    # submit: a fractional input_bytes, a bad max_attempts: nothing written
    before = snapshot(j.r)
    for extra, where in ((["input_bytes", "2.5"], "input_bytes"),
                         (["max_attempts", "0"], "max_attempts"),
                         (["status", "completed"], "not a field submit may set"),
                         (["overlap", "nan"], "overlap")):
        job = new_id()
        keys = [j.p + "job:" + job, j.p + "stats", j.p + "q:high", j.p + "q:normal"]
        args = [job, "0", "600", "0", "priority", "normal", "max_attempts", "3",
                "result_ttl", "60"]
        if extra[0] in ("max_attempts",):
            args = args[:6] + args[8:]
        msg = refused("ERR_ARG", j.s.call, "submit", keys, args + extra)
        expect(where in msg, "submit error %r does not name %r", msg, where)
    expect(snapshot(j.r) == before, "a refused submit changed the state")
    # the gauge never goes below 0 and backpressure counts right
    expect(j.complete(job_id, token) == b"OK", "complete")
    a, b = queued_job(j, max_queued=2), queued_job(j, max_queued=2)
    refused("QUEUE_FULL", j.submit, new_id(), max_queued=2)
    for x in (a, b):
        expect(j.cancel(x)[0] == b"canceled", "cancel")
        refused("ALREADY_DELETED", j.cancel, x)
    expect(j.stat("queued") == 0, "queued gauge %d", j.stat("queued"))
    queued_job(j, max_queued=2)
    queued_job(j, max_queued=2)
    refused("QUEUE_FULL", j.submit, new_id(), max_queued=2)


# 5 ---------------------------------------------------------------------------------------
@case
def ttls_must_be_integers_of_at_least_one(j):
    before = snapshot(j.r)
    msg = refused("ERR_ARG", j.submit, new_id(), idem="k", idem_ttl=0)
    expect("argv[3] idempotency_ttl must be an integer in 1..315360000" in msg, msg)
    refused("ERR_ARG", j.submit, new_id(), result_ttl=0)
    refused("ERR_ARG", j.submit, new_id(), result_ttl="2.5")
    expect(snapshot(j.r) == before, "a refused submit wrote something")
    expect(j.r.xlen(j.p + "q:normal") == 0, "orphan stream entry")
    j.heartbeat("w1", "30")
    before = snapshot(j.r)
    msg = refused("ERR_ARG", j.heartbeat, "w1", "2.5")
    expect("argv[2] ttl" in msg, msg)
    refused("ERR_ARG", j.heartbeat, "w1", "0")
    expect(snapshot(j.r) == before, "a refused heartbeat changed the worker hash")
    expect(j.r.ttl(j.p + "worker:w1") > 25, "worker hash TTL")
    # a finished record always gets a TTL and an expiry entry
    job_id, _, token = run_job(j, "w1", result_ttl=5)
    j.complete(job_id, token)
    expect(0 < j.r.ttl(j.p + "job:" + job_id) <= 5, "record TTL")
    expect(j.r.zscore(j.p + "expiry", job_id) is not None, "expiry index")


# 6 ---------------------------------------------------------------------------------------
@case
def replayed_and_late_calls_are_refused(j):
    job_id, entry, token = run_job(j, "w1", max_attempts=3)
    reply = j.fail(job_id, token, retryable="1", base_ms="60000")
    expect(reply[0] == b"retry", "fail: %r", reply)
    before = snapshot(j.r)
    refused("NOT_RUNNING", j.fail, job_id, token, retryable="1")  # replay
    refused("NOT_RUNNING", j.fail, job_id, token, retryable="0")  # late permanent
    refused("NOT_RUNNING", j.complete, job_id, token)  # late complete
    refused("NOT_RUNNING", j.progress, job_id, token)
    refused("NOT_RUNNING", j.touch, job_id, token)
    expect(snapshot(j.r) == before, "a late call changed the state")
    expect(j.stat("retried") == 1, "retried %d", j.stat("retried"))
    expect(j.r.zscore(j.p + "delayed", job_id) is not None, "left delayed")
    # every terminal outcome leaves {p}delayed
    j.r.zadd(j.p + "delayed", {job_id: 0})
    expect(j.promote() == 1, "promote")
    (entry, _), = j.read("w1", "normal")
    token = j.claim(job_id, "w1", "normal", entry)[1].decode()
    expect(j.fail(job_id, token, retryable="0") == [b"failed"], "permanent fail")
    expect(j.r.zscore(j.p + "delayed", job_id) is None, "failed job left in delayed")
    refused("NOT_RUNNING", j.complete, job_id, token)


# 7 ---------------------------------------------------------------------------------------
@case
def a_worker_restarted_under_its_name_reclaims_its_job(j):
    job_id, entry, t1 = run_job(j, "w1")
    # the restarted w1 reads its own pending entries
    expect(j.read("w1", "normal", own=True) == [(entry, job_id)], "own pending entry")
    reply = j.claim(job_id, "w1", "normal", entry)
    expect(reply[0] == b"run" and reply[1].startswith(b"2:"), "restart claim: %r", reply[:2])
    refused("STALE", j.progress, job_id, t1)
    expect(pending_owner(j, "normal", entry) == "w1", "entry not pending for w1")
    expect(j.complete(job_id, reply[1].decode()) == b"OK", "complete")
    # an entry not read through the group cannot be claimed (no pending entry: a
    # running job must always have one for a reclaim to find)
    unread = queued_job(j)
    entry = j.job(unread)["stream_id"]
    before = snapshot(j.r)
    msg = refused("ERR_ARG", j.claim, unread, "w1", "normal", entry)
    expect("argv[3] entry is not pending" in msg, msg)
    expect(snapshot(j.r) == before, "a refused claim changed the state")
    expect(j.cancel(unread)[0] == b"canceled", "cancel")
    # an entry of a job that is gone is dropped (XACK + XDEL) by the script itself
    gone = queued_job(j)
    (entry, _), = j.read("w1", "normal")
    j.r.delete(j.p + "job:" + gone)
    j.r.hincrby(j.p + "stats", "queued", -1)  # the operator's DEL, counted
    expect(j.claim(gone, "w1", "normal", entry) == [b"drop", b"gone"], "claim of a gone job")
    expect(j.r.xlen(j.p + "q:normal") == 0 and pending_owner(j, "normal", entry) is None,
           "the entry of a gone job is still there")


# 8 ---------------------------------------------------------------------------------------
@case
def every_key_is_bounded(j):
    for _ in range(300):
        job_id, _, token = run_job(j, "w1", max_attempts=1)
        j.fail(job_id, token, retryable="0", dead_maxlen="10")
    expect(j.r.xlen(j.p + "dead") <= 10 + 100, "dead stream has %d entries",
           j.r.xlen(j.p + "dead"))
    # idle consumers with nothing pending are removed
    for n in range(5):
        j.r.execute_command("XGROUP", "CREATECONSUMER", j.p + "q:normal", "workers",
                            "gone-%d" % n)
    time.sleep(0.01)
    expired, overdue, consumers = j.janitor(consumer_idle_ms=5)
    names = {consumers[i + 1].decode() for i in range(0, len(consumers), 2)}
    expect({"gone-%d" % n for n in range(5)} <= names, "consumers left: %r", names)
    # a worker with a short TTL does not evict one with a long TTL, and expired
    # names are dropped
    j.heartbeat("long", "60")
    j.heartbeat("short", "1")
    expect(j.r.zscore(j.p + "workers", "long") is not None, "long evicted")
    time.sleep(1.05)
    j.heartbeat("other", "1")
    names = {m.decode() for m in j.r.zrange(j.p + "workers", 0, -1)}
    expect(names == {"long", "other"}, "workers %r", names)
    # the expiry index is pruned once the caller has removed the directories
    job_id, _, token = run_job(j, "w1", result_ttl=1)
    j.complete(job_id, token)
    time.sleep(1.05)
    expired, _, _ = j.janitor(limit=1000)
    expect(job_id.encode() in expired, "expired record not reported")
    j.janitor(limit=1000, removed=[e.decode() for e in expired])
    expect(j.r.zscore(j.p + "expiry", job_id) is None, "expiry entry kept")


# 9 ---------------------------------------------------------------------------------------
@case
def reserved_fields_cannot_be_set_by_extra_pairs(j):
    job_id, _, token = run_job(j, "w1")
    before = snapshot(j.r)
    for field in ("status", "token", "worker", "attempts", "stream_id", "stems",
                  "cancel_requested", "finished_at", "error_code"):
        msg = refused("ERR_ARG", j.progress, job_id, token, extra=[field, "x"])
        expect("argv[5]" in msg and field in msg, msg)
        refused("ERR_ARG", j.complete, job_id, token, extra=[field, "running"])
        refused("ERR_ARG", j.fail, job_id, token, extra=[field, "x"])
    refused("ERR_ARG", j.heartbeat, "w1", "30", ["last_seen", "0"])
    expect(snapshot(j.r) == before, "a refused call changed the state")
    j.progress(job_id, token, extra=["audio_seconds", "3.5", "device", "cuda:0"])
    expect(j.complete(job_id, token) == b"OK", "complete refused after progress")
    expect(j.stat("running") == 0, "running gauge %d", j.stat("running"))


# 10 --------------------------------------------------------------------------------------
@case
def every_key_in_keys_and_one_hash_tag(j):
    """Every run here is in audit mode (an undeclared key fails); the one-node
    Cluster case is tests/scripts/test_cluster.py. Here: keys that do not match the
    job key's prefix are refused, and promote touches only the jobs it is given."""
    job_id, _, token = run_job(j, "w1")
    keys = j.keys(job_id)
    keys[2] = j.p + "other:q:high"  # same hash tag: the script itself refuses it
    refused("ERR_KEYS", j.s.call, "progress", keys, [token, "0.5", "", ""])
    refused("ERR_KEYS", j.s.call, "cancel", j.keys(job_id)[:5], [])
    expect(j.fail(job_id, token, retryable="1")[0] == b"retry", "fail")
    j.r.zadd(j.p + "delayed", {job_id: 0})
    keys = [j.p + "delayed", j.p + "q:high", j.p + "q:normal"]
    expect(j.s.call("promote", keys, []) == 0, "promote moved an undeclared job")
    expect(j.s.call("promote", keys + [j.p + "job:" + job_id], []) == 1, "promote")


# 11 --------------------------------------------------------------------------------------
@case
def progress_nan_refused_and_queue_time_kept_on_reclaim(j):
    job_id, entry, token = run_job(j, "w1", visibility_ms=1)
    for bad in ("nan", "inf", "-inf", "", "0x1", "1,5"):
        refused("ERR_ARG", j.progress, job_id, token, progress=bad)
    expect(j.job(job_id)["progress"] == "0", "progress changed")
    queued_s = j.job(job_id)["timing_queued_s"]
    time.sleep(0.05)
    j.autoclaim("w2", "normal", 1)
    reply = j.claim(job_id, "w2", "normal", entry)
    expect(reply[0] == b"run", "reclaim %r", reply[:2])
    expect(j.job(job_id)["timing_queued_s"] == queued_s, "timing_queued_s recomputed")


# 12 --------------------------------------------------------------------------------------
@case
def submit_past_its_deadline_writes_nothing(j):
    """A submit Redis runs after the caller stopped waiting (its deadline, Redis time
    in ms) is refused and leaves no job, stream entry, counter or idempotency key."""
    now_ms = int(j.r.time()[0]) * 1000
    before = snapshot(j.r)
    msg = refused("PAST_DEADLINE", j.submit, new_id(), idem="k-late", deadline_ms=now_ms - 1)
    expect(str(now_ms - 1) in msg, "PAST_DEADLINE %r does not give the deadline", msg)
    expect(snapshot(j.r) == before, "a late submit changed the state")
    # before its deadline it is an ordinary submit
    job_id = queued_job(j, idem="k-late", deadline_ms=now_ms + 60000)
    expect(j.r.get(j.p + "idem:k-late") == job_id.encode(), "idem key not set")
    refused("ERR_ARG", j.submit, new_id(), deadline_ms=-1)


# 13 --------------------------------------------------------------------------------------
@case
def submit_ttls_are_bounded(j):
    """The TTLs are bounded (10 years), far below what EXPIRE accepts, so a finish
    never fails on its EXPIRE; a refused submit writes nothing."""
    before = snapshot(j.r)
    for kw, where in (({"idem": "k-ttl", "idem_ttl": 10 ** 14}, "idempotency_ttl"),
                      ({"result_ttl": 10 ** 14}, "result_ttl")):
        msg = refused("ERR_ARG", j.submit, new_id(), **kw)
        expect(where in msg, "error %r does not name %r", msg, where)
    expect(snapshot(j.r) == before, "a refused submit changed the state")
    expect(j.r.xlen(j.p + "q:normal") == 0, "a job was queued")
    queued_job(j, idem="k-ttl", idem_ttl=315360000, result_ttl=315360000)


# 14 --------------------------------------------------------------------------------------
@case
def cancel_with_the_idempotency_key_frees_it(j):
    """The module's cancel of a job created after its POST was answered 503 passes the
    POST's Idempotency-Key: the key goes when it still names that job (so the client's
    retry creates a new job), and stays when it names another job."""
    job_id = queued_job(j, idem="k-comp")
    reply = j.cancel(job_id, idem="k-comp")
    expect(reply[0] == b"canceled", "cancel: %r", reply[:2])
    expect(j.r.get(j.p + "idem:k-comp") is None, "the key still names the canceled job")
    retry = queued_job(j, idem="k-comp")
    expect(j.r.get(j.p + "idem:k-comp") == retry.encode(), "the retry did not take the key")
    # a key that names another job is left alone
    other = queued_job(j)
    expect(j.cancel(other, idem="k-comp")[0] == b"canceled", "cancel other")
    expect(j.r.get(j.p + "idem:k-comp") == retry.encode(), "the key of another job went")
    # a cancel refused (no such job) writes nothing; a ninth key that is no idem key is refused
    before = snapshot(j.r)
    refused("NOT_FOUND", j.cancel, new_id(), idem="k-comp")
    refused("ERR_KEYS", j.s.call, "cancel", j.keys(retry) + [j.p + "job:k-comp"], [])
    refused("ALREADY_DELETED", j.cancel, other, idem="k-comp")
    expect(snapshot(j.r) == before, "a refused cancel changed the state")


# stats -----------------------------------------------------------------------------------
@case
def stats_reads_everything_in_one_call_and_writes_nothing(j):
    """The stats script (GET /v1/stats, /metrics): its numbers after 3 submits, a
    completion, a permanent failure and a retry; it writes nothing; wrong KEYS are
    refused. It reads {p}worker:{name} for the live names of {p}workers, keys it cannot
    declare before reading the zset (same prefix, same hash tag): so it runs without
    the audit prelude here."""
    import json
    from sepredis import Scripts
    plain = Scripts(j.r, audit=False)
    keys = [j.p + s for s in ("stats", "q:high", "q:normal", "delayed", "dead", "running",
                              "workers")]
    done, _, token = run_job(j, "w1")
    expect(j.complete(done, token, extra=["audio_seconds", "1.5"]) == b"OK", "complete")
    failed, _, token = run_job(j, "w1")
    expect(j.fail(failed, token, retryable="0")[0] == b"failed", "fail")
    retried, _, token = run_job(j, "w1", priority="high")
    expect(j.fail(retried, token, retryable="1", base_ms="60000")[0] == b"retry", "retry")
    queued_job(j)
    j.heartbeat("w1", fields=["host", "h1", "models", "htdemucs"])
    j.heartbeat("gone", ttl="1")
    j.r.zadd(j.p + "workers", {"gone": 1})  # its heartbeat expired long ago
    before = snapshot(j.r)
    doc = json.loads(plain.call("stats", keys, ["100"]))
    expect(snapshot(j.r) == before, "stats wrote something")
    st = doc["stats"]
    expect((st["submitted"], st["completed"], st["failed"], st["retried"]) == (4, 1, 1, 1),
           "counters %r", st)
    expect((st["queued"], st["running"]) == (2, 0), "gauges %r", st)
    expect(st["hist_wait_count"] == 3 and st["hist_processing_count"] == 1, "hists %r", st)
    expect(st["audio_ms"] == 1500, "audio_ms %r", st)
    expect(doc["queues"]["normal"] == {"length": 1, "pending": 0}, "queues %r", doc["queues"])
    expect(doc["delayed"] == 1 and doc["dead"] == 1, "delayed/dead %r", doc)
    expect([w["name"] for w in doc["workers"]] == ["w1"] and doc["workers_total"] == 1,
           "workers %r", doc["workers"])
    expect(doc["buckets"]["wait"][0] == "0.1", "buckets %r", doc["buckets"])
    refused("ERR_KEYS", plain.call, "stats", keys[:6], ["100"])
    refused("ERR_KEYS", plain.call, "stats", keys[:6] + [j.p + "other"], ["100"])
    refused("ERR_ARG", plain.call, "stats", keys, ["0"])
    refused("ERR_ARG", plain.call, "stats", keys, ["100", "x"])


def run_cases(server, wanted=()):
    """Runs the cases (all, or those whose name contains one of wanted) on server;
    returns (ran, failed)."""
    failed = 0
    ran = 0
    j = Jobs(server.r)
    for fn in CASES:
        if wanted and not any(w in fn.__name__ for w in wanted):
            continue
        server.r.flushall()
        j.setup()
        t0 = time.monotonic()
        ran += 1
        try:
            fn(j)
            check_invariants(server.r, j.p)
            print("ok   %-58s %.2fs" % (fn.__name__, time.monotonic() - t0))
        except Exception:  # noqa: BLE001 (report every failure, run every case)
            failed += 1
            print("FAIL %s" % fn.__name__)
            traceback.print_exc()
    return ran, failed


def main(argv):
    with RedisServer() as server:
        ran, failed = run_cases(server, argv[1:])
    print("CASES: %d passed, %d failed, 0 skipped" % (ran - failed, failed))
    if failed:
        print("FAIL: %d of %d cases" % (failed, ran))
        return 1
    print("PASS: %d cases" % ran)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
