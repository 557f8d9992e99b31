#!/usr/bin/python3
"""nginx's own errors while it reads the request head, before it picks a location:
494 (a header over large_client_header_buffers, sent as 400), 414 (a URI too long) and
400 (a malformed header). They come from the server's default configuration, not the
`sep_api` location, so they are HTML and carry no CORS header, although the README
lists `bad_request` and `uri_too_long` as JSON errors of the API and "CORS" promises
the headers on nginx's own errors. A browser page (e.g. with a long Authorization
token) sees a network error instead of the status. Expected: JSON with CORS for a
request under /v1/ from an allowed origin."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

APP = "http://app.example:3000"
stack = harness.Stack(worker_processes=1, conf_edit=lambda t: t.replace(
    "        server_name", "        sep_cors_origins %s;\n        server_name" % APP, 1)).start()
try:
    head = "Host: t\r\nConnection: close\r\nOrigin: %s\r\n" % APP
    bad = []
    for what, req in (
            ("header over 8k", "GET /v1/jobs/x HTTP/1.1\r\n%sAuthorization: Bearer %s\r\n\r\n"
             % (head, "a" * 9000)),
            ("URI over 8k", "GET /v1/jobs/%s HTTP/1.1\r\n%s\r\n" % ("a" * 9000, head)),
            ("malformed header", "GET /v1/jobs/x HTTP/1.1\r\n%sBad\x01: y\r\n\r\n" % head)):
        resp = harness.raw_request(stack.port, req.encode("latin-1"))
        print("%-17s %d %s ACAO=%s" % (what, resp.status, resp.header("content-type"),
                                       resp.header("access-control-allow-origin")))
        if resp.header("access-control-allow-origin") != APP or resp.json is None:
            bad.append(what)
    print("PASS" if not bad else "FAIL")
    sys.exit(0 if not bad else 1)
finally:
    stack.stop()
