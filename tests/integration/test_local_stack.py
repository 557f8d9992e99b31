#!/usr/bin/python3
"""Tests `make run` / `make stop` (conf/run-local, conf/stop-local) and conf/ itself.

Runs the real scripts on a temporary run directory and free loopback ports
(SEP_RUN_DIR, SEP_PORT, SEP_REDIS_PORT), so a `make run` of the developer is never
touched: starting twice must not start duplicates, the service must answer JSON,
stopping must end every process and be harmless when repeated. Also checks that
conf/nginx.conf is the rendering of conf/nginx.conf.in. Prints one line per case and
`PASS: N cases`; exits non-zero on any failure. Everything started is stopped even when
a case fails or the run is interrupted.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
from harness import expect  # noqa: E402

localstack = harness.localstack
CONF = os.path.join(harness.REPO_ROOT, "conf")
cases = harness.Cases()


class LocalRun:
    """A run directory + ports for conf/run-local, with stop + removal on exit."""

    def __init__(self):
        self.prefix = tempfile.mkdtemp(prefix="sep-run-")
        self._stopped = False
        self.new_ports()
        harness.atexit.register(self.stop)

    def new_ports(self):
        """Ports outside the ephemeral range (localstack.pick_port)."""
        self.port = localstack.pick_port()
        self.redis_port = localstack.pick_port()
        self.env = dict(os.environ, SEP_RUN_DIR=self.prefix, SEP_PORT=str(self.port),
                        SEP_REDIS_PORT=str(self.redis_port), SEP_FETCH_WEIGHTS="0",
                        SEP_RUN_REGISTRY=os.path.join(self.prefix, "local-runs"))

    def start(self, attempts=5):
        """run-local; when another process took the HTTP port first (run-local refuses
        a taken port, or nginx's bind fails), again on new ports, at most `attempts`."""
        for attempt in range(1, attempts + 1):
            res = self.script("run-local")
            out = res.stdout or ""
            if res.returncode == 0 or attempt == attempts or not (
                    "is taken by another process" in out or "Address already in use" in out):
                return res
            print("port %d was taken; retrying run-local on other ports (%d/%d)"
                  % (self.port, attempt, attempts), flush=True)
            self.script("stop-local")
            self.new_ports()

    def script(self, name, env=None):
        return subprocess.run([sys.executable, os.path.join(CONF, name)], env=env or self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=120)

    def pids(self):
        return {
            "nginx": localstack.read_pid(os.path.join(self.prefix, "nginx.pid")),
            "redis": localstack.read_pid(os.path.join(self.prefix, "redis", "redis.pid")),
        }

    def processes_using_prefix(self):
        """pids of live processes whose command line mentions the run directory."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.prefix in cmd and localstack.pid_alive(int(entry)):
                found.append((int(entry), cmd.strip()))
        return found

    def error_log_tail(self):
        try:
            with open(os.path.join(self.prefix, "logs", "error.log")) as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return ""

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        with harness.signals_held():
            try:
                self.script("stop-local")
            finally:
                shutil.rmtree(self.prefix, ignore_errors=True)


@cases.case
def sample_conf_up_to_date(run):
    res = subprocess.run([sys.executable, os.path.join(CONF, "render-sample"), "--check"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    expect(res.returncode == 0, res.stdout.strip())


@cases.case
def sample_conf_documents_every_directive(run):
    """Every sep_* directive the module defines is in the template, under a comment."""
    import glob
    import re

    names = set()
    for path in glob.glob(os.path.join(harness.REPO_ROOT, "ngx_module", "*.c")):
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r'ngx_string\("(sep_[a-z_]+)"\)', f.read()))
    expect(names, "no directives found in ngx_module/*.c")
    with open(os.path.join(CONF, "nginx.conf.in"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    undocumented = []
    for name in sorted(names):
        at = [i for i, line in enumerate(lines) if re.match(r"\s*%s\b" % name, line)]
        if not at or not lines[at[0] - 1].strip().startswith("#") \
                and not lines[at[0] - 1].strip().endswith("{"):
            undocumented.append(name)
    expect(not undocumented, "directives missing or without a comment in "
           "conf/nginx.conf.in: %s" % undocumented)
    return "%d directives" % len(names)


@cases.case
def run_refuses_a_taken_port(run):
    """With the HTTP port taken by someone else, nothing is started at all."""
    import socket

    with socket.socket() as other:
        other.bind(("127.0.0.1", run.port))
        other.listen()
        res = run.script("run-local")
    expect(res.returncode != 0, "run-local should fail on a taken port", res.stdout)
    expect("taken" in res.stdout + (res.stderr or ""), "no reason given", res.stdout)
    expect(not any(localstack.pid_alive(p) for p in run.pids().values()),
           "something was started: %s" % run.pids())


@cases.case
def run_starts_and_answers(run):
    res = run.start()
    expect(res.returncode == 0, "run-local failed:\n" + res.stdout + run.error_log_tail())
    expect("http://127.0.0.1:%d" % run.port in res.stdout, "URL not printed", res.stdout)
    expect("curl" in res.stdout, "no curl example printed", res.stdout)
    got = localstack.http_json_answer(run.port, "/v1/jobs/" + str(uuid.uuid4()))
    expect(got is not None and got[0] == 404, "unknown job should be a JSON 404", got)
    for name, pid in run.pids().items():
        expect(localstack.pid_alive(pid), "%s is not running (pid %r)" % (name, pid))


@cases.case
def run_twice_no_duplicates(run):
    first = run.pids()
    before = sorted(p for p, _ in run.processes_using_prefix())
    res = run.script("run-local")
    expect(res.returncode == 0, "second run-local failed:\n" + res.stdout)
    expect("already running" in res.stdout, "second run should say it is running",
           res.stdout)
    expect(run.pids() == first, "pids changed: %s -> %s" % (first, run.pids()))
    after = sorted(p for p, _ in run.processes_using_prefix())
    expect(after == before, "processes changed: %s -> %s" % (before, after))


@cases.case
def submit_through_local_run(run):
    wav = harness.wav_bytes(0.1)
    resp = harness.request(run.port, "POST", "/v1/jobs", body=wav,
                           headers={"Content-Type": "audio/wav"})
    expect(resp.status == 202, "POST on the local run: %d" % resp.status, resp)


@cases.case
def stop_ends_everything(run):
    pids = run.pids()
    res = run.script("stop-local")
    expect(res.returncode == 0, "stop-local failed:\n" + res.stdout)
    for name, pid in pids.items():
        expect(not localstack.pid_alive(pid), "%s (pid %r) still runs after stop" % (name, pid))
    left = run.processes_using_prefix()
    expect(not left, "processes left after stop: %s" % left)
    expect(localstack.port_is_free(run.port), "port %d still taken after stop" % run.port)


@cases.case
def stop_again_is_harmless(run):
    res = run.script("stop-local")
    expect(res.returncode == 0, "second stop-local failed:\n" + res.stdout)
    expect("nothing was running" in res.stdout, "second stop should find nothing", res.stdout)


@cases.case
def servers_retry_a_taken_port(run):
    """localstack draws ports outside the ephemeral range; a server whose port was taken
    in the meantime (nginx and redis-server both) is started again on another one."""
    import socket

    low, high = localstack.ephemeral_port_range()
    drawn = [localstack.pick_port() for _ in range(200)]
    expect(all(p >= 10000 and not low <= p <= high for p in drawn),
           "a port in the ephemeral range %d-%d was drawn" % (low, high),
           [p for p in drawn if low <= p <= high][:5])
    prefix = tempfile.mkdtemp(prefix="sep-port-")
    real_pick = localstack.pick_port
    procs, logged = [], []
    with socket.socket() as other:
        other.bind(("127.0.0.1", real_pick()))
        other.listen()
        taken = other.getsockname()[1]
        picks = iter([taken])
        localstack.pick_port = lambda: next(picks, None) or real_pick()
        try:
            localstack.make_prefix_dirs(prefix)
            redis_port, proc = localstack.start_redis_tcp(prefix, log=logged.append)
            procs.append(proc)
            picks = iter([taken])
            values = localstack.local_values(prefix, 0, "127.0.0.1:%d" % redis_port)

            def render(port):
                values["LISTEN"] = "127.0.0.1:%d" % port
                return localstack.render_nginx_conf(values)
            port, proc = localstack.start_nginx_on_free_port(
                prefix, os.path.join(prefix, "nginx.conf"), render, log=logged.append)
            procs.append(proc)
        finally:
            localstack.pick_port = real_pick
            for proc in procs:
                localstack.stop_process(proc)
            shutil.rmtree(prefix, ignore_errors=True)
    expect(taken not in (redis_port, port), "a server got the taken port %d" % taken)
    expect(len(logged) == 2 and all("port %d was taken" % taken in m for m in logged),
           "each retry is logged once", logged)
    return "redis %d, nginx %d after %d taken" % (redis_port, port, taken)


@cases.case
def run_refuses_a_taken_redis_port(run):
    """An explicit SEP_REDIS_PORT that another process holds is refused, as SEP_PORT is,
    instead of silently becoming another port; nothing is left running."""
    import socket

    other = LocalRun()
    try:
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", other.redis_port))
            holder.listen()
            res = other.script("run-local")
        out = res.stdout or ""
        expect(res.returncode != 0, "run-local started with SEP_REDIS_PORT taken", out)
        expect("SEP_REDIS_PORT" in out and "is taken" in out and str(other.redis_port) in out,
               "the refusal names the variable and the port", out)
        expect(not other.processes_using_prefix(), "processes left running",
               other.processes_using_prefix())
    finally:
        other.stop()


@cases.case
def plain_stop_finds_a_run_dir_run(run):
    """A run started with SEP_RUN_DIR is stopped by a plain `make stop` (no SEP_RUN_DIR),
    and the banner names the exact stop command."""
    other = LocalRun()
    try:
        res = other.start()
        expect(res.returncode == 0, "run-local failed", res.stdout, other.error_log_tail())
        expect("SEP_RUN_DIR=%s make stop" % other.prefix in res.stdout,
               "the banner names the stop command for this run dir", res.stdout)
        expect(other.processes_using_prefix(), "nothing runs in the run dir")
        env = dict(other.env)
        del env["SEP_RUN_DIR"]
        res = other.script("stop-local", env=env)
        expect(res.returncode == 0, "stop-local failed", res.stdout)
        expect("stopped the run in %s" % other.prefix in res.stdout, "stop says which run",
               res.stdout)
        left = other.processes_using_prefix()
        expect(not left, "a plain stop left processes of the SEP_RUN_DIR run", left)
    finally:
        other.stop()


@cases.case
def run_as_root_drops_workers_to_nobody(run):
    """Started as root, nginx's workers run as nobody (who owns the spool) when nobody can
    reach the run directory and web/; uploads, reads and deletes still work. When nobody
    cannot reach them, the workers stay root and run-local says so."""
    import pwd

    if os.geteuid() != 0:
        return "skipped: not root"
    other = LocalRun()
    try:
        os.chmod(other.prefix, 0o755)
        web = os.path.join(harness.REPO_ROOT, "web", "player.html")
        reachable = localstack.user_can_reach("nobody", "nogroup", [other.prefix, web])
        res = other.start()
        expect(res.returncode == 0, "run-local failed", res.stdout, other.error_log_tail())
        master = other.pids()["nginx"]
        workers = [int(p) for p in os.listdir("/proc") if p.isdigit()
                   and _ppid(int(p)) == master]
        uids = {_uid(p) for p in workers}
        if not reachable:
            expect("warning: the user nobody cannot reach" in res.stdout,
                   "run-local says why the workers stay root", res.stdout)
            expect(uids == {0}, "workers should stay root", uids)
            return "nobody cannot reach %s: workers stay root, as said" % harness.REPO_ROOT
        nobody = pwd.getpwnam("nobody").pw_uid
        expect(workers and uids == {nobody}, "nginx workers should run as nobody", uids)
        body = harness.wav_bytes()
        resp = harness.request(other.port, "POST", "/v1/jobs", body,
                               {"Content-Type": "audio/wav"})
        expect(resp.status == 202, "POST as nobody", resp.status, resp.body[:300],
               other.error_log_tail())
        job = resp.json["id"]
        resp = harness.request(other.port, "GET", "/ui/player.html")
        expect(resp.status == 200, "the player page is readable by nobody", resp.status)
        # workerd (root) takes the job; without weights it fails at once. Then the
        # module, as nobody, deletes the finished job's files.
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            resp = harness.request(other.port, "GET", "/v1/jobs/" + job)
            if resp.json and resp.json.get("status") in ("completed", "failed", "canceled"):
                break
            time.sleep(0.2)
        resp = harness.request(other.port, "DELETE", "/v1/jobs/" + job)
        expect(resp.status == 200 and not os.path.exists(
            os.path.join(other.prefix, "spool", job)),
               "DELETE removes the upload as nobody", resp.status, resp.body[:300])
        return "%d workers as nobody" % len(workers)
    finally:
        other.stop()


@cases.case
def run_refuses_a_run_dir_nginx_cannot_hold(run):
    """A SEP_RUN_DIR with a space (nginx.conf takes the run dir's paths bare) is refused
    before anything starts, naming SEP_RUN_DIR; no nginx -t failure after Redis started,
    no Redis left running."""
    other = LocalRun()
    base = other.prefix
    try:
        other.prefix = os.path.join(base, "my runs")
        other.env["SEP_RUN_DIR"] = other.prefix
        res = other.script("run-local")
        out = res.stdout or ""
        expect(res.returncode != 0, "run-local started in a run dir with a space", out)
        expect("SEP_RUN_DIR" in out and "nginx -t failed" not in out,
               "refused up front, naming SEP_RUN_DIR", out)
        redis = localstack.read_pid(os.path.join(other.prefix, "redis", "redis.pid"))
        expect(not (redis and localstack.pid_alive(redis)), "redis left running", out)
    finally:
        other.stop()
        shutil.rmtree(base, ignore_errors=True)


@cases.case
def stop_after_run_dir_deleted(run):
    """`rm -rf` of a run directory while its run is up, then a plain `make stop`: the
    processes are found without their pid files (nginx's -p, workerd's --spool, Redis'
    working directory) and stopped, not left holding the ports."""
    other = LocalRun()
    registry_dir = tempfile.mkdtemp(prefix="sep-runs-")  # .local-runs lives outside
    other.env["SEP_RUN_REGISTRY"] = os.path.join(registry_dir, "local-runs")
    pids = {}
    try:
        res = other.start()
        expect(res.returncode == 0, "run-local failed", res.stdout, other.error_log_tail())
        pids = {k: v for k, v in other.pids().items() if v}
        workerd = localstack.read_pid(os.path.join(other.prefix, "workerd.pid"))
        if workerd:
            pids["workerd"] = workerd
        shutil.rmtree(other.prefix)
        env = dict(other.env)
        del env["SEP_RUN_DIR"]
        res = other.script("stop-local", env=env)
        alive = {k: p for k, p in pids.items() if localstack.pid_alive(p)}
        expect(not alive, "processes of the deleted run dir left running", alive, res.stdout)
        return "stopped %s" % sorted(pids)
    finally:
        for pid in pids.values():
            if localstack.pid_alive(pid):
                os.kill(pid, 15)
        os.makedirs(other.prefix, exist_ok=True)
        other.stop()
        shutil.rmtree(registry_dir, ignore_errors=True)


@cases.case
def run_again_refuses_another_redis_port(run):
    """A second run-local on the same run dir with another explicit SEP_REDIS_PORT is
    refused naming it (as another SEP_PORT is), not answered "already running" on the
    old port with status 0."""
    other = LocalRun()
    try:
        res = other.start()
        expect(res.returncode == 0, "run-local failed", res.stdout, other.error_log_tail())
        env = dict(other.env, SEP_REDIS_PORT=str(localstack.pick_port()))
        res = other.script("run-local", env=env)
        expect(res.returncode != 0 and "SEP_REDIS_PORT" in res.stdout,
               "another SEP_REDIS_PORT was not refused", res.stdout)
    finally:
        other.stop()


@cases.case
def run_refuses_port_values_that_are_no_port(run):
    """SEP_PORT / SEP_REDIS_PORT that are no TCP port: one `run:` line naming the
    variable, no traceback, nothing started."""
    for var, value in (("SEP_PORT", "80a"), ("SEP_PORT", "70000"), ("SEP_PORT", "0"),
                       ("SEP_REDIS_PORT", "abc"), ("SEP_REDIS_PORT", "0"),
                       ("SEP_REDIS_PORT", "65536")):
        other = LocalRun()
        try:
            res = other.script("run-local", env=dict(other.env, **{var: value}))
            out = res.stdout or ""
            redis = localstack.read_pid(os.path.join(other.prefix, "redis", "redis.pid"))
            expect(res.returncode != 0 and "Traceback" not in out and var in out,
                   "%s=%s: no one-line refusal" % (var, value), out)
            expect(not (redis and localstack.pid_alive(redis))
                   and not other.processes_using_prefix(),
                   "%s=%s: something was left running" % (var, value), out)
        finally:
            other.stop()


@cases.case
def banner_examples_answer_as_written(run):
    """The curl lines run-local prints after it started (the first thing a new operator
    copies), run as printed from the checkout (where `make run` runs): the upload is
    accepted (202), then the status read answers the job. A file the checkout does not
    have (song.wav) makes curl fail before it sends anything."""
    import re
    import subprocess as sp

    other = LocalRun()
    try:
        res = other.start()
        expect(res.returncode == 0, "run-local failed", res.stdout, other.error_log_tail())
        lines = [l.strip() for l in res.stdout.splitlines() if l.strip().startswith("curl ")]
        expect(len(lines) >= 2, "no curl examples in the banner", res.stdout)
        # `workerd inspect` as printed reaches this run's Redis (it sees the upload below)
        inspect = [l.strip() for l in res.stdout.splitlines()
                   if l.strip().startswith("build/workerd inspect")]
        expect(inspect or not os.path.exists(os.path.join(harness.REPO_ROOT, "build", "workerd")),
               "the banner does not say how to inspect this run's queues", res.stdout)
        job = None
        for line in lines:
            if "<id>" in line:
                if job is None or "-o " in line:
                    continue  # a stem exists only once the job completed
                line = line.replace("<id>", job)
            out = sp.run(["bash", "-c", line + " -w '\\n%{http_code}'"], cwd=harness.REPO_ROOT,
                         stdout=sp.PIPE, stderr=sp.PIPE, text=True, timeout=30)
            status = out.stdout.rsplit("\n", 1)[-1]
            expect(out.returncode == 0 and status in ("200", "202"),
                   "banner example failed: %s" % line, out.returncode, out.stdout[-300:],
                   out.stderr[-300:])
            m = re.search(r'"id":"([0-9a-f-]{36})"', out.stdout)
            job = job or (m and m.group(1))
        expect(job, "no job id from the banner's upload example", lines)
        for line in inspect:
            out = sp.run(["bash", "-c", line], cwd=harness.REPO_ROOT, stdout=sp.PIPE,
                         stderr=sp.STDOUT, text=True, timeout=30)
            expect(out.returncode == 0 and "Connection refused" not in out.stdout,
                   "banner example failed: %s" % line, out.stdout[-500:])
        return "%d examples" % (len(lines) + len(inspect))
    finally:
        other.stop()


@cases.case
def run_uses_sep_models(run):
    """README: weights are in models/weights/ "(or $SEP_MODELS)", where models/get-weights
    writes them when it is set. `make run` with SEP_MODELS naming a folder that holds the
    model: the workerd it starts loads it from there and a job completes (it looked in
    models/weights only, so every job failed model_unavailable)."""
    import time

    other = LocalRun()
    try:
        models = os.path.join(other.prefix, "my-models")
        os.makedirs(models)
        os.symlink(os.path.join(harness.REPO_ROOT, "tests", "fixtures", "apply",
                                "tiny_apply.safetensors"),
                   os.path.join(models, "htdemucs.safetensors"))
        other.env["SEP_MODELS"] = models
        res = other.start()
        expect(res.returncode == 0, "run-local failed", res.stdout, other.error_log_tail())
        if "workerd started" not in res.stdout:
            return "skipped: workerd run is not built"
        resp = harness.request(other.port, "POST", "/v1/jobs", harness.wav_bytes(1.0),
                               {"Content-Type": "audio/wav"})
        expect(resp.status == 202, "POST", resp.status, resp.body[:200])
        job = resp.json["id"]
        deadline = time.monotonic() + 60
        rec = {}
        while time.monotonic() < deadline:
            rec = harness.request(other.port, "GET", "/v1/jobs/" + job).json
            if rec.get("status") in ("completed", "failed", "canceled"):
                break
            time.sleep(0.2)
        expect(rec.get("status") == "completed", "the job did not complete with SEP_MODELS",
               rec.get("status"), rec.get("error"))
    finally:
        other.stop()


@cases.case
def clean_keeps_the_run_record(run):
    """`make clean` (rm -rf build/) must not delete the record of runs: with it gone a
    plain `make stop` no longer finds runs made with SEP_RUN_DIR, which keep running. The
    default record is outside what `make -n clean` removes, and not tracked by git."""
    import subprocess as sp

    env = {k: v for k, v in os.environ.items() if k != "SEP_RUN_REGISTRY"}
    registry = sp.run([sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
                       "import localstack; print(localstack.run_registry())" % CONF],
                      env=env, stdout=sp.PIPE, text=True).stdout.strip()
    dry = sp.run(["make", "-n", "clean"], cwd=harness.REPO_ROOT, stdout=sp.PIPE,
                 stderr=sp.STDOUT, text=True).stdout
    removed = [w for line in dry.splitlines() if line.startswith("rm ")
               for w in line.split()[1:] if not w.startswith("-")]
    hit = [w for w in removed
           if os.path.abspath(os.path.join(harness.REPO_ROOT, w)) in
           [os.path.dirname(registry), registry] or
           registry.startswith(os.path.abspath(os.path.join(harness.REPO_ROOT, w)) + "/")]
    expect(not hit, "make clean removes the run record %s" % registry, dry)
    ignored = sp.run(["git", "check-ignore", "-q", registry], cwd=harness.REPO_ROOT)
    expect(ignored.returncode == 0, "the run record is not ignored by git", registry)
    return os.path.relpath(registry, harness.REPO_ROOT)


@cases.case
def redis_users_have_least_privilege(run):
    """`make run`'s Redis has ACL users: nginx's (sep-nginx) and workerd's (sep-workerd)
    may run their own commands and scripts on the key prefix only; the default user needs
    the operator's password. The service works through them: a job is taken by workerd
    (it fails at once without weights: model_unavailable) and read back through nginx."""
    import json
    import time

    import redis as redis_py

    other = LocalRun()
    try:
        res = other.start()
        expect(res.returncode == 0, "run-local failed", res.stdout, other.error_log_tail())
        with open(os.path.join(other.prefix, "redis", "passwords.json")) as f:
            passwords = json.load(f)
        expect(os.stat(os.path.join(other.prefix, "redis", "passwords.json")).st_mode & 0o077
               == 0, "passwords.json is readable by others")

        def client(user=None):
            return redis_py.Redis(host="127.0.0.1", port=other.redis_port, username=user,
                                  password=passwords.get(user or "default") if user != "anon"
                                  else None, socket_timeout=5)

        def refused(conn, *cmd):
            try:
                conn.execute_command(*cmd)
            except redis_py.exceptions.ResponseError as e:
                return "NOPERM" in str(e) or "NOAUTH" in str(e) or "no permissions" in str(e)
            except redis_py.exceptions.AuthenticationError:
                return True
            return False

        nginx, workerd = client("sep-nginx"), client("sep-workerd")
        for conn, name in ((nginx, "sep-nginx"), (workerd, "sep-workerd")):
            expect(refused(conn, "FLUSHALL"), "%s may FLUSHALL" % name)
            expect(refused(conn, "CONFIG", "GET", "*"), "%s may CONFIG GET" % name)
            expect(refused(conn, "KEYS", "*"), "%s may KEYS" % name)
            expect(refused(conn, "SET", "other:key", "1"), "%s may write outside the prefix"
                   % name)
            expect(refused(conn, "EVAL", "return 1", "0"), "%s may EVAL any script" % name)
        expect(refused(nginx, "XREADGROUP", "GROUP", "workers", "x", "STREAMS",
                       "{sep}:q:normal", ">"), "sep-nginx may read the queue as a worker")
        try:
            client("anon").execute_command("GET", "{sep}:stats")
            anon_ok = True
        except (redis_py.exceptions.ResponseError, redis_py.exceptions.AuthenticationError):
            anon_ok = False
        expect(not anon_ok, "a client without a password reads Redis")
        expect(client().ping(), "the operator's default user with its password")

        resp = harness.request(other.port, "POST", "/v1/jobs", harness.wav_bytes(),
                               {"Content-Type": "audio/wav"})
        expect(resp.status == 202, "POST through sep-nginx", resp.status, resp.body[:300],
               other.error_log_tail())
        job = resp.json["id"]
        # the stats script's commands (XLEN, ZCARD, ZRANGE, ...) run as sep-nginx too
        for path in ("/v1/stats", "/metrics", "/v1/models"):
            got = harness.request(other.port, "GET", path)
            expect(got.status == 200, "GET %s through sep-nginx" % path, got.status,
                   got.body[:300], other.error_log_tail())
        if not os.access(os.path.join(harness.REPO_ROOT, "build", "workerd"), os.X_OK):
            return "ACLs hold; workerd not built"
        deadline = time.monotonic() + 30
        rec = {}
        while time.monotonic() < deadline:
            rec = harness.request(other.port, "GET", "/v1/jobs/" + job).json or {}
            if rec.get("status") in ("completed", "failed"):
                break
            time.sleep(0.2)
        expect(rec.get("status") in ("completed", "failed") and
               (rec.get("status") == "completed" or
                (rec.get("error") or {}).get("code") == "model_unavailable"),
               "workerd did not take the job through sep-workerd", rec,
               open(os.path.join(other.prefix, "logs", "workerd.log")).read()[-1500:])
        return "nginx and workerd users refused FLUSHALL/CONFIG/KEYS/EVAL/other keys; job %s" \
            % rec.get("status")
    finally:
        other.stop()


def _proc_status(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _ppid(pid):
    return _proc_status(pid, "PPid")


def _uid(pid):
    return _proc_status(pid, "Uid")


def main(argv):
    if not os.path.exists(localstack.MODULE_SO):
        print("FAIL: %s is not built (make)" % localstack.MODULE_SO)
        return 1
    run = LocalRun()
    harness.install_signal_cleanup(run)
    try:
        return cases.run(run, only=argv[1:])
    finally:
        run.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
