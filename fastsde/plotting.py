"""Pictures of samples against the exact density of a `GaussianMixture`, drawn on matplotlib's Agg canvas."""
from __future__ import annotations

import os

import numpy as np
import torch

from fastsde.models.analytic import GaussianMixture

__all__ = ["plot_samples_2d", "mixture_limits"]

_GRID = 200  # density grid points per axis


def _marginal_2d(mixture: GaussianMixture) -> GaussianMixture:
    """The mixture's marginal on its first two coordinates (itself when D = 2)."""
    if mixture.dim < 2:
        raise ValueError(f"plot_samples_2d needs data of dimension >= 2, got {mixture.dim}")
    if mixture.dim == 2:
        return mixture
    covs = mixture.covs[:, :2] if mixture.diagonal else mixture.covs[:, :2, :2]
    return GaussianMixture(mixture.weights, mixture.means[:, :2], covs)


def mixture_limits(mixture: GaussianMixture, k: float = 4.0) -> tuple[float, float, float, float]:
    """A square (xmin, xmax, ymin, ymax) holding every component's mean +- k std on the first two coordinates."""
    mixture = _marginal_2d(mixture)
    covs = mixture.covs if mixture.diagonal else torch.diagonal(mixture.covs, dim1=1, dim2=2)
    reach = k * covs.sqrt()  # (K, 2)
    lo = (mixture.means - reach).amin(0)
    hi = (mixture.means + reach).amax(0)
    centre = (lo + hi) / 2
    half = 0.55 * float((hi - lo).max())  # 10% margin
    cx, cy = float(centre[0]), float(centre[1])
    return cx - half, cx + half, cy - half, cy + half


def plot_samples_2d(samples, mixture: GaussianMixture, path, title: str = "") -> str:
    """Write a two-panel PNG of samples (n, D) against `mixture` (first two coordinates when D > 2); returns path.

    Left: the samples as a scatter over contour lines of the exact log p_0. Right: a 2-D histogram of the samples
    (as a density) under contour lines of the exact p_0. Samples that are not finite are left out of both.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != mixture.dim:
        raise ValueError(f"samples must have shape (n, {mixture.dim}), got {x.shape}")
    x = x[np.isfinite(x).all(axis=1), :2]
    marginal = _marginal_2d(mixture)
    xmin, xmax, ymin, ymax = mixture_limits(mixture)
    gx, gy = np.meshgrid(np.linspace(xmin, xmax, _GRID), np.linspace(ymin, ymax, _GRID))
    grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))
    log_p = marginal.log_prob(grid).numpy().reshape(_GRID, _GRID)
    # log p_0 contours from the peak down 12 nats: the shape of every mode without the far tails.
    log_levels = np.linspace(log_p.max() - 12.0, log_p.max(), 9)[:-1]

    # A bare Figure on an Agg canvas: no pyplot, so no screen and no change to the caller's backend.
    fig = Figure(figsize=(11, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    left.contour(gx, gy, log_p, levels=log_levels, cmap="Blues", linewidths=0.8)
    left.scatter(x[:, 0], x[:, 1], s=2, alpha=0.35, color="tab:red", linewidths=0)
    left.set_title(f"generated samples (n={len(x)}) over contours of exact log p_0", fontsize=10)

    hist, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=80, range=[[xmin, xmax], [ymin, ymax]], density=True)
    right.imshow(hist.T, origin="lower", extent=(xmin, xmax, ymin, ymax), cmap="magma", interpolation="nearest")
    p = np.exp(log_p)
    right.contour(gx, gy, p, levels=np.linspace(0, p.max(), 6)[1:], colors="cyan", linewidths=0.7)
    right.set_title("histogram of samples (density) vs exact p_0 (cyan contours)", fontsize=10)

    for ax in (left, right):
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.set_aspect("equal")
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
    if title:
        fig.suptitle(title, fontsize=11)
    path = os.fspath(path)
    fig.savefig(path, dpi=110)
    return path
