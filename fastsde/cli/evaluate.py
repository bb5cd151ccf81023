"""`fastsde eval`: Fréchet distance in the digit classifier's features and the class histogram of samples."""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastsde.digits.pretrained import DIGITS_DEFAULTS
from fastsde.cli.common import (SDE_DEFAULTS, check_memory, fmt_optional, image_model_arguments, load_model_for,
                                memory_estimate, parse_model, positive_int, read_samples_npz, unet_activation_bytes,
                                with_threads)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    image_model_arguments(p, 256)
    p.add_argument("--samples", default=None, metavar="NPZ",
                   help="evaluate these images (a `fastsde sample` .npz, key 'samples') instead of sampling; the "
                        "model and sampler options then do not apply")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"sampler steps when sampling (default: {DIGITS_DEFAULTS['steps']})")
    p.add_argument("--backend", choices=("auto", "reference", "native", "triton"), default="auto")


def run(args: argparse.Namespace) -> int:
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.digits.evaluation import DigitsEvaluator
    from fastsde.sampling import get_pc_sampler

    evaluator = DigitsEvaluator()
    source = args.samples
    if args.samples:
        images = read_samples_npz(args.samples)
    else:
        parse_model(args)
        mf, backend = load_model_for(args)
        check_memory(f"--n {args.n} digits", memory_estimate(args.n, 256, activations=unet_activation_bytes(
            mf.model.config)), args.device)
        steps = args.steps or DIGITS_DEFAULTS["steps"]
        predictor, corrector, eps = SDE_DEFAULTS[mf.sde_name]
        sampler = get_pc_sampler(mf.make_sde(N=steps), (args.n, 1, 16, 16), predictor, corrector,
                                 get_data_inverse_scaler(mf.centered), 0.16, continuous=True, eps=eps,
                                 device=args.device, backend=backend, seed=args.seed, progress=args.progress)
        images = with_threads(args, lambda: sampler(mf.model)[0]).detach().float().cpu()
        source = f"{os.path.basename(mf.path)} ({predictor}+{corrector}, {steps} steps, seed {args.seed})"
    q = evaluator.evaluate(images)
    n = q["n"]
    report = {"source": source, **q, **evaluator.scale_at(n, seed=args.seed), "classifier": evaluator.path}
    if args.json:
        print(json.dumps(report))
        return 0
    c = q["classes"]
    print(f"{source}: {n} images\n"
          f"  FD          {q['fd']:.2f}  (classifier features vs the 359 test digits; at n={n}: real vs real "
          f"{fmt_optional(report['fd_real_vs_real'])}, noise vs real {report['fd_real_vs_noise']:.1f})\n"
          f"  classes     {c['histogram']}  entropy {c['entropy']:.3f} of {c['max_entropy']:.3f}, confidence "
          f"{c['confidence']:.3f}\n"
          f"  classifier  {100 * q['test_accuracy']:.1f}% accurate on the real test digits")
    return 0
