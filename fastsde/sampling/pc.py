"""The predictor-corrector sampler (Song et al. algorithm 1): score_sde's reference loop, and PC as a program.

backend="reference" runs the predictors' and correctors' update_fn exactly as score_sde writes them (the
specification). Every other backend compiles the loop into a fastsde.executor.Program (`pc_program`): per step,
each corrector iteration and the predictor are a raw Eval (the model call) followed by one fused update -- a Combine
with the x_mean output and the inpainting projection, or a Langevin instruction whose step size is computed on the
device -- and the executor runs it eagerly, compiled (`compile=True`) or captured (`capture=True`), like every
other fused sampler. Both loops draw the same FSN1 noise at the draw ids of fastsde.noise.DrawPlan (or, with
noise="torch", torch.randn_like in score_sde's order), so they agree to float tolerance.
"""
from __future__ import annotations



import torch

from fastsde._util import per_sample
from fastsde.executor import Executor, Program, Runner, check_capturable, check_mode
from fastsde.noise import DrawPlan, NoiseStream
from fastsde.precision import for_sampling, precision_dtype, resolve_precision
from fastsde.sampling.guard import NonFiniteError, count_nonfinite
from fastsde.sampling.registry import (check_pc_args, check_sde, check_seed, check_shape, langevin_alpha,
                                       progress_bar)
from fastsde.score import get_score_fn, get_score_parts

__all__ = ["get_pc_sampler", "pc_loop", "pc_program", "Projection"]


def get_pc_sampler(sde, shape, predictor, corrector, inverse_scaler, snr, n_steps=1, probability_flow=False,
                   continuous=False, denoise=True, eps=1e-3, device="cpu", *, backend="auto", seed=None,
                   noise="fastsde", sample_ids=None, dtype=torch.float32, progress=False, compile=False,
                   capture=False, capture_steps=None, precision=None, check_finite=True):
    """Predictor-corrector sampler (Song et al. algorithm 1): returns sampler(model, z=None) -> (x (shape), nfe),
    starting at z or a prior sample (draw 0 of the noise stream), the contract of get_sampler and get_ode_sampler.

    predictor/corrector: registered names ("euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none";
    "langevin", "ald", "none"), classes, or None. Per time step t_i of linspace(T, eps, N): the corrector runs
    n_steps Langevin iterations, then the predictor takes one step. nfe = N (n_steps + 1), as score_sde counts.

    backend="reference" runs the predictors' and correctors' update_fn exactly as score_sde writes them; any other
    backend runs PC as a program on fastsde.executor (module docstring), with per-step coefficients tabulated once in
    float64 and a noise-predicting model's -1/std folded into them. compile=True compiles the model call with
    torch.compile(fullgraph=True), one graph for every step; capture=True (CUDA) records the program as CUDA graphs
    of at most `capture_steps` steps (default fastsde.executor.CAPTURE_STEPS) and replays them from the second call
    on (on the CPU: the compiled program). Both need FSN1 noise (noise="fastsde") and a fused backend.
    precision ("fp32", "bf16", "fp16", "auto" or None: the state's dtype) runs the model in that precision while
    the state (`dtype`), coefficients and noise keep theirs (fastsde.precision); the fused steps read the half
    output directly, the reference loop gets it converted to `dtype`. The sampler's `precision` attribute holds
    the resolved value.
    Both loops read the result once after the last step and raise guard.NonFiniteError when it holds NaN/inf (a NaN
    never becomes finite again, so no per-step sync is needed). check_finite=False returns such samples instead, as
    score_sde's loop does.
    """
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    sde, shape = check_sde(sde), check_shape(shape)  # score_sde's SDE objects are converted (sde.as_fastsde_sde)
    check_seed(seed)
    backend, predictor_cls, corrector_cls = check_pc_args(sde, predictor, corrector, snr, n_steps, probability_flow,
                                                          eps, backend, noise, sample_ids)
    mode = check_loop_mode(backend, noise, compile, capture, capture_steps)
    if capture:
        check_capturable(backend, device)
    precision = resolve_precision(precision, device)
    precision_dtype(precision, dtype)
    n_steps = int(n_steps)
    loops = {}  # the fused loop of a model, built on the first call and reused (compiled graphs, captured graphs)
    casts = {}  # the model in `precision` (fastsde.precision.for_sampling), weights refreshed at every call

    def pc_sampler(model, z=None):
        stream = NoiseStream(noise, seed, sample_ids, backend=backend)
        model = for_sampling(model, precision, dtype, casts, output_dtype=dtype if backend == "reference" else None)
        with torch.no_grad():
            x = stream.start(sde, shape, z, device=device, dtype=dtype)
            x = pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, n_steps, probability_flow,
                        continuous, eps, backend, progress, denoise=denoise, mode=mode, cache=loops,
                        check_finite=check_finite)
            return inverse_scaler(x), sde.N * (n_steps + 1)

    pc_sampler.precision = precision
    return pc_sampler


