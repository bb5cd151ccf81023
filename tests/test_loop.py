"""PC on the executor (fastsde/executor.py, fastsde/sampling/pc.py pc_program): compiled vs eager vs reference, no
graph breaks and no recompilation over the N steps, no host sync or sampler allocation per step
(fastsde.capture_safety), with a check that the harness itself can fail; the executor's update ops on every
backend against the reference."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import fastsde
from fastsde import controllable
from fastsde.capture_safety import CaptureMonitor, HostSyncError, step_boundary
from fastsde.models import analytic
from fastsde.ops.dispatch import backend_available

CPU = torch.device("cpu")
FUSED = [b for b in ("native", "triton") if backend_available(b, CPU)[0]]
# (sde name, predictor, corrector, n_steps): every fused kind — affine predictors, Langevin, ALD, identities.
COMBOS = [
    ("ve", "reverse_diffusion", "langevin", 1),
    ("vp", "euler_maruyama", "none", 1),
    ("vp", "ancestral_sampling", "ald", 2),
    ("subvp", "none", "langevin", 1),
]


def _sde(name, N):
    return {"ve": fastsde.VESDE(sigma_max=5.0, N=N), "vp": fastsde.VPSDE(N=N), "subvp": fastsde.subVPSDE(N=N)}[name]


def _model(sde):
    return analytic.AnalyticScoreModel(analytic.get_mixture("ring"), sde, continuous=True)


def _sampler(sde, pred, corr, n_steps, batch=64, **kw):
    eps = 1e-5 if isinstance(sde, fastsde.VESDE) else 1e-3
    return fastsde.get_pc_sampler(sde, (batch, 2), pred, corr, lambda x: x, 0.16, n_steps=n_steps, eps=eps, seed=7,
                                  **kw)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.parametrize("name,pred,corr,n_steps", COMBOS)
def test_compiled_equals_eager_and_reference(name, pred, corr, n_steps):
    """compile=True gives the eager fused loop's numbers (same kernels, same order) and both match the reference
    loop within float32 tolerance; two compiled runs are bit-identical; one graph, no break, no recompilation."""
    sde = _sde(name, 30)
    model = _model(sde)
    ref = _sampler(sde, pred, corr, n_steps, backend="reference")(model)[0]
    eager = _sampler(sde, pred, corr, n_steps, backend=FUSED[0])(model)[0]
    torch._dynamo.reset()
    counters.clear()
    compiled = _sampler(sde, pred, corr, n_steps, backend=FUSED[0], compile=True)
    a, b = compiled(model)[0], compiled(model)[0]
    assert torch.equal(a, b)
    assert torch.equal(a, eager)
    scale = ref.abs().max().item()
    assert (eager - ref).abs().max().item() <= 1e-4 * scale
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1


def test_fifty_steps_compile_once():
    """Dynamo's counters over a 50-step run: one frame compiled, no graph break, no recompilation (the step index
    is a tensor, not a Python constant)."""
    sde = _sde("ve", 50)
    torch._dynamo.reset()
    counters.clear()
    _sampler(sde, "reverse_diffusion", "langevin", 1, backend=FUSED[0], compile=True)(_model(sde))
    assert dict(counters["graph_break"]) == {}
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["aot_autograd"]["ok"] == 1  # one graph compiled: a recompilation would be a second


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("name,pred,corr,n_steps", COMBOS)
def test_eager_loop_has_no_host_sync_or_allocation_per_step(name, pred, corr, n_steps, backend):
    """Every fused PC program, native and Triton: 0 host syncs and 0 fresh tensors of the sampler's own after the
    first step -- but for Triton's Langevin step, whose norms kernel returns its (B, 2) sums: one per iteration.
    (Triton runs interpreted here: 21 steps of 8 samples.)"""
    N = 30 if backend == "native" else 21  # VP: N > beta_max
    sde = _sde(name, N)
    sampler = _sampler(sde, pred, corr, n_steps, batch=64 if backend == "native" else 8, backend=backend)
    with CaptureMonitor() as mon:
        sampler(mon.wrap_model(_model(sde)))
    assert mon.steps == N
    assert mon.syncs_after(1) == []
    per_step = n_steps if backend == "triton" and corr == "langevin" else 0
    assert mon.allocations_after(1) == per_step * (N - 1)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("kind", ["dpmpp_2m_sde", "dpm_solver_3", "euler_ancestral", "ode_fixed", "heat_ddim"])
def test_solver_ode_and_heat_programs_have_no_host_sync_or_allocation_per_step(kind, backend):
    """The few-step solvers, the fixed-step probability-flow ODE and the heat family's DCT-domain program on the
    executor: no host sync and no fresh tensor of the sampler's own after the first step, but the heat model's
    DCT transforms around the model call (idct2 in, dct2 out: two matmuls each)."""
    from fastsde import solvers
    from fastsde.heat_sampler import get_heat_sampler
    from fastsde.models.analytic import AnalyticHeatModel, FrequencyMixture

    if kind == "heat_ddim":
        sde = fastsde.sde.make_sde("heat", N=100)
        g = torch.Generator().manual_seed(0)
        mix = FrequencyMixture(torch.ones(2, dtype=torch.float64),
                               torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64),
                               torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) + 0.1)
        model = AnalyticHeatModel(mix, sde)
        sampler = get_heat_sampler(sde, (8, 1, 4, 4), steps=12, eta=1.0, seed=1, backend=backend)
    else:
        sde = _sde("vp", 1000)
        model = _model(sde)
        if kind == "ode_fixed":
            sampler = fastsde.get_ode_sampler(sde, (16, 2), lambda x: x, method="fixed", steps=6, seed=1,
                                              backend=backend)
        else:
            sampler = solvers.get_sampler(kind, sde, (16, 2), 8, seed=1, backend=backend)
    with CaptureMonitor() as mon:
        sampler(mon.wrap_model(model))
    assert mon.steps >= 6
    per_step = 4 if kind == "heat_ddim" else 0
    assert mon.syncs_after(1) == [] and mon.allocations_after(1) == per_step * (mon.steps - 1)


def test_inpainting_and_guidance_loops_have_no_host_sync_or_allocation_per_step():
    """The projection-fused loop (inpainting) and the guided model (class guidance folded into the model output)
    run in the same loop: no sync, no allocation after the first step."""
    sde = _sde("ve", 10)
    model = _model(sde)
    data = torch.randn(16, 2)
    mask = torch.zeros(16, 2)
    mask[:, 0] = 1
    inpainter = controllable.get_pc_inpainter(sde, "reverse_diffusion", "langevin", lambda x: x, 0.16,
                                              continuous=True, backend=FUSED[0], seed=1)
    with CaptureMonitor() as mon:
        inpainter(mon.wrap_model(model), data, mask)
    assert mon.syncs_after(1) == [] and mon.allocations_after(1) == 0


def test_harness_rejects_a_loop_that_reads_the_host():
    """The harness can fail: a loop body calling .item() (or .tolist()) is reported, and raise_on_sync raises."""
    x = torch.randn(8)
    with CaptureMonitor() as mon:
        for _ in range(3):
            step_boundary()
            x.mul_(0.5)
            if x.sum().item() > 1e9:  # a data-dependent host branch
                break
            x.abs().tolist()
    assert [what for _, what in mon.syncs_after(1)].count("aten::_local_scalar_dense") == 2
    assert any(what == "Tensor.tolist" for _, what in mon.syncs_after(1))
    assert mon.allocations_after(1) > 0  # x.sum() and x.abs() are fresh tensors every step
    with pytest.raises(HostSyncError, match="step 1"):
        with CaptureMonitor(raise_on_sync=True):
            step_boundary()
            x.max().item()


def test_model_output_is_excluded_but_a_sampler_sync_is_not():
    """Syncs inside the model are the model's; the monitor counts only the sampler's."""

    class Chatty(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t):
            _ = x.sum().item()  # the model's own business
            return self.inner(x, t)

    sde = _sde("vp", 30)
    sampler = _sampler(sde, "euler_maruyama", "none", 1, backend=FUSED[0])
    with CaptureMonitor() as mon:
        sampler(mon.wrap_model(Chatty(_model(sde))))
    assert mon.syncs_after(1) == []


def test_compile_and_capture_arguments_are_checked():
    sde = _sde("vp", 5)
    with pytest.raises(ValueError, match="backend='reference'"):
        _sampler(sde, "euler_maruyama", "none", 1, backend="reference", compile=True)
    with pytest.raises(ValueError, match="noise='fastsde'"):
        _sampler(sde, "euler_maruyama", "none", 1, noise="torch", capture=True)
    with pytest.raises(TypeError, match="compile must be True or False"):
        _sampler(sde, "euler_maruyama", "none", 1, compile="yes")
    with pytest.raises(ValueError, match="capture_steps"):
        _sampler(sde, "euler_maruyama", "none", 1, capture=True, capture_steps=0)


def test_capture_on_cpu_runs_the_compiled_loop():
    """capture=True on CPU tensors is the compiled loop: same numbers as eager."""
    sde = _sde("ve", 10)
    model = _model(sde)
    eager = _sampler(sde, "reverse_diffusion", "langevin", 1, backend=FUSED[0])(model)[0]
    captured = _sampler(sde, "reverse_diffusion", "langevin", 1, backend=FUSED[0], capture=True)(model)[0]
    assert torch.equal(eager, captured)


def test_static_buffers_are_not_returned():
    """The loop keeps its state in static buffers (what a graph reads); the caller gets its own tensors, so a second
    call does not overwrite the first call's samples."""
    sde = _sde("ve", 8)
    model = _model(sde)
    sampler = fastsde.get_pc_sampler(sde, (16, 2), "reverse_diffusion", "none", lambda x: x, 0.16, eps=1e-5,
                                     seed=3, backend=FUSED[0])
    first = sampler(model)[0]
    kept = first.clone()
    sampler(model)
    assert torch.equal(first, kept)


