"""The `fastsde` command: `fastsde sample` draws from a score model and scores the result, `fastsde info` describes
the installation.

Every subcommand is a `Command` in `COMMANDS`: `add_arguments(parser)` declares its options, `run(args) -> int`
does the work. Adding one is a function pair and a dict entry. Errors follow one rule: bad arguments exit 2, a run
that fails with a ValueError/RuntimeError/OSError exits 1, each with one line `fastsde: error: ...` on stderr and no
traceback (`--debug` re-raises instead).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

import fastsde
from fastsde import cli_images, sampling
from fastsde._cli_common import (_SDE_DEFAULTS, _model_spec, _nonnegative_int, _positive_float, _positive_int, _seed,
                                 _UsageError)
from fastsde import sde as sde_lib
from fastsde.models import analytic

__all__ = ["Command", "COMMANDS", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one `fastsde: error: ...` line instead of usage + exit."""

    def error(self, message):
        raise _UsageError(message)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description/epilog layout and appends '(default: X)' where the default is a value worth showing."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        shown = action.default is not None and action.default is not argparse.SUPPRESS \
            and not isinstance(action.default, bool)
        if shown and "%(default)" not in help_text and action.option_strings:
            help_text += " (default: %(default)s)"
        return help_text


@dataclass(frozen=True)
class Command:
    """A subcommand: one-line help, a longer description, its options and what it does."""

    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    epilog: str = ""


# --------------------------------------------------------------------------------------------------- sample

