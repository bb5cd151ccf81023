"""Controllable generation with unconditional score models (Song et al., ICLR 2021, section 5 and appendix I).

Inpainting (`get_pc_inpainter`): the known entries (mask = 1) are replaced after every update by a sample of the
forward marginal of the data at the current time, x <- x (1 - m) + (mean + std z) m, so the unknown entries are
generated consistently with them. Same API as score_sde's `get_pc_inpainter`; with a fused backend the projection
runs inside the update kernel (fastsde.ops.step.affine_step's mask/data variant) instead of as extra passes.

Colorization (`get_pc_colorizer`, appendix I.2): an orthogonal colour transform COLOR_DECOUPLING (3, 3), first row
(1, 1, 1)/sqrt(3), maps each pixel's RGB to (gray, two colour axes). The gray axis is known, the other two are
generated: inpainting with the gray channel as the mask, run in the decoupled space.

Class-conditional sampling (`get_pc_conditional_sampler`, section 5 and appendix I.1): classifier guidance,
grad log p_t(x | y) = grad log p_t(x) + scale * grad log p_t(y | x), with a time-dependent classifier p_t(y | x)
that takes the score model's time labels. `ClassifierGuidedModel` folds the guidance into the score model's
output, so the unconditional PC sampler (and its fused backends) runs unchanged.

Both the inpainting and the colorization projections are score_sde's "replacement" method: exact when the known
and unknown parts are independent under the data distribution, an approximation otherwise (the known part is
re-noised independently of the path; e.g. a correlated Gaussian's conditional mean comes out shrunk towards the
prior mean by predictor-only sampling; Langevin corrector steps reduce the bias).
"""
from __future__ import annotations

import math
import numbers

import torch

from fastsde import sampling
from fastsde.sampling.pc import check_loop_mode, pc_loop
from fastsde.sampling.registry import check_pc_args, check_shape
from fastsde import sde as sde_lib
from fastsde._util import per_sample
from fastsde.noise import NoiseStream

__all__ = ["get_pc_inpainter", "get_pc_colorizer", "get_pc_conditional_sampler", "ClassifierGuidedModel",
           "COLOR_DECOUPLING", "decouple_colors", "couple_colors"]


def get_pc_inpainter(sde, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                     continuous=False, denoise=True, eps=1e-5, *, backend="auto", seed=None, noise="fastsde",
                     sample_ids=None, progress=False, keep_known=False, compile=False, capture=False):
    """PC inpainting: returns inpainter(model, data (B, ...), mask (B, ...)) -> samples (B, ...).

    mask is 1 where data is known and 0 where it is to be generated (binary masks are what score_sde uses; the
    formulas are applied as written for soft masks too). Predictors/correctors and options as get_pc_sampler.
    As in score_sde, the returned known entries are the last projection's marginal mean mean_coef(eps) data
    (data itself for VE, within O(eps) of it for VP/subVP); keep_known=True returns data there exactly instead
    (the result is composed as out (1 - mask) + data mask before inverse_scaler).
    """
    backend, predictor_cls, corrector_cls = check_pc_args(sde, predictor, corrector, snr, n_steps,
                                                           probability_flow, eps, backend, noise, sample_ids)
    mode = check_loop_mode(backend, noise, compile, capture, None)
    loops = {}  # the fused loop per model, reused across calls (compiled graphs)

    def pc_inpainter(model, data, mask):
        if not isinstance(data, torch.Tensor) or data.dim() < 2:
            raise ValueError(f"data must be a (batch, ...) tensor of rank >= 2, got {getattr(data, 'shape', data)}")
        if not isinstance(mask, torch.Tensor) or mask.shape != data.shape:
            raise ValueError(f"mask must have data's shape {tuple(data.shape)}, "
                             f"got {tuple(getattr(mask, 'shape', ()))}")
        stream = NoiseStream(noise, seed, sample_ids)
        data = data.contiguous()
        mask = mask.to(dtype=data.dtype, device=data.device).contiguous()
        with torch.no_grad():
            prior = stream.prior(sde, tuple(data.shape), device=data.device, dtype=data.dtype)
            x = data * mask + prior * (1.0 - mask)
            out = pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, int(n_steps), probability_flow,
                          continuous, eps, backend, progress, projection=(data, mask), denoise=denoise, mode=mode,
                          cache=loops)
            if keep_known:
                out = out * (1.0 - mask) + data * mask
            return inverse_scaler(out)

    return pc_inpainter


