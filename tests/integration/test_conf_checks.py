#!/usr/bin/python3
"""What `nginx -t` and a starting worker say about the module's configuration
(ngx_module/ngx_http_sep_conf.c), on the sample conf rendered for a temporary prefix:

  bad_values_name_their_own_line    every out-of-range value is refused naming the
                                    directive, its bound and the directive's own line
                                    (not the closing brace of http)
  bounds_are_accepted               the documented bounds themselves pass
  api_location_without_v1_warns     sep_api in `location /api/` (every path 404) warns
  missing_stems_location_warns      a sep_stems_location that names no location warns
  spool_not_a_directory_at_start    a sep_spool that is a file: each worker says, at
                                    start, that every upload will fail
  temp_path_on_another_filesystem   client_body_temp_path on tmpfs, the spool not: a
                                    warning at start that each raw upload is copied
  full_spool_is_507                 the spool (and the body temp path in it) on a 1 MiB
                                    tmpfs: raw and multipart uploads larger than it get
                                    507 insufficient_storage, nothing is left behind, and
                                    a small upload still gets 202 (needs mount: root)
"""

import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import expect  # noqa: E402

localstack = harness.localstack
cases = harness.Cases()


def rendered(stack, edit):
    text = localstack.render_nginx_conf(dict(stack.values, LISTEN="127.0.0.1:1"))
    return edit(text)


