"""fsn1_normal: fill a (batch, numel) tensor with FSN1 normals, on the native or the reference backend.

out[b, j] = FSN1(seed, sample_ids[b], draw, j), the counter-based stream of fastsde/random.py (Philox4x32-10 +
Box-Muller). Writes 4 B (float32) or 8 B (float64) per element and reads nothing per element, so it is
compute-bound: one Philox call (10 rounds of two 32x32 multiplies) + 2 log, 2 sqrt, 2 sin/cos per 4 outputs.
"""
from __future__ import annotations

import operator

import torch

from fastsde import _native
from fastsde import random as _random

__all__ = ["fsn1_normal", "BACKENDS"]

#: Backends fsn1_normal accepts; "auto" picks native when it can run on out's device, else reference.
BACKENDS = ("auto", "native", "reference")

_U64 = 1 << 64
_I64_MIN = 1 << 63


def _as_u64(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int in [0, 2**64), got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__}") from None
    if not 0 <= value < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def _to_i64_bits(value: int) -> int:
    """uint64 -> the int64 with the same bits: how the torch.library schema (int = int64) carries it."""
    return value - _U64 if value >= _I64_MIN else value


def _check(out, seed, sample_ids, draw, backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"out must be float32 or float64, got {out.dtype}")
    if out.dim() != 2:
        raise ValueError(f"out must be 2-D (batch, numel), got shape {tuple(out.shape)}")
    batch, numel = out.shape
    if numel > _random.MAX_ELEMENTS:
        raise ValueError(f"out must have at most 2**34 elements per sample, got shape {tuple(out.shape)}")
    seed, draw = _as_u64("seed", seed), _as_u64("draw", draw)

    if not isinstance(sample_ids, torch.Tensor):
        sample_ids = torch.as_tensor(sample_ids)
        if sample_ids.numel() == 0:  # an empty sequence: torch.as_tensor([]) is float32
            sample_ids = sample_ids.to(torch.int64)
    if sample_ids.dtype.is_floating_point or sample_ids.dtype.is_complex or sample_ids.dtype == torch.bool:
        raise TypeError(f"sample_ids must be an integer tensor, got {sample_ids.dtype}")
    if sample_ids.dim() != 1 or sample_ids.shape[0] != batch:
        raise ValueError(
            f"sample_ids must have shape ({batch},) (the batch size of out), got {tuple(sample_ids.shape)}"
        )
    if sample_ids.device != out.device and sample_ids.device.type != "cpu":
        raise ValueError(f"sample_ids must be on {out.device} (the device of out) or the CPU, got {sample_ids.device}")
    sample_ids = sample_ids.to(device=out.device, dtype=torch.int64)
    # The value check reads the ids: skip it while a CUDA graph is being captured (it would synchronize).
    capturing = out.is_cuda and torch.cuda.is_current_stream_capturing()
    if batch and not capturing:
        lo, hi = int(sample_ids.min()), int(sample_ids.max())
        if lo < 0 or hi >= 1 << 32:
            raise ValueError(f"sample_ids must be in [0, 2**32), got values in [{lo}, {hi}]")
    return seed, sample_ids, draw


def _native_can_run(out: torch.Tensor) -> bool:
    if not _native.available():
        return False
    if out.device.type == "cpu":
        return True
    return out.device.type == "cuda" and _native.has_cuda()


def fsn1_normal(out: torch.Tensor, seed: int, sample_ids, draw: int, *, backend: str = "auto") -> torch.Tensor:
    """Fill out (batch, numel), float32/float64, in place with out[b, j] = FSN1(seed, sample_ids[b], draw, j).

    seed, draw: ints in [0, 2**64); sample_ids: (batch,) integers in [0, 2**32) (tensor or sequence).
    backend: "native" (fastsde._C; raises if it cannot run), "reference" (fastsde.random), or "auto".
    Non-contiguous out is filled through a contiguous temporary. Returns out.
    """
    seed, sample_ids, draw = _check(out, seed, sample_ids, draw, backend)
    if backend == "auto":
        if _native_can_run(out):
            backend = "native"
        else:
            if not _native.available():
                _native.warn_once()
            backend = "reference"
    if out.numel() == 0:
        return out

    if backend == "reference":
        out.copy_(_random.fsn1_normal(seed, sample_ids.cpu(), draw, out.shape[1], dtype=out.dtype, device=out.device))
        return out

    if not _native.available():
        raise RuntimeError(f"backend='native' requested but fastsde._C is unavailable: {_native.unavailable_reason()}")
    if not _native_can_run(out):
        raise RuntimeError(f"backend='native' has no kernel for {out.device} tensors (built with cuda={_native.has_cuda()})")
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    torch.ops.fastsde.fsn1_normal_(target, _to_i64_bits(seed), sample_ids, _to_i64_bits(draw))
    if target is not out:
        out.copy_(target)
    return out
