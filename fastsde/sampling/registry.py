"""Registries of predictors and correctors (score_sde's `register_predictor` / `register_corrector`), their base
classes, and the argument checks every sampler factory shares.

A predictor or corrector is a class registered by name. Its `update_fn(x, t) -> (x, x_mean)` is the reference form,
exactly as score_sde writes it; `coefficients(t)` (predictors, affine correctors) gives the float64 (a, b, c) of the
same update written as x_mean = a x + b score, x = x_mean + c z, which the fused loop runs as one kernel.
See docs/design.md, "How to add a sampler step".
"""
from __future__ import annotations

import abc
import inspect
import math
import operator
import warnings

import torch

from fastsde import sde as sde_lib
from fastsde._util import register_in
from fastsde.noise import NoiseStream
from fastsde.ops import dispatch
from fastsde.ops.checks import as_u64

__all__ = ["Predictor", "Corrector", "register_predictor", "register_corrector", "get_predictor", "get_corrector",
           "predictor_names", "corrector_names", "resolve_predictor", "resolve_corrector", "langevin_alpha",
           "check_backend", "check_shape", "check_seed", "check_eps", "check_positive", "check_pc_args", "check_sde",
           "progress_bar", "BACKENDS", "PC_DEFAULTS"]

BACKENDS = dispatch.BACKENDS

_PREDICTORS: dict[str, type] = {}
_CORRECTORS: dict[str, type] = {}


def register_predictor(cls=None, *, name=None):
    """Class decorator registering a Predictor under `name` (default: the class name)."""
    return register_in(_PREDICTORS, "predictor", cls, name=name)


def register_corrector(cls=None, *, name=None):
    """Class decorator registering a Corrector under `name` (default: the class name)."""
    return register_in(_CORRECTORS, "corrector", cls, name=name)


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}")
    return registry[name]


def get_predictor(name: str) -> type:
    return _lookup(_PREDICTORS, "predictor", name)


def get_corrector(name: str) -> type:
    return _lookup(_CORRECTORS, "corrector", name)


def _resolve(registry: dict, kind: str, spec, none_cls):
    """A predictor/corrector class from a registered name, a class, or None; classes written against score_sde's
    interface (constructors without `noise=`) come back wrapped by _adapt_score_sde_class."""
    if spec is None:
        return none_cls
    if isinstance(spec, str):
        spec = _lookup(registry, kind, spec)
    if isinstance(spec, type):
        return spec if _accepts_noise(spec) else _adapt_score_sde_class(spec, kind)
    raise TypeError(f"{kind} must be a registered name, a class or None, got {type(spec).__name__}")


def _accepts_noise(cls) -> bool:
    params = inspect.signature(cls.__init__).parameters.values()
    return any(p.name == "noise" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


_ADAPTED: dict[type, type] = {}


def _adapt_score_sde_class(cls, kind: str) -> type:
    """A fastsde Predictor/Corrector running `cls`, a class written against score_sde's interface
    (Predictor(sde, score_fn, probability_flow) / Corrector(sde, score_fn, snr, n_steps), update_fn(x, t)).

    It runs unfused, on the reference path, and draws its own noise (score_sde classes call torch.randn_like), so
    only noise="torch" makes such a run reproducible; a note says so once per class. It receives the SDE object the
    user passed (score_sde's own, when one was converted), so its isinstance checks against score_sde still hold."""
    if not callable(getattr(cls, "update_fn", None)):
        raise TypeError(f"{kind} class {cls.__name__} has no update_fn(x, t)")
    if cls in _ADAPTED:
        return _ADAPTED[cls]
    base = Predictor if kind == "predictor" else Corrector

    def __init__(self, sde, score_fn, *args, noise=None):
        base.__init__(self, sde, score_fn, *args, noise=noise)
        self.inner = cls(getattr(sde, "source", sde), score_fn, *args)

    def update_fn(self, x, t):
        return self.inner.update_fn(x, t)

    adapted = type(cls.__name__, (base,), {"__init__": __init__, "update_fn": update_fn, "__doc__": cls.__doc__,
                                           "wrapped": cls, "__module__": cls.__module__})
    _ADAPTED[cls] = adapted
    warnings.warn(f"{kind} {cls.__name__} uses score_sde's interface: it runs unfused (reference loop) and draws "
                  f"its own torch noise; pass noise='torch' to reproduce a seeded run", stacklevel=4)
    return adapted


def predictor_names() -> list[str]:
    """The registered predictor names, sorted."""
    return sorted(_PREDICTORS)


def corrector_names() -> list[str]:
    """The registered corrector names, sorted."""
    return sorted(_CORRECTORS)


def resolve_predictor(spec) -> type:
    """A predictor class from a registered name, a class, or None (the identity)."""
    return _resolve(_PREDICTORS, "predictor", spec, _PREDICTORS["none"])


def resolve_corrector(spec) -> type:
    """A corrector class from a registered name, a class, or None (the identity)."""
    return _resolve(_CORRECTORS, "corrector", spec, _CORRECTORS["none"])


def langevin_alpha(sde, t: torch.Tensor) -> torch.Tensor:
    """Langevin step scale alpha_i = 1 - beta_i for VP/subVP (VP tables of the same schedule), 1 for VE."""
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        return sde.table("alphas", t.device)[sde.timestep(t)]
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


# score_sde's sampling configs per SDE name: (predictor, corrector, eps) — VE: reverse diffusion + Langevin down to
# 1e-5; VP/subVP: Euler-Maruyama without a corrector down to 1e-3.
PC_DEFAULTS = {
    "ve": ("reverse_diffusion", "langevin", 1e-5),
    "vp": ("euler_maruyama", "none", 1e-3),
    "subvp": ("euler_maruyama", "none", 1e-3),
    # the heat family: reverse diffusion on the exact per-frequency transitions (fastsde.heat)
    **{name: ("reverse_diffusion", "none", 1e-3) for name in ("heat", "heat_ve", "blur", "ihdm")},
}


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_sde(sde) -> sde_lib.SDE:
    """The SDE a sampler runs: a fastsde SDE, or score_sde's own instance converted (fastsde.sde.as_fastsde_sde)."""
    return sde_lib.as_fastsde_sde(sde)


def check_shape(shape) -> tuple[int, ...]:
    """shape as a tuple of ints: (batch, ...) with rank >= 2 and positive integer sizes (4.5 is refused, not cut)."""
    try:
        dims = tuple(shape)
        shape = tuple(operator.index(s) for s in dims)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints (batch, ...), got {shape!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape) or any(isinstance(s, bool) for s in dims):
        raise ValueError(f"shape must be (batch, ...) with rank >= 2 and positive sizes, got {shape}")
    return shape


def check_seed(seed) -> int | None:
    """None (drawn from torch's global generator) or an int in [0, 2**64); 3.7, "3" and True are refused."""
    return None if seed is None else as_u64("seed", seed)


def check_positive(name: str, value) -> float:
    """A finite float > 0 (tolerances, snr-like scales), or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_eps(sde, eps) -> float:
    """The last time eps of a sampler: a number in (0, T)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps!r}")
    return float(eps)


