#!/usr/bin/env python3
"""Reference outputs of the whole demucs.separate pipeline, for the apply layer's tests.

Builds a tiny seeded random-weight HTDemucs (the official structure at 44.1 kHz: nfft
4096, depth 4, dconv in encoder and decoder, bottom_channels, a cross transformer; few
channels and a 0.1 s segment keep the files small), a second network for a bag of two,
a short stereo track (several segments, so overlap-add is exercised), and runs
exactly what `demucs.separate` runs on a track:

    ref = wav.mean(0); mean = ref.mean(); std = ref.std() + 1e-8
    out = apply_model(model, ((wav - mean) / std)[None], shifts, split=True,
                      overlap, segment) * std + mean
    two-stem: stem, and no_stem = sum of the other sources in source order

with `random.randint` (apply_model's shift offsets) replaced by fixed offsets, so the
C side can reproduce shifted runs exactly.

Writes into tests/fixtures/apply/ (or --out):
  tiny_apply.safetensors      one network (models/FORMAT.md)
  tiny_apply_bag.safetensors  a bag of two (network 0 = tiny_apply), per-source weights
  track.wav                   the input: stereo float32 WAV at 44.1 kHz whose samples are
                              16-bit values / 32768 (a 16-bit copy decodes identically)
  {case}.f32                  raw little-endian float32 output [stems][channels][frames]
  cases.json                  the cases: model file, options, stem names, output file

Usage: build/refvenv/bin/python tests/reference/make_apply_fixtures.py [--out DIR]
"""
import argparse
import inspect
import json
import os
import random
import struct
from fractions import Fraction

import numpy as np
import torch

from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs

SOURCES = ["drums", "bass", "other", "vocals"]
SAMPLERATE = 44100
SEGMENT = Fraction(1, 10)
TRACK_FRAMES = 7501  # 0.17 s: three 0.1 s chunks at overlap 0.25, the last one short
KWARGS = dict(sources=SOURCES, audio_channels=2, channels=2, depth=4, nfft=4096,
              dconv_mode=3, dconv_comp=2, bottom_channels=8, t_layers=1, t_heads=2,
              samplerate=SAMPLERATE, segment=SEGMENT)
BAG_WEIGHTS = [[1.0, 0.5, 0.25, 1.0], [0.5, 1.0, 1.0, 2.0]]

# name, model file, options. shift_offsets are in bag order ([n_models][shifts]).
CASES = [
    ("single_overlap25", "tiny_apply.safetensors",
     dict(overlap=0.25, shifts=0, shift_offsets=[], segment=None, two_stems=None)),
    ("bag_overlap50", "tiny_apply_bag.safetensors",
     dict(overlap=0.5, shifts=0, shift_offsets=[], segment=None, two_stems=None)),
    ("single_segment008_two_vocals", "tiny_apply.safetensors",
     dict(overlap=0.25, shifts=0, shift_offsets=[], segment=0.08, two_stems="vocals")),
    ("single_shifts2", "tiny_apply.safetensors",
     dict(overlap=0.25, shifts=2, shift_offsets=[9000, 22050], segment=None, two_stems=None)),
    ("bag_shifts1_segment006_two_drums", "tiny_apply_bag.safetensors",
     dict(overlap=0.1, shifts=1, shift_offsets=[17, 20000], segment=0.06, two_stems="drums")),
]


def write_safetensors(path, tensors, metadata):
    """u64 little-endian header length, JSON header (8-byte aligned), raw F32 data."""
    header = {"__metadata__": metadata}
    offset, blobs = 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        blobs.append(arr)
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for arr in blobs:
            f.write(arr.tobytes())
    os.replace(path + ".tmp", path)


def full_kwargs():
    """Every HTDemucs.__init__ argument, defaults filled in, JSON-ready."""
    out = {}
    for name, p in inspect.signature(HTDemucs.__init__).parameters.items():
        if name != "self":
            out[name] = KWARGS.get(name, p.default)
    out["segment"] = float(SEGMENT)
    return out


