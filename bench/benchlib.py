"""bench/benchlib.py: what every benchmark in bench/ shares, so that a figure can be
trusted (or is marked as not to be trusted) the same way everywhere.

  * machine_record(): the CPU (vendor, family/model/stepping, the ISA flags that decide
    which kernels run: AVX2, FMA, AVX-512F/BW/VNNI, AMX), its kind ("AVX-512", "AVX2"),
    core count, memory, kernel, the OpenBLAS core name and the versions of nginx, Redis,
    wrk, Python and PyTorch (which build: Debian's, and its BLAS). Every results file
    starts with it.
  * Quiet: the quiet-machine check. Before the run it waits (bounded) for the 1-minute
    load average to fall under a threshold and times a fixed calibration loop; after the
    run it times the loop again. A machine that was busy, or whose calibration moved by
    more than NOISY_SPREAD, makes the run NOISY.
  * plan(): the order of the measurements: a discarded warm-up round, then `repeat`
    rounds, each holding every measurement once in its own shuffled order (seeded, the
    seed recorded).
  * settle(): `sync` and a pause before each measurement, so that writeback of the
    previous one (or of its clean-up) does not land in the next.
  * summarize() / paired_ratios(): median, min, max, spread (max/min) and the 95 %
    interval of the mean (Student t); a spread above NOISY_SPREAD makes the run NOISY.
    enough_for_percentile(): whether a latency percentile rests on enough samples.
  * Verdict: collects validity checks (failed -> INVALID) and noise findings (-> NOISY);
    method() marks a run with fewer than MIN_REPEAT rounds, no warm-up or no settle
    pause NOISY; goal() prints "met" / "NOT met" only for a VALID run.
  * write_results(): writes the file only after the checks, its name and first line
    carrying the status: results/<name>-<YYYYmmdd-HHMM>[-NOISY|-INVALID][-N].txt (-N:
    another run of the same minute, never overwritten).
  * tree_cpu_seconds() / tree_rss(): CPU time (utime+stime of a process, its threads
    and its live descendants, plus the reaped ones) and RSS from /proc, for CPU-ms per
    request and memory per process (tree_pss(): shared pages split, for process trees
    that fork workers); tree_stop() / tree_continue() pause a process tree
    (a peer's queue consumer while its front end is measured); reset_peak_rss() /
    peak_rss_mib(): the peak RSS of what a process ran after its set-up.

Standard library only; runs under /usr/bin/python3 and under build/refvenv's python.
Shell benchmarks use the command line (see bench/README.md):
  python3 bench/benchlib.py machine            the machine record, one "key: value" a line
  python3 bench/benchlib.py quiet-before FILE  waits for a quiet machine, calibrates, saves
  python3 bench/benchlib.py quiet-after FILE   calibrates again, prints the noise findings
  python3 bench/benchlib.py order --repeat 3 --seed S NAME...   the interleaved order
  python3 bench/benchlib.py summarize NAME=V1,V2,V3 ...          medians, CI, spread
"""

import ctypes
import datetime
import json
import math
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

NOISY_SPREAD = 1.3  # max/min of the repetitions (or of the calibration) above this: NOISY
MIN_REPEAT = 3  # fewer counted rounds than this: the spread says nothing, the run is NOISY
TAIL_SAMPLES = 10  # a percentile p is quoted only when >= this many samples lie above it
OTHER_CPU_LIMIT = 10.0  # % of all cores that other processes may take during a measurement
QUIET_LOAD_PER_CORE = 0.25  # 1-minute load average per core under which a machine is quiet
SETTLE_SECONDS = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


# ---- statistics ---------------------------------------------------------------------------

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df):
    if df < 1:
        raise ValueError("no interval from fewer than 2 values")
    return _T975[df - 1] if df <= len(_T975) else 1.960


