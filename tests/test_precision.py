"""Mixed precision (fastsde.precision): the model in bfloat16/float16, the sampler state in float32.

The step ops read a half-precision model output beside a float32 state in one pass: every backend against the
reference in float64 from the same half output, and bit-identical to the step on its exact float32 conversion. The
samplers plumb `precision=` through (fused loop, reference loop, solvers, ODE), the fused U-Net runs in bf16/fp16
without falling back, training autocasts with float32 master weights, and the quality guard compares bf16 with fp32
samples of the shipped digits model and of the analytic mixtures.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fastsde import metrics, precision as prec, sampling
from fastsde import sde as sde_lib
from fastsde.models import analytic
from fastsde.ops import loop as loop_ops
from fastsde.ops import step as ops
from fastsde.reference import step as ref

pytestmark = pytest.mark.usefixtures("one_thread")

HALF = [torch.bfloat16, torch.float16]
BACKENDS = ["reference", "native", "triton"]


def _backend_or_skip(backend):
    from fastsde.ops.dispatch import backend_available

    ok, why = backend_available(backend, torch.device("cpu"))
    if not ok:
        pytest.skip(why)


def _inputs(shape, half, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    score = torch.randn(shape, generator=g).to(half)  # a half-precision model output
    noise = torch.randn(shape, generator=g)
    return x, score, noise


# ---------------------------------------------------------------------------------------------- the public ops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 1, 16, 16)])  # nothing divides a block; an image batch
def test_affine_and_langevin_steps_read_the_half_score(backend, half, shape):
    """err(op, ref64) <= 2 err(ref32, ref64) + atol with ref64 computed from the same half score, and the op on the
    half score equals the op on its exact float32 conversion, bit for bit (the load is the conversion)."""
    _backend_or_skip(backend)
    x, s, _ = _inputs(shape, half)
    a = torch.rand(shape[0], dtype=torch.float64) + 0.5
    b = torch.rand(shape[0], dtype=torch.float64) + 0.5
    c = torch.rand(shape[0], dtype=torch.float64) + 0.5
    kw = dict(seed=2**64 - 3, sample_ids=torch.arange(shape[0]) + 7, draw=2**33 + 1)
    xm = torch.full_like(x, float("nan"))
    out = ops.affine_step(x, s, a, b, c, x_mean_out=xm, backend=backend, **kw)
    assert out.dtype == torch.float32 and xm.dtype == torch.float32
    r64 = ref.affine_step(x.double(), s.double(), a, b, c, **kw)
    r32 = ref.affine_step(x, s, a, b, c, **kw)
    err_ref = (r32.double() - r64).abs().max().item()
    assert (out.double() - r64).abs().max().item() <= 2 * err_ref + 2e-6 * c.max().item()
    assert torch.equal(out, ops.affine_step(x, s.float(), a, b, c, backend=backend, **kw))
    # Langevin: the norms of the half score, then the update; identical to the float32 conversion's
    got = ops.langevin_step(x, s, 0.16, 0.3, backend=backend, **kw)
    want = ops.langevin_step(x, s.float(), 0.16, 0.3, backend=backend, **kw)
    assert torch.equal(got, want)
    want64 = ref.langevin_step(x.double(), s.double(), 0.16, 0.3, **kw)
    assert (got.double() - want64).abs().max().item() <= 1e-5 * want64.abs().max().item()
    sq = ops.step_sq_norms(s, backend=backend, **kw)
    torch.testing.assert_close(sq, ref.step_sq_norms(s.double(), **kw), rtol=2e-6, atol=0)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize("half", HALF)
def test_affine_combine_step_reads_half_outputs(backend, half):
    x, s, d = _inputs((4, 37), half, seed=1)
    outputs = [s, d.to(half)]
    got = ops.affine_combine_step(x, outputs, 0.9, [0.3, -0.2], 0.1, seed=5, backend=backend)
    want = ops.affine_combine_step(x, [o.float() for o in outputs], 0.9, [0.3, -0.2], 0.1, seed=5, backend=backend)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    steps = ops.CombineSteps(x.clone(), 5, None, backend)
    assert steps.accepts(s) and not steps.accepts(s.double())


def test_score_dtype_rules_and_messages():
    x, s, noise = _inputs((2, 9), torch.bfloat16)
    for bad in (s.double(), s.float().double()):
        with pytest.raises(ValueError, match=r"score must match x: expected shape \(2, 9\) torch.float32 or "
                                             r"torch.bfloat16 or torch.float16"):
            ops.affine_step(x, bad, 1.0, 1.0)
    with pytest.raises(ValueError, match="score must match x"):  # a float16 state reads float16 scores only
        ops.affine_step(x.half(), s, 1.0, 1.0)
    with pytest.raises(ValueError, match="score must match noise"):
        ops.step_sq_norms(s, noise=noise.half())
    with pytest.raises(ValueError, match="noise must match x"):  # checked before the norms run
        ops.langevin_step(x, s, 0.16, 0.3, noise=noise.double())
    # float32 scores beside a float64 state are read directly as well
    out = ops.affine_step(x.double(), s.float(), 1.0, 0.5, backend="native")
    torch.testing.assert_close(out, x.double() + 0.5 * s.double(), rtol=0, atol=0)


@pytest.mark.parametrize("half", HALF)
def test_loop_ops_take_the_half_model_output(half):
    """fastsde.ops.loop (the fused PC loop's ops) with a half score: identical to its float32 conversion."""
    x, s, _ = _inputs((3, 40), half, seed=2)
    table = torch.tensor([[0.9, 1.1], [0.2, 0.3], [0.5, 0.4]], dtype=torch.float64)
    lang = torch.tensor([[0.3, 0.2]], dtype=torch.float64)
    step, seed, ids = torch.tensor(1), loop_ops.seed_tensor(9, "cpu"), torch.arange(3)
    results = []
    for score in (s, s.float()):
        xa, xm = x.clone(), torch.empty_like(x)
        loop_ops.loop_affine_(xa, xm, score, table, step, seed, ids, 1, 2, None, None, None, None, 0, "native")
        xl, xml = x.clone(), torch.empty_like(x)
        scratch = loop_ops.langevin_scratch(x)
        loop_ops.loop_langevin_(xl, xml, scratch, score, lang, 0.16, step, seed, ids, 1, 2, None, None, None, None,
                                0, "native")
        results.append((xa, xm, xl, xml))
    for got, want in zip(*results):
        assert torch.equal(got, want)


# ---------------------------------------------------------------------------------------------- fastsde.precision


def test_auto_follows_the_cpu_flags(monkeypatch):
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    for flags, want in [({"avx512f", "avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16"), ({"avx512f", "avx2"}, "fp32"),
                        (set(), "fp32")]:
        monkeypatch.setattr(prec, "_cpu_flags", lambda flags=flags: frozenset(flags))
        assert prec.resolve_precision("auto", "cpu") == want
        assert prec.native_bf16("cpu")[0] == (want == "bf16")
    assert prec.resolve_precision("fp16", "cpu") == "fp16" and prec.resolve_precision(None) is None


def test_auto_follows_a_onednn_isa_cap(monkeypatch):
    """A oneDNN cap below AVX512_CORE_BF16 (scripts/emulate_cpu.sh, or a user's) makes bf16 emulated: auto -> fp32."""
    monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    for name, value, want in [("ONEDNN_MAX_CPU_ISA", "AVX2", "fp32"), ("ONEDNN_MAX_CPU_ISA", "avx512_core", "fp32"),
                              ("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI", "fp32"),
                              ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", "bf16"),
                              ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", "bf16"), ("ONEDNN_MAX_CPU_ISA", "ALL", "bf16")]:
        monkeypatch.setenv(name, value)
        native, why = prec.native_bf16("cpu")
        assert prec.resolve_precision("auto", "cpu") == want, (name, value, why)
        assert native == (want == "bf16") and (native or f"{name}={value.upper()}" in why)
        monkeypatch.delenv(name)
    # oneDNN reads DNNL_MAX_CPU_ISA only when ONEDNN_MAX_CPU_ISA is unset
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert prec.native_bf16("cpu")[0]


def test_precision_names_and_state_dtypes():
    assert prec.precision_dtype("bf16") == torch.bfloat16 and prec.precision_dtype(None, torch.float64) == torch.float64
    assert prec.precision_dtype("fp32", torch.float64) == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        prec.precision_dtype("int8")
    with pytest.raises(ValueError, match="needs a float32 sampler state"):
        prec.precision_dtype("bf16", torch.float64)
    sde = sde_lib.VPSDE(N=10)
    with pytest.raises(ValueError, match="needs a float32 sampler state"):
        sampling.get_pc_sampler(sde, (2, 2), "euler_maruyama", "none", lambda v: v, 0.16, dtype=torch.float64,
                                precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        sampling.get_ode_sampler(sde, (2, 2), lambda v: v, precision="half")


def _small_unet(**kw):
    from fastsde.models.ncsnpp import UNet, get_preset

    torch.manual_seed(0)
    model = UNet(get_preset("small16", "ve", in_channels=1, **kw)).eval()
    with torch.no_grad():  # the zero-initialised output layers would hide every difference
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_precision_model_casts_weights_keeps_fourier_and_refreshes():
    model = _small_unet()
    pm = prec.PrecisionModel(model, torch.bfloat16).refresh()
    assert pm.model.Dense_0.weight.dtype == torch.bfloat16 and pm.model.fourier.W.dtype == torch.float32
    assert model.Dense_0.weight.dtype == torch.float32  # the source is untouched
    x, labels = torch.rand(2, 1, 16, 16), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        y = pm(x, labels)
        assert y.dtype == torch.bfloat16
        model.head[2].bias.data.copy_(model.head[2].bias + 1.0)  # an EMA-style swap: no version bump
        assert torch.equal(pm(x, labels), y)  # not refreshed yet: the cast copy
        y2 = pm.refresh()(x, labels)
    assert not torch.equal(y2, y)
    cache = {}
    a = prec.for_sampling(model, "bf16", torch.float32, cache)
    assert prec.for_sampling(model, "bf16", torch.float32, cache) is a
    assert prec.for_sampling(model, "fp32", torch.float32, cache) is model


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("memory_format", [None, torch.contiguous_format, torch.channels_last])
def test_fused_unet_runs_in_half_without_falling_back(monkeypatch, half, memory_format):
    """Every fused GroupNorm / attention call of the U-Net resolves to native in bf16/fp16 (float32 statistics and
    accumulation inside), in both layouts, and the output stays close to the float32 reference build's."""
    import fastsde.ops.attention as attention_ops
    import fastsde.ops.groupnorm as groupnorm_ops
    from fastsde.models.ncsnpp import UNet

    _backend_or_skip("native")
    model = _small_unet()
    model.memory_format = memory_format
    plain = UNet(model.config, reference=True).eval()
    plain.load_state_dict(model.state_dict())
    seen = []
    for module in (groupnorm_ops, attention_ops):
        real = module.resolve

        def spy(op, backend, device, real=real):
            name, impl = real(op, backend, device)
            seen.append((op, name))
            return name, impl

        monkeypatch.setattr(module, "resolve", spy)
    x, labels = torch.rand(3, 1, 16, 16), torch.tensor([0.02, 0.7, 9.0])
    with torch.no_grad():
        y = prec.PrecisionModel(model, half).refresh()(x, labels)
        y32 = plain(x, labels)
    assert y.dtype == half and y.shape == x.shape and y.is_contiguous()
    assert seen and all(name == "native" for _, name in seen), seen
    assert {op for op, _ in seen} == {"group_norm", "attn_block"}
    # measured: max |y - y32| / max |y32| = 0.6% (bf16), 0.1% (fp16) on this model; 8 bits / 11 bits of mantissa
    err = ((y.float() - y32).abs().max() / y32.abs().max()).item()
    assert err < (3e-2 if half == torch.bfloat16 else 5e-3), err


# ---------------------------------------------------------------------------------------------- the samplers


class _Widened(torch.nn.Module):
    """The half model's output converted to float32 outside the sampler: what the fused steps must read it as."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, labels):
        return self.model(x, labels).float()


@pytest.mark.parametrize("half", HALF)
@pytest.mark.parametrize("corrector", ["langevin", "none"])
def test_pc_sampler_in_half_reads_the_model_output_directly(half, corrector):
    """get_pc_sampler(precision=...) equals the fused loop on the same half model's output widened to float32 by
    the caller, bit for bit: the half output goes into the steps without a conversion, and nothing else changes."""
    model = _small_unet()
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=4)
    make = lambda precision: sampling.get_pc_sampler(  # noqa: E731
        sde, (2, 1, 16, 16), "reverse_diffusion", corrector, lambda v: v, 0.16, continuous=True, seed=3,
        backend="native", precision=precision)
    sampler = make("bf16" if half == torch.bfloat16 else "fp16")
    x, _ = sampler(model)
    widened = _Widened(prec.PrecisionModel(model, half).refresh())
    x_ref, _ = make(None)(widened)
    assert sampler.precision in ("bf16", "fp16") and x.dtype == torch.float32
    assert torch.equal(x, x_ref)
    # the reference loop (score_sde's update_fn) on the same half model agrees to float tolerance after 4 steps
    x_loop, _ = sampling.get_pc_sampler(sde, (2, 1, 16, 16), "reverse_diffusion", corrector, lambda v: v, 0.16,
                                        continuous=True, seed=3, backend="reference",
                                        precision=sampler.precision)(model)
    torch.testing.assert_close(x_loop, x, rtol=0, atol=1e-3 * x.abs().max().item())


def test_solver_and_ode_samplers_take_precision():
    from fastsde import solvers

    model = _small_unet()
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=100)
    for name in ("dpmpp_2m", "euler_ancestral"):
        got = solvers.get_sampler(name, sde, (2, 1, 16, 16), 4, seed=1, precision="bf16")
        want = solvers.get_sampler(name, sde, (2, 1, 16, 16), 4, seed=1)
        x, evals = got(model)
        x32, _ = want(_Widened(prec.PrecisionModel(model, torch.bfloat16).refresh()))
        assert got.precision == "bf16" and x.dtype == torch.float32 and evals > 0
        torch.testing.assert_close(x, x32, rtol=0, atol=1e-5 * x32.abs().max().item())
    ode = sampling.get_ode_sampler(sde, (1, 1, 16, 16), lambda v: v, rtol=1e-2, atol=1e-2, seed=1, precision="bf16")
    x, nfe = ode(model)
    assert ode.precision == "bf16" and x.dtype == torch.float32 and torch.isfinite(x).all() and nfe > 0


@pytest.mark.parametrize("sde_name, predictor, corrector", [
    ("vp", "euler_maruyama", "none"),
    ("ve", "reverse_diffusion", "langevin"),
])
def test_analytic_mixture_statistics_hold_in_bf16(sde_name, predictor, corrector):
    """The exact mixture score run in bf16 (input and output rounded to 8 bits) samples the ring as fp32 does:
    moments and sliced W2 against exact samples within the same bounds (test_cli's)."""
    mixture = analytic.get_mixture("ring")
    sde = sde_lib.VPSDE(N=200) if sde_name == "vp" else sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=200)
    model = analytic.AnalyticScoreModel(mixture, sde, continuous=True)
    n = 512
    reference = mixture.sample(n, generator=torch.Generator().manual_seed(1))
    null = float(np.median(metrics.sliced_wasserstein_null(mixture, n, repeats=10, sample_seed=2)))
    stats = {}
    for precision in (None, "bf16"):
        x, _ = sampling.get_pc_sampler(sde, (n, 2), predictor, corrector, lambda v: v, 0.16, continuous=True,
                                       seed=1, precision=precision)(model)
        stats[precision] = (metrics.sliced_wasserstein(x, reference), metrics.moment_errors(x, mixture))
        assert torch.isfinite(x).all()
        assert stats[precision][0] < 3 * null, stats
        assert stats[precision][1]["cov_rel_err"] < 0.2, stats
    # the same seed: bf16 moves the samples far less than their spread
    assert abs(stats["bf16"][0] - stats[None][0]) < 0.5 * null, stats


# ---------------------------------------------------------------------------------------------- training


def _train_config(**kw):
    from fastsde.digits import training

    base = dict(sde="vp", batch_size=8, steps=8, checkpoint_every=4, snapshot_every=1000, snapshot_steps=2,
                warmup=5, lr=1e-3)
    return training.TrainConfig(**{**base, **kw})


def test_training_autocast_keeps_float32_master_weights_and_resumes(tmp_path, monkeypatch):
    """bf16 autocast: float32 weights, finite losses, and a killed run resumes bit for bit (the autocast policy is
    part of the run's config)."""
    from fastsde.digits import training

    with pytest.raises(ValueError, match="precision must be one of"):
        _train_config(precision="int8")
    config = _train_config(precision="bf16")
    straight = training.Trainer(config, str(tmp_path / "a"), progress=False, command="test")
    straight.run()
    assert all(p.dtype == torch.float32 for p in straight.model.parameters())
    assert all(np.isfinite(straight.losses)) and len(straight.losses) == 8
    step = training.Trainer.train_step

    def killed(self):
        if self.step == 6:
            raise SystemExit("killed")
        return step(self)

    monkeypatch.setattr(training.Trainer, "train_step", killed)
    with pytest.raises(SystemExit):
        training.Trainer(config, str(tmp_path / "b"), progress=False, command="test").run()
    monkeypatch.setattr(training.Trainer, "train_step", step)
    resumed = training.Trainer(config, str(tmp_path / "b"), progress=False, command="test")
    assert resumed.resumed and resumed.step == 4
    resumed.run()
    assert resumed.losses == straight.losses
    assert all(torch.equal(a, b) for a, b in zip(straight.model.state_dict().values(),
                                                  resumed.model.state_dict().values()))
    with pytest.raises(ValueError, match="different run"):  # a checkpoint of another precision is refused
        training.Trainer(_train_config(precision="fp32"), str(tmp_path / "a"), progress=False, command="test")


def test_training_fp16_scales_the_loss_and_checkpoints_the_scaler(tmp_path):
    """fp16 autocast adds a gradient scaler whose state travels in the checkpoint (CPU fp16 is slow: 2 steps)."""
    from fastsde.digits import training

    trainer = training.Trainer(_train_config(precision="fp16", steps=2, checkpoint_every=1), str(tmp_path),
                               progress=False, command="test")
    trainer.run()
    assert trainer.grad_scaler.is_enabled() and all(np.isfinite(trainer.losses))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] == trainer.grad_scaler.get_scale()


# ---------------------------------------------------------------------------------------------- the command line


def _run(capsys, *argv):
    from fastsde import cli

    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_command_reports_the_precision(capsys, tmp_path, monkeypatch):
    code, out, err = _run(capsys, "sample", "--model", "gmm", "--sde", "vp", "--steps", "10", "--n", "32",
                          "--threads", "1", "--no-plot", "--no-progress", "--json", "--out", str(tmp_path / "g"))
    assert code == 0, err
    r = json.loads(out)
    assert r["precision"] == "fp32" and r["precision_reason"].startswith("auto")  # an exact score stays fp32
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # scripts/emulate_cpu.sh sets one
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset({"avx512_bf16"}))
    code, out, err = _run(capsys, "sample", "--n", "4", "--steps", "3", "--threads", "1", "--no-plot",
                          "--no-progress", "--json", "--out", str(tmp_path / "d"))
    assert code == 0, err
    r = json.loads(out)
    assert r["precision"] == "bf16" and "avx512_bf16" in r["precision_reason"]
    monkeypatch.setattr(prec, "_cpu_flags", lambda: frozenset())
    code, out, err = _run(capsys, "sample", "--n", "4", "--steps", "3", "--threads", "1", "--no-plot",
                          "--no-progress", "--out", str(tmp_path / "d"))
    assert code == 0, err
    assert "model fp32 (auto: CPU has neither" in out
    code, out, err = _run(capsys, "sample", "--n", "4", "--steps", "3", "--threads", "1", "--no-plot",
                          "--no-progress", "--precision", "fp16", "--sampler", "euler", "--json", "--out",
                          str(tmp_path / "e"))
    assert code == 0, err
    assert json.loads(out)["precision"] == "fp16"


# ---------------------------------------------------------------------------------------------- the quality guard


@pytest.mark.slow
def test_bf16_digits_quality_matches_fp32(capsys):
    """FD of 256 digits (128 where bf16 is emulated) of the shipped model in bf16 vs fp32, same seed and sampler:
    the difference lies within the spread of real-vs-real FD over seeds at the same n (the metric's own noise), and
    the class entropy moves by at most 0.01.

    The sampler is sized to the CPU. Where bf16 is native (AVX512-BF16/AMX) it is PC with 100 steps (200 model
    evaluations: the long accumulation a half model output feeds, ~3 min on one thread). Where oneDNN emulates bf16
    (an AVX2-only or AVX-512-only CPU: a bf16 U-Net call costs ~20x a float32 one, so PC would take ~40 min), it is
    the main job's default solver (10 evaluations, what `--precision bf16` runs by default) on 128 digits (~1 min;
    the bound is then the real-vs-real spread at 128) -- `auto` never picks bf16 on such a CPU, so the guard there
    checks the path a user must ask for."""
    from fastsde import solvers
    from fastsde.digits.data import get_data_inverse_scaler
    from fastsde.digits.evaluation import DigitsEvaluator
    from fastsde.digits.pretrained import DIGITS_DEFAULTS, load_score_model, shipped_path

    _backend_or_skip("native")
    native, why = prec.native_bf16("cpu")
    n = 256 if native else 128  # emulated: ~1 min of bf16 U-Net calls on this Xeon under the AVX2 cap
    evaluator = DigitsEvaluator()
    real = [evaluator.real_vs_real(n, seed=s) for s in range(5)]
    spread = max(real) - min(real)  # 12.2 .. 18.8 at n = 256, wider at 128
    mf = load_score_model(shipped_path(f"digits_{DIGITS_DEFAULTS['sde']}.safetensors"), backend="native")
    inverse = get_data_inverse_scaler(mf.centered)
    with capsys.disabled():
        print(f"\n  bf16 quality guard: {'PC, 100 steps' if native else DIGITS_DEFAULTS['sampler']} ({why})")
    quality = {}
    for precision in ("fp32", "bf16"):
        if native:
            sampler = sampling.get_pc_sampler(mf.make_sde(N=100), (n, 1, 16, 16), DIGITS_DEFAULTS["predictor"],
                                              DIGITS_DEFAULTS["corrector"], inverse, 0.16, continuous=True,
                                              eps=DIGITS_DEFAULTS["eps"], seed=0, precision=precision)
        else:
            sampler = solvers.get_sampler(DIGITS_DEFAULTS["sampler"], mf.make_sde(N=1000), (n, 1, 16, 16),
                                          DIGITS_DEFAULTS["solver_steps"], inverse_scaler=inverse,
                                          eps=DIGITS_DEFAULTS["eps"], seed=0, precision=precision)
        with torch.no_grad():
            x, _ = sampler(mf.model)
        quality[precision] = evaluator.evaluate(x.float().clamp(0, 1))
        assert quality[precision]["nonfinite"] == 0
    fd32, fd16 = quality["fp32"]["fd"], quality["bf16"]["fd"]
    assert abs(fd16 - fd32) <= spread, (fd32, fd16, real)
    assert abs(quality["bf16"]["classes"]["entropy"] - quality["fp32"]["classes"]["entropy"]) <= 0.01, quality
