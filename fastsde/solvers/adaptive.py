"""The adaptive-step SDE solver of Jolicoeur-Martineau et al. 2021 ("Gotta Go Fast When Generating Data with
Score-Based Models", algorithm 1), per sample.

Each attempt from t with step h (reverse time, drift F(x, t) = f(t) x - g(t)^2 s(x, t)):
    x'  = x - h F(x, t) + sqrt(h) g(t) z                       Euler-Maruyama
    x~  = x - h F(x', t - h) + sqrt(h) g(t - h) z               same z
    x'' = (x' + x~) / 2                                         improved Euler (extrapolation: x'' is kept)
    delta = max(atol, rtol max(|x'|, |x'_prev|)),  E = ||(x' - x'') / delta||_2 / sqrt(D)     per sample
    accept if E <= 1: x <- x'', t <- t - h, x'_prev <- x';   h <- min(t - eps, theta h E^(-r))
Every sample has its own t and h; a loop iteration makes one attempt for every sample still above eps (two batched
model calls). Attempt k draws z at FSN1 draw id 1 + k, so a sample's path depends only on (seed, its id): batch
invariant. Not table-driven: the step sizes depend on the data, and the loop reads one flag per attempt from the
device to know when every sample is done.
"""
from __future__ import annotations

import torch

from fastsde._util import flat_norm, per_sample
from fastsde.ops import step as step_ops
from fastsde.sampling.guard import NonFiniteError, count_nonfinite
from fastsde.solvers.program import check_model_output
from fastsde.solvers.registry import Solver, register_solver

__all__ = ["Adaptive"]


@register_solver(name="adaptive")
class Adaptive(Solver):
    """Gotta Go Fast (module docstring). Options: rtol, atol (on x's scale), h_init, safety (theta), exponent (r),
    max_attempts and max_evals (model calls; default 20,000, two per attempt): a RuntimeError past either. A NaN/inf
    error estimate (the model returned non-finite values, or the state diverged) stops the loop at that attempt with
    fastsde.sampling.guard.NonFiniteError; it is read with the per-attempt "any sample active" flag (no extra sync)."""

    defaults = {"rtol": 0.05, "atol": 0.0078, "h_init": 0.01, "safety": 0.9, "exponent": 0.9, "max_attempts": 10000,
                "max_evals": 20000}
    order = None
    evals_per_step = 2
    adaptive = True

    def __init__(self, **options):
        super().__init__(**options)
        for key in ("max_attempts", "max_evals"):
            value = self.options[key]
            if not (float(value).is_integer() and value >= 1):
                raise ValueError(f"solver option {key} must be a positive integer, got {value!r}")
        for key in ("rtol", "h_init", "safety", "exponent"):
            if not self.options[key] > 0:
                raise ValueError(f"solver option {key} must be > 0, got {self.options[key]!r}")

    @property
    def stochastic(self) -> bool:
        return True

    def build(self, program, points, at_log_snr, churn_steps):
        raise TypeError("the adaptive solver chooses its own steps: use Adaptive.sample")

    def sample(self, sde, x, model_fn, labels_fn, scale_fn, eps: float, seed: int, sample_ids, backend="auto"):
        """Run from t = T to eps on x (B, ...) in place; returns (x, model calls). model_fn(x, labels) -> out and
        score = scale_fn(t) out (scale_fn None: out is the score), as fastsde.score.get_score_parts gives them."""
        o = self.options
        B, dev, dtype = x.shape[0], x.device, x.dtype
        t = torch.full((B,), float(sde.T), dtype=torch.float64, device=dev)
        h = torch.full((B,), float(o["h_init"]), dtype=torch.float64, device=dev)
        x1, x_prev = torch.empty_like(x), x.clone()
        evals = 0
        bad = torch.zeros((), dtype=torch.bool, device=dev)  # the last attempt's error estimate was NaN/inf somewhere
        x_bad = x  # the last attempt's proposal (counted in the error when bad)
        for k in range(int(o["max_attempts"])):
            active = t - eps > 1e-12 * sde.T
            running, nonfinite = torch.stack([active.any(), bad]).tolist()  # one host read per attempt
            if nonfinite:
                raise NonFiniteError(f"the adaptive solver's state became non-finite at attempt {k} (t = "
                                     f"{float(t.min()):.6g} to {float(t.max()):.6g}): {count_nonfinite(x_bad)} of {B} "
                                     f"samples hold NaN or inf (the model returned non-finite values or the step "
                                     f"sizes diverged)")
            if not running:
                return x, evals
            if evals + 2 > int(o["max_evals"]):
                raise RuntimeError(f"adaptive solver: max_evals={int(o['max_evals'])} model calls spent and still at "
                                   f"t = {float(t.max()):.6g} (pass a larger max_evals or looser rtol/atol)")
            h = torch.where(active, torch.minimum(h, t - eps), torch.zeros_like(h))
            s = t - h
            f, g = sde.linear_sde(t)
            f2, g2 = sde.linear_sde(s)
            sc = torch.ones_like(t) if scale_fn is None else scale_fn(t.to(dtype))
            sc2 = torch.ones_like(t) if scale_fn is None else scale_fn(s.to(dtype))
            out = model_fn(x, labels_fn(t.to(dtype)))
            if k == 0:
                check_model_output(out, x)
            step_ops.affine_combine_step(x, [out], 1 - h * f, [h * g**2 * sc], h.sqrt() * g, seed=seed,
                                         sample_ids=sample_ids, draw=1 + k, out=x1, backend=backend)
            out2 = model_fn(x1, labels_fn(s.to(dtype)))
            if k == 0:
                check_model_output(out2, x1)
            evals += 2
            x_tilde = step_ops.affine_combine_step(x, [x1, out2], 1.0, [-h * f2, h * g2**2 * sc2], h.sqrt() * g2,
                                                   seed=seed, sample_ids=sample_ids, draw=1 + k, backend=backend)
            x2 = 0.5 * (x1 + x_tilde)
            delta = torch.maximum(torch.maximum(x1.abs(), x_prev.abs()) * o["rtol"],
                                  torch.full_like(x1, o["atol"]))
            err = (flat_norm((x1 - x2) / delta).double() / x[0].numel() ** 0.5).clamp_min(1e-12)
            bad = (~torch.isfinite(err) & active).any()
            x_bad = x2
            accept = (err <= 1) & active
            mask = per_sample(accept, x)
            x.copy_(torch.where(mask, x2, x))
            x_prev.copy_(torch.where(mask, x1, x_prev))
            t = torch.where(accept, s, t)
            h = torch.where(active, torch.minimum(t - eps, o["safety"] * h * err ** (-o["exponent"])), h)
        raise RuntimeError(f"adaptive solver: not done after max_attempts={int(o['max_attempts'])} attempts")
