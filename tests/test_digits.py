"""The main job on real data: the shipped digits model, classifiers and metric, and the image commands.

Everything here runs on the files shipped in fastsde/data/ (see README "Shipped models" for the commands that made
them). Sampler runs use one thread: a batch of a few hundred KB gains nothing from a second thread on a busy machine.
"""
import json
import os

import numpy as np
import pytest
import torch

from fastsde import cli, metrics
from fastsde.digits.data import make_mask
from fastsde.digits.pretrained import DIGITS_DEFAULTS
from fastsde.digits.data import get_data_inverse_scaler, get_data_scaler, load_digits
from fastsde.digits.evaluation import DigitsEvaluator
from fastsde.digits.pretrained import load_classifier, load_score_model, shipped_path
from fastsde.sampling import get_pc_sampler

BOUND_FILE = os.path.join(os.path.dirname(__file__), "data", "digits_fd_bound.json")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def evaluator():
    return DigitsEvaluator()


@pytest.fixture(scope="module")
def shipped():
    return load_score_model(shipped_path(f"digits_{DIGITS_DEFAULTS['sde']}.safetensors"), backend="native")


def _sampler(mf, n, steps, backend="native", seed=0):
    return get_pc_sampler(mf.make_sde(N=steps), (n, 1, 16, 16), DIGITS_DEFAULTS["predictor"],
                          DIGITS_DEFAULTS["corrector"], get_data_inverse_scaler(mf.centered), 0.16, continuous=True,
                          eps=DIGITS_DEFAULTS["eps"], backend=backend, seed=seed)


# ------------------------------------------------------------------------------------------- the metric


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a_cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    b_cov = np.diag([1.0, 0.5, 2.0])
    a_mu, b_mu = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 0.0])
    exact = float(np.sum((a_mu - b_mu) ** 2) + np.trace(a_cov + b_cov - 2 * linalg.sqrtm(a_cov @ b_cov).real))
    a = rng.multivariate_normal(a_mu, a_cov, size=200000)
    b = rng.multivariate_normal(b_mu, b_cov, size=200000)
    assert metrics.frechet_distance(a, b) == pytest.approx(exact, rel=0.02)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert metrics.frechet_distance(a[:1000], b[:1000]) == pytest.approx(metrics.frechet_distance(b[:1000], a[:1000]))
    with pytest.raises(ValueError):
        metrics.frechet_distance(a[:, :2], b)


def test_class_statistics():
    logits = torch.tensor([[5.0, 0.0], [5.0, 0.0], [0.0, 5.0], [0.0, 5.0]])
    s = metrics.class_statistics(logits)
    assert s["histogram"] == [2, 2] and s["entropy"] == pytest.approx(np.log(2)) and s["confidence"] > 0.99
    assert metrics.class_statistics(logits[:2])["entropy"] == 0.0


def test_real_vs_real_is_far_below_real_vs_noise(evaluator):
    assert evaluator.test_accuracy > 0.97
    assert evaluator.frechet_distance(evaluator.test_images) == pytest.approx(0.0, abs=1e-6)
    for n in (64, 256):
        rvr, rvn = evaluator.real_vs_real(n), evaluator.real_vs_noise(n)
        assert rvr < 0.25 * rvn, (n, rvr, rvn)
    # More images, less estimation bias: real-vs-real shrinks with n.
    assert evaluator.real_vs_real(256) < evaluator.real_vs_real(64)
    # A blurred copy of real digits lies between real and noise.
    blurred = torch.nn.functional.avg_pool2d(evaluator.train_images[:256], 3, 1, 1)
    assert evaluator.real_vs_real(256) < evaluator.frechet_distance(blurred) < evaluator.real_vs_noise(256)


def test_digits_read_from_the_file_equal_scikit_learns_loader():
    """fastsde reads scikit-learn's digits file directly (no `import sklearn.datasets`): the same pixels and labels."""
    from sklearn.datasets import load_digits as sk_load_digits

    from fastsde.digits import data

    pixels, labels = data._sklearn_digits()
    bunch = sk_load_digits()
    assert np.array_equal(pixels, bunch.images) and np.array_equal(labels, bunch.target)


def test_load_digits_returns_copies_and_checks_size():
    """The data arrays are cached: an in-place change of what load_digits returned must not reach the next call.
    size is checked before any allocation (an inf, NaN, float or huge size was a raw error or a 5 PB allocation)."""
    from fastsde.digits.data import load_digits

    for size in (8, 16):
        x, y = load_digits("all", size)
        x.mul_(0), y.mul_(0)
        x2, y2 = load_digits("all", size)
        assert x2.max() == 1.0 and y2.max() == 9
    for size in (float("inf"), float("nan"), 16.0, None, True, 7, 10**6, 2**40, "16"):
        with pytest.raises(ValueError, match=r"size must be an integer in \[8, 1024\], got"):
            load_digits("train", size)


