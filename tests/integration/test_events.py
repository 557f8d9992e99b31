#!/usr/bin/python3
"""GET /v1/jobs/{id}/events (Server-Sent Events) against a live stack (real
redis-server + nginx with the module): jobs are driven through the project's own Lua
scripts (claim, progress, complete, fail, cancel) as workerd would.

Cases: events in order ending with the terminal one and the stream closing; a late
subscriber gets the current state at once; a finished job gets its terminal event and
the stream ends; Last-Event-ID on reconnect (newer state only; the same id: no repeat;
a finished job seen to its end: 204); unknown / bad id (404 JSON), POST (405); 1,000
clients on one job all get every event over one SUBSCRIBE per nginx worker; a client
that goes away unsubscribes at once; a client that stops reading is dropped (its
connection closed at once) after 1 MiB unsent; 1,000 connect/disconnect cycles leave
the nginx worker's memory, Redis' client count and the channels where they started;
Redis stopped mid-stream (an `error` event, the stream ends; 503 JSON while Redis is
down; streams work again once it is back); the subscriber connection killed (streams
end with the error event, new ones subscribe again); AUTH on the subscriber connection
(a Redis with a password; an ACL user with `make run`'s rules); heartbeat comments and CORS headers on the stream; `nginx
-s reload` ends the old worker's streams so it exits.
"""

import json
import os
import re
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import worker_sim  # noqa: E402
from harness import expect, expect_json_error  # noqa: E402
from sse_client import SseStream, pump  # noqa: E402

WAV = harness.wav_bytes()
PREFIX = worker_sim.PREFIX
APP = "http://app.example:3000"
TERMINAL = ("completed", "failed", "canceled")

cases = harness.Cases()


# helpers ---------------------------------------------------------------------------------
def submit(stack):
    resp = stack.request("POST", "/v1/jobs", body=WAV, headers={"Content-Type": "audio/wav"})
    expect(resp.status == 202, "submit: expected 202", resp)
    return resp.json["id"]


def claim(stack, job_id):
    claimed = worker_sim.claim(stack.redis, job_id)
    expect(claimed is not None, "claim.lua refused job %s" % job_id)
    return claimed[0]


def progress(stack, job_id, token, value, stage="separate", message=""):
    stack.redis.eval(worker_sim.script("progress"), 8, *worker_sim.job_keys(job_id), token,
                     str(value), stage, message)


def complete(stack, job_id, token):
    stems = {"vocals": {"file": "vocals.wav", "bytes": 10}}
    stack.redis.eval(worker_sim.script("complete"), 8, *worker_sim.job_keys(job_id), token,
                     json.dumps(stems), "10")


def seq_of(stack, job_id):
    v = stack.redis.hget(PREFIX + "job:" + job_id, "seq")
    return int(v) if v is not None else 0


def events_path(job_id):
    return "/v1/jobs/%s/events" % job_id


def open_stream(stack, job_id, headers=None):
    return SseStream(stack.port, events_path(job_id), headers)


def got_events(n):
    return lambda s: len(s.events) >= n


def ended(s):
    return s.ended or s.closed


def expect_stream_head(s, what):
    expect(s.status == 200, "%s: expected 200, got %r" % (what, s.status), s.headers, s.body)
    expect(s.headers.get("content-type", "").startswith("text/event-stream"),
           "%s: content type %r" % (what, s.headers.get("content-type")))
    expect(s.headers.get("x-accel-buffering") == "no", "%s: no X-Accel-Buffering: no" % what,
           s.headers)
    expect("no-cache" in s.headers.get("cache-control", ""), "%s: no Cache-Control" % what)


def expect_increasing(s, what):
    ids = s.ids()
    expect(len(ids) == len(s.events), "%s: an event without id" % what, s.events)
    expect(all(b > a for a, b in zip(ids, ids[1:])), "%s: ids not increasing: %r" % (what, ids))


def channel_subscribers(stack, job_id):
    return stack.redis.pubsub_numsub(PREFIX + "ev:" + job_id)[0][1]


def our_channels(stack):
    return [c for c in stack.redis.pubsub_channels() if c.startswith(PREFIX.encode() + b"ev:")]


