"""Real data without a download: scikit-learn's bundled handwritten digits.

``load_digits`` returns 1797 grey 8x8 images of the digits 0-9 (the UCI
optical-recognition set that ships inside scikit-learn), split into train and
test sets by a seeded permutation, optionally upsampled to 28x28 for the CNN.

Pixel scaling: scikit-learn stores integer intensities 0..16; egdnp divides
by 16, so pixels lie in [0, 1] (upsampled images too: bilinear interpolation
is a convex combination).  No mean/std normalisation is applied.

Split: ``perm = argsort(egdnp.rng.random_bits(1797, seed=split_seed,
stream="data/split"))`` (stable sort, host side); the first ``n_test``
indices form the test set, the rest the training set, each kept in the
permuted order.  The same on every backend and machine.

Mini-batches: :func:`iterate_batches` shuffles with
``egdnp.rng.random_bits(n, seed=seed, stream="data/batches", generation=epoch)``.

scikit-learn is an optional extra: ``pip install "egdnp[examples]"`` (or ``[test]``).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Iterator, NamedTuple

import numpy as np  # host-side only: the raw dataset and small index tables

from . import _backend, rng
from ._checks import check_bool, check_int

__all__ = ["Digits", "load_digits", "upsample_matrix", "upsample", "iterate_batches", "batch_indices", "N_DIGITS"]

N_DIGITS = 1797
_SKLEARN_HELP = 'scikit-learn is needed for the digits data; install it with pip install "egdnp[examples]"'


class Digits(NamedTuple):
    """A train/test split of the digits.

    Attributes
    ----------
    x_train : array, shape (n_train, size*size) when flat, (n_train, 1, size, size) otherwise
    y_train : int64 array, shape (n_train,), labels 0..9
    x_test, y_test : the same for the test set
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """Host-side (1797, 8, 8) float64 images in 0..16 and int64 labels (cached; never mutated)."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:
        raise ImportError(_SKLEARN_HELP) from None
    bunch = _sk_load_digits()
    return np.asarray(bunch.images, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Host-side (n_out, n_in) bilinear interpolation matrix (half-pixel centres, edge clamp).

    ``M @ img @ M.T`` resizes an (n_in, n_in) image to (n_out, n_out), with the
    sampling convention of ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``.  Each row sums to 1.

    Parameters
    ----------
    n_in, n_out : int
        Input and output side lengths.

    Returns
    -------
    np.ndarray, shape (n_out, n_in), float64 (host side)
    """
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


def upsample(images, size: int):
    """Bilinear upsampling of square images by two matrix products.

    Parameters
    ----------
    images : array, shape (..., n, n)
    size : int
        Output side length.

    Returns
    -------
    array, shape (..., size, size), the dtype and namespace of ``images``
    """
    if not (hasattr(images, "shape") and hasattr(images, "dtype")):
        raise TypeError(f"images is a {type(images).__name__}, not an array; pass an array of shape (..., n, n)")
    xp = _backend.array_namespace(images)
    if len(images.shape) < 2 or int(images.shape[-1]) != int(images.shape[-2]):
        raise ValueError(f"images have shape {tuple(images.shape)}; expected square images of shape (..., n, n)")
    size = check_int("size", size, 1)
    n = int(images.shape[-1])
    m = xp.asarray(upsample_matrix(n, size), dtype=images.dtype)
    return xp.matmul(xp.matmul(m, images), m.T)


def _split_permutation(n: int, seed: int) -> np.ndarray:
    words = _backend.to_host(rng.random_bits(n, seed=seed, stream="data/split", xp="numpy"))
    return np.argsort(words, kind="stable")


