"""NCSN++ / DDPM++-style U-Net score models (Song et al., ICLR 2021, appendix H) on fastsde's fused modules.

One architecture, two conditionings, both in get_score_fn's label conventions (docs/reference-math.md):
  embedding="fourier"     (NCSN++, VE): labels are sigma (B,); temb = Fourier(log sigma); with scale_by_sigma the
                          output is divided by sigma, so the network output is the score.
  embedding="positional"  (DDPM++, VP/subVP): labels are 999 t (B,); temb = sinusoidal(labels); output predicts eps.
temb then goes Linear -> SiLU -> Linear to 4 nf channels. Layout: conv_in; per resolution level num_res_blocks
ResnetBlocks (+ AttnBlock at attn_resolutions) and a stride-2 Downsample; middle Resnet-Attn-Resnet; per level
upwards num_res_blocks + 1 ResnetBlocks on the skip concatenations (+ AttnBlock) and a nearest Upsample;
head = GroupNorm -> SiLU -> conv3x3 (near-zero init).

`UNet(config)` builds it on fused modules (fastsde.nn: GroupNormAct, AttnBlock, ResnetBlock dispatching to
fastsde.ops with `backend`); `UNet(config, reference=True)` builds it from plain torch layers in score_sde's layout
(nn.GroupNorm + nn.SiLU, three NIN einsum projections per attention block). Both builds have the same parameter
names except inside attention blocks, whose keys are converted on load, so load_state_dict works either way.
Checkpoints are safetensors with the config as JSON metadata (save_checkpoint / load_checkpoint); never pickles.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn

from fastsde.nn import (AttnBlock, Downsample, GaussianFourierProjection, GroupNormAct, PlainAttnBlock,
                        PlainResnetBlock, ResnetBlock, Upsample, num_groups_for, timestep_embedding)
from fastsde.nn.core import conv3x3, dense

__all__ = ["UNetConfig", "UNet", "PRESETS", "get_preset", "save_checkpoint", "load_checkpoint"]

_EMBEDDINGS = ("fourier", "positional")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a UNet. ch_mult[i] * nf channels at level i (resolution / 2^i); attention at the feature-map
    sizes listed in attn_resolutions; centered=False maps data in [0, 1] to [-1, 1] first (2x - 1)."""

    nf: int = 128
    ch_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple = (16,)
    resolution: int = 32
    in_channels: int = 3
    dropout: float = 0.1
    skip_rescale: bool = True
    embedding: str = "fourier"
    fourier_scale: float = 16.0
    scale_by_sigma: bool = True
    centered: bool = False
    resamp_with_conv: bool = True
    num_heads: int = 1

    def __post_init__(self):
        from fastsde.models._checks import check_channels, check_config_fields

        check_config_fields(self, "UNet config", positive=("nf", "ch_mult", "num_res_blocks", "attn_resolutions",
                                                           "resolution", "in_channels", "fourier_scale", "num_heads"),
                            unit_interval=("dropout",))
        if not self.ch_mult:
            raise ValueError("UNet config ch_mult must list at least one level, got []")
        check_channels("UNet config", self.nf, self.ch_mult, num_heads=self.num_heads)
        if self.embedding not in _EMBEDDINGS:
            raise ValueError(f"embedding must be one of {_EMBEDDINGS}, got {self.embedding!r}")
        if self.resolution % 2 ** (len(self.ch_mult) - 1):
            raise ValueError(f"resolution {self.resolution} must be divisible by 2^{len(self.ch_mult) - 1} "
                             f"(one halving per level of ch_mult={self.ch_mult})")
        if self.scale_by_sigma and self.embedding != "fourier":
            raise ValueError("scale_by_sigma needs sigma labels (embedding='fourier', VE)")
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "UNetConfig":
        return cls(**json.loads(text))


