"""Analytic Gaussian-mixture ground truth: scores vs autograd, densities vs quadrature and scipy, moments vs Monte
Carlo, and AnalyticScoreModel through get_score_fn against each SDE's marginal computed here independently."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from fastsde import sde as sde_lib
from fastsde.models.analytic import PRESETS, AnalyticScoreModel, GaussianMixture, get_mixture, isotropic_gaussian
from fastsde.models.utils import get_score_fn


def _random_spd(K, D, g):
    a = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    return a @ a.mT / D + 0.1 * torch.eye(D, dtype=torch.float64)


def _mixture(kind, K=3, D=3, seed=0):
    """A K-component mixture with unequal weights and diagonal or full covariances."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
    if kind == "diag":
        covs = 0.1 + torch.rand(K, D, generator=g, dtype=torch.float64)
    else:
        covs = _random_spd(K, D, g)
    return GaussianMixture(weights, means, covs)


def _assert_moments(x, mean, cov, k=5.0):
    """Sample mean/cov of x (n, D) within k standard errors of (mean, cov); the errors are estimated from x itself
    (per entry: std of x_i resp. of (x_i - mean_i)(x_j - mean_j), over sqrt(n)), so non-Gaussian x is handled."""
    x = x.double()
    n = x.shape[0]
    xc = x - mean
    se_mean = x.std(0) / math.sqrt(n)
    prods = xc[:, :, None] * xc[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert torch.all((x.mean(0) - mean).abs() <= k * se_mean), (x.mean(0), mean)
    assert torch.all((torch.cov(x.T).reshape(cov.shape) - cov).abs() <= k * se_cov + 1e-12), (torch.cov(x.T), cov)


# ---------------------------------------------------------------- densities and scores


@pytest.mark.parametrize("kind", ["diag", "full"])
@pytest.mark.parametrize("shape", [(7, 3), (7, 1, 3)])  # (7, 1, 3): trailing dims other than (D,) are flattened
def test_perturbed_score_is_gradient_of_perturbed_log_prob(kind, shape):
    mix = _mixture(kind)
    g = torch.Generator().manual_seed(1)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    m = torch.rand(7, generator=g, dtype=torch.float64) + 0.05  # per-sample (m, s), m and s both varying
    s = torch.rand(7, generator=g, dtype=torch.float64) + 0.01
    (grad,) = torch.autograd.grad(mix.perturbed_log_prob(x, m, s).sum(), x)
    score = mix.perturbed_score(x.detach(), m, s)
    assert score.shape == x.shape and score.dtype == torch.float64
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["diag", "full"])
def test_scalar_coefficients_match_the_perturbed_mixture(kind):
    # perturbed(m, s) builds the mixture of p_t explicitly: its log_prob/score must match the per-sample path.
    mix = _mixture(kind)
    x = torch.randn(11, 3, dtype=torch.float64)
    pert = mix.perturbed(0.7, 0.4)
    torch.testing.assert_close(pert.log_prob(x), mix.perturbed_log_prob(x, 0.7, 0.4), rtol=1e-12, atol=1e-12)
    m = torch.full((11,), 0.7, dtype=torch.float64)  # (B,) and 0-d tensors as well as floats
    s = torch.tensor(0.4, dtype=torch.float64)
    torch.testing.assert_close(pert.score(x), mix.perturbed_score(x, m, s), rtol=1e-12, atol=1e-12)


