"""Estimate the pytest phase on another CPU kind from two per-test time files (tests/conftest.py,
FASTSDE_TEST_TIMES): one from a plain run on this CPU, one from a run under scripts/emulate_cpu.sh.

    FASTSDE_TEST_TIMES=/tmp/here.json .venv/bin/python -m pytest tests -q
    FASTSDE_TEST_TIMES=/tmp/avx2.json scripts/emulate_cpu.sh avx2 .venv/bin/python -m pytest tests -q
    python scripts/suite_estimate.py /tmp/here.json /tmp/avx2.json

Each test's estimated wall time there is its wall time here times the ratio of its CPU seconds. CPU seconds move
less than wall seconds when other work shares the cores, but they do move (OpenMP waits, shared caches): make both
runs on an idle machine. Prints the total and the 20 tests that cost most there.
"""
from __future__ import annotations

import json
import math
import statistics
import sys


def estimate(here: dict, there: dict) -> tuple[list[tuple[str, float, float, float]], float, int]:
    """([(test, wall here, estimated wall there, cpu ratio)] for the tests of `here`, the median ratio, how many
    tests were missing from `there`). A test missing from `there` (added since that run) gets the median ratio of the
    others; a test too short to time (< 0.05 CPU s here) gets 1."""
    ratios = {test: there[test]["cpu_s"] / h["cpu_s"] for test, h in here.items()
              if test in there and h["cpu_s"] > 0.05 and there[test]["cpu_s"] > 0}
    median = statistics.median(ratios.values()) if ratios else 1.0
    rows, missing = [], 0
    for test, h in here.items():
        if test not in there:
            missing += 1
        ratio = ratios.get(test, median if test not in there else 1.0)
        rows.append((test, h["wall_s"], h["wall_s"] * ratio, ratio))
    return rows, median, missing


def read_times(path: str) -> dict:
    """A FASTSDE_TEST_TIMES file: {test: {"wall_s": s, "cpu_s": s}} with finite, non-negative seconds, at least one
    test; ValueError (one line, naming the file) otherwise."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a JSON file ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object of tests, got {type(data).__name__}")
    for test, times in data.items():
        ok = isinstance(times, dict) and all(
            isinstance(times.get(k), (int, float)) and not isinstance(times.get(k), bool)
            and math.isfinite(times[k]) and times[k] >= 0 for k in ("wall_s", "cpu_s"))
        if not ok:
            raise ValueError(f"{path}: test {test!r} needs finite wall_s and cpu_s >= 0, got {times!r}")
    return data


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/suite_estimate.py HERE.json THERE.json", file=sys.stderr)
        return 2
    try:
        here, there = (read_times(p) for p in argv)
    except ValueError as exc:
        print(f"suite_estimate: {exc}", file=sys.stderr)
        return 2
    rows, median, missing = estimate(here, there)
    total_here, total_there = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{len(rows)} tests: {total_here / 60:.1f} min here, {total_there / 60:.1f} min estimated there "
          f"(x{total_there / max(total_here, 1e-9):.2f}; median CPU ratio {median:.2f}, given to the {missing} tests "
          f"missing there)")
    print(f"{'est. there (s)':>14} {'here (s)':>9} {'cpu ratio':>9}  test")
    for test, wall, est, ratio in sorted(rows, key=lambda r: -r[2])[:20]:
        print(f"{est:14.1f} {wall:9.1f} {ratio:9.2f}  {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
