"""Command-line fuzz (hypothesis): every command with bad arguments and damaged files, run in-process through
fastsde.cli.main. The property: a non-zero exit, exactly one `fastsde: error: ...` line on stderr (never a traceback
or the "unexpected" fallback), nothing on stdout and no file left behind; pickle payloads never execute.
"""
import collections
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastsde import cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STATS = collections.Counter()
FUZZ = settings(max_examples=int(os.environ.get("FASTSDE_FUZZ_CLI_EXAMPLES", "400")), deadline=None,
                derandomize=True, database=None, suppress_health_check=list(HealthCheck))

# Values no option of the given kind accepts.
BAD_INT = ["0", "-1", "1.5", "x", "", "nan", "1e3", "99999999999999999999999"]
BAD_POSITIVE = ["0", "-1", "nan", "inf", "-inf", "x", ""]
BAD_DEVICE = ["meta", "tpu", "cuda:99", "", "cpu:x"]
BAD_FILES = ["truncated.safetensors", "pickle.safetensors", "empty.safetensors", "npz.safetensors",
             "missing.safetensors", "text.safetensors"]
BAD_NPZ = ["plain.npy", "truncated.npz", "empty.npz", "pickled.npz", "text.npz", "missing.npz", "wrong_key.npz"]


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Damaged inputs of every kind, in one directory; MARKER appears only if a pickle ran."""
    from fastsde.digits.pretrained import shipped_path

    root = tmp_path_factory.mktemp("damaged")
    marker = root / "PWNED"
    raw = open(shipped_path("digits_vp.safetensors"), "rb").read()
    (root / "truncated.safetensors").write_bytes(raw[: len(raw) // 3])
    (root / "empty.safetensors").write_bytes(b"")
    (root / "text.safetensors").write_text("hello")
    with open(root / "pickle.safetensors", "wb") as f:
        pickle.dump(Payload(marker), f)
    np.save(root / "plain.npy", np.zeros((4, 1, 16, 16), np.float32))
    np.savez(root / "good.npz", samples=np.full((4, 1, 16, 16), 0.5, np.float32))
    shutil.copy(root / "good.npz", root / "npz.safetensors")
    npz = (root / "good.npz").read_bytes()
    (root / "truncated.npz").write_bytes(npz[: len(npz) // 2])
    np.savez(root / "empty.npz", samples=np.zeros((0, 1, 16, 16), np.float32))
    np.savez(root / "wrong_key.npz", images=np.zeros((4, 1, 16, 16), np.float32))
    obj = np.empty(1, dtype=object)
    obj[0] = Payload(marker)
    np.savez(root / "pickled.npz", samples=obj)
    (root / "text.npz").write_text("not a zip")
    runs = {}
    for kind in ("pickle", "truncated", "text"):
        run = root / f"run_{kind}"
        run.mkdir()
        if kind == "pickle":
            with open(run / "checkpoint.pt", "wb") as f:
                pickle.dump({"config": Payload(marker)}, f)
        elif kind == "truncated":
            torch.save({"config": {}}, run / "checkpoint.pt")
            data = (run / "checkpoint.pt").read_bytes()
            (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
        else:
            (run / "checkpoint.pt").write_text("junk")
        runs[kind] = str(run)
    return {"root": root, "marker": marker, "runs": runs}


def _bad_args(files):
    """(command, [bad argument lists]) strategies: each drawn list holds at least one invalid option."""
    f = lambda name: str(files["root"] / name)  # noqa: E731
    common = {"--n": BAD_INT, "--seed": ["-1", "1.5", "x", str(2**64)], "--device": BAD_DEVICE,
              "--threads": BAD_INT, "--sde": ["vq", ""]}
    sample = {**common, "--steps": BAD_INT, "--snr": BAD_POSITIVE, "--eps": BAD_POSITIVE + ["2", "1"],
              "--sigma-max": BAD_POSITIVE, "--beta-max": ["nan", "inf", "x"], "--rtol": BAD_POSITIVE,
              "--model": [f(b) for b in BAD_FILES] + ["gmm:nope", "nope", "digits:x"],
              "--out": ["", "x.txt", "/proc/nope/x", str(files["root"]) + "/"], "--predictor": ["nope"],
              "--class-label": ["11", "x", "-1"], "--n-steps-each": ["-1", "x"], "--backend": ["nope"],
              "--sampler": ["nope"], "--grid": ["nope"]}
    return {
        "sample": sample,
        "eval": {**common, "--samples": [f(b) for b in BAD_NPZ], "--steps": BAD_INT,
                 "--model": [f(b) for b in BAD_FILES] + ["gmm:ring"], "--backend": ["nope"]},
        "inpaint": {**common, "--snr": BAD_POSITIVE, "--mask": ["nope"], "--steps": BAD_INT,
                    "--model": [f(b) for b in BAD_FILES], "--out": ["", str(files["root"]) + "/"],
                    "--predictor": ["nope"], "--corrector": ["nope"]},
        "likelihood": {**common, "--rtol": BAD_POSITIVE, "--atol": BAD_POSITIVE, "--probe": ["nope"],
                       "--model": [f(b) for b in BAD_FILES]},
        "train": {"--steps": BAD_INT, "--batch-size": BAD_INT + ["1000000000"], "--lr": BAD_POSITIVE,
                  "--warmup": ["-1", "x"], "--ema-decay": ["1", "2", "nan"], "--grad-clip": ["-1", "nan"],
                  "--seed": ["-1", "x"], "--device": BAD_DEVICE, "--preset": ["nope"], "--sde": ["vq"],
                  "--classifier": ["nope"], "--out": list(files["runs"].values()) + [""]},
        "bench": {"--threads": BAD_INT, "--backend": ["nope"], "--json": ["", "/proc/nope/x.json"],
                  "--n": BAD_INT, "--tradeoff": ["/proc/nope/t"]},
    }


@st.composite
def bad_command(draw, table):
    command = draw(st.sampled_from(sorted(table)))
    options = table[command]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=draw(st.sampled_from([1, 1, 3])),
                           unique=True))
    argv = [command] + (["steps"] if command == "bench" else [])
    for opt in chosen:
        argv += [opt, draw(st.sampled_from(options[opt]))]
    if command == "train" and "--out" not in chosen:
        argv += ["--out", "RUN"]
    if draw(st.integers(0, 7)) == 0:  # junk tokens too
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(["--nope", "-x", "extra", "--", "—n"])))
    return argv


def test_fuzz_cli_bad_arguments_and_damaged_files(files, tmp_path_factory, capsys):
    table = _bad_args(files)

    @FUZZ
    @given(argv=bad_command(table))
    def check(argv):
        out_dir = tmp_path_factory.mktemp("out")
        argv = [str(out_dir / "run") if a == "RUN" else a for a in argv]
        if "--out" not in argv and argv[0] in ("sample", "inpaint"):
            argv += ["--out", str(out_dir / "o")]
        if argv[0] in ("sample", "eval", "inpaint", "likelihood", "train"):
            argv.append("--no-progress")
        code = cli.main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code in (1, 2), (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("fastsde: error: "), (argv, err)
        assert not lines[0].startswith("fastsde: error: unexpected "), (argv, err)
        assert out == "", (argv, out)
        assert not list(out_dir.iterdir()), (argv, list(out_dir.iterdir()))
        STATS[(argv[0], "usage error" if code == 2 else "failure")] += 1

    check()
    assert not files["marker"].exists(), "a pickle payload was executed"
    with capsys.disabled():
        print(f"\nfuzz_cli: {sum(STATS.values())} cases, " + ", ".join(f"{c} {k}: {n}" for (c, k), n in
                                                                      sorted(STATS.items())))
