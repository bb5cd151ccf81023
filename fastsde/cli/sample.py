"""`fastsde sample`: draw from a score model (the shipped digits models, a model file, or a mixture's exact score),
time it and score the result (Fréchet distance and class histogram for digits; moment errors and sliced Wasserstein
against exact samples for mixtures); `--class-label` for classifier-guided digits."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

import fastsde
from fastsde import distributed, sampling, solvers
from fastsde import sde as sde_lib
from fastsde.heat import FREQUENCY_SDES
from fastsde.precision import PRECISIONS, native_bf16, resolve_precision
from fastsde.cli.common import (DIGITS_METRICS_BYTES, IMAGE_BATCH, MAX_STEPS, MAX_THREADS, SDE_DEFAULTS,
                                AtomicOutputs, UsageError, batch_argument, build_sampler, check_memory, check_own_steps,
                                default_steps, sampler_argument, SAMPLER_NAMES,
                                check_output_file, device_name, finite_float, fmt_optional, kid_text, load_model_for,
                                memory_estimate, micro_batch, model_spec, nonnegative_int, npz_path, output_stem,
                                positive_float, process_seconds, sample_count, seed_value, step_count,
                                thread_count, unet_activation_bytes, with_threads)
from fastsde.digits.pretrained import DIGITS_DEFAULTS
from fastsde.models import analytic

__all__ = ["add_arguments", "run"]


SDE_TITLES = {"ve": "VE", "vp": "VP", "subvp": "subVP", "heat": "heat", "heat_ve": "heat (VE)",
              "blur": "blurring", "ihdm": "IHDM"}
BACKEND_NAMES = ("auto", "reference", "native", "triton")
_NULL_REPEATS = 10
GMM_BATCH = 4096  # default micro-batch cap of the mixtures (fastsde.distributed); images: IMAGE_BATCH
# Options that mean something only for some --sde / --sampler values: dest -> (allowed values, what they apply to).
_ONLY_FOR = {
    "sigma_min": ("sde", ("ve",)), "sigma_max": ("sde", ("ve",)),
    "beta_min": ("sde", ("vp", "subvp")), "beta_max": ("sde", ("vp", "subvp")),
    "predictor": ("sampler", ("pc",)), "corrector": ("sampler", ("pc",)), "snr": ("sampler", ("pc",)),
    "n_steps_each": ("sampler", ("pc",)), "probability_flow": ("sampler", ("pc",)),
    "backend": ("sampler", ("pc", *solvers.solver_names())), "compile": ("sampler", ("pc", *solvers.solver_names())),
    "grid": ("sampler", tuple(solvers.solver_names())),
    "rtol": ("sampler", ("ode",)), "atol": ("sampler", ("ode",)),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    predictors = sampling.predictor_names()
    correctors = sampling.corrector_names()
    model = p.add_argument_group("model and SDE")
    model.add_argument("--model", type=model_spec, default="digits", metavar="MODEL",
                       help="score model: 'digits' (the shipped 16x16 digits model of --sde), a score model file "
                            "PATH.safetensors (fastsde train's model.safetensors), or 'gmm[:NAME]': the exact "
                            f"score of a Gaussian-mixture preset, NAME one of {', '.join(sorted(analytic.PRESETS))}")
    model.add_argument("--sde", choices=sorted(sde_lib.SDE_NAMES), default=None,
                       help="forward SDE (default: vp for digits, ve for gmm; a model file brings its own)")
    model.add_argument("--steps", type=step_count, default=None, metavar="N",
                       help="discretization steps N of the SDE (= sampler time steps; default: "
                            f"{DIGITS_DEFAULTS['solver_steps']} for the default digits solver, "
                            f"{DIGITS_DEFAULTS['steps']} for pc on digits, 1000 for gmm; at most {MAX_STEPS:,}; "
                            "refused for ode and adaptive, which choose their own steps)")
    model.add_argument("--sigma-min", type=positive_float, metavar="S", help="VE sigma_min (default: 0.01)")
    model.add_argument("--sigma-max", type=positive_float, metavar="S",
                       help="VE sigma_max (default: 50, score_sde's; ~5 is plenty for the 2-D presets)")
    model.add_argument("--beta-min", type=finite_float, metavar="B", help="VP/subVP beta_min (default: 0.1)")
    model.add_argument("--beta-max", type=finite_float, metavar="B", help="VP/subVP beta_max (default: 20)")
    cont = model.add_mutually_exclusive_group()
    cont.add_argument("--continuous", dest="continuous", action="store_true", default=True,
                      help="condition the model on continuous time labels (default)")
    cont.add_argument("--discrete", dest="continuous", action="store_false",
                      help="condition the model on discrete timestep labels (score_sde's DDPM/SMLD models; pc only)")

    sampler = p.add_argument_group("sampler")
    sampler_argument(sampler, f"{DIGITS_DEFAULTS['sampler']} for digits and model files, pc for gmm and "
                              "--class-label")
    sampler.add_argument("--list-samplers", action="store_true", help="print the sampler names and exit")
    sampler.add_argument("--grid", choices=solvers.GRIDS, metavar="G",
                         help=f"few-step solvers' time grid, one of {', '.join(solvers.GRIDS)} (default: logsnr)")
    sampler.add_argument("--predictor", choices=predictors, metavar="P",
                         help=f"pc predictor, one of {', '.join(predictors)} "
                              "(default: reverse_diffusion for ve, euler_maruyama for vp/subvp)")
    sampler.add_argument("--corrector", choices=correctors, metavar="C",
                         help=f"pc corrector, one of {', '.join(correctors)} "
                              "(default: langevin for ve, none for vp/subvp)")
    sampler.add_argument("--snr", type=positive_float, metavar="R",
                         help="corrector signal-to-noise ratio (default: 0.16)")
    sampler.add_argument("--n-steps-each", type=nonnegative_int, metavar="K",
                         help="corrector iterations per time step (default: 1)")
    sampler.add_argument("--probability-flow", action="store_true", default=None,
                         help="pc predictor follows the probability-flow ODE instead of the reverse SDE")
    sampler.add_argument("--rtol", type=positive_float, metavar="TOL", help="ode relative tolerance (default: 1e-5)")
    sampler.add_argument("--atol", type=positive_float, metavar="TOL", help="ode absolute tolerance (default: 1e-5)")
    sampler.add_argument("--eps", type=positive_float, metavar="E",
                         help="last time step eps (default: 1e-5 for ve, 1e-3 for vp/subvp)")
    sampler.add_argument("--no-denoise", dest="denoise", action="store_false", default=True,
                         help="return the last noisy iterate instead of its mean (score_sde's noise_removal=False)")
    sampler.add_argument("--noise", choices=("fastsde", "torch"), default="fastsde",
                         help="noise source: the FSN1 counter-based stream, or torch.randn seeded with --seed")
    sampler.add_argument("--backend", choices=BACKEND_NAMES, metavar="B",
                         help=f"pc update-step implementation, one of {', '.join(BACKEND_NAMES)}; the sampler "
                              "rejects one that is not available (default: auto)")
    sampler.add_argument("--compile", action="store_true", default=None,
                         help="compile each model call with its fused update with torch.compile in this process (a "
                              "compile of tens of seconds every run; same numbers)")
    sampler.add_argument("--no-compile", dest="no_compile", action="store_true", default=None,
                         help="run the model eagerly. Default for a U-Net on the CPU: an ahead-of-time compiled "
                              "package of the model (torch.export + AOTInductor), built once on first use (~20 s) "
                              "and cached in $FASTSDE_CACHE (default ~/.cache/fastsde) under a key of the weights, "
                              "precision, batch size, CPU, torch and fastsde; later runs load it in milliseconds")
    sampler.add_argument("--precision", choices=PRECISIONS, default="auto",
                         help="the model's precision (the sampler state, coefficients and noise stay float32): "
                              "fp32, bf16, fp16, or auto (default): bf16 where the device computes bfloat16 "
                              "natively (CPU: AVX512-BF16 or AMX-BF16, detected at run time), else fp32; a "
                              "mixture's exact score runs fp32 under auto")
    sampler.add_argument("--device", type=device_name, default="cpu", help="torch device to sample on")
    sampler.add_argument("--threads", type=thread_count, metavar="T",
                         help=f"torch CPU threads, 1 to {MAX_THREADS} (default: torch's, from OMP_NUM_THREADS or the "
                              "core count; "
                              "1 is fastest for the 2-D presets on a busy machine)")

    run = p.add_argument_group("samples and output")
    run.add_argument("--n", type=sample_count, default=None, metavar="M",
                     help="number of samples (default: 64 digits, 2048 gmm points)")
    run.add_argument("--class-label", default=None, metavar="K",
                     help="digits only: class-conditional sampling of digit K (0-9), or 'all' for n/10 of each, "
                          "guided by the shipped time-dependent classifier")
    run.add_argument("--guidance-scale", type=positive_float, default=None, metavar="W",
                     help="digits only: classifier guidance weight (default: 1)")
    run.add_argument("--seed", type=seed_value, default=0, metavar="K",
                     help="seed of the sampler noise and of the exact reference samples; same seed, same file")
    run.add_argument("--out", default="samples", metavar="PATH",
                     help="output .npz path ('.npz' added when there is no extension); a PNG with the same "
                          "stem is written next to it; parent directories are created")
    batch_argument(run, f"n up to {IMAGE_BATCH} digits or {GMM_BATCH} mixture points")
    run.add_argument("--no-plot", dest="plot", action="store_false", default=True, help="skip the PNG")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=True,
                     help="no progress bar on stderr")
    run.add_argument("--json", action="store_true", help="print the report as one JSON object")


_GMM_ONLY = ("sigma_min", "sigma_max", "beta_min", "beta_max")
_IMAGE_ONLY = ("class_label", "guidance_scale")


def _check_applicable(args: argparse.Namespace) -> None:
    kind = args.model[0]
    for dest in _GMM_ONLY if kind != "gmm" else _IMAGE_ONLY:
        if getattr(args, dest) is not None:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} applies to --model {'gmm[:NAME]' if kind != 'gmm' else 'digits or a file'} "
                              f"only")
    if kind != "gmm" and not args.continuous:
        raise UsageError("--discrete applies to --model gmm only (image models use continuous time labels)")
    if kind == "file" and args.sde is not None:
        raise UsageError("--sde does not apply to a model file: it was trained under its own SDE")
    if args.sde is None:
        args.sde = DIGITS_DEFAULTS["sde"] if kind == "digits" else "ve"
    heat_family = args.sde in FREQUENCY_SDES or (kind == "file" and _file_sde(args.model[1]) in FREQUENCY_SDES)
    if heat_family and kind == "gmm":
        raise UsageError(f"--sde {args.sde} (the heat family) samples image models only; fastsde heat shows them")
    if args.sampler is None:
        args.sampler = ("pc" if kind == "gmm" or args.class_label is not None or heat_family
                        else DIGITS_DEFAULTS["sampler"])
    if heat_family and args.sampler not in ("pc", "ode"):
        raise UsageError(f"--sampler {args.sampler} has scalar coefficients; the heat family samples with pc or ode "
                         f"here (its per-frequency solvers: fastsde heat)")
    for dest, (selector, allowed) in _ONLY_FOR.items():
        if getattr(args, dest) is not None and getattr(args, selector) not in allowed:
            flag = "--" + dest.replace("_", "-")
            raise UsageError(f"{flag} applies to --{selector} {'/'.join(allowed)} only, "
                              f"not --{selector} {getattr(args, selector)}")
    check_own_steps(args)
    if args.compile and args.no_compile:
        raise UsageError("--compile and --no-compile exclude each other")
    if args.sampler == "ode" and not args.continuous:
        raise UsageError("--discrete applies to --sampler pc only (the ODE sampler uses continuous time labels)")
    args.precision_reason = "requested"
    if args.precision == "auto":  # a neural model runs bf16 where the hardware has it; an exact score runs fp32
        native, why = native_bf16(args.device) if kind != "gmm" else (False, "the exact score has no weights")
        args.precision, args.precision_reason = ("bf16" if native else "fp32"), f"auto: {why}"
    args.precision = resolve_precision(args.precision, args.device)


def _file_sde(path: str) -> str | None:
    """The SDE name a model file's metadata gives (None when unreadable: loading it reports why)."""
    from fastsde.digits.pretrained import read_sde_name

    try:
        return read_sde_name(path)
    except (OSError, ValueError):
        return None


