#!/usr/bin/env python3
"""`workerd separate` end to end, on the tiny fixture model (tests/fixtures/apply/).

Runs the real binary on inputs made with tests/cli/audiotool (libsndfile): WAV 16-bit
and float, FLAC, MP3, Ogg Vorbis, Opus, a 48 kHz mono file. Checks demucs' output
layout DIR/{model}/{track}/{stem}.{ext}, stem names and count, lengths, sample rates,
channel counts, output formats (16-bit, 24-bit, float WAV, FLAC), two-stem mode, exit
statuses and messages for a missing file, a garbage file and missing weights, the
progress bar on a TTY and silence otherwise, float output beyond +-1 with
--clip-mode none, NaN/Inf samples and a cut WAV refused, that resampling keeps time alignment
(48 kHz vs 44.1 kHz renderings of one signal), that peak memory does not grow with the
input length, and that the separated 44.1 kHz fixture track matches the reference
demucs.separate output (tests/reference/make_apply_fixtures.py) within TOLERANCE.

Untrusted weights and odd names (issue 17, one test per reported case): source names
that are paths or repeat, hyperparameters that used to crash (stride 0 -> SIGFPE),
misaligned tensor data, a failed run that must leave the old stem set whole (a
blocked rename, and a full disk on the 3rd stem when a tmpfs can be mounted), '..'
model and track names, an empty -o, out-of-range integer metadata, -j beyond the
cores, two inputs with one track folder, a 1 Hz input (refused: hours of audio from a
few bytes) and the lowest accepted rate, a permission error named as such.
With --sanitized (ASan + UBSan build) the RSS and address-space checks are skipped.

usage: test_cli.py --workerd build/workerd --audiotool build/tests/audiotool
                   --fixtures tests/fixtures/apply
"""
import argparse
import json
import os
import re
import pty
import shutil
import subprocess
import sys
import tempfile

import numpy as np

TOLERANCE = 2e-5  # absolute, float32 output vs reference (same as the apply suite)
SOURCES = ["drums", "bass", "other", "vocals"]

failures = []
passes = []
skips = []


def skip(what):
    print("skip " + what)
    skips.append(what)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    (passes if cond else failures).append(what)
    return cond


class Env:
    def __init__(self, args, tmp):
        self.workerd = os.path.abspath(args.workerd)
        self.audiotool = os.path.abspath(args.audiotool)
        self.fixtures = os.path.abspath(args.fixtures)
        self.model = os.path.join(self.fixtures, "tiny_apply.safetensors")
        self.tmp = tmp
        with open(os.path.join(self.fixtures, "cases.json")) as f:
            self.manifest = json.load(f)
        self.cases = {c["name"]: c for c in self.manifest["cases"]}

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def tool(self, *argv):
        subprocess.run([self.audiotool, *argv], check=True)

    def info(self, path):
        out = subprocess.run([self.audiotool, "info", path], check=True, capture_output=True)
        return json.loads(out.stdout)

    def samples(self, path):
        """[channels][frames] float32 as libsndfile decodes it."""
        info = self.info(path)
        raw = self.path("dump.f32")
        self.tool("dump", path, raw)
        return np.fromfile(raw, dtype="<f4").reshape(info["channels"], -1)

    def separate(self, *argv, env=None, model=None, threads="1", cwd=None, preexec=None,
                 workerd=None):
        cmd = [workerd or self.workerd, "separate", "-n", model or self.model]
        if threads:
            cmd += ["-j", threads]
        return subprocess.run(cmd + list(argv), capture_output=True, text=True, env=env,
                              cwd=cwd or self.tmp, preexec_fn=preexec)


def reference(env, case):
    c = env.cases[case]
    frames = env.manifest["frames"]
    raw = np.fromfile(os.path.join(env.fixtures, c["output"]), dtype="<f4")
    return c["stems"], raw.reshape(len(c["stems"]), 2, frames)


def saved(stem):
    """demucs.audio.save_audio's default clip='rescale' and encode_wav's clamp."""
    stem = stem / max(1.01 * float(np.abs(stem).max()), 1.0)
    return np.clip(stem, -1, 1).astype(np.float32)


def stems_in(dirpath):
    return sorted(os.listdir(dirpath)) if os.path.isdir(dirpath) else []


def test_help(env):
    r = subprocess.run([env.workerd, "--help"], capture_output=True, text=True)
    check(r.returncode == 0 and "separate" in r.stdout, "workerd --help lists `separate`")
    r = subprocess.run([env.workerd, "nosuchcommand"], capture_output=True, text=True)
    check(r.returncode == 2 and "unknown command" in r.stderr, "unknown command exits 2")
    r = subprocess.run([env.workerd, "separate", "--help"], capture_output=True, text=True)
    check(r.returncode == 0 and "--two-stems" in r.stdout, "workerd separate --help")