_SDES = {"ve": sde_lib.VESDE, "vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE}
_SDE_TITLES = {"ve": "VE", "vp": "VP", "subvp": "subVP"}
_BACKEND_NAMES = ("auto", "reference", "native", "triton")
_NULL_REPEATS = 10
# Options that mean something only for some --sde / --sampler values: dest -> (allowed values, what they apply to).
_ONLY_FOR = {
    "sigma_min": ("sde", ("ve",)), "sigma_max": ("sde", ("ve",)),
    "beta_min": ("sde", ("vp", "subvp")), "beta_max": ("sde", ("vp", "subvp")),
    "predictor": ("sampler", ("pc",)), "corrector": ("sampler", ("pc",)), "snr": ("sampler", ("pc",)),
    "n_steps_each": ("sampler", ("pc",)), "probability_flow": ("sampler", ("pc",)), "backend": ("sampler", ("pc",)),
    "rtol": ("sampler", ("ode",)), "atol": ("sampler", ("ode",)),
}


def _sample_arguments(p: argparse.ArgumentParser) -> None:
    predictors = sorted(sampling._PREDICTORS)
    correctors = sorted(sampling._CORRECTORS)
    model = p.add_argument_group("model and SDE")
    model.add_argument("--model", type=_model_spec, default="digits", metavar="MODEL",
                       help="score model: 'digits' (the shipped 16x16 digits model of --sde), a score model file "
                            "PATH.safetensors (fastsde train's model.safetensors), or 'gmm[:NAME]': the exact "
                            f"score of a Gaussian-mixture preset, NAME one of {', '.join(sorted(analytic.PRESETS))}")
    model.add_argument("--sde", choices=sorted(_SDES), default=None,
                       help="forward SDE (default: vp for digits, ve for gmm; a model file brings its own)")
    model.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                       help="discretization steps N of the SDE (= sampler time steps; default: "
                            f"{cli_images.DIGITS_DEFAULTS['steps']} for digits, 1000 for gmm)")
    model.add_argument("--sigma-min", type=_positive_float, metavar="S", help="VE sigma_min (default: 0.01)")
    model.add_argument("--sigma-max", type=_positive_float, metavar="S",
                       help="VE sigma_max (default: 50, score_sde's; ~5 is plenty for the 2-D presets)")
    model.add_argument("--beta-min", type=float, metavar="B", help="VP/subVP beta_min (default: 0.1)")
    model.add_argument("--beta-max", type=float, metavar="B", help="VP/subVP beta_max (default: 20)")
    cont = model.add_mutually_exclusive_group()
    cont.add_argument("--continuous", dest="continuous", action="store_true", default=True,
                      help="condition the model on continuous time labels (default)")
    cont.add_argument("--discrete", dest="continuous", action="store_false",
                      help="condition the model on discrete timestep labels (score_sde's DDPM/SMLD models; pc only)")

    sampler = p.add_argument_group("sampler")
    sampler.add_argument("--sampler", choices=("pc", "ode"), default="pc",
                         help="predictor-corrector or probability-flow ODE (scipy RK45)")
    sampler.add_argument("--predictor", choices=predictors, metavar="P",
                         help=f"pc predictor, one of {', '.join(predictors)} "
                              "(default: reverse_diffusion for ve, euler_maruyama for vp/subvp)")
    sampler.add_argument("--corrector", choices=correctors, metavar="C",
                         help=f"pc corrector, one of {', '.join(correctors)} "
                              "(default: langevin for ve, none for vp/subvp)")
    sampler.add_argument("--snr", type=_positive_float, metavar="R",
                         help="corrector signal-to-noise ratio (default: 0.16)")
    sampler.add_argument("--n-steps-each", type=_nonnegative_int, metavar="K",
                         help="corrector iterations per time step (default: 1)")
    sampler.add_argument("--probability-flow", action="store_true", default=None,
                         help="pc predictor follows the probability-flow ODE instead of the reverse SDE")
    sampler.add_argument("--rtol", type=_positive_float, metavar="TOL", help="ode relative tolerance (default: 1e-5)")
    sampler.add_argument("--atol", type=_positive_float, metavar="TOL", help="ode absolute tolerance (default: 1e-5)")
    sampler.add_argument("--eps", type=_positive_float, metavar="E",
                         help="last time step eps (default: 1e-5 for ve, 1e-3 for vp/subvp)")
    sampler.add_argument("--no-denoise", dest="denoise", action="store_false", default=True,
                         help="return the last noisy iterate instead of its mean (score_sde's noise_removal=False)")
    sampler.add_argument("--noise", choices=("fastsde", "torch"), default="fastsde",
                         help="noise source: the FSN1 counter-based stream, or torch.randn seeded with --seed")
    sampler.add_argument("--backend", choices=_BACKEND_NAMES, metavar="B",
                         help=f"pc update-step implementation, one of {', '.join(_BACKEND_NAMES)}; the sampler "
                              "rejects one that is not available (default: auto)")
    sampler.add_argument("--device", default="cpu", help="torch device to sample on")
    sampler.add_argument("--threads", type=_positive_int, metavar="T",
                         help="torch CPU threads (default: torch's, from OMP_NUM_THREADS or the core count; "
                              "1 is fastest for the 2-D presets on a busy machine)")

    run = p.add_argument_group("samples and output")
    run.add_argument("--n", type=_positive_int, default=None, metavar="M",
                     help="number of samples (default: 64 digits, 2048 gmm points)")
    run.add_argument("--class-label", default=None, metavar="K",
                     help="digits only: class-conditional sampling of digit K (0-9), or 'all' for n/10 of each, "
                          "guided by the shipped time-dependent classifier")
    run.add_argument("--guidance-scale", type=_positive_float, default=None, metavar="W",
                     help="digits only: classifier guidance weight (default: 1)")
    run.add_argument("--seed", type=_seed, default=0, metavar="K",
                     help="seed of the sampler noise and of the exact reference samples; same seed, same file")
    run.add_argument("--out", default="samples", metavar="PATH",
                     help="output .npz path ('.npz' added when there is no extension); a PNG with the same "
                          "stem is written next to it; parent directories are created")
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
            raise _UsageError(f"{flag} applies to --model {'gmm[:NAME]' if kind != 'gmm' else 'digits or a file'} "
                              f"only")
    if kind != "gmm" and not args.continuous:
        raise _UsageError("--discrete applies to --model gmm only (image models use continuous time labels)")
    if kind == "file" and args.sde is not None:
        raise _UsageError("--sde does not apply to a model file: it was trained under its own SDE")
    if args.sde is None:
        args.sde = cli_images.DIGITS_DEFAULTS["sde"] if kind == "digits" else "ve"
    for dest, (selector, allowed) in _ONLY_FOR.items():
        if getattr(args, dest) is not None and getattr(args, selector) not in allowed:
            flag = "--" + dest.replace("_", "-")
            raise _UsageError(f"{flag} applies to --{selector} {'/'.join(allowed)} only, "
                              f"not --{selector} {getattr(args, selector)}")
    if args.sampler == "ode" and not args.continuous:
        raise _UsageError("--discrete applies to --sampler pc only (the ODE sampler uses continuous time labels)")


