"""Reference per-frequency step of the heat family: the specification of csrc/freq_step.h and kernels/freq_step.py.

    out = a[k] x + b[k] score + c[k] z,   k = (element index within a sample) mod len(a)

x (B, ...) is a state in the DCT domain, a, b, c float64 coefficient vectors over the frequencies (length H W
broadcasts over channels, C H W gives each channel its own), z from FSN1 at (seed, sample_ids, draw) (white noise is
white in the orthonormal DCT basis) or explicit `noise`. Math in float64 for float64 x, else float32, coefficients
rounded once from float64; the score (a bfloat16 model output beside float32 x) is converted exactly.
"""
from __future__ import annotations

import torch

from fastsde.reference.step import compute_dtype, noise_for

__all__ = ["freq_step"]


def freq_step(x, score, a, b, c=None, *, noise=None, seed=None, sample_ids=None, draw=0):
    """x' = a x + b score + c z with per-frequency a, b, c (module docstring); returns x' in x's dtype."""
    dt = compute_dtype(x)
    per_sample = x[0].numel() if x.shape[0] else 0

    def coef(v):
        v = v.to(device=x.device, dtype=torch.float64).to(dt)
        return v.repeat(per_sample // v.numel()).reshape(x.shape[1:])

    out = coef(a) * x.to(dt) + coef(b) * score.to(dt)
    if c is not None:
        out = out + coef(c) * noise_for(x, noise, seed, sample_ids, draw, dt)
    return out.to(x.dtype)
