"""FSN1 in Triton: the counter-based Gaussian stream of fastsde/random.py, as @triton.jit helpers.

    words = Philox4x32-10(counter=(j >> 2, n, d & 0xffffffff, d >> 32), key=(seed & 0xffffffff, seed >> 32))
    u = ((w0 >> 8) + 1) 2^-24,  v = (w1 >> 8) 2^-24,  r = sqrt(-2 ln u),  (z0, z1) = r (cos, sin)(2 pi v)
    (w2, w3) -> (z2, z3) likewise; element j takes z_(j & 3).

Philox is `tl.philox_impl`, Triton's own Philox4x32 round function: its round (hi/lo of 0xD2511F53 * c0 and
0xCD9E8D57 * c2, outputs (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)) and key schedule (k += (0x9E3779B9, 0xBB67AE85))
are Random123's, checked word for word against tests/data/fsn1_vectors.json (tests/test_step_triton.py). We call
it with our own uint32 counter and key words rather than through `tl.randint4x`, whose counter layout
(offset_lo, offset_hi, 0, 0) is not FSN1's. All integer math is uint32: `>>` on uint32 is a logical shift.

Box-Muller avoids forming 2 pi v (its rounding, times r <= 5.8, would cost ~2e-6 absolute in float32): with
v = k 2^-24, q = round(4v) = (k + 2^21) >> 22 is the quadrant and f = k - q 2^22 in [-2^21, 2^21] is exact,
theta = f pi / 2^23 in [-pi/4, pi/4] has one rounding, and (cos, sin)(2 pi v) is (cos, sin)(theta) turned by q
quarter turns — the same reduction as csrc/fsn1.h, so the backends agree to a few ulp. tl.log, tl.sin, tl.cos
lower to libdevice's __nv_logf/__nv_sinf/__nv_cosf (not the .approx instructions); sqrt is sqrt_rn in float32.

One Philox call serves four consecutive elements: a kernel handling BLOCK elements runs BLOCK // 4 Philox
calls and interleaves (z0, z1, z2, z3) with tl.join + reshape, so no word is computed twice.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import on_device, split_u64

__all__ = ["fsn1_words", "fsn1_uniform_u", "fsn1_uniform_v", "fsn1_normals", "fsn1_words_debug", "fsn1_normal_debug",
           "split_u64"]


@triton.jit
def fsn1_words(block, sample, draw_lo, draw_hi, seed_lo, seed_hi):
    """The four Philox4x32-10 words of FSN1 counter block `block` (= element >> 2); all arguments uint32,
    tensors or scalars broadcasting against `block`. Returns (w0, w1, w2, w3), each shaped like `block`."""
    zero = tl.zeros_like(block)
    return tl.philox_impl(block, zero + sample, zero + draw_lo, zero + draw_hi, zero + seed_lo, zero + seed_hi, 10)


@triton.jit
def fsn1_uniform_u(wu, COMPUTE: tl.constexpr):
    """u = ((w >> 8) + 1) 2^-24 in (0, 1], exact in float32 and float64."""
    return ((wu >> 8) + 1).to(COMPUTE) * 5.9604644775390625e-08


@triton.jit
def fsn1_uniform_v(wv, COMPUTE: tl.constexpr):
    """v = (w >> 8) 2^-24 in [0, 1), exact in float32 and float64."""
    return (wv >> 8).to(COMPUTE) * 5.9604644775390625e-08


@triton.jit
def _box_muller(wu, wv, COMPUTE: tl.constexpr):
    """(r cos 2 pi v, r sin 2 pi v) from one (u word, v word) pair, in COMPUTE (float32 or float64)."""
    t = -2.0 * tl.log(fsn1_uniform_u(wu, COMPUTE))
    if COMPUTE == tl.float64:
        r = tl.sqrt(t)
    else:
        r = tl.sqrt_rn(t)
    k = wv >> 8  # v = k 2^-24, k < 2^24
    q = (k + 2097152) >> 22  # round(4v) in 0..4: the quadrant
    f = k.to(tl.int32) - (q << 22).to(tl.int32)  # in [-2^21, 2^21], exact
    theta = f.to(COMPUTE) * 3.7450702829239286e-07  # pi / 2^23: theta in [-pi/4, pi/4]
    s = tl.sin(theta)
    c = tl.cos(theta)
    q = q & 3
    cv = tl.where(q == 0, c, tl.where(q == 1, -s, tl.where(q == 2, -c, s)))
    sv = tl.where(q == 0, s, tl.where(q == 1, c, tl.where(q == 2, -s, -c)))
    return r * cv, r * sv


@triton.jit
def fsn1_normals(first_block, sample, draw_lo, draw_hi, seed_lo, seed_hi, BLOCK: tl.constexpr,
                 COMPUTE: tl.constexpr):
    """The BLOCK normals of elements 4 first_block .. 4 first_block + BLOCK - 1 of one sample, in element order.

    first_block: uint32 scalar; sample, draw_lo/hi, seed_lo/hi: uint32 scalars; BLOCK a multiple of 4.
    BLOCK // 4 Philox calls; the four normals of each call land on four consecutive elements.
    """
    block = first_block + tl.arange(0, BLOCK // 4).to(tl.uint32)
    w0, w1, w2, w3 = fsn1_words(block, sample, draw_lo, draw_hi, seed_lo, seed_hi)
    z0, z1 = _box_muller(w0, w1, COMPUTE)
    z2, z3 = _box_muller(w2, w3, COMPUTE)
    # join(join(z0, z2), join(z1, z3))[g, i, j] = z_(2i + j): row-major flattening puts z_k at 4g + k.
    return tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), (BLOCK,))


# ----------------------------------------------------------------------------------------------------------------
# Debug kernels: expose the helpers to tests (exact words) and to the compile report.


@triton.jit
def _fsn1_words_debug_kernel(
    COORDS_ptr,  # (N, 6) int64: seed_lo, seed_hi, sample, draw_lo, draw_hi, block (each < 2^32)
    WORDS_ptr,  # (N, 4) int64 out: the four Philox words, as non-negative int64
    UV_ptr,  # (N, 4) float32 out: u0, v0, u1, v1 (from words (w0, w1) and (w2, w3))
    N,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    row = COORDS_ptr + i.to(tl.int64) * 6
    seed_lo = tl.load(row + 0, mask=ok, other=0).to(tl.uint32)
    seed_hi = tl.load(row + 1, mask=ok, other=0).to(tl.uint32)
    sample = tl.load(row + 2, mask=ok, other=0).to(tl.uint32)
    draw_lo = tl.load(row + 3, mask=ok, other=0).to(tl.uint32)
    draw_hi = tl.load(row + 4, mask=ok, other=0).to(tl.uint32)
    block = tl.load(row + 5, mask=ok, other=0).to(tl.uint32)
    w0, w1, w2, w3 = fsn1_words(block, sample, draw_lo, draw_hi, seed_lo, seed_hi)
    out = WORDS_ptr + i.to(tl.int64) * 4
    tl.store(out + 0, w0.to(tl.int64), mask=ok)
    tl.store(out + 1, w1.to(tl.int64), mask=ok)
    tl.store(out + 2, w2.to(tl.int64), mask=ok)
    tl.store(out + 3, w3.to(tl.int64), mask=ok)
    uv = UV_ptr + i.to(tl.int64) * 4
    tl.store(uv + 0, fsn1_uniform_u(w0, tl.float32), mask=ok)
    tl.store(uv + 1, fsn1_uniform_v(w1, tl.float32), mask=ok)
    tl.store(uv + 2, fsn1_uniform_u(w2, tl.float32), mask=ok)
    tl.store(uv + 3, fsn1_uniform_v(w3, tl.float32), mask=ok)


def fsn1_words_debug(seed, sample, draw, block) -> tuple[torch.Tensor, torch.Tensor]:
    """Philox words and uniforms of FSN1 at (seed, sample, draw, block): int sequences of one length N, or ints
    (repeated), uint64 seed/draw as Python ints. Returns words (N, 4) int64 holding the uint32 words and
    uniforms (N, 4) float32 [u0, v0, u1, v1] as the kernels compute them."""
    cols = (seed, sample, draw, block)
    n = max(len(v) if hasattr(v, "__len__") else 1 for v in cols)
    seed, sample, draw, block = ([int(x) for x in v] if hasattr(v, "__len__") else [int(v)] * n for v in cols)
    coords = torch.tensor(
        [[s & 0xFFFFFFFF, s >> 32, m, d & 0xFFFFFFFF, d >> 32, b] for s, m, d, b in zip(seed, sample, draw, block)],
        dtype=torch.int64,
    ).reshape(n, 6)
    words = torch.empty(n, 4, dtype=torch.int64)
    uniforms = torch.empty(n, 4, dtype=torch.float32)
    if n:
        BLOCK = 128
        _fsn1_words_debug_kernel[(triton.cdiv(n, BLOCK),)](coords, words, uniforms, n, BLOCK=BLOCK)
    return words, uniforms


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "draw_lo", "draw_hi"])
def _fsn1_normal_fwd_kernel(
    OUT_ptr,  # (B, M) float32/float64 out: OUT[n, j] = FSN1(seed, IDS[n], draw, j)
    IDS_ptr,  # (B,) int64 sample ids
    M,  # elements per sample
    seed_lo, seed_hi, draw_lo, draw_hi,  # int32 bit patterns of the uint64 seed and draw
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    sample = tl.load(IDS_ptr + n).to(tl.uint32)
    COMPUTE: tl.constexpr = OUT_ptr.dtype.element_ty
    z = fsn1_normals((pid * (BLOCK // 4)).to(tl.uint32), sample, draw_lo.to(tl.uint32, bitcast=True),
                     draw_hi.to(tl.uint32, bitcast=True), seed_lo.to(tl.uint32, bitcast=True),
                     seed_hi.to(tl.uint32, bitcast=True), BLOCK, COMPUTE)
    tl.store(OUT_ptr + n * M + j, z, mask=j < M)


def fsn1_normal_debug(out: torch.Tensor, seed: int, sample_ids: torch.Tensor, draw: int) -> torch.Tensor:
    """Fill contiguous out (B, M) float32/float64 with FSN1 normals at (seed, sample_ids (B,) int64, draw)."""
    batch, numel = out.shape
    if out.numel():
        BLOCK = 256
        with on_device(out):
            _fsn1_normal_fwd_kernel[(triton.cdiv(numel, BLOCK), batch)](
                out, sample_ids, numel, *split_u64(seed), *split_u64(draw), BLOCK=BLOCK)
    return out
