"""Heat-family benchmarks (fastsde.heat): `python -m fastsde.benchmarks.bench_heat [dct|step|quality|all] [--json]`.

  dct      the orthonormal 2-D DCT-II as two matmuls with cached bases (fastsde.heat.dct2) against an FFT-based DCT
           (Makhoul's reordering, torch.fft) at 16x16 and 32x32, batch 64 x 1 channel; rounds interleaved, medians.
  step     the per-frequency fused step (fastsde.ops.freq_step, em-style case: a x + b s + c z with FSN1 noise) at
           16M float32 elements against its reference and a copy (x.clone(): 8 B/elem): GB/s and the fraction of
           the copy's bandwidth at the step's 12 B/elem.
  quality  FD (digit-classifier features) of 256 digits from the shipped heat and VP models through the same
           per-frequency DDIM sampler (eta 1) and DPM-Solver++(2M) at the same number of model evaluations, with
           the real-vs-real and noise-vs-real scale at that n and the time per sample; then super-resolution and
           inpainting errors on
           held-out test digits (fastsde heat superres/inpaint) beside score_sde's PC inpainter on the VP model.
Timings on a shared machine: compare ratios within one run, never absolute numbers across runs.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

__all__ = ["bench_dct", "bench_step", "bench_quality", "main"]


def _dct_fft_1d(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last dim through one complex FFT of the even/odd reordering (Makhoul 1980)."""
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    k = torch.arange(n, dtype=x.dtype, device=x.device)
    w = torch.polar(torch.ones_like(k), -math.pi * k / (2 * n)) * math.sqrt(2.0 / n)
    out = (torch.fft.fft(v) * w).real
    out[..., 0] = out[..., 0] / math.sqrt(2.0)
    return out


def dct2_fft(x: torch.Tensor) -> torch.Tensor:
    """The 2-D orthonormal DCT-II by FFTs (the alternative to fastsde.heat.dct2's matmuls)."""
    return _dct_fft_1d(_dct_fft_1d(x).transpose(-1, -2)).transpose(-1, -2)


