"""Argument checks and conversions every op module shares (one definition each)."""
from __future__ import annotations

import operator

import torch

__all__ = ["as_u64", "i64_bits", "check_like", "score_dtypes", "check_score"]

_U64 = 1 << 64
_I64_MIN = 1 << 63


def as_u64(name: str, value) -> int:
    """`value` as a Python int in [0, 2**64) (seeds and draw ids), or a TypeError/ValueError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int in [0, 2**64), got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__}") from None
    if not 0 <= value < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def i64_bits(value: int) -> int:
    """uint64 -> the int64 with the same bits: how the torch.library schema (int = int64) carries it."""
    return value - _U64 if value >= _I64_MIN else value


def check_like(name: str, t, x: torch.Tensor) -> None:
    """Raise unless `t` is a tensor with x's shape, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"{name} must match x: expected shape {tuple(x.shape)} {x.dtype} on {x.device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


def score_dtypes(state: torch.dtype) -> tuple:
    """The dtypes a step op reads a model output (score) in beside a state of dtype `state`: the state's own, and a
    narrower one loaded directly by the kernels (no conversion pass): float16 or bfloat16 beside float32 (a
    half-precision model beside a float32 sampler state), float32 beside float64."""
    if state == torch.float32:
        return (torch.float32, torch.bfloat16, torch.float16)
    if state == torch.float64:
        return (torch.float64, torch.float32)
    return (state,)


def check_score(name: str, t, x: torch.Tensor, x_name: str = "x") -> None:
    """Raise unless `t` (a model output) has the shape and device of the state `x` (called `x_name` in the
    message) and one of score_dtypes(x.dtype)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    allowed = score_dtypes(x.dtype)
    if t.shape != x.shape or t.dtype not in allowed or t.device != x.device:
        dtypes = " or ".join(str(d) for d in allowed)
        raise ValueError(f"{name} must match {x_name}: expected shape {tuple(x.shape)} {dtypes} on {x.device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")
