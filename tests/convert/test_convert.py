"""Tests for models/convert and models/get-weights (`make test-convert`).

Runs with the system python3 + numpy only. Fixtures in tests/fixtures/convert/ were
made by demucs itself (tests/convert/make_checkpoints.py): the converted files must
reproduce their tensors exactly (float16 states as the exact float16 values), every
HTDemucs argument and the segment length. Error paths: corrupt archives, forbidden
pickle globals, malicious checkpoints (payloads that would run code, shown to create
their marker file under the plain pickle module and never under the converter, in zip
and legacy files; zip bombs and tensor expansion with the converter's peak RSS
measured; recursion bombs; storages beyond their data; state injected by BUILD),
unsupported classes and quantized states, bag mismatches, checksum
mismatches and failed downloads in get-weights (served over file:// and a real local
HTTP server). The engine's rules (engine_rules.py, mirroring models/model.c and
htdemucs.c): path-like or repeated source names and out-of-range hyperparameters are
refused with the engine's words, the same text build/workerd gives for the same
description (when build/workerd is built). When build/refvenv (torch + demucs) exists, extra checks compare with
demucs directly: the HTDemucs signature, the official catalog, a state/output round
trip, and a full-size htdemucs conversion.
"""

import contextlib
import functools
import http.server
import json
import os
from pathlib import Path
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zipfile
import zlib

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "convert"
CONVERT = ROOT / "models" / "convert"
GET_WEIGHTS = ROOT / "models" / "get-weights"
REFERENCE_CHECK = ROOT / "tests" / "convert" / "reference_check.py"
REFVENV_PYTHON = ROOT / os.environ.get("REFVENV", "build/refvenv") / "bin" / "python"


def reference_installed():
    """True when the reference venv can import torch and demucs (a venv whose
    install was cut short does not count)."""
    if not REFVENV_PYTHON.exists():
        return False
    probe = subprocess.run(
        [str(REFVENV_PYTHON), "-c", "import torch, demucs.htdemucs"], capture_output=True
    )
    return probe.returncode == 0


REFERENCE = reference_installed()

sys.path.insert(0, str(ROOT / "models"))
from convert_lib import engine_rules, htdemucs_args, official_models  # noqa: E402

WORKERD = ROOT / os.environ.get("WORKERD", "build/workerd")

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
with np.load(FIXTURES / "expected.npz") as _npz:
    ARRAYS = {name: _npz[name] for name in _npz.files}
FILES = EXPECTED["files"]


def fixture(label):
    return FIXTURES / FILES[label]


def expected_state(model, flavour):
    """state_dict key -> array, from the flat fixture arrays."""
    flat = ARRAYS[f"{model}_{flavour}"]
    state, position = {}, 0
    for key, shape in EXPECTED["models"][model]["tensors"]:
        count = int(np.prod(shape)) if shape else 1
        state[key] = flat[position : position + count].reshape(shape)
        position += count
    assert position == flat.size
    return state


def read_safetensors(path):
    """An independent reader: returns (header length, metadata, ordered list of
    (name, dtype, shape, float32 array)), checking the layout rules on the way."""
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length].decode("utf-8"))
    metadata = header.pop("__metadata__")
    base = 8 + length
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    tensors, position = [], 0
    for name, entry in entries:
        begin, end = entry["data_offsets"]
        assert begin == position, f"{name}: gap or overlap at {begin}"
        assert end - begin == 4 * int(np.prod(entry["shape"])), f"{name}: size mismatch"
        array = np.frombuffer(data[base + begin : base + end], dtype="<f4").reshape(entry["shape"])
        tensors.append((name, entry["dtype"], entry["shape"], array))
        position = end
    assert base + position == len(data), "trailing or missing data"
    return length, metadata, tensors


