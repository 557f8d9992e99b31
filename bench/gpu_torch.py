#!/usr/bin/env python3
"""Times the reference PyTorch HTDemucs on a GPU over a whole song (the peer of bench/gpu).

    gpu_torch.py WEIGHTS.safetensors --mode apply|batched [--song-seconds 240]
                 [--runs R] [--batches 4,8,16] [--device cuda]

Builds demucs.htdemucs.HTDemucs from the weights file's metadata (as bench/cpu_torch.py
does), moves it to the GPU, and separates a seeded random stereo "song" of
--song-seconds (on the host, as demucs.separate holds a track) R times after one
warm-up song, each timed to the end (torch.cuda.synchronize):
  apply    demucs.apply.apply_model(model, mix, shifts=0, split=True, overlap=0.25,
           device=cuda), with demucs.separate's normalisation around it: one segment
           per forward pass, as demucs runs it
  batched  the same segments (apply_model's offsets, TensorChunk padding, triangle
           weights, overlap-add) cut from the song on the GPU and run B at a time, for
           each B of --batches; then the fastest B once more with TF32 off everywhere
           (torch.backends.cudnn.allow_tf32 = False: PyTorch's default lets cuDNN
           convolutions round through TF32); each output checked against apply_model's
Prints key/value lines (seconds are per song):
  torch_gpu <name>                      torch_version <version>
  torch_tf32 cudnn=<bool> matmul=<bool> (the defaults the runs used)
  torch_segments <segments per song>    torch_segment_samples <samples per segment>
  torch_apply_seconds <t1> <t2> ...     torch_apply_max_reserved_mib / _allocated_mib
  torch_batched_seconds <B> <t1> ...    torch_batched_max_reserved_mib <B> <MiB>
  torch_batched_vs_apply_rel <B> <max |batched - apply| / max |apply|>
  torch_batched_strict_fp32_seconds <B> <t1> ...
"""
import argparse
import json
import math
import os
import sys
import time

import torch

from demucs.apply import apply_model, TensorChunk
from demucs.htdemucs import HTDemucs
from demucs.utils import center_trim

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cpu_torch import read_safetensors  # noqa: E402

OUT_OF_MEMORY = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)


def load_model(path, device):
    tensors, meta = read_safetensors(path)
    spec = json.loads(meta["models"])[0]
    model = HTDemucs(**dict(spec["kwargs"]))
    state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("0.")}
    model.load_state_dict(state)
    del tensors, state
    return model.to(device).eval()


def make_song(seconds, samplerate, channels):
    gen = torch.Generator().manual_seed(12345)
    return (torch.rand(channels, int(seconds * samplerate), generator=gen) - 0.5) * 0.5


def separate_apply(model, wav, device):
    """demucs.separate's path: normalise, apply_model (one segment per pass), undo."""
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std()
    out = apply_model(model, ((wav - mean) / std)[None], shifts=0, split=True, overlap=0.25,
                      progress=False, device=device, num_workers=0)[0]
    return out * std + mean


def segments(model, length, overlap=0.25):
    """apply_model's split: (segment_length, stride, offsets, triangle weight)."""
    segment_length = int(model.samplerate * model.segment)
    stride = int((1 - overlap) * segment_length)
    weight = torch.cat([torch.arange(1, segment_length // 2 + 1),
                        torch.arange(segment_length - segment_length // 2, 0, -1)]).float()
    return segment_length, stride, list(range(0, length, stride)), weight / weight.max()


def separate_batched(model, wav, device, batch):
    """The same segments and overlap-add as apply_model, `batch` segments per pass."""
    ref = wav.mean(0)
    mean, std = ref.mean(), ref.std()
    mix = ((wav - mean) / std)[None].to(device)
    length = mix.shape[-1]
    seg_len, _stride, offsets, weight = segments(model, length)
    weight = weight.to(device)
    out = torch.zeros(1, len(model.sources), mix.shape[1], length, device=device)
    sum_weight = torch.zeros(length, device=device)
    with torch.no_grad():
        for i in range(0, len(offsets), batch):
            group = offsets[i:i + batch]
            chunks = [TensorChunk(mix, off, seg_len) for off in group]
            padded = torch.cat([c.padded(model.valid_length(c.length)) for c in chunks])
            res = model(padded)
            for k, (off, c) in enumerate(zip(group, chunks)):
                r = center_trim(res[k:k + 1], c.length)
                n = r.shape[-1]
                out[..., off:off + n] += weight[:n] * r
                sum_weight[off:off + n] += weight[:n]
    out /= sum_weight
    return (out[0] * std + mean).cpu()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, runs, device):
    fn()  # warm-up song
    sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def reserved_mib(device):
    return torch.cuda.max_memory_reserved(device) / 1048576.0 if device.type == "cuda" else 0.0


def allocated_mib(device):
    return torch.cuda.max_memory_allocated(device) / 1048576.0 if device.type == "cuda" else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--mode", choices=("apply", "batched"), required=True)
    ap.add_argument("--song-seconds", type=float, default=240.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batches", default="4,8,16")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch_error no CUDA device visible to PyTorch")
        return 1
    model = load_model(args.weights, device)
    wav = make_song(args.song_seconds, model.samplerate, model.audio_channels)
    seg_len, _, offsets, _ = segments(model, wav.shape[-1])
    print("torch_gpu %s" % (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else "none (device %s)" % device))
    print(f"torch_version {torch.__version__}")
    print(f"torch_tf32 cudnn={torch.backends.cudnn.allow_tf32} "
          f"matmul={torch.backends.cuda.matmul.allow_tf32}")
    print(f"torch_segments {len(offsets)}")
    print(f"torch_segment_samples {seg_len}", flush=True)

    if args.mode == "apply":
        reset_peak(device)
        times = timed(lambda: separate_apply(model, wav, device), args.runs, device)
        print("torch_apply_seconds " + " ".join(f"{t:.4f}" for t in times))
        print(f"torch_apply_max_reserved_mib {reserved_mib(device):.0f}")
        print(f"torch_apply_max_allocated_mib {allocated_mib(device):.0f}")
        return 0

    reference = separate_apply(model, wav, device)
    peak = reference.abs().max().item()
    best = None
    for b in [int(x) for x in args.batches.split(",") if x]:
        reset_peak(device)
        try:
            times = timed(lambda: separate_batched(model, wav, device, b), args.runs, device)
        except OUT_OF_MEMORY:
            reset_peak(device)
            print(f"torch_batched_oom {b}", flush=True)
            continue
        print(f"torch_batched_seconds {b} " + " ".join(f"{t:.4f}" for t in times))
        print(f"torch_batched_max_reserved_mib {b} {reserved_mib(device):.0f}")
        got = separate_batched(model, wav, device, b)
        rel = (got - reference).abs().max().item() / peak if peak > 0 else math.inf
        print(f"torch_batched_vs_apply_rel {b} {rel:.3e}", flush=True)
        med = sorted(times)[len(times) // 2]
        if best is None or med < best[1]:
            best = (b, med)
    if best is not None:
        cudnn_tf32, matmul_tf32 = torch.backends.cudnn.allow_tf32, \
            torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        times = timed(lambda: separate_batched(model, wav, device, best[0]), args.runs, device)
        print(f"torch_batched_strict_fp32_seconds {best[0]} " +
              " ".join(f"{t:.4f}" for t in times))
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = \
            cudnn_tf32, matmul_tf32
    return 0


if __name__ == "__main__":
    sys.exit(main())
