"""fastsde's drop-in diffusers schedulers (fastsde.compat.diffusers.Fast*) against diffusers' own scheduler class of
the same name and config, inside diffusers' own pipelines (DDPMPipeline, DDIMPipeline, ScoreSdeVePipeline) and
diffusers' documented denoising loop, on the same noise (the pipeline's `generator`). Skipped, with the reason, only
when diffusers is missing, as the real-package tests of tests/test_real_packages.py.

Tolerance: the real-package tests' (TOL_ULPS float32 ulps of the largest magnitude in play): fastsde folds each
update into one combination with float64 coefficients, diffusers evaluates the same formulas term by term in float32.
Left out of the equality table: the noise-space variants (DPM-Solver's deprecated algorithm_type "dpmsolver" /
"sde-dpmsolver", UniPC with predict_x0=False), whose coefficients contain e^h: diffusers' float32 coefficients differ
from the exact ones by up to ~1e-4 relative at 7 steps (measured with float64 states on both sides), far above
rounding of the states; the data-space forms, which every default config uses, are compared here.
"""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

from fastsde import random as fsn1
from test_real_packages import _missing, assert_rounding_level

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


@pytest.fixture(scope="module")
def D():
    why = _missing("diffusers")
    if why:
        pytest.skip(why)
    import diffusers
    return diffusers


@pytest.fixture(scope="module")
def F(D):
    import fastsde.compat.diffusers as fd
    return fd


def _unet_class(D, score: bool):
    class SkipUNet(D.UNet2DModel):
        """A tiny random UNet2DModel whose output gets an identity skip, so that an epsilon (or v, or x0) model's
        data prediction stays O(1) as a trained model's does (as in tests/test_real_packages.py). With score=True
        (score-SDE-VE: the timestep is sigma) it returns a score, (0.1 net - x) / sigma^2."""

        def forward(self, sample, timestep, return_dict=True):
            out = super().forward(sample, timestep).sample
            if score:
                sigma = torch.as_tensor(timestep, dtype=sample.dtype).reshape(-1, 1, 1, 1)
                out = (0.1 * out - sample) / sigma**2
            else:
                out = sample + 0.1 * out
            return D.models.unets.unet_2d.UNet2DOutput(sample=out) if return_dict else (out,)

    return SkipUNet


