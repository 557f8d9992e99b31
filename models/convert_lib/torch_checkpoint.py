"""Reads torch-saved checkpoints without torch and without running their code.

`torch.save` writes a pickle whose tensors point at separate storages:
  zip format (torch >= 1.6): `<root>/data.pkl` plus one member `<root>/data/<key>` per
    storage, optionally `<root>/byteorder` ("little" or "big"); `<root>` is "archive"
    when saved to a buffer (demucs does so) or the file's stem otherwise.
  legacy format: magic number, protocol version and system-info pickles, the main
    pickle, a pickled list of storage keys, then for each key an int64 element count
    and the raw elements, in that order.
In both, a storage is a persistent id `('storage', <torch.XStorage>, key, location,
numel[, view])` and a tensor is `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)`.

Unpickling is restricted: `find_class` answers only with the few harmless callables
a checkpoint needs (tensor rebuild, OrderedDict, Fraction, a handful of value types),
each replaced by a local implementation, and with name-only references for demucs
classes (`klass`), which can never be called. Any other global is refused before
anything is created. Tensors come back as lazy TensorRef objects; their data is read
(and converted to float32) only when `TensorRef.to_float32()` is called.
"""

import codecs
import collections
from fractions import Fraction
import io
import mmap
import os
import pickle
import pickletools
import struct
import zipfile
import zlib

import numpy as np


class CheckpointError(Exception):
    """The file is not a checkpoint this reader accepts; the message says why."""


class UnsupportedCheckpoint(CheckpointError):
    """A well-formed checkpoint of a kind the engine does not support."""


class ForbiddenGlobal(CheckpointError):
    """The pickle references a global outside the allowlist."""


# torch storage class name -> (numpy dtype, element size); bfloat16 has no numpy type
# and is widened by hand.
STORAGE_TYPES = {
    "HalfStorage": ("float16", 2),
    "FloatStorage": ("float32", 4),
    "DoubleStorage": ("float64", 8),
    "BFloat16Storage": ("bfloat16", 2),
    "ByteStorage": ("uint8", 1),
    "CharStorage": ("int8", 1),
    "ShortStorage": ("int16", 2),
    "IntStorage": ("int32", 4),
    "LongStorage": ("int64", 8),
    "BoolStorage": ("bool", 1),
}
TORCH_DTYPES = {
    "float16": "HalfStorage",
    "half": "HalfStorage",
    "float32": "FloatStorage",
    "float": "FloatStorage",
    "float64": "DoubleStorage",
    "double": "DoubleStorage",
    "bfloat16": "BFloat16Storage",
    "uint8": "ByteStorage",
    "int8": "CharStorage",
    "int16": "ShortStorage",
    "int32": "IntStorage",
    "int64": "LongStorage",
    "bool": "BoolStorage",
}
FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class _Sealed:
    """Objects the unpickler creates on its own terms: a pickle may not restore
    state into them (the BUILD opcode)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise ForbiddenGlobal(f"the checkpoint tries to set the state of {type(self).__name__}")


class StorageType(_Sealed):
    """Stands for a `torch.<Name>Storage` class in the pickle."""

    __slots__ = ("name", "dtype", "itemsize")

    def __init__(self, name):
        self.name = name
        self.dtype, self.itemsize = STORAGE_TYPES[name]

    def __call__(self, *args, **kwargs):
        raise ForbiddenGlobal(f"the checkpoint tries to construct torch.{self.name} directly")

    def __repr__(self):
        return f"torch.{self.name}"


class TorchDType(_Sealed):
    """Stands for a `torch.<dtype>` object (used by _rebuild_tensor_v3)."""

    __slots__ = ("storage_type",)

    def __init__(self, name):
        self.storage_type = StorageType(TORCH_DTYPES[name])

    def __call__(self, *args, **kwargs):
        raise ForbiddenGlobal("the checkpoint tries to call a torch dtype")


class ClassRef(_Sealed):
    """A class named by the pickle and kept as a name only: never imported, never
    called. Used for `klass` (e.g. demucs.htdemucs.HTDemucs)."""

    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module = module
        self.name = name

    @property
    def qualified_name(self):
        return f"{self.module}.{self.name}"

    def __call__(self, *args, **kwargs):
        raise ForbiddenGlobal(
            f"the checkpoint tries to instantiate {self.qualified_name} while unpickling"
        )

    def __eq__(self, other):
        return isinstance(other, ClassRef) and (self.module, self.name) == (
            other.module,
            other.name,
        )

    def __hash__(self):
        return hash((self.module, self.name))

    def __repr__(self):
        return f"<class {self.qualified_name}>"


class StorageRef(_Sealed):
    """Where a storage's elements live: `read(first, count)` returns raw bytes."""

    def __init__(self, key, storage_type, numel, reader, base=0):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.reader = reader  # callable(key, byte_offset, byte_count) -> bytes
        self.base = base  # element offset of a legacy storage view in its root

    def read(self, first, count):
        size = self.storage_type.itemsize
        return self.reader(self.key, (self.base + first) * size, count * size)


