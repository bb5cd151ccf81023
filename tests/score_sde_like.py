"""An independent stand-in for score_sde's model zoo and SDE objects, for tests that CI runs without the original.

Written for these tests (not copied): module class names, constructor arguments, attribute names, state-dict keys and
forward math follow yang-song/score_sde_pytorch (models/layers.py, layerspp.py, up_or_down_sampling.py, ncsnpp.py,
ddpm.py, sde_lib.py, sampling.py), checked by reading those files side by side; test_compat_score_sde.py asserts the
key lists of the official CIFAR-10 configs. Initialisation is torch's default (tests randomise weights anyway).
Nothing here imports fastsde.
"""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------- up_or_down_sampling (CPU path: upfirdn2d_native)
def upfirdn2d(x, k, up=1, down=1, pad=(0, 0)):
    """Zero-insertion upsampling by `up`, zero padding pad, correlation with flip(k), subsampling by `down`."""
    B, C, H, W = x.shape
    kh, kw = k.shape
    y = x.reshape(B * C, 1, H, 1, W, 1)
    y = F.pad(y, [0, up - 1, 0, 0, 0, up - 1]).reshape(B * C, 1, H * up, W * up)
    y = F.pad(y, [pad[0], pad[1], pad[0], pad[1]])
    y = F.conv2d(y, torch.flip(k, [0, 1]).view(1, 1, kh, kw).to(x.dtype))  # the cast lets float64 truth runs work
    y = y[:, :, ::down, ::down]
    return y.reshape(B, C, y.shape[-2], y.shape[-1])


def _setup_kernel(k):
    k = np.asarray(k, dtype=np.float32)
    k = np.outer(k, k) if k.ndim == 1 else k
    return k / np.sum(k)


def naive_upsample_2d(x, factor=2):
    B, C, H, W = x.shape
    return x.reshape(B, C, H, 1, W, 1).repeat(1, 1, 1, factor, 1, factor).reshape(B, C, H * factor, W * factor)


def naive_downsample_2d(x, factor=2):
    B, C, H, W = x.shape
    return x.reshape(B, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))


def upsample_2d(x, k=(1, 3, 3, 1), factor=2):
    k = _setup_kernel(k) * factor**2
    p = k.shape[0] - factor
    return upfirdn2d(x, torch.tensor(k, device=x.device), up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x, k=(1, 3, 3, 1), factor=2):
    k = _setup_kernel(k)
    p = k.shape[0] - factor
    return upfirdn2d(x, torch.tensor(k, device=x.device), down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x, w, k=(1, 3, 3, 1), factor=2):
    convH, inC = w.shape[2], w.shape[1]
    k = _setup_kernel(k) * factor**2
    p = (k.shape[0] - factor) - (convH - 1)
    groups = x.shape[1] // inC
    w = w.reshape(groups, -1, inC, convH, convH).flip(3, 4).permute(0, 2, 1, 3, 4).reshape(groups * inC, -1, convH,
                                                                                          convH)
    x = F.conv_transpose2d(x, w, stride=factor, padding=0)
    return upfirdn2d(x, torch.tensor(k, device=x.device), pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x, w, k=(1, 3, 3, 1), factor=2):
    convW = w.shape[3]
    k = _setup_kernel(k)
    p = (k.shape[0] - factor) + (convW - 1)
    x = upfirdn2d(x, torch.tensor(k, device=x.device), pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor, padding=0)


class Conv2d(nn.Module):
    """up_or_down_sampling.Conv2d: weight (out, in, k, k), bias (out,); FIR up/down fused with the convolution."""

    def __init__(self, in_ch, out_ch, kernel, up=False, down=False, resample_kernel=(1, 3, 3, 1), use_bias=True,
                 kernel_init=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel) / math.sqrt(in_ch * kernel**2))
        if use_bias:
            self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.down, self.resample_kernel, self.kernel, self.use_bias = up, down, resample_kernel, kernel, \
            use_bias

    def forward(self, x):
        if self.up:
            x = upsample_conv_2d(x, self.weight, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, self.weight, k=self.resample_kernel)
        else:
            x = F.conv2d(x, self.weight, padding=self.kernel // 2)
        return x + self.bias.reshape(1, -1, 1, 1) if self.use_bias else x


# ---------------------------------------------------------------------------------------------------- layers.py
def conv3x3(in_planes, out_planes, stride=1, bias=True, init_scale=1.0, padding=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=padding, bias=bias)


def conv1x1(in_planes, out_planes, stride=1, bias=True, init_scale=1.0, padding=0):
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=padding, bias=bias)


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      * -(math.log(max_positions) / (half - 1)))
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if embedding_dim % 2 else emb


