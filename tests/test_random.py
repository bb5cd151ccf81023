"""FSN1 reference stream: Random123 known answer, the 420 independent vectors, and the stream's properties."""
import json
import pathlib

import numpy as np
import pytest
import torch
from scipy import stats

from fastsde import random as fsn1
from fastsde.noise import NoiseStream

VECTORS = json.loads((pathlib.Path(__file__).parent / "data" / "fsn1_vectors.json").read_text())["vectors"]


def test_philox_known_answer():
    # Random123's published known answer for Philox4x32-10: counter 0, key 0.
    words = fsn1.philox4x32(np.zeros(4, np.uint64), (0, 0))
    assert [f"{w:08x}" for w in words] == ["6627e8d5", "e169c58d", "bc57ac4c", "9b00dbd8"]


def test_independent_vectors_exact():
    assert len(VECTORS) == 420
    for v in VECTORS:
        words = fsn1.fsn1_words(v["seed"], v["sample"], v["draw"], v["element"] >> 2)
        assert [f"{w:08x}" for w in words] == v["philox"], v
        u, vv = fsn1.fsn1_uniforms(words)
        pair = (v["element"] & 3) // 2
        assert u[pair] == v["u"] and vv[pair] == v["v"], v
        z = fsn1.fsn1_normal_at(v["seed"], v["sample"], v["draw"], v["element"])
        assert z == pytest.approx(v["normal"], abs=1e-12)
        assert np.float32(z) == np.float32(v["normal_f32"])


def test_dense_layout_matches_pointwise():
    ids = [0, 7, 2**31 + 3]
    z = fsn1.fsn1_normal(2**64 - 1, ids, 2**32 + 5, 11, dtype=torch.float64)
    for b, n in enumerate(ids):
        expect = fsn1.fsn1_normal_at(2**64 - 1, n, 2**32 + 5, np.arange(11))
        np.testing.assert_array_equal(z[b].numpy(), expect)


def test_normals_are_standard_normal():
    z = fsn1.fsn1_normal(123, np.arange(64), 9, 4096, dtype=torch.float64).flatten().numpy()
    n = z.size
    assert abs(z.mean()) < 4 / np.sqrt(n)
    assert abs(z.var() - 1) < 4 * np.sqrt(2 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # Each of the four output lanes is N(0, 1) on its own (cos and sin branches alike).
    for lane in range(4):
        assert stats.kstest(z[lane::4], "norm").pvalue > 1e-3


def test_draws_and_samples_are_independent():
    a = fsn1.fsn1_normal(5, np.arange(32), 0, 2048, dtype=torch.float64).flatten()
    b = fsn1.fsn1_normal(5, np.arange(32), 1, 2048, dtype=torch.float64).flatten()
    c = fsn1.fsn1_normal(5, np.arange(32, 64), 0, 2048, dtype=torch.float64).flatten()
    n = a.numel()
    for x, y in [(a, b), (a, c), (b, c)]:
        assert abs(torch.corrcoef(torch.stack([x, y]))[0, 1].item()) < 4 / np.sqrt(n)


def test_sample_noise_independent_of_batch_composition():
    x = torch.empty(3, 2, 5)
    full = fsn1.fsn1_normal_like(torch.empty(8, 2, 5), seed=9, draw=4)
    part = fsn1.fsn1_normal_like(x, seed=9, draw=4, sample_ids=[6, 1, 3])
    torch.testing.assert_close(part, full[[6, 1, 3]], rtol=0, atol=0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="seed"):
        fsn1.fsn1_normal(-1, [0], 0, 4)
    with pytest.raises(ValueError, match="draw"):
        fsn1.fsn1_normal(0, [0], 2**64, 4)
    with pytest.raises(ValueError, match="sample ids"):
        fsn1.fsn1_normal(0, [2**32], 0, 4)
    with pytest.raises(ValueError, match="sample_ids"):
        fsn1.fsn1_normal_like(torch.empty(2, 3), 0, 0, sample_ids=[1])
    with pytest.raises(ValueError, match="noise"):
        NoiseStream("numpy")


def test_noise_stream_draw_ids():
    s = NoiseStream("fastsde", seed=11)
    x = torch.empty(4, 6)
    s.seek(7)
    z7 = s.normal_like(x)
    z8 = s.normal_like(x)
    torch.testing.assert_close(z7, fsn1.fsn1_normal_like(x, 11, 7))
    torch.testing.assert_close(z8, fsn1.fsn1_normal_like(x, 11, 8))
    assert s.draw == 9


def test_unseeded_stream_follows_torch_seed():
    torch.manual_seed(3)
    a = NoiseStream("fastsde").seed
    torch.manual_seed(3)
    assert NoiseStream("fastsde").seed == a
