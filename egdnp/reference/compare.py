"""The comparator: checks a port's arrays against a reference bundle.

For every expected array it reports the largest absolute and relative error
and where they occur, and whether every element satisfies
``|actual - expected| <= atol + rtol * |expected|`` (NumPy's ``allclose``
rule; NaNs must match NaNs).  Arrays that are missing, extra, or of another
shape are reported, and the comparison fails when a required expected array is
absent: a port can never pass by leaving an output out.  Layer-by-layer
arrays (``activations/<layer>``, ``grad_activations/<layer>``) are optional: a
port is compared on those it produces.

The report lists the arrays in **data-flow order** (the scenario's manifest:
forward layers, loss, backward layers, parameter gradients, optimiser state,
...) and names the **first divergence** -- the earliest array in that order
(for multi-step scenarios: the earliest step, then the earliest array) that
does not match -- so a port's bug is located, not only detected.

Default tolerances come from the bundle's dtype (:data:`DEFAULT_TOLERANCES`);
a port array whose float dtype differs from the expected one is flagged, and
fails under ``strict_dtype=True``.

Host-side module: it works on NumPy copies of files.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .bundle import MANIFEST, Bundle, load_arrays, load_bundle, to_numpy_arrays

__all__ = ["compare", "CompareReport", "ArrayReport", "DEFAULT_TOLERANCES", "OPTIONAL_PREFIXES", "default_tolerances"]

# (rtol, atol) by the bundle's dtype; docs/validating-a-port.md section 4 gives the measurements.
#  float64: a port evaluates the same formulas in another order; worked ports differ by <= 7e-15.
#  float32: the worked float32 ports' worst errors are 3.0e-6 absolute (the z-scored fitness of the
#           HyperscaleES conventions) and 4.9e-6 relative where the expected value is not tiny.
DEFAULT_TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-4, 2e-5)}

# Layer-by-layer arrays a port may leave out (it is compared on those it produces).
OPTIONAL_PREFIXES = ("activations/", "grad_activations/")


def default_tolerances(dtype: str) -> tuple[float, float]:
    """The comparator's default ``(rtol, atol)`` for a bundle dtype.

    Parameters
    ----------
    dtype : {"float32", "float64"}

    Returns
    -------
    (float, float)
        ``DEFAULT_TOLERANCES[dtype]``.

    Raises
    ------
    ValueError
        Any other dtype.
    """
    if dtype not in DEFAULT_TOLERANCES:
        raise ValueError(f"dtype={dtype!r} has no default tolerances; use 'float32' or 'float64', or pass rtol= and atol=")
    return DEFAULT_TOLERANCES[dtype]


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
        ``max |a - e|`` over all elements (0 for no elements; ``inf`` where
        exactly one of ``a``, ``e`` is NaN) and ``max |a - e| / |e|`` over the
        elements whose expected value is not 0 (NaN when there are none: a
        relative error of an expected 0 means nothing).
    mismatches : int
        Number of elements outside ``atol + rtol * |e|`` (any difference for
        integer expected arrays).
    first_mismatch : tuple of int or None
        Index of the first such element in C order.
    expected_value, actual_value : float or int or None
        The two values at ``first_mismatch``.
    max_abs_index : tuple of int or None
        Index of the largest absolute error (None for no elements).
    expected_dtype, actual_dtype : str
        NumPy dtype names (``"float64"``).
    what : str
        What the array is, from the scenario's data flow (``"conv2 forward output"``).
    stage : str
        Its stage in the data flow (``"forward"``, ``"backward"``, ...).
    """

    name: str
    shape: tuple
    max_abs_err: float
    max_rel_err: float
    mismatches: int
    first_mismatch: tuple | None
    expected_value: float | None = None
    actual_value: float | None = None
    max_abs_index: tuple | None = None
    expected_dtype: str = ""
    actual_dtype: str = ""
    what: str = ""
    stage: str = ""

    @property
    def ok(self) -> bool:
        """True when every element matched."""
        return self.mismatches == 0

    @property
    def dtype_differs(self) -> bool:
        """True when both dtypes are floats of different widths (``float32`` for a ``float64`` array)."""
        return (self.expected_dtype != self.actual_dtype and self.expected_dtype.startswith("float")
                and self.actual_dtype.startswith("float"))


