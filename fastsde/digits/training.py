"""Training score models by denoising score matching (Song et al., ICLR 2021, eq. 7), resumable, on the CPU or GPU.

The objective is score_sde's continuous-time one (`get_sde_loss_fn`): t ~ U(eps, T), x_t = mean(t) x_0 + std(t) z,
  plain weighting        lambda(t) = std(t)^2:  || std(t) s(x_t, t) + z ||^2
  likelihood weighting   lambda(t) = g(t)^2:    g(t)^2 || s(x_t, t) + z / std(t) ||^2   (Song et al., 2021b)
summed (VE, reduce_mean=False) or averaged (VP/subVP) over the data dimensions and averaged over the batch. s is
the score through `get_score_fn(sde, model, train=True, continuous=True)`, so a noise-predicting VP model is trained
on -eps / std exactly as it is sampled.

`Trainer` adds what a long run needs: Adam with linear warm-up, gradient-norm clipping, an exponential moving
average of the weights (score_sde's EMA, with its (1 + n) / (10 + n) warm-up of the decay), a progress bar with the
running loss, sample grids drawn with the EMA weights every `snapshot_every` steps, and checkpoints every
`checkpoint_every` steps that hold everything needed to continue bit-for-bit: model, EMA, optimizer, step, the
batch sampler's and the noise generator's states and the loss history. Checkpoints are written to a temporary file
and renamed, so an interruption at any moment leaves the previous checkpoint intact; `Trainer(config, out_dir)` on
a directory with a checkpoint resumes from it. The exported model (`model.safetensors`) holds the EMA weights.

`precision` ("fp32", "bf16", "fp16") runs the forward and backward under torch.autocast in that dtype while the
weights, the optimizer state and the EMA stay float32 (the master weights); fp16 adds a gradient scaler (its state is
checkpointed with the rest).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

import torch

from fastsde import sde as sde_lib
from fastsde._util import check_regular_file, per_sample
from fastsde.losses import get_sde_loss_fn
from fastsde.sde import SDE_NAMES

__all__ = ["get_sde_loss_fn", "ExponentialMovingAverage", "TrainConfig", "Trainer", "make_sde", "sde_kwargs",
           "SDE_NAMES"]

class ExponentialMovingAverage:
    """shadow <- decay' shadow + (1 - decay') param with decay' = min(decay, (1 + n) / (10 + n)) after n updates."""

    def __init__(self, parameters, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay, self.num_updates = float(decay), 0
        self.shadow = [p.detach().clone() for p in parameters if p.requires_grad]

    @torch.no_grad()
    def update(self, parameters) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        params = [p for p in parameters if p.requires_grad]
        torch._foreach_lerp_(self.shadow, [p.detach() for p in params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, parameters) -> None:
        for s, p in zip(self.shadow, [p for p in parameters if p.requires_grad]):
            p.copy_(s)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model {len(self.shadow)}")
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        self.shadow = [s.clone() for s in state["shadow"]]


# score_sde's SDE hyper-parameters, VE's sigma_max chosen for the data (technique 1 of Song & Ermon 2020: about
# the largest distance between two training images; digits at 16x16 in [0, 1]: 8.3).
# The heat family (fastsde.heat) on 16x16 digits: blur 4 (the heat equation's time at T, in pixels^2: a Gaussian blur of
# std sqrt(2 * 4) ~ 2.8 pixels) keeps the residual high-frequency noise at eps = 1e-3 near 0.04; IHDM's blur runs
# from sigma_B = 0.5 to 12 (tau = sigma_B^2 / 2), its fixed noise 0.01 as the paper, its prior the digits' Gaussian
# fit per frequency (data_mean/data_var, computed from the training digits when the SDE is built).
_SDE_KWARGS = {"ve": {"sigma_min": 0.01, "sigma_max": 10.0}, "vp": {"beta_min": 0.1, "beta_max": 20.0},
               "subvp": {"beta_min": 0.1, "beta_max": 20.0},
               "heat": {"beta_min": 0.1, "beta_max": 20.0, "blur": 4.0},
               "heat_ve": {"sigma_min": 0.01, "sigma_max": 10.0, "blur": 4.0},
               "blur": {"beta_min": 0.1, "beta_max": 20.0, "blur": 4.0},
               "ihdm": {"sigma": 0.01, "tau_min": 0.125, "tau_max": 72.0}}
_DATA_MOMENT_SDES = ("ihdm",)  # priors fitted to the data


def _digits_moments() -> dict:
    """Per-frequency mean and variance (16 x 16 nested lists) of the centered training digits' DCT coefficients."""
    from fastsde.digits.data import get_data_scaler, load_dataset
    from fastsde.heat import dct2

    images, _ = load_dataset("digits", "train")
    y = dct2(get_data_scaler(True)(images).double())[:, 0]
    return {"data_mean": y.mean(0).tolist(), "data_var": y.var(0).tolist()}


def make_sde(name: str, N: int = 1000, **kwargs):
    """The SDE `name` (SDE_NAMES) with the digits models' hyper-parameters (overridable) and N steps."""
    if name not in SDE_NAMES:
        raise ValueError(f"sde must be one of {SDE_NAMES}, got {name!r}")
    return sde_lib.make_sde(name, N, **{**sde_kwargs(name), **kwargs})


def sde_kwargs(name: str) -> dict:
    """The hyper-parameters make_sde uses for `name`."""
    return {**_SDE_KWARGS[name], **(_digits_moments() if name in _DATA_MOMENT_SDES else {})}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (saved in every checkpoint and checked on resume)."""

    dataset: str = "digits"
    sde: str = "vp"
    preset: str = "small16"
    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    likelihood_weighting: bool = False
    eps: float = 1e-5
    seed: int = 0
    checkpoint_every: int = 500
    snapshot_every: int = 1000
    snapshot_steps: int = 100  # PC steps of the sample grids drawn during training
    precision: str = "fp32"  # autocast dtype of the forward/backward: fp32 (off), bf16, fp16; weights stay float32

    def __post_init__(self):
        if self.precision not in _AUTOCAST:
            raise ValueError(f"precision must be one of {tuple(_AUTOCAST)}, got {self.precision!r}")
        if self.sde not in SDE_NAMES:
            raise ValueError(f"sde must be one of {SDE_NAMES}, got {self.sde!r}")
        for name in ("steps", "batch_size", "checkpoint_every", "snapshot_every", "snapshot_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.warmup < 0 or not self.grad_clip >= 0:
            raise ValueError(f"need lr > 0, warmup >= 0, grad_clip >= 0; got {self.lr}, {self.warmup}, "
                             f"{self.grad_clip}")

    @property
    def reduce_mean(self) -> bool:
        """score_sde: VE configs sum the per-pixel losses, VP/subVP configs average them (heat_ve as VE, the rest
        of the heat family as VP)."""
        return self.sde not in ("ve", "heat_ve")


_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_RESUMABLE = ("steps", "checkpoint_every", "snapshot_every", "snapshot_steps")  # may change between sessions


class Trainer:
    """A resumable DSM training run writing into out_dir (module docstring). `run()` trains to config.steps."""

    CHECKPOINT = "checkpoint.pt"
    EXPORT = "model.safetensors"

    def __init__(self, config: TrainConfig, out_dir: str, *, device="cpu", progress: bool = True, log=print,
                 command: str | None = None):
        from fastsde.digits.data import get_data_scaler, load_dataset
        from fastsde.models.ncsnpp import UNet, get_preset

        self.config, self.out_dir, self.device = config, out_dir, torch.device(device)
        self.progress, self.log = progress, log
        self.command = command if command is not None else _command_line()
        images, _ = load_dataset(config.dataset, "train")
        self.sde = make_sde(config.sde)
        self.model_config = get_preset(config.preset, config.sde, in_channels=images.shape[1],
                                       resolution=images.shape[-1])
        self.scaler = get_data_scaler(self.model_config.centered)
        self.data = self.scaler(images).to(self.device)
        torch.manual_seed(config.seed)  # the initial weights
        self.model = UNet(self.model_config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
        self.ema = ExponentialMovingAverage(self.model.parameters(), config.ema_decay)
        self.loss_fn = get_sde_loss_fn(self.sde, train=True, reduce_mean=config.reduce_mean, continuous=True,
                                       likelihood_weighting=config.likelihood_weighting, eps=config.eps)
        self.autocast = _AUTOCAST[config.precision]
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast == torch.float16)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(config.seed + 1)
        self.batch_gen = torch.Generator().manual_seed(config.seed + 2)
        self.step, self.losses, self._order, self._cursor = 0, [], None, 0
        self.resumed = self._maybe_resume()
        os.makedirs(out_dir, exist_ok=True)  # only once everything above is checked

    # ------------------------------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config), "step": self.step, "losses": self.losses,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
            "noise_gen": self.noise_gen.get_state(), "batch_gen": self.batch_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "order": self._order, "cursor": self._cursor, "grad_scaler": self.grad_scaler.state_dict(),
        }

    def _maybe_resume(self) -> bool:
        path = os.path.join(self.out_dir, self.CHECKPOINT)
        if not os.path.lexists(path):
            return False
        check_regular_file(path, "training checkpoint")  # a FIFO would block torch.load forever
        try:  # weights_only: a pickle payload is refused, never executed; generator states stay on the CPU
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved, mine = {"precision": "fp32", **state["config"]}, dataclasses.asdict(self.config)
        except Exception as exc:  # noqa: BLE001 - UnpicklingError, zip/EOF errors, a dict without "config"
            raise ValueError(f"{path} cannot be resumed: not a fastsde training checkpoint or damaged "
                             f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); move it away or use "
                             f"another --out") from None
        diff = {k: (saved.get(k), v) for k, v in mine.items() if k not in _RESUMABLE and saved.get(k) != v}
        if diff:
            raise ValueError(f"{path} was written by a different run (saved vs requested: {diff}); use another "
                             f"--out or the same options")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict({**state["ema"], "shadow": [s.to(self.device) for s in state["ema"]["shadow"]]})
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])  # dropout draws from the global generator
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.batch_gen.set_state(state["batch_gen"])
        self.step, self.losses = int(state["step"]), list(state["losses"])
        self._order, self._cursor = state["order"], int(state["cursor"])
        if state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        return True

    def save_checkpoint(self) -> str:
        path = os.path.join(self.out_dir, self.CHECKPOINT)
        tmp = path + ".tmp"
        torch.save(self._state(), tmp)
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------------------------------ training
    def _next_batch(self) -> torch.Tensor:
        """Batches of a fresh permutation per epoch (the last partial batch of an epoch is dropped)."""
        n, b = self.data.shape[0], self.config.batch_size
        if self._order is None or self._cursor + b > n:
            self._order, self._cursor = torch.randperm(n, generator=self.batch_gen), 0
        idx = self._order[self._cursor:self._cursor + b]
        self._cursor += b
        return self.data[idx.to(self.device)]

    def _lr(self, step: int) -> float:
        c = self.config
        return c.lr * min(1.0, (step + 1) / c.warmup) if c.warmup else c.lr

    def train_step(self) -> float:
        """One optimisation step; returns the batch loss."""
        batch = self._next_batch()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            loss = self.loss_fn(self.model, batch, generator=self.noise_gen)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {loss.item()} at step {self.step}; lower --lr or raise --warmup")
        scaler = self.grad_scaler
        scaler.scale(loss).backward()
        if self.config.grad_clip > 0:
            scaler.unscale_(self.optimizer)  # clip the true gradients (a no-op without scaling)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        scaler.step(self.optimizer)  # skipped when a scaled fp16 gradient overflowed
        scaler.update()
        self.ema.update(self.model.parameters())
        self.step += 1
        value = float(loss.item())
        self.losses.append(value)
        return value

    def ema_model(self):
        """A copy of the model in eval mode carrying the EMA weights."""
        import copy

        model = copy.deepcopy(self.model).eval()
        self.ema.copy_to(model.parameters())
        return model

    def snapshot(self, n: int = 64) -> str:
        """Sample an n-image grid with the EMA weights; returns the PNG path."""
        from fastsde.digits.data import get_data_inverse_scaler
        from fastsde.digits.plotting import save_image_grid
        from fastsde.sampling import PC_DEFAULTS, get_pc_sampler

        sde = make_sde(self.config.sde, N=self.config.snapshot_steps)
        shape = (n,) + tuple(self.data.shape[1:])
        predictor, corrector, eps = PC_DEFAULTS[self.config.sde]
        sampler = get_pc_sampler(sde, shape, predictor, corrector,
                                 get_data_inverse_scaler(self.model_config.centered), 0.16, continuous=True,
                                 eps=eps, device=self.device, seed=self.step)
        x, _ = sampler(self.ema_model())
        path = os.path.join(self.out_dir, f"samples_{self.step:06d}.png")
        save_image_grid(x.clamp(0, 1).cpu(), path, title=f"{self.config.sde.upper()} step {self.step}")
        return path

    def export(self) -> str:
        """Write the EMA weights with the SDE and training provenance to out_dir/model.safetensors."""
        from fastsde.digits.pretrained import save_score_model

        path = os.path.join(self.out_dir, self.EXPORT)
        save_score_model(self.ema_model(), path, sde=self.config.sde, sde_kwargs=sde_kwargs(self.config.sde),
                         training={"config": dataclasses.asdict(self.config), "command": self.command,
                                   "final_loss_avg100": _tail_mean(self.losses, 100), "steps_done": self.step})
        return path

    def run(self) -> dict:
        """Train to config.steps (from wherever the checkpoint left off); returns a summary.

        Ctrl-C / SIGTERM finish the current step, write a checkpoint and raise KeyboardInterrupt: rerunning the
        same command continues from exactly there. (A hard kill loses the steps since the last periodic one.)
        """
        from fastsde.sampling.registry import progress_bar as _progress

        c = self.config
        if self.resumed:
            self.log(f"resuming {self.out_dir} at step {self.step}/{c.steps}")
        start, t0 = self.step, time.perf_counter()
        bar = _progress(range(self.step, c.steps), self.progress, f"train {c.sde}")
        self.model.train()
        with _deferred_interrupts() as stop:
            for _ in bar:
                self.train_step()
                if hasattr(bar, "set_postfix") and (self.step % 10 == 0 or self.step == c.steps):
                    bar.set_postfix(loss=f"{_tail_mean(self.losses, 50):.4f}")
                if self.step % c.checkpoint_every == 0 or self.step == c.steps or stop:
                    self.save_checkpoint()
                if stop:
                    self.log(f"interrupted at step {self.step}/{c.steps}: checkpoint written to {self.out_dir}; run "
                             f"the same command again to continue")
                    raise KeyboardInterrupt
                if self.step % c.snapshot_every == 0 or self.step == c.steps:
                    self.snapshot()
                    self.model.train()
        seconds = time.perf_counter() - t0
        export = self.export()
        summary = {"steps": self.step, "trained_now": self.step - start, "seconds": seconds,
                   "loss_first100": _tail_mean(self.losses[:100], 100), "loss_last100": _tail_mean(self.losses, 100),
                   "model": export}
        with open(os.path.join(self.out_dir, "train_summary.json"), "w") as f:
            json.dump({**summary, "config": dataclasses.asdict(c), "command": self.command}, f, indent=2)
        return summary


@contextlib.contextmanager
def _deferred_interrupts():
    """Within the block, SIGINT/SIGTERM only append to the yielded list (checked between training steps), so an
    interrupt never lands in the middle of an optimizer/EMA update. Off the main thread signals cannot be caught
    and the list stays empty."""
    received, previous = [], {}

    def handler(signum, frame):
        received.append(signum)

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _command_line() -> str:
    """This process's command line as a user would type it (provenance stored in the exported files)."""
    return shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:])


