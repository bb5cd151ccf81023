"""Property-based fuzz of every public op (hypothesis): shapes (zero sizes included), strides and storage offsets,
dtypes (integer, complex and bool included), NaN/Inf values, wrong companions (shapes, dtypes, aliasing). Each case
runs on every backend that can run here (reference, native, Triton interpreted at small sizes) and the backends must
agree: the same exception type and message, or results equal to the reference within float tolerance (NaN where
the reference has NaN). Deterministic (derandomized) so CI is reproducible; the counts go to docs/reliability.md.
"""
import collections
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastsde import ops  # noqa: E402
from fastsde.ops import dispatch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TRITON = os.environ.get("TRITON_INTERPRET") == "1" and dispatch.backend_available("triton", torch.device("cpu"))[0]
TRITON_MAX_NUMEL = 64  # the interpreter runs Python per program: keep its cases small and few
TRITON_EVERY = 8
STATS = collections.Counter()  # outcome counts per op, printed by test_zz_report
FUZZ = settings(max_examples=int(os.environ.get("FASTSDE_FUZZ_EXAMPLES", "500")), deadline=None, derandomize=True,
                database=None, suppress_health_check=list(HealthCheck), print_blob=True)

DTYPES = [torch.float32] * 6 + [torch.float64] * 2 + [torch.float16, torch.bfloat16, torch.int32, torch.int64,
                                                      torch.complex64, torch.bool]
ERRORS = (TypeError, ValueError, RuntimeError, IndexError)


def _tol(dtype):
    return {torch.float16: 2e-2, torch.bfloat16: 8e-2, torch.float64: 1e-9}.get(dtype, 2e-4)


@st.composite
def tensors(draw, shape=None, dtype=None, special=True, min_rank=1, max_rank=4):
    """A tensor of `shape` (else drawn, zero sizes included) with a drawn layout: contiguous, transposed, a strided
    slice or a storage offset; values N(0, 1) with occasional NaN/inf/huge entries."""
    if shape is None:
        rank = draw(st.integers(min_rank, max_rank))
        shape = tuple(draw(st.integers(0, 5)) for _ in range(rank))
    dtype = dtype or draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(["contiguous"] * 3 + ["offset", "strided", "transposed"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    big = list(shape)
    if layout == "strided" and big:
        big[-1] = big[-1] * 2
    base = torch.randn(int(torch.tensor(big).prod()) + (1 if layout == "offset" else 0), generator=g,
                       dtype=torch.float64)
    if special and base.numel() and draw(st.booleans()) and draw(st.booleans()):
        idx = draw(st.integers(0, base.numel() - 1))
        base[idx] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, 0.0]))
    if dtype.is_complex:
        base = base.to(dtype) * (1 + 1j)
    elif dtype == torch.bool:
        base = base > 0
    elif not dtype.is_floating_point:
        base = base.nan_to_num(0, 0, 0).clamp(-100, 100).to(dtype)
    else:
        base = base.to(dtype)
    if layout == "offset":
        t = base[1:].view(shape)
    elif layout == "strided" and shape:
        t = base.view(big)[..., ::2]
    elif layout == "transposed" and len(shape) >= 2:
        t = base.view(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)
    else:
        t = base.view(shape)
    return t


def _outcome(fn):
    try:
        return ("ok", fn())
    except ERRORS as exc:
        return ("error", type(exc).__name__, str(exc))


def _same(op, outcomes: dict, dtype=None):
    """Assert the backends agree (tolerance of the compute dtype `dtype`, default the result's); count the case."""
    ref = outcomes["reference"]
    for name, got in outcomes.items():
        if ref[0] == "error" or got[0] == "error":
            assert got[:2] == ref[:2] and got[2] == ref[2], f"{op}: {name} {got} vs reference {ref}"
            continue
        for a, b in zip(_flat(got[1]), _flat(ref[1])):
            assert a.shape == b.shape and a.dtype == b.dtype, f"{op}: {name} {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
            tol = _tol(dtype if dtype is not None and dtype.is_floating_point else a.dtype)
            scale = float(b.double().nan_to_num(0, 0, 0).abs().amax()) if b.numel() else 0.0
            torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol * (1 + scale), equal_nan=True,
                                       msg=lambda m: f"{op}: {name} vs reference: {m}")
    STATS[(op, "clear error" if ref[0] == "error" else "equal result")] += 1


def _flat(v):
    return [t for t in v if t is not None] if isinstance(v, (list, tuple)) else [v]


