#!/usr/bin/python3
"""The docs check: what the READMEs show is what the service does.

Runs every `curl` example in the ```sh blocks of README.md, ngx_module/README.md and
workerd/README.md, as written, against a live stack (redis-server + nginx with the
module + `workerd run` with the tiny test model installed as `htdemucs`), in a
temporary directory that holds the repository's examples/ folder:

  * `API=...` lines of a block are kept, with SEP_PORT set to the stack's port, so
    `${SEP_PORT:-8080}` resolves to it;
  * `<id>` is the id of the first job a command of the same block created;
  * a command that fetches a stem first waits until that job is completed;
  * each command must exit 0 and get a 2xx answer (curl's `%{http_code}`).

Also checks that the error codes the module sends are the ones in the table of
ngx_module/README.md ("Error codes"), that the root README's status list matches that
table, and that no README example posts a raw body without a Content-Type.
One line per case, `CASES: ...` and `PASS`/`FAIL` at the end.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, os.path.join(REPO, "tests", "workerd"))

import harness  # noqa: E402
from harness import expect  # noqa: E402

DOCS = ["README.md", "ngx_module/README.md", "workerd/README.md"]
cases = harness.Cases()
localstack = harness.localstack


def sh_blocks(doc):
    """(first line number, [(line number, command)]) of each ```sh block of doc, with
    backslash continuations joined."""
    blocks, inside, cmds, pending, start = [], False, [], None, 0
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.rstrip("\n")
            if not inside and text.strip() in ("```sh", "```bash", "```console"):
                inside, cmds, pending, start = True, [], None, n
                continue
            if inside and text.strip() == "```":
                inside = False
                blocks.append((start, cmds))
                continue
            if not inside:
                continue
            if pending is not None:
                pending = (pending[0], pending[1] + " " + text.strip())
            else:
                pending = (n, text.strip())
            if pending[1].endswith("\\"):
                pending = (pending[0], pending[1][:-1].rstrip())
                continue
            cmds.append(pending)
            pending = None
    return blocks


def strip_comment(cmd):
    """The command without a trailing `  # comment` (the READMEs' style)."""
    return re.sub(r"\s{2,}#\s.*$", "", cmd).strip()


def curl_examples():
    """[(doc, line, [(line, command)] of the block)] for each block with a curl line."""
    found = []
    for doc in DOCS:
        for start, cmds in sh_blocks(doc):
            kept = [(n, strip_comment(c)) for n, c in cmds
                    if c.startswith("curl ") or re.match(r"^[A-Z_]+=\S+$", c)]
            if any(c.startswith("curl ") for _, c in kept):
                found.append((doc, start, kept))
    return found


class Live:
    """The stack the examples run against, and the directory they run in."""

    def __init__(self):
        import test_workerd  # tests/workerd/test_workerd.py: stack + supervisors

        self.svc = test_workerd.Service().start()
        self.svc.start_workerd("docs")
        self.cwd = tempfile.mkdtemp(prefix="sep-docs-")
        os.symlink(os.path.join(REPO, "examples"), os.path.join(self.cwd, "examples"))

    @property
    def port(self):
        return self.svc.stack.port

    def run(self, assignments, cmd):
        script = "\n".join(assignments + [cmd + " -w '\\n__HTTP__%{http_code}'"])
        env = dict(os.environ, SEP_PORT=str(self.port))
        return subprocess.run(["bash", "-c", script], cwd=self.cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)

    def wait_completed(self, job_id, timeout=60):
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            resp = harness.request(self.port, "GET", "/v1/jobs/" + job_id)
            status = resp.json and resp.json.get("status")
            if status in ("completed", "failed", "canceled"):
                return status
            time.sleep(0.1)
        return status

    def stop(self):
        self.svc.stop()
        shutil.rmtree(self.cwd, ignore_errors=True)


def run_block(live, doc, start, cmds):
    assignments, first_id, ran = [], None, 0
    for n, cmd in cmds:
        if not cmd.startswith("curl "):
            assignments.append(cmd)
            continue
        if "<id>" in cmd:
            expect(first_id, "%s:%d uses <id> before any command of its block made a job"
                   % (doc, n))
            cmd = cmd.replace("<id>", first_id)
            if "/stems/" in cmd:
                status = live.wait_completed(first_id)
                expect(status == "completed", "%s:%d: job %s is %s, not completed"
                       % (doc, n, first_id, status), live.svc.log("docs")[-1500:])
        res = live.run(assignments, cmd)
        out = res.stdout.decode(errors="replace")
        body, _, code = out.rpartition("\n__HTTP__")
        expect(res.returncode == 0, "%s:%d: curl exited %d" % (doc, n, res.returncode), cmd,
               res.stderr.decode(errors="replace")[-500:])
        expect(code.isdigit() and 200 <= int(code) < 300,
               "%s:%d: answered %s, not 2xx" % (doc, n, code), cmd, body[:400])
        if first_id is None:
            try:
                first_id = json.loads(body).get("id")
            except ValueError:
                pass
        ran += 1
    return ran


