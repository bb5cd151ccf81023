"""fastsde.models.ncsnpp: fused UNet vs its plain-PyTorch build, training signal, checkpoints, score conventions."""
import copy

import pytest
import torch

from fastsde import sde as sde_lib
from fastsde.models import UNet, UNetConfig, get_preset, load_checkpoint, save_checkpoint
from fastsde.models.utils import get_score_fn

# nf 16 keeps every test well under a second per forward on 2 cores; the layout is small16's.
SMALL = dict(nf=16)


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def randomize_(model, std=0.05):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(std * torch.randn_like(p))
    return model


def labels_for(kind, batch):
    return torch.exp(torch.empty(batch).uniform_(-3.0, 1.0)) if kind == "ve" else torch.rand(batch) * 999


@pytest.mark.parametrize("kind", ["ve", "vp"])  # Fourier (NCSN++) and positional (DDPM++) conditioning
def test_fused_matches_reference_build(kind):
    config = get_preset("small16", kind, **SMALL)
    fused = randomize_(UNet(config)).eval()
    plain = UNet(config, reference=True).eval()
    plain.load_state_dict(fused.state_dict())
    x, labels = torch.rand(5, 3, 16, 16), labels_for(kind, 5)  # odd batch
    with torch.no_grad():
        got, want = fused(x, labels), plain(x, labels)
        truth = copy.deepcopy(plain).double()(x.double(), labels.double())
    assert got.shape == x.shape
    assert err(got, truth) <= 2 * err(want, truth) + 1e-6 * truth.abs().max().item()


def test_presets_and_config_validation():
    assert get_preset("cifar10", "ve").ch_mult == (1, 2, 2, 2)
    assert get_preset("small32", "subvp").embedding == "positional"
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("imagenet")
    with pytest.raises(ValueError, match="embedding"):
        UNetConfig(embedding="learned")
    with pytest.raises(ValueError, match="scale_by_sigma"):
        UNetConfig(embedding="positional", scale_by_sigma=True)


def test_gradients_reach_every_trainable_parameter():
    config = get_preset("small16", "vp", **SMALL)
    model = randomize_(UNet(config)).train()
    x, labels = torch.rand(3, 3, 16, 16), labels_for("vp", 3)
    model(x, labels).square().mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    assert model.fourier.W.grad is None if hasattr(model, "fourier") else True


@pytest.mark.parametrize("kind,sde", [("ve", sde_lib.VESDE(0.01, 5.0)), ("vp", sde_lib.VPSDE())])
def test_denoising_score_matching_loss_decreases(kind, sde):
    torch.manual_seed(1)
    model = UNet(get_preset("small16", kind, **SMALL))
    score_fn = get_score_fn(sde, model, train=True, continuous=True)
    x0 = torch.rand(8, 3, 16, 16)
    t = torch.rand(8) * (1 - 1e-3) + 1e-3
    z = torch.randn_like(x0)

    def dsm_loss():  # Song et al. 2021 eq. 7 with lambda(t) = std^2: |std * score + z|^2
        mean, std = sde.marginal_prob(x0, t)
        s = score_fn(mean + std[:, None, None, None] * z, t)
        return (s * std[:, None, None, None] + z).square().sum(dim=(1, 2, 3)).mean()

    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = dsm_loss()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], losses


def test_checkpoint_round_trip(tmp_path):
    config = get_preset("small16", "ve", **SMALL)
    model = randomize_(UNet(config)).eval()
    path = str(tmp_path / "unet.safetensors")
    save_checkpoint(model, path)
    x, labels = torch.rand(3, 3, 16, 16), labels_for("ve", 3)
    loaded, loaded_plain = load_checkpoint(path), load_checkpoint(path, reference=True)
    assert loaded.config == config
    with torch.no_grad():
        want = model(x, labels)
        assert torch.equal(loaded(x, labels), want)
        truth = copy.deepcopy(loaded_plain).double()(x.double(), labels.double())
        plain = loaded_plain(x, labels)
    assert err(want, truth) <= 2 * err(plain, truth) + 1e-6 * truth.abs().max().item()
    save_checkpoint(loaded_plain, path)  # a reference-build file loads into the fused build too
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path)(x, labels), want)


def test_load_checkpoint_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file
    path = str(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a fastsde UNet checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("sde,kind", [(sde_lib.VESDE(), "ve"), (sde_lib.VPSDE(), "vp"), (sde_lib.subVPSDE(), "subvp")])
def test_get_score_fn_conventions(sde, kind):
    model = randomize_(UNet(get_preset("small16", kind, **SMALL))).eval()
    x, t = torch.rand(3, 3, 16, 16), torch.tensor([0.9, 0.5, 0.1])
    with torch.no_grad():
        score = get_score_fn(sde, model, continuous=True)(x, t)
        std = sde.marginal_prob(x, t)[1]
        if kind == "ve":  # labels = sigma(t); the output (already divided by sigma) is the score
            want = model(x, std)
        else:  # labels = 999 t; the output predicts noise: score = -eps / std
            want = -model(x, 999 * t) / std[:, None, None, None]
    assert score.shape == x.shape and torch.isfinite(score).all()
    assert torch.allclose(score, want, rtol=1e-5, atol=1e-6)


def test_fused_build_layouts_agree():
    """The fused build runs channels-last on CPU by default; NCHW gives the same numbers; outputs are NCHW."""
    config = get_preset("small16", "ve", **SMALL)
    cl = randomize_(UNet(config)).eval()
    nchw = UNet(config, memory_format=torch.contiguous_format).eval()
    nchw.load_state_dict(cl.state_dict())
    plain = UNet(config, reference=True).eval()
    plain.load_state_dict(cl.state_dict())
    x, labels = torch.rand(3, 3, 16, 16), labels_for("ve", 3)
    with torch.no_grad():
        got, want, ref = cl(x, labels), nchw(x, labels), plain(x, labels)
        truth = copy.deepcopy(plain).double()(x.double(), labels.double())
    assert cl._channels_last(x) and not nchw._channels_last(x) and not plain._channels_last(x)
    assert got.is_contiguous() and want.is_contiguous()
    bound = 2 * err(ref, truth) + 1e-6 * truth.abs().max().item()
    assert err(got, truth) <= bound and err(want, truth) <= bound
    with pytest.raises(ValueError, match="memory_format"):
        UNet(config, memory_format=torch.preserve_format)
