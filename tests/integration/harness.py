"""Test harness for the integration suite: a real Redis and a real nginx with the
separation module, on loopback, under a temporary prefix, torn down even on failure.

  Stack            starts redis-server + nginx (conf rendered from conf/nginx.conf.in
                   by conf/localstack.py), knows the ports, the spool and a Redis
                   client; stop() is idempotent and also runs at exit and on SIGINT/TERM.
                   Redis listens on a Unix socket, or on loopback TCP (redis_tcp=True);
                   nginx may be pointed at another address (sep_redis=, e.g. a relay);
                   template= renders another template of conf/ (its extra fields set
                   in stack.values before start()). With SEP_TEST_LOG_DIR set, stop()
                   first copies the prefix's logs/ (nginx's error log, workerd logs) to
                   a directory of that name there.
  TcpRelay         a TCP relay between nginx and Redis whose open connections can be
                   wedged (nothing forwarded any more, nothing closed) while new ones
                   are still forwarded: a NAT or load balancer that forgot a flow.
  request()        one HTTP request on a fresh connection, returns a Response with the
                   status, headers, raw body and decoded JSON (when it is JSON).
  tmpfs_spool_stack()  a started Stack on a small tmpfs spool (root only), unmounted after.
  wav_bytes()      a real little PCM WAV file (stdlib `wave`).
  multipart()      a multipart/form-data body from fields and file parts.
  Cases            the runner: one line per case, `PASS: N cases` at the end, exit 1 on
                   any failure; cases known to fail can be listed as skipped (with why),
                   and the cases named in SEP_TEST_SKIP (comma-separated) are counted as
                   skipped, not run.
"""

import atexit
import contextlib
import errno
import http.client
import io
import json
import math
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
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


def rss_kib(pid):
    """The resident set of a process, KiB (VmRSS)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Stack:
    """redis-server + nginx with the module under a temporary prefix."""

    def __init__(self, max_body="1m", max_queued=10000, worker_processes=2, conf_edit=None,
                 redis_tcp=False, sep_redis=None, template=localstack.TEMPLATE):
        self.prefix = tempfile.mkdtemp(prefix="sep-it-")
        self.port = None  # taken at start(), retried when another process has it
        # Redis listens only on a Unix socket in the prefix (no TCP port to race for),
        # or with redis_tcp on a loopback port picked at start() (kept over restarts).
        self.redis_tcp = redis_tcp
        self.redis_port = None
        self.redis_address = localstack.redis_address(self.prefix)
        # What nginx's sep_redis names: a function of the started stack (e.g. a relay's
        # address), or Redis' own address.
        self.sep_redis = sep_redis
        self.values = localstack.local_values(self.prefix, 0, self.redis_address,
                                              max_body=max_body, max_queued=max_queued,
                                              worker_processes=worker_processes)
        self.spool = self.values["SPOOL"]
        self.conf_path = os.path.join(self.prefix, "nginx.conf")
        self.redis_proc = None
        self.nginx_proc = None
        self.keep_prefix = bool(os.environ.get("SEP_TEST_KEEP"))
        self.conf_edit = conf_edit  # text -> text, applied to the rendered nginx.conf
        self.template = template  # conf/nginx.conf.in, or another template of conf/
        self._stopped = False
        atexit.register(self.stop)

    # lifecycle -------------------------------------------------------------------------
    def render_conf(self, port):
        self.values["LISTEN"] = "127.0.0.1:%d" % port
        text = localstack.render_nginx_conf(self.values, self.template)
        return self.conf_edit(text) if self.conf_edit else text

    def start(self):
        localstack.make_prefix_dirs(self.prefix)
        self.start_redis()
        self.values["REDIS"] = self.sep_redis(self) if self.sep_redis else self.redis_address
        self.port, self.nginx_proc = localstack.start_nginx_on_free_port(
            self.prefix, self.conf_path, self.render_conf)
        return self

    def start_redis(self, extra_args=(), timeout=10.0):
        if self._stopped:
            raise RuntimeError("the stack was stopped")
        if not self.redis_tcp:
            self.redis_proc = localstack.start_redis(self.prefix, extra_args=extra_args,
                                                     timeout=timeout)
            self.redis = redis.Redis(unix_socket_path=localstack.redis_socket(self.prefix),
                                     socket_timeout=5, decode_responses=False)
            return
        if self.redis_port is None:
            self.redis_port, self.redis_proc = localstack.start_redis_tcp(
                self.prefix, extra_args=extra_args)
            self.redis_address = localstack.redis_address(self.prefix, self.redis_port)
        else:  # a restart: the same port, which nginx (or a relay) already names
            self.redis_proc = localstack.start_redis(self.prefix, self.redis_port,
                                                     extra_args=extra_args)
        self.redis = redis.Redis(host="127.0.0.1", port=self.redis_port, socket_timeout=5,
                                 decode_responses=False)

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

    def worker_pids(self):
        """Pids of the nginx master's live children (its workers), as a set."""
        master = self.nginx_proc.pid
        pids = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master and fields[0] != "Z":
                pids.add(int(name))
        return pids

    def error_log_size(self):
        """Where nginx's error log ends now (an offset for error_log_since)."""
        try:
            return os.path.getsize(self.values["ERROR_LOG"])
        except OSError:
            return 0

    def error_log_since(self, offset):
        """What nginx wrote to its error log from offset on."""
        with open(self.values["ERROR_LOG"], encoding="utf-8", errors="replace") as f:
            f.seek(offset)
            return f.read()

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        # A Ctrl-C arriving now waits until the servers are gone and the prefix removed.
        with signals_held():
            localstack.stop_process(self.nginx_proc)
            localstack.stop_process(self.redis_proc)
            self.save_logs()
            if self.keep_prefix:
                print("kept test prefix %s" % self.prefix)
            else:
                shutil.rmtree(self.prefix, ignore_errors=True)

    def save_logs(self):
        """logs/ of the prefix to $SEP_TEST_LOG_DIR/<prefix name>/ (when it is set), so
        that what nginx and workerd logged outlives the prefix."""
        dest_root = os.environ.get("SEP_TEST_LOG_DIR")
        src = os.path.join(self.prefix, "logs")
        if not dest_root or not os.path.isdir(src):
            return
        dest = os.path.join(dest_root, os.path.basename(self.prefix))
        shutil.copytree(src, dest, dirs_exist_ok=True)

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


