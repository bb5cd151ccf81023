"""Every case of every suite of `fastsde bench` as a pytest-benchmark test: `pytest benchmarks --benchmark-only`.

One test per case: the suite's own run() (common.run_suite, as `fastsde bench SUITE` calls it) with its case lists
(module attributes named *CASES whose entries start with the case name) narrowed to that case, so the numbers come
from the same functions as `fastsde bench SUITE`. The first timing call of the case (common.median_ms /
interleaved_ms: the fused contender; where the suite times its contenders round-robin, the others run in each
round's setup) goes through benchmark.pedantic, with the harness's warm-up before it; pytest-benchmark's statistics
are that contender's per-round times (on CUDA, wall time to a synchronize; the record's median_ms is by CUDA
events). extra_info carries the case's records as `fastsde bench --json` writes them (median_ms, gbps, copy_gbps,
bandwidth_fraction, baselines, speedup, ...). A suite without case lists is one test.

The regression check a contributor runs before and after a kernel change: README ("Benchmarks as a regression check")
and docs/design.md (section 8, "pytest-benchmark").
"""
import importlib
import pathlib

import pytest


def _suites() -> dict:
    """Suite name -> module, for every benchmarks/bench_*.py with a run(): its SUITE, else the file name after
    bench_ (the suites `fastsde bench` lists; found here, since the benchmarks never import the command line)."""
    out = {}
    for path in sorted(pathlib.Path(__file__).parent.glob("bench_*.py")):
        module = importlib.import_module(f"fastsde.benchmarks.{path.stem}")
        if callable(getattr(module, "run", None)):
            out[getattr(module, "SUITE", path.stem.removeprefix("bench_"))] = module
    return out


SUITES = _suites()



def _case_lists(module) -> dict:
    return {k: v for k, v in vars(module).items() if k.endswith("CASES") and isinstance(v, list)
            and all(isinstance(c, tuple) and c and isinstance(c[0], str) for c in v)}


def _params():
    out = []
    for suite, module in SUITES.items():
        lists = _case_lists(module)
        names = [c[0] for cases in lists.values() for c in cases]
        out += [pytest.param(suite, name, id=f"{suite}-{name}") for name in names] or [pytest.param(suite, None,
                                                                                                     id=suite)]
    return out


@pytest.mark.parametrize("suite, case", _params())
def test_suite_case(suite, case, benchmark, bench_options, monkeypatch, request):
    from fastsde.benchmarks import common

    only = request.config.getoption("--bench-suite")
    if only and suite not in only:
        pytest.skip(f"--bench-suite {' '.join(only)}")
    module = SUITES[suite]
    if case is not None:
        for attr, cases in _case_lists(module).items():
            monkeypatch.setattr(module, attr, [c for c in cases if c[0] == case])
    benchmark.group = suite
    with common.smoke(bench_options["smoke"]), common.pedantic(benchmark):
        records = common.run_suite(module, quick=bench_options["quick"] or bench_options["smoke"],
                                   backend=bench_options["backend"], device=bench_options["device"],
                                   use_compile=bench_options["use_compile"])
    mine = [r for r in records if r.get("case", "").startswith(case)] if case is not None else records
    if not mine:  # e.g. --bench-quick runs one size per architecture
        pytest.skip(f"{suite}: case {case} not run with these options")
    main = mine[0]
    benchmark.extra_info.update({k: main.get(k) for k in ("case", "backend", "numel", "median_ms", "gbps",
                                                          "copy_gbps", "bandwidth_fraction", "baselines",
                                                          "speedup", "compile_peer", "precision", "smoke")
                                 if k in main})
    benchmark.extra_info["records"] = records
