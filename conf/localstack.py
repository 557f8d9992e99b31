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

Two environment variables point the tests at other builds (the sanitized run, `make
test-integration-asan`): SEP_NGINX_MODULE, the module's .so; SEP_NGINX_ENV, variables
set for nginx only (see nginx_env_assignments()).

Only the Python standard library is used.
"""

import ctypes
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

CONF_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(CONF_DIR)
TEMPLATE = os.path.join(CONF_DIR, "nginx.conf.in")
# The configuration with access control (API keys, auth_request, limits per key).
ACCESS_TEMPLATE = os.path.join(CONF_DIR, "nginx-access.conf.in")
NGINX_BIN = "/usr/sbin/nginx"
REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
# SEP_NGINX_MODULE names another build of the module (the sanitized one, build/asan/).
MODULE_SO = os.environ.get("SEP_NGINX_MODULE") or os.path.join(
    REPO_ROOT, "build", "nginx", "objs", "ngx_http_sep_module.so")

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
    "WEB": "/usr/share/sep/web",
    "OPENAPI": "/usr/share/sep/openapi.json",
}

# What conf/nginx-access.conf is rendered with: the same system paths, plus the fields
# of access control.
OPERATOR_ACCESS_VALUES = dict(
    OPERATOR_VALUES,
    RENDERED="Rendered from conf/nginx-access.conf.in by conf/render-sample: edit the "
             "template, not this file.",
    SERVER_NAME="api.separation.example.com",
    AUTH_SERVER_NAME="separation.example.com",
    API_KEYS="/etc/nginx/sep-api-keys.conf",
    AUTH_URL="http://127.0.0.1:4180/oauth2/auth",
    CORS_ORIGINS="https://app.example.com",
    KEY_RATE="10r/s",
    KEY_BURST="20",
    KEY_CONNS="10",
)


class PortInUse(RuntimeError):
    """A server refused to start because its TCP port was taken (EADDRINUSE)."""


def ephemeral_port_range():
    """(low, high) of the kernel's ephemeral range, which bind(0) and outgoing
    connections draw from; no server of ours takes a port in it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def port_ranges():
    """The ranges a server port is drawn from: above 10000 and outside the ephemeral
    range (below it, or above it when it starts too low to leave room)."""
    low, high = ephemeral_port_range()
    ranges = []
    if low - 1 >= 11000:
        ranges.append((10000, low - 1))
    if high + 1 <= 64535:
        ranges.append((high + 1, 65535))
    return ranges or [(10000, 65535)]


_port_random = random.SystemRandom()


def pick_port():
    """A random port outside the ephemeral range that nothing listens on right now.

    Another process may still take it before our server binds it: start servers with
    start_on_free_port(), which retries on EADDRINUSE."""
    ranges = port_ranges()
    weights = [hi - lo + 1 for lo, hi in ranges]
    for _ in range(200):
        lo, hi = _port_random.choices(ranges, weights)[0]
        port = _port_random.randint(lo, hi)
        if port_is_free(port):
            return port
    raise RuntimeError("no free TCP port found in %s" % ranges)


def start_on_free_port(start, what, attempts=8, log=None):
    """Calls start(port) with a fresh pick_port() until it does not raise PortInUse,
    at most `attempts` times; each retry is logged. Returns (port, start's result)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for attempt in range(1, attempts + 1):
        port = pick_port()
        try:
            return port, start(port)
        except PortInUse as e:
            log("%s: port %d was taken (%s); retrying on another port (%d/%d)"
                % (what, port, e, attempt, attempts))
    raise RuntimeError("%s: no port could be bound in %d attempts" % (what, attempts))


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _log_says_port_taken(path, since=0):
    """Whether a server's log, from byte offset `since`, reports EADDRINUSE."""
    try:
        with open(path, "rb") as f:
            f.seek(since)
            return b"Address already in use" in f.read()
    except OSError:
        return False


def _file_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


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


