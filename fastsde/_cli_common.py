"""What the `fastsde` command modules share (fastsde.cli, fastsde.cli_images): the usage error, option types, the
score_sde sampler defaults and the --model syntax. Kept apart so both modules import it at the top."""
from __future__ import annotations

import argparse

import numpy as np

from fastsde.models import analytic
from fastsde.sampling import PC_DEFAULTS

__all__ = ["_UsageError", "_SDE_DEFAULTS", "_positive_int", "_nonnegative_int", "_seed", "_positive_float",
           "_model_spec"]


class _UsageError(Exception):
    """A bad command line (exit code 2)."""


_SDE_DEFAULTS = PC_DEFAULTS  # score_sde's (predictor, corrector, eps) per SDE name


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _seed(text: str) -> int:
    value = _nonnegative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _model_spec(text: str) -> tuple[str, str]:
    """'digits' (the shipped digits model of --sde), a score model file PATH.safetensors, or 'gmm[:NAME]' with NAME
    a preset of fastsde.models.analytic -> (kind, name or path)."""
    if text == "digits":
        return "digits", "digits"
    if text.endswith(".safetensors"):
        return "file", text
    kind, _, name = text.partition(":")
    known = ", ".join(sorted(analytic.PRESETS))
    if kind != "gmm":
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; known: digits, PATH.safetensors, gmm[:NAME] with "
                                         f"NAME one of {known}")
    name = name or "ring"
    if name not in analytic.PRESETS:
        raise argparse.ArgumentTypeError(f"unknown mixture preset {name!r}; known: {known}")
    return kind, name
