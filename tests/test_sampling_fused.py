"""The fused PC loop (fastsde.ops.step on preallocated buffers) against the as-written reference loop, same noise."""
import itertools
import os

import pytest
import torch

from fastsde import sampling
from fastsde import sde as sde_lib
from fastsde.models.analytic import AnalyticScoreModel, get_mixture
from fastsde.noise import NoiseStream
from fastsde.ops import dispatch

SDES = {
    "ve": (lambda: sde_lib.VESDE(0.01, 10.0, 30), True),
    "ve_discrete": (lambda: sde_lib.VESDE(0.01, 10.0, 30), False),
    "vp": (lambda: sde_lib.VPSDE(0.1, 20.0, 30), True),
    "vp_discrete": (lambda: sde_lib.VPSDE(0.1, 20.0, 30), False),
    "subvp": (lambda: sde_lib.subVPSDE(0.1, 20.0, 30), True),
}
COMBOS = [
    (s, p, c, pf)
    for s, p, c, pf in itertools.product(SDES, ["euler_maruyama", "reverse_diffusion", "ancestral_sampling", "none"],
                                         ["langevin", "ald", "none"], [False, True])
    if not (p == "ancestral_sampling" and (s == "subvp" or pf))
]


def _op_backends():
    """Backends the fused loop can use here: the reference ops always, native when built, triton when interpreted."""
    names = ["reference"]
    for name in ("native", "triton"):
        if dispatch.backend_available(name, torch.device("cpu"))[0]:
            names.append(name)
    return names


@pytest.fixture
def fused_on(monkeypatch):
    """Run the fused loop on a chosen op backend (the sampler's backend="reference" means the as-written loop)."""

    def use(op_backend):
        if op_backend == "reference":
            real = dispatch.backend_available
            monkeypatch.setattr(dispatch, "backend_available",
                                lambda b, d: (False, "disabled by test") if b != "reference" else real(b, d))
            return "auto"
        return op_backend

    return use


def _run(sde_name, predictor, corrector, pf, backend, noise="fastsde", n=24, dtype=torch.float32):
    make, continuous = SDES[sde_name]
    sde = make()
    model = AnalyticScoreModel(get_mixture("ring"), sde, continuous=continuous)
    sampler = sampling.get_pc_sampler(sde, (n, 2), predictor, corrector, lambda x: x, 0.16, n_steps=2,
                                      probability_flow=pf, continuous=continuous,
                                      eps=1e-5 if sde_name.startswith("ve") else 1e-3, seed=17, noise=noise,
                                      backend=backend, dtype=dtype)
    if noise == "torch":
        torch.manual_seed(5)
    return sampler(model)[0]


def _assert_float32_close(got, ref32, truth):
    """docs/style.md item 4: the fused float32 result is as close to the float64 truth as the float32 reference is.

    Compared on the median sample: a sampler's rounding errors are amplified ~100x in the odd sample that sits on
    a ridge between mixture modes (measured: the max error of either loop varies 10x between batch sizes 24 and
    200, the median by < 2x). The max error only gets a sanity bound.
    """
    err_fast = (got.double() - truth).abs().median().item()
    err_ref = (ref32.double() - truth).abs().median().item()
    # atol: 90 updates of a state of scale ~2 leave a few float32 ulps (2.4e-7 each) even on a perfect loop.
    assert err_fast <= 2 * err_ref + 1e-6, (err_fast, err_ref)
    assert (got.double() - truth).abs().max().item() < 1e-3


@pytest.mark.parametrize("sde_name,predictor,corrector,pf", COMBOS)
def test_fused_loop_equals_reference_loop(fused_on, sde_name, predictor, corrector, pf):
    ref64 = _run(sde_name, predictor, corrector, pf, "reference", dtype=torch.float64)
    ref32 = _run(sde_name, predictor, corrector, pf, "reference")
    truth = _run(sde_name, predictor, corrector, pf, fused_on("reference"), dtype=torch.float64)
    # In float64 state the loops differ only where the as-written one evaluates its coefficients in float32 from
    # the float32 time grid (as score_sde does) and the fused one in float64: a few float32 ulps of each
    # coefficient, so ~1e-6 of the state.
    # Bound: 90 updates, each off by a coefficient rounding of 2^-24 relative, on a state of scale ~2: ~1e-5.
    assert (truth - ref64).abs().median().item() < 1e-5
    assert (truth - ref64).abs().max().item() < 1e-3
    # The float64 fused loop (float64 state and coefficients) is the most exact answer at hand: the float32
    # fused loop must be as close to it as the float32 as-written loop is.
    got = _run(sde_name, predictor, corrector, pf, fused_on("reference"))
    _assert_float32_close(got, ref32, truth)


@pytest.mark.parametrize("backend", _op_backends())
@pytest.mark.parametrize("sde_name,predictor,corrector", [("ve", "reverse_diffusion", "langevin"),
                                                          ("vp", "euler_maruyama", "none"),
                                                          ("vp_discrete", "ancestral_sampling", "ald")])
def test_every_op_backend_matches(fused_on, backend, sde_name, predictor, corrector):
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton on CPU tensors needs TRITON_INTERPRET=1")
    ref32 = _run(sde_name, predictor, corrector, False, "reference", n=8)
    got = _run(sde_name, predictor, corrector, False, backend, n=8)
    truth = _run(sde_name, predictor, corrector, False, fused_on("reference"), n=8, dtype=torch.float64)
    _assert_float32_close(got, ref32, truth)


def test_fused_loop_reproduces_torch_noise_order(fused_on):
    expected = _run("ve", "reverse_diffusion", "langevin", False, "reference", noise="torch")
    got = _run("ve", "reverse_diffusion", "langevin", False, fused_on("reference"), noise="torch")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_custom_predictor_falls_back_to_update_fn():
    class HalfStep(sampling.Predictor):
        def update_fn(self, x, t):
            return 0.5 * x, 0.5 * x

    sde = sde_lib.VPSDE(0.1, 20.0, 5)
    model = AnalyticScoreModel(get_mixture("gaussian"), sde, continuous=True)
    x, _ = sampling.get_pc_sampler(sde, (4, 2), HalfStep, "none", lambda x: x, 0.16, seed=1, continuous=True)(model)
    prior = NoiseStream("fastsde", 1).prior(sde, (4, 2))
    torch.testing.assert_close(x, prior * 0.5**5)
