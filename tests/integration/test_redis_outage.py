#!/usr/bin/python3
"""Redis outages under traffic: how soon every nginx worker serves again.

Part of `make test-integration`. Each stack is a real redis-server + nginx with the
module (tests/integration/harness.py), its listen socket split per worker
(`reuseport`, so fresh connections reach every worker) and an unbuffered access log
that records the worker pid, the status and a probe id sent by the client in
`X-Probe`; that is how each answer is attributed to a worker.

  outage_{2,4}_workers  for outages of 0.3 s, 3.3 s and 6.5 s: Redis stopped under
                        traffic (fresh connections, one every 10 ms per client thread),
                        held down, started again; every answer is 200 or 503
                        redis_unavailable (redis_timeout too while the old Redis is being
                        stopped), the last 503 comes at most 0.5 s after Redis
                        answers PING again, every worker (by pid) serves (200, or
                        404 job_not_found from the empty Redis) after it, no worker was replaced, and each worker logged exactly one
                        "unavailable" and one "is back" line
  loading_restart       Redis restarted on a dataset of a few hundred MB (an RDB made
                        with SAVE): while it loads, answers are 503 redis_loading (never
                        another 5xx), POSTs refused that way leave no spool files, and
                        the last 503 comes at most 0.5 s after the first PONG

Each case prints `RESULT outage=... workers=... last_503_after_ping=...` lines, the
figures quoted in reports (a negative figure: the last 503 came before the PONG).
SEP_OUTAGES=0.3,1,7 runs other outage lengths.

    /usr/bin/python3 tests/integration/test_redis_outage.py [case-name-substring ...]
"""

import os
import re
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import expect  # noqa: E402

# SEP_OUTAGES="0.3,1,3.3,6.5,7" measures other outages (seconds, comma-separated).
OUTAGES = tuple(float(x) for x in os.environ.get("SEP_OUTAGES", "0.3,3.3,6.5").split(","))
LIMIT_AFTER_PING = 0.5  # no 503 later than this after Redis answers PING again
CLIENTS = 4  # client threads, each opening a fresh connection every 10 ms
PAUSE = 0.010
SETTLE = 1.0  # traffic goes on this long after PONG (a late 503 would show)
WAV = harness.wav_bytes(seconds=0.05)

PROBE_LOG_FORMAT = "log_format sep_probe '$msec $pid $status $http_x_probe';"


def probe_conf(text, probe_log):
    """The rendered nginx.conf with reuseport on every listen and the probe log."""
    text, n = re.subn(r"^(\s*listen\s+[^;\s]+)\s*;", r"\1 reuseport;", text, flags=re.M)
    if n < 1:
        raise ValueError("no listen directive to split per worker")
    text, n = re.subn(r"^(\s*)(access_log\s[^\n]*;)", r"\1\2\n\1%s\n\1access_log %s sep_probe;"
                      % (PROBE_LOG_FORMAT, probe_log), text, count=1, flags=re.M)
    if n != 1:
        raise ValueError("no access_log line to add the probe log after")
    return text


class ProbeStack(harness.Stack):
    def __init__(self, workers):
        super().__init__(max_body="1m", max_queued=100000, worker_processes=workers,
                         conf_edit=lambda text: probe_conf(text, self.probe_log))
        self.workers = workers

    @property
    def probe_log(self):
        return os.path.join(self.prefix, "logs", "probe.log")


    def started_workers(self, timeout=15.0):
        """The worker pids once all of them are up (nginx answers before the last one
        may have started)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.worker_pids()
            if len(pids) >= self.workers or time.monotonic() > deadline:
                return pids
            time.sleep(0.05)

    def probes(self):
        """{probe id: (pid, status)} from the probe access log."""
        out = {}
        try:
            with open(self.probe_log, encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 4 and parts[3] != "-":
                        out[parts[3]] = (int(parts[1]), int(parts[2]))
        except OSError:
            pass
        return out



    def redis_client(self, timeout=1.0):
        """A fresh client to the stack's Redis (TCP or unix socket, as the stack uses)."""
        pool = self.redis.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = timeout
        if "socket_connect_timeout" in kwargs:  # TCP only
            kwargs["socket_connect_timeout"] = 1.0
        return harness.redis.Redis(connection_pool=harness.redis.ConnectionPool(
            connection_class=pool.connection_class, **kwargs))


