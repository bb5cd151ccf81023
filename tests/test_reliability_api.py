"""The library API's hostile-input reproducers (solvers, SDEs, fastsde.kdiffusion, the diffusers adapter, the PC
reference loop, the likelihood), one test each: every bad argument is one clear ValueError/TypeError naming it,
raised before any work; a non-finite model output is a NonFiniteError, never NaN returned with success; tiny sigmas
give k-diffusion's answer. docs/reliability.md, "API surfaces"."""
import math
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from fastsde import kdiffusion, solvers
from fastsde import sde as sde_lib
from fastsde.compat.diffusers import from_diffusers
from fastsde.likelihood import get_likelihood_fn
from fastsde.models.analytic import AnalyticScoreModel, get_mixture
from fastsde.sampling.guard import NonFiniteError

pytestmark = pytest.mark.usefixtures("one_thread")

RING = get_mixture("ring")
KD_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"]


def ring_denoiser(x, sigma):
    s = sigma.double()
    return (x.double() + (s**2)[:, None] * RING.perturbed_score(x.double(), 1.0, s)).to(x.dtype)


def nan_denoiser(x, sigma):
    return torch.full_like(x, float("nan"))


class NaNModel(torch.nn.Module):
    def forward(self, x, labels):
        return torch.full_like(x, float("nan"))


class CountingNaNModel(NaNModel):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, labels):
        self.calls += 1
        return super().forward(x, labels)


class NoneModel(torch.nn.Module):
    def forward(self, x, labels):
        return None


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- 1. sizes bounded
@pytest.mark.parametrize("cls", [sde_lib.VPSDE, sde_lib.subVPSDE])
def test_sde_with_1e10_steps_is_refused_before_any_table(cls):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"N \(number of discretization steps\) must be >= 1 and <= 10,000,000") as e:
        cls(0.1, 20, 10**10)
    assert "10,000,000,000" in _one_line(e)
    assert time.perf_counter() - t0 < 5  # not a timing claim: a 40 GB allocation would not return at all


def test_vesde_n_bounds_and_integers():
    with pytest.raises(ValueError, match="must be >= 1 and <= 10,000,000"):
        sde_lib.VESDE(0.01, 50, 10**8)
    with pytest.raises(ValueError, match="must be an integer, got 3.7"):
        sde_lib.VESDE(0.01, 50, 3.7)
    with pytest.raises(TypeError, match="must be an int, got bool"):
        sde_lib.VPSDE(0.1, 20, True)
    assert sde_lib.VPSDE(0.1, 20, 1000.0).N == 1000  # an integral float from a JSON config is an integer


