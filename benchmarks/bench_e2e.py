"""Suite "e2e": the main job end to end — sampling digits from the shipped model, fastsde native vs the reference.

digits_pc_b64: 64 digits from fastsde/digits/weights/digits_vp.safetensors with the PC sampler of `fastsde sample
--sampler pc` (fastsde.digits.pretrained.DIGITS_DEFAULTS: steps, predictor, corrector), FSN1 noise of seed 0 in
both paths. digits_default_b64 (default_job below) is the main job's few-step solver.
  fastsde      the fused build of the U-Net (GN+SiLU(+time embedding) and attention kernels, channels-last on the
               CPU) driven by the fused PC loop (one update kernel per step on preallocated buffers), backend native
  reference    the plain-PyTorch build of the same weights (score_sde's layer layout, NCHW) driven by the
               reference loop (the predictors' and correctors' update_fn exactly as score_sde writes them), timed
               with torch.randn_like noise as score_sde draws it
  compile_*    the reference loop driving a torch.compile of the reference build (common.COMPILE_PEERS: compile_fp32,
               compile_fp32_frozen with Inductor freezing, compile_bf16_autocast[_frozen] under autocast bf16)
  compile      the fastest of them for the row (fp32 rows: the fp32 peers; bf16/fp16 rows: all four), named in the
               record's compile_peer
  eager_inplace  none (a whole sampler has no hand-written in-place form)
Equal output: before timing, both paths run on the same FSN1 noise and the record's max_abs_diff says how far apart
their images are (float32 rounding, accumulated over the steps). Timing: the contenders of the PC rows (fastsde in
each precision, its compiled loop, the reference eager and under autocast, the compiled peers) and of the
default-job rows are timed round-robin in one set each
(common.interleaved_ms, record field "timing"), so a slow spell of the shared machine falls on all of them.

On CUDA (device="cuda") both paths run on the GPU, with one more baseline, compile_reduce_overhead (the reference
loop driving torch.compile(mode="reduce-overhead") of the reference build: CUDA graphs per model call), and two more
records for the fastsde loop itself where get_pc_sampler offers them: digits_pc_b64_compiled (compile=True) and
digits_pc_b64_captured (capture=True: the whole loop as CUDA graphs), each with its max_abs_diff to the reference
path on the same noise. A keyword get_pc_sampler lacks is reported in the main record's "skipped", not measured.

Precision rows (`precisions`, default bf16 and fp16; every record carries its "precision"): digits_pc_b64_bf16 /
_fp16 run the same fastsde path with get_pc_sampler(precision=...) (the model in the half type, the sampler state,
coefficients and noise float32) against, in the same run,
  fastsde_fp32               the float32 fastsde path (digits_pc_b64's contender)
  reference                  the float32 reference path
  reference_autocast_bf16    the reference path run under torch.autocast(bfloat16): the fair peer, since any user
                             can wrap a sampler in autocast
  compile_*, compile         the four compiled peers and the fastest of them (above)
with max_abs_diff = max |half images - float32 fastsde images| on the same FSN1 noise (not float rounding: the
model's half precision; the quality guard is tests/test_precision.py and tradeoff()'s bf16 PC rows).

`tradeoff()` measures the quality/speed trade-off of the fastsde path (fused U-Net on `backend`; the PC loop fused
too, the ODE integrated by scipy's RK45 around it): PC at several step counts, the probability-flow ODE (RK45, with
the final denoising step) at several tolerances and the few-step solvers, each over several seeds (default 0, 1, 2)
at n = 359 (every test digit), with its wall time, NFE, the Fréchet distance and KID of its samples
(fastsde.digits.evaluation, classifier features vs the test digits; FD as mean and sd over the seeds, KID as mean
and standard error) next to real-vs-real at the same n, and for a deterministic sampler its ODE error (RMS distance
of its images from a converged solution of the same ODE from the same noise; docs/design.md section 12).
"""
from __future__ import annotations

import inspect
import os
import time

import torch

from fastsde.benchmarks import common
from fastsde.benchmarks.common import interleaved_ms, median_ms, record

SUITE = "e2e"


def _sampler(mf, backend: str, n: int, steps: int, seed: int = 0, sampler: str = "pc", rtol: float = 1e-5,
             noise: str = "fastsde", device="cpu", precision=None, **loop):
    """The digits sampler; `loop`: extra get_pc_sampler keywords (compile=True, capture=True)."""
    from fastsde.digits.pretrained import DIGITS_DEFAULTS
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.sampling import get_ode_sampler, get_pc_sampler

    sde = mf.make_sde(N=steps)
    inverse = get_data_inverse_scaler(mf.centered)
    shape = (n, 1, 16, 16)
    if sampler == "ode":
        return get_ode_sampler(sde, shape, inverse, denoise=True, rtol=rtol, atol=rtol, eps=1e-3, seed=seed,
                               precision=precision)
    return get_pc_sampler(sde, shape, DIGITS_DEFAULTS["predictor"], DIGITS_DEFAULTS["corrector"], inverse, 0.16,
                          continuous=True, eps=DIGITS_DEFAULTS["eps"], device=device, backend=backend, seed=seed,
                          noise=noise, precision=precision, **loop)


