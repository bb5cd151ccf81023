"""Public fused ops: one function per op family, validating inputs and dispatching to a backend."""
from fastsde.ops.fsn1 import fsn1_normal  # noqa: F401
