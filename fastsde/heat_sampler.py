"""Sampling the heat family (fastsde.heat) in the DCT domain with per-frequency fused steps.

The state is y = dct2(x). Per step the model sees idct2(y) and its noise prediction is taken to the DCT domain,
eps = dct2(out); the update is one fastsde.ops.freq_step, y' = a y + b eps + c z, with a, b, c float64 vectors over
the H W frequencies (broadcast over batch and channels) and z drawn from FSN1 directly in the frequency domain.

Solvers (marginal y_k(t) = m_k(t) y_k(0) + s_k(t) z per frequency; t -> t' < t):
  ddim               the exponential integrator of the probability flow, exact per frequency for a frozen eps
                     (u = y / m obeys du = eps d(s / m)), with eta of DDIM's stochasticity:
                     y' = m' x0 + sqrt(s'^2 - eta^2 v) eps + eta sqrt(v) z,  x0 = (y - s eps) / m,
                     v = s'^2 (1 - (m s' / (m' s))^2), the DDPM posterior variance of the per-frequency transition
                     (eta = 1: ancestral sampling). a = m'/m, b = sqrt(s'^2 - eta^2 v) - m' s / m, c = eta sqrt(v);
                     where m < M_MIN the frequency is noise and x0 is taken as 0 (a = 0, b = sqrt(s'^2 - eta^2 v)).
  reverse_diffusion  score_sde's reverse-diffusion predictor on the exact one-step transitions (the reference PC
                     sampler's update, noise drawn in the frequency domain): a = 2 - A, b = -G^2 / s, c = G.
  dpmpp_2m           DPM-Solver++(2M) (Lu et al. 2022) per frequency: lambda_k = log(m_k / s_k) differs between
                     frequencies, so each has its own step h_k and ratio r_k; with the data prediction
                     D = (y - s eps) / m (0 where m < M_MIN),
                     y' = (s'/s) y + m' (1 - e^-h) ((1 + 1/(2r)) D - 1/(2r) D_prev)   (first step: D alone).
                     Deterministic (the probability-flow ODE); runs on the executor only.
Every derivation holds per frequency, so the VP digits model runs here too: VPSDE is the heat SDE with blur 0
(`as_frequency_sde`), which puts the VP and heat models on the same sampler for comparisons.

Without a constraint or frames the run is a program on the one executor (fastsde.executor: `heat_program`, a raw
Eval of the model seen in the DCT domain and a FreqCombine per step), so it runs eagerly, compiled (`compile=True`)
or captured as CUDA graphs (`capture=True`) like every other fused sampler: `get_heat_sampler`.

`constraint(x0) -> x0` (pixels) turns the ddim step into null-space projection (DDNM, Wang et al. 2023): the step
is taken from constraint(clip(x0)) instead of x0, y' = m' dct2(x0c) + sqrt(s'^2 - eta^2 v) eps + eta sqrt(v) z,
and the run returns the last x0c (which meets the observation exactly); inpainting and super-resolution use it
(fastsde.cli.heat). `t_start < T` with `start` (pixels) starts from the
forward marginal of a given image (sampling from a blurred or pixelated digit).
"""
from __future__ import annotations

import torch

from fastsde import sde as sde_lib
from fastsde.heat import FrequencySDE, HeatSDE, dct2, eigenvalues, idct2
from fastsde.ops.freq_step import freq_step
from fastsde.score import get_model_fn

__all__ = ["as_frequency_sde", "heat_sample", "get_heat_sampler", "heat_program", "step_coefficients", "constraints",
           "degrade", "SOLVERS"]

SOLVERS = ("ddim", "reverse_diffusion", "dpmpp_2m")
#: Frequencies whose mean coefficient m_k(t) is below this carry no usable signal: ddim takes their x0 as 0 (the
#: heat SDE's highest frequencies reach m ~ e^-74 at T, where (y - s eps) / m would multiply the model's error by
#: e^74; VP's m(T) = 0.0064 stays above it).
M_MIN = 1e-3