class Traffic:
    """Client threads: fresh connections, one request every PAUSE each, until stopped.

    GET of a known job, and with post_every=N every Nth request a POST. Each request
    carries a unique X-Probe; results are (probe, method, t_sent, t_answered, status,
    error code or None, exception text or None), times from time.monotonic()."""

    def __init__(self, stack, job_id, post_every=0):
        self.stack = stack
        self.job_id = job_id
        self.post_every = post_every
        self.results = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join()

    def _run(self, index):
        n = 0
        while not self.stop_event.is_set():
            n += 1
            probe = "%d-%d-%s" % (index, n, uuid.uuid4().hex[:8])
            post = self.post_every and n % self.post_every == 0
            sent = time.monotonic()
            status, code, failure = None, None, None
            try:
                if post:
                    resp = self.stack.request("POST", "/v1/jobs", body=WAV, timeout=5,
                                              headers={"Content-Type": "audio/wav",
                                                       "X-Probe": probe})
                else:
                    resp = self.stack.request("GET", "/v1/jobs/" + self.job_id, timeout=5,
                                              headers={"X-Probe": probe})
                status = resp.status
                if isinstance(resp.json, dict) and isinstance(resp.json.get("error"), dict):
                    code = resp.json["error"].get("code")
            except Exception as e:  # a refused or reset connection is a result too
                failure = repr(e)
            answered = time.monotonic()
            with self.lock:
                self.results.append((probe, "POST" if post else "GET", sent, answered, status,
                                     code, failure))
            time.sleep(PAUSE)


class Pinger:
    """PINGs Redis every 5 ms on fresh connections from start(); records when it first
    answered anything (-LOADING included) and when it first answered PONG."""

    def __init__(self, stack):
        self.stack = stack
        self.first_answer = None
        self.first_pong = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.done = threading.Event()

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        deadline = time.monotonic() + 60
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                client = self.stack.redis_client()
                try:
                    client.ping()
                    now = time.monotonic()
                    if self.first_answer is None:
                        self.first_answer = now
                    self.first_pong = now
                    return
                finally:
                    client.close()
            except harness.redis.exceptions.BusyLoadingError:
                if self.first_answer is None:
                    self.first_answer = time.monotonic()
            except (harness.redis.exceptions.ConnectionError, OSError,
                    harness.redis.exceptions.TimeoutError):
                pass
            except Exception as e:  # noqa: BLE001 - reported by the case
                self.error = repr(e)
                return
            time.sleep(0.005)

    def wait(self, timeout):
        self.thread.join(timeout)
        self.done.set()
        return self.first_pong


def served(status, code):
    """An answer that took Redis: 200/202, or 404 job_not_found (a Redis started empty
    no longer has the job)."""
    return status in (200, 202) or (status == 404 and code == "job_not_found")


def served_after(stack, traffic, since):
    """Worker pids that served (served()) a request sent after `since`."""
    probes = stack.probes()
    pids = set()
    with traffic.lock:
        results = list(traffic.results)
    for probe, _method, sent, _answered, status, code, _failure in results:
        if sent >= since and served(status, code) and probe in probes:
            pids.add(probes[probe][0])
    return pids


def run_until_all_served(stack, traffic, since, workers, deadline_s=15.0):
    """Keeps the traffic going until every worker (a set of pids) served a 200 sent
    after `since`, and at least SETTLE after `since`; at most deadline_s."""
    deadline = since + deadline_s
    while True:
        now = time.monotonic()
        done = served_after(stack, traffic, since) >= workers
        if done and now >= since + SETTLE:
            return
        if now > deadline:
            return
        time.sleep(0.05)


def analyse(stack, traffic, pong, workers, allowed_codes, problems, stopped):
    """The run's figures: (last 503 after pong or None, requests, 503s, seconds after
    pong by which every worker had served or None); what is wrong goes to problems.
    A request sent before `stopped` (the old Redis gone) may also get redis_timeout: a
    Redis that is being stopped on a busy machine can stall past sep_redis_timeout."""
    probes = stack.probes()
    with traffic.lock:
        results = list(traffic.results)

    def allowed(r):
        return r[4] == 503 and (r[5] in allowed_codes or (r[5] == "redis_timeout"
                                                          and r[2] < stopped))

    bad = [r for r in results if r[6] is not None or not (served(r[4], r[5]) or allowed(r))]
    if bad:
        problems.append("%d answers other than 200/202/404 job_not_found or 503 %s, first: %s"
                        % (len(bad), "/".join(sorted(allowed_codes)), bad[:3]))
    unavailable = [r for r in results if r[4] == 503]
    last_503 = max((r[3] for r in unavailable), default=None)
    after = None if last_503 is None else last_503 - pong
    if after is not None and after > LIMIT_AFTER_PING:
        problems.append("a 503 came %.3fs after Redis answered PING (limit %.1fs)"
                        % (after, LIMIT_AFTER_PING))
    first_ok = {}
    for probe, _m, sent, answered, status, code, _f in results:
        if sent >= pong and served(status, code) and probe in probes:
            pid = probes[probe][0]
            first_ok[pid] = min(first_ok.get(pid, answered), answered)
    missing = workers - set(first_ok)
    if missing:
        problems.append("workers %s served nothing after Redis was back (%d requests, the "
                        "log has %d probes)" % (sorted(missing), len(results), len(probes)))
    all_served = max(first_ok.values()) - pong if first_ok and not missing else None
    return after, len(results), len(unavailable), all_served


