"""Suite "unet": one U-Net forward pass, fastsde's fused build vs the same network in plain PyTorch.

unet_forward_16px_b64: the small16 NCSN++ preset (VE, Fourier embedding; 16x16, nf 32, ch_mult (1, 2, 2),
attention at 8x8), batch 64, float32, eval mode, no_grad. Both builds carry the same weights (checked before timing).
Baselines, timed in the same run on the same inputs (never zeros):
  reference      UNet(config, reference=True): nn.GroupNorm + nn.SiLU, three NIN einsums per attention block
  compile_*      torch.compile of that reference build: compile_fp32 and compile_fp32_frozen (Inductor freezing), and
                 for the precision rows also compile_bf16_autocast[_frozen] (common.COMPILE_PEERS)
  compile        the fastest of them (fp32 rows: the fp32 peers; precision rows: all four), named in compile_peer
  eager_inplace  none (a whole network has no hand-written in-place form)
All contenders of a case (the fused build in each precision, the reference eager and under autocast, the compiled
peers) are timed round-robin in one set (common.interleaved_ms).
The fused build runs in its default layout (channels-last on CPU: one conversion at entry and exit, every layer keeps
NHWC in between; NCHW on CUDA); the reference build runs NCHW as score_sde writes it. A network forward is not a
streaming op: gbps is None. On CUDA the record's tflops counts the reference build's flops (torch's FlopCounterMode:
convolutions and matrix products) for every contender alike, and compile_reduce_overhead (CUDA graphs) is one more
baseline. The fused build's GroupNorm/attention ops run on `backend`
when it implements them, else on what backend="auto" resolves to; the record's backend says which ran.

unet_train_digits_b64 / unet_vjp_digits_b32: autograd through the digits model (the small16 DDPM++ preset, VP,
1 channel, 16x16), fused (GroupNorm's fused backward, the native attention's GEMM backward) against the reference
layers, interleaved in one run on the same weights and inputs (gradients checked against each other first).
train: forward + the gradients of a squared-error loss w.r.t. every parameter, batch 64 (a training step without
the optimizer). vjp: what one likelihood evaluation pays for its divergence, a forward with x requiring grad and
one vector-Jacobian product (e^T d model / dx), batch 32 (`fastsde likelihood`'s 32 test digits). --quick: batch 8.

score_sde_*: score_sde's own architectures at CIFAR-10 size (32x32, batch 8): NCSN++ (ve/cifar10_ncsnpp_continuous)
and DDPM++ (vp/cifar10_ddpmpp_continuous), nf 128 and a reduced nf 64, built from tests/score_sde_like.py (the
stand-in for score_sde's classes, checked against the original). accelerated: fastsde.accelerate(model) on the
same weights; baselines: the plain model (reference) and its fp32 compiled peers (compile: the fastest). Skipped
when the checkout's tests/ folder is absent (an installed package). --quick shrinks these to nf 32, 16x16, one
block per level.

Precision rows (`precisions`, default bf16 and fp16; every record carries its "precision"): the case suffixed _bf16
/ _fp16 times the fused build run in that precision (fastsde.precision.PrecisionModel: weights and activations in the
half type, float32 statistics and accumulation inside the fused ops) against, in the same run on the same inputs,
  fused_fp32                 the float32 fused build (the main case's contender)
  reference                  the float32 reference build
  reference_autocast_bf16    the reference build under torch.autocast("cpu"/"cuda", torch.bfloat16): the fair peer,
                             since any user can autocast
  compile_*, compile         the four compiled peers and the fastest of them (above)
Its max_abs_diff is max |half output - float32 fused output|. A precision that cannot run here is reported in the
main record's "skipped", not measured.
"""
from __future__ import annotations

import copy
import importlib.util
import pathlib

import torch

import fastsde

from fastsde.benchmarks import common
from fastsde.benchmarks.common import record
from fastsde.models.ncsnpp import UNet, get_preset
from fastsde.ops.dispatch import resolve
from fastsde.nn.core import op_backend
from fastsde.ops.groupnorm import autograd_backend
from fastsde.precision import PrecisionModel, precision_dtype

