#!/usr/bin/python3
"""The stems location's `alias` naming another directory than `sep_spool` (a typo, or
the spool moved and only sep_spool edited). ngx_module/README.md: "alias = the spool
directory". `nginx -t` says nothing; every job completes, its record lists its stems,
and every download is 404. Expected: nginx -t warns naming both paths. Observed: no
warning; the completed job's stem answers 404."""
import os, subprocess, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "workerd"))
import harness
import test_workerd

svc = test_workerd.Service()
spool = svc.stack.spool
svc.stack.conf_edit = lambda t: t.replace("alias %s/;" % spool, "alias %s-old/;" % spool, 1)
svc.start()
try:
    svc.start_workerd("w")
    stack = svc.stack
    check = subprocess.run(["/usr/sbin/nginx", "-t", "-p", stack.prefix, "-c", stack.conf_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    warned = "alias" in check.stdout and spool in check.stdout
    print("nginx -t:", check.stdout.strip().replace("\n", " | ")[:400])
    r = stack.request("POST", "/v1/jobs?stems=vocals", harness.wav_bytes(1.0),
                      {"Content-Type": "audio/wav"})
    jid = r.json["id"]
    status = None
    for _ in range(600):
        j = stack.request("GET", "/v1/jobs/" + jid).json
        status = j["status"]
        if status in ("completed", "failed", "canceled"):
            break
        time.sleep(0.1)
    url = j["stems"]["vocals"]["url"] if status == "completed" else None
    r = stack.request("GET", url) if url else None
    print("job %s; GET %s -> %s" % (status, url, r and r.status))
    ok = warned or (r is not None and r.status == 200)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    svc.stop()
