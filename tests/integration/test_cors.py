#!/usr/bin/python3
"""CORS for browser clients on another origin, over HTTP against a live stack (real
redis-server + nginx with the module): the headers on every kind of API answer, the
preflight OPTIONS answered without Redis, disallowed origins, an origin computed by an
nginx `map`, credentials, CORS off by default, and `nginx -t` refusing a bad origin.

Each case starts the stack it needs (CORS on, off, or with credentials)."""

import os
import socket
import subprocess
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import worker_sim  # noqa: E402
from harness import expect, expect_json_error  # noqa: E402

APP = "http://app.example:3000"
MAPPED = "https://studio.example.org"
EVIL = "https://evil.example.com"
WAV = harness.wav_bytes()

# The http{} map computes one more allowed origin from the request's own Origin.
MAP = """    map $http_origin $sep_test_origin {
        ~^https://[a-z]+\\.example\\.org$ $http_origin;
        default "";
    }
"""


def with_server_lines(lines, http_lines=""):
    def edit(text):
        text = text.replace("    server {", http_lines + "    server {", 1)
        return text.replace("        server_name", lines + "        server_name", 1)
    return edit


CORS_ON = with_server_lines("        sep_cors_origins %s $sep_test_origin;\n" % APP, MAP)
CORS_CREDENTIALS = with_server_lines("        sep_cors_origins %s;\n" % EVIL +
                                     "        sep_cors_credentials on;\n"
                                     "        sep_cors_max_age 1h;\n")

cases = harness.Cases()


def stack_with(edit):
    return harness.Stack(worker_processes=1, conf_edit=edit).start()


def expect_cors(resp, origin, what):
    expect(resp.header("access-control-allow-origin") == origin,
           "%s: Access-Control-Allow-Origin %r, expected %r"
           % (what, resp.header("access-control-allow-origin"), origin), resp)
    expose = resp.header("access-control-expose-headers") or ""
    for name in ("Location", "Retry-After", "ETag", "Content-Range", "Content-Length"):
        expect(name in expose, "%s: %s not exposed (%r)" % (what, name, expose))
    expect("Origin" in (resp.header("vary") or ""), "%s: no Vary: Origin" % what, resp)


def expect_no_cors(resp, what):
    found = [k for k in resp.headers if k.startswith("access-control-")]
    expect(not found, "%s: CORS headers for an origin that is not allowed: %s" % (what, found),
           resp)


def preflight(stack, path, origin, method, headers="content-type"):
    return stack.request("OPTIONS", path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers})


def completed_job(stack):
    resp = stack.request("POST", "/v1/jobs", body=WAV, headers={"Content-Type": "audio/wav"})
    expect(resp.status == 202, "submit: %d" % resp.status, resp)
    job_id = resp.json["id"]
    return job_id, worker_sim.complete_job(stack, job_id)