SUITE = "unet"
_OPS = ("group_norm", "attn_block")


def _usable_backend(backend: str, device: torch.device) -> str:
    """`backend` if it runs both ops on `device`, else "auto" (the fastest that does)."""
    try:
        for op in _OPS:
            resolve(op, backend, device)
        return backend
    except (ValueError, RuntimeError):
        return "auto"


def forward_flops(model, x, labels) -> float:
    """Floating-point operations of one forward of `model` (convolutions and matrix products), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, labels)
    return float(counter.get_total_flops())


def _case(name, preset, batch, reps, copy_gbps, backend, use_compile, device="cpu", precisions=()):
    torch.manual_seed(0)
    config = get_preset(preset, "ve")
    device = torch.device(device)
    chosen = _usable_backend(backend, device)
    ran = "+".join(sorted({resolve(op, chosen, device)[0] for op in _OPS}))
    fused = UNet(config, backend=chosen).eval()
    reference = UNet(config, reference=True).eval()
    with torch.no_grad():  # non-trivial weights: the near-zero-initialised layers would make attention a no-op
        for p in fused.parameters():
            p.add_(0.02 * torch.randn_like(p))
    reference.load_state_dict(fused.state_dict())
    fused, reference = fused.to(device), reference.to(device)
    x = torch.rand(batch, config.in_channels, config.resolution, config.resolution).to(device)
    labels = (torch.exp(torch.empty(batch).uniform_(0.0, 3.0)) * 0.1).to(device)  # sigmas in [0.1, 2]
    cuda = common.is_cuda(device)
    with torch.no_grad():
        y32 = fused(x, labels)
        err = (y32 - reference(x, labels)).abs().max().item()
    skipped, halves, half_err = {}, {}, {}
    for precision in precisions:
        try:
            halves[precision] = PrecisionModel(fused, precision_dtype(precision)).refresh()
            with torch.no_grad():
                half_err[precision] = (halves[precision](x, labels).float() - y32).abs().max().item()
        except Exception as exc:  # reported, never replaced by another measurement
            halves.pop(precision, None)
            skipped[precision] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  {name}_{precision}: skipped ({skipped[precision]})", flush=True)
    # one round-robin set (common.interleaved_ms): the fused build in each precision, the reference eager (and under
    # autocast bf16 for the precision rows) and every compiled peer of the reference (COMPILE_PEERS)
    contenders = {"fused": lambda: fused(x, labels), "reference": lambda: reference(x, labels)}
    contenders.update({p: (lambda h: lambda: h(x, labels))(h) for p, h in halves.items()})
    if precisions:
        autocast = common.Autocast(reference, torch.bfloat16)
        contenders["reference_autocast_bf16"] = lambda: autocast(x, labels)
    peer_names = tuple(common.COMPILE_PEERS) if precisions else common.FP32_PEERS
    if use_compile:
        contenders.update({n: (lambda c: lambda: c(x, labels))(c)
                           for n, c in common.compile_peers(reference, peer_names).items()})
        if cuda:
            contenders["compile_reduce_overhead"] = (lambda g: lambda: g(x, labels))(common.graphs_model(reference))
    with torch.no_grad():
        times = common.interleaved_ms(contenders, reps, warmup=2, device=device)
    ms, ref_ms = times["fused"], times["reference"]
    flops = forward_flops(reference, x, labels) if cuda else None
    main = record(SUITE, name, ran, x.numel(), ms, None, copy_gbps, {"reference": ref_ms, "eager_inplace": None},
                  device=device, flops=flops)
    common.set_compile_peers(main, times, common.FP32_PEERS)
    if cuda:
        common.set_baseline(main, "compile_reduce_overhead", times.get("compile_reduce_overhead"))
    main.update(precision="fp32", max_abs_diff=err)
    print(f"  {name}: fused ({ran}) {ms:.1f} ms, reference {ref_ms:.1f} ms, {_peer_text(main)}; "
          f"max |fused - reference| = {err:.2e}", flush=True)
    out = [main]
    if not precisions:
        return out
    main["skipped"] = skipped
    autocast_ms = times["reference_autocast_bf16"]
    for precision in halves:
        half_ms = times[precision]
        if half_ms is None:
            skipped[precision] = "failed while timed (printed above)"
            continue
        peers = {"fused_fp32": ms, "reference": ref_ms, "reference_autocast_bf16": autocast_ms}
        rec = record(SUITE, f"{name}_{precision}", ran, x.numel(), half_ms, None, copy_gbps, peers, device=device,
                     flops=flops)
        common.set_compile_peers(rec, times, peer_names)
        rec.update(precision=precision, max_abs_diff=half_err[precision])
        print(f"  {name}_{precision}: fused {half_ms:.1f} ms (fp32 fused {ms:.1f}, reference {ref_ms:.1f}, reference "
              f"under autocast bf16 {_ms_text(autocast_ms)}, {_peer_text(rec)}); max |{precision} - fp32| = "
              f"{half_err[precision]:.2e}", flush=True)
        out.append(rec)
    return out


BACKWARD_CASES = [("unet_train_digits_b64", "train", 64), ("unet_vjp_digits_b32", "vjp", 32)]


def _backward_case(name, kind, batch, reps, copy_gbps, backend, device="cpu"):
    """One autograd case (module docstring): fused vs reference layers, interleaved."""
    torch.manual_seed(0)
    config = get_preset("small16", "vp", in_channels=1)
    device = torch.device(device)
    fused = UNet(config, backend=_usable_backend(backend, device)).eval()
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.02 * torch.randn_like(p))
    reference = UNet(config, reference=True).eval()
    reference.load_state_dict(fused.state_dict())
    fused, reference = fused.to(device), reference.to(device)
    x = torch.rand(batch, 1, 16, 16, device=device)
    labels = torch.rand(batch, device=device) * 999
    probe = torch.randint(0, 2, x.shape, device=device).float() * 2 - 1

    def grads(model):  # name -> gradient
        if kind == "train":
            names, params = zip(*model.named_parameters())
            return dict(zip(names, torch.autograd.grad((model(x, labels) - x).square().mean(), params)))
        xg = x.detach().requires_grad_(True)
        return {"x": torch.autograd.grad((model(xg, labels) * probe).sum(), xg)[0]}

    # compared where both builds name a parameter alike (all but the attention projections, which the fused build
    # stores as one (3C, C) QKV matrix; tests/test_backward.py compares those too)
    g_fused, g_ref = grads(fused), grads(reference)
    err = max((g_fused[k] - g_ref[k]).abs().max().item() for k in g_fused.keys() & g_ref.keys())
    times = common.interleaved_ms({"fused": lambda: grads(fused), "reference": lambda: grads(reference)}, reps,
                                  device=device)
    print(f"  {name}: fused {times['fused']:.1f} ms, reference {times['reference']:.1f} ms (interleaved); max "
          f"|grad fused - grad reference| = {err:.2e}", flush=True)
    recorded = torch.ones(1, device=device, requires_grad=True)  # what the ops see: an input requiring grad
    ran = "+".join(sorted({autograd_backend(op, op_backend(fused.backend, recorded), recorded) for op in _OPS}))
    rec = record(SUITE, name, ran, x.numel(), times["fused"], None, copy_gbps, {"reference": times["reference"]},
                 device=device)
    rec.update(precision="fp32", max_abs_diff=err)
    return rec


def _ms_text(ms) -> str:
    return "-" if ms is None else f"{ms:.1f} ms"


def _peer_text(rec: dict) -> str:
    """'compile 12.3 ms (compile_fp32_frozen)': the record's fastest compiled peer."""
    return f"compile {_ms_text(rec['baselines']['compile'])} ({rec['compile_peer'] or 'not run'})"