def test_reused_inpainter_sees_new_data():
    """A fused loop is built once per model and reused; the projection's data and mask are copied in on every call,
    so a second call with other data gives what a fresh inpainter gives (never the first call's data)."""
    sde = _sde("ve", 8)
    model = _model(sde)
    make = lambda: controllable.get_pc_inpainter(sde, "reverse_diffusion", "none", lambda x: x, 0.16,  # noqa: E731
                                                 continuous=True, backend=FUSED[0], seed=2)
    mask = torch.zeros(8, 2)
    mask[:, 1] = 1
    first, second = torch.randn(8, 2), torch.randn(8, 2) + 3
    reused = make()
    reused(model, first, mask)
    assert torch.equal(reused(model, second, mask), make()(model, second, mask))


@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m_sde", "heun"])
def test_solver_compiled_and_captured_programs(name):
    """get_sampler(..., compile=True / capture=True): the kept program (the first model call eager, then the
    compiled eval step; capture on the CPU = compiled) gives the eager samples for each new start, with no graph break
    and one compiled graph for every Eval; a kept program fed a new start forgets the old one."""
    from fastsde import solvers

    sde = _sde("vp", 1000)
    model = _model(sde)
    make = lambda **kw: solvers.get_sampler(name, sde, (32, 2), 6, seed=4, **kw)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(32, 2, generator=g), torch.randn(32, 2, generator=g)
    eager = make()
    want = {1: eager(model, z1)[0], 2: eager(model, z2)[0]}
    assert not torch.equal(want[1], want[2])
    torch.testing.assert_close(eager(model, z1)[0], want[1], rtol=0, atol=0)  # the kept buffers start afresh
    for mode in ({"compile": True}, {"capture": True}):
        torch._dynamo.reset()
        counters.clear()
        sampler = make(**mode)
        for k in (1, 2, 1, 2):
            got = sampler(model, z1 if k == 1 else z2)[0]
            assert (got - want[k]).abs().max().item() <= 1e-5 * want[k].abs().max().item(), (mode, k)
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    with pytest.raises(TypeError, match="compile must be True or False"):
        make(compile=1)
    with pytest.raises(TypeError, match="capture must be True or False"):
        make(capture="yes")


