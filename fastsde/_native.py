"""The native extension fastsde._C: whether it loaded, why not, and a one-time notice when falling back.

Importing fastsde._C also loads its torch.library registrations (torch.ops.fastsde.*). The extension is built
by setup.py, never at import time; without it fastsde runs on the reference backend.
"""
from __future__ import annotations

import warnings

import torch  # noqa: F401  (libtorch must be loaded before the extension)

__all__ = ["available", "unavailable_reason", "warn_once", "build_info", "has_cuda"]

try:
    from fastsde import _C
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _REASON = f"{type(exc).__name__}: {exc}"
else:
    _REASON = ""

_warned = False


def available() -> bool:
    """True when fastsde._C imported (its ops are registered under torch.ops.fastsde)."""
    return _C is not None


def unavailable_reason() -> str:
    """Why fastsde._C did not import ('' when it did)."""
    return _REASON


def warn_once() -> None:
    """Say once per process that the native backend is unavailable and why (call when `auto` falls back)."""
    global _warned
    if _warned or _C is not None:
        return
    _warned = True
    message = (
        f"fastsde: native backend unavailable ({_REASON}); falling back to the reference backend. "
        "Build it with `pip install --no-build-isolation -e .`"
    )
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def build_info() -> dict:
    """fastsde._C.build_info(): compiler, openmp, cuda, simd; raises RuntimeError when unavailable."""
    if _C is None:
        raise RuntimeError(f"fastsde native extension unavailable: {_REASON}")
    return dict(_C.build_info())


def has_cuda() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return _C is not None and bool(_C.build_info()["cuda"])
