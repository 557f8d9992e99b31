"""The engine's rules for a weights file's description, mirrored from the C loader.

models/model.c (metadata: sources, segment_samples) and models/htdemucs.c
(htd_parse_hparams: every hyperparameter's range, then the structure walked with
64-bit counts) refuse a file whose description they cannot run safely. The converter
applies the same rules, in the same order and with the same message text, so that a
checkpoint the engine would refuse is refused at conversion time with the words the
CLI and the daemon would use: "hyperparameter NAME = VALUE: RULE",
'source name "NAME": must match [A-Za-z0-9_-]{1,31}', ...
The caps are those of models/htdemucs.h and models/engine.h (listed in FORMAT.md).
"""

import math
import numbers
import re

MAX_AUDIO_CHANNELS = 8
MAX_CHANNELS = 16384
MAX_GROWTH = 16
MAX_NFFT = 65536
MAX_KERNEL = 64
MAX_STRIDE = 64
MAX_CONTEXT = 16
MAX_NORM_STARTS = 64
MAX_HEADS = 64
MAX_DEPTH = 8
MAX_DCONV = 4
MAX_TLAYERS = 16
MAX_SAMPLERATE = 768000
MAX_SEGMENT = 3600
SOURCE_NAME_MAX = 31
MAX_SEGMENT_SAMPLES = 1 << 24
INT_MAX = 2**31 - 1

_SOURCE_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}" % SOURCE_NAME_MAX)


class RuleError(ValueError):
    """The description breaks one of the engine's rules (message as the engine's)."""


def fmt_value(v):
    """models/htdemucs.c fmt_value: integral values without a fraction, others %g."""
    v = float(v)
    if math.isfinite(v) and v == math.floor(v) and abs(v) < 1e15:
        return "%.0f" % v
    return "%g" % v


def quote_name(name):
    """models/model.c quote_name: printable ASCII kept (quote, backslash escaped),
    other bytes as \\xHH, cut at 48 characters."""
    out = []
    for i, byte in enumerate(name.encode("utf-8", "surrogatepass")):
        if i >= 48:
            out.append("...")
            break
        c = chr(byte)
        if c in '"\\':
            out.append("\\" + c)
        elif byte < 0x20 or byte > 0x7E:
            out.append("\\x%02x" % byte)
        else:
            out.append(c)
    return "".join(out)


def check_sources(sources):
    """Source names become stem file names: [A-Za-z0-9_-]{1,31}, distinct."""
    seen = set()
    for name in sources:
        if not isinstance(name, str) or not _SOURCE_RE.fullmatch(name):
            shown = quote_name(name) if isinstance(name, str) else quote_name(repr(name))
            raise RuleError(
                f'source name "{shown}": must match [A-Za-z0-9_-]{{1,{SOURCE_NAME_MAX}}}'
            )
        if name in seen:
            raise RuleError(f'source name "{name}" appears twice: names must be distinct')
        seen.add(name)


def check_segment_samples(segment_samples, nffts):
    if not (1 <= segment_samples <= MAX_SEGMENT_SAMPLES):
        raise RuleError(
            f'metadata "segment_samples" = {segment_samples}: must be an integer in '
            f"[1, {MAX_SEGMENT_SAMPLES}]"
        )
    for index, nfft in enumerate(nffts):
        if segment_samples < nfft:
            raise RuleError(
                f'metadata "segment_samples" = {segment_samples}: must be at least network '
                f"{index}'s nfft ({nfft})"
            )


class _Reader:
    def __init__(self, kwargs):
        self.kwargs = kwargs

    def fail(self, key, value, rule):
        raise RuleError(f"hyperparameter {key} = {fmt_value(value)}: {rule}")

    def number(self, key):
        if key not in self.kwargs:
            raise RuleError(f'model kwargs: missing "{key}"')
        v = self.kwargs[key]
        if isinstance(v, bool):
            return 1.0 if v else 0.0
        if not isinstance(v, numbers.Real):
            raise RuleError(f'model kwargs: "{key}" is not a number')
        return float(v) if not isinstance(v, numbers.Integral) else v

    def int_in(self, key, lo, hi):
        d = self.number(key)
        if float(d) != math.floor(float(d)) or d < lo or d > hi:
            self.fail(key, d, f"must be an integer in [{lo}, {hi}]")
        return int(d)

    def int_or_null_in(self, key, lo, hi):
        if key in self.kwargs and self.kwargs[key] is None:
            return 0
        return self.int_in(key, lo, hi)

    def real_in(self, key, lo, hi, open_lo):
        d = float(self.number(key))
        if not math.isfinite(d) or (d <= lo if open_lo else d < lo) or d > hi:
            self.fail(
                key,
                d,
                f"must be a number in {'(' if open_lo else '['}{fmt_value(lo)}, {fmt_value(hi)}]",
            )
        return d


