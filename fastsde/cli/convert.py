"""`fastsde convert`: a score_sde checkpoint (checkpoint_*.pth) to a safetensors file, read without unpickling code."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="score_sde checkpoint (a dict with model, ema, optimizer, step)")
    p.add_argument("--config", required=True,
                   help="the checkpoint's score_sde config: a name (e.g. ve/cifar10_ncsnpp_continuous) or JSON fields")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--ema", action="store_true", help="write the EMA weights (what score_sde samples with)")


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from fastsde.compat.score_sde.checkpoint import load_state_dict
    from fastsde.compat.score_sde.configs import get_config_fields

    fields = get_config_fields(args.config)
    sd = load_state_dict(args.checkpoint, ema=args.ema)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    save_file(tensors, args.out, metadata={"format": "score_sde.state_dict/1", "config": json.dumps(fields),
                                           "ema": str(bool(args.ema))})
    print(f"wrote {args.out}: {len(tensors)} tensors of score_sde model {fields['name']!r}"
          f"{' (EMA weights)' if args.ema else ''}; load with safetensors into score_sde's class (state-dict keys "
          f"unchanged)")
    return 0
