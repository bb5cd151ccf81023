"""Native (csrc) fused sampler-step ops against fastsde.reference.step: affine_step_, step_sq_norms, fsn1_bits_."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastsde import _native
from fastsde import random as fsn1
from fastsde.reference import step as ref

if not _native.available():
    if os.environ.get("CI") == "true":  # CI builds the extension: its absence is a failure there
        pytest.fail(f"fastsde._C failed to import in CI: {_native.unavailable_reason()}", pytrace=False)
    pytest.skip(f"fastsde._C unavailable: {_native.unavailable_reason()}", allow_module_level=True)

OP = torch.ops.fastsde
SEED, DRAW, DATA_DRAW = 2**64 - 1, 2**32 + 1, 7
SHAPES = [
    (3, 5, 7, 9),      # nothing divides the SIMD group (64) or the Philox block (4)
    (1, 1),            # a single element: all tail
    (2, 100003),       # long rows: many full groups + a partial group + a partial block
    (4, 3, 16, 16),    # image-like, every row a multiple of 64
]


def i64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def coef(batch, scalar, gen):
    v = torch.rand(1 if scalar else batch, generator=gen, dtype=torch.float64) + 0.5
    return v


def native_step(x, s, a, b, c, noise=None, ids=None, x_mean=None, mask=None, data=None, da=None, dc=None, out=None):
    out = torch.full_like(x, float("nan")) if out is None else out  # poisoned: every element is written
    ids = torch.arange(x.shape[0]) if ids is None else ids
    OP.affine_step_(out, x, s, a, b, c, noise, i64(SEED), ids, i64(DRAW), x_mean, mask, data, da, dc, DATA_DRAW)
    return out


def ref_step(x, s, a, b, c, dtype, **kw):
    """The reference run in `dtype` on copies of the inputs."""
    kw = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k in ("noise", "mask", "data") else v)
          for k, v in kw.items()}
    xm = torch.empty(x.shape, dtype=dtype)
    o = ref.affine_step(x.to(dtype), s.to(dtype), a, b, c, seed=SEED, draw=DRAW, data_draw=DATA_DRAW,
                        x_mean_out=xm, **kw)
    return o, xm


def assert_close_to_ref(got, x, s, a, b, c, got_xm=None, atol=1e-6, **kw):
    """err(native, ref64) <= 2 err(ref32, ref64) + atol (docs/style.md item 4); float64 inputs: ~1e-12."""
    r64, xm64 = ref_step(x, s, a, b, c, torch.float64, **kw)
    if x.dtype == torch.float64:
        torch.testing.assert_close(got, r64, rtol=0, atol=1e-12)
        if got_xm is not None:
            torch.testing.assert_close(got_xm, xm64, rtol=0, atol=1e-12)
        return
    r32, xm32 = ref_step(x, s, a, b, c, torch.float32, **kw)
    for g, lo, hi in [(got, r32, r64)] + ([(got_xm, xm32, xm64)] if got_xm is not None else []):
        # half / bfloat16: both sides rounded to the storage type once
        lo = lo.to(x.dtype).double()
        err_fast = (g.double() - hi).abs().max().item()
        err_ref = (lo - hi).abs().max().item()
        assert err_fast <= 2 * err_ref + atol * max(1.0, hi.abs().max().item()), (err_fast, err_ref)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_sample", [True, False])
def test_explicit_noise_with_x_mean(shape, per_sample):
    gen = torch.Generator().manual_seed(1)
    x, s, z = (torch.randn(shape, generator=gen) for _ in range(3))
    a, b, c = (coef(shape[0], not per_sample, gen) for _ in range(3))
    xm = torch.full_like(x, float("nan"))
    out = native_step(x, s, a, b, c, noise=z, x_mean=xm)
    assert_close_to_ref(out, x, s, a, b, c, got_xm=xm, noise=z)


@pytest.mark.parametrize("shape", SHAPES)
def test_in_kernel_noise_and_noise_free(shape):
    gen = torch.Generator().manual_seed(2)
    x, s = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    a, b, c = (coef(shape[0], False, gen) for _ in range(3))
    ids = torch.tensor([5, 2**31 + 3, 0, 77][: shape[0]])
    # FSN1 normals agree with the float64 reference to a few ulp: |c| < 1.5 keeps the step within 1e-6 relative.
    assert_close_to_ref(native_step(x, s, a, b, c, ids=ids), x, s, a, b, c, atol=2e-6, sample_ids=ids)
    assert_close_to_ref(native_step(x, s, a, b, None), x, s, a, b, None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("explicit", [True, False])
def test_dtypes(dtype, explicit):
    shape = (3, 5, 7, 9)
    gen = torch.Generator().manual_seed(3)
    x, s, z = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    a, b, c = (coef(shape[0], False, gen) for _ in range(3))
    kw = {"noise": z} if explicit else {}
    xm = torch.full_like(x, float("nan"))
    out = native_step(x, s, a, b, c, x_mean=xm, **kw)
    assert out.dtype == dtype
    assert_close_to_ref(out, x, s, a, b, c, got_xm=xm, atol=2e-6, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("noisy", [True, False])
def test_mask_projection(dtype, noisy):
    shape = (4, 3, 16, 16)
    gen = torch.Generator().manual_seed(4)
    x, s, data = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    mask = (torch.rand(shape, generator=gen) < 0.5).to(dtype)
    a, b, c, da, dc = (coef(shape[0], False, gen) for _ in range(5))
    c = c if noisy else None
    xm = torch.full_like(x, float("nan"))
    out = native_step(x, s, a, b, c, x_mean=xm, mask=mask, data=data, da=da, dc=dc)
    assert_close_to_ref(out, x, s, a, b, c, got_xm=xm, atol=2e-6, mask=mask, data=data, data_a=da, data_c=dc)


def test_in_place_and_non_contiguous_through_ops():
    from fastsde.ops import step as ops

    gen = torch.Generator().manual_seed(5)
    base = torch.randn(9, 7, 5, 3, generator=gen)
    x = base.permute(3, 2, 1, 0)  # non-contiguous (3, 5, 7, 9)
    s = torch.randn(18, 5, 7, 9, generator=gen)[::6]  # a strided slice
    a, b, c = (coef(3, False, gen) for _ in range(3))
    want = ops.affine_step(x, s, a, b, c, seed=SEED, draw=DRAW, backend="native")
    assert_close_to_ref(want, x, s, a, b, c, atol=2e-6)
    y = x.contiguous()
    got = ops.affine_step(y, s, a, b, c, seed=SEED, draw=DRAW, out=y, backend="native")  # in place
    assert got is y and torch.equal(y, want)
    # in place directly on the op (out aliases x)
    y2 = x.contiguous()
    OP.affine_step_(y2, y2, s.contiguous(), a, b, c, None, i64(SEED), torch.arange(3), i64(DRAW), None, None, None,
                    None, None, 0)
    assert torch.equal(y2, want)


def test_zero_size():
    for shape in [(0, 5), (3, 0)]:
        x = torch.empty(shape)
        one = torch.ones(1, dtype=torch.float64)
        OP.affine_step_(x, x, x, one, one, one, None, 0, torch.arange(shape[0]), 0, None, None, None, None, None, 0)
        assert OP.step_sq_norms(x, None, 0, torch.arange(shape[0]), 0).shape == (shape[0], 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("explicit", [True, False])
def test_step_sq_norms(dtype, explicit):
    gen = torch.Generator().manual_seed(6)
    s = torch.randn(3, 40_007, generator=gen).to(dtype)
    z = torch.randn(3, 40_007, generator=gen).to(dtype) if explicit else None
    ids = torch.tensor([3, 2**32 - 1, 9])
    got = OP.step_sq_norms(s, z, i64(SEED), ids, i64(DRAW))
    want = ref.step_sq_norms(s, noise=z, seed=SEED, sample_ids=ids, draw=DRAW)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_fsn1_bits_exact():
    ids = torch.tensor([0, 2**31 + 3, 2**32 - 1])
    for seed, draw in [(0, 0), (2**64 - 1, 2**32 + 1), (0x0123456789ABCDEF, 2**64 - 2)]:
        out = torch.zeros(3, 1027, 4, dtype=torch.int32)
        OP.fsn1_bits_(out, i64(seed), ids, i64(draw))
        want = fsn1.fsn1_words(seed, ids.numpy()[:, None].astype(np.uint64), draw, np.arange(1027, dtype=np.uint64))
        assert np.array_equal(out.numpy().view(np.uint32), want)


def test_known_answer_vectors_through_the_step():
    vectors = json.loads((pathlib.Path(__file__).parent / "data" / "fsn1_vectors.json").read_text())["vectors"]
    picked = [v for v in vectors if v["element"] < 4096][:40]
    for v in picked:  # x = s = 0, a = b = 0, c = 1: out = the float32 normal
        m = v["element"] + 1
        zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        x = torch.zeros(1, m)
        out = torch.full_like(x, float("nan"))
        OP.affine_step_(out, x, x, zero, zero, one, None, i64(v["seed"]), torch.tensor([v["sample"]]), i64(v["draw"]),
                        None, None, None, None, None, 0)
        assert abs(out[0, -1].item() - v["normal"]) <= 2e-6, v


def test_batch_composition_does_not_matter():
    gen = torch.Generator().manual_seed(7)
    x, s = torch.randn(4, 1000, generator=gen), torch.randn(4, 1000, generator=gen)
    a = b = c = torch.ones(1, dtype=torch.float64)
    ids = torch.tensor([10, 11, 12, 13])
    full = native_step(x, s, a, b, c, ids=ids)
    part = native_step(x[2:].contiguous(), s[2:].contiguous(), a, b, c, ids=ids[2:].contiguous())
    assert torch.equal(full[2:], part)


def test_in_kernel_normals_statistics():
    from scipy import stats

    n = 1_000_000
    x = torch.zeros(2, n // 2)
    zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    z = native_step(x, x, zero, zero, one, ids=torch.tensor([4, 5])).reshape(-1).double().numpy()
    k = 5.0
    assert abs(z.mean()) < k / np.sqrt(n)
    assert abs(z.var() - 1) < k * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < k * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < k * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4


_PROBE = r"""
import hashlib, sys, torch
from fastsde import _native
torch.set_num_threads(int(sys.argv[1]))
op = torch.ops.fastsde
gen = torch.Generator().manual_seed(0)
h = hashlib.sha256()
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    x, s, m, d = (torch.randn(3, 70_001, generator=gen).to(dtype) for _ in range(4))
    a, b, c = (torch.rand(3, generator=gen, dtype=torch.float64) for _ in range(3))
    out, xm = torch.empty_like(x), torch.empty_like(x)
    ids = torch.tensor([1, 2**31 + 5, 9])
    op.affine_step_(out, x, s, a, b, c, None, -1, ids, 2**32 + 3, xm, m, d, a, c, 11)
    h.update(out.view(torch.int16 if dtype != torch.float32 else torch.int32).numpy().tobytes())
    h.update(xm.view(torch.int16 if dtype != torch.float32 else torch.int32).numpy().tobytes())
    h.update(op.step_sq_norms(s, None, -1, ids, 5).numpy().tobytes())
