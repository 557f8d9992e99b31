#!/usr/bin/python3
"""Module-level tests of ngx_http_sep_module: the behaviours of the Redis client and
the request plumbing that the HTTP API suite does not reach.

Starts its own redis-server (unix socket, password, DEBUG enabled) and nginx with the
built module on a free loopback port under a temporary prefix, removed at the end even
on failure (SEP_TEST_KEEP=1 keeps it). Cases:

  auth_db_unix        sep_redis unix:/... db=3 password=...: jobs land in db 3
  redis_slow          a stalled Redis: GET and POST answer 503 redis_timeout after
                      sep_redis_timeout; the POST leaves no spool files; the submit that
                      Redis runs late is refused (past its deadline: no job the client
                      was told failed) and the gauges stay consistent
  noscript            SCRIPT FLUSH while connected: submit and cancel load the scripts
                      again and succeed
  json_errors         nginx's own errors in sep_api locations are JSON (413 on a chunked
                      body, 400 on a broken chunked body), 411 without a length, HEAD,
                      Idempotency-Key and multipart refusals
  busy                a script past busy-reply-threshold: Redis answers BUSY; GET and
                      POST get 503 redis_loading (Retry-After, no spool files), the
                      connection stays, the outage is logged once ("cannot serve yet",
                      "is back"), and the first GET after the script ended is served
  reconnect_waits     the connection dropped, Redis unreachable until the backoff has
                      grown, then back but busy (DEBUG SLEEP): a request does not get a
                      503 at once but waits for the attempt it starts; a client that
                      closes while its request waits harms nothing (same workers, no
                      alert)
  held_timeout        the connection dropped and Redis asleep past sep_redis_timeout: a
                      POST waiting for the reconnect gets 503 (redis_timeout, or
                      redis_unavailable when the attempt's unanswered setup is given up
                      on first) and its submit is never sent (no job created, none
                      canceled later)
  quit_in_flight      `nginx -s quit` while requests wait for Redis: every one is
                      answered, workers exit, no alert in the error log

    /usr/bin/python3 ngx_module/t/test_module.py [case ...]
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import wave
import io

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "conf"))
import localstack  # noqa: E402  (conf/localstack.py: ports outside the ephemeral range)
MODULE = os.path.join(REPO, "build", "nginx", "objs", "ngx_http_sep_module.so")
PASSWORD = "s3cret-pass"
DB = 3
TIMEOUT_MS = 400
STATS_KEY = "mt:stats"
JOB_PATTERN = "mt:job:*"

try:
    import redis
except ImportError:
    redis = None


def wav_bytes(frames=2000):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"\x01\x00\xff\xff" * frames)
    return buf.getvalue()


WAV = wav_bytes()

NGINX_CONF = """
worker_processes 2;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
load_module {module};
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/spool/.incoming 1 2;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    client_max_body_size 64k;

    sep_redis unix:{prefix}/redis.sock db={db} password={password};
    sep_redis_timeout {timeout}ms;
    sep_redis_backoff 50ms 500ms;
    sep_key_prefix mt:;
    sep_spool {prefix}/spool;
    sep_max_queued 100;
    sep_multipart_max_header 1k;

    server {{
        listen 127.0.0.1:{port};
        location /v1/ {{ sep_api; }}
        location /_sep_stems/ {{ internal; alias {prefix}/spool/; }}
    }}
}}
"""


class Stack:
    def __init__(self):
        self.prefix = tempfile.mkdtemp(prefix="sep-mod-")
        self.port = None  # taken in start(), retried when another process has it
        self.spool = os.path.join(self.prefix, "spool")
        self.redis_proc = None
        self.nginx_started = False
        self.r = None

    def start(self):
        for d in ("spool/.incoming", "tmp"):
            os.makedirs(os.path.join(self.prefix, d), exist_ok=True)
        os.chmod(self.prefix, 0o755)
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--unixsocket", self.prefix + "/redis.sock",
             "--unixsocketperm", "777", "--requirepass", PASSWORD, "--save", "",
             "--appendonly", "no", "--dir", self.prefix, "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while True:
            try:
                self.r = redis.Redis(unix_socket_path=self.prefix + "/redis.sock",
                                     password=PASSWORD, db=DB)
                self.r.ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.port, _ = localstack.start_on_free_port(self.start_nginx, "nginx")
        deadline = time.monotonic() + 5
        while True:
            try:
                if self.request("GET", "/v1/jobs/x").status == 404:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not answer:\n" + self.error_log())
            time.sleep(0.05)
        # the workers connect on their own; wait until a request reaches Redis
        deadline = time.monotonic() + 5
        while self.request("GET", "/v1/jobs/00000000-0000-4000-8000-000000000000").status != 404:
            if time.monotonic() > deadline:
                raise RuntimeError("module not connected:\n" + self.error_log())
            time.sleep(0.05)

    def start_nginx(self, port):
        """nginx (a daemon) listening on port; localstack.PortInUse when it was taken."""
        user = "user root;" if os.geteuid() == 0 else ""
        with open(os.path.join(self.prefix, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(user=user, prefix=self.prefix, module=MODULE, db=DB,
                                      password=PASSWORD, timeout=TIMEOUT_MS, port=port))
        res = subprocess.run(self.nginx_cmd(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        if res.returncode != 0:
            if "Address already in use" in res.stdout:
                # the [emerg] of this attempt is not the stack's: later cases read the log
                open(self.prefix + "/error.log", "w").close()
                raise localstack.PortInUse(res.stdout.strip())
            raise RuntimeError("nginx failed to start: " + res.stdout)
        self.port = port
        self.nginx_started = True

    def nginx_cmd(self, *extra):
        return ["/usr/sbin/nginx", "-p", self.prefix, "-c", self.prefix + "/nginx.conf",
                "-e", self.prefix + "/error.log"] + list(extra)

    def nginx_running(self):
        try:
            with open(self.prefix + "/nginx.pid") as f:
                os.kill(int(f.read()), 0)
            return True
        except (OSError, ValueError):
            return False

    def stop(self):
        if self.nginx_started and self.nginx_running():
            subprocess.call(self.nginx_cmd("-s", "stop"), stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while self.nginx_running() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.redis_proc:
            self.redis_proc.terminate()
            self.redis_proc.wait()
            self.redis_proc = None
        if os.environ.get("SEP_TEST_KEEP") != "1":
            shutil.rmtree(self.prefix, ignore_errors=True)

    def error_log(self):
        try:
            with open(self.prefix + "/error.log") as f:
                return f.read()
        except OSError:
            return ""

    def request(self, method, path, body=None, headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            hdrs = {"Connection": "close"}
            hdrs.update(headers or {})
            start = time.monotonic()
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            resp.elapsed = time.monotonic() - start
            resp.body = data
            resp.json = None
            if (resp.getheader("content-type") or "").startswith("application/json") and data:
                resp.json = json.loads(data)
            return resp
        finally:
            conn.close()

    def raw(self, payload):
        """Sends raw bytes, returns (status, headers+body text)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            s.sendall(payload)
            data = b""
            # read one response (nginx may linger on an unread body: no EOF wait)
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        finally:
            s.close()
        status = int(head.split(b" ")[1])
        return status, head.decode("latin-1"), body

    def spool_entries(self):
        return sorted(e for e in os.listdir(self.spool) if e != ".incoming")

    def redis_client(self):
        return redis.Redis(unix_socket_path=self.prefix + "/redis.sock", password=PASSWORD,
                           db=DB)

    def worker_pids(self):
        with open(self.prefix + "/nginx.pid") as f:
            master = int(f.read())
        pids = set()
        for name in os.listdir("/proc"):
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master and fields[0] != "Z":
                pids.add(int(name))
        return pids


