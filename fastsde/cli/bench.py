"""`fastsde bench SUITE`: the benchmark suites of fastsde.benchmarks, as a table and JSON records."""
from __future__ import annotations

import argparse
import importlib
import json

import torch

from fastsde.cli.common import (AtomicOutputs, UsageError, check_output_file, check_output_stem, positive_int,
                                thread_count)

__all__ = ["add_arguments", "run", "SUITES", "suite_module"]


_BENCH_MODULES = {"steps": "step", "sampler": "sampler", "attention": "attention", "unet": "unet",
                  "groupnorm": "groupnorm", "e2e": "e2e", "distributed": "distributed",
                  "diffusers": "diffusers", "likelihood": "likelihood"}  # suite -> bench_<module>
SUITES = tuple(_BENCH_MODULES)


def suite_module(suite: str) -> str:
    """The module of a suite: fastsde.benchmarks.bench_<name> (its run() is what `fastsde bench SUITE` and
    `pytest benchmarks` call)."""
    return f"fastsde.benchmarks.bench_{_BENCH_MODULES[suite]}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=SUITES, metavar="SUITE",
                   help=f"which suite to run: {', '.join(SUITES)}")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a rough number in less time)")
    p.add_argument("--smoke", action="store_true",
                   help="check that the suite runs and writes its records, in seconds: one call per measurement, "
                        "no warm-up, the smallest sizes; the numbers mean nothing (records say \"smoke\": true)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the records as a JSON list to PATH")
    p.add_argument("--backend", choices=("native", "triton"), default="native",
                   help="the fused backend to measure")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the tensors live: cpu (wall time) or cuda (CUDA events after warm-up; the records "
                        "gain the GPU's name, clocks and versions)")
    p.add_argument("--threads", type=thread_count, default=2, help="torch/OpenMP threads for every measurement")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--tradeoff", metavar="STEM", default=None,
                   help="e2e only: also measure quality vs time across PC step counts and ODE tolerances and write "
                        "STEM.json and STEM.png")
    p.add_argument("--n", type=positive_int, default=None,
                   help="e2e only: images per --tradeoff run and seed (default: 359, every test digit; the timed "
                        "case is always 64)")


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.suite != "e2e" and (args.tradeoff or args.n):
        raise UsageError("--tradeoff and --n apply to the e2e suite only")
    if args.tradeoff and args.device != "cpu":
        raise UsageError(f"--tradeoff measures on the CPU only, got --device {args.device}")
    if args.json is not None:  # outputs are checked before minutes of measurements
        check_output_file(args.json, "--json")
    if args.tradeoff is not None:
        check_output_stem(args.tradeoff, (".json", ".png"), "--tradeoff")
    torch.set_num_threads(args.threads)
    from fastsde.benchmarks import common
    from fastsde.benchmarks.common import get_device, print_table, write_json
    from fastsde.ops.dispatch import backend_available

    device = get_device(args.device)  # no GPU: one line, before any work
    usable, why = backend_available(args.backend, device)
    if not usable:
        raise UsageError(f"--backend {args.backend} cannot run here: {why}")
    module = importlib.import_module(suite_module(args.suite))
    if args.no_compile and not common.suite_compiles(module):
        raise UsageError(f"--no-compile: the {args.suite} suite has no torch.compile baseline")
    where = f"{args.threads} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    smoke = " (smoke mode: one call per measurement, the numbers mean nothing)" if args.smoke else ""
    print(f"fastsde bench {args.suite}: float32, {where}, backend {args.backend}{smoke}", flush=True)
    with common.smoke(args.smoke):
        records = common.run_suite(module, quick=args.quick or args.smoke, backend=args.backend, device=device,
                                   use_compile=not args.no_compile)
    print()
    print_table(records)
    if args.json:
        with AtomicOutputs() as files:
            write_json(records, files.path(args.json))
        print(f"wrote {args.json}")
    if args.tradeoff:
        from fastsde.benchmarks import bench_e2e

        print("quality vs time (fastsde native):", flush=True)
        with common.smoke(args.smoke):
            result = bench_e2e.tradeoff(n=args.n or 359, backend=args.backend)
        with AtomicOutputs() as files:
            with open(files.path(args.tradeoff + ".json"), "w") as f:
                json.dump(result, f, indent=1)
            bench_e2e.plot_tradeoff(result, files.path(args.tradeoff + ".png"))
        print(f"wrote {args.tradeoff}.json, {args.tradeoff}.png")
    return 0


