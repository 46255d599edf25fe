"""The comparator: checks a port's arrays against a reference bundle.

For every expected array it reports the largest absolute and relative error
and the first index where ``|actual - expected| > atol + rtol * |expected|``
(NumPy's ``allclose`` rule; NaNs must match NaNs).  Arrays that are missing,
extra, or of another shape are reported, and the comparison fails when any
expected array is absent: a port can never pass by leaving an output out.

Host-side module: it works on NumPy copies of files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .bundle import Bundle, load_arrays, to_numpy_arrays

__all__ = ["compare", "CompareReport", "ArrayReport"]


@dataclass
class ArrayReport:
    """Comparison of one expected array with the port's array of the same name.

    Attributes
    ----------
    name : str
        The array's name (``"outputs/logits"``).
    shape : tuple of int
        Its shape (equal in both).
    max_abs_err, max_rel_err : float
        ``max |a - e|`` and ``max |a - e| / |e|`` over all elements (0 for no
        elements; ``inf`` where exactly one of ``a``, ``e`` is NaN).
    mismatches : int
        Number of elements outside ``atol + rtol * |e|``.
    first_mismatch : tuple of int or None
        Index of the first such element in C order.
    expected_value, actual_value : float or int or None
        The two values at ``first_mismatch``.
    """

    name: str
    shape: tuple
    max_abs_err: float
    max_rel_err: float
    mismatches: int
    first_mismatch: tuple | None
    expected_value: float | None = None
    actual_value: float | None = None

    @property
    def ok(self) -> bool:
        """True when every element matched."""
        return self.mismatches == 0


@dataclass
class CompareReport:
    """Result of :func:`compare`; ``ok`` is True only if every expected array matched.

    Attributes
    ----------
    rtol, atol : float
        The tolerances used.
    arrays : list of ArrayReport
        One per expected array present in the port's output with the right shape.
    missing : list of str
        Expected arrays absent from the port's output (each a failure).
    extra : list of str
        Port arrays the reference does not have (reported, ignored).
    shape_mismatch : dict of str to (expected shape, actual shape)
        Expected arrays present with another shape (each a failure).
    """

    rtol: float
    atol: float
    arrays: list[ArrayReport] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is missing or misshapen and every array matched."""
        return not self.missing and not self.shape_mismatch and all(a.ok for a in self.arrays)

    def format(self) -> str:
        """A human-readable table, one line per array, then the verdict.

        Returns
        -------
        str
            Lines ``name  shape  max abs err  max rel err  ok|FAIL: ...``, then the
            missing, misshapen and extra arrays, then ``PASS`` or ``FAIL: k of n ...``.
        """
        lines = [f"rtol={self.rtol:g} atol={self.atol:g}"]
        width = max([len(a.name) for a in self.arrays] + [len(n) for n in self.missing] + [10])
        lines.append(f"{'array':<{width}}  {'shape':<16} {'max abs err':>12} {'max rel err':>12}  result")
        for a in self.arrays:
            verdict = "ok" if a.ok else (
                f"FAIL: {a.mismatches} mismatches, first at {a.first_mismatch} "
                f"(expected {a.expected_value!r}, got {a.actual_value!r})"
            )
            lines.append(f"{a.name:<{width}}  {str(a.shape):<16} {a.max_abs_err:>12.3e} {a.max_rel_err:>12.3e}  {verdict}")
        for name, (want, got) in sorted(self.shape_mismatch.items()):
            lines.append(f"{name:<{width}}  FAIL: shape {got} but expected {want}")
        for name in self.missing:
            lines.append(f"{name:<{width}}  FAIL: missing from the actual outputs")
        for name in self.extra:
            lines.append(f"{name:<{width}}  (extra: not in the reference, ignored)")
        n_fail = sum(not a.ok for a in self.arrays) + len(self.missing) + len(self.shape_mismatch)
        lines.append("PASS" if self.ok else f"FAIL: {n_fail} of {len(self.arrays) + len(self.missing) + len(self.shape_mismatch)} expected arrays")
        return "\n".join(lines)


def _as_arrays(source) -> dict[str, np.ndarray]:
    if isinstance(source, Bundle):
        return source.expected()
    if isinstance(source, Mapping):  # NumPy arrays, or tensors of any framework (plain conversion)
        return to_numpy_arrays(source)
    if isinstance(source, (str, os.PathLike)):
        return load_arrays(source)
    raise TypeError(f"cannot compare {type(source).__name__}; pass a bundle, a path or a dict of arrays")