def _build_sde(args: argparse.Namespace) -> sde_lib.SDE:
    if args.sde == "ve":
        sigma_min = 0.01 if args.sigma_min is None else args.sigma_min
        sigma_max = 50.0 if args.sigma_max is None else args.sigma_max
        return sde_lib.VESDE(sigma_min=sigma_min, sigma_max=sigma_max, N=args.steps)
    beta_min = 0.1 if args.beta_min is None else args.beta_min
    beta_max = 20.0 if args.beta_max is None else args.beta_max
    return sde_lib.SDE_CLASSES[args.sde](beta_min=beta_min, beta_max=beta_max, N=args.steps)


def _quality(samples: torch.Tensor, reference: torch.Tensor, mixture, seed: int) -> dict:
    """Moment errors, sliced W2 to the exact reference and, for scale, the median exact-vs-exact SW at this n."""
    from fastsde import metrics

    null = metrics.sliced_wasserstein_null(mixture, len(samples), repeats=_NULL_REPEATS,
                                           sample_seed=(seed + 1) % 2**64)
    return dict(nonfinite=int((~torch.isfinite(samples).all(dim=1)).sum()),
                **metrics.moment_errors(samples, mixture),
                sliced_wasserstein=metrics.sliced_wasserstein(samples, reference),
                sliced_wasserstein_null_median=float(np.median(null)))


