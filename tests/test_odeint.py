"""fastsde.odeint (on-device Dormand-Prince) against scipy's RK45 and closed forms; fastsde.flow's encode, decode and
slerp against the exact probability-flow map of Gaussian data (tests/test_likelihood.py derives it)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from fastsde import flow
from fastsde.models.analytic import AnalyticScoreModel, GaussianMixture
from fastsde.odeint import dopri5, fixed_grid
from fastsde.sampling import get_ode_sampler
from fastsde.sampling.guard import NonFiniteError
from test_likelihood import DIAG, FULL, LIK_EPS, SDES, assert_push_close, gaussian_data, gaussian_flow

A = torch.tensor([[0.3, -1.1, 0.4], [0.9, 0.2, -0.5], [-0.2, 0.7, 0.1]], dtype=torch.float64)


def nonlinear(t, y, rows=None):
    """A smooth nonlinear system whose rows have different time scales (row r is (1 + r) times faster)."""
    speed = 1.0 + (torch.arange(y.shape[0], dtype=y.dtype) if rows is None else rows.to(y.dtype))
    return speed[:, None] * (torch.tanh(y @ A.T) * torch.cos(3 * t)[:, None] - 0.2 * y)


def scipy_row(y0, t0, t1, rtol, atol, row):
    def rhs(t, y):
        out = nonlinear(torch.tensor([t], dtype=torch.float64), torch.from_numpy(y)[None],
                        torch.tensor([row]))[0]
        return out.numpy()
    return solve_ivp(rhs, (t0, t1), y0.numpy(), method="RK45", rtol=rtol, atol=atol)


@pytest.mark.parametrize("t0, t1", [(0.0, 2.0), (2.0, 0.5)])
def test_dopri5_takes_scipys_steps_row_by_row(t0, t1):
    """Each row is its own problem with scipy's controller: the same solution to float rounding and the same
    evaluation count as scipy's RK45 on that row alone (forward and backward in time)."""
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = dopri5(nonlinear, y0, t0, t1, rtol=1e-6, atol=1e-8)
    counts = []
    for i in range(5):
        ref = scipy_row(y0[i], t0, t1, 1e-6, 1e-8, i)
        assert np.abs(ref.y[:, -1] - r.y[i].numpy()).max() < 1e-12
        assert int(r.row_evals[i]) == ref.nfev
        assert int(r.steps[i]) == len(ref.t) - 1
        counts.append((int(r.row_evals[i]), ref.nfev))
    # faster rows need more evaluations; the slow ones stopped costing any once done: the batch made as many
    # batched calls as its busiest row
    assert r.nfev == max(c for c, _ in counts) and min(c for c, _ in counts) < r.nfev
    print("evaluations per row (fastsde, scipy):", counts)


def test_dopri5_rows_do_not_depend_on_the_batch():
    """A row's steps, and so its solution, are the same whatever else is in the batch (up to the rounding of f)."""
    y0 = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    whole = dopri5(nonlinear, y0, 0.0, 1.5, rtol=1e-5, atol=1e-7).y
    for idx in ([2], [0, 5], [4, 1, 3]):
        rows = torch.tensor(idx)

        def f(t, y, sub):  # the same problem as the full batch's rows `idx`
            return nonlinear(t, y, rows[sub])
        part = dopri5(f, y0[rows], 0.0, 1.5, rtol=1e-5, atol=1e-7).y
        assert torch.allclose(part, whole[rows], rtol=1e-13, atol=1e-13)  # BLAS may block a matmul differently


@pytest.mark.parametrize("chunk", [2, 5])
@pytest.mark.parametrize("t0, t1", [(0.0, 2.0), (2.0, 0.5)])
def test_dopri5_device_resident_chunks_take_the_same_steps(chunk, t0, t1):
    """The device-resident mode (rows stay, h = 0 once done, one host read per chunk) takes the per-step mode's
    steps row by row: the same solutions, accepted and rejected steps and per-row evaluations; only the batched
    count differs (whole chunks)."""
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = dopri5(nonlinear, y0, t0, t1, rtol=1e-6, atol=1e-8)
    got = dopri5(nonlinear, y0, t0, t1, rtol=1e-6, atol=1e-8, chunk=chunk)
    assert torch.allclose(got.y, ref.y, rtol=1e-13, atol=1e-14)
    for name in ("row_evals", "steps", "rejected"):
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    assert got.nfev >= ref.nfev and (got.nfev - 2) % (6 * chunk) == 0
    assert int(got.rejected.sum()) > 0  # the controller's rejection branch ran