def local_values(prefix, port, redis_addr, module_so=MODULE_SO, max_body="64m",
                 max_queued=10000, worker_processes=2, daemon=False, user=None):
    """Template values for a private prefix: every path under it, loopback only.
    `user`: the nginx workers' user when the master runs as root (`make run` passes
    `nobody nogroup` when nobody can reach the prefix); without it a master started as
    root keeps its workers root (test prefixes, which nobody may not be able to read)."""
    prefix = os.path.abspath(prefix)
    if os.geteuid() != 0:
        user_line = ""
    else:
        user_line = "user %s;" % (user or "root")
    return {
        "RENDERED": "Rendered by conf/localstack.py for the prefix %s." % prefix,
        "USER": user_line,
        "DAEMON": "" if daemon else "daemon off;",
        "MODULE": module_so,
        "PID": os.path.join(prefix, "nginx.pid"),
        "ERROR_LOG": os.path.join(prefix, "logs", "error.log"),
        "ACCESS_LOG": os.path.join(prefix, "logs", "access.log"),
        "WORKER_PROCESSES": str(worker_processes),
        "LISTEN": "127.0.0.1:%d" % port,
        "SERVER_NAME": "localhost",
        "REDIS": redis_addr,
        "SPOOL": os.path.join(prefix, "spool"),
        "TEMP": os.path.join(prefix, "temp"),
        "MAX_BODY": max_body,
        "MAX_QUEUED": str(max_queued),
        "WEB": os.path.join(REPO_ROOT, "web"),
        "OPENAPI": os.path.join(REPO_ROOT, "shared", "openapi.json"),
    }


def user_can_reach(user, group, paths):
    """Whether `user` (in `group`) can traverse each directory of `paths` and read each
    file: checked in a child process that switches to that user (only as root)."""
    import grp
    import pwd
    try:
        uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return False
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            ok = all(os.access(p, os.X_OK if os.path.isdir(p) else os.R_OK) for p in paths)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def make_prefix_dirs(prefix):
    """The directories nginx and Redis expect under a private prefix."""
    for sub in ("logs", "spool", "temp", "redis"):
        os.makedirs(os.path.join(prefix, sub), exist_ok=True)


def redis_socket(prefix):
    """The Unix socket a prefix's Redis listens on when it has no TCP port."""
    return os.path.join(os.path.abspath(prefix), "redis", "redis.sock")


def redis_address(prefix, port=None):
    """What `sep_redis` and redis_command() take: "unix:PATH" or "127.0.0.1:PORT"."""
    return "127.0.0.1:%d" % port if port else "unix:" + redis_socket(prefix)


# Redis ACL users of `make run` (least privilege): nginx may run only what the module
# sends and what its scripts (submit, cancel) call, workerd only its own commands and
# scripts; both only on the key prefix and its event channels. The default user gets a
# password (the operator's). The commands a script calls are checked against the user
# that runs it, so each list includes its scripts' commands (shared/lua/).
SCRIPT_COMMANDS = ("+del +get +set +exists +expire +hget +hgetall +hmget +hset +hdel +hincrby "
                   "+zscore +zadd +zrem +zrangebyscore +zremrangebyscore +xadd +xdel +xack "
                   "+xgroup +xclaim +xpending +xrange +publish +time +xlen +zcard +zrange "
                   "+zcount")
ACL_RULES = {
    "sep-nginx": "-@all +auth +ping +select +hello +evalsha +script|load +subscribe "
                 "+unsubscribe " + SCRIPT_COMMANDS,
    "sep-workerd": "-@all +auth +ping +select +hello +evalsha +script|load +xreadgroup "
                   "+xautoclaim +xlen +xtrim +zcard +zrange +client|setname " + SCRIPT_COMMANDS,
}


