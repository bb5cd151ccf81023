"""The models shipped with fastsde (fastsde/digits/weights/) and the files that carry trained models around.

A score model file is a UNet safetensors checkpoint (fastsde.models.ncsnpp.save_checkpoint) or a score_sde network
written by `fastsde convert` (fastsde.models.score_sde_nets.save_file), whose metadata also names its SDE and
hyper-parameters ("fastsde.sde") and how it was trained ("fastsde.training": the config, the exact command, the
final loss; for a converted checkpoint, where it came from). A classifier file is safetensors with a
ClassifierConfig ("fastsde.classifier") and, for a time-dependent classifier, the SDE it was trained under. Nothing
is unpickled.

Shipped (each file's metadata holds the command that produced it; README's "Shipped models" lists them):
  digits_<sde>.safetensors           small16 score models of the 16x16 digits (fastsde.datasets)
  digits_classifier.safetensors      the clean-image classifier behind `fastsde eval`'s metrics
  digits_<sde>_tclassifier.safetensors  time-dependent classifiers for class-conditional sampling
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

from fastsde import sde as sde_lib
from fastsde._util import check_regular_file
from fastsde.sampling import PC_DEFAULTS

__all__ = ["DATA_DIR", "DIGITS_DEFAULTS", "score_model_path", "ScoreModelFile", "save_score_model", "load_score_model",
           "read_sde_name", "save_classifier", "load_classifier", "shipped_path", "read_metadata"]

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
_CLASSIFIER_FORMAT = "fastsde.classifier/1"


def shipped_path(name: str) -> str:
    """Path of a shipped file (e.g. "digits_vp.safetensors"); a clear error when it is missing."""
    path = os.path.join(DATA_DIR, name)
    if not os.path.exists(path):
        have = sorted(os.listdir(DATA_DIR)) if os.path.isdir(DATA_DIR) else []
        raise FileNotFoundError(f"no shipped model {name!r} in {DATA_DIR} (have: {have})")
    return path


def read_metadata(path: str) -> dict[str, str]:
    from safetensors import safe_open

    check_regular_file(path, "model file")  # a FIFO would block safe_open forever
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) on a damaged file
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None


@dataclass
class ScoreModelFile:
    """A loaded score model with what sampling it needs: the SDE (name, hyper-parameters) and provenance."""

    model: torch.nn.Module
    sde_name: str
    sde_kwargs: dict
    training: dict
    path: str

    def make_sde(self, N: int = 1000):
        return sde_lib.make_sde(self.sde_name, N=N, **self.sde_kwargs)

    @property
    def centered(self) -> bool:
        return bool(self.model.config.centered)


def save_score_model(model, path: str, *, sde: str, sde_kwargs: dict, training: dict | None = None) -> None:
    from fastsde.models.ncsnpp import save_checkpoint

    meta = {"fastsde.sde": json.dumps({"name": sde, "kwargs": sde_kwargs}, sort_keys=True),
            "fastsde.training": json.dumps(training or {}, sort_keys=True)}
    save_checkpoint(model, path, metadata=meta)


def load_score_model(path: str, *, reference: bool = False, backend: str = "auto", device="cpu") -> ScoreModelFile:
    """A score model file (save_score_model, or a score_sde checkpoint through `fastsde convert`) as a
    ScoreModelFile; the network is rebuilt by fastsde.models.load_model_file (reference=True: plain PyTorch)."""
    from fastsde.models import load_model_file

    meta = read_metadata(path)
    if "fastsde.sde" not in meta:
        raise ValueError(f"{path} carries no SDE metadata: not a fastsde score model file")
    name, kwargs = _sde_metadata(path, meta["fastsde.sde"])
    training = _json_metadata(path, "fastsde.training", meta.get("fastsde.training", "{}"))
    if meta.get("format") != "fastsde.score_sde/1":  # a fastsde UNet file: its config fields are UNetConfig's
        _check_config(path, meta.get("config", "{}"))
    try:
        model = load_model_file(path, reference=reference, backend=backend, device=device)
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:  # config fields and values, missing tensors
        raise ValueError(f"{path}: the model config or weights do not fit fastsde's UNet ({exc})") from None
    except Exception as exc:  # safetensors' own SafetensorError (e.g. a truncated file, an unknown device)
        if type(exc).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{path}: cannot load the weights ({exc})") from None
    return ScoreModelFile(model, name, kwargs, training if isinstance(training, dict) else {}, path)


def read_sde_name(path: str) -> str:
    """The SDE name in a score model file's metadata (checked as load_score_model checks it), without the weights."""
    meta = read_metadata(path)
    if "fastsde.sde" not in meta:
        raise ValueError(f"{path} carries no SDE metadata: not a fastsde score model file")
    return _sde_metadata(path, meta["fastsde.sde"])[0]


