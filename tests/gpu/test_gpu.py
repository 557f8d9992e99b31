#!/usr/bin/env python3
"""tests/gpu/test_gpu.py (`make test-gpu`): the engine's CUDA backend on this machine's GPU.

Steps, each under its own time limit:
  ops       build/tests/ops_test --device cuda: every backend operation against its
            double-precision reference (rel 1e-5)
  engine    build/tests/engine_test on the tiny_transformer fixture (the engine API; on
            a GPU machine it also creates and frees a cuda engine)
  parity    build/tests/parity on every fixture of tests/fixtures/ with --device cuda
            (layer by layer against the PyTorch reference, rel 2e-5; batch-of-2 and
            short-input checks), MAXERR lines printed
  full      the full-size htdemucs (41,984,456 parameters, random weights, one 7.8 s
            segment; generated with tests/reference/make_fixtures.py by the reference
            python, as `make test-parity-full` does): parity --device cuda --quick
            --tol 1e-4 --compare-device cpu, i.e. the CUDA engine against the PyTorch
            reference and against the CPU engine on the same segment, both within 1e-4
  workerd   `workerd separate` on a 12 s stereo WAV with the full-size weights (the tiny
            fixture model when the full-size ones cannot be made), --device cpu and
            --device cuda (--batch 1 and 2), float32 stems compared: same files, same
            lengths, max |cuda - cpu| <= 1e-4 x max |cpu| per stem; and a --device cuda
            --overlap 0.5 run that must differ by more than 10x that (the comparison
            can fail)

When no CUDA device is usable (ops_test says the build has no CUDA backend, or nvidia-smi
lists no GPU and ops_test cannot create the backend) it prints `SKIP: <reason>` and
counts every step as skipped; a backend that cannot be created where nvidia-smi lists a
GPU is a failure. A step that cannot run for a reason of its own (no reference
python for `full`) is skipped alone. The tools' output is passed through (their own
CASES lines prefixed with the tool's name); the last line is the total:
  CASES: P passed, F failed, S skipped

usage: test_gpu.py [--build DIR] [--ref-python PY] [--work DIR] [--threads N]
                   [--steps ops,engine,parity,full,workerd] [--device cuda]
  --ref-python  python with torch + demucs (default $SEP_REF_PYTHON, else
                build/refvenv/bin/python)
  --work        where the full-size files and the workerd runs go (default
                build/gpu-test)
  --device      the device under test (default cuda; `--device cpu` runs every step
                on the CPU engine: a check of this script on a machine without a GPU)
"""
import argparse
import glob
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import gpuprobe  # noqa: E402

