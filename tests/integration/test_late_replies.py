#!/usr/bin/python3
"""Late Redis replies on the request path: a command whose request was answered 503
(sep_redis_timeout passed) that Redis still runs afterwards, and the configuration
checks that keep a script from failing half-way. Part of `make test-late-replies`;
each case starts its own stack (tests/integration/harness.py: real redis-server + nginx
with the module, one worker, sep_redis_timeout 1s). Redis is stalled with
`CLIENT PAUSE <ms> ALL` from a second client (commands wait, then run), or stopped
with SIGSTOP (bytes wait in the socket; they run after SIGCONT even when the sender
has closed the connection by then).

  late_delete_removes_files        DELETE during a pause -> 503; Redis runs the cancel
                                   when the pause ends (canceled, files_deleted): the
                                   job's spool directory is removed all the same
  late_purge_removes_stems         the same for a DELETE (purge) of a completed job
                                   with stems on disk
  late_delete_after_worker_exit    DELETE -> 503, `nginx -s reload` while Redis is
                                   stopped: the old worker waits for the late reply
                                   and removes the directory before it exits
  idempotent_retry_after_stall     POST with an Idempotency-Key during a stall -> 503;
                                   the retry with that key creates a working (queued)
                                   job, not the canceled late one
  idempotent_retry_after_late_created
                                   the submit runs before its deadline but its reply
                                   is held up by a busy script: the module cancels the
                                   job and frees the key; the retry gets a queued job
  late_submit_never_reaches_worker a submit answered 503 never reaches a worker
                                   blocked in XREADGROUP (Redis refuses it: past its
                                   deadline)
  late_submit_after_worker_exit    POST -> 503, reload while Redis is stopped: no job
                                   is left in Redis when it wakes (none with no input)
  submit_in_flight_at_fast_stop    a submit waiting in a stopped Redis when nginx stops
                                   (SIGTERM): the exiting worker pipelines its cancel
                                   (with the Idempotency-Key) and removes its upload
  nginx_t_refuses_bad_ttls         `nginx -t` refuses sep_idempotency_ttl 0 (and the
                                   other TTL/size/timeout directives out of range),
                                   naming the directive
  small_body_sniff_stays_in_body   a raw body under 64 bytes followed by a pipelined
                                   request: the sniff sees only the body

    /usr/bin/python3 tests/integration/test_late_replies.py [case-name-substring ...]
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))

import harness  # noqa: E402
from harness import expect  # noqa: E402

REDIS_TIMEOUT = 1.0  # sep_redis_timeout of conf/nginx.conf.in
WAV = harness.wav_bytes(seconds=0.05)
PREFIX = "{sep}:"

cases = harness.Cases()


# helpers ---------------------------------------------------------------------------------
def wait_for(cond, timeout, step=0.05):
    """cond() until it is truthy (returned) or timeout seconds pass (None)."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            return None
        time.sleep(step)


def error_code(resp):
    if isinstance(resp.json, dict) and isinstance(resp.json.get("error"), dict):
        return resp.json["error"].get("code")
    return None


def new_stack(**kw):
    return harness.Stack(worker_processes=1, **kw).start()


def admin_client(stack):
    """A second Redis client (the stack's own may be paused along with nginx's)."""
    return harness.redis.Redis(unix_socket_path=harness.localstack.redis_socket(stack.prefix),
                               socket_timeout=30)


def pause(stack, ms):
    """CLIENT PAUSE <ms> ALL: every client's commands wait until it ends, then run."""
    c = admin_client(stack)
    c.execute_command("CLIENT", "PAUSE", str(ms), "ALL")
    c.close()
    return time.monotonic() + ms / 1000.0


def submit(stack, headers=None):
    hdr = {"Content-Type": "audio/wav"}
    hdr.update(headers or {})
    resp = stack.request("POST", "/v1/jobs", body=WAV, headers=hdr, timeout=15)
    expect(resp.status == 202, "submit: expected 202", resp)
    return resp.json["id"]


def job_hash(stack, job_id):
    return {k.decode(): v.decode() for k, v in
            stack.redis.hgetall(PREFIX + "job:" + job_id).items()}




