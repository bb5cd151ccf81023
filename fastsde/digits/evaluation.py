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

The classifier's features of every test and training digit (and its logits of the test digits) are shipped beside it
(digits_classifier_features.safetensors, written by `write_reference`), so a quality report classifies only the
generated images. The file carries a key: the sha256 of the classifier file and of the digits it was computed from
(images, labels, split); a file whose key differs from the one computed at load time (another classifier, another
split), or that is damaged, is never used: the features are recomputed (0.6 s) with a warning.
"""
from __future__ import annotations

import functools
import hashlib
import os
import warnings

import numpy as np
import torch

from fastsde import metrics

__all__ = ["DigitsEvaluator", "CLASSIFIER_FILE", "reference_path", "write_reference"]

CLASSIFIER_FILE = "digits_classifier.safetensors"
_REFERENCE_FORMAT = "fastsde.digits_reference/1"


def reference_path(classifier_path: str) -> str:
    """Where the precomputed features of a classifier file live: beside it, <stem>_features.safetensors."""
    return os.path.splitext(classifier_path)[0] + "_features.safetensors"


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
        self._reference = self._read_reference()

    def reference_key(self) -> str:
        """sha256 of what the shipped features depend on: the classifier file's bytes and the digits' images,
        labels and split (the file format's name included, so a new layout never reads an old file)."""
        from fastsde.distributed import file_sha256

        digest = hashlib.sha256(f"{_REFERENCE_FORMAT}\n{file_sha256(self.path)}\n".encode())
        for tensor in (self.test_images, self.test_labels, self.train_images):
            digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _reference_tensors(self) -> dict[str, torch.Tensor]:
        """The features and logits `write_reference` stores, computed (float32, as the classifier returns them)."""
        with torch.no_grad():
            images = self._check(self.test_images)
            return {"test_features": self.classifier.features(images).float().cpu(),
                    "test_logits": self.classifier(images).float().cpu(),
                    "train_features": self.classifier.features(self._check(self.train_images)).float().cpu()}

    def _read_reference(self) -> dict[str, torch.Tensor] | None:
        """The shipped features when the file exists and its key and shapes match these digits and this classifier;
        None (compute them) when there is no file; None with a warning when it is stale or damaged."""
        path = reference_path(self.path)
        if not os.path.isfile(path):
            return None
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {key: f.get_tensor(key) for key in f.keys()}
        except Exception as exc:  # safetensors' own SafetensorError on a damaged file
            problem = f"unreadable ({exc})"
        else:
            problem = _reference_problem(meta, tensors, self.reference_key(), len(self.test_images),
                                         len(self.train_images))
        if problem is None:
            return {key: value.double() for key, value in tensors.items()}
        warnings.warn(f"{path} is not used, the classifier features are recomputed: {problem}", RuntimeWarning,
                      stacklevel=3)
        return None

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
        return self.features(self.test_images) if self._reference is None else self._reference["test_features"]

    @functools.cached_property
    def test_accuracy(self) -> float:
        logits = self.logits(self.test_images) if self._reference is None else self._reference["test_logits"]
        return float((logits.argmax(1) == self.test_labels).double().mean())

    def frechet_distance(self, images: torch.Tensor) -> float:
        return metrics.frechet_distance(self.features(images), self.test_features)

    def evaluate(self, images: torch.Tensor) -> dict:
        """{'fd', 'kid', 'n', 'classes': class_statistics, 'test_accuracy', 'nonfinite'} for generated images;
        images with NaN/inf are counted in 'nonfinite' and left out of everything else ('n' counts the finite ones).
        'kid' is metrics.kernel_distance against the test digits ({'kid', 'stderr', 'subsets', 'subset_size'}), None
        below 2 images per subset."""
        stats, features = self.measure(images)
        result = self.evaluate_statistics(stats)
        result["kid"] = self.kernel_distance_of(features)
        return result

    def kernel_distance(self, images: torch.Tensor) -> dict | None:
        """metrics.kernel_distance of the finite images' features against the test digits' (kernel_distance_of)."""
        return self.kernel_distance_of(self.measure(images)[1])

    def kernel_distance_of(self, features: torch.Tensor) -> dict | None:
        """metrics.kernel_distance of features (m, d) against the test digits', None when there are fewer than 2
        per subset (the estimate needs pairs)."""
        if len(features) < 2 * metrics.KID_SUBSETS:
            return None
        return metrics.kernel_distance(features, self.test_features)

    @functools.cached_property
    def num_classes(self) -> int:
        return int(self.classifier.config.num_classes)

    def statistics(self, images: torch.Tensor) -> torch.Tensor:
        """The sums `evaluate` needs, as one float64 vector that adds across batches and processes (all_reduce):
        [finite count, nonfinite count, sum of max-probabilities, class histogram (K,), sum of (f - c) (d,),
        sum of (f - c)(f - c)^T (d * d)] over the finite images, f their features, c the test digits' mean feature
        (metrics.moments_from_sums)."""
        return self.measure(images)[0]

    @torch.no_grad()
    def measure(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(statistics(images), the finite images' features (m, d) float64) from one pass of the classifier: the
        logits are its output layer applied to the same features."""
        images = images.detach().cpu()
        finite = torch.isfinite(images.flatten(1)).all(1)
        good = images[finite]
        d, k = self.test_features.shape[1], self.num_classes
        stats = torch.zeros(3 + k + d + d * d, dtype=torch.float64)
        stats[0], stats[1] = float(finite.sum()), float((~finite).sum())
        features = torch.zeros(0, d, dtype=torch.float64)
        if len(good):
            raw = self.classifier.features(self._check(good))
            features = raw.double().cpu()
            probs = torch.softmax(self.classifier.out(raw).double().cpu(), dim=1)
            stats[2] = probs.max(1).values.sum()
            stats[3:3 + k] = torch.bincount(probs.argmax(1), minlength=k).double()
            f = features - self._feature_shift
            stats[3 + k:3 + k + d] = f.sum(0)
            stats[3 + k + d:] = (f.T @ f).flatten()
        return stats, features

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
        features = (self.features(self.train_images[idx]) if self._reference is None
                    else self._reference["train_features"][idx])
        return metrics.frechet_distance(features, self.test_features)

    def scale_at(self, n: int, seed: int = 0) -> dict:
        """{'fd_real_vs_real', 'fd_real_vs_noise'} at n (real_vs_real None when n exceeds the training split)."""
        rvr = self.real_vs_real(n, seed) if 2 <= n <= self.train_images.shape[0] else None
        return {"fd_real_vs_real": rvr, "fd_real_vs_noise": self.real_vs_noise(n, seed)}

    def real_vs_noise(self, n: int, seed: int = 0) -> float:
        """FD of n uniform-noise images against the test digits."""
        g = torch.Generator().manual_seed(seed)
        return self.frechet_distance(torch.rand(n, 1, 16, 16, generator=g))


def _reference_problem(meta: dict, tensors: dict, key: str, n_test: int, n_train: int) -> str | None:
    """Why a features file cannot stand for these digits and this classifier, or None when it can."""
    if meta.get("format") != _REFERENCE_FORMAT:
        return f"format {meta.get('format')!r}, expected {_REFERENCE_FORMAT!r}"
    if meta.get("key") != key:
        return "its key (sha256 of the classifier file and the digits) differs: another classifier or other data"
    rows = {"test_features": n_test, "test_logits": n_test, "train_features": n_train}
    for name, count in rows.items():
        t = tensors.get(name)
        if t is None or t.dim() != 2 or t.shape[0] != count or t.dtype != torch.float32 \
                or not bool(torch.isfinite(t).all()):
            return f"{name} is missing or not a finite float32 ({count}, d) table"
    return None


def write_reference(classifier_path: str | None = None) -> str:
    """Compute the classifier's features of the test and training digits and its test logits and write them, with
    their key, to reference_path(classifier); returns that path (run after retraining the classifier)."""
    from safetensors.torch import save_file

    evaluator = DigitsEvaluator(classifier_path)
    path = reference_path(evaluator.path)
    save_file(evaluator._reference_tensors(), path,
              metadata={"format": _REFERENCE_FORMAT, "key": evaluator.reference_key(), "torch": torch.__version__})
    return path
