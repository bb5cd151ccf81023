"""Fused sampler-step ops: validate, then dispatch to a backend (reference, native, triton).

    affine_step:    x_mean = a x + b score;  x' = x_mean + c z           (every VE/VP/subVP predictor, ALD, ODE steps)
                    [+ inpainting projection: x' = x'(1-m) + (p data + q z2) m, x_mean = x'(1-m) + p data m]
    langevin_step:  pass 1 reduces ||score||, ||z|| per sample; host: eps = 2 alpha (snr ||z|| / ||score||)^2;
                    pass 2 = affine_step(1, eps, sqrt(2 eps)) regenerating the same z from its counters.

Bytes per element, float32: affine_step reads x, score and writes x: 12 B (+4 B x_mean, +4 B explicit noise,
+8 B mask and data); langevin_step reads score (pass 1) then x, score and writes x: 16 B. The noise itself is
generated in registers from FSN1 (seed, sample id, draw id, element), never stored.

Mixed precision: `score` (and affine_combine_step's outputs) may be narrower than x -- float16 or bfloat16 beside
a float32 x, float32 beside a float64 x (ops.checks.score_dtypes) -- so a half-precision model's output is read by
the same single pass (2 B/elem for the score: 10 B/elem for affine_step), converted exactly as it is loaded; the
update itself runs in x's compute type.
"""
from __future__ import annotations

import torch

from fastsde import random as _random
from fastsde.ops.checks import (as_u64, check_float_tensor, check_like, check_no_autograd, check_outputs_distinct,
                                check_score, i64_bits, overlaps, same_view, score_dtypes)
from fastsde.ops.dispatch import register, resolve
from fastsde.reference import step as _ref

__all__ = ["affine_step", "langevin_step", "step_sq_norms", "affine_combine_step", "CombineSteps",
           "langevin_scratch", "MAX_OUTPUTS"]



def _coef(name, v, x) -> torch.Tensor:
    """A per-sample coefficient as float64 (B,) or (1,) on x's device."""
    if isinstance(v, (int, float)):
        return torch.full((1,), float(v), dtype=torch.float64, device=x.device)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a float or a tensor of shape ({x.shape[0]},), got {type(v).__name__}")
    v = v.reshape(-1) if v.dim() == 0 else v
    if v.dim() != 1 or v.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{name} must have shape ({x.shape[0]},) or (1,), got {tuple(v.shape)}")
    return v.to(device=x.device, dtype=torch.float64).contiguous()


def _noise_args(x, noise, seed, sample_ids, draw):
    """Validated (noise, seed, sample_ids, draw): either an explicit tensor or FSN1 coordinates."""
    batch = x.shape[0]
    if noise is not None:
        check_like("noise", noise, x)
        return noise, 0, torch.zeros(batch, dtype=torch.int64, device=x.device), 0
    if seed is None:
        raise ValueError("a noisy step needs noise= or seed= (with optional sample_ids=, draw=)")
    seed, draw = as_u64("seed", seed), as_u64("draw", draw)
    if sample_ids is None:
        sample_ids = torch.arange(batch, device=x.device)
    sample_ids = torch.as_tensor(sample_ids, device=x.device)
    if sample_ids.dtype.is_floating_point or sample_ids.dtype == torch.bool or sample_ids.shape != (batch,):
        raise ValueError(f"sample_ids must be integers of shape ({batch},), got {sample_ids.dtype} "
                         f"{tuple(sample_ids.shape)}")
    sample_ids = sample_ids.to(torch.int64)
    if batch and not torch.compiler.is_compiling() and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        lo, hi = int(sample_ids.min()), int(sample_ids.max())
        if lo < 0 or hi >= 1 << 32:
            raise ValueError(f"sample_ids must be in [0, 2**32), got values in [{lo}, {hi}]")
    return None, seed, sample_ids, draw


def _check_state(x, score):
    check_float_tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must be (batch, ...), got shape {tuple(x.shape)}")
    if x[0].numel() > _random.MAX_ELEMENTS if x.shape[0] else False:
        raise ValueError(f"x has more than 2**34 elements per sample: {tuple(x.shape)}")
    check_score("score", score, x)


