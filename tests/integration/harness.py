"""Test harness for the integration suite: a real Redis and a real nginx with the
separation module, on loopback, under a temporary prefix, torn down even on failure.

  Stack            starts redis-server + nginx (conf rendered from conf/nginx.conf.in
                   by conf/localstack.py), knows the ports, the spool and a Redis
                   client; stop() is idempotent and also runs at exit and on SIGINT/TERM.
  request()        one HTTP request on a fresh connection, returns a Response with the
                   status, headers, raw body and decoded JSON (when it is JSON).
  wav_bytes()      a real little PCM WAV file (stdlib `wave`).
  multipart()      a multipart/form-data body from fields and file parts.
  Cases            the runner: one line per case, `PASS: N cases` at the end, exit 1 on
                   any failure.
"""

import atexit
import contextlib
import http.client
import io
import json
import math
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import uuid
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO_ROOT, "conf"))

import localstack  # noqa: E402  (conf/localstack.py, found through sys.path above)

try:
    import redis  # python3-redis (Debian)
except ImportError:  # pragma: no cover - reported as a SKIP by the suite
    redis = None


class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers  # dict, lower-case names
        self.body = body
        self.elapsed = elapsed
        self.json = None
        ctype = headers.get("content-type", "")
        if ctype.startswith("application/json"):
            try:
                self.json = json.loads(body.decode("utf-8"))
            except ValueError:
                self.json = None

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        text = self.body[:300].decode("utf-8", "replace")
        return "<HTTP %d %s %r>" % (self.status, self.headers.get("content-type"), text)


def request(port, method, path, body=None, headers=None, timeout=10.0):
    """One request on its own connection (no keep-alive surprises between cases)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    start = time.monotonic()
    try:
        hdrs = {"Connection": "close"}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        got = {k.lower(): v for k, v in resp.getheaders()}
        return Response(resp.status, got, data, time.monotonic() - start)
    finally:
        conn.close()


def raw_request(port, data, timeout=10.0):
    """Sends bytes as they are (for requests http.client will not form) and parses the
    one response that comes back on a connection the server closes."""
    import socket

    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body, time.monotonic() - start)


def wav_bytes(seconds=0.25, rate=44100, channels=2, freq=440.0):
    """A real 16-bit PCM WAV: a sine on every channel."""
    frames = int(seconds * rate)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        pcm = bytearray()
        for i in range(frames):
            v = int(12000 * math.sin(2 * math.pi * freq * i / rate))
            pcm += struct.pack("<h", v) * channels
        w.writeframes(bytes(pcm))
    return buf.getvalue()


def multipart(fields, files, boundary=None):
    """(body, content_type) for multipart/form-data.

    fields: [(name, value)]; files: [(name, filename, content_type, bytes)].
    """
    boundary = boundary or "----sep-test-" + uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields:
        out.write(b"--" + boundary.encode() + b"\r\n")
        out.write(b'Content-Disposition: form-data; name="%s"\r\n\r\n' % name.encode())
        out.write(str(value).encode() + b"\r\n")
    for name, filename, ctype, data in files:
        out.write(b"--" + boundary.encode() + b"\r\n")
        out.write(b'Content-Disposition: form-data; name="%s"; filename="%s"\r\n'
                  % (name.encode(), filename.encode()))
        out.write(b"Content-Type: " + ctype.encode() + b"\r\n\r\n")
        out.write(data + b"\r\n")
    out.write(b"--" + boundary.encode() + b"--\r\n")
    return out.getvalue(), "multipart/form-data; boundary=" + boundary


class Stack:
    """redis-server + nginx with the module under a temporary prefix."""

    def __init__(self, max_body="1m", max_queued=10000, worker_processes=2, conf_edit=None):
        self.prefix = tempfile.mkdtemp(prefix="sep-it-")
        self.port = None  # taken at start(), retried when another process has it
        # Redis listens only on a Unix socket in the prefix: no TCP port to race for.
        self.redis_address = localstack.redis_address(self.prefix)
        self.values = localstack.local_values(self.prefix, 0, self.redis_address,
                                              max_body=max_body, max_queued=max_queued,
                                              worker_processes=worker_processes)
        self.spool = self.values["SPOOL"]
        self.conf_path = os.path.join(self.prefix, "nginx.conf")
        self.redis_proc = None
        self.nginx_proc = None
        self.keep_prefix = bool(os.environ.get("SEP_TEST_KEEP"))
        self.conf_edit = conf_edit  # text -> text, applied to the rendered nginx.conf
        self._stopped = False
        atexit.register(self.stop)

    # lifecycle -------------------------------------------------------------------------
    def render_conf(self, port):
        self.values["LISTEN"] = "127.0.0.1:%d" % port
        text = localstack.render_nginx_conf(self.values)
        return self.conf_edit(text) if self.conf_edit else text

    def start(self):
        localstack.make_prefix_dirs(self.prefix)
        self.start_redis()
        self.port, self.nginx_proc = localstack.start_nginx_on_free_port(
            self.prefix, self.conf_path, self.render_conf)
        return self

    def start_redis(self, extra_args=()):
        if self._stopped:
            raise RuntimeError("the stack was stopped")
        self.redis_proc = localstack.start_redis(self.prefix, extra_args=extra_args)
        self.redis = redis.Redis(unix_socket_path=localstack.redis_socket(self.prefix),
                                 socket_timeout=5, decode_responses=False)

    def stop_redis(self):
        localstack.stop_process(self.redis_proc)
        self.redis_proc = None

    def reload_nginx(self):
        """`nginx -s reload` exactly as an operator runs it (through the pid file)."""
        args = localstack.nginx_args(self.prefix, self.conf_path, "-s", "reload")
        res = localstack.subprocess.run(args, stdout=localstack.subprocess.PIPE,
                                        stderr=localstack.subprocess.STDOUT, text=True)
        if res.returncode != 0:
            raise RuntimeError("nginx -s reload failed: " + res.stdout)

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        # A Ctrl-C arriving now waits until the servers are gone and the prefix removed.
        with signals_held():
            localstack.stop_process(self.nginx_proc)
            localstack.stop_process(self.redis_proc)
            if self.keep_prefix:
                print("kept test prefix %s" % self.prefix)
            else:
                shutil.rmtree(self.prefix, ignore_errors=True)

    def error_log_tail(self, lines=30):
        path = self.values["ERROR_LOG"]
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    # helpers ---------------------------------------------------------------------------
    def request(self, method, path, body=None, headers=None, timeout=10.0):
        return request(self.port, method, path, body, headers, timeout)

    def spool_files(self, job_id=None):
        """Files and directories under the spool (whose path mentions job_id, when
        given), leaving out nginx's body temp directory `.incoming`."""
        found = []
        for root, dirs, files in os.walk(self.spool):
            dirs[:] = [d for d in dirs if d != ".incoming"]
            for name in files + dirs:
                path = os.path.join(root, name)
                if job_id is None or job_id in path:
                    found.append(path)
        return sorted(found)

    def job_dir(self, job_id):
        """{spool}/{id}/: the job's upload and, once processed, its stems."""
        return os.path.join(self.spool, job_id)

    def stream_job_ids(self, stream):
        """Job ids of the entries in a queue stream (any field whose value is an id)."""
        ids = []
        for _entry_id, fields in self.redis.xrange(stream):
            for key, value in fields.items():
                text = value.decode("utf-8", "replace")
                if key in (b"id", b"job", b"job_id") or _looks_like_uuid(text):
                    ids.append(text)
        return ids


