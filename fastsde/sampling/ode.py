"""The probability-flow ODE sampler (Song et al. section 4.3), integrated by solve (below): method "RK45" on the
state's device (fastsde.odeint, per-sample steps), "scipy:NAME" with scipy's solve_ivp as score_sde does.

The integration stops with a clear error when the model returns NaN/inf (scipy would shrink its step to nan and never
advance) and after `max_evals` drift evaluations on a pathological model (fastsde.sampling.guard)."""
from __future__ import annotations

import math

import numpy as np
import torch

from fastsde.noise import NoiseStream
from fastsde.precision import for_sampling, precision_dtype, resolve_precision
from fastsde.sampling.guard import check_finite
from fastsde.sampling.predictors import ReverseDiffusionPredictor
from fastsde.sampling.registry import check_eps, check_positive, check_sde, check_seed, check_shape
from fastsde.score import get_score_fn

__all__ = ["get_ode_sampler", "ODE_METHODS", "SCIPY_METHODS", "MAX_EVALS", "EvalBudget",
           "scipy_method", "solve", "fixed_times", "check_capture", "ADAPTIVE_METHODS"]

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
# "RK45": fastsde.odeint on the state's device ("RK45-sqrt": in u = sqrt(t)); "fixed": its fixed grid; "scipy:NAME":
# solve_ivp (fastsde.flow)
ODE_METHODS = ("RK45", "RK45-sqrt", "fixed") + tuple(f"scipy:{m}" for m in SCIPY_METHODS)
ADAPTIVE_METHODS = ("RK45", "RK45-sqrt")  # fastsde.odeint.dopri5, in t or in u = sqrt(t)
SAMPLER_METHODS = ODE_METHODS
#: The fixed-step ODE sampler's default solver: the third-order exponential integrator of the probability-flow ODE.
FIXED_SOLVER = "dpm_solver_3"
MAX_EVALS = 100_000  # drift evaluations before an integration is declared stuck (RK45 on the digits: ~150-600)


class EvalBudget:
    """Counts an integrator's function evaluations and raises once `limit` is passed (a bounded run on any model)."""

    def __init__(self, limit: int, what: str):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_evals must be a positive int, got {limit!r}")
        self.limit, self.what, self.count = limit, what, 0

    def spend(self, t: float) -> None:
        self.count += 1
        if self.count > self.limit:
            raise RuntimeError(f"{self.what} made no progress: {self.limit} evaluations and still at t = {t:.6g} "
                               f"(pass a larger max_evals, looser tolerances, or check the model)")


def scipy_method(method):
    """score_sde's `method` (a solve_ivp name) as fastsde's: "scipy:NAME" (the compat layer's default path); any
    other value passes through to the checks."""
    return f"scipy:{method}" if method in SCIPY_METHODS else method


def min_tolerance(dtype) -> float:
    """The smallest rtol/atol an integration in `dtype` accepts: max(1e-12, the dtype's machine epsilon) (1.2e-7 for
    float32, 1e-12 for float64). Below it the drift's own rounding exceeds the tolerance, the step size collapses and
    the run takes minutes (rtol = atol = 1e-300) before max_evals stops it."""
    return max(1e-12, float(torch.finfo(dtype).eps)) if isinstance(dtype, torch.dtype) and dtype.is_floating_point \
        else 1e-12


def check_ode_args(sde, rtol, atol, method, eps, dtype=torch.float64, *, steps=None, methods=ODE_METHODS) -> float:
    """The ODE integrators' shared checks (sampler, likelihood, fastsde.flow): a method of `methods`, steps >= 1
    exactly when it is "fixed"; returns eps as a float."""
    floor = min_tolerance(dtype)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if check_positive(name, value) < floor:
            raise ValueError(f"{name} must be >= {floor:.3g} for {dtype} (max(1e-12, machine epsilon): a tighter "
                             f"tolerance cannot be met and the integration would not finish), got {value!r}")
    if method not in methods:
        hint = f" (scipy's {method} is 'scipy:{method}')" if method in SCIPY_METHODS[1:] else ""
        raise ValueError(f"method must be one of {methods}{hint}, got {method!r}")
    if method == "fixed" and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int with method='fixed', got {steps!r}")
    if method != "fixed" and steps is not None:
        raise ValueError(f"steps applies to method='fixed' only, got steps={steps!r} with method={method!r}")
    return check_eps(sde, eps)


def fixed_times(sde, t0: float, t1: float, steps: int) -> torch.Tensor:
    """steps + 1 times from t0 to t1 (float64) uniform in log(std / mean) of the marginal: dense where the noise is
    small and the drift changes fastest, for VE (log sigma linear in t) uniform in t."""
    ends = torch.tensor([t0, t1], dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(2, 1, dtype=torch.float64), ends)
    lam = torch.log(std / mean[:, 0])
    grid_lam = torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64)
    fine = torch.linspace(min(t0, t1), max(t0, t1), 4097, dtype=torch.float64)  # invert lam(t) by interpolation
    m, s = sde.marginal_prob(torch.ones(fine.numel(), 1, dtype=torch.float64), fine)
    lam_fine = torch.log(s / m[:, 0])
    grid = torch.from_numpy(np.interp(grid_lam.numpy(), lam_fine.numpy(), fine.numpy()))
    grid[0], grid[-1] = t0, t1
    return grid


