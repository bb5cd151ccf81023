"""diffusers models on fastsde: a `UNet2DModel` plus its scheduler's config -> a fastsde score model and SDE.

    model, sde, continuous = from_diffusers(unet, scheduler.config)
    sampler = fastsde.solvers.get_sampler("dpmpp_2m", sde, shape, 20, continuous=continuous)

DDPMScheduler / DDIMScheduler configs (beta_schedule "linear") are score_sde's discrete VPSDE: betas =
linspace(beta_start, beta_end, N) = VPSDE(beta_start N, beta_end N, N) with labels t (N - 1); the wrapper turns
"v_prediction" and "sample" outputs into the noise prediction the VP convention expects. ScoreSdeVeScheduler
configs are the continuous VESDE(sigma_min, sigma_max, N), whose UNet takes sigma as its timestep and returns the
score. `times_of_timesteps` turns a DDPM-type scheduler's integer timesteps into fastsde times, so a solver can run
on exactly the scheduler's grid (get_sampler(..., grid=times)). from_diffusers never imports diffusers: the UNet is
any module called as unet(x, timesteps) returning a tensor, a tuple or an object with `.sample`.

Drop-in schedulers for diffusers pipelines (the extra `fastsde[diffusers]`; diffusers is imported on first use of one
of these names, never by `import fastsde`):

    pipe.scheduler = FastDDIMScheduler.from_config(pipe.scheduler.config)

FastDDIMScheduler, FastDPMSolverMultistepScheduler, FastEulerDiscreteScheduler, FastEulerAncestralDiscreteScheduler,
FastUniPCMultistepScheduler and FastScoreSdeVeScheduler subclass diffusers' own class of the same name, so config,
set_timesteps, timesteps, sigmas, scale_model_input, add_noise, init_noise_sigma and order are diffusers' own; step
(step_pred / step_correct) writes diffusers' update formulas on linear forms with float64 coefficients (_Lin) and
evaluates the result with one fastsde combine pass (docs/design.md, "diffusers schedulers").
"""
from __future__ import annotations

import numpy as np
import torch

from fastsde import sde as sde_lib
from fastsde._util import per_sample
from fastsde.ops.step import MAX_OUTPUTS, affine_combine_step, affine_step, langevin_step

_SCHEDULER_NAMES = ("FastDDIMScheduler", "FastDPMSolverMultistepScheduler", "FastEulerDiscreteScheduler",
                    "FastEulerAncestralDiscreteScheduler", "FastUniPCMultistepScheduler", "FastScoreSdeVeScheduler")
__all__ = ["from_diffusers", "DiffusersScoreModel", "times_of_timesteps", *_SCHEDULER_NAMES]

_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def _get(config, key, default=None):
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


class DiffusersScoreModel(torch.nn.Module):
    """model(x, labels) under fastsde's conventions around a diffusers UNet (see the module docstring)."""

    def __init__(self, unet, sde, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in _PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {_PREDICTIONS}, got {prediction_type!r}")
        if prediction_type != "epsilon" and not isinstance(sde, sde_lib.VPSDE):
            raise ValueError(f"prediction_type {prediction_type!r} is supported for DDPM/DDIM (VP) models only")
        self.unet, self.sde, self.prediction_type = unet, sde, prediction_type

    def forward(self, x, labels):
        out = self.unet(x, labels)
        out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, (tuple, list)) else out
        if self.prediction_type == "epsilon":
            return out
        i = labels.long()
        alpha = per_sample(self.sde.table("sqrt_alphas_cumprod", x.device)[i], x).to(out.dtype)
        sigma = per_sample(self.sde.table("sqrt_1m_alphas_cumprod", x.device)[i], x).to(out.dtype)
        if self.prediction_type == "v_prediction":  # v = alpha eps - sigma x0  =>  eps = alpha v + sigma x
            return alpha * out + sigma * x
        return (x - alpha * out) / sigma  # "sample": out is x0


def _number(config, key, default=None) -> float:
    value = _get(config, key, default)
    return sde_lib.check_real(f"scheduler_config.{key}", value, low=0.0, low_open=key != "beta_start")


