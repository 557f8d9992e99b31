"""Helpers for the script tests: a private redis-server and the job-state scripts.

RedisServer starts redis-server in its own temporary directory, listening only on a
Unix socket there (--port 0), and removes the directory when stopped (also when the
test fails: use it as a context manager). With cluster=True it is a one-node Redis
Cluster owning every slot; its cluster bus still needs a TCP port (by default the
client port + 10000, i.e. 10000 for every such server): it gets one from
conf/localstack.py (outside the ephemeral range, retried when taken).

Scripts loads shared/lua/NAME.lua preceded by shared/lua/lib.lua, as the build does
(shared/gen-scripts.sh), and calls them with EVALSHA; job_keys() builds the 8 KEYS of
the job scripts (shared/README.md).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "conf"))
import localstack  # noqa: E402  (ports outside the ephemeral range, EADDRINUSE retries)
LUA_DIR = os.path.join(ROOT, "shared", "lua")
GROUP = "workers"
JOB_KEY_SUFFIXES = ("stats", "q:high", "q:normal", "delayed", "running", "expiry", "dead")


class RedisServer:
    def __init__(self, cluster=False):
        self.cluster = cluster
        self.dir = tempfile.mkdtemp(prefix="sep-scripts-")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.proc = None
        try:
            if cluster:
                localstack.start_on_free_port(self._start, "redis-server cluster bus")
            else:
                self._start(None)
            if cluster:
                self._own_all_slots()
        except BaseException:
            self.stop()
            raise

    def _start(self, bus_port):
        log = os.path.join(self.dir, "redis.log")
        args = ["redis-server", "--port", "0", "--unixsocket", self.sock,
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--logfile", log]
        if bus_port:
            args += ["--cluster-enabled", "yes", "--cluster-port", str(bus_port),
                     "--cluster-config-file", os.path.join(self.dir, "nodes.conf")]
        since = os.path.getsize(log) if os.path.exists(log) else 0
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.r = self._connect()
        except RuntimeError:
            self.proc.wait()
            if bus_port and localstack._log_says_port_taken(log, since):
                raise localstack.PortInUse("cluster bus port %d" % bus_port) from None
            raise

    def _connect(self):
        deadline = time.monotonic() + 10
        while True:
            try:
                r = redis.Redis(unix_socket_path=self.sock)
                r.ping()
                return r
            except (redis.ConnectionError, FileNotFoundError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start (log in %s)" % self.dir)
                time.sleep(0.02)

    def _own_all_slots(self):
        self.r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in self.r.execute_command("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError("the one-node cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def script_text(name):
    """A script's text as the build compiles it in: lib.lua, then NAME.lua."""
    text = ""
    for part in ("lib", name):
        with open(os.path.join(LUA_DIR, part + ".lua"), encoding="utf-8") as f:
            text += f.read()
    return text


def job_keys(prefix, job_id):
    return [prefix + "job:" + job_id] + [prefix + s for s in JOB_KEY_SUFFIXES]


# Put in front of a script in audit mode: a local `redis` that refuses (error
# UNDECLARED_KEY) any command on a key not in KEYS, so that a test run proves every
# key a script touches is declared (what Redis Cluster needs; a one-node cluster
# owning every slot would not notice). The key of XGROUP and XINFO is their second
# argument; TIME and PUBLISH (a channel) take none.
AUDIT_PRELUDE = """
local redis = (function(real)
    local declared = {}
    for _, k in ipairs(KEYS) do
        declared[k] = true
    end
    local second = {XGROUP = true, XINFO = true}
    local nokey = {TIME = true, PUBLISH = true}
    local function check(cmd, ...)
        local c = string.upper(cmd)
        if nokey[c] then
            return
        end
        local key
        if second[c] then
            key = select(2, ...)
        else
            key = select(1, ...)
        end
        if not declared[key] then
            error({err = 'UNDECLARED_KEY ' .. c .. ' ' .. tostring(key)})
        end
    end
    return setmetatable({
        call = function(cmd, ...)
            check(cmd, ...)
            return real.call(cmd, ...)
        end,
        pcall = function(cmd, ...)
            check(cmd, ...)
            return real.pcall(cmd, ...)
        end,
    }, {__index = real})
end)(redis)
"""


