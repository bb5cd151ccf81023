"""Mixed precision (fastsde.precision): the model in bfloat16/float16, the sampler state in float32.

The step ops read a half-precision model output beside a float32 state in one pass: every backend against the
reference in float64 from the same half output, and bit-identical to the step on its exact float32 conversion. The
samplers plumb `precision=` through (fused loop, reference loop, solvers, ODE), the fused U-Net runs in bf16/fp16
without falling back, training autocasts with float32 master weights, and the quality guard compares bf16 with fp32
samples of the shipped digits model and of the analytic mixtures.
"""
from __future__ import annotations


import pytest
import torch

from fastsde.ops import step as ops
from fastsde.reference import step as ref

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = [torch.bfloat16, torch.float16]
BACKENDS = ["reference", "native", "triton"]


def _backend_or_skip(backend):
    from fastsde.ops.dispatch import backend_available

    ok, why = backend_available(backend, torch.device("cpu"))
    if not ok:
        pytest.skip(why)


def _inputs(shape, half, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    score = torch.randn(shape, generator=g).to(half)  # a half-precision model output
    noise = torch.randn(shape, generator=g)
    return x, score, noise


# ---------------------------------------------------------------------------------------------- the public ops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 1, 16, 16)])  # nothing divides a block; an image batch
def test_affine_and_langevin_steps_read_the_half_score(backend, half, shape):
    """err(op, ref64) <= 2 err(ref32, ref64) + atol with ref64 computed from the same half score, and the op on the
    half score equals the op on its exact float32 conversion, bit for bit (the load is the conversion)."""
    _backend_or_skip(backend)
    x, s, _ = _inputs(shape, half)
    a = torch.rand(shape[0], dtype=torch.float64) + 0.5
    b = torch.rand(shape[0], dtype=torch.float64) + 0.5
    c = torch.rand(shape[0], dtype=torch.float64) + 0.5
    kw = dict(seed=2**64 - 3, sample_ids=torch.arange(shape[0]) + 7, draw=2**33 + 1)
    xm = torch.full_like(x, float("nan"))
    out = ops.affine_step(x, s, a, b, c, x_mean_out=xm, backend=backend, **kw)
    assert out.dtype == torch.float32 and xm.dtype == torch.float32
    r64 = ref.affine_step(x.double(), s.double(), a, b, c, **kw)
    r32 = ref.affine_step(x, s, a, b, c, **kw)
    err_ref = (r32.double() - r64).abs().max().item()
    assert (out.double() - r64).abs().max().item() <= 2 * err_ref + 2e-6 * c.max().item()
    assert torch.equal(out, ops.affine_step(x, s.float(), a, b, c, backend=backend, **kw))
    # Langevin: the norms of the half score, then the update; identical to the float32 conversion's
    got = ops.langevin_step(x, s, 0.16, 0.3, backend=backend, **kw)
    want = ops.langevin_step(x, s.float(), 0.16, 0.3, backend=backend, **kw)
    assert torch.equal(got, want)
    want64 = ref.langevin_step(x.double(), s.double(), 0.16, 0.3, **kw)
    assert (got.double() - want64).abs().max().item() <= 1e-5 * want64.abs().max().item()
    sq = ops.step_sq_norms(s, backend=backend, **kw)
    torch.testing.assert_close(sq, ref.step_sq_norms(s.double(), **kw), rtol=2e-6, atol=0)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("half", HALF)
def test_affine_combine_step_reads_half_outputs(backend, half):
    x, s, d = _inputs((4, 37), half, seed=1)
    outputs = [s, d.to(half)]
    got = ops.affine_combine_step(x, outputs, 0.9, [0.3, -0.2], 0.1, seed=5, backend=backend)
    want = ops.affine_combine_step(x, [o.float() for o in outputs], 0.9, [0.3, -0.2], 0.1, seed=5, backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    steps = ops.CombineSteps(x.clone(), 5, None, backend)
    assert steps.accepts(s) and not steps.accepts(s.double())


def test_score_dtype_rules_and_messages():
    x, s, noise = _inputs((2, 9), torch.bfloat16)
    for bad in (s.double(), s.float().double()):
        with pytest.raises(ValueError, match=r"score must match x: expected shape \(2, 9\) torch.float32 or "
                                             r"torch.bfloat16 or torch.float16"):
            ops.affine_step(x, bad, 1.0, 1.0)
    with pytest.raises(ValueError, match="score must match x"):  # a float16 state reads float16 scores only
        ops.affine_step(x.half(), s, 1.0, 1.0)
    with pytest.raises(ValueError, match="score must match noise"):
        ops.step_sq_norms(s, noise=noise.half())
    with pytest.raises(ValueError, match="noise must match x"):  # checked before the norms run
        ops.langevin_step(x, s, 0.16, 0.3, noise=noise.double())
    # float32 scores beside a float64 state are read directly as well
    out = ops.affine_step(x.double(), s.float(), 1.0, 0.5, backend="native")
    torch.testing.assert_close(out, x.double() + 0.5 * s.double(), rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("half", HALF)
def test_executor_updates_take_the_half_model_output(half, backend):
    """The executor's PC updates (CombineSteps.combine with x_mean and the projection, CombineSteps.langevin with its
    step size on the device) with a half score: identical to the same update on its float32 conversion."""
    from fastsde.ops.step import CombineSteps, langevin_scratch

    if backend == "triton":
        pytest.importorskip("triton")
    x, s, _ = _inputs((3, 40), half, seed=2)
    mask = (torch.arange(40) % 3 == 0).float().expand(3, 40).contiguous()
    data = torch.linspace(-1, 1, 120).reshape(3, 40)
    coefs = torch.tensor([0.9, 0.2, 0.0, 0.0, 0.5, 0.8, 0.1], dtype=torch.float64)
    lang = torch.tensor([0.3, -0.7, 0.8, 0.1], dtype=torch.float64)
    results = []
    steps = CombineSteps(x, 9, torch.arange(3), backend=backend)
    for score in (s, s.float()):
        xa, xm = torch.empty_like(x), torch.empty_like(x)
        steps.combine(xa, x, [score], (coefs[0:1], [coefs[1:2]], coefs[4:5]), 3, x_mean=xm,
                      proj=(mask, data, coefs[5:6], coefs[6:7], 4))
        xl, xml = x.clone(), torch.empty_like(x)
        steps.langevin(xl, xml, langevin_scratch(x), score, lang, 0.16, 5, (mask, data, 6))
        results.append((xa, xm, xl, xml))
    for got, want in zip(*results):
        assert torch.equal(got, want)


