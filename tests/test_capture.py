"""Capture/compile correctness of the fused samplers (CPU proofs), and the combine op's overlap checks.

No GPU here: what a CUDA graph needs is proved on the CPU where it can be -- compiled samplers never recompile
across calls with new seeds and starts (torch._dynamo.config.error_on_recompile), a capture the backend cannot do is
refused before any work -- and tests/test_cuda.py replays recorded samplers on a lent GPU. Triton runs under
TRITON_INTERPRET=1 (tests/conftest.py). Tiny shapes, few steps, one thread.
"""
from __future__ import annotations

import pytest
import torch

from fastsde import ops
from fastsde.ops import dispatch

pytestmark = pytest.mark.usefixtures("one_thread")


def _backends():
    names = ["reference"]
    if dispatch.backend_available("native", torch.device("cpu"))[0]:
        names.append("native")
    if dispatch.backend_available("triton", torch.device("cpu"))[0]:
        names.append("triton")
    return names


BACKENDS = _backends()


# ------------------------------------------------------------------------------------ affine_combine_step overlaps
def _combine_case():
    g = torch.Generator().manual_seed(5)
    buf = torch.randn(3 * 24, generator=g)
    outs = [torch.randn(4, 6, generator=g) for _ in range(2)]
    return buf, outs


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["x", "noise", "outputs[1]"])
def test_combine_refuses_partial_overlap_with_out(backend, where):
    """out sharing part of x, of the noise or of a model output: refused in one line on every backend (native gave
    a max error of 4.5 against the exact reference before)."""
    buf, outs = _combine_case()
    x, out = buf[:24].view(4, 6), buf[6:30].view(4, 6)  # out starts one row into x
    noise = torch.randn(4, 6)
    if where == "noise":
        x, noise = torch.randn(4, 6), buf[:24].view(4, 6)
    elif where == "outputs[1]":
        x, outs[1] = torch.randn(4, 6), buf[:24].view(4, 6)
    with pytest.raises(ValueError, match="partial overlap") as info:
        ops.affine_combine_step(x, outs, 0.9, [0.3, -0.2], 0.5, noise=noise, out=out, backend=backend)
    message = str(info.value)
    assert "\n" not in message and where in message and "out" in message