# The fastsde loop's own compiled and captured forms, timed on CUDA: case suffix -> get_pc_sampler keyword.
LOOP_VARIANTS = {"compiled": "compile", "captured": "capture"}


def loop_variant_missing(keyword: str) -> str | None:
    """Why get_pc_sampler cannot run the loop with `keyword`=True, or None when it can."""
    from fastsde.sampling import get_pc_sampler

    if keyword not in inspect.signature(get_pc_sampler).parameters:
        return f"fastsde.sampling.get_pc_sampler has no {keyword}= keyword"
    return None


def _model_evals(steps: int) -> int:
    from fastsde.digits.pretrained import DIGITS_DEFAULTS

    return steps * ((DIGITS_DEFAULTS["predictor"] != "none") + (DIGITS_DEFAULTS["corrector"] != "none"))


def _models(path, backend: str, device="cpu"):
    from fastsde.digits.pretrained import load_score_model

    return (load_score_model(path, backend=backend, device=device),
            load_score_model(path, reference=True, device=device))


# fp16 has no fast path on these CPUs (no AVX512-FP16 GEMMs in oneDNN's default build here: 200 U-Net calls take
# minutes), so the e2e suite times bf16; `run(precisions=("bf16", "fp16"))` adds fp16.
PRECISIONS = ("bf16",)
# Smoke mode (common.smoke_mode()): the timed case's images and PC steps, and every overhead row's repeats.
SMOKE_N, SMOKE_STEPS = 4, 3


