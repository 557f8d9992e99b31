#!/usr/bin/python3
"""`make run` twice from the same run directory, the second time with another explicit
SEP_REDIS_PORT. A second run with another SEP_PORT is refused ("nginx already running
with other ports; stop it first"); another SEP_REDIS_PORT is silently ignored: run-local
says "redis already running (port OLD)" and exits 0, so the operator believes Redis is
on the port they asked for. Expected: refused (non-zero, naming SEP_REDIS_PORT), as for
SEP_PORT."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness
import test_local_stack as tls

run = tls.LocalRun()
try:
    res = run.start()
    if res.returncode != 0:
        print(res.stdout); print("FAIL (first run-local did not start)"); sys.exit(1)
    other = harness.localstack.pick_port()
    env = dict(run.env, SEP_REDIS_PORT=str(other))
    res = run.script("run-local", env=env)
    out = res.stdout or ""
    print("second run, SEP_REDIS_PORT=%d (first %d): status %d" % (other, run.redis_port,
                                                                     res.returncode))
    print("\n".join(l for l in out.splitlines() if l.startswith("run:")))
    ok = res.returncode != 0 and "SEP_REDIS_PORT" in out
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    run.stop()