def run(args: argparse.Namespace) -> int:
    if args.list_samplers:
        print("\n".join(SAMPLER_NAMES))
        return 0
    _check_applicable(args)
    with distributed.session(args.device) as device:
        args.device = device
        return run_sample_images(args) if args.model[0] != "gmm" else _run_mixture(args)


def _check_splittable(args: argparse.Namespace, batch: int) -> None:
    if args.noise == "torch" and batch < args.n:
        raise UsageError(f"--noise torch draws from one global generator in batch order and cannot be split into "
                         f"micro-batches: pass --batch {args.n} (or more) or use --noise fastsde, got --batch {batch}")


def _run_mixture(args: argparse.Namespace) -> int:
    from fastsde.digits import plotting

    args.steps = args.steps or 1000
    args.n = args.n or 2048
    batch = micro_batch(args, args.n, GMM_BATCH)
    _check_splittable(args, batch)
    _, preset = args.model
    mixture = analytic.get_mixture(preset)
    npz = npz_path(args.out)  # outputs and memory checked before any work
    png = os.path.splitext(npz)[0] + ".png" if args.plot else None
    if png:
        check_output_file(png)
    # batch=n: the quality metrics (exact reference samples, sliced Wasserstein) work on all n points at once
    check_memory(f"--n {args.n} samples of gmm:{preset}", memory_estimate(args.n, mixture.dim, buffers=16),
                 args.device)
    sde = _build_sde(args)
    _, info = build_sampler(args, sde, (min(batch, args.n), mixture.dim))
    model = analytic.AnalyticScoreModel(mixture, sde, continuous=args.continuous).to(args.device)

    def factory(ids):
        sampler, _ = build_sampler(args, sde, (len(ids), mixture.dim), sample_ids=ids,
                                    progress=args.progress and batch >= args.n)

        def draw():
            if args.noise == "torch":
                torch.manual_seed(args.seed)  # torch noise comes from the global generator
            x, nfe = sampler(model)
            return {"samples": x.detach().cpu().to(torch.float32).reshape(len(ids), mixture.dim),
                    "nfe": np.full(len(ids), int(nfe))}
        return draw

    report = {}

    def write(npz, result):
        samples = torch.from_numpy(result.arrays["samples"])
        wall = result.sample_s
        report.update(model=f"gmm:{preset}", **info, precision_reason=args.precision_reason, n=args.n,
                      dim=mixture.dim,
                      threads=args.threads or torch.get_num_threads(), nfe=int(result.arrays["nfe"].max()),
                      wall_time_s=wall, samples_per_s=result.sampled / wall, version=fastsde.__version__)
        check_finite_samples(samples)
        reference = mixture.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
        report.update(_quality(samples, reference, mixture, args.seed))
        with AtomicOutputs() as files:  # both files or neither
            np.savez(files.path(npz), samples=samples.numpy(), reference=reference.numpy(),
                     **{key: np.asarray(value) for key, value in report.items()})
            if args.plot:
                plotting.plot_samples_2d(samples, mixture, files.path(os.path.splitext(npz)[0] + ".png"),
                                         _plot_title(report))

    npz = npz_path(args.out)
    result = with_threads(args, lambda: distributed.sample(
        factory, args.n, npz, batch=batch, seed=args.seed, arguments=_manifest_arguments(args),
        progress=args.progress and batch < args.n, write=write))
    if distributed.rank() != 0:
        return 0
    report.update(npz=npz, png=os.path.splitext(npz)[0] + ".png" if args.plot else None, batch=batch,
                  processes=distributed.world_size(), resumed=result.resumed)
    print(json.dumps(report) if args.json else _format_report(report))
    return 0


