#!/usr/bin/python3
"""A large upload beside GETs on the same nginx worker.

One nginx worker (harness.Stack(worker_processes=1)), client_max_body_size above the
upload. A job is created first (a little WAV) so that the GETs answer a real record.
Then, for each of K uploads, a child process POSTs /v1/jobs with a body of BYTES
bytes streamed from a generator (never held in memory): multipart/form-data with one
"file" part holding a valid WAV header and zeros, or (for comparison) the same WAV
as a raw audio/wav body. Meanwhile a GET /v1/jobs/{id} is sent every 5 ms, each on
its own connection, on a fixed schedule (a GET that waits for a blocked worker does
not delay the next one); its latency counts from its scheduled time to the end of
its answer. An accepted upload is deleted (DELETE /v1/jobs/{id}) and its spool
directory removed before the next one.

Prints, per mode, the worst and p99 GET latency over all its uploads, the answers of
the uploads (202 vs 503 by code), and one RESULT line per mode against the goal: GETs
p99 <= 20 ms and every upload 202. The same GETs are also measured for 3 s with no
upload before each mode and at the end: on a machine shared with other work that is
the latency its load alone causes. --trace-worker also straces the nginx worker during
each upload and prints its longest event-loop turn: how long the worker itself kept
every other connection waiting, whatever the client side's own delays.

    /usr/bin/python3 bench/faults/multipart_upload.py [--bytes N] [--uploads K]
        [--raw-uploads K] [--modes multipart,raw] [--trace-worker]
    (defaults: 1.2 GB = 1200000000 bytes, 10 multipart uploads, 3 raw)
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "integration"))

import harness  # noqa: E402

EVERY = 0.005
CHUNK = 1 << 20
BOUNDARY = "----sep-bench-upload-boundary"
GOAL_P99 = 0.020


def wav_header(data_bytes):
    """A 44-byte PCM WAV header (stereo, 16-bit, 44.1 kHz) for data_bytes of samples."""
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE" +
            b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, 44100, 44100 * 4, 4, 16) +
            b"data" + struct.pack("<I", data_bytes))


def body_parts(mode, total):
    """(content_type, head, zeros, tail): the body is head + zeros bytes of 0 + tail,
    total bytes in all."""
    if mode == "raw":
        zeros = total - 44
        return "audio/wav", wav_header(zeros), zeros, b""
    head = ("--%s\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nhtdemucs\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n" % (BOUNDARY, BOUNDARY)).encode()
    tail = ("\r\n--%s--\r\n" % BOUNDARY).encode()
    zeros = total - len(head) - 44 - len(tail)
    zeros -= zeros % 4
    head += wav_header(zeros)
    return "multipart/form-data; boundary=" + BOUNDARY, head, zeros, tail


def body_chunks(head, zeros, tail):
    """The body, CHUNK bytes at a time, from one buffer of zeros."""
    yield head
    block = memoryview(bytes(CHUNK))
    left = zeros
    while left > 0:
        n = min(left, CHUNK)
        yield block[:n]
        left -= n
    if tail:
        yield tail


def upload(port, mode, total, go, result):
    """Child process: one POST once go is set; the status, error code and job id into
    result."""
    ctype, head, zeros, tail = body_parts(mode, total)
    go.wait()
    length = len(head) + zeros + len(tail)
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(("POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                       "Content-Type: %s\r\nContent-Length: %d\r\n\r\n"
                       % (ctype, length)).encode())
            for chunk in body_chunks(head, zeros, tail):
                s.sendall(chunk)
            sent = time.monotonic()
            buf = b""
            while True:
                got = s.recv(65536)
                if not got:
                    break
                buf += got
        head_text, _, body = buf.partition(b"\r\n\r\n")
        status = int(head_text.split(b" ", 2)[1])
        code = job = ""
        try:
            doc = json.loads(body)
            code = (doc.get("error") or {}).get("code", "")
            job = doc.get("id", "")
        except ValueError:
            pass
        result.put((status, code, job, sent - start, time.monotonic() - sent))
    except OSError as e:
        result.put((0, type(e).__name__, "", time.monotonic() - start, 0.0))


class Poller:
    """GET path every EVERY seconds on a fixed schedule, each on its own connection."""

    def __init__(self, port, path):
        self.port, self.path = port, path
        self.lat, self.errors = [], 0
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=48)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, due):
        try:
            r = harness.request(self.port, "GET", self.path, timeout=30)
            ok = r.status == 200
        except OSError:
            ok = False
        t = time.monotonic() - due
        with self.lock:
            if ok:
                self.lat.append(t)
            else:
                self.errors += 1

    def _run(self):
        due = time.monotonic()
        while not self.stop_ev.is_set():
            self.pool.submit(self._one, due)
            due += EVERY
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join()
        self.pool.shutdown(wait=True)
        with self.lock:
            return sorted(self.lat), self.errors


def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def baseline(stack, status_path, seconds):
    """The same GETs with no upload running: what the machine's load alone costs."""
    poller = Poller(stack.port, status_path)
    poller.start()
    time.sleep(seconds)
    lat, errs = poller.stop()
    print("no upload, %.0f s: GETs %d (failed %d), worst %.3f s, p99 %.3f s, p50 %.4f s"
          % (seconds, len(lat), errs, lat[-1] if lat else float("nan"), pct(lat, 0.99),
             pct(lat, 0.5)), flush=True)