def summarize(values):
    """Median, min, max, mean, the 95 % interval of the mean (ci_lo, ci_hi; None for a
    single value) and spread = max/min (inf when min is 0) of a list of numbers."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("nothing to summarize")
    n = len(vals)
    mean = statistics.fmean(vals)
    lo = hi = None
    if n >= 2 and all(math.isfinite(v) for v in vals):
        half = t975(n - 1) * statistics.stdev(vals) / math.sqrt(n)
        lo, hi = mean - half, mean + half
    elif n >= 2:
        lo, hi = -math.inf, math.inf
    mn, mx = min(vals), max(vals)
    spread = mx / mn if mn > 0 else (1.0 if mx == mn else math.inf)
    return {"n": n, "median": statistics.median(vals), "min": mn, "max": mx, "mean": mean,
            "ci_lo": lo, "ci_hi": hi, "spread": spread, "values": vals}


def is_noisy(summary, limit=NOISY_SPREAD):
    return summary["spread"] > limit


def paired_ratios(a, b):
    """a[i] / b[i] for the measurements of the same round (interleaved runs pair up). A
    zero denominator gives inf (which makes the spread inf, so the run NOISY): dropping
    the pair would pair the remaining rounds' figures silently."""
    if len(a) != len(b):
        raise ValueError("paired_ratios: %d values against %d" % (len(a), len(b)))
    return [x / y if y else math.inf for x, y in zip(a, b)]


def enough_for_percentile(samples, pct, tail=TAIL_SAMPLES):
    """Whether `samples` values put at least `tail` of them above the pct-th percentile:
    p99 needs 1,000, p99.9 10,000; below that the figure is one or two outliers."""
    return samples * (100.0 - pct) / 100.0 >= tail - 1e-6  # 100 - 99.9 is 0.0999...


def fmt_summary(s, fmt="%.0f", unit=""):
    """'median [min-max] 95% CI lo-hi (spread x)' as one short string."""
    out = (fmt % s["median"]) + unit + " [" + (fmt % s["min"]) + "-" + (fmt % s["max"]) + "]"
    if s["ci_lo"] is not None:
        out += " CI95 " + (fmt % s["ci_lo"]) + "-" + (fmt % s["ci_hi"])
    return out + " (spread %.2f)" % s["spread"]


# ---- order of the measurements -------------------------------------------------------------

def plan(names, repeat, warmup=1, seed=None):
    """[(round, name, is_warmup)]: `warmup` rounds (discarded), then `repeat` rounds;
    every round holds each name once, in its own shuffled order."""
    rng = random.Random(seed)
    steps = []
    for rnd in range(warmup + repeat):
        order = list(names)
        rng.shuffle(order)
        for name in order:
            steps.append((rnd - warmup, name, rnd < warmup))
    return steps


def new_seed():
    return int.from_bytes(os.urandom(4), "little")


def settle(seconds=SETTLE_SECONDS):
    """Flush dirty pages and let writeback and the previous run's clean-up finish."""
    os.sync()
    if seconds > 0:
        time.sleep(seconds)


# ---- the verdict -----------------------------------------------------------------------------

class Verdict:
    """INVALID if any validity check failed, else NOISY if any noise finding, else VALID."""

    def __init__(self):
        self.checks = []  # (ok, text)
        self.noise = []

    def check(self, ok, text):
        self.checks.append((bool(ok), text))
        return bool(ok)

    def noisy(self, text):
        if text not in self.noise:  # the same figure may be checked by several reports
            self.noise.append(text)

    def spread(self, name, summary, limit=NOISY_SPREAD):
        if is_noisy(summary, limit):
            self.noisy("%s: spread max/min %.2f > %.2f" % (name, summary["spread"], limit))

    def disturbed(self, name, other_pct, limit=OTHER_CPU_LIMIT):
        """A measurement during which the rest of the machine (processes other than the
        measured ones) took more than `limit` % of all cores was disturbed: NOISY, even
        when the load average before the run and the calibration loop looked quiet."""
        if other_pct > limit:
            self.noisy("%s: other processes took %.0f%% of the cores meanwhile (> %.0f%%)"
                       % (name, other_pct, limit))

    def method(self, repeat, warmup, settle, min_repeat=MIN_REPEAT):
        """The method's own settings: fewer than min_repeat counted rounds (a spread of
        one or two values proves nothing), no discarded warm-up round or no settle pause
        make the run NOISY, so that a goal is never judged on such a run."""
        if repeat < min_repeat:
            self.noisy("only %d counted round(s) (< %d): the spread is not assessed"
                       % (repeat, min_repeat))
        if warmup < 1:
            self.noisy("no discarded warm-up round")
        if settle <= 0:
            self.noisy("no settle pause before the measurements")

    @property
    def status(self):
        if any(not ok for ok, _ in self.checks):
            return "INVALID"
        return "NOISY" if self.noise else "VALID"

    def goal(self, value, goal, higher=True):
        """'met' / 'NOT met' for a VALID run; otherwise says why it is not judged."""
        status = self.status
        if status != "VALID":
            return "not judged: run is %s" % status
        ok = value >= goal if higher else value <= goal
        return "met" if ok else "NOT met"

    def lines(self):
        out = ["status: %s" % self.status]
        for ok, text in self.checks:
            out.append("  check %s: %s" % ("ok  " if ok else "FAIL", text))
        for text in self.noise:
            out.append("  noise: %s" % text)
        return out


