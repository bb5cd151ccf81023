"""`fastsde likelihood`: bits/dim of test digits through the probability-flow ODE with a Hutchinson trace."""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastsde import distributed
from fastsde.cli.common import (IMAGE_BATCH, UsageError, batch_argument, image_model_arguments, load_model_for,
                                micro_batch, parse_model, positive_int, test_subset, with_threads)
from fastsde.cli.flow import ode_arguments, ode_settings
from fastsde.likelihood import PROBE_TYPES

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    image_model_arguments(p, 32)
    p.add_argument("--probe", choices=PROBE_TYPES, default="Rademacher",
                   help="Hutchinson probe distribution, or 'exact': the trace from 256 VJPs per evaluation (slow; "
                        "measures the estimator's bias)")
    p.add_argument("--probes", type=positive_int, default=1,
                   help="Hutchinson probes per digit (one forward, this many VJPs per evaluation); > 1 reports the "
                        "estimator's standard error")
    ode_arguments(p)
    p.add_argument("--dequantize", action="store_true",
                   help="add uniform noise to the 8-bit pixels as score_sde's datasets do ((u + 255 x) / 256)")
    p.add_argument("--compare", action="store_true",
                   help="also integrate with RK45 at rtol = atol = 1e-5 and report the difference (the error of a "
                        "fast --method fixed or loose-tolerance setting)")
    batch_argument(p, f"n up to {IMAGE_BATCH}; scipy's methods take their steps for a whole micro-batch, so their "
                      f"bits/dim depend on it (RK45 and fixed: not)")


def run(args: argparse.Namespace) -> int:
    with distributed.session(args.device) as device:
        args.device = device
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Every rank integrates its micro-batches of the test digits; the per-digit bits/dim (and probe standard errors,
    each from one rank) are all_reduced and rank 0 reports. Digit i keeps row i of one probe draw in any
    micro-batch."""
    import time

    from fastsde.digits.data import get_data_inverse_scaler, get_data_scaler
    from fastsde.likelihood import dequantize, get_likelihood_fn, hutchinson_probe

    parse_model(args)
    settings = ode_settings(args)
    if args.probe == "exact" and args.probes != 1:
        raise UsageError(f"--probes applies to Hutchinson probes, got --probes {args.probes} with --probe exact")
    args.backend = "auto"
    mf, _ = load_model_for(args)
    images, _ = test_subset(args.n, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.dequantize:
        images = dequantize(images, gen)
    batch = micro_batch(args, args.n, IMAGE_BATCH)
    data = get_data_scaler(mf.centered)(images)
    shape = tuple(data.shape) if args.probes == 1 else (args.n, args.probes) + tuple(data.shape[1:])
    probe = None if args.probe == "exact" else hutchinson_probe(shape, args.probe, gen)
    sde, inverse = mf.make_sde(), get_data_inverse_scaler(mf.centered)
    fns = {"main": get_likelihood_fn(sde, inverse, args.probe, probes=args.probes, **settings)}
    if args.compare:
        fns["tight"] = get_likelihood_fn(sde, inverse, args.probe, probes=args.probes, method="RK45", rtol=1e-5,
                                         atol=1e-5, eps=args.eps)
    n = args.n
    stats = {k: torch.zeros(2 * n, dtype=torch.float64) for k in fns}  # [bpd of each digit, its probe stderr]
    nfe = {k: torch.zeros(1, dtype=torch.int64) for k in fns}  # the most evaluations a micro-batch took
    wall = {}

    def one(name):
        def batch_fn(k, ids):
            r = fns[name](mf.model, data[ids].to(args.device), None if probe is None else probe[ids], details=True)
            stats[name][ids] = r.bpd_probes.mean(1).cpu()
            if r.bpd_stderr is not None:
                stats[name][n + ids] = r.bpd_stderr.cpu()
            nfe[name][0] = max(int(nfe[name]), int(r.nfe))
        return batch_fn

    for name in fns:
        start = time.perf_counter()
        with_threads(args, lambda: distributed.for_each_batch(one(name), n, batch=batch, progress=args.progress,
                                                              desc="digits" if name == "main" else "digits (tight)"))
        nfe[name] = int(distributed.all_reduce(nfe[name], op="max"))
        stats[name] = distributed.all_reduce(stats[name])
        wall[name] = time.perf_counter() - start
    if distributed.rank() != 0:
        return 0
    bpd = stats["main"][:n]
    if not bool(torch.isfinite(bpd).all()):
        raise RuntimeError(f"bits/dim not finite for {int((~torch.isfinite(bpd)).sum())} digits")
    mean = float(bpd.mean())
    probe_se = float(stats["main"][n:].pow(2).mean().sqrt()) / n ** 0.5 if args.probes > 1 else None
    report = {"model": os.path.basename(mf.path), "sde": mf.sde_name, "n": n, "seed": args.seed,
              "probe": args.probe, "probes": args.probes, "dequantize": args.dequantize, **settings,
              "bpd_mean": mean, "bpd_stderr": float(bpd.std()) / n ** 0.5 if n > 1 else float("nan"),
              "bpd_probe_stderr": probe_se, "bpd": bpd.tolist(),
              "bpd_probe_stderr_per_digit": stats["main"][n:].tolist() if args.probes > 1 else None,
              "nfe": nfe["main"], "wall_time_s": wall["main"], "batch": batch, "processes": distributed.world_size()}
    if args.compare:
        tight = stats["tight"][:n]
        report.update(bpd_tight=float(tight.mean()), bpd_error_vs_tight=mean - float(tight.mean()),
                      bpd_max_digit_error_vs_tight=float((bpd - tight).abs().max()), nfe_tight=nfe["tight"],
                      wall_time_tight_s=wall["tight"])
    if args.json:
        print(json.dumps(report))
        return 0
    how = f"{args.method}" + (f" {args.steps} steps" if args.steps else "" if args.method == "fixed"
                               else f" rtol {args.rtol:g}")
    probe_text = "exact trace" if args.probe == "exact" else f"{args.probes} {args.probe} probe" + \
        ("s" if args.probes > 1 else "")
    print(f"{report['model']}: {mean:.3f} +- {report['bpd_stderr']:.3f} bits/dim over {n} test digits "
          f"(probability-flow ODE, {how}, {probe_text}, seed {args.seed}; {nfe['main']} function evaluations per "
          f"micro-batch, {wall['main']:.1f} s)")
    if probe_se is not None:
        print(f"  the probe estimator's standard error of the mean: {probe_se:.4f} bits/dim")
    if args.compare:
        print(f"  against RK45 at rtol 1e-5 ({report['bpd_tight']:.4f} bits/dim, {nfe['tight']} evaluations, "
              f"{wall['tight']:.1f} s): mean off by {report['bpd_error_vs_tight']:+.4f}, digits by up to "
              f"{report['bpd_max_digit_error_vs_tight']:.4f}")
    print("  (bits/dim as score_sde reports it: the data treated as 8-bit with uniform dequantization; the digits "
          "have 17 grey levels upsampled)")
    return 0