CASES = [("unet_forward_16px_b64", "small16", 64)]

_STAND_IN = pathlib.Path(__file__).resolve().parents[1] / "tests" / "score_sde_like.py"
# name -> (stand-in config name, nf, batch)
SCORE_SDE_CASES = [("score_sde_ncsnpp_nf128_b8", "ncsnpp_ve", 128, 8),
                   ("score_sde_ddpmpp_nf128_b8", "ddpmpp_vp", 128, 8),
                   ("score_sde_ncsnpp_nf64_b8", "ncsnpp_ve", 64, 8), ("score_sde_ddpmpp_nf64_b8", "ddpmpp_vp", 64, 8)]


def _score_sde_like():
    if not _STAND_IN.exists():
        return None
    spec = importlib.util.spec_from_file_location("score_sde_like", _STAND_IN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _score_sde_case(like, name, config_name, nf, batch, reps, copy_gbps, backend, use_compile, quick):
    torch.manual_seed(0)
    small = dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,)) if quick else dict(nf=nf)
    config = like.get_config(config_name, **small)
    if quick:
        config.data.image_size = 16
    plain = like.NCSNpp(config).eval()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.02 * torch.randn_like(p))
    chosen = _usable_backend(backend, torch.device("cpu"))
    fast, report = fastsde.accelerate(copy.deepcopy(plain), backend=chosen, report=True)
    size = config.data.image_size
    x = torch.rand(batch, config.data.num_channels, size, size)
    labels = (torch.exp(torch.empty(batch).uniform_(0.0, 3.0)) * 0.1 if config.model.embedding_type == "fourier"
              else torch.rand(batch) * 999)
    with torch.no_grad():
        want = plain(x, labels)
        err = ((fast(x, labels) - want).norm() / want.norm()).item()
    contenders = {"accelerated": lambda: fast(x, labels), "reference": lambda: plain(x, labels)}
    if use_compile:
        contenders.update({n: (lambda c: lambda: c(x, labels))(c)
                           for n, c in common.compile_peers(plain, common.FP32_PEERS).items()})
    with torch.no_grad():
        times = common.interleaved_ms(contenders, reps, warmup=2)
    ms, ref_ms = times["accelerated"], times["reference"]
    rec = record(SUITE, f"{name}_toy" if quick else name, chosen, x.numel(), ms, None, copy_gbps,
                 {"reference": ref_ms, "eager_inplace": None})
    common.set_compile_peers(rec, times, common.FP32_PEERS)
    print(f"  {name}: accelerated ({report.counts()}) {ms:.1f} ms, plain {ref_ms:.1f} ms, {_peer_text(rec)}; "
          f"relative L2 |accelerated - plain| = {err:.2e}", flush=True)
    return rec


