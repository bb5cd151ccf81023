"""`fastsde encode`, `fastsde decode`, `fastsde interpolate`: the probability-flow ODE as a map between test digits
and latents (fastsde.flow), each report with the round-trip error of what it wrote."""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from fastsde.cli.common import (AtomicOutputs, UsageError, image_model_arguments, load_model_for,
                                nonnegative_int, output_stem, parse_model, positive_float, positive_int, test_subset,
                                with_threads)
from fastsde.sampling.ode import ODE_METHODS

__all__ = ["ode_arguments", "ode_settings", "add_encode_arguments", "add_decode_arguments",
           "add_interpolate_arguments", "run_encode", "run_decode", "run_interpolate", "MAX_FRAMES"]

MAX_FRAMES = 256  # --frames of interpolate: one picture row


def ode_arguments(p: argparse.ArgumentParser, rtol: float = 1e-5) -> None:
    """--method/--steps/--rtol/--atol/--eps of the probability-flow ODE commands."""
    p.add_argument("--method", choices=ODE_METHODS, default="RK45",
                   help="RK45: adaptive Dormand-Prince on --device with per-digit steps; RK45-sqrt: the same in "
                        "u = sqrt(t) (fewer evaluations at loose --rtol); fixed: the same step on "
                        "--steps intervals (fast, no error control); scipy:NAME: scipy's solve_ivp on the host over "
                        "the whole batch, as score_sde")
    p.add_argument("--steps", type=positive_int, default=None, help="intervals of --method fixed (6 evaluations each)")
    p.add_argument("--rtol", type=positive_float, default=rtol, help="relative tolerance of the adaptive methods")
    p.add_argument("--atol", type=positive_float, default=rtol, help="absolute tolerance of the adaptive methods")
    p.add_argument("--eps", type=positive_float, default=1e-5, help="the data end of the ODE's time interval")


def ode_settings(args: argparse.Namespace) -> dict:
    """The ODE keywords of fastsde.flow / get_likelihood_fn from the command line (UsageError on --steps misuse)."""
    if args.method == "fixed" and args.steps is None:
        raise UsageError("--method fixed needs --steps N (intervals of the fixed grid)")
    if args.method != "fixed" and args.steps is not None:
        raise UsageError(f"--steps applies to --method fixed only, got --method {args.method}")
    return {"method": args.method, "rtol": args.rtol, "atol": args.atol, "eps": args.eps, "steps": args.steps}


def _common(p: argparse.ArgumentParser, n_default: int, out: str) -> None:
    image_model_arguments(p, n_default)
    ode_arguments(p)
    p.add_argument("--out", default=out, help="output stem: writes STEM.npz (and STEM.png where there is a picture)")


def add_encode_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, 16, "latents")


def add_decode_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, 16, "decoded")
    p.add_argument("--latents", metavar="NPZ", default=None,
                   help="decode the array 'z' of this file (from fastsde encode); default: --n prior draws of --seed")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="scale the latents by this before decoding (< 1: more typical digits)")


def add_interpolate_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, 1, "interpolation")
    p.add_argument("--a", type=nonnegative_int, required=True, metavar="I", help="index of the first test digit")
    p.add_argument("--b", type=nonnegative_int, required=True, metavar="J", help="index of the second test digit")
    p.add_argument("--frames", type=positive_int, default=8, metavar="K",
                   help=f"points on the spherical path between their latents, ends included (2 to {MAX_FRAMES})")
    p.add_argument("--temperature", type=positive_float, default=1.0,
                   help="scale the interpolated latents by this before decoding")


def _setup(args, suffixes):
    parse_model(args)
    stem = output_stem(args.out, suffixes)
    settings = ode_settings(args)
    args.backend = "auto"
    mf, _ = load_model_for(args)
    return stem, settings, mf


def _timed(args, fn):
    start = time.perf_counter()
    out = with_threads(args, fn)
    return out, time.perf_counter() - start


def _report(args, report: dict, text: str) -> int:
    print(json.dumps(report) if args.json else text)
    return 0


def _error_text(err: dict) -> str:
    return f"max |.| {err['max_abs']:.2e}, rms {err['rms']:.2e} ({100 * err['rel_rms']:.3g}% of the signal's rms)"


def run_encode(args: argparse.Namespace) -> int:
    from fastsde import flow
    from fastsde.digits.data import get_data_scaler

    stem, settings, mf = _setup(args, (".npz",))
    sde = mf.make_sde()
    images, labels = test_subset(args.n, args.seed)
    x = get_data_scaler(mf.centered)(images).to(args.device)

    def work():
        z, nfe = flow.encode(sde, mf.model, x, **settings)
        back, nfe_back = flow.decode(sde, mf.model, z, **settings)
        return z, nfe, back, nfe_back

    (z, nfe, back, nfe_back), wall = _timed(args, work)
    err = flow.round_trip_error(back, x)
    report = {"model": os.path.basename(mf.path), "sde": mf.sde_name, "n": args.n, "seed": args.seed, **settings,
              "nfe_encode": nfe, "nfe_decode": nfe_back, "round_trip_decode_encode_x": err,
              "latent_std": float(z.double().std()), "wall_time_s": wall, "npz": stem + ".npz"}
    with AtomicOutputs() as files:
        np.savez(files.path(report["npz"]), z=z.cpu().numpy(), images=images.numpy(), labels=labels.numpy())
    return _report(args, report, f"encoded {args.n} test digits to latents at T ({settings['method']}, {nfe} "
                                 f"evaluations; latent std {report['latent_std']:.3f}, the prior's ~1)\n  round trip "
                                 f"decode(encode(x)) - x: {_error_text(err)}\n  wrote {report['npz']} ({wall:.1f} s "
                                 f"with the round trip)")


