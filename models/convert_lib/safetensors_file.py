"""Writes and reads `.safetensors` files (float32 only, as models/FORMAT.md requires).

Layout: 8-byte little-endian header length N, N bytes of JSON header (padded with
spaces so the tensor data starts on a 64-byte boundary, which safetensors allows and
which keeps every tensor of an mmapped file at least 4-byte aligned), then the tensors
back to back in header order. The writer streams tensors one at a time (peak memory is
one tensor) into a temporary file beside the target, fsyncs it and renames it over the
target, so a reader never sees a partial file.
"""

import json
import os
import struct
import tempfile

import numpy as np

DATA_ALIGNMENT = 64
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(Exception):
    """The file is not a valid safetensors file."""


def build_header(metadata, tensors):
    """`tensors` is a sequence of (name, shape). Returns the padded header bytes
    (length prefix included) and the total data size."""
    header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for name, shape in tensors:
        if name in header:
            raise ValueError(f"duplicate tensor name {name!r}")
        count = 1
        for dim in shape:
            count *= int(dim)
        end = offset + 4 * count
        header[name] = {
            "dtype": "F32",
            "shape": [int(d) for d in shape],
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-(8 + len(text))) % DATA_ALIGNMENT
    text += b" " * pad
    return struct.pack("<Q", len(text)) + text, offset


def write_atomic(path, metadata, tensors):
    """Writes `path`. `tensors` is a list of (name, shape, produce) where `produce()`
    returns the float32 array of that shape; called once each, in order."""
    path = os.fspath(path)
    header, data_size = build_header(metadata, [(name, shape) for name, shape, _ in tensors])
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(header)
            for name, shape, produce in tensors:
                array = produce()
                if array.dtype != np.dtype("<f4") or tuple(array.shape) != tuple(shape):
                    raise ValueError(
                        f"{name}: produced {array.dtype} {array.shape}, expected float32 {tuple(shape)}"
                    )
                out.write(np.ascontiguousarray(array).tobytes())
            written = out.tell()
            if written != len(header) + data_size:
                raise ValueError(f"wrote {written} bytes, expected {len(header) + data_size}")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return len(header) + data_size


def read_header(path):
    """Returns (metadata, tensors, data_start) where tensors maps name -> entry
    (dtype, shape, data_offsets). Validates that the offsets tile the data exactly."""
    path = os.fspath(path)
    with open(path, "rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise SafetensorsError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path}: header length {length} is implausible")
        raw = file.read(length)
        file_size = os.fstat(file.fileno()).st_size
    if len(raw) != length:
        raise SafetensorsError(f"{path}: truncated header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsError(f"{path}: header is not JSON: {exc}")
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    spans = sorted((tuple(entry["data_offsets"]), name) for name, entry in header.items())
    position = 0
    for (begin, end), name in spans:
        if begin != position or end < begin:
            raise SafetensorsError(
                f"{path}: tensor {name} data [{begin}, {end}) leaves a gap or overlaps"
            )
        position = end
    data_start = 8 + length
    if data_start + position != file_size:
        raise SafetensorsError(
            f"{path}: data holds {file_size - data_start} bytes, header describes {position}"
        )
    return metadata, header, data_start


def read_tensors(path):
    """Loads every tensor (float32 only) into a dict name -> numpy array, plus the
    metadata. For tests and tools; the engine mmaps the file instead."""
    metadata, entries, data_start = read_header(path)
    tensors = {}
    with open(path, "rb") as file:
        for name, entry in entries.items():
            if entry.get("dtype") != "F32":
                raise SafetensorsError(f"{path}: tensor {name} is {entry.get('dtype')}, not F32")
            begin, end = entry["data_offsets"]
            file.seek(data_start + begin)
            data = file.read(end - begin)
            array = np.frombuffer(data, dtype="<f4")
            tensors[name] = array.reshape(entry["shape"])
    return metadata, tensors
