"""Samplers of score-based models (Song et al., ICLR 2021, section 4): predictor-corrector and probability-flow ODE.

The API is score_sde's (`get_pc_sampler`, `get_ode_sampler`, `get_sampling_fn`, the predictor/corrector classes and
registries), so code written for it ports by changing imports. Additions, all keyword-only: `seed` and `noise` choose
the noise source (fastsde.noise), `backend` the implementation of the update steps, `dtype`, `progress`.

Modules: registry (registries, base classes, shared checks), predictors, correctors, pc (the PC loops), ode.
"""
from __future__ import annotations

from fastsde.sampling.correctors import AnnealedLangevinDynamics, LangevinCorrector, NoneCorrector
from fastsde.sampling.ode import get_ode_sampler
from fastsde.sampling.pc import get_pc_sampler
from fastsde.sampling.predictors import (AncestralSamplingPredictor, EulerMaruyamaPredictor, NonePredictor,
                                         ReverseDiffusionPredictor)
from fastsde.sampling.registry import (BACKENDS, PC_DEFAULTS, Corrector, Predictor, corrector_names, get_corrector,
                                       get_predictor, predictor_names, register_corrector, register_predictor)

__all__ = [
    "Predictor", "Corrector", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector", "register_predictor",
    "register_corrector", "get_predictor", "get_corrector", "predictor_names", "corrector_names", "get_pc_sampler",
    "get_ode_sampler", "get_sampling_fn", "BACKENDS", "PC_DEFAULTS",
]


def get_sampling_fn(config, sde, shape, inverse_scaler, eps, *, device="cpu", **kwargs):
    """score_sde's config-driven factory: config.sampling.method in {"pc", "ode"}."""
    method = config.sampling.method.lower()
    if method == "ode":
        return get_ode_sampler(sde, shape, inverse_scaler, denoise=config.sampling.noise_removal, eps=eps,
                               device=device, **kwargs)
    if method == "pc":
        return get_pc_sampler(sde, shape, config.sampling.predictor.lower(), config.sampling.corrector.lower(),
                              inverse_scaler, config.sampling.snr, n_steps=config.sampling.n_steps_each,
                              probability_flow=config.sampling.probability_flow,
                              continuous=config.training.continuous, denoise=config.sampling.noise_removal,
                              eps=eps, device=device, **kwargs)
    raise ValueError(f"unknown sampling method {method!r}; known: ['ode', 'pc']")
