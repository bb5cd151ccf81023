"""score_sde's model zoo in its own layout, on fastsde's fused modules: NCSNpp (models/ncsnpp.py: NCSN++ and DDPM++)
and DDPM (models/ddpm.py) of yang-song/score_sde_pytorch.

Module names, parameter order and state-dict keys are score_sde's (one flat `all_modules` list walked in a fixed
order, a float64 `sigmas` buffer, attention projections NIN_0..NIN_3 with W (in, out)), so a score_sde state dict or
released checkpoint loads with load_state_dict(strict=True) and score_sde's EMA shadow parameters map onto
parameters() in order. Label conventions are score_sde's (fastsde.score's get_score_fn):
  embedding_type="fourier"     labels are sigma (B,); temb = GaussianFourierProjection(log sigma)
  embedding_type="positional"  labels are 999 t or a timestep (B,); temb = sinusoidal(labels); DDPM always
scale_by_sigma divides the output by sigma (fourier: the labels; positional: sigmas[labels], score_sde's buffer).

`NCSNpp(config)` builds every hot block from fastsde.nn (BigGAN/DDPM residual blocks with GroupNorm + time
embedding + SiLU fused, attention as one fastsde.ops.attn_block, FIR resampling as depthwise convolutions, the head's
GroupNorm + SiLU fused) and runs channels-last on the CPU; `accelerate=False` builds the same network from plain
torch layers written as score_sde writes them (upfirdn2d-style FIR, einsum attention), the oracle for the fused
build. Both builds hold the same Parameter layout and keys, so state dicts move freely between them.

Config: a ScoreSDEConfig, a flat mapping of its fields (fastsde.compat.score_sde.configs.CONFIGS), or score_sde's
own nested config (config.model.*, config.data.image_size/num_channels/centered, config.training.continuous/sde).
Files: save_file / load_file (safetensors, the config as JSON metadata; FORMAT).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastsde import ops
from fastsde.nn import GaussianFourierProjection, GroupNormAct, NIN, PlainAttnBlock, timestep_embedding
from fastsde.nn.core import op_backend, variance_scaling_
from fastsde.nn.resample import FIRConv2d, fir_downsample_2d, fir_kernel_2d, fir_upsample_2d
from fastsde.nn.resnet import ResnetBlock, ResnetBlockBigGAN

__all__ = ["ScoreSDEConfig", "NCSNpp", "DDPM", "build_model", "ARCHITECTURES", "FORMAT", "save_file", "load_file",
           "upfirdn2d", "upsample_2d", "downsample_2d"]

FORMAT = "fastsde.score_sde/1"
ACTIVATIONS = {"swish": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU,
               "lrelu": functools.partial(nn.LeakyReLU, negative_slope=0.2)}
_CHOICES = {"name": ("ncsnpp", "ddpm"), "resblock_type": ("biggan", "ddpm"),
            "progressive": ("none", "output_skip", "residual"), "progressive_input": ("none", "input_skip", "residual"),
            "progressive_combine": ("sum", "cat"), "embedding_type": ("fourier", "positional"),
            "nonlinearity": tuple(ACTIVATIONS), "normalization": ("groupnorm",),
            "sde": (None, "vesde", "vpsde", "subvpsde")}
_SDE_NAMES = {"vesde": "ve", "vpsde": "vp", "subvpsde": "subvp"}
_DATA_FIELDS = ("image_size", "num_channels", "centered")
_TRAINING_FIELDS = ("continuous", "sde")


@dataclass(frozen=True)
class ScoreSDEConfig:
    """The fields of a score_sde config that define its network (config.model.*, three of config.data, two of
    config.training). Defaults: the NCSN++ CIFAR-10 values; unused fields (attention_type, conv_size) are kept as
    score_sde keeps them. `sde` (training.sde) is recorded for files, not used by the network."""

    name: str = "ncsnpp"
    nf: int = 128
    ch_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    nonlinearity: str = "swish"
    normalization: str = "GroupNorm"
    fir: bool = False
    fir_kernel: tuple = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    attention_type: str = "ddpm"
    embedding_type: str = "fourier"
    init_scale: float = 0.0
    fourier_scale: float = 16.0
    conv_size: int = 3
    scale_by_sigma: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0
    image_size: int = 32
    num_channels: int = 3
    centered: bool = False
    continuous: bool = True
    sde: str | None = None

    def __post_init__(self):
        from fastsde.models._checks import check_channels, check_config_fields

        check_config_fields(self, "config", positive=("nf", "ch_mult", "num_res_blocks", "attn_resolutions",
                                                      "fourier_scale", "conv_size", "sigma_min", "sigma_max",
                                                      "num_scales", "beta_max", "image_size", "num_channels"),
                            nonnegative=("init_scale", "beta_min"), unit_interval=("dropout",))
        if not self.ch_mult:
            raise ValueError("config ch_mult must list at least one level, got []")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"config sigma_max must be above sigma_min ({self.sigma_min}), got {self.sigma_max}")
        check_channels("config", self.nf, self.ch_mult,
                       groups=(lambda c: 32) if str(self.name).lower() == "ddpm" else None)
        for key in ("ch_mult", "attn_resolutions", "fir_kernel"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        for key, allowed in _CHOICES.items():
            value = getattr(self, key)
            value = value.lower() if isinstance(value, str) else value
            if value not in allowed:
                raise ValueError(f"config {key} must be one of {[a for a in allowed if a is not None]}, got "
                                 f"{getattr(self, key)!r}")
            if key != "normalization":  # score_sde lower-cases these; normalization keeps its spelling
                object.__setattr__(self, key, value)
        levels = len(self.ch_mult)
        if levels < 1 or self.image_size % 2 ** (levels - 1):
            raise ValueError(f"config image_size ({self.image_size}) must be divisible by 2^{levels - 1} (one halving "
                             f"per level of ch_mult={self.ch_mult})")
        if self.name == "ncsnpp" and self.embedding_type == "fourier" and not self.continuous:
            raise ValueError("config embedding_type 'fourier' needs continuous=True (score_sde: Fourier features are "
                             "only used for continuous training)")
        if self.name == "ddpm" and not self.conditional:
            raise ValueError("config conditional must be True for name 'ddpm' (score_sde's DDPM is not built "
                             "without it)")

    # The names fastsde's UNetConfig uses, so code reading either config (the image commands) works on both.
    @property
    def resolution(self) -> int:
        return self.image_size

    @property
    def in_channels(self) -> int:
        return self.num_channels

    @property
    def sde_name(self) -> str | None:
        """fastsde.sde's name of training.sde ("ve", "vp", "subvp"), None when not recorded."""
        return _SDE_NAMES.get(self.sde)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ScoreSDEConfig":
        return cls.from_any(json.loads(text))

    @classmethod
    def from_any(cls, config) -> "ScoreSDEConfig":
        """A ScoreSDEConfig from itself, a flat mapping of its fields, or score_sde's nested config."""
        if isinstance(config, cls):
            return config
        names = {f.name for f in dataclasses.fields(cls)}
        if isinstance(config, Mapping):
            unknown = sorted(set(config) - names)
            if unknown:
                raise ValueError(f"config has fields {unknown} that a score_sde network does not have; known: "
                                 f"{sorted(names)}")
            return cls(**config)
        if not all(hasattr(config, part) for part in ("model", "data")):
            raise TypeError(f"config must be a ScoreSDEConfig, a mapping of its fields or score_sde's config (with "
                            f".model and .data), got {type(config).__name__}")
        fields = {}
        for part, keys in (("data", _DATA_FIELDS), ("training", _TRAINING_FIELDS),
                           ("model", names - set(_DATA_FIELDS) - set(_TRAINING_FIELDS))):
            section = getattr(config, part, None)
            for key in keys:
                value = getattr(section, key, dataclasses.MISSING) if section is not None else dataclasses.MISSING
                if value is not dataclasses.MISSING:
                    fields[key] = value
        return cls(**fields)


