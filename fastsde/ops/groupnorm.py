"""group_norm: GroupNorm [+ time-embedding add / scale-shift] [+ SiLU] in one pass pair, dispatched to a backend.

    y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift)

Bytes per element: one read of x for the statistics, one read of x + one write of y for the result (12 B/elem in
float32, plus negligible per-(n, c) vectors). Statistics in float32 (float64 for float64 inputs) with Welford or
two passes, float32 accumulation for half/bfloat16 inputs.
"""
from __future__ import annotations

import torch

from fastsde.ops.dispatch import register, resolve
from fastsde.reference import groupnorm as _ref

__all__ = ["group_norm"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_vec(name, v, shape, x):
    if v is None:
        return None
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape {shape}, got {type(v).__name__}")
    if tuple(v.shape) != shape or v.device != x.device or not v.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor of shape {shape} on {x.device}, got "
                         f"{v.dtype} {tuple(v.shape)} on {v.device}")
    return v


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-6, *, scale=None, shift=None, emb_add=None, act=None,
               out=None, backend="auto"):
    """GroupNorm family (see module docstring). x: (N, C, *spatial), NCHW or channels-last; weight, bias: (C,);
    scale, shift, emb_add: (N, C); act: None or "silu". Returns y shaped and laid out like x (or writes `out`)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, *spatial), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    N, C = x.shape[:2]
    if not isinstance(num_groups, int) or num_groups < 1 or C % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing the channels ({C}), got {num_groups}")
    if act not in _ref.ACTIVATIONS:
        raise ValueError(f"act must be one of {_ref.ACTIVATIONS}, got {act!r}")
    weight, bias = _check_vec("weight", weight, (C,), x), _check_vec("bias", bias, (C,), x)
    scale, shift = _check_vec("scale", scale, (N, C), x), _check_vec("shift", shift, (N, C), x)
    emb_add = _check_vec("emb_add", emb_add, (N, C), x)
    if out is not None and (out.shape != x.shape or out.dtype != x.dtype or out.device != x.device):
        raise ValueError(f"out must match x ({tuple(x.shape)} {x.dtype} on {x.device}), got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    if x.numel() == 0:
        return torch.empty_like(x) if out is None else out
    _, impl = resolve("group_norm", backend, x.device)
    y = impl(x, num_groups, weight, bias, float(eps), scale, shift, emb_add, act)
    if out is None:
        return y
    return out.copy_(y)


@register("group_norm", "reference")
def _group_norm_reference(x, num_groups, weight, bias, eps, scale, shift, emb_add, act):
    return _ref.group_norm(x, num_groups, weight, bias, eps, scale=scale, shift=shift, emb_add=emb_add, act=act)


@register("group_norm", "native")
def _group_norm_native(x, num_groups, weight, bias, eps, scale, shift, emb_add, act):
    if _ref.memory_format(x) is not torch.channels_last and not x.is_contiguous():
        x = x.contiguous()
    contig = lambda t: None if t is None else t.contiguous()  # noqa: E731
    return torch.ops.fastsde.group_norm(x, num_groups, contig(weight), contig(bias), eps, contig(scale),
                                        contig(shift), contig(emb_add), 1 if act == "silu" else 0)


@register("group_norm", "triton")
def _group_norm_triton(*args):
    from fastsde.kernels import groupnorm as _kernels

    return _kernels.group_norm(*args)