def test_fused_loop_stops_on_non_finite_state():
    """A model returning NaN makes the fused loop raise one clear error after the steps (the watch is a device-side
    sum, read once), instead of returning NaN samples."""
    from fastsde.sampling.guard import NonFiniteError

    class Bad(torch.nn.Module):
        def forward(self, x, t):
            return torch.full_like(x, float("nan"))

    sde = _sde("vp", 30)
    with pytest.raises(NonFiniteError, match="non-finite during the 30 steps: 16 of 16 samples"):
        _sampler(sde, "euler_maruyama", "none", 1, batch=16, backend=FUSED[0])(Bad())


# ------------------------------------------------------------------------------- the executor's update ops
def _update_case(shape, score_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    score = torch.randn(*shape, generator=g).to(score_dtype)
    row = torch.rand(7, dtype=torch.float64, generator=g) + 0.1  # [a, b, -, -, c, data_a, data_c]
    lang = torch.tensor([float(torch.rand(1, generator=g)) * 0.1, -1 / (float(torch.rand(1, generator=g)) + 0.5),
                         *row[5:7].tolist()], dtype=torch.float64)  # [alpha, scale, data_a, data_c]
    mask = (torch.rand(*shape, generator=g) > 0.5).float()
    data = torch.randn(*shape, generator=g)
    return x, score, row, lang, mask, data


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", [(5, 2), (3, 1, 300)])  # the flat kernels and the chunked ones
@pytest.mark.parametrize("score_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["noisy", "noise_free", "projection", "langevin", "langevin_unscaled",
                                  "langevin_projection", "explicit_noise"])
