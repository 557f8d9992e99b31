#!/usr/bin/python3
"""Integration suite for the HTTP API: real redis-server + real nginx with the module.

Starts one stack on a temporary prefix and free loopback ports (tests/integration/
harness.py), runs every case in order, prints one line per case and `PASS: N cases`,
and exits non-zero when any case failed. Servers and the prefix are removed even on
failure or Ctrl-C (SEP_TEST_KEEP=1 keeps the prefix for a post-mortem).

    /usr/bin/python3 tests/integration/test_http_api.py [case-name-substring ...]

Jobs are completed the way workerd completes them: stems are written into the spool
layout the module documents and the `complete` Lua script (shared/lua/complete.lua)
is run with EVAL.
"""

import os
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import expect, expect_json_error  # noqa: E402

MAX_BODY = 1024 * 1024  # client_max_body_size of the test server (1m)
MAX_QUEUED = 40  # sep_max_queued of the test server
Q_NORMAL = b"{sep}:q:normal"
Q_HIGH = b"{sep}:q:high"
WAV = harness.wav_bytes()

cases = harness.Cases()


# helpers ---------------------------------------------------------------------------------
def submit(stack, query="", body=WAV, ctype="audio/wav", headers=None):
    hdrs = {"Content-Type": ctype}
    hdrs.update(headers or {})
    path = "/v1/jobs" + (("?" + query) if query else "")
    return stack.request("POST", path, body=body, headers=hdrs)


def expect_accepted(resp):
    """A 202 with Location and a queued job record; returns the job id."""
    expect(resp.status == 202, "expected 202, got %d" % resp.status, resp)
    expect(isinstance(resp.json, dict), "expected a JSON job record", resp)
    job_id = resp.json.get("id")
    expect(isinstance(job_id, str), "job record without id", resp)
    expect(str(uuid.UUID(job_id)) == job_id and uuid.UUID(job_id).version == 4,
           "job id is not a UUIDv4 text: %r" % job_id)
    expect(resp.json.get("status") == "queued", "expected status queued", resp)
    location = resp.header("location") or ""
    expect(location == "/v1/jobs/" + job_id,
           "Location should be /v1/jobs/%s (relative), got %r" % (job_id, location))
    return job_id


def queued_count(stack):
    return stack.redis.xlen(Q_NORMAL) + stack.redis.xlen(Q_HIGH)


def no_new_spool_files(stack, before, what):
    """Nothing new in the spool, checked as soon as the answer is in (no grace period):
    the module removes what a refused upload put in {spool}/{id}/ before it answers."""
    left = set(stack.spool_files()) - before
    expect(not left, "%s left files in the spool: %s" % (what, sorted(left)))


# submissions -----------------------------------------------------------------------------
@cases.case
def submit_raw_wav(stack):
    resp = submit(stack)
    job_id = expect_accepted(resp)
    expect((resp.header("content-type") or "").startswith("application/json"),
           "202 should be application/json", resp)
    files = stack.spool_files(job_id)
    expect(files, "no spool file for job %s" % job_id)
    upload = os.path.join(stack.job_dir(job_id), "input.wav")
    expect(os.path.isfile(upload), "no %s" % upload, files)
    with open(upload, "rb") as f:
        expect(f.read() == WAV, "the spooled upload differs from the uploaded bytes")
    expect(job_id in stack.stream_job_ids(Q_NORMAL), "job not in %s" % Q_NORMAL.decode())
    expect(job_id not in stack.stream_job_ids(Q_HIGH), "normal job also in {sep}:q:high")
    expect(stack.redis.exists(b"{sep}:job:" + job_id.encode()), "no {sep}:job:{id} hash")


@cases.case
def submit_octet_stream(stack):
    job_id = expect_accepted(submit(stack, ctype="application/octet-stream"))
    upload = os.path.join(stack.job_dir(job_id), "input.wav")
    expect(os.path.isfile(upload), "no %s" % upload, stack.spool_files(job_id))
    expect(job_id in stack.stream_job_ids(Q_NORMAL), "job not in {sep}:q:normal")


@cases.case
def submit_priority_high(stack):
    job_id = expect_accepted(submit(stack, "priority=high"))
    expect(job_id in stack.stream_job_ids(Q_HIGH), "priority=high job not in {sep}:q:high")
    expect(job_id not in stack.stream_job_ids(Q_NORMAL), "priority=high job in {sep}:q:normal")


@cases.case
def submit_options_in_query(stack):
    resp = submit(stack, "model=htdemucs_6s&stems=guitar&format=flac&shifts=2&overlap=0.5")
    job_id = expect_accepted(resp)
    rec = stack.request("GET", "/v1/jobs/" + job_id).json
    want = {"model": "htdemucs_6s", "stems": "guitar", "format": "flac",
            "priority": "normal", "shifts": 2, "overlap": 0.5}
    expect(rec.get("options") == want, "options in the record", rec.get("options"), want)


@cases.case
def submit_multipart(stack):
    body, ctype = harness.multipart(
        [("model", "htdemucs"), ("stems", "vocals"), ("format", "wav24"), ("priority", "high")],
        [("file", "song.wav", "audio/wav", WAV)])
    resp = submit(stack, body=body, ctype=ctype)
    job_id = expect_accepted(resp)
    upload = [p for p in stack.spool_files(job_id) if os.path.isfile(p)]
    expect(len(upload) == 1, "expected one spooled input for the multipart job", upload)
    with open(upload[0], "rb") as f:
        expect(f.read() == WAV, "the spooled multipart file part differs from the upload")
    expect(job_id in stack.stream_job_ids(Q_HIGH), "multipart priority=high not in {sep}:q:high")
    rec = stack.request("GET", "/v1/jobs/" + job_id).json
    want = {"model": "htdemucs", "stems": "vocals", "format": "wav24", "priority": "high",
            "shifts": 1, "overlap": 0.25}
    expect(rec.get("options") == want, "multipart options in the record", rec.get("options"),
           want)


