"""SDEs against their definitions: marginals vs Monte Carlo, discretizations, reverse SDEs, priors, any rank."""
import math

import pytest
import torch

from fastsde import sde as sde_lib

SDES = {
    "vp": lambda N=1000: sde_lib.VPSDE(0.1, 20.0, N),
    "subvp": lambda N=1000: sde_lib.subVPSDE(0.1, 20.0, N),
    "ve": lambda N=1000: sde_lib.VESDE(0.01, 50.0, N),
}


def _t(v, n=1, dtype=torch.float64):
    return torch.full((n,), v, dtype=dtype)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("t_end", [0.3, 0.8])
def test_marginal_matches_monte_carlo_of_forward_sde(name, t_end):
    # Euler–Maruyama of the forward SDE from a fixed x0; 2000 fine steps keep the discretization bias far
    # below the Monte-Carlo error bound used (4 standard errors).
    sde = SDES[name]()
    n, steps = 20000, 2000
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([1.5, -0.7], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    dt = t_end / steps
    for k in range(steps):
        t = _t(k * dt, n)
        f, diff = sde.sde(x, t)
        x = x + f * dt + diff[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0[None], _t(t_end))
    emp_mean, emp_std = x.mean(0), x.std(0)
    se = std.item() / math.sqrt(n)
    assert torch.all((emp_mean - mean[0]).abs() < 4 * se + 2e-3 * std.item()), (emp_mean, mean)
    assert torch.all((emp_std / std - 1).abs() < 4 / math.sqrt(2 * n) + 5e-3), (emp_std, std)


@pytest.mark.parametrize("name", SDES)
def test_discrete_chain_reaches_marginal_at_grid_points(name):
    # The DDPM/SMLD chains are exact at grid points: x_i has mean coef sqrt(alphas_cumprod[i]) (VP) or 1 (VE)
    # and variance 1 - alphas_cumprod[i] (VP) or sigma_i^2 (VE). subVP uses base Euler–Maruyama: compare with
    # its continuous marginal with a discretization allowance.
    N, i_end, n = 200, 120, 20000
    sde = SDES[name](N)
    g = torch.Generator().manual_seed(2)
    x = torch.full((n, 1), 0.8, dtype=torch.float64)
    for i in range(i_end + 1):
        t = _t(i / (N - 1), n)
        f, G = sde.discretize(x, t)
        x = x + f + G[:, None] * torch.randn(x.shape, generator=g, dtype=torch.float64)
    t_end = _t(i_end / (N - 1))
    if name == "vp":
        m = sde.sqrt_alphas_cumprod[i_end].double()
        s = sde.sqrt_1m_alphas_cumprod[i_end].double()
        tol = 0.0
    elif name == "ve":
        m, s = 1.0, sde.discrete_sigmas[i_end].double()
        tol = 0.0
    else:
        mean, s = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), t_end)
        m, s, tol = mean.item(), s.item(), 0.03
    assert abs(x.mean().item() - 0.8 * float(m)) < 4 * float(s) / math.sqrt(n) + tol
    assert abs(x.std().item() / float(s) - 1) < 4 / math.sqrt(2 * n) + tol


