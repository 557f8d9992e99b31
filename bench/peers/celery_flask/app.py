"""Peer for bench/http: the Celery-style stack this service replaces.

Flask API (run under gunicorn) + Celery worker + Redis as broker and result backend,
in the shape of the Flask/FastAPI + Celery setups used for audio jobs:
POST /jobs saves the upload to a spool directory, writes a job hash to Redis, enqueues
a Celery task (late ack) and answers 202 with the id; GET /jobs/<id> reads the hash.
The task marks the job running (started_at) as it starts, does no audio work, and marks
it completed (completed_at), so what is measured is the queueing system alone; the
times are time.time() of this host (bench/queue reads them). Configured by CELERY_BROKER_URL and SPOOL (bench/http sets both).

PEER_IGNORE_RESULT=1 is bench/http's tuned peer: task_ignore_result, so that delay()
no longer subscribes to (and later unsubscribes from) the result channel of each task,
a result nobody reads; everything else (late ack, prefetch 1) as the seeds run it.
Unset (the default), the result backend is on as in the seed stacks.
"""
import os
import time
import uuid

import redis
from celery import Celery
from flask import Flask, jsonify, request

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6390/0")
SPOOL = os.environ.get("SPOOL", "/tmp/peer_spool")
os.makedirs(SPOOL, exist_ok=True)

celery = Celery("peer", broker=BROKER, backend=BROKER)
celery.conf.update(task_serializer="json", accept_content=["json"],
                   result_serializer="json", task_acks_late=True,
                   worker_prefetch_multiplier=1, result_expires=3600,
                   task_ignore_result=os.environ.get("PEER_IGNORE_RESULT") == "1")
r = redis.Redis.from_url(BROKER, decode_responses=True)
app = Flask(__name__)


@celery.task(name="process_audio")
def process_audio(job_id, path):
    r.hset(f"job:{job_id}", mapping={"status": "running", "started_at": time.time()})
    r.hset(f"job:{job_id}", mapping={"status": "completed", "progress": 100,
                                     "completed_at": time.time()})
    return {"status": "completed"}


@app.post("/jobs")
def submit():
    job_id = str(uuid.uuid4())
    path = os.path.join(SPOOL, job_id + ".wav")
    with open(path, "wb") as f:
        f.write(request.get_data())
    r.hset(f"job:{job_id}", mapping={"status": "queued", "progress": 0,
                                     "created_at": time.time(), "input": path})
    process_audio.delay(job_id, path)
    return jsonify(job_id=job_id, status="queued", poll_url=f"/jobs/{job_id}"), 202


@app.get("/jobs/<job_id>")
def status(job_id):
    h = r.hgetall(f"job:{job_id}")
    if not h:
        return jsonify(error="not found"), 404
    return jsonify(job_id=job_id, **h)
