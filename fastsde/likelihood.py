"""Exact likelihood of score-based models via the probability-flow ODE (Song et al., ICLR 2021, section 4.3).

log p_0(x) = log p_T(z) + int_eps^T div F(x(t), t) dt along the ODE dx/dt = F = f - g^2 s / 2 from x to z. Each
evaluation runs the model once with autograd recording and takes the divergence from vector-Jacobian products of
that one forward: Skilling-Hutchinson estimates e^T (dF/dx) e with probes e fixed along the trajectory (P probes per
datum: P VJPs, their spread gives the estimator's standard error), or the exact trace sum_i (dF/dx)_ii from D VJPs
("exact": small data only, to measure the estimator's bias). The VJPs run through whatever backward the model has:
fastsde's layers take the fused ops when those record autograd and the plain reference layers otherwise
(fastsde.nn.core), with no change here.

The ODE state (B, D + C) holds each datum's x and C log-density columns (one per probe; one for "exact"), integrated
in float64 by fastsde.flow.solve: "RK45" on the data's device with per-datum steps (a datum's bits/dim do not depend
on its batch; "RK45-sqrt" the same in u = sqrt(t), fewer evaluations at loose tolerances), "fixed" on a fixed grid
(the fast mode: compare with a tight-tolerance run), "scipy:RK45" as score_sde does (one solve_ivp over the batch,
state laid out [x of every datum, logp]).
"""
from __future__ import annotations

import dataclasses
import math

import torch

from fastsde.flow import pf_drift, solve
from fastsde.sampling.guard import check_finite
from fastsde.sampling.ode import MAX_EVALS, EvalBudget, check_capture, check_ode_args
from fastsde.sde import as_fastsde_sde

__all__ = ["get_div_fn", "get_likelihood_fn", "hutchinson_probe", "dequantize", "LikelihoodResult",
           "HUTCHINSON_TYPES", "PROBE_TYPES"]

HUTCHINSON_TYPES = ("Rademacher", "Gaussian")
PROBE_TYPES = HUTCHINSON_TYPES + ("exact",)  # "exact": the trace from D basis-vector VJPs


def get_div_fn(fn):
    """div_fn(x, t, e) -> (B,): Hutchinson estimate e^T (d fn(x, t) / dx) e by one vector-Jacobian product."""

    def div_fn(x, t, e):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            fn_e = torch.sum(fn(x, t) * e)
            grad_fn_e = torch.autograd.grad(fn_e, x)[0]
        return grad_fn_e.reshape(x.shape[0], -1).mul(e.reshape(x.shape[0], -1)).sum(1)

    return div_fn


def hutchinson_probe(shape, hutchinson_type="Rademacher", generator: torch.Generator | None = None,
                     dtype=torch.float32) -> torch.Tensor:
    """The Hutchinson probe e (shape) on the CPU: ±1 (Rademacher) or standard normal (Gaussian) from `generator`."""
    if hutchinson_type not in HUTCHINSON_TYPES:
        raise ValueError(f"hutchinson_type must be one of {HUTCHINSON_TYPES}, got {hutchinson_type!r}")
    if hutchinson_type == "Gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype)
    return torch.randint(0, 2, shape, generator=generator).to(dtype) * 2 - 1


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization of 8-bit images in [0, 1] as score_sde's datasets do it: (u + 255 x) / 256 with
    u ~ U[0, 1) per pixel (the continuous density whose bits/dim bound the discrete data's)."""
    u = torch.rand(images.shape, generator=generator, dtype=images.dtype).to(images.device)
    return (u + images * 255.0) / 256.0


@dataclasses.dataclass
class LikelihoodResult:
    """bpd (B,): bits/dim (the mean over probes); z: the latent at T; nfe: batched model evaluations; bpd_probes
    (B, C): bits/dim from each probe (C = 1 for one probe or "exact"); bpd_stderr (B,): the standard error of bpd
    over the probes (None for one probe or "exact"); row_evals (B,): the evaluations each datum took part in."""

    bpd: torch.Tensor
    z: torch.Tensor
    nfe: int
    bpd_probes: torch.Tensor
    bpd_stderr: torch.Tensor | None
    row_evals: torch.Tensor


def _check_data(data):
    if not isinstance(data, torch.Tensor) or data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"data must be a (batch, ...) tensor with rank >= 2 and batch >= 1, got "
                         f"{tuple(getattr(data, 'shape', ())) or type(data).__name__}")
    if not data.dtype.is_floating_point:
        raise TypeError(f"data must be floating point, got {data.dtype}")
    check_finite(data, what="the likelihood's data")


def _augmented_ode(drift, shape, dtype, probes):
    """f(t, y, rows) of [x, logp columns]: the drift and C divergence columns from one forward and the VJPs.
    probes: (B, P, D) Hutchinson probes in dtype, or None for the exact trace (one column)."""
    d = math.prod(shape[1:])

    def f(t, y, rows):
        b = y.shape[0]
        with torch.enable_grad():
            x = y[:, :d].reshape((b,) + tuple(shape[1:])).to(dtype).requires_grad_(True)
            out = drift(x, t.to(dtype)).reshape(b, d)
            count = d if probes is None else probes.shape[1]
            divs = torch.zeros(b, count, dtype=torch.float64, device=y.device)
            for k in range(count if out.requires_grad else 0):  # an output constant in x: divergence 0
                if probes is None:  # e_k: the VJP's k-th entry is dF_k/dx_k
                    e = torch.zeros_like(out)
                    e[:, k] = 1
                else:
                    e = probes[rows, k]
                (g,) = torch.autograd.grad(out, x, grad_outputs=e, retain_graph=k < count - 1, allow_unused=True,
                                           materialize_grads=True)
                divs[:, k] = (g.reshape(b, d)[:, k] if probes is None else (g.reshape(b, d) * e).sum(1)).double()
        if probes is None:
            divs = divs.sum(1, keepdim=True)
        return torch.cat([out.detach().double(), divs], dim=1)

    return f