def test_kernel_distance_of_real_digits_is_zero_within_its_error(evaluator):
    """KID has no small-n bias: training digits score 0 within a few standard errors at n = 64 and 256 (FD's
    real-vs-real is 67 and 15 there), noise far above, and every evaluation reports it."""
    g = torch.Generator().manual_seed(0)
    for n in (64, 256):
        real = evaluator.train_images[torch.randperm(len(evaluator.train_images), generator=g)[:n]]
        kid = evaluator.kernel_distance(real)
        assert kid["subset_size"] == n // 4 and abs(kid["kid"]) < 4 * kid["stderr"], kid
        noise = evaluator.kernel_distance(torch.rand(n, 1, 16, 16, generator=g))
        assert noise["kid"] > kid["kid"] + 5 * (noise["stderr"] + kid["stderr"]), (noise, kid)
    report = evaluator.evaluate(real)
    assert report["kid"] == evaluator.kernel_distance(real) and evaluator.kernel_distance(real[:7]) is None


def test_shipped_classifiers_load_with_their_provenance():
    clean, sde, training = load_classifier(shipped_path("digits_classifier.safetensors"))
    assert sde is None and "fastsde train --classifier clean" in training["command"]
    noisy, sde, training = load_classifier(shipped_path(f"digits_{DIGITS_DEFAULTS['sde']}_tclassifier.safetensors"))
    assert sde == DIGITS_DEFAULTS["sde"] and noisy.config.time_embedding is not None
    assert "--classifier noisy" in training["command"]


# ------------------------------------------------------------------------------------------- the shipped model


def test_shipped_model_samples_reach_the_fd_bound(shipped, evaluator):
    with open(BOUND_FILE) as f:
        bound = json.load(f)
    n = bound["n"]
    # The bound is tied to the metric it was fixed from: recompute its inputs.
    rvr, rvn = evaluator.real_vs_real(n, seed=bound["seed"]), evaluator.real_vs_noise(n, seed=bound["seed"])
    assert rvr == pytest.approx(bound["real_vs_real"], rel=1e-6) and rvn == pytest.approx(bound["real_vs_noise"],
                                                                                          rel=1e-6)
    assert bound["bound"] == pytest.approx(rvr + bound["fraction"] * (rvn - rvr))
    x, _ = _sampler(shipped, n, DIGITS_DEFAULTS["steps"], seed=bound["seed"])(shipped.model)
    q = evaluator.evaluate(x.float().clamp(0, 1))
    assert q["nonfinite"] == 0
    assert q["fd"] < bound["bound"], q
    assert q["classes"]["entropy"] > 0.8 * q["classes"]["max_entropy"], q  # many classes, not one


def test_native_and_reference_give_the_same_images():
    path = shipped_path(f"digits_{DIGITS_DEFAULTS['sde']}.safetensors")
    fused, plain = load_score_model(path, backend="native"), load_score_model(path, reference=True)
    a, _ = _sampler(fused, 8, 30, backend="native", seed=3)(fused.model)
    b, _ = _sampler(plain, 8, 30, backend="reference", seed=3)(plain.model)
    assert float(a.abs().max()) > 0.5  # images, not zeros
    torch.testing.assert_close(a, b, rtol=0, atol=2e-4)


def test_inpainting_keeps_the_known_pixels(shipped, evaluator):
    from fastsde import controllable

    images, labels = load_digits("test")
    images, labels = images[:8], labels[:8]
    mask = make_mask("right", 8)
    data = get_data_scaler(shipped.centered)(images)
    common = dict(continuous=True, eps=1e-3, seed=0)
    sde = shipped.make_sde(N=60)
    inverse = get_data_inverse_scaler(shipped.centered)
    exact = controllable.get_pc_inpainter(sde, "euler_maruyama", "none", lambda x: x, 0.16, keep_known=True,
                                          **common)(shipped.model, data, mask)
    assert torch.equal(exact * mask, data * mask)  # bit for bit, in the model's range
    as_score_sde = controllable.get_pc_inpainter(sde, "euler_maruyama", "none", lambda x: x, 0.16,
                                                 **common)(shipped.model, data, mask)
    mean_coef = float(sde.marginal_prob(torch.ones(1, 1), torch.tensor([1e-3]))[0])
    torch.testing.assert_close(as_score_sde * mask, mean_coef * data * mask)
    torch.testing.assert_close(as_score_sde * (1 - mask), exact * (1 - mask))  # same generated part
    completed = inverse(exact).clamp(0, 1)
    assert float((completed - images).abs().mul(mask).max()) < 1e-6
    # The generated half is a digit: the classifier reads most completions as the original digit.
    assert float((evaluator.logits(completed).argmax(1) == labels).double().mean()) >= 0.5


