"""Cross-checks of the converter against demucs itself (run with the reference venv).

    build/refvenv/bin/python tests/convert/reference_check.py COMMAND ...

Commands (each prints one JSON document on stdout):
  signature                 HTDemucs.__init__ parameters: [[name, default, required]]
  catalog                   htdemucs, htdemucs_6s, htdemucs_ft as demucs' remote
                            files.txt and yaml bags describe them
  roundtrip TH WEIGHTS      loads TH with demucs.states.load_model, rebuilds HTDemucs
                            from WEIGHTS' metadata kwargs and tensors (model 0), and
                            compares the two states and their outputs on random audio
  full-size DIR             saves a random HTDemucs with the official htdemucs
                            configuration as demucs releases it (float16), in DIR
Called by tests/convert/test_convert.py when the venv exists.
"""

from fractions import Fraction
import inspect
import json
from pathlib import Path
import struct
import sys
import warnings

import numpy as np


def json_value(value):
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def cmd_signature():
    from demucs.htdemucs import HTDemucs

    params = inspect.signature(HTDemucs).parameters.values()
    empty = inspect.Parameter.empty
    return [
        [p.name, None if p.default is empty else json_value(p.default), p.default is empty]
        for p in params
    ]


def cmd_catalog():
    import demucs
    import yaml

    remote = Path(demucs.__file__).parent / "remote"
    files = {}
    root = ""
    for line in (remote / "files.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
            continue
        files[line.split("-", 1)[0]] = {"root": root, "file": line}
    result = {}
    for name in ("htdemucs", "htdemucs_6s", "htdemucs_ft"):
        bag = yaml.safe_load((remote / f"{name}.yaml").read_text())
        entries = [files[sig] for sig in bag["models"]]
        result[name] = {
            "roots": sorted({e["root"] for e in entries}),
            "files": [e["file"] for e in entries],
            "weights": bag.get("weights"),
        }
    return result


def read_safetensors(path):
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    metadata = header.pop("__metadata__")
    base = 8 + length
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        tensors[name] = np.frombuffer(data[base + begin : base + end], dtype="<f4").reshape(
            entry["shape"]
        )
    return metadata, tensors


def cmd_roundtrip(th_path, weights_path):
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import load_model

    reference = load_model(th_path)
    metadata, tensors = read_safetensors(weights_path)
    kwargs = json.loads(metadata["models"])[0]["kwargs"]
    segment_samples = int(metadata["segment_samples"])
    # The metadata keeps segment as a number; the exact value is segment_samples / rate.
    kwargs["segment"] = Fraction(segment_samples, kwargs["samplerate"])
    rebuilt = HTDemucs(**kwargs)
    state = {
        name[2:]: torch.from_numpy(array.copy())
        for name, array in tensors.items()
        if name.startswith("0.")
    }
    rebuilt.load_state_dict(state, strict=True)
    ref_state = reference.state_dict()
    max_state_diff = max(
        float((ref_state[k].float() - state[k]).abs().max()) if state[k].numel() else 0.0
        for k in ref_state
    )
    segment_equal = reference.segment == rebuilt.segment
    # Both models pad their input to the training segment in eval mode; a tiny model
    # with a small nfft then attends over tens of thousands of tokens, so compare
    # outputs on a 0.1 s segment instead (set alike on both).
    for model in (reference, rebuilt):
        model.segment = Fraction(1, 10)
        model.eval()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    mix = torch.randn(1, kwargs["audio_channels"], kwargs["samplerate"] // 10)
    with torch.no_grad():
        out_ref = reference.float()(mix)
        out_new = rebuilt(mix)
    return {
        "keys_equal": sorted(ref_state) == sorted(state),
        "max_state_diff": max_state_diff,
        "max_output_diff": float((out_ref - out_new).abs().max()),
        "output_shape": list(out_new.shape),
        "segment_equal": segment_equal,
    }


def cmd_full_size(directory):
    import torch
    from omegaconf import OmegaConf

    torch.set_num_threads(1)
    from demucs.htdemucs import HTDemucs
    from demucs.states import save_with_checksum, serialize_model

    torch.manual_seed(0)
    kwargs = dict(
        sources=["drums", "bass", "other", "vocals"],
        audio_channels=2,
        samplerate=44100,
        segment=Fraction(39, 5),
        dconv_mode=3,
        bottom_channels=512,
        t_layers=5,
        multi_freqs=[],
    )
    model = HTDemucs(**kwargs)
    package = serialize_model(model, OmegaConf.create({"model": "htdemucs"}), half=True)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_with_checksum(package, directory / "fullsize.th")
    (path,) = directory.glob("fullsize-*.th")
    return {
        "file": str(path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": len(model.state_dict()),
        "segment_samples": int(model.segment * model.samplerate),
    }


def main(argv):
    warnings.simplefilter("ignore")
    commands = {
        "signature": cmd_signature,
        "catalog": cmd_catalog,
        "roundtrip": cmd_roundtrip,
        "full-size": cmd_full_size,
    }
    if not argv or argv[0] not in commands:
        sys.exit(__doc__)
    print(json.dumps(commands[argv[0]](*argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