class TensorRef(_Sealed):
    """A tensor described by the pickle; the data is read on demand."""

    def __init__(self, storage, offset, shape, stride):
        if not isinstance(storage, StorageRef):
            raise CheckpointError("a tensor refers to something that is not a storage")
        for name, seq in (("size", shape), ("stride", stride)):
            if not isinstance(seq, tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seq
            ):
                raise CheckpointError(f"a tensor has an invalid {name}: {seq!r}")
        if len(shape) != len(stride):
            raise CheckpointError(f"a tensor has size {shape} but stride {stride}")
        if not isinstance(offset, int) or offset < 0:
            raise CheckpointError(f"a tensor has an invalid storage offset {offset!r}")
        self.storage = storage
        self.offset = offset
        self.shape = tuple(shape)
        self.stride = tuple(stride)

    @property
    def dtype(self):
        return self.storage.storage_type.dtype

    @property
    def numel(self):
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    def _span(self):
        """Number of storage elements from `offset` that the tensor touches."""
        if self.numel == 0:
            return 0
        return 1 + sum((dim - 1) * step for dim, step in zip(self.shape, self.stride))

    def to_float32(self, name="tensor"):
        """Reads the elements and returns a C-contiguous little-endian float32 array.
        float16/bfloat16 values are widened exactly; float64 is rounded."""
        if self.dtype not in FLOAT_DTYPES:
            raise UnsupportedCheckpoint(f"{name}: {self.dtype} tensors are not supported")
        span = self._span()
        if self.offset + span > self.storage.numel:
            raise CheckpointError(
                f"{name}: elements {self.offset}..{self.offset + span} are outside its "
                f"storage of {self.storage.numel}"
            )
        if span == 0:
            return np.zeros(self.shape, dtype="<f4")
        raw = self.storage.read(self.offset, span)
        order = ">" if self.storage.reader.big_endian else "<"
        if self.dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype=order + "u2").astype("<u4") << 16
            flat = bits.view("<f4")
        else:
            flat = np.frombuffer(raw, dtype=order + np.dtype(self.dtype).str[1:])
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat,
            shape=self.shape,
            strides=tuple(step * item for step in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view, dtype="<f4")

    def __repr__(self):
        return f"TensorRef({self.dtype}, shape={self.shape})"


# --- callables the allowlist hands to the unpickler -------------------------------


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    """torch._utils._rebuild_tensor / _rebuild_tensor_v2 (the remaining arguments:
    requires_grad, backward_hooks, metadata, carry nothing we need)."""
    return TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *rest):
    if not isinstance(dtype, TorchDType) or not isinstance(storage, StorageRef):
        raise CheckpointError("_rebuild_tensor_v3 with an unexpected dtype or storage")
    typed = StorageRef(storage.key, dtype.storage_type, storage.numel, storage.reader, storage.base)
    return TensorRef(typed, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks, *rest):
    return data


def _ordered_dict(*args):
    if args:
        raise ForbiddenGlobal("OrderedDict called with arguments")
    return collections.OrderedDict()


def _fraction(*args):
    if not 1 <= len(args) <= 2 or not all(
        isinstance(a, (int, str)) and not isinstance(a, bool) for a in args
    ):
        raise ForbiddenGlobal(f"fractions.Fraction called with {args!r}")
    if isinstance(args[0], str) and len(args[0]) > 64:
        raise ForbiddenGlobal("fractions.Fraction called with an oversized string")
    return Fraction(*args)


def _codecs_encode(text, encoding="utf-8", *rest):
    # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1').
    if encoding not in ("latin1", "latin-1") or rest or not isinstance(text, str):
        raise ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _value_set(*args):
    return set(*args)


def _value_frozenset(*args):
    return frozenset(*args)


def _torch_size(*args):
    return tuple(*args)


def _torch_device(*args):
    return ":".join(str(a) for a in args)


def _numpy_scalar(dtype, data=None):
    # numpy.core.multiarray.scalar(dtype, bytes): a plain number in metrics/args.
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise ForbiddenGlobal("numpy scalar with an object dtype or no data")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise ForbiddenGlobal(f"numpy dtype {name!r} holds Python objects")
    return dtype


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("fractions", "Fraction"): _fraction,
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "set"): _value_set,
    ("builtins", "frozenset"): _value_frozenset,
    ("__builtin__", "set"): _value_set,
    ("__builtin__", "frozenset"): _value_frozenset,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


