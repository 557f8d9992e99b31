#!/usr/bin/env python3
"""Parity fixtures for the C HTDemucs engine, produced by the reference PyTorch code.

For each small, seeded, random-weight HTDemucs configuration this writes two
safetensors files:

  <dir>/<config>.weights.safetensors      the network in models/FORMAT.md format
  <dir>/<config>.activations.safetensors  the input mix, intermediate activations
                                          captured with forward hooks, and the output

Activation names (the C parity test traces the same names):
  mix                          input [B][audio_channels][length]
  spec                         _magnitude(_spec(mix)), complex as channels [B][2C][F][T]
  encoder.{i} / tencoder.{i}   output of each encoder layer (freq / time branch)
  freq_emb                     ScaledEmbedding output (the table, scaled) [F][C]
  freq_emb.added               encoder.0 output after the frequency embedding is added
  channel_upsampler[_t]        1x1 convs before the transformer (bottom_channels)
  crosstransformer.in / .in_t  transformer inputs (x [B][C][F][T], xt [B][C][T])
  crosstransformer.layers.{i}[_t]  each transformer layer's output, token-major [B][N][C]
  crosstransformer.out / .out_t    transformer outputs
  channel_downsampler[_t]      1x1 convs after the transformer
  decoder.{i} / tdecoder.{i}   first output of each decoder layer
  output                       final separated sources [B][S][audio_channels][length]

Usage (with the reference venv, see `make deps-reference`):
  build/refvenv/bin/python tests/reference/make_fixtures.py            # tests/fixtures/
  build/refvenv/bin/python tests/reference/make_fixtures.py --config htdemucs_full \
        --out build/parity-full --batch 1                            # full-size, on demand
"""
import argparse
import inspect
import json
import os
import sys
from fractions import Fraction

import numpy as np
import torch

from demucs.htdemucs import HTDemucs

SOURCES4 = ["drums", "bass", "other", "vocals"]
SOURCES6 = ["drums", "bass", "other", "vocals", "guitar", "piano"]

# Small configurations. Each runs the same code paths as the official model:
#  tiny_transformer: the htdemucs structure (all layers over frequency, a parallel time
#     branch, no merge, dconv in encoder and decoder, bottom_channels, a cross
#     transformer with self/cross/self layers, norm_first, norm_out, LayerScale).
#  tiny_merge: the other HTDemucs layouts: the time branch merges into the frequency
#     branch (empty tencoder/tdecoder layer), a time-only layer after the merge,
#     GroupNorm in the layers (norm_starts), context convs in the encoder (2-D
#     rewrite), dconv in the encoder only, 6 sources, no transformer.
#  tiny_posttransformer: transformer variants: cross layer first, post-norm layers
#     (norm_first=False), ReLU, no LayerScale, no bottom_channels, odd time lengths.
CONFIGS = {
    "tiny_transformer": dict(
        seed=1,
        segment=Fraction(1, 10),
        kwargs=dict(sources=SOURCES4, channels=8, nfft=1024, depth=3, dconv_mode=3,
                    bottom_channels=32, t_layers=3, t_heads=4, norm_starts=4),
    ),
    "tiny_merge": dict(
        seed=2,
        segment=Fraction(1, 20),
        kwargs=dict(sources=SOURCES6, channels=8, nfft=256, depth=4, dconv_mode=1,
                    dconv_comp=4, norm_starts=2, norm_groups=4, context_enc=1,
                    bottom_channels=0, t_layers=0),
    ),
    "tiny_posttransformer": dict(
        seed=3,
        segment=Fraction(3, 40),
        kwargs=dict(sources=SOURCES4, channels=8, nfft=256, depth=2, dconv_mode=2,
                    dconv_depth=1, bottom_channels=0, t_layers=2, t_heads=2,
                    t_cross_first=True, t_norm_first=False, t_norm_out=False,
                    t_gelu=False, t_layer_scale=False, t_hidden_scale=2.0),
    ),
    # The official htdemucs hyperparameters (demucs' training config `htdemucs:`
    # section + dconv_mode=3, bottom_channels=512, t_layers=5), random weights.
    "htdemucs_full": dict(
        seed=4,
        segment=Fraction(39, 5),
        kwargs=dict(sources=SOURCES4, dconv_mode=3, bottom_channels=512, t_layers=5,
                    t_sparse_attn_window=400, t_global_window=100),
    ),
}
DEFAULT_CONFIGS = ["tiny_transformer", "tiny_merge", "tiny_posttransformer"]