def from_diffusers(unet, scheduler_config):
    """(model, sde, continuous) from a diffusers UNet and its scheduler (or the scheduler's config).

    Checked before anything is built (ValueError/TypeError naming the config key): num_train_timesteps an integer
    in [1, fastsde.sde.MAX_N] (3.7 is refused, not truncated); beta_start, beta_end, sigma_min, sigma_max finite
    numbers in order; prediction_type one of "epsilon", "v_prediction", "sample" for DDPM/DDIM configs and
    "epsilon" (or absent) for score-SDE-VE configs, whose UNet returns the score: any other value is refused, never
    dropped."""
    if not callable(unet):
        raise TypeError(f"unet must be callable as unet(x, timesteps), got {type(unet).__name__}")
    config = getattr(scheduler_config, "config", scheduler_config)
    if config is None or isinstance(config, (str, bytes, int, float)):
        raise TypeError(f"scheduler_config must be a diffusers scheduler, its config or a dict, got "
                        f"{type(config).__name__}")
    n = sde_lib.check_count("scheduler_config.num_train_timesteps", _get(config, "num_train_timesteps", 1000),
                            sde_lib.MAX_N, " (fastsde.sde.MAX_N)")
    prediction = _get(config, "prediction_type", None)
    if prediction is not None and prediction not in _PREDICTIONS:
        raise ValueError(f"scheduler_config.prediction_type must be one of {_PREDICTIONS}, got {prediction!r}")
    if _get(config, "sigma_max") is not None:  # ScoreSdeVeScheduler
        if prediction not in (None, "epsilon"):
            raise ValueError(f"scheduler_config.prediction_type {prediction!r} is not supported for a score-SDE-VE "
                             f"config (sigma_min, sigma_max): its UNet must return the score; only DDPM/DDIM "
                             f"(beta_start, beta_end) configs take 'v_prediction' or 'sample'")
        sigma_min, sigma_max = _number(config, "sigma_min", 0.01), _number(config, "sigma_max")
        if not sigma_min < sigma_max:
            raise ValueError(f"scheduler_config needs sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        sde = sde_lib.VESDE(sigma_min, sigma_max, n)
        return DiffusersScoreModel(unet, sde), sde, True
    if _get(config, "beta_start") is None:
        raise ValueError("scheduler_config must be a DDPM/DDIM (beta_start, beta_end) or score-SDE-VE (sigma_min, "
                         "sigma_max) scheduler config")
    schedule = _get(config, "beta_schedule", "linear")
    if schedule != "linear" or _get(config, "trained_betas") is not None:
        raise ValueError(f"beta_schedule must be 'linear' (score_sde's VPSDE), got {schedule!r}")
    beta_start, beta_end = _number(config, "beta_start"), _number(config, "beta_end")
    if not beta_start <= beta_end < 1:
        raise ValueError(f"scheduler_config needs 0 <= beta_start <= beta_end < 1 (DDPM betas), got "
                         f"beta_start={beta_start}, beta_end={beta_end}")
    sde = sde_lib.VPSDE(beta_start * n, beta_end * n, n)
    return DiffusersScoreModel(unet, sde, prediction or "epsilon"), sde, False


def times_of_timesteps(sde, timesteps) -> torch.Tensor:
    """float64 times t_k of a discrete VPSDE (from_diffusers of a DDPM-type config) whose table row and model label
    are exactly the integer timesteps k: long(t_k (N - 1)) = k in float64 (the solvers' (alpha, sigma)) and
    t_k (N - 1) = k after rounding t_k to float32 (the label the UNet sees). t_k = k / (N - 1), moved up one float64
    ulp where the product would fall just under k."""
    if not isinstance(sde, sde_lib.VPSDE):
        raise ValueError(f"times_of_timesteps needs the discrete VPSDE of a DDPM-type config, got {type(sde).__name__}")
    k = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).flatten()
    n = sde.N - 1
    if not bool((k == k.round()).all() and (k >= 0).all() and (k <= n).all()):
        raise ValueError(f"timesteps must be integers in [0, {n}], got {k.tolist()[:4]}...")
    t = k / n
    t = torch.where((t * n).floor() < k, torch.nextafter(t, torch.full_like(t, 2.0)), t)
    if not bool(((t * n).floor() == k).all() and (t.float() * n == k.float()).all()):
        raise ValueError(f"no time of {type(sde).__name__} maps exactly onto the timesteps {k.tolist()[:4]}...")
    return t