def check_hparams(kwargs, n_sources):
    """htd_parse_hparams' range checks and check_structure, in the same order. kwargs:
    the metadata form (htdemucs_args.json_kwargs). Returns the parsed values."""
    r = _Reader(kwargs)
    hp = {"n_sources": n_sources}
    hp["audio_channels"] = r.int_in("audio_channels", 1, MAX_AUDIO_CHANNELS)
    hp["channels"] = r.int_in("channels", 1, MAX_CHANNELS)
    hp["channels_time"] = r.int_or_null_in("channels_time", 0, MAX_CHANNELS)
    hp["growth"] = r.real_in("growth", 0, MAX_GROWTH, True)
    hp["nfft"] = r.int_in("nfft", 16, MAX_NFFT)
    hp["cac"] = r.int_in("cac", 0, 1)
    hp["depth"] = r.int_in("depth", 1, MAX_DEPTH)
    hp["rewrite"] = r.int_in("rewrite", 0, 1)
    r.real_in("freq_emb", -1e6, 1e6, False)
    r.real_in("emb_scale", -1e6, 1e6, False)
    hp["kernel_size"] = r.int_in("kernel_size", 1, MAX_KERNEL)
    hp["time_stride"] = r.int_in("time_stride", 1, MAX_STRIDE)
    hp["stride"] = r.int_in("stride", 1, MAX_STRIDE)
    r.int_in("context", 0, MAX_CONTEXT)
    r.int_in("context_enc", 0, MAX_CONTEXT)
    hp["norm_starts"] = r.int_in("norm_starts", 0, MAX_NORM_STARTS)
    hp["norm_groups"] = r.int_in("norm_groups", 1, MAX_CHANNELS)
    hp["dconv_mode"] = r.int_in("dconv_mode", 0, 3)
    hp["dconv_depth"] = r.int_in("dconv_depth", -MAX_DCONV, MAX_DCONV)
    hp["dconv_comp"] = r.real_in("dconv_comp", 0, MAX_CHANNELS, True)
    hp["bottom_channels"] = r.int_in("bottom_channels", 0, MAX_CHANNELS)
    hp["t_layers"] = r.int_in("t_layers", 0, MAX_TLAYERS)
    tl = hp["t_layers"] > 0
    hp["t_hidden_scale"] = r.real_in("t_hidden_scale", 0, 64, True) if tl else r.number(
        "t_hidden_scale")
    r.number("t_heads")
    hp["t_heads"] = r.int_in("t_heads", 1, MAX_HEADS) if tl else 0
    r.int_in("t_norm_in", 0, 1)
    r.int_in("t_norm_first", 0, 1)
    r.int_in("t_norm_out", 0, INT_MAX)
    if tl:
        r.real_in("t_max_period", 0, 1e12, True)
    else:
        r.number("t_max_period")
    r.int_in("t_layer_scale", 0, 1)
    r.int_in("t_gelu", 0, 1)
    r.real_in("t_weight_pos_embed", -1e6, 1e6, False)
    r.int_in("t_cape_mean_normalize", 0, 1)
    r.int_in("t_cross_first", 0, 1)
    hp["samplerate"] = r.int_in("samplerate", 1, MAX_SAMPLERATE)
    r.real_in("segment", 0, MAX_SEGMENT, True)
    r.int_in("use_train_segment", 0, 1)
    if hp["nfft"] & (hp["nfft"] - 1):
        r.fail("nfft", hp["nfft"], f"must be a power of two in [16, {MAX_NFFT}]")
    if n_sources < 1:
        r.fail("sources", n_sources, "needs at least one source")
    _check_structure(r, hp)
    return hp


def _check_count(r, key, keyval, count, what, layer):
    if not (count >= 1 and count <= MAX_CHANNELS):
        r.fail(
            key,
            keyval,
            f"{what} {layer} would have {fmt_value(count)} channels, every count must be in "
            f"[1, {MAX_CHANNELS}]",
        )


