"""The per-frequency step of the heat family in Triton (csrc/freq_step.h's math, fastsde/reference/freq_step.py's
specification): out = a[k] x + b[k] s + c[k] z, k = j mod period, z = FSN1(seed, sample id, draw, j) made in
registers. Grid (blocks of a sample, batch); BLOCK a multiple of 4 so a Philox call serves four elements."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import on_device, split_u64
from .fsn1 import fsn1_normals

__all__ = ["freq_step_triton"]


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "draw_lo", "draw_hi"])
def _freq_step_kernel(X_ptr, S_ptr, OUT_ptr, A_ptr, B_ptr, C_ptr, IDS_ptr, M, PERIOD,
                      seed_lo, seed_hi, draw_lo, draw_hi, NOISE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    ok = j < M
    COMPUTE: tl.constexpr = OUT_ptr.dtype.element_ty
    k = j % PERIOD
    x = tl.load(X_ptr + n * M + j, mask=ok, other=0.0).to(COMPUTE)
    s = tl.load(S_ptr + n * M + j, mask=ok, other=0.0).to(COMPUTE)
    a = tl.load(A_ptr + k, mask=ok, other=0.0)
    b = tl.load(B_ptr + k, mask=ok, other=0.0)
    out = tl.fma(a, x, b * s)
    if NOISE:
        sample = tl.load(IDS_ptr + n).to(tl.uint32)
        z = fsn1_normals((pid * (BLOCK // 4)).to(tl.uint32), sample, draw_lo.to(tl.uint32, bitcast=True),
                         draw_hi.to(tl.uint32, bitcast=True), seed_lo.to(tl.uint32, bitcast=True),
                         seed_hi.to(tl.uint32, bitcast=True), BLOCK, COMPUTE)
        out = tl.fma(tl.load(C_ptr + k, mask=ok, other=0.0), z, out)
    tl.store(OUT_ptr + n * M + j, out, mask=ok)


def freq_step_triton(x, score, a, b, c, seed: int, sample_ids, draw: int) -> torch.Tensor:
    """out (like x, contiguous) from contiguous x, score (B, M...) and a, b, c (period,) in x's compute dtype."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    batch = x.shape[0]
    numel = x.numel() // batch if batch else 0
    if out.numel():
        BLOCK = 1024
        with on_device(out):
            _freq_step_kernel[(triton.cdiv(numel, BLOCK), batch)](
                x, score, out, a, b, a if c is None else c, sample_ids, numel, a.numel(),
                *split_u64(seed), *split_u64(draw), NOISE=c is not None, BLOCK=BLOCK)
    return out
