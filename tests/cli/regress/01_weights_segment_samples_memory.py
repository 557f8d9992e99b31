#!/usr/bin/python3
"""A 150 KB weights file that passes every documented cap (segment_samples <= 2^24,
models/FORMAT.md "Validation") makes `workerd separate` on a short track run for
minutes and take gigabytes: segment_samples is trusted as the forward length, so the
tiny 2-channel test network is padded to 16.7 M samples per segment. Real-size
channel counts (also within the caps) multiply that. Expected: the loader (or
sep_apply_check) refuses a description whose working set / work is beyond a bound,
or the run finishes like the unmodified file (< 1 s, < 200 MB)."""
import json, os, resource, struct, subprocess, sys, tempfile, time
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
os.chdir(root)
b = open("tests/fixtures/apply/tiny_apply.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["__metadata__"]["segment_samples"] = str(1 << 24)
hj = json.dumps(h).encode()
while len(hj) % 8 != n % 8:
    hj += b" "
d = tempfile.mkdtemp(prefix="repro01-")
w = os.path.join(d, "big.safetensors")
open(w, "wb").write(struct.pack("<Q", len(hj)) + hj + b[8 + n:])
t0 = time.time()
try:
    r = subprocess.run(["build/workerd", "separate", "-n", w, "-o", d + "/out", "-j", "1",
                        "tests/fixtures/apply/track.wav"], capture_output=True, text=True,
                       timeout=15)
    rc = r.returncode; err = r.stderr.strip()[-300:]
except subprocess.TimeoutExpired:
    rc = "timeout(15s)"; err = ""
dt = time.time() - t0
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
print("weights file %d bytes; rc=%s after %.1f s, peak RSS %d MB %s" % (len(hj) + len(b) - n, rc, dt, rss, err))
refused = rc in (1, 2) and "segment" in err
ok = refused or (rc == 0 and dt < 5 and rss < 400)
print("PASS" if ok else "FAIL")
subprocess.run(["rm", "-rf", d])
sys.exit(0 if ok else 1)