def check_capture(capture, method) -> None:
    """capture=True is RK45's chunks of steps replayed as CUDA graphs (on a CUDA state; elsewhere the same chunks
    run eagerly); with any other method it is refused in one line."""
    if not isinstance(capture, bool):
        raise ValueError(f"capture must be True or False, got {capture!r}")
    if capture and method not in ADAPTIVE_METHODS:
        raise ValueError(f"capture=True replays chunks of RK45 steps as CUDA graphs: it needs method='RK45' or "
                         f"'RK45-sqrt' (or 'fixed' for the sampler's program), got method={method!r}")


def solve(f, y0: torch.Tensor, t0: float, t1: float, *, method: str, rtol: float, atol: float, steps=None, sde=None,
          max_evals: int = MAX_EVALS, what: str = "the ODE", blocks=None, capture: bool = False):
    """Integrate dy/dt = f(t (B,), y (B, N), rows (B,)) from t0 to t1 for y0 (B, N) float64 by `method` (module
    docstring); returns (y at t1, batched evaluations, evaluations each row took part in (B,)). `blocks`: column
    sizes that the scipy path lays out one after the other (score_sde's [x of every sample, then logp]); default
    one block. `sde` gives the fixed grid. `capture` (RK45 on CUDA): replay chunks of steps as CUDA graphs
    (fastsde.odeint.dopri5)."""
    from fastsde.odeint import dopri5, fixed_grid  # on first use: fastsde.odeint imports this package's guard

    check_capture(capture, method)
    if method == "RK45":
        r = dopri5(f, y0, t0, t1, rtol=rtol, atol=atol, max_evals=max_evals, what=what, capture=capture)
        return r.y, r.nfev, r.row_evals
    if method == "RK45-sqrt":  # dy/du = 2 u f(u^2, y): bounded where f grows like 1/sqrt(t) at the data end
        def g(u, y, rows):
            return f(u * u, y, rows) * (2 * u).to(y.dtype)[:, None]
        r = dopri5(g, y0, math.sqrt(t0), math.sqrt(t1), rtol=rtol, atol=atol, max_evals=max_evals, what=what,
                   capture=capture)
        return r.y, r.nfev, r.row_evals
    if method == "fixed":
        r = fixed_grid(f, y0, fixed_times(sde, t0, t1, steps), what=what)
        return r.y, r.nfev, r.row_evals
    y, nfev = _solve_scipy(f, y0, t0, t1, method.split(":", 1)[1], rtol, atol, max_evals, what, blocks)
    return y, nfev, torch.full((y0.shape[0],), nfev, dtype=torch.int64)


def _solve_scipy(f, y0, t0, t1, method, rtol, atol, max_evals, what, blocks):
    from scipy import integrate  # imported on first use: `import fastsde` stays free of scipy

    b, n = y0.shape
    blocks = blocks or (n,)
    device, rows = y0.device, torch.arange(b, device=y0.device)
    budget = EvalBudget(max_evals, what)

    def pack(y):  # (B, N) -> 1-D float64 in block order
        return np.concatenate([p.detach().cpu().double().numpy().reshape(-1) for p in y.split(blocks, dim=1)])

    def unpack(v):
        parts, at = [], 0
        for w in blocks:
            parts.append(torch.from_numpy(v[at:at + b * w].reshape(b, w)))
            at += b * w
        return torch.cat(parts, dim=1).to(device)

    def rhs(t, v):
        budget.spend(t)
        dy = f(torch.full((b,), t, dtype=torch.float64, device=device), unpack(v), rows)
        return pack(check_finite(dy, step=budget.count, t=t, what=f"{what}'s right-hand side"))

    solution = integrate.solve_ivp(rhs, (t0, t1), pack(y0), rtol=rtol, atol=atol, method=method)
    if not solution.success:
        raise RuntimeError(f"ODE solver failed: {solution.message}")
    return unpack(solution.y[:, -1]), int(solution.nfev)


