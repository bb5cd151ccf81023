"""score_sde's predictors: one step of a numerical solver of the reverse-time SDE (Song et al. section 4.2).

Each class gives the reference update (`update_fn`, score_sde's code) and, where the update is affine in (x, score,
z), its float64 coefficients for the fused loop (`coefficients`). Formulas: docs/reference-math.md, "Predictors".
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fastsde import sde as sde_lib
from fastsde._util import per_sample
from fastsde.sampling.registry import Predictor, register_predictor

__all__ = ["EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor", "NonePredictor"]


@register_predictor(name="euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """x_mean = x + [f - g^2 s] dt, x = x_mean + g sqrt(-dt) z with dt = -1/N."""

    def update_fn(self, x, t):
        dt = -1.0 / self.rsde.N
        z = self.noise.normal_like(x)
        drift, diffusion = self.rsde.sde(x, t)
        x_mean = x + drift * dt
        return x_mean + sde_lib.times_diffusion(diffusion * np.sqrt(-dt), z), x_mean

    def coefficients(self, t):
        f, g = self.sde.linear_sde(t)
        dt = -1.0 / self.rsde.N
        w = 0.5 if self.probability_flow else 1.0
        return 1.0 + f * dt, -w * g**2 * dt, None if self.probability_flow else g * math.sqrt(-dt)


@register_predictor(name="reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """x_mean = x - rev_f, x = x_mean + rev_G z (Song et al. eq. 46)."""

    def update_fn(self, x, t):
        f, G = self.rsde.discretize(x, t)
        z = self.noise.normal_like(x)
        x_mean = x - f
        return x_mean + sde_lib.times_diffusion(G, z), x_mean

    def coefficients(self, t):
        f, G = self.sde.linear_discretize(t)
        w = 0.5 if self.probability_flow else 1.0
        return 1.0 - f, w * G**2, None if self.probability_flow else G


@register_predictor(name="ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
    """DDPM ancestral sampling for VP (Ho et al. 2020), its SMLD analogue for VE (Song et al. eq. 47)."""

    def __init__(self, sde, score_fn, probability_flow=False, noise=None):
        super().__init__(sde, score_fn, probability_flow, noise)
        if not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE)):
            raise ValueError(f"ancestral_sampling is defined for VPSDE and VESDE only, not {type(sde).__name__}")
        if probability_flow:
            raise ValueError("ancestral_sampling has no probability-flow variant; "
                             "use reverse_diffusion or euler_maruyama")

    def update_fn(self, x, t):
        if isinstance(self.sde, sde_lib.VESDE):
            sigma, adjacent = self.sde.sigma_pair(t)
            score = self.score_fn(x, t)
            x_mean = x + score * per_sample(sigma**2 - adjacent**2, x)
            std = torch.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
        else:
            beta = self.sde.table("discrete_betas", t.device)[self.sde.timestep(t)]
            score = self.score_fn(x, t)
            x_mean = (x + per_sample(beta, x) * score) / per_sample(torch.sqrt(1.0 - beta), x)
            std = torch.sqrt(beta)
        z = self.noise.normal_like(x)
        return x_mean + per_sample(std, x) * z, x_mean

    def coefficients(self, t):
        if isinstance(self.sde, sde_lib.VESDE):
            sigma, adjacent = (v.double() for v in self.sde.sigma_pair(t))
            jump = sigma**2 - adjacent**2
            return torch.ones_like(sigma), jump, torch.sqrt(adjacent**2 * jump / sigma**2)
        beta = self.sde.table("discrete_betas", t.device)[self.sde.timestep(t)].double()
        root = torch.sqrt(1.0 - beta)
        return 1.0 / root, beta / root, torch.sqrt(beta)


@register_predictor(name="none")
class NonePredictor(Predictor):
    """The identity: (x, x)."""

    is_identity = True

    def update_fn(self, x, t):
        return x, x


