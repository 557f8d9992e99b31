#!/usr/bin/python3
"""The integration suites on sanitized builds (`make test-integration-asan`).

Runs the integration suites in SUITES (the HTTP API, CORS, nginx -t checks, stats,
OpenAPI, event streams, late replies, Redis connection faults) and the cases of
tests/workerd/test_workerd.py in WORKERD_CASES against the ASan + UBSan build of the module (loaded into
Debian's unmodified /usr/sbin/nginx with libasan in LD_PRELOAD) and of workerd, each
suite once, and fails when a sanitizer said anything: a report file (ASan, UBSan and
LeakSanitizer write to log_path=<step>/reports/...), or a line naming a sanitizer or a
"runtime error" in the logs the suites' stacks leave (nginx's error.log, workerd's
logs, copied out through SEP_TEST_LOG_DIR), or "exited on signal" in nginx's error.log.

Before the suites it proves that the check can fail: a probe built with the same flags
(tests/asan/probe.c) overflows a heap block, overflows an int and leaks a block, and an
nginx worker with the sanitized module is sent SIGSEGV; each must leave a report that
the same check finds.

    /usr/bin/python3 tests/asan/run_sanitized.py --module SO --workerd BIN --probe BIN \\
        --preload LIBASAN [--keep]
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SUPPRESSIONS = os.path.join(HERE, "lsan.supp")

# (step name, script, its arguments). The workerd cases: those that run in seconds on
# the sanitized engine (about 5x slower than the plain one) and between them reach the
# module's and workerd's paths: upload to stems, bad inputs, an unknown model, cancel,
# time limits (device workers killed and restarted), priority, Redis and a supervisor
# killed, 200 jobs, inspect/purge, stats, a supervisor dying before complete, a lost
# complete reply. Left out: the cases whose timing assumes the plain engine (a 20-30 s
# job with shifts=5 to be caught mid-run, a drain that must finish a 10 s job).
WORKERD_CASES = [
    "upload_to_stems", "bad_inputs_fail_with_a_code", "unknown_model_is_model_unavailable",
    "cancel_while_running", "time_limits", "priority_order", "redis_killed_mid_run",
    "two_hosts_one_killed", "many_jobs_exactly_once", "inspect_and_purge",
    "stats_metrics_and_models_of_a_real_worker", "regress_01_", "regress_06_",
]
SUITES = [
    ("test_http_api", "tests/integration/test_http_api.py", []),
    ("test_cors", "tests/integration/test_cors.py", []),
    ("test_conf_checks", "tests/integration/test_conf_checks.py", []),
    ("test_stats", "tests/integration/test_stats.py", []),
    ("test_openapi", "tests/integration/test_openapi.py", []),
    ("test_events", "tests/integration/test_events.py", []),
    ("test_late_replies", "tests/integration/test_late_replies.py", []),
    ("test_redis_faults", "tests/integration/test_redis_faults.py", []),
    ("test_workerd", "tests/workerd/test_workerd.py", WORKERD_CASES),
]
# Cases that measure what ASan changes, skipped (SEP_TEST_SKIP): a worker's RSS over
# 1,000 streams grows by ASan's quarantine of freed memory (up to 256 MB by design).
SKIPPED_CASES = ["memory_cycles"]
SUITE_TIMEOUT = 300

# LeakSanitizer is on for workerd and the probe, off for nginx: Debian's nginx leaves
# its own memory behind at every exit (a worker's connection and event arrays, malloc'd
# outside the cycle pool it destroys; the whole configuration cycle of `nginx -t` and
# `nginx -s`), and its stripped binary gives those stacks unnamed frames, so no
# suppression tells them from the module's allocations short of suppressing every
# stack (each one passes through nginx's main). The module's memory over time is
# checked by test-events (worker RSS over 1,000 connect/disconnect cycles).
NGINX_ASAN_LEAKS = "detect_leaks=0"

SANITIZER_LINE = re.compile(r"(Address|Leak|UndefinedBehavior|Thread|Memory)Sanitizer|"
                            r"runtime error: ")
NGINX_CRASH_LINE = re.compile(r"exited on signal \d+")
CASES_LINE = re.compile(r"^CASES: (\d+) passed, (\d+) failed, (\d+) skipped$")


class Step:
    """One run under the sanitizers: its own report directory (log_path) and its own
    directory of saved stack logs, so a finding is attributed to the step that made it."""

    def __init__(self, root, name, opts):
        self.name = name
        self.dir = os.path.join(root, name)
        self.reports = os.path.join(self.dir, "reports")
        self.logs = os.path.join(self.dir, "logs")
        os.makedirs(self.reports)
        os.makedirs(self.logs)
        asan = "detect_leaks=%d:abort_on_error=1:log_path=%s" % (
            opts.leaks, os.path.join(self.reports, "asan"))
        self.env = dict(os.environ)
        self.env.update({
            "ASAN_OPTIONS": asan,
            "LSAN_OPTIONS": "suppressions=%s:print_suppressions=0" % SUPPRESSIONS,
            # GCC's UBSan runtime beside ASan ignores log_path: its reports go to stderr,
            # which is workerd's log, nginx's error.log (nginx points its stderr there)
            # or the output of the process that ran it; all three are scanned.
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
            "SEP_NGINX_MODULE": opts.module,
            "SEP_NGINX_ENV": "LD_PRELOAD=%s ASAN_OPTIONS=%s" % (
                opts.preload, asan.replace("detect_leaks=%d" % opts.leaks, NGINX_ASAN_LEAKS)),
            "SEP_WORKERD": opts.workerd,
            "SEP_TEST_LOG_DIR": self.logs,
            "SEP_TEST_SKIP": ",".join(SKIPPED_CASES),
        })
        self.output = os.path.join(self.logs, "output.log")  # what the step's program said

    def findings(self):
        """[(path, line or excerpt)] of everything the sanitizers left in this step."""
        found = []
        for name in sorted(os.listdir(self.reports)):
            path = os.path.join(self.reports, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
            found.append((path, text))
        for root, _dirs, files in os.walk(self.logs):
            for name in sorted(files):
                path = os.path.join(root, name)
                with open(path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if SANITIZER_LINE.search(line) or (
                                name == "error.log" and NGINX_CRASH_LINE.search(line)):
                            found.append((path, line.rstrip("\n")))
        return found


def show(findings, limit_lines=40):
    for path, text in findings:
        lines = text.splitlines()
        print("    %s:" % path)
        for line in lines[:limit_lines]:
            print("      " + line)
        if len(lines) > limit_lines:
            print("      ... (%d more lines)" % (len(lines) - limit_lines))


# the proofs that the check can fail ---------------------------------------------------------
def probe_program(step, probe, kind, expected):
    with open(step.output, "wb") as out:
        res = subprocess.run([probe, kind], env=step.env, stdout=out, stderr=out, timeout=60)
    found = step.findings()
    hits = [p for p, text in found if expected in text]
    if res.returncode == 0 or not hits:
        return "probe %s: exit %d, findings %s (wanted %r)" % (
            kind, res.returncode, [p for p, _ in found], expected)
    return None


def nginx_worker_pids(master_pid):
    try:
        with open("/proc/%d/task/%d/children" % (master_pid, master_pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def probe_nginx(step):
    """An nginx worker of the sanitized module, sent SIGSEGV: ASan's handler writes a
    report from that worker, the master logs "exited on signal"; both must be found. The
    worker's maps must show libasan and the sanitized module (it is not the plain one)."""
    import harness  # reads SEP_NGINX_MODULE at import: after the step's environment is set
    stack = harness.Stack(worker_processes=1)
    try:
        stack.start()
        workers = nginx_worker_pids(stack.nginx_proc.pid)
        if len(workers) != 1:
            return "nginx workers: %s" % workers
        with open("/proc/%d/maps" % workers[0]) as f:
            maps = f.read()
        if "libasan" not in maps or os.path.realpath(harness.localstack.MODULE_SO) not in maps:
            return "worker %d maps neither libasan nor %s" % (workers[0],
                                                             harness.localstack.MODULE_SO)
        os.kill(workers[0], signal.SIGSEGV)
        deadline = time.monotonic() + 20
        while "exited on signal" not in stack.error_log_tail(50):
            if time.monotonic() > deadline:
                return "nginx did not log the worker's signal:\n" + stack.error_log_tail()
            time.sleep(0.05)
    finally:
        stack.stop()
    found = step.findings()
    report = [p for p, text in found if os.path.basename(p) == "asan.%d" % workers[0]
              and "AddressSanitizer" in text]
    crash = [p for p, line in found if NGINX_CRASH_LINE.search(line)]
    if not report or not crash:
        return "worker %d: report %s, crash line %s, findings %s" % (
            workers[0], report, crash, [p for p, _ in found])
    return None