def test_class_conditional_samples_are_the_requested_class(shipped, evaluator):
    from fastsde import controllable

    classifier, _, _ = load_classifier(shipped_path(f"digits_{DIGITS_DEFAULTS['sde']}_tclassifier.safetensors"))
    labels = torch.arange(30) % 10
    sampler = controllable.get_pc_conditional_sampler(
        shipped.make_sde(N=100), classifier, (30, 1, 16, 16), "euler_maruyama", "none",
        get_data_inverse_scaler(shipped.centered), 0.16, continuous=True, eps=1e-3, seed=0)
    x = sampler(shipped.model, labels)
    accuracy = float((evaluator.logits(x.float().clamp(0, 1)).argmax(1) == labels).double().mean())
    assert accuracy > 0.6, accuracy  # chance is 0.1


def test_likelihood_is_finite_and_stable_across_probes(shipped):
    from fastsde.likelihood import get_likelihood_fn

    images, _ = load_digits("test")
    data = get_data_scaler(shipped.centered)(images[:4])
    means = []
    for seed in (0, 1):
        fn = get_likelihood_fn(shipped.make_sde(), get_data_inverse_scaler(shipped.centered), rtol=1e-3, atol=1e-3,
                               generator=torch.Generator().manual_seed(seed))
        bpd, _, _ = fn(shipped.model, data)
        assert torch.isfinite(bpd).all()
        means.append(float(bpd.mean()))
    assert 0 < means[0] < 8 and abs(means[0] - means[1]) < 0.1, means


# ------------------------------------------------------------------------------------------- the commands


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_command_on_digits(capsys, tmp_path):
    code, out, err = _run(capsys, "sample", "--n", "10", "--steps", "20", "--threads", "1", "--no-progress",
                          "--json", "--out", str(tmp_path / "s"))
    assert code == 0, err
    r = json.loads(out)
    assert r["model"] == f"digits_{DIGITS_DEFAULTS['sde']}.safetensors" and r["n"] == 10 and r["steps"] == 20
    assert r["fd_real_vs_real"] < r["fd_real_vs_noise"] and len(r["classes"]["histogram"]) == 10
    assert r["kid"]["subsets"] == 4 and r["kid"]["subset_size"] == 2 and r["kid"]["stderr"] > 0
    assert r["command_s"] >= r["wall_time_s"] > 0  # the process's age includes the sampling
    with np.load(tmp_path / "s.npz") as data:
        assert data["samples"].shape == (10, 1, 16, 16)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    code, out, _ = _run(capsys, "sample", "--n", "10", "--steps", "20", "--threads", "1", "--no-progress",
                        "--class-label", "all", "--json", "--out", str(tmp_path / "c"))
    assert code == 0
    with np.load(tmp_path / "c.npz") as data:
        assert data["class_labels"].tolist() == list(range(10))  # n/10 of each digit, in order


def test_inpaint_eval_likelihood_commands(capsys, tmp_path):
    code, out, err = _run(capsys, "inpaint", "--n", "4", "--steps", "20", "--threads", "1", "--no-progress",
                          "--json", "--out", str(tmp_path / "i"))
    assert code == 0, err
    r = json.loads(out)
    assert r["known_pixels_max_abs_error"] == 0.0 and (tmp_path / "i.png").exists()
    assert 0.0 < r["known_pixels_sampler_drift"] < 1e-3  # score_sde's mean_coef(eps) data, eps = 1e-3 for VP
    with np.load(tmp_path / "i.npz") as data:
        known = data["mask"] == 1
        np.testing.assert_array_equal(data["completed"][known], data["original"][known])
    code, out, err = _run(capsys, "eval", "--n", "16", "--steps", "10", "--threads", "1", "--no-progress", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["n"] == 16 and r["test_accuracy"] > 0.97 and r["fd_real_vs_real"] < r["fd_real_vs_noise"]
    code, out, err = _run(capsys, "likelihood", "--n", "2", "--rtol", "1e-2", "--atol", "1e-2", "--threads", "1",
                          "--json")
    assert code == 0, err
    assert np.isfinite(json.loads(out)["bpd_mean"])


def test_train_command_writes_and_resumes(capsys, tmp_path):
    argv = ["train", "--steps", "2", "--batch-size", "4", "--snapshot-steps", "2", "--threads", "1",
            "--no-progress", "--out", str(tmp_path)]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "samples_000002.png").exists()
    code, out, err = _run(capsys, *argv[:2], "3", *argv[3:])
    assert code == 0 and "(1 now" in out, out


