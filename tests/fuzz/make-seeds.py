#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets that have no natural files (sniff,
options, job, multipart, audio) into tests/fuzz/<name>/. Deterministic; run again
after changing a parser's input format. The weights seeds are converted tiny models
and the ring seeds come from `FUZZ_RING_WRITE_SEEDS=tests/fuzz/ring build/fuzz/fuzz_ring`.
Audio seeds in other formats than WAV are made with build/tests/audiotool when it is
built (make), so they are real libsndfile output.

    tests/fuzz/make-seeds.py
"""

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
AUDIOTOOL = os.path.join(REPO, "build", "tests", "audiotool")


def write(name, files):
    d = os.path.join(HERE, name)
    os.makedirs(d, exist_ok=True)
    for fname, data in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())


def wav(frames=64, rate=44100, channels=2, width=2):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes((i * 37) & 0xFF for i in range(frames * channels * width)))
    return buf.getvalue()


def sniff_seeds():
    return {
        "wav": wav()[:64], "rf64": b"RF64\xff\xff\xff\xffWAVEds64" + bytes(40),
        "bw64": b"BW64\xff\xff\xff\xffWAVEds64" + bytes(40),
        "flac": b"fLaC\x00\x00\x00\x22" + bytes(34),
        "ogg_vorbis": b"OggS\x00\x02" + bytes(20) + b"\x01\x1e\x01vorbis" + bytes(20),
        "ogg_opus": b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead" + bytes(20),
        "mp3_id3": b"ID3\x04\x00\x00\x00\x00\x00\x21" + bytes(40),
        "mp3_sync": b"\xff\xfb\x90\x64" + bytes(60),
        "aiff": b"FORM\x00\x00\x00\x40AIFFCOMM" + bytes(40),
        "aifc": b"FORM\x00\x00\x00\x40AIFCFVER" + bytes(40),
        "text": b"hello, this is not audio",
    }


def option_seeds():
    return {
        "all": "model=htdemucs_6s&stems=guitar&format=flac&priority=high&shifts=2&overlap=0.5",
        "two_stem": "stems=vocals&format=wav24",
        "bad": "shifts=11&overlap=0.99&model=nope",
        "dup": "format=f32&format=wav",
        "exp": "overlap=1e-3&shifts=0010",
        "unknown": "foo=bar&stems=all&&=x&priority",
    }


def hash_text(fields):
    out = []
    for k, v in fields.items():
        out += [k, v]
    return "\n".join(out)


def job_seeds():
    base = {"id": "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b", "status": "completed",
            "progress": "1", "stage": "done", "message": "", "attempts": "1",
            "max_attempts": "3", "result_ttl": "86400", "created_at": "1764700000000",
            "started_at": "1764700000100", "finished_at": "1764700009000",
            "model": "htdemucs", "stems_option": "all", "format": "wav", "priority": "normal",
            "shifts": "1", "overlap": "0.25", "input": "input.wav", "input_type": "wav",
            "input_bytes": "352844", "stream_id": "1764700000000-0", "worker": "w1/cpu0",
            "audio_seconds": "2", "audio_sample_rate": "44100", "audio_channels": "2",
            "stems": json.dumps({"vocals": {"file": "vocals.a1-x.wav", "bytes": 352844},
                                 "drums": {"file": "drums.a1-x.wav", "bytes": 352844}}),
            "timing_queued_s": "0.1", "timing_decode_s": "0.01",
            "timing_separate_s": "8.5", "timing_encode_s": "0.02"}
    failed = dict(base, status="failed", error_code="invalid_audio",
                  error_message="the file \"x\" is not audio \\ \u00e9", error_retryable="0",
                  stems="")
    queued = {"id": base["id"], "status": "queued", "progress": "0", "created_at": "1",
              "cancel_requested": "1", "files_deleted": "1"}
    event = json.dumps({"event": "progress", "job": dict(base, status="running",
                                                           progress="0.5")})
    return {"completed": hash_text(base), "failed": hash_text(failed),
            "queued": hash_text(queued), "event": event,
            "event_done": json.dumps({"event": "completed", "job": base})}


def multipart_seeds():
    b = "XyZ123"
    ctype = "multipart/form-data; boundary=" + b
    body = ("--{b}\r\nContent-Disposition: form-data; name=\"stems\"\r\n\r\nvocals\r\n"
            "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            "Content-Type: audio/wav\r\n\r\n").format(b=b).encode() + wav(16) + \
        ("\r\n--{b}--\r\nepilogue").format(b=b).encode()
    quoted = 'multipart/form-data; boundary="a b:c"\n'.encode() + \
        b"preamble\r\n--a b:c \t\r\n\r\nno headers\r\n--a b:c--"
    return {"form": ctype.encode() + b"\n" + body, "quoted": quoted,
            "truncated": ctype.encode() + b"\n" + body[:80],
            "crlf_in_data": ctype.encode() + b"\n--XyZ123\r\nContent-Disposition: form-data; "
            b"name=\"file\"\r\n\r\n\r\n--XyZ12\r\n--XyZ1\r--\r\n--XyZ123--\r\n"}


def audio_seeds():
    seeds = {"wav16": wav(256), "wav_mono_8k": wav(128, rate=8000, channels=1),
             "wav24": wav(64, width=3), "wav_truncated": wav(256)[:300]}
    if os.access(AUDIOTOOL, os.X_OK):
        with tempfile.TemporaryDirectory() as tmp:
            for fmt in ("flac16", "ogg", "mp3", "wavf32"):
                out = os.path.join(tmp, "a." + fmt)
                subprocess.run([AUDIOTOOL, "gen", out, fmt, "22050", "2", "0.05"], check=True)
                with open(out, "rb") as f:
                    seeds[fmt] = f.read()
    else:
        print("make-seeds: %s is not built; only WAV audio seeds" % AUDIOTOOL)
    return seeds


def main():
    write("sniff", sniff_seeds())
    write("options", option_seeds())
    write("job", job_seeds())
    write("multipart", multipart_seeds())
    write("audio", audio_seeds())
    return 0


if __name__ == "__main__":
    sys.exit(main())
