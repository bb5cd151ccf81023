"""attn_block: the NCSN++/DDPM++ attention block (GN -> fused QKV 1x1 -> attention -> 1x1 out -> residual).

Bytes: x is read twice (GN statistics, GN apply) and the block writes its output once; the QKV and output
projections are GEMMs (2 * 4 C^2 HW flops per sample) and attention is 4 C (HW)^2 flops per sample, so at CIFAR-10's
16x16 (256 tokens x 256 channels) the block is compute-bound.
"""
from __future__ import annotations

import torch

from fastsde.ops._dispatch import register, resolve
from fastsde.reference import attention as _ref

__all__ = ["attn_block"]


def attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, *, num_groups, num_heads=1,
               skip_rescale=False, eps=1e-6, backend="auto"):
    """x: (B, C, H, W); gn_*: (C,); qkv_weight (3C, C), qkv_bias (3C,); out_weight (C, C), out_bias (C,).
    Returns (x + proj(attention(GN(x)))) [/ sqrt(2)], shaped like x."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    B, C, H, W = x.shape
    expected = {"gn_weight": (C,), "gn_bias": (C,), "qkv_weight": (3 * C, C), "qkv_bias": (3 * C,),
                "out_weight": (C, C), "out_bias": (C,)}
    for name, t in zip(expected, (gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]}, got {tuple(getattr(t, 'shape', ()))}")
    if C % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide the channels ({C})")
    if C % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide the channels ({C})")
    _, impl = resolve("attn_block", backend, x.device)
    return impl(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
                bool(skip_rescale), float(eps))


@register("attn_block", "reference")
def _attn_block_reference(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
                          skip_rescale, eps):
    return _ref.attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups=num_groups,
                           num_heads=num_heads, skip_rescale=skip_rescale, eps=eps)