def check_finite_samples(samples: torch.Tensor) -> None:
    """Refuse to write samples with NaN or inf (a diverging sampler or model): exit 1, no files."""
    bad = int((~torch.isfinite(samples.reshape(len(samples), -1)).all(dim=1)).sum())
    if bad:
        raise RuntimeError(f"{bad} of {len(samples)} samples are not finite (NaN or inf): the sampler diverged or "
                           f"the model returned non-finite scores; nothing was written")


def _manifest_arguments(args: argparse.Namespace) -> dict:
    """The options that decide the samples (what a resumed run must repeat): everything but output and display."""
    skip = {"out", "plot", "progress", "json", "threads", "debug", "command", "device"}
    return {key: value for key, value in sorted(vars(args).items()) if key not in skip}


def _sampler_words(r: dict) -> str:
    if r["sampler"] == "ode":
        return f"probability-flow ODE (rtol {r['rtol']:g}, atol {r['atol']:g})"
    if r["sampler"] != "pc":
        return f"{r['sampler']} solver ({r['grid']} grid)"
    return f"pc {r['predictor']} + {r['corrector']}"


def _plot_title(r: dict) -> str:
    return (f"{r['model']}: {SDE_TITLES[r['sde']]} SDE, {_sampler_words(r)}, {r['steps']} steps  |  "
            f"sliced W2 {r['sliced_wasserstein']:.4f} "
            f"(exact-vs-exact median {r['sliced_wasserstein_null_median']:.4f})")


