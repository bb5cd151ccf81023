"""fastsde.models.score_sde_nets: score_sde's NCSNpp and DDPM in its own layout, on fastsde's fused modules.

The oracle is tests/score_sde_like.py (checked against yang-song/score_sde_pytorch itself). The classes here were also
compared with the original models/ncsnpp.py and ddpm.py directly (CPU path of upfirdn2d, nf=32, 16x16, these same
configs): same keys, shapes, dtypes and trainable-parameter order, and the plain build's outputs bitwise equal.
Tolerances follow style.md item 4: the float64 stand-in is the truth, and a float32 result may be off by at most
twice the float32 stand-in's own error plus 1e-6 of the output's scale.
"""
import copy
import json
import warnings

import pytest
import torch
from torch import nn

import score_sde_like as ssl
from fastsde.compat.score_sde import checkpoint
from fastsde.compat.score_sde.configs import CONFIGS
from fastsde.models import load_model_file
from fastsde.models.score_sde_nets import DDPM, NCSNpp, ScoreSDEConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # batches of two 16x16 images: a second thread only waits

CASES = {
    "ncsnpp_ve": ("ncsnpp_ve", {}),  # NCSN++ cifar10 continuous: fourier, BigGAN, FIR, progressive input residual
    "ddpmpp_vp": ("ddpmpp_vp", {}),  # DDPM++ cifar10 continuous: positional, BigGAN, no FIR
    "ddpm_vp": ("ddpm_vp", {}),  # models/ddpm.py
    # every other branch of ncsnpp.py: DDPM++ blocks with FIR resampling layers, output/input skip, concatenation
    "skips_cat": ("ncsnpp_ve", dict(resblock_type="ddpm", progressive="output_skip", progressive_input="input_skip",
                                    progressive_combine="cat")),
    # the output pyramid in residual form (FIR Conv2d upsampling), no conditioning, no resampling convolutions
    "residual": ("ddpmpp_vp", dict(resblock_type="ddpm", fir=True, progressive="residual", conditional=False,
                                   resamp_with_conv=False)),
}


def _config(case, **kw):
    name, extra = CASES[case]
    fields = dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), **extra)
    config = ssl.get_config(name, **{**fields, **kw})
    config.data.image_size = 16
    return config


def _theirs(case, **kw):
    """The stand-in with randomised weights (every parameter moved off its init), an input and labels."""
    config = _config(case, **kw)
    torch.manual_seed(0)
    model = (ssl.NCSNpp if config.model.name == "ncsnpp" else ssl.DDPM)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    fourier = config.model.name == "ncsnpp" and config.model.embedding_type == "fourier"
    labels = torch.tensor([0.5, 3.0]) if fourier else torch.tensor([10.0, 500.0])
    x = torch.rand(2, config.data.num_channels, 16, 16)
    return model, config, x, labels


def _truth(model, x, labels):
    """The stand-in's output in float64 (its timestep embedding casts to float32; the float64 run keeps float64)."""
    orig = ssl.get_timestep_embedding
    ssl.get_timestep_embedding = lambda t, d: orig(t, d).double()
    try:
        with torch.no_grad():
            return copy.deepcopy(model).double()(x.double(), labels.double())
    finally:
        ssl.get_timestep_embedding = orig


def _check_close(got, want32, truth):
    err = lambda a: (a.double() - truth).abs().max().item()  # noqa: E731
    assert got.shape == truth.shape and torch.isfinite(got).all()
    assert err(got) <= 2 * err(want32) + 1e-6 * truth.abs().max().item(), (err(got), err(want32))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("accelerate", [True, False])
