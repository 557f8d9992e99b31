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

Before the unpickler sees a pickle, `check_pickle` walks its opcodes without running
them and refuses what would hurt the process rather than fail cleanly: a pickle over
MAX_PICKLE_BYTES or MAX_PICKLE_OBJECTS, memo indices the pickle never filled (the C
unpickler sizes its memo table by the largest index), objects nested deeper than
MAX_NESTING (hashing a deeply nested tuple overflows the C stack), integers over
MAX_INT_BITS, strings that are not valid UTF-8 (lone surrogates). After loading, the
object graph is walked once more for depth and self-references. Zip members are read only when their declared size is plausible:
data.pkl at most MAX_PICKLE_BYTES, compressed members expanding at most
MAX_EXPANSION times (torch writes them uncompressed), so a zip bomb is refused before
it is inflated. Objects the allowlisted callables return cannot have state set into
them by the BUILD opcode.
"""

import codecs
import collections
from fractions import Fraction
import io
import mmap
import os
import pickle
import pickletools
import re
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

# Bounds on what a checkpoint may ask of the reader. A demucs release's pickle is
# about 70 KB, some 10,000 objects, nested 8 deep; its storages are stored members.
MAX_PICKLE_BYTES = 16 << 20
MAX_PICKLE_OBJECTS = 1_000_000
MAX_NESTING = 100
MAX_INT_BITS = 1024
MAX_EXPANSION = 64  # a compressed zip member may inflate at most this many times ...
MIN_EXPANSION_BYTES = 16 << 20  # ... or to this size, whichever is larger
MAX_TENSOR_DIMS = 32  # numpy's limit
MAX_TENSOR_EXTENT = 1 << 48  # bound on a size, stride or offset (in elements)


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
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_TENSOR_EXTENT
                for v in seq
            ):
                raise CheckpointError(f"a tensor has an invalid {name}: {seq!r:.80}")
        if len(shape) > MAX_TENSOR_DIMS:
            raise CheckpointError(
                f"a tensor has {len(shape)} dimensions, more than {MAX_TENSOR_DIMS}"
            )
        if len(shape) != len(stride):
            raise CheckpointError(f"a tensor has size {shape} but stride {stride}")
        if (
            not isinstance(offset, int)
            or isinstance(offset, bool)
            or not 0 <= offset < MAX_TENSOR_EXTENT
        ):
            raise CheckpointError(f"a tensor has an invalid storage offset {offset!r:.40}")
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
        if self.numel > self.storage.numel:
            # Only zero or overlapping strides give more elements than the storage
            # holds; no saved parameter has them, and they would let a few bytes
            # expand into any amount of float32 output.
            raise CheckpointError(
                f"{name}: {self.numel} elements (size {self.shape}, stride {self.stride}) "
                f"from a storage of {self.storage.numel}"
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
            # a dimension of size 1 is never stepped along, whatever its stride says
            strides=tuple(
                step * item if dim > 1 else 0 for dim, step in zip(self.shape, self.stride)
            ),
            writeable=False,
        )
        # (ascontiguousarray alone would turn a 0-d tensor into shape (1,))
        return np.ascontiguousarray(view, dtype="<f4").reshape(self.shape)

    def __repr__(self):
        return f"TensorRef({self.dtype}, shape={self.shape})"


# --- callables the allowlist hands to the unpickler -------------------------------


class _Allowed(_Sealed):
    """An allowlisted global as the pickle sees it: callable, but (unlike the plain
    function behind it) with no attributes a BUILD opcode could overwrite."""

    __slots__ = ("function", "name")

    def __init__(self, name, function):
        self.name = name
        self.function = function

    def __call__(self, *args):
        return self.function(*args)

    def __setstate__(self, state):
        raise ForbiddenGlobal(f"the checkpoint tries to set the state of {self.name}")

    def __repr__(self):
        return f"<allowed {self.name}>"


class _StateDict(collections.OrderedDict):
    """collections.OrderedDict as a pickle makes it. torch restores a state_dict's
    `_metadata` attribute with BUILD; that state is accepted and dropped (nothing
    here needs it), so no attribute can be set on the dict, nor shadow its methods."""

    def __setstate__(self, state):
        if state is not None and not isinstance(state, dict):
            raise CheckpointError(f"OrderedDict state is a {type(state).__name__}")

    def __reduce__(self):  # pragma: no cover - never pickled again
        return collections.OrderedDict, (list(self.items()),)


class _Fraction(Fraction):
    """fractions.Fraction as a pickle makes it: no state can be set into it."""

    __slots__ = ()

    def __setstate__(self, state):
        raise ForbiddenGlobal("the checkpoint tries to set the state of a Fraction")


class _NumpyDType(_Sealed):
    """numpy.dtype as a pickle makes it: a plain numeric dtype whose BUILD state may
    only give its byte order (numpy's own __setstate__ never sees pickle data)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype):
        self.dtype = dtype

    def __setstate__(self, state):
        if (
            not isinstance(state, tuple)
            or len(state) not in (8, 9)
            or state[1] not in ("<", ">", "|", "=")
            or any(v is not None for v in state[2:5])
        ):
            raise ForbiddenGlobal(f"numpy dtype with an unexpected state {state!r:.80}")
        if state[1] in "<>" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    """torch._utils._rebuild_tensor / _rebuild_tensor_v2 (the remaining arguments:
    requires_grad, backward_hooks, metadata, carry nothing we need)."""
    return TensorRef(storage, storage_offset, _int_tuple(size), _int_tuple(stride))


def _int_tuple(value):
    if not isinstance(value, (tuple, list)):
        raise CheckpointError(f"a tensor size or stride is a {type(value).__name__}")
    return tuple(value)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, hooks, dtype, *rest):
    if not isinstance(dtype, TorchDType) or not isinstance(storage, StorageRef):
        raise CheckpointError("_rebuild_tensor_v3 with an unexpected dtype or storage")
    typed = StorageRef(storage.key, dtype.storage_type, storage.numel, storage.reader, storage.base)
    return TensorRef(typed, storage_offset, _int_tuple(size), _int_tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks, *rest):
    return data


