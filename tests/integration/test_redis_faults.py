#!/usr/bin/python3
"""Faults of the Redis connection itself: how the module's one connection per worker
recovers from a peer that stays open and says nothing, and in a worker that is shutting
down. Part of `make test-redis-faults`; each case starts its own stack
(tests/integration/harness.py: real redis-server + nginx with the module, one worker,
sep_redis_timeout 1s, sep_redis_backoff 100ms 5s).

  wedged_connection_replaced  a TCP relay between nginx and Redis stops forwarding on the
                              open connection but forwards new ones (a NAT or load
                              balancer that forgot the flow): GETs are served again at
                              most 2 x sep_redis_timeout after the stall began, over one
                              new connection; the GETs caught on the old one get their
                              503 in time; one "unavailable" and one "is back" line
  keepalive_on_tcp            the module's TCP connection to Redis has TCP keepalive on
                              (the kernel's keepalive timer runs on the socket)
  slow_redis_keeps_connection a Lua script keeps Redis busy for 2.5 s: requests get 503
                              redis_timeout, the connection is kept (a new one is only
                              tried, at most one per sep_redis_timeout + backoff), and the
                              submit Redis runs after the script is refused (past its
                              deadline): no job is created
  exiting_worker_reconnects   an upload half sent, `nginx -s reload`, Redis restarted: the
                              old worker (shutting down, still serving it) reconnects by
                              itself, answers the upload 202 and then exits
  silent_peer_given_up        after an outage a peer on Redis' address accepts and never
                              answers: the setup is given up on after sep_redis_timeout,
                              and once Redis is back requests are served
  stall_logged_once           a Redis stopped (SIGSTOP) for about 2 s under 60 requests:
                              one "unavailable" and one "is back" line, no line per request
  lost_submit_reply_canceled  the relay loses Redis' replies on the open connection (the
                              commands still arrive): a POST with an Idempotency-Key is
                              answered 503 although Redis created the job; once the spare
                              replaced the connection that job is canceled and the key
                              freed, and the retry with the key creates a queued job with
                              its upload in the spool
  lost_delete_reply_retried   the relay loses Redis' replies on the open connection (the
                              commands still arrive): a DELETE is answered 503 although
                              Redis canceled the job, its {spool}/{id}/ stays; the
                              retried DELETE (409 already_deleted) removes it

The `RESULT` lines carry the figures (seconds are measured by the client).

    /usr/bin/python3 tests/integration/test_redis_faults.py [case-name-substring ...]
"""

import os
import re
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import expect  # noqa: E402

REDIS_TIMEOUT = 1.0  # sep_redis_timeout of conf/nginx.conf.in
UNKNOWN_JOB = "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b"
WAV = harness.wav_bytes(seconds=0.05)

cases = harness.Cases()


# helpers ---------------------------------------------------------------------------------
class LogWatch:
    """The nginx error log from the moment of creation on."""

    def __init__(self, stack):
        self.path = stack.values["ERROR_LOG"]
        self.offset = os.path.getsize(self.path)

    def text(self):
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self.offset)
            return f.read()

    def sep_lines(self):
        return [line for line in self.text().splitlines() if "sep:" in line]

    def outage_lines(self):
        """(lines saying serving stopped, lines saying it is back)."""
        lines = self.sep_lines()
        return ([x for x in lines if re.search(r"sep: redis .* unavailable:", x)],
                [x for x in lines if "is back after" in x])


def error_code(resp):
    if isinstance(resp.json, dict) and isinstance(resp.json.get("error"), dict):
        return resp.json["error"].get("code")
    return None


