"""score_sde's `sampling` module: factories with the original's signatures and defaults (device="cuda", torch noise,
score_sde's loop), the predictor/corrector classes and registries, and the shared update helpers.

Classes registered here are fastsde's registries: a class written against score_sde's interface
(Predictor(sde, score_fn, probability_flow), Corrector(sde, score_fn, snr, n_steps), update_fn(x, t)) registers and
runs as written (unfused). Keyword-only extras of fastsde's factories (backend, seed, noise, dtype, ...) pass through.
"""
from __future__ import annotations

from fastsde.sampling import ode as _ode
from fastsde.sampling.ode import scipy_method
from fastsde.sampling import pc as _pc
from fastsde.sampling.correctors import AnnealedLangevinDynamics, LangevinCorrector, NoneCorrector
from fastsde.sampling.predictors import (AncestralSamplingPredictor, EulerMaruyamaPredictor, NonePredictor,
                                         ReverseDiffusionPredictor)
from fastsde.sampling.registry import (Corrector, Predictor, get_corrector, get_predictor, register_corrector,
                                       register_predictor, resolve_corrector, resolve_predictor)
from fastsde.score import get_score_fn
from fastsde.sde import as_fastsde_sde

__all__ = ["Predictor", "Corrector", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor",
           "AncestralSamplingPredictor", "NonePredictor", "LangevinCorrector", "AnnealedLangevinDynamics",
           "NoneCorrector", "register_predictor", "register_corrector", "get_predictor", "get_corrector",
           "get_sampling_fn", "get_pc_sampler", "get_ode_sampler", "shared_predictor_update_fn",
           "shared_corrector_update_fn"]

#: What makes a seeded run equal the original's: its noise source and its loop.
ORIGINAL = {"noise": "torch", "backend": "reference"}


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                   continuous=False, denoise=True, eps=1e-3, device="cuda", **kwargs):
    """score_sde's get_pc_sampler (same arguments and defaults); sampler(model) -> (x, nfe)."""
    return _pc.get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps, probability_flow,
                              continuous, denoise, eps, device, **{**ORIGINAL, **kwargs})


def get_ode_sampler(sde, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5, method="RK45", eps=1e-3,
                    device="cuda", **kwargs):
    """score_sde's get_ode_sampler (same arguments and defaults); sampler(model, z=None) -> (x, nfe)."""
    kwargs = {"noise": ORIGINAL["noise"], **kwargs}
    return _ode.get_ode_sampler(sde, shape, inverse_scaler, denoise, rtol, atol, scipy_method(method), eps, device,
                                **kwargs)


def get_sampling_fn(config, sde, shape, inverse_scaler, eps, **kwargs):
    """score_sde's config-driven factory: config.sampling.method "ode" or "pc", on config.device."""
    method = config.sampling.method.lower()
    if method == "ode":
        return get_ode_sampler(sde, shape, inverse_scaler, denoise=config.sampling.noise_removal, eps=eps,
                               device=config.device, **kwargs)
    if method == "pc":
        return get_pc_sampler(sde, shape, get_predictor(config.sampling.predictor.lower()),
                              get_corrector(config.sampling.corrector.lower()), inverse_scaler, config.sampling.snr,
                              n_steps=config.sampling.n_steps_each,
                              probability_flow=config.sampling.probability_flow,
                              continuous=config.training.continuous, denoise=config.sampling.noise_removal, eps=eps,
                              device=config.device, **kwargs)
    raise ValueError(f"config.sampling.method must be 'pc' or 'ode', got {config.sampling.method!r}")


def shared_predictor_update_fn(x, t, sde, model, predictor, probability_flow, continuous):
    """One predictor update of `model` at t (B,): (x, x_mean). predictor: a class, a registered name or None."""
    sde = as_fastsde_sde(sde)
    score_fn = get_score_fn(sde, model, train=False, continuous=continuous)
    return resolve_predictor(predictor)(sde, score_fn, probability_flow).update_fn(x, t)


def shared_corrector_update_fn(x, t, sde, model, corrector, continuous, snr, n_steps):
    """One corrector update of `model` at t (B,): (x, x_mean). corrector: a class, a registered name or None."""
    sde = as_fastsde_sde(sde)
    score_fn = get_score_fn(sde, model, train=False, continuous=continuous)
    return resolve_corrector(corrector)(sde, score_fn, snr, n_steps).update_fn(x, t)
