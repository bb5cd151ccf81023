"""fastsde: fast, reproducible samplers for score-based generative models (Song et al., ICLR 2021).

The public API mirrors score_sde's: `fastsde.sde`, `fastsde.sampling`, `fastsde.likelihood`,
`fastsde.models.utils`. Noise comes from the FSN1 counter-based stream (`fastsde.random`), identical on every backend.
Layers: docs/design.md. `fastsde.accelerate` (fused U-Net modules) and `fastsde.solvers` / `fastsde.get_sampler` (the
few-step solvers) load on first use.
"""
from __future__ import annotations

from fastsde import likelihood, random, sampling, sde
from fastsde.sampling import get_ode_sampler, get_pc_sampler
from fastsde.sde import VESDE, VPSDE, subVPSDE

__version__ = "0.1.0"

__all__ = ["sde", "sampling", "likelihood", "random", "solvers", "VPSDE", "subVPSDE", "VESDE", "get_pc_sampler",
           "get_ode_sampler", "get_sampler", "accelerate", "__version__"]


def __getattr__(name):
    if name == "accelerate":
        from fastsde.nn.accelerate import accelerate

        return accelerate
    if name in ("solvers", "get_sampler"):  # the few-step solvers (fastsde/solvers/), beside get_pc_sampler
        import importlib

        solvers = importlib.import_module("fastsde.solvers")
        return solvers if name == "solvers" else solvers.get_sampler
    raise AttributeError(f"module 'fastsde' has no attribute {name!r}")
