"""The predictor-corrector sampler (Song et al. algorithm 1): score_sde's reference loop and the fused loop.

backend="reference" runs the predictors' and correctors' update_fn exactly as score_sde writes them; any other
backend runs each update as one fused op (fastsde.ops.step) on preallocated buffers. Both draw the same FSN1 noise
at the draw ids of fastsde.noise.DrawPlan, so they agree to float tolerance.
"""
from __future__ import annotations


import torch

from fastsde._util import per_sample
from fastsde.noise import NoiseStream
from fastsde.ops import step as step_ops
from fastsde.ops.checks import check_like
from fastsde.sampling.registry import check_pc_args, check_sde, check_shape, langevin_alpha, progress_bar
from fastsde.score import get_score_fn, get_score_parts

__all__ = ["get_pc_sampler", "pc_loop", "Projection"]


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                   continuous=False, denoise=True, eps=1e-3, device="cpu", *, backend="auto", seed=None,
                   noise="fastsde", sample_ids=None, dtype=torch.float32, progress=False):
    """Predictor-corrector sampler (Song et al. algorithm 1): returns sampler(model) -> (x (shape), nfe).

    predictor/corrector: registered names ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none";
    "langevin", "ald", "none"), classes, or None. Per time step t_i of linspace(T, eps, N): the corrector runs
    n_steps Langevin iterations, then the predictor takes one step. nfe = N (n_steps + 1), as score_sde counts.

    backend="reference" runs the predictors' and correctors' update_fn exactly as score_sde writes them; any other
    backend runs each update as one fused op (fastsde.ops.step) on preallocated buffers, with per-step
    coefficients tabulated once in float64 and a noise-predicting model's -1/std folded into them. Both draw the
    same FSN1 noise (draw ids in fastsde/noise.py), so they agree to float tolerance.
    """
    sde, shape = check_sde(sde), check_shape(shape)  # score_sde's SDE objects are converted (sde.as_fastsde_sde)
    backend, predictor_cls, corrector_cls = check_pc_args(sde, predictor, corrector, snr, n_steps, probability_flow,
                                                          eps, backend, noise, sample_ids)
    n_steps = int(n_steps)

    def pc_sampler(model):
        stream = NoiseStream(noise, seed, sample_ids)
        with torch.no_grad():
            x = stream.prior(sde, shape, device=device, dtype=dtype)
            x, x_mean = pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, n_steps, probability_flow,
                                 continuous, eps, backend, progress)
            return inverse_scaler(x_mean if denoise else x), sde.N * (n_steps + 1)

    return pc_sampler


class Projection:
    """score_sde's inpainting projection after every update: x <- x (1 - m) + (mean + std z) m and
    x_mean <- x (1 - m) + mean m, with (mean, std) = marginal_prob(data, t) = (coef(t) data, std(t))."""

    def __init__(self, sde, data, mask, timesteps):
        self.data, self.mask = data, mask
        ones = torch.ones(timesteps.shape[0], 1, dtype=torch.float64, device=timesteps.device)
        coef, std = sde.marginal_prob(ones, timesteps.double())
        self.coef, self.std = coef[:, 0], std  # (N,) float64

    def apply(self, x, t, stream, sde):
        """The reference form, as score_sde writes it (noise from the stream's next draw)."""
        known, std = sde.marginal_prob(self.data, t)
        x = x * (1.0 - self.mask) + (known + stream.normal_like(x) * per_sample(std, x)) * self.mask
        return x, x * (1.0 - self.mask) + known * self.mask

    def kwargs(self, i, draw):
        """affine_step keywords that fuse the projection of step i (noise at `draw`) into the update."""
        return {"mask": self.mask, "data": self.data, "data_a": self.coef[i : i + 1], "data_c": self.std[i : i + 1],
                "data_draw": draw}


def pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, n_steps, probability_flow, continuous, eps,
             backend, progress, projection=None):
    """Run the N PC steps from x; returns (x, x_mean). projection: inpainting data/mask (controllable.py).

    Draw ids, step i: without projection, corrector iterations 1 + i (n_steps + 1) + j, predictor the next;
    with projection, 1 + i (n_steps + 3) + (corrector iterations j, its projection, predictor, its projection).
    """
    device = x.device
    score_fn = get_score_fn(sde, model, train=False, continuous=continuous)
    predictor_obj = predictor_cls(sde, score_fn, probability_flow, noise=stream)
    corrector_obj = corrector_cls(sde, score_fn, snr, n_steps, noise=stream)
    timesteps = torch.linspace(sde.T, eps, sde.N, device=device)
    proj = None if projection is None else Projection(sde, *projection, timesteps)
    steps = progress_bar(range(sde.N), progress, "pc sampling")
    fused = None
    if backend != "reference" and not (proj is not None and stream.kind == "torch"):
        fused = _FusedPC.build(sde, predictor_obj, corrector_obj, model, continuous, timesteps, backend)
    if fused is not None:
        return fused.run(x, stream, steps, proj)
    per_step = n_steps + 1 if proj is None else n_steps + 3
    x_mean = x
    for i in steps:
        vec_t = torch.ones(x.shape[0], device=device) * timesteps[i]
        base = 1 + i * per_step
        stream.seek(base)
        x, x_mean = corrector_obj.update_fn(x, vec_t)
        if proj is not None:
            stream.seek(base + n_steps)
            x, x_mean = proj.apply(x, vec_t, stream, sde)
        stream.seek(base + n_steps + (0 if proj is None else 1))
        x, x_mean = predictor_obj.update_fn(x, vec_t)
        if proj is not None:
            stream.seek(base + n_steps + 2)
            x, x_mean = proj.apply(x, vec_t, stream, sde)
    return x, x_mean


