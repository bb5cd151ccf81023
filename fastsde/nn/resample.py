"""Resolution changes of the U-Net: Upsample (nearest x2 [+ conv3x3]) and Downsample (conv3x3 stride 2 or 2x2 mean).

Plain PyTorch in both builds: convolutions are already one library call; `backend` is accepted for uniformity.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from fastsde.nn.core import conv3x3

__all__ = ["Upsample", "Downsample"]


class Upsample(nn.Module):
    """(B, C, H, W) -> (B, out_ch, 2H, 2W): nearest-neighbour x2, then conv3x3 when with_conv."""

    def __init__(self, channels: int, out_ch: int | None = None, with_conv: bool = True, *, backend: str = "auto"):
        super().__init__()
        out_ch = out_ch or channels
        if not with_conv and out_ch != channels:
            raise ValueError("Upsample without a convolution cannot change the channels")
        self.Conv_0 = conv3x3(channels, out_ch) if with_conv else None
        self.backend = backend

    def forward(self, x):
        h = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return h if self.Conv_0 is None else self.Conv_0(h)


class Downsample(nn.Module):
    """(B, C, H, W) -> (B, out_ch, H/2, W/2): conv3x3 with stride 2 when with_conv, else a 2x2 average pool."""

    def __init__(self, channels: int, out_ch: int | None = None, with_conv: bool = True, *, backend: str = "auto"):
        super().__init__()
        out_ch = out_ch or channels
        if not with_conv and out_ch != channels:
            raise ValueError("Downsample without a convolution cannot change the channels")
        self.Conv_0 = conv3x3(channels, out_ch, stride=2) if with_conv else None
        self.backend = backend

    def forward(self, x):
        return F.avg_pool2d(x, 2, stride=2) if self.Conv_0 is None else self.Conv_0(x)