def affine_step(x, score, a, b, c=None, *, noise=None, seed=None, sample_ids=None, draw=0, out=None,
                x_mean_out=None, mask=None, data=None, data_a=None, data_c=None, data_draw=None,
                backend="auto"):
    """x' = a x + b score + c z (Song et al. eqs. 46-47 and the Euler–Maruyama step); returns x' (B, ...).

    x, score: (B, ...) float tensors, score in x's dtype or a narrower one (module docstring); a, b, c: floats or
    (B,) per-sample coefficients (float64 on the host);
    c=None: no noise (probability-flow steps). Noise: `noise=` (B, ...) or FSN1 at (seed, sample_ids, draw).
    out may be x (in place); x_mean_out receives a x + b score. With mask (B, ...) and data (B, ...), the
    inpainting projection follows: x' <- x'(1-m) + (data_a data + data_c z2) m with z2 drawn at data_draw,
    x_mean <- x'(1-m) + data_a data m (score_sde's controllable sampler).
    """
    _check_state(x, score)
    check_no_autograd("affine_step", dict(x=x, score=score, a=a, b=b, c=c, noise=noise, out=out,
                                          x_mean_out=x_mean_out, mask=mask, data=data))
    a, b = _coef("a", a, x), _coef("b", b, x)
    c = None if c is None else _coef("c", c, x)
    z, seed_, ids, draw_ = _noise_args(x, noise, seed, sample_ids, draw) if c is not None else (None, 0, None, 0)
    if ids is None:
        ids = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    if out is not None:
        check_like("out", out, x)
    if x_mean_out is not None:
        check_like("x_mean_out", x_mean_out, x)
    check_outputs_distinct({"out": out, "x_mean_out": x_mean_out},
                           {"x": x, "score": score, "noise": noise, "mask": mask, "data": data})
    project = mask is not None or data is not None
    if project:
        if mask is None or data is None or data_a is None or data_c is None or data_draw is None:
            raise ValueError("the inpainting projection needs mask=, data=, data_a=, data_c= and data_draw=")
        check_like("mask", mask, x)
        check_like("data", data, x)
        if noise is not None or seed is None:
            raise ValueError("the inpainting projection draws its noise from FSN1: pass seed=, not noise=")
        data_a, data_c = _coef("data_a", data_a, x), _coef("data_c", data_c, x)
        data_draw = as_u64("data_draw", data_draw)
        if c is None:  # a noise-free step still needs the FSN1 coordinates for the projection's draw
            _, seed_, ids, _ = _noise_args(x, None, seed, sample_ids, 0)
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    name, impl = resolve("affine_step", backend, x.device)
    impl(out, x, score, a, b, c, z, seed_, ids, draw_, x_mean_out,
         mask if project else None, data if project else None, data_a if project else None,
         data_c if project else None, data_draw if project else 0)
    return out


def step_sq_norms(score, *, noise=None, seed=None, sample_ids=None, draw=0, backend="auto") -> torch.Tensor:
    """Per-sample squared L2 norms of score and of the step's noise z: (B, 2) float64 [||score||^2, ||z||^2].

    Explicit `noise` is state-like: score's dtype, or the wider state's beside a narrower score (module docstring)."""
    _check_state(score, score)
    check_no_autograd("step_sq_norms", dict(score=score, noise=noise))
    if noise is not None:
        check_score("score", score, noise, "noise")
    z, seed_, ids, draw_ = _noise_args(noise if noise is not None else score, noise, seed, sample_ids, draw)
    if score.numel() == 0:
        return torch.zeros(score.shape[0], 2, dtype=torch.float64, device=score.device)
    name, impl = resolve("step_sq_norms", backend, score.device)
    return impl(score, z, seed_, ids, draw_)


