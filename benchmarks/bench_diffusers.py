"""Suite "diffusers": diffusers pipelines with diffusers' own scheduler vs fastsde's drop-in one (compat.diffusers).

Cases: a DDIMPipeline call (DDIMScheduler, 50 steps, eta 0) and a DDPMPipeline call with DPM-Solver++ 2M
(DPMSolverMultistepScheduler, 20 steps), each on two random-weight UNet2DModels:
  tiny   batch 64, 3x32x32, block_out_channels (16, 32), one layer per block, no attention
  cifar  batch 8, 3x32x32, the DDPM CIFAR-10 architecture (block_out_channels (128, 256, 256, 256), two layers per
         block, attention at 16x16; ~36M parameters)
Two records per case: "<case>/steps", the summed time of the pipeline's scheduler.step calls (the scheduler's share;
CPU: process CPU time, see _StepClock), and "<case>/call", the whole pipeline call (wall time); baseline "reference"
is the same pipeline object with diffusers' scheduler, the calls interleaved (diffusers, fastsde, diffusers, ...) so
that a slow spell of a shared machine falls on both.
Same generator seed in both, so both run the same model on (to rounding) the same states. On CUDA the pipeline runs
on the GPU and each step call is timed between synchronizations.
"""
from __future__ import annotations

import time

import torch

from fastsde.benchmarks import common
from fastsde.benchmarks.common import interleaved_ms, record

SUITE = "diffusers"

_NETS = {  # name -> (batch, UNet2DModel options)
    "tiny": (64, dict(block_out_channels=(16, 32), layers_per_block=1, down_block_types=("DownBlock2D",) * 2,
                      up_block_types=("UpBlock2D",) * 2, norm_num_groups=8)),
    "cifar": (8, dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))),
}
_CASES = [  # (name, pipeline, scheduler, config, steps)
    ("ddim", "DDIMPipeline", "DDIMScheduler", dict(clip_sample=False), 50),
    ("dpmpp_2m", "DDPMPipeline", "DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2),
     20),
]
_BETAS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


class _StepClock:
    """Wraps a scheduler's step and sums the time of its calls: on CUDA wall time between synchronizations; on the
    CPU this process's CPU time (time.process_time), since the wall time of a sub-millisecond call on a shared
    machine mostly measures when the OS scheduler preempts the process."""

    def __init__(self, scheduler, cuda: bool):
        self.total, self._inner, self._cuda = 0.0, scheduler.step, cuda
        self._clock = time.perf_counter if cuda else time.process_time
        scheduler.step = self

    def __call__(self, *args, **kwargs):
        if self._cuda:
            torch.cuda.synchronize()
        t0 = self._clock()
        out = self._inner(*args, **kwargs)
        if self._cuda:
            torch.cuda.synchronize()
        self.total += self._clock() - t0
        return out


def _contenders(diffusers, pipeline, cls, config, steps, unet, batch, backend, device):
    """{name: (call, clock)}: one pipeline object per scheduler, each call starting from the same generator seed."""
    from fastsde.compat import diffusers as compat

    want = getattr(diffusers, cls)(**_BETAS, **config)
    fast = getattr(compat, f"Fast{cls}").from_config(want.config)
    fast.backend = backend
    out = {}
    for name, scheduler in (("diffusers", want), ("fastsde", fast)):
        pipe = getattr(diffusers, pipeline)(unet=unet, scheduler=scheduler).to(device)
        pipe.set_progress_bar_config(disable=True)
        clock = _StepClock(pipe.scheduler, common.is_cuda(device))

        def call(pipe=pipe):
            generator = torch.Generator(device=device).manual_seed(0)
            return pipe(batch_size=batch, generator=generator, num_inference_steps=steps, output_type="np")

        out[name] = (call, clock)
    return out


def run(quick: bool = False, backend: str = "auto", device: str = "cpu", use_compile: bool = True) -> list[dict]:
    """Records of every case (module docstring). quick: two timed rounds instead of five. use_compile: accepted for
    the `fastsde bench` front end; this suite has no compiled contender."""
    try:
        import diffusers
    except ImportError as exc:
        raise RuntimeError(f"the diffusers suite needs diffusers (pip install 'fastsde[diffusers]'): {exc}") from exc
    smoke = common.smoke_mode()
    reps = 2 if quick else 5
    copy_gbps = common.copy_bandwidth_gbps(reps=5, device=device)
    records = []
    for net, (batch, options) in _NETS.items():
        if smoke and net != "tiny":
            continue
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(sample_size=8 if smoke else 32, in_channels=3, out_channels=3,
                                     **options).eval().to(device)
        batch = 2 if smoke else batch
        for name, pipeline, cls, config, steps in _CASES:
            steps = 3 if smoke else steps
            contenders = _contenders(diffusers, pipeline, cls, config, steps, unet, batch, backend, device)
            if not smoke:  # one warm-up call each, outside the step clocks
                for call, clock in contenders.values():
                    call()
                    clock.total = 0.0
            calls = interleaved_ms({k: call for k, (call, _) in contenders.items()}, reps, warmup=0, device=device)
            step_ms = {k: 1e3 * clock.total / (1 if smoke else reps) for k, (_, clock) in contenders.items()}
            case = f"{name}{steps}_{net}_b{batch}"
            numel = batch * 3 * (8 if smoke else 32) ** 2
            for part, ms in (("steps", step_ms), ("call", calls)):
                records.append(record(SUITE, f"{case}/{part}", backend, numel, ms["fastsde"], None, copy_gbps,
                                      {"reference": ms["diffusers"], "eager_inplace": None, "compile": None},
                                      device=device))
            print(f"  {case}: scheduler steps {step_ms['fastsde']:.1f} ms (diffusers {step_ms['diffusers']:.1f} ms), "
                  f"call {calls['fastsde']:.0f} ms (diffusers {calls['diffusers']:.0f} ms)", flush=True)
    return records
