"""Backward of the fused ops (fastsde.ops.group_norm, attn_block) and of the fused U-Nets built from them.

- torch.autograd.gradcheck on small float64 inputs for every backend (reference, native, Triton interpreter), both
  layouts, with and without the SiLU and the time-embedding vectors;
- float32 gradients of the native kernels at every SIMD level (subprocesses, FASTSDE_SIMD) against the float64
  reference's, shapes that leave lane and row tails;
- the VJP of the whole fused U-Net (the digits small16 preset; score_sde's DDPM++ and NCSN++ builds) with a random
  cotangent against the same model's reference layers: input and parameter gradients, the fused build's error against
  the float64 truth bounded by the plain float32 build's;
- hostile inputs: non-contiguous and expanded output gradients, mixed dtypes, bfloat16, double backward (refused with
  a clear error), the backward op's own argument checks.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from fastsde import ops
from fastsde.ops import groupnorm as gn_ops
from fastsde.ops.dispatch import backend_available
from fastsde.precision import native_bf16

BACKENDS = ("reference", "native", "triton")


def _skip_unless(backend: str) -> None:
    ok, why = backend_available(backend, torch.device("cpu"))
    if not ok:
        pytest.skip(why)
    if backend == "native" and not gn_ops._has_native_backward():
        pytest.skip("fastsde._C was built without group_norm_backward")


def _gn_inputs(dtype, *, N=2, C=4, spatial=(3, 2), layout="nchw", vectors="all", seed=0):
    """x (offset, as real activations), and the vectors the case names, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    x = (0.7 + 1.3 * torch.randn(N, C, *spatial, generator=g, dtype=torch.float64)).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    vec = {"weight": (C,), "bias": (C,), "scale": (N, C), "shift": (N, C), "emb_add": (N, C)}
    names = list(vec) if vectors == "all" else vectors
    kw = {k: (0.5 * torch.randn(vec[k], generator=g, dtype=torch.float64)).to(dtype) for k in names}
    for t in (x, *kw.values()):
        t.requires_grad_(True)
    return x, kw


