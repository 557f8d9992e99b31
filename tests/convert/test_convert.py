"""Tests for models/convert and models/get-weights (`make test-convert`).

Runs with the system python3 + numpy only. Fixtures in tests/fixtures/convert/ were
made by demucs itself (tests/convert/make_checkpoints.py): the converted files must
reproduce their tensors exactly (float16 states as the exact float16 values), every
HTDemucs argument and the segment length. Error paths: corrupt archives, forbidden
pickle globals, unsupported classes and quantized states, bag mismatches, checksum
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
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import unittest
import zipfile

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