PRECISIONS = ("bf16", "fp16")


def run(quick: bool = False, backend: str = "native", use_compile: bool = True, device: str = "cpu",
        precisions=PRECISIONS) -> list[dict]:
    """All cases of the suite on `device`, each with its precision rows; quick: fewer repeats, and the score_sde
    cases at toy size (CPU only)."""
    reps = 5 if quick else 15
    copy_gbps = common.copy_bandwidth_gbps(reps=reps, device=device)
    out = [rec for name, preset, batch in CASES
           for rec in _case(name, preset, batch, reps, copy_gbps, backend, use_compile, device, precisions)]
    out += [_backward_case(name, kind, 8 if quick else batch, reps, copy_gbps, backend, device)
            for name, kind, batch in BACKWARD_CASES]
    like = _score_sde_like()
    if like is None or torch.device(device).type != "cpu":
        why = f"{_STAND_IN} not found (run from a checkout)" if like is None else f"CPU only, not {device}"
        print(f"  score_sde cases skipped: {why}", flush=True)
        return out
    # --quick: one toy size per architecture (the nf 64 cases, shrunk)
    cases = [c for c in SCORE_SDE_CASES if c[2] == 64] if quick else SCORE_SDE_CASES
    return out + [_score_sde_case(like, name, cfg, nf, batch, reps, copy_gbps, backend, use_compile, quick)
                  for name, cfg, nf, batch in cases]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    common.print_table(run(quick=args.quick, use_compile=not args.no_compile,
                           device=common.get_device(args.device)))