def _check_config(path: str, text: str) -> None:
    import dataclasses

    from fastsde.models.ncsnpp import UNetConfig

    config = _json_metadata(path, "config", text)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: metadata 'config' must be a JSON object, got {text[:80]!r}")
    known = {f.name for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{path}: metadata 'config' has unknown UNet field(s) {unknown}; known: {sorted(known)}")


def _json_metadata(path: str, key: str, text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata {key!r} is not JSON ({exc})") from None


def _sde_metadata(path: str, text: str) -> tuple[str, dict]:
    """(name, hyper-parameters) of a model file's "fastsde.sde" entry, checked: {"name": ve|vp|subvp, "kwargs": {...}}
    with only that SDE's own float hyper-parameters (N is chosen by the sampler, never by the file)."""
    import inspect

    sde = _json_metadata(path, "fastsde.sde", text)
    if not isinstance(sde, dict) or not isinstance(sde.get("name"), str) or not isinstance(sde.get("kwargs", {}), dict):
        raise ValueError(f"{path}: metadata 'fastsde.sde' must be {{\"name\": NAME, \"kwargs\": {{...}}}}, got "
                         f"{text[:80]!r}")
    name, kwargs = sde["name"], dict(sde.get("kwargs", {}))
    if name not in sde_lib.SDE_CLASSES:
        raise ValueError(f"{path}: metadata 'fastsde.sde' names an unknown SDE {name!r}; known: {sde_lib.SDE_NAMES}")
    allowed = set(inspect.signature(sde_lib.SDE_CLASSES[name]).parameters) - {"N"}
    for key, value in kwargs.items():
        if key not in allowed:
            raise ValueError(f"{path}: metadata 'fastsde.sde' has {key!r}, not a hyper-parameter of the {name} SDE "
                             f"(allowed: {sorted(allowed)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value == value \
                or value in (float("inf"), float("-inf")):
            raise ValueError(f"{path}: metadata 'fastsde.sde' {key} must be a finite number, got {value!r}")
    return name, kwargs


def save_classifier(model, path: str, *, sde: str | None = None, training: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": _CLASSIFIER_FORMAT, "fastsde.classifier": model.config.to_json(),
            "fastsde.sde": json.dumps(sde), "fastsde.training": json.dumps(training or {}, sort_keys=True)}
    save_file(tensors, path, metadata=meta)


def load_classifier(path: str, device="cpu"):
    """(Classifier in eval mode, sde name or None, training dict) from a save_classifier file."""
    from safetensors.torch import load_file

    from fastsde.models.classifier import Classifier, ClassifierConfig

    meta = read_metadata(path)
    if meta.get("format") != _CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a fastsde classifier file (format {meta.get('format')!r})")
    model = Classifier(ClassifierConfig.from_json(meta["fastsde.classifier"]))
    model.load_state_dict(load_file(path, device=str(device)))
    return model.to(device).eval(), json.loads(meta["fastsde.sde"]), json.loads(meta.get("fastsde.training", "{}"))


# `fastsde sample` with no arguments (and bench e2e's digits_default rows): 64 digits from the shipped VP model
# with the few-step solver chosen by the rule of docs/design.md section 13 (written before the measurement: the
# fewest evaluations whose FD over seeds 0-2 at n = 359 is within one pooled seed spread of the best and whose ODE
# error is below 0.05; README "Speed and quality") -- singlestep DPM-Solver-3 on 3 uniform-log-SNR steps + the final
# denoising call, 10 model evaluations. "steps" is the PC sampler's N for `--sampler pc` (and bench e2e's
# digits_pc rows): score_sde's VP sampler, Euler-Maruyama predictor without a corrector, 200 steps.
DIGITS_DEFAULTS = {"sde": "vp", "sampler": "dpm_solver_3", "solver_steps": 3, "steps": 200, "n": 64}
DIGITS_DEFAULTS.update(zip(("predictor", "corrector", "eps"), PC_DEFAULTS[DIGITS_DEFAULTS["sde"]]))


def score_model_path(kind: str, spec: str, sde: str | None) -> str:
    """The file behind --model: the shipped digits_<sde>.safetensors, or the given path."""
    if kind == "digits":
        return shipped_path(f"digits_{sde or DIGITS_DEFAULTS['sde']}.safetensors")
    return check_regular_file(spec, "score model file")