def test_parity(env):
    """The fixture track (44.1 kHz float WAV) through the CLI vs the reference."""
    track = os.path.join(env.fixtures, env.manifest["track"])
    shutil.copy(track, env.path("fixture.wav"))
    r = env.separate("-o", "out", "--shifts", "0", "--float32", "fixture.wav")
    check(r.returncode == 0, f"separate fixture.wav (rc {r.returncode}: {r.stderr.strip()})")
    check(r.stderr == "" and r.stdout == "", "quiet when not on a TTY")
    names, ref = reference(env, "single_overlap25")
    d = env.path("out", "tiny_apply", "fixture")
    check(stems_in(d) == sorted(n + ".wav" for n in names), f"layout {d}: {stems_in(d)}")
    worst = 0.0
    for i, name in enumerate(names):
        p = os.path.join(d, name + ".wav")
        if not os.path.exists(p):
            continue
        info = env.info(p)
        check(info["subtype"] == "32 bit float" and info["samplerate"] == 44100
              and info["channels"] == 2 and info["frames"] == env.manifest["frames"],
              f"{name}.wav is float32 stereo 44.1 kHz, {env.manifest['frames']} frames: {info}")
        worst = max(worst, float(np.abs(env.samples(p) - saved(ref[i])).max()))
    print(f"MAXERR cli_float32_vs_reference max_abs={worst:.3g} tol={TOLERANCE:.0e}")
    check(worst <= TOLERANCE, f"float32 output within {TOLERANCE} of the reference ({worst:.3g})")

    # The same through 16-bit PCM (demucs: clamp, * 32767, truncate toward zero).
    env.tool("convert", track, env.path("fixture16.wav"), "wav16")
    r = env.separate("-o", "out", "--shifts", "0", "fixture16.wav")
    check(r.returncode == 0, f"separate fixture16.wav ({r.stderr.strip()})")
    worst_lsb = 0
    for i, name in enumerate(names):
        p = env.path("out", "tiny_apply", "fixture16", name + ".wav")
        if not os.path.exists(p):
            check(False, f"{p} exists")
            continue
        check(env.info(p)["subtype"] == "Signed 16 bit PCM", f"{name}.wav is 16-bit PCM")
        got = np.round(env.samples(p) * 32768).astype(np.int64)
        want = np.trunc(saved(ref[i]) * np.float32(32767)).astype(np.int64)
        worst_lsb = max(worst_lsb, int(np.abs(got - want).max()))
    print(f"MAXERR cli_int16_vs_reference max_lsb={worst_lsb}")
    check(worst_lsb <= 1 + TOLERANCE * 32767, f"16-bit output within a step of the reference "
          f"({worst_lsb} LSB)")

    # Two-stem mode with a shorter segment, against its own reference case.
    case = "single_segment008_two_vocals"
    names, ref = reference(env, case)
    r = env.separate("-o", "two", "--shifts", "0", "--float32",
                     "--segment", str(env.cases[case]["segment"]),
                     "--two-stems", "vocals", "fixture.wav")
    check(r.returncode == 0, f"two-stem run ({r.stderr.strip()})")
    d = env.path("two", "tiny_apply", "fixture")
    check(stems_in(d) == ["no_vocals.wav", "vocals.wav"], f"two-stem layout: {stems_in(d)}")
    worst = 0.0
    for i, name in enumerate(names):
        p = os.path.join(d, name + ".wav")
        if os.path.exists(p):
            worst = max(worst, float(np.abs(env.samples(p) - saved(ref[i])).max()))
    print(f"MAXERR cli_two_stems_short_segment max_abs={worst:.3g} tol={TOLERANCE:.0e}")
    check(worst <= TOLERANCE, f"two-stem output within {TOLERANCE} of the reference ({worst:.3g})")