def langevin_step(x, score, snr, alpha, *, noise=None, seed=None, sample_ids=None, draw=0, per_sample_norms=False,
                  score_scale=None, out=None, x_mean_out=None, backend="auto", **projection):
    """One Langevin corrector iteration (Song et al. algorithm 5, score_sde's batch-mean norms); returns x'.

    eps = 2 alpha (snr ||z|| / ||s||)^2 with ||.|| the batch mean of per-sample L2 norms (or per sample with
    per_sample_norms=True); x_mean = x + eps s; x' = x_mean + sqrt(2 eps) z. alpha: float or (B,).
    s = score_scale * score when score_scale (float or (B,)) is given: a noise-predicting model's output with
    score_scale = -1/std, folded into the coefficients instead of a separate pass. `projection` keywords (mask,
    data, data_a, data_c, data_draw) add affine_step's inpainting projection to the update pass.
    """
    _check_state(x, score)
    check_no_autograd("langevin_step", dict(x=x, score=score, noise=noise, out=out, x_mean_out=x_mean_out))
    if noise is not None:
        check_like("noise", noise, x)
    if out is not None:
        check_like("out", out, x)
    if x_mean_out is not None:
        check_like("x_mean_out", x_mean_out, x)
    check_outputs_distinct({"out": out, "x_mean_out": x_mean_out}, {"x": x, "score": score, "noise": noise})
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    sq = step_sq_norms(score, noise=noise, seed=seed, sample_ids=sample_ids, draw=draw, backend=backend)
    norms = sq.sqrt()
    gn, zn = norms[:, 0], norms[:, 1]
    scale = None if score_scale is None else _coef("score_scale", score_scale, x)
    if scale is not None:
        gn = gn * scale.abs()
    if not per_sample_norms:
        gn, zn = gn.mean(), zn.mean()
    step = (snr * zn / gn) ** 2 * 2 * _coef("alpha", alpha, x)
    b = step if scale is None else step * scale
    return affine_step(x, score, 1.0, b, torch.sqrt(2 * step), noise=noise, seed=seed, sample_ids=sample_ids,
                       draw=draw, out=out, x_mean_out=x_mean_out, backend=backend, **projection)


# ----------------------------------------------------------------------------------------------------------------
# Backends. Each receives validated arguments: out, x, score, a, b, c (float64 (B,)|(1,)|None), noise|None,
# seed (uint64 int), sample_ids (int64 (B,)), draw (uint64 int), x_mean_out|None, mask|None, data|None,
# data_a|None, data_c|None, data_draw.


@register("affine_step", "reference")
def _affine_step_reference(out, x, score, a, b, c, noise, seed, ids, draw, x_mean_out, mask, data, data_a, data_c,
                           data_draw):
    result = _ref.affine_step(x, score, a, b, c, noise=noise, seed=seed, sample_ids=ids.cpu(), draw=draw,
                              x_mean_out=x_mean_out, mask=mask, data=data, data_a=data_a, data_c=data_c,
                              data_draw=data_draw)
    out.copy_(result)


@register("step_sq_norms", "reference")
def _step_sq_norms_reference(score, noise, seed, ids, draw):
    return _ref.step_sq_norms(score, noise=noise, seed=seed, sample_ids=ids.cpu(), draw=draw)


def _contig(t):
    return None if t is None else t.contiguous()


@register("affine_step", "native")
def _affine_step_native(out, x, score, a, b, c, noise, seed, ids, draw, x_mean_out, mask, data, data_a, data_c,
                        data_draw):
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    xm = x_mean_out
    xm_target = None if xm is None else (xm if xm.is_contiguous()
                                         else torch.empty_like(xm, memory_format=torch.contiguous_format))
    torch.ops.fastsde.affine_step_(target, x.contiguous(), score.contiguous(), a, b, c, _contig(noise),
                                   i64_bits(seed), ids, i64_bits(draw), xm_target, _contig(mask), _contig(data),
                                   data_a, data_c, i64_bits(data_draw))
    if target is not out:
        out.copy_(target)
    if xm is not None and xm_target is not xm:
        xm.copy_(xm_target)


@register("step_sq_norms", "native")
def _step_sq_norms_native(score, noise, seed, ids, draw):
    return torch.ops.fastsde.step_sq_norms(score.contiguous(), _contig(noise), i64_bits(seed), ids, i64_bits(draw))


@register("affine_step", "triton")
def _affine_step_triton(*args):
    from fastsde.kernels import step as _kernels

    _kernels.affine_step(*args)


@register("step_sq_norms", "triton")
def _step_sq_norms_triton(*args):
    from fastsde.kernels import step as _kernels

    return _kernels.step_sq_norms(*args)