for sd in (torch.float16, torch.bfloat16):  # a half-precision score beside a float32 state
    x, z = (torch.randn(3, 70_001, generator=gen) for _ in range(2))
    s = torch.randn(3, 70_001, generator=gen).to(sd)
    out, xm = torch.empty_like(x), torch.empty_like(x)
    op.affine_step_(out, x, s, a, b, c, None, -1, ids, 2**32 + 3, xm, x, z, a, c, 11)
    h.update(out.numpy().tobytes()); h.update(xm.numpy().tobytes())
    h.update(op.step_sq_norms(s, z, -1, ids, 5).numpy().tobytes())
y = torch.empty(3, 70_001)
op.fsn1_normal_(y, -1, torch.tensor([1, 2, 3]), 4)
h.update(y.numpy().tobytes())
print(_native.build_info()["simd_runtime"], h.hexdigest())
"""


def test_simd_levels_and_threads_bit_identical():
    supported = _native.build_info()["simd_supported"]
    results = {}
    for level in supported:
        for threads in (1, 2):
            env = {**os.environ, "FASTSDE_SIMD": level}
            proc = subprocess.run([sys.executable, "-c", _PROBE, str(threads)], env=env, capture_output=True, text=True,
                                  check=True)
            used, digest = proc.stdout.split()
            assert used == level
            results[(level, threads)] = digest
    assert len(set(results.values())) == 1, results


def test_cpp_checks():
    x = torch.randn(2, 8)
    ids = torch.arange(2)
    one = torch.ones(2, dtype=torch.float64)
    def args(**kw):
        return {**dict(out=torch.empty_like(x), x=x, score=x, a=one, b=one, c=one, noise=None, seed=0,
                       sample_ids=ids, draw=0, x_mean=None, mask=None, data=None, data_a=None, data_c=None,
                       data_draw=0), **kw}
    for kw, match in [
        ({"a": one.float()}, "a must be float64"),
        ({"b": torch.ones(3, dtype=torch.float64)}, r"b must have shape \(2,\) or \(1,\)"),
        ({"score": torch.randn(2, 9)}, "score must have the shape of x"),
        ({"out": torch.empty(2, 8, dtype=torch.float64)}, "out must have the dtype of x"),
        ({"sample_ids": torch.arange(3)}, "sample_ids must have shape"),
        ({"sample_ids": torch.tensor([0, -1])}, r"sample_ids must be in \[0, 2\^32\)"),
        ({"mask": x}, "mask and data must be given together"),
        ({"x": x.int(), "score": x.int(), "out": x.int()}, "x must be float32, float64, float16 or bfloat16"),
    ]:
        with pytest.raises(RuntimeError, match=match):
            OP.affine_step_(**args(**kw))
    with pytest.raises(RuntimeError, match="noise must have the shape of score"):
        OP.step_sq_norms(x, torch.randn(2, 7), 0, ids, 0)
    # the score may be narrower than x (a half-precision model beside a float32 state), nothing else
    for x_dtype, s_dtype in [(torch.float32, torch.float64), (torch.float16, torch.bfloat16),
                             (torch.bfloat16, torch.float32), (torch.float64, torch.float16)]:
        xs = x.to(x_dtype)
        with pytest.raises(RuntimeError, match="score must have the dtype of x"):
            OP.affine_step_(**args(x=xs, out=torch.empty_like(xs), score=x.to(s_dtype)))
    with pytest.raises(RuntimeError, match="noise must have the dtype of score"):
        OP.step_sq_norms(x.to(torch.bfloat16), x.half(), 0, ids, 0)


def test_meta():
    x = torch.empty(3, 7, device="meta")
    one = torch.empty(1, dtype=torch.float64, device="meta")
    ids = torch.empty(3, dtype=torch.int64, device="meta")
    OP.affine_step_(x, x, x, one, one, one, None, 0, ids, 0, None, None, None, None, None, 0)
    assert OP.step_sq_norms(x, None, 0, ids, 0).shape == (3, 2)
    half = torch.empty(3, 7, device="meta", dtype=torch.bfloat16)  # a half-precision score beside float32 x
    OP.affine_step_(x, x, half, one, one, one, None, 0, ids, 0, None, None, None, None, None, 0)
    assert OP.step_sq_norms(half, x, 0, ids, 0).shape == (3, 2)
    with pytest.raises(RuntimeError, match="score must have the dtype of x"):
        OP.affine_step_(x, x, half.double(), one, one, one, None, 0, ids, 0, None, None, None, None, None, 0)


# ---- mixed precision: the score (a model output) narrower than the state --------------------------------------
MIXED = [(torch.float32, torch.bfloat16), (torch.float32, torch.float16), (torch.float64, torch.float32)]


@pytest.mark.parametrize("shape", SHAPES + [(64, 5), (9, 127)])  # + short rows: the lanes-across-samples path
@pytest.mark.parametrize("state, score_dtype", MIXED)
def test_mixed_score_against_reference(shape, state, score_dtype):
    """err(native, ref64) <= 2 err(ref32, ref64) + atol, the reference run in float64 from the same narrow score:
    the half-precision rounding is in the score, the step adds only the state's rounding."""
    gen = torch.Generator().manual_seed(10)
    x, z, data = (torch.randn(shape, generator=gen).to(state) for _ in range(3))
    s = torch.randn(shape, generator=gen).to(score_dtype)
    mask = (torch.rand(shape, generator=gen) < 0.5).to(state)
    a, b, c, da, dc = (coef(shape[0], False, gen) for _ in range(5))
    ids = torch.randint(0, 2**32, (shape[0],), generator=gen)
    for kw in [dict(sample_ids=ids), dict(noise=z), dict(mask=mask, data=data, data_a=da, data_c=dc, sample_ids=ids)]:
        for cc in (c, None):
            xm = torch.full_like(x, float("nan"))
            nk = {"ids": ids, "noise": kw.get("noise"), "mask": kw.get("mask"), "data": kw.get("data"),
                  "da": kw.get("data_a"), "dc": kw.get("data_c")}
            out = native_step(x, s, a, b, cc, x_mean=xm, **nk)
            assert out.dtype == state
            assert_close_to_ref(out, x, s, a, b, cc, got_xm=xm, atol=2e-6, **kw)


