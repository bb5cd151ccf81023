"""The one sampler executor: every fused sampler is a straight-line Program over preallocated buffers.

The PC sampler (every predictor and corrector, `n_steps`, probability_flow, the inpainting and colorization
projections, classifier guidance, denoising: fastsde.sampling.pc.pc_program), the few-step solvers
(fastsde.solvers) and k-diffusion's samplers (fastsde.kdiffusion) compile, once and on the host in float64, into a
list of three instructions over the buffers "x" (the state), "y" (a stage or predicted state) and "m" (x_mean, PC's
noise-free update), and the slots D[0..2] (model outputs or data predictions):

    Eval(src, slot, point):       D[slot] <- p buf[src] + q model(buf[src], labels(point))   model call + affine pass
                                  raw=True: D[slot] <- model(...) itself (PC folds the score scale into its update)
                                  slope=True: the slope dx~/dsigma~ (Executor.__init__)
    Combine(dst, src, terms, c):  buf[dst] <- a buf[src] + sum_k b_k D[slot_k] + c z(draw)     one affine pass
                                  mean="m": also buf["m"] <- the noise-free part; proj: score_sde's inpainting
                                  projection x <- x (1 - mask) + (data_a data + data_c z') mask in the same pass
    Langevin(slot, alpha, ...):   x, m <- one Langevin corrector iteration: norms -> step size on the device -> update
    FreqCombine(dst, src, slot):  buf[dst] <- a x + b D[slot] + c z with a, b, c per frequency (the heat family's
                                  DCT-domain step, fastsde.heat_sampler)

Everything an instruction reads is a tensor made once by the Executor: coefficients are (1,)/(4,) views of one
float64 (n, 7) table on the state's device, labels one (B,) tensor per Eval, the seed a 0-d tensor read by every
backend's kernels when they run (native C++/CUDA, Triton) and the per-instruction draw ids constants of the
program. So the same Python runs eagerly, compiled (`compile=True`: the model call with its affine pass compiled
once, torch.compile(fullgraph=True), shared by every Eval) or captured (`capture=True` on CUDA: the program recorded
as CUDA graphs of at most `capture_steps` steps and replayed; a new start, seed or sample ids is a copy into the
graphs' static tensors, never a re-recording). `Runner` is the one place that chooses among the three, guards what
a recording depends on, checks the result for NaN/inf once and reports progress.

Capture is correct by construction (Runner._run_captured): the first call of a recording runs the whole program
uncaptured through the compiled path (its first Eval eagerly, so state a model builds lazily exists before
tracing), which compiles every graph and JIT-compiles every Triton kernel the program launches and gives that
call's result; only then is the program recorded, on a side stream of the state's own device. Nothing can compile
inside a recording, and a backend that reads a value on the host (the reference combine) is refused before any
work (`check_capturable`).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from fastsde import capture_safety
from fastsde.capture_safety import loop_end, step_boundary
from fastsde.ops import dispatch
from fastsde.ops import step as step_ops

__all__ = ["Eval", "Combine", "FreqCombine", "Langevin", "Program", "Executor", "Runner", "check_model_output",
           "check_capturable", "check_mode", "BUFFERS", "SLOTS", "CAPTURE_STEPS"]

BUFFERS = ("x", "y", "m")
SLOTS = step_ops.MAX_OUTPUTS
ROW = 7  # a table row: Combine [a, b0, b1, b2, c, data_a, data_c]; Eval [p, q, slope scale]; Langevin [alpha,
#          scale, data_a, data_c]

#: Default steps per CUDA graph of a captured program: a 1000-step PC loop records 20 graphs, each a few thousand
#: kernel nodes (the model's), which keeps recording time and graph memory bounded; replays cost ~N/50 launches.
CAPTURE_STEPS = 50


class Eval(NamedTuple):
    src: str
    slot: int
    point: Any  # what labels_of / denoiser_coefs read (a solvers.grid.Point; PC: the time index)
    step: int
    first: bool  # the step's first model call (k-diffusion's callback fires after it)
    slope: bool = False  # store the slope (x~ - D) / sigma~ instead of D (well conditioned at a tiny sigma~)
    raw: bool = False  # store the model output itself (PC: the score scale is folded into the update)


class Combine(NamedTuple):
    dst: str
    src: str
    slots: tuple
    coefs: tuple  # (a, b0, b1, b2, c) floats; c = 0.0 and draw None when noiseless
    draw: int | None
    step: int = 0
    mean: str | None = None  # the buffer that receives the noise-free part (PC's x_mean)
    proj: tuple | None = None  # (data_a, data_c, draw): the inpainting projection fused into the update


class FreqCombine(NamedTuple):
    """buf[dst] <- a buf[src] + b D + c z(draw) with a, b, c per frequency: float64 (P,) vectors broadcast over the
    batch (and channels) of a DCT-domain state (fastsde.heat; fastsde.ops.freq_step). D: slot `slot` (an int) or
    the buffer named `slot` (a str). c None: no noise."""
    dst: str
    src: str
    slot: Any
    a: Any
    b: Any
    c: Any
    draw: int
    step: int


class Langevin(NamedTuple):
    slot: int  # the raw model output (score = scale * out)
    alpha: float
    scale: float
    snr: float
    draw: int
    step: int
    proj: tuple | None = None


class Program:
    """Builder: samplers append instructions; `result` names the buffer or slot the sample ends in."""

    def __init__(self):
        self.code: list = []
        self.result = ("buffer", "x")
        self._step_evals: set = set()

    def eval(self, src: str, slot: int, point, step: int, slope: bool = False, raw: bool = False) -> None:
        if src not in BUFFERS or not 0 <= slot < SLOTS:
            raise ValueError(f"bad Eval({src!r}, {slot})")
        first = step not in self._step_evals
        self._step_evals.add(step)
        self.code.append(Eval(src, slot, point, step, first, bool(slope), bool(raw)))

    def combine(self, dst: str, src: str, a: float, terms=(), c: float | None = None, draw: int | None = None, *,
                step: int | None = None, mean: str | None = None, proj: tuple | None = None):
        """buf[dst] <- a buf[src] + sum b D[slot] for (slot, b) in terms (+ c z(draw) when c)."""
        if dst not in BUFFERS or src not in BUFFERS or len(terms) > SLOTS or (mean is not None and mean not in BUFFERS):
            raise ValueError(f"bad Combine({dst!r}, {src!r}, {len(terms)} terms)")
        slots = tuple(int(s) for s, _ in terms)
        b = [float(v) for _, v in terms] + [0.0] * (SLOTS - len(terms))
        noisy = c is not None and c != 0.0
        if noisy and draw is None:
            raise ValueError("a noisy Combine needs a draw id")
        coefs = (float(a), *b, float(c) if noisy else 0.0)
        if proj is not None:
            proj = (float(proj[0]), float(proj[1]), int(proj[2]))
        if not all(math.isfinite(v) for v in coefs + (proj[:2] if proj else ())):
            raise ValueError(f"sampler coefficients must be finite, got {coefs} (repeated or degenerate time points?)")
        self.code.append(Combine(dst, src, slots, coefs, draw if noisy else None, self._step(step), mean, proj))

    def langevin(self, slot: int, alpha: float, scale: float, snr: float, draw: int, step: int,
                 proj: tuple | None = None) -> None:
        """x, m <- one Langevin iteration with the score scale * D[slot] (raw model output)."""
        self.code.append(Langevin(int(slot), float(alpha), float(scale), float(snr), int(draw), int(step),
                                  None if proj is None else (float(proj[0]), float(proj[1]), int(proj[2]))))

    def freq_combine(self, dst: str, src: str, slot, a, b, c, draw: int, step: int) -> None:
        """buf[dst] <- a buf[src] + b D + c z(draw), a, b, c float64 (P,) vectors (FreqCombine); D: slot `slot` (int)
        or buffer `slot` (str)."""
        vectors = [None if v is None else torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (a, b, c)]
        if any(v is not None and not bool(torch.isfinite(v).all()) for v in vectors):
            raise ValueError("per-frequency coefficients must be finite")
        if dst not in BUFFERS or src not in BUFFERS or (isinstance(slot, str) and (slot not in BUFFERS or slot == dst)):
            raise ValueError(f"bad FreqCombine({dst!r}, {src!r}, {slot!r})")
        self.code.append(FreqCombine(dst, src, slot if isinstance(slot, str) else int(slot), *vectors, int(draw),
                                     int(step)))

    def _step(self, step):
        if step is not None:
            return int(step)
        return self.code[-1].step if self.code else 0

    def finish_with_denoise(self, point, step: int) -> None:
        """Append the final denoising: the sample becomes D(x, point) (Tweedie's mean, k-diffusion's step to 0)."""
        self.eval("x", 0, point, step)
        self.result = ("slot", 0)

    @property
    def model_evals(self) -> int:
        return sum(isinstance(ins, Eval) for ins in self.code)

    @property
    def steps(self) -> int:
        return 1 + max((ins.step for ins in self.code), default=-1)

    @property
    def stochastic(self) -> bool:
        return any(isinstance(ins, Langevin) or (isinstance(ins, Combine) and (ins.draw is not None or ins.proj))
                   or (isinstance(ins, FreqCombine) and ins.c is not None) for ins in self.code)

    @property
    def projects(self) -> bool:
        return any(getattr(ins, "proj", None) is not None for ins in self.code)


def check_model_output(out, x: torch.Tensor) -> None:
    """A model output the executor can combine with the state x: a floating-point tensor of x's shape (the ops then
    check dtype and device), or a TypeError/ValueError naming the model's output."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model output must be a torch.Tensor like the state {tuple(x.shape)}, got "
                        f"{type(out).__name__} (model(x, labels) must return the tensor itself)")
    if not out.dtype.is_floating_point:
        raise TypeError(f"the model output must be a floating-point tensor, got {out.dtype}")
    if out.shape != x.shape:
        raise ValueError(f"the model output must have the state's shape {tuple(x.shape)}, got {tuple(out.shape)}")


