#!/usr/bin/python3
"""conf/workerd.service's install steps copy conf/workerd.conf to /etc/sep/workerd.conf
"then edit redis, spool"; the unit starts `workerd run -c /etc/sep/workerd.conf` with no
WorkingDirectory (cwd /) and mounts /var/lib/sep/models read-only, but no step puts the
weights anywhere, and the conf's `models_dir = models/weights` is relative to the cwd:
/models/weights. workerd starts without a word (models []), and every job fails.
Here: the sample conf with only redis and spool edited, workerd started from / as the
unit does, the weights placed where the unit expects them (/var/lib/sep/models is
faked by a temp dir named in ReadOnlyPaths' place: the sample keeps its own
models_dir). Expected: the job completes, or the steps say to set models_dir.
Observed: the job fails (model_unavailable)."""
import os, re, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "workerd"))
import harness
import test_workerd

REPO = harness.REPO_ROOT
unit = open(os.path.join(REPO, "conf", "workerd.service")).read()
steps = "\n".join(l[1:].strip() for l in unit.splitlines() if l.startswith("#"))
svc = test_workerd.Service().start()
proc = None
try:
    conf = open(os.path.join(REPO, "conf", "workerd.conf")).read()
    # what the header says to edit: redis and spool (and models_dir, if it says so)
    conf = re.sub(r"(?m)^redis = .*$", "redis = " + svc.stack.redis_address, conf)
    conf = re.sub(r"(?m)^spool = .*$", "spool = " + svc.stack.spool, conf)
    conf = re.sub(r"(?m)^prefix = .*$", "prefix = " + test_workerd.PREFIX, conf)
    if "models_dir" in steps:
        conf = re.sub(r"(?m)^models_dir = .*$", "models_dir = " + svc.models, conf)
    path = os.path.join(svc.stack.prefix, "workerd.conf")
    open(path, "w").write(conf)
    log = open(os.path.join(svc.stack.prefix, "logs", "unit.log"), "ab")
    proc = subprocess.Popen([test_workerd.WORKERD, "run", "-c", path], cwd="/",
                            stdout=log, stderr=log)
    r = svc.stack.request("POST", "/v1/jobs", harness.wav_bytes(1.0), {"Content-Type": "audio/wav"})
    jid = r.json["id"]
    for _ in range(600):
        j = svc.stack.request("GET", "/v1/jobs/" + jid).json
        if j["status"] in ("completed", "failed", "canceled"):
            break
        time.sleep(0.1)
    print("steps name models_dir: %s; job %s %s" % ("models_dir" in steps, j["status"],
                                                    (j.get("error") or {}).get("code")))
    ok = j["status"] == "completed"
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    if proc:
        proc.terminate(); proc.wait(30)
    svc.stop()
