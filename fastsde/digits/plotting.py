"""Pictures, without a screen: 2-D samples against the exact density of a `GaussianMixture` (matplotlib's Agg canvas,
no pyplot), and grids of images (panels with captions under a title) for the image models (Pillow)."""
from __future__ import annotations

import os

import numpy as np
import torch

from fastsde.models.analytic import GaussianMixture

__all__ = ["plot_samples_2d", "mixture_limits", "image_grid", "save_image_grid", "save_image_panels"]

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


def image_grid(images, nrow: int | None = None, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
    """Tile images (B, C, H, W) (C 1 or 3, values in [0, 1]) into one (rows, cols[, 3]) array, nrow per row."""
    x = np.asarray(images.detach().cpu().float() if isinstance(images, torch.Tensor) else images, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1 or 3, H, W), got shape {x.shape}")
    b, c, h, w = x.shape
    nrow = int(nrow or max(1, int(np.ceil(np.sqrt(b)))))
    rows = int(np.ceil(b / nrow))
    grid = np.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value, dtype=np.float32)
    for i in range(b):
        r, q = divmod(i, nrow)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = x[i]
    grid = np.clip(np.nan_to_num(grid, nan=0.0), 0.0, 1.0)
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_panels(panels, path, title: str = "", nrow: int | None = None, zoom: int = 3) -> str:
    """One PNG with a captioned panel per (caption, images (B, C, H, W) in [0, 1]) pair of `panels`, side by side
    under a title (lines split at newlines); each image pixel becomes a zoom x zoom block. Drawn with Pillow, not
    matplotlib: importing and laying out a matplotlib figure cost 0.65 s of a 2.7 s `fastsde sample` call."""
    from PIL import Image, ImageDraw

    grids = [(caption, image_grid(images, nrow)) for caption, images in panels]
    if not grids:
        raise ValueError("no panels to draw")
    pictures = [Image.fromarray(np.round(grid * 255.0).astype(np.uint8)).resize(
        (grid.shape[1] * zoom, grid.shape[0] * zoom), Image.Resampling.NEAREST) for _, grid in grids]
    title_font, caption_font = _font(13), _font(11)
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))

    def size(text, font):  # (width, height) of a possibly multi-line text, (0, 0) for none
        return measure.multiline_textbbox((0, 0), text, font=font)[2:] if text else (0, 0)

    margin, gap = 10, 16
    title_w, title_h = size(title, title_font)
    caption_h = max(size(caption, caption_font)[1] for caption, _ in grids)
    panels_w = sum(max(p.width, size(c, caption_font)[0]) for (c, _), p in zip(grids, pictures)) \
        + gap * (len(grids) - 1)
    top = margin + (title_h + gap // 2 if title else 0)
    canvas = Image.new("RGB", (2 * margin + max(panels_w, title_w),
                               top + (caption_h + 4 if caption_h else 0) + max(p.height for p in pictures) + margin),
                       "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text(((canvas.width - title_w) // 2, margin), title, font=title_font, fill="black",
                            align="center")
    x = (canvas.width - panels_w) // 2
    for (caption, _), picture in zip(grids, pictures):
        width = max(picture.width, size(caption, caption_font)[0])
        if caption:
            draw.text((x + (width - size(caption, caption_font)[0]) // 2, top), caption, font=caption_font,
                      fill="black")
        canvas.paste(picture, (x + (width - picture.width) // 2, top + (caption_h + 4 if caption_h else 0)))
        x += width + gap
    path = os.fspath(path)
    canvas.save(path, format="PNG")
    return path


def _font(size: int):
    """Pillow's built-in font at `size` points (its bitmap font where Pillow was built without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (ImportError, TypeError):  # no FreeType (or a Pillow before 10.1): the fixed-size bitmap font
        return ImageFont.load_default()


def save_image_grid(images, path, title: str = "", nrow: int | None = None) -> str:
    """A PNG of images (B, C, H, W) in [0, 1] as one grid, with an optional title; returns path."""
    return save_image_panels([("", images)], path, title=title, nrow=nrow)
