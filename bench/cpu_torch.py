#!/usr/bin/env python3
"""Times the reference PyTorch HTDemucs on full-size segments (the peer of bench/cpu).

    cpu_torch.py WEIGHTS.safetensors [--threads N] [--runs R] [--batch B]

Builds demucs.htdemucs.HTDemucs from the weights file's metadata (models/FORMAT.md),
loads its tensors, and runs R forward passes (after one warm-up) on a seeded random
mix of the model's segment length with torch.set_num_threads(N). Prints the same
machine-readable lines as build/bench/cpu_engine, prefixed torch_ (run, median,
per-segment, best and CPU seconds, peak RSS). torch_run_peak_rss_mib is the peak from
the warm-up pass on (reset after loading, as cpu_engine does): this script's own loader
holds the file, its tensors and the randomly initialised model at once, a transient
that is not PyTorch's and would flatter a ratio of whole-process peaks.
"""
import argparse
import gc
import json
import os
import resource
import struct
import sys
import time

import numpy as np
import torch

from demucs.htdemucs import HTDemucs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, d in header.items():
        b, e = d["data_offsets"]
        arr = np.frombuffer(raw, dtype="<f4", count=(e - b) // 4, offset=base + b)
        tensors[name] = torch.from_numpy(arr.reshape(d["shape"]).copy())
    return tensors, meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tensors, meta = read_safetensors(args.weights)
    spec = json.loads(meta["models"])[0]
    kwargs = dict(spec["kwargs"])
    model = HTDemucs(**kwargs)
    state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("0.")}
    model.load_state_dict(state)
    model.eval()
    del tensors, state
    length = int(meta["segment_samples"])
    channels = int(meta["audio_channels"])
    gen = torch.Generator().manual_seed(12345)
    mix = (torch.rand(args.batch, channels, length, generator=gen) - 0.5) * 0.5
    gc.collect()
    peak_reset = benchlib.reset_peak_rss()

    times, cpu = [], []
    with torch.no_grad():
        model(mix)  # warm-up
        for _ in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            model(mix)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    med = float(np.median(times))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("torch_run_seconds " + " ".join(f"{t:.3f}" for t in times))
    print(f"torch_median_seconds {med:.3f}")
    print(f"torch_per_segment_seconds {med / args.batch:.3f}")
    print(f"torch_peak_rss_mib {rss:.1f}")
    if peak_reset:
        print(f"torch_run_peak_rss_mib {benchlib.peak_rss_mib():.1f}")
    print(f"torch_best_seconds {min(times) / args.batch:.3f}")
    # CPU time of the process (all threads) per segment: less sensitive to other load
    print(f"torch_cpu_seconds {float(np.median(cpu)) / args.batch:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
