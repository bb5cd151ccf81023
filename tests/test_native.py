"""The native extension fastsde._C: it loads, and its fsn1_normal_ op reproduces the FSN1 reference stream."""
import json
import os
import pathlib
import warnings

import pytest
import torch

from fastsde import _native
from fastsde import random as fsn1
from fastsde.ops import fsn1_normal

VECTORS = json.loads((pathlib.Path(__file__).parent / "data" / "fsn1_vectors.json").read_text())["vectors"]

if not _native.available():
    if os.environ.get("CI") == "true":  # CI builds the extension: its absence is a failure there
        pytest.fail(f"fastsde._C failed to import in CI: {_native.unavailable_reason()}", pytrace=False)
    pytest.skip(f"fastsde._C unavailable: {_native.unavailable_reason()}", allow_module_level=True)

# Extremes of every id: the largest seed, a sample id past 2**31, a draw id past 2**32.
SEED, DRAW, SAMPLE_IDS = 2**64 - 1, 2**32 + 1, [0, 5, 2**31 + 3]
NUMEL = 1027  # 256 full Philox blocks + a partial one: the row tail is exercised


def test_build_info():
    info = _native.build_info()
    assert set(info) >= {"compiler", "openmp", "cuda", "simd"}
    assert isinstance(info["openmp"], bool) and isinstance(info["cuda"], bool)
    assert isinstance(info["simd"], list)
    assert hasattr(torch.ops.fastsde, "fsn1_normal_")


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_matches_reference(dtype, atol):
    ref = fsn1.fsn1_normal(SEED, SAMPLE_IDS, DRAW, NUMEL, dtype=torch.float64)
    out = torch.full((len(SAMPLE_IDS), NUMEL), float("nan"), dtype=dtype)  # poisoned: every element is written
    assert fsn1_normal(out, SEED, SAMPLE_IDS, DRAW, backend="native") is out
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=atol)


def test_auto_is_native_and_threads_do_not_matter():
    ids = torch.tensor(SAMPLE_IDS)
    a = fsn1_normal(torch.empty(3, 40_000), SEED, ids, DRAW)  # large enough for the OpenMP path
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = fsn1_normal(torch.empty(3, 40_000), SEED, ids, DRAW, backend="native")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :NUMEL], fsn1_normal(torch.empty(3, NUMEL), SEED, ids, DRAW, backend="native"))


def test_non_contiguous_out():
    out = torch.full((NUMEL, 3), float("nan")).t()
    fsn1_normal(out, SEED, SAMPLE_IDS, DRAW, backend="native")
    torch.testing.assert_close(out, fsn1_normal(torch.empty(3, NUMEL), SEED, SAMPLE_IDS, DRAW), rtol=0, atol=0)


# 20 known answers whose element index is small enough to materialize the row up to it, spread over the file.
SMALL = [v for v in VECTORS if v["element"] < 4096]
PICKED = SMALL[:: max(1, len(SMALL) // 20)][:20]


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_independent_vectors(dtype, atol):
    assert len(PICKED) == 20
    for v in PICKED:
        out = torch.full((1, v["element"] + 1), float("nan"), dtype=dtype)
        fsn1_normal(out, v["seed"], [v["sample"]], v["draw"], backend="native")
        assert abs(out[0, -1].item() - v["normal"]) <= atol, v


def test_zero_size_returns_at_once():
    for shape in [(0, 5), (3, 0)]:
        out = torch.empty(shape)
        assert fsn1_normal(out, 1, list(range(shape[0])), 2, backend="native") is out


@pytest.mark.parametrize(
    "out, ids, kwargs, error, match",
    [
        (torch.empty(2, 4, dtype=torch.float16), [0, 1], {}, TypeError,
         r"out must be float32 or float64, got torch.float16"),
        (torch.empty(2, 4, 3), [0, 1], {}, ValueError, r"out must be 2-D \(batch, numel\), got shape \(2, 4, 3\)"),
        (torch.empty(2, 4), [0, 1, 2], {}, ValueError, r"sample_ids must have shape \(2,\).*got \(3,\)"),
        (torch.empty(2, 4), [0.0, 1.0], {}, TypeError, r"sample_ids must be an integer tensor, got torch.float"),
        (torch.empty(2, 4), [0, 2**32], {}, ValueError, r"sample_ids must be in \[0, 2\*\*32\)"),
        (torch.empty(2, 4), [0, 1], {"seed": -1}, ValueError, r"seed must be in \[0, 2\*\*64\), got -1"),
        (torch.empty(2, 4), [0, 1], {"draw": 2**64}, ValueError, r"draw must be in \[0, 2\*\*64\)"),
        (torch.empty(2, 4), [0, 1], {"backend": "cuda"}, ValueError, r"backend must be one of auto, native, reference"),
    ],
)
def test_validation(out, ids, kwargs, error, match):
    args = {"seed": 0, "draw": 0, "backend": "native", **kwargs}
    with pytest.raises(error, match=match):
        fsn1_normal(out, args["seed"], ids, args["draw"], backend=args["backend"])


def test_cpp_checks():
    # The op repeats the checks for callers that bypass fastsde.ops.
    op = torch.ops.fastsde.fsn1_normal_
    with pytest.raises(RuntimeError, match="out must be float32 or float64"):
        op(torch.empty(2, 4, dtype=torch.int32), 0, torch.tensor([0, 1]), 0)
    with pytest.raises(RuntimeError, match="sample_ids must have shape"):
        op(torch.empty(2, 4), 0, torch.tensor([0]), 0)
    with pytest.raises(RuntimeError, match="sample_ids must be int64"):
        op(torch.empty(2, 4), 0, torch.tensor([0, 1], dtype=torch.int32), 0)
    with pytest.raises(RuntimeError, match=r"sample_ids must be in \[0, 2\^32\)"):
        op(torch.empty(2, 4), 0, torch.tensor([0, -1]), 0)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(torch.empty(4, 2).t(), 0, torch.tensor([0, 1]), 0)


def test_meta_tracing():
    # The Meta implementation lets torch.compile / fake tensors trace the op without data.
    out = torch.empty(3, 7, device="meta")
    torch.ops.fastsde.fsn1_normal_(out, 0, torch.empty(3, dtype=torch.int64, device="meta"), 0)


def test_reference_backend_agrees():
    native = fsn1_normal(torch.empty(3, NUMEL), SEED, SAMPLE_IDS, DRAW, backend="native")
    reference = fsn1_normal(torch.empty(3, NUMEL), SEED, SAMPLE_IDS, DRAW, backend="reference")
    torch.testing.assert_close(native, reference, rtol=0, atol=2e-6)


def test_auto_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setattr(_native, "_C", None)
    monkeypatch.setattr(_native, "_REASON", "ImportError: simulated")
    monkeypatch.setattr(_native, "_warned", False)
    with pytest.warns(RuntimeWarning, match="native backend unavailable.*simulated"):
        fsn1_normal(torch.empty(1, 8), 0, [0], 0)
    with pytest.raises(RuntimeError, match="simulated"):
        fsn1_normal(torch.empty(1, 8), 0, [0], 0, backend="native")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second fallback stays silent
        fsn1_normal(torch.empty(1, 8), 0, [0], 0)