def load_digits(*, size: int = 8, flat: bool | None = None, test_fraction: float = 0.25, split_seed: int = 0,
                xp=None, dtype="float32") -> Digits:
    """The scikit-learn digits, scaled to [0, 1], split deterministically.

    Parameters
    ----------
    size : int
        Image side: 8 (original) or larger (bilinear upsampling, e.g. 28 for the CNN).
    flat : bool, optional
        ``True``: x of shape (n, size*size) for an MLP; ``False``: (n, 1, size, size)
        for a CNN.  Default: flat for size 8, images otherwise.
    test_fraction : float in (0, 1)
        Share of the 1797 images in the test set (rounded to the nearest count).
    split_seed : int
        Seed of the split permutation (stream ``"data/split"``).
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    Digits
        ``(x_train, y_train, x_test, y_test)``; labels are int64.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real):
        raise TypeError(f"test_fraction={test_fraction!r} must be a float in (0, 1)")
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    size = check_int("size", size, 8, fix="8 is the original resolution; use 28 for the CNN")
    if flat is not None:
        check_bool("flat", flat)
    if dtype not in ("float32", "float64"):
        raise TypeError(f"dtype={dtype!r} is not supported; use 'float32' or 'float64'")
    xp = _backend.get_namespace("numpy" if xp is None else xp)
    if flat is None:
        flat = size == 8
    images, labels = _raw_digits()
    images = images / 16.0
    if size != 8:
        m = upsample_matrix(8, size)
        images = m @ images @ m.T  # host-side, once: (n, size, size)
    perm = _split_permutation(images.shape[0], split_seed)
    n_test = int(round(test_fraction * images.shape[0]))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    shape = (-1, size * size) if flat else (-1, 1, size, size)

    def to_xp(a, dt):
        return _backend.to_device(np.ascontiguousarray(a.astype(dt)), xp)

    return Digits(
        to_xp(images[train_idx].reshape(shape), dtype),
        to_xp(labels[train_idx], np.int64),
        to_xp(images[test_idx].reshape(shape), dtype),
        to_xp(labels[test_idx], np.int64),
    )


def batch_indices(n: int, batch_size: int, *, seed: int, epoch: int = 0, shuffle: bool = True,
                  drop_last: bool = False) -> list[np.ndarray]:
    """Host-side index arrays of the mini-batches of one epoch.

    The order is ``argsort(random_bits(n, seed=seed, stream="data/batches",
    generation=epoch))`` (stable), or ``0..n-1`` without shuffling.

    Parameters
    ----------
    n : int
        Number of examples.
    batch_size : int
    seed : int
        Shuffle seed (stream ``"data/batches"``).
    epoch : int
        The noise generation: each epoch has its own order.
    shuffle : bool
    drop_last : bool
        Drop the last, smaller batch.

    Returns
    -------
    list of np.ndarray
        Host-side int64 index arrays, each of shape (batch_size,) (the last one
        possibly shorter); together a permutation of ``range(n)`` (less the
        dropped tail).
    """
    n = check_int("n", n, 0)
    batch_size = check_int("batch_size", batch_size, 1)
    epoch = check_int("epoch", epoch, 0, fix="the epoch number (0, 1, ...) chooses the shuffle order")
    if epoch > rng.MAX_POP_SIZE:
        raise ValueError(f"epoch={epoch} must be <= {rng.MAX_POP_SIZE}: it is the 32-bit generation word of the shuffle noise")
    check_bool("shuffle", shuffle)
    check_bool("drop_last", drop_last)
    if shuffle:
        words = _backend.to_host(rng.random_bits(n, seed=seed, stream="data/batches", generation=epoch, xp="numpy"))
        order = np.argsort(words, kind="stable")
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    return [order[i : min(i + batch_size, stop)] for i in range(0, stop, batch_size)]


def iterate_batches(x, y, batch_size: int, *, seed: int, epoch: int = 0, shuffle: bool = True,
                    drop_last: bool = False) -> Iterator[tuple[Any, Any]]:
    """Mini-batches ``(x_batch, y_batch)`` of one epoch, seeded through :mod:`egdnp.rng`.

    Parameters
    ----------
    x : array, shape (n, ...)
    y : array, shape (n,)
    batch_size : int
    seed : int
        Shuffle seed (stream ``"data/batches"``); the epoch is the generation,
        so each epoch has its own order and the same order on every backend.
    epoch : int
    shuffle, drop_last : bool

    Yields
    ------
    x_batch : array, shape (b, ...), the namespace of x
    y_batch : array, shape (b,)

    Raises
    ------
    TypeError, ValueError
        At the call (not at the first batch): x or y not arrays of one library,
        of different lengths, or a bad batch_size/seed/epoch/flag.
    """
    for name, value in (("x", x), ("y", y)):
        if not (hasattr(value, "shape") and hasattr(value, "dtype")) or len(value.shape) == 0:
            raise TypeError(
                f"{name} is a {type(value).__name__}, not an array with a leading example axis; pass an array "
                f"(e.g. xp.asarray({name}))"
            )
    if type(y) is not type(x):
        _backend.check_same_library(y, x, "y", "x")
    if int(x.shape[0]) != int(y.shape[0]):
        raise ValueError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; they must match")
    xp = _backend.array_namespace(x, y)
    batches = batch_indices(int(x.shape[0]), batch_size, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last)
    return _batches(xp, x, y, batches)


def _batches(xp, x, y, batches) -> Iterator[tuple[Any, Any]]:
    for idx in batches:
        if _backend.is_numpy(xp):
            yield x[idx], y[idx]
        else:
            ix = xp.asarray(idx.astype(np.int64), device=_backend.device_of(x))
            yield xp.take(x, ix, axis=0), xp.take(y, ix, axis=0)
