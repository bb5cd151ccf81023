"""fastsde.ops.attn_block on every backend, and the Triton attention core, against fastsde.reference.attention.

The oracle is the reference in float64. Tolerances come from measured error: a fast backend may be off the oracle
by at most twice what the plain float32 eager forward (score_sde's block, written out below) is off it, plus ATOL.
Triton runs interpreted on CPU tensors (TRITON_INTERPRET=1 from tests/conftest.py), so its shapes stay small.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from fastsde.ops import attn_block
from fastsde.ops.dispatch import backend_available
from fastsde.reference import attention as ref

# Summation-order noise of float32 GEMMs whose exact result is ~0 (e.g. a zero residual term): 1e-6 absolute.
ATOL = 1e-6
CPU = torch.device("cpu")
BACKENDS = [b for b in ("native", "triton") if backend_available(b, CPU)[0]]
SHAPES = [
    (2, 32, 1, 1),  # one token: softmax over one key, attention returns v
    (2, 32, 7, 9),  # 63 tokens: odd, divides no block size
    (1, 32, 16, 16),  # 256 tokens: the CIFAR-10 attention resolution, with few channels
]


def _params(C, dtype=torch.float32):
    """Block weights of realistic scale (never zeros: score_sde zero-initialises W_out, which would hide it)."""
    return dict(gn_weight=1 + 0.3 * torch.randn(C, dtype=dtype), gn_bias=0.3 * torch.randn(C, dtype=dtype),
                qkv_weight=torch.randn(3 * C, C, dtype=dtype) / math.sqrt(C),
                qkv_bias=0.3 * torch.randn(3 * C, dtype=dtype),
                out_weight=torch.randn(C, C, dtype=dtype) / math.sqrt(C), out_bias=0.3 * torch.randn(C, dtype=dtype))


def _eager32(x, p, num_groups, num_heads, skip_rescale):
    """The block as plain float32 torch code (GN module, separate q/k/v projections, softmax attention): the
    baseline whose error against the float64 oracle sets the tolerance."""
    B, C, H, W = x.shape
    d, L = C // num_heads, H * W
    h = F.group_norm(x.float(), num_groups, p["gn_weight"].float(), p["gn_bias"].float(), 1e-6).reshape(B, C, L)
    q, k, v = (torch.einsum("oc,bcl->bol", w.float(), h) + b.float()[None, :, None]
               for w, b in zip(p["qkv_weight"].chunk(3), p["qkv_bias"].chunk(3)))
    q, k, v = (t.reshape(B, num_heads, d, L) for t in (q, k, v))
    w = torch.softmax(torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(d), dim=-1)
    a = torch.einsum("bhij,bhcj->bhci", w, v).reshape(B, C, L)
    y = x.float() + (torch.einsum("oc,bcl->bol", p["out_weight"].float(), a)
                     + p["out_bias"].float()[None, :, None]).reshape(B, C, H, W)
    return y / math.sqrt(2.0) if skip_rescale else y


def _oracle(x, p, num_groups, num_heads, skip_rescale):
    return ref.attn_block(x.double(), **{k: v.double() for k, v in p.items()}, num_groups=num_groups,
                          num_heads=num_heads, skip_rescale=skip_rescale)


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.parametrize("skip_rescale", [False, True])
def test_attn_block_float32(backend, shape, num_heads, skip_rescale):
    B, C, H, W = shape
    x, p = 2 * torch.randn(shape) + 0.5, _params(C)
    y = attn_block(x, **p, num_groups=8, num_heads=num_heads, skip_rescale=skip_rescale, backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype
    want = _oracle(x, p, 8, num_heads, skip_rescale)
    floor = _err(_eager32(x, p, 8, num_heads, skip_rescale), want)
    assert _err(y, want) <= 2 * floor + ATOL, (_err(y, want), floor)


@pytest.mark.parametrize("shape", SHAPES[:2])
@pytest.mark.parametrize("num_heads", [1, 4])
def test_attn_block_native_float64_matches_reference(shape, num_heads):
    if "native" not in BACKENDS:
        pytest.skip("native backend unavailable")
    x, p = torch.randn(shape, dtype=torch.float64), _params(shape[1], torch.float64)
    y = attn_block(x, **p, num_groups=8, num_heads=num_heads, skip_rescale=True, backend="native")
    assert y.dtype == torch.float64
    assert _err(y, _oracle(x, p, 8, num_heads, True)) <= 1e-12  # float64 all the way: only summation order


@pytest.mark.parametrize("num_heads", [1, 4])
def test_attn_block_native_bfloat16(num_heads):
    """bf16 in and out, float32 inside: the error is the output's own rounding (twice it, for ties)."""
    if "native" not in BACKENDS:
        pytest.skip("native backend unavailable")
    x, p = torch.randn(2, 32, 7, 9).bfloat16(), {k: v.bfloat16() for k, v in _params(32).items()}
    y = attn_block(x, **p, num_groups=8, num_heads=num_heads, skip_rescale=True, backend="native")
    assert y.dtype == torch.bfloat16
    want = _oracle(x, p, 8, num_heads, True)
    assert _err(y, want) <= 2 * _err(want.bfloat16(), want) + ATOL


