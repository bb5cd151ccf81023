"""fastsde.distributed and the commands under torchrun, on the CPU with gloo: P processes give the bits of one process
at the same --batch, a run with one rank SIGKILLed resumes to the same files, a run with other arguments refuses,
and distributed Fréchet distance and bits/dim equal one process within the stated tolerance.

The torchrun runs are real subprocesses (`python -m torch.distributed.run --standalone`, OMP_NUM_THREADS=1, with a
timeout); the one-process runs go through fastsde.cli.main in this process with one thread. Tolerances (README,
"Many processes and machines"): samples and per-digit bits/dim bit for bit; the mean and standard error of bits/dim
within 1e-12 relative (float64 sums in another order); FD within 1e-7 relative (float64 sums in another order, then
a matrix square root of covariances that are singular when n <= 128 features: measured up to 2e-8).
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastsde import _native, distributed, sampling
from fastsde import sde as sde_lib
from fastsde.cli import main
from fastsde.models import analytic

pytestmark = pytest.mark.usefixtures("one_thread")

TIMEOUT = 900  # a hang guard only: a loaded 2-core machine makes torchrun slow, never a failure
TIMING = {"wall_time_s", "samples_per_s"}  # measured, not computed: differ between any two runs
FD_RTOL = 1e-7
MEAN_RTOL = 1e-12
RING = ["--model", "gmm:ring", "--no-plot", "--no-progress", "--json"]


def _torchrun(nproc: int, *argv: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node nproc -m fastsde -- argv` (the `--` keeps torchrun's own parser, which
    takes abbreviations, from reading fastsde's --n as its --nnodes)."""
    result = subprocess.run(_torchrun_command(nproc, argv), capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _torchrun_command(nproc, argv):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m",
            "fastsde", "--", *argv]


def _one_process(capsys, *argv: str) -> dict:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _assert_same_arrays(a, b):
    with np.load(a) as x, np.load(b) as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            if name not in TIMING:
                assert x[name].dtype == y[name].dtype and np.array_equal(x[name], y[name]), name


# ---- the engine in one process ------------------------------------------------------------------------------------


def _ring_factory(calls=None, fail_at=None, steps=30):
    sde = sde_lib.VPSDE(N=steps)
    model = analytic.AnalyticScoreModel(analytic.get_mixture("ring"), sde, continuous=True)

    def factory(ids):
        sampler = sampling.get_pc_sampler(sde, (len(ids), 2), "euler_maruyama", "none", lambda x: x, 0.16,
                                          eps=1e-3, seed=5, sample_ids=ids)

        def draw():
            if calls is not None:
                calls.append(int(ids[0]))
                if fail_at is not None and len(calls) > fail_at:
                    raise KeyboardInterrupt  # a kill between shards
            return sampler(model)[0]
        return draw
    return factory


def test_sample_in_one_process_merges_micro_batches_in_id_order(tmp_path):
    out = str(tmp_path / "ring.npz")
    result = distributed.sample(_ring_factory(), 10, out, batch=3, seed=5)
    with np.load(out) as data:
        merged = data["samples"]
    expected = np.concatenate([_ring_factory()(ids)().numpy() for _, ids in distributed.batches(10, 3, 0, 1)])
    assert merged.shape == (10, 2) and np.array_equal(merged, expected)
    assert np.array_equal(result.arrays["samples"], merged)
    assert (result.sampled, result.resumed, result.collective_bytes) == (10, 0, 0)
    assert not os.path.exists(distributed.shard_directory(out))  # shards and manifest gone once the file is written


def test_batches_deal_fixed_micro_batches_round_robin():
    deal = {r: [(k, ids.tolist()) for k, ids in distributed.batches(7, 2, r, 3)] for r in range(3)}
    assert deal == {0: [(0, [0, 1]), (3, [6])], 1: [(1, [2, 3])], 2: [(2, [4, 5])]}
    with pytest.raises(ValueError, match="batch must be a positive integer, got 0"):
        distributed.batches(7, 0)


