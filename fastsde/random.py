"""FSN1: the counter-based Gaussian noise stream every fastsde backend reproduces.

A noise value is a pure function of (seed, sample id n, draw id d, element index j within the sample):

    words = Philox4x32-10(counter=(j >> 2, n, d & 0xffffffff, d >> 32), key=(seed & 0xffffffff, seed >> 32))
    u = ((w0 >> 8) + 1) * 2**-24  in (0, 1],   v = (w1 >> 8) * 2**-24  in [0, 1)
    r = sqrt(-2 ln u);  z0 = r cos(2 pi v),  z1 = r sin(2 pi v);  (w2, w3) -> z2, z3 likewise
    element j takes z_(j & 3)

Philox4x32-10 is from Salmon et al., "Parallel random numbers: as easy as 1, 2, 3" (SC'11). This module is the
plain NumPy/PyTorch definition: the oracle the native, CUDA and Triton generators are tested against. It computes
in float64 and rounds once to the requested dtype.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["philox4x32", "fsn1_words", "fsn1_uniforms", "fsn1_normal_at", "fsn1_normal", "fsn1_normal_like",
           "MAX_ELEMENTS"]

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)

#: Elements per sample the stream addresses (counter word 0 holds j >> 2 in 32 bits).
MAX_ELEMENTS = 1 << 34


def philox4x32(counter: np.ndarray, key: tuple[int, int], rounds: int = 10) -> np.ndarray:
    """Philox4x32 block function. counter: (..., 4) integers < 2**32; returns (..., 4) uint32."""
    c = np.asarray(counter, dtype=np.uint64)
    c0, c1, c2, c3 = (c[..., i].copy() for i in range(4))
    k0 = np.full(c0.shape, key[0] & 0xFFFFFFFF, dtype=np.uint64)
    k1 = np.full(c0.shape, key[1] & 0xFFFFFFFF, dtype=np.uint64)
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = _M0 * c0  # 32 x 32 -> 64 bits: exact in uint64
        p1 = _M1 * c2
        c0, c1, c2, c3 = ((p1 >> _S32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK32)
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _check_ids(seed: int, draw: int) -> None:
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if not 0 <= int(draw) < 1 << 64:
        raise ValueError(f"draw must be in [0, 2**64), got {draw}")


def fsn1_words(seed: int, sample, draw: int, block) -> np.ndarray:
    """The four Philox words of counter block `block` (= element >> 2). sample, block broadcast; returns (..., 4)."""
    _check_ids(seed, draw)
    sample, block = np.broadcast_arrays(np.asarray(sample, dtype=np.uint64), np.asarray(block, dtype=np.uint64))
    counter = np.stack(
        [block, sample, np.full(block.shape, draw & 0xFFFFFFFF, np.uint64),
         np.full(block.shape, draw >> 32, np.uint64)],
        axis=-1,
    )
    return philox4x32(counter, (seed & 0xFFFFFFFF, seed >> 32))


def fsn1_uniforms(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) pairs from Philox words (..., 4): u in (0, 1], v in [0, 1), each (..., 2), exact in float64."""
    w = words.astype(np.float64)
    hi = np.floor(w / 256.0)  # w >> 8, exact
    u = (hi[..., 0::2] + 1.0) * 2.0**-24
    v = hi[..., 1::2] * 2.0**-24
    return u, v


def _box_muller(words: np.ndarray) -> np.ndarray:
    u, v = fsn1_uniforms(words)
    r = np.sqrt(-2.0 * np.log(u))
    z = np.empty(words.shape, dtype=np.float64)
    z[..., 0::2] = r * np.cos(2.0 * np.pi * v)
    z[..., 1::2] = r * np.sin(2.0 * np.pi * v)
    return z


def fsn1_normal_at(seed: int, sample, draw: int, element) -> np.ndarray:
    """Normals at arbitrary (sample, element) positions (broadcast arrays), float64."""
    element = np.asarray(element, dtype=np.uint64)
    words = fsn1_words(seed, sample, draw, element >> np.uint64(2))
    z = _box_muller(words)
    return np.take_along_axis(z, (element & np.uint64(3)).astype(np.int64)[..., None], axis=-1)[..., 0]


def fsn1_normal(seed: int, sample_ids, draw: int, numel: int, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Normals z[b, j] = FSN1(seed, sample_ids[b], draw, j) for j < numel, shape (len(sample_ids), numel)."""
    ids = np.asarray(torch.as_tensor(sample_ids).cpu().numpy() if torch.is_tensor(sample_ids) else sample_ids)
    ids = ids.astype(np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 32):
        raise ValueError(f"sample ids must be in [0, 2**32), got range [{ids.min()}, {ids.max()}]")
    if not 0 <= numel <= MAX_ELEMENTS:
        raise ValueError(f"numel per sample must be in [0, 2**34], got {numel}")
    blocks = (numel + 3) // 4
    words = fsn1_words(seed, ids[:, None], draw, np.arange(blocks, dtype=np.uint64)[None, :])
    z = _box_muller(words).reshape(ids.size, blocks * 4)[:, :numel]
    return torch.from_numpy(np.ascontiguousarray(z)).to(device=device, dtype=dtype)


def fsn1_normal_like(x: torch.Tensor, seed: int, draw: int, sample_ids=None) -> torch.Tensor:
    """FSN1 normals shaped like x (batch dim first); sample_ids default to 0..B-1."""
    if x.dim() < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    batch = x.shape[0]
    if sample_ids is None:
        sample_ids = np.arange(batch)
    elif len(sample_ids) != batch:
        raise ValueError(f"sample_ids must have length {batch} (the batch size of x), got {len(sample_ids)}")
    numel = x[0].numel() if batch else 0
    return fsn1_normal(seed, sample_ids, draw, numel, dtype=x.dtype, device=x.device).reshape(x.shape)