def _ordered_dict(*args):
    if args:
        raise ForbiddenGlobal("OrderedDict called with arguments")
    return _StateDict()


# What Fraction(str) may parse: no exponent (Fraction("1e999999999") would compute
# 10**999999999).
_FRACTION_TEXT = re.compile(r"\s*[-+]?(\d+(/\d+)?|\d*\.\d+|\d+\.)\s*\Z")


def _fraction(*args):
    if not 1 <= len(args) <= 2 or not all(
        isinstance(a, (int, str)) and not isinstance(a, bool) for a in args
    ):
        raise ForbiddenGlobal(f"fractions.Fraction called with {args!r:.80}")
    if isinstance(args[0], str) and (len(args[0]) > 64 or not _FRACTION_TEXT.match(args[0])):
        raise ForbiddenGlobal(f"fractions.Fraction called with the string {args[0]!r:.80}")
    if len(args) == 2 and not all(isinstance(a, int) for a in args):
        raise ForbiddenGlobal("fractions.Fraction called with a string and a denominator")
    if any(isinstance(a, int) and a.bit_length() > 64 for a in args):
        raise ForbiddenGlobal("fractions.Fraction called with an integer over 64 bits")
    if len(args) == 2 and args[1] == 0:
        raise CheckpointError("fractions.Fraction with a zero denominator")
    return _Fraction(*args)


def _codecs_encode(text, encoding="utf-8", *rest):
    # Protocol-2 pickles store bytes as _codecs.encode(str, 'latin1').
    if encoding not in ("latin1", "latin-1") or rest or not isinstance(text, str):
        raise ForbiddenGlobal(f"_codecs.encode with encoding {encoding!r:.40}")
    try:
        return codecs.encode(text, "latin1")
    except UnicodeEncodeError:
        raise CheckpointError("_codecs.encode of text that is not latin-1")


def _hashable_values(args, what):
    if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, set, frozenset))):
        raise ForbiddenGlobal(f"{what} called with {args!r:.80}")
    return args[0] if args else ()


def _value_set(*args):
    return set(_hashable_values(args, "set"))


def _value_frozenset(*args):
    return frozenset(_hashable_values(args, "frozenset"))


def _torch_size(*args):
    sizes = _hashable_values(args, "torch.Size")
    if not all(isinstance(v, int) for v in sizes):
        raise CheckpointError("torch.Size of something other than integers")
    return tuple(sizes)


def _torch_device(*args):
    if not 1 <= len(args) <= 2 or not all(isinstance(a, (str, int)) for a in args):
        raise ForbiddenGlobal(f"torch.device called with {args!r:.80}")
    return ":".join(str(a) for a in args)