class Failure(Exception):
    pass


def expect(cond, what, detail=None):
    if not cond:
        raise Failure(what + ("" if detail is None else ": %r" % (detail,)))


def expect_error(resp_or_status, status, code, body=None):
    if isinstance(resp_or_status, int):
        got_status, doc = resp_or_status, json.loads(body)
    else:
        got_status, doc = resp_or_status.status, resp_or_status.json
    expect(got_status == status, "expected %d, got %d" % (status, got_status), doc)
    expect(isinstance(doc, dict) and doc.get("error", {}).get("code") == code,
           "expected error code %s" % code, doc)


def submit(stack, query="", body=WAV, headers=None):
    hdrs = {"Content-Type": "audio/wav"}
    hdrs.update(headers or {})
    return stack.request("POST", "/v1/jobs" + ("?" + query if query else ""), body, hdrs)


def stall_redis(stack, seconds):
    """DEBUG SLEEP on its own connection, in the background."""
    def run():
        c = redis.Redis(unix_socket_path=stack.prefix + "/redis.sock", password=PASSWORD)
        c.execute_command("DEBUG", "SLEEP", seconds)
    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.05)
    return t


# ---- cases ---------------------------------------------------------------------------

def case_auth_db_unix(stack):
    resp = submit(stack)
    expect(resp.status == 202, "submit over unix socket + AUTH + SELECT", resp.status)
    job_id = resp.json["id"]
    expect(stack.r.exists("mt:job:" + job_id), "job hash not in db %d" % DB)
    other = redis.Redis(unix_socket_path=stack.prefix + "/redis.sock", password=PASSWORD, db=0)
    expect(not other.exists("mt:job:" + job_id), "job hash leaked into db 0")
    got = stack.request("GET", "/v1/jobs/" + job_id)
    expect(got.status == 200 and got.json["id"] == job_id, "GET", got.status)
    head = stack.request("HEAD", "/v1/jobs/" + job_id)
    expect(head.status == 200 and head.body == b"", "HEAD has no body", head.body)
    expect(int(head.getheader("content-length")) == len(got.body), "HEAD length")


