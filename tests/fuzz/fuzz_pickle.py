"""atheris target: the checkpoint converter's restricted unpickler on a bare pickle.

Each input is a data.pkl stream, read by torch_checkpoint.loads (the opcode walk,
the allowlisted unpickler, the structure check) with four 512-byte storages "0".."3"
for its persistent ids; every tensor found in the result is read as float32, and a
dict goes through the converter's package checks (converter.check_package). The only
exception allowed out is the converter's CheckpointError family; anything else, a
hang past -timeout or memory past -rss_limit_mb is a finding.

Run through build/fuzz/fuzz_pickle (tests/fuzz/run-fuzz).
"""

import os
import sys

try:
    import atheris
except ImportError:
    sys.exit("fuzz_pickle: atheris is not installed (`make deps` puts it in build/fuzzvenv)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models"))

import numpy  # noqa: E402,F401  (imported before instrumentation: not worth tracing)

with atheris.instrument_imports(include=["convert_lib", "pickletools", "fractions"]):
    from convert_lib import converter, torch_checkpoint  # noqa: E402
    from convert_lib.torch_checkpoint import CheckpointError, TensorRef  # noqa: E402

STORAGES = {str(key): bytes((key * 37 + i) & 0xFF for i in range(512)) for key in range(4)}
CONTAINERS = (list, tuple, dict, set, frozenset)


def tensors_in(obj):
    """Every TensorRef reachable through containers (the structure check has bounded
    the depth and refused cycles; shared parts are visited once)."""
    found, seen, stack = [], set(), [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, TensorRef):
            found.append(item)
        elif isinstance(item, CONTAINERS) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(
                [v for pair in item.items() for v in pair] if isinstance(item, dict) else item
            )
    return found


def TestOneInput(data):
    try:
        obj = torch_checkpoint.loads(data, STORAGES)
        for index, ref in enumerate(tensors_in(obj)):
            array = ref.to_float32(f"tensor {index}")
            assert array.shape == ref.shape and array.dtype == "<f4", (array.shape, ref.shape)
        if isinstance(obj, dict):
            converter.check_package("fuzz", obj)
    except CheckpointError:
        pass


def main():
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
