#!/usr/bin/python3
"""workerd end to end: real redis-server + nginx with the module + `workerd run`.

Every case starts its own stack (tests/integration/harness.py: Redis on a Unix socket
in a temporary prefix, nginx on a port outside the ephemeral range) and one or more
supervisors (`build/workerd run`) with CPU device workers running the smallest real
model (tests/fixtures/apply/tiny_apply.safetensors, random weights) under the name
htdemucs. Jobs go in through the HTTP API and come out as stems downloaded through
it. Executions are counted from the supervisors' logs ("running attempt" lines), not
only from final states, so "completed once" means one execution that finished.

    /usr/bin/python3 tests/workerd/test_workerd.py [case-name-substring ...]
"""

import glob
import io
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import harness  # noqa: E402
from harness import expect  # noqa: E402

localstack = harness.localstack
# SEP_WORKERD names another build (the sanitized one, build/asan/workerd).
WORKERD = os.environ.get("SEP_WORKERD") or os.path.join(REPO, "build", "workerd")
TINY = os.path.join(REPO, "tests", "fixtures", "apply", "tiny_apply.safetensors")
SOURCES = ["drums", "bass", "other", "vocals"]
PREFIX = os.environ.get("SEP_TEST_PREFIX", "{sep}:")
# Query of a job that runs for seconds with the tiny model (shifts multiply the work).
SLOW = "shifts=5"

cases = harness.Cases()


