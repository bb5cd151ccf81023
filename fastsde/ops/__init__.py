"""Public fused ops: one function per op family, validating inputs and dispatching to a backend."""
from fastsde.ops.fsn1 import fsn1_normal  # noqa: F401
from fastsde.ops.attention import attn_block  # noqa: F401
from fastsde.ops.groupnorm import group_norm  # noqa: F401
from fastsde.ops.step import affine_step, langevin_step, step_sq_norms  # noqa: F401
