"""attn_block: the NCSN++/DDPM++ attention block (GN -> fused QKV 1x1 -> attention -> 1x1 out -> residual).

Bytes: x is read twice (GN statistics, GN apply) and the block writes its output once; the QKV and output
projections are GEMMs (2 * 4 C^2 HW flops per sample) and attention is 4 C (HW)^2 flops per sample, so at CIFAR-10's
16x16 (256 tokens x 256 channels) the block is compute-bound.

Autograd: every backend differentiates ("auto" keeps its pick when autograd records: Triton on CUDA, native on the
CPU). The native block's GroupNorm runs the fused backward of fastsde.ops.group_norm; the GEMMs (the folded
projections included) and the softmax differentiate as torch ops, each backward one or two GEMMs. There the softmax
probabilities P (B heads x L x L) are saved by softmax's backward rather than recomputed: at the U-Nets' attention
resolutions (L <= 256) P is no larger than a few of the block's activations, and recomputing it would redo the score
GEMM. The Triton block's GroupNorm and GEMMs are torch ops; its attention core saves only the output and the per-row
log-sum-exp and runs FlashAttention-2's backward kernels, which recompute P block by block (kernels/attention.py).
"""
from __future__ import annotations

import math

import torch

from fastsde.ops.checks import check_float_tensor, positive_count, records_autograd
from fastsde.ops.dispatch import implementation, register, resolve
from fastsde.ops.groupnorm import autograd_backend
from fastsde.reference import attention as _ref

__all__ = ["attn_block"]


def attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, *, num_groups, num_heads=1,
               skip_rescale=False, eps=1e-6, backend="auto"):
    """x: (B, C, H, W); gn_*: (C,); qkv_weight (3C, C), qkv_bias (3C,); out_weight (C, C), out_bias (C,).
    Returns (x + proj(attention(GN(x)))) [/ sqrt(2)], shaped like x."""
    check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    expected = {"gn_weight": (C,), "gn_bias": (C,), "qkv_weight": (3 * C, C), "qkv_bias": (3 * C,),
                "out_weight": (C, C), "out_bias": (C,)}
    params = (gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias)
    for name, t in zip(expected, params):
        check_float_tensor(name, t)
        if tuple(t.shape) != expected[name] or t.device != x.device:
            raise ValueError(f"{name} must have shape {expected[name]} on {x.device}, got {tuple(t.shape)} on "
                             f"{t.device}")
    num_heads = positive_count("num_heads", num_heads, C)
    num_groups = positive_count("num_groups", num_groups, C)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    backend = autograd_backend("attn_block", backend, x, *params)
    _, impl = resolve("attn_block", backend, x.device)
    if x.numel() == 0:
        return torch.empty_like(x)
    return impl(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
                bool(skip_rescale), float(eps))


@register("attn_block", "reference")
def _attn_block_reference(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
                          skip_rescale, eps):
    return _ref.attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups=num_groups,
                           num_heads=num_heads, skip_rescale=skip_rescale, eps=eps)


# ----------------------------------------------------------------------------------------------------------------
# native: plain torch in float32 (float64 for float64 inputs), three GEMM launches and one softmax for one head.
#
# One head folds the projections into the weights (exact algebra, valid because softmax rows sum to one):
#   q_i.k_j = h_i^T (Wq^T Wk) h_j + (Wk^T bq).h_j + [terms constant in j, which softmax drops]
#   W_out (sum_j P_ij v_j) + b_out = sum_j P_ij (W_out Wv h_j + W_out bv + b_out)
# so [K'; V'] = [Wq^T Wk; W_out Wv] h + [0; W_out bv + b_out] is ONE GEMM (2C x C instead of 3C x C, and no
# output projection), scores = h^T K' / sqrt(C) + t_j with the per-key bias t = (Wk^T bq)^T h / sqrt(C) fused as
# baddbmm's input, and the residual and 1/sqrt(2) ride on the last baddbmm's beta/alpha. Per sample that is
# 2 C^2 L + 2 C L^2 multiply-adds instead of 4 C^2 L + 2 C L^2, for 2 C^3 once per call to fold the weights.
# Several heads use the unfolded form (folding would cost heads x C^2 L): one QKV GEMM with the weight rows
# reordered to (head, q|k|v, d) so every head's q, k, v are strided views, the 1/sqrt(d) folded into Wq, bq.
#
# The attention core: hand-written baddbmm + softmax(out=S) + bmm beat SDPA here. Measured at B=8, C=256, 16x16,
# one head, 1 thread, median (min) of 25 interleaved runs on the shared 2-core box: folded + baddbmm/softmax/bmm
# 22.3 (14.3) ms; folded with SDPA (per-key bias as a (B,1,1,L) attn_mask) 25.5 (17.8) ms; unfolded with SDPA
# 28.4 (19.4) ms; unfolded baddbmm/softmax/bmm 32.3 (23.2) ms; score_sde's einsum block 34.9 (21.8) ms.
# All layouts stay channel-major (B, C, L): GEMM operands are transposed views, never permute copies.

def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gn(x, num_groups, weight, bias, eps):
    """GroupNorm in x's dtype (NCHW or channels-last, kept): fastsde's native group_norm when it is registered, else
    torch's. Only called from the native attn_block, which has already checked that native runs on x's device, so
    the registered native kernel is called directly (no second resolve, no re-validation of checked arguments)."""
    impl = implementation("group_norm", "native")
    if impl is not None:
        return impl(x, num_groups, weight, bias, eps, None, None, None, None)
    return torch.nn.functional.group_norm(x, num_groups, weight, bias, eps)