def test_attn_block_channels_last_input():
    """A channels-last x gives the same numbers (the views reshape it; the result is NCHW-shaped)."""
    x, p = torch.randn(2, 32, 7, 9), _params(32)
    for backend in BACKENDS:
        y = attn_block(x.to(memory_format=torch.channels_last), **p, num_groups=8, backend=backend)
        assert _err(y, attn_block(x, **p, num_groups=8, backend=backend)) <= ATOL


@pytest.mark.parametrize("bad, message", [
    (dict(x=torch.randn(2, 32, 9)), r"x must be a \(B, C, H, W\) tensor"),
    (dict(qkv_weight=torch.randn(32, 32)), r"qkv_weight must have shape \(96, 32\)"),
    (dict(out_bias=torch.randn(31)), r"out_bias must have shape \(32,\)"),
    (dict(num_heads=3), r"num_heads \(3\) must divide the channels \(32\)"),
    (dict(num_groups=5), r"num_groups \(5\) must divide the channels \(32\)"),
    (dict(backend="cuda"), r"backend must be one of"),
])
def test_attn_block_errors_name_the_argument(bad, message):
    args = dict(x=torch.randn(2, 32, 4, 4), **_params(32), num_groups=8)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        attn_block(**args)


# ---------------------------------------------------------------------------------------------------------------
# Triton: the attention core and the block's dtype contract (interpreted)

triton_only = pytest.mark.skipif("triton" not in BACKENDS or os.environ.get("TRITON_INTERPRET") != "1",
                                 reason="the Triton tests run interpreted on CPU tensors: TRITON_INTERPRET=1")