@pytest.mark.parametrize("argv, code", [
    (["inpaint", "--model", "gmm:ring"], 2),
    (["inpaint", "--n", "1000"], 2),
    (["eval", "--samples", "nosuchfile.npz"], 1),
    (["likelihood", "--sde", "subvp"], 1),  # no shipped subVP model
    (["inpaint", "--model", "foo"], 2),
    (["sample", "--class-label", "all", "--n", "15"], 2),
    (["train", "--out", "x", "--sde", "nope"], 2),
])
def test_image_command_errors_are_one_line(capsys, argv, code):
    got, _, err = _run(capsys, *argv)
    assert got == code
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_shipped_reference_features_are_fresh_and_equal_a_recomputation(evaluator):
    """The shipped features stand for this classifier and these digits (their key matches), and equal what the
    classifier computes now (float32 rounding of another CPU or torch at most)."""
    assert evaluator._reference is not None
    computed = evaluator._reference_tensors()
    for name, value in computed.items():
        torch.testing.assert_close(evaluator._reference[name], value.double(), rtol=1e-4, atol=1e-4)
    predicted = computed["test_logits"].argmax(1)
    assert evaluator.test_accuracy == float((predicted == evaluator.test_labels).double().mean())


@pytest.mark.parametrize("damage", ["other classifier", "garbage", "other format"])
def test_stale_or_damaged_reference_features_are_recomputed_never_used(tmp_path, evaluator, damage):
    """A features file whose key does not match (a retrained classifier), that is damaged, or of another format is
    refused with a warning and the features are recomputed from the classifier."""
    import shutil

    from safetensors.torch import load_file, save_file

    from fastsde.digits.evaluation import reference_path

    classifier = tmp_path / "clf.safetensors"
    shutil.copyfile(evaluator.path, classifier)
    features = reference_path(str(classifier))
    shipped = reference_path(evaluator.path)
    if damage == "garbage":
        with open(features, "wb") as f:
            f.write(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    else:
        tensors = load_file(shipped)
        tensors["test_features"] = tensors["test_features"] + 1.0  # a stale file's values must never be read
        from safetensors import safe_open

        with safe_open(shipped, framework="pt") as f:
            meta = dict(f.metadata())
        if damage == "other classifier":
            state = load_file(str(classifier))
            key = sorted(state)[0]
            state[key] = state[key] * 1.001  # "retrained": same config, other weights, so another key
            with safe_open(str(classifier), framework="pt") as f:
                save_file(state, str(classifier), metadata=dict(f.metadata()))
        else:
            meta["format"] = "fastsde.digits_reference/0"
        save_file(tensors, features, metadata=meta)
    with pytest.warns(RuntimeWarning, match="recomputed"):
        fresh = DigitsEvaluator(str(classifier))
    assert fresh._reference is None
    torch.testing.assert_close(fresh.test_features, fresh.features(fresh.test_images))
    if damage != "other classifier":
        torch.testing.assert_close(fresh.test_features, evaluator.test_features, rtol=1e-4, atol=1e-4)


def test_one_classifier_pass_gives_the_statistics_and_the_features(evaluator):
    """measure(): the features and the class histogram from one pass equal separate features() and logits() calls;
    images with NaN are counted and left out."""
    images = load_digits("train")[0][:40].clone()
    images[3] = float("nan")
    stats, features = evaluator.measure(images)
    good = torch.cat([images[:3], images[4:]])
    torch.testing.assert_close(features, evaluator.features(good), rtol=0, atol=0)
    k = evaluator.num_classes
    hist = torch.bincount(evaluator.logits(good).argmax(1), minlength=k).double()
    assert stats[0] == 39 and stats[1] == 1 and torch.equal(stats[3:3 + k], hist)
    assert evaluator.kernel_distance(images) == evaluator.kernel_distance_of(features)


@pytest.mark.parametrize("argv", [["sample", "--help"], ["sample", "--n", "4", "--no-progress"]])
def test_sample_command_imports_only_what_it_uses(tmp_path, argv):
    """`import fastsde` loads none of scipy, matplotlib, scikit-learn; `fastsde sample --help` loads no U-Net or
    classifier either; a digits `fastsde sample` run (quality report and PNG included) loads none of the three."""
    import subprocess
    import sys
    import textwrap

    heavy = ("scipy", "matplotlib", "sklearn")
    code = textwrap.dedent(f"""
        import runpy, sys
        import fastsde
        print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}))
        sys.argv = ["fastsde", *{argv!r}, "--out", {str(tmp_path / "s")!r}]
        try:
            runpy.run_module("fastsde", run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        print(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r}
                     or m.startswith(("fastsde.nn", "fastsde.models.ncsnpp", "fastsde.models.classifier"))))
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    after_import, after_command = result.stdout.strip().splitlines()[0], result.stdout.strip().splitlines()[-1]
    assert after_import == "[]"
    loaded = eval(after_command)
    if "--help" in argv:
        assert loaded == []
    else:
        assert not [m for m in loaded if m.split(".")[0] in heavy], loaded
        assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