def _looks_like_uuid(text):
    try:
        return str(uuid.UUID(text)) == text.lower()
    except ValueError:
        return False


class CaseFailed(AssertionError):
    pass


def expect(cond, message, *details):
    if not cond:
        extra = "".join("\n      " + repr(d) for d in details)
        raise CaseFailed(message + extra)


def expect_json_error(resp, status, what=""):
    """An error answer: the status, JSON content type, error.code + error.message."""
    label = (what + ": ") if what else ""
    expect(resp.status == status, "%sexpected HTTP %d, got %d" % (label, status, resp.status),
           resp)
    expect(resp.json is not None, "%sexpected a JSON body" % label, resp)
    err = resp.json.get("error") if isinstance(resp.json, dict) else None
    expect(isinstance(err, dict), "%sexpected an `error` object" % label, resp)
    expect(isinstance(err.get("code"), str) and err["code"], "%serror.code missing" % label,
           resp)
    expect(isinstance(err.get("message"), str) and err["message"],
           "%serror.message missing" % label, resp)
    return err


class Cases:
    """Ordered test cases; each prints one line, the run ends with a PASS/FAIL line."""

    def __init__(self):
        self.cases = []

    def case(self, fn):
        self.cases.append(fn)
        return fn

    def run(self, stack, only=None):
        failed = []
        ran = 0
        for fn in self.cases:
            name = fn.__name__
            if only and not any(o in name for o in only):
                continue
            ran += 1
            start = time.monotonic()
            try:
                detail = fn(stack)
            except CaseFailed as e:
                failed.append(name)
                print("FAIL %-44s %s" % (name, e), flush=True)
            except Exception:  # a crash in a case is a failure of that case
                failed.append(name)
                print("FAIL %-44s crashed:\n%s" % (name, traceback.format_exc()), flush=True)
            else:
                print("ok   %-44s %.2fs%s" % (name, time.monotonic() - start,
                                           ("  " + detail) if detail else ""), flush=True)
        print("CASES: %d passed, %d failed, 0 skipped" % (ran - len(failed), len(failed)))
        if failed:
            if stack is not None:
                print("nginx error log (tail):\n" + stack.error_log_tail(), flush=True)
            print("FAILED: %d of %d cases: %s" % (len(failed), ran, ", ".join(failed)))
            return 1
        print("PASS: %d cases" % ran)
        return 0


@contextlib.contextmanager
def signals_held():
    """SIGINT/SIGTERM are held (delivered afterwards) while the block runs."""
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def install_signal_cleanup(stack):
    """Ctrl-C / SIGTERM: stop the servers and the prefix before exiting."""

    def handler(signum, _frame):
        stack.stop()
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
