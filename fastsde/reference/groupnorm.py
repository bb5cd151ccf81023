"""Reference GroupNorm family: the specification of fastsde.ops.group_norm (csrc/groupnorm.h, kernels/groupnorm.py).

    y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift)

GN normalises each (sample, group) over its C/G channels and all spatial positions with the biased variance.
emb_add, scale, shift are per-(sample, channel) (N, C) tensors (time-embedding conditioning); act is None or "silu".
Statistics are computed in float64 here (the fast ops use float32 with Welford or two passes, never E[x^2]-E[x]^2).
"""
from __future__ import annotations

import torch

__all__ = ["group_norm", "ACTIVATIONS"]

ACTIVATIONS = (None, "silu")


def _nc(v, x):
    return v.reshape(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)))


def _c(v, x):
    return v.reshape(1, x.shape[1], *([1] * (x.dim() - 2)))


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-6, *, scale=None, shift=None, emb_add=None, act=None):
    """x: (N, C, *spatial) in any memory format; weight, bias: (C,); scale, shift, emb_add: (N, C).
    Returns x's dtype."""
    N, C = x.shape[:2]
    h = x.double()
    if emb_add is not None:
        h = h + _nc(emb_add.double(), h)
    g = h.reshape(N, num_groups, (C // num_groups) * h[0, 0].numel())  # explicit: N may be 0
    mean = g.mean(dim=2, keepdim=True)
    var = ((g - mean) ** 2).mean(dim=2, keepdim=True)
    h = ((g - mean) / torch.sqrt(var + eps)).reshape(h.shape)
    if weight is not None:
        h = h * _c(weight.double(), h)
    if bias is not None:
        h = h + _c(bias.double(), h)
    if scale is not None:
        h = h * (1 + _nc(scale.double(), h))
    if shift is not None:
        h = h + _nc(shift.double(), h)
    if act == "silu":
        h = torch.nn.functional.silu(h)
    elif act is not None:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    return h.to(x.dtype).contiguous(memory_format=memory_format(x))


def memory_format(x):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