STEPS = ("ops", "engine", "parity", "full", "workerd")
FULL_PARAMETERS = 41984456
FULL_TOL = 1e-4
STEM_TOL = 1e-4
# seconds per tool run: a hung kernel costs its step, not the whole device run
LIMITS = {"ops": 120, "engine": 60, "parity": 60, "full-generate": 180, "full": 150, "workerd": 120}


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.failures = []

    def add_cases(self, p, f, s=0):
        self.passed += p
        self.failed += f
        self.skipped += s

    def check(self, ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(what)
        return ok

    def skip(self, what, n=1):
        print("skip " + what, flush=True)
        self.skipped += n


def run_tool(name, cmd, timeout, env=None, cwd=None):
    """Runs a tool, echoing its output (its CASES lines prefixed with its name).
    Returns (rc or None on timeout, output, (passed, failed) from its CASES line or None)."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.monotonic()
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, env=env, cwd=cwd, errors="replace")
        rc, out = r.returncode, r.stdout
    except subprocess.TimeoutExpired as e:
        rc = None
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += "\n(killed after %d s)\n" % timeout
    except OSError as e:
        rc, out = 127, "cannot run %s: %s\n" % (cmd[0], e)
    cases = None
    for line in out.splitlines():
        m = re.match(r"^CASES: (\d+) passed, (\d+) failed, (\d+) skipped$", line)
        if m:
            cases = (int(m.group(1)), int(m.group(2)))
            line = name + " " + line
        print(line)
    print("(%s: rc %s, %.1f s)" % (name, rc, time.monotonic() - t0), flush=True)
    return rc, out, cases


def count_tool(tally, name, rc, cases):
    """A tool's own cases into the tally; a failed run whose lines name no failure, or
    one that printed no CASES line, counts one failed case more."""
    if cases:
        tally.add_cases(*cases)
    if rc != 0 and (not cases or cases[1] == 0):
        tally.check(False, "%s exited with %s" % (name, "a timeout" if rc is None else rc))
    elif not cases:
        tally.check(rc == 0, name)


# ---- audio ---------------------------------------------------------------------------------

def write_test_wav(path, seconds=12.0, rate=44100):
    """A music-like stereo 16-bit WAV: tones, a decaying click train, some noise."""
    import numpy as np
    n = int(seconds * rate)
    t = np.arange(n) / rate
    rng = np.random.default_rng(7)
    x = np.zeros((2, n))
    for f in (110.0, 220.5, 331.0, 1250.0, 3100.0):
        x += rng.uniform(0.03, 0.1, (2, 1)) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))
    clicks = np.zeros(n)
    clicks[:: rate // 4] = 0.6
    x += np.convolve(clicks, np.exp(-np.arange(400) / 60.0))[:n]
    x += 0.02 * rng.standard_normal((2, n))
    pcm = (np.clip(x / max(1.0, np.abs(x).max() * 1.05), -1, 1) * 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.T.tobytes())


def read_float_wav(path):
    """[channels][frames] float32 of a WAVE_FORMAT_IEEE_FLOAT (or EXTENSIBLE) file."""
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("%s: not a RIFF/WAVE file" % path)
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(raw):
        cid, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        body = raw[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt = struct.unpack("<HHIIHH", body[:16])
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise ValueError("%s: no fmt or data chunk" % path)
    tag, channels, _rate, _bps, _align, bits = fmt
    if bits != 32 or tag not in (3, 0xFFFE):
        raise ValueError("%s: not 32-bit float (format %d, %d bits)" % (path, tag, bits))
    return np.frombuffer(data[:len(data) // (4 * channels) * 4 * channels],
                         dtype="<f4").reshape(-1, channels).T


def stems(outdir):
    """{relative path: file} of the WAV files under outdir."""
    return {os.path.relpath(p, outdir): p
            for p in glob.glob(os.path.join(outdir, "**", "*.wav"), recursive=True)}


# ---- steps ---------------------------------------------------------------------------------

def step_ops(args, tally):
    rc, out, cases = run_tool("ops_test", [args.bin("tests/ops_test"), "--device", args.device],
                              LIMITS["ops"])
    return rc, out, cases


def step_engine(args, tally):
    rc, _out, cases = run_tool("engine_test",
                               [args.bin("tests/engine_test"),
                                os.path.join(REPO, "tests", "fixtures",
                                             "tiny_transformer.weights.safetensors")],
                               LIMITS["engine"])
    count_tool(tally, "engine_test", rc, cases)


def step_parity(args, tally):
    fixtures = sorted(p[:-len(".weights.safetensors")] for p in
                      glob.glob(os.path.join(REPO, "tests", "fixtures", "*.weights.safetensors")))
    tally.check(bool(fixtures), "fixtures found in tests/fixtures/")
    for f in fixtures:
        name = os.path.basename(f)
        print("== parity %s --device %s" % (name, args.device), flush=True)
        rc, _out, cases = run_tool("parity " + name,
                                   [args.bin("tests/parity"), f + ".weights.safetensors",
                                    f + ".activations.safetensors", "--device", args.device,
                                    "--threads", str(args.threads)], LIMITS["parity"])
        count_tool(tally, "parity " + name, rc, cases)


def have_reference(py):
    if not py or not (os.access(py, os.X_OK) or shutil.which(py)):
        return False
    r = subprocess.run([py, "-c", "import torch, demucs.htdemucs"], capture_output=True)
    return r.returncode == 0


def full_files(args):
    d = os.path.join(args.work, "parity-full")
    return (os.path.join(d, "htdemucs_full.weights.safetensors"),
            os.path.join(d, "htdemucs_full.activations.safetensors"), d)


def step_full(args, tally):
    weights, acts, d = full_files(args)
    gen = os.path.join(REPO, "tests", "reference", "make_fixtures.py")
    if not (os.path.getsize(acts) if os.path.exists(acts) else 0) or \
            os.path.getmtime(gen) > os.path.getmtime(acts):
        if not have_reference(args.ref_python):
            tally.skip("full: no reference python with torch + demucs (%s; make deps-reference "
                       "or --ref-python)" % args.ref_python)
            return
        print("== generating the full-size reference in %s" % d, flush=True)
        rc, _out, _ = run_tool("make_fixtures",
                               [args.ref_python, gen, "--config", "htdemucs_full", "--out", d,
                                "--threads", str(args.threads)], LIMITS["full-generate"],
                               cwd=REPO)
        if not tally.check(rc == 0 and os.path.exists(acts), "full-size reference generated"):
            return
    print("== parity htdemucs_full --device %s --compare-device cpu" % args.device, flush=True)
    rc, out, cases = run_tool("parity htdemucs_full",
                              [args.bin("tests/parity"), weights, acts, "--device", args.device,
                               "--compare-device", "cpu", "--threads", str(args.threads),
                               "--quick", "--tol", str(FULL_TOL)], LIMITS["full"])
    count_tool(tally, "parity htdemucs_full", rc, cases)
    tally.check("network 0 (htdemucs_full): %d parameters" % FULL_PARAMETERS in out,
                "the full-size network has htdemucs' 41,984,456 parameters")
    tally.check(re.search(r"^MAXERR output-vs-cpu ", out, re.M) is not None,
                "the %s engine's output compared with the CPU engine's (output-vs-cpu)"
                % args.device)


def step_workerd(args, tally):
    weights, _acts, _d = full_files(args)
    model = weights if os.path.exists(weights) else \
        os.path.join(REPO, "tests", "fixtures", "apply", "tiny_apply.safetensors")
    work = os.path.join(args.work, "workerd")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    wav = os.path.join(work, "song.wav")
    write_test_wav(wav)
    print("== workerd separate, model %s, 12 s stereo WAV" % model, flush=True)
    runs = [("reference-cpu", ["--device", "cpu", "-j", str(args.threads)]),
            (args.device, ["--device", args.device]),
            (args.device + "-batch2", ["--device", args.device, "--batch", "2"]),
            # sensitivity: other segment boundaries must be caught by the comparison
            (args.device + "-overlap50", ["--device", args.device, "--overlap", "0.5"])]
    outs = {}
    for label, flags in runs:
        out = os.path.join(work, "out-" + label)
        rc, text, _ = run_tool("workerd separate " + label,
                               [args.bin("workerd"), "separate", "-n", model, "-o", out,
                                "--shifts", "0", "--float32", "--clip-mode", "none"] + flags +
                               [wav], LIMITS["workerd"])
        if tally.check(rc == 0, "workerd separate %s (rc %s)" % (label, rc)):
            outs[label] = stems(out)
    ref = outs.get("reference-cpu")
    if not ref:
        return
    for label in (args.device, args.device + "-batch2", args.device + "-overlap50"):
        got = outs.get(label)
        if got is None:
            continue
        sensitivity = label.endswith("-overlap50")
        if not tally.check(sorted(got) == sorted(ref) and len(ref) >= 2,
                           "%s: the same %d stem files as the CPU run (%s)"
                           % (label, len(ref), ", ".join(sorted(got)))):
            continue
        worst = 0.0
        for rel in sorted(ref):
            a, b = read_float_wav(ref[rel]), read_float_wav(got[rel])
            if not tally.check(a.shape == b.shape, "%s %s: shape %s, CPU %s"
                               % (label, rel, b.shape, a.shape)):
                continue
            import numpy as np
            peak = float(np.abs(a).max())
            diff = float(np.abs(a.astype(np.float64) - b).max())
            r = diff / peak if peak > 0 else diff
            worst = max(worst, r) if math.isfinite(r) else math.inf
            if not sensitivity:
                print("MAXERR stem-%s-%s abs=%.3e rel=%.3e%s"
                      % (label, rel.replace(os.sep, "/"), diff, r,
                         "" if r <= STEM_TOL else "  FAIL"))
        if sensitivity:
            tally.check(worst > 10 * STEM_TOL, "sensitivity: --overlap 0.5 gives stems rel %.3e "
                        "from the CPU run's (must be > %.0e)" % (worst, 10 * STEM_TOL))
        else:
            tally.check(worst <= STEM_TOL, "%s stems within %.0e of the CPU run's (worst rel "
                        "%.3e)" % (label, STEM_TOL, worst))


def main():
    ap = argparse.ArgumentParser(description="the CUDA backend on this machine's GPU")
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--ref-python", default=os.environ.get(
        "SEP_REF_PYTHON", os.path.join(REPO, "build", "refvenv", "bin", "python")))
    ap.add_argument("--work", default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--device", default="cuda",
                    help="the device under test (cpu: the harness checked on the CPU engine)")
    args = ap.parse_args()
    args.work = os.path.abspath(args.work or os.path.join(args.build, "gpu-test"))
    args.bin = lambda rel: os.path.join(args.build, rel)
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        ap.error("unknown step(s) %s (known: %s)" % (",".join(bad), ",".join(STEPS)))
    os.makedirs(args.work, exist_ok=True)
    tally = Tally()
    t0 = time.monotonic()

    missing = [b for b in ("tests/ops_test", "tests/engine_test", "tests/parity", "workerd")
               if not os.access(args.bin(b), os.X_OK)]
    if missing:
        tally.check(False, "binaries built: %s missing in %s (make all)"
                    % (", ".join(missing), args.build))
        print("CASES: %d passed, %d failed, %d skipped" % (tally.passed, tally.failed,
                                                          tally.skipped))
        return 1

    gpus, why = gpuprobe.nvidia_smi()
    for g in gpus:
        print("gpu %s: %s, %s MiB, driver %s" % (g["index"], g["name"], g["memory_mib"],
                                                 g["driver"]))
    if why:
        print("gpu: " + why)

    # ops_test first: it is also the probe of the backend (it fails at once, before any
    # case, when the backend cannot be created)
    print("== ops_test --device " + args.device, flush=True)
    rc, out, cases = step_ops(args, tally)
    failure = gpuprobe.backend_failure(out) if rc != 0 and not cases else None
    loader = gpuprobe.loader_failure(out) if rc != 0 else None
    reason = None
    if failure and failure[0] == "no-build":
        reason = "the binaries have no CUDA backend (%s)" % failure[1]
    elif failure and failure[0] == "no-device" and why:
        # (where nvidia-smi lists a GPU, a backend that finds none is a failure)
        reason = "no usable CUDA device (%s; %s)" % (why, failure[1])
    elif why and (failure or loader):
        reason = "%s; ops_test --device %s: %s" % (why, args.device, (failure or (None, loader))[1])
    elif why and rc != 0 and not cases:
        reason = "%s; ops_test --device %s exited %s" % (why, args.device, rc)
    if reason:
        print("SKIP: " + reason)
        print("CASES: 0 passed, 0 failed, %d skipped" % len(steps))
        return 0
    if failure or loader:
        tally.check(False, "CUDA backend created: %s" % (failure or (None, loader))[1])
    else:
        if "ops" in steps:
            count_tool(tally, "ops_test --device " + args.device, rc, cases)
        for name, fn in (("engine", step_engine), ("parity", step_parity), ("full", step_full),
                         ("workerd", step_workerd)):
            if name in steps:
                t = time.monotonic()
                try:
                    fn(args, tally)
                except Exception as e:  # a broken step is a failure; the next one still runs
                    tally.check(False, "%s: %s: %s" % (name, type(e).__name__, e))
                print("(step %s: %.1f s)" % (name, time.monotonic() - t), flush=True)
    print()
    print("%s test-gpu: %d passed, %d failed, %d skipped in %.0f s%s"
          % ("FAIL" if tally.failed else "PASS", tally.passed, tally.failed, tally.skipped,
             time.monotonic() - t0, "" if not tally.failures else
             " (" + "; ".join(tally.failures[:5]) + ")"))
    print("CASES: %d passed, %d failed, %d skipped" % (tally.passed, tally.failed, tally.skipped))
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