def nginx_t(stack, text):
    with open(stack.conf_path, "w") as f:
        f.write(text)
    res = subprocess.run(localstack.nginx_args(stack.prefix, stack.conf_path, "-t"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return res.returncode, res.stdout


def with_stack(fn):
    def run(_unused):
        stack = harness.Stack(worker_processes=1)
        try:
            localstack.make_prefix_dirs(stack.prefix)
            return fn(stack)
        finally:
            stack.stop()
    run.__name__ = fn.__name__
    return cases.case(run)


BAD = [
    ("sep_redis_timeout 1s;", "sep_redis_timeout 0;", "between 1ms and 10m"),
    ("sep_result_ttl 24h;", "sep_result_ttl 0;", "between 1s and 10y"),
    ("sep_idempotency_ttl 24h;", "sep_idempotency_ttl 0;", "between 1s and 10y"),
    ("sep_max_attempts 3;", "sep_max_attempts 0;", "between 1 and 1000"),
    ("sep_stems_location /_sep_stems/;", "sep_stems_location foo;",
     "must start and end with"),
    ("sep_multipart_buffer 64k;", "sep_multipart_buffer 1;", "between 4k and 16m"),
    ("sep_multipart_max_header 8k;", "sep_multipart_max_header 65k;", "between 256 and 64k"),
    ("sep_cors_max_age 10m;", "sep_cors_max_age 20y;", "between 0 and 10y"),
]


@with_stack
def bad_values_name_their_own_line(stack):
    checked = []
    for old, new, bound in BAD:
        text = rendered(stack, lambda t: t.replace(old, new, 1))
        expect(new in text, "the sample conf has no %r to replace" % old)
        line = text[:text.index(new)].count("\n") + 1
        rc, out = nginx_t(stack, text)
        directive = new.split()[0]
        expect(rc != 0, "nginx -t accepted %r" % new, out)
        expect(directive in out and bound in out, "the message names %s and its bound %r"
               % (directive, bound), out)
        expect("%s:%d" % (stack.conf_path, line) in out,
               "%r is on line %d; the message points elsewhere" % (new, line), out)
        checked.append(directive)
    # a relative spool
    text = rendered(stack, lambda t: re.sub(r"^(\s*)sep_spool [^;\n]+;",
                                            r"\1sep_spool relative/spool;", t, count=1,
                                            flags=re.M))
    line = text[:text.index("sep_spool relative")].count("\n") + 1
    rc, out = nginx_t(stack, text)
    expect(rc != 0 and "must be an absolute path" in out and
           "%s:%d" % (stack.conf_path, line) in out, "relative sep_spool", out)
    return "%d directives + sep_spool" % len(checked)


@with_stack
def bounds_are_accepted(stack):
    text = rendered(stack, lambda t: t
                    .replace("sep_redis_timeout 1s;", "sep_redis_timeout 10m;")
                    .replace("sep_result_ttl 24h;", "sep_result_ttl 3650d;")
                    .replace("sep_idempotency_ttl 24h;", "sep_idempotency_ttl 1s;")
                    .replace("sep_max_attempts 3;", "sep_max_attempts 1000;")
                    .replace("sep_multipart_buffer 64k;", "sep_multipart_buffer 4k;")
                    .replace("sep_multipart_max_header 8k;", "sep_multipart_max_header 64k;")
                    .replace("sep_cors_max_age 10m;", "sep_cors_max_age 0;"))
    rc, out = nginx_t(stack, text)
    expect(rc == 0, "nginx -t refused the bounds", out)
    expect("[warn]" not in out, "the sample conf warns", out)


@with_stack
def api_location_without_v1_warns(stack):
    text = rendered(stack, lambda t: t.replace("location /v1/ {", "location /api/ {", 1))
    rc, out = nginx_t(stack, text)
    expect(rc == 0, "nginx -t should pass (a warning, not an error)", out)
    expect("sep_api in location \"/api/\"" in out and "404" in out, "no warning", out)


@with_stack
def missing_stems_location_warns(stack):
    text = rendered(stack, lambda t: t.replace("location /_sep_stems/ {",
                                               "location /_other_stems/ {", 1))
    rc, out = nginx_t(stack, text)
    expect(rc == 0, "nginx -t should pass (a warning, not an error)", out)
    expect("sep_stems_location \"/_sep_stems/\"" in out and "names no location" in out,
           "no warning", out)


def started_log(stack, edit, wait_for, timeout=10):
    """Starts nginx on the edited conf and returns the error log once it has wait_for."""
    stack.conf_edit = edit
    stack.start()
    log_path = stack.values["ERROR_LOG"]
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        with open(log_path, errors="replace") as f:
            text = f.read()
        if wait_for in text:
            break
        time.sleep(0.05)
    return text


@cases.case
def spool_not_a_directory_at_start(_unused):
    stack = harness.Stack(worker_processes=1)
    try:
        localstack.make_prefix_dirs(stack.prefix)
        bogus = os.path.join(stack.prefix, "not-a-dir")
        with open(bogus, "w") as f:
            f.write("x")
        text = started_log(stack, lambda t: re.sub(r"^(\s*)sep_spool [^;\n]+;",
                                                   r"\1sep_spool %s;" % bogus, t, count=1,
                                                   flags=re.M),
                           "is not a directory this worker")
        expect("sep_spool \"%s\"" % bogus in text and "every upload will fail" in text,
               "no error at worker start", text[-2000:])
    finally:
        stack.stop()


@cases.case
def temp_path_on_another_filesystem(_unused):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        return "skipped: no tmpfs apart from the temp directory"
    stack = harness.Stack(worker_processes=1)
    temp = tempfile.mkdtemp(prefix="sep-body-", dir=shm)
    try:
        localstack.make_prefix_dirs(stack.prefix)
        text = started_log(stack, lambda t: re.sub(r"^(\s*)client_body_temp_path [^;\n]+;",
                                                   r"\1client_body_temp_path %s 1 2;" % temp, t,
                                                   count=1, flags=re.M),
                           "on another filesystem")
        expect("client_body_temp_path \"%s\"" % temp in text and "copied" in text,
               "no warning at worker start", text[-2000:])
        resp = stack.request("POST", "/v1/jobs", harness.wav_bytes(),
                             {"Content-Type": "audio/wav"})
        expect(resp.status == 202, "an upload through the copy", resp.status, resp.body[:300])
    finally:
        stack.stop()
        subprocess.run(["rm", "-rf", temp])


@cases.case
def full_spool_is_507(_unused):
    stack = harness.Stack(worker_processes=1, max_body="16m")
    spool = stack.spool
    os.makedirs(spool, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", spool],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        stack.stop()
        return "skipped: cannot mount a tmpfs here (%s)" % res.stdout.strip()
    try:
        stack.start()
        big = harness.wav_bytes(seconds=8)  # 1.4 MB of audio
        raw = stack.request("POST", "/v1/jobs", big, {"Content-Type": "audio/wav"})
        harness.expect_json_error(raw, 507, "raw upload larger than the spool")
        expect(raw.json["error"]["code"] == "insufficient_storage", "raw: code", raw.json)
        body, ctype = harness.multipart([], [("file", "a.wav", "audio/wav", big)])
        form = stack.request("POST", "/v1/jobs", body, {"Content-Type": ctype})
        harness.expect_json_error(form, 507, "multipart upload larger than the spool")
        left = [f for f in stack.spool_files()]
        expect(not left, "files left in the spool after the refusals", left)
        small = stack.request("POST", "/v1/jobs", harness.wav_bytes(seconds=0.2),
                              {"Content-Type": "audio/wav"})
        expect(small.status == 202, "a small upload after the refusals", small.status,
               small.body[:200])
        return "raw and multipart 507, then 202"
    finally:
        subprocess.run(["umount", "-l", spool])
        stack.stop()


def main(argv):
    if not os.path.exists(localstack.MODULE_SO):
        print("FAIL: %s is not built (make)" % localstack.MODULE_SO)
        return 1
    return cases.run(None, only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