def run(quick: bool = False, backend: str = "native", use_compile: bool = True, n: int = 64,
        device: str = "cpu", precisions=PRECISIONS) -> list[dict]:
    from fastsde.digits.pretrained import DIGITS_DEFAULTS, score_model_path

    path = score_model_path("digits", "digits", DIGITS_DEFAULTS["sde"])
    steps = DIGITS_DEFAULTS["steps"]
    if common.smoke_mode():  # the records and plumbing in seconds, bf16 emulated included (common: smoke mode)
        n, steps = min(n, SMOKE_N), min(steps, SMOKE_STEPS)
    reps = 1 if quick else 5  # interleaved: 5 rounds of every contender (a shared machine varies by +-15%)
    cuda = common.is_cuda(device)
    copy_gbps = common.copy_bandwidth_gbps(reps=5, device=device)
    fused, reference = _models(path, backend, device)
    fast = _sampler(fused, backend, n, steps, device=device)
    with torch.no_grad():  # equal output: both paths on the same FSN1 noise
        a = fast(fused.model)[0]
        b = _sampler(reference, "reference", n, steps, device=device)(reference.model)[0]
    err = float((a - b).abs().max())
    # Timed as score_sde runs: torch.randn_like noise (the reference's generation of FSN1 numbers is not its cost).
    slow = _sampler(reference, "reference", n, steps, noise="torch", device=device)
    # every contender of the PC rows is timed round-robin in one set (common.interleaved_ms): fastsde eager (and in
    # each precision), its compiled/captured loops, the reference (eager, under autocast bf16), every compiled peer
    # of the reference model (common.COMPILE_PEERS; on CUDA the reference under CUDA graphs too)
    contenders = {"fastsde": lambda: fast(fused.model), "reference": lambda: slow(reference.model)}
    peers = common.compile_peers(reference.model) if use_compile else {}
    contenders.update({name: (lambda m: lambda: slow(m))(m) for name, m in peers.items()})
    if use_compile and cuda:
        graphs_ref = common.graphs_model(reference.model)
        contenders["compile_reduce_overhead"] = lambda: slow(graphs_ref)
    skipped, variants = {}, {}
    for suffix, keyword in LOOP_VARIANTS.items():
        why = loop_variant_missing(keyword)
        if why is None and keyword == "capture" and not cuda:
            why = "capture=True on the CPU runs the compiled loop (the _compiled record)"
        if why is None and not use_compile:
            why = "--no-compile"
        if why is None:
            try:
                variant = _sampler(fused, backend, n, steps, device=device, **{keyword: True})
                with torch.no_grad():
                    variants[suffix] = variant(fused.model)[0].clone()  # a captured loop may reuse its buffers
                contenders[suffix] = (lambda v: lambda: v(fused.model))(variant)
            except Exception as exc:  # reported, never replaced by another measurement
                why = f"{keyword}=True failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if why is not None:
            skipped[suffix] = why
            print(f"  digits_pc_b{n}_{suffix}: skipped ({why})", flush=True)
    halves = _precision_contenders(fused, reference, backend, n, steps, device, slow, precisions, contenders,
                                   skipped)
    with torch.no_grad():
        times = interleaved_ms(contenders, reps, warmup=1, device=device)
    ms, ref_ms = times["fastsde"], times["reference"]
    baselines = {"reference": ref_ms, "eager_inplace": None}
    if cuda:
        baselines["compile_reduce_overhead"] = times.get("compile_reduce_overhead")
    sampler_name = f"pc {DIGITS_DEFAULTS['predictor']}+{DIGITS_DEFAULTS['corrector']}"
    facts = dict(steps=steps, model_evals=_model_evals(steps), sampler=sampler_name, model=path.rsplit("/", 1)[-1])
    rec = record(SUITE, f"digits_pc_b{n}", backend, a.numel(), ms, None, copy_gbps, baselines, device=device)
    common.set_compile_peers(rec, times, common.FP32_PEERS)
    rec.update(max_abs_diff=err, precision="fp32", timing="interleaved", **facts)
    rec["skipped"] = skipped
    print(f"  digits_pc_b{n}: fastsde {ms / 1e3:.3f} s, reference {ref_ms / 1e3:.3f} s, {_peer_text(rec)}; "
          f"max |fastsde - reference| = {err:.2e}", flush=True)
    out = [rec]
    for suffix, v in variants.items():
        v_ms = times.get(suffix)
        if v_ms is None:
            skipped[suffix] = "failed while timed (printed above)"
            continue
        v_err = float((v - b).abs().max())
        print(f"  digits_pc_b{n}_{suffix}: {v_ms / 1e3:.3f} s; "
              f"max |fastsde {LOOP_VARIANTS[suffix]}=True - reference| = "
              f"{v_err:.2e}", flush=True)
        vrec = record(SUITE, f"digits_pc_b{n}_{suffix}", backend, v.numel(), v_ms, None, copy_gbps, baselines,
                      device=device)
        common.set_compile_peers(vrec, times, common.FP32_PEERS)
        vrec.update(max_abs_diff=v_err, timing="interleaved", **facts)
        out.append(vrec)
    out[1:1] = _precision_records(halves, n, backend, device, copy_gbps, a, times, facts, skipped)
    out += default_job(fused, reference, backend, n, reps, device, copy_gbps, peers, ms, ref_ms, rec["baselines"])
    out += loop_overhead(device, reps=3 if quick else 10, copy_gbps=copy_gbps, compiled=use_compile)
    out += solver_overhead(device, reps=3 if quick else 10, copy_gbps=copy_gbps)
    out.append(model_profile(fused, reference, n, device, use_compile, copy_gbps))
    return out


def solver_overhead(device="cpu", reps: int = 10, copy_gbps: float | None = None, steps: int = 10) -> list[dict]:
    """Each few-step solver's own cost per model evaluation outside the model (its fused updates, dispatch and
    in-kernel noise), for the main job's batch (64 x 1 x 16 x 16): `steps` steps of the solver around a model that
    costs nothing (it returns a preallocated output), eager. Case solver_overhead_<name>."""
    from fastsde import solvers
    from fastsde.sde import VPSDE

    shape = (64, 1, 16, 16)
    copy_gbps = common.copy_bandwidth_gbps(reps=5, device=device) if copy_gbps is None else copy_gbps
    out = torch.randn(shape, device=device) * 0.1

    class Free(torch.nn.Module):
        def forward(self, x, t):
            return out

    model, records = Free(), []
    for name in solvers.solver_names():
        if name == "adaptive":  # its step count follows its error estimate, not `steps`
            continue
        sampler = solvers.get_sampler(name, VPSDE(N=1000), shape, steps, seed=0, device=device)
        with torch.no_grad():
            evals = sampler(model)[1]
            us = median_ms(lambda: sampler(model), reps, warmup=1, device=device) * 1e3 / evals
        print(f"  solver_overhead {name}: {us:.1f} us per model evaluation outside the model ({evals} evaluations)",
              flush=True)
        rec = record(SUITE, f"solver_overhead_{name}", "native", out.numel(), us / 1e3, None, copy_gbps,
                     {"reference": None, "eager_inplace": None, "compile": None}, device=device)
        rec.update(us_per_eval=us, model_evals=int(evals), steps=steps)
        records.append(rec)
    return records


