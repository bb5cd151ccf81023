"""Controllable generation with unconditional score models (Song et al., ICLR 2021, section 5 and appendix I).

Inpainting: the known entries (mask = 1) are replaced after every update by a sample of the forward marginal of
the data at the current time, x <- x (1 - m) + (mean + std z) m, so the unknown entries are generated
consistently with them. Same API as score_sde's `get_pc_inpainter`; with a fused backend the projection runs
inside the update kernel (fastsde.ops.step.affine_step's mask/data variant) instead of as extra passes.
"""
from __future__ import annotations

import torch

from fastsde import sampling
from fastsde.noise import NoiseStream

__all__ = ["get_pc_inpainter"]


def get_pc_inpainter(sde, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                     continuous=False, denoise=True, eps=1e-5, *, backend="auto", seed=None, noise="fastsde",
                     sample_ids=None, progress=False):
    """PC inpainting: returns inpainter(model, data (B, ...), mask (B, ...)) -> samples (B, ...).

    mask is 1 where data is known and 0 where it is to be generated (binary masks are what score_sde uses; the
    formulas are applied as written for soft masks too). Predictors/correctors and options as get_pc_sampler.
    """
    backend = sampling._check_backend(backend)
    NoiseStream(noise, 0, sample_ids)
    predictor_cls = sampling._resolve(sampling._PREDICTORS, "predictor", predictor, sampling.NonePredictor)
    corrector_cls = sampling._resolve(sampling._CORRECTORS, "corrector", corrector, sampling.NoneCorrector)
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    predictor_cls(sde, lambda x, t: x, probability_flow)
    corrector_cls(sde, lambda x, t: x, snr, int(n_steps))

    def pc_inpainter(model, data, mask):
        if not isinstance(data, torch.Tensor) or data.dim() < 2:
            raise ValueError(f"data must be a (batch, ...) tensor of rank >= 2, got {getattr(data, 'shape', data)}")
        if not isinstance(mask, torch.Tensor) or mask.shape != data.shape:
            raise ValueError(f"mask must have data's shape {tuple(data.shape)}, got {tuple(getattr(mask, 'shape', ()))}")
        stream = NoiseStream(noise, seed, sample_ids)
        data = data.contiguous()
        mask = mask.to(dtype=data.dtype, device=data.device).contiguous()
        with torch.no_grad():
            prior = stream.prior(sde, tuple(data.shape), device=data.device, dtype=data.dtype)
            x = data * mask + prior * (1.0 - mask)
            x, x_mean = sampling._pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, int(n_steps),
                                          probability_flow, continuous, eps, backend, progress,
                                          projection=(data, mask))
            return inverse_scaler(x_mean if denoise else x)

    return pc_inpainter
