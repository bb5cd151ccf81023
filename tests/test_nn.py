"""fastsde.nn: fused modules against torch / the reference ops / their plain twins, and accelerate().

Tolerances come from measured error (docs/style.md 4): err(fast32, truth64) <= 2 err(plain32, truth64) + atol, with
truth64 the plain-PyTorch twin run in float64 on the same weights.
"""
import copy
import math

import pytest
import torch
from torch import nn

import fastsde
from fastsde.models import UNet, get_preset
from fastsde.nn import AttnBlock, GroupNormAct, PlainAttnBlock, PlainResnetBlock, ResnetBlock, accelerate
from fastsde.reference.attention import attn_block as attn_ref
from fastsde.reference.groupnorm import group_norm as gn_ref

BACKENDS = ["auto", "reference"]


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def assert_close_measured(fast, plain32, truth64, atol=1e-6):
    assert err(fast, truth64) <= 2 * err(plain32, truth64) + atol * max(1.0, truth64.abs().max().item())


def randomize_(module, std=0.1):
    """Non-trivial weights everywhere: the near-zero-initialised output layers would hide whole paths."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn_like(p))
    return module


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act", [None, "silu"])
def test_groupnorm_act_matches_torch(backend, act):
    x = torch.randn(3, 12, 5, 7)  # odd spatial sizes, odd batch
    m = randomize_(GroupNormAct(3, 12, act=act, backend=backend))
    plain = nn.GroupNorm(3, 12, eps=1e-6)
    plain.load_state_dict(m.state_dict())
    want = plain(x) if act is None else torch.nn.functional.silu(plain(x))
    truth = gn_ref(x.double(), 3, m.weight.double(), m.bias.double(), 1e-6, act=act)
    with torch.no_grad():
        assert_close_measured(m(x), want, truth)


@pytest.mark.parametrize("backend", BACKENDS)
def test_groupnorm_act_conditioning_matches_reference_op(backend):
    x, emb, scale, shift = torch.randn(3, 8, 6, 5), torch.randn(3, 8), torch.randn(3, 8), torch.randn(3, 8)
    m = randomize_(GroupNormAct(2, 8, act="silu", backend=backend))
    with torch.no_grad():
        got = m(x, emb_add=emb, scale=scale, shift=shift)
    args = [t.double() for t in (x, m.weight, m.bias)]
    truth = gn_ref(args[0], 2, args[1], args[2], 1e-6, emb_add=emb.double(), scale=scale.double(),
                   shift=shift.double(), act="silu")
    # float32 torch form of the same formula, for the error scale
    h = torch.nn.functional.group_norm(x + emb[:, :, None, None], 2, m.weight, m.bias, 1e-6)
    plain = torch.nn.functional.silu(h * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
    assert_close_measured(got, plain.detach(), truth)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("skip_rescale", [True, False])
def test_attn_block_matches_reference_op_and_plain_twin(backend, skip_rescale):
    x = torch.randn(3, 16, 5, 3)  # 15 tokens: no power of two
    m = randomize_(AttnBlock(16, skip_rescale=skip_rescale, backend=backend))
    plain = PlainAttnBlock(16, skip_rescale=skip_rescale)
    plain.load_state_dict(m.state_dict())  # fused keys converted to NIN_0..3 on load
    gn = m.GroupNorm_0
    truth = attn_ref(x.double(), *(t.double() for t in (gn.weight, gn.bias, m.qkv_weight, m.qkv_bias,
                                                          m.out_weight, m.out_bias)),
                     num_groups=gn.num_groups, skip_rescale=skip_rescale)
    with torch.no_grad():
        got, want = m(x), plain(x)
        assert_close_measured(got, want, truth)
        back = AttnBlock(16, skip_rescale=skip_rescale, backend=backend)
        back.load_state_dict(plain.state_dict())  # NIN keys converted back to the fused layout
        assert torch.equal(back(x), got)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("in_ch,out_ch", [(8, 8), (8, 12)])  # identity and NIN shortcut
def test_resnet_block_matches_plain_twin(backend, in_ch, out_ch):
    x, temb = torch.randn(3, in_ch, 6, 5), torch.randn(3, 20)
    m = randomize_(ResnetBlock(in_ch, out_ch, temb_dim=20, dropout=0.0, backend=backend))
    plain = PlainResnetBlock(in_ch, out_ch, temb_dim=20, dropout=0.0)
    plain.load_state_dict(m.state_dict())
    truth = copy.deepcopy(plain).double()
    with torch.no_grad():
        assert_close_measured(m(x, temb), plain(x, temb), truth(x.double(), temb.double()))


def test_accelerate_reference_unet_matches_fused_unet():
    config = get_preset("small16", "vp", nf=16)
    fused = randomize_(UNet(config), 0.05).eval()
    plain = UNet(config, reference=True).eval()
    plain.load_state_dict(fused.state_dict())
    x, labels = torch.rand(3, 3, 16, 16), torch.rand(3) * 999
    with torch.no_grad():
        want = plain(x, labels)
        truth = copy.deepcopy(plain).double()(x.double(), labels.double())
        got_fused = fused(x, labels)
        acc = fastsde.accelerate(plain)
        assert acc is plain
        got = acc(x, labels)
    assert not any(isinstance(m, (nn.GroupNorm, PlainAttnBlock, PlainResnetBlock, nn.SiLU)) for m in acc.modules())
    assert "mid.attn.0" in acc.fastsde_accelerated and "head.0" in acc.fastsde_accelerated
    assert_close_measured(got, want, truth)
    assert err(got, got_fused) <= 1e-6 * truth.abs().max().item()  # the same fused network


class _ScoreSdeNIN(nn.Module):
    """score_sde's NIN layout, written independently here: W (in, out), b (out,)."""

    def __init__(self, c):
        super().__init__()
        self.W = nn.Parameter(torch.randn(c, c) / math.sqrt(c))
        self.b = nn.Parameter(torch.randn(c) * 0.1)

    def forward(self, x):
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[None, :, None, None]


