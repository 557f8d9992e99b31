"""Finishes a job the way workerd does, for the integration tests.

Runs the project's own Lua scripts (shared/lua/claim.lua, shared/lua/complete.lua,
with the KEYS/ARGV of the contract in shared/README.md) with EVAL against the test's
Redis: the job's stream entry is read through the consumer group (XREADGROUP), then
claimed (an attempt token) and completed with that token. The stems are written into
the spool layout documented in ngx_module/README.md: {spool}/{id}/{stem}.{ext}, each
written to a temp file and renamed into place. Nothing is decoded or separated: the
stems are recognisable byte patterns, so a download can be compared byte for byte.
"""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LUA_DIR = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "lua")
PREFIX = "{sep}:"
GROUP = "workers"
JOB_KEY_SUFFIXES = ("stats", "q:high", "q:normal", "delayed", "running", "expiry", "dead")

SOURCES = {
    "htdemucs": ["drums", "bass", "other", "vocals"],
    "htdemucs_ft": ["drums", "bass", "other", "vocals"],
    "htdemucs_6s": ["drums", "bass", "other", "vocals", "guitar", "piano"],
}


def script(name):
    """A script's text as the build compiles it in: shared/lua/lib.lua, then NAME.lua."""
    text = ""
    for part in ("lib", name):
        with open(os.path.join(LUA_DIR, part + ".lua"), encoding="utf-8") as f:
            text += f.read()
    return text


def output_stems(model, stems_option):
    """The stem names a job produces: every source, or `s` + `no_s` in two-stem mode."""
    if stems_option in (None, "", "all"):
        return list(SOURCES[model])
    return [stems_option, "no_" + stems_option]


def stem_bytes(job_id, name, size=24 * 1024):
    """Distinct, recognisable content per job and stem (a RIFF header, then a pattern)."""
    pattern = ("%s/%s;" % (job_id, name)).encode()
    body = (pattern * (size // len(pattern) + 1))[:size - 12]
    return b"RIFF" + (size - 8).to_bytes(4, "little") + b"WAVE" + body


def job_keys(job_id):
    """The 8 KEYS of the job scripts (shared/README.md)."""
    return [PREFIX + "job:" + job_id] + [PREFIX + s for s in JOB_KEY_SUFFIXES]


def read_entry(r, job_id, queue, worker):
    """Has worker read the job's stream entry through the group (its own pending
    entries first, then new ones); returns the entry id or None."""
    entry = r.hget(PREFIX + "job:" + job_id, "stream_id")
    if entry is None:
        return None
    stream = PREFIX + "q:" + queue
    for start in ("0", ">"):
        for _stream, entries in r.xreadgroup(GROUP, worker, {stream: start}, count=1000) or []:
            if any(e == entry for e, _fields in entries):
                return entry.decode()
    return None


def claim(r, job_id, worker="it-worker/0", visibility_ms=300000):
    """claim.lua after reading the job's entry: returns (token, hash as a dict), or
    None when the job is not run (the reply's reason is not "run"). A short
    visibility_ms stands for a worker that dies right after claiming."""
    queue = (r.hget(PREFIX + "job:" + job_id, "priority") or b"normal").decode()
    entry = read_entry(r, job_id, queue, worker)
    if entry is None:
        return None
    reply = r.eval(script("claim"), 8, *job_keys(job_id), worker, queue, entry,
                   os.urandom(8).hex(), str(visibility_ms), "1000")
    if reply[0] != b"run":
        return None
    fields = {reply[i].decode(): reply[i + 1].decode() for i in range(2, len(reply) - 1, 2)}
    return reply[1].decode(), fields


def fail(r, job_id, token, code="canceled", message="", retryable="0"):
    """fail.lua for the attempt of token: returns the reply ([b"canceled"], ...)."""
    return r.eval(script("fail"), 8, *job_keys(job_id), token, code, message, retryable,
                  "0", "0", "0", "1000")


def complete_job(stack, job_id):
    """Claim, write the stems, run complete.lua; returns {stem: bytes written}."""
    r = stack.redis
    fields = {k.decode(): v.decode() for k, v in r.hgetall(PREFIX + "job:" + job_id).items()}
    if not fields:
        raise AssertionError("job %s has no hash in Redis" % job_id)
    claimed = claim(r, job_id)
    if claimed is None:
        raise AssertionError("claim.lua refused job %s (status %s)"
                             % (job_id, fields.get("status")))
    token = claimed[0]
    ext = "flac" if fields.get("format") == "flac" else "wav"
    job_dir = stack.job_dir(job_id)
    os.makedirs(job_dir, exist_ok=True)
    written, listed = {}, {}
    for name in output_stems(fields.get("model", "htdemucs"), fields.get("stems_option")):
        data = stem_bytes(job_id, name)
        final = os.path.join(job_dir, "%s.%s" % (name, ext))
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, final)
        written[name] = data
        listed[name] = {"file": os.path.basename(final), "bytes": len(data)}
    total = sum(len(d) for d in written.values())
    r.eval(script("complete"), 8, *job_keys(job_id), token, json.dumps(listed), str(total),
           "timing_decode_s", "0.010", "timing_separate_s", "0.500",
           "timing_encode_s", "0.020", "audio_seconds", "0.25",
           "audio_sample_rate", "44100", "audio_channels", "2")
    return written
