"""Sample-quality metrics: sliced Wasserstein against known values, its null distribution, and moment errors."""
import functools
import math

import numpy as np
import pytest
import torch

from fastsde.metrics import moment_errors, sliced_wasserstein, sliced_wasserstein_null
from fastsde.models.analytic import get_mixture, isotropic_gaussian


def _sample(name, n, seed):
    return get_mixture(name).sample(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@functools.lru_cache(maxsize=None)
def _null(name, n=2000, repeats=10):
    """SW between independent exact samples of size n (shared by the tests below: it is the slow part)."""
    return sliced_wasserstein_null(get_mixture(name), n, repeats=repeats, sample_seed=1)


@pytest.mark.parametrize("name", ["ring", "checkerboard", "gaussian"])
def test_same_distribution_is_within_null_range(name):
    null = _null(name)
    assert null.shape == (10,) and np.all(null > 0)
    sw = sliced_wasserstein(_sample(name, 2000, 100), _sample(name, 2000, 101))
    assert sw <= 1.25 * null.max(), (sw, null)


@pytest.mark.parametrize("name", ["ring", "checkerboard", "gaussian"])
def test_shifted_distribution_is_clearly_farther(name):
    # A shift c changes every projection by c.theta, so SW^2 ~ |c|^2 E[cos^2] = 0.125 plus the null's own part.
    null = _null(name)
    x, y = _sample(name, 2000, 100), _sample(name, 2000, 101)
    sw = sliced_wasserstein(x, y + torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert sw > 2 * null.max(), (sw, null)


def test_translation_of_the_same_sample():
    # y = x + c: every 1-D projection is translated by c.theta, so W2^2(theta) = (c.theta)^2 exactly and
    # SW^2 = mean_theta (c.theta)^2 ~ |c|^2 / D (256 directions: within ~10%).
    x = _sample("ring", 500, 3)
    c = torch.tensor([0.3, -0.4], dtype=torch.float64)
    sw = sliced_wasserstein(x, x + c)
    assert abs(sw / (0.5 / math.sqrt(2)) - 1) < 0.1, sw


def test_symmetric_zero_on_identical_and_deterministic():
    x, y = _sample("checkerboard", 300, 4), _sample("checkerboard", 700, 5)  # n != m
    assert sliced_wasserstein(x, y) == sliced_wasserstein(y, x)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, y, seed=7) == sliced_wasserstein(x, y, seed=7)
    assert sliced_wasserstein(x, y, seed=7) != sliced_wasserstein(x, y, seed=8)


def test_unequal_sizes_match_the_exact_quantile_integral():
    # The same empirical distribution written with each point repeated: the quantile functions coincide.
    x = _sample("ring", 200, 6)
    assert sliced_wasserstein(x, x.repeat(3, 1)) == pytest.approx(0.0, abs=1e-12)
    # 1-D by hand: F^-1 of {0, 1} vs {0, 0.5, 1} differ by 0.5 on u in (1/3, 2/3): W2^2 = 1/3 * 0.25 = 1/12.
    # In 1-D every direction is +-1 and W2 is invariant under x -> -x, so SW = W2 exactly.
    a = torch.tensor([[0.0], [1.0]])
    b = torch.tensor([[1.0], [0.0], [0.5]])  # unsorted on purpose
    assert sliced_wasserstein(a, b) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)


def test_accepts_numpy_and_image_shaped_samples():
    x = _sample("gaussian", 400, 9)
    y = _sample("gaussian", 400, 10)
    ref = sliced_wasserstein(x, y)
    assert sliced_wasserstein(x.numpy(), y.float().numpy()) == pytest.approx(ref, rel=1e-6)
    assert sliced_wasserstein(x.reshape(400, 1, 2, 1), y.reshape(400, 2, 1)) == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(x, torch.zeros(5, 3))


def test_null_shrinks_like_one_over_sqrt_n():
    # For smooth densities E[W2^2] between two samples of size n decays like 1/n (up to slowly varying factors).
    mix = get_mixture("gaussian")
    small = sliced_wasserstein_null(mix, 250, repeats=10).mean()
    large = sliced_wasserstein_null(mix, 4000, repeats=10).mean()
    assert 2.0 < small / large < 6.0, (small, large)  # sqrt(16) = 4


def test_moment_errors_known_case():
    # Points (1 +- 1, 1 +- 1): mean (1, 1), unbiased covariance (4/3) I. Against N(0, I):
    # mean_err = sqrt(2), cov_err = ||(1/3) I||_F = sqrt(2)/3, relative to ||I||_F = sqrt(2): 1/3.
    pts = torch.tensor([[0.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 2.0]])
    err = moment_errors(pts, isotropic_gaussian(2))
    assert err["mean_err"] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert err["cov_err"] == pytest.approx(math.sqrt(2) / 3, rel=1e-12)
    assert err["cov_rel_err"] == pytest.approx(1 / 3, rel=1e-12)


def test_moment_errors_of_exact_samples_shrink_with_n():
    mix = get_mixture("ring")
    errs = [moment_errors(_sample("ring", n, 11), mix) for n in (1000, 100_000)]
    assert errs[1]["mean_err"] < 0.03 and errs[1]["cov_rel_err"] < 0.03
    assert errs[1]["cov_err"] < errs[0]["cov_err"]
    with pytest.raises(ValueError, match="samples"):
        moment_errors(torch.zeros(10, 3), mix)