class _Level(nn.Module):
    """One resolution level: residual blocks, their attention blocks (if any) and the resampler (if any)."""

    def __init__(self, res, attn, resample):
        super().__init__()
        self.res, self.attn, self.resample = nn.ModuleList(res), nn.ModuleList(attn), resample


class UNet(nn.Module):
    """Score model: forward(x (B, in_channels, R, R), labels (B,)) -> (B, in_channels, R, R) (see module docstring)."""

    def __init__(self, config: UNetConfig, *, reference: bool = False, backend: str = "auto",
                 memory_format: torch.memory_format | None = None):
        super().__init__()
        c = self.config = config
        self.reference, self.backend = reference, backend
        # memory_format: the layout the layers run in. None: the reference build runs NCHW as score_sde writes it;
        # the fused build runs channels-last on CPU (oneDNN convolutions are faster in NHWC and every fused op
        # keeps that layout) and NCHW on other devices. The output is NCHW-contiguous either way.
        if memory_format not in (None, torch.contiguous_format, torch.channels_last):
            raise ValueError(f"memory_format must be None, torch.contiguous_format or torch.channels_last, got "
                             f"{memory_format}")
        self._memory_format_default = memory_format is None
        self.memory_format = (torch.contiguous_format if reference else None) if memory_format is None \
            else memory_format
        nf, temb_dim = c.nf, 4 * c.nf

        def res(cin, cout):
            if reference:
                return PlainResnetBlock(cin, cout, temb_dim, c.dropout, c.skip_rescale)
            return ResnetBlock(cin, cout, temb_dim, c.dropout, c.skip_rescale, backend=backend)

        def attn(ch):
            if reference:
                return PlainAttnBlock(ch, c.skip_rescale)
            return AttnBlock(ch, c.num_heads, c.skip_rescale, backend=backend)

        if c.embedding == "fourier":
            self.fourier = GaussianFourierProjection(nf, c.fourier_scale)
        self.Dense_0 = dense(2 * nf if c.embedding == "fourier" else nf, temb_dim)
        self.Dense_1 = dense(temb_dim, temb_dim)
        self.conv_in = conv3x3(c.in_channels, nf)

        chans, ch, size = [nf], nf, c.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(c.ch_mult):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(res(ch, mult * nf))
                ch = mult * nf
                if size in c.attn_resolutions:
                    attns.append(attn(ch))
                chans.append(ch)
            last = i == len(c.ch_mult) - 1
            self.down.append(_Level(blocks, attns, None if last else Downsample(ch, with_conv=c.resamp_with_conv)))
            if not last:
                chans.append(ch)
                size //= 2
        self.mid = _Level([res(ch, ch), res(ch, ch)], [attn(ch)], None)
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.ch_mult))):
            blocks, attns = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(res(ch + chans.pop(), mult * nf))
                ch = mult * nf
                if size in c.attn_resolutions:
                    attns.append(attn(ch))
            self.up.append(_Level(blocks, attns, None if i == 0 else Upsample(ch, with_conv=c.resamp_with_conv)))
            if i:
                size *= 2
        norm = (nn.GroupNorm(num_groups_for(ch), ch, eps=1e-6) if reference
                else GroupNormAct(num_groups_for(ch), ch, 1e-6, act="silu", backend=backend))
        # head: GroupNorm -> SiLU -> conv; the fused build keeps the SiLU slot as Identity so the names line up.
        self.head = nn.Sequential(norm, nn.SiLU() if reference else nn.Identity(),
                                  conv3x3(ch, c.in_channels, init_scale=0.0))

    def _on_accelerate(self):
        """Called by fastsde.accelerate(): a reference build with the default layout takes the fused build's."""
        if self._memory_format_default:
            self.memory_format = None

    def _channels_last(self, x) -> bool:
        fmt = self.memory_format
        return fmt is torch.channels_last or (fmt is None and x.device.type == "cpu")

    def forward(self, x, labels):
        c = self.config
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must be a ({x.shape[0]},) vector, got shape {tuple(labels.shape)}")
        # The embedding's sin/cos in float32 (float64 for float64 x) whatever the model's precision: rounding
        # log sigma or the Fourier frequencies to 8 bits first would move the phases by up to a radian.
        emb_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        if c.embedding == "fourier":
            temb = self.fourier(torch.log(labels.to(emb_dtype)))
        else:
            temb = timestep_embedding(labels, c.nf)
        temb = temb.to(x.dtype)
        temb = self.Dense_1(torch.nn.functional.silu(self.Dense_0(temb)))
        if not c.centered:
            x = 2 * x - 1.0
        channels_last = self._channels_last(x)
        if channels_last:  # one conversion in, one out; every layer keeps the layout in between
            x = x.contiguous(memory_format=torch.channels_last)
        hs = [self.conv_in(x)]
        for level in self.down:
            for j, block in enumerate(level.res):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if level.resample is not None:
                hs.append(level.resample(hs[-1]))
        h = self.mid.res[0](hs[-1], temb)
        h = self.mid.res[1](self.mid.attn[0](h), temb)
        for level in self.up:
            for j, block in enumerate(level.res):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if level.resample is not None:
                h = level.resample(h)
        h = self.head(h)
        if c.scale_by_sigma:
            h = h / labels.to(h.dtype).reshape(-1, *([1] * (h.dim() - 1)))
        return h.contiguous() if channels_last else h