# ---- quiet-machine check -------------------------------------------------------------------

def calibrate(samples=5, n=300000):
    """Seconds of each of `samples` runs of a fixed pure-Python loop (one core)."""
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        acc = 0
        for i in range(n):
            acc += i * i & 1023
        out.append(time.perf_counter() - t0)
    return out


class Quiet:
    """Load average and calibration loop before and after a run; findings go to a Verdict."""

    def __init__(self, max_wait=120.0, load_per_core=QUIET_LOAD_PER_CORE, log=None):
        self.max_wait = max_wait
        self.threshold = load_per_core * (os.cpu_count() or 1)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.load_before = self.load_after = None
        self.cal_before = self.cal_after = None
        self.waited = 0.0

    def before(self):
        t0 = time.monotonic()
        load = os.getloadavg()
        if load[0] > self.threshold and self.max_wait > 0:
            self.log("waiting up to %.0f s for the 1-min load average (%.2f) to fall under %.2f"
                     % (self.max_wait, load[0], self.threshold))
        while load[0] > self.threshold and time.monotonic() - t0 < self.max_wait:
            time.sleep(min(5.0, self.max_wait))
            load = os.getloadavg()
        self.waited = time.monotonic() - t0
        self.load_before = load
        self.cal_before = calibrate()

    def after(self):
        self.load_after = os.getloadavg()
        self.cal_after = calibrate()

    def judge(self, verdict):
        if self.load_before is not None and self.load_before[0] > self.threshold:
            verdict.noisy("1-min load average %.2f before the run > %.2f (waited %.0f s)"
                          % (self.load_before[0], self.threshold, self.waited))
        for when, cal in (("before", self.cal_before), ("after", self.cal_after)):
            if cal:
                s = summarize(cal)
                if is_noisy(s):
                    verdict.noisy("calibration loop %s the run: spread %.2f" % (when, s["spread"]))
        if self.cal_before and self.cal_after:
            a, b = min(self.cal_before), min(self.cal_after)
            if max(a, b) / min(a, b) > NOISY_SPREAD:
                verdict.noisy("calibration loop moved from %.1f ms to %.1f ms during the run"
                              % (a * 1e3, b * 1e3))

    def lines(self):
        def cal(c):
            return "%.1f ms (best of %d, worst %.1f)" % (min(c) * 1e3, len(c), max(c) * 1e3) \
                if c else "-"

        def load(x):
            return "%.2f %.2f %.2f" % x if x else "-"
        return ["load average 1/5/15 min before: %s, after: %s (quiet under %.2f; waited %.0f s)"
                % (load(self.load_before), load(self.load_after), self.threshold, self.waited),
                "calibration loop before: %s, after: %s" % (cal(self.cal_before),
                                                            cal(self.cal_after))]

    def to_json(self):
        return {"load_before": self.load_before, "cal_before": self.cal_before,
                "waited": self.waited, "threshold": self.threshold}

    @classmethod
    def from_json(cls, d):
        q = cls()
        q.load_before, q.cal_before = d["load_before"], d["cal_before"]
        q.waited, q.threshold = d["waited"], d["threshold"]
        return q


