"""Property-based fuzz of the library API surfaces (hypothesis): the few-step solvers' get_sampler arguments,
fastsde.kdiffusion's sigmas and samplers, and fastsde.compat.diffusers' scheduler configs. Every case either gives
a finite result equal to a reference (the solver on the reference backend in float64; the installed k-diffusion;
diffusers' own scheduler tables) or raises a clear ValueError/TypeError: one line, naming the argument. Never
another exception type, never NaN. Deterministic (derandomized); the counts go to docs/reliability.md.
"""
import collections
import math
import os
import sys
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastsde import kdiffusion, solvers  # noqa: E402
from fastsde import sde as sde_lib  # noqa: E402
from fastsde.compat.diffusers import from_diffusers  # noqa: E402
from fastsde.models.analytic import AnalyticScoreModel, get_mixture  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = int(os.environ.get("FASTSDE_FUZZ_API_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck), print_blob=True)
STATS = collections.Counter()  # (suite, outcome) -> cases, printed by test_zz_report
CLEAR = (ValueError, TypeError)
RING = get_mixture("ring")

NUMBERS = st.one_of(st.floats(-10, 100), st.sampled_from([0.0, -1.0, 1e-30, 1e30, 1e300, math.inf, -math.inf,
                                                          math.nan]), st.integers(-3, 50))
JUNK = st.sampled_from([None, "7", True, [1.0], b"x", object()])


def _clear(suite, e):
    msg = str(e)
    assert isinstance(e, CLEAR), f"{type(e).__name__}: {msg}"
    assert msg and "\n" not in msg, msg
    assert msg not in ("math domain error", "float division by zero") and "Numerical result" not in msg, msg
    STATS[(suite, "clear error")] += 1


# ---------------------------------------------------------------------------------------------------- solvers
@st.composite
def sampler_args(draw):
    kind = draw(st.sampled_from(["vp", "subvp", "ve"]))
    if draw(st.integers(0, 3)) == 0:
        params = {"a": draw(NUMBERS), "b": draw(NUMBERS)}
    else:
        params = {"a": 0.1, "b": 20.0} if kind != "ve" else {"a": 0.01, "b": draw(st.sampled_from([10.0, 50.0]))}
    n = draw(st.one_of(st.just(1000), st.integers(-2, 5000), st.sampled_from([10**10, 2.5, 100.0])))
    steps = draw(st.one_of(st.integers(1, 6), st.integers(-3, 0), st.sampled_from([10**9, 2.5, True, "4", None])))
    grid = draw(st.one_of(st.sampled_from(["uniform", "logsnr", "karras", "quadratic"]),
                          st.sampled_from(["cosine", "", None, 3]),
                          st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=5)))
    options = {
        "name": draw(st.sampled_from(solvers.solver_names())),
        "rho": draw(st.one_of(st.just(7.0), NUMBERS)),
        "eps": draw(st.one_of(st.none(), st.sampled_from([1e-3, 1e-5, 0.5]), NUMBERS)),
        "continuous": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32)),
    }
    return kind, params, n, steps, grid, options


def _make_sde(kind, params, n):
    if kind == "ve":
        return sde_lib.VESDE(params["a"], params["b"], n)
    return {"vp": sde_lib.VPSDE, "subvp": sde_lib.subVPSDE}[kind](params["a"], params["b"], n)


@FUZZ
@given(sampler_args())
def test_fuzz_get_sampler(args):
    kind, params, n, steps, grid, o = args
    try:
        sde = _make_sde(kind, params, n)
        sampler = solvers.get_sampler(o["name"], sde, (3, 2), steps, grid=grid, rho=o["rho"], eps=o["eps"],
                                      continuous=o["continuous"], seed=o["seed"], dtype=torch.float64)
    except Exception as e:  # noqa: BLE001  (the assertion is on its type and message)
        _clear("solvers", e)
        return
    model = AnalyticScoreModel(RING, sde, continuous=o["continuous"])
    got, evals = sampler(model)
    assert torch.isfinite(got).all(), got
    reference = solvers.get_sampler(o["name"], sde, (3, 2), steps, grid=grid, rho=o["rho"], eps=o["eps"],
                                    continuous=o["continuous"], seed=o["seed"], dtype=torch.float64,
                                    backend="reference")
    want, evals_ref = reference(model)
    assert evals == evals_ref
    scale = max(1.0, float(want.abs().max()))
    assert (got - want).abs().max() <= 1e-6 * scale, (got, want)
    STATS[("solvers", "equal result")] += 1


# ---------------------------------------------------------------------------------------------------- k-diffusion
def _k_diffusion():
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from test_real_packages import _load_k_diffusion_sampling
        return _load_k_diffusion_sampling()
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def K():
    return _k_diffusion()


def ring_denoiser(x, sigma):
    s = sigma.double()
    return (x.double() + (s**2)[:, None] * RING.perturbed_score(x.double(), 1.0, s)).to(x.dtype)


# deterministic samplers (k-diffusion gives the reference); eta = 0 makes the SDE ones deterministic
KD = [("euler", {}), ("heun", {}), ("dpm_2", {}), ("dpmpp_2m", {}), ("dpmpp_2m_sde", {"eta": 0.0}),
      ("dpmpp_3m_sde", {"eta": 0.0}), ("euler_ancestral", {"eta": 0.0})]
