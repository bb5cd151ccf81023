"""Score models: analytic Gaussian mixtures (exact scores, `fastsde.models.analytic`), NCSN++/DDPM++-style U-Nets
(`fastsde.models.ncsnpp`) and the digits classifiers (`fastsde.models.classifier`).

The U-Net names below load on first use, so `import fastsde.models.utils` or `fastsde.models.analytic` does not pull
in the fused U-Net modules.
"""
from __future__ import annotations

import importlib

__all__ = ["UNet", "UNetConfig", "get_preset", "save_checkpoint", "load_checkpoint"]


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module("fastsde.models.ncsnpp"), name)
    raise AttributeError(f"module 'fastsde.models' has no attribute {name!r}")
