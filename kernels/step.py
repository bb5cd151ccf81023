"""Triton sampler-step kernels: the specification is fastsde/reference/step.py; noise is FSN1 (kernels/fsn1.py).

    affine_step:    x_mean = a x + b score;  x' = x_mean + c z          (a, b, c per sample, float64 on the host)
                    [+ projection: x' = x'(1-m) + (p data + q z2) m,  x_mean = x'(1-m) + p data m]
    step_sq_norms:  per sample [sum score^2, sum z^2]                  (the Langevin corrector's pass 1)

Bytes per element (float32; halve for fp16/bf16, double for float64): affine_step reads x, score and writes x':
12 B (+4 B x_mean_out, +4 B explicit noise, +8 B mask and data); step_sq_norms reads score: 4 B (+4 B explicit
noise). That is the floor: at 3.35 TB/s (H100 SXM) 12 B/elem is ~280 G elements/s. In-kernel noise is generated
in registers and never stored: per 4 elements one Philox4x32-10 (20 32x32 multiplies) + 2 log, 2 sqrt,
2 sin/cos on [-pi/4, pi/4] (libdevice), which the memory traffic is expected to hide (not measured: no GPU here).

Grid: (cdiv(M, BLOCK), samples) with M = elements per sample, so a program knows its sample n and its element
offsets j, hence the FSN1 counters (j >> 2, n, draw). Element blocks go on axis 0 because CUDA limits axes 1
and 2 to 65535 while M / BLOCK reaches 2^24 (M <= 2^34); batches past 65535 are launched in chunks.
Math runs in float32 (float64 for float64 tensors); fp16/bf16 are loaded and stored with float32 math. The score may
be narrower than the state (fp16/bf16 beside float32 x, float32 beside float64 x: a half-precision model's output,
fastsde.ops.checks.score_dtypes): it is loaded in its own dtype and converted in registers, in the same pass.
Offsets are int64. step_sq_norms writes one float64 partial (squares in float64) per program and sums them on the host
side in float64 in a fixed order: deterministic, no atomics.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import (FLOATS, MAX_GRID_Y, check_runnable, compute_dtype, contiguous, launcher_op, on_device, seed_arg,
                      seed_key, signed_u64, split_u64, tracing_interpreted)
from .fsn1 import fsn1_normals

__all__ = ["affine_step", "affine_combine_step", "step_sq_norms"]

_NO_NOISE, _EXPLICIT, _FSN1 = 0, 1, 2


@triton.jit(do_not_specialize=["draw_lo", "draw_hi", "data_draw_lo", "data_draw_hi"])
def _affine_step_fwd_kernel(
    OUT_ptr,  # (B, M) out: x' (may be X_ptr: each element is read before it is written, by the same program)
    X_ptr,  # (B, M) state x
    SCORE_ptr,  # (B, M) score, in x's dtype or a narrower one
    A_ptr,  # (B,) or (1,) float64: coefficient of x (stride a_stride: 1 or 0)
    B_ptr,  # (B,) or (1,) float64: coefficient of score
    C_ptr,  # (B,) or (1,) float64: coefficient of z (read when NOISE != 0)
    NOISE_ptr,  # (B, M) explicit noise z (read when NOISE == 1)
    IDS_ptr,  # (B,) int64 FSN1 sample ids (read when NOISE == 2 or PROJECT)
    SEED_ptr,  # () int64: the uint64 FSN1 seed's bits, read when the kernel runs (a recorded graph serves any seed)
    XMEAN_ptr,  # (B, M) out: x_mean (written when WRITE_MEAN)
    MASK_ptr,  # (B, M) projection mask m (read when PROJECT)
    DATA_ptr,  # (B, M) projection data (read when PROJECT)
    DA_ptr,  # (B,) or (1,) float64: coefficient of data (PROJECT)
    DC_ptr,  # (B,) or (1,) float64: coefficient of z2 (PROJECT)
    S2_ptr, S3_ptr,  # (B, M) further model outputs of a combine, in SCORE's dtype (read when NOUT >= 2, 3)
    B2_ptr, B3_ptr,  # (B,) or (1,) float64: their coefficients
    M,  # elements per sample
    n0,  # first sample of this launch (batches past 65535 launch in chunks)
    a_stride, b_stride, c_stride, da_stride, dc_stride, b2_stride, b3_stride,
    draw_lo, draw_hi, data_draw_lo, data_draw_hi,  # int32 bit patterns of the uint64 draws
    NOISE: tl.constexpr,  # 0: c is None; 1: explicit noise; 2: FSN1 at (seed, IDS[n], draw)
    WRITE_MEAN: tl.constexpr,
    PROJECT: tl.constexpr,
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    BLOCK: tl.constexpr,  # elements per program, a multiple of 4
    NOUT: tl.constexpr = 1,  # model outputs combined: x_mean = a x + b score (+ b2 s2 + b3 s3)
):
    pid = tl.program_id(0).to(tl.int64)
    n = n0 + tl.program_id(1).to(tl.int64)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    ok = j < M
    offs = n * M + j
    first_block = (pid * (BLOCK // 4)).to(tl.uint32)  # FSN1 counter word 0 of element j is j >> 2

    x = tl.load(X_ptr + offs, mask=ok, other=0).to(COMPUTE)
    s = tl.load(SCORE_ptr + offs, mask=ok, other=0).to(COMPUTE)
    a = tl.load(A_ptr + n * a_stride).to(COMPUTE)
    b = tl.load(B_ptr + n * b_stride).to(COMPUTE)
    x_mean = a * x + b * s
    if NOUT >= 2:
        x_mean += tl.load(B2_ptr + n * b2_stride).to(COMPUTE) * tl.load(S2_ptr + offs, mask=ok, other=0).to(COMPUTE)
    if NOUT >= 3:
        x_mean += tl.load(B3_ptr + n * b3_stride).to(COMPUTE) * tl.load(S3_ptr + offs, mask=ok, other=0).to(COMPUTE)
    x_new = x_mean
    if NOISE != 0 or PROJECT:
        sample = tl.load(IDS_ptr + n).to(tl.uint32)
        key_lo, key_hi = seed_key(SEED_ptr)
    if NOISE != 0:
        c = tl.load(C_ptr + n * c_stride).to(COMPUTE)
        if NOISE == 1:
            z = tl.load(NOISE_ptr + offs, mask=ok, other=0).to(COMPUTE)
        else:
            z = fsn1_normals(first_block, sample, draw_lo.to(tl.uint32, bitcast=True),
                             draw_hi.to(tl.uint32, bitcast=True), key_lo, key_hi, BLOCK, COMPUTE)
        x_new = x_mean + c * z
    if PROJECT:
        m = tl.load(MASK_ptr + offs, mask=ok, other=0).to(COMPUTE)
        known = tl.load(DA_ptr + n * da_stride).to(COMPUTE) * tl.load(DATA_ptr + offs, mask=ok, other=0).to(COMPUTE)
        z2 = fsn1_normals(first_block, sample, data_draw_lo.to(tl.uint32, bitcast=True),
                          data_draw_hi.to(tl.uint32, bitcast=True), key_lo, key_hi, BLOCK, COMPUTE)
        dc = tl.load(DC_ptr + n * dc_stride).to(COMPUTE)
        x_new = x_new * (1 - m) + (known + dc * z2) * m
        x_mean = x_new * (1 - m) + known * m
    if WRITE_MEAN:
        tl.store(XMEAN_ptr + offs, x_mean.to(XMEAN_ptr.dtype.element_ty), mask=ok)
    tl.store(OUT_ptr + offs, x_new.to(OUT_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["draw_lo", "draw_hi"])
def _step_sq_norms_kernel(
    SCORE_ptr,  # (B, M) score, in the state's dtype or a narrower one
    NOISE_ptr,  # (B, M) explicit noise z, in the state's dtype (read when NOISE == 1)
    IDS_ptr,  # (B,) int64 FSN1 sample ids (read when NOISE == 2)
    SEED_ptr,  # () int64: the uint64 FSN1 seed's bits (read when NOISE == 2)
    PART_ptr,  # (B, P, 2) float64 out: per-program [sum score^2, sum z^2], P = cdiv(M, BLOCK)
    M,  # elements per sample
    P,  # programs per sample
    n0,  # first sample of this launch
    draw_lo, draw_hi,  # int32 bit patterns of the uint64 draw
    NOISE: tl.constexpr,  # 1: explicit noise; 2: FSN1 at (seed, IDS[n], draw)
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    BLOCK: tl.constexpr,  # elements per program, a multiple of 4
):
    pid = tl.program_id(0).to(tl.int64)
    n = n0 + tl.program_id(1).to(tl.int64)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    ok = j < M
    offs = n * M + j
    s = tl.load(SCORE_ptr + offs, mask=ok, other=0).to(COMPUTE)
    if NOISE == 1:
        z = tl.load(NOISE_ptr + offs, mask=ok, other=0).to(COMPUTE)
    else:
        sample = tl.load(IDS_ptr + n).to(tl.uint32)
        key_lo, key_hi = seed_key(SEED_ptr)
        z = fsn1_normals((pid * (BLOCK // 4)).to(tl.uint32), sample, draw_lo.to(tl.uint32, bitcast=True),
                         draw_hi.to(tl.uint32, bitcast=True), key_lo, key_hi, BLOCK, COMPUTE)
        z = tl.where(ok, z, 0)
    part = PART_ptr + (n * P + pid) * 2
    # squares in float64, as the reference and native: a float32 square overflows for |score| > 1.8e19
    s, z = s.to(tl.float64), z.to(tl.float64)
    tl.store(part, tl.sum(s * s, axis=0))
    tl.store(part + 1, tl.sum(z * z, axis=0))


# ----------------------------------------------------------------------------------------------------------------
# Launchers. Arguments follow fastsde/ops/step.py's backend convention (validated there): out, x, score, a, b, c
# (float64 (B,)|(1,)|None), noise|None, seed (uint64 int, or its int64 bits in a 0-d int64 tensor on x's device:
# seed_arg), sample_ids (int64 (B,)), draw (uint64 int),
# x_mean_out|None, mask|None, data|None, data_a|None, data_c|None, data_draw (uint64 int).

_BLOCK = 1024  # 4 elements, i.e. one Philox call (per draw), per thread at 8 warps
_NUM_WARPS = 8  # at 4 warps the fp32 projection variant (two draws per element) spills 8 B on sm_80/sm_90
_MAX_GRID_Y = MAX_GRID_Y  # a module global the launchers read at each call, so a test can shrink it


def _check_tensor(name: str, t: Optional[torch.Tensor], x: torch.Tensor) -> None:
    if t is not None and (t.shape != x.shape or t.dtype != x.dtype or t.device != x.device):
        raise ValueError(f"{name} must match x: expected {tuple(x.shape)} {x.dtype} on {x.device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


# The score dtypes beside each state dtype (the launcher's copy of fastsde.ops.checks.score_dtypes, like the C++
# side's step_dtypes_supported): a half-precision model's output beside a float32 state, float32 beside float64.
_SCORE_DTYPES = {torch.float32: (torch.float32, torch.float16, torch.bfloat16),
                 torch.float64: (torch.float64, torch.float32)}


def _check_score(score: torch.Tensor, x: torch.Tensor, x_name: str = "x") -> None:
    allowed = _SCORE_DTYPES.get(x.dtype, (x.dtype,))
    if score.shape != x.shape or score.dtype not in allowed or score.device != x.device:
        raise ValueError(f"score must match {x_name}: expected {tuple(x.shape)} "
                         f"{' or '.join(str(d) for d in allowed)} on {x.device}, "
                         f"got {tuple(score.shape)} {score.dtype} on {score.device}")


def _check_coef(name: str, t: Optional[torch.Tensor], x: torch.Tensor) -> None:
    if t is not None and (t.dtype != torch.float64 or t.dim() != 1 or t.shape[0] not in (1, x.shape[0])
                          or t.device != x.device):
        raise ValueError(f"{name} must be float64 of shape ({x.shape[0]},) or (1,) on {x.device}, "
                         f"got {t.dtype} {tuple(t.shape)} on {t.device}")


def _stride(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None or t.shape[0] == 1 else 1


@launcher_op("fastsde::affine_step_triton", mutates_args={"out", "x_mean_out"})
def _affine_step_op(out: torch.Tensor, x: torch.Tensor, score: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    c: Optional[torch.Tensor], noise: Optional[torch.Tensor], seed: torch.Tensor,
                    sample_ids: torch.Tensor, draw: int, x_mean_out: Optional[torch.Tensor],
                    mask: Optional[torch.Tensor], data: Optional[torch.Tensor], data_a: Optional[torch.Tensor],
                    data_c: Optional[torch.Tensor], data_draw: int) -> None:
    """affine_step on contiguous tensors; seed (0-d tensor), draw, data_draw carry uint64 bits as int64."""
    batch = x.shape[0]
    numel = x.numel() // batch if batch else 0
    if numel == 0 or tracing_interpreted(x):
        return
    project = mask is not None
    mode = _NO_NOISE if c is None else (_EXPLICIT if noise is not None else _FSN1)
    draw_lo, draw_hi = split_u64(draw)
    ddraw_lo, ddraw_hi = split_u64(data_draw)
    for n0 in range(0, batch, _MAX_GRID_Y):
        grid = (triton.cdiv(numel, _BLOCK), min(batch - n0, _MAX_GRID_Y))
        wrap_triton(_affine_step_fwd_kernel)[grid](
            out, x, score, a, b, a if c is None else c, x if noise is None else noise, sample_ids, seed,
            x if x_mean_out is None else x_mean_out, x if mask is None else mask, x if data is None else data,
            a if data_a is None else data_a, a if data_c is None else data_c, score, score, b, b,
            numel, n0, _stride(a), _stride(b), _stride(c), _stride(data_a), _stride(data_c), 0, 0,
            draw_lo, draw_hi, ddraw_lo, ddraw_hi,
            NOISE=mode, WRITE_MEAN=x_mean_out is not None, PROJECT=project, COMPUTE=compute_dtype(x.dtype),
            BLOCK=_BLOCK, num_warps=_NUM_WARPS,
        )


def affine_step(out, x, score, a, b, c, noise, seed, sample_ids, draw, x_mean_out, mask, data, data_a, data_c,
                data_draw) -> torch.Tensor:
    """x_mean = a x + b score; out = x_mean + c z [+ projection]: fastsde.reference.step.affine_step on Triton.

    out, x, noise, x_mean_out, mask, data: (B, ...) of one float dtype and device (out may be x); score: the same
    shape and device, x's dtype or a narrower one (_SCORE_DTYPES);
    a, b, c, data_a, data_c: float64 (B,) or (1,) (c None: no noise; data_a/data_c with mask and data);
    noise None: FSN1 at (seed, sample_ids (B,) int64, draw); the projection's z2 at (seed, sample_ids, data_draw).
    Non-contiguous tensors are copied. Returns out.
    """
    check_runnable(x)
    if x.dtype not in FLOATS:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    for name, t in (("out", out), ("noise", noise), ("x_mean_out", x_mean_out), ("mask", mask), ("data", data)):
        _check_tensor(name, t, x)
    _check_score(score, x)
    for name, t in (("a", a), ("b", b), ("c", c), ("data_a", data_a), ("data_c", data_c)):
        _check_coef(name, t, x)
    if (mask is None) != (data is None) or (mask is not None and (data_a is None or data_c is None)):
        raise ValueError("the projection needs mask, data, data_a and data_c together")
    if x.numel() == 0:
        return out
    if sample_ids is None:
        sample_ids = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    mean_target = x_mean_out
    if x_mean_out is not None and not x_mean_out.is_contiguous():
        mean_target = torch.empty_like(x_mean_out, memory_format=torch.contiguous_format)
    with on_device(x):
        torch.ops.fastsde.affine_step_triton(
            target, x.contiguous(), score.contiguous(), a, b, c, contiguous(noise), seed_arg(seed, x.device),
            sample_ids.to(torch.int64).contiguous(), signed_u64(draw), mean_target, contiguous(mask),
            contiguous(data), data_a, data_c, signed_u64(data_draw))
        if target is not out:
            out.copy_(target)
        if mean_target is not x_mean_out:
            x_mean_out.copy_(mean_target)
    return out


@launcher_op("fastsde::affine_combine_triton", mutates_args={"out"})
def _affine_combine_op(out: torch.Tensor, x: torch.Tensor, outputs: list[torch.Tensor], a: torch.Tensor,
                       b: list[torch.Tensor], c: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                       seed: torch.Tensor, sample_ids: torch.Tensor, draw: int) -> None:
    """affine_combine_step on contiguous tensors (1 to 3 outputs of one dtype); seed (0-d tensor), draw: uint64 bits
    as int64."""
    batch = x.shape[0]
    numel = x.numel() // batch if batch else 0
    if numel == 0 or tracing_interpreted(x):
        return
    s1, s2, s3 = (outputs + [outputs[0]] * 2)[:3]
    b1, b2, b3 = (b + [b[0]] * 2)[:3]
    draw_lo, draw_hi = split_u64(draw)
    mode = _NO_NOISE if c is None else (_EXPLICIT if noise is not None else _FSN1)
    for n0 in range(0, batch, _MAX_GRID_Y):
        grid = (triton.cdiv(numel, _BLOCK), min(batch - n0, _MAX_GRID_Y))
        wrap_triton(_affine_step_fwd_kernel)[grid](
            out, x, s1, a, b1, a if c is None else c, x if noise is None else noise, sample_ids, seed, x, x, x,
            a, a, s2, s3, b2, b3, numel, n0, _stride(a), _stride(b1), _stride(c), 0, 0, _stride(b2), _stride(b3),
            draw_lo, draw_hi, 0, 0,
            NOISE=mode, WRITE_MEAN=False, PROJECT=False, COMPUTE=compute_dtype(x.dtype), BLOCK=_BLOCK,
            NOUT=len(outputs), num_warps=_NUM_WARPS,
        )


def affine_combine_step(out, x, outputs, a, b, c, noise, seed, sample_ids, draw) -> torch.Tensor:
    """out = a x + sum_k b[k] outputs[k] + c z in one pass: fastsde.reference.step.affine_combine_step on Triton.

    x, out, noise: (B, ...) of one float dtype and device (out may be x, never an output); outputs: 1 to 3 tensors
    like x in x's dtype or a narrower one, all of one dtype; a, c, b[k]: float64 (B,) or (1,) (c None: no noise);
    noise None: FSN1 at (seed, sample_ids, draw). Non-contiguous tensors are copied. Returns out.
    """
    check_runnable(x)
    if x.dtype not in FLOATS:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if not 1 <= len(outputs) <= 3 or len(b) != len(outputs):
        raise ValueError(f"outputs must hold 1 to 3 tensors with one coefficient each, got {len(outputs)} outputs "
                         f"and {len(b)} coefficients")
    for name, t in (("out", out), ("noise", noise)):
        _check_tensor(name, t, x)
    for k, o in enumerate(outputs):
        _check_score(o, x)
        if o.dtype != outputs[0].dtype:
            raise ValueError(f"outputs[{k}] must have the dtype of outputs[0] ({outputs[0].dtype}), got {o.dtype}")
    for name, t in (("a", a), ("c", c), *((f"b[{k}]", v) for k, v in enumerate(b))):
        _check_coef(name, t, x)
    if x.numel() == 0:
        return out
    if sample_ids is None:
        sample_ids = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    with on_device(x):
        torch.ops.fastsde.affine_combine_triton(
            target, x.contiguous(), [o.contiguous() for o in outputs], a, list(b), c, contiguous(noise),
            seed_arg(seed, x.device), sample_ids.to(torch.int64).contiguous(), signed_u64(draw))
        if target is not out:
            out.copy_(target)
    return out


@launcher_op("fastsde::step_sq_norms_triton", mutates_args={})
def _step_sq_norms_op(score: torch.Tensor, noise: Optional[torch.Tensor], seed: torch.Tensor,
                      sample_ids: torch.Tensor, draw: int) -> torch.Tensor:
    """step_sq_norms on contiguous tensors; seed (0-d tensor), draw carry uint64 bits as int64. Returns (B, 2)
    float64."""
    batch = score.shape[0]
    numel = score.numel() // batch if batch else 0
    programs = triton.cdiv(numel, _BLOCK)
    state = score if noise is None else noise  # the state's dtype sets the compute type (the score may be narrower)
    partial = torch.empty(batch, programs, 2, dtype=torch.float64, device=score.device)
    draw_lo, draw_hi = split_u64(draw)
    for n0 in range(0, 0 if numel == 0 or tracing_interpreted(score) else batch, _MAX_GRID_Y):
        grid = (programs, min(batch - n0, _MAX_GRID_Y))
        wrap_triton(_step_sq_norms_kernel)[grid](
            score, score if noise is None else noise, sample_ids, seed, partial, numel, programs, n0,
            draw_lo, draw_hi,
            NOISE=_EXPLICIT if noise is not None else _FSN1, COMPUTE=compute_dtype(state.dtype), BLOCK=_BLOCK,
            num_warps=_NUM_WARPS,
        )
    return partial.sum(dim=1)


def step_sq_norms(score, noise, seed, sample_ids, draw) -> torch.Tensor:
    """(B, 2) float64 [sum score^2, sum z^2] per sample: fastsde.reference.step.step_sq_norms on Triton.

    score, noise: (B, ...) (noise None: FSN1 at (seed, sample_ids (B,) int64, draw)); explicit noise is in the
    state's dtype, score in it or a narrower one. Partial sums per BLOCK elements in float32 (float64 for a float64
    state), summed across programs in float64.
    """
    check_runnable(score)
    if score.dtype not in FLOATS:
        raise TypeError(f"score must be float32, float64, float16 or bfloat16, got {score.dtype}")
    if noise is not None:
        _check_score(score, noise, "noise")
    if score.numel() == 0:
        return torch.zeros(score.shape[0], 2, dtype=torch.float64, device=score.device)
    if sample_ids is None:
        sample_ids = torch.zeros(score.shape[0], dtype=torch.int64, device=score.device)
    with on_device(score):
        return torch.ops.fastsde.step_sq_norms_triton(
            score.contiguous(), contiguous(noise), seed_arg(seed, score.device),
            sample_ids.to(torch.int64).contiguous(), signed_u64(draw))
