"""The probability-flow ODE dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 (Song et al., ICLR 2021, section 4.3) as a map:
encode (data at eps -> latent at T), decode (latent -> data), spherical interpolation and temperature of latents,
and `solve`, the one integrator dispatch the sampler, the likelihood and these share.

Methods (`method=`):
  "RK45"           fastsde.odeint.dopri5 on the state's device: per-sample adaptive Dormand-Prince, no host round
                   trip per evaluation (the default)
  "RK45-sqrt"      the same integrator in u = sqrt(t): dy/du = 2 u f(u^2, y). The drift grows like 1/sqrt(t) towards
                   the data end (the score of nearly clean data), which in u is bounded, so the controller needs
                   fewer steps for the same accuracy at loose tolerances (benchmarks/bench_likelihood.py's sweep)
  "fixed"          fastsde.odeint.fixed_grid: the same 5th-order step on `steps` intervals uniform in
                   log(std / mean) of the SDE's marginal (the noise-to-signal ratio), 6 steps + 1 evaluations each
  "scipy:NAME"     scipy.integrate.solve_ivp(method=NAME) on the host over the whole batch as one vector, as
                   score_sde integrates (NAME in RK45, RK23, DOP853, Radau, BDF, LSODA): bit-level parity with it
The state is integrated in float64 (as score_sde's scipy state); the model sees `dtype`.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from fastsde.sampling.guard import check_finite
from fastsde.sampling.ode import MAX_EVALS, check_capture, check_ode_args, fixed_times, solve
from fastsde.score import get_score_fn

__all__ = ["pf_drift", "solve", "fixed_times", "encode", "decode", "slerp", "round_trip_error"]


def pf_drift(sde, model) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """drift(x, t) of the probability-flow ODE with the model's score (continuous-time labels)."""
    score_fn = get_score_fn(sde, model, train=False, continuous=True)
    reverse = sde.reverse(score_fn, probability_flow=True)
    return lambda x, t: reverse.sde(x, t)[0]


def _state_ode(sde, model, shape, dtype):
    """f(t, y, rows) of the state-only ODE on flattened float64 rows; the model sees `dtype`."""
    drift = pf_drift(sde, model)

    def f(t, y, rows):
        with torch.no_grad():
            x = y.reshape((y.shape[0],) + tuple(shape[1:])).to(dtype)
            return drift(x, t.to(dtype)).reshape(y.shape[0], -1).double()
    return f


def _flow(sde, model, x, t0, t1, method, rtol, atol, steps, max_evals, what, capture):
    x = check_finite(x, what=f"{what}'s input")
    f = _state_ode(sde, model, x.shape, x.dtype)
    y, nfev, _ = solve(f, x.reshape(x.shape[0], -1).double(), t0, t1, method=method, rtol=rtol, atol=atol,
                       steps=steps, sde=sde, max_evals=max_evals, what=what, capture=capture)
    return check_finite(y.to(x.dtype).reshape(x.shape), t=t1, what=what), nfev


def _check_flow_args(sde, x, name, method, steps, rtol, atol, eps, capture):
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0 or not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating (batch, ...) tensor with batch >= 1, got "
                         f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}"
                         f"{'' if not isinstance(x, torch.Tensor) else ' of ' + str(x.dtype)}")
    eps = check_ode_args(sde, rtol, atol, method, eps, x.dtype, steps=steps)
    check_capture(capture, method)
    return eps


def encode(sde, model, x, *, method="RK45", rtol=1e-5, atol=1e-5, eps=1e-5, steps=None, max_evals=MAX_EVALS,
           capture: bool = False):
    """z = the probability-flow ODE's solution at T from x (data, scaled as the model's input) at eps; returns
    (z, nfe). Deterministic: the same x gives the same z (up to the solver's tolerance). capture (RK45, CUDA):
    chunks of steps replayed as CUDA graphs."""
    from fastsde.sde import as_fastsde_sde

    sde = as_fastsde_sde(sde)
    eps = _check_flow_args(sde, x, "x", method, steps, rtol, atol, eps, capture)
    return _flow(sde, model, x, eps, sde.T, method, rtol, atol, steps, max_evals, "the encoding ODE", capture)


def decode(sde, model, z, *, method="RK45", rtol=1e-5, atol=1e-5, eps=1e-5, steps=None, max_evals=MAX_EVALS,
           temperature: float = 1.0, capture: bool = False):
    """x = the probability-flow ODE's solution at eps from temperature * z at T (temperature < 1 trades diversity
    for typicality, as in Glow); returns (x, nfe), x scaled as the model's input (no denoising step, so
    decode(encode(x)) = x up to the tolerance)."""
    from fastsde.sde import as_fastsde_sde

    sde = as_fastsde_sde(sde)
    eps = _check_flow_args(sde, z, "z", method, steps, rtol, atol, eps, capture)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not \
            0 < temperature < math.inf:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return _flow(sde, model, z * temperature, sde.T, eps, method, rtol, atol, steps, max_evals, "the decoding ODE",
                 capture)


def slerp(a: torch.Tensor, b: torch.Tensor, alphas) -> torch.Tensor:
    """Spherical interpolation between latents a and b (same shape (...)) at each alpha of `alphas` (K,):
    (K, ...) points on the great circle through a and b, their norms interpolated linearly, so every point stays
    as typical of the Gaussian prior as the ends (a linear path dips towards the mode). Antipodal or zero ends:
    ValueError."""
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        raise ValueError(f"a and b must be tensors of one shape, got {getattr(a, 'shape', a)!r} and "
                         f"{getattr(b, 'shape', b)!r}")
    alphas = torch.as_tensor(alphas, dtype=torch.float64).reshape(-1, *([1] * a.dim()))
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(), b64.norm()
    if float(na) == 0 or float(nb) == 0:
        raise ValueError("a and b must be nonzero latents")
    cos = torch.clamp((a64 * b64).sum() / (na * nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) > math.pi - 1e-6:
        raise ValueError("a and b are antipodal: the great circle between them is not unique")
    if float(omega) < 1e-8:
        direction = (1 - alphas) * a64 / na + alphas * b64 / nb
    else:
        direction = (torch.sin((1 - alphas) * omega) * a64 / na + torch.sin(alphas * omega) * b64 / nb) \
            / torch.sin(omega)
    return (direction * ((1 - alphas) * na + alphas * nb)).to(a.dtype)


def round_trip_error(a: torch.Tensor, b: torch.Tensor) -> dict:
    """{"max_abs", "rms", "rel_rms"} of a - b (the same shape), over the whole batch: how far a round trip landed."""
    d = (a.double() - b.double()).reshape(-1)
    rms = float(d.pow(2).mean().sqrt())
    scale = float(b.double().pow(2).mean().sqrt())
    return {"max_abs": float(d.abs().max()), "rms": rms, "rel_rms": rms / scale if scale else float("nan")}
