"""The NCSN++/DDPM++ attention block: AttnBlock (one fastsde.ops.attn_block) and its plain-PyTorch twin.

    h = GN(x); q, k, v = 1x1 projections of h; h = softmax_keys(q.k / sqrt(C)) v; h = 1x1 out(h) (zero-initialised)
    return (x + h) / sqrt(2) if skip_rescale else x + h                 (docs/reference-math.md, "U-Net hot paths")

PlainAttnBlock is score_sde's layout (GroupNorm_0, three NIN projections NIN_0..2, NIN_3 out; NIN W is (in, out));
AttnBlock keeps one fused (3C, C) QKV weight. Each loads the other's state dict: the keys are converted on load
(qkv_weight = cat(NIN_0.W^T, NIN_1.W^T, NIN_2.W^T), out_weight = NIN_3.W^T, biases concatenated likewise).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fastsde import ops
from fastsde.nn.core import NIN, num_groups_for, op_backend, variance_scaling_
from fastsde.nn.groupnorm import GroupNormAct

__all__ = ["AttnBlock", "PlainAttnBlock", "nin_to_fused", "fused_to_nin"]

_NIN_KEYS = tuple(f"NIN_{i}.{p}" for i in range(4) for p in ("W", "b"))
_FUSED_KEYS = ("qkv_weight", "qkv_bias", "out_weight", "out_bias")


def nin_to_fused(sd: dict, prefix: str = "") -> dict:
    """Rewrite score_sde attention keys under `prefix` (NIN_0..3 .W/.b) to AttnBlock's, in place; returns sd."""
    W = [sd.pop(f"{prefix}NIN_{i}.W") for i in range(4)]
    b = [sd.pop(f"{prefix}NIN_{i}.b") for i in range(4)]
    sd[f"{prefix}qkv_weight"] = torch.cat([w.t() for w in W[:3]], dim=0).contiguous()
    sd[f"{prefix}qkv_bias"] = torch.cat(b[:3], dim=0)
    sd[f"{prefix}out_weight"] = W[3].t().contiguous()
    sd[f"{prefix}out_bias"] = b[3]
    return sd


def fused_to_nin(sd: dict, prefix: str = "") -> dict:
    """Inverse of nin_to_fused: AttnBlock keys under `prefix` to NIN_0..3 .W/.b, in place; returns sd."""
    qkv_w, qkv_b = sd.pop(f"{prefix}qkv_weight"), sd.pop(f"{prefix}qkv_bias")
    out_w, out_b = sd.pop(f"{prefix}out_weight"), sd.pop(f"{prefix}out_bias")
    for i, (w, b) in enumerate(zip(qkv_w.chunk(3, dim=0), qkv_b.chunk(3, dim=0))):
        sd[f"{prefix}NIN_{i}.W"], sd[f"{prefix}NIN_{i}.b"] = w.t().contiguous(), b.contiguous()
    sd[f"{prefix}NIN_3.W"], sd[f"{prefix}NIN_3.b"] = out_w.t().contiguous(), out_b
    return sd


def _convert_on_load(have: tuple, other: tuple, convert):
    """A load_state_dict pre-hook converting the other layout's keys when those (and not ours) are present."""

    def hook(module, state_dict, prefix, *args):
        if f"{prefix}{other[0]}" in state_dict and f"{prefix}{have[0]}" not in state_dict:
            convert(state_dict, prefix)

    return hook


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions of x (B, C, H, W) with a fused (3C, C) QKV projection.

    Parameters: GroupNorm_0.weight/.bias (C,), qkv_weight (3C, C), qkv_bias (3C,), out_weight (C, C) and out_bias
    (C,); the out projection starts near zero (`init_scale`, 0 -> 1e-10) so the block starts as the identity map.
    """

    def __init__(self, channels: int, num_heads: int = 1, skip_rescale: bool = True, init_scale: float = 0.0, *,
                 num_groups: int | None = None, eps: float = 1e-6, backend: str = "auto"):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide channels ({channels})")
        C = channels
        self.channels, self.num_heads, self.skip_rescale, self.backend = C, num_heads, skip_rescale, backend
        self.GroupNorm_0 = GroupNormAct(num_groups or num_groups_for(C), C, eps, act=None, backend=backend)
        self.qkv_weight = nn.Parameter(variance_scaling_(torch.empty(3 * C, C), 0.1, C, C))
        self.qkv_bias = nn.Parameter(torch.zeros(3 * C))
        self.out_weight = nn.Parameter(variance_scaling_(torch.empty(C, C), init_scale, C, C))
        self.out_bias = nn.Parameter(torch.zeros(C))
        self.register_load_state_dict_pre_hook(_convert_on_load(_FUSED_KEYS, _NIN_KEYS, nin_to_fused))

    def forward(self, x):
        gn = self.GroupNorm_0
        params = (gn.weight, gn.bias, self.qkv_weight, self.qkv_bias, self.out_weight, self.out_bias)
        return ops.attn_block(x, *params, num_groups=gn.num_groups, num_heads=self.num_heads,
                              skip_rescale=self.skip_rescale, eps=gn.eps,
                              backend=op_backend(self.backend, x, *params))

    @classmethod
    def from_nin_block(cls, m: nn.Module, *, backend: str = "auto") -> "AttnBlock":
        """The same block as a score_sde-style one (GroupNorm_0, NIN_0..3, skip_rescale: absent in DDPM's AttnBlock,
        a plain residual sum), weights converted."""
        gn = m.GroupNorm_0
        new = cls(gn.num_channels, 1, bool(getattr(m, "skip_rescale", False)), num_groups=gn.num_groups, eps=gn.eps,
                  backend=backend)
        sd = {f"GroupNorm_0.{k}": v for k, v in gn.state_dict().items()}
        sd.update({f"NIN_{i}.{p}": getattr(getattr(m, f"NIN_{i}"), p).detach() for i in range(4) for p in "Wb"})
        new.load_state_dict(nin_to_fused(sd))
        ref = gn.weight if gn.weight is not None else m.NIN_0.W
        return new.to(device=ref.device, dtype=ref.dtype).train(m.training)


class PlainAttnBlock(nn.Module):
    """score_sde's AttnBlockpp written in plain PyTorch: single head, three NIN projections, einsum attention."""

    def __init__(self, channels: int, skip_rescale: bool = True, init_scale: float = 0.0, *,
                 num_groups: int | None = None, eps: float = 1e-6):
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(num_groups or num_groups_for(channels), channels, eps=eps)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale
        self.register_load_state_dict_pre_hook(_convert_on_load(_NIN_KEYS, _FUSED_KEYS, fused_to_nin))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * C ** -0.5
        w = torch.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
        h = self.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h
