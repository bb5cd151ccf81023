"""Where a sampler's Gaussian noise comes from, and which draw id each noise draw of a sampler loop uses.

`NoiseStream("fastsde", seed)` draws from the FSN1 counter-based stream (fastsde.random is its specification;
draws go through fastsde.ops.fsn1_normal on the stream's backend, the prior included). `DrawPlan` assigns the draw
ids: 0 is the prior sample, and step i owns a block of ids, so a sample's noise depends only on (seed, its sample
id, step), never on batch size, batch composition or which predictor/corrector consumed earlier draws.

`NoiseStream("torch")` draws with torch.randn / torch.randn_like in the original score_sde order (prior, then per
step: corrector draws, predictor draw), so under the same torch.manual_seed it reproduces the original's numbers.
"""
from __future__ import annotations

import torch

from fastsde import ops
from fastsde.ops.checks import as_u64

__all__ = ["NoiseStream", "NOISE_KINDS", "DrawPlan"]

NOISE_KINDS = ("fastsde", "torch")


class DrawPlan:
    """The draw ids of a sampler loop with `n_steps` corrector iterations per step (every loop uses this one plan).

    Id 0 is the prior. Step i owns ids base(i) .. base(i) + per_step - 1 with base(i) = 1 + i per_step:
      without projection (per_step = n_steps + 1): corrector iteration j at base + j, the predictor at base + n_steps;
      with the inpainting projection (per_step = n_steps + 3): corrector iterations at base + j, the projection after
      the corrector at base + n_steps, the predictor at base + n_steps + 1, its projection at base + n_steps + 2.
    The executor's PC program (fastsde.sampling.pc.pc_program) takes each instruction's id from here as a constant.
    """

    PRIOR = 0

    def __init__(self, n_steps: int, projection: bool = False):
        self.n_steps, self.projection = int(n_steps), bool(projection)
        self.per_step = self.n_steps + (3 if projection else 1)

    def base(self, i: int) -> int:
        return 1 + i * self.per_step

    def corrector(self, i: int, j: int) -> int:
        return self.base(i) + j

    def corrector_projection(self, i: int) -> int:
        return self.base(i) + self.n_steps

    def predictor(self, i: int) -> int:
        return self.base(i) + self.n_steps + (1 if self.projection else 0)

    def predictor_projection(self, i: int) -> int:
        return self.base(i) + self.n_steps + 2


class NoiseStream:
    """A source of standard normal tensors shaped like the sampler state."""

    def __init__(self, kind: str = "fastsde", seed: int | None = None, sample_ids=None, backend: str = "auto"):
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "fastsde" and seed is None:
            # Unseeded: take a 64-bit seed from torch's global generator, so torch.manual_seed still governs it.
            seed = int(torch.randint(0, 2**62, (1,)).item())
        if seed is not None:
            seed = as_u64("seed", seed)  # 3.7, "3" and True are refused, not truncated
        self.seed = None if seed is None else int(seed)
        self.sample_ids = None if sample_ids is None else torch.as_tensor(sample_ids, dtype=torch.int64)
        self.draw = 0
        # FSN1 is the same stream on every backend; triton has no standalone draw op, so its loops draw with "auto"
        self.backend = backend if backend in ops.fsn1.BACKENDS else "auto"

    def seek(self, draw: int) -> None:
        """Set the draw id the next `normal_like` uses (FSN1 only; torch draws are sequential)."""
        self.draw = int(draw)

    def sample_ids_for(self, batch: int) -> torch.Tensor:
        """The global sample ids (batch,) int64 of a batch: the given sample_ids, or 0..batch-1."""
        return self._ids(batch)

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
        batch = x.shape[0]
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        z = torch.empty(batch, x[0].numel() if batch else 0, dtype=dtype, device=x.device)
        ops.fsn1_normal(z, self.seed, self._ids(batch), self.draw, backend=self.backend)
        self.draw += 1
        return z.reshape(x.shape).to(x.dtype)

    def prior(self, sde, shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """A sample of the SDE's prior p_T with the given shape (draw id 0)."""
        if self.kind == "torch":
            return sde.prior_sampling(shape).to(device=device, dtype=dtype)
        self.seek(DrawPlan.PRIOR)
        return sde.prior_from_normal(self.normal_like(torch.empty(shape, device=device, dtype=dtype)))

    def start(self, sde, shape, z=None, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """A sampler's initial state: a prior sample (draw id 0), or the caller's z (checked to have `shape`), as a
        new tensor on `device` in `dtype`."""
        if z is None:
            return self.prior(sde, shape, device=device, dtype=dtype)
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor of shape {tuple(shape)} or None, got {type(z).__name__}")
        if tuple(z.shape) != tuple(shape):
            raise ValueError(f"z must have shape {tuple(shape)}, got {tuple(z.shape)}")
        return z.to(device=device, dtype=dtype).clone()
