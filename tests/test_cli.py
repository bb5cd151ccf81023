"""The `fastsde` command line, run in-process through fastsde.cli.main (plus one real subprocess)."""
import argparse
import json
import subprocess
import sys

import numpy as np
import pytest

from fastsde import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Sample runs use --threads 1: tensors of a few thousand elements gain nothing from more, and a second thread
# competing with other processes for the cores makes each step many times slower.


def _run(capsys, *argv):
    """(exit code, stdout, stderr) of `fastsde argv...`."""
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _subparsers() -> dict:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("sde, extra, predictor, corrector", [
    ("vp", [], "euler_maruyama", "none"),
    # sigma_max = 5 is ample for the ring (radius 2) and keeps 200 VE steps accurate.
    ("ve", ["--sigma-max", "5"], "reverse_diffusion", "langevin"),
])
def test_sample_writes_files_and_matches_exact_samples(capsys, tmp_path, sde, extra, predictor, corrector):
    out = tmp_path / "sub" / "ring"  # no extension, missing parent directory
    code, stdout, err = _run(capsys, "sample", "--model", "gmm:ring", "--sde", sde, *extra, "--steps", "200",
                             "--n", "512", "--seed", "1", "--threads", "1", "--out", str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    npz, png = out.with_suffix(".npz"), out.with_suffix(".png")
    assert report["npz"] == str(npz) and report["png"] == str(png)

    with np.load(npz) as data:
        assert data["samples"].shape == (512, 2) and data["samples"].dtype == np.float32
        assert data["reference"].shape == (512, 2)
        assert np.isfinite(data["samples"]).all()
        assert str(data["sde"]) == sde and str(data["sampler"]) == "pc"
        assert str(data["predictor"]) == predictor and str(data["corrector"]) == corrector
        assert int(data["steps"]) == 200 and int(data["seed"]) == 1
        assert int(data["nfe"]) == report["nfe"] == 200 * 2  # N (n_steps_each + 1), as score_sde counts
        assert float(data["wall_time_s"]) > 0
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000

    # The exact score through 200 steps: indistinguishable from exact samples at this n, up to a small factor.
    assert report["sliced_wasserstein"] < 3 * report["sliced_wasserstein_null_median"], report
    assert report["cov_rel_err"] < 0.2, report


def test_sample_human_report(capsys, tmp_path):
    code, stdout, err = _run(capsys, "sample", "--model", "gmm", "--sde", "vp", "--steps", "20", "--n", "64",
                             "--no-progress",
                             "--threads", "1", "--out", str(tmp_path / "r.npz"))
    assert code == 0, err
    for word in ("samples", "nfe", "wall time", "samples/s", "mean error", "cov error", "relative", "sliced W2",
                 "median", str(tmp_path / "r.npz"), str(tmp_path / "r.png")):
        assert word in stdout


def _samples(capsys, tmp_path, seed, name):
    out = tmp_path / name
    code, _, err = _run(capsys, "sample", "--model", "gmm", "--sde", "vp", "--steps", "20", "--n", "64", "--seed",
                        str(seed),
                        "--threads", "1", "--no-plot", "--no-progress", "--json", "--out", str(out))
    assert code == 0, err
    with np.load(out.with_suffix(".npz")) as data:
        return data["samples"], data["reference"]


def test_same_seed_same_samples(capsys, tmp_path):
    a, ref_a = _samples(capsys, tmp_path, 7, "a")
    b, ref_b = _samples(capsys, tmp_path, 7, "b")
    c, ref_c = _samples(capsys, tmp_path, 8, "c")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ref_a, ref_b)
    assert not np.array_equal(a, c) and not np.array_equal(ref_a, ref_c)


@pytest.mark.parametrize("argv, code", [
    (["sample", "--model", "gmm:nosuchpreset"], 2),
    (["sample", "--predictor", "nosuchpredictor"], 2),
    (["sample", "--steps", "0"], 2),
    (["sample", "--model", "gmm", "--sde", "vp", "--sigma-max", "5"], 2),  # a VE option on a VP SDE
    (["sample", "--sigma-max", "5"], 2),  # a mixture option on the digits model
    (["sample", "--model", "gmm", "--class-label", "3"], 2),  # an image option on a mixture
    (["sample", "--class-label", "12"], 2),
    (["sample", "--model", "nosuchfile.safetensors"], 1),
    (["sample", "--model", "gmm", "--sde", "subvp", "--predictor", "ancestral_sampling", "--steps", "5"],
     1),  # raised by the sampler
    (["nosuchcommand"], 2),
])
def test_errors_are_one_line(capsys, tmp_path, argv, code):
    got, _, err = _run(capsys, *argv, "--out", str(tmp_path / "x")) if argv[0] == "sample" else _run(capsys, *argv)
    assert got == code
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsde: error:"), err
    assert not (tmp_path / "x.npz").exists()


def test_error_names_the_known_choices(capsys):
    _, _, err = _run(capsys, "sample", "--model", "gmm:nosuchpreset")
    assert all(name in err for name in ("ring", "checkerboard", "gaussian"))
    _, _, err = _run(capsys, "sample", "--predictor", "nosuchpredictor")
    assert all(name in err for name in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling"))


def test_debug_reraises(capsys):
    with pytest.raises(ValueError, match="ancestral_sampling"):
        cli.main(["--debug", "sample", "--model", "gmm", "--sde", "subvp", "--predictor", "ancestral_sampling",
                  "--steps", "5"])


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_help_mentions_every_option(capsys, command):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0
    options = [s for a in _subparsers()[command]._actions for s in a.option_strings if s.startswith("--")]
    assert options
    for option in options:
        assert option in out, option


def test_sample_has_the_documented_options():
    options = {s for a in _subparsers()["sample"]._actions for s in a.option_strings}
    assert options >= {"--model", "--sde", "--sampler", "--predictor", "--corrector", "--snr", "--n-steps-each",
                       "--steps", "--n", "--seed", "--continuous", "--discrete", "--eps", "--probability-flow",
                       "--no-denoise", "--noise", "--backend", "--out", "--sigma-max", "--sigma-min", "--beta-min",
                       "--beta-max", "--json"}


def test_top_level_help_lists_commands(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    assert all(name in out for name in cli.COMMANDS)


def test_info(capsys):
    code, out, err = _run(capsys, "info", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert {"fastsde", "torch", "threads", "native", "triton", "predictors", "correctors", "mixtures"} <= set(info)
    assert "ring" in info["mixtures"] and "euler_maruyama" in info["predictors"]


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "fastsde", "--help"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert "sample" in result.stdout and "info" in result.stdout
