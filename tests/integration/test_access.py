#!/usr/bin/python3
"""Access control the nginx way, against a live stack (real redis-server + nginx with the
module) running conf/nginx-access.conf.in, the reference of conf/README.md "Access
control":

  * API keys (the default server): `Authorization: Bearer <key>` looked up in a `map`
    whose entries are in an include file; no key or a wrong one is a JSON 401 with
    `WWW-Authenticate: Bearer` and the CORS headers; a good key submits a job, reads it
    and downloads its stems; CORS preflights need no key; limit_req and limit_conn per
    key (one key refused with 429 while another passes);
  * auth_request (server_name auth.localhost): a small real HTTP auth service in this
    process, on loopback, lets in or refuses by the Authorization header; its 401/403
    are JSON 401/403, its 500 or its absence a JSON 500, never a pass-through;
  * the refusals are answers shared/openapi.json lists (checked as test_openapi does);
  * a refused upload is never read: a big POST with `Expect: 100-continue` or sent
    slowly gets its 401 at once (no `100 Continue`), and nothing reaches the spool or
    nginx's body temp directory, for a bad key and for a denied auth_request alike.

One stack for every case; prints one line per case and `PASS: N cases` at the end.
"""

import http.server
import os
import secrets
import shutil
import socket
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import test_openapi  # noqa: E402  (its check(): an answer against shared/openapi.json)
import worker_sim  # noqa: E402
from harness import expect, expect_json_error  # noqa: E402

localstack = harness.localstack

ORIGIN = "http://app.test"
AUTH_HOST = "auth.localhost"
KEY_NAMES = ("alice", "bob", "limited", "unlimited", "streams", "others", "uploader")
# Small limits, so the cases reach them: 2 requests a second with a burst of 5, and 2
# requests in progress at once, per key.
KEY_RATE, KEY_BURST, KEY_CONNS = "2r/s", 5, 2
BIG = 8 * 1024 * 1024  # the declared size of the refused uploads
WAV = harness.wav_bytes()

cases = harness.Cases()


class AuthService:
    """The auth service of auth_request: an HTTP server on loopback whose answer depends
    on the Authorization header the subrequest carries:

        Bearer sso-forbidden  403
        Bearer sso-broken     500, with a header and a body that must not pass through
        Bearer sso-<user>     200, X-Auth-User: <user>
        anything else         401, WWW-Authenticate: Bearer realm="test-sso", an HTML body

    Every request it got is kept (method, path, headers) in `seen`."""

    def __init__(self):
        self.seen = []
        self.lock = threading.Lock()
        self.server = None
        self.thread = None
        self.port = None

    def start(self, port=None):
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self):
                with service.lock:
                    service.seen.append((self.command, self.path,
                                         {k.lower(): v for k, v in self.headers.items()}))
                auth = self.headers.get("Authorization", "")
                if auth == "Bearer sso-forbidden":
                    self.reply(403, {}, b"forbidden by policy")
                elif auth == "Bearer sso-broken":
                    self.reply(500, {"X-Auth-Secret": "leaked"}, b"auth-service-traceback")
                elif auth.startswith("Bearer sso-"):
                    self.reply(200, {"X-Auth-User": auth[len("Bearer sso-"):]}, b"")
                else:
                    self.reply(401, {"WWW-Authenticate": 'Bearer realm="test-sso"'},
                               b"<html>auth-service-login-page</html>")

            def reply(self, status, headers, body):
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_POST = do_DELETE = do_OPTIONS = answer

        def bind(p):
            try:
                return http.server.ThreadingHTTPServer(("127.0.0.1", p), Handler)
            except OSError as e:
                raise localstack.PortInUse(str(e)) from None

        if port is None:
            self.port, self.server = localstack.start_on_free_port(bind, "auth service")
        else:
            self.port, self.server = port, bind(port)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def requests_seen(self):
        with self.lock:
            return len(self.seen)


