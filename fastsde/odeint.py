"""On-device integration of batched ODEs dy/dt = f(t, y): adaptive Dormand-Prince RK45 with per-sample step sizes,
and the same tableau on a fixed grid.

Every row of the state y (B, N) is its own initial-value problem (one image with its log-density column, say): the
error norm, the step size and the time are per row, so a row's trajectory does not depend on what else is in the
batch, and a row that reached the end stops costing evaluations (the active rows are compacted when one finishes;
f sees only them, with their original row indices). The step-size controller is scipy's RK45 (solve_ivp) row by
row: the RMS norm of err / (atol + rtol max(|y|, |y_new|)), factor 0.9 err^(-1/5) clipped to [0.2, 10], no growth
right after a rejection, scipy's initial step. So for B = 1 it takes scipy's steps up to float rounding; for B > 1
scipy controls one norm over the whole batch and this one B norms.

The stage sums y + h sum_j a_sj k_j: the stage derivatives live in one buffer K (7, B, N); the tableau row times
K[:s] viewed as (s, B N) is one matrix-vector product (one pass over the s derivatives), then one addcmul adds
h (B,) times it to y (benchmarks/bench_likelihood.py times this against chaining fastsde's affine_combine_step, a
plain torch expression, and the batched baddbmm over a (B, 7, N) layout it replaced). Host traffic: on the CPU one
small read per step (did a row finish, is the error finite), none per evaluation; on CUDA the device-resident mode
(`chunk`) reads three flags once per chunk of steps, and with `capture` replays each chunk as one CUDA graph.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from fastsde.sampling.guard import NonFiniteError, check_finite

__all__ = ["dopri5", "fixed_grid", "OdeResult", "DOPRI5_A", "DOPRI5_B", "DOPRI5_C", "DOPRI5_E"]

# Dormand & Prince (1980), the 5(4) pair with the 5th-order solution propagated (scipy's RK45 tableau).
DOPRI5_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI5_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),  # = DOPRI5_B: the 7th stage is y_new (FSAL)
)
DOPRI5_B = DOPRI5_A[6]
DOPRI5_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)  # error = h sum_j E_j k_j
SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0  # scipy's RK45 controller
ERROR_EXPONENT = -1.0 / 5.0  # the embedded solution is 4th order

# f(t (B,) float64, y (B, N), rows (B,) int64 original row indices) -> dy/dt (B, N)
OdeFunc = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class OdeResult:
    """y: the state at t1 (B, N); nfev: batched calls of f; row_evals: calls of f each row took part in (B,);
    steps / rejected: accepted and rejected steps per row (B,) (fixed_grid: rejected is zero)."""

    y: torch.Tensor
    nfev: int
    row_evals: torch.Tensor
    steps: torch.Tensor
    rejected: torch.Tensor


class _Budget:
    def __init__(self, limit: int, what: str):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_evals must be a positive int, got {limit!r}")
        self.limit, self.what, self.count = limit, what, 0

    def spend(self, n: int, t: torch.Tensor) -> None:
        self.count += n
        if self.count > self.limit:
            raise RuntimeError(f"{self.what} made no progress: {self.limit} evaluations and still at t = "
                               f"{float(t[0]):.6g} (pass a larger max_evals, looser tolerances, or check the model)")


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per-row RMS norm (B, N) -> (B,) (scipy's norm(x) / sqrt(x.size), row by row)."""
    return torch.linalg.vector_norm(x, dim=1) / math.sqrt(x.shape[1])