@pytest.mark.parametrize("kwargs,match", [
    (dict(sigma_min=0.01, sigma_max=float("inf")), "sigma_max must be a finite number > 0, got inf"),
    (dict(sigma_min=float("nan"), sigma_max=50.0), "sigma_min must be a finite number > 0, got nan"),
    (dict(sigma_min=-1.0, sigma_max=50.0), "sigma_min must be a finite number > 0"),
])
def test_vesde_parameters_finite(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sde_lib.VESDE(**kwargs)


def test_vpsde_beta_max_inf_is_refused():
    with pytest.raises(ValueError, match="beta_max must be a finite number >= 0, got inf"):
        sde_lib.VPSDE(0.1, float("inf"))


def test_from_diffusers_1e10_timesteps_is_refused():
    config = {"num_train_timesteps": 1e10, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear"}
    with pytest.raises(ValueError, match=r"num_train_timesteps must be >= 1 and <= 10,000,000"):
        from_diffusers(lambda x, t: x, config)


@pytest.mark.parametrize("name", ["ddim", "euler", "dpmpp_2m", "unipc"])
def test_solver_steps_1e9_is_refused(name):
    with pytest.raises(ValueError, match=r"steps must be >= 1 and <= 100,000") as e:
        solvers.get_sampler(name, sde_lib.VPSDE(), (2, 2), 10**9)
    _one_line(e)


@pytest.mark.parametrize("steps,exc", [(0, ValueError), (4.5, ValueError), (True, TypeError), ("10", TypeError)])
def test_solver_steps_kinds(steps, exc):
    with pytest.raises(exc, match="steps must be"):
        solvers.get_sampler("ddim", sde_lib.VPSDE(), (2, 2), steps)


# ---------------------------------------------------------------------------------------------- 2. adaptive
def test_adaptive_stops_at_the_first_nonfinite_attempt():
    model = CountingNaNModel()
    sampler = solvers.get_sampler("adaptive", sde_lib.VPSDE(), (2, 2), 1, seed=0)
    with pytest.raises(NonFiniteError, match="adaptive solver's state became non-finite at attempt 1") as e:
        sampler(model)
    _one_line(e)
    assert model.calls == 2  # one attempt (two model calls), not 20,000


def test_adaptive_eval_budget():
    class Zero(torch.nn.Module):
        def forward(self, x, labels):
            return torch.zeros_like(x)

    sampler = solvers.get_sampler("adaptive", sde_lib.VPSDE(), (2, 2), 1, seed=0, max_evals=6, h_init=1e-4)
    with pytest.raises(RuntimeError, match="max_evals=6 model calls spent"):
        sampler(Zero())
    with pytest.raises(ValueError, match="max_evals must be a positive integer"):
        solvers.get_sampler("adaptive", sde_lib.VPSDE(), (2, 2), 1, max_evals=0.5)
    assert solvers.get_solver("adaptive").defaults["max_evals"] == 20000


# ---------------------------------------------------------------------------------------------- 3. reference PC loop
def test_reference_pc_loop_raises_on_nan_like_the_fused_loop():
    from fastsde.compat.score_sde import sampling as score_sde_sampling

    sde = sde_lib.VPSDE(N=10)
    messages = []
    for backend in ("reference", "auto"):
        sampler = score_sde_sampling.get_pc_sampler(sde, (3, 2), "euler_maruyama", "none", lambda v: v, 0.16,
                                                    device="cpu", backend=backend)
        with pytest.raises(NonFiniteError) as e:
            sampler(NaNModel())
        messages.append(_one_line(e))
    assert messages[0] == messages[1] == ("the sampler state became non-finite during the 10 steps: 3 of 3 samples "
                                          "hold NaN or inf (the model returned non-finite values or the step sizes "
                                          "diverged)")
    # score_sde's own behaviour, on request: the NaN samples come back
    x, _ = score_sde_sampling.get_pc_sampler(sde, (3, 2), "euler_maruyama", "none", lambda v: v, 0.16, device="cpu",
                                             check_finite=False)(NaNModel())
    assert torch.isnan(x).all()
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        score_sde_sampling.get_pc_sampler(sde, (3, 2), "euler_maruyama", "none", lambda v: v, 0.16, device="cpu",
                                          check_finite=1)


# ---------------------------------------------------------------------------------------------- 4, 5. kdiffusion
@pytest.mark.parametrize("name", KD_SAMPLERS)
def test_kdiffusion_nan_denoiser_and_nan_start(name):
    fn = getattr(kdiffusion, f"sample_{name}")
    sigmas = kdiffusion.get_sigmas_karras(4, 0.1, 10.0)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)) * 10
    with pytest.raises(NonFiniteError, match=f"sample_{name}'s sample became non-finite") as e:
        fn(nan_denoiser, x, sigmas, seed=0)
    _one_line(e)
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x \(the start\) must be finite, got 1 of 4 samples"):
        fn(ring_denoiser, bad, sigmas, seed=0)


@pytest.mark.parametrize("name", KD_SAMPLERS)
@pytest.mark.parametrize("sigmas,match", [
    ([10.0, 1.0, -1.0], r"sigmas must be > 0 \(only the last may be 0\), got -1 at index 2"),
    ([math.inf, 1.0, 0.1, 0.0], "sigmas must be finite, got inf at index 0"),
    ([10.0, math.nan, 0.0], "sigmas must be finite, got nan at index 1"),
    ([10.0, 0.0, 0.0], r"sigmas must be > 0 \(only the last may be 0\), got 0 at index 1"),
    ([1.0, 2.0, 0.0], "sigmas must strictly decrease, got 1 then 2 at index 1"),
    ([1.0, 1.0, 0.0], "sigmas must strictly decrease"),
    ([1.0], "sigmas must be 1-D with at least 2 entries"),
    ([[1.0, 0.0]], "sigmas must be 1-D with at least 2 entries"),
])
def test_kdiffusion_sigmas_are_validated(name, sigmas, match):
    fn = getattr(kdiffusion, f"sample_{name}")
    with pytest.raises(ValueError, match=match) as e:
        fn(ring_denoiser, torch.zeros(2, 2), torch.tensor(sigmas, dtype=torch.float64))
    _one_line(e)


