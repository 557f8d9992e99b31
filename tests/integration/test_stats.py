#!/usr/bin/python3
"""The operations endpoints against a real redis-server + nginx with the module:
GET /v1/stats, GET /metrics (parsed with prometheus_client's own parser) and
GET /v1/models.

Jobs are driven through the project's Lua scripts (tests/integration/worker_sim.py:
claim, complete, fail, heartbeat), so every number the endpoints show is known
exactly: 3 submitted, 2 completed and 1 failed say so in the counters, the gauges,
the queues and both histograms; the bucket a job lands in is set by moving its
created_at / started_at back, not by waiting. Each case starts from an empty Redis.

    /usr/bin/python3 tests/integration/test_stats.py [case-name-substring ...]
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import worker_sim  # noqa: E402
from harness import expect, expect_json_error  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # reported by main()
    text_string_to_metric_families = None

P = worker_sim.PREFIX
WAV = harness.wav_bytes()

cases = harness.Cases()


# helpers ---------------------------------------------------------------------------------
def reset(stack):
    stack.redis.flushall()


def submit(stack, priority="normal"):
    resp = stack.request("POST", "/v1/jobs?priority=" + priority, body=WAV,
                         headers={"Content-Type": "audio/wav"})
    expect(resp.status == 202, "submit answered %d" % resp.status, resp.body[:200])
    return json.loads(resp.body)["id"]


def get_json(stack, path):
    resp = stack.request("GET", path)
    expect(resp.status == 200, "GET %s answered %d" % (path, resp.status), resp.body[:300])
    expect((resp.header("Content-Type") or "").startswith("application/json"),
           "GET %s content type" % path, resp.header("Content-Type"))
    return json.loads(resp.body)


def metrics(stack):
    """/metrics parsed: {sample name: {frozenset(labels.items()): value}}, and the
    families by name with their types."""
    resp = stack.request("GET", "/metrics")
    expect(resp.status == 200, "GET /metrics answered %d" % resp.status, resp.body[:300])
    ctype = resp.header("Content-Type") or ""
    expect(ctype.startswith("text/plain") and "version=0.0.4" in ctype,
           "/metrics content type", ctype)
    samples, types = {}, {}
    for family in text_string_to_metric_families(resp.body.decode("utf-8")):
        types[family.name] = family.type
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples, types


def one(samples, name, **labels):
    values = samples.get(name)
    expect(values is not None, "metric %s is missing" % name, sorted(samples)[:80])
    key = frozenset(labels.items())
    expect(key in values, "metric %s%s is missing" % (name, labels), values)
    return values[key]


def set_back(stack, job_id, field, seconds):
    """Moves a job's timestamp field (ms) `seconds` into the past."""
    key = P + "job:" + job_id
    now = int(stack.redis.hget(key, field))
    stack.redis.hset(key, field, str(now - int(seconds * 1000)))


def run_three(stack):
    """3 submitted, 2 completed, 1 failed for good; returns the job ids."""
    jobs = [submit(stack) for _ in range(3)]
    for job in jobs[:2]:
        worker_sim.complete_job(stack, job)
    token, _fields = worker_sim.claim(stack.redis, jobs[2])
    reply = worker_sim.fail(stack.redis, jobs[2], token, code="bad_input",
                            message="not audio", retryable="0")
    expect(reply[0] == b"failed", "fail.lua reply", reply)
    return jobs


def claim_one(stack, job_id, worker="it-worker/0"):
    """Reads exactly the job's entry (COUNT 1: it must be the oldest waiting one) and
    claims it; returns the token."""
    r = stack.redis
    queue = r.hget(P + "job:" + job_id, "priority").decode()
    stream = P + "q:" + queue
    got = r.xreadgroup(worker_sim.GROUP, worker, {stream: ">"}, count=1)
    entry = got[0][1][0][0]
    expect(entry == r.hget(P + "job:" + job_id, "stream_id"), "oldest entry", entry)
    reply = r.eval(worker_sim.script("claim"), 8, *worker_sim.job_keys(job_id), worker, queue,
                   entry, os.urandom(8).hex(), "300000", "1000")
    expect(reply[0] == b"run", "claim.lua reply", reply[:2])
    return reply[1].decode()


