"""tests/gpu/gpuprobe.py: what the GPU test (tests/gpu/test_gpu.py) and the GPU benchmark
(bench/gpu) share: whether this machine has a usable NVIDIA GPU, what a binary's failure
to create its CUDA backend means, and the GPU memory a process tree holds over time.

  * nvidia_smi(): the GPUs `nvidia-smi` lists (name, memory, driver), or why none.
  * backend_failure(text): for the output of a binary that could not create its CUDA
    backend, ("no-build" | "no-device" | "error", message): a build without the CUDA
    backend and a machine without a device are reasons to skip; anything else is a
    failure when a GPU is there.
  * MemorySampler: polls nvidia-smi in a thread while a command runs; reports the peak
    memory the command's processes held (per-process figures where nvidia-smi gives
    them, else the device's used memory above what it was before the command).

Standard library only (runs under Debian's /usr/bin/python3 and any python3 with torch).
"""
import os
import re
import shutil
import subprocess
import threading
import time

# Messages of a binary whose CUDA backend cannot be created because the build has none
# (models/engine.c, tests/parity/ops_test.c) ...
NO_BUILD_PATTERNS = (r"has no CUDA backend", r"no cuda backend in this build")
# ... or because there is no device or driver to run it (the CUDA runtime's own words
# for cudaErrorNoDevice / cudaErrorInsufficientDriver, and the backend's prefix for them).
NO_DEVICE_PATTERNS = (r"no CUDA device", r"no CUDA-capable device", r"driver version is insufficient",
                      r"cudaErrorNoDevice", r"cudaErrorInsufficientDriver", r"no device",
                      r"libcuda\.so[.0-9]*: cannot open", r"CUDA driver .*not (found|available)")


def nvidia_smi(timeout=30):
    """([{'index', 'name', 'memory_mib', 'driver'}], None) or ([], why there is no GPU)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return [], "nvidia-smi not found (no NVIDIA driver on this machine)"
    try:
        r = subprocess.run([exe, "--query-gpu=index,name,memory.total,driver_version",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return [], "nvidia-smi did not answer within %d s" % timeout
    if r.returncode != 0:
        msg = (r.stdout + r.stderr).strip().splitlines()
        return [], "nvidia-smi failed (rc %d): %s" % (r.returncode, msg[-1] if msg else "")
    gpus = []
    for line in r.stdout.strip().splitlines():
        f = [x.strip() for x in line.split(",")]
        if len(f) >= 4:
            gpus.append({"index": f[0], "name": f[1], "memory_mib": f[2], "driver": f[3]})
    if not gpus:
        return [], "nvidia-smi lists no GPU"
    return gpus, None


def backend_failure(text):
    """(kind, message) for a binary's output that holds a backend creation failure
    ('FAIL backend: ...', 'FAIL engine: ...' or a bare error line), else None."""
    m = re.search(r"^FAIL (?:backend|engine)[^:]*: (.*)$", text, re.M)
    msg = m.group(1).strip() if m else None
    if msg is None:
        for pat in NO_BUILD_PATTERNS + NO_DEVICE_PATTERNS:
            m = re.search(r"^.*(?:%s).*$" % pat, text, re.M | re.I)
            if m:
                msg = m.group(0).strip()
                break
    if msg is None:
        return None
    if any(re.search(p, msg, re.I) for p in NO_BUILD_PATTERNS):
        return "no-build", msg
    if any(re.search(p, msg, re.I) for p in NO_DEVICE_PATTERNS):
        return "no-device", msg
    return "error", msg


def loader_failure(text):
    """The dynamic loader's complaint (a shared library not found), or None."""
    m = re.search(r"error while loading shared libraries: .*", text)
    return m.group(0) if m else None


def _tree(root):
    """root and its live descendants (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += children.get(p, [])
    return out


class MemorySampler:
    """Peak GPU memory of a process tree, from nvidia-smi every `interval` seconds.

    start(pid) after the process started, stop() after it ended. peak_process_mib: the
    largest sum of `used_memory` over the tree's processes (nvidia-smi's per-process
    figure: the CUDA context included); peak_device_mib: the largest device-wide
    memory.used minus the baseline taken at construction (what the figure is where a
    virtualised driver lists no processes). peak_mib() gives the first when seen."""

    def __init__(self, interval=0.2, gpu="0"):
        self.exe = shutil.which("nvidia-smi")
        self.interval = interval
        self.gpu = gpu
        self.baseline = self._device_used()
        self.peak_process_mib = None
        self.peak_device_mib = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = None

    def _query(self, args):
        if not self.exe:
            return None
        try:
            r = subprocess.run([self.exe, "-i", self.gpu] + args, capture_output=True,
                               text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout if r.returncode == 0 else None

    def _device_used(self):
        out = self._query(["--query-gpu=memory.used", "--format=csv,noheader,nounits"])
        try:
            return float(out.strip().splitlines()[0]) if out else None
        except (ValueError, IndexError):
            return None

    def _sample(self, pid):
        out = self._query(["--query-compute-apps=pid,used_memory",
                           "--format=csv,noheader,nounits"])
        if out is not None:
            pids = _tree(pid)
            total, seen = 0.0, False
            for line in out.strip().splitlines():
                f = [x.strip() for x in line.split(",")]
                try:
                    if len(f) >= 2 and int(f[0]) in pids:
                        total += float(f[1])
                        seen = True
                except ValueError:
                    pass
            if seen and (self.peak_process_mib is None or total > self.peak_process_mib):
                self.peak_process_mib = total
        used = self._device_used()
        if used is not None and self.baseline is not None:
            d = used - self.baseline
            if self.peak_device_mib is None or d > self.peak_device_mib:
                self.peak_device_mib = d
        self.samples += 1

    def start(self, pid):
        if not self.exe:
            return self

        def loop():
            while not self._stop.is_set():
                self._sample(pid)
                self._stop.wait(self.interval)
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=15)

    def peak_mib(self):
        """(MiB, 'process' | 'device'), or (None, why)."""
        if self.peak_process_mib is not None:
            return self.peak_process_mib, "process"
        if self.peak_device_mib is not None:
            return self.peak_device_mib, "device"
        return None, "no nvidia-smi reading"


def run_sampled(cmd, timeout, env=None, interval=0.2):
    """Runs cmd (stdout and stderr captured apart) while sampling GPU memory:
    (returncode or None on timeout, stdout, stderr, seconds, MemorySampler)."""
    sampler = MemorySampler(interval=interval)
    t0 = time.monotonic()
    # the same process group as the caller: a `timeout` around the caller ends it too
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    sampler.start(p.pid)
    try:
        out, err = p.communicate(timeout=timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        rc = None
    sampler.stop()
    return rc, out, err, time.monotonic() - t0, sampler
