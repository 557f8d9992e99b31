"""Peer for bench/service: the seeds' stack doing the real work.

The same Flask API and Celery setup as app.py (Flask under gunicorn, Celery worker,
Redis as broker and result backend, late ack, prefetch 1), but the task separates the
upload with the reference demucs code, as the Flask + Celery + demucs services do:
the model is loaded once per worker process (on its first task) with
demucs.pretrained.get_model from a local repo, the upload is read, normalised and run
through demucs.apply.apply_model (shifts 1, overlap 0.25, split, the demucs CLI's
defaults), and the four stems are written as 16-bit WAV beside the upload.

Environment: CELERY_BROKER_URL, SPOOL, DEMUCS_REPO (folder of SIG.th), DEMUCS_SIG,
TORCH_THREADS (torch.set_num_threads in the worker). The Flask side imports no torch;
the Celery worker runs under the reference interpreter (build/refvenv).
"""
import os
import time
import uuid
import wave

import redis
from celery import Celery
from flask import Flask, jsonify, request

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6390/0")
SPOOL = os.environ.get("SPOOL", "/tmp/peer_spool")
os.makedirs(SPOOL, exist_ok=True)

celery = Celery("peer_demucs", broker=BROKER, backend=BROKER)
celery.conf.update(task_serializer="json", accept_content=["json"],
                   result_serializer="json", task_acks_late=True,
                   worker_prefetch_multiplier=1, result_expires=3600)
r = redis.Redis.from_url(BROKER, decode_responses=True)
app = Flask(__name__)

_model = None


def model():
    global _model
    if _model is None:
        import torch
        from demucs.pretrained import get_model
        torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "2")))
        _model = get_model(os.environ["DEMUCS_SIG"], repo=__import__("pathlib").Path(
            os.environ["DEMUCS_REPO"]))
        _model.eval()
    return _model


def read_wav(path):
    import numpy as np
    import torch
    with wave.open(path, "rb") as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        data = raw.reshape(-1, w.getnchannels()).T.astype(np.float32) / 32768
    return torch.from_numpy(np.ascontiguousarray(data))


def write_wav(path, tensor, rate):
    import numpy as np
    pcm = (tensor.clamp(-1, 1).numpy().T * 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


@celery.task(name="separate_audio")
def separate_audio(job_id, path):
    import torch
    from demucs.apply import apply_model
    r.hset(f"job:{job_id}", mapping={"status": "running", "started_at": time.time()})
    m = model()
    wav = read_wav(path)
    ref = wav.mean(0)
    wav = (wav - ref.mean()) / ref.std()
    with torch.no_grad():
        sources = apply_model(m, wav[None], shifts=1, split=True, overlap=0.25)[0]
    sources = sources * ref.std() + ref.mean()
    out = {}
    for name, src in zip(m.sources, sources):
        stem = os.path.join(SPOOL, f"{job_id}.{name}.wav")
        write_wav(stem, src, m.samplerate)
        out[name] = stem
    r.hset(f"job:{job_id}", mapping={"status": "completed", "progress": 100,
                                     "completed_at": time.time()})
    return {"status": "completed", "stems": out}


@app.post("/jobs")
def submit():
    job_id = str(uuid.uuid4())
    path = os.path.join(SPOOL, job_id + ".wav")
    with open(path, "wb") as f:
        f.write(request.get_data())
    r.hset(f"job:{job_id}", mapping={"status": "queued", "progress": 0,
                                     "created_at": time.time(), "input": path})
    separate_audio.delay(job_id, path)
    return jsonify(job_id=job_id, status="queued", poll_url=f"/jobs/{job_id}"), 202


@app.get("/jobs/<job_id>")
def status(job_id):
    h = r.hgetall(f"job:{job_id}")
    if not h:
        return jsonify(error="not found"), 404
    return jsonify(job_id=job_id, **h)