# ------------------------------------------------------------------------------------------- drop-in schedulers
# Each class is diffusers' own scheduler with step() replaced: the update is written on _Lin forms (diffusers'
# formulas, term for term, with float64 scalar coefficients from the scheduler's tables) and one combine pass
# (fastsde.ops.step.affine_combine_step: x' = a x + sum_k b_k T_k + c z) evaluates it. The noise z is the user's
# (a `generator` or `variance_noise` is drawn exactly as diffusers draws it, for parity) or, with no generator,
# FSN1 noise made inside the pass at (seed, sample index, draw), the seed taken from torch's global generator at the
# first noisy step after set_timesteps (torch.manual_seed reproduces a run). The tensors a step keeps for a later
# one (multistep histories, UniPC's last sample) are the scheduler's own, never a caller's tensor that the caller
# could change in place afterwards.

_SCHEDULERS: dict = {}
_NOISE = "noise"  # the key of the step's Gaussian draw in a _Lin


class _Lin:
    """sum_k c_k T_k over tensors T_k (and the step's draw, key _NOISE), with float64 coefficients c_k."""

    __slots__ = ("terms",)

    def __init__(self, terms):
        self.terms = terms

    def __add__(self, other):
        terms = dict(self.terms)
        for key, value in other.terms.items():
            terms[key] = terms.get(key, np.float64(0.0)) + value
        return _Lin(terms)

    def __sub__(self, other):
        return self + other * -1.0

    def __mul__(self, scale):
        scale = np.float64(scale)
        return _Lin({key: value * scale for key, value in self.terms.items()})

    __rmul__ = __mul__

    def __truediv__(self, scale):
        scale = np.float64(scale)
        return _Lin({key: value / scale for key, value in self.terms.items()})


def _of(t: torch.Tensor) -> _Lin:
    return _Lin({t: np.float64(1.0)})


def _alpha_sigma(config, sigma):
    """diffusers' (alpha_t, sigma_t) of a k-diffusion sigma, in float64 (flow sigmas: (1 - sigma, sigma))."""
    s = np.float64(float(sigma))
    if _get(config, "use_flow_sigmas", False):
        return 1 - s, s
    alpha = 1 / np.sqrt(s * s + 1)
    return alpha, s * alpha


def _lambda(alpha, sigma):
    with np.errstate(divide="ignore"):
        return np.log(alpha) - np.log(sigma)


def _data_and_noise(kind, x: _Lin, m: _Lin, alpha, sigma):
    """(x0, eps) forms of a model output m at state x with x = alpha x0 + sigma eps, as diffusers converts it."""
    if kind == "epsilon":
        return (x - m * sigma) / alpha, m
    if kind == "sample":
        return m, (x - m * alpha) / sigma
    if kind == "v_prediction":
        return x * alpha - m * sigma, m * alpha + x * sigma
    if kind == "flow_prediction":
        x0 = x - m * sigma
        return x0, (x - x0 * alpha) / sigma
    raise ValueError(f"prediction_type must be one of 'epsilon', 'sample', 'v_prediction', 'flow_prediction', got "
                     f"{kind!r}")


def _timestep_int(timestep) -> int:
    return int(timestep.item() if isinstance(timestep, torch.Tensor) else timestep)