@triton_only
@pytest.mark.parametrize("z, lq, lk, d", [
    (3, 16, 16, 8),  # one block each way, d below the 16-wide dot: padded head dim
    (2, 37, 40, 32),  # Lq != Lk, neither a block multiple: masked queries and keys
    (1, 1, 23, 24),  # one query; d not a power of two
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_core(z, lq, lk, d, dtype):
    from fastsde.kernels.attention import attention

    q, k, v = (2 * torch.randn(z, n, d) for n in (lq, lk, lk))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    out = torch.full((z, lq, d), float("nan"), dtype=dtype)
    attention(q, k, v, out=out)
    want = ref.attention(q.double(), k.double(), v.double())
    # baseline: float32 softmax, probabilities rounded to the input dtype for P V as the kernel does, output rounded
    p = torch.softmax(q.float() @ k.float().mT / math.sqrt(d), dim=-1)
    base = (p.to(dtype).float() @ v.float()).to(dtype)
    assert _err(out, want) <= 2 * _err(base, want) + ATOL, (_err(out, want), _err(base, want))


@triton_only
def test_attention_core_strided_views():
    """q, k, v and out as channel-major views (what attn_block passes): strides (3 d L, 1, L)."""
    from fastsde.kernels.attention import attention

    qkv = torch.randn(4, 3 * 16, 21)  # (B heads, 3 d, L)
    q, k, v = (t.mT for t in qkv.split(16, dim=1))
    out = torch.full((4, 16, 21), float("nan")).mT
    attention(q, k, v, out=out)
    want = ref.attention(q.double(), k.double(), v.double())
    assert _err(out, want) <= 1e-5


@triton_only
def test_attention_core_errors():
    from fastsde.kernels.attention import attention

    q = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"must agree"):
        attention(q, torch.randn(2, 6, 8), torch.randn(2, 7, 8))
    with pytest.raises(TypeError, match=r"float32, float16 or bfloat16"):
        attention(q.double(), q.double(), q.double())


@triton_only
def test_attn_block_triton_rejects_float64():
    x, p = torch.randn(1, 32, 4, 4, dtype=torch.float64), _params(32, torch.float64)
    with pytest.raises(TypeError, match=r"float32, float16 or bfloat16 x.*backend='native'"):
        attn_block(x, **p, num_groups=8, backend="triton")


@pytest.mark.parametrize("num_heads", [1, 4])
def test_attn_block_native_channels_last_keeps_layout(num_heads):
    """The native block on a channels-last x returns channels-last numbers equal to the NCHW path's."""
    x, p = torch.randn(3, 32, 7, 9), _params(32)
    xcl = x.to(memory_format=torch.channels_last)
    y = attn_block(xcl, **p, num_groups=8, num_heads=num_heads, skip_rescale=True, backend="native")
    if num_heads == 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    want = _oracle(x, p, 8, num_heads, True)
    assert _err(y, want) <= 2 * _err(_eager32(x, p, 8, num_heads, True), want) + ATOL


class _ScoreSdeEMA:
    """score_sde's ExponentialMovingAverage swap pattern (models/ema.py): store / copy_to / restore through
    `param.data.copy_`, which does not bump the parameters' version counters."""

    def __init__(self, params, decay=0.9):
        self.shadow = [p.clone().detach() for p in params]
        self.decay = decay

    def update(self, params):
        with torch.no_grad():
            for s, p in zip(self.shadow, params):
                s.sub_((1 - self.decay) * (s - p))

    def store(self, params):
        self.backup = [p.clone() for p in params]

    def copy_to(self, params):
        for s, p in zip(self.shadow, params):
            p.data.copy_(s.data)

    def restore(self, params):
        for c, p in zip(self.backup, params):
            p.data.copy_(c.data)


@pytest.mark.parametrize("change", ["ema_copy_to", "data_assign", "load_state_dict", "optimizer_step", "to_double"])
def test_attn_block_module_sees_every_parameter_change(change):
    """After a no-grad forward, any change of the parameters is seen by the next forward (there was a folded-weight
    cache keyed on the version counter that missed score_sde's EMA swap and returned outputs off by ~1)."""
    from fastsde.nn import AttnBlock

    torch.manual_seed(0)
    blk = AttnBlock(32, init_scale=1.0, num_groups=8, backend="native")
    x = torch.randn(2, 32, 4, 4)
    params = list(blk.parameters())
    with torch.no_grad():
        blk(x)  # any cache would be filled here
        if change == "ema_copy_to":
            ema = _ScoreSdeEMA(params)
            for p in params:
                p.add_(torch.randn_like(p))
            ema.store(params)
            ema.copy_to(params)
        elif change == "data_assign":
            blk.qkv_weight.data = torch.randn_like(blk.qkv_weight)
        elif change == "load_state_dict":
            blk.load_state_dict({k: torch.randn_like(v) for k, v in blk.state_dict().items()})
        elif change == "to_double":
            blk.double()
            x = x.double()
    if change == "optimizer_step":
        opt = torch.optim.SGD(params, lr=0.5)
        blk(x).square().sum().backward()
        opt.step()
    with torch.no_grad():
        got = blk(x)
        p = {"gn_weight": blk.GroupNorm_0.weight, "gn_bias": blk.GroupNorm_0.bias, "qkv_weight": blk.qkv_weight,
             "qkv_bias": blk.qkv_bias, "out_weight": blk.out_weight, "out_bias": blk.out_bias}
        want = _oracle(x.double(), {k: v.double() for k, v in p.items()}, 8, 1, True)
        tol = 2 * _err(_eager32(x.float(), {k: v.float() for k, v in p.items()}, 8, 1, True), want) + ATOL
        assert _err(got, want) <= tol
        if change == "ema_copy_to":
            ema.restore(params)  # and back: the restored weights are seen too
            want = _oracle(x.double(), {k: v.double() for k, v in p.items()}, 8, 1, True)
            tol = 2 * _err(_eager32(x.float(), {k: v.float() for k, v in p.items()}, 8, 1, True), want) + ATOL
            assert _err(blk(x), want) <= tol
