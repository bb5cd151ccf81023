"""k-diffusion's sampling interface on fastsde's solvers: swap `from k_diffusion import sampling` for
`from fastsde import kdiffusion as sampling`.

`model(x, sigma, **extra_args) -> denoised` is a k-diffusion denoiser (VE form: x = x_0 + sigma z); `sigmas` is a
decreasing schedule, usually ending in 0 (the get_sigmas_* helpers). A final sigma of 0 is k-diffusion's last step
to the data: the sample becomes the denoiser's output at the last nonzero sigma. The samplers run
fastsde.solvers' programs (one fused update per step on preallocated buffers). Differences from k-diffusion:
noise comes from FSN1 (`seed=`, `sample_ids=`; batch invariant) unless a `noise_sampler(sigma, sigma_next)` is
given, and `disable` (its progress bar) is accepted and ignored. Checked before any model call (check_sigmas): sigmas
finite, strictly decreasing, positive but for a final 0 (ValueError otherwise); x a finite float tensor. A sample
that is not finite (a NaN/inf denoiser output) raises fastsde.sampling.guard.NonFiniteError.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from fastsde.sampling.guard import check_finite, count_nonfinite
from fastsde.sde import MAX_N, check_count, check_real
from fastsde.solvers import get_solver
from fastsde.solvers.grid import Point
from fastsde.solvers.library import Churn
from fastsde.solvers.program import Executor, Program
from fastsde.solvers.sampler import build_checked

__all__ = ["get_sigmas_karras", "get_sigmas_exponential", "get_sigmas_vp", "sample_euler", "sample_euler_ancestral",
           "sample_heun", "sample_dpm_2", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde"]


def _append_zero(sigmas):
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_range(n, sigma_min, sigma_max):
    n = check_count("n", n, MAX_N)
    lo = check_real("sigma_min", sigma_min, low=0.0, low_open=True)
    hi = check_real("sigma_max", sigma_max, low=0.0, low_open=True)
    if not lo < hi:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    return n


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    """n sigmas uniform in sigma^(1/rho) from sigma_max to sigma_min (Karras et al. 2022 eq. 5), then 0.
    n an int >= 1, 0 < sigma_min < sigma_max finite, rho finite > 0 (ValueError otherwise)."""
    n = _check_range(n, sigma_min, sigma_max)
    check_real("rho", rho, low=0.0, low_open=True)
    ramp = torch.linspace(0, 1, n, device=device)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _append_zero((hi + ramp * (lo - hi)) ** rho)


def get_sigmas_exponential(n, sigma_min, sigma_max, device="cpu"):
    """n sigmas uniform in log sigma from sigma_max to sigma_min, then 0 (arguments as get_sigmas_karras)."""
    n = _check_range(n, sigma_min, sigma_max)
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, device=device).exp())


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device="cpu"):
    """The VP SDE's sigma~ = sqrt(e^(beta_d t^2 / 2 + beta_min t) - 1) at n times uniform in [eps_s, 1], then 0.
    beta_d, beta_min finite >= 0 with beta_d + beta_min > 0, eps_s in (0, 1) (ValueError otherwise)."""
    n = check_count("n", n, MAX_N)
    check_real("beta_d", beta_d, low=0.0)
    check_real("beta_min", beta_min, low=0.0)
    if not 0 < check_real("eps_s", eps_s, low=0.0, low_open=True) < 1 or not beta_d + beta_min > 0:
        raise ValueError(f"need eps_s in (0, 1) and beta_d + beta_min > 0, got eps_s={eps_s}, beta_d={beta_d}, "
                         f"beta_min={beta_min}")
    t = torch.linspace(1, eps_s, n, device=device)
    return _append_zero(torch.sqrt(torch.exp(beta_d * t**2 / 2 + beta_min * t) - 1))


def _show(values) -> str:
    return f"[{', '.join(f'{v:.6g}' for v in values[:6])}{', ...' if len(values) > 6 else ''}]"


def check_sigmas(sigmas) -> list:
    """`sigmas` as a list of floats, or a ValueError/TypeError naming what is wrong: a 1-D sequence or tensor of at
    least 2 finite real values, strictly decreasing, positive but for the last, which may be 0 (k-diffusion's step
    to the data). Every sampler of this module checks its sigmas with this before any model call."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.dtype == torch.bool or sigmas.is_complex():
            raise TypeError(f"sigmas must be real numbers, got a {sigmas.dtype} tensor")
        if sigmas.device.type == "meta":
            raise ValueError("sigmas is a meta tensor (no values)")
        t = sigmas.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError("sigmas must be a 1-D sequence or tensor of numbers, "
                            f"got {type(sigmas).__name__}") from None
    if t.dim() != 1 or t.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(t.shape)}")
    sig = t.tolist()
    bad = [i for i, v in enumerate(sig) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"sigmas must be finite, got {sig[bad[0]]} at index {bad[0]}: {_show(sig)}")
    bad = [i for i, v in enumerate(sig) if v < 0 or (v == 0 and i != len(sig) - 1)]
    if bad:
        raise ValueError(f"sigmas must be > 0 (only the last may be 0), got {sig[bad[0]]:.6g} at index {bad[0]}: "
                         f"{_show(sig)}")
    bad = [i for i in range(1, len(sig)) if not sig[i] < sig[i - 1]]
    if bad:
        raise ValueError(f"sigmas must strictly decrease, got {sig[bad[0] - 1]:.6g} then {sig[bad[0]]:.6g} at index "
                         f"{bad[0]}: {_show(sig)}")
    return sig