class Stages:
    """The stage derivatives K (7, B, N) and the tableau's rows as tensors; combine is one matrix-vector product over
    the stages (one pass over K) and one addcmul with the per-row step."""

    def __init__(self, y: torch.Tensor):
        b, n = y.shape
        self.K = torch.empty(7, b, n, dtype=y.dtype, device=y.device)
        rows = [list(r) + [0.0] * (7 - len(r)) for r in DOPRI5_A] + [list(DOPRI5_E)]
        self.table = torch.tensor(rows, dtype=y.dtype, device=y.device)  # (8, 7): A rows 0..6, then E

    def combine(self, row: int, width: int, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """y + h sum_{j < width} table[row, j] K[j] (y None: without the y term)."""
        _, b, n = self.K.shape
        acc = (self.table[row, :width] @ self.K[:width].reshape(width, b * n)).reshape(b, n)
        if y is None:
            return acc.mul_(h[:, None])
        return torch.addcmul(y, h[:, None], acc)

    def step(self, f: OdeFunc, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Stages 2..7 of one step from K[0] = f(t, y); returns y_new (K[6] = f(t + h, y_new))."""
        hy = h.to(y.dtype)
        for s in range(1, 7):
            ys = self.combine(s, s, hy, y)
            self.K[s] = f(t + DOPRI5_C[s] * h, ys, rows)
        return ys

    def compact(self, keep: torch.Tensor) -> None:
        self.K = self.K[:, keep]


def _control(err_vec, y, y_new, h, after_reject, rtol, atol):
    """scipy's RK45 step-size controller, row by row: (err (B,) float64, accept (B,), the next |h| (B,)) from the
    error estimate err_vec (B, N) of a step h (B,) from y to y_new."""
    scale = atol + torch.maximum(y.abs(), y_new.abs()) * rtol
    err = _rms(err_vec / scale).double()
    accept = err < 1
    grow = torch.where(err == 0, torch.full_like(err, MAX_FACTOR),
                       (SAFETY * err.pow(ERROR_EXPONENT)).clamp(max=MAX_FACTOR))
    grow = torch.where(after_reject, grow.clamp(max=1.0), grow)
    shrink = (SAFETY * err.pow(ERROR_EXPONENT)).clamp(min=MIN_FACTOR)
    return err, accept, torch.where(accept, h.abs() * grow, h.abs() * shrink)


def _initial_step(f, t0, y0, f0, direction, span, rtol, atol, rows):
    """scipy's select_initial_step (Hairer, Norsett & Wanner II.4), row by row: (h (B,) float64, 1 evaluation)."""
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms(y0 / scale).double(), _rms(f0 / scale).double()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1).clamp(max=span)
    f1 = f(t0 + direction * h0, y0 + (direction * h0).to(y0.dtype)[:, None] * f0, rows)
    d2 = _rms((f1 - f0) / scale).double() / h0
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, (h0 * 1e-3).clamp(min=1e-6), (0.01 / dmax) ** (1.0 / 5.0))
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span))


def _check(y0: torch.Tensor, t0, t1) -> None:
    if not isinstance(y0, torch.Tensor) or y0.dim() != 2 or not y0.dtype.is_floating_point or y0.shape[0] == 0:
        raise ValueError(f"y0 must be a floating (batch, n) tensor with batch >= 1, got "
                         f"{tuple(getattr(y0, 'shape', ())) or type(y0).__name__}")
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got {t0!r} twice")


