"""Non-finite state watch for samplers and integrators: stop with one clear error instead of hanging (scipy's step
becomes nan and time never advances) or returning NaN samples with success.

Two forms, one message:
  check_finite(x, step, t)       reads x now (one host sync): for host-driven loops (scipy ODE callbacks, the
                                 reference PC loop, the end of any sampler).
  FiniteWatch(x, every=K)        device-side: `watch.update(x)` folds "is every element finite" into one 0-d bool
                                 tensor without a host sync (capturable, compilable); `watch.check(step, t)` reads it
                                 every K steps, so a fused loop pays one sync per K steps and stops at most K steps
                                 after the state went bad.
"""
from __future__ import annotations

import math

import torch

__all__ = ["NonFiniteError", "check_finite", "count_nonfinite", "FiniteWatch"]


class NonFiniteError(RuntimeError):
    """The sampler state (or the model output) holds NaN or inf."""


def count_nonfinite(x: torch.Tensor) -> int:
    """The number of samples (rows along dim 0) of x with at least one NaN or inf."""
    if x.numel() == 0:
        return 0
    return int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1).sum())


def _where(step, t) -> str:
    parts = []
    if step is not None:
        parts.append(f"step {step}")
    if t is not None:
        parts.append(f"t = {float(t):.6g}")
    return " at " + ", ".join(parts) if parts else ""


def check_finite(x: torch.Tensor, step=None, t=None, *, what: str = "the sampler state") -> torch.Tensor:
    """Return x, or raise NonFiniteError naming the step, the time and how many of the batch's samples are NaN/inf
    (a diverging sampler or a model that returned non-finite scores). One host sync."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        bad = count_nonfinite(x) if x.dim() else 1
        total = x.shape[0] if x.dim() else 1
        raise NonFiniteError(f"{what} became non-finite{_where(step, t)}: {bad} of {total} samples hold NaN or inf "
                             f"(the model returned non-finite values or the step sizes diverged)")
    return x


class FiniteWatch:
    """A device-side "all finite so far" flag for loops that must not sync every step (module docstring).

        watch = FiniteWatch(x, every=16)
        for i in range(N):
            step(x)
            watch.update(x)                 # no host sync: folds isfinite(x).all() into a device flag
            watch.check(i, t[i])            # syncs only when i % every == every - 1 (and at the last step:
        watch.check(N - 1, t[-1], force=True)  #   call once with force=True)

    `every=1` checks every step. The flag is a 0-d bool tensor on x's device (a static buffer: CUDA-graph safe).
    """

    def __init__(self, x: torch.Tensor, every: int = 16, what: str = "the sampler state"):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every, self.what = every, what
        self.ok = torch.ones((), dtype=torch.bool, device=x.device)
        self._last = None

    def update(self, x: torch.Tensor) -> None:
        """ok &= all(isfinite(x)), on the device; remembers x for the count in the error."""
        self.ok.logical_and_(torch.isfinite(x).all())
        self._last = x

    def check(self, step: int, t=None, *, force: bool = False) -> None:
        """Every `every` steps (or when forced): raise NonFiniteError if any update saw NaN/inf."""
        if not force and step % self.every != self.every - 1:
            return
        if not bool(self.ok):
            first = step - (step % self.every) if not force else None
            span = f" (between steps {first} and {step})" if first is not None and self.every > 1 else ""
            bad = count_nonfinite(self._last) if self._last is not None else 0
            total = self._last.shape[0] if self._last is not None and self._last.dim() else 1
            when = _where(step, t if t is None or math.isfinite(float(t)) else None)
            raise NonFiniteError(f"{self.what} became non-finite{span}; at the check{when}: {bad} of {total} "
                                 f"samples hold NaN or inf (the model returned non-finite values or the step sizes "
                                 f"diverged)")
