"""What the `fastsde` command modules share: the usage error, option types, the --model syntax, the sampler built
from the command line, and the helpers of the image-model commands (model loading, threads, output stems)."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from fastsde import distributed, sampling
from fastsde import sde as sde_lib
from fastsde.digits.pretrained import DIGITS_DEFAULTS, load_score_model, score_model_path
from fastsde.models import analytic
from fastsde.sampling import PC_DEFAULTS

__all__ = ["UsageError", "SDE_DEFAULTS", "positive_int", "nonnegative_int", "seed_value", "positive_float",
           "model_spec", "npz_path", "build_sampler", "load_model_for", "with_threads", "output_stem",
           "image_model_arguments", "parse_model", "test_subset", "fmt_optional", "IMAGE_BATCH",
           "batch_argument", "micro_batch"]


class UsageError(Exception):
    """A bad command line (exit code 2)."""


SDE_DEFAULTS = PC_DEFAULTS  # score_sde's (predictor, corrector, eps) per SDE name


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def seed_value(text: str) -> int:
    value = nonnegative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def model_spec(text: str) -> tuple[str, str]:
    """'digits' (the shipped digits model of --sde), a score model file PATH.safetensors, or 'gmm[:NAME]' with NAME
    a preset of fastsde.models.analytic -> (kind, name or path)."""
    if text == "digits":
        return "digits", "digits"
    if text.endswith(".safetensors"):
        return "file", text
    kind, _, name = text.partition(":")
    known = ", ".join(sorted(analytic.PRESETS))
    if kind != "gmm":
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; known: digits, PATH.safetensors, gmm[:NAME] with "
                                         f"NAME one of {known}")
    name = name or "ring"
    if name not in analytic.PRESETS:
        raise argparse.ArgumentTypeError(f"unknown mixture preset {name!r}; known: {known}")
    return kind, name


def npz_path(out: str) -> str:
    root, ext = os.path.splitext(out)
    return out if ext else out + ".npz"


def build_sampler(args: argparse.Namespace, sde: sde_lib.SDE, shape: tuple[int, ...], inverse_scaler=None, *,
                  sample_ids=None, progress=None):
    """(sampler(model) -> (x, nfe), the settings it was built with) from the command line; sample_ids: the global
    ids of the batch (FSN1 noise is keyed by them), progress: the per-step bar (default --progress)."""
    progress = args.progress if progress is None else progress
    default_predictor, default_corrector, default_eps = SDE_DEFAULTS[args.sde]
    inverse_scaler = inverse_scaler or (lambda x: x)
    eps = default_eps if args.eps is None else args.eps
    precision = getattr(args, "precision", None)  # resolved by the command (fastsde.precision); None: the state's
    info = {"sde": args.sde, "sampler": args.sampler, "steps": args.steps, "eps": eps, "seed": args.seed,
            "noise": args.noise, "continuous": args.continuous, "denoise": args.denoise,
            "precision": precision or "fp32"}
    if args.sampler == "ode":
        info.update(predictor="none", corrector="none", rtol=args.rtol or 1e-5, atol=args.atol or 1e-5)
        return sampling.get_ode_sampler(sde, shape, inverse_scaler, denoise=args.denoise, rtol=info["rtol"],
                                        atol=info["atol"], eps=eps, device=args.device, seed=args.seed,
                                        noise=args.noise, sample_ids=sample_ids, precision=precision), info
    info.update(predictor=args.predictor or default_predictor, corrector=args.corrector or default_corrector,
                snr=0.16 if args.snr is None else args.snr,
                n_steps_each=1 if args.n_steps_each is None else args.n_steps_each,
                probability_flow=bool(args.probability_flow), backend=args.backend or "auto",
                compile=bool(getattr(args, "compile", False)))
    return sampling.get_pc_sampler(
        sde, shape, info["predictor"], info["corrector"], inverse_scaler, info["snr"], n_steps=info["n_steps_each"],
        probability_flow=info["probability_flow"], continuous=args.continuous, denoise=args.denoise, eps=eps,
        device=args.device, backend=info["backend"], seed=args.seed, noise=args.noise, sample_ids=sample_ids,
        progress=progress, compile=info["compile"], precision=precision), info


def load_model_for(args: argparse.Namespace):
    """(ScoreModelFile, backend) for --model/--sde/--backend; backend 'reference' builds the plain-PyTorch UNet."""

    backend = getattr(args, "backend", None) or "auto"
    path = score_model_path(args.model[0], args.model[1], args.sde if args.model[0] == "digits" else None)
    mf = load_score_model(path, reference=backend == "reference",
                          backend="auto" if backend == "reference" else backend, device=args.device)
    if mf.model.config.resolution != 16 or mf.model.config.in_channels != 1:
        raise ValueError(f"{path}: the image commands handle 1x16x16 digits models, this one is "
                         f"{mf.model.config.in_channels}x{mf.model.config.resolution}x{mf.model.config.resolution}")
    return mf, backend


def with_threads(args, fn):
    threads = torch.get_num_threads()
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        return fn()
    finally:
        torch.set_num_threads(threads)


def output_stem(out: str) -> str:
    root, ext = os.path.splitext(out)
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    return root if ext in (".png", ".npz") else out


def image_model_arguments(p: argparse.ArgumentParser, n_default: int) -> None:
    p.add_argument("--model", default="digits", metavar="MODEL",
                   help="'digits' (the shipped digits model of --sde) or a score model file PATH.safetensors")
    p.add_argument("--sde", choices=("ve", "vp", "subvp"), default=None,
                   help=f"which shipped digits model (default: {DIGITS_DEFAULTS['sde']})")
    p.add_argument("--n", type=positive_int, default=n_default, help="number of test digits / samples")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the noise (and of the choice of test digits)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def parse_model(args) -> None:
    try:
        kind = model_spec(args.model)
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"--model: {err}") from None
    if kind[0] == "gmm":
        raise UsageError("this command takes an image model: 'digits' or PATH.safetensors")
    if kind[0] == "file" and args.sde is not None:
        raise UsageError("--sde does not apply to a model file: it was trained under its own SDE")
    args.model = kind


def test_subset(n: int, seed: int):
    from fastsde.digits.data import load_digits

    images, labels = load_digits("test")
    if n > images.shape[0]:
        raise UsageError(f"--n must be at most {images.shape[0]} (the test split), got {n}")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[idx], labels[idx]


def fmt_optional(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)




IMAGE_BATCH = 256  # the image commands' default micro-batch cap (fastsde.distributed)


def batch_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--batch", type=positive_int, default=None, metavar="B",
                   help="micro-batch size: samples 0..n-1 are cut into batches of B consecutive ids, dealt "
                        "round-robin to the processes of a torchrun launch; the same B gives the same bits with any "
                        f"number of processes (default: {default}, one batch as without torchrun)")


def micro_batch(args: argparse.Namespace, n: int, cap: int) -> int:
    """--batch, or n up to `cap`; on rank 0 a note on stderr when there are fewer micro-batches than processes."""
    batch = args.batch or min(n, cap)
    count, world = -(-n // batch), distributed.world_size()
    if count < world and distributed.rank() == 0:
        print(f"fastsde: note: {count} micro-batch{'es' if count > 1 else ''} of --batch {batch} for {world} "
              f"processes; pass --batch {-(-n // world)} or less to use them all", file=sys.stderr)
    return batch
