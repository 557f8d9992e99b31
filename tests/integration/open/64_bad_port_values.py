#!/usr/bin/python3
"""`SEP_PORT=80a make run`, `SEP_PORT=70000 make run`, `SEP_REDIS_PORT=0 make run`: a
typo in a port gives a Python traceback (int() / bind() overflow) or a server on a port
nobody asked for, instead of a one-line refusal naming the variable. Expected: each
refused with a non-zero status, a `run:` line naming the variable, no traceback, and
nothing left running."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness
import test_local_stack as tls

ok = True
for var, value in (("SEP_PORT", "80a"), ("SEP_PORT", "70000"), ("SEP_PORT", "0"),
                   ("SEP_REDIS_PORT", "abc"), ("SEP_REDIS_PORT", "0"),
                   ("SEP_REDIS_PORT", "65536")):
    run = tls.LocalRun()
    try:
        res = run.script("run-local", env=dict(run.env, **{var: value}))
        out = res.stdout or ""
        redis = harness.localstack.read_pid(os.path.join(run.prefix, "redis", "redis.pid"))
        left = bool(redis and harness.localstack.pid_alive(redis)) or bool(
            run.processes_using_prefix())
        good = res.returncode != 0 and "Traceback" not in out and var in out and not left
        print("%s=%-6s status %d, traceback %s, names it %s, left running %s -> %s"
              % (var, value, res.returncode, "Traceback" in out, var in out, left,
                 "ok" if good else "BAD"))
        ok &= good
    finally:
        run.stop()
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