def _unet(D, score=False, channels=2):
    torch.manual_seed(0)
    return _unet_class(D, score)(sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def _spy(scheduler, name="step"):
    """Record every prev_sample the pipeline gets from `scheduler.<name>` (the pipelines return clamped images)."""
    seen, inner = [], getattr(scheduler, name)

    def recorded(*args, **kwargs):
        out = inner(*args, **kwargs)
        seen.append(out.prev_sample.clone())
        return out

    setattr(scheduler, name, recorded)
    return seen


DPMPP = dict(algorithm_type="dpmsolver++", solver_order=2)
# (id, pipeline, scheduler class, config, pipeline call options)
PIPELINES = [
    ("ddim-eps-leading-clip", "DDIMPipeline", "DDIMScheduler", dict(timestep_spacing="leading"), {}),
    ("ddim-v-trailing-eta", "DDIMPipeline", "DDIMScheduler",
     dict(clip_sample=False, timestep_spacing="trailing", prediction_type="v_prediction"), dict(eta=0.5)),
    ("ddim-x0-linspace-eta1-clipped", "DDIMPipeline", "DDIMScheduler",
     dict(timestep_spacing="linspace", prediction_type="sample", set_alpha_to_one=False), dict(eta=1.0,
                                                                                              use_clipped_model_output=True)),
    ("ddim-thresholding", "DDIMPipeline", "DDIMScheduler",
     dict(thresholding=True, sample_max_value=1.5, timestep_spacing="trailing"), dict(eta=0.3)),
    ("dpmpp2m-eps-linspace", "DDPMPipeline", "DPMSolverMultistepScheduler", dict(DPMPP), {}),
    ("dpmpp2m-v-trailing-heun", "DDPMPipeline", "DPMSolverMultistepScheduler",
     dict(DPMPP, prediction_type="v_prediction", timestep_spacing="trailing", solver_type="heun"), {}),
    ("dpmpp2m-x0-leading-no-lof", "DDPMPipeline", "DPMSolverMultistepScheduler",
     dict(DPMPP, prediction_type="sample", timestep_spacing="leading", steps_offset=1, lower_order_final=False,
          final_sigmas_type="sigma_min"), {}),
    ("dpmpp3m-eps-lof", "DDPMPipeline", "DPMSolverMultistepScheduler", dict(DPMPP, solver_order=3), {}),
    ("dpmpp2m-sde-eps", "DDPMPipeline", "DPMSolverMultistepScheduler",
     dict(DPMPP, algorithm_type="sde-dpmsolver++"), {}),
    ("dpmpp2m-sde-v-trailing-heun", "DDPMPipeline", "DPMSolverMultistepScheduler",
     dict(DPMPP, algorithm_type="sde-dpmsolver++", prediction_type="v_prediction", timestep_spacing="trailing",
          solver_type="heun"), {}),
    ("euler-ancestral", "DDPMPipeline", "EulerAncestralDiscreteScheduler", dict(timestep_spacing="trailing"), {}),
]


@pytest.mark.parametrize("case", PIPELINES, ids=[c[0] for c in PIPELINES])
@pytest.mark.parametrize("steps", [7, 10])
def test_pipeline_with_fastsde_scheduler_matches_diffusers(D, F, case, steps):
    _, pipeline, cls, config, options = case
    unet = _unet(D)
    want_pipe = getattr(D, pipeline)(unet=unet, scheduler=getattr(D, cls)(**BASE, **config))
    got_pipe = getattr(D, pipeline)(unet=unet, scheduler=want_pipe.scheduler)
    got_pipe.scheduler = getattr(F, f"Fast{cls}").from_config(want_pipe.scheduler.config)
    assert type(got_pipe.scheduler).__mro__[2] is getattr(D, cls)
    got_pipe.set_progress_bar_config(disable=True)
    want_pipe.set_progress_bar_config(disable=True)
    want_steps, got_steps = _spy(want_pipe.scheduler), _spy(got_pipe.scheduler)
    run = dict(batch_size=3, num_inference_steps=steps, output_type="np", **options)
    want = want_pipe(generator=torch.Generator().manual_seed(7), **run).images
    got = got_pipe(generator=torch.Generator().manual_seed(7), **run).images
    start = torch.randn((3, 2, 8, 8), generator=torch.Generator().manual_seed(7))  # the pipelines' first draw
    assert len(got_steps) == len(want_steps) == steps
    assert_rounding_level(got_steps[-1], want_steps[-1], start)
    assert_rounding_level(torch.from_numpy(got), torch.from_numpy(want), start)


# diffusers' documented loop: x_T = z init_noise_sigma; x <- step(unet(scale_model_input(x, t), t), t, x)
LOOPS = [
    ("euler-eps-leading", "EulerDiscreteScheduler", dict(timestep_spacing="leading", steps_offset=1), {}),
    ("euler-v-trailing-churn", "EulerDiscreteScheduler",
     dict(timestep_spacing="trailing", prediction_type="v_prediction"), dict(s_churn=1.0)),
    ("euler-x0-linspace-karras", "EulerDiscreteScheduler", dict(prediction_type="sample", use_karras_sigmas=True), {}),
    ("euler-ancestral-v", "EulerAncestralDiscreteScheduler", dict(prediction_type="v_prediction"), {}),
    ("unipc-bh2-eps", "UniPCMultistepScheduler", dict(), {}),
    ("unipc-bh1-order3-v-trailing", "UniPCMultistepScheduler",
     dict(solver_order=3, solver_type="bh1", prediction_type="v_prediction", timestep_spacing="trailing",
          final_sigmas_type="sigma_min"), {}),
    ("unipc-x0-leading-no-lof-disable", "UniPCMultistepScheduler",
     dict(prediction_type="sample", timestep_spacing="leading", lower_order_final=False, disable_corrector=[1],
          final_sigmas_type="sigma_min"), {}),
    ("unipc-thresholding", "UniPCMultistepScheduler", dict(thresholding=True, sample_max_value=1.5), {}),
    ("dpmpp2m-sde-karras", "DPMSolverMultistepScheduler",
     dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), {}),
]


def _loop(unet, scheduler, steps, z, generator_seed, options):
    scheduler.set_timesteps(steps)
    x = z * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters  # UniPC draws no noise
    generator = {"generator": torch.Generator().manual_seed(generator_seed)} if takes_generator else {}
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(scheduler.scale_model_input(x, t), t).sample, t, x, **generator,
                               **options).prev_sample
    return x


