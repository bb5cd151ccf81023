"""Triton step kernels (kernels/step.py, kernels/fsn1.py) against fastsde.random and fastsde.reference.step.

Runs under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it before triton is imported), so shapes
are small. Outputs are poisoned with NaN before each run; inputs are never zeros.
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":  # tensors here are CPU tensors; a CUDA variant is not written yet
    pytest.skip("these tests run the kernels interpreted on CPU tensors: TRITON_INTERPRET=1", allow_module_level=True)

from fastsde import random as fsn1  # noqa: E402
from fastsde.kernels import fsn1 as kfsn1  # noqa: E402
from fastsde.kernels import step as kstep  # noqa: E402
from fastsde.ops import step as ops  # noqa: E402
from fastsde.reference import step as ref  # noqa: E402

VECTORS = json.loads((pathlib.Path(__file__).parent / "data" / "fsn1_vectors.json").read_text())["vectors"]
U64 = (1 << 64) - 1
# FSN1 float32 normals vs the float64 oracle: measured 3.3e-7 over 4 x 1027 draws; docs/design.md says ~1e-6.
NORMAL_TOL = 2e-6
SHAPES = [
    (3, 5, 7),  # nothing divides the block (35 elements, not a multiple of 4)
    (1, 1),  # one element: a single, mostly masked program
    (2, 1027),  # crosses the 1024-element block; the last Philox block is partial
]
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _words_oracle(seed, sample, draw, block):
    return np.stack([fsn1.fsn1_words(s, m, d, b) for s, m, d, b in zip(seed, sample, draw, block)]).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# FSN1: words and uniforms exact, normals within NORMAL_TOL


def test_words_known_answers():
    words, uniforms = kfsn1.fsn1_words_debug([v["seed"] for v in VECTORS], [v["sample"] for v in VECTORS],
                                             [v["draw"] for v in VECTORS], [v["element"] >> 2 for v in VECTORS])
    expected = np.array([[int(w, 16) for w in v["philox"]] for v in VECTORS], dtype=np.int64)
    np.testing.assert_array_equal(words.numpy(), expected)
    # Random123's known answer: counter 0, key 0.
    assert [hex(w) for w in words[0].tolist()] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]
    # u, v of the element's pair (j & 3 in {0, 1} -> words (w0, w1); {2, 3} -> (w2, w3)), exact.
    pair = torch.tensor([(v["element"] & 3) >> 1 for v in VECTORS])
    rows = torch.arange(len(VECTORS))
    np.testing.assert_array_equal(uniforms[rows, 2 * pair].double().numpy(), [v["u"] for v in VECTORS])
    np.testing.assert_array_equal(uniforms[rows, 2 * pair + 1].double().numpy(), [v["v"] for v in VECTORS])
    # the vectors reach the ranges that need care: 64-bit seeds, ids past 2^31, draws past 2^32, blocks past 2^31
    assert max(v["seed"] for v in VECTORS) == U64 and max(v["sample"] for v in VECTORS) >= 1 << 31
    assert max(v["draw"] for v in VECTORS) >= 1 << 32 and max(v["element"] >> 2 for v in VECTORS) >= 1 << 31


def test_words_and_uniforms_match_oracle():
    rng = np.random.default_rng(1)
    n = 200
    seed = [0, U64, 1 << 63, 0xFFFFFFFF] + [int(s) for s in rng.integers(0, 1 << 64, n - 4, dtype=np.uint64)]
    sample = [0, (1 << 32) - 1, 1 << 31, 7] + [int(s) for s in rng.integers(0, 1 << 32, n - 4)]
    draw = [0, U64, 1 << 32, (1 << 32) - 1] + [int(s) for s in rng.integers(0, 1 << 64, n - 4, dtype=np.uint64)]
    block = [0, (1 << 32) - 1, 1 << 31, 3] + [int(s) for s in rng.integers(0, 1 << 32, n - 4)]
    words, uniforms = kfsn1.fsn1_words_debug(seed, sample, draw, block)
    expected = _words_oracle(seed, sample, draw, block)
    np.testing.assert_array_equal(words.numpy(), expected)
    u, v = fsn1.fsn1_uniforms(expected.astype(np.uint32))
    np.testing.assert_array_equal(uniforms[:, 0::2].double().numpy(), u)
    np.testing.assert_array_equal(uniforms[:, 1::2].double().numpy(), v)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, NORMAL_TOL), (torch.float64, 1e-12)])
def test_normals_match_oracle(dtype, tol):
    ids = torch.tensor([0, 5, (1 << 31) + 7, (1 << 32) - 1])
    seed, draw = U64, (1 << 33) + 5
    out = torch.full((4, 1027), float("nan"), dtype=dtype)
    kfsn1.fsn1_normal_debug(out, seed, ids, draw)
    expected = fsn1.fsn1_normal(seed, ids, draw, 1027, dtype=torch.float64)
    assert (out.double() - expected).abs().max().item() <= tol


# ---------------------------------------------------------------------------------------------------------------
# affine_step against the reference


def _coefs(batch, length_one=False):
    g = torch.Generator().manual_seed(3)
    n = 1 if length_one else batch
    a = 1 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    b = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    c = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    return a, b, c


def _inputs(shape, dtype, project=False):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    score = torch.randn(shape, generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = (torch.rand(shape, generator=g) < 0.5).double() if project else None
    data = torch.randn(shape, generator=g, dtype=torch.float64) if project else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(x), cast(score), cast(noise), cast(mask), cast(data)


def _err(t, r64):
    return (t.double() - r64).abs().max().item()


def _atol(dtype, r64, noise_coef=0.0):
    """The slack on top of 2 err(ref32, ref64): 1e-7; for bf16, one ulp of the output (the float32 values may
    differ by an ulp and round to either bf16 neighbour); for in-kernel noise, |c| NORMAL_TOL (FSN1's float32
    normals are within NORMAL_TOL of the float64 ones the reference draws)."""
    atol = 1e-7 + noise_coef * (NORMAL_TOL if dtype != torch.float64 else 1e-12)
    if dtype in (torch.bfloat16, torch.float16):
        atol += torch.finfo(dtype).eps * r64.abs().max().item()
    return atol


def _ref_pair(x, score, a, b, c, **kw):
    """(ref in x's dtype, ref in float64) and their x_means."""
    kw64 = {k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in kw.items()}
    m32 = torch.empty_like(x)
    m64 = torch.empty(x.shape, dtype=torch.float64)
    r32 = ref.affine_step(x, score, a, b, c, x_mean_out=m32, **kw)
    r64 = ref.affine_step(x.double(), score.double(), a, b, c, x_mean_out=m64, **kw64)
    return r32, r64, m32, m64


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise_mode", ["explicit", "fsn1", "none"])
def test_affine_step_matches_reference(shape, dtype, noise_mode):
    x, score, noise, _, _ = _inputs(shape, dtype)
    a, b, c = _coefs(shape[0])
    ids = torch.arange(shape[0], dtype=torch.int64) + (1 << 31)  # past int32
    seed, draw = U64 - 12345, (1 << 32) + 9
    if noise_mode == "none":
        c, kw = None, {}
    elif noise_mode == "explicit":
        kw = dict(noise=noise)
    else:
        kw = dict(seed=seed, sample_ids=ids, draw=draw)
    out = torch.full_like(x, float("nan"))
    x_mean = torch.full_like(x, float("nan"))
    kstep.affine_step(out, x, score, a, b, c, kw.get("noise"), seed, ids, draw, x_mean, None, None, None, None, 0)
    r32, r64, m32, m64 = _ref_pair(x, score, a, b, c, **kw)
    noise_coef = c.abs().max().item() if noise_mode == "fsn1" else 0.0
    assert _err(out, r64) <= 2 * _err(r32, r64) + _atol(dtype, r64, noise_coef)
    assert _err(x_mean, m64) <= 2 * _err(m32, m64) + _atol(dtype, m64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_step_length_one_coefficients_in_place(dtype):
    x, score, _, _, _ = _inputs((3, 5, 7), dtype)
    a, b, c = _coefs(3, length_one=True)
    ids = torch.tensor([4, 0, (1 << 32) - 1])
    r32, r64, _, _ = _ref_pair(x, score, a, b, c, seed=7, sample_ids=ids, draw=2)
    state = x.clone()
    kstep.affine_step(state, state, score, a, b, c, None, 7, ids, 2, None, None, None, None, None, 0)
    assert _err(state, r64) <= 2 * _err(r32, r64) + _atol(dtype, r64, c.abs().max().item())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noisy", [True, False])
def test_affine_step_projection(shape, dtype, noisy):
    x, score, _, mask, data = _inputs(shape, dtype, project=True)
    a, b, c = _coefs(shape[0])
    c = c if noisy else None
    data_a, data_c, _ = _coefs(shape[0], length_one=True)
    ids = torch.arange(shape[0], dtype=torch.int64) * 3 + 1
    seed, draw, data_draw = 11, 5, U64
    kw = dict(seed=seed, sample_ids=ids, draw=draw, mask=mask, data=data, data_a=data_a, data_c=data_c,
              data_draw=data_draw)
    out = torch.full_like(x, float("nan"))
    x_mean = torch.full_like(x, float("nan"))
    kstep.affine_step(out, x, score, a, b, c, None, seed, ids, draw, x_mean, mask, data, data_a, data_c, data_draw)
    r32, r64, m32, m64 = _ref_pair(x, score, a, b, c, **kw)
    noise_coef = (0.0 if c is None else c.abs().max().item()) + data_c.abs().max().item()
    assert _err(out, r64) <= 2 * _err(r32, r64) + _atol(dtype, r64, noise_coef)
    assert _err(x_mean, m64) <= 2 * _err(m32, m64) + _atol(dtype, m64, noise_coef)


def test_affine_step_batches_past_grid_limit(monkeypatch):
    """Batches past CUDA's 65535 grid rows launch in chunks; shrink the limit to exercise it on 5 samples."""
    monkeypatch.setattr(kstep, "_MAX_GRID_Y", 2)
    x, score, _, _, _ = _inputs((5, 9), torch.float32)
    a, b, c = _coefs(5)
    ids = torch.tensor([9, 8, 7, 6, 5])
    out = torch.full_like(x, float("nan"))
    kstep.affine_step(out, x, score, a, b, c, None, 3, ids, 4, None, None, None, None, None, 0)
    r32, r64, _, _ = _ref_pair(x, score, a, b, c, seed=3, sample_ids=ids, draw=4)
    assert _err(out, r64) <= 2 * _err(r32, r64) + _atol(torch.float32, r64, c.abs().max().item())
    norms = kstep.step_sq_norms(score, None, 3, ids, 4)
    torch.testing.assert_close(norms, ref.step_sq_norms(score.double(), seed=3, sample_ids=ids, draw=4),
                               rtol=2e-6, atol=0)


def test_affine_step_non_contiguous():
    x, score, _, _, _ = _inputs((3, 5, 7), torch.float32)
    xt, st = x.transpose(1, 2), score.transpose(1, 2)
    a, b, c = _coefs(3)
    out = torch.full_like(xt, float("nan"))
    x_mean = torch.full_like(xt, float("nan"))
    kstep.affine_step(out, xt, st, a, b, c, None, 1, torch.arange(3), 0, x_mean, None, None, None, None, 0)
    m64 = torch.empty(xt.shape, dtype=torch.float64)
    r64 = ref.affine_step(xt.double(), st.double(), a, b, c, seed=1, sample_ids=torch.arange(3), draw=0,
                          x_mean_out=m64)
    assert _err(out, r64) <= 1e-6 * c.max().item() * 10 and _err(x_mean, m64) <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# step_sq_norms against the reference: partial sums of 1024 squares in float32 (relative error <= ~11 * 2^-24
# = 6.6e-7), then float64 across programs; FSN1 z adds 2 |z| NORMAL_TOL / z^2 on average (~5e-7).


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("explicit", [True, False])
def test_step_sq_norms_matches_reference(shape, dtype, explicit):
    _, score, noise, _, _ = _inputs(shape, dtype)
    ids = torch.arange(shape[0], dtype=torch.int64) + (1 << 32) - shape[0]
    kw = dict(noise=noise) if explicit else dict(seed=U64, sample_ids=ids, draw=1 << 40)
    got = kstep.step_sq_norms(score, kw.get("noise"), kw.get("seed", 0), ids, kw.get("draw", 0))
    expected = ref.step_sq_norms(score, **kw)
    assert got.dtype == torch.float64 and got.shape == (shape[0], 2)
    rtol = 1e-12 if dtype == torch.float64 else (1e-6 if explicit else 2e-6)
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision: a half-precision model output (score) beside a float32 state, a float32 one beside float64. The
# oracle is the reference in float64 from the same narrow score: the error is the float32 rounding of the update.

MIXED = [(torch.float32, torch.bfloat16), (torch.float32, torch.float16), (torch.float64, torch.float32)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("state, score_dtype", MIXED)
@pytest.mark.parametrize("noise_mode", ["explicit", "fsn1", "none"])
def test_affine_step_mixed_score_matches_reference(shape, state, score_dtype, noise_mode):
    x, score, noise, _, _ = _inputs(shape, state)
    score = score.to(score_dtype)
    a, b, c = _coefs(shape[0])
    ids = torch.arange(shape[0], dtype=torch.int64) + 5
    seed, draw = 77, 3
    if noise_mode == "none":
        c, kw = None, {}
    elif noise_mode == "explicit":
        kw = dict(noise=noise)
    else:
        kw = dict(seed=seed, sample_ids=ids, draw=draw)
    out = torch.full_like(x, float("nan"))
    x_mean = torch.full_like(x, float("nan"))
    kstep.affine_step(out, x, score, a, b, c, kw.get("noise"), seed, ids, draw, x_mean, None, None, None, None, 0)
    r32, r64, m32, m64 = _ref_pair(x, score, a, b, c, **kw)
    noise_coef = c.abs().max().item() if noise_mode == "fsn1" else 0.0
    assert out.dtype == state
    assert _err(out, r64) <= 2 * _err(r32, r64) + _atol(state, r64, noise_coef)
    assert _err(x_mean, m64) <= 2 * _err(m32, m64) + _atol(state, m64)
    # the narrow score is read exactly as its conversion to the state's dtype would be
    widened = torch.full_like(x, float("nan"))
    kstep.affine_step(widened, x, score.to(state), a, b, c, kw.get("noise"), seed, ids, draw, None, None, None,
                      None, None, 0)
    assert torch.equal(out, widened)


@pytest.mark.parametrize("state, score_dtype", MIXED)
def test_affine_step_mixed_score_projection(state, score_dtype):
    x, score, _, mask, data = _inputs((2, 1027), state, project=True)
    score = score.to(score_dtype)
    a, b, c = _coefs(2)
    data_a, data_c, _ = _coefs(2, length_one=True)
    ids = torch.tensor([3, 9])
    kw = dict(seed=11, sample_ids=ids, draw=5, mask=mask, data=data, data_a=data_a, data_c=data_c, data_draw=6)
    out = torch.full_like(x, float("nan"))
    kstep.affine_step(out, x, score, a, b, c, None, 11, ids, 5, None, mask, data, data_a, data_c, 6)
    r32, r64, _, _ = _ref_pair(x, score, a, b, c, **kw)
    noise_coef = c.abs().max().item() + data_c.abs().max().item()
    assert _err(out, r64) <= 2 * _err(r32, r64) + _atol(state, r64, noise_coef)


@pytest.mark.parametrize("state, score_dtype", MIXED)
@pytest.mark.parametrize("explicit", [True, False])
def test_step_sq_norms_mixed_score(state, score_dtype, explicit):
    _, score, noise, _, _ = _inputs((2, 1027), state)
    score = score.to(score_dtype)
    ids = torch.tensor([0, 1])
    kw = dict(noise=noise) if explicit else dict(seed=5, sample_ids=ids, draw=2)
    got = kstep.step_sq_norms(score, kw.get("noise"), kw.get("seed", 0), ids, kw.get("draw", 0))
    expected = ref.step_sq_norms(score, **kw)
    rtol = 1e-12 if state == torch.float64 and explicit else 2e-6
    torch.testing.assert_close(got, expected, rtol=rtol, atol=0)


def test_mixed_score_checks():
    x, score, noise, _, _ = _inputs((2, 9), torch.float32)
    a, b, c = _coefs(2)
    ids = torch.arange(2)
    for bad in (score.double(), score.to(torch.bfloat16)[:, :8]):
        with pytest.raises(ValueError, match="score must match x"):
            kstep.affine_step(torch.empty_like(x), x, bad, a, b, c, None, 0, ids, 0, None, None, None, None, None, 0)
    with pytest.raises(ValueError, match="score must match noise"):  # a float16 state takes a float16 score only
        kstep.step_sq_norms(score.to(torch.bfloat16), noise.half(), 0, ids, 0)


# ---------------------------------------------------------------------------------------------------------------
# The public ops dispatch to Triton; the torch.library ops are registered.


def test_public_ops_dispatch_to_triton():
    x, score, _, mask, data = _inputs((2, 3, 33), torch.float32, project=True)
    a, b, c = _coefs(2)
    kw = dict(seed=U64, sample_ids=torch.tensor([1 << 31, 3]), draw=1 << 35)
    got = ops.affine_step(x, score, a, b, c, backend="triton", **kw)
    want = ops.affine_step(x, score, a, b, c, backend="reference", **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=NORMAL_TOL * c.max().item() + 1e-6)
    proj = dict(mask=mask, data=data, data_a=0.9, data_c=0.3, data_draw=2)
    got = ops.affine_step(x, score, a, b, None, backend="triton", **kw, **proj)
    want = ops.affine_step(x, score, a, b, None, backend="reference", **kw, **proj)
    torch.testing.assert_close(got, want, rtol=0, atol=NORMAL_TOL + 1e-6)
    torch.testing.assert_close(ops.step_sq_norms(score, backend="triton", **kw),
                               ops.step_sq_norms(score, backend="reference", **kw), rtol=2e-6, atol=0)
    state = x.clone()
    ops.langevin_step(state, score, 0.16, 0.5, out=state, backend="triton", **kw)
    want = ops.langevin_step(x, score, 0.16, 0.5, backend="reference", **kw)
    torch.testing.assert_close(state, want, rtol=1e-5, atol=1e-5)


def test_torch_library_ops_registered():
    assert hasattr(torch.ops.fastsde, "affine_step_triton") and hasattr(torch.ops.fastsde, "step_sq_norms_triton")
    args = torch.ops.fastsde.affine_step_triton.default._schema.arguments
    written = {arg.name for arg in args if arg.alias_info is not None and arg.alias_info.is_write}
    assert written == {"out", "x_mean_out"}


def test_torch_library_opcheck():
    """Schema, autograd registration and fake (meta) implementations. AOT tracing (opcheck's test_aot_dispatch_*)
    needs compiled kernels: under the interpreter wrap_triton hands back the interpreted function, which cannot
    run on fake tensors."""
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    x, score, noise, mask, data = _inputs((2, 40), torch.float32, project=True)
    a, b, c = _coefs(2)
    ids = torch.tensor([3, (1 << 32) - 1])
    out, x_mean = torch.full_like(x, float("nan")), torch.full_like(x, float("nan"))
    seed = torch.tensor(-5)  # the seed's int64 bits in a 0-d tensor: the kernels read it when they run
    torch.library.opcheck(torch.ops.fastsde.affine_step_triton.default,
                          (out, x, score, a, b, c, None, seed, ids, 3, x_mean, mask, data, a, c, 9), test_utils=tests)
    torch.library.opcheck(torch.ops.fastsde.affine_step_triton.default,
                          (out, x, score, a, b, c, noise, torch.tensor(0), ids, 0, None, None, None, None, None, 0),
                          test_utils=tests)
    torch.library.opcheck(torch.ops.fastsde.step_sq_norms_triton.default, (score, None, seed, ids, 3),
                          test_utils=tests)