class _FusedSteps:
    """What each fastsde scheduler adds to its diffusers base class (first in the MRO).

    return_pred_original_sample: DDIM and Euler outputs carry pred_original_sample only when True (it costs a second
    pass; pipelines read prev_sample). backend: the combine backend ("auto", "native", "triton", "reference")."""

    return_pred_original_sample = False
    backend = "auto"

    def set_timesteps(self, *args, **kwargs):
        out = super().set_timesteps(*args, **kwargs)
        self._fsn1_seed, self._fsn1_draw = None, 0
        return out

    def _draw(self, generator, explicit, shape, **randn_kwargs):
        """The step's noise as combine keywords: explicit noise (`explicit`, else drawn from `generator` by
        diffusers' own randn_tensor with diffusers' arguments) or FSN1 coordinates (seed, draw) for the pass."""
        if explicit is not None:
            return {"noise": explicit}
        if generator is not None:
            from diffusers.utils.torch_utils import randn_tensor

            return {"noise": randn_tensor(shape, generator=generator, **randn_kwargs)}
        if getattr(self, "_fsn1_seed", None) is None:
            self._fsn1_seed, self._fsn1_draw = int(torch.randint(0, 2**62, (), dtype=torch.int64)), 0
        self._fsn1_draw += 1
        return {"seed": self._fsn1_seed, "draw": self._fsn1_draw}

    def _evaluate(self, form: _Lin, like: torch.Tensor, noise=None) -> torch.Tensor:
        """One combine pass computing `form` as a new tensor of like's shape and dtype (forms of more tensors than
        a pass reads fold their leading terms first)."""
        terms = {k: float(v) for k, v in form.terms.items() if not isinstance(k, str) and v != 0}
        c = form.terms.get(_NOISE)
        c = None if c is None or c == 0 else float(c)
        tensors = sorted(terms, key=lambda t: t.dtype != like.dtype)  # combine's x leads, in the state's dtype
        while len(tensors) > 1 + MAX_OUTPUTS:
            head = tensors[:1 + MAX_OUTPUTS]
            folded = self._evaluate(_Lin({t: terms[t] for t in head}), like)
            tensors, terms[folded] = [folded] + tensors[1 + MAX_OUTPUTS:], 1.0
        if not tensors:
            tensors, terms = [torch.zeros_like(like)], {}
        x = tensors[0] if tensors[0].dtype == like.dtype else tensors[0].to(like.dtype)
        if noise is not None and "noise" in noise and noise["noise"].dtype != like.dtype:  # DPM-Solver draws float32
            noise = {"noise": noise["noise"].to(like.dtype)}
        return affine_combine_step(x, tensors[1:], terms.get(tensors[0], 0.0), [terms[t] for t in tensors[1:]], c,
                                   backend=self.backend, **(noise or {}) if c is not None else {})

    def _x0_output(self, x0: _Lin, like):
        """pred_original_sample for the output: evaluated only when asked for (return_pred_original_sample)."""
        return self._evaluate(x0, like) if self.return_pred_original_sample else None


def _needs_steps(scheduler):
    if scheduler.num_inference_steps is None:
        raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating the "
                         "scheduler")


# ---- DDIM (Song et al. eq. 12, with diffusers' eta, clipping, thresholding and use_clipped_model_output)
def _ddim_step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
               variance_noise=None, return_dict=True):
    _needs_steps(self)
    cfg = self.config
    t = _timestep_int(timestep)
    prev_t = t - cfg.num_train_timesteps // self.num_inference_steps  # diffusers' rule, under every spacing
    a_t = np.float64(float(self.alphas_cumprod[t]))
    a_prev = np.float64(float(self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod))
    x = _of(sample)
    x0, eps = _data_and_noise(cfg.prediction_type, x, _of(model_output), np.sqrt(a_t), np.sqrt(1 - a_t))
    x0_tensor = None
    if cfg.thresholding or cfg.clip_sample:  # not affine in x0: x0 is made, then clipped, then read by the update
        x0_tensor = self._evaluate(x0, sample)
        x0_tensor = (self._threshold_sample(x0_tensor) if cfg.thresholding
                     else x0_tensor.clamp_(-cfg.clip_sample_range, cfg.clip_sample_range))
        x0 = _of(x0_tensor)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * np.sqrt(variance)
    if use_clipped_model_output:
        eps = (x - x0 * np.sqrt(a_t)) / np.sqrt(1 - a_t)
    prev = x0 * np.sqrt(a_prev) + eps * np.sqrt(1 - a_prev - std**2)
    noise = None
    if eta > 0:
        if variance_noise is not None and generator is not None:
            raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                             "`generator` or `variance_noise` stays `None`.")
        noise = self._draw(generator, variance_noise, model_output.shape, device=model_output.device,
                           dtype=model_output.dtype)
        prev = prev + _Lin({_NOISE: std})
    prev_sample = self._evaluate(prev, sample, noise)
    x0_out = x0_tensor if x0_tensor is not None else self._x0_output(x0, sample)
    if not return_dict:
        return prev_sample, x0_out
    return _SCHEDULERS["outputs"]["ddim"](prev_sample=prev_sample, pred_original_sample=x0_out)


