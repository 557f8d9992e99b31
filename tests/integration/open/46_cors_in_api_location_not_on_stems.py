#!/usr/bin/python3
"""`sep_cors_origins` set in the `sep_api` location (the directive takes location level,
nginx -t is silent) instead of the server: every API answer carries CORS but stem
downloads, which the module redirects internally to sep_stems_location, a location of
its own without the directive, carry none; the player on another origin cannot fetch a
single stem. Expected: a stem download carries the CORS headers of the API location
that answered the request (Vary: Origin once, also for an origin not allowed)."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness, worker_sim

APP = "http://app.example:3000"
stack = harness.Stack(worker_processes=1, conf_edit=lambda t: t.replace(
    "            sep_api;\n", "            sep_api;\n            sep_cors_origins %s;\n" % APP,
    1)).start()
try:
    r = stack.request("POST", "/v1/jobs", body=harness.wav_bytes(),
                      headers={"Content-Type": "audio/wav", "Origin": APP})
    print("POST", r.status, r.header("access-control-allow-origin"))
    jid = r.json["id"]
    name = sorted(worker_sim.complete_job(stack, jid))[0]
    path = "/v1/jobs/%s/stems/%s.wav" % (jid, name)
    ok = r.header("access-control-allow-origin") == APP
    for origin, want in ((APP, APP), ("https://evil.example.com", None)):
        s = stack.request("GET", path, headers={"Origin": origin})
        print("stem from %s: %d ACAO=%s Vary=%s" % (origin, s.status,
              s.header("access-control-allow-origin"), s.header("vary")))
        ok = ok and s.status == 200 and s.header("access-control-allow-origin") == want and \
            s.header("vary") == "Origin"
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    stack.stop()