def make_network(seed):
    torch.manual_seed(seed)
    model = HTDemucs(**KWARGS)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        # LayerScales start at 1e-3: lift them so every branch shows in the output.
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.8 + 0.2)
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_model(path, name, networks, weights):
    tensors = {}
    for i, net in enumerate(networks):
        for key, value in net.state_dict().items():
            tensors[f"{i}.{key}"] = value.detach().numpy()
    kwargs = full_kwargs()
    metadata = {
        "format": "sep-demucs/1",
        "name": name,
        "sources": json.dumps(SOURCES),
        "samplerate": str(SAMPLERATE),
        "audio_channels": "2",
        "segment": str(float(SEGMENT)),
        "segment_samples": str(int(SEGMENT * SAMPLERATE)),
        "models": json.dumps([{"class": "HTDemucs", "signature": f"{name}{i}",
                               "kwargs": kwargs} for i in range(len(networks))]),
        "weights": json.dumps(weights),
    }
    write_safetensors(path, tensors, metadata)


def make_track():
    """Music-like stereo test signal quantised to 16-bit steps, with a DC offset."""
    rng = np.random.default_rng(7)
    t = np.arange(TRACK_FRAMES) / SAMPLERATE
    left = 0.30 * np.sin(2 * np.pi * 110 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    left += 0.15 * np.sin(2 * np.pi * 659.3 * t + 0.3) + 0.05 * rng.standard_normal(t.size)
    right = 0.25 * np.sin(2 * np.pi * 220 * t + 1.0) + 0.2 * np.sign(np.sin(2 * np.pi * 4 * t))
    right += 0.05 * rng.standard_normal(t.size)
    wav = np.stack([left, right]) + 0.02
    return np.round(np.clip(wav, -1, 32767 / 32768) * 32768).astype(np.float32) / 32768


def write_float_wav(path, wav):
    """[channels][frames] float32 -> IEEE float WAV (fmt + fact + data)."""
    channels, frames = wav.shape
    data = np.ascontiguousarray(wav.T, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, channels, SAMPLERATE, SAMPLERATE * channels * 4,
                      channels * 4, 32)
    chunks = [(b"fmt ", fmt), (b"fact", struct.pack("<I", frames)), (b"data", data)]
    body = b"WAVE" + b"".join(n + struct.pack("<I", len(c)) + c for n, c in chunks)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def separate(model, wav, opts):
    """demucs.separate's pipeline (api.Separator.separate_tensor + the two-stem sum)."""
    offsets = list(opts["shift_offsets"])
    saved = random.randint
    random.randint = lambda a, b: offsets.pop(0)
    try:
        ref = wav.mean(0)
        mean = ref.mean()
        std = ref.std() + 1e-8
        with torch.no_grad():
            out = apply_model(model, ((wav - mean) / std)[None], segment=opts["segment"],
                              shifts=opts["shifts"], split=True, overlap=opts["overlap"],
                              device="cpu", num_workers=0, progress=False)
        out = out * std + mean
    finally:
        random.randint = saved
    assert not offsets, "unused shift offsets"
    res = dict(zip(SOURCES, out[0]))
    stem = opts["two_stems"]
    if stem is None:
        return list(res), torch.stack(list(res.values()))
    first = res.pop(stem)
    other = torch.zeros_like(next(iter(res.values())))
    for v in res.values():
        other += v
    return [stem, "no_" + stem], torch.stack([first, other])


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(here, "..", "fixtures", "apply"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)

    net0, net1 = make_network(11), make_network(12)
    save_model(os.path.join(args.out, "tiny_apply.safetensors"), "tiny_apply", [net0],
               [[1.0] * len(SOURCES)])
    save_model(os.path.join(args.out, "tiny_apply_bag.safetensors"), "tiny_apply_bag",
               [net0, net1], BAG_WEIGHTS)
    models = {"tiny_apply.safetensors": net0,
              "tiny_apply_bag.safetensors": BagOfModels([net0, net1], BAG_WEIGHTS)}

    track = make_track()
    write_float_wav(os.path.join(args.out, "track.wav"), track)
    wav = torch.from_numpy(track)

    manifest = {"track": "track.wav", "samplerate": SAMPLERATE, "channels": 2,
                "frames": TRACK_FRAMES, "cases": []}
    for name, model_file, opts in CASES:
        stems, out = separate(models[model_file], wav, opts)
        out.numpy().astype("<f4").tofile(os.path.join(args.out, name + ".f32"))
        manifest["cases"].append(dict(name=name, model=model_file, stems=stems,
                                      output=name + ".f32", **opts))
        print(f"{name}: {len(stems)} stems, peak {out.abs().max().item():.4f}")
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