def outage_lines(stack, offset, workers, problems):
    """The outage lengths the workers logged; one "unavailable" and one "is back" line
    per worker in the error log since offset, or a problem."""
    text = stack.error_log_since(offset)
    per_pid = {}
    for line in text.splitlines():
        m = re.search(r"\] (\d+)#\d+: (?:\*\d+ )?sep: redis .* (unavailable:|is back after)",
                      line)
        if m:
            kind = "down" if m.group(2) == "unavailable:" else "back"
            per_pid.setdefault(int(m.group(1)), {"down": 0, "back": 0})[kind] += 1
    wrong = {pid: n for pid, n in per_pid.items() if n != {"down": 1, "back": 1}}
    if set(per_pid) != workers or wrong:
        problems.append("expected one \"unavailable\" and one \"is back\" line per worker "
                        "%s, got %s; log: %s" % (sorted(workers), per_pid, text[-1500:]))
    lines = len(text.splitlines())
    if lines > 4 * len(workers):
        problems.append("%d error log lines for one outage: %s" % (lines, text[-1500:]))
    return [int(m.group(1)) for m in re.finditer(r"is back after (\d+) ms", text)]


def seconds(value):
    return "none" if value is None else "%.3fs" % value


def one_outage(stack, job_id, outage, workers):
    offset = stack.error_log_size()
    traffic = Traffic(stack, job_id).start()
    try:
        time.sleep(0.3)
        stack.stop_redis()
        down_at = stopped = time.monotonic()
        pinger = Pinger(stack).start()
        time.sleep(max(0.0, outage - (time.monotonic() - down_at)))
        stack.start_redis()
        pong = pinger.wait(20)
        expect(pong is not None, "Redis did not answer PING after the restart",
               pinger.error)
        run_until_all_served(stack, traffic, pong, workers)
    finally:
        traffic.stop()
    problems = []
    after, n, n503, all_served = analyse(stack, traffic, pong, workers,
                                         {"redis_unavailable"}, problems, stopped)
    if stack.worker_pids() != workers:
        problems.append("workers changed during the outage: %s -> %s"
                        % (sorted(workers), sorted(stack.worker_pids())))
    backs = outage_lines(stack, offset, workers, problems)
    print("RESULT outage=%.1fs workers=%d last_503_after_ping=%s every_worker_served_after=%s "
          "requests=%d 503s=%d logged_outage_ms=%s"
          % (outage, len(workers), seconds(after), seconds(all_served), n, n503,
             ",".join(map(str, backs))), flush=True)
    expect(not problems, "; ".join(problems))
    return "%.1fs: last 503 %s after PING" % (outage, seconds(after))


def warm_up(stack, workers):
    """Every worker connected and serving before the outage begins."""
    job = stack.request("POST", "/v1/jobs", body=WAV, headers={"Content-Type": "audio/wav"})
    expect(job.status == 202, "submit before the outage", job)
    job_id = job.json["id"]
    traffic = Traffic(stack, job_id).start()
    try:
        start = time.monotonic()
        run_until_all_served(stack, traffic, start, workers, deadline_s=10)
    finally:
        traffic.stop()
    expect(served_after(stack, traffic, start) >= workers,
           "not every worker served before the outage",
           sorted(served_after(stack, traffic, start)), sorted(workers))
    return job_id


def outage_case(workers_n):
    def case(_unused):
        stack = ProbeStack(workers_n)
        try:
            stack.start()
            workers = stack.started_workers()
            expect(len(workers) == workers_n, "expected %d workers, found %s"
                   % (workers_n, sorted(workers)))
            job_id = warm_up(stack, workers)
            details, failures = [], []
            for outage in OUTAGES:  # all of them, for the whole table
                try:
                    details.append(one_outage(stack, job_id, outage, workers))
                except harness.CaseFailed as e:
                    failures.append("%.1fs: %s" % (outage, e))
            expect(not failures, " | ".join(failures))
        except harness.CaseFailed:
            print("nginx error log (tail):\n" + stack.error_log_tail(20), flush=True)
            raise
        finally:
            stack.stop()
        return "; ".join(details)

    case.__name__ = "outage_%d_workers" % workers_n
    return case


