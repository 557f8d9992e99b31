#!/usr/bin/python3
"""A stem download whose Range cannot be satisfied (416) from an origin that is not
allowed, or with no Origin at all: nginx's range filter sends the headers a second time
(the JSON error page) and the CORS filter adds `Vary: Origin` again. Expected (README
"CORS"): one `Vary: Origin`, as on every other answer."""
import os, socket, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness, worker_sim

conf = "        sep_cors_origins http://app.example:3000;\n"
stack = harness.Stack(worker_processes=1, conf_edit=lambda t: t.replace(
    "        server_name", conf + "        server_name", 1)).start()
try:
    r = stack.request("POST", "/v1/jobs", body=harness.wav_bytes(),
                      headers={"Content-Type": "audio/wav"})
    jid = r.json["id"]
    name = sorted(worker_sim.complete_job(stack, jid))[0]
    bad = []
    for origin in ("", "Origin: https://evil.example.com\r\n", "Origin: http://app.example:3000\r\n"):
        req = ("GET /v1/jobs/%s/stems/%s.wav HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
               "Range: bytes=99999999-\r\n%s\r\n" % (jid, name, origin)).encode()
        with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
            s.sendall(req)
            buf = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                buf += c
        head = buf.partition(b"\r\n\r\n")[0].decode("latin-1").lower().split("\r\n")
        varies = [h for h in head if h.startswith("vary:")]
        print(head[0], origin.strip() or "(no Origin)", varies)
        if len(varies) != 1:
            bad.append(origin)
    ok = not bad
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    stack.stop()