def _format_report(r: dict) -> str:
    ratio = r["sliced_wasserstein"] / r["sliced_wasserstein_null_median"]
    rows = [
        ("samples", f"{r['n']} x {r['dim']}" + (f"  ({r['nonfinite']} not finite!)" if r["nonfinite"] else "")),
        ("nfe", f"{r['nfe']}"),
        ("wall time", f"{r['wall_time_s']:.2f} s  ({r['samples_per_s']:.0f} samples/s)"),
        ("mean error", f"{r['mean_err']:.4f}  (L2 norm)"),
        ("cov error", f"{r['cov_err']:.4f}  (Frobenius), {100 * r['cov_rel_err']:.2f}% relative"),
        ("sliced W2", f"{r['sliced_wasserstein']:.4f}  (to {r['n']} exact samples; exact-vs-exact median "
                      f"{r['sliced_wasserstein_null_median']:.4f}, ratio {ratio:.2f})"),
        ("wrote", ", ".join(p for p in (r["npz"], r["png"]) if p)),
    ]
    head = (f"{r['model']}, {SDE_TITLES[r['sde']]} SDE, {_sampler_words(r)}, {r['steps']} steps, seed {r['seed']}, "
            f"{_precision_words(r)}")
    return "\n".join([head] + [f"  {name:<11} {value}" for name, value in rows])


def _precision_words(r: dict) -> str:
    run = r.get("model_run")
    return f"model {r['precision']} ({r['precision_reason']})" + (f", {run}" if run and run != "eager" else "")


def _class_labels(spec: str, n: int) -> torch.Tensor:
    if spec == "all":
        if n % 10:
            raise UsageError(f"--class-label all needs --n a multiple of 10 (n/10 of each digit), got {n}")
        return torch.arange(n) * 10 // n
    try:
        k = int(spec)
    except ValueError:
        raise UsageError(f"--class-label must be a digit 0-9 or 'all', got {spec!r}") from None
    if not 0 <= k <= 9:
        raise UsageError(f"--class-label must be a digit 0-9 or 'all', got {spec!r}")
    return torch.full((n,), k, dtype=torch.long)


