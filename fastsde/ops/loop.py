"""Sampler-loop steps whose per-step values live in tensors: the ops a capture-ready loop calls once per update.

    loop_affine_(x, x_mean, score, table, step, seed, ...):   x_mean = a_i x + b_i score; x = x_mean + c_i z
    loop_langevin_(x, x_mean, score, table, snr, step, ...):  eps_i = 2 alpha_i (snr ||z|| / ||s_i||)^2, then affine

The step index `step`, the `seed` and the coefficient tables live in tensors, and the draw id is affine in the step
(`draw_offset + step * draw_stride`, fastsde.noise.DrawPlan), so a loop that calls these ops passes the same
arguments at every step: torch.compile traces one graph for all N steps (no Python int changes from step to step, so
no recompilation), and a CUDA graph records them once. Both are torch.library custom ops with fake kernels, so
they sit inside a compiled graph without a graph break.

Tables are float64 on x's device: `table` (3, N) = [a; b; c] for a noisy affine step or (2, N) = [a; b] for a
noise-free one; the Langevin `table` (2, N) = [alpha; score_scale] or (1, N) = [alpha]; the inpainting projection's
`proj_table` (2, N) = [data_a; data_c] with its draw at `proj_offset + step * draw_stride`.

Native backend (C++/CUDA: `fastsde::loop_affine_step_`, `loop_langevin_step_`, csrc/api/loop.cpp): the kernels read
the step index, the seed and the coefficients from memory when they run, and the Langevin step size is computed on
the device from the pass-1 norms into `scratch` and read by pass 2 from there -- nothing is read on the host, so a
CUDA graph captures them. `step_ops(backend, device)` hands a loop these ops directly (one dispatcher call per
update). The reference and Triton backends read `step` and `seed` on the host (free on the CPU; on CUDA a
synchronisation, so a Triton loop is compiled but not captured: docs/design.md, "What runs where").

Bytes per element are affine_step's / langevin_step's (fastsde/ops/step.py).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastsde.ops.checks import i64_bits
from fastsde.ops import dispatch

__all__ = ["loop_affine_", "loop_langevin_", "step_ops", "langevin_scratch", "seed_tensor", "check_capturable"]

_U64 = 1 << 64


_IMPLS: dict = {}


def resolve(op: str, backend: str, device: torch.device):
    """dispatch.resolve, remembered per (op, backend, device): a loop step pays one dict lookup. The key holds the
    availability probe, so replacing it (tests simulating a missing extension) resolves afresh."""
    key = (op, backend, device, dispatch.backend_available)
    hit = _IMPLS.get(key)
    if hit is None:
        hit = _IMPLS[key] = dispatch.resolve(op, backend, device)
    return hit


def _host_int(t: torch.Tensor) -> int:
    return int(t.item())


def _u64(value: int) -> int:
    return value % _U64


def _projection(step, mask, data, proj_table, proj_offset, draw_stride):
    if mask is None:
        return None, None, None, None, 0
    return (mask, data, proj_table[0, step : step + 1], proj_table[1, step : step + 1],
            proj_offset + step * draw_stride)


# Registered with the low-level torch.library API (a schema, one kernel for every device, a fake kernel): the
# custom_op decorator's Python wrappers cost ~200 us per call here, more than the update itself.
_LIB = torch.library.Library("fastsde", "FRAGMENT")
_LIB.define("loop_affine_(Tensor(a!) x, Tensor(b!) x_mean, Tensor score, Tensor table, Tensor step, Tensor seed, "
            "Tensor sample_ids, int draw_offset, int draw_stride, Tensor? noise, Tensor? mask, Tensor? data, "
            "Tensor? proj_table, int proj_offset, str backend) -> ()")
_LIB.define("loop_langevin_(Tensor(a!) x, Tensor(b!) x_mean, Tensor(c!) scratch, Tensor score, Tensor table, "
            "float snr, Tensor step, Tensor seed, Tensor sample_ids, int draw_offset, int draw_stride, Tensor? noise, "
            "Tensor? mask, Tensor? data, Tensor? proj_table, int proj_offset, str backend) -> ()")


def _native_available(backend: str, device: torch.device) -> bool:
    """Whether the loop runs on the native ops: backend "native", or "auto" wherever the native build runs (on CUDA
    too, where "auto" prefers Triton for the single ops: the native loop ops read their per-step values on the
    device, which a captured loop needs)."""
    if backend == "auto":
        return dispatch.backend_available("native", device)[0]
    return resolve("affine_step", backend, device)[0] == "native"


def _loop_affine_impl(x: torch.Tensor, x_mean: torch.Tensor, score: torch.Tensor, table: torch.Tensor,
                      step: torch.Tensor, seed: torch.Tensor, sample_ids: torch.Tensor, draw_offset: int,
                      draw_stride: int, noise: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                      data: Optional[torch.Tensor], proj_table: Optional[torch.Tensor], proj_offset: int,
                      backend: str) -> None:
    """x <- a_i x + b_i score + c_i z in place, x_mean <- a_i x + b_i score, i = step (module docstring)."""
    if _native_available(backend, x.device):
        torch.ops.fastsde.loop_affine_step_(x, x_mean, score, table, step, seed, sample_ids, draw_offset, draw_stride,
                                            noise, mask, data, proj_table, proj_offset)
        return
    i = _host_int(step)
    seed_u = _u64(_host_int(seed))
    _, impl = resolve("affine_step", backend, x.device)
    c = table[2, i : i + 1] if table.shape[0] == 3 else None
    mask, data, data_a, data_c, data_draw = _projection(i, mask, data, proj_table, proj_offset, draw_stride)
    impl(x, x, score, table[0, i : i + 1], table[1, i : i + 1], c, noise, seed_u, sample_ids,
         draw_offset + i * draw_stride, x_mean, mask, data, data_a, data_c, data_draw)


def _loop_affine_fake(x, x_mean, score, table, step, seed, sample_ids, draw_offset, draw_stride, noise, mask, data,
                      proj_table, proj_offset, backend):
    return None


def _loop_langevin_impl(x: torch.Tensor, x_mean: torch.Tensor, scratch: torch.Tensor, score: torch.Tensor,
                   table: torch.Tensor, snr: float,
                   step: torch.Tensor, seed: torch.Tensor, sample_ids: torch.Tensor, draw_offset: int,
                   draw_stride: int, noise: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                   data: Optional[torch.Tensor], proj_table: Optional[torch.Tensor], proj_offset: int,
                   backend: str) -> None:
    """One Langevin iteration with score_sde's batch-mean norms (fastsde.ops.langevin_step), step i = `step`:
    pass 1 reduces ||s|| and ||z|| per sample, the step size is computed from their batch means, pass 2 updates.
    scratch: langevin_scratch(x), float64 on x's device: the pass-2 coefficients [1, b, c] (and, native, the norms)."""
    if _native_available(backend, x.device):
        torch.ops.fastsde.loop_langevin_step_(x, x_mean, scratch, score, table, snr, step, seed, sample_ids,
                                              draw_offset, draw_stride, noise, mask, data, proj_table, proj_offset)
        return
    i = _host_int(step)
    seed_u = _u64(_host_int(seed))
    draw = draw_offset + i * draw_stride
    _, norms = resolve("step_sq_norms", backend, x.device)
    _, affine = resolve("affine_step", backend, x.device)
    alpha = float(table[0, i])
    scale = float(table[1, i]) if table.shape[0] == 2 else None
    mask, data, data_a, data_c, data_draw = _projection(i, mask, data, proj_table, proj_offset, draw_stride)
    means = norms(score, noise, seed_u, sample_ids, draw).sqrt_().mean(0)  # batch means of ||score||, ||z||
    gn, zn = (float(v) for v in means)
    if scale is not None:
        gn = gn * abs(scale)
    if gn == 0:  # a zero score: score_sde's formula divides by zero; keep its inf/nan rather than hide it
        step_size = math.inf if zn != 0 else math.nan
    else:
        step_size = (snr * zn / gn) ** 2 * 2 * alpha
    scratch[0] = 1.0
    scratch[1] = step_size if scale is None else step_size * scale
    scratch[2] = math.sqrt(2 * step_size) if step_size >= 0 else math.nan
    affine(x, x, score, scratch[0:1], scratch[1:2], scratch[2:3], noise, seed_u, sample_ids, draw, x_mean, mask,
           data, data_a, data_c, data_draw)


