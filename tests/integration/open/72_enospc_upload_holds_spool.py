#!/usr/bin/python3
"""An upload that fills the spool (ENOSPC while writing {spool}/{id}/input.part) is
answered 507 only once its whole body has been read, and until then its partial file
stays on disk: a client that keeps sending slowly (up to client_max_body_size, each
read within client_body_timeout) keeps the spool full, and every other upload is
refused 507 meanwhile. Expected: the partial file is removed as soon as a write
fails, so the others are stored while the failed upload's body is read and dropped.
Needs root (a 1 MB tmpfs is mounted on the spool)."""
import os, socket, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

if os.geteuid() != 0:
    print("SKIP: needs root to mount a tmpfs")
    sys.exit(0)
stack = harness.Stack(worker_processes=1, max_body="10m")
os.makedirs(stack.spool, exist_ok=True)
subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", stack.spool])
try:
    stack.start()
    wav = harness.wav_bytes(0.1)
    total = 3 * 1024 * 1024
    s = socket.create_connection(("127.0.0.1", stack.port))
    s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: t\r\nContent-Type: audio/wav\r\n"
              b"Content-Length: %d\r\n\r\n" % total)
    sent = 0
    chunk = wav + b"\0" * (64 * 1024 - len(wav))
    while sent < 1536 * 1024:  # past the 1 MB the spool holds
        s.sendall(chunk)
        sent += len(chunk)
        chunk = b"\0" * (64 * 1024)
    time.sleep(1.0)  # the worker has read and tried to store it
    # the big upload is still being sent (slowly); another client uploads a small file
    other = stack.request("POST", "/v1/jobs", wav, {"Content-Type": "audio/wav"})
    print("other upload while the full one is still sending:", other.status,
          (other.body or b"")[:90])
    print("spool:", stack.spool_files())
    # the big one ends
    s.sendall(b"\0" * (total - sent))
    s.settimeout(10)
    answer = s.recv(4096)
    s.close()
    print("the upload that filled the spool:", answer.split(b"\r\n")[0])
    ok = other.status == 202 and b" 507 " in answer.split(b"\r\n")[0]
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    harness.localstack.stop_process(stack.nginx_proc)
    subprocess.call(["umount", "-l", stack.spool])
    stack.stop()