@cases.case
def answers_carry_cors_for_an_allowed_origin(_):
    stack = stack_with(CORS_ON)
    try:
        o = {"Origin": APP}
        body, ctype = harness.multipart([], [("file", "a.wav", "audio/wav", WAV)])
        resp = stack.request("POST", "/v1/jobs", body=body,
                             headers=dict(o, **{"Content-Type": ctype}))
        expect(resp.status == 202, "multipart POST: %d" % resp.status, resp)
        expect_cors(resp, APP, "multipart POST 202")
        raw = stack.request("POST", "/v1/jobs", body=WAV, headers=dict(
            o, **{"Content-Type": "audio/wav", "Idempotency-Key": str(uuid.uuid4())}))
        expect_cors(raw, APP, "raw POST 202")
        expect_cors(stack.request("GET", "/v1/jobs/" + raw.json["id"], headers=o), APP,
                    "GET status 200")
        expect_cors(expect_json_resp(stack.request("GET", "/v1/jobs/" + str(uuid.uuid4()),
                                                   headers=o), 404), APP, "GET 404")
        expect_cors(stack.request("DELETE", "/v1/jobs/" + raw.json["id"], headers=o), APP,
                    "DELETE")
        expect_cors(expect_json_resp(stack.request("PUT", "/v1/jobs", body=b"x", headers=o),
                                     405), APP, "405")
        expect_cors(expect_json_resp(stack.request(
            "POST", "/v1/jobs", body=b"text " * 40,
            headers=dict(o, **{"Content-Type": "text/plain"})), 415), APP, "415")
        job_id, stems = completed_job(stack)
        name = sorted(stems)[0]
        path = "/v1/jobs/%s/stems/%s.wav" % (job_id, name)
        stem = stack.request("GET", path, headers=o)
        expect(stem.status == 200 and stem.body == stems[name], "stem download", stem)
        expect_cors(stem, APP, "stem download (after the internal redirect)")
        part = stack.request("GET", path, headers=dict(o, Range="bytes=0-9"))
        expect(part.status == 206, "Range: %d" % part.status, part)
        expect_cors(part, APP, "206")
        past = stack.request("GET", path, headers=dict(o, Range="bytes=%d-" % (len(stems[name])
                                                                             + 10)))
        expect_json_error(past, 416, "Range past the end")
        expect_cors(past, APP, "416 after the internal redirect")
        stack.stop_redis()
        down = stack.request("GET", "/v1/jobs/" + job_id, headers=o)
        expect_json_error(down, 503, "Redis down")
        expect_cors(down, APP, "503")
        return "202, 200, 404, 405, 415, stems 200/206/416, 503: all with CORS"
    finally:
        stack.stop()


def expect_json_resp(resp, status):
    expect_json_error(resp, status)
    return resp


@cases.case
def preflight_without_redis(_):
    stack = stack_with(CORS_ON)
    try:
        stack.stop_redis()  # a preflight is nginx's alone
        jid = str(uuid.uuid4())
        want = {"/v1/jobs": {"POST"},
                "/v1/jobs/" + jid: {"GET", "HEAD", "DELETE"},
                "/v1/jobs/%s/stems/vocals.wav" % jid: {"GET", "HEAD"}}
        for path, methods in want.items():
            method = sorted(methods)[0]
            resp = preflight(stack, path, APP, method, "content-type,idempotency-key")
            expect(resp.status == 204, "preflight %s: %d" % (path, resp.status), resp)
            expect(not resp.body, "preflight %s: a body" % path, resp)
            expect_cors(resp, APP, "preflight " + path)
            got = {m.strip() for m in (resp.header("access-control-allow-methods")
                                       or "").split(",")}
            expect(methods <= got and "PUT" not in got,
                   "preflight %s: methods %s, expected %s" % (path, got, methods), resp)
            allow_h = (resp.header("access-control-allow-headers") or "").lower()
            for h in ("content-type", "idempotency-key", "authorization", "last-event-id",
                      "range"):
                expect(h in allow_h, "preflight %s: header %s not allowed" % (path, h), resp)
            expect(resp.header("access-control-max-age") == "600",
                   "preflight max-age %r" % resp.header("access-control-max-age"), resp)
        mapped = preflight(stack, "/v1/jobs", MAPPED, "POST")
        expect(mapped.status == 204, "mapped origin preflight %d" % mapped.status, mapped)
        expect_cors(mapped, MAPPED, "origin allowed by the map")
        return "204 with methods per path, Redis stopped"
    finally:
        stack.stop()


@cases.case
def disallowed_origin_gets_no_cors_but_is_served(_):
    stack = stack_with(CORS_ON)
    try:
        for origin in (EVIL, APP + ".evil.com", "null", "http://app.example:3001"):
            pre = preflight(stack, "/v1/jobs", origin, "POST")
            expect(pre.status == 204, "preflight from %s: %d" % (origin, pre.status), pre)
            expect_no_cors(pre, "preflight from " + origin)
            resp = stack.request("POST", "/v1/jobs", body=WAV,
                                 headers={"Origin": origin, "Content-Type": "audio/wav"})
            expect(resp.status == 202, "POST from %s still served: %d" % (origin, resp.status),
                   resp)
            expect_no_cors(resp, "POST from " + origin)
            expect("Origin" in (resp.header("vary") or ""), "no Vary: Origin", resp)
        plain = stack.request("GET", "/v1/jobs/" + str(uuid.uuid4()))
        expect_no_cors(plain, "a request without Origin")
        return "4 origins refused CORS, requests served"
    finally:
        stack.stop()


