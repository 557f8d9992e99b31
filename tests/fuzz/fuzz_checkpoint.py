"""atheris target: models/convert on whole checkpoint files (zip and legacy format).

Each input is written to a file and converted as `models/convert IN -o OUT` would
(converter.convert: torch_checkpoint.load, the package checks, every tensor read and
written). The only exception allowed out is the converter's CheckpointError family;
anything else, a hang past -timeout or memory past -rss_limit_mb is a finding.

The custom mutator keeps a zip input a zip: most of the time it unpacks the archive,
mutates one member (data.pkl more often than the others) with libFuzzer's mutator,
sometimes drops, renames or duplicates a member or switches its compression, and
packs it again; a legacy input is split into its five pickles and its storage data
and one part is mutated. Otherwise the bytes are mutated as they are.

Run through build/fuzz/fuzz_checkpoint (tests/fuzz/run-fuzz; FUZZ_SCRATCH names a
directory for the input and output files, which the wrapper removes afterwards).
"""

import io
import os
import random
import sys
import tempfile

try:
    import atheris
except ImportError:
    sys.exit("fuzz_checkpoint: atheris is not installed (`make deps` puts it in build/fuzzvenv)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models"))

import numpy  # noqa: E402,F401  (imported before instrumentation: not worth tracing)

# zipfile is traced too: its header parsing is part of what a checkpoint reaches.
with atheris.instrument_imports(include=["convert_lib", "pickletools", "fractions", "zipfile"]):
    import pickletools  # noqa: E402
    import zipfile  # noqa: E402

    from convert_lib import converter  # noqa: E402
    from convert_lib.torch_checkpoint import CheckpointError  # noqa: E402

SCRATCH = os.environ.get("FUZZ_SCRATCH") or tempfile.mkdtemp(prefix="fuzz_checkpoint-")
INPUT = os.path.join(SCRATCH, "input.th")
OUTPUT = os.path.join(SCRATCH, "output.safetensors")


def TestOneInput(data):
    with open(INPUT, "wb") as file:
        file.write(data)
    try:
        # what it prints goes through a strict UTF-8 stream, as models/convert's stdout
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
        converter.convert([INPUT], OUTPUT, out=stdout)
        stdout.flush()
    except CheckpointError:
        pass


def _mutate_zip(data, max_size, rng):
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [
                [info.filename, archive.read(info), info.compress_type]
                for info in archive.infolist()
                if info.file_size <= max_size
            ]
    except Exception:
        return None
    if not members:
        return None
    pickles = [m for m in members if m[0].endswith("data.pkl")]
    member = rng.choice(pickles) if pickles and rng.random() < 0.6 else rng.choice(members)
    action = rng.random()
    if action < 0.75:
        member[1] = atheris.Mutate(member[1], max(64, 2 * len(member[1])))
    elif action < 0.82:
        member[2] = zipfile.ZIP_DEFLATED if member[2] == zipfile.ZIP_STORED else zipfile.ZIP_STORED
    elif action < 0.88 and len(members) > 1:
        members.remove(member)
    elif action < 0.94:
        name = member[0].rsplit("/", 1)[0] + "/" + str(rng.randrange(16))
        members.append([name, member[1], member[2]])
    else:
        member[0] = atheris.Mutate(member[0].encode(), 64).decode("utf-8", "replace")
    buffer = io.BytesIO()
    try:
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, content, compression in members:
                archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    except Exception:
        return None
    out = buffer.getvalue()
    return out if len(out) <= max_size else None


def _mutate_legacy(data, max_size, rng):
    # The five pickles (magic, protocol, system info, object, storage keys), then the
    # storage data.
    parts, position = [], 0
    try:
        stream = io.BytesIO(data)
        for _ in range(5):
            for opcode, _arg, _pos in pickletools.genops(stream):
                pass
            parts.append(data[position : stream.tell()])
            position = stream.tell()
    except Exception:
        return None
    parts.append(data[position:])
    index = 3 if rng.random() < 0.6 else rng.randrange(len(parts))
    parts[index] = atheris.Mutate(parts[index], max(64, 2 * len(parts[index])))
    out = b"".join(parts)
    return out if len(out) <= max_size else None


def CustomMutator(data, max_size, seed):
    rng = random.Random(seed)
    mutated = None
    if rng.random() < 0.8:
        if data[:2] == b"PK":
            mutated = _mutate_zip(data, max_size, rng)
        elif data[:1] == b"\x80":
            mutated = _mutate_legacy(data, max_size, rng)
    if mutated is None:
        mutated = atheris.Mutate(data, max_size)
    return mutated


def main():
    atheris.Setup(sys.argv, TestOneInput, custom_mutator=CustomMutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
