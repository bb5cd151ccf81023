"""Gaussian mixtures with exact perturbed densities and scores: the ground truth the samplers are tested against.

p_0 = sum_k w_k N(mu_k, Sigma_k). Every SDE in fastsde has a drift linear in x, so its marginal stays a mixture,
p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + s^2 I), with (m, s) the marginal mean coefficient and std at t (Song et al.,
ICLR 2021, eq. 29 and appendix B). `AnalyticScoreModel` wraps that exact score in score_sde's network conventions,
so that `fastsde.models.utils.get_score_fn` turns it back into the exact score of the SDE's marginal;
`AnalyticClassifier` is the matching exact noisy-data classifier p_t(component k | x) for classifier guidance.

Each covariance is kept as its eigendecomposition Sigma_k = U_k diag(lam_k) U_k^T (U_k = I for diagonal input).
Then m^2 Sigma_k + s^2 I = U_k diag(m^2 lam_k + s^2) U_k^T for every per-sample (m, s) at the cost of one
decomposition, never one factorisation per sample. Everything is float64.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

from fastsde import sde as sde_lib
from fastsde._util import per_sample

__all__ = ["GaussianMixture", "AnalyticScoreModel", "AnalyticClassifier", "PRESETS", "get_mixture",
           "isotropic_gaussian", "FrequencyMixture", "AnalyticHeatModel"]

_LOG_2PI = math.log(2.0 * math.pi)


def _as_float64(name: str, value) -> torch.Tensor:
    """`value` (tensor, array or nested list) as a CPU float64 tensor; a ValueError naming `name` otherwise."""
    try:
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", torch.float64)
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be convertible to a float tensor: {err}") from None


def _per_sample_coef(name: str, value, batch: int, device) -> torch.Tensor:
    """A Python number, 0-d tensor or (B,) tensor as a float64 (B,) tensor on `device`."""
    if isinstance(value, numbers.Real):
        return torch.full((batch,), float(value), dtype=torch.float64, device=device)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a Python float or a tensor of shape ({batch},), got {type(value).__name__}")
    value = value.to(device, torch.float64)
    if value.dim() == 0:
        return value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(f"{name} must be a scalar or have shape ({batch},) (one per sample), got {tuple(value.shape)}")
    return value


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    """Results come back in x's dtype; float64 for integer x."""
    return x.dtype if x.is_floating_point() else torch.float64


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in D dimensions: weights (K,), means (K, D), covs (K, D) or (K, D, D).

    covs of shape (K, D) are diagonal variances, (K, D, D) full symmetric positive-definite covariances. Weights
    must be positive; they are normalised to sum to 1. All parameters are stored as CPU float64 tensors.
    """

    def __init__(self, weights, means, covs):
        weights = _as_float64("weights", weights)
        if weights.dim() != 1 or weights.numel() == 0:
            raise ValueError(f"weights must be a non-empty (K,) vector, got shape {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights <= 0).any():
            raise ValueError(f"weights must be finite and positive, got {weights.tolist()}")
        K = weights.shape[0]
        means = _as_float64("means", means)
        if means.dim() != 2 or means.shape[0] != K or means.shape[1] == 0:
            raise ValueError(f"means must have shape (K, D) with K = {K} (from weights), got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        D = means.shape[1]
        covs = _as_float64("covs", covs)
        if not torch.isfinite(covs).all():
            raise ValueError("covs must be finite")
        if covs.shape == (K, D):
            if (covs <= 0).any():
                raise ValueError(f"covs given as (K, D) diagonal variances must be positive, got min {covs.min():.3g}")
            eigvals, eigvecs = covs.clone(), None
        elif covs.shape == (K, D, D):
            scale = covs.abs().amax(dim=(1, 2), keepdim=True)
            if ((covs - covs.mT).abs() > 1e-10 * scale).any():
                raise ValueError("covs must be symmetric (each (D, D) covariance equal to its transpose)")
            covs = 0.5 * (covs + covs.mT)
            _, info = torch.linalg.cholesky_ex(covs)
            eigvals, eigvecs = torch.linalg.eigh(covs)
            bad = ((info != 0) | (eigvals <= 0).any(dim=1)).nonzero().flatten().tolist()
            if bad:
                raise ValueError(f"covs must be positive definite; component(s) {bad} are not")
        else:
            raise ValueError(f"covs must have shape (K, D) = ({K}, {D}) for diagonal variances or (K, D, D) = "
                             f"({K}, {D}, {D}) for full covariances, got {tuple(covs.shape)}")
        self.weights = weights / weights.sum()
        self.means = means
        self.covs = covs
        self.diagonal = eigvecs is None
        self._eigvals = eigvals  # (K, D) eigenvalues of Sigma_k (the variances when diagonal)
        # Host facts of the parameters, read once here so no later call branches on tensor data (a compiled or
        # captured sampler traces the model; a data-dependent branch there would break the graph).
        self._uniform_w = bool((self.weights == self.weights[0]).all())
        self._shared_lam = float(eigvals[0, 0]) if bool((eigvals == eigvals[0, 0]).all()) else None
        self._eigvecs = eigvecs  # (K, D, D) columns are eigenvectors, or None for the identity
        self._device_cache: dict[torch.device, tuple] = {}
        # Isotropic components (Sigma_k = lam_k I) take a fast path: (B, K) algebra and two matmuls, no (B, K, D).
        self.isotropic = self.diagonal and bool((eigvals == eigvals[:, :1]).all())

    @property
    def dim(self) -> int:
        """Dimension D of the data."""
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        """Number K of components."""
        return self.means.shape[0]

    def __repr__(self) -> str:
        kind = "diagonal" if self.diagonal else "full"
        return f"GaussianMixture(K={self.num_components}, D={self.dim}, covs={kind})"

    def _params(self, device) -> tuple:
        """(log w (K,), mu (K, D), lam (K, D), U (K, D, D) or None) on `device`, copied once per device."""
        device = torch.device(device)
        if device not in self._device_cache:
            eigvecs = None if self._eigvecs is None else self._eigvecs.to(device)
            self._device_cache[device] = (self.weights.log().to(device), self.means.to(device),
                                          self._eigvals.to(device), eigvecs)
        return self._device_cache[device]

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, ...) with prod(shape[1:]) = D as float64 (B, D); keeps the autograd graph."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x must have shape (B, ...) with {self.dim} elements per sample, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def _components(self, x64: torch.Tensor, mean_coef, std):
        """log(w_k N(x; m mu_k, m^2 Sigma_k + s^2 I)) (B, K) and the whitened residuals (B, K, D) in eigen-coords."""
        B, D = x64.shape
        log_w, mu, lam, U = self._params(x64.device)
        m = _per_sample_coef("mean_coef", mean_coef, B, x64.device)[:, None, None]
        s = _per_sample_coef("std", std, B, x64.device)[:, None, None]
        diff = x64[:, None, :] - m * mu  # (B, K, D)
        y = diff if U is None else torch.einsum("bkd,kde->bke", diff, U)  # U_k^T (x - m mu_k)
        var = m * m * lam + s * s  # (B, K, D) eigenvalues of the perturbed covariances
        log_comp = log_w - 0.5 * (D * _LOG_2PI + var.log().sum(-1) + (y * y / var).sum(-1))
        return log_comp, y / var

    def _components_isotropic(self, x64: torch.Tensor, mean_coef, std):
        """As _components for Sigma_k = lam_k I: log-densities (B, K), 1/var (B, K), m (B, 1), m mu (K, D) terms.

        |x - m mu_k|^2 = |x|^2 - 2 m x.mu_k + m^2 |mu_k|^2, so everything is (B, K) plus one (B, D) @ (D, K).
        """
        B, D = x64.shape
        log_w, mu, lam, _ = self._params(x64.device)
        m = _per_sample_coef("mean_coef", mean_coef, B, x64.device)[:, None]
        s = _per_sample_coef("std", std, B, x64.device)[:, None]
        var = m * m * lam[:, 0] + s * s  # (B, K)
        sq = (x64 * x64).sum(1, keepdim=True) - 2 * m * (x64 @ mu.T) + m * m * (mu * mu).sum(1)
        log_comp = log_w - 0.5 * (D * _LOG_2PI + D * var.log() + sq / var)
        return log_comp, 1.0 / var, m, mu

    def _iso_params(self, device) -> tuple:
        """Cached per-device constants of the isotropic fast path (built once per device).

        (mu (K, D), columns mu[:, d] (K,) each, [mu | 1] (K, D + 1), -|mu_k|^2 / 2 (K,), log w (K,) or None when
        the weights are equal, lam (K,), lam_0 as a float when every component shares it or None).
        """
        device = torch.device(device)
        key = ("iso", device)
        if key not in self._device_cache:
            log_w, mu, lam, _ = self._params(device)
            lam = lam[:, 0].contiguous()
            cols = tuple(mu[:, d].contiguous() for d in range(mu.shape[1]))
            mu_aug = torch.cat([mu, torch.ones(mu.shape[0], 1, dtype=mu.dtype, device=device)], dim=1)
            neg_half_sq = -0.5 * (mu * mu).sum(1)
            self._device_cache[key] = (mu, cols, mu_aug, neg_half_sq, None if self._uniform_w else log_w, lam,
                                       self._shared_lam)
        return self._device_cache[key]

    def _score_isotropic(self, x64: torch.Tensor, mean_coef, std, out_dtype) -> torch.Tensor:
        """grad log p_t for Sigma_k = lam_k I; (B, D) in out_dtype. Row constants are dropped from the logits.

        Shared lam (one var per sample): logits_k = log w_k + (m x.mu_k - m^2 |mu_k|^2 / 2) / var and
        score = (m sum_k r_k mu_k - x) / var, with x.mu_k broadcast over D (D <= 4: no tiny-inner-dim matmul)
        and sum_k e_k [mu_k | 1] one (B, K) @ (K, D + 1) product giving both the numerator and the softmax sum.
        """
        B, D = x64.shape
        mu, cols, mu_aug, neg_half_sq, log_w, lam, lam0 = self._iso_params(x64.device)
        if lam0 is None or D > 4:
            log_comp, inv_var, m, mu = self._components_isotropic(x64, mean_coef, std)
            r = (log_comp - log_comp.amax(dim=1, keepdim=True)).exp_()
            w = r.div_(r.sum(dim=1, keepdim=True)).mul_(inv_var)  # r_k / var_k, (B, K)
            score = m * (w @ mu) - w.sum(1, keepdim=True) * x64
            return score.to(out_dtype)
        unit_m = isinstance(mean_coef, numbers.Real) and float(mean_coef) == 1.0
        if isinstance(std, numbers.Real):
            s = float(std)
            inv_var = None
            var = lam0 + s * s if unit_m else None
        else:
            s = _per_sample_coef("std", std, B, x64.device)[:, None]
            var = None
        if unit_m:
            if var is None:
                inv_var = (s * s).add_(lam0).reciprocal_()  # (B, 1)
            else:
                inv_var = 1.0 / var
            logits = torch.addcmul(neg_half_sq, x64[:, 0:1], cols[0])  # x.mu_k - |mu_k|^2 / 2
            for d in range(1, D):
                logits.addcmul_(x64[:, d : d + 1], cols[d])
            logits.mul_(inv_var)
            m = None
        else:
            m = _per_sample_coef("mean_coef", mean_coef, B, x64.device)[:, None]
            inv_var = (m * m * lam0 + s * s).reciprocal_()  # (B, 1)
            logits = x64[:, 0:1] * cols[0]
            for d in range(1, D):
                logits.addcmul_(x64[:, d : d + 1], cols[d])
            logits.addcmul_(m, neg_half_sq)  # x.mu_k - m |mu_k|^2 / 2
            logits.mul_(m * inv_var)
        if log_w is not None:
            logits.add_(log_w)
        e = logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()
        acc = e @ mu_aug  # (B, D + 1): sum_k e_k mu_k and sum_k e_k
        mean = acc[:, :D].div_(acc[:, D:])
        if m is not None:
            mean.mul_(m)
        score = mean.sub_(x64)
        if out_dtype == torch.float64:
            return score.mul_(inv_var)
        return torch.mul(score, inv_var, out=torch.empty((B, D), dtype=out_dtype, device=x64.device))

    def perturbed_log_prob(self, x: torch.Tensor, mean_coef=1.0, std=0.0) -> torch.Tensor:
        """log p_t(x) (B,) for x (B, ...); p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + s^2 I), m and s floats or (B,).

        Logsumexp over components in float64; returned in x's dtype. Differentiable in x.
        """
        x64 = self._flatten(x)
        if self.isotropic:
            log_comp = self._components_isotropic(x64, mean_coef, std)[0]
        else:
            log_comp = self._components(x64, mean_coef, std)[0]
        return torch.logsumexp(log_comp, dim=1).to(_out_dtype(x))

    def perturbed_score(self, x: torch.Tensor, mean_coef=1.0, std=0.0) -> torch.Tensor:
        """grad_x log p_t(x), shaped like x (B, ...): -sum_k r_k(x) (m^2 Sigma_k + s^2 I)^{-1} (x - m mu_k).

        r_k = softmax_k of the component log-densities (the posterior responsibilities); float64 inside, x's dtype out.
        """
        x64 = self._flatten(x)
        if self.isotropic and x64.requires_grad and torch.is_grad_enabled():
            # Differentiable form (the likelihood's Hutchinson divergence differentiates the score): the fast path
            # below works in place, which autograd cannot record.
            log_comp, inv_var, m, mu = self._components_isotropic(x64, mean_coef, std)
            w = torch.softmax(log_comp, dim=1) * inv_var  # r_k / var_k, (B, K)
            score = m * (w @ mu) - w.sum(1, keepdim=True) * x64
            return score.reshape(x.shape).to(_out_dtype(x))
        if self.isotropic:
            # Softmax written out: torch.softmax over a handful of components costs ~100 us per call on the CPU.
            return self._score_isotropic(x64, mean_coef, std, _out_dtype(x)).reshape(x.shape)
        log_comp, whitened = self._components(x64, mean_coef, std)
        U = self._params(x64.device)[3]
        grad = whitened if U is None else torch.einsum("bke,kde->bkd", whitened, U)  # (B, K, D)
        resp = torch.softmax(log_comp, dim=1)
        score = -(resp[:, :, None] * grad).sum(dim=1)
        return score.reshape(x.shape).to(_out_dtype(x))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p_0(x) (B,) for x (B, ...) with D elements per sample."""
        return self.perturbed_log_prob(x, 1.0, 0.0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad_x log p_0(x), shaped like x (B, ...)."""
        return self.perturbed_score(x, 1.0, 0.0)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32):
        """n exact samples (n, D): k ~ Categorical(w), x = mu_k + U_k diag(sqrt(lam_k)) z, z ~ N(0, I)."""
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n}")
        n = int(n)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator) if n else torch.zeros(
            0, dtype=torch.long)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = torch.empty_like(z)
        for k in range(self.num_components):
            sel = comp == k
            zk = z[sel] * self._eigvals[k].sqrt()
            if self._eigvecs is not None:
                zk = zk @ self._eigvecs[k].T
            x[sel] = self.means[k] + zk
        return x.to(dtype)

    def _full_covs(self) -> torch.Tensor:
        """(K, D, D) covariances, whether given diagonal or full."""
        return torch.diag_embed(self.covs) if self.diagonal else self.covs

    def mean(self) -> torch.Tensor:
        """Mixture mean (D,): sum_k w_k mu_k."""
        return self.weights @ self.means

    def cov(self) -> torch.Tensor:
        """Mixture covariance (D, D): sum_k w_k (Sigma_k + mu_k mu_k^T) - mean mean^T."""
        second = torch.einsum("k,kde->de", self.weights, self._full_covs())
        second = second + torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        mean = self.mean()
        return second - torch.outer(mean, mean)

    def perturbed(self, mean_coef: float, std: float) -> "GaussianMixture":
        """The mixture p_t = sum_k w_k N(m mu_k, m^2 Sigma_k + s^2 I) for scalar m and s."""
        m, s = float(mean_coef), float(std)
        if self.diagonal:
            covs = m * m * self.covs + s * s
        else:
            covs = m * m * self.covs + s * s * torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, m * self.means, covs)


def isotropic_gaussian(dim: int, mean=0.0, std: float = 1.0) -> GaussianMixture:
    """N(mean, std^2 I) in `dim` dimensions as a one-component mixture; mean a float or (dim,)."""
    if int(dim) != dim or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    mean = _as_float64("mean", mean)
    if mean.dim() == 0:
        mean = mean.expand(dim)
    if mean.shape != (dim,):
        raise ValueError(f"mean must be a float or have shape ({dim},), got {tuple(mean.shape)}")
    return GaussianMixture(torch.ones(1), mean[None].clone(), torch.full((1, dim), float(std) ** 2))


def _ring() -> GaussianMixture:
    """8 equal components on the circle of radius 2, each N(., 0.15^2 I)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(torch.ones(8), means, torch.full((8, 2), 0.15**2))


def _checkerboard() -> GaussianMixture:
    """N(., 0.2^2 I) at the centres of the 8 cells (i + j even) of a 4x4 board spanning [-2, 2]^2."""
    centres = torch.arange(4, dtype=torch.float64) - 1.5
    means = torch.tensor([[centres[i], centres[j]] for i in range(4) for j in range(4) if (i + j) % 2 == 0])
    return GaussianMixture(torch.ones(8), means, torch.full((8, 2), 0.2**2))


def _gaussian() -> GaussianMixture:
    """One correlated 2-D Gaussian: mean (0.5, -0.3), cov [[0.5, 0.2], [0.2, 0.3]]."""
    return GaussianMixture([1.0], [[0.5, -0.3]], [[[0.5, 0.2], [0.2, 0.3]]])


PRESETS: dict[str, Callable[[], GaussianMixture]] = {
    "ring": _ring,
    "checkerboard": _checkerboard,
    "gaussian": _gaussian,
}


def get_mixture(name: str) -> GaussianMixture:
    """A preset mixture by name (see PRESETS); a ValueError listing the known names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown mixture {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


class AnalyticScoreModel(torch.nn.Module):
    """A 'trained' score network for `sde` whose data distribution is `mixture`: exact, under score_sde's conventions.

    forward(x (B, ...), labels (B,)) decodes labels into the marginal (m, s) exactly as get_score_fn encodes them and
    returns, in x's dtype: VE, the score of p_t; VP/subVP, the noise prediction eps = -s * score (so that
    get_score_fn's -model / std is the score). Labels: VE continuous sigma(t); VE discrete round((T - t)(N - 1)),
    an index into the decreasing sigmas; VP continuous and subVP 999 t; VP discrete t (N - 1), floored to an index of
    the DDPM tables sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod).
    """

    def __init__(self, mixture: GaussianMixture, sde: sde_lib.SDE, continuous: bool = True):
        super().__init__()
        if not isinstance(mixture, GaussianMixture):
            raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        if not isinstance(sde, (sde_lib.VPSDE, sde_lib.subVPSDE, sde_lib.VESDE)):
            raise ValueError(f"sde must be a VPSDE, subVPSDE or VESDE, got {type(sde).__name__}")
        self.mixture = mixture
        self.sde = sde
        self.continuous = bool(continuous)

    def _continuous_coefs(self, t: torch.Tensor):
        """(m, s) float64 (B,) from the SDE's own marginal_prob at continuous times t (B,)."""
        t = t.to(torch.float64)
        mean, std = self.sde.marginal_prob(torch.ones(t.shape[0], 1, dtype=torch.float64, device=t.device), t)
        return mean[:, 0], std

    def _discrete_coefs(self, index: torch.Tensor):
        """(m, s) float64 (B,) at table indices: VP the DDPM marginal, VE the index-th sigma counted from the top."""
        sde, device = self.sde, index.device
        if isinstance(sde, sde_lib.VESDE):
            s = sde.table("discrete_sigmas", device)[sde.N - 1 - index].double()
            return torch.ones_like(s), s
        m = sde.table("sqrt_alphas_cumprod", device)[index].double()
        s = sde.table("sqrt_1m_alphas_cumprod", device)[index].double()
        return m, s

    def _ve_sigma_list(self) -> list:
        """VE discrete sigmas as Python floats (float64 of the table's values), built once."""
        if "_ve_sigmas_cache" not in self.__dict__:
            self._ve_sigmas_cache = self.sde.table("discrete_sigmas", "cpu").double().tolist()
        return self._ve_sigmas_cache

    def _uses_continuous_labels(self) -> bool:
        return self.continuous or isinstance(self.sde, sde_lib.subVPSDE)

    def decode_labels(self, labels: torch.Tensor):
        """Marginal (mean_coef, std), float64 (B,) each, that get_score_fn's `labels` (B,) stand for."""
        if isinstance(self.sde, sde_lib.VESDE):
            if self.continuous:
                s = labels.to(torch.float64)
                return torch.ones_like(s), s
            return self._discrete_coefs(labels.long())
        if self._uses_continuous_labels():
            return self._continuous_coefs(labels.to(torch.float64) / 999)
        return self._discrete_coefs(labels.long())

    def marginal_coefs(self, t: torch.Tensor):
        """Marginal (mean_coef, std), float64 (B,) each, at times t (B,) under this model's (dis)continuity."""
        sde = self.sde
        if self._uses_continuous_labels():
            return self._continuous_coefs(t)
        if isinstance(sde, sde_lib.VESDE):
            return self._discrete_coefs(torch.round((sde.T - t) * (sde.N - 1)).long())
        return self._discrete_coefs((t * (sde.N - 1)).long())

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Network output (B, ...) like x: VE the score of p_t, VP/subVP eps = -s grad log p_t(x)."""
        if not isinstance(labels, torch.Tensor) or labels.shape != (x.shape[0],):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a tensor of shape ({x.shape[0]},) (one per sample), got {shape}")
        if isinstance(self.sde, sde_lib.VESDE) and not self.continuous:
            # decode_labels' (ones, sigma) from a cached table; one label broadcast over the batch (a sampler's
            # labels[i].expand(B)) on the CPU decodes to a Python float sigma, so the model's sigma math is scalar.
            if labels.device.type == "cpu" and x.shape[0] >= 1 and (x.shape[0] == 1 or labels.stride(0) == 0):
                m, s = 1.0, self._ve_sigma_list()[self.sde.N - 1 - int(labels[0])]
            else:
                m, s = self.decode_labels(labels)
        else:
            m, s = self.decode_labels(labels)
        if isinstance(self.sde, sde_lib.VESDE):  # float64 inside, rounded once to x's dtype
            return self.mixture.perturbed_score(x if x.is_floating_point() else x.to(torch.float64), m, s).to(x.dtype)
        score = self.mixture.perturbed_score(x.to(torch.float64), m, s)
        return (-per_sample(s, score) * score).to(x.dtype)

    def exact_score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(x) (B, ...) like x at times t (B,), with p_t the marginal of this model's convention."""
        m, s = self.marginal_coefs(t)
        return self.mixture.perturbed_score(x.to(torch.float64), m, s).to(x.dtype)