def get_likelihood_fn(sde, inverse_scaler, hutchinson_type="Rademacher", rtol=1e-5, atol=1e-5, method="RK45",
                      eps=1e-5, *, generator: torch.Generator | None = None, dtype=torch.float32,
                      max_evals: int = MAX_EVALS, probes: int = 1, steps: int | None = None, capture: bool = False):
    """likelihood_fn(model, data (B, ...), probe=None, details=False) -> (bpd (B,), z (B, ...), nfe), or with
    details=True a LikelihoodResult (per-probe bits/dim and their standard error, evaluations per datum).

    bpd = -(log p_T(z) + delta_logp) / (ln 2 D) + 7 - inverse_scaler(-1): the offset accounts for uniform
    dequantization of 8-bit data (+8 for data in [0, 1], +7 for [-1, 1]), as score_sde reports it. The model is used
    with continuous time conventions. hutchinson_type: "Rademacher", "Gaussian" or "exact" (the trace, D VJPs per
    evaluation); `probes` Hutchinson probes per datum (bpd is their mean). `generator` draws the probes (default:
    torch's global generator, as score_sde) unless `probe` is given: data's shape for one probe, (B, probes, ...)
    for several (rows of one hutchinson_probe draw give every datum the same probes in any batch).
    method: "RK45" (default; fastsde.odeint on the data's device), "RK45-sqrt" (the same in u = sqrt(t): fastsde.flow),
    "fixed" with `steps` (fastsde.flow.fixed_times),
    or "scipy:NAME" (score_sde's way; fastsde.compat.score_sde maps its method="RK45" here). capture (RK45 on CUDA
    data): chunks of steps, forward and VJPs included, replayed as CUDA graphs (fastsde.odeint.dopri5).
    A NaN/inf drift or divergence stops the integration with guard.NonFiniteError; more than max_evals evaluations
    with a RuntimeError (rtol, atol >= max(1e-12, dtype's epsilon) and eps in (0, T) are checked here, so no setting
    can loop forever: fastsde.sampling.ode.min_tolerance).
    """
    sde = as_fastsde_sde(sde)  # score_sde's own SDE objects are accepted
    if hutchinson_type not in PROBE_TYPES:
        raise ValueError(f"hutchinson_type must be one of {PROBE_TYPES}, got {hutchinson_type!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1 or \
            (hutchinson_type == "exact" and probes != 1):
        raise ValueError(f"probes must be a positive int (1 with hutchinson_type='exact'), got {probes!r}")
    eps = check_ode_args(sde, rtol, atol, method, eps, dtype, steps=steps)
    check_capture(capture, method)
    EvalBudget(max_evals, "")
    offset = 7.0 - inverse_scaler(-1.0)

    def probe_tensor(data, probe):
        shape = tuple(data.shape)
        b, d = shape[0], math.prod(shape[1:])
        want = shape if probes == 1 else (b, probes) + shape[1:]
        if probe is not None:
            if hutchinson_type == "exact":
                raise ValueError("probe must be None with hutchinson_type='exact' (the trace needs no probe)")
            if tuple(probe.shape) != want:
                raise ValueError(f"probe must have shape {want} (data's{'' if probes == 1 else ' with probes'}), "
                                 f"got {tuple(probe.shape)}")
            e = probe
        elif hutchinson_type == "exact":
            return None
        else:
            e = hutchinson_probe(want, hutchinson_type, generator, dtype)
        return e.to(device=data.device, dtype=dtype).reshape(b, probes, d)

    def likelihood_fn(model, data, probe=None, details=False):
        _check_data(data)
        shape = tuple(data.shape)
        b, d = shape[0], math.prod(shape[1:])
        e = probe_tensor(data, probe)
        columns = 1 if e is None else probes
        f = _augmented_ode(pf_drift(sde, model), shape, dtype, e)
        y0 = torch.cat([data.detach().reshape(b, d).double(),
                        torch.zeros(b, columns, dtype=torch.float64, device=data.device)], dim=1)
        y, nfe, row_evals = solve(f, y0, eps, sde.T, method=method, rtol=rtol, atol=atol, steps=steps, sde=sde,
                                  max_evals=max_evals, what="the likelihood ODE", blocks=(d, columns),
                                  capture=capture)
        check_finite(y, t=sde.T, what="the likelihood ODE's solution")
        z = y[:, :d].reshape(shape)
        bpd_probes = -(sde.prior_logp(z)[:, None] + y[:, d:]) / (math.log(2) * d) + offset
        bpd = bpd_probes.mean(1)
        if not details:
            return bpd.to(dtype), z.to(dtype), nfe
        stderr = bpd_probes.std(1) / math.sqrt(columns) if columns > 1 else None
        return LikelihoodResult(bpd.to(dtype), z.to(dtype), nfe, bpd_probes, stderr, row_evals)

    return likelihood_fn