@cases.case
def submit_sniffed_types(stack):
    """The spooled input is named after the sniffed type, whatever the Content-Type says."""
    flac = b"fLaC" + bytes([0x80, 0, 0, 34]) + bytes(34) + bytes(2000)
    mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(2000)
    for body, ctype, ext in ((flac, "audio/flac", "flac"), (mp3, "audio/mpeg", "mp3"),
                             (flac, "application/octet-stream", "flac")):
        job_id = expect_accepted(submit(stack, body=body, ctype=ctype))
        path = os.path.join(stack.job_dir(job_id), "input." + ext)
        expect(os.path.isfile(path), "%s upload not spooled as %s" % (ctype, path),
               stack.spool_files(job_id))


@cases.case
def submit_chunked_and_no_length(stack):
    """A chunked upload is accepted; a POST with no length at all is 411."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    try:
        chunks = [WAV[i:i + 4096] for i in range(0, len(WAV), 4096)]
        conn.request("POST", "/v1/jobs", body=iter(chunks), encode_chunked=True,
                     headers={"Content-Type": "audio/wav", "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        got = harness.Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                               resp.read(), 0.0)
    finally:
        conn.close()
    job_id = expect_accepted(got)
    with open(os.path.join(stack.job_dir(job_id), "input.wav"), "rb") as f:
        expect(f.read() == WAV, "the chunked upload was spooled wrongly")
    before = set(stack.spool_files())
    raw = harness.raw_request(stack.port, b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\n"
                                          b"Content-Type: audio/wav\r\nConnection: close\r\n\r\n")
    expect_json_error(raw, 411, "POST without Content-Length or chunked body")
    no_new_spool_files(stack, before, "a 411")


@cases.case
def idempotency_key_same_job(stack):
    key = "it-" + uuid.uuid4().hex
    before = stack.redis.xlen(Q_NORMAL)
    first = expect_accepted(submit(stack, headers={"Idempotency-Key": key}))
    again = submit(stack, headers={"Idempotency-Key": key})
    expect(again.status in (200, 202), "repeat with the same key: got %d" % again.status, again)
    expect(isinstance(again.json, dict) and again.json.get("id") == first,
           "repeat with the same Idempotency-Key gave another job", again)
    expect(stack.redis.xlen(Q_NORMAL) == before + 1,
           "expected exactly one new stream entry, got %d" % (stack.redis.xlen(Q_NORMAL) - before))
    other = expect_accepted(submit(stack, headers={"Idempotency-Key": key + "-other"}))
    expect(other != first, "a different key must give a different job")


# status ----------------------------------------------------------------------------------
@cases.case
def get_status(stack):
    job_id = expect_accepted(submit(stack))
    resp = stack.request("GET", "/v1/jobs/" + job_id)
    expect(resp.status == 200, "expected 200, got %d" % resp.status, resp)
    expect((resp.header("content-type") or "").startswith("application/json"),
           "status should be application/json", resp)
    rec = resp.json
    expect(rec.get("id") == job_id and rec.get("status") == "queued", "bad record", rec)
    expect("progress" in rec and "created_at" in rec, "record lacks progress/created_at", rec)


@cases.case
def get_unknown_and_malformed_ids(stack):
    expect_json_error(stack.request("GET", "/v1/jobs/" + str(uuid.uuid4())), 404, "unknown id")
    for bad in ("not-a-uuid", "1234", "%2e%2e", "00000000-0000-4000-8000-00000000000g",
                "x" * 300):
        expect_json_error(stack.request("GET", "/v1/jobs/" + bad), 404, "malformed id " + bad)


# refused submissions ---------------------------------------------------------------------
@cases.case
def bad_options_400(stack):
    before = set(stack.spool_files())
    queued = queued_count(stack)
    for query in ("model=nope", "stems=guitar", "model=htdemucs&stems=nope", "format=mp4",
                  "shifts=-1", "shifts=abc", "shifts=1000", "overlap=1.5", "overlap=-0.1",
                  "overlap=x", "priority=urgent"):
        expect_json_error(submit(stack, query), 400, query)
    expect(queued_count(stack) == queued, "a refused submission was queued")
    no_new_spool_files(stack, before, "refused submissions")


@cases.case
def multipart_refusals_leave_no_job_dir(stack):
    """Multipart bodies are refused only after {spool}/{id}/ exists (the file part
    streams into it): each refusal must have removed it by the time it is answered."""
    before = set(stack.spool_files())
    queued = queued_count(stack)
    wav_part = ("file", "a.wav", "audio/wav", WAV)
    refusals = [
        ("without file", 400, [("model", "htdemucs")], []),
        ("model=nope", 400, [("model", "nope")], [wav_part]),
        ("stems=nope", 400, [("stems", "nope")], [wav_part]),
        ("two file parts", 400, [], [wav_part, wav_part]),
        ("empty file part", 400, [], [("file", "a.wav", "audio/wav", b"")]),
        ("text file part", 415, [], [("file", "a.txt", "text/plain", b"not audio\n" * 40)]),
    ]
    for what, status, fields, files in refusals * 3:
        body, ctype = harness.multipart(fields, files)
        expect_json_error(submit(stack, body=body, ctype=ctype), status, "multipart " + what)
        no_new_spool_files(stack, before, "a multipart POST refused (%s)" % what)
    body, ctype = harness.multipart([], [wav_part])
    expect_json_error(submit(stack, body=body[:len(body) // 2], ctype=ctype), 400,
                      "truncated multipart")
    no_new_spool_files(stack, before, "a truncated multipart POST")
    expect(queued_count(stack) == queued, "a refused multipart submission was queued")


@cases.case
def body_too_large_413(stack):
    before = set(stack.spool_files())
    big = WAV + bytes(MAX_BODY + 4096)
    expect_json_error(submit(stack, body=big), 413, "body over client_max_body_size")
    no_new_spool_files(stack, before, "a 413")


@cases.case
def unsupported_media_415(stack):
    before = set(stack.spool_files())
    expect_json_error(submit(stack, body=b"hello, this is text\n" * 20, ctype="text/plain"),
                      415, "text/plain body")
    expect_json_error(submit(stack, body=b"\x00\x01\x02\x03 not audio" * 50,
                             ctype="application/octet-stream"), 415, "unknown magic")
    no_new_spool_files(stack, before, "415s")


@cases.case
def wrong_method_405(stack):
    # /v1/openapi.json is a static file in a sep_api location: its other methods too
    for method, path in (("PUT", "/v1/jobs"), ("PATCH", "/v1/jobs"),
                         ("POST", "/v1/jobs/" + str(uuid.uuid4())),
                         ("PUT", "/v1/jobs/" + str(uuid.uuid4())),
                         ("POST", "/v1/openapi.json"), ("DELETE", "/v1/openapi.json")):
        resp = stack.request(method, path, body=b"x")
        expect_json_error(resp, 405, method + " " + path)
        # Allow lists what OPTIONS on the path lists, OPTIONS included
        options = stack.request("OPTIONS", path)
        expect(resp.header("allow") and resp.header("allow") == options.header("allow") and
               "OPTIONS" in resp.header("allow"), "Allow of %s %s: %r vs OPTIONS %r"
               % (method, path, resp.header("allow"), options.header("allow")))
    doc = stack.request("GET", "/v1/openapi.json")
    expect(doc.status == 200 and isinstance(doc.json, dict) and "paths" in doc.json,
           "GET /v1/openapi.json still serves the document", doc)
    head = stack.request("HEAD", "/v1/openapi.json")
    expect(head.status == 200 and head.body == b"", "HEAD /v1/openapi.json", head)


# nginx's own errors while it reads the request head --------------------------------------
HEAD = "Host: t\r\nConnection: close\r\n"


def head_error(stack, request):
    return harness.raw_request(stack.port, request.encode("latin-1"))


def head_error_requests(path):
    """Requests nginx refuses itself, before it chooses a location, for `path`:
    (what, request, status nginx sends)."""
    return (
        ("malformed header", "GET %s HTTP/1.1\r\n%sBad Header\r\n\r\n" % (path, HEAD), 400),
        ("control byte in a header name",
         "GET %s HTTP/1.1\r\n%sBad\x01: y\r\n\r\n" % (path, HEAD), 400),
        ("header over large_client_header_buffers",
         "GET %s HTTP/1.1\r\n%sAuthorization: Bearer %s\r\n\r\n" % (path, HEAD, "a" * 9000), 400),
        ("request line over large_client_header_buffers",
         "GET %s%s HTTP/1.1\r\n%s\r\n" % (path, "a" * 20000, HEAD), 414),
        ("HTTP/1.1 without Host", "GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % path, 400),
        ("bad Content-Length",
         "POST %s HTTP/1.1\r\n%sContent-Length: x\r\n\r\n" % (path, HEAD), 400),
        ("unknown Transfer-Encoding",
         "POST %s HTTP/1.1\r\n%sTransfer-Encoding: gzip\r\n\r\n" % (path, HEAD), 501),
        ("HTTP/2.0 over HTTP/1", "GET %s HTTP/2.0\r\n%s\r\n" % (path, HEAD), 505),
    )


@cases.case
def head_errors_are_json_under_the_api(stack):
    """What nginx refuses while it reads the request head (before any location, so
    before sep_api applies) is the API's JSON error under /v1/ and /metrics."""
    codes = {"malformed header": "bad_request", "control byte in a header name": "bad_request",
             "header over large_client_header_buffers": "header_too_large",
             "request line over large_client_header_buffers": "uri_too_long",
             "HTTP/1.1 without Host": "bad_request", "bad Content-Length": "bad_request",
             "unknown Transfer-Encoding": "not_implemented",
             "HTTP/2.0 over HTTP/1": "http_version_not_supported"}
    seen = 0
    for path in ("/v1/jobs/x", "/v1/jobs", "/metrics"):
        for what, req, status in head_error_requests(path):
            if path == "/metrics" and status == 414:
                continue  # /metricsaaa... is no API path (the location is `= /metrics`)
            resp = head_error(stack, req)
            err = expect_json_error(resp, status, "%s on %s" % (what, path))
            expect(err["code"] == codes[what], "%s on %s: code %r, expected %r"
                   % (what, path, err["code"], codes[what]), resp)
            expect(resp.header("content-type") == "application/json; charset=utf-8",
                   "%s on %s: Content-Type %r" % (what, path, resp.header("content-type")))
            expect(int(resp.header("content-length")) == len(resp.body),
                   "%s on %s: Content-Length %s for %d bytes"
                   % (what, path, resp.header("content-length"), len(resp.body)))
            seen += 1
    return "%d answers" % seen