def model_profile(fused, reference, n: int, device, use_compile: bool, copy_gbps: float, calls: int = 5) -> dict:
    """Where one U-Net evaluation of the main job spends its time (torch.profiler, self time of `calls` forwards at
    batch n): convolutions, matrix products, fastsde's kernels, Inductor's generated code and the rest, for the fused
    build (eager and compiled) and torch.compile of the reference build. What bounds the loop's speedup: the
    convolutions are the same oneDNN calls in every build."""
    from torch.profiler import profile

    x = torch.randn(n, 1, 16, 16, device=device)
    labels = torch.rand(n, device=device) * 999
    models = {"fastsde_eager": fused.model}
    if use_compile:
        models["fastsde_compiled"] = torch.compile(fused.model, fullgraph=True, dynamic=False)
        models["reference_compiled"] = torch.compile(reference.model, dynamic=False)
    matmuls = {"aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm", "aten::matmul", "aten::linear"}

    def kind(key: str) -> str:
        if key.startswith("aten::") and "conv" in key:
            return "convolution"
        if key in matmuls:
            return "matmul"
        if key.startswith("fastsde::"):
            return "fastsde_ops"
        return "inductor_code" if "CompiledFxGraph" in key else "other"

    shares = {}
    with torch.no_grad():
        for name, model in models.items():
            model(x, labels)
            model(x, labels)
            with profile() as prof:
                for _ in range(calls):
                    model(x, labels)
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            parts = dict.fromkeys(["convolution", "matmul", "fastsde_ops", "inductor_code", "other"], 0.0)
            for e in events:
                parts[kind(e.key)] += e.self_cpu_time_total
            shares[name] = {"ms_per_call": total / calls / 1e3,
                            **{k: round(v / total, 3) if total else None for k, v in parts.items()}}
            print(f"  model_profile {name}: {shares[name]['ms_per_call']:.1f} ms per U-Net call (profiled); "
                  + ", ".join(f"{k} {v:.0%}" for k, v in shares[name].items() if k != "ms_per_call"), flush=True)
    rec = record(SUITE, f"model_profile_b{n}", "native", n * 256, shares["fastsde_eager"]["ms_per_call"], None,
                 copy_gbps, {"reference": None, "eager_inplace": None, "compile": None}, device=device)
    rec.update(shares=shares, calls=calls)
    return rec


def default_job(fused, reference, backend, n, reps, device, copy_gbps, peers: dict, pc_ms, pc_ref_ms,
                pc_baselines) -> list[dict]:
    """digits_default_b{n}[_bf16][_compiled]: the main job's default sampler (DIGITS_DEFAULTS: a few-step solver),
    fused, in float32 and bf16, eager and with the model compiled (peers empty: --no-compile, no compiled rows).
    Baselines, all timed in this run: the same solver driving the reference build (reference), each compiled peer of
    the reference model in `peers` (common.compile_peers; "compile": the fastest of the fp32 ones for an fp32 row,
    of all for a bf16 row), and the previous default, PC with 200 steps (pc200_fused, pc200_reference,
    pc200_compile)."""
    from fastsde import solvers
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.digits.pretrained import DIGITS_DEFAULTS

    name, steps = DIGITS_DEFAULTS["sampler"], DIGITS_DEFAULTS["solver_steps"]

    def make(mf, be, **kw):
        return solvers.get_sampler(name, mf.make_sde(N=1000), (n, 1, 16, 16), steps,
                                   inverse_scaler=get_data_inverse_scaler(mf.centered), eps=DIGITS_DEFAULTS["eps"],
                                   seed=0, backend=be, device=device, **kw)

    plain = make(reference, "reference")
    with torch.no_grad():
        truth = plain(reference.model)[0]
    contenders = {"reference": lambda: plain(reference.model)}
    # the peers a user has: torch.compile of the reference model, driven by the same solver
    contenders.update({name: (lambda m: lambda: plain(m))(m) for name, m in peers.items()})
    variants = [("", {}), ("_bf16", {"precision": "bf16"})]
    if peers:
        variants += [("_compiled", {"compile": True}), ("_bf16_compiled", {"precision": "bf16", "compile": True})]
    if not common.is_cuda(device) and not common.smoke_mode() and os.environ.get("FASTSDE_AOT", "1") != "0":
        # `fastsde sample`'s default on the CPU: the cached ahead-of-time package (a build is ~20 s: not in smoke)
        variants += [("_aot", {"aot": True}), ("_bf16_aot", {"precision": "bf16", "aot": True})]
    results = {}
    for suffix, kw in variants:
        try:
            model = _aot_model(reference.model, kw.get("precision"), n) if kw.get("aot") else fused.model
            fast = make(fused, backend, **{k: v for k, v in kw.items() if k != "aot"})
            with torch.no_grad():
                results[suffix] = fast(model)
            contenders[suffix] = (lambda f, m: lambda: f(m))(fast, model)
        except Exception as exc:  # reported, never replaced by another measurement
            print(f"  digits_default_b{n}{suffix}: skipped ({type(exc).__name__}: {exc})", flush=True)
    with torch.no_grad():  # round-robin, like the PC rows (common.interleaved_ms)
        times = interleaved_ms(contenders, reps, warmup=1, device=device)
    ref_ms = times["reference"]
    base = {"reference": ref_ms, "eager_inplace": None, "pc200_fused": pc_ms, "pc200_reference": pc_ref_ms,
            "pc200_compile": pc_baselines.get("compile")}
    out = []
    for suffix, kw in variants:
        t_ms = times.get(suffix)
        if t_ms is None:
            continue
        x, evals = results[suffix]
        err = float((x - truth).abs().max())
        rec = record(SUITE, f"digits_default_b{n}{suffix}", backend, x.numel(), t_ms, None, copy_gbps, base,
                     device=device)
        common.set_compile_peers(rec, times, tuple(common.COMPILE_PEERS) if "precision" in kw else common.FP32_PEERS)
        print(f"  digits_default_b{n}{suffix}: {name} {steps} steps ({evals} model evals) {t_ms / 1e3:.3f} s; "
              f"reference {ref_ms / 1e3:.3f} s, {_peer_text(rec)}; PC 200 fused {pc_ms / 1e3:.3f} s; "
              f"max |fastsde - reference| = {err:.2e}", flush=True)
        rec.update(max_abs_diff=err, sampler=name, steps=steps, model_evals=int(evals),
                   precision=kw.get("precision", "fp32"), compiled=bool(kw.get("compile")),
                   ahead_of_time=bool(kw.get("aot")), timing="interleaved")
        out.append(rec)
    return out