def _compare_one(name: str, want: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> ArrayReport:
    if want.dtype.kind in "biu" and got.dtype.kind in "biu":
        w = want.astype(np.int64) if want.dtype != np.uint64 else want
        g = got.astype(np.int64) if got.dtype != np.uint64 else got
        bad = w != g
        abs_err = np.abs(w.astype(np.float64) - g.astype(np.float64))
        rel_err = abs_err / np.maximum(np.abs(w.astype(np.float64)), np.finfo(np.float64).tiny)
    elif want.dtype.kind in "biu":
        # Integers (words, indices, labels) are exact whatever the tolerance, even when a port
        # writes them as floats: index 3 vs 3.00001 is a different member, not a rounding error.
        w = want.astype(np.float64)
        g = got.astype(np.float64)
        bad = ~(w == g)  # a NaN never matches an integer
        with np.errstate(invalid="ignore"):
            abs_err = np.where(np.isnan(g), np.inf, np.abs(w - g))
        rel_err = abs_err / np.maximum(np.abs(w), np.finfo(np.float64).tiny)
    else:
        w = want.astype(np.float64)
        g = got.astype(np.float64)
        both_nan = np.isnan(w) & np.isnan(g)
        with np.errstate(invalid="ignore", over="ignore"):
            abs_err = np.where(both_nan, 0.0, np.abs(w - g))
            rel_err = np.where(both_nan, 0.0, abs_err / np.maximum(np.abs(w), np.finfo(np.float64).tiny))
            bad = ~(both_nan | (abs_err <= atol + rtol * np.abs(w)))
        abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
        rel_err = np.where(np.isnan(rel_err), np.inf, rel_err)
    mismatches = int(np.count_nonzero(bad))
    first = None
    exp_v = act_v = None
    if mismatches:
        flat = int(np.flatnonzero(bad.reshape(-1))[0])
        first = tuple(int(i) for i in np.unravel_index(flat, want.shape)) if want.ndim else ()
        exp_v = want.reshape(-1)[flat].item()
        act_v = got.reshape(-1)[flat].item()
    return ArrayReport(
        name=name,
        shape=tuple(want.shape),
        max_abs_err=float(abs_err.max()) if abs_err.size else 0.0,
        max_rel_err=float(rel_err.max()) if rel_err.size else 0.0,
        mismatches=mismatches,
        first_mismatch=first,
        expected_value=exp_v,
        actual_value=act_v,
    )


def compare(expected, actual, *, rtol: float = 1e-5, atol: float = 1e-6, names=None) -> CompareReport:
    """Compare actual arrays against expected ones.

    Parameters
    ----------
    expected : Bundle, path or dict of arrays
        A :class:`~egdnp.reference.bundle.Bundle` (its non-input arrays are
        expected), a bundle directory, a ``.npz``, a directory of ``.npy``
        files, or a dict.
    actual : path or dict of arrays
        The port's outputs, in any of the same forms (dict values may be
        torch tensors, JAX or CuPy arrays: converted as by :func:`dump_arrays`).
    rtol, atol : float
        Element ``i`` matches when ``|a_i - e_i| <= atol + rtol * |e_i|``.
        Integer expected arrays (noise words, labels, indices) must match
        exactly, whatever the dtype the port wrote them in.
    names : iterable of str, optional
        Compare only these expected arrays.

    Returns
    -------
    CompareReport
    """
    rtol, atol = float(rtol), float(atol)
    if rtol < 0 or atol < 0:
        raise ValueError(f"rtol={rtol} and atol={atol} must be >= 0")
    if isinstance(expected, (str, os.PathLike)):
        from .bundle import MANIFEST, load_bundle

        if os.path.isfile(os.path.join(expected, MANIFEST)):
            expected = load_bundle(expected)
    want_all = _as_arrays(expected)
    got_all = _as_arrays(actual)
    if names is not None:
        names = list(names)
        unknown = sorted(set(names) - set(want_all))
        if unknown:
            raise ValueError(f"names {unknown} are not among the expected arrays {sorted(want_all)}")
        want_all = {k: want_all[k] for k in names}
    if not want_all:
        raise ValueError("the reference holds no expected arrays; nothing would be checked")
    report = CompareReport(rtol=rtol, atol=atol)
    for name in sorted(want_all):
        want = np.asarray(want_all[name])
        if name not in got_all:
            report.missing.append(name)
            continue
        got = np.asarray(got_all[name])
        if tuple(got.shape) != tuple(want.shape):
            report.shape_mismatch[name] = (tuple(want.shape), tuple(got.shape))
            continue
        report.arrays.append(_compare_one(name, want, got, rtol, atol))
    is_input = lambda k: k.startswith(("inputs/", "params/"))  # noqa: E731 - inputs a port may echo back
    report.extra = sorted(k for k in got_all if k not in want_all and not is_input(k))
    return report