def as_frequency_sde(sde) -> FrequencySDE:
    """`sde` as a heat-family SDE: itself, or a VPSDE as the heat SDE with blur 0 (the same marginals and model
    conventions: labels 999 t, noise prediction)."""
    if isinstance(sde, FrequencySDE):
        return sde
    if isinstance(sde, sde_lib.VPSDE):
        return HeatSDE(sde.beta_0, sde.beta_1, blur=0.0, N=sde.N)
    raise ValueError(f"sde must be a heat-family SDE (fastsde.heat) or a VPSDE, got {type(sde).__name__}")


def step_coefficients(sde: FrequencySDE, t: float, t_next: float, shape, solver: str = "ddim", eta: float = 0.0):
    """(a, b, c) float64 (H W,) of one step from t to t_next for images of `shape`; c is None without noise."""
    (m, s), (m1, s1) = (sde.marginal_coefs(torch.tensor([v], dtype=torch.float64), shape) for v in (t, t_next))
    m, s, m1, s1 = (v.reshape(-1) for v in (m, s, m1, s1))
    if solver == "reverse_diffusion":
        A, G = (v.reshape(-1) for v in sde.transition(torch.tensor([t], dtype=torch.float64), shape))
        return 2.0 - A, -G * G / s, G
    lam = eigenvalues(shape).reshape(-1)
    ratio = torch.exp(sde.log_mean(torch.tensor(t_next, dtype=torch.float64), lam)
                      - sde.log_mean(torch.tensor(t, dtype=torch.float64), lam))  # m'/m, finite where both underflow
    v = s1 * s1 * (1.0 - (s1 / (ratio * s)) ** 2).clamp(min=0.0)
    c = eta * v.sqrt()
    noise_part = (s1 * s1 - eta * eta * v).clamp(min=0.0).sqrt()
    # where m < M_MIN, x0 = 0: the frequency is noise, and 1 / m would amplify the model's error. Its eps is then the
    # state's own, y / s (not the model's), so the step is y' = (noise_part / s) y: the exact flow of a frequency
    # with x0 = 0, which keeps the run consistent as the steps shrink (the model's eps there made it drift)
    seen = m >= M_MIN
    return (torch.where(seen, ratio, noise_part / s), torch.where(seen, noise_part - ratio * s, 0.0),
            (c if eta > 0 else None))


def _grid(sde, solver, steps, eps, t_start):
    if solver == "reverse_diffusion":  # score_sde's grid: N points, each a step of 1/N
        return torch.linspace(t_start, eps, steps, dtype=torch.float64).tolist()
    return torch.linspace(t_start, eps, steps + 1, dtype=torch.float64).tolist()