def test_kdiffusion_sigma_beyond_the_dtype_is_one_clear_line():
    """A float64 sigma of 1e300 beside a float32 x: 'value cannot be converted to type float without overflow'
    (torch.full of the model's sigma argument) before; now a ValueError naming sigmas and the dtype."""
    with pytest.raises(ValueError, match=r"sigmas must be representable in x's dtype torch.float32") as e:
        kdiffusion.sample_euler(ring_denoiser, torch.zeros(2, 2), torch.tensor([1e300, 1.0, 0.0], dtype=torch.float64))
    _one_line(e)


def test_kdiffusion_argument_kinds():
    x, sigmas = torch.zeros(2, 2), kdiffusion.get_sigmas_karras(3, 0.1, 10.0)
    with pytest.raises(TypeError, match="sigmas must be real numbers"):
        kdiffusion.sample_euler(ring_denoiser, x, torch.tensor([True, False]))
    with pytest.raises(TypeError, match="sigmas must be a 1-D sequence or tensor of numbers"):
        kdiffusion.sample_euler(ring_denoiser, x, "10, 1, 0")
    with pytest.raises(TypeError, match="model must be callable"):
        kdiffusion.sample_euler(None, x, sigmas)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        kdiffusion.sample_euler(ring_denoiser, x.long(), sigmas)
    with pytest.raises(TypeError, match="extra_args must be a dict"):
        kdiffusion.sample_euler(ring_denoiser, x, sigmas, extra_args=[1])


def _k_diffusion():
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    try:
        from test_real_packages import _load_k_diffusion_sampling
    finally:
        sys.path.pop(0)
    return _load_k_diffusion_sampling()


