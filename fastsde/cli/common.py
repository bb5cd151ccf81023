"""What the `fastsde` command modules share: the usage error, option types, the --model syntax, the sampler built
from the command line, and the helpers of the image-model commands (model loading, threads, output stems)."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import zipfile

import numpy as np
import torch

from fastsde import distributed, sampling, solvers
from fastsde._util import check_regular_file
from fastsde import sde as sde_lib
from fastsde.digits.pretrained import DIGITS_DEFAULTS, load_score_model, score_model_path
from fastsde.models import analytic
from fastsde.sampling import PC_DEFAULTS

__all__ = ["UsageError", "SDE_DEFAULTS", "positive_int", "sample_count", "nonnegative_int", "seed_value",
           "positive_float",
           "model_spec", "npz_path", "build_sampler", "default_steps", "check_own_steps", "sampler_argument",
           "SAMPLER_NAMES", "OWN_STEPS", "load_model_for", "with_threads", "output_stem",
           "image_model_arguments", "parse_model", "test_subset", "fmt_optional", "finite_float", "device_name",
           "check_output_stem", "check_output_file", "AtomicOutputs", "memory_estimate", "available_memory",
           "check_memory", "read_samples_npz", "IMAGE_BATCH", "batch_argument", "micro_batch", "MAX_STEPS",
           "step_count", "MAX_THREADS", "thread_count", "output_mode", "DIGITS_METRICS_BYTES", "kid_text",
           "process_seconds"]


class UsageError(Exception):
    """A bad command line (exit code 2)."""


SDE_DEFAULTS = PC_DEFAULTS  # score_sde's (predictor, corrector, eps) per SDE name


def sample_count(text: str) -> int:
    """--n of the commands that report sample quality: FD, KID and the mixtures' covariances need 2 samples."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (the quality report needs two samples), got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


MAX_STEPS = 100_000  # --steps of the samplers: score_sde uses 1000-2000; 10^9 would allocate gigabytes of tables
# --threads: torch/OpenMP threads; 10^4 hangs and 10^5 crashes in OpenMP's thread creation, and more than a few per
# core only adds waits.
MAX_THREADS = min(1024, 4 * (os.cpu_count() or 1))


def step_count(text: str) -> int:
    """--steps of a sampler: a positive integer up to MAX_STEPS."""
    value = positive_int(text)
    if value > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_STEPS:,} sampler steps, got {value}")
    return value


def thread_count(text: str) -> int:
    """--threads: a positive integer up to MAX_THREADS (4 per CPU core, at most 1024)."""
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS} (4 per CPU core of this machine, at most "
                                         f"1024), got {value}")
    return value