def _loop_langevin_fake(x, x_mean, scratch, score, table, snr, step, seed, sample_ids, draw_offset, draw_stride, noise,
                        mask, data, proj_table, proj_offset, backend):
    return None


for _name, _impl, _fake in (("loop_affine_", _loop_affine_impl, _loop_affine_fake),
                            ("loop_langevin_", _loop_langevin_impl, _loop_langevin_fake)):
    _LIB.impl(_name, _impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"fastsde::{_name}", _fake, lib=_LIB)

loop_affine_ = torch.ops.fastsde.loop_affine_.default
loop_langevin_ = torch.ops.fastsde.loop_langevin_.default


def seed_tensor(seed: int, device) -> torch.Tensor:
    """A uint64 seed as the 0-d int64 tensor (same bits) the loop ops read."""
    return torch.tensor(i64_bits(seed), dtype=torch.int64, device=device)


# Elements per chunk of the CUDA norm kernel (kNormChunk, csrc/cuda/step.cu): its partial sums live in the scratch.
_CUDA_NORM_CHUNK = 16384


def langevin_scratch(x: torch.Tensor) -> torch.Tensor:
    """The loop_langevin_ scratch for a state like x: float64 [1, b, c, per-sample norms (2B), CUDA partials]."""
    batch = x.shape[0]
    numel = x[0].numel() if batch else 0
    chunks = -(-numel // _CUDA_NORM_CHUNK) if x.is_cuda else 0
    return torch.zeros(3 + 2 * batch + 2 * batch * chunks, dtype=torch.float64, device=x.device)


def step_ops(backend: str, device):
    """(affine, langevin): the loop's two updates for `backend` on `device`, called with loop_affine_'s and
    loop_langevin_'s arguments minus `backend`. Native: the C++/CUDA ops themselves (no host read: capturable);
    otherwise the dispatching ops with the backend bound."""
    device = torch.device(device)
    if _native_available(backend, device):
        return torch.ops.fastsde.loop_affine_step_.default, torch.ops.fastsde.loop_langevin_step_.default

    def affine(*args):
        loop_affine_(*args, backend)

    def langevin(*args):
        loop_langevin_(*args, backend)

    return affine, langevin


def check_capturable(backend: str, device, *, loop: str = "pc") -> None:
    """Refuse, in one line and before any work, capture=True where the backend cannot be recorded in a CUDA graph on
    `device` (only CUDA devices record; elsewhere capture runs the compiled loop and anything goes).

    loop="pc": the PC loop records its updates, which must be the native loop ops (the reference and Triton loop
    ops read the step index and seed on the host). loop="solver": the solver program records its combines, which
    must not be the reference backend (it reads the sample ids on the host); native and Triton read the seed, ids
    and coefficients on the device."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if loop == "pc":
        if _native_available(backend, device):
            return
        name = "auto" if backend == "auto" else resolve("affine_step", backend, device)[0]
        why = "" if backend != "auto" else f" ({dispatch.backend_available('native', device)[1]})"
        raise ValueError(f"capture=True on {device} records the PC loop's native loop ops: expected backend='native' "
                         f"(or 'auto' with fastsde._C built with CUDA), got backend={name!r}{why}, whose loop reads "
                         f"the step index on the host; use compile=True instead")
    name = resolve("affine_combine_step", backend, device)[0]
    if name == "reference":
        raise ValueError(f"capture=True on {device} records the solver's combines: expected backend 'native', "
                         f"'triton' or 'auto' resolving to one of them, got backend={backend!r} running 'reference', "
                         f"which reads the sample ids on the host; use compile=True instead")
