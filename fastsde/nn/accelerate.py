"""accelerate(model): swap the U-Net hot paths of an existing nn.Module for fastsde's fused modules, in place.

Only patterns visible in the module tree are swapped (what a forward() does with a module is not). score_sde's model
zoo (models/ncsnpp.py NCSN++ / DDPM++, models/ddpm.py DDPM) is covered block by block:
  attention   score_sde's AttnBlockpp and DDPM's AttnBlock (GroupNorm_0, NIN_0..NIN_3 with W (C, C), b (C,), optional
              `skip_rescale`) -> AttnBlock, weights converted
  biggan      ResnetBlockBigGANpp (act nn.SiLU) -> ResnetBlockBigGAN: GN+SiLU fused, time embedding added inside the
              second GroupNorm, FIR or nearest/mean up/downsampling as depthwise convolutions, skip rescale in place
  resnet      fastsde's PlainResnetBlock, ResnetBlockDDPMpp or DDPM's ResnetBlockDDPM (act nn.SiLU) -> ResnetBlock
  fir         up_or_down_sampling.Conv2d with up/down -> FIRConv2d; layerspp Upsample/Downsample with fir=True and no
              convolution -> FIRResample (upfirdn2d's per-channel reshapes become one depthwise convolution)
  gn_silu     nn.GroupNorm directly followed by nn.SiLU inside an nn.Sequential -> GroupNormAct("silu") + Identity
  groupnorm   any other nn.GroupNorm -> GroupNormAct(act=None): the same math, one fused pass
Parameters are shared with the original modules where the layout is the same (GroupNorm, convolutions, Dense); the
attention block gets new fused (3C, C) QKV and (C, C) output tensors, so rebuild optimizers after accelerating.
Left as they are: the noise embeddings (GaussianFourierProjection and the sinusoidal function act on (B, nf) vectors;
nothing to fuse), Combine and the plain resamplers (one library call each), and any known block whose options the
fused modules do not implement (e.g. another activation than SiLU), with a warning once per block type and reason.
On the CPU the model then runs channels-last (oneDNN convolutions are faster in NHWC and every fused op keeps the
layout): input converted once, output returned NCHW-contiguous. A model with an `_on_accelerate()` method (a fastsde
UNet) handles its layout itself.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Callable

import torch
from torch import nn

from fastsde.nn.attention import AttnBlock
from fastsde.nn.groupnorm import GroupNormAct
from fastsde.nn.resample import FIRConv2d, FIRResample
from fastsde.nn.resnet import PlainResnetBlock, ResnetBlock, ResnetBlockBigGAN

__all__ = ["accelerate", "AccelerateReport", "PATTERNS"]


def _is_nin(m, channels) -> bool:
    W, b = getattr(m, "W", None), getattr(m, "b", None)
    return (isinstance(W, nn.Parameter) and isinstance(b, nn.Parameter) and tuple(W.shape) == (channels, channels)
            and tuple(b.shape) == (channels,))


def _why_not_attention(m: nn.Module) -> str | None:
    gn = getattr(m, "GroupNorm_0", None)
    if not isinstance(gn, nn.GroupNorm) or not gn.affine:
        return "GroupNorm_0 is not an affine nn.GroupNorm"
    if not all(_is_nin(getattr(m, f"NIN_{i}", None), gn.num_channels) for i in range(4)):
        return "NIN_0..NIN_3 are not (C, C) projections"
    return None


def _is_attention(m: nn.Module) -> bool:
    # score_sde's AttnBlockpp carries skip_rescale; DDPM's AttnBlock has none (a plain residual sum).
    named = hasattr(m, "skip_rescale") or type(m).__name__ == "AttnBlock"
    return named and not isinstance(m, AttnBlock) and _why_not_attention(m) is None


def _why_not_resblock(m: nn.Module) -> str | None:
    if not isinstance(getattr(m, "act", None), nn.SiLU):
        return f"act is {type(getattr(m, 'act', None)).__name__}, only SiLU (config nonlinearity 'swish') fuses"
    for name in ("GroupNorm_0", "GroupNorm_1"):
        gn = getattr(m, name, None)
        if not isinstance(gn, nn.GroupNorm) or not gn.affine:
            return f"{name} is not an affine nn.GroupNorm"
    return None


def _is_ddpm_resblock(m: nn.Module) -> bool:
    if isinstance(m, PlainResnetBlock):
        return True
    return type(m).__name__ in ("ResnetBlockDDPMpp", "ResnetBlockDDPM") and _why_not_resblock(m) is None


def _is_biggan(m: nn.Module) -> bool:
    return type(m).__name__ == "ResnetBlockBigGANpp" and _why_not_resblock(m) is None


def _is_fir_conv(m: nn.Module) -> bool:
    return (type(m).__name__ == "Conv2d" and not isinstance(m, nn.Conv2d) and hasattr(m, "resample_kernel")
            and (m.up or m.down) and isinstance(getattr(m, "weight", None), nn.Parameter))


def _is_fir_resample(m: nn.Module) -> bool:
    return (type(m).__name__ in ("Upsample", "Downsample") and getattr(m, "fir", False)
            and not getattr(m, "with_conv", True) and len(list(m.children())) == 0)


# name -> (matches(module), convert(module, backend)); tried in this order on every module of the tree.
PATTERNS: dict[str, tuple[Callable, Callable]] = {
    "attention": (_is_attention, lambda m, backend: AttnBlock.from_nin_block(m, backend=backend)),
    "biggan": (_is_biggan, lambda m, backend: ResnetBlockBigGAN.from_module(m, backend=backend)),
    "resnet": (_is_ddpm_resblock, lambda m, backend: ResnetBlock.from_plain(m, backend=backend)),
    "fir": (_is_fir_conv, lambda m, backend: FIRConv2d.from_module(m)),
    "fir_resample": (_is_fir_resample, lambda m, backend: FIRResample(type(m).__name__ == "Upsample", m.fir_kernel)),
    "groupnorm": (lambda m: isinstance(m, nn.GroupNorm),
                  lambda m, backend: GroupNormAct.from_groupnorm(m, None, backend=backend)),
}

# Block types accelerate() knows, and why one may be left: type name -> reason(module) (None: it would be swapped).
_KNOWN: dict[str, Callable] = {
    "ResnetBlockBigGANpp": _why_not_resblock,
    "ResnetBlockDDPMpp": _why_not_resblock,
    "ResnetBlockDDPM": _why_not_resblock,
    "AttnBlockpp": _why_not_attention,
    "AttnBlock": _why_not_attention,
}
# Known modules kept on purpose (no warning): type name -> reason.
_KEPT = {
    "GaussianFourierProjection": "noise embedding on (B, nf) vectors: nothing to fuse",
    "Combine": "one 1x1 convolution",
    "Upsample": "nearest upsampling + convolution: library calls already",
    "Downsample": "convolution or mean pooling: a library call already",
}
_WARNED: set = set()


@dataclasses.dataclass
class AccelerateReport:
    """What accelerate() did: swapped [(dotted name, pattern)], left [(dotted name, type name, reason)]."""

    swapped: list = dataclasses.field(default_factory=list)
    left: list = dataclasses.field(default_factory=list)
    channels_last: bool = False

    def counts(self) -> dict:
        """{pattern: number swapped}."""
        out: dict = {}
        for _, kind in self.swapped:
            out[kind] = out.get(kind, 0) + 1
        return out

    def __str__(self):
        lines = [f"swapped {len(self.swapped)} modules: " + ", ".join(f"{k} x{n}" for k, n in self.counts().items())]
        lines += [f"left {name or '<root>'} ({kind}): {why}" for name, kind, why in self.left]
        if self.channels_last:
            lines.append("runs channels-last on the CPU (input converted once, output NCHW-contiguous)")
        return "\n".join(lines)


def _convert(m: nn.Module, backend: str):
    for kind, (matches, convert) in PATTERNS.items():
        if matches(m):
            return kind, convert(m, backend)
    return None, None


def _note_left(m: nn.Module, name: str, report: AccelerateReport) -> None:
    kind = type(m).__name__
    if kind in _KNOWN:
        why = _KNOWN[kind](m)
        if why is not None:
            report.left.append((name, kind, why))
            if (kind, why) not in _WARNED:
                _WARNED.add((kind, why))
                warnings.warn(f"fastsde.accelerate: {kind} at {name or '<root>'} left unswapped: {why}",
                              RuntimeWarning, stacklevel=4)
    elif kind in _KEPT:
        report.left.append((name, kind, _KEPT[kind]))


def _fuse_sequential(seq: nn.Sequential, prefix: str, backend: str, report: AccelerateReport) -> None:
    items = list(seq._modules.items())
    for (k, m), (k_next, m_next) in zip(items, items[1:]):
        if isinstance(m, nn.GroupNorm) and isinstance(m_next, nn.SiLU):
            seq._modules[k] = GroupNormAct.from_groupnorm(m, "silu", backend=backend)
            seq._modules[k_next] = nn.Identity()
            report.swapped.append((f"{prefix}{k}", "gn_silu"))


def _walk(module: nn.Module, prefix: str, backend: str, report: AccelerateReport) -> None:
    if isinstance(module, nn.Sequential):
        _fuse_sequential(module, prefix, backend, report)
    for name, child in list(module.named_children()):
        kind, new = _convert(child, backend)
        if new is not None:
            setattr(module, name, new)
            report.swapped.append((f"{prefix}{name}", kind))
            if kind in ("resnet", "biggan"):  # their remaining children (convs, Dense, NIN) stay as they are
                continue
        else:
            _note_left(child, f"{prefix}{name}", report)
            _walk(child, f"{prefix}{name}.", backend, report)


def _to_channels_last(module, args):
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.device.type == "cpu":
        return (x.contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def _to_contiguous(module, args, out):
    return out.contiguous() if isinstance(out, torch.Tensor) else out


def accelerate(model: nn.Module, backend: str = "auto", *, channels_last: bool = True, report: bool = False):
    """Swap fusable submodules of `model` in place (see module docstring) and return it, or (model, report) with
    report=True. The report (AccelerateReport: swapped / left with reasons) is also kept as `model.fastsde_report`,
    and the swapped names in `model.fastsde_accelerated`. A model that is itself one of the patterns cannot be
    changed in place: the fused replacement is returned instead. channels_last=False keeps the model's layout."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rep = AccelerateReport()
    kind, new = _convert(model, backend)
    if new is not None:
        model = new
        rep.swapped.append(("", kind))
    else:
        _note_left(model, "", rep)
        _walk(model, "", backend, rep)
        hook = getattr(model, "_on_accelerate", None)  # e.g. a reference UNet switches to the fused build's layout
        if callable(hook):
            hook()
        elif channels_last and rep.swapped and not getattr(model, "_fastsde_channels_last", False):
            model.register_forward_pre_hook(_to_channels_last)
            model.register_forward_hook(_to_contiguous)
            model._fastsde_channels_last = True
        rep.channels_last = bool(getattr(model, "_fastsde_channels_last", False))
    model.fastsde_accelerated = list(getattr(model, "fastsde_accelerated", [])) + [n for n, _ in rep.swapped]
    model.fastsde_report = rep
    return (model, rep) if report else model
