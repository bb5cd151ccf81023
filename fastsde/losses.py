"""Denoising score matching in continuous time (Song et al., ICLR 2021, eq. 7), score_sde's `get_sde_loss_fn`.

t ~ U(eps, T), x_t = mean(t) x_0 + std(t) z, and the loss per sample
  plain weighting        lambda(t) = std(t)^2:  || std(t) s(x_t, t) + z ||^2
  likelihood weighting   lambda(t) = g(t)^2:    g(t)^2 || s(x_t, t) + z / std(t) ||^2   (Song et al., 2021b)
summed (reduce_mean=False) or averaged over the data dimensions, then averaged over the batch. s is the score through
`get_score_fn(sde, model, train=True, continuous=True)`, so a noise-predicting VP model is trained on -eps / std
exactly as it is sampled. The heat family (fastsde.heat) has a per-frequency std s_k(t): x_t = mean + Sigma_t^{1/2} z
with Sigma_t diagonal in the DCT basis, and the plain weighting is lambda(t) = Sigma_t: || Sigma_t^{1/2} s + z ||^2,
which for its noise-predicting models is || model - z ||^2 (the DCT is orthonormal).
"""
from __future__ import annotations

import torch

from fastsde._util import per_sample
from fastsde.score import get_score_fn
from fastsde.sde import times_diffusion

__all__ = ["get_sde_loss_fn"]


def get_sde_loss_fn(sde, train: bool = True, reduce_mean: bool = True, continuous: bool = True,
                    likelihood_weighting: bool = False, eps: float = 1e-5):
    """loss_fn(model, batch, generator=None) -> scalar DSM loss (module docstring); score_sde's signature."""
    if not continuous:
        raise NotImplementedError("fastsde trains in continuous time only (continuous=True)")
    if likelihood_weighting and getattr(sde, "frequency_diagonal", False):
        raise NotImplementedError("likelihood weighting of the heat family (per-frequency g) is not implemented")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")

    def loss_fn(model, batch, generator=None):
        b = batch.shape[0]
        t = torch.rand(b, device=batch.device, generator=generator) * (sde.T - eps) + eps
        z = torch.randn(batch.shape, device=batch.device, dtype=batch.dtype, generator=generator)
        mean, std = sde.marginal_prob(batch, t)
        score_fn = get_score_fn(sde, model, train=train, continuous=True)
        if std.dim() > 1:  # per-frequency std (fastsde.heat): lambda = Sigma_t, || Sigma_t^{1/2} s + z ||^2
            score = score_fn(mean + times_diffusion(std, z), t)
            losses = torch.square(times_diffusion(std, score) + z).reshape(b, -1)
            return (losses.mean(-1) if reduce_mean else losses.sum(-1)).mean()
        perturbed = mean + per_sample(std, batch) * z
        score = score_fn(perturbed, t)
        if likelihood_weighting:
            g2 = sde.sde(torch.zeros_like(batch), t)[1] ** 2
            losses = torch.square(score + z / per_sample(std, batch)).reshape(b, -1)
            losses = (losses.mean(-1) if reduce_mean else losses.sum(-1)) * g2
        else:
            losses = torch.square(score * per_sample(std, batch) + z).reshape(b, -1)
            losses = losses.mean(-1) if reduce_mean else losses.sum(-1)
        return losses.mean()

    return loss_fn