GRADCHECK_CASES = {
    "nchw_silu_all": dict(layout="nchw", act="silu", vectors="all", C=4, G=2),
    "cl_silu_all": dict(layout="channels_last", act="silu", vectors="all", C=6, G=3),
    "nchw_plain_affine": dict(layout="nchw", act=None, vectors=("weight", "bias"), C=4, G=4),
    "cl_emb_only": dict(layout="channels_last", act="silu", vectors=("emb_add",), C=4, G=1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_group_norm_gradcheck_float64(backend, case):
    _skip_unless(backend)
    c = GRADCHECK_CASES[case]
    x, kw = _gn_inputs(torch.float64, C=c["C"], layout=c["layout"], vectors=c["vectors"])
    names = list(kw)

    def f(x, *vecs):
        return ops.group_norm(x, c["G"], eps=1e-5, act=c["act"], backend=backend, **dict(zip(names, vecs)))

    y = f(x, *kw.values())
    assert y.grad_fn is not None
    # fast mode (random projections of the Jacobian) for the interpreted Triton kernels; the full check elsewhere
    assert torch.autograd.gradcheck(f, (x, *kw.values()), fast_mode=backend == "triton")


def _grads(backend, x, kw, G, act, dy):
    y = ops.group_norm(x, G, eps=1e-6, act=act, backend=backend, **kw)
    return torch.autograd.grad(y, (x, *kw.values()), dy)


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_group_norm_float32_gradients_match_the_float64_reference(backend, layout):
    """Shapes with lane tails (C = 20 channels-last, HW = 37 in NCHW rows) and several groups."""
    _skip_unless(backend)
    for spatial, C, G in (((37,), 20, 5), ((5, 7), 20, 4), ((16, 16), 32, 8)):
        if layout == "channels_last" and len(spatial) != 2:
            continue
        x, kw = _gn_inputs(torch.float32, C=C, spatial=spatial, layout=layout, N=3)
        dy = torch.randn(x.shape)
        got = _grads(backend, x, kw, G, "silu", dy)
        x64 = x.detach().double().requires_grad_(True)
        kw64 = {k: v.detach().double().requires_grad_(True) for k, v in kw.items()}
        want = _grads("reference", x64, kw64, G, "silu", dy.double())
        for name, a, b in zip(["x", *kw], got, want):
            assert a.dtype == torch.float32 and a.shape == b.shape
            err = (a.double() - b).abs().max().item()
            assert err <= 2e-5 * max(1.0, b.abs().max().item()), (name, spatial, err)


_SIMD_PROBE = r"""
import json, torch
from fastsde import _native, ops
torch.manual_seed(0)
worst = 0.0
for layout, spatial, C, G, act in [("nchw", (37,), 20, 5, "silu"), ("nchw", (4, 4), 8, 2, None),
                                   ("channels_last", (5, 7), 20, 4, "silu"), ("channels_last", (3, 3), 40, 8, None)]:
    for dtype in (torch.float32, torch.float16):
        x = (0.7 + torch.randn(2, C, *spatial)).to(dtype)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        vecs = [torch.randn(C), torch.randn(C), 0.3 * torch.randn(2, C), torch.randn(2, C), torch.randn(2, C)]
        dy = torch.randn(x.shape).to(dtype)
        res = []
        for backend, cast in (("native", lambda t: t), ("reference", lambda t: t.double())):
            xs = cast(x.detach()).requires_grad_(True)
            vs = [cast(v).requires_grad_(True) for v in vecs]
            y = ops.group_norm(xs, G, vs[0], vs[1], 1e-6, scale=vs[2], shift=vs[3], emb_add=vs[4], act=act,
                               backend=backend)
            res.append(torch.autograd.grad(y, [xs, *vs], cast(dy)))
        tol = 2e-5 if dtype == torch.float32 else 2e-2
        for a, b in zip(*res):
            worst = max(worst, (a.double() - b).abs().max().item() / (tol * max(1.0, b.abs().max().item())))
print(json.dumps({"level": _native.build_info()["simd_runtime"], "worst": worst}))
"""


def test_group_norm_backward_at_every_simd_level():
    """The native backward at each SIMD level this CPU has (and 2 threads), within tolerance of the float64
    reference's gradients (worst = max error / tolerance <= 1), float32 and float16 storage."""
    _skip_unless("native")
    from fastsde import _native

    for level in _native.build_info()["simd_supported"]:
        env = {**os.environ, "FASTSDE_SIMD": level, "OMP_NUM_THREADS": "2"}
        out = subprocess.run([sys.executable, "-c", _SIMD_PROBE], env=env, capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["level"] == level and result["worst"] <= 1.0, result


# ----------------------------------------------------------------------------------------------- hostile inputs
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_non_contiguous_and_expanded_output_gradients(backend):
    _skip_unless(backend)
    x, kw = _gn_inputs(torch.float64, C=8, spatial=(4, 5), vectors=("weight", "emb_add"))
    x64, kw64 = x.detach().requires_grad_(True), {k: v.detach().requires_grad_(True) for k, v in kw.items()}
    for dy in (torch.randn(2, 8, 5, 4, dtype=torch.float64).transpose(2, 3),  # permuted strides
               torch.randn(1, 8, 1, 5, dtype=torch.float64).expand(2, 8, 4, 5),  # stride-0 dims
               torch.randn(2, 8, 4, 10, dtype=torch.float64)[..., ::2]):  # a step
        got = _grads(backend, x, kw, 4, "silu", dy)
        want = _grads("reference", x64, kw64, 4, "silu", dy)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_mixed_dtypes_give_each_input_its_own_dtype():
    """bfloat16 or float16 activations with float32 parameters (a half-precision model keeping float32 weights):
    each gradient comes back in its input's dtype, close to the float64 gradients."""
    _skip_unless("native")
    for dtype in (torch.float16, torch.bfloat16) if native_bf16() else (torch.float16,):
        x, kw = _gn_inputs(torch.float32, C=8, spatial=(6, 6), vectors=("weight", "bias", "emb_add"))
        xh = x.detach().to(dtype).requires_grad_(True)
        dy = torch.randn(x.shape)
        got = _grads("native", xh, kw, 4, "silu", dy.to(dtype))
        x64 = xh.detach().double().requires_grad_(True)
        kw64 = {k: v.detach().double().requires_grad_(True) for k, v in kw.items()}
        want = _grads("reference", x64, kw64, 4, "silu", dy.to(dtype).double())
        assert [g.dtype for g in got] == [dtype, torch.float32, torch.float32, torch.float32]
        tol = 8 * torch.finfo(dtype).eps
        for a, b in zip(got, want):
            assert (a.double() - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_double_backward_is_refused_with_a_clear_error(backend):
    _skip_unless(backend)
    x, kw = _gn_inputs(torch.float64, vectors=("weight",))
    y = ops.group_norm(x, 2, act="silu", backend=backend, **kw)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(y.square().sum(), x)  # a first-order gradient of the same graph still runs
    assert torch.isfinite(gx).all()


def test_backward_op_checks_its_arguments():
    _skip_unless("native")
    op = torch.ops.fastsde.group_norm_backward
    x = torch.randn(2, 4, 3)
    for kwargs, match in [
        (dict(dy=torch.randn(2, 4, 2)), "dy must match x"),
        (dict(dy=torch.randn(2, 4, 3, dtype=torch.float64)), "dy must match x"),
        (dict(num_groups=3), "num_groups must divide the channels"),
        (dict(weight=torch.randn(5)), "weight must be a float tensor of shape"),
        (dict(act=2), "act must be 0"),
    ]:
        args = {**dict(dy=torch.randn(2, 4, 3), x=x, num_groups=2, weight=None, bias=None, eps=1e-6, scale=None,
                       shift=None, emb_add=None, act=1), **kwargs}
        with pytest.raises(RuntimeError, match=match):
            op(*args.values())


def test_explicit_triton_attention_under_autograd_differentiates_like_auto():
    """backend='triton' records autograd (the flash-attention backward kernels); its gradients match "auto"'s
    (native on the CPU) to float32 noise. tests/test_attention.py checks them against the float64 reference."""
    _skip_unless("triton")
    torch.manual_seed(0)
    B, C = 2, 8
    x = torch.randn(B, C, 4, 4, requires_grad=True)
    params = [torch.randn(C), torch.randn(C), 0.3 * torch.randn(3 * C, C), torch.randn(3 * C), 0.3 * torch.randn(C, C),
              torch.randn(C)]
    params = [p.requires_grad_(True) for p in params]
    cot = torch.randn(B, C, 4, 4)
    grads = {}
    for backend in ("triton", "auto"):
        y = ops.attn_block(x, *params, num_groups=2, backend=backend)
        assert y.grad_fn is not None
        grads[backend] = torch.autograd.grad(y, [x, *params], cot)
    for a, b in zip(grads["triton"], grads["auto"]):
        assert (a - b).abs().max() <= 1e-4 * (1 + b.abs().max()), (a - b).abs().max()


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_attention_gradcheck_float64(heads, layout):
    """The native attention block (folded single-head projections, or per-head GEMMs) differentiates exactly."""
    _skip_unless("native")
    g = torch.Generator().manual_seed(1)
    B, C = 2, 4
    x = torch.randn(B, C, 3, 2, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    shapes = [(C,), (C,), (3 * C, C), (3 * C,), (C, C), (C,)]
    params = [(0.5 * torch.randn(s, generator=g, dtype=torch.float64)).requires_grad_(True) for s in shapes]
    x.requires_grad_(True)

    def f(x, *p):
        return ops.attn_block(x, *p, num_groups=2, num_heads=heads, skip_rescale=True, backend="native")

    assert torch.autograd.gradcheck(f, (x, *params))


# ------------------------------------------------------------------------------------------ the whole U-Net's VJP
def _vjp(model, x, labels, cotangent):
    """(d<out, cotangent>/dx, {parameter name: d<out, cotangent>/dparam}) of one model evaluation."""
    x = x.detach().requires_grad_(True)
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    gx, *grads = torch.autograd.grad(model(x, labels), [x, *params], cotangent)
    return gx, dict(zip(names, grads))


def _check_vjp(fused, plain, x, labels):
    """The fused build's VJP against the plain build's (same weights), both against the plain build's float64 VJP:
    err(fused) <= 2 err(plain32) + 1e-5 of each gradient's scale, for the input and for every parameter."""
    cot = torch.randn(x.shape)
    truth = _vjp(copy.deepcopy(plain).double(), x.double(), labels.double(), cot.double())
    plain32 = _vjp(plain, x, labels, cot)
    gx, grads = _vjp(fused, x, labels, cot)
    # the fused build's parameter gradients in the plain build's layout: loaded as if they were weights (the fused
    # attention's (3C, C) QKV keys map to score_sde's NIN keys by a linear re-indexing, exact for gradients too)
    as_plain = copy.deepcopy(plain)
    as_plain.load_state_dict({**fused.state_dict(), **grads})
    fused32 = gx, {n: p.detach() for n, p in as_plain.named_parameters() if p.requires_grad}
    assert fused32[0].abs().max() > 0 and fused32[1].keys() == truth[1].keys()
    err = lambda a, b: (a.double() - b).abs().max().item()  # noqa: E731
    assert err(fused32[0], truth[0]) <= 2 * err(plain32[0], truth[0]) + 1e-5 * truth[0].abs().max().item()
    for name, g_t in truth[1].items():
        g_f, g_p = fused32[1][name], plain32[1][name]
        assert err(g_f, g_t) <= 2 * err(g_p, g_t) + 1e-5 * g_t.abs().max().item(), (name, err(g_f, g_t),
                                                                                     err(g_p, g_t))


def _randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _no_reference_group_norm(monkeypatch):
    """Make a fallback to the reference group_norm visible: the fused build must run the fused backward."""
    calls = []
    orig = gn_ops._ref.group_norm
    monkeypatch.setattr(gn_ops._ref, "group_norm", lambda *a, **k: calls.append(1) or orig(*a, **k))
    return calls


def test_digits_unet_vjp_matches_the_reference_layers(monkeypatch):
    _skip_unless("native")
    from fastsde.models.ncsnpp import UNet, get_preset

    torch.manual_seed(0)
    config = get_preset("small16", "vp")
    fused = _randomize(UNet(config).eval())
    plain = UNet(config, reference=True).eval()
    plain.load_state_dict(fused.state_dict())
    x, labels = torch.rand(3, config.in_channels, 16, 16), torch.tensor([10.0, 250.0, 900.0])
    calls = _no_reference_group_norm(monkeypatch)
    _check_vjp(fused, plain, x, labels)
    assert not calls


@pytest.mark.parametrize("name", ["ddpmpp_vp", "ncsnpp_ve"])
def test_score_sde_net_vjp_matches_the_plain_build(name, monkeypatch):
    _skip_unless("native")
    sys.path.insert(0, os.path.dirname(__file__))
    import score_sde_like as ssl
    from fastsde.models import score_sde_nets
    from fastsde.models.score_sde_nets import build_model

    # score_sde's timestep embedding is float32 whatever the model's dtype: the float64 truth keeps float64
    # (a no-op for the float32 runs)
    orig = score_sde_nets.timestep_embedding
    monkeypatch.setattr(score_sde_nets, "timestep_embedding", lambda t, dim: orig(t, dim).to(t.dtype))

    config = ssl.get_config(name, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    config.data.image_size = 16
    torch.manual_seed(0)
    fused = _randomize(build_model(config).eval())
    plain = build_model(config, accelerate=False).eval()
    plain.load_state_dict(fused.state_dict())
    fourier = name == "ncsnpp_ve"
    labels = torch.tensor([0.5, 3.0]) if fourier else torch.tensor([10.0, 500.0])
    calls = _no_reference_group_norm(monkeypatch)
    _check_vjp(fused, plain, torch.rand(2, config.data.num_channels, 16, 16), labels)
    assert not calls