@cases.case
def credentials_echo_the_origin(_):
    stack = stack_with(CORS_CREDENTIALS)
    try:
        resp = stack.request("GET", "/v1/jobs/" + str(uuid.uuid4()), headers={"Origin": EVIL})
        expect_cors(resp, EVIL, "credentials with a named origin")
        expect(resp.header("access-control-allow-credentials") == "true",
               "no Access-Control-Allow-Credentials", resp)
        pre = preflight(stack, "/v1/jobs", EVIL, "POST")
        expect(pre.header("access-control-max-age") == "3600", "max-age 1h", pre)
        return "origin echoed with credentials"
    finally:
        stack.stop()


@cases.case
def cors_off_by_default(_):
    stack = stack_with(None)
    try:
        resp = stack.request("POST", "/v1/jobs", body=WAV,
                             headers={"Origin": APP, "Content-Type": "audio/wav"})
        expect(resp.status == 202, "POST %d" % resp.status, resp)
        expect_no_cors(resp, "POST, CORS off")
        pre = preflight(stack, "/v1/jobs", APP, "POST")
        expect(pre.status == 204, "OPTIONS, CORS off: %d" % pre.status, pre)
        expect_no_cors(pre, "OPTIONS, CORS off")
        expect((pre.header("allow") or "") == "POST, OPTIONS", "Allow %r" % pre.header("allow"),
               pre)
        return "no CORS headers; OPTIONS 204 with Allow"
    finally:
        stack.stop()