def test_formats(env):
    """Input formats and rates in, output formats out; lengths and rates."""
    track = os.path.join(env.fixtures, env.manifest["track"])
    frames = env.manifest["frames"]
    inputs = {}
    for name, fmt in [("in_flac.flac", "flac16"), ("in_mp3.mp3", "mp3"), ("in_ogg.ogg", "ogg")]:
        env.tool("convert", track, env.path(name), fmt)
        inputs[name] = env.info(env.path(name))["frames"]
    env.tool("gen", env.path("in_mono48.wav"), "wav16", "48000", "1", "2.0")
    env.tool("gen", env.path("in_opus.opus"), "opus", "48000", "2", "1.0")
    inputs["in_mono48.wav"] = 96000 * 44100 // 48000
    inputs["in_opus.opus"] = env.info(env.path("in_opus.opus"))["frames"] * 44100 // 48000
    r = env.separate("-o", "fmt", *inputs)
    check(r.returncode == 0, f"separate flac/mp3/ogg/opus/48k mono ({r.stderr.strip()})")
    for name, want in inputs.items():
        d = env.path("fmt", "tiny_apply", name.rsplit(".", 1)[0])
        check(stems_in(d) == sorted(s + ".wav" for s in SOURCES), f"{name}: 4 stems in {d}")
        for s in SOURCES:
            p = os.path.join(d, s + ".wav")
            if os.path.exists(p):
                info = env.info(p)
                check(info["samplerate"] == 44100 and info["channels"] == 2 and
                      info["frames"] == want and info["subtype"] == "Signed 16 bit PCM",
                      f"{name} -> {s}.wav: 44.1 kHz stereo 16-bit, {want} frames: {info}")
    check(frames > 0 and inputs["in_flac.flac"] == frames, "FLAC input decodes to full length")

    for flags, major, subtype, ext in [
            (["--int24"], "wav", "Signed 24 bit PCM", "wav"),
            (["--flac"], "flac", "Signed 16 bit PCM", "flac"),
            (["--flac", "--int24"], "flac", "Signed 24 bit PCM", "flac")]:
        out = "o_" + "_".join(f.strip("-") for f in flags)
        r = env.separate("-o", out, "--shifts", "0", *flags, "in_flac.flac")
        d = env.path(out, "tiny_apply", "in_flac")
        ok = r.returncode == 0 and stems_in(d) == sorted(f"{s}.{ext}" for s in SOURCES)
        if ok:
            info = env.info(os.path.join(d, f"vocals.{ext}"))
            ok = info["major"] == major and info["subtype"] == subtype and info["frames"] == frames
        check(ok, f"{' '.join(flags)}: {major} {subtype} stems ({r.stderr.strip()})")
    r = env.separate("-o", "bad", "--flac", "--float32", "in_flac.flac")
    check(r.returncode == 2 and "FLAC" in r.stderr, "--flac --float32 is refused")

    # 24-bit content: demucs' trunc(x * 8388607) within one step of the reference.
    names, ref = reference(env, "single_overlap25")
    shutil.copy(track, env.path("fixture24.wav"))
    r = env.separate("-o", "o24", "--shifts", "0", "--int24", "fixture24.wav")
    if check(r.returncode == 0, "24-bit run"):
        got = np.round(env.samples(env.path("o24", "tiny_apply", "fixture24", "vocals.wav"))
                       * 8388608).astype(np.int64)
        want = np.trunc(saved(ref[3]) * np.float32(8388607)).astype(np.int64)
        lsb = int(np.abs(got - want).max())
        check(lsb <= 1 + TOLERANCE * 8388607, f"24-bit samples match the reference ({lsb} LSB)")


def test_resampling(env):
    """One signal rendered at 48 kHz and at 44.1 kHz separates to the same stems."""
    env.tool("gen", env.path("sig48.wav"), "wavf32", "48000", "1", "1.5")
    env.tool("gen", env.path("sig44.wav"), "wavf32", "44100", "1", "1.5")
    r = env.separate("-o", "rs", "--shifts", "0", "--float32", "sig48.wav", "sig44.wav")
    if not check(r.returncode == 0, f"resampling run ({r.stderr.strip()})"):
        return
    worst, peak = 0.0, 0.0
    for s in SOURCES:
        a = env.samples(env.path("rs", "tiny_apply", "sig48", s + ".wav"))
        b = env.samples(env.path("rs", "tiny_apply", "sig44", s + ".wav"))
        if a.shape != b.shape:
            check(False, f"{s}: 48 kHz and 44.1 kHz renderings differ in shape")
            return
        worst = max(worst, float(np.abs(a - b).max()))
        peak = max(peak, float(np.abs(b).max()))
    print(f"MAXERR cli_resampled_48k_vs_44k max_abs={worst:.3g} peak={peak:.3f}")
    check(worst <= 1e-4,
          f"48 kHz input separates like the 44.1 kHz one ({worst:.3g}, peak {peak:.3f})")