def test_score_stable_far_from_all_components():
    # Far out every component density underflows in float64; logsumexp/softmax must still give a finite score,
    # which there is the nearest-component score -(x - mu_k) / var_k.
    mix = get_mixture("ring")
    x = torch.tensor([[60.0, 0.0]], dtype=torch.float64)
    score = mix.score(x)
    assert torch.isfinite(mix.log_prob(x)).all()
    torch.testing.assert_close(score, -(x - torch.tensor([[2.0, 0.0]], dtype=torch.float64)) / 0.15**2)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_log_prob_integrates_to_one(name):
    # Riemann sum on a grid much finer than the smallest std (0.15): spectrally accurate for Gaussians.
    mix = get_mixture(name)
    h = 0.02
    grid = torch.arange(-5.0, 5.0, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    total = mix.log_prob(pts).exp().sum().item() * h * h
    assert abs(total - 1.0) < 1e-6, total


def test_log_prob_matches_scipy_for_one_full_component():
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(4, generator=g, dtype=torch.float64)
    cov = _random_spd(1, 4, g)[0]
    mix = GaussianMixture([1.0], mean[None], cov[None])
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    expected = stats.multivariate_normal(mean.numpy(), cov.numpy()).logpdf(x.numpy())
    np.testing.assert_allclose(mix.log_prob(x).numpy(), expected, rtol=1e-12, atol=1e-12)


def test_log_prob_of_mixture_is_weighted_sum_of_scipy_densities():
    mix = _mixture("full")
    x = torch.randn(9, 3, dtype=torch.float64)
    dens = sum(w * stats.multivariate_normal(mu.numpy(), c.numpy()).pdf(x.numpy())
               for w, mu, c in zip(mix.weights.tolist(), mix.means, mix.covs))
    np.testing.assert_allclose(mix.log_prob(x).numpy(), np.log(dens), rtol=1e-11)


def test_log_prob_keeps_float32_inputs_float32():
    mix = get_mixture("gaussian")
    x = torch.randn(5, 2)
    assert mix.log_prob(x).dtype == torch.float32 and mix.score(x).dtype == torch.float32
    torch.testing.assert_close(mix.log_prob(x).double(), mix.log_prob(x.double()), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- moments and sampling


def test_closed_form_moments_of_presets():
    ring, board = get_mixture("ring"), get_mixture("checkerboard")
    # Ring: points on a circle of radius 2 have covariance (r^2 / 2) I; plus the component variance.
    torch.testing.assert_close(ring.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(ring.cov(), (2.0 + 0.15**2) * torch.eye(2, dtype=torch.float64))
    # Checkerboard: centres +-0.5, +-1.5 in each coordinate, equally often (variance 1.25); the black cells pair
    # equal-sign corners, so E[xy] = (2 * 2.25 + 2 * 0.25 - 4 * 0.75) / 8 = 0.25.
    torch.testing.assert_close(board.mean(), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(board.cov(), torch.tensor([[1.25 + 0.2**2, 0.25], [0.25, 1.25 + 0.2**2]],
                                                         dtype=torch.float64))
    gauss = get_mixture("gaussian")
    torch.testing.assert_close(gauss.cov(), torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64))
    assert gauss.mean().abs().min() > 0.1


@pytest.mark.parametrize("mix", [get_mixture("ring"), get_mixture("checkerboard"), get_mixture("gaussian"),
                                 _mixture("full"), isotropic_gaussian(5, mean=0.3, std=2.0)],
                         ids=["ring", "checkerboard", "gaussian", "full3d", "iso5d"])
def test_sample_moments_match_exact_moments(mix):
    x = mix.sample(100_000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert x.shape == (100_000, mix.dim)
    _assert_moments(x, mix.mean(), mix.cov())


def test_sample_is_reproducible_and_takes_dtype():
    mix = get_mixture("ring")
    a = mix.sample(100, generator=torch.Generator().manual_seed(5))
    b = mix.sample(100, generator=torch.Generator().manual_seed(5))
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_sample_component_frequencies_follow_weights():
    # Components far apart: the nearest mean identifies the component of each sample.
    mix = GaussianMixture([1.0, 3.0], [[-10.0], [10.0]], [[1.0], [1.0]])
    x = mix.sample(40_000, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    frac = (x[:, 0] > 0).double().mean().item()
    assert abs(frac - 0.75) < 5 * math.sqrt(0.75 * 0.25 / 40_000)


@pytest.mark.parametrize("name", ["ring", "gaussian"])
@pytest.mark.parametrize("m, s", [(0.6, 0.8), (1.0, 3.0), (0.05, 0.999)])
def test_forward_process_monte_carlo_matches_perturbed_moments(name, m, s):
    mix = get_mixture(name)
    g = torch.Generator().manual_seed(7)
    x0 = mix.sample(100_000, generator=g, dtype=torch.float64)
    xt = m * x0 + s * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    pert = mix.perturbed(m, s)
    _assert_moments(xt, pert.mean(), pert.cov())
    # The exact moments of p_t in closed form: m mu and m^2 Sigma + s^2 I.
    torch.testing.assert_close(pert.mean(), m * mix.mean())
    torch.testing.assert_close(pert.cov(), m * m * mix.cov() + s * s * torch.eye(2, dtype=torch.float64))


# ---------------------------------------------------------------- presets and validation


def test_presets_and_unknown_name():
    for name in PRESETS:
        assert get_mixture(name).dim == 2
    assert get_mixture("ring").num_components == 8 and get_mixture("checkerboard").num_components == 8
    with pytest.raises(ValueError, match="checkerboard.*gaussian.*ring"):
        get_mixture("swiss_roll")


def test_isotropic_gaussian():
    mix = isotropic_gaussian(4, mean=[1.0, 2.0, 3.0, 4.0], std=0.5)
    torch.testing.assert_close(mix.cov(), 0.25 * torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(mix.mean(), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="mean"):
        isotropic_gaussian(3, mean=[0.0, 1.0])


def test_weights_are_normalised():
    mix = GaussianMixture([2.0, 6.0], [[0.0], [1.0]], [[1.0], [1.0]])
    torch.testing.assert_close(mix.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))


@pytest.mark.parametrize("weights, means, covs, arg", [
    ([1.0, -1.0], [[0.0], [1.0]], [[1.0], [1.0]], "weights"),  # negative weight
    ([], [[0.0]], [[1.0]], "weights"),  # no components
    ([1.0], [[0.0, 1.0], [1.0, 0.0]], [[1.0, 1.0]], "means"),  # K mismatch
    ([1.0], [[0.0, 0.0]], [[1.0, 0.0]], "covs"),  # zero variance
    ([1.0], [[0.0, 0.0]], [[1.0, 1.0, 1.0]], "covs"),  # wrong D
    ([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]], "positive definite"),  # symmetric, indefinite
    ([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]], "symmetric"),
    ([1.0], [[0.0, 0.0]], [[[1.0, float("nan")], [float("nan"), 1.0]]], "covs"),
])
def test_invalid_parameters_raise(weights, means, covs, arg):
    with pytest.raises(ValueError, match=arg):
        GaussianMixture(weights, means, covs)


def test_bad_inputs_raise():
    mix = get_mixture("ring")
    with pytest.raises(ValueError, match="x"):
        mix.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="std"):
        mix.perturbed_score(torch.zeros(4, 2), 1.0, torch.ones(3))
    with pytest.raises(ValueError, match="sde"):
        AnalyticScoreModel(mix, object())


# ---------------------------------------------------------------- AnalyticScoreModel through get_score_fn

N = 1000
CASES = {
    # name: (sde factory, continuous, eps of the sampling grid)
    "vp_continuous": (lambda: sde_lib.VPSDE(0.1, 20.0, N), True, 1e-3),
    "vp_discrete": (lambda: sde_lib.VPSDE(0.1, 20.0, N), False, 1e-3),
    "subvp": (lambda: sde_lib.subVPSDE(0.1, 20.0, N), True, 1e-3),
    "ve_continuous": (lambda: sde_lib.VESDE(0.01, 50.0, N), True, 1e-5),
    "ve_discrete": (lambda: sde_lib.VESDE(0.01, 50.0, N), False, 1e-5),
}
STEPS = [0, 1, 500, 998, 999]  # grid indices k: t = 1 (prior end), interior, t = eps (data end)


def _expected_marginal(name, sde, k, t):
    """(m, s) float64 (B,) of the marginal the score must be exact for, from the formulas, not from the model.

    Continuous: the closed-form marginal at t. Discrete, at grid step k of timesteps = linspace(T, eps, N): VP the DDPM
    marginal prod_{j <= 999 - k} alpha_j of the beta table (float64 here), VE the sigma table at 999 - k.
    """
    t = t.double()
    if name in ("vp_continuous", "subvp"):
        lmc = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
        var = 1 - torch.exp(2 * lmc)
        return torch.exp(lmc), (var if name == "subvp" else var.sqrt())
    if name == "ve_continuous":
        return torch.ones_like(t), 0.01 * (50.0 / 0.01) ** t
    i = N - 1 - k
    if name == "ve_discrete":
        sig = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), N, dtype=torch.float64))
        return torch.ones_like(t), sig[i]
    alphas_cumprod = torch.cumprod(1 - torch.linspace(0.1 / N, 20.0 / N, N, dtype=torch.float64), dim=0)
    return alphas_cumprod[i].sqrt(), (1 - alphas_cumprod[i]).sqrt()


