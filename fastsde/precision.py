"""Mixed precision for sampling: the model in bfloat16 or float16, the sampler state in float32.

A sampler's state x, x_mean, its float64 coefficient tables and its noise keep their precision whatever the model's:
the updates subtract nearly equal numbers over hundreds of steps. Only the model runs narrower. `PrecisionModel`
wraps a model so that its weights and activations are in the chosen dtype: x is cast in for the forward and the
output comes back in that dtype, which the fused step ops read directly (fastsde.ops.checks.score_dtypes: no
conversion pass). The sampler factories take `precision=`:

    None     the model runs in the state's dtype, as it is given (no wrapper)
    "fp32"   float32 model (beside a float64 state: a float32 model output read by the float64 update)
    "bf16"   bfloat16 model beside a float32 state
    "fp16"   float16 model beside a float32 state
    "auto"   "bf16" where the hardware has native bfloat16 arithmetic (CPU: AVX512-BF16 or AMX-BF16, read from
             /proc/cpuinfo at run time, unless ONEDNN_MAX_CPU_ISA caps oneDNN below them; CUDA:
             torch.cuda.is_bf16_supported()), else "fp32"

"auto" picks bf16 only where it is measured to pay and the quality guard holds (tests/test_precision.py: Fréchet
distance and class entropy of the shipped digits model, analytic mixtures against their exact distributions).
"""
from __future__ import annotations

import copy
import os
import functools

import torch
from torch import nn

__all__ = ["PRECISIONS", "precision_dtype", "resolve_precision", "native_bf16", "PrecisionModel", "for_sampling"]

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_HALF = (torch.bfloat16, torch.float16)


def _check_name(precision) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset:
    """The CPU feature flags of /proc/cpuinfo's first processor (empty where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device="cpu") -> tuple[bool, str]:
    """(whether `device` computes in bfloat16 natively, the reason): the CPU's AVX512-BF16 / AMX-BF16 flags, read
    at run time, or a CUDA device's bfloat16 support."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "CUDA device supports bfloat16" if ok else "CUDA device without bfloat16 support"
    if device.type != "cpu":
        return False, f"no bfloat16 detection for {device.type} devices"
    found = sorted(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if not found:
        return False, "CPU has neither avx512_bf16 nor amx_bf16 (or /proc/cpuinfo is unreadable)"
    capped = _onednn_isa_cap()
    if capped is not None:
        return False, f"CPU has {' and '.join(found)}, but {capped} keeps oneDNN below AVX512_CORE_BF16"
    return True, f"CPU has {' and '.join(found)}"


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA, formerly DNNL_MAX_CPU_ISA) below which its convolutions and matmuls have
# no bfloat16 instructions and emulate them (tens of times slower than float32 on an AVX2 CPU). A user (or
# scripts/emulate_cpu.sh, which CI time estimates use) who sets one gets the fp32 answer from "auto".
_ONEDNN_NO_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"})


def _onednn_isa_cap():
    """'NAME=VALUE' of the environment variable that caps oneDNN below bfloat16 instructions, or None."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # oneDNN reads the second only when the first is unset
        value = os.environ.get(name)
        if value is not None:
            value = value.strip().upper()
            return f"{name}={value}" if value in _ONEDNN_NO_BF16 else None
    return None


def resolve_precision(precision, device="cpu"):
    """The precision a sampler runs: `precision` itself, with "auto" resolved for `device` (native_bf16)."""
    _check_name(precision)
    if precision == "auto":
        return "bf16" if native_bf16(device)[0] else "fp32"
    return precision


def precision_dtype(precision, state_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The model's dtype under `precision` (None: the state's), checked against the sampler state's dtype: a half
    model needs a float32 state, float32 a float32 or float64 one (fastsde.ops.checks.score_dtypes)."""
    _check_name(precision)
    if precision is None:
        return state_dtype
    if precision == "auto":
        raise ValueError("precision='auto' must be resolved first (resolve_precision)")
    dtype = _DTYPES[precision]
    allowed = {torch.float32: (torch.float32, *_HALF), torch.float64: (torch.float64, torch.float32)}
    if dtype not in allowed.get(state_dtype, (state_dtype,)):
        raise ValueError(f"precision={precision!r} needs a float32 sampler state (dtype=torch.float32), got "
                         f"dtype={state_dtype}")
    return dtype


class PrecisionModel(nn.Module):
    """`model` run in `dtype`: forward(x (B, ...), labels (B,)) -> output (B, ...) in `dtype` (or `output_dtype`).

    Holds a copy of `model` whose floating parameters and buffers are cast to `dtype`, except those a module names
    in its `keep_float32` attribute (e.g. the Fourier frequencies of fastsde.nn.GaussianFourierProjection, where 8
    bits would move the phases by up to a radian). x is cast to `dtype` for the forward; labels pass unchanged.
    `refresh()` copies the source model's current weights in (cast once per sampler call, so EMA swaps,
    load_state_dict and optimizer steps between calls are seen; no stale cache).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, output_dtype: torch.dtype | None = None):
        super().__init__()
        if dtype not in (torch.float32, *_HALF):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        self.source = (model,)  # a tuple: not registered as a submodule (this module's weights are the copy's)
        self.dtype, self.output_dtype = dtype, output_dtype
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        for module in self.model.modules():
            keep = set(getattr(module, "keep_float32", ()))
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is not None and t.is_floating_point() and name not in keep:
                        t.data = t.data.to(dtype)
        self._pairs = None

    def refresh(self) -> "PrecisionModel":
        """Copy the source model's current parameters and buffers into the cast copy (rounded once)."""
        if self._pairs is None:
            mine = dict(self.model.named_parameters())
            mine.update(self.model.named_buffers())
            theirs = dict(self.source[0].named_parameters())
            theirs.update(self.source[0].named_buffers())
            if mine.keys() != theirs.keys():
                raise RuntimeError("the model's parameters changed since its PrecisionModel was built")
            self._pairs = [(mine[k], theirs[k]) for k in mine]
        with torch.no_grad():
            for dst, src in self._pairs:
                dst.copy_(src)
        return self

    def forward(self, x, labels):
        out = self.model(x.to(self.dtype), labels)
        return out if self.output_dtype is None else out.to(self.output_dtype)


def for_sampling(model: nn.Module, precision, state_dtype: torch.dtype, cache: dict, *,
                 output_dtype: torch.dtype | None = None):
    """`model` as a sampler call runs it under `precision` (resolved, not "auto"): the model itself when its dtype
    is the state's, else its PrecisionModel, refreshed (one per model in `cache`, a sampler's dict)."""
    dtype = precision_dtype(precision, state_dtype)
    if precision is None or dtype == state_dtype or getattr(model, "fastsde_precision", None) == dtype:
        return model  # (an ahead-of-time compiled model, fastsde.aot, already computes in `dtype`)
    entry = cache.get(id(model))
    if entry is None or entry.source[0] is not model:
        entry = cache[id(model)] = PrecisionModel(model, dtype, output_dtype)
    return entry.refresh()