def test_dopri5_device_resident_reads_the_host_once_per_chunk():
    """Inside a chunk no host read: the capture monitor sees only the flag read at each chunk's end."""
    from fastsde.capture_safety import CaptureMonitor
    from fastsde import odeint

    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reads = []
    original = odeint._Resident.status

    def status(self):
        reads.append(len(mon.syncs_after(-10)))
        return original(self)
    odeint._Resident.status = status
    try:
        with CaptureMonitor() as mon:
            r = dopri5(nonlinear, y0, 0.0, 2.0, rtol=1e-6, atol=1e-8, chunk=4)
    finally:
        odeint._Resident.status = original
    chunks = (r.nfev - 2) // 24
    assert len(reads) == chunks
    # before chunk i's flag read: the initial step's reads and the i earlier flag reads, nothing from the steps
    assert reads == [reads[0] + i for i in range(chunks)] and chunks > 3, reads


def test_dopri5_capture_records_one_chunk_and_replays_it(monkeypatch):
    """capture=True on CPU stand-ins of the CUDA graph calls: the first chunk runs eagerly, one chunk is recorded
    (nothing runs while recording) and replayed; the result equals the uncaptured run's."""
    from fastsde import capture_safety

    recorded = []

    class Graph:
        def __init__(self, body):
            self.body = body

        def replay(self):
            self.body()

    def record(body, stream, pool=None):
        recorded.append(body)
        return Graph(body)

    import contextlib
    monkeypatch.setattr(capture_safety, "capture_stream", lambda device: contextlib.nullcontext(None))
    monkeypatch.setattr(capture_safety, "record_graph", record)
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = dopri5(nonlinear, y0, 0.0, 2.0, rtol=1e-6, atol=1e-8, chunk=3)
    uncaptured = dopri5(nonlinear, y0, 0.0, 2.0, rtol=1e-6, atol=1e-8, capture=True, chunk=3)  # CPU: no graphs
    assert recorded == [] and torch.equal(uncaptured.y, ref.y)
    import fastsde.odeint as odeint
    monkeypatch.setattr(odeint, "_records_graphs", lambda device: True)
    got = odeint.dopri5(nonlinear, y0, 0.0, 2.0, rtol=1e-6, atol=1e-8, chunk=3, capture=True)
    assert len(recorded) == 1
    assert torch.equal(got.y, ref.y) and torch.equal(got.steps, ref.steps) and got.nfev == ref.nfev


def test_dopri5_device_resident_errors():
    y0 = torch.ones(3, 2, dtype=torch.float64)

    def blows_up(t, y, r):  # finite at t = 0, NaN after the first step
        return torch.where(t[:, None] > 0, torch.full_like(y, float("nan")), y)
    with pytest.raises(NonFiniteError, match="3 of 3 samples"):
        dopri5(blows_up, y0, 0.0, 1.0, rtol=1e-5, atol=1e-5, chunk=4)
    with pytest.raises(RuntimeError, match="50 evaluations"):
        dopri5(lambda t, y, r: 1e8 * torch.sin(1e6 * y), y0, 0.0, 1.0, rtol=1e-9, atol=1e-9, max_evals=50,
               chunk=4)
    for chunk in (0, 1.5, True):
        with pytest.raises(ValueError, match="chunk must be a positive int"):
            dopri5(nonlinear, y0, 0.0, 1.0, rtol=1e-5, atol=1e-5, chunk=chunk)
    with pytest.raises(ValueError, match="capture=True records chunks .* got chunk=1"):
        dopri5(nonlinear, y0, 0.0, 1.0, rtol=1e-5, atol=1e-5, chunk=1, capture=True)


def test_fixed_grid_is_fifth_order():
    """y' = -t y, y = y0 exp(-t^2 / 2): halving the step divides the error by ~2^5."""
    y0 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)

    def f(t, y, rows):
        return -t[:, None] * y

    exact = y0 * math.exp(-2.0 ** 2 / 2)
    errs = [float((fixed_grid(f, y0, torch.linspace(0, 2, n + 1, dtype=torch.float64)).y - exact).abs().max())
            for n in (8, 16, 32)]
    assert errs[0] / errs[1] > 20 and errs[1] / errs[2] > 20, errs
    r = fixed_grid(f, y0, torch.linspace(0, 2, 9, dtype=torch.float64))
    assert r.nfev == 1 + 6 * 8 and int(r.steps[0]) == 8


