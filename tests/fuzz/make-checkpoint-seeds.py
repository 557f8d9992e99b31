#!/usr/bin/python3
"""Writes the seed corpora of the checkpoint converter's fuzz targets:
tests/fuzz/checkpoint/ (whole files, zip and legacy format) and tests/fuzz/pickle/
(bare data.pkl streams). Deterministic; run again after changing what a checkpoint
may hold.

    tests/fuzz/make-checkpoint-seeds.py

The checkpoints are written the way torch.save lays them out (zip: <root>/data.pkl,
<root>/data/<key>, byteorder, version; legacy: magic, protocol, system info, the
pickle, the storage keys, then each storage's element count and bytes), with
Python's own pickler and stand-in `torch` and `demucs` modules, so the pickles carry
the same globals and persistent ids as real ones. Each is a tiny HTDemucs package that
models/convert converts; tiny_quantized.th (made by demucs itself) is copied from the
converter's fixtures.
"""

import collections
from fractions import Fraction
import io
import os
import pickle
import shutil
import struct
import sys
import types
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "convert")

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


def stand_in(module, name, kind):
    """Registers `module.name` (a class or a function) so the pickler can name it."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    if kind == "class":
        value = type(name, (), {"__module__": module})
    else:

        def value(*args):
            return args

        value.__module__ = module
        value.__name__ = value.__qualname__ = name
    setattr(sys.modules[module], name, value)
    return value


REBUILD_V2 = stand_in("torch._utils", "_rebuild_tensor_v2", "function")
REBUILD_PARAMETER = stand_in("torch._utils", "_rebuild_parameter", "function")
HTDEMUCS = stand_in("demucs.htdemucs", "HTDemucs", "class")
STORAGE_CLASSES = {
    name: stand_in("torch", name, "class")
    for name in ("HalfStorage", "FloatStorage", "DoubleStorage", "BFloat16Storage")
}


class Storage:
    def __init__(self, key, storage, data):
        self.key = key
        self.storage = storage  # torch storage class name
        self.data = data  # raw bytes, in the file's byte order
        self.itemsize = {"HalfStorage": 2, "FloatStorage": 4, "DoubleStorage": 8}.get(
            storage, 2
        )


class Tensor:
    """Pickles as torch pickles a tensor: _rebuild_tensor_v2(storage, offset, size,
    stride, requires_grad, backward_hooks)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (
            REBUILD_V2,
            (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()),
        )


