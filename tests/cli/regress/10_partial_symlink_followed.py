#!/usr/bin/python3
"""`workerd separate` writes each stem to the fixed name {track}/.{stem}.wav.partial
with a plain open (libsndfile SFM_WRITE: O_CREAT|O_TRUNC, follows symlinks). A
symlink planted there (a shared or reused -o folder) makes the run truncate and
overwrite the link's target with WAV data, then rename the link away. Expected: the
target is untouched (temporary files created with O_EXCL/O_NOFOLLOW or O_TMPFILE)."""
import hashlib, os, subprocess, sys, tempfile
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
os.chdir(root)
d = tempfile.mkdtemp(prefix="repro10-")
victim = os.path.join(d, "victim.txt")
open(victim, "w").write("precious\n")
track = os.path.join(d, "out", "tiny_apply", "track")
os.makedirs(track)
os.symlink(victim, os.path.join(track, ".drums.wav.partial"))
r = subprocess.run(["build/workerd", "separate", "-n", "tests/fixtures/apply/tiny_apply.safetensors",
                    "-o", d + "/out", "-j", "1", "tests/fixtures/apply/track.wav"],
                   capture_output=True, text=True, timeout=30)
data = open(victim, "rb").read()
print("rc=%d; victim now %d bytes, starts %r" % (r.returncode, len(data), data[:12]))
ok = data == b"precious\n"
subprocess.run(["rm", "-rf", d])
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