class AnalyticClassifier(torch.nn.Module):
    """The exact time-dependent classifier of a mixture's components: the guide of class-conditional sampling.

    forward(x (B, ...), labels (B,)) -> logits (B, K) in x's dtype, the log posterior
    log p_t(k | x) = log w_k + log N(x; m mu_k, m^2 Sigma_k + s^2 I) - log p_t(x), so exp(logits) sums to 1 over k.
    The time labels are the score model's (get_score_fn's labels_fn(t)), decoded into (m, s) exactly as
    AnalyticScoreModel(mixture, sde, continuous) decodes them. Float64 inside; differentiable in x, so
    grad_x log p_t(k | x) = score of component k minus score of the mixture (Song et al., ICLR 2021, eq. 48).
    """

    def __init__(self, mixture: GaussianMixture, sde: sde_lib.SDE, continuous: bool = True):
        super().__init__()
        # The score model of the same mixture owns the label conventions (and validates mixture and sde).
        self.labels_model = AnalyticScoreModel(mixture, sde, continuous)
        self.mixture = mixture

    @property
    def num_classes(self) -> int:
        """K, the number of mixture components (the classes)."""
        return self.mixture.num_components

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_t(k | x) (B, K) in x's dtype (float64 for integer x), t the time the labels (B,) encode."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError(f"x must be a (B, ...) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        if not isinstance(labels, torch.Tensor) or labels.shape != (x.shape[0],):
            shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a tensor of shape ({x.shape[0]},) (one per sample), got {shape}")
        m, s = self.labels_model.decode_labels(labels.to(x.device))
        x64 = self.mixture._flatten(x)
        if self.mixture.isotropic:
            log_joint = self.mixture._components_isotropic(x64, m, s)[0]
        else:
            log_joint = self.mixture._components(x64, m, s)[0]
        return torch.log_softmax(log_joint, dim=1).to(_out_dtype(x))


