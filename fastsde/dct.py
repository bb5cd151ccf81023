"""The orthonormal 2-D DCT-II/III over an image's last two dims, and the Neumann Laplacian's eigenvalues in that
basis: the transform under which the heat family of SDEs (fastsde.heat) is diagonal. Two matmuls with cached bases
(faster than an FFT-based DCT at the digits' 16x16 and at 32x32: docs/design.md section 14)."""
from __future__ import annotations

import math

import torch

__all__ = ["dct2", "idct2", "dct_matrix", "freq_scale", "eigenvalues", "transform_dtype"]

_BASES: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _basis(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The n x n orthonormal DCT-II matrix C (C @ v is the transform of v), built in float64 and cached per
    (n, dtype, device). Private: never handed out, so no caller can change a cached basis."""
    key = (n, dtype, torch.device(device))
    basis = _BASES.get(key)
    if basis is None:
        k = torch.arange(n, dtype=torch.float64)[:, None]
        i = torch.arange(n, dtype=torch.float64)[None, :]
        c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
        c[0] /= math.sqrt(2.0)
        basis = _BASES[key] = c.to(device=device, dtype=dtype)
    return basis


def dct_matrix(n: int, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """A copy of the n x n orthonormal DCT-II matrix (rows are the basis vectors); its transpose is the DCT-III."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return _basis(n, dtype, device).clone()


def transform_dtype(x: torch.Tensor) -> torch.dtype:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor (..., H, W), got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _transform(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    dtype = transform_dtype(x)
    H, W = x.shape[-2:]
    ch, cw = _basis(H, dtype, x.device), _basis(W, dtype, x.device)
    if inverse:
        ch, cw = ch.T, cw.T
    return (ch @ x.to(dtype) @ cw.T).to(x.dtype)


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dims (scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))).
    Two matmuls with cached bases; half types are computed in float32."""
    return _transform(x, inverse=False)


def idct2(y: torch.Tensor) -> torch.Tensor:
    """Inverse of dct2 (the orthonormal 2-D DCT-III)."""
    return _transform(y, inverse=True)


def freq_scale(x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """idct2(coef * dct2(x)): x (B, C, H, W) times the operator diagonal in the DCT basis with entries `coef`
    (broadcastable to x, e.g. (B, 1, H, W)); returned in x's dtype."""
    dtype = transform_dtype(x)
    return idct2(coef.to(dtype) * dct2(x.to(dtype))).to(x.dtype)


def eigenvalues(shape, device="cpu") -> torch.Tensor:
    """lam (H, W) float64: minus the Neumann Laplacian's eigenvalues, pi^2 (k^2 / H^2 + l^2 / W^2)."""
    H, W = int(shape[-2]), int(shape[-1])
    k = torch.arange(H, dtype=torch.float64, device=device)[:, None] / H
    l = torch.arange(W, dtype=torch.float64, device=device)[None, :] / W  # noqa: E741
    return math.pi**2 * (k**2 + l**2)
