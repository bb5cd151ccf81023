"""score_sde drop-in: its SDE objects, predictor classes, names, checkpoints and models on fastsde.

The score_sde stand-ins (tests/score_sde_like.py) were checked against yang-song/score_sde_pytorch itself (same
state-dict keys, shapes and trainable-parameter order for the three official CIFAR-10 configs, bitwise-equal
outputs at nf=32); CI runs them without the original.
"""
import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import fastsde
import score_sde_like as ssl
from fastsde import sampling as fs_sampling
from fastsde.compat.score_sde import checkpoint, likelihood, sampling, sde_lib
from fastsde.compat.score_sde.models import utils as mutils
from fastsde.sde import VESDE, VPSDE, as_fastsde_sde, subVPSDE


class TinyScore(nn.Module):
    """A small conv net with the model(x, labels) interface; labels enter through a per-sample scale."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, labels):
        return self.conv(x) * (1.0 + 1e-3 * labels.float())[:, None, None, None]


@pytest.mark.parametrize("theirs, ours", [(ssl.VPSDE(0.2, 15, 40), VPSDE), (ssl.subVPSDE(0.1, 20, 30), subVPSDE),
                                          (ssl.VESDE(0.02, 30, 50), VESDE)])
def test_as_fastsde_sde_converts_score_sde_objects(theirs, ours):
    got = as_fastsde_sde(theirs)
    assert type(got) is ours and got.N == theirs.N and got.source is theirs
    for table in ("discrete_betas", "alphas_cumprod", "sqrt_1m_alphas_cumprod", "discrete_sigmas"):
        if hasattr(theirs, table):
            assert torch.equal(getattr(got, table), getattr(theirs, table)), table
    assert as_fastsde_sde(got) is got


def test_as_fastsde_sde_refuses_other_objects():
    with pytest.raises(TypeError, match="sde must be a fastsde SDE"):
        as_fastsde_sde(object())
    fake = type("VPSDE", (), {"beta_0": 0.1, "N": 10})()
    with pytest.raises(TypeError, match="lacks \\['beta_1'\\]"):
        as_fastsde_sde(fake)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_pc_sampler_takes_score_sde_sde_objects(backend):
    """Their VPSDE and ours sample the same (same seed, torch noise): the conversion is exact."""
    out = []
    for sde in (ssl.VPSDE(N=25), VPSDE(N=25)):
        torch.manual_seed(0)
        f = fs_sampling.get_pc_sampler(sde, (2, 2, 4, 4), "euler_maruyama", "langevin", lambda x: x, 0.16,
                                       continuous=True, backend=backend, noise="torch")
        out.append(f(TinyScore())[0])
    assert torch.equal(out[0], out[1])


def test_ode_sampler_and_likelihood_take_score_sde_sde_objects():
    model = TinyScore()
    z = torch.randn(2, 2, 4, 4)
    a = fs_sampling.get_ode_sampler(ssl.VPSDE(N=10), (2, 2, 4, 4), lambda x: x, rtol=1e-3, atol=1e-3)(model, z=z)[0]
    b = fs_sampling.get_ode_sampler(VPSDE(N=10), (2, 2, 4, 4), lambda x: x, rtol=1e-3, atol=1e-3)(model, z=z)[0]
    assert torch.equal(a, b)
    torch.manual_seed(1)
    bpd = likelihood.get_likelihood_fn(ssl.VPSDE(), lambda x: x, rtol=1e-3, atol=1e-3)(model, torch.rand(2, 2, 4, 4))[0]
    assert bpd.shape == (2,) and torch.isfinite(bpd).all()


def test_score_sde_style_predictor_runs_as_written_and_matches_ours():
    """score_sde's EulerMaruyamaPredictor interface (no noise=) runs unfused with a note, on the user's own SDE
    object, and equals fastsde's predictor bit for bit under the same seed."""
    sde = ssl.VPSDE(N=20)
    with pytest.warns(UserWarning, match="score_sde's interface"):
        f = fs_sampling.get_pc_sampler(sde, (2, 2, 4, 4), ssl.EulerMaruyamaPredictor, None, lambda x: x, 0.16,
                                       continuous=True, noise="torch")
    torch.manual_seed(0)
    got = f(TinyScore())[0]
    torch.manual_seed(0)
    want = sampling.get_pc_sampler(VPSDE(N=20), (2, 2, 4, 4), "euler_maruyama", "none", lambda x: x, 0.16,
                                   continuous=True, device="cpu")(TinyScore())[0]
    assert torch.equal(got, want)