def acl_users(prefix, key_prefix="{sep}:"):
    """The ACL file of a prefix's Redis (prefix/redis/users.acl, mode 0600) and the
    passwords, {"default": ..., "sep-nginx": ..., "sep-workerd": ...}, made once and
    kept in prefix/redis/passwords.json (0600) so a restarted Redis keeps them."""
    import secrets
    rdir = os.path.join(os.path.abspath(prefix), "redis")
    pw_path = os.path.join(rdir, "passwords.json")
    try:
        with open(pw_path) as f:
            passwords = json.load(f)
    except (OSError, ValueError):
        passwords = {u: secrets.token_hex(16) for u in ["default"] + sorted(ACL_RULES)}
        fd = os.open(pw_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(passwords, f, indent=1)
    lines = ["user default on >%s ~* &* +@all" % passwords["default"]]
    for user, rules in sorted(ACL_RULES.items()):
        lines.append("user %s on >%s resetkeys ~%s* resetchannels &%sev:* %s"
                     % (user, passwords[user], key_prefix, key_prefix, rules))
    acl_path = os.path.join(rdir, "users.acl")
    fd = os.open(acl_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return acl_path, passwords


def redis_args(prefix, port=None, daemon=False, durable=False, aclfile=None):
    """redis-server arguments: on 127.0.0.1:port, or (port None) only on the Unix socket
    prefix/redis/redis.sock; files under prefix/redis. durable: AOF with `appendfsync
    always` (a 202 then survives a Redis crash, as `make run` runs it); else none."""
    rdir = os.path.join(os.path.abspath(prefix), "redis")
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else \
        ["--appendonly", "no"]
    args = [REDIS_BIN, "--dir", rdir, "--save", ""] + persistence + [
            "--protected-mode", "yes", "--logfile", os.path.join(rdir, "redis.log")]
    if port:
        args += ["--bind", "127.0.0.1", "--port", str(port)]
    else:
        args += ["--port", "0", "--unixsocket", redis_socket(prefix), "--unixsocketperm", "700"]
    if daemon:
        args += ["--daemonize", "yes", "--pidfile", os.path.join(rdir, "redis.pid")]
    if aclfile:
        args += ["--aclfile", aclfile]
    return args


def redis_log(prefix):
    return os.path.join(os.path.abspath(prefix), "redis", "redis.log")


def start_redis(prefix, port=None, extra_args=(), timeout=10.0):
    """A foreground redis-server child (on the prefix's Unix socket, or on 127.0.0.1:port);
    returns once it answers PING (within timeout s: loading a big AOF takes longer).
    Raises PortInUse when the port was taken."""
    log = redis_log(prefix)
    since = _file_size(log)
    proc = subprocess.Popen(redis_args(prefix, port) + list(extra_args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    try:
        wait_redis(redis_address(prefix, port), proc=proc, timeout=timeout)
    except RuntimeError as e:
        stop_process(proc)
        if port and _log_says_port_taken(log, since):
            raise PortInUse("redis-server: %s" % e) from None
        raise
    return proc


def start_redis_tcp(prefix, extra_args=(), log=None):
    """start_redis on a port of pick_port(), retried on EADDRINUSE: (port, proc)."""
    return start_on_free_port(lambda port: start_redis(prefix, port, extra_args),
                              "redis-server", log=log)


def _connect(address, timeout):
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(address[5:])
        except OSError:
            s.close()
            raise
        return s
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def redis_command(address, *words, timeout=1.0):
    """Sends one command in RESP to address ("unix:PATH", "HOST:PORT" or a port on
    127.0.0.1) and returns the raw reply (enough for PING/health checks)."""
    if isinstance(address, int):
        address = "127.0.0.1:%d" % address
    payload = b"*%d\r\n" % len(words)
    for w in words:
        b = str(w).encode()
        payload += b"$%d\r\n%s\r\n" % (len(b), b)
    with _connect(address, timeout) as s:
        s.sendall(payload)
        return s.recv(65536)


def wait_redis(address, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("redis-server exited with status %d" % proc.returncode)
        try:
            reply = redis_command(address, "PING")
            # -NOAUTH: the default user has a password (make run's ACLs): Redis is up
            if reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH"):
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError("redis-server on %s did not answer within %.0fs" % (address, timeout))


def nginx_env_assignments():
    """NAME=VALUE words of SEP_NGINX_ENV (shell-quoted, split with shlex): variables set
    for nginx only, e.g. LD_PRELOAD of libasan for the sanitized module, which must not
    reach Python or redis-server."""
    words = shlex.split(os.environ.get("SEP_NGINX_ENV", ""))
    for word in words:
        if not re.match(r"[A-Za-z_][A-Za-z0-9_]*=", word):
            raise ValueError("SEP_NGINX_ENV: %r is not NAME=VALUE" % word)
    return words


def nginx_command():
    """The argv that starts nginx: /usr/sbin/nginx, through env(1) when SEP_NGINX_ENV
    sets variables (env execs nginx: the pid is nginx's)."""
    assignments = nginx_env_assignments()
    return (["/usr/bin/env"] + assignments if assignments else []) + [NGINX_BIN]


def nginx_args(prefix, conf_path, *extra):
    prefix = os.path.abspath(prefix)
    return nginx_command() + ["-p", prefix + "/", "-c", conf_path,
                              "-e", os.path.join(prefix, "logs", "error.log")] + list(extra)


def check_nginx_conf(prefix, conf_path):
    """`nginx -t`; raises with nginx's own message when the configuration is refused."""
    res = subprocess.run(nginx_args(prefix, conf_path, "-t", "-q"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        raise RuntimeError("nginx -t failed:\n" + res.stdout)


PROBE_PATH = "/v1/jobs/00000000-0000-4000-8000-000000000000"


def start_nginx(prefix, conf_path, port, check_path=PROBE_PATH):
    """A foreground nginx master (its conf has `daemon off`); returns once it answers JSON.
    Raises PortInUse when nginx could not bind its port."""
    check_nginx_conf(prefix, conf_path)
    log = os.path.join(os.path.abspath(prefix), "logs", "error.log")
    since = _file_size(log)
    proc = subprocess.Popen(nginx_args(prefix, conf_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    try:
        wait_http_json(port, check_path, proc=proc)
    except RuntimeError as e:
        stop_process(proc)
        if _log_says_port_taken(log, since):
            raise PortInUse("nginx: %s" % e) from None
        raise
    return proc


def start_nginx_on_free_port(prefix, conf_path, render, check_path=PROBE_PATH, log=None):
    """Writes render(port) to conf_path and starts nginx on it, for ports of pick_port()
    until one binds: (port, proc)."""
    def start(port):
        with open(conf_path, "w", encoding="utf-8") as f:
            f.write(render(port))
        return start_nginx(prefix, conf_path, port, check_path)
    return start_on_free_port(start, "nginx", log=log)


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


# Run directories `make run` started from this checkout, one absolute path per line, so
# `make stop` finds a run made with SEP_RUN_DIR too. Kept in .local-runs at the top of the
# checkout, not under build/: `make clean` must not make a running stack unstoppable.
# SEP_RUN_REGISTRY names another file (the tests use their own, so they never stop a
# developer's run).
OLD_RUN_REGISTRY = os.path.join(REPO_ROOT, "build", "local-runs")  # read, never written


def run_registry():
    return os.environ.get("SEP_RUN_REGISTRY") or os.path.join(REPO_ROOT, ".local-runs")


def recorded_runs():
    paths = [run_registry()]
    if not os.environ.get("SEP_RUN_REGISTRY"):
        paths.append(OLD_RUN_REGISTRY)  # runs recorded before the file moved
    runs = []
    for path in paths:
        try:
            with open(path) as f:
                runs += [line.strip() for line in f if line.strip() and line.strip() not in runs]
        except OSError:
            pass
    return runs


def _write_runs(runs):
    path = run_registry()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.writelines(r + "\n" for r in runs)
    os.replace(tmp, path)
    if not os.environ.get("SEP_RUN_REGISTRY"):
        try:
            os.unlink(OLD_RUN_REGISTRY)  # its runs are in the new file now
        except OSError:
            pass


def record_run(run_dir):
    run_dir = os.path.abspath(run_dir)
    runs = recorded_runs()
    if run_dir not in runs:
        _write_runs(runs + [run_dir])


def forget_run(run_dir):
    run_dir = os.path.abspath(run_dir)
    runs = recorded_runs()
    if run_dir in runs:
        _write_runs([r for r in runs if r != run_dir])
