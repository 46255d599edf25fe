"""The bundled digits: scaling, deterministic split, upsampling, seeded mini-batches."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

pytest.importorskip("sklearn")

from egdnp import _backend, data  # noqa: E402


def _host(a):
    return _backend.to_host(a)


def test_shapes_dtypes_and_scaling(xp):
    ds = data.load_digits(xp=xp)
    assert tuple(ds.x_train.shape) == (1348, 64) and tuple(ds.x_test.shape) == (449, 64)
    assert tuple(ds.y_train.shape) == (1348,) and ds.y_train.dtype == xp.int64
    assert ds.x_train.dtype == xp.float32
    x = _host(ds.x_train)
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(_host(ds.y_test))) == set(range(10))
    img = data.load_digits(size=28, xp=xp, dtype="float64")
    assert tuple(img.x_train.shape) == (1348, 1, 28, 28) and img.x_train.dtype == xp.float64
    xi = _host(img.x_train)
    assert xi.min() >= 0.0 and xi.max() <= 1.0 + 1e-12


def test_split_is_deterministic_disjoint_and_seeded():
    a = data.load_digits(split_seed=0, dtype="float64")
    b = data.load_digits(split_seed=0, dtype="float64")
    c = data.load_digits(split_seed=1, dtype="float64")
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    from sklearn.datasets import load_digits as sk

    raw = sk()
    everything = np.concatenate([a.x_train, a.x_test]) * 16
    # the split is a permutation of the raw data: same multiset of rows
    order = lambda m: m[np.lexsort(m.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(order(everything), order(raw.data.astype(np.float64)))
    assert np.bincount(a.y_test, minlength=10).min() > 30


def test_same_split_on_every_backend(xp):
    ref = data.load_digits()
    got = data.load_digits(xp=xp)
    np.testing.assert_array_equal(_host(got.y_train), ref.y_train)
    np.testing.assert_array_equal(_host(got.x_test), ref.x_test)


def test_upsampled_variants_and_backends(xp):
    flat = data.load_digits(size=28, flat=True, xp=xp)
    img = data.load_digits(size=28, xp=xp)
    assert tuple(flat.x_train.shape) == (1348, 784) and tuple(img.x_test.shape) == (449, 1, 28, 28)
    np.testing.assert_array_equal(_host(flat.x_test).reshape(449, 1, 28, 28), _host(img.x_test))
    np.testing.assert_array_equal(_host(img.y_test), _host(data.load_digits(xp=xp).y_test))  # same split at every size
    small = data.load_digits(flat=False, dtype="float64")
    ref = data.upsample(small.x_test[:, 0], 28)  # NumPy path
    got = data.upsample(xp.asarray(small.x_test[:, 0]), 28)
    np.testing.assert_allclose(_host(got), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_host(img.x_test)[:, 0], ref, rtol=1e-6, atol=1e-6)  # float32 of the same images


def test_upsample_matrix_and_matches_torch():
    m = data.upsample_matrix(8, 28)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    torch = pytest.importorskip("torch")
    imgs = np.random.default_rng(0).random((3, 8, 8))
    ref = torch.nn.functional.interpolate(torch.from_numpy(imgs)[:, None], size=(28, 28), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(data.upsample(imgs, 28), ref[:, 0].numpy(), rtol=1e-12, atol=1e-12)


def test_batches_cover_epoch_and_are_seeded(xp):
    x = xp.asarray(np.arange(23, dtype=np.float32).reshape(23, 1))
    y = xp.asarray(np.arange(23))
    batches = list(data.iterate_batches(x, y, 5, seed=3, epoch=0))
    assert [int(b[1].shape[0]) for b in batches] == [5, 5, 5, 5, 3]
    seen = np.concatenate([_host(b[1]) for b in batches])
    assert sorted(seen.tolist()) == list(range(23))
    np.testing.assert_array_equal(np.concatenate([_host(b[0])[:, 0] for b in batches]), seen)
    again = np.concatenate([_host(b[1]) for b in data.iterate_batches(x, y, 5, seed=3, epoch=0)])
    other = np.concatenate([_host(b[1]) for b in data.iterate_batches(x, y, 5, seed=3, epoch=1)])
    np.testing.assert_array_equal(seen, again)
    assert not np.array_equal(seen, other)
    host_order = np.concatenate(data.batch_indices(23, 5, seed=3, epoch=0))
    np.testing.assert_array_equal(seen, host_order)  # same order on every backend
    assert len(list(data.iterate_batches(x, y, 5, seed=3, drop_last=True))) == 4
    plain = np.concatenate([_host(b[1]) for b in data.iterate_batches(x, y, 10, seed=0, shuffle=False)])
    np.testing.assert_array_equal(plain, np.arange(23))


def test_bad_arguments():
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.0)
    with pytest.raises(ValueError, match="size"):
        data.load_digits(size=4)
    with pytest.raises(TypeError, match="dtype"):
        data.load_digits(dtype="int8")
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_indices(10, 0, seed=0)
    with pytest.raises(ValueError, match="examples"):
        list(data.iterate_batches(np.zeros((3, 2)), np.zeros(4), 2, seed=0))
    with pytest.raises(ValueError, match=r"square images of shape \(\.\.\., n, n\)"):
        data.upsample(np.zeros((2, 8, 7)), 28)
    with pytest.raises(ValueError, match="size"):
        data.upsample(np.zeros((2, 8, 8)), 0)


def test_missing_sklearn_gives_install_hint(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    data._raw_digits.cache_clear()  # the raw arrays are cached after the first load
    monkeypatch.setattr(builtins, "__import__", fake_import)
    try:
        with pytest.raises(ImportError, match=r'pip install "egdnp\[examples\]"'):
            data.load_digits()
    finally:
        data._raw_digits.cache_clear()