def _aot_model(model, precision, n):
    """The model as `fastsde sample` runs it by default on the CPU: the cached AOTInductor package (fastsde.aot, built
    on first use, outside the timed calls) of its plain-PyTorch build (`model`: the same weights) in `precision`; a
    RuntimeError when none can be had."""
    from fastsde import aot
    from fastsde.precision import for_sampling

    target = for_sampling(model, precision, torch.float32, {})
    compiled = aot.cached_model(target, torch.zeros(n, 1, 16, 16), torch.full((n,), 0.5))
    if compiled is None:
        raise RuntimeError("no ahead-of-time package (the warning above says why)")
    return compiled


def _overhead_us(shape, device, reps: int, compiled: bool) -> float:
    """Microseconds per step of the fused PC loop (VP Euler-Maruyama, N = 200) around a model that costs nothing
    (it returns a preallocated output): the sampler's own cost per step, dispatch and update kernel included."""
    from fastsde.sampling import get_pc_sampler
    from fastsde.sde import VPSDE

    out = torch.randn(shape, device=device)

    class Free(torch.nn.Module):
        def forward(self, x, t):
            return out

    steps = SMOKE_STEPS if common.smoke_mode() else 200
    sampler = get_pc_sampler(VPSDE(N=steps), shape, "euler_maruyama", "none", lambda x: x, 0.16, continuous=True,
                             eps=1e-3, seed=0, device=device, compile=compiled)
    model = Free()
    with torch.no_grad():
        return median_ms(lambda: sampler(model), reps, warmup=1, device=device) * 1e3 / steps


def loop_overhead(device="cpu", reps: int = 10, copy_gbps: float | None = None, compiled: bool = True) -> list[dict]:
    """The loop's own cost per step outside the model, eager and compiled, for the main job's batch (64 x 1 x 16 x 16)
    and the 1024 x 2 mixture batch."""
    copy_gbps = common.copy_bandwidth_gbps(reps=5, device=device) if copy_gbps is None else copy_gbps
    records = []
    for name, shape in (("loop_overhead_b64", (64, 1, 16, 16)), ("loop_overhead_gmm_1024x2", (1024, 2))):
        eager = _overhead_us(shape, device, reps, False)
        comp = _overhead_us(shape, device, reps, True) if compiled else None
        print(f"  {name}: {eager:.1f} us per step eager"
              + ("" if comp is None else f", {comp:.1f} us compiled") + " (model excluded)", flush=True)
        numel = 1
        for d in shape:
            numel *= d
        rec = record(SUITE, name, "native", numel, eager / 1e3, None, copy_gbps,
                     {"reference": None, "eager_inplace": None, "compile": None}, device=device)
        rec.update(us_per_step=eager, us_per_step_compiled=comp, steps=SMOKE_STEPS if common.smoke_mode() else 200)
        records.append(rec)
    return records