class TcpRelay:
    """A TCP relay on a loopback port of localstack's: every accepted connection is
    forwarded to upstream() (a (host, port) asked for at each accept). wedge() freezes
    the connections open at that moment: nothing read or forwarded on them any more in
    either direction, nothing closed (the peers see a silent, open connection), while
    connections accepted afterwards are forwarded as before. mute() loses the replies
    of the connections open at that moment: what the client sends still reaches
    upstream, what upstream sends back is read and dropped (a reply lost after the
    command ran). One thread, one selector; stop() closes everything."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.port = None
        self.accepted = 0  # connections accepted so far
        self._first = None  # the client side of the first connection accepted
        self._lock = threading.Lock()
        self._pairs = {}  # socket -> its peer, for the connections being forwarded
        self._wedged = []  # sockets of wedged connections, kept open until stop()
        self._wedge_asked = False
        self._muted = set()  # upstream sides whose data is dropped
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener = None
        self._thread = None
        self._stopping = False

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        def bind(port):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                s.close()
                if e.errno == errno.EADDRINUSE:
                    raise localstack.PortInUse(str(e)) from None
                raise
            s.listen(128)
            return s

        self.port, self._listener = localstack.start_on_free_port(bind, "tcp relay")
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()
        return self

    def wedge(self):
        """Freezes the connections open now; returns how many there were."""
        done = threading.Event()
        with self._lock:
            self._wedge_asked = done
        self._wake_w.send(b"w")
        done.wait(5)
        with self._lock:
            return len(self._wedged) // 2

    def mute(self):
        """Drops from now on what upstream sends on the connections open now; returns
        how many there were."""
        with self._lock:
            upstream_sides = [s for s in self._pairs if s.getsockname()[1] != self.port]
            self._muted.update(upstream_sides)
            return len(upstream_sides)

    def open_connections(self):
        """Connections being forwarded now (not wedged, not closed)."""
        with self._lock:
            return len(self._pairs) // 2

    def first_open(self):
        """Whether the first connection accepted is still being forwarded."""
        with self._lock:
            return self._first is not None and self._first in self._pairs

    def stop(self):
        if self._thread is None or self._stopping:
            return
        self._stopping = True
        self._wake_w.send(b"s")
        self._thread.join(5)
        for s in list(self._pairs) + self._wedged + [self._listener, self._wake_r,
                                                    self._wake_w]:
            try:
                s.close()
            except OSError:
                pass

    def _close_pair(self, s):
        with self._lock:
            peer = self._pairs.pop(s, None)
            if peer is not None:
                self._pairs.pop(peer, None)
        for x in (s, peer):
            if x is None:
                continue
            try:
                self._selector.unregister(x)
            except (KeyError, ValueError):
                pass
            x.close()

    def _accept(self):
        client, _ = self._listener.accept()
        self.accepted += 1
        try:
            server = socket.create_connection(self.upstream(), timeout=2)
        except OSError:
            client.close()  # upstream down: the client sees the connection refused late
            return
        for x in (client, server):
            x.settimeout(2)
            x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._pairs[client] = server
            self._pairs[server] = client
            if self._first is None:
                self._first = client
        self._selector.register(client, selectors.EVENT_READ, "data")
        self._selector.register(server, selectors.EVENT_READ, "data")

    def _do_wedge(self, done):
        with self._lock:
            frozen = list(self._pairs)
            self._pairs.clear()
            self._wedged.extend(frozen)
        for x in frozen:
            self._selector.unregister(x)
        done.set()

    def _run(self):
        while not self._stopping:
            for key, _ in self._selector.select(0.5):
                if key.data == "wake":
                    key.fileobj.recv(64)
                    with self._lock:
                        done, self._wedge_asked = self._wedge_asked, False
                    if done:
                        self._do_wedge(done)
                elif key.data == "accept":
                    self._accept()
                else:
                    s = key.fileobj
                    with self._lock:
                        peer = self._pairs.get(s)
                    if peer is None:
                        continue  # closed or wedged in this round
                    try:
                        data = s.recv(65536)
                        if data and s not in self._muted:
                            peer.sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        self._close_pair(s)


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
    """Ordered test cases; each prints one line, the run ends with a PASS/FAIL line.

    skip: {case name: why} for cases that are known to fail (a defect not fixed yet):
    each prints a `skip` line with its reason and is counted as skipped, unless
    SEP_TEST_RUN_SKIPPED=1 is set or the case is named exactly on the command line
    (then it runs like any other)."""

    def __init__(self, skip=None):
        self.cases = []
        self.skip = dict(skip or {})

    def case(self, fn):
        self.cases.append(fn)
        return fn

    def run(self, stack, only=None):
        failed = []
        ran = skipped = 0
        run_skipped = os.environ.get("SEP_TEST_RUN_SKIPPED") == "1"
        env_skip = {n.strip() for n in os.environ.get("SEP_TEST_SKIP", "").split(",")
                    if n.strip()}
        for fn in self.cases:
            name = fn.__name__
            if only and not any(o in name for o in only):
                continue
            if name in env_skip:
                skipped += 1
                print("skip %-44s (SEP_TEST_SKIP)" % name, flush=True)
                continue
            if name in self.skip and not run_skipped and name not in (only or ()):
                skipped += 1
                print("skip %-44s %s" % (name, self.skip[name]), flush=True)
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
        print("CASES: %d passed, %d failed, %d skipped" % (ran - len(failed), len(failed),
                                                          skipped))
        if failed:
            if stack is not None:
                print("nginx error log (tail):\n" + stack.error_log_tail(), flush=True)
            print("FAILED: %d of %d cases: %s" % (len(failed), ran, ", ".join(failed)))
            return 1
        print("PASS: %d cases" % ran)
        return 0


def prerequisites_missing():
    """What a suite's main() checks first: None when python3-redis is importable and the
    module is built; otherwise, after saying why, the exit status (0 with a SKIP line
    without python3-redis, 1 with a FAIL line without the module)."""
    if redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    if not os.path.exists(localstack.MODULE_SO):
        print("FAIL: %s is not built (make)" % localstack.MODULE_SO)
        return 1
    return None


@contextlib.contextmanager
def tmpfs_spool_stack(size="1m", **stack_args):
    """A started Stack whose spool is a tmpfs of `size` (mounting needs root), one
    worker; unmounted and stopped afterwards, also on failure. Its error log has [crit]
    lines for the writes that failed."""
    stack = Stack(worker_processes=1, **stack_args)
    os.makedirs(stack.spool, exist_ok=True)
    subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", stack.spool])
    try:
        stack.start()
        yield stack
    finally:
        if stack.nginx_proc is not None:
            localstack.stop_process(stack.nginx_proc)
        subprocess.call(["umount", "-l", stack.spool])
        stack.stop()


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
