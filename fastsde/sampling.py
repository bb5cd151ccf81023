"""Samplers of score-based models (Song et al., ICLR 2021, section 4): predictor-corrector and probability-flow ODE.

The API is score_sde's (`get_pc_sampler`, `get_ode_sampler`, the predictor/corrector classes and registries), so
code written for it ports by changing imports. Additions, all keyword-only: `seed` and `noise` choose the noise
source (fastsde/noise.py), `backend` the implementation of the update steps, `dtype`, `progress`.
"""
from __future__ import annotations

import abc
import math

import numpy as np
import torch
from scipy import integrate

from fastsde import sde as sde_lib
from fastsde._util import flat_norm, per_sample
from fastsde.models.utils import from_flattened_numpy, get_score_fn, get_score_parts, to_flattened_numpy
from fastsde.noise import NoiseStream
from fastsde.ops import _dispatch
from fastsde.ops import step as step_ops

__all__ = [
    "Predictor", "Corrector", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector", "register_predictor",
    "register_corrector", "get_predictor", "get_corrector", "get_pc_sampler", "get_ode_sampler", "get_sampling_fn",
    "BACKENDS", "PC_DEFAULTS",
]

_PREDICTORS: dict[str, type] = {}
_CORRECTORS: dict[str, type] = {}
BACKENDS = _dispatch.BACKENDS


def _register(registry: dict, kind: str, cls=None, *, name=None):
    def deco(c):
        key = c.__name__ if name is None else name
        if key in registry:
            raise ValueError(f"{kind} {key!r} is already registered")
        registry[key] = c
        return c

    return deco if cls is None else deco(cls)


def register_predictor(cls=None, *, name=None):
    """Class decorator registering a Predictor under `name` (default: the class name)."""
    return _register(_PREDICTORS, "predictor", cls, name=name)


def register_corrector(cls=None, *, name=None):
    """Class decorator registering a Corrector under `name` (default: the class name)."""
    return _register(_CORRECTORS, "corrector", cls, name=name)


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}")
    return registry[name]


def get_predictor(name: str) -> type:
    return _lookup(_PREDICTORS, "predictor", name)


def get_corrector(name: str) -> type:
    return _lookup(_CORRECTORS, "corrector", name)


def _resolve(registry: dict, kind: str, spec, none_cls):
    """A predictor/corrector class from a registered name, a class, or None."""
    if spec is None:
        return none_cls
    if isinstance(spec, str):
        return _lookup(registry, kind, spec)
    if isinstance(spec, type):
        return spec
    raise TypeError(f"{kind} must be a registered name, a class or None, got {type(spec).__name__}")


def _vp_alpha(sde, t: torch.Tensor) -> torch.Tensor:
    """Langevin step scale alpha_i = 1 - beta_i for VP/subVP (VP tables of the same schedule), 1 for VE."""
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        return sde._table("alphas", t.device)[sde._timestep(t)]
    return torch.ones_like(t)


class Predictor(abc.ABC):
    """One step of a numerical solver of the reverse SDE: update_fn(x, t) -> (x, x_mean)."""

    def __init__(self, sde, score_fn, probability_flow: bool = False, noise: NoiseStream | None = None):
        self.sde = sde
        self.rsde = sde.reverse(score_fn, probability_flow)
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.noise = NoiseStream("torch") if noise is None else noise

    @abc.abstractmethod
    def update_fn(self, x: torch.Tensor, t: torch.Tensor):
        """x (B, ...), t (B,) -> (x, x_mean), both (B, ...)."""

    #: True for the identity predictor: the fused sampler skips it.
    is_identity = False

    def coefficients(self, t: torch.Tensor):
        """(a, b, c) float64 like t with update x_mean = a x + b score, x = x_mean + c z (c None: no noise),
        for the fused steps; None when this predictor is not of that form (the sampler then runs update_fn)."""
        return None