class NIN(nn.Module):
    def __init__(self, in_dim, num_units, init_scale=0.1):
        super().__init__()
        self.W = nn.Parameter(torch.randn(in_dim, num_units) / math.sqrt(in_dim))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x):
        return torch.tensordot(x.permute(0, 2, 3, 1), self.W, dims=1).add(self.b).permute(0, 3, 1, 2)


def _attention(block, x):
    B, C, H, W = x.shape
    h = block.GroupNorm_0(x)
    q, k, v = block.NIN_0(h), block.NIN_1(h), block.NIN_2(h)
    w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(C) ** (-0.5))
    w = F.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
    return block.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))


class AttnBlock(nn.Module):
    """layers.AttnBlock (DDPM): 32 groups, no skip rescale."""

    def __init__(self, channels):
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(32, channels, eps=1e-6)
        self.NIN_0, self.NIN_1, self.NIN_2 = NIN(channels, channels), NIN(channels, channels), NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=0.0)

    def forward(self, x):
        return x + _attention(self, x)


class Upsample(nn.Module):
    """layers.Upsample (DDPM)."""

    def __init__(self, channels, with_conv=False):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv3x3(channels, channels)
        self.with_conv = with_conv

    def forward(self, x):
        h = F.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2), mode="nearest")
        return self.Conv_0(h) if self.with_conv else h


class Downsample(nn.Module):
    """layers.Downsample (DDPM): 'SAME' padding emulated by a right/bottom pad before a stride-2 conv."""

    def __init__(self, channels, with_conv=False):
        super().__init__()
        if with_conv:
            self.Conv_0 = conv3x3(channels, channels, stride=2, padding=0)
        self.with_conv = with_conv

    def forward(self, x):
        if self.with_conv:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, stride=2)


class ResnetBlockDDPM(nn.Module):
    """layers.ResnetBlockDDPM: 32 groups, plain residual sum."""

    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = nn.GroupNorm(32, in_ch, eps=1e-6)
        self.act = act
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = nn.GroupNorm(32, out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=0.0)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.out_ch, self.in_ch, self.conv_shortcut = out_ch, in_ch, conv_shortcut

    def forward(self, x, temb=None):
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h += self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return x + h


# -------------------------------------------------------------------------------------------------- layerspp.py
class GaussianFourierProjection(nn.Module):
    def __init__(self, embedding_size=256, scale=1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x):
        proj = x[:, None] * self.W[None, :] * 2 * np.pi
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class Combine(nn.Module):
    def __init__(self, dim1, dim2, method="cat"):
        super().__init__()
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x, y):
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class AttnBlockpp(nn.Module):
    def __init__(self, channels, skip_rescale=False, init_scale=0.0):
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)
        self.NIN_0, self.NIN_1, self.NIN_2 = NIN(channels, channels), NIN(channels, channels), NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x):
        h = _attention(self, x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class UpsamplePP(nn.Module):
    """layerspp.Upsample."""

    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = Conv2d(in_ch, out_ch, 3, up=True, resample_kernel=fir_kernel)
            else:
                self.Conv_0 = conv3x3(in_ch, out_ch)
        self.fir, self.with_conv, self.fir_kernel, self.out_ch = fir, with_conv, fir_kernel, out_ch

    def forward(self, x):
        if not self.fir:
            h = F.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2), mode="nearest")
            return self.Conv_0(h) if self.with_conv else h
        return self.Conv2d_0(x) if self.with_conv else upsample_2d(x, self.fir_kernel)


class DownsamplePP(nn.Module):
    """layerspp.Downsample."""

    def __init__(self, in_ch=None, out_ch=None, with_conv=False, fir=False, fir_kernel=(1, 3, 3, 1)):
        super().__init__()
        out_ch = out_ch or in_ch
        if with_conv:
            if fir:
                self.Conv2d_0 = Conv2d(in_ch, out_ch, 3, down=True, resample_kernel=fir_kernel)
            else:
                self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        self.fir, self.with_conv, self.fir_kernel, self.out_ch = fir, with_conv, fir_kernel, out_ch

    def forward(self, x):
        if not self.fir:
            return self.Conv_0(F.pad(x, (0, 1, 0, 1))) if self.with_conv else F.avg_pool2d(x, 2, stride=2)
        return self.Conv2d_0(x) if self.with_conv else downsample_2d(x, self.fir_kernel)