def test_keys_shapes_and_parameter_order_are_score_sdes(case, accelerate):
    theirs, config, _, _ = _theirs(case)
    ours = build_model(config, accelerate=accelerate)
    want, got = theirs.state_dict(), ours.state_dict()
    assert list(got) == list(want)
    assert all(got[k].shape == want[k].shape and got[k].dtype == want[k].dtype for k in want)
    # score_sde's EMA lists the trainable parameters in this order
    assert ([n for n, p in ours.named_parameters() if p.requires_grad]
            == [n for n, p in theirs.named_parameters() if p.requires_grad])
    ours.load_state_dict(want, strict=True)


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_equal_the_stand_ins_with_the_same_weights(case):
    theirs, config, x, labels = _theirs(case)
    with torch.no_grad():
        want = theirs(x, labels)
    truth = _truth(theirs, x, labels)
    for accelerate in (False, True):
        ours = build_model(config, accelerate=accelerate).eval()
        ours.load_state_dict(theirs.state_dict())
        with torch.no_grad():
            got = ours(x, labels)
        assert got.is_contiguous() or not accelerate  # the plain build keeps score_sde's layouts, as they come
        _check_close(got, want, truth)


def test_fused_build_is_made_of_fused_modules_and_matches_the_plain_build():
    from fastsde.nn import GroupNormAct
    from fastsde.nn.resample import FIRConv2d
    from fastsde.nn.resnet import ResnetBlockBigGAN

    theirs, config, x, labels = _theirs("ncsnpp_ve")
    fused, plain = build_model(config).eval(), build_model(config, accelerate=False).eval()
    for m in (fused, plain):
        m.load_state_dict(theirs.state_dict())
    kinds = {type(m) for m in fused.modules()}
    assert {ResnetBlockBigGAN, GroupNormAct, FIRConv2d} <= kinds and not any(type(m) is nn.GroupNorm for m in
                                                                            fused.modules())
    with torch.no_grad():
        a, b = fused(x, labels), plain(x, labels)
    _check_close(a, b, _truth(theirs, x, labels))  # the plain build's float32 error bounds the fused build's


@pytest.mark.parametrize("accelerate", [False, True])
def test_fastsde_accelerate_on_either_build_stays_correct(accelerate):
    """fastsde.accelerate() swaps the plain build's score_sde blocks and finds nothing to redo in the fused build."""
    import fastsde

    theirs, config, x, labels = _theirs("ncsnpp_ve")
    ours = build_model(config, accelerate=accelerate).eval()
    ours.load_state_dict(theirs.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no known block left behind with a complaint
        ours, report = fastsde.accelerate(ours, report=True)
    assert bool(report.swapped) is not accelerate
    with torch.no_grad():
        _check_close(ours(x, labels), theirs(x, labels), _truth(theirs, x, labels))


def test_fused_attention_sees_every_parameter_change():
    """Nothing derived from the weights is cached: score_sde's EMA swap (param.data.copy_) is seen by the next call."""
    theirs, config, x, labels = _theirs("ddpmpp_vp")
    other, _, _, _ = _theirs("ddpmpp_vp", dropout=0.0)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.9)
    ours = build_model(config).eval()
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        ours(x, labels)
        for p, q in zip(ours.parameters(), other.parameters()):
            p.data.copy_(q.data)
        got = ours(x, labels)
    _check_close(got, other(x, labels).detach(), _truth(other, x, labels))


