#!/usr/bin/python3
"""Real answers of every route, success and error, checked against the OpenAPI 3.1
document (shared/openapi.json, served at GET /v1/openapi.json) with jsonschema: the
status must be listed for the path and method, the Content-Type must be one the
document gives for it, its required headers must be there and match, and a JSON body
must validate against the response's schema (Draft 2020-12, as OpenAPI 3.1 says).

    /usr/bin/python3 tests/integration/test_openapi.py [case-name-substring ...]
"""

import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import worker_sim  # noqa: E402
from harness import expect  # noqa: E402

try:
    import jsonschema
except ImportError:  # reported by main()
    jsonschema = None

DOC_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "openapi.json")
MAX_QUEUED = 4
WAV = harness.wav_bytes()

cases = harness.Cases()
checked = []  # (method, template, status) validated, for the summary


def load_doc():
    with open(DOC_PATH, encoding="utf-8") as f:
        return json.load(f)


DOC = load_doc()


def resolve(node):
    """Follows local $refs (#/components/...)."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        target = DOC
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
        seen += 1
        expect(seen < 10, "$ref loop")
    return node


def media_matches(listed, actual):
    """Whether the answer's Content-Type is one the document lists (type/subtype and,
    where the document gives them, its parameters)."""
    want = [p.strip().lower() for p in listed.split(";")]
    got = [p.strip().lower() for p in actual.split(";")]
    wt, gt = want[0], got[0]
    if wt.endswith("/*"):
        if not gt.startswith(wt[:-1]):
            return False
    elif wt != gt:
        return False
    return all(p in got[1:] for p in want[1:])


def check(resp, method, template):
    """Validates resp against the document's entry for method + template."""
    op = DOC["paths"].get(template, {}).get(method.lower())
    expect(op is not None, "the document has no %s %s" % (method, template))
    responses = op["responses"]
    entry = responses.get(str(resp.status))
    expect(entry is not None, "%s %s: status %d is not in the document (lists %s)"
           % (method, template, resp.status, sorted(responses)), resp.body[:200])
    entry = resolve(entry)
    for name, header in entry.get("headers", {}).items():
        header = resolve(header)
        value = resp.header(name)
        if header.get("required"):
            expect(value is not None, "%s %s %d: header %s missing"
                   % (method, template, resp.status, name))
        if value is not None and "schema" in header:
            jsonschema.validate(value, header["schema"])
    content = entry.get("content")
    ctype = resp.header("Content-Type") or ""
    if not content:
        return None
    if method == "HEAD":
        return None
    matches = [m for m in content if media_matches(m, ctype)]
    expect(matches, "%s %s %d: Content-Type %r is not one of %s"
           % (method, template, resp.status, ctype, sorted(content)))
    schema = content[matches[0]].get("schema")
    body = None
    if schema is not None and ctype.lower().startswith("application/json"):
        body = json.loads(resp.body)
        resolver = jsonschema.RefResolver.from_schema(DOC)
        validator = jsonschema.Draft202012Validator(
            schema, resolver=resolver, format_checker=jsonschema.FormatChecker())
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
        expect(not errors, "%s %s %d: body does not match the document: %s"
               % (method, template, resp.status,
                  "; ".join("%s at %s" % (e.message, list(e.path)) for e in errors[:3])),
               resp.body[:400])
    checked.append((method, template, resp.status))
    return body


def submit(stack, query="", body=WAV, ctype="audio/wav"):
    return stack.request("POST", "/v1/jobs" + (("?" + query) if query else ""), body=body,
                         headers={"Content-Type": ctype})


# cases -----------------------------------------------------------------------------------
@cases.case
def document_is_served_and_valid(stack):
    stack.redis.flushall()
    resp = stack.request("GET", "/v1/openapi.json")
    expect(resp.status == 200, "GET /v1/openapi.json", resp.status)
    expect(json.loads(resp.body) == DOC, "the served document is shared/openapi.json")
    check(resp, "GET", "/v1/openapi.json")
    expect(DOC["openapi"].startswith("3.1."), "OpenAPI 3.1", DOC["openapi"])
    for name, schema in DOC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
    # every error code the document's error responses name is in the module's table
    table = open(os.path.join(os.path.dirname(DOC_PATH), "..", "ngx_module", "README.md"),
                 encoding="utf-8").read()
    for name, r in DOC["components"]["responses"].items():
        for code in re.findall(r"[a-z][a-z_]+[a-z]", r["description"]):
            expect("`%s`" % code in table, "%s names %s, not in the error table" % (name, code))


@cases.case
def submit_and_its_errors(stack):
    stack.redis.flushall()
    body = check(submit(stack, "priority=high&format=flac"), "POST", "/v1/jobs")
    expect(body["status"] == "queued", "queued", body)
    check(submit(stack, "model=bogus"), "POST", "/v1/jobs")  # 400
    # a method the route does not take: the 405 the document lists for the route
    check(check_status(stack.request("PUT", "/v1/jobs", body=b"x"), 405), "POST", "/v1/jobs")
    check(check_status(submit(stack, body=b"x" * (1024 * 1024 + 10)), 413), "POST", "/v1/jobs")
    check(check_status(submit(stack, body=b"hello", ctype="text/plain"), 415), "POST",
          "/v1/jobs")
    for _ in range(MAX_QUEUED + 1):
        r = submit(stack)
        if r.status == 429:
            break
    check(check_status(r, 429), "POST", "/v1/jobs")


def check_status(resp, status):
    expect(resp.status == status, "want %d, got %d" % (status, resp.status), resp.body[:200])
    return resp