def run_probes(root, opts):
    """The check fails on each kind of report: returns (passed, failed)."""
    kinds = [("heap-overflow", "heap-buffer-overflow"), ("signed-overflow", "runtime error")]
    if opts.leaks:
        kinds.append(("leak", "LeakSanitizer"))
    passed = failed = 0
    for kind, expected in kinds + [("nginx-worker-segv", None)]:
        step = Step(root, "probe-" + kind, opts)
        start = time.monotonic()
        os.environ.update(step.env)
        try:
            if expected is None:
                problem = probe_nginx(step)
            else:
                problem = probe_program(step, opts.probe, kind, expected)
        except Exception as e:  # a crash of a probe is its failure
            problem = "crashed: %r" % e
        if problem:
            failed += 1
            print("FAIL %-44s the check missed it: %s" % ("probe_" + kind, problem), flush=True)
        else:
            passed += 1
            print("ok   %-44s %.2fs  caught" % ("probe_" + kind, time.monotonic() - start),
                  flush=True)
    return passed, failed


# the suites ---------------------------------------------------------------------------------
def run_suite(root, opts, name, script, args):
    """Runs one suite under the sanitizers: (cases passed, failed, skipped), its
    sanitizer check counted as one case more."""
    step = Step(root, name, opts)
    print("==> %s %s" % (script, " ".join(args)), flush=True)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, script)] + args, cwd=REPO,
                            env=step.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace")
    passed = failed = skipped = 0
    saw_cases = False
    output = open(step.output, "w", encoding="utf-8")
    try:
        deadline = time.monotonic() + SUITE_TIMEOUT
        for line in proc.stdout:
            output.write(line)
            line = line.rstrip("\n")
            print("    " + line, flush=True)
            m = CASES_LINE.match(line)
            if m:
                saw_cases = True
                passed += int(m.group(1))
                failed += int(m.group(2))
                skipped += int(m.group(3))
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(script, SUITE_TIMEOUT)
        rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print("    (killed after %ds)" % SUITE_TIMEOUT)
        rc = -1
    finally:
        output.close()
    if rc != 0 and (failed == 0 or not saw_cases):
        failed += 1
    found = step.findings()
    took = time.monotonic() - start
    if found:
        failed += 1
        print("FAIL %-44s %d sanitizer finding(s) in %.1fs:" % (name + "_sanitizers",
                                                                len(found), took), flush=True)
        show(found)
    else:
        passed += 1
        print("ok   %-44s %.1fs  no sanitizer report, no crash" % (name + "_sanitizers", took),
              flush=True)
    return passed, failed, skipped


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", required=True, help="the sanitized ngx_http_sep_module.so")
    ap.add_argument("--workerd", required=True, help="the sanitized workerd binary")
    ap.add_argument("--probe", required=True, help="tests/asan/probe.c, built sanitized")
    ap.add_argument("--preload", required=True, help="libasan.so (gcc -print-file-name)")
    ap.add_argument("--leaks", type=int, default=1, help="LeakSanitizer on (1) or off (0)")
    ap.add_argument("--keep", action="store_true", help="keep the reports and logs")
    opts = ap.parse_args()
    for path in (opts.module, opts.workerd, opts.probe, opts.preload):
        if not os.path.exists(path):
            print("FAIL: %s does not exist (make)" % path)
            return 1
    opts.module, opts.workerd, opts.probe = (os.path.abspath(p) for p in (
        opts.module, opts.workerd, opts.probe))
    sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
    root = tempfile.mkdtemp(prefix="sep-asan-")
    start = time.monotonic()
    try:
        passed, failed = run_probes(root, opts)
        skipped = 0
        for name, script, args in SUITES:
            p, f, s = run_suite(root, opts, name, script, args)
            passed += p
            failed += f
            skipped += s
    finally:
        if opts.keep or os.environ.get("SEP_TEST_KEEP"):
            print("kept reports and logs in %s" % root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("CASES: %d passed, %d failed, %d skipped" % (passed, failed, skipped))
    if failed:
        print("FAIL: %d failed under ASan + UBSan (%.0fs)" % (failed, time.monotonic() - start))
        return 1
    print("PASS: %d cases under ASan + UBSan%s, no sanitizer report (%.0fs)"
          % (passed, " (LeakSanitizer on workerd)" if opts.leaks else "",
             time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
