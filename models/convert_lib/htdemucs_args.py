"""HTDemucs constructor arguments: the signature table and their normalisation.

demucs saves a model as `klass(*args, **kwargs)` with only the arguments the training
run passed explicitly. The weights file must carry every argument (models/FORMAT.md),
so this module maps positional arguments onto names, drops names HTDemucs no longer
takes (as demucs' own non-strict loader does), fills defaults, and turns the values
into JSON. HTDEMUCS_PARAMETERS mirrors `demucs.htdemucs.HTDemucs.__init__` of demucs
4.x in order (order matters for positional arguments); tests compare it with
`inspect.signature` whenever the PyTorch reference is installed.
"""

from fractions import Fraction
import numbers

from . import engine_rules

REQUIRED = object()  # marker: the parameter has no default

# (name, default) in the order of HTDemucs.__init__ (self excluded).
HTDEMUCS_PARAMETERS = (
    ("sources", REQUIRED),
    ("audio_channels", 2),
    ("channels", 48),
    ("channels_time", None),
    ("growth", 2),
    ("nfft", 4096),
    ("wiener_iters", 0),
    ("end_iters", 0),
    ("wiener_residual", False),
    ("cac", True),
    ("depth", 4),
    ("rewrite", True),
    ("multi_freqs", None),
    ("multi_freqs_depth", 3),
    ("freq_emb", 0.2),
    ("emb_scale", 10),
    ("emb_smooth", True),
    ("kernel_size", 8),
    ("time_stride", 2),
    ("stride", 4),
    ("context", 1),
    ("context_enc", 0),
    ("norm_starts", 4),
    ("norm_groups", 4),
    ("dconv_mode", 1),
    ("dconv_depth", 2),
    ("dconv_comp", 8),
    ("dconv_init", 1e-3),
    ("bottom_channels", 0),
    ("t_layers", 5),
    ("t_emb", "sin"),
    ("t_hidden_scale", 4.0),
    ("t_heads", 8),
    ("t_dropout", 0.0),
    ("t_max_positions", 10000),
    ("t_norm_in", True),
    ("t_norm_in_group", False),
    ("t_group_norm", False),
    ("t_norm_first", True),
    ("t_norm_out", True),
    ("t_max_period", 10000.0),
    ("t_weight_decay", 0.0),
    ("t_lr", None),
    ("t_layer_scale", True),
    ("t_gelu", True),
    ("t_weight_pos_embed", 1.0),
    ("t_sin_random_shift", 0),
    ("t_cape_mean_normalize", True),
    ("t_cape_augment", True),
    ("t_cape_glob_loc_scale", [5000.0, 1.0, 1.4]),
    ("t_sparse_self_attn", False),
    ("t_sparse_cross_attn", False),
    ("t_mask_type", "diag"),
    ("t_mask_random_seed", 42),
    ("t_sparse_attn_window", 500),
    ("t_global_window", 100),
    ("t_sparsity", 0.95),
    ("t_auto_sparsity", False),
    ("t_cross_first", False),
    ("rescale", 0.1),
    ("samplerate", 44100),
    ("segment", 10),
    ("use_train_segment", True),
)

PARAMETER_NAMES = tuple(name for name, _ in HTDEMUCS_PARAMETERS)


class ArgumentError(ValueError):
    """The checkpoint's constructor arguments cannot describe an HTDemucs."""


def bind_arguments(args, kwargs):
    """Returns (bound, dropped): `bound` maps every parameter name to the value the
    model was built with (raw Python values, Fraction kept), `dropped` lists keyword
    names HTDemucs does not take (demucs' loader drops those with a warning too)."""
    args = list(args or ())
    kwargs = dict(kwargs or {})
    if len(args) > len(PARAMETER_NAMES):
        raise ArgumentError(
            f"{len(args)} positional arguments, HTDemucs takes at most {len(PARAMETER_NAMES)}"
        )
    bound = {}
    for name, value in zip(PARAMETER_NAMES, args):
        bound[name] = value
    dropped = []
    for name, value in kwargs.items():
        if not isinstance(name, str):
            raise ArgumentError(f"keyword argument name {name!r} is not a string")
        if name not in PARAMETER_NAMES:
            dropped.append(name)
            continue
        if name in bound:
            raise ArgumentError(f"argument {name!r} given both by position and by name")
        bound[name] = value
    for name, default in HTDEMUCS_PARAMETERS:
        if name not in bound:
            if default is REQUIRED:
                raise ArgumentError(f"required argument {name!r} is missing")
            bound[name] = list(default) if isinstance(default, list) else default
    validate(bound)
    return bound, dropped


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (numbers.Integral, numbers.Rational, float)) and not isinstance(
        value, bool
    )


def validate(bound):
    """Checks the values against the engine's rules (engine_rules: the C loader's
    checks, same order, same messages)."""
    sources = bound["sources"]
    if not isinstance(sources, (list, tuple)) or not sources:
        raise ArgumentError(f"sources must be a non-empty list of names, got {sources!r}")
    try:
        engine_rules.check_sources(sources)
        engine_rules.check_hparams(json_kwargs(bound), len(sources))
    except engine_rules.RuleError as exc:
        raise ArgumentError(str(exc)) from None


def segment_samples(segment, samplerate):
    """The model's training length in samples, computed the way HTDemucs does
    (`int(self.segment * self.samplerate)`): exact for a Fraction or an integer (7.8 s
    is Fraction(39, 5) in official checkpoints -> 343980 at 44.1 kHz), float arithmetic
    only when the checkpoint itself stored a float."""
    if isinstance(segment, float):
        return int(segment * samplerate)
    return int(Fraction(segment) * samplerate)


def segment_text(segment):
    """Decimal text for a segment in seconds: exact when the value has a finite
    decimal expansion (Fraction(39, 5) -> "7.8"), else the shortest float repr."""
    if isinstance(segment, float):
        return repr(segment)
    value = Fraction(segment)
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return repr(float(value))
    digits = max(twos, fives)
    scaled = value * 10**digits
    assert scaled.denominator == 1
    sign = "-" if scaled < 0 else ""
    text = str(abs(scaled.numerator)).rjust(digits + 1, "0")
    return f"{sign}{text[:-digits]}.{text[-digits:]}"


def to_json_value(value, where):
    """Turns an unpickled argument value into plain JSON data. Fractions become
    numbers (seconds); tuples become lists; anything else non-JSON is an error."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if _is_int(value):
        return int(value)
    if isinstance(value, float):
        return value
    if isinstance(value, Fraction):
        return int(value) if value.denominator == 1 else float(value)
    if isinstance(value, (list, tuple)):
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): to_json_value(v, f"{where}.{k}") for k, v in value.items()}
    raise ArgumentError(f"argument {where} has a value of type {type(value).__name__}")


def json_kwargs(bound):
    """The metadata form of the bound arguments: every parameter, in signature order."""
    return {name: to_json_value(bound[name], name) for name in PARAMETER_NAMES}
