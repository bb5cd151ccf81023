"""One dispatch table keyed by (op, backend): which implementation runs an op for a given device.

`backend="auto"` picks the fastest backend that can run on the tensors' device (CUDA: triton, native, reference;
CPU: native, reference). When it falls back because the native extension is not built it says so once per process;
when it falls back past a native backend that cannot run for another reason (e.g. built without CUDA) it warns once
per (op, backend) with the reason; skipping Triton, an optional extra on every device, is silent. A backend
named explicitly raises if it cannot run. Every op family registers here: affine_step, step_sq_norms, fsn1_normal,
group_norm, attn_block (fastsde/ops/*.py).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable

import torch

from fastsde import _native

__all__ = ["BACKENDS", "register", "resolve", "backend_available", "implementation"]

BACKENDS = ("auto", "reference", "native", "triton")
_TABLE: dict[tuple[str, str], Callable] = {}
_WARNED: set[tuple[str, str]] = set()


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
            if (op, name) not in _TABLE:
                continue
            ok, why = backend_available(name, device)
            if ok:
                return name, _TABLE[(op, name)]
            if name == "native" and not _native.available():
                _native.warn_once()  # the extension is missing: said once per process, for every op
            elif name != "triton" and (op, name) not in _WARNED:  # triton is optional everywhere: no warning
                _WARNED.add((op, name))
                warnings.warn(f"fastsde: {op}: the {name} backend cannot run here ({why}); using the next one",
                              RuntimeWarning, stacklevel=3)
        raise RuntimeError(f"no backend can run {op!r} on {device}")  # unreachable: reference runs anywhere
    if (op, backend) not in _TABLE:
        known = sorted(b for (o, b) in _TABLE if o == op)
        raise ValueError(f"op {op!r} has no {backend!r} implementation; implemented: {known}")
    ok, why = backend_available(backend, device)
    if not ok:
        raise RuntimeError(f"backend={backend!r} cannot run {op!r}: {why}")
    return backend, _TABLE[(op, backend)]


def implementation(op: str, backend: str) -> Callable | None:
    """The function registered for (op, backend), or None: for an op calling another op's kernel directly after it
    has already resolved the backend (no second resolve, no re-validation)."""
    return _TABLE.get((op, backend))