def _preset(nf, ch_mult, num_res_blocks, attn_resolutions, resolution, dropout):
    return dict(nf=nf, ch_mult=ch_mult, num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
                resolution=resolution, dropout=dropout)


PRESETS = {
    "small16": _preset(32, (1, 2, 2), 1, (8,), 16, 0.0),  # trains on a CPU
    "small32": _preset(64, (1, 2, 2), 2, (16,), 32, 0.1),
    "cifar10": _preset(128, (1, 2, 2, 2), 4, (16,), 32, 0.1),  # NCSN++/DDPM++ CIFAR-10 scale
}
_SDE_CONDITIONING = {
    "ve": dict(embedding="fourier", scale_by_sigma=True, centered=False),
    "vp": dict(embedding="positional", scale_by_sigma=False, centered=True),
    "subvp": dict(embedding="positional", scale_by_sigma=False, centered=True),
    # the heat family (fastsde.heat): noise-predicting, labels 999 t, as VP
    **{name: dict(embedding="positional", scale_by_sigma=False, centered=True)
       for name in ("heat", "heat_ve", "blur", "ihdm")},
}


def get_preset(name: str, sde: str = "ve", **overrides) -> UNetConfig:
    """A UNetConfig preset (small16, small32, cifar10) conditioned for sde "ve" (NCSN++) or "vp"/"subvp" (DDPM++)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    if sde not in _SDE_CONDITIONING:
        raise ValueError(f"sde must be one of {sorted(_SDE_CONDITIONING)}, got {sde!r}")
    return UNetConfig(**{**PRESETS[name], **_SDE_CONDITIONING[sde], **overrides})


_FORMAT = "fastsde.unet/1"


def save_checkpoint(model: UNet, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write model's weights as safetensors with its config (JSON) and build in the metadata (+ `metadata`)."""
    from safetensors.torch import save_file

    if not isinstance(model, UNet):
        raise TypeError(f"model must be a fastsde UNet, got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "format": _FORMAT, "config": model.config.to_json(),
            "reference": str(bool(model.reference))}
    save_file(tensors, path, metadata=meta)


def load_checkpoint(path: str, *, reference: bool = False, backend: str = "auto", device="cpu") -> UNet:
    """A UNet (fused, or reference=True) rebuilt from a save_checkpoint file; either build's file loads into both."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a fastsde UNet checkpoint (metadata format {meta.get('format')!r})")
    model = UNet(UNetConfig.from_json(meta["config"]), reference=reference, backend=backend)
    model.load_state_dict(load_file(path, device=str(device)))
    return model.to(device).eval()