@pytest.mark.parametrize("sde", [VPSDE(N=10), subVPSDE(N=19), ssl.VPSDE(N=19)])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_langevin_with_negative_alpha_is_refused_before_sampling(sde, backend):
    """alpha = 1 - beta_i < 0 (beta_max / N > 1) is a negative step size: refused; N = beta_max gives alpha = 0 at
    the last step, a zero step (fine)."""
    with pytest.raises(ValueError, match="alpha = 1 - beta_i is < 0.*N >= 20"):
        fs_sampling.get_pc_sampler(sde, (1, 2, 4, 4), "euler_maruyama", "langevin", lambda x: x, 0.16,
                                   backend=backend)
    fs_sampling.get_pc_sampler(sde, (1, 2, 4, 4), "euler_maruyama", "langevin", lambda x: x, 0.16, n_steps=0)
    fs_sampling.get_pc_sampler(VPSDE(N=20), (1, 2, 4, 4), "euler_maruyama", "langevin", lambda x: x, 0.16)


@pytest.mark.parametrize("predictor", ["reverse_diffusion", "ancestral_sampling"])
def test_ddpm_steps_with_beta_at_least_one_are_refused(predictor):
    with pytest.raises(ValueError, match="sqrt\\(1 - beta_i\\) is undefined"):
        fs_sampling.get_pc_sampler(VPSDE(N=5), (1, 2, 4, 4), predictor, "none", lambda x: x, 0.16)


def test_snr_must_be_finite():
    with pytest.raises(ValueError, match="snr must be a finite number"):
        fs_sampling.get_pc_sampler(VESDE(N=5), (1, 2, 4, 4), "reverse_diffusion", "langevin", lambda x: x,
                                   float("nan"))


def test_compat_names_and_defaults():
    config = ssl.get_config("ddpmpp_vp")
    config.sampling.n_steps_each = 1
    f = sampling.get_sampling_fn(config, sde_lib.VPSDE(N=5), (2, 2, 4, 4), lambda x: x, 1e-3)
    torch.manual_seed(0)
    got = f(TinyScore())
    torch.manual_seed(0)
    want = fs_sampling.get_pc_sampler(VPSDE(N=5), (2, 2, 4, 4), "euler_maruyama", "none", lambda x: x, 0.16,
                                      continuous=True, backend="reference", noise="torch")(TinyScore())
    assert torch.equal(got[0], want[0]) and got[1] == want[1]
    x, t, model = torch.randn(2, 2, 4, 4), torch.full((2,), 0.5), TinyScore()
    for predictor in ("reverse_diffusion", ssl.EulerMaruyamaPredictor, None):
        torch.manual_seed(2)
        out = sampling.shared_predictor_update_fn(x, t, ssl.VPSDE(N=50), model, predictor, False, True)
        assert out[0].shape == x.shape
    torch.manual_seed(2)
    a = sampling.shared_corrector_update_fn(x, t, ssl.VESDE(N=50), model, sampling.LangevinCorrector, True, 0.16, 2)
    torch.manual_seed(2)
    b = sampling.shared_corrector_update_fn(x, t, VESDE(N=50), model, "langevin", True, 0.16, 2)
    assert torch.equal(a[0], b[0])


def test_models_utils():
    config = ssl.get_config("ddpm_vp", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    config.data.image_size = 16
    name = "ddpm_like_test"
    mutils.register_model(ssl.DDPM, name=name)
    with pytest.raises(ValueError, match="already registered"):
        mutils.register_model(ssl.DDPM, name=name)
    config.model.name = name
    model = mutils.create_model(config)
    assert isinstance(model, nn.DataParallel) and next(iter(model.state_dict())).startswith("module.")
    sigmas = mutils.get_sigmas(config)
    assert abs(sigmas[0] - 50) < 1e-12 and abs(sigmas[-1] - 0.01) < 1e-12 and len(sigmas) == 1000
    params = mutils.get_ddpm_params(config)
    vp = VPSDE(config.model.beta_min, config.model.beta_max, config.model.num_scales)
    assert torch.allclose(torch.from_numpy(params["alphas_cumprod"]), vp.alphas_cumprod.double(), rtol=1e-5)


def _small(name, **kw):
    config = ssl.get_config(name, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), **kw)
    config.data.image_size = 16
    torch.manual_seed(0)
    model = (ssl.NCSNpp if config.model.name == "ncsnpp" else ssl.DDPM)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    labels = torch.tensor([0.5, 3.0]) if name == "ncsnpp_ve" else torch.tensor([10.0, 500.0])
    return model, torch.rand(2, 3, 16, 16), labels


