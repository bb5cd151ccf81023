"""The heat family (fastsde.heat): the DCT, the per-frequency SDEs against their closed forms, and the reference
samplers, ODE likelihood and training loss against the exact answers of a mixture diagonal in the DCT basis."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft
import torch

from fastsde import sde as sde_lib
from fastsde.heat import FREQUENCY_SDES, dct2, dct_matrix, eigenvalues, freq_scale, idct2
from fastsde.likelihood import get_likelihood_fn
from fastsde.losses import get_sde_loss_fn
from fastsde.models.analytic import AnalyticHeatModel, FrequencyMixture
from fastsde.sampling import get_pc_sampler
from fastsde.score import get_score_fn

NAMES = tuple(FREQUENCY_SDES)
F64 = torch.float64


# ------------------------------------------------------------------------------------------------ the transform
@pytest.mark.parametrize("n", [1, 2, 7, 16, 32])
def test_dct_matrix_is_orthonormal(n):
    c = dct_matrix(n)
    assert torch.allclose(c @ c.T, torch.eye(n, dtype=F64), atol=1e-13)
    assert torch.allclose(c, torch.from_numpy(scipy.fft.dct(np.eye(n), norm="ortho", axis=0)), atol=1e-13)


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 1, 8, 5), (4, 32, 32), (1, 1, 1)])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_dct2_matches_scipy_and_inverts(shape, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    y = dct2(x.to(dtype))
    assert y.dtype == dtype
    tol = 1e-12 if dtype == F64 else 2e-5
    assert np.abs(y.double().numpy() - ref).max() < tol
    assert (idct2(y).double() - x).abs().max() < tol
    assert (idct2(torch.from_numpy(ref)) - torch.from_numpy(scipy.fft.idctn(ref, norm="ortho", axes=(-2, -1)))
            ).abs().max() < 1e-12


def test_dct_basis_cache_is_keyed_and_private():
    x = torch.randn(2, 8, 8, dtype=F64)
    a64 = dct2(x)
    a32 = dct2(x.float())  # a float32 basis, not the float64 one
    b = dct_matrix(8)
    b.zero_()  # the caller's copy: the cached basis is untouched
    assert torch.equal(dct2(x), a64) and a32.dtype == torch.float32
    bf = dct2(x.bfloat16())
    assert bf.dtype == torch.bfloat16 and (bf.double() - a64).abs().max() < 0.05 * a64.abs().max()
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        dct2(torch.ones(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="n must be a positive int"):
        dct_matrix(0)


def test_dct_diagonalises_the_neumann_laplacian():
    """The reflecting-boundary 5-point Laplacian has the DCT-II images as eigenvectors, eigenvalues
    -4 sin^2(pi k / 2H) - 4 sin^2(pi l / 2W); `eigenvalues` is their continuum limit pi^2 (k^2/H^2 + l^2/W^2)."""
    H, W = 8, 6
    x = torch.randn(2, H, W, dtype=F64)
    p = torch.nn.functional.pad(x[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4 * x
    k = torch.arange(H, dtype=F64)[:, None]
    l = torch.arange(W, dtype=F64)[None, :]  # noqa: E741
    discrete = 4 * torch.sin(math.pi * k / (2 * H)) ** 2 + 4 * torch.sin(math.pi * l / (2 * W)) ** 2
    assert torch.allclose(dct2(lap), -discrete * dct2(x), atol=1e-12)
    lam = eigenvalues((H, W))
    assert lam[0, 0] == 0 and torch.allclose(lam[:2, :2], discrete[:2, :2], rtol=0.05)
    assert torch.allclose(freq_scale(x, -discrete), lap, atol=1e-12)


# ------------------------------------------------------------------------------------------------ the SDEs
@pytest.mark.parametrize("name", NAMES)
def test_coefficients_are_the_derivatives_of_the_marginal(name):
    """(log m_k)' = f_k and (s_k^2)' = 2 f_k s_k^2 + g_k^2: the marginals solve the SDE per frequency."""
    sde = sde_lib.make_sde(name)
    lam = eigenvalues((16, 16))
    t = torch.tensor([0.05, 0.4, 0.9], dtype=F64).reshape(-1, 1, 1, 1)
    h = 1e-6
    f, g2 = sde.coefs(t, lam)
    dlog_m = (sde.log_mean(t + h, lam) - sde.log_mean(t - h, lam)) / (2 * h)
    dvar = (sde.variance(t + h, lam) - sde.variance(t - h, lam)) / (2 * h)
    assert torch.allclose(dlog_m, f.expand_as(dlog_m), rtol=1e-6, atol=1e-6)
    assert torch.allclose(dvar.expand(3, 1, 16, 16), (2 * f * sde.variance(t, lam) + g2).expand(3, 1, 16, 16),
                          rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_transition_composes_to_the_marginal(name):
    sde = sde_lib.make_sde(name, N=50)
    t = torch.tensor([0.0, 0.3, 0.98], dtype=F64)
    a, g = sde.transition(t, (1, 8, 8))
    m0, s0 = sde.marginal_coefs(t, (8, 8))
    m1, s1 = sde.marginal_coefs(t + 1 / 50, (8, 8))
    assert torch.allclose(a * m0, m1, rtol=1e-10)
    assert torch.allclose(a * a * s0**2 + g**2, s1**2, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_forward_euler_maruyama_matches_the_closed_form_marginal(name):
    """sde() in pixel space (drift and per-frequency diffusion through the DCT), integrated by Euler-Maruyama from a
    fixed image, reproduces marginal_prob's mean and per-frequency std."""
    sde = sde_lib.make_sde(name)
    g = torch.Generator().manual_seed(1)
    n = 2000
    x0 = torch.randn(1, 1, 4, 4, generator=g, dtype=F64).expand(n, 1, 4, 4)
    t0, t1, steps = (0.3, 0.5, 200) if name == "ihdm" else (0.0, 0.5, 200)
    x = sde.marginal_prob(x0, torch.full((n,), t0, dtype=F64))[0]
    x = x + freq_scale(torch.randn(x.shape, generator=g, dtype=F64),
                       sde.marginal_coefs(torch.full((1,), t0, dtype=F64), x.shape)[1])
    dt = (t1 - t0) / steps
    for i in range(steps):
        drift, diffusion = sde.sde(x, torch.full((n,), t0 + i * dt, dtype=F64))
        x = x + drift * dt + sde_lib.times_diffusion(diffusion, torch.randn(x.shape, generator=g, dtype=F64)) * dt**0.5
    mean, std = sde.marginal_prob(x0[:1], torch.full((1,), t1, dtype=F64))
    y, y_mean = dct2(x), dct2(mean)[0]
    err_mean = (y.mean(0) - y_mean).abs() / std[0]
    assert err_mean.max() < 5 / math.sqrt(n) + 0.02, err_mean.max()  # 5 sigma + the Euler bias
    ratio = y.std(0) / std[0]
    assert (ratio - 1).abs().max() < 0.1, ratio