def _table_error(name, sde, k, m, s):
    """Largest relative error of the SDE's float32 discrete tables at grid steps k against (m, s) in float64."""
    i = N - 1 - k
    if name == "ve_discrete":
        return (sde.discrete_sigmas[i].double() / s - 1).abs().max().item()
    if name == "vp_discrete":
        return max((sde.sqrt_alphas_cumprod[i].double() / m - 1).abs().max().item(),
                   (sde.sqrt_1m_alphas_cumprod[i].double() / s - 1).abs().max().item())
    return 0.0


def _float32_std_error(sde, t32):
    """Largest relative error of get_score_fn's float32 marginal std at t32 (B,): near t = 0 the VP/subVP
    1 - exp(2 lmc) cancels, so a float32 caller's score carries this error whatever the model returns."""
    std32 = sde.marginal_prob(torch.zeros(t32.shape[0], 1), t32)[1].double()
    std64 = sde.marginal_prob(torch.zeros(t32.shape[0], 1, dtype=torch.float64), t32.double())[1]
    return (std32 / std64 - 1).abs().max().item()


def _points(mix, m, s, shape, g):
    """Points spread over p_t (so scores are realistic) plus a few far from it."""
    x0 = mix.sample(m.shape[0], generator=g, dtype=torch.float64)
    x = m[:, None] * x0 + s[:, None] * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x[0] += 4.0
    return x.reshape(shape)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mix_name", ["ring", "gaussian", "iso4"])