def check_mode(backend: str, compile, capture, capture_steps, *, noise: str = "fastsde",
               fused_only: bool = True) -> None:
    """The execution mode's arguments, checked before any work: compile/capture bools, capture_steps a positive int
    or None, and compile/capture only with FSN1 noise and (fused_only: PC, whose reference loop is score_sde's own)
    on a fused backend."""
    for name, value in (("compile", compile), ("capture", capture)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if (compile or capture) and backend == "reference" and fused_only:
        raise ValueError("compile=True/capture=True run the fused executor: use a fused backend (auto, native, "
                         "triton), not backend='reference'")
    if (compile or capture) and noise != "fastsde":
        raise ValueError(f"compile=True/capture=True need noise='fastsde' (torch.randn is drawn on the host), "
                         f"got noise={noise!r}")
    if capture_steps is not None and (isinstance(capture_steps, bool) or not isinstance(capture_steps, int)
                                      or capture_steps < 1):
        raise ValueError(f"capture_steps must be a positive int or None, got {capture_steps!r}")


def check_capturable(backend: str, device) -> None:
    """Refuse, in one line and before any work, capture=True where the backend cannot be recorded in a CUDA graph on
    `device`: the reference combine reads the seed and sample ids on the host. Native and Triton read the seed, ids
    and coefficients on the device. Off CUDA, capture runs the compiled program and anything goes."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    name = dispatch.resolve("affine_combine_step", backend, device)[0]
    if name == "reference":
        raise ValueError(f"capture=True on {device} records the sampler's updates: expected backend 'native', "
                         f"'triton' or 'auto' resolving to one of them, got backend={backend!r} running 'reference', "
                         f"which reads the seed and sample ids on the host; use compile=True instead")


class Executor:
    """Runs a Program on preallocated buffers like the state x with one CombineSteps entry (backend resolved once).

    `labels_of(point)` gives the model's time argument for an Eval's point as a (B,) tensor (built once per Eval
    here); `denoiser_coefs(point)` gives (p, q) with D = p x + q out (unused by raw Evals). `noise_fn(draw)`, when
    given, replaces FSN1 with an explicit noise tensor per draw (k-diffusion's noise_sampler). A program with a
    projection reads `mask` and `data` from the static buffers `self.mask` / `self.data` (set_projection).
    """

    def __init__(self, program: Program, x: torch.Tensor, labels_of, denoiser_coefs=None, *, seed, sample_ids,
                 backend: str = "auto", noise_fn=None):
        self.program = program
        self.steps = step_ops.CombineSteps(x, seed, sample_ids, backend)
        self.noise_fn = noise_fn
        self.bufs = {"x": x, "y": torch.empty_like(x), "m": torch.empty_like(x)}
        self.slots = [torch.empty_like(x) for _ in range(SLOTS)]
        self.vals = list(self.slots)  # what each slot holds now: its buffer, or a raw Eval's model output
        self.mask = self.data = None
        if program.projects:
            self.mask, self.data = torch.empty_like(x), torch.empty_like(x)
        self.scratch = None
        if any(isinstance(ins, Langevin) for ins in program.code):
            self.scratch = step_ops.langevin_scratch(x)
        rows, self.labels, self.slope_scale = [], [], {}
        for k, ins in enumerate(program.code):
            row = [0.0] * ROW
            if isinstance(ins, Eval):
                self.labels.append(labels_of(ins.point))
                if not ins.raw:
                    row[:3] = self._denoiser_row(k, ins, denoiser_coefs)
            else:
                self.labels.append(None)
                if isinstance(ins, FreqCombine):
                    pass  # its vectors: self.coefs[k] below
                elif isinstance(ins, Combine):
                    row[:5] = ins.coefs
                    if ins.proj:
                        row[5:7] = ins.proj[:2]
                else:
                    row[:4] = (ins.alpha, ins.scale, *(ins.proj[:2] if ins.proj else (0.0, 0.0)))
            rows.append(row)
        self.rows = torch.tensor(rows, dtype=torch.float64).reshape(-1, ROW).to(x.device)
        self.coefs = []  # per instruction: the (1,)/(4,) views of self.rows it reads
        for k, ins in enumerate(program.code):
            row = self.rows[k]
            if isinstance(ins, FreqCombine):  # the compute type of x (fastsde.ops.freq_step)
                dt = torch.float64 if x.dtype == torch.float64 else torch.float32
                self.coefs.append(tuple(None if v is None else v.to(x.device).to(dt).contiguous()
                                        for v in (ins.a, ins.b, ins.c)))
            elif isinstance(ins, Langevin):
                self.coefs.append(row[0:4])
            else:
                n = 1 if isinstance(ins, Eval) else len(ins.slots)
                noisy = isinstance(ins, Combine) and ins.draw is not None
                proj = (row[5:6], row[6:7]) if isinstance(ins, Combine) and ins.proj else None
                self.coefs.append((row[0:1], [row[1 + j:2 + j] for j in range(n)], row[4:5] if noisy else None, proj))

    def _denoiser_row(self, k, ins, denoiser_coefs):
        p, q = (float(v) for v in denoiser_coefs(ins.point))
        scale = 0.0
        if ins.slope:
            # slope (src / alpha - D) / sigma~ = ((1/alpha - p) src - q out) / sigma~. fastsde's denoisers have
            # p = 1/alpha: the slope is (-q / sigma~) out, one pass, no cancellation. A denoiser model (k-diffusion:
            # p = 0, q = 1) gives src - out rounded once (coefficients +-1 are exact), then a multiply by 1/sigma~,
            # as k-diffusion computes (x - denoised) / sigma: an Eval at a tiny sigma~ no longer amplifies the
            # rounding of src by 1/sigma~.
            p, q = 1.0 / ins.point.alpha - p, -q
            if p == 0.0:
                q = q / ins.point.st
            else:
                scale = self.slope_scale[k] = 1.0 / ins.point.st
        row = (p, q, scale)
        if not all(math.isfinite(v) for v in row):
            raise ValueError(f"the denoiser coefficients at t = {ins.point.t:.6g} (sigma~ = {ins.point.st:.6g}) are "
                             f"not finite floats: {row}")
        return row

    # ------------------------------------------------------------------------------------------- the instructions
    def eval_step(self, model, src, labels, slot, coefs) -> None:
        """One Eval: slot <- D(src) = p src + q model(src, labels), the model call and its affine pass."""
        out = model(src, labels)
        if self.steps.accepts(out):
            self.steps.combine(slot, src, [out], coefs, 0)
        else:  # an odd model output (strided, other dtype) goes through the checked public op
            check_model_output(out, src)
            step_ops.affine_combine_step(src, [out.to(src.dtype)], coefs[0], coefs[1], out=slot,
                                         backend=self.steps.backend)

    @staticmethod
    def raw_step(model, src, labels):
        """One raw Eval: the model output itself."""
        return model(src, labels)

    def _raw_output(self, out, src):
        if self.steps.accepts(out):
            return out
        check_model_output(out, src)
        out = out if out.dtype in self.steps.score_dtypes else out.to(src.dtype)
        return out.contiguous()

    def warm_up(self, model) -> None:
        """The program's first Eval, eagerly: state a model builds lazily on its first call exists before anything is
        traced or recorded. It writes only that Eval's slot, which the program writes again before reading it."""
        for k, ins in enumerate(self.program.code):
            if isinstance(ins, Eval):
                if ins.raw:
                    self.raw_step(model, self.bufs[ins.src], self.labels[k])
                else:
                    self.eval_step(model, self.bufs[ins.src], self.labels[k], self.slots[ins.slot], self.coefs[k])
                return

    def _projection(self, ins, coefs):
        if ins.proj is None:
            return None
        return self.mask, self.data, coefs[3][0], coefs[3][1], ins.proj[2]

    def run(self, model, callback=None, eval_step=None, raw_step=None, eager_evals: int = 0, progress=None,
            code=None) -> torch.Tensor:
        """Execute the program (or the slice `code` of (index, instruction) pairs) with `model(x, labels) -> out`;
        returns the result buffer. `eval_step` / `raw_step` (default: the eager ones) run the Evals -- compiled twins
        for compile=True -- with the first `eager_evals` Evals run eagerly (state a model builds lazily on its
        first call exists before tracing). `progress(step)` is called at every step boundary."""
        eval_step, raw_step = eval_step or self.eval_step, raw_step or self.raw_step
        bufs, slots, vals = self.bufs, self.slots, self.vals
        evals, step = 0, None
        for k, ins in (code if code is not None else enumerate(self.program.code)):
            if ins.step != step:
                step = ins.step
                step_boundary()
                if progress is not None:
                    progress(step)
            coefs = self.coefs[k]
            if isinstance(ins, Eval):
                src = bufs[ins.src]
                eager = evals < eager_evals
                if ins.raw:
                    vals[ins.slot] = self._raw_output((self.raw_step if eager else raw_step)(model, src,
                                                                                             self.labels[k]), src)
                else:
                    (self.eval_step if eager else eval_step)(model, src, self.labels[k], slots[ins.slot], coefs)
                    vals[ins.slot] = slots[ins.slot]
                    if k in self.slope_scale:
                        slots[ins.slot].mul_(self.rows[k, 2:3])
                evals += 1
                if callback is not None and ins.first:
                    callback(ins, src, vals[ins.slot])
            elif isinstance(ins, Combine):
                noise = self.noise_fn(ins.draw) if ins.draw is not None and self.noise_fn is not None else None
                self.steps.combine(bufs[ins.dst], bufs[ins.src], [vals[s] for s in ins.slots], coefs, ins.draw or 0,
                                   x_mean=None if ins.mean is None else bufs[ins.mean],
                                   proj=self._projection(ins, coefs), noise=noise)
            elif isinstance(ins, FreqCombine):
                score = bufs[ins.slot] if isinstance(ins.slot, str) else vals[ins.slot]
                self.steps.freq_combine(bufs[ins.dst], bufs[ins.src], score, *coefs, ins.draw)
            else:
                noise = self.noise_fn(ins.draw) if self.noise_fn is not None else None
                proj = None if ins.proj is None else (self.mask, self.data, ins.proj[2])
                self.steps.langevin(bufs["x"], bufs["m"], self.scratch, vals[ins.slot], coefs, ins.snr, ins.draw,
                                    proj, noise)
        return self.result()

    def result(self) -> torch.Tensor:
        kind, where = self.program.result
        return self.bufs[where] if kind != "slot" else self.vals[where]

    def segments(self, steps_per_graph: int) -> list:
        """The program cut at step boundaries into slices of at most `steps_per_graph` steps (one CUDA graph each)."""
        cuts, current, first = [], [], None
        for k, ins in enumerate(self.program.code):
            if first is None:
                first = ins.step
            if ins.step - first >= steps_per_graph:
                cuts.append(current)
                current, first = [], ins.step
            current.append((k, ins))
        if current:
            cuts.append(current)
        return cuts


class Runner:
    """The execution of one sampler's Program: an Executor per (model, shape, dtype, device), kept between calls with
    its compiled steps and recorded graphs, run eagerly, compiled or captured (module docstring).

    `make(x)` builds the Executor for a state like x. `__call__(model, x, seed, ids)` copies the start, seed and
    sample ids into its static tensors, runs, checks the result for NaN/inf once (guard.NonFiniteError naming the
    sampler) and returns a new tensor.
    """

    def __init__(self, make, *, compile: bool = False, capture: bool = False, capture_steps: int | None = None,
                 what: str = "the sampler", desc: str = "sampling"):
        self.make, self.compile, self.capture = make, compile or capture, capture
        self.capture_steps = capture_steps or CAPTURE_STEPS
        self.what, self.desc = what, desc
        self.entries: dict = {}  # key -> [model, Executor, compiled (eval, raw) or None, graphs or None]

    def entry(self, model, x):
        key = (id(model), tuple(x.shape), x.dtype, x.device)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = [model, self.make(torch.empty_like(x, memory_format=torch.contiguous_format)),
                                         None, None]
        return entry

    def __call__(self, model, x, seed, ids=None, *, projection=None, progress=False, callback=None,
                 check=True) -> torch.Tensor:
        from fastsde.sampling.guard import check_finite

        entry = self.entry(model, x)
        ex = entry[1]
        ex.bufs["x"].copy_(x)
        ex.steps.set_seed(0 if seed is None else seed)
        if ids is not None:
            ex.steps.ids.copy_(ids)
        if projection is not None:
            ex.data.copy_(projection[0])
            ex.mask.copy_(projection[1])
        if isinstance(model, torch.nn.Module):  # a plain function model(x, labels) has no mode
            model.train(False)
        bar = _Progress(progress, ex.program.steps, self.desc)
        try:
            if not self.compile:
                out = ex.run(model, callback=callback, progress=bar)
            else:
                if self.capture and self._captures(x):
                    out = self._run_captured(entry, model, bar)
                else:
                    out = self._run_compiled(entry, model, callback, bar)
        finally:
            bar.close()
            loop_end()
        if check:
            check_finite(out, step=ex.program.model_evals, what=f"{self.what}'s sample")
        return out.clone()

    @staticmethod
    def _captures(x) -> bool:
        """Whether capture=True records CUDA graphs for this state (CUDA), rather than running the compiled program."""
        return x.is_cuda

    @staticmethod
    def _run_compiled(entry, model, callback, bar, eager_evals=1):
        ex = entry[1]
        if entry[2] is None:  # the first model call runs eagerly (lazily built model state exists before tracing)
            entry[2] = (torch.compile(ex.eval_step, fullgraph=True, dynamic=False),
                        torch.compile(ex.raw_step, fullgraph=True, dynamic=False))
            return ex.run(model, callback, *entry[2], eager_evals=eager_evals, progress=bar)
        return ex.run(model, callback, *entry[2], progress=bar)

    def _run_captured(self, entry, model, bar):
        """Replay the recorded graphs; when there are none (first call, or the model's parameters moved to new
        storage: a graph reads them at the addresses it recorded), run the program uncaptured through the compiled
        path first -- every compile and Triton JIT happens there, and it is this call's result -- then record it in
        graphs of at most capture_steps steps on a side stream of the state's device, sharing one memory pool."""
        ex = entry[1]
        device = ex.bufs["x"].device
        addresses = capture_safety.parameter_addresses(model)
        with capture_safety.on_device(device):
            if entry[3] is not None and entry[3][0] == addresses:
                for graph, steps in entry[3][1]:
                    graph.replay()
                    bar.advance(steps)
                return ex.result()
            entry[3] = None
            if entry[2] is None:  # warm-up: the first Eval eagerly (lazily built model state), outside any capture
                ex.warm_up(model)
            with capture_safety.capture_stream(device) as side:
                # every Eval compiled (none eager: each compiled step runs here, a program with one Eval included),
                # every Triton kernel JIT-compiled, outside any recording: this call's result
                out = self._run_compiled(entry, model, None, bar, eager_evals=0).clone()
                graphs, pool = [], None
                for code in ex.segments(self.capture_steps):
                    graph = capture_safety.record_graph(
                        lambda code=code: ex.run(model, None, *entry[2], code=code), side, pool=pool)
                    pool = pool if pool is not None else graph.pool()
                    graphs.append((graph, 1 + code[-1][1].step - code[0][1].step))
            entry[3] = (addresses, graphs)
        return out


class _Progress:
    """A step counter for `progress=True` (a tqdm bar when tqdm is installed); a no-op otherwise."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)

    def __call__(self, step: int) -> None:  # called once at the start of every step
        if self.bar is not None:
            self.bar.update(1)

    def advance(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
