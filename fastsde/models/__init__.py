"""Score models: analytic Gaussian mixtures (exact scores, `fastsde.models.analytic`), NCSN++/DDPM++-style U-Nets
(`fastsde.models.ncsnpp`), score_sde's own NCSNpp and DDPM in its layout (`fastsde.models.score_sde_nets`: its
checkpoints load as they are) and the digits classifiers (`fastsde.models.classifier`).

The U-Net names below load on first use, so `import fastsde.models.utils` or `fastsde.models.analytic` does not pull
in the fused U-Net modules.
"""
from __future__ import annotations

import importlib

__all__ = ["UNet", "UNetConfig", "get_preset", "save_checkpoint", "load_checkpoint", "NCSNpp", "DDPM",
           "ScoreSDEConfig", "build_model", "load_model_file"]

_LAZY = {"UNet": "ncsnpp", "UNetConfig": "ncsnpp", "get_preset": "ncsnpp", "save_checkpoint": "ncsnpp",
         "load_checkpoint": "ncsnpp", "NCSNpp": "score_sde_nets", "DDPM": "score_sde_nets",
         "ScoreSDEConfig": "score_sde_nets", "build_model": "score_sde_nets"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"fastsde.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fastsde.models' has no attribute {name!r}")


def load_model_file(path: str, *, reference: bool = False, backend: str = "auto", device="cpu"):
    """The score network of a safetensors file, rebuilt by its metadata format, in eval mode on `device`:
    a score_sde network (fastsde.models.score_sde_nets.FORMAT, written by `fastsde convert`) or a fastsde UNet
    (fastsde.models.ncsnpp.save_checkpoint). reference=True builds the plain-PyTorch layers instead of the fused."""
    from safetensors import safe_open

    from fastsde.models import ncsnpp, score_sde_nets

    with safe_open(str(path), framework="pt") as f:
        fmt = (f.metadata() or {}).get("format")
    if fmt == score_sde_nets.FORMAT:
        return score_sde_nets.load_file(path, accelerate=not reference, backend=backend, device=device)
    return ncsnpp.load_checkpoint(path, reference=reference, backend=backend, device=device)