@cases.case
def trace_gets_the_routes_allow(stack):
    """nginx refuses TRACE (and CONNECT) itself, before any location: under the API the
    answer is the route's 405 with Allow (what OPTIONS lists), or 404 on no route."""
    job = "/v1/jobs/" + str(uuid.uuid4())
    for path in ("/v1/jobs", job, job + "/events", job + "/stems/vocals.wav", "/v1/stats",
                 "/metrics", "/v1/openapi.json"):
        resp = head_error(stack, "TRACE %s HTTP/1.1\r\n%s\r\n" % (path, HEAD))
        err = expect_json_error(resp, 405, "TRACE " + path)
        expect(err["code"] == "method_not_allowed", "TRACE %s: %r" % (path, err))
        options = stack.request("OPTIONS", path)
        expect(resp.header("allow") and resp.header("allow") == options.header("allow"),
               "TRACE %s: Allow %r, OPTIONS lists %r" % (path, resp.header("allow"),
                                                         options.header("allow")))
    resp = head_error(stack, "TRACE /v1/nothing-here HTTP/1.1\r\n%s\r\n" % HEAD)
    err = expect_json_error(resp, 404, "TRACE on no route")
    expect(err["code"] == "not_found", "TRACE on no route: %r" % err)


@cases.case
def head_errors_outside_the_api_stay_nginx_pages(stack):
    """The same refusals outside the API (/, /ui/), and
    under /v1/ where nginx could not establish the URI (a request line it cannot parse,
    a URI it cannot decode, a URI too long whose read part has a %-escape), keep nginx's
    own HTML pages: nothing is guessed."""
    seen = 0
    for path in ("/", "/ui/player.html"):
        for what, req, status in head_error_requests(path) + (
                ("TRACE", "TRACE %s HTTP/1.1\r\n%s\r\n" % (path, HEAD), 405),):
            resp = head_error(stack, req)
            expect(resp.status == status and "text/html" in (resp.header("content-type") or ""),
                   "%s on %s: expected nginx's %d page" % (what, path, status), resp)
            seen += 1
    for what, req in (
            ("request line nginx cannot parse", "GET /v1/jobs/x HTTP/1.1 x\r\n%s\r\n" % HEAD),
            ("bad %-escape", "GET /v1/jobs/%%zz HTTP/1.1\r\n%s\r\n" % HEAD),
            ("dot segments above the root", "GET /v1/../../x HTTP/1.1\r\n%s\r\n" % HEAD),
            ("URI too long, %-escape in its start",
             "GET /v1/jobs/%%61%s HTTP/1.1\r\n%s\r\n" % ("a" * 20000, HEAD))):
        resp = head_error(stack, req)
        expect(resp.status in (400, 414) and "text/html" in (resp.header("content-type") or ""),
               "%s: expected nginx's own page" % what, resp)
        seen += 1
    return "%d answers" % seen


