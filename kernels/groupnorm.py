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

Backward (group_norm_backward_triton, the autograd formula of group_norm_triton; math in csrc/groupnorm.h,
"Backward"): one program per (sample, group) recomputes the statistics (_group_stats), sums du and du t per channel,
then writes dx and sums it per channel. Reads x three times and dy twice, writes dx once.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastsde.ops.groupnorm_backward import register_fused_backward

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
def _group_stats(x_base, EMB_ptr, n, C, HW, c0, s_xc, s_xhw, CPG: tl.constexpr, HAS_EMB: tl.constexpr,
                 COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """(mean, biased variance) of x + emb_add over one (sample, group), tile by tile (two passes: the mean, then
    the centered sum of squares around it). Shared by the forward (groups larger than one tile) and the backward."""
    count = CPG * HW
    rc = tl.arange(0, BLOCK_C)
    rhw = tl.arange(0, BLOCK_HW)
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
    return mean, var


@triton.jit
def _channel_coefs(W_ptr, B_ptr, SCALE_ptr, SHIFT_ptr, EMB_ptr, n, C, ch, cmask, mean, rstd, HAS_W: tl.constexpr,
                   HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_EMB: tl.constexpr,
                   COMPUTE: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel ch of sample n: d = e - mean, a = rstd w (1 + s), b = bias (1 + s) + shift (y = (x + d) a + b),
    and k = w (1 + s), the backward's."""
    a = tl.zeros((BLOCK_C,), dtype=COMPUTE) + rstd
    k = tl.zeros((BLOCK_C,), dtype=COMPUTE) + 1
    b = tl.zeros((BLOCK_C,), dtype=COMPUTE)
    dm = tl.zeros((BLOCK_C,), dtype=COMPUTE) - mean
    if HAS_EMB:
        dm += tl.load(EMB_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
    if HAS_W:
        w = tl.load(W_ptr + ch, mask=cmask, other=0).to(COMPUTE)
        a = a * w
        k = k * w
    if HAS_B:
        b = tl.load(B_ptr + ch, mask=cmask, other=0).to(COMPUTE)
    if HAS_SCALE:
        s1 = 1 + tl.load(SCALE_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
        a = a * s1
        k = k * s1
        b = b * s1
    if HAS_SHIFT:
        b += tl.load(SHIFT_ptr + n * C + ch, mask=cmask, other=0).to(COMPUTE)
    return dm, a, b, k


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
        mean, var = _group_stats(x_base, EMB_ptr, n, C, HW, c0, s_xc, s_xhw, CPG, HAS_EMB, COMPUTE, BLOCK_C, BLOCK_HW)
    rstd = (1.0 / tl.sqrt(var + eps)).to(COMPUTE)

    # pass 2: y = (x + (e_c - mean)) a_c + b_c, then the activation
    for cc in range(0, CPG, BLOCK_C):
        cmask = (cc + rc) < CPG
        ch = c0 + cc + rc
        dm, a, b, _ = _channel_coefs(W_ptr, B_ptr, SCALE_ptr, SHIFT_ptr, EMB_ptr, n, C, ch, cmask, mean, rstd, HAS_W,
                                     HAS_B, HAS_SCALE, HAS_SHIFT, HAS_EMB, COMPUTE, BLOCK_C)
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


@triton.jit
def _group_norm_bwd_kernel(
    X_ptr, DY_ptr, DX_ptr,  # (N, C, HW) each, with their own strides
    W_ptr, B_ptr, SCALE_ptr, SHIFT_ptr, EMB_ptr,  # as the forward's
    SUMS_ptr,  # (3, N, C) float64 contiguous: per (n, c) sum du, sum du xhat, sum dx
    N, C, HW,
    s_xn, s_xc, s_xhw, s_dyn, s_dyc, s_dyhw, s_dxn, s_dxc, s_dxhw,
    eps,
    GROUPS: tl.constexpr, CPG: tl.constexpr,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
    HAS_EMB: tl.constexpr, ACT: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    """One program per (sample, group) (csrc/groupnorm.h, "Backward"): the statistics recomputed, pass 1 the
    per-channel sums S1 = sum du, S2 = rstd sum du t (t = x + d) and the group's m1, m2, pass 2 dx = a du + p t + q
    and S3 = sum dx."""
    pid = tl.program_id(0)
    n = (pid // GROUPS).to(tl.int64)
    g = pid % GROUPS
    c0 = g * CPG
    x_base = X_ptr + n * s_xn
    count = CPG * HW
    rc = tl.arange(0, BLOCK_C)
    rhw = tl.arange(0, BLOCK_HW)
    mean, var = _group_stats(x_base, EMB_ptr, n, C, HW, c0, s_xc, s_xhw, CPG, HAS_EMB, COMPUTE, BLOCK_C, BLOCK_HW)
    rstd = (1.0 / tl.sqrt(var + eps)).to(COMPUTE)
    m1v = tl.zeros((BLOCK_C,), dtype=tl.float64)
    m2v = tl.zeros((BLOCK_C,), dtype=tl.float64)
    for p in tl.static_range(2):  # pass 0: S1, S2 (then m1, m2); pass 1: dx, S3
        if p == 1:
            m1 = tl.sum(m1v, axis=0) / count
            m2 = tl.sum(m2v, axis=0) / count
            pc = (-rstd.to(tl.float64) * rstd * m2).to(COMPUTE)
            qc = (-rstd.to(tl.float64) * m1).to(COMPUTE)
        for cc in range(0, CPG, BLOCK_C):
            cmask = (cc + rc) < CPG
            ch = c0 + cc + rc
            dm, a, b, k = _channel_coefs(W_ptr, B_ptr, SCALE_ptr, SHIFT_ptr, EMB_ptr, n, C, ch, cmask, mean, rstd,
                                         HAS_W, HAS_B, HAS_SCALE, HAS_SHIFT, HAS_EMB, COMPUTE, BLOCK_C)
            acc0 = tl.zeros((BLOCK_C,), dtype=tl.float64)
            acc1 = tl.zeros((BLOCK_C,), dtype=tl.float64)
            for h0 in range(0, HW, BLOCK_HW):
                mask = cmask[:, None] & ((h0 + rhw) < HW)[None, :]
                hw = (h0 + rhw).to(tl.int64)[None, :]
                c64 = ch.to(tl.int64)[:, None]
                t = tl.load(x_base + c64 * s_xc + hw * s_xhw, mask=mask, other=0).to(COMPUTE) + dm[:, None]
                du = tl.load(DY_ptr + n * s_dyn + c64 * s_dyc + hw * s_dyhw, mask=mask, other=0).to(COMPUTE)
                if ACT == 1:
                    u = t * a[:, None] + b[:, None]
                    sig = 1 / (1 + tl.exp(-u))
                    du = du * sig * (1 + u * (1 - sig))
                du = tl.where(mask, du, 0)
                if p == 0:
                    acc0 += tl.sum(du, axis=1).to(tl.float64)
                    acc1 += tl.sum(du * tl.where(mask, t, 0), axis=1).to(tl.float64)
                else:
                    v = a[:, None] * du + (pc * t + qc)
                    tl.store(DX_ptr + n * s_dxn + c64 * s_dxc + hw * s_dxhw, v.to(DX_ptr.dtype.element_ty), mask=mask)
                    acc0 += tl.sum(tl.where(mask, v, 0), axis=1).to(tl.float64)
            sums = SUMS_ptr + n * C + ch
            if p == 0:
                acc1 = acc1 * rstd
                tl.store(sums, acc0, mask=cmask)
                tl.store(sums + N * C, acc1, mask=cmask)
                m1v += tl.where(cmask, k.to(tl.float64) * acc0, 0)
                m2v += tl.where(cmask, k.to(tl.float64) * acc1, 0)
            else:
                tl.store(sums + 2 * N * C, acc0, mask=cmask)


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


def _bwd_config(cpg: int, hw: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_HW, num_warps) of the backward: the forward's tiles, half as long for float64 (two float64
    tiles, x and dy, and their temporaries spill registers on sm_90 at the forward's size)."""
    block_c, block_hw, _, num_warps = _config(cpg, hw)
    return block_c, max(1, block_hw // 2) if dtype == torch.float64 else block_hw, num_warps


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


@launcher_op("fastsde::group_norm_backward_triton", mutates_args={})
def _group_norm_backward_op(dy: torch.Tensor, x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor],
                            bias: Optional[torch.Tensor], eps: float, scale: Optional[torch.Tensor],
                            shift: Optional[torch.Tensor], emb_add: Optional[torch.Tensor],
                            act: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward of group_norm_triton (csrc/groupnorm.h, "Backward"): dx laid out like the forward's y and the
    per-(n, c) sums (3, N, C) float64. dy: any strides, x's shape and dtype."""
    N, C = x.shape[:2]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_memory_format(x))
    sums = torch.zeros((3, N, C), dtype=torch.float64, device=x.device)
    if x.numel() == 0 or tracing_interpreted(x):
        return dx, sums
    x3, dy3, dx3 = _as_nchw(x), _as_nchw(dy), dx.view(N, C, -1)
    hw = x3.shape[2]
    cpg = C // num_groups
    block_c, block_hw, num_warps = _bwd_config(cpg, hw, x.dtype)
    wrap_triton(_group_norm_bwd_kernel)[(N * num_groups,)](
        x3, dy3, dx3, x if weight is None else weight, x if bias is None else bias, x if scale is None else scale,
        x if shift is None else shift, x if emb_add is None else emb_add, sums,
        N, C, hw, *x3.stride(), *dy3.stride(), *dx3.stride(), eps,
        GROUPS=num_groups, CPG=cpg, HAS_W=weight is not None, HAS_B=bias is not None, HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None, HAS_EMB=emb_add is not None, ACT=act, COMPUTE=compute_dtype(x.dtype),
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=num_warps,
    )
    return dx, sums


def _group_norm_backward(dy, x, *args):
    with on_device(x):  # called by the autograd engine: launch on x's device
        return torch.ops.fastsde.group_norm_backward_triton(dy, x, *args)


register_fused_backward(_group_norm_op, _group_norm_backward, "group_norm (triton)")