@dataclass
class CompareReport:
    """Result of :func:`compare`; ``ok`` is True only if every expected array matched.

    Attributes
    ----------
    rtol, atol : float
        The tolerances used.
    arrays : list of ArrayReport
        One per expected array present in the port's output with the right
        shape, in data-flow order.
    missing : list of str
        Required expected arrays absent from the port's output (each a failure).
    extra : list of str
        Port arrays the reference does not have (reported, ignored).
    shape_mismatch : dict of str to (expected shape, actual shape)
        Expected arrays present with another shape (each a failure).
    dtype : str or None
        The bundle's dtype (``"float64"``), which chose the default tolerances.
    tolerance_source : str
        ``"float64 defaults"``, ``"float32 defaults"`` or ``"given"`` (and
        mixtures such as ``"rtol given, atol float64 default"``).
    strict_dtype : bool
        Whether a float array of another dtype than the reference's fails.
    not_produced : list of str
        Optional layer-by-layer arrays the port did not produce (not failures).
    scenario : str or None
        The bundle's scenario name.
    order : list of str
        Every expected array name in data-flow order.
    labels : dict of str to (stage, what, step stride)
        The data-flow description of each expected array.
    """

    rtol: float
    atol: float
    arrays: list[ArrayReport] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    shape_mismatch: dict[str, tuple] = field(default_factory=dict)
    dtype: str | None = None
    tolerance_source: str = "given"
    strict_dtype: bool = False
    not_produced: list[str] = field(default_factory=list)
    scenario: str | None = None
    order: list[str] = field(default_factory=list)
    labels: dict[str, tuple] = field(default_factory=dict)

    @property
    def dtype_mismatch(self) -> list[str]:
        """Names of compared arrays whose float dtype differs from the reference's (flagged; failures under ``strict_dtype``)."""
        return [a.name for a in self.arrays if a.dtype_differs]

    def _failed(self, a: ArrayReport) -> bool:
        return not a.ok or (self.strict_dtype and a.dtype_differs)

    @property
    def ok(self) -> bool:
        """True when nothing required is missing or misshapen and every array matched (and, under ``strict_dtype``, has the reference's dtype)."""
        return not self.missing and not self.shape_mismatch and not any(self._failed(a) for a in self.arrays)

    def _what(self, name: str) -> str:
        stage, what, _ = self.labels.get(name, ("", "", 0))
        return f"{what} `{name}`" if what else f"`{name}`"

    def _step_of(self, name: str, index) -> int:
        """1-based step of an element of a stacked multi-step array (0 for other arrays)."""
        stride = self.labels.get(name, ("", "", 0))[2]
        if not stride or index is None or not len(index):
            return 0
        return (int(index[0]) + 1) * int(stride)

    @property
    def first_divergence(self) -> str | None:
        """The earliest failure in data-flow order, as a sentence; None when nothing failed.

        For stacked multi-step arrays the earliest failing step wins, then the
        earliest array in the data flow at that step.
        """
        position = {name: i for i, name in enumerate(self.order)}
        candidates = []
        for a in self.arrays:
            if self._failed(a):
                step = self._step_of(a.name, a.first_mismatch) if not a.ok else 0
                candidates.append((step, position.get(a.name, len(position)), a.name, a))
        for name in list(self.missing) + list(self.shape_mismatch):
            candidates.append((0, position.get(name, len(position)), name, None))
        if not candidates:
            return None
        # earliest step first (0: not a stacked array, or a missing/misshapen one), then data-flow position
        step, pos, name, a = min(candidates, key=lambda c: (c[0], c[1]))
        where = self._what(name)
        if step:
            where = f"step {step}: {where}"
        if a is None and name in self.missing:
            text = f"{where} is missing from the port's outputs"
        elif a is None:
            want, got = self.shape_mismatch[name]
            text = f"{where} has shape {got}, expected {want}"
        elif a.ok:  # only the dtype fails (strict_dtype)
            text = f"{where} has dtype {a.actual_dtype}, the reference's is {a.expected_dtype} (strict dtype)"
        else:
            at = list(a.max_abs_index) if a.max_abs_index is not None else []
            n = math.prod(a.shape) if a.shape else 1
            text = f"{where} (max abs err {a.max_abs_err:.3g} at {at}; {a.mismatches} of {n} elements outside the tolerance)"
            if a.dtype_differs:
                text += f"; its dtype is {a.actual_dtype}, the reference's {a.expected_dtype}"
        skipped = [n for n in self.not_produced if position.get(n, len(position)) < pos]
        if step:
            tail = f"everything before it (earlier steps, and earlier arrays of step {step}) matches"
        else:
            tail = "everything before it matches"
        if skipped:
            tail = tail.replace("everything before it", "everything before it that the port produced") + \
                f" ({len(skipped)} earlier layer-by-layer arrays not produced)"
        return f"first divergence: {text}; {tail}"

    def format(self) -> str:
        """A human-readable report: tolerances, one line per array in data-flow order, the first divergence, the verdict.

        Returns
        -------
        str
            A header naming the scenario, the bundle's dtype and the tolerances
            used; lines ``stage  array  shape  max abs err  max rel err  result``;
            missing, misshapen, not-produced and extra arrays; the dtype note;
            ``first divergence: ...``; then ``PASS`` or ``FAIL: k of n ...``.
        """
        head = f"scenario {self.scenario}" if self.scenario else "comparison"
        dtype_note = f", reference dtype {self.dtype}" if self.dtype else ""
        lines = [f"{head}{dtype_note}; tolerances: rtol={self.rtol:g} atol={self.atol:g} ({self.tolerance_source}); "
                 "element i matches when |a_i - e_i| <= atol + rtol * |e_i|; integer arrays must match exactly"]
        names = [a.name for a in self.arrays] + list(self.missing) + list(self.shape_mismatch)
        width = max([len(n) for n in names] + [10])
        swidth = max([len(self.labels.get(n, ("",))[0]) for n in names] + [5])
        lines.append(f"{'stage':<{swidth}}  {'array':<{width}}  {'shape':<16} {'max abs err':>12} {'max rel err':>12}  result")
        rows = {}
        for a in self.arrays:
            if a.ok:
                verdict = "ok"
            else:
                verdict = (f"FAIL: {a.mismatches} mismatches, first at {a.first_mismatch} "
                           f"(expected {a.expected_value!r}, got {a.actual_value!r}); max abs err at {a.max_abs_index}")
            if a.dtype_differs:
                verdict += f" [dtype {a.actual_dtype}, reference {a.expected_dtype}{': FAIL (strict dtype)' if self.strict_dtype else ''}]"
            rel = "-" if math.isnan(a.max_rel_err) else f"{a.max_rel_err:.3e}"
            rows[a.name] = f"{str(a.shape):<16} {a.max_abs_err:>12.3e} {rel:>12}  {verdict}"
        for name, (want, got) in self.shape_mismatch.items():
            rows[name] = f"FAIL: shape {got} but expected {want}"
        for name in self.missing:
            rows[name] = "FAIL: missing from the actual outputs"
        position = {name: i for i, name in enumerate(self.order)}
        for name in sorted(rows, key=lambda n: (position.get(n, len(position)), n)):
            stage = self.labels.get(name, ("",))[0]
            lines.append(f"{stage:<{swidth}}  {name:<{width}}  {rows[name]}")
        if self.not_produced:
            lines.append(f"not produced by the port (optional layer-by-layer arrays, not compared): {len(self.not_produced)} "
                         f"({', '.join(self.not_produced[:6])}{', ...' if len(self.not_produced) > 6 else ''})")
        for name in self.extra:
            lines.append(f"{'':<{swidth}}  {name:<{width}}  (extra: not in the reference, ignored)")
        flagged = self.dtype_mismatch
        if flagged:
            got = sorted({a.actual_dtype for a in self.arrays if a.dtype_differs})
            lines.append(f"dtype: {len(flagged)} port arrays are {'/'.join(got)} where the reference's are "
                         f"{'/'.join(sorted({a.expected_dtype for a in self.arrays if a.dtype_differs}))} "
                         + ("(a failure under strict dtype)" if self.strict_dtype else "(flagged; --strict-dtype / strict_dtype=True makes it a failure)"))
        first = self.first_divergence
        if first:
            lines.append(first)
        n_fail = sum(self._failed(a) for a in self.arrays) + len(self.missing) + len(self.shape_mismatch)
        total = len(self.arrays) + len(self.missing) + len(self.shape_mismatch)
        lines.append("PASS" if self.ok else f"FAIL: {n_fail} of {total} expected arrays")
        return "\n".join(lines)