def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def expect_late_delete_took_effect(stack, job_id, wake_at):
    """After Redis ran the late cancel: canceled/purged in Redis, directory gone."""
    ran = wait_for(lambda: job_hash(stack, job_id).get("files_deleted") == "1",
                   max(0.0, wake_at - time.monotonic()) + 5)
    expect(ran, "Redis did not run the late cancel", job_hash(stack, job_id))
    ran_at = time.monotonic()
    gone = wait_for(lambda: not os.path.exists(stack.job_dir(job_id)), 5)
    expect(gone, "files_deleted=1 but the job's directory stays",
           stack.spool_files(job_id), job_hash(stack, job_id))
    gone_after = time.monotonic() - ran_at
    again = stack.request("DELETE", "/v1/jobs/" + job_id)
    expect(again.status == 409 and error_code(again) == "already_deleted",
           "the retried DELETE", again)
    got = stack.request("GET", "/v1/jobs/" + job_id)
    expect(got.status == 200 and got.json.get("files_deleted") is True, "GET", got)
    return gone_after


def edited_conf(stack, old, new):
    text = stack.render_conf(1)
    expect(old in text, "the sample configuration has no %r" % old)
    return text.replace(old, new)


# cases -----------------------------------------------------------------------------------

@contextlib.contextmanager
def resumed_and_stopped(stack):
    """The stack for one case; afterwards Redis runs again (a case may leave it stopped
    with SIGSTOP) and the stack is stopped, whatever the case did."""
    try:
        yield stack
    finally:
        try:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        except Exception:  # noqa: BLE001
            pass
        stack.stop()

@cases.case
def late_delete_removes_files(_unused):
    stack = new_stack()
    try:
        job_id = submit(stack)
        expect(os.path.isdir(stack.job_dir(job_id)), "no job directory after the submit")
        wake_at = pause(stack, 3000)
        resp = stack.request("DELETE", "/v1/jobs/" + job_id, timeout=15)
        expect(resp.status == 503 and error_code(resp) == "redis_timeout",
               "DELETE during the pause: expected 503 redis_timeout", resp)
        expect(resp.elapsed < 2.5, "the 503 took %.2fs" % resp.elapsed)
        gone = expect_late_delete_took_effect(stack, job_id, wake_at)
        expect(job_hash(stack, job_id).get("status") == "canceled", "status",
               job_hash(stack, job_id))
        return "503 after %.2fs; directory gone %.2fs after Redis ran the cancel" % (
            resp.elapsed, gone)
    finally:
        stack.stop()


@cases.case
def late_purge_removes_stems(_unused):
    from sepredis import Jobs
    stack = new_stack()
    try:
        job_id = submit(stack)
        j = Jobs(stack.redis, prefix=PREFIX, audit=False)
        entries = j.read("w1", "normal")
        expect([e[1] for e in entries] == [job_id], "read the job", entries)
        claim = j.claim(job_id, "w1", "normal", entries[0][0])
        expect(claim[0] == b"run", "claim", claim)
        for name in ("vocals.wav", "no_vocals.wav"):
            with open(os.path.join(stack.job_dir(job_id), name), "wb") as f:
                f.write(b"x" * 10)
        expect(j.complete(job_id, claim[1].decode()) == b"OK", "complete")
        wake_at = pause(stack, 3000)
        resp = stack.request("DELETE", "/v1/jobs/" + job_id, timeout=15)
        expect(resp.status == 503 and error_code(resp) == "redis_timeout",
               "DELETE (purge) during the pause: expected 503 redis_timeout", resp)
        expect_late_delete_took_effect(stack, job_id, wake_at)
        expect(job_hash(stack, job_id).get("status") == "completed", "status",
               job_hash(stack, job_id))
    finally:
        stack.stop()