def test_get_score_fn_recovers_exact_marginal_score(name, mix_name):
    factory, continuous, eps = CASES[name]
    sde = factory()
    mix = isotropic_gaussian(4, mean=0.5, std=0.7) if mix_name == "iso4" else get_mixture(mix_name)
    shape = (len(STEPS), 1, 2, 2) if mix_name == "iso4" else (len(STEPS), 2)  # image-like rank 4 for "iso4"
    model = AnalyticScoreModel(mix, sde, continuous=continuous)
    t32 = torch.linspace(sde.T, eps, N)[STEPS]  # float32 sampling grid, as the samplers build it
    m, s = _expected_marginal(name, sde, torch.tensor(STEPS), t32)
    x64 = _points(mix, m, s, shape, torch.Generator().manual_seed(8))
    expected = mix.perturbed_score(x64, m, s)

    # float64 inputs: exact up to rounding, except that the discrete tables are float32 (their measured error, times
    # 4 for the 1 / s^2 and m / s^2 sensitivity of the score).
    score64 = get_score_fn(sde, model, continuous=continuous)(x64, t32.double())
    assert score64.dtype == torch.float64 and score64.shape == x64.shape
    rtol = 4 * _table_error(name, sde, torch.tensor(STEPS), m, s) + 1e-9
    torch.testing.assert_close(score64, expected, rtol=rtol, atol=rtol * expected.abs().max().item())

    # float32 inputs, as a sampler calls it: float32 tolerance.
    score32 = get_score_fn(sde, model, continuous=continuous)(x64.float(), t32)
    assert score32.dtype == torch.float32
    expected32 = mix.perturbed_score(x64.float().double(), m, s)
    rtol = rtol + 2 * _float32_std_error(sde, t32) + 1e-5
    torch.testing.assert_close(score32.double(), expected32, rtol=rtol, atol=rtol * expected32.abs().max().item())


@pytest.mark.parametrize("name", CASES)
def test_model_output_round_trips_through_get_score_fn(name):
    # The model's own convention is exactly what get_score_fn inverts: float64 to rounding, float32 to its eps.
    factory, continuous, _ = CASES[name]
    sde = factory()
    mix = get_mixture("checkerboard")
    model = AnalyticScoreModel(mix, sde, continuous=continuous).eval()
    t = torch.tensor([1.0, 0.73, 0.31, 0.02, 1e-3], dtype=torch.float64)
    x = 2 * torch.randn(5, 2, dtype=torch.float64)
    score_fn = get_score_fn(sde, model, continuous=continuous)
    torch.testing.assert_close(score_fn(x, t), model.exact_score(x, t), rtol=1e-12, atol=1e-12)
    ref = model.exact_score(x.float().double(), t.float().double())
    rtol = 2 * _float32_std_error(sde, t.float()) + 1e-5
    torch.testing.assert_close(score_fn(x.float(), t.float()).double(), ref, rtol=rtol,
                               atol=1e-5 * ref.abs().max().item())


def test_vp_model_predicts_the_noise():
    # x_t = m x0 + s z with x0 at a point mass: the exact eps prediction is z itself.
    sde = sde_lib.VPSDE()
    mix = isotropic_gaussian(3, mean=[0.2, -0.4, 1.0], std=1e-6)
    model = AnalyticScoreModel(mix, sde, continuous=True)
    t = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    mean, s = sde.marginal_prob(mix.means.expand(3, 3), t)
    z = torch.randn(3, 3, dtype=torch.float64)
    torch.testing.assert_close(model(mean + s[:, None] * z, 999 * t), z, rtol=1e-6, atol=1e-6)


def test_model_is_a_parameter_free_module():
    model = AnalyticScoreModel(get_mixture("ring"), sde_lib.VESDE())
    assert isinstance(model, torch.nn.Module) and len(list(model.parameters())) == 0
    assert model.train().training and not model.eval().training
    x = torch.randn(3, 2)
    out = model(x, torch.full((3,), 1.0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    with pytest.raises(ValueError, match="labels"):
        model(x, torch.ones(2))


@pytest.mark.parametrize("name", ["ring", "checkerboard"])
def test_isotropic_fast_path_equals_general_path(name):
    # The presets with isotropic components take the (B, K) fast path; the general eigen-basis path is the oracle.
    mix = get_mixture(name)
    assert mix.isotropic
    x = torch.randn(300, 2, dtype=torch.float64) * 2
    m = torch.rand(300, dtype=torch.float64)
    s = torch.rand(300, dtype=torch.float64) + 0.01
    fast_score, fast_logp = mix.perturbed_score(x, m, s), mix.perturbed_log_prob(x, m, s)
    mix.isotropic = False
    torch.testing.assert_close(fast_score, mix.perturbed_score(x, m, s), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast_logp, mix.perturbed_log_prob(x, m, s), rtol=1e-12, atol=1e-12)