def case_redis_slow(stack):
    job_id = submit(stack).json["id"]
    before = stack.spool_entries()
    stats_before = stack.r.hgetall("mt:stats")
    t = stall_redis(stack, 1.2)
    try:
        get = stack.request("GET", "/v1/jobs/" + job_id)
        expect_error(get, 503, "redis_timeout")
        expect(TIMEOUT_MS / 1000 * 0.8 < get.elapsed < 1.0, "GET 503 after the timeout",
               get.elapsed)
        expect(get.getheader("retry-after") == "1", "Retry-After on 503")
        post = submit(stack)
        expect_error(post, 503, "redis_timeout")
        expect(stack.spool_entries() == before, "the refused POST left spool files",
               stack.spool_entries())
    finally:
        t.join()
    # Redis runs the late submit after its deadline (the moment its request stopped
    # waiting): refused, nothing written, so there is no job to cancel.
    time.sleep(0.3)
    late = [k for k in stack.r.scan_iter("mt:job:*")
            if stack.r.hget(k, "id").decode() not in before and
            k.decode() != "mt:job:" + job_id]
    expect(not late, "the late submit created a job",
           [(k, stack.r.hget(k, "status")) for k in late])
    stats = stack.r.hgetall("mt:stats")
    queued = sum(1 for k in stack.r.scan_iter("mt:job:*") if stack.r.hget(k, "status") == b"queued")
    expect(int(stats[b"queued"]) == queued, "queued gauge %s != queued jobs %d"
           % (stats[b"queued"], queued))
    for field in (b"submitted", b"canceled"):
        expect(stats.get(field) == stats_before.get(field), "%s changed" % field.decode(),
               (stats_before.get(field), stats.get(field)))
    expect(stack.r.xlen("mt:q:normal") == queued, "stream holds a job not queued")
    # and the module serves normally again
    expect(stack.request("GET", "/v1/jobs/" + job_id).status == 200, "GET after the stall")


