"""PC and ODE samplers on analytic Gaussian mixtures: samples against the exact distribution, the original's
noise order, reproducibility, and clear errors for undefined combinations."""
import itertools
import math

import pytest
import torch

from fastsde import sampling
from fastsde import sde as sde_lib
from fastsde.metrics import moment_errors, sliced_wasserstein, sliced_wasserstein_null
from fastsde.models.analytic import AnalyticScoreModel, get_mixture, isotropic_gaussian
from fastsde.models.utils import get_score_fn

SDES = {
    # sigma_max = 10 exceeds the ring's largest pairwise distance (4), the rule of Song & Ermon (2020, technique 1)
    # for a VE prior that covers the data; 50 (the CIFAR-10 value) only costs corrector-only samplers more steps.
    "ve": lambda N: sde_lib.VESDE(0.01, 10.0, N),
    "vp": lambda N: sde_lib.VPSDE(0.1, 20.0, N),
    "subvp": lambda N: sde_lib.subVPSDE(0.1, 20.0, N),
}
EPS = {"ve": 1e-5, "vp": 1e-3, "subvp": 1e-3}
PREDICTORS = ["euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none"]
CORRECTORS = ["langevin", "ald", "none"]
N_SAMPLES, N_STEPS = 2000, 500
IDENTITY = lambda x: x  # noqa: E731  (the inverse scaler of data already in model space)


def _defined(sde_name, predictor, corrector):
    return (not (predictor == "ancestral_sampling" and sde_name == "subvp")
            and (predictor, corrector) != ("none", "none"))


COMBOS = [c for c in itertools.product(SDES, PREDICTORS, CORRECTORS) if _defined(*c)]


@pytest.fixture(scope="module")
def ring():
    mix = get_mixture("ring")
    reference = mix.sample(N_SAMPLES, generator=torch.Generator().manual_seed(123))
    # SW between two independent exact samples of the same size: what sampling error alone produces.
    null = sliced_wasserstein_null(mix, N_SAMPLES, repeats=10, seed=0, sample_seed=7)
    return mix, reference, null


def _assert_matches(x, mix, reference, null, slack=1.5):
    n = x.shape[0]
    assert torch.isfinite(x).all()
    sw = sliced_wasserstein(x, reference, seed=0)
    # Bound: the worst of 10 exact-vs-exact draws, with 50% allowance for the sampler's discretization error.
    assert sw < slack * null.max(), (sw, null.max())
    err = moment_errors(x, mix)
    scale = math.sqrt(torch.linalg.eigvalsh(mix.cov()).max().item())
    # Mean error of n draws is ~ scale sqrt(D/n); allow 5 standard errors.
    assert err["mean_err"] < 5 * scale * math.sqrt(2 / n), err
    assert err["cov_rel_err"] < 0.1, err


@pytest.mark.parametrize("sde_name,predictor,corrector", COMBOS)
def test_pc_sampler_matches_exact_distribution(ring, sde_name, predictor, corrector):
    mix, reference, null = ring
    sde = SDES[sde_name](N_STEPS)
    model = AnalyticScoreModel(mix, sde, continuous=True)
    # A corrector-only sampler moves mass between noise levels by its Langevin iterations alone: give it several
    # per level, as NCSN does (measured: ALD on subVP needs ~6 at 500 levels to reach the same covariance error).
    n_steps = 6 if predictor == "none" else 1
    sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), predictor, corrector, IDENTITY, snr=0.16,
                                      n_steps=n_steps, continuous=True, eps=EPS[sde_name], seed=11)
    x, nfe = sampler(model)
    assert x.shape == (N_SAMPLES, 2) and x.dtype == torch.float32
    assert nfe == N_STEPS * (n_steps + 1)
    _assert_matches(x, mix, reference, null)


@pytest.mark.parametrize("sde_name,predictor", [("vp", "ancestral_sampling"), ("ve", "reverse_diffusion"),
                                                ("vp", "reverse_diffusion"), ("ve", "ancestral_sampling")])
