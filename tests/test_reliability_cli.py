"""The command-line, file, convert and distributed-resume reproducers of the hostile-user probe, one test each: every
bad input gets one `fastsde: error: ...` line (exit 2 for usage, 1 for a failure) before any work, nothing blocks,
nothing is left behind, and a resume never mixes samples of two different models."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastsde import cli, distributed, solvers
from fastsde.cli import common
from helpers import one_error_line, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_TIMEOUT = 120  # seconds; a FIFO that blocks shows up as a timeout, never as a hung test run

# A score_sde network small enough to build and convert in a fraction of a second (1x16x16, so `sample` runs it).
TINY = {"name": "ncsnpp", "nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8], "image_size": 16,
        "num_channels": 1, "sde": "vpsde", "embedding_type": "positional", "fir": False}


_run, _one_line = run_cli, one_error_line


def _subprocess(*argv, cwd=None):
    """`python -m fastsde argv` with a timeout (the child is killed if it blocks)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastsde", *map(str, argv)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=env, cwd=cwd)


def _tiny_checkpoint(path, *, change=None):
    """A score_sde checkpoint dict (DataParallel keys, EMA shadow parameters) of TINY; change(state dict) edits the
    weights before saving."""
    from fastsde.models.score_sde_nets import build_model

    torch.manual_seed(0)
    model = build_model(TINY, accelerate=False)
    sd = {"module." + k: v for k, v in model.state_dict().items()}
    if change is not None:
        change(sd)
    shadow = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    torch.save({"model": sd, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow}, "step": 1}, path)
    return str(path)


def _no_files(directory, *keep):
    left = sorted(set(os.listdir(directory)) - set(keep))
    assert not left, left


# ---------------------------------------------------------------------------------------------------- 1: --steps
@pytest.mark.parametrize("sampler", ["pc", "ode", *solvers.solver_names()])
def test_steps_beyond_the_bound_is_one_usage_line_for_every_sampler(capsys, tmp_path, sampler):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, out, err = _run(capsys, "sample", "--sampler", sampler, "--steps", "1000000000", "--n", "4", "--no-progress",
                          "--out", tmp_path / "s")
    line = _one_line(err)
    assert code == 2 and out == "" and "--steps" in line and f"at most {common.MAX_STEPS:,}" in line, line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no tables were allocated
    _no_files(tmp_path)


@pytest.mark.parametrize("sampler", ["ode", "adaptive"])
def test_explicit_steps_for_a_sampler_that_chooses_its_own_is_refused(capsys, tmp_path, sampler):
    code, out, err = _run(capsys, "sample", "--sampler", sampler, "--steps", "10", "--n", "4", "--out", tmp_path / "s")
    assert code == 2 and "--steps does not apply to --sampler " + sampler in _one_line(err)
    _no_files(tmp_path)


@pytest.mark.parametrize("command", [["eval"], ["inpaint"], ["train", "--snapshot-steps"]])
def test_steps_bound_in_the_other_commands(capsys, tmp_path, command):
    flag = command[1] if len(command) > 1 else "--steps"
    code, _, err = _run(capsys, command[0], flag, "1000000000", "--out", tmp_path / "o") if command[0] != "eval" \
        else _run(capsys, "eval", "--steps", "1000000000")
    assert code == 2 and flag in _one_line(err)
    _no_files(tmp_path)


def test_steps_at_the_bound_is_accepted_by_the_parser():
    parser = cli.build_parser()
    assert parser.parse_args(["sample", "--steps", str(common.MAX_STEPS)]).steps == common.MAX_STEPS