@pytest.mark.parametrize("case", LOOPS, ids=[c[0] for c in LOOPS])
@pytest.mark.parametrize("steps", [7, 10])
def test_denoising_loop_matches_diffusers(D, F, case, steps):
    _, cls, config, options = case
    unet = _unet(D)
    want_s = getattr(D, cls)(**BASE, **config)
    got_s = getattr(F, f"Fast{cls}").from_config(want_s.config)
    z = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    want = _loop(unet, want_s, steps, z, 5, options)
    got = _loop(unet, got_s, steps, z, 5, options)
    assert_rounding_level(got, want, z * want_s.init_noise_sigma)


def test_score_sde_ve_pipeline_matches_diffusers(D, F):
    """score_sde's VE predictor-corrector in diffusers' ScoreSdeVePipeline (one corrector step per predictor)."""
    unet = _unet(D, score=True, channels=3)  # the pipeline draws 3 channels
    config = dict(num_train_timesteps=100, sigma_min=0.01, sigma_max=5.0, snr=0.16, correct_steps=1)
    want_pipe = D.ScoreSdeVePipeline(unet=unet, scheduler=D.ScoreSdeVeScheduler(**config))
    got_pipe = D.ScoreSdeVePipeline(unet=unet, scheduler=F.FastScoreSdeVeScheduler.from_config(
        want_pipe.scheduler.config))
    for pipe in (want_pipe, got_pipe):
        pipe.set_progress_bar_config(disable=True)
    spies = [(_spy(p.scheduler, "step_pred"), _spy(p.scheduler, "step_correct")) for p in (want_pipe, got_pipe)]
    want = want_pipe(batch_size=3, num_inference_steps=8, generator=torch.Generator().manual_seed(3),
                     output_type="np").images
    got = got_pipe(batch_size=3, num_inference_steps=8, generator=torch.Generator().manual_seed(3),
                   output_type="np").images
    start = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(3)) * 5.0
    for want_seen, got_seen in zip(*spies):
        assert len(got_seen) == len(want_seen) == 8
        for g, w in zip(got_seen, want_seen):
            assert_rounding_level(g, w, start)
    assert_rounding_level(torch.from_numpy(got), torch.from_numpy(want), start)


def test_one_scheduler_serves_several_calls_and_set_timesteps(D, F):
    """Reuse: one fastsde scheduler through pipeline calls of different lengths, and a run interrupted mid-way and
    restarted by set_timesteps, each equal to a fresh diffusers scheduler's call."""
    unet = _unet(D)
    config = dict(BASE, algorithm_type="sde-dpmsolver++", solver_order=2)
    fast = F.FastDPMSolverMultistepScheduler(**config)
    got_pipe = D.DDPMPipeline(unet=unet, scheduler=fast)
    got_pipe.set_progress_bar_config(disable=True)
    z = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    fast.set_timesteps(6)  # an interrupted run: three steps, then the pipeline's set_timesteps starts afresh
    x = z.clone()
    with torch.no_grad():
        for t in fast.timesteps[:3]:
            x = fast.step(unet(x, t).sample, t, x).prev_sample
    for steps in (10, 5, 10):
        want_pipe = D.DDPMPipeline(unet=unet, scheduler=D.DPMSolverMultistepScheduler(**config))
        want_pipe.set_progress_bar_config(disable=True)
        run = dict(batch_size=2, num_inference_steps=steps, output_type="np")
        want = want_pipe(generator=torch.Generator().manual_seed(steps), **run).images
        got = got_pipe(generator=torch.Generator().manual_seed(steps), **run).images
        assert_rounding_level(torch.from_numpy(got), torch.from_numpy(want), z)


def test_history_is_safe_from_callers_in_place_changes(D, F):
    """A multistep scheduler keeps its own copies: a caller that changes the tensors it passed to step (in place,
    or through .data, which bypasses the version counter) after the step gets the same samples as one that does not."""
    unet = _unet(D)
    z = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    for cls, config in (("UniPCMultistepScheduler", {}), ("DPMSolverMultistepScheduler", dict(solver_order=3))):
        results = []
        for vandal in (False, True):
            s = getattr(F, f"Fast{cls}")(**BASE, **config)
            s.set_timesteps(8)
            x = z.clone()
            with torch.no_grad():
                for t in s.timesteps:
                    out = unet(x, t).sample
                    new = s.step(out, t, x).prev_sample
                    if vandal:
                        out.data.mul_(-3.0)
                        x.add_(1.0)
                    x = new
            results.append(x)
        torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