def _converted(self, x: _Lin, model_output, sample, i):
    """(x0, eps) forms of the model output at sigma index i (DPM-Solver, UniPC); thresholding, not affine, makes
    and thresholds x0 first."""
    alpha, sigma = _alpha_sigma(self.config, self.sigmas[i])
    x0, eps = _data_and_noise(self.config.prediction_type, x, _of(model_output), alpha, sigma)
    if self.config.thresholding:
        x0 = _of(self._threshold_sample(self._evaluate(x0, sample)))
        eps = (x - x0 * alpha) / sigma
    return x0, eps


# ---- DPM-Solver(++) multistep, orders 1-3, ODE and SDE variants (Lu et al. 2022a, 2022b)
def _dpm_update(cfg, order, sigmas, m, x: _Lin) -> _Lin:
    """diffusers' multistep update of `order` from sigmas (s_t, s_0, s_1, s_2) and model forms m (m_0, m_1, m_2)."""
    (a_t, s_t), (a_0, s_0), *older = [_alpha_sigma(cfg, s) for s in sigmas[:order + 1]]
    lam_0 = _lambda(a_0, s_0)
    h = _lambda(a_t, s_t) - lam_0
    lams = [lam_0] + [_lambda(a, s) for a, s in older]
    r = [(lams[k] - lams[k + 1]) / h for k in range(order - 1)]
    d = [m[0]]
    if order == 2:
        d.append((m[0] - m[1]) / r[0])
    elif order == 3:
        d1_0, d1_1 = (m[0] - m[1]) / r[0], (m[1] - m[2]) / r[1]
        d += [d1_0 + (d1_0 - d1_1) * (r[0] / (r[0] + r[1])), (d1_0 - d1_1) / (r[0] + r[1])]
    algorithm, heun = cfg.algorithm_type, cfg.solver_type == "heun" or order == 3
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        em, ep = np.exp(-h), np.exp(h)
        if algorithm == "dpmsolver++":
            cx, c = s_t / s_0, [-a_t * (em - 1), a_t * ((em - 1) / h + 1), -a_t * ((em - 1 + h) / h**2 - 0.5)]
        elif algorithm == "dpmsolver":
            cx, c = a_t / a_0, [-s_t * (ep - 1), -s_t * ((ep - 1) / h - 1), -s_t * ((ep - 1 - h) / h**2 - 0.5)]
        elif algorithm == "sde-dpmsolver++":
            e2 = np.exp(-2 * h)
            cx, c = s_t / s_0 * em, [a_t * (1 - e2), a_t * ((1 - e2) / (-2 * h) + 1),
                                     a_t * ((1 - e2 - 2 * h) / (2 * h) ** 2 - 0.5)]
            cz = s_t * np.sqrt(1 - e2)
        elif algorithm == "sde-dpmsolver" and order < 3:
            cx, c = a_t / a_0, [-2 * s_t * (ep - 1), -2 * s_t * ((ep - 1) / h - 1)]
            cz = s_t * np.sqrt(np.exp(2 * h) - 1)
        else:
            raise NotImplementedError(f"algorithm_type {algorithm!r} has no order-{order} update in diffusers")
    if order >= 2 and not heun:  # the midpoint form's first-difference coefficient
        c[1] = 0.5 * c[0]
    update = x * cx
    for coef, term in zip(c, d):
        update = update + term * coef
    return update + _Lin({_NOISE: cz}) if algorithm.startswith("sde") else update