class AccessStack:
    """The stack of conf/nginx-access.conf.in with its key file and auth service."""

    def __init__(self):
        self.auth = AuthService().start()
        self.stack = harness.Stack(template=localstack.ACCESS_TEMPLATE, max_body="64m")
        self.keys = {name: secrets.token_hex(32) for name in KEY_NAMES}
        self.keys_file = os.path.join(self.stack.prefix, "sep-api-keys.conf")
        with open(self.keys_file, "w", encoding="utf-8") as f:
            f.write("# the keys of the access tests\n")
            for name, key in sorted(self.keys.items()):
                f.write('"Bearer %s" %s;\n' % (key, name))
        self.stack.values.update({
            "API_KEYS": self.keys_file,
            "AUTH_SERVER_NAME": AUTH_HOST,
            "AUTH_URL": "http://127.0.0.1:%d/check" % self.auth.port,
            "CORS_ORIGINS": ORIGIN,
            "KEY_RATE": KEY_RATE,
            "KEY_BURST": str(KEY_BURST),
            "KEY_CONNS": str(KEY_CONNS),
        })

    def start(self):
        self.stack.start()
        return self

    def stop(self):
        self.stack.stop()
        self.auth.stop()

    @property
    def port(self):
        return self.stack.port

    def error_log_tail(self, lines=30):
        return self.stack.error_log_tail(lines)

    def key(self, name):
        return {"Authorization": "Bearer " + self.keys[name]}

    def request(self, method, path, body=None, headers=None, key=None, host=None):
        hdrs = dict(headers or {})
        if key is not None:
            hdrs.update(self.key(key))
        if host is not None:
            hdrs["Host"] = host
        return self.stack.request(method, path, body=body, headers=hdrs)

    def submit(self, headers=None, **kw):
        resp = self.request("POST", "/v1/jobs", body=WAV,
                            headers=dict(headers or {}, **{"Content-Type": "audio/wav"}), **kw)
        expect(resp.status == 202 and resp.json and resp.json.get("id"),
               "submit: expected 202 with a job", resp)
        return resp

    def nothing_stored(self):
        """Whether no upload reached the spool (job directories, nginx's body temp
        files under .incoming) and no job reached Redis."""
        files = self.stack.spool_files()
        for root, _dirs, names in os.walk(os.path.join(self.stack.spool, ".incoming")):
            files += [os.path.join(root, n) for n in names]
        jobs = self.stack.redis.keys(worker_sim.PREFIX + "job:*")
        return files, jobs

    def empty_spool(self):
        """Removes the jobs earlier cases made (spool directories, Redis keys), so that
        a case can see that nothing at all reaches the spool."""
        for name in os.listdir(self.stack.spool):
            if name != ".incoming":
                shutil.rmtree(os.path.join(self.stack.spool, name))
        self.stack.redis.flushall()

    def error_log(self):
        try:
            with open(self.stack.values["ERROR_LOG"], encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def documented(resp, method, template):
    """The answer is one shared/openapi.json lists for the route (status, headers, body)."""
    if test_openapi.jsonschema is not None:
        test_openapi.check(resp, method, template)
    return resp


def expect_unauthorized(resp, what, realm="sep"):
    err = expect_json_error(resp, 401, what)
    expect(err["code"] == "unauthorized", "%s: code %r" % (what, err["code"]), resp)
    challenge = resp.header("www-authenticate") or ""
    expect(challenge.startswith("Bearer") and ('realm="%s"' % realm) in challenge,
           "%s: WWW-Authenticate %r" % (what, challenge), resp)
    return err


def expect_cors(resp, what):
    expect(resp.header("access-control-allow-origin") == ORIGIN,
           "%s: Access-Control-Allow-Origin %r" % (what, resp.header(
               "access-control-allow-origin")), resp)


def open_upload(port, headers, length, host="localhost"):
    """A connection that has sent the head of `POST /v1/jobs` declaring `length` bytes
    of body (and, in `headers`, whatever else the case needs)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    head = "POST /v1/jobs HTTP/1.1\r\nHost: %s\r\nContent-Type: audio/wav\r\n" \
           "Content-Length: %d\r\nConnection: close\r\n" % (host, length)
    head += "".join("%s: %s\r\n" % kv for kv in headers.items())
    s.sendall(head.encode() + b"\r\n")
    return s


def read_answer(s, timeout=3.0):
    """(status line, headers, body) of the next answer on s; the body as far as its
    Content-Length says (none for a 100 Continue)."""
    s.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("the connection closed before an answer: %r" % buf)
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return lines[0], headers, rest[:length]


def as_response(status_line, headers, body):
    return harness.Response(int(status_line.split()[1]), headers, body, 0.0)


# ---- API keys -----------------------------------------------------------------------

@cases.case
def no_key_is_a_json_401_browsers_can_read(st):
    o = {"Origin": ORIGIN}
    resp = st.request("GET", "/v1/jobs/" + str(uuid.uuid4()), headers=o)
    expect_unauthorized(documented(resp, "GET", "/v1/jobs/{id}"), "GET without a key")
    expect_cors(resp, "401 without a key")
    expose = resp.header("access-control-expose-headers") or ""
    expect("WWW-Authenticate" in expose, "WWW-Authenticate not exposed: %r" % expose)
    expect_unauthorized(documented(st.request("POST", "/v1/jobs", body=WAV, headers={
        "Content-Type": "audio/wav"}), "POST", "/v1/jobs"), "POST without a key")
    expect_unauthorized(documented(st.request("GET", "/v1/stats"), "GET", "/v1/stats"),
                        "stats without a key")
    expect_unauthorized(documented(st.request("GET", "/metrics"), "GET", "/metrics"),
                        "metrics without a key")
    expect(st.request("GET", "/metrics", key="alice").status == 200, "metrics with a key")
    files, jobs = st.nothing_stored()
    expect(not files and not jobs, "a refused POST stored something", files, jobs)


@cases.case
def wrong_key_is_a_json_401(st):
    wrong = secrets.token_hex(32)
    for what, auth in (("an unknown key", "Bearer " + wrong),
                       ("a good key under another scheme", "Basic " + st.keys["bob"]),
                       ("a good key with text after it", "Bearer %s x" % st.keys["bob"]),
                       ("a scheme without a key", "Bearer"),
                       ("an empty header", "")):
        resp = st.request("GET", "/v1/jobs/" + str(uuid.uuid4()),
                          headers={"Authorization": auth, "Origin": ORIGIN})
        expect_unauthorized(resp, what)
        expect_cors(resp, what)
    # the map compares without case: a hex key in capitals is the same key
    upper = st.request("GET", "/v1/jobs/" + str(uuid.uuid4()),
                       headers={"Authorization": "bearer " + st.keys["bob"].upper()})
    expect_json_error(upper, 404, "the key in capitals")


@cases.case
def good_key_submits_and_reads_its_job(st):
    resp = st.submit(key="alice", headers={"Origin": ORIGIN})
    expect_cors(resp, "202")
    job = resp.header("location")
    expect(job and job.endswith(resp.json["id"]), "202 without the job's Location", resp)
    status = st.request("GET", job, key="alice")
    expect(status.status == 200 and status.json["status"] == "queued",
           "status with the key", status)
    expect_unauthorized(st.request("GET", job), "status without the key")
    expect_unauthorized(st.request("DELETE", job), "DELETE without the key")
    expect(st.request("GET", job, key="alice").json["status"] == "queued",
           "the refused DELETE canceled the job")
    return "job %s" % resp.json["id"][:8]


@cases.case
def stem_downloads_need_the_key(st):
    job_id = st.submit(key="bob").json["id"]
    stems = worker_sim.complete_job(st.stack, job_id)
    name = sorted(stems)[0]
    path = "/v1/jobs/%s/stems/%s.wav" % (job_id, name)
    got = st.request("GET", path, key="bob", headers={"Origin": ORIGIN})
    expect(got.status == 200 and got.body == stems[name], "the stem with the key", got)
    expect_cors(got, "stem download")
    expect_unauthorized(documented(st.request("GET", path), "GET",
                                   "/v1/jobs/{id}/stems/{file}"), "the stem without a key")
    resp = st.request("GET", path, headers={"Authorization": "Bearer " + secrets.token_hex(32)})
    expect_unauthorized(resp, "the stem with a wrong key")
    expect(stems[name][:64] not in resp.body, "the refusal carries the stem's bytes")
    head = st.request("HEAD", path)
    expect(head.status == 401 and not head.body, "HEAD of the stem without a key", head)


@cases.case
def preflight_needs_no_key(st):
    seen = st.auth.requests_seen()
    for host in (None, AUTH_HOST):
        resp = st.request("OPTIONS", "/v1/jobs", host=host, headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        what = "preflight on %s" % (host or "the key server")
        expect(resp.status == 204, "%s: %d" % (what, resp.status), resp)
        expect_cors(resp, what)
        allowed = resp.header("access-control-allow-headers") or ""
        expect("Authorization" in allowed, "%s: Authorization not allowed: %r"
               % (what, allowed))
    expect(st.auth.requests_seen() == seen, "the preflight was sent to the auth service")
    # OPTIONS is let through without a key, but it only ever gets the 204
    resp = st.request("OPTIONS", "/v1/jobs/" + str(uuid.uuid4()))
    expect(resp.status == 204 and not resp.body, "OPTIONS on a job without a key", resp)


@cases.case
def rate_limit_is_per_key(st):
    path = "/v1/jobs/" + str(uuid.uuid4())
    statuses, refused = [], None
    for _ in range(KEY_BURST + 6):
        resp = st.request("GET", path, key="limited", headers={"Origin": ORIGIN})
        statuses.append(resp.status)
        if resp.status == 429:
            refused = resp
    passed = statuses.count(404)
    expect(refused is not None, "no 429 for %d requests at once" % len(statuses), statuses)
    expect(KEY_BURST + 1 <= passed <= KEY_BURST + 3 and set(statuses) == {404, 429},
           "expected %d (+ what the rate refills) to pass, the rest 429" % (KEY_BURST + 1),
           statuses)
    err = expect_json_error(documented(refused, "GET", "/v1/jobs/{id}"), 429, "limit_req")
    expect(err["code"] == "too_many_requests", "limit_req: code %r" % err["code"])
    expect(refused.header("retry-after") == "1", "limit_req: Retry-After %r"
           % refused.header("retry-after"))
    expect_cors(refused, "429")
    other = st.request("GET", path, key="unlimited")
    expect(other.status == 404, "another key is limited too", other)
    expect('limiting requests, excess' in st.error_log() and 'zone "sep_key_requests"'
           in st.error_log(), "no limit_req line in the error log")
    # requests without a valid key are refused before the limit counts them
    wrong = {"Authorization": "Bearer " + secrets.token_hex(32)}
    bad = [st.request("GET", path, headers=wrong).status for _ in range(KEY_BURST + 3)]
    expect(set(bad) == {401}, "requests with a wrong key: %s" % bad)
    return "%d passed, %d refused" % (passed, statuses.count(429))


@cases.case
def connection_limit_is_per_key(st):
    job_id = st.submit(key="others").json["id"]
    path = "/v1/jobs/%s/events" % job_id

    def open_stream(name):
        s = socket.create_connection(("127.0.0.1", st.port), timeout=5)
        s.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
                   "Authorization: Bearer %s\r\n\r\n" % (path, st.keys[name])).encode())
        s.settimeout(5)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            expect(chunk, "the event stream closed before its head")
            head += chunk
        expect(head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head,
               "an event stream of %s" % name, head[:200])
        return s

    streams = [open_stream("streams") for _ in range(KEY_CONNS)]
    try:
        refused = st.request("GET", "/v1/jobs/" + job_id, key="streams",
                             headers={"Origin": ORIGIN})
        err = expect_json_error(documented(refused, "GET", "/v1/jobs/{id}"), 429,
                                "a request beyond limit_conn")
        expect(err["code"] == "too_many_requests" and refused.header("retry-after") == "1",
               "limit_conn: code %r, Retry-After %r" % (err["code"],
                                                        refused.header("retry-after")))
        expect_cors(refused, "limit_conn 429")
        expect('limiting connections by zone "sep_key_connections"' in st.error_log(),
               "no limit_conn line in the error log")
        other = st.request("GET", "/v1/jobs/" + job_id, key="others")
        expect(other.status == 200, "another key is limited too", other)
        streams.pop().close()
        deadline = time.monotonic() + 5
        while True:
            again = st.request("GET", "/v1/jobs/" + job_id, key="streams")
            if again.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        expect(again.status == 200, "a stream closed, the key still refused", again)
    finally:
        for s in streams:
            s.close()


# ---- a refused upload is never read -------------------------------------------------

def refused_before_the_body(st, headers, host, what, challenge_realm):
    """A POST declaring BIG bytes with Expect: 100-continue: the first answer is the
    refusal (no 100 Continue), nothing stored; then the same sent slowly without
    Expect: the refusal comes while almost all of it is unsent."""
    st.empty_spool()
    s = open_upload(st.port, dict(headers, Expect="100-continue"), BIG, host)
    try:
        status, hdrs, body = read_answer(s)
    finally:
        s.close()
    resp = as_response(status, hdrs, body)
    expect(not status.startswith("HTTP/1.1 100"), "%s: nginx asked for the body "
           "(100 Continue)" % what, status)
    expect_unauthorized(resp, what + " (Expect: 100-continue)", challenge_realm)

    s = open_upload(st.port, headers, BIG, host)
    sent = sent_before_answer = 0
    try:
        s.sendall(b"RIFF" + b"\0" * (64 * 1024 - 4))
        sent = 64 * 1024
        start = time.monotonic()
        status, hdrs, body = read_answer(s)
        waited = time.monotonic() - start
        sent_before_answer = sent
        files, jobs = st.nothing_stored()
        # what nginx reads after the answer is dropped, never stored
        try:
            for _ in range(16):
                s.sendall(b"\0" * (64 * 1024))
                sent += 64 * 1024
        except OSError:
            pass
    finally:
        s.close()
    expect_unauthorized(as_response(status, hdrs, body), what + " (sent slowly)",
                        challenge_realm)
    expect(waited < 2.0, "%s: the refusal took %.1fs" % (what, waited))
    expect(not files and not jobs, "%s: a refused upload was stored" % what, files, jobs)
    time.sleep(0.3)
    files, jobs = st.nothing_stored()
    expect(not files and not jobs, "%s: a refused upload was stored" % what, files, jobs)
    return "401 after %d KiB of %d MiB sent (%d KiB more dropped)" % (
        sent_before_answer // 1024, BIG >> 20, (sent - sent_before_answer) // 1024)


@cases.case
def bad_key_upload_is_refused_unread(st):
    wrong = {"Authorization": "Bearer " + secrets.token_hex(32)}
    detail = refused_before_the_body(st, wrong, "localhost", "a wrong key", "sep")
    refused_before_the_body(st, {}, "localhost", "no key", "sep")
    # the same request with a good key is asked for its body and accepted
    s = open_upload(st.port, dict(st.key("uploader"), Expect="100-continue"), len(WAV))
    try:
        status, _, _ = read_answer(s)
        expect(status.startswith("HTTP/1.1 100"), "a good key is not asked for the body",
               status)
        s.sendall(WAV)
        status, hdrs, body = read_answer(s)
    finally:
        s.close()
    expect(status.startswith("HTTP/1.1 202"), "the good key's upload", status, body[:200])
    job_id = as_response(status, hdrs, body).json["id"]
    expect(os.path.isdir(st.stack.job_dir(job_id)), "the accepted upload is not in the spool")
    return detail


@cases.case
def oversized_upload_is_413_before_the_key_check(st):
    """nginx compares Content-Length with client_max_body_size when it picks the
    location, before the rewrite and access phases: a body over it is refused 413 whoever
    sends it, unread too (conf/README.md says so)."""
    st.empty_spool()
    s = open_upload(st.port, {"Expect": "100-continue"}, 65 * 1024 * 1024)
    try:
        status, hdrs, body = read_answer(s)
    finally:
        s.close()
    err = expect_json_error(as_response(status, hdrs, body), 413, "an oversized upload "
                            "without a key")
    expect(err["code"] == "body_too_large", "413: code %r" % err["code"])
    files, jobs = st.nothing_stored()
    expect(not files and not jobs, "an oversized upload was stored", files, jobs)


# ---- auth_request -------------------------------------------------------------------

@cases.case
def auth_request_lets_in(st):
    before = st.auth.requests_seen()
    resp = st.submit(host=AUTH_HOST, headers={"Authorization": "Bearer sso-carol",
                                              "Origin": ORIGIN})
    expect_cors(resp, "202 through auth_request")
    job_id = resp.json["id"]
    status = st.request("GET", "/v1/jobs/" + job_id, host=AUTH_HOST,
                        headers={"Authorization": "Bearer sso-carol"})
    expect(status.status == 200 and status.json["status"] == "queued", "status", status)
    with st.auth.lock:
        seen = st.auth.seen[before:]
    expect(len(seen) == 2, "the auth service was asked %d times for 2 requests" % len(seen))
    method, path, headers = seen[0]
    expect(path == "/check" and headers.get("x-original-method") == "POST"
           and headers.get("x-original-uri") == "/v1/jobs",
           "what the auth service was told", seen[0])
    expect(headers.get("authorization") == "Bearer sso-carol", "no Authorization passed on")
    expect(headers.get("content-length") in (None, "0") and "expect" not in headers,
           "the upload's framing passed to the auth service", headers)
    stems = worker_sim.complete_job(st.stack, job_id)
    name = sorted(stems)[0]
    path = "/v1/jobs/%s/stems/%s.wav" % (job_id, name)
    got = st.request("GET", path, host=AUTH_HOST, headers={"Authorization": "Bearer sso-carol"})
    expect(got.status == 200 and got.body == stems[name], "the stem through auth_request", got)
    expect_unauthorized(st.request("GET", path, host=AUTH_HOST), "the stem without "
                        "credentials", "test-sso")


@cases.case
def auth_request_refuses(st):
    path = "/v1/jobs/" + str(uuid.uuid4())
    resp = st.request("GET", path, host=AUTH_HOST, headers={"Origin": ORIGIN})
    expect_unauthorized(resp, "no credentials", "test-sso")
    expect_cors(resp, "the auth service's 401")
    expect(b"login-page" not in resp.body, "the auth service's body passed through", resp)
    resp = st.request("GET", path, host=AUTH_HOST, headers={
        "Authorization": "Bearer sso-forbidden", "Origin": ORIGIN})
    err = expect_json_error(documented(resp, "GET", "/v1/jobs/{id}"), 403,
                            "the auth service's 403")
    expect(err["code"] == "forbidden", "403: code %r" % err["code"])
    expect_cors(resp, "the auth service's 403")
    expect(b"by policy" not in resp.body, "the auth service's body passed through", resp)
    # an API key is no credential there, and the key server's own check does not apply
    resp = st.request("GET", path, host=AUTH_HOST, key="alice")
    expect_unauthorized(resp, "an API key on the auth_request server", "test-sso")
    files, jobs = st.nothing_stored()
    before = len(files)
    refused = st.request("POST", "/v1/jobs", host=AUTH_HOST, body=WAV,
                         headers={"Content-Type": "audio/wav",
                                  "Authorization": "Bearer sso-forbidden"})
    expect_json_error(refused, 403, "a forbidden POST")
    expect(len(st.nothing_stored()[0]) == before, "a forbidden POST stored something")


@cases.case
def denied_auth_request_upload_is_refused_unread(st):
    before = st.auth.requests_seen()
    detail = refused_before_the_body(st, {"Authorization": "Bearer nobody"}, AUTH_HOST,
                                     "a denied auth_request", "test-sso")
    with st.auth.lock:
        seen = st.auth.seen[before:]
    expect(seen and all(h.get("content-length") in (None, "0") for _, _, h in seen),
           "the upload's size reached the auth service", seen)
    return detail


@cases.case
def auth_service_failure_is_a_json_500(st):
    resp = st.request("GET", "/v1/jobs/" + str(uuid.uuid4()), host=AUTH_HOST,
                      headers={"Authorization": "Bearer sso-broken", "Origin": ORIGIN})
    err = expect_json_error(documented(resp, "GET", "/v1/jobs/{id}"), 500,
                            "the auth service's 500")
    expect(err["code"] == "internal_error", "500: code %r" % err["code"])
    expect_cors(resp, "the auth service's 500")
    expect(resp.header("x-auth-secret") is None and b"traceback" not in resp.body,
           "the auth service's answer passed through", resp)


@cases.case
def auth_service_down_is_a_json_500(st):
    port = st.auth.port
    jobs_before = len(st.nothing_stored()[1])
    st.auth.stop()
    try:
        for method, body in (("GET", None), ("POST", WAV)):
            resp = st.request(method, "/v1/jobs" + ("" if body else "/" + str(uuid.uuid4())),
                              host=AUTH_HOST, body=body,
                              headers={"Authorization": "Bearer sso-carol",
                                       "Content-Type": "audio/wav"})
            err = expect_json_error(resp, 500, "%s with the auth service down" % method)
            expect(err["code"] == "internal_error", "auth service down: code %r" % err["code"])
        expect("auth request unexpected status: 502" in st.error_log(),
               "the error log does not say why")
        expect(len(st.nothing_stored()[1]) == jobs_before,
               "a POST got in with the auth service down")
    finally:
        st.auth.start(port)
    resp = st.request("GET", "/v1/jobs/" + str(uuid.uuid4()), host=AUTH_HOST,
                      headers={"Authorization": "Bearer sso-carol"})
    expect_json_error(resp, 404, "the auth service back")


# ---- the sample key file -------------------------------------------------------------

@cases.case
def sample_key_file_loads(st):
    """conf/sep-api-keys.conf, as shipped, is a valid include of the key map."""
    values = dict(st.stack.values, API_KEYS=os.path.join(localstack.CONF_DIR,
                                                          "sep-api-keys.conf"))
    conf = os.path.join(st.stack.prefix, "sample-keys.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(localstack.render_nginx_conf(values, localstack.ACCESS_TEMPLATE))
    localstack.check_nginx_conf(st.stack.prefix, conf)


def main(argv):
    if harness.redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    st = AccessStack()
    harness.install_signal_cleanup(st)
    try:
        st.start()
        return cases.run(st, only=argv[1:])
    finally:
        st.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