class Scripts:
    """Calls the scripts by name: s.call("claim", keys, args) -> the raw reply.
    audit=True runs them behind AUDIT_PRELUDE."""

    def __init__(self, r, audit=False):
        self.r = r
        self.audit = audit
        self.sha = {}
        self.text = {}

    def call(self, name, keys, args=()):
        if name not in self.sha:
            self.text[name] = (AUDIT_PRELUDE if self.audit else "") + script_text(name)
            self.sha[name] = self.r.script_load(self.text[name])
        try:
            return self.r.evalsha(self.sha[name], len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.r.script_load(self.text[name])
            return self.r.evalsha(self.sha[name], len(keys), *keys, *args)


def error_code(exc):
    """The CODE of a script's "CODE message" error (Redis may prefix "ERR ")."""
    words = str(exc).split()
    if words and words[0] == "ERR" and len(words) > 1 and words[1] != "ERR":
        words = words[1:]
    return words[0] if words else ""


def pairs(flat):
    """A flat field, value, ... list (bytes) as a str dict."""
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat) - 1, 2)}


class Jobs:
    """The contract's calls with the arguments workerd and the module pass
    (shared/README.md); every method returns the raw reply or raises the error."""

    def __init__(self, r, prefix="{sep}:", audit=True):
        self.r = r
        self.p = prefix
        self.s = Scripts(r, audit=audit)

    def keys(self, job_id):
        return job_keys(self.p, job_id)

    def submit(self, job_id, priority="normal", max_attempts=3, result_ttl=3600,
               max_queued=0, idem=None, idem_ttl=600, earlier=None, extra=(),
               deadline_ms=0):
        keys = [self.p + "job:" + job_id, self.p + "stats", self.p + "q:high",
                self.p + "q:normal"]
        if idem is not None:
            keys.append(self.p + "idem:" + idem)
            if earlier is not None:
                keys.append(self.p + "job:" + earlier)
        args = [job_id, str(max_queued), str(idem_ttl), str(deadline_ms),
                "model", "htdemucs", "stems_option", "vocals", "format", "wav",
                "priority", priority, "shifts", "1", "overlap", "0.25",
                "input", "input.wav", "input_type", "wav", "input_bytes", "1000",
                "max_attempts", str(max_attempts), "result_ttl", str(result_ttl)] + list(extra)
        return self.s.call("submit", keys, args)

    def claim(self, job_id, worker, queue, entry, nonce="", visibility_ms=30000,
              dead_maxlen=1000):
        return self.s.call("claim", self.keys(job_id),
                           [worker, queue, entry, nonce, str(visibility_ms), str(dead_maxlen)])

    def touch(self, job_id, token, visibility_ms=30000):
        return self.s.call("touch", self.keys(job_id), [token, str(visibility_ms)])

    def progress(self, job_id, token, progress="0.5", stage="separate", message="",
                 extra=()):
        return self.s.call("progress", self.keys(job_id),
                           [token, progress, stage, message] + list(extra))

    def complete(self, job_id, token, stems=None, bytes_out="22", extra=()):
        if stems is None:
            stems = ('{"vocals":{"file":"vocals.wav","bytes":10},'
                     '"no_vocals":{"file":"no_vocals.wav","bytes":12}}')
        return self.s.call("complete", self.keys(job_id),
                           [token, stems, bytes_out] + list(extra))

    def fail(self, job_id, token, code="gpu_oom", message="it broke", retryable="1",
             base_ms="0", cap_ms="60000", jitter_ms="0", dead_maxlen="1000", extra=()):
        return self.s.call("fail", self.keys(job_id),
                           [token, code, message, retryable, base_ms, cap_ms, jitter_ms,
                            dead_maxlen] + list(extra))

    def requeue(self, job_id, token, message="worker draining"):
        return self.s.call("requeue", self.keys(job_id), [token, message])

    def cancel(self, job_id, idem=None):
        keys = self.keys(job_id) + ([self.p + "idem:" + idem] if idem is not None else [])
        return self.s.call("cancel", keys, [])

    def force_cancel(self, job_id, token, message=""):
        return self.s.call("force_cancel", self.keys(job_id), [token, message])

    def promote(self, limit=100):
        ids = [i.decode() for i in
               self.r.zrangebyscore(self.p + "delayed", "-inf", "+inf", start=0, num=limit)]
        keys = [self.p + "delayed", self.p + "q:high", self.p + "q:normal"]
        return self.s.call("promote", keys + [self.p + "job:" + i for i in ids], [])

    def heartbeat(self, name, ttl="30", fields=()):
        return self.s.call("heartbeat", [self.p + "worker:" + name, self.p + "workers"],
                           [name, ttl] + list(fields))

    def setup(self):
        return self.s.call("setup", [self.p + "q:high", self.p + "q:normal"], [])

    def janitor(self, limit=100, consumer_idle_ms=3600000, removed=()):
        keys = [self.p + s for s in ("expiry", "running", "q:high", "q:normal", "workers")]
        return self.s.call("janitor", keys, [str(limit), str(consumer_idle_ms)] + list(removed))

    def get(self, *job_ids):
        return self.s.call("get", [self.p + "job:" + i for i in job_ids], [])

    # reads

    def job(self, job_id):
        return {k.decode(): v.decode() for k, v in self.r.hgetall(self.p + "job:" + job_id).items()}

    def stat(self, name):
        return int(self.r.hget(self.p + "stats", name) or 0)

    def read(self, worker, queue, count=1, own=False):
        """XREADGROUP: [(entry id, job id)] of queue ("high"/"normal") for worker."""
        got = self.r.xreadgroup(GROUP, worker, {self.p + "q:" + queue: "0" if own else ">"},
                                count=count)
        out = []
        for _stream, entries in got or []:
            for entry_id, fields in entries:
                if fields:
                    out.append((entry_id.decode(), fields[b"id"].decode()))
        return out

    def autoclaim(self, worker, queue, min_idle_ms, count=10):
        """XAUTOCLAIM: [(entry id, job id)] taken over by worker."""
        reply = self.r.xautoclaim(self.p + "q:" + queue, GROUP, worker, min_idle_ms, "0-0",
                                  count=count)
        return [(e.decode(), f[b"id"].decode()) for e, f in reply[1] if f]