@cases.case
def head_errors_follow_nginxs_location_choice(_):
    """Whether a refusal before any location is the API's is decided by the location nginx
    would choose: a regular expression location that wins over the `/v1/` prefix keeps
    nginx's page, the API's paths beside it get JSON."""
    def edit(text):
        return text.replace("        location /ui/ {",
                            "        location ~ ^/v1/docs/ {\n"
                            "            return 200 \"docs\\n\";\n"
                            "        }\n\n"
                            "        location /ui/ {", 1)
    other = harness.Stack(worker_processes=1, conf_edit=edit).start()
    try:
        docs = head_error(other, "GET /v1/docs/x HTTP/1.1\r\n%sBad Header\r\n\r\n" % HEAD)
        expect(docs.status == 400 and "text/html" in (docs.header("content-type") or ""),
               "a regex location's refusal: nginx's page", docs)
        ok = other.request("GET", "/v1/docs/x")
        expect(ok.status == 200 and ok.body == b"docs\n", "the regex location serves", ok)
        api = head_error(other, "GET /v1/jobs/x HTTP/1.1\r\n%sBad Header\r\n\r\n" % HEAD)
        err = expect_json_error(api, 400, "an API path beside it")
        expect(err["code"] == "bad_request", "an API path beside it: %r" % err)
    finally:
        other.stop()



def with_locations(locations, server=""):
    """A conf_edit: `locations` (and server-level directives `server`) put in the API's
    server before its /ui/ location; CORS on for every origin."""
    def edit(text):
        text = text.replace("sep_cors_origins off;", "sep_cors_origins *;", 1)
        return text.replace("        location /ui/ {",
                            server + locations + "        location /ui/ {", 1)
    return edit


def is_nginx_page(resp, status):
    return resp.status == status and "text/html" in (resp.header("content-type") or "")


def head_error_in_pieces(stack, data, piece):
    """The request sent `piece` bytes a write (nginx reads it in as many pieces and moves
    what it read of the request line to a larger buffer), the answer read to the end."""
    s = harness.socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    try:
        s.setsockopt(harness.socket.IPPROTO_TCP, harness.socket.TCP_NODELAY, 1)
        for i in range(0, len(data), piece):
            s.sendall(data[i:i + piece])
            time.sleep(0.0005)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((name.strip().lower(), value.strip()) for name, _, value in
                   (line.partition(":") for line in lines[1:]))
    return harness.Response(int(lines[0].split()[1]), headers, body, 0.0)