def _backends(op, *tensors_, data=None):
    """reference, native, and Triton for small cases (one in TRITON_EVERY when `data` draws: the interpreter runs
    Python per program, ~100x slower than the others)."""
    names = ["reference"]
    if dispatch.backend_available("native", torch.device("cpu"))[0] and ("native" in [b for (o, b) in dispatch._TABLE
                                                                                       if o == op]):
        names.append("native")
    small = all(not isinstance(t, torch.Tensor) or t.numel() <= TRITON_MAX_NUMEL for t in tensors_)
    if TRITON and small and (op, "triton") in dispatch._TABLE and (data is None or
                                                                    data.draw(st.integers(0, TRITON_EVERY - 1)) == 0):
        names.append("triton")
    return names


def _clone(v):
    return v.clone() if isinstance(v, torch.Tensor) else v


coefs = st.one_of(st.floats(-2, 2), st.sampled_from(["vec", "one", "bad", "nan"]))


def _coef(spec, batch, g):
    if not isinstance(spec, str):
        return spec
    if spec == "vec":
        return torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1
    if spec == "one":
        return torch.tensor([0.5], dtype=torch.float64)
    if spec == "nan":
        return float("nan")
    return torch.ones(batch + 2, dtype=torch.float64)  # wrong shape


@FUZZ
@given(x=tensors(), data=st.data())
def test_fuzz_affine_step(x, data):
    batch = x.shape[0] if x.dim() else 0
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    score = data.draw(st.one_of(st.just(None), tensors(shape=tuple(x.shape), dtype=x.dtype if x.dtype in
                                                       (torch.float32,) else None)))
    score = torch.randn(x.shape, generator=g).to(x.dtype) if score is None and x.dtype.is_floating_point else score
    if score is None:
        score = torch.zeros(x.shape, dtype=torch.float32)
    a, b = _coef(data.draw(coefs), batch, g), _coef(data.draw(coefs), batch, g)
    c = data.draw(st.one_of(st.none(), coefs))
    c = None if c is None else _coef(c, batch, g)
    seed = data.draw(st.sampled_from([0, 7, 2**64 - 1, -1, 3.5]))
    draw = data.draw(st.integers(0, 3))
    mode = data.draw(st.sampled_from(["plain", "x_mean", "inplace", "alias", "noise"]))

    def run(backend):
        xx, ss = _clone(x), _clone(score)
        kw = dict(seed=seed, draw=draw, backend=backend)
        if mode == "x_mean":
            kw["x_mean_out"] = torch.full_like(xx, float("nan"))
        if mode == "inplace":
            kw["out"] = xx
        if mode == "alias":
            kw["out"] = kw["x_mean_out"] = torch.empty_like(xx)
        if mode == "noise":
            kw["noise"] = torch.randn(xx.shape, generator=torch.Generator().manual_seed(3)).to(xx.dtype) \
                if xx.dtype.is_floating_point else xx
        out = ops.affine_step(xx, ss, a, b, c, **kw)
        return [out, kw.get("x_mean_out")]

    _same("affine_step", {name: _outcome(lambda n=name: run(n)) for name in _backends("affine_step", x, data=data)},
          x.dtype)


@FUZZ
@given(x=tensors(), data=st.data())
def test_fuzz_step_sq_norms_and_langevin(x, data):
    seed = data.draw(st.sampled_from([0, 5, 2**63]))
    snr = data.draw(st.sampled_from([0.16, 0.0, float("nan")]))
    alpha = data.draw(st.sampled_from([1.0, 0.5]))
    per_sample = data.draw(st.booleans())
    score = data.draw(tensors(shape=tuple(x.shape), dtype=x.dtype)) if data.draw(st.booleans()) else x.clone()

    def norms(backend):
        return ops.step_sq_norms(_clone(score), seed=seed, draw=1, backend=backend)

    def langevin(backend):
        return ops.langevin_step(_clone(x), _clone(score), snr, alpha, seed=seed, draw=2,
                                 per_sample_norms=per_sample, backend=backend)

    names = _backends("step_sq_norms", x, data=data)
    _same("step_sq_norms", {n: _outcome(lambda n=n: norms(n)) for n in names}, x.dtype)
    _same("langevin_step", {n: _outcome(lambda n=n: langevin(n)) for n in names}, x.dtype)


@FUZZ
@given(out=tensors(special=False, min_rank=1, max_rank=3), data=st.data())
def test_fuzz_fsn1_normal(out, data):
    seed = data.draw(st.sampled_from([0, 1, 2**64 - 1] * 3 + [2**64, -1, 1.5, "1"]))
    draw = data.draw(st.sampled_from([0, 9, 2**64 - 1] * 3 + [-2]))
    batch = out.shape[0] if out.dim() else 0
    ids = data.draw(st.sampled_from(["arange"] * 6 + ["big", "list", "negative", "float", "short"]))
    sample_ids = {"arange": torch.arange(batch), "big": torch.arange(batch) + 2**32 - batch,
                  "negative": torch.arange(batch) - 1, "float": torch.arange(batch, dtype=torch.float32),
                  "short": torch.arange(max(batch - 1, 0)), "list": list(range(batch))}[ids]

    def run(backend):
        o = torch.full_like(out, float("nan")) if out.dtype.is_floating_point else out.clone()
        return ops.fsn1_normal(o, seed, sample_ids, draw, backend=backend)

    _same("fsn1_normal", {n: _outcome(lambda n=n: run(n)) for n in _backends("fsn1_normal")})