def _numpy_scalar(dtype, data=None):
    # numpy.core.multiarray.scalar(dtype, bytes): a plain number in metrics/args,
    # returned as the Python number it holds.
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes):
        raise ForbiddenGlobal("numpy scalar with an unexpected dtype or no data")
    if len(data) != dtype.dtype.itemsize:
        raise CheckpointError(f"numpy scalar of {len(data)} bytes for a {dtype.dtype} value")
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0].item()


# The numpy dtypes a metrics scalar may have: booleans, integers, floats, complex.
_NUMPY_DTYPE_NAME = re.compile(r"[<>|=]?(\?|b1|[iu][1248]|f[248]|c(8|16))\Z")


def _numpy_dtype(name, align=False, copy=False):
    if not isinstance(name, str) or not _NUMPY_DTYPE_NAME.match(name):
        raise ForbiddenGlobal(f"numpy dtype {name!r:.40} is not a plain numeric type")
    return _NumpyDType(np.dtype(name))


ALLOWED_GLOBALS = {
    (module, name): _Allowed(f"{module}.{name}", function)
    for (module, name), function in {
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
    }.items()
}


# --- the static walk over a pickle's opcodes --------------------------------------

_MEMO_PUTS = frozenset(("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"))
_MEMO_GETS = frozenset(("GET", "BINGET", "LONG_BINGET"))
# Opcodes that add items to the container below them instead of making a new object.
_CONTAINER_UPDATES = frozenset(("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"))
_INT_OPCODES = frozenset(("INT", "LONG", "LONG1", "LONG4"))


def _is_text(value):
    # Pickle strings are decoded with "surrogatepass": lone surrogates survive, and no
    # file or terminal can take them.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _exception_text(exc):
    try:
        text = str(exc)
    except Exception:
        text = "(no message)"
    return f"{type(exc).__name__}: {text[:200]}"


def check_pickle(file):
    """Walks one pickle's opcodes from the file's position to STOP without executing
    them, modelling the unpickler's stack as the nesting depth of each object, and
    refuses (CheckpointError) a pickle longer than MAX_PICKLE_BYTES, making more than
    MAX_PICKLE_OBJECTS objects, nesting deeper than MAX_NESTING, holding an integer
    over MAX_INT_BITS or a string with a lone surrogate, or using a memo index it has not filled (pickle writers fill
    the memo 0, 1, 2, ...; the C unpickler would allocate a table as large as the
    largest index). Returns the pickle's length in bytes; the caller seeks back."""
    start = file.tell()
    stack = []  # nesting depth of each object on the unpickler's stack (0: a scalar)
    marks = []  # stack height at each MARK
    memo = []  # depth of each memo entry
    objects = 0
    frame_end = None  # where the current FRAME ends (None: outside a frame)
    try:
        for opcode, arg, pos in pickletools.genops(file):
            if pos - start > MAX_PICKLE_BYTES:
                raise CheckpointError(f"the pickle is longer than {MAX_PICKLE_BYTES} bytes")
            name = opcode.name
            # pickletools reads frames as plain opcodes; the C unpickler reads a frame's
            # bytes as one block, and an opcode running over its end is read otherwise
            # there: what this walk checked would not be what is loaded.
            if frame_end is not None and pos >= frame_end:
                if pos > frame_end:
                    raise CheckpointError(
                        f"malformed checkpoint pickle: an opcode runs over the end of its "
                        f"frame (byte {frame_end - start})"
                    )
                frame_end = None
            if name == "FRAME":
                if frame_end is not None:
                    raise CheckpointError("malformed checkpoint pickle: a frame inside a frame")
                frame_end = pos + 9 + arg
                continue
            if name in _MEMO_PUTS:
                index = len(memo) if name == "MEMOIZE" else arg
                if not isinstance(index, int) or not 0 <= index <= len(memo):
                    raise CheckpointError(f"malformed checkpoint pickle: memo index {index!r:.40}")
                depth = stack[-1] if stack else 0
                if index == len(memo):
                    memo.append(depth)
                else:
                    memo[index] = depth
                continue
            if name in _MEMO_GETS:
                if not isinstance(arg, int) or not 0 <= arg < len(memo):
                    raise CheckpointError(f"malformed checkpoint pickle: memo index {arg!r:.40}")
                stack.append(memo[arg])
                continue
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name == "DUP":
                stack.append(stack[-1] if stack else 0)
                continue
            if name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()  # as the C unpickler: POP right after MARK drops the mark
                continue
            if isinstance(arg, str) and not arg.isascii() and not _is_text(arg):
                raise CheckpointError(
                    f"the pickle holds a string that is not valid UTF-8 (a lone surrogate) "
                    f"at byte {pos - start}"
                )
            if name in _INT_OPCODES and isinstance(arg, int) and arg.bit_length() > MAX_INT_BITS:
                raise CheckpointError(
                    f"the pickle holds an integer of {arg.bit_length()} bits "
                    f"(more than {MAX_INT_BITS})"
                )
            before = opcode.stack_before
            items = []
            fixed = len(before)
            if pickletools.markobject in before:
                at = marks.pop() if marks else 0
                items = stack[at:]
                del stack[at:]
                fixed = before.index(pickletools.markobject)
            popped = [stack.pop() if stack else 0 for _ in range(fixed)][::-1]
            if not opcode.stack_after:
                continue
            if name in _CONTAINER_UPDATES:
                container = popped[0] if popped else 0
                depth = max([container] + [d + 1 for d in popped[1:] + items])
            else:
                children = popped + items
                depth = 1 + max(children) if children else 0
                objects += 1
                if objects > MAX_PICKLE_OBJECTS:
                    raise CheckpointError(
                        f"the pickle makes more than {MAX_PICKLE_OBJECTS} objects"
                    )
            if depth > MAX_NESTING:
                raise CheckpointError(
                    f"the pickle nests objects more than {MAX_NESTING} levels deep"
                )
            stack.extend([depth] * len(opcode.stack_after))
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"malformed checkpoint pickle: {_exception_text(exc)}")
    return file.tell() - start


