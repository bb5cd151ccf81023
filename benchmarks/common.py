"""Timing, the copy-bandwidth floor, and the record format every suite reports.

A record: {"suite", "case", "backend", "numel", "median_ms", "gbps", "copy_gbps", "bandwidth_fraction",
"baselines": {"reference": ms, "eager_inplace": ms, "compile": ms}, "speedup": {name: baseline_ms / median_ms}}
(None where a baseline does not apply). All numbers of one report come from the same run.
"""
from __future__ import annotations

import json
import statistics
import time
from typing import Callable

import torch

__all__ = ["median_ms", "compiled_ms", "copy_bandwidth_gbps", "record", "print_table", "write_json"]


def median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def compiled_ms(fn: Callable, reps: int, args: tuple = ()) -> float | None:
    """Median ms of torch.compile(fn)(*args) after warm-up (which includes compiling); None if it cannot run.

    A baseline that cannot run is reported as missing (with the reason printed), never hidden or replaced.
    """
    try:
        compiled = torch.compile(fn, dynamic=False)
        with torch.no_grad():
            return median_ms(lambda: compiled(*args), reps, warmup=3)
    except Exception as exc:
        print(f"  (torch.compile baseline failed: {type(exc).__name__}: {exc})")
        return None


def copy_bandwidth_gbps(numel: int = 16 * 1024 * 1024, reps: int = 15) -> float:
    """y.copy_(x) on `numel` float32: 8 B per element moved (read + write), as GB/s."""
    x = torch.randn(numel)
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), reps)
    return 8 * numel / (ms * 1e-3) / 1e9


def record(suite, case, backend, numel, median, bytes_per_elem, copy_gbps, baselines: dict) -> dict:
    """One result row; bandwidth fields are None when bytes_per_elem is None (not a streaming op)."""
    gbps = None if bytes_per_elem is None else bytes_per_elem * numel / (median * 1e-3) / 1e9
    return {
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


def print_table(records: list[dict]) -> None:
    """A table a person can read: time, bandwidth and the ratio to each baseline."""
    head = f"{'case':<28}{'backend':<9}{'ms':>10}{'GB/s':>8}{'of copy':>9}{'x ref':>8}{'x eager':>9}{'x compile':>11}"
    print(head)
    print("-" * len(head))

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    for r in records:
        sp = r["speedup"]
        print(f"{r['case']:<28}{r['backend']:<9}{r['median_ms']:>10.3f}{fmt(r['gbps'], '.1f'):>8}"
              f"{fmt(r['bandwidth_fraction'], '.2f'):>9}{fmt(sp.get('reference'), '.2f'):>8}"
              f"{fmt(sp.get('eager_inplace'), '.2f'):>9}{fmt(sp.get('compile'), '.2f'):>11}")
    if records:
        print(f"copy bandwidth (y.copy_(x), 16M float32, same run): {records[0]['copy_gbps']:.1f} GB/s")


def write_json(records: list[dict], path: str) -> None:
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
