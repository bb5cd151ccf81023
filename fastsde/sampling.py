"""Samplers of score-based models (Song et al., ICLR 2021, section 4): predictor-corrector and probability-flow ODE.

The API is score_sde's (`get_pc_sampler`, `get_ode_sampler`, the predictor/corrector classes and registries), so
code written for it ports by changing imports. Additions, all keyword-only: `seed` and `noise` choose the noise
source (fastsde/noise.py), `backend` the implementation of the update steps, `dtype`, `progress`.
"""
from __future__ import annotations

import abc

import numpy as np
import torch
from scipy import integrate

from fastsde import sde as sde_lib
from fastsde._util import flat_norm, per_sample
from fastsde.models.utils import from_flattened_numpy, get_score_fn, to_flattened_numpy
from fastsde.noise import NoiseStream

__all__ = [
    "Predictor", "Corrector", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
    "NonePredictor", "LangevinCorrector", "AnnealedLangevinDynamics", "NoneCorrector", "register_predictor",
    "register_corrector", "get_predictor", "get_corrector", "get_pc_sampler", "get_ode_sampler", "get_sampling_fn",
    "BACKENDS",
]

_PREDICTORS: dict[str, type] = {}
_CORRECTORS: dict[str, type] = {}
BACKENDS = ("auto", "reference")


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


@register_predictor(name="euler_maruyama")
class EulerMaruyamaPredictor(Predictor):
    """x_mean = x + [f - g^2 s] dt, x = x_mean + g sqrt(-dt) z with dt = -1/N."""

    def update_fn(self, x, t):
        dt = -1.0 / self.rsde.N
        z = self.noise.normal_like(x)
        drift, diffusion = self.rsde.sde(x, t)
        x_mean = x + drift * dt
        return x_mean + per_sample(diffusion, x) * np.sqrt(-dt) * z, x_mean


@register_predictor(name="reverse_diffusion")
class ReverseDiffusionPredictor(Predictor):
    """x_mean = x - rev_f, x = x_mean + rev_G z (Song et al. eq. 46)."""

    def update_fn(self, x, t):
        f, G = self.rsde.discretize(x, t)
        z = self.noise.normal_like(x)
        x_mean = x - f
        return x_mean + per_sample(G, x) * z, x_mean


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


@register_predictor(name="none")
class NonePredictor(Predictor):
    """The identity: (x, x)."""

    def update_fn(self, x, t):
        return x, x


@register_corrector(name="langevin")
class LangevinCorrector(Corrector):
    """Langevin MCMC with step size from a target signal-to-noise ratio (Song et al. algorithm 5).

    eps = 2 alpha (snr ||z|| / ||s||)^2 with ||.|| the batch mean of per-sample L2 norms, as score_sde.
    """

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

    def update_fn(self, x, t):
        return x, x


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "reference"


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
    """
    shape = _check_shape(shape)
    _check_backend(backend)
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
        score_fn = get_score_fn(sde, model, train=False, continuous=continuous)
        predictor_obj = predictor_cls(sde, score_fn, probability_flow, noise=stream)
        corrector_obj = corrector_cls(sde, score_fn, snr, n_steps, noise=stream)
        draws_per_step = n_steps + 1
        with torch.no_grad():
            x = stream.prior(sde, shape, device=device, dtype=dtype)
            x_mean = x
            timesteps = torch.linspace(sde.T, eps, sde.N, device=device)
            for i in _progress(range(sde.N), progress, "pc sampling"):
                vec_t = torch.ones(shape[0], device=device) * timesteps[i]
                stream.seek(1 + i * draws_per_step)
                x, x_mean = corrector_obj.update_fn(x, vec_t)
                stream.seek(1 + i * draws_per_step + n_steps)
                x, x_mean = predictor_obj.update_fn(x, vec_t)
            return inverse_scaler(x_mean if denoise else x), sde.N * (n_steps + 1)

    return pc_sampler


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
