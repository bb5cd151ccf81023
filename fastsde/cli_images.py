"""The image-model commands of `fastsde`: train, eval, inpaint, likelihood (and the digits path of `sample`).

Each is an (add_arguments, run) pair registered in fastsde.cli.COMMANDS; the error rules are cli.py's (bad
arguments exit 2, failures exit 1, one line on stderr).
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from fastsde._cli_common import _SDE_DEFAULTS, _model_spec, _positive_int, _seed, _UsageError

__all__ = ["DIGITS_DEFAULTS", "train_arguments", "run_train", "run_sample_images", "eval_arguments", "run_eval",
           "inpaint_arguments", "run_inpaint", "likelihood_arguments", "run_likelihood", "make_mask",
           "score_model_path", "load_model_for"]


def train_arguments(p: argparse.ArgumentParser) -> None:
    from fastsde.training import SDE_NAMES, TrainConfig

    d = TrainConfig()
    p.add_argument("--dataset", choices=("digits",), default=d.dataset, help="training data (no download)")
    p.add_argument("--sde", choices=SDE_NAMES, default=d.sde, help="forward SDE")
    p.add_argument("--preset", default=d.preset, help="UNet preset of fastsde.models.ncsnpp")
    p.add_argument("--steps", type=_positive_int, default=d.steps, help="optimisation steps in total")
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate after warm-up")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="gradient-norm clip (0: off)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay of the exported weights")
    p.add_argument("--likelihood-weighting", action="store_true", help="weight the loss by g(t)^2")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=_positive_int, default=d.checkpoint_every)
    p.add_argument("--snapshot-every", type=_positive_int, default=d.snapshot_every,
                   help="write a sample grid (EMA weights) every this many steps")
    p.add_argument("--snapshot-steps", type=_positive_int, default=d.snapshot_steps,
                   help="sampler steps of those grids")
    p.add_argument("--classifier", choices=("none", "clean", "noisy"), default="none",
                   help="train a digit classifier instead of a score model: 'clean' (the eval metric's feature "
                        "space) or 'noisy' (time-dependent, for class-conditional sampling under --sde); it uses "
                        "--steps, --batch-size, --lr, --seed, --sde and --out only (AdamW, cosine decay; a few "
                        "minutes, so not checkpointed)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", required=True, help="run directory (checkpoint, sample grids, exported model)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def run_train(args: argparse.Namespace) -> int:
    from fastsde.training import TrainConfig, Trainer, train_classifier

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.classifier != "none":
        summary = train_classifier(args.out, time_dependent=args.classifier == "noisy", sde=args.sde,
                                   steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                   device=args.device, progress=args.progress)
        print(json.dumps(summary, indent=2))
        return 0
    config = TrainConfig(dataset=args.dataset, sde=args.sde, preset=args.preset, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, grad_clip=args.grad_clip,
                         ema_decay=args.ema_decay, likelihood_weighting=args.likelihood_weighting, seed=args.seed,
                         checkpoint_every=args.checkpoint_every, snapshot_every=args.snapshot_every,
                         snapshot_steps=args.snapshot_steps)
    trainer = Trainer(config, args.out, device=args.device, progress=args.progress)
    summary = trainer.run()
    print(f"trained {summary['steps']} steps ({summary['trained_now']} now, {summary['seconds']:.0f} s); loss "
          f"{summary['loss_first100']:.4f} (first 100) -> {summary['loss_last100']:.4f} (last 100); "
          f"wrote {summary['model']} and sample grids in {os.path.abspath(args.out)}")
    return 0


# ------------------------------------------------------------------------------------------- shared: models


# The default fast sampler for the shipped digits model (fastsde sample with no arguments, bench e2e): the VP
# model with score_sde's VP sampler (Euler-Maruyama predictor, no corrector) at 200 steps, 64 digits.
DIGITS_DEFAULTS = {"sde": "vp", "steps": 200, "n": 64}
DIGITS_DEFAULTS.update(zip(("predictor", "corrector", "eps"), _SDE_DEFAULTS[DIGITS_DEFAULTS["sde"]]))


def score_model_path(kind: str, spec: str, sde: str | None) -> str:
    """The file behind --model: the shipped digits_<sde>.safetensors, or the given path."""
    from fastsde.pretrained import shipped_path

    if kind == "digits":
        return shipped_path(f"digits_{sde or DIGITS_DEFAULTS['sde']}.safetensors")
    if not os.path.exists(spec):
        raise FileNotFoundError(f"{spec}: no such score model file")
    return spec


def load_model_for(args: argparse.Namespace):
    """(ScoreModelFile, backend) for --model/--sde/--backend; backend 'reference' builds the plain-PyTorch UNet."""
    from fastsde.pretrained import load_score_model

    backend = getattr(args, "backend", None) or "auto"
    path = score_model_path(args.model[0], args.model[1], args.sde if args.model[0] == "digits" else None)
    mf = load_score_model(path, reference=backend == "reference",
                          backend="auto" if backend == "reference" else backend, device=args.device)
    if mf.model.config.resolution != 16 or mf.model.config.in_channels != 1:
        raise ValueError(f"{path}: the image commands handle 1x16x16 digits models, this one is "
                         f"{mf.model.config.in_channels}x{mf.model.config.resolution}x{mf.model.config.resolution}")
    return mf, backend


def _with_threads(args, fn):
    threads = torch.get_num_threads()
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        return fn()
    finally:
        torch.set_num_threads(threads)


def _stem(out: str) -> str:
    root, ext = os.path.splitext(out)
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    return root if ext in (".png", ".npz") else out


def _class_labels(spec: str, n: int) -> torch.Tensor:
    if spec == "all":
        if n % 10:
            raise _UsageError(f"--class-label all needs --n a multiple of 10 (n/10 of each digit), got {n}")
        return torch.arange(n) * 10 // n
    try:
        k = int(spec)
    except ValueError:
        raise _UsageError(f"--class-label must be a digit 0-9 or 'all', got {spec!r}") from None
    if not 0 <= k <= 9:
        raise _UsageError(f"--class-label must be a digit 0-9 or 'all', got {spec!r}")
    return torch.full((n,), k, dtype=torch.long)


# ------------------------------------------------------------------------------------------- sample (digits)


def run_sample_images(args: argparse.Namespace) -> int:
    """`fastsde sample` for image models: sample a grid, time it, score it with the digits metrics, write png/npz."""
    import time

    import numpy as np

    from fastsde import plotting
    from fastsde.cli import _build_sampler
    from fastsde.datasets import get_data_inverse_scaler
    from fastsde.evaluation import DigitsEvaluator

    if args.class_label is not None:
        _class_labels(args.class_label, 10)  # a bad label is a usage error, found before loading anything
        if args.sampler != "pc":
            raise _UsageError("--class-label needs --sampler pc (classifier guidance runs in the PC sampler)")
    elif args.guidance_scale is not None:
        raise _UsageError("--guidance-scale applies with --class-label only")
    mf, _ = load_model_for(args)
    args.sde = mf.sde_name
    args.steps = args.steps or DIGITS_DEFAULTS["steps"]
    args.n = args.n or DIGITS_DEFAULTS["n"]
    if args.class_label is not None:
        _class_labels(args.class_label, args.n)
    sde = mf.make_sde(N=args.steps)
    shape = (args.n, 1, 16, 16)
    inverse_scaler = get_data_inverse_scaler(mf.centered)
    class_labels = None
    if args.class_label is not None:
        class_labels = _class_labels(args.class_label, args.n)
        sampler, info = _conditional_sampler(args, mf, sde, shape, inverse_scaler)
    else:
        sampler, info = _build_sampler(args, sde, shape, inverse_scaler)

    def draw():
        start = time.perf_counter()
        out = sampler(mf.model) if class_labels is None else sampler(mf.model, class_labels)
        return out, time.perf_counter() - start

    out, wall = _with_threads(args, draw)
    x, nfe = out if class_labels is None else (out, info["nfe"])
    images = x.detach().float().cpu().clamp(0.0, 1.0)
    evaluator = DigitsEvaluator()
    quality = evaluator.evaluate(images)
    report = {"model": os.path.basename(mf.path), **info, "n": args.n, "nfe": int(nfe), "wall_time_s": wall,
              "images_per_s": args.n / wall, "threads": args.threads or torch.get_num_threads(),
              "fd": quality["fd"], **evaluator.scale_at(quality["n"], seed=args.seed), "classes": quality["classes"],
              "classifier_test_accuracy": quality["test_accuracy"], "nonfinite": quality["nonfinite"]}
    if info["sampler"] == "pc":  # score_sde's nfe counts N (n_steps + 1) even when a "none" stage evaluates nothing
        report["model_evals"] = args.steps * ((info["corrector"] != "none") * info["n_steps_each"]
                                              + (info["predictor"] != "none"))
    if class_labels is not None:
        predicted = evaluator.logits(images).argmax(1)
        report["class_label"] = args.class_label
        report["guidance_scale"] = info["guidance_scale"]
        report["requested_class_accuracy"] = float((predicted == class_labels).double().mean())
    stem = _stem(args.out)
    report["npz"] = stem + ".npz"
    report["png"] = stem + ".png" if args.plot else None
    np.savez(report["npz"], samples=images.numpy(), **({"class_labels": class_labels.numpy()}
                                                       if class_labels is not None else {}))
    if args.plot:
        what = (f"{info['predictor']}+{info['corrector']}, {args.steps} steps" if info["sampler"] == "pc" else
                f"probability-flow ODE, {report['nfe']} evaluations")
        title = (f"{report['model']}: {what}, {wall:.1f} s\nFD {report['fd']:.1f} (real vs "
                 f"real {_opt(report['fd_real_vs_real'])}, noise {report['fd_real_vs_noise']:.0f})"
                 + (f", {100 * report['requested_class_accuracy']:.0f}% as requested" if class_labels is not None
                    else ""))
        plotting.save_image_grid(images, report["png"], title=title, nrow=10 if args.class_label == "all" else None)
    print(json.dumps(report) if args.json else _format_images_report(report))
    return 0


def _conditional_sampler(args, mf, sde, shape, inverse_scaler):
    from fastsde import controllable
    from fastsde.pretrained import load_classifier, shipped_path

    classifier, clf_sde, _ = load_classifier(shipped_path(f"digits_{mf.sde_name}_tclassifier.safetensors"),
                                             device=args.device)
    if clf_sde != mf.sde_name:
        raise ValueError(f"the shipped time-dependent classifier was trained under {clf_sde}, the model under "
                         f"{mf.sde_name}")
    predictor, corrector, eps = _SDE_DEFAULTS[mf.sde_name]
    info = {"sde": mf.sde_name, "sampler": "pc", "steps": args.steps, "seed": args.seed, "noise": args.noise,
            "predictor": args.predictor or predictor, "corrector": args.corrector or corrector,
            "eps": args.eps or eps, "snr": args.snr or 0.16, "n_steps_each": 1 if args.n_steps_each is None
            else args.n_steps_each, "backend": args.backend or "auto", "denoise": args.denoise,
            "guidance_scale": args.guidance_scale or 1.0}
    info["nfe"] = args.steps * (info["n_steps_each"] + 1)
    sampler = controllable.get_pc_conditional_sampler(
        sde, classifier, shape, info["predictor"], info["corrector"], inverse_scaler, info["snr"],
        n_steps=info["n_steps_each"], probability_flow=bool(args.probability_flow), continuous=True,
        denoise=args.denoise, eps=info["eps"], device=args.device, scale=info["guidance_scale"],
        backend=info["backend"], seed=args.seed, noise=args.noise, progress=args.progress)
    return sampler, info


def _opt(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _format_images_report(r: dict) -> str:
    c = r["classes"]
    rows = [
        ("samples", f"{r['n']} x 1 x 16 x 16" + (f"  ({r['nonfinite']} not finite!)" if r["nonfinite"] else "")),
        ("nfe", f"{r['nfe']}" + (f"  (score_sde's count; {r['model_evals']} model evaluations)"
                                 if r.get("model_evals", r["nfe"]) != r["nfe"] else "")),
        ("wall time", f"{r['wall_time_s']:.2f} s  ({r['images_per_s']:.1f} images/s, {r['threads']} threads)"),
        ("FD", f"{r['fd']:.2f}  (classifier features vs the 359 test digits; at n={r['n']}: real vs real "
               f"{_opt(r['fd_real_vs_real'])}, noise vs real {r['fd_real_vs_noise']:.1f})"),
        ("classes", f"{c['histogram']}  entropy {c['entropy']:.3f} of {c['max_entropy']:.3f}, confidence "
                    f"{c['confidence']:.3f}"),
    ]
    if "requested_class_accuracy" in r:
        rows.append(("requested", f"class {r['class_label']}: {100 * r['requested_class_accuracy']:.1f}% of samples "
                                  f"classified as requested (guidance scale {r['guidance_scale']:g})"))
    rows.append(("wrote", ", ".join(p for p in (r["npz"], r["png"]) if p)))
    sampler = (f"pc {r['predictor']} + {r['corrector']}" if r["sampler"] == "pc" else
               f"probability-flow ODE (rtol {r['rtol']:g}, atol {r['atol']:g})")
    steps = f", {r['steps']} steps" if r["sampler"] == "pc" else ""
    backend = f", backend {r['backend']}" if r["sampler"] == "pc" else ""
    head = f"{r['model']}, {r['sde']} SDE, {sampler}{steps}, seed {r['seed']}{backend}"
    return "\n".join([head] + [f"  {name:<11} {value}" for name, value in rows])


# ------------------------------------------------------------------------------------------- common options


def _image_model_arguments(p: argparse.ArgumentParser, n_default: int) -> None:
    p.add_argument("--model", default="digits", metavar="MODEL",
                   help="'digits' (the shipped digits model of --sde) or a score model file PATH.safetensors")
    p.add_argument("--sde", choices=("ve", "vp", "subvp"), default=None,
                   help=f"which shipped digits model (default: {DIGITS_DEFAULTS['sde']})")
    p.add_argument("--n", type=_positive_int, default=n_default, help="number of test digits / samples")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the noise (and of the choice of test digits)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def _parse_model(args) -> None:
    try:
        kind = _model_spec(args.model)
    except argparse.ArgumentTypeError as err:
        raise _UsageError(f"--model: {err}") from None
    if kind[0] == "gmm":
        raise _UsageError("this command takes an image model: 'digits' or PATH.safetensors")
    if kind[0] == "file" and args.sde is not None:
        raise _UsageError("--sde does not apply to a model file: it was trained under its own SDE")
    args.model = kind


def _test_subset(n: int, seed: int):
    from fastsde.datasets import load_digits

    images, labels = load_digits("test")
    if n > images.shape[0]:
        raise _UsageError(f"--n must be at most {images.shape[0]} (the test split), got {n}")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[idx], labels[idx]


# ------------------------------------------------------------------------------------------- inpaint

_MASKS = ("right", "left", "bottom", "top", "checker")


def make_mask(kind: str, n: int, size: int = 16) -> torch.Tensor:
    """(n, 1, size, size) mask, 1 where the pixel is known: 'right' keeps the left half known and so on."""
    m = torch.zeros(size, size)
    half = size // 2
    if kind == "right":
        m[:, :half] = 1
    elif kind == "left":
        m[:, half:] = 1
    elif kind == "bottom":
        m[:half, :] = 1
    elif kind == "top":
        m[half:, :] = 1
    elif kind == "checker":
        m = ((torch.arange(size)[:, None] // 4 + torch.arange(size)[None, :] // 4) % 2).float()
    else:
        raise ValueError(f"mask must be one of {_MASKS}, got {kind!r}")
    return m.expand(n, 1, size, size).contiguous()


def inpaint_arguments(p: argparse.ArgumentParser) -> None:
    _image_model_arguments(p, 16)
    p.add_argument("--mask", choices=_MASKS, default="right",
                   help="what to generate: 'right' half (the left half is known), left, bottom, top, or a 4x4 "
                        "checkerboard")
    p.add_argument("--steps", type=_positive_int, default=None, help=f"sampler steps (default: {DIGITS_DEFAULTS['steps']})")
    p.add_argument("--predictor", default="reverse_diffusion", help="PC predictor")
    p.add_argument("--corrector", default="langevin",
                   help="PC corrector (score_sde's inpainting setup; with 'none' the completions agree less with "
                        "the known half: 39%% vs 63%% classified as the original digit on 64 test digits, right half)")
    p.add_argument("--snr", type=float, default=0.16, help="Langevin corrector signal-to-noise ratio")
    p.add_argument("--backend", choices=("auto", "reference", "native", "triton"), default="auto")
    p.add_argument("--out", default="inpaint", help="output stem: writes STEM.png and STEM.npz")


def run_inpaint(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from fastsde import controllable, plotting
    from fastsde.datasets import get_data_inverse_scaler, get_data_scaler
    from fastsde.evaluation import DigitsEvaluator

    _parse_model(args)
    mf, backend = load_model_for(args)
    steps = args.steps or DIGITS_DEFAULTS["steps"]
    predictor, corrector, eps = args.predictor, args.corrector, _SDE_DEFAULTS[mf.sde_name][2]
    images, labels = _test_subset(args.n, args.seed)
    mask = make_mask(args.mask, args.n)
    inpainter = controllable.get_pc_inpainter(mf.make_sde(N=steps), predictor, corrector,
                                              get_data_inverse_scaler(mf.centered), args.snr, continuous=True,
                                              eps=eps, backend=backend, seed=args.seed, progress=args.progress)
    data = get_data_scaler(mf.centered)(images).to(args.device)

    def run():
        start = time.perf_counter()
        out = inpainter(mf.model, data, mask.to(args.device))
        return out, time.perf_counter() - start

    out, wall = _with_threads(args, run)
    raw = out.detach().float().cpu()
    # score_sde's inpainter returns mean_coef(eps) data at the known pixels; report that drift, then put the known
    # pixels back exactly (in image space, so no scaler round-off either).
    known_drift = float(((raw - images).abs() * mask).max())
    completed = raw * (1 - mask) + images * mask
    known_err = float(((completed - images).abs() * mask).max())
    evaluator = DigitsEvaluator()
    acc = float((evaluator.logits(completed.clamp(0, 1)).argmax(1) == labels).double().mean())
    masked_view = images * mask + 0.5 * (1 - mask)
    acc_masked = float((evaluator.logits(images * mask).argmax(1) == labels).double().mean())
    stem = _stem(args.out)
    report = {"model": os.path.basename(mf.path), "sde": mf.sde_name, "mask": args.mask, "n": args.n,
              "steps": steps, "predictor": predictor, "corrector": corrector, "backend": backend, "seed": args.seed,
              "wall_time_s": wall, "known_pixels_max_abs_error": known_err,
              "known_pixels_sampler_drift": known_drift,
              "classifier_accuracy_completed": acc, "classifier_accuracy_masked_zero_filled": acc_masked,
              "npz": stem + ".npz", "png": stem + ".png"}
    np.savez(report["npz"], original=images.numpy(), mask=mask.numpy(), completed=completed.numpy(),
             labels=labels.numpy())
    plotting.save_image_panels([("test digits", images), ("known pixels (gray: to generate)", masked_view),
                                ("completed", completed.clamp(0, 1))], report["png"],
                               title=f"inpainting the {args.mask} part: {mf.sde_name}, {predictor}+{corrector}, "
                                     f"{steps} steps\ncompletions classified as the original digit: {100 * acc:.0f}%",
                               nrow=int(np.ceil(np.sqrt(args.n))))
    if args.json:
        print(json.dumps(report))
    else:
        print(f"inpainted {args.n} test digits ({args.mask} part generated) in {wall:.2f} s with "
              f"{report['model']}, {predictor}+{corrector}, {steps} steps\n"
              f"  known pixels   max |completed - original| = {known_err:.2e} (the sampler's own output drifts by "
              f"{known_drift:.1e} there: mean_coef(eps) data)\n"
              f"  classifier     {100 * acc:.1f}% of completions read as the original digit "
              f"(zero-filled masked input: {100 * acc_masked:.1f}%)\n"
              f"  wrote          {report['npz']}, {report['png']}")
    return 0


# ------------------------------------------------------------------------------------------- likelihood


def likelihood_arguments(p: argparse.ArgumentParser) -> None:
    _image_model_arguments(p, 32)
    p.add_argument("--probe", choices=("Rademacher", "Gaussian"), default="Rademacher",
                   help="Hutchinson probe distribution")
    p.add_argument("--rtol", type=float, default=1e-5, help="RK45 relative tolerance")
    p.add_argument("--atol", type=float, default=1e-5, help="RK45 absolute tolerance")


def run_likelihood(args: argparse.Namespace) -> int:
    import time

    from fastsde.datasets import get_data_inverse_scaler, get_data_scaler
    from fastsde.likelihood import get_likelihood_fn

    _parse_model(args)
    args.backend = "auto"
    mf, _ = load_model_for(args)
    images, _ = _test_subset(args.n, args.seed)
    fn = get_likelihood_fn(mf.make_sde(), get_data_inverse_scaler(mf.centered), hutchinson_type=args.probe,
                           rtol=args.rtol, atol=args.atol, generator=torch.Generator().manual_seed(args.seed))

    def run():
        start = time.perf_counter()
        bpd, _, nfe = fn(mf.model, get_data_scaler(mf.centered)(images).to(args.device))
        return bpd.double().cpu(), nfe, time.perf_counter() - start

    bpd, nfe, wall = _with_threads(args, run)
    if not bool(torch.isfinite(bpd).all()):
        raise RuntimeError(f"bits/dim not finite for {int((~torch.isfinite(bpd)).sum())} digits")
    report = {"model": os.path.basename(mf.path), "sde": mf.sde_name, "n": args.n, "seed": args.seed,
              "probe": args.probe, "bpd_mean": float(bpd.mean()),
              "bpd_stderr": float(bpd.std() / len(bpd) ** 0.5) if len(bpd) > 1 else float("nan"),
              "bpd": bpd.tolist(), "nfe": int(nfe), "wall_time_s": wall}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['model']}: {report['bpd_mean']:.3f} +- {report['bpd_stderr']:.3f} bits/dim over {args.n} "
              f"test digits (probability-flow ODE, RK45 rtol {args.rtol:g}, {args.probe} probe, seed {args.seed}; "
              f"{nfe} function evaluations, {wall:.1f} s)\n  (bits/dim as score_sde reports it: the data treated as "
              f"8-bit with uniform dequantization; the digits have 17 grey levels upsampled)")
    return 0


# ------------------------------------------------------------------------------------------- eval


def eval_arguments(p: argparse.ArgumentParser) -> None:
    _image_model_arguments(p, 256)
    p.add_argument("--samples", default=None, metavar="NPZ",
                   help="evaluate these images (a `fastsde sample` .npz, key 'samples') instead of sampling; the "
                        "model and sampler options then do not apply")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help=f"sampler steps when sampling (default: {DIGITS_DEFAULTS['steps']})")
    p.add_argument("--backend", choices=("auto", "reference", "native", "triton"), default="auto")


def run_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from fastsde.datasets import get_data_inverse_scaler
    from fastsde.evaluation import DigitsEvaluator
    from fastsde.sampling import get_pc_sampler

    evaluator = DigitsEvaluator()
    source = args.samples
    if args.samples:
        if not os.path.exists(args.samples):
            raise FileNotFoundError(f"{args.samples}: no such file")
        with np.load(args.samples) as data:
            if "samples" not in data:
                raise ValueError(f"{args.samples} has no 'samples' array")
            images = torch.from_numpy(np.asarray(data["samples"], dtype=np.float32))
    else:
        _parse_model(args)
        mf, backend = load_model_for(args)
        steps = args.steps or DIGITS_DEFAULTS["steps"]
        predictor, corrector, eps = _SDE_DEFAULTS[mf.sde_name]
        sampler = get_pc_sampler(mf.make_sde(N=steps), (args.n, 1, 16, 16), predictor, corrector,
                                 get_data_inverse_scaler(mf.centered), 0.16, continuous=True, eps=eps,
                                 device=args.device, backend=backend, seed=args.seed, progress=args.progress)
        images = _with_threads(args, lambda: sampler(mf.model)[0]).detach().float().cpu()
        source = f"{os.path.basename(mf.path)} ({predictor}+{corrector}, {steps} steps, seed {args.seed})"
    q = evaluator.evaluate(images)
    n = q["n"]
    report = {"source": source, **q, **evaluator.scale_at(n, seed=args.seed), "classifier": evaluator.path}
    if args.json:
        print(json.dumps(report))
        return 0
    c = q["classes"]
    print(f"{source}: {n} images\n"
          f"  FD          {q['fd']:.2f}  (classifier features vs the 359 test digits; at n={n}: real vs real "
          f"{_opt(report['fd_real_vs_real'])}, noise vs real {report['fd_real_vs_noise']:.1f})\n"
          f"  classes     {c['histogram']}  entropy {c['entropy']:.3f} of {c['max_entropy']:.3f}, confidence "
          f"{c['confidence']:.3f}\n"
          f"  classifier  {100 * q['test_accuracy']:.1f}% accurate on the real test digits")
    return 0
