"""The CUDA variants (`pytest -m cuda`): FSN1, every fused op and the fused samplers on a CUDA device, native and
Triton, against the reference; without a CUDA device every test here skips (tests/conftest.py).

scripts/gpu_check.sh runs this selection with TRITON_INTERPRET=0 (compiled Triton kernels, not the interpreter the
CPU tests use) and FASTSDE_REQUIRE_CUDA=1, under which a backend that cannot run on the GPU fails instead of skipping,
so a build without its CUDA kernels cannot pass as green. Tolerances are the CPU tests' (docs/style.md item 4):
err(fast, ref64) <= 2 err(ref32, ref64) + atol, with the float64 oracle and the float32 floor computed on the CPU.
Inputs are never zeros and outputs are poisoned with NaN before each run.
"""
from __future__ import annotations

import inspect
import json
import math
import os
import pathlib

import pytest
import torch
import torch.nn.functional as F

from fastsde import _native
from fastsde import random as fsn1
from fastsde import sampling
from fastsde import sde as sde_lib
from fastsde.models.analytic import AnalyticScoreModel, get_mixture
from fastsde.ops import attn_block, dispatch, fsn1_normal, group_norm
from helpers import ScaledModel
from fastsde.ops import step as step_ops
from fastsde.reference import attention as ref_attention
from fastsde.reference import groupnorm as ref_groupnorm
from fastsde.reference import step as ref_step

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
GPU_BACKENDS = ("native", "triton")
VECTORS = json.loads((pathlib.Path(__file__).parent / "data" / "fsn1_vectors.json").read_text())["vectors"]
# Extremes of every id: the largest seed, a sample id past 2**31, a draw id past 2**32.
SEED, DRAW, SAMPLE_IDS = 2**64 - 1, 2**32 + 1, [0, 5, 2**31 + 3]
NORMAL_TOL = {torch.float32: 2e-6, torch.float64: 1e-12}  # FSN1 vs its float64 oracle (design.md section 5)


def _need(backend: str) -> None:
    """Skip when `backend` cannot run on CUDA tensors here; fail instead under FASTSDE_REQUIRE_CUDA=1."""
    ok, why = dispatch.backend_available(backend, CUDA)
    if ok and backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        ok, why = False, "TRITON_INTERPRET=1 would interpret the kernels: run with TRITON_INTERPRET=0"
    if not ok:
        if os.environ.get("FASTSDE_REQUIRE_CUDA") == "1":
            pytest.fail(f"backend {backend!r} cannot run on CUDA tensors: {why}", pytrace=False)
        pytest.skip(why)


def _err(a, b) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item()


def _ulps(a, b) -> float:
    """The largest distance between a and b in units in the last place of b (b's dtype; 0 when equal)."""
    a, b = a.detach().cpu(), b.detach().cpu()
    spacing = torch.nextafter(b.abs(), torch.full_like(b, math.inf)) - b.abs()
    return ((a - b).abs() / spacing).max().item() if b.numel() else 0.0


def _poisoned(shape, dtype=torch.float32, device=CUDA):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------------------
# FSN1: native CUDA normals are the native CPU normals bit for bit; both backends within NORMAL_TOL of the oracle


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [1027, 70001])  # a partial Philox block; many thread blocks + a partial one
def test_fsn1_native_cuda_is_cpu_bit_for_bit(dtype, numel):
    """float32: the CPU's bits (design.md section 5 promises float32 bit-identity). float64: within 2 ulp -- CUDA's
    double log/sin/cos are not glibc's."""
    _need("native")
    if not dispatch.backend_available("native", CPU)[0]:
        pytest.skip("the native CPU kernels are needed for the comparison")
    gpu = fsn1_normal(_poisoned((3, numel), dtype), SEED, SAMPLE_IDS, DRAW, backend="native")
    cpu = fsn1_normal(_poisoned((3, numel), dtype, CPU), SEED, SAMPLE_IDS, DRAW, backend="native")
    if dtype == torch.float32:
        assert torch.equal(gpu.cpu(), cpu)
    else:
        assert torch.isfinite(gpu).all() and _ulps(gpu, cpu) <= 2
    oracle = fsn1.fsn1_normal(SEED, SAMPLE_IDS, DRAW, numel, dtype=torch.float64)
    assert _err(gpu, oracle) <= NORMAL_TOL[dtype]