class _ScoreSdeAttn(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.GroupNorm_0 = nn.GroupNorm(min(c // 4, 32), c, eps=1e-6)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = (_ScoreSdeNIN(c) for _ in range(4))
        self.skip_rescale = True

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.softmax(torch.einsum("bchw,bcij->bhwij", q, k).reshape(B, H, W, H * W) / math.sqrt(C), dim=-1)
        h = torch.einsum("bhwij,bcij->bchw", w.reshape(B, H, W, H, W), v)
        return (x + self.NIN_3(h)) / math.sqrt(2.0)


class _SmallScoreSdeStyleNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.block = nn.Sequential(nn.GroupNorm(2, c, eps=1e-6), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))
        self.attn = _ScoreSdeAttn(c)
        self.norm = nn.GroupNorm(4, c)  # used bare (no activation): swapped for GroupNormAct(act=None)
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.block(h)
        return self.out(self.norm(self.attn(h)))


def test_accelerate_independent_score_sde_style_model():
    model = randomize_(_SmallScoreSdeStyleNet()).eval()
    x = torch.randn(3, 2, 7, 5)
    with torch.no_grad():
        want = model(x)
        truth = copy.deepcopy(model).double()(x.double())
        got = accelerate(model)(x)
    assert model.fastsde_accelerated == ["block.0", "attn", "norm"]
    assert isinstance(model.block[0], GroupNormAct) and model.block[0].act == "silu"
    assert isinstance(model.block[1], nn.Identity)
    assert isinstance(model.attn, AttnBlock) and isinstance(model.norm, GroupNormAct) and model.norm.act is None
    assert_close_measured(got, want, truth)


def test_accelerate_shares_parameters_and_trains():
    model = _SmallScoreSdeStyleNet()
    gn_weight = model.block[0].weight
    accelerate(model)
    assert model.block[0].weight is gn_weight  # optimizers holding GroupNorm parameters keep working
    model(torch.randn(2, 2, 4, 4)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet_block_channels_last(backend):
    """A channels-last x stays channels-last through the fused block (NIN shortcut included), same numbers."""
    x, temb = torch.randn(3, 8, 6, 5), torch.randn(3, 20)
    m = randomize_(ResnetBlock(8, 12, temb_dim=20, dropout=0.0, backend=backend))
    plain = PlainResnetBlock(8, 12, temb_dim=20, dropout=0.0)
    plain.load_state_dict(m.state_dict())
    truth = copy.deepcopy(plain).double()
    with torch.no_grad():
        got = m(x.to(memory_format=torch.channels_last), temb)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert_close_measured(got, plain(x, temb), truth(x.double(), temb.double()))


@pytest.mark.parametrize("backend", ["native", "auto"])
def test_fused_modules_differentiate_on_every_backend(backend):
    """Under autograd the modules run the reference ops (the fused kernels have no derivatives), even when a fused
    backend was asked for explicitly: gradients match the reference build's."""
    from fastsde.models.ncsnpp import UNet, get_preset

    torch.manual_seed(0)
    config = get_preset("small16", "vp", in_channels=1)
    fused, plain = UNet(config, backend=backend), UNet(config, reference=True)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.02 * torch.randn_like(p))
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(2, 1, 16, 16)
    grads = []
    for model in (fused, plain):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi, torch.tensor([10.0, 500.0])).square().sum(), xi)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