def seed_value(text: str) -> int:
    value = nonnegative_int(text)
    if value >= 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0 or not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def device_name(text: str) -> str:
    """--device: 'cpu' or 'cuda[:K]' with CUDA available (torch would fail late, or on meta tensors, oddly)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be cpu or cuda[:K], got {text!r}") from None
    if device.type == "cpu":
        return text
    if device.type != "cuda":
        raise argparse.ArgumentTypeError(f"must be cpu or cuda[:K], got {text!r}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} needs CUDA, which this torch build or machine does not have "
                                         f"(use cpu)")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return text


def model_spec(text: str) -> tuple[str, str]:
    """'digits' (the shipped digits model of --sde), a score model file PATH.safetensors, or 'gmm[:NAME]' with NAME
    a preset of fastsde.models.analytic -> (kind, name or path)."""
    if text == "digits":
        return "digits", "digits"
    if text.endswith(".safetensors"):
        return "file", text
    kind, _, name = text.partition(":")
    known = ", ".join(sorted(analytic.PRESETS))
    if kind != "gmm":
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; known: digits, PATH.safetensors, gmm[:NAME] with "
                                         f"NAME one of {known}")
    name = name or "ring"
    if name not in analytic.PRESETS:
        raise argparse.ArgumentTypeError(f"unknown mixture preset {name!r}; known: {known}")
    return kind, name


def npz_path(out: str) -> str:
    """The .npz file of --out: PATH.npz as given, or PATH + '.npz' without an extension; any other extension is a
    usage error (numpy would write PATH.EXT.npz behind the reported name)."""
    root, ext = os.path.splitext(out)
    if os.path.basename(out) in ("", ".", ".."):
        raise UsageError(f"--out must name a file, got {out!r}")
    if ext and ext != ".npz":
        raise UsageError(f"--out must end in .npz or have no extension, got {out!r}")
    path = out if ext else out + ".npz"
    check_output_file(path)
    return path


SAMPLER_NAMES = ("pc", "ode", *solvers.solver_names())  # --sampler of `fastsde sample` and `fastsde eval`
OWN_STEPS = ("ode", "adaptive")  # samplers that choose their own steps: an explicit --steps is refused


def sampler_argument(p, default_help: str) -> None:
    """--sampler NAME, shared by the commands that sample (the one sampler selection of build_sampler)."""
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=None, metavar="NAME",
                   help="pc (predictor-corrector), ode (probability-flow ODE, scipy RK45) or a few-step solver: "
                        f"{', '.join(solvers.solver_names())}; default: {default_help}")


def check_own_steps(args: argparse.Namespace) -> None:
    """--steps is refused beside a sampler that chooses its own steps."""
    if args.steps is not None and args.sampler in OWN_STEPS:
        raise UsageError(f"--steps does not apply to --sampler {args.sampler}, which chooses its own steps "
                         f"({'--rtol/--atol' if args.sampler == 'ode' else 'an error-controlled step size'})")


def default_steps(sampler: str) -> int:
    """--steps when not given, for an image model: PC's N, the default solver's steps, or about 10 model
    evaluations of another solver (the ODE sampler ignores it)."""
    if sampler in ("pc", "ode"):
        return DIGITS_DEFAULTS["steps"]
    if sampler == DIGITS_DEFAULTS["sampler"]:
        return DIGITS_DEFAULTS["solver_steps"]
    return max(1, 9 // solvers.get_solver(sampler).evals_per_step)


def build_sampler(args: argparse.Namespace, sde: sde_lib.SDE, shape: tuple[int, ...], inverse_scaler=None, *,
                  sample_ids=None, progress=None):
    """(sampler(model) -> (x, nfe or model evaluations), the settings it was built with) for --sampler (pc, ode or
    a few-step solver) and its options; an option a command does not define takes its default. sample_ids: the
    global ids of the batch (FSN1 noise is keyed by them), progress: the per-step bar (default --progress)."""
    def opt(name):
        return getattr(args, name, None)

    progress = args.progress if progress is None else progress
    default_predictor, default_corrector, default_eps = SDE_DEFAULTS[args.sde]
    inverse_scaler = inverse_scaler or (lambda x: x)
    eps = default_eps if opt("eps") is None else args.eps
    precision = opt("precision")  # resolved by the command (fastsde.precision); None: the state's
    noise, continuous = opt("noise") or "fastsde", opt("continuous") is not False
    denoise = opt("denoise") is not False
    info = {"sde": args.sde, "sampler": args.sampler, "steps": args.steps, "eps": eps, "seed": args.seed,
            "noise": noise, "continuous": continuous, "denoise": denoise, "precision": precision or "fp32"}
    if args.sampler == "ode":
        info.update(predictor="none", corrector="none", rtol=opt("rtol") or 1e-5, atol=opt("atol") or 1e-5)
        return sampling.get_ode_sampler(sde, shape, inverse_scaler, denoise=denoise, rtol=info["rtol"],
                                        atol=info["atol"], eps=eps, device=args.device, seed=args.seed,
                                        noise=noise, sample_ids=sample_ids, precision=precision), info
    info.update(backend=opt("backend") or "auto", compile=bool(opt("compile")))
    if args.sampler != "pc":
        if noise != "fastsde":
            raise UsageError(f"--sampler {args.sampler} draws FSN1 noise only (--noise fastsde)")
        info.update(grid=opt("grid") or "logsnr")
        return solvers.get_sampler(args.sampler, sde, shape, args.steps, inverse_scaler=inverse_scaler,
                                   continuous=continuous, grid=info["grid"], eps=eps, denoise=denoise,
                                   seed=args.seed, sample_ids=sample_ids, backend=info["backend"],
                                   device=args.device, compile=info["compile"], precision=precision), info
    info.update(predictor=opt("predictor") or default_predictor, corrector=opt("corrector") or default_corrector,
                snr=0.16 if opt("snr") is None else args.snr,
                n_steps_each=1 if opt("n_steps_each") is None else args.n_steps_each,
                probability_flow=bool(opt("probability_flow")))
    return sampling.get_pc_sampler(
        sde, shape, info["predictor"], info["corrector"], inverse_scaler, info["snr"], n_steps=info["n_steps_each"],
        probability_flow=info["probability_flow"], continuous=continuous, denoise=denoise, eps=eps,
        device=args.device, backend=info["backend"], seed=args.seed, noise=noise, sample_ids=sample_ids,
        progress=progress, compile=info["compile"], precision=precision), info


def load_model_for(args: argparse.Namespace):
    """(ScoreModelFile, backend) for --model/--sde/--backend; backend 'reference' builds the plain-PyTorch UNet."""

    backend = getattr(args, "backend", None) or "auto"
    path = score_model_path(args.model[0], args.model[1], args.sde if args.model[0] == "digits" else None)
    mf = load_score_model(path, reference=backend == "reference",
                          backend="auto" if backend == "reference" else backend, device=args.device)
    if mf.model.config.resolution != 16 or mf.model.config.in_channels != 1:
        raise ValueError(f"{path}: the image commands handle 1x16x16 digits models, this one is "
                         f"{mf.model.config.in_channels}x{mf.model.config.resolution}x{mf.model.config.resolution}")
    return mf, backend


def with_threads(args, fn):
    threads = torch.get_num_threads()
    try:
        if getattr(args, "threads", None):
            torch.set_num_threads(args.threads)
        return fn()
    finally:
        torch.set_num_threads(threads)


def output_stem(out: str, suffixes=(".npz", ".png")) -> str:
    """The stem of --out (a trailing .png/.npz is dropped), checked with check_output_stem before any work."""
    root, ext = os.path.splitext(out)
    stem = root if ext in (".png", ".npz") else out
    check_output_stem(stem, suffixes)
    return stem


def check_output_file(path: str, flag: str = "--out") -> str:
    """Raise UsageError unless `path` can be written: a non-empty name that is not a directory, whose parent is (or
    can be created as) a writable directory, probed by creating and removing a temporary file in the nearest existing
    directory. Leaves nothing behind: the parents are made when the file is written."""
    if not path or os.path.basename(path) in ("", ".", ".."):
        raise UsageError(f"{flag} must name a file, got {path!r}")
    if os.path.isdir(path):
        raise UsageError(f"{flag}: {path} is a directory, expected a file path")
    if os.path.lexists(path) and not os.path.isfile(path):  # a device, FIFO, socket or dangling link
        raise UsageError(f"{flag}: {path} exists and is not a regular file ({_file_kind(path)}); outputs are "
                         f"written to a temporary file and renamed over the path, which would replace it")
    parent = os.path.dirname(os.path.abspath(path))
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UsageError(f"{flag}: cannot create {parent}: {probe} is a file")
    try:  # a real write (and delete) where the file or its missing parents would go: os.access is wrong for root
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UsageError(f"{flag}: {probe} is not writable ({exc.strerror or exc})") from None
    return path


def _file_kind(path: str) -> str:
    import stat

    mode = os.lstat(path).st_mode
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a dangling link")):
        if test(mode):
            return name
    return "not a regular file"


def check_output_stem(stem: str, suffixes=(".npz", ".png"), flag: str = "--out") -> None:
    """check_output_file for every STEM+suffix a command writes."""
    if not stem or os.path.basename(stem) in ("", ".", ".."):
        raise UsageError(f"{flag} must name a file stem, got {stem!r}")
    for suffix in suffixes:
        check_output_file(stem + suffix, flag)


def output_mode() -> int:
    """The permission bits open() gives a new file under this process's umask (0o644 under umask 022)."""
    return 0o666 & ~distributed.current_umask()