def test_errors(env):
    env.tool("gen", env.path("good.wav"), "wav16", "44100", "2", "0.5")
    with open(env.path("garbage.wav"), "wb") as f:
        f.write(os.urandom(20000))
    r = env.separate("-o", "err", "missing.wav")
    check(r.returncode == 1 and "cannot open 'missing.wav'" in r.stderr
          and "No such file" in r.stderr, f"missing file: rc 1 + message ({r.stderr.strip()})")
    r = env.separate("-o", "err", "garbage.wav")
    check(r.returncode == 1 and "cannot decode 'garbage.wav'" in r.stderr,
          f"garbage file: rc 1 + message ({r.stderr.strip()})")
    check(not os.path.exists(env.path("err", "tiny_apply", "garbage")),
          "no output folder for an undecodable file")
    r = env.separate("-o", "err", "missing.wav", "good.wav")
    check(r.returncode == 1 and len(stems_in(env.path("err", "tiny_apply", "good"))) == 4,
          "a failed track does not stop the others; exit status 1")
    menv = dict(os.environ, SEP_MODELS=env.path("no-weights-here"))
    r = env.separate("-o", "err", "good.wav", env=menv, model="htdemucs")
    check(r.returncode == 1 and "models/get-weights htdemucs" in r.stderr
          and "no-weights-here/htdemucs.safetensors" in r.stderr,
          f"missing weights: rc 1, says how to get them ({r.stderr.strip()})")
    r = env.separate("-o", "err", "--two-stems", "kazoo", "good.wav")
    check(r.returncode == 2 and "kazoo" in r.stderr and "vocals" in r.stderr,
          f"unknown two-stem source: rc 2 ({r.stderr.strip()})")
    r = env.separate("-o", "err", "--segment", "5", "good.wav")
    check(r.returncode == 2 and "segment" in r.stderr, f"segment too long: rc 2 ({r.stderr.strip()})")
    r = env.separate("-o", "err")
    check(r.returncode == 2 and "no input" in r.stderr, "no input: rc 2")
    # the API's limits (shared/sep_options.h), and a bad device is a usage error
    for args, what in ((["--shifts", "11"], "--shifts"), (["--overlap", "0.99"], "--overlap"),
                       (["--overlap", "-0.1"], "--overlap"), (["-d", "gpu"], "--device"),
                       (["--jobs", "-3"], "--jobs")):
        r = env.separate("-o", "err", *args, "good.wav")
        check(r.returncode == 2 and what in r.stderr,
              f"{' '.join(args)}: rc 2 naming {what} (rc {r.returncode}, {r.stderr.strip()})")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "models", "apply.h")) as f:
        apply_h = f.read()
    with open(os.path.join(root, "shared", "sep_options.h")) as f:
        options_h = f.read()
    for cli, api in (("SEP_APPLY_MAX_SHIFTS", "SEP_SHIFTS_MAX"),
                     ("SEP_APPLY_OVERLAP_LIMIT", "SEP_OVERLAP_LIMIT")):
        a = re.search(r"#define %s (\S+)" % cli, apply_h)
        b = re.search(r"#define %s (\S+)" % api, options_h)
        check(a and b and a.group(1) == b.group(1),
              f"CLI limit {cli} equals the API's {api} ({a and a.group(1)} vs {b and b.group(1)})")
    r = env.separate("-o", "err-j", "--jobs", "1", "--shifts", "10", "good.wav")
    check(r.returncode == 0, f"--jobs (demucs' -j) and --shifts 10 are accepted ({r.stderr.strip()})")
    leftovers = [os.path.join(dp, f) for dp, _, fs in os.walk(env.path("err"))
                 for f in fs if f.startswith(".")]
    check(not leftovers, f"no temporary files left behind: {leftovers}")


def write_float_wav(path, samples):
    """samples [frames][channels] float32 as a WAVE_FORMAT_IEEE_FLOAT file."""
    import struct
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    ch = samples.shape[1]
    hdr = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
           struct.pack("<IHHIIHH", 16, 3, ch, 44100, 44100 * 4 * ch, 4 * ch, 32) +
           b"data" + struct.pack("<I", len(data)))
    with open(path, "wb") as f:
        f.write(hdr + data)