def _dpm_step(self, model_output, timestep=None, sample=None, generator=None, variance_noise=None,
              return_dict=True):
    _needs_steps(self)
    cfg = self.config
    if self.step_index is None:
        self._init_step_index(timestep)
    i, n = self.step_index, len(self.timesteps)
    lower_final = i == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                  or cfg.final_sigmas_type == "zero")
    lower_second = i == n - 2 and cfg.lower_order_final and n < 15
    if cfg.variance_type in ("learned", "learned_range"):
        model_output = model_output[:, :3]
    x = _of(sample)
    x0, eps = _converted(self, x, model_output, sample, i)
    m_new = x0 if cfg.algorithm_type in ("dpmsolver++", "sde-dpmsolver++") else eps
    history = [_of(t) if t is not None else None for t in self.model_outputs[1:]] + [m_new]
    noise = None
    if cfg.algorithm_type.startswith("sde"):
        noise = self._draw(generator, None if variance_noise is None else
                           variance_noise.to(device=model_output.device, dtype=torch.float32),
                           model_output.shape, device=model_output.device, dtype=torch.float32)
    if cfg.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
        order = 1
    elif cfg.solver_order == 2 or self.lower_order_nums < 2 or lower_second:
        order = 2
    else:
        order = 3
    sigmas = [self.sigmas[i + 1]] + [self.sigmas[i - k] for k in range(order)]
    prev_sample = self._evaluate(_dpm_update(cfg, order, sigmas, history[::-1], x), sample, noise)
    # the new model form becomes history (the scheduler's own tensor) only where a later step reads it
    keep = self._evaluate(m_new, sample) if cfg.solver_order > 1 and i + 1 < n else None
    self.model_outputs = self.model_outputs[1:] + [keep]
    if self.lower_order_nums < cfg.solver_order:
        self.lower_order_nums += 1
    self._step_index += 1
    return _SCHEDULERS["outputs"]["plain"](prev_sample=prev_sample) if return_dict else (prev_sample,)


# ---- Euler and Euler ancestral on k-diffusion's state x~ = x / alpha (Karras et al. 2022, algorithm 2's churn)
def _euler_x0(cfg, x: _Lin, m: _Lin, sigma, sigma_hat) -> _Lin:
    kind = cfg.prediction_type
    if kind in ("original_sample", "sample"):
        return m
    if kind == "epsilon":
        return x - m * sigma_hat
    if kind == "v_prediction":
        return m * (-sigma / np.sqrt(sigma**2 + 1)) + x / (sigma**2 + 1)
    raise ValueError(f"prediction_type given as {kind} must be one of `epsilon`, or `v_prediction`")


def _check_sigma_timestep(timestep):
    if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
        raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to `step()` is not "
                         "supported. Make sure to pass one of the `scheduler.timesteps` as a timestep.")


def _euler_step(self, model_output, timestep, sample, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
                generator=None, return_dict=True):
    _check_sigma_timestep(timestep)
    if self.step_index is None:
        self._init_step_index(timestep)
    sigma = np.float64(float(self.sigmas[self.step_index]))
    gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    x, noise = _of(sample), None
    if gamma > 0:
        noise = self._draw(generator, None, model_output.shape, dtype=model_output.dtype, device=model_output.device)
        x = x + _Lin({_NOISE: s_noise * np.sqrt(sigma_hat**2 - sigma**2)})
    x0 = _euler_x0(self.config, x, _of(model_output), sigma, sigma_hat)
    dt = np.float64(float(self.sigmas[self.step_index + 1])) - sigma_hat
    prev_sample = self._evaluate(x + (x - x0) * (dt / sigma_hat), sample, noise)
    x0_out = self._x0_output(x0, sample) if noise is None else None  # a churned x0 holds the pass's draw
    self._step_index += 1
    if not return_dict:
        return prev_sample, x0_out
    return _SCHEDULERS["outputs"]["euler"](prev_sample=prev_sample, pred_original_sample=x0_out)


def _euler_ancestral_step(self, model_output, timestep, sample, generator=None, return_dict=True):
    _check_sigma_timestep(timestep)
    if self.step_index is None:
        self._init_step_index(timestep)
    if self.config.prediction_type == "sample":
        raise NotImplementedError("prediction_type not implemented yet: sample")
    sigma_from = np.float64(float(self.sigmas[self.step_index]))
    sigma_to = np.float64(float(self.sigmas[self.step_index + 1]))
    sigma_up = np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
    sigma_down = np.sqrt(sigma_to**2 - sigma_up**2)
    x = _of(sample)
    x0 = _euler_x0(self.config, x, _of(model_output), sigma_from, sigma_from)
    noise = self._draw(generator, None, model_output.shape, dtype=model_output.dtype, device=model_output.device)
    prev = x + (x - x0) * ((sigma_down - sigma_from) / sigma_from) + _Lin({_NOISE: sigma_up})
    prev_sample = self._evaluate(prev, sample, noise)
    x0_out = self._x0_output(x0, sample)
    self._step_index += 1
    if not return_dict:
        return prev_sample, x0_out
    return _SCHEDULERS["outputs"]["euler_ancestral"](prev_sample=prev_sample, pred_original_sample=x0_out)