def _as_arrays(source) -> dict[str, np.ndarray]:
    if isinstance(source, Bundle):
        return source.expected()
    if isinstance(source, Mapping):  # NumPy arrays, or tensors of any framework (plain conversion)
        return to_numpy_arrays(source)
    if isinstance(source, (str, os.PathLike)):
        return load_arrays(source)
    raise TypeError(f"cannot compare {type(source).__name__}; pass a bundle, a path or a dict of arrays")


def _index(flat: int, shape) -> tuple:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if len(shape) else ()


def _compare_one(name: str, want: np.ndarray, got: np.ndarray, rtol: float, atol: float) -> ArrayReport:
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if want.dtype.kind in "biu":
            # Integers (words, indices, labels) are exact whatever the tolerance, even when a port
            # writes them as floats: index 3 vs 3.00001 is a different member, not a rounding error.
            if got.dtype.kind in "biu":
                bad = want.astype(object) != got.astype(object) if np.uint64 in (want.dtype, got.dtype) else want.astype(np.int64) != got.astype(np.int64)
            else:
                bad = ~(want.astype(np.float64) == got.astype(np.float64))  # a NaN never matches an integer
            w = want.astype(np.float64)
            g = got.astype(np.float64)
            abs_err = np.where(np.isnan(g), np.inf, np.abs(w - g))
            both_nan = np.zeros(want.shape, dtype=bool)
        else:
            w = want.astype(np.float64)
            g = got.astype(np.float64)
            both_nan = np.isnan(w) & np.isnan(g)
            abs_err = np.where(both_nan, 0.0, np.abs(w - g))
            bad = ~(both_nan | (abs_err <= atol + rtol * np.abs(w)))
            abs_err = np.where(np.isnan(abs_err), np.inf, abs_err)
        nonzero = (w != 0) & ~np.isnan(w)
        rel_err = np.where(nonzero, abs_err / np.where(nonzero, np.abs(w), 1.0), 0.0)
    bad = np.asarray(bad, dtype=bool)
    mismatches = int(np.count_nonzero(bad))
    first = exp_v = act_v = None
    if mismatches:
        flat = int(np.flatnonzero(bad.reshape(-1))[0])
        first = _index(flat, want.shape)
        exp_v = want.reshape(-1)[flat].item()
        act_v = got.reshape(-1)[flat].item()
    max_idx = _index(int(np.argmax(abs_err.reshape(-1))), want.shape) if abs_err.size else None
    return ArrayReport(
        name=name,
        shape=tuple(want.shape),
        max_abs_err=float(abs_err.max()) if abs_err.size else 0.0,
        max_rel_err=float(rel_err[nonzero].max()) if np.any(nonzero) else (0.0 if not abs_err.size else float("nan")),
        mismatches=mismatches,
        first_mismatch=first,
        expected_value=exp_v,
        actual_value=act_v,
        max_abs_index=max_idx,
        expected_dtype=want.dtype.name,
        actual_dtype=got.dtype.name,
    )