_CONTAINERS = (list, tuple, dict, set, frozenset)


def _contents(container):
    if isinstance(container, dict):
        return [value for item in container.items() for value in item]
    return list(container)


def check_structure(obj):
    """Walks the unpickled object graph (lists, tuples, dicts, sets) once, without
    recursion: refuses nesting deeper than MAX_NESTING and containers that contain
    themselves, which code walking the result (repr, JSON, comparisons) would
    recurse into without end. Shared parts are walked once (their height is kept)."""
    if not isinstance(obj, _CONTAINERS):
        return
    height = {}  # id -> height of a finished container (1: holds no container)
    active = {id(obj)}  # ids of the containers on the current path
    path = [[obj, iter(_contents(obj)), 0]]  # container, its pending items, max height below
    while path:
        entry = path[-1]
        child = next(entry[1], _END)
        if child is _END:
            node_height = entry[2] + 1
            if node_height > MAX_NESTING:
                raise CheckpointError(
                    f"the pickle nests objects more than {MAX_NESTING} levels deep"
                )
            height[id(entry[0])] = node_height
            active.discard(id(entry[0]))
            path.pop()
            if path:
                path[-1][2] = max(path[-1][2], node_height)
            continue
        if not isinstance(child, _CONTAINERS):
            continue
        known = height.get(id(child))
        if known is not None:
            entry[2] = max(entry[2], known)
            continue
        if id(child) in active:
            raise CheckpointError("the pickle builds a structure that contains itself")
        if len(path) >= MAX_NESTING:
            raise CheckpointError(f"the pickle nests objects more than {MAX_NESTING} levels deep")
        active.add(id(child))
        path.append([child, iter(_contents(child)), 0])


_END = object()


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
        if (
            not isinstance(key, str)
            or not isinstance(numel, int)
            or isinstance(numel, bool)
            or not 0 <= numel < MAX_TENSOR_EXTENT
        ):
            raise CheckpointError(f"malformed storage reference {pid!r:.80}")
        return self._storage_lookup(storage_type, key, numel, view)


