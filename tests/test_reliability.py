"""Issue #14's reproducers, one test each: every bad input gets one clear line (commands) or one clear exception (API),
nothing hangs, nothing returns non-finite output with success, and no file is left half-written."""
import json
import math
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from fastsde import ops, sampling, solvers
from fastsde import sde as sde_lib
from fastsde.likelihood import get_likelihood_fn
from fastsde.ops.dispatch import backend_available
from fastsde.sampling.guard import FiniteWatch, NonFiniteError, check_finite
from helpers import one_error_line, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


_run, _one_line = run_cli, one_error_line


class Payload:
    """Unpickling this writes a marker file: the tests assert it never appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------------------------------- commands
@pytest.mark.parametrize("device", ["meta", "tpu", "cuda", "cuda:7", "bogus"])
def test_sample_device_is_one_usage_line(capsys, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, out, err = _run(capsys, "sample", "--device", device, "--n", "2")
    assert code == 2 and out == ""
    assert "--device" in _one_line(err)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Copies of the shipped VP model with damaged metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from fastsde.digits.pretrained import shipped_path

    src, root = shipped_path("digits_vp.safetensors"), tmp_path_factory.mktemp("models")
    with safe_open(src, framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(src)
    config = json.loads(meta["config"])
    variants = {
        "sde_list": {"fastsde.sde": json.dumps(["vp"])},
        "sde_with_N": {"fastsde.sde": json.dumps({"name": "vp", "kwargs": {"N": 5}})},
        "sde_unknown": {"fastsde.sde": json.dumps({"name": "vq", "kwargs": {}})},
        "sde_not_json": {"fastsde.sde": "{"},
        "config_unknown_field": {"config": json.dumps({**config, "bogus": 1})},
    }
    paths = {}
    for name, update in variants.items():
        paths[name] = str(root / f"{name}.safetensors")
        save_file(tensors, paths[name], metadata={**meta, **update})
    raw = open(src, "rb").read()
    paths["truncated"] = str(root / "truncated.safetensors")
    open(paths["truncated"], "wb").write(raw[: len(raw) // 2])
    return paths


@pytest.mark.parametrize("variant", ["sde_list", "sde_with_N", "sde_unknown", "sde_not_json", "config_unknown_field",
                                     "truncated"])
def test_damaged_model_file_is_one_line(capsys, tmp_path, model_files, variant):
    out_stem = tmp_path / "s"
    code, out, err = _run(capsys, "sample", "--model", model_files[variant], "--n", "2", "--steps", "2",
                          "--out", str(out_stem), "--no-progress")
    assert code == 1 and out == ""
    assert model_files[variant] in _one_line(err)
    assert not list(tmp_path.iterdir())


def _npz_variants(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((4, 1, 16, 16), np.float32))
    np.savez(tmp_path / "good.npz", samples=np.full((4, 1, 16, 16), 0.5, np.float32))
    raw = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    np.savez(tmp_path / "empty.npz", samples=np.zeros((0, 1, 16, 16), np.float32))
    np.savez(tmp_path / "wrong_key.npz", images=np.zeros((4, 1, 16, 16), np.float32))
    np.savez(tmp_path / "wrong_shape.npz", samples=np.zeros((4, 2), np.float32))
    np.savez(tmp_path / "ints.npz", samples=np.zeros((4, 1, 16, 16), np.int64))
    obj = np.empty(1, dtype=object)
    obj[0] = Payload(tmp_path / "PWNED")
    np.savez(tmp_path / "pickled.npz", samples=obj)
    (tmp_path / "text.npz").write_text("not a zip")
    return ["plain.npy", "truncated.npz", "empty.npz", "wrong_key.npz", "wrong_shape.npz", "ints.npz", "pickled.npz",
            "text.npz", "missing.npz"]


def test_eval_samples_damaged_files_are_one_line(capsys, tmp_path):
    for name in _npz_variants(tmp_path):
        code, out, err = _run(capsys, "eval", "--samples", str(tmp_path / name))
        assert code == 1 and out == "", name
        line = _one_line(err)
        assert name in line, line
        if name == "empty.npz":
            assert "empty" in line and "NaN" not in line
    assert not (tmp_path / "PWNED").exists()


def test_train_refuses_a_pickle_checkpoint_without_running_it(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "checkpoint.pt", "wb") as f:
        pickle.dump({"config": Payload(tmp_path / "PWNED")}, f)
    code, out, err = _run(capsys, "train", "--steps", "1", "--out", str(run), "--no-progress")
    assert code == 1
    assert "checkpoint.pt cannot be resumed" in _one_line(err)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("argv", [
    ["--lr", "-1"], ["--lr", "nan"], ["--ema-decay", "1.5"], ["--seed", "-3"], ["--device", "meta"],
    ["--grad-clip", "-1"], ["--warmup", "-1"],
])
def test_train_validates_before_creating_out(capsys, tmp_path, argv):
    out_dir = tmp_path / "new"
    code, out, err = _run(capsys, "train", "--steps", "1", "--out", str(out_dir), *argv)
    assert code == 2
    _one_line(err)
    assert not out_dir.exists()


def test_train_unknown_preset_creates_nothing(capsys, tmp_path):
    out_dir = tmp_path / "new"
    code, _, err = _run(capsys, "train", "--steps", "1", "--preset", "bogus", "--out", str(out_dir))
    assert code == 1 and "bogus" in _one_line(err)
    assert not out_dir.exists()


@pytest.mark.parametrize("argv, what", [
    (["sample", "--n", "10000000"], "--n 10000000 digits needs about"),
    (["sample", "--model", "gmm:ring", "--n", "1000000000"], "needs about"),
    (["eval", "--n", "100000000"], "needs about"),
    (["train", "--batch-size", "1000000000", "--steps", "1"], "--batch-size 1000000000 needs about"),
])
def test_memory_is_estimated_and_refused_before_work(capsys, tmp_path, argv, what):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, out, err = _run(capsys, *argv, "--out", str(tmp_path / "o")) if argv[0] != "eval" else _run(capsys, *argv)
    line = _one_line(err)
    assert code == 1 and what in line and "available" in line, line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_000_000  # KiB: nothing big was allocated
    assert not list(tmp_path.iterdir())


def test_ode_eps_past_T_is_one_line(capsys, tmp_path):
    code, out, err = _run(capsys, "sample", "--model", "gmm:ring", "--sampler", "ode", "--eps", "2", "--n", "8",
                          "--out", str(tmp_path / "o"))
    assert code == 1 and "eps must be in (0, T=1" in _one_line(err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [
    ["sample", "--model", "gmm:ring", "--sde", "vp", "--beta-max", "inf"],
    ["sample", "--model", "gmm:ring", "--sde", "vp", "--beta-min", "nan"],
    ["sample", "--model", "gmm:ring", "--snr", "nan"],
    ["sample", "--model", "gmm:ring", "--snr", "-1"],
    ["inpaint", "--snr", "-1"], ["inpaint", "--snr", "nan"], ["inpaint", "--predictor", "bogus"],
    ["likelihood", "--rtol", "0"], ["likelihood", "--rtol", "-1"], ["likelihood", "--atol", "nan"],
    ["bench", "steps", "--threads", "0"],
])
def test_bad_numbers_are_usage_errors(capsys, tmp_path, argv):
    code, out, err = _run(capsys, *argv, *(["--out", str(tmp_path / "o")] if argv[0] in ("sample", "inpaint")
                                           else []))
    assert code == 2 and out == ""
    _one_line(err)
    assert not list(tmp_path.iterdir())


class NaNModel(torch.nn.Module):
    """A score model that returns NaN everywhere (a diverged network)."""

    def forward(self, x, labels):
        return torch.full_like(x, float("nan"))


def test_inpaint_with_a_nan_model_fails_and_writes_nothing(capsys, tmp_path, monkeypatch):
    from fastsde.cli import inpaint
    from fastsde.digits.pretrained import load_score_model, shipped_path

    mf = load_score_model(shipped_path("digits_vp.safetensors"))
    model = NaNModel()
    model.config = mf.model.config
    mf.model = model
    monkeypatch.setattr(inpaint, "load_model_for", lambda args: (mf, "auto"))
    code, out, err = _run(capsys, "inpaint", "--n", "2", "--steps", "20", "--out", str(tmp_path / "o"),
                          "--no-progress")
    assert code == 1 and ("not finite" in _one_line(err) or "became non-finite" in _one_line(err))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("out_arg, message", [
    ("X.txt", "--out must end in .npz"), ("", "--out must name a file"), ("dir/", "--out must name a file"),
])
def test_sample_out_is_checked_before_work(capsys, tmp_path, out_arg, message):
    code, _, err = _run(capsys, "sample", "--model", "gmm:ring", "--n", "8", "--steps", "5",
                        "--out", str(tmp_path) + "/" + out_arg if out_arg else "")
    assert code == 2 and message in _one_line(err)
    assert not list(tmp_path.iterdir())


def test_png_path_a_directory_leaves_no_npz(capsys, tmp_path):
    (tmp_path / "s.png").mkdir()
    code, _, err = _run(capsys, "sample", "--model", "gmm:ring", "--n", "8", "--steps", "5",
                        "--out", str(tmp_path / "s"))
    assert code == 2 and "is a directory" in _one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


def test_sample_writes_atomically_and_reports_exact_paths(capsys, tmp_path, monkeypatch):
    from fastsde.digits import plotting

    def broken_plot(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plotting, "plot_samples_2d", broken_plot)
    code, _, err = _run(capsys, "sample", "--model", "gmm:ring", "--n", "8", "--steps", "5",
                        "--out", str(tmp_path / "s"), "--no-progress")
    assert code == 1 and "disk full" in _one_line(err)
    # the .npz written before the failure was a temporary, now removed; what stays is the resume state of the sampled
    # micro-batches (fastsde.distributed), so running the command again merges instead of sampling again
    assert [p.name for p in tmp_path.iterdir()] in ([], ["s.shards"])
    monkeypatch.undo()
    code, out, err = _run(capsys, "sample", "--model", "gmm:ring", "--n", "8", "--steps", "5",
                          "--out", str(tmp_path / "s.npz"), "--no-progress", "--json")
    report = json.loads(out)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir() if p.name != "s.shards") == ["s.npz", "s.png"]
    assert report["npz"] == str(tmp_path / "s.npz") and report["png"] == str(tmp_path / "s.png")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_bench_json_unwritable_even_for_root_is_checked_before_measuring(capsys):
    code, out, err = _run(capsys, "bench", "steps", "--quick", "--json", "/proc/nope/b.json")  # os.access lies to root
    assert code == 2 and "--json: /proc is not writable" in _one_line(err) and out == ""


def test_bench_json_is_checked_before_measuring(capsys, tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as root: permissions do not apply")
        code, out, err = _run(capsys, "bench", "steps", "--quick", "--json", str(tmp_path / "ro" / "b.json"))
        assert code == 2 and "not writable" in _one_line(err) and out == ""
    finally:
        os.chmod(tmp_path / "ro", 0o700)


# ---------------------------------------------------------------------------------------------------- sampler API
def _ring():
    from fastsde.models import analytic

    mixture = analytic.get_mixture("ring")
    sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=5.0, N=20)
    return sde, analytic.AnalyticScoreModel(mixture, sde, continuous=True)


def test_ode_sampler_with_a_nan_model_stops_with_the_time():
    sde, _ = _ring()
    sampler = sampling.get_ode_sampler(sde, (4, 2), lambda x: x, seed=0)
    with pytest.raises(NonFiniteError, match=r"at step 1, t = 1: 4 of 4 samples hold NaN"):
        sampler(NaNModel())


def test_ode_sampler_eval_budget_bounds_a_pathological_model():
    sde, model = _ring()

    class Stiff(torch.nn.Module):
        def forward(self, x, labels):
            return 1e8 * torch.sin(1e6 * x)

    sampler = sampling.get_ode_sampler(sde, (4, 2), lambda x: x, seed=0, max_evals=200)
    with pytest.raises(RuntimeError, match="200 evaluations"):
        sampler(Stiff())


def test_likelihood_with_a_nan_model_stops():
    sde, _ = _ring()
    fn = get_likelihood_fn(sde, lambda x: x, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteError, match="drift became non-finite at step 1"):
        fn(NaNModel(), torch.randn(3, 2))


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=2.0), r"eps must be in \(0, T=1"), (dict(eps=0.0), "eps must be"), (dict(rtol=0.0), "rtol must be"),
    (dict(rtol=-1.0), "rtol must be"), (dict(atol=float("nan")), "atol must be"), (dict(method="Euler"), "method"),
])
def test_ode_factories_check_their_numbers(kwargs, message):
    sde, _ = _ring()
    with pytest.raises(ValueError, match=message):
        sampling.get_ode_sampler(sde, (4, 2), lambda x: x, **kwargs)
    with pytest.raises(ValueError, match=message):
        get_likelihood_fn(sde, lambda x: x, **kwargs)


@pytest.mark.parametrize("seed", [3.7, "3", True, -1, 2**64])
def test_seed_must_be_an_int(seed):
    sde, _ = _ring()
    with pytest.raises((TypeError, ValueError), match="seed must be"):
        sampling.get_pc_sampler(sde, (4, 2), "euler_maruyama", "none", lambda x: x, 0.16, seed=seed)
    with pytest.raises((TypeError, ValueError), match="seed must be"):
        sampling.get_ode_sampler(sde, (4, 2), lambda x: x, seed=seed)
    with pytest.raises((TypeError, ValueError), match="seed must be"):
        solvers.get_sampler("ddim", sde, (4, 2), 5, seed=seed)


@pytest.mark.parametrize("shape", [(4.5, 2), (4, "2"), (True, 2), (0, 2), (4,)])
def test_shape_must_be_positive_ints(shape):
    sde, _ = _ring()
    with pytest.raises((TypeError, ValueError), match="shape must be"):
        sampling.get_pc_sampler(sde, shape, "euler_maruyama", "none", lambda x: x, 0.16, seed=0)
    with pytest.raises((TypeError, ValueError), match="shape must be"):
        sampling.get_ode_sampler(sde, shape, lambda x: x, seed=0)


@pytest.mark.parametrize("snr", [float("nan"), -0.1, float("inf"), "0.1"])
def test_snr_must_be_finite_and_nonnegative(snr):
    sde, _ = _ring()
    with pytest.raises(ValueError, match="snr must be"):
        sampling.get_pc_sampler(sde, (4, 2), "reverse_diffusion", "langevin", lambda x: x, snr, seed=0)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_wrong_shaped_model_output_is_refused_on_every_backend(backend):
    sde, _ = _ring()

    class Wrong(torch.nn.Module):
        def forward(self, x, labels):
            return torch.zeros(1, x.shape[1])  # would broadcast against x

    sampler = sampling.get_pc_sampler(sde, (4, 2), "reverse_diffusion", "none", lambda x: x, 0.16, seed=0,
                                      backend=backend, continuous=True)
    with pytest.raises(ValueError, match=r"model output must .*\(4, 2\).*got \(1, 2\)"):
        sampler(Wrong())


def test_solver_eps_past_T_is_refused():
    sde, _ = _ring()
    with pytest.raises(ValueError, match="eps must be"):
        solvers.get_sampler("ddim", sde, (4, 2), 5, eps=2.0, seed=0)


def test_guard_messages_and_device_side_watch():
    x = torch.ones(5, 3)
    assert check_finite(x) is x
    x[1, 2], x[3, 0] = float("nan"), float("inf")
    with pytest.raises(NonFiniteError, match=r"at step 7, t = 0.25: 2 of 5 samples"):
        check_finite(x, step=7, t=0.25)
    watch = FiniteWatch(x, every=4)
    watch.update(torch.ones(5, 3))
    watch.check(3)  # fine so far
    watch.update(x)
    watch.check(5)  # not a check step: no sync, no error yet
    with pytest.raises(NonFiniteError, match=r"between steps 4 and 7.*2 of 5 samples"):
        watch.check(7)


# ---------------------------------------------------------------------------------------------------- ops
def _attn_args(C=8, B=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(x=r(B, C, 4, 4), gn_weight=r(C), gn_bias=r(C), qkv_weight=r(3 * C, C) / C, qkv_bias=r(3 * C),
                out_weight=r(C, C) / C, out_bias=r(C))


BACKENDS = ["reference", "native"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
def test_attn_block_rejects_integer_and_complex(backend, dtype):
    args = _attn_args()
    args["x"] = args["x"].to(dtype)
    with pytest.raises(TypeError, match=f"x must be float32.*got {dtype}"):
        ops.attn_block(**args, num_groups=2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw, message", [
    (dict(num_groups=0), "num_groups must be a positive int"), (dict(num_groups=2, num_heads=0), "num_heads must"),
    (dict(num_groups=2.0), "num_groups must be a positive int"), (dict(num_groups=2, eps=-1.0), "eps must"),
])
def test_attn_block_rejects_zero_groups_and_heads(backend, kw, message):
    with pytest.raises(ValueError, match=message):
        ops.attn_block(**_attn_args(), **kw, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attn_block_batch_zero_is_empty_on_every_backend(backend):
    y = ops.attn_block(**_attn_args(B=0), num_groups=2, backend=backend)
    assert y.shape == (0, 8, 4, 4)


def test_group_norm_accepts_numpy_ints_and_names_bad_ones():
    x = torch.randn(2, 4, 3)
    ref = ops.group_norm(x, 2, backend="reference")
    assert torch.equal(ops.group_norm(x, np.int64(2), backend="reference"), ref)
    with pytest.raises(ValueError, match=r"num_groups \(3\) must divide the channels \(4\)"):
        ops.group_norm(x, np.int64(3))


@pytest.mark.parametrize("op", ["affine_step", "group_norm", "fsn1_normal"])
def test_meta_tensors_get_a_clear_error(op):
    x = torch.empty(3, 4, device="meta")
    with pytest.raises(ValueError, match="meta tensor"):
        if op == "affine_step":
            ops.affine_step(x, x, 1.0, 0.5, 0.1, seed=0)
        elif op == "group_norm":
            ops.group_norm(x, 2)
        else:
            ops.fsn1_normal(x, 0, torch.arange(3), 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_without_backward_refuse_inputs_requiring_grad(backend):
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="affine_step has no backward, but x requires grad"):
        ops.affine_step(x, torch.randn(3, 4), 1.0, 0.5, 0.1, seed=0, backend=backend)
    with pytest.raises(ValueError, match="fsn1_normal has no backward"):
        ops.fsn1_normal(torch.empty(3, 4, requires_grad=True), 0, torch.arange(3), 0, backend=backend)
    with torch.no_grad():
        ops.affine_step(x, torch.randn(3, 4), 1.0, 0.5, 0.1, seed=0, backend=backend)


def test_autograd_takes_a_backend_with_a_backward_or_is_refused():
    x = torch.randn(2, 4, 3, requires_grad=True)
    for backend in ("auto", "native"):  # the fused backward (tests/test_backward.py checks its values)
        y = ops.group_norm(x, 2, backend=backend)
        assert y.grad_fn is not None
        (gx,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(gx).all()
    args = {k: v.requires_grad_(True) for k, v in _attn_args().items()}
    if backend_available("triton", torch.device("cpu"))[0]:  # the flash-attention backward (tests/test_attention.py)
        assert ops.attn_block(**args, num_groups=2, backend="triton").grad_fn is not None
    assert ops.attn_block(**args, num_groups=2, backend="auto").grad_fn is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_aliasing_out_and_x_mean_out_is_refused(backend):
    x, s = torch.randn(3, 4), torch.randn(3, 4)
    buf = torch.empty(3, 4)
    with pytest.raises(ValueError, match="out and x_mean_out must be different tensors"):
        ops.affine_step(x, s, 1.0, 0.5, 0.1, seed=0, out=buf, x_mean_out=buf, backend=backend)
    with pytest.raises(ValueError, match="out and x_mean_out must be different tensors"):
        ops.langevin_step(x, s, 0.16, 1.0, seed=0, out=buf, x_mean_out=buf, backend=backend)
    big = torch.randn(4, 4)
    with pytest.raises(ValueError, match="partial overlap"):
        ops.affine_step(big[:3], s, 1.0, 0.5, 0.1, seed=0, out=big[1:], backend=backend)
    out = ops.affine_step(x.clone(), s, 1.0, 0.5, 0.1, seed=0, backend=backend)
    y = x.clone()
    ops.affine_step(y, s, 1.0, 0.5, 0.1, seed=0, out=y, backend=backend)  # in place stays allowed
    torch.testing.assert_close(y, out)


GN_BACKENDS = ["reference", "native"] + (["triton"] if os.environ.get("TRITON_INTERPRET") == "1" else [])


@pytest.mark.parametrize("backend", GN_BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "emb_add"])
@pytest.mark.parametrize("magnitude", [1e19, 1e25, 1e36])  # |x - mean| must itself be a float32
def test_group_norm_float32_near_the_float_range(backend, layout, magnitude):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 4, 4, generator=g) * magnitude
    emb = None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "emb_add":
        emb = torch.randn(2, 8, generator=g) * magnitude / 4
    y = ops.group_norm(x, 2, emb_add=emb, backend=backend)
    ref = ops.group_norm(x.double(), 2, emb_add=None if emb is None else emb.double(), backend="reference").float()
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    assert y.abs().amax() > 0.5  # not the all-zeros output of the overflowed variance


def test_group_norm_small_inputs_unchanged_by_the_overflow_path():
    x = torch.randn(2, 8, 5, 5)
    y = ops.group_norm(x, 4, backend="native")
    torch.testing.assert_close(y, ops.group_norm(x.double(), 4, backend="reference").float(), atol=2e-6, rtol=1e-5)


def test_nan_input_stays_nan_not_zero():
    x = torch.randn(1, 4, 3, 3)
    x[0, 0, 0, 0] = float("nan")
    for backend in GN_BACKENDS:
        y = ops.group_norm(x, 2, backend=backend)
        assert torch.isnan(y[0, :2]).all() and torch.isfinite(y[0, 2:]).all(), backend
    assert math.isnan(float("nan"))


def test_zipfile_reader_never_unpickles(tmp_path):
    from fastsde.cli.common import read_samples_npz

    obj = np.empty(1, dtype=object)
    obj[0] = Payload(tmp_path / "PWNED")
    np.savez(tmp_path / "p.npz", samples=obj)
    assert zipfile.is_zipfile(tmp_path / "p.npz")
    with pytest.raises(ValueError, match="p.npz"):
        read_samples_npz(str(tmp_path / "p.npz"))
    assert not (tmp_path / "PWNED").exists()