def _check_tolerance(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}={value!r} must be a number, e.g. {name}=1e-10") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value} must be a finite number >= 0 (e.g. {name}=1e-10 for float64 ports); "
                         "leave it out to use the defaults of the bundle's dtype")
    return value


def _infer_dtype(arrays: Mapping[str, np.ndarray]) -> str | None:
    """The reference dtype of a plain dict: float32 when any float array is float32, else float64 (None without floats)."""
    kinds = {np.asarray(a).dtype.name for a in arrays.values() if np.asarray(a).dtype.kind == "f"}
    if not kinds:
        return None
    return "float32" if "float32" in kinds or "float16" in kinds else "float64"


def _labels_of(data_flow) -> tuple[list[str], dict[str, tuple]]:
    order, labels = [], {}
    for entry in data_flow or ():
        if isinstance(entry, Mapping):
            name, stage, what, steps = entry.get("array"), entry.get("stage", ""), entry.get("what", ""), entry.get("steps", 0)
        else:
            name, stage, what, steps = (list(entry) + ["", "", 0])[:4]
        if isinstance(name, str) and name not in labels:
            order.append(name)
            labels[name] = (str(stage), str(what), int(steps or 0))
    return order, labels


def compare(expected, actual, *, rtol: float | None = None, atol: float | None = None, names=None,
            strict_dtype: bool = False, dtype: str | None = None, data_flow=None) -> CompareReport:
    """Compare actual arrays against expected ones, in data-flow order.

    Parameters
    ----------
    expected : Bundle, path or dict of arrays
        A :class:`~egdnp.reference.bundle.Bundle` (its non-input arrays are
        expected), a bundle directory, a ``.npz``, a directory of ``.npy``
        files, or a dict.
    actual : path or dict of arrays
        The port's outputs, in any of the same forms (dict values may be
        torch tensors, JAX or CuPy arrays: converted as by :func:`dump_arrays`).
    rtol, atol : float, optional
        Element ``i`` matches when ``|a_i - e_i| <= atol + rtol * |e_i|``.
        Each defaults to :data:`DEFAULT_TOLERANCES` of the reference's dtype
        (float64: 1e-10 and 1e-12; float32: 1e-4 and 2e-5).  Finite and >= 0.
        Integer expected arrays (noise words, labels, indices) must match
        exactly, whatever the dtype the port wrote them in.
    names : iterable of str, optional
        Compare only these expected arrays.
    strict_dtype : bool
        Fail a port array whose float dtype differs from the expected array's
        (always flagged in the report).
    dtype : {"float32", "float64"}, optional
        The reference's dtype; default the bundle's (for a dict: float32 when
        any expected float array is float32, else float64).
    data_flow : list, optional
        ``[{"array", "stage", "what", "steps"}, ...]`` in data-flow order;
        default the bundle's (:attr:`Bundle.data_flow`).  Arrays not listed
        come last, sorted by name.

    Returns
    -------
    CompareReport
        ``.ok``, ``.format()``, ``.first_divergence``, ``.arrays``, ...

    Raises
    ------
    ValueError
        ``rtol``/``atol`` negative, NaN or infinite; ``names`` not expected;
        a reference without expected arrays; an unreadable file.
    TypeError
        ``expected``/``actual`` of an unsupported type.
    """
    if not isinstance(strict_dtype, bool):
        raise TypeError(f"strict_dtype={strict_dtype!r} must be True or False")
    rtol = None if rtol is None else _check_tolerance("rtol", rtol)
    atol = None if atol is None else _check_tolerance("atol", atol)
    if isinstance(expected, (str, os.PathLike)):
        if os.path.isfile(os.path.join(expected, MANIFEST)):
            expected = load_bundle(expected)
    if dtype is not None and dtype not in DEFAULT_TOLERANCES:
        raise ValueError(f"dtype={dtype!r} must be 'float32' or 'float64' (the reference's dtype), or left out")
    scenario = None
    if isinstance(expected, Bundle):
        scenario = expected.scenario
        dtype = dtype or (expected.dtype if expected.dtype in DEFAULT_TOLERANCES else None)
        data_flow = expected.data_flow if data_flow is None else data_flow
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
    dtype = dtype or _infer_dtype(want_all)
    sources = []
    if rtol is None or atol is None:  # no float arrays at all (dtype None): integers are exact anyway
        d_rtol, d_atol = default_tolerances(dtype or "float64")
        label = f"{dtype or 'float64'} default"
        sources = [f"rtol {'given' if rtol is not None else label}", f"atol {'given' if atol is not None else label}"]
        rtol = d_rtol if rtol is None else rtol
        atol = d_atol if atol is None else atol
    source = "given" if not sources else (label + "s" if all(label in s for s in sources) else ", ".join(sources))
    order, labels = _labels_of(data_flow)
    position = {name: i for i, name in enumerate(order)}
    ordered = sorted(want_all, key=lambda n: (position.get(n, len(position)), n))
    report = CompareReport(rtol=rtol, atol=atol, dtype=dtype, tolerance_source=source, strict_dtype=strict_dtype,
                           scenario=scenario, order=[n for n in ordered], labels=labels)
    for name in ordered:
        want = np.asarray(want_all[name])
        if name not in got_all:
            (report.not_produced if name.startswith(OPTIONAL_PREFIXES) else report.missing).append(name)
            continue
        got = np.asarray(got_all[name])
        if tuple(got.shape) != tuple(want.shape):
            report.shape_mismatch[name] = (tuple(want.shape), tuple(got.shape))
            continue
        if got.dtype.kind not in "biuf":
            raise TypeError(f"the port's array {name!r} has dtype {got.dtype}; write real numbers (float or integer)")
        one = _compare_one(name, want, got, rtol, atol)
        one.stage, one.what = labels.get(name, ("", "", 0))[:2]
        report.arrays.append(one)
    is_input = lambda k: k.startswith(("inputs/", "params/"))  # noqa: E731 - inputs a port may echo back
    report.extra = sorted(k for k in got_all if k not in want_all and not is_input(k))
    return report
