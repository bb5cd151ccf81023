"""The digits data set: scikit-learn's images, a fixed stratified split, 16x16 upsampling, the scalers."""
import numpy as np
import pytest
import torch

from fastsde.digits import data as datasets


def test_split_sizes_disjoint_and_stratified():
    x_train, y_train = datasets.load_digits("train")
    x_test, y_test = datasets.load_digits("test")
    x_all, y_all = datasets.load_digits("all")
    assert x_train.shape == (1438, 1, 16, 16) and x_test.shape == (359, 1, 16, 16) and x_all.shape[0] == 1797
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    # Every class is ~20 % test; together the splits are exactly the full set (as multisets of images).
    counts_all = torch.bincount(y_all, minlength=10)
    counts_test = torch.bincount(y_test, minlength=10)
    assert torch.equal(counts_test + torch.bincount(y_train, minlength=10), counts_all)
    assert torch.all((counts_test.double() / counts_all - 0.2).abs() < 0.01)
    # train + test is a partition of all: the same rows (image, label) once each, in some order.
    def rows(x, y):
        a = np.concatenate([x.flatten(1).numpy(), y[:, None].numpy()], axis=1)
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(rows(torch.cat([x_train, x_test]), torch.cat([y_train, y_test])), rows(x_all, y_all))


def test_fixed_across_calls_and_independent_of_global_rng():
    a = datasets.load_digits("test")
    np.random.seed(123)
    torch.manual_seed(123)
    datasets._digits_arrays.cache_clear()
    b = datasets.load_digits("test")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_values_and_upsampling_match_scikit_learn():
    from sklearn.datasets import load_digits

    raw = load_digits()
    x8, y8 = datasets.load_digits("all", size=8)
    np.testing.assert_array_equal(x8[:, 0].numpy(), raw.images.astype(np.float32) / 16)
    np.testing.assert_array_equal(y8.numpy(), raw.target)
    x16, _ = datasets.load_digits("all")
    assert float(x16.min()) >= 0.0 and float(x16.max()) <= 1.0
    # Bilinear 2x upsampling: interior output pixel (2i+1, 2j+1) is 9/16, 3/16, 3/16, 1/16 of its 2x2 neighbours.
    a, b, c, d = x8[:, 0, 3, 3], x8[:, 0, 3, 4], x8[:, 0, 4, 3], x8[:, 0, 4, 4]
    expected = (9 * a + 3 * b + 3 * c + d) / 16
    torch.testing.assert_close(x16[:, 0, 7, 7], expected, rtol=0, atol=1e-6)


def test_scalers_are_inverse():
    x = torch.rand(4, 1, 16, 16)
    for centered in (False, True):
        y = datasets.get_data_scaler(centered)(x)
        torch.testing.assert_close(datasets.get_data_inverse_scaler(centered)(y), x)
    assert float(datasets.get_data_scaler(True)(torch.zeros(1))) == -1.0


@pytest.mark.parametrize("kwargs", [dict(split="validation"), dict(size=4), dict(size=12.5)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        datasets.load_digits(**kwargs)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load_dataset("mnist")
