"""Ahead-of-time compiled score models: torch.export + AOTInductor packages, built once and cached on disk.

`cached_model(model, x, labels)` returns a callable f(x, labels) running an AOTInductor package of `model` (a
compiled shared library with the weights inside, loaded in milliseconds), or None when none can be had. The package
is looked up in the cache folder (FASTSDE_CACHE, default ~/.cache/fastsde) under a key that names everything the
compiled code depends on:

    the model's class, every parameter's and buffer's name, dtype, shape and bytes (sha256 of the contents),
    the example inputs' dtypes and shapes (a package serves one batch size: the U-Nets' fused ops specialize it),
    the device type,
    torch's version, the CPU's instruction-set flags, and the sha256 of fastsde's own Python sources.

A different weight, dtype, CPU, torch or fastsde gives a different key, so a stale package is never loaded.
What to compile: for fastsde's U-Nets the plain-PyTorch build of the same weights (`UNet(config, reference=True)`):
Inductor fuses everything around plain layers, while fastsde's fused custom ops are opaque calls to it (the digits
U-Net, batch 64, 2-core Xeon, one interleaved run: 41.0 ms fp32 / 19.1 ms bf16 for the plain build's package
against 50.2 / 22.9 ms for the fused build's; torch.compile of the plain build with freezing: 46.4 / 20.4 ms).
The package is built with Inductor's freezing (the weights are constants: folded into the graph, convolution
weights prepacked for oneDNN): fp32, batch 64, same Xeon another day, one interleaved run: 55 ms frozen against
67 ms unfrozen and 61 ms for torch.compile with freezing (docs/bench/e2e.json has the current rows). The
returned callable holds a snapshot of the weights as they were when it was made: the CLI, which loads a model
file and never changes it, is its user; a library caller that changes weights afterwards must call again (a new
key, a new package). A miss builds the package (`build=True`: ~40 s with freezing for the digits U-Net on one core
of the 2-core Xeon; export ~2 s, AOTInductor the rest) and writes it atomically, so concurrent processes never read
half a file. Anything that fails -- export, compilation, loading -- is reported once as a warning and the caller runs
the model eagerly: the cache is an acceleration, never a requirement.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["cached_model", "AOTModel", "cache_dir", "model_key", "cpu_flags", "ENV"]

ENV = "FASTSDE_CACHE"
_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "fma")
_SOURCE_HASH: list = []


def cache_dir() -> Path:
    """The cache folder: $FASTSDE_CACHE, else ~/.cache/fastsde (packages live in its aoti/ subfolder)."""
    root = os.environ.get(ENV) or os.path.join(os.path.expanduser("~"), ".cache", "fastsde")
    return Path(root) / "aoti"


def cpu_flags() -> str:
    """The CPU's instruction-set flags that change generated code (from /proc/cpuinfo; "" where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return ",".join(flag for flag in _FLAGS if flag in have)
    except OSError:
        pass
    return ""


def _source_hash() -> str:
    """sha256 of fastsde's Python sources (the modules an exported graph is traced from), computed once."""
    if not _SOURCE_HASH:
        h = hashlib.sha256()
        root = Path(__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
        _SOURCE_HASH.append(h.hexdigest())
    return _SOURCE_HASH[0]


def model_key(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> str:
    """The cache key of `model` called as model(x, labels) (module docstring)."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    for t in (x, labels):
        h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
    h.update(f"{x.device.type}|{torch.__version__}|{cpu_flags()}|{_source_hash()}".encode())
    return h.hexdigest()[:40]


class AOTModel(torch.nn.Module):
    """A loaded package as a model(x, labels): no parameters of its own (the weights are inside the package).
    `fastsde_precision` is the dtype it computes in, so fastsde.precision.for_sampling does not wrap it again."""

    def __init__(self, loader, dtype: torch.dtype, key: str):
        super().__init__()
        self.loader, self.fastsde_precision, self.key = loader, dtype, key

    def forward(self, x, labels):
        return self.loader.run([x, labels])[0]


def _load(path: Path):
    """The package's runner: torch's C++ loader directly (~5 ms, and no import of torch._inductor, which costs ~1 s
    of start-up), else torch._inductor.aoti_load_package's wrapper under the same .run([inputs]) interface."""
    loader = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader is not None:
        try:
            return loader(str(path), "model", False, 1, -1)
        except TypeError:  # another torch's constructor
            pass
    compiled = torch._inductor.aoti_load_package(str(path))

    class _Run:
        @staticmethod
        def run(inputs):
            return [compiled(*inputs)]
    return _Run()


def _compute_dtype(model) -> torch.dtype:
    inner = getattr(model, "model", model)  # a PrecisionModel's copy in its precision
    for t in inner.parameters():
        return t.dtype
    return torch.float32


def cached_model(model, x: torch.Tensor, labels: torch.Tensor, *, build: bool = True, progress=None):
    """An AOTModel running the cached AOTInductor package of `model` (built now on a miss when `build`), or None
    (a plain function model, a miss with build=False, or a failure: warned once). `progress(message)`, when given,
    is told before a build starts (it takes tens of seconds)."""
    if not isinstance(model, torch.nn.Module) or x.device.type != "cpu":
        return None
    try:
        key = model_key(model, x, labels)
    except (RuntimeError, TypeError) as exc:  # e.g. parameters that cannot be viewed as bytes
        warnings.warn(f"fastsde.aot: no cache key for {type(model).__name__} ({exc}); running eagerly", stacklevel=2)
        return None
    path = cache_dir() / f"{key}.pt2"
    if not path.exists():
        if not build:
            return None
        if progress is not None:
            progress(f"compiling the model ahead of time (once for this model, CPU and torch; cached in "
                     f"{path.parent})")
        try:
            _build(model, x, labels, path)
        except Exception as exc:  # noqa: BLE001 -- any failure means: run eagerly, say why once
            warnings.warn(f"fastsde.aot: the ahead-of-time build failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); running eagerly", stacklevel=2)
            return None
    try:
        return AOTModel(_load(path), _compute_dtype(model), key)
    except Exception as exc:  # noqa: BLE001
        warnings.warn(f"fastsde.aot: could not load {path} ({type(exc).__name__}); running eagerly", stacklevel=2)
        return None


def _build(model, x, labels, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.train(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation notes while exporting
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.export.export(model, (x, labels))
            fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=path.parent)
            os.close(fd)
            try:
                with torch._inductor.config.patch(freezing=True):  # weights as constants: folded, prepacked
                    torch._inductor.aoti_compile_and_package(program, package_path=tmp)
                os.replace(tmp, path)  # atomic: a concurrent reader sees no file or the whole file
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    finally:
        model.train(was_training)
