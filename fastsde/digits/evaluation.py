"""Quality of generated digits without downloads: a shipped classifier's feature space and its predictions.

`DigitsEvaluator` loads the clean-image classifier (fastsde/digits/weights/digits_classifier.safetensors, trained on the
training split only) and reports, for a batch of generated images in [0, 1]:
  fd            Fréchet distance between Gaussians fitted to the classifier's penultimate features of the generated
                images and of the held-out test digits (359 images) — an FID computed in a digit classifier's space;
  kid           the kernel distance in the same space (metrics.kernel_distance: unbiased, so comparable across n,
                with its standard error over disjoint subsets of the generated and test images); None from the summed
                statistics of several processes (evaluate_statistics), which carry no features;
  classes       the histogram of predicted classes, its entropy (log 10 = 2.303 is perfectly balanced) and the mean
                confidence;
  test_accuracy the classifier's accuracy on the real test digits (how much its features can be trusted).
Fréchet distances shrink with sample size only through the estimation error of the fitted Gaussians, so values are
comparable only at equal n: `real_vs_real(n)` (n training digits vs the test digits) and `real_vs_noise(n)` (n
uniform-noise images vs the test digits) give the scale at the same n.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from fastsde import metrics

__all__ = ["DigitsEvaluator", "CLASSIFIER_FILE"]

CLASSIFIER_FILE = "digits_classifier.safetensors"


class DigitsEvaluator:
    """Metrics of generated 16x16 digits in [0, 1] (module docstring). classifier_path: default the shipped one."""

    def __init__(self, classifier_path: str | None = None, device="cpu"):
        from fastsde.digits.data import load_digits
        from fastsde.digits.pretrained import load_classifier, shipped_path

        self.path = classifier_path or shipped_path(CLASSIFIER_FILE)
        self.classifier, sde, self.training = load_classifier(self.path, device=device)
        if sde is not None or self.classifier.config.time_embedding is not None:
            raise ValueError(f"{self.path} is a time-dependent classifier; the metrics need a clean-image one")
        self.device = torch.device(device)
        self.test_images, self.test_labels = load_digits("test")
        self.train_images = load_digits("train")[0]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self._check(images)).double().cpu()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self._check(images)).double().cpu()

    def _check(self, images):
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (1, 16, 16):
            raise ValueError(f"images must be a (n, 1, 16, 16) tensor, got {getattr(images, 'shape', images)}")
        return images.to(self.device, torch.float32).clamp(0.0, 1.0)

    @functools.cached_property
    def test_features(self) -> torch.Tensor:
        return self.features(self.test_images)

    @functools.cached_property
    def test_accuracy(self) -> float:
        return float((self.logits(self.test_images).argmax(1) == self.test_labels).double().mean())

    def frechet_distance(self, images: torch.Tensor) -> float:
        return metrics.frechet_distance(self.features(images), self.test_features)

    def evaluate(self, images: torch.Tensor) -> dict:
        """{'fd', 'kid', 'n', 'classes': class_statistics, 'test_accuracy', 'nonfinite'} for generated images;
        images with NaN/inf are counted in 'nonfinite' and left out of everything else ('n' counts the finite ones).
        'kid' is metrics.kernel_distance against the test digits ({'kid', 'stderr', 'subsets', 'subset_size'}), None
        below 2 images per subset."""
        result = self.evaluate_statistics(self.statistics(images))
        result["kid"] = self.kernel_distance(images)
        return result

    def kernel_distance(self, images: torch.Tensor) -> dict | None:
        """metrics.kernel_distance of the finite images' features against the test digits', None when there are
        fewer than 2 finite images per subset (the estimate needs pairs)."""
        images = images.detach().cpu()
        good = images[torch.isfinite(images.flatten(1)).all(1)]
        if len(good) < 2 * metrics.KID_SUBSETS:
            return None
        return metrics.kernel_distance(self.features(good), self.test_features)

    @functools.cached_property
    def num_classes(self) -> int:
        return int(self.logits(self.test_images[:1]).shape[1])

    def statistics(self, images: torch.Tensor) -> torch.Tensor:
        """The sums `evaluate` needs, as one float64 vector that adds across batches and processes (all_reduce):
        [finite count, nonfinite count, sum of max-probabilities, class histogram (K,), sum of (f - c) (d,),
        sum of (f - c)(f - c)^T (d * d)] over the finite images, f their features, c the test digits' mean feature
        (metrics.moments_from_sums)."""
        images = images.detach().cpu()
        finite = torch.isfinite(images.flatten(1)).all(1)
        good = images[finite]
        d, k = self.test_features.shape[1], self.num_classes
        stats = torch.zeros(3 + k + d + d * d, dtype=torch.float64)
        stats[0], stats[1] = float(finite.sum()), float((~finite).sum())
        if len(good):
            probs = torch.softmax(self.logits(good), dim=1)
            stats[2] = probs.max(1).values.sum()
            stats[3:3 + k] = torch.bincount(probs.argmax(1), minlength=k).double()
            f = self.features(good) - self._feature_shift
            stats[3 + k:3 + k + d] = f.sum(0)
            stats[3 + k + d:] = (f.T @ f).flatten()
        return stats

    def evaluate_statistics(self, stats: torch.Tensor) -> dict:
        """`evaluate`'s result from the summed `statistics` of all the images (FD via metrics.moments_from_sums)."""
        d, k = self.test_features.shape[1], self.num_classes
        stats = torch.as_tensor(stats, dtype=torch.float64).cpu()
        if stats.shape != (3 + k + d + d * d,):
            raise ValueError(f"stats must be DigitsEvaluator.statistics output of shape ({3 + k + d + d * d},), got "
                             f"{tuple(stats.shape)}")
        n = int(stats[0])
        if n == 0:
            raise ValueError("every generated image contains NaN or inf")
        if n < 2:
            raise ValueError("the Fréchet distance needs at least 2 finite images")
        mean, cov = metrics.moments_from_sums(n, stats[3 + k:3 + k + d].numpy(), stats[3 + k + d:].numpy(),
                                              shift=self._feature_shift.numpy())
        test = self.test_features.numpy()
        fd = metrics.frechet_distance_gaussians(mean, cov, test.mean(0), np.cov(test, rowvar=False))
        return {"n": n, "nonfinite": int(stats[1]), "fd": fd, "kid": None,  # KID needs the features themselves
                "classes": metrics.class_statistics_from_counts(stats[3:3 + k], float(stats[2])),
                "test_accuracy": self.test_accuracy}

    @functools.cached_property
    def _feature_shift(self) -> torch.Tensor:
        return self.test_features.mean(0)

    def real_vs_real(self, n: int, seed: int = 0) -> float:
        """FD of n training digits (a seeded random subset) against the test digits."""
        if not 2 <= n <= self.train_images.shape[0]:
            raise ValueError(f"real_vs_real needs 2 <= n <= {self.train_images.shape[0]} (the training split), got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.train_images.shape[0], generator=g)[:n]
        return self.frechet_distance(self.train_images[idx])

    def scale_at(self, n: int, seed: int = 0) -> dict:
        """{'fd_real_vs_real', 'fd_real_vs_noise'} at n (real_vs_real None when n exceeds the training split)."""
        rvr = self.real_vs_real(n, seed) if 2 <= n <= self.train_images.shape[0] else None
        return {"fd_real_vs_real": rvr, "fd_real_vs_noise": self.real_vs_noise(n, seed)}

    def real_vs_noise(self, n: int, seed: int = 0) -> float:
        """FD of n uniform-noise images against the test digits."""
        g = torch.Generator().manual_seed(seed)
        return self.frechet_distance(torch.rand(n, 1, 16, 16, generator=g))