def client_count(stack):
    return len(stack.redis.client_list())


def wait_for(cond, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()






def server_side_state(server_port, client_port):
    """The TCP state (hex, as /proc/net/tcp gives it: 01 established) of nginx's
    socket for a loopback client, or None when there is none."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (int(local.split(":")[1], 16) == server_port and
                    int(remote.split(":")[1], 16) == client_port):
                return state
    return None


def raise_fd_limit(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


# cases -------------------------------------------------------------------------------------
@cases.case
def events_in_order_until_terminal(stack):
    job_id = submit(stack)
    s = open_stream(stack, job_id)
    expect(s.read_until(got_events(1)), "no first event", s.status, s.body)
    expect_stream_head(s, "stream")
    first = s.events[0]
    expect(first["event"] == "progress" and first["json"]["status"] == "queued",
           "first event is not the queued state", first)
    expect(int(first["id"]) == seq_of(stack, job_id), "first id is not the record's seq", first)
    token = claim(stack, job_id)
    for v in (0.25, 0.5, 0.75):
        progress(stack, job_id, token, v, message="at %s" % v)
    complete(stack, job_id, token)
    expect(s.read_until(ended), "the stream did not end after the terminal event", s.events)
    expect_increasing(s, "stream")
    names = [e["event"] for e in s.events]
    expect(names == ["progress"] * 5 + ["completed"], "events: %r" % names)
    expect([e["json"]["progress"] for e in s.events[2:5]] == [0.25, 0.5, 0.75],
           "progress values", [e["json"] for e in s.events[2:5]])
    expect(s.events[1]["json"]["status"] == "running", "claim's event", s.events[1])
    record = stack.request("GET", "/v1/jobs/" + job_id).json
    expect(s.events[-1]["json"] == record, "the terminal event is not the public record",
           s.events[-1]["json"], record)
    expect(s.ids() == list(range(0, 6)), "ids %r" % s.ids())
    s.close()
    return "%d events, ids %s" % (len(s.events), s.ids())


@cases.case
def late_subscriber_gets_current_state(stack):
    job_id = submit(stack)
    token = claim(stack, job_id)
    progress(stack, job_id, token, 0.6, message="late")
    s = open_stream(stack, job_id)
    expect(s.read_until(got_events(1), timeout=5), "no event for a late subscriber", s.body)
    ev = s.events[0]
    expect(ev["event"] == "progress" and ev["json"]["progress"] == 0.6 and
           ev["json"]["message"] == "late", "not the current state", ev)
    expect(int(ev["id"]) == seq_of(stack, job_id) == 2, "id %r" % ev["id"])
    progress(stack, job_id, token, 0.9)
    expect(s.read_until(got_events(2)), "no live event after the current state", s.events)
    expect(s.events[1]["json"]["progress"] == 0.9 and int(s.events[1]["id"]) == 3,
           "live event", s.events[1])
    complete(stack, job_id, token)
    expect(s.read_until(ended), "stream did not end", s.events)
    expect(s.events[-1]["event"] == "completed", "terminal", s.events[-1])
    s.close()


@cases.case
def finished_job_gets_terminal_event_and_closes(stack):
    done = submit(stack)
    token = claim(stack, done)
    complete(stack, done, token)
    failed = submit(stack)
    token = claim(stack, failed)
    stack.redis.eval(worker_sim.script("fail"), 8, *worker_sim.job_keys(failed), token,
                     "decode_error", "bad input", "0", "0", "0", "0", "1000")
    canceled = submit(stack)
    expect(stack.request("DELETE", "/v1/jobs/" + canceled).status == 200, "cancel")
    for job_id, name in ((done, "completed"), (failed, "failed"), (canceled, "canceled")):
        s = open_stream(stack, job_id)
        expect(s.read_until(ended, timeout=5), "%s: the stream did not end" % name, s.body)
        expect_stream_head(s, name)
        expect([e["event"] for e in s.events] == [name], "%s: events %r" % (name, s.events))
        expect(s.events[0]["json"]["status"] == name, "%s: record" % name, s.events[0])
        s.close()


@cases.case
def last_event_id_on_reconnect(stack):
    job_id = submit(stack)
    token = claim(stack, job_id)  # seq 1
    s = open_stream(stack, job_id)
    expect(s.read_until(got_events(1)), "no first event")
    seen = int(s.events[-1]["id"])
    s.close()
    progress(stack, job_id, token, 0.3)
    progress(stack, job_id, token, 0.4)  # seq 3
    # behind: the newest state (the events in between are covered by it), nothing older
    s = open_stream(stack, job_id, {"Last-Event-ID": str(seen)})
    expect(s.read_until(got_events(1)), "no event after reconnect", s.body)
    expect(int(s.events[0]["id"]) == seen + 2 and s.events[0]["json"]["progress"] == 0.4,
           "reconnect did not start at the newest state", s.events)
    s.close()
    # up to date: nothing is repeated; the next event comes live
    s = open_stream(stack, job_id, {"Last-Event-ID": "3"})
    expect(not s.read_until(got_events(1), timeout=0.5), "an event was repeated", s.events)
    expect_stream_head(s, "up to date")
    progress(stack, job_id, token, 0.5)
    expect(s.read_until(got_events(1)), "no live event", s.events)
    expect(int(s.events[0]["id"]) == 4, "live id", s.events)
    complete(stack, job_id, token)
    expect(s.read_until(ended), "no end", s.events)
    expect(s.ids() == [4, 5] and s.events[-1]["event"] == "completed", "events", s.events)
    s.close()
    # the end already seen: 204, which makes EventSource stop reconnecting
    s = open_stream(stack, job_id, {"Last-Event-ID": "5"})
    expect(s.read_until(lambda x: x.status is not None), "no answer")
    expect(s.status == 204 and not s.events, "expected 204 after the terminal event",
           s.status, s.body)
    s.close()


@cases.case
def unknown_and_bad_ids_and_methods(stack):
    unknown = "6f1c1b2a-1d2e-4f3a-9b4c-5d6e7f8a9b0c"
    expect_json_error(stack.request("GET", events_path(unknown)), 404, "unknown id")
    expect_json_error(stack.request("GET", events_path("not-an-id")), 404, "bad id")
    resp = stack.request("POST", events_path(unknown), body=b"")
    expect_json_error(resp, 405, "POST")
    expect((resp.header("allow") or "").split(", ")[0] == "GET", "Allow %r" % resp.header("allow"))
    # nothing stays subscribed for the unknown job
    expect(wait_for(lambda: channel_subscribers(stack, unknown) == 0, 5),
           "the unknown job's channel is still subscribed")


@cases.case
def thousand_clients_one_job(stack):
    raise_fd_limit(4096)
    job_id = submit(stack)
    streams = [open_stream(stack, job_id) for _ in range(1000)]
    expect(pump(streams, lambda: all(len(s.events) >= 1 for s in streams), 60),
           "not every client got the first event: %d did"
           % sum(1 for s in streams if s.events))
    nsub = channel_subscribers(stack, job_id)
    workers = len(stack.worker_pids())
    pubsub_conns = sum(1 for c in stack.redis.client_list() if int(c.get("sub", 0)) > 0)
    expect(1 <= nsub <= workers, "%d SUBSCRIBEs for 1000 clients on %d workers" % (nsub, workers))
    expect(pubsub_conns <= workers, "%d subscriber connections" % pubsub_conns)
    token = claim(stack, job_id)
    for i in range(5):
        progress(stack, job_id, token, (i + 1) / 10.0)
    complete(stack, job_id, token)
    expect(pump(streams, lambda: all(s.ended or s.closed for s in streams), 60),
           "%d streams did not end" % sum(1 for s in streams if not (s.ended or s.closed)))
    want = list(range(0, 8))
    bad = [s for s in streams if s.ids() != want or s.events[-1]["event"] != "completed"]
    expect(not bad, "%d clients missed events; e.g. %r" % (len(bad), bad[0].ids() if bad else 0))
    for s in streams:
        s.close()
    expect(wait_for(lambda: channel_subscribers(stack, job_id) == 0, 10),
           "still subscribed after every stream ended")
    return "1000 clients x 8 events; %d SUBSCRIBE(s), %d workers" % (nsub, workers)


@cases.case
def client_gone_unsubscribes_at_once(stack):
    job_id = submit(stack)
    streams = [open_stream(stack, job_id) for _ in range(20)]
    expect(pump(streams, lambda: all(s.events for s in streams), 20), "first events")
    expect(channel_subscribers(stack, job_id) >= 1, "not subscribed")
    for s in streams[:10]:
        s.close()
    time.sleep(0.3)
    expect(channel_subscribers(stack, job_id) >= 1, "unsubscribed while clients remain")
    for s in streams[10:]:
        s.close()
    expect(wait_for(lambda: channel_subscribers(stack, job_id) == 0, 5),
           "the channel stays subscribed after its clients left")


@cases.case
def client_not_reading_is_dropped(stack):
    """A client that stops reading is dropped once 1 MiB of events waits for it (after
    the socket buffers filled), and its channel freed, while other clients go on."""
    job_id = submit(stack)
    token = claim(stack, job_id)
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", stack.port))
    stuck.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % events_path(job_id)).encode())
    expect(wait_for(lambda: channel_subscribers(stack, job_id) >= 1, 5), "not subscribed")
    sha = stack.redis.script_load(worker_sim.script("progress"))
    keys = worker_sim.job_keys(job_id)
    big = "x" * 1000
    sent = 0
    while channel_subscribers(stack, job_id) > 0 and sent < 20000:
        for _ in range(200):
            stack.redis.evalsha(sha, 8, *keys, token, "0.5", "separate", big)
        sent += 200
    expect(wait_for(lambda: channel_subscribers(stack, job_id) == 0, 5),
           "the client that does not read is still subscribed after %d events" % sent)
    # nginx closed its side at once (before this client reads anything)
    client_port = stuck.getsockname()[1]
    expect(wait_for(lambda: server_side_state(stack.port, client_port) not in ("01", None), 3),
           "nginx keeps the dropped client's connection open (TCP state %s)"
           % server_side_state(stack.port, client_port))
    # what was in the socket buffers, then the end
    stuck.settimeout(10)
    eof = False
    try:
        while True:
            if not stuck.recv(1 << 20):
                eof = True
                break
    except OSError:  # a reset is an end too
        eof = True
    expect(eof, "the dropped client's connection stays open")
    stuck.close()
    # the job is followed as before
    s = open_stream(stack, job_id)
    expect(s.read_until(got_events(1)), "no stream after the drop")
    complete(stack, job_id, token)
    expect(s.read_until(ended), "no terminal event", s.events[-1:])
    s.close()
    return "dropped after %d events of ~1.7 KB" % sent


@cases.case
def subscriber_killed_streams_end_and_come_back(stack):
    """The subscriber connection alone is lost (CLIENT KILL): its streams get the
    error event and end; streams opened afterwards subscribe again and get live events."""
    job_id = submit(stack)
    token = claim(stack, job_id)
    streams = [open_stream(stack, job_id) for _ in range(20)]
    expect(pump(streams, lambda: all(s.events for s in streams), 20), "first events")
    killed = stack.redis.client_kill_filter(_type="pubsub")
    expect(killed >= 1, "no subscriber connection to kill")
    expect(pump(streams, lambda: all(s.ended or s.closed for s in streams), 10),
           "streams did not end when the subscriber connection was lost")
    expect(all(s.events[-1]["event"] == "error" for s in streams), "no error event",
           [s.events[-1] for s in streams][:2])
    for s in streams:
        s.close()
    again = open_stream(stack, job_id, {"Last-Event-ID": "1"})
    expect(again.read_until(lambda x: x.status is not None), "no answer after the loss")
    expect_stream_head(again, "after the loss")
    progress(stack, job_id, token, 0.7)
    expect(again.read_until(got_events(1)), "no live event after resubscribing", again.body)
    expect(again.events[0]["json"]["progress"] == 0.7, "event", again.events[0])
    again.close()
    return "%d subscriber connection(s) killed" % killed


def memory_cycles(_shared):
    """1,000 connect/disconnect cycles on one worker: its RSS, Redis' client count and
    the subscribed channels end where they started."""
    raise_fd_limit(4096)
    stack = harness.Stack(worker_processes=1).start()
    try:
        jobs = [submit(stack) for _ in range(10)]
        token = claim(stack, jobs[0])

        def cycles(n):
            for i in range(n):
                batch = [open_stream(stack, jobs[(i * 10 + k) % 10]) for k in range(10)]
                expect(pump(batch, lambda: all(s.events for s in batch), 20),
                       "cycle %d: first events" % i)
                if i % 2:
                    progress(stack, jobs[0], token, (i % 100) / 100.0)
                for s in batch:
                    if i % 3 == 0:  # an abrupt close (RST) now and then
                        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()

        (pid,) = stack.worker_pids()
        cycles(20)  # warm up: pools, free lists, the subscriber connection
        expect(wait_for(lambda: not our_channels(stack), 5), "channels left after warm-up")
        rss0, clients0 = harness.rss_kib(pid), client_count(stack)
        cycles(100)  # 100 x 10 = 1,000 streams
        expect(wait_for(lambda: not our_channels(stack), 5),
               "channels left subscribed: %r" % our_channels(stack))
        expect(wait_for(lambda: client_count(stack) == clients0, 5),
               "Redis clients %d -> %d" % (clients0, client_count(stack)))
        rss1 = harness.rss_kib(pid)
        expect(rss1 - rss0 < 1024, "nginx worker RSS grew %d KiB over 1,000 streams"
               % (rss1 - rss0))
        # and the channels still work: a new stream gets live events
        s = open_stream(stack, jobs[0])
        expect(s.read_until(got_events(1)), "no first event after the cycles")
        progress(stack, jobs[0], token, 0.99)
        expect(s.read_until(got_events(2)) and s.events[1]["json"]["progress"] == 0.99,
               "no live event after the cycles", s.events)
        s.close()
        return "RSS %d -> %d KiB, Redis clients %d -> %d" % (rss0, rss1, clients0,
                                                            client_count(stack))
    finally:
        stack.stop()


def redis_stopped_mid_stream(_shared):
    stack = harness.Stack(worker_processes=1).start()
    try:
        job_id = submit(stack)
        s = open_stream(stack, job_id)
        expect(s.read_until(got_events(1)), "first event")
        stack.stop_redis()
        expect(s.read_until(ended, timeout=10), "the stream did not end with Redis gone",
               s.events)
        expect(s.events[-1]["event"] == "error", "no error event", s.events)
        expect(s.events[-1]["json"]["error"]["code"] == "redis_unavailable", "error data",
               s.events[-1])
        s.close()
        for _ in range(5):  # each one tries to connect (100 ms of backoff MIN apart)
            resp = stack.request("GET", events_path(job_id))
            expect_json_error(resp, 503, "events while Redis is down")
            time.sleep(0.15)
        stack.start_redis()
        time.sleep(0.3)
        # the job is gone with the unpersisted Redis: a new one, followed again
        job_id = submit(stack)
        s = open_stream(stack, job_id)
        expect(s.read_until(got_events(1), timeout=10), "no stream after Redis came back",
               s.status, s.body)
        token = claim(stack, job_id)
        complete(stack, job_id, token)
        expect(s.read_until(ended), "no live events after Redis came back", s.events)
        expect([e["event"] for e in s.events] == ["progress", "progress", "completed"],
               "events after the restart", s.events)
        s.close()
        # the outage is logged once (not once per attempt), its end once
        log = stack.error_log_tail(400)
        lines = [l for l in log.splitlines() if "subscriber connection" in l or
                 ("connect()" in l and "redis" in l)]
        expect(len([l for l in lines if "lost" in l]) == 1 and
               len([l for l in lines if "is back" in l]) == 1 and len(lines) == 2,
               "outage lines of the subscriber connection", lines)
    finally:
        stack.stop()


class PasswordStack(harness.Stack):
    """A stack whose Redis needs a password (AUTH on both of nginx's connections), or
    with user: nginx as that ACL user with the least-privilege rules of `make run`
    (conf/localstack.py ACL_RULES)."""

    PASSWORD = "events-s3cret"

    def __init__(self, user=None):
        self.user = user
        auth = ("user=%s " % user if user else "") + "password=" + self.PASSWORD
        super().__init__(worker_processes=1, conf_edit=lambda text: re.sub(
            r"(\n\s*sep_redis [^;\n]+);", r"\1 %s;" % auth, text, 1))

    def start_redis(self, extra_args=()):
        super().start_redis(extra_args)  # its readiness check is a PING without AUTH
        if self.user:
            rules = harness.localstack.ACL_RULES[self.user].split()
            self.redis.acl_setuser(self.user, enabled=True, reset=True,
                                   passwords=["+" + self.PASSWORD], keys=["{sep}:*"],
                                   channels=["{sep}:ev:*"], commands=rules)
        # the default user's password differs from the ACL user's: an AUTH without the
        # user name is refused
        default = self.PASSWORD + ("-default" if self.user else "")
        self.redis.config_set("requirepass", default)
        self.redis = harness.redis.Redis(
            unix_socket_path=harness.localstack.redis_socket(self.prefix), password=default,
            socket_timeout=5)


def redis_with_password(_shared):
    for user in (None, "sep-nginx"):
        events_with_auth(PasswordStack(user).start(), user or "password")
    return "AUTH password; AUTH sep-nginx password (make run's ACL rules)"


def events_with_auth(stack, what):
    try:
        job_id = submit(stack)
        s = open_stream(stack, job_id)
        expect(s.read_until(got_events(1)), "%s: no first event" % what, s.status, s.body)
        token = claim(stack, job_id)
        complete(stack, job_id, token)
        expect(s.read_until(ended), "%s: no live events" % what, s.events)
        expect([e["event"] for e in s.events] == ["progress", "progress", "completed"],
               "%s: events" % what, s.events)
        s.close()
    finally:
        stack.stop()


def heartbeat_and_cors(_shared):
    def edit(text):
        return text.replace("        server_name",
                            "        sep_events_heartbeat 200ms;\n"
                            "        sep_cors_origins %s;\n        server_name" % APP, 1)

    stack = harness.Stack(worker_processes=1, conf_edit=edit).start()
    try:
        job_id = submit(stack)
        s = open_stream(stack, job_id, {"Origin": APP})
        expect(s.read_until(lambda x: len(x.comments) >= 3, timeout=5), "no heartbeats",
               s.comments, s.body)
        expect(all(c == "ping" for c in s.comments), "comments %r" % s.comments)
        expect(s.headers.get("access-control-allow-origin") == APP, "no CORS header",
               s.headers)
        expect("Origin" in s.headers.get("vary", ""), "no Vary: Origin", s.headers)
        expect(len(s.events) == 1, "heartbeats are not events", s.events)
        s.close()
    finally:
        stack.stop()


def reload_ends_streams(_shared):
    stack = harness.Stack(worker_processes=1).start()
    try:
        job_id = submit(stack)
        s = open_stream(stack, job_id)
        expect(s.read_until(got_events(1)), "first event")
        (old,) = stack.worker_pids()
        stack.reload_nginx()
        expect(s.read_until(ended, timeout=10), "the old worker's stream did not end")
        expect(wait_for(lambda: not os.path.exists("/proc/%d" % old) or
                        open("/proc/%d/stat" % old).read().rsplit(")", 1)[1].split()[0] == "Z",
                        10), "the old worker did not exit")
        s.close()
        # the new worker serves streams
        s = open_stream(stack, job_id, {"Last-Event-ID": "0"})
        token = claim(stack, job_id)
        complete(stack, job_id, token)
        expect(s.read_until(ended), "no stream from the new worker", s.status, s.body)
        expect(s.events and s.events[-1]["event"] == "completed", "events", s.events)
        s.close()
    finally:
        stack.stop()


for fn in (memory_cycles, redis_stopped_mid_stream, redis_with_password, heartbeat_and_cors,
           reload_ends_streams):
    cases.case(fn)


def main(argv):
    if harness.redis is None:
        print("SKIP: python3-redis is not installed (make deps)")
        return 0
    raise_fd_limit(4096)
    stack = harness.Stack().start()
    harness.install_signal_cleanup(stack)
    try:
        return cases.run(stack, only=argv[1:])
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
