"""A small convolutional image classifier: the feature space of the quality metric and the guide of conditional
sampling.

Two uses, one architecture (`Classifier(ClassifierConfig)`):
  time_embedding=None          a plain classifier of clean images in [0, 1]; `features(x)` (the penultimate
                               activations) is the space the Fréchet distance of fastsde.metrics is measured in.
  time_embedding="positional"  a time-dependent classifier p(y | x_t, t) for classifier guidance, taking the same
  / "fourier"                  (x, labels) as the score model it guides (VP/subVP: labels 999 t, sinusoidal
                               embedding; VE: labels sigma, Fourier features of log sigma), x in the model's range.
Layout: conv3x3 (w) -> GN -> SiLU -> conv3x3 stride 2 (2w) -> GN -> SiLU -> conv3x3 stride 2 (2w) -> GN -> SiLU
-> flatten -> Linear (feature_dim) -> SiLU [features] -> Linear (num_classes) [logits]. The time embedding (two
dense layers) is added as a per-channel bias after the first two convolutions. Plain torch layers throughout, so it
is differentiable for guidance and runs anywhere.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn

from fastsde.nn import GaussianFourierProjection, timestep_embedding

__all__ = ["ClassifierConfig", "Classifier"]

_TIME_EMBEDDINGS = (None, "positional", "fourier")


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = 1
    resolution: int = 16
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    time_embedding: str | None = None
    centered: bool = False  # True: inputs already in [-1, 1]; False: inputs in [0, 1], mapped to 2x - 1 first

    def __post_init__(self):
        if self.time_embedding not in _TIME_EMBEDDINGS:
            raise ValueError(f"time_embedding must be one of {_TIME_EMBEDDINGS}, got {self.time_embedding!r}")
        if self.resolution % 4:
            raise ValueError(f"resolution must be divisible by 4, got {self.resolution}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClassifierConfig":
        return cls(**json.loads(text))


def _groups(ch: int) -> int:
    return min(8, ch)


class Classifier(nn.Module):
    """forward(x, labels=None) -> logits (B, num_classes); features(x, labels=None) -> (B, feature_dim)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        c = self.config = config
        w = c.width
        self.conv0 = nn.Conv2d(c.in_channels, w, 3, padding=1)
        self.norm0 = nn.GroupNorm(_groups(w), w)
        self.conv1 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.norm1 = nn.GroupNorm(_groups(2 * w), 2 * w)
        self.conv2 = nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1)
        self.norm2 = nn.GroupNorm(_groups(2 * w), 2 * w)
        self.fc = nn.Linear(2 * w * (c.resolution // 4) ** 2, c.feature_dim)
        self.out = nn.Linear(c.feature_dim, c.num_classes)
        if c.time_embedding is not None:
            if c.time_embedding == "fourier":
                self.fourier = GaussianFourierProjection(w // 2, 16.0)
            self.temb = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, 4 * w))
            self.temb_to0 = nn.Linear(4 * w, w)
            self.temb_to1 = nn.Linear(4 * w, 2 * w)

    def _check(self, x, labels):
        c = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"x must be (B, {c.in_channels}, {c.resolution}, {c.resolution}), got {tuple(x.shape)}")
        if (labels is None) != (c.time_embedding is None):
            raise ValueError("a time-dependent classifier needs labels (B,), a plain one takes none"
                             if labels is None else "this classifier is not time-dependent: pass no labels")
        if labels is not None and (labels.dim() != 1 or labels.shape[0] != x.shape[0]):
            raise ValueError(f"labels must be a ({x.shape[0]},) vector, got shape {tuple(labels.shape)}")

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check(x, labels)
        c = self.config
        if not c.centered:
            x = 2.0 * x - 1.0
        t0 = t1 = 0.0
        if c.time_embedding is not None:
            if c.time_embedding == "fourier":
                emb = self.fourier(torch.log(labels.to(x.dtype)))
            else:
                emb = timestep_embedding(labels, c.width).to(x.dtype)
            emb = nn.functional.silu(self.temb(emb))
            t0 = self.temb_to0(emb)[:, :, None, None]
            t1 = self.temb_to1(emb)[:, :, None, None]
        act = nn.functional.silu
        h = act(self.norm0(self.conv0(x) + t0))
        h = act(self.norm1(self.conv1(h) + t1))
        h = act(self.norm2(self.conv2(h)))
        return act(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.out(self.features(x, labels))
