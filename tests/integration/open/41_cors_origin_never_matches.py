#!/usr/bin/python3
"""`sep_cors_origins` takes origins that no browser ever sends and nginx -t accepts them:
a trailing slash or a path (`http://app.example:3000/`), a host in capitals
(`http://App.Example:3000`), the scheme's default port (`https://app.example:443`;
browsers leave it out). The page on that origin then gets no CORS header, silently.
Expected: a capitalised origin matches what browsers send (origins compare without
regard to case), and nginx -t refuses the others, naming them."""
import os, subprocess, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

def conf_with(line):
    return lambda t: t.replace("        server_name", "        %s\n        server_name" % line, 1)

bad = []
for origin in ("http://app.example:3000/", "http://app.example:3000/ui", "https://app.example:443",
               "http://app.example:80"):
    st = harness.Stack(worker_processes=1, conf_edit=conf_with("sep_cors_origins %s;" % origin))
    try:
        harness.localstack.make_prefix_dirs(st.prefix)
        with open(st.conf_path, "w") as f:
            f.write(st.render_conf(1))
        res = subprocess.run(harness.localstack.nginx_args(st.prefix, st.conf_path, "-t"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        print("nginx -t with %s: rc %d" % (origin, res.returncode))
        if res.returncode == 0 or origin not in res.stdout:
            bad.append(origin)
    finally:
        st.stop()
stack = harness.Stack(worker_processes=1,
                      conf_edit=conf_with("sep_cors_origins http://App.Example:3000;")).start()
try:
    resp = stack.request("GET", "/v1/jobs/x", headers={"Origin": "http://app.example:3000"})
    print("configured http://App.Example:3000, browser sends http://app.example:3000:",
          resp.header("access-control-allow-origin"))
    if resp.header("access-control-allow-origin") != "http://app.example:3000":
        bad.append("capitals")
finally:
    stack.stop()
print("PASS" if not bad else "FAIL")
sys.exit(0 if not bad else 1)
