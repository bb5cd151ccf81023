"""Small internal helpers shared across modules."""
from __future__ import annotations

import torch


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """View a per-sample vector (B,) so it broadcasts against `like` (B, ...), whatever the rank of `like`."""
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def sum_except_batch(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def flat_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of the flattened sample: (B, ...) -> (B,)."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)


def register_in(registry: dict, kind: str, cls=None, *, name=None):
    """Class decorator (or call with cls) adding a class to `registry` under `name` (default: the class name); a
    second registration of a name is a ValueError. Every registry of the package (predictors, correctors, solvers,
    score_sde model names) registers through this."""

    def deco(c):
        key = c.__name__ if name is None else name
        if key in registry:
            raise ValueError(f"{kind} {key!r} is already registered")
        registry[key] = c
        return c

    return deco if cls is None else deco(cls)
