"""Generates the converter's test fixtures with demucs' own code (run by hand).

    build/refvenv/bin/python tests/convert/make_checkpoints.py [OUT_DIR]

OUT_DIR defaults to tests/fixtures/convert/. Builds two tiny random HTDemucs
configurations and saves them exactly as demucs releases models
(demucs.states.serialize_model + save_with_checksum, i.e. `<name>-<sha256[:8]>.th`,
metrics added as tools/export.py does):
  tiny_a-*.th          model A, float16 state (half=True, like official releases)
  tiny_a_f32-*.th      model A, float32 state (half=False)
  tiny_a_legacy.th     model A, float16, torch's legacy (non-zip) format
  tiny_b-*.th          model B (different config, positional args), float16
  tiny_hdemucs-*.th    a demucs.hdemucs.HDemucs model (unsupported class)
  tiny_quantized.th    an HTDemucs package whose state is marked quantized
and records what the converter must reproduce:
  expected.npz         "<model>_f16" (and "a_f32"): the state tensors flattened and
                       concatenated in state_dict order
  expected.json        files, sha256, every HTDemucs argument (inspect.signature
                       binding with defaults), segment samples (demucs' own formula),
                       parameter counts, state keys and shapes in order, and the
                       HTDemucs signature.
"""

from fractions import Fraction
import hashlib
import inspect
import io
import json
from pathlib import Path
import sys
import warnings

import numpy as np
import torch
from omegaconf import OmegaConf

from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import save_with_checksum, serialize_model


def save_legacy_without_source(package, path):
    """torch's legacy format also stores the source text and file path of every
    nn.Module class it pickles (here the HTDemucs class); the converter ignores them,
    and a fixture must not carry another project's source or this machine's paths.
    torch records None for both when it cannot read the source."""
    import torch.serialization as ts

    def no_source(obj):
        raise OSError("source not recorded")

    saved = ts.get_source_lines_and_file
    ts.get_source_lines_and_file = no_source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.save(package, path, _use_new_zipfile_serialization=False)
    finally:
        ts.get_source_lines_and_file = saved

SOURCES = ["drums", "bass", "other", "vocals"]

MODELS = {
    # A: the official layout scaled down (dconv_mode=3, bottom_channels, 7.8 s segment).
    "a": dict(
        args=(SOURCES,),
        kwargs=dict(
            channels=8,
            depth=2,
            nfft=256,
            t_layers=1,
            t_heads=2,
            dconv_mode=3,
            bottom_channels=8,
            samplerate=44100,
            segment=Fraction(39, 5),
        ),
        seed=1,
    ),
    # B: sources/audio_channels/channels passed by position, another segment.
    "b": dict(
        args=(SOURCES, 2, 8),
        kwargs=dict(
            depth=2,
            nfft=256,
            t_layers=2,
            t_heads=4,
            t_hidden_scale=1.0,
            t_cross_first=True,
            segment=Fraction(7, 2),
        ),
        seed=2,
    ),
}


def json_value(value):
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def training_args(model_kwargs):
    # The shape of demucs' training config, resolved to plain containers on save.
    return OmegaConf.create(
        {
            "model": "htdemucs",
            "dset": {"name": "tiny", "sources": SOURCES, "samplerate": 44100, "channels": 2},
            "htdemucs": {k: json_value(v) for k, v in model_kwargs.items()},
            "optim": {"lr": 3e-4, "optim": "adam"},
        }
    )


def save_signed(package, out_dir, stem):
    for old in out_dir.glob(stem + "-*.th"):
        old.unlink()
    save_with_checksum(package, out_dir / (stem + ".th"))
    (path,) = out_dir.glob(stem + "-*.th")
    return path


def describe(path, model):
    data = path.read_bytes()
    args, kwargs = model._init_args_kwargs
    bound = inspect.signature(HTDemucs).bind(*args, **kwargs)
    bound.apply_defaults()
    return {
        "file": path.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "kwargs": {name: json_value(value) for name, value in bound.arguments.items()},
        "segment_samples": int(model.segment * model.samplerate),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": [[key, list(value.shape)] for key, value in model.state_dict().items()],
    }


def main():
    warnings.simplefilter("ignore")
    here = Path(__file__).resolve().parent
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent / "fixtures" / "convert"
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {}
    expected = {"models": {}, "files": {}}

    for label, spec in MODELS.items():
        torch.manual_seed(spec["seed"])
        model = HTDemucs(*spec["args"], **spec["kwargs"])
        # Spread every parameter (GroupNorm weights start at exactly 1, biases at 0)
        # so float16 rounding is exercised on all of them.
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.05)
        train = training_args(spec["kwargs"])
        state = model.state_dict()
        arrays[f"{label}_f16"] = np.concatenate([v.half().numpy().ravel() for v in state.values()])
        if label == "a":
            arrays[f"{label}_f32"] = np.concatenate(
                [v.float().numpy().ravel() for v in state.values()]
            )

        half = serialize_model(model, train, half=True)
        half["metrics"] = ({"loss": 0.125, "sdr": np.float64(7.5)}, {"nsdr": 8.25})
        path = save_signed(half, out_dir, f"tiny_{label}")
        expected["models"][label] = describe(path, model)
        expected["files"][f"{label}_half"] = path.name

        if label == "a":
            full = serialize_model(model, train, half=False)
            path = save_signed(full, out_dir, "tiny_a_f32")
            expected["files"]["a_f32"] = path.name
            legacy = out_dir / "tiny_a_legacy.th"
            save_legacy_without_source(half, legacy)
            expected["files"]["a_legacy"] = legacy.name
            quantized = dict(half)
            quantized["state"] = {
                "__quantized": True,
                "quantized": [torch.zeros(4, dtype=torch.uint8)],
            }
            path = out_dir / "tiny_quantized.th"
            torch.save(quantized, path)
            expected["files"]["quantized"] = path.name

    torch.manual_seed(3)
    other = HDemucs(SOURCES, channels=4, depth=2, nfft=256)
    package = serialize_model(other, OmegaConf.create({"model": "hdemucs"}), half=True)
    expected["files"]["hdemucs"] = save_signed(package, out_dir, "tiny_hdemucs").name

    expected["htdemucs_signature"] = [
        [
            name,
            None if p.default is inspect.Parameter.empty else json_value(p.default),
            p.default is inspect.Parameter.empty,
        ]
        for name, p in inspect.signature(HTDemucs).parameters.items()
    ]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    (out_dir / "expected.npz").write_bytes(buffer.getvalue())
    (out_dir / "expected.json").write_text(json.dumps(expected) + "\n")
    total = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    print(f"wrote {len(list(out_dir.iterdir()))} files, {total / 1024:.0f} KiB, to {out_dir}")


if __name__ == "__main__":
    main()
