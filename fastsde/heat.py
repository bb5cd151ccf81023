"""Linear SDEs diagonal in the orthonormal 2-D DCT-II basis: the heat equation as a forward process.

With Neumann boundaries the Laplacian on an H x W pixel grid has the DCT-II basis images as eigenvectors with
eigenvalues -lam_kl, lam_kl = pi^2 (k^2 / H^2 + l^2 / W^2) (pixel spacing 1). Every SDE here is, in that basis, one
scalar linear SDE per frequency, dy_k = f_k(t) y_k dt + g_k(t) dw_k, with the Gaussian perturbation kernel
y_k(t) | y_k(0) ~ N(m_k(t) y_k(0), s_k(t)^2) in closed form. The channels share the coefficients.

  heat     the stochastic heat equation, VP-like: each frequency is a VP SDE whose beta is scaled by
           (1 + 2 kappa lam_k): dx = -beta(t) (1/2 - kappa Laplace) x dt + sqrt(beta(t) (1 - 2 kappa Laplace)) dw.
           The heat equation's time, kappa int beta, reaches `blur` at T. High frequencies are blurred and noised
           first (coarse-to-fine generation); prior N(0, I).
  heat_ve  the stochastic heat equation, VE-like: dx = blur Laplace x dt + sigma(t) sqrt(2 ln(sigma_max/sigma_min)) dw
           with score_sde's geometric sigma(t): isotropic noise, s_k(t)^2 = sigma_min^2 r/(r + lam_k blur)
           (e^{2 r t} - e^{-2 lam_k blur t}), r = ln(sigma_max / sigma_min).
  blur     blurring diffusion (Hoogeboom & Salimans 2023): VP in frequency space, x_t = alpha_t D_t x_0 + sigma_t e
           with D_t = exp(tau(t) Laplace), tau(t) = blur sin^2(pi t / 2), alpha_t, sigma_t VP's.
  ihdm     inverse heat dissipation (Rissanen et al. 2023) in continuous time: u_t = exp(tau(t) Laplace) u_0 + sigma e
           with a small fixed sigma and tau geometric from tau_min to tau_max; its SDE keeps the variance sigma^2
           (f_k = -lam_k tau', g_k^2 = 2 lam_k tau' sigma^2). Its t = 0 is already blurred by tau_min.

The prior is N(m_k(T) mu_k, m_k(T)^2 v_k + s_k(T)^2) per frequency, with (mu, v) the data's per-frequency mean and
variance (`data_mean`, `data_var`: floats or (H, W) DCT-domain arrays; 0 and 1 by default): for heat/blur the data
term is negligible at T, for ihdm the lowest frequencies keep most of the data (the DC component all of it) and the
prior is the data's Gaussian fit carried to T.

Per-frequency coefficients are float64 tensors shaped (B, 1, H, W) in the DCT domain; `freq_scale(x, c)` applies
them, idct2(c * dct2(x)). `sde()` returns such a tensor as the diffusion, and `discretize` the exact one-step
transition (per-frequency decay A and noise std G), so ReverseSDE, the reference predictors, the probability-flow ODE
and the likelihood run unchanged (fastsde.sde.times_diffusion applies a per-frequency diffusion).
"""
from __future__ import annotations

import abc
import math

import torch

from fastsde.dct import dct2, dct_matrix, eigenvalues, freq_scale, idct2, transform_dtype  # noqa: F401  (re-exported)
from fastsde.sde_base import SDE, check_real

__all__ = ["dct2", "idct2", "dct_matrix", "freq_scale", "eigenvalues", "FrequencySDE", "HeatSDE", "HeatVESDE",
           "BlurringSDE", "IHDMSDE", "FREQUENCY_SDES"]

# ------------------------------------------------------------------------------------------------ the SDEs
def _time(t: torch.Tensor) -> torch.Tensor:
    """t (B,) as float64 (B, 1, 1, 1), broadcasting against (H, W) eigenvalues to (B, 1, H, W)."""
    return t.to(torch.float64).reshape(-1, 1, 1, 1)