def _build_sde(args: argparse.Namespace) -> sde_lib.SDE:
    if args.sde == "ve":
        sigma_min = 0.01 if args.sigma_min is None else args.sigma_min
        sigma_max = 50.0 if args.sigma_max is None else args.sigma_max
        return sde_lib.VESDE(sigma_min=sigma_min, sigma_max=sigma_max, N=args.steps)
    beta_min = 0.1 if args.beta_min is None else args.beta_min
    beta_max = 20.0 if args.beta_max is None else args.beta_max
    return _SDES[args.sde](beta_min=beta_min, beta_max=beta_max, N=args.steps)


def _npz_path(out: str) -> str:
    root, ext = os.path.splitext(out)
    return out if ext else out + ".npz"


def _build_sampler(args: argparse.Namespace, sde: sde_lib.SDE, shape: tuple[int, ...], inverse_scaler=None):
    """(sampler(model) -> (x, nfe), the settings it was built with) from the command line."""
    default_predictor, default_corrector, default_eps = _SDE_DEFAULTS[args.sde]
    inverse_scaler = inverse_scaler or (lambda x: x)
    eps = default_eps if args.eps is None else args.eps
    info = {"sde": args.sde, "sampler": args.sampler, "steps": args.steps, "eps": eps, "seed": args.seed,
            "noise": args.noise, "continuous": args.continuous, "denoise": args.denoise}
    if args.sampler == "ode":
        info.update(predictor="none", corrector="none", rtol=args.rtol or 1e-5, atol=args.atol or 1e-5)
        return sampling.get_ode_sampler(sde, shape, inverse_scaler, denoise=args.denoise, rtol=info["rtol"],
                                        atol=info["atol"], eps=eps, device=args.device, seed=args.seed,
                                        noise=args.noise), info
    info.update(predictor=args.predictor or default_predictor, corrector=args.corrector or default_corrector,
                snr=0.16 if args.snr is None else args.snr,
                n_steps_each=1 if args.n_steps_each is None else args.n_steps_each,
                probability_flow=bool(args.probability_flow), backend=args.backend or "auto")
    return sampling.get_pc_sampler(
        sde, shape, info["predictor"], info["corrector"], inverse_scaler, info["snr"], n_steps=info["n_steps_each"],
        probability_flow=info["probability_flow"], continuous=args.continuous, denoise=args.denoise, eps=eps,
        device=args.device, backend=info["backend"], seed=args.seed, noise=args.noise, progress=args.progress), info


def _quality(samples: torch.Tensor, reference: torch.Tensor, mixture, seed: int) -> dict:
    """Moment errors, sliced W2 to the exact reference and, for scale, the median exact-vs-exact SW at this n."""
    from fastsde import metrics

    null = metrics.sliced_wasserstein_null(mixture, len(samples), repeats=_NULL_REPEATS,
                                           sample_seed=(seed + 1) % 2**64)
    return dict(nonfinite=int((~torch.isfinite(samples).all(dim=1)).sum()),
                **metrics.moment_errors(samples, mixture),
                sliced_wasserstein=metrics.sliced_wasserstein(samples, reference),
                sliced_wasserstein_null_median=float(np.median(null)))