# audio -----------------------------------------------------------------------------------
def wav(seconds, rate=44100, channels=2, sampwidth=2):
    frames = int(seconds * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(sampwidth)
        w.setframerate(rate)
        one = bytearray()
        for i in range(min(frames, rate)):
            v = int(9000 * math.sin(2 * math.pi * 220 * i / rate) + 3000 * math.sin(i * 0.37))
            one += struct.pack("<h", v) * channels
        data = bytes(one) * (frames // max(1, min(frames, rate)))
        data += bytes(one[: (frames * channels * 2) - len(data)])
        w.writeframes(data)
    return buf.getvalue()


def float_wav(samples, rate=44100, channels=2):
    """A 32-bit float WAV (WAVE_FORMAT_IEEE_FLOAT) of interleaved samples."""
    data = struct.pack("<%df" % len(samples), *samples)
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * channels * 4, channels * 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def wav_info(data):
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnframes(), w.getframerate(), w.getnchannels()


# the stack ---------------------------------------------------------------------------------
class Service:
    """harness.Stack (Redis + nginx) plus supervisors started on demand."""

    def __init__(self, redis_args=()):
        self.stack = harness.Stack(max_body="64m", max_queued=100000)
        self.stack.values["PREFIX"] = PREFIX
        self.models = os.path.join(self.stack.prefix, "models")
        os.makedirs(self.models)
        os.symlink(TINY, os.path.join(self.models, "htdemucs.safetensors"))
        self.redis_args = list(redis_args)
        self.workers = {}

    def start(self):
        localstack.make_prefix_dirs(self.stack.prefix)
        self.stack.start_redis(extra_args=self.redis_args)
        self.stack.port, self.stack.nginx_proc = localstack.start_nginx_on_free_port(
            self.stack.prefix, self.stack.conf_path, self.stack.render_conf)
        return self

    @property
    def redis(self):
        return self.stack.redis

    def log_path(self, name):
        return os.path.join(self.stack.prefix, "logs", "workerd-%s.log" % name)

    def start_workerd(self, name="w1", **opts):
        settings = {"concurrency": 2, "cpu-workers": 1, "threads": 1,
                    "visibility-timeout": 5, "heartbeat-interval": 0.5,
                    "janitor-interval": 1, "drain-timeout": 10,
                    "retry-backoff-base": "100ms", "retry-backoff-max": "400ms"}
        settings.update({k.replace("_", "-"): v for k, v in opts.items()})
        args = [WORKERD, "run", "--redis", self.stack.redis_address, "--prefix", PREFIX,
                "--name", name, "--spool", self.stack.spool, "--models-dir", self.models]
        for k, v in settings.items():
            args += ["--" + k, str(v)]
        log = open(self.log_path(name), "ab")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                preexec_fn=localstack._die_with_parent)
        log.close()
        self.workers[name] = proc
        return proc

    def log(self, name):
        try:
            with open(self.log_path(name), encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def executions(self, job_id):
        """How many attempts of the job every supervisor started (from their logs)."""
        n = 0
        for name in self.workers:
            n += len(re.findall(r"job %s: running attempt" % job_id, self.log(name)))
        return n

    def stop(self):
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.stack.stop()

    # API helpers -----------------------------------------------------------------------
    def submit(self, body, query="", ctype="audio/wav"):
        path = "/v1/jobs" + (("?" + query) if query else "")
        resp = self.stack.request("POST", path, body=body, headers={"Content-Type": ctype})
        return resp

    def submit_ok(self, body, query=""):
        resp = self.submit(body, query)
        expect(resp.status == 202, "POST /v1/jobs", resp.status, resp.body[:300])
        return resp.json["id"]

    def job(self, job_id):
        """The job record; while Redis is down (503), a record saying so."""
        resp = self.stack.request("GET", "/v1/jobs/" + job_id)
        if resp.status == 503:
            return {"status": "unavailable", "stage": None}
        expect(resp.status == 200, "GET job", resp.status, resp.body[:300])
        return resp.json

    def wait(self, job_id, states=("completed", "failed", "canceled"), timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            rec = self.job(job_id)
            if rec["status"] in states:
                return rec
            if time.monotonic() > deadline:
                raise harness.CaseFailed("job %s still %s after %ds (stage %s)\n%s"
                                         % (job_id, rec["status"], timeout, rec.get("stage"),
                                            self.logs_tail()))
            time.sleep(0.05)

    def logs_tail(self, lines=15):
        out = []
        for name in self.workers:
            out.append("--- workerd %s:\n%s" % (name, "".join(
                self.log(name).splitlines(True)[-lines:])))
        return "\n".join(out)

    def download(self, rec, stem):
        url = rec["stems"][stem]["url"]
        resp = self.stack.request("GET", url)
        expect(resp.status == 200, "GET %s" % url, resp.status, resp.body[:200])
        return resp.body


def service_case(redis_args=()):
    """A case that gets a fresh started Service, stopped afterwards."""
    def wrap(fn):
        def run(_unused):
            svc = Service(redis_args).start()
            try:
                return fn(svc)
            except harness.CaseFailed as e:
                raise harness.CaseFailed(str(e) + "\n" + svc.logs_tail()) from None
            finally:
                svc.stop()
        run.__name__ = fn.__name__
        return cases.case(run)
    return wrap


def wait_for(cond, what, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise harness.CaseFailed("timed out waiting for " + what)
        time.sleep(step)


def wait_running(svc, job_id, timeout=30):
    def separating():
        rec = svc.job(job_id)
        return rec["status"] == "running" and rec.get("stage") == "separate"
    wait_for(separating, "job %s to separate" % job_id, timeout)


def device_worker_pids(proc):
    """pids of the device workers a supervisor started (its children)."""
    pids = []
    try:
        for task in os.listdir("/proc/%d/task" % proc.pid):  # the pool forks from a thread
            with open("/proc/%d/task/%s/children" % (proc.pid, task)) as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return sorted(pids)


# cases -------------------------------------------------------------------------------------
@service_case()
def upload_to_stems(svc):
    svc.start_workerd()
    job_id = svc.submit_ok(wav(1.0))
    rec = svc.wait(job_id)
    expect(rec["status"] == "completed", "job did not complete", rec)
    expect(sorted(rec["stems"]) == sorted(SOURCES), "stems", rec["stems"])
    for stem in SOURCES:
        frames, rate, channels = wav_info(svc.download(rec, stem))
        expect((frames, rate, channels) == (44100, 44100, 2),
               "%s: frames/rate/channels %s" % (stem, (frames, rate, channels)))
    expect(rec["audio"]["seconds"] and abs(rec["audio"]["seconds"] - 1.0) < 1e-3, "audio", rec)
    expect(rec["attempts"] == 1 and svc.executions(job_id) == 1, "one execution", rec)
    expect(rec["timing"]["separate_s"] is not None, "timing", rec["timing"])
    # two-stem FLAC at 22.05 kHz mono input: resampled, duplicated to stereo
    job2 = svc.submit_ok(wav(0.5, rate=22050, channels=1), "stems=vocals&format=flac")
    rec2 = svc.wait(job2)
    expect(rec2["status"] == "completed", "two-stem job", rec2)
    expect(sorted(rec2["stems"]) == ["no_vocals", "vocals"], "two stems", rec2["stems"])
    body = svc.download(rec2, "vocals")
    expect(body[:4] == b"fLaC", "FLAC stem")
    return "4 stems of 44100 frames; two-stem FLAC"


@service_case()
def bad_inputs_fail_with_a_code(svc):
    svc.start_workerd()
    good = wav(0.5)
    header_only = good[:44]
    bad = {
        "truncated_wav": good[:44] + good[44:1000][:-1] + b"",  # header says more data
        "header_only_wav": header_only,
        "corrupt_flac": b"fLaC" + os.urandom(2000),
        "corrupt_ogg": b"OggS" + os.urandom(2000),
        "corrupt_mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + os.urandom(2000),
        "zero_channels": good[:22] + b"\x00\x00" + good[24:],
        "nan_samples": float_wav([0.1, float("nan")] * 20000),
        "inf_samples": float_wav([float("inf"), 0.0] * 20000),
    }
    results = {}
    ids = {}
    for name, body in bad.items():
        resp = svc.submit(body)
        if resp.status != 202:
            expect(400 <= resp.status < 500, "%s: %d" % (name, resp.status), resp.body[:200])
            results[name] = "HTTP %d" % resp.status
        else:
            ids[name] = resp.json["id"]
    empty = svc.submit(b"")
    expect(400 <= empty.status < 500, "empty body: %d" % empty.status)
    for name, job_id in ids.items():
        rec = svc.wait(job_id, timeout=30)
        expect(rec["status"] == "failed", "%s: %s" % (name, rec["status"]), rec)
        expect(rec["error"]["code"] == "invalid_audio" and rec["error"]["retryable"] is False,
               "%s: error %s" % (name, rec["error"]))
        expect(rec["attempts"] == 1, "%s: permanent errors are not retried" % name, rec)
        results[name] = rec["error"]["code"]
    return ", ".join("%s=%s" % kv for kv in sorted(results.items()))


@service_case()
def unknown_model_is_model_unavailable(svc):
    svc.start_workerd()
    job_id = svc.submit_ok(wav(0.3), "model=htdemucs_6s")
    rec = svc.wait(job_id)
    expect(rec["status"] == "failed" and rec["error"]["code"] == "model_unavailable",
           "model_unavailable", rec)
    return rec["error"]["message"][:60]


@service_case()
def empty_or_missing_models_dir_is_said_at_start(svc):
    empty = os.path.join(svc.stack.prefix, "no-models")
    os.mkdir(empty)
    svc.start_workerd("empty", models_dir=empty)
    svc.start_workerd("missing", models_dir=os.path.join(svc.stack.prefix, "absent"))
    wait_for(lambda: "holds no model that loads" in svc.log("empty") and
             "every job will fail" in svc.log("missing"), "both warnings", timeout=20)
    job_id = svc.submit_ok(wav(0.3))
    rec = svc.wait(job_id)
    expect(rec["status"] == "failed" and rec["error"]["code"] == "model_unavailable",
           "a job without a model", rec)
    return "both warned; job failed model_unavailable"


@service_case()
def device_worker_killed_mid_job(svc):
    w = svc.start_workerd(concurrency=1)
    job_id = svc.submit_ok(wav(20), SLOW)
    wait_running(svc, job_id)
    pids = device_worker_pids(w)
    expect(pids, "no device worker found")
    os.kill(pids[0], signal.SIGKILL)
    rec = svc.wait(job_id, timeout=90)
    expect(rec["status"] == "completed", "job after a device worker crash", rec)
    expect(svc.executions(job_id) == 1, "executions: %d" % svc.executions(job_id))
    wait_for(lambda: device_worker_pids(w) and device_worker_pids(w) != pids,
             "a new device worker", 10)
    return "device worker %d killed; job completed in one execution" % pids[0]


@service_case()
def supervisor_killed_and_restarted(svc):
    svc.start_workerd("w1", visibility_timeout=2, concurrency=1)
    job_id = svc.submit_ok(wav(20), SLOW)
    wait_running(svc, job_id)
    svc.workers["w1"].kill()
    svc.workers["w1"].wait()
    # what a supervisor killed while it encoded leaves: its stems' temporaries
    stale = ".vocals.a1-0123456789abcdef.wav.4242.partial"
    with open(os.path.join(svc.stack.job_dir(job_id), stale), "wb") as f:
        f.write(b"RIFF")
    svc.start_workerd("w1", visibility_timeout=2, concurrency=1)
    rec = svc.wait(job_id, timeout=90)
    expect(rec["status"] == "completed", "after a supervisor restart", rec)
    expect(rec["attempts"] == 2 and svc.executions(job_id) == 2,
           "one retry: attempts %s, executions %d" % (rec["attempts"], svc.executions(job_id)))
    files = sorted(os.listdir(svc.stack.job_dir(job_id)))
    stems = [f for f in files if f.split(".")[0] in SOURCES]
    expect(len(stems) == 4, "only the winning attempt's stems are left", files)
    expect(not [f for f in files if f.startswith(".")],
           "the dead attempt's temporaries are left", files)
    return "attempt 2 completed; files %s" % stems[0]


@service_case()
def long_job_two_supervisors_runs_once(svc):
    # visibility 1 s, the job runs > 5 s: the heartbeat's touch keeps it
    svc.start_workerd("a", visibility_timeout=1, heartbeat_interval=0.25, concurrency=1)
    job_id = svc.submit_ok(wav(30), SLOW)
    wait_running(svc, job_id)
    svc.start_workerd("b", visibility_timeout=1, heartbeat_interval=0.25, concurrency=1)
    start = time.monotonic()
    rec = svc.wait(job_id, timeout=120)
    took = time.monotonic() - start
    expect(rec["status"] == "completed", "long job", rec)
    expect(svc.executions(job_id) == 1 and rec["attempts"] == 1,
           "executions %d attempts %s" % (svc.executions(job_id), rec["attempts"]))
    expect(took > 5, "the job should outlive the visibility timeout 5x (%.1fs)" % took)
    return "one execution over %.1fs with a 1s visibility timeout" % took


@service_case()
def paused_supervisor_cannot_complete(svc):
    a = svc.start_workerd("a", visibility_timeout=1, heartbeat_interval=0.25, concurrency=1)
    job_id = svc.submit_ok(wav(20), SLOW)
    wait_running(svc, job_id)
    os.kill(a.pid, signal.SIGSTOP)
    for pid in device_worker_pids(a):
        os.kill(pid, signal.SIGSTOP)
    svc.start_workerd("b", visibility_timeout=1, heartbeat_interval=0.25, concurrency=1)
    rec = svc.wait(job_id, timeout=90)
    expect(rec["status"] == "completed" and rec["worker"] == "b", "b completes it", rec)
    for pid in device_worker_pids(a):
        os.kill(pid, signal.SIGCONT)
    os.kill(a.pid, signal.SIGCONT)
    wait_for(lambda: "attempt 1" in svc.log("a") and re.search(
        r"job %s: (complete of attempt 1 refused|attempt 1 abandoned)" % job_id, svc.log("a")),
        "a to give up its stale attempt", 60)
    rec2 = svc.job(job_id)
    expect(rec2["worker"] == "b" and rec2["attempts"] == 2, "record unchanged", rec2)
    files = os.listdir(svc.stack.job_dir(job_id))
    tags = {f.split(".")[1] for f in files if f.split(".")[0] in SOURCES and f.count(".") == 2}
    expect(len(tags) == 1 and all(t.startswith("a2-") for t in tags),
           "only attempt 2's stems exist", files)
    for stem in SOURCES:
        svc.download(rec2, stem)
    return "stale attempt 1 refused; files of attempt 2 only"


@service_case(redis_args=("--appendonly", "yes", "--appendfsync", "always"))
def redis_killed_mid_run(svc):
    svc.start_workerd("w1", concurrency=2)
    ids = [svc.submit_ok(wav(4)) for _ in range(6)]
    wait_for(lambda: any(svc.job(i)["status"] == "running" for i in ids), "a running job")
    svc.stack.redis_proc.kill()
    svc.stack.redis_proc.wait()
    time.sleep(1.0)
    svc.stack.start_redis(extra_args=svc.redis_args)
    for job_id in ids:
        rec = svc.wait(job_id, timeout=120)
        expect(rec["status"] == "completed", "job %s after a Redis crash" % job_id, rec)
    runs = [svc.executions(i) for i in ids]
    return "6 acknowledged jobs completed after kill -9 of Redis; executions %s" % runs


@service_case()
def cancel_while_running(svc):
    svc.start_workerd(concurrency=1)
    job_id = svc.submit_ok(wav(20), SLOW)
    wait_running(svc, job_id)
    resp = svc.stack.request("DELETE", "/v1/jobs/" + job_id)
    expect(resp.status in (200, 202), "DELETE", resp.status, resp.body[:200])
    rec = svc.wait(job_id, timeout=30)
    expect(rec["status"] == "canceled", "canceled", rec)
    wait_for(lambda: not os.path.exists(svc.stack.job_dir(job_id)),
             "the canceled job's spool directory to be removed", 10)
    return "canceled at stage %s" % rec.get("stage")


@service_case()
def sigterm_drains_and_gives_back(svc):
    w = svc.start_workerd("w1", concurrency=1, drain_timeout=1)
    job_id = svc.submit_ok(wav(20), SLOW)
    wait_running(svc, job_id)
    start = time.monotonic()
    w.send_signal(signal.SIGTERM)
    rc = w.wait(timeout=30)
    took = time.monotonic() - start
    expect(rc == 0, "exit status %s after SIGTERM" % rc)
    rec = svc.job(job_id)
    expect(rec["status"] == "queued", "given back at once", rec)
    expect(not device_worker_pids(w), "device workers left")
    svc.start_workerd("w2", concurrency=1)
    rec = svc.wait(job_id, timeout=120)
    expect(rec["status"] == "completed" and rec["worker"] == "w2", "w2 completes it", rec)
    expect(rec["attempts"] == 1, "a drained job spends no attempt", rec)
    # a job that finishes within the drain timeout is completed, not given back
    svc.workers["w2"].send_signal(signal.SIGTERM)
    expect(svc.workers["w2"].wait(timeout=30) == 0, "w2 exit status")
    w3 = svc.start_workerd("w3", concurrency=1, drain_timeout=30)
    job2 = svc.submit_ok(wav(10), SLOW)
    wait_running(svc, job2)
    w3.send_signal(signal.SIGTERM)
    expect(w3.wait(timeout=60) == 0, "w3 exit status")
    expect(svc.job(job2)["status"] == "completed", "finished during the drain", svc.job(job2))
    return "exit 0 after %.1fs; job requeued and completed by w2" % took


@service_case()
def time_limits(svc):
    svc.start_workerd("soft", concurrency=1, soft_time_limit=0.5)
    job_id = svc.submit_ok(wav(20), SLOW)
    rec = svc.wait(job_id, timeout=60)
    expect(rec["status"] == "failed" and rec["error"]["code"] == "time_limit",
           "soft limit", rec)
    expect(rec["attempts"] == 1, "time_limit is not retried", rec)
    svc.workers["soft"].kill()
    w = svc.start_workerd("hard", concurrency=1, hard_time_limit=0.5, soft_time_limit=0)
    pids = None
    wait_for(lambda: device_worker_pids(w), "device worker", 10)
    pids = device_worker_pids(w)
    job2 = svc.submit_ok(wav(20), SLOW)
    rec = svc.wait(job2, timeout=90)
    expect(rec["status"] == "failed" and rec["error"]["code"] == "time_limit_hard",
           "hard limit, retried until max_attempts", rec)
    expect(rec["attempts"] == 3, "retried up to max_attempts (3)", rec)
    expect(device_worker_pids(w) != pids, "the device worker was killed and restarted")
    return "soft: time_limit once; hard: %d attempts" % rec["attempts"]


@service_case()
def priority_order(svc):
    normal = [svc.submit_ok(wav(0.3)) for _ in range(3)]
    high = [svc.submit_ok(wav(0.3), "priority=high") for _ in range(3)]
    svc.start_workerd(concurrency=1)
    recs = {i: svc.wait(i) for i in normal + high}
    order = sorted(recs, key=lambda i: recs[i]["started_at"])
    expect(set(order[:3]) == set(high), "high priority first",
           [("H" if i in high else "N") for i in order])
    return "order " + "".join("H" if i in high else "N" for i in order)


@service_case()
def two_hosts_one_killed(svc):
    """host1 is SIGKILLed while it runs a job: what it had completed stays its own, every
    other job (those it was running included) is completed by host2, each once."""
    svc.start_workerd("host1", visibility_timeout=2, concurrency=2)
    svc.start_workerd("host2", visibility_timeout=2, concurrency=2)
    ids = [svc.submit_ok(wav(8)) for _ in range(10)]
    wait_for(lambda: "running attempt" in svc.log("host1"), "host1 to run a job")
    svc.workers["host1"].kill()
    svc.workers["host1"].wait()
    log1 = svc.log("host1")
    done_by_1 = set(re.findall(r"job (\S+): completed", log1))
    running_1 = set(re.findall(r"job (\S+): running attempt", log1)) - done_by_1
    expect(running_1, "host1 was killed with no job running (it finished first)", log1[-2000:])
    for job_id in ids:
        rec = svc.wait(job_id, timeout=120)
        expect(rec["status"] == "completed", "job %s" % job_id, rec)
    wrong = [i for i in ids if svc.job(i)["worker"] != ("host1" if i in done_by_1 else "host2")]
    expect(not wrong, "jobs completed by the wrong host", wrong, sorted(done_by_1))
    expect(all(svc.executions(i) == 2 for i in running_1),
           "the jobs host1 was running ran again on host2", sorted(running_1))
    return "10 jobs completed: %d by host1 before the kill, %d it was running rerun on host2" % (
        len(done_by_1), len(running_1))


@service_case()
def many_jobs_exactly_once(svc):
    svc.start_workerd("a", concurrency=3)
    svc.start_workerd("b", concurrency=3)
    body = wav(0.1)
    ids = [svc.submit_ok(body) for _ in range(200)]
    deadline = time.monotonic() + 180
    pending = set(ids)
    while pending:
        expect(time.monotonic() < deadline, "%d jobs unfinished" % len(pending))
        for job_id in list(pending):
            if svc.redis.hget(PREFIX.encode() + b"job:" + job_id.encode(),
                              "status") == b"completed":
                pending.discard(job_id)
        time.sleep(0.2)
    runs = [svc.executions(i) for i in ids]
    expect(all(r == 1 for r in runs), "executions other than 1: %s"
           % [(i, r) for i, r in zip(ids, runs) if r != 1][:5])
    stats = svc.redis.hgetall(PREFIX.encode() + b"stats")
    expect(int(stats.get(b"completed", 0)) == 200, "stats completed", stats)
    expect(int(stats.get(b"running", 0)) == 0 and int(stats.get(b"queued", 0)) == 0,
           "gauges back at 0", stats)
    return "200 jobs, each executed once"


@service_case()
def inspect_and_purge(svc):
    common = ["--redis", svc.stack.redis_address, "--prefix", PREFIX,
              "--spool", svc.stack.spool]

    def tool(*args):
        res = subprocess.run([WORKERD] + list(args) + common, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=30)
        expect(res.returncode == 0, "workerd %s: %d" % (args[0], res.returncode), res.stdout)
        return res.stdout
    ids = [svc.submit_ok(wav(0.2)) for _ in range(3)] + [svc.submit_ok(wav(0.2), "priority=high")]
    out = tool("inspect")
    expect(re.search(r"normal\s+3 waiting", out) and re.search(r"high\s+1 waiting", out),
           "queues in inspect", out)
    out = tool("purge", "--queued")
    expect("canceled 4 queued job(s)" in out, "purge --queued", out)
    for job_id in ids:
        rec = svc.job(job_id)
        expect(rec["status"] == "canceled", "purged job", rec)
        expect(not os.path.exists(svc.stack.job_dir(job_id)), "spool dir of a purged job")
    stats = svc.redis.hgetall(PREFIX.encode() + b"stats")
    expect(int(stats.get(b"queued", 0)) == 0, "queued gauge after purge", stats)
    svc.start_workerd("insp", concurrency=1)
    job_id = svc.submit_ok(wav(20), SLOW)
    wait_running(svc, job_id)
    out = tool("inspect")
    expect("insp" in out and job_id in out, "worker and running job in inspect", out)
    return "inspect + purge --queued (4 jobs)"


@service_case()
def stats_metrics_and_models_of_a_real_worker(svc):
    """GET /v1/stats, /metrics and /v1/models with a real supervisor: its heartbeat
    names the model its --models-dir holds, and 3 jobs (2 completed, 1 invalid audio)
    move the counters, the audio seconds, both histograms and its jobs_done."""
    svc.start_workerd("stats1", concurrency=1)

    def stats():
        resp = svc.stack.request("GET", "/v1/stats")
        expect(resp.status == 200, "GET /v1/stats", resp.status, resp.body[:300])
        return resp.json

    def models():
        resp = svc.stack.request("GET", "/v1/models")
        expect(resp.status == 200, "GET /v1/models", resp.status, resp.body[:300])
        return resp.json["models"]

    wait_for(lambda: models(), "the worker's heartbeat in /v1/models")
    expect(models() == [{"name": "htdemucs", "sources": SOURCES, "workers": 1}],
           "models of the worker", models())
    good = [svc.submit_ok(wav(0.5)) for _ in range(2)]
    bad = svc.submit_ok(wav(0.5)[:44])  # header only: invalid_audio, not retried
    for job_id in good + [bad]:
        svc.wait(job_id)
    s = stats()
    expect(s["counters"] == {"submitted": 3, "completed": 2, "failed": 1, "retried": 0,
                             "canceled": 0}, "counters", s["counters"])
    expect(abs(s["audio_seconds"] - 1.0) < 1e-3, "audio seconds", s["audio_seconds"])
    expect(s["queue_wait_seconds"]["count"] == 3 and s["processing_seconds"]["count"] == 2,
           "histogram counts", s["queue_wait_seconds"], s["processing_seconds"])
    expect(s["jobs"] == {"queued": 0, "running": 0} and s["dead"] == 1, "gauges", s)
    wait_for(lambda: any(w["name"] == "stats1" and w["jobs_done"] + w["jobs_failed"] >= 3
                         for w in stats()["workers"]), "jobs_done in the heartbeat")
    w = [w for w in stats()["workers"] if w["name"] == "stats1"][0]
    expect(w["device"] == "cpu" and w["host"] and w["models"] == ["htdemucs"] and
           w["state"] in ("idle", "busy") and w["heartbeat_age_seconds"] < 30, "worker", w)
    resp = svc.stack.request("GET", "/metrics")
    expect(resp.status == 200 and b"sep_jobs_completed_total 2\n" in resp.body and
           b'sep_worker_info{worker="stats1"' in resp.body, "/metrics", resp.body[:600])
    return "2 completed + 1 failed counted; %.2f s audio; worker %s on %s" % (
        s["audio_seconds"], w["name"], w["device"])


# regressions: one script per defect a review reproduced (tests/workerd/regress/NN_*.py)
REGRESS = os.path.join(HERE, "regress")


def regression_case(path):
    def run(_unused):
        res = subprocess.run([sys.executable, path], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=240)
        verdict = [l for l in res.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
        expect(res.returncode == 0 and verdict and verdict[-1].startswith("PASS"),
               "%s: %s" % (os.path.basename(path), verdict[-1:] or "no verdict"),
               res.stdout[-3000:])
        return verdict[-1][len("PASS: "):]
    run.__name__ = "regress_" + os.path.basename(path)[:-3]
    return cases.case(run)


for _path in sorted(glob.glob(os.path.join(REGRESS, "[0-9][0-9]_*.py"))):
    regression_case(_path)


def main(argv):
    if harness.redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    for path in (localstack.MODULE_SO, WORKERD):
        if not os.path.exists(path):
            print("FAIL: %s is not built (make)" % path)
            return 1
    return cases.run(None, only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