# ---- UniPC (Zhao et al. 2023): predictor UniP and corrector UniC, B(h) of type bh1 or bh2
def _unipc_update(self, x: _Lin, m0: _Lin, older, i_t, i_0, i_older, order, model_t=None) -> _Lin:
    """The UniP update (model_t None) or the UniC update with the new model form model_t, as diffusers forms it:
    from sigma index i_0 to i_t, model forms m0 (at i_0) and `older` (at the indices i_older)."""
    cfg = self.config
    (a_t, s_t), (a_0, s_0) = _alpha_sigma(cfg, self.sigmas[i_t]), _alpha_sigma(cfg, self.sigmas[i_0])
    lam_0 = _lambda(a_0, s_0)
    h = _lambda(a_t, s_t) - lam_0
    if order > 1 and not np.isfinite(h):  # diffusers returns NaN here: its differences are divided by r_k = 0
        raise ValueError(f"UniPC's order-{order} step to sigma 0 is singular: with final_sigmas_type='zero' set "
                         f"lower_order_final=True, or use final_sigmas_type='sigma_min'")
    rks = [(_lambda(*_alpha_sigma(cfg, self.sigmas[j])) - lam_0) / h for j in i_older[:order - 1]]
    d1s = [(m - m0) / rk for m, rk in zip(older, rks)]
    rks = np.array(rks + [1.0])
    hh = -h if self.predict_x0 else h
    h_phi_1 = np.expm1(hh)
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    b_h = hh if cfg.solver_type == "bh1" else np.expm1(hh)
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append(rks ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.stack(rows), np.array(b)
    if self.predict_x0:
        update, scale = x * (s_t / s_0) - m0 * (a_t * h_phi_1), a_t * b_h
    else:
        update, scale = x * (a_t / a_0) - m0 * (s_t * h_phi_1), s_t * b_h
    if model_t is None:  # predictor
        rhos = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]) if order > 2 else []
        terms = list(zip(rhos, d1s))
    else:
        rhos = [0.5] if order == 1 else np.linalg.solve(R, b)
        terms = list(zip(rhos[:-1], d1s)) + [(rhos[-1], model_t - m0)]
    for rho, d in terms:
        update = update - d * (scale * rho)
    return update


def _unipc_step(self, model_output, timestep, sample, return_dict=True):
    _needs_steps(self)
    if self.solver_p is not None:
        raise NotImplementedError("FastUniPCMultistepScheduler runs UniP itself: solver_p is not supported")
    cfg = self.config
    if self.step_index is None:
        self._init_step_index(timestep)
    i, n = self.step_index, len(self.timesteps)
    x0, eps = _converted(self, _of(sample), model_output, sample, i)
    m_new = self._evaluate(x0 if self.predict_x0 else eps, sample)  # history: the scheduler's own tensor
    use_corrector = i > 0 and i - 1 not in self.disable_corrector and self.last_sample is not None
    history = [_of(t) if t is not None else None for t in self.model_outputs][::-1]  # newest first
    if use_corrector:  # UniC: the corrected sample is made once, both the state and the next corrector's base
        corrected = _unipc_update(self, _of(self.last_sample), history[0], history[1:], i, i - 1,
                                  [i - k - 1 for k in range(1, self.this_order)], self.this_order, _of(m_new))
        sample = self._evaluate(corrected, sample)
    self.model_outputs = self.model_outputs[1:] + [m_new]
    self.timestep_list = self.timestep_list[1:] + [timestep]
    this_order = min(cfg.solver_order, n - i) if cfg.lower_order_final else cfg.solver_order
    self.this_order = min(this_order, self.lower_order_nums + 1)
    # the next corrector's base; a caller's tensor is copied, since the caller may change it in place meanwhile
    self.last_sample = (sample if use_corrector else sample.clone()) if i + 1 < n and i not in \
        self.disable_corrector else None
    history = [_of(m_new)] + history[:-1] if history else [_of(m_new)]
    prev_sample = self._evaluate(_unipc_update(self, _of(sample), history[0], history[1:], i + 1, i,
                                               [i - k for k in range(1, self.this_order)], self.this_order), sample)
    if self.lower_order_nums < cfg.solver_order:
        self.lower_order_nums += 1
    self._step_index += 1
    return _SCHEDULERS["outputs"]["plain"](prev_sample=prev_sample) if return_dict else (prev_sample,)


