"""group_norm: GroupNorm [+ time-embedding add / scale-shift] [+ SiLU] in one pass pair, dispatched to a backend.

    y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift)

Bytes per element: one read of x for the statistics, one read of x + one write of y for the result (12 B/elem in
float32, plus negligible per-(n, c) vectors). Statistics in float32 (float64 for float64 inputs) with Welford or
two passes, float32 accumulation for half/bfloat16 inputs.

Autograd: every backend differentiates. The native and Triton ops carry a fused backward (register_autograd below;
math in csrc/groupnorm.h, "Backward") that saves only the inputs and recomputes the per-group statistics; the
reference differentiates through plain torch ops. Double backward (create_graph=True) is refused on the fused
backends.
"""
from __future__ import annotations

import math

import torch

from fastsde.ops.checks import check_float_tensor, check_no_autograd, positive_count, records_autograd
from fastsde import _native
from fastsde.ops.dispatch import backend_available, register, resolve
from fastsde.ops.groupnorm_backward import register_fused_backward
from fastsde.reference import groupnorm as _ref

__all__ = ["group_norm", "autograd_backend", "register_fused_backward"]

def _check_vec(name, v, shape, x):
    if v is None:
        return None
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape {shape}, got {type(v).__name__}")
    check_float_tensor(name, v)
    if tuple(v.shape) != shape or v.device != x.device:
        raise ValueError(f"{name} must be a float tensor of shape {shape} on {x.device}, got "
                         f"{v.dtype} {tuple(v.shape)} on {v.device}")
    return v


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-6, *, scale=None, shift=None, emb_add=None, act=None,
               out=None, backend="auto"):
    """GroupNorm family (see module docstring). x: (N, C, *spatial), NCHW or channels-last; weight, bias: (C,);
    scale, shift, emb_add: (N, C); act: None or "silu". Returns y shaped and laid out like x (or writes `out`)."""
    check_float_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be (N, C, *spatial), got shape {tuple(x.shape)}")
    N, C = x.shape[:2]
    num_groups = positive_count("num_groups", num_groups, C)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if act not in _ref.ACTIVATIONS:
        raise ValueError(f"act must be one of {_ref.ACTIVATIONS}, got {act!r}")
    weight, bias = _check_vec("weight", weight, (C,), x), _check_vec("bias", bias, (C,), x)
    scale, shift = _check_vec("scale", scale, (N, C), x), _check_vec("shift", shift, (N, C), x)
    emb_add = _check_vec("emb_add", emb_add, (N, C), x)
    if out is not None:
        check_float_tensor("out", out)
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"out must match x ({tuple(x.shape)} {x.dtype} on {x.device}), got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        check_no_autograd("group_norm's out=", {"out": out})
    backend = autograd_backend("group_norm", backend, x, weight, bias, scale, shift, emb_add)
    _, impl = resolve("group_norm", backend, x.device)
    if x.numel() == 0:
        return torch.empty_like(x) if out is None else out
    y = impl(x, num_groups, weight, bias, float(eps), scale, shift, emb_add, act)
    if out is None:
        return y
    return out.copy_(y)


def _has_native_backward() -> bool:
    """Whether fastsde._C registers group_norm_backward (an extension built from older sources does not)."""
    return _native.available() and hasattr(torch.ops.fastsde, "group_norm_backward")


def autograd_backend(op, backend, *tensors):
    """The backend when autograd records the call: one whose `op` has a backward. group_norm and attn_block have
    one on every backend, except that native needs an extension with group_norm_backward (the native block
    differentiates through the fused group_norm; the Triton block through torch's GroupNorm and GEMMs and the
    flash-attention backward kernels). "auto" keeps its choice when that one differentiates, else takes native,
    else the reference; an explicit backend without a backward is refused."""
    if not records_autograd(*tensors):
        return backend
    ok = {"reference", "native", "triton"} if _has_native_backward() else {"reference", "triton"}
    if backend == "auto":
        device = tensors[0].device
        name = resolve(op, "auto", device)[0]
        if name not in ok and "native" in ok and backend_available("native", device)[0]:
            name = "native"
        return name if name in ok else "reference"
    if backend not in ok:
        raise ValueError(f"{op} backend={backend!r} has no backward here, but an input requires grad: use "
                         f"backend='auto' or one of {sorted(ok)}, or call it under torch.no_grad()")
    return backend


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


if _has_native_backward():
    register_fused_backward("fastsde::group_norm", torch.ops.fastsde.group_norm_backward, "group_norm")
