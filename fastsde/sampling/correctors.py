"""score_sde's correctors: MCMC refinement at a fixed time (Song et al. section 4.2, algorithm 5).

Formulas: docs/reference-math.md, "Correctors".
"""
from __future__ import annotations

import torch

from fastsde._util import flat_norm, per_sample
from fastsde.sampling.registry import Corrector, langevin_alpha, register_corrector

__all__ = ["LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector"]


@register_corrector(name="langevin")
class LangevinCorrector(Corrector):
    """Langevin MCMC with step size from a target signal-to-noise ratio (Song et al. algorithm 5).

    eps = 2 alpha (snr ||z|| / ||s||)^2 with ||.|| the batch mean of per-sample L2 norms, as score_sde.
    """

    fused_kind = "langevin"

    def update_fn(self, x, t):
        alpha = langevin_alpha(self.sde, t)
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score_fn(x, t)
            z = self.noise.normal_like(x)
            step_size = (self.snr * flat_norm(z).mean() / flat_norm(grad).mean()) ** 2 * 2 * alpha
            x_mean = x + per_sample(step_size, x) * grad
            x = x_mean + per_sample(torch.sqrt(step_size * 2), x) * z
        return x, x_mean


@register_corrector(name="ald")
class AnnealedLangevinDynamics(Corrector):
    """Annealed Langevin dynamics of NCSN: eps = 2 alpha (snr sigma_t)^2, sigma_t the marginal std."""

    fused_kind = "affine"

    def coefficients(self, t):
        alpha = langevin_alpha(self.sde, t).double()
        std = self.sde.marginal_prob(torch.zeros(t.shape[0], 1, dtype=torch.float64, device=t.device), t.double())[1]
        step = (self.snr * std) ** 2 * 2 * alpha
        return torch.ones_like(step), step, torch.sqrt(step * 2)

    def update_fn(self, x, t):
        alpha = langevin_alpha(self.sde, t)
        std = self.sde.marginal_prob(x, t)[1]
        step_size = (self.snr * std) ** 2 * 2 * alpha
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score_fn(x, t)
            z = self.noise.normal_like(x)
            x_mean = x + per_sample(step_size, x) * grad
            x = x_mean + z * per_sample(torch.sqrt(step_size * 2), x)
        return x, x_mean


@register_corrector(name="none")
class NoneCorrector(Corrector):
    """The identity: (x, x)."""

    fused_kind = "none"

    def update_fn(self, x, t):
        return x, x


