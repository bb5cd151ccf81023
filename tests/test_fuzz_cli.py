"""Command-line fuzz (hypothesis): every command with bad arguments and damaged files, run in-process through
fastsde.cli.main. The property: a non-zero exit, exactly one `fastsde: error: ...` line on stderr (never a traceback
or the "unexpected" fallback), nothing on stdout and no file left behind; pickle payloads never execute.
"""
import collections
import json
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
from fastsde.cli.common import MAX_STEPS, MAX_THREADS  # noqa: E402

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
BAD_STEPS = BAD_INT + ["1000000000", str(MAX_STEPS + 1)]  # the sampler-step bound (cli.common.MAX_STEPS)
BAD_THREADS = BAD_INT + ["100000", "10000", str(MAX_THREADS + 1)]  # 10^4 hung, 10^5 crashed before the bound
# `fastsde convert`: a tiny 1x16x16 score_sde config that converts, and hostile variants of it.
GOOD_CONFIG = {"name": "ncsnpp", "nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [8],
               "image_size": 16, "num_channels": 1, "sde": "vpsde", "embedding_type": "positional", "fir": False}
BAD_CONFIGS = ["", "{", "[]", "null", '{"name": "nope"}', "vp/nope", json.dumps({**GOOD_CONFIG, "sde": "vq"}),
               json.dumps({k: v for k, v in GOOD_CONFIG.items() if k != "sde"}),
               *[json.dumps({**GOOD_CONFIG, **u}) for u in (
                   {"beta_max": float("nan")}, {"beta_min": float("inf")}, {"beta_max": "20"}, {"ch_mult": "12"},
                   {"ch_mult": []}, {"ch_mult": [1, 0]}, {"nf": 0}, {"nf": 2}, {"nf": "16"}, {"nf": 16.5},
                   {"num_res_blocks": True}, {"num_heads": 0}, {"image_size": 15}, {"image_size": -16},
                   {"dropout": 2.0}, {"fir_kernel": "x"}, {"attn_resolutions": 8}, {"num_channels": None},
                   {"sigma_max": -1.0}, {"nf": 32})],  # nf 32: a valid config the weights do not fit
               '{"name": "ncsnpp", "beta_max": 1e400, "sde": "vpsde"}']
BAD_CHECKPOINTS = ["ck_int32.pth", "ck_bool.pth", "ck_intkey.pth", "ck_pickle.pth", "ck_truncated.pth",
                   "ck_text.pth", "ck_list.pth", "ck_nomodel.pth", "ck_model_list.pth", "ck_value_int.pth",
                   "ck_fifo.pth", "ck_missing.pth", "ck_dir.pth", "ck_empty.pth"]
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
    _convert_inputs(root, marker)
    return {"root": root, "marker": marker, "runs": runs}