class _PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles, which hold only numbers and dicts."""

    def find_class(self, module, name):
        raise ForbiddenGlobal(f"refusing to load: legacy header references {module}.{name}")

    def persistent_load(self, pid):
        raise CheckpointError("a legacy header pickle holds a persistent id")


def _unpickle(data, storage_lookup=None):
    """Unpickles one checked pickle (bytes): with the allowlist and storages through
    `storage_lookup`, or, without one, as a header that may hold plain values only."""
    file = io.BytesIO(data)
    try:
        if storage_lookup is None:
            obj = _PlainUnpickler(file).load()
        else:
            obj = _RestrictedUnpickler(file, storage_lookup).load()
        check_structure(obj)
    except CheckpointError:
        raise
    except Exception as exc:  # a corrupted length, type or argument in the pickle
        raise CheckpointError(f"malformed checkpoint pickle: {_exception_text(exc)}")
    return obj


def loads(data, storages=None, big_endian=False):
    """Reads a checkpoint pickle held in memory, as `load` reads a zip archive's
    data.pkl: `storages` maps each storage key to the raw bytes of its member. Raises
    CheckpointError (with the reason) on anything a checkpoint may not hold."""
    members = {f"archive/data/{key}": value for key, value in (storages or {}).items()}
    reader = _ZipStorageReader(_MemoryMembers(members), "archive", big_endian)
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"the pickle is longer than {MAX_PICKLE_BYTES} bytes")
    check_pickle(io.BytesIO(data))
    return _unpickle(data, reader.lookup)


# What zipfile raises on damaged archives: besides BadZipFile, a mangled header can
# surface as a decode error, an "unsupported feature" (flag bits), a zlib error, or a
# bad value in a header field.
ZIP_ERRORS = (
    zipfile.BadZipFile,
    EOFError,
    OSError,
    UnicodeDecodeError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    struct.error,
    zlib.error,
)


class _ZipMembers:
    """The members of an open zip archive. A member is inflated only when its declared
    size is plausible: compressed members may expand at most MAX_EXPANSION times (or
    to MIN_EXPANSION_BYTES); zipfile itself never returns more than the declared size."""

    def __init__(self, archive):
        self.archive = archive
        self.names = set(archive.namelist())

    def size(self, name):
        return self.archive.getinfo(name).file_size if name in self.names else None

    def check(self, name):
        info = self.archive.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(
            MIN_EXPANSION_BYTES, MAX_EXPANSION * info.compress_size
        ):
            raise CheckpointError(
                f"zip member {name} would inflate from {info.compress_size} to "
                f"{info.file_size} bytes, more than {MAX_EXPANSION} times (a zip bomb?); "
                "torch stores checkpoint members uncompressed"
            )

    def read(self, name, limit=None):
        self.check(name)
        size = self.size(name)
        if limit is not None and size > limit:
            raise CheckpointError(
                f"zip member {name} declares {size} bytes, more than the {limit} it may have"
            )
        try:
            return self.archive.read(name)
        except ZIP_ERRORS as exc:
            raise CheckpointError(f"{name} is unreadable: {exc}")


class _MemoryMembers:
    """Zip members already in memory (`loads`): name -> bytes."""

    def __init__(self, members):
        self.members = members

    def size(self, name):
        data = self.members.get(name)
        return None if data is None else len(data)

    def check(self, name):
        pass

    def read(self, name, limit=None):
        return self.members[name]


class _ZipStorageReader:
    def __init__(self, members, root, big_endian):
        self.members = members
        self.root = root
        self.big_endian = big_endian
        self._refs = {}
        self._cache_key = None
        self._cache = None

    def member(self, key):
        return f"{self.root}/data/{key}"

    def lookup(self, storage_type, key, numel, view):
        """The unpickler's storage lookup: checks the member exists, is large enough
        for `numel` elements and is no zip bomb, before any tensor is built on it."""
        if view is not None:
            raise CheckpointError("storage views are not expected in the zip format")
        member = self.member(key)
        size = self.members.size(member)
        if size is None:
            raise CheckpointError(f"storage {member} is missing from the archive")
        if size < numel * storage_type.itemsize:
            raise CheckpointError(
                f"storage {member} has {size} bytes, its {numel} {storage_type.dtype} "
                f"elements need {numel * storage_type.itemsize}"
            )
        self.members.check(member)
        ref_key = (key, storage_type.name, numel)
        ref = self._refs.get(ref_key)
        if ref is None:
            ref = self._refs[ref_key] = StorageRef(key, storage_type, numel, self)
        return ref

    def __call__(self, key, offset, count):
        # Storages are read whole (zip members are not seekable reliably when
        # compressed); the last one is kept because consecutive tensors often share it.
        if self._cache_key != key:
            self._cache = None
            self._cache = self.members.read(self.member(key))
            self._cache_key = key
        data = self._cache
        if offset + count > len(data):
            raise CheckpointError(
                f"storage {self.member(key)} holds {len(data)} bytes, {offset + count} needed"
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
        members = _ZipMembers(archive)
        big_endian = False
        if f"{root}/byteorder" in members.names:
            order = members.read(f"{root}/byteorder", limit=16)
            order = order.decode("ascii", "replace").strip()
            if order not in ("little", "big"):
                raise CheckpointError(f"unknown byte order {order!r}")
            big_endian = order == "big"
        reader = _ZipStorageReader(members, root, big_endian)
        data = members.read(f"{root}/data.pkl", limit=MAX_PICKLE_BYTES)
        check_pickle(io.BytesIO(data))
        obj = _unpickle(data, reader.lookup)
    except CheckpointError:
        archive.close()
        raise
    except ZIP_ERRORS as exc:
        archive.close()
        raise CheckpointError(f"corrupt zip archive: {exc}")
    return Checkpoint(path, obj, "zip", archive.close)


class _Window:
    """A read-only file over mapped[start:end], for walking one pickle of a legacy
    file without copying more than the walk reads."""

    def __init__(self, mapped, start, end):
        self.mapped = mapped
        self.start = start
        self.position = start
        self.end = end

    def read(self, count=-1):
        stop = self.end if count < 0 else min(self.end, self.position + count)
        data = self.mapped[self.position : stop]
        self.position = max(self.position, stop)
        return data

    def readline(self):
        newline = self.mapped.find(b"\n", self.position, self.end)
        return self.read(self.end - self.position if newline < 0 else newline + 1 - self.position)

    def tell(self):
        return self.position - self.start


def _next_pickle(mapped, position, storage_lookup=None):
    """Checks and loads the pickle at `position` of a legacy file; returns the object
    and the position after it."""
    end = min(len(mapped), position + MAX_PICKLE_BYTES + 1)
    length = check_pickle(_Window(mapped, position, end))
    return _unpickle(mapped[position : position + length], storage_lookup), position + length


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


def _parse_legacy(path, mapped):
    file_size = len(mapped)
    try:
        magic, position = _next_pickle(mapped, 0)
    except CheckpointError:
        magic = None
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise CheckpointError(
            "not a torch checkpoint (neither a zip archive nor a legacy torch file; "
            "truncated or corrupt?)"
        )
    protocol, position = _next_pickle(mapped, position)
    info, position = _next_pickle(mapped, position)
    if type(protocol) is not int or protocol != LEGACY_PROTOCOL:
        raise UnsupportedCheckpoint(f"legacy torch protocol {protocol!r:.40} is not supported")
    big_endian = isinstance(info, dict) and info.get("little_endian") is False
    reader = _LegacyStorageReader(mapped, big_endian)
    roots = {}  # key -> (StorageType, numel)

    def lookup(storage_type, key, numel, view):
        known = roots.setdefault(key, (storage_type, numel))
        if (known[0].name, known[1]) != (storage_type.name, numel):
            raise CheckpointError(
                f"legacy storage {key} is referenced as {known[1]} {known[0].dtype} and as "
                f"{numel} {storage_type.dtype} elements"
            )
        if view is None:
            return StorageRef(key, storage_type, numel, reader)
        if not (
            isinstance(view, tuple)
            and len(view) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) for v in view[1:])
            and view[1] >= 0
            and view[2] >= 0
            and view[1] + view[2] <= numel
        ):
            raise CheckpointError(f"malformed storage view {view!r:.80} of {numel} elements")
        _view_key, view_offset, view_size = view
        return StorageRef(key, storage_type, view_size, reader, base=view_offset)

    obj, position = _next_pickle(mapped, position, lookup)
    keys, position = _next_pickle(mapped, position)
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise CheckpointError("legacy storage key list is missing")
    order = ">q" if big_endian else "<q"
    for key in keys:
        header = mapped[position : position + 8]
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
    missing = set(roots) - set(reader.locations)
    if missing:
        raise CheckpointError(f"legacy storages {sorted(missing)[:3]} have no data")
    return Checkpoint(path, obj, "legacy", mapped.close)


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
    try:
        is_zip = zipfile.is_zipfile(path)
    except ZIP_ERRORS:
        is_zip = False
    if is_zip:
        return _load_zip(path)
    if head[:1] == b"\x80":
        return _load_legacy(path)
    raise CheckpointError("not a torch checkpoint (unknown file signature)")
