#!/usr/bin/python3
"""The stems location without `internal;` (ngx_module/README.md: "the location must be
`internal` with `alias` = the spool directory"). `nginx -t` says nothing, and the whole
spool is then public: anyone who knows or guesses a job id reads another client's
upload at /_sep_stems/{id}/input.wav, bypassing the API's checks (a deleted or
unfinished job, stems only). Expected: nginx -t warns (or refuses) naming the location,
or the spool is not served. Observed: no warning, the upload is served with 200."""
import os, subprocess, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

stack = harness.Stack(conf_edit=lambda t: t.replace("            internal;\n", "", 1)).start()
try:
    check = subprocess.run(["/usr/sbin/nginx", "-t", "-p", stack.prefix, "-c", stack.conf_path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    warned = "internal" in check.stdout
    print("nginx -t:", check.stdout.strip().replace("\n", " | ")[:400])
    body = harness.wav_bytes()
    r = stack.request("POST", "/v1/jobs", body, {"Content-Type": "audio/wav"})
    jid = r.json["id"]
    r = stack.request("GET", "/_sep_stems/%s/input.wav" % jid)
    print("GET /_sep_stems/%s/input.wav -> %d (%d bytes, upload %d bytes)"
          % (jid, r.status, len(r.body), len(body)))
    ok = warned or r.status != 200
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    stack.stop()