class _DCTModel(torch.nn.Module):
    """The model seen in the DCT domain: y -> dct2(model(idct2(y), labels)) in y's dtype (the executor's state is the
    DCT coefficients; the transform is linear and orthonormal)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y, labels):
        out = self.model(idct2(y), labels)
        return dct2(out.to(y.dtype)) if out.dtype != y.dtype else dct2(out)


def _dpmpp_2m(program, sde, shape, grid):
    """DPM-Solver++(2M) per frequency (module docstring) into `program`: per step a raw Eval (eps), a FreqCombine
    forming D in a history buffer ("y" and "m" alternate), then y <- (s'/s) y + b1 D (+ b2 D_prev)."""
    lam = eigenvalues(shape).reshape(-1)
    times = []

    def at(t):
        tt = torch.tensor(t, dtype=torch.float64)
        log_m = sde.log_mean(tt, lam).reshape(-1) * torch.ones_like(lam)
        s = sde.variance(tt, lam).reshape(-1).sqrt() * torch.ones_like(lam)
        return log_m, s

    h_prev = None
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        (log_m, s), (log_m1, s1) = at(t), at(t_next)
        m, m1 = log_m.exp(), log_m1.exp()
        seen = m >= M_MIN
        h = (log_m1 - s1.log()) - (log_m - s.log())  # lambda' - lambda per frequency
        cur, prev = ("y", "m") if i % 2 == 0 else ("m", "y")
        program.eval("x", 0, t, i, raw=True)
        program.freq_combine(cur, "x", 0, torch.where(seen, 1.0 / m, 0.0), torch.where(seen, -s / m, 0.0), None,
                             i + 1, i)
        phi = -torch.expm1(-h)  # 1 - e^-h
        b = m1 * phi
        if h_prev is None:
            program.freq_combine("x", "x", cur, s1 / s, b, None, i + 1, i)
        else:
            r = h_prev / h
            program.freq_combine("x", "x", cur, s1 / s, b * (1.0 + 0.5 / r), None, i + 1, i)
            program.freq_combine("x", "x", prev, torch.ones_like(b), -b * (0.5 / r), None, i + 1, i)
        h_prev = h
        times.append(t)
    return program, times


def heat_program(sde: FrequencySDE, shape, steps: int, solver: str = "ddim", eta: float = 0.0, eps: float = 1e-3,
                 t_start: float | None = None):
    """(Program, time of each Eval): per step i a raw Eval of the DCT-domain model at labels 999 t and a FreqCombine
    y <- a y + b eps + c z(draw i + 1) with step_coefficients' vectors (reverse_diffusion's last step noise-free);
    dpmpp_2m: _dpmpp_2m's instructions."""
    from fastsde.executor import Program

    t_start = sde.T if t_start is None else t_start
    grid = _grid(sde, solver, steps, eps, t_start)
    if solver == "dpmpp_2m":
        return _dpmpp_2m(Program(), sde, shape, grid)
    pairs = list(zip(grid[:-1], grid[1:])) if solver == "ddim" else [(t, None) for t in grid]
    program, times = Program(), []
    for i, (t, t_next) in enumerate(pairs):
        if solver == "reverse_diffusion":
            a, b, c = step_coefficients(sde, t, t, shape, solver)
            c = None if i == len(pairs) - 1 else c
        else:
            a, b, c = step_coefficients(sde, t, t_next, shape, solver, eta)
        program.eval("x", 0, t, i, raw=True)
        program.freq_combine("x", "x", 0, a, b, c, i + 1, i)
        times.append(t)
    return program, times


def _check_run(sde, solver, steps, eta, eps, t_start, start):
    sde = as_frequency_sde(sde_lib.as_fastsde_sde(sde))
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    steps = sde_lib.check_count("steps", steps, 100_000)
    eta = sde_lib.check_real("eta", eta, low=0.0)
    eps = sde_lib.check_real("eps", eps, low=0.0, low_open=True)
    t_start = sde.T if t_start is None else sde_lib.check_real("t_start", t_start, low=eps, low_open=True)
    if t_start > sde.T or eps >= t_start:
        raise ValueError(f"need 0 < eps < t_start <= T = {sde.T}, got eps={eps}, t_start={t_start}")
    if start is None and t_start < sde.T:
        raise ValueError("t_start < T needs `start` (the image whose forward marginal the run starts from)")
    return sde, steps, eta, eps, t_start


def _start(sde, shape, t_start, start, z0, device, dtype):
    """The DCT-domain start: the prior from the normals z0 (pixels' FSN1 draw 0), or the forward marginal of `start`
    at t_start."""
    if start is None:
        return dct2(sde.prior_from_normal(z0.double())).to(dtype)
    m0, s0 = sde.marginal_coefs(torch.full((shape[0],), t_start, dtype=torch.float64), shape)
    return (m0 * dct2(start.to(device=device, dtype=torch.float64)) + s0 * z0.double()).to(dtype)


def get_heat_sampler(sde, shape, *, steps: int = 100, solver: str = "ddim", eta: float = 0.0, eps: float = 1e-3,
                     seed=None, sample_ids=None, backend: str = "auto", device="cpu", dtype=torch.float32,
                     t_start: float | None = None, compile: bool = False, capture: bool = False,
                     capture_steps: int | None = None, progress: bool = False):
    """The heat family's sampler on the one executor: returns sampler(model, z=None, start=None) -> (x (shape,
    pixels), model evaluations), the contract of every fastsde sampler. z: the standard normals of the start (default
    FSN1 draw 0 of `seed`, `sample_ids`); start: an image whose forward marginal at t_start the run starts from
    (t_start < T). compile=True / capture=True (CUDA graphs of `capture_steps` steps) as get_sampler's."""
    from fastsde import random as fsn1
    from fastsde.executor import Executor, Runner, check_capturable, check_mode
    from fastsde.noise import NoiseStream
    from fastsde.sampling.registry import check_backend, check_seed, check_shape

    shape = check_shape(shape)
    backend = check_backend(backend)
    check_mode(backend, compile, capture, capture_steps, fused_only=False)
    if capture:
        check_capturable(backend, device)
    check_seed(seed)
    NoiseStream("fastsde", 0, sample_ids)  # checks sample_ids
    sde, steps, eta, eps, t_start = _check_run(sde, solver, steps, eta, eps, t_start, object())
    program, _ = heat_program(sde, shape, steps, solver, eta, eps, t_start)

    def make(x):
        return Executor(program, x, lambda t: torch.full((x.shape[0],), t * 999, device=x.device, dtype=x.dtype),
                        seed=0, sample_ids=None, backend=backend)

    runner = Runner(make, compile=compile, capture=capture, capture_steps=capture_steps, what=f"the heat {solver} "
                    f"sampler", desc=f"heat {solver}")
    wrappers = {}  # id(model) -> the DCT-domain wrapper (one per model: the executor's compiled steps key on it)

    def sampler(model, z=None, start=None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, labels) -> tensor, got {type(model).__name__}")
        if start is None and t_start < sde.T:
            raise ValueError("t_start < T needs `start` (the image whose forward marginal the run starts from)")
        stream = NoiseStream("fastsde", seed, sample_ids)
        wrapper = wrappers.get(id(model))
        if wrapper is None or wrapper.model is not model:
            wrapper = wrappers[id(model)] = _DCTModel(model)
        with torch.no_grad():
            ids = stream.sample_ids_for(shape[0])
            if z is None:  # FSN1 draw 0 in float64, rounded to the state's dtype (the host loop's start)
                z0 = fsn1.fsn1_normal_like(torch.empty(shape, dtype=torch.float64), stream.seed, 0, ids)
                z0 = z0.to(device=device, dtype=dtype)
            else:
                z0 = stream.start(sde, shape, z, device=device, dtype=dtype)
            y = _start(sde, shape, t_start, start, z0, device, dtype)
            ids = ids.to(device)
            y = runner(wrapper, y, stream.seed, ids, progress=progress)
            return idct2(y), program.model_evals

    sampler.program = program
    return sampler


@torch.no_grad()
def heat_sample(model, sde, shape, *, steps: int = 100, solver: str = "ddim", eta: float = 0.0, eps: float = 1e-3,
                seed: int = 0, sample_ids=None, backend: str = "auto", device="cpu", dtype=torch.float32,
                start: torch.Tensor | None = None, t_start: float | None = None, constraint=None,
                frames: int = 0, progress: bool = False):
    """Samples (shape, pixels, the model's data scale) from `model` under `sde` (module docstring).

    Returns (x, nfe, trajectory): trajectory holds `frames` snapshots of the model's clipped x0 prediction along the
    run (pixels), the coarse-to-fine order of generation; empty when frames=0. Without a constraint or frames this is
    get_heat_sampler's program on the executor; with them, the host loop below (it reads x0 every step).
    """
    from fastsde.sampling.registry import progress_bar

    sde, steps, eta, eps, t_start = _check_run(sde, solver, steps, eta, eps, t_start, start)
    if constraint is not None and solver != "ddim":
        raise ValueError("constraint (inpainting, super-resolution) runs on the ddim solver")
    if frames > 0 and solver == "dpmpp_2m":
        raise ValueError("frames (the x0 trajectory) run on the ddim or reverse_diffusion solver, not dpmpp_2m")
    if constraint is None and frames <= 0:
        x, nfe = get_heat_sampler(sde, shape, steps=steps, solver=solver, eta=eta, eps=eps, seed=seed,
                                  sample_ids=sample_ids, backend=backend, device=device, dtype=dtype, t_start=t_start,
                                  progress=progress)(model, start=start)
        return x, nfe, []
    shape = tuple(shape)
    B = shape[0]
    ids = torch.arange(B) if sample_ids is None else torch.as_tensor(sample_ids)
    model_fn = get_model_fn(model, train=False)
    noise = torch.empty(shape, dtype=torch.float64)
    from fastsde import random as fsn1

    def z(draw):  # FSN1 normals, drawn directly in the frequency domain
        return fsn1.fsn1_normal_like(noise, seed, draw, ids).to(device=device, dtype=dtype)

    y = _start(sde, shape, t_start, start, z(0), device, dtype)
    grid = _grid(sde, solver, steps, eps, t_start)
    pairs = list(zip(grid[:-1], grid[1:])) if solver == "ddim" else [(t, None) for t in grid]
    keep = set() if frames <= 0 else {round(i * (len(pairs) - 1) / max(frames - 1, 1)) for i in range(frames)}
    trajectory = []
    for i, (t, t_next) in enumerate(progress_bar(pairs, progress, f"heat {solver}")):
        labels = torch.full((B,), t * 999, device=device, dtype=dtype)
        out = model_fn(idct2(y), labels)
        e = dct2(out.to(dtype)) if out.dtype != dtype else dct2(out)
        last = i == len(pairs) - 1
        if solver == "reverse_diffusion":
            a, b, c = step_coefficients(sde, t, t, shape, solver)
            c = None if last else c  # the last step returns the mean, as score_sde's denoise
        else:
            a, b, c = step_coefficients(sde, t, t_next, shape, solver, eta)
        if constraint is not None or i in keep:
            m, s = (v.reshape(1, 1, *shape[-2:]).to(device) for v in
                    sde.marginal_coefs(torch.tensor([t], dtype=torch.float64), shape))
            # the frames show only the frequencies already resolved (m >= 0.1: the error of (y - s eps) / m is at
            # most 10x the model's); the projection uses every frequency above M_MIN
            floor = M_MIN if constraint is not None else 0.1
            x0 = torch.where(m >= floor, (y.double() - s * e.double()) / m, 0.0)
            x0 = idct2(x0.to(dtype)).clamp(-1.0, 1.0)
            if i in keep:
                trajectory.append(x0.cpu())
        if constraint is None:
            y = freq_step(y, e, a, b, c, seed=seed, sample_ids=ids, draw=i + 1, backend=backend)
        else:
            x0c = constraint(x0)
            if last:  # DDNM's output: the projected x0 prediction, which meets the observation exactly
                return x0c.to(dtype), len(pairs), trajectory
            m1 = sde.marginal_coefs(torch.tensor([t_next], dtype=torch.float64), shape)[0].reshape(1, 1, *shape[-2:])
            x0c = dct2(x0c.to(torch.float64))
            grid = (1, 1, *shape[-2:])
            bb = (b.reshape(grid) + m1 * s / m).to(device)  # sqrt(s'^2 - eta^2 v) where m >= M_MIN
            seen = (m >= M_MIN).to(device)  # elsewhere the frequency is noise: step_coefficients' y' = a y
            y = torch.where(seen, m1.to(device) * x0c + bb * e.double(),
                            a.reshape(grid).to(device) * y.double()).to(dtype)
            if c is not None:
                y = y + c.reshape(1, 1, *shape[-2:]).to(device=device, dtype=dtype) * z(i + 1)
    return idct2(y), len(pairs), trajectory


def degrade(images: torch.Tensor, how: str) -> torch.Tensor:
    """Test digits (B, 1, 16, 16) in [0, 1] blurred (Gaussian, std 1.5 pixels, reflected borders) or 2x2 pixelated."""
    if how == "pixelate":
        return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(images, 2), scale_factor=2.0,
                                               mode="nearest")
    r = torch.arange(-4, 5, dtype=images.dtype)
    k = torch.exp(-0.5 * (r / 1.5) ** 2)
    k = k / k.sum()
    x = torch.nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.reshape(1, 1, 1, 9))
    return torch.nn.functional.conv2d(x, k.reshape(1, 1, 9, 1))


def constraints(action: str, known: torch.Tensor, mask: torch.Tensor | None):
    """The null-space projection x0 -> x0c of superres (A = 2x2 average pooling, A^+ = nearest upsampling) or
    inpaint (A = the mask), for `known` (data scale, 16x16) the test digits."""
    if action == "superres":
        low = torch.nn.functional.avg_pool2d(known, 2)

        def project(x0):
            up = torch.nn.functional.interpolate
            return x0 - up(torch.nn.functional.avg_pool2d(x0, 2) - low.to(x0), scale_factor=2.0, mode="nearest")
        return project
    m = mask.to(known)

    def replace(x0):
        return x0 * (1 - m.to(x0)) + known.to(x0) * m.to(x0)
    return replace