@cases.case
def head_errors_follow_a_tree_of_locations(_):
    """The location nginx would choose, through nested, `^~`, `=`, `~` and `~*`
    locations, a sep_api location inside another that has none, a second server by Host,
    decides JSON or nginx's page, and its CORS headers; a second pipelined request that
    errs, and a request line moved to a larger buffer as it arrives, are judged alike.
    A 405 of the server's own `return` is the API's plain 405: no Allow that would list
    the very method refused (that is for TRACE and CONNECT, which nginx refuses)."""
    locations = (
        "        location ^~ /v1/files/ { return 200 \"files\\n\"; }\n"
        "        location = /v1/exact { return 200 \"exact\\n\"; }\n"
        "        location ~* ^/v1/CI/ { return 200 \"ci\\n\"; }\n"
        "        location /site/ {\n"
        "            return 200 \"site\\n\";\n"
        "            location /site/api/ { sep_api; }\n"
        "        }\n"
        "        location ~ ^/rx/ {\n"
        "            return 200 \"rx\\n\";\n"
        "            location ~ ^/rx/api/ { sep_api; }\n"
        "        }\n")
    other = ("    server {\n        listen 127.0.0.1:%d;\n        server_name other;\n"
             "        location /v1/ { return 200 \"other\\n\"; }\n    }\n")

    def edit(text):
        text = with_locations(locations,
                              server="        if ($arg_refuse) { return 405; }\n")(text)
        port = int(text.split("listen 127.0.0.1:", 1)[1].split(";", 1)[0])
        end = text.rindex("}")
        return text[:end] + other % port + text[end:]

    tree = harness.Stack(worker_processes=1, conf_edit=edit).start()
    try:
        bad = "GET %s HTTP/1.1\r\nHost: %s\r\nOrigin: http://o.example\r\n" \
              "Connection: close\r\nBad Header\r\n\r\n"
        for path, host, api in (("/v1/jobs/x", "t", True), ("/v1/files/x", "t", False),
                                ("/v1/exact", "t", False), ("/v1/exac", "t", True),
                                ("/v1/exactx", "t", True), ("/V1/ci/x", "t", False),
                                ("/v1/ci/x", "t", False), ("/site/x", "t", False),
                                ("/site/api/x", "t", True), ("/rx/x", "t", False),
                                ("/rx/api/x", "t", True), ("/v1", "t", False),
                                ("/v1/%66iles/x", "t", False), ("/v1//jobs/x", "t", True),
                                ("/v1/./jobs/x", "t", True), ("/v1/jobs/x", "other", False)):
            resp = head_error(tree, bad % (path, host))
            what = "a malformed header on %s (Host %s)" % (path, host)
            if api:
                expect(expect_json_error(resp, 400, what)["code"] == "bad_request", what, resp)
                expect(resp.header("access-control-allow-origin") == "*",
                       "%s: the location's CORS" % what, resp.headers)
            else:
                expect(is_nginx_page(resp, 400) and
                       resp.header("access-control-allow-origin") is None,
                       "%s: nginx's page, no CORS" % what, resp)
        pipelined = harness.raw_request(tree.port, (
            "GET /v1/files/x HTTP/1.1\r\nHost: t\r\n\r\n"
            "GET /v1/jobs/x HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n").encode())
        expect(pipelined.status == 200 and b"bad_request" in pipelined.body
               and b"<html>" not in pipelined.body,
               "a pipelined second request with a malformed header: JSON", pipelined)
        for piece in (97, 700):
            resp = head_error_in_pieces(tree, ("GET /v1/jobs/%s HTTP/1.1\r\nHost: t\r\n\r\n"
                                               % ("a" * 9000)).encode(), piece)
            expect(expect_json_error(resp, 414, "414 in %d-byte pieces" % piece)["code"]
                   == "uri_too_long", "414 in %d-byte pieces" % piece, resp)
            resp = head_error_in_pieces(tree, ("GET /v1/jobs/%s HTTP/2.0\r\nHost: t\r\n\r\n"
                                               % ("b" * 3000)).encode(), piece)
            expect(expect_json_error(resp, 505, "505 in %d-byte pieces" % piece)["code"]
                   == "http_version_not_supported", "505 in %d-byte pieces" % piece, resp)
            resp = head_error_in_pieces(tree, ("GET /v1/files/%s HTTP/1.1\r\nHost: t\r\n\r\n"
                                               % ("c" * 9000)).encode(), piece)
            expect(is_nginx_page(resp, 414), "414 under ^~ /v1/files/: nginx's page", resp)
        refused = tree.request("GET", "/v1/stats?refuse=1")
        err = expect_json_error(refused, 405, "the server's `return 405` on GET /v1/stats")
        expect(err["code"] == "method_not_allowed" and "GET" not in err["message"]
               and "GET" not in (refused.header("allow") or ""),
               "the server's `return 405`: no Allow listing GET", refused)
        expect("exited on signal" not in open(tree.values["ERROR_LOG"]).read(),
               "a worker crashed", tree.error_log_tail())
    finally:
        tree.stop()


@cases.case
def head_errors_of_a_long_uri_need_a_start_that_decides(_):
    """A request line over the header buffers (414) is judged by the start of its URI as
    far as nginx read it only where that start decides the location: a regular
    expression location that could take the rest (`~* \\.css$` is not anchored), or a
    location whose name goes on from the start read, leave nginx's page; an anchored one
    that cannot match rules itself out; a URI whose path ended (`?...`) is whole."""
    long_name = "/v1/long/" + "z" * 200 + "/"  # longer than the header buffers below
    anchored = harness.Stack(worker_processes=1, conf_edit=with_locations(
        "        location ~ ^/v1/docs/ { return 200 \"docs\\n\"; }\n"
        "        location ^~ %s { return 200 \"long\\n\"; }\n" % long_name,
        server="        client_header_buffer_size 64;\n        connection_pool_size 128;\n"
               "        large_client_header_buffers 4 128;\n")).start()
    unanchored = None
    try:
        def long_uri(stack, path):
            return head_error(stack, "GET %s HTTP/1.1\r\n%s\r\n" % (path, HEAD))
        fill = "a" * 300
        for path in ("/v1/jobs/" + fill, "/v1/jobs?pad=" + fill, "/v1/long/" + fill):
            err = expect_json_error(long_uri(anchored, path), 414, "414 of " + path[:20])
            expect(err["code"] == "uri_too_long", "414 of %s: %r" % (path[:20], err))
        for path in ("/v1/docs/" + fill, long_name + fill):
            resp = long_uri(anchored, path)
            expect(is_nginx_page(resp, 414), "414 of %s...: nginx's page" % path[:20], resp)
        unanchored = harness.Stack(worker_processes=1, conf_edit=with_locations(
            "        location ~* \\.(css|js)$ { return 200 \"asset\\n\"; }\n")).start()
        fill = "a" * 9000
        for path in ("/v1/jobs/" + fill + ".css", "/v1/jobs/" + fill):
            resp = long_uri(unanchored, path)
            expect(is_nginx_page(resp, 414), "414 of %s... beside `~* \\.(css|js)$`: "
                   "nginx's page" % path[:20], resp)
        err = expect_json_error(long_uri(unanchored, "/v1/jobs?pad=" + fill), 414,
                                "414 of a whole path, arguments too long")
        expect(err["code"] == "uri_too_long", "414 of a whole path: %r" % err)
        resp = head_error(unanchored, "GET /v1/x.css HTTP/1.1\r\n%sBad Header\r\n\r\n" % HEAD)
        expect(is_nginx_page(resp, 400), "a malformed header on /v1/x.css: nginx's page", resp)
    finally:
        anchored.stop()
        if unanchored:
            unanchored.stop()