# ---------------------------------------------------------------------------------------------------------------
# Colorization

#: Rows: the gray axis (1, 1, 1)/sqrt(3), then two colour axes (1, -1, 0)/sqrt(2) and (1, 1, -2)/sqrt(6).
#: Orthogonal, so couple_colors (its transpose) inverts decouple_colors. Float64; cast on use.
COLOR_DECOUPLING = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]], dtype=torch.float64)
COLOR_DECOUPLING = COLOR_DECOUPLING / COLOR_DECOUPLING.norm(dim=1, keepdim=True)


def _check_rgb(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must be a (B, 3, ...) tensor, got {getattr(x, 'shape', type(x).__name__)}")


def decouple_colors(x: torch.Tensor) -> torch.Tensor:
    """y = M x per pixel: (B, 3, ...) RGB -> (B, 3, ...) (gray, colour, colour), M = COLOR_DECOUPLING."""
    _check_rgb("x", x)
    return torch.einsum("ji,bi...->bj...", COLOR_DECOUPLING.to(device=x.device, dtype=x.dtype), x)


def couple_colors(y: torch.Tensor) -> torch.Tensor:
    """x = M^T y per pixel, the inverse of decouple_colors: (B, 3, ...) -> (B, 3, ...) RGB."""
    _check_rgb("y", y)
    return torch.einsum("ji,bj...->bi...", COLOR_DECOUPLING.to(device=y.device, dtype=y.dtype), y)


class _DecoupledModel(torch.nn.Module):
    """A score model seen in the decoupled colour space: y -> M model(M^T y, labels).

    Exact for every SDE here: the drift is linear and the diffusion isotropic, so the reverse SDE of y = M x is the
    same SDE with score M score(M^T y), and the noise prediction of VP/subVP models (-std * score) rotates alike.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y, labels):
        return decouple_colors(self.model(couple_colors(y), labels))


def get_pc_colorizer(sde, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                     continuous=False, denoise=True, eps=1e-5, *, backend="auto", seed=None, noise="fastsde",
                     sample_ids=None, progress=False, compile=False, capture=False):
    """PC colorization (Song et al. appendix I.2): returns colorizer(model, gray_scale_img) -> samples (B, 3, ...).

    gray_scale_img, in the model's data range: (B, 1, ...) the gray image g, or (B, 3, ...) whose channel mean is
    the gray image (the gray image repeated three times, as score_sde takes it, or a colour image to recolour).
    The known part is its gray component y0 = (1, 1, 1)/sqrt(3) . x = sqrt(3) g per pixel; the two colour
    components are generated by inpainting in the decoupled space (decouple_colors) with the gray channel as
    the mask, on the model seen through that rotation. This is the inpainter's loop (fastsde.sampling.pc.pc_loop), so
    the projection fuses into the update kernel on fused backends.

    Output: the decoupled gray channel of the result (decouple_colors(out)[:, 0], before inverse_scaler) is
    mean_coef(eps) y0 to float rounding when denoise=True (exactly y0 for VE, 1 - O(eps) for VP/subVP), as the
    inpainter's known pixels are. The prior is drawn in the decoupled space (it is rotation invariant) and so is
    every noise draw: the same distribution as score_sde's colorizer, not the same numbers under noise="torch".
    """
    backend, predictor_cls, corrector_cls = check_pc_args(sde, predictor, corrector, snr, n_steps,
                                                           probability_flow, eps, backend, noise, sample_ids)
    mode = check_loop_mode(backend, noise, compile, capture, None)

    def pc_colorizer(model, gray_scale_img):
        img = gray_scale_img
        if (not isinstance(img, torch.Tensor) or img.dim() < 3 or img.shape[1] not in (1, 3)
                or not img.is_floating_point()):
            desc = (f"{tuple(img.shape)} {img.dtype}" if isinstance(img, torch.Tensor) else type(img).__name__)
            raise ValueError(f"gray_scale_img must be a floating (B, 1, ...) or (B, 3, ...) tensor of rank >= 3, "
                             f"got {desc}")
        if img.shape[1] == 3:
            known = decouple_colors(img)[:, :1]
        else:
            known = img * math.sqrt(3.0)
        shape = (img.shape[0], 3, *img.shape[2:])
        data = torch.zeros(shape, dtype=img.dtype, device=img.device)
        data[:, :1] = known
        mask = torch.zeros_like(data)
        mask[:, 0] = 1.0
        stream = NoiseStream(noise, seed, sample_ids)
        with torch.no_grad():
            prior = stream.prior(sde, shape, device=img.device, dtype=img.dtype)
            y = data * mask + prior * (1.0 - mask)
            y = pc_loop(sde, _DecoupledModel(model), y, stream, predictor_cls, corrector_cls, snr, int(n_steps),
                        probability_flow, continuous, eps, backend, progress, projection=(data, mask),
                        denoise=denoise, mode=mode)
            return inverse_scaler(couple_colors(y))

    return pc_colorizer


# ---------------------------------------------------------------------------------------------------------------
# Class-conditional sampling


def _check_class_labels(labels, batch: int | None = None) -> None:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.long tensor of class indices, got {type(labels).__name__}")
    if labels.dtype != torch.long:
        raise ValueError(f"labels must have dtype torch.long (class indices), got {labels.dtype}")
    if labels.dim() != 1 or (batch is not None and labels.shape[0] != batch):
        want = f"({batch},)" if batch is not None else "(B,)"
        raise ValueError(f"labels must have shape {want} (one class per sample), got {tuple(labels.shape)}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be class indices >= 0, got min {int(labels.min())}")


class ClassifierGuidedModel(torch.nn.Module):
    """A score model whose output get_score_fn turns into the guided score s(x, t) + scale grad log p_t(y | x).

    forward(x (B, ...), model_labels (B,)) -> output like model(x, model_labels): VE (the model gives the score)
    out + scale * grad; VP/subVP (score = -out / std) out - std * scale * grad, with std recovered from the time
    labels as get_score_parts' std_fn does (VP discrete: the DDPM table at long(labels); VP continuous and
    subVP: the marginal std at t = labels / 999). grad = grad_x log softmax(classifier(x, model_labels))[y],
    taken with autograd on a detached copy of x, so it works inside the samplers' no_grad.

    classifier(x, model_labels) -> logits (B, num_classes) takes the score model's time labels. labels: (B,)
    torch.long class indices y, checked against num_classes at the first call. scale: the guidance weight.
    """

    def __init__(self, model, classifier, sde, continuous, labels, scale=1.0):
        super().__init__()
        if not callable(model) or not callable(classifier):
            raise ValueError("model and classifier must be callables (x, model_labels) -> tensor")
        if not isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.VESDE)):
            raise ValueError(f"sde must be a VPSDE, subVPSDE or VESDE, got {type(sde).__name__}")
        _check_class_labels(labels)
        if not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite real number, got {scale!r}")
        self.model, self.classifier = model, classifier
        self.sde, self.continuous = sde, bool(continuous)
        self.labels, self.scale = labels, float(scale)
        self._max_label = int(labels.max()) if labels.numel() else -1

    def _std(self, model_labels: torch.Tensor) -> torch.Tensor:
        """std(t) float64 (B,) from the time labels, in get_score_parts' convention."""
        sde = self.sde
        if isinstance(sde, sde_lib.VPSDE) and not self.continuous:
            return sde.table("sqrt_1m_alphas_cumprod", model_labels.device)[model_labels.long()].double()
        t = model_labels.double() / 999
        return sde.marginal_prob(torch.zeros(t.shape[0], 1, dtype=torch.float64, device=t.device), t)[1]

    def classifier_grad(self, x: torch.Tensor, model_labels: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(y | x) (B, ...) like x, the class log-probabilities summed over the batch."""
        labels = self.labels.to(x.device)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},) (one class per sample), got "
                             f"{tuple(labels.shape)}")
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, model_labels)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier must return logits of shape ({x.shape[0]}, num_classes), got "
                                 f"{getattr(logits, 'shape', type(logits).__name__)}")
            if self._max_label >= logits.shape[1]:
                raise ValueError(f"labels must be < num_classes = {logits.shape[1]} (from the classifier's logits), "
                                 f"got max {self._max_label}")
            if not logits.requires_grad:
                raise ValueError("classifier output does not depend on x through autograd; guidance needs its gradient")
            log_p = torch.log_softmax(logits, dim=1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(log_p, x_in)
        return grad.to(x.dtype)

    def forward(self, x: torch.Tensor, model_labels: torch.Tensor) -> torch.Tensor:
        out = self.model(x, model_labels)
        if self.scale == 0.0:
            return out
        grad = self.classifier_grad(x, model_labels)
        if isinstance(self.sde, sde_lib.VESDE):  # the model output is the score
            return out + self.scale * grad.to(out.dtype)
        weight = (self._std(model_labels) * self.scale).to(out.dtype)
        return out - per_sample(weight, out) * grad.to(out.dtype)


def get_pc_conditional_sampler(sde, classifier, shape, predictor, corrector, inverse_scaler, snr, n_steps=1,
                               probability_flow=False, continuous=False, denoise=True, eps=1e-5, device="cpu", *,
                               scale=1.0, backend="auto", seed=None, noise="fastsde", sample_ids=None,
                               dtype=torch.float32, progress=False, compile=False, capture=False):
    """Class-conditional PC sampling with classifier guidance (Song et al. section 5, appendix I.1).

    Returns conditional_sampler(score_model, labels (shape[0],) torch.long) -> samples (shape). The score is
    s(x, t) + scale * grad_x log p_t(y | x) with p_t(y | x) = softmax(classifier(x, model_labels)), the classifier
    taking the score model's time labels (get_score_parts' labels_fn). It runs get_pc_sampler on
    ClassifierGuidedModel(score_model, ...), so every backend, predictor and corrector works as unconditionally
    (each score evaluation also costs one classifier forward and backward). Options as get_pc_sampler; scale = 0
    is the unconditional sampler.
    """
    shape = check_shape(shape)
    if not callable(classifier):
        raise ValueError(f"classifier must be a callable (x, model_labels) -> logits, got {type(classifier).__name__}")
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.VESDE)):
        raise ValueError(f"sde must be a VPSDE, subVPSDE or VESDE, got {type(sde).__name__}")
    if not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number, got {scale!r}")
    if compile is True or capture is True:  # (non-bools are refused by get_pc_sampler)
        raise ValueError("compile=True/capture=True cannot run classifier guidance: its gradient (torch.autograd.grad "
                         "in every model call) is not traceable by torch.compile(fullgraph=True); use compile=False")
    sampler = sampling.get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=n_steps,
                                      probability_flow=probability_flow, continuous=continuous, denoise=denoise,
                                      eps=eps, device=device, backend=backend, seed=seed, noise=noise,
                                      sample_ids=sample_ids, dtype=dtype, progress=progress, compile=compile,
                                      capture=capture)

    def conditional_sampler(score_model, labels):
        _check_class_labels(labels, shape[0])
        guided = ClassifierGuidedModel(score_model, classifier, sde, continuous, labels.to(device), scale)
        return sampler(guided)[0]

    return conditional_sampler
