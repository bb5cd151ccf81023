"""The op layer (fastsde.ops.step): validation, dispatch rules, torch.compile tracing of a fused sampler step."""
import pytest
import torch

from fastsde import _native
from fastsde.ops import dispatch
from fastsde.ops import step as ops
from fastsde.reference import step as ref

NATIVE = _native.available()


def test_validation_names_the_argument():
    x, s = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"score must match x: expected shape \(3, 4\)"):
        ops.affine_step(x, torch.randn(3, 5), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"b must have shape \(3,\) or \(1,\)"):
        ops.affine_step(x, s, 1.0, torch.ones(2))
    with pytest.raises(ValueError, match="needs noise= or seed="):
        ops.affine_step(x, s, 1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="sample_ids must be in"):
        ops.affine_step(x, s, 1.0, 1.0, 0.5, seed=1, sample_ids=[0, 1, 2**32])
    with pytest.raises(TypeError, match="x must be float32"):
        ops.affine_step(x.long(), s.long(), 1.0, 1.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.affine_step(x, s, 1.0, 1.0, backend="cuda")
    with pytest.raises(ValueError, match="inpainting projection needs"):
        ops.affine_step(x, s, 1.0, 1.0, 0.5, seed=1, mask=torch.ones_like(x))


def test_zero_size_returns_at_once():
    x = torch.empty(0, 7)
    assert ops.affine_step(x, x, 1.0, 1.0, 0.5, seed=1).shape == (0, 7)
    assert ops.step_sq_norms(x, seed=1).shape == (0, 2)


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already has a 'reference' implementation"):
        dispatch.register("affine_step", "reference")(lambda *a: None)


def test_named_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.setattr(dispatch, "backend_available", lambda b, d: (b == "reference", "not built"))
    x = torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="backend='native' cannot run 'affine_step': not built"):
        ops.affine_step(x, x, 1.0, 1.0, backend="native")
    # auto falls back to the reference implementation
    torch.testing.assert_close(ops.affine_step(x, x, 2.0, 1.0), 3 * x)


@pytest.mark.parametrize("backend", ["reference"] + (["native"] if NATIVE else []))
def test_langevin_score_scale_folds_into_the_step(backend):
    # s = scale * model_out: the fused Langevin step with score_scale equals the plain step on the scaled score.
    x, out = torch.randn(5, 40, dtype=torch.float64), torch.randn(5, 40, dtype=torch.float64)
    scale = torch.linspace(-3.0, -0.5, 5, dtype=torch.float64)
    got = ops.langevin_step(x, out, 0.16, 0.9, score_scale=scale, seed=4, draw=7, backend=backend)
    expected = ref.langevin_step(x, out * scale[:, None], 0.16, 0.9, seed=4, sample_ids=torch.arange(5), draw=7)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not NATIVE, reason=f"native extension unavailable: {_native.unavailable_reason()}")
def test_torch_compile_traces_a_fused_sampler_step_fullgraph():
    x, s = torch.randn(4, 33), torch.randn(4, 33)

    def step(x, score):
        x = ops.affine_step(x, score, 1.0, 0.5, 0.1, seed=3, draw=2, backend="native")
        return ops.langevin_step(x, score, 0.16, 1.0, seed=3, draw=5, backend="native")

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    torch.testing.assert_close(compiled(x, s), step(x, s), rtol=0, atol=0)