@cases.case
def late_delete_after_worker_exit(_unused):
    stack = new_stack()
    try:
        job_id = submit(stack)
        (old_worker,) = stack.worker_pids()
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)
        try:
            resp = stack.request("DELETE", "/v1/jobs/" + job_id, timeout=15)
            expect(resp.status == 503 and error_code(resp) == "redis_timeout",
                   "DELETE while Redis is stopped: expected 503 redis_timeout", resp)
            stack.reload_nginx()
            new = wait_for(lambda: [p for p in stack.worker_pids() if p != old_worker], 10)
            expect(new, "no new worker after the reload")
            time.sleep(1.0)  # the old worker, with nothing left to serve, may exit now
        finally:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        expect_late_delete_took_effect(stack, job_id, time.monotonic())
        expect(wait_for(lambda: not pid_alive(old_worker), 15),
               "the old worker did not exit after the late reply")
    finally:
        try:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        except Exception:  # noqa: BLE001
            pass
        stack.stop()


@cases.case
def idempotent_retry_after_stall(_unused):
    with resumed_and_stopped(new_stack()) as stack:
        hdr = {"Content-Type": "audio/wav", "Idempotency-Key": "retry-me-1"}
        stack.request("GET", "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b")
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)
        try:
            r1 = stack.request("POST", "/v1/jobs", body=WAV, headers=hdr, timeout=15)
        finally:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        expect(r1.status == 503, "the POST while Redis is stopped: expected 503", r1)
        expect(stack.spool_files() == [], "the 503 left spool files", stack.spool_files())
        time.sleep(1.0)  # Redis runs the buffered submit; the module acts on its reply
        r2 = stack.request("POST", "/v1/jobs", body=WAV, headers=hdr, timeout=15)
        expect(r2.status == 202 and r2.json.get("status") == "queued",
               "the retry with the same Idempotency-Key: expected 202 queued", r2)
        expect(os.path.isdir(stack.job_dir(r2.json["id"])), "the retry's upload is missing")
        others = [job_hash(stack, k.decode()[len(PREFIX) + 4:])
                  for k in stack.redis.keys(PREFIX + "job:*")
                  if k.decode() != PREFIX + "job:" + r2.json["id"]]
        expect(all(o.get("status") == "canceled" for o in others),
               "a job of the 503 POST is left", others, r1, stack.error_log_tail(15))
        return ("the submit ran in time and was canceled (created %s, 503 after %.2fs)"
                % (others[0].get("created_at"), r1.elapsed)
                if others else "the submit ran past its deadline and was refused")


