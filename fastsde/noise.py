"""Where a sampler's Gaussian noise comes from.

`NoiseStream("fastsde", seed)` draws from the FSN1 counter-based stream (fastsde/random.py): draw id 0 is the
prior sample, and sampler step i gives its corrector iterations draw ids 1 + i (n_steps + 1) + j and its predictor
1 + i (n_steps + 1) + n_steps, so a sample's noise depends only on (seed, its sample id, step), never on batch
size, batch composition or which predictor/corrector consumed earlier draws.

`NoiseStream("torch")` draws with torch.randn / torch.randn_like in the original score_sde order (prior, then per
step: corrector draws, predictor draw), so under the same torch.manual_seed it reproduces the original's numbers.
"""
from __future__ import annotations

import torch

from fastsde import random as fsn1

__all__ = ["NoiseStream", "NOISE_KINDS"]

NOISE_KINDS = ("fastsde", "torch")


class NoiseStream:
    """A source of standard normal tensors shaped like the sampler state."""

    def __init__(self, kind: str = "fastsde", seed: int | None = None, sample_ids=None):
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "fastsde" and seed is None:
            # Unseeded: take a 64-bit seed from torch's global generator, so torch.manual_seed still governs it.
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if seed is not None and not 0 <= int(seed) < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        self.seed = None if seed is None else int(seed)
        self.sample_ids = None if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.int64)
        self.draw = 0

    def seek(self, draw: int) -> None:
        """Set the draw id the next `normal_like` uses (FSN1 only; torch draws are sequential)."""
        self.draw = int(draw)

    def _ids(self, batch: int) -> torch.Tensor:
        if self.sample_ids is None:
            return torch.arange(batch)
        if self.sample_ids.shape != (batch,):
            raise ValueError(f"sample_ids must have shape ({batch},), got {tuple(self.sample_ids.shape)}")
        return self.sample_ids

    def normal_like(self, x: torch.Tensor) -> torch.Tensor:
        """A standard normal tensor with x's shape, dtype and device; advances the draw id."""
        if self.kind == "torch":
            return torch.randn_like(x)
        z = fsn1.fsn1_normal_like(x, self.seed, self.draw, self._ids(x.shape[0]))
        self.draw += 1
        return z

    def prior(self, sde, shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """A sample of the SDE's prior p_T with the given shape (draw id 0)."""
        if self.kind == "torch":
            return sde.prior_sampling(shape).to(device=device, dtype=dtype)
        self.seek(0)
        return sde.prior_from_normal(self.normal_like(torch.empty(shape, device=device, dtype=dtype)))