def write_safetensors(path, tensors, metadata=None):
    """Writes a safetensors file: u64 header length, JSON header, raw F32 data."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr, dtype="<f4")
        nbytes = arr.nbytes
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + nbytes]}
        blobs.append(arr)
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for arr in blobs:
            f.write(arr.tobytes())
    os.replace(tmp, path)


def full_kwargs(kwargs, segment, samplerate):
    """Every HTDemucs.__init__ argument with its default filled in (JSON-ready)."""
    sig = inspect.signature(HTDemucs.__init__)
    out = {}
    for name, p in sig.parameters.items():
        if name == "self":
            continue
        value = kwargs.get(name, p.default)
        if value is inspect.Parameter.empty:
            raise ValueError(f"missing required argument {name}")
        out[name] = value
    out["segment"] = float(segment)
    out["samplerate"] = samplerate
    return out


def randomize(model, gen):
    """Gives every parameter a value that makes its path visible at fp32 tolerance:
    LayerScales and norms far from their init (1e-3 / identity), non-zero biases.
    Convolution, linear and embedding weights keep the reference initialisation."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    done = set()
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            if isinstance(mod, norms) and mod.weight is not None:
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=gen))
                done.update({f"{mod_name}.weight", f"{mod_name}.bias"})
        for name, p in model.named_parameters():
            if name in done:
                continue
            if name.endswith(".scale"):  # LayerScale
                p.copy_(torch.rand(p.shape, generator=gen) * 0.8 + 0.2)
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def make_mix(gen, batch, channels, length, samplerate):
    """Music-like test input: a few tones, a decaying click train and some noise."""
    t = torch.arange(length, dtype=torch.float64) / samplerate
    mixes = []
    for _ in range(batch):
        x = torch.zeros(channels, length, dtype=torch.float64)
        for _k in range(4):
            f = float(torch.empty(1).uniform_(60, 4000, generator=gen))
            phase = float(torch.rand(1, generator=gen)) * 6.28
            amp = torch.rand(channels, 1, generator=gen, dtype=torch.float64) * 0.2
            x += amp * torch.sin(2 * np.pi * f * t + phase)
        period = max(length // 7, 1)
        clicks = torch.zeros(length, dtype=torch.float64)
        clicks[::period] = 0.8
        x += torch.nn.functional.conv1d(
            clicks[None, None], torch.exp(-torch.arange(64.0, dtype=torch.float64) / 8)
            .flip(0)[None, None], padding=63)[0, 0, :length]
        x += 0.05 * torch.randn(channels, length, generator=gen, dtype=torch.float64)
        mixes.append(x)
    return torch.stack(mixes).float()


def capture(model, mix):
    """Runs the model, returns {name: activation} (see the module docstring)."""
    acts = {}

    def save(name):
        def hook(_mod, _inp, out):
            if isinstance(out, tuple):
                out = out[0]
            acts[name] = out.detach().clone()
        return hook

    handles = []
    for branch in ("encoder", "tencoder", "decoder", "tdecoder"):
        for i, layer in enumerate(getattr(model, branch)):
            handles.append(layer.register_forward_hook(save(f"{branch}.{i}")))
    if model.freq_emb is not None:
        handles.append(model.freq_emb.register_forward_hook(save("freq_emb")))
    if model.bottom_channels:
        for name in ("channel_upsampler", "channel_upsampler_t",
                     "channel_downsampler", "channel_downsampler_t"):
            handles.append(getattr(model, name).register_forward_hook(save(name)))
    ct = model.crosstransformer
    if ct is not None:
        def pre(_mod, inp):
            acts["crosstransformer.in"] = inp[0].detach().clone()
            acts["crosstransformer.in_t"] = inp[1].detach().clone()

        def post(_mod, _inp, out):
            acts["crosstransformer.out"] = out[0].detach().clone()
            acts["crosstransformer.out_t"] = out[1].detach().clone()
        handles.append(ct.register_forward_pre_hook(pre))
        handles.append(ct.register_forward_hook(post))
        for i in range(ct.num_layers):
            handles.append(ct.layers[i].register_forward_hook(
                save(f"crosstransformer.layers.{i}")))
            handles.append(ct.layers_t[i].register_forward_hook(
                save(f"crosstransformer.layers.{i}_t")))
    with torch.no_grad():
        out = model(mix)
        acts["spec"] = model._magnitude(model._spec(mix)).detach().clone()
        if model.freq_emb is not None:
            emb = acts["freq_emb"].t()[None, :, :, None]
            acts["freq_emb.added"] = acts["encoder.0"] + model.freq_emb_scale * emb
    for h in handles:
        h.remove()
    acts["mix"] = mix
    acts["output"] = out
    return acts


def build(config_name, out_dir, batch, names_only=None, weights_only=False):
    cfg = CONFIGS[config_name]
    samplerate = 44100
    torch.manual_seed(cfg["seed"])
    gen = torch.Generator().manual_seed(cfg["seed"] + 1000)
    kwargs = dict(cfg["kwargs"], segment=cfg["segment"], samplerate=samplerate)
    model = HTDemucs(**kwargs)
    randomize(model, gen)
    model.eval()
    segment_samples = int(cfg["segment"] * samplerate)
    acts = None
    if not weights_only:
        mix = make_mix(gen, batch, model.audio_channels, segment_samples, samplerate)
        acts = capture(model, mix)

    os.makedirs(out_dir, exist_ok=True)
    state = {f"0.{k}": v.detach().numpy() for k, v in model.state_dict().items()}
    meta = {
        "format": "sep-demucs/1",
        "name": config_name,
        "sources": json.dumps(model.sources),
        "samplerate": str(samplerate),
        "audio_channels": str(model.audio_channels),
        "segment": str(float(cfg["segment"])),
        "segment_samples": str(segment_samples),
        "models": json.dumps([{"class": "HTDemucs", "signature": config_name,
                               "kwargs": full_kwargs(kwargs, cfg["segment"], samplerate)}]),
        "weights": json.dumps([[1.0] * len(model.sources)]),
    }
    wpath = os.path.join(out_dir, f"{config_name}.weights.safetensors")
    apath = os.path.join(out_dir, f"{config_name}.activations.safetensors")
    write_safetensors(wpath, state, meta)
    nparams = sum(p.numel() for p in model.parameters())
    if weights_only:
        print(f"{config_name}: {nparams} parameters -> {wpath}")
        return
    keep = {k: v.numpy() for k, v in acts.items() if names_only is None or
            any(k == n or k.startswith(n + ".") for n in names_only)}
    write_safetensors(apath, keep, {"config": config_name, "batch": str(batch)})
    size = os.path.getsize(wpath) + os.path.getsize(apath)
    print(f"{config_name}: {nparams} parameters, {len(keep)} activations, "
          f"{size / 1e6:.2f} MB -> {wpath}, {apath}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS),
                    help="configuration(s) to build (default: the small ones)")
    ap.add_argument("--out", default="tests/fixtures", help="output directory")
    ap.add_argument("--batch", type=int, default=1, help="number of input mixes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--weights-only", action="store_true",
                    help="write only the weights file (no reference forward pass)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.config or DEFAULT_CONFIGS:
        # The full-size configuration keeps only the per-layer outputs (not every
        # transformer layer) to bound the file size.
        names = None
        if name == "htdemucs_full":
            names = ["mix", "spec", "encoder", "tencoder", "freq_emb.added",
                     "crosstransformer.out", "crosstransformer.out_t",
                     "decoder", "tdecoder", "output"]
        build(name, args.out, args.batch, names, args.weights_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
