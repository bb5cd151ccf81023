"""GroupNormAct: GroupNorm [+ per-channel time-embedding add / scale-shift] [+ SiLU] as one fastsde.ops.group_norm."""
from __future__ import annotations

import torch
from torch import nn

from fastsde import ops
from fastsde.nn.core import op_backend

__all__ = ["GroupNormAct"]


class GroupNormAct(nn.Module):
    """y = act((GN(x + emb_add) * weight + bias) * (1 + scale) + shift), act in (None, "silu").

    A drop-in for nn.GroupNorm (same `weight`, `bias`, `num_groups`, `num_channels`, `eps`, `affine`), and for
    nn.GroupNorm followed by SiLU when act="silu". x: (N, C, *spatial); emb_add, scale, shift: (N, C).
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, act: str | None = "silu",
                 affine: bool = True, *, backend: str = "auto"):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide num_channels ({num_channels})")
        self.num_groups, self.num_channels, self.eps, self.act, self.affine = num_groups, num_channels, eps, act, affine
        self.backend = backend
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_groupnorm(cls, gn: nn.GroupNorm, act: str | None = None, *, backend: str = "auto") -> "GroupNormAct":
        """The same normalisation as `gn` (sharing its Parameter objects), followed by `act`."""
        new = cls(gn.num_groups, gn.num_channels, gn.eps, act, gn.affine, backend=backend)
        if gn.affine:
            new.weight, new.bias = gn.weight, gn.bias
        return new

    def forward(self, x, emb_add=None, scale=None, shift=None):
        return ops.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, scale=scale, shift=shift,
                              emb_add=emb_add, act=self.act,
                              backend=op_backend(self.backend, x, self.weight, self.bias, emb_add, scale, shift))

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, act={self.act!r}, affine={self.affine}, "
                f"backend={self.backend!r}")
