"""Suite "distributed": the main job split across processes with fastsde.distributed on one machine.

digits_p1x2 / digits_p2x1: 64 digits from the shipped VP model with the default sampler (`fastsde sample`'s
settings), in micro-batches of 32, timed as 1 process x 2 threads and as 2 processes x 1 thread. Each is one real
launch, `python -m torch.distributed.run --standalone --nproc-per-node P -m fastsde.benchmarks.bench_distributed
--worker ...` with OMP_NUM_THREADS=T (gloo). The worker runs fastsde.distributed.sample once to warm up and then
`reps` times; rank 0 reports medians of
  sample_ms   first micro-batch started -> every shard on disk (the record's median_ms)
  merge_ms    rank 0 reads the shards, writes the final .npz, removes the shards
  collective_bytes_per_sample   all_reduce payload of all ranks / n (counts only; gloo's ring moves about
              2 (P - 1) / P of it per rank)
  shard_bytes_per_sample        bytes each sample costs on the shared filesystem (written once, read once)
and the driver checks that both configurations wrote the same bits (same_bits). A 2-core machine cannot show
scaling: the two configurations use the same two cores, so their ratio measures overheads (process start, shards,
merge), not speed-up. With S samples/s per GPU and the volumes above, P GPUs need P S (collective + shard) bytes/s
of interconnect and filesystem.

`batch_invariance()` measures what a different --batch changes: the largest |difference| of the same samples drawn
in micro-batches of each size against one batch of all n (the model's forward can depend on the batch shape).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import torch

from fastsde.benchmarks import common
from fastsde.benchmarks.common import record

SUITE = "distributed"
CONFIGS = ((1, 2), (2, 1))  # (processes, threads per process)


def _factory(mf, backend: str, steps: int, seed: int = 0, progress: bool = False):
    """sampler_factory(sample_ids) for fastsde.distributed.sample: the default digits sampler on those ids."""
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.digits.pretrained import DIGITS_DEFAULTS
    from fastsde.sampling import get_pc_sampler

    sde, inverse = mf.make_sde(N=steps), get_data_inverse_scaler(mf.centered)

    def factory(ids):
        sampler = get_pc_sampler(sde, (len(ids), 1, 16, 16), DIGITS_DEFAULTS["predictor"], DIGITS_DEFAULTS["corrector"],
                                 inverse, 0.16, continuous=True, eps=DIGITS_DEFAULTS["eps"], backend=backend,
                                 seed=seed, sample_ids=ids, progress=progress)
        return lambda: sampler(mf.model)[0].clamp(0.0, 1.0)
    return factory


def _model(backend: str):
    from fastsde.digits.pretrained import DIGITS_DEFAULTS, load_score_model, score_model_path

    return load_score_model(score_model_path("digits", "digits", DIGITS_DEFAULTS["sde"]), backend=backend)


def _worker(argv: list[str]) -> None:
    """One configuration, run by every rank under torchrun; rank 0 prints one JSON line."""
    from fastsde import distributed

    p = argparse.ArgumentParser()
    for name in ("n", "batch", "steps", "reps", "threads"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with distributed.session("cpu"):
        factory = _factory(_model(args.backend), args.backend, args.steps)
        results = []
        for rep in range(args.reps + 1):  # rep 0 warms up
            out = os.path.join(args.out, f"rep{rep}.npz")
            results.append(distributed.sample(factory, args.n, out, batch=args.batch, seed=0, progress=False))
        if distributed.rank() == 0:
            timed = results[1:]
            print(json.dumps({
                "sample_ms": 1e3 * statistics.median(r.sample_s for r in timed),
                "merge_ms": 1e3 * statistics.median(r.merge_s for r in timed),
                "collective_bytes_per_sample": distributed.world_size() * timed[-1].collective_bytes / args.n,
                "shard_bytes_per_sample": timed[-1].shard_bytes / args.n,
                "processes": distributed.world_size(), "threads": torch.get_num_threads()}), flush=True)


def _launch(processes: int, threads: int, n: int, batch: int, steps: int, reps: int, backend: str, out: str) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "fastsde.benchmarks.bench_distributed", "--", "--worker", "--n", str(n), "--batch", str(batch),
               "--steps", str(steps), "--reps", str(reps), "--threads", str(threads), "--backend", backend,
               "--out", out]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if result.returncode != 0:
        raise RuntimeError(f"{processes} x {threads} launch failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def batch_invariance(n: int = 64, batches=(16, 5), steps: int | None = None, backend: str = "native") -> dict:
    """{batch: max |x_batch - x_n|} for the default digits sampler: the same n samples in micro-batches of `batch`
    against one batch of n (FSN1 noise is the same; only the forward's dependence on the batch shape remains)."""
    from fastsde import distributed
    from fastsde.digits.pretrained import DIGITS_DEFAULTS

    factory = _factory(_model(backend), backend, steps or DIGITS_DEFAULTS["steps"])

    def draw(batch):
        with torch.no_grad():
            return torch.cat([factory(ids)() for _, ids in distributed.batches(n, batch, 0, 1)])

    whole = draw(n)
    return {int(b): float((draw(b) - whole).abs().max()) for b in batches}


def run(quick: bool = False, backend: str = "native", use_compile: bool = True, device: str = "cpu") -> list[dict]:
    from fastsde.digits.pretrained import DIGITS_DEFAULTS

    del use_compile  # no compiled baseline: the comparison is between process layouts
    if torch.device(device).type != "cpu":
        raise ValueError(f"the distributed suite runs gloo processes on the CPU, got device {device!r}")
    n, steps, reps = (8, 5, 1) if quick else (DIGITS_DEFAULTS["n"], DIGITS_DEFAULTS["steps"], 3)
    batch = n // 2
    copy_gbps = common.copy_bandwidth_gbps(reps=5)
    records, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes, threads in CONFIGS:
            out = os.path.join(tmp, f"p{processes}x{threads}")
            got = _launch(processes, threads, n, batch, steps, reps, backend, out)
            with np.load(os.path.join(out, f"rep{reps}.npz")) as data:
                outputs[(processes, threads)] = data["samples"]
            records.append((processes, threads, got))
    same = all(np.array_equal(outputs[CONFIGS[0]], x) for x in outputs.values())
    base_ms = records[0][2]["sample_ms"]
    result = []
    for processes, threads, got in records:
        case = f"digits_p{processes}x{threads}"
        print(f"  {case}: {got['sample_ms'] / 1e3:.2f} s for {n} digits ({1e3 * n / got['sample_ms']:.1f}/s), merge "
              f"{got['merge_ms']:.1f} ms, all_reduce {got['collective_bytes_per_sample']:.1f} B/sample, shards "
              f"{got['shard_bytes_per_sample']:.0f} B/sample, same bits as 1 process: {same}", flush=True)
        rec = record(SUITE, case, backend, n * 256, got["sample_ms"], None, copy_gbps,
                     {"reference": None, "eager_inplace": None, "compile": None, "one_process": base_ms})
        rec.update(got, n=n, batch=batch, steps=steps, samples_per_s=1e3 * n / got["sample_ms"], same_bits=same)
        result.append(rec)
    diffs = batch_invariance(n, batches=(batch, max(1, n // 5)), steps=steps, backend=backend)
    print(f"  --batch vs one batch of {n}: max |difference| {diffs}", flush=True)
    result[0]["batch_max_abs_diff"] = diffs
    return result


if __name__ == "__main__":
    if sys.argv[1:2] != ["--worker"]:
        sys.exit("run the suite with `fastsde bench distributed [--quick]`; --worker is the torchrun entry")
    _worker(sys.argv[2:])
