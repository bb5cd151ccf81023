"""What the Triton launchers share (kernels/step.py, fsn1.py, groupnorm.py, attention.py): where a kernel may run,
the interpreter's tracing guard, the compute dtype, grid limits and uint64 kernel arguments."""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op

__all__ = ["FLOATS", "INTERPRETED", "MAX_GRID_Y", "check_runnable", "compute_dtype", "contiguous", "launcher_op",
           "on_device", "seed_arg", "seed_key", "signed_u64", "split_u64", "tracing_interpreted"]

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MAX_GRID_Y = 65535  # CUDA's limit on grid axes 1 and 2: larger batches launch in chunks
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def check_runnable(x: torch.Tensor) -> None:
    """Raise unless x's device can run a Triton kernel: CUDA, or the CPU under TRITON_INTERPRET=1."""
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        return
    raise RuntimeError(f"Triton kernels run on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got {x.device}")


def tracing_interpreted(t: torch.Tensor) -> bool:
    """True when t is a FakeTensor and the kernels are interpreted: the interpreter would run the kernel on
    fake storage, while a compiled kernel goes through wrap_triton's traceable wrapper. Metadata needs no launch."""
    return INTERPRETED and is_fake(t)


def compute_dtype(dtype: torch.dtype):
    """The kernels' math type for a storage dtype: float64 for float64, float32 for the rest."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t.contiguous(), passing None through (optional kernel inputs)."""
    return None if t is None else t.contiguous()


def signed_u64(value: int) -> int:
    """uint64 -> int64 with the same bits (the torch.library schema's int is int64)."""
    value = int(value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"seed/draw must be in [0, 2**64), got {value}")
    return value - (1 << 64) if value >= 1 << 63 else value


def split_u64(value: int) -> tuple[int, int]:
    """A uint64 (or its int64 bits) as (lo, hi) 32-bit halves, each carried as the int32 with the same bits (a
    stable kernel argument type)."""
    lo, hi = value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF
    return (lo - (1 << 32) if lo >= 1 << 31 else lo), (hi - (1 << 32) if hi >= 1 << 31 else hi)


def on_device(t: torch.Tensor):
    """A context that makes t's CUDA device the current one while a launcher runs (Triton launches on the current
    device, and a CUDA graph records on it): torch.cuda.device(t.device) for an eager CUDA tensor, else nothing
    (the CPU interpreter; a compiled graph, whose generated code guards the device itself)."""
    if t.device.type == "cuda" and not torch.compiler.is_compiling():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


_SEEDS: dict = {}  # (device, int64 bits) -> 0-d int64 tensor: a host seed becomes a device tensor once, not per call


def seed_arg(seed, device: torch.device) -> torch.Tensor:
    """The seed as the kernels read it: a 0-d int64 tensor on `device` holding the uint64 seed's bits. A tensor is
    passed through (checked): its value is read when the kernel runs, so a compiled graph has no int to guard on and
    a recorded CUDA graph serves any seed copied into it. A Python int gets a cached constant tensor (never written)."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.dim() != 0 or seed.device != torch.device(device):
            raise ValueError(f"seed must be a 0-d int64 tensor on {device}, got {seed.dtype} "
                             f"{tuple(seed.shape)} on {seed.device}")
        return seed
    bits = signed_u64(seed)
    if torch.compiler.is_compiling():
        return torch.tensor(bits, dtype=torch.int64, device=device)
    key = (torch.device(device), bits)
    hit = _SEEDS.get(key)
    if hit is None:
        if len(_SEEDS) >= 256:
            _SEEDS.clear()
        hit = _SEEDS[key] = torch.tensor(bits, dtype=torch.int64, device=device)
    return hit


def launcher_op(name: str, mutates_args):
    """Decorator registering a launcher as the torch.library op `name`: a triton_op, which torch.compile traces into
    (inductor sees the kernels). Under TRITON_INTERPRET=1 a plain custom_op instead, whose fake is the same body
    (tracing_interpreted: it launches nothing on fake tensors): a compiled graph calls it as one opaque op that
    interprets the kernels when it runs. Traced as a triton_op, the interpreted body would leave no kernel in the
    graph, and an inductor-compiled sampler would silently skip its updates on the CPU."""
    if not INTERPRETED:
        return triton_op(name, mutates_args=mutates_args)

    def register(fn):
        op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        op.register_fake(fn)
        return op

    return register


@triton.jit
def seed_key(SEED_ptr):
    """The Philox key (seed & 0xffffffff, seed >> 32) as uint32 from the int64 bits of the uint64 seed at SEED_ptr."""
    seed = tl.load(SEED_ptr).to(tl.uint64, bitcast=True)
    return seed.to(tl.uint32), (seed >> 32).to(tl.uint32)
