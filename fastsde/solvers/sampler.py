"""get_sampler: the few-step solvers' factory, beside fastsde.sampling.get_pc_sampler."""
from __future__ import annotations

import math

import torch

from fastsde import sde as sde_lib
from fastsde.noise import NoiseStream
from fastsde.ops.checks import FLOATS
from fastsde.executor import Runner, check_capturable, check_mode
from fastsde.precision import for_sampling, precision_dtype, resolve_precision
from fastsde.sampling.guard import check_finite
from fastsde.sampling.registry import PC_DEFAULTS, check_backend, check_eps, check_seed, check_shape
from fastsde.score import get_model_fn, get_score_parts
from fastsde.solvers.grid import GRIDS, point_fn, time_grid
from fastsde.solvers.program import Executor, Program
from fastsde.solvers.registry import get_solver

__all__ = ["get_sampler", "build_program", "denoiser_coefs", "check_program", "check_grid_args", "MAX_STEPS"]


def default_eps(sde) -> float:
    """score_sde's last time: 1e-5 for VE, 1e-3 for VP/subVP (sampling.PC_DEFAULTS)."""
    return PC_DEFAULTS["ve" if isinstance(sde, sde_lib.VESDE) else "vp"][2]


def denoiser_coefs(sde, point):
    """(p, q) with D(x, t) = (x + sigma^2 score) / alpha = p x + q out: noise-predicting (VP/subVP) models have
    score = -out / sigma, score models (VE) score = out."""
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE)):
        return 1.0 / point.alpha, -point.sigma / point.alpha
    return 1.0 / point.alpha, point.sigma**2 / point.alpha


#: The most steps a few-step solver takes (building the program costs ~0.1 ms per step on the host; 100,000 steps
#: is ~10 s). More is a ValueError before any work.
MAX_STEPS = 100_000


def _check_solver_sde(sde):
    if not isinstance(sde, sde_lib.SDE):
        try:
            sde = sde_lib.as_fastsde_sde(sde)
        except TypeError:
            raise TypeError(f"sde must be a fastsde VPSDE, subVPSDE or VESDE (or score_sde's), got "
                            f"{type(sde).__name__}") from None
    if not isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.VESDE)):
        raise TypeError(f"sde must be a VPSDE, subVPSDE or VESDE, got {type(sde).__name__}")
    return sde


def check_grid_args(grid, rho):
    """grid (a name of GRIDS or an explicit sequence of times, checked later against steps) and rho (a finite
    number > 0: Karras's sigma^(1/rho) spacing; rho <= 0 would reverse or collapse the grid)."""
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS} or a sequence of times, got {grid!r}")
    elif isinstance(grid, (bytes, dict, set)) or grid is None:
        raise TypeError(f"grid must be one of {GRIDS} or a sequence of times, got {type(grid).__name__}")
    return grid, sde_lib.check_real("rho", rho, low=0.0, low_open=True)


def _point(at_time, t, continuous):
    """Point at t, or a ValueError when (alpha, sigma) there is not a finite positive pair (sigma = 0 at t = 0 under
    continuous labels; overflow at a huge sigma_max)."""
    try:
        P = at_time(t)
        ok = all(math.isfinite(v) and v > 0 for v in (P.alpha, P.sigma)) and math.isfinite(P.lam)
    except (OverflowError, ZeroDivisionError, ValueError):
        ok, P = False, None
    if not ok:
        what = "" if P is None else f" (alpha = {P.alpha:.6g}, sigma = {P.sigma:.6g})"
        raise ValueError(f"the time grid reaches t = {t:.6g}, where the model's noise level is not a positive finite "
                         f"number{what}: a grid must end at a time with sigma > 0 (e.g. eps > 0; t = 0 only "
                         f"with discrete labels), and sigma_max must be a float64-range value")
    return P


