"""fastsde.kdiffusion against float64 transcriptions of k-diffusion's formulas (no package needed): the same
algorithm to 1e-9 in float64, plus the callbacks, helpers, noise_sampler and misuse. The comparison with the
installed k-diffusion package itself (and diffusers' schedulers) is tests/test_real_packages.py."""
from __future__ import annotations

import math

import pytest
import torch

from fastsde import kdiffusion
from fastsde.models.analytic import get_mixture

pytestmark = pytest.mark.usefixtures("one_thread")

MIX = get_mixture("ring")


def denoiser(x, sigma):
    """Exact k-diffusion denoiser of the ring: D(x, sigma) = x + sigma^2 grad log p_sigma(x), in x's dtype."""
    s = sigma.double()
    return (x.double() + (s**2)[:, None] * MIX.perturbed_score(x.double(), 1.0, s)).to(x.dtype)


def _d(x, sigma, den):
    return (x - den) / sigma


def ref_euler(x, sigmas):
    for i in range(len(sigmas) - 1):
        den = denoiser(x, sigmas[i] * x.new_ones(len(x)))
        x = x + _d(x, sigmas[i], den) * (sigmas[i + 1] - sigmas[i])
    return x


def ref_heun(x, sigmas):
    for i in range(len(sigmas) - 1):
        den = denoiser(x, sigmas[i] * x.new_ones(len(x)))
        d = _d(x, sigmas[i], den)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = _d(x2, sigmas[i + 1], denoiser(x2, sigmas[i + 1] * x.new_ones(len(x))))
            x = x + (d + d2) / 2 * dt
    return x


def ref_dpm_2(x, sigmas):
    for i in range(len(sigmas) - 1):
        den = denoiser(x, sigmas[i] * x.new_ones(len(x)))
        d = _d(x, sigmas[i], den)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            mid = math.exp(0.5 * (math.log(sigmas[i]) + math.log(sigmas[i + 1])))
            x2 = x + d * (mid - sigmas[i])
            d2 = _d(x2, mid, denoiser(x2, mid * x.new_ones(len(x))))
            x = x + d2 * (sigmas[i + 1] - sigmas[i])
    return x


def ref_dpmpp_2m(x, sigmas):
    old, h_last = None, None
    for i in range(len(sigmas) - 1):
        den = denoiser(x, sigmas[i] * x.new_ones(len(x)))
        if sigmas[i + 1] == 0:
            x = den
            continue
        h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
        dd = den if old is None else (1 + 1 / (2 * h_last / h)) * den - 1 / (2 * h_last / h) * old
        x = sigmas[i + 1] / sigmas[i] * x - math.expm1(-h) * dd
        old, h_last = den, h
    return x


def ref_dpmpp_3m(x, sigmas):
    """k-diffusion's sample_dpmpp_3m_sde with eta = 0."""
    d1_, d2_, h1, h2 = None, None, None, None
    for i in range(len(sigmas) - 1):
        den = denoiser(x, sigmas[i] * x.new_ones(len(x)))
        if sigmas[i + 1] == 0:
            x = den
            continue
        h = math.log(sigmas[i]) - math.log(sigmas[i + 1])
        x = math.exp(-h) * x - math.expm1(-h) * den
        phi2 = math.expm1(-h) / h + 1
        if h2 is not None:
            r0, r1 = h1 / h, h2 / h
            a, b = (den - d1_) / r0, (d1_ - d2_) / r1
            x = x + phi2 * (a + (a - b) * r0 / (r0 + r1)) - (phi2 / h - 0.5) * (a - b) / (r0 + r1)
        elif h1 is not None:
            x = x + phi2 * (den - d1_) / (h1 / h)
        d1_, d2_, h1, h2 = den, d1_, h, h1
    return x


CASES = [("euler", kdiffusion.sample_euler, ref_euler, {}), ("heun", kdiffusion.sample_heun, ref_heun, {}),
         ("dpm_2", kdiffusion.sample_dpm_2, ref_dpm_2, {}), ("dpmpp_2m", kdiffusion.sample_dpmpp_2m, ref_dpmpp_2m, {}),
         ("dpmpp_2m_sde", kdiffusion.sample_dpmpp_2m_sde, ref_dpmpp_2m, {"eta": 0.0}),
         ("dpmpp_3m_sde", kdiffusion.sample_dpmpp_3m_sde, ref_dpmpp_3m, {"eta": 0.0}),
         ("euler_ancestral", kdiffusion.sample_euler_ancestral, ref_euler, {"eta": 0.0})]


@pytest.mark.parametrize("schedule", ["karras", "exponential"])
@pytest.mark.parametrize("name,fn,ref,options", CASES, ids=[c[0] for c in CASES])
def test_deterministic_samplers_match_kdiffusion_formulas(name, fn, ref, options, schedule):
    sigmas = (kdiffusion.get_sigmas_karras(12, 0.01, 10.0) if schedule == "karras"
              else kdiffusion.get_sigmas_exponential(12, 0.01, 10.0))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 10.0
    want = ref(x.double(), sigmas.double().tolist())
    seen = []
    got = fn(denoiser, x, sigmas, callback=lambda d: seen.append(d["i"]), **options)
    got64 = fn(denoiser, x.double(), sigmas, **options)
    assert seen == list(range(len(sigmas) - 1))
    torch.testing.assert_close(got64, want, rtol=0, atol=1e-9)  # the same algorithm, float64 both
    err32 = (got.double() - want).abs().max()
    assert err32 < 1e-4, err32  # float32 rounding over 12 steps of |x| <= 10


def test_sigma_helpers():
    s = kdiffusion.get_sigmas_karras(5, 0.1, 10.0, rho=7.0)
    assert s.shape == (6,) and s[-1] == 0 and math.isclose(s[0], 10.0, rel_tol=1e-6) and math.isclose(s[4], 0.1,
                                                                                                    rel_tol=1e-5)
    ramp = (s[:5] ** (1 / 7)).diff()
    torch.testing.assert_close(ramp, ramp.mean().expand(4))
    e = kdiffusion.get_sigmas_exponential(4, 0.1, 10.0)
    torch.testing.assert_close(e[:4].log().diff(), torch.full((3,), -math.log(100) / 3))
    v = kdiffusion.get_sigmas_vp(3, eps_s=1e-3)
    t = torch.tensor([1.0, 0.5005, 1e-3])
    torch.testing.assert_close(v[:3], torch.sqrt(torch.exp(19.9 * t**2 / 2 + 0.1 * t) - 1))


def test_stochastic_samplers_are_batch_invariant_and_take_noise_sampler():
    sigmas = kdiffusion.get_sigmas_karras(10, 0.01, 10.0)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1)) * 10.0
    full = kdiffusion.sample_dpmpp_2m_sde(denoiser, x, sigmas, seed=4)
    part = kdiffusion.sample_dpmpp_2m_sde(denoiser, x[[4, 1]], sigmas, seed=4, sample_ids=[4, 1])
    torch.testing.assert_close(part, full[[4, 1]], rtol=0, atol=1e-6)
    zeros = kdiffusion.sample_euler_ancestral(denoiser, x, sigmas, noise_sampler=lambda s, t: torch.zeros_like(x))
    torch.testing.assert_close(zeros, kdiffusion.sample_euler_ancestral(denoiser, x, sigmas, s_noise=0.0))


def test_bad_sigmas():
    with pytest.raises(ValueError, match="sigmas must strictly decrease"):
        kdiffusion.sample_euler(denoiser, torch.zeros(2, 2), torch.tensor([1.0, 2.0, 0.0]))