def dopri5(f: OdeFunc, y0: torch.Tensor, t0: float, t1: float, *, rtol: float, atol: float,
           max_evals: int = 100_000, what: str = "the ODE", chunk: int | None = None,
           capture: bool = False) -> OdeResult:
    """Integrate dy/dt = f(t, y) from t0 to t1 for every row of y0 (B, N) with adaptive Dormand-Prince RK45 (module
    docstring: per-row error norm, step size and time). Raises NonFiniteError when a row's error becomes NaN/inf,
    RuntimeError after max_evals batched evaluations or when a step size underflows.

    chunk: None or 1 -- one host read per step, and finished rows leave the batch (f sees only the others; the
    default on the CPU, where a host read is free and a finished row's evaluations are not). An int > 1 -- the
    device-resident mode (the default on CUDA: 8): rows stay, a finished row steps with h = 0, and the host reads
    three flags (non-finite, step underflow, all done) once per `chunk` steps; the steps, states and counts are the
    per-step mode's, so only the batched evaluation count (nfev, spent in whole chunks) differs.
    capture: record one chunk as a CUDA graph after the first (eager) one and replay it (chunk > 1; f must then be
    capturable: no host read, no tensors rebound between calls). A state off CUDA has no graphs: capture=True runs
    the device-resident chunks eagerly there, as the executor runs a captured program compiled on the CPU."""
    _check(y0, t0, t1)
    if chunk is None:
        chunk = 8 if y0.device.type == "cuda" or capture else 1
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (steps between host reads), got {chunk!r}")
    if capture and chunk == 1:
        raise ValueError("capture=True records chunks of steps as CUDA graphs: it needs chunk > 1 (or None: 8), "
                         "got chunk=1")
    budget = _Budget(max_evals, what)
    device, b = y0.device, y0.shape[0]
    direction, span = (1.0 if t1 > t0 else -1.0), abs(t1 - t0)
    rows = torch.arange(b, device=device)
    out = y0.clone()
    y = y0.clone()
    t = torch.full((b,), float(t0), dtype=torch.float64, device=device)
    stages = Stages(y)
    budget.spend(2, t)
    stages.K[0] = check_finite(f(t, y, rows), step=1, t=t0, what=f"{what}'s drift")  # before any step control
    h_abs = _initial_step(f, t, y, stages.K[0], direction, span, rtol, atol, rows)
    if chunk > 1:
        return _dopri5_resident(f, y0, t0, t1, h_abs, stages.K[0], rtol, atol, budget, what, chunk, capture)
    after_reject = torch.zeros(b, dtype=torch.bool, device=device)
    evals = torch.full((b,), 2, dtype=torch.int64, device=device)
    steps, rejected = torch.zeros_like(evals), torch.zeros_like(evals)
    while True:
        budget.spend(6, t)
        last = h_abs >= (t1 - t).abs()  # this step reaches t1 (exactly, as scipy clips it)
        t_new = torch.where(last, torch.full_like(t, t1), t + direction * h_abs)
        h = t_new - t
        y_new = stages.step(f, t, h, y, rows)
        ki = rows  # evals/steps are indexed by original row
        evals[ki] += 6
        err_vec = stages.combine(7, 7, h.to(y.dtype), None)
        err, accept, h_abs = _control(err_vec, y, y_new, h, after_reject, rtol, atol)
        after_reject = ~accept
        t = torch.where(accept, t_new, t)
        y = torch.where(accept[:, None], y_new, y)
        stages.K[0] = torch.where(accept[:, None], stages.K[6], stages.K[0])
        steps[ki] += accept.long()
        rejected[ki] += (~accept).long()
        done = accept & last
        min_step = 10 * (torch.nextafter(t, t + direction) - t).abs()
        status = torch.stack([(~torch.isfinite(err)).any(), done.any(), (h_abs < min_step).any()]).tolist()
        if status[0]:
            bad = int((~torch.isfinite(err)).sum())
            raise NonFiniteError(f"{what}'s drift became non-finite at step {budget.count}, t = "
                                 f"{float(t[~torch.isfinite(err)][0]):.6g}: {bad} of {b} samples hold NaN or inf (the "
                                 f"model returned non-finite values)")
        if status[2]:
            raise RuntimeError(f"{what}: the step size fell below the spacing of float64 times near t = "
                               f"{float(t[h_abs < min_step][0]):.6g} (a stiff or non-smooth f; loosen rtol/atol)")
        if status[1]:
            out[rows[done]] = y[done]
            keep = ~done
            if not bool(keep.any()):
                return OdeResult(out, budget.count, evals, steps, rejected)
            rows, y, t, h_abs, after_reject = rows[keep], y[keep], t[keep], h_abs[keep], after_reject[keep]
            stages.compact(keep)


