"""`fastsde info`: versions, the native extension and Triton status, and the registered components."""
from __future__ import annotations

import argparse
import json
import os

import torch

import fastsde
from fastsde import sampling
from fastsde import sde as sde_lib
from fastsde.models import analytic

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the information as one JSON object")


def _triton_status() -> str:
    try:
        import triton
    except Exception as exc:  # noqa: BLE001  (a broken triton install can raise anything at import)
        return f"not importable ({type(exc).__name__}: {exc})"
    return f"importable, version {getattr(triton, '__version__', 'unknown')}"


def run(args: argparse.Namespace) -> int:
    from fastsde import _native
    from fastsde.noise import NOISE_KINDS
    from fastsde.digits.pretrained import DATA_DIR

    native = {"available": _native.available(), "unavailable_reason": _native.unavailable_reason()}
    if native["available"]:
        native["build_info"] = _native.build_info()
    report = {
        "fastsde": fastsde.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "native": native,
        "triton": _triton_status(),
        "sdes": list(sde_lib.SDE_NAMES),
        "predictors": sampling.predictor_names(),
        "correctors": sampling.corrector_names(),
        "backends": list(sampling.BACKENDS),
        "noise": list(NOISE_KINDS),
        "mixtures": sorted(analytic.PRESETS),
        "shipped": sorted(os.listdir(DATA_DIR)) if os.path.isdir(DATA_DIR) else [],
    }
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    if native["available"]:
        native_line = "loaded; " + ", ".join(f"{k}={v}" for k, v in native["build_info"].items())
    else:
        native_line = f"not loaded ({native['unavailable_reason']})"
    rows = [
        ("fastsde", report["fastsde"]), ("torch", report["torch"]), ("threads", report["threads"]),
        ("cuda", "available" if report["cuda"] else "not available"), ("native", native_line),
        ("triton", report["triton"]),
    ] + [(key, ", ".join(report[key])) for key in ("sdes", "predictors", "correctors", "backends", "noise",
                                                    "mixtures", "shipped")]
    print("\n".join(f"{name:<11} {value}" for name, value in rows))
    return 0


