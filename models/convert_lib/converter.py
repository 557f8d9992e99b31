"""Converts demucs HTDemucs checkpoints into the engine's weights file.

One input makes a single model; several make a bag (as demucs' BagOfModels: same
sources, sample rate and channel count; per-source weights, all 1.0 unless given).
A checkpoint is the dict demucs.states.serialize_model writes: `klass` (must be
demucs.htdemucs.HTDemucs), `args`, `kwargs`, `state` (the state_dict, usually float16)
and optional `training_args`/`metrics`, which are ignored. Quantized (diffq) states
are refused. Output layout and metadata: models/FORMAT.md.
"""

import collections
import hashlib
import json
import os
import re
import sys

from . import engine_rules
from . import htdemucs_args
from . import safetensors_file
from . import torch_checkpoint
from .torch_checkpoint import CheckpointError, UnsupportedCheckpoint

FORMAT_TAG = "sep-demucs/1"
HTDEMUCS_CLASS = "demucs.htdemucs.HTDemucs"


class ModelCheckpoint:
    """One HTDemucs network read from a checkpoint file."""

    def __init__(self, path, signature, sha256, bound, dropped, tensors, checkpoint):
        self.path = path
        self.signature = signature
        self.sha256 = sha256
        self.bound = bound  # every HTDemucs argument, raw values (Fraction kept)
        self.dropped = dropped  # keyword names HTDemucs does not take
        self.tensors = tensors  # list of (state_dict key, TensorRef)
        self._checkpoint = checkpoint

    @property
    def sources(self):
        return list(self.bound["sources"])

    @property
    def samplerate(self):
        return int(self.bound["samplerate"])

    @property
    def audio_channels(self):
        return int(self.bound["audio_channels"])

    @property
    def segment(self):
        return self.bound["segment"]

    @property
    def segment_samples(self):
        return htdemucs_args.segment_samples(self.segment, self.samplerate)

    @property
    def parameter_count(self):
        return sum(ref.numel for _, ref in self.tensors)

    @property
    def stored_dtypes(self):
        return collections.Counter(ref.dtype for _, ref in self.tensors)

    def close(self):
        self._checkpoint.close()


def signature_of(path):
    """demucs names a release file `<signature>-<sha256 prefix>.th`; the signature is
    what its yaml files list (e.g. 955717e8). Other names: the stem."""
    stem = os.path.basename(path)
    if stem.endswith(".th"):
        stem = stem[:-3]
    return stem.split("-", 1)[0]


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fail(path, message, kind=CheckpointError):
    raise kind(f"{path}: {message}")


def read_model(path):
    """Opens one checkpoint and checks it describes an unquantized HTDemucs."""
    try:
        checkpoint = torch_checkpoint.load(path)
    except CheckpointError as exc:
        raise type(exc)(f"{path}: {exc}")
    try:
        bound, dropped, tensors = check_package(path, checkpoint.obj)
    except BaseException:
        checkpoint.close()
        raise
    return ModelCheckpoint(
        path, signature_of(path), file_sha256(path), bound, dropped, tensors, checkpoint
    )


def check_package(path, package):
    """Checks an unpickled checkpoint object is a demucs package of an unquantized
    HTDemucs; returns (bound arguments, dropped argument names, [(state key,
    TensorRef)]). `path` only prefixes the messages."""
    if not isinstance(package, dict):
        _fail(path, f"the pickle holds a {type(package).__name__}, not a demucs model package")
    missing = [k for k in ("klass", "kwargs", "state") if k not in package]
    if missing:
        hint = ""
        if all(isinstance(v, torch_checkpoint.TensorRef) for v in package.values()):
            hint = " (it looks like a bare state_dict; demucs model packages carry klass/args/kwargs)"
        _fail(path, f"not a demucs model package: missing {', '.join(missing)}{hint}")
    klass = package["klass"]
    if not isinstance(klass, torch_checkpoint.ClassRef):
        _fail(path, f"klass is {klass!r:.60}, not a class reference")
    if klass.qualified_name != HTDEMUCS_CLASS:
        _fail(
            path,
            f"model class {klass.qualified_name} is not supported: only "
            f"{HTDEMUCS_CLASS} (Demucs v4) checkpoints can be converted",
            UnsupportedCheckpoint,
        )
    state = package["state"]
    if not isinstance(state, dict):
        _fail(path, f"state is a {type(state).__name__}, not a dict of tensors")
    if state.get("__quantized"):
        _fail(
            path,
            "quantized (diffq) model states are not supported; use the non-quantized "
            "release of the model",
            UnsupportedCheckpoint,
        )
    tensors = []
    for key, value in state.items():
        if not isinstance(key, str):
            _fail(path, f"state key {key!r:.60} is not a string")
        if not isinstance(value, torch_checkpoint.TensorRef):
            _fail(path, f"state entry {key} is a {type(value).__name__}, not a tensor")
        if value.dtype not in torch_checkpoint.FLOAT_DTYPES:
            _fail(
                path,
                f"state entry {key} is a {value.dtype} tensor; only floating tensors are supported",
                UnsupportedCheckpoint,
            )
        tensors.append((key, value))
    if not tensors:
        _fail(path, "the model state is empty")
    args = package.get("args") or ()
    kwargs = package["kwargs"] or {}
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        _fail(path, "args/kwargs are not a sequence and a dict")
    try:
        bound, dropped = htdemucs_args.bind_arguments(args, kwargs)
        htdemucs_args.json_kwargs(bound)
    except htdemucs_args.ArgumentError as exc:
        _fail(path, f"invalid HTDemucs arguments: {exc}")
    return bound, dropped, tensors


