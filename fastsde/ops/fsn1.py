"""fsn1_normal: fill a (batch, numel) tensor with FSN1 normals, on the native or the reference backend.

out[b, j] = FSN1(seed, sample_ids[b], draw, j), the counter-based stream of fastsde/random.py (Philox4x32-10 +
Box-Muller). Writes 4 B (float32) or 8 B (float64) per element and reads nothing per element, so it is
compute-bound: one Philox call (10 rounds of two 32x32 multiplies) + 2 log, 2 sqrt, 2 sin/cos per 4 outputs.
"""
from __future__ import annotations

import torch

from fastsde import random as _random
from fastsde.ops.checks import as_u64, check_float_tensor, check_no_autograd, i64_bits
from fastsde.ops.dispatch import register, resolve

__all__ = ["fsn1_normal", "check_args", "BACKENDS"]

#: Backends fsn1_normal accepts: Triton has no fsn1_normal of its own (its step kernels generate the stream inline).
BACKENDS = ("auto", "native", "reference")


def check_args(out, seed, sample_ids, draw, backend):
    """fsn1_normal's argument checks (also the fused steps' seed and ids): (seed, sample_ids, draw) normalised."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_float_tensor("out", out)
    check_no_autograd("fsn1_normal", {"out": out})
    if out.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"out must be float32 or float64, got {out.dtype}")
    if out.dim() != 2:
        raise ValueError(f"out must be 2-D (batch, numel), got shape {tuple(out.shape)}")
    batch, numel = out.shape
    if numel > _random.MAX_ELEMENTS:
        raise ValueError(f"out must have at most 2**34 elements per sample, got shape {tuple(out.shape)}")
    seed, draw = as_u64("seed", seed), as_u64("draw", draw)

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


def fsn1_normal(out: torch.Tensor, seed: int, sample_ids, draw: int, *, backend: str = "auto") -> torch.Tensor:
    """Fill out (batch, numel), float32/float64, in place with out[b, j] = FSN1(seed, sample_ids[b], draw, j).

    seed, draw: ints in [0, 2**64); sample_ids: (batch,) integers in [0, 2**32) (tensor or sequence).
    backend: "native" (fastsde._C), "reference" (fastsde.random), "auto" (native where it runs, else reference);
    "triton" has no fsn1_normal of its own (its step kernels generate the same stream in registers).
    Non-contiguous out is filled through a contiguous temporary. Returns out.
    """
    seed, sample_ids, draw = check_args(out, seed, sample_ids, draw, backend)
    _, impl = resolve("fsn1_normal", backend, out.device)
    if out.numel() == 0:
        return out
    impl(out, seed, sample_ids, draw)
    return out


@register("fsn1_normal", "reference")
def _fsn1_normal_reference(out, seed, sample_ids, draw):
    out.copy_(_random.fsn1_normal(seed, sample_ids.cpu(), draw, out.shape[1], dtype=out.dtype, device=out.device))


@register("fsn1_normal", "native")
def _fsn1_normal_native(out, seed, sample_ids, draw):
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    torch.ops.fastsde.fsn1_normal_(target, i64_bits(seed), sample_ids, i64_bits(draw))
    if target is not out:
        out.copy_(target)
