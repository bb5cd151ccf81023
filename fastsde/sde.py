"""Forward SDEs of score-based generative modelling (Song et al., ICLR 2021, sections 3.4 and appendix B).

VPSDE (DDPM), subVPSDE and VESDE (SMLD/NCSN) with the score_sde API: `sde`, `marginal_prob`, `prior_sampling`,
`prior_logp`, `discretize` and `reverse`. Shapes: x is (B, ...) of any rank >= 2; t is (B,). Differences from the
original, on purpose: lookup tables follow the data's device, any rank works, and the drift of every SDE here is
linear in x, which `linear_sde`/`linear_discretize` expose as per-sample float64 coefficients for the fused steps.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from fastsde._util import per_sample, sum_except_batch
from fastsde.heat import FREQUENCY_SDES
from fastsde.sde_base import MAX_N, SDE, ReverseSDE, check_count, check_real, times_diffusion  # noqa: F401

__all__ = ["SDE", "VPSDE", "subVPSDE", "VESDE", "as_fastsde_sde", "MAX_N", "check_count", "check_real",
           "times_diffusion"]

class _LinearBetaSDE(SDE):
    """What VP and subVP share: beta(t) = beta_0 + t (beta_1 - beta_0), drift -beta(t) x / 2, the DDPM tables of
    that schedule, mean coefficient exp(lmc(t)) and the standard normal prior."""

    def __init__(self, beta_min: float, beta_max: float, N: int):
        super().__init__(N)
        check_real("beta_min", beta_min, low=0.0)
        check_real("beta_max", beta_max, low=0.0)
        if not 0 <= beta_min <= beta_max or not beta_max > 0:  # beta = 0 throughout: no noise, sigma(t) = 0
            raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={beta_min}, "
                             f"beta_max={beta_max}")
        N = self.N
        self.beta_0 = float(beta_min)
        self.beta_1 = float(beta_max)
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
        self.alphas = 1.0 - self.discrete_betas

    @property
    def T(self) -> float:
        return 1.0

    def _beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def _log_mean_coeff(self, t):
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def prior_sampling(self, shape, generator=None):
        return torch.randn(*shape, generator=generator)

    def prior_logp(self, z):
        D = int(np.prod(z.shape[1:]))
        return -D / 2.0 * np.log(2 * np.pi) - sum_except_batch(z**2) / 2.0


class VPSDE(_LinearBetaSDE):
    """Variance-preserving SDE: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw, beta linear in t (DDPM)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(beta_min, beta_max, N)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)

    def sde(self, x, t):
        beta_t = self._beta(t)
        return -0.5 * per_sample(beta_t, x) * x, torch.sqrt(beta_t)

    def marginal_prob(self, x, t):
        lmc = self._log_mean_coeff(t)
        return per_sample(torch.exp(lmc), x) * x, torch.sqrt(1.0 - torch.exp(2.0 * lmc))

    def discretize(self, x, t):
        """DDPM discretization: x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z_i."""
        timestep = self.timestep(t)
        beta = self.table("discrete_betas", x.device)[timestep]
        alpha = self.table("alphas", x.device)[timestep]
        return per_sample(torch.sqrt(alpha), x) * x - x, torch.sqrt(beta)

    def linear_sde(self, t):
        beta_t = self._beta(t.double())
        return -0.5 * beta_t, torch.sqrt(beta_t)

    def linear_discretize(self, t):
        beta = self.table("discrete_betas", t.device)[self.timestep(t)].double()
        return torch.sqrt(1.0 - beta) - 1.0, torch.sqrt(beta)


