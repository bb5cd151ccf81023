"""accelerate(model): swap the U-Net hot paths of an existing nn.Module for fastsde's fused modules, in place.

Only patterns visible in the module tree are swapped (what a forward() does with a module is not):
  attention   a score_sde-style attention block: GroupNorm_0 (affine nn.GroupNorm), NIN_0..NIN_3 (W (C, C), b (C,),
              applied as einsum("bchw,co->bohw") + b) and `skip_rescale` -> AttnBlock, weights converted
  resnet      fastsde's PlainResnetBlock or score_sde's ResnetBlockDDPMpp (act an nn.SiLU) -> ResnetBlock, sharing
              its parameters (GN+SiLU fused, the time embedding added inside the second GroupNorm)
  gn_silu     nn.GroupNorm directly followed by nn.SiLU inside an nn.Sequential -> GroupNormAct("silu") + Identity
  groupnorm   any other nn.GroupNorm -> GroupNormAct(act=None): the same math, one fused pass
Parameters are shared with the original modules where the layout is the same (GroupNorm, convolutions, Dense); the
attention block gets new fused (3C, C) QKV and (C, C) output tensors, so rebuild optimizers after accelerating.
A model with an `_on_accelerate()` method has it called afterwards (a reference fastsde UNet uses it to take the fused
build's default layout, channels-last on CPU).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from fastsde.nn.attention import AttnBlock
from fastsde.nn.groupnorm import GroupNormAct
from fastsde.nn.resnet import PlainResnetBlock, ResnetBlock

__all__ = ["accelerate", "PATTERNS"]


def _is_nin(m, channels) -> bool:
    W, b = getattr(m, "W", None), getattr(m, "b", None)
    return (isinstance(W, nn.Parameter) and isinstance(b, nn.Parameter) and tuple(W.shape) == (channels, channels)
            and tuple(b.shape) == (channels,))


def _is_nin_attention(m: nn.Module) -> bool:
    gn = getattr(m, "GroupNorm_0", None)
    if not isinstance(gn, nn.GroupNorm) or not gn.affine or not hasattr(m, "skip_rescale"):
        return False
    return all(_is_nin(getattr(m, f"NIN_{i}", None), gn.num_channels) for i in range(4))


def _is_ddpmpp_resblock(m: nn.Module) -> bool:
    if isinstance(m, PlainResnetBlock):
        return True
    return (type(m).__name__ == "ResnetBlockDDPMpp" and isinstance(getattr(m, "act", None), nn.SiLU)
            and isinstance(getattr(m, "GroupNorm_0", None), nn.GroupNorm)
            and isinstance(getattr(m, "GroupNorm_1", None), nn.GroupNorm))


# name -> (matches(module), convert(module, backend)); tried in this order on every module of the tree.
PATTERNS: dict[str, tuple[Callable, Callable]] = {
    "attention": (_is_nin_attention, lambda m, backend: AttnBlock.from_nin_block(m, backend=backend)),
    "resnet": (_is_ddpmpp_resblock, lambda m, backend: ResnetBlock.from_plain(m, backend=backend)),
    "groupnorm": (lambda m: isinstance(m, nn.GroupNorm),
                  lambda m, backend: GroupNormAct.from_groupnorm(m, None, backend=backend)),
}


def _convert(m: nn.Module, backend: str):
    for kind, (matches, convert) in PATTERNS.items():
        if matches(m):
            return kind, convert(m, backend)
    return None, None


def _fuse_sequential(seq: nn.Sequential, prefix: str, backend: str, swapped: list) -> None:
    items = list(seq._modules.items())
    for (k, m), (k_next, m_next) in zip(items, items[1:]):
        if isinstance(m, nn.GroupNorm) and isinstance(m_next, nn.SiLU):
            seq._modules[k] = GroupNormAct.from_groupnorm(m, "silu", backend=backend)
            seq._modules[k_next] = nn.Identity()
            swapped.append(f"{prefix}{k}")


def _walk(module: nn.Module, prefix: str, backend: str, swapped: list) -> None:
    if isinstance(module, nn.Sequential):
        _fuse_sequential(module, prefix, backend, swapped)
    for name, child in list(module.named_children()):
        kind, new = _convert(child, backend)
        if new is not None:
            setattr(module, name, new)
            swapped.append(f"{prefix}{name}")
            if kind == "resnet":  # its remaining children (convs, Dense, NIN) stay as they are
                continue
        else:
            _walk(child, f"{prefix}{name}.", backend, swapped)


def accelerate(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Swap fusable submodules of `model` in place (see module docstring) and return it.

    The dotted names of the swapped modules are appended to `model.fastsde_accelerated` (for a GroupNorm+SiLU pair
    in a Sequential, the GroupNorm's name; the SiLU becomes nn.Identity). A model that is itself one of the
    patterns cannot be changed in place: the fused replacement is returned instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    swapped: list[str] = []
    kind, new = _convert(model, backend)
    if new is not None:
        model, swapped = new, [""]
    else:
        _walk(model, "", backend, swapped)
        hook = getattr(model, "_on_accelerate", None)  # e.g. a reference UNet switches to the fused build's layout
        if callable(hook):
            hook()
    model.fastsde_accelerated = list(getattr(model, "fastsde_accelerated", [])) + swapped
    return model
