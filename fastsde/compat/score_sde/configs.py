"""The architecture fields of score_sde's official CIFAR-10 configs (configs/default_cifar10_configs.py plus each
file's overrides), as plain dicts: what a converted checkpoint records about the network it holds."""
from __future__ import annotations

import json

__all__ = ["CONFIGS", "get_config_fields"]

_BASE = {"nf": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 4, "attn_resolutions": [16], "dropout": 0.1,
         "resamp_with_conv": True, "conditional": True, "nonlinearity": "swish", "normalization": "GroupNorm",
         "image_size": 32, "num_channels": 3, "sigma_min": 0.01, "sigma_max": 50, "num_scales": 1000,
         "beta_min": 0.1, "beta_max": 20.0, "continuous": True}
_PP = {"fir_kernel": [1, 3, 3, 1], "skip_rescale": True, "resblock_type": "biggan", "progressive": "none",
       "progressive_combine": "sum", "init_scale": 0.0, "fourier_scale": 16, "conv_size": 3}

CONFIGS = {
    "ve/cifar10_ncsnpp_continuous": {**_BASE, **_PP, "name": "ncsnpp", "sde": "vesde", "scale_by_sigma": True,
                                     "fir": True, "progressive_input": "residual", "embedding_type": "fourier",
                                     "centered": False},
    "vp/cifar10_ddpmpp_continuous": {**_BASE, **_PP, "name": "ncsnpp", "sde": "vpsde", "scale_by_sigma": False,
                                     "fir": False, "progressive_input": "none", "embedding_type": "positional",
                                     "centered": True},
    "subvp/cifar10_ddpmpp_continuous": {**_BASE, **_PP, "name": "ncsnpp", "sde": "subvpsde",
                                        "scale_by_sigma": False, "fir": False, "progressive_input": "none",
                                        "embedding_type": "positional", "centered": True},
    "vp/ddpm/cifar10": {**_BASE, "name": "ddpm", "sde": "vpsde", "num_res_blocks": 2, "scale_by_sigma": False,
                        "centered": True, "continuous": False},
}


def get_config_fields(spec: str) -> dict:
    """An official config by name (CONFIGS) or a JSON object of fields; a bad spec is a ValueError naming both."""
    if spec in CONFIGS:
        return dict(CONFIGS[spec])
    try:
        fields = json.loads(spec)
    except json.JSONDecodeError:
        raise ValueError(f"config must be one of {sorted(CONFIGS)} or a JSON object, got {spec!r}") from None
    if not isinstance(fields, dict) or "name" not in fields:
        raise ValueError(f"a JSON config must be an object with at least 'name' (ncsnpp or ddpm), got {spec!r}")
    return fields