# cancel ----------------------------------------------------------------------------------
@cases.case
def delete_queued_job(stack):
    job_id = expect_accepted(submit(stack))
    expect(job_id in stack.stream_job_ids(Q_NORMAL), "job not queued")
    resp = stack.request("DELETE", "/v1/jobs/" + job_id)
    expect(resp.status in (200, 202), "DELETE: expected 200/202, got %d" % resp.status, resp)
    expect(isinstance(resp.json, dict) and resp.json.get("status") == "canceled",
           "DELETE should answer the canceled record", resp)
    rec = stack.request("GET", "/v1/jobs/" + job_id).json
    expect(rec and rec.get("status") == "canceled", "status after DELETE", rec)
    expect(job_id not in stack.stream_job_ids(Q_NORMAL), "canceled job still in the queue")
    expect(not stack.spool_files(job_id), "canceled job's spool files are still there",
           stack.spool_files(job_id))
    expect_json_error(stack.request("DELETE", "/v1/jobs/" + str(uuid.uuid4())), 404,
                      "DELETE unknown id")


@cases.case
def delete_running_job(stack):
    """A running job: DELETE asks its worker to stop (202); when its worker is gone
    (the claim was not renewed), DELETE cancels it at once (200) and removes its files."""
    import worker_sim  # noqa: E402

    job_id = expect_accepted(submit(stack))
    claimed = worker_sim.claim(stack.redis, job_id)
    expect(claimed is not None, "claim refused")
    resp = stack.request("DELETE", "/v1/jobs/" + job_id)
    expect(resp.status == 202 and resp.json.get("status") == "running",
           "DELETE of a live running job: expected 202 running", resp)
    expect(stack.spool_files(job_id), "a live job's files were deleted")
    # the worker learns it and stops: fail with code canceled
    expect(worker_sim.fail(stack.redis, job_id, claimed[0]) == [b"canceled"], "fail canceled")

    job_id = expect_accepted(submit(stack))
    expect(worker_sim.claim(stack.redis, job_id, visibility_ms=1) is not None, "claim refused")
    time.sleep(0.01)
    resp = stack.request("DELETE", "/v1/jobs/" + job_id)
    expect(resp.status == 200 and resp.json.get("status") == "canceled",
           "DELETE of a job whose worker is gone: expected 200 canceled", resp)
    expect(not stack.spool_files(job_id), "its spool files are still there",
           stack.spool_files(job_id))


# stems -----------------------------------------------------------------------------------
@cases.case
def stem_download(stack):
    import worker_sim  # noqa: E402  (tests/integration/worker_sim.py)

    job_id = expect_accepted(submit(stack))
    stems = worker_sim.complete_job(stack, job_id)
    rec = stack.request("GET", "/v1/jobs/" + job_id).json
    expect(rec and rec.get("status") == "completed", "job not completed", rec)
    listed = rec.get("stems") or {}
    expect(set(listed) == set(stems), "record stems %s != written %s" % (sorted(listed),
                                                                          sorted(stems)), rec)
    for name, data in stems.items():
        url = listed[name].get("url") if isinstance(listed[name], dict) else None
        expect(url and url.endswith("/v1/jobs/%s/stems/%s.wav" % (job_id, name)),
               "stem url for %s: %r" % (name, url), rec)
        expect(listed[name].get("bytes") == len(data), "stem %s bytes in the record" % name,
               listed[name])
        path = url[url.index("/v1/"):]
        full = stack.request("GET", path)
        expect(full.status == 200, "GET %s: %d" % (path, full.status), full)
        expect(full.body == data, "GET %s: wrong bytes (%d vs %d)" % (path, len(full.body),
                                                                      len(data)))
        etag = full.header("etag")
        expect(etag, "GET %s: no ETag" % path, full.headers)
        part = stack.request("GET", path, headers={"Range": "bytes=100-1123"})
        expect(part.status == 206, "Range: expected 206, got %d" % part.status, part)
        expect(part.body == data[100:1124], "Range: wrong slice")
        expect((part.header("content-range") or "") == "bytes 100-1123/%d" % len(data),
               "Content-Range: %r" % part.header("content-range"))
        cond = stack.request("GET", path, headers={"If-None-Match": etag})
        expect(cond.status == 304, "If-None-Match with the ETag: expected 304, got %d"
               % cond.status, cond)
    # A stem the model does not have, and an extension that does not match.
    for bad in ("guitar.wav", "vocals.flac", "vocals", "VOCALS.wav"):
        expect_json_error(stack.request("GET", "/v1/jobs/%s/stems/%s" % (job_id, bad)), 404,
                          "stem " + bad)
    # A stem of a job that is not finished.
    queued = expect_accepted(submit(stack))
    expect_json_error(stack.request("GET", "/v1/jobs/%s/stems/vocals.wav" % queued), 404,
                      "stem of a queued job")


@cases.case
def stem_path_tricks(stack):
    import worker_sim  # noqa: E402

    job_id = expect_accepted(submit(stack))
    worker_sim.complete_job(stack, job_id)
    secret = os.path.join(stack.prefix, "secret.wav")
    with open(secret, "wb") as f:
        f.write(b"RIFF-secret-outside-the-spool")
    tricks = [
        "../../../secret.wav", "..%2F..%2F..%2Fsecret.wav", "%2e%2e/%2e%2e/secret.wav",
        "..%252F..%252Fsecret.wav", "vocals.wav/../../../../secret.wav",
        "..\\..\\secret.wav", "vocals.wav%00.wav", "/etc/passwd", "%2Fetc%2Fpasswd",
        "....//....//secret.wav", "input.wav", "../input.wav", ".wav", "vocals..wav",
    ]
    for trick in tricks:
        resp = stack.request("GET", "/v1/jobs/%s/stems/%s" % (job_id, trick))
        expect(b"secret-outside" not in resp.body and b"root:" not in resp.body
               and WAV not in resp.body,
               "path trick %r served a file that is not a stem" % trick, resp)
        expect(resp.status in (400, 404), "path trick %r: expected 400/404, got %d"
               % (trick, resp.status), resp)
    # The internal location does not answer clients directly.
    for path in ("/_sep_stems/", "/_sep_stems/%s/vocals.wav" % job_id,
                 "/_sep_stems/%s/input.wav" % job_id, "/_sep_stems/../secret.wav"):
        resp = stack.request("GET", path)
        expect(resp.status in (400, 404), "internal location %s answered %d"
               % (path, resp.status), resp)