def run_sample_images(args: argparse.Namespace) -> int:
    """`fastsde sample` for image models: sample a grid, time it, score it with the digits metrics, write png/npz."""
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.digits.evaluation import DigitsEvaluator

    if args.class_label is not None:
        _class_labels(args.class_label, 10)  # a bad label is a usage error, found before loading anything
        if args.sampler != "pc":
            raise UsageError("--class-label needs --sampler pc (classifier guidance runs in the PC sampler)")
        if args.compile:
            raise UsageError("--compile does not apply to --class-label: classifier guidance takes a gradient in "
                             "every model call, which torch.compile(fullgraph=True) cannot trace")
    elif args.guidance_scale is not None:
        raise UsageError("--guidance-scale applies with --class-label only")
    args.n = args.n or DIGITS_DEFAULTS["n"]
    stem = output_stem(args.out, (".npz", ".png") if args.plot else (".npz",))  # before any work
    mf, _ = load_model_for(args)
    from fastsde.models.ncsnpp import UNet

    if args.precision_reason.startswith("auto") and args.precision != "fp32" and not isinstance(mf.model, UNet):
        # half precision is verified end to end (quality guard) for fastsde's own U-Net only
        args.precision, args.precision_reason = "fp32", "auto: half precision is verified for fastsde's U-Net only"
    args.sde = mf.sde_name
    args.steps = args.steps or default_steps(args.sampler)
    args.n = args.n or DIGITS_DEFAULTS["n"]
    if args.class_label is not None:
        _class_labels(args.class_label, args.n)
    batch = micro_batch(args, args.n, IMAGE_BATCH)
    check_memory(f"--n {args.n} digits", memory_estimate(  # activations per micro-batch; the n outputs and metrics
        args.n, 256, batch=batch, activations=unet_activation_bytes(mf.model.config),
        per_sample=DIGITS_METRICS_BYTES), args.device)
    _check_splittable(args, batch)
    sde = mf.make_sde(N=args.steps)
    inverse_scaler = get_data_inverse_scaler(mf.centered)
    class_labels = None if args.class_label is None else _class_labels(args.class_label, args.n)
    inner_progress = args.progress and batch >= args.n

    def build(ids):
        shape = (len(ids), 1, 16, 16)
        if class_labels is not None:
            return _conditional_sampler(args, mf, sde, shape, inverse_scaler, sample_ids=ids, progress=inner_progress)
        return build_sampler(args, sde, shape, inverse_scaler, sample_ids=ids, progress=inner_progress)

    _, info = build(torch.arange(min(batch, args.n)))

    model = mf.model
    if class_labels is not None:  # the guided sampler has no precision= of its own: hand it the model in precision
        from fastsde.precision import for_sampling

        model = for_sampling(mf.model, args.precision, torch.float32, {}, output_dtype=torch.float32)
    models = _ahead_of_time(args, mf, info, batch) if class_labels is None else None
    info["model_run"] = "eager" if not args.compile else "torch.compile"

    def factory(ids):
        sampler, _ = build(ids)

        def draw():
            if args.noise == "torch":
                torch.manual_seed(args.seed)
            if class_labels is None:
                run = model if models is None else models(len(ids))
                if run is not model:
                    info["model_run"] = f"ahead-of-time package {run.key[:12]}"
                x, nfe = sampler(run)
            else:
                x, nfe = sampler(model, class_labels[ids]), info["nfe"]
            check_finite_samples(x.detach().float().cpu())
            return {"samples": x.detach().float().cpu().clamp(0.0, 1.0), "nfe": np.full(len(ids), int(nfe))}
        return draw

    stem = output_stem(args.out)
    report = {}

    def write(npz, result):
        images, wall = torch.from_numpy(result.arrays["samples"]), result.sample_s
        evaluator = DigitsEvaluator()
        quality = evaluator.evaluate(images)
        report.update({"model": os.path.basename(mf.path), **info, "precision": args.precision,
                       "precision_reason": args.precision_reason, "n": args.n, "nfe": int(result.arrays["nfe"].max()),
                       "wall_time_s": wall, "images_per_s": result.sampled / wall,
                       "threads": args.threads or torch.get_num_threads(), "fd": quality["fd"], "kid": quality["kid"],
                       **evaluator.scale_at(quality["n"], seed=args.seed), "classes": quality["classes"],
                       "classifier_test_accuracy": quality["test_accuracy"], "nonfinite": quality["nonfinite"]})
        if info["sampler"] == "pc":  # score_sde's nfe counts N (n_steps + 1) even when a "none" stage evaluates nothing
            report["model_evals"] = args.steps * ((info["corrector"] != "none") * info["n_steps_each"]
                                                  + (info["predictor"] != "none"))
        elif info["sampler"] != "ode":  # a solver's count is its model evaluations
            report["model_evals"] = report["nfe"]
        if class_labels is not None:
            predicted = evaluator.logits(images).argmax(1)
            report["class_label"] = args.class_label
            report["guidance_scale"] = info["guidance_scale"]
            report["requested_class_accuracy"] = float((predicted == class_labels).double().mean())
        report["npz"] = npz
        report["png"] = stem + ".png" if args.plot else None
        with AtomicOutputs() as files:  # both files or neither
            _write_images(args, report, images, class_labels, info, wall, files)


    # A resume must read the same bytes: the model file's (and the guiding classifier's) sha256, not only its path.
    arguments = {**_manifest_arguments(args), "model": mf.path, "model_sha256": distributed.file_sha256(mf.path)}
    if class_labels is not None:
        from fastsde.digits.pretrained import shipped_path

        classifier = shipped_path(f"digits_{mf.sde_name}_tclassifier.safetensors")
        arguments["classifier_sha256"] = distributed.file_sha256(classifier)
    result = with_threads(args, lambda: distributed.sample(
        factory, args.n, stem + ".npz", batch=batch, seed=args.seed, arguments=arguments,
        progress=args.progress and batch < args.n, write=write))
    if distributed.rank() != 0:
        return 0
    report.update(batch=batch, processes=distributed.world_size(), resumed=result.resumed,
                  command_s=process_seconds())
    print(json.dumps(report) if args.json else _format_images_report(report))
    return 0


