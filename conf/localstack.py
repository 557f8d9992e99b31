"""Starts the service's processes on one machine under a private prefix.

Shared by `make run` (conf/run-local), the integration tests (tests/integration/) and
the HTTP benchmark (bench/http), so that all three run the same configuration:

  * render_nginx_conf() fills conf/nginx.conf.in, the one nginx configuration template
    (conf/nginx.conf, the operators' sample, is rendered from it with system paths);
  * Redis and nginx are started as child processes (foreground, `daemon off`) or as
    daemons with pid files (`make run`), always on loopback, with every path (conf,
    logs, pid files, spool, temp files, Redis dir) under the prefix;
  * children started in the foreground get SIGTERM if this process dies, so a killed
    test run never leaves servers behind.

Only the Python standard library is used.
"""

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

CONF_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(CONF_DIR)
TEMPLATE = os.path.join(CONF_DIR, "nginx.conf.in")
NGINX_BIN = "/usr/sbin/nginx"
REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
MODULE_SO = os.path.join(REPO_ROOT, "build", "nginx", "objs", "ngx_http_sep_module.so")

# What conf/nginx.conf (the operators' sample) is rendered with.
OPERATOR_VALUES = {
    "RENDERED": "Rendered from conf/nginx.conf.in by conf/render-sample: edit the template, "
                "not this file.",
    "USER": "user www-data;",
    "DAEMON": "",
    "MODULE": "/usr/lib/nginx/modules/ngx_http_sep_module.so",
    "PID": "/run/nginx.pid",
    "ERROR_LOG": "/var/log/nginx/error.log",
    "ACCESS_LOG": "/var/log/nginx/sep-access.log",
    "WORKER_PROCESSES": "auto",
    "LISTEN": "80",
    "SERVER_NAME": "separation.example.com",
    "REDIS": "127.0.0.1:6379",
    "SPOOL": "/var/lib/sep/spool",
    "TEMP": "/var/lib/nginx",
    "MAX_BODY": "2g",
    "MAX_QUEUED": "10000",
}


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def render_nginx_conf(values, template=TEMPLATE):
    """The template with every @NAME@ replaced; fails on a template field left unfilled.

    Lines starting with `#@` describe the template itself and are dropped; a line that
    holds only a template field whose value is empty is dropped too.
    """
    with open(template, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        if line.startswith("#@"):
            continue
        stripped = line.strip()
        if stripped.startswith("@") and stripped.endswith("@") and stripped.count("@") == 2 \
                and values.get(stripped.strip("@"), None) == "":
            continue
        for name, value in values.items():
            line = line.replace("@" + name + "@", str(value))
        out.append(line)
    text = "\n".join(out) + "\n"
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise ValueError("unfilled template fields in %s: %s" % (template, leftover))
    return text


def local_values(prefix, port, redis_port, module_so=MODULE_SO, max_body="64m",
                 max_queued=10000, worker_processes=2, daemon=False):
    """Template values for a private prefix: every path under it, loopback only."""
    prefix = os.path.abspath(prefix)
    return {
        "RENDERED": "Rendered by conf/localstack.py for the prefix %s." % prefix,
        # A master started as root would switch its workers to `nobody`, who cannot
        # read a private prefix; when root runs it locally the workers stay root.
        "USER": "user root;" if os.geteuid() == 0 else "",
        "DAEMON": "" if daemon else "daemon off;",
        "MODULE": module_so,
        "PID": os.path.join(prefix, "nginx.pid"),
        "ERROR_LOG": os.path.join(prefix, "logs", "error.log"),
        "ACCESS_LOG": os.path.join(prefix, "logs", "access.log"),
        "WORKER_PROCESSES": str(worker_processes),
        "LISTEN": "127.0.0.1:%d" % port,
        "SERVER_NAME": "localhost",
        "REDIS": "127.0.0.1:%d" % redis_port,
        "SPOOL": os.path.join(prefix, "spool"),
        "TEMP": os.path.join(prefix, "temp"),
        "MAX_BODY": max_body,
        "MAX_QUEUED": str(max_queued),
    }


def make_prefix_dirs(prefix):
    """The directories nginx and Redis expect under a private prefix."""
    for sub in ("logs", "spool", "temp", "redis"):
        os.makedirs(os.path.join(prefix, sub), exist_ok=True)


def redis_args(prefix, port, daemon=False):
    """redis-server arguments: loopback, no persistence, files under prefix/redis."""
    rdir = os.path.join(os.path.abspath(prefix), "redis")
    args = [REDIS_BIN, "--bind", "127.0.0.1", "--port", str(port), "--dir", rdir,
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            "--logfile", os.path.join(rdir, "redis.log")]
    if daemon:
        args += ["--daemonize", "yes", "--pidfile", os.path.join(rdir, "redis.pid")]
    return args


def start_redis(prefix, port):
    """A foreground redis-server child on 127.0.0.1:port; returns once it answers PING."""
    proc = subprocess.Popen(redis_args(prefix, port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    wait_redis(port, proc=proc)
    return proc


def redis_command(port, *words, timeout=1.0):
    """Sends one command in RESP and returns the raw reply (enough for PING/health checks)."""
    payload = "*%d\r\n" % len(words)
    for w in words:
        b = str(w).encode()
        payload += "$%d\r\n%s\r\n" % (len(b), b.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload.encode())
        return s.recv(65536)


def wait_redis(port, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("redis-server exited with status %d" % proc.returncode)
        try:
            if redis_command(port, "PING").startswith(b"+PONG"):
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("redis-server on port %d did not answer within %.0fs" % (port, timeout))


def nginx_args(prefix, conf_path, *extra):
    prefix = os.path.abspath(prefix)
    return [NGINX_BIN, "-p", prefix + "/", "-c", conf_path,
            "-e", os.path.join(prefix, "logs", "error.log")] + list(extra)


def check_nginx_conf(prefix, conf_path):
    """`nginx -t`; raises with nginx's own message when the configuration is refused."""
    res = subprocess.run(nginx_args(prefix, conf_path, "-t", "-q"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise RuntimeError("nginx -t failed:\n" + res.stdout)


PROBE_PATH = "/v1/jobs/00000000-0000-4000-8000-000000000000"


def start_nginx(prefix, conf_path, port, check_path=PROBE_PATH):
    """A foreground nginx master (its conf has `daemon off`); returns once it answers JSON."""
    check_nginx_conf(prefix, conf_path)
    proc = subprocess.Popen(nginx_args(prefix, conf_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    wait_http_json(port, check_path, proc=proc)
    return proc


def http_json_answer(port, path, timeout=1.0):
    """(status, decoded JSON) of GET path, or None when nothing answers JSON."""
    url = "http://127.0.0.1:%d%s" % (port, path)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read().decode())
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read().decode())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def wait_http_json(port, path, proc=None, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("nginx exited with status %d" % proc.returncode)
        if http_json_answer(port, path) is not None:
            return
        time.sleep(0.05)
    raise RuntimeError("nothing answered JSON on 127.0.0.1:%d%s within %.0fs"
                       % (port, path, timeout))


def stop_process(proc, timeout=10.0):
    """SIGTERM, wait, then SIGKILL: a child started by this module is gone afterwards."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; /proc tells it apart.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