def snapshot(r):
    """Everything in the database (type, content, whether it has a TTL), to show
    that a refused call changed nothing."""
    out = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key).decode()
        if kind == "hash":
            value = sorted(r.hgetall(key).items())
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            groups = r.xinfo_groups(key)
            value = (r.xrange(key), [(g["name"], g["pending"], g["last-delivered-id"])
                                     for g in groups],
                     [[(p["message_id"], p["consumer"], p["times_delivered"])
                       for p in r.xpending_range(key, g["name"], "-", "+", 1000)]
                      for g in groups])
        elif kind == "string":
            value = r.get(key)
        else:
            value = kind
        out[key] = (kind, value, r.ttl(key) > 0)
    return out


class InvariantError(AssertionError):
    pass


def check_invariants(r, prefix="{sep}:", strict_owner=True):
    """The state invariants of shared/README.md, checked against the whole database:
    each job in exactly one place, the running index and the PEL matching the running
    jobs, gauges equal to a recount, finished records with a TTL, no orphan entries.
    A running job's entry is pending for its worker; with strict_owner=False for
    any consumer (an XAUTOCLAIM may hold it until claim or touch hands it back).
    Returns the jobs by id (their hashes as str dicts). Raises InvariantError."""
    def fail(msg, *args):
        raise InvariantError(msg % args)

    jobs = {}
    for key in r.scan_iter(match=prefix + "job:*", count=1000):
        job_id = key.decode()[len(prefix) + 4:]
        jobs[job_id] = {k.decode(): v.decode() for k, v in r.hgetall(key).items()}
        jobs[job_id]["_ttl"] = r.ttl(key)
    delayed = {m.decode(): s for m, s in r.zrange(prefix + "delayed", 0, -1, withscores=True)}
    running = {m.decode(): s for m, s in r.zrange(prefix + "running", 0, -1, withscores=True)}
    expiry = {m.decode(): s for m, s in r.zrange(prefix + "expiry", 0, -1, withscores=True)}
    entries, pending = {}, {}
    for queue in ("high", "normal"):
        stream = prefix + "q:" + queue
        if not r.exists(stream):
            continue
        for entry_id, fields in r.xrange(stream):
            entries[(queue, entry_id.decode())] = fields[b"id"].decode()
        if any(g["name"] == GROUP.encode() for g in r.xinfo_groups(stream)):
            for p in r.xpending_range(stream, GROUP, "-", "+", 100000):
                pending[(queue, p["message_id"].decode())] = p["consumer"].decode()

    counts = {"queued": 0, "running": 0}
    owned_entries = set()
    for job_id, job in jobs.items():
        status = job.get("status")
        queue = "high" if job.get("priority") == "high" else "normal"
        entry = job.get("stream_id")
        where = []
        if entry is not None:
            where.append("stream")
        if job_id in delayed:
            where.append("delayed")
        if status in ("completed", "failed", "canceled"):
            where.append("terminal")
        if len(where) != 1:
            fail("job %s (%s) is in %s", job_id, status, where or "no place")
        if status == "queued":
            counts["queued"] += 1
            if ("token" in job) or job_id in running:
                fail("queued job %s has a token or a running deadline", job_id)
            if job_id in delayed and job.get("stage") != "retry_wait":
                fail("job %s in delayed with stage %s", job_id, job.get("stage"))
        elif status == "running":
            counts["running"] += 1
            if entry is None:
                fail("running job %s has no stream entry", job_id)
            if job_id not in running:
                fail("running job %s is not in the running index", job_id)
            token = job.get("token", "")
            if token.split(":")[0] != job.get("attempts"):
                fail("running job %s: token %r for attempts %s", job_id, token,
                     job.get("attempts"))
            owner = pending.get((queue, entry))
            if owner is None or (strict_owner and owner != job.get("worker")):
                fail("running job %s: entry %s pending for %r, worker %r", job_id, entry,
                     pending.get((queue, entry)), job.get("worker"))
        elif status in ("completed", "failed", "canceled"):
            if "token" in job or job_id in running:
                fail("finished job %s has a token or a running deadline", job_id)
            if job["_ttl"] <= 0:
                fail("finished job %s has no TTL", job_id)
            if job_id not in expiry:
                fail("finished job %s is not in the expiry index", job_id)
        else:
            fail("job %s has status %r", job_id, status)
        if entry is not None:
            if entries.get((queue, entry)) != job_id:
                fail("job %s: its entry %s is not in %s", job_id, entry, queue)
            owned_entries.add((queue, entry))
        if int(job.get("attempts", "0")) > int(job.get("max_attempts", "1")):
            fail("job %s: attempts %s > max_attempts %s", job_id, job.get("attempts"),
                 job.get("max_attempts"))
    for e, job_id in entries.items():
        if e not in owned_entries:
            fail("orphan stream entry %s of job %s", e, job_id)
    for e in pending:
        if e not in entries:
            fail("pending entry %s is not in its stream", e)
    for job_id in running:
        if jobs.get(job_id, {}).get("status") != "running":
            fail("running index holds %s, which is not running", job_id)
    for job_id in delayed:
        if job_id not in jobs:
            fail("delayed holds %s, which has no record", job_id)
    stats = {k.decode(): int(v) for k, v in r.hgetall(prefix + "stats").items()}
    for gauge in ("queued", "running"):
        if stats.get(gauge, 0) != counts[gauge]:
            fail("gauge %s is %d, a recount gives %d", gauge, stats.get(gauge, 0), counts[gauge])
    fixed = {prefix + s for s in JOB_KEY_SUFFIXES[:-1] + ("dead", "workers")}
    for key in r.scan_iter(count=1000):
        name = key.decode()
        if name in fixed:
            continue
        kind = name[len(prefix):].split(":", 1)[0] if name.startswith(prefix) else None
        if kind not in ("job", "idem", "worker"):
            fail("unexpected key %s (every key of the service is known and bounded)", name)
    for key in r.scan_iter(match=prefix + "idem:*"):
        if r.ttl(key) <= 0:
            fail("idempotency key %s has no TTL", key)
    for key in r.scan_iter(match=prefix + "worker:*"):
        if r.ttl(key) <= 0:
            fail("worker hash %s has no TTL", key)
    return jobs
