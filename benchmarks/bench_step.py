"""Suite "steps": one sampler update on 16M (or 1M) float32 elements, fused native vs three baselines.

Baselines, all timed in the same run on the same tensors (never zeros):
  reference      the update as score_sde writes it (fastsde.sampling predictor/corrector update_fn, torch.randn_like)
  eager_inplace  the best hand-written eager form: preallocated noise filled by normal_, in-place mul_/add_
  compile        torch.compile of the reference update
Bytes per element (float32, each input read once, each output written once): noisy affine step 12 B (x, score
in; x out), ODE step 12 B, Langevin 16 B (score read twice: norm pass + update pass), the solvers' combine of
three stored outputs with noise 20 B (x and three outputs in, x out; reference: the expression as k-diffusion-style
solvers write it, with torch.randn_like).
On CUDA (device="cuda") the same cases run on the GPU, with one more baseline, compile_reduce_overhead (torch.compile
of the reference with CUDA graphs), and the eager Langevin keeps its step size on the device (no host sync).
"""
from __future__ import annotations

import math

import torch

from fastsde import sampling
from fastsde import sde as sde_lib
from fastsde.benchmarks import common
from fastsde.benchmarks.common import median_ms, record
from fastsde.ops import step as step_ops

SUITE = "steps"


def _combine_setup(x0, x, z, backend):
    """The combine3 case: a few-step solver's update (DPM-Solver++ 3M-SDE's shape), three stored outputs + noise."""
    outs = [torch.randn_like(x0) for _ in range(3)]
    a, b, c = 0.9, (0.3, -0.2, 0.05), 0.1

    def reference():  # as k-diffusion-style solvers write it
        return a * x + b[0] * outs[0] + b[1] * outs[1] + b[2] * outs[2] + c * torch.randn_like(x)

    def eager():
        x.mul_(a).add_(outs[0], alpha=b[0]).add_(outs[1], alpha=b[1]).add_(outs[2], alpha=b[2]).add_(
            z.normal_(), alpha=c)

    def fused():
        step_ops.affine_combine_step(x, outs, a, list(b), c, seed=1, draw=3, out=x, backend=backend)

    def reset():
        x.copy_(x0)

    return fused, reference, eager, reset, 20


def _setup(numel, batch, backend, kind, device="cpu"):
    """(fused, reference, eager, reset, bytes_per_elem) for one case, on fresh non-zero tensors on `device`."""
    torch.manual_seed(0)
    x0 = torch.randn(batch, numel // batch, device=device)
    score = torch.randn_like(x0)
    x = x0.clone()
    z = torch.empty_like(x0)
    t = torch.full((batch,), 0.5, device=device)
    if kind == "combine3":
        return _combine_setup(x0, x, z, backend)
    if kind == "em":  # VP Euler–Maruyama
        sde = sde_lib.VPSDE()
        pred = sampling.EulerMaruyamaPredictor(sde, lambda x, t: score)
    elif kind in ("rd", "ode"):  # VE reverse diffusion (ode: its probability-flow variant, no noise)
        sde = sde_lib.VESDE()
        pred = sampling.ReverseDiffusionPredictor(sde, lambda x, t: score, probability_flow=kind == "ode")
    else:  # Langevin corrector, VE
        sde = sde_lib.VESDE()
        pred = sampling.LangevinCorrector(sde, lambda x, t: score, snr=0.16, n_steps=1)

    def reference():
        return pred.update_fn(x, t)

    if kind == "langevin":
        alpha = 1.0

        if torch.device(device).type == "cpu":
            def eager():
                z.normal_()
                gn = torch.linalg.vector_norm(score, dim=1).mean()
                zn = torch.linalg.vector_norm(z, dim=1).mean()
                eps = (0.16 * zn / gn) ** 2 * 2 * alpha
                x.add_(score, alpha=float(eps)).add_(z, alpha=math.sqrt(2 * float(eps)))
        else:  # the step size stays a device scalar: a host float would synchronize every call
            def eager():
                z.normal_()
                gn = torch.linalg.vector_norm(score, dim=1).mean()
                zn = torch.linalg.vector_norm(z, dim=1).mean()
                eps = (0.16 * zn / gn) ** 2 * 2 * alpha
                x.addcmul_(score, eps).addcmul_(z, (2 * eps).sqrt_())

        def fused():
            step_ops.langevin_step(x, score, 0.16, alpha, seed=1, draw=3, out=x, backend=backend)
        bytes_per_elem = 16
    else:
        a, b, c = (v[0].item() if v is not None else None for v in pred.coefficients(t[:1]))

        if c is None:
            def eager():
                x.mul_(a).add_(score, alpha=b)
        else:
            def eager():
                x.mul_(a).add_(score, alpha=b).add_(z.normal_(), alpha=c)

        def fused():
            step_ops.affine_step(x, score, a, b, c, seed=1, draw=3, out=x, backend=backend)
        bytes_per_elem = 12

    def reset():  # the state drifts while timing in place (a != 1): restart each measurement from x0
        x.copy_(x0)

    return fused, reference, eager, reset, bytes_per_elem


CASES = [
    ("em_noisy_16M", 16 << 20, 16, "em"),
    ("reverse_diffusion_noisy_16M", 16 << 20, 16, "rd"),
    ("langevin_16M", 16 << 20, 16, "langevin"),
    ("ode_step_16M", 16 << 20, 16, "ode"),
    ("combine3_noisy_16M", 16 << 20, 16, "combine3"),
    ("em_noisy_1M", 1 << 20, 16, "em"),
]


def run(quick: bool = False, backend: str = "native", use_compile: bool = True, device: str = "cpu") -> list[dict]:
    """All cases of the suite on `device`; quick: fewer repeats.

    The torch.compile baselines run after every other measurement: once inductor has run in a process, later
    OpenMP-parallel timings of small cases were measured up to 8x slower (em_noisy_1M: 1.0 ms alone, 8.0 ms after
    the compiled 16M cases), so compiling first would penalise whichever backend is timed next.
    """
    reps = 5 if quick else 15
    if common.is_cuda(device):
        reps *= 4  # a call takes microseconds: more repeats cost nothing
    copy_gbps = common.copy_bandwidth_gbps(reps=reps, device=device)
    out, setups = [], []
    for name, numel, batch, kind in CASES:
        fused, reference, eager, reset, bytes_per_elem = _setup(numel, batch, backend, kind, device)
        times = {}
        for label, fn in (("fused", fused), ("reference", reference), ("eager_inplace", eager)):
            reset()
            times[label] = median_ms(fn, reps, device=device)
        out.append(record(SUITE, name, backend, numel, times["fused"], bytes_per_elem, copy_gbps,
                          {"reference": times["reference"], "eager_inplace": times["eager_inplace"], "compile": None},
                          device=device))
        setups.append((reference, reset))
        print(f"  {name}: {out[-1]['median_ms']:.3f} ms", flush=True)
    if use_compile:
        modes = [("compile", None)] + ([("compile_reduce_overhead", "reduce-overhead")]
                                       if common.is_cuda(device) else [])
        for rec, (reference, reset) in zip(out, setups):
            for label, mode in modes:
                reset()
                compile_ms = common.compiled_ms(reference, reps, device=device, mode=mode)
                common.set_baseline(rec, label, compile_ms)
                print(f"  {rec['case']}: {label} baseline {compile_ms} ms", flush=True)
    return out