def case_noscript(stack):
    stack.r.script_flush()
    resp = submit(stack)
    expect(resp.status == 202, "submit after SCRIPT FLUSH", resp.status)
    stack.r.script_flush()
    resp = stack.request("DELETE", "/v1/jobs/" + resp.json["id"])
    expect(resp.status == 200 and resp.json["status"] == "canceled", "cancel after FLUSH",
           resp.status)
    expect("loaded it again" in stack.error_log(), "reload not logged")


BUSY_SCRIPT = """
local t0 = redis.call('TIME')
while true do
    local t = redis.call('TIME')
    if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


def case_busy(stack):
    job_id = submit(stack).json["id"]
    before = stack.spool_entries()
    log_at = len(stack.error_log())
    admin = stack.redis_client()
    threshold = admin.config_get("busy-reply-threshold")["busy-reply-threshold"]
    admin.config_set("busy-reply-threshold", 100)
    ended = {}

    def run():
        c = stack.redis_client()
        c.eval(BUSY_SCRIPT, 0, 900000)
        ended["at"] = time.monotonic()

    t = threading.Thread(target=run)
    t.start()
    try:
        time.sleep(0.35)
        get = stack.request("GET", "/v1/jobs/" + job_id)
        post = submit(stack)
    finally:
        t.join()
        admin.config_set("busy-reply-threshold", threshold)
    expect("at" in ended, "the busy script did not end")
    expect_error(get, 503, "redis_loading")
    expect(get.getheader("retry-after") == "1", "Retry-After on redis_loading")
    expect(get.elapsed < TIMEOUT_MS / 1000, "redis_loading came after %.3fs" % get.elapsed)
    expect_error(post, 503, "redis_loading")
    expect(stack.spool_entries() == before, "the refused POST left spool files")
    # Redis serves again the moment the script returned: so does the module (no
    # reconnect, no waiting for the setup retry)
    got = stack.request("GET", "/v1/jobs/" + job_id)
    expect(got.status == 200, "the first GET after the script ended: %d" % got.status, got.json)
    deadline = time.monotonic() + 2
    while "is back after" not in stack.error_log()[log_at:]:
        expect(time.monotonic() < deadline, "no \"is back\" line", stack.error_log()[log_at:])
        time.sleep(0.02)
    log = stack.error_log()[log_at:]
    expect("cannot serve yet: BUSY" in log, "the BUSY outage is not logged", log)
    expect("lost the connection" not in log, "the connection was dropped for BUSY", log)


def case_reconnect_waits(stack):
    job_id = submit(stack).json["id"]
    workers = stack.worker_pids()
    log_at = len(stack.error_log())
    sock = stack.prefix + "/redis.sock"
    admin = stack.redis_client()
    admin.ping()  # connected before the socket goes away
    os.rename(sock, sock + ".away")
    try:
        admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        time.sleep(1.5)  # failed attempts: the backoff is at its MAX (500 ms)
    finally:
        os.rename(sock + ".away", sock)
    asleep = threading.Thread(target=lambda: admin.execute_command("DEBUG", "SLEEP", 0.35))
    asleep.start()
    try:
        time.sleep(0.08)  # any attempt within MIN now happened with the socket back
        gone = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
        gone.sendall(b"GET /v1/jobs/%s HTTP/1.1\r\nHost: t\r\n\r\n" % job_id.encode())
        time.sleep(0.03)
        gone.close()  # its request is still waiting for Redis
        get = stack.request("GET", "/v1/jobs/" + job_id)
    finally:
        asleep.join()
    waited = get.status == 200 or (get.json or {}).get("error", {}).get("code") == "redis_timeout"
    # (before: 503 redis_unavailable at once, the backoff timer being far away)
    expect(waited, "the request did not wait for the reconnect (%d after %.3fs)"
           % (get.status, get.elapsed), get.json)
    expect(stack.request("GET", "/v1/jobs/" + job_id).status == 200, "GET afterwards")
    expect(stack.worker_pids() == workers, "workers changed", (workers, stack.worker_pids()))
    log = stack.error_log()[log_at:]
    expect("[alert]" not in log and "signal" not in log, "error log", log)


def case_held_timeout(stack):
    admin = stack.redis_client()
    admin.ping()
    before = stack.spool_entries()
    stats_before = admin.hgetall(STATS_KEY)
    jobs_before = len(list(admin.scan_iter(JOB_PATTERN)))

    def kill_and_sleep():
        pipe = admin.pipeline(transaction=False)
        pipe.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        pipe.execute_command("DEBUG", "SLEEP", 1.5)
        pipe.execute()

    asleep = threading.Thread(target=kill_and_sleep)
    asleep.start()
    try:
        time.sleep(0.12)  # the workers saw the close and reconnect into the sleep
        post = submit(stack)
    finally:
        asleep.join()
    # its own deadline (redis_timeout), or the attempt's setup given up on first
    # (redis_unavailable): either way the submit was held, never sent
    code = (post.json or {}).get("error", {}).get("code")
    expect(post.status == 503 and code in ("redis_timeout", "redis_unavailable"),
           "expected 503 redis_timeout or redis_unavailable", post.json)
    expect(stack.spool_entries() == before, "the refused POST left spool files")
    time.sleep(0.3)  # the setup is answered now: a sent submit would have run
    expect(stack.request("GET", "/v1/jobs/00000000-0000-4000-8000-000000000000").status == 404,
           "serving after the sleep")
    stats = admin.hgetall(STATS_KEY)
    for field in (b"submitted", b"canceled"):
        expect(stats.get(field) == stats_before.get(field), "%s changed: the held submit ran"
               % field.decode(), (stats_before.get(field), stats.get(field)))
    expect(len(list(admin.scan_iter(JOB_PATTERN))) == jobs_before, "a job was created")


def case_json_errors(stack):
    before = stack.spool_entries()
    # 413 from nginx itself while reading a chunked body
    big = b"x" * (80 * 1024)
    chunked = (b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
               b"Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n")
    status, head, body = stack.raw(chunked)
    expect_error(status, 413, "body_too_large", body)
    expect("application/json" in head, "413 content type", head)
    # 413 by Content-Length, before the module runs
    status, head, body = stack.raw(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                   b"Content-Length: 100000\r\n\r\n")
    expect_error(status, 413, "body_too_large", body)
    # a broken chunked body: nginx's 400, as JSON
    status, head, body = stack.raw(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
    expect_error(status, 400, "bad_request", body)
    # no length at all
    status, head, body = stack.raw(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                   b"Content-Type: audio/wav\r\n\r\n")
    expect_error(status, 411, "length_required", body)
    # a chunked body that is fine is accepted
    small = WAV
    status, head, body = stack.raw(
        b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: audio/wav\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(small) + small + b"\r\n0\r\n\r\n")
    expect(status == 202, "chunked upload", body[:200])
    accepted = json.loads(body)["id"]
    expect_error(submit(stack, body=b""), 400, "empty_body")
    expect_error(submit(stack, headers={"Idempotency-Key": "has space"}), 400,
                 "invalid_idempotency_key")
    expect_error(submit(stack, "model=htdemucs&model=htdemucs"), 400, "invalid_option")

    def form(parts, boundary="BnD"):
        out = b""
        for head_lines, data in parts:
            out += b"--" + boundary.encode() + b"\r\n" + head_lines + b"\r\n\r\n" + data + b"\r\n"
        return out + b"--" + boundary.encode() + b"--\r\n"

    ctype = {"Content-Type": "multipart/form-data; boundary=BnD"}
    file_part = (b'Content-Disposition: form-data; name="file"; filename="a.wav"', WAV)
    body = form([file_part, file_part])
    expect_error(stack.request("POST", "/v1/jobs", body, ctype), 400, "duplicate_file")
    body = form([(b'Content-Disposition: form-data; name="x"\r\nX-Pad: ' + b"p" * 2000, b"1"),
                 file_part])
    expect_error(stack.request("POST", "/v1/jobs", body, ctype), 400, "invalid_multipart")
    body = form([(b'Content-Disposition: form-data; name="model"', b"htdemucs"), file_part])
    expect_error(stack.request("POST", "/v1/jobs?model=htdemucs", body, ctype), 400,
                 "invalid_option")
    body = form([(b'Content-Disposition: form-data; name="file"; filename="a.txt"',
                  b"plain text, not audio")])
    expect_error(stack.request("POST", "/v1/jobs", body, ctype), 415, "unsupported_media_type")
    expect_error(stack.request("POST", "/v1/jobs", b"--BnD\r\nbroken", ctype), 400,
                 "invalid_multipart")
    expect_error(stack.request("POST", "/v1/jobs", WAV,
                               {"Content-Type": "multipart/form-data"}), 400, "invalid_multipart")
    left = [e for e in stack.spool_entries() if e not in before and e != accepted]
    expect(not left, "refused uploads left spool directories", left)


def case_quit_in_flight(stack):
    job_id = submit(stack).json["id"]
    results = []

    def get():
        try:
            results.append(stack.request("GET", "/v1/jobs/" + job_id).status)
        except Exception as e:  # noqa: BLE001 - any failure is reported
            results.append(repr(e))

    t = stall_redis(stack, TIMEOUT_MS / 1000 / 2)
    clients = [threading.Thread(target=get) for _ in range(8)]
    for c in clients:
        c.start()
    time.sleep(0.05)
    subprocess.check_call(stack.nginx_cmd("-s", "quit"))
    for c in clients:
        c.join()
    t.join()
    expect(results == [200] * 8, "in-flight requests during quit", results)
    deadline = time.monotonic() + 5
    while stack.nginx_running():
        expect(time.monotonic() < deadline, "nginx did not exit after quit")
        time.sleep(0.05)
    log = stack.error_log()
    for bad in ("[alert]", "[crit]", "[emerg]", "open socket", "exited on signal"):
        expect(bad not in log, "error log has %s" % bad,
               [line for line in log.splitlines() if bad in line][:3])


CASES = [case_auth_db_unix, case_redis_slow, case_noscript, case_json_errors, case_busy,
         case_reconnect_waits, case_held_timeout, case_quit_in_flight]


def main(argv):
    if redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    if shutil.which("redis-server") is None:
        print("SKIP: redis-server is not installed (make deps)")
        return 0
    if not os.path.exists(MODULE):
        print("FAIL: %s is not built (make)" % MODULE)
        return 1
    only = argv[1:]
    stack = Stack()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    failed = 0
    ran = 0
    try:
        stack.start()
        for case in CASES:
            name = case.__name__[len("case_"):]
            if only and not any(o in name for o in only):
                continue
            ran += 1
            start = time.monotonic()
            try:
                case(stack)
                print("ok   %-20s %.2fs" % (name, time.monotonic() - start), flush=True)
            except Exception as e:  # noqa: BLE001
                failed += 1
                print("FAIL %-20s %s" % (name, e), flush=True)
                if not isinstance(e, Failure):
                    traceback.print_exc()
    except Exception as e:  # noqa: BLE001
        print("FAIL: could not start the stack: %s" % e)
        print(stack.error_log()[-3000:])
        return 1
    finally:
        if failed:
            print(stack.error_log()[-3000:])
        stack.stop()
    print("CASES: %d passed, %d failed, 0 skipped" % (ran - failed, failed))
    if failed:
        print("FAIL: %d of %d module cases" % (failed, ran))
        return 1
    print("PASS: %d module cases" % ran)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