def _fsn1_on(backend, out, seed, ids, draw):
    """FSN1 normals into out (B, M) on CUDA: native through the op, Triton through its standalone kernel."""
    if backend == "native":
        return fsn1_normal(out, seed, ids, draw, backend="native")
    from fastsde.kernels import fsn1 as kernels

    return kernels.fsn1_normal_debug(out, seed, torch.as_tensor(ids, dtype=torch.int64, device=out.device), draw)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fsn1_independent_vectors_on_cuda(backend):
    _need(backend)
    small = [v for v in VECTORS if v["element"] < 4096]
    picked = small[:: max(1, len(small) // 20)][:20]
    for v in picked:
        out = _fsn1_on(backend, _poisoned((1, v["element"] + 1)), v["seed"], [v["sample"]], v["draw"])
        assert abs(out[0, -1].item() - v["normal"]) <= NORMAL_TOL[torch.float32], v


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fsn1_rows_match_oracle_on_cuda(backend):
    _need(backend)
    out = _fsn1_on(backend, _poisoned((3, 4099)), SEED, SAMPLE_IDS, DRAW)
    assert _err(out, fsn1.fsn1_normal(SEED, SAMPLE_IDS, DRAW, 4099, dtype=torch.float64)) <= NORMAL_TOL[torch.float32]


# ---------------------------------------------------------------------------------------------------------------
# Sampler steps: affine_step (explicit noise, FSN1, noise-free, inpainting projection), step_sq_norms, langevin_step

STEP_SHAPES = [
    (3, 5, 7, 9),  # nothing divides a thread block or the Philox block (4)
    (1, 1),  # a single element: all tail
    (2, 100003),  # long rows: many blocks + a partial block
    (4, 3, 16, 16),  # image-like
]


def _inputs(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x, s, z, data = (torch.randn(shape, generator=gen) for _ in range(4))
    mask = (torch.rand(shape, generator=gen) < 0.5).float()
    coefs = [torch.rand(shape[0], generator=gen, dtype=torch.float64) + 0.5 for _ in range(5)]
    return [t.to(dtype) for t in (x, s, z, data, mask)], coefs


def _assert_step_close(got, run_ref, dtype, atol):
    """got (CUDA) vs run_ref(compute dtype) on the CPU: float64 inputs ~exact, else the style.md item 4 bound."""
    r64 = run_ref(torch.float64)
    if dtype == torch.float64:
        assert _err(got, r64) <= 1e-12
        return
    r32 = run_ref(torch.float32).to(dtype)
    err_fast, err_ref = _err(got, r64), _err(r32, r64)
    assert err_fast <= 2 * err_ref + atol * max(1.0, r64.abs().max().item()), (err_fast, err_ref)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", STEP_SHAPES)
@pytest.mark.parametrize("noise", ["explicit", "fsn1", "none"])
def test_affine_step_on_cuda(backend, shape, noise):
    _need(backend)
    (x, s, z, _, _), (a, b, c, _, _) = _inputs(shape, torch.float32, 1)
    ids = torch.tensor([5, 2**31 + 3, 0, 77][: shape[0]])
    c = None if noise == "none" else c
    kw = {"noise": z} if noise == "explicit" else {"seed": SEED, "sample_ids": ids, "draw": DRAW}
    out, xm = _poisoned(shape), _poisoned(shape)
    step_ops.affine_step(x.to(CUDA), s.to(CUDA), a.to(CUDA), b.to(CUDA), None if c is None else c.to(CUDA),
                         **{k: v.to(CUDA) if torch.is_tensor(v) else v for k, v in kw.items()}, out=out,
                         x_mean_out=xm, backend=backend)

    def ref(dt):
        buf = torch.empty(shape, dtype=dt)
        got = ref_step.affine_step(x.to(dt), s.to(dt), a, b, c, x_mean_out=buf,
                                   **{k: v.to(dt) if k == "noise" else v for k, v in kw.items()})
        return torch.stack([got.to(dt), buf])

    _assert_step_close(torch.stack([out, xm]), ref, torch.float32, 2e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_affine_step_dtypes_on_cuda(backend, dtype):
    _need(backend)
    shape = (3, 5, 7, 9)
    (x, s, _, _, _), (a, b, c, _, _) = _inputs(shape, dtype, 2)
    out = _poisoned(shape, dtype)
    step_ops.affine_step(x.to(CUDA), s.to(CUDA), a, b, c, seed=SEED, draw=DRAW, out=out, backend=backend)
    assert out.dtype == dtype
    _assert_step_close(out, lambda dt: ref_step.affine_step(x.to(dt), s.to(dt), a, b, c, seed=SEED, draw=DRAW).to(dt),
                       dtype, 2e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("noisy", [True, False])
def test_affine_step_projection_on_cuda(backend, noisy):
    _need(backend)
    shape = (4, 3, 16, 16)
    (x, s, _, data, mask), (a, b, c, da, dc) = _inputs(shape, torch.float32, 3)
    c = c if noisy else None
    proj = dict(mask=mask, data=data, data_a=da, data_c=dc, data_draw=7)
    out, xm = _poisoned(shape), _poisoned(shape)
    step_ops.affine_step(x.to(CUDA), s.to(CUDA), a, b, c, seed=SEED, draw=DRAW, out=out, x_mean_out=xm,
                         backend=backend, **{k: v.to(CUDA) if torch.is_tensor(v) else v for k, v in proj.items()})

    def ref(dt):
        buf = torch.empty(shape, dtype=dt)
        got = ref_step.affine_step(x.to(dt), s.to(dt), a, b, c, seed=SEED, draw=DRAW, x_mean_out=buf,
                                   **{k: v.to(dt) if k in ("mask", "data") else v for k, v in proj.items()})
        return torch.stack([got.to(dt), buf])

    _assert_step_close(torch.stack([out, xm]), ref, torch.float32, 2e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 100003)])
def test_step_sq_norms_and_langevin_on_cuda(backend, shape):
    _need(backend)
    (x, s, _, _, _), _ = _inputs(shape, torch.float32, 4)
    ids = torch.tensor([3, 2**32 - 1, 9][: shape[0]])
    sq = step_ops.step_sq_norms(s.to(CUDA), seed=SEED, sample_ids=ids.to(CUDA), draw=DRAW, backend=backend)
    want = ref_step.step_sq_norms(s.double(), seed=SEED, sample_ids=ids, draw=DRAW)
    assert sq.dtype == torch.float64 and sq.shape == (shape[0], 2)
    # float32 squares summed in float64; the FSN1 normals are a few ulp off the oracle's: 1e-6 relative
    torch.testing.assert_close(sq.cpu(), want, rtol=1e-6, atol=0)
    out = _poisoned(shape)
    step_ops.langevin_step(x.to(CUDA), s.to(CUDA), 0.16, 0.9, seed=SEED, sample_ids=ids.to(CUDA), draw=DRAW, out=out,
                           backend=backend)
    _assert_step_close(out, lambda dt: ref_step.langevin_step(x.to(dt), s.to(dt), 0.16, 0.9, seed=SEED,
                                                              sample_ids=ids, draw=DRAW).to(dt), torch.float32, 2e-6)


# ---------------------------------------------------------------------------------------------------------------
# GroupNorm (+ time-embedding add, scale/shift, SiLU)

GN_CASES = [
    ((2, 64, 8, 8), False),  # the U-Net's 8x8 level
    ((3, 96, 5, 7), False),  # odd spatial size: divides no block
    ((2, 128, 16, 16), True),  # channels-last input (the layout the fused U-Net may hand over)
]


def _gn_eager32(x, G, w, b, e, s, sh, act):
    """The plain float32 form on the CPU, rounded once to x's dtype: the floor of the tolerance."""
    nc = (x.shape[0], x.shape[1], 1, 1)
    h = x.float() + (0 if e is None else e.float().reshape(nc))
    h = F.group_norm(h, G, w.float(), b.float(), 1e-6)
    if s is not None:
        h = h * (1 + s.float().reshape(nc)) + sh.float().reshape(nc)
    return (F.silu(h) if act == "silu" else h).to(x.dtype)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape, channels_last", GN_CASES)
@pytest.mark.parametrize("extras", ["plain", "emb_silu", "scale_shift_silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_norm_on_cuda(backend, shape, channels_last, extras, dtype):
    _need(backend)
    N, C = shape[:2]
    gen = torch.Generator().manual_seed(5)
    x = (-2.3 + 0.5 * torch.randn(shape, generator=gen)).to(dtype)  # offset: a one-pass variance fails the bound
    w, b = (1 + 0.3 * torch.randn(C, generator=gen)).to(dtype), (0.3 * torch.randn(C, generator=gen)).to(dtype)
    e = (torch.randn(N, C, generator=gen).to(dtype) if extras == "emb_silu" else None)
    s, sh = ((0.3 * torch.randn(N, C, generator=gen)).to(dtype), (0.3 * torch.randn(N, C, generator=gen)).to(dtype)) \
        if extras == "scale_shift_silu" else (None, None)
    act = None if extras == "plain" else "silu"
    gx = x.to(CUDA)
    if channels_last:
        gx = gx.contiguous(memory_format=torch.channels_last)
    cuda = lambda t: None if t is None else t.to(CUDA)  # noqa: E731
    y = group_norm(gx, 32, cuda(w), cuda(b), 1e-6, scale=cuda(s), shift=cuda(sh), emb_add=cuda(e), act=act,
                   backend=backend)
    assert y.shape == x.shape and y.dtype == dtype
    d64 = lambda t: None if t is None else t.double()  # noqa: E731
    want = ref_groupnorm.group_norm(x.double(), 32, w.double(), b.double(), 1e-6, scale=d64(s), shift=d64(sh),
                                    emb_add=d64(e), act=act)
    floor = _err(_gn_eager32(x, 32, w, b, e, s, sh, act), want)
    atol = 4 * torch.finfo(dtype).eps / 2 * max(1.0, want.abs().max().item())
    assert _err(y, want) <= 2 * floor + atol, (_err(y, want), floor)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_group_norm_backward_on_cuda(backend, channels_last):
    """The fused backward on the GPU (CUDA kernel / Triton) against the float64 reference's gradients on the CPU:
    x and every vector, SiLU, several groups, a row length that leaves partial blocks."""
    _need(backend)
    gen = torch.Generator().manual_seed(6)
    N, C, H, W, G = 3, 64, 9, 7, 8
    x = 0.7 + torch.randn(N, C, H, W, generator=gen)
    vecs = [1 + 0.3 * torch.randn(C, generator=gen), 0.3 * torch.randn(C, generator=gen)] + \
        [0.3 * torch.randn(N, C, generator=gen) for _ in range(3)]
    dy = torch.randn(N, C, H, W, generator=gen)
    grads = []
    for cast, be in ((lambda t: t.to(CUDA), backend), (lambda t: t.double(), "reference")):
        xs = cast(x)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        xs.requires_grad_(True)
        vs = [cast(v).requires_grad_(True) for v in vecs]
        y = group_norm(xs, G, vs[0], vs[1], 1e-6, scale=vs[2], shift=vs[3], emb_add=vs[4], act="silu", backend=be)
        grads.append([g.cpu() for g in torch.autograd.grad(y, [xs, *vs], cast(dy))])
    for got, want in zip(*grads):
        assert got.dtype == torch.float32 and _err(got, want) <= 2e-5 * max(1.0, want.abs().max().item())


# ---------------------------------------------------------------------------------------------------------------
# Attention block (score_sde's AttnBlockpp)

ATTN_SHAPES = [
    (2, 32, 7, 9),  # 63 tokens: odd, divides no block size
    (1, 32, 16, 16),  # 256 tokens with few channels
    (2, 256, 16, 16),  # the CIFAR-10 attention resolution at full width
]


def _attn_params(C, gen):
    return dict(gn_weight=1 + 0.3 * torch.randn(C, generator=gen), gn_bias=0.3 * torch.randn(C, generator=gen),
                qkv_weight=torch.randn(3 * C, C, generator=gen) / math.sqrt(C),
                qkv_bias=0.3 * torch.randn(3 * C, generator=gen),
                out_weight=torch.randn(C, C, generator=gen) / math.sqrt(C),
                out_bias=0.3 * torch.randn(C, generator=gen))


def _attn_eager32(x, p, num_groups, num_heads, skip_rescale):
    """The block as plain float32 torch code on the CPU: the floor of the tolerance."""
    B, C, H, W = x.shape
    d, L = C // num_heads, H * W
    h = F.group_norm(x, num_groups, p["gn_weight"], p["gn_bias"], 1e-6).reshape(B, C, L)
    q, k, v = (torch.einsum("oc,bcl->bol", w, h) + b[None, :, None]
               for w, b in zip(p["qkv_weight"].chunk(3), p["qkv_bias"].chunk(3)))
    q, k, v = (t.reshape(B, num_heads, d, L) for t in (q, k, v))
    w = torch.softmax(torch.einsum("bhci,bhcj->bhij", q, k) / math.sqrt(d), dim=-1)
    a = torch.einsum("bhij,bhcj->bhci", w, v).reshape(B, C, L)
    y = x + (torch.einsum("oc,bcl->bol", p["out_weight"], a) + p["out_bias"][None, :, None]).reshape(B, C, H, W)
    return y / math.sqrt(2.0) if skip_rescale else y


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.parametrize("skip_rescale", [False, True])
def test_attn_block_on_cuda(backend, shape, num_heads, skip_rescale):
    _need(backend)
    gen = torch.Generator().manual_seed(6)
    x, p = 2 * torch.randn(shape, generator=gen) + 0.5, _attn_params(shape[1], gen)
    y = attn_block(x.to(CUDA), **{k: v.to(CUDA) for k, v in p.items()}, num_groups=8, num_heads=num_heads,
                   skip_rescale=skip_rescale, backend=backend)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device.type == "cuda"
    want = ref_attention.attn_block(x.double(), **{k: v.double() for k, v in p.items()}, num_groups=8,
                                    num_heads=num_heads, skip_rescale=skip_rescale)
    floor = _err(_attn_eager32(x, p, 8, num_heads, skip_rescale), want)
    assert _err(y, want) <= 2 * floor + 1e-6, (_err(y, want), floor)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape, num_heads", [((2, 32, 7, 9), 1), ((2, 64, 16, 16), 4), ((1, 256, 16, 16), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attn_block_gradients_on_cuda(backend, shape, num_heads, dtype):
    """x's and the six parameters' gradients (Triton: the flash-attention backward kernels; head dims 32, 16, 256)
    against the float64 reference block's: each within twice the error of the plain eager block's gradients in the
    same dtype on the same device, plus 1e-6 of the gradient's scale. (Written without a GPU at hand: not yet run.)"""
    _need(backend)
    gen = torch.Generator().manual_seed(7)
    x, p = 2 * torch.randn(shape, generator=gen) + 0.5, _attn_params(shape[1], gen)
    cot = torch.randn(shape, generator=gen)

    def grads(fn, device, dt):
        xs = x.to(device, dt).requires_grad_(True)
        ps = {k: v.to(device, dt).requires_grad_(True) for k, v in p.items()}
        return torch.autograd.grad(fn(xs, ps), [xs, *ps.values()], cot.to(device, dt))

    want = grads(lambda xs, ps: ref_attention.attn_block(xs, **ps, num_groups=8, num_heads=num_heads,
                                                         skip_rescale=True), CPU, torch.float64)
    got = grads(lambda xs, ps: attn_block(xs, **ps, num_groups=8, num_heads=num_heads, skip_rescale=True,
                                          backend=backend), CUDA, dtype)
    base = grads(lambda xs, ps: _attn_eager32(xs, ps, 8, num_heads, True), CUDA, dtype)
    for g, b, w in zip(got, base, want):
        assert g.dtype == dtype and torch.isfinite(g).all()
        assert _err(g, w) <= 2 * _err(b, w) + 1e-6 * w.abs().max().item(), (_err(g, w), _err(b, w))


# ---------------------------------------------------------------------------------------------------------------
# Samplers: the fused PC loop on CUDA against the as-written loop, same FSN1 noise

SAMPLER_CASES = [("ve", "reverse_diffusion", "langevin", True), ("vp", "euler_maruyama", "none", True),
                 ("vp_discrete", "ancestral_sampling", "ald", False)]


def _pc(sde_name, predictor, corrector, continuous, backend, device, dtype=torch.float32, n=8, **loop):
    sde = (sde_lib.VESDE(0.01, 10.0, 30) if sde_name == "ve" else sde_lib.VPSDE(0.1, 20.0, 30))
    model = AnalyticScoreModel(get_mixture("ring"), sde, continuous=continuous)
    sampler = sampling.get_pc_sampler(sde, (n, 2), predictor, corrector, lambda x: x, 0.16, n_steps=2,
                                      continuous=continuous, eps=1e-5 if sde_name == "ve" else 1e-3, seed=17,
                                      device=device, backend=backend, dtype=dtype, **loop)
    return sampler(model)[0]


def _truth(case, monkeypatch):
    """The fused loop on the reference ops in float64 on the CPU: the most exact answer at hand."""
    real = dispatch.backend_available
    with monkeypatch.context() as m:
        m.setattr(dispatch, "backend_available",
                  lambda b, d: (False, "disabled by test") if b != "reference" else real(b, d))
        return _pc(*case, "auto", CPU, dtype=torch.float64)


def _assert_sampler_close(got, ref32, truth):
    """The fused float32 result is as close to the float64 truth as the as-written float32 loop is (median sample;
    tests/test_sampling_fused.py explains why), with a sanity bound on the max."""
    err_fast = (got.double().cpu() - truth).abs().median().item()
    err_ref = (ref32.double().cpu() - truth).abs().median().item()
    assert err_fast <= 2 * err_ref + 1e-6, (err_fast, err_ref)
    assert (got.double().cpu() - truth).abs().max().item() < 1e-3


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_fused_sampler_on_cuda_matches_reference(monkeypatch, backend, case):
    _need(backend)
    got = _pc(*case, backend, CUDA)
    assert got.device.type == "cuda" and torch.isfinite(got).all()
    _assert_sampler_close(got, _pc(*case, "reference", CUDA), _truth(case, monkeypatch))


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_fused_unet_on_cuda_matches_reference_build(backend):
    """The small16 U-Net with fused modules against its plain-PyTorch build, on CUDA."""
    from fastsde.models.ncsnpp import UNet, get_preset

    _need(backend)
    torch.manual_seed(0)
    config = get_preset("small16", "ve")
    fused, reference = UNet(config, backend=backend).eval(), UNet(config, reference=True).eval()
    with torch.no_grad():  # non-trivial weights: the near-zero-initialised layers would make attention a no-op
        for p in fused.parameters():
            p.add_(0.02 * torch.randn_like(p))
    reference.load_state_dict(fused.state_dict())
    x = torch.rand(4, config.in_channels, config.resolution, config.resolution)
    labels = torch.tensor([0.1, 0.5, 1.0, 2.0])
    with torch.no_grad():
        want = reference.double()(x.double(), labels.double())
        reference.float()
        ref32 = reference.to(CUDA)(x.to(CUDA), labels.to(CUDA))
        got = fused.to(CUDA)(x.to(CUDA), labels.to(CUDA))
    assert _err(got, want) <= 2 * _err(ref32, want) + 1e-5, (_err(got, want), _err(ref32, want))


# ---------------------------------------------------------------------------------------------------------------
# The fused loop compiled and captured (CUDA graphs): run when get_pc_sampler offers the keyword


@pytest.mark.parametrize("keyword", ["compile", "capture"])
def test_compiled_and_captured_loop_on_cuda(monkeypatch, keyword):
    """A second run replays what the first compiled/captured (the same FSN1 seed: the same bits)."""
    if keyword not in inspect.signature(sampling.get_pc_sampler).parameters:
        pytest.skip(f"get_pc_sampler has no {keyword}= keyword yet")
    backend = "native" if _native.has_cuda() else "triton"
    _need(backend)
    case = SAMPLER_CASES[0]
    eager = _pc(*case, backend, CUDA)
    got = _pc(*case, backend, CUDA, **{keyword: True})
    again = _pc(*case, backend, CUDA, **{keyword: True})  # a second run replays what the first compiled/captured
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    assert torch.isfinite(got).all() and got.shape == eager.shape
    _assert_sampler_close(got, _pc(*case, "reference", CUDA), _truth(case, monkeypatch))


# ---------------------------------------------------------------------------------------------------------------
# The executor's updates, the one-pass combine and the captured programs


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("langevin", [False, True])
def test_executor_updates_on_cuda_match_the_cpu(backend, langevin):
    """The executor's PC updates on CUDA -- CombineSteps.combine with x_mean and the projection, CombineSteps.langevin
    with its step size computed on the device -- give the CPU's result on the same FSN1 noise, inside and outside a
    CUDA graph; the graph, recorded once, serves a new seed copied into seed_bits."""
    from fastsde.ops.step import CombineSteps, langevin_scratch

    _need(backend)
    g = torch.Generator().manual_seed(1)
    x0, score = torch.randn(6, 3, 40, generator=g), torch.randn(6, 3, 40, generator=g)
    mask, data = (torch.rand(6, 3, 40, generator=g) > 0.5).float(), torch.randn(6, 3, 40, generator=g)
    row = torch.rand(7, dtype=torch.float64, generator=g) + 0.1
    lang = torch.tensor([0.05, -1.0, 0.9, 0.1], dtype=torch.float64)
    ids = torch.arange(6) * 5 + 2
    results = {}
    for dev in (CPU, CUDA):
        x, xm = x0.to(dev), torch.empty_like(x0, device=dev)
        s, r, lg, m, d = score.to(dev), row.to(dev), lang.to(dev), mask.to(dev), data.to(dev)
        steps = CombineSteps(x, 77, ids.to(dev), backend="native" if dev == CPU else backend)
        scratch = langevin_scratch(x)

        def one(draw):
            if langevin:
                steps.langevin(x, xm, scratch, s, lg, 0.16, draw, (m, d, draw + 1))
            else:
                steps.combine(x, x, [s], (r[0:1], [r[1:2]], r[4:5]), draw, x_mean=xm, proj=(m, d, r[5:6], r[6:7],
                                                                                             draw + 1))

        one(1)
        steps.set_seed(78)
        if dev == CUDA:  # two updates recorded once with seed 77, replayed after the copy of seed 78
            saved = x.clone()
            steps.set_seed(77)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                one(3)
                one(5)
            x.copy_(saved)
            steps.set_seed(78)
            graph.replay()
        else:
            one(3)
            one(5)
        results[dev.type] = (x.cpu(), xm.cpu())
    for got, want in zip(results["cuda"], results["cpu"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_affine_combine_step_on_cuda(backend, k):
    _need(backend)
    g = torch.Generator().manual_seed(k)
    x = torch.randn(7, 300, generator=g)
    outputs = [torch.randn(7, 300, generator=g) for _ in range(k)]
    a = torch.rand(7, dtype=torch.float64, generator=g)
    b = [torch.rand(1, dtype=torch.float64, generator=g) for _ in range(k)]
    ids = torch.arange(7) + 3
    got = step_ops.affine_combine_step(x.to(CUDA), [o.to(CUDA) for o in outputs], a.to(CUDA), [v.to(CUDA) for v in b],
                                       0.4, seed=5, sample_ids=ids.to(CUDA), draw=2, backend=backend)
    want = ref_step.affine_combine_step(x.double(), [o.double() for o in outputs], a, b, 0.4, seed=5, sample_ids=ids,
                                        draw=2)
    torch.testing.assert_close(got.cpu().double(), want, rtol=0, atol=4e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m_sde", "adaptive"])
def test_captured_solver_on_cuda(backend, name):
    """get_sampler(capture=True, seed=None): the first call compiles, the second records the program's CUDA graph
    (the adaptive solver's: its single denoising Eval, compiled before the recording), later calls replay it; each
    new seed (read by the kernels from a device tensor, Triton too) and start gives the eager samples."""
    from fastsde import solvers

    _need(backend)
    sde = sde_lib.VPSDE(N=1000)
    model = AnalyticScoreModel(get_mixture("ring"), sde, continuous=True).to(CUDA)
    make = lambda **kw: solvers.get_sampler(name, sde, (64, 2), 8, device=CUDA, backend=backend, **kw)  # noqa: E731
    eager, captured = make(), make(capture=True)
    for k in range(4):
        z = torch.randn(64, 2, generator=torch.Generator().manual_seed(k)).to(CUDA)
        torch.manual_seed(100 + k)  # seed=None: each call draws its seed from torch's generator
        want = eager(model, z)[0]
        torch.manual_seed(100 + k)
        got = captured(model, z)[0]
        assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item(), k


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("lazy", [False, True])
def test_captured_pc_sampler_replays_new_seeds_on_cuda(lazy, backend):
    """get_pc_sampler(capture=True, seed=None) replays one recording with each call's seed and start z; the analytic
    model builds a device cache on its first call (lazy=True: a fresh model) and a .double() buffer change forces a
    re-recording -- both compile outside the capture (the first Eval eager, then the whole program compiled and
    uncaptured, then recorded in graphs of 7 steps), on the native backend and on Triton (seed read on the device)."""
    _need(backend)

    sde = sde_lib.VPSDE(beta_max=20.0, N=40)
    inner = AnalyticScoreModel(get_mixture("ring"), sde, continuous=True)
    if not lazy:
        inner(torch.zeros(1, 2, device=CUDA), torch.zeros(1, device=CUDA))
    model = ScaledModel(inner).to(CUDA)
    make = lambda **kw: sampling.get_pc_sampler(sde, (32, 2), "euler_maruyama", "langevin", lambda v: v, 0.16,  # noqa: E731
                                                 continuous=True, device=CUDA, backend=backend, **kw)
    eager, captured = make(), make(capture=True, capture_steps=7)
    for k in range(4):
        if k == 3:
            model.double()  # new storage in a new dtype: re-recorded after a recompile outside the capture
        z = torch.randn(32, 2, generator=torch.Generator().manual_seed(k)).to(CUDA)
        torch.manual_seed(200 + k)
        want = eager(model, z)[0]
        torch.manual_seed(200 + k)
        got = captured(model, z)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


class _NarrowOutput(torch.nn.Module):
    """The model's output in a narrower dtype than the state (a half-precision model beside a float32 state, a
    float32 model beside a float64 state): the fused updates load it directly."""

    def __init__(self, inner, dtype):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x, labels):
        return self.inner(x, labels).to(self.dtype)


def _captured_matches_eager(make, model, device, shape, calls=3):
    """make(**kw) -> sampler: the captured sampler (seed=None) over `calls` calls with new seeds and starts z gives
    the eager sampler's samples, on `device`."""
    eager, captured = make(), make(capture=True)
    for k in range(calls):
        z = torch.randn(shape, generator=torch.Generator().manual_seed(k)).to(device)
        torch.manual_seed(300 + k)
        want = eager(model, z)[0]
        torch.manual_seed(300 + k)
        got = captured(model, z)[0]
        assert got.device == torch.device(device) and torch.isfinite(got).all(), k
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("state, score", [(torch.float32, torch.bfloat16), (torch.float32, torch.float16),
                                          (torch.float64, torch.float32)])
@pytest.mark.parametrize("kind", ["pc", "dpmpp_2m"])
def test_captured_samplers_with_mixed_score_and_state_dtypes_on_cuda(kind, state, score):
    from fastsde import solvers

    _need("native")
    sde = sde_lib.VPSDE(beta_max=20.0, N=40)
    model = _NarrowOutput(AnalyticScoreModel(get_mixture("ring"), sde, continuous=True), score).to(CUDA)
    if kind == "pc":
        make = lambda **kw: sampling.get_pc_sampler(sde, (32, 2), "euler_maruyama", "langevin", lambda v: v,  # noqa: E731
                                                     0.16, continuous=True, device=CUDA, backend="native",
                                                     dtype=state, **kw)
    else:
        make = lambda **kw: solvers.get_sampler(kind, sde, (32, 2), 8, device=CUDA, backend="native",  # noqa: E731
                                                dtype=state, **kw)
    _captured_matches_eager(make, model, CUDA, (32, 2))


@pytest.mark.parametrize("kind", ["pc", "dpmpp_2m"])
def test_captured_samplers_on_a_non_current_device(kind):
    """Tensors on cuda:1 while cuda:0 is current: every launch, capture and replay happens on the tensors' device
    (the ops enter it; capture_safety records on a side stream of it)."""
    from fastsde import solvers

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    _need("native")
    other = torch.device("cuda", 1)
    torch.cuda.set_device(0)
    sde = sde_lib.VPSDE(beta_max=20.0, N=40)
    model = AnalyticScoreModel(get_mixture("ring"), sde, continuous=True).to(other)
    if kind == "pc":
        make = lambda **kw: sampling.get_pc_sampler(sde, (32, 2), "reverse_diffusion", "langevin", lambda v: v,  # noqa: E731
                                                     0.16, continuous=True, device=other, backend="native", **kw)
    else:
        make = lambda **kw: solvers.get_sampler(kind, sde, (32, 2), 8, device=other, backend="native",  # noqa: E731
                                                **kw)
    _captured_matches_eager(make, model, other, (32, 2))
    assert torch.cuda.current_device() == 0


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_captured_heat_sampler_replays_new_seeds_on_cuda(backend):
    """get_heat_sampler(capture=True, seed=None) on CUDA: the DCT-domain program (raw Eval + FreqCombine per step,
    the seed read by freq_step_ / the Triton kernel from a device tensor) recorded once in graphs of 4 steps and
    replayed with each call's seed gives the eager samples."""
    from fastsde.heat_sampler import get_heat_sampler
    from fastsde.models.analytic import AnalyticHeatModel, FrequencyMixture

    _need(backend)
    sde = sde_lib.make_sde("heat", N=1000)
    g = torch.Generator().manual_seed(0)
    mix = FrequencyMixture(torch.ones(3, dtype=torch.float64), torch.randn(3, 1, 8, 8, generator=g,
                                                                           dtype=torch.float64),
                           torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) + 0.1)
    model = AnalyticHeatModel(mix, sde).to(CUDA)
    make = lambda **kw: get_heat_sampler(sde, (16, 1, 8, 8), steps=10, eta=1.0, device=CUDA,  # noqa: E731
                                         backend=backend, **kw)
    eager, captured = make(), make(capture=True, capture_steps=4)
    for k in range(3):
        torch.manual_seed(400 + k)
        want = eager(model)[0]
        torch.manual_seed(400 + k)
        got = captured(model)[0]
        assert got.device.type == "cuda" and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_captured_rk45_likelihood_and_ode_sampler_on_cuda():
    """capture=True on CUDA: RK45's chunks of steps (the model's forward and the divergence VJP included) recorded
    once as a CUDA graph and replayed give the uncaptured device-resident run's numbers (the digits U-Net, fused)."""
    from fastsde.digits.pretrained import load_score_model, score_model_path
    from fastsde.likelihood import get_likelihood_fn

    _need("native")
    mf = load_score_model(score_model_path("digits", "", "vp"), device=CUDA)
    sde = mf.make_sde()
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)).to(CUDA) * 2 - 1
    probe = (torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1).float().to(CUDA)
    got = {c: get_likelihood_fn(sde, lambda v: v, rtol=1e-3, atol=1e-3, capture=c)(mf.model, x, probe)
           for c in (False, True)}
    torch.testing.assert_close(got[True][0], got[False][0], rtol=1e-4, atol=1e-4)
    z = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(2)).to(CUDA)
    smp = {c: sampling.get_ode_sampler(sde, (8, 1, 16, 16), lambda v: v, rtol=1e-3, atol=1e-3, device=CUDA,
                                       capture=c)(mf.model, z=z)[0] for c in (False, True)}
    torch.testing.assert_close(smp[True], smp[False], rtol=1e-4, atol=1e-4)
