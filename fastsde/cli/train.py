"""`fastsde train`: denoising score matching of a digits score model (resumable), or a digit classifier."""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastsde._util import check_regular_file
from fastsde.cli.common import (MAX_THREADS, UsageError, check_memory, device_name, finite_float, nonnegative_int,
                                positive_float, positive_int, seed_value, step_count, thread_count)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fastsde.digits.training import SDE_NAMES, TrainConfig

    d = TrainConfig()
    p.add_argument("--dataset", choices=("digits",), default=d.dataset, help="training data (no download)")
    p.add_argument("--sde", choices=SDE_NAMES, default=d.sde, help="forward SDE")
    p.add_argument("--preset", default=d.preset, help="UNet preset of fastsde.models.ncsnpp")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="optimisation steps in total")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=d.lr, help="Adam learning rate after warm-up")
    p.add_argument("--warmup", type=nonnegative_int, default=d.warmup, help="linear learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=finite_float, default=d.grad_clip, help="gradient-norm clip (0: off)")
    p.add_argument("--ema-decay", type=finite_float, default=d.ema_decay, help="EMA decay of the exported weights")
    p.add_argument("--likelihood-weighting", action="store_true", help="weight the loss by g(t)^2")
    p.add_argument("--seed", type=seed_value, default=d.seed)
    p.add_argument("--checkpoint-every", type=positive_int, default=d.checkpoint_every)
    p.add_argument("--snapshot-every", type=positive_int, default=d.snapshot_every,
                   help="write a sample grid (EMA weights) every this many steps")
    p.add_argument("--snapshot-steps", type=step_count, default=d.snapshot_steps,
                   help="sampler steps of those grids")
    p.add_argument("--classifier", choices=("none", "clean", "noisy"), default="none",
                   help="train a digit classifier instead of a score model: 'clean' (the eval metric's feature "
                        "space) or 'noisy' (time-dependent, for class-conditional sampling under --sde); it uses "
                        "--steps, --batch-size, --lr, --seed, --sde and --out only (AdamW, cosine decay; a few "
                        "minutes, so not checkpointed)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default=d.precision,
                   help="score model training: the forward/backward under autocast in bf16 or fp16 with float32 "
                        "master weights (fp16 adds loss scaling); auto: bf16 where the device computes bfloat16 "
                        "natively, else fp32 (default: fp32)")
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--threads", type=thread_count, help=f"torch CPU threads, 1 to {MAX_THREADS} (default: torch's)")
    p.add_argument("--out", required=True, help="run directory (checkpoint, sample grids, exported model)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def run(args: argparse.Namespace) -> int:
    from fastsde.digits.training import TrainConfig, Trainer, train_classifier, training_memory

    if args.grad_clip < 0:
        raise UsageError(f"--grad-clip must be >= 0 (0: off), got {args.grad_clip}")
    if not 0 <= args.ema_decay < 1:
        raise UsageError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.seed >= 2**63 - 3:
        raise UsageError(f"--seed must be below 2**63 - 3 for training (torch generators), got {args.seed}")
    if not args.out or os.path.isfile(args.out):
        raise UsageError(f"--out must name a run directory, got {args.out!r}" + (" (a file)" if args.out else ""))
    checkpoint = os.path.join(args.out, Trainer.CHECKPOINT)
    if os.path.lexists(checkpoint):  # a resume: a FIFO or directory there would block or fail late
        check_regular_file(checkpoint, "training checkpoint")
    check_memory(f"--batch-size {args.batch_size}", training_memory(args.preset, args.sde, args.batch_size,
                                                                   classifier=args.classifier != "none"),
                 args.device)
    from fastsde.precision import resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.classifier != "none":
        if args.precision not in ("fp32", "auto"):
            raise UsageError("--precision applies to score models only (the classifiers train in fp32)")
        summary = train_classifier(args.out, time_dependent=args.classifier == "noisy", sde=args.sde,
                                   steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                   device=args.device, progress=args.progress)
        print(json.dumps(summary, indent=2))
        return 0
    precision = resolve_precision(args.precision, args.device)
    config = TrainConfig(dataset=args.dataset, sde=args.sde, preset=args.preset, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, grad_clip=args.grad_clip,
                         ema_decay=args.ema_decay, likelihood_weighting=args.likelihood_weighting, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, snapshot_every=args.snapshot_every,
                         snapshot_steps=args.snapshot_steps, precision=precision)
    trainer = Trainer(config, args.out, device=args.device, progress=args.progress)
    summary = trainer.run()
    print(f"trained {summary['steps']} steps ({summary['trained_now']} now, {summary['seconds']:.0f} s, {precision}); "
          f"loss {summary['loss_first100']:.4f} (first 100) -> {summary['loss_last100']:.4f} (last 100); "
          f"wrote {summary['model']} and sample grids in {os.path.abspath(args.out)}")
    return 0