def test_pc_sampler_discrete_conventions(ring, sde_name, predictor):
    # Discrete-time models (DDPM / NCSN label conventions): the sampler calls get_score_fn(continuous=False).
    mix, reference, null = ring
    sde = SDES[sde_name](N_STEPS)
    model = AnalyticScoreModel(mix, sde, continuous=False)
    sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), predictor, "none", IDENTITY, snr=0.16,
                                      continuous=False, eps=EPS[sde_name], seed=3)
    _assert_matches(sampler(model)[0], mix, reference, null)


@pytest.mark.parametrize("sde_name,predictor", [("ve", "reverse_diffusion"), ("vp", "euler_maruyama"),
                                                ("subvp", "reverse_diffusion")])
def test_probability_flow_predictors(ring, sde_name, predictor):
    mix, reference, null = ring
    sde = SDES[sde_name](N_STEPS)
    model = AnalyticScoreModel(mix, sde, continuous=True)
    sampler = sampling.get_pc_sampler(sde, (N_SAMPLES, 2), predictor, "none", IDENTITY, snr=0.16,
                                      probability_flow=True, continuous=True, eps=EPS[sde_name], seed=5)
    _assert_matches(sampler(model)[0], mix, reference, null)


@pytest.mark.parametrize("sde_name", SDES)
def test_ode_sampler_matches_exact_distribution(ring, sde_name):
    mix, reference, null = ring
    sde = SDES[sde_name](1000)
    model = AnalyticScoreModel(mix, sde, continuous=True)
    sampler = sampling.get_ode_sampler(sde, (N_SAMPLES, 2), IDENTITY, rtol=1e-4, atol=1e-4, eps=EPS[sde_name],
                                       seed=2)
    x, nfe = sampler(model)
    _assert_matches(x, mix, reference, null)
    assert 10 < nfe < 1000  # an adaptive RK45 solve of a smooth 2-D flow: tens to hundreds of evaluations