# ----------------------------------------------------------------------------------------------------------------
# affine_combine_step: the update of the few-step solvers (fastsde.solvers), x' = a x + sum_k b_k D_k + c z with up to
# MAX_OUTPUTS stored model outputs D_k, one pass over memory on every backend (native: the affine-step kernels
# with up to three score pointers, fastsde::affine_combine_). Bytes per element, float32: (2 + K) x 4 B for K
# outputs (reads x and the D_k, writes x'), +4 B for explicit noise; the noise is made in registers.

MAX_OUTPUTS = 3


def _check_outputs(x, outputs, b, out):
    if not isinstance(outputs, (list, tuple)) or len(outputs) > MAX_OUTPUTS:
        raise ValueError(f"outputs must be a list of at most {MAX_OUTPUTS} tensors like x, got "
                         f"{type(outputs).__name__}"
                         + (f" of length {len(outputs)}" if isinstance(outputs, (list, tuple)) else ""))
    if not isinstance(b, (list, tuple)) or len(b) != len(outputs):
        raise ValueError(f"b must be a list with one coefficient per output ({len(outputs)}), got "
                         f"{len(b) if isinstance(b, (list, tuple)) else type(b).__name__}")
    for k, o in enumerate(outputs):
        check_score(f"outputs[{k}]", o, x)
        # not even as the same view: a model output is never the update's
        if isinstance(out, torch.Tensor) and overlaps(o, out):
            raise ValueError(f"outputs[{k}] must not share memory with out: expected separate storage, got "
                             f"{'the same view' if same_view(o, out) else 'a partial overlap'}")


def affine_combine_step(x, outputs, a, b, c=None, *, noise=None, seed=None, sample_ids=None, draw=0, out=None,
                        backend="auto"):
    """x' = a x + sum_k b[k] outputs[k] + c z (every few-step solver update, fastsde.solvers); returns x' (B, ...).

    x: (B, ...) float; outputs: list of 0 to 3 tensors like x, each in x's dtype or a narrower one (module
    docstring: a half-precision model's output); a, c: floats
    or (B,)/(1,) coefficients (float64 on the host); b: one such coefficient per output; c=None: no noise. Noise:
    `noise=` (B, ...) or FSN1 at (seed, sample_ids, draw). out may be x (in place), never one of the outputs.
    """
    _check_state(x, x)
    _check_outputs(x, outputs, b, out)
    check_no_autograd("affine_combine_step", dict(x=x, noise=noise, out=out, a=a, c=c,
                                                  **{f"outputs[{k}]": o for k, o in enumerate(outputs)}))
    a = _coef("a", a, x)
    b = [_coef(f"b[{k}]", v, x) for k, v in enumerate(b)]
    c = None if c is None else _coef("c", c, x)
    z, seed_, ids, draw_ = _noise_args(x, noise, seed, sample_ids, draw) if c is not None else (None, 0, None, 0)
    if ids is None:
        ids = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    if out is not None:
        check_like("out", out, x)
        # out may be x itself (in place, as affine_step), never a partial overlap of x or the noise
        check_outputs_distinct({"out": out}, {"x": x, "noise": noise})
    else:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    _, impl = resolve("affine_combine_step", backend, x.device)
    impl(out, x, list(outputs), a, b, c, z, seed_, ids, draw_)
    return out


@register("affine_combine_step", "reference")
def _affine_combine_step_reference(out, x, outputs, a, b, c, noise, seed, ids, draw):
    out.copy_(_ref.affine_combine_step(x, outputs, a, b, c, noise=noise, seed=seed, sample_ids=ids.cpu(), draw=draw))


@register("affine_combine_step", "native")
def _affine_combine_step_native(out, x, outputs, a, b, c, noise, seed, ids, draw):
    if not outputs:  # x' = a x + c z, with a zero tensor as the output (x with b = 0 would turn an inf into NaN)
        outputs, b = [torch.zeros_like(x)], [torch.zeros(1, dtype=torch.float64, device=x.device)]
    # the kernel reads every output in one dtype: a mixed list (a half model output beside state-dtype history)
    # runs in the state's
    dtype = outputs[0].dtype if all(o.dtype == outputs[0].dtype for o in outputs) else x.dtype
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    torch.ops.fastsde.affine_combine_(target, x.contiguous(), [o.to(dtype).contiguous() for o in outputs], a, b, c,
                                      _contig(noise), i64_bits(seed), ids, i64_bits(draw))
    if target is not out:
        out.copy_(target)