def _check_structure(r, hp):
    """models/htdemucs.c check_structure, line for line."""
    S, C = hp["n_sources"], hp["audio_channels"]
    groups = hp["norm_groups"]

    def check_groups(channels, what, layer):
        if channels % groups != 0:
            r.fail(
                "norm_groups",
                groups,
                f"must divide the channel count of every normalized layer ({what} {layer} "
                f"has {channels})",
            )

    def check_dconv(channels, what, layer):
        if hp["dconv_depth"] == 0:
            return
        hidden = channels / hp["dconv_comp"]
        hidden = math.floor(hidden) if math.isfinite(hidden) else hidden
        if not (1 <= hidden <= MAX_CHANNELS):
            r.fail(
                "dconv_comp",
                hp["dconv_comp"],
                f"the DConv of {what} {layer} would have {fmt_value(hidden)} hidden channels "
                f"({channels} / dconv_comp), it needs [1, {MAX_CHANNELS}]",
            )

    chin, chin_z = C, 2 * C
    chout = float(hp["channels_time"] or hp["channels"])
    chout_z = float(hp["channels"])
    freqs = hp["nfft"] // 2
    depth, kernel, stride, tstride = hp["depth"], hp["kernel_size"], hp["stride"], hp["time_stride"]
    _check_count(r, "audio_channels", C, 2 * C * S, "the output layer", 0)
    for index in range(depth):
        norm = index >= hp["norm_starts"]
        freq = freqs > 1
        ker = kernel if freq else 2 * tstride
        stri = stride if freq else tstride
        last_freq = False
        if freq and freqs <= kernel:
            ker = freqs
            last_freq = True
        if last_freq:
            chout_z = max(chout, chout_z)
            chout = chout_z
        _check_count(r, "growth", hp["growth"], chout_z, "encoder layer", index)
        _check_count(r, "growth", hp["growth"], chout, "time encoder layer", index)
        cz, ct = int(chout_z), int(chout)
        if freq and not last_freq:
            p = ker // 4
            out = (freqs + 2 * p - ker) // stri + 1 if freqs + 2 * p >= ker else 0
            if freqs % stri != 0 or out != freqs // stri or (out - 1) * stri + ker - 2 * p != freqs:
                r.fail(
                    "kernel_size",
                    kernel,
                    f"with stride {stri}, encoder layer {index} maps {freqs} frequency bins to "
                    f"{out}, not {freqs} / {stri} (and back)",
                )
        if norm:
            check_groups(cz, "encoder layer", index)
            if hp["rewrite"]:
                check_groups(2 * cz, "encoder layer", index)
        if hp["dconv_mode"] & 1:
            check_dconv(cz, "encoder layer", index)
        if freq and not last_freq:
            if norm:
                check_groups(ct, "time encoder layer", index)
                if hp["rewrite"]:
                    check_groups(2 * ct, "time encoder layer", index)
            if hp["dconv_mode"] & 1:
                check_dconv(ct, "time encoder layer", index)
        if index == 0:
            chin = C * S
            chin_z = 2 * chin
        if norm:
            check_groups(chin_z, "decoder layer", depth - 1 - index)
            if hp["rewrite"]:
                check_groups(2 * cz, "decoder layer", depth - 1 - index)
        if hp["dconv_mode"] & 2:
            check_dconv(cz, "decoder layer", depth - 1 - index)
        if freq:
            if norm:
                check_groups(chin, "time decoder layer", index)
            if not last_freq:
                if norm and hp["rewrite"]:
                    check_groups(2 * ct, "time decoder layer", index)
                if hp["dconv_mode"] & 2:
                    check_dconv(ct, "time decoder layer", index)
        chin, chin_z = ct, cz
        chout = math.floor(hp["growth"] * ct)
        chout_z = math.floor(hp["growth"] * cz)
        if freq:
            freqs = 1 if freqs <= kernel else freqs // stride
    tc = math.floor(hp["channels"] * math.pow(hp["growth"], depth - 1))
    _check_count(r, "growth", hp["growth"], tc, "the transformer input", 0)
    if (hp["t_layers"] > 0 or hp["bottom_channels"]) and (tc != chin_z or tc != chin):
        r.fail(
            "growth",
            hp["growth"],
            f"the transformer takes channels * growth^(depth - 1) = {tc} channels, the last "
            f"encoder layers give {chin_z} and {chin}",
        )
    if hp["bottom_channels"]:
        tc = hp["bottom_channels"]
    if hp["t_layers"] > 0:
        if tc % hp["t_heads"] != 0 or tc % 4 != 0:
            r.fail(
                "t_heads",
                hp["t_heads"],
                f"the transformer dimension {tc} must be a multiple of 4 and of t_heads",
            )
        hidden = math.floor(tc * hp["t_hidden_scale"])
        if not (1 <= hidden <= 4 * MAX_CHANNELS):
            r.fail(
                "t_hidden_scale",
                hp["t_hidden_scale"],
                f"the transformer's hidden size would be {fmt_value(hidden)}, it needs "
                f"[1, {4 * MAX_CHANNELS}]",
            )
