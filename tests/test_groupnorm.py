"""fastsde.ops.group_norm on every backend against the float64 reference (fastsde/reference/groupnorm.py).

Tolerance: err(fast, ref64) <= 2 err(eager32, ref64) + atol, with eager32 = torch.nn.functional.group_norm and the
extra terms in plain float32 torch (half/bfloat16: the same in float32, rounded to the input dtype once), and err
the max abs difference. Data is offset (x = -2.3 + 0.5 randn): a float32 E[x^2] - E[x]^2 kernel fails the bound
(checked below with such a kernel written in torch), a two-pass or Welford one passes.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fastsde import _native
from fastsde.ops import groupnorm as gn_ops
from fastsde.ops.dispatch import backend_available
from fastsde.reference import groupnorm as ref

# atol: a few units of the dtype's rounding at the output's magnitude (max-abs errors of small tensors are noisy)
_ULPS = 4


def _atol(dtype, r64) -> float:
    return _ULPS * torch.finfo(dtype).eps / 2 * max(1.0, r64.abs().max().item())


def _native_has_op() -> bool:
    if not _native.available():
        return False
    try:
        torch.ops.fastsde.group_norm
    except (AttributeError, RuntimeError):
        return False
    return True


def _skip_unless(backend: str) -> None:
    ok, why = backend_available(backend, torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    if backend == "native" and not _native_has_op():
        pytest.skip("fastsde._C was built without group_norm")


BACKENDS = ("reference", "native", "triton")


def _eager32(x, G, w, b, eps, s, sh, e, act):
    """The eager float32 form (score_sde's modules), rounded once to x's dtype."""
    f = lambda t: None if t is None else t.float()  # noqa: E731
    h = x.float()
    nc = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    if e is not None:
        h = h + e.float().reshape(nc)
    h = F.group_norm(h, G, f(w), f(b), eps)
    if s is not None:
        h = h * (1 + s.float().reshape(nc))
    if sh is not None:
        h = h + sh.float().reshape(nc)
    if act == "silu":
        h = F.silu(h)
    return h.to(x.dtype)


def _one_pass32(x, G, w, b, eps, s, sh, e, act):
    """A deliberately wrong kernel: float32 statistics as E[x^2] - E[x]^2 (the bound must reject it)."""
    N, C = x.shape[:2]
    nc = (N, C) + (1,) * (x.dim() - 2)
    h = x.float() + (0 if e is None else e.float().reshape(nc))
    g = h.reshape(N, G, -1)
    mean = g.mean(dim=2, keepdim=True)
    var = (g * g).mean(dim=2, keepdim=True) - mean * mean
    h = ((g - mean) * torch.rsqrt(var.clamp_min(0) + eps)).reshape(h.shape)
    if w is not None:
        h = h * w.float().reshape(1, C, *nc[2:])
    if b is not None:
        h = h + b.float().reshape(1, C, *nc[2:])
    if s is not None:
        h = h * (1 + s.reshape(nc))
    if sh is not None:
        h = h + sh.reshape(nc)
    return (F.silu(h) if act == "silu" else h).to(x.dtype)


def _err(y, r64):
    return (y.double() - r64).abs().max().item()


def _inputs(shape, dtype, *, w=True, b=True, s=True, sh=True, e=True, offset=-2.3, spread=0.5):
    N, C = shape[:2]
    x = (offset + spread * torch.randn(shape, dtype=torch.float64)).to(dtype)
    vec = lambda on, *sz: (0.5 * torch.randn(*sz, dtype=torch.float64)).to(dtype) if on else None  # noqa: E731
    return x, vec(w, C), vec(b, C), vec(s, N, C), vec(sh, N, C), vec(e, N, C)


def _check(backend, x, G, w, b, s, sh, e, act, eps=1e-6):
    y = gn_ops.group_norm(x, G, w, b, eps, scale=s, shift=sh, emb_add=e, act=act, backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=ref.memory_format(x))
    r64 = ref.group_norm(x.double(), G, None if w is None else w.double(), None if b is None else b.double(), eps,
                         scale=s, shift=sh, emb_add=e, act=act)
    err, base = _err(y, r64), _err(_eager32(x, G, w, b, eps, s, sh, e, act), r64)
    assert torch.isfinite(y).all()
    assert err <= 2 * base + _atol(x.dtype, r64), f"{backend}: err {err:.3g} vs eager32 {base:.3g}"
    return y


# (shape, groups): why each is there
SHAPES = [
    ((2, 24, 7, 9), 8),  # 3 channels per group, 63 positions: nothing divides a block or a SIMD width
    ((3, 8, 1, 1), 4),  # H*W = 1: two elements per group
    ((2, 32, 64, 64), 8),  # 4 x 4096 = 16384 elements per group: more than one tile (Triton loops)
    ((1, 6, 5), 3),  # 3-D input (N, C, L)
    ((2, 64, 16, 16), 32),  # score_sde's 32 groups
]


LAYOUT_CASES = [(shape, G, layout) for shape, G in SHAPES for layout in ("nchw", "channels_last", "strided")
                if not (layout == "channels_last" and len(shape) != 4)]  # channels-last exists for 4-D only


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,G,layout", LAYOUT_CASES)
def test_matches_reference_fp32(backend, shape, G, layout):
    _skip_unless(backend)
    x, w, b, s, sh, e = _inputs(shape, torch.float32)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":  # a non-contiguous view: every other position of a wider tensor
        wide = torch.cat([x, x + 1], dim=-1)
        x = wide[..., ::2]
        assert not x.is_contiguous()
    _check(backend, x, G, w, b, s, sh, e, "silu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_reference_other_dtypes(backend, dtype, channels_last):
    _skip_unless(backend)
    x, w, b, s, sh, e = _inputs((2, 24, 7, 9), dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    _check(backend, x, 8, w, b, s, sh, e, "silu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_option_combination(backend):
    _skip_unless(backend)
    for w, b, s, sh, e, act in itertools.product([False, True], repeat=6):
        x, wv, bv, sv, shv, ev = _inputs((2, 12, 3, 5), torch.float32, w=w, b=b, s=s, sh=sh, e=e)
        _check(backend, x, 4, wv, bv, sv, shv, ev, "silu" if act else None)


@pytest.mark.parametrize("shape,G", [((2, 24, 7, 9), 8), ((2, 32, 64, 64), 8)])
def test_bound_rejects_one_pass_statistics(shape, G):
    """The tolerance is tight enough to catch float32 E[x^2] - E[x]^2 on the offset test data."""
    x, w, b, s, sh, e = _inputs(shape, torch.float32)
    r64 = ref.group_norm(x.double(), G, w.double(), b.double(), 1e-6, scale=s, shift=sh, emb_add=e, act="silu")
    base = _err(_eager32(x, G, w, b, 1e-6, s, sh, e, "silu"), r64)
    assert _err(_one_pass32(x, G, w, b, 1e-6, s, sh, e, "silu"), r64) > 2 * base + _atol(torch.float32, r64)
    for backend in BACKENDS:
        if backend_available(backend, x.device)[0] and (backend != "native" or _native_has_op()):
            _check(backend, x, G, w, b, s, sh, e, "silu")


def test_native_deterministic_across_threads():
    _skip_unless("native")
    threads = torch.get_num_threads()
    x, w, b, s, sh, e = _inputs((4, 64, 32, 32), torch.float32)
    for xx in (x, x.to(memory_format=torch.channels_last)):
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            try:
                outs.append(gn_ops.group_norm(xx, 16, w, b, scale=s, shift=sh, emb_add=e, act="silu",
                                              backend="native"))
            finally:
                torch.set_num_threads(threads)
        assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_is_overwritten(backend):
    _skip_unless(backend)
    x, w, b, s, sh, e = _inputs((2, 24, 7, 9), torch.float32)
    out = torch.full_like(x, float("nan"))  # poisoned
    y = gn_ops.group_norm(x, 8, w, b, scale=s, shift=sh, emb_add=e, act="silu", out=out, backend=backend)
    assert y is out and torch.isfinite(out).all()


def test_validation_names_the_argument():
    x = torch.randn(2, 24, 3, 3)
    with pytest.raises(ValueError, match="num_groups"):
        gn_ops.group_norm(x, 5)
    with pytest.raises(ValueError, match="weight"):
        gn_ops.group_norm(x, 8, torch.ones(12))
    with pytest.raises(ValueError, match="emb_add"):
        gn_ops.group_norm(x, 8, emb_add=torch.ones(24))
    with pytest.raises(ValueError, match="act"):
        gn_ops.group_norm(x, 8, act="relu")
    with pytest.raises(TypeError, match="x must be"):
        gn_ops.group_norm(x.int(), 8)


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_traces_under_torch_compile(backend):
    _skip_unless(backend)
    x, w, b, s, sh, e = _inputs((2, 8, 4, 4), torch.float32)
    fn = torch.compile(lambda x: gn_ops.group_norm(x, 4, w, b, emb_add=e, act="silu", backend=backend),
                       backend="eager", fullgraph=False)
    torch.testing.assert_close(fn(x), gn_ops.group_norm(x, 4, w, b, emb_add=e, act="silu", backend=backend))