class WorkerTrace:
    """strace -ttt -T of the nginx worker during one upload: the longest event-loop turn
    (from an epoll_wait's return to the next epoll_wait) with the system calls it made,
    and the longest system call.
    The figures come from the worker itself, whatever delays the client side has on a
    busy machine; strace slows every system call down, so they are upper bounds."""

    def __init__(self, stack, path):
        self.path = path
        out = subprocess.run(["pgrep", "-P", str(stack.nginx_proc.pid)],
                             stdout=subprocess.PIPE, universal_newlines=True).stdout.split()
        self.proc = subprocess.Popen(["strace", "-q", "-ttt", "-T", "-o", path, "-p", out[0]],
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        rows = []
        with open(self.path, errors="replace") as f:
            for line in f:
                m = re.match(r"(\d+\.\d+) (\w+)\(.*<(\d+\.\d+)>$", line.strip())
                if m:
                    rows.append((float(m.group(1)), m.group(2), float(m.group(3))))
        os.unlink(self.path)
        turn, longest, calls, in_turn = 0.0, (0.0, ""), {}, {}
        last_return = None
        for start, name, took in rows:
            if name.startswith("epoll_wait"):
                if last_return is not None and start - last_return > turn:
                    turn, calls = start - last_return, in_turn
                last_return = start + took
                in_turn = {}
            else:
                in_turn[name] = in_turn.get(name, 0) + 1
                if took > longest[0]:
                    longest = (took, name)
        made = ", ".join("%d %s" % (n, c) for c, n in sorted(calls.items(), key=lambda x: -x[1]))
        return turn, longest, made


def run_mode(stack, mode, total, count, status_path, trace=False):
    ctx = multiprocessing.get_context("fork")
    all_lat, answers, errors = [], {}, 0
    for i in range(count):
        q, go = ctx.Queue(), ctx.Event()
        # forked before the GETs start, started once they run
        proc = ctx.Process(target=upload, args=(stack.port, mode, total, go, q))
        proc.start()
        tracer = WorkerTrace(stack, os.path.join(stack.prefix, "worker.strace")) if trace else None
        poller = Poller(stack.port, status_path)
        poller.start()
        time.sleep(0.3)
        go.set()
        status, code, job, send_s, answer_s = q.get(timeout=600)
        proc.join(30)
        time.sleep(0.2)  # and a little after its answer
        lat, errs = poller.stop()
        traced = ""
        if tracer:
            turn, (took, name), made = tracer.stop()
            traced = "; worker (strace): longest event-loop turn %.3f s (%s), longest " \
                     "syscall %.3f s (%s)" % (turn, made, took, name)
        all_lat += lat
        errors += errs
        key = "%d%s" % (status, " " + code if code else "")
        answers[key] = answers.get(key, 0) + 1
        print("  %s upload %d/%d: %s in %.2f s (+%.3f s after the last byte); GETs %d, "
              "worst %.3f s, p99 %.3f s, failed %d%s"
              % (mode, i + 1, count, key, send_s + answer_s, answer_s, len(lat),
                 lat[-1] if lat else float("nan"), pct(lat, 0.99), errs, traced), flush=True)
        if job:
            stack.request("DELETE", "/v1/jobs/" + job, timeout=60)
            shutil.rmtree(stack.job_dir(job), ignore_errors=True)
        left = [p for p in stack.spool_files() if status_path[len("/v1/jobs/"):] not in p]
        incoming = os.path.join(stack.spool, ".incoming")
        for root, _dirs, files in os.walk(incoming):
            for name in files:
                os.unlink(os.path.join(root, name))
        if left:
            print("  (spool not empty after the upload: %s)" % left[:3])
    all_lat.sort()
    n202 = answers.get("202", 0)
    n503 = sum(v for k, v in answers.items() if k.startswith("503"))
    worst = all_lat[-1] if all_lat else float("nan")
    p99 = pct(all_lat, 0.99)
    print("%s, %d uploads of %d bytes: GETs %d (failed %d), worst %.3f s, p99 %.3f s, "
          "p50 %.4f s; answers %s"
          % (mode, count, total, len(all_lat), errors, worst, p99, pct(all_lat, 0.5),
             answers))
    met = p99 <= GOAL_P99 and n202 == count
    print("RESULT multipart_upload mode=%s bytes=%d get_worst=%.3fs get_p99=%.3fs goal<=%.3fs "
          "202=%d/%d 503=%d %s"
          % (mode, total, worst, p99, GOAL_P99, n202, count, n503,
             "met" if met else "not met"), flush=True)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bytes", type=int, default=1200000000)
    ap.add_argument("--uploads", type=int, default=10)
    ap.add_argument("--raw-uploads", type=int, default=3)
    ap.add_argument("--modes", default="multipart,raw")
    ap.add_argument("--trace-worker", action="store_true",
                    help="strace the worker: its longest event-loop turn per upload")
    args = ap.parse_args(argv[1:])
    max_body = "%dm" % (args.bytes // (1 << 20) + 16)
    stack = harness.Stack(worker_processes=1, max_body=max_body)
    try:
        stack.start()
        with open(stack.conf_path, encoding="utf-8") as f:
            m = re.search(r"^\s*sep_redis_timeout\s+(\S+);", f.read(), re.M)
        timeout = m.group(1) if m else "?"
        r = stack.request("POST", "/v1/jobs", body=harness.wav_bytes(0.1),
                          headers={"Content-Type": "audio/wav"})
        if r.status != 202:
            print("could not create the job the GETs read: %d %s" % (r.status, r.body))
            return 1
        status_path = "/v1/jobs/" + r.json["id"]
        print("cpu: %s, %d cores; load average before %.2f"
              % (cpu_name(), os.cpu_count(), os.getloadavg()[0]))
        print("nginx 1 worker, sep_redis_timeout %s, client_max_body_size %s; GET %s every "
              "%d ms on its own connection" % (timeout, max_body, status_path, EVERY * 1000))
        for mode in args.modes.split(","):
            count = args.uploads if mode == "multipart" else args.raw_uploads
            if count > 0:
                baseline(stack, status_path, 3.0)
                run_mode(stack, mode, args.bytes, count, status_path, args.trace_worker)
        baseline(stack, status_path, 3.0)
    finally:
        stack.stop()
    return 0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