def test_fsn1_noise_without_generator(D, F):
    """No generator: the noise is FSN1's, made inside the pass at (seed, sample index, draw), the seed taken from
    torch's global generator: the step equals the same step given that noise explicitly, and torch.manual_seed
    reproduces it."""
    s = F.FastDDIMScheduler(**BASE, clip_sample=False)
    s.set_timesteps(10)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    t = s.timesteps[2]
    torch.manual_seed(123)
    got = s.step(eps, t, x, eta=1.0).prev_sample
    noise = fsn1.fsn1_normal_like(x, s._fsn1_seed, 1)
    want = s.step(eps, t, x, eta=1.0, variance_noise=noise).prev_sample
    assert_rounding_level(got, want, x)
    s.set_timesteps(10)
    torch.manual_seed(123)
    assert torch.equal(s.step(eps, t, x, eta=1.0).prev_sample, got)
    # the draw advances per noisy step: a second step's noise is another draw
    second = s.step(eps, t, x, eta=1.0).prev_sample
    assert (second - got).abs().max() > 0.01


def test_pred_original_sample_on_request(D, F):
    """pred_original_sample (a second pass) comes when return_pred_original_sample is set, equal to diffusers'."""
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    for cls, config in (("DDIMScheduler", dict(clip_sample=False, prediction_type="v_prediction")),
                        ("EulerDiscreteScheduler", {}), ("EulerAncestralDiscreteScheduler", {})):
        want_s = getattr(D, cls)(**BASE, **config)
        got_s = getattr(F, f"Fast{cls}").from_config(want_s.config)
        for s in (want_s, got_s):
            s.set_timesteps(5)
        t = want_s.timesteps[1]
        assert got_s.step(eps, t, x, generator=torch.Generator().manual_seed(0)).pred_original_sample is None
        got_s.set_timesteps(5)
        got_s.return_pred_original_sample = True
        want = want_s.step(eps, t, x, generator=torch.Generator().manual_seed(0))
        got = got_s.step(eps, t, x, generator=torch.Generator().manual_seed(0))
        assert type(got) is type(want)
        assert_rounding_level(got.pred_original_sample, want.pred_original_sample, x)
        assert_rounding_level(got.prev_sample, want.prev_sample, x)


def test_from_config_of_other_schedulers_and_errors(D, F):
    """Any DDPM-type config loads (a DDPMPipeline's DDPMScheduler config into each fastsde class); bad use gets
    diffusers' own errors."""
    ddpm = D.DDPMScheduler(**BASE, prediction_type="v_prediction")
    for name in ("FastDDIMScheduler", "FastDPMSolverMultistepScheduler", "FastEulerDiscreteScheduler",
                 "FastEulerAncestralDiscreteScheduler", "FastUniPCMultistepScheduler"):
        s = getattr(F, name).from_config(ddpm.config)
        assert s.config.prediction_type == "v_prediction" and s.config.num_train_timesteps == 1000
        assert s.order == getattr(D, name[4:]).order
    with pytest.raises(ValueError, match="set_timesteps"):
        F.FastDDIMScheduler(**BASE).step(torch.zeros(1, 2), 10, torch.zeros(1, 2))
    unipc = F.FastUniPCMultistepScheduler(**BASE, solver_p=D.DDIMScheduler(**BASE))
    unipc.set_timesteps(4)
    with pytest.raises(NotImplementedError, match="solver_p"):
        unipc.step(torch.zeros(1, 2), unipc.timesteps[0], torch.zeros(1, 2))
    singular = F.FastUniPCMultistepScheduler(**BASE, lower_order_final=False)  # diffusers: NaN at the last step
    singular.set_timesteps(3)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="lower_order_final=True"):
        for t in singular.timesteps:
            x = singular.step(0.5 * x, t, x).prev_sample
    with pytest.raises(AttributeError, match="FastNothing"):
        F.FastNothing  # noqa: B018


def test_import_fastsde_does_not_import_diffusers():
    code = ("import sys, fastsde, fastsde.compat.diffusers as fd; fd.from_diffusers; "
            "assert 'diffusers' not in sys.modules, 'diffusers imported'")
    subprocess.run([sys.executable, "-c", code], check=True)



def test_bench_suite_smoke(D):
    """`fastsde bench diffusers --smoke`: the suite runs both contenders and emits the documented records."""
    from fastsde.benchmarks import bench_diffusers, common

    with common.smoke(True):
        records = bench_diffusers.run(quick=True, backend="auto")
    assert [r["case"] for r in records] == ["ddim3_tiny_b2/steps", "ddim3_tiny_b2/call", "dpmpp_2m3_tiny_b2/steps",
                                            "dpmpp_2m3_tiny_b2/call"]
    assert all(r["suite"] == "diffusers" and r["smoke"] and r["baselines"]["reference"] > 0 for r in records)
