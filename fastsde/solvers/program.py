"""A solver run as a straight-line program over preallocated buffers: the form one fused loop executes.

Every solver of fastsde.solvers compiles, once per sampler call and on the host in float64, into a list of two
instructions over the buffers "x" (the state), "y" (a stage or predicted state) and the history slots D[0..2]:

    Eval(src, slot, point):      D[slot] <- denoiser(buf[src], point)     one model call + one affine pass
                                 (slope=True: D[slot] <- (buf[src] / alpha - D) / sigma~, the slope dx~/dsigma~,
                                 formed from the model output without the cancellation x~ - D; see SolverLoop)
    Combine(dst, src, terms, c): buf[dst] <- a buf[src] + sum_k b_k D[slot_k] + c z(draw)    one affine pass

The denoiser is the data prediction D(x, t) = (x + sigma^2 score) / alpha = p x + q out with out = model(x, labels),
p = 1 / alpha and q = sigma^2 scale / alpha (scale = -1/std for noise-predicting models, 1 for score models), so it
is itself one affine pass over the model output. Coefficients are tabulated as one float64 (n, 5) tensor
[a, b0, b1, b2, c] on the device, labels as one (B,) tensor per Eval, so the loop body allocates nothing (beyond
what the model allocates) and never reads the device.

Draw ids (FSN1): 0 is the prior; step i owns ids 1 + 2 i (noise added before the model call: EDM's churn) and
2 + 2 i (the update's noise). A sample's noise depends only on (seed, sample id, step).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from fastsde import capture_safety
from fastsde.ops import step as step_ops
from fastsde.solvers.grid import Point

__all__ = ["Eval", "Combine", "Program", "SolverLoop", "check_model_output", "churn_draw", "update_draw", "BUFFERS",
           "SLOTS"]

BUFFERS = ("x", "y")
SLOTS = step_ops.MAX_OUTPUTS


def churn_draw(step: int) -> int:
    """FSN1 draw id of the noise step `step` adds before its first model call (EDM's churn)."""
    return 1 + 2 * step


def update_draw(step: int) -> int:
    """FSN1 draw id of the noise in step `step`'s update."""
    return 2 + 2 * step


class Eval(NamedTuple):
    src: str
    slot: int
    point: Point
    step: int
    first: bool  # the step's first model call (k-diffusion's callback fires after it)
    slope: bool = False  # store the slope (x~ - D) / sigma~ instead of D (well conditioned at a tiny sigma~)


class Combine(NamedTuple):
    dst: str
    src: str
    slots: tuple
    coefs: tuple  # (a, b0, b1, b2, c) floats; c = 0.0 and draw None when noiseless
    draw: int | None


class Program:
    """Builder: solvers append instructions; `result` names the buffer or slot the sample ends in."""

    def __init__(self):
        self.code: list = []
        self.result = ("buffer", "x")
        self._step_evals: set = set()

    def eval(self, src: str, slot: int, point: Point, step: int, slope: bool = False) -> None:
        if src not in BUFFERS or not 0 <= slot < SLOTS:
            raise ValueError(f"bad Eval({src!r}, {slot})")
        first = step not in self._step_evals
        self._step_evals.add(step)
        self.code.append(Eval(src, slot, point, step, first, bool(slope)))

    def combine(self, dst: str, src: str, a: float, terms=(), c: float | None = None, draw: int | None = None):
        """buf[dst] <- a buf[src] + sum b D[slot] for (slot, b) in terms (+ c z(draw) when c)."""
        if dst not in BUFFERS or src not in BUFFERS or len(terms) > SLOTS:
            raise ValueError(f"bad Combine({dst!r}, {src!r}, {len(terms)} terms)")
        slots = tuple(int(s) for s, _ in terms)
        b = [float(v) for _, v in terms] + [0.0] * (SLOTS - len(terms))
        noisy = c is not None and c != 0.0
        if noisy and draw is None:
            raise ValueError("a noisy Combine needs a draw id")
        coefs = (float(a), *b, float(c) if noisy else 0.0)
        if not all(math.isfinite(v) for v in coefs):
            raise ValueError(f"solver coefficients must be finite, got {coefs} (repeated or degenerate time points?)")
        self.code.append(Combine(dst, src, slots, coefs, draw if noisy else None))

    def finish_with_denoise(self, point: Point, step: int) -> None:
        """Append the final denoising: the sample becomes D(x, point) (Tweedie's mean, k-diffusion's step to 0)."""
        self.eval("x", 0, point, step)
        self.result = ("slot", 0)

    @property
    def model_evals(self) -> int:
        return sum(isinstance(ins, Eval) for ins in self.code)

    @property
    def stochastic(self) -> bool:
        return any(isinstance(ins, Combine) and ins.draw is not None for ins in self.code)


def check_model_output(out, x: torch.Tensor) -> None:
    """A model output the solvers can combine with the state x: a floating-point tensor of x's shape (the ops then
    check dtype and device), or a TypeError/ValueError naming the model's output."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model output must be a torch.Tensor like the state {tuple(x.shape)}, got "
                        f"{type(out).__name__} (model(x, labels) must return the tensor itself)")
    if not out.dtype.is_floating_point:
        raise TypeError(f"the model output must be a floating-point tensor, got {out.dtype}")
    if out.shape != x.shape:
        raise ValueError(f"the model output must have the state's shape {tuple(x.shape)}, got {tuple(out.shape)}")


class SolverLoop:
    """Runs a Program on preallocated buffers with one CombineSteps entry (backend resolved once).

    `labels_of(point)` gives the model's time argument for a Point as a (B,) tensor (built once per Eval here);
    `denoiser_coefs(point)` gives (p, q) with D = p x + q out. `noise_fn(draw)`, when given, replaces FSN1 with an
    explicit noise tensor per draw (k-diffusion's noise_sampler). The state is `x` (updated in place).

    Everything an instruction reads is a tensor made here once: the coefficients are (1,) views of one float64
    (n, 5) table, the labels one (B,) tensor per Eval, the seed the 0-d tensor CombineSteps.seed_bits. So
    `eval_step` (the model call + its affine pass) compiles to one graph shared by every Eval (compile=True), and
    `capture`/`replay` record the whole program in one CUDA graph: a new start x, seed or sample ids is a copy into
    the static tensors, never a re-capture.
    """

    def __init__(self, program: Program, x: torch.Tensor, labels_of, denoiser_coefs, *, seed, sample_ids,
                 backend: str = "auto", noise_fn=None):
        self.program = program
        self.steps = step_ops.CombineSteps(x, seed, sample_ids, backend)
        self.noise_fn = noise_fn
        dev = x.device
        self.bufs = {"x": x, "y": torch.empty_like(x)}
        self.slots = [torch.empty_like(x) for _ in range(SLOTS)]
        rows, self.labels, self.slope_scale = [], [], {}
        for k, ins in enumerate(program.code):
            if isinstance(ins, Eval):
                p, q = (float(v) for v in denoiser_coefs(ins.point))
                if ins.slope:
                    # slope (src / alpha - D) / sigma~ = ((1/alpha - p) src - q out) / sigma~. fastsde's denoisers
                    # have p = 1/alpha: the slope is (-q / sigma~) out, one pass, no cancellation. A denoiser model
                    # (k-diffusion: p = 0, q = 1) gives src - out rounded once (coefficients +-1 are exact), then a
                    # multiply by 1/sigma~, as k-diffusion computes (x - denoised) / sigma: an Eval at a tiny sigma~
                    # no longer amplifies the rounding of src by 1/sigma~.
                    p, q = 1.0 / ins.point.alpha - p, -q
                    if p == 0.0:
                        q = q / ins.point.st
                    else:
                        self.slope_scale[k] = 1.0 / ins.point.st
                row = (p, q, self.slope_scale.get(k, 0.0), 0.0, 0.0)
                if not all(math.isfinite(v) for v in row):
                    raise ValueError(f"the denoiser coefficients at t = {ins.point.t:.6g} (sigma~ = "
                                     f"{ins.point.st:.6g}) are not finite floats: {row[:3]}")
                rows.append(row)
                self.labels.append(labels_of(ins.point))
            else:
                rows.append(ins.coefs)
                self.labels.append(None)
        self.rows = torch.tensor(rows, dtype=torch.float64).reshape(-1, 5).to(dev)
        self.coefs = []  # per instruction: (a, [b_k], c or None) as (1,) views of self.rows
        for k, ins in enumerate(program.code):
            row = self.rows[k]
            n = 1 if isinstance(ins, Eval) else len(ins.slots)
            noisy = isinstance(ins, Combine) and ins.draw is not None
            self.coefs.append((row[0:1], [row[1 + j:2 + j] for j in range(n)], row[4:5] if noisy else None))
        self._graph = None

    def eval_step(self, model, src, labels, slot, coefs) -> None:
        """One Eval: slot <- D(src) = p src + q model(src, labels), the model call and its affine pass."""
        out = model(src, labels)
        if self.steps.accepts(out):
            self.steps.combine(slot, src, [out], coefs, 0)
        else:  # an odd model output (strided, other dtype) goes through the checked public op
            check_model_output(out, src)
            step_ops.affine_combine_step(src, [out.to(src.dtype)], coefs[0], coefs[1], out=slot,
                                         backend=self.steps.backend)

    def run(self, model, callback=None, eval_step=None, eager_evals: int = 0) -> torch.Tensor:
        """Execute the program with `model(x, labels) -> out`; returns the result buffer. `eval_step` (default
        self.eval_step) runs each Eval: a compiled twin of it for compile=True, with the first `eager_evals` Evals
        run eagerly (state a model builds lazily on its first call exists before tracing)."""
        eval_step = eval_step or self.eval_step
        bufs, slots = self.bufs, self.slots
        evals = 0
        for k, ins in enumerate(self.program.code):
            coefs = self.coefs[k]
            if isinstance(ins, Eval):
                src = bufs[ins.src]
                (self.eval_step if evals < eager_evals else eval_step)(model, src, self.labels[k], slots[ins.slot],
                                                                       coefs)
                if k in self.slope_scale:
                    slots[ins.slot].mul_(self.rows[k, 2:3])
                evals += 1
                if callback is not None and ins.first:
                    callback(ins, src, slots[ins.slot])
            else:
                outputs = [slots[s] for s in ins.slots]
                if ins.draw is not None and self.noise_fn is not None:
                    step_ops.affine_combine_step(bufs[ins.src], outputs, coefs[0], coefs[1], coefs[2],
                                                 noise=self.noise_fn(ins.draw), out=bufs[ins.dst],
                                                 backend=self.steps.backend)
                else:
                    self.steps.combine(bufs[ins.dst], bufs[ins.src], outputs, coefs, ins.draw or 0)
        return self.result()

    def result(self) -> torch.Tensor:
        kind, where = self.program.result
        return self.bufs[where] if kind != "slot" else self.slots[where]

    # ------------------------------------------------------------------------------------------------ CUDA graphs
    def replay(self, model, eval_step=None) -> torch.Tensor:
        """The program from the graph recorded by an earlier call (recorded now when there is none, or when the
        model's parameters moved to new storage: a graph reads them at the addresses it recorded). Before recording,
        the first Eval runs eagerly (lazily built model state) and then through `eval_step` outside any capture (a
        first compile -- a program with a single Eval, e.g. the adaptive solver's denoising, never called it before
        -- or a recompile happens there, never inside the recording); both only write that Eval's slot, which the
        replay writes again. Recorded on a side stream of x's device, replayed on x's device. Memory: one graph pool
        holding the program's peak activations, beside the buffers here."""
        if self.noise_fn is not None:
            raise ValueError("a captured solver draws its noise from FSN1 (noise_sampler is host noise)")
        eval_step = eval_step or self.eval_step
        device = self.bufs["x"].device
        addresses = capture_safety.parameter_addresses(model)
        with capture_safety.on_device(device):
            if self._graph is None or self._graph[0] != addresses:
                self._graph = None
                first = next((k for k, ins in enumerate(self.program.code) if isinstance(ins, Eval)), None)
                if first is not None:
                    ins = self.program.code[first]
                    args = (model, self.bufs[ins.src], self.labels[first], self.slots[ins.slot], self.coefs[first])
                    self.eval_step(*args)
                with capture_safety.capture_stream(device) as side:
                    if first is not None:
                        eval_step(*args)
                    graph = capture_safety.record_graph(lambda: self.run(model, eval_step=eval_step), side)
                self._graph = (addresses, graph)
            self._graph[1].replay()
        return self.result()