def test_killed_run_resumes_and_a_changed_run_refuses(tmp_path):
    out = str(tmp_path / "ring.npz")
    shards = distributed.shard_directory(out)
    calls = []
    with pytest.raises(KeyboardInterrupt):
        distributed.sample(_ring_factory(calls, fail_at=2), 10, out, batch=3, seed=5, arguments={"steps": 30})
    assert sorted(os.listdir(shards)) == ["manifest.json", "shard-000000.npz", "shard-000001.npz"]
    open(os.path.join(shards, ".tmp-left-by-a-kill.npz"), "wb").close()

    with pytest.raises(ValueError, match=r"2 finished shards .*arguments\.steps: 30 there, 40 here; seed: 5 there, 6"):
        distributed.sample(_ring_factory(), 10, out, batch=3, seed=6, arguments={"steps": 40})
    assert len(os.listdir(shards)) == 4  # nothing deleted

    calls.clear()
    result = distributed.sample(_ring_factory(calls), 10, out, batch=3, seed=5, arguments={"steps": 30})
    assert calls == [6, 9] and (result.sampled, result.resumed) == (4, 6)  # only the missing micro-batches
    fresh = str(tmp_path / "fresh.npz")
    distributed.sample(_ring_factory(), 10, fresh, batch=3, seed=5, arguments={"steps": 30})
    _assert_same_arrays(out, fresh)


def test_damaged_shard_is_drawn_again_and_empty_directory_takes_new_arguments(tmp_path):
    out = str(tmp_path / "ring.npz")
    shards = distributed.shard_directory(out)
    with pytest.raises(KeyboardInterrupt):
        distributed.sample(_ring_factory([], fail_at=1), 10, out, batch=3, seed=5)
    with open(os.path.join(shards, "shard-000000.npz"), "r+b") as f:
        f.truncate(40)  # as after a machine crash on a filesystem that lost the tail
    calls = []
    distributed.sample(_ring_factory(calls), 10, out, batch=3, seed=5)
    assert calls == [0, 3, 6, 9]

    os.makedirs(shards)
    with open(os.path.join(shards, "manifest.json"), "w") as f:
        json.dump({"format": distributed.FORMAT, "n": 99}, f)  # no finished shard: nothing to lose
    distributed.sample(_ring_factory(), 10, out, batch=3, seed=5)
    assert not os.path.exists(shards)


def test_bad_sampler_output_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="'samples' must have a leading dimension of 3"):
        distributed.sample(lambda ids: lambda: torch.zeros(2, 2), 6, str(tmp_path / "x.npz"), batch=3, seed=0)


# ---- the commands under torchrun ------------------------------------------------------------------------------------


@pytest.mark.parametrize("nproc", [2, 3])
def test_torchrun_mixture_samples_equal_one_process(capsys, tmp_path, nproc):
    # 13 points in micro-batches of 3: five batches, uneven over 2 and 3 ranks, the last one short. VE with score_sde's
    # Langevin corrector couples the samples of a batch, so this also checks the micro-batches are the same ones.
    argv = [*RING, "--sde", "ve", "--sigma-max", "5", "--steps", "40", "--n", "13", "--batch", "3"]
    _one_process(capsys, "sample", *argv, "--out", str(tmp_path / "one"))
    report = json.loads(_torchrun(nproc, "sample", *argv, "--out", str(tmp_path / "many")).stdout)
    assert report["processes"] == nproc and report["batch"] == 3
    _assert_same_arrays(tmp_path / "one.npz", tmp_path / "many.npz")


def test_torchrun_digits_default_command_equals_one_process(capsys, tmp_path):
    """The issue's `torchrun ... -m fastsde sample --n 24 --out d2` vs `fastsde sample --n 24 --out d1`, with fewer
    steps: the default --batch does not depend on the number of processes."""
    argv = ["sample", "--n", "6", "--steps", "2", "--no-plot", "--no-progress", "--json"]
    _one_process(capsys, *argv, "--out", str(tmp_path / "d1"))
    _torchrun(2, *argv, "--out", str(tmp_path / "d2"))
    _assert_same_arrays(tmp_path / "d1.npz", tmp_path / "d2.npz")