def get_sigmas(config: ScoreSDEConfig) -> np.ndarray:
    """score_sde's models.utils.get_sigmas: num_scales noise levels geometric from sigma_max to sigma_min (float64)."""
    return np.exp(np.linspace(np.log(config.sigma_max), np.log(config.sigma_min), config.num_scales))


# ------------------------------------------------------------------------------------- FIR resampling, plain form
def upfirdn2d(x: torch.Tensor, k: torch.Tensor, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """score_sde's upfirdn2d on x (B, C, H, W) with a 2-D filter k (K, K), written as its definition: insert up - 1
    zeros after every sample, pad by pad[0] before and pad[1] after (negative crops) in both dimensions, convolve
    with k (correlate with flip(k)), keep every down-th sample."""
    B, C, H, W = x.shape
    if up > 1:
        y = x.new_zeros(B, C, H * up, W * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    K = k.shape[-1]
    y = F.conv2d(x.reshape(B * C, 1, *x.shape[2:]), k.flip(0, 1).reshape(1, 1, K, K).to(x.dtype))
    y = y[:, :, ::down, ::down]
    return y.reshape(B, C, *y.shape[2:])


def _fir(k, gain: float, device) -> torch.Tensor:
    return fir_kernel_2d(k, gain, channels=1, device=device)[0, 0]


def upsample_2d(x: torch.Tensor, k=(1, 3, 3, 1), factor: int = 2) -> torch.Tensor:
    """score_sde's up_or_down_sampling.upsample_2d: (B, C, H, W) -> (B, C, fH, fW), FIR filter with gain f^2."""
    p = len(k) - factor
    return upfirdn2d(x, _fir(k, factor**2, x.device), up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k=(1, 3, 3, 1), factor: int = 2) -> torch.Tensor:
    """score_sde's up_or_down_sampling.downsample_2d: (B, C, H, W) -> (B, C, H/f, W/f)."""
    p = len(k) - factor
    return upfirdn2d(x, _fir(k, 1.0, x.device), down=factor, pad=((p + 1) // 2, p // 2))


def _upsample_conv_2d(x, w, k, factor=2):
    """upsample_conv_2d: transposed convolution with the flipped weight (stride f), then the FIR filter."""
    p = (len(k) - factor) - (w.shape[-1] - 1)
    x = F.conv_transpose2d(x, w.flip(2, 3).transpose(0, 1), stride=factor)
    return upfirdn2d(x, _fir(k, factor**2, x.device), pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def _conv_downsample_2d(x, w, k, factor=2):
    """conv_downsample_2d: the FIR filter padded for the convolution, then the convolution with stride f."""
    p = (len(k) - factor) + (w.shape[-1] - 1)
    return F.conv2d(upfirdn2d(x, _fir(k, 1.0, x.device), pad=((p + 1) // 2, p // 2)), w, stride=factor)


# ------------------------------------------------------------------------------------------ plain layers
def _init(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """score_sde's default_init (variance scaling, fan_avg, uniform) on module.weight; bias zero."""
    variance_scaling_(module.weight, scale)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def _conv(in_ch, out_ch, kernel=3, stride=1, padding=None, init_scale=1.0) -> nn.Conv2d:
    """layers.ddpm_conv3x3 / ddpm_conv1x1."""
    padding = kernel // 2 if padding is None else padding
    return _init(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding), init_scale)


def _dense(in_dim, out_dim) -> nn.Linear:
    return _init(nn.Linear(in_dim, out_dim))


def _groups(channels: int) -> int:
    """NCSN++'s GroupNorm groups, min(C // 4, 32); DDPM's are always 32."""
    return min(channels // 4, 32)


class GroupNormThenAct(nn.Module):
    """GroupNorm followed by the model's activation (score_sde writes `act(GroupNorm(h))` in forward), with
    nn.GroupNorm's attributes and keys (weight, bias). The fused build replaces it with GroupNormAct(act="silu").
    Not an nn.GroupNorm subclass on purpose: fastsde.accelerate() swaps plain GroupNorms for act-less fused ones."""

    def __init__(self, num_groups, num_channels, act: nn.Module):
        super().__init__()
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, 1e-6, True
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.act = act

    def forward(self, x):
        return self.act(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class Conv2d(nn.Module):
    """up_or_down_sampling.Conv2d: a kernel x kernel convolution (weight (out, in, k, k), bias (out,)) fused with
    FIR upsampling (up) or downsampling (down). The fused build replaces it with fastsde.nn's FIRConv2d."""

    def __init__(self, in_ch, out_ch, kernel, up=False, down=False, resample_kernel=(1, 3, 3, 1), use_bias=True):
        super().__init__()
        if up and down or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"Conv2d needs an odd kernel and at most one of up/down, got kernel={kernel}, up={up}, "
                             f"down={down}")
        self.weight = nn.Parameter(variance_scaling_(torch.empty(out_ch, in_ch, kernel, kernel)))
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.down, self.resample_kernel, self.kernel, self.use_bias = up, down, tuple(resample_kernel), \
            kernel, use_bias

    def forward(self, x):
        if self.up:
            x = _upsample_conv_2d(x, self.weight, self.resample_kernel)
        elif self.down:
            x = _conv_downsample_2d(x, self.weight, self.resample_kernel)
        else:
            x = F.conv2d(x, self.weight, padding=self.kernel // 2)
        return x + self.bias.reshape(1, -1, 1, 1) if self.use_bias else x


class _Resample(nn.Module):
    """layerspp.Upsample / Downsample (and, with fir=False, layers.Upsample / Downsample of DDPM: the same layers).
    Keys: Conv_0 (3x3; fir=False, with_conv) or Conv2d_0 (FIR Conv2d; fir=True, with_conv)."""

    up = False

    def __init__(self, in_ch, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv and fir:
            self.Conv2d_0 = Conv2d(in_ch, out_ch, 3, up=self.up, down=not self.up, resample_kernel=fir_kernel)
        elif with_conv:  # Downsample: 'SAME' padding emulated by a right/bottom pad, then a stride-2 3x3 convolution
            self.Conv_0 = _conv(in_ch, out_ch) if self.up else _conv(in_ch, out_ch, stride=2, padding=0)
        self.with_conv, self.fir, self.fir_kernel, self.out_ch = with_conv, fir, tuple(fir_kernel), out_ch
        self.fused = False

    def fuse(self) -> "_Resample":
        """Switch to the depthwise-convolution FIR forms (fastsde.nn.resample), sharing the parameters."""
        if hasattr(self, "Conv2d_0"):
            self.Conv2d_0 = FIRConv2d.from_module(self.Conv2d_0)
        self.fused = True
        return self


class Upsample(_Resample):
    """(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)."""

    up = True

    def forward(self, x):
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            return fir_upsample_2d(x, self.fir_kernel) if self.fused else upsample_2d(x, self.fir_kernel)
        h = F.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2), mode="nearest")
        return self.Conv_0(h) if self.with_conv else h


class Downsample(_Resample):
    """(B, in_ch, H, W) -> (B, out_ch, H/2, W/2)."""

    def forward(self, x):
        if self.fir:
            if self.with_conv:
                return self.Conv2d_0(x)
            return fir_downsample_2d(x, self.fir_kernel) if self.fused else downsample_2d(x, self.fir_kernel)
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


class Combine(nn.Module):
    """layerspp.Combine: a 1x1 convolution of the input pyramid, concatenated to or added to h."""

    def __init__(self, dim1, dim2, method="cat"):
        super().__init__()
        self.Conv_0 = _conv(dim1, dim2, kernel=1)
        self.method = method

    def forward(self, x, y):
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class ResnetBlockDDPMpp(nn.Module):
    """layerspp.ResnetBlockDDPMpp (plain): act(GN) -> conv3x3 (+ Dense(act(temb))) -> act(GN) -> dropout -> conv3x3,
    NIN_0 shortcut when the channels change, (x + h) / sqrt(2) with skip_rescale. Fused: fastsde.nn.ResnetBlock."""

    num_groups = staticmethod(_groups)

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, dropout=0.1, skip_rescale=False, init_scale=0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = nn.GroupNorm(self.num_groups(in_ch), in_ch, eps=1e-6)
        self.Conv_0 = _conv(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = _dense(temb_dim, out_ch)
        self.GroupNorm_1 = nn.GroupNorm(self.num_groups(out_ch), out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            self.NIN_0 = NIN(in_ch, out_ch)
        self.act, self.skip_rescale, self.in_ch, self.out_ch = act, skip_rescale, in_ch, out_ch

    def forward(self, x, temb=None):
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch:
            x = self.NIN_0(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockDDPM(ResnetBlockDDPMpp):
    """layers.ResnetBlockDDPM (models/ddpm.py): ResnetBlockDDPMpp with 32 groups and a plain residual sum."""

    num_groups = staticmethod(lambda channels: 32)

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, dropout=0.1):
        super().__init__(act, in_ch, out_ch, temb_dim, dropout, skip_rescale=False, init_scale=0.0)


class ResnetBlockBigGANpp(nn.Module):
    """layerspp.ResnetBlockBigGANpp (plain): act(GN_0), then FIR or nearest/mean up/downsampling of h and x,
    conv3x3 (+ Dense(act(temb))), act(GN_1), dropout, conv3x3; Conv_2 (1x1) on x when the shape changes.
    Fused: fastsde.nn.resnet.ResnetBlockBigGAN."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1, fir=False,
                 fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = nn.GroupNorm(_groups(in_ch), in_ch, eps=1e-6)
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)
        self.Conv_0 = _conv(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = _dense(temb_dim, out_ch)
        self.GroupNorm_1 = nn.GroupNorm(_groups(out_ch), out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = _conv(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = _conv(in_ch, out_ch, kernel=1)
        self.act, self.skip_rescale, self.in_ch, self.out_ch = act, skip_rescale, in_ch, out_ch

    def _resample(self, v):
        B, C, H, W = v.shape
        if self.up:
            if self.fir:
                return upsample_2d(v, self.fir_kernel)
            return v.reshape(B, C, H, 1, W, 1).expand(B, C, H, 2, W, 2).reshape(B, C, 2 * H, 2 * W)
        if self.down:
            if self.fir:
                return downsample_2d(v, self.fir_kernel)
            return v.reshape(B, C, H // 2, 2, W // 2, 2).mean(dim=(3, 5))
        return v

    def forward(self, x, temb=None):
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlockNIN(nn.Module):
    """score_sde's AttnBlockpp / AttnBlock fused, keeping their parameters: GroupNorm_0 (a GroupNormAct) and
    NIN_0..NIN_3 (W (C, C), b (C,)),
    run as one fastsde.ops.attn_block. The fused (3C, C) QKV weight is assembled from the NIN weights at every call
    (3C^2 copies, nothing cached: any change to a parameter is seen). Built from a PlainAttnBlock, sharing its
    parameters; skip_rescale False is DDPM's AttnBlock (a plain residual sum)."""

    def __init__(self, plain: PlainAttnBlock, *, backend: str = "auto"):
        super().__init__()
        self.GroupNorm_0 = GroupNormAct.from_groupnorm(plain.GroupNorm_0, None, backend=backend)
        for i in range(4):
            setattr(self, f"NIN_{i}", getattr(plain, f"NIN_{i}"))
        self.skip_rescale, self.backend = bool(plain.skip_rescale), backend

    def forward(self, x):
        gn, nins = self.GroupNorm_0, (self.NIN_0, self.NIN_1, self.NIN_2)
        qkv_w = torch.cat([n.W.t() for n in nins], dim=0)
        qkv_b = torch.cat([n.b for n in nins], dim=0)
        params = (gn.weight, gn.bias, qkv_w, qkv_b, self.NIN_3.W.t().contiguous(), self.NIN_3.b)
        return ops.attn_block(x, *params, num_groups=gn.num_groups, num_heads=1, skip_rescale=self.skip_rescale,
                              eps=gn.eps, backend=op_backend(self.backend, x, *params))


def _fuse(m: nn.Module, backend: str) -> nn.Module:
    """The fused form of one plain layer of the list (sharing its parameters), or the layer itself."""
    if isinstance(m, ResnetBlockBigGANpp):
        return ResnetBlockBigGAN.from_module(m, backend=backend)
    if isinstance(m, ResnetBlockDDPMpp):
        return ResnetBlock.from_plain(m, backend=backend)
    if isinstance(m, PlainAttnBlock):
        return AttnBlockNIN(m, backend=backend)
    if isinstance(m, GroupNormThenAct):
        return GroupNormAct.from_groupnorm(m, "silu", backend=backend)
    if isinstance(m, _Resample):
        return m.fuse()
    return m


# ------------------------------------------------------------------------------------------------- the networks
class _ScoreSDENet(nn.Module):
    """What NCSNpp and DDPM share: the config, the sigmas buffer, the build (plain, then fused) and the layout."""

    def __init__(self, config, accelerate: bool, backend: str):
        super().__init__()
        self.config = c = ScoreSDEConfig.from_any(config)
        if accelerate and c.nonlinearity != "swish":
            raise ValueError(f"accelerate=True needs config nonlinearity 'swish' (SiLU is what the fused blocks "
                             f"implement), got {c.nonlinearity!r}; build with accelerate=False")
        self.accelerate, self.backend = bool(accelerate), backend
        self.act = ACTIVATIONS[c.nonlinearity]()
        self.register_buffer("sigmas", torch.tensor(get_sigmas(c)))
        self.nf, self.num_res_blocks, self.attn_resolutions = c.nf, c.num_res_blocks, c.attn_resolutions
        self.num_resolutions = len(c.ch_mult)
        self.all_resolutions = [c.image_size // 2**i for i in range(self.num_resolutions)]

    def _finish(self, modules: list) -> None:
        if self.accelerate:
            modules = [_fuse(m, self.backend) for m in modules]
            for name, m in list(self.named_children()):  # e.g. NCSN++'s parameter-free pyramid resamplers
                setattr(self, name, _fuse(m, self.backend))
        self.all_modules = nn.ModuleList(modules)

    def _enter(self, x):
        """Inputs in the build's layout: channels-last on the CPU for the fused build (oneDNN convolutions are
        faster in NHWC and every fused op keeps it), as given otherwise."""
        if self.accelerate and x.device.type == "cpu" and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _leave(self, h):
        return h.contiguous() if self.accelerate else h

    def extra_repr(self):
        return f"accelerate={self.accelerate}, backend={self.backend!r}"


class NCSNpp(_ScoreSDENet):
    """score_sde's NCSNpp (models/ncsnpp.py): NCSN++ (fourier, FIR, progressive input) and DDPM++ (positional) by
    config. forward(x (B, num_channels, image_size, image_size), time_cond (B,)) -> same shape as x."""

    def __init__(self, config, *, accelerate: bool = True, backend: str = "auto"):
        super().__init__(config, accelerate, backend)
        c, act, nf = self.config, self.act, self.nf
        if c.name != "ncsnpp":
            raise ValueError(f"NCSNpp needs config name 'ncsnpp', got {c.name!r} (use DDPM or build_model)")
        modules: list = []
        if c.embedding_type == "fourier":
            modules.append(GaussianFourierProjection(nf, c.fourier_scale))
        embed_dim = 2 * nf if c.embedding_type == "fourier" else nf
        if c.conditional:
            modules += [_dense(embed_dim, 4 * nf), _dense(4 * nf, 4 * nf)]
        attn = functools.partial(PlainAttnBlock, skip_rescale=c.skip_rescale, init_scale=c.init_scale, eps=1e-6)
        up = functools.partial(Upsample, with_conv=c.resamp_with_conv, fir=c.fir, fir_kernel=c.fir_kernel)
        down = functools.partial(Downsample, with_conv=c.resamp_with_conv, fir=c.fir, fir_kernel=c.fir_kernel)
        if c.progressive == "output_skip":
            self.pyramid_upsample = Upsample(None, fir=c.fir, fir_kernel=c.fir_kernel, with_conv=False)
        if c.progressive_input == "input_skip":
            self.pyramid_downsample = Downsample(None, fir=c.fir, fir_kernel=c.fir_kernel, with_conv=False)
        if c.resblock_type == "ddpm":
            res = functools.partial(ResnetBlockDDPMpp, act, dropout=c.dropout, init_scale=c.init_scale,
                                    skip_rescale=c.skip_rescale, temb_dim=4 * nf)
        else:
            res = functools.partial(ResnetBlockBigGANpp, act, dropout=c.dropout, fir=c.fir, fir_kernel=c.fir_kernel,
                                    init_scale=c.init_scale, skip_rescale=c.skip_rescale, temb_dim=4 * nf)
        channels = c.num_channels
        pyramid_in_ch = channels
        modules.append(_conv(channels, nf))
        hs_c, in_ch = [nf], nf
        for i in range(self.num_resolutions):  # downsampling path
            for _ in range(c.num_res_blocks):
                out_ch = nf * c.ch_mult[i]
                modules.append(res(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if self.all_resolutions[i] in c.attn_resolutions:
                    modules.append(attn(in_ch))
                hs_c.append(in_ch)
            if i != self.num_resolutions - 1:
                modules.append(down(in_ch) if c.resblock_type == "ddpm" else res(in_ch=in_ch, down=True))
                if c.progressive_input == "input_skip":
                    modules.append(Combine(pyramid_in_ch, in_ch, method=c.progressive_combine))
                    in_ch *= 2 if c.progressive_combine == "cat" else 1
                elif c.progressive_input == "residual":
                    modules.append(Downsample(pyramid_in_ch, in_ch, with_conv=True, fir=c.fir,
                                              fir_kernel=c.fir_kernel))
                    pyramid_in_ch = in_ch
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        modules += [res(in_ch=in_ch), attn(in_ch), res(in_ch=in_ch)]  # middle
        pyramid_ch = 0
        for i in reversed(range(self.num_resolutions)):  # upsampling path
            for _ in range(c.num_res_blocks + 1):
                out_ch = nf * c.ch_mult[i]
                modules.append(res(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if self.all_resolutions[i] in c.attn_resolutions:
                modules.append(attn(in_ch))
            if c.progressive != "none":
                if c.progressive == "output_skip":
                    scale = c.init_scale
                    modules += [GroupNormThenAct(_groups(in_ch), in_ch, act), _conv(in_ch, channels, init_scale=scale)]
                    pyramid_ch = channels
                elif i == self.num_resolutions - 1:
                    modules += [GroupNormThenAct(_groups(in_ch), in_ch, act), _conv(in_ch, in_ch)]
                    pyramid_ch = in_ch
                else:
                    modules.append(Upsample(pyramid_ch, in_ch, with_conv=True, fir=c.fir, fir_kernel=c.fir_kernel))
                    pyramid_ch = in_ch
            if i != 0:
                modules.append(up(in_ch) if c.resblock_type == "ddpm" else res(in_ch=in_ch, up=True))
        if c.progressive != "output_skip":
            modules += [GroupNormThenAct(_groups(in_ch), in_ch, act), _conv(in_ch, channels, init_scale=c.init_scale)]
        self._finish(modules)

    def forward(self, x, time_cond):
        c, mods = self.config, iter(self.all_modules)
        if c.embedding_type == "fourier":
            used_sigmas = time_cond
            temb = next(mods)(torch.log(used_sigmas))
        else:
            used_sigmas = self.sigmas[time_cond.long()]
            temb = timestep_embedding(time_cond, self.nf)
        if c.conditional:
            temb = next(mods)(temb)
            temb = next(mods)(self.act(temb))
        else:
            temb = None
        x_in = x
        if not c.centered:
            x = 2 * x - 1.0
        x = self._enter(x)
        ddpm_blocks = c.resblock_type == "ddpm"
        pyramid_in = x if c.progressive_input != "none" else None
        hs = [next(mods)(x)]
        for i in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if i != self.num_resolutions - 1:
                h = next(mods)(hs[-1]) if ddpm_blocks else next(mods)(hs[-1], temb)
                if c.progressive_input == "input_skip":
                    pyramid_in = self.pyramid_downsample(pyramid_in)
                    h = next(mods)(pyramid_in, h)
                elif c.progressive_input == "residual":
                    pyramid_in = next(mods)(pyramid_in)
                    pyramid_in = (pyramid_in + h) / math.sqrt(2.0) if c.skip_rescale else pyramid_in + h
                    h = pyramid_in
                hs.append(h)
        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        pyramid = None
        for i in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if c.progressive != "none":
                if i == self.num_resolutions - 1:  # the first output pyramid level: GroupNorm, act, conv
                    pyramid = next(mods)(h)
                    pyramid = next(mods)(pyramid)
                elif c.progressive == "output_skip":
                    pyramid_h = next(mods)(h)
                    pyramid = self.pyramid_upsample(pyramid) + next(mods)(pyramid_h)
                else:
                    pyramid = next(mods)(pyramid)
                    pyramid = (pyramid + h) / math.sqrt(2.0) if c.skip_rescale else pyramid + h
                    h = pyramid
            if i != 0:
                h = next(mods)(h) if ddpm_blocks else next(mods)(h, temb)
        if c.progressive == "output_skip":
            h = pyramid
        else:
            h = next(mods)(h)  # GroupNorm + act
            h = next(mods)(h)
        if next(mods, None) is not None:
            raise RuntimeError("NCSNpp.forward did not use every module: the build and the walk disagree")
        if c.scale_by_sigma:
            h = h / used_sigmas.reshape(x_in.shape[0], *([1] * (x_in.dim() - 1)))
        return self._leave(h)


class DDPM(_ScoreSDENet):
    """score_sde's DDPM (models/ddpm.py; Ho et al. 2020). forward(x (B, C, H, W), labels (B,) timesteps) -> x-like."""

    def __init__(self, config, *, accelerate: bool = True, backend: str = "auto"):
        super().__init__(config, accelerate, backend)
        c, act, nf = self.config, self.act, self.nf
        if c.name != "ddpm":
            raise ValueError(f"DDPM needs config name 'ddpm', got {c.name!r} (use NCSNpp or build_model)")
        res = functools.partial(ResnetBlockDDPM, act, temb_dim=4 * nf, dropout=c.dropout)
        attn = functools.partial(PlainAttnBlock, skip_rescale=False, init_scale=0.0, num_groups=32, eps=1e-6)
        channels = c.num_channels
        modules: list = [_dense(nf, 4 * nf), _dense(4 * nf, 4 * nf), _conv(channels, nf)]
        hs_c, in_ch = [nf], nf
        for i in range(self.num_resolutions):
            for _ in range(c.num_res_blocks):
                modules.append(res(in_ch, nf * c.ch_mult[i]))
                in_ch = nf * c.ch_mult[i]
                if self.all_resolutions[i] in c.attn_resolutions:
                    modules.append(attn(in_ch))
                hs_c.append(in_ch)
            if i != self.num_resolutions - 1:
                modules.append(Downsample(in_ch, with_conv=c.resamp_with_conv))
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        modules += [res(in_ch), attn(in_ch), res(in_ch)]
        for i in reversed(range(self.num_resolutions)):
            for _ in range(c.num_res_blocks + 1):
                modules.append(res(in_ch + hs_c.pop(), nf * c.ch_mult[i]))
                in_ch = nf * c.ch_mult[i]
            if self.all_resolutions[i] in c.attn_resolutions:
                modules.append(attn(in_ch))
            if i != 0:
                modules.append(Upsample(in_ch, with_conv=c.resamp_with_conv))
        modules += [GroupNormThenAct(32, in_ch, act), _conv(in_ch, channels, init_scale=0.0)]
        self._finish(modules)

    def forward(self, x, labels):
        c, mods = self.config, iter(self.all_modules)
        temb = next(mods)(timestep_embedding(labels, self.nf))
        temb = next(mods)(self.act(temb))
        h = self._enter(x if c.centered else 2 * x - 1.0)
        hs = [next(mods)(h)]
        for i in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = next(mods)(hs[-1], temb)
                if h.shape[-1] in self.attn_resolutions:
                    h = next(mods)(h)
                hs.append(h)
            if i != self.num_resolutions - 1:
                hs.append(next(mods)(hs[-1]))
        h = next(mods)(hs[-1], temb)
        h = next(mods)(h)
        h = next(mods)(h, temb)
        for i in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = next(mods)(torch.cat([h, hs.pop()], dim=1), temb)
            if h.shape[-1] in self.attn_resolutions:
                h = next(mods)(h)
            if i != 0:
                h = next(mods)(h)
        h = next(mods)(h)  # GroupNorm + act
        h = next(mods)(h)
        if next(mods, None) is not None:
            raise RuntimeError("DDPM.forward did not use every module: the build and the walk disagree")
        if c.scale_by_sigma:
            h = h / self.sigmas[labels, None, None, None]
        return self._leave(h)


ARCHITECTURES = {"ncsnpp": NCSNpp, "ddpm": DDPM}


def build_model(config, *, accelerate: bool = True, backend: str = "auto") -> _ScoreSDENet:
    """NCSNpp or DDPM by the config's name (score_sde's model.name)."""
    config = ScoreSDEConfig.from_any(config)
    return ARCHITECTURES[config.name](config, accelerate=accelerate, backend=backend)


def save_file(model: _ScoreSDENet, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write model's state dict (score_sde's keys) as safetensors with FORMAT, the architecture and the config
    (JSON) in the metadata (+ `metadata`)."""
    from safetensors.torch import save_file as write

    if not isinstance(model, _ScoreSDENet):
        raise TypeError(f"model must be a fastsde.models.score_sde_nets NCSNpp or DDPM, got {type(model).__name__}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write(tensors, path, metadata={**(metadata or {}), "format": FORMAT, "architecture": model.config.name,
                                   "config": model.config.to_json()})


def load_file(path: str, *, accelerate: bool = True, backend: str = "auto", device="cpu") -> _ScoreSDENet:
    """The network of a save_file file, rebuilt from its config and loaded strictly, in eval mode on `device`."""
    from safetensors import safe_open
    from safetensors.torch import load_file as read

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a score_sde network file (metadata format {meta.get('format')!r}, expected "
                         f"{FORMAT!r})")
    config = ScoreSDEConfig.from_json(meta["config"])
    if meta.get("architecture", config.name) != config.name:
        raise ValueError(f"{path}: architecture {meta['architecture']!r} disagrees with its config name "
                         f"{config.name!r}")
    model = build_model(config, accelerate=accelerate, backend=backend)
    model.load_state_dict(read(str(path), device=str(device)))
    return model.to(device).eval()