def test_float_and_bad_samples(env):
    """Float output keeps |x| > 1 with --clip-mode none; NaN/Inf and cut files refused."""
    t = np.arange(44100) / 44100.0
    loud = 4 * np.stack([np.sign(np.sin(2 * np.pi * 220 * t)), np.sin(2 * np.pi * 330 * t)], 1)
    write_float_wav(env.path("loud.wav"), loud)
    peaks = {}
    for flags in (("--float32", "--clip-mode", "none"), ("--float32",),
                  ("--int24", "--clip-mode", "none")):
        name = "_".join(f.strip("-") for f in flags)
        r = env.separate("-o", "loud_" + name, *flags, "loud.wav")
        if not check(r.returncode == 0, f"loud input {' '.join(flags)} ({r.stderr.strip()})"):
            return
        out = env.path("loud_" + name, "tiny_apply", "loud")
        peaks[flags] = max(float(np.abs(env.samples(os.path.join(out, f))).max())
                           for f in stems_in(out))
    print(f"RESULT cli loud input stem peaks: {peaks}")
    check(peaks[("--float32", "--clip-mode", "none")] > 1.0,
          "--float32 --clip-mode none keeps samples beyond +-1")
    check(peaks[("--float32",)] <= 1.0, "--float32 with rescale stays within +-1")
    check(peaks[("--int24", "--clip-mode", "none")] <= 1.0, "--int24 clamps to +-1")

    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        x = loud.copy() / 8
        x[1234, 1] = value
        write_float_wav(env.path(name), x)
        r = env.separate("-o", "bad", name)
        check(r.returncode == 1 and "non-finite sample" in r.stderr,
              f"{name}: rc 1 + message ({r.stderr.strip()})")
    env.tool("gen", env.path("cut.wav"), "wav16", "44100", "2", "1.0")
    os.truncate(env.path("cut.wav"), os.path.getsize(env.path("cut.wav")) // 2)
    r = env.separate("-o", "bad", "cut.wav")
    check(r.returncode == 1 and "truncated" in r.stderr,
          f"truncated WAV: rc 1 + message ({r.stderr.strip()})")
    check(not os.path.exists(env.path("bad", "tiny_apply", "nan")) and
          not os.path.exists(env.path("bad", "tiny_apply", "cut")),
          "no output folder for refused inputs")


def test_tty_progress(env):
    """On a TTY the progress bar is drawn and ends at 100%."""
    master, slave = pty.openpty()
    p = subprocess.Popen([env.workerd, "separate", "-n", env.model, "-o", "tty", "good.wav"],
                         stdout=slave, stderr=slave, cwd=env.tmp)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    rc = p.wait()
    text = b"".join(chunks).decode(errors="replace")
    check(rc == 0 and "100%" in text and "separate" in text, "progress bar on a TTY")


def peak_rss_kib(cmd, cwd):
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss


def test_memory(env):
    """Peak RSS of a 40 s input is within a few MiB of a 10 s one."""
    rss = {}
    for secs in (10, 40):
        name = f"long{secs}.wav"
        env.tool("gen", env.path(name), "wav16", "44100", "2", str(secs))
        rc, kib = peak_rss_kib([env.workerd, "separate", "-n", env.model, "-o", "mem",
                                "-j", "1", "--batch", "2", name], env.tmp)
        check(rc == 0, f"{secs} s input separates")
        rss[secs] = kib
    grow = (rss[40] - rss[10]) / 1024
    # 30 s more of stereo float32 is 10 MiB per copy: input + 4 stems would be 50 MiB.
    print(f"RESULT cli peak RSS: 10 s input {rss[10] / 1024:.1f} MiB, 40 s input "
          f"{rss[40] / 1024:.1f} MiB (growth {grow:.1f} MiB)")
    check(grow < 4.0, f"peak RSS does not grow with input length (+{grow:.1f} MiB)")


# ---- untrusted weights and odd names --------------------------------------------


def read_weights(path):
    import struct
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + hlen]), blob[8 + hlen:]


def write_weights(path, header, data, hlen=None):
    """header (dict) + data; the header padded with spaces to a multiple of 8 bytes,
    or to exactly hlen bytes."""
    import struct
    text = json.dumps(header).encode()
    size = hlen if hlen is not None else (len(text) + 7) // 8 * 8
    text += b" " * (size - len(text))
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", size) + text + data)


def altered_model(env, name, meta=None, kwargs=None, hlen=None, drop_tensors=False):
    header, data = read_weights(env.model)
    md = header["__metadata__"]
    for k, v in (meta or {}).items():
        md[k] = v
    if kwargs:
        models = json.loads(md["models"])
        models[0]["kwargs"].update(kwargs)
        md["models"] = json.dumps(models)
    if drop_tensors:
        header, data = {"__metadata__": md}, b""
    path = env.path(name)
    write_weights(path, header, data, hlen)
    return path


def files_under(root):
    return sorted(os.path.relpath(os.path.join(dp, f), root)
                  for dp, _, fs in os.walk(root) for f in fs)


