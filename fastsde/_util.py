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


def check_regular_file(path, what: str = "file") -> str:
    """Raise unless `path` names an existing regular file (symlinks followed): FileNotFoundError when it is missing,
    ValueError for a directory, FIFO, socket or device, which open() would fail on late or block on forever (a FIFO
    with no writer). Only stats the path; never opens it. Returns the path as a str."""
    import os
    import stat

    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot stat the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else
                "not a regular file")
        raise ValueError(f"{path} is {kind}: the {what} must be a regular file")
    return path