def _check_start(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor (batch, ...), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0 or x.device.type == "meta":
        raise ValueError(f"x must be a (batch, ...) tensor with batch >= 1 and data, got shape {tuple(x.shape)} on "
                         f"{x.device}")
    bad = count_nonfinite(x) if x.dim() > 1 else int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"x (the start) must be finite, got {bad} of {x.shape[0]} samples holding NaN or inf")


def _sample(name, model, x, sigmas, extra_args, callback, *, seed=None, sample_ids=None, noise_sampler=None,
            backend="auto", **options):
    solver = get_solver(name)(**options)
    sig = check_sigmas(sigmas)
    _check_start(x)
    if sig[0] > torch.finfo(x.dtype).max:  # the model's sigma argument is a tensor of x's dtype
        raise ValueError(f"sigmas must be representable in x's dtype {x.dtype} (max {torch.finfo(x.dtype).max:.3g}), "
                         f"got sigma {sig[0]:.6g}")
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, sigma, **extra_args) -> denoised, got "
                        f"{type(model).__name__}")
    if extra_args is not None and not isinstance(extra_args, Mapping):
        raise TypeError(f"extra_args must be a dict (keyword arguments of the model) or None, got "
                        f"{type(extra_args).__name__}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    if noise_sampler is not None and not callable(noise_sampler):
        raise TypeError(f"noise_sampler must be callable or None, got {type(noise_sampler).__name__}")
    to_zero = sig[-1] == 0.0
    grid = sig[:-1] if to_zero else sig
    points = [Point(s, 1.0, s) for s in grid]
    program = Program()
    at_log_snr = lambda lam: Point(math.exp(-lam), 1.0, math.exp(-lam))  # noqa: E731
    build_checked(solver, program, points, at_log_snr, len(sig) - 1)
    if to_zero:
        # k-diffusion's last step (to sigma 0) churns like the others: the EDM solvers raise sigma before the final
        # denoising too (s_churn > 0 and s_tmin <= sigma_last <= s_tmax), and the sample is D at the raised sigma.
        last = points[-1]
        if isinstance(solver, Churn):
            last = solver.churn(program, len(grid) - 1, last, at_log_snr, len(sig) - 1)
        program.finish_with_denoise(last, len(grid) - 1)
    extra_args = {} if extra_args is None else extra_args
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    def explicit_noise(draw):
        i = min((draw - 1) // 2, len(sig) - 2)
        return noise_sampler(sigmas[i], sigmas[i + 1]).to(x.dtype).contiguous()

    noise_fn = None if noise_sampler is None else explicit_noise

    state = x.detach().clone().contiguous()
    ids = None if sample_ids is None else torch.as_tensor(sample_ids, device=x.device)
    loop = Executor(program, state, lambda p: torch.full((x.shape[0],), p.t, dtype=x.dtype, device=x.device),
                    lambda p: (0.0, 1.0), seed=seed, sample_ids=ids, backend=backend, noise_fn=noise_fn)

    def call(xi, sigma):
        return model(xi, sigma, **extra_args)

    def report(ins, src, denoised):
        callback({"x": src, "i": ins.step, "sigma": sigmas[ins.step], "sigma_hat": ins.point.sigma,
                  "denoised": denoised})

    with torch.no_grad():
        out = loop.run(call, report if callback is not None else None).clone()
    # one host read after the last step: a NaN/inf denoiser output (or a diverging step) is an error, never a sample
    return check_finite(out, step=len(sig) - 1, what=f"sample_{name}'s sample")


def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, **fastsde_options):
    """Euler (Karras et al. 2022 algorithm 2 without the correction), optional churn."""
    return _sample("euler", model, x, sigmas, extra_args, callback, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                   s_noise=s_noise, **fastsde_options)


def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None, **fastsde_options):
    """Ancestral Euler: Euler down to sigma_down, then noise of std sigma_up."""
    return _sample("euler_ancestral", model, x, sigmas, extra_args, callback, eta=eta, s_noise=s_noise,
                   noise_sampler=noise_sampler, **fastsde_options)


def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, **fastsde_options):
    """EDM's Heun (Karras et al. 2022 algorithm 2), optional churn."""
    return _sample("heun", model, x, sigmas, extra_args, callback, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                   s_noise=s_noise, **fastsde_options)


def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, **fastsde_options):
    """k-diffusion's DPM-Solver-2 variant (midpoint in log sigma)."""
    return _sample("dpm_2", model, x, sigmas, extra_args, callback, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                   s_noise=s_noise, **fastsde_options)


def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, **fastsde_options):
    """DPM-Solver++(2M)."""
    return _sample("dpmpp_2m", model, x, sigmas, extra_args, callback, **fastsde_options)


def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint", **fastsde_options):
    """DPM-Solver++(2M) SDE (midpoint; solver_type 'heun' is not implemented)."""
    if solver_type != "midpoint":
        raise ValueError(f"solver_type must be 'midpoint', got {solver_type!r}")
    return _sample("dpmpp_2m_sde", model, x, sigmas, extra_args, callback, eta=eta, s_noise=s_noise,
                   noise_sampler=noise_sampler, **fastsde_options)


def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, **fastsde_options):
    """DPM-Solver++(3M) SDE."""
    return _sample("dpmpp_3m_sde", model, x, sigmas, extra_args, callback, eta=eta, s_noise=s_noise,
                   noise_sampler=noise_sampler, **fastsde_options)
