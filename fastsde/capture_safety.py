"""A capture-safety harness for sampler loops: host syncs and per-step sampler allocations, counted while a loop runs.

A loop can be captured in a CUDA graph (and replayed with no host in the way) only if every step is the same
sequence of kernels with no device->host read: no `.item()`, `.tolist()`, `.cpu()`, `nonzero`, or data-dependent
shape. `CaptureMonitor` is a TorchDispatchMode that records such calls (and patches `Tensor.tolist`/`Tensor.numpy`,
which read memory without dispatching), and counts the tensors with fresh storage that ops outside the model call
create, per sampler step. The model's own work is excluded by wrapping the model (`monitor.wrap_model(model)`);
the loop reports steps through `fastsde.capture_safety.step_boundary()`, a no-op when no monitor is active.

    with CaptureMonitor() as mon:
        sampler(mon.wrap_model(model))
    assert mon.syncs_after(1) == [] and mon.allocations_after(1) == 0

On the CPU a `.item()` is not a device synchronisation, but it is the same host read that would stall a GPU stream
and break a capture, so the harness treats it as one: a loop that passes here has no host read on any device.
"""
from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CaptureMonitor", "step_boundary", "loop_end", "HostSyncError", "on_device", "capture_stream",
           "record_graph"]

# Ops that read device memory on the host or whose output shape depends on the data.
_SYNC_OPS = {
    "aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select", "aten::unique_dim",
    "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave", "aten::is_nonzero",
    "aten::equal", "aten::allclose",
}

_ACTIVE: list["CaptureMonitor"] = []


class HostSyncError(RuntimeError):
    """A host read inside a loop that must be capturable."""


def step_boundary() -> None:
    """Mark the start of a sampler step for an active CaptureMonitor (a no-op otherwise)."""
    if _ACTIVE:
        _ACTIVE[-1]._next_step()


def loop_end() -> None:
    """Mark the end of the steps: what follows (copying the result out) is counted apart, as step -1."""
    if _ACTIVE:
        _ACTIVE[-1].step = -1


# ---------------------------------------------------------------------------------------------- recording graphs
# The one path every captured sampler (fastsde.executor.Runner) records through:
#
#     with on_device(x):                          # eager warm-up and replays on x's device
#         <eager warm-up: lazily built model state>
#         with capture_stream(x.device) as side:  # a side stream of x's device, ordered after the current one
#             <one compiled call, outside any capture: a (re)compile happens here, never inside the capture>
#             graph = record_graph(body, side)    # records body(); nothing runs
#         graph.replay()
#
# tests/test_capture.py replaces capture_stream and record_graph with CPU stand-ins to prove that nothing compiles
# inside a recording.


def on_device(device):
    """torch.cuda.device(device) for a CUDA device (kernels, graph replays and captures go to the current device),
    else a no-op context."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@contextlib.contextmanager
def capture_stream(device):
    """Makes `device` current and a fresh side stream of it the current stream, after the caller's stream's pending
    work; yields the side stream (warm up and record on it, as torch recommends). On exit the caller's stream waits
    for the side stream's work."""
    device = torch.device(device)
    with torch.cuda.device(device):
        caller = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(caller)
        with torch.cuda.stream(side):
            yield side
        caller.wait_stream(side)


def parameter_addresses(model) -> tuple:
    """The storage addresses a recorded graph reads a model's parameters and buffers at: in-place updates (copy_,
    load_state_dict, an EMA swap) keep them, a tensor rebound to new storage (`p.data = t`, .to(), .double())
    changes them and needs a new recording. () for a plain function model(x, labels), which has none."""
    if not isinstance(model, torch.nn.Module):
        return ()
    return tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))


def record_graph(body, stream, pool=None):
    """A CUDA graph of body() recorded on `stream` (from capture_stream; its device is the graph's): nothing runs,
    so body's in-place side effects on the device happen only at replay. Every kernel body launches must already be
    compiled and loaded (a torch.compile'd function compiled, Triton kernels JIT-compiled) by a call outside.
    `pool`: another graph's memory pool to share (graphs replayed one after the other, in recording order)."""
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        body()
    return graph


class _Mode(TorchDispatchMode):
    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.monitor._record(func, args, kwargs, out)
        return out


def _storages(tree) -> set[int]:
    found = set()
    for t in torch.utils._pytree.tree_leaves(tree):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            try:
                found.add(t.untyped_storage().data_ptr())
            except (RuntimeError, NotImplementedError):
                pass
    return found


class CaptureMonitor:
    """Counts host syncs and fresh-storage tensors created outside the model, per sampler step (see module doc)."""

    def __init__(self, raise_on_sync: bool = False):
        self.raise_on_sync = raise_on_sync
        self.step = 0
        self.steps = 0  # step boundaries seen
        self.syncs: list[tuple[int, str]] = []  # (step, what)
        self.allocations: dict[int, int] = {}  # step -> count
        self._in_model = 0
        self._mode = _Mode(self)
        self._patches = contextlib.ExitStack()

    # -- what the loop and the model wrapper call
    def _next_step(self) -> None:
        self.step += 1
        self.steps += 1

    def wrap_model(self, model):
        """`model` with its calls excluded from the counts (its own syncs and allocations are not the sampler's)."""
        monitor = self

        class _Excluded(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = model

            def forward(self, *args, **kwargs):
                monitor._in_model += 1
                try:
                    return self.inner(*args, **kwargs)
                finally:
                    monitor._in_model -= 1

        return _Excluded()

    def _sync(self, what: str) -> None:
        if self._in_model:
            return
        self.syncs.append((self.step, what))
        if self.raise_on_sync:
            raise HostSyncError(f"host sync in a capture-safe loop at step {self.step}: {what}")

    def _record(self, func, args, kwargs, out) -> None:
        name = func._schema.name if hasattr(func, "_schema") else str(func)
        if self._in_model:
            return
        if name in _SYNC_OPS:
            self._sync(name)
        elif name in ("aten::_to_copy", "aten::copy_", "aten::to"):
            src = args[0] if name != "aten::copy_" else args[1]
            dst = out if name != "aten::copy_" else args[0]
            if (isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor) and src.device.type != "cpu"
                    and dst.device.type == "cpu"):
                self._sync(f"{name} {src.device}->cpu")
        fresh = _storages(out) - _storages((args, kwargs))
        if fresh:
            self.allocations[self.step] = self.allocations.get(self.step, 0) + len(fresh)

    # -- results
    def syncs_after(self, step: int) -> list[tuple[int, str]]:
        """The host syncs recorded in steps > `step` (step 0 is set-up before the first step boundary)."""
        return [s for s in self.syncs if s[0] > step]

    def allocations_after(self, step: int) -> int:
        """Fresh-storage tensors the sampler created outside the model in steps > `step`."""
        return sum(n for k, n in self.allocations.items() if k > step)

    def __enter__(self):
        monitor = self
        for attr in ("tolist", "numpy"):
            original = getattr(torch.Tensor, attr)

            def patched(t, *a, _original=original, _attr=attr, **k):
                monitor._sync(f"Tensor.{_attr}")
                return _original(t, *a, **k)

            self._patches.enter_context(_patch(torch.Tensor, attr, patched))
        _ACTIVE.append(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        _ACTIVE.remove(self)
        self._patches.close()
        return False


@contextlib.contextmanager
def _patch(owner, attr, value):
    original = getattr(owner, attr)
    setattr(owner, attr, value)
    try:
        yield
    finally:
        setattr(owner, attr, original)
