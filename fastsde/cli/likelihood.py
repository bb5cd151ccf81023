"""`fastsde likelihood`: bits/dim of test digits through the probability-flow ODE with a Hutchinson trace."""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastsde import distributed
from fastsde.cli.common import (IMAGE_BATCH, batch_argument, image_model_arguments, load_model_for, micro_batch,
                                parse_model, positive_float, test_subset, with_threads)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    image_model_arguments(p, 32)
    p.add_argument("--probe", choices=("Rademacher", "Gaussian"), default="Rademacher",
                   help="Hutchinson probe distribution")
    p.add_argument("--rtol", type=positive_float, default=1e-5, help="RK45 relative tolerance")
    p.add_argument("--atol", type=positive_float, default=1e-5, help="RK45 absolute tolerance")
    batch_argument(p, f"n up to {IMAGE_BATCH}; RK45 takes its steps for a whole micro-batch, so bits/dim depend "
                      f"on it")


def run(args: argparse.Namespace) -> int:
    with distributed.session(args.device) as device:
        args.device = device
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Every rank integrates its micro-batches of the test digits; the bits/dim sums (and the per-digit values, each
    from one rank) are all_reduced and rank 0 reports. Digit i keeps row i of one probe draw in any micro-batch."""
    import time

    from fastsde.digits.data import get_data_inverse_scaler, get_data_scaler
    from fastsde.likelihood import get_likelihood_fn, hutchinson_probe

    parse_model(args)
    args.backend = "auto"
    mf, _ = load_model_for(args)
    images, _ = test_subset(args.n, args.seed)
    batch = micro_batch(args, args.n, IMAGE_BATCH)
    data = get_data_scaler(mf.centered)(images)
    probe = hutchinson_probe(tuple(data.shape), args.probe, torch.Generator().manual_seed(args.seed))
    fn = get_likelihood_fn(mf.make_sde(), get_data_inverse_scaler(mf.centered), hutchinson_type=args.probe,
                           rtol=args.rtol, atol=args.atol)
    stats = torch.zeros(2 + args.n, dtype=torch.float64)  # [sum bpd, sum bpd^2, bpd of digit 0, ..., digit n-1]
    nfe = torch.zeros(1, dtype=torch.int64)  # the most function evaluations a micro-batch took

    def one(k, ids):
        bpd, _, evaluations = fn(mf.model, data[ids].to(args.device), probe=probe[ids])
        bpd = bpd.double().cpu()
        stats[0] += bpd.sum()
        stats[1] += (bpd * bpd).sum()
        stats[2 + ids] = bpd
        nfe[0] = max(int(nfe), int(evaluations))

    start = time.perf_counter()
    with_threads(args, lambda: distributed.for_each_batch(one, args.n, batch=batch, progress=args.progress,
                                                          desc="digits"))
    nfe = int(distributed.all_reduce(nfe, op="max"))
    stats = distributed.all_reduce(stats)
    wall = time.perf_counter() - start
    if distributed.rank() != 0:
        return 0
    bpd = stats[2:]
    if not bool(torch.isfinite(stats).all()):
        raise RuntimeError(f"bits/dim not finite for {int((~torch.isfinite(bpd)).sum())} digits")
    n, mean = args.n, float(stats[0]) / args.n
    var = (float(stats[1]) - float(stats[0]) * mean) / (n - 1) if n > 1 else float("nan")
    report = {"model": os.path.basename(mf.path), "sde": mf.sde_name, "n": n, "seed": args.seed,
              "probe": args.probe, "bpd_mean": mean, "bpd_stderr": (max(var, 0.0) / n) ** 0.5,
              "bpd": bpd.tolist(), "nfe": nfe, "wall_time_s": wall, "batch": batch,
              "processes": distributed.world_size()}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['model']}: {report['bpd_mean']:.3f} +- {report['bpd_stderr']:.3f} bits/dim over {args.n} "
              f"test digits (probability-flow ODE, RK45 rtol {args.rtol:g}, {args.probe} probe, seed {args.seed}; "
              f"{nfe} function evaluations per micro-batch, {wall:.1f} s)\n  (bits/dim as score_sde reports it: the "
              f"data treated as 8-bit with uniform dequantization; the digits have 17 grey levels upsampled)")
    return 0