def _interleaved(fns: dict, rounds: int, reps: int) -> dict:
    """Median seconds per call of each fn, measured in interleaved rounds (A B A B ...)."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t0) / reps)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_dct(rounds: int = 7) -> dict:
    from fastsde.heat import dct2

    out = {}
    for n in (16, 32):
        x = torch.randn(64, 1, n, n)
        err = float((dct2(x) - dct2_fft(x)).abs().max())
        t = _interleaved({"matmul": lambda: dct2(x), "fft": lambda: dct2_fft(x)}, rounds, 50)
        out[f"{n}x{n}"] = {"matmul_us": t["matmul"] * 1e6, "fft_us": t["fft"] * 1e6,
                           "fft_over_matmul": t["fft"] / t["matmul"], "max_abs_diff": err}
    return out


def bench_step(numel: int = 1 << 24, rounds: int = 5) -> dict:
    from fastsde.ops.dispatch import backend_available
    from fastsde.ops.freq_step import freq_step

    hw = 512 * 512
    x = torch.randn(numel // hw, 1, 512, 512)
    s = torch.randn_like(x)
    a, b, c = (torch.rand(hw, dtype=torch.float64) for _ in range(3))
    fns = {"copy": lambda: x.clone(),
           "reference": lambda: freq_step(x, s, a, b, c, seed=1, draw=2, backend="reference")}
    if backend_available("native", x.device)[0] and hasattr(torch.ops.fastsde, "freq_step"):
        fns["native"] = lambda: freq_step(x, s, a, b, c, seed=1, draw=2, backend="native")
    t = _interleaved(fns, rounds, 2)
    copy_gbs = 8 * numel / t["copy"] / 1e9
    res = {"numel": numel, "threads": torch.get_num_threads(), "copy_GBps": copy_gbs}
    for name in fns:
        if name != "copy":
            gbs = 12 * numel / t[name] / 1e9
            res[name] = {"ms": t[name] * 1e3, "GBps_at_12B": gbs, "fraction_of_copy": gbs / copy_gbs}
    if "native" in res:
        res["native_speedup_over_reference"] = t["reference"] / t["native"]
    return res


def bench_quality(n: int = 256, steps: int = 50, seed: int = 0, progress: bool = False,
                  models=("heat", "vp")) -> dict:
    from fastsde import controllable
    from fastsde.heat_sampler import constraints
    from fastsde.digits.data import get_data_inverse_scaler, get_data_scaler, load_digits, make_mask
    from fastsde.digits.evaluation import DigitsEvaluator
    from fastsde.digits.pretrained import load_score_model, shipped_path
    from fastsde.heat_sampler import heat_sample

    evaluator = DigitsEvaluator()
    res = {"n": n, "steps": steps, **evaluator.scale_at(n, seed)}
    test, labels = load_digits("test")
    idx = torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(seed))[:64]
    images, labels = test[idx], labels[idx]
    for name in models:
        mf = load_score_model(shipped_path(f"digits_{name}.safetensors"))
        scaler, inverse = get_data_scaler(mf.centered), get_data_inverse_scaler(mf.centered)
        t0 = time.perf_counter()
        x, nfe, _ = heat_sample(mf.model, mf.make_sde(), (n, 1, 16, 16), steps=steps, eta=1.0, seed=seed,
                                progress=progress)
        wall = time.perf_counter() - t0
        row = {"nfe": nfe, "seconds_per_sample": wall / n,
               "fd": evaluator.frechet_distance(inverse(x).clamp(0, 1))}
        x, _, _ = heat_sample(mf.model, mf.make_sde(), (n, 1, 16, 16), steps=steps, solver="dpmpp_2m", seed=seed)
        row["fd_dpmpp_2m"] = evaluator.frechet_distance(inverse(x).clamp(0, 1))  # deterministic, same evaluations
        for task in ("superres", "inpaint"):
            mask = make_mask("right", len(images)) if task == "inpaint" else None
            x, _, _ = heat_sample(mf.model, mf.make_sde(), images.shape, steps=steps, eta=1.0, seed=seed,
                                  constraint=constraints(task, scaler(images), mask))
            out = inverse(x).clamp(0, 1)
            err = ((out - images) ** 2) if mask is None else ((out - images) ** 2) * (1 - mask)
            row[f"{task}_mse"] = float(err.sum() / (err.numel() if mask is None else (1 - mask).sum()))
            row[f"{task}_accuracy"] = float((evaluator.logits(out).argmax(1) == labels).double().mean())
        if name == "vp":  # score_sde's PC inpainter on the VP model (fastsde inpaint), the same digits and mask
            mask = make_mask("right", len(images))
            inp = controllable.get_pc_inpainter(mf.make_sde(N=steps), "reverse_diffusion", "langevin", inverse,
                                                0.16, continuous=True, eps=1e-3, seed=seed)
            out = inp(mf.model, scaler(images), mask).clamp(0, 1) * (1 - mask) + images * mask
            row["pc_inpaint_mse"] = float((((out - images) ** 2) * (1 - mask)).sum() / (1 - mask).sum())
            row["pc_inpaint_accuracy"] = float((evaluator.logits(out).argmax(1) == labels).double().mean())
            row["pc_inpaint_nfe"] = 2 * steps
        res[name] = row
    low = torch.nn.functional.avg_pool2d(images, 2)
    bilinear = torch.nn.functional.interpolate(low, scale_factor=2.0, mode="bilinear", align_corners=False)
    res["superres_bilinear_mse"] = float(((bilinear - images) ** 2).mean())
    return res


def _summary(runs, models) -> dict:
    """Mean and sd over the seeds of every per-model figure and of the real-vs-real FD."""
    out = {}
    keys = {"fd_real_vs_real": [r.get("fd_real_vs_real") for r in runs]}
    for name in models:
        for k in runs[0][name]:
            keys[f"{name}.{k}"] = [r[name][k] for r in runs]
    for k, values in keys.items():
        values = [v for v in values if isinstance(v, (int, float))]
        if values:
            out[k] = {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=("dct", "step", "quality", "all"))
    p.add_argument("--steps", type=int, default=50, help="quality: sampler steps (model evaluations)")
    p.add_argument("--n", type=int, default=256, help="quality: samples for the FD")
    p.add_argument("--models", nargs="+", default=["heat", "vp"], choices=("heat", "vp"),
                   help="quality: the shipped models to measure")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="quality: one run per seed; with several, each figure's mean and sd over them too")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    res = {}
    if args.what in ("dct", "all"):
        res["dct"] = bench_dct()
    if args.what in ("step", "all"):
        res["step"] = bench_step()
    if args.what in ("quality", "all"):
        runs = [bench_quality(args.n, args.steps, seed=s, progress=not args.json, models=tuple(args.models))
                for s in args.seeds]
        res["quality"] = runs[0] if len(runs) == 1 else {"seeds": args.seeds, "runs": runs,
                                                         "summary": _summary(runs, args.models)}
    print(json.dumps(res, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