def run(tool, *args, env=None, check_rc=None):
    full_env = dict(os.environ)
    full_env.pop("SEP_MODELS", None)
    full_env.pop("SEP_WEIGHTS_URL", None)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(tool), *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )
    if check_rc is not None and proc.returncode != check_rc:
        raise AssertionError(
            f"{tool.name} {' '.join(map(str, args))}: rc {proc.returncode}, expected {check_rc}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def rewrite_zip(source, target, edit_pickle=None, drop=(), corrupt_member=None):
    """Copies a torch zip checkpoint, editing data.pkl, dropping members, or flipping
    one byte of a member's stored data (so its CRC no longer matches)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info.filename)
            if edit_pickle and info.filename.endswith("/data.pkl"):
                data = edit_pickle(data)
            zout.writestr(info, data)
    if corrupt_member:
        with zipfile.ZipFile(target) as z:
            info = z.getinfo(corrupt_member)
        raw = bytearray(Path(target).read_bytes())
        name_len, extra_len = struct.unpack(
            "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
        )
        start = info.header_offset + 30 + name_len + extra_len
        raw[start + 3] ^= 0xFF
        Path(target).write_bytes(bytes(raw))


def zip_with_pickle(target, pickle_bytes, root="archive", storages=None):
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", pickle_bytes)
        for key, data in (storages or {}).items():
            z.writestr(f"{root}/data/{key}", data)
        z.writestr(f"{root}/version", "3\n")


def text(value):
    """A pickle BINUNICODE opcode for `value`."""
    raw = value.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def refusing_socket():
    """A socket bound to a loopback port but not listening: connections to that port
    are refused for as long as the socket stays open (no other process can take it)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def http_server(directory):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="sep-convert-test-")
        self.tmp = Path(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()

    def convert(self, *inputs, output=None, extra=(), rc=0):
        output = output or self.tmp / "out.safetensors"
        proc = run(CONVERT, *inputs, "-o", output, *extra, check_rc=rc)
        return proc, output


class ConvertFixtures(TempDirTest):
    def check_single(self, output, model, flavour, name):
        length, metadata, tensors = read_safetensors(output)
        self.assertEqual((8 + length) % 64, 0, "tensor data must start 64-byte aligned")
        expected = expected_state(model, flavour)
        info = EXPECTED["models"][model]
        self.assertEqual([t[0] for t in tensors], [f"0.{k}" for k, _ in info["tensors"]])
        for tensor_name, dtype, shape, array in tensors:
            key = tensor_name[2:]
            self.assertEqual(dtype, "F32", tensor_name)
            self.assertEqual(list(shape), list(expected[key].shape), tensor_name)
            want = expected[key].astype(np.float32)
            self.assertTrue(np.array_equal(array, want), f"{tensor_name}: values differ")
        self.assertEqual(metadata["format"], "sep-demucs/1")
        self.assertEqual(metadata["name"], name)
        self.assertEqual(json.loads(metadata["sources"]), info["kwargs"]["sources"])
        self.assertEqual(metadata["samplerate"], str(info["kwargs"]["samplerate"]))
        self.assertEqual(metadata["audio_channels"], str(info["kwargs"]["audio_channels"]))
        self.assertEqual(metadata["segment_samples"], str(info["segment_samples"]))
        models = json.loads(metadata["models"])
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0]["class"], "HTDemucs")
        self.assertEqual(models[0]["segment_samples"], info["segment_samples"])
        self.assertEqual(models[0]["kwargs"], info["kwargs"])
        self.assertEqual(list(models[0]["kwargs"]), list(info["kwargs"]), "signature order")
        self.assertEqual(json.loads(metadata["weights"]), [[1.0] * len(info["kwargs"]["sources"])])
        return metadata, models[0]

    def test_half_checkpoint_gives_exact_float16_values(self):
        proc, out = self.convert(fixture("a_half"), extra=("--name", "tiny"))
        metadata, model = self.check_single(out, "a", "f16", "tiny")
        self.assertEqual(metadata["segment"], "7.8")
        self.assertEqual(metadata["segment_samples"], "343980")
        self.assertEqual(model["signature"], "tiny_a")
        self.assertEqual(model["sha256"], EXPECTED["models"]["a"]["sha256"])
        self.assertIn(f"parameters {EXPECTED['models']['a']['parameters']:,}", proc.stdout)
        self.assertIn("dconv_mode=3", proc.stdout)
        self.assertIn("segment 7.8 s = 343980 samples", proc.stdout)

    def test_float32_checkpoint_is_exact(self):
        self.convert(fixture("a_f32"))
        self.check_single(self.tmp / "out.safetensors", "a", "f32", "out")

    def test_float16_values_are_not_the_float32_ones(self):
        # Guards the two tests above: the fixtures differ, so they can tell a wrong
        # dtype path apart.
        self.assertFalse(np.array_equal(ARRAYS["a_f32"], ARRAYS["a_f16"].astype(np.float32)))

    def test_legacy_format(self):
        self.convert(fixture("a_legacy"))
        self.check_single(self.tmp / "out.safetensors", "a", "f16", "out")

    def test_positional_arguments_and_segment(self):
        self.convert(fixture("b_half"), extra=("--name", "b"))
        metadata, model = self.check_single(self.tmp / "out.safetensors", "b", "f16", "b")
        self.assertEqual(metadata["segment"], "3.5")
        self.assertEqual(metadata["segment_samples"], "154350")
        self.assertEqual(model["kwargs"]["channels"], 8)
        self.assertTrue(model["kwargs"]["t_cross_first"])

    def test_zip_root_named_after_the_file(self):
        # torch.save(path) names the archive root after the file, not "archive".
        source = fixture("a_half")
        target = self.tmp / "renamed.th"
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
            for info in zin.infolist():
                zout.writestr("renamed/" + info.filename.split("/", 1)[1], zin.read(info.filename))
        self.convert(target)
        self.check_single(self.tmp / "out.safetensors", "a", "f16", "out")

    def test_bag_of_two_models(self):
        weights = [[1, 0, 1, 0], [0, 1, 0, 1]]
        proc, out = self.convert(
            fixture("a_half"),
            fixture("b_half"),
            extra=("--name", "pair", "--bag-weights", json.dumps(weights)),
        )
        _, metadata, tensors = read_safetensors(out)
        names = [t[0] for t in tensors]
        expected_names = [f"0.{k}" for k, _ in EXPECTED["models"]["a"]["tensors"]]
        expected_names += [f"1.{k}" for k, _ in EXPECTED["models"]["b"]["tensors"]]
        self.assertEqual(names, expected_names)
        state_b = expected_state("b", "f16")
        for name, _, _, array in tensors:
            if name.startswith("1."):
                self.assertTrue(np.array_equal(array, state_b[name[2:]].astype(np.float32)), name)
        models = json.loads(metadata["models"])
        self.assertEqual([m["signature"] for m in models], ["tiny_a", "tiny_b"])
        self.assertEqual(models[1]["kwargs"], EXPECTED["models"]["b"]["kwargs"])
        # Each network pads to its own training length, as each HTDemucs does in demucs.
        self.assertEqual([m["segment_samples"] for m in models], [343980, 154350])
        self.assertEqual(
            json.loads(metadata["weights"]), [[float(v) for v in row] for row in weights]
        )
        # The bag runs at its shortest model segment (BagOfModels.max_allowed_segment).
        self.assertEqual(metadata["segment"], "3.5")
        self.assertEqual(metadata["segment_samples"], "154350")
        self.assertIn("bag of 2 models", proc.stdout)

    def test_bag_weights_from_a_file(self):
        path = self.tmp / "weights.json"
        path.write_text("[[1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]]")
        _, out = self.convert(fixture("a_half"), fixture("b_half"), extra=("--bag-weights", path))
        self.assertEqual(json.loads(read_safetensors(out)[1]["weights"])[1], [0.5] * 4)

    def test_bag_weights_with_wrong_shape_are_refused(self):
        for weights in (
            "[[1,0,1,0]]",
            "[[1,0,1],[0,1,0]]",
            '[[1,0,1,0],[0,1,0,"x"]]',
            "[[1,0,0,0],[0,1,0,0]]",
        ):
            proc, out = self.convert(
                fixture("a_half"), fixture("b_half"), extra=("--bag-weights", weights), rc=1
            )
            self.assertIn("weight", proc.stderr)
            self.assertFalse(out.exists())

    def test_bag_with_different_sources_is_refused(self):
        # Same-length rename inside the pickle: 'vocals' -> 'choirs'.
        target = self.tmp / "choirs.th"
        rewrite_zip(
            fixture("b_half"), target, edit_pickle=lambda d: d.replace(b"vocals", b"choirs")
        )
        self.convert(target, extra=())  # on its own it is a valid model
        proc, _ = self.convert(fixture("a_half"), target, rc=1)
        self.assertIn("sources differ", proc.stderr)

    def test_existing_output_survives_a_failed_conversion(self):
        _, out = self.convert(fixture("a_half"))
        before = out.read_bytes()
        broken = self.tmp / "broken.th"
        broken.write_bytes(fixture("a_half").read_bytes()[:5000])
        self.convert(broken, output=out, rc=1)
        self.assertEqual(out.read_bytes(), before)
        self.assertEqual(
            sorted(p.name for p in self.tmp.iterdir()), ["broken.th", "out.safetensors"]
        )