@register("affine_combine_step", "triton")
def _affine_combine_step_triton(out, x, outputs, a, b, c, noise, seed, ids, draw):
    from fastsde.kernels import step as _kernels

    if not outputs:  # x' = a x + c z (module comment of the native twin)
        outputs, b = [torch.zeros_like(x)], [torch.zeros(1, dtype=torch.float64, device=x.device)]
    dtype = outputs[0].dtype if all(o.dtype == outputs[0].dtype for o in outputs) else x.dtype
    _kernels.affine_combine_step(out, x, [o.to(dtype) for o in outputs], a, b, c, noise, seed, ids, draw)


class CombineSteps:
    """Unchecked affine_combine_step on contiguous buffers like one state x (FSN1 noise): the solver loop's entry.

    The buffers, seed and sample ids are checked once here; `combine` then calls the backend with coefficients the
    caller tabulated: `coefs` = (a, [b_0, ..], c) as float64 (1,) views on x's device (c None when noiseless). The
    seed sits in the 0-d tensor `seed_bits` on x's device (native and Triton: read by the kernel when it runs, so a
    compiled step has no seed to guard on and a recorded graph serves any seed after a copy into it).
    """

    def __init__(self, x, seed, sample_ids, backend="auto"):
        _check_state(x, x)
        if not x.is_contiguous():
            raise ValueError("CombineSteps needs a contiguous x")
        _, seed, ids, _ = _noise_args(x, None, 0 if seed is None else seed, sample_ids, 0)
        self.shape, self.dtype, self.device = x.shape, x.dtype, x.device
        self.score_dtypes = score_dtypes(x.dtype)
        self.seed, self.ids = seed, ids.contiguous()
        self.seed_bits = torch.tensor(i64_bits(seed), dtype=torch.int64, device=x.device)
        self.backend, self._impl = resolve("affine_combine_step", backend, x.device)
        self._affine = resolve("affine_step", self.backend, x.device)[1]
        self._norms = resolve("step_sq_norms", self.backend, x.device)[1]
        self.native = self.backend == "native"
        self._zero = torch.zeros(1, dtype=torch.float64, device=x.device)
        self._zeros = None

    def set_seed(self, seed) -> None:
        """A new seed for the next combines (a copy into seed_bits: recorded graphs stay valid)."""
        self.seed = as_u64("seed", seed)
        self.seed_bits.fill_(i64_bits(self.seed))

    def accepts(self, t) -> bool:
        """Whether `t` may take the unchecked path (x's shape and device, a score dtype, contiguous)."""
        return (isinstance(t, torch.Tensor) and t.shape == self.shape and t.dtype in self.score_dtypes
                and t.device == self.device and t.is_contiguous())

    def combine(self, out, x, outputs, coefs, draw, x_mean=None, proj=None, noise=None):
        """out <- a x + sum_k b_k outputs[k] (+ c z(draw) when c is not None); coefs as in the class docstring.
        x_mean: also write the noise-free part there; proj (mask, data, data_a, data_c, data_draw): score_sde's
        inpainting projection in the same pass (at most one output then); noise: an explicit z instead of FSN1."""
        a, b, c = coefs[:3]
        if not outputs:  # x' = a x + c z (0 * inf would be NaN with x as the output)
            if self._zeros is None:
                self._zeros = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
            outputs, b = [self._zeros], [self._zero]
        mask, data, data_a, data_c, data_draw = proj if proj is not None else (None, None, None, None, 0)
        if self.native:
            torch.ops.fastsde.affine_combine_(out, x, outputs, a, b, c, noise, 0, self.ids, i64_bits(draw),
                                              self.seed_bits, x_mean, mask, data, data_a, data_c,
                                              i64_bits(data_draw))
            return
        # Triton reads the seed from seed_bits when the kernel runs (no Python int for a compiled graph to guard on,
        # none for a recorded graph to freeze); the reference backend takes it on the host.
        seed = self.seed_bits if self.backend == "triton" else self.seed
        if x_mean is None and proj is None:
            self._impl(out, x, list(outputs), a, list(b), c, noise, seed, self.ids, draw)
            return
        if len(outputs) != 1:
            raise ValueError("x_mean and the projection go with a single-output combine")
        self._affine(out, x, outputs[0], a, b[0], c, noise, seed, self.ids, draw, x_mean, mask, data, data_a, data_c,
                     data_draw)

    def freq_combine(self, out, x, score, a, b, c, draw) -> None:
        """out <- a x + b score + c z(draw) per frequency (fastsde.ops.freq_step): a, b, c (P,) in x's compute type on
        its device, c None without noise; out may be x. Native and Triton read the seed from seed_bits."""
        from fastsde.ops import freq_step as _freq

        score = _freq.kernel_score(x, score)
        if self.native:
            torch.ops.fastsde.freq_step_(out, x, score, a, b, c, self.seed_bits, self.ids, i64_bits(draw))
        elif self.backend == "triton":
            from fastsde.kernels.freq_step import freq_step_triton

            freq_step_triton(x, score, a, b, c, self.seed_bits, self.ids, draw, out=out)
        else:
            out.copy_(_freq.freq_step(x, score, a, b, c, seed=self.seed, sample_ids=self.ids, draw=draw,
                                      backend="reference"))

    def langevin(self, x, x_mean, scratch, score, coefs, snr, draw, proj=None, noise=None):
        """One Langevin corrector iteration in place on x and x_mean (score_sde's batch-mean norms), the step size
        computed on the device: coefs (4,) float64 [alpha, scale, data_a, data_c] (score = scale * `score`),
        scratch: langevin_scratch(x); proj (mask, data, data_draw) or None; noise: an explicit z instead of FSN1.
        Nothing is read on the host."""
        mask, data, data_draw = proj if proj is not None else (None, None, 0)
        if self.native:
            torch.ops.fastsde.langevin_update_(x, x_mean, scratch, score, coefs, snr, self.seed_bits, self.ids,
                                               i64_bits(draw), noise, mask, data, i64_bits(data_draw))
            return
        seed = self.seed_bits if self.backend == "triton" else self.seed
        # the step size from the batch means on the device, into the scratch's tail with out= ops: no host read,
        # and no temporaries beyond the norms kernel's output
        means, t = scratch[-3:-1], scratch[-1:]
        torch.mean(self._norms(score, noise, seed, self.ids, draw).sqrt_(), 0, out=means)  # ||s||, ||z|| means
        torch.abs(coefs[1:2], out=t)
        torch.mul(means[0:1], t, out=t)
        torch.div(means[1:2], t, out=t)  # a zero score: inf (nan with a zero noise), as score_sde divides
        t.mul_(snr).square_().mul_(2.0).mul_(coefs[0:1])  # eps = 2 alpha (snr ||z|| / ||s||)^2
        scratch[0:1].fill_(1.0)
        torch.mul(t, coefs[1:2], out=scratch[1:2])
        torch.mul(t, 2.0, out=scratch[2:3]).sqrt_()
        da, dc = (coefs[2:3], coefs[3:4]) if proj is not None else (None, None)
        self._affine(x, x, score, scratch[0:1], scratch[1:2], scratch[2:3], noise, seed, self.ids, draw, x_mean, mask,
                     data, da, dc, data_draw)


# Elements per chunk of the CUDA norm kernel (kNormChunk, csrc/cuda/step.cu): its partial sums live in the scratch.
_CUDA_NORM_CHUNK = 16384


def langevin_scratch(x: torch.Tensor) -> torch.Tensor:
    """CombineSteps.langevin's scratch for a state like x: float64 [1, b, c, per-sample norms (2B), CUDA partials,
    then 3 values the non-native backends' step size uses]."""
    batch = x.shape[0]
    numel = x[0].numel() if batch else 0
    chunks = -(-numel // _CUDA_NORM_CHUNK) if x.is_cuda else 0
    return torch.zeros(3 + 2 * batch + 2 * batch * chunks + 3, dtype=torch.float64, device=x.device)
