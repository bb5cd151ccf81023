"""Sample-quality numbers: against an exact distribution (moment errors, sliced 2-Wasserstein distance), and for
image models without an exact density, the Fréchet distance between Gaussians fitted to classifier features and the
class histogram of generated images (`frechet_distance`, `class_statistics`; `fastsde eval` uses both).

Samplers are judged against `fastsde.models.analytic.GaussianMixture` ground truth. Since any finite sample has a
nonzero distance to its own distribution, `sliced_wasserstein_null` gives the yardstick: the distances between two
independent exact samples of the same size, against which a sampler's distance is bounded.
"""
from __future__ import annotations

import numpy as np
import torch

from fastsde.models.analytic import GaussianMixture

__all__ = ["moment_errors", "sliced_wasserstein", "sliced_wasserstein_null", "frechet_distance",
           "frechet_distance_gaussians", "kernel_distance", "KID_SUBSETS", "moments_from_sums", "class_statistics",
           "class_statistics_from_counts"]


def _as_samples(name: str, x, dim: int | None = None) -> torch.Tensor:
    """Samples (n, ...) (tensor or array) as a CPU float64 (n, D) tensor, with D = dim when given."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a tensor or array of samples: {err}") from None
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n, ...) with n >= 1 samples, got {tuple(x.shape)}")
    x = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1)
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} elements per sample, got {x.shape[1]}")
    return x


def moment_errors(samples, mixture: GaussianMixture) -> dict[str, float]:
    """Errors of the sample moments of samples (n, D) against the exact mixture moments.

    Returns mean_err = ||mean_hat - mu||_2, cov_err = ||Sigma_hat - Sigma||_F and cov_rel_err = cov_err / ||Sigma||_F,
    with Sigma_hat the unbiased (n - 1) sample covariance.
    """
    x = _as_samples("samples", samples, mixture.dim)
    if x.shape[0] < 2:
        raise ValueError(f"samples needs at least 2 samples for a covariance, got {x.shape[0]}")
    cov_hat = torch.cov(x.T).reshape(mixture.dim, mixture.dim)
    cov = mixture.cov()
    cov_err = torch.linalg.matrix_norm(cov_hat - cov).item()
    return {
        "mean_err": torch.linalg.vector_norm(x.mean(0) - mixture.mean()).item(),
        "cov_err": cov_err,
        "cov_rel_err": cov_err / torch.linalg.matrix_norm(cov).item(),
    }


def _w2_squared_1d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """W2^2 between empirical 1-D distributions, per row: a (P, n), b (P, m) sorted along axis 1 -> (P,).

    W2^2 = int_0^1 (F_a^-1(u) - F_b^-1(u))^2 du, exact: both quantile functions are constant between the merged
    breakpoints {i / n} U {j / m}, so the integral is a sum over those segments (the plain mean when n = m).
    """
    n, m = a.shape[1], b.shape[1]
    if n == m:
        return ((a - b) ** 2).mean(axis=1)
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    width = np.diff(u, prepend=0.0)
    mid = u - width / 2  # inside each segment, at least 1 / (2 n m) from its ends
    ia = np.minimum((mid * n).astype(np.int64), n - 1)
    ib = np.minimum((mid * m).astype(np.int64), m - 1)
    return ((a[:, ia] - b[:, ib]) ** 2) @ width


def _directions(dim: int, num_projections: int, seed: int) -> torch.Tensor:
    """num_projections unit vectors (P, D), uniform on the sphere, fixed by seed."""
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.randn(num_projections, dim, generator=g, dtype=torch.float64)
    return theta / torch.linalg.vector_norm(theta, dim=1, keepdim=True)


def sliced_wasserstein(x, y, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between samples x (n, D) and y (m, D): sqrt(mean_theta W2^2(x.theta, y.theta)).

    theta: num_projections random unit directions fixed by seed; each 1-D W2^2 is exact by quantile matching
    (merged quantile breakpoints when n != m). Symmetric in (x, y) and 0 for identical inputs.
    """
    x, y = _as_samples("x", x), _as_samples("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if int(num_projections) < 1:
        raise ValueError(f"num_projections must be >= 1, got {num_projections}")
    theta = _directions(x.shape[1], int(num_projections), seed)
    # NumPy sorts the contiguous (P, n) rows several times faster than torch's CPU sort.
    px = np.sort((theta @ x.T).numpy(), axis=1)
    py = np.sort((theta @ y.T).numpy(), axis=1)
    return float(np.sqrt(_w2_squared_1d(px, py).mean()))


def sliced_wasserstein_null(mixture: GaussianMixture, n: int, repeats: int = 20, m: int | None = None,
                            num_projections: int = 256, seed: int = 0, sample_seed: int = 0) -> np.ndarray:
    """Null distribution (repeats,) of sliced_wasserstein(x, y, num_projections, seed), x (n, D), y (m, D) exact.

    x and y are independent exact samples of `mixture` (m defaults to n), drawn from a generator seeded with
    sample_seed. A sampler whose output has SW to an exact sample of a few times np.quantile(null, 0.95) or more is
    distinguishable from the target at this sample size.
    """
    if int(n) < 1 or int(repeats) < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    m = n if m is None else m
    g = torch.Generator().manual_seed(int(sample_seed))
    null = []
    for _ in range(int(repeats)):
        x = mixture.sample(int(n), generator=g, dtype=torch.float64)
        y = mixture.sample(int(m), generator=g, dtype=torch.float64)
        null.append(sliced_wasserstein(x, y, num_projections=num_projections, seed=seed))
    return np.asarray(null)


def frechet_distance(features_a, features_b) -> float:
    """Fréchet (2-Wasserstein) distance between Gaussians fitted to two feature sets (n_a, d), (n_b, d):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64 (the FID formula of Heusel et al.
    2017 with any feature extractor); the sample covariances are unbiased (n - 1)."""
    a = np.asarray(features_a.detach().cpu() if isinstance(features_a, torch.Tensor) else features_a, np.float64)
    b = np.asarray(features_b.detach().cpu() if isinstance(features_b, torch.Tensor) else features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (n, d) arrays with the same d, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError("need at least 2 samples per feature set for a covariance")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or inf")
    return frechet_distance_gaussians(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


KID_SUBSETS = 4


def _poly_kernel_sums(x: np.ndarray, y: np.ndarray) -> float:
    """sum over all pairs of k(x_i, y_j) = (x_i . y_j / d + 1)^3 (Bińkowski et al.'s cubic kernel)."""
    return float((((x @ y.T) / x.shape[1] + 1.0) ** 3).sum())


def _real_matrix(name: str, x) -> np.ndarray:
    """`x` (a tensor or array-like of real numbers, shape (n, d)) as a float64 numpy array, or one clear error."""
    if isinstance(x, torch.Tensor):
        if x.is_meta or x.layout != torch.strided:
            raise TypeError(f"{name} must be a dense tensor with data, got a {x.device.type} {x.layout} tensor")
        if x.is_complex():
            raise TypeError(f"{name} must be real, got {x.dtype}")
        x = x.detach().to("cpu", torch.float64).numpy()
    elif np.ma.isMaskedArray(x):
        raise TypeError(f"{name} must not be a masked array (its mask would be dropped)")
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an (n, d) array of numbers: {err}") from None
    if np.iscomplexobj(x):
        raise TypeError(f"{name} must be real, got {x.dtype}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (n, d) array, got shape {x.shape}")
    return x.astype(np.float64)


def kernel_distance(features, reference, subsets: int = KID_SUBSETS) -> dict:
    """The kernel distance (KID, Bińkowski et al. 2018) between generated features (n, d) and reference features
    (r, d): the unbiased estimate of the squared MMD with the cubic polynomial kernel (x . y / d + 1)^3, with its
    standard error.

    Both sets are split in order into `subsets` disjoint parts (m = n // subsets generated and q = r // subsets
    reference features each; a sampler's samples are independent of each other, so no shuffle is needed; remainders
    are left out). Part s of the generated features against part s of the reference gives one unbiased estimate; the
    estimates are independent, so their mean has standard error std / sqrt(subsets), covering the noise of both
    samples. Unlike FD, the estimate has no bias in n: two samples of one distribution give 0 on average (a single
    estimate can be negative).

    Returns {"kid": mean, "stderr": standard error, "subsets": subsets, "subset_size": m}."""
    a, b = _real_matrix("features", features), _real_matrix("reference", reference)
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"features must be (n, d) arrays with the same d >= 1, got {a.shape} and {b.shape}")
    if isinstance(subsets, bool) or not isinstance(subsets, (int, np.integer)) or subsets < 2:
        raise ValueError(f"subsets must be an int >= 2 (a standard error needs two estimates), got {subsets!r}")
    m, q = len(a) // subsets, len(b) // subsets
    if m < 2 or q < 2:
        raise ValueError(f"the kernel distance needs >= 2 features and >= 2 reference features per subset, got "
                         f"{len(a)} features and {len(b)} reference features in {subsets} subsets")
    for name, x in (("features", a), ("reference", b)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contain NaN or inf ({int((~np.isfinite(x)).any(1).sum())} of {len(x)} rows)")

    def within(x):  # sum over i != j of k(x_i, x_j)
        return _poly_kernel_sums(x, x) - float(((np.einsum("ij,ij->i", x, x) / x.shape[1] + 1.0) ** 3).sum())

    estimates = []
    for s in range(subsets):
        x, y = a[s * m:(s + 1) * m], b[s * q:(s + 1) * q]
        estimates.append(within(x) / (m * (m - 1)) + within(y) / (q * (q - 1))
                         - 2.0 * _poly_kernel_sums(x, y) / (m * q))
    est = np.asarray(estimates)
    if not np.isfinite(est).all() or not np.isfinite(est.std()):
        raise ValueError(f"the cubic kernel overflowed float64: features up to |x| = {np.abs(a).max():.3g}, reference "
                         f"up to {np.abs(b).max():.3g} (d = {a.shape[1]}); the kernel grows as (x . y / d)^3")
    return {"kid": float(est.mean()), "stderr": float(est.std(ddof=1) / np.sqrt(subsets)), "subsets": int(subsets),
            "subset_size": int(m)}


def frechet_distance_gaussians(mu_a, cov_a, mu_b, cov_b) -> float:
    """Fréchet distance between N(mu_a (d,), cov_a (d, d)) and N(mu_b, cov_b) (see frechet_distance). The matrix
    square root is taken of the symmetric PSD S_a^1/2 S_b S_a^1/2 by eigendecomposition, so it is real and stable;
    eigenvalues below numpy's rank tolerance (d eps max|w|; round-off of a singular covariance, as when n <= d) are
    taken as 0, so the square root does not magnify round-off."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a = np.asarray(cov_a, np.float64).reshape(len(mu_a), len(mu_a))
    cov_b = np.asarray(cov_b, np.float64).reshape(len(mu_b), len(mu_b))
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"the means must have the same shape, got {mu_a.shape} and {mu_b.shape}")

    def psd_sqrt(m):
        w, v = np.linalg.eigh((m + m.T) / 2)
        w[w < len(w) * np.finfo(np.float64).eps * np.abs(w).max(initial=0.0)] = 0.0
        return (v * np.sqrt(w)) @ v.T

    root_a = psd_sqrt(cov_a)
    cross = psd_sqrt(root_a @ cov_b @ root_a)
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(cross))
    return max(value, 0.0)


def moments_from_sums(count, total, outer, shift=None):
    """(mean (d,), unbiased covariance (d, d)) of n = count vectors x_i from the sums total = sum (x_i - shift) and
    outer = sum (x_i - shift)(x_i - shift)^T, in float64. Sums add across processes (all_reduce); a shift near the
    mean (default 0) keeps the one-pass covariance (outer - total total^T / n) / (n - 1) free of cancellation."""
    n = float(count)
    if n < 2:
        raise ValueError(f"count must be at least 2 for a covariance, got {count}")
    total = np.asarray(total, np.float64)
    d = total.shape[0]
    outer = np.asarray(outer, np.float64).reshape(d, d)
    mean = total / n
    cov = (outer - np.outer(total, mean)) / (n - 1)
    return mean + (0.0 if shift is None else np.asarray(shift, np.float64)), (cov + cov.T) / 2


def class_statistics(logits, num_classes: int | None = None) -> dict:
    """Histogram of argmax classes, its entropy (nats; log(num_classes) is perfectly balanced) and the mean
    max-probability (confidence) of a batch of classifier logits (n, num_classes)."""
    logits = torch.as_tensor(logits).detach().cpu().double()
    if logits.dim() != 2:
        raise ValueError(f"logits must be (n, num_classes), got shape {tuple(logits.shape)}")
    k = int(num_classes or logits.shape[1])
    probs = torch.softmax(logits, dim=1)
    hist = torch.bincount(probs.argmax(1), minlength=k).double()
    return class_statistics_from_counts(hist, float(probs.max(1).values.sum()))


def class_statistics_from_counts(histogram, confidence_sum: float) -> dict:
    """class_statistics from its sums (they add across processes): the histogram (num_classes,) of argmax classes
    and the sum of the max-probabilities."""
    hist = torch.as_tensor(histogram, dtype=torch.float64)
    n = hist.sum()
    if n < 1:
        raise ValueError("the histogram is empty")
    freq = hist / n
    nz = freq[freq > 0]
    return {"histogram": [int(v) for v in hist.tolist()], "entropy": float(-(nz * nz.log()).sum()),
            "max_entropy": float(np.log(len(hist))), "confidence": float(confidence_sum / n)}