def check_loop_mode(backend, noise, compile, capture, capture_steps) -> dict:
    """The executor's mode from the factory arguments, checked before any sampling (fastsde.executor.check_mode)."""
    check_mode(backend, compile, capture, capture_steps, noise=noise)
    return {"compile": compile or capture, "capture": capture, "capture_steps": capture_steps}


class Projection:
    """score_sde's inpainting projection after every update: x <- x (1 - m) + (mean + std z) m and
    x_mean <- x (1 - m) + mean m, with (mean, std) = marginal_prob(data, t) = (coef(t) data, std(t))."""

    def __init__(self, sde, data, mask, timesteps):
        self.data, self.mask = data, mask
        ones = torch.ones(timesteps.shape[0], 1, dtype=torch.float64, device=timesteps.device)
        coef, std = sde.marginal_prob(ones, timesteps.double())
        self.table = torch.stack([coef[:, 0], std]).contiguous()  # (2, N) float64: [data_a; data_c]

    def apply(self, x, t, stream, sde):
        """The reference form, as score_sde writes it (noise from the stream's next draw)."""
        known, std = sde.marginal_prob(self.data, t)
        x = x * (1.0 - self.mask) + (known + stream.normal_like(x) * per_sample(std, x)) * self.mask
        return x, x * (1.0 - self.mask) + known * self.mask


def pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, n_steps, probability_flow, continuous, eps,
            backend, progress, projection=None, denoise=True, mode=None, cache=None, check_finite=True):
    """Run the N PC steps from x; returns x_mean (denoise) or x after the last step. projection: inpainting
    (data, mask) (controllable.py).

    The program runs on the executor unless backend="reference", a predictor/corrector has no fused form (a user
    class), the model conventions are unknown, the SDE is frequency-diagonal (fastsde.heat samples those), or the
    projection is asked for with torch noise. Draw ids: fastsde.noise.DrawPlan. `cache` (a dict) keeps the
    executor's Runner between calls of one sampler (compiled steps, recorded graphs).
    """
    device = x.device
    mode = mode or {"compile": False, "capture": False, "capture_steps": None}
    score_fn = get_score_fn(sde, model, train=False, continuous=continuous)
    predictor_obj = predictor_cls(sde, score_fn, probability_flow, noise=stream)
    corrector_obj = corrector_cls(sde, score_fn, snr, n_steps, noise=stream)
    timesteps = torch.linspace(sde.T, eps, sde.N, device=device)
    proj = None if projection is None else Projection(sde, *projection, timesteps)
    plan = DrawPlan(n_steps, projection=proj is not None)
    if backend != "reference" and not (proj is not None and stream.kind == "torch"):
        if mode["capture"]:  # the inpainter and colorizer learn the device from their data
            check_capturable(backend, device)
        key = (proj is not None, stream.kind, denoise)
        runner = None if cache is None else cache.get(key)
        if runner is None:
            built = pc_program(sde, predictor_obj, corrector_obj, continuous, timesteps.cpu(), snr, plan, proj,
                               denoise)
            if built is not None:
                runner = _runner(built, backend, stream.kind, mode)
                if cache is not None:
                    cache[key] = runner
        if runner is not None:
            out = runner(model, x, stream.seed, stream.sample_ids_for(x.shape[0]).to(device), projection=projection,
                         progress=progress, check=False)
            if check_finite:  # the result is NaN/inf exactly where the state is (x_mean is x before its noise)
                raise_if_nonfinite(out, sde.N)
            return out
        if mode["compile"]:
            raise ValueError("compile=True/capture=True need a predictor and corrector with fused forms (the "
                             "registered ones) and a VE/VP/subVP SDE")
    x_mean = x
    for i in progress_bar(range(sde.N), progress, "pc sampling"):
        vec_t = torch.ones(x.shape[0], device=device) * timesteps[i]
        stream.seek(plan.corrector(i, 0))
        x, x_mean = corrector_obj.update_fn(x, vec_t)
        if proj is not None:
            stream.seek(plan.corrector_projection(i))
            x, x_mean = proj.apply(x, vec_t, stream, sde)
        stream.seek(plan.predictor(i))
        x, x_mean = predictor_obj.update_fn(x, vec_t)
        if proj is not None:
            stream.seek(plan.predictor_projection(i))
            x, x_mean = proj.apply(x, vec_t, stream, sde)
    if check_finite:  # one host read after the last step, as the executor (Runner)
        raise_if_nonfinite(x, sde.N)
    return x_mean if denoise else x


