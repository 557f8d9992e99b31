#!/usr/bin/python3
"""SSE fan-out: 10,000 concurrent event streams on ONE nginx worker.

A stack (tests/integration/harness.py: redis-server + nginx with the module) with one
worker, worker_connections 11000, the file limit raised. JOBS jobs are submitted and
claimed; bench/events/sse_clients (C, epoll) opens CLIENTS streams spread evenly over
them. Once every stream has its first event the script reads the worker's RSS and the
Redis connections nginx holds (CLIENT LIST, this script's own connections left out),
then publishes ROUNDS progress events (the progress script, as a worker runs it), one
job after the other, INTERVAL apart, each carrying its CLOCK_MONOTONIC time in the
job's message; every client that receives it records publish -> receive latency.

Two phases: the streams spread over JOBS jobs (the goal's case), then all of them on
one job (a single publish fanned out to every stream: the worst case for one worker).

    /usr/bin/python3 bench/events/fanout.py [CLIENTS [JOBS [ROUNDS]]]
        (defaults 10000 100 300; writes nothing; make bench-events keeps the output)

Prints one RESULT line per phase against the goals: Redis connections <= 2 per nginx
worker, publish -> client p99 <= 5 ms.
"""

import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402
import worker_sim  # noqa: E402

CLIENT_BIN = os.path.join(ROOT, "build", "bench", "sse_clients")
DRIVER_NAME = "bench-driver"


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def conf_edit(text):
    text = text.replace("worker_connections 4096;", "worker_connections 11000;")
    return text.replace("events {", "worker_rlimit_nofile 20000;\n\nevents {", 1)


