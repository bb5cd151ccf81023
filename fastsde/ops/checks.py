"""Argument checks and conversions every op module shares (one definition each)."""
from __future__ import annotations

import operator

import torch

__all__ = ["as_u64", "i64_bits", "check_like", "score_dtypes", "check_score", "FLOATS", "check_float_tensor",
           "positive_count", "overlaps", "same_view", "check_outputs_distinct", "check_no_autograd",
           "records_autograd"]

_U64 = 1 << 64
_I64_MIN = 1 << 63


def as_u64(name: str, value) -> int:
    """`value` as a Python int in [0, 2**64) (seeds and draw ids), or a TypeError/ValueError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int in [0, 2**64), got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__}") from None
    if not 0 <= value < _U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def i64_bits(value: int) -> int:
    """uint64 -> the int64 with the same bits: how the torch.library schema (int = int64) carries it."""
    return value - _U64 if value >= _I64_MIN else value


def check_like(name: str, t, x: torch.Tensor) -> None:
    """Raise unless `t` is a tensor with x's shape, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
        raise ValueError(f"{name} must match x: expected shape {tuple(x.shape)} {x.dtype} on {x.device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_float_tensor(name: str, t) -> None:
    """Raise unless `t` is a float32/float64/float16/bfloat16 tensor with data (CPU or CUDA, not meta): integer and
    complex tensors would be truncated or lose their imaginary part, meta tensors have no values to compute on."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATS:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if t.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data): fastsde ops need cpu or cuda tensors")


def positive_count(name: str, value, divides: int | None = None, what: str = "") -> int:
    """A positive int (numpy integers included) that divides `divides` when given; bools and floats are refused."""
    try:
        n = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        n = None
    if n is None or n < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if divides is not None and divides % n:
        raise ValueError(f"{name} ({n}) must divide {what or 'the channels'} ({divides})")
    return n


def _byte_range(t: torch.Tensor) -> tuple[int, int]:
    start = t.storage_offset()
    end = start + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0) + 1
    return start * t.element_size(), end * t.element_size()


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors' element ranges may share memory (same storage, intersecting byte ranges)."""
    if torch.compiler.is_compiling():  # storage pointers cannot be traced; the eager call checks
        return False
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _byte_range(a), _byte_range(b)
    return a0 < b1 and b0 < a1


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()
            and a.dtype == b.dtype)


def check_outputs_distinct(outputs: dict, inputs: dict) -> None:
    """Outputs must not overlap each other, and may share memory with an input only as the very same view (in-place
    `out=x`); anything else gives backend-dependent results."""
    items = [(k, v) for k, v in outputs.items() if v is not None]
    for i, (na, a) in enumerate(items):
        for nb, b in items[i + 1:]:
            if overlaps(a, b):
                raise ValueError(f"{na} and {nb} must be different tensors, got overlapping memory")
        for nb, b in inputs.items():
            if b is not None and overlaps(a, b) and not same_view(a, b):
                raise ValueError(f"{na} must be {nb} itself (in place) or not share memory with it, got a partial "
                                 f"overlap")


def check_no_autograd(op: str, tensors: dict) -> None:
    """Ops without a backward refuse inputs autograd would record (a silent loss of gradients otherwise)."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise ValueError(f"{op} has no backward, but {name} requires grad: call it under torch.no_grad() or pass "
                             f"{name}.detach()")


def records_autograd(*tensors) -> bool:
    """Whether autograd would record an op on these tensors (grad enabled and one of them requires grad)."""
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def score_dtypes(state: torch.dtype) -> tuple:
    """The dtypes a step op reads a model output (score) in beside a state of dtype `state`: the state's own, and a
    narrower one loaded directly by the kernels (no conversion pass): float16 or bfloat16 beside float32 (a
    half-precision model beside a float32 sampler state), float32 beside float64."""
    if state == torch.float32:
        return (torch.float32, torch.bfloat16, torch.float16)
    if state == torch.float64:
        return (torch.float64, torch.float32)
    return (state,)


def check_score(name: str, t, x: torch.Tensor, x_name: str = "x") -> None:
    """Raise unless `t` (a model output) has the shape and device of the state `x` (called `x_name` in the
    message) and one of score_dtypes(x.dtype)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    allowed = score_dtypes(x.dtype)
    if t.shape != x.shape or t.dtype not in allowed or t.device != x.device:
        dtypes = " or ".join(str(d) for d in allowed)
        raise ValueError(f"{name} must match {x_name}: expected shape {tuple(x.shape)} {dtypes} on {x.device}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")