@cases.case
def every_curl_example_answers_as_written(_):
    blocks = curl_examples()
    expect(blocks, "no curl example found in " + ", ".join(DOCS))
    live = Live()
    try:
        ran = sum(run_block(live, doc, start, cmds) for doc, start, cmds in blocks)
    finally:
        live.stop()
    return "%d commands in %d blocks" % (ran, len(blocks))


@cases.case
def raw_body_examples_name_their_content_type(_):
    bad = []
    for doc in DOCS:
        for _, cmds in sh_blocks(doc):
            for n, cmd in cmds:
                if cmd.startswith("curl ") and "--data-binary" in cmd and \
                        "Content-Type" not in cmd:
                    bad.append("%s:%d" % (doc, n))
    expect(not bad, "raw-body examples without -H 'Content-Type: ...' (they get 415)", bad)


def module_error_codes():
    """(status, code) of every error the module's C sources send."""
    codes = set()
    status_names = {
        "BAD_REQUEST": 400, "UNAUTHORIZED": 401, "FORBIDDEN": 403, "NOT_FOUND": 404, "NOT_ALLOWED": 405, "REQUEST_TIME_OUT": 408,
        "CONFLICT": 409, "LENGTH_REQUIRED": 411, "REQUEST_ENTITY_TOO_LARGE": 413,
        "REQUEST_URI_TOO_LARGE": 414, "UNSUPPORTED_MEDIA_TYPE": 415,
        "RANGE_NOT_SATISFIABLE": 416, "TOO_MANY_REQUESTS": 429,
        "INTERNAL_SERVER_ERROR": 500, "NOT_IMPLEMENTED": 501, "SERVICE_UNAVAILABLE": 503,
        "VERSION_NOT_SUPPORTED": 505, "INSUFFICIENT_STORAGE": 507,
        "REQUEST_HEADER_TOO_LARGE": 400}  # nginx's 494, sent as 400
    src_dir = os.path.join(REPO, "ngx_module")
    for name in sorted(os.listdir(src_dir)):
        if not name.endswith(".c"):
            continue
        with open(os.path.join(src_dir, name)) as f:
            text = f.read()
        # ngx_http_sep_send_error / _refuse / _spool_refuse / _form_refuse (r, STATUS, "code"
        for m in re.finditer(r"NGX_HTTP_([A-Z_]+),\s*\"([a-z]+(?:_[a-z]+)+)\"", text):
            if m.group(1) in status_names:
                codes.add((status_names[m.group(1)], m.group(2)))
        # the status -> code switch of nginx's own errors
        for m in re.finditer(r"case NGX_HTTP_([A-Z_]+):\s*code = \"([a-z_]+)\"", text):
            codes.add((status_names[m.group(1)], m.group(2)))
    return codes


