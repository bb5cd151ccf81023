"""The benchmark suites run end to end and emit the documented record format (tiny sizes; no timing asserted)."""
import json

import pytest

from fastsde import _native
from fastsde.cli import main

pytestmark = pytest.mark.skipif(not _native.available(), reason="benchmarks measure the native backend")

KEYS = {"suite", "case", "backend", "numel", "median_ms", "gbps", "copy_gbps", "bandwidth_fraction", "baselines",
        "speedup"}


def test_steps_suite_records(tmp_path, monkeypatch, capsys):
    from fastsde.benchmarks import bench_step, common

    # Every case kind, at a size that runs in milliseconds; torch.compile is skipped (it takes ~20 s per case).
    monkeypatch.setattr(bench_step, "CASES", [(f"{k}_tiny", 4096, 4, k) for k in ("em", "rd", "langevin", "ode")])
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    out = tmp_path / "steps.json"
    assert main(["bench", "steps", "--quick", "--no-compile", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["case"] for r in records] == ["em_tiny", "rd_tiny", "langevin_tiny", "ode_tiny"]
    for r in records:
        assert set(r) == KEYS and r["suite"] == "steps" and r["backend"] == "native" and r["numel"] == 4096
        assert r["median_ms"] > 0 and r["gbps"] > 0 and r["copy_gbps"] == 10.0
        assert r["baselines"]["compile"] is None and r["speedup"]["compile"] is None
        assert r["speedup"]["reference"] == pytest.approx(r["baselines"]["reference"] / r["median_ms"], rel=0.01)
    assert "x ref" in capsys.readouterr().out


def test_sampler_suite_records(tmp_path, monkeypatch):
    from fastsde.benchmarks import bench_sampler, common

    real = bench_sampler._sampler
    monkeypatch.setattr(bench_sampler, "_sampler", lambda backend, device="cpu": real(backend, steps=5, n=16, device=device))
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    out = tmp_path / "sampler.json"
    assert main(["bench", "sampler", "--quick", "--json", str(out)]) == 0
    (r,) = json.loads(out.read_text())
    assert set(r) == KEYS and r["case"] == "pc_gmm_2d_1000" and r["baselines"]["reference"] > 0
    assert r["gbps"] is None and r["baselines"]["eager_inplace"] is None


def test_e2e_suite_records_and_tradeoff(tmp_path, monkeypatch, capsys, one_thread):
    from fastsde.digits import pretrained
    from fastsde.benchmarks import bench_e2e, common

    monkeypatch.setitem(pretrained.DIGITS_DEFAULTS, "steps", 3)
    monkeypatch.setattr(bench_e2e, "PC_STEPS", (3,))
    monkeypatch.setattr(bench_e2e, "ODE_RTOLS", (1e-1,))
    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0, device=None: 10.0)
    out, trade = tmp_path / "e2e.json", tmp_path / "tradeoff"
    assert main(["bench", "e2e", "--quick", "--no-compile", "--threads", "1", "--json", str(out), "--tradeoff",
                 str(trade), "--n", "16"]) == 0
    (r,) = json.loads(out.read_text())
    assert set(r) >= KEYS and r["case"] == "digits_pc_b64" and r["steps"] == 3 and r["numel"] == 64 * 256
    assert r["max_abs_diff"] < 1e-4 and r["baselines"]["reference"] > 0
    result = json.loads((tmp_path / "tradeoff.json").read_text())
    assert [row["sampler"] for row in result["rows"]] == ["pc", "ode"] and result["n"] == 16
    assert all(row["fd"] >= 0 and row["nfe"] > 0 for row in result["rows"])
    assert (tmp_path / "tradeoff.png").read_bytes()[:4] == b"\x89PNG"
