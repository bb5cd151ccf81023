"""Reference sampler-step ops: the specification the fused kernels (csrc/step.h, kernels/step.py) reproduce.

Every predictor step of VE/VP/subVP is x' = a x + b score + c z with per-sample scalars (a, b, c) computed on the
host in float64 (docs/reference-math.md, "Predictors"); the Langevin corrector needs whole-batch norms first.
Noise z is either given (`noise=`) or drawn from FSN1 at (seed, sample_ids, draw) — see fastsde/random.py.
Math runs in float64 for float64 inputs, else in float32 (coefficients rounded once from float64). The compute type
follows the state x; the score (model output) may be narrower than x -- float16/bfloat16 beside float32, float32
beside float64 (a half-precision model beside a float32 sampler state) -- and is converted to it exactly.
"""
from __future__ import annotations

import torch

from fastsde import random as fsn1
from fastsde._util import per_sample

__all__ = ["affine_step", "step_sq_norms", "langevin_step", "affine_combine_step"]


def compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def noise_for(x, noise, seed, sample_ids, draw, dtype):
    if noise is not None:
        return noise.to(dtype)
    return fsn1.fsn1_normal_like(torch.empty(x.shape, dtype=torch.float64), seed, draw, sample_ids).to(
        device=x.device, dtype=dtype)


def _coef(v, x, dtype):
    v = torch.as_tensor(v, dtype=torch.float64, device=x.device).reshape(-1)
    return per_sample(v.expand(x.shape[0]), x).to(dtype)


def affine_step(x, score, a, b, c=None, *, noise=None, seed=None, sample_ids=None, draw=0, x_mean_out=None,
                mask=None, data=None, data_a=None, data_c=None, data_draw=0):
    """x_mean = a x + b score; x' = x_mean + c z (c=None: no noise). x, score: (B, ...); a, b, c: (B,) or scalar.

    With mask and data, score_sde's inpainting projection follows: x' <- x'(1-m) + (data_a data + data_c z2) m,
    x_mean <- x'(1-m) + data_a data m, z2 drawn from FSN1 at data_draw. Returns x'; writes x_mean_out if given.
    """
    dt = compute_dtype(x)
    xc, sc = x.to(dt), score.to(dt)
    x_mean = _coef(a, xc, dt) * xc + _coef(b, xc, dt) * sc
    x_new = x_mean if c is None else x_mean + _coef(c, xc, dt) * noise_for(x, noise, seed, sample_ids, draw, dt)
    if mask is not None:
        m, known = mask.to(dt), _coef(data_a, xc, dt) * data.to(dt)
        z2 = noise_for(x, None, seed, sample_ids, data_draw, dt)
        x_new = x_new * (1 - m) + (known + _coef(data_c, xc, dt) * z2) * m
        x_mean = x_new * (1 - m) + known * m
    if x_mean_out is not None:
        x_mean_out.copy_(x_mean)
    return x_new.to(x.dtype)


def step_sq_norms(score, *, noise=None, seed=None, sample_ids=None, draw=0):
    """(B, 2) float64: per-sample sum of score^2 and of z^2 (the step's noise), accumulated in float64. Explicit
    noise is state-like (its dtype sets the compute type); the score may be narrower."""
    z = noise_for(score, noise, seed, sample_ids, draw, compute_dtype(score if noise is None else noise))
    flat_s = score.reshape(score.shape[0], -1).double()
    flat_z = z.reshape(score.shape[0], -1).double()
    return torch.stack([(flat_s**2).sum(1), (flat_z**2).sum(1)], dim=1)


def langevin_step(x, score, snr, alpha, *, noise=None, seed=None, sample_ids=None, draw=0, per_sample_norms=False,
                  x_mean_out=None):
    """One Langevin iteration: eps = 2 alpha (snr ||z|| / ||score||)^2 (batch-mean norms unless per_sample_norms);
    x_mean = x + eps score; x' = x_mean + sqrt(2 eps) z. Returns x'."""
    norms = step_sq_norms(score, noise=noise, seed=seed, sample_ids=sample_ids, draw=draw).sqrt()
    gn, zn = norms[:, 0], norms[:, 1]
    if not per_sample_norms:
        gn, zn = gn.mean(), zn.mean()
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x.device)
    step = ((snr * zn / gn) ** 2 * 2 * alpha).reshape(-1).expand(x.shape[0])
    return affine_step(x, score, 1.0, step, torch.sqrt(2 * step), noise=noise, seed=seed, sample_ids=sample_ids,
                       draw=draw, x_mean_out=x_mean_out)


def affine_combine_step(x, outputs, a, b, c=None, *, noise=None, seed=None, sample_ids=None, draw=0):
    """x' = a x + sum_k b[k] outputs[k] + c z: the update of every few-step solver (fastsde.solvers).

    x: (B, ...); outputs: list of 0 to 3 tensors like x (stored model outputs or data predictions); a, c: float or
    (B,)/(1,); b: list of as many coefficients as outputs; c=None: no noise. Noise: `noise=` or FSN1 at
    (seed, sample_ids, draw). Returns x' in x's dtype.
    """
    dt = compute_dtype(x)
    xc = x.to(dt)
    x_new = _coef(a, xc, dt) * xc
    for out_k, b_k in zip(outputs, b):
        x_new = x_new + _coef(b_k, xc, dt) * out_k.to(dt)
    if c is not None:
        x_new = x_new + _coef(c, xc, dt) * noise_for(x, noise, seed, sample_ids, draw, dt)
    return x_new.to(x.dtype)
