"""One dispatch table keyed by (op, backend): which implementation runs an op for a given device.

`backend="auto"` picks the fastest backend that can run on the tensors' device (CUDA: triton, native, reference;
CPU: native, reference) and says once when it falls back because the native extension is missing. A backend
named explicitly raises if it cannot run.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch

from fastsde import _native

__all__ = ["BACKENDS", "register", "resolve", "backend_available"]

BACKENDS = ("auto", "reference", "native", "triton")
_TABLE: dict[tuple[str, str], Callable] = {}


def register(op: str, backend: str):
    """Decorator: register `fn` as `op` on `backend`; a second registration of the same pair is an error."""
    if backend not in BACKENDS[1:]:
        raise ValueError(f"backend must be one of {BACKENDS[1:]}, got {backend!r}")

    def deco(fn):
        if (op, backend) in _TABLE:
            raise ValueError(f"op {op!r} already has a {backend!r} implementation")
        _TABLE[(op, backend)] = fn
        return fn

    return deco


def _triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend_available(backend: str, device: torch.device) -> tuple[bool, str]:
    """(can run, why not) for a backend on a device."""
    if backend == "reference":
        return True, ""
    if backend == "native":
        if not _native.available():
            return False, f"fastsde._C unavailable: {_native.unavailable_reason()}"
        if device.type == "cpu" or (device.type == "cuda" and _native.has_cuda()):
            return True, ""
        return False, f"fastsde._C has no kernels for {device.type} tensors"
    if backend == "triton":
        if not _triton_importable():
            return False, "triton is not installed"
        if device.type == "cuda":
            return True, ""
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            return True, ""
        return False, f"triton runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {device.type}"
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve(op: str, backend: str, device: torch.device) -> tuple[str, Callable]:
    """The (backend name, implementation) that runs `op` for tensors on `device`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        order = ("triton", "native", "reference") if device.type == "cuda" else ("native", "reference")
        for name in order:
            if (op, name) in _TABLE and backend_available(name, device)[0]:
                return name, _TABLE[(op, name)]
        raise RuntimeError(f"no backend can run {op!r} on {device}")  # unreachable: reference runs anywhere
    if (op, backend) not in _TABLE:
        known = sorted(b for (o, b) in _TABLE if o == op)
        raise ValueError(f"op {op!r} has no {backend!r} implementation; implemented: {known}")
    ok, why = backend_available(backend, device)
    if not ok:
        raise RuntimeError(f"backend={backend!r} cannot run {op!r}: {why}")
    return backend, _TABLE[(op, backend)]