@pytest.mark.parametrize("shape", SHAPES + [(1024, 2), (333, 3), (64, 5)])  # + short rows
@pytest.mark.parametrize("state, score_dtype", MIXED)
def test_mixed_score_reads_exactly_its_conversion(shape, state, score_dtype):
    """The kernel loads the narrow score as the exact conversion to the state's dtype: bit-identical to the step on
    score.to(x.dtype), for every output and noise mode, and for step_sq_norms."""
    gen = torch.Generator().manual_seed(11)
    x, z = (torch.randn(shape, generator=gen).to(state) for _ in range(2))
    s = torch.randn(shape, generator=gen).to(score_dtype)
    a, b, c = (coef(shape[0], False, gen) for _ in range(3))
    for noise, cc in [(None, c), (z, c), (None, None)]:
        xm_n, xm_w = torch.empty_like(x), torch.empty_like(x)
        narrow = native_step(x, s, a, b, cc, noise=noise, x_mean=xm_n)
        wide = native_step(x, s.to(state), a, b, cc, noise=noise, x_mean=xm_w)
        assert torch.equal(narrow, wide) and torch.equal(xm_n, xm_w)
    ids = torch.arange(shape[0])
    # Without explicit noise step_sq_norms draws z in the score's compute type: float32 for a float32 score, which
    # is the float64 state's only in the explicit-noise case.
    for noise in (None, z) if state == torch.float32 else (z,):
        assert torch.equal(OP.step_sq_norms(s, noise, i64(SEED), ids, i64(DRAW)),
                           OP.step_sq_norms(s.to(state), noise, i64(SEED), ids, i64(DRAW)))