@pytest.mark.parametrize("name,sigmas,start", [
    ("heun", [10.0, 1e-30, 0.0], 10.0),
    ("dpm_2", [1.0, 1e-44, 0.0], 1.0),
    ("heun", [5.0, 1e-20, 0.0], 3.0),
    ("dpm_2", [10.0, 1e-30, 0.0], -4.0),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_last_sigma_matches_k_diffusion(name, sigmas, start, dtype):
    """The step's second model call at a tiny sigma: its slope (x - D) / sigma is formed from x - D (as k-diffusion
    does), not expanded through D with a coefficient 1/sigma that multiplied x's rounding (3.5e22 where k-diffusion
    gives 11)."""
    K = _k_diffusion()
    x = (torch.full((1, 2), start, dtype=torch.float64)
         + torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)).to(dtype)
    s = torch.tensor(sigmas, dtype=dtype)
    with torch.no_grad():
        want = getattr(K, f"sample_{name}")(ring_denoiser, x, s, disable=True)
    got = getattr(kdiffusion, f"sample_{name}")(ring_denoiser, x, s)
    assert torch.isfinite(want).all() and want.abs().max() < 100
    torch.testing.assert_close(got, want, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-5)


# ---------------------------------------------------------------------------------------------- 6. grid parameters
@pytest.mark.parametrize("name", solvers.solver_names())
@pytest.mark.parametrize("rho", [-1.0, 0.0, math.inf, math.nan])
def test_karras_rho_is_refused_by_every_solver(name, rho):
    with pytest.raises(ValueError, match="rho must be a finite number > 0") as e:
        solvers.get_sampler(name, sde_lib.VPSDE(), (2, 2), 5, grid="karras", rho=rho)
    _one_line(e)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: kdiffusion.get_sigmas_karras(5, 10.0, 1.0), ValueError, "sigma_min < sigma_max"),
    (lambda: kdiffusion.get_sigmas_karras(5, 0.0, 1.0), ValueError, "sigma_min must be a finite number > 0"),
    (lambda: kdiffusion.get_sigmas_karras(5, 0.1, math.inf), ValueError, "sigma_max must be a finite number > 0"),
    (lambda: kdiffusion.get_sigmas_karras(5, 0.1, 10.0, rho=-1.0), ValueError, "rho must be a finite number > 0"),
    (lambda: kdiffusion.get_sigmas_karras(0, 0.1, 10.0), ValueError, "n must be >= 1"),
    (lambda: kdiffusion.get_sigmas_exponential(5, 1.0, 0.5), ValueError, "sigma_min < sigma_max"),
    (lambda: kdiffusion.get_sigmas_exponential(2.5, 0.1, 1.0), ValueError, "n must be an integer"),
    (lambda: kdiffusion.get_sigmas_vp(5, beta_d=math.nan), ValueError, "beta_d must be a finite number"),
    (lambda: kdiffusion.get_sigmas_vp(5, eps_s=0.0), ValueError, "eps_s must be a finite number > 0"),
    (lambda: sde_lib.VESDE(50.0, 0.01), ValueError, "need 0 < sigma_min < sigma_max"),
])
def test_sigma_helpers_and_sde_grid_parameters(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------------------------- 7. diffusers configs
def test_from_diffusers_ve_refuses_v_prediction():
    config = {"sigma_min": 0.01, "sigma_max": 50.0, "num_train_timesteps": 100, "prediction_type": "v_prediction"}
    with pytest.raises(ValueError, match="prediction_type 'v_prediction' is not supported for a score-SDE-VE"):
        from_diffusers(lambda x, t: x, config)
    config["prediction_type"] = "epsilon"  # absent or epsilon: the score UNet of ScoreSdeVeScheduler
    assert from_diffusers(lambda x, t: x, config)[2] is True


@pytest.mark.parametrize("config,exc,match", [
    ({"num_train_timesteps": 3.7, "beta_start": 1e-4, "beta_end": 0.02}, ValueError,
     "num_train_timesteps must be an integer, got 3.7"),
    ({"num_train_timesteps": "1000", "beta_start": 1e-4, "beta_end": 0.02}, TypeError, "must be an int, got str"),
    ({"beta_start": 1e-4, "beta_end": 0.02, "prediction_type": "x0"}, ValueError, "prediction_type must be one of"),
    ({"beta_start": 0.02, "beta_end": 1e-4}, ValueError, "beta_start <= beta_end < 1"),
    ({"beta_start": 1e-4, "beta_end": 1.5}, ValueError, "beta_start <= beta_end < 1"),
    ({"beta_start": 1e-4, "beta_end": math.nan}, ValueError, "beta_end must be a finite number"),
    ({"beta_start": "a", "beta_end": 0.02}, TypeError, "beta_start must be a real number"),
    ({"sigma_min": 10.0, "sigma_max": 1.0}, ValueError, "sigma_min < sigma_max"),
    ({"sigma_min": 0.01, "sigma_max": math.inf}, ValueError, "sigma_max must be a finite number"),
    (None, TypeError, "scheduler_config must be a diffusers scheduler"),
])
def test_from_diffusers_configs(config, exc, match):
    with pytest.raises(exc, match=match) as e:
        from_diffusers(lambda x, t: x, config)
    _one_line(e)


def test_from_diffusers_keeps_the_prediction_type_of_vp_configs():
    model, sde, continuous = from_diffusers(lambda x, t: x, SimpleNamespace(
        config={"beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000.0, "prediction_type": "sample"}))
    assert model.prediction_type == "sample" and sde.N == 1000 and not continuous


# ---------------------------------------------------------------------------------------------- 8. raw messages
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ve_sigma_max_1e300_is_one_clear_line(dtype):
    sde = sde_lib.VESDE(0.01, 1e300)
    with pytest.raises(ValueError, match="dpmpp_2m solver's coefficients at t = 1 reach inf") as e:
        solvers.get_sampler("dpmpp_2m", sde, (2, 2), 5, dtype=dtype)
    assert "sigma_max" in _one_line(e)


def test_ve_sigma_max_beyond_float32_is_refused_before_sampling():
    sde = sde_lib.VESDE(0.01, 1e30)
    with pytest.raises(ValueError, match=r"reach 1e\+60, beyond torch.float32's range"):
        solvers.get_sampler("dpmpp_2m", sde, (2, 2), 5)
    x, _ = solvers.get_sampler("dpmpp_2m", sde, (2, 2), 5, dtype=torch.float64, seed=0)(AnalyticScoreModel(RING,
                                                                                                          sde))
    assert torch.isfinite(x).all()


def test_explicit_grid_ending_at_zero():
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match="the time grid reaches t = 0, where the model's noise level is not") as e:
        solvers.get_sampler("dpmpp_2m", sde, (2, 2), 2, grid=[1.0, 0.5, 0.0])
    _one_line(e)
    # discrete labels: t = 0 is the first DDPM table row (sigma = sqrt(beta_0) > 0): allowed, as diffusers' timesteps
    x, _ = solvers.get_sampler("dpmpp_2m", sde, (2, 2), 2, grid=[1.0, 0.5, 0.0], continuous=False, seed=0)(
        AnalyticScoreModel(RING, sde, continuous=False))
    assert torch.isfinite(x).all()


def test_plain_function_model_equals_the_module():
    sde = sde_lib.VPSDE()
    module = AnalyticScoreModel(RING, sde)
    sampler = solvers.get_sampler("dpmpp_2m", sde, (4, 2), 6, seed=3)
    want, _ = sampler(module)
    got, _ = sampler(lambda x, labels: module(x, labels))
    assert torch.equal(got, want)
    with pytest.raises(TypeError, match="model must be callable"):
        sampler("model.safetensors")


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_plain_function_model_in_the_pc_loops(backend):
    from fastsde.sampling import get_pc_sampler

    sde = sde_lib.VPSDE(N=20)
    module = AnalyticScoreModel(RING, sde)
    sampler = get_pc_sampler(sde, (3, 2), "euler_maruyama", "none", lambda v: v, 0.16, seed=1, backend=backend)
    want, _ = sampler(module)
    got, _ = sampler(lambda x, labels: module(x, labels))  # was: 'function' object has no attribute 'train'
    assert torch.equal(got, want)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module or a function"):
        sampler(42)


@pytest.mark.parametrize("name", ["euler", "heun", "adaptive"])
def test_model_returning_none(name):
    sampler = solvers.get_sampler(name, sde_lib.VPSDE(), (2, 2), 2, seed=0)
    with pytest.raises(TypeError, match="the model output must be a torch.Tensor") as e:
        sampler(NoneModel())
    assert "NoneType" in _one_line(e)


def test_model_returning_none_in_the_score_fn_loops():
    from fastsde.sampling import get_ode_sampler, get_pc_sampler

    sde = sde_lib.VPSDE(N=5)
    with pytest.raises(TypeError, match="the model output must be a torch.Tensor"):
        get_pc_sampler(sde, (2, 2), "euler_maruyama", "none", lambda v: v, 0.16, backend="reference")(NoneModel())
    with pytest.raises(TypeError, match="the model output must be a torch.Tensor"):
        get_ode_sampler(sde, (2, 2), lambda v: v)(NoneModel())


# ---------------------------------------------------------------------------------------------- 9. likelihood
def test_likelihood_on_the_ring_analytic_model_is_exact():
    """AnalyticScoreModel's isotropic mixtures used an in-place fast path autograd could not differentiate. On the
    ring (D = 2) the two Rademacher probes (1, 1) and (1, -1) average e^T J e to tr J exactly (the off-diagonal
    terms cancel; the trajectory does not depend on the probe), so their mean bpd is the exact one up to the ODE
    tolerance and the prior mismatch (beta_max = 40: exp(-10) of the data's mean left at T)."""
    sde = sde_lib.VPSDE(0.1, 40.0)
    model = AnalyticScoreModel(RING, sde, continuous=True)
    x = RING.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fn = get_likelihood_fn(sde, lambda v: v, dtype=torch.float64, rtol=1e-7, atol=1e-7)
    bpds = []
    for e in ([1.0, 1.0], [1.0, -1.0]):
        bpd, z, _ = fn(model, x, probe=torch.tensor(e, dtype=torch.float64).expand(8, 2))
        assert torch.isfinite(bpd).all()
        bpds.append(bpd.double())
    D, eps = 2, 1e-5
    m, s = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), torch.tensor([eps], dtype=torch.float64))
    exact = -RING.perturbed_log_prob(x, float(m[0, 0]), float(s[0])) / (D * math.log(2)) + 8.0
    err = ((bpds[0] + bpds[1]) / 2 - exact).abs().max()
    assert err < 0.01, err


# ---------------------------------------------------------------------------------------------- 10. tolerances
@pytest.mark.parametrize("kwargs,match", [
    (dict(rtol=1e-300, atol=1e-300), r"rtol must be >= 1e-12 for torch.float64"),
    (dict(rtol=1e-5, atol=1e-300), r"atol must be >= 1e-12 for torch.float64"),
    (dict(rtol=1e-9, dtype=torch.float32), r"rtol must be >= 1.19e-07 for torch.float32"),
])
def test_ode_tolerance_floor(kwargs, match):
    from fastsde.sampling import get_ode_sampler

    kwargs.setdefault("dtype", torch.float64)
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match=match) as e:
        get_likelihood_fn(sde, lambda v: v, **kwargs)
    _one_line(e)
    with pytest.raises(ValueError, match=match):
        get_ode_sampler(sde, (2, 2), lambda v: v, **kwargs)