@cases.case
def stem_errors_after_redirect_are_json(stack):
    """Errors nginx itself makes after the internal redirect to the stems location (a stem
    listed in the record but gone from disk, an unsatisfiable Range) are the API's JSON."""
    import worker_sim  # noqa: E402

    job_id = expect_accepted(submit(stack))
    stems = worker_sim.complete_job(stack, job_id)
    names = sorted(stems)
    gone, kept = names[0], names[1]
    os.unlink(os.path.join(stack.job_dir(job_id), gone + ".wav"))
    err = expect_json_error(stack.request("GET", "/v1/jobs/%s/stems/%s.wav" % (job_id, gone)),
                            404, "stem listed but missing on disk")
    size = len(stems[kept])
    path = "/v1/jobs/%s/stems/%s.wav" % (job_id, kept)
    resp = stack.request("GET", path, headers={"Range": "bytes=%d-" % (size + 100)})
    expect_json_error(resp, 416, "Range past the end")
    expect((resp.header("content-range") or "") == "bytes */%d" % size,
           "416 Content-Range: %r" % resp.header("content-range"), resp)
    head = stack.request("HEAD", "/v1/jobs/%s/stems/%s.wav" % (job_id, gone))
    expect(head.status == 404 and not head.body, "HEAD of a missing stem: %d, %d bytes"
           % (head.status, len(head.body)), head)
    # The stem that is there is still served whole and as a range.
    expect(stack.request("GET", path).body == stems[kept], "stem bytes after the errors")
    part = stack.request("GET", path, headers={"Range": "bytes=0-9"})
    expect(part.status == 206 and part.body == stems[kept][:10], "Range 0-9", part)
    return "missing stem: 404 %s; Range past the end: 416 JSON" % err["code"]


@cases.case
def location_is_relative_whatever_the_host(stack):
    """Location is /v1/jobs/{id}: not made absolute from nginx's port and the Host header
    (wrong behind a TLS proxy), for a new job and for an idempotent replay."""
    key = "loc-" + str(uuid.uuid4())
    for _ in range(2):
        resp = submit(stack, headers={"Host": "api.example.com", "Idempotency-Key": key})
        job_id = expect_accepted(resp)
    return "Location %s" % resp.header("location")


@cases.case
def keepalive_survives_every_answer(stack):
    """Each kind of answer leaves a keep-alive connection usable for the next request."""
    import http.client
    import worker_sim  # noqa: E402

    job_id = expect_accepted(submit(stack))
    worker_sim.complete_job(stack, job_id)
    queued = expect_accepted(submit(stack))
    status_path = "/v1/jobs/" + job_id
    probes = [
        ("GET", status_path, None, {}),
        ("GET", "/v1/jobs/" + str(uuid.uuid4()), None, {}),
        ("GET", "/v1/jobs/not-an-id", None, {}),
        ("GET", "/v1/nothing-here", None, {}),
        ("GET", status_path + "/stems/vocals.wav", None, {}),
        ("GET", status_path + "/stems/vocals.wav", None, {"Range": "bytes=0-9"}),
        ("GET", status_path + "/stems/guitar.wav", None, {}),
        ("GET", "/v1/jobs/%s/stems/vocals.wav" % queued, None, {}),
        ("PUT", "/v1/jobs", b"x", {}),
        ("POST", "/v1/jobs?model=nope", WAV, {"Content-Type": "audio/wav"}),
        ("POST", "/v1/jobs", b"text " * 40, {"Content-Type": "text/plain"}),
        ("POST", "/v1/jobs", WAV, {"Content-Type": "audio/wav"}),
    ]
    broken = []
    for method, path, body, headers in probes:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=5)
        try:
            conn.request(method, path, body=body, headers=headers)
            first = conn.getresponse()
            first.read()
            conn.request("GET", status_path)
            after = conn.getresponse()
            after.read()
            if after.status != 200:
                broken.append("%s %s (%d) then GET: %d" % (method, path, first.status,
                                                           after.status))
        except (OSError, http.client.HTTPException) as e:
            broken.append("%s %s: next request on the connection failed: %r"
                          % (method, path, e))
        finally:
            conn.close()
    expect(not broken, "keep-alive broken after: " + "; ".join(broken))


# backpressure ----------------------------------------------------------------------------
@cases.case
def max_queued_429(stack):
    accepted = 0
    refused = None
    for _ in range(MAX_QUEUED + 5):
        resp = submit(stack)
        if resp.status == 202:
            accepted += 1
            continue
        refused = resp
        break
    expect(refused is not None, "no 429 after %d submissions (max %d)" % (accepted, MAX_QUEUED))
    expect_json_error(refused, 429, "queue full")
    expect(queued_count(stack) == MAX_QUEUED, "refused at %d queued jobs, the limit is %d"
           % (queued_count(stack), MAX_QUEUED))
    # Cancelling frees a slot.
    some = stack.stream_job_ids(Q_NORMAL)[-1]
    stack.request("DELETE", "/v1/jobs/" + some)
    expect_accepted(submit(stack))
    return "429 after %d accepted, at %d queued" % (accepted, MAX_QUEUED)