# ---- short rows: the SIMD lanes of a group run across samples (csrc/cpu/step_kernels.h, *_flat) ----------------
SHORT_SHAPES = [(1024, 2), (333, 3), (64, 5), (7, 1), (5, 16), (9, 127), (3, 128), (40_000, 3)]


@pytest.mark.parametrize("shape", SHORT_SHAPES)
def test_short_rows_against_reference(shape):
    gen = torch.Generator().manual_seed(8)
    x, s, z = (torch.randn(shape, generator=gen) for _ in range(3))
    a, b, c = (coef(shape[0], False, gen) for _ in range(3))
    ids = torch.randint(0, 2**32, (shape[0],), generator=gen)
    xm = torch.full_like(x, float("nan"))
    assert_close_to_ref(native_step(x, s, a, b, c, ids=ids, x_mean=xm), x, s, a, b, c, got_xm=xm, atol=2e-6,
                        sample_ids=ids)
    assert_close_to_ref(native_step(x, s, a, b, c, noise=z), x, s, a, b, c, noise=z)
    sc = coef(shape[0], True, gen)  # broadcast coefficients
    assert_close_to_ref(native_step(x, s, sc, b, sc, ids=ids), x, s, sc, b, sc, atol=2e-6, sample_ids=ids)
    assert_close_to_ref(native_step(x, s, a, sc, None), x, s, a, sc, None)
    got = OP.step_sq_norms(s, None, i64(SEED), ids, i64(DRAW))
    torch.testing.assert_close(got, ref.step_sq_norms(s, seed=SEED, sample_ids=ids, draw=DRAW), rtol=1e-6, atol=0)
    got = OP.step_sq_norms(s, z, i64(SEED), ids, i64(DRAW))
    torch.testing.assert_close(got, ref.step_sq_norms(s, noise=z, seed=SEED, sample_ids=ids, draw=DRAW), rtol=1e-12,
                               atol=0)
    y = torch.full(shape, float("nan"))
    OP.fsn1_normal_(y, i64(SEED), ids, i64(DRAW))
    want = fsn1.fsn1_normal_like(torch.empty(shape, dtype=torch.float64), SEED, DRAW, ids)
    torch.testing.assert_close(y.double(), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 16, 63, 127, 128])