# ---- /proc: CPU time and memory of process trees ---------------------------------------------

def _stat(pid):
    """(ppid, utime+stime, cutime+cstime) in clock ticks, or None if the process is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields[0] is the state (field 3 of proc(5)); utime is field 14.
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                kids.setdefault(st[0], []).append(int(name))
    return kids


def tree_pids(root):
    """root and its live descendants."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _stat(pid) is None:
            continue
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def tree_cpu_seconds(roots):
    """CPU seconds (user+system; all threads) of the processes `roots` and their
    descendants, the already reaped ones included (cutime/cstime)."""
    ticks = 0
    for root in roots:
        for pid in tree_pids(root):
            st = _stat(pid)
            if st:
                ticks += st[1] + st[2]
    return ticks / CLK_TCK


def machine_busy_seconds():
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and
    iowait). Its change over a measurement minus the measured processes' CPU time is what
    the rest of the machine (and the kernel outside them) used meanwhile."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / CLK_TCK


def other_cpu_pct(busy_seconds, own_cpu_seconds, elapsed, cores=None):
    """What the rest of the machine used during a measurement, in % of all cores' time:
    the machine's busy time (machine_busy_seconds() after minus before) less the CPU
    time of the measured processes, over `elapsed` wall seconds."""
    cores = cores or os.cpu_count() or 1
    if elapsed <= 0:
        return 0.0
    return max(0.0, busy_seconds - own_cpu_seconds) * 100 / (elapsed * cores)


