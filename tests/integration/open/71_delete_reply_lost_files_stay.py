#!/usr/bin/python3
"""A DELETE whose reply is lost after Redis ran the cancel (replies stop coming back on
the connection; the spare replaces it): the request is answered 503 and the job's
{spool}/{id}/ stays, since only the reply removes it. Redis now says files_deleted,
so the client's retry of the DELETE is answered 409 already_deleted, and that answer
leaves the directory too: the upload stays on disk until the record expires
(sep_result_ttl) and workerd's orphan sweep finds it. Expected: the retried DELETE
(Redis: ALREADY_DELETED) removes what is left of {spool}/{id}/."""
import os, sys, time, json
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness

relay = harness.TcpRelay(upstream=None)
stack = harness.Stack(worker_processes=1, redis_tcp=True, sep_redis=lambda _s: relay.address)
relay.upstream = lambda: ("127.0.0.1", stack.redis_port)
try:
    relay.start()
    stack.start()
    created = stack.request("POST", "/v1/jobs", harness.wav_bytes(0.1),
                            {"Content-Type": "audio/wav"})
    assert created.status == 202, created
    jid = json.loads(created.body)["id"]
    print("job", jid, "spool:", len(stack.spool_files(jid)), "entries")
    print("muted connections:", relay.mute())
    first = stack.request("DELETE", "/v1/jobs/" + jid, timeout=15)
    print("first DELETE:", first.status, (first.body or b"")[:100])
    time.sleep(1.5)
    print("record: status=%s files_deleted=%s; spool: %s" % (
        stack.redis.hget(b"{sep}:job:" + jid.encode(), b"status"),
        stack.redis.hget(b"{sep}:job:" + jid.encode(), b"files_deleted"),
        stack.spool_files(jid)))
    retry = stack.request("DELETE", "/v1/jobs/" + jid, timeout=15)
    print("retry DELETE:", retry.status, (retry.body or b"")[:100])
    left = stack.spool_files(jid)
    print("spool after the retry:", left)
    ok = first.status == 503 and retry.status in (200, 409) and not left
    if first.status != 503:
        print("the first DELETE was not answered 503: the reply was not lost")
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    stack.stop()
    relay.stop()