def check_bag(models, weights):
    """Checks that the models can form a bag and returns the weights matrix."""
    first = models[0]
    for model in models[1:]:
        for what in ("sources", "samplerate", "audio_channels"):
            if getattr(model, what) != getattr(first, what):
                raise CheckpointError(
                    f"cannot bag {model.path} with {first.path}: {what} differ "
                    f"({getattr(model, what)!r} vs {getattr(first, what)!r})"
                )
    n_sources = len(first.sources)
    if weights is None:
        return [[1.0] * n_sources for _ in models]
    if not isinstance(weights, list) or len(weights) != len(models):
        raise CheckpointError(f"bag weights need one row per model ({len(models)} rows)")
    result = []
    for row in weights:
        if not isinstance(row, list) or len(row) != n_sources:
            raise CheckpointError(f"each bag weights row needs {n_sources} values (one per source)")
        values = []
        for value in row:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CheckpointError(f"bag weight {value!r} is not a number")
            values.append(float(value))
        result.append(values)
    for column in range(n_sources):
        if sum(row[column] for row in result) == 0:
            raise CheckpointError(f"bag weights for source {first.sources[column]!r} are all zero")
    return result


def build_metadata(name, models, weights):
    # The bag runs at the shortest model segment, as BagOfModels.max_allowed_segment.
    shortest = min(models, key=lambda m: htdemucs_args.segment_samples(m.segment, m.samplerate))
    entries = []
    for model in models:
        entries.append(
            {
                "class": "HTDemucs",
                "signature": model.signature,
                "checkpoint": os.path.basename(model.path),
                "sha256": model.sha256,
                "segment_samples": model.segment_samples,
                "kwargs": htdemucs_args.json_kwargs(model.bound),
            }
        )
    return {
        "format": FORMAT_TAG,
        "name": name,
        "sources": json.dumps(models[0].sources),
        "samplerate": str(models[0].samplerate),
        "audio_channels": str(models[0].audio_channels),
        "segment": htdemucs_args.segment_text(shortest.segment),
        "segment_samples": str(shortest.segment_samples),
        "models": json.dumps(entries),
        "weights": json.dumps(weights),
    }


def _describe_value(value):
    if isinstance(value, str) and value.isprintable():
        return value
    # JSON escapes control characters: a checkpoint's text cannot drive the terminal
    return json.dumps(htdemucs_args.to_json_value(value, "value"))


def describe_model(index, model, out):
    stored = ", ".join(f"{dtype} x{count}" for dtype, count in sorted(model.stored_dtypes.items()))
    print(
        f"model {index}: HTDemucs signature {model.signature} "
        f"({os.path.basename(model.path)}, sha256 {model.sha256[:16]}...)",
        file=out,
    )
    print(f"  sources         {', '.join(model.sources)}", file=out)
    print(
        f"  audio           {model.samplerate} Hz, {model.audio_channels} channels, segment "
        f"{htdemucs_args.segment_text(model.segment)} s = {model.segment_samples} samples",
        file=out,
    )
    skip = {"sources", "samplerate", "audio_channels", "segment"}
    items = [
        f"{name}={_describe_value(model.bound[name])}"
        for name in htdemucs_args.PARAMETER_NAMES
        if name not in skip
    ]
    line = "  hyperparameters"
    for item in items:
        if len(line) + len(item) + 1 > 96:
            print(line, file=out)
            line = "                 "
        line += " " + item
    print(line, file=out)
    if model.dropped:
        print(
            f"  warning: dropped arguments HTDemucs does not take: {', '.join(model.dropped)}",
            file=out,
        )
    print(
        f"  tensors         {len(model.tensors)}, parameters {model.parameter_count:,} "
        f"(stored as {stored}; written as float32)",
        file=out,
    )


def convert(paths, output, name=None, bag_weights=None, out=sys.stdout):
    """Converts `paths` (one model, or several for a bag) into `output`. Returns the
    metadata written. Raises CheckpointError on any problem; `output` is then untouched."""
    if not paths:
        raise CheckpointError("no input checkpoints")
    if name is None:
        name = os.path.basename(os.fspath(output))
        name = re.sub(r"\.safetensors$", "", name)
    models = []
    try:
        for path in paths:
            models.append(read_model(os.fspath(path)))
        weights = check_bag(models, bag_weights)
        shortest = min(m.segment_samples for m in models)
        try:
            engine_rules.check_segment_samples(shortest, [int(m.bound["nfft"]) for m in models])
        except engine_rules.RuleError as exc:
            raise CheckpointError(str(exc)) from None
        metadata = build_metadata(name, models, weights)
        for index, model in enumerate(models):
            describe_model(index, model, out)
        total = sum(m.parameter_count for m in models)
        kind = "bag of %d models" % len(models) if len(models) > 1 else "single model"
        print(f"{name}: {kind}, {total:,} parameters in all", file=out)
        if len(models) > 1:
            print(f"  bag weights     {json.dumps(weights)}", file=out)

        def producer(tensor_name, ref):
            def produce():
                try:
                    return ref.to_float32(tensor_name)
                except CheckpointError as exc:
                    raise type(exc)(f"{ref_paths[tensor_name]}: {exc}")

            return produce

        tensors = []
        ref_paths = {}
        for index, model in enumerate(models):
            for key, ref in model.tensors:
                tensor_name = f"{index}.{key}"
                ref_paths[tensor_name] = model.path
                tensors.append((tensor_name, ref.shape, producer(tensor_name, ref)))
        size = safetensors_file.write_atomic(output, metadata, tensors)
        print(f"wrote {os.fspath(output)} ({size / 1e6:.1f} MB)", file=out)
        return metadata
    finally:
        for model in models:
            model.close()