# ---------------------------------------------------------------------------------------------- 11. fuzz findings
def test_vp_with_no_noise_is_refused():
    """tests/test_fuzz_api.py: VPSDE(0, 0) has sigma(t) = 0 at every t; every solver divided by it (NaN samples)."""
    for cls in (sde_lib.VPSDE, sde_lib.subVPSDE):
        with pytest.raises(ValueError, match="beta_max > 0, got beta_min=0.0, beta_max=0.0"):
            cls(0.0, 0.0)


def test_adaptive_discrete_vp_with_zero_first_beta_is_refused():
    """tests/test_fuzz_api.py: VPSDE(0, 5) under discrete labels has sigma = sqrt(1 - alphas_cumprod[0]) = 0 on the
    first table row, which the adaptive solver's t near eps indexes (-1/sigma = inf, a NaN state)."""
    sde = sde_lib.VPSDE(0.0, 5.0)
    with pytest.raises(ValueError, match="the time grid reaches t = 0.001, where the model's noise level is not"):
        solvers.get_sampler("adaptive", sde, (3, 2), 1, continuous=False)
    x, _ = solvers.get_sampler("adaptive", sde, (3, 2), 1, continuous=True, seed=0)(AnalyticScoreModel(RING, sde))
    assert torch.isfinite(x).all()