def check_program(program, sde, dtype, name) -> None:
    """Every coefficient the program applies, in the state's dtype: finite and within its range (a VE sigma_max of
    1e30 gives a denoiser coefficient sigma^2 = 1e60, inf in float32). A ValueError before any model call."""
    limit = torch.finfo(dtype).max
    for ins in program.code:
        if hasattr(ins, "coefs"):
            values, t = ins.coefs, None
        else:
            try:
                values = tuple(float(v) for v in denoiser_coefs(sde, ins.point))
            except (OverflowError, ZeroDivisionError):
                values = (math.inf,)
            t = ins.point.t
        worst = max(abs(v) if math.isfinite(v) else math.inf for v in values)
        if worst > limit:
            where = f" at t = {t:.6g}" if t is not None else ""
            raise ValueError(f"the {name} solver's coefficients{where} reach {worst:.3g}, beyond {dtype}'s range "
                             f"({limit:.3g}): the SDE's noise scale is too large for {dtype} (a VE sigma_max of "
                             f"{getattr(sde, 'sigma_max', float('nan')):.3g}?); use "
                             f"{'dtype=torch.float64 or ' if dtype != torch.float64 else ''}a smaller sigma_max")


def build_checked(solver, program, points, at_log_snr, churn_steps) -> None:
    """solver.build, with float overflow or a division by zero in its coefficients (a degenerate grid: sigmas
    beyond float64's range when squared, two stages on one noise level) a ValueError naming the solver."""
    try:
        solver.build(program, points, at_log_snr, churn_steps)
    except (OverflowError, ZeroDivisionError) as e:
        first, last = points[0], points[-1]
        raise ValueError(f"the {solver.name} solver's coefficients are not finite on this grid (sigma~ "
                         f"{first.st:.6g} -> {last.st:.6g}, {len(points) - 1} steps): {e}") from None


def build_program(solver, sde, steps: int, *, continuous=True, grid="logsnr", rho=7.0, eps=None, denoise=True):
    """(Program, time grid) of `solver` (a Solver instance) on `steps` steps of `grid` (a name of GRIDS, from T to
    eps, or an explicit sequence of steps + 1 times: fastsde.solvers.grid.time_grid)."""
    eps = default_eps(sde) if eps is None else float(eps)
    ts = time_grid(sde, steps, eps, grid, rho)
    at_time, at_log_snr = point_fn(sde, continuous)
    points = [_point(at_time, t, continuous) for t in ts.tolist()]
    for i, (P, Q) in enumerate(zip(points, points[1:])):
        if not Q.lam > P.lam:
            raise ValueError(f"the grid's log-SNR must increase at every step; step {i} (t {P.t:.6g} -> {Q.t:.6g}) "
                             f"goes from {P.lam:.6g} to {Q.lam:.6g}: with discrete labels use fewer steps than N")
    program = Program()
    build_checked(solver, program, points, at_log_snr, int(steps))
    if denoise:
        program.finish_with_denoise(points[-1], int(steps))
    return program, ts


