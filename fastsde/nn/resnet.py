"""The DDPM++ residual block: ResnetBlock (GroupNorm+SiLU fused, time embedding folded into the second GroupNorm)
and its plain-PyTorch twin PlainResnetBlock (score_sde's ResnetBlockDDPMpp layout; same parameter names).

    h = Conv_0(SiLU(GN_0(x)));  h = SiLU(GN_1(h + Dense_0(SiLU(temb))));  h = Conv_1(Dropout(h))  (Conv_1 ~ 0 at init)
    x = NIN_0(x) when the channels change;  return (x + h) / sqrt(2) if skip_rescale else x + h

The "+ Dense(temb) then GroupNorm then SiLU" step is one fastsde.ops.group_norm(h, ..., emb_add=Dense(...),
act="silu"): the per-channel add happens inside the normalisation pass instead of as a separate pass over h.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fastsde.nn.core import NIN, conv3x3, dense, num_groups_for
from fastsde.nn.groupnorm import GroupNormAct
from fastsde.nn.resample import fir_downsample_2d, fir_upsample_2d

__all__ = ["ResnetBlock", "PlainResnetBlock", "ResnetBlockBigGAN"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _build(block, in_ch, out_ch, temb_dim, dropout, skip_rescale, init_scale, norm):
    block.in_ch, block.out_ch, block.skip_rescale = in_ch, out_ch, skip_rescale
    block.GroupNorm_0 = norm(in_ch)
    block.Conv_0 = conv3x3(in_ch, out_ch)
    block.Dense_0 = dense(temb_dim, out_ch) if temb_dim else None
    block.GroupNorm_1 = norm(out_ch)
    block.Dropout_0 = nn.Dropout(dropout)
    block.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
    block.NIN_0 = NIN(in_ch, out_ch) if in_ch != out_ch else None
    block.Conv_2 = None  # a 3x3 shortcut instead of NIN_0, only when converted from such a block (accelerate)


def _nin_shortcut(x, W, b):
    """NIN (W (in, out), b (out,)) on x (B, in, H, W) as one GEMM in x's own layout: channels-last x is a (BHW, in)
    matrix (addmm, channels-last result), NCHW x a batch of (in, HW) matrices (baddbmm); no einsum permute copies."""
    B, C, H, Wd = x.shape
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        y = torch.addmm(b, x.permute(0, 2, 3, 1).reshape(B * H * Wd, C), W)
        return y.view(B, H, Wd, -1).permute(0, 3, 1, 2)
    y = torch.baddbmm(b[None, :, None], W.T.expand(B, -1, -1), x.reshape(B, C, H * Wd))
    return y.view(B, -1, H, Wd)


class ResnetBlock(nn.Module):
    """DDPM++ residual block on x (B, in_ch, H, W) with time embedding temb (B, temb_dim); returns (B, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None, dropout: float = 0.1,
                 skip_rescale: bool = True, init_scale: float = 0.0, *, backend: str = "auto"):
        super().__init__()
        self.backend = backend
        _build(self, in_ch, out_ch or in_ch, temb_dim, dropout, skip_rescale, init_scale,
               lambda c: GroupNormAct(num_groups_for(c), c, 1e-6, act="silu", backend=backend))

    def forward(self, x, temb=None):
        h = self.Conv_0(self.GroupNorm_0(x))
        emb = None if temb is None or self.Dense_0 is None else self.Dense_0(F.silu(temb))
        h = self.Conv_1(self.Dropout_0(self.GroupNorm_1(h, emb_add=emb)))
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        elif self.NIN_0 is not None:
            x = _nin_shortcut(x, self.NIN_0.W, self.NIN_0.b)
        h = h.add_(x)  # in place on the conv output: its backward needs only the conv's input and weight
        return h.mul_(_INV_SQRT2) if self.skip_rescale else h

    @classmethod
    def from_plain(cls, m: nn.Module, *, backend: str = "auto") -> "ResnetBlock":
        """The same block as a PlainResnetBlock / score_sde ResnetBlockDDPMpp, sharing its parameters."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.backend = backend
        new.in_ch, new.out_ch = m.GroupNorm_0.num_channels, m.Conv_0.out_channels
        new.skip_rescale = bool(getattr(m, "skip_rescale", False))  # DDPM's ResnetBlockDDPM has none: a plain sum
        new.GroupNorm_0 = GroupNormAct.from_groupnorm(m.GroupNorm_0, "silu", backend=backend)
        new.Conv_0 = m.Conv_0
        new.Dense_0 = getattr(m, "Dense_0", None)
        new.GroupNorm_1 = GroupNormAct.from_groupnorm(m.GroupNorm_1, "silu", backend=backend)
        new.Dropout_0 = m.Dropout_0
        new.Conv_1 = m.Conv_1
        shortcut = new.in_ch != new.out_ch
        new.NIN_0 = getattr(m, "NIN_0", None) if shortcut else None
        new.Conv_2 = getattr(m, "Conv_2", None) if shortcut else None
        return new.train(m.training)


class PlainResnetBlock(nn.Module):
    """ResnetBlock written with nn.GroupNorm and nn.SiLU as score_sde does; same parameter names and shapes."""

    def __init__(self, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None, dropout: float = 0.1,
                 skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        self.act = nn.SiLU()
        _build(self, in_ch, out_ch or in_ch, temb_dim, dropout, skip_rescale, init_scale,
               lambda c: nn.GroupNorm(num_groups_for(c), c, eps=1e-6))

    def forward(self, x, temb=None):
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None and self.Dense_0 is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.NIN_0 is not None:
            x = self.NIN_0(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGAN(nn.Module):
    """score_sde's ResnetBlockBigGANpp with GroupNorm+SiLU fused and the time embedding added inside GroupNorm_1:

        h = SiLU(GN_0(x)); h, x = resample(h), resample(x)  (FIR or nearest/mean, when up or down)
        h = Conv_1(Dropout(SiLU(GN_1(Conv_0(h) + Dense_0(SiLU(temb))))));  x = Conv_2(x) (1x1) when shapes change
        return (x + h) / sqrt(2) if skip_rescale else x + h

    Built from an existing block (from_module), sharing its parameters; x: (B, in_ch, H, W), temb (B, temb_dim)."""

    @classmethod
    def from_module(cls, m: nn.Module, *, backend: str = "auto") -> "ResnetBlockBigGAN":
        new = cls()
        new.backend = backend
        new.up, new.down, new.fir, new.fir_kernel = bool(m.up), bool(m.down), bool(m.fir), tuple(m.fir_kernel)
        new.skip_rescale = bool(m.skip_rescale)
        new.GroupNorm_0 = GroupNormAct.from_groupnorm(m.GroupNorm_0, "silu", backend=backend)
        new.Conv_0, new.Dense_0 = m.Conv_0, getattr(m, "Dense_0", None)
        new.GroupNorm_1 = GroupNormAct.from_groupnorm(m.GroupNorm_1, "silu", backend=backend)
        new.Dropout_0, new.Conv_1, new.Conv_2 = m.Dropout_0, m.Conv_1, getattr(m, "Conv_2", None)
        return new.train(m.training)

    def _resample(self, v):
        if self.up:
            return fir_upsample_2d(v, self.fir_kernel) if self.fir else F.interpolate(v, scale_factor=2.0,
                                                                                      mode="nearest")
        if self.down:
            return fir_downsample_2d(v, self.fir_kernel) if self.fir else F.avg_pool2d(v, 2, stride=2)
        return v

    def forward(self, x, temb=None):
        h = self._resample(self.GroupNorm_0(x))
        x = self._resample(x)
        h = self.Conv_0(h)
        emb = None if temb is None or self.Dense_0 is None else self.Dense_0(F.silu(temb))
        h = self.Conv_1(self.Dropout_0(self.GroupNorm_1(h, emb_add=emb)))
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        h = h.add_(x)
        return h.mul_(_INV_SQRT2) if self.skip_rescale else h
