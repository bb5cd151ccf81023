"""The per-frequency step of the heat family in Triton (csrc/freq_step.h's math, fastsde/reference/freq_step.py's
specification): out = a[k] x + b[k] s + c[k] z, k = j mod period, z = FSN1(seed, sample id, draw, j) made in
registers. Grid (blocks of a sample, batch); BLOCK a multiple of 4 so a Philox call serves four elements. The seed
is read from a 0-d int64 device tensor when the kernel runs (seed_arg): a compiled graph has nothing to guard on and
a recorded CUDA graph serves any seed copied there."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from typing import Optional

from torch.library import wrap_triton

from ._common import (launcher_op, on_device, seed_arg, seed_key, signed_u64, split_u64,
                      tracing_interpreted)
from .fsn1 import fsn1_normals

__all__ = ["freq_step_triton"]


@triton.jit(do_not_specialize=["draw_lo", "draw_hi"])
def _freq_step_kernel(X_ptr, S_ptr, OUT_ptr, A_ptr, B_ptr, C_ptr, IDS_ptr, SEED_ptr, M, PERIOD,
                      draw_lo, draw_hi, NOISE: tl.constexpr, BLOCK: tl.constexpr):
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
        seed_lo, seed_hi = seed_key(SEED_ptr)
        z = fsn1_normals((pid * (BLOCK // 4)).to(tl.uint32), sample, draw_lo.to(tl.uint32, bitcast=True),
                         draw_hi.to(tl.uint32, bitcast=True), seed_lo, seed_hi, BLOCK, COMPUTE)
        out = tl.fma(tl.load(C_ptr + k, mask=ok, other=0.0), z, out)
    tl.store(OUT_ptr + n * M + j, out, mask=ok)


@launcher_op("fastsde::freq_step_triton", mutates_args={"out"})
def _freq_step_op(out: torch.Tensor, x: torch.Tensor, score: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  c: Optional[torch.Tensor], seed: torch.Tensor, sample_ids: torch.Tensor, draw: int) -> None:
    """out <- the step, on contiguous tensors (out may be x); seed a 0-d int64 tensor, draw the uint64's int64 bits."""
    batch = x.shape[0]
    numel = x.numel() // batch if batch else 0
    if out.numel() and not tracing_interpreted(x):
        BLOCK = 1024
        draw_lo, draw_hi = split_u64(draw)
        wrap_triton(_freq_step_kernel)[(triton.cdiv(numel, BLOCK), batch)](
            x, score, out, a, b, a if c is None else c, sample_ids, seed, numel, a.numel(), draw_lo, draw_hi,
            NOISE=c is not None, BLOCK=BLOCK)


def freq_step_triton(x, score, a, b, c, seed, sample_ids, draw: int, out=None) -> torch.Tensor:
    """out (like x, contiguous; a new tensor unless given, may be x) from contiguous x, score (B, M...) and a, b, c
    (period,) in x's compute dtype; seed a uint64 int or its bits in a 0-d int64 tensor on x's device."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
    with on_device(x):
        torch.ops.fastsde.freq_step_triton(out, x, score, a, b, c, seed_arg(seed, x.device), sample_ids,
                                           signed_u64(draw))
    return out