class AtomicOutputs:
    """Write several output files all or nothing: `path(final)` hands out a temporary path in final's directory
    (same extension, so writers keep their format); on success every temporary is renamed over its final path, on
    an exception every temporary is removed and no final path is touched.

        with AtomicOutputs() as out:
            np.savez(out.path("a.npz"), ...)
            fig.savefig(out.path("a.png"))
    """

    def __init__(self):
        self._pending: list[tuple[str, str]] = []

    def path(self, final: str) -> str:
        parent = os.path.dirname(os.path.abspath(final))
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=os.path.splitext(final)[1] or ".tmp",
                                   dir=parent)
        os.close(fd)
        self._pending.append((tmp, final))
        return tmp

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            mode = output_mode()
            for tmp, final in self._pending:  # never rename over a device or FIFO (as root: /dev/null)
                if os.path.lexists(final) and not os.path.isfile(final):
                    for t, _ in self._pending:
                        with contextlib.suppress(OSError):
                            os.remove(t)
                    self._pending = []
                    raise UsageError(f"{final} exists and is not a regular file ({_file_kind(final)}): not replaced")
            for tmp, final in self._pending:
                os.chmod(tmp, mode)  # mkstemp makes 0600; a written file follows the umask like open() would
                os.replace(tmp, final)
        else:
            for tmp, _ in self._pending:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
        self._pending = []
        return False


