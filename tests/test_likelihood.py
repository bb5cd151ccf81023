"""Probability-flow ODE likelihood (fastsde.likelihood) and ODE sampler checked against closed forms.

Ground truth. With the exact score of p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + s^2 I) (AnalyticScoreModel), the
probability-flow ODE transports p_eps to p_T exactly, so for z = flow(x) from eps to T

    log p_eps(x) = log p_T(z) + int_eps^T div F(x(t), t) dt.                                            (*)

likelihood_fn returns bpd = -(prior_logp(z) + delta_logp) / (D ln 2) + 8 (inverse_scaler = identity, so the
dequantization offset is 7 - (-1) = 8). Compared with the exact -log p_eps(x) / (D ln 2) + 8 the only modelling
error is the prior mismatch log p_T(z) - prior_logp(z), which we compute exactly from the mixture
("corrected" value below) and also bound, so the tests assert both
  * |bpd - corrected| (solver + float32 error only), tight, and
  * |bpd - exact -log p_eps| < 0.01 bits/dim, the end-to-end property.

Gaussian data, one component N(mu, Sigma = U diag(lam) U^T). The drift is linear in x,
F(x, t) = f(t) x + g(t)^2 / 2 (m^2 Sigma + s^2 I)^{-1} (x - m mu), so its Jacobian J(t) = U diag(j_i(t)) U^T does not
depend on x. Every SDE here satisfies d(s^2)/dt = 2 f s^2 + g^2, hence v_i(t) = m^2 lam_i + s^2 obeys
dv_i/dt = 2 f v_i + g^2 and j_i = f + g^2 / (2 v_i) = (d/dt log v_i) / 2. Therefore
  * the flow is y_i(t) = m(t) (U^T mu)_i + sqrt(v_i(t) / v_i(eps)) (U^T x - m(eps) U^T mu)_i in eigen-coordinates;
  * int_eps^T J dt = A := U diag(a) U^T with a_i = log(v_i(T) / v_i(eps)) / 2, and tr A = log p_eps(x) - log p_T(z);
  * the Hutchinson estimate with probe e is exactly e^T A e (the probe is fixed along the trajectory).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastsde import sde as sde_lib
from fastsde.likelihood import HUTCHINSON_TYPES, dequantize, get_likelihood_fn
from fastsde.models.analytic import AnalyticScoreModel, GaussianMixture, isotropic_gaussian
from fastsde.sampling import get_ode_sampler

LN2 = math.log(2.0)
LIK_EPS = 1e-5  # get_likelihood_fn's default eps


def identity(x):
    return x


def _sdes():
    # beta_max = 40 (not the default 20) puts the VP/subVP marginal mean at T at exp(-10) ~ 4.5e-5 (x its data),
    # so p_T = N(0, I) to within ~1e-4 nats; with the default 20 the mean coefficient is exp(-5) ~ 6.6e-3 and the
    # mismatch is ~2e-3 bits/dim for |mu| ~ 0.5 (measured) -- still under 0.01, but not "far below".
    # VE: p_T = N(mu, Sigma + sigma_max^2 I) against the prior N(0, sigma_max^2 I). The log-ratio at z is dominated by
    # z.mu / sigma_max^2 ~ |z / sigma_max| |mu| / sigma_max: with |mu| <= 0.5 and |z| up to ~3 sigma_max that is
    # <~ 1.5e-3 nats per dim at sigma_max = 1000 (measured: 2.1e-3 bits/dim at sigma_max = 200, ~4e-4 at 1000).
    return {
        "vp": lambda: sde_lib.VPSDE(beta_min=0.1, beta_max=40.0),
        "subvp": lambda: sde_lib.subVPSDE(beta_min=0.1, beta_max=40.0),
        "ve": lambda: sde_lib.VESDE(sigma_min=0.01, sigma_max=1000.0),
    }


SDES = _sdes()

# Diagonal 3-D Gaussian (variances spread on both sides of 1, so the VP divergence integral is not ~0) and the
# 2-D full-covariance "gaussian" preset (mean (0.5, -0.3), cov [[0.5, 0.2], [0.2, 0.3]]).
DIAG = dict(weights=[1.0], means=[[0.5, -0.3, 0.2]], covs=[[0.5, 2.0, 1.3]])
FULL = dict(weights=[1.0], means=[[0.5, -0.3]], covs=[[[0.5, 0.2], [0.2, 0.3]]])


def coefs(sde, t: float):
    """(mean coefficient m, std s) of the SDE marginal at time t, float64, from sde.marginal_prob."""
    m, s = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), torch.tensor([t], dtype=torch.float64))
    return float(m[0, 0]), float(s[0])


def exact_bpd(sde, mix, x, z, eps=LIK_EPS):
    """(exact, corrected) bits/dim (B,) float64.

    exact = -log p_eps(x) / (D ln 2) + 8: the true value. corrected = what (*) predicts the method returns given its z:
    -(log p_eps(x) - log p_T(z) + prior_logp(z)) / (D ln 2) + 8, i.e. exact with the prior mismatch put back in.
    """
    D = x[0].numel()
    m_eps, s_eps = coefs(sde, eps)
    m_T, s_T = coefs(sde, sde.T)
    lp_eps = mix.perturbed_log_prob(x.double(), m_eps, s_eps)
    lp_T = mix.perturbed_log_prob(z.double(), m_T, s_T)
    exact = -lp_eps / (D * LN2) + 8.0
    corrected = -(lp_eps - lp_T + sde.prior_logp(z.double())) / (D * LN2) + 8.0
    return exact, corrected


def gaussian_flow(sde, mix, eps=LIK_EPS):
    """For a one-component mixture: (A (D, D), pushforward x -> z) of the probability-flow ODE from eps to T."""
    assert mix.num_components == 1
    lam = mix._eigvals[0]
    U = torch.eye(mix.dim, dtype=torch.float64) if mix.diagonal else mix._eigvecs[0]
    mu = mix.means[0]
    m_eps, s_eps = coefs(sde, eps)
    m_T, s_T = coefs(sde, sde.T)
    v_eps = m_eps**2 * lam + s_eps**2
    v_T = m_T**2 * lam + s_T**2
    a = 0.5 * torch.log(v_T / v_eps)
    A = U @ torch.diag(a) @ U.T

    def push(x):
        y = (x.double() - m_eps * mu) @ U
        return (m_T * mu @ U + torch.sqrt(v_T / v_eps) * y) @ U.T

    return A, push


def assert_push_close(z, z_exact, rel=1e-4):
    """z matches the closed-form pushforward to rel of its scale (the solver's rtol = 1e-5 accumulates over the
    flow; VE's z is O(sigma_max) = O(1000), VP's O(1))."""
    err = (z.double() - z_exact).abs().max()
    assert err <= rel * max(1.0, float(z_exact.abs().max())), err


def run_likelihood(sde, mix, x, hutchinson_type="Rademacher", seed=0, **kwargs):
    model = AnalyticScoreModel(mix, sde, continuous=True)
    gen = torch.Generator().manual_seed(seed)
    fn = get_likelihood_fn(sde, identity, hutchinson_type=hutchinson_type, generator=gen, **kwargs)
    bpd, z, nfe = fn(model, x)
    return bpd.double(), z, nfe


def gaussian_data(spec, n, seed):
    mix = GaussianMixture(**spec)
    return mix, mix.sample(n, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------
# 1. Exactness on Gaussian data
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_gaussian_diag_rademacher_is_exact(sde_name):
    """Diagonal Sigma: J(t) is diagonal and e_i^2 = 1 for Rademacher e, so e^T J e = sum_i J_ii e_i^2 = tr J for
    every probe: the estimator has zero variance and bpd equals the exact value up to ODE/float32 error."""
    sde = SDES[sde_name]()
    mix, x = gaussian_data(DIAG, 5, seed=1)
    bpd, z, nfe = run_likelihood(sde, mix, x, "Rademacher", seed=0)
    exact, corrected = exact_bpd(sde, mix, x, z)
    A, push = gaussian_flow(sde, mix)

    # The test's own closed forms agree with each other (change of variables along the exact flow):
    # tr A = log p_eps(x) - log p_T(push(x)).
    lp_eps = mix.perturbed_log_prob(x.double(), *coefs(sde, LIK_EPS))
    lp_T = mix.perturbed_log_prob(push(x), *coefs(sde, sde.T))
    assert torch.allclose(lp_eps - lp_T, torch.trace(A).expand(5), rtol=1e-9, atol=1e-9)
    # z is the exact pushforward
    z_exact = push(x)
    assert_push_close(z, z_exact)
    # prior mismatch is far below 0.01 bits/dim for these parameters
    assert (exact - corrected).abs().max() < 2e-3
    # the method's only error is the ODE solve (measured ~2e-5 bits/dim)
    assert (bpd - corrected).abs().max() < 5e-4, (bpd - corrected).abs().max()
    assert (bpd - exact).abs().max() < 0.01, (bpd - exact).abs().max()
    # Rademacher is exact here, so a different probe gives the same numbers (up to solver noise)
    bpd2, _, _ = run_likelihood(sde, mix, x, "Rademacher", seed=123)
    assert (bpd2 - bpd).abs().max() < 1e-4


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_gaussian_per_probe_value_is_eTAe(sde_name):
    """For Gaussian data the estimate with probe e is exactly e^T A e; checked per probe for Gaussian probes (diagonal
    Sigma) and both probe types (full Sigma). The probe is recomputed from the same seed: likelihood_fn draws it as
    torch.randn(data.shape, generator=g) / torch.randint(0, 2, data.shape, generator=g) * 2 - 1 (its documented
    `generator draws the probe`; this test depends on that draw order).

    This is how the Gaussian-probe estimator is verified under VE: A has eigenvalues a_i ~ log(sigma_max / sqrt(lam))
    ~ 7, so the per-probe std sqrt(2 sum a_i^2) / (D ln 2) is ~8 bits/dim (measured spread up to 22 bits/dim from
    exact) and averaging to 0.01 with a 5-sigma margin would need ~(5 * 8 / 0.01)^2 ~ 1.6e7 probes.
    """
    sde = SDES[sde_name]()
    cases = [(DIAG, "Gaussian"), (FULL, "Gaussian"), (FULL, "Rademacher")]
    for spec, htype in cases:
        mix, x = gaussian_data(spec, 64, seed=2)
        seed = 7
        bpd, z, _ = run_likelihood(sde, mix, x, htype, seed=seed)
        A, push = gaussian_flow(sde, mix)
        g = torch.Generator().manual_seed(seed)
        if htype == "Gaussian":
            e = torch.randn(x.shape, generator=g, dtype=torch.float32).double()
        else:
            e = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).double()
        D = x.shape[1]
        quad = torch.einsum("bi,ij,bj->b", e, A, e)
        predicted = -(sde.prior_logp(z.double()) + quad) / (D * LN2) + 8.0
        err = (bpd - predicted).abs().max()
        assert err < 5e-4, (htype, spec is DIAG, err)
        assert_push_close(z, push(x))


def test_gaussian_full_cov_rademacher_two_point_mean_is_exact():
    """2-D full covariance, Rademacher, black-box: e^T A e = tr A + 2 e_1 e_2 A_12 takes the two values
    tr A +- 2 A_12 with probability 1/2 each, so bpd over probes is a two-point distribution around the exact value
    (its mean) with half-width 2 |A_12| / (D ln 2). Replicas of one point in a batch get independent probes."""
    for sde_name in ("vp", "ve"):
        sde = SDES[sde_name]()
        mix, x = gaussian_data(FULL, 3, seed=3)
        R = 40
        xr = x.repeat_interleave(R, 0)
        bpd, z, _ = run_likelihood(sde, mix, xr, "Rademacher", seed=11)
        exact, corrected = exact_bpd(sde, mix, xr, z)
        A, _ = gaussian_flow(sde, mix)
        half = 2 * abs(float(A[0, 1])) / (2 * LN2)
        assert half > 0.05  # the off-diagonal term is not negligible: the test can tell the two values apart
        for i in range(3):
            b, c = bpd[i * R:(i + 1) * R], corrected[i * R]
            lo, hi = b.min(), b.max()
            assert abs(float(lo - (c - half))) < 5e-4 and abs(float(hi - (c + half))) < 5e-4
            assert ((b - lo).abs().minimum((b - hi).abs()) < 5e-4).all()  # only those two values occur
            mid = (lo + hi) / 2  # the expectation over the probe distribution
            assert abs(float(mid - c)) < 5e-4
            assert abs(float(mid - exact[i * R])) < 0.01


def test_gaussian_probes_average_to_exact_vp():
    """Gaussian probes, VP, diagonal Sigma: the mean of K estimates is within 0.01 bits/dim of the exact value.

    Var(e^T A e) = 2 ||A||_F^2 for e ~ N(0, I) (A symmetric), so the per-probe std in bits/dim is
    sigma = sqrt(2 sum a_i^2) / (D ln 2), a_i ~ -log(lam_i) / 2. Variances (0.7, 1.5, 1.2) give a ~ (0.18, -0.20,
    -0.09) nats and sigma ~ 0.19 bits/dim (DIAG's (0.5, 2.0, 1.3) would give 0.345 and need 3x the probes). With
    K = 2 seeds x 6000 replicas = 12000 probes the mean's std is sigma / sqrt(K) ~ 1.8e-3: 0.01 is > 5 of those
    (asserted; the ODE error, ~2e-5, is negligible), so the bound holds for any seed with probability ~1 - 1e-7, not
    just for the fixed ones. Replicating the point in the batch gives each copy its own probe in one ODE solve.
    One data point: the per-probe test above covers many points and larger A.
    """
    sde = SDES["vp"]()
    mix, x = gaussian_data(dict(weights=[1.0], means=[[0.5, -0.3, 0.2]], covs=[[0.7, 1.5, 1.2]]), 1, seed=4)
    A, _ = gaussian_flow(sde, mix)
    D = x.shape[1]
    sigma = math.sqrt(2 * float((A**2).sum())) / (D * LN2)
    R, seeds = 6000, (0, 1)
    K = R * len(seeds)
    assert 5 * sigma / math.sqrt(K) < 0.01, sigma
    xr = x.repeat_interleave(R, 0)
    means = []
    for seed in seeds:
        bpd, z, _ = run_likelihood(sde, mix, xr, "Gaussian", seed=seed)
        means.append(bpd.view(1, R).mean(dim=1))
        # the spread across probes is the predicted one (checks the probes really are N(0, I) and independent)
        std = bpd.view(1, R).std(dim=1)
        assert ((std - sigma).abs() < 0.05 * sigma).all(), (std, sigma)
    mean = torch.stack(means).mean(dim=0)
    exact, _ = exact_bpd(sde, mix, x, z[::R])
    assert (mean - exact).abs().max() < 0.01, (mean - exact)


# --------------------------------------------------------------------------------------------------------------
# 2. Non-Gaussian: a 2-component mixture in 2-D
# --------------------------------------------------------------------------------------------------------------

MIX2 = dict(weights=[0.35, 0.65], means=[[-1.0, 0.6], [0.9, -0.4]], covs=[[0.3, 0.6], [0.5, 0.2]])


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_mixture_2d_rademacher(sde_name):
    """The Jacobian of a mixture score is not diagonal (responsibilities couple the coordinates), so Rademacher is
    only unbiased: in 2-D its estimate is T(x) + e_1 e_2 C(x) with T the exact divergence integral (the x path does
    not depend on e). The probe mean is therefore the midpoint of the two values that occur; and a plain average
    over K probes has std |C| / (D ln 2 sqrt(K))."""
    sde = SDES[sde_name]()
    mix = GaussianMixture(**MIX2)
    x = mix.sample(4, generator=torch.Generator().manual_seed(2))
    R = 1000
    xr = x.repeat_interleave(R, 0)
    bpd, z, nfe = run_likelihood(sde, mix, xr, "Rademacher", seed=5)
    exact, corrected = exact_bpd(sde, mix, xr, z)
    assert (exact - corrected).abs().max() < 2e-3  # prior mismatch
    b = bpd.view(4, R)
    lo, hi = b.min(dim=1).values, b.max(dim=1).values
    assert ((b - lo[:, None]).abs().minimum((b - hi[:, None]).abs()) < 5e-4).all()  # a two-point distribution
    mid = (lo + hi) / 2
    assert (mid - corrected[::R]).abs().max() < 5e-4
    assert (mid - exact[::R]).abs().max() < 0.02
    # Plain sample mean over R probes, with tolerance from the measured spread: 4 std of the mean, |C| / (D ln 2)
    # being the measured half-spread. The half-spreads here are 0.06 - 0.52 bits/dim, so 0.02 at 4 std would need
    # up to ~11000 probes for the worst point; assert the justified bound, and 0.02 where that bound is tighter.
    half = (hi - lo) / 2
    tol = 4 * half / math.sqrt(R) + 5e-4
    err = (b.mean(dim=1) - exact[::R]).abs()
    assert (err < tol).all(), (err, tol)
    assert (err[tol < 0.02] < 0.02).all()
    # round trip: the ODE sampler from z at T back to eps recovers x
    sampler = get_ode_sampler(sde, tuple(x.shape), identity, eps=LIK_EPS)
    x_back, _ = sampler(AnalyticScoreModel(mix, sde), z=z[::R])
    assert torch.allclose(x_back, x, atol=2e-4), (x_back - x).abs().max()


# --------------------------------------------------------------------------------------------------------------
# 3. API
# --------------------------------------------------------------------------------------------------------------


def test_api_shapes_nfe_and_errors():
    sde = SDES["vp"]()
    mix, x = gaussian_data(DIAG, 4, seed=6)
    bpd, z, nfe = run_likelihood(sde, mix, x)
    assert bpd.shape == (4,) and z.shape == x.shape
    assert isinstance(nfe, int) and 20 <= nfe <= 2000

    # rank > 2: (B, 1, 2, 2) data of a 4-D diagonal Gaussian gives the same numbers as the flat (B, 4) data
    mix4, x4 = gaussian_data(dict(weights=[1.0], means=[[0.1, 0.2, -0.3, 0.0]], covs=[[0.5, 1.5, 1.0, 0.8]]), 3, 7)
    bpd_flat, z_flat, _ = run_likelihood(sde, mix4, x4)
    bpd_img, z_img, _ = run_likelihood(sde, mix4, x4.reshape(3, 1, 2, 2))
    assert z_img.shape == (3, 1, 2, 2) and bpd_img.shape == (3,)
    assert torch.allclose(bpd_img, bpd_flat, atol=1e-6) and torch.allclose(z_img.reshape(3, 4), z_flat, atol=1e-5)

    with pytest.raises(ValueError) as info:
        get_likelihood_fn(sde, identity, hutchinson_type="rademacher")
    for name in HUTCHINSON_TYPES:
        assert name in str(info.value)
    assert set(HUTCHINSON_TYPES) == {"Rademacher", "Gaussian"}
    fn = get_likelihood_fn(sde, identity)
    model = AnalyticScoreModel(mix, sde)
    with pytest.raises(ValueError, match="rank"):
        fn(model, x[0])


def test_offset_follows_inverse_scaler():
    """bpd offset is 7 - inverse_scaler(-1): data centred in [-1, 1] (inverse_scaler (x + 1) / 2) reads 1 lower."""
    sde = SDES["vp"]()
    mix, x = gaussian_data(DIAG, 3, seed=8)
    model = AnalyticScoreModel(mix, sde)
    a, _, _ = get_likelihood_fn(sde, identity, generator=torch.Generator().manual_seed(0))(model, x)
    b, _, _ = get_likelihood_fn(sde, lambda v: (v + 1) / 2, generator=torch.Generator().manual_seed(0))(model, x)
    assert torch.allclose(a - b, torch.ones(3), atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# 4. ODE sampler: VE on N(mu, s0^2 I) is a linear flow
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-3, 0.3])
def test_ode_sampler_ve_gaussian_pushforward_and_denoise(eps):
    """VE: f = 0, p_t = N(mu, (s0^2 + sigma(t)^2) I) and g^2 = d sigma^2 / dt, so the flow
    dx/dt = (g^2 / 2) (x - mu) / (s0^2 + sigma^2) keeps w = (x - mu) / sqrt(s0^2 + sigma(t)^2) constant:
    x_eps = mu + sqrt((s0^2 + sigma(eps)^2) / (s0^2 + sigma_max^2)) (z - mu).
    denoise = one reverse-diffusion mean step at eps: x + G^2 score(x, eps) with G^2 = sigma_i^2 - sigma_{i-1}^2,
    i = floor(eps (N - 1)) into the geometric table (sigma_{-1} = 0)."""
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
    mu = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
    s0 = 0.7
    model = AnalyticScoreModel(isotropic_gaussian(3, mu, s0), sde)
    shape = (5, 3)
    z = mu + 50.0 * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma_eps = 0.01 * (50.0 / 0.01) ** eps
    x_exact = mu + math.sqrt((s0**2 + sigma_eps**2) / (s0**2 + 50.0**2)) * (z - mu)

    x, nfe = get_ode_sampler(sde, shape, identity, eps=eps)(model, z=z.float())
    assert x.shape == shape and 20 <= nfe <= 2000
    assert (x.double() - x_exact).abs().max() < 2e-4  # measured ~1.5e-5 at rtol = atol = 1e-5 in float32
    # converges to the closed form as the tolerance is tightened (float64 state)
    x_tight, _ = get_ode_sampler(sde, shape, identity, eps=eps, rtol=1e-9, atol=1e-9, dtype=torch.float64)(model, z=z)
    assert (x_tight - x_exact).abs().max() < 1e-6

    x_den, nfe_den = get_ode_sampler(sde, shape, identity, eps=eps, denoise=True)(model, z=z.float())
    assert nfe_den == nfe + 1
    i = int(eps * 999)  # 0 for eps = 1e-3, 299 for eps = 0.3
    sig = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), 1000, dtype=torch.float64))
    G2 = sig[i] ** 2 - (sig[i - 1] ** 2 if i > 0 else 0.0)
    score = -(x.double() - mu) / (s0**2 + sigma_eps**2)
    step_expected = G2 * score  # x_mean - x = -rev_f = G^2 score (f = 0 for VE)
    assert step_expected.abs().max() > 5e-5  # a visible step: G^2 = 1e-4 at eps = 1e-3, ~0.03 at eps = 0.3
    step = x_den.double() - x.double()
    assert torch.allclose(step, step_expected, rtol=1e-2, atol=1e-6), (step - step_expected).abs().max()


# --------------------------------------------------------------------------------------------------------------
# 5. Reproducibility
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("htype", HUTCHINSON_TYPES)
def test_reproducible_and_global_rng_matches_generator(htype):
    sde = SDES["vp"]()
    mix = GaussianMixture(**MIX2)  # non-diagonal Jacobian: the result depends on the probe
    x = mix.sample(6, generator=torch.Generator().manual_seed(9))
    model = AnalyticScoreModel(mix, sde)

    def with_seed(seed):
        return get_likelihood_fn(sde, identity, htype, generator=torch.Generator().manual_seed(seed))(model, x)[0]

    a, b, c = with_seed(3), with_seed(3), with_seed(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # generator=None draws the probe from torch's global generator (score_sde's behaviour), as its first draw
    torch.manual_seed(3)
    g_none = get_likelihood_fn(sde, identity, htype)(model, x)[0]
    assert torch.equal(g_none, a)


# --------------------------------------------------------------------------------------------------------------
# 6. Integrators, probes per datum, the exact trace, score_sde's way
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_trace_and_probe_types_against_exact_logp(sde_name):
    """The 2-component mixture (a Jacobian that is neither diagonal nor constant): the exact trace gives the exact
    bits/dim up to the ODE error for every SDE; Rademacher and Gaussian probes (8 per datum, one forward and 8 VJPs
    per evaluation) are unbiased around it within 5 of their reported standard errors."""
    sde = SDES[sde_name]()
    mix = GaussianMixture(**MIX2)
    model = AnalyticScoreModel(mix, sde)
    x = mix.sample(3, generator=torch.Generator().manual_seed(12))
    r = get_likelihood_fn(sde, identity, "exact")(model, x, details=True)
    exact, corrected = exact_bpd(sde, mix, x, r.z)
    assert (r.bpd.double() - corrected).abs().max() < 5e-4
    assert (r.bpd.double() - exact).abs().max() < 0.01
    assert r.bpd_stderr is None and r.bpd_probes.shape == (3, 1)
    for htype in HUTCHINSON_TYPES:
        fn = get_likelihood_fn(sde, identity, htype, probes=8, generator=torch.Generator().manual_seed(1))
        h = fn(model, x, details=True)
        assert h.bpd_probes.shape == (3, 8) and h.bpd_stderr.shape == (3,)
        assert torch.allclose(h.bpd.double(), h.bpd_probes.mean(1))
        assert (h.bpd_stderr > 0).all()
        assert ((h.bpd.double() - r.bpd.double()).abs() < 5 * h.bpd_stderr + 5e-4).all(), htype
        assert torch.allclose(h.z, r.z, atol=1e-4 * max(1.0, float(r.z.abs().max())))  # one x path per datum


def test_several_probes_are_each_eTAe():
    """Gaussian data, P = 5 probes per datum given explicitly as (B, P, D): column p of bpd_probes is
    e_p^T A e_p's bits/dim, and the reported standard error is their spread / sqrt(P)."""
    sde = SDES["vp"]()
    mix, x = gaussian_data(FULL, 4, seed=5)
    model = AnalyticScoreModel(mix, sde)
    probe = torch.randn(4, 5, 2, generator=torch.Generator().manual_seed(3))
    r = get_likelihood_fn(sde, identity, "Gaussian", probes=5)(model, x, probe, details=True)
    A, _ = gaussian_flow(sde, mix)
    quad = torch.einsum("bpi,ij,bpj->bp", probe.double(), A, probe.double())
    predicted = -(sde.prior_logp(r.z.double())[:, None] + quad) / (2 * LN2) + 8.0
    assert (r.bpd_probes - predicted).abs().max() < 5e-4
    assert torch.allclose(r.bpd_stderr, r.bpd_probes.std(1) / math.sqrt(5))
    with pytest.raises(ValueError, match=r"probe must have shape \(4, 5, 2\)"):
        get_likelihood_fn(sde, identity, probes=5)(model, x, probe[:, :4])
    with pytest.raises(ValueError, match="probes must be"):
        get_likelihood_fn(sde, identity, "exact", probes=2)


def _scoresde_likelihood(sde, model, data, probe, rtol=1e-5, atol=1e-5, eps=1e-5):
    """score_sde's likelihood.py as written (in our words): scipy RK45 on [x of every datum, logp] as one float64
    vector, the drift from a no-grad forward, the divergence from a second, recorded forward and one VJP."""
    from scipy import integrate

    from fastsde.flow import pf_drift

    b = data.shape[0]
    drift = pf_drift(sde, model)

    def rhs(t, v):
        x = torch.from_numpy(v[:-b].reshape(data.shape)).float()
        vt = torch.ones(b) * t
        with torch.no_grad():
            dx = drift(x, vt)
        with torch.enable_grad():
            xg = x.requires_grad_(True)
            (g,) = torch.autograd.grad((drift(xg, vt) * probe).sum(), xg)
        return np.concatenate([dx.numpy().reshape(-1), (g * probe).reshape(b, -1).sum(1).numpy()])

    init = np.concatenate([data.double().numpy().reshape(-1), np.zeros(b)])
    sol = integrate.solve_ivp(rhs, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    z = torch.from_numpy(sol.y[:-b, -1].reshape(data.shape)).float()
    dlogp = torch.from_numpy(sol.y[-b:, -1]).float()
    bpd = -(sde.prior_logp(z) + dlogp) / np.log(2) / data[0].numel() + 7.0 - identity(-1.0)
    return bpd, sol.nfev


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_scipy_method_is_score_sdes_likelihood_and_rk45_agrees(sde_name):
    """method="scipy:RK45" (and the compat layer's default) reproduces score_sde's likelihood with the same probe:
    the same evaluations and bits/dim; the on-device RK45 gives the same bits/dim within the tolerance's reach,
    evaluation counts side by side."""
    from fastsde.compat.score_sde import likelihood as compat

    sde = SDES[sde_name]()
    mix = GaussianMixture(**MIX2)
    model = AnalyticScoreModel(mix, sde)
    x = mix.sample(4, generator=torch.Generator().manual_seed(8))
    probe = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(2)).float() * 2 - 1
    want, nfe_want = _scoresde_likelihood(sde, model, x, probe)
    got, _, nfe_got = get_likelihood_fn(sde, identity, method="scipy:RK45")(model, x, probe)
    assert nfe_got == nfe_want and (got - want).abs().max() < 1e-5
    got_c, _, nfe_c = compat.get_likelihood_fn(sde, identity)(model, x, probe)
    assert nfe_c == nfe_want and (got_c - want).abs().max() < 1e-5
    r = get_likelihood_fn(sde, identity)(model, x, probe, details=True)
    assert (r.bpd - want).abs().max() < 1e-3
    print(f"{sde_name}: evaluations scipy RK45 (whole batch) {nfe_want}, fastsde RK45 per datum "
          f"{r.row_evals.tolist()} ({r.nfe} batched)")


def test_fixed_grid_converges_to_the_tight_value():
    sde = SDES["vp"]()
    mix = GaussianMixture(**MIX2)
    model = AnalyticScoreModel(mix, sde)
    x = mix.sample(3, generator=torch.Generator().manual_seed(9))
    tight = get_likelihood_fn(sde, identity, "exact", rtol=1e-7, atol=1e-7, dtype=torch.float64)(model, x.double())[0]
    errs = []
    for steps in (4, 16):
        bpd, _, nfe = get_likelihood_fn(sde, identity, "exact", method="fixed", steps=steps,
                                        dtype=torch.float64)(model, x.double())
        assert nfe == 1 + 6 * steps
        errs.append(float((bpd - tight).abs().max()))
    assert errs[1] < 1e-3 and errs[1] < errs[0], errs


def test_dequantize_is_score_sdes():
    images = torch.tensor([[[[0.0, 1.0], [128 / 255, 3 / 255]]]])
    d = dequantize(images, torch.Generator().manual_seed(0))
    assert ((d * 256 - images * 255) >= 0).all() and ((d * 256 - images * 255) < 1).all()


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_rk45_in_sqrt_t_is_exact_and_agrees_with_rk45(sde_name):
    """method="RK45-sqrt" (the same integrator in u = sqrt(t)) lands on the exact bits/dim and pushforward of
    Gaussian data, and on RK45's values for a two-component mixture at a tight tolerance; the sampler and encode
    take it too."""
    sde = SDES[sde_name]()
    mix, x = gaussian_data(DIAG, 5, seed=1)
    bpd, z, nfe = run_likelihood(sde, mix, x, "Rademacher", seed=0, method="RK45-sqrt")
    _, corrected = exact_bpd(sde, mix, x, z)
    assert (bpd - corrected).abs().max() < 5e-4, (bpd - corrected).abs().max()
    _, push = gaussian_flow(sde, mix)
    assert_push_close(z, push(x))
    mix2 = GaussianMixture(**MIX2)
    model = AnalyticScoreModel(mix2, sde)
    x2 = mix2.sample(3, generator=torch.Generator().manual_seed(9)).double()
    got = {m: get_likelihood_fn(sde, identity, "exact", rtol=1e-8, atol=1e-8, dtype=torch.float64, method=m)(
        model, x2)[0] for m in ("RK45", "RK45-sqrt")}
    assert (got["RK45"] - got["RK45-sqrt"]).abs().max() < 1e-5, got
    from fastsde import flow
    zs = {m: flow.encode(sde, model, x2, rtol=1e-8, atol=1e-8, method=m)[0] for m in ("RK45", "RK45-sqrt")}
    assert (zs["RK45"] - zs["RK45-sqrt"]).abs().max() < 1e-5