def _read_latents(path: str, shape) -> torch.Tensor:
    try:
        with np.load(path) as f:
            z = torch.from_numpy(np.asarray(f["z"], dtype=np.float32))
    except (OSError, KeyError, ValueError) as err:
        raise UsageError(f"--latents {path!r}: cannot read its array 'z' ({type(err).__name__}: {err})") from None
    if z.dim() != 4 or tuple(z.shape[1:]) != tuple(shape):
        raise UsageError(f"--latents: 'z' must have shape (n, {', '.join(map(str, shape))}), got {tuple(z.shape)}")
    if not bool(torch.isfinite(z).all()):
        raise UsageError("--latents: 'z' holds NaN or inf")
    return z


def run_decode(args: argparse.Namespace) -> int:
    from fastsde import flow
    from fastsde.digits import plotting
    from fastsde.digits.data import get_data_inverse_scaler

    stem, settings, mf = _setup(args, (".npz", ".png"))
    sde = mf.make_sde()
    shape = (1, 16, 16)
    if args.latents is not None:
        z = _read_latents(args.latents, shape)
    else:
        z = sde.prior_sampling((args.n,) + shape, generator=torch.Generator().manual_seed(args.seed))
    z = z.to(args.device)

    def work():
        x, nfe = flow.decode(sde, mf.model, z, temperature=args.temperature, **settings)
        again, nfe_back = flow.encode(sde, mf.model, x, **settings)
        return x, nfe, again, nfe_back

    (x, nfe, again, nfe_back), wall = _timed(args, work)
    err = flow.round_trip_error(again, z * args.temperature)
    images = get_data_inverse_scaler(mf.centered)(x).float().cpu()
    report = {"model": os.path.basename(mf.path), "sde": mf.sde_name, "n": int(z.shape[0]), "seed": args.seed,
              "latents": args.latents, "temperature": args.temperature, **settings, "nfe_decode": nfe,
              "nfe_encode": nfe_back, "round_trip_encode_decode_z": err, "wall_time_s": wall,
              "npz": stem + ".npz", "png": stem + ".png"}
    with AtomicOutputs() as files:
        np.savez(files.path(report["npz"]), images=images.numpy(), z=z.cpu().numpy())
        plotting.save_image_panels([("decoded", images.clamp(0, 1))], files.path(report["png"]),
                                   title=f"decoded latents (temperature {args.temperature:g})",
                                   nrow=int(np.ceil(np.sqrt(len(images)))))
    return _report(args, report, f"decoded {report['n']} latents at temperature {args.temperature:g} "
                                 f"({settings['method']}, {nfe} evaluations)\n  round trip encode(decode(z)) - z: "
                                 f"{_error_text(err)}\n  wrote {report['npz']}, {report['png']} ({wall:.1f} s with "
                                 f"the round trip)")


def run_interpolate(args: argparse.Namespace) -> int:
    from fastsde import flow
    from fastsde.digits import plotting
    from fastsde.digits.data import get_data_inverse_scaler, get_data_scaler, load_digits

    if not 2 <= args.frames <= MAX_FRAMES:
        raise UsageError(f"--frames must be in 2..{MAX_FRAMES}, got {args.frames}")
    images, labels = load_digits("test")
    for flag, i in (("--a", args.a), ("--b", args.b)):
        if i >= images.shape[0]:
            raise UsageError(f"{flag} must be a test digit index in 0..{images.shape[0] - 1}, got {i}")
    if args.a == args.b:
        raise UsageError(f"--a and --b must be two different test digits, got {args.a} twice")
    stem, settings, mf = _setup(args, (".npz", ".png"))
    sde = mf.make_sde()
    ends = images[[args.a, args.b]]
    x = get_data_scaler(mf.centered)(ends).to(args.device)

    def work():
        z, nfe = flow.encode(sde, mf.model, x, **settings)
        path = flow.slerp(z[0], z[1], torch.linspace(0, 1, args.frames))
        frames, nfe_dec = flow.decode(sde, mf.model, path, temperature=args.temperature, **settings)
        return z, frames, nfe, nfe_dec

    (z, frames, nfe, nfe_dec), wall = _timed(args, work)
    # at temperature 1 the path's ends decode the encoded digits: their error is the round trip's
    err = flow.round_trip_error(frames[[0, -1]], x) if args.temperature == 1.0 else None
    pictures = get_data_inverse_scaler(mf.centered)(frames).float().cpu().clamp(0, 1)
    report = {"model": os.path.basename(mf.path), "sde": mf.sde_name, "a": args.a, "b": args.b,
              "labels": [int(labels[args.a]), int(labels[args.b])], "frames": args.frames,
              "temperature": args.temperature, **settings, "nfe_encode": nfe, "nfe_decode": nfe_dec,
              "round_trip_ends": err, "wall_time_s": wall, "npz": stem + ".npz", "png": stem + ".png"}
    with AtomicOutputs() as files:
        np.savez(files.path(report["npz"]), frames=pictures.numpy(), z=z.cpu().numpy(), ends=ends.numpy())
        plotting.save_image_panels([("test digits", ends), ("spherical path between their latents", pictures)],
                                   files.path(report["png"]),
                                   title=f"test digit {args.a} ({int(labels[args.a])}) to {args.b} "
                                         f"({int(labels[args.b])}), {args.frames} frames",
                                   nrow=args.frames)
    trip = "n/a at temperature != 1" if err is None else _error_text(err)
    return _report(args, report, f"interpolated test digits {args.a} and {args.b} through {args.frames} latents "
                                 f"({settings['method']}, {nfe} + {nfe_dec} evaluations)\n  round trip at the "
                                 f"ends decode(encode(x)) - x: {trip}\n  wrote {report['npz']}, {report['png']} "
                                 f"({wall:.1f} s)")
