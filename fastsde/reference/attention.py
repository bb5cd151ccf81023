"""Reference attention block of NCSN++/DDPM++ (score_sde's AttnBlockpp), multi-head capable: the specification of
fastsde.ops.attn_block.

    h = GN(x); [q; k; v] = W_qkv h + b_qkv (one 1x1 projection, W_qkv (3C, C)); per head (C/heads channels):
    w = softmax over the H*W keys of q.k / sqrt(C/heads); h = w v; h = W_out h + b_out (W_out (C, C));
    return (x + h) / sqrt(2) if skip_rescale else x + h
"""
from __future__ import annotations

import math

import torch

from fastsde.reference.groupnorm import group_norm

__all__ = ["attn_block", "attention"]


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v for q, k, v (B, heads, L, d), in float64."""
    w = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (w @ v.double()).to(q.dtype)


def attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, *, num_groups, num_heads=1,
               skip_rescale=False, eps=1e-6):
    """x: (B, C, H, W); gn_*: (C,); qkv_weight (3C, C), qkv_bias (3C,); out_weight (C, C), out_bias (C,)."""
    B, C, H, W = x.shape
    if C % num_heads:
        raise ValueError(f"num_heads ({num_heads}) must divide the channels ({C})")
    d = C // num_heads
    h = group_norm(x, num_groups, gn_weight, gn_bias, eps).double().reshape(B, C, H * W)
    qkv = torch.einsum("oc,bcl->bol", qkv_weight.double(), h) + qkv_bias.double()[None, :, None]
    q, k, v = (t.reshape(B, num_heads, d, H * W).transpose(-1, -2) for t in qkv.chunk(3, dim=1))
    a = attention(q, k, v).transpose(-1, -2).reshape(B, C, H * W)
    h = torch.einsum("oc,bcl->bol", out_weight.double(), a) + out_bias.double()[None, :, None]
    y = x.double() + h.reshape(B, C, H, W)
    if skip_rescale:
        y = y / math.sqrt(2.0)
    return y.to(x.dtype)