def test_short_rows_bit_identical_to_long_row_prefix(dtype, m):
    """The normals and the element math depend on (sample, j) only: a short row (lanes across samples) must equal
    the first m elements of a long row (the per-row path), bit for bit, for every output."""
    gen = torch.Generator().manual_seed(9)
    B, wide = 37, 300
    x, s, z, data = (torch.randn(B, wide, generator=gen).to(dtype) for _ in range(4))
    mask = (torch.rand(B, wide, generator=gen) < 0.5).to(dtype)
    a, b, c, da, dc = (coef(B, False, gen) for _ in range(5))
    ids = torch.randint(0, 2**32, (B,), generator=gen)
    short = lambda t: t[:, :m].contiguous()  # noqa: E731
    for kw in [dict(), dict(noise=z), dict(mask=mask, data=data, da=da, dc=dc)]:
        for cc in (c, None):
            xm_w, xm_s = torch.empty_like(x), torch.empty_like(short(x))
            kw_w = {k: v for k, v in kw.items()}
            kw_s = {k: (short(v) if k in ("noise", "mask", "data") else v) for k, v in kw.items()}
            out_w = native_step(x, s, a, b, cc, ids=ids, x_mean=xm_w, **kw_w)
            out_s = native_step(short(x), short(s), a, b, cc, ids=ids, x_mean=xm_s, **kw_s)
            assert torch.equal(short(out_w).view(torch.uint8), out_s.view(torch.uint8)), (kw.keys(), cc is None)
            assert torch.equal(short(xm_w).view(torch.uint8), xm_s.view(torch.uint8))
    if dtype in (torch.float32, torch.float64):
        y_w, y_s = torch.empty(B, wide, dtype=dtype), torch.empty(B, m, dtype=dtype)
        OP.fsn1_normal_(y_w, i64(SEED), ids, i64(DRAW))
        OP.fsn1_normal_(y_s, i64(SEED), ids, i64(DRAW))
        assert torch.equal(short(y_w), y_s)


