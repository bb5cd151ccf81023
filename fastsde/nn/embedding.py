"""Noise-level embeddings: Fourier features of log sigma (NCSN++, VE) and sinusoidal positions of 999 t (DDPM++)."""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GaussianFourierProjection", "timestep_embedding"]


class GaussianFourierProjection(nn.Module):
    """[sin(2 pi s W), cos(2 pi s W)] for s (B,): (B, 2 embedding_size); W ~ N(0, scale^2), fixed (Tancik et al. 2020;
    Song et al. 2021, NCSN++). W is a non-trainable parameter so it travels with the state dict. It stays float32 in
    a half-precision model (keep_float32, fastsde.precision.PrecisionModel) and the features are computed in the
    wider of s's and W's dtypes: |2 pi s W| reaches hundreds, where 8 bits of W would move the phase by a radian."""

    keep_float32 = ("W",)

    def __init__(self, embedding_size: int = 256, scale: float = 16.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, s):
        dtype = torch.promote_types(s.dtype, self.W.dtype)
        proj = s.to(dtype)[:, None] * self.W.to(dtype)[None, :] * (2.0 * math.pi)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)


def timestep_embedding(t: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of t (B,) -> (B, dim) (Vaswani et al. 2017; DDPM): frequencies
    max_positions^(-i / (dim/2 - 1)), i < dim/2, as [sin, cos], zero-padded to an odd dim."""
    if t.dim() != 1:
        raise ValueError(f"t must be a (B,) vector, got shape {tuple(t.shape)}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(i * (-math.log(max_positions) / (half - 1)))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
