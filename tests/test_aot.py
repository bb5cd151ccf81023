"""fastsde.aot: ahead-of-time compiled models cached on disk, keyed by everything the compiled code depends on; the
`fastsde sample` default path that uses them."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fastsde import aot
from fastsde.nn.groupnorm import GroupNormAct
from helpers import run_cli


class Tiny(torch.nn.Module):
    """A small score model with a fused op in it (the custom op must survive export and the package)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.norm = GroupNormAct(2, 8, act="silu")
        self.out = torch.nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x, labels):
        return self.out(self.norm(self.conv(x))) * labels.reshape(-1, 1, 1, 1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(aot.ENV, str(tmp_path))
    return tmp_path / "aoti"


def _inputs(n=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.rand(n, generator=g) + 0.5


def test_package_equals_eager_is_cached_and_keyed_by_the_weights(cache, monkeypatch):
    torch.manual_seed(0)
    model = Tiny().eval()
    x, labels = _inputs()
    f = aot.cached_model(model, x, labels)
    assert isinstance(f, aot.AOTModel) and len(list(cache.glob("*.pt2"))) == 1
    with torch.no_grad():
        torch.testing.assert_close(f(x, labels), model(x, labels), rtol=1e-5, atol=1e-5)
    builds = []
    real_build = aot._build
    monkeypatch.setattr(aot, "_build", lambda *a: builds.append(1) or real_build(*a))
    again = aot.cached_model(model, x, labels)  # a hit: loaded, not built
    assert builds == [] and again.key == f.key
    with torch.no_grad():
        model.out.bias.add_(1.0)  # an in-place change of one weight: a new key, a new package with the new weight
    changed = aot.cached_model(model, x, labels)
    assert builds == [1] and changed.key != f.key and len(list(cache.glob("*.pt2"))) == 2
    with torch.no_grad():
        torch.testing.assert_close(changed(x, labels), model(x, labels), rtol=1e-5, atol=1e-5)
    # another batch size or dtype: other keys; build=False never builds
    assert aot.model_key(model, *_inputs(5)) != changed.key
    assert aot.model_key(model.double(), x.double(), labels.double()) != changed.key
    assert aot.cached_model(model, *_inputs(6), build=False) is None and builds == [1]


def test_a_model_that_cannot_be_compiled_runs_eagerly_with_one_warning(cache):
    class Branchy(torch.nn.Module):
        def forward(self, x, labels):
            if float(labels.sum()) > 0:  # data-dependent control flow: export refuses it
                return x * 2
            return x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert aot.cached_model(Branchy(), *_inputs()) is None
    messages = [str(w.message) for w in caught if "fastsde.aot" in str(w.message)]
    assert len(messages) == 1 and "running eagerly" in messages[0]
    assert aot.cached_model(lambda x, labels: x, *_inputs()) is None  # a plain function: nothing to compile


def test_sample_uses_the_package_by_default_and_not_with_no_compile(cache, monkeypatch, capsys, tmp_path):
    """`fastsde sample` (FASTSDE_AOT on): the first run builds the package before the timed sampling and says so,
    the second loads it; the samples equal --no-compile's to float32 rounding (fp32 here)."""
    monkeypatch.setenv("FASTSDE_AOT", "1")
    common = ["sample", "--n", "8", "--precision", "fp32", "--threads", "1"]
    code, out, err = run_cli(capsys, *common, "--out", tmp_path / "a")
    assert code == 0 and "compiling the model ahead of time" in err and "ahead-of-time package" in out
    code, out, err = run_cli(capsys, *common, "--out", tmp_path / "b")
    assert code == 0 and "compiling" not in err and "ahead-of-time package" in out
    code, out, _ = run_cli(capsys, *common, "--no-compile", "--out", tmp_path / "c")
    assert code == 0 and "ahead-of-time" not in out
    a, b, c = (np.load(tmp_path / f"{k}.npz")["samples"] for k in "abc")
    assert np.array_equal(a, b) and np.abs(a - c).max() < 1e-4
    code, _, err = run_cli(capsys, *common, "--compile", "--no-compile", "--out", tmp_path / "d")
    assert code == 2 and "--compile and --no-compile exclude each other" in err
