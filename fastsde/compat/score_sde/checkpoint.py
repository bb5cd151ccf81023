"""score_sde's released checkpoints (checkpoint_*.pth: a dict with `model`, `ema`, `optimizer`, `step`) read as plain
state dicts, never unpickling code: torch.load(weights_only=True), and anything it refuses is refused here too.

`model` is the DataParallel state dict (keys prefixed `module.`); `ema` is {decay, num_updates, shadow_params}, the
shadow parameters listed in the order of the model's trainable parameters (score_sde's ExponentialMovingAverage
skips parameters with requires_grad=False, e.g. the Fourier projection's W), which load_state_dict puts back on
their names.

load_model builds fastsde's own NCSNpp / DDPM (fastsde.models.score_sde_nets: score_sde's keys on fused modules)
from the checkpoint's config and loads it strictly: a config that does not match the weights is an error, never a
partly loaded network.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["load_state_dict", "load_into", "load_model", "PREFIX"]

PREFIX = "module."


def _read(path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a checkpoint file") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError, zip/EOF errors, struct.error on junk bytes, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not loadable as tensors without unpickling code (torch.load weights_only=True "
                         f"refused it: {first})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        got = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a score_sde checkpoint dict with 'model' (and 'ema', 'optimizer', "
                         f"'step'), got {got}")
    for key, value in ckpt["model"].items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: checkpoint['model'] must map parameter names (strings) to tensors, got "
                             f"{key!r}: {type(value).__name__}")
    return ckpt


def _trainable_guess(sd: dict) -> list[str]:
    """Names of the trainable parameters of a score_sde model state dict: all but the `sigmas` buffer and the
    Fourier projection's fixed W (the only 1-D tensor called W; NIN's W are matrices)."""
    return [k for k, v in sd.items() if k != "sigmas" and not (k.endswith(".W") and v.dim() == 1)]


def load_state_dict(path, *, ema: bool = False, trainable: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict from a score_sde checkpoint, `module.` prefix removed; ema=True puts the EMA shadow
    parameters in place of the trained ones (the weights score_sde samples with). trainable: the names of the
    model's requires_grad parameters in order (default: guessed from the keys; every shape is checked)."""
    ckpt = _read(path)
    sd = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): v for k, v in ckpt["model"].items()}
    if not ema:
        return sd
    shadow = ckpt.get("ema", {}).get("shadow_params") if isinstance(ckpt.get("ema"), dict) else None
    if not isinstance(shadow, (list, tuple)):
        raise ValueError(f"{path}: ema=True needs checkpoint['ema']['shadow_params'], which is missing")
    names = _trainable_guess(sd) if trainable is None else list(trainable)
    if len(names) != len(shadow):
        raise ValueError(f"{path}: {len(shadow)} EMA shadow parameters for {len(names)} trainable parameters")
    for name, value in zip(names, shadow):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: EMA shadow parameter for {name} must be a tensor, got {type(value).__name__}")
        if name not in sd or tuple(sd[name].shape) != tuple(value.shape):
            have = tuple(sd[name].shape) if name in sd else "missing"
            raise ValueError(f"{path}: EMA shadow parameter for {name} has shape {tuple(value.shape)}, the model's "
                             f"is {have}")
        sd[name] = value
    return sd


def load_into(model: nn.Module, path, *, ema: bool = False, strict: bool = True) -> nn.Module:
    """Load a score_sde checkpoint into `model` (a score_sde-layout model, optionally inside DataParallel) in
    place, EMA weights mapped by the model's own trainable parameters; returns the model."""
    inner = model.module if isinstance(model, nn.DataParallel) else model
    trainable = [n for n, p in inner.named_parameters() if p.requires_grad]
    inner.load_state_dict(load_state_dict(path, ema=ema, trainable=trainable), strict=strict)
    return model


def load_model(path, config, *, ema: bool = False, accelerate: bool = True, backend: str = "auto", device="cpu"):
    """fastsde's NCSNpp or DDPM for `config` (score_sde's config, a mapping of its fields or a ScoreSDEConfig; the
    class by config name) with the checkpoint's weights (ema=True: the EMA weights), in eval mode on `device`.
    accelerate=False builds the plain-PyTorch layers."""
    from fastsde.models.score_sde_nets import build_model

    model = build_model(config, accelerate=accelerate, backend=backend)
    return load_into(model, path, ema=ema).to(device).eval()