class FrequencyMixture:
    """A Gaussian mixture over images (C, H, W) whose components are diagonal in the orthonormal DCT-II basis:
    y = dct2(x) ~ sum_k w_k N(mu_k, diag(c_k)), means and variances (K, C, H, W) given in the DCT domain.

    The heat family (fastsde.heat) acts per frequency, y_t = m y_0 + s z with m, s (B, 1, H, W), so every marginal
    stays in this family: p_t = sum_k w_k N(m mu_k, diag(m^2 c_k + s^2)). Float64 inside, differentiable in x (the
    likelihood's divergence differentiates the score).
    """

    def __init__(self, weights, means, variances):
        w = _as_float64("weights", weights)
        self.means, self.variances = _as_float64("means", means), _as_float64("variances", variances)
        if self.means.dim() != 4 or self.variances.shape != self.means.shape or w.shape != self.means.shape[:1]:
            raise ValueError(f"need weights (K,), means and variances (K, C, H, W) of one shape; got "
                             f"{tuple(w.shape)}, {tuple(self.means.shape)}, {tuple(self.variances.shape)}")
        if not (w > 0).all() or not (self.variances > 0).all():
            raise ValueError("weights and variances must be positive")
        self.log_weights = torch.log(w / w.sum())
        self.shape = tuple(self.means.shape[1:])

    def _log_components(self, x, m, s):
        """log w_k N(y; m mu_k, m^2 c_k + s^2) (B, K) and the per-component (B, K, D) residual / variance."""
        from fastsde.heat import dct2

        B = x.shape[0]
        y = dct2(x.to(torch.float64)).reshape(B, 1, -1)
        m = torch.as_tensor(m, dtype=torch.float64).expand(B, *self.shape).reshape(B, 1, -1)
        s = torch.as_tensor(s, dtype=torch.float64).expand(B, *self.shape).reshape(B, 1, -1)
        var = m * m * self.variances.reshape(1, len(self.log_weights), -1) + s * s
        r = y - m * self.means.reshape(1, len(self.log_weights), -1)
        log_comp = self.log_weights - 0.5 * (r * r / var + torch.log(var) + _LOG_2PI).sum(-1)
        return log_comp, r / var

    def perturbed_log_prob(self, x, m=1.0, s=0.0) -> torch.Tensor:
        """log p_t(x) (B,) float64; m, s floats or per-frequency tensors broadcasting to (B, C, H, W)."""
        return torch.logsumexp(self._log_components(x, m, s)[0], dim=1)

    def perturbed_score(self, x, m=1.0, s=0.0) -> torch.Tensor:
        """grad_x log p_t(x) like x, float64: idct2 of -sum_k r_k (y - m mu_k) / (m^2 c_k + s^2)."""
        from fastsde.heat import idct2

        log_comp, whitened = self._log_components(x, m, s)
        score_y = -(torch.softmax(log_comp, dim=1)[:, :, None] * whitened).sum(1)
        return idct2(score_y.reshape(x.shape))

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples (n, C, H, W) float64."""
        from fastsde.heat import idct2

        comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return idct2(self.means[comp] + self.variances[comp].sqrt() * z)

    def moments(self, m=1.0, s=0.0):
        """(mean, variance) (C, H, W) per DCT coefficient of p_t for per-frequency m, s (1, 1, H, W) or floats."""
        w = self.log_weights.exp()[:, None, None, None]
        m, s = (torch.as_tensor(v, dtype=torch.float64)[0] if torch.as_tensor(v).dim() == 4 else
                torch.as_tensor(v, dtype=torch.float64) for v in (m, s))
        mean = (w * self.means).sum(0)
        second = (w * (self.variances + self.means**2)).sum(0)
        return m * mean, m * m * (second - mean**2) + s * s


class AnalyticHeatModel(torch.nn.Module):
    """The exact noise-predicting network of `mixture` (a FrequencyMixture) under a heat-family SDE: forward(x, labels)
    with labels = 999 t returns idct2(-s_k dct2(score)), so fastsde.score.get_score_fn's -idct2(dct2(out) / s_k)
    is the exact score of the SDE's marginal p_t."""

    def __init__(self, mixture: FrequencyMixture, sde):
        super().__init__()
        if not isinstance(mixture, FrequencyMixture):
            raise ValueError(f"mixture must be a FrequencyMixture, got {type(mixture).__name__}")
        if not getattr(sde, "frequency_diagonal", False):
            raise ValueError(f"sde must be a heat-family SDE (fastsde.heat), got {type(sde).__name__}")
        self.mixture, self.sde = mixture, sde

    def exact_score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_x log p_t(x), float64, like x."""
        m, s = self.sde.marginal_coefs(t.to(torch.float64), x.shape)
        return self.mixture.perturbed_score(x, m, s)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from fastsde.heat import freq_scale

        t = labels.to(torch.float64) / 999
        s = self.sde.marginal_coefs(t, x.shape)[1]
        return freq_scale(self.exact_score(x, t), -s).to(x.dtype)