def test_checkpoint_loads_model_and_ema_weights(tmp_path):
    model, x, labels = _small("ncsnpp_ve")
    ema = copy.deepcopy(model)
    with torch.no_grad():
        trainable = [p for p in ema.parameters() if p.requires_grad]  # the EMA skips the Fourier W, as score_sde's
        for p in trainable:
            p.mul_(0.9)
    wrapped = nn.DataParallel(model)
    opt = torch.optim.Adam(wrapped.parameters())
    path = tmp_path / "checkpoint_8.pth"
    torch.save({"model": wrapped.state_dict(), "optimizer": opt.state_dict(), "step": 8,
                "ema": {"decay": 0.999, "num_updates": 8, "shadow_params": [p.detach().clone() for p in trainable]}},
               path)
    fresh, _, _ = _small("ncsnpp_ve")
    with torch.no_grad():
        assert torch.equal(checkpoint.load_into(copy.deepcopy(fresh), path)(x, labels), model(x, labels))
        assert torch.equal(checkpoint.load_into(copy.deepcopy(fresh), path, ema=True)(x, labels), ema(x, labels))
        guessed = checkpoint.load_state_dict(path, ema=True)  # names guessed from the keys
        assert all(torch.equal(v, ema.state_dict()[k]) for k, v in guessed.items())
        fast = fastsde.accelerate(checkpoint.load_into(copy.deepcopy(fresh), path, ema=True))
        want = ema(x, labels)
        assert ((fast(x, labels) - want).norm() / want.norm()) < 1e-5


class _Payload:
    pass


def test_checkpoint_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": _Payload()}, f)
    with pytest.raises(ValueError, match="without unpickling code"):
        checkpoint.load_state_dict(path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="expected a score_sde checkpoint dict with 'model'"):
        checkpoint.load_state_dict(tmp_path / "other.pth")


@pytest.mark.parametrize("name, expected", [
    ("ncsnpp_ve", {"biggan": 10, "fir": 1, "attention": 3, "groupnorm": 1}),  # fir: the input pyramid's Conv2d
    ("ddpmpp_vp", {"biggan": 10, "attention": 3, "groupnorm": 1}),
    ("ddpm_vp", {"resnet": 8, "attention": 3, "groupnorm": 1}),
])
def test_accelerate_covers_the_model_zoo(name, expected):
    model, x, labels = _small(name)
    orig = ssl.get_timestep_embedding
    with torch.no_grad():
        want = model(x, labels)
        ssl.get_timestep_embedding = lambda t, d: orig(t, d).double()  # the float64 truth run
        try:
            truth = copy.deepcopy(model).double()(x.double(), labels.double())
        finally:
            ssl.get_timestep_embedding = orig
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing known is left unswapped
        fast, report = fastsde.accelerate(copy.deepcopy(model), report=True)
    assert report.counts() == expected
    assert {kind for _, kind, _ in report.left} <= {"GaussianFourierProjection", "Downsample", "Upsample"}
    assert not any(type(m).__name__ in ("ResnetBlockBigGANpp", "ResnetBlockDDPM", "AttnBlockpp", "AttnBlock")
                   and hasattr(m, "NIN_0") for m in fast.modules())
    with torch.no_grad():
        got = fast(x, labels)
    err = lambda a: (a.double() - truth).abs().max().item()  # noqa: E731
    assert got.is_contiguous() and err(got) <= 2 * err(want) + 1e-6 * truth.abs().max().item()


def test_accelerate_warns_once_about_a_known_block_it_leaves():
    block = ssl.ResnetBlockBigGANpp(nn.ELU(), 8, 8, temb_dim=4)
    model = nn.Sequential(block, copy.deepcopy(block))
    with pytest.warns(RuntimeWarning, match="ResnetBlockBigGANpp at 0 left unswapped: act is ELU") as record:
        _, report = fastsde.accelerate(model, report=True)
    assert len([w for w in record if "ResnetBlockBigGANpp" in str(w.message)]) == 1
    assert [(n, k) for n, k, _ in report.left] == [("0", "ResnetBlockBigGANpp"), ("1", "ResnetBlockBigGANpp")]


def test_fastsde_convert_writes_the_state_dict(tmp_path):
    """The file keeps score_sde's keys (its own class loads it); tests/test_score_sde_nets.py covers the rest."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from fastsde.cli import main

    model, x, labels = _small("ddpmpp_vp")
    config = ssl.get_config("ddpmpp_vp", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    fields = dict(vars(config.model), image_size=16, num_channels=3, centered=True, sde="vpsde")
    path, out = tmp_path / "checkpoint_1.pth", tmp_path / "model.safetensors"
    torch.save({"model": nn.DataParallel(model).state_dict(), "optimizer": {}, "step": 1,
                "ema": {"decay": 0.9999, "num_updates": 1,
                        "shadow_params": [p.detach() * 0.5 for p in model.parameters() if p.requires_grad]}}, path)
    assert main(["convert", str(path), "--config", json.dumps(fields), "--ema", "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata()["format"] == "fastsde.score_sde/1"
    fresh, _, _ = _small("ddpmpp_vp")
    fresh.load_state_dict(load_file(str(out)))
    assert all(torch.equal(fresh.state_dict()[k], v * (0.5 if k != "sigmas" else 1.0))
               for k, v in model.state_dict().items())
    # the official config names a network of nf=128: the small checkpoint does not fit it and nothing is written
    assert main(["convert", str(path), "--config", "vp/cifar10_ddpmpp_continuous", "--out",
                 str(tmp_path / "no.safetensors")]) == 1
    assert not (tmp_path / "no.safetensors").exists()