def test_dopri5_errors():
    y0 = torch.ones(3, 2, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="drift became non-finite at step 1"):
        dopri5(lambda t, y, r: y * float("nan"), y0, 0.0, 1.0, rtol=1e-5, atol=1e-5)

    def blows_up(t, y, r):  # finite at t = 0, NaN after the first step
        return torch.where(t[:, None] > 0, torch.full_like(y, float("nan")), y)
    with pytest.raises(NonFiniteError, match="non-finite at step"):
        dopri5(blows_up, y0, 0.0, 1.0, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="50 evaluations"):
        dopri5(lambda t, y, r: 1e8 * torch.sin(1e6 * y), y0, 0.0, 1.0, rtol=1e-9, atol=1e-9, max_evals=50)
    for bad, match in ((dict(y0=torch.ones(3)), "y0 must be"), (dict(t1=0.0), "t0 and t1 must differ"),
                       (dict(t1=float("inf")), "t1 must be a finite")):
        kwargs = {**dict(y0=y0, t0=0.0, t1=1.0), **bad}
        with pytest.raises(ValueError, match=match):
            dopri5(nonlinear, kwargs["y0"], kwargs["t0"], kwargs["t1"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="grid must be"):
        fixed_grid(nonlinear, y0, torch.zeros(1))


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_encode_is_the_exact_pushforward_and_decode_inverts_it(sde_name):
    """Gaussian data: encode(x) is the closed-form flow to T, decode(encode(x)) = x and encode(decode(z)) = z within
    the tolerance, for the adaptive solver and (looser) the fixed grid."""
    sde = SDES[sde_name]()
    mix, x = gaussian_data(FULL, 6, seed=3)
    model = AnalyticScoreModel(mix, sde)
    _, push = gaussian_flow(sde, mix)
    x = x.double()
    z, nfe = flow.encode(sde, model, x, rtol=1e-7, atol=1e-7, eps=LIK_EPS)
    assert_push_close(z, push(x), rel=1e-5)
    back, _ = flow.decode(sde, model, z, rtol=1e-7, atol=1e-7, eps=LIK_EPS)
    assert flow.round_trip_error(back, x)["max_abs"] < 1e-4
    z2 = sde.prior_sampling((4, 2), generator=torch.Generator().manual_seed(1)).double()
    x2, _ = flow.decode(sde, model, z2, rtol=1e-7, atol=1e-7, eps=LIK_EPS)
    again, _ = flow.encode(sde, model, x2, rtol=1e-7, atol=1e-7, eps=LIK_EPS)
    assert flow.round_trip_error(again, z2)["max_abs"] < 1e-4 * max(1.0, float(z2.abs().max()))
    zf, nfe_f = flow.encode(sde, model, x, method="fixed", steps=24, eps=LIK_EPS)
    assert nfe_f == 1 + 6 * 24
    assert_push_close(zf, push(x), rel=1e-3)


@pytest.mark.parametrize("sde_name", ["vp", "subvp"])
def test_ode_sampler_rk45_matches_pushforward_and_scipy(sde_name):
    """The sampler's default method (on-device RK45) and scipy's land on the exact inverse flow of Gaussian data,
    evaluation counts side by side."""
    sde = SDES[sde_name]()
    mix = GaussianMixture(**DIAG)
    model = AnalyticScoreModel(mix, sde)
    _, push = gaussian_flow(sde, mix, eps=1e-3)
    x = mix.sample(5, generator=torch.Generator().manual_seed(4)).double()
    z = push(x)
    got = {}
    for method in ("RK45", "scipy:RK45"):
        sample, nfe = get_ode_sampler(sde, (5, 3), lambda v: v, method=method, rtol=1e-7, atol=1e-7,
                                      dtype=torch.float64)(model, z=z)
        assert (sample - x).abs().max() < 1e-4, method
        got[method] = nfe
    print("evaluations (fastsde RK45, scipy RK45):", got)
    with pytest.raises(ValueError, match="scipy:RK23"):
        get_ode_sampler(sde, (5, 3), lambda v: v, method="RK23")


def test_capture_runs_device_resident_chunks_for_the_likelihood_flow_and_sampler():
    """capture=True (RK45's CUDA-graph chunks) on a CPU state runs the same chunks eagerly: the likelihood, encode
    and the ODE sampler give the per-step mode's numbers; other methods refuse it in one line."""
    from fastsde.likelihood import get_likelihood_fn

    sde = SDES["vp"]()
    mix, x = gaussian_data(FULL, 6, seed=3)
    model = AnalyticScoreModel(mix, sde)
    x = x.double()
    probe = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).double() * 2 - 1
    lik = {c: get_likelihood_fn(sde, identity_scaler, rtol=1e-6, atol=1e-6, dtype=torch.float64, capture=c)(
        model, x, probe) for c in (False, True)}
    torch.testing.assert_close(lik[True][0], lik[False][0], rtol=1e-12, atol=1e-12)
    assert lik[True][2] >= lik[False][2]  # whole chunks
    enc = {c: flow.encode(sde, model, x, rtol=1e-6, atol=1e-6, capture=c)[0] for c in (False, True)}
    torch.testing.assert_close(enc[True], enc[False], rtol=1e-12, atol=1e-12)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    smp = {c: get_ode_sampler(sde, (5, 2), identity_scaler, rtol=1e-6, atol=1e-6, dtype=torch.float64,
                              capture=c)(model, z=z)[0] for c in (False, True)}
    torch.testing.assert_close(smp[True], smp[False], rtol=1e-12, atol=1e-12)
    for call in (lambda: get_likelihood_fn(sde, identity_scaler, method="scipy:RK45", capture=True),
                 lambda: flow.encode(sde, model, x, method="fixed", steps=4, capture=True),
                 lambda: get_ode_sampler(sde, (5, 2), identity_scaler, method="scipy:RK45", capture=True)):
        with pytest.raises(ValueError, match="^capture=True replays chunks of RK45 steps .* got method="):
            call()
    with pytest.raises(ValueError, match="^capture must be True or False, got 1"):
        flow.decode(sde, model, z, capture=1)


