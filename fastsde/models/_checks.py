"""Field checks shared by the network configs (UNetConfig, ScoreSDEConfig): every field has the kind its default has,
so a config read from a file's metadata or a JSON --config is refused with one line naming the field, the expected and
the given value, instead of failing deep inside the network's construction (a ZeroDivisionError for nf 0, a string
ch_mult iterated character by character)."""
from __future__ import annotations

import dataclasses
import math

__all__ = ["check_config_fields"]


def _fail(what, key, expected, value):
    raise ValueError(f"{what} {key} must be {expected}, got {value!r}")


def check_config_fields(config, what: str = "config", *, positive: tuple = (), nonnegative: tuple = (),
                        unit_interval: tuple = ()) -> None:
    """Check each field of the dataclass `config` against the kind of its default: bool fields bools, int fields ints
    (not bools), float fields finite numbers, tuple fields lists/tuples of ints, str fields strings (None allowed
    where the default is None). `positive` / `nonnegative` name int or float fields that must be > 0 / >= 0 (for a
    tuple field: every entry), `unit_interval` floats in [0, 1). Raises ValueError."""
    for field in dataclasses.fields(config):
        key, default, value = field.name, field.default, getattr(config, field.name)
        if default is None:
            if value is not None and not isinstance(value, str):
                _fail(what, key, "a string or null", value)
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                _fail(what, key, "true or false", value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                _fail(what, key, "an integer", value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                _fail(what, key, "a finite number", value)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                           for v in value):
                _fail(what, key, "a list of integers", value)
        elif isinstance(default, str) and not isinstance(value, str):
            _fail(what, key, "a string", value)
        if key in positive and any(v <= 0 for v in (value if isinstance(value, (list, tuple)) else [value])):
            _fail(what, key, "positive" if not isinstance(value, (list, tuple)) else "a list of positive integers",
                  value)
        if key in nonnegative and value < 0:
            _fail(what, key, ">= 0", value)
        if key in unit_interval and not 0 <= value < 1:
            _fail(what, key, "in [0, 1)", value)


def check_channels(what: str, nf: int, ch_mult, *, groups=None, num_heads: int = 1) -> None:
    """Every level's channel count nf * m must hold at least 4 channels, divide into GroupNorm's groups
    (groups(C), default min(C // 4, 32)) and into num_heads attention heads."""
    for m in ch_mult:
        c = nf * m
        g = min(c // 4, 32) if groups is None else groups(c)
        if c < 4 or c % g:
            raise ValueError(f"{what} nf * ch_mult must give channel counts of at least 4 that divide into "
                             f"{'min(C // 4, 32)' if groups is None else g} GroupNorm groups, got nf={nf}, "
                             f"ch_mult={list(ch_mult)} (C={c})")
        if c % num_heads:
            raise ValueError(f"{what} num_heads must divide every level's channels, got num_heads={num_heads} for "
                             f"C={c} (nf={nf}, ch_mult={list(ch_mult)})")


__all__.append("check_channels")
