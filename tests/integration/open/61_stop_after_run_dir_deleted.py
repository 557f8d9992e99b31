#!/usr/bin/python3
"""`make stop` after the run directory was deleted (`rm -rf run/` to start afresh, a
SEP_RUN_DIR under /tmp cleaned at reboot-less tmp cleanup). README: "`make stop` stops
what `make run` started (every run made from this checkout)". stop-local finds the
processes only through the pid files inside the run directory, so it says "nothing was
running" and forgets the run while redis-server, nginx (and workerd) keep running and
keep the ports: the next `make run` is refused ("127.0.0.1:8080 is taken").
Expected: after `make stop`, no process of that run is alive."""
import os, shutil, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness
import test_local_stack as tls

localstack = harness.localstack
run = tls.LocalRun()
pids = {}
try:
    res = run.start()
    if res.returncode != 0:
        print(res.stdout); print("FAIL (run-local did not start)"); sys.exit(1)
    pids = {k: v for k, v in run.pids().items() if v}
    wpid = localstack.read_pid(os.path.join(run.prefix, "workerd.pid"))
    if wpid:
        pids["workerd"] = wpid
    print("started:", pids)
    shutil.rmtree(run.prefix)
    # plain `make stop` (no SEP_RUN_DIR), as the README's quick start says
    env = dict(run.env); del env["SEP_RUN_DIR"]
    res = run.script("stop-local", env=env)
    print("make stop:", res.stdout.strip())
    time.sleep(0.5)
    alive = {k: p for k, p in pids.items() if localstack.pid_alive(p)}
    print("alive after make stop:", alive)
    ok = not alive
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    for p in pids.values():
        if localstack.pid_alive(p):
            try: os.kill(p, 15)
            except OSError: pass
    os.makedirs(run.prefix, exist_ok=True)
    run.stop()
