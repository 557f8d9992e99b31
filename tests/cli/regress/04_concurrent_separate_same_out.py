#!/usr/bin/python3
"""Two `workerd separate` runs writing the same track folder at once (two inputs x.wav
from different folders, same -o). Each stem is encoded under a fixed temporary name
({track}/.{stem}.wav.partial, workerd/audio.c sep_stem_spool_finish), so both runs
write into the same temp file. Expected: every run either succeeds with its own
complete stem set or fails cleanly, and the folder ends with one run's whole set
(README: "A track's stems appear together")."""
import hashlib, math, os, random, struct, subprocess, sys, tempfile, wave
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
os.chdir(root)
W = "tests/fixtures/apply/tiny_apply.safetensors"
d = tempfile.mkdtemp(prefix="repro04-")
def mkwav(path, seed, secs=20, rate=44100):
    rnd = random.Random(seed)
    with wave.open(path, "wb") as w:
        w.setnchannels(2); w.setsampwidth(2); w.setframerate(rate)
        fr = bytearray()
        f = 200 + 300 * seed
        for i in range(secs * rate):
            v = int(8000 * math.sin(2 * math.pi * f * i / rate) + rnd.randint(-500, 500))
            fr += struct.pack("<hh", v, -v)
        w.writeframes(bytes(fr))
os.makedirs(d + "/a"); os.makedirs(d + "/b")
mkwav(d + "/a/x.wav", 1); mkwav(d + "/b/x.wav", 2)
def run(inp, out):
    return subprocess.Popen(["build/workerd", "separate", "-n", W, "-o", out, "-j", "1", inp],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
def digests(out):
    t = os.path.join(out, "tiny_apply", "x")
    return {f: hashlib.sha1(open(os.path.join(t, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(t)) if not f.startswith(".")}, sorted(os.listdir(t))
refs = []
for s in ("a", "b"):
    p = run(d + "/%s/x.wav" % s, d + "/ref_" + s); p.communicate()
    refs.append(digests(d + "/ref_" + s)[0])
bad = []
for k in range(8):
    out = d + "/out%d" % k
    ps = [run(d + "/a/x.wav", out), run(d + "/b/x.wav", out)]
    res = [(p.wait(), p.stderr.read().strip()[-160:]) for p in ps]
    got, listing = digests(out)
    whole = got in refs
    print("round %d: rc=%s whole set from one run: %s; files %s" % (k, [r[0] for r in res], whole, listing))
    for rc, e in res:
        if rc: print("   ", e)
    if not whole or (all(r[0] == 0 for r in res) is False and not whole):
        bad.append(k)
    for f in listing:
        if f.startswith("."): bad.append((k, f))
subprocess.run(["rm", "-rf", d])
print("PASS" if not bad else "FAIL")
sys.exit(0 if not bad else 1)
