"""The predictor-corrector sampler (Song et al. algorithm 1): score_sde's reference loop and the one fused loop.

backend="reference" runs the predictors' and correctors' update_fn exactly as score_sde writes them (the
specification). Every other backend runs `FusedLoop`: per step, the model evaluation(s), each followed by one fused
update (fastsde.ops.loop) that reads its coefficients from float64 tables and its step index and seed from tensors,
so the loop has no host values that change from step to step. It runs eagerly, compiled whole with the model
(`compile=True`: torch.compile(fullgraph=True), one graph for all N steps) or captured (`capture=True`: CUDA graphs
of K steps replayed; on the CPU the compiled loop). Both loops draw the same FSN1 noise at the draw ids of
fastsde.noise.DrawPlan, so they agree to float tolerance.
"""
from __future__ import annotations



import torch

from fastsde._util import per_sample
from fastsde import capture_safety
from fastsde.capture_safety import loop_end, step_boundary
from fastsde.noise import DrawPlan, NoiseStream
from fastsde.ops import loop as loop_ops
from fastsde.ops.checks import check_score, score_dtypes
from fastsde.ops.loop import seed_tensor
from fastsde.precision import for_sampling, precision_dtype, resolve_precision
from fastsde.sampling.guard import NonFiniteError, count_nonfinite
from fastsde.sampling.registry import (check_pc_args, check_sde, check_seed, check_shape, langevin_alpha,
                                       progress_bar)
from fastsde.score import get_score_fn, get_score_parts

__all__ = ["get_pc_sampler", "pc_loop", "Projection"]


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
    backend runs the fused loop (module docstring), with per-step coefficients tabulated once in float64 and a
    noise-predicting model's -1/std folded into them. compile=True compiles one step (model + fused updates) with
    torch.compile(fullgraph=True); capture=True records `capture_steps` steps (default: all N) in a CUDA graph and
    replays it (on the CPU: the compiled loop). Both need FSN1 noise (noise="fastsde") and a fused backend.
    precision ("fp32", "bf16", "fp16", "auto" or None: the state's dtype) runs the model in that precision while
    the state (`dtype`), coefficients and noise keep theirs (fastsde.precision); the fused steps read the half
    output directly, the reference loop gets it converted to `dtype`. The sampler's `precision` attribute holds
    the resolved value.
    Both loops read the state once after the last step and raise guard.NonFiniteError when it holds NaN/inf (a NaN
    never becomes finite again, so no per-step sync is needed). check_finite=False (the reference loop only) returns
    such samples instead, as score_sde's loop does; the fused loop always checks.
    """
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    sde, shape = check_sde(sde), check_shape(shape)  # score_sde's SDE objects are converted (sde.as_fastsde_sde)
    check_seed(seed)
    backend, predictor_cls, corrector_cls = check_pc_args(sde, predictor, corrector, snr, n_steps, probability_flow,
                                                          eps, backend, noise, sample_ids)
    mode = check_loop_mode(backend, noise, compile, capture, capture_steps)
    if capture:
        loop_ops.check_capturable(backend, device)
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
            x, x_mean = pc_loop(sde, model, x, stream, predictor_cls, corrector_cls, snr, n_steps, probability_flow,
                                continuous, eps, backend, progress, mode=mode, cache=loops,
                                check_finite=check_finite)
            return inverse_scaler(x_mean if denoise else x), sde.N * (n_steps + 1)

    pc_sampler.precision = precision
    return pc_sampler


def check_loop_mode(backend, noise, compile, capture, capture_steps) -> dict:
    """The fused loop's execution mode from the factory arguments, checked before any sampling."""
    for name, value in (("compile", compile), ("capture", capture)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if (compile or capture) and backend == "reference":
        raise ValueError("compile=True/capture=True run the fused loop: use a fused backend (auto, native, triton), "
                         "not backend='reference'")
    if (compile or capture) and noise != "fastsde":
        raise ValueError(f"compile=True/capture=True need noise='fastsde' (torch.randn is drawn on the host), "
                         f"got noise={noise!r}")
    if capture_steps is not None and (isinstance(capture_steps, bool) or not isinstance(capture_steps, int)
                                      or capture_steps < 1):
        raise ValueError(f"capture_steps must be a positive int or None, got {capture_steps!r}")
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
            backend, progress, projection=None, mode=None, cache=None, check_finite=True):
    """Run the N PC steps from x; returns (x, x_mean). projection: inpainting (data, mask) (controllable.py).

    The fused loop runs unless backend="reference", a predictor/corrector has no fused form (a user class), the model
    conventions are unknown, or the projection is asked for with torch noise. Draw ids: fastsde.noise.DrawPlan.
    `cache` (a dict) keeps the fused loop of a model between calls of one sampler (compiled/captured graphs).
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
            loop_ops.check_capturable(backend, device)
        key = (id(model), x.shape, x.dtype, x.device, proj is not None)
        fused = None if cache is None else cache.get(key)
        if fused is None:
            fused = FusedLoop.build(sde, predictor_obj, corrector_obj, model, continuous, timesteps, backend, plan,
                                    proj, x, mode)
            if fused is not None and cache is not None:
                cache[key] = fused
        if fused is not None:
            return fused.run(x, stream, progress, proj)
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
    if check_finite:  # one host read after the last step, as the fused loop (FusedLoop.run)
        raise_if_nonfinite(x, sde.N)
    return x, x_mean


def raise_if_nonfinite(x, steps: int) -> None:
    """The PC loops' end-of-run watch: NonFiniteError with the count of bad samples when x holds NaN/inf."""
    if not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"the sampler state became non-finite during the {steps} steps: {count_nonfinite(x)} of "
                             f"{x.shape[0]} samples hold NaN or inf (the model returned non-finite values or the "
                             f"step sizes diverged)")