@pytest.mark.parametrize("name", NAMES)
def test_prior_logp_is_the_density_of_prior_sampling(name):
    sde = sde_lib.make_sde(name, data_mean=0.5, data_var=2.0)
    z = sde.prior_sampling((3000, 1, 4, 4), generator=torch.Generator().manual_seed(2)).double()
    mean, std = sde.prior_moments((4, 4))
    y = dct2(z)
    assert ((y.mean(0)[0] - mean) / std).abs().max() < 0.1
    assert ((y.std(0)[0] / std) - 1).abs().max() < 0.08
    # the density: a product of normals in the DCT coefficients (the DCT has unit Jacobian)
    ref = torch.distributions.Normal(mean, std).log_prob(y[:5, 0]).sum((-1, -2))
    assert torch.allclose(sde.prior_logp(z[:5]), ref, rtol=1e-12)


def test_bad_hyperparameters_are_named():
    with pytest.raises(ValueError, match="blur"):
        sde_lib.make_sde("heat", blur=-1.0)
    with pytest.raises(ValueError, match="tau_min < tau_max"):
        sde_lib.make_sde("ihdm", tau_min=5.0, tau_max=1.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sde_lib.make_sde("heat_ve", sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="data_var"):
        sde_lib.make_sde("ihdm", data_var=-1.0)
    with pytest.raises(ValueError, match=r"data_mean must be a float or an \(H, W\)"):
        sde_lib.make_sde("ihdm", data_mean=[[0.0, 1.0]]).prior_logp(torch.zeros(1, 1, 4, 4))


# ------------------------------------------------------------------------------------------------ analytic truth
def _mixture(shape=(1, 4, 4), seed=0, K=3):
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn((K, *shape), generator=g, dtype=F64)
    variances = 0.05 + 0.3 * torch.rand((K, *shape), generator=g, dtype=F64)
    return FrequencyMixture(torch.rand(K, generator=g, dtype=F64) + 0.5, means, variances)


def _moment_sde(name, mix, N=1000):
    """The SDE with its prior fitted to the mixture's per-frequency moments (ihdm needs them; harmless elsewhere)."""
    mean, var = mix.moments()
    return sde_lib.make_sde(name, N=N, data_mean=mean[0], data_var=var[0])


@pytest.mark.parametrize("name", NAMES)
def test_exact_score_is_the_gradient_of_the_perturbed_log_prob(name):
    mix, sde = _mixture(), sde_lib.make_sde(name)
    model = AnalyticHeatModel(mix, sde)
    x = mix.sample(6, torch.Generator().manual_seed(3)).requires_grad_(True)
    t = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 1.0], dtype=F64)
    m, s = sde.marginal_coefs(t, x.shape)
    grad = torch.autograd.grad(mix.perturbed_log_prob(x, m, s).sum(), x)[0]
    assert torch.allclose(model.exact_score(x, t), grad, rtol=1e-8, atol=1e-8)
    # the network convention round-trips through get_score_fn to the same score
    score = get_score_fn(sde, model, continuous=True)(x.detach(), t)
    assert torch.allclose(score, grad, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_perturbed_samples_follow_the_marginal_mixture(name):
    """x_t = mean + Sigma_t^{1/2} z from marginal_prob matches p_t's moments and, by a two-sample test per DCT
    coefficient, its samples."""
    from scipy import stats

    mix, sde = _mixture(), sde_lib.make_sde(name)
    g = torch.Generator().manual_seed(4)
    n = 4000
    t = torch.full((n,), 0.3, dtype=F64)
    x0 = mix.sample(n, g)
    mean, std = sde.marginal_prob(x0, t)
    xt = dct2(mean + sde_lib.times_diffusion(std, torch.randn(x0.shape, generator=g, dtype=F64)))
    m, s = sde.marginal_coefs(t[:1], x0.shape)
    exact_mean, exact_var = mix.moments(m, s)
    assert ((xt.mean(0) - exact_mean) / exact_var.sqrt()).abs().max() < 0.08
    assert ((xt.var(0) / exact_var) - 1).abs().max() < 0.15
    ref = dct2(mix.sample(n, g)) * m[0] + s[0] * torch.randn((n, *mix.shape), generator=g, dtype=F64)
    p = [stats.ks_2samp(xt[:, 0, i, j].numpy(), ref[:, 0, i, j].numpy()).pvalue for i in range(4) for j in range(4)]
    assert min(p) > 1e-4, min(p)


@pytest.mark.parametrize("name", ["heat", "blur", "ihdm"])
def test_dsm_loss_is_minimised_by_the_exact_score(name):
    """The per-frequency DSM loss at the exact score equals its closed-form minimum (the conditional variance term);
    a perturbed score does worse."""
    mix, sde = _mixture(), sde_lib.make_sde(name)
    model = AnalyticHeatModel(mix, sde)
    loss_fn = get_sde_loss_fn(sde, train=False, reduce_mean=True)
    batch = mix.sample(512, torch.Generator().manual_seed(5))
    exact = loss_fn(model, batch, generator=torch.Generator().manual_seed(6))

    def biased(x, labels):
        return model(x, labels) + 0.1

    worse = loss_fn(biased, batch, generator=torch.Generator().manual_seed(6))
    assert exact < worse - 0.005
    assert 0 <= exact < 1.0


@pytest.mark.parametrize("name", ["heat", "blur"])
def test_reverse_sde_samples_the_data_distribution(name):
    """score_sde's reference PC sampler (reverse diffusion on the exact per-frequency transitions) with the exact
    score returns samples of p_eps: moments per DCT coefficient and a two-sample test against exact samples.
    heat_ve is left to the ODE likelihood test: like VE, its predictor alone misweights the mixture's modes at 200
    steps (score_sde pairs VE with a Langevin corrector), a sampler property, not one of the SDE."""
    from scipy import stats

    mix = _mixture(seed=7)
    sde = _moment_sde(name, mix, N=200)
    model = AnalyticHeatModel(mix, sde)
    n, eps = 1000, 1e-3
    sampler = get_pc_sampler(sde, (n, 1, 4, 4), "reverse_diffusion", "none", lambda x: x, 0.16, continuous=True,
                             eps=eps, backend="reference", seed=8, dtype=F64)
    x, _ = sampler(model)
    m, s = sde.marginal_coefs(torch.full((1,), eps, dtype=F64), x.shape)
    exact_mean, exact_var = mix.moments(m, s)
    y = dct2(x)
    assert ((y.mean(0) - exact_mean) / exact_var.sqrt()).abs().max() < 0.15
    assert ((y.var(0) / exact_var) - 1).abs().max() < 0.2
    ref = dct2(mix.sample(n, torch.Generator().manual_seed(9)))
    p = [stats.ks_2samp(y[:, 0, i, j].numpy(), ref[:, 0, i, j].numpy()).pvalue for i in range(4) for j in range(4)]
    assert min(p) > 1e-4, min(p)


@pytest.mark.parametrize("name", NAMES)
def test_ode_likelihood_equals_the_exact_log_density(name):
    """The probability-flow ODE likelihood of the exact score equals -log p_eps(x) up to the prior mismatch, which
    is computed exactly. The drift's Jacobian is not diagonal in pixels, so the Hutchinson trace is made exact by
    probing one copy of x per pixel with sqrt(D) e_i (the mean of e_i^T A e_i D / D is tr A)."""
    mix = _mixture(shape=(1, 2, 2), seed=10)
    sde = _moment_sde(name, mix)
    model = AnalyticHeatModel(mix, sde)
    eps = 1e-3 if name != "ihdm" else 1e-5
    x = mix.sample(2, torch.Generator().manual_seed(11))
    D = 4
    data = x.repeat_interleave(D, 0)
    probe = (torch.eye(D, dtype=F64) * math.sqrt(D)).repeat(2, 1).reshape(data.shape)
    lik = get_likelihood_fn(sde, lambda v: v, eps=eps, rtol=1e-7, atol=1e-7, dtype=F64)
    bpd, z, _ = lik(model, data, probe=probe)
    bpd = bpd.reshape(2, D).mean(1).double()
    z = z[::D].double()
    t_eps, t_T = (torch.full((2,), v, dtype=F64) for v in (eps, sde.T))
    log_p_eps = mix.perturbed_log_prob(x, *sde.marginal_coefs(t_eps, x.shape))
    log_p_T = mix.perturbed_log_prob(z, *sde.marginal_coefs(t_T, x.shape))
    # likelihood_fn reports bits/dim of the data under the inverse scaler's [0, 1] dequantization (+ 8 bits)
    expected = -(log_p_eps - log_p_T + sde.prior_logp(z)) / (D * math.log(2)) + 8
    assert (bpd - expected).abs().max() < 2e-3, (bpd, expected)


# ------------------------------------------------------------------------------------------------ fused steps
def _backends():
    from fastsde.ops.dispatch import backend_available

    names = ["reference"]
    if backend_available("native", torch.device("cpu"))[0] and hasattr(torch.ops.fastsde, "freq_step"):
        names.append("native")
    if backend_available("triton", torch.device("cpu"))[0]:
        names.append("triton")
    return names


@pytest.mark.parametrize("dtype,score_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                               (torch.float64, torch.float64), (torch.float32, torch.float16)])
@pytest.mark.parametrize("period", ["hw", "chw"])
def test_freq_step_backends_match_the_formula_on_fsn1_noise(dtype, score_dtype, period):
    """a[k] x + b[k] s + c[k] z with z the FSN1 normals of (seed, ids, draw) in element order, on every backend."""
    from fastsde import random as fsn1
    from fastsde.ops.freq_step import freq_step

    g = torch.Generator().manual_seed(12)
    shape = (3, 2, 8, 6)  # 96 elements per sample: not a multiple of a kernel block
    F = 48 if period == "hw" else 96
    x = torch.randn(shape, generator=g, dtype=F64).to(dtype)
    s = torch.randn(shape, generator=g, dtype=F64).to(score_dtype)
    a, b, c = (torch.randn(F, generator=g, dtype=F64) for _ in range(3))
    ids = torch.tensor([5, 0, 2**32 - 1])
    z = fsn1.fsn1_normal(7, ids, 11, 96, dtype=F64).reshape(shape)
    rep = 96 // F
    expect = (a.repeat(rep).reshape(shape[1:]) * x.double() + b.repeat(rep).reshape(shape[1:]) * s.double()
              + c.repeat(rep).reshape(shape[1:]) * z)
    tol = 1e-12 if dtype == F64 else 2e-5 * float(expect.abs().max())
    for backend in _backends():
        out = freq_step(x, s, a, b, c, seed=7, sample_ids=ids, draw=11, backend=backend)
        assert out.dtype == dtype and out.shape == shape
        assert (out.double() - expect).abs().max() < tol, backend
        quiet = freq_step(x, s, a, b, seed=7, sample_ids=ids, draw=11, backend=backend)
        assert (quiet.double() - (expect - c.repeat(rep).reshape(shape[1:]) * z)).abs().max() < tol, backend


def test_freq_step_bad_arguments_are_named():
    from fastsde.ops.freq_step import freq_step

    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="a must be a 1-D float vector whose length divides the 16"):
        freq_step(x, x, torch.ones(5), torch.ones(5))
    with pytest.raises(ValueError, match="a, b, c must have one length"):
        freq_step(x, x, torch.ones(16), torch.ones(4))
    with pytest.raises(ValueError, match="score must match x"):
        freq_step(x, torch.zeros(2, 1, 4, 5), torch.ones(16), torch.ones(16))
    with pytest.raises(ValueError, match="sample_ids must be in"):
        freq_step(x, x, torch.ones(16), torch.ones(16), torch.ones(16), sample_ids=[-1, 0])
    with pytest.raises(ValueError, match="x must be a float32/float64"):
        freq_step(x.half(), x.half(), torch.ones(16), torch.ones(16))


def test_vp_is_the_heat_sde_without_blur():
    from fastsde.heat_sampler import as_frequency_sde

    vp = sde_lib.VPSDE()
    heat = as_frequency_sde(vp)
    t = torch.tensor([1e-3, 0.2, 0.7, 1.0], dtype=F64)
    x = torch.randn(4, 1, 4, 4, dtype=F64)
    mean, std = vp.marginal_prob(x, t)
    hmean, hstd = heat.marginal_prob(x, t)
    assert torch.allclose(mean, hmean, atol=1e-12) and torch.allclose(std[:, None, None, None].expand_as(hstd), hstd)


@pytest.mark.parametrize("name,eta", [("heat", 0.0), ("heat", 1.0), ("blur", 1.0), ("ihdm", 1.0)])
def test_heat_sampler_samples_the_data_distribution(name, eta):
    """The DCT-domain sampler (ddim per frequency, fused steps) with the exact score: moments per DCT coefficient
    and a two-sample test against exact samples of p_eps."""
    from scipy import stats

    from fastsde.heat_sampler import heat_sample

    mix = _mixture(seed=13)
    if name == "ihdm":
        # IHDM never moves the DC coefficient (lam = 0: no drift, no noise), so its Gaussian prior must be the DC's
        # exact law: components sharing the DC mean and variance make it so.
        means, variances = mix.means.clone(), mix.variances.clone()
        means[:, :, 0, 0], variances[:, :, 0, 0] = means[0, 0, 0, 0], variances[0, 0, 0, 0]
        mix = FrequencyMixture(mix.log_weights.exp(), means, variances)
    sde = _moment_sde(name, mix)
    model = AnalyticHeatModel(mix, sde)
    n, eps = 600, 1e-3
    # ancestral steps (eta = 1) plug E[x0 | y] into the Gaussian posterior: fine only for small steps near the data
    x = heat_sample(model, sde, (n, 1, 4, 4), steps=40 if eta == 0 else 150, eta=eta, eps=eps, seed=14,
                    backend="reference", dtype=F64)[0]
    m, s = sde.marginal_coefs(torch.full((1,), eps, dtype=F64), x.shape)
    exact_mean, exact_var = mix.moments(m, s)
    y = dct2(x)
    assert ((y.mean(0) - exact_mean) / exact_var.sqrt()).abs().max() < 0.2
    assert ((y.var(0) / exact_var) - 1).abs().max() < 0.3
    ref = dct2(mix.sample(n, torch.Generator().manual_seed(15)))
    ref = ref * m[0] + s[0] * torch.randn(ref.shape, generator=torch.Generator().manual_seed(16), dtype=F64)
    p = [stats.ks_2samp(y[:, 0, i, j].numpy(), ref[:, 0, i, j].numpy()).pvalue for i in range(4) for j in range(4)]
    assert min(p) > 1e-4, min(p)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_heat_sampler_backends_agree_on_the_same_noise(dtype):
    from fastsde.heat_sampler import heat_sample

    mix = _mixture(seed=19)
    sde = _moment_sde("heat", mix)
    model = AnalyticHeatModel(mix, sde)
    runs = {b: heat_sample(model, sde, (16, 1, 4, 4), steps=8, eta=1.0, seed=20, backend=b, dtype=dtype)[0]
            for b in _backends()}
    tol = 1e-9 if dtype == F64 else 1e-2  # float32: the kernels' fmas round differently, the run amplifies it
    for b, x in runs.items():
        assert x.dtype == dtype and (x - runs["reference"]).abs().max() < tol, b


def test_heat_sampler_constraint_keeps_the_known_pixels():
    from fastsde.cli.heat import constraints
    from fastsde.heat_sampler import heat_sample

    mix = _mixture(seed=17)
    sde = _moment_sde("heat", mix)
    model = AnalyticHeatModel(mix, sde)
    known = mix.sample(8, torch.Generator().manual_seed(18)).clamp(-1, 1)
    mask = torch.zeros(8, 1, 4, 4, dtype=F64)
    mask[..., :2] = 1
    x = heat_sample(model, sde, known.shape, steps=40, eta=1.0, dtype=F64, constraint=constraints("inpaint", known,
                                                                                                  mask))[0]
    assert ((x - known).abs() * mask).max() < 1e-12  # the projected x0 prediction keeps them exactly
    assert ((x - known).abs() * (1 - mask)).max() > 1e-3  # and the rest is generated


@pytest.mark.parametrize("argv,message", [
    (["heat", "trajectory", "--eta", "2"], "--eta must be in [0, 1]"),
    (["heat", "deblur", "--t-start", "0"], "--t-start must be in (0, 1]"),
    (["heat", "superres", "--model", "gmm:ring"], "takes an image model"),
])
def test_heat_command_refuses_bad_arguments(argv, message, capsys):
    from fastsde.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ the heat sampler on the executor
@pytest.mark.parametrize("solver,eta", [("ddim", 1.0), ("ddim", 0.0), ("reverse_diffusion", 0.0)])
def test_heat_sampler_compiled_never_recompiles_and_equals_eager(solver, eta):
    """get_heat_sampler(compile=True, seed=None): three calls with new seeds (and so new priors) under
    error_on_recompile give the eager program's samples; the program is a raw Eval + FreqCombine per step."""
    from fastsde.executor import Eval, FreqCombine
    from fastsde.heat_sampler import get_heat_sampler

    mix = _mixture(seed=21)
    sde = _moment_sde("heat", mix)
    model = AnalyticHeatModel(mix, sde)
    make = lambda **kw: get_heat_sampler(sde, (8, 1, 4, 4), steps=6, solver=solver, eta=eta,  # noqa: E731
                                         backend=_backends()[-1], **kw)
    eager, compiled = make(), make(compile=True)
    kinds = [type(ins) for ins in compiled.program.code]
    assert kinds == [Eval, FreqCombine] * (len(kinds) // 2) and len(kinds) == 2 * compiled.program.model_evals
    torch._dynamo.reset()
    results = []
    with torch._dynamo.config.patch(error_on_recompile=True):
        for k in range(3):
            torch.manual_seed(50 + k)
            want = eager(model)[0]
            torch.manual_seed(50 + k)
            got = compiled(model)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            results.append(got)
    assert not torch.equal(results[0], results[1])
    torch._dynamo.reset()


def _sharp_mixture():
    g = torch.Generator().manual_seed(3)
    return FrequencyMixture(torch.rand(3, generator=g, dtype=F64) + 0.5,
                            torch.randn(3, 1, 4, 4, generator=g, dtype=F64),
                            torch.rand(3, 1, 4, 4, generator=g, dtype=F64) + 0.05)


def test_heat_dpmpp_2m_with_blur_0_is_the_scalar_solver():
    """DPM-Solver++(2M) per frequency on the heat SDE with blur 0 (= VP: every frequency has VP's lambda) equals the
    scalar dpmpp_2m solver of fastsde.solvers on the same grid and start (and so does ddim with eta 0)."""
    from fastsde import solvers
    from fastsde.heat_sampler import as_frequency_sde, get_heat_sampler

    sde = sde_lib.VPSDE(N=1000)
    model = AnalyticHeatModel(_sharp_mixture(), as_frequency_sde(sde))
    z = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    for name, kw in (("dpmpp_2m", {}), ("ddim", {"eta": 0.0})):
        heat = get_heat_sampler(sde, z.shape, steps=12, solver=name, seed=1, dtype=F64, **kw)(model, z=z)[0]
        scalar = solvers.get_sampler(name, sde, z.shape, 12, grid="uniform", eps=1e-3, denoise=False, dtype=F64,
                                     seed=1)(model, z.clone())[0]  # the VP prior is z itself
        assert (heat - scalar).abs().max() < 1e-10, name


def test_heat_deterministic_solvers_converge_at_their_order():
    """On the heat SDE (blur 4: the frequencies' lambdas differ, some are below M_MIN for most of the run) the
    deterministic solvers converge as the steps double: ddim (eta 0) at first order (the change halves), the
    per-frequency DPM-Solver++(2M) at second order (it falls >= 3x), and the two meet."""
    from fastsde.heat_sampler import get_heat_sampler

    sde = sde_lib.make_sde("heat", N=1000)
    model = AnalyticHeatModel(_sharp_mixture(), sde)
    z = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    runs = {name: [get_heat_sampler(sde, z.shape, steps=n, solver=name, seed=1, dtype=F64)(model, z=z)[0]
                   for n in (250, 500, 1000)] for name in ("ddim", "dpmpp_2m")}
    change = {name: [float((b - a).abs().max()) for a, b in zip(r, r[1:])] for name, r in runs.items()}
    assert 1.6 < change["ddim"][0] / change["ddim"][1] < 2.5, change
    assert change["dpmpp_2m"][0] / change["dpmpp_2m"][1] > 3.0, change
    assert float((runs["ddim"][-1] - runs["dpmpp_2m"][-1]).abs().max()) < 2 * change["ddim"][1], change
