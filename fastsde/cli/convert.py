"""`fastsde convert`: a score_sde checkpoint (checkpoint_*.pth, read without unpickling code) to a safetensors score
model file: the weights under score_sde's keys, checked by loading them strictly into fastsde's NCSNpp / DDPM of the
given config, with the architecture, the config and the SDE in the metadata, so `fastsde sample --model FILE` and
fastsde.models.load_model_file rebuild the network."""
from __future__ import annotations

import argparse
import json
import math
import os

import torch

from fastsde.cli.common import AtomicOutputs, UsageError, check_output_file

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="score_sde checkpoint (a dict with model, ema, optimizer, step)")
    p.add_argument("--config", required=True,
                   help="the checkpoint's score_sde config: a name (e.g. ve/cifar10_ncsnpp_continuous) or JSON fields "
                        "including name and sde")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--ema", action="store_true", help="write the EMA weights (what score_sde samples with)")


def _sde_metadata(config) -> dict:
    """The "fastsde.sde" entry of a score model file for a ScoreSDEConfig: fastsde.sde's name and hyper-parameters,
    checked as `fastsde sample` will check them when it reads the file (so a file it would refuse is never written)."""
    from fastsde import sde as sde_lib

    name = config.sde_name
    if name is None:
        raise ValueError("config sde (score_sde's training.sde) must be one of vesde, vpsde, subvpsde for a score "
                         "model file, got none")
    keys = ("sigma_min", "sigma_max") if name == "ve" else ("beta_min", "beta_max")
    kwargs = {k: float(getattr(config, k)) for k in keys}
    for key, value in kwargs.items():
        if not math.isfinite(value):
            raise ValueError(f"config {key} must be a finite number, got {value}")
    sde_lib.make_sde(name, N=1, **kwargs)  # the SDE's own checks (ValueError)
    return {"name": name, "kwargs": kwargs}


def _check_paths(args) -> None:
    """Before any work: the checkpoint is a regular file (a FIFO would block torch.load), --out can be written and is
    not the checkpoint itself."""
    from fastsde._util import check_regular_file

    check_regular_file(args.checkpoint, "checkpoint")
    check_output_file(args.out)
    if os.path.exists(args.out) and os.path.samefile(args.out, args.checkpoint):
        raise UsageError(f"--out {args.out} is the checkpoint being converted: write to another file")


def _check_state_dict(path, state: dict, model) -> None:
    """Every tensor that fills a floating-point parameter or buffer must be floating point itself: load_state_dict
    would cast integer or bool weights silently."""
    expected = model.state_dict()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: state dict entry {key!r} must be a tensor, got {type(value).__name__}")
        want = expected.get(key)
        if want is not None and want.is_floating_point() and not value.is_floating_point():
            raise ValueError(f"{path}: weight {key!r} is {str(value.dtype).replace('torch.', '')}, the network "
                             f"expects floating point ({str(want.dtype).replace('torch.', '')}); refusing to cast it")


def run(args: argparse.Namespace) -> int:
    from fastsde.compat.score_sde.checkpoint import load_state_dict
    from fastsde.compat.score_sde.configs import get_config_fields
    from fastsde.models.score_sde_nets import ScoreSDEConfig, build_model, save_file

    _check_paths(args)
    try:
        config = ScoreSDEConfig.from_any(get_config_fields(args.config))
    except TypeError as exc:
        raise ValueError(f"--config: {exc}") from None
    sde = _sde_metadata(config)
    model = build_model(config, accelerate=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    state = load_state_dict(args.checkpoint, ema=args.ema, trainable=trainable)
    _check_state_dict(args.checkpoint, state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # load_state_dict(strict=True): missing, unexpected or mis-shaped keys
        first = str(e).strip().splitlines()
        raise ValueError(f"{args.checkpoint} does not hold a {config.name} network of this config: "
                         f"{' '.join(line.strip() for line in first[:3])}") from None
    model.eval()
    training = {"source": "score_sde checkpoint", "checkpoint": os.path.basename(str(args.checkpoint)),
                "ema": bool(args.ema)}
    with AtomicOutputs() as files:  # the file complete or not at all; missing parents are made
        save_file(model, files.path(args.out), metadata={"fastsde.sde": json.dumps(sde, sort_keys=True),
                                                         "fastsde.training": json.dumps(training, sort_keys=True)})
    c = config
    print(f"wrote {args.out}: score_sde {c.name} ({c.num_channels}x{c.image_size}x{c.image_size}, nf={c.nf}, "
          f"{sde['name']} SDE){' with its EMA weights' if args.ema else ''}, {len(model.state_dict())} tensors under "
          f"score_sde's keys; load with fastsde.models.load_model_file"
          + (" or sample with fastsde sample --model FILE" if (c.num_channels, c.image_size) == (1, 16) else ""))
    return 0
