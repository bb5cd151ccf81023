"""fastsde's solvers against k-diffusion's and diffusers' OWN implementations (the installed packages, pinned in
requirements-dev.txt / requirements-nodeps.txt), on the same denoiser, the same grid and, for the stochastic
samplers, the same noise. Each test is skipped, with the reason, only when its package is missing; the dev
environment (scripts/bootstrap.sh, CI) installs both.

Tolerance (every comparison runs in float32 unless it says otherwise): 32 float32 ulps of the largest magnitude in
play, TOL_ULPS * 2^-23 * max(max|x_start|, max|result|). The two sides compute the same algebra in different orders
(fastsde folds each step into one affine combination with float64 coefficients; the packages evaluate their
formulas term by term in float32), so they differ by rounding that accumulates over the steps; measured: at most
~7e-7 relative, 5x under the tolerance. Any real difference tried (an order choice, a misplaced step) is >= 4e-3.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import sys
import types

import pytest
import torch

from fastsde import kdiffusion
from fastsde.compat.diffusers import from_diffusers, times_of_timesteps
from fastsde.models.analytic import get_mixture
from fastsde.solvers import get_sampler
from fastsde import sde as sde_lib

pytestmark = pytest.mark.usefixtures("one_thread")

TOL_ULPS = 32


def assert_rounding_level(got, want, start):
    scale = max(start.abs().max().item(), want.abs().max().item())
    tol = TOL_ULPS * 2.0**-23 * scale
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol, f"max abs diff {err:.3g} > {tol:.3g} ({TOL_ULPS} float32 ulps of {scale:.3g})"


# ---------------------------------------------------------------------------------------------------- k-diffusion
def _missing(dist):
    try:
        importlib.metadata.distribution(dist)
        return None
    except importlib.metadata.PackageNotFoundError:
        return (f"{dist} is not installed "
                "(scripts/bootstrap.sh installs it: requirements-dev.txt, requirements-nodeps.txt)")


def _load_k_diffusion_sampling():
    """k_diffusion.sampling as installed. `import k_diffusion` runs the package __init__, which imports every
    submodule (torchvision, clip, kornia, wandb, scikit-image, ...): the dev environment installs k-diffusion with
    --no-deps and none of those. So, when the import fails, sampling.py and utils.py (the only module sampling.py
    uses, for append_dims) are executed from the installed package directory under a bare `k_diffusion` package;
    utils.py's top-level `from torchvision.transforms import functional` (used only by its PIL converters) is given
    an empty stand-in for the duration of the load. The sampler code that runs is the package's own, unmodified."""
    why = _missing("k-diffusion")
    if why:
        pytest.skip(why)
    try:
        import k_diffusion.sampling as sampling
        return sampling
    except ImportError:
        pass
    root = os.path.join(str(importlib.metadata.distribution("k-diffusion").locate_file("")), "k_diffusion")
    stand_ins = {"k_diffusion": types.ModuleType("k_diffusion"), "torchvision": types.ModuleType("torchvision"),
                 "torchvision.transforms": types.ModuleType("torchvision.transforms"),
                 "torchvision.transforms.functional": types.ModuleType("torchvision.transforms.functional")}
    stand_ins["k_diffusion"].__path__ = [root]
    stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
    stand_ins["torchvision.transforms"].functional = stand_ins["torchvision.transforms.functional"]
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        loaded = {}
        for name in ("utils", "sampling"):
            spec = importlib.util.spec_from_file_location(f"k_diffusion.{name}", os.path.join(root, f"{name}.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded["sampling"]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        sys.modules.pop("k_diffusion.utils", None)
        sys.modules.pop("k_diffusion.sampling", None)


@pytest.fixture(scope="module")
def K():
    return _load_k_diffusion_sampling()


RING = get_mixture("ring")


def ring_denoiser(x, sigma):
    """The exact k-diffusion denoiser of the ring mixture, D = x + sigma^2 grad log p_sigma(x), in x's dtype."""
    s = sigma.double()
    return (x.double() + (s**2)[:, None] * RING.perturbed_score(x.double(), 1.0, s)).to(x.dtype)


class ConvDenoiser(torch.nn.Module):
    """A small random conv net as a k-diffusion denoiser with EDM's preconditioning (sigma_data = 1), so D stays
    O(1) at every sigma as a trained one's does: D = x / (1 + s^2) + s / sqrt(1 + s^2) net(x / sqrt(1 + s^2), log s)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(11)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 2, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)

    def forward(self, x, sigma):
        s = sigma.to(x.dtype)[:, None, None, None]
        h = torch.cat([x / torch.sqrt(1 + s**2), torch.log(s).expand(-1, 1, *x.shape[2:])], dim=1)
        return x / (1 + s**2) + s / torch.sqrt(1 + s**2) * self.conv2(torch.nn.functional.silu(self.conv1(h)))


CONV = ConvDenoiser()
DENOISERS = {"ring": (ring_denoiser, (64, 2)), "conv": (CONV, (3, 2, 8, 8))}
# (k-diffusion sampler, options): every deterministic sampler of fastsde.kdiffusion; eta = 0 makes the SDE ones
# deterministic (dpmpp_3m_sde at eta 0 is DPM-Solver++(3M)); euler_ancestral at eta 0 is Euler.
DETERMINISTIC = [("euler", {}), ("heun", {}), ("dpm_2", {}), ("dpmpp_2m", {}), ("dpmpp_2m_sde", {"eta": 0.0}),
                 ("dpmpp_3m_sde", {"eta": 0.0}), ("euler_ancestral", {"eta": 0.0})]
# The stochastic ones, each side given the same k_diffusion.sampling.BrownianTreeNoiseSampler.
STOCHASTIC = [("euler_ancestral", {}), ("dpmpp_2m_sde", {}), ("dpmpp_3m_sde", {}),
              ("dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.8})]


def _sigmas(K, schedule):
    return {"karras": lambda: K.get_sigmas_karras(12, 0.01, 10.0),
            "exponential": lambda: K.get_sigmas_exponential(12, 0.01, 10.0),
            "vp": lambda: K.get_sigmas_vp(12)}[schedule]()


def _start(shape, sigma_max, dtype=torch.float32):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma_max).to(dtype)


@pytest.mark.parametrize("schedule", ["karras", "exponential", "vp"])
def test_sigma_helpers_equal_k_diffusion(K, schedule):
    ours = {"karras": lambda: kdiffusion.get_sigmas_karras(12, 0.01, 10.0),
            "exponential": lambda: kdiffusion.get_sigmas_exponential(12, 0.01, 10.0),
            "vp": lambda: kdiffusion.get_sigmas_vp(12)}[schedule]()
    theirs = _sigmas(K, schedule)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)  # measured: bit-identical
    for n, lo, hi, rho in ((2, 0.002, 80.0, 7.0), (30, 0.03, 14.6, 5.0)):
        assert torch.equal(kdiffusion.get_sigmas_karras(n, lo, hi, rho), K.get_sigmas_karras(n, lo, hi, rho))


# The ring on every schedule; the conv net (slower) on Karras and VP sigmas.
GRIDS = [("ring", "karras"), ("ring", "exponential"), ("ring", "vp"), ("conv", "karras"), ("conv", "vp")]


@pytest.mark.parametrize("den,schedule", GRIDS, ids=[f"{d}-{s}" for d, s in GRIDS])
@pytest.mark.parametrize("name,options", DETERMINISTIC, ids=[n for n, _ in DETERMINISTIC])
def test_deterministic_samplers_match_k_diffusion(K, name, options, den, schedule):
    model, shape = DENOISERS[den]
    sigmas = _sigmas(K, schedule)
    x = _start(shape, sigmas[0].item())
    with torch.no_grad():
        want = getattr(K, f"sample_{name}")(model, x, sigmas, disable=True, **options)
        got = getattr(kdiffusion, f"sample_{name}")(model, x, sigmas, **options)
    assert_rounding_level(got, want, x)


@pytest.mark.parametrize("den", sorted(DENOISERS))
@pytest.mark.parametrize("name,options", STOCHASTIC, ids=[f"{n}{'-' + str(o) if o else ''}" for n, o in STOCHASTIC])
def test_stochastic_samplers_match_k_diffusion_on_the_same_noise(K, name, options, den):
    model, shape = DENOISERS[den]
    sigmas = K.get_sigmas_karras(12, 0.01, 10.0)
    x = _start(shape, 10.0)

    def noise():  # a fresh tree per side: the same seed and queries give the same increments
        return K.BrownianTreeNoiseSampler(x, sigmas[-2], sigmas[0], seed=5)

    with torch.no_grad():
        want = getattr(K, f"sample_{name}")(model, x, sigmas, disable=True, noise_sampler=noise(), **options)
        got = getattr(kdiffusion, f"sample_{name}")(model, x, sigmas, noise_sampler=noise(), **options)
    assert_rounding_level(got, want, x)
    with torch.no_grad():  # and the noise matters: FSN1 noise instead gives another sample
        other = getattr(kdiffusion, f"sample_{name}")(model, x, sigmas, seed=1, **options)
    assert (other - want).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2"])
def test_churn_matches_k_diffusion_on_the_same_noise(K, name):
    """EDM's churn (s_churn > 0, s_tmin = 0: every step churns, the last one, to sigma 0, too). k-diffusion draws
    the churn noise with torch.randn_like at each step; fastsde's noise_sampler is asked once per churning step, in
    the same order, so both sides see the same draws under the same torch seed. Exact in float64 on the ring; on
    the conv net in float32 at rounding level. (On the ring in float32, Heun's late steps amplify rounding to ~2e-4:
    the ring's denoiser is stiff at sigma ~ 0.01 when churn noise leaves points between modes; float64 agrees to
    1e-15, so that is rounding, not the algorithm.)"""
    sigmas = K.get_sigmas_karras(12, 0.01, 10.0)
    for model, x, check in ((ring_denoiser, _start((64, 2), 10.0, torch.float64), "exact"),
                            (CONV, _start((3, 2, 8, 8), 10.0), "float32")):
        s = sigmas.to(x.dtype)
        torch.manual_seed(3)
        with torch.no_grad():
            want = getattr(K, f"sample_{name}")(model, x, s, disable=True, s_churn=2.0)
        torch.manual_seed(3)
        with torch.no_grad():
            got = getattr(kdiffusion, f"sample_{name}")(model, x, s, s_churn=2.0, seed=0,
                                                        noise_sampler=lambda a, b: torch.randn_like(x))
        if check == "exact":
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        else:
            assert_rounding_level(got, want, x)


# ------------------------------------------------------------------------------------------------------- diffusers
@pytest.fixture(scope="module")
def D():
    why = _missing("diffusers")
    if why:
        pytest.skip(why)
    import diffusers
    return diffusers


class SkipUNet(torch.nn.Module):
    """A tiny random diffusers UNet2DModel (no attention) with an identity skip on its output, so an epsilon
    model's data predictions stay O(1) as a trained model's do (the raw random net's reach ~500 at t = 999, and
    every comparison would be relative to that). Both sides call this same module, as unet(x, t).sample."""

    def __init__(self, D):
        super().__init__()
        torch.manual_seed(0)
        self.unet = D.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                  block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()

    def forward(self, x, t):
        return types.SimpleNamespace(sample=x + 0.1 * self.unet(x, t).sample)


# DDPM linear betas, the configs from_diffusers maps onto fastsde's discrete VPSDE.
BASE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
# (id, fastsde solver, diffusers scheduler class, config, K inference steps, fastsde grid): fastsde runs on the
# scheduler's own integer timesteps (times_of_timesteps) and, with final_sigmas_type "zero" / set_alpha_to_one
# (the step to alpha = 1), its final denoising D(x, t_last) is the scheduler's last step; with "sigma_min" the
# scheduler's last step goes to table row 0, which fastsde takes as one more grid time and no denoising.
# Settings that correspond: DDIM eta 0 = fastsde ddim; dpmsolver++ order 2 midpoint = dpmpp_2m; dpmsolver++ order 3
# with solver_type "heun" (its 2nd-order warm-up step is the exponential-integrator "heun" form, as in k-diffusion's
# dpmpp_3m_sde) = dpmpp_3m; UniPC bh2 order 2 with the corrector = unipc; EulerDiscrete = euler (integer timesteps:
# "leading"/"trailing" spacing; "linspace" interpolates sigma between table rows at fractional timesteps, which a
# discrete-label fastsde model has no row for). use_karras_sigmas=False, thresholding off, clip_sample off.
DPMPP = dict(algorithm_type="dpmsolver++", euler_at_final=False, final_sigmas_type="zero", use_karras_sigmas=False,
             thresholding=False)
DIFFUSERS = [
    ("ddim-eps-leading", "ddim", "DDIMScheduler",
     dict(clip_sample=False, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading"), 10, "denoise"),
    ("ddim-v-trailing", "ddim", "DDIMScheduler",
     dict(clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing", prediction_type="v_prediction"), 10,
     "denoise"),
    ("ddim-x0-leading", "ddim", "DDIMScheduler",
     dict(clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading", prediction_type="sample"), 10,
     "denoise"),
    ("dpmpp2m-linspace", "dpmpp_2m", "DPMSolverMultistepScheduler",
     dict(DPMPP, solver_order=2, solver_type="midpoint", lower_order_final=True, timestep_spacing="linspace"), 10,
     "denoise"),
    ("dpmpp2m-trailing", "dpmpp_2m", "DPMSolverMultistepScheduler",
     dict(DPMPP, solver_order=2, solver_type="midpoint", lower_order_final=True, timestep_spacing="trailing"), 10,
     "denoise"),
    # lower_order_final=True drops diffusers' second-to-last step to order 2 when K < 15; fastsde's dpmpp_3m (like
    # k-diffusion's) keeps order 3 there. K = 10 with lower_order_final=False, and K = 16, match.
    ("dpmpp3m-K10", "dpmpp_3m", "DPMSolverMultistepScheduler",
     dict(DPMPP, solver_order=3, solver_type="heun", lower_order_final=False), 10, "denoise"),
    ("dpmpp3m-K16", "dpmpp_3m", "DPMSolverMultistepScheduler",
     dict(DPMPP, solver_order=3, solver_type="heun", lower_order_final=True), 16, "denoise"),
    # UniPC: fastsde follows the UniPC authors' code (the last step is order 1 only with fewer than 10 steps);
    # diffusers always makes its last step order 1. With final_sigmas_type "zero" that last step is fastsde's
    # denoising, so they match from 10 fastsde steps (K = 11) on; with "sigma_min", below 10 steps (K = 8).
    ("unipc-zero-K11", "unipc", "UniPCMultistepScheduler",
     dict(solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, disable_corrector=[],
          final_sigmas_type="zero", use_karras_sigmas=False), 11, "denoise"),
    ("unipc-sigma_min-K8", "unipc", "UniPCMultistepScheduler",
     dict(solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True, disable_corrector=[],
          final_sigmas_type="sigma_min", use_karras_sigmas=False), 8, "row0"),
    ("euler-trailing", "euler", "EulerDiscreteScheduler",
     dict(timestep_spacing="trailing", final_sigmas_type="zero", use_karras_sigmas=False, interpolation_type="linear"),
     10, "denoise"),
    ("euler-leading", "euler", "EulerDiscreteScheduler",
     dict(timestep_spacing="leading", steps_offset=1, final_sigmas_type="zero", use_karras_sigmas=False,
          interpolation_type="linear"), 10, "denoise"),
]


def _run_diffusers(net, scheduler, steps, z):
    """diffusers' own loop: x_T = z * init_noise_sigma, then scheduler.step on unet(scale_model_input(x), t)."""
    scheduler.set_timesteps(steps)
    x = z * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(net(scheduler.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


def _run_fastsde(net, scheduler, solver, z, end):
    model, sde, continuous = from_diffusers(net, scheduler.config)
    timesteps = [int(t) for t in scheduler.timesteps] + ([0] if end == "row0" else [])
    times = times_of_timesteps(sde, timesteps)
    start = z
    if type(scheduler).__name__ == "EulerDiscreteScheduler":
        # Its state is k-diffusion's x~ = x / alpha, from x~_T = z init_noise_sigma; fastsde's state is x.
        start = z * scheduler.init_noise_sigma * sde.sqrt_alphas_cumprod[timesteps[0]].item()
    sampler = get_sampler(solver, sde, z.shape, len(times) - 1, continuous=continuous, grid=times,
                          denoise=end == "denoise", seed=0)
    return sampler(model, start)[0]


@pytest.fixture(scope="module")
def net(D):
    return SkipUNet(D)


@pytest.mark.parametrize("case", DIFFUSERS, ids=[c[0] for c in DIFFUSERS])
def test_solvers_match_diffusers_schedulers(D, net, case):
    _, solver, cls, config, steps, end = case
    scheduler = getattr(D, cls)(**BASE, **config)
    z = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    want = _run_diffusers(net, scheduler, steps, z)
    got = _run_fastsde(net, scheduler, solver, z, end)
    assert_rounding_level(got, want, z)


@pytest.mark.parametrize("solver,cls,config,steps", [
    ("dpmpp_3m", "DPMSolverMultistepScheduler", dict(DPMPP, solver_order=3, solver_type="heun",
                                                     lower_order_final=True), 10),
    ("unipc", "UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2", final_sigmas_type="zero"), 8)],
    ids=["dpmpp3m-lower_order_final-K10", "unipc-zero-K8"])
def test_documented_differences_from_diffusers_are_real(D, net, solver, cls, config, steps):
    """The two configurations the table above excludes do differ (by an order choice, far above rounding): the
    exclusions document algorithm choices, not a loosened check."""
    scheduler = getattr(D, cls)(**BASE, **config)
    z = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    want = _run_diffusers(net, scheduler, steps, z)
    got = _run_fastsde(net, scheduler, solver, z, "denoise")
    assert (got - want).abs().max() > 1000 * TOL_ULPS * 2.0**-23 * want.abs().max()


# ---------------------------------------------------------------------------------------- the explicit-grid option
def test_times_of_timesteps_hit_the_integer_rows():
    sde = sde_lib.VPSDE(0.1, 20.0, 1000)
    t = times_of_timesteps(sde, torch.arange(1000))
    assert torch.equal((t * 999).floor(), torch.arange(1000, dtype=torch.float64))
    assert torch.equal(t.float() * 999, torch.arange(1000, dtype=torch.float32))
    with pytest.raises(ValueError, match="timesteps must be integers"):
        times_of_timesteps(sde, [999, 500.5])
    with pytest.raises(ValueError, match="discrete VPSDE"):
        times_of_timesteps(sde_lib.VESDE(0.01, 50.0, 1000), [999])


def test_explicit_grid_is_checked():
    sde = sde_lib.VPSDE(0.1, 20.0, 1000)
    with pytest.raises(ValueError, match="steps \\+ 1 = 3 times"):
        get_sampler("ddim", sde, (2, 2), 2, grid=[1.0, 0.5])
    with pytest.raises(ValueError, match="strictly decrease"):
        get_sampler("ddim", sde, (2, 2), 2, grid=[1.0, 0.5, 0.7])
    with pytest.raises(ValueError, match="lie in \\[0, T=1"):
        get_sampler("ddim", sde, (2, 2), 1, grid=[1.5, 0.5])
    with pytest.raises(ValueError, match="adaptive solver"):
        get_sampler("adaptive", sde, (2, 2), 1, grid=[1.0, 0.5])
    # an explicit grid equal to a named one gives the same program
    named = get_sampler("dpmpp_2m", sde, (2, 2), 4, grid="logsnr", eps=1e-3)
    from fastsde.solvers.grid import time_grid
    explicit = get_sampler("dpmpp_2m", sde, (2, 2), 4, grid=time_grid(sde, 4, 1e-3, "logsnr"))
    assert named.program.code == explicit.program.code
    assert math.isfinite(explicit.program.code[-1].point.t)
