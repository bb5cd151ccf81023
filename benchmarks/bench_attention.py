"""Suite "attention": score_sde's attention block (AttnBlockpp) at CIFAR-10's 16x16 resolution, fused vs baselines.

Baselines, timed in the same run on the same tensors (never zeros; W_out is random, not score_sde's zero init):
  reference      the block as score_sde writes it in float32: GroupNorm module -> three separate 1x1 NIN einsums for
                 q, k, v -> einsum scores -> softmax -> einsum -> NIN output projection -> residual [/ sqrt(2)]
  compile        torch.compile of that block
  eager_inplace  not applicable (None)
The block is compute-bound (per sample 4 C^2 L + 2 C L^2 multiply-adds in the reference form: 134 MFLOP at
C = L = 256), so the bandwidth columns are None; on CUDA the record's tflops counts 2 flops per multiply-add of that
reference form, for every contender alike, and compile_reduce_overhead (CUDA graphs) is one more baseline.
"""
from __future__ import annotations

import math

import torch

from fastsde.benchmarks import common
from fastsde.benchmarks.common import median_ms, record
from fastsde.ops import attn_block

SUITE = "attention"


def _nin(x, w, b):
    """score_sde's NIN (a 1x1 conv as einsum) on (B, C, H, W); w: (C_in, C_out) as score_sde stores it."""
    return torch.einsum("bchw,cd->bdhw", x, w) + b[None, :, None, None]


def _reference_block(x, gn, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o, skip_rescale):
    """AttnBlockpp.forward from score_sde (layerspp.py), single head."""
    B, C, H, W = x.shape
    h = gn(x)
    q, k, v = _nin(h, w_q, b_q), _nin(h, w_k, b_k), _nin(h, w_v, b_v)
    w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(C) ** (-0.5))
    w = torch.reshape(w, (B, H, W, H * W))
    w = torch.nn.functional.softmax(w, dim=-1)
    w = torch.reshape(w, (B, H, W, H, W))
    h = torch.einsum("bhwij,bcij->bchw", w, v)
    h = _nin(h, w_o, b_o)
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


def flops(B, C, H, W) -> float:
    """Floating-point operations of the reference block: 2 (4 C^2 L + 2 C L^2) per sample, L = H W."""
    L = H * W
    return 2.0 * B * (4 * C * C * L + 2 * C * L * L)


def _case(name, B, C, H, W, num_groups, num_heads, skip_rescale, reps, copy_gbps, backend, use_compile,
          device="cpu"):
    torch.manual_seed(0)
    x = torch.randn(B, C, H, W, device=device)
    gn_weight, gn_bias = 1 + 0.1 * torch.randn(C, device=device), 0.1 * torch.randn(C, device=device)
    qkv_weight = torch.randn(3 * C, C, device=device) / math.sqrt(C)
    qkv_bias = 0.1 * torch.randn(3 * C, device=device)
    out_weight, out_bias = torch.randn(C, C, device=device) / math.sqrt(C), 0.1 * torch.randn(C, device=device)
    gn = torch.nn.GroupNorm(num_groups, C, eps=1e-6).to(device)
    with torch.no_grad():
        gn.weight.copy_(gn_weight)
        gn.bias.copy_(gn_bias)
    nin = [t.T.contiguous() for t in qkv_weight.chunk(3)] + [out_weight.T.contiguous()]  # score_sde's (in, out)
    biases = list(qkv_bias.chunk(3)) + [out_bias]
    ref_args = (x, gn, nin[0], biases[0], nin[1], biases[1], nin[2], biases[2], nin[3], biases[3], skip_rescale)

    def fused():
        return attn_block(x, gn_weight, gn_bias, qkv_weight, qkv_bias, out_weight, out_bias, num_groups=num_groups,
                          num_heads=num_heads, skip_rescale=skip_rescale, backend=backend)

    with torch.no_grad():
        err = (fused() - _reference_block(*ref_args)).abs().max().item()
        ms = median_ms(fused, reps, device=device)
        ref_ms = median_ms(lambda: _reference_block(*ref_args), reps, device=device)
        compile_ms = common.compiled_ms(_reference_block, reps, ref_args, device) if use_compile else None
        graphs_ms = (common.compiled_ms(_reference_block, reps, ref_args, device, mode="reduce-overhead")
                     if use_compile and common.is_cuda(device) else None)
    print(f"  {name}: max |fused - reference| = {err:.2e}", flush=True)
    baselines = {"reference": ref_ms, "eager_inplace": None, "compile": compile_ms}
    if common.is_cuda(device):
        baselines["compile_reduce_overhead"] = graphs_ms
    return record(SUITE, name, backend, x.numel(), ms, None, copy_gbps, baselines, device=device,
                  flops=flops(B, C, H, W))


CASES = [
    # (name, B, C, H, W, num_groups, num_heads, skip_rescale)
    ("attn_block_8x256x16x16", 8, 256, 16, 16, 32, 1, True),
]


def run(quick: bool = False, backend: str = "native", use_compile: bool = True, device: str = "cpu") -> list[dict]:
    """All cases of the suite on `device`; quick: fewer repeats."""
    reps = 7 if quick else 25
    copy_gbps = common.copy_bandwidth_gbps(reps=reps, device=device)
    out = []
    for case in CASES:
        out.append(_case(*case, reps, copy_gbps, backend, use_compile, device))
        print(f"  {case[0]}: {out[-1]['median_ms']:.2f} ms", flush=True)
    return out