def _full(v, t: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A coefficient (float or tensor broadcasting to it) expanded to float64 (B, 1, H, W)."""
    return torch.as_tensor(v, dtype=torch.float64, device=lam.device).expand(t.shape[0], 1, *lam.shape)


def _moment(name: str, value, H: int, W: int, device) -> torch.Tensor:
    v = torch.as_tensor(value, dtype=torch.float64, device=device)
    if v.dim() not in (0, 2) or (v.dim() == 2 and tuple(v.shape) != (H, W)):
        raise ValueError(f"{name} must be a float or an (H, W) = ({H}, {W}) array, got shape {tuple(v.shape)}")
    return v


class FrequencySDE(SDE):
    """A linear SDE diagonal in the DCT basis (module docstring). Subclasses give, for float64 t (B, 1, 1, 1) and
    eigenvalues lam (H, W): `log_mean(t, lam)` = log m_k(t), `variance(t, lam)` = s_k(t)^2 and `coefs(t, lam)` =
    (f_k(t), g_k(t)^2), each broadcasting to (B, 1, H, W)."""

    frequency_diagonal = True  # the fused PC loop's scalar coefficients do not apply (fastsde.sampling.pc)

    def __init__(self, N: int, data_mean=0.0, data_var=1.0):
        super().__init__(N)
        self.data_mean, self.data_var = data_mean, data_var
        for name, value in (("data_mean", data_mean), ("data_var", data_var)):
            v = torch.as_tensor(value, dtype=torch.float64)
            if not torch.isfinite(v).all() or (name == "data_var" and not (v >= 0).all()):
                raise ValueError(f"{name} must be finite{' and >= 0' if name == 'data_var' else ''}, got {value!r}")

    @property
    def T(self) -> float:
        return 1.0

    @abc.abstractmethod
    def log_mean(self, t, lam):
        """log m_k(t)."""

    @abc.abstractmethod
    def variance(self, t, lam):
        """s_k(t)^2."""

    @abc.abstractmethod
    def coefs(self, t, lam):
        """(f_k(t), g_k(t)^2): drift and squared diffusion of frequency k."""

    def marginal_coefs(self, t: torch.Tensor, shape):
        """(m, s) float64 (B, 1, H, W): p_0t(y_k(t) | y_k(0)) = N(m_k y_k(0), s_k^2) for images of `shape`."""
        lam = eigenvalues(shape, t.device)
        tt = _time(t)
        return _full(torch.exp(self.log_mean(tt, lam)), tt, lam), _full(self.variance(tt, lam), tt, lam).sqrt()

    def sde(self, x, t):
        lam = eigenvalues(x.shape, x.device)
        tt = _time(t)
        f, g2 = self.coefs(tt, lam)
        return freq_scale(x, _full(f, tt, lam)), _full(g2, tt, lam).sqrt().to(x.dtype)

    def marginal_prob(self, x, t):
        m, s = self.marginal_coefs(t, x.shape)
        return freq_scale(x, m), s.to(x.dtype)

    def prior_moments(self, shape, device="cpu"):
        """(mean, std) float64 (H, W) of the prior per frequency: N(m_T mu, m_T^2 v + s_T^2)."""
        H, W = int(shape[-2]), int(shape[-1])
        m, s = (v[0, 0] for v in self.marginal_coefs(torch.full((1,), self.T, device=device), shape))
        mu = _moment("data_mean", self.data_mean, H, W, device)
        v = _moment("data_var", self.data_var, H, W, device)
        return m * mu, torch.sqrt(m * m * v + s * s)

    def prior_from_normal(self, z):
        mean, std = self.prior_moments(z.shape, z.device)
        dtype = transform_dtype(z)
        return idct2(mean.to(dtype) + std.to(dtype) * dct2(z.to(dtype))).to(z.dtype)

    def prior_sampling(self, shape, generator=None):
        return self.prior_from_normal(torch.randn(*shape, generator=generator))

    def prior_logp(self, z):
        mean, std = self.prior_moments(z.shape, z.device)
        y = (dct2(z.double()) - mean) / std
        per_pixel = -0.5 * y**2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
        return per_pixel.reshape(z.shape[0], -1).sum(1).to(z.dtype)

    def transition(self, t: torch.Tensor, shape):
        """The exact step from t to t + 1/N: y_k(t + 1/N) = A_k y_k(t) + G_k z_k; (A, G) float64 (B, 1, H, W)."""
        lam = eigenvalues(shape, t.device)
        t0, t1 = _time(t), _time(t) + 1.0 / self.N
        a = _full(torch.exp(self.log_mean(t1, lam) - self.log_mean(t0, lam)), t0, lam)
        q = self.variance(t1, lam) - a * a * self.variance(t0, lam)
        return a, _full(q, t0, lam).clamp(min=0).sqrt()

    def discretize(self, x, t):
        """The exact one-step transition: f = (A - 1) x in the DCT basis, G per frequency (B, 1, H, W)."""
        a, g = self.transition(t, x.shape)
        return freq_scale(x, a - 1.0), g.to(x.dtype)


class _VPSchedule:
    """beta(t) = beta_0 + t (beta_1 - beta_0) and B(t) = int_0^t beta, as VPSDE."""

    def _vp_init(self, beta_min, beta_max):
        check_real("beta_min", beta_min, low=0.0)
        check_real("beta_max", beta_max, low=0.0, low_open=True)
        if beta_min > beta_max:
            raise ValueError(f"need beta_min <= beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_0, self.beta_1 = float(beta_min), float(beta_max)

    def _beta(self, t):
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def _int_beta(self, t):
        return self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2


class HeatSDE(_VPSchedule, FrequencySDE):
    """VP-like stochastic heat equation: per frequency a VP SDE with beta_k(t) = beta(t) (1 + 2 kappa lam_k),
    kappa = blur / B(1), so the heat equation has run for time `blur` at T."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, blur: float = 8.0, N: int = 1000, **moments):
        FrequencySDE.__init__(self, N, **moments)
        self._vp_init(beta_min, beta_max)
        self.blur = check_real("blur", blur, low=0.0)
        self.kappa = self.blur / self._int_beta(1.0)

    def _rate(self, lam):
        return 0.5 + self.kappa * lam

    def log_mean(self, t, lam):
        return -self._int_beta(t) * self._rate(lam)

    def variance(self, t, lam):
        return -torch.expm1(2 * self.log_mean(t, lam))

    def coefs(self, t, lam):
        beta = self._beta(t)
        return -beta * self._rate(lam), 2 * beta * self._rate(lam)


class HeatVESDE(FrequencySDE):
    """VE-like stochastic heat equation: dx = blur Laplace x dt + sigma(t) sqrt(2 r) dw, r = ln(sigma_max/sigma_min)
    (scalar diffusion, VESDE's)."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, blur: float = 8.0, N: int = 1000,
                 **moments):
        super().__init__(N, **moments)
        check_real("sigma_min", sigma_min, low=0.0, low_open=True)
        check_real("sigma_max", sigma_max, low=0.0, low_open=True)
        if not sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.blur = check_real("blur", blur, low=0.0)
        self._r = math.log(self.sigma_max / self.sigma_min)

    def log_mean(self, t, lam):
        return -self.blur * lam * t

    def variance(self, t, lam):
        # int_0^t e^{-2 lam blur (t - u)} sigma_min^2 2 r e^{2 r u} du
        d = self.blur * lam
        return self.sigma_min**2 * self._r / (self._r + d) * (torch.exp(2 * self._r * t) - torch.exp(-2 * d * t))

    def coefs(self, t, lam):
        g2 = 2 * self._r * (self.sigma_min * torch.exp(self._r * t)) ** 2
        return -self.blur * lam, g2


class BlurringSDE(_VPSchedule, FrequencySDE):
    """Blurring diffusion: m_k = alpha_t exp(-lam_k tau(t)), s_k = sigma_t, tau(t) = blur sin^2(pi t / 2)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, blur: float = 8.0, N: int = 1000, **moments):
        FrequencySDE.__init__(self, N, **moments)
        self._vp_init(beta_min, beta_max)
        self.blur = check_real("blur", blur, low=0.0)

    def _tau(self, t):
        return self.blur * torch.sin(0.5 * math.pi * t) ** 2

    def log_mean(self, t, lam):
        return -0.5 * self._int_beta(t) - lam * self._tau(t)

    def variance(self, t, lam):
        return -torch.expm1(-self._int_beta(t))

    def coefs(self, t, lam):
        # f_k = (log m_k)'; g_k^2 = (s^2)' - 2 f_k s^2 = beta + 2 lam tau' sigma^2
        dtau = 0.5 * math.pi * self.blur * torch.sin(math.pi * t)
        beta = self._beta(t)
        return -0.5 * beta - lam * dtau, beta + 2 * lam * dtau * self.variance(t, lam)