def test_torchrun_model_file_three_ranks_equal_one_process(capsys, tmp_path):
    from fastsde.digits.pretrained import score_model_path

    path = score_model_path("digits", "digits", "ve")  # reverse diffusion + Langevin: batch-coupled
    argv = ["sample", "--model", path, "--n", "5", "--batch", "2", "--steps", "2", "--no-plot", "--no-progress",
            "--json"]
    _one_process(capsys, *argv, "--out", str(tmp_path / "one"))
    _torchrun(3, *argv, "--out", str(tmp_path / "three"))
    _assert_same_arrays(tmp_path / "one.npz", tmp_path / "three.npz")


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="finds the worker processes through /proc")
def test_sigkill_one_rank_then_restart_gives_the_same_files(capsys, tmp_path):
    argv = [*RING, "--sde", "vp", "--steps", "1000", "--n", "24", "--batch", "2", "--out", str(tmp_path / "killed")]
    shards = tmp_path / "killed.shards"
    run = subprocess.Popen(_torchrun_command(2, ["sample", *argv]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (shards.is_dir() and len([f for f in os.listdir(shards) if f.startswith("shard-")]) >= 2):
            assert run.poll() is None, f"the run ended before two shards were written: {run.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        workers = [p for p in _children(run.pid) if "fastsde" in _cmdline(p)]
        assert len(workers) == 2, [_cmdline(p) for p in _children(run.pid)]
        os.kill(workers[-1], signal.SIGKILL)
        run.communicate(timeout=TIMEOUT)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode != 0
    assert not (tmp_path / "killed.npz").exists(), "the run finished before the kill: nothing was resumed"

    report = json.loads(_torchrun(2, "sample", *argv).stdout)
    assert 0 < report["resumed"] < 24
    assert not shards.exists()
    _one_process(capsys, "sample", *argv[:-1], str(tmp_path / "whole"))
    _assert_same_arrays(tmp_path / "whole.npz", tmp_path / "killed.npz")


def test_torchrun_eval_fd_equals_one_process(capsys, tmp_path):
    from fastsde import metrics
    from fastsde.digits.evaluation import DigitsEvaluator

    evaluator = DigitsEvaluator()
    g = torch.Generator().manual_seed(0)
    images = 0.7 * evaluator.train_images[:40] + 0.3 * torch.rand(40, 1, 16, 16, generator=g)
    np.savez(tmp_path / "images.npz", samples=images.numpy())
    argv = ["eval", "--samples", str(tmp_path / "images.npz"), "--batch", "7", "--no-progress", "--json"]
    one = _one_process(capsys, *argv)
    three = json.loads(_torchrun(3, *argv).stdout)
    assert three["processes"] == 3 and three["n"] == one["n"] == 40
    assert three["fd"] == pytest.approx(one["fd"], rel=FD_RTOL, abs=0)
    two_pass = metrics.frechet_distance(evaluator.features(images), evaluator.test_features)
    assert one["fd"] == pytest.approx(two_pass, rel=FD_RTOL, abs=0)
    assert three["classes"]["histogram"] == one["classes"]["histogram"]
    assert three["classes"]["confidence"] == pytest.approx(one["classes"]["confidence"], rel=MEAN_RTOL, abs=0)
    # KID from the features gathered across ranks: the same images' features, so the same estimate
    kid = metrics.kernel_distance(evaluator.features(images), evaluator.test_features)
    for report in (one, three):
        assert report["kid"]["subset_size"] == 10
        assert report["kid"]["kid"] == pytest.approx(kid["kid"], rel=1e-6, abs=1e-6 * kid["stderr"])


def test_torchrun_likelihood_equals_one_process(capsys):
    # Loose RK45 tolerances: a digit's probability-flow ODE with the autograd divergence takes seconds on this CPU.
    argv = ["likelihood", "--n", "2", "--batch", "1", "--rtol", "1e-1", "--atol", "1e-1", "--no-progress", "--json"]
    one = _one_process(capsys, *argv)
    two = json.loads(_torchrun(2, *argv).stdout)
    assert two["processes"] == 2 and two["bpd"] == one["bpd"]  # each digit on one rank: its value, bit for bit
    assert two["bpd_mean"] == pytest.approx(one["bpd_mean"], rel=MEAN_RTOL, abs=0)
    assert two["bpd_stderr"] == pytest.approx(one["bpd_stderr"], rel=MEAN_RTOL, abs=0)
    assert one["bpd_mean"] == pytest.approx(np.mean(one["bpd"]), rel=MEAN_RTOL, abs=0)


@pytest.mark.skipif(not _native.available(), reason="the suite measures the native backend")
def test_bench_suite_runs_quick(tmp_path, monkeypatch):
    from fastsde.benchmarks import bench_distributed, common

    monkeypatch.setattr(common, "copy_bandwidth_gbps", lambda numel=0, reps=0: 10.0)
    # One thread in the one-process case too: two OpenMP threads on cores other tests share wait for seconds.
    monkeypatch.setattr(bench_distributed, "CONFIGS", ((1, 1), (2, 1)))
    out = tmp_path / "distributed.json"
    assert main(["bench", "distributed", "--quick", "--threads", "1", "--json", str(out)]) == 0
    one, two = json.loads(out.read_text())
    assert (one["case"], two["case"]) == ("digits_p1x1", "digits_p2x1")
    assert one["same_bits"] and two["same_bits"] and one["median_ms"] > 0 and two["merge_ms"] > 0
    assert one["collective_bytes_per_sample"] == 0 and two["collective_bytes_per_sample"] > 0
    assert two["shard_bytes_per_sample"] > 4 * 256  # float32 pixels, the sample id and the npz headers
    assert set(one["batch_max_abs_diff"]) == {"4", "1"}
