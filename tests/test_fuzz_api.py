"""Property-based fuzz of the library API surfaces (hypothesis): the few-step solvers' get_sampler arguments,
fastsde.kdiffusion's sigmas and samplers, and fastsde.compat.diffusers' scheduler configs. Every case either gives
a finite result equal to a reference (the solver on the reference backend in float64; the installed k-diffusion;
diffusers' own scheduler tables) or raises a clear ValueError/TypeError: one line, naming the argument. Never
another exception type, never NaN. (One exception, counted apart: valid k-diffusion sigmas on which the test's
denoiser itself overflows give NonFiniteError, where k-diffusion returns a non-finite sample.) Deterministic
(derandomized); the counts go to docs/reliability.md.
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
from fastsde.sampling.guard import NonFiniteError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = int(os.environ.get("FASTSDE_FUZZ_API_EXAMPLES", "150"))
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
    """Valid arguments, and in half of the cases one of them replaced by a hostile value (so each refusal is
    attributable to that argument)."""
    kind = draw(st.sampled_from(["vp", "subvp", "ve"]))
    if kind == "ve":
        params = {"a": draw(st.floats(0.002, 0.1)), "b": draw(st.floats(5.0, 100.0))}
    else:
        params = {"a": draw(st.floats(0.0, 1.0)), "b": draw(st.floats(5.0, 40.0))}
    n = draw(st.sampled_from([1000, 200, 50]))
    steps = draw(st.integers(1, 6))
    grid = draw(st.sampled_from(["uniform", "logsnr", "karras", "quadratic", "explicit"]))
    if grid == "explicit":
        inner = draw(st.lists(st.floats(0.01, 0.99), min_size=steps - 1, max_size=steps - 1, unique=True))
        grid = [1.0] + sorted(inner, reverse=True) + [draw(st.sampled_from([1e-3, 5e-3]))]
    o = {"name": draw(st.sampled_from(solvers.solver_names())), "rho": draw(st.floats(0.5, 10.0)),
         "eps": draw(st.one_of(st.none(), st.floats(1e-5, 0.05))), "continuous": draw(st.booleans()),
         "seed": draw(st.integers(0, 2**32))}
    if draw(st.booleans()):
        field = draw(st.sampled_from(["a", "b", "n", "steps", "grid", "rho", "eps", "seed"]))
        bad = draw(st.one_of(NUMBERS, JUNK, st.sampled_from([10**10, 10**9, 2.5, -1, 0])))
        if field in ("a", "b"):
            params[field] = bad
        elif field == "n":
            n = bad
        elif field == "steps":
            steps = bad
        elif field == "grid":
            grid = draw(st.one_of(st.sampled_from(["cosine", "", None, 3, b"logsnr"]),
                                  st.lists(st.one_of(st.floats(-0.5, 1.5), NUMBERS), min_size=0, max_size=7)))
        else:
            o[field] = bad
    return kind, params, n, steps, grid, o


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
    torch.manual_seed(0)  # seed=None draws the seed from torch's generator: both calls must see the same state
    got, evals = sampler(model)
    assert torch.isfinite(got).all(), got
    reference = solvers.get_sampler(o["name"], sde, (3, 2), steps, grid=grid, rho=o["rho"], eps=o["eps"],
                                    continuous=o["continuous"], seed=o["seed"], dtype=torch.float64,
                                    backend="reference")
    torch.manual_seed(0)
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
    except NonFiniteError as e:
        # valid sigmas on which the denoiser itself overflows (the ring's sigma^2 at sigma = 1e300): k-diffusion's
        # sample is not finite either; fastsde says so instead of returning it
        with torch.no_grad():
            want = getattr(K, f"sample_{name}")(ring_denoiser, x, torch.tensor(sigmas, dtype=dtype), disable=True,
                                                **options)
        assert not torch.isfinite(want).all(), (str(e), want)
        assert "\n" not in str(e)
        STATS[("kdiffusion", "non-finite model output (NonFiniteError, k-diffusion non-finite too)")] += 1
        return
    except Exception as e:  # noqa: BLE001
        _clear("kdiffusion", e)
        return
    assert torch.isfinite(got).all(), got
    def reference(xx):
        if len(sigmas) == 2 and sigmas[1] == 0.0:
            # one step to 0 is the denoiser at sigmas[0] for every sampler (k-diffusion's dpmpp_2m_sde / 3m_sde
            # fail there themselves: UnboundLocalError on `h`, k-diffusion 0.1.1.post1)
            return ring_denoiser(xx, torch.full((xx.shape[0],), sigmas[0], dtype=xx.dtype))
        with torch.no_grad():
            return getattr(K, f"sample_{name}")(ring_denoiser, xx, torch.tensor(sigmas, dtype=xx.dtype),
                                                disable=True, **options)

    want = reference(x)
    scale = max(1.0, float(want.abs().max()))
    if dtype == torch.float64:
        assert (got - want).abs().max() <= 1e-9 * scale, (sigmas, got, want)
    else:  # the project's float32 rule: err(fast, ref64) <= 2 err(ref32, ref64) + atol (k-diffusion's own float32
        # run can be 3e-3 off its float64 one on a one-step Heun from sigma 742)
        want64 = reference(x.double())
        err = (got.double() - want64).abs().max()
        assert err <= 2 * (want.double() - want64).abs().max() + 1e-5 * scale, (sigmas, got, want, want64)
    STATS[("kdiffusion", "equal result")] += 1


# ---------------------------------------------------------------------------------------------------- diffusers
@st.composite
def scheduler_configs(draw):
    """A DDPM/DDIM or score-SDE-VE config, and in half of the cases one field replaced by a hostile value."""
    ve = draw(st.integers(0, 2)) == 0
    config = {"num_train_timesteps": draw(st.sampled_from([1000, 1000.0, 500, 50]))}
    if ve:
        config.update(sigma_min=draw(st.floats(0.001, 0.1)), sigma_max=draw(st.floats(1.0, 400.0)))
        if draw(st.booleans()):
            config["prediction_type"] = "epsilon"
    else:
        config.update(beta_start=draw(st.floats(1e-5, 1e-2)), beta_end=draw(st.floats(1e-2, 0.05)),
                      beta_schedule="linear")
        if draw(st.booleans()):
            config["prediction_type"] = draw(st.sampled_from(["epsilon", "v_prediction", "sample"]))
    if draw(st.booleans()):
        field = draw(st.sampled_from(["num_train_timesteps", "prediction_type"]
                                     + (["sigma_min", "sigma_max"] if ve else ["beta_start", "beta_end",
                                                                               "beta_schedule"])))
        if field == "num_train_timesteps":
            bad = draw(st.sampled_from([3.7, 1e10, "1000", None, True, math.nan, 0, -5, 10**8]))
        elif field == "prediction_type":
            bad = draw(st.sampled_from(["v_prediction", "sample", "x0", None, 3, ""]))
        elif field == "beta_schedule":
            bad = draw(st.sampled_from(["scaled_linear", "squaredcos_cap_v2", None]))
        else:
            bad = draw(st.one_of(NUMBERS, JUNK))
        config[field] = bad
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
    assert n == config.get("num_train_timesteps", 1000)
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