class IHDMSDE(FrequencySDE):
    """Inverse heat dissipation: m_k = exp(-lam_k tau(t)), s_k = sigma, tau(t) = tau_min (tau_max/tau_min)^t
    (IHDM's log-spaced blur sigma_B = sqrt(2 tau) from 0.5 to sqrt(2 tau_max))."""

    def __init__(self, sigma: float = 0.01, tau_min: float = 0.125, tau_max: float = 72.0, N: int = 1000,
                 **moments):
        super().__init__(N, **moments)
        self.sigma = check_real("sigma", sigma, low=0.0, low_open=True)
        check_real("tau_min", tau_min, low=0.0, low_open=True)
        check_real("tau_max", tau_max, low=0.0, low_open=True)
        if not tau_min < tau_max:
            raise ValueError(f"need 0 < tau_min < tau_max, got tau_min={tau_min}, tau_max={tau_max}")
        self.tau_min, self.tau_max = float(tau_min), float(tau_max)
        self._rate = math.log(self.tau_max / self.tau_min)

    def _tau(self, t):
        return self.tau_min * torch.exp(self._rate * t)

    def log_mean(self, t, lam):
        return -lam * self._tau(t)

    def variance(self, t, lam):
        return torch.full_like(t, self.sigma**2)

    def coefs(self, t, lam):
        dtau = self._rate * self._tau(t)
        return -lam * dtau, 2 * lam * dtau * self.sigma**2


#: name -> class, registered in fastsde.sde.SDE_CLASSES beside ve/vp/subvp.
FREQUENCY_SDES = {"heat": HeatSDE, "heat_ve": HeatVESDE, "blur": BlurringSDE, "ihdm": IHDMSDE}
