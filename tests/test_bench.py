"""The benchmark suites run end to end and emit the documented record format: smoke mode (`fastsde bench --smoke`,
fastsde.benchmarks.common.smoke: one call per measurement, tiny sizes) checks the records and the plumbing in
seconds on any CPU, bf16 emulated included. No timing is asserted: the timing belongs to `fastsde bench`."""
import json
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest
import torch

from fastsde import _native
from fastsde.cli import main

pytestmark = pytest.mark.skipif(not _native.available(), reason="benchmarks measure the native backend")

KEYS = {"suite", "case", "backend", "numel", "median_ms", "gbps", "copy_gbps", "bandwidth_fraction", "baselines",
        "speedup"}
SMOKE_KEYS = KEYS | {"smoke"}  # smoke-mode records say so


def test_steps_suite_records(tmp_path, monkeypatch, capsys):
    from fastsde.benchmarks import bench_step, common

    # Every case kind, at a size that runs in milliseconds; torch.compile is skipped (it takes ~20 s per case).
    kinds = ("em", "rd", "langevin", "ode", "combine3")
    monkeypatch.setattr(bench_step, "CASES", [(f"{k}_tiny", 4096, 4, k) for k in kinds])
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    out = tmp_path / "steps.json"
    assert main(["bench", "steps", "--smoke", "--no-compile", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["case"] for r in records] == [f"{k}_tiny" for k in kinds]
    for r in records:
        assert set(r) == SMOKE_KEYS and r["smoke"] is True and r["suite"] == "steps"
        assert r["backend"] == "native" and r["numel"] == 4096
        assert r["median_ms"] > 0 and r["gbps"] is not None and r["gbps"] >= 0 and r["copy_gbps"] == 10.0
        assert r["baselines"]["compile"] is None and r["speedup"]["compile"] is None
        # the speedup is rounded to 2 decimals from the unrounded times
        assert r["speedup"]["reference"] == pytest.approx(r["baselines"]["reference"] / r["median_ms"], rel=0.01,
                                                          abs=0.006)
    assert "x ref" in capsys.readouterr().out


def test_sampler_suite_records(tmp_path, monkeypatch):
    from fastsde.benchmarks import bench_sampler, common

    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    out = tmp_path / "sampler.json"
    assert main(["bench", "sampler", "--smoke", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert set(r) == SMOKE_KEYS and r["case"] == "pc_gmm_2d_1000" and r["baselines"]["reference"] > 0
    assert r["numel"] == 2 * bench_sampler.SMOKE_N  # smoke mode: SMOKE_STEPS steps of SMOKE_N points
    assert r["gbps"] is None and r["baselines"]["eager_inplace"] is None


def test_e2e_suite_records_and_tradeoff(tmp_path, monkeypatch, capsys, one_thread):
    from fastsde.benchmarks import bench_e2e, common

    monkeypatch.setattr(bench_e2e, "PC_STEPS", (3,))
    monkeypatch.setattr(bench_e2e, "ODE_RTOLS", (1e-1,))
    monkeypatch.setattr(bench_e2e, "SOLVER_NAMES", ("dpmpp_2m",))
    monkeypatch.setattr(bench_e2e, "SOLVER_EVALS", (5,))
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    out, trade = tmp_path / "e2e.json", tmp_path / "tradeoff"
    assert main(["bench", "e2e", "--smoke", "--no-compile", "--threads", "1", "--json", str(out), "--tradeoff",
                 str(trade), "--n", "16"]) == 0
    n = bench_e2e.SMOKE_N  # smoke mode: the timed case at SMOKE_N images, SMOKE_STEPS PC steps
    r, *rest = json.loads(out.read_text())
    overhead = [o for o in rest if o["case"].startswith("loop_overhead")]
    half = [o for o in rest if o["case"] in (f"digits_pc_b{n}_bf16", f"digits_pc_b{n}_fp16")]
    default = [o["case"] for o in rest if o["case"].startswith("digits_default")]
    assert default == [f"digits_default_b{n}", f"digits_default_b{n}_bf16"]  # --no-compile: no compiled rows
    assert [o["case"] for o in overhead] == ["loop_overhead_b64", "loop_overhead_gmm_1024x2"]
    assert all(o["us_per_step"] > 0 for o in overhead)
    solver_rows = [o for o in rest if o["case"].startswith("solver_overhead_")]
    assert solver_rows and all(o["us_per_eval"] > 0 and o["model_evals"] >= 10 for o in solver_rows)
    (prof,) = [o for o in rest if o["case"].startswith("model_profile")]
    eager = prof["shares"]["fastsde_eager"]  # --no-compile: the eager fused build only
    assert set(prof["shares"]) == {"fastsde_eager"} and eager["ms_per_call"] > 0
    assert abs(sum(v for k, v in eager.items() if k != "ms_per_call") - 1) < 0.01 and eager["convolution"] > 0
    assert set(r) >= SMOKE_KEYS and r["case"] == f"digits_pc_b{n}" and r["steps"] == bench_e2e.SMOKE_STEPS
    assert r["numel"] == n * 256 and all(o["smoke"] for o in rest if "suite" in o)
    assert r["max_abs_diff"] < 1e-4 and r["baselines"]["reference"] > 0 and r["precision"] == "fp32"
    # precision rows: the model in bf16 / fp16 against the fp32 fastsde path, the reference and its autocast peer
    assert [h["case"] for h in half] == [f"digits_pc_b{n}_bf16"]  # fp16 on request only (bench_e2e.PRECISIONS)
    assert set(r["skipped"]) <= {"compiled", "captured"}
    for h in half:
        assert h["precision"] == h["case"].rsplit("_", 1)[1] and 0 < h["max_abs_diff"] < 0.5
        assert set(h["baselines"]) == {"fastsde_fp32", "reference", "reference_autocast_bf16", "compile",
                                       *common.COMPILE_PEERS}
        assert h["baselines"]["fastsde_fp32"] == r["median_ms"] and h["baselines"]["reference_autocast_bf16"] > 0
        assert h["compile_peer"] is None and h["baselines"]["compile"] is None  # --no-compile
    result = json.loads((tmp_path / "tradeoff.json").read_text())
    assert [(row["sampler"], row["precision"]) for row in result["rows"][:3]] == [("pc", "fp32"), ("pc", "bf16"),
                                                                                  ("ode", "fp32")]
    assert result["n"] == 16
    assert all(row["fd"] >= 0 and row["nfe"] > 0 for row in result["rows"])
    assert all(row["kid"]["subset_size"] == 4 and row["kid"]["stderr"] >= 0 for row in result["rows"])  # n = 16
    assert (tmp_path / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert result["seeds"] == [0] and all(row["fd_sd"] is None and row["seeds"] == [0] for row in result["rows"])
    ode = {row["sampler"]: row["ode_error"] for row in result["rows"]}  # deterministic samplers only
    assert ode["pc"] is None and ode["ode"] > 0 and ode["dpmpp_2m"] > 0


def test_tradeoff_ode_error_is_zero_for_the_converged_solver_itself(one_thread):
    """The ODE error compares the same ODE from the same noise: the converged solver at its own step count is 0
    exactly, fewer steps are not; FD and KID are the means of the seeds' values, with their spread."""
    from fastsde.benchmarks import bench_e2e, common

    with common.smoke(True):  # the converged solution: 2 steps (its check: 1)
        result = bench_e2e.tradeoff(n=16, seeds=(0, 1), pc_steps=(), ode_rtols=(),
                                    solver_names=(bench_e2e.CONVERGED_SOLVER,), solver_evals=(7, 4))
    same, fewer = result["rows"]
    assert (same["steps"], fewer["steps"]) == (2, 1) and same["ode_error"] == 0.0 and fewer["ode_error"] > 1e-3
    assert result["converged_error"] > 0 and result["ode_error_n"] == 16
    for row in result["rows"]:
        assert row["fd"] == pytest.approx(sum(row["fd_per_seed"]) / 2) and row["fd_sd"] > 0
        assert row["kid"]["kid"] == pytest.approx(sum(row["kid_per_seed"]) / 2) and row["kid"]["stderr"] > 0


def test_unet_suite_precision_rows(monkeypatch, one_thread):
    from fastsde.benchmarks import bench_unet, common

    monkeypatch.setattr(bench_unet, "CASES", [("unet_forward_16px_b2", "small16", 2)])
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    with common.smoke():
        r, *half = bench_unet.run(quick=True, use_compile=False)
    half = [h for h in half if h["case"].startswith("unet_forward")]  # the score_sde cases come last
    assert r["case"] == "unet_forward_16px_b2" and r["precision"] == "fp32" and not r["skipped"]
    assert [h["case"] for h in half] == ["unet_forward_16px_b2_bf16", "unet_forward_16px_b2_fp16"]
    for h in half:
        assert set(h["baselines"]) == {"fused_fp32", "reference", "reference_autocast_bf16", "compile",
                                       *common.COMPILE_PEERS}
        assert h["baselines"]["fused_fp32"] == r["median_ms"] and 0 < h["max_abs_diff"] < 1.0  # outputs up to ~20


def test_compile_peers_are_compiled_frozen_and_in_bf16(one_thread):
    """The tables' compiled peers (common.COMPILE_PEERS) on a one-convolution model: every call runs a graph Dynamo
    compiled (its counters), the convolution computes in bf16 exactly in the autocast peers (a forward hook, traced
    into the graph, sees its output dtype on every call), and the frozen peers hold the weights as constants (an
    in-place change of the weight is invisible to them, visible to the others)."""
    from torch._dynamo.utils import counters

    from fastsde.benchmarks import common

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.SiLU()).eval()  # weights in a child
    seen = []
    model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    peers = common.compile_peers(model)
    assert set(peers) == set(common.COMPILE_PEERS)
    x = torch.randn(2, 2, 6, 6)
    before = {}
    with torch.no_grad():
        for name, peer in peers.items():
            counters.clear()
            for _ in range(2):
                seen.clear()
                before[name] = peer(x).float()
                assert seen == [common.COMPILE_PEERS[name][0] or torch.float32], name
            assert counters["frames"]["ok"] == 1 and counters["stats"]["unique_graphs"] == 1, name
            assert not counters["graph_break"], name
        model[0].weight.mul_(2)
        for name, peer in peers.items():
            seen.clear()  # Dynamo guards on the list the hook fills: as before, no recompilation
            counters.clear()
            assert torch.equal(peer(x).float(), before[name]) == common.COMPILE_PEERS[name][1], name
            assert not counters["frames"], name


def test_compile_column_is_the_fastest_peer_named():
    from fastsde.benchmarks import common

    rec = common.record("unet", "c", "native", 1, 2.0, None, 10.0, {"reference": 8.0})
    times = {"compile_fp32": 4.0, "compile_fp32_frozen": 3.0, "compile_bf16_autocast": 1.0,
             "compile_bf16_autocast_frozen": None}
    common.set_compile_peers(rec, times, common.FP32_PEERS)
    assert rec["compile_peer"] == "compile_fp32_frozen" and rec["baselines"]["compile"] == 3.0
    assert rec["speedup"]["compile"] == 1.5 and rec["speedup"]["compile_fp32"] == 2.0
    common.set_compile_peers(rec, times, tuple(common.COMPILE_PEERS))  # a bf16 row: all four, one that failed
    assert rec["compile_peer"] == "compile_bf16_autocast" and rec["speedup"]["compile"] == 0.5
    assert rec["baselines"]["compile_bf16_autocast_frozen"] is None
    common.set_compile_peers(rec, {}, common.FP32_PEERS)
    assert rec["compile_peer"] is None and rec["baselines"]["compile"] is None


def test_unet_suite_times_every_peer_in_the_rows(monkeypatch, one_thread):
    """The U-Net rows with compile on, in smoke mode: the fp32 row's "compile" is the fastest fp32 peer, the bf16 and
    fp16 rows' the fastest of all four, each built on the reference build (stand-ins for torch.compile here: the
    test above checks the real peers)."""
    from fastsde.benchmarks import bench_unet, common

    built = []

    def stand_ins(model, names=tuple(common.COMPILE_PEERS)):
        built.append((type(model).__name__, tuple(names)))
        return {name: model for name in names}

    monkeypatch.setattr(bench_unet, "CASES", [("unet_forward_16px_b2", "small16", 2)])
    monkeypatch.setattr(bench_unet, "SCORE_SDE_CASES", [])
    monkeypatch.setattr(bench_unet, "BACKWARD_CASES", [])  # autograd rows: fused vs reference layers, no peers
    monkeypatch.setattr(common, "compile_peers", stand_ins)
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    with common.smoke():
        r, *half = bench_unet.run(quick=False, use_compile=True)
    assert [h["precision"] for h in half] == ["bf16", "fp16"]
    assert built == [("UNet", tuple(common.COMPILE_PEERS))]
    assert r["compile_peer"] in common.FP32_PEERS
    assert r["baselines"]["compile"] == min(r["baselines"][n] for n in common.FP32_PEERS)
    for h in half:
        assert h["baselines"]["compile"] == min(h["baselines"][n] for n in common.COMPILE_PEERS)
        assert h["compile_peer"] in common.COMPILE_PEERS


def test_e2e_rows_with_compile_carry_every_peer(monkeypatch, one_thread):
    """The e2e suite with its compile baselines on, in smoke mode, torch.compile replaced by the identity (the peers'
    compilation is checked above): every PC and default-job row times the peers its precision calls for, "compile" is
    the fastest and compile_peer names it."""
    from fastsde.benchmarks import bench_e2e, common

    monkeypatch.setattr(torch, "compile", lambda model=None, **kwargs: model)
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    for heavy in ("loop_overhead", "solver_overhead"):
        monkeypatch.setattr(bench_e2e, heavy, lambda *a, **k: [])
    monkeypatch.setattr(bench_e2e, "model_profile", lambda *a, **k: {})
    with common.smoke():
        records = [r for r in bench_e2e.run(quick=True, use_compile=True) if r]
    rows = {r["case"]: r for r in records}
    n = bench_e2e.SMOKE_N
    assert {f"digits_pc_b{n}", f"digits_pc_b{n}_bf16", f"digits_pc_b{n}_compiled", f"digits_default_b{n}",
            f"digits_default_b{n}_bf16", f"digits_default_b{n}_compiled", f"digits_default_b{n}_bf16_compiled"} \
        <= set(rows)
    for case, r in rows.items():
        names = common.COMPILE_PEERS if "bf16" in case else common.FP32_PEERS
        assert all(r["baselines"][name] > 0 for name in names), case
        assert r["compile_peer"] in names, case
        assert r["baselines"]["compile"] == min(r["baselines"][name] for name in names), case


def test_pedantic_times_the_first_contender_round_robin():
    """common.pedantic: the first timing call goes through the fixture, its first contender timed, the others in
    each round's setup (B C A B C A ...); the next timing call and the copy floor time as usual."""
    from fastsde.benchmarks import common

    calls = []

    class Fixture:
        def pedantic(self, target, setup=None, rounds=1, iterations=1):
            calls.append(("pedantic", rounds))
            for _ in range(rounds):
                setup()
                target()

    fns = {k: (lambda k: lambda: calls.append(k))(k) for k in "ABC"}
    with common.pedantic(Fixture()):
        common.copy_bandwidth_gbps(numel=1024, reps=2)
        times = common.interleaved_ms(fns, reps=2, warmup=1)
        assert calls == ["A", "B", "C", ("pedantic", 2), "B", "C", "A", "B", "C", "A"]
        assert set(times) == set("ABC") and all(t >= 0 for t in times.values())
        calls.clear()
        common.median_ms(fns["A"], reps=2, warmup=0)
        assert calls == ["A", "A"]


def test_pytest_benchmark_records_match_fastsde_bench(tmp_path, monkeypatch):
    """`pytest benchmarks --benchmark-only --benchmark-json` (benchmarks/test_suites.py) in smoke mode: the case's
    records in extra_info have the keys of `fastsde bench --json`'s, and pytest-benchmark's median is the record's
    median_ms (one measurement, seconds vs milliseconds)."""
    from fastsde.benchmarks import bench_step

    out = tmp_path / "pb.json"
    run = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benchmarks"), "-q", "-p", "no:cacheprovider",
                          "-k", "steps-em_noisy_1M", "--bench-smoke", "--bench-no-compile", "--bench-threads", "1",
                          "--benchmark-only", "--benchmark-json", str(out)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (bench,) = json.loads(out.read_text())["benchmarks"]
    info = bench["extra_info"]
    assert bench["name"] == "test_suite_case[steps-em_noisy_1M]" and info["case"] == "em_noisy_1M"
    (rec,) = info["records"]
    assert rec["smoke"] is True and info["median_ms"] == rec["median_ms"]
    assert bench["stats"]["rounds"] == 1 and bench["stats"]["median"] * 1e3 == pytest.approx(rec["median_ms"],
                                                                                               rel=0.05, abs=0.5)
    monkeypatch.setattr(bench_step, "CASES", [c for c in bench_step.CASES if c[0] == "em_noisy_1M"])
    assert main(["bench", "steps", "--smoke", "--no-compile", "--threads", "1", "--json", str(tmp_path / "b.json")]) \
        == 0
    (cli,) = json.loads((tmp_path / "b.json").read_text())
    assert set(cli) == set(rec) and set(cli["baselines"]) == set(rec["baselines"]) and cli["case"] == rec["case"]


def test_pytest_benchmarks_cover_every_suite_of_the_command():
    from fastsde.benchmarks import test_suites
    from fastsde.cli import bench

    assert set(test_suites.SUITES) == set(bench.SUITES)
    assert all(module.__name__ == bench.suite_module(name) for name, module in test_suites.SUITES.items())


def test_bench_refuses_before_the_header(capsys):
    """A backend that cannot run here and --no-compile for a suite without compile baselines: one line, exit 2,
    nothing measured."""
    env_interpret = os.environ.pop("TRITON_INTERPRET", None)
    try:
        assert main(["bench", "steps", "--backend", "triton", "--smoke"]) == 2
    finally:
        if env_interpret is not None:
            os.environ["TRITON_INTERPRET"] = env_interpret
    out, err = capsys.readouterr()
    assert "fastsde bench" not in out and "--backend triton cannot run here" in err and err.count("\n") == 1
    assert main(["bench", "sampler", "--no-compile", "--smoke"]) == 2
    out, err = capsys.readouterr()
    assert "fastsde bench" not in out and "the sampler suite has no torch.compile baseline" in err


# ---- --device: CUDA records and the GPU check (no GPU here: the CUDA timing path runs on fake CUDA events) ----------

ROOT = pathlib.Path(__file__).resolve().parent.parent
CUDA_KEYS = KEYS | {"tflops", "timing", "device"}
FAKE_GPU = {"type": "cuda", "name": "Fake GPU", "capability": "9.0", "sm_count": 132, "memory_gib": 79.6,
            "l2_mib": 50.0, "clocks": None, "torch": "x", "cuda": "12.x", "triton": "y", "tf32_matmul": False,
            "tf32_cudnn": True}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_device_cuda_without_gpu_is_one_line(capsys):
    assert main(["bench", "steps", "--device", "cuda"]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "--device cuda: no CUDA device is available" in err and "Traceback" not in err
    assert "fastsde bench" not in out  # nothing was measured


def test_device_cpu_records_keep_their_fields(tmp_path, monkeypatch):
    from fastsde.benchmarks import bench_step, common

    monkeypatch.setattr(bench_step, "CASES", [("em_tiny", 4096, 4, "em")])
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    out = tmp_path / "steps.json"
    assert main(["bench", "steps", "--device", "cpu", "--quick", "--no-compile", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert set(r) == KEYS and set(r["baselines"]) == {"reference", "eager_inplace", "compile"}


@pytest.fixture
def fake_cuda(monkeypatch):
    """Make the benchmarks take their CUDA path on CPU tensors: events from perf_counter, no synchronize."""
    from fastsde.benchmarks import common

    class Event:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = time.perf_counter()

        def elapsed_time(self, end):
            return 1e3 * (end.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(common, "is_cuda", lambda device: True)
    monkeypatch.setattr(common, "device_info", lambda device: FAKE_GPU)
    monkeypatch.setattr(common, "L2_FLUSH_BYTES", 4096)
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    return common


def test_cuda_records_of_steps_and_attention(fake_cuda, monkeypatch, capsys):
    from fastsde.benchmarks import bench_attention, bench_step

    monkeypatch.setattr(bench_step, "CASES", [("em_tiny", 4096, 4, "em"), ("langevin_tiny", 4096, 4, "langevin")])
    monkeypatch.setattr(bench_attention, "CASES", [("attn_tiny", 2, 32, 4, 4, 8, 1, True)])
    with fake_cuda.smoke():
        records = bench_step.run(quick=True, use_compile=False) + bench_attention.run(quick=True, use_compile=False)
    for r in records:
        assert set(r) == CUDA_KEYS | {"smoke"} and r["device"] is FAKE_GPU and r["timing"] == "cuda_events"
        assert set(r["baselines"]) == {"reference", "eager_inplace", "compile", "compile_reduce_overhead"}
        assert r["median_ms"] > 0 and r["baselines"]["compile_reduce_overhead"] is None
    assert [r["tflops"] is None for r in records] == [True, True, False]
    attn = records[-1]
    assert attn["tflops"] == pytest.approx(bench_attention.flops(2, 32, 4, 4) / (attn["median_ms"] * 1e-3) / 1e12,
                                           rel=0.01)
    fake_cuda.print_table(records)
    out = capsys.readouterr().out
    assert "x c-graphs" in out and "TFLOP/s" in out and "device: Fake GPU (sm_90, 132 SMs)" in out


def test_cuda_e2e_reports_missing_loop_variants(fake_cuda, monkeypatch, one_thread):
    from fastsde.benchmarks import bench_e2e
    from fastsde.digits import pretrained

    monkeypatch.setitem(pretrained.DIGITS_DEFAULTS, "steps", 2)
    monkeypatch.setattr(bench_e2e, "loop_variant_missing", lambda keyword: f"no {keyword}= here")
    monkeypatch.setattr(bench_e2e, "loop_overhead", lambda *a, **k: [])
    monkeypatch.setattr(bench_e2e, "default_job", lambda *a, **k: [])
    monkeypatch.setattr(bench_e2e, "solver_overhead", lambda *a, **k: [])
    monkeypatch.setattr(bench_e2e, "model_profile", lambda *a, **k: {})
    (r, _) = bench_e2e.run(quick=True, use_compile=False, n=4, precisions=())
    assert set(r) >= CUDA_KEYS and r["case"] == "digits_pc_b4" and r["max_abs_diff"] < 1e-4
    assert r["skipped"] == {"compiled": "no compile= here", "captured": "no capture= here"}


def test_gpu_report_reads_records_and_fills_the_doc(tmp_path):
    out = tmp_path / "check"
    (out / "bench").mkdir(parents=True)
    (out / "phases.tsv").write_text("phase\tstatus\tseconds\tlog\nbuild\tok\t95\tx.log\ntests\tfailed (exit 1)\t40\t\n")
    (out / "pytest_cuda.xml").write_text(  # pytest's junit XML: one pass, one failure, one skip
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" '
        'skipped="1" tests="3" time="41.5"><testcase classname="tests.test_cuda" name="test_a" time="30.0"/>'
        '<testcase classname="tests.test_cuda" name="test_b" time="10.0"><failure message="AssertionError: x != y'
        '&#10;more">trace</failure></testcase><testcase classname="tests.test_cuda" name="test_c" time="0.0">'
        '<skipped message="why"/></testcase></testsuite></testsuites>')
    rec = {"suite": "steps", "case": "em_noisy_16M", "backend": "native", "numel": 1 << 24, "median_ms": 0.07,
           "gbps": 2876.0, "copy_gbps": 3000.0, "bandwidth_fraction": 0.959, "tflops": None, "timing": "cuda_events",
           "device": FAKE_GPU, "baselines": {"reference": 0.7, "eager_inplace": 0.2, "compile": 0.1,
                                             "compile_reduce_overhead": None},
           "speedup": {"reference": 10.0, "eager_inplace": 2.86, "compile": 1.43, "compile_reduce_overhead": None}}
    (out / "bench" / "steps.json").write_text(json.dumps([rec]))
    doc = tmp_path / "gpu.md"
    doc.write_text("# t\n<!-- gpu-check:begin -->\nNot yet run on a GPU.\n<!-- gpu-check:end -->\ntail\n")
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_report.py"), str(out), "--doc", str(doc)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "| tests | failed (exit 1) | 40 |" in run.stdout and "**Fake GPU**" in run.stdout
    assert "1 passed, 1 failed, 0 errors, 1 skipped of 3 in 42 s" in run.stdout
    assert "- FAILED tests.test_cuda::test_b: AssertionError: x != y" in run.stdout
    assert "Slowest: test_a 30.0 s, test_b 10.0 s" in run.stdout
    assert "| steps | em_noisy_16M | native | 0.07 | 2876 | 0.96 | - | 10.00 | 2.86 | 1.43 | - |" in run.stdout
    text = doc.read_text()
    assert "Not yet run" not in text and "em_noisy_16M" in text and text.endswith("<!-- gpu-check:end -->\ntail\n")


def test_gpu_check_runs_here_with_cuda_phases_skipped(tmp_path):
    """The whole script on this machine: CUDA phases reported as skipped, the test selection collected, exit 0."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would build and benchmark")
    # The script's phases are bounded by its budget; the timeout here only guards against a hang (a loaded machine
    # makes the script slower, never this test fail).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": "1200"}
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "check")], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    phases = {p: s for p, s in (line.split("\t")[:2] for line in
                                (tmp_path / "check" / "phases.tsv").read_text().splitlines()[1:])}
    assert phases["env"] == "ok" and phases["build"].startswith("skipped (no CUDA")
    assert re.search(r"pytest -m cuda selects [1-9]\d*(/\d+)? tests", phases["tests"])
    assert {p for p in phases if p.startswith("bench-")} == {"bench-steps", "bench-steps-triton", "bench-e2e"}
    assert all(s == "skipped (no CUDA)" for p, s in phases.items() if p.startswith("bench-"))
    assert "| build | skipped (no CUDA" in run.stdout and "no benchmark records" in run.stdout
    assert "no junit XML (the tests phase did not run)" in run.stdout


def test_suite_estimate_scales_wall_time_by_the_cpu_ratio():
    """scripts/suite_estimate.py: wall here x (CPU there / CPU here); a test missing there gets the median ratio, a
    test too short to time gets 1."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("suite_estimate", ROOT / "scripts" / "suite_estimate.py")
    est = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(est)
    here = {"a": {"wall_s": 10.0, "cpu_s": 20.0}, "b": {"wall_s": 4.0, "cpu_s": 4.0},
            "c": {"wall_s": 1.0, "cpu_s": 0.01}, "new": {"wall_s": 2.0, "cpu_s": 2.0}}
    there = {"a": {"wall_s": 99.0, "cpu_s": 60.0}, "b": {"wall_s": 9.0, "cpu_s": 4.0}, "c": {"wall_s": 5.0,
                                                                                            "cpu_s": 5.0}}
    rows, median, missing = est.estimate(here, there)
    got = {test: (there_s, ratio) for test, _, there_s, ratio in rows}
    assert median == 2.0 and missing == 1  # ratios 3 (a) and 1 (b)
    assert got == {"a": (30.0, 3.0), "b": (4.0, 1.0), "c": (1.0, 1.0), "new": (4.0, 2.0)}


def test_suite_estimate_bad_files_are_one_line(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": {"wall_s": 1, "cpu_s": 1}}')
    cases = {"broken.json": "{", "list.json": "[]", "empty.json": "{}", "nokey.json": '{"a": {"wall_s": 1}}',
             "nan.json": '{"a": {"wall_s": NaN, "cpu_s": 1}}', "neg.json": '{"a": {"wall_s": 1, "cpu_s": -1}}',
             "str.json": '{"a": {"wall_s": "1", "cpu_s": 1}}', "scalar.json": '{"a": 3}'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    for name in [*cases, "missing.json"]:
        run = subprocess.run([sys.executable, str(ROOT / "scripts" / "suite_estimate.py"), str(good),
                              str(tmp_path / name)], capture_output=True, text=True, timeout=600)
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, (name, run)
        assert run.stderr.startswith(f"suite_estimate: {tmp_path / name}:"), run.stderr