def progress_bar(iterable, enabled: bool, desc: str):
    """`iterable` wrapped in a tqdm progress bar when enabled and tqdm is installed (the `digits` extra)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, unit="step", leave=False)


def check_pc_args(sde, predictor, corrector, snr, n_steps, probability_flow, eps, backend, noise, sample_ids):
    """Validate the PC options before any sampling (every PC factory calls this once); returns (backend,
    predictor_cls, corrector_cls)."""
    sde = check_sde(sde)
    backend = check_backend(backend)
    NoiseStream(noise, 0, sample_ids)
    predictor_cls = resolve_predictor(predictor)
    corrector_cls = resolve_corrector(corrector)
    try:
        ok = not isinstance(n_steps, bool) and operator.index(n_steps) >= 0
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not math.isfinite(snr) or snr < 0:
        raise ValueError(f"snr must be a finite number >= 0, got {snr!r}")
    check_eps(sde, eps)
    _check_discrete_betas(sde, predictor_cls, corrector_cls, int(n_steps))
    # Building the objects checks the combination (e.g. ancestral sampling of a subVP SDE).
    predictor_cls(sde, lambda x, t: x, probability_flow)
    corrector_cls(sde, lambda x, t: x, snr, int(n_steps))
    return backend, predictor_cls, corrector_cls


def _is_one_of(cls, registry: dict, names: tuple) -> bool:
    """cls is (a subclass of) a registered class of `names`, or a class of the same name (score_sde's, wrapped)."""
    ours = tuple(registry[n] for n in names if n in registry)
    return issubclass(cls, ours) or getattr(cls, "wrapped", cls).__name__ in {c.__name__ for c in ours}


def _check_discrete_betas(sde, predictor_cls, corrector_cls, n_steps: int) -> None:
    """Refuse steps whose DDPM-table factors are undefined: with beta_i = beta_max / N > 1, Langevin's
    alpha_i = 1 - beta_i < 0 (a negative step size: NaN) and reverse diffusion's sqrt(1 - beta_i) is NaN; ancestral
    sampling divides by sqrt(1 - beta_i), so it needs beta_i < 1. (beta_i = 1 exactly is a zero Langevin step.)"""
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        return
    beta = float(sde.discrete_betas.max())
    if beta < 1.0:
        return
    where = f"{type(sde).__name__}(beta_max={sde.beta_1}, N={sde.N}) has beta_max / N = {beta:g}"
    need = f"use N >= beta_max (N >= {math.ceil(sde.beta_1)})"
    if beta > 1.0 and n_steps > 0 and _is_one_of(corrector_cls, _CORRECTORS, ("langevin", "ald")):
        raise ValueError(f"corrector {corrector_cls.__name__}: the Langevin step scale alpha = 1 - beta_i is < 0, "
                         f"because {where} > 1; {need}")
    ancestral = _is_one_of(predictor_cls, _PREDICTORS, ("ancestral_sampling",))
    if isinstance(sde, sde_lib.VPSDE) and (ancestral or beta > 1.0) and _is_one_of(
            predictor_cls, _PREDICTORS, ("reverse_diffusion", "ancestral_sampling")):
        where += " >= 1" if ancestral else " > 1"
        need = f"use N > beta_max (N >= {math.floor(sde.beta_1) + 1})" if ancestral else need
        raise ValueError(f"predictor {predictor_cls.__name__}: the DDPM step sqrt(1 - beta_i) is undefined, because "
                         f"{where}; {need}")