# Busy for ARGV[1] microseconds (under busy-reply-threshold: nobody gets an answer).
BUSY_SCRIPT = """
local t0 = redis.call('TIME')
while true do
    local t = redis.call('TIME')
    if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


@cases.case
def idempotent_retry_after_late_created(_unused):
    stack = new_stack()
    admin = None
    try:
        admin = admin_client(stack)
        admin.ping()  # connected now: its script is read in the same round as the submit
        hdr = {"Content-Type": "audio/wav", "Idempotency-Key": "retry-me-2"}
        stack.request("GET", "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b")
        # Redis stopped; the submit waits in its socket, then a busy script behind it:
        # on SIGCONT Redis runs the submit (before its deadline) and then the script,
        # which holds the submit's reply until after the request's 503.
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)
        out = {}
        post = threading.Thread(target=lambda: out.setdefault(
            "r1", stack.request("POST", "/v1/jobs", body=WAV, headers=hdr, timeout=15)))
        post.start()
        time.sleep(0.3)
        busy = threading.Thread(target=lambda: admin.eval(BUSY_SCRIPT, 0, 2000000))
        busy.start()
        time.sleep(0.1)
        os.kill(stack.redis_proc.pid, signal.SIGCONT)
        post.join(15)
        busy.join(15)
        r1 = out.get("r1")
        expect(r1 is not None and r1.status == 503, "the POST: expected 503", r1)
        created = wait_for(lambda: stack.redis.keys(PREFIX + "job:*"), 0.5)
        if created:  # the submit ran before its deadline: the module cancels that job
            ok = wait_for(lambda: all(stack.redis.hget(k, "status") == b"canceled"
                                      for k in created), 5)
            expect(ok, "the late-created job was not canceled",
                   [(k, stack.redis.hgetall(k)) for k in created])
            expect(wait_for(lambda: stack.redis.get(PREFIX + "idem:retry-me-2") is None, 5),
                   "the key still names the canceled job")
        r2 = stack.request("POST", "/v1/jobs", body=WAV, headers=hdr, timeout=15)
        expect(r2.status == 202 and r2.json.get("status") == "queued",
               "the retry with the same Idempotency-Key: expected 202 queued", r2)
        expect(stack.spool_files(r2.json["id"]), "the retry's upload is missing")
        return ("the submit ran in time and was canceled" if created
                else "the submit ran past its deadline and was refused")
    finally:
        try:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        except Exception:  # noqa: BLE001
            pass
        if admin is not None:
            admin.close()
        stack.stop()


@cases.case
def late_submit_never_reaches_worker(_unused):
    with resumed_and_stopped(new_stack()) as stack:
        first = submit(stack)
        q = (PREFIX + "q:normal").encode()
        w = admin_client(stack)
        w.xreadgroup("workers", "sim", {q: ">"}, count=100)  # take the warm-up job first
        got = []

        def worker():
            try:
                got.append(w.xreadgroup("workers", "sim", {q: ">"}, count=10, block=6000))
            except Exception as e:  # noqa: BLE001
                got.append(repr(e))

        th = threading.Thread(target=worker)
        th.start()
        time.sleep(0.3)
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)
        try:
            r1 = stack.request("POST", "/v1/jobs", body=WAV,
                               headers={"Content-Type": "audio/wav"}, timeout=15)
        finally:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        th.join(15)
        expect(r1.status == 503, "the POST while Redis is stopped: expected 503", r1)
        entries = []
        for item in got:
            expect(not isinstance(item, str), "XREADGROUP failed: " + str(item))
            for _s, ents in item or []:
                for _eid, f in ents:
                    entries.append({k.decode(): v.decode() for k, v in f.items()})
        late = [e for e in entries if e.get("id") != first]
        expect(not late, "a worker was handed the job of a 503 submit", late)
        jobs = [k.decode() for k in stack.redis.keys(PREFIX + "job:*")]
        expect(jobs == [PREFIX + "job:" + first], "job records", jobs)


@cases.case
def late_submit_after_worker_exit(_unused):
    with resumed_and_stopped(new_stack()) as stack:
        stack.request("GET", "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b")
        (old_worker,) = stack.worker_pids()
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)
        try:
            r1 = stack.request("POST", "/v1/jobs", body=WAV,
                               headers={"Content-Type": "audio/wav"}, timeout=15)
            expect(r1.status == 503, "the POST while Redis is stopped: expected 503", r1)
            stack.reload_nginx()
            expect(wait_for(lambda: [p for p in stack.worker_pids() if p != old_worker], 10),
                   "no new worker after the reload")
            time.sleep(1.0)  # the old worker, with nothing left to serve, may exit now
        finally:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        time.sleep(1.0)  # Redis runs what was buffered
        jobs = [(k.decode(), stack.redis.hget(k, "status"))
                for k in stack.redis.keys(PREFIX + "job:*")]
        live = [j for j in jobs if j[1] in (b"queued", b"running")]
        expect(not live, "a job with no input is left queued", jobs, stack.spool_files())
        queued = int(stack.redis.hget(PREFIX + "stats", "queued") or 0)
        expect(queued == 0, "the queued gauge says %d" % queued)


@cases.case
def submit_in_flight_at_fast_stop(_unused):
    # sep_redis_timeout 5s: Redis wakes well before the submit's deadline
    stack = new_stack(conf_edit=lambda t: t.replace("sep_redis_timeout 1s;",
                                                    "sep_redis_timeout 5s;"))
    try:
        stack.request("GET", "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b")
        (worker,) = stack.worker_pids()
        hdr = {"Content-Type": "audio/wav", "Idempotency-Key": "at-stop"}
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)
        try:
            out = {}

            def post():
                try:
                    out["r"] = stack.request("POST", "/v1/jobs", body=WAV, headers=hdr,
                                             timeout=15)
                except Exception as e:  # noqa: BLE001 (the connection is closed: expected)
                    out["r"] = repr(e)

            th = threading.Thread(target=post)
            th.start()
            # the submit is sent (the upload is in the spool) and waits in Redis' socket
            expect(wait_for(lambda: stack.spool_files(), 3), "the upload never reached the spool")
            time.sleep(0.2)
            os.kill(stack.nginx_proc.pid, signal.SIGTERM)  # fast shutdown: no answer
            expect(wait_for(lambda: not pid_alive(worker), 3), "the worker did not exit")
            th.join(15)
        finally:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        # Redis runs the submit (before its deadline), then the cancel the exiting
        # worker pipelined behind it
        time.sleep(1.0)
        jobs = [(k.decode(), stack.redis.hget(k, "status"))
                for k in stack.redis.keys(PREFIX + "job:*")]
        expect(jobs and all(st == b"canceled" for _k, st in jobs),
               "the submit in flight at exit was not canceled", jobs, out.get("r"))
        expect(stack.redis.get(PREFIX + "idem:at-stop") is None,
               "its Idempotency-Key still names the canceled job")
        expect(stack.spool_files() == [], "its upload stays in the spool", stack.spool_files())
    finally:
        try:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        except Exception:  # noqa: BLE001
            pass
        stack.stop()


@cases.case
def nginx_t_refuses_bad_ttls(_unused):
    stack = harness.Stack(worker_processes=1)
    try:
        harness.localstack.make_prefix_dirs(stack.prefix)
        refused = []
        for old, new, directive in (
                ("sep_idempotency_ttl 24h;", "sep_idempotency_ttl 0;", "sep_idempotency_ttl"),
                ("sep_idempotency_ttl 24h;", "sep_idempotency_ttl 20y;", "sep_idempotency_ttl"),
                ("sep_result_ttl 24h;", "sep_result_ttl 0;", "sep_result_ttl"),
                ("sep_redis_timeout 1s;", "sep_redis_timeout 0;", "sep_redis_timeout"),
                ("sep_multipart_buffer 64k;", "sep_multipart_buffer 100m;",
                 "sep_multipart_buffer"),
                ("sep_cors_max_age 10m;", "sep_cors_max_age 20y;", "sep_cors_max_age")):
            with open(stack.conf_path, "w") as f:
                f.write(edited_conf(stack, old, new))
            res = subprocess.run(
                harness.localstack.nginx_args(stack.prefix, stack.conf_path, "-t"),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            expect(res.returncode != 0, "nginx -t accepted %r" % new)
            expect(directive in res.stdout and "must be" in res.stdout,
                   "nginx -t message for %r does not name the directive: %s"
                   % (new, res.stdout))
            refused.append(new)
        # the bounds themselves are accepted
        with open(stack.conf_path, "w") as f:
            f.write(edited_conf(stack, "sep_idempotency_ttl 24h;", "sep_idempotency_ttl 1s;")
                    .replace("sep_result_ttl 24h;", "sep_result_ttl 3650d;"))
        res = subprocess.run(harness.localstack.nginx_args(stack.prefix, stack.conf_path, "-t"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        expect(res.returncode == 0, "nginx -t refused the bounds: " + res.stdout)
        return "refused: " + ", ".join(refused)
    finally:
        stack.stop()


@cases.case
def small_body_sniff_stays_in_body(stack_unused):
    stack = new_stack()
    try:
        # an 8-byte body that is only the start of a WAV header, then a pipelined request
        # whose first bytes would complete it ("RIFF....WAVE")
        body = b"RIFF\x24\x00\x00\x00"
        data = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body +
                b"WAVE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + b"x" * 64)
        with socket.create_connection(("127.0.0.1", stack.port), timeout=15) as s:
            s.sendall(data)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        status = int(buf.split(b"\r\n", 1)[0].split()[1])
        expect(status == 415, "an 8-byte body was sniffed with the next request's bytes: "
               "HTTP %d" % status, buf[:300])
        expect(stack.redis.keys(PREFIX + "job:*") == [], "a job was created")
    finally:
        stack.stop()


class _NoStack:
    @staticmethod
    def error_log_tail(lines=30):
        return "(each case has its own stack)"


def main(argv):
    if harness.redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    harness.install_signal_cleanup(_NoStack())
    return cases.run(_NoStack(), only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
