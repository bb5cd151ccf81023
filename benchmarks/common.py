"""Timing, the copy-bandwidth floor, the device description and the record format every suite reports.

A record: {"suite", "case", "backend", "numel", "median_ms", "gbps", "copy_gbps", "bandwidth_fraction",
"baselines": {"reference": ms, "eager_inplace": ms, "compile": ms}, "speedup": {name: baseline_ms / median_ms}}
(None where a baseline does not apply). All numbers of one report come from the same run. The end-to-end and U-Net
records time several compiled peers (COMPILE_PEERS, each a baseline of its own): their "compile" is the fastest,
named in the record's "compile_peer".

On a CUDA device (`--device cuda`) a record has the same fields plus: "device" (the GPU, its clocks, the torch,
CUDA and Triton versions: device_info), "timing" ("cuda_events"), "tflops" (achieved TFLOP/s where the case is
compute-bound, else None), and the baseline "compile_reduce_overhead" (torch.compile with CUDA graphs). CPU records
are unchanged.

Smoke mode (`fastsde bench SUITE --smoke`, `with common.smoke():`, what CI's tests run): every timed function runs
once, with no warm-up, and the copy-bandwidth floor is taken on 64 K elements; the suites shrink their sizes where
they read `smoke_mode()`. It checks that a suite runs and writes its records in seconds on any CPU (bf16 emulated
included); its numbers mean nothing and are marked so (record field "smoke": true).

Timing. CPU: wall time (time.perf_counter) of each call, median over `reps`. CUDA: after the warm-up and a
synchronize, each call is bracketed by CUDA events, with a 256 MB buffer overwritten before it (outside the
events) so that no call finds its inputs in the L2 cache left by the previous one; median over `reps`.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import statistics
import subprocess
import time
from typing import Callable

import torch

__all__ = ["median_ms", "interleaved_ms", "pedantic", "compile_peers", "set_compile_peers", "fastest_peer",
           "graphs_model", "COMPILE_PEERS", "FP32_PEERS", "Autocast", "Frozen", "run_suite", "suite_compiles",
           "compiled_ms", "copy_bandwidth_gbps", "record", "print_table", "write_json", "get_device", "device_info",
           "is_cuda", "set_baseline", "smoke", "smoke_mode", "COPY_NUMEL", "L2_FLUSH_BYTES"]

COPY_NUMEL = 16 * 1024 * 1024  # float32 elements of the copy-bandwidth floor (64 MB: past the L2 of any GPU here)
L2_FLUSH_BYTES = 256 * 1024 * 1024  # written before each timed CUDA call: more than any GPU's L2


SMOKE_COPY_NUMEL = 64 * 1024
_SMOKE = [False]


@contextlib.contextmanager
def smoke(on: bool = True):
    """Smoke mode inside the block (module docstring): one untimed-quality call per measurement, no warm-up."""
    before = _SMOKE[0]
    _SMOKE[0] = bool(on)
    try:
        yield
    finally:
        _SMOKE[0] = before


def smoke_mode() -> bool:
    """Whether the suites run in smoke mode (sizes shrink, every measurement is one call)."""
    return _SMOKE[0]


def get_device(name: str = "cpu") -> torch.device:
    """torch.device for a --device value; RuntimeError (one line) when CUDA is asked for and torch sees none."""
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise RuntimeError(f"--device cuda: no CUDA device is available (torch {torch.__version__}, {build})")
    return torch.device(name)


def is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


_FLUSH: dict[str, torch.Tensor] = {}


def _flush_buffer(device: str) -> torch.Tensor:
    """L2_FLUSH_BYTES on `device`, allocated once (overwritten before each timed call on CUDA)."""
    buf = _FLUSH.get(device)
    if buf is None or buf.numel() != L2_FLUSH_BYTES:
        buf = _FLUSH[device] = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    return buf


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2, device=None) -> float:
    """Median time of fn() in milliseconds over `reps` runs after `warmup` runs (module docstring: CPU wall time,
    CUDA events on a cold L2). Smoke mode: one call, no warm-up. Under pytest-benchmark (pedantic()), the first
    timing call of a test runs through its fixture."""
    return interleaved_ms({"fn": fn}, reps, warmup, device, _failures=False)["fn"]


def interleaved_ms(fns: dict, reps: int, warmup: int = 1, device=None, _failures: bool = True) -> dict:
    """Median ms of each fn in `fns` (name -> fn), the reps run round-robin (A B C A B C ...) so that a slow spell
    of a shared machine falls on every contender alike: ratios from one run stay comparable. A contender whose
    warm-up raises gets None (the reason printed), never another measurement. CPU: wall time of each call; CUDA:
    each call bracketed by CUDA events, with the L2 flush buffer overwritten before it (outside the events). Smoke
    mode: one call of each, no warm-up.

    Under pytest-benchmark (inside `pedantic(benchmark)`, benchmarks/test_suites.py) the first timing call of the
    test times its first contender through benchmark.pedantic, one round per round-robin round, the other
    contenders running in the round's setup: the same calls in the same order, pytest-benchmark's statistics
    holding the first contender's times."""
    if _SMOKE[0]:
        reps, warmup = 1, 0
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            live[name] = fn
        except Exception as exc:  # reported missing, never replaced
            if not _failures:
                raise
            print(f"  ({name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    timer = _Timer(device)
    names = list(live)
    fixture, _PEDANTIC[0] = _PEDANTIC[0], None
    if fixture is not None and names:
        first, rest = names[0], names[1:]

        def others():
            for name in rest:
                timer.time(name, live[name])
        def target():  # on CUDA pytest-benchmark's wall time waits for the GPU; the record keeps the events
            timer.time(first, live[first])
            if timer.cuda:
                torch.cuda.synchronize(device)
        fixture.pedantic(target, setup=others, rounds=reps, iterations=1)
    else:
        for _ in range(reps):
            for name in names:
                timer.time(name, live[name])
    times = timer.medians()
    return {name: times.get(name) for name in fns}


class _Timer:
    """Times calls by name: wall time on the CPU; CUDA events (L2 flushed before each call) read after one final
    synchronize on CUDA."""

    def __init__(self, device):
        self.cuda = is_cuda(device)
        self.device = device
        self.flush = _flush_buffer(str(torch.device(device))) if self.cuda else None
        self.calls: dict[str, list] = {}
        if self.cuda:
            torch.cuda.synchronize(device)

    def time(self, name: str, fn: Callable[[], object]) -> None:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.flush.fill_(1)
            start.record()
            fn()
            end.record()
            self.calls.setdefault(name, []).append((start, end))
            return
        t0 = time.perf_counter()
        fn()
        self.calls.setdefault(name, []).append(1e3 * (time.perf_counter() - t0))

    def medians(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return {k: statistics.median(s.elapsed_time(e) for s, e in v) for k, v in self.calls.items()}
        return {k: statistics.median(v) for k, v in self.calls.items()}


_PEDANTIC: list = [None]


@contextlib.contextmanager
def pedantic(benchmark):
    """Route the first timing call (median_ms / interleaved_ms) inside the block through the pytest-benchmark
    fixture `benchmark` (interleaved_ms). Timing calls after it, and copy_bandwidth_gbps, time as usual."""
    _PEDANTIC[0] = benchmark
    try:
        yield
    finally:
        _PEDANTIC[0] = None


def compiled_ms(fn: Callable, reps: int, args: tuple = (), device=None, mode: str | None = None) -> float | None:
    """Median ms of torch.compile(fn, mode=mode)(*args) after warm-up (which includes compiling); None if it cannot
    run. mode="reduce-overhead" (CUDA graphs) marks a new step before each call, as an inference loop does.

    A baseline that cannot run is reported as missing (with the reason printed), never hidden or replaced.
    """
    try:
        compiled = torch.compile(fn, dynamic=False, mode=mode)
        if mode == "reduce-overhead":
            def call():
                torch.compiler.cudagraph_mark_step_begin()
                return compiled(*args)
        else:
            def call():
                return compiled(*args)
        with torch.no_grad():
            return median_ms(call, reps, warmup=1 if _SMOKE[0] else 3, device=device)
    except Exception as exc:
        label = "torch.compile" if mode is None else f"torch.compile(mode={mode!r})"
        print(f"  ({label} baseline failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return None


# The torch.compile peers of a model (the strongest peer a user has, in every end-to-end and U-Net table): name ->
# (autocast dtype or None, Inductor freezing). Freezing (torch._inductor.config.freezing, under no_grad) folds the
# weights into the graph as constants: constant folding, oneDNN weight prepacking, conv + bias fusion on the CPU.
COMPILE_PEERS = {"compile_fp32": (None, False), "compile_fp32_frozen": (None, True),
                 "compile_bf16_autocast": (torch.bfloat16, False),
                 "compile_bf16_autocast_frozen": (torch.bfloat16, True)}
FP32_PEERS = ("compile_fp32", "compile_fp32_frozen")


class Autocast(torch.nn.Module):
    """model(*args) under torch.autocast(dtype) on the device of its first argument: compiled, the autocast is
    traced into the graph."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x, *args):
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x, *args)


class Frozen:
    """A torch.compile'd callable run with torch._inductor.config.freezing on: Dynamo reads the flag while it traces
    (parameters become graph constants only then; torch.compile's options= reaches Inductor alone), so every call,
    a recompilation included, runs under it. Freezing applies under torch.no_grad and assumes the weights never
    change afterwards (constant-folded copies of them are not updated): for benchmarks on fixed weights."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args):
        with torch._inductor.config.patch(freezing=True):
            return self.compiled(*args)


def compile_peers(model: torch.nn.Module, names=tuple(COMPILE_PEERS)) -> dict:
    """name -> torch.compile'd form of `model` for each peer of COMPILE_PEERS in `names` (compiled at its first
    call, which must run under torch.no_grad for the frozen ones; fixed shapes)."""
    out = {}
    for name in names:
        dtype, frozen = COMPILE_PEERS[name]
        wrapped = model if dtype is None else Autocast(model, dtype)
        compiled = torch.compile(wrapped, dynamic=False, options={"freezing": True} if frozen else None)
        out[name] = Frozen(compiled) if frozen else compiled
    return out


def graphs_model(model):
    """torch.compile(model, mode="reduce-overhead") (CUDA graphs) for a caller that consumes each output before the
    next call: a new step is marked before each call."""
    compiled = torch.compile(model, dynamic=False, mode="reduce-overhead")

    def call(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return compiled(*args)
    return call


def fastest_peer(times: dict, names) -> tuple[str | None, float | None]:
    """(name, ms) of the fastest of `names` that ran (times[name] not None), or (None, None)."""
    ran = [(times[name], name) for name in names if times.get(name) is not None]
    if not ran:
        return None, None
    ms, name = min(ran)
    return name, ms


def set_compile_peers(rec: dict, times: dict, names) -> None:
    """Record each compiled peer of `names` as a baseline and the fastest of them as "compile", named in
    rec["compile_peer"] (None when none ran)."""
    for name in names:
        set_baseline(rec, name, times.get(name))
    rec["compile_peer"], ms = fastest_peer(times, names)
    set_baseline(rec, "compile", ms)


def suite_compiles(module) -> bool:
    """Whether a suite's run() takes use_compile (has torch.compile baselines)."""
    return "use_compile" in inspect.signature(module.run).parameters


def run_suite(module, quick: bool, backend: str, device, use_compile: bool = True) -> list[dict]:
    """A suite's records: module.run(...) as `fastsde bench SUITE` and `pytest benchmarks` call it (use_compile
    passed where the suite has compile baselines)."""
    kwargs = {"use_compile": use_compile} if suite_compiles(module) else {}
    return module.run(quick=quick, backend=backend, device=device, **kwargs)


def copy_bandwidth_gbps(numel: int = COPY_NUMEL, reps: int = 15, device=None) -> float:
    """y.copy_(x) on `numel` float32 on `device`: 8 B per element moved (read + write), as GB/s (smoke mode: on
    SMOKE_COPY_NUMEL elements)."""
    if _SMOKE[0]:
        numel = min(numel, SMOKE_COPY_NUMEL)
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    fixture, _PEDANTIC[0] = _PEDANTIC[0], None  # the floor is not the test's measurement
    try:
        ms = median_ms(lambda: y.copy_(x), reps, device=device)
    finally:
        _PEDANTIC[0] = fixture
    return 8 * numel / (ms * 1e-3) / 1e9


def _nvidia_smi_clocks(index: int) -> dict | None:
    """Current and maximum SM/memory clocks (MHz), power (W) and temperature (C) from nvidia-smi; None when
    nvidia-smi is missing or says nothing usable (never raises)."""
    fields = ("clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "power.draw", "temperature.gpu")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits",
                              "-i", str(index)], capture_output=True, text=True, timeout=15)
        values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    except Exception:  # no nvidia-smi, a timeout, no output: the record says None
        return None
    if out.returncode != 0 or len(values) != len(fields):
        return None

    def number(v):
        try:
            return float(v)
        except ValueError:
            return None
    return {k.replace(".", "_"): number(v) for k, v in zip(fields, values)}


@functools.lru_cache(maxsize=None)
def device_info(device: str) -> dict:
    """What ran the measurements: the GPU (name, compute capability, SMs, memory, L2, clocks at the first call of
    this process), torch, CUDA and Triton versions, and whether float32 matmuls may use TF32."""
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # triton missing or broken: recorded, not fatal
        triton_version = None
    return {
        "type": "cuda",
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "l2_mib": (round(props.L2_cache_size / 2**20, 1) if getattr(props, "L2_cache_size", None) else None),
        "clocks": _nvidia_smi_clocks(index),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
    }


def record(suite, case, backend, numel, median, bytes_per_elem, copy_gbps, baselines: dict, *, device=None,
           flops: float | None = None) -> dict:
    """One result row; bandwidth fields are None when bytes_per_elem is None (not a streaming op). On CUDA the row
    also carries device, timing and tflops (flops: floating-point operations of one call, None when not
    compute-bound)."""
    gbps = None if bytes_per_elem is None else bytes_per_elem * numel / (median * 1e-3) / 1e9
    if is_cuda(device):
        baselines = {**baselines, "compile_reduce_overhead": baselines.get("compile_reduce_overhead")}
    out = {
        "suite": suite,
        "case": case,
        "backend": backend,
        "numel": numel,
        "median_ms": round(median, 4),
        "gbps": None if gbps is None else round(gbps, 2),
        "copy_gbps": round(copy_gbps, 2),
        "bandwidth_fraction": None if gbps is None else round(gbps / copy_gbps, 3),
        "baselines": {k: (None if v is None else round(v, 4)) for k, v in baselines.items()},
        "speedup": {k: (None if v is None else round(v / median, 2)) for k, v in baselines.items()},
    }
    if is_cuda(device):
        out["tflops"] = None if flops is None else float(f"{flops / (median * 1e-3) / 1e12:.4g}")
        out["timing"] = "cuda_events"
        out["device"] = device_info(str(torch.device(device)))
    if _SMOKE[0]:
        out["smoke"] = True  # one untimed-quality call: the numbers mean nothing
    return out


def set_baseline(rec: dict, name: str, ms: float | None) -> None:
    """Fill baseline `name` of a record (measured after the record was made) and its speedup."""
    rec["baselines"][name] = None if ms is None else round(ms, 4)
    rec["speedup"][name] = None if ms is None else round(ms / rec["median_ms"], 2)


def print_table(records: list[dict]) -> None:
    """A table a person can read: time, bandwidth and the ratio to each baseline, with the compiled peer "x compile"
    divides by where records name one (CUDA: TFLOP/s and the ratio to torch.compile with CUDA graphs too)."""
    cuda = any("device" in r for r in records)
    peers = any("compile_peer" in r for r in records)
    head = f"{'case':<28}{'backend':<9}{'ms':>10}{'GB/s':>8}{'of copy':>9}{'x ref':>8}{'x eager':>9}{'x compile':>11}"
    if peers:
        head += f"  {'compile peer':<21}"
    if cuda:
        head += f"{'x c-graphs':>12}{'TFLOP/s':>9}"
    print(head)
    print("-" * len(head))

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in records:
        sp = r["speedup"]
        line = (f"{r['case']:<28}{r['backend']:<9}{r['median_ms']:>10.3f}{fmt(r['gbps'], '.1f'):>8}"
                f"{fmt(r['bandwidth_fraction'], '.2f'):>9}{fmt(sp.get('reference'), '.2f'):>8}"
                f"{fmt(sp.get('eager_inplace'), '.2f'):>9}{fmt(sp.get('compile'), '.2f'):>11}")
        if peers:  # the fastest compiled peer the "x compile" column divides by (COMPILE_PEERS, "compile_" dropped)
            line += f"  {(r.get('compile_peer') or '-').removeprefix('compile_'):<21}"
        if cuda:
            line += f"{fmt(sp.get('compile_reduce_overhead'), '.2f'):>12}{fmt(r.get('tflops'), '.2f'):>9}"
        print(line)
    if records:
        print(f"copy bandwidth (y.copy_(x), 16M float32, same run): {records[0]['copy_gbps']:.1f} GB/s")
    if cuda:
        d = records[0]["device"]
        clocks = d.get("clocks") or {}
        print(f"device: {d['name']} (sm_{d['capability'].replace('.', '')}, {d['sm_count']} SMs), torch {d['torch']}, "
              f"CUDA {d['cuda']}, triton {d['triton']}, SM clock {clocks.get('clocks_sm', '?')} MHz "
              f"(max {clocks.get('clocks_max_sm', '?')}); timed with CUDA events on a cold L2")


def write_json(records: list[dict], path: str) -> None:
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