class Corrector(abc.ABC):
    """MCMC refinement at fixed t: update_fn(x, t) -> (x, x_mean)."""

    def __init__(self, sde, score_fn, snr: float, n_steps: int, noise: NoiseStream | None = None):
        self.sde = sde
        self.score_fn = score_fn
        self.snr = snr
        self.n_steps = n_steps
        self.noise = NoiseStream("torch") if noise is None else noise

    @abc.abstractmethod
    def update_fn(self, x: torch.Tensor, t: torch.Tensor):
        """x (B, ...), t (B,) -> (x, x_mean), both (B, ...)."""

    #: How the fused sampler runs this corrector: "affine" (coefficients(t) per iteration), "langevin" (norms
    #: pass, then an affine step), "none" (skipped), or None (not fusable: the sampler runs update_fn).
    fused_kind: str | None = None

    def coefficients(self, t: torch.Tensor):
        """(a, b, c) float64 like t for fused_kind "affine"."""
        return None


@register_predictor(name="euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """x_mean = x + [f - g^2 s] dt, x = x_mean + g sqrt(-dt) z with dt = -1/N."""

    def update_fn(self, x, t):
        dt = -1.0 / self.rsde.N
        z = self.noise.normal_like(x)
        drift, diffusion = self.rsde.sde(x, t)
        x_mean = x + drift * dt
        return x_mean + per_sample(diffusion, x) * np.sqrt(-dt) * z, x_mean

    def coefficients(self, t):
        f, g = self.sde.linear_sde(t)
        dt = -1.0 / self.rsde.N
        w = 0.5 if self.probability_flow else 1.0
        return 1.0 + f * dt, -w * g**2 * dt, None if self.probability_flow else g * math.sqrt(-dt)


@register_predictor(name="reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """x_mean = x - rev_f, x = x_mean + rev_G z (Song et al. eq. 46)."""

    def update_fn(self, x, t):
        f, G = self.rsde.discretize(x, t)
        z = self.noise.normal_like(x)
        x_mean = x - f
        return x_mean + per_sample(G, x) * z, x_mean

    def coefficients(self, t):
        f, G = self.sde.linear_discretize(t)
        w = 0.5 if self.probability_flow else 1.0
        return 1.0 - f, w * G**2, None if self.probability_flow else G


@register_predictor(name="ancestral_sampling")
class AncestralSamplingPredictor(Predictor):
    """DDPM ancestral sampling for VP (Ho et al. 2020), its SMLD analogue for VE (Song et al. eq. 47)."""

    def __init__(self, sde, score_fn, probability_flow=False, noise=None):
        super().__init__(sde, score_fn, probability_flow, noise)
        if not isinstance(sde, (sde_lib.VPSDE, sde_lib.VESDE)):
            raise ValueError(f"ancestral_sampling is defined for VPSDE and VESDE only, not {type(sde).__name__}")
        if probability_flow:
            raise ValueError("ancestral_sampling has no probability-flow variant; use reverse_diffusion or euler_maruyama")

    def update_fn(self, x, t):
        if isinstance(self.sde, sde_lib.VESDE):
            sigma, adjacent = self.sde._sigma_pair(t)
            score = self.score_fn(x, t)
            x_mean = x + score * per_sample(sigma**2 - adjacent**2, x)
            std = torch.sqrt(adjacent**2 * (sigma**2 - adjacent**2) / sigma**2)
        else:
            beta = self.sde._table("discrete_betas", t.device)[self.sde._timestep(t)]
            score = self.score_fn(x, t)
            x_mean = (x + per_sample(beta, x) * score) / per_sample(torch.sqrt(1.0 - beta), x)
            std = torch.sqrt(beta)
        z = self.noise.normal_like(x)
        return x_mean + per_sample(std, x) * z, x_mean

    def coefficients(self, t):
        if isinstance(self.sde, sde_lib.VESDE):
            sigma, adjacent = (v.double() for v in self.sde._sigma_pair(t))
            jump = sigma**2 - adjacent**2
            return torch.ones_like(sigma), jump, torch.sqrt(adjacent**2 * jump / sigma**2)
        beta = self.sde._table("discrete_betas", t.device)[self.sde._timestep(t)].double()
        root = torch.sqrt(1.0 - beta)
        return 1.0 / root, beta / root, torch.sqrt(beta)


@register_predictor(name="none")
class NonePredictor(Predictor):
    """The identity: (x, x)."""

    is_identity = True

    def update_fn(self, x, t):
        return x, x


@register_corrector(name="langevin")
class LangevinCorrector(Corrector):
    """Langevin MCMC with step size from a target signal-to-noise ratio (Song et al. algorithm 5).

    eps = 2 alpha (snr ||z|| / ||s||)^2 with ||.|| the batch mean of per-sample L2 norms, as score_sde.
    """

    fused_kind = "langevin"

    def update_fn(self, x, t):
        alpha = _vp_alpha(self.sde, t)
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score_fn(x, t)
            z = self.noise.normal_like(x)
            step_size = (self.snr * flat_norm(z).mean() / flat_norm(grad).mean()) ** 2 * 2 * alpha
            x_mean = x + per_sample(step_size, x) * grad
            x = x_mean + per_sample(torch.sqrt(step_size * 2), x) * z
        return x, x_mean


@register_corrector(name="ald")
class AnnealedLangevinDynamics(Corrector):
    """Annealed Langevin dynamics of NCSN: eps = 2 alpha (snr sigma_t)^2, sigma_t the marginal std."""

    fused_kind = "affine"

    def coefficients(self, t):
        alpha = _vp_alpha(self.sde, t).double()
        std = self.sde.marginal_prob(torch.zeros(t.shape[0], 1, dtype=torch.float64, device=t.device), t.double())[1]
        step = (self.snr * std) ** 2 * 2 * alpha
        return torch.ones_like(step), step, torch.sqrt(step * 2)

    def update_fn(self, x, t):
        alpha = _vp_alpha(self.sde, t)
        std = self.sde.marginal_prob(x, t)[1]
        step_size = (self.snr * std) ** 2 * 2 * alpha
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score_fn(x, t)
            z = self.noise.normal_like(x)
            x_mean = x + per_sample(step_size, x) * grad
            x = x_mean + z * per_sample(torch.sqrt(step_size * 2), x)
        return x, x_mean


@register_corrector(name="none")
class NoneCorrector(Corrector):
    """The identity: (x, x)."""

    fused_kind = "none"

    def update_fn(self, x, t):
        return x, x


# score_sde's sampling configs per SDE name: (predictor, corrector, eps) — VE: reverse diffusion + Langevin down to
# 1e-5; VP/subVP: Euler-Maruyama without a corrector down to 1e-3.
PC_DEFAULTS = {
    "ve": ("reverse_diffusion", "langevin", 1e-5),
    "vp": ("euler_maruyama", "none", 1e-3),
    "subvp": ("euler_maruyama", "none", 1e-3),
}


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (batch, ...) with rank >= 2 and positive sizes, got {shape}")
    return shape


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, unit="step", leave=False)


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
    shape = _check_shape(shape)
    backend = _check_backend(backend)
    NoiseStream(noise, 0, sample_ids)  # validates noise and sample_ids now, not at the first call
    predictor_cls = _resolve(_PREDICTORS, "predictor", predictor, NonePredictor)
    corrector_cls = _resolve(_CORRECTORS, "corrector", corrector, NoneCorrector)
    if int(n_steps) < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    n_steps = int(n_steps)
    # Building the objects checks the combination (e.g. ancestral sampling of a subVP SDE) before any sampling.
    predictor_cls(sde, lambda x, t: x, probability_flow)
    corrector_cls(sde, lambda x, t: x, snr, n_steps)

    def pc_sampler(model):
        stream = NoiseStream(noise, seed, sample_ids)
        with torch.no_grad():
            x = stream.prior(sde, shape, device=device, dtype=dtype)
            x, x_mean = _pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, n_steps, probability_flow,
                                 continuous, eps, backend, progress)
            return inverse_scaler(x_mean if denoise else x), sde.N * (n_steps + 1)

    return pc_sampler


class _Projection:
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


def _pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, n_steps, probability_flow, continuous, eps,
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
    proj = None if projection is None else _Projection(sde, *projection, timesteps)
    steps = _progress(range(sde.N), progress, "pc sampling")
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
        alphas = _vp_alpha(sde, timesteps).double() if corrector.fused_kind == "langevin" else None
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
        validated once (step_ops._LoopSteps), Langevin step sizes from the norms with a handful of host ops.
        Any step whose model output is not x-like and contiguous goes through the public (checked) ops instead."""
        ops = step_ops._LoopSteps(x, stream.seed, self.ids, self.backend)
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
                    step_ops._check_like("score", out, x)
                    out = out.contiguous()
                if kind == "affine":
                    ops.affine(x, out, corr[0][i], corr[1][i], None if corr[2] is None else corr[2][i], base + j,
                               x_mean)
                else:
                    ops.langevin(x, out, snr, alphas[i], None if scales is None else scales[i], base + j, x_mean)
            if pred is not None:
                out = self.model(x, lab)
                if not ops.accepts(out):
                    step_ops._check_like("score", out, x)
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


def get_ode_sampler(sde, shape, inverse_scaler, denoise=False, rtol=1e-5, atol=1e-5, method="RK45", eps=1e-3,
                    device="cpu", *, seed=None, noise="fastsde", sample_ids=None, dtype=torch.float32):
    """Probability-flow ODE sampler (Song et al. section 4.3) with scipy's solve_ivp.

    Returns sampler(model, z=None) -> (x (shape), nfe): integrates dx/dt = f - g^2 s / 2 from T to eps, starting
    at z or a prior sample; `denoise` adds one reverse-diffusion mean step at eps. nfe counts score evaluations.
    """
    shape = _check_shape(shape)

    def drift_fn(model, x, t):
        score_fn = get_score_fn(sde, model, train=False, continuous=True)
        return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]

    def ode_sampler(model, z=None):
        stream = NoiseStream(noise, seed, sample_ids)
        with torch.no_grad():
            if z is None:
                x = stream.prior(sde, shape, device=device, dtype=dtype)
            else:
                if tuple(z.shape) != shape:
                    raise ValueError(f"z must have shape {shape}, got {tuple(z.shape)}")
                x = z.to(device=device, dtype=dtype)

            def ode_func(t, y):
                xt = from_flattened_numpy(y, shape).to(device=device, dtype=dtype)
                vec_t = torch.ones(shape[0], device=device, dtype=dtype) * t
                return to_flattened_numpy(drift_fn(model, xt, vec_t))

            solution = integrate.solve_ivp(ode_func, (sde.T, eps), to_flattened_numpy(x), rtol=rtol, atol=atol,
                                           method=method)
            if not solution.success:
                raise RuntimeError(f"ODE solver failed: {solution.message}")
            nfe = solution.nfev
            x = torch.tensor(solution.y[:, -1]).reshape(shape).to(device=device, dtype=dtype)
            if denoise:
                score_fn = get_score_fn(sde, model, train=False, continuous=True)
                stream.seek(1)
                predictor_obj = ReverseDiffusionPredictor(sde, score_fn, probability_flow=False, noise=stream)
                _, x = predictor_obj.update_fn(x, torch.ones(shape[0], device=device) * eps)
                nfe += 1
            return inverse_scaler(x), nfe

    return ode_sampler


def get_sampling_fn(config, sde, shape, inverse_scaler, eps, *, device="cpu", **kwargs):
    """score_sde's config-driven factory: config.sampling.method in {"pc", "ode"}."""
    method = config.sampling.method.lower()
    if method == "ode":
        return get_ode_sampler(sde, shape, inverse_scaler, denoise=config.sampling.noise_removal, eps=eps,
                               device=device, **kwargs)
    if method == "pc":
        return get_pc_sampler(sde, shape, config.sampling.predictor.lower(), config.sampling.corrector.lower(),
                              inverse_scaler, config.sampling.snr, n_steps=config.sampling.n_steps_each,
                              probability_flow=config.sampling.probability_flow,
                              continuous=config.training.continuous, denoise=config.sampling.noise_removal,
                              eps=eps, device=device, **kwargs)
    raise ValueError(f"unknown sampling method {method!r}; known: ['ode', 'pc']")
