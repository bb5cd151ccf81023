"""The SDE interface of score_sde (Song et al., ICLR 2021) and what every SDE shares: the abstract `SDE`, the
reverse-time SDE / probability-flow ODE (`ReverseSDE`), `times_diffusion` (a per-sample or per-frequency diffusion
applied to a tensor) and the argument checks. The SDEs themselves: fastsde.sde (VE/VP/subVP, the name registry) and
fastsde.heat (the DCT-diagonal family)."""
from __future__ import annotations

import abc
import math
import operator

import numpy as np
import torch

from fastsde._util import per_sample
from fastsde.dct import freq_scale

__all__ = ["SDE", "ReverseSDE", "MAX_N", "check_count", "check_real", "times_diffusion"]

#: The most discretization steps an SDE takes: its tables (float32, up to five of N entries) stay under 200 MB and
#: a PC run of N steps is still a run, not a hang; score_sde's configs use 1000 to 2000. More is a ValueError,
#: raised before any table is built.
MAX_N = 10_000_000


def check_count(name: str, value, limit: int, what: str = "") -> int:
    """`value` as an int in [1, limit] (ints, numpy ints and integral floats such as 1000.0 from a JSON config);
    3.7, True, "10", nan and counts above `limit` are a TypeError/ValueError naming `name`, before any allocation."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        n = operator.index(value)
    except TypeError:
        if not isinstance(value, (float, np.floating)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        n = int(value)
    if not 1 <= n <= limit:
        raise ValueError(f"{name} must be >= 1 and <= {limit:,}{what}, got {n:,}")
    return n


def check_real(name: str, value, *, low: float | None = None, low_open: bool = False) -> float:
    """`value` as a finite float (>= low, or > low with low_open), or a TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        if not (isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex()):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)):
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return v


class SDE(abc.ABC):
    """dx = f(x, t) dt + g(t) dw on t in [0, T]; N is the number of discretization steps (1 to MAX_N)."""

    def __init__(self, N: int):
        self.N = check_count("N (number of discretization steps)", N, MAX_N,
                             " (fastsde.sde.MAX_N: the tables hold N entries each)")
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}

    @property
    @abc.abstractmethod
    def T(self) -> float:
        """End time of the SDE."""

    @abc.abstractmethod
    def sde(self, x: torch.Tensor, t: torch.Tensor):
        """Drift f(x, t) (B, ...) and diffusion g(t) (B,)."""

    @abc.abstractmethod
    def marginal_prob(self, x: torch.Tensor, t: torch.Tensor):
        """Mean (B, ...) and std (B,) of p_0t(x(t) | x(0) = x)."""

    @abc.abstractmethod
    def prior_sampling(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample of p_T with the given shape (drawn with torch.randn: the original's RNG order)."""

    def prior_from_normal(self, z: torch.Tensor) -> torch.Tensor:
        """Map standard normal noise z to a sample of p_T (identity for VP/subVP, sigma_max z for VE)."""
        return z

    @abc.abstractmethod
    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log p_T(z) per sample, summed over all non-batch dims: (B,)."""

    def table(self, name: str, device) -> torch.Tensor:
        """A discretization table on `device` (built once per device, not per step)."""
        device = torch.device(device)
        key = (name, device)
        if key not in self._tables:
            self._tables[key] = getattr(self, name).to(device)
        return self._tables[key]

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Index into the discrete tables: long(t (N - 1) / T), as the original."""
        return (t * (self.N - 1) / self.T).long()

    def discretize(self, x: torch.Tensor, t: torch.Tensor):
        """Euler–Maruyama discretization x_{i+1} = x_i + f_i + G_i z_i: returns f (B, ...) and G (B,)."""
        dt = 1 / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)

    # Fused-step coefficients: every drift here is f(x, t) = f_coef(t) x.
    def linear_sde(self, t: torch.Tensor):
        """(f_coef, g) as float64 (B,) with sde(x, t) == (f_coef x, g)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose a linear drift")

    def linear_discretize(self, t: torch.Tensor):
        """(f_coef, G) as float64 (B,) with discretize(x, t) == (f_coef x, G)."""
        f_coef, g = self.linear_sde(t)
        dt = 1 / self.N
        return f_coef * dt, g * math.sqrt(dt)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or probability-flow ODE) for the score function score_fn(x, t)."""
        return ReverseSDE(self, score_fn, probability_flow)


def times_diffusion(G: torch.Tensor, v: torch.Tensor, power: int = 1) -> torch.Tensor:
    """G^power v for a diffusion G that is per sample (B,) (VE/VP/subVP: the original's per_sample(G, v) ** power * v,
    bit for bit) or per frequency ((B, 1, H, W) in the DCT basis, fastsde.heat: idct2(G^power dct2(v)))."""
    if G.dim() == 1:
        return per_sample(G, v) ** power * v
    return freq_scale(v, G**power)


class ReverseSDE:
    """dx = [f - g^2 s] dt + g dw-bar (Song et al. eq. 6); probability flow: dx = [f - g^2 s / 2] dt (eq. 13)."""

    def __init__(self, forward: SDE, score_fn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.N = forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    def __getattr__(self, name):
        # Tables and parameters of the forward SDE (discrete_betas, sigma_max, ...) read through, as in score_sde.
        if name == "forward":
            raise AttributeError(name)
        return getattr(self.forward, name)

    def _weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: torch.Tensor, t: torch.Tensor):
        """Reverse drift (B, ...) and diffusion (B,); the diffusion is zero for the probability flow."""
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - times_diffusion(diffusion, score, 2) * self._weight()
        if self.probability_flow:
            diffusion = torch.zeros_like(diffusion)
        return drift, diffusion

    def discretize(self, x: torch.Tensor, t: torch.Tensor):
        """rev_f = f - G^2 s (halved for probability flow), rev_G = G (zero for probability flow)."""
        f, G = self.forward.discretize(x, t)
        rev_f = f - times_diffusion(G, self.score_fn(x, t), 2) * self._weight()
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G