class _FusedPC:
    """The PC loop on fused ops: x and x_mean updated in place, coefficients tabulated for all steps at once."""

    def __init__(self, predictor, corrector, model, labels, scale, pred_coefs, corr_coefs, alphas, backend):
        self.predictor, self.corrector, self.model = predictor, corrector, model
        self.labels, self.scale = labels, scale
        self.pred_coefs, self.corr_coefs, self.alphas = pred_coefs, corr_coefs, alphas
        self.backend = backend

    @classmethod
    def build(cls, sde, predictor, corrector, model, continuous, timesteps, backend):
        """The fused loop, or None when a predictor/corrector has no fused form (custom classes)."""
        if corrector.fused_kind is None or (not predictor.is_identity and predictor.coefficients(timesteps[:1]) is None):
            return None
        try:
            labels_fn, scale_fn = get_score_parts(sde, continuous)
        except NotImplementedError:
            return None
        scale = scale_fn(timesteps)
        pred = None if predictor.is_identity else predictor.coefficients(timesteps)
        corr = corrector.coefficients(timesteps) if corrector.fused_kind == "affine" else None
        alphas = langevin_alpha(sde, timesteps).double() if corrector.fused_kind == "langevin" else None
        return cls(predictor, corrector, model, labels_fn(timesteps), scale, pred, corr, alphas, backend)

    def _step(self, x, x_mean, i, coefs, stream, draw, proj=None):
        """x <- a x + b s + c z in place, s = scale * model(x, labels_i), noise at `draw` (+ projection)."""
        out = self.model(x, self.labels[i].expand(x.shape[0]))
        a, b, c = (None if v is None else v[i : i + 1] for v in coefs)
        if self.scale is not None:
            b = b * self.scale[i]
        step_ops.affine_step(x, out, a, b, c, **self._noise(x, stream, draw), out=x, x_mean_out=x_mean,
                             backend=self.backend, **(proj or {}))

    def _project(self, x, x_mean, stream, proj):
        """A projection with no update before it (identity predictor or corrector): x <- 1 x + 0 x, projected."""
        step_ops.affine_step(x, x, 1.0, 0.0, None, seed=stream.seed, sample_ids=self.ids, out=x, x_mean_out=x_mean,
                             backend=self.backend, **proj)

    def _noise(self, x, stream, draw):
        if stream.kind == "torch":
            return {"noise": torch.randn_like(x)}
        return {"seed": stream.seed, "sample_ids": self.ids, "draw": draw}

    def _run_fast(self, x, stream, steps):
        """run() without projection on FSN1 noise: per-step coefficients tabulated once as (1,) views, arguments
        validated once (step_ops.LoopSteps), Langevin step sizes from the norms with a handful of host ops.
        Any step whose model output is not x-like and contiguous goes through the public (checked) ops instead."""
        ops = step_ops.LoopSteps(x, stream.seed, self.ids, self.backend)
        batch = x.shape[0]
        x_mean = torch.empty_like(x)
        n_steps, kind = self.corrector.n_steps, self.corrector.fused_kind
        iterations = n_steps if kind != "none" else 0
        per_step = n_steps + 1
        labels = [lab.expand(batch) for lab in self.labels]
        scale = None if self.scale is None else self.scale.double()

        def table(coefs):
            if coefs is None:
                return None
            a, b, c = coefs
            if scale is not None:
                b = b * scale
            return tuple(None if v is None else list(v.to(device=x.device, dtype=torch.float64).split(1))
                         for v in (a, b, c))

        pred, corr = table(self.pred_coefs), table(self.corr_coefs) if kind == "affine" else None
        if kind == "langevin":
            alphas = self.alphas.tolist()
            scales = None if scale is None else scale.tolist()
        snr = self.corrector.snr
        for i in steps:
            base = 1 + i * per_step
            lab = labels[i]
            for j in range(iterations):
                out = self.model(x, lab)
                if not ops.accepts(out):
                    check_like("score", out, x)
                    out = out.contiguous()
                if kind == "affine":
                    ops.affine(x, out, corr[0][i], corr[1][i], None if corr[2] is None else corr[2][i], base + j,
                               x_mean)
                else:
                    ops.langevin(x, out, snr, alphas[i], None if scales is None else scales[i], base + j, x_mean)
            if pred is not None:
                out = self.model(x, lab)
                if not ops.accepts(out):
                    check_like("score", out, x)
                    out = out.contiguous()
                ops.affine(x, out, pred[0][i], pred[1][i], None if pred[2] is None else pred[2][i], base + n_steps,
                           x_mean)
        if self.pred_coefs is None:  # the identity predictor returns (x, x) last
            x_mean.copy_(x)
        return x, x_mean

    def run(self, x, stream, steps, projection=None):
        self.model.train(False)
        self.ids = stream._ids(x.shape[0]).to(x.device)
        x = x.contiguous()
        if projection is None and stream.kind != "torch":
            return self._run_fast(x, stream, steps)
        x_mean = torch.empty_like(x)
        n_steps = self.corrector.n_steps
        kind = self.corrector.fused_kind
        iterations = n_steps if kind != "none" else 0
        per_step = n_steps + 1 if projection is None else n_steps + 3
        pred_draw = n_steps + (0 if projection is None else 1)
        for i in steps:
            base = 1 + i * per_step
            for j in range(iterations):
                # score_sde projects once after the whole corrector update: fuse it into the last iteration.
                proj = projection.kwargs(i, base + n_steps) if projection is not None and j == iterations - 1 else {}
                if kind == "affine":
                    self._step(x, x_mean, i, self.corr_coefs, stream, base + j, proj)
                    continue
                out = self.model(x, self.labels[i].expand(x.shape[0]))
                scale = None if self.scale is None else self.scale[i : i + 1]
                step_ops.langevin_step(x, out, self.corrector.snr, self.alphas[i : i + 1], score_scale=scale,
                                       **self._noise(x, stream, base + j), out=x, x_mean_out=x_mean,
                                       backend=self.backend, **proj)
            if projection is not None and iterations == 0:
                self._project(x, x_mean, stream, projection.kwargs(i, base + n_steps))
            proj = {} if projection is None else projection.kwargs(i, base + pred_draw + 1)
            if self.pred_coefs is not None:
                self._step(x, x_mean, i, self.pred_coefs, stream, base + pred_draw, proj)
            elif projection is not None:
                self._project(x, x_mean, stream, proj)
        if self.pred_coefs is None and projection is None:  # the identity predictor returns (x, x) last
            x_mean.copy_(x)
        return x, x_mean