def _tail_mean(values, n: int) -> float:
    tail = values[-n:]
    return float(sum(tail) / len(tail)) if tail else float("nan")


def _shift_augment(x: torch.Tensor, generator: torch.Generator, background: float, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to max_shift pixels in x and y, filling with the background value (0 for data in
    [0, 1], -1 for data scaled to [-1, 1]): the classifiers' only augmentation."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (max_shift,) * 4, value=background)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def training_memory(preset: str, sde: str, batch_size: int, *, classifier: bool = False) -> int:
    """Bytes a training step needs, estimated before anything is built: weights, gradients, Adam moments and EMA
    (5 copies of the parameters) plus the activations kept for the backward pass (~3x an inference forward) per
    sample of the batch. The classifier is smaller than the UNet preset; the UNet's estimate bounds it."""
    from fastsde.models.ncsnpp import get_preset

    config = get_preset(preset, sde)
    widest = max(config.nf * m * (config.resolution // 2**i) ** 2 for i, m in enumerate(config.ch_mult))
    params = 40 * config.nf**2 * sum(m * m for m in config.ch_mult) * config.num_res_blocks
    per_sample = 4 * 3 * (24 * widest + 2 * max([(r * r) ** 2 for r in config.attn_resolutions] or [0]))
    return 5 * 4 * params + batch_size * per_sample


def train_classifier(out_dir: str, *, time_dependent: bool = False, sde: str = "vp", steps: int = 1500,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device="cpu", progress: bool = True,
                     eps: float = 1e-5, command: str | None = None) -> dict:
    """Train a digit Classifier on the training split and write out_dir/classifier.safetensors; returns a summary.

    time_dependent=False: clean images in [0, 1] with +-1 pixel shifts (the metric's feature space).
    time_dependent=True: x_t of `sde` (data scaled as its score models see it) at t ~ U(eps, T), labelled with the
    score model's time labels, so the classifier can guide that SDE's samplers (fastsde.controllable).
    Reports test accuracy (time-dependent: at t = eps, 0.25 T, 0.5 T, 0.75 T).
    """
    from fastsde.digits.data import get_data_scaler, load_digits
    from fastsde.models.classifier import Classifier, ClassifierConfig
    from fastsde.score import get_score_parts
    from fastsde.digits.pretrained import save_classifier
    from fastsde.sampling.registry import progress_bar as _progress

    device = torch.device(device)
    command = command if command is not None else _command_line()
    if sde not in SDE_NAMES:
        raise ValueError(f"sde must be one of {SDE_NAMES}, got {sde!r}")
    os.makedirs(out_dir, exist_ok=True)
    images, labels = load_digits("train")
    test_images, test_labels = load_digits("test")
    sde_obj = make_sde(sde) if time_dependent else None
    centered = time_dependent and sde != "ve"
    config = ClassifierConfig(in_channels=images.shape[1], resolution=images.shape[-1],
                              time_embedding=(("fourier" if sde == "ve" else "positional") if time_dependent
                                              else None), centered=centered)
    scaler = get_data_scaler(centered)
    labels_fn = get_score_parts(sde_obj, continuous=True)[0] if time_dependent else None
    torch.manual_seed(seed)
    model = Classifier(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed + 1)
    data, targets = scaler(images).to(device), labels.to(device)

    def noisy(x, t, generator):
        mean, std = sde_obj.marginal_prob(x, t)
        z = torch.randn(x.shape, generator=generator).to(device)
        return mean + per_sample(std, x) * z, labels_fn(t)

    losses, t0 = [], time.perf_counter()
    bar = _progress(range(steps), progress, "train classifier" + (f" ({sde}, noisy)" if time_dependent else ""))
    model.train()
    for step in bar:
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen).to(device)
        x, y = _shift_augment(data[idx], gen, background=float(scaler(torch.zeros(())))), targets[idx]
        model_labels = None
        if time_dependent:
            t = (torch.rand(batch_size, generator=gen) * (sde_obj.T - eps) + eps).to(device)
            x, model_labels = noisy(x, t, gen)
        for group in optimizer.param_groups:  # cosine decay to 0
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = torch.nn.functional.cross_entropy(model(x, model_labels), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
        if hasattr(bar, "set_postfix") and step % 10 == 0:
            bar.set_postfix(loss=f"{_tail_mean(losses, 50):.4f}")
    model.eval()
    accuracy = {}
    eval_gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        x_test = scaler(test_images).to(device)
        if time_dependent:
            for frac in (0.0, 0.25, 0.5, 0.75):
                t = torch.full((x_test.shape[0],), max(eps, frac * sde_obj.T), device=device)
                xt, lab = noisy(x_test, t, eval_gen)
                accuracy[f"t={frac:g}T"] = float((model(xt, lab).argmax(1).cpu() == test_labels).float().mean())
        else:
            accuracy["clean"] = float((model(x_test).argmax(1).cpu() == test_labels).float().mean())
    seconds = time.perf_counter() - t0
    path = os.path.join(out_dir, "classifier.safetensors")
    summary = {"steps": steps, "seconds": seconds, "loss_last100": _tail_mean(losses, 100),
               "test_accuracy": accuracy, "command": command, "model": path}
    save_classifier(model.cpu(), path, sde=sde if time_dependent else None,
                    training={k: v for k, v in summary.items() if k != "model"})
    return summary