# ---------------------------------------------------------------------------------------------------- memory
def available_memory(device) -> int:
    """Bytes a request may use on `device`: free CUDA memory, or MemAvailable (and the cgroup limit) on the host."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    limit = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limit = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                free = int(text) - int(f.read().strip())
            limit = free if limit is None else min(limit, free)
    except (OSError, ValueError):
        pass
    return limit if limit is not None else 1 << 62


def memory_estimate(n: int, numel: int, *, batch: int | None = None, buffers: int = 8, activations: int = 0,
                    itemsize: int = 4, per_sample: int = 0) -> int:
    """Bytes a sampling request needs: the n outputs (n x numel x itemsize, kept, plus one copy for the file), what
    runs on all n at once (`per_sample` bytes each, e.g. the digits metrics) and, per micro-batch of `batch` samples
    (default n; sampling runs one micro-batch at a time), `buffers` state-sized buffers (x, x_mean, score, noise, the
    reference, ...) plus `activations` bytes per sample for the model."""
    batch = n if batch is None else min(batch, n)
    return n * (2 * numel * itemsize + per_sample) + batch * (buffers * numel * itemsize + activations)


# The digits metrics (fastsde.digits.evaluation) run the classifier on all n images and on n noise images in one
# batch: ~77 KiB per image measured (CPU, float32), bounded here.
DIGITS_METRICS_BYTES = 96 * 2**10


def check_memory(what: str, needed: int, device, limit: int | None = None) -> None:
    """Refuse a request whose estimate exceeds the available memory: one line with both numbers."""
    limit = available_memory(device) if limit is None else limit
    if needed > limit:
        raise ValueError(f"{what} needs about {_gib(needed)} of memory, more than the {_gib(limit)} available on "
                         f"{torch.device(device).type}; ask for less")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def unet_activation_bytes(config) -> int:
    """A bound on the bytes of a UNet forward per sample (inference): ~24 live feature maps of the widest level."""
    widest = max(config.nf * m * (config.resolution // 2**i) ** 2 for i, m in enumerate(config.ch_mult))
    attn = max([(r * r) ** 2 for r in config.attn_resolutions] or [0])
    return 4 * (24 * widest + 2 * attn)


def read_samples_npz(path: str):
    """The 'samples' array of a `fastsde sample` .npz as float32 (N, 1, 16, 16) images; one clear error for a
    missing, damaged, pickled, wrong-kind or empty file. Never unpickles."""
    check_regular_file(path, "samples file")  # a FIFO would block is_zipfile forever
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz archive (a `fastsde sample` output)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "samples" not in data.files:
                raise ValueError(f"{path} has no 'samples' array (has: {', '.join(data.files) or 'nothing'})")
            images = np.asarray(data["samples"])
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{path} is damaged ({exc})") from None
    except ValueError as exc:
        if "samples" in str(exc) and path in str(exc):
            raise
        raise ValueError(f"{path}: cannot read 'samples' ({exc})") from None
    if images.dtype.kind != "f":
        raise ValueError(f"{path}: 'samples' must be floating point, got {images.dtype}")
    if images.ndim != 4 or images.shape[1:] != (1, 16, 16):
        raise ValueError(f"{path}: 'samples' must be (N, 1, 16, 16) digits, got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{path}: 'samples' is empty (0 images)")
    return torch.from_numpy(images.astype(np.float32))


def image_model_arguments(p: argparse.ArgumentParser, n_default: int) -> None:
    p.add_argument("--model", default="digits", metavar="MODEL",
                   help="'digits' (the shipped digits model of --sde) or a score model file PATH.safetensors")
    p.add_argument("--sde", choices=("ve", "vp", "subvp"), default=None,
                   help=f"which shipped digits model (default: {DIGITS_DEFAULTS['sde']})")
    p.add_argument("--n", type=positive_int, default=n_default, help="number of test digits / samples")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the noise (and of the choice of test digits)")
    p.add_argument("--device", type=device_name, default="cpu")
    p.add_argument("--threads", type=thread_count, help=f"torch CPU threads, 1 to {MAX_THREADS} (default: torch's)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def parse_model(args) -> None:
    try:
        kind = model_spec(args.model)
    except argparse.ArgumentTypeError as err:
        raise UsageError(f"--model: {err}") from None
    if kind[0] == "gmm":
        raise UsageError("this command takes an image model: 'digits' or PATH.safetensors")
    if kind[0] == "file" and args.sde is not None:
        raise UsageError("--sde does not apply to a model file: it was trained under its own SDE")
    args.model = kind


def test_subset(n: int, seed: int):
    from fastsde.digits.data import load_digits

    images, labels = load_digits("test")
    if n > images.shape[0]:
        raise UsageError(f"--n must be at most {images.shape[0]} (the test split), got {n}")
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[idx], labels[idx]


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc/self/stat against /proc/uptime, 10 ms resolution): what a
    user waits for, interpreter and imports included. None where /proc is not there."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime, after the ")" of comm
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def kid_text(kid: dict | None) -> str:
    """The kernel distance of a report (metrics.kernel_distance) as 'mean +- stderr (...)', or why it is missing."""
    if kid is None:
        return "- (needs at least 8 finite images)"
    return (f"{kid['kid']:.1f} +- {kid['stderr']:.1f}  (unbiased: real digits give 0 on average; standard error over "
            f"{kid['subsets']} disjoint subsets of {kid['subset_size']})")


def fmt_optional(value, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)




IMAGE_BATCH = 256  # the image commands' default micro-batch cap (fastsde.distributed)


def batch_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--batch", type=positive_int, default=None, metavar="B",
                   help="micro-batch size: samples 0..n-1 are cut into batches of B consecutive ids, dealt "
                        "round-robin to the processes of a torchrun launch; the same B gives the same bits with any "
                        f"number of processes (default: {default}, one batch as without torchrun)")


def micro_batch(args: argparse.Namespace, n: int, cap: int) -> int:
    """--batch, or n up to `cap`; on rank 0 a note on stderr when there are fewer micro-batches than processes."""
    batch = args.batch or min(n, cap)
    count, world = -(-n // batch), distributed.world_size()
    if count < world and distributed.rank() == 0:
        print(f"fastsde: note: {count} micro-batch{'es' if count > 1 else ''} of --batch {batch} for {world} "
              f"processes; pass --batch {-(-n // world)} or less to use them all", file=sys.stderr)
    return batch
