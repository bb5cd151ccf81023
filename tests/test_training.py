"""Training: the DSM objective against its exact value, EMA, and resumable runs that lose nothing."""
import math

import numpy as np
import pytest
import torch

from fastsde.digits import training
from fastsde.models.analytic import AnalyticScoreModel, isotropic_gaussian


pytestmark = pytest.mark.usefixtures("one_thread")


def _expected_dsm(sde, s0, eps, likelihood_weighting):
    """E_t E ||...||^2 per dimension for data N(0, s0^2 I) and the exact score (module-level derivation below)."""
    t = torch.linspace(eps, sde.T, 200001, dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(t.shape[0], 1, dtype=torch.float64), t)
    m, std = mean[:, 0], std.double()
    v = m**2 * s0**2 + std**2
    # x_t = m x0 + std z, exact score -x_t / v: std s + z = z (1 - std^2 / v) - std m x0 / v, whose per-dimension
    # second moment is m^2 s0^2 / v; likelihood weighting uses g^2 || s + z / std ||^2 = g^2 m^2 s0^2 / (v std^2).
    per_t = m**2 * s0**2 / v
    if likelihood_weighting:
        g = sde.sde(torch.zeros(t.shape[0], 1, dtype=torch.float64), t)[1].double()
        per_t = per_t * g**2 / std**2
    return float(torch.trapezoid(per_t, t) / (sde.T - eps))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("likelihood_weighting", [False, True])
def test_dsm_loss_of_the_exact_score_matches_its_expectation(name, likelihood_weighting):
    sde = training.make_sde(name)
    s0, dim, eps = 0.7, 4, 1e-2
    model = AnalyticScoreModel(isotropic_gaussian(dim, std=s0), sde, continuous=True)
    loss_fn = training.get_sde_loss_fn(sde, train=False, reduce_mean=True, likelihood_weighting=likelihood_weighting,
                                       eps=eps)
    gen = torch.Generator().manual_seed(0)
    values = []
    for _ in range(8):
        x0 = s0 * torch.randn(20000, dim, generator=gen, dtype=torch.float64)
        values.append(float(loss_fn(model, x0, generator=gen)))
    got, err = np.mean(values), np.std(values) / math.sqrt(len(values))
    want = _expected_dsm(sde, s0, eps, likelihood_weighting)
    assert abs(got - want) < 4 * err + 1e-3 * want, (got, want, err)


def test_reduce_sum_is_dim_times_mean():
    sde = training.make_sde("vp")
    model = AnalyticScoreModel(isotropic_gaussian(3, std=1.0), sde, continuous=True)
    x0 = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mean = training.get_sde_loss_fn(sde, reduce_mean=True)(model, x0, torch.Generator().manual_seed(2))
    total = training.get_sde_loss_fn(sde, reduce_mean=False)(model, x0, torch.Generator().manual_seed(2))
    torch.testing.assert_close(total, 3 * mean)


def test_ema_follows_its_formula():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = training.ExponentialMovingAverage([p], decay=0.9)
    shadow = torch.zeros(3)
    for n in range(1, 6):
        with torch.no_grad():
            p.add_(1.0)
        ema.update([p])
        d = min(0.9, (1 + n) / (10 + n))
        shadow = d * shadow + (1 - d) * p.detach()
        torch.testing.assert_close(ema.shadow[0], shadow)
    q = torch.nn.Parameter(torch.ones(3))
    ema.copy_to([q])
    torch.testing.assert_close(q.detach(), shadow)


def _config(**kw):
    base = dict(sde="vp", batch_size=8, steps=12, checkpoint_every=4, snapshot_every=1000, snapshot_steps=2,
                warmup=5, lr=1e-3)
    return training.TrainConfig(**{**base, **kw})


