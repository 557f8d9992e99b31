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

usage: test_cli.py --workerd build/workerd --audiotool build/tests/audiotool
                   --fixtures tests/fixtures/apply
"""
import argparse
import json
import os
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

    def separate(self, *argv, env=None, model=None):
        cmd = [self.workerd, "separate", "-n", model or self.model, "-j", "1", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.tmp)


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workerd", required=True)
    parser.add_argument("--audiotool", required=True)
    parser.add_argument("--fixtures", required=True)
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
        test_memory(env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"CASES: {len(passes)} passed, {len(failures)} failed, 0 skipped")
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("PASS cli: layout, formats, rates, two-stem, errors, progress, memory, parity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
