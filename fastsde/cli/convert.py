"""`fastsde convert`: a score_sde checkpoint (checkpoint_*.pth, read without unpickling code) to a safetensors score
model file: the weights under score_sde's keys, checked by loading them strictly into fastsde's NCSNpp / DDPM of the
given config, with the architecture, the config and the SDE in the metadata, so `fastsde sample --model FILE` and
fastsde.models.load_model_file rebuild the network."""
from __future__ import annotations

import argparse
import json
import os

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="score_sde checkpoint (a dict with model, ema, optimizer, step)")
    p.add_argument("--config", required=True,
                   help="the checkpoint's score_sde config: a name (e.g. ve/cifar10_ncsnpp_continuous) or JSON fields "
                        "including name and sde")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--ema", action="store_true", help="write the EMA weights (what score_sde samples with)")


def _sde_metadata(config) -> dict:
    """The "fastsde.sde" entry of a score model file for a ScoreSDEConfig: fastsde.sde's name and hyper-parameters."""
    name = config.sde_name
    if name is None:
        raise ValueError("config sde (score_sde's training.sde) must be one of vesde, vpsde, subvpsde for a score "
                         "model file, got none")
    keys = ("sigma_min", "sigma_max") if name == "ve" else ("beta_min", "beta_max")
    return {"name": name, "kwargs": {k: float(getattr(config, k)) for k in keys}}


def run(args: argparse.Namespace) -> int:
    from fastsde.compat.score_sde.checkpoint import load_model
    from fastsde.compat.score_sde.configs import get_config_fields
    from fastsde.models.score_sde_nets import ScoreSDEConfig, save_file

    config = ScoreSDEConfig.from_any(get_config_fields(args.config))
    sde = _sde_metadata(config)
    try:
        model = load_model(args.checkpoint, config, ema=args.ema, accelerate=False)
    except RuntimeError as e:  # load_state_dict(strict=True): missing, unexpected or mis-shaped keys
        first = str(e).strip().splitlines()
        raise ValueError(f"{args.checkpoint} does not hold a {config.name} network of this config: "
                         f"{' '.join(line.strip() for line in first[:3])}") from None
    training = {"source": "score_sde checkpoint", "checkpoint": os.path.basename(str(args.checkpoint)),
                "ema": bool(args.ema)}
    save_file(model, args.out, metadata={"fastsde.sde": json.dumps(sde, sort_keys=True),
                                         "fastsde.training": json.dumps(training, sort_keys=True)})
    c = config
    print(f"wrote {args.out}: score_sde {c.name} ({c.num_channels}x{c.image_size}x{c.image_size}, nf={c.nf}, "
          f"{sde['name']} SDE){' with its EMA weights' if args.ema else ''}, {len(model.state_dict())} tensors under "
          f"score_sde's keys; load with fastsde.models.load_model_file"
          + (" or sample with fastsde sample --model FILE" if (c.num_channels, c.image_size) == (1, 16) else ""))
    return 0