def test_training_lowers_the_loss(tmp_path):
    trainer = training.Trainer(_config(batch_size=16, steps=60), str(tmp_path), progress=False, command="test")
    batch = trainer.data[:64]

    def held_out_loss():
        trainer.model.eval()
        with torch.no_grad():
            return float(trainer.loss_fn(trainer.model, batch, generator=torch.Generator().manual_seed(5)))

    before = held_out_loss()
    summary = trainer.run()
    after = held_out_loss()
    assert summary["steps"] == 60 and after < 0.6 * before, (before, after)
    for name in ("checkpoint.pt", "model.safetensors", "train_summary.json", "samples_000060.png"):
        assert (tmp_path / name).exists(), name


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_killed_run_resumes_from_its_last_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    straight = training.Trainer(_config(), str(tmp_path / "a"), progress=False, command="test")
    straight.run()

    step = training.Trainer.train_step

    def killed(self):
        if self.step == 10:  # a hard stop after the checkpoint at step 8, before the one at 12
            raise SystemExit("killed")
        return step(self)

    monkeypatch.setattr(training.Trainer, "train_step", killed)
    with pytest.raises(SystemExit):
        training.Trainer(_config(), str(tmp_path / "b"), progress=False, command="test").run()
    monkeypatch.setattr(training.Trainer, "train_step", step)

    resumed = training.Trainer(_config(), str(tmp_path / "b"), progress=False, command="test")
    assert resumed.resumed and resumed.step == 8
    resumed.run()
    assert resumed.step == 12 and resumed.losses == straight.losses
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(straight.ema.shadow, resumed.ema.shadow))


def test_ctrl_c_saves_the_step_it_finished_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    import os
    import signal

    straight = training.Trainer(_config(), str(tmp_path / "a"), progress=False, command="test")
    straight.run()
    step = training.Trainer.train_step

    def signalled(self):
        if self.step == 9:  # the signal arrives mid-step: the step completes, then the run stops with a checkpoint
            os.kill(os.getpid(), signal.SIGINT)
        return step(self)

    monkeypatch.setattr(training.Trainer, "train_step", signalled)
    logs = []
    with pytest.raises(KeyboardInterrupt):
        training.Trainer(_config(), str(tmp_path / "b"), progress=False, command="test", log=logs.append).run()
    monkeypatch.setattr(training.Trainer, "train_step", step)
    assert "interrupted at step 10/12" in logs[-1]
    resumed = training.Trainer(_config(), str(tmp_path / "b"), progress=False, command="test")
    assert resumed.step == 10
    resumed.run()
    a, b = _weights(straight), _weights(resumed)
    assert resumed.losses == straight.losses and all(torch.equal(a[k], b[k]) for k in a)


def test_more_steps_continue_a_finished_run_and_other_options_are_refused(tmp_path):
    training.Trainer(_config(steps=4), str(tmp_path), progress=False, command="test").run()
    more = training.Trainer(_config(steps=8), str(tmp_path), progress=False, command="test")
    assert more.resumed and more.step == 4
    with pytest.raises(ValueError, match="different run"):
        training.Trainer(_config(steps=8, lr=5e-4), str(tmp_path), progress=False, command="test")


def test_exported_model_carries_ema_weights_sde_and_command(tmp_path):
    from fastsde.digits.pretrained import load_score_model

    trainer = training.Trainer(_config(steps=4), str(tmp_path), progress=False, command="fastsde train --x")
    trainer.run()
    mf = load_score_model(str(tmp_path / "model.safetensors"))
    assert mf.sde_name == "vp" and mf.sde_kwargs == {"beta_min": 0.1, "beta_max": 20.0}
    assert mf.training["command"] == "fastsde train --x" and mf.training["steps_done"] == 4
    ema, loaded = trainer.ema_model().state_dict(), mf.model.state_dict()
    assert ema.keys() == loaded.keys() and all(torch.equal(ema[k], loaded[k]) for k in ema)
    assert not all(torch.equal(ema[k], v) for k, v in trainer.model.state_dict().items())  # EMA, not the raw weights
    assert mf.make_sde(N=10).N == 10


@pytest.mark.parametrize("kwargs", [dict(sde="vpp"), dict(steps=0), dict(lr=0.0), dict(grad_clip=-1.0)])
def test_bad_config(kwargs):
    with pytest.raises(ValueError):
        training.TrainConfig(**kwargs)