@cases.case
def job_routes(stack):
    stack.redis.flushall()
    queued = json.loads(check_status(submit(stack), 202).body)["id"]
    done = json.loads(check_status(submit(stack), 202).body)["id"]
    running = json.loads(check_status(submit(stack), 202).body)["id"]
    worker_sim.complete_job(stack, done)
    check(check_status(stack.request("GET", "/v1/jobs/" + done), 200), "GET", "/v1/jobs/{id}")
    check(check_status(stack.request("GET", "/v1/jobs/" + queued), 200), "GET", "/v1/jobs/{id}")
    check(check_status(stack.request("GET", "/v1/jobs/nope"), 404), "GET", "/v1/jobs/{id}")
    stems = json.loads(stack.request("GET", "/v1/jobs/" + done).body)["stems"]
    url = next(iter(stems.values()))["url"]
    check(check_status(stack.request("GET", url), 200), "GET", "/v1/jobs/{id}/stems/{file}")
    check(check_status(stack.request("GET", url, headers={"Range": "bytes=0-9"}), 206), "GET",
          "/v1/jobs/{id}/stems/{file}")
    check(check_status(stack.request("GET", "/v1/jobs/%s/stems/guitar.wav" % done), 404),
          "GET", "/v1/jobs/{id}/stems/{file}")
    check(check_status(stack.request("GET", "/v1/jobs/%s/stems/vocals.wav" % queued), 404),
          "GET", "/v1/jobs/{id}/stems/{file}")
    # events: a finished job gets its terminal event and the stream ends
    resp = check_status(stack.request("GET", "/v1/jobs/%s/events" % done), 200)
    check(resp, "GET", "/v1/jobs/{id}/events")
    expect(b"event: completed" in resp.body, "terminal event", resp.body[:200])
    check(check_status(stack.request("GET", "/v1/jobs/nope/events"), 404), "GET",
          "/v1/jobs/{id}/events")
    check(check_status(stack.request("POST", "/v1/jobs/%s/events" % done, body=b""), 405),
          "GET", "/v1/jobs/{id}/events")
    # DELETE: queued 200, running 202, finished 200 then 409
    worker_sim.claim(stack.redis, running)
    check(check_status(stack.request("DELETE", "/v1/jobs/" + queued), 200), "DELETE",
          "/v1/jobs/{id}")
    check(check_status(stack.request("DELETE", "/v1/jobs/" + running), 202), "DELETE",
          "/v1/jobs/{id}")
    check(check_status(stack.request("DELETE", "/v1/jobs/" + done), 200), "DELETE",
          "/v1/jobs/{id}")
    check(check_status(stack.request("DELETE", "/v1/jobs/" + done), 409), "DELETE",
          "/v1/jobs/{id}")
    check(check_status(stack.request("PUT", "/v1/jobs/" + done, body=b""), 405), "DELETE",
          "/v1/jobs/{id}")


@cases.case
def operations_routes(stack):
    stack.redis.flushall()
    stack.redis.eval(worker_sim.script("heartbeat"), 2, worker_sim.PREFIX + "worker:w",
                     worker_sim.PREFIX + "workers", "w", "30", "host", "h", "device", "cpu",
                     "state", "idle", "models", "htdemucs_6s", "jobs", "")
    job = json.loads(check_status(submit(stack), 202).body)["id"]
    worker_sim.complete_job(stack, job)
    body = check(check_status(stack.request("GET", "/v1/stats"), 200), "GET", "/v1/stats")
    expect(len(body["workers"]) == 1, "one worker", body["workers"])
    check(check_status(stack.request("GET", "/metrics"), 200), "GET", "/metrics")
    body = check(check_status(stack.request("GET", "/v1/models"), 200), "GET", "/v1/models")
    expect(body["models"][0]["name"] == "htdemucs_6s", "models", body)
    for path in ("/v1/stats", "/metrics", "/v1/models"):
        check(check_status(stack.request("DELETE", path), 405), "GET", path)


@cases.case
def not_found_and_store_down(stack):
    resp = check_status(stack.request("GET", "/v1/nothing"), 404)
    # an unknown path has no entry of its own: its body is the shared error schema
    check(resp, "GET", "/v1/jobs/{id}")
    stack.stop_redis()
    try:
        for method, path, template in (("GET", "/v1/stats", "/v1/stats"),
                                       ("GET", "/metrics", "/metrics"),
                                       ("GET", "/v1/models", "/v1/models"),
                                       ("GET", "/v1/jobs/" + "0" * 8 + "-0000-4000-8000-" +
                                        "0" * 12, "/v1/jobs/{id}")):
            check(check_status(stack.request(method, path), 503), method, template)
        check(check_status(submit(stack), 503), "POST", "/v1/jobs")
    finally:
        stack.start_redis()


def main(argv):
    if harness.redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    if jsonschema is None:
        print("FAIL: python3-jsonschema is not installed (make deps)")
        return 1
    if not os.path.exists(harness.localstack.MODULE_SO):
        print("FAIL: %s is not built (make)" % harness.localstack.MODULE_SO)
        return 1
    stack = harness.Stack(max_body="1m", max_queued=MAX_QUEUED)
    harness.install_signal_cleanup(stack)
    try:
        stack.start()
        print("stack: nginx 127.0.0.1:%d, redis %s, prefix %s"
              % (stack.port, stack.redis_address, stack.prefix), flush=True)
        rc = cases.run(stack, only=argv[1:])
        print("validated %d answers (%d distinct route/status pairs)"
              % (len(checked), len({(m, t, s) for m, t, s in checked})))
        return rc
    except Exception as e:
        print("FAIL: could not start the stack: %s" % e)
        print(stack.error_log_tail())
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
