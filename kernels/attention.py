"""Triton flash attention and the attention-block launcher: the specification is fastsde/reference/attention.py.

    attention(q, k, v) = softmax(q k^T / sqrt(d)) v       q: (Z, Lq, d), k, v: (Z, Lk, d), any strides
    attn_block(x, ...) = res (x + W_out attention(GN(x) -> W_qkv) + b_out),  res = 1/sqrt(2) with skip_rescale

Layout: the kernels take q, k, v, out (and the gradients) as (Z, L, d) with arbitrary strides, so the block never
permutes. The QKV projection (cuBLAS) writes (B, 3C, L) channel-major with the weight rows ordered (head, q|k|v, d);
each of q, k, v is then a (B heads, L, d) view with strides (3 d L, 1, L), and the kernel writes the output straight
into the (B, C, L) channel-major buffer the output projection reads.

Bytes vs flops: one program reads its query block once and every key/value block once (2 Lk d elements per
BLOCK_M queries) and writes its output once; the L x L scores never leave registers. Work is 4 Lq Lk d flops per
(batch, head): at 256 tokens x d = 256 (CIFAR-10's 16x16 block) that is ~64 flops per byte in fp16, compute-bound.
Softmax is online (running max m, running sum l, rescale by exp2(m_old - m_new)), accumulated in float32;
fp16/bf16 probabilities are rounded to the input dtype for the P V product as flash-attention does. float32 inputs
use TF32 dots when torch.backends.cuda.matmul.allow_tf32 is set, IEEE float32 otherwise.

Autograd (FlashAttention-2's backward): `attention` and the block differentiate. When autograd records, the forward
runs as fastsde::attention_lse_triton, which also writes the per-row log-sum-exp of the scaled scores,
LSE_i = log sum_j exp(q_i.k_j / sqrt(d)), float32 (Z, Lq), in natural-log units (the kernel's base-2 value times
ln 2); the inference op fastsde::attention_triton compiles the store out (WRITE_LSE=False) and pays nothing for it.
The backward (fastsde::attention_backward_triton) never stores P: with P_ij = exp(s_ij - LSE_i), s = q k^T / sqrt(d),
    delta_i = sum_d dO_id O_id  (- dLSE_i when the LSE itself has a gradient)
    dV_j = sum_i P_ij dO_i,   dS_ij = P_ij (dO_i.v_j - delta_i),
    dK_j = sum_i dS_ij q_i / sqrt(d),   dQ_i = sum_j dS_ij k_j / sqrt(d)
in three kernels: a preprocess writes delta (Z, Lq) float32; one program per key block keeps its k, v and its dK, dV
accumulators and loops over the query blocks; one program per query block keeps q, dO and its dQ accumulator and
loops over the key blocks. Recomputing S and dP in the second kernel makes 7 GEMMs per (query block, key block)
where one kernel adding dQ atomically makes 5, but needs no atomics, no zeroed float32 dQ buffer and no cast pass.
Every product accumulates in float32; P and dS are rounded to the input dtype for their GEMMs as in the forward.
Double backward is refused. Tiles: _bwd_config. bfloat16 runs only compiled: the Triton 3.7 interpreter's tl.dot
mishandles bf16 operands (the forward's too), so the CPU tests check float32 and float16.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fastsde.ops.checks import check_no_autograd, records_autograd

from ._common import MAX_GRID_Y, check_runnable, launcher_op, on_device, tracing_interpreted

__all__ = ["attention", "attention_with_lse", "attn_block"]

_LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd_kernel(
    Q_ptr,  # (Z, Lq, D) queries, strides (sqz, sql, sqd)
    K_ptr,  # (Z, Lk, D) keys, strides (skz, skl, skd)
    V_ptr,  # (Z, Lk, D) values, strides (svz, svl, svd)
    O_ptr,  # (Z, Lq, D) out, strides (soz, sol, sod); Q's dtype
    LSE_ptr,  # (Z, Lq) float32, contiguous: the natural-log LSE of the scaled scores (read only when WRITE_LSE)
    sqz, sql, sqd, skz, skl, skd, svz, svl, svd, soz, sol, sod,
    Lq,  # queries per (batch, head)
    Lk,  # keys per (batch, head)
    qk_scale,  # log2(e) / sqrt(D): scores are kept in base 2
    D: tl.constexpr,  # head dim
    BLOCK_D: tl.constexpr,  # next power of two >= max(D, 16)
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner step
    PRECISION: tl.constexpr,  # "ieee" or "tf32" (float32 inputs); ignored for fp16/bf16
    WRITE_LSE: tl.constexpr,  # store the LSE for the backward; False compiles the store out
):
    pid_m = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    ok_m = offs_m < Lq
    ok_d = offs_d < D

    q = tl.load(Q_ptr + z * sqz + offs_m[:, None] * sql + offs_d[None, :] * sqd,
                mask=ok_m[:, None] & ok_d[None, :], other=0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K_ptr + z * skz + offs_d[:, None] * skd
    v_base = V_ptr + z * svz + offs_d[None, :] * svd
    for start_n in range(0, Lk, BLOCK_N):
        n = start_n + offs_n
        ok_n = n < Lk
        kt = tl.load(k_base + n[None, :] * skl, mask=ok_d[:, None] & ok_n[None, :], other=0)  # (BLOCK_D, BLOCK_N)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        s = tl.where(ok_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + n[:, None] * svl, mask=ok_n[:, None] & ok_d[None, :], other=0)  # (BLOCK_N, BLOCK_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O_ptr + z * soz + offs_m[:, None] * sol + offs_d[None, :] * sod, acc.to(O_ptr.dtype.element_ty),
             mask=ok_m[:, None] & ok_d[None, :])
    if WRITE_LSE:  # base-2 max plus log2 of the sum, times ln 2: natural-log units
        tl.store(LSE_ptr + z * Lq + offs_m, (m_i + tl.math.log2(l_i)) * 0.6931471805599453, mask=ok_m)


@triton.jit
def _attn_bwd_preprocess_kernel(
    O_ptr,  # (Z, Lq, D) the forward's output, strides (soz, sol, sod)
    DO_ptr,  # (Z, Lq, D) its gradient, strides (sdoz, sdol, sdod)
    DLSE_ptr,  # (Z, Lq) float32, contiguous: the LSE's gradient (read only when HAS_DLSE)
    DELTA_ptr,  # (Z, Lq) float32, contiguous: out, delta_i = sum_d dO_id O_id - dLSE_i
    soz, sol, sod, sdoz, sdol, sdod,
    Lq,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_DLSE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok_m = offs_m < Lq
    mask = ok_m[:, None] & (offs_d < D)[None, :]
    o = tl.load(O_ptr + z * soz + offs_m[:, None] * sol + offs_d[None, :] * sod, mask=mask, other=0)
    do = tl.load(DO_ptr + z * sdoz + offs_m[:, None] * sdol + offs_d[None, :] * sdod, mask=mask, other=0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    if HAS_DLSE:  # dLSE_i / ds_ij = P_ij: the same shape of term as delta's, with the opposite sign
        delta -= tl.load(DLSE_ptr + z * Lq + offs_m, mask=ok_m, other=0)
    tl.store(DELTA_ptr + z * Lq + offs_m, delta, mask=ok_m)


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q_ptr, K_ptr, V_ptr, DO_ptr,  # (Z, L, D) inputs as in the forward, and dO (Z, Lq, D)
    LSE_ptr, DELTA_ptr,  # (Z, Lq) float32, contiguous
    DK_ptr, DV_ptr,  # (Z, Lk, D) out, K's dtype
    sqz, sql, sqd, skz, skl, skd, svz, svl, svd, sdoz, sdol, sdod, sdkz, sdkl, sdkd, sdvz, sdvl, sdvd,
    Lq, Lk,
    qk_scale,  # log2(e) / sqrt(D)
    sm_scale,  # 1 / sqrt(D)
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per inner step
    BLOCK_N: tl.constexpr,  # keys per program
    PRECISION: tl.constexpr,
):
    """One program per (key block, z): dV = P^T dO and dK = dS^T q / sqrt(D) over every query, P^T recomputed from
    k q^T and the saved LSE. Works on transposed (key-major) tiles so k, v and the accumulators stay put."""
    pid_n = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok_n = offs_n < Lk
    ok_d = offs_d < D
    kv_mask = ok_n[:, None] & ok_d[None, :]
    k = tl.load(K_ptr + z * skz + offs_n[:, None] * skl + offs_d[None, :] * skd, mask=kv_mask, other=0)
    v = tl.load(V_ptr + z * svz + offs_n[:, None] * svl + offs_d[None, :] * svd, mask=kv_mask, other=0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    q_base = Q_ptr + z * sqz + offs_d[None, :] * sqd
    do_base = DO_ptr + z * sdoz + offs_d[None, :] * sdod
    lse_base = LSE_ptr + z * Lq
    delta_base = DELTA_ptr + z * Lq
    for start_m in range(0, Lq, BLOCK_M):
        m = start_m + offs_m
        ok_m = m < Lq
        q_mask = ok_m[:, None] & ok_d[None, :]
        q = tl.load(q_base + m[:, None] * sql, mask=q_mask, other=0)  # (BLOCK_M, BLOCK_D)
        do = tl.load(do_base + m[:, None] * sdol, mask=q_mask, other=0)
        lse2 = tl.load(lse_base + m, mask=ok_m, other=0) * 1.4426950408889634  # base 2, as the scores
        delta = tl.load(delta_base + m, mask=ok_m, other=0)
        st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M) = S^T, base 2
        pt = tl.where(ok_m[None, :], tl.math.exp2(st - lse2[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (dO v^T)^T
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    dk *= sm_scale
    tl.store(DK_ptr + z * sdkz + offs_n[:, None] * sdkl + offs_d[None, :] * sdkd, dk.to(DK_ptr.dtype.element_ty),
             mask=kv_mask)
    tl.store(DV_ptr + z * sdvz + offs_n[:, None] * sdvl + offs_d[None, :] * sdvd, dv.to(DV_ptr.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _attn_bwd_dq_kernel(
    Q_ptr, K_ptr, V_ptr, DO_ptr,  # (Z, L, D) inputs as in the forward, and dO (Z, Lq, D)
    LSE_ptr, DELTA_ptr,  # (Z, Lq) float32, contiguous
    DQ_ptr,  # (Z, Lq, D) out, Q's dtype
    sqz, sql, sqd, skz, skl, skd, svz, svl, svd, sdoz, sdol, sdod, sdqz, sdql, sdqd,
    Lq, Lk,
    qk_scale,  # log2(e) / sqrt(D)
    sm_scale,  # 1 / sqrt(D)
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner step
    PRECISION: tl.constexpr,
):
    """One program per (query block, z): dQ = dS k / sqrt(D) over every key, P recomputed from q k^T and the LSE."""
    pid_m = tl.program_id(0)
    z = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    ok_m = offs_m < Lq
    ok_d = offs_d < D
    q_mask = ok_m[:, None] & ok_d[None, :]
    q = tl.load(Q_ptr + z * sqz + offs_m[:, None] * sql + offs_d[None, :] * sqd, mask=q_mask, other=0)
    do = tl.load(DO_ptr + z * sdoz + offs_m[:, None] * sdol + offs_d[None, :] * sdod, mask=q_mask, other=0)
    lse2 = tl.load(LSE_ptr + z * Lq + offs_m, mask=ok_m, other=0) * 1.4426950408889634
    delta = tl.load(DELTA_ptr + z * Lq + offs_m, mask=ok_m, other=0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    kt_base = K_ptr + z * skz + offs_d[:, None] * skd
    vt_base = V_ptr + z * svz + offs_d[:, None] * svd
    for start_n in range(0, Lk, BLOCK_N):
        n = start_n + offs_n
        ok_n = n < Lk
        kt_mask = ok_d[:, None] & ok_n[None, :]
        kt = tl.load(kt_base + n[None, :] * skl, mask=kt_mask, other=0)  # (BLOCK_D, BLOCK_N)
        vt = tl.load(vt_base + n[None, :] * svl, mask=kt_mask, other=0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), base 2
        p = tl.where(ok_n[None, :], tl.math.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION)
    dq *= sm_scale
    tl.store(DQ_ptr + z * sdqz + offs_m[:, None] * sdql + offs_d[None, :] * sdqd, dq.to(DQ_ptr.dtype.element_ty),
             mask=q_mask)


# ----------------------------------------------------------------------------------------------------------------
# Launchers.

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_GRID_Y = MAX_GRID_Y  # a module global the launchers read at each call, so a test can shrink it


def _config(d: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for head dim d. Not tuned on a GPU (none here): the largest tiles whose
    sm_80/sm_90 builds do not spill (tests/test_triton_compile.py). float32 runs IEEE FMA dots (torch's default,
    allow_tf32 off), whose register layout costs several times a tensor-core tile: 64 x 32 at d=32 spills 620 B."""
    if dtype != torch.float32:
        return (64, 64, 4) if d <= 64 else (64, 32, 8)
    if d <= 32:
        return 32, 16, 4
    return (16, 16, 4) if d <= 64 else (16, 16, 8)


