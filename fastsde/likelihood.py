"""Exact likelihood of score-based models via the probability-flow ODE (Song et al., ICLR 2021, section 4.3).

log p_0(x) = log p_T(z) + int_eps^T div(f - g^2 s / 2) dt along the ODE from x to z, with the divergence estimated
by Hutchinson's trace estimator (one fixed probe e per call: div F = E[e^T dF/dx e]).
"""
from __future__ import annotations

import numpy as np
import torch

from fastsde._util import sum_except_batch
from fastsde.sampling.guard import check_finite
from fastsde.sampling.ode import MAX_EVALS, EvalBudget, check_ode_args
from fastsde.sde import as_fastsde_sde
from fastsde.score import from_flattened_numpy, get_score_fn, to_flattened_numpy

__all__ = ["get_div_fn", "get_likelihood_fn", "hutchinson_probe", "HUTCHINSON_TYPES"]

HUTCHINSON_TYPES = ("Rademacher", "Gaussian")


def get_div_fn(fn):
    """div_fn(x, t, e) -> (B,): Hutchinson estimate e^T (d fn(x, t) / dx) e by one vector-Jacobian product."""

    def div_fn(x, t, e):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            fn_e = torch.sum(fn(x, t) * e)
            grad_fn_e = torch.autograd.grad(fn_e, x)[0]
        return sum_except_batch(grad_fn_e * e)

    return div_fn


def hutchinson_probe(shape, hutchinson_type="Rademacher", generator: torch.Generator | None = None,
                     dtype=torch.float32) -> torch.Tensor:
    """The Hutchinson probe e (shape) on the CPU: ±1 (Rademacher) or standard normal (Gaussian) from `generator`."""
    if hutchinson_type not in HUTCHINSON_TYPES:
        raise ValueError(f"hutchinson_type must be one of {HUTCHINSON_TYPES}, got {hutchinson_type!r}")
    if hutchinson_type == "Gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


def get_likelihood_fn(sde, inverse_scaler, hutchinson_type="Rademacher", rtol=1e-5, atol=1e-5, method="RK45",
                      eps=1e-5, *, generator: torch.Generator | None = None, dtype=torch.float32,
                      max_evals: int = MAX_EVALS):
    """likelihood_fn(model, data (B, ...), probe=None) -> (bpd (B,), z (B, ...), nfe).

    bpd = -(log p_T(z) + delta_logp) / (ln 2 D) + 7 - inverse_scaler(-1): the offset accounts for uniform
    dequantization of 8-bit data (+8 for data in [0, 1], +7 for [-1, 1]). The model is used with continuous
    time conventions. `generator` draws the probe (default: torch's global generator, as score_sde) unless
    `probe` (data's shape) is given: rows of one hutchinson_probe draw give every datum the same probe in any batch.
    A NaN/inf drift or divergence stops the integration with guard.NonFiniteError naming t; more than max_evals
    evaluations with a RuntimeError (rtol, atol >= max(1e-12, dtype's epsilon) and eps in (0, T) are checked here,
    so no setting can loop forever: fastsde.sampling.ode.min_tolerance).
    """
    sde = as_fastsde_sde(sde)  # score_sde's own SDE objects are accepted
    if hutchinson_type not in HUTCHINSON_TYPES:
        raise ValueError(f"hutchinson_type must be one of {HUTCHINSON_TYPES}, got {hutchinson_type!r}")
    eps = check_ode_args(sde, rtol, atol, method, eps, dtype)
    EvalBudget(max_evals, "")

    def drift_fn(model, x, t):
        score_fn = get_score_fn(sde, model, train=False, continuous=True)
        return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]

    def likelihood_fn(model, data, probe=None):
        if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] == 0:
            raise ValueError(f"data must be a (batch, ...) tensor with rank >= 2 and batch >= 1, got "
                             f"{tuple(getattr(data, 'shape', ())) or type(data).__name__}")
        if not data.dtype.is_floating_point:
            raise TypeError(f"data must be floating point, got {data.dtype}")
        check_finite(data, what="the likelihood's data")
        budget = EvalBudget(max_evals, "the likelihood ODE")
        shape = tuple(data.shape)
        batch = shape[0]
        device = data.device
        if probe is not None and tuple(probe.shape) != shape:
            raise ValueError(f"probe must have data's shape {shape}, got {tuple(probe.shape)}")
        div_fn = get_div_fn(lambda x, t: drift_fn(model, x, t))
        with torch.no_grad():
            if probe is not None:
                e = probe.to(device=device, dtype=dtype)
            else:
                e = hutchinson_probe(shape, hutchinson_type, generator, dtype).to(device)

            def ode_func(t, y):
                budget.spend(t)
                x = from_flattened_numpy(y[:-batch], shape).to(device=device, dtype=dtype)
                vec_t = torch.ones(batch, device=device, dtype=dtype) * t
                drift = check_finite(drift_fn(model, x, vec_t), step=budget.count, t=t, what="the probability-flow "
                                     "drift")
                logp_grad = check_finite(div_fn(x, vec_t, e), step=budget.count, t=t, what="the divergence estimate")
                return np.concatenate([to_flattened_numpy(drift), to_flattened_numpy(logp_grad)], axis=0)

            init = np.concatenate([to_flattened_numpy(data), np.zeros((batch,))], axis=0)
            from scipy import integrate  # imported on first use: `import fastsde` stays free of scipy

            solution = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method=method)
            if not solution.success:
                raise RuntimeError(f"ODE solver failed: {solution.message}")
            zp = solution.y[:, -1]
            z = from_flattened_numpy(zp[:-batch], shape).to(device=device, dtype=dtype)
            delta_logp = from_flattened_numpy(zp[-batch:], (batch,)).to(device=device, dtype=dtype)
            D = int(np.prod(shape[1:]))
            bpd = -(sde.prior_logp(z) + delta_logp) / np.log(2) / D
            bpd = bpd + 7.0 - inverse_scaler(-1.0)
            return bpd, z, solution.nfev

    return likelihood_fn