def heartbeat(stack, name, ttl=30, **fields):
    args = [name, str(ttl)]
    for k, v in fields.items():
        args += [k, str(v)]
    stack.redis.eval(worker_sim.script("heartbeat"), 2, P + "worker:" + name, P + "workers",
                     *args)


# cases -----------------------------------------------------------------------------------
@cases.case
def empty_store_all_zero(stack):
    reset(stack)
    s = get_json(stack, "/v1/stats")
    expect(s["counters"] == {"submitted": 0, "completed": 0, "failed": 0, "retried": 0,
                             "canceled": 0}, "counters", s["counters"])
    expect(s["jobs"] == {"queued": 0, "running": 0}, "gauges", s["jobs"])
    expect(s["workers"] == [] and s["workers_live"] == 0, "workers", s["workers"])
    expect(s["queue_wait_seconds"]["count"] == 0, "histogram", s["queue_wait_seconds"])
    samples, types = metrics(stack)
    expect(one(samples, "sep_jobs_submitted_total") == 0, "submitted")
    expect(types.get("sep_queue_wait_seconds") == "histogram", "histogram type", types)
    expect(types.get("sep_jobs_submitted") == "counter", "counter type", types)
    expect(get_json(stack, "/v1/models") == {"models": []}, "no worker, no model")


@cases.case
def three_submitted_two_completed_one_failed(stack):
    reset(stack)
    jobs = run_three(stack)
    s = get_json(stack, "/v1/stats")
    expect(s["counters"] == {"submitted": 3, "completed": 2, "failed": 1, "retried": 0,
                             "canceled": 0}, "counters", s["counters"])
    expect(s["jobs"] == {"queued": 0, "running": 0}, "gauges", s["jobs"])
    expect(s["dead"] == 1 and s["delayed"] == 0, "dead / delayed", s["dead"], s["delayed"])
    expect(s["queues"]["normal"] == {"waiting": 0, "delivered": 0}, "queues", s["queues"])
    bytes_in = sum(int(stack.redis.hget(P + "job:" + j, "input_bytes")) for j in jobs)
    bytes_out = sum(int(v) for v in (stack.redis.hget(P + "job:" + j, "bytes_out")
                                     for j in jobs) if v) or None
    expect(s["bytes"]["in"] == bytes_in, "bytes in", s["bytes"], bytes_in)
    stems = sum(len(worker_sim.output_stems("htdemucs", None)) * 24 * 1024 for _ in jobs[:2])
    expect(s["bytes"]["out"] == stems, "bytes out", s["bytes"], stems, bytes_out)
    expect(abs(s["audio_seconds"] - 0.5) < 1e-9, "audio seconds (2 x 0.25)",
           s["audio_seconds"])
    wait, proc = s["queue_wait_seconds"], s["processing_seconds"]
    expect(wait["count"] == 3 and wait["buckets"][-1] == {"le": "+Inf", "count": 3},
           "3 claims in the wait histogram", wait)
    expect(proc["count"] == 2 and proc["buckets"][-1]["count"] == 2,
           "2 completions in the processing histogram", proc)

    samples, _types = metrics(stack)
    for name, want in (("sep_jobs_submitted_total", 3), ("sep_jobs_completed_total", 2),
                       ("sep_jobs_failed_total", 1), ("sep_jobs_retried_total", 0),
                       ("sep_jobs_canceled_total", 0), ("sep_bytes_in_total", bytes_in),
                       ("sep_bytes_out_total", stems), ("sep_dead_letters", 1),
                       ("sep_queue_wait_seconds_count", 3),
                       ("sep_processing_seconds_count", 2)):
        got = one(samples, name)
        expect(got == want, "%s is %s, want %s" % (name, got, want))
    expect(abs(one(samples, "sep_audio_seconds_total") - 0.5) < 1e-9, "audio seconds metric")
    expect(one(samples, "sep_queue_wait_seconds_bucket", le="+Inf") == 3, "+Inf bucket")
    expect(one(samples, "sep_jobs", status="queued") == 0, "queued gauge")
    return "counters, gauges, histograms and /metrics agree"