def identity_scaler(v):
    return v


def test_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 5, generator=g), 2 * torch.randn(4, 5, generator=g)
    path = flow.slerp(a, b, torch.linspace(0, 1, 5))
    assert path.shape == (5, 4, 5)
    assert torch.allclose(path[0], a, atol=1e-6) and torch.allclose(path[-1], b, atol=1e-6)
    norms = path.reshape(5, -1).norm(dim=1)
    assert torch.allclose(norms, torch.linspace(float(a.norm()), float(b.norm()), 5), rtol=1e-5)
    # every point lies in the plane of a and b, at equal angular steps
    unit = path.reshape(5, -1).double() / norms[:, None].double()
    angles = torch.arccos((unit[:-1] * unit[1:]).sum(1).clamp(-1, 1))
    assert torch.allclose(angles, angles[0].expand(4), rtol=1e-4)
    with pytest.raises(ValueError, match="antipodal"):
        flow.slerp(a, -a, [0.5])
    with pytest.raises(ValueError, match="one shape"):
        flow.slerp(a, b[0], [0.5])


def test_flow_checks_arguments():
    sde = SDES["vp"]()
    model = AnalyticScoreModel(GaussianMixture(**FULL), sde)
    x = torch.zeros(2, 2)
    for kwargs, match in ((dict(method="fixed"), "steps must be"), (dict(steps=4), "steps applies"),
                          (dict(method="RK23"), "scipy:RK23"), (dict(rtol=0.0), "rtol must be"),
                          (dict(eps=2.0), "eps must be")):
        with pytest.raises(ValueError, match=match):
            flow.encode(sde, model, x, **kwargs)
    with pytest.raises(ValueError, match="temperature"):
        flow.decode(sde, model, x, temperature=0.0)
    with pytest.raises(ValueError, match="z must be"):
        flow.decode(sde, model, torch.zeros(2, dtype=torch.int64))


