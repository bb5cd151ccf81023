"""Suite "groupnorm": GroupNorm [+ time-embedding add] + SiLU on U-Net-sized float32 activations, fused vs baselines.

Baselines, all timed in the same run on the same tensors (never zeros):
  reference      the eager form as score_sde writes it: nn.GroupNorm module, then act (with emb: h = h + emb[:, :, None,
                 None] first)
  eager_inplace  F.group_norm, then F.silu(..., inplace=True) (with emb: h.add_(emb) in place first, on a scratch copy)
  compile        torch.compile of the reference form
Bytes per element (float32): one read of x for the statistics, one read + one write for the result: 12 B/elem.
Every contender allocates its output (as the U-Net's forward does). On CUDA (device="cuda") one more baseline:
compile_reduce_overhead, torch.compile of the reference form with CUDA graphs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastsde.benchmarks import common
from fastsde.benchmarks.common import median_ms, record
from fastsde.ops import groupnorm as gn_ops

SUITE = "groupnorm"
BYTES_PER_ELEM = 12
GROUPS = 32

CASES = [  # (name, shape, with emb_add)
    ("gn_silu_8x128x32x32", (8, 128, 32, 32), False),
    ("gn_emb_silu_8x128x32x32", (8, 128, 32, 32), True),
    ("gn_silu_16x256x16x16", (16, 256, 16, 16), False),
]


def _setup(shape, emb, backend, device="cpu"):
    """(fused, reference, eager) for one case, on fresh non-zero tensors on `device`."""
    torch.manual_seed(0)
    N, C = shape[:2]
    x = torch.randn(shape, device=device)
    e = torch.randn(N, C, device=device) if emb else None
    norm = torch.nn.GroupNorm(GROUPS, C, eps=1e-6).to(device)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    w, b = norm.weight.detach(), norm.bias.detach()
    act = torch.nn.SiLU()
    scratch = torch.empty_like(x)

    def reference():
        h = x
        if e is not None:
            h = h + e[:, :, None, None]
        return act(norm(h))

    def eager():
        h = x
        if e is not None:
            h = scratch.copy_(x).add_(e[:, :, None, None])
        return F.silu(F.group_norm(h, GROUPS, w, b, 1e-6), inplace=True)

    def fused():
        return gn_ops.group_norm(x, GROUPS, w, b, 1e-6, emb_add=e, act="silu", backend=backend)

    return fused, reference, eager


def run(quick: bool = False, backend: str = "native", use_compile: bool = True, device: str = "cpu") -> list[dict]:
    """All cases of the suite on `device`; quick: fewer repeats. torch.compile baselines run last (see
    bench_step.run)."""
    reps = 7 if quick else 25
    copy_gbps = common.copy_bandwidth_gbps(reps=reps, device=device)
    out, refs = [], []
    with torch.no_grad():
        for name, shape, emb in CASES:
            fused, reference, eager = _setup(shape, emb, backend, device)
            numel = 1
            for s in shape:
                numel *= s
            times = {label: [] for label in ("fused", "reference", "eager_inplace")}
            for _ in range(3):  # interleave: the machine is shared, so alternate the contenders
                for label, fn in (("fused", fused), ("reference", reference), ("eager_inplace", eager)):
                    times[label].append(median_ms(fn, reps, device=device))
            med = {k: sorted(v)[1] for k, v in times.items()}
            out.append(record(SUITE, name, backend, numel, med["fused"], BYTES_PER_ELEM, copy_gbps,
                              {"reference": med["reference"], "eager_inplace": med["eager_inplace"],
                               "compile": None}, device=device))
            refs.append(reference)
            print(f"  {name}: {out[-1]['median_ms']:.3f} ms", flush=True)
        if use_compile:
            modes = [("compile", None)] + ([("compile_reduce_overhead", "reduce-overhead")]
                                           if common.is_cuda(device) else [])
            for rec, reference in zip(out, refs):
                for label, mode in modes:
                    compile_ms = common.compiled_ms(reference, reps, device=device, mode=mode)
                    common.set_baseline(rec, label, compile_ms)
                    print(f"  {rec['case']}: {label} baseline {compile_ms} ms", flush=True)
    return out
