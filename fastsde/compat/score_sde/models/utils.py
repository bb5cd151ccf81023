"""score_sde's `models.utils`: the model registry (register_model / get_model / create_model), the noise tables of a
config (get_sigmas / get_ddpm_params) and the model-to-score helpers (fastsde.score, the same conventions)."""
from __future__ import annotations

import numpy as np
import torch

from fastsde._util import register_in
from fastsde.score import from_flattened_numpy, get_model_fn, get_score_fn, to_flattened_numpy

__all__ = ["register_model", "get_model", "create_model", "get_sigmas", "get_ddpm_params", "get_model_fn",
           "get_score_fn", "to_flattened_numpy", "from_flattened_numpy"]

_MODELS: dict[str, type] = {}


def register_model(cls=None, *, name=None):
    """Class decorator registering a model class under `name` (default: the class name); twice is an error."""
    return register_in(_MODELS, "model", cls, name=name)


def get_model(name: str) -> type:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_MODELS)}")
    return _MODELS[name]


def create_model(config):
    """get_model(config.model.name)(config) on config.device, wrapped in torch.nn.DataParallel as the original does
    (so its state dict has the `module.` prefix of the released checkpoints)."""
    model = get_model(config.model.name)(config).to(config.device)
    return torch.nn.DataParallel(model)


def get_sigmas(config) -> np.ndarray:
    """The SMLD noise levels: num_scales values geometric from sigma_max down to sigma_min (float64)."""
    m = config.model
    return np.exp(np.linspace(np.log(m.sigma_max), np.log(m.sigma_min), m.num_scales))


def get_ddpm_params(config) -> dict:
    """DDPM's tables for 1000 steps of beta_min / num_scales .. beta_max / num_scales (float64), as the original."""
    steps = 1000
    start, end = config.model.beta_min / config.model.num_scales, config.model.beta_max / config.model.num_scales
    betas = np.linspace(start, end, steps, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    return {"betas": betas, "alphas": alphas, "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod), "sqrt_1m_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "beta_min": start * (steps - 1), "beta_max": end * (steps - 1), "num_diffusion_timesteps": steps}


def _register_builtin() -> None:
    """score_sde's own model names, served by fastsde's classes in its layout (fastsde.models.score_sde_nets), so
    `create_model(config)` works without the original code; checkpoints load into them with strict keys."""
    from fastsde.models.score_sde_nets import DDPM, NCSNpp

    for name, cls in (("ncsnpp", NCSNpp), ("ddpm", DDPM)):
        if name not in _MODELS:
            _MODELS[name] = cls


_register_builtin()