class ConvertErrors(TempDirTest):
    def assert_refused(self, path, *needles):
        proc, out = self.convert(path, rc=1)
        for needle in needles:
            self.assertIn(needle, proc.stderr)
        self.assertFalse(out.exists())
        self.assertEqual([p for p in self.tmp.iterdir() if p.name.startswith(".out")], [])
        return proc

    def test_truncated_zip(self):
        path = self.tmp / "truncated.th"
        path.write_bytes(fixture("a_half").read_bytes()[:40000])
        self.assert_refused(path, "corrupt zip")

    def test_storage_with_bad_crc(self):
        path = self.tmp / "crc.th"
        rewrite_zip(fixture("a_half"), path, corrupt_member="archive/data/3")
        self.assert_refused(path, "archive/data/3", "unreadable")

    def test_missing_storage(self):
        path = self.tmp / "missing.th"
        rewrite_zip(fixture("a_half"), path, drop=("archive/data/0",))
        self.assert_refused(path, "archive/data/0", "missing")

    def test_not_a_checkpoint(self):
        path = self.tmp / "text.th"
        path.write_text("hello\n")
        self.assert_refused(path, "not a torch checkpoint")

    def test_forbidden_global_is_never_called(self):
        marker = self.tmp / "pwned"
        command = f"touch {marker}".encode()
        payload = (
            b"\x80\x02cos\nsystem\nq\x00X" + struct.pack("<I", len(command)) + command + b"\x85R."
        )
        path = self.tmp / "evil.th"
        zip_with_pickle(path, payload)
        self.assert_refused(path, "os.system", "refusing")
        self.assertFalse(marker.exists())

    def test_forbidden_builtin(self):
        payload = b"\x80\x02cbuiltins\neval\n" + text("1+1") + b"\x85R."
        path = self.tmp / "eval.th"
        zip_with_pickle(path, payload)
        self.assert_refused(path, "builtins.eval")

    def test_klass_cannot_be_instantiated(self):
        payload = b"\x80\x02cdemucs.htdemucs\nHTDemucs\n)R."
        path = self.tmp / "call.th"
        zip_with_pickle(path, payload)
        self.assert_refused(path, "instantiate demucs.htdemucs.HTDemucs")

    def test_state_cannot_be_injected_into_a_tensor(self):
        # BUILD on a rebuilt tensor would let a pickle swap its storage.
        storage = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu")
        storage += b"K\x04tQ"
        tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00K\x04\x85K\x01\x85\x89"
        tensor += b"ccollections\nOrderedDict\n)RtR"
        path = self.tmp / "tensor.th"
        zip_with_pickle(path, b"\x80\x02" + tensor + b".", storages={"0": bytes(16)})
        proc = run(CONVERT, path, "-o", self.tmp / "out.safetensors")
        self.assertIn("not a demucs model package", proc.stderr)  # a valid pickle so far
        zip_with_pickle(path, b"\x80\x02" + tensor + b"}b.", storages={"0": bytes(16)})
        self.assert_refused(path, "set the state")

    def test_huge_memo_index_is_refused_before_allocating(self):
        # LONG_BINPUT 0x7fffffff would make the C unpickler allocate a 16 GiB memo.
        path = self.tmp / "memo.th"
        zip_with_pickle(path, b"\x80\x02]r\xff\xff\xff\x7f.")
        self.assert_refused(path, "memo index")

    def test_legacy_file_with_huge_string_length(self):
        # A legacy header whose string claims 4 GiB: refused, nothing that large is read.
        magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
        path = self.tmp / "legacy.th"
        path.write_bytes(magic + b"\x80\x02M\xe9\x03." + b"\x80\x02X\xff\xff\xff\xffabc.")
        self.assert_refused(path, "malformed checkpoint pickle", "4294967295 bytes")

    def test_diffq_global_is_unsupported(self):
        payload = b"\x80\x02cdiffq.uniform\nUniformQuantizer\n."
        path = self.tmp / "diffq.th"
        zip_with_pickle(path, payload)
        self.assert_refused(path, "quantized")

    def test_quantized_state_is_unsupported(self):
        self.assert_refused(fixture("quantized"), "quantized (diffq)")

    def test_other_demucs_class_is_unsupported(self):
        self.assert_refused(fixture("hdemucs"), "demucs.hdemucs.HDemucs is not supported")

    def test_bare_object_is_not_a_model_package(self):
        path = self.tmp / "list.th"
        zip_with_pickle(path, b"\x80\x02]q\x00.")
        self.assert_refused(path, "not a demucs model package")

    def test_usage_error(self):
        proc = run(CONVERT, fixture("a_half"))
        self.assertEqual(proc.returncode, 2)
        self.assertIn("-o", proc.stderr)


# --- malicious checkpoints ---------------------------------------------------------

LEGACY_HEADER = (
    b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # magic number
    + b"\x80\x02M\xe9\x03."  # protocol 1001
    + b"\x80\x02}q\x00X\x0d\x00\x00\x00little_endianq\x01\x88s."  # system info
)
EMPTY_KEYS = b"\x80\x02]q\x00."
# Bound on the converter's peak RSS while it refuses a bomb: it needs about 40 MB
# itself; a bomb that got read would need gigabytes.
BOMB_RSS_LIMIT_BYTES = 200 << 20
BOMB_BYTES = 2 << 30  # what each zip bomb member inflates to


def legacy_with_pickle(path, main_pickle, keys_pickle=EMPTY_KEYS, storage_data=b""):
    Path(path).write_bytes(LEGACY_HEADER + main_pickle + keys_pickle + storage_data)


# Runs the converter in this interpreter and writes its VmHWM (peak RSS of this
# address space, kB) to the file named by argv[1]: wait4's ru_maxrss would count the
# forked copy of the test process too (Linux keeps the larger of the two across exec).
PEAK_RSS_WRAPPER = """
import runpy, sys
out, sys.argv = sys.argv[1], sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    with open("/proc/self/status") as f:
        hwm = [l.split()[1] for l in f if l.startswith("VmHWM:")][0]
    with open(out, "w") as f:
        f.write(hwm)
"""


def run_measured(*args):
    """Runs models/convert ARGS; returns (rc, stderr, peak RSS in bytes of the converter's
    process: its VmHWM)."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as peak:
        proc = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_WRAPPER, peak.name, str(CONVERT), *map(str, args)],
            stdout=subprocess.DEVNULL, stderr=err)
        err.seek(0)
        return proc.returncode, err.read().decode("utf-8", "replace"), int(peak.read()) * 1024


def deflated_zeros(size):
    """A raw deflate stream of `size` zero bytes (a multiple of 1 MiB) and its CRC-32,
    without compressing gigabytes: after a full flush the compressor's output for an
    identical block is identical, so the middle blocks are copies."""
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    middle = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH) == middle
    last = compressor.flush()
    count = size >> 20
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(block, crc)
    return first + middle * (count - 1) + last, crc


def write_zip(path, entries):
    """Writes a zip archive by hand: entries are (name, method, data as stored, CRC-32,
    uncompressed size), so a member may claim any size its deflate stream gives."""
    out, central = bytearray(), bytearray()
    for name, method, data, crc, size in entries:
        raw_name = name.encode()
        offset = len(out)
        out += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
            len(raw_name), 0,
        )
        out += raw_name + data
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
            len(raw_name), 0, 0, 0, 0, 0, offset,
        )
        central += raw_name
    start = len(out)
    out += central
    out += struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), start, 0
    )
    Path(path).write_bytes(bytes(out))


def stored(name, data):
    return (name, zipfile.ZIP_STORED, data, zlib.crc32(data), len(data))


def storage_pickle(numel, storage="FloatStorage", size=None, stride=None, key="0"):
    """A pickle holding one tensor on storage `key`: _rebuild_tensor_v2(('storage',
    torch.<storage>, key, 'cpu', numel), 0, size, stride, False, OrderedDict())."""
    size = (numel,) if size is None else size
    stride = (1,) if stride is None else stride

    def ints(values):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t"

    persistent = b"(" + text("storage") + f"ctorch\n{storage}\n".encode() + text(key)
    persistent += text("cpu") + b"J" + struct.pack("<i", numel) + b"tQ"
    return (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(" + persistent + b"K\x00" + ints(size)
        + ints(stride) + b"\x89ccollections\nOrderedDict\n)RtR."
    )


def package_pickle(tensor_pickle=None, kwargs=b"", prefix=b"", segment=b"K\x07"):
    """A demucs package as a pickle: klass, the tiny fixtures' kwargs plus `kwargs`
    (pickled key/value pairs), state {'w': tensor} (`tensor_pickle`, PROTO and STOP
    stripped; default 4 float32 elements of storage "0"); `prefix` runs first (to
    fill the memo)."""
    tensor_pickle = tensor_pickle or storage_pickle(4)
    all_kwargs = (
        b"}(" + text("sources") + b"]("
        + b"".join(text(s) for s in ("drums", "bass", "other", "vocals")) + b"e"
        + text("channels") + b"K\x08" + text("depth") + b"K\x02" + text("nfft") + b"M\x00\x01"
        + text("t_layers") + b"K\x01" + text("t_heads") + b"K\x02" + text("dconv_mode") + b"K\x03"
        + text("bottom_channels") + b"K\x08" + text("samplerate") + b"M\x44\xac"
        + text("segment") + segment + kwargs + b"u"
    )
    return (
        b"\x80\x02" + prefix + b"}(" + text("klass") + b"cdemucs.htdemucs\nHTDemucs\n"
        + text("kwargs") + all_kwargs + text("state") + b"}(" + text("w") + tensor_pickle[2:-1]
        + b"uu."
    )


UNRESTRICTED_LOAD = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"


class Payload:
    """Pickles as a call of `function(*args)`, as a malicious __reduce__ would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args

    def __call__(self, *args):  # lets a Payload stand as the callable of another
        raise AssertionError("never called")