@cases.case
def nginx_t_refuses_a_bad_origin(_):
    stack = harness.Stack(worker_processes=1,
                          conf_edit=with_server_lines("        sep_cors_origins app.example;\n"))
    try:
        harness.localstack.make_prefix_dirs(stack.prefix)
        with open(stack.conf_path, "w") as f:
            f.write(stack.render_conf(1))
        res = subprocess.run(harness.localstack.nginx_args(stack.prefix, stack.conf_path, "-t"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        expect(res.returncode != 0, "nginx -t accepted sep_cors_origins app.example")
        expect("sep_cors_origins" in res.stdout and "app.example" in res.stdout,
               "nginx -t message does not name the directive: " + res.stdout)
        return res.stdout.strip().splitlines()[0][-90:]
    finally:
        stack.stop()


def raw_head(stack, request):
    """The status line and header lines of the answer to raw request bytes, as sent
    (http.client folds repeated headers into one)."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall(request)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return buf.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")


@cases.case
def vary_once_when_nginx_sends_the_headers_again(_):
    # A 416 of the range filter sends the headers a second time (the JSON error page):
    # Vary: Origin must still be there once, for every kind of Origin.
    stack = stack_with(CORS_ON)
    try:
        job_id, stems = completed_job(stack)
        path = "/v1/jobs/%s/stems/%s.wav" % (job_id, sorted(stems)[0])
        seen = []
        for origin in (None, EVIL, APP):
            head = raw_head(stack, ("GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                    "Range: bytes=99999999-\r\n%s\r\n"
                                    % (path, "Origin: %s\r\n" % origin if origin else ""))
                            .encode())
            varies = [h for h in head if h.lower().startswith("vary:")]
            expect(head[0].split()[1] == "416", "%s: %s" % (origin, head[0]))
            expect(len(varies) == 1 and "origin" in varies[0].lower(),
                   "416 from %s: Vary lines %r" % (origin or "no Origin", varies))
            seen.append(len(varies))
        return "416 without Origin, from a refused and an allowed origin: Vary %s" % seen
    finally:
        stack.stop()


@cases.case
def stems_carry_cors_of_the_api_location(_):
    # sep_cors_origins in the sep_api location only, or at server level: a stem download
    # (redirected to sep_stems_location) carries the API location's CORS, each header
    # once, also for a refused origin and for nginx's 416 after the redirect.
    in_location = lambda text: text.replace(  # noqa: E731
        "            sep_api;\n", "            sep_api;\n            sep_cors_origins %s;\n"
        % APP, 1)
    seen = 0
    for edit in (in_location, CORS_ON):
        stack = stack_with(edit)
        try:
            job_id, stems = completed_job(stack)
            path = "/v1/jobs/%s/stems/%s.wav" % (job_id, sorted(stems)[0])
            for origin, rng, status in ((APP, "", "200"), (EVIL, "", "200"),
                                        (APP, "Range: bytes=99999999-\r\n", "416")):
                head = raw_head(stack, ("GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                                        "Origin: %s\r\n%s\r\n" % (path, origin, rng)).encode())
                lines = [h.lower() for h in head[1:]]
                count = lambda name: sum(h.startswith(name + ":") for h in lines)  # noqa: E731
                what = "%s stem from %s (%s)" % (status, origin,
                                                 "location" if edit is in_location else "server")
                expect(head[0].split()[1] == status, "%s: %s" % (what, head[0]))
                expect(count("vary") == 1, "%s: Vary lines %d" % (what, count("vary")), head)
                want = 1 if origin == APP else 0
                for name in ("access-control-allow-origin", "access-control-expose-headers"):
                    expect(count(name) == want, "%s: %d %s" % (what, count(name), name), head)
                seen += 1
        finally:
            stack.stop()
    return "%d stem answers, CORS in the location and at server level" % seen


def head_error(stack, request):
    return harness.raw_request(stack.port, request.encode("latin-1"))


@cases.case
def head_errors_carry_the_api_locations_cors(_):
    # nginx's own refusals while it reads the request head (a header over
    # large_client_header_buffers, a malformed header, TRACE) come before any location:
    # under the API they carry the CORS headers of the sep_api location that would have
    # served the URI, with sep_cors_origins at server level or in that location only
    # (then /metrics, another location without it, gets none). A URI too long gets its
    # JSON but no CORS header: nginx stops before the header lines, Origin is unknown.
    in_location = lambda text: text.replace(  # noqa: E731
        "            sep_api;\n", "            sep_api;\n            sep_cors_origins %s;\n"
        % APP, 1)
    seen = 0
    for edit, where in ((CORS_ON, "server"), (in_location, "location")):
        stack = stack_with(edit)
        try:
            origins = [APP, MAPPED] if edit is CORS_ON else [APP]
            for origin in origins + [EVIL]:
                head = ("Host: t\r\nConnection: close\r\nOrigin: %s\r\n" % origin)
                for what, req, status, code in (
                        ("header too large",
                         "GET /v1/jobs/x HTTP/1.1\r\n%sAuthorization: Bearer %s\r\n\r\n"
                         % (head, "a" * 9000), 400, "header_too_large"),
                        ("malformed header", "GET /v1/jobs/x HTTP/1.1\r\n%sBad Header\r\n\r\n"
                         % head, 400, "bad_request"),
                        ("TRACE", "TRACE /v1/jobs/x HTTP/1.1\r\n%s\r\n" % head, 405,
                         "method_not_allowed")):
                    label = "%s from %s (CORS in the %s)" % (what, origin, where)
                    resp = head_error(stack, req)
                    err = expect_json_error(resp, status, label)
                    expect(err["code"] == code, "%s: %r" % (label, err))
                    if origin == EVIL:
                        expect_no_cors(resp, label)
                    else:
                        expect_cors(resp, origin, label)
                    seen += 1
            long_uri = head_error(stack, "GET /v1/jobs/%s HTTP/1.1\r\nHost: t\r\nOrigin: %s"
                                  "\r\n\r\n" % ("a" * 20000, APP))
            err = expect_json_error(long_uri, 414, "URI too long")
            expect(err["code"] == "uri_too_long", "URI too long: %r" % err)
            expect_no_cors(long_uri, "URI too long (Origin not read)")
            metrics = head_error(stack, "GET /metrics HTTP/1.1\r\nHost: t\r\nOrigin: %s\r\n"
                                 "Bad Header\r\n\r\n" % APP)
            expect_json_error(metrics, 400, "malformed header on /metrics")
            if edit is CORS_ON:
                expect_cors(metrics, APP, "/metrics, CORS at server level")
            else:
                expect_no_cors(metrics, "/metrics, a location without sep_cors_origins")
            ui = head_error(stack, "GET /ui/player.html HTTP/1.1\r\nHost: t\r\nOrigin: %s\r\n"
                            "Bad Header\r\n\r\n" % APP)
            expect(ui.status == 400 and "text/html" in (ui.header("content-type") or ""),
                   "malformed header on /ui/: nginx's page", ui)
            expect_no_cors(ui, "/ui/ is no API path")
            seen += 3
        finally:
            stack.stop()
    return "%d answers" % seen


def nginx_t(line):
    """`nginx -t` on the sample conf with one more server line: (returncode, output)."""
    stack = harness.Stack(worker_processes=1, conf_edit=with_server_lines(line))
    try:
        harness.localstack.make_prefix_dirs(stack.prefix)
        with open(stack.conf_path, "w") as f:
            f.write(stack.render_conf(1))
        res = subprocess.run(harness.localstack.nginx_args(stack.prefix, stack.conf_path, "-t"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return res.returncode, res.stdout
    finally:
        stack.stop()


@cases.case
def nginx_t_refuses_origins_no_browser_sends(_):
    # Browsers send scheme://host[:port]: no path (not even "/"), no default port.
    for origin in ("http://app.example:3000/", "http://app.example:3000/ui",
                   "https://app.example:443", "http://app.example:80", "http://:3000",
                   "http://app.example:", "http://user@app.example", "http://[::1"):
        rc, out = nginx_t("        sep_cors_origins %s;\n" % origin)
        expect(rc != 0, "nginx -t accepted sep_cors_origins %s" % origin)
        expect(origin in out, "nginx -t does not name %s: %s" % (origin, out))
    for origin in ("http://[::1]:8080", "https://app.example:8443", "http://localhost"):
        rc, out = nginx_t("        sep_cors_origins %s;\n" % origin)
        expect(rc == 0, "nginx -t refused sep_cors_origins %s: %s" % (origin, out))
    return "8 refused, 3 accepted"


@cases.case
def nginx_t_refuses_star_with_credentials(_):
    # `*` with credentials would echo every Origin (null included) with
    # Access-Control-Allow-Credentials: any page could read answers made with the
    # browser's cookies or HTTP authentication. Name the origins instead.
    rc, out = nginx_t("        sep_cors_origins *;\n        sep_cors_credentials on;\n")
    expect(rc != 0 and "sep_cors_credentials" in out and "name the origins" in out,
           "nginx -t accepted * with credentials", out)
    rc, out = nginx_t("        sep_cors_origins %s;\n        sep_cors_credentials on;\n" % APP)
    expect(rc == 0, "nginx -t refused a named origin with credentials", out)
    rc, out = nginx_t("        sep_cors_origins *;\n")
    expect(rc == 0, "nginx -t refused * without credentials", out)


@cases.case
def origins_compare_without_regard_to_case(_):
    # A configured origin in capitals, and one a map computes in capitals, match the
    # lower-case Origin browsers send; the answer echoes what the browser sent.
    mapped = """    map $http_origin $sep_upper {
        default "HTTPS://Studio.Example.ORG";
    }
"""
    stack = stack_with(with_server_lines("        sep_cors_origins http://App.Example:3000 "
                                         "$sep_upper;\n", mapped))
    try:
        for origin in (APP, MAPPED):
            resp = stack.request("GET", "/v1/jobs/" + str(uuid.uuid4()),
                                 headers={"Origin": origin})
            expect_cors(resp, origin, "configured in capitals, Origin " + origin)
        return "literal and mapped origins in capitals match"
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
    return cases.run(_NoStack(), only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