class Parameter:
    """Pickles as an nn.Parameter: _rebuild_parameter(tensor, requires_grad, hooks)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        return REBUILD_PARAMETER, (self.tensor, True, collections.OrderedDict())


class Pickler(pickle.Pickler):
    def __init__(self, file, protocol, legacy):
        super().__init__(file, protocol=protocol)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            numel = len(obj.data) // obj.itemsize
            pid = ("storage", STORAGE_CLASSES[obj.storage], obj.key, "cpu", numel)
            return pid + (None,) if self.legacy else pid
        return None


def tensor_bytes(values, dtype, big_endian=False):
    array = np.asarray(values, dtype=np.dtype(dtype).newbyteorder(">" if big_endian else "<"))
    return array.tobytes()


def package(state, segment=Fraction(39, 5), metrics=True):
    kwargs = {
        "channels": 8,
        "depth": 2,
        "nfft": 256,
        "t_layers": 1,
        "t_heads": 2,
        "dconv_mode": 3,
        "bottom_channels": 8,
        "samplerate": 44100,
        "segment": segment,
    }
    result = {
        "klass": HTDEMUCS,
        "args": (["drums", "bass", "other", "vocals"],),
        "kwargs": kwargs,
        "state": state,
        "training_args": {"model": "htdemucs", "optim": {"lr": 3e-4}},
    }
    if metrics:
        result["metrics"] = {"loss": 0.125, "sdr": np.float64(7.5), "epochs": np.int64(3)}
    return result


def state_dict(tensors):
    state = collections.OrderedDict(tensors)
    state._metadata = collections.OrderedDict({"": {"version": 1}})
    return state


def dumps(obj, protocol=2, legacy=False):
    buffer = io.BytesIO()
    Pickler(buffer, protocol, legacy).dump(obj)
    return buffer.getvalue()


def storages_of(obj):
    found, stack = {}, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Storage):
            found[item.key] = item
        elif isinstance(item, Tensor):
            stack.append(item.storage)
        elif isinstance(item, Parameter):
            stack.append(item.tensor)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return [found[key] for key in sorted(found)]


def zip_checkpoint(obj, root="archive", protocol=2, big_endian=False, compress=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compress) as archive:
        archive.writestr(f"{root}/data.pkl", dumps(obj, protocol))
        archive.writestr(f"{root}/byteorder", "big" if big_endian else "little")
        for storage in storages_of(obj):
            archive.writestr(f"{root}/data/{storage.key}", storage.data)
        archive.writestr(f"{root}/version", "3\n")
    return buffer.getvalue()


def legacy_checkpoint(obj):
    out = io.BytesIO()
    for header in (
        LEGACY_MAGIC,
        LEGACY_PROTOCOL,
        {"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ):
        pickle.dump(header, out, protocol=2)
    out.write(dumps(obj, 2, legacy=True))
    storages = storages_of(obj)
    pickle.dump([s.key for s in storages], out, protocol=2)
    for storage in storages:
        out.write(struct.pack("<q", len(storage.data) // storage.itemsize))
        out.write(storage.data)
    return out.getvalue()


def small_state(big_endian=False):
    weight = Storage("0", "HalfStorage", tensor_bytes(np.arange(12) / 8, "f2", big_endian))
    bias = Storage("1", "FloatStorage", tensor_bytes([0.5, -1.0, 2.0], "f4", big_endian))
    return state_dict(
        [
            ("encoder.0.conv.weight", Tensor(weight, 0, (3, 4), (4, 1))),
            ("encoder.0.conv.bias", Parameter(Tensor(bias, 0, (3,), (1,)))),
            # a view of the same storage: transposed, with an offset
            ("decoder.0.conv.weight", Tensor(weight, 2, (2, 3), (1, 4))),
        ]
    )


def mixed_state():
    wide = Storage("0", "DoubleStorage", tensor_bytes([1.5, 2.5, -3.25, 0.0], "f8"))
    bf16 = Storage("1", "BFloat16Storage", bytes([0x80, 0x3F, 0x00, 0x40, 0x80, 0xBF]))
    scalar = Storage("2", "FloatStorage", tensor_bytes([4.0], "f4"))
    return state_dict(
        [
            ("a.weight", Tensor(wide, 0, (2, 2), (2, 1))),
            ("b.weight", Tensor(bf16, 0, (3,), (1,))),
            ("c.scale", Tensor(scalar, 0, (), ())),
            ("d.empty", Tensor(scalar, 0, (0, 5), (5, 1))),
        ]
    )


def checkpoint_seeds():
    return {
        "zip_half.th": zip_checkpoint(package(small_state())),
        "zip_mixed_dtypes.th": zip_checkpoint(package(mixed_state(), segment=Fraction("3.5"))),
        "zip_big_endian.th": zip_checkpoint(package(small_state(True)), big_endian=True),
        "zip_protocol4.th": zip_checkpoint(package(small_state(), metrics=False), protocol=4),
        "zip_deflated.th": zip_checkpoint(
            package(small_state()), root="named", compress=zipfile.ZIP_DEFLATED
        ),
        "legacy.th": legacy_checkpoint(package(small_state())),
    }


def pickle_seeds(checkpoints):
    seeds, known = {}, set()
    for name, data in checkpoints.items():
        if name.startswith("zip_"):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                pkl = [n for n in archive.namelist() if n.endswith("/data.pkl")][0]
                stream = archive.read(pkl)
            if stream not in known:  # several checkpoints share one pickle
                known.add(stream)
                seeds[name.replace(".th", ".pkl")] = stream
    with zipfile.ZipFile(os.path.join(FIXTURES, "tiny_quantized.th")) as archive:
        seeds["quantized.pkl"] = archive.read("tiny_quantized/data.pkl")
    seeds["protocol0.pkl"] = pickle.dumps(
        {"klass": HTDEMUCS, "kwargs": {"segment": Fraction(1, 3)}, "state": {}}, protocol=0
    )
    seeds["values.pkl"] = pickle.dumps(
        [set([1, 2]), frozenset(["a"]), b"\x00\xff", (1.5, None, True), {"k": [[], {}]}],
        protocol=5,
    )
    return seeds


def write(name, files):
    directory = os.path.join(HERE, name)
    if os.path.isdir(directory):
        shutil.rmtree(directory)
    os.makedirs(directory)
    for file_name, data in files.items():
        with open(os.path.join(directory, file_name), "wb") as file:
            file.write(data)


def main():
    checkpoints = checkpoint_seeds()
    files = dict(checkpoints)
    with open(os.path.join(FIXTURES, "tiny_quantized.th"), "rb") as file:
        files["tiny_quantized.th"] = file.read()
    write("checkpoint", files)
    write("pickle", pickle_seeds(checkpoints))


if __name__ == "__main__":
    main()
