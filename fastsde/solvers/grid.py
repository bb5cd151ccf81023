"""Every SDE of the engine in (alpha, sigma) form, and the solvers' time grids.

VE, VP and subVP perturb data as x_t = alpha(t) x_0 + sigma(t) z (alpha, sigma = sde.marginal_prob's mean
coefficient and std). The solvers work with the log-SNR lambda = log(alpha / sigma), decreasing in t, and with
k-diffusion's sigma~ = sigma / alpha = exp(-lambda) (x~ = x / alpha follows a VE SDE in sigma~). A `Point` is one time
with the (alpha, sigma) the model's convention assigns to it: discrete-label models (score_sde's DDPM/SMLD) see the
marginal of the table entry their label indexes, so the solvers use exactly that (alpha, sigma), not the continuous one.
Everything here is float64 on the host.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from fastsde import sde as sde_lib

__all__ = ["Point", "GRIDS", "time_grid", "explicit_grid", "marginal", "log_snr", "time_of_log_snr", "point_fn"]

GRIDS = ("uniform", "logsnr", "karras", "quadratic")


class Point(NamedTuple):
    """One solver time: t (the model's time argument), alpha, sigma (float64 Python floats)."""

    t: float
    alpha: float
    sigma: float

    @property
    def lam(self) -> float:
        """Log-SNR log(alpha / sigma)."""
        return math.log(self.alpha / self.sigma)

    @property
    def st(self) -> float:
        """k-diffusion's sigma~ = sigma / alpha = exp(-lambda)."""
        return self.sigma / self.alpha


def marginal(sde, t: torch.Tensor, continuous: bool = True):
    """(alpha, sigma) float64 like t (n,): the marginal the model convention of fastsde.score.get_score_parts
    assigns to time t. Continuous labels (and subVP always): sde.marginal_prob. VP discrete: the DDPM tables at
    long(t (N - 1)). VE discrete: discrete_sigmas[N - 1 - round((T - t)(N - 1))], alpha = 1."""
    t = t.to(torch.float64)
    if isinstance(sde, sde_lib.VPSDE) and not continuous:
        i = (t * (sde.N - 1)).long()
        return (sde.table("sqrt_alphas_cumprod", t.device)[i].double(),
                sde.table("sqrt_1m_alphas_cumprod", t.device)[i].double())
    if isinstance(sde, sde_lib.VESDE) and not continuous:
        i = torch.round((sde.T - t) * (sde.N - 1)).long()
        s = sde.table("discrete_sigmas", t.device)[sde.N - 1 - i].double()
        return torch.ones_like(s), s
    mean, std = sde.marginal_prob(torch.ones(t.shape[0], 1, dtype=torch.float64, device=t.device), t)
    return mean[:, 0].double(), std.double()


def log_snr(sde, t: torch.Tensor) -> torch.Tensor:
    """Continuous log-SNR lambda(t) = log(alpha / sigma), float64 like t."""
    alpha, sigma = marginal(sde, t, True)
    return torch.log(alpha) - torch.log(sigma)


def time_of_log_snr(sde, lam: torch.Tensor) -> torch.Tensor:
    """t with lambda(t) = lam (float64 (n,)), by bisection on [0, 4T] (lambda decreases in t; times past T serve
    EDM's churn, which may raise the noise level above the grid's first point)."""
    lam = lam.to(torch.float64)
    lo = torch.full_like(lam, 1e-12 * sde.T)
    hi = torch.full_like(lam, 4.0 * sde.T)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        above = log_snr(sde, mid) > lam  # mid is earlier than the answer
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def time_grid(sde, steps: int, eps: float, kind="logsnr", rho: float = 7.0) -> torch.Tensor:
    """(steps + 1,) float64 times from T down to eps (both exact). kind: "uniform" in t; "logsnr" uniform in lambda
    (DPM-Solver); "karras" uniform in sigma~^(1/rho) (EDM, Karras et al. 2022 eq. 5); "quadratic" uniform in sqrt(t)
    (DPM-Solver's time_quadratic). An explicit grid is a sequence or 1-D tensor of steps + 1 decreasing times in
    [0, T], returned as float64 as given (eps is then not used); e.g. another library's discrete timesteps
    (fastsde.compat.diffusers.times_of_timesteps)."""
    if not isinstance(kind, str):
        return explicit_grid(sde, steps, kind)
    if kind not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {kind!r}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    T, n = float(sde.T), int(steps)
    ends = torch.tensor([T, eps], dtype=torch.float64)
    if kind == "uniform":
        t = torch.linspace(T, eps, n + 1, dtype=torch.float64)
    elif kind == "quadratic":
        t = torch.linspace(math.sqrt(T), math.sqrt(eps), n + 1, dtype=torch.float64) ** 2
    else:
        lam_T, lam_0 = log_snr(sde, ends).tolist()
        if kind == "logsnr":
            lam = torch.linspace(lam_T, lam_0, n + 1, dtype=torch.float64)
        else:
            try:
                hi, lo = math.exp(-lam_T) ** (1 / rho), math.exp(-lam_0) ** (1 / rho)
            except OverflowError:
                raise ValueError(f"rho must keep sigma~^(1/rho) within float64 over this grid's sigma~ range "
                                 f"[{math.exp(-lam_0 / 2):.3g}, {math.exp(-lam_T / 2):.3g}], got rho={rho!r} "
                                 f"(Karras et al. use 7)") from None
            lam = -rho * torch.log(torch.linspace(hi, lo, n + 1, dtype=torch.float64))
            if not bool((lam[1:] > lam[:-1]).all()):  # a huge rho makes sigma~^(1/rho) equal to float64 precision
                raise ValueError(f"rho={rho!r} collapses the Karras grid: sigma~^(1/rho) takes equal float64 values "
                                 f"at neighbouring steps over this grid's sigma~ range (Karras et al. use 7)")
        t = time_of_log_snr(sde, lam)
    t[0], t[-1] = T, eps
    return t


def point_fn(sde, continuous: bool = True) -> tuple[Callable, Callable]:
    """(at_time, at_log_snr): Point at a time t, and the Point whose continuous log-SNR is lam (for a solver's
    intermediate times; under discrete labels its realized lambda is the table's, which the solvers use)."""

    def at_time(t: float) -> Point:
        alpha, sigma = marginal(sde, torch.tensor([t], dtype=torch.float64), continuous)
        return Point(float(t), float(alpha[0]), float(sigma[0]))

    discrete = not continuous and isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE))

    def at_log_snr(lam: float) -> Point:
        t = float(time_of_log_snr(sde, torch.tensor([lam], dtype=torch.float64))[0])
        # discrete labels index tables on [0, T]: a time past T (a table-snapped start below the continuous log-SNR
        # at T, or EDM's churn) is the last row, never an index past the table's end
        return at_time(min(t, float(sde.T)) if discrete else t)

    return at_time, at_log_snr


def explicit_grid(sde, steps: int, times) -> torch.Tensor:
    """`times` (a sequence or 1-D tensor of steps + 1 strictly decreasing times in [0, T]) as a float64 tensor."""
    t = torch.as_tensor(times).detach().to("cpu", torch.float64)
    if t.dim() != 1 or t.numel() != int(steps) + 1:
        raise ValueError(f"an explicit grid must be a 1-D sequence of steps + 1 = {int(steps) + 1} times, got shape "
                         f"{tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or not bool((t >= 0).all() and (t <= sde.T).all()):
        raise ValueError(f"an explicit grid's times must lie in [0, T={sde.T}], got {t.tolist()[:4]}...")
    if not bool((t[1:] < t[:-1]).all()):
        raise ValueError(f"an explicit grid's times must strictly decrease, got {t.tolist()[:4]}...")
    return t.clone()