def test_discrete_labels_midpoint_past_t_is_the_last_row():
    """tests/test_fuzz_api.py: dpm_2 on a coarse discrete VP (N = 50) put its first midpoint past T (the table-snapped
    start is below the continuous log-SNR at T): IndexError 'index 50 is out of bounds'. It is the last row now,
    and the sample equals the reference backend's."""
    sde = sde_lib.VPSDE(1.0, 11.0, 50)
    model = AnalyticScoreModel(RING, sde, continuous=False)
    args = dict(grid="karras", rho=1.0, continuous=False, seed=0, dtype=torch.float64)
    got, _ = solvers.get_sampler("dpm_2", sde, (3, 2), 6, **args)(model)
    want, _ = solvers.get_sampler("dpm_2", sde, (3, 2), 6, backend="reference", **args)(model)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name,steps", [("dpm_solver_2", 5), ("dpm_solver_3", 4)])
def test_singlestep_stage_on_a_table_row_of_its_start(name, steps):
    """tests/test_fuzz_api.py: with discrete labels a singlestep solver's stage snapped onto its start's row
    (r1 = 0): ZeroDivisionError. Now one line naming the step."""
    with pytest.raises(ValueError, match="has an intermediate point on the same noise level as its ends") as e:
        solvers.get_sampler(name, sde_lib.VPSDE(1.0, 5.0, 200), (3, 2), steps, continuous=False)
    _one_line(e)


def test_euler_ancestral_huge_sigma_does_not_overflow_the_host_math():
    """tests/test_fuzz_api.py: sigma_up squared sigma~ = 1e300 on the host (OverflowError). Written without squares
    it is finite; the k-diffusion sample on [1e300, 1] with an O(1) denoiser is the Euler step's."""
    x = torch.randn(3, 2, dtype=torch.float64)

    def constant(v, sigma):
        return torch.zeros_like(v)

    got = kdiffusion.sample_euler_ancestral(constant, x, torch.tensor([1e300, 1.0], dtype=torch.float64), eta=0.0)
    torch.testing.assert_close(got, x * 1e-300, rtol=1e-12, atol=0)  # x + (1 - 1e300) (x - 0) / 1e300


@pytest.mark.parametrize("rho", [1e-300, 1e-5])
def test_karras_rho_whose_power_overflows_is_one_clear_line(rho):
    """A tiny rho makes sigma^(1/rho) overflow float64 (it raised a raw OverflowError): a ValueError naming rho."""
    from fastsde.models import analytic

    sde = sde_lib.VESDE(sigma_max=5.0, N=10)
    model = analytic.AnalyticScoreModel(analytic.get_mixture("ring"), sde, continuous=True)
    with pytest.raises(ValueError, match=r"rho must keep sigma~\^\(1/rho\) within float64 .* got rho="):
        solvers.get_sampler("dpmpp_2m", sde, (4, 2), 5, seed=0, grid="karras", rho=rho)(model)


@pytest.mark.parametrize("rho", [1e17, 1e300])
def test_karras_rho_that_collapses_the_grid_names_rho(rho):
    """A huge rho made the grid's log-SNR repeat, and the message advised fewer steps for discrete labels."""
    with pytest.raises(ValueError, match=r"rho=.* collapses the Karras grid"):
        solvers.get_sampler("euler", sde_lib.VPSDE(), (4, 2), 5, grid="karras", rho=rho)