def test_discretize_formulas():
    x = torch.randn(5, 3, 4, dtype=torch.float64) + 0.3
    t = torch.tensor([0.0, 0.001, 0.5, 0.77, 1.0], dtype=torch.float64)
    vp = sde_lib.VPSDE(0.1, 20, 1000)
    i = (t * 999).long()
    beta = vp.discrete_betas[i].double()
    f, G = vp.discretize(x, t)
    torch.testing.assert_close(f, (torch.sqrt(1 - beta)[:, None, None] - 1) * x, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(G.double(), torch.sqrt(beta), rtol=1e-6, atol=0)
    assert torch.allclose(vp.discrete_betas, torch.linspace(0.1 / 1000, 20 / 1000, 1000))

    ve = sde_lib.VESDE(0.01, 50, 1000)
    sig = ve.discrete_sigmas.double()
    prev = torch.where(i == 0, torch.zeros_like(t), sig[(i - 1).clamp(min=0)])
    f, G = ve.discretize(x, t)
    assert torch.all(f == 0)
    torch.testing.assert_close(G.double(), torch.sqrt(sig[i] ** 2 - prev**2), rtol=1e-5, atol=0)
    assert G[0] == pytest.approx(0.01, rel=1e-5)  # i = 0: sigma_prev = 0

    sub = sde_lib.subVPSDE(0.1, 20, 1000)
    f, G = sub.discretize(x, t)
    drift, diffusion = sub.sde(x, t)
    torch.testing.assert_close(f, drift / 1000)
    torch.testing.assert_close(G, diffusion * math.sqrt(1 / 1000))


def test_time_grid_indexing_is_exact():
    # REFERENCE_MATH: timesteps = linspace(T, eps, N) in float32; with N = 1000, long(t_k * 999) = 999 - k.
    sde = sde_lib.VPSDE(N=1000)
    ts = torch.linspace(1.0, 1e-3, 1000)
    assert torch.equal(sde.timestep(ts), torch.arange(999, -1, -1))


@pytest.mark.parametrize("name", SDES)
def test_marginal_formulas(name):
    sde = SDES[name]()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    x = torch.ones(3, 2, dtype=torch.float64)
    mean, std = sde.marginal_prob(x, t)
    if name == "ve":
        torch.testing.assert_close(std, 0.01 * (50 / 0.01) ** t)
        torch.testing.assert_close(mean, x)
    else:
        integral = 0.1 * t + 0.5 * t**2 * (20 - 0.1)  # int_0^t beta
        torch.testing.assert_close(mean[:, 0], torch.exp(-0.5 * integral))
        var = 1 - torch.exp(-integral)
        expected = var if name == "subvp" else torch.sqrt(var)  # subVP: std = 1 - exp(2 lmc) by definition
        torch.testing.assert_close(std, expected)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("pf", [False, True])
def test_reverse_sde(name, pf):
    sde = SDES[name]()
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=torch.float64)

    def score_fn(x, t):
        return -x * (1 + t[:, None, None, None]) + 0.25

    rsde = sde.reverse(score_fn, probability_flow=pf)
    w = 0.5 if pf else 1.0
    f, g = sde.sde(x, t)
    drift, diffusion = rsde.sde(x, t)
    torch.testing.assert_close(drift, f - g[:, None, None, None] ** 2 * score_fn(x, t) * w)
    torch.testing.assert_close(diffusion, torch.zeros_like(g) if pf else g)
    fd, G = sde.discretize(x, t)
    rev_f, rev_G = rsde.discretize(x, t)
    torch.testing.assert_close(rev_f, fd - G[:, None, None, None] ** 2 * score_fn(x, t) * w)
    torch.testing.assert_close(rev_G, torch.zeros_like(G) if pf else G)
    assert rsde.N == sde.N and rsde.T == sde.T


@pytest.mark.parametrize("name", SDES)
def test_prior_logp_and_sampling(name):
    sde = SDES[name]()
    z = sde.prior_sampling((4000, 3, 2)).double()
    scale = 50.0 if name == "ve" else 1.0
    assert abs(z.std().item() / scale - 1) < 0.03
    ref = torch.distributions.Normal(0.0, scale).log_prob(z).sum(dim=(1, 2))
    torch.testing.assert_close(sde.prior_logp(z), ref)
    torch.testing.assert_close(sde.prior_from_normal(torch.ones(2, 2)), torch.full((2, 2), scale))


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("shape", [(3, 2), (3, 5, 1), (3, 2, 4, 4), (3, 1, 2, 2, 2)])
def test_any_rank(name, shape):
    sde = SDES[name]()
    x = torch.randn(shape, dtype=torch.float64)
    t = torch.rand(shape[0], dtype=torch.float64)
    f, g = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    fd, G = sde.discretize(x, t)
    assert f.shape == mean.shape == fd.shape == x.shape and g.shape == std.shape == G.shape == (shape[0],)
    assert sde.prior_logp(x).shape == (shape[0],)


@pytest.mark.parametrize("name", SDES)
def test_linear_coefficients_match_tensor_forms(name):
    sde = SDES[name]()
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.linspace(1.0, 1e-3, 6, dtype=torch.float64)
    f, g = sde.sde(x, t)
    fc, gc = sde.linear_sde(t)
    torch.testing.assert_close(f, fc[:, None] * x)
    torch.testing.assert_close(g, gc)
    fd, G = sde.discretize(x, t)
    fdc, Gc = sde.linear_discretize(t)
    torch.testing.assert_close(fd, fdc[:, None] * x, rtol=1e-6, atol=1e-7)
    # VE's G = sqrt(sigma_i^2 - sigma_{i-1}^2) loses ~1/(1 - (sigma_{i-1}/sigma_i)^2) ~ 60 float32 ulps to
    # cancellation in the tensor form; the float64 coefficient does not.
    torch.testing.assert_close(G.double(), Gc, rtol=60 * 2**-24, atol=1e-9)
    assert fc.dtype == gc.dtype == fdc.dtype == Gc.dtype == torch.float64


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="beta_min"):
        sde_lib.VPSDE(beta_min=5, beta_max=1)
    with pytest.raises(ValueError, match="sigma_min"):
        sde_lib.VESDE(sigma_min=0, sigma_max=1)
    with pytest.raises(ValueError, match="N"):
        sde_lib.subVPSDE(N=0)


def test_tables_follow_device_and_are_cached():
    sde = sde_lib.VPSDE(N=10)
    a = sde.table("alphas", "cpu")
    assert a is sde.table("alphas", torch.device("cpu"))