# ---------------------------------------------------------------------------------------------------- 2: FIFOs
def test_fifo_inputs_are_refused_without_blocking(tmp_path):
    model, samples, ckpt = tmp_path / "m.safetensors", tmp_path / "s.npz", tmp_path / "c.pth"
    run = tmp_path / "run"
    run.mkdir()
    for fifo in (model, samples, ckpt, run / "checkpoint.pt"):
        os.mkfifo(fifo)
    cases = [
        (["sample", "--model", model, "--n", "2", "--out", tmp_path / "o"], "m.safetensors is a FIFO"),
        (["eval", "--model", model, "--n", "2"], "m.safetensors is a FIFO"),
        (["eval", "--samples", samples], "s.npz is a FIFO"),
        (["train", "--steps", "1", "--out", run], "checkpoint.pt is a FIFO"),
        (["convert", ckpt, "--config", json.dumps(TINY), "--out", tmp_path / "x.safetensors"], "c.pth is a FIFO"),
    ]
    for argv, what in cases:
        result = _subprocess(*argv, "--no-progress" if argv[0] in ("sample", "eval", "train") else "--ema")
        assert result.returncode == 1 and result.stdout == "", (argv, result.stderr)
        assert what in _one_line(result.stderr) and "regular file" in result.stderr, (argv, result.stderr)
    _no_files(tmp_path, "m.safetensors", "s.npz", "c.pth", "run")
    assert os.listdir(run) == ["checkpoint.pt"]


def test_directory_as_model_file_is_one_line(capsys, tmp_path):
    (tmp_path / "d.safetensors").mkdir()
    code, _, err = _run(capsys, "sample", "--model", tmp_path / "d.safetensors", "--out", tmp_path / "o")
    assert code == 1 and "is a directory" in _one_line(err)


# ---------------------------------------------------------------------------------------------------- 3: --threads
@pytest.mark.parametrize("threads", ["100000", "10000", str(common.MAX_THREADS + 1)])
@pytest.mark.parametrize("command", ["sample", "eval", "inpaint", "likelihood", "train", "bench"])
def test_threads_beyond_the_bound_is_one_usage_line(capsys, tmp_path, command, threads):
    argv = [command] + (["steps"] if command == "bench" else []) + ["--threads", threads]
    argv += ["--out", tmp_path / "o"] if command in ("sample", "inpaint", "train") else []
    before = torch.get_num_threads()
    code, out, err = _run(capsys, *argv)
    line = _one_line(err)
    assert code == 2 and out == "" and "--threads" in line and f"at most {common.MAX_THREADS}" in line, line
    assert torch.get_num_threads() == before
    _no_files(tmp_path)


def test_threads_bound_is_a_multiple_of_the_cores_and_at_most_1024():
    assert common.MAX_THREADS == min(1024, 4 * (os.cpu_count() or 1))
    assert cli.build_parser().parse_args(["sample", "--threads", str(common.MAX_THREADS)]).threads == \
        common.MAX_THREADS