def _ahead_of_time(args, mf, info, batch):
    """models(n) -> the model a micro-batch of n images runs: the cached ahead-of-time package (fastsde.aot) of the
    U-Net's plain-PyTorch build with the same weights in --precision (under a whole-graph compiler the plain layers
    win: Inductor fuses around them, while fastsde's fused ops are opaque to it; those are the eager path), built on
    first use for the run's batch size (other sizes use a package when one exists), or the model itself. None when
    it does not apply: --compile/--no-compile, FASTSDE_AOT=0, a non-CPU device, the ODE sampler or the reference
    backend (both read the model's output in float32), or a model file that is not a fastsde U-Net."""
    from fastsde import aot
    from fastsde.models.ncsnpp import UNet
    from fastsde.precision import for_sampling

    if (args.compile or args.no_compile or os.environ.get("FASTSDE_AOT", "1") == "0" or args.device != "cpu"
            or args.sampler == "ode" or info.get("backend") == "reference" or not isinstance(mf.model, UNet)):
        return None
    plain = UNet(mf.model.config, reference=True).to(args.device)
    plain.load_state_dict(mf.model.state_dict())
    target = for_sampling(plain.eval(), args.precision, torch.float32, {})  # the updates read its output as is
    chosen = {}

    def models(n):
        if n not in chosen:
            x, labels = torch.zeros(n, 1, 16, 16), torch.full((n,), 0.5)
            chosen[n] = aot.cached_model(target, x, labels, build=n == min(batch, args.n),
                                         progress=lambda m: print(f"fastsde: {m}", file=sys.stderr, flush=True))
            chosen[n] = chosen[n] or mf.model
        return chosen[n]

    models(min(batch, args.n))  # a first run builds the package here, before the timed sampling
    return models


def _write_images(args, report, images, class_labels, info, wall, files) -> None:
    from fastsde.digits import plotting

    np.savez(files.path(report["npz"]), samples=images.numpy(), **({"class_labels": class_labels.numpy()}
                                                                    if class_labels is not None else {}))
    if args.plot:
        what = (f"{info['predictor']}+{info['corrector']}, {args.steps} steps" if info["sampler"] == "pc" else
                f"probability-flow ODE, {report['nfe']} evaluations" if info["sampler"] == "ode" else
                f"{info['sampler']}, {report['nfe']} evaluations")
        title = (f"{report['model']}: {what}, {wall:.1f} s\nFD {report['fd']:.1f} (real vs "
                 f"real {fmt_optional(report['fd_real_vs_real'])}, noise {report['fd_real_vs_noise']:.0f})"
                 + ("" if report["kid"] is None
                    else f", KID {report['kid']['kid']:.0f} +- {report['kid']['stderr']:.0f}")
                 + (f", {100 * report['requested_class_accuracy']:.0f}% as requested" if class_labels is not None
                    else ""))
        plotting.save_image_grid(images, files.path(report["png"]), title=title,
                                 nrow=10 if args.class_label == "all" else None)