class MaliciousCheckpoints(TempDirTest):
    """Checkpoints built to run code, exhaust memory or crash the reader: each is
    refused with a message naming the cause, and nothing runs (the payloads would
    create a marker file; each payload is first shown to create it under the plain
    pickle module, so the test can fail)."""

    def setUp(self):
        super().setUp()
        self.marker = self.tmp / "marker"

    def assert_refused(self, path, *needles):
        proc, out = self.convert(path, rc=1)
        for needle in needles:
            self.assertIn(needle, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertNotIn("error: unexpected", proc.stderr)
        self.assertFalse(out.exists())
        return proc

    def assert_payload_runs_when_unrestricted(self, payload):
        source = self.tmp / "payload.pkl"
        source.write_bytes(payload)
        subprocess.run(
            [sys.executable, "-c", UNRESTRICTED_LOAD, str(source)],
            capture_output=True,
            timeout=60,
            cwd=self.tmp,
        )
        deadline = time.monotonic() + 10
        while not self.marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # subprocess.Popen's child touches the marker on its own time
        self.assertTrue(self.marker.exists(), "the payload does not do what it should")
        self.marker.unlink()

    def assert_never_runs(self, payload, *needles):
        self.assert_payload_runs_when_unrestricted(payload)
        for form in ("zip", "legacy"):
            with self.subTest(form=form):
                path = self.tmp / f"evil-{form}.th"
                if form == "zip":
                    zip_with_pickle(path, payload)
                else:
                    legacy_with_pickle(path, payload)
                self.assert_refused(path, *needles)
        time.sleep(0.2)  # a spawned child would have touched it by now
        self.assertFalse(self.marker.exists())

    def touch_command(self):
        return f"touch {self.marker}"

    def test_subprocess_popen_via_reduce(self):
        payload = pickle.dumps(
            Payload(subprocess.Popen, ["touch", str(self.marker)]), protocol=2, fix_imports=False
        )
        self.assertIn(b"csubprocess\nPopen\n", payload)
        self.assert_never_runs(payload, "subprocess.Popen", "refusing")

    def test_subprocess_call_via_stack_global(self):
        payload = pickle.dumps(Payload(subprocess.call, ["touch", str(self.marker)]), protocol=4)
        self.assertIn(b"\x93", payload)  # STACK_GLOBAL, not GLOBAL
        self.assertNotIn(b"csubprocess", payload)
        self.assert_never_runs(payload, "subprocess.call", "refusing")

    def test_posix_system(self):
        payload = pickle.dumps(
            Payload(os.system, self.touch_command()), protocol=2, fix_imports=False
        )
        self.assertIn(b"cposix\nsystem\n", payload)
        self.assert_never_runs(payload, "posix.system")

    def test_builtins_exec(self):
        code = f"open({str(self.marker)!r}, 'w').close()"
        payload = pickle.dumps(Payload(exec, code), protocol=2, fix_imports=False)
        self.assert_never_runs(payload, "builtins.exec")

    def test_builtins_getattr_chain(self):
        # getattr(__import__('os'), 'system')('touch MARKER')
        system = Payload(getattr, Payload(__import__, "os"), "system")
        payload = pickle.dumps(Payload(system, self.touch_command()), protocol=2, fix_imports=False)
        self.assert_never_runs(payload, "builtins.getattr")

    def test_builtins_import(self):
        # __import__('os') first (memoized), then getattr on it, then the call.
        command = self.touch_command().encode()
        payload = (
            b"\x80\x02cbuiltins\n__import__\n" + text("os") + b"\x85Rq\x000"
            + b"cbuiltins\ngetattr\nh\x00" + text("system") + b"\x86R"
            + b"X" + struct.pack("<I", len(command)) + command + b"\x85R."
        )
        self.assert_never_runs(payload, "builtins.__import__")

    def test_stack_global_from_memoized_strings(self):
        # STACK_GLOBAL with its module and name fetched from the memo, as obfuscated
        # payloads do; the allowlist sees the name all the same.
        command = self.touch_command().encode()
        payload = (
            b"\x80\x04" + b"\x8c\x02os\x940" + b"\x8c\x06system\x940"
            + b"h\x00h\x01\x93" + b"\x8c" + bytes([len(command)]) + command + b"\x85R."
        )
        self.assert_never_runs(payload, "os.system", "not on the allowlist")

    def test_zip_bomb_data_pkl(self):
        stream, crc = deflated_zeros(BOMB_BYTES)
        path = self.tmp / "bomb.th"
        write_zip(path, [
            ("archive/data.pkl", zipfile.ZIP_DEFLATED, stream, crc, BOMB_BYTES),
            stored("archive/version", b"3\n"),
        ])
        with zipfile.ZipFile(path) as archive:  # it is a real bomb
            self.assertEqual(archive.getinfo("archive/data.pkl").file_size, BOMB_BYTES)
            with archive.open("archive/data.pkl") as member:
                self.assertEqual(member.read(1 << 20), bytes(1 << 20))
        rc, stderr, peak = run_measured(path, "-o", self.tmp / "out.safetensors")
        self.assertLess(peak, BOMB_RSS_LIMIT_BYTES)
        self.assertEqual(rc, 1, stderr)
        self.assertIn(f"archive/data.pkl would inflate from {len(stream)} to {BOMB_BYTES}", stderr)
        self.assertIn("zip bomb", stderr)
        self.assertLess(peak, BOMB_RSS_LIMIT_BYTES)

    def test_zip_bomb_storage(self):
        numel = BOMB_BYTES // 4
        stream, crc = deflated_zeros(BOMB_BYTES)
        path = self.tmp / "bomb.th"
        write_zip(path, [
            stored("archive/data.pkl", package_pickle(storage_pickle(numel))),
            ("archive/data/0", zipfile.ZIP_DEFLATED, stream, crc, BOMB_BYTES),
        ])
        rc, stderr, peak = run_measured(path, "-o", self.tmp / "out.safetensors")
        self.assertLess(peak, BOMB_RSS_LIMIT_BYTES)
        self.assertEqual(rc, 1, stderr)
        self.assertIn(f"archive/data/0 would inflate from {len(stream)} to {BOMB_BYTES}", stderr)
        self.assertLess(peak, BOMB_RSS_LIMIT_BYTES)

    def test_oversized_pickle_is_refused_before_reading(self):
        # A stored data.pkl over the 16 MiB a pickle may have (a list of 9M ints).
        count = 9 << 20
        payload = b"\x80\x02](" + b"K\x01" * count + b"e."
        path = self.tmp / "big.th"
        zip_with_pickle(path, payload)
        rc, stderr, peak = run_measured(path, "-o", self.tmp / "out.safetensors")
        self.assertEqual(rc, 1, stderr)
        self.assertIn("archive/data.pkl declares", stderr)
        self.assertLess(peak, BOMB_RSS_LIMIT_BYTES)

    def test_zero_strides_cannot_expand_a_tensor(self):
        # 16 bytes of storage viewed as a 1,000,000 x 1,000,000 tensor: 4 TB of float32.
        payload = storage_pickle(4, size=(1000000, 1000000), stride=(0, 0))
        path = self.tmp / "strides.th"
        zip_with_pickle(path, package_pickle(payload), storages={"0": bytes(16)})
        rc, stderr, peak = run_measured(path, "-o", self.tmp / "out.safetensors")
        self.assertLess(peak, BOMB_RSS_LIMIT_BYTES)
        self.assertEqual(rc, 1, stderr)
        self.assertIn("1000000000000 elements", stderr)
        self.assertIn("from a storage of 4", stderr)
        self.assertLess(peak, BOMB_RSS_LIMIT_BYTES)

    def test_recursion_bomb_nested_lists(self):
        # 200,000 nested lists (tuples) as an argument: walking it to JSON ended in a
        # RecursionError traceback.
        depth = 200000
        path = self.tmp / "lists.th"
        lists = text("t_cape_glob_loc_scale") + b"]" * depth + b"a" * (depth - 1)
        zip_with_pickle(path, package_pickle(kwargs=lists), storages={"0": bytes(16)})
        self.assert_refused(path, "nests objects more than 100 levels deep")
        tuples = text("t_cape_glob_loc_scale") + b")" + b"\x85" * depth
        legacy_with_pickle(
            path, package_pickle(kwargs=tuples), b"\x80\x02]q\x00" + text("0") + b"a.",
            struct.pack("<q", 4) + bytes(16),
        )
        self.assert_refused(path, "nests objects more than 100 levels deep")

    def test_recursion_bomb_nested_tuple_as_a_key(self):
        # Hashing a tuple nested a million deep overflowed the C stack (SIGSEGV).
        path = self.tmp / "tuples.th"
        zip_with_pickle(path, b"\x80\x02}" + b")" + b"\x85" * 1000000 + b"K\x01s.")
        proc = self.assert_refused(path, "nests objects more than 100 levels deep")
        self.assertEqual(proc.returncode, 1)

    def test_nesting_hidden_behind_the_memo(self):
        # L_i = [] is memoized while empty, then given 90 lists around L_(i-1): twelve
        # times over that is 1,093 levels, though no opcode's operands are deeper than
        # 92 (the opcode walk cannot see it; the walk of the result does).
        prefix = b"]q\x000"
        for i in range(1, 13):
            prefix += b"]q" + bytes([i]) + b"]" * 90 + b"h" + bytes([i - 1]) + b"a" * 91 + b"0"
        deep = text("t_cape_glob_loc_scale") + b"h\x0c"
        path = self.tmp / "memo.th"
        zip_with_pickle(path, package_pickle(kwargs=deep, prefix=prefix), storages={"0": bytes(16)})
        self.assert_refused(path, "nests objects more than 100 levels deep")

    def test_opcode_over_the_end_of_its_frame(self):
        # pickletools walks frames as plain opcodes; the C unpickler reads a frame as one
        # block and an opcode running over its end another way: the walk would have
        # checked another pickle than the one loaded (a fuzzed one grew the unpickler's
        # memo past 1 GiB that way; its input is tests/fuzz/pickle/frame_overrun_oom.pkl).
        body = b"]G" + struct.pack(">d", 1.5) + b"a."
        framed = b"\x80\x04\x95" + struct.pack("<Q", 3) + body  # the frame ends in the float
        path = self.tmp / "frame.th"
        zip_with_pickle(path, framed)
        self.assert_refused(path, "an opcode runs over the end of its frame")
        nested = b"\x80\x04\x95" + struct.pack("<Q", 20) + b"\x95" + struct.pack("<Q", 2) + b"N."
        zip_with_pickle(path, nested)
        self.assert_refused(path, "a frame inside a frame")

    def test_self_containing_structure(self):
        path = self.tmp / "cycle.th"
        for cycle in (b"]q\x00h\x00a", b"]q\x00h\x00\x85a"):  # L.append(L), L.append((L,))
            with self.subTest(cycle=cycle):
                kwargs = text("t_cape_glob_loc_scale") + cycle
                zip_with_pickle(path, package_pickle(kwargs=kwargs), storages={"0": bytes(16)})
                self.assert_refused(path, "contains itself")

    def test_storage_numel_beyond_the_member(self):
        path = self.tmp / "short.th"
        zip_with_pickle(path, storage_pickle(1000), storages={"0": bytes(16)})
        self.assert_refused(
            path, "storage archive/data/0 has 16 bytes, its 1000 float32 elements need 4000"
        )
        # legacy: the storage list claims 1000 elements, the file ends after 16 bytes
        legacy_with_pickle(
            path, storage_pickle(1000), b"\x80\x02]q\x00" + text("0") + b"a.",
            struct.pack("<q", 1000) + bytes(16),
        )
        self.assert_refused(path, "legacy storage 0 is truncated")

    def test_legacy_view_outside_its_storage(self):
        view = b"(" + text("0") + b"K\x08K\x08t"  # elements 8..16 of a 4-element storage
        legacy_pickle = package_pickle(storage_pickle(4, size=(8,))).replace(
            text("cpu") + b"J" + struct.pack("<i", 4) + b"tQ",
            text("cpu") + b"J" + struct.pack("<i", 4) + view + b"tQ",
        )
        path = self.tmp / "view.th"
        legacy_with_pickle(
            path, legacy_pickle, b"\x80\x02]q\x00" + text("0") + b"a.",
            struct.pack("<q", 4) + bytes(16),
        )
        self.assert_refused(path, "malformed storage view")

    def test_fraction_exponent_is_refused_quickly(self):
        # Fraction("1e999999999") computes 10**999999999: minutes of CPU and ~400 MB.
        payload = b"\x80\x02cfractions\nFraction\n" + text("1e999999999") + b"\x85R."
        path = self.tmp / "fraction.th"
        zip_with_pickle(path, payload)
        started = time.monotonic()
        self.assert_refused(path, "fractions.Fraction called with the string '1e999999999'")
        self.assertLess(time.monotonic() - started, 30)
        zip_with_pickle(path, b"\x80\x02cfractions\nFraction\nK\x01K\x00\x86R.")
        self.assert_refused(path, "zero denominator")

    def test_state_cannot_be_set_into_allowlisted_objects(self):
        # BUILD on an allowlisted callable, a Fraction, a numpy dtype (with a state
        # numpy's own __setstate__ would have been handed)
        # (3, '<', 1, None, None, -1, -1, 0): a dtype state with a subarray field
        state = b"(K\x03" + text("<") + b"K\x01NN" + b"J\xff\xff\xff\xff" * 2 + b"K\x00t"
        for target, needle in (
            (b"ccollections\nOrderedDict\n", "set the state of collections.OrderedDict"),
            (b"cfractions\nFraction\nK\x01K\x02\x86R", "set the state of a Fraction"),
            (b"cnumpy\ndtype\n" + text("f8") + b"\x89\x88\x87R", "numpy dtype with an unexpected"),
        ):
            with self.subTest(target=target):
                path = self.tmp / "build.th"
                zip_with_pickle(path, b"\x80\x02" + target + state + b"b.")
                self.assert_refused(path, needle)
        # (None, {'_denominator': 0}) into the segment: Fraction(1, 0) ended in a
        # ZeroDivisionError traceback
        zero = b"cfractions\nFraction\nK\x01K\x02\x86R(N}" + text("_denominator") + b"K\x00stb"
        path = self.tmp / "segment.th"
        zip_with_pickle(path, package_pickle(segment=zero), storages={"0": bytes(16)})
        self.assert_refused(path, "set the state of a Fraction")

    def test_state_dict_attributes_cannot_shadow_its_methods(self):
        # torch restores a state_dict's `_metadata` with BUILD; an `items` attribute in
        # its place made `state.items()` call the attribute (an OrderedDict).
        target = self.tmp / "items.th"
        rewrite_zip(
            ROOT / "tests" / "fuzz" / "checkpoint" / "zip_half.th",
            target,
            edit_pickle=lambda d: d.replace(b"X\x09\x00\x00\x00_metadata", text("items")),
        )
        with zipfile.ZipFile(target) as archive:
            edited = archive.read("archive/data.pkl")
        self.assertTrue(text("items") in edited, "the seed has no BUILD on its state_dict")
        self.convert(target)

    def test_text_that_no_stream_can_print(self):
        # A lone surrogate (UTF-8 bytes ED A0 80, which pickle decodes with
        # "surrogatepass") in t_emb ended in a UnicodeEncodeError when it was printed.
        value = b"X\x03\x00\x00\x00\xed\xa0\x80"
        path = self.tmp / "surrogate.th"
        kwargs = text("t_emb") + value
        zip_with_pickle(path, package_pickle(kwargs=kwargs), storages={"0": bytes(16)})
        self.assert_refused(path, "not valid UTF-8")

    def test_control_characters_are_printed_escaped(self):
        path = self.tmp / "escape.th"
        kwargs = text("t_emb") + text("\x1b]0;title\x07")
        zip_with_pickle(path, package_pickle(kwargs=kwargs), storages={"0": bytes(16)})
        proc = run(CONVERT, path, "-o", self.tmp / "out.safetensors")
        self.assertNotIn("\x1b", proc.stdout + proc.stderr)
        self.assertIn("t_emb=\"\\u001b]0;title\\u0007\"", proc.stdout)
        # and in an error message quoting a global's name
        (self.tmp / "out.safetensors").unlink(missing_ok=True)
        zip_with_pickle(path, b"\x80\x02cos\x1b[2J\nsystem\n.")
        proc = self.assert_refused(path, "os\\x1b[2J.system")
        self.assertNotIn("\x1b", proc.stderr)

    def test_scalar_tensor_keeps_its_shape(self):
        # A 0-d tensor came out of ascontiguousarray as shape (1,) and failed the write.
        _, out = self.convert(ROOT / "tests" / "fuzz" / "checkpoint" / "zip_mixed_dtypes.th")
        tensors = {name: (shape, array) for name, _, shape, array in read_safetensors(out)[2]}
        self.assertEqual(tensors["0.c.scale"][0], [])
        self.assertEqual(float(tensors["0.c.scale"][1]), 4.0)
        self.assertEqual(tensors["0.b.weight"][1].tolist(), [1.0, 2.0, -1.0])  # bfloat16


class ArgumentHandling(unittest.TestCase):
    def test_table_matches_the_recorded_signature(self):
        recorded = EXPECTED["htdemucs_signature"]
        table = [
            [name, None if d is htdemucs_args.REQUIRED else d, d is htdemucs_args.REQUIRED]
            for name, d in htdemucs_args.HTDEMUCS_PARAMETERS
        ]
        self.assertEqual(table, recorded)

    def test_bind_fills_defaults_and_drops_unknown_names(self):
        bound, dropped = htdemucs_args.bind_arguments(
            (["a", "b"], 1), {"depth": 3, "old_option": 7}
        )
        self.assertEqual(dropped, ["old_option"])
        self.assertEqual(bound["audio_channels"], 1)
        self.assertEqual(bound["depth"], 3)
        self.assertEqual(bound["nfft"], 4096)
        self.assertEqual(
            list(htdemucs_args.json_kwargs(bound)), list(htdemucs_args.PARAMETER_NAMES)
        )

    def test_bind_errors(self):
        with self.assertRaises(htdemucs_args.ArgumentError):
            htdemucs_args.bind_arguments((["a"],), {"sources": ["a"]})
        with self.assertRaises(htdemucs_args.ArgumentError):
            htdemucs_args.bind_arguments((), {"depth": 2})
        with self.assertRaises(htdemucs_args.ArgumentError):
            htdemucs_args.bind_arguments((), {"sources": ["a", "a"]})
        with self.assertRaises(htdemucs_args.ArgumentError):
            htdemucs_args.bind_arguments((), {"sources": ["a"], "samplerate": 44100.5})

    def test_segment_arithmetic(self):
        from fractions import Fraction

        self.assertEqual(htdemucs_args.segment_samples(Fraction(39, 5), 44100), 343980)
        self.assertEqual(htdemucs_args.segment_samples(10, 44100), 441000)
        # A float segment follows HTDemucs' own float product.
        self.assertEqual(htdemucs_args.segment_samples(0.1, 30), int(0.1 * 30))
        self.assertEqual(htdemucs_args.segment_samples(Fraction(1, 10), 30), 3)
        self.assertEqual(htdemucs_args.segment_text(Fraction(39, 5)), "7.8")
        self.assertEqual(htdemucs_args.segment_text(Fraction(7, 2)), "3.5")
        self.assertEqual(htdemucs_args.segment_text(Fraction(1, 200)), "0.005")
        self.assertEqual(htdemucs_args.segment_text(Fraction(1, 3)), repr(1 / 3))
        self.assertEqual(htdemucs_args.segment_text(11), "11")

    def test_checksum_prefix(self):
        self.assertEqual(official_models.checksum_prefix("955717e8-8726e21a.th"), "8726e21a")
        self.assertIsNone(official_models.checksum_prefix("model.th"))


class EngineRules(TempDirTest):
    """The converter refuses what the engine would (models/convert_lib/engine_rules.py
    mirrors models/model.c and htdemucs.c), with the engine's words."""

    HPARAM_CASES = [
        ({"stride": 0}, "hyperparameter stride = 0: must be an integer in [1, 64]"),
        ({"norm_groups": 0}, "hyperparameter norm_groups = 0: must be an integer in [1, 16384]"),
        ({"kernel_size": 0}, "hyperparameter kernel_size = 0: must be an integer in [1, 64]"),
        ({"time_stride": 0}, "hyperparameter time_stride = 0: must be an integer in [1, 64]"),
        ({"growth": 0}, "hyperparameter growth = 0: must be a number in (0, 16]"),
        ({"growth": 1e30}, "hyperparameter growth = 1e+30: must be a number in (0, 16]"),
        ({"channels": 10**10},
         "hyperparameter channels = 10000000000: must be an integer in [1, 16384]"),
        ({"context_enc": 2**30},
         "hyperparameter context_enc = 1073741824: must be an integer in [0, 16]"),
        ({"nfft": 1000}, "hyperparameter nfft = 1000: must be a power of two in [16, 65536]"),
        ({"norm_groups": -1}, "hyperparameter norm_groups = -1: must be an integer in [1, 16384]"),
        ({"norm_groups": 3, "norm_starts": 0},
         "hyperparameter norm_groups = 3: must divide the channel count of every normalized "
         "layer"),
        ({"growth": 0.01}, "hyperparameter growth = 0.01: encoder layer 1 would have 0 channels"),
        ({"kernel_size": 3}, "hyperparameter kernel_size = 3: with stride 4, encoder layer 0"),
        ({"dconv_comp": 1e-300}, "hyperparameter dconv_comp = 1e-300:"),
        ({"t_heads": 5}, "hyperparameter t_heads = 5: the transformer dimension"),
    ]

    def converted(self):
        _, out = self.convert(fixture("a_half"))
        with open(out, "rb") as f:
            blob = f.read()
        (hlen,) = struct.unpack("<Q", blob[:8])
        return json.loads(blob[8 : 8 + hlen]), blob[8 + hlen :]

    def test_path_source_name_is_refused(self):
        target = self.tmp / "evil.th"
        rewrite_zip(fixture("a_half"), target, edit_pickle=lambda d: d.replace(b"vocals", b"../../"))
        proc, out = self.convert(target, rc=1)
        self.assertIn('source name "../../": must match [A-Za-z0-9_-]{1,31}', proc.stderr)
        self.assertFalse(out.exists())

    def test_duplicate_source_names_are_refused(self):
        target = self.tmp / "dup.th"
        rewrite_zip(fixture("a_half"), target, edit_pickle=lambda d: d.replace(b"other", b"drums"))
        proc, out = self.convert(target, rc=1)
        self.assertIn('source name "drums" appears twice: names must be distinct', proc.stderr)
        self.assertFalse(out.exists())

    def test_hyperparameters_are_refused_with_the_engine_words(self):
        for edit, message in self.HPARAM_CASES:
            with self.subTest(edit=edit):
                kwargs = dict({"sources": ["drums", "bass", "other", "vocals"]}, **edit)
                with self.assertRaises(htdemucs_args.ArgumentError) as ctx:
                    htdemucs_args.bind_arguments((), kwargs)
                self.assertIn(message, str(ctx.exception))

    def test_segment_samples_rules(self):
        with self.assertRaises(engine_rules.RuleError) as ctx:
            engine_rules.check_segment_samples(4294971706, [4096])
        self.assertIn('metadata "segment_samples" = 4294971706: must be an integer', str(ctx.exception))
        with self.assertRaises(engine_rules.RuleError):
            engine_rules.check_segment_samples(100, [4096])

    def test_same_text_as_the_engine(self):
        """Each refused description gives the converter and the C loader the same text."""
        if not WORKERD.exists():
            self.skipTest(f"{WORKERD} is not built")
        header, data = self.converted()
        meta = header["__metadata__"]
        sources = json.loads(meta["sources"])
        base = json.loads(meta["models"])
        cases = [(edit, None) for edit, _ in self.HPARAM_CASES]
        cases += [(None, ["/../../pwned"] + sources[1:]), (None, ["a"] * len(sources))]
        for edit, new_sources in cases:
            with self.subTest(edit=edit, sources=new_sources):
                models = json.loads(json.dumps(base))
                if edit:
                    models[0]["kwargs"].update(edit)
                meta2 = dict(meta, models=json.dumps(models))
                if new_sources:
                    meta2["sources"] = json.dumps(new_sources)
                text = json.dumps(dict(header, __metadata__=meta2)).encode()
                text += b" " * ((-len(text)) % 8)
                path = self.tmp / "variant.safetensors"
                path.write_bytes(struct.pack("<Q", len(text)) + text + data)
                proc = subprocess.run(
                    [str(WORKERD), "separate", "-n", str(path), "-o", str(self.tmp / "o"), "x.wav"],
                    capture_output=True, text=True,
                )
                self.assertEqual(proc.returncode, 1, proc.stderr)
                try:
                    if new_sources:
                        engine_rules.check_sources(new_sources)
                    else:
                        engine_rules.check_hparams(models[0]["kwargs"], len(sources))
                    self.fail("the converter's rules accept it")
                except engine_rules.RuleError as exc:
                    self.assertIn(str(exc), proc.stderr.strip())


class GetWeights(TempDirTest):
    def setUp(self):
        super().setUp()
        self.cache = self.tmp / "torch" / "hub" / "checkpoints"
        self.out = self.tmp / "weights"
        self.env = {"TORCH_HOME": str(self.tmp / "torch")}
        self.catalog = self.tmp / "catalog.json"
        self.refusing = refusing_socket()
        self.addCleanup(self.refusing.close)
        self.dead_url = f"http://127.0.0.1:{self.refusing.getsockname()[1]}/"

    def write_catalog(self, url=None, **models):
        entries = {}
        for name, spec in models.items():
            entries[name] = dict(spec)
            if url:
                entries[name]["url"] = url
        self.catalog.write_text(json.dumps(entries))

    def get(self, name, *extra, rc=0):
        return run(
            GET_WEIGHTS,
            name,
            "--dir",
            self.out,
            "--catalog",
            self.catalog,
            *extra,
            env=self.env,
            check_rc=rc,
        )

    def test_from_torch_hub_cache_then_nothing_to_do(self):
        self.cache.mkdir(parents=True)
        shutil.copy(fixture("a_half"), self.cache)
        self.write_catalog(url=self.dead_url, tiny={"files": [FILES["a_half"]]})
        proc = self.get("tiny")
        self.assertIn("using", proc.stderr)
        output = self.out / "tiny.safetensors"
        direct = self.tmp / "direct.safetensors"
        run(CONVERT, fixture("a_half"), "-o", direct, "--name", "tiny", check_rc=0)
        self.assertEqual(output.read_bytes(), direct.read_bytes())
        stamp = output.stat().st_mtime_ns
        proc = self.get("tiny")
        self.assertIn("nothing to do", proc.stdout)
        self.assertEqual(output.stat().st_mtime_ns, stamp)
        self.get("tiny", "--force")
        self.assertNotEqual(output.stat().st_mtime_ns, stamp)

    def test_stale_output_is_rebuilt(self):
        self.cache.mkdir(parents=True)
        shutil.copy(fixture("a_half"), self.cache)
        shutil.copy(fixture("b_half"), self.cache)
        self.write_catalog(url=self.dead_url, tiny={"files": [FILES["b_half"]]})
        self.get("tiny")
        self.write_catalog(url=self.dead_url, tiny={"files": [FILES["a_half"]]})
        proc = self.get("tiny")
        self.assertIn("rebuilding", proc.stdout)
        models = json.loads(read_safetensors(self.out / "tiny.safetensors")[1]["models"])
        self.assertEqual(models[0]["signature"], "tiny_a")

    def test_bag_downloaded_over_file_url(self):
        weights = [[1, 0, 0, 0], [0, 1, 1, 1]]
        self.write_catalog(
            url=FIXTURES.as_uri() + "/",
            pair={"files": [FILES["a_half"], FILES["b_half"]], "weights": weights},
        )
        proc = self.get("pair")
        self.assertIn("downloading", proc.stderr)
        self.assertEqual(
            sorted(p.name for p in self.cache.iterdir()), sorted([FILES["a_half"], FILES["b_half"]])
        )
        metadata = read_safetensors(self.out / "pair.safetensors")[1]
        self.assertEqual(json.loads(metadata["weights"]), weights)
        self.assertEqual(len(json.loads(metadata["models"])), 2)

    def test_download_over_http(self):
        with http_server(FIXTURES) as url:
            self.write_catalog(url=url, tiny={"files": [FILES["b_half"]]})
            self.get("tiny")
        self.assertTrue((self.cache / FILES["b_half"]).exists())
        self.assertTrue((self.out / "tiny.safetensors").exists())

    def test_http_404_is_a_clear_failure(self):
        with http_server(self.tmp) as url:
            self.write_catalog(url=url, tiny={"files": [FILES["b_half"]]})
            proc = self.get("tiny", rc=2)
        self.assertIn("404", proc.stderr)
        self.assertFalse(self.out.exists())

    def test_checksum_mismatch_in_cache(self):
        self.cache.mkdir(parents=True)
        (self.cache / FILES["a_half"]).write_bytes(fixture("b_half").read_bytes())
        self.write_catalog(url=self.dead_url, tiny={"files": [FILES["a_half"]]})
        proc = self.get("tiny", rc=2)
        self.assertIn("fails its checksum", proc.stderr)
        self.assertIn("delete it and rerun", proc.stderr)
        self.assertFalse((self.out / "tiny.safetensors").exists())

    def test_checksum_mismatch_on_download_keeps_nothing(self):
        served = self.tmp / "served"
        served.mkdir()
        (served / FILES["a_half"]).write_bytes(fixture("b_half").read_bytes())
        self.write_catalog(url=served.as_uri() + "/", tiny={"files": [FILES["a_half"]]})
        proc = self.get("tiny", rc=2)
        self.assertIn("checksum mismatch", proc.stderr)
        self.assertEqual(list(self.cache.iterdir()), [])
        self.assertFalse(self.out.exists())

    def test_offline_official_model_says_what_to_do(self):
        proc = run(
            GET_WEIGHTS,
            "htdemucs",
            "--dir",
            self.out,
            "--base-url",
            self.dead_url,
            env=self.env,
            check_rc=2,
        )
        self.assertIn("955717e8-8726e21a.th", proc.stderr)
        self.assertIn(str(self.cache), proc.stderr)
        self.assertIn("rerun", proc.stderr)
        self.assertEqual(list(self.cache.iterdir()), [])

    def test_offline_via_environment_base_url(self):
        env = dict(self.env, SEP_WEIGHTS_URL=self.dead_url, SEP_MODELS=str(self.out))
        proc = run(GET_WEIGHTS, "htdemucs_ft", env=env, check_rc=2)
        self.assertIn(self.dead_url + "f7e0c4bc-ba3fe64a.th", proc.stderr)

    def test_unknown_model(self):
        proc = run(GET_WEIGHTS, "htdemucs_xl", "--dir", self.out, env=self.env)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("unknown model", proc.stderr)

    def test_official_catalog(self):
        catalog = official_models.load_catalog()
        self.assertEqual(catalog["htdemucs"]["files"], ["955717e8-8726e21a.th"])
        self.assertEqual(catalog["htdemucs_6s"]["files"], ["5c90dfd2-34c22ccb.th"])
        self.assertEqual(len(catalog["htdemucs_ft"]["files"]), 4)
        self.assertEqual(
            catalog["htdemucs"]["url"], "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/"
        )
        proc = run(GET_WEIGHTS, "--list", check_rc=0)
        self.assertIn("htdemucs_ft", proc.stdout)


@unittest.skipUnless(REFERENCE, "the PyTorch reference (torch + demucs in build/refvenv) is not installed")
class AgainstDemucs(TempDirTest):
    def reference(self, *args):
        proc = subprocess.run(
            [str(REFVENV_PYTHON), str(REFERENCE_CHECK), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            self.fail(f"reference_check {args[0]} failed:\n{proc.stderr}")
        return json.loads(proc.stdout)

    def test_signature_table_matches_installed_demucs(self):
        table = [
            [name, None if d is htdemucs_args.REQUIRED else d, d is htdemucs_args.REQUIRED]
            for name, d in htdemucs_args.HTDEMUCS_PARAMETERS
        ]
        self.assertEqual(table, self.reference("signature"))

    def test_catalog_matches_demucs_release_lists(self):
        catalog = official_models.load_catalog()
        for name, entry in self.reference("catalog").items():
            self.assertEqual(entry["roots"], ["hybrid_transformer/"], name)
            self.assertEqual(catalog[name]["files"], entry["files"], name)
            expected = entry["weights"]
            self.assertEqual(catalog[name]["weights"], expected, name)

    def test_round_trip_through_demucs(self):
        for label in ("a_half", "b_half"):
            _, out = self.convert(fixture(label))
            result = self.reference("roundtrip", fixture(label), out)
            self.assertTrue(result["keys_equal"], label)
            self.assertEqual(result["max_state_diff"], 0.0, label)
            self.assertEqual(result["max_output_diff"], 0.0, label)
            self.assertTrue(result["segment_equal"], label)

    def test_full_size_htdemucs(self):
        made = self.reference("full-size", self.tmp)
        self.assertEqual(made["parameters"], 41984456)
        proc, out = self.convert(made["file"], extra=("--name", "htdemucs"))
        self.assertIn("parameters 41,984,456", proc.stdout)
        _, metadata, tensors = read_safetensors(out)
        self.assertEqual(len(tensors), made["tensors"])
        self.assertEqual(sum(t[3].size for t in tensors), 41984456)
        self.assertEqual(metadata["segment_samples"], "343980")
        self.assertEqual(metadata["segment"], "7.8")
        kwargs = json.loads(metadata["models"])[0]["kwargs"]
        self.assertEqual(
            (kwargs["dconv_mode"], kwargs["bottom_channels"], kwargs["t_layers"]), (3, 512, 5)
        )


def main():
    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    bad = len(result.failures) + len(result.errors)
    print(f"CASES: {result.testsRun - len(result.skipped) - bad} passed, {bad} failed, "
          f"{len(result.skipped)} skipped")
    if not result.wasSuccessful():
        return 1
    ran = result.testsRun - len(result.skipped)
    note = (
        "with demucs cross-checks"
        if REFERENCE
        else "demucs cross-checks skipped (no torch + demucs in build/refvenv)"
    )
    print(f"PASS test-convert: {ran} tests passed, {len(result.skipped)} skipped; {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