# ---------------------------------------------------------------------------------------------------- 4: resume
def _digits_model_copy(path, scale=None):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from fastsde.digits.pretrained import shipped_path

    src = shipped_path("digits_vp.safetensors")
    with safe_open(src, framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(src)
    if scale is not None:
        for key in tensors:
            if tensors[key].is_floating_point():
                tensors[key] = tensors[key] * scale
    save_file(tensors, str(path), metadata=meta)
    return str(path)


def test_resume_after_the_model_file_changed_is_refused(capsys, tmp_path, monkeypatch):
    model = _digits_model_copy(tmp_path / "m.safetensors")
    out = tmp_path / "out" / "s"
    argv = ["sample", "--model", model, "--n", "4", "--batch", "2", "--no-plot", "--no-progress", "--json",
            "--out", out]
    real_write, calls = distributed.write_npz_atomic, []

    def killed_after_one_shard(path, arrays):  # as a rank killed while drawing the second micro-batch
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(path, arrays)

    monkeypatch.setattr(distributed, "write_npz_atomic", killed_after_one_shard)
    assert _run(capsys, *argv)[0] == 130
    monkeypatch.setattr(distributed, "write_npz_atomic", real_write)
    shards = distributed.shard_directory(str(out) + ".npz")
    assert sorted(os.listdir(shards)) == ["manifest.json", "shard-000000.npz"]
    manifest = json.load(open(os.path.join(shards, "manifest.json")))
    assert manifest["arguments"]["model_sha256"] == distributed.file_sha256(model)

    original = open(model, "rb").read()
    _digits_model_copy(model, scale=1.001)  # other weights, same path, same metadata
    code, stdout, err = _run(capsys, *argv)
    line = _one_line(err)
    assert code == 1 and stdout == "" and "the model file changed since" in line and "model_sha256" in line, line
    assert sorted(os.listdir(shards)) == ["manifest.json", "shard-000000.npz"]  # nothing deleted
    assert not os.path.exists(str(out) + ".npz")

    open(model, "wb").write(original)  # the same bytes again: the resume finishes and equals a fresh run
    code, stdout, _ = _run(capsys, *argv)
    assert code == 0 and json.loads(stdout)["resumed"] == 2 and not os.path.exists(shards)
    fresh = tmp_path / "fresh"
    assert _run(capsys, *argv[:-1], fresh)[0] == 0
    with np.load(str(out) + ".npz") as a, np.load(str(fresh) + ".npz") as b:
        assert np.array_equal(a["samples"], b["samples"])


def test_changed_input_file_message_names_it(tmp_path):
    def factory(ids):
        return lambda: {"samples": ids.double()[:, None]}

    def fail_second(ids):
        if int(ids[0]) > 0:
            raise KeyboardInterrupt
        return lambda: {"samples": ids.double()[:, None]}

    out = str(tmp_path / "x.npz")
    with pytest.raises(KeyboardInterrupt):
        distributed.sample(fail_second, 4, out, batch=2, seed=0, arguments={"model_sha256": "a" * 64})
    with pytest.raises(ValueError, match=r"1 finished shards drawn from other input files: the model file changed "
                                         r"since \(arguments\.model_sha256: "):
        distributed.sample(factory, 4, out, batch=2, seed=0, arguments={"model_sha256": "b" * 64})


# ---------------------------------------------------------------------------------------------------- 5, 7: convert
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint_1.pth")


def test_convert_refuses_to_overwrite_its_input(capsys, tmp_path, checkpoint):
    before = open(checkpoint, "rb").read()
    for out in (checkpoint, os.path.relpath(checkpoint), os.path.join(os.path.dirname(checkpoint), ".",
                                                                      os.path.basename(checkpoint))):
        code, _, err = _run(capsys, "convert", checkpoint, "--config", json.dumps(TINY), "--out", out)
        assert code == 2 and "is the checkpoint being converted" in _one_line(err)
    link = tmp_path / "hard.pth"
    os.link(checkpoint, link)
    code, _, err = _run(capsys, "convert", checkpoint, "--config", json.dumps(TINY), "--out", link)
    assert code == 2 and "is the checkpoint being converted" in _one_line(err)
    assert open(checkpoint, "rb").read() == before


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_convert_refuses_non_floating_weights(capsys, tmp_path, dtype):
    def to_int(sd):
        key = next(k for k, v in sd.items() if v.dim() == 4)
        sd[key] = sd[key].to(dtype)

    path = _tiny_checkpoint(tmp_path / "int.pth", change=to_int)
    code, _, err = _run(capsys, "convert", path, "--config", json.dumps(TINY), "--out", tmp_path / "x.safetensors")
    line = _one_line(err)
    assert code == 1 and f"is {str(dtype).replace('torch.', '')}, the network expects floating point" in line, line
    _no_files(tmp_path, "int.pth")


def test_convert_refuses_integer_state_dict_keys(capsys, tmp_path):
    def int_key(sd):
        sd[7] = sd.pop(next(iter(sd)))

    path = _tiny_checkpoint(tmp_path / "k.pth", change=int_key)
    code, _, err = _run(capsys, "convert", path, "--config", json.dumps(TINY), "--out", tmp_path / "x.safetensors")
    assert code == 1 and "must map parameter names (strings) to tensors, got 7" in _one_line(err)
    _no_files(tmp_path, "k.pth")


@pytest.mark.parametrize("update, what", [
    ({"beta_max": float("nan")}, "config beta_max must be a finite number, got nan"),
    ({"beta_min": float("inf")}, "config beta_min must be a finite number, got inf"),
    ({"sigma_max": -1.0}, "config sigma_max must be positive"),
    ({"ch_mult": "12"}, "config ch_mult must be a list of integers, got '12'"),
    ({"nf": 0}, "config nf must be positive, got 0"),
    ({"nf": 2}, "nf * ch_mult must give channel counts of at least 4"),
    ({"nf": "16"}, "config nf must be an integer, got '16'"),
    ({"num_res_blocks": True}, "config num_res_blocks must be an integer, got True"),
    ({"dropout": 1.5}, "config dropout must be in [0, 1), got 1.5"),
    ({"attn_resolutions": [0]}, "config attn_resolutions must be a list of positive integers"),
    ({"num_heads": 0}, "fields ['num_heads'] that a score_sde network does not have"),
])
def test_convert_validates_the_config_before_any_work(capsys, tmp_path, checkpoint, update, what):
    config = json.dumps({**TINY, **update})
    code, out, err = _run(capsys, "convert", checkpoint, "--config", config, "--out", tmp_path / "x.safetensors")
    assert code == 1 and out == "" and what in _one_line(err), err
    _no_files(tmp_path)


@pytest.mark.parametrize("out, what", [
    ("DIR", "is a directory"),
    ("", "--out must name a file"),
    ("/proc/nope/x.safetensors", "is not writable"),
    ("FILE/x.safetensors", "is a file"),
])
def test_convert_output_path_is_checked_before_any_work(capsys, tmp_path, checkpoint, monkeypatch, out, what):
    import fastsde.compat.score_sde.checkpoint as ckpt_module

    (tmp_path / "FILE").write_text("x")
    out = {"DIR": str(tmp_path), "FILE/x.safetensors": str(tmp_path / "FILE" / "x.safetensors")}.get(out, out)
    monkeypatch.setattr(ckpt_module, "load_state_dict", lambda *a, **k: pytest.fail("read before the check"))
    code, _, err = _run(capsys, "convert", checkpoint, "--config", json.dumps(TINY), "--out", out)
    assert code == 2 and "--out" in _one_line(err) and what in err, err
    _no_files(tmp_path, "FILE")


def test_convert_makes_missing_parents_and_the_file_samples(capsys, tmp_path, checkpoint):
    out = tmp_path / "new" / "dir" / "tiny.safetensors"
    code, stdout, err = _run(capsys, "convert", checkpoint, "--config", json.dumps(TINY), "--ema", "--out", out)
    assert code == 0 and err == "" and f"wrote {out}" in stdout
    _no_files(out.parent, "tiny.safetensors")  # no temporary left
    code, stdout, err = _run(capsys, "sample", "--model", out, "--n", "2", "--steps", "2", "--no-plot",
                             "--no-progress", "--json", "--out", tmp_path / "s")
    assert code == 0, err
    assert json.loads(stdout)["nonfinite"] == 0


# ---------------------------------------------------------------------------------------------------- 7: metadata
@pytest.fixture(scope="module")
def unet_files(tmp_path_factory):
    """Copies of the shipped VP model whose UNet config metadata holds values the network cannot be built from."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from fastsde.digits.pretrained import shipped_path

    src, root = shipped_path("digits_vp.safetensors"), tmp_path_factory.mktemp("unet")
    with safe_open(src, framework="pt") as f:
        meta = dict(f.metadata())
    tensors, config = load_file(src), json.loads(meta["config"])
    paths = {}
    for name, update in {"nf_0": {"nf": 0}, "num_heads_0": {"num_heads": 0}, "ch_mult_str": {"ch_mult": "12"},
                         "ch_mult_empty": {"ch_mult": []}, "nf_float": {"nf": 32.5}, "nf_3": {"nf": 3},
                         "heads_3": {"num_heads": 3}, "dropout_nan": {"dropout": float("nan")},
                         "resolution_neg": {"resolution": -16}, "in_channels_null": {"in_channels": None}}.items():
        paths[name] = str(root / f"{name}.safetensors")
        save_file(tensors, paths[name], metadata={**meta, "config": json.dumps({**config, **update})})
    return paths


@pytest.mark.parametrize("variant, what", [
    ("nf_0", "nf must be positive, got 0"), ("num_heads_0", "num_heads must be positive, got 0"),
    ("ch_mult_str", "ch_mult must be a list of integers, got '12'"), ("ch_mult_empty", "at least one level"),
    ("nf_float", "nf must be an integer, got 32.5"), ("nf_3", "channel counts of at least 4"),
    ("heads_3", "num_heads must divide every level's channels"), ("dropout_nan", "dropout must be a finite number"),
    ("resolution_neg", "resolution must be positive"), ("in_channels_null", "in_channels must be an integer"),
])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_model_metadata_that_cannot_build_a_network_is_one_line(capsys, tmp_path, unet_files, variant, what, command):
    argv = [command, "--model", unet_files[variant], "--n", "2", "--no-progress"]
    code, out, err = _run(capsys, *argv, *(["--out", tmp_path / "s"] if command == "sample" else []))
    line = _one_line(err)
    assert code == 1 and out == "" and unet_files[variant] in line and what in line, line
    _no_files(tmp_path)


# ---------------------------------------------------------------------------------------------------- 6: memory
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_memory_estimate_counts_activations_per_micro_batch(capsys, tmp_path, monkeypatch, command):
    """--n 30000 --batch 64 was refused as needing 23.2 GiB (all n samples' activations at once): the estimate is the
    model's activations for one micro-batch, plus the n outputs and the digits metrics over all n."""
    import importlib

    from fastsde.digits.pretrained import load_score_model, shipped_path

    module = importlib.import_module("fastsde.cli." + ("sample" if command == "sample" else "evaluate"))
    seen = []

    def record(what, needed, device, limit=None):
        seen.append(needed)
        raise ValueError("stop here")  # no sampling: the test is about the number

    monkeypatch.setattr(module, "check_memory", record)
    argv = [command, "--n", "30000", "--batch", "64", "--no-progress"]
    code, _, err = _run(capsys, *argv, *(["--out", tmp_path / "s"] if command == "sample" else []))
    assert code == 1 and "stop here" in _one_line(err)
    config = load_score_model(shipped_path("digits_vp.safetensors")).model.config
    activations = common.unet_activation_bytes(config)
    want = 30000 * (2 * 256 * 4 + common.DIGITS_METRICS_BYTES) + 64 * (8 * 256 * 4 + activations)
    assert seen == [want]
    assert seen[0] < 4 * 2**30 < common.memory_estimate(30000, 256, activations=activations)  # the old count: all n


def test_memory_estimate_is_monotone_in_the_micro_batch():
    sizes = [common.memory_estimate(1000, 256, batch=b, activations=10_000, per_sample=7) for b in (1, 10, 1000, 5000)]
    assert sizes == sorted(sizes) and sizes[-1] == sizes[-2] == common.memory_estimate(1000, 256, activations=10_000,
                                                                                         per_sample=7)
    assert sizes[0] == 1000 * (2048 + 7) + (8 * 1024 + 10_000)


# ---------------------------------------------------------------------------------------------------- 8: leftovers
def test_failed_run_before_any_shard_leaves_nothing(capsys, tmp_path):
    """A model whose scores are NaN fails on the first micro-batch (non-finite samples): no shard directory."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from fastsde.digits.pretrained import shipped_path

    src = shipped_path("digits_vp.safetensors")
    with safe_open(src, framework="pt") as f:
        meta = dict(f.metadata())
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in load_file(src).items()}
    model = tmp_path / "nan.safetensors"
    save_file(tensors, str(model), metadata=meta)
    out = tmp_path / "out" / "s"
    code, stdout, err = _run(capsys, "sample", "--model", model, "--n", "4", "--batch", "2", "--no-progress",
                             "--out", out)
    assert code == 1 and "non-finite" in _one_line(err)
    assert not os.path.exists(str(out) + ".shards") and not os.path.exists(str(out) + ".npz")


def test_library_failure_before_any_shard_removes_the_directory_it_made(tmp_path):
    def bad(ids):
        def draw():
            raise ValueError("model exploded")
        return draw

    out = str(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="model exploded"):
        distributed.sample(bad, 4, out, batch=2, seed=0)
    _no_files(tmp_path)
    os.makedirs(distributed.shard_directory(out))  # a directory it did not make is left alone
    with pytest.raises(ValueError, match="model exploded"):
        distributed.sample(bad, 4, out, batch=2, seed=0)
    assert os.listdir(tmp_path) == ["x.shards"]


def test_second_run_into_the_same_output_is_refused_while_the_first_runs(tmp_path):
    out = str(tmp_path / "x.npz")
    nested = []

    def factory(ids):
        def draw():
            if int(ids[0]) == 2 and not nested:  # while the first run holds its shard directory
                with pytest.raises(ValueError, match=r"x\.shards is in use by another run into the same output"):
                    distributed.sample(factory, 4, out, batch=2, seed=0)
                nested.append(True)
            return {"samples": ids.double()[:, None]}
        return draw

    result = distributed.sample(factory, 4, out, batch=2, seed=0)
    assert nested and result.sampled == 4
    with np.load(out) as data:
        assert np.array_equal(data["samples"][:, 0], np.arange(4.0))
    _no_files(tmp_path, "x.npz")
    distributed.sample(factory, 4, out, batch=2, seed=0)  # the lock went with the first run


def test_two_concurrent_cli_runs_into_one_output(tmp_path):
    """Two identical runs at once: the second either finds the output in use (one clear line, exit 1) or runs after
    the first; whichever way, the file is the one a single run writes and no shard directory is left."""
    argv = ["sample", "--model", "gmm:ring", "--n", "64", "--batch", "8", "--steps", "200", "--no-plot",
            "--no-progress", "--out", tmp_path / "s"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "fastsde", *map(str, argv)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=SUBPROCESS_TIMEOUT)
        results.append((p.returncode, out, err))
    assert any(code == 0 for code, _, _ in results), results
    for code, _, err in results:
        assert code == 0 or (code == 1 and "in use by another run" in _one_line(err)), results
    assert sorted(os.listdir(tmp_path)) == ["s.npz"]
    single = tmp_path / "single"
    single.mkdir()
    assert _subprocess(*argv[:-1], single / "s").returncode == 0
    with np.load(tmp_path / "s.npz") as a, np.load(single / "s.npz") as b:
        assert np.array_equal(a["samples"], b["samples"])


def test_outputs_follow_the_umask(capsys, tmp_path, checkpoint):
    old = os.umask(0o022)
    try:
        assert _run(capsys, "sample", "--model", "gmm:ring", "--n", "16", "--steps", "5", "--no-progress",
                    "--out", tmp_path / "g")[0] == 0
        assert _run(capsys, "convert", checkpoint, "--config", json.dumps(TINY), "--out", tmp_path / "c.safetensors"
                    )[0] == 0
        distributed.write_npz_atomic(str(tmp_path / "w.npz"), {"a": np.zeros(2)})
        os.umask(0o077)
        assert _run(capsys, "sample", "--model", "gmm:ring", "--n", "16", "--steps", "5", "--no-plot",
                    "--no-progress", "--out", tmp_path / "private")[0] == 0
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in sorted(os.listdir(tmp_path))}
    assert modes == {"c.safetensors": 0o644, "g.npz": 0o644, "g.png": 0o644, "private.npz": 0o600, "w.npz": 0o644}


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "gmm", "--n", "1", "--steps", "5", "--no-plot", "--no-progress"],
    ["sample", "--n", "1", "--steps", "2", "--no-progress"],
    ["eval", "--n", "1", "--steps", "2", "--no-progress"],
])
def test_one_sample_is_refused_before_any_work(capsys, tmp_path, argv):
    """The quality report needs two samples: --n 1 sampled first, then failed, and left OUT.shards behind."""
    if argv[0] == "sample":
        argv = argv + ["--out", str(tmp_path / "s")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "--n" in one_error_line(err) and ">= 2" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_outputs_never_replace_a_device_or_fifo(capsys, tmp_path, kind):
    """AtomicOutputs renames a temporary over the output path: over /dev/null (as root) that replaced the device by
    a regular file. A path that exists and is not a regular file is refused before any work."""
    target = tmp_path / kind
    if kind == "fifo":
        os.mkfifo(target)
    else:
        try:
            os.mknod(target, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null twin
        except PermissionError:
            pytest.skip("mknod needs root")
    before = os.lstat(target)
    code, out, err = run_cli(capsys, "bench", "steps", "--smoke", "--no-compile", "--threads", "1", "--json", target)
    assert code == 2 and "exists and is not a regular file" in one_error_line(err) and "fastsde bench" not in out
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    with pytest.raises(common.UsageError, match="is not a regular file"):  # the writer refuses it too
        with common.AtomicOutputs() as files:
            open(files.path(str(target)), "w").close()
    assert os.lstat(target).st_mode == before.st_mode and sorted(p.name for p in tmp_path.iterdir()) == [kind]