class subVPSDE(_LinearBetaSDE):
    """Sub-VP SDE: VP drift, diffusion sqrt(beta(t) (1 - exp(-2 int_0^t beta))); variance below VP's.

    Not in the original's subVPSDE: the VP tables of the same schedule (discrete_betas, alphas), so the Langevin
    corrector's alpha = 1 - beta_i is defined (the original crashes there).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        super().__init__(beta_min, beta_max, N)

    def _discount(self, t):
        return 1.0 - torch.exp(-2 * self.beta_0 * t - (self.beta_1 - self.beta_0) * t**2)

    def sde(self, x, t):
        beta_t = self._beta(t)
        return -0.5 * per_sample(beta_t, x) * x, torch.sqrt(beta_t * self._discount(t))

    def marginal_prob(self, x, t):
        # std = 1 - exp(2 lmc), no square root: the definition (Song et al. eq. 29), not a typo.
        lmc = self._log_mean_coeff(t)
        return per_sample(torch.exp(lmc), x) * x, 1.0 - torch.exp(2.0 * lmc)

    def linear_sde(self, t):
        t = t.double()
        beta_t = self._beta(t)
        return -0.5 * beta_t, torch.sqrt(beta_t * self._discount(t))


class VESDE(SDE):
    """Variance-exploding SDE: dx = sigma(t) sqrt(2 ln(sigma_max / sigma_min)) dw, sigma geometric (SMLD)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        check_real("sigma_min", sigma_min, low=0.0, low_open=True)
        check_real("sigma_max", sigma_max, low=0.0, low_open=True)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.discrete_sigmas = torch.exp(torch.linspace(np.log(sigma_min), np.log(sigma_max), self.N))

    @property
    def T(self) -> float:
        return 1.0

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def _g_factor(self) -> float:
        return math.sqrt(2 * (np.log(self.sigma_max) - np.log(self.sigma_min)))

    def sde(self, x, t):
        return torch.zeros_like(x), self._sigma(t) * self._g_factor()

    def marginal_prob(self, x, t):
        return x, self._sigma(t)

    def prior_sampling(self, shape, generator=None):
        return torch.randn(*shape, generator=generator) * self.sigma_max

    def prior_from_normal(self, z):
        return z * self.sigma_max

    def prior_logp(self, z):
        D = int(np.prod(z.shape[1:]))
        return -D / 2.0 * np.log(2 * np.pi * self.sigma_max**2) - sum_except_batch(z**2) / (2 * self.sigma_max**2)

    def sigma_pair(self, t):
        """(sigma_i, sigma_{i-1}) with sigma_{-1} = 0, from the discrete table."""
        timestep = self.timestep(t)
        sigmas = self.table("discrete_sigmas", t.device)
        adjacent = torch.where(timestep == 0, torch.zeros_like(t), sigmas[(timestep - 1).clamp(min=0)])
        return sigmas[timestep], adjacent

    def discretize(self, x, t):
        """SMLD discretization: x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z_i."""
        sigma, adjacent = self.sigma_pair(t)
        return torch.zeros_like(x), torch.sqrt(sigma**2 - adjacent**2)

    def linear_sde(self, t):
        return torch.zeros_like(t, dtype=torch.float64), self._sigma(t.double()) * self._g_factor()

    def linear_discretize(self, t):
        sigma, adjacent = (s.double() for s in self.sigma_pair(t))
        return torch.zeros_like(sigma), torch.sqrt(sigma**2 - adjacent**2)


#: The one SDE-by-name map: "ve", "vp", "subvp" and the heat family ("heat", "heat_ve", "blur", "ihdm",
#: fastsde.heat) -> class (command line, model files, training all use it).
SDE_CLASSES = {"ve": VESDE, "vp": VPSDE, "subvp": subVPSDE, **FREQUENCY_SDES}
SDE_NAMES = tuple(SDE_CLASSES)


def make_sde(name: str, N: int = 1000, **kwargs) -> SDE:
    """The SDE called `name` (SDE_NAMES) with N steps and hyper-parameters `kwargs` (score_sde's defaults
    for those not given)."""
    if name not in SDE_CLASSES:
        raise ValueError(f"sde must be one of {SDE_NAMES}, got {name!r}")
    return SDE_CLASSES[name](**kwargs, N=N)


# Duck-typed SDEs (score_sde's sde_lib instances): class name -> (fastsde class, constructor args read off the object).
_FOREIGN_SDES = {
    "VPSDE": (VPSDE, ("beta_0", "beta_1", "N")),
    "subVPSDE": (subVPSDE, ("beta_0", "beta_1", "N")),
    "VESDE": (VESDE, ("sigma_min", "sigma_max", "N")),
}


def as_fastsde_sde(obj) -> SDE:
    """`obj` as a fastsde SDE: fastsde SDEs pass through; score_sde's VPSDE / subVPSDE / VESDE instances (recognised
    by class name and their beta_0, beta_1, N or sigma_min, sigma_max, N attributes) become the fastsde SDE with the
    same parameters, whose tables and formulas equal score_sde's bit for bit. The original object stays reachable as
    `.source` (score_sde-style predictor classes get it back). Anything else is a TypeError naming what is missing."""
    if isinstance(obj, SDE):
        return obj
    name = type(obj).__name__
    if name not in _FOREIGN_SDES:
        raise TypeError(f"sde must be a fastsde SDE or a score_sde VPSDE/subVPSDE/VESDE instance, got {name}")
    cls, fields = _FOREIGN_SDES[name]
    missing = [f for f in fields if not hasattr(obj, f)]
    if missing:
        raise TypeError(f"sde of class {name} looks like score_sde's but lacks {missing}; expected attributes {fields}")
    converted = cls(*(float(getattr(obj, f)) for f in fields[:2]), N=obj.N)
    if float(getattr(obj, "T", 1.0)) != converted.T:
        raise ValueError(f"sde of class {name} has T={obj.T}; fastsde's {cls.__name__} has T={converted.T}")
    converted.source = obj
    return converted