def _conditional_sampler(args, mf, sde, shape, inverse_scaler, *, sample_ids=None, progress=None):
    from fastsde import controllable
    from fastsde.digits.pretrained import load_classifier, shipped_path

    classifier, clf_sde, _ = load_classifier(shipped_path(f"digits_{mf.sde_name}_tclassifier.safetensors"),
                                             device=args.device)
    if clf_sde != mf.sde_name:
        raise ValueError(f"the shipped time-dependent classifier was trained under {clf_sde}, the model under "
                         f"{mf.sde_name}")
    predictor, corrector, eps = SDE_DEFAULTS[mf.sde_name]
    info = {"sde": mf.sde_name, "sampler": "pc", "steps": args.steps, "seed": args.seed, "noise": args.noise,
            "predictor": args.predictor or predictor, "corrector": args.corrector or corrector,
            "eps": args.eps or eps, "snr": args.snr or 0.16, "n_steps_each": 1 if args.n_steps_each is None
            else args.n_steps_each, "backend": args.backend or "auto", "denoise": args.denoise,
            "guidance_scale": args.guidance_scale or 1.0, "compile": bool(args.compile)}
    info["nfe"] = args.steps * (info["n_steps_each"] + 1)
    sampler = controllable.get_pc_conditional_sampler(
        sde, classifier, shape, info["predictor"], info["corrector"], inverse_scaler, info["snr"],
        n_steps=info["n_steps_each"], probability_flow=bool(args.probability_flow), continuous=True,
        denoise=args.denoise, eps=info["eps"], device=args.device, scale=info["guidance_scale"],
        backend=info["backend"], seed=args.seed, noise=args.noise, sample_ids=sample_ids,
        progress=args.progress if progress is None else progress, compile=info["compile"])
    return sampler, info


def _format_images_report(r: dict) -> str:
    c = r["classes"]
    rows = [
        ("samples", f"{r['n']} x 1 x 16 x 16" + (f"  ({r['nonfinite']} not finite!)" if r["nonfinite"] else "")),
        ("nfe", f"{r['nfe']}" + (f"  (score_sde's count; {r['model_evals']} model evaluations)"
                                 if r.get("model_evals", r["nfe"]) != r["nfe"] else "")),
        ("wall time", f"{r['wall_time_s']:.2f} s  ({r['images_per_s']:.1f} images/s, {r['threads']} threads)"
                      + ("" if r.get("command_s") is None else
                         f"; the whole command {r['command_s']:.1f} s (Python, torch, model, metrics, files)")),
        ("FD", f"{r['fd']:.2f}  (classifier features vs the 359 test digits; at n={r['n']}: real vs real "
               f"{fmt_optional(r['fd_real_vs_real'])}, noise vs real {r['fd_real_vs_noise']:.1f})"),
        ("KID", kid_text(r["kid"])),
        ("classes", f"{c['histogram']}  entropy {c['entropy']:.3f} of {c['max_entropy']:.3f}, confidence "
                    f"{c['confidence']:.3f}"),
    ]
    if "requested_class_accuracy" in r:
        rows.append(("requested", f"class {r['class_label']}: {100 * r['requested_class_accuracy']:.1f}% of samples "
                                  f"classified as requested (guidance scale {r['guidance_scale']:g})"))
    rows.append(("wrote", ", ".join(p for p in (r["npz"], r["png"]) if p)))
    sampler = _sampler_words(r)
    steps = f", {r['steps']} steps" if r["sampler"] != "ode" else ""
    backend = f", backend {r['backend']}" if r["sampler"] != "ode" else ""
    head = f"{r['model']}, {r['sde']} SDE, {sampler}{steps}, seed {r['seed']}{backend}, {_precision_words(r)}"
    return "\n".join([head] + [f"  {name:<11} {value}" for name, value in rows])