def test_untrusted_weights(env):
    """Cases 1, 2, 3 and 7 (metadata): the load refuses, naming field, value, rule."""
    env.tool("gen", env.path("s.wav"), "wav16", "44100", "2", "0.5")
    os.makedirs(env.path("uw"), exist_ok=True)
    before = set(files_under(env.tmp))
    evil = altered_model(env, "evil.safetensors", meta={
        "sources": json.dumps(["/../../../../pwned", "bass", "other", "vocals"])})
    r = env.separate("s.wav", "-o", "out/a", model="evil.safetensors")
    check(r.returncode == 1 and 'source name "/../../../../pwned": must match '
          "[A-Za-z0-9_-]{1,31}" in r.stderr,
          f"case 1: a source name with a path is refused ({r.stderr.strip()})")
    pwned = [f for f in files_under(env.tmp) if "pwned" in f] + \
        [f for f in os.listdir("/") if "pwned" in f]
    check(not pwned and not os.path.exists(os.path.join(os.path.dirname(env.tmp), "pwned.wav")),
          f"case 1: nothing written outside -o ({pwned})")
    altered_model(env, "dup.safetensors", meta={"sources": json.dumps(["a", "a", "a", "a"])})
    r = env.separate("s.wav", "-o", "out/a", model="dup.safetensors")
    check(r.returncode == 1 and 'source name "a" appears twice: names must be distinct'
          in r.stderr, f"case 1: duplicate source names are refused ({r.stderr.strip()})")
    del evil

    for label, kw, needle in [
            ("stride 0", {"stride": 0}, "hyperparameter stride = 0: must be an integer in [1, 64]"),
            ("norm_groups 0", {"norm_groups": 0}, "hyperparameter norm_groups = 0:"),
            ("kernel_size 0", {"kernel_size": 0}, "hyperparameter kernel_size = 0:"),
            ("time_stride 0", {"time_stride": 0}, "hyperparameter time_stride = 0:"),
            ("growth 0", {"growth": 0}, "hyperparameter growth = 0: must be a number in (0, 16]"),
            ("channels 1e10", {"channels": 10 ** 10}, "hyperparameter channels = 10000000000:"),
            ("growth 1e30", {"growth": 1e30}, "hyperparameter growth = 1e+30:"),
            ("context_enc 2^30", {"context_enc": 2 ** 30}, "hyperparameter context_enc = 1073741824:"),
            ("norm_groups 3 (normed layers)", {"norm_groups": 3, "norm_starts": 0},
             "hyperparameter norm_groups = 3: must divide the channel count of every normalized"),
            ("norm_groups -1", {"norm_groups": -1}, "hyperparameter norm_groups = -1:"),
            ("norm_groups 1000 (normed layers)", {"norm_groups": 1000, "norm_starts": 0},
             "hyperparameter norm_groups = 1000: must divide")]:
        name = "hp_" + label.split()[0] + ".safetensors"
        altered_model(env, name, kwargs=kw)
        r = env.separate("-o", "uw", "s.wav", model=name)
        check(r.returncode == 1 and needle in r.stderr,
              f"case 2: {label} is refused at load, rc {r.returncode} ({r.stderr.strip()})")
    altered_model(env, "meta_stride0.safetensors", kwargs={"stride": 0}, drop_tensors=True)
    size = os.path.getsize(env.path("meta_stride0.safetensors"))
    r = env.separate("-o", "uw", "s.wav", model="meta_stride0.safetensors")
    check(r.returncode == 1 and "hyperparameter stride = 0" in r.stderr,
          f"case 2: a {size}-byte metadata-only file with stride 0: rc 1, no SIGFPE "
          f"(rc {r.returncode}: {r.stderr.strip()})")

    header, data = read_weights(env.model)
    text = json.dumps(header).encode()
    hlen = (len(text) + 7) // 8 * 8 + 1  # 8k + 1: valid, but the floats are misaligned
    write_weights(env.path("misaligned.safetensors"), header, data, hlen)
    r = env.separate("-o", "uw", "s.wav", model="misaligned.safetensors")
    check(r.returncode == 1 and "not 4-byte aligned" in r.stderr,
          f"case 3: tensor data misaligned in the file is refused ({r.stderr.strip()})")

    altered_model(env, "seg.safetensors", meta={"segment_samples": "4294971706"})
    r = env.separate("-o", "uw", "s.wav", model="seg.safetensors")
    check(r.returncode == 1 and 'metadata "segment_samples" = 4294971706: must be an integer'
          in r.stderr, f"case 7: segment_samples beyond int is refused ({r.stderr.strip()})")
    header, data = read_weights(env.model)
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [2 ** 62]
    write_weights(env.path("shape.safetensors"), header, data)
    r = env.separate("-o", "uw", "s.wav", model="shape.safetensors")
    check(r.returncode == 1 and "element count overflows" in r.stderr,
          f"case 7: a [2^62] shape is refused ({r.stderr.strip()})")
    header, data = read_weights(env.model)
    names = [k for k in header if k != "__metadata__"]
    header["0.alias"] = dict(header[names[0]])
    write_weights(env.path("alias.safetensors"), header, data)
    r = env.separate("-o", "uw", "s.wav", model="alias.safetensors")
    check(r.returncode == 1 and "overlap tensor" in r.stderr,
          f"case 7: aliased tensor ranges are refused ({r.stderr.strip()})")
    after = set(files_under(env.tmp)) - before
    stray = [f for f in after if f.endswith(".wav")]
    check(not stray, f"no stems written by refused models ({stray})")