def test_ode_sampler_is_the_exact_flow_for_a_gaussian():
    # For N(mu, s0^2 I) data under VP the probability-flow ODE is linear: x_t = m_t mu + sqrt(m_t^2 s0^2 + s_t^2) w
    # with w fixed along the path, so the sampler must map the prior sample z to mu + s0 sqrt(...) z exactly
    # (up to the solver tolerance and p_T's tiny mismatch with the prior).
    mix = isotropic_gaussian(3, mean=0.4, std=0.5)
    sde = sde_lib.VPSDE(0.1, 20.0, 1000)
    model = AnalyticScoreModel(mix, sde, continuous=True)
    z = torch.randn(64, 3, dtype=torch.float64)
    x, _ = sampling.get_ode_sampler(sde, (64, 3), IDENTITY, rtol=1e-8, atol=1e-8, eps=1e-3,
                                    dtype=torch.float64)(model, z=z)
    t = torch.tensor([1e-3], dtype=torch.float64)
    m_e, s_e = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), t)
    m_e, s_e = m_e.item(), s_e.item()
    m_1, s_1 = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    sd_T = math.sqrt(m_1.item() ** 2 * 0.25 + s_1.item() ** 2)
    w = (z - m_1.item() * 0.4) / sd_T
    expected = m_e * 0.4 + math.sqrt(m_e**2 * 0.25 + s_e**2) * w
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_torch_noise_reproduces_the_original_order():
    # noise="torch": prior = torch.randn(shape); per step, each corrector iteration draws randn_like after its
    # score evaluation, then the predictor draws once. Written out here for reverse diffusion + Langevin, VE.
    mix = get_mixture("gaussian")
    N, n, snr = 20, 16, 0.16
    sde = sde_lib.VESDE(0.01, 5.0, N)
    model = AnalyticScoreModel(mix, sde, continuous=False)
    torch.manual_seed(42)
    got, nfe = sampling.get_pc_sampler(sde, (n, 2), "reverse_diffusion", "langevin", IDENTITY, snr, n_steps=2,
                                       continuous=False, eps=1e-5, noise="torch")(model)
    assert nfe == N * 3

    torch.manual_seed(42)
    score_fn = get_score_fn(sde, model, continuous=False)
    x = torch.randn(n, 2) * 5.0
    sigmas = sde.discrete_sigmas
    for t in torch.linspace(1.0, 1e-5, N):
        vt = torch.full((n,), t.item())
        for _ in range(2):
            s = score_fn(x, vt)
            z = torch.randn_like(x)
            step = (snr * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2 * 2
            x = x + step * s + torch.sqrt(2 * step) * z
        i = int(t.item() * (N - 1))
        sig, prev = sigmas[i], (sigmas[i - 1] if i > 0 else torch.tensor(0.0))
        x_mean = x + (sig**2 - prev**2) * score_fn(x, vt)
        x = x_mean + torch.sqrt(sig**2 - prev**2) * torch.randn_like(x)
    torch.testing.assert_close(got, x_mean, rtol=1e-5, atol=1e-5)


def test_same_seed_same_samples_and_batch_invariance():
    mix = get_mixture("ring")
    sde = sde_lib.VPSDE(0.1, 20.0, 50)
    model = AnalyticScoreModel(mix, sde, continuous=True)

    def run(n, seed, ids=None):
        return sampling.get_pc_sampler(sde, (n, 2), "euler_maruyama", "none", IDENTITY, 0.16, continuous=True,
                                       seed=seed, sample_ids=ids)(model)[0]

    a, b = run(8, 7), run(8, 7)
    assert torch.equal(a, b)
    assert not torch.allclose(a, run(8, 8))
    # A sample's noise depends on its id, not on its batch: samples 5, 2 alone equal rows 5, 2 of the batch.
    torch.testing.assert_close(run(2, 7, ids=[5, 2]), a[[5, 2]], rtol=1e-6, atol=1e-6)


def test_undefined_combinations_raise_clearly():
    sde = sde_lib.subVPSDE()
    with pytest.raises(ValueError, match="ancestral_sampling is defined for VPSDE and VESDE"):
        sampling.get_pc_sampler(sde, (4, 2), "ancestral_sampling", "none", IDENTITY, 0.16)
    with pytest.raises(ValueError, match="probability-flow"):
        sampling.get_pc_sampler(sde_lib.VPSDE(), (4, 2), "ancestral_sampling", "none", IDENTITY, 0.16,
                                probability_flow=True)
    with pytest.raises(ValueError, match=r"unknown predictor 'leapfrog'; known: \['ancestral_sampling'"):
        sampling.get_pc_sampler(sde, (4, 2), "leapfrog", "none", IDENTITY, 0.16)
    with pytest.raises(ValueError, match="unknown corrector"):
        sampling.get_pc_sampler(sde, (4, 2), "euler_maruyama", "hmc", IDENTITY, 0.16)
    with pytest.raises(ValueError, match="shape"):
        sampling.get_pc_sampler(sde, (4,), "euler_maruyama", "none", IDENTITY, 0.16)
    with pytest.raises(ValueError, match="backend"):
        sampling.get_pc_sampler(sde, (4, 2), "euler_maruyama", "none", IDENTITY, 0.16, backend="cuda")
    with pytest.raises(ValueError, match="noise"):
        sampling.get_pc_sampler(sde, (4, 2), "euler_maruyama", "none", IDENTITY, 0.16, noise="numpy")


def test_classes_and_names_are_interchangeable():
    mix = get_mixture("gaussian")
    sde = sde_lib.VESDE(0.01, 5.0, 30)
    model = AnalyticScoreModel(mix, sde, continuous=True)
    kw = dict(continuous=True, eps=1e-5, seed=4)
    by_name = sampling.get_pc_sampler(sde, (8, 2), "reverse_diffusion", "ald", IDENTITY, 0.1, **kw)(model)[0]
    by_cls = sampling.get_pc_sampler(sde, (8, 2), sampling.ReverseDiffusionPredictor,
                                     sampling.AnnealedLangevinDynamics, IDENTITY, 0.1, **kw)(model)[0]
    assert torch.equal(by_name, by_cls)


def test_any_rank_state():
    mix = isotropic_gaussian(12, mean=0.2, std=0.7)
    sde = sde_lib.VPSDE(0.1, 20.0, 40)
    model = AnalyticScoreModel(mix, sde, continuous=True)
    x, _ = sampling.get_pc_sampler(sde, (5, 3, 2, 2), "euler_maruyama", "langevin", IDENTITY, 0.16,
                                   continuous=True, seed=0)(model)
    assert x.shape == (5, 3, 2, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("argv", [["--sampler", "euler", "--steps", "2"], ["--sampler", "pc", "--steps", "3"], []])
def test_eval_samples_with_the_sampler_of_fastsde_sample(capsys, tmp_path, argv):
    """`fastsde eval` built its own PC sampler and ignored --sampler: its report on sampled digits equals its report
    on the file `fastsde sample` writes with the same sampler selection (default included) and seed."""
    import json

    from fastsde import cli

    common = ["--n", "6", "--seed", "3", "--threads", "1", "--no-progress", "--json", *argv]
    assert cli.main(["sample", *common, "--precision", "fp32", "--no-plot", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", *common]) == 0
    sampled = json.loads(capsys.readouterr().out)
    assert cli.main(["eval", "--samples", str(tmp_path / "s.npz"), "--no-progress", "--json"]) == 0
    read = json.loads(capsys.readouterr().out)
    assert sampled["fd"] == read["fd"] and sampled["classes"] == read["classes"]
    named = {"euler": "euler, 2 steps", "pc": "euler_maruyama+none, 3 steps"}.get(argv[1] if argv else None,
                                                                                 "dpm_solver_3, 3 steps")
    assert named in sampled["source"]


def _every_sampler(sde, shape, seed):
    """(name, sampler) for every registered sampler kind: each PC predictor x corrector, each solver, the ODE."""
    from fastsde import solvers

    for predictor, corrector in itertools.product(sampling.predictor_names(), sampling.corrector_names()):
        if (predictor, corrector) != ("none", "none"):
            yield (f"pc:{predictor}+{corrector}",
                   sampling.get_pc_sampler(sde, shape, predictor, corrector, IDENTITY, 0.16, continuous=True,
                                           eps=1e-3, seed=seed))
    for name in solvers.solver_names():
        yield name, solvers.get_sampler(name, sde, shape, 3, eps=1e-3, seed=seed)
    yield "ode", sampling.get_ode_sampler(sde, shape, IDENTITY, rtol=1e-2, atol=1e-2, eps=1e-3, seed=seed,
                                          dtype=torch.float32)


def test_every_sampler_kind_has_one_contract():
    """get_pc_sampler, get_sampler and get_ode_sampler return one contract: sampler(model, z=None) -> (x, count),
    starting from z when given (z=None is the prior, FSN1 draw 0 of the seed), never writing into z."""
    from fastsde import solvers
    from fastsde.noise import NoiseStream

    sde, shape = sde_lib.VPSDE(0.1, 20.0, 24), (5, 2)
    model = AnalyticScoreModel(get_mixture("ring"), sde, continuous=True)
    prior = NoiseStream("fastsde", 4, None).prior(sde, shape)
    kinds = 0
    for name, sampler in _every_sampler(sde, shape, seed=4):
        z = prior.clone()
        x, count = sampler(model)
        x_z, count_z = sampler(model, z)
        assert isinstance(count, int) and count == count_z > 0, name
        assert x.shape == shape and torch.equal(x, x_z), name
        assert torch.equal(z, prior), name
        with pytest.raises(TypeError, match="z must be a torch.Tensor"):
            sampler(model, [[0.0, 0.0]] * 5)
        kinds += 1
    pc_kinds = len(sampling.predictor_names()) * len(sampling.corrector_names()) - 1
    assert kinds == pc_kinds + len(solvers.solver_names()) + 1