class FusedLoop:
    """The PC loop on fused ops: x and x_mean updated in place, every per-step value in a tensor.

    Step i (`step(x, x_mean)`, with the step index in the 0-d int64 tensor `self.i`): the time label is gathered from
    the label table; each corrector iteration and the predictor evaluate the model once and run one fused update
    (fastsde.ops.loop) that reads its coefficients at i and its draw id offset + i per_step; the inpainting
    projection rides in the same kernel. The step ends with i += 1 on the device. Nothing in a step depends on a
    host value that changes with i, so the same Python code runs eagerly, compiles to one graph, or is captured.
    """

    def __init__(self, model, labels, pred, corr, corr_kind, snr, iterations, plan, proj, backend, x, mode):
        device, batch = x.device, x.shape[0]
        self.model, self.labels, self.pred, self.corr, self.corr_kind = model, labels, pred, corr, corr_kind
        self.snr, self.iterations, self.plan, self.backend = snr, iterations, plan, backend
        # the projection's data, mask and table live in static buffers too: each run copies the caller's in
        self.proj = None if proj is None else Projection.__new__(Projection)
        if proj is not None:
            self.proj.data, self.proj.mask = torch.empty_like(proj.data), torch.empty_like(proj.mask)
            self.proj.table = torch.empty_like(proj.table)
        self.mode, self.n = mode, labels.shape[0]
        self.i = torch.zeros((), dtype=torch.int64, device=device)
        self.label = torch.empty(1, dtype=labels.dtype, device=device)
        self.x = torch.empty_like(x, memory_format=torch.contiguous_format)  # the loop's state: static buffers
        self.x_mean = torch.empty_like(self.x)
        self.scratch = loop_ops.langevin_scratch(self.x)  # the Langevin step's coefficients (and norms) on the device
        # the two updates: the native C++/CUDA ops read i, the seed and the coefficients in the kernels (capturable)
        self.affine_op, self.langevin_op = loop_ops.step_ops(backend, device)
        self.seed = torch.zeros((), dtype=torch.int64, device=device)
        self.ids = torch.zeros(batch, dtype=torch.int64, device=device)
        self.batch = batch
        # the identity update that carries a projection when there is no corrector / predictor update before it
        self.identity = torch.stack([torch.ones(self.n, dtype=torch.float64, device=device),
                                     torch.zeros(self.n, dtype=torch.float64, device=device)])
        self._compiled = None
        self._graphs = None

    @classmethod
    def build(cls, sde, predictor, corrector, model, continuous, timesteps, backend, plan, proj, x, mode):
        """The fused loop, or None when a predictor/corrector has no fused form (user classes) or the model
        conventions are unknown."""
        if getattr(sde, "frequency_diagonal", False):  # per-frequency coefficients: fastsde.heat samples these
            return None
        if corrector.fused_kind is None or (not predictor.is_identity
                                            and predictor.coefficients(timesteps[:1]) is None):
            return None
        try:
            labels_fn, scale_fn = get_score_parts(sde, continuous)
        except NotImplementedError:
            return None
        device = x.device
        scale = scale_fn(timesteps)
        scale = None if scale is None else scale.double().to(device)

        def table(coefs, fold_scale=True):
            a, b, c = coefs
            if scale is not None and fold_scale:
                b = b * scale
            rows = [a, b] + ([] if c is None else [c])
            return torch.stack([r.to(device=device, dtype=torch.float64) for r in rows]).contiguous()

        pred = None if predictor.is_identity else table(predictor.coefficients(timesteps))
        kind = corrector.fused_kind
        corr = None
        if kind == "affine":
            corr = table(corrector.coefficients(timesteps))
        elif kind == "langevin":
            rows = [langevin_alpha(sde, timesteps).double()] + ([] if scale is None else [scale])
            corr = torch.stack([r.to(device) for r in rows]).contiguous()
        iterations = corrector.n_steps if kind != "none" else 0
        labels = labels_fn(timesteps).to(device)
        return cls(model, labels, pred, corr, kind, float(corrector.snr), iterations, plan, proj, backend, x, mode)

    # ---------------------------------------------------------------------------------------------- one step
    def _evaluate(self, x):
        torch.index_select(self.labels, 0, self.i.view(1), out=self.label)
        out = self.model(x, self.label.expand(self.batch))
        if out.shape != x.shape or out.dtype not in score_dtypes(x.dtype) or out.device != x.device:
            check_score("the model output", out, x)  # x's dtype, or the narrower one of a half-precision model
        return out if out.is_contiguous() else out.contiguous()

    def _proj_args(self, draw_offset):
        if self.proj is None:
            return None, None, None, 0
        return self.proj.mask, self.proj.data, self.proj.table, draw_offset

    def _affine(self, x, x_mean, score, table, draw_offset, noise, proj_offset=None):
        mask, data, ptable, poff = self._proj_args(proj_offset) if proj_offset is not None else (None, None, None, 0)
        self.affine_op(x, x_mean, score, table, self.i, self.seed, self.ids, draw_offset, self.plan.per_step, noise,
                       mask, data, ptable, poff)

    def step(self, x, x_mean):
        """One PC step at i = self.i, in place on x and x_mean; then i += 1."""
        plan, noise = self.plan, None
        for j in range(self.iterations):
            out = self._evaluate(x)
            if self.stream_kind == "torch":
                noise = torch.randn_like(x)
            # score_sde projects once after the whole corrector update: fuse it into the last iteration
            proj = plan.offset("corrector_projection") if self.proj is not None and j == self.iterations - 1 else None
            if self.corr_kind == "affine":
                self._affine(x, x_mean, out, self.corr, plan.offset("corrector", j), noise, proj)
            else:
                mask, data, ptable, poff = self._proj_args(proj) if proj is not None else (None, None, None, 0)
                self.langevin_op(x, x_mean, self.scratch, out, self.corr, self.snr, self.i, self.seed, self.ids,
                                 plan.offset("corrector", j), plan.per_step, noise, mask, data, ptable, poff)
        if self.proj is not None and self.iterations == 0:
            self._affine(x, x_mean, x, self.identity, 0, None, plan.offset("corrector_projection"))
        proj = plan.offset("predictor_projection") if self.proj is not None else None
        if self.pred is not None:
            out = self._evaluate(x)
            if self.stream_kind == "torch" and self.pred.shape[0] == 3:
                noise = torch.randn_like(x)
            self._affine(x, x_mean, out, self.pred, plan.offset("predictor"), noise, proj)
        elif self.proj is not None:
            self._affine(x, x_mean, x, self.identity, 0, None, proj)
        self.i.add_(1)

    # ---------------------------------------------------------------------------------------------- the loop
    def run(self, x0, stream, progress=False, projection=None):
        """All N steps from x0; returns new tensors (x, x_mean). The state runs in the loop's static buffers (the
        compiled and captured graphs read them), so each call copies x0, the seed, the sample ids and the
        projection's data, mask and table in."""
        if (projection is None) != (self.proj is None):
            raise RuntimeError("FusedLoop.run: built with a projection, run without one (or the reverse)")
        if projection is not None:
            self.proj.data.copy_(projection.data)
            self.proj.mask.copy_(projection.mask)
            self.proj.table.copy_(projection.table)
        if isinstance(self.model, torch.nn.Module):  # a plain function model(x, labels) has no mode
            self.model.train(False)
        self.stream_kind = stream.kind
        self.seed.copy_(seed_tensor(stream.seed if stream.seed is not None else 0, "cpu"))
        self.ids.copy_(stream.sample_ids_for(x0.shape[0]))
        x, x_mean = self.x, self.x_mean
        x.copy_(x0)
        self.i.zero_()
        step = self.step
        if self.mode["compile"]:
            if self._compiled is None:
                self._compiled = torch.compile(self.step, fullgraph=True, dynamic=False)
            step = self._compiled
        if self.mode["capture"] and self._captures(x):
            self._run_captured(x, x_mean, step, progress)
        else:
            for k in progress_bar(range(self.n), progress, "pc sampling"):
                step_boundary()
                # compiled: step 0 runs eagerly, so state a model builds lazily on its first call (device caches)
                # exists before tracing and the compiled step is traced once for steps 1 .. N-1
                (self.step if k == 0 else step)(x, x_mean)
        loop_end()
        # Non-finite watch with no per-step work: a NaN or inf in the state never becomes finite again (every update
        # scales x by a nonzero a, the projection by 1 - m, and 0 * inf is NaN), so the state after the last step
        # tells whether any step went non-finite. One host read, after the steps.
        raise_if_nonfinite(x, self.n)
        if self.pred is None and self.proj is None:  # the identity predictor returns (x, x) last
            x_mean.copy_(x)
        return x.clone(), x_mean.clone()

    @staticmethod
    def _captures(x) -> bool:
        """Whether capture=True records CUDA graphs for this state (CUDA), rather than running the compiled loop."""
        return x.is_cuda

    def _run_captured(self, x, x_mean, step, progress):
        """Step 0 eagerly (lazily built model state), step 1 through the compiled step outside any capture (a first
        compile, or a recompile after a dtype change, happens here and never inside a recording), then CUDA graphs of
        K steps replayed for steps 2 .. N-1, all on x's device (recorded on a side stream of it). The graphs read i,
        the seed and the sample ids from their static tensors, so a new seed or new ids are copies into them, never
        a re-capture. Memory: one graph pool holding the step's peak activations (the allocator reuses blocks within
        a capture) plus x/x_mean.
        """
        with capture_safety.on_device(x.device):
            self.step(x, x_mean)
            remaining = self.n - 1
            if not remaining:
                return
            addresses = capture_safety.parameter_addresses(self.model)
            if self._graphs is not None and self._graphs[0] != addresses:
                self._graphs = None
            with capture_safety.capture_stream(x.device) as side:
                step(x, x_mean)  # step 1, compiled, uncaptured: the warm-up every recording follows
                remaining -= 1
                k = min(self.mode["capture_steps"] or remaining, remaining) if remaining else 0
                if self._graphs is None and remaining:
                    graphs = {}
                    for length in sorted({k, remaining % k} - {0}):
                        saved = self.i.clone()

                        def body(length=length):
                            for _ in range(length):
                                step(x, x_mean)

                        graphs[length] = capture_safety.record_graph(body, side)
                        self.i.copy_(saved)  # capture records; it does not run
                    self._graphs = (addresses, graphs)
            if not remaining:
                return
            graphs = self._graphs[1]
            done = 0
            bar = progress_bar(range(remaining), progress, "pc sampling (graphs)")
            while done < remaining:
                length = min(k, remaining - done)
                graphs[length].replay()
                done += length
                if hasattr(bar, "update"):
                    bar.update(length)