SIGMA_VALUES = st.one_of(st.floats(1e-3, 1e3), st.sampled_from([0.0, -1.0, 1e-30, 1e-44, math.inf, math.nan, 1e300]))


@st.composite
def sigma_lists(draw):
    if draw(st.integers(0, 2)):  # mostly valid: a decreasing draw, maybe ending in 0
        values = sorted(draw(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=5, unique=True)), reverse=True)
        if draw(st.booleans()):
            values.append(0.0)
        if draw(st.integers(0, 3)) == 0:
            values.insert(len(values) - 1, draw(st.sampled_from([1e-30, 1e-20])))
            values = sorted(values, reverse=True) if values[-1] != 0.0 else sorted(values[:-1], reverse=True) + [0.0]
        return values
    return draw(st.lists(SIGMA_VALUES, min_size=0, max_size=5))


@FUZZ
@given(st.sampled_from(KD), sigma_lists(), st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**16))
def test_fuzz_kdiffusion(K, sampler, sigmas, dtype, seed):
    name, options = sampler
    x = (torch.randn(3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3).to(dtype)
    try:
        got = getattr(kdiffusion, f"sample_{name}")(ring_denoiser, x, torch.tensor(sigmas, dtype=dtype), **options)
    except Exception as e:  # noqa: BLE001
        _clear("kdiffusion", e)
        return
    assert torch.isfinite(got).all(), got
    if len(sigmas) == 2 and sigmas[1] == 0.0:
        # one step to 0 is the denoiser at sigmas[0] for every sampler (k-diffusion's dpmpp_2m_sde / 3m_sde fail
        # there themselves: UnboundLocalError on `h`, k-diffusion 0.1.1.post1)
        want = ring_denoiser(x, torch.full((x.shape[0],), sigmas[0], dtype=dtype))
    else:
        with torch.no_grad():
            want = getattr(K, f"sample_{name}")(ring_denoiser, x, torch.tensor(sigmas, dtype=dtype), disable=True,
                                                **options)
    tol = 2e-4 if dtype == torch.float32 else 1e-9
    scale = max(1.0, float(want.abs().max()))
    assert (got - want).abs().max() <= tol * scale, (sigmas, got, want)
    STATS[("kdiffusion", "equal result")] += 1


# ---------------------------------------------------------------------------------------------------- diffusers
@st.composite
def scheduler_configs(draw):
    config = {}
    if draw(st.booleans()):
        config["num_train_timesteps"] = draw(st.one_of(st.integers(-2, 2000), st.sampled_from(
            [1000, 1000.0, 3.7, 1e10, "1000", None, True, math.nan])))
    ve = draw(st.integers(0, 2)) == 0
    if ve:
        config["sigma_min"] = draw(st.one_of(st.just(0.01), NUMBERS))
        config["sigma_max"] = draw(st.one_of(st.just(50.0), NUMBERS, JUNK))
    else:
        config["beta_start"] = draw(st.one_of(st.floats(1e-5, 1e-2), NUMBERS, JUNK))
        config["beta_end"] = draw(st.one_of(st.floats(1e-2, 0.05), NUMBERS, JUNK))
        if draw(st.booleans()):
            config["beta_schedule"] = draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", None]))
    if draw(st.booleans()):
        config["prediction_type"] = draw(st.sampled_from(["epsilon", "v_prediction", "sample", "x0", None, 3]))
    return config


@FUZZ
@given(scheduler_configs())
def test_fuzz_from_diffusers(config):
    try:
        model, sde, continuous = from_diffusers(lambda x, t: x, config)
    except Exception as e:  # noqa: BLE001
        _clear("diffusers", e)
        return
    n = sde.N
    assert n == int(config.get("num_train_timesteps", 1000)) == config.get("num_train_timesteps", 1000)
    if continuous:  # ScoreSdeVeScheduler: sigma_min, sigma_max kept exactly; its UNet returns the score
        assert isinstance(sde, sde_lib.VESDE) and model.prediction_type == "epsilon"
        assert (sde.sigma_min, sde.sigma_max) == (float(config["sigma_min"]), float(config["sigma_max"]))
        assert config.get("prediction_type") in (None, "epsilon")
    else:  # diffusers' DDPMScheduler betas: torch.linspace(beta_start, beta_end, n) in float32
        want = torch.linspace(float(config["beta_start"]), float(config["beta_end"]), n, dtype=torch.float32)
        torch.testing.assert_close(sde.discrete_betas, want, rtol=1e-5, atol=1e-9)
        assert model.prediction_type == (config.get("prediction_type") or "epsilon")
        assert torch.isfinite(sde.alphas_cumprod).all() and (sde.alphas_cumprod > 0).all()
    STATS[("diffusers", "equal result")] += 1


def test_zz_report(capsys):
    """Prints the outcome counts of the suite (docs/reliability.md); runs last by name."""
    with capsys.disabled():
        total = sum(STATS.values())
        print(f"\nfuzz_api: {total} cases, " + ", ".join(f"{s} {k}: {n}" for (s, k), n in sorted(STATS.items())))