def _precision_contenders(fused, reference, backend, n, steps, device, slow, precisions, contenders,
                          skipped) -> dict:
    """Add to `contenders` the fastsde path in each of `precisions` (fastsde_<precision>) and the reference path
    under torch.autocast(bfloat16) (reference_autocast_bf16); {precision: its images on the FSN1 noise of seed 0}.
    A precision that cannot run is reported in `skipped`."""
    if not precisions:
        return {}

    def under_autocast():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            return slow(reference.model)

    contenders["reference_autocast_bf16"] = under_autocast
    halves = {}
    for precision in precisions:
        try:
            fast = _sampler(fused, backend, n, steps, device=device, precision=precision)
            with torch.no_grad():
                halves[precision] = fast(fused.model)[0]
            contenders[f"fastsde_{precision}"] = (lambda f: lambda: f(fused.model))(fast)
        except Exception as exc:  # reported, never replaced by another measurement
            skipped[precision] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  digits_pc_b{n}_{precision}: skipped ({skipped[precision]})", flush=True)
    return halves


def _precision_records(halves, n, backend, device, copy_gbps, images32, times, facts, skipped) -> list[dict]:
    """digits_pc_b{n}_{precision} for each precision that ran (module docstring), from the PC rows' timings."""
    ms, ref_ms, autocast_ms = times["fastsde"], times["reference"], times.get("reference_autocast_bf16")
    out = []
    for precision, images in halves.items():
        p_ms = times.get(f"fastsde_{precision}")
        if p_ms is None:
            skipped[precision] = "failed while timed (printed above)"
            continue
        diff = float((images - images32).abs().max())
        peers = {"fastsde_fp32": ms, "reference": ref_ms, "reference_autocast_bf16": autocast_ms}
        rec = record(SUITE, f"digits_pc_b{n}_{precision}", backend, images.numel(), p_ms, None, copy_gbps, peers,
                     device=device)
        common.set_compile_peers(rec, times, tuple(common.COMPILE_PEERS))
        rec.update(max_abs_diff=diff, precision=precision, timing="interleaved", **facts)
        print(f"  digits_pc_b{n}_{precision}: fastsde {p_ms / 1e3:.3f} s (fp32 {ms / 1e3:.3f} s, reference "
              f"{ref_ms / 1e3:.3f} s, reference under autocast bf16 {_s_text(autocast_ms)}, {_peer_text(rec)}); "
              f"max |{precision} - fp32| = {diff:.2e}", flush=True)
        out.append(rec)
    return out


def _s_text(ms) -> str:
    return "-" if ms is None else f"{ms / 1e3:.3f} s"


def _peer_text(rec: dict) -> str:
    """'compile 1.234 s (compile_fp32_frozen)': the record's fastest compiled peer of the reference."""
    return f"compile {_s_text(rec['baselines']['compile'])} ({rec['compile_peer'] or 'not run'})"


PC_STEPS = (50, 100, 200, 1000)
ODE_RTOLS = (1e-2, 1e-3, 1e-5)
SOLVER_EVALS = (5, 10, 20, 50)
SOLVER_NAMES = None  # None: every registered solver


def _solver_configs(names, evals):
    """(name, steps) per solver and model-evaluation budget: steps = budget // evals per step (with the final
    denoising evaluation counted), budgets a solver cannot meet with one step left out."""
    from fastsde import solvers

    out = []
    for name in names:
        cls = solvers.get_solver(name)
        for budget in evals:
            if cls.adaptive:
                continue
            steps = (budget - 1) // cls.evals_per_step
            if steps >= 1:
                out.append((name, steps))
    return out


def _solver_sampler(mf, backend, n, name, steps, seed, **options):
    from fastsde import solvers
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.digits.pretrained import DIGITS_DEFAULTS

    return solvers.get_sampler(name, mf.make_sde(N=1000), (n, 1, 16, 16), steps,
                               inverse_scaler=get_data_inverse_scaler(mf.centered), eps=DIGITS_DEFAULTS["eps"],
                               seed=seed, backend=backend, **options)


def _kid_text(kid: dict | None) -> str:
    return "KID -" if kid is None else f"KID {kid['kid']:.1f} +- {kid['stderr']:.1f}"


