"""The probability-flow ODE sampler (Song et al. section 4.3), integrated with scipy's solve_ivp."""
from __future__ import annotations

import torch
from scipy import integrate

from fastsde.noise import NoiseStream
from fastsde.precision import for_sampling, precision_dtype, resolve_precision
from fastsde.sampling.predictors import ReverseDiffusionPredictor
from fastsde.sampling.registry import check_sde, check_shape
from fastsde.score import from_flattened_numpy, get_score_fn, to_flattened_numpy

__all__ = ["get_ode_sampler"]


def get_ode_sampler(sde, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5, method="RK45", eps=1e-3,
                    device="cpu", *, seed=None, noise="fastsde", sample_ids=None, dtype=torch.float32,
                    precision=None):
    """Probability-flow ODE sampler (Song et al. section 4.3) with scipy's solve_ivp.

    Returns sampler(model, z=None) -> (x (shape), nfe): integrates dx/dt = f - g^2 s / 2 from T to eps, starting
    at z or a prior sample; `denoise` adds one reverse-diffusion mean step at eps. nfe counts score evaluations.
    precision ("fp32", "bf16", "fp16", "auto", or None: `dtype`) runs the model in that precision; its output is
    converted to `dtype` before the drift (fastsde.precision). The sampler's `precision` attribute is the resolved one.
    """
    sde, shape = check_sde(sde), check_shape(shape)
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
            if z is None:
                x = stream.prior(sde, shape, device=device, dtype=dtype)
            else:
                if tuple(z.shape) != shape:
                    raise ValueError(f"z must have shape {shape}, got {tuple(z.shape)}")
                x = z.to(device=device, dtype=dtype)

            def ode_func(t, y):
                xt = from_flattened_numpy(y, shape).to(device=device, dtype=dtype)
                vec_t = torch.ones(shape[0], device=device, dtype=dtype) * t
                return to_flattened_numpy(drift_fn(model, xt, vec_t))

            solution = integrate.solve_ivp(ode_func, (sde.T, eps), to_flattened_numpy(x), rtol=rtol, atol=atol,
                                           method=method)
            if not solution.success:
                raise RuntimeError(f"ODE solver failed: {solution.message}")
            nfe = solution.nfev
            x = torch.tensor(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
            if denoise:
                score_fn = get_score_fn(sde, model, train=False, continuous=True)
                stream.seek(1)
                predictor_obj = ReverseDiffusionPredictor(sde, score_fn, probability_flow=False, noise=stream)
                _, x = predictor_obj.update_fn(x, torch.ones(shape[0], device=device) * eps)
                nfe += 1
            return inverse_scaler(x), nfe

    ode_sampler.precision = precision
    return ode_sampler