def _convert_inputs(root, marker):
    """good.pth (GOOD_CONFIG's weights, converts) and the damaged checkpoints of BAD_CHECKPOINTS."""
    from fastsde.models.score_sde_nets import build_model

    torch.manual_seed(0)
    sd = {"module." + k: v for k, v in build_model(GOOD_CONFIG, accelerate=False).state_dict().items()}
    torch.save({"model": sd, "step": 1}, root / "good.pth")
    weight = next(k for k, v in sd.items() if v.dim() == 4)
    for name, dtype in (("ck_int32.pth", torch.int32), ("ck_bool.pth", torch.bool)):
        torch.save({"model": {**sd, weight: sd[weight].to(dtype)}}, root / name)
    torch.save({"model": {**{k: v for k, v in sd.items() if k != weight}, 3: sd[weight]}}, root / "ck_intkey.pth")
    with open(root / "ck_pickle.pth", "wb") as f:
        pickle.dump({"model": Payload(marker)}, f)
    raw = (root / "good.pth").read_bytes()
    (root / "ck_truncated.pth").write_bytes(raw[: len(raw) // 2])
    (root / "ck_text.pth").write_text("junk")
    (root / "ck_empty.pth").write_bytes(b"")
    torch.save([1, 2], root / "ck_list.pth")
    torch.save({"step": 1}, root / "ck_nomodel.pth")
    torch.save({"model": [sd[weight]]}, root / "ck_model_list.pth")
    torch.save({"model": {**sd, weight: 1}}, root / "ck_value_int.pth")
    os.mkfifo(root / "ck_fifo.pth")
    (root / "ck_dir.pth").mkdir()


def _bad_args(files):
    """(command, [bad argument lists]) strategies: each drawn list holds at least one invalid option."""
    f = lambda name: str(files["root"] / name)  # noqa: E731
    common = {"--n": BAD_INT, "--seed": ["-1", "1.5", "x", str(2**64)], "--device": BAD_DEVICE,
              "--threads": BAD_THREADS, "--sde": ["vq", ""]}
    sample = {**common, "--steps": BAD_STEPS, "--snr": BAD_POSITIVE, "--eps": BAD_POSITIVE + ["2", "1"],
              "--sigma-max": BAD_POSITIVE, "--beta-max": ["nan", "inf", "x"], "--rtol": BAD_POSITIVE,
              "--model": [f(b) for b in BAD_FILES] + ["gmm:nope", "nope", "digits:x"],
              "--out": ["", "x.txt", "/proc/nope/x", str(files["root"]) + "/"], "--predictor": ["nope"],
              "--class-label": ["11", "x", "-1"], "--n-steps-each": ["-1", "x"], "--backend": ["nope"],
              "--sampler": ["nope"], "--grid": ["nope"]}
    return {
        "sample": sample,
        "eval": {**common, "--samples": [f(b) for b in BAD_NPZ], "--steps": BAD_STEPS,
                 "--model": [f(b) for b in BAD_FILES] + ["gmm:ring"], "--backend": ["nope"]},
        "inpaint": {**common, "--snr": BAD_POSITIVE, "--mask": ["nope"], "--steps": BAD_STEPS,
                    "--model": [f(b) for b in BAD_FILES], "--out": ["", str(files["root"]) + "/"],
                    "--predictor": ["nope"], "--corrector": ["nope"]},
        "likelihood": {**common, "--rtol": BAD_POSITIVE, "--atol": BAD_POSITIVE, "--probe": ["nope"],
                       "--model": [f(b) for b in BAD_FILES]},
        "train": {"--steps": BAD_INT, "--batch-size": BAD_INT + ["1000000000"], "--lr": BAD_POSITIVE,
                  "--warmup": ["-1", "x"], "--ema-decay": ["1", "2", "nan"], "--grad-clip": ["-1", "nan"],
                  "--seed": ["-1", "x"], "--device": BAD_DEVICE, "--preset": ["nope"], "--sde": ["vq"],
                  "--classifier": ["nope"], "--out": list(files["runs"].values()) + [""],
                  "--threads": BAD_THREADS, "--snapshot-steps": BAD_STEPS},
        "convert": {"CHECKPOINT": [f(b) for b in BAD_CHECKPOINTS], "--config": BAD_CONFIGS,
                    "--out": ["", str(files["root"]), "/proc/nope/x.safetensors", f("good.pth"),
                              f("good.npz") + "/x.safetensors"]},
        "bench": {"--threads": BAD_THREADS, "--backend": ["nope"], "--json": ["", "/proc/nope/x.json"],
                  "--n": BAD_INT, "--tradeoff": ["/proc/nope/t"]},
    }


@st.composite
def bad_command(draw, table):
    command = draw(st.sampled_from(sorted(table)))
    options = table[command]
    chosen = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, max_size=draw(st.sampled_from([1, 1, 3])),
                           unique=True))
    argv = [command] + (["steps"] if command == "bench" else [])
    if command == "convert":  # the positional checkpoint, --config and --out are required: good ones unless chosen
        values = {opt: draw(st.sampled_from(options[opt])) for opt in chosen}
        argv += [values.get("CHECKPOINT", "GOOD_CHECKPOINT"), "--config",
                 values.get("--config", json.dumps(GOOD_CONFIG)), "--out", values.get("--out", "OUT_FILE")]
        if draw(st.booleans()):
            argv.append("--ema")  # only good.pth has no EMA either: --ema is refused there too
        chosen = []
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
        fill = {"RUN": str(out_dir / "run"), "OUT_FILE": str(out_dir / "c.safetensors"),
                "GOOD_CHECKPOINT": str(files["root"] / "good.pth")}
        argv = [fill.get(a, a) for a in argv]
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