def stem_bytes(d):
    out = {}
    for f in stems_in(d):
        p = os.path.join(d, f)
        if os.path.isfile(p):
            with open(p, "rb") as fh:
                out[f] = fh.read()
    return out


def test_stem_set_all_or_nothing(env):
    """Case 4: a failed run leaves the previous set whole, never a mix."""
    env.tool("gen", env.path("set.wav"), "wav16", "44100", "2", "0.5")
    r = env.separate("-o", "set", "set.wav")
    d = env.path("set", "tiny_apply", "set")
    old = stem_bytes(d)
    if not check(r.returncode == 0 and len(old) == 4, "case 4: first run writes 4 stems"):
        return
    # the 3rd stem cannot be renamed into place (a folder holds its name)
    os.remove(os.path.join(d, "other.wav"))
    os.mkdir(os.path.join(d, "other.wav"))
    env.tool("gen", env.path("set.wav"), "wav16", "44100", "2", "0.7")  # other length
    r = env.separate("-o", "set", "set.wav")
    now = stem_bytes(d)
    want = {k: v for k, v in old.items() if k != "other.wav"}
    check(r.returncode == 1 and now == want,
          f"case 4: a rename failure on the 3rd stem restores the old drums/bass "
          f"(rc {r.returncode}, same: {sorted(k for k in now if now[k] == old.get(k))})")
    hidden = [f for f in os.listdir(d) if f.startswith(".")]
    check(not hidden, f"case 4: no temporaries or backups left ({hidden})")
    os.rmdir(os.path.join(d, "other.wav"))

    # out of disk space on the 3rd stem (a small tmpfs), when this machine lets us mount
    mnt = env.path("full")
    os.makedirs(mnt)
    frames = 22050
    unit = 4 * 2 * frames  # one float32 stereo spool
    # the old set (4 half units), the decode and 4 stem spools (5 units), 2 new 16-bit
    # stems (1 unit) and half of a third
    size = (2 + 5 + 1) * unit + unit // 4
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt],
                       capture_output=True)
    if m.returncode != 0:
        skip("case 4: ENOSPC on the 3rd stem (cannot mount a tmpfs here)")
        return
    try:
        d = os.path.join(mnt, "tiny_apply", "set")
        os.makedirs(d)
        for f, b in old.items():
            with open(os.path.join(d, f), "wb") as fh:
                fh.write(b)
        env.tool("gen", env.path("set.wav"), "wav16", "44100", "2", "0.5")
        r = env.separate("-o", mnt, "set.wav")
        check(r.returncode == 1 and "other.wav" in r.stderr and stem_bytes(d) == old and
              not [f for f in os.listdir(d) if f.startswith(".")],
              f"case 4: disk full on the 3rd stem: the previous set is untouched "
              f"(rc {r.returncode}: {r.stderr.strip()})")
    finally:
        subprocess.run(["umount", mnt], capture_output=True)


def test_odd_names(env):
    """Cases 5, 6 and 7 (CLI): '..' names, empty -o, -j, same-basename inputs."""
    env.tool("gen", env.path("...wav"), "wav16", "44100", "2", "0.3")
    shutil.copy(env.model, env.path("...safetensors"))
    os.makedirs(env.path("odd"), exist_ok=True)
    before = set(files_under(env.tmp))
    r = env.separate("-o", "odd/sub", "...wav", model="...safetensors")
    new = sorted(set(files_under(env.tmp)) - before)
    check(r.returncode == 0 and new and all(f.startswith("odd/sub/_../_../") for f in new),
          f"case 5: '..' model and track names stay under -o ({new}, {r.stderr.strip()})")

    existed = os.path.exists("/tiny_apply")
    r = env.separate("-o", "", "good.wav")
    made = not existed and os.path.exists("/tiny_apply")
    check(r.returncode == 2 and "-o/--out must name a folder" in r.stderr and not made,
          f"case 6: -o '' is refused, nothing made under / ({r.stderr.strip()})")

    r = env.separate("-o", "odd", "good.wav", threads="256")
    check(r.returncode == 0 and "-j 256 is more than the" in r.stderr and "usable core" in r.stderr,
          f"case 7: -j 256 is lowered to the usable cores with a note ({r.stderr.strip()})")

    os.makedirs(env.path("d1"), exist_ok=True)
    os.makedirs(env.path("d2"), exist_ok=True)
    shutil.copy(env.path("good.wav"), env.path("d1", "x.wav"))
    env.tool("convert", env.path("good.wav"), env.path("d2", "x.flac"), "flac16")
    r = env.separate("-o", "same", "d1/x.wav", "d2/x.flac")
    check(r.returncode == 2 and "would both be written to the track folder 'x'" in r.stderr
          and not os.path.exists(env.path("same")),
          f"case 7: two inputs with one track folder are refused ({r.stderr.strip()})")
    r = subprocess.run([env.workerd, "separate", "--help"], capture_output=True, text=True)
    check("same name" in r.stdout and "refused" in r.stdout, "--help says same names are refused")


