#!/usr/bin/python3
"""`sep_cors_origins *;` with `sep_cors_credentials on;`: nginx -t accepts it and the
module echoes every Origin with `Access-Control-Allow-Credentials: true`, `null`
included (what sandboxed iframes, data: documents and some redirects send). Any page on
the web may then read answers that carry the browser's credentials (cookies, HTTP
authentication in front of the API): the reflected-origin misconfiguration that
browsers' ban on `*` with credentials exists to prevent. It never sends `*` with
credentials (the literal requirement holds). Expected here: nginx -t refuses a literal
`*` with credentials on (name the origins instead), and `null` is never echoed with
credentials."""
import os, subprocess, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

conf = "        sep_cors_origins *;\n        sep_cors_credentials on;\n"
edit = lambda t: t.replace("        server_name", conf + "        server_name", 1)
st = harness.Stack(worker_processes=1, conf_edit=edit)
harness.localstack.make_prefix_dirs(st.prefix)
with open(st.conf_path, "w") as f:
    f.write(st.render_conf(1))
res = subprocess.run(harness.localstack.nginx_args(st.prefix, st.conf_path, "-t"),
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
st.stop()
print("nginx -t with * and credentials: rc %d" % res.returncode)
ok = res.returncode != 0
if not ok:
    stack = harness.Stack(worker_processes=1, conf_edit=edit).start()
    try:
        for origin in ("https://evil.example.com", "null"):
            r = stack.request("GET", "/v1/jobs/x", headers={"Origin": origin})
            print("Origin %s: ACAO=%s ACAC=%s" % (origin, r.header("access-control-allow-origin"),
                                                 r.header("access-control-allow-credentials")))
    finally:
        stack.stop()
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