def check_opcodes(file, limit):
    """Walks the pickle's opcodes without executing them, from the file's position
    to STOP, and refuses memo indices larger than the pickle could ever fill: the C
    unpickler grows its memo table to the largest index it sees, so one corrupted
    LONG_BINPUT would otherwise allocate gigabytes. The caller seeks back."""
    try:
        for opcode, arg, _pos in pickletools.genops(file):
            if opcode.name in ("LONG_BINPUT", "LONG_BINGET", "PUT", "GET") and (
                not isinstance(arg, int) or not 0 <= arg <= limit
            ):
                raise CheckpointError(f"malformed checkpoint pickle: memo index {arg!r:.40}")
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"malformed checkpoint pickle: {type(exc).__name__}: {exc}")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storage_lookup):
        super().__init__(file, encoding="utf-8")
        self._storage_lookup = storage_lookup

    def find_class(self, module, name):
        found = ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and name in STORAGE_TYPES:
            return StorageType(name)
        if module == "torch" and name in TORCH_DTYPES:
            return TorchDType(name)
        top = module.split(".", 1)[0]
        if top == "demucs":
            return ClassRef(module, name)
        if top == "diffq":
            raise UnsupportedCheckpoint(
                f"quantized (diffq) checkpoints are not supported (pickle references "
                f"{module}.{name}); use a non-quantized model"
            )
        raise ForbiddenGlobal(
            f"refusing to load: the pickle references {module}.{name}, which is not on "
            "the allowlist of a demucs checkpoint"
        )

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # Legacy format: nn.Module classes are saved as ('module', class, source
            # file, source text) for a source-change check; only the name is kept.
            if not isinstance(pid[1], ClassRef):
                raise CheckpointError(f"unexpected module reference {pid[1]!r:.80}")
            return pid[1]
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError(f"unexpected persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, StorageType):
            raise CheckpointError(f"storage of unsupported type {storage_type!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"malformed storage reference {pid!r:.80}")
        return self._storage_lookup(storage_type, key, numel, view)


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles, which hold only numbers and dicts."""

    def find_class(self, module, name):
        raise ForbiddenGlobal(f"refusing to load: legacy header references {module}.{name}")


# What zipfile raises on damaged archives: besides BadZipFile, a mangled header can
# surface as a decode error, an "unsupported feature" (flag bits), or a zlib error.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    OSError,
    UnicodeDecodeError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
)


class _ZipStorageReader:
    def __init__(self, archive, root, big_endian):
        self.archive = archive
        self.root = root
        self.big_endian = big_endian
        self._cache_key = None
        self._cache = None

    def member(self, key):
        return f"{self.root}/data/{key}"

    def __call__(self, key, offset, count):
        # Storages are read whole (zip members are not seekable reliably when
        # compressed); the last one is kept because consecutive tensors often share it.
        if self._cache_key != key:
            self._cache = None
            try:
                self._cache = self.archive.read(self.member(key))
            except KeyError:
                raise CheckpointError(f"storage {self.member(key)} is missing from the archive")
            except ZIP_ERRORS as exc:
                raise CheckpointError(f"storage {self.member(key)} is unreadable: {exc}")
            self._cache_key = key
        data = self._cache
        if offset + count > len(data):
            raise CheckpointError(
                f"storage {self.member(key)} holds {len(data)} bytes, " f"{offset + count} needed"
            )
        return data[offset : offset + count]


class _LegacyStorageReader:
    def __init__(self, mapped, big_endian):
        self.mapped = mapped
        self.big_endian = big_endian
        self.locations = {}  # key -> (file offset of the first element, numel)

    def __call__(self, key, offset, count):
        if key not in self.locations:
            raise CheckpointError(f"storage {key} is not in the file's storage list")
        start, _numel = self.locations[key]
        data = self.mapped[start + offset : start + offset + count]
        if len(data) != count:
            raise CheckpointError(f"storage {key} is truncated")
        return data


class Checkpoint:
    """A loaded checkpoint: `obj` is the unpickled object (tensors as TensorRef),
    `format` is "zip" or "legacy"."""

    def __init__(self, path, obj, fmt, closer=None):
        self.path = path
        self.obj = obj
        self.format = fmt
        self._closer = closer

    def close(self):
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _zip_root(archive):
    roots = sorted({n.rsplit("/", 1)[0] for n in archive.namelist() if n.endswith("/data.pkl")})
    roots = [r for r in roots if "/" not in r]
    if len(roots) != 1:
        raise CheckpointError(
            "zip archive is not a torch checkpoint (expected exactly one <root>/data.pkl, "
            f"found {len(roots)})"
        )
    return roots[0]


def _load_zip(path):
    try:
        archive = zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise CheckpointError(f"corrupt zip archive: {exc}")
    try:
        root = _zip_root(archive)
        names = set(archive.namelist())
        big_endian = False
        if f"{root}/byteorder" in names:
            order = archive.read(f"{root}/byteorder").decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(f"unknown byte order {order!r}")
            big_endian = order == "big"
        reader = _ZipStorageReader(archive, root, big_endian)
        storages = {}

        def lookup(storage_type, key, numel, view):
            if view is not None:
                raise CheckpointError("storage views are not expected in the zip format")
            member = reader.member(key)
            if member not in names:
                raise CheckpointError(f"storage {member} is missing from the archive")
            size = archive.getinfo(member).file_size
            if size < numel * storage_type.itemsize:
                raise CheckpointError(
                    f"storage {member} has {size} bytes, its {numel} {storage_type.dtype} "
                    f"elements need {numel * storage_type.itemsize}"
                )
            ref = storages.get(key)
            if ref is None:
                ref = storages[key] = StorageRef(key, storage_type, numel, reader)
            return ref

        data = archive.read(f"{root}/data.pkl")
        check_opcodes(io.BytesIO(data), len(data))
        obj = _RestrictedUnpickler(io.BytesIO(data), lookup).load()
    except CheckpointError:
        archive.close()
        raise
    except ZIP_ERRORS as exc:
        archive.close()
        raise CheckpointError(f"corrupt zip archive: {exc}")
    except (
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
        MemoryError,  # a corrupted length or memo index in the pickle
    ) as exc:
        archive.close()
        raise CheckpointError(f"malformed checkpoint pickle: {type(exc).__name__}: {exc}")
    return Checkpoint(path, obj, "zip", archive.close)


def _checked_load(file, unpickler_class, limit, *args):
    start = file.tell()
    check_opcodes(file, limit)
    file.seek(start)
    return unpickler_class(file, *args).load()


def _load_legacy(path):
    # Read through a read-only mapping: unlike a file object, it never allocates more
    # than the file holds when a corrupted length asks for gigabytes.
    with open(path, "rb") as handle:
        file = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse_legacy(path, file)
    except BaseException:
        file.close()
        raise


def _parse_legacy(path, file):
    file_size = len(file)
    try:
        magic = _checked_load(file, _PlainUnpickler, file_size)
    except Exception:
        magic = None
    if magic != LEGACY_MAGIC:
        raise CheckpointError(
            "not a torch checkpoint (neither a zip archive nor a legacy torch file; "
            "truncated or corrupt?)"
        )
    try:
        protocol = _checked_load(file, _PlainUnpickler, file_size)
        info = _checked_load(file, _PlainUnpickler, file_size)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"corrupt legacy torch header: {exc}")
    if protocol != LEGACY_PROTOCOL:
        raise UnsupportedCheckpoint(f"legacy torch protocol {protocol!r} is not supported")
    big_endian = isinstance(info, dict) and info.get("little_endian") is False
    reader = _LegacyStorageReader(file, big_endian)
    roots = {}  # key -> (StorageType, numel)

    def lookup(storage_type, key, numel, view):
        roots.setdefault(key, (storage_type, numel))
        if view is None:
            return StorageRef(key, storage_type, numel, reader)
        if not (isinstance(view, tuple) and len(view) == 3):
            raise CheckpointError(f"malformed storage view {view!r:.80}")
        _view_key, view_offset, view_size = view
        return StorageRef(key, storage_type, view_size, reader, base=view_offset)

    try:
        obj = _checked_load(file, _RestrictedUnpickler, file_size, lookup)
        keys = _checked_load(file, _PlainUnpickler, file_size)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"malformed checkpoint pickle: {type(exc).__name__}: {exc}")
    if not isinstance(keys, list):
        raise CheckpointError("legacy storage key list is missing")
    position = file.tell()
    order = ">q" if big_endian else "<q"
    for key in keys:
        header = file.read(8)
        if len(header) != 8:
            raise CheckpointError(f"legacy storage {key} is truncated")
        (numel,) = struct.unpack(order, header)
        position += 8
        storage_type, expected = roots.get(key, (None, numel))
        if storage_type is None:
            raise CheckpointError(f"legacy storage {key} is not referenced by the pickle")
        if numel != expected:
            raise CheckpointError(f"legacy storage {key} has {numel} elements, {expected} expected")
        length = numel * storage_type.itemsize
        if position + length > file_size:
            raise CheckpointError(f"legacy storage {key} is truncated")
        reader.locations[key] = (position, numel)
        position += length
        file.seek(position)
    missing = set(roots) - set(reader.locations)
    if missing:
        raise CheckpointError(f"legacy storages {sorted(missing)[:3]} have no data")
    return Checkpoint(path, obj, "legacy", file.close)


def load(path):
    """Opens a torch checkpoint; raises CheckpointError (with the reason) otherwise."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read: {exc.strerror or exc}")
    if head.startswith(b"PK"):
        return _load_zip(path)
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    if head[:1] == b"\x80":
        return _load_legacy(path)
    raise CheckpointError("not a torch checkpoint (unknown file signature)")