cases = harness.Cases()
cases.case(outage_case(2))
cases.case(outage_case(4))

FILL_KEYS = 1500000
FILL_VALUE = 200  # bytes: with rdbcompression off, an RDB of about 320 MB
FILL_SCRIPT = """
local v = string.rep('v', tonumber(ARGV[3]))
local batch = {}
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
    batch[#batch + 1] = 'fill:' .. i
    batch[#batch + 1] = v .. i
    if #batch >= 2000 then redis.call('MSET', unpack(batch)); batch = {} end
end
if #batch > 0 then redis.call('MSET', unpack(batch)) end
return 1
"""


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


@cases.case
def loading_restart(_unused):
    stack = ProbeStack(2)
    try:
        stack.start()
        workers = stack.started_workers()
        expect(len(workers) == 2, "expected 2 workers, found %s" % sorted(workers))
        job_id = warm_up(stack, workers)
        made = time.monotonic()
        fill = stack.redis_client(timeout=120)
        fill.config_set("rdbcompression", "no")
        for first in range(0, FILL_KEYS, 250000):
            fill.eval(FILL_SCRIPT, 0, first, min(FILL_KEYS, first + 250000) - 1, FILL_VALUE)
        fill.save()
        rdb = os.path.join(*(_text(fill.config_get(name)[name]) for name in ("dir", "dbfilename")))
        fill.close()
        rdb_mb = os.path.getsize(rdb) / 1e6
        made = time.monotonic() - made
        spool_before = set(stack.spool_files())
        offset = stack.error_log_size()
        traffic = Traffic(stack, job_id, post_every=5).start()
        try:
            time.sleep(0.3)
            stack.stop_redis()
            stopped = time.monotonic()
            pinger = Pinger(stack).start()
            time.sleep(0.3)
            stack.start_redis()  # returns once it answers PING: after the load
            pong = pinger.wait(30)
            expect(pong is not None, "Redis did not answer PING after the restart",
               pinger.error)
            run_until_all_served(stack, traffic, pong, workers)
        finally:
            traffic.stop()
        expect(pinger.first_answer is not None and pong - pinger.first_answer > 0.2,
               "Redis did not answer LOADING for a while (%.3fs): no load to test"
               % (pong - (pinger.first_answer or pong)))
        loading_s = pong - pinger.first_answer
        problems = []
        after, n, n503, all_served = analyse(stack, traffic, pong, workers,
                                             {"redis_unavailable", "redis_loading"}, problems,
                                             stopped)
        with traffic.lock:
            results = list(traffic.results)
        loading = [r for r in results if r[5] == "redis_loading"]
        if not loading:
            problems.append("no 503 redis_loading while Redis loaded for %.2fs" % loading_s)
        elif not any(r[1] == "POST" for r in loading):
            problems.append("no POST answered redis_loading")
        accepted = sum(1 for r in results if r[1] == "POST" and r[4] == 202)
        new_dirs = [p for p in set(stack.spool_files()) - spool_before
                    if os.path.dirname(p) == stack.spool]
        if len(new_dirs) != accepted:
            problems.append("%d new job directories for %d accepted POSTs"
                            % (len(new_dirs), accepted))
        if stack.worker_pids() != workers:
            problems.append("workers changed during the restart")
        backs = outage_lines(stack, offset, workers, problems)
        print("RESULT loading_restart rdb=%.0fMB loading=%.2fs workers=%d "
              "last_503_after_ping=%s every_worker_served_after=%s requests=%d 503s=%d "
              "redis_loading=%d logged_outage_ms=%s"
              % (rdb_mb, loading_s, len(workers), seconds(after), seconds(all_served), n, n503,
                 len(loading), ",".join(map(str, backs))), flush=True)
        expect(not problems, "; ".join(problems))
    except harness.CaseFailed:
        print("nginx error log (tail):\n" + stack.error_log_tail(20), flush=True)
        raise
    finally:
        stack.stop()
    return "RDB %.0f MB (made in %.1fs), %.2fs LOADING, %d redis_loading, last 503 %s " \
           "after PING" % (rdb_mb, made, loading_s, len(loading), seconds(after))


class _NoStack:
    """Cases.run() wants a stack for its failure report; each case here has its own."""

    @staticmethod
    def error_log_tail(lines=30):
        return "(each case printed its own)"


def main(argv):
    missing = harness.prerequisites_missing()
    if missing is not None:
        return missing
    return cases.run(_NoStack(), only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
