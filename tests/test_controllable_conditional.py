"""Class-conditional sampling (classifier guidance) and colorization against exact answers of analytic mixtures."""
import pytest
import torch

from fastsde import controllable
from fastsde import sde as sde_lib
from fastsde.controllable import COLOR_DECOUPLING, couple_colors, decouple_colors
from fastsde.models.analytic import AnalyticClassifier, AnalyticScoreModel, GaussianMixture, get_mixture
from fastsde.models.utils import get_score_fn, get_score_parts
from fastsde.ops import dispatch

IDENTITY = lambda x: x  # noqa: E731

SDES = {  # (make(N), continuous labels?)
    "ve": (lambda N: sde_lib.VESDE(0.01, 10.0, N), True),
    "ve_discrete": (lambda N: sde_lib.VESDE(0.01, 10.0, N), False),
    "vp": (lambda N: sde_lib.VPSDE(0.1, 20.0, N), True),
    "vp_discrete": (lambda N: sde_lib.VPSDE(0.1, 20.0, N), False),
    "subvp": (lambda N: sde_lib.subVPSDE(0.1, 20.0, N), True),
    "subvp_discrete": (lambda N: sde_lib.subVPSDE(0.1, 20.0, N), False),  # score_sde: 999 t labels regardless
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _eps(sde_name):
    return 1e-5 if sde_name.startswith("ve") else 1e-3


def _full_cov_mixture():
    # Three components in 3-D with full, distinct covariances: the classifier's non-isotropic path.
    g = torch.Generator().manual_seed(4)
    roots = torch.randn(3, 3, 3, generator=g, dtype=torch.float64) * 0.5
    covs = roots @ roots.mT + 0.05 * torch.eye(3, dtype=torch.float64)
    means = torch.randn(3, 3, generator=g, dtype=torch.float64) * 2.0
    return GaussianMixture([0.2, 0.3, 0.5], means, covs)


def _times_and_labels(sde, continuous, n, seed=0):
    """n random times in (0, T) and the score model's labels for them (get_score_parts' labels_fn)."""
    t = torch.rand(n, generator=torch.Generator().manual_seed(seed)) * (sde.T - 1e-3) + 1e-3
    return t, get_score_parts(sde, continuous)[0](t)


# ----------------------------------------------------------------------------------------------------------------
# AnalyticClassifier


@pytest.mark.parametrize("mixture", ["ring", "full"])
@pytest.mark.parametrize("sde_name", ["ve", "ve_discrete", "vp_discrete", "subvp"])
def test_analytic_classifier_is_the_exact_posterior(mixture, sde_name):
    mix = get_mixture("ring") if mixture == "ring" else _full_cov_mixture()
    make, continuous = SDES[sde_name]
    sde = make(50)
    clf = AnalyticClassifier(mix, sde, continuous=continuous)
    t, labels = _times_and_labels(sde, continuous, 40)
    # (m, s) as the labels encode them (float32 labels: sigma(t) or 999 t rounded), decoded as the score model does.
    m, s = AnalyticScoreModel(mix, sde, continuous).decode_labels(labels)
    x = mix.sample(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * m[:, None]
    x = x + s[:, None] * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    logits = clf(x, labels)
    assert logits.shape == (40, mix.num_components) and logits.dtype == torch.float64
    torch.testing.assert_close(logits.exp().sum(1), torch.ones(40, dtype=torch.float64), rtol=0, atol=1e-12)
    # Brute force: w_k N(x; m mu_k, m^2 Sigma_k + s^2 I) per sample and component from torch.distributions.
    covs = mix.covs if not mix.diagonal else torch.diag_embed(mix.covs)
    eye = torch.eye(mix.dim, dtype=torch.float64)
    joint = torch.stack([torch.stack([
        mix.weights[k].log() + torch.distributions.MultivariateNormal(
            m[b] * mix.means[k], m[b] ** 2 * covs[k] + s[b] ** 2 * eye).log_prob(x[b])
        for k in range(mix.num_components)]) for b in range(40)])
    torch.testing.assert_close(logits, joint - joint.logsumexp(1, keepdim=True), rtol=1e-10, atol=1e-10)
    # float32 in, float32 out: computed in float64 from the float32 values, rounded once.
    x32 = x.float()
    assert torch.equal(clf(x32, labels), clf(x32.double(), labels).float())


def test_analytic_classifier_gradient_is_component_minus_mixture_score():
    # grad_x log p_t(k | x) = grad log p_t,k(x) - grad log p_t(x): each side from a different code path.
    mix = _full_cov_mixture()
    sde = sde_lib.VPSDE(0.1, 20.0, 50)
    clf = AnalyticClassifier(mix, sde, continuous=True)
    t, labels = _times_and_labels(sde, True, 16, seed=3)
    m, s = AnalyticScoreModel(mix, sde, True).decode_labels(labels)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64).requires_grad_(True)
    k = torch.arange(16) % 3
    (grad,) = torch.autograd.grad(clf(x, labels).gather(1, k[:, None]).sum(), x)
    x = x.detach()
    for j in range(3):
        comp = GaussianMixture([1.0], mix.means[j : j + 1], mix.covs[j : j + 1])
        sel = k == j
        expected = comp.perturbed_score(x[sel], m[sel], s[sel]) - mix.perturbed_score(x[sel], m[sel], s[sel])
        torch.testing.assert_close(grad[sel], expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Classifier guidance


@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_guided_model_gives_the_guided_score(sde_name, scale):
    # score_fn of the wrapped model = grad log p_t(x) + scale grad log p_t(k | x), exactly; at scale 1 that is the
    # score of component k's marginal, since p_t(x) p_t(k | x) = w_k p_t,k(x). Float64 throughout.
    make, continuous = SDES[sde_name]
    sde = make(50)
    mix = _full_cov_mixture()
    model = AnalyticScoreModel(mix, sde, continuous=continuous)
    clf = AnalyticClassifier(mix, sde, continuous=continuous)
    k = torch.arange(24) % 3
    guided = controllable.ClassifierGuidedModel(model, clf, sde, continuous, k, scale)
    t = _times_and_labels(sde, continuous, 24, seed=6)[0].double()
    labels = get_score_parts(sde, continuous)[0](t)
    m, s = model.decode_labels(labels)
    x = torch.randn(24, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 2.0
    with torch.no_grad():  # as inside the samplers
        got = get_score_fn(sde, guided, train=False, continuous=continuous)(x, t)
    expected = (1.0 - scale) * mix.perturbed_score(x, m, s)
    for j in range(3):
        sel = k == j
        comp = GaussianMixture([1.0], mix.means[j : j + 1], mix.covs[j : j + 1])
        expected[sel] += scale * comp.perturbed_score(x[sel], m[sel], s[sel])
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def _conditional(sde_name, n_labels, n_steps=200, backend="auto", dtype=torch.float32, scale=1.0, seed=3,
                 predictor="reverse_diffusion", corrector="langevin"):
    make, continuous = SDES[sde_name]
    sde = make(n_steps)
    mix = get_mixture("ring")
    model = AnalyticScoreModel(mix, sde, continuous=continuous)
    clf = AnalyticClassifier(mix, sde, continuous=continuous)
    sampler = controllable.get_pc_conditional_sampler(sde, clf, (n_labels.shape[0], 2), predictor, corrector,
                                                      IDENTITY, 0.16, continuous=continuous, eps=_eps(sde_name),
                                                      seed=seed, backend=backend, dtype=dtype, scale=scale)
    return sampler(model, n_labels), mix, sde, model


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_guided_samples_come_from_the_requested_component(sde_name):
    # Exact score + exact classifier at scale 1: grad log p_t(x) + grad log p_t(k | x) is the score of component
    # k's marginal, so every sample should be a draw of N(mu_k, 0.15^2 I) (chance would put 1/8 of them there).
    n = 512
    labels = torch.arange(n) % 8
    x, mix, _, _ = _conditional(sde_name, labels)
    nearest = torch.cdist(x.double(), mix.means).argmin(1)
    assert (nearest == labels).float().mean().item() > 0.95
    for k in range(8):
        xk = x[labels == k].double()
        # 64 samples of std 0.15: the mean's standard error is 0.019 per coordinate.
        assert (xk.mean(0) - mix.means[k]).abs().max().item() < 5 * 0.15 / 64**0.5
        assert 0.1 < xk.std(0).mean().item() < 0.2


@pytest.mark.parametrize("sde_name", ["ve", "vp_discrete"])
def test_guided_samples_of_overlapping_classes(sde_name):
    # Two classes that overlap down to t = 0, N(0, I) and N((0.5, 0), 0.25^2 I): a guidance of the wrong strength
    # (e.g. a VP output adjusted with 2 std or 1 instead of std) shifts and widens class 0 and narrows class 1,
    # which the well-separated ring cannot show (its samples stay in the mode they chose early).
    mix = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [0.5, 0.0]], [[1.0, 1.0], [0.25**2, 0.25**2]])
    make, continuous = SDES[sde_name]
    sde = make(200)
    n = 1024
    labels = torch.arange(n) % 2
    sampler = controllable.get_pc_conditional_sampler(sde, AnalyticClassifier(mix, sde, continuous), (n, 2),
                                                      "reverse_diffusion", "langevin", IDENTITY, 0.16,
                                                      continuous=continuous, eps=_eps(sde_name), seed=3)
    x = sampler(AnalyticScoreModel(mix, sde, continuous), labels).double()
    for k, std in [(0, 1.0), (1, 0.25)]:
        xk = x[labels == k]
        # 512 samples: mean's standard error std / 22.6, the std's (averaged over 2 coordinates) std / 45.
        # Measured with the right guidance: |mean error| <= 1.6 SE, std within 1 SE; with 2 std: 3 SE and 4 SE.
        assert (xk.mean(0) - mix.means[k]).abs().max().item() < 4 * std / 512**0.5
        assert abs(xk.std(0).mean().item() / std - 1.0) < 0.08


def test_scale_zero_is_the_unconditional_sampler():
    from fastsde import sampling

    labels = torch.arange(32) % 8
    x, _, sde, model = _conditional("vp", labels, n_steps=30, scale=0.0)
    expected = sampling.get_pc_sampler(sde, (32, 2), "reverse_diffusion", "langevin", IDENTITY, 0.16,
                                       continuous=True, eps=1e-3, seed=3)(model)[0]
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def _fused_backends():
    names = ["auto"]
    if dispatch.backend_available("native", torch.device("cpu"))[0]:
        names.append("native")
    return names


@pytest.mark.parametrize("backend", _fused_backends())
@pytest.mark.parametrize("sde_name,predictor,corrector", [("ve", "reverse_diffusion", "langevin"),
                                                          ("ve_discrete", "ancestral_sampling", "ald"),
                                                          ("vp_discrete", "euler_maruyama", "langevin"),
                                                          ("subvp", "reverse_diffusion", "none")])
def test_fused_guided_sampler_equals_reference(backend, sde_name, predictor, corrector):
    labels = torch.arange(24) % 8
    run = lambda b, dt=torch.float32: _conditional(sde_name, labels, 30, b, dt, predictor=predictor,  # noqa: E731
                                                   corrector=corrector)[0]
    ref32, got, truth = run("reference"), run(backend), run("reference", torch.float64)
    # docs/style.md item 4 on the median sample (the odd sample on a ridge between modes amplifies rounding ~100x).
    # truth: the as-written loop on a float64 state. The fused loop tabulates its coefficients in float64, the
    # as-written one in float32 from the float32 time grid: a few ulps apart, ~1e-6 of a state of scale ~2 after
    # 60 updates (the atol).
    err_fast = (got.double() - truth).abs().median().item()
    err_ref = (ref32.double() - truth).abs().median().item()
    assert err_fast <= 2 * err_ref + 2e-6, (err_fast, err_ref)
    assert (got.double() - truth).abs().max().item() < 1e-3
    torch.testing.assert_close(got, ref32, rtol=1e-5, atol=1e-5)  # measured: <= 5e-7 apart


# ----------------------------------------------------------------------------------------------------------------
# Colorization


def test_color_decoupling_is_orthogonal_with_gray_first():
    torch.testing.assert_close(COLOR_DECOUPLING @ COLOR_DECOUPLING.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(COLOR_DECOUPLING[0], torch.full((3,), 3**-0.5, dtype=torch.float64))
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(couple_colors(decouple_colors(x)), x)
    torch.testing.assert_close(decouple_colors(x)[:, 0], x.sum(1) / 3**0.5)


def _pixel_rotation(pixels):
    """Q (3P, 3P) with flat(decouple_colors(x)) = Q flat(x) for x (3, P) flattened channel-major."""
    return torch.kron(COLOR_DECOUPLING, torch.eye(pixels, dtype=torch.float64))


def _gray_independent_gaussian(hw, seed=0):
    """A correlated Gaussian on (3, hw, hw) whose gray channel is independent of its two colour channels.

    Replacement-based colorization samples the exact conditional only in that case (the gray channel is
    re-noised independently of the path; with gray and colour correlated, predictor-only sampling measurably
    shrinks the conditional mean towards the prior mean), so this is the prior the exact answer is tested on.
    Covariances across pixels and between the two colour channels are full, the mean is not zero.
    """
    p = hw * hw
    g = torch.Generator().manual_seed(seed)

    def spd(n):
        root = torch.randn(n, n, generator=g, dtype=torch.float64) * 0.4
        return root @ root.T + 0.05 * torch.eye(n, dtype=torch.float64)

    cov_y = torch.block_diag(spd(p), spd(2 * p))
    q = _pixel_rotation(p)
    cov = q.T @ cov_y @ q
    mean = torch.randn(3 * p, generator=g, dtype=torch.float64) * 0.5
    return GaussianMixture([1.0], mean[None], (0.5 * (cov + cov.T))[None])


def _colorize(mix, sde_name, gray, n_steps, backend="auto", predictor="reverse_diffusion", corrector="langevin",
              denoise=True, seed=1):
    make, continuous = SDES[sde_name]
    sde = make(n_steps)
    model = AnalyticScoreModel(mix, sde, continuous=continuous)
    colorize = controllable.get_pc_colorizer(sde, predictor, corrector, IDENTITY, 0.16, continuous=continuous,
                                             eps=_eps(sde_name), seed=seed, backend=backend, denoise=denoise)
    return colorize(model, gray), sde


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_colorizer_keeps_the_gray_component(sde_name):
    hw = 2
    mix = GaussianMixture([0.5, 0.5], torch.stack([torch.full((12,), -1.0), torch.linspace(-1, 1, 12)]),
                          torch.full((2, 12), 0.3**2))
    color = mix.sample(6, generator=torch.Generator().manual_seed(0)).reshape(6, 3, hw, hw)
    gray3 = color.mean(1, keepdim=True).expand(6, 3, hw, hw)
    out, sde = _colorize(mix, sde_name, gray3, 20)
    assert out.shape == (6, 3, hw, hw)
    coef = sde.marginal_prob(torch.ones(1, 1), torch.full((1,), _eps(sde_name)))[0].item()
    # Known component: the projection's mean at the last time, coef(eps) y0 (y0 itself for VE), y0 = sqrt(3) g.
    torch.testing.assert_close(decouple_colors(out)[:, 0], coef * decouple_colors(color)[:, 0], rtol=1e-6,
                               atol=1e-6)
    if sde_name == "ve":
        torch.testing.assert_close(out.mean(1), color.mean(1), rtol=1e-6, atol=1e-6)
    # The gray image itself (B, 1, H, W), a colour image with that gray, and the repeated gray agree exactly.
    torch.testing.assert_close(_colorize(mix, sde_name, gray3[:, :1], 20)[0], out, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_colorize(mix, sde_name, color, 20)[0], out, rtol=1e-6, atol=1e-6)
    # Colours are generated, not copied: they differ from the zero colour of a gray input.
    assert decouple_colors(out)[:, 1:].abs().mean().item() > 0.1


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_colorizer_samples_the_exact_conditional_gaussian(sde_name):
    hw, n = 2, 1500
    mix = _gray_independent_gaussian(hw)
    mean, cov = mix.means[0], mix.covs[0]
    # One gray image from the prior's gray marginal, repeated over the batch.
    gray_rows = _pixel_rotation(hw * hw)[: hw * hw]  # A: flat(x) -> decoupled gray channel
    a = gray_rows @ mix.sample(1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)[0]
    gray = (a / 3**0.5).reshape(1, 1, hw, hw).expand(n, 1, hw, hw).float()
    # Exact conditional of x ~ N(mean, cov) given A x = a (general Gaussian conditioning).
    gain = cov @ gray_rows.T @ torch.linalg.inv(gray_rows @ cov @ gray_rows.T)
    cond_mean = mean + gain @ (a - gray_rows @ mean)
    cond_cov = cov - gain @ gray_rows @ cov
    out, _ = _colorize(mix, sde_name, gray, 200)
    flat = out.reshape(n, -1).double()
    se = cond_cov.diagonal().sqrt() / n**0.5
    assert ((flat.mean(0) - cond_mean).abs() / (5 * se + 1e-3)).max().item() < 1, (flat.mean(0) - cond_mean)
    # Covariance: every entry within 5 standard errors (sd of a sample covariance ~ sqrt(S_ii S_jj / n)) plus
    # a discretisation allowance of 1% of the largest variance (measured: max error 3.3 sd, no allowance needed).
    sd = (cond_cov.diagonal()[:, None] * cond_cov.diagonal()[None, :]).sqrt() / n**0.5
    err = (torch.cov(flat.T) - cond_cov).abs()
    assert (err <= 5 * sd + 0.01 * cond_cov.diagonal().max()).all(), err.max()


@pytest.mark.parametrize("backend", _fused_backends())
def test_fused_colorizer_equals_reference(backend):
    mix = _gray_independent_gaussian(2, seed=1)
    gray = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    for predictor, corrector in [("reverse_diffusion", "langevin"), ("none", "ald")]:
        ref = _colorize(mix, "vp", gray, 20, "reference", predictor, corrector)[0]
        got = _colorize(mix, "vp", gray, 20, backend, predictor, corrector)[0]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs


def _guided_sampler(**kw):
    sde = sde_lib.VESDE(0.01, 10.0, 3)
    mix = get_mixture("ring")
    clf = AnalyticClassifier(mix, sde)
    args = dict(continuous=True, seed=0)
    args.update(kw)
    return controllable.get_pc_conditional_sampler(sde, clf, (4, 2), "reverse_diffusion", "none", IDENTITY, 0.16,
                                                   **args), AnalyticScoreModel(mix, sde)


@pytest.mark.parametrize("labels,match", [
    (torch.zeros(3, dtype=torch.long), r"shape \(4,\)"),
    (torch.zeros(4, 1, dtype=torch.long), r"shape \(4,\)"),
    (torch.zeros(4, dtype=torch.int32), "torch.long"),
    (torch.zeros(4), "torch.long"),
    ([0, 1, 2, 3], "tensor"),
    (torch.tensor([0, -1, 2, 3]), ">= 0"),
    (torch.tensor([0, 8, 2, 3]), "num_classes = 8"),  # the ring has 8 components
])
def test_conditional_sampler_rejects_bad_labels(labels, match):
    sampler, model = _guided_sampler()
    with pytest.raises(ValueError, match=match):
        sampler(model, labels)


def test_conditional_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scale"):
        _guided_sampler(scale=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        _guided_sampler(backend="cuda-magic")
    sde = sde_lib.VESDE(0.01, 10.0, 3)
    with pytest.raises(ValueError, match="classifier"):
        controllable.get_pc_conditional_sampler(sde, "not a classifier", (4, 2), "reverse_diffusion", "none",
                                                IDENTITY, 0.16)
    with pytest.raises(ValueError, match="shape"):
        controllable.get_pc_conditional_sampler(sde, lambda x, t: x, (4,), "reverse_diffusion", "none", IDENTITY,
                                                0.16)
    model = AnalyticScoreModel(get_mixture("ring"), sde)
    flat_logits = controllable.get_pc_conditional_sampler(sde, lambda x, t: x.sum(1), (4, 2), "reverse_diffusion",
                                                          "none", IDENTITY, 0.16, continuous=True, seed=0)
    with pytest.raises(ValueError, match="logits of shape"):
        flat_logits(model, torch.zeros(4, dtype=torch.long))
    constant = controllable.get_pc_conditional_sampler(sde, lambda x, t: torch.zeros(4, 3), (4, 2),
                                                       "reverse_diffusion", "none", IDENTITY, 0.16, continuous=True,
                                                       seed=0)
    with pytest.raises(ValueError, match="depend on x"):
        constant(model, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="sde"):
        controllable.ClassifierGuidedModel(model, lambda x, t: x, object(), True, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be a tensor of shape"):
        AnalyticClassifier(get_mixture("ring"), sde)(torch.zeros(4, 2), torch.zeros(3))


@pytest.mark.parametrize("gray,match", [
    (torch.zeros(4, 2, 2, 2), r"\(B, 1, \.\.\.\) or \(B, 3, \.\.\.\)"),  # two channels
    (torch.zeros(4, 3), "rank >= 3"),
    (torch.zeros(4, 1, 2, 2, dtype=torch.long), "floating"),
    ("gray", "tensor"),
])
def test_colorizer_rejects_bad_images(gray, match):
    sde = sde_lib.VESDE(0.01, 10.0, 3)
    colorize = controllable.get_pc_colorizer(sde, "reverse_diffusion", "none", IDENTITY, 0.16, seed=0)
    with pytest.raises(ValueError, match=match):
        colorize(AnalyticScoreModel(get_mixture("ring"), sde), gray)


def test_colorizer_rejects_bad_options():
    sde = sde_lib.VESDE(0.01, 10.0, 3)
    with pytest.raises(ValueError, match="eps"):
        controllable.get_pc_colorizer(sde, "reverse_diffusion", "none", IDENTITY, 0.16, eps=2.0)
    with pytest.raises(ValueError, match="unknown predictor"):
        controllable.get_pc_colorizer(sde, "leapfrog", "none", IDENTITY, 0.16)
    with pytest.raises(ValueError, match="noise"):
        controllable.get_pc_colorizer(sde, "reverse_diffusion", "none", IDENTITY, 0.16, noise="numpy")