@cases.case
def histogram_buckets_are_exact(stack):
    reset(stack)
    job = submit(stack)
    set_back(stack, job, "created_at", 20)  # waited ~20 s: above 15, within 60
    token, _ = worker_sim.claim(stack.redis, job)
    set_back(stack, job, "started_at", 7)  # ran ~7 s: above 5, within 10
    listed = {"vocals": {"file": "vocals.wav", "bytes": 1}}
    stack.redis.eval(worker_sim.script("complete"), 8, *worker_sim.job_keys(job), token,
                     json.dumps(listed), "1")
    samples, _ = metrics(stack)
    for le, want in (("5", 0), ("15", 0), ("60", 1), ("3600", 1), ("+Inf", 1)):
        got = one(samples, "sep_queue_wait_seconds_bucket", le=le)
        expect(got == want, "wait bucket le=%s is %s, want %s" % (le, got, want))
    for le, want in (("1", 0), ("5", 0), ("10", 1), ("+Inf", 1)):
        got = one(samples, "sep_processing_seconds_bucket", le=le)
        expect(got == want, "processing bucket le=%s is %s, want %s" % (le, got, want))
    wait_sum = one(samples, "sep_queue_wait_seconds_sum")
    proc_sum = one(samples, "sep_processing_seconds_sum")
    # the real wait/run add a little (this machine is shared: wide margins)
    expect(20 <= wait_sum < 80, "wait sum", wait_sum)
    expect(7 <= proc_sum < 60, "processing sum", proc_sum)
    s = get_json(stack, "/v1/stats")
    by_le = {b["le"]: b["count"] for b in s["queue_wait_seconds"]["buckets"]}
    expect(by_le[15] == 0 and by_le[60] == 1, "JSON buckets", by_le)


@cases.case
def queue_depth_by_priority_and_retries(stack):
    reset(stack)
    normal = [submit(stack) for _ in range(2)]
    high = submit(stack, "high")
    token = claim_one(stack, normal[0])
    s = get_json(stack, "/v1/stats")
    expect(s["queues"]["normal"] == {"waiting": 1, "delivered": 1}, "normal", s["queues"])
    expect(s["queues"]["high"] == {"waiting": 1, "delivered": 0}, "high", s["queues"])
    expect(s["jobs"] == {"queued": 2, "running": 1}, "gauges", s["jobs"])
    # a retryable failure: the job waits in {p}delayed
    reply = worker_sim.fail(stack.redis, normal[0], token, code="decode_failed",
                            retryable="1")
    expect(reply[0] == b"retry", "fail.lua reply", reply)
    samples, _ = metrics(stack)
    expect(one(samples, "sep_delayed_jobs") == 1, "delayed")
    expect(one(samples, "sep_jobs_retried_total") == 1, "retried")
    expect(one(samples, "sep_queue_depth", priority="normal", state="waiting") == 1, "waiting")
    expect(one(samples, "sep_queue_depth", priority="normal", state="delivered") == 0,
           "delivered")
    expect(one(samples, "sep_queue_depth", priority="high", state="waiting") == 1, "high")
    expect(one(samples, "sep_jobs", status="queued") == 3, "queued gauge (delayed included)")
    # a cancel of the waiting high job
    resp = stack.request("DELETE", "/v1/jobs/" + high)
    expect(resp.status == 200, "DELETE", resp.status)
    s = get_json(stack, "/v1/stats")
    expect(s["counters"]["canceled"] == 1 and s["queues"]["high"]["waiting"] == 0,
           "canceled", s["counters"], s["queues"])