def documented_error_codes():
    with open(os.path.join(REPO, "ngx_module", "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("### Error codes", 1)[1].split("\n### ", 1)[0]
    documented = set()
    for m in re.finditer(r"^\| (\d{3}) \| ([^|]+) \|", section, re.M):
        for code in re.findall(r"`([a-z_]+)`", m.group(2)):
            documented.add((int(m.group(1)), code))
    return documented


@cases.case
def error_codes_table_matches_the_module(_):
    sent, documented = module_error_codes(), documented_error_codes()
    expect(len(sent) > 20, "too few codes found in ngx_module/*.c", sorted(sent))
    missing = sorted(sent - documented)
    expect(not missing, "codes the module sends that ngx_module/README.md's table lacks",
           missing)
    # 416 comes from nginx itself (stems location) as http_error; the rest must be sent
    extra = sorted(c for c in documented - sent if c != (416, "http_error"))
    expect(not extra, "codes in the table that the module never sends", extra)
    return "%d codes" % len(documented)


@cases.case
def root_readme_status_list_matches_the_table(_):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"matching status \(([\d, ]+)\)", text)
    expect(m, "README.md: no 'matching status (...)' list")
    listed = {int(s) for s in m.group(1).replace(",", " ").split()}
    table = {status for status, _ in documented_error_codes()}
    expect(listed == table, "README.md's status list differs from ngx_module/README.md's table",
           "only in README: %s" % sorted(listed - table),
           "only in the table: %s" % sorted(table - listed))


def _raw(port, data, timeout=8):
    import socket
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(timeout)
    s.sendall(data)
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out


def _table_row(status, code):
    with open(os.path.join(REPO, "ngx_module", "README.md"), encoding="utf-8") as f:
        section = f.read().split("### Error codes", 1)[1].split("\n### ", 1)[0]
    m = re.search(r"^\| %d \| `%s` \|.*$" % (status, code), section, re.M)
    return m.group(0) if m else ""


@cases.case
def header_phase_rows_say_what_nginx_answers(_):
    """400 (bad header), 408 (body timeout) and 414 (request line too long) provoked on a
    live stack: each answer is the table's JSON code, or the table's row says what nginx
    does instead (its HTML page; no answer at all for 408)."""
    def edit(text):
        return text.replace("        client_max_body_size",
                            "        client_body_timeout 1s;\n        client_max_body_size", 1)
    stack = harness.Stack(conf_edit=edit).start()
    try:
        got = {
            400: _raw(stack.port, b"GET /v1/jobs/x HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
            408: _raw(stack.port, b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav"
                      b"\r\nContent-Length: 100\r\n\r\nabc"),
            414: _raw(stack.port, b"GET /v1/jobs/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        }
    finally:
        stack.stop()
    seen = []
    codes = {400: "bad_request", 408: "request_timeout", 414: "uri_too_long"}
    for status, answer in sorted(got.items()):
        code = codes[status]
        row = _table_row(status, code)
        head, _, body = answer.partition(b"\r\n\r\n")
        try:
            sent = json.loads(body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            sent = None
        if not answer:
            expect("without an answer" in row, "%d: nginx closes without an answer, the "
                   "table's row does not say so" % status, row)
            seen.append("%d: no answer" % status)
        elif sent == code:
            seen.append("%d: %s" % (status, code))
        else:
            expect(b"text/html" in head and "HTML page" in row,
                   "%d: the table promises `%s`, nginx answered" % (status, code), row,
                   answer[:200])
            seen.append("%d: HTML" % status)
    return ", ".join(seen)


@cases.case
def spool_layout_matches_a_real_job(_):
    """Each file a completed job leaves in its spool directory matches a line of the
    "Spool layout" block of ngx_module/README.md (operators' scripts and backups go by
    it), and the stems' names are the ones the block gives."""
    import test_workerd

    with open(os.path.join(REPO, "ngx_module", "README.md"), encoding="utf-8") as f:
        block = f.read().split("## Spool layout", 1)[1].split("```", 2)[1]
    patterns = []
    for m in re.finditer(r"^\{spool\}/\{id\}/(\S+)", block, re.M):
        rx = re.escape(m.group(1))
        rx = rx.replace(r"\{stem\}", "(vocals|no_vocals)").replace(r"\{ext\}", "(wav|flac)")
        rx = rx.replace(r"\{tag\}", "[a-z0-9-]{1,100}")
        patterns.append((m.group(1), re.compile(rx + "$")))
    expect(patterns, "no {spool}/{id}/ lines in the Spool layout block", block)
    svc = test_workerd.Service().start()
    try:
        svc.start_workerd("layout")
        resp = harness.request(svc.stack.port, "POST", "/v1/jobs?stems=vocals",
                               harness.wav_bytes(1.0), {"Content-Type": "audio/wav"})
        expect(resp.status == 202, "POST", resp.status, resp.body[:200])
        job = resp.json["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rec = harness.request(svc.stack.port, "GET", "/v1/jobs/" + job).json
            if rec["status"] in ("completed", "failed", "canceled"):
                break
            time.sleep(0.1)
        expect(rec["status"] == "completed", "the job did not complete", rec)
        files = sorted(os.listdir(os.path.join(svc.stack.spool, job)))
    finally:
        svc.stop()
    unmatched = [f for f in files if not any(rx.match(f) for _, rx in patterns)]
    expect(not unmatched, "spool files the layout does not describe",
           unmatched, [p for p, _ in patterns])
    return ", ".join(files)


@cases.case
def service_unit_steps_give_a_working_worker(_):
    """conf/workerd.service's install steps followed: conf/workerd.conf with the settings
    its header says to edit (redis, spool, models_dir; the weights dir stands in for
    /var/lib/sep/models), workerd started from / as systemd does (no WorkingDirectory):
    a job completes. The sample's models_dir is relative, so a step that does not name
    it leaves every job failing model_unavailable."""
    import test_workerd

    with open(os.path.join(REPO, "conf", "workerd.service"), encoding="utf-8") as f:
        steps = "\n".join(l[1:] for l in f.read().splitlines() if l.startswith("#"))
    edit = steps[steps.index("then edit"):].split("\n#")[0] if "then edit" in steps else ""
    with open(os.path.join(REPO, "conf", "workerd.conf"), encoding="utf-8") as f:
        conf = f.read()
    svc = test_workerd.Service().start()
    proc = None
    try:
        values = {"redis": svc.stack.redis_address, "spool": svc.stack.spool,
                  "models_dir": svc.models}
        for key, value in values.items():
            if key in edit:
                conf = re.sub(r"(?m)^%s = .*$" % key, "%s = %s" % (key, value), conf)
        conf = re.sub(r"(?m)^prefix = .*$", "prefix = " + test_workerd.PREFIX, conf)
        path = os.path.join(svc.stack.prefix, "unit-workerd.conf")
        with open(path, "w") as f:
            f.write(conf)
        log = open(os.path.join(svc.stack.prefix, "logs", "unit.log"), "ab")
        proc = subprocess.Popen([test_workerd.WORKERD, "run", "-c", path], cwd="/",
                                stdout=log, stderr=log)
        log.close()
        resp = harness.request(svc.stack.port, "POST", "/v1/jobs", harness.wav_bytes(1.0),
                               {"Content-Type": "audio/wav"})
        job = resp.json["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rec = harness.request(svc.stack.port, "GET", "/v1/jobs/" + job).json
            if rec["status"] in ("completed", "failed", "canceled"):
                break
            time.sleep(0.1)
        expect(rec["status"] == "completed", "the unit's steps give a worker whose job ends",
               rec["status"], rec.get("error"), "edited: %s" % [k for k in values if k in edit])
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
        svc.stop()


@cases.case
def limit_req_rows_say_what_nginx_answers(_):
    """A `limit_req` in the API's location at nginx's default status: the refusal is 503
    `unavailable` without Retry-After, not 429. The table's 429 `too_many_requests` row
    must say it needs `limit_req_status 429`, the 503 `unavailable` row that it is the
    default and carries no Retry-After, and README.md must not say every 503 carries
    `Retry-After: 1`."""
    def edit(text):
        text = text.replace("    server {", "    limit_req_zone $binary_remote_addr "
                            "zone=docs:1m rate=1r/m;\n    server {", 1)
        return text.replace("            sep_api;", "            sep_api;\n"
                            "            limit_req zone=docs nodelay;", 1)
    stack = harness.Stack(conf_edit=edit).start()
    try:
        for _ in range(3):  # the startup probe may have taken the one allowed request
            resp = stack.request("GET", "/v1/jobs/00000000-0000-4000-8000-000000000000")
    finally:
        stack.stop()
    code = resp.json and resp.json.get("error", {}).get("code")
    expect(resp.status == 503 and code == "unavailable", "limit_req's default refusal",
           resp.status, resp.body[:200])
    row429, row503 = _table_row(429, "too_many_requests"), _table_row(503, "unavailable")
    expect("limit_req_status 429" in row429, "the 429 row does not say it needs "
           "limit_req_status 429", row429)
    retry = resp.header("retry-after")
    expect("default" in row503 and (retry or "no `Retry-After`" in row503),
           "the 503 unavailable row does not say what nginx sends by default", row503)
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    expect("A 503 means the job store" not in text, "README.md says every 503 is the job "
           "store's (with Retry-After: 1)")


@cases.case
def nginx_and_workerd_as_two_users(_):
    """The production split the docs describe: nginx's workers as www-data, workerd as
    another user in the group www-data (conf/workerd.service: User=sep, Group=www-data),
    the spool group-writable, nginx started with the umask the install steps give it
    (conf/README.md; systemd's default 0022 when they name none). A job completes: its
    directory, made by nginx, lets workerd write the stems and remove the files."""
    import grp
    import pwd
    import test_workerd

    if os.geteuid() != 0:
        return "skipped: not root"
    try:
        www = pwd.getpwnam("www-data")
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return "skipped: no www-data or nobody user"
    with open(os.path.join(REPO, "conf", "README.md"), encoding="utf-8") as f:
        m = re.search(r"UMask=(0[0-7]{3})", f.read())
    umask = int(m.group(1), 8) if m else 0o022
    svc = test_workerd.Service()
    stack = svc.stack
    proc = None
    try:
        os.chmod(stack.prefix, 0o755)
        localstack.make_prefix_dirs(stack.prefix)
        os.chown(stack.spool, www.pw_uid, www.pw_gid)
        os.chmod(stack.spool, 0o2775)
        stack.redis_tcp = True
        stack.start_redis()
        stack.values["REDIS"] = stack.redis_address
        stack.values["USER"] = "user www-data www-data;"
        old = os.umask(umask)
        try:
            stack.port, stack.nginx_proc = localstack.start_nginx_on_free_port(
                stack.prefix, stack.conf_path, stack.render_conf)
        finally:
            os.umask(old)

        def as_workerd_user():
            os.setgroups([www.pw_gid])
            os.setgid(www.pw_gid)
            os.setuid(nobody)
            os.umask(0o002)  # conf/workerd.service: UMask=0002

        # a copy of the binary in the prefix: the checkout may sit in a folder only its
        # owner can enter (as mktemp -d makes)
        workerd = os.path.join(stack.prefix, "workerd")
        shutil.copy(test_workerd.WORKERD, workerd)
        os.chmod(workerd, 0o755)
        # and the model, which the service links from the checkout
        model = os.path.join(svc.models, "htdemucs.safetensors")
        real = os.path.realpath(model)
        os.unlink(model)
        shutil.copy(real, model)
        os.chmod(model, 0o644)
        log = open(os.path.join(stack.prefix, "logs", "two-users.log"), "ab")
        proc = subprocess.Popen(
            [workerd, "run", "--redis", stack.redis_address, "--prefix",
             test_workerd.PREFIX, "--spool", stack.spool, "--models-dir", svc.models,
             "--name", "two-users", "--retry-backoff-base", "100ms",
             "--retry-backoff-max", "200ms"], stdout=log, stderr=log,
            preexec_fn=as_workerd_user)
        log.close()
        resp = harness.request(stack.port, "POST", "/v1/jobs", harness.wav_bytes(1.0),
                               {"Content-Type": "audio/wav"})
        expect(resp.status == 202, "POST as www-data", resp.status, resp.body[:200])
        job = resp.json["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rec = harness.request(stack.port, "GET", "/v1/jobs/" + job).json
            if rec["status"] in ("completed", "failed", "canceled"):
                break
            time.sleep(0.1)
        mode = oct(os.stat(os.path.join(stack.spool, job)).st_mode & 0o777)
        expect(rec["status"] == "completed", "the job did not complete (nginx umask %03o, job "
               "dir %s)" % (umask, mode), rec["status"], rec.get("error"))
        return "nginx umask %03o, job dir %s" % (umask, mode)
    finally:
        if proc:
            proc.terminate()
            proc.wait(30)
        svc.stop()


@cases.case
def root_readme_record_fields_match_a_record(_):
    """README.md's "Job record:" field list names exactly the top-level fields of a real
    record (a client written from it finds every field where it says, options included)."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    listed = text.split("Job record: `", 1)[1].split("`", 1)[0]
    # top-level names: drop the {...} and (...) groups
    flat = listed
    while True:
        stripped = re.sub(r"\{[^{}]*\}|\([^()]*\)", "", flat)
        if stripped == flat:
            break
        flat = stripped
    names = {n.strip() for n in flat.split(",") if n.strip()}
    stack = harness.Stack().start()
    try:
        resp = stack.request("POST", "/v1/jobs?stems=vocals", harness.wav_bytes(),
                             {"Content-Type": "audio/wav"})
    finally:
        stack.stop()
    expect(resp.status == 202, "POST", resp.status, resp.body[:200])
    keys = set(resp.json)
    expect(names == keys, "README.md's record fields differ from a record's",
           "only in README: %s" % sorted(names - keys), "only in the record: %s"
           % sorted(keys - names))
    opts = re.search(r"options \{([^}]*)\}", listed)
    expect(opts and {o.strip() for o in opts.group(1).split(",")} == set(resp.json["options"]),
           "README.md's options list differs", opts and opts.group(1),
           sorted(resp.json["options"]))
    return "%d fields" % len(keys)


def main(argv):
    if not os.path.exists(harness.localstack.MODULE_SO):
        print("FAIL: %s is not built (make)" % harness.localstack.MODULE_SO)
        return 1
    return cases.run(None, only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
