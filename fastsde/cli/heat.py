"""`fastsde heat`: what heat-equation models are for, with pictures (fastsde.heat, fastsde.heat_sampler).

  trajectory  the coarse-to-fine generation of samples: a strip of the model's x0 prediction along the run
  deblur      sampling started from a blurred or pixelated test digit (its forward marginal at --t-start)
  superres    2x super-resolution 8x8 -> 16x16 of held-out test digits (2x2 average pooling is the observation)
  inpaint     completing masked test digits

superres and inpaint use the unconditional model with no retraining: the DDIM step from the null-space projection
of its x0 prediction (DDNM). The reports give the error against the held-out digits and the digit classifier's
agreement with their labels; --sde vp runs the shipped VP model through the same sampler (VP is the heat SDE with
blur 0), the comparison `fastsde inpaint` (score_sde's PC inpainter) gives for VP.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastsde.cli.common import (AtomicOutputs, UsageError, device_name, finite_float, output_stem, positive_int,
                                seed_value, step_count, test_subset, thread_count, MAX_THREADS, with_threads)
from fastsde.digits.data import MASKS, make_mask
from fastsde.heat_sampler import constraints, degrade

__all__ = ["add_arguments", "run", "ACTIONS"]

ACTIONS = ("trajectory", "deblur", "superres", "inpaint")
HEAT_MODEL_SDES = ("heat", "vp")  # shipped models the heat sampler runs (vp as the heat SDE with blur 0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=ACTIONS, help="what to show (module docstring)")
    p.add_argument("--model", default="digits", metavar="MODEL",
                   help="'digits' (the shipped digits model of --sde) or a score model file PATH.safetensors of the "
                        "heat family or VP")
    p.add_argument("--sde", choices=HEAT_MODEL_SDES, default=None, help="which shipped digits model (default: heat)")
    p.add_argument("--n", type=positive_int, default=16, help="number of samples / test digits")
    p.add_argument("--steps", type=step_count, default=100, help="sampler steps (model evaluations)")
    p.add_argument("--eta", type=finite_float, default=1.0,
                   help="DDIM stochasticity per frequency: 0 deterministic (probability flow), 1 ancestral")
    p.add_argument("--frames", type=positive_int, default=8, help="trajectory: frames of the strip")
    p.add_argument("--degrade", choices=("blur", "pixelate"), default="blur",
                   help="deblur: the start image, the test digit under a Gaussian blur of std 1.5 pixels or 2x2 "
                        "pixelated")
    p.add_argument("--t-start", type=finite_float, default=0.4,
                   help="deblur: the time in (0, 1] whose forward marginal of the degraded digit starts the run")
    p.add_argument("--mask", choices=MASKS, default="right", help="inpaint: the part to generate")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the noise (and of the choice of test digits)")
    p.add_argument("--backend", choices=("auto", "reference", "native", "triton"), default="auto",
                   help="backend of the fused per-frequency step")
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--threads", type=thread_count, help=f"torch CPU threads, 1 to {MAX_THREADS} (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--out", default=None, help="output stem: writes STEM.png and STEM.npz (default: heat_ACTION)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def _check(args) -> None:
    from fastsde.cli.common import parse_model

    parse_model(args)
    args.sde = args.sde or "heat"
    if not 0.0 <= args.eta <= 1.0:
        raise UsageError(f"--eta must be in [0, 1], got {args.eta}")
    if not 0.0 < args.t_start <= 1.0:
        raise UsageError(f"--t-start must be in (0, 1], got {args.t_start}")
    if args.frames < 2 and args.action == "trajectory":
        raise UsageError(f"--frames must be >= 2, got {args.frames}")


def _load(args):
    from fastsde.heat_sampler import as_frequency_sde
    from fastsde.digits.pretrained import load_score_model, score_model_path

    path = score_model_path(args.model[0], args.model[1], args.sde if args.model[0] == "digits" else None)
    mf = load_score_model(path, device=args.device)
    try:
        as_frequency_sde(mf.make_sde())
    except ValueError:
        raise ValueError(f"{path} was trained under the {mf.sde_name} SDE; fastsde heat runs heat-family and VP "
                         f"models") from None
    if mf.model.config.resolution != 16 or mf.model.config.in_channels != 1:
        raise ValueError(f"{path}: fastsde heat handles 1x16x16 digits models")
    return mf


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from fastsde.digits import plotting
    from fastsde.digits.data import get_data_inverse_scaler, get_data_scaler
    from fastsde.digits.evaluation import DigitsEvaluator
    from fastsde.heat_sampler import heat_sample

    _check(args)
    stem = output_stem(args.out or f"heat_{args.action}")
    mf = _load(args)
    sde = mf.make_sde()
    scaler, inverse = get_data_scaler(mf.centered), get_data_inverse_scaler(mf.centered)
    shape = (args.n, 1, 16, 16)
    images = labels = mask = None
    kwargs = dict(steps=args.steps, solver="ddim", eta=args.eta, seed=args.seed, backend=args.backend,
                  device=args.device, progress=args.progress)
    if args.action != "trajectory":
        images, labels = test_subset(args.n, args.seed)
    if args.action == "trajectory":
        kwargs["frames"] = args.frames
    elif args.action == "deblur":
        start = degrade(images, args.degrade)
        kwargs.update(start=scaler(start).to(args.device), t_start=args.t_start)
    else:
        mask = make_mask(args.mask, args.n) if args.action == "inpaint" else None
        kwargs["constraint"] = constraints(args.action, scaler(images).to(args.device), mask)

    def sample():
        t0 = time.perf_counter()
        x, nfe, frames = heat_sample(mf.model, sde, shape, **kwargs)
        return x, nfe, frames, time.perf_counter() - t0

    x, nfe, frames, wall = with_threads(args, sample)
    out = inverse(x.float().cpu()).clamp(0, 1)
    if not torch.isfinite(out).all():
        raise RuntimeError("the samples are not finite (NaN or inf): the model returned non-finite outputs")
    report = {"action": args.action, "model": os.path.basename(mf.path), "sde": mf.sde_name, "n": args.n,
              "steps": args.steps, "nfe": nfe, "eta": args.eta, "seed": args.seed, "wall_time_s": wall,
              "seconds_per_sample": wall / args.n, "npz": stem + ".npz", "png": stem + ".png"}
    panels, arrays = [], {"samples": out.numpy()}
    if images is not None:
        evaluator = DigitsEvaluator()
        report["mse"] = float(((out - images) ** 2).mean())
        report["classifier_accuracy"] = float((evaluator.logits(out).argmax(1) == labels).double().mean())
        arrays.update(original=images.numpy(), labels=labels.numpy())
        panels.append(("held-out test digits", images))
    if args.action == "trajectory":
        strip = torch.stack([inverse(f.float()).clamp(0, 1) for f in frames], 1)  # (n, frames, 1, 16, 16)
        arrays["trajectory"] = strip.numpy()
        panels.append(("x0 prediction, t = 1 -> 0", strip.reshape(-1, 1, 16, 16)))
        nrow = len(frames)
    else:
        nrow = int(np.ceil(np.sqrt(args.n)))
    if args.action == "deblur":
        report.update(degrade=args.degrade, t_start=args.t_start,
                      mse_degraded=float(((degrade(images, args.degrade) - images) ** 2).mean()))
        panels.append((f"start: {args.degrade} digit", degrade(images, args.degrade)))
    if args.action == "superres":
        low = torch.nn.functional.avg_pool2d(images, 2)
        bilinear = torch.nn.functional.interpolate(low, scale_factor=2.0, mode="bilinear", align_corners=False)
        report["mse_bilinear"] = float(((bilinear.clamp(0, 1) - images) ** 2).mean())
        report["observation_error"] = float((torch.nn.functional.avg_pool2d(out, 2) - low).abs().max())
        panels += [("8x8 observation", torch.nn.functional.interpolate(low, scale_factor=2.0, mode="nearest")),
                   ("bilinear", bilinear.clamp(0, 1))]
    if args.action == "inpaint":
        report.update(mask=args.mask, known_pixels_max_abs_error=float(((out - images).abs() * mask).max()),
                      mse_generated_part=float((((out - images) ** 2) * (1 - mask)).sum() / (1 - mask).sum()))
        panels.append(("known pixels (gray: to generate)", images * mask + 0.5 * (1 - mask)))
    if args.action != "trajectory":
        panels.append((f"{mf.sde_name} model, {args.action}", out))
    with AtomicOutputs() as files:
        np.savez(files.path(report["npz"]), **arrays)
        plotting.save_image_panels(panels, files.path(report["png"]), nrow=nrow,
                                   title=f"{mf.sde_name} {args.action}, {args.steps} steps")
    if args.json:
        print(json.dumps(report))
    else:
        extra = "".join(f"\n  {k:<28} {v:.4g}" for k, v in report.items()
                        if isinstance(v, float) and k not in ("eta", "wall_time_s"))
        print(f"fastsde heat {args.action}: {args.n} digits, {report['model']}, {nfe} model evaluations in "
              f"{wall:.2f} s{extra}\n  wrote {report['npz']}, {report['png']}")
    return 0