# Redis failures --------------------------------------------------------------------------
@cases.case
def redis_stalled_503_and_no_orphan_job(stack):
    """Redis frozen (SIGSTOP): answers are 503 after sep_redis_timeout (1s), not hangs;
    once Redis runs again, the submit it gets late is past its deadline and writes
    nothing (PAST_DEADLINE: no job, no count), its upload is gone, so no job exists that
    its client was told failed. (The compensation of a late submit that Redis did run is
    tested in tests/integration/test_late_replies.py.)"""
    import signal as sig

    # Room for two jobs (the backpressure case filled the queue): the late submit must
    # not be refused for a full queue instead of its deadline.
    for some in stack.stream_job_ids(Q_NORMAL)[:max(0, queued_count(stack) - MAX_QUEUED + 2)]:
        stack.request("DELETE", "/v1/jobs/" + some)
    job_id = expect_accepted(submit(stack))
    before_files = set(stack.spool_files())
    queued_before = queued_count(stack)
    submitted_before = int(stack.redis.hget("{sep}:stats", "submitted") or 0)
    stack.redis_proc.send_signal(sig.SIGSTOP)
    try:
        post = submit(stack)
        get = stack.request("GET", "/v1/jobs/" + job_id)
    finally:
        stack.redis_proc.send_signal(sig.SIGCONT)
    expect_json_error(post, 503, "POST while Redis is frozen")
    expect(post.elapsed < 2.0, "POST 503 took %.2fs" % post.elapsed)
    expect_json_error(get, 503, "GET while Redis is frozen")
    expect(get.elapsed < 2.0, "GET 503 took %.2fs" % get.elapsed)

    # the late submit has reached Redis once a command sent after it is answered
    expect(stack.request("GET", "/v1/jobs/" + job_id).status == 200, "GET after SIGCONT")
    time.sleep(0.3)  # and on another connection, if the module opened a spare one
    submitted = int(stack.redis.hget("{sep}:stats", "submitted") or 0)
    expect(submitted == submitted_before, "the late submit created a job (submitted %d -> %d)"
           % (submitted_before, submitted))
    expect(queued_count(stack) == queued_before,
           "the timed-out submission is queued (%d -> %d)" % (queued_before,
                                                               queued_count(stack)))
    no_new_spool_files(stack, before_files, "a submission that timed out")
    got = stack.request("GET", "/v1/jobs/" + job_id)
    expect(got.status == 200, "GET after Redis resumed: %d" % got.status, got)
    return "POST 503 in %.2fs, GET 503 in %.2fs" % (post.elapsed, get.elapsed)


@cases.case
def redis_down_503_then_recovers(stack):
    job_id = expect_accepted(submit(stack)) if queued_count(stack) < MAX_QUEUED else None
    before = set(stack.spool_files())
    stack.stop_redis()
    slowest = 0.0
    try:
        for attempt in range(2):
            post = submit(stack)
            expect_json_error(post, 503, "POST while Redis is down (try %d)" % attempt)
            expect(post.elapsed < 2.0, "POST 503 took %.2fs" % post.elapsed)
            get = stack.request("GET", "/v1/jobs/" + (job_id or str(uuid.uuid4())))
            expect_json_error(get, 503, "GET while Redis is down (try %d)" % attempt)
            expect(get.elapsed < 2.0, "GET 503 took %.2fs" % get.elapsed)
            slowest = max(slowest, post.elapsed, get.elapsed)
        no_new_spool_files(stack, before, "a POST refused with 503")
    finally:
        stack.start_redis()
    # The module reconnects on its own: no nginx restart.
    deadline = time.monotonic() + 5.0
    while True:
        resp = submit(stack)
        if resp.status == 202 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    new_id = expect_accepted(resp)
    got = stack.request("GET", "/v1/jobs/" + new_id)
    expect(got.status == 200 and got.json.get("id") == new_id, "GET after restart", got)
    return "slowest 503 %.3fs" % slowest


# reload ----------------------------------------------------------------------------------
@cases.case
def reload_under_load_no_failures(stack):
    job_id = expect_accepted(submit(stack))
    stop = threading.Event()
    results = {"ok": 0, "failed": []}

    def client():
        n = 0
        while not stop.is_set():
            n += 1
            try:
                if n % 4 == 0:
                    resp = submit(stack, headers={"Idempotency-Key": "reload-load"})
                    good = resp.status == 202 or resp.status == 200
                else:
                    resp = stack.request("GET", "/v1/jobs/" + job_id, timeout=5)
                    good = resp.status == 200 and resp.json.get("id") == job_id
            except Exception as e:  # connection refused/reset counts as a failure
                results["failed"].append(repr(e))
                continue
            if good:
                results["ok"] += 1
            else:
                results["failed"].append(repr(resp))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for _ in range(4):
            stack.reload_nginx()
            time.sleep(0.6)
    finally:
        stop.set()
        for t in threads:
            t.join()
    expect(results["ok"] > 50, "too few requests went through: %d" % results["ok"])
    expect(not results["failed"], "%d failed requests during reload, first: %s"
           % (len(results["failed"]), results["failed"][:3]))
    return "%d requests, 4 reloads, 0 failed" % results["ok"]


@cases.case
def error_log_has_no_alerts(stack):
    """After everything above, nginx logged nothing at alert level or worse (an alert
    such as "header already sent" means a request was answered twice)."""
    path = stack.values["ERROR_LOG"]
    with open(path, encoding="utf-8", errors="replace") as f:
        bad = [line.strip() for line in f
               if any(level in line for level in ("[alert]", "[crit]", "[emerg]"))]
    expect(not bad, "%d alert/crit/emerg lines in the error log, first: %s"
           % (len(bad), bad[:3]))


def main(argv):
    missing = harness.prerequisites_missing()
    if missing is not None:
        return missing
    stack = harness.Stack(max_body="1m", max_queued=MAX_QUEUED)
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