def get_sampler(name: str, sde, shape, steps: int, *, inverse_scaler=None, continuous: bool = True,
                grid: str = "logsnr", rho: float = 7.0, eps: float | None = None, denoise: bool = True, seed=None,
                sample_ids=None, backend: str = "auto", device="cpu", dtype=torch.float32, precision=None,
                compile: bool = False, capture: bool = False, capture_steps: int | None = None, progress: bool = False,
                **options):
    """Few-step solver `name` (fastsde.solvers.solver_names()) for a score model under `sde`'s conventions.

    Returns sampler(model, z=None) -> (x (shape), model_evals): starts at z or a prior sample (FSN1 draw 0 of `seed`,
    `sample_ids`), runs `steps` steps of `grid` ("uniform", "logsnr", "karras" with `rho`, "quadratic") from T to
    eps (default: 1e-5 VE, 1e-3 VP/subVP) and, with `denoise`, returns the data prediction D(x, eps) (one more
    model call). `grid` may instead be an explicit 1-D sequence of steps + 1 decreasing times in [0, T] (eps is
    then unused and the denoising is at the last time), e.g. a diffusers scheduler's timesteps through
    fastsde.compat.diffusers.times_of_timesteps. model(x, labels) follows
    fastsde.score.get_score_parts(sde, continuous). `options` are the solver's (e.g. eta, s_churn; see the solver
    class). The adaptive solver ignores `steps` and `grid`.
    precision ("fp32", "bf16", "fp16", "auto", or None: `dtype`) runs the model in that precision; the update ops
    read its output directly and the state stays `dtype` (fastsde.precision). `sampler.precision`: the resolved one.
    compile=True compiles each model call together with its fused update (fastsde.executor.Executor.eval_step,
    torch.compile(fullgraph=True)): the time labels and coefficients are tensors, so every step shares one graph.
    The first call runs its first model call eagerly and compiles for the rest. capture=True (CUDA) runs the first
    call compiled and uncaptured, then records the program as CUDA graphs of at most `capture_steps` steps (default
    fastsde.executor.CAPTURE_STEPS) and replays them from the second call on (a new start z, seed or sample ids is a
    copy into the graphs' inputs); on the CPU it runs the compiled program. The executor, its buffers and graphs are
    kept per model between calls (fastsde.executor.Runner). progress=True shows a bar over the steps.
    """
    backend = check_backend(backend)
    check_mode(backend, compile, capture, capture_steps, fused_only=False)  # the reference combine compiles too
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    solver = get_solver(name)(**options)
    shape = check_shape(shape)
    if capture:  # the reference combine reads the sample ids on the host: refused on CUDA before any work
        check_capturable(backend, device)
    steps = sde_lib.check_count("steps", steps, MAX_STEPS, " (fastsde.solvers.sampler.MAX_STEPS)")
    sde = _check_solver_sde(sde)
    grid, rho = check_grid_args(grid, rho)
    if not callable(inverse_scaler) and inverse_scaler is not None:
        raise TypeError(f"inverse_scaler must be callable or None, got {type(inverse_scaler).__name__}")
    if not isinstance(dtype, torch.dtype) or dtype not in FLOATS:
        raise TypeError(f"dtype must be one of {', '.join(map(str, FLOATS))}, got {dtype!r}")
    check_seed(seed)
    NoiseStream("fastsde", seed, sample_ids)  # checks sample_ids
    eps = default_eps(sde) if eps is None else check_eps(sde, eps)
    precision = resolve_precision(precision, device)
    precision_dtype(precision, dtype)
    casts = {}
    labels_fn, scale_fn = get_score_parts(sde, continuous)
    inverse_scaler = inverse_scaler or (lambda v: v)
    at_time, _ = point_fn(sde, continuous)
    program = None if solver.adaptive else build_program(solver, sde, steps, continuous=continuous, grid=grid,
                                                         rho=rho, eps=eps, denoise=denoise)[0]
    if solver.adaptive:
        if not isinstance(grid, str):
            raise ValueError("the adaptive solver chooses its own steps: grid must be a name, not explicit times")
        time_grid(sde, 1, eps, grid, rho)  # checks eps and grid
        _point(at_time, eps, continuous)  # sigma > 0 at every time it visits (sigma increases in t from eps)
        if denoise:
            program = Program()
            program.finish_with_denoise(at_time(eps), 0)
    if program is not None:
        check_program(program, sde, dtype, name)

    def labels_of(point):
        return labels_fn(torch.full((shape[0],), point.t, dtype=dtype, device=device))

    def make(x):
        return Executor(program, x, labels_of, lambda p: denoiser_coefs(sde, p), seed=0, sample_ids=None,
                        backend=backend)

    runner = None if program is None else Runner(make, compile=compile, capture=capture, capture_steps=capture_steps,
                                                 what=f"the {name} solver", desc=f"{name} sampling")

    def sampler(model, z=None):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, labels) -> tensor (a torch.nn.Module or a "
                            f"function), got {type(model).__name__}")
        stream = NoiseStream("fastsde", seed, sample_ids)
        target = for_sampling(model, precision, dtype, casts)
        model_fn = get_model_fn(target, train=False)
        with torch.no_grad():
            x = stream.start(sde, shape, z, device=device, dtype=dtype)
            x = x.contiguous()
            ids = None if stream.sample_ids is None else stream.sample_ids.to(device)
            evals = 0
            if solver.adaptive:
                x, evals = solver.sample(sde, x, model_fn, labels_fn, None if isinstance(sde, sde_lib.VESDE)
                                         else scale_fn, eps, stream.seed, ids, backend)
            if program is not None:
                x = runner(target, x, stream.seed, ids, progress=progress, check=False)  # eval mode: the Runner's
                evals += program.model_evals
            check_finite(x, step=evals, t=eps, what=f"the {name} solver's sample")
            return inverse_scaler(x), evals

    sampler.program = program
    sampler.solver = solver
    sampler.precision = precision
    return sampler
