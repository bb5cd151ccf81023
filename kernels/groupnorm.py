"""Triton GroupNorm family: the specification is fastsde/reference/groupnorm.py.

    y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift)        act: none or SiLU

Bytes per element (float32; halve for fp16/bf16): pass 1 reads x for the statistics, pass 2 reads x and writes y:
12 B/elem, plus per-(n, c) vectors (negligible). When a (sample, group) fits one tile (<= _TILE elements) the
group is loaded once and stays in registers (8 B/elem); otherwise the statistics passes re-read it, from L2 on
a GPU (a 32-channel group of 64x64 float32 is 512 KiB per program at most in score_sde's U-Nets).

One program per (sample, group). The group is a (C/G, HW) matrix addressed by runtime strides, so NCHW,
channels-last and other strided layouts run without a copy: element (n, c, hw) is at n s_n + c s_c + hw s_hw.
Statistics in float32 (float64 for float64 tensors): mean from per-lane partial sums, then the centered sum of
squares around that mean (two passes, never E[x^2] - E[x]^2), biased variance, rstd = 1 / sqrt(var + eps).
The per-channel terms fold into y = (x + (e_c - mean)) a_c + b_c with a_c = rstd w_c (1 + s_c) and
b_c = bias_c (1 + s_c) + shift_c; SiLU is y / (1 + exp(-y)).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import (FLOATS, check_runnable, compute_dtype, contiguous, launcher_op, on_device,
                      tracing_interpreted)

__all__ = ["group_norm"]

_ACT_NONE, _ACT_SILU = 0, 1


# Inputs near the float32 range overflow the float32 sums (|x| count > 3.4e38) or sums of squares (|x - mean| >=
# ~1e19): each sum is also taken over the values times TINY = 2^-100 (exact) and that one is used, unscaled in
# float64, when the plain sum is not finite (csrc/groupnorm.h does the same on the CPU and CUDA).
TINY = tl.constexpr(7.888609052210118e-31)  # 2^-100
TINY_INV = tl.constexpr(1.2676506002282294e30)  # 2^100


@triton.jit
def _unscale(total, total_s, SQUARED: tl.constexpr):
    """float64: `total` when finite, else the scaled sum `total_s` times 2^100 (2^200 for squares)."""
    t = total.to(tl.float64)
    s = total_s.to(tl.float64) * TINY_INV
    if SQUARED:
        s = s * TINY_INV
    return tl.where(t - t == 0, t, s)


@triton.jit
def _group_norm_fwd_kernel(
    X_ptr,  # (N, C, HW) input, strides (s_xn, s_xc, s_xhw)
    Y_ptr,  # (N, C, HW) output, strides (s_yn, s_yc, s_yhw)
    W_ptr,  # (C,) weight (read when HAS_W)
    B_ptr,  # (C,) bias (read when HAS_B)
    SCALE_ptr,  # (N, C) contiguous: scale (read when HAS_SCALE)
    SHIFT_ptr,  # (N, C) contiguous: shift (read when HAS_SHIFT)
    EMB_ptr,  # (N, C) contiguous: emb_add, added before the statistics (read when HAS_EMB)
    C, HW,  # channels, spatial positions
    s_xn, s_xc, s_xhw, s_yn, s_yc, s_yhw,
    eps,
    GROUPS: tl.constexpr,
    CPG: tl.constexpr,  # channels per group
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_EMB: tl.constexpr,
    ACT: tl.constexpr,  # 0: none, 1: SiLU
    COMPUTE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    BLOCK_C: tl.constexpr,  # channels per tile (power of 2)
    BLOCK_HW: tl.constexpr,  # spatial positions per tile (power of 2)
    ONE_TILE: tl.constexpr,  # the whole group fits one tile: load once, keep it in registers
):
    pid = tl.program_id(0)
    n = (pid // GROUPS).to(tl.int64)
    g = pid % GROUPS
    c0 = g * CPG
    x_base = X_ptr + n * s_xn
    y_base = Y_ptr + n * s_yn
    count = CPG * HW
    rc = tl.arange(0, BLOCK_C)
    rhw = tl.arange(0, BLOCK_HW)

    if ONE_TILE:
        cmask = rc < CPG
        ch = c0 + rc
        mask = cmask[:, None] & (rhw < HW)[None, :]
        offs = ch.to(tl.int64)[:, None] * s_xc + rhw.to(tl.int64)[None, :] * s_xhw
        v = tl.load(x_base + offs, mask=mask, other=0).to(COMPUTE)
        if HAS_EMB:
            v = v + tl.load(EMB_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)[:, None]
        v = tl.where(mask, v, 0)
        total = tl.sum(tl.sum(v, axis=1), axis=0)
        total_s = tl.sum(tl.sum(v * TINY, axis=1), axis=0)
        mean = (_unscale(total, total_s, False) / count).to(COMPUTE)
        d = tl.where(mask, v - mean, 0)
        sq = tl.sum(tl.sum(d * d, axis=1), axis=0)
        sq_s = tl.sum(tl.sum((d * TINY) * (d * TINY), axis=1), axis=0)
        var = _unscale(sq, sq_s, True) / count
    else:
        # pass 1a: mean, from tile-shaped partial sums
        acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=COMPUTE)
        acc_s = tl.zeros((BLOCK_C, BLOCK_HW), dtype=COMPUTE)
        for cc in range(0, CPG, BLOCK_C):
            cmask = (cc + rc) < CPG
            ch = c0 + cc + rc
            if HAS_EMB:
                e = tl.load(EMB_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
            for h0 in range(0, HW, BLOCK_HW):
                mask = cmask[:, None] & ((h0 + rhw) < HW)[None, :]
                offs = ch.to(tl.int64)[:, None] * s_xc + (h0 + rhw).to(tl.int64)[None, :] * s_xhw
                v = tl.load(x_base + offs, mask=mask, other=0).to(COMPUTE)
                if HAS_EMB:
                    v = tl.where(mask, v + e[:, None], 0)
                acc += v
                acc_s += v * TINY
        mean = (_unscale(tl.sum(tl.sum(acc, axis=1), axis=0), tl.sum(tl.sum(acc_s, axis=1), axis=0), False)
                / count).to(COMPUTE)
        # pass 1b: centered sum of squares around that mean
        acc = tl.zeros((BLOCK_C, BLOCK_HW), dtype=COMPUTE)
        acc_s = tl.zeros((BLOCK_C, BLOCK_HW), dtype=COMPUTE)
        for cc in range(0, CPG, BLOCK_C):
            cmask = (cc + rc) < CPG
            ch = c0 + cc + rc
            dm = tl.zeros((BLOCK_C,), dtype=COMPUTE) - mean
            if HAS_EMB:
                dm += tl.load(EMB_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
            for h0 in range(0, HW, BLOCK_HW):
                mask = cmask[:, None] & ((h0 + rhw) < HW)[None, :]
                offs = ch.to(tl.int64)[:, None] * s_xc + (h0 + rhw).to(tl.int64)[None, :] * s_xhw
                v = tl.load(x_base + offs, mask=mask, other=0).to(COMPUTE)
                d = tl.where(mask, v + dm[:, None], 0)
                acc += d * d
                acc_s += (d * TINY) * (d * TINY)
        var = _unscale(tl.sum(tl.sum(acc, axis=1), axis=0), tl.sum(tl.sum(acc_s, axis=1), axis=0), True) / count
    rstd = (1.0 / tl.sqrt(var + eps)).to(COMPUTE)

    # pass 2: y = (x + (e_c - mean)) a_c + b_c, then the activation
    for cc in range(0, CPG, BLOCK_C):
        cmask = (cc + rc) < CPG
        ch = c0 + cc + rc
        a = tl.zeros((BLOCK_C,), dtype=COMPUTE) + rstd
        b = tl.zeros((BLOCK_C,), dtype=COMPUTE)
        dm = tl.zeros((BLOCK_C,), dtype=COMPUTE) - mean
        if HAS_EMB:
            dm += tl.load(EMB_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
        if HAS_W:
            a = a * tl.load(W_ptr + ch, mask=cmask, other=0).to(COMPUTE)
        if HAS_B:
            b = tl.load(B_ptr + ch, mask=cmask, other=0).to(COMPUTE)
        if HAS_SCALE:
            s1 = 1 + tl.load(SCALE_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
            a = a * s1
            b = b * s1
        if HAS_SHIFT:
            b += tl.load(SHIFT_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
        for h0 in range(0, HW, BLOCK_HW):
            mask = cmask[:, None] & ((h0 + rhw) < HW)[None, :]
            hw = (h0 + rhw).to(tl.int64)[None, :]
            if ONE_TILE:
                t = d  # noqa: F821 -- defined above: v - mean, with emb_add already in v
            else:
                offs = ch.to(tl.int64)[:, None] * s_xc + hw * s_xhw
                t = tl.load(x_base + offs, mask=mask, other=0).to(COMPUTE) + dm[:, None]
            y = t * a[:, None] + b[:, None]
            if ACT == 1:
                y = y / (1 + tl.exp(-y))
            tl.store(y_base + ch.to(tl.int64)[:, None] * s_yc + hw * s_yhw, y.to(Y_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------------
# Launcher. Arguments follow fastsde/ops/groupnorm.py's backend convention (validated there).

_TILE = 4096  # elements per tile: 16 KiB of float32, 16 (8) values per thread at 8 (16) warps
_MAX_BLOCK_C = 16


def _config(cpg: int, hw: int) -> tuple[int, int, bool, int]:
    """(BLOCK_C, BLOCK_HW, ONE_TILE, num_warps) for groups of cpg channels x hw positions."""
    block_c = min(triton.next_power_of_2(cpg), _MAX_BLOCK_C)
    block_hw = max(1, min(triton.next_power_of_2(hw), _TILE // block_c))
    one_tile = block_c >= cpg and block_hw >= hw
    tile = block_c * block_hw
    num_warps = 8 if tile >= 2048 else 4 if tile >= 512 else 2 if tile >= 128 else 1
    return block_c, block_hw, one_tile, num_warps


def _memory_format(x: torch.Tensor):
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _as_nchw(x: torch.Tensor) -> torch.Tensor:
    """x as an (N, C, HW) view (a copy only when its spatial dims cannot be flattened with one stride)."""
    try:
        return x.view(x.shape[0], x.shape[1], -1)
    except RuntimeError:
        return x.contiguous().view(x.shape[0], x.shape[1], -1)


@launcher_op("fastsde::group_norm_triton", mutates_args={})
def _group_norm_op(x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   eps: float, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                   emb_add: Optional[torch.Tensor], act: int) -> torch.Tensor:
    """group_norm on any strided x; vectors contiguous; act 0 none, 1 SiLU. Returns y laid out like the reference."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    if x.numel() == 0 or tracing_interpreted(x):
        return y
    N, C = x.shape[:2]
    x3, y3 = _as_nchw(x), y.view(N, C, -1)
    hw = x3.shape[2]
    cpg = C // num_groups
    block_c, block_hw, one_tile, num_warps = _config(cpg, hw)
    wrap_triton(_group_norm_fwd_kernel)[(N * num_groups,)](
        x3, y3, x if weight is None else weight, x if bias is None else bias, x if scale is None else scale,
        x if shift is None else shift, x if emb_add is None else emb_add,
        C, hw, *x3.stride(), *y3.stride(), eps,
        GROUPS=num_groups, CPG=cpg, HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None, HAS_EMB=emb_add is not None, ACT=act,
        COMPUTE=compute_dtype(x.dtype),
        BLOCK_C=block_c, BLOCK_HW=block_hw, ONE_TILE=one_tile, num_warps=num_warps,
    )
    return y


def group_norm(x, num_groups, weight, bias, eps, scale, shift, emb_add, act) -> torch.Tensor:
    """fastsde.reference.groupnorm.group_norm on Triton. x: (N, C, *spatial) any layout, float32/64/16, bfloat16;
    weight, bias: (C,) or None; scale, shift, emb_add: (N, C) or None; act: None or "silu". Returns y like x."""
    check_runnable(x)
    if x.dtype not in FLOATS:
        raise TypeError(f"x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ValueError(f"x must be (N, C, *spatial) with num_groups ({num_groups}) dividing C, got {tuple(x.shape)}")
    if act not in (None, "silu"):
        raise ValueError(f"act must be None or 'silu', got {act!r}")
    with on_device(x):  # Triton launches on the current device: make it x's
        return torch.ops.fastsde.group_norm_triton(x, num_groups, contiguous(weight), contiguous(bias), float(eps),
                                                   contiguous(scale), contiguous(shift), contiguous(emb_add),
                                                   _ACT_SILU if act == "silu" else 0)