def get_ode_sampler(sde, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5, method="RK45", eps=1e-3,
                    device="cpu", *, seed=None, noise="fastsde", sample_ids=None, dtype=torch.float32,
                    max_evals=MAX_EVALS, precision=None, steps=None, solver=FIXED_SOLVER, backend="auto",
                    compile=False, capture=False, capture_steps=None):
    """Probability-flow ODE sampler (Song et al. section 4.3): method "RK45" (fastsde.odeint), "RK45-sqrt" (the same
    in u = sqrt(t), fastsde.flow), "scipy:NAME", or
    "fixed": `steps` steps of a deterministic high-order solver of the same ODE (`solver`, default "dpm_solver_3";
    any of fastsde.solvers without noise) on the uniform log-SNR grid from T to eps, as a program on the one executor
    (fastsde.executor: eager, `compile=True` or `capture=True` with `capture_steps`, on `backend`); there `denoise`
    is the solvers' final denoising D(x, eps) (one more model call), rtol/atol/max_evals do not apply and noise
    must be "fastsde" (the prior is FSN1 draw 0).

    Returns sampler(model, z=None) -> (x (shape), nfe): integrates dx/dt = f - g^2 s / 2 from T to eps, starting
    at z or a prior sample; `denoise` adds one reverse-diffusion mean step at eps. nfe counts score evaluations.
    A NaN/inf drift stops the run with guard.NonFiniteError naming t; more than max_evals evaluations, RuntimeError.
    precision ("fp32", "bf16", "fp16", "auto", or None: `dtype`) runs the model in that precision; its output is
    converted to `dtype` before the drift (fastsde.precision). The sampler's `precision` attribute is the resolved one.
    """
    sde, shape = check_sde(sde), check_shape(shape)
    eps = check_ode_args(sde, rtol, atol, method, eps, dtype, steps=steps, methods=SAMPLER_METHODS)
    check_seed(seed)
    if method == "fixed":
        return _fixed_ode_sampler(sde, shape, inverse_scaler, denoise, eps, device, seed, noise, sample_ids, dtype,
                                  precision, steps, solver, backend, compile, capture, capture_steps)
    if compile is not False:
        raise ValueError(f"compile=True needs method='fixed' (an adaptive integration is not a fixed program), "
                         f"got compile={compile!r} with method={method!r}")
    check_capture(capture, method)  # RK45 on CUDA: chunks of steps replayed as CUDA graphs
    NoiseStream(noise, 0, sample_ids)
    EvalBudget(max_evals, "")
    precision = resolve_precision(precision, device)
    precision_dtype(precision, dtype)
    casts = {}

    def drift_fn(model, x, t):
        score_fn = get_score_fn(sde, model, train=False, continuous=True)
        return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]

    def ode_sampler(model, z=None):
        stream = NoiseStream(noise, seed, sample_ids)
        model = for_sampling(model, precision, dtype, casts, output_dtype=dtype)
        with torch.no_grad():
            x = stream.start(sde, shape, z, device=device, dtype=dtype)

            def ode_func(t, y, rows):
                drift = drift_fn(model, y.reshape((y.shape[0],) + shape[1:]).to(dtype), t.to(dtype))
                return drift.reshape(y.shape[0], -1).double()

            y, nfe, _ = solve(ode_func, x.reshape(shape[0], -1).double(), sde.T, eps, method=method, rtol=rtol,
                              atol=atol, max_evals=max_evals, what="the probability-flow ODE", capture=capture)
            x = y.reshape(shape).to(dtype)
            if denoise:
                score_fn = get_score_fn(sde, model, train=False, continuous=True)
                stream.seek(1)
                predictor_obj = ReverseDiffusionPredictor(sde, score_fn, probability_flow=False, noise=stream)
                _, x = predictor_obj.update_fn(x, torch.ones(shape[0], device=device) * eps)
                nfe += 1
            check_finite(x, t=eps, what="the ODE sample")
            return inverse_scaler(x), nfe

    ode_sampler.precision = precision
    return ode_sampler




def _fixed_ode_sampler(sde, shape, inverse_scaler, denoise, eps, device, seed, noise, sample_ids, dtype, precision,
                       steps, solver, backend, compile, capture, capture_steps):
    """get_ode_sampler(method="fixed"): the probability-flow ODE at fixed steps, a deterministic solver's program."""
    from fastsde import solvers

    if noise != "fastsde":
        raise ValueError(f"method='fixed' draws its prior from FSN1: noise must be 'fastsde', got {noise!r}")
    if not isinstance(solver, str) or solver not in solvers.solver_names() or solver == "adaptive" or \
            solvers.get_solver(solver)().stochastic:
        names = [n for n in solvers.solver_names() if n != "adaptive" and not solvers.get_solver(n)().stochastic]
        raise ValueError(f"solver must be a deterministic fixed-step solver of the probability-flow ODE, one of "
                         f"{names}, got {solver!r}")
    if not isinstance(denoise, bool):
        raise TypeError(f"denoise must be True or False, got {denoise!r}")
    return solvers.get_sampler(solver, sde, shape, steps, inverse_scaler=inverse_scaler, continuous=True,
                               grid="logsnr", eps=eps, denoise=denoise, seed=seed, sample_ids=sample_ids,
                               backend=backend, device=device, dtype=dtype, precision=precision, compile=compile,
                               capture=capture, capture_steps=capture_steps)