def _bwd_config(d: int, dtype: torch.dtype) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps) of the dK/dV kernel (BLOCK_N keys per program, BLOCK_M queries per step) and
    of the dQ kernel (BLOCK_M queries per program, BLOCK_N keys per step) for head dim d. Not tuned on a GPU (none
    here): from a sweep of sm_80/sm_90 builds (tests/test_triton_compile.py's ptxas -v), the largest tile with no
    spill and at most 240 registers on both (a margin below ptxas's 255 cap), fewer warps on a tie. float16 takes
    the bfloat16 tiles. float32 runs IEEE FMA dots (see _config): at d = 256 only 16 x 16 tiles fit (dQ's 32 x 16
    spills 200 B or more), and dQ at 16 x 16 needs 8 warps to stay under 240 registers."""
    if dtype != torch.float32:
        return {32: ((32, 64, 4), (64, 64, 8)), 64: ((64, 32, 4), (32, 32, 4)),
                128: ((32, 32, 4), (32, 32, 8)), 256: ((32, 32, 8), (16, 16, 8))}[_bwd_key(d)]
    return {32: ((32, 32, 8), (32, 32, 4)), 64: ((32, 32, 8), (32, 32, 4)),
            128: ((32, 32, 8), (32, 32, 8)), 256: ((16, 16, 4), (16, 16, 8))}[_bwd_key(d)]


def _bwd_key(d: int) -> int:
    """The swept head dim whose tiles serve d: the smallest of 32, 64, 128, 256 at least d (256 beyond)."""
    return next((k for k in (32, 64, 128) if d <= k), 256)


def _preprocess_block_m(d: int) -> int:
    """Rows per program of the delta preprocess (two (BLOCK_M, d) tiles, no dot)."""
    return 32 if _block_d(d) <= 128 else 16


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _dense_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised dense tensor shaped like t with t's dimension order (strides sorted as t's): a d-major
    (Z, L, d) view such as attn_block's q (strides (3 d L, 1, L)) gets strides (d L, 1, L), whose .mT is
    contiguous; a row-major one stays row-major. (torch.empty_like keeps the order only for dense tensors.)"""
    order = sorted(range(t.dim()), key=lambda i: -t.stride(i))  # stable: equal strides keep the outer dim first
    buf = torch.empty([t.shape[i] for i in order], dtype=t.dtype, device=t.device)
    return buf.permute(sorted(range(t.dim()), key=order.__getitem__))


def _z_chunks(Z: int):
    """[z0, z1) ranges of at most _MAX_GRID_Y (batch, head) pairs: the grid's axis 1."""
    for z0 in range(0, Z, _MAX_GRID_Y):
        yield z0, min(Z, z0 + _MAX_GRID_Y)


def _launch_fwd(out: torch.Tensor, lse: Optional[torch.Tensor], q, k, v) -> None:
    """Run _attn_fwd_kernel into out (and the LSE into lse, (Z, Lq) float32 contiguous, when given)."""
    Z, Lq, d = q.shape
    Lk = k.shape[1]
    if out.numel() == 0 or Lk == 0 or tracing_interpreted(q):
        if Lk == 0:  # softmax over no keys: the empty sum, as the reference's P V gives
            out.zero_()
        return
    block_m, block_n, num_warps = _config(d, q.dtype)
    for z0, z1 in _z_chunks(Z):
        qz, kz, vz, oz = q[z0:z1], k[z0:z1], v[z0:z1], out[z0:z1]
        lz = oz if lse is None else lse[z0:z1]  # any pointer: WRITE_LSE=False never reads it
        wrap_triton(_attn_fwd_kernel)[(triton.cdiv(Lq, block_m), z1 - z0)](
            qz, kz, vz, oz, lz, *qz.stride(), *kz.stride(), *vz.stride(), *oz.stride(), Lq, Lk,
            _LOG2E / math.sqrt(d), D=d, BLOCK_D=_block_d(d), BLOCK_M=block_m, BLOCK_N=block_n,
            PRECISION=_precision(q.dtype), WRITE_LSE=lse is not None, num_warps=num_warps,
        )


@launcher_op("fastsde::attention_triton", mutates_args={"out"})
def _attention_op(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """out = softmax(q k^T / sqrt(d)) v on (Z, L, d) tensors with any strides (out: q's shape and dtype). The
    inference op: no LSE, no autograd (it writes into out; attention_lse_triton is the differentiable twin)."""
    _launch_fwd(out, None, q, k, v)


@launcher_op("fastsde::attention_lse_triton", mutates_args={})
def _attention_lse_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out = softmax(q k^T / sqrt(d)) v laid out in q's dimension order (_dense_like), and the
    natural-log LSE of the scaled scores, (Z, Lq) float32. Differentiable in both (register_autograd below)."""
    Z, Lq, d = q.shape
    out = _dense_like(q)
    lse = torch.empty(Z, Lq, dtype=torch.float32, device=q.device)
    if Lq and (d == 0 or k.shape[1] == 0):  # no kernel runs: the LSE of no keys is -inf; with d = 0, 0 / 0
        lse.fill_(float("-inf") if k.shape[1] == 0 else float("nan"))
    _launch_fwd(out, lse, q, k, v)
    return out, lse


@launcher_op("fastsde::attention_backward_triton", mutates_args={})
def _attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                           lse: torch.Tensor, dlse: Optional[torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of attention_lse_triton(q, k, v) -> (out, lse) for the output gradient dout (any strides) and
    the LSE's gradient dlse ((Z, Lq) float32 contiguous, or None for zero). Each gradient is laid out like its input."""
    Z, Lq, d = q.shape
    Lk = k.shape[1]
    dq, dk, dv = _dense_like(q), _dense_like(k), _dense_like(v)
    if Lq == 0 or Lk == 0 or d == 0:
        for t in (dq, dk, dv):
            t.zero_()
        return dq, dk, dv
    if tracing_interpreted(q):
        return dq, dk, dv
    (kv_m, kv_n, kv_warps), (q_m, q_n, q_warps) = _bwd_config(d, q.dtype)
    consts = dict(D=d, BLOCK_D=_block_d(d), PRECISION=_precision(q.dtype))
    qk_scale, sm_scale = _LOG2E / math.sqrt(d), 1.0 / math.sqrt(d)
    delta = torch.empty(Z, Lq, dtype=torch.float32, device=q.device)
    pre_m = _preprocess_block_m(d)
    for z0, z1 in _z_chunks(Z):
        sl = slice(z0, z1)
        qz, kz, vz, oz, doz = q[sl], k[sl], v[sl], out[sl], dout[sl]
        lz, dlz, delz = lse[sl], delta[sl] if dlse is None else dlse[sl], delta[sl]
        wrap_triton(_attn_bwd_preprocess_kernel)[(triton.cdiv(Lq, pre_m), z1 - z0)](
            oz, doz, dlz, delz, *oz.stride(), *doz.stride(), Lq, D=d, BLOCK_D=consts["BLOCK_D"], BLOCK_M=pre_m,
            HAS_DLSE=dlse is not None, num_warps=4,
        )
        strides = (*qz.stride(), *kz.stride(), *vz.stride(), *doz.stride())
        dkz, dvz, dqz = dk[sl], dv[sl], dq[sl]
        wrap_triton(_attn_bwd_dkdv_kernel)[(triton.cdiv(Lk, kv_n), z1 - z0)](
            qz, kz, vz, doz, lz, delz, dkz, dvz, *strides, *dkz.stride(), *dvz.stride(), Lq, Lk, qk_scale, sm_scale,
            BLOCK_M=kv_m, BLOCK_N=kv_n, num_warps=kv_warps, **consts,
        )
        wrap_triton(_attn_bwd_dq_kernel)[(triton.cdiv(Lq, q_m), z1 - z0)](
            qz, kz, vz, doz, lz, delz, dqz, *strides, *dqz.stride(), Lq, Lk, qk_scale, sm_scale,
            BLOCK_M=q_m, BLOCK_N=q_n, num_warps=q_warps, **consts,
        )
    return dq, dk, dv


def _setup_context(ctx, inputs, output):
    q, k, v = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero LSE gradient to read


def _backward(ctx, dout, dlse):
    if torch.is_grad_enabled():
        raise RuntimeError("attention (triton): double backward (create_graph=True) is not implemented by the "
                           "flash-attention kernels; use backend='reference' for higher-order gradients")
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None and dlse is None:
        return None, None, None
    if dout is None:
        dout = torch.zeros_like(out)
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    with on_device(q):
        dq, dk, dv = torch.ops.fastsde.attention_backward_triton(dout, q, k, v, out, lse, dlse)
    return tuple(g if need else None for g, need in zip((dq, dk, dv), ctx.needs_input_grad))


torch.library.register_autograd("fastsde::attention_lse_triton", _backward, setup_context=_setup_context)


def _check_inputs(q, k, v) -> None:
    check_runnable(q)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() < 2:
            raise ValueError(f"{name} must be a (..., L, d) tensor, got {getattr(t, 'shape', type(t).__name__)}")
        if t.dtype not in _DTYPES or t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name} must be float32, float16 or bfloat16 with q's dtype ({q.dtype}) on {q.device}, "
                            f"got {t.dtype} on {t.device}")
    if k.shape != v.shape or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q (..., Lq, d), k and v (..., Lk, d) must agree: got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")


def _flat(t: torch.Tensor) -> torch.Tensor:
    """(..., L, d) -> (Z, L, d): a view when the leading dimensions allow one, else a copy (differentiable)."""
    return t.reshape(math.prod(t.shape[:-2]), t.shape[-2], t.shape[-1])  # not -1: L = 0 leaves it ambiguous


def attention_with_lse(q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out = softmax(q k^T / sqrt(d)) v shaped like q, and lse (..., Lq) float32, the natural-log
    log-sum-exp of the scaled scores q k^T / sqrt(d) over the keys (-inf for no keys). Differentiable in q, k, v
    through both outputs. Arguments as `attention`."""
    _check_inputs(q, k, v)
    with on_device(q):
        out, lse = torch.ops.fastsde.attention_lse_triton(_flat(q), _flat(k), _flat(v))
    return out.reshape(q.shape), lse.reshape(q.shape[:-1])


def attention(q, k, v, out=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v (fastsde.reference.attention.attention) as one flash-attention kernel.

    q: (..., Lq, d), k, v: (..., Lk, d), one float32/float16/bfloat16 dtype and device, any strides (the leading
    dimensions are flattened: a view when they allow one, else a copy). out: q's shape and dtype, or None.
    Differentiable: when autograd records (grad enabled, an input requiring grad) the forward also saves the LSE
    and the FlashAttention-2 backward kernels run on backward; a given `out` then receives a recorded copy.
    """
    _check_inputs(q, k, v)
    if out is not None and (out.shape != q.shape or out.dtype != q.dtype or out.device != q.device):
        raise ValueError(f"out must match q ({tuple(q.shape)} {q.dtype}), got {tuple(out.shape)} {out.dtype}")
    if out is not None:
        check_no_autograd("attention's out=", {"out": out})
    if records_autograd(q, k, v):
        y = attention_with_lse(q, k, v)[0]
        return y if out is None else out.copy_(y)
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    d = q.shape[-1]
    try:
        target = out.view(-1, out.shape[-2], d)  # writes land in out whatever its strides
    except RuntimeError:  # leading dimensions that do not merge: write a temporary, then copy
        target = None
    tmp = torch.empty(_flat(q).shape, dtype=q.dtype, device=q.device) if target is None else target
    with on_device(q):  # Triton launches on the current device: make it q's
        torch.ops.fastsde.attention_triton(tmp, _flat(q), _flat(k), _flat(v))
    if target is None:
        out.copy_(tmp.view(out.shape))
    return out


def attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
               skip_rescale, eps) -> torch.Tensor:
    """The attention block (fastsde.reference.attention.attn_block) with arguments validated by fastsde.ops:
    GN (torch) -> one QKV GEMM (cuBLAS) -> _attn_fwd_kernel -> output GEMM with the residual as its beta input.
    x: (B, C, H, W) float32/float16/bfloat16; computes in x's dtype with float32 accumulation.
    Differentiable: GN and the GEMMs are torch ops; when autograd records, the attention core is
    attention_lse_triton (its output d-major like q, so the output GEMM reads it as a view) with the Triton backward."""
    check_runnable(x)
    if x.dtype not in _DTYPES:
        raise TypeError(f"the triton attn_block takes float32, float16 or bfloat16 x, got {x.dtype} "
                        f"(use backend='native' or 'reference' for float64)")
    B, C, H, W = x.shape
    L, d, dt = H * W, C // num_heads, x.dtype
    if x.numel() == 0:
        return torch.empty_like(x)
    xc = x.reshape(B, C, L)
    h = torch.nn.functional.group_norm(xc, num_groups, gn_weight.to(dt), gn_bias.to(dt), eps)
    w = qkv_weight.to(dt).reshape(3, num_heads, d, C).transpose(0, 1).reshape(3 * C, C)
    b = qkv_bias.to(dt).reshape(3, num_heads, d).transpose(0, 1).reshape(3 * C)
    qkv = torch.baddbmm(b[None, :, None], w.expand(B, -1, -1), h).reshape(B * num_heads, 3 * d, L)
    q, k, v = (t.mT for t in qkv.split(d, dim=1))  # (B heads, L, d), strides (3 d L, 1, L)
    with on_device(x):
        if records_autograd(qkv):
            a = torch.ops.fastsde.attention_lse_triton(q, k, v)[0].mT.reshape(B, C, L)  # strides (d L, 1, L): a view
        else:
            a = torch.empty(B, C, L, dtype=dt, device=x.device)
            torch.ops.fastsde.attention_triton(a.reshape(B * num_heads, d, L).mT, q, k, v)
    res = 1.0 / math.sqrt(2.0) if skip_rescale else 1.0
    y = torch.baddbmm(xc, out_weight.to(dt).expand(B, -1, -1), a, beta=res, alpha=res)
    return y.add_((out_bias.to(dt) * res)[None, :, None]).reshape(B, C, H, W)
