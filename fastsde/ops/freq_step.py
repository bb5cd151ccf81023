"""freq_step: the per-frequency fused step of the heat family (fastsde.heat), on every backend.

    out = a[k] x + b[k] score + c[k] z,   k = (element index within a sample) mod len(a)

x (B, ...) float32/float64 (DCT coefficients of the sampler state); score like x, or bfloat16/float16 beside float32
x (float16 is widened here; bfloat16 is read by the kernels); a, b, c (period,) float coefficient vectors (float64
tables rounded once to the compute type) with period dividing the elements per sample; z = FSN1(seed, sample_ids,
draw, j) (c=None: no noise). Backends: reference (fastsde/reference/freq_step.py), native (csrc/freq_step.h via
torch.ops.fastsde.freq_step, CPU and CUDA), triton (kernels/freq_step.py). Returns a new tensor like x.

Bytes per element, float32 state: 12 (x, score read; out written), 10 with a bfloat16 score; the noise is made in
registers and the coefficients stay in cache.
"""
from __future__ import annotations

import torch

from fastsde.ops.checks import as_u64, check_float_tensor, check_no_autograd, check_score, i64_bits
from fastsde.ops.dispatch import register, resolve
from fastsde.ops.fsn1 import check_args as _check_ids

__all__ = ["freq_step", "kernel_score"]


def _check(x, score, a, b, c, seed, sample_ids, draw):
    check_float_tensor("x", x)
    if x.dtype not in (torch.float32, torch.float64) or x.dim() < 2:
        raise ValueError(f"x must be a float32/float64 (batch, ...) tensor, got {x.dtype} {tuple(x.shape)}")
    check_score("score", score, x)
    check_no_autograd("freq_step", {"x": x, "score": score})
    per_sample = x[0].numel() if x.shape[0] else 0
    coefs = []
    for name, v in (("a", a), ("b", b), ("c", c)):
        if v is None and name == "c":
            coefs.append(None)
            continue
        v = torch.as_tensor(v, dtype=torch.float64) if not isinstance(v, torch.Tensor) else v
        if v.dim() != 1 or v.numel() < 1 or (per_sample and per_sample % v.numel()) or not v.is_floating_point():
            raise ValueError(f"{name} must be a 1-D float vector whose length divides the {per_sample} elements per "
                             f"sample, got {v.dtype} {tuple(v.shape)}")
        coefs.append(v)
    if coefs[1].numel() != coefs[0].numel() or (coefs[2] is not None and coefs[2].numel() != coefs[0].numel()):
        raise ValueError(f"a, b, c must have one length, got {[None if v is None else v.numel() for v in coefs]}")
    if sample_ids is None:
        sample_ids = torch.arange(x.shape[0])
    seed, ids, draw = _check_ids(torch.empty(x.shape[0], 0, device=x.device, dtype=x.dtype), seed, sample_ids, draw,
                                 "auto")
    return coefs, seed, ids, draw


def freq_step(x, score, a, b, c=None, *, seed: int = 0, sample_ids=None, draw: int = 0, backend: str = "auto"):
    """out = a x + b score + c z per frequency (module docstring); sample_ids default 0..B-1."""
    (a, b, c), seed, ids, draw = _check(x, score, a, b, c, as_u64("seed", seed), sample_ids, as_u64("draw", draw))
    name, impl = resolve("freq_step", backend, x.device)
    if name == "native" and not _native_op_built():
        if backend == "native":
            raise RuntimeError("backend='native': fastsde._C predates freq_step; rebuild it "
                               "(python setup.py build_ext --inplace)")
        _, impl = resolve("freq_step", "reference", x.device)  # auto: an older build runs the reference
    if x.numel() == 0:
        return torch.empty_like(x)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    a, b, c = (None if v is None else v.to(device=x.device, dtype=torch.float64).to(dt).contiguous()
               for v in (a, b, c))
    return impl(x, score, a, b, c, seed, ids, draw)


@register("freq_step", "reference")
def _reference(x, score, a, b, c, seed, ids, draw):
    from fastsde.reference.freq_step import freq_step as ref

    return ref(x, score, a, b, c, seed=seed, sample_ids=ids.cpu(), draw=draw)


def kernel_score(x, score):
    """The score as the kernels read it: x's dtype, or bfloat16 beside float32 (float16 widened exactly)."""
    keep = score.dtype == x.dtype or (x.dtype == torch.float32 and score.dtype == torch.bfloat16)
    return (score if keep else score.to(x.dtype)).contiguous()


def _native_op_built() -> bool:
    """Whether the loaded fastsde._C registers freq_step (a build from before csrc/api/freq_step.cpp does not)."""
    return hasattr(torch.ops.fastsde, "freq_step")


@register("freq_step", "native")
def _native(x, score, a, b, c, seed, ids, draw):
    op = torch.ops.fastsde.freq_step
    return op(x.contiguous(), kernel_score(x, score), a, b, c, i64_bits(seed), ids, i64_bits(draw))


@register("freq_step", "triton")
def _triton(x, score, a, b, c, seed, ids, draw):
    from fastsde.kernels.freq_step import freq_step_triton

    return freq_step_triton(x.contiguous(), kernel_score(x, score), a, b, c, seed, ids, draw)
