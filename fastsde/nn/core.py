"""Plain layers shared by the fused and the reference U-Net builds: initialisers, NIN, convolutions, Dense.

Initialisation follows the NCSN++/DDPM++ papers' variance scaling (fan_avg, uniform): weights ~ U(-a, a) with
a = sqrt(3 scale / ((fan_in + fan_out) / 2)), biases zero. A "zero-initialised" layer uses scale 1e-10 rather than
exactly 0, so gradients still reach the layers before it at the first step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["variance_scaling_", "NIN", "conv3x3", "conv1x1", "dense", "num_groups_for", "op_backend"]


def op_backend(backend: str, *tensors) -> str:
    """The backend a module passes to an op: its own, except that "triton" becomes "auto" when autograd will record
    the call (grad enabled and an input requiring grad). Every backend of group_norm and attn_block differentiates,
    so on CUDA this changes nothing ("auto" is Triton there); on the CPU it keeps training, guidance and the
    likelihood's vector-Jacobian products off the Triton interpreter (native instead). Samplers run under no_grad."""
    if backend == "triton" and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return "auto"
    return backend


def num_groups_for(channels: int) -> int:
    """GroupNorm groups of NCSN++/DDPM++: min(C // 4, 32)."""
    return min(channels // 4, 32)


def variance_scaling_(w: torch.Tensor, scale: float = 1.0, fan_in: int | None = None, fan_out: int | None = None):
    """Fill w in place with U(-a, a), a = sqrt(3 scale / fan_avg); scale 0 means 1e-10 (near-zero, not dead)."""
    scale = 1e-10 if scale == 0 else scale
    if fan_in is None or fan_out is None:
        receptive = w[0, 0].numel() if w.dim() > 2 else 1
        fan_in, fan_out = w.shape[1] * receptive, w.shape[0] * receptive
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        return w.uniform_(-bound, bound)


class NIN(nn.Module):
    """Network-in-network 1x1 layer on NCHW: y[b, o] = sum_c x[b, c] W[c, o] + b[o]. W: (in, out), b: (out,)."""

    def __init__(self, in_dim: int, out_dim: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(variance_scaling_(torch.empty(in_dim, out_dim), init_scale, in_dim, out_dim))
        self.b = nn.Parameter(torch.zeros(out_dim))

    def forward(self, x):
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[None, :, None, None]


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
    variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 1)
    variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_dim: int, out_dim: int, init_scale: float = 1.0) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    variance_scaling_(lin.weight, init_scale)
    nn.init.zeros_(lin.bias)
    return lin