# ---- score_sde's VE predictor (reverse diffusion) and corrector (Langevin), as diffusers' ScoreSdeVeScheduler
def _ve_step_pred(self, model_output, timestep, sample, generator=None, return_dict=True):
    if self.timesteps is None:
        raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
    # diffusers' per-sample index: long(t (len(timesteps) - 1)) in float32
    index = (timestep * torch.ones(sample.shape[0]) * (len(self.timesteps) - 1)).long()
    sigma = self.discrete_sigmas[index].double()
    adjacent = torch.where(index == 0, torch.zeros_like(sigma), self.discrete_sigmas[(index - 1).clamp(min=0)].double())
    diffusion = (sigma**2 - adjacent**2).sqrt()
    noise = self._draw(generator, None, sample.shape, layout=sample.layout, device=sample.device, dtype=sample.dtype)
    mean = torch.empty_like(sample)
    prev_sample = affine_step(sample, model_output, 1.0, diffusion**2, diffusion, x_mean_out=mean,
                              backend=self.backend, **noise)
    if not return_dict:
        return prev_sample, mean
    return _SCHEDULERS["outputs"]["sde_ve"](prev_sample=prev_sample, prev_sample_mean=mean)


def _ve_step_correct(self, model_output, sample, generator=None, return_dict=True):
    if self.timesteps is None:
        raise ValueError("`self.timesteps` is not set, you need to run 'set_timesteps' after creating the scheduler")
    noise = self._draw(generator, None, sample.shape, layout=sample.layout)
    if "noise" in noise:
        noise["noise"] = noise["noise"].to(sample.device)
    prev_sample = langevin_step(sample, model_output, self.config.snr, 1.0, backend=self.backend, **noise)
    return _SCHEDULERS["outputs"]["plain"](prev_sample=prev_sample) if return_dict else (prev_sample,)


def _build_schedulers() -> dict:
    try:
        import diffusers
        from diffusers.schedulers import scheduling_ddim, scheduling_euler_ancestral_discrete, scheduling_euler_discrete
        from diffusers.schedulers import scheduling_sde_ve, scheduling_utils
    except ImportError as exc:
        raise ImportError(f"fastsde's diffusers schedulers need diffusers (pip install 'fastsde[diffusers]'): "
                          f"{exc}") from exc
    steps = {"DDIMScheduler": {"step": _ddim_step}, "DPMSolverMultistepScheduler": {"step": _dpm_step},
             "EulerDiscreteScheduler": {"step": _euler_step},
             "EulerAncestralDiscreteScheduler": {"step": _euler_ancestral_step},
             "UniPCMultistepScheduler": {"step": _unipc_step},
             "ScoreSdeVeScheduler": {"step_pred": _ve_step_pred, "step_correct": _ve_step_correct}}
    built = {"outputs": {"plain": scheduling_utils.SchedulerOutput, "ddim": scheduling_ddim.DDIMSchedulerOutput,
                         "euler": scheduling_euler_discrete.EulerDiscreteSchedulerOutput,
                         "euler_ancestral": scheduling_euler_ancestral_discrete.EulerAncestralDiscreteSchedulerOutput,
                         "sde_ve": scheduling_sde_ve.SdeVeOutput}}
    for base_name, methods in steps.items():
        base = getattr(diffusers, base_name)
        name = f"Fast{base_name}"
        doc = (f"diffusers' {base_name} with each update one fused fastsde pass (fastsde.compat.diffusers); load it "
               f"with {name}.from_config(pipe.scheduler.config).")
        built[name] = type(name, (_FusedSteps, base), {"__module__": __name__, "__qualname__": name, "__doc__": doc,
                                                       **methods})
    return built


def __getattr__(name):
    if name in _SCHEDULER_NAMES:
        if not _SCHEDULERS:
            _SCHEDULERS.update(_build_schedulers())
        return _SCHEDULERS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
