"""Drop-in modules for the U-Net hot paths (dispatching to fastsde.ops) and accelerate(model) that swaps them in.

Fused modules take `backend=` ("auto" picks the fastest available; "reference" forces the plain-PyTorch ops).
PlainAttnBlock / PlainResnetBlock are the same layers written with ordinary torch modules (score_sde's layout), with
the same parameter names, so state dicts load across the two.
"""
from fastsde.nn.accelerate import accelerate
from fastsde.nn.attention import AttnBlock, PlainAttnBlock, fused_to_nin, nin_to_fused
from fastsde.nn.core import NIN, num_groups_for
from fastsde.nn.embedding import GaussianFourierProjection, timestep_embedding
from fastsde.nn.groupnorm import GroupNormAct
from fastsde.nn.resample import Downsample, Upsample
from fastsde.nn.resnet import PlainResnetBlock, ResnetBlock

__all__ = ["GroupNormAct", "AttnBlock", "ResnetBlock", "PlainAttnBlock", "PlainResnetBlock", "NIN",
           "GaussianFourierProjection", "timestep_embedding", "Upsample", "Downsample", "accelerate",
           "nin_to_fused", "fused_to_nin", "num_groups_for"]