def test_executor_updates_match_the_reference(backend, shape, score_dtype, form):
    """CombineSteps.combine with x_mean and the projection (fastsde::affine_combine_ / Triton) and CombineSteps.langevin
    (the step size computed on the device: fastsde::langevin_update_ / torch ops) against the reference ops, three
    updates in a row, seed past int64 (the bits travel as int64)."""
    from fastsde.ops.step import CombineSteps, langevin_scratch
    from fastsde.reference import step as ref

    x0, score, row, lang, mask, data = _update_case(shape, score_dtype)
    seed, ids = 2**63 + 5, torch.arange(shape[0]) * 7 + 3
    noise = torch.randn(*shape) if form == "explicit_noise" else None
    projected = form in ("projection", "langevin_projection")
    if form == "langevin_unscaled":
        lang[1] = 1.0
    steps = CombineSteps(x0, seed, ids, backend=backend)
    x, x_mean = x0.clone(), torch.empty_like(x0)
    want = x0.clone()
    for draw in (2, 7, 4):
        if form.startswith("langevin"):
            steps.langevin(x, x_mean, langevin_scratch(x), score, lang, 0.16, draw,
                           (mask, data, draw + 1) if projected else None, noise)
            s = score.double().float() * float(lang[1])
            want_mean = torch.empty_like(want)
            new = ref.langevin_step(want, s, 0.16, float(lang[0]), noise=noise, seed=seed, sample_ids=ids, draw=draw,
                                    x_mean_out=want_mean)
            if projected:
                new = ref.affine_step(new, torch.zeros_like(new), 1.0, 0.0, mask=mask, data=data,
                                      data_a=float(lang[2]), data_c=float(lang[3]), seed=seed, sample_ids=ids,
                                      data_draw=draw + 1, x_mean_out=want_mean)
        else:
            c = None if form == "noise_free" else row[4:5]
            pj = (mask, data, row[5:6], row[6:7], draw + 1) if projected else None
            steps.combine(x, x, [score], (row[0:1], [row[1:2]], c), draw, x_mean=x_mean, proj=pj, noise=noise)
            want_mean = torch.empty_like(want)
            new = ref.affine_step(want, score, float(row[0]), float(row[1]), None if c is None else float(c),
                                  noise=noise, seed=seed, sample_ids=ids, draw=draw, x_mean_out=want_mean,
                                  **(dict(mask=mask, data=data, data_a=float(row[5]), data_c=float(row[6]),
                                          data_draw=draw + 1) if projected else {}))
        want = new
        torch.testing.assert_close(x, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x_mean, want_mean, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(x).all()


@pytest.mark.skipif("native" not in FUSED, reason="the native extension is not built")
def test_native_update_ops_reject_bad_arguments_in_one_line():
    from fastsde.ops.step import langevin_scratch

    x0, score, row, lang, mask, data = _update_case((4, 6), torch.float32)
    seed, ids = torch.tensor(1), torch.arange(4)
    a, b, c = row[0:1], [row[1:2]], row[4:5]
    x, xm = x0.clone(), torch.empty_like(x0)
    combine, langevin = torch.ops.fastsde.affine_combine_, torch.ops.fastsde.langevin_update_
    with pytest.raises(RuntimeError, match="seed_bits must be a 0-d int64 tensor"):
        combine(x, x, [score], a, b, c, None, 0, ids, 0, torch.tensor([1]))
    with pytest.raises(RuntimeError, match="x_mean must not share memory with out"):
        combine(x, x, [score], a, b, c, None, 0, ids, 0, seed, x)
    with pytest.raises(RuntimeError, match="mask and data must be given together"):
        combine(x, x, [score], a, b, c, None, 0, ids, 0, seed, xm, mask)
    with pytest.raises(RuntimeError, match="needs data_a and data_c"):
        combine(x, x, [score], a, b, c, None, 0, ids, 0, seed, xm, mask, data)
    with pytest.raises(RuntimeError, match="scratch must hold at least 11 values, got 3"):
        langevin(x, xm, torch.zeros(3, dtype=torch.float64), score, lang, 0.1, seed, ids, 0)
    with pytest.raises(RuntimeError, match=r"coefs must be a contiguous float64 \(4,\) tensor"):
        langevin(x, xm, langevin_scratch(x), score, lang[:3], 0.1, seed, ids, 0)
    with pytest.raises(RuntimeError, match="x_mean must not share memory with x or score"):
        langevin(x, x, langevin_scratch(x), score, lang, 0.1, seed, ids, 0)
    assert torch.equal(x, x0)  # nothing written by a rejected call
