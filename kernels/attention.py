"""Triton flash attention and the attention-block launcher: the specification is fastsde/reference/attention.py.

    attention(q, k, v) = softmax(q k^T / sqrt(d)) v       q: (Z, Lq, d), k, v: (Z, Lk, d), any strides
    attn_block(x, ...) = res (x + W_out attention(GN(x) -> W_qkv) + b_out),  res = 1/sqrt(2) with skip_rescale

Layout: the kernel takes q, k, v, out as (Z, L, d) with arbitrary strides, so the block never permutes. The QKV
projection (cuBLAS) writes (B, 3C, L) channel-major with the weight rows ordered (head, q|k|v, d); each of q, k, v
is then a (B heads, L, d) view with strides (3 d L, 1, L), and the kernel writes the output straight into the
(B, C, L) channel-major buffer the output projection reads.

Bytes vs flops: one program reads its query block once and every key/value block once (2 Lk d elements per
BLOCK_M queries) and writes its output once; the L x L scores never leave registers. Work is 4 Lq Lk d flops per
(batch, head): at 256 tokens x d = 256 (CIFAR-10's 16x16 block) that is ~64 flops per byte in fp16, compute-bound.
Softmax is online (running max m, running sum l, rescale by exp2(m_old - m_new)), accumulated in float32;
fp16/bf16 probabilities are rounded to the input dtype for the P V product as flash-attention does. float32 inputs
use TF32 dots when torch.backends.cuda.matmul.allow_tf32 is set, IEEE float32 otherwise.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import MAX_GRID_Y, check_runnable, launcher_op, on_device, tracing_interpreted

__all__ = ["attention", "attn_block"]

_LOG2E = 1.4426950408889634


@triton.jit
def _attn_fwd_kernel(
    Q_ptr,  # (Z, Lq, D) queries, strides (sqz, sql, sqd)
    K_ptr,  # (Z, Lk, D) keys, strides (skz, skl, skd)
    V_ptr,  # (Z, Lk, D) values, strides (svz, svl, svd)
    O_ptr,  # (Z, Lq, D) out, strides (soz, sol, sod); Q's dtype
    sqz, sql, sqd, skz, skl, skd, svz, svl, svd, soz, sol, sod,
    Lq,  # queries per (batch, head)
    Lk,  # keys per (batch, head)
    qk_scale,  # log2(e) / sqrt(D): scores are kept in base 2
    D: tl.constexpr,  # head dim
    BLOCK_D: tl.constexpr,  # next power of two >= max(D, 16)
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per inner step
    PRECISION: tl.constexpr,  # "ieee" or "tf32" (float32 inputs); ignored for fp16/bf16
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


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


@launcher_op("fastsde::attention_triton", mutates_args={"out"})
def _attention_op(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """out = softmax(q k^T / sqrt(d)) v on (Z, L, d) tensors with any strides (out: q's shape and dtype)."""
    Z, Lq, d = q.shape
    Lk = k.shape[1]
    if out.numel() == 0 or Lk == 0 or tracing_interpreted(q):
        return
    block_m, block_n, num_warps = _config(d, q.dtype)
    for z0 in range(0, Z, _MAX_GRID_Y):
        z1 = min(Z, z0 + _MAX_GRID_Y)
        qz, kz, vz, oz = q[z0:z1], k[z0:z1], v[z0:z1], out[z0:z1]
        grid = (triton.cdiv(Lq, block_m), z1 - z0)
        wrap_triton(_attn_fwd_kernel)[grid](
            qz, kz, vz, oz, *qz.stride(), *kz.stride(), *vz.stride(), *oz.stride(), Lq, Lk,
            _LOG2E / math.sqrt(d), D=d, BLOCK_D=_block_d(d), BLOCK_M=block_m, BLOCK_N=block_n,
            PRECISION=_precision(q.dtype), num_warps=num_warps,
        )


def attention(q, k, v, out=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v (fastsde.reference.attention.attention) as one flash-attention kernel.

    q: (..., Lq, d), k, v: (..., Lk, d), one float32/float16/bfloat16 dtype and device, any strides (the leading
    dimensions are flattened: a view when they allow one, else a copy). out: q's shape and dtype, or None.
    """
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
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must match q ({tuple(q.shape)} {q.dtype}), got {tuple(out.shape)} {out.dtype}")
    d = q.shape[-1]
    flat = lambda t: t.reshape(-1, t.shape[-2], d)  # noqa: E731
    try:
        target = out.view(-1, out.shape[-2], d)  # writes land in out whatever its strides
    except RuntimeError:  # leading dimensions that do not merge: write a temporary, then copy
        target = None
    tmp = torch.empty(flat(q).shape, dtype=q.dtype, device=q.device) if target is None else target
    with on_device(q):  # Triton launches on the current device: make it q's
        torch.ops.fastsde.attention_triton(tmp, flat(q), flat(k), flat(v))
    if target is None:
        out.copy_(tmp.view(out.shape))
    return out


def attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
               skip_rescale, eps) -> torch.Tensor:
    """The attention block (fastsde.reference.attention.attn_block) with arguments validated by fastsde.ops:
    GN (torch) -> one QKV GEMM (cuBLAS) -> _attn_fwd_kernel -> output GEMM with the residual as its beta input.
    x: (B, C, H, W) float32/float16/bfloat16; computes in x's dtype with float32 accumulation."""
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
    a = torch.empty(B, C, L, dtype=dt, device=x.device)
    with on_device(x):
        torch.ops.fastsde.attention_triton(a.reshape(B * num_heads, d, L).mT, q, k, v)
    res = 1.0 / math.sqrt(2.0) if skip_rescale else 1.0
    y = torch.baddbmm(xc, out_weight.to(dt).expand(B, -1, -1), a, beta=res, alpha=res)
    return y.add_((out_bias.to(dt) * res)[None, :, None]).reshape(B, C, H, W)