class Gets:
    """GET of an unknown job every `every` seconds, each on its own thread and connection,
    until stop(); results are (t_sent, t_answered, status, error code), times relative to
    `t0` (time.monotonic())."""

    def __init__(self, stack, t0, every=0.1):
        self.stack, self.t0, self.every = stack, t0, every
        self.results = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []
        self.pacer = threading.Thread(target=self._pace, daemon=True)
        self.pacer.start()

    def _one(self):
        sent = time.monotonic() - self.t0
        try:
            r = self.stack.request("GET", UNKNOWN_JOB, timeout=10)
            got = (r.status, error_code(r))
        except OSError as e:
            got = (0, repr(e))
        with self.lock:
            self.results.append((sent, time.monotonic() - self.t0) + got)

    def _pace(self):
        while not self.stopping.is_set():
            t = threading.Thread(target=self._one, daemon=True)
            t.start()
            self.threads.append(t)
            self.stopping.wait(self.every)

    def first_served_after(self, since):
        """Answer time of the first 404 sent after `since`, or None."""
        with self.lock:
            ok = [r[1] for r in self.results if r[2] == 404 and r[0] >= since]
        return min(ok) if ok else None

    def stop(self):
        self.stopping.set()
        self.pacer.join()
        for t in self.threads:
            t.join(15)
        with self.lock:
            return sorted(self.results)


