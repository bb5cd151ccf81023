"""Public fused ops: one function per op family, validating inputs and dispatching to a backend."""
from fastsde.ops.attention import attn_block
from fastsde.ops.fsn1 import fsn1_normal
from fastsde.ops.groupnorm import group_norm
from fastsde.ops.step import affine_combine_step, affine_step, langevin_step, step_sq_norms

__all__ = ["affine_step", "affine_combine_step", "langevin_step", "step_sq_norms", "fsn1_normal", "group_norm",
           "attn_block"]