def test_gradients_flow_through_the_fused_build():
    theirs, config, x, labels = _theirs("ncsnpp_ve")
    builds = [build_model(config, accelerate=a) for a in (True, False)]
    grads = []
    for m in builds:
        m.load_state_dict(theirs.state_dict())
        m.eval()
        m(x, labels).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.requires_grad]))
    assert ((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-5


def test_config_from_fields_score_sde_config_and_errors():
    _, config, _, _ = _theirs("ncsnpp_ve")
    nested = ScoreSDEConfig.from_any(config)
    assert (nested.name, nested.nf, nested.fir, nested.image_size, nested.sde, nested.sde_name) == \
        ("ncsnpp", 32, True, 16, "vesde", "ve")
    assert ScoreSDEConfig.from_json(nested.to_json()) == nested
    assert (nested.resolution, nested.in_channels, nested.centered) == (16, 3, False)
    for spec, fields in CONFIGS.items():
        c = ScoreSDEConfig.from_any(fields)
        assert (c.name, c.nf, c.resblock_type if c.name == "ncsnpp" else "ddpm") == \
            (fields["name"], 128, fields.get("resblock_type", "ddpm")), spec
    assert isinstance(build_model({**CONFIGS["vp/ddpm/cifar10"], "nf": 32, "ch_mult": [1, 2], "image_size": 16,
                                   "num_res_blocks": 1}, accelerate=False), DDPM)
    with pytest.raises(ValueError, match="config progressive_input must be one of .* got 'skip'"):
        ScoreSDEConfig(progressive_input="skip")
    with pytest.raises(ValueError, match=r"fields \['nff'\]"):
        ScoreSDEConfig.from_any({"nff": 3})
    with pytest.raises(ValueError, match="image_size \\(20\\) must be divisible by 2\\^3"):
        ScoreSDEConfig(image_size=20)
    with pytest.raises(ValueError, match="fourier' needs continuous=True"):
        ScoreSDEConfig(continuous=False)
    with pytest.raises(ValueError, match="NCSNpp needs config name 'ncsnpp', got 'ddpm'"):
        NCSNpp({"name": "ddpm"})
    with pytest.raises(ValueError, match="accelerate=True needs config nonlinearity 'swish'.* got 'elu'"):
        NCSNpp({"nonlinearity": "elu", "nf": 16, "ch_mult": [1], "image_size": 8})


def _fields(config, **extra):
    """The flat fields `fastsde convert --config JSON` takes, from a nested score_sde config."""
    data = {k: getattr(config.data, k) for k in ("image_size", "num_channels", "centered")}
    return dict(vars(config.model), **data, **extra)


def _save_checkpoint(model, path, ema_factor=0.5):
    """A checkpoint in score_sde's format: DataParallel state dict, optimizer, step, EMA shadow parameters."""
    wrapped = nn.DataParallel(model)
    shadow = [p.detach() * ema_factor for p in model.parameters() if p.requires_grad]
    torch.save({"model": wrapped.state_dict(), "optimizer": torch.optim.Adam(wrapped.parameters()).state_dict(),
                "step": 3, "ema": {"decay": 0.999, "num_updates": 3, "shadow_params": shadow}}, path)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p, s in zip([p for p in ema.parameters() if p.requires_grad], shadow):
            p.copy_(s)
    return ema


@pytest.mark.parametrize("case", ["ncsnpp_ve", "ddpm_vp"])
def test_checkpoint_loads_into_fastsde_classes(tmp_path, case):
    theirs, config, x, labels = _theirs(case)
    path = tmp_path / "checkpoint_3.pth"
    ema = _save_checkpoint(theirs, path)
    for use_ema, ref in ((False, theirs), (True, ema)):
        ours = checkpoint.load_model(path, config, ema=use_ema)
        assert type(ours) is (NCSNpp if case == "ncsnpp_ve" else DDPM) and not ours.training
        with torch.no_grad():
            got, want = ours(x, labels), ref(x, labels)
        _check_close(got, want, _truth(ref, x, labels))
    wrong = _config(case, num_res_blocks=2)
    with pytest.raises(RuntimeError, match="Missing key"):
        checkpoint.load_model(path, wrong)


def test_convert_then_load_gives_the_same_network(tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fastsde.cli import main
    from fastsde.digits.pretrained import load_score_model

    theirs, config, x, labels = _theirs("ncsnpp_ve")
    path, out = tmp_path / "checkpoint_3.pth", tmp_path / "ncsnpp.safetensors"
    ema = _save_checkpoint(theirs, path)
    fields = _fields(config, continuous=True, sde="vesde")
    assert main(["convert", str(path), "--config", json.dumps(fields), "--ema", "--out", str(out)]) == 0
    assert "score_sde ncsnpp (3x16x16, nf=32, ve SDE) with its EMA weights" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "fastsde.score_sde/1" and meta["architecture"] == "ncsnpp"
    assert json.loads(meta["fastsde.sde"]) == {"name": "ve", "kwargs": {"sigma_min": 0.01, "sigma_max": 50.0}}
    assert ScoreSDEConfig.from_json(meta["config"]) == ScoreSDEConfig.from_any(fields)
    fresh, _, _, _ = _theirs("ncsnpp_ve")
    fresh.load_state_dict(load_file(str(out)))  # score_sde's own class reads the file too: the keys are its keys
    truth = _truth(ema, x, labels)
    with torch.no_grad():
        want = ema(x, labels)
        assert torch.equal(fresh(x, labels), want)
        for reference in (False, True):
            model = load_model_file(str(out), reference=reference)
            assert model.accelerate is not reference
            _check_close(model(x, labels), want, truth)
        mf = load_score_model(str(out))
    assert (mf.sde_name, mf.sde_kwargs, mf.centered) == ("ve", {"sigma_min": 0.01, "sigma_max": 50.0}, False)
    assert mf.training == {"source": "score_sde checkpoint", "checkpoint": "checkpoint_3.pth", "ema": True}
    assert mf.make_sde(N=10).sigma_max == 50.0


def test_convert_refuses_a_config_that_does_not_fit_the_weights(tmp_path, capsys):
    from fastsde.cli import main

    theirs, _, _, _ = _theirs("ddpmpp_vp")
    path = tmp_path / "checkpoint_1.pth"
    _save_checkpoint(theirs, path)
    out = tmp_path / "x.safetensors"
    assert main(["convert", str(path), "--config", "vp/cifar10_ddpmpp_continuous", "--out", str(out)]) == 1
    assert "does not hold a ncsnpp network of this config" in capsys.readouterr().err and not out.exists()
    assert main(["convert", str(path), "--config", json.dumps({"name": "ncsnpp", "nf": 32}), "--out",
                 str(out)]) == 1
    assert "config sde (score_sde's training.sde) must be one of vesde, vpsde, subvpsde" in capsys.readouterr().err


@pytest.mark.parametrize("channels, code", [(1, 0), (3, 1)])
def test_sample_runs_a_converted_model(tmp_path, capsys, channels, code):
    """`fastsde sample --model FILE` samples a converted 1x16x16 model; other shapes get one line saying why not."""
    from fastsde.cli import main

    config = _config("ddpmpp_vp")
    config.data.num_channels = channels
    torch.manual_seed(1)
    model = ssl.NCSNpp(config).eval()
    path, out = tmp_path / "checkpoint_1.pth", tmp_path / "ddpmpp.safetensors"
    _save_checkpoint(model, path)
    fields = _fields(config, sde="vpsde")
    assert main(["convert", str(path), "--config", json.dumps(fields), "--ema", "--out", str(out)]) == 0
    capsys.readouterr()
    got = main(["sample", "--model", str(out), "--steps", "3", "--n", "4", "--threads", "1", "--no-plot",
                "--no-progress", "--json", "--out", str(tmp_path / "s")])
    stdout, err = capsys.readouterr()
    assert got == code
    if code == 0:
        report = json.loads(stdout)
        assert report["model"] == "ddpmpp.safetensors" and report["n"] == 4 and report["nonfinite"] == 0
    else:
        assert "the image commands handle 1x16x16 digits models, this one is 3x16x16" in err


def test_create_model_by_score_sde_name():
    """compat.score_sde.models.utils.create_model(config) builds fastsde's class for score_sde's model names."""

    from fastsde.compat.score_sde.models import utils as mutils
    from fastsde.models.score_sde_nets import DDPM, NCSNpp

    assert mutils.get_model("ncsnpp") is NCSNpp and mutils.get_model("ddpm") is DDPM
