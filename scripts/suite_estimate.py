"""Estimate the pytest phase on another CPU kind from two per-test time files (tests/conftest.py,
FASTSDE_TEST_TIMES): one from a plain run on this CPU, one from a run under scripts/emulate_cpu.sh.

    FASTSDE_TEST_TIMES=/tmp/here.json .venv/bin/python -m pytest tests -q
    FASTSDE_TEST_TIMES=/tmp/avx2.json scripts/emulate_cpu.sh avx2 .venv/bin/python -m pytest tests -q
    python scripts/suite_estimate.py /tmp/here.json /tmp/avx2.json

Each test's estimated wall time there is its wall time here times the ratio of its CPU seconds (CPU seconds hardly
move when other work shares the cores; wall seconds do). Prints the total and the 20 tests that cost most there.
"""
from __future__ import annotations

import json
import sys


def estimate(here: dict, there: dict) -> list[tuple[str, float, float, float]]:
    """[(test, wall here, estimated wall there, cpu ratio)] for the tests of `here` (ratio 1 for a test missing
    from `there` or too short to time)."""
    rows = []
    for test, h in here.items():
        t = there.get(test)
        ratio = 1.0
        if t is not None and h["cpu_s"] > 0.05:
            ratio = t["cpu_s"] / h["cpu_s"]
        rows.append((test, h["wall_s"], h["wall_s"] * ratio, ratio))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python scripts/suite_estimate.py HERE.json THERE.json", file=sys.stderr)
        return 2
    here, there = (json.load(open(p)) for p in argv)
    rows = estimate(here, there)
    total_here, total_there = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{len(rows)} tests: {total_here / 60:.1f} min here, {total_there / 60:.1f} min estimated there "
          f"(x{total_there / max(total_here, 1e-9):.2f})")
    print(f"{'est. there (s)':>14} {'here (s)':>9} {'cpu ratio':>9}  test")
    for test, wall, est, ratio in sorted(rows, key=lambda r: -r[2])[:20]:
        print(f"{est:14.1f} {wall:9.1f} {ratio:9.2f}  {test}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