def test_flow_commands_on_the_shipped_model(capsys, tmp_path):
    """encode -> decode -> interpolate on 2 test digits with the coarsest fixed grid (the plumbing and reports;
    accuracy is the analytic tests' job), and one-line exit-2 errors before any work."""
    import json

    from fastsde import cli

    def run(*argv):
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    ode = ["--method", "fixed", "--steps", "1", "--threads", "1", "--no-progress", "--json"]
    code, out, err = run("encode", "--n", "2", "--out", str(tmp_path / "lat"), *ode)
    assert code == 0, err
    r = json.loads(out)
    assert r["nfe_encode"] == 7 and set(r["round_trip_decode_encode_x"]) == {"max_abs", "rms", "rel_rms"}
    code, out, err = run("decode", "--latents", str(tmp_path / "lat.npz"), "--out", str(tmp_path / "dec"), *ode)
    assert code == 0, err
    assert json.loads(out)["n"] == 2 and (tmp_path / "dec.png").exists()
    code, out, err = run("interpolate", "--a", "0", "--b", "1", "--frames", "3", "--out", str(tmp_path / "i"), *ode)
    assert code == 0, err
    assert json.loads(out)["round_trip_ends"]["max_abs"] >= 0 and (tmp_path / "i.png").exists()
    with np.load(tmp_path / "i.npz") as f:
        assert f["frames"].shape == (3, 1, 16, 16)
    for argv, message in ((["interpolate", "--a", "0", "--b", "1", "--frames", "1"], "--frames must be in"),
                          (["interpolate", "--a", "0", "--b", "100000"], "--b must be a test digit index"),
                          (["interpolate", "--a", "3", "--b", "3"], "two different"),
                          (["encode", "--steps", "4"], "--steps applies to --method fixed"),
                          (["encode", "--method", "fixed"], "--method fixed needs --steps"),
                          (["decode", "--latents", str(tmp_path / "nope.npz")], "--latents"),
                          (["likelihood", "--probe", "exact", "--probes", "2"], "--probes applies"),
                          (["likelihood", "--method", "RK23"], "invalid choice")):
        code, out, err = run(*argv, "--out" if argv[0] != "likelihood" else "--json",
                             *([str(tmp_path / "x")] if argv[0] != "likelihood" else []))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


@pytest.mark.slow
def test_bench_likelihood_smoke_records(tmp_path, monkeypatch):
    """`fastsde bench likelihood --smoke` runs every case and writes its records (minutes on a loaded CPU)."""
    import json

    from fastsde.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "lik.json"
    assert main(["bench", "likelihood", "--smoke", "--threads", "1", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    cases = [r["case"] for r in records]
    assert cases[:3] == ["likelihood_b2_tight", "likelihood_b2_fastest", "eval_split_b2"]
    assert all(r["smoke"] and r["suite"] == "likelihood" for r in records)
    assert records[0]["nfe"] > 0 and records[0]["nfe_reference"] > 0
    assert set(records[3]["contenders_ms"]) == {"matvec", "bmm", "combine_chain", "torch_expression"}


# ------------------------------------------------------------------ the fixed-step probability-flow ODE, a program
def _ring_vp():
    from fastsde import VPSDE
    from fastsde.models import analytic

    sde = VPSDE(N=1000)
    return sde, analytic.AnalyticScoreModel(analytic.get_mixture("ring"), sde, continuous=True)


def test_fixed_step_ode_sampler_converges_to_the_adaptive_solution():
    """get_ode_sampler(method="fixed", steps=K): the program of a deterministic solver of the same probability-flow
    ODE from the same start; its error against a tight RK45 solution falls with K (DPM-Solver-3: by >= 3x per
    doubling over 8 -> 32 steps) and is below 1e-2 at 32 steps (96 evaluations, RK45 takes ~180)."""
    sde, model = _ring_vp()
    z = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    want, _ = get_ode_sampler(sde, (256, 2), lambda x: x, rtol=1e-6, atol=1e-6, method="RK45", seed=1)(model, z)
    errors = []
    for steps in (8, 16, 32):
        x, evals = get_ode_sampler(sde, (256, 2), lambda x: x, method="fixed", steps=steps, seed=1)(model, z)
        assert evals == 3 * steps
        errors.append(float((x - want).abs().max()))
    assert errors[0] > 3 * errors[1] and errors[1] > 3 * errors[2] and errors[2] < 1e-2, errors


def test_fixed_step_ode_sampler_compiled_equals_eager_and_checks_its_arguments():
    sde, model = _ring_vp()
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    make = lambda **kw: get_ode_sampler(sde, (64, 2), lambda x: x, method="fixed", steps=6, seed=2,  # noqa: E731
                                        **{"solver": "dpmpp_2m", **kw})
    eager = make()(model, z)[0]
    compiled = make(compile=True)
    for _ in range(2):
        torch.testing.assert_close(compiled(model, z)[0], eager, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="^solver must be a deterministic fixed-step solver .* got 'dpmpp_2m_sde'"):
        make(solver="dpmpp_2m_sde")
    with pytest.raises(ValueError, match="^steps must be a positive int with method='fixed', got None"):
        get_ode_sampler(sde, (64, 2), lambda x: x, method="fixed")
    with pytest.raises(ValueError, match="^compile=True needs method='fixed'"):
        get_ode_sampler(sde, (64, 2), lambda x: x, compile=True)
    with pytest.raises(ValueError, match="^method='fixed' draws its prior from FSN1"):
        make(noise="torch")