def _run_sample(args: argparse.Namespace) -> int:
    from fastsde import plotting

    _check_applicable(args)
    if args.model[0] != "gmm":
        return cli_images.run_sample_images(args)
    args.steps = args.steps or 1000
    args.n = args.n or 2048
    _, preset = args.model
    mixture = analytic.get_mixture(preset)
    sde = _build_sde(args)
    sampler, info = _build_sampler(args, sde, (args.n, mixture.dim))
    model = analytic.AnalyticScoreModel(mixture, sde, continuous=args.continuous).to(args.device)

    threads = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.noise == "torch":
            torch.manual_seed(args.seed)  # torch noise comes from the global generator
        start = time.perf_counter()
        x, nfe = sampler(model)
        wall = time.perf_counter() - start
        report = dict(model=f"gmm:{preset}", **info, n=args.n, dim=mixture.dim, threads=torch.get_num_threads(),
                      nfe=int(nfe), wall_time_s=wall, samples_per_s=args.n / wall, version=fastsde.__version__)
    finally:
        torch.set_num_threads(threads)
    samples = x.detach().cpu().to(torch.float32).reshape(args.n, mixture.dim)
    reference = mixture.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    report.update(_quality(samples, reference, mixture, args.seed))

    npz = _npz_path(args.out)
    os.makedirs(os.path.dirname(npz) or ".", exist_ok=True)
    np.savez(npz, samples=samples.numpy(), reference=reference.numpy(),
             **{key: np.asarray(value) for key, value in report.items()})
    report["npz"] = npz
    report["png"] = os.path.splitext(npz)[0] + ".png" if args.plot else None
    if args.plot:
        plotting.plot_samples_2d(samples, mixture, report["png"], _plot_title(report))
    print(json.dumps(report) if args.json else _format_report(report))
    return 0


def _sampler_words(r: dict) -> str:
    if r["sampler"] == "ode":
        return f"probability-flow ODE (rtol {r['rtol']:g}, atol {r['atol']:g})"
    return f"pc {r['predictor']} + {r['corrector']}"


def _plot_title(r: dict) -> str:
    return (f"{r['model']}: {_SDE_TITLES[r['sde']]} SDE, {_sampler_words(r)}, {r['steps']} steps  |  "
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
    head = f"{r['model']}, {_SDE_TITLES[r['sde']]} SDE, {_sampler_words(r)}, {r['steps']} steps, seed {r['seed']}"
    return "\n".join([head] + [f"  {name:<11} {value}" for name, value in rows])


# --------------------------------------------------------------------------------------------------- info


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the information as one JSON object")


def _triton_status() -> str:
    try:
        import triton
    except Exception as exc:  # noqa: BLE001  (a broken triton install can raise anything at import)
        return f"not importable ({type(exc).__name__}: {exc})"
    return f"importable, version {getattr(triton, '__version__', 'unknown')}"


def _run_info(args: argparse.Namespace) -> int:
    from fastsde import _native
    from fastsde.noise import NOISE_KINDS
    from fastsde.pretrained import DATA_DIR

    native = {"available": _native.available(), "unavailable_reason": _native.unavailable_reason()}
    if native["available"]:
        native["build_info"] = _native.build_info()
    report = {
        "fastsde": fastsde.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "native": native,
        "triton": _triton_status(),
        "sdes": sorted(_SDES),
        "predictors": sorted(sampling._PREDICTORS),
        "correctors": sorted(sampling._CORRECTORS),
        "backends": list(sampling.BACKENDS),
        "noise": list(NOISE_KINDS),
        "mixtures": sorted(analytic.PRESETS),
        "shipped": sorted(os.listdir(DATA_DIR)) if os.path.isdir(DATA_DIR) else [],
    }
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    if native["available"]:
        native_line = "loaded; " + ", ".join(f"{k}={v}" for k, v in native["build_info"].items())
    else:
        native_line = f"not loaded ({native['unavailable_reason']})"
    rows = [
        ("fastsde", report["fastsde"]), ("torch", report["torch"]), ("threads", report["threads"]),
        ("cuda", "available" if report["cuda"] else "not available"), ("native", native_line),
        ("triton", report["triton"]),
    ] + [(key, ", ".join(report[key])) for key in ("sdes", "predictors", "correctors", "backends", "noise",
                                                    "mixtures", "shipped")]
    print("\n".join(f"{name:<11} {value}" for name, value in rows))
    return 0


# --------------------------------------------------------------------------------------------------- bench

_BENCH_MODULES = {"steps": "step", "sampler": "sampler", "attention": "attention", "unet": "unet",
                  "groupnorm": "groupnorm", "e2e": "e2e"}  # suite -> fastsde.benchmarks.bench_<module>
_BENCH_SUITES = tuple(_BENCH_MODULES)


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=_BENCH_SUITES, metavar="SUITE",
                   help=f"which suite to run: {', '.join(_BENCH_SUITES)}")
    p.add_argument("--quick", action="store_true", help="fewer repeats (a rough number in less time)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the records as a JSON list to PATH")
    p.add_argument("--backend", choices=("native", "triton"), default="native",
                   help="the fused backend to measure")
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads for every measurement")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--tradeoff", metavar="STEM", default=None,
                   help="e2e only: also measure quality vs time across PC step counts and ODE tolerances and write "
                        "STEM.json and STEM.png")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="e2e only: images per --tradeoff run (default: 256; the timed case is always 64)")