def worker_pid(stack):
    master = stack.nginx_proc.pid
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                        return int(name)
            except OSError:
                pass
    raise RuntimeError("no nginx worker")


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_ms(pid):
    """utime + stime of a process, in ms."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def nginx_redis_connections(r):
    """(all, subscriber) connections to Redis that are not this script's (every
    connection of this script is named DRIVER_NAME; the harness' own client is not
    used)."""
    conns = [c for c in r.client_list() if c.get("name") != DRIVER_NAME]
    return len(conns), sum(1 for c in conns if int(c.get("sub", 0)) > 0)


def run_phase(stack, r, pid, label, jobs, tokens, clients, rounds, interval):
    ids_path = os.path.join(stack.prefix, "ids-%s.txt" % label)
    with open(ids_path, "w") as f:
        f.write("\n".join(jobs) + "\n")
    per_job = clients // len(jobs)
    expected = rounds * per_job
    rss0 = rss_kib(pid)
    conns0 = nginx_redis_connections(r)
    timeout = 120 + rounds * interval * 2
    proc = subprocess.Popen([CLIENT_BIN, "127.0.0.1", str(stack.port), ids_path, str(clients),
                             str(expected), str(timeout)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    print("  %s: %s" % (label, line), flush=True)
    if not line.startswith("CONNECTED %d " % clients):
        proc.kill()
        raise RuntimeError("not every client connected: " + line)
    time.sleep(1.0)  # let the worker settle
    rss1 = rss_kib(pid)
    conns1, subs1 = nginx_redis_connections(r)
    channels = len([c for c in r.pubsub_channels() if c.startswith(b"{sep}:ev:")])
    progress_sha = r.script_load(worker_sim.script("progress"))
    keys = {j: worker_sim.job_keys(j) for j in jobs}
    perf = None
    if os.environ.get("BENCH_PERF"):
        perf = subprocess.Popen(["perf", "record", "-g", "-p", str(pid), "-o",
                                 os.environ["BENCH_PERF"]], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    cpu0 = cpu_ms(pid)
    t0 = time.monotonic()
    for i in range(rounds):
        job = jobs[i % len(jobs)]
        r.evalsha(progress_sha, 8, *keys[job], tokens[job], "0.5", "separate",
                  "t=%d" % time.monotonic_ns())
        next_at = t0 + (i + 1) * interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    out, _ = proc.communicate(timeout=timeout + 30)
    cpu1 = cpu_ms(pid)
    if perf:
        perf.send_signal(2)
        perf.wait()
    result = out.strip().splitlines()[-1]
    fields = dict(kv.split("=") for kv in result.split()[1:])
    samples, p50, p99, mx = (int(fields[k]) for k in ("samples", "p50_us", "p99_us", "max_us"))
    lines = [
        "phase %s: %d clients on %d jobs (%d per job), %d publishes %.0f ms apart"
        % (label, clients, len(jobs), per_job, rounds, interval * 1000),
        "  nginx worker RSS: %d KiB before the clients, %d KiB with them (%.1f KiB per stream)"
        % (rss0, rss1, (rss1 - rss0) / float(clients)),
        "  Redis connections of nginx: %d before (%d subscriber), %d with the streams "
        "(%d subscriber); channels subscribed: %d" % (conns0[0], conns0[1], conns1, subs1,
                                                     channels),
        "  publish -> client latency over %d deliveries (of %d expected): p50 %.2f ms, "
        "p99 %.2f ms, max %.2f ms; client: %s" % (samples, expected, p50 / 1000.0, p99 / 1000.0,
                                                 mx / 1000.0, result),
        "  nginx worker CPU while publishing: %.0f ms for %d deliveries (%.1f us each, "
        "syscalls included)" % (cpu1 - cpu0, samples, (cpu1 - cpu0) * 1000.0 / max(samples, 1)),
    ]
    met = conns1 <= 2 and p99 <= 5000 and samples == expected
    lines.append("RESULT events_fanout phase=%s clients=%d jobs=%d redis_conns=%d goal<=2 "
                 "p50_ms=%.2f p99_ms=%.2f goal<=5 rss_kib=%d delivered=%d/%d %s"
                 % (label, clients, len(jobs), conns1, p50 / 1000.0, p99 / 1000.0, rss1,
                    samples, expected, "met" if met else "NOT met"))
    for text in lines:
        print(text, flush=True)
    return lines


def main(argv):
    clients = int(argv[1]) if len(argv) > 1 else 10000
    njobs = int(argv[2]) if len(argv) > 2 else 100
    rounds = int(argv[3]) if len(argv) > 3 else 300
    if not os.path.exists(CLIENT_BIN):
        print("build %s first (make bench-events)" % CLIENT_BIN)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < clients + 1000:
        print("the file limit (%d) is below %d: raise ulimit -n" % (hard, clients + 1000))
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    stack = harness.Stack(worker_processes=1, conf_edit=conf_edit).start()
    harness.install_signal_cleanup(stack)
    try:
        import redis
        r = redis.Redis(unix_socket_path=harness.localstack.redis_socket(stack.prefix),
                        client_name=DRIVER_NAME, socket_timeout=30)
        pid = worker_pid(stack)
        wav = harness.wav_bytes()
        jobs, tokens = [], {}
        for _ in range(njobs + 1):
            resp = stack.request("POST", "/v1/jobs", body=wav,
                                 headers={"Content-Type": "audio/wav"})
            assert resp.status == 202, resp
            job = resp.json["id"]
            jobs.append(job)
            tokens[job] = worker_sim.claim(r, job)[0]
        load = os.getloadavg()[0]
        out = ["bench/events/fanout.py  %s" % time.strftime("%Y-%m-%d %H:%M"),
               "cpu: %s, %d cores; load average before %.2f" % (cpu_model(), os.cpu_count(),
                                                               load),
               "nginx 1.22.1 + module, 1 worker (worker_connections 11000); redis %s on a unix "
               "socket; clients: bench/events/sse_clients (C, epoll, one thread) on the same "
               "machine" % r.info()["redis_version"],
               "command: /usr/bin/python3 bench/events/fanout.py %d %d %d" % (clients, njobs,
                                                                               rounds), ""]
        for text in out:
            print(text, flush=True)
        out += run_phase(stack, r, pid, "spread", jobs[:njobs], tokens, clients, rounds, 0.02)
        out.append("")
        out += run_phase(stack, r, pid, "one-job", jobs[njobs:], tokens, clients,
                         max(10, rounds // 10), 0.2)
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