# ---------------------------------------------------------------------------------------------- kernel distance (KID)


def _kid_brute(x, y):
    """The unbiased MMD^2 with the cubic kernel, by explicit double loops over pairs (the definition)."""
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    m, r = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(r) for j in range(r) if i != j) / (r * (r - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(r)) / (m * r)
    return kxx + kyy - 2 * kxy


def test_kernel_distance_matches_the_definition_per_subset():
    from fastsde.metrics import kernel_distance

    g = np.random.default_rng(0)
    x, y = g.normal(size=(13, 3)), g.normal(0.5, 1.0, size=(7, 3))
    got = kernel_distance(x, y, subsets=3)  # parts of 4 and 2; the 13th feature and the 7th reference are left out
    parts = [_kid_brute(x[4 * s:4 * s + 4], y[2 * s:2 * s + 2]) for s in range(3)]
    assert got["subset_size"] == 4 and got["subsets"] == 3
    assert got["kid"] == pytest.approx(np.mean(parts), rel=1e-12)
    assert got["stderr"] == pytest.approx(np.std(parts, ddof=1) / math.sqrt(3), rel=1e-12)


def test_kernel_distance_is_unbiased_and_its_stderr_covers_repeated_draws():
    """Two samples of one distribution: the estimates average to 0 (FD would not: it is biased upwards at small n),
    and the reported standard error matches the spread of independent repeats (within the spread's own noise)."""
    from fastsde.metrics import kernel_distance

    g = np.random.default_rng(1)
    runs = [kernel_distance(g.normal(size=(64, 8)), g.normal(size=(300, 8))) for _ in range(200)]
    kids = np.array([r["kid"] for r in runs])
    se_of_mean = kids.std(ddof=1) / math.sqrt(len(kids))
    assert abs(kids.mean()) < 4 * se_of_mean, (kids.mean(), se_of_mean)
    ratio = np.mean([r["stderr"] for r in runs]) / kids.std(ddof=1)
    assert 0.7 < ratio < 1.3, ratio
    # a shifted distribution is far outside that noise
    shifted = kernel_distance(g.normal(0.5, 1.0, size=(64, 8)), g.normal(size=(300, 8)))
    assert shifted["kid"] > 5 * kids.std(ddof=1)


@pytest.mark.parametrize("bad, match", [
    (dict(features=np.zeros((8, 3)), reference=np.zeros((8, 2))), "same d"),
    (dict(features=np.zeros((8, 3)), reference=np.zeros((8, 3)), subsets=1), "subsets must be an int >= 2"),
    (dict(features=np.zeros((8, 3)), reference=np.zeros((8, 3)), subsets=True), "subsets must be an int >= 2"),
    (dict(features=np.zeros((7, 3)), reference=np.zeros((8, 3))), ">= 2 features and >= 2 reference features"),
    (dict(features=np.zeros((8, 3)), reference=np.zeros((7, 3))), ">= 2 features and >= 2 reference features"),
    (dict(features=np.full((8, 3), np.nan), reference=np.zeros((8, 3))), "features contain NaN or inf"),
    (dict(features=np.zeros((8, 3)), reference=np.full((8, 3), np.inf)), "reference contain NaN or inf"),
    (dict(features=np.empty((8, 0)), reference=np.empty((8, 0))), "same d >= 1"),
    (dict(features=np.ones((8, 3)) * 1e200, reference=np.ones((8, 3))), "the cubic kernel overflowed float64"),
    (dict(features=np.ones((8, 3)) * 1e60, reference=np.ones((8, 3))), "the cubic kernel overflowed float64"),
    (dict(features=np.zeros(8), reference=np.zeros((8, 3))), r"features must be an \(n, d\) array"),
    (dict(features=[[1, 2], [3]], reference=np.zeros((8, 2))), r"features must be an \(n, d\) array of numbers"),
])
def test_kernel_distance_refuses_bad_input(bad, match):
    from fastsde.metrics import kernel_distance

    with pytest.raises(ValueError, match=match):
        kernel_distance(**bad)


@pytest.mark.parametrize("bad, match", [
    (torch.empty(8, 3, device="meta"), "features must be a dense tensor with data"),
    (torch.zeros(8, 3).to_sparse(), "features must be a dense tensor with data"),
    (torch.zeros(8, 3, dtype=torch.complex64), "features must be real"),
    (np.zeros((8, 3)) + 1j, "features must be real"),
    (np.ma.masked_array(np.zeros((8, 3))), "must not be a masked array"),
    (np.array([["a"] * 3] * 8), "features must hold numbers"),
])
def test_kernel_distance_refuses_what_it_would_silently_change(bad, match):
    from fastsde.metrics import kernel_distance

    with pytest.raises(TypeError, match=match):
        kernel_distance(bad, np.zeros((8, 3)))


def test_kernel_distance_takes_half_precision_tensors():
    from fastsde.metrics import kernel_distance

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g)
    half = kernel_distance(x.to(torch.bfloat16), y)
    assert half == kernel_distance(x.to(torch.bfloat16).double(), y)  # bf16 values, computed in float64