def _run_bench(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise _UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.suite != "e2e" and (args.tradeoff or args.n):
        raise _UsageError("--tradeoff and --n apply to the e2e suite only")
    torch.set_num_threads(args.threads)
    from fastsde.benchmarks.common import print_table, write_json

    print(f"fastsde bench {args.suite}: float32, {args.threads} threads, backend {args.backend}", flush=True)
    module = importlib.import_module(f"fastsde.benchmarks.bench_{_BENCH_MODULES[args.suite]}")
    kwargs = {} if args.suite == "sampler" else {"use_compile": not args.no_compile}  # the sampler suite has none
    records = module.run(quick=args.quick, backend=args.backend, **kwargs)
    print()
    print_table(records)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        write_json(records, args.json)
        print(f"wrote {args.json}")
    if args.tradeoff:
        from fastsde.benchmarks import bench_e2e

        print("quality vs time (fastsde native):", flush=True)
        result = bench_e2e.tradeoff(n=args.n or 256, backend=args.backend)
        os.makedirs(os.path.dirname(os.path.abspath(args.tradeoff)), exist_ok=True)
        with open(args.tradeoff + ".json", "w") as f:
            json.dump(result, f, indent=1)
        bench_e2e.plot_tradeoff(result, args.tradeoff + ".png")
        print(f"wrote {args.tradeoff}.json, {args.tradeoff}.png")
    return 0


# --------------------------------------------------------------------------------------------------- the command

COMMANDS: dict[str, Command] = {
    "train": Command(
        help="train a score model (or a digit classifier) by denoising score matching, resumably",
        description="Train a small16 U-Net score model of the 16x16 digits by continuous-time denoising\n"
                    "score matching (score_sde's weighting; --likelihood-weighting for g^2), with Adam,\n"
                    "warm-up, gradient clipping and EMA. Checkpoints every --checkpoint-every steps; running\n"
                    "the same command again resumes from the checkpoint in --out. Writes sample grids during\n"
                    "training and the EMA weights to OUT/model.safetensors.",
        add_arguments=cli_images.train_arguments,
        run=cli_images.run_train,
        epilog="examples:\n"
               "  fastsde train --dataset digits --sde vp --preset small16 --steps 4000 --out runs/digits_vp\n"
               "  fastsde train --classifier clean --steps 1500 --out runs/classifier",
    ),
    "sample": Command(
        help="sample digits from the shipped model (or a mixture's exact score), report time and quality",
        description="With no arguments: sample 64 digits from the shipped VP digits model with the default\n"
                    "fast sampler, print the time and the quality (Fréchet distance in a digit classifier's\n"
                    "features, class histogram) and write samples.png/.npz. --class-label K samples digit K\n"
                    "with classifier guidance. --model gmm[:NAME] samples a Gaussian-mixture preset through\n"
                    "its exact score instead and scores it against exact samples (moment errors, sliced\n"
                    "Wasserstein). Sampler defaults follow score_sde: ve -> reverse_diffusion + langevin,\n"
                    "vp/subvp -> euler_maruyama + none.",
        add_arguments=_sample_arguments,
        run=_run_sample,
        epilog="examples:\n"
               "  fastsde sample\n"
               "  fastsde sample --class-label all --n 100 --out out/classes\n"
               "  fastsde sample --model gmm:ring --out out/ring\n"
               "  fastsde sample --sde vp --steps 500 --model gmm:checkerboard --out out/checkerboard\n"
               "  fastsde sample --sde ve --sigma-max 5 --sampler ode --json --out out/ode",
    ),
    "eval": Command(
        help="score generated digits: Fréchet distance in a digit classifier's features, class histogram",
        description="Sample --n digits from the model (or read --samples NPZ) and report the Fréchet\n"
                    "distance to the held-out test digits in the shipped classifier's feature space, the\n"
                    "histogram and entropy of predicted classes, the classifier's accuracy on real test\n"
                    "digits, and real-vs-real / noise-vs-real distances at the same n for scale.",
        add_arguments=cli_images.eval_arguments,
        run=cli_images.run_eval,
        epilog="examples:\n  fastsde eval --n 256\n  fastsde sample --n 256 --out out/s && fastsde eval --samples "
               "out/s.npz",
    ),
    "inpaint": Command(
        help="complete partly masked test digits with the score model (known pixels kept exactly)",
        description="Mask part of --n test digits and generate the rest with score_sde's PC inpainter\n"
                    "(the projection fused into the update kernels). Writes a picture of the originals,\n"
                    "the known pixels and the completions, and reports how many completions the classifier\n"
                    "reads as the original digit.",
        add_arguments=cli_images.inpaint_arguments,
        run=cli_images.run_inpaint,
        epilog="examples:\n  fastsde inpaint --out out/inpaint\n  fastsde inpaint --mask bottom --n 25",
    ),
    "likelihood": Command(
        help="bits/dim of test digits under the model (probability-flow ODE, Hutchinson trace)",
        description="Exact likelihood of --n test digits through the probability-flow ODE (scipy RK45)\n"
                    "with a Hutchinson divergence estimate; prints the mean bits/dim and its standard error.",
        add_arguments=cli_images.likelihood_arguments,
        run=cli_images.run_likelihood,
        epilog="examples:\n  fastsde likelihood --n 32 --seed 0",
    ),
    "bench": Command(
        help="time the fused kernels against the reference, the best eager form and torch.compile",
        description="Microbenchmarks (steps: one sampler update on 16M/1M float32 elements; groupnorm,\n"
                    "attention, unet: the U-Net hot paths), whole samplers (sampler: the 2-D ring) and the\n"
                    "main job end to end (e2e: 64 digits from the shipped model, fastsde native vs the\n"
                    "reference engine and model build). Prints a table and optionally writes JSON\n"
                    "records with the median time, achieved GB/s, the copy-bandwidth floor measured in the\n"
                    "same run, and the speedup over each baseline.",
        add_arguments=_bench_arguments,
        run=_run_bench,
        epilog="examples:\n  fastsde bench steps --quick\n  fastsde bench sampler --json out/sampler.json\n"
               "  fastsde bench e2e --json out/e2e.json --tradeoff out/tradeoff",
    ),
    "info": Command(
        help="print versions, the native extension and triton status, and the registered components",
        description="Print the fastsde and torch versions, torch threads, whether the native extension\n"
                    "and triton load, and the SDEs, predictors, correctors, backends and mixture presets.",
        add_arguments=_info_arguments,
        run=_run_info,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `fastsde` parser with one subparser per entry of COMMANDS."""
    parser = _Parser(prog="fastsde", formatter_class=_HelpFormatter,
                     description="fastsde: fast, reproducible samplers for score-based diffusion models.",
                     epilog="run `fastsde COMMAND --help` for the options of a command")
    parser.add_argument("--version", action="version", version=f"fastsde {fastsde.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description, epilog=command.epilog,
                           formatter_class=_HelpFormatter)
        command.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback when the command fails")
    return parser


def _error(message: str) -> None:
    print(f"fastsde: error: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the `fastsde` command line (sys.argv[1:] by default); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as err:
        _error(err)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return COMMANDS[args.command].run(args)
    except _UsageError as err:
        if args.debug:
            raise
        _error(err)
        return 2
    except (ValueError, RuntimeError, OSError) as err:
        if args.debug:
            raise
        _error(err)
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