class _Resident:
    """dopri5's state for the device-resident mode: every tensor keeps its storage for the whole integration (so a
    chunk of steps can be recorded once as a CUDA graph and replayed), rows never leave the batch (a finished row
    steps with h = 0: its time, state and counts stay put while it rides along), and the host reads three flags per
    chunk instead of one per step."""

    def __init__(self, f, y0, t0, t1, rtol, atol, h_abs, k0):
        self.f, self.t1, self.rtol, self.atol = f, float(t1), rtol, atol
        self.direction = 1.0 if t1 > t0 else -1.0
        device, b = y0.device, y0.shape[0]
        self.rows = torch.arange(b, device=device)
        self.y = y0.clone()
        self.t = torch.full((b,), float(t0), dtype=torch.float64, device=device)
        self.h_abs = h_abs.clone()
        self.stages = Stages(self.y)
        self.stages.K[0] = k0
        self.after_reject = torch.zeros(b, dtype=torch.bool, device=device)
        self.done = torch.zeros_like(self.after_reject)
        self.bad = torch.zeros_like(self.after_reject)  # a non-finite error estimate
        self.small = torch.zeros_like(self.after_reject)  # a step size below float64's spacing of times
        self.evals = torch.full((b,), 2, dtype=torch.int64, device=device)
        self.steps, self.rejected = torch.zeros_like(self.evals), torch.zeros_like(self.evals)

    def step(self) -> None:
        """One RK45 step of every unfinished row, all updates in place."""
        t, t1, direction = self.t, self.t1, self.direction
        active = ~self.done
        last = self.h_abs >= (t1 - t).abs()
        t_new = torch.where(last, torch.full_like(t, t1), t + direction * self.h_abs)
        h = torch.where(active, t_new - t, torch.zeros_like(t))
        y_new = self.stages.step(self.f, t, h, self.y, self.rows)
        err_vec = self.stages.combine(7, 7, h.to(self.y.dtype), None)
        err, accept, h_abs = _control(err_vec, self.y, y_new, h, self.after_reject, self.rtol, self.atol)
        accept &= active
        self.h_abs.copy_(torch.where(active, h_abs, self.h_abs))
        self.after_reject.copy_(active & ~accept)
        self.t.copy_(torch.where(accept, t_new, t))
        self.y.copy_(torch.where(accept[:, None], y_new, self.y))
        self.stages.K[0] = torch.where(accept[:, None], self.stages.K[6], self.stages.K[0])
        self.evals.add_(active.long() * 6)
        self.steps.add_(accept.long())
        self.rejected.add_((active & ~accept).long())
        min_step = 10 * (torch.nextafter(self.t, self.t + direction) - self.t).abs()
        self.bad.logical_or_(active & ~torch.isfinite(err))
        self.small.logical_or_(active & ~(accept & last) & (self.h_abs < min_step))
        self.done.logical_or_(accept & last)

    def chunk(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def status(self) -> list:
        return torch.stack([self.bad.any(), self.small.any(), self.done.all()]).tolist()


def _records_graphs(device: torch.device) -> bool:
    """Whether capture=True records CUDA graphs for a state on `device` (tests stand in for CUDA here)."""
    return device.type == "cuda"


def _dopri5_resident(f, y0, t0, t1, h_abs, k0, rtol, atol, budget, what, chunk, capture) -> OdeResult:
    """dopri5's device-resident loop: chunks of `chunk` steps with no host read inside (each recorded once as a
    CUDA graph and replayed when `capture`), then one read of three flags."""
    from fastsde import capture_safety

    state = _Resident(f, y0, t0, t1, rtol, atol, h_abs, k0)
    graph = None
    with capture_safety.on_device(y0.device):
        while True:
            budget.spend(6 * chunk, state.t)
            if graph is not None:
                graph.replay()
            else:
                state.chunk(chunk)  # the first chunk runs eagerly: it warms up whatever f builds lazily
                if capture and _records_graphs(y0.device):
                    with capture_safety.capture_stream(y0.device) as side:
                        graph = capture_safety.record_graph(lambda: state.chunk(chunk), side)
            bad, small, done = state.status()
            if bad:
                rows = state.bad.nonzero()[:, 0]
                raise NonFiniteError(f"{what}'s drift became non-finite by evaluation {budget.count}, t = "
                                     f"{float(state.t[rows[0]]):.6g}: {rows.numel()} of {y0.shape[0]} samples hold "
                                     f"NaN or inf (the model returned non-finite values)")
            if small:
                row = int(state.small.nonzero()[0, 0])
                raise RuntimeError(f"{what}: the step size fell below the spacing of float64 times near t = "
                                   f"{float(state.t[row]):.6g} (a stiff or non-smooth f; loosen rtol/atol)")
            if done:
                return OdeResult(state.y, budget.count, state.evals, state.steps, state.rejected)


def fixed_grid(f: OdeFunc, y0: torch.Tensor, grid: torch.Tensor, *, what: str = "the ODE") -> OdeResult:
    """Integrate dy/dt = f(t, y) for every row of y0 (B, N) along the times `grid` (1-D float64, monotone, >= 2
    points) with the 5th-order Dormand-Prince step, no error control: 6 evaluations per step plus one. Raises
    NonFiniteError when the state becomes NaN/inf (checked once, at the end)."""
    if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be a 1-D tensor of >= 2 times, got {getattr(grid, 'shape', grid)!r}")
    grid = grid.double().tolist()
    _check(y0, grid[0], grid[-1])
    device, b = y0.device, y0.shape[0]
    rows = torch.arange(b, device=device)
    y = y0.clone()
    stages = Stages(y)
    t = torch.full((b,), grid[0], dtype=torch.float64, device=device)
    stages.K[0] = f(t, y, rows)
    for t_next in grid[1:]:
        h = torch.full_like(t, t_next) - t
        y = stages.step(f, t, h, y, rows)
        stages.K[0] = stages.K[6]
        t = torch.full_like(t, t_next)
    if not bool(torch.isfinite(y).all()):
        raise NonFiniteError(f"{what} became non-finite on the fixed grid (the model returned non-finite values)")
    nfev = 1 + 6 * (len(grid) - 1)
    steps = torch.full((b,), len(grid) - 1, dtype=torch.int64, device=device)
    return OdeResult(y, nfev, torch.full_like(steps, nfev), steps, torch.zeros_like(steps))