_SHORT_PROBE = r"""
import hashlib, sys, torch
from fastsde import _native
torch.set_num_threads(int(sys.argv[1]))
op = torch.ops.fastsde
gen = torch.Generator().manual_seed(0)
h = hashlib.sha256()
for shape in [(1024, 2), (333, 3), (64, 5), (7, 1), (9, 127), (3, 128), (40000, 3)]:
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x, s, m, d = (torch.randn(shape, generator=gen).to(dtype) for _ in range(4))
        a, b, c = (torch.rand(shape[0], generator=gen, dtype=torch.float64) for _ in range(3))
        ids = torch.randint(0, 2**32, (shape[0],), generator=gen)
        iv = torch.int16 if dtype != torch.float32 else torch.int32
        out, xm = torch.empty_like(x), torch.empty_like(x)
        op.affine_step_(out, x, s, a, b, c, None, -1, ids, 2**32 + 3, xm, m, d, a, c, 11)
        h.update(out.view(iv).numpy().tobytes()); h.update(xm.view(iv).numpy().tobytes())
        op.affine_step_(out, x, s, a, b[:1], None, None, -1, ids, 5, None, None, None, None, None, 0)
        h.update(out.view(iv).numpy().tobytes())
        op.affine_step_(out, x, s, a, b, c, m, -1, ids, 5, xm, None, None, None, None, 0)
        h.update(out.view(iv).numpy().tobytes()); h.update(xm.view(iv).numpy().tobytes())
        h.update(op.step_sq_norms(s, None, -1, ids, 5).numpy().tobytes())
        h.update(op.step_sq_norms(s, m, -1, ids, 5).numpy().tobytes())
    x, z = (torch.randn(shape, generator=gen) for _ in range(2))
    s = torch.randn(shape, generator=gen).to(torch.bfloat16)  # a half-precision score beside a float32 state
    out = torch.empty_like(x)
    op.affine_step_(out, x, s, a, b, c, None, -1, ids, 5, None, None, None, None, None, 0)
    h.update(out.numpy().tobytes())
    h.update(op.step_sq_norms(s, None, -1, ids, 5).numpy().tobytes())
    y = torch.empty(shape)
    op.fsn1_normal_(y, -1, ids, 4)
    h.update(y.numpy().tobytes())
print(_native.build_info()["simd_runtime"], h.hexdigest())
"""


def test_short_rows_simd_levels_and_threads_bit_identical():
    """Every level (against FASTSDE_SIMD=scalar) and thread count gives the same bits on short rows."""
    results = {}
    for level in _native.build_info()["simd_supported"]:
        for threads in (1, 2):
            env = {**os.environ, "FASTSDE_SIMD": level}
            proc = subprocess.run([sys.executable, "-c", _SHORT_PROBE, str(threads)], env=env, capture_output=True,
                                  text=True, check=True)
            used, digest = proc.stdout.split()
            assert used == level
            results[(level, threads)] = digest
    assert "scalar" in {lv for lv, _ in results}
    assert len(set(results.values())) == 1, results
