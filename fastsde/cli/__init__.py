"""The `fastsde` command: one module per subcommand (sample, train, eval, inpaint, likelihood, bench, info; encode,
decode and interpolate share cli/flow.py), each an (add_arguments, run) pair registered in COMMANDS.

Errors follow one rule: bad arguments exit 2, a run that fails exits 1, each with one line `fastsde: error: ...` on
stderr and no traceback (`--debug` re-raises instead). ValueError/RuntimeError/OSError carry their own message; any
other exception is a bug in fastsde's checks and is reported as one line naming its type.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

import fastsde
from fastsde.cli import bench, convert, evaluate, flow, heat, info, inpaint, likelihood, sample, train
from fastsde.cli.common import UsageError

__all__ = ["Command", "COMMANDS", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one `fastsde: error: ...` line instead of usage + exit."""

    def error(self, message):
        raise UsageError(message)


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


COMMANDS: dict[str, Command] = {
    "train": Command(
        help="train a score model (or a digit classifier) by denoising score matching, resumably",
        description="Train a small16 U-Net score model of the 16x16 digits by continuous-time denoising\n"
                    "score matching (score_sde's weighting; --likelihood-weighting for g^2), with Adam,\n"
                    "warm-up, gradient clipping and EMA. Checkpoints every --checkpoint-every steps; running\n"
                    "the same command again resumes from the checkpoint in --out. Writes sample grids during\n"
                    "training and the EMA weights to OUT/model.safetensors.",
        add_arguments=train.add_arguments,
        run=train.run,
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
        add_arguments=sample.add_arguments,
        run=sample.run,
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
        add_arguments=evaluate.add_arguments,
        run=evaluate.run,
        epilog="examples:\n  fastsde eval --n 256\n  fastsde sample --n 256 --out out/s && fastsde eval --samples "
               "out/s.npz",
    ),
    "inpaint": Command(
        help="complete partly masked test digits with the score model (known pixels kept exactly)",
        description="Mask part of --n test digits and generate the rest with score_sde's PC inpainter\n"
                    "(the projection fused into the update kernels). Writes a picture of the originals,\n"
                    "the known pixels and the completions, and reports how many completions the classifier\n"
                    "reads as the original digit.",
        add_arguments=inpaint.add_arguments,
        run=inpaint.run,
        epilog="examples:\n  fastsde inpaint --out out/inpaint\n  fastsde inpaint --mask bottom --n 25",
    ),
    "heat": Command(
        help="heat-equation models: coarse-to-fine trajectory, deblurring, super-resolution, inpainting",
        description="What the heat family (fastsde.heat) is for, with pictures, from the shipped heat digits\n"
                    "model and no retraining: 'trajectory' shows the coarse-to-fine generation (the model's x0\n"
                    "prediction along the run), 'deblur' starts sampling from a blurred or pixelated test digit,\n"
                    "'superres' upsamples 8x8 test digits to 16x16 and 'inpaint' completes masked ones (DDIM per\n"
                    "frequency from the null-space projection of the x0 prediction), reporting the error against\n"
                    "the held-out digits. --sde vp runs the VP model through the same sampler for comparison.",
        add_arguments=heat.add_arguments,
        run=heat.run,
        epilog="examples:\n  fastsde heat trajectory --n 8 --out out/heat_traj\n"
               "  fastsde heat superres --n 64\n  fastsde heat deblur --degrade pixelate --t-start 0.5",
    ),
    "likelihood": Command(
        help="bits/dim of test digits under the model (probability-flow ODE, Hutchinson trace)",
        description="Exact likelihood of --n test digits through the probability-flow ODE (RK45 on the\n"
                    "device, a fixed grid, or scipy's RK45 as score_sde) with a Skilling-Hutchinson\n"
                    "divergence estimate (--probes per digit, or the exact trace); prints the mean bits/dim,\n"
                    "its standard error over digits and the probe estimator's standard error.",
        add_arguments=likelihood.add_arguments,
        run=likelihood.run,
        epilog="examples:\n  fastsde likelihood --n 32 --seed 0\n  fastsde likelihood --probes 4\n"
               "  fastsde likelihood --method fixed --steps 8 --compare\n  fastsde likelihood --method scipy:RK45",
    ),
    "encode": Command(
        help="encode test digits to latents along the probability-flow ODE (deterministic, invertible)",
        description="Integrate the probability-flow ODE from --n test digits at eps to their latents at T,\n"
                    "write them to STEM.npz and report the round-trip error decode(encode(x)) - x.",
        add_arguments=flow.add_encode_arguments,
        run=flow.run_encode,
        epilog="examples:\n  fastsde encode --n 16 --out latents\n  fastsde encode --method fixed --steps 12",
    ),
    "decode": Command(
        help="decode latents (from encode, or prior draws) to digits along the probability-flow ODE",
        description="Integrate the probability-flow ODE from latents at T (--latents NPZ from fastsde\n"
                    "encode, or --n prior draws) scaled by --temperature to digits, write STEM.npz/.png and\n"
                    "report the round-trip error encode(decode(z)) - z.",
        add_arguments=flow.add_decode_arguments,
        run=flow.run_decode,
        epilog="examples:\n  fastsde decode --latents latents.npz\n  fastsde decode --n 16 --temperature 0.8",
    ),
    "interpolate": Command(
        help="picture the spherical path between two test digits' latents, decoded",
        description="Encode test digits --a and --b, interpolate their latents spherically in --frames\n"
                    "points, decode each and write the path as STEM.png (and STEM.npz), with the round-trip\n"
                    "error at the ends.",
        add_arguments=flow.add_interpolate_arguments,
        run=flow.run_interpolate,
        epilog="examples:\n  fastsde interpolate --a 0 --b 5 --frames 8",
    ),
    "convert": Command(
        help="convert a score_sde checkpoint (checkpoint_*.pth) to safetensors, never unpickling code",
        description="Read score_sde's checkpoint dict (model, ema, optimizer, step) with\n"
                    "torch.load(weights_only=True), drop DataParallel's module. prefix, optionally put the EMA\n"
                    "weights in place, and write the state dict with the config as safetensors metadata.",
        add_arguments=convert.add_arguments,
        run=convert.run,
        epilog="examples:\n  fastsde convert checkpoint_8.pth --config vp/cifar10_ddpmpp_continuous --ema "
               "--out ddpmpp.safetensors",
    ),
    "bench": Command(
        help="time the fused kernels against the reference, the best eager form and torch.compile",
        description="Microbenchmarks (steps: one sampler update on 16M/1M float32 elements; groupnorm,\n"
                    "attention, unet: the U-Net hot paths), whole samplers (sampler: the 2-D ring) and the\n"
                    "main job end to end (e2e: 64 digits from the shipped model, fastsde native vs the\n"
                    "reference engine and model build). Prints a table and optionally writes JSON\n"
                    "records with the median time, achieved GB/s, the copy-bandwidth floor measured in the\n"
                    "same run, and the speedup over each baseline.",
        add_arguments=bench.add_arguments,
        run=bench.run,
        epilog="examples:\n  fastsde bench steps --quick\n  fastsde bench sampler --json out/sampler.json\n"
               "  fastsde bench e2e --json out/e2e.json --tradeoff out/tradeoff",
    ),
    "info": Command(
        help="print versions, the native extension and triton status, and the registered components",
        description="Print the fastsde and torch versions, torch threads, whether the native extension\n"
                    "and triton load, and the SDEs, predictors, correctors, backends and mixture presets.",
        add_arguments=info.add_arguments,
        run=info.run,
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
    except UsageError as err:
        _error(err)
        return 2
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return COMMANDS[args.command].run(args)
    except UsageError as err:
        if args.debug:
            raise
        _error(err)
        return 2
    except (ValueError, RuntimeError, OSError) as err:
        if args.debug:
            raise
        _error(err)
        return 1
    except MemoryError:
        if args.debug:
            raise
        _error("out of memory; ask for less (smaller --n or --batch-size)")
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:  # noqa: BLE001 - the promise is one line, never a traceback
        if args.debug:
            raise
        _error(f"unexpected {type(err).__name__}: {err} (a fastsde bug: please report it with --debug's traceback)")
        return 1