@pytest.mark.parametrize("backend", BACKENDS)
def test_combine_refuses_out_as_an_output(backend):
    x, outs = torch.randn(4, 6), [torch.randn(4, 6), torch.randn(4, 6)]
    with pytest.raises(ValueError, match=r"^outputs\[0\] must not share memory with out: .*same view"):
        ops.affine_combine_step(x, outs, 0.9, [0.3, -0.2], out=outs[0], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_combine_in_place_matches_reference(backend):
    """out = x exactly (in place) stays allowed, as for affine_step, and agrees with the reference on FSN1 noise."""
    g = torch.Generator().manual_seed(7)
    x0, outs = torch.randn(3, 2, 5, generator=g), [torch.randn(3, 2, 5, generator=g) for _ in range(3)]
    want = ops.affine_combine_step(x0, outs, 0.8, [0.1, 0.2, -0.3], 0.4, seed=11, draw=2, backend="reference")
    x = x0.clone()
    got = ops.affine_combine_step(x, outs, 0.8, [0.1, 0.2, -0.3], 0.4, seed=11, draw=2, out=x, backend=backend)
    assert got is x
    torch.testing.assert_close(x, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------- shared model pieces
from fastsde import capture_safety  # noqa: E402
from fastsde import sde as sde_lib  # noqa: E402
from fastsde import solvers  # noqa: E402
from fastsde.controllable import get_pc_inpainter  # noqa: E402
from fastsde.models.analytic import AnalyticScoreModel, get_mixture  # noqa: E402
from fastsde.executor import Executor, Runner  # noqa: E402
from fastsde.sampling.pc import get_pc_sampler  # noqa: E402
from fastsde.score import get_model_fn, get_score_parts  # noqa: E402
from fastsde.solvers.grid import point_fn  # noqa: E402
from fastsde.solvers.program import Program  # noqa: E402
from fastsde.solvers.sampler import denoiser_coefs  # noqa: E402
from helpers import ScaledModel  # noqa: E402

FUSED = [b for b in BACKENDS if b != "reference"]
SHAPE = (4, 2)


def _vp():
    return sde_lib.VPSDE(beta_min=0.1, beta_max=2.0, N=4)  # beta_max / N < 1: the Langevin alpha stays positive


def _model(sde):
    return AnalyticScoreModel(get_mixture("ring"), sde, continuous=True)


_Scaled = ScaledModel


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def eager_compile(monkeypatch, fresh_dynamo):
    """torch.compile with the eager backend: dynamo's guards (what decides a recompile) are the backend's; the
    inductor codegen would only cost minutes here. One test per loop family keeps inductor."""
    real = torch.compile

    def compile_eager(fn=None, **kwargs):
        return real(fn, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", compile_eager)


class _FakeGraphs:
    """CPU stand-ins for capture_safety.capture_stream / record_graph: a recording runs its body (a CUDA capture
    would only record it) and notes how many graphs dynamo compiled meanwhile -- a compile inside a capture is what
    raises on a GPU. A replay runs the body again."""

    def __init__(self, monkeypatch):
        self.compiles_while_recording = []
        self.streams = []
        monkeypatch.setattr(capture_safety, "capture_stream", self._capture_stream)
        monkeypatch.setattr(capture_safety, "record_graph", self._record)

    def _capture_stream(self, device):
        import contextlib

        self.streams.append(torch.device(device))
        return contextlib.nullcontext("side")

    def _record(self, body, stream, pool=None):
        before = _unique_graphs()
        body()
        self.compiles_while_recording.append(_unique_graphs() - before)

        class _Graph:
            def replay(self):
                body()

            def pool(self):
                return "pool"

        return _Graph()


# ---------------------------------------------------------------------- 1, 3: nothing compiles inside a capture
NATIVE = ["native"] if "native" in FUSED else []


@pytest.mark.parametrize("backend", FUSED)
def test_pc_capture_compiles_outside_the_recording(monkeypatch, eager_compile, backend):
    """Runner._run_captured: the first call runs the program uncaptured and compiled (its first Eval eager: the
    analytic model builds its device cache), then records one graph per capture_steps steps; after a dtype change of a
    buffer (new storage: a re-recording, and a recompile) the recompile again happens before the recording. On a GPU
    a compile inside the capture raises."""
    fake = _FakeGraphs(monkeypatch)
    monkeypatch.setattr(Runner, "_captures", staticmethod(lambda x: True))
    sde = _vp()
    model = _Scaled(_model(sde))
    sampler = get_pc_sampler(sde, (4, 2), "euler_maruyama", "langevin", lambda v: v, 0.16, continuous=True, seed=3,
                             backend=backend, capture=True, capture_steps=1)
    x, _ = sampler(model)
    assert fake.compiles_while_recording == [0] * sde.N and torch.isfinite(x).all()  # one graph per step
    sampler(model)
    assert fake.compiles_while_recording == [0] * sde.N  # replayed, not re-recorded
    model.double()  # the buffer moves to new storage in float64: re-recorded, and the compiled step recompiles
    x, _ = sampler(model)
    assert fake.compiles_while_recording == [0] * (2 * sde.N) and torch.isfinite(x).all()
    assert fake.streams and all(d == torch.device("cpu") for d in fake.streams)  # the tensors' own device


@pytest.mark.parametrize("backend", FUSED)
def test_pc_capture_of_a_plain_function_model(monkeypatch, eager_compile, backend):
    """A model may be a plain function model(x, labels): PC capture=True read its .parameters() to key the recording
    (AttributeError on CUDA); it records once and replays, with the eager loop's numbers (the CPU stand-in's recording
    also runs the body, so only the replaying calls are compared)."""
    fake = _FakeGraphs(monkeypatch)
    monkeypatch.setattr(Runner, "_captures", staticmethod(lambda x: True))
    sde = _vp()
    inner = _model(sde)

    def model(x, labels):
        return inner(x, labels)

    make = lambda **kw: get_pc_sampler(sde, SHAPE, "euler_maruyama", "langevin", lambda v: v, 0.16,  # noqa: E731
                                       continuous=True, seed=3, backend=backend, **kw)
    captured, eager = make(capture=True, capture_steps=2), make()
    assert torch.isfinite(captured(model)[0]).all()
    for _ in range(2):
        torch.testing.assert_close(captured(model)[0], eager(model)[0], rtol=1e-5, atol=1e-5)
    assert fake.compiles_while_recording == [0] * -(-sde.N // 2)  # graphs of 2 steps, recorded once, replayed


@pytest.mark.parametrize("backend", FUSED)
def test_single_eval_program_capture_compiles_outside_the_recording(monkeypatch, eager_compile, backend):
    """A program with one Eval (the adaptive solver's denoising): the sampler's first call runs that Eval eagerly,
    so the compiled eval step first runs at the recording -- it must run (and compile) before it. The replay then
    gives the eager program's result."""
    fake = _FakeGraphs(monkeypatch)
    sde = _vp()
    model = _model(sde)
    at_time, _ = point_fn(sde, True)
    labels_fn, _ = get_score_parts(sde, True)
    program = Program()
    program.finish_with_denoise(at_time(1e-3), 0)
    x0 = torch.randn(SHAPE)

    def make(x):
        return Executor(program, x, lambda p: labels_fn(torch.full((4,), p.t)), lambda p: denoiser_coefs(sde, p),
                        seed=1, sample_ids=None, backend=backend)

    want = make(x0.clone()).run(get_model_fn(model)).clone()
    monkeypatch.setattr(Runner, "_captures", staticmethod(lambda x: True))
    runner = Runner(make, capture=True)
    first = runner(model, x0, 1)  # compiled and uncaptured (its one Eval eager), then recorded
    assert fake.compiles_while_recording == [0]
    got = runner(model, x0, 1)  # replayed
    assert fake.compiles_while_recording == [0]
    torch.testing.assert_close(first, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ 5: captures the backend cannot record
def test_capture_refused_where_the_loop_reads_the_host():
    """capture=True on CUDA with a combine that reads the seed and sample ids on the host (the reference backend):
    refused in one line, by the factory, before any work. Native and Triton read every per-call value on the device:
    PC and the solvers are built with either."""
    sde = _vp()
    with pytest.raises(ValueError, match=r"^capture=True on cuda .*backend='reference'") as info:
        solvers.get_sampler("euler", sde, SHAPE, 3, device="cuda", backend="reference", capture=True)
    assert "\n" not in str(info.value) and "compile=True" in str(info.value)
    with pytest.raises(ValueError, match=r"^compile=True/capture=True run the fused executor"):
        get_pc_sampler(sde, SHAPE, "euler_maruyama", "none", lambda v: v, 0.16, device="cuda", backend="reference",
                       capture=True)
    if "triton" in FUSED:
        solvers.get_sampler("euler", sde, SHAPE, 3, device="cuda", backend="triton", capture=True)
        get_pc_sampler(sde, SHAPE, "euler_maruyama", "langevin", lambda v: v, 0.16, device="cuda", backend="triton",
                       capture=True)
    # on the CPU capture=True is the compiled program: every fused backend is accepted
    for backend in FUSED:
        get_pc_sampler(sde, SHAPE, "euler_maruyama", "none", lambda v: v, 0.16, backend=backend, capture=True)


# ------------------------------------------------------------ 2, 7: compiled samplers never recompile across calls
PC_CASES = [  # (sde, predictor, corrector): every predictor and corrector once
    ("vp", "euler_maruyama", "none"),
    ("vp", "reverse_diffusion", "langevin"),
    ("vp", "ancestral_sampling", "ald"),
    ("ve", "none", "langevin"),
]


def _sde(name):
    return _vp() if name == "vp" else sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=4)


def _calls(run, count=3):
    """`count` calls, each after torch.manual_seed(100 + k): seed=None samplers draw a new seed (and prior) from it."""
    results = []
    for k in range(count):
        torch.manual_seed(100 + k)
        results.append(run(k))
    return results


def _assert_calls_match(got, want):
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert not torch.equal(got[0], got[1])  # the seeds (and starts) did change


@pytest.fixture
def no_recompiles():
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("case", PC_CASES, ids="-".join)
def test_pc_compiled_never_recompiles(eager_compile, no_recompiles, backend, case):
    sde = _sde(case[0])
    model = _model(sde)
    make = lambda **kw: get_pc_sampler(sde, SHAPE, case[1], case[2], lambda v: v, 0.16, continuous=True,  # noqa: E731
                                       **kw)
    compiled, reference = make(backend=backend, compile=True), make(backend="reference")
    _assert_calls_match(_calls(lambda k: compiled(model)[0]), _calls(lambda k: reference(model)[0]))


# the adaptive solver's own loop is not compiled (only its denoising Eval) and costs ~40 s interpreted: native only
SOLVER_CASES = [(b, n) for n in solvers.solver_names() for b in FUSED if not (n == "adaptive" and b == "triton")]


@pytest.mark.parametrize("backend,name", SOLVER_CASES)
def test_solver_compiled_never_recompiles(eager_compile, no_recompiles, backend, name):
    """Every solver, compiled, over 3 calls with new seeds (seed=None) and new starts: no recompile (the Triton
    combine used to pass the seed as a Python int: a recompile per call, FailOnRecompileLimitHit at the 9th)."""
    sde = _vp()
    model = _model(sde)
    make = lambda **kw: solvers.get_sampler(name, sde, SHAPE, 3, **kw)  # noqa: E731
    compiled, reference = make(backend=backend, compile=True), make(backend="reference")
    starts = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    _assert_calls_match(_calls(lambda k: compiled(model, starts[k])[0]),
                        _calls(lambda k: reference(model, starts[k])[0]))


@pytest.mark.parametrize("backend", NATIVE)  # the projection's Triton path is the PC loop's (tests above)
def test_inpainter_compiled_never_recompiles(eager_compile, no_recompiles, backend):
    sde = _vp()
    model = _model(sde)
    g = torch.Generator().manual_seed(2)
    data = [torch.randn(SHAPE, generator=g) for _ in range(3)]
    mask = (torch.rand(SHAPE, generator=g) > 0.5).float()
    make = lambda **kw: get_pc_inpainter(sde, "euler_maruyama", "langevin", lambda v: v, 0.16,  # noqa: E731
                                         continuous=True, **kw)
    compiled, reference = make(backend=backend, compile=True), make(backend="reference")
    _assert_calls_match(_calls(lambda k: compiled(model, data[k], mask)),
                        _calls(lambda k: reference(model, data[k], mask)))


@pytest.mark.parametrize("family", ["pc-native", "dpmpp_2m-triton"])
def test_inductor_compiled_never_recompiles(fresh_dynamo, no_recompiles, family):
    """One PC loop and one solver through inductor itself (the default backend), 3 calls with new seeds."""
    sde = _vp()
    model = _model(sde)
    if family == "pc-native":
        if "native" not in FUSED:
            pytest.skip("fastsde._C is not built")
        sampler = get_pc_sampler(sde, SHAPE, "reverse_diffusion", "langevin", lambda v: v, 0.16, continuous=True,
                                 backend="native", compile=True)
        got = _calls(lambda k: sampler(model)[0])
    else:
        if "triton" not in FUSED:
            pytest.skip("triton is not installed")
        sampler = solvers.get_sampler("dpmpp_2m", sde, SHAPE, 3, backend="triton", compile=True)
        got = _calls(lambda k: sampler(model)[0])
    assert all(torch.isfinite(g).all() for g in got) and not torch.equal(got[0], got[1])


# ------------------------------------------- 4: the other PC programs (flow, starts, colorize, guided), compiled
def _gaussian_score(x, labels):
    """A plain-function score model on any shape (the score of N(0, I) for VE; VP/subVP read it as the noise)."""
    return -0.5 * x


@pytest.mark.parametrize("backend", FUSED)
def test_pc_probability_flow_with_new_starts_never_recompiles(eager_compile, no_recompiles, backend):
    """probability_flow=True (the fixed-step flow through the reverse-diffusion predictor) from new starts z and
    new seeds: one compiled graph for every call, and the reference loop's numbers."""
    sde = _vp()
    model = _model(sde)
    make = lambda **kw: get_pc_sampler(sde, SHAPE, "reverse_diffusion", "none", lambda v: v, 0.16,  # noqa: E731
                                       probability_flow=True, continuous=True, **kw)
    compiled, reference = make(backend=backend, compile=True), make(backend="reference")
    starts = [torch.randn(SHAPE, generator=torch.Generator().manual_seed(10 + k)) for k in range(3)]
    _assert_calls_match(_calls(lambda k: compiled(model, starts[k])[0]),
                        _calls(lambda k: reference(model, starts[k])[0]))


@pytest.mark.parametrize("backend", NATIVE)
def test_colorizer_compiled_never_recompiles(eager_compile, no_recompiles, backend):
    from fastsde.controllable import get_pc_colorizer

    sde = _vp()
    gray = [torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    make = lambda **kw: get_pc_colorizer(sde, "euler_maruyama", "langevin", lambda v: v, 0.16,  # noqa: E731
                                         continuous=True, **kw)
    compiled, reference = make(backend=backend, compile=True), make(backend="reference")
    _assert_calls_match(_calls(lambda k: compiled(_gaussian_score, gray[k])),
                        _calls(lambda k: reference(_gaussian_score, gray[k])))


def test_guided_sampler_refuses_compile_in_one_line():
    """Classifier guidance takes torch.autograd.grad inside every model call, which dynamo refuses under
    fullgraph=True: compile=True crashed at the first model call with torch._dynamo.exc.Unsupported. Now refused by
    the factory, in one line; the eager guided sampler stays reproducible across calls (below)."""
    from fastsde.controllable import get_pc_conditional_sampler

    for flags in ({"compile": True}, {"capture": True}):
        with pytest.raises(ValueError, match=r"^compile=True/capture=True cannot run classifier guidance") as info:
            get_pc_conditional_sampler(_vp(), lambda x, t: x, SHAPE, "euler_maruyama", "none", lambda v: v, 0.16,
                                       **flags)
        assert "\n" not in str(info.value)


def test_guided_cli_refuses_compile_before_any_work(capsys, tmp_path):
    from helpers import one_error_line, run_cli

    code, _, err = run_cli(capsys, "sample", "--class-label", "3", "--compile", "--n", "2", "--out", tmp_path / "s")
    assert code == 2 and "--compile does not apply to --class-label" in one_error_line(err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("backend", NATIVE)
def test_guided_sampler_fused_matches_reference_across_calls(backend):
    from fastsde.controllable import get_pc_conditional_sampler

    sde = _vp()
    weight = torch.randn(2, 3, generator=torch.Generator().manual_seed(4))

    def classifier(x, labels):  # logits of a linear classifier, time-independent
        return x @ weight

    labels = [torch.tensor([0, 1, 2, 1]), torch.tensor([2, 2, 0, 0]), torch.tensor([1, 0, 1, 2])]
    make = lambda **kw: get_pc_conditional_sampler(sde, classifier, SHAPE, "euler_maruyama", "none",  # noqa: E731
                                                   lambda v: v, 0.16, continuous=True, **kw)
    fused, reference = make(backend=backend), make(backend="reference")
    model = _model(sde)
    _assert_calls_match(_calls(lambda k: fused(model, labels[k])),
                        _calls(lambda k: reference(model, labels[k])))


# ------------------------------------------------------------------- every fused sampler kind runs on the executor
def test_every_fused_sampler_kind_runs_on_the_executor(monkeypatch):
    """Every registered PC predictor x corrector (with and without the probability flow), the inpainter, the heat
    family's solvers and every
    solver runs its steps through fastsde.executor.Executor.run: a new sampler kind that bypasses the executor (its own
    loop, its own compile or capture path) fails here."""
    from fastsde import controllable
    from fastsde.sampling.registry import _CORRECTORS, _PREDICTORS

    runs = []
    real = Executor.run
    monkeypatch.setattr(Executor, "run", lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    backend = FUSED[0]
    for sde in (_vp(), sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=4)):
        model = _model(sde)
        for pred in _PREDICTORS:
            for corr in _CORRECTORS:
                if pred == "none" and corr == "none":
                    continue
                for flow in (False, True) if pred != "ancestral_sampling" else (False,):
                    runs.clear()
                    get_pc_sampler(sde, SHAPE, pred, corr, lambda v: v, 0.16, continuous=True, seed=1,
                                   backend=backend, probability_flow=flow)(model)
                    assert runs, (pred, corr, flow)
        runs.clear()
        data, mask = torch.randn(SHAPE), torch.ones(SHAPE)
        controllable.get_pc_inpainter(sde, "reverse_diffusion", "langevin", lambda v: v, 0.16, continuous=True,
                                      seed=1, backend=backend)(model, data, mask)
        assert runs
    for name in solvers.solver_names():
        runs.clear()
        solvers.get_sampler(name, _vp(), SHAPE, 3, seed=1, backend=backend)(_model(_vp()))
        assert runs, name
    from fastsde.heat_sampler import SOLVERS, heat_sample  # the heat family: DCT-domain programs
    from fastsde.models.analytic import AnalyticHeatModel, FrequencyMixture

    heat = sde_lib.make_sde("heat", N=100)
    g = torch.Generator().manual_seed(0)
    mix = FrequencyMixture(torch.ones(2, dtype=torch.float64), torch.randn(2, 1, 4, 4, generator=g,
                                                                           dtype=torch.float64),
                           torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) + 0.1)
    for solver in SOLVERS:
        runs.clear()
        heat_sample(AnalyticHeatModel(mix, heat), heat, (3, 1, 4, 4), steps=3, solver=solver, backend=backend)
        assert runs, solver
