#!/usr/bin/python3
"""models/FORMAT.md "Validation": nothing the metadata says is trusted, values are
range-checked and a failure names the field. The metadata "segment" (seconds) is read
with a bare strtod (models/model.c, sep_model_load info): "nan", "-5", "1e-300",
"abc" and "0" all load silently (NaN/garbage become 0, which then makes every
--segment be refused as "longer than the model was trained for: maximum 0 s").
Expected: each refused at load naming "segment", like segment_samples."""
import json, os, struct, subprocess, sys, tempfile
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
os.chdir(root)
b = open("tests/fixtures/apply/tiny_apply.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h0 = json.loads(b[8:8 + n])
d = tempfile.mkdtemp(prefix="repro11-")
bad = []
for v in ["nan", "-5", "1e-300", "abc", "0", "1e308"]:
    h = json.loads(json.dumps(h0)); h["__metadata__"]["segment"] = v
    hj = json.dumps(h).encode()
    while len(hj) % 8 != n % 8: hj += b" "
    w = os.path.join(d, "m.safetensors")
    open(w, "wb").write(struct.pack("<Q", len(hj)) + hj + b[8 + n:])
    r = subprocess.run(["build/workerd", "separate", "-n", w, "-o", d + "/o", "-j", "1",
                        "tests/fixtures/apply/track.wav"], capture_output=True, text=True, timeout=30)
    refused = r.returncode != 0 and "segment" in r.stderr
    print("segment=%-7s rc=%d %s" % (v, r.returncode, r.stderr.strip()[-120:]))
    if not refused: bad.append(v)
subprocess.run(["rm", "-rf", d])
print("loaded without complaint:", bad)
print("PASS" if not bad else "FAIL")
sys.exit(0 if not bad else 1)
