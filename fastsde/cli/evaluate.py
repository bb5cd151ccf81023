"""`fastsde eval`: Fréchet distance in the digit classifier's features and the class histogram of samples."""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastsde import distributed
from fastsde.cli.common import (DIGITS_METRICS_BYTES, IMAGE_BATCH, OWN_STEPS, UsageError, batch_argument,
                                build_sampler, check_memory, check_own_steps, default_steps, fmt_optional,
                                image_model_arguments, kid_text, load_model_for, memory_estimate, micro_batch,
                                parse_model, read_samples_npz, sampler_argument, step_count, unet_activation_bytes,
                                with_threads)
from fastsde.digits.pretrained import DIGITS_DEFAULTS

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    image_model_arguments(p, 256)
    p.add_argument("--samples", default=None, metavar="NPZ",
                   help="evaluate these images (a `fastsde sample` .npz, key 'samples') instead of sampling; the "
                        "model and sampler options then do not apply")
    sampler_argument(p, f"{DIGITS_DEFAULTS['sampler']}, as `fastsde sample` on digits (its other options take "
                        "their defaults)")
    p.add_argument("--steps", type=step_count, default=None,
                   help=f"sampler steps when sampling (default: as `fastsde sample`, "
                        f"{DIGITS_DEFAULTS['solver_steps']} for {DIGITS_DEFAULTS['sampler']}, "
                        f"{DIGITS_DEFAULTS['steps']} for pc; refused for ode and adaptive)")
    p.add_argument("--backend", choices=("auto", "reference", "native", "triton"), default="auto")
    batch_argument(p, f"n up to {IMAGE_BATCH}")


def run(args: argparse.Namespace) -> int:
    with distributed.session(args.device) as device:
        args.device = device
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Every rank samples (or reads) its micro-batches and sums their statistics; the sums are all_reduced and rank
    0 reports. Equal to one process up to the order of the float64 sums (README: distributed runs)."""
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.digits.evaluation import DigitsEvaluator

    evaluator = DigitsEvaluator()
    if args.samples:
        images = read_samples_npz(args.samples)
        n, source = len(images), args.samples
        batch = micro_batch(args, n, IMAGE_BATCH)

        def draw(ids):
            return images[ids]
    else:
        if args.n < 2:
            raise UsageError(f"--n must be >= 2 (the quality report needs two samples), got {args.n}")
        parse_model(args)
        args.sampler = args.sampler or DIGITS_DEFAULTS["sampler"]
        check_own_steps(args)
        mf, _ = load_model_for(args)
        n, args.steps = args.n, args.steps or default_steps(args.sampler)
        batch = micro_batch(args, n, IMAGE_BATCH)
        check_memory(f"--n {args.n} digits", memory_estimate(  # activations per micro-batch; outputs and metrics
            args.n, 256, batch=batch, activations=unet_activation_bytes(mf.model.config),
            per_sample=DIGITS_METRICS_BYTES), args.device)
        args.sde = mf.sde_name
        sde, inverse_scaler = mf.make_sde(N=args.steps), get_data_inverse_scaler(mf.centered)

        def draw(ids):
            sampler, _ = build_sampler(args, sde, (len(ids), 1, 16, 16), inverse_scaler, sample_ids=ids,
                                       progress=args.progress and batch >= n)
            return sampler(mf.model)[0].detach().float().cpu()
        _, info = build_sampler(args, sde, (min(batch, n), 1, 16, 16), inverse_scaler)
        what = (f"{info['predictor']}+{info['corrector']}" if args.sampler == "pc" else args.sampler)
        steps = "" if args.sampler in OWN_STEPS else f", {args.steps} steps"
        source = f"{os.path.basename(mf.path)} ({what}{steps}, seed {args.seed})"

    d = evaluator.test_features.shape[1]

    def measure(ids):  # the summed statistics, and each finite image's features for KID (rows of an (n, d + 1) table)
        images = draw(ids)
        finite = torch.isfinite(images.flatten(1)).all(1)
        stats, features = evaluator.measure(images)  # one classifier pass: the sums and the finite rows' features
        rows = torch.zeros(len(ids), d + 1, dtype=torch.float64)
        rows[finite, :d], rows[finite, d] = features, 1.0
        return stats, torch.as_tensor(ids, dtype=torch.long), rows

    parts = with_threads(args, lambda: distributed.for_each_batch(
        lambda k, ids: measure(ids), n, batch=batch, progress=args.progress and batch < n, desc="images"))
    stats = distributed.all_reduce(sum((p[0] for p in parts), evaluator.statistics(torch.empty(0, 1, 16, 16))))
    table = torch.zeros(n, d + 1, dtype=torch.float64)  # each rank fills its rows: the sum over ranks gathers them
    for _, ids, rows in parts:
        table[ids] = rows
    table = distributed.all_reduce(table)
    if distributed.rank() != 0:
        return 0
    q = evaluator.evaluate_statistics(stats)
    features = table[table[:, d] == 1.0, :d]
    q["kid"] = evaluator.kernel_distance_of(features)
    n = q["n"]
    report = {"source": source, **q, **evaluator.scale_at(n, seed=args.seed), "classifier": evaluator.path,
              "batch": batch, "processes": distributed.world_size()}
    if args.json:
        print(json.dumps(report))
        return 0
    c = q["classes"]
    dropped = f" ({q['nonfinite']} more held NaN/inf and were left out)" if q["nonfinite"] else ""
    print(f"{source}: {n} images{dropped}\n"
          f"  FD          {q['fd']:.2f}  (classifier features vs the 359 test digits; at n={n}: real vs real "
          f"{fmt_optional(report['fd_real_vs_real'])}, noise vs real {report['fd_real_vs_noise']:.1f})\n"
          f"  KID         {kid_text(q['kid'])}\n"
          f"  classes     {c['histogram']}  entropy {c['entropy']:.3f} of {c['max_entropy']:.3f}, confidence "
          f"{c['confidence']:.3f}\n"
          f"  classifier  {100 * q['test_accuracy']:.1f}% accurate on the real test digits")
    return 0