def test_odd_inputs(env, sanitized):
    """Case 7 (audio): a 1 Hz WAV is refused (resampled, a few bytes would be hours of
    audio); the lowest accepted rate separates within bounded memory; permission errors."""
    import resource
    import struct

    def wav_at(name, rate, frames):
        data = struct.pack("<2h", 1000, -1000) * frames
        hdr = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " +
               struct.pack("<IHHIIHH", 16, 1, 2, rate, 4 * rate, 4, 16) + b"data" +
               struct.pack("<I", len(data)))
        with open(env.path(name), "wb") as f:
            f.write(hdr + data)
        return len(hdr + data)

    size = wav_at("onehz.wav", 1, 256)
    r = env.separate("-o", "hz", "onehz.wav")
    check(r.returncode == 1 and "sample rate 1 Hz is below 4000 Hz" in r.stderr and
          not os.path.exists(env.path("hz", "tiny_apply", "onehz")),
          f"case 7: a {size}-byte 1 Hz WAV (256 s of audio) is refused ({r.stderr.strip()})")

    def limit_as():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    frames = 2
    size = wav_at("lowrate.wav", 4000, frames)
    r = env.separate("-o", "hz", "lowrate.wav", preexec=None if sanitized else limit_as)
    d = env.path("hz", "tiny_apply", "lowrate")
    ok = r.returncode == 0 and len(stems_in(d)) == 4
    if ok:
        ok = env.info(os.path.join(d, "vocals.wav"))["frames"] == frames * 44100 // 4000
    check(ok, f"case 7: a {size}-byte 4000 Hz WAV separates"
          f"{'' if sanitized else ' within 4 GiB of address space'} ({r.stderr.strip()})")

    # an unreadable input: as root, run workerd as nobody in a world-writable folder
    as_root = os.geteuid() == 0
    room = tempfile.mkdtemp(prefix="sep-cli-perm-")
    try:
        os.chmod(room, 0o777)
        shutil.copy(env.model, os.path.join(room, "m.safetensors"))
        os.chmod(os.path.join(room, "m.safetensors"), 0o644)
        shutil.copy(env.path("good.wav"), os.path.join(room, "locked.wav"))
        os.chmod(os.path.join(room, "locked.wav"), 0)
        # the binary too: the checkout may sit in a folder only its owner can enter
        workerd = os.path.join(room, "workerd")
        shutil.copy(env.workerd, workerd)
        os.chmod(workerd, 0o755)

        def as_nobody():
            os.setgid(65534)
            os.setuid(65534)

        r = env.separate("-o", os.path.join(room, "out"), "locked.wav",
                         model=os.path.join(room, "m.safetensors"), cwd=room,
                         preexec=as_nobody if as_root else None, workerd=workerd)
        check(r.returncode == 1 and "cannot open 'locked.wav': Permission denied" in r.stderr
              and "not a supported" not in r.stderr,
              f"case 7: an unreadable file is reported as permission denied ({r.stderr.strip()})")
    finally:
        shutil.rmtree(room, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workerd", required=True)
    parser.add_argument("--audiotool", required=True)
    parser.add_argument("--fixtures", required=True)
    parser.add_argument("--sanitized", action="store_true",
                        help="workerd is an ASan/UBSan build: skip RSS and address-space limits")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="sep-cli-test-")
    try:
        env = Env(args, tmp)
        test_help(env)
        test_parity(env)
        test_formats(env)
        test_resampling(env)
        test_errors(env)
        test_float_and_bad_samples(env)
        test_tty_progress(env)
        if args.sanitized:
            skip("peak RSS (sanitized build)")
        else:
            test_memory(env)
        test_untrusted_weights(env)
        test_stem_set_all_or_nothing(env)
        test_odd_names(env)
        test_odd_inputs(env, args.sanitized)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"CASES: {len(passes)} passed, {len(failures)} failed, {len(skips)} skipped")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("PASS cli: layout, formats, rates, two-stem, errors, progress, memory, parity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