# score_sde names the classes of both files Upsample / Downsample; accelerate() and the reports see those names.
UpsamplePP.__name__, UpsamplePP.__qualname__ = "Upsample", "Upsample"
DownsamplePP.__name__, DownsamplePP.__qualname__ = "Downsample", "Downsample"


class ResnetBlockDDPMpp(nn.Module):
    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1, skip_rescale=False,
                 init_scale=0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = nn.GroupNorm(min(out_ch // 4, 32), out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.skip_rescale, self.act, self.out_ch, self.conv_shortcut = skip_rescale, act, out_ch, conv_shortcut

    def forward(self, x, temb=None):
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h += self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    def __init__(self, act, in_ch, out_ch=None, temb_dim=None, up=False, down=False, dropout=0.1, fir=False,
                 fir_kernel=(1, 3, 3, 1), skip_rescale=True, init_scale=0.0):
        super().__init__()
        out_ch = out_ch or in_ch
        self.GroupNorm_0 = nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6)
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, fir_kernel
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = nn.Linear(temb_dim, out_ch)
        self.GroupNorm_1 = nn.GroupNorm(min(out_ch // 4, 32), out_ch, eps=1e-6)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.skip_rescale, self.act, self.in_ch, self.out_ch = skip_rescale, act, in_ch, out_ch

    def _resample(self, v):
        if self.up:
            return upsample_2d(v, self.fir_kernel) if self.fir else naive_upsample_2d(v)
        if self.down:
            return downsample_2d(v, self.fir_kernel) if self.fir else naive_downsample_2d(v)
        return v

    def forward(self, x, temb=None):
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h += self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / np.sqrt(2.0) if self.skip_rescale else x + h


# ------------------------------------------------------------------------------------------------ configs, models
def get_config(name: str, **model):
    """An official CIFAR-10 config as nested namespaces (ml_collections stand-in); `model` overrides model.*.

    name: "ncsnpp_ve" (ve/cifar10_ncsnpp_continuous), "ddpmpp_vp" (vp/cifar10_ddpmpp_continuous), "ddpm_vp"
    (vp/ddpm/cifar10 with continuous training)."""
    m = dict(sigma_min=0.01, sigma_max=50, num_scales=1000, beta_min=0.1, beta_max=20.0, dropout=0.1,
             embedding_type="fourier", nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
             attn_resolutions=(16,), resamp_with_conv=True, conditional=True, fir=False, fir_kernel=[1, 3, 3, 1],
             skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="none",
             progressive_combine="sum", attention_type="ddpm", init_scale=0.0, fourier_scale=16, conv_size=3,
             normalization="GroupNorm")
    data = dict(image_size=32, num_channels=3, centered=False)
    training = dict(continuous=True, sde="vesde")
    sampling = dict(method="pc", predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_steps_each=1,
                    noise_removal=True, probability_flow=False)
    if name == "ncsnpp_ve":
        m.update(name="ncsnpp", scale_by_sigma=True, fir=True, progressive_input="residual")
    elif name == "ddpmpp_vp":
        m.update(name="ncsnpp", scale_by_sigma=False, embedding_type="positional")
        data.update(centered=True)
        training.update(sde="vpsde")
        sampling.update(predictor="euler_maruyama", corrector="none")
    elif name == "ddpm_vp":
        m.update(name="ddpm", scale_by_sigma=False, ch_mult=(1, 2, 2, 2), num_res_blocks=2, dropout=0.1)
        data.update(centered=True)
        training.update(sde="vpsde")
        sampling.update(predictor="euler_maruyama", corrector="none")
    else:
        raise ValueError(name)
    m.update(model)
    return SimpleNamespace(model=SimpleNamespace(**m), data=SimpleNamespace(**data),
                           training=SimpleNamespace(**training), sampling=SimpleNamespace(**sampling),
                           device=torch.device("cpu"))


def get_sigmas(config):
    return np.exp(np.linspace(np.log(config.model.sigma_max), np.log(config.model.sigma_min),
                              config.model.num_scales))


class NCSNpp(nn.Module):
    """models/ncsnpp.py NCSNpp: one flat `all_modules` list walked in a fixed order by forward()."""

    def __init__(self, config):
        super().__init__()
        cm = config.model
        self.config = config
        self.act = act = nn.SiLU()
        self.register_buffer("sigmas", torch.tensor(get_sigmas(config)))
        self.nf = nf = cm.nf
        self.num_res_blocks, self.attn_resolutions = cm.num_res_blocks, cm.attn_resolutions
        self.num_resolutions = n_res = len(cm.ch_mult)
        resolutions = [config.data.image_size // 2**i for i in range(n_res)]
        self.conditional, self.skip_rescale = cm.conditional, cm.skip_rescale
        self.resblock_type, self.progressive = cm.resblock_type.lower(), cm.progressive.lower()
        self.progressive_input, self.embedding_type = cm.progressive_input.lower(), cm.embedding_type.lower()
        fir, fir_kernel, init_scale = cm.fir, cm.fir_kernel, cm.init_scale
        combiner = functools.partial(Combine, method=cm.progressive_combine.lower())
        mods = []
        if self.embedding_type == "fourier":
            mods.append(GaussianFourierProjection(nf, cm.fourier_scale))
            embed_dim = 2 * nf
        else:
            embed_dim = nf
        if self.conditional:
            mods += [nn.Linear(embed_dim, 4 * nf), nn.Linear(4 * nf, 4 * nf)]
        Attn = functools.partial(AttnBlockpp, init_scale=init_scale, skip_rescale=cm.skip_rescale)
        Up = functools.partial(UpsamplePP, with_conv=cm.resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        Down = functools.partial(DownsamplePP, with_conv=cm.resamp_with_conv, fir=fir, fir_kernel=fir_kernel)
        if self.progressive == "output_skip":
            self.pyramid_upsample = UpsamplePP(fir=fir, fir_kernel=fir_kernel, with_conv=False)
        pyramid_up = functools.partial(UpsamplePP, fir=fir, fir_kernel=fir_kernel, with_conv=True)
        if self.progressive_input == "input_skip":
            self.pyramid_downsample = DownsamplePP(fir=fir, fir_kernel=fir_kernel, with_conv=False)
        pyramid_down = functools.partial(DownsamplePP, fir=fir, fir_kernel=fir_kernel, with_conv=True)
        if self.resblock_type == "ddpm":
            Res = functools.partial(ResnetBlockDDPMpp, act=act, dropout=cm.dropout, init_scale=init_scale,
                                    skip_rescale=cm.skip_rescale, temb_dim=4 * nf)
        else:
            Res = functools.partial(ResnetBlockBigGANpp, act=act, dropout=cm.dropout, fir=fir, fir_kernel=fir_kernel,
                                    init_scale=init_scale, skip_rescale=cm.skip_rescale, temb_dim=4 * nf)
        channels = config.data.num_channels
        pyr_in = channels
        mods.append(conv3x3(channels, nf))
        hs_c, in_ch = [nf], nf
        for i in range(n_res):
            for _ in range(cm.num_res_blocks):
                out_ch = nf * cm.ch_mult[i]
                mods.append(Res(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if resolutions[i] in cm.attn_resolutions:
                    mods.append(Attn(channels=in_ch))
                hs_c.append(in_ch)
            if i != n_res - 1:
                mods.append(Down(in_ch=in_ch) if self.resblock_type == "ddpm" else Res(down=True, in_ch=in_ch))
                if self.progressive_input == "input_skip":
                    mods.append(combiner(dim1=pyr_in, dim2=in_ch))
                    in_ch *= 2 if cm.progressive_combine == "cat" else 1
                elif self.progressive_input == "residual":
                    mods.append(pyramid_down(in_ch=pyr_in, out_ch=in_ch))
                    pyr_in = in_ch
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        mods += [Res(in_ch=in_ch), Attn(channels=in_ch), Res(in_ch=in_ch)]
        pyr_ch = 0
        for i in reversed(range(n_res)):
            for _ in range(cm.num_res_blocks + 1):
                out_ch = nf * cm.ch_mult[i]
                mods.append(Res(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if resolutions[i] in cm.attn_resolutions:
                mods.append(Attn(channels=in_ch))
            if self.progressive != "none":
                gn = nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6)
                if i == n_res - 1:
                    if self.progressive == "output_skip":
                        mods += [gn, conv3x3(in_ch, channels, init_scale=init_scale)]
                        pyr_ch = channels
                    else:
                        mods += [gn, conv3x3(in_ch, in_ch, bias=True)]
                        pyr_ch = in_ch
                elif self.progressive == "output_skip":
                    mods += [gn, conv3x3(in_ch, channels, bias=True, init_scale=init_scale)]
                    pyr_ch = channels
                else:
                    mods.append(pyramid_up(in_ch=pyr_ch, out_ch=in_ch))
                    pyr_ch = in_ch
            if i != 0:
                mods.append(Up(in_ch=in_ch) if self.resblock_type == "ddpm" else Res(in_ch=in_ch, up=True))
        if self.progressive != "output_skip":
            mods += [nn.GroupNorm(min(in_ch // 4, 32), in_ch, eps=1e-6),
                     conv3x3(in_ch, channels, init_scale=init_scale)]
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x, time_cond):
        mods, k = self.all_modules, 0
        if self.embedding_type == "fourier":
            used_sigmas = time_cond
            temb = mods[k](torch.log(used_sigmas))
            k += 1
        else:
            used_sigmas = self.sigmas[time_cond.long()]
            temb = get_timestep_embedding(time_cond, self.nf)
        if self.conditional:
            temb = mods[k + 1](self.act(mods[k](temb)))
            k += 2
        else:
            temb = None
        if not self.config.data.centered:
            x = 2 * x - 1.0
        pyramid_in = x if self.progressive_input != "none" else None
        hs = [mods[k](x)]
        k += 1
        for i in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = mods[k](hs[-1], temb)
                k += 1
                if h.shape[-1] in self.attn_resolutions:
                    h = mods[k](h)
                    k += 1
                hs.append(h)
            if i != self.num_resolutions - 1:
                h = mods[k](hs[-1]) if self.resblock_type == "ddpm" else mods[k](hs[-1], temb)
                k += 1
                if self.progressive_input == "input_skip":
                    pyramid_in = self.pyramid_downsample(pyramid_in)
                    h = mods[k](pyramid_in, h)
                    k += 1
                elif self.progressive_input == "residual":
                    pyramid_in = mods[k](pyramid_in)
                    k += 1
                    pyramid_in = (pyramid_in + h) / np.sqrt(2.0) if self.skip_rescale else pyramid_in + h
                    h = pyramid_in
                hs.append(h)
        h = mods[k](hs[-1], temb)
        h = mods[k + 1](h)
        h = mods[k + 2](h, temb)
        k += 3
        pyramid = None
        for i in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = mods[k](torch.cat([h, hs.pop()], dim=1), temb)
                k += 1
            if h.shape[-1] in self.attn_resolutions:
                h = mods[k](h)
                k += 1
            if self.progressive != "none":
                if i == self.num_resolutions - 1:
                    pyramid = mods[k + 1](self.act(mods[k](h)))
                    k += 2
                elif self.progressive == "output_skip":
                    pyramid = self.pyramid_upsample(pyramid) + mods[k + 1](self.act(mods[k](h)))
                    k += 2
                else:
                    pyramid = mods[k](pyramid)
                    k += 1
                    pyramid = (pyramid + h) / np.sqrt(2.0) if self.skip_rescale else pyramid + h
                    h = pyramid
            if i != 0:
                h = mods[k](h) if self.resblock_type == "ddpm" else mods[k](h, temb)
                k += 1
        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = mods[k + 1](self.act(mods[k](h)))
            k += 2
        assert k == len(mods) and not hs
        if self.config.model.scale_by_sigma:
            h = h / used_sigmas.reshape(x.shape[0], *([1] * (x.dim() - 1)))
        return h


class DDPM(nn.Module):
    """models/ddpm.py DDPM."""

    def __init__(self, config):
        super().__init__()
        cm = config.model
        self.act = act = nn.SiLU()
        self.register_buffer("sigmas", torch.tensor(get_sigmas(config)))
        self.nf = nf = cm.nf
        self.num_res_blocks, self.attn_resolutions = cm.num_res_blocks, cm.attn_resolutions
        self.num_resolutions = n_res = len(cm.ch_mult)
        resolutions = [config.data.image_size // 2**i for i in range(n_res)]
        self.conditional, self.centered, self.scale_by_sigma = cm.conditional, config.data.centered, cm.scale_by_sigma
        Res = functools.partial(ResnetBlockDDPM, act=act, temb_dim=4 * nf, dropout=cm.dropout)
        mods = [nn.Linear(nf, 4 * nf), nn.Linear(4 * nf, 4 * nf)]
        channels = config.data.num_channels
        mods.append(conv3x3(channels, nf))
        hs_c, in_ch = [nf], nf
        for i in range(n_res):
            for _ in range(cm.num_res_blocks):
                mods.append(Res(in_ch=in_ch, out_ch=nf * cm.ch_mult[i]))
                in_ch = nf * cm.ch_mult[i]
                if resolutions[i] in cm.attn_resolutions:
                    mods.append(AttnBlock(channels=in_ch))
                hs_c.append(in_ch)
            if i != n_res - 1:
                mods.append(Downsample(channels=in_ch, with_conv=cm.resamp_with_conv))
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        mods += [Res(in_ch=in_ch), AttnBlock(channels=in_ch), Res(in_ch=in_ch)]
        for i in reversed(range(n_res)):
            for _ in range(cm.num_res_blocks + 1):
                mods.append(Res(in_ch=in_ch + hs_c.pop(), out_ch=nf * cm.ch_mult[i]))
                in_ch = nf * cm.ch_mult[i]
            if resolutions[i] in cm.attn_resolutions:
                mods.append(AttnBlock(channels=in_ch))
            if i != 0:
                mods.append(Upsample(channels=in_ch, with_conv=cm.resamp_with_conv))
        mods += [nn.GroupNorm(32, in_ch, eps=1e-6), conv3x3(in_ch, channels, init_scale=0.0)]
        self.all_modules = nn.ModuleList(mods)

    def forward(self, x, labels):
        mods = self.all_modules
        temb = mods[1](self.act(mods[0](get_timestep_embedding(labels, self.nf))))
        k = 2
        h = x if self.centered else 2 * x - 1.0
        hs = [mods[k](h)]
        k += 1
        for i in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = mods[k](hs[-1], temb)
                k += 1
                if h.shape[-1] in self.attn_resolutions:
                    h = mods[k](h)
                    k += 1
                hs.append(h)
            if i != self.num_resolutions - 1:
                hs.append(mods[k](hs[-1]))
                k += 1
        h = mods[k + 2](mods[k + 1](mods[k](hs[-1], temb)), temb)
        k += 3
        for i in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = mods[k](torch.cat([h, hs.pop()], dim=1), temb)
                k += 1
            if h.shape[-1] in self.attn_resolutions:
                h = mods[k](h)
                k += 1
            if i != 0:
                h = mods[k](h)
                k += 1
        h = mods[k + 1](self.act(mods[k](h)))
        assert k + 2 == len(mods) and not hs
        if self.scale_by_sigma:
            h = h / self.sigmas[labels, None, None, None]
        return h


# ------------------------------------------------------------------------------------------- sde_lib / sampling
class VPSDE:
    """sde_lib.VPSDE's attributes and the methods the tests use."""

    def __init__(self, beta_min=0.1, beta_max=20, N=1000):
        self.beta_0, self.beta_1, self.N = beta_min, beta_max, N
        self.discrete_betas = torch.linspace(beta_min / N, beta_max / N, N)
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)

    T = 1

    def sde(self, x, t):
        beta_t = self.beta_0 + t * (self.beta_1 - self.beta_0)
        return -0.5 * beta_t[:, None, None, None] * x, torch.sqrt(beta_t)

    def marginal_prob(self, x, t):
        lmc = -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        return torch.exp(lmc)[:, None, None, None] * x, torch.sqrt(1.0 - torch.exp(2.0 * lmc))


class subVPSDE:
    def __init__(self, beta_min=0.1, beta_max=20, N=1000):
        self.beta_0, self.beta_1, self.N = beta_min, beta_max, N

    T = 1


class VESDE:
    def __init__(self, sigma_min=0.01, sigma_max=50, N=1000):
        self.sigma_min, self.sigma_max, self.N = sigma_min, sigma_max, N
        self.discrete_sigmas = torch.exp(torch.linspace(np.log(sigma_min), np.log(sigma_max), N))

    T = 1


class EulerMaruyamaPredictor:
    """sampling.EulerMaruyamaPredictor, written against score_sde's interface (no `noise=`); VP only here."""

    def __init__(self, sde, score_fn, probability_flow=False):
        self.sde, self.score_fn, self.probability_flow = sde, score_fn, probability_flow

    def update_fn(self, x, t):
        dt = -1.0 / self.sde.N
        z = torch.randn_like(x)
        drift, diffusion = self.sde.sde(x, t)
        drift = drift - diffusion[:, None, None, None] ** 2 * self.score_fn(x, t)
        x_mean = x + drift * dt
        return x_mean + diffusion[:, None, None, None] * np.sqrt(-dt) * z, x_mean
