"""diffusers models on fastsde: a `UNet2DModel` plus its scheduler's config -> a fastsde score model and SDE.

    model, sde, continuous = from_diffusers(unet, scheduler.config)
    sampler = fastsde.solvers.get_sampler("dpmpp_2m", sde, shape, 20, continuous=continuous)

DDPMScheduler / DDIMScheduler configs (beta_schedule "linear") are score_sde's discrete VPSDE: betas =
linspace(beta_start, beta_end, N) = VPSDE(beta_start N, beta_end N, N) with labels t (N - 1); the wrapper turns
"v_prediction" and "sample" outputs into the noise prediction the VP convention expects. ScoreSdeVeScheduler
configs are the continuous VESDE(sigma_min, sigma_max, N), whose UNet takes sigma as its timestep and returns the
score. `times_of_timesteps` turns a DDPM-type scheduler's integer timesteps into fastsde times, so a solver can run
on exactly the scheduler's grid (get_sampler(..., grid=times)). diffusers is never imported: the UNet is any module
called as unet(x, timesteps) returning a tensor, a tuple or an object with `.sample`.
"""
from __future__ import annotations

import torch

from fastsde import sde as sde_lib
from fastsde._util import per_sample

__all__ = ["from_diffusers", "DiffusersScoreModel", "times_of_timesteps"]

_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _get(config, key, default=None):
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


class DiffusersScoreModel(torch.nn.Module):
    """model(x, labels) under fastsde's conventions around a diffusers UNet (see the module docstring)."""

    def __init__(self, unet, sde, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in _PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {_PREDICTIONS}, got {prediction_type!r}")
        if prediction_type != "epsilon" and not isinstance(sde, sde_lib.VPSDE):
            raise ValueError(f"prediction_type {prediction_type!r} is supported for DDPM/DDIM (VP) models only")
        self.unet, self.sde, self.prediction_type = unet, sde, prediction_type

    def forward(self, x, labels):
        out = self.unet(x, labels)
        out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, (tuple, list)) else out
        if self.prediction_type == "epsilon":
            return out
        i = labels.long()
        alpha = per_sample(self.sde.table("sqrt_alphas_cumprod", x.device)[i], x).to(out.dtype)
        sigma = per_sample(self.sde.table("sqrt_1m_alphas_cumprod", x.device)[i], x).to(out.dtype)
        if self.prediction_type == "v_prediction":  # v = alpha eps - sigma x0  =>  eps = alpha v + sigma x
            return alpha * out + sigma * x
        return (x - alpha * out) / sigma  # "sample": out is x0


def _number(config, key, default=None) -> float:
    value = _get(config, key, default)
    return sde_lib.check_real(f"scheduler_config.{key}", value, low=0.0, low_open=key != "beta_start")


def from_diffusers(unet, scheduler_config):
    """(model, sde, continuous) from a diffusers UNet and its scheduler (or the scheduler's config).

    Checked before anything is built (ValueError/TypeError naming the config key): num_train_timesteps an integer
    in [1, fastsde.sde.MAX_N] (3.7 is refused, not truncated); beta_start, beta_end, sigma_min, sigma_max finite
    numbers in order; prediction_type one of "epsilon", "v_prediction", "sample" for DDPM/DDIM configs and
    "epsilon" (or absent) for score-SDE-VE configs, whose UNet returns the score: any other value is refused, never
    dropped."""
    if not callable(unet):
        raise TypeError(f"unet must be callable as unet(x, timesteps), got {type(unet).__name__}")
    config = getattr(scheduler_config, "config", scheduler_config)
    if config is None or isinstance(config, (str, bytes, int, float)):
        raise TypeError(f"scheduler_config must be a diffusers scheduler, its config or a dict, got "
                        f"{type(config).__name__}")
    n = sde_lib.check_count("scheduler_config.num_train_timesteps", _get(config, "num_train_timesteps", 1000),
                            sde_lib.MAX_N, " (fastsde.sde.MAX_N)")
    prediction = _get(config, "prediction_type", None)
    if prediction is not None and prediction not in _PREDICTIONS:
        raise ValueError(f"scheduler_config.prediction_type must be one of {_PREDICTIONS}, got {prediction!r}")
    if _get(config, "sigma_max") is not None:  # ScoreSdeVeScheduler
        if prediction not in (None, "epsilon"):
            raise ValueError(f"scheduler_config.prediction_type {prediction!r} is not supported for a score-SDE-VE "
                             f"config (sigma_min, sigma_max): its UNet must return the score; only DDPM/DDIM "
                             f"(beta_start, beta_end) configs take 'v_prediction' or 'sample'")
        sigma_min, sigma_max = _number(config, "sigma_min", 0.01), _number(config, "sigma_max")
        if not sigma_min < sigma_max:
            raise ValueError(f"scheduler_config needs sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        sde = sde_lib.VESDE(sigma_min, sigma_max, n)
        return DiffusersScoreModel(unet, sde), sde, True
    if _get(config, "beta_start") is None:
        raise ValueError("scheduler_config must be a DDPM/DDIM (beta_start, beta_end) or score-SDE-VE (sigma_min, "
                         "sigma_max) scheduler config")
    schedule = _get(config, "beta_schedule", "linear")
    if schedule != "linear" or _get(config, "trained_betas") is not None:
        raise ValueError(f"beta_schedule must be 'linear' (score_sde's VPSDE), got {schedule!r}")
    beta_start, beta_end = _number(config, "beta_start"), _number(config, "beta_end")
    if not beta_start <= beta_end < 1:
        raise ValueError(f"scheduler_config needs 0 <= beta_start <= beta_end < 1 (DDPM betas), got "
                         f"beta_start={beta_start}, beta_end={beta_end}")
    sde = sde_lib.VPSDE(beta_start * n, beta_end * n, n)
    return DiffusersScoreModel(unet, sde, prediction or "epsilon"), sde, False


def times_of_timesteps(sde, timesteps) -> torch.Tensor:
    """float64 times t_k of a discrete VPSDE (from_diffusers of a DDPM-type config) whose table row and model label
    are exactly the integer timesteps k: long(t_k (N - 1)) = k in float64 (the solvers' (alpha, sigma)) and
    t_k (N - 1) = k after rounding t_k to float32 (the label the UNet sees). t_k = k / (N - 1), moved up one float64
    ulp where the product would fall just under k."""
    if not isinstance(sde, sde_lib.VPSDE):
        raise ValueError(f"times_of_timesteps needs the discrete VPSDE of a DDPM-type config, got {type(sde).__name__}")
    k = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).flatten()
    n = sde.N - 1
    if not bool((k == k.round()).all() and (k >= 0).all() and (k <= n).all()):
        raise ValueError(f"timesteps must be integers in [0, {n}], got {k.tolist()[:4]}...")
    t = k / n
    t = torch.where((t * n).floor() < k, torch.nextafter(t, torch.full_like(t, 2.0)), t)
    if not bool(((t * n).floor() == k).all() and (t.float() * n == k.float()).all()):
        raise ValueError(f"no time of {type(sde).__name__} maps exactly onto the timesteps {k.tolist()[:4]}...")
    return t