@cases.case
def workers_and_models(stack):
    reset(stack)
    heartbeat(stack, "gpu-a/1", host="node-a", device="cuda:0", state="busy", running=1,
              jobs="j1", jobs_done=7, jobs_failed=1, memory_bytes=123456, concurrency=2,
              models="htdemucs,htdemucs_6s")
    heartbeat(stack, 'odd"name\\x', host="node-b", device="cpu", state="idle",
              jobs_done=0, memory_bytes=1, models="htdemucs,not_a_model")
    heartbeat(stack, "gone", ttl=1, models="htdemucs_ft")
    time.sleep(2.5)  # "gone" expires (TTL 1 s); the others have 30 s
    s = get_json(stack, "/v1/stats")
    by_name = {w["name"]: w for w in s["workers"]}
    expect(sorted(by_name) == sorted(["gpu-a/1", 'odd"name\\x']), "live workers", by_name)
    a = by_name["gpu-a/1"]
    expect(a["host"] == "node-a" and a["device"] == "cuda:0" and a["state"] == "busy" and
           a["jobs"] == ["j1"] and a["jobs_done"] == 7 and a["memory_bytes"] == 123456 and
           a["models"] == ["htdemucs", "htdemucs_6s"], "worker fields", a)
    expect(2.0 <= a["heartbeat_age_seconds"] < 60, "heartbeat age", a)
    expect(s["workers_live"] == 2, "workers_live", s["workers_live"])

    models = get_json(stack, "/v1/models")["models"]
    expect([m["name"] for m in models] == ["htdemucs", "htdemucs_6s"], "models", models)
    expect(models[0]["workers"] == 2 and models[1]["workers"] == 1, "worker counts", models)
    expect(models[1]["sources"] == ["drums", "bass", "other", "vocals", "guitar", "piano"],
           "6s sources", models[1])

    samples, _ = metrics(stack)  # the parser reads the escaped label back
    expect(one(samples, "sep_workers") == 2, "sep_workers")
    expect(one(samples, "sep_worker_jobs_done_total", worker="gpu-a/1") == 7, "jobs done")
    expect(one(samples, "sep_worker_memory_bytes", worker='odd"name\\x') == 1,
           "escaped label")
    expect(one(samples, "sep_worker_info", worker="gpu-a/1", host="node-a", device="cuda:0",
               state="busy") == 1, "info")


@cases.case
def long_heartbeat_fields_keep_metrics_valid(stack):
    """Heartbeat values may be 4096 bytes: label values are cut at 255 bytes (escapes
    kept whole: 128 quotes) and every line still ends; the parser reads them all."""
    reset(stack)
    name = "n" * 255
    heartbeat(stack, name, host="h" * 4096, device="d" * 4096, state='"' * 4096,
              models="htdemucs")
    samples, _ = metrics(stack)
    info = samples.get("sep_worker_info", {})
    expect(len(info) == 1, "one info line", info)
    labels = dict(next(iter(info)))
    expect(labels["worker"] == name and labels["host"] == "h" * 255 and
           labels["state"] == '"' * 128, "cut labels", {k: len(v) for k, v in labels.items()})
    expect(one(samples, "sep_worker_memory_bytes", worker=name) == 0, "the next family")


@cases.case
def non_utf8_heartbeat_values_are_shown_not_fatal(stack):
    """A heartbeat value is any bytes: it must not turn every stats answer into a 503."""
    reset(stack)
    stack.redis.eval(worker_sim.script("heartbeat"), 2, P + "worker:w8", P + "workers", "w8",
                     "30", "host", b"h\xc3\xa9\xff", "models", "htdemucs")
    s = get_json(stack, "/v1/stats")
    expect(s["workers"][0]["host"] == "h???", "host", s["workers"])
    samples, _ = metrics(stack)
    expect(one(samples, "sep_worker_info", worker="w8", host="h???", device="", state="") == 1,
           "info")
    expect(get_json(stack, "/v1/models")["models"][0]["name"] == "htdemucs", "models")