TRADEOFF_SEEDS = (0, 1, 2)
ODE_ERROR_N = 16  # the first images of each draw whose ODE error is measured
# The converged solution of the probability-flow ODE the ODE errors are measured against (DPM-Solver-3 on the
# log-SNR grid), and the coarser run whose distance to it is reported as the reference's own error.
CONVERGED_SOLVER, CONVERGED_STEPS, CONVERGED_CHECK_STEPS = "dpm_solver_3", 100, 50


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def _mean_sd(values: list) -> tuple:
    """(mean, sample standard deviation over the seeds or None for one seed)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(values) > 1 else None)


def _seed_row(fields: dict, draws: list) -> dict:
    """One tradeoff row from its seeds' draws [(seed, wall_s, nfe, evaluate() result, ode error or None)]: FD,
    KID, wall time and ODE error as means over the seeds with their spread (module docstring)."""
    fd, fd_sd = _mean_sd([q["fd"] for _, _, _, q, _ in draws])
    kids = [q["kid"] for _, _, _, q, _ in draws]
    kid = None
    if all(k is not None for k in kids):  # the mean of independent estimates: its standard error adds in quadrature
        kid = {**kids[0], "kid": _mean_sd([k["kid"] for k in kids])[0],
               "stderr": float(sum(k["stderr"] ** 2 for k in kids) ** 0.5 / len(kids)),
               "sd_over_seeds": _mean_sd([k["kid"] for k in kids])[1]}
    errors = [e for *_, e in draws]
    ode_error, ode_error_sd = _mean_sd(errors) if errors[0] is not None else (None, None)
    return {**fields, "nfe": int(draws[0][2]), "seeds": [d[0] for d in draws],
            "wall_s": _mean_sd([d[1] for d in draws])[0], "fd": fd, "fd_sd": fd_sd,
            "fd_per_seed": [q["fd"] for _, _, _, q, _ in draws], "kid": kid,
            "kid_per_seed": [None if k is None else k["kid"] for k in kids], "ode_error": ode_error,
            "ode_error_sd": ode_error_sd,
            "class_entropy": _mean_sd([q["classes"]["entropy"] for _, _, _, q, _ in draws])[0]}


def _row_text(row: dict) -> str:
    sd = "" if row["fd_sd"] is None else f" +- {row['fd_sd']:.2f}"
    ode = "" if row["ode_error"] is None else f", ODE error {row['ode_error']:.4f}"
    return (f"nfe {row['nfe']}, {row['wall_s']:.1f} s, FD {row['fd']:.2f}{sd}, {_kid_text(row['kid'])}{ode}, "
            f"class entropy {row['class_entropy']:.3f}")


def tradeoff(n: int = 359, seeds=None, pc_steps=None, ode_rtols=None, backend: str = "native", solver_names=None,
             solver_evals=None, pc_precisions=("fp32", "bf16")) -> dict:
    """Quality vs time of the fastsde path (module docstring): {'rows': [...], 'fd_real_vs_real', ...}. Besides PC
    and the ODE: every few-step solver of fastsde.solvers (solver_names, default all) at about 5, 10, 20 and 50
    model evaluations (solver_evals), and the adaptive solver once; pass () to skip a family. PC runs in each of
    `pc_precisions` (the bf16 rows are the quality guard's benchmark: same seed, FD next to fp32's); every row
    carries its "precision". Each row runs once per seed (default TRADEOFF_SEEDS; n = 359 is every test digit) and
    reports FD (mean, sample sd over the seeds, per seed), KID (mean of the seeds' estimates, its standard error)
    and, for a deterministic sampler, the ODE error: the RMS difference of its first ODE_ERROR_N images from the
    converged solution of the same probability-flow ODE from the same noise (CONVERGED_*; its own error, the
    distance to the coarser check, is 'converged_error')."""
    from fastsde.digits.pretrained import DIGITS_DEFAULTS, score_model_path
    from fastsde.digits.evaluation import DigitsEvaluator
    from fastsde.digits.pretrained import load_score_model

    mf = load_score_model(score_model_path("digits", "digits", DIGITS_DEFAULTS["sde"]), backend=backend)
    evaluator = DigitsEvaluator()
    rows = []
    from fastsde import solvers

    smoke = common.smoke_mode()  # the defaults shrink to one cheap row per family (common: smoke mode)
    seeds = ((0,) if smoke else TRADEOFF_SEEDS) if seeds is None else tuple(seeds)
    pc_steps = ((SMOKE_STEPS,) if smoke else PC_STEPS) if pc_steps is None else pc_steps
    ode_rtols = ((1e-1,) if smoke else ODE_RTOLS) if ode_rtols is None else ode_rtols
    solver_names = SOLVER_NAMES if solver_names is None else solver_names
    names = solvers.solver_names() if solver_names is None else list(solver_names)
    if smoke and solver_names is None:
        names = [name for name in names if not solvers.get_solver(name).adaptive][:2]
    solver_evals = ((5,) if smoke else SOLVER_EVALS) if solver_evals is None else solver_evals
    solver_configs = _solver_configs(names, solver_evals)
    solver_configs += [(name, 1) for name in names if solvers.get_solver(name).adaptive]
    # (row fields, sampler(seed), deterministic): PC, the RK45 ODE, then the solvers
    cases = [({"sampler": "pc", "steps": s, "rtol": None, "precision": p},
              lambda seed, s=s, p=p: _sampler(mf, backend, n, s, seed, "pc", precision=p), False)
             for p in pc_precisions for s in pc_steps]
    cases += [({"sampler": "ode", "steps": None, "rtol": r, "precision": "fp32"},
               lambda seed, r=r: _sampler(mf, backend, n, 1000, seed, "ode", r, precision="fp32"), True)
              for r in ode_rtols]
    cases += [({"sampler": name, "steps": steps, "rtol": None, "precision": "fp32"},
               lambda seed, name=name, steps=steps: _solver_sampler(mf, backend, n, name, steps, seed),
               not solvers.get_solver(name)().stochastic) for name, steps in solver_configs]
    m = min(n, ODE_ERROR_N)
    fine, coarse = ((2, 1) if smoke else (CONVERGED_STEPS, CONVERGED_CHECK_STEPS))
    converged, converged_error = {}, []
    if any(deterministic for *_, deterministic in cases):
        for seed in seeds:
            x, y = (_solver_sampler(mf, backend, m, CONVERGED_SOLVER, steps, seed)(mf.model)[0].detach().float()
                    .clamp(0, 1) for steps in (fine, coarse))
            converged[seed] = x
            converged_error.append(_rms(x, y))
    for fields, make, deterministic in cases:
        draws = []
        for seed in seeds:
            fn = make(seed)
            t0 = time.perf_counter()
            with torch.no_grad():
                x, nfe = fn(mf.model)
            wall = time.perf_counter() - t0
            x = x.detach().float().clamp(0, 1)
            if fields["sampler"] == "pc":  # model evaluations (score_sde's nfe also counts a "none" corrector)
                nfe = _model_evals(fields["steps"])
            draws.append((seed, wall, nfe, evaluator.evaluate(x),
                          _rms(x[:m], converged[seed]) if deterministic else None))
        row = _seed_row(fields, draws)
        what = (f"{fields['precision']} steps {fields['steps']}" if fields["sampler"] == "pc" else
                f"rtol {fields['rtol']:g}" if fields["sampler"] == "ode" else f"steps {fields['steps']}")
        print(f"  {fields['sampler']} {what}: {_row_text(row)}", flush=True)
        rows.append(row)
    real = [evaluator.real_vs_real(min(n, len(evaluator.train_images)), seed) for seed in seeds]
    return {"n": n, "seeds": list(seeds), "backend": backend, "rows": rows, "fd_real_vs_real": _mean_sd(real)[0],
            "fd_real_vs_real_per_seed": real, "fd_real_vs_noise": evaluator.real_vs_noise(n, seeds[0]),
            "ode_error_n": m, "converged": {"solver": CONVERGED_SOLVER, "steps": fine, "check_steps": coarse},
            "converged_error": max(converged_error, default=None), "threads": torch.get_num_threads()}


def plot_tradeoff(result: dict, path: str) -> str:
    """FD against wall time (log scale), one line per sampler family, with the real-vs-real level."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    def family(r):
        return r["sampler"] if r.get("precision", "fp32") == "fp32" else f"{r['sampler']} {r['precision']}"

    kinds = list(dict.fromkeys(family(r) for r in result["rows"]))
    for kind in kinds:
        rows = [r for r in result["rows"] if family(r) == kind]
        label = {"pc": "PC (Euler-Maruyama)", "pc bf16": "PC (Euler-Maruyama), model bf16",
                 "ode": "probability-flow ODE (RK45)"}.get(kind, kind)
        ax.plot([r["wall_s"] for r in rows], [r["fd"] for r in rows], marker="o" if kind == "pc" else "s"
                if kind == "ode" else ".", label=label)
        if kind not in ("pc", "ode"):
            continue
        for r in rows:
            ax.annotate(f"{r['steps']} steps" if kind == "pc" else f"rtol {r['rtol']:g}\n{r['nfe']} nfe",
                        (r["wall_s"], r["fd"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(result["fd_real_vs_real"], color="gray", linestyle="--", linewidth=1, label="real vs real")
    ax.set_xscale("log")
    ax.set_xlabel(f"wall time for {result['n']} digits (s, {result['threads']} CPU threads)")
    ax.set_ylabel("Fréchet distance (classifier features)")
    ax.set_title(f"digits_vp: quality vs time, fastsde (fused U-Net, {result['backend']} kernels)", fontsize=10)
    ax.legend(fontsize=6 if len(kinds) > 4 else 8, ncol=2 if len(kinds) > 6 else 1)
    fig.savefig(path, dpi=110)
    return path

