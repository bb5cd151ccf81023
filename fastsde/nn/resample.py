"""Resolution changes of the U-Net: Upsample (nearest x2 [+ conv3x3]) and Downsample (conv3x3 stride 2 or 2x2 mean).

Plain PyTorch in both builds: convolutions are already one library call; `backend` is accepted for uniformity.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastsde.nn.core import conv3x3

__all__ = ["Upsample", "Downsample", "FIRResample", "FIRConv2d", "fir_upsample_2d", "fir_downsample_2d",
           "fir_kernel_2d"]


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


def fir_kernel_2d(k, gain: float = 1.0, *, channels: int, dtype=None, device=None) -> torch.Tensor:
    """The separable FIR filter of score_sde's up_or_down_sampling (outer(k, k) / sum, times gain) as a depthwise
    weight (channels, 1, K, K)."""
    k1 = torch.as_tensor(k, dtype=torch.float64)
    if k1.dim() != 1 or k1.numel() < 1:
        raise ValueError(f"fir_kernel must be a 1-D sequence of taps, got {list(k1.shape)}")
    k2 = torch.outer(k1, k1)
    k2 = (k2 / k2.sum() * gain).to(dtype=dtype or torch.float32, device=device)
    return k2.expand(channels, 1, *k2.shape).contiguous()


def fir_upsample_2d(x: torch.Tensor, k=(1, 3, 3, 1), factor: int = 2) -> torch.Tensor:
    """score_sde's upsample_2d (zero insertion, FIR filter with gain factor^2) on x (B, C, H, W) -> (B, C, fH, fW),
    as one depthwise transposed convolution (keeps x's memory format) instead of upfirdn2d's per-channel reshapes.

    upfirdn2d's out[o] = sum_i x[i] K[o + K - 1 - pad0 - f i] is the transposed convolution's output shifted by
    s = K - 1 - pad0 with pad0 = (p + 1) // 2 + f - 1, p = K - f."""
    C = x.shape[1]
    w = fir_kernel_2d(k, factor**2, channels=C, dtype=x.dtype, device=x.device)
    K = w.shape[-1]
    p = K - factor
    pad0 = (p + 1) // 2 + factor - 1
    s = K - 1 - pad0
    y = F.conv_transpose2d(x, w, stride=factor, groups=C)
    H, W = x.shape[2] * factor, x.shape[3] * factor
    return F.pad(y, [-s, W - (y.shape[3] - s), -s, H - (y.shape[2] - s)])


def fir_downsample_2d(x: torch.Tensor, k=(1, 3, 3, 1), factor: int = 2, extra: int = 0) -> torch.Tensor:
    """score_sde's downsample_2d (FIR filter, then keep every factor-th sample) on x (B, C, H, W) as one depthwise
    strided convolution. extra > 0 filters with padding for a following (extra + 1)-tap convolution and stride 1
    (conv_downsample_2d's first half)."""
    C = x.shape[1]
    w = fir_kernel_2d(k, 1.0, channels=C, dtype=x.dtype, device=x.device).flip(-1, -2)
    p = w.shape[-1] - factor + extra
    pad0, pad1 = (p + 1) // 2, p // 2
    stride = 1 if extra else factor
    if pad0 == pad1:
        return F.conv2d(x, w, stride=stride, padding=pad0, groups=C)
    return F.conv2d(F.pad(x, [pad0, pad1, pad0, pad1]), w, stride=stride, groups=C)


class FIRResample(nn.Module):
    """score_sde's FIR resampling without a convolution (layerspp.Upsample/Downsample with fir=True,
    with_conv=False): (B, C, H, W) -> (B, C, 2H, 2W) when up, else (B, C, H/2, W/2). No parameters."""

    def __init__(self, up: bool, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.up, self.fir_kernel = up, tuple(fir_kernel)

    def forward(self, x):
        return fir_upsample_2d(x, self.fir_kernel) if self.up else fir_downsample_2d(x, self.fir_kernel)


class FIRConv2d(nn.Module):
    """score_sde's up_or_down_sampling.Conv2d (weight (out, in, k, k), bias (out,)): a k x k convolution fused with
    FIR upsampling (up) or downsampling (down), written as a depthwise FIR pass + one strided (transposed) conv."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, up: bool, down: bool, fir_kernel):
        super().__init__()
        self.weight, self.bias = weight, bias
        self.up, self.down, self.fir_kernel = up, down, tuple(fir_kernel)

    @classmethod
    def from_module(cls, m: nn.Module) -> "FIRConv2d":
        return cls(m.weight, getattr(m, "bias", None) if m.use_bias else None, bool(m.up), bool(m.down),
                   m.resample_kernel)

    def forward(self, x):
        kc = self.weight.shape[-1]
        if self.up:
            # upsample_conv_2d: transposed conv with the flipped weight (stride 2), then the FIR filter (gain 4)
            # with pads ((p + 1) // 2 + 1, p // 2 + 1), p = K - 2 - (kc - 1).
            w = self.weight.flip(-1, -2).transpose(0, 1)
            y = F.conv_transpose2d(x, w, stride=2)
            C = y.shape[1]
            f = fir_kernel_2d(self.fir_kernel, 4.0, channels=C, dtype=y.dtype, device=y.device).flip(-1, -2)
            p = f.shape[-1] - 2 - (kc - 1)
            pad0, pad1 = (p + 1) // 2 + 1, p // 2 + 1
            y = F.conv2d(F.pad(y, [pad0, pad1, pad0, pad1]), f, groups=C) if pad0 != pad1 else \
                F.conv2d(y, f, padding=pad0, groups=C)
        elif self.down:
            y = F.conv2d(fir_downsample_2d(x, self.fir_kernel, 2, extra=kc - 1), self.weight, stride=2)
        else:
            y = F.conv2d(x, self.weight, padding=kc // 2)
        return y if self.bias is None else y + self.bias.reshape(1, -1, 1, 1)