def wait_for(cond, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def tcp_sockets():
    """Established TCP sockets from /proc/net/tcp: dicts with local/remote port, the
    kernel's timer kind (`timer`: 2 is the keepalive timer on an idle socket) and the
    inode."""
    out = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "01":  # TCP_ESTABLISHED
                continue
            out.append({"local": int(fields[1].split(":")[1], 16),
                        "remote": int(fields[2].split(":")[1], 16),
                        "timer": int(fields[5].split(":")[0], 16),
                        "inode": int(fields[9])})
    return out


def socket_inodes(pid):
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", target)
            if m:
                inodes.add(int(m.group(1)))
    except OSError:
        pass
    return inodes


def connections_of(pid, remote_port):
    """The process' established TCP connections to 127.0.0.1:remote_port."""
    mine = socket_inodes(pid)
    return [s for s in tcp_sockets() if s["remote"] == remote_port and s["inode"] in mine]




def relay_stack(relay):
    """One worker, Redis on TCP, nginx told the relay's address."""
    stack = harness.Stack(worker_processes=1, redis_tcp=True,
                          sep_redis=lambda _stack: relay.address)
    relay.upstream = lambda: ("127.0.0.1", stack.redis_port)
    return stack


def warm(stack, n=3):
    for _ in range(n):
        r = stack.request("GET", UNKNOWN_JOB)
        expect(r.status == 404, "warm-up GET: expected 404", r)


# cases -----------------------------------------------------------------------------------
@cases.case
def wedged_connection_replaced(_unused):
    relay = harness.TcpRelay(upstream=None)
    stack = relay_stack(relay)
    try:
        relay.start()
        stack.start()
        warm(stack)
        expect(relay.accepted == 1, "expected the worker's one connection through the relay, "
               "got %d" % relay.accepted)
        log = LogWatch(stack)
        t0 = time.monotonic()
        expect(relay.wedge() == 1, "nothing to wedge")
        gets = Gets(stack, t0)
        served = wait_for(lambda: gets.first_served_after(0.0), 10)
        time.sleep(1.0)  # and it stays served
        results = gets.stop()
        expect(served is not None, "not served again within 10 s of the stall: %s"
               % sorted(set(r[2:] for r in results)))
        limit = 2 * REDIS_TIMEOUT
        n503 = sum(1 for r in results if r[2] == 503)
        print("RESULT wedged_connection served_again_after=%.3fs goal<=%.1fs 503s=%d "
              "relay_connections=%d" % (served, limit, n503, relay.accepted), flush=True)
        expect(served <= limit, "served again %.3fs after the stall, more than 2 x "
               "sep_redis_timeout" % served)
        # every GET sent after the first success is served; each 503 came in time
        late = [r for r in results if r[0] > served and r[2] != 404]
        expect(not late, "answers other than 404 after serving resumed", late[:5])
        slow = [r for r in results if r[2] == 503 and r[1] - r[0] > REDIS_TIMEOUT + 0.5]
        expect(not slow, "a 503 came later than sep_redis_timeout", slow[:5])
        codes = set(r[3] for r in results if r[2] == 503)
        expect(codes <= {"redis_timeout", "redis_unavailable"}, "unexpected 503 codes", codes)
        expect(relay.accepted == 2, "expected one new connection, the relay accepted %d in "
               "all" % relay.accepted)
        down, back = wait_for(lambda: log.outage_lines() if log.outage_lines()[1] else None,
                              3) or log.outage_lines()
        expect(len(down) == 1 and len(back) == 1, "expected one \"unavailable\" and one "
               "\"is back\" line", log.sep_lines())
        expect(len(log.sep_lines()) <= 3, "error log lines for one stall", log.sep_lines())
        addr = "127.0.0.1:%d" % relay.port
        expect(all(addr in x for x in down + back), "the lines name the address with its port "
               "(%s)" % addr, down + back)
        expect("no redis reply" not in log.text(), "a line per request", log.sep_lines())
    finally:
        stack.stop()
        relay.stop()
    return "served again %.3fs after the stall, %d 503s" % (served, n503)


@cases.case
def keepalive_on_tcp(_unused):
    relay = harness.TcpRelay(upstream=None)
    stack = relay_stack(relay)
    try:
        relay.start()
        stack.start()
        warm(stack, 1)
        (worker,) = stack.worker_pids()
        # idle now: the keepalive timer is the one running on the socket
        conns = wait_for(lambda: [c for c in connections_of(worker, relay.port)
                                  if c["timer"] == 2], 2)
        expect(conns, "no keepalive timer on the worker's connection to Redis",
               connections_of(worker, relay.port))
    finally:
        stack.stop()
        relay.stop()


# Busy for ARGV[1] microseconds (under busy-reply-threshold: nobody gets an answer).
BUSY_SCRIPT = """
local t0 = redis.call('TIME')
while true do
    local t = redis.call('TIME')
    if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


@cases.case
def slow_redis_keeps_connection(_unused):
    busy_s = 2.5
    relay = harness.TcpRelay(upstream=None)
    stack = relay_stack(relay)
    try:
        relay.start()
        stack.start()
        warm(stack)
        admin = harness.redis.Redis(host="127.0.0.1", port=stack.redis_port, socket_timeout=30)
        stats_before = admin.hgetall("{sep}:stats")
        spool_before = stack.spool_files()
        log = LogWatch(stack)
        t0 = time.monotonic()
        busy = threading.Thread(target=lambda: admin.eval(BUSY_SCRIPT, 0, int(busy_s * 1e6)))
        busy.start()
        time.sleep(0.1)
        gets = Gets(stack, t0)
        post = stack.request("POST", "/v1/jobs", body=WAV,
                             headers={"Content-Type": "audio/wav"}, timeout=10)
        busy.join()
        served = wait_for(lambda: gets.first_served_after(busy_s), 5)
        results = gets.stop()
        expect(error_code(post) == "redis_timeout", "the POST during the script: expected 503 "
               "redis_timeout", post)
        expect(served is not None, "not served after the script ended")
        expect(served - busy_s < 0.5, "served %.3fs after the script ended" % (served - busy_s))
        # the submit Redis runs after the script is past its deadline: refused, no job
        time.sleep(0.5)
        stats = admin.hgetall("{sep}:stats")
        expect(int(stats.get(b"submitted", 0)) == int(stats_before.get(b"submitted", 0)),
               "the late submit created a job", stats, log.sep_lines())
        expect(int(stats.get(b"canceled", 0)) == int(stats_before.get(b"canceled", 0)),
               "canceled counter", stats)
        expect(int(stats.get(b"queued", 0)) == 0, "a job stays queued", stats)
        expect(stack.spool_files() == spool_before, "the refused POST left spool files")
        # kept: the first connection is still the one open; new ones were only tried
        n503 = sum(1 for r in results if r[2] == 503)
        tried = relay.accepted - 1
        print("RESULT slow_redis busy=%.1fs 503s=%d new_connections_tried=%d"
              % (busy_s, n503, tried), flush=True)
        expect(relay.open_connections() == 1, "expected only the first connection open, "
               "%d are" % relay.open_connections())
        expect(relay.first_open(), "the first connection was closed")
        expect(tried <= int(busy_s / REDIS_TIMEOUT) + 1, "%d new connections tried in a "
               "%.1fs stall" % (tried, busy_s))
        down, back = log.outage_lines()
        expect(len(down) == 1 and len(back) == 1, "expected one \"unavailable\" and one "
               "\"is back\" line", log.sep_lines())
        expect("replacing" not in log.text(), "the connection was replaced", log.sep_lines())
    finally:
        stack.stop()
        relay.stop()
    return "%d 503s, %d new connections tried, the first kept" % (n503, tried)


@cases.case
def exiting_worker_reconnects(_unused):
    stack = harness.Stack(worker_processes=1, redis_tcp=True)
    upload = None
    try:
        stack.start()
        warm(stack, 1)
        (old,) = stack.worker_pids()
        body = harness.wav_bytes(seconds=0.5)
        upload = socket.create_connection(("127.0.0.1", stack.port), timeout=15)
        upload.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                       b"Content-Type: audio/wav\r\nContent-Length: %d\r\n\r\n" % len(body)
                       + body[:len(body) // 2])
        time.sleep(0.2)
        stack.reload_nginx()
        new = wait_for(lambda: stack.worker_pids() - {old}, 10)
        expect(new and old in stack.worker_pids(), "after the reload: old worker %d, workers %s"
               % (old, sorted(stack.worker_pids())))
        def shutting_down():
            with open("/proc/%d/cmdline" % old, "rb") as f:
                return b"shutting down" in f.read()
        expect(wait_for(shutting_down, 5), "the old worker is not shutting down")
        stack.stop_redis()
        time.sleep(0.3)
        stack.start_redis()
        # the old worker reconnects by itself, as the new one does
        again = wait_for(lambda: connections_of(old, stack.redis_port), 3)
        expect(again, "the exiting worker did not reconnect within 3 s (the new one: %s)"
               % ["connected" if connections_of(p, stack.redis_port) else "not connected"
                  for p in sorted(new)])
        upload.sendall(body[len(body) // 2:])
        answer = b""
        while True:
            chunk = upload.recv(65536)
            if not chunk:
                break
            answer += chunk
        upload.close()  # else nginx lingers on it (lingering_close) before the worker exits
        upload = None
        status = answer.split(b"\r\n", 1)[0]
        expect(b" 202 " in status, "the upload finished on the exiting worker", answer[:400])
        expect(wait_for(lambda: old not in stack.worker_pids(), 5),
               "the old worker did not exit after its last request")
    finally:
        if upload is not None:
            upload.close()
        stack.stop()


@cases.case
def silent_peer_given_up(_unused):
    stack = harness.Stack(worker_processes=1)
    held = []
    fake = None
    try:
        stack.start()
        warm(stack, 1)
        stack.stop_redis()
        path = harness.localstack.redis_socket(stack.prefix)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        fake = socket.socket(socket.AF_UNIX)
        fake.bind(path)
        fake.listen(64)

        def acceptor():
            while True:
                try:
                    c, _ = fake.accept()
                except OSError:
                    return
                held.append(c)  # read nothing, answer nothing, never close

        threading.Thread(target=acceptor, daemon=True).start()
        time.sleep(0.3)
        r = stack.request("GET", UNKNOWN_JOB)
        expect(r.status == 503, "against the silent peer: expected 503", r)
        wait_for(lambda: len(held) >= 1, 3)
        expect(held, "the worker did not connect to the silent peer")
        # the peer stops listening (what it accepted stays open); Redis is back
        fake.close()
        os.unlink(path)
        stack.start_redis()
        t_back = time.monotonic()
        seen = []
        while time.monotonic() - t_back < 8:
            r = stack.request("GET", UNKNOWN_JOB, timeout=5)
            seen.append((r.status, error_code(r)))
            if r.status == 404:
                break
            time.sleep(0.2)
        served = time.monotonic() - t_back
        expect(seen[-1][0] == 404, "not served within 8 s of Redis being back",
               sorted(set(seen)))
        # at most the setup limit plus a backoff step or so
        expect(served < 3 * REDIS_TIMEOUT, "served %.3fs after Redis was back" % served)
    finally:
        for c in held:
            c.close()
        stack.stop()
    return "served %.3fs after Redis was back (%d requests)" % (served, len(seen))


@cases.case
def stall_logged_once(_unused):
    n = 60
    stack = harness.Stack(worker_processes=1)
    try:
        stack.start()
        warm(stack)
        log = LogWatch(stack)
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)
        res = []
        try:
            def one():
                try:
                    r = stack.request("GET", UNKNOWN_JOB, timeout=10)
                    res.append((r.status, error_code(r)))
                except OSError as e:
                    res.append((0, repr(e)))
            threads = [threading.Thread(target=one) for _ in range(n)]
            for t in threads:
                t.start()
                time.sleep(0.02)
            for t in threads:
                t.join()
        finally:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        after = wait_for(lambda: stack.request("GET", UNKNOWN_JOB).status == 404, 2)
        expect(after, "not served after the stall")
        expect(all(r == (503, "redis_timeout") for r in res), "answers during the stall",
               sorted(set(res)))
        down, back = wait_for(lambda: log.outage_lines() if log.outage_lines()[1] else None,
                              2) or log.outage_lines()
        lines = log.sep_lines()
        print("RESULT stall_log requests=%d sep_log_lines=%d" % (n, len(lines)), flush=True)
        expect(len(down) == 1 and len(back) == 1, "expected one \"unavailable\" and one "
               "\"is back\" line", lines)
        expect(len(lines) <= 4, "%d sep error-log lines for one stall" % len(lines), lines[:6])
    finally:
        try:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        except (OSError, AttributeError):
            pass
        stack.stop()
    return "%d requests, %d sep log lines" % (n, len(lines))


@cases.case
def lost_delete_reply_retried(_unused):
    relay = harness.TcpRelay(upstream=None)
    stack = relay_stack(relay)
    try:
        relay.start()
        stack.start()
        created = stack.request("POST", "/v1/jobs", WAV, {"Content-Type": "audio/wav"})
        expect(created.status == 202, "upload: expected 202", created)
        job_id = created.json["id"]
        expect(stack.spool_files(job_id), "the upload is not in the spool")
        expect(relay.mute() == 1, "nothing to mute")
        first = stack.request("DELETE", "/v1/jobs/" + job_id, timeout=15)
        expect(first.status == 503, "DELETE with its reply lost: expected 503", first)
        job_key = b"{sep}:job:" + job_id.encode()
        expect(stack.redis.hget(job_key, b"files_deleted") == b"1",
               "Redis did not run the cancel", stack.redis.hgetall(job_key))
        expect(stack.spool_files(job_id), "the directory went without the reply: the "
               "case tests nothing")
        retry = stack.request("DELETE", "/v1/jobs/" + job_id, timeout=15)
        err = harness.expect_json_error(retry, 409, "the retried DELETE")
        expect(err["code"] == "already_deleted", "retry: code", retry)
        left = stack.spool_files(job_id)
        expect(not left, "the retried DELETE left the job's files", left)
    finally:
        stack.stop()
        relay.stop()
    return "the retried DELETE removed {spool}/%s/" % job_id


@cases.case
def lost_submit_reply_canceled(_unused):
    relay = harness.TcpRelay(upstream=None)
    stack = relay_stack(relay)
    key = "lost-reply-1"
    headers = {"Content-Type": "audio/wav", "Idempotency-Key": key}
    try:
        relay.start()
        stack.start()
        warm(stack)
        expect(relay.mute() == 1, "nothing to mute")
        first = stack.request("POST", "/v1/jobs", WAV, headers, timeout=15)
        expect(first.status == 503, "POST with its reply lost: expected 503", first)
        first_ids = [k for k in stack.redis.scan_iter(b"{sep}:job:*")]
        expect(len(first_ids) == 1, "Redis did not run the submit: the case tests nothing",
               first_ids)
        status = wait_for(lambda: stack.redis.hget(first_ids[0], b"status") == b"canceled",
                          5)
        expect(status, "the job whose submit reply was lost is still %s"
               % stack.redis.hget(first_ids[0], b"status"))
        retry = stack.request("POST", "/v1/jobs", WAV, headers, timeout=15)
        expect(retry.status == 202, "the retry with the key: expected 202", retry)
        job = retry.json
        expect(job["status"] == "queued" and job["id"].encode() not in first_ids[0],
               "the retry got the first job", job)
        expect(stack.spool_files(job["id"]), "the retry's upload is not in the spool")
    finally:
        stack.stop()
        relay.stop()
    return "the lost submit's job canceled, the retry created %s" % job["id"]


class _NoStack:
    """Cases.run() wants a stack for its failure report; each case here has its own."""

    @staticmethod
    def error_log_tail(lines=30):
        return "(each case prints its own details)"


def main(argv):
    missing = harness.prerequisites_missing()
    if missing is not None:
        return missing
    return cases.run(_NoStack(), only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
