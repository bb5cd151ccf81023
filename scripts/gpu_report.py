"""The GPU check's summary as markdown: its phases (OUTDIR/phases.tsv), the device that ran the benchmarks, and every
benchmark record (OUTDIR/bench/*.json) with its time, bandwidth, TFLOP/s and ratio to each baseline.

    python scripts/gpu_report.py OUTDIR                   print the summary
    python scripts/gpu_report.py OUTDIR --doc docs/gpu.md  also write it into the doc between its results markers
    python scripts/gpu_report.py --env                    print the Python, torch, triton and GPUs (gpu_check's env)

Reads files only (the standard library; --env imports torch): it runs wherever the records were copied to.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys

BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
# (record key, column title, format): the speedup columns are baseline_ms / median_ms (> 1: fastsde is faster)
SPEEDUPS = [("reference", "x ref"), ("eager_inplace", "x eager"), ("compile", "x compile"),
            ("compile_reduce_overhead", "x compile+graphs")]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def read_phases(outdir: str) -> list[dict]:
    path = os.path.join(outdir, "phases.tsv")
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_records(outdir: str) -> list[dict]:
    """Every record of OUTDIR/bench/*.json, in file-name order; a file that is not a JSON list is reported."""
    records = []
    for path in sorted(glob.glob(os.path.join(outdir, "bench", "*.json"))):
        try:
            with open(path) as f:
                rows = json.load(f)
            if not isinstance(rows, list):
                raise ValueError(f"expected a JSON list, got {type(rows).__name__}")
        except (OSError, ValueError) as exc:
            print(f"gpu_report: skipping {path}: {exc}", file=sys.stderr)
            continue
        records += rows
    return records


def read_junit(outdir: str) -> dict | None:
    """The CUDA tests' outcome from OUTDIR/pytest_cuda.xml (pytest's junit XML): counts, seconds and the failing
    tests with the first line of their message; None when the file is missing, {"error": ...} when unreadable."""
    import xml.etree.ElementTree as ET

    path = os.path.join(outdir, "pytest_cuda.xml")
    if not os.path.exists(path):
        return None
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"error": f"{path}: {exc}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "seconds": 0.0, "failed": [], "slowest": []}
    for suite in suites:
        for key in ("tests", "failures", "errors", "skipped"):
            out[key] += int(suite.get(key, 0))
        out["seconds"] += float(suite.get("time", 0.0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            out["slowest"].append((float(case.get("time", 0.0)), name))
            for bad in list(case.findall("failure")) + list(case.findall("error")):
                msg = (bad.get("message") or bad.text or "").strip().splitlines()
                out["failed"].append((name, msg[0][:200] if msg else ""))
    out["slowest"] = sorted(out["slowest"], reverse=True)[:5]
    return out


def junit_lines(outdir: str) -> list[str]:
    j = read_junit(outdir)
    if j is None:
        return ["### CUDA tests", "", "no junit XML (the tests phase did not run)", ""]
    if "error" in j:
        return ["### CUDA tests", "", f"unreadable junit XML: {j['error']}", ""]
    passed = j["tests"] - j["failures"] - j["errors"] - j["skipped"]
    lines = ["### CUDA tests", "", f"{passed} passed, {j['failures']} failed, {j['errors']} errors, {j['skipped']} "
             f"skipped of {j['tests']} in {j['seconds']:.0f} s (pytest_cuda.xml).", ""]
    lines += [f"- FAILED {name}: {msg}" for name, msg in j["failed"]]
    if j["slowest"]:
        lines += ["", "Slowest: " + ", ".join(f"{name.rsplit('::', 1)[-1]} {t:.1f} s" for t, name in j["slowest"])]
    return lines + [""]


def device_line(records: list[dict]) -> str:
    """One line on what ran the benchmarks (from the first record that carries a device)."""
    for r in records:
        d = r.get("device")
        if d:
            clocks = d.get("clocks") or {}
            sm = clocks.get("clocks_sm")
            clock = (f", SM clock {sm:.0f} MHz (max {_fmt(clocks.get('clocks_max_sm'), '.0f')}), memory clock "
                     f"{_fmt(clocks.get('clocks_mem'), '.0f')} MHz" if sm is not None else ", clocks unknown")
            return (f"**{d['name']}** (compute capability {d['capability']}, {d['sm_count']} SMs, "
                    f"{d['memory_gib']} GiB){clock}; torch {d['torch']}, CUDA {d['cuda']}, triton {d['triton']}; "
                    f"TF32 matmul {'on' if d.get('tf32_matmul') else 'off'}; timed with {r.get('timing', '?')}")
    if records:
        return "the records carry no device: CPU measurements (a dry run, not GPU numbers)"
    return "no benchmark records"


def markdown(outdir: str) -> str:
    phases, records = read_phases(outdir), read_records(outdir)
    lines = ["### Phases", "", "| phase | status | seconds |", "|---|---|---:|"]
    lines += [f"| {p['phase']} | {p['status']} | {p['seconds']} |" for p in phases] or ["| (none) | | |"]
    total = sum(int(p["seconds"] or 0) for p in phases)
    lines += ["", f"The phases took {total} s in all.", ""] + junit_lines(outdir)
    lines += ["### Benchmarks", "", device_line(records), ""]
    if records:
        head = ["suite", "case", "backend", "ms", "GB/s", "of copy", "TFLOP/s"] + [t for _, t in SPEEDUPS]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
        for r in records:
            sp = r.get("speedup", {})
            cells = [r["suite"], r["case"], r["backend"], _fmt(r["median_ms"], ".4g"), _fmt(r.get("gbps"), ".0f"),
                     _fmt(r.get("bandwidth_fraction"), ".2f"), _fmt(r.get("tflops"), ".2f")]
            cells += [_fmt(sp.get(k), ".2f") for k, _ in SPEEDUPS]
            lines.append("| " + " | ".join(cells) + " |")
        copies = sorted({(r["suite"], r["copy_gbps"]) for r in records})
        lines += ["", "Copy floor (y.copy_(x), 16M float32, measured in each suite's run), GB/s: "
                  + ", ".join(f"{s} {c:.0f}" for s, c in copies) + "."]
        diffs = [f"{r['case']} {r['max_abs_diff']:.1e}" for r in records if "max_abs_diff" in r]
        if diffs:
            lines.append("End to end, max |fastsde - reference| on the same noise: " + ", ".join(diffs) + ".")
        skipped = [f"{r['case']}_{k}: {why}" for r in records for k, why in (r.get("skipped") or {}).items()]
        if skipped:
            lines.append("Not measured: " + "; ".join(skipped) + ".")
    return "\n".join(lines) + "\n"


def write_doc(doc: str, text: str) -> None:
    """Replace what lies between the results markers of `doc` by `text`."""
    with open(doc) as f:
        content = f.read()
    if BEGIN not in content or END not in content or content.index(BEGIN) > content.index(END):
        raise SystemExit(f"gpu_report: {doc} has no '{BEGIN}' ... '{END}' section")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(doc, "w") as f:
        f.write(f"{head}{BEGIN}\n{text}{END}{tail}")


def print_env() -> None:
    import torch

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"GPUs {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except Exception as exc:  # reported, not fatal
        print(f"triton unavailable: {type(exc).__name__}: {exc}")
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        print(f"cuda:{i} {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.1f} GiB")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", nargs="?", help="the OUTDIR of scripts/gpu_check.sh")
    parser.add_argument("--doc", help="also write the summary into this markdown file's results section")
    parser.add_argument("--env", action="store_true", help="print the Python, torch, triton and GPUs, and exit")
    args = parser.parse_args(argv)
    if args.env:
        print_env()
        return 0
    if args.outdir is None:
        parser.error("OUTDIR is required (or --env)")
    if not os.path.isdir(args.outdir):
        parser.error(f"OUTDIR must be a directory, got {args.outdir!r}")
    text = markdown(args.outdir)
    print(text, end="")
    if args.doc:
        write_doc(args.doc, text)
        print(f"gpu_report: wrote the results into {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