def raise_if_nonfinite(x, steps: int) -> None:
    """The reference PC loop's end-of-run watch: NonFiniteError with the count of bad samples when x holds NaN/inf
    (a NaN in the state never becomes finite again, so one read after the last step sees any step's)."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"the sampler state became non-finite during the {steps} steps: {count_nonfinite(x)} of "
                             f"{x.shape[0]} samples hold NaN or inf (the model returned non-finite values or the "
                             f"step sizes diverged)")


def pc_program(sde, predictor, corrector, continuous, timesteps, snr, plan, proj=None, denoise=True):
    """(Program, labels (N,)) of the PC loop on `timesteps` (N,), or None when a predictor/corrector has no fused form
    (user classes), the model conventions are unknown or the SDE is frequency-diagonal.

    Step i: each corrector iteration j is a raw Eval of the model at labels[i] and either a Combine
    x <- a x + b out + c z(corrector(i, j)) with x_mean (the annealed Langevin corrector) or a Langevin instruction
    (norms, step size on the device, update); then the predictor's raw Eval and Combine. A noise-predicting model's
    score scale -1/std(t_i) is folded into b (and into the Langevin scale). The inpainting projection rides in the
    last corrector update and in the predictor's (an identity Combine carries it where there is none). The result
    is x_mean (denoise) or x, as score_sde returns them; the identity predictor's x_mean is x.
    """
    if getattr(sde, "frequency_diagonal", False):
        return None
    if corrector.fused_kind is None or (not predictor.is_identity and predictor.coefficients(timesteps[:1]) is None):
        return None
    try:
        labels_fn, scale_fn = get_score_parts(sde, continuous)
    except NotImplementedError:
        return None
    scale = scale_fn(timesteps)
    scale = [1.0] * timesteps.shape[0] if scale is None else scale.double().tolist()

    def rows(coefs):  # (a, b, c) per step as host floats, the score scale folded into b
        a, b, c = (None if v is None else v.double().cpu().tolist() for v in coefs)
        return a, [bi * si for bi, si in zip(b, scale)], c

    pred = None if predictor.is_identity else rows(predictor.coefficients(timesteps))
    kind = corrector.fused_kind
    iterations = corrector.n_steps if kind != "none" else 0
    corr = rows(corrector.coefficients(timesteps)) if kind == "affine" else None
    alpha = langevin_alpha(sde, timesteps).double().cpu().tolist() if kind == "langevin" else None
    ptable = None if proj is None else proj.table.cpu().tolist()
    program = Program()
    for i in range(timesteps.shape[0]):
        for j in range(iterations):
            pj = (ptable[0][i], ptable[1][i], plan.corrector_projection(i)) if proj and j == iterations - 1 else None
            program.eval("x", 0, i, i, raw=True)
            if kind == "affine":
                a, b, c = corr
                program.combine("x", "x", a[i], [(0, b[i])], None if c is None else c[i], plan.corrector(i, j),
                                step=i, mean="m", proj=pj)
            else:
                program.langevin(0, alpha[i], scale[i], float(corrector.snr), plan.corrector(i, j), i, pj)
        if proj is not None and iterations == 0:
            program.combine("x", "x", 1.0, step=i, mean="m",
                            proj=(ptable[0][i], ptable[1][i], plan.corrector_projection(i)))
        pj = None if proj is None else (ptable[0][i], ptable[1][i], plan.predictor_projection(i))
        if pred is not None:
            a, b, c = pred
            program.eval("x", 0, i, i, raw=True)
            program.combine("x", "x", a[i], [(0, b[i])], None if c is None else c[i], plan.predictor(i), step=i,
                            mean="m", proj=pj)
        elif pj is not None:
            program.combine("x", "x", 1.0, step=i, mean="m", proj=pj)
    identity_mean = pred is None and proj is None  # the identity predictor returns (x, x) last
    program.result = ("buffer", "m" if denoise and not identity_mean and program.code else "x")
    return program, labels_fn(timesteps)


def _runner(built, backend, noise_kind, mode):
    program, labels = built

    def make(x):
        table = labels.to(x.device)
        batch = x.shape[0]
        noise_fn = (lambda draw: torch.randn_like(x)) if noise_kind == "torch" else None
        return Executor(program, x, lambda i: table[i].expand(batch).contiguous(), seed=0, sample_ids=None,
                        backend=backend, noise_fn=noise_fn)

    return Runner(make, compile=mode["compile"], capture=mode["capture"], capture_steps=mode["capture_steps"],
                  what="the PC sampler", desc="pc sampling")