def _fold_single_head(qkv_weight, qkv_bias, out_weight, out_bias, dt):
    """Folded single-head weights: w_kv = [Wq^T Wk; Wo Wv] (2C, C), b_kv = [0; Wo bv + bo] (2C,), u = Wk^T bq (C,).

    Rebuilt on every call (2 C^3 flops: 67 MFLOP at C = 256, under 5% of the block at batch 8). There is deliberately
    no cache: a cache keyed on storage and version counter misses `param.data.copy_` (score_sde's EMA swap), which
    does not bump `_version`, and returned stale weights; a content check would need a host sync every call.
    """
    wq, wk, wv = qkv_weight.to(dt).chunk(3)
    bq, bk, bv = qkv_bias.to(dt).chunk(3)
    wo, bo = out_weight.to(dt), out_bias.to(dt)
    w_kv = torch.cat([wq.T @ wk, wo @ wv])  # (2C, C)
    b_kv = torch.cat([torch.zeros_like(bq), torch.addmv(bo, wo, bv)])
    return w_kv, b_kv, wk.T @ bq


def _softmax_(s):
    """Row softmax of s: in place when autograd does not record it (its backward keeps the output, so not then)."""
    return torch.softmax(s, -1) if records_autograd(s) else torch.softmax(s, -1, out=s)


def _channels_last_only(x):
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


@register("attn_block", "native")
def _attn_block_native(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
                       skip_rescale, eps):
    B, C, H, W = x.shape
    L, dt = H * W, _compute_dtype(x.dtype)
    if x.numel() == 0:
        return torch.empty_like(x)
    res = 1.0 / math.sqrt(2.0) if skip_rescale else 1.0
    if num_heads == 1 and _channels_last_only(x):
        # Token-major (B, L, C) views of a channels-last x: the same folded algebra with the transposed GEMM forms,
        # no layout copies, and a channels-last result.
        scale = 1.0 / math.sqrt(C)
        w_kv, b_kv, u = _fold_single_head(qkv_weight, qkv_bias, out_weight, out_bias, dt)
        x4 = x.to(dt)
        xt = x4.permute(0, 2, 3, 1).reshape(B, L, C)  # view
        h = _gn(x4, num_groups, gn_weight.to(dt), gn_bias.to(dt), eps).permute(0, 2, 3, 1).reshape(B * L, C)
        kv = torch.addmm(b_kv, h, w_kv.T).view(B, L, 2 * C)  # rows: K'_j | V'_j
        t = torch.mv(h, u).view(B, 1, L)  # per-key score bias
        h = h.view(B, L, C)
        s = torch.baddbmm(t, h, kv[:, :, :C].mT, beta=scale, alpha=scale)  # (B, L, L)
        s = _softmax_(s)
        y = torch.baddbmm(xt, s, kv[:, :, C:], beta=res, alpha=res)  # (B, L, C): res (x + P V')
        return y.view(B, H, W, C).permute(0, 3, 1, 2).to(x.dtype)
    xc = x.to(dt).reshape(B, C, L)
    h = _gn(xc, num_groups, gn_weight.to(dt), gn_bias.to(dt), eps)  # (B, C, L)
    if num_heads == 1:
        scale = 1.0 / math.sqrt(C)
        w_kv, b_kv, u = _fold_single_head(qkv_weight, qkv_bias, out_weight, out_bias, dt)
        kv = torch.baddbmm(b_kv[None, :, None], w_kv.expand(B, -1, -1), h)  # (B, 2C, L): K', V'
        t = u @ h  # (B, L) per-key score bias
        s = torch.baddbmm(t[:, None, :], h.mT, kv[:, :C], beta=scale, alpha=scale)  # (B, L, L)
        s = _softmax_(s)
        y = torch.baddbmm(xc, kv[:, C:], s.mT, beta=res, alpha=res)  # res (x + V' P^T)
        return y.reshape(B, C, H, W).to(x.dtype)
    wq, wk, wv = qkv_weight.to(dt).chunk(3)
    bq, bk, bv = qkv_bias.to(dt).chunk(3)
    wo, bo = out_weight.to(dt), out_bias.to(dt)
    d = C // num_heads
    scale = 1.0 / math.sqrt(d)
    w = torch.stack([wq * scale, wk, wv]).reshape(3, num_heads, d, C).transpose(0, 1).reshape(3 * C, C)
    b = torch.stack([bq * scale, bk, bv]).reshape(3, num_heads, d).transpose(0, 1).reshape(3 * C)
    qkv = torch.baddbmm(b[None, :, None], w.expand(B, -1, -1), h).reshape(B * num_heads, 3 * d, L)
    q, k, v = qkv.split(d, dim=1)  # (B heads, d, L) views
    s = torch.bmm(q.mT, k)  # (B heads, L, L)
    s = _softmax_(s)
    a = torch.bmm(v, s.mT).reshape(B, C, L)
    y = torch.baddbmm(xc, wo.expand(B, -1, -1), a, beta=res, alpha=res).add_((bo * res)[None, :, None])
    return y.reshape(B, C, H, W).to(x.dtype)


@register("attn_block", "triton")
def _attn_block_triton(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups, num_heads,
                       skip_rescale, eps):
    from fastsde.kernels import attention as _kernels
    return _kernels.attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups,
                               num_heads, skip_rescale, eps)