@FUZZ
@given(data=st.data())
def test_fuzz_group_norm(data):
    n, c = data.draw(st.integers(0, 3)), data.draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8]))
    spatial = tuple(data.draw(st.integers(0, 4)) for _ in range(data.draw(st.integers(0, 2))))
    dtype = data.draw(st.sampled_from(DTYPES))
    x = data.draw(tensors(shape=(n, c, *spatial), dtype=dtype))
    if x.dim() == 4 and data.draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    groups = data.draw(st.sampled_from([1, 2] * 4 + [3, 0, -1, 2.0]))
    g = torch.Generator().manual_seed(0)
    vec = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    weight = data.draw(st.sampled_from([None, "ok", "bad"]))
    weight = None if weight is None else vec(c) if weight == "ok" else vec(c + 1)
    emb = vec(n, c) if data.draw(st.booleans()) else None
    scale = vec(n, c) if data.draw(st.booleans()) else None
    act = data.draw(st.sampled_from([None, "silu"] * 3 + ["relu"]))
    eps = data.draw(st.sampled_from([1e-6] * 6 + [0.0, -1.0, float("nan")]))
    to = (lambda t: t if t is None else t.to(dtype)) if dtype.is_floating_point else (lambda t: t)

    def run(backend):
        return ops.group_norm(_clone(x), groups, to(weight), None, eps, scale=to(scale), emb_add=to(emb), act=act,
                              backend=backend)

    _same("group_norm", {b: _outcome(lambda b=b: run(b)) for b in _backends("group_norm", x, data=data)}, x.dtype)


@settings(FUZZ, max_examples=max(FUZZ.max_examples // 3, 20))
@given(data=st.data())
def test_fuzz_attn_block(data):
    b, c = data.draw(st.integers(0, 2)), data.draw(st.sampled_from([2, 4, 8]))
    h, w = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from(DTYPES))
    x = data.draw(tensors(shape=(b, c, h, w), dtype=dtype))
    g = torch.Generator().manual_seed(1)
    r = lambda *s: (torch.randn(*s, generator=g) / max(s[-1], 1)).to(dtype if dtype.is_floating_point  # noqa: E731
                                                                     else torch.float32)
    params = [r(c), r(c), r(3 * c, c), r(3 * c), r(c, c), r(c)]
    if data.draw(st.integers(0, 5)) == 0:
        params[data.draw(st.integers(0, 5))] = r(c + 1)
    groups = data.draw(st.sampled_from([1, 2] * 4 + [0, 3]))
    heads = data.draw(st.sampled_from([1, 2] * 4 + [0, 3]))
    skip = data.draw(st.booleans())

    def run(backend):
        return ops.attn_block(_clone(x), *params, num_groups=groups, num_heads=heads, skip_rescale=skip,
                              backend=backend)

    _same("attn_block", {n: _outcome(lambda n=n: run(n)) for n in _backends("attn_block", x, data=data)}, x.dtype)


@FUZZ
@given(x=tensors(), data=st.data())
def test_fuzz_affine_combine_step(x, data):
    k = data.draw(st.integers(0, 4))
    g = torch.Generator().manual_seed(2)
    like = (lambda: torch.randn(x.shape, generator=g).to(x.dtype)) if x.dtype.is_floating_point else (lambda: x)
    outputs = [like() for _ in range(k)]
    b = [data.draw(st.floats(-1, 1)) for _ in range(data.draw(st.sampled_from([k, k, k + 1])))]
    c = data.draw(st.sampled_from([None, 0.3]))
    in_place = data.draw(st.booleans())

    def run(backend):
        xx = _clone(x)
        return ops.affine_combine_step(xx, [_clone(o) for o in outputs], 0.9, b, c, seed=4, draw=1,
                                       out=xx if in_place else None, backend=backend)

    _same("affine_combine_step",
          {n: _outcome(lambda n=n: run(n)) for n in _backends("affine_combine_step", x, data=data)}, x.dtype)


def test_zz_report(capsys):
    """Prints the outcome counts of the suite (docs/reliability.md); runs last by name."""
    with capsys.disabled():
        total = sum(STATS.values())
        print(f"\nfuzz_ops: {total} cases, "
              + ", ".join(f"{op} {kind}: {n}" for (op, kind), n in sorted(STATS.items())))