@cases.case
def workerd_inspect_json_shows_the_same(stack):
    reset(stack)
    run_three(stack)
    submit(stack, "high")
    heartbeat(stack, "w1", host="h", device="cpu", state="idle", jobs_done=2,
              models="htdemucs")
    workerd = os.environ.get("SEP_WORKERD") or os.path.join(harness.localstack.REPO_ROOT,
                                                             "build", "workerd")
    if not os.path.exists(workerd):
        return "SKIP: %s is not built" % workerd
    res = subprocess.run([workerd, "inspect", "--json", "--redis", stack.redis_address,
                          "--prefix", P], capture_output=True, text=True, timeout=30)
    expect(res.returncode == 0, "workerd inspect --json failed", res.stderr)
    inspected = json.loads(res.stdout)
    served = get_json(stack, "/v1/stats")
    for doc in (inspected, served):
        for w in doc["workers"]:
            w.pop("heartbeat_age_seconds")
    expect(inspected == served, "inspect --json differs from GET /v1/stats", inspected, served)
    expect(inspected["counters"]["submitted"] == 4 and
           inspected["queues"]["high"]["waiting"] == 1, "numbers", inspected["counters"])


@cases.case
def one_redis_call_per_request(stack):
    reset(stack)
    heartbeat(stack, "w", models="htdemucs")
    submit(stack)
    for path in ("/v1/stats", "/metrics", "/v1/models"):
        stack.redis.config_resetstat()
        resp = stack.request("GET", path)
        expect(resp.status == 200, path, resp.status)
        stats = stack.redis.info("commandstats")
        calls = {k: v["calls"] for k, v in stats.items()
                 if not k.startswith("cmdstat_config")}
        expect(calls.get("cmdstat_evalsha") == 1, "%s: one EVALSHA" % path, calls)
        extra = {k: v for k, v in calls.items()
                 if k not in ("cmdstat_evalsha", "cmdstat_info") and not
                 k.startswith(("cmdstat_hgetall", "cmdstat_xlen", "cmdstat_xpending",
                               "cmdstat_zcard", "cmdstat_zrange", "cmdstat_zcount",
                               "cmdstat_time"))}
        expect(not extra, "%s: commands outside the script" % path, extra)
        expect("cmdstat_keys" not in calls and "cmdstat_scan" not in calls, "no scan", calls)


@cases.case
def methods_head_and_errors(stack):
    for path in ("/v1/stats", "/metrics", "/v1/models"):
        resp = stack.request("POST", path, body=b"x")
        expect_json_error(resp, 405, path)
        expect(resp.header("Allow") == "GET, HEAD, OPTIONS", "Allow", resp.header("Allow"))
        resp = stack.request("HEAD", path)
        expect(resp.status == 200 and resp.body == b"", "HEAD %s" % path, resp.status)
    resp = stack.request("GET", "/v1/statsx")
    expect_json_error(resp, 404, "unknown path")
    expect(json.loads(resp.body)["error"]["code"] == "not_found", "code", resp.body)


@cases.case
def redis_down_is_503(stack):
    stack.stop_redis()
    try:
        for path in ("/v1/stats", "/metrics", "/v1/models"):
            resp = stack.request("GET", path)
            expect_json_error(resp, 503, path)
            code = json.loads(resp.body)["error"]["code"]
            expect(code in ("redis_unavailable", "redis_timeout"), "%s code" % path, code)
            expect(resp.header("Retry-After") == "1", "Retry-After", resp.header("Retry-After"))
    finally:
        stack.start_redis()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if stack.request("GET", "/v1/stats").status == 200:
            return
        time.sleep(0.2)
    expect(False, "stats did not come back after Redis restarted")


def main(argv):
    if harness.redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    if text_string_to_metric_families is None:
        print("FAIL: python3-prometheus-client is not installed (make deps)")
        return 1
    if not os.path.exists(harness.localstack.MODULE_SO):
        print("FAIL: %s is not built (make)" % harness.localstack.MODULE_SO)
        return 1
    stack = harness.Stack()
    harness.install_signal_cleanup(stack)
    try:
        stack.start()
        print("stack: nginx 127.0.0.1:%d, redis %s, prefix %s"
              % (stack.port, stack.redis_address, stack.prefix), flush=True)
        return cases.run(stack, only=argv[1:])
    except Exception as e:
        print("FAIL: could not start the stack: %s" % e)
        print(stack.error_log_tail())
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