def _status_kib(pid, key):
    try:
        with open("/proc/%s/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(roots):
    """(sum of VmRSS, sum of VmHWM) in MiB over the trees (shared pages counted per process)."""
    rss = hwm = 0
    for root in roots:
        for pid in tree_pids(root):
            rss += _status_kib(pid, "VmRSS")
            hwm += _status_kib(pid, "VmHWM")
    return rss / 1024, hwm / 1024


def _pss_kib(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_pss(roots):
    """Sum of Pss in MiB over the trees: each shared page split between the processes
    that map it. A sum of VmRSS counts a forked worker's copy-on-write pages once per
    process, which inflates a pre-forking server (gunicorn, Celery's pool) against one
    with fewer processes."""
    return sum(_pss_kib(pid) for root in roots for pid in tree_pids(root)) / 1024


def reset_peak_rss():
    """Resets this process's peak RSS (VmHWM) to its current RSS (/proc/self/clear_refs,
    Linux >= 4.0), so that a later peak_rss_mib() is the peak of what ran since, without
    a loader's transient copies. Returns False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib(pid="self"):
    """VmHWM of a process in MiB (its peak RSS since start or since reset_peak_rss())."""
    return _status_kib(pid, "VmHWM") / 1024


def tree_stop(roots):
    """SIGSTOPs the processes `roots` and their descendants; returns their pids (for
    tree_continue). A stopped consumer takes no CPU and no queued job."""
    import signal
    pids = []
    for root in roots:
        for pid in tree_pids(root):
            try:
                os.kill(pid, signal.SIGSTOP)
                pids.append(pid)
            except ProcessLookupError:
                pass
    return pids


def tree_continue(pids):
    import signal
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def run_with_rusage(cmd, timeout=None, **kw):
    """Runs cmd, stdout and stderr together; returns (returncode, output text, CPU seconds
    of the child: user + system, from wait4). A child past `timeout` is killed."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, **kw)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return proc.returncode, out.read(), ru.ru_utime + ru.ru_stime


class ChildCPU:
    """CPU seconds of this process's reaped children between start() and stop()."""

    def __enter__(self):
        import resource
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._t0 = r.ru_utime + r.ru_stime
        self.seconds = None
        return self

    def __exit__(self, *exc):
        import resource
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.seconds = r.ru_utime + r.ru_stime - self._t0
        return False


# ---- machine record ------------------------------------------------------------------------

def _cpuinfo():
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_kind(flags):
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2"
    return "no AVX2"


def _version(cmd, pattern, stream="stdout"):
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else None


def openblas_info(lib=None):
    """(core name, config string) of an OpenBLAS library loaded with ctypes, or None."""
    candidates = [lib] if lib else [
        "libopenblas.so.0", "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
        "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"]
    for name in candidates:
        try:
            so = ctypes.CDLL(name)
            so.openblas_get_corename.restype = ctypes.c_char_p
            so.openblas_get_config.restype = ctypes.c_char_p
            return so.openblas_get_corename().decode(), so.openblas_get_config().decode()
        except (OSError, AttributeError):
            continue
    return None


# Run under the PyTorch interpreter: its version, where it comes from, its BLAS and the
# OpenBLAS core that the loaded library picked.
_TORCH_PROBE = r"""
import ctypes, json, re, torch
cfg = torch.__config__.show()
blas = re.search(r"BLAS_INFO=(\w+)", cfg)
core = None
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    if "blas" in path and path.startswith("/"):
        try:
            so = ctypes.CDLL(path)
            so.openblas_get_corename.restype = ctypes.c_char_p
            core = "%s (%s)" % (so.openblas_get_corename().decode(), path)
            break
        except (OSError, AttributeError):
            pass
print(json.dumps({"version": torch.__version__, "file": torch.__file__,
                  "blas": blas.group(1) if blas else None, "openblas_core": core,
                  "threads": torch.get_num_threads()}))
"""


def torch_record(python):
    """What PyTorch `python` runs: {'version', 'build', 'blas', 'openblas_core'} or None."""
    if not python or not os.access(python, os.X_OK):
        return None
    try:
        r = subprocess.run([python, "-c", _TORCH_PROBE], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, timeout=120)
        d = json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    d["build"] = "Debian package" if d["file"].startswith("/usr/lib/python3/") else \
        "from " + os.path.dirname(d["file"])
    return d


def machine_record(torch_python=None, extra=None):
    """A dict describing this machine and the software the benchmarks measure."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    rec = {
        "host": platform.node(),
        "cpu": info.get("model name", platform.processor() or "?"),
        "vendor": info.get("vendor_id", "?"),
        "family": info.get("cpu family", "?"), "model": info.get("model", "?"),
        "stepping": info.get("stepping", "?"), "microcode": info.get("microcode", "?"),
        "kind": cpu_kind(flags),
        "isa": {f: f in flags for f in ISA_FLAGS},
        "hypervisor": "hypervisor" in flags,
        "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/meminfo") as f:
            rec["memory_gib"] = round(int(f.readline().split()[1]) / 1048576, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/etc/os-release") as f:
            m = re.search(r'PRETTY_NAME="([^"]*)"', f.read())
            rec["os"] = m.group(1) if m else "?"
    except OSError:
        pass
    ob = openblas_info()
    rec["openblas"] = "%s, %s" % ob if ob else None
    rec["openblas_env"] = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                      "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                           if k in os.environ}
    rec["versions"] = {
        "nginx": _version(["/usr/sbin/nginx", "-v"], r"nginx/(\S+)"),
        "redis": _version([shutil.which("redis-server") or "/usr/bin/redis-server",
                           "--version"], r"v=(\S+)"),
        "wrk": _version([shutil.which("wrk") or "/usr/bin/wrk", "-v"], r"wrk (\S+)"),
    }
    if torch_python:
        t = torch_record(torch_python)
        rec["pytorch"] = ("PyTorch %s (%s, BLAS %s; OpenBLAS core %s)"
                          % (t["version"], t["build"], t["blas"], t["openblas_core"])) \
            if t else "not found (%s)" % torch_python
    rec.update(extra or {})
    return rec


def record_lines(rec):
    isa = " ".join(("+" if on else "-") + f for f, on in rec["isa"].items())
    lines = [
        "machine: %s, %s (%s family %s model %s stepping %s, microcode %s)%s"
        % (rec["host"], rec["cpu"], rec["vendor"], rec["family"], rec["model"],
           rec["stepping"], rec["microcode"], ", virtual machine" if rec["hypervisor"] else ""),
        "cpu kind: %s; isa: %s" % (rec["kind"], isa),
        "cores: %s (%s usable), memory %s GiB, kernel %s, %s, python %s"
        % (rec["cores"], rec["usable_cores"], rec.get("memory_gib", "?"), rec["kernel"],
           rec.get("os", "?"), rec["python"]),
        "openblas: %s%s" % (rec["openblas"] or "not found",
                            (", env " + " ".join("%s=%s" % kv for kv in rec["openblas_env"].items()))
                            if rec["openblas_env"] else ""),
        "versions: " + ", ".join("%s %s" % (k, v or "?") for k, v in rec["versions"].items()),
    ]
    if "pytorch" in rec:
        lines.append("pytorch: " + rec["pytorch"])
    for key, value in rec.items():
        if key.startswith("x_"):
            lines.append("%s: %s" % (key[2:], value))
    return lines


# ---- results file --------------------------------------------------------------------------

def results_path(results_dir, name, status, when=None):
    when = when or datetime.datetime.now()
    suffix = "" if status == "VALID" else "-" + status
    return os.path.join(results_dir, "%s-%s%s.txt" % (name, when.strftime("%Y%m%d-%H%M"), suffix))


def write_results(results_dir, name, title, rec, verdict, body_lines, quiet=None, when=None):
    """Writes title, status, machine record, quiet-machine lines, body: after the checks,
    under a name that carries the status. Returns the path."""
    when = when or datetime.datetime.now()
    lines = ["%s  %s  status: %s" % (title, when.strftime("%Y-%m-%d %H:%M"), verdict.status)]
    lines += record_lines(rec)
    if quiet is not None:
        lines += quiet.lines()
    lines += verdict.lines()
    lines.append("")
    lines += body_lines
    path = write_new(results_path(results_dir, name, verdict.status, when),
                     "\n".join(lines) + "\n")
    return path, lines


def write_new(path, text):
    """Writes text to path, or to path-2.txt, -3, ... when it exists: never over an
    earlier run of the same minute (a VALID file included). Returns the path written."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    base, n = path[:-len(".txt")], 1
    while True:
        try:
            with open(path, "x") as f:
                f.write(text)
            return path
        except FileExistsError:
            n += 1
            path = "%s-%d.txt" % (base, n)


# ---- command line (for shell benchmarks) -----------------------------------------------------

def _main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="benchlib.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("machine")
    m.add_argument("--torch-python")
    qb = sub.add_parser("quiet-before")
    qb.add_argument("state")
    qb.add_argument("--max-wait", type=float, default=120)
    qa = sub.add_parser("quiet-after")
    qa.add_argument("state")
    o = sub.add_parser("order")
    o.add_argument("--repeat", type=int, default=3)
    o.add_argument("--warmup", type=int, default=1)
    o.add_argument("--seed", type=int)
    o.add_argument("names", nargs="+")
    s = sub.add_parser("summarize")
    s.add_argument("series", nargs="+", help="NAME=V1,V2,...")
    a = ap.parse_args(argv)
    if a.cmd == "machine":
        print("\n".join(record_lines(machine_record(a.torch_python))))
    elif a.cmd == "quiet-before":
        q = Quiet(max_wait=a.max_wait)
        q.before()
        with open(a.state, "w") as f:
            json.dump(q.to_json(), f)
    elif a.cmd == "quiet-after":
        with open(a.state) as f:
            q = Quiet.from_json(json.load(f))
        q.after()
        v = Verdict()
        q.judge(v)
        print("\n".join(q.lines() + v.lines()))
    elif a.cmd == "order":
        for rnd, name, warm in plan(a.names, a.repeat, a.warmup, a.seed):
            print("%s %s" % ("warmup" if warm else rnd + 1, name))
    elif a.cmd == "summarize":
        v = Verdict()
        for item in a.series:
            name, _, vals = item.partition("=")
            summ = summarize(float(x) for x in vals.split(","))
            v.spread(name, summ)
            print("%s: %s" % (name, fmt_summary(summ, "%.3f")))
        print("\n".join(v.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
