"""Checks for a port's own test suite: compare a PyTorch/JAX port with egdnp in one line.

The top floor of egdnp, beside :mod:`egdnp.reference` (which it uses); nothing
in egdnp imports it, and it never imports pytest (the pytest plugin lives in
:mod:`egdnp.testing.pytest_plugin`).

Example
-------
>>> from egdnp.testing import assert_port_matches, reference_bundle
>>> bundle = reference_bundle("mlp", dtype="float64")          # generated once per process
>>> outputs = bundle.expected()                               # a port's outputs would go here
>>> assert_port_matches(bundle, outputs).ok
True

A failing port raises ``AssertionError`` whose message is the comparator's
report: every array in data-flow order, the tolerances used (from the bundle's
dtype unless given), and the first divergence (``first divergence: conv2
forward output `activations/conv2` (max abs err 0.83 at [1, 2, 3, 0]; ...);
everything before it matches``).  docs/validating-a-port.md section 6 shows
the pytest fixture ``egdnp_bundle``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from .. import reference
from ..reference import Bundle, CompareReport

__all__ = ["assert_port_matches", "reference_bundle"]

_CACHE: dict[tuple, Bundle] = {}


def reference_bundle(name: str, *, dtype: str = "float64", seed: int = 0, directory=None) -> Bundle:
    """A scenario's bundle, generated or loaded once per process.

    Parameters
    ----------
    name : str
        A scenario (``python -m egdnp.reference list``).
    dtype : {"float32", "float64"}
        Default float64: check a port in float64 first.
    seed : int
    directory : path, optional
        Where bundles are kept between sessions: ``<directory>/<name>-<dtype>-seed<seed>``
        is loaded (checksums verified) when it exists, and written there when it
        is generated.  Without it the bundle is generated in memory.

    Returns
    -------
    Bundle
        ``bundle.inputs()`` for the port, ``bundle.expected()`` to reproduce,
        ``bundle.hyperparameters``, ``bundle.dtype``, ``bundle.data_flow``.

    Raises
    ------
    ValueError
        Unknown scenario, dtype or seed.
    """
    if not isinstance(name, str) or name not in reference.SCENARIOS:
        raise ValueError(f"name={name!r} is not a scenario; choose one of {sorted(reference.SCENARIOS)}")
    key = (name, dtype, seed, None if directory is None else os.fspath(Path(directory).resolve()))
    if key in _CACHE:
        return _CACHE[key]
    if directory is None:
        bundle = reference.scenario_bundle(name, dtype=dtype, seed=seed)
    else:
        path = Path(directory) / reference.bundle_dir_name(name, dtype, seed)
        if not (path / "manifest.json").is_file():
            arrays, hyper = reference.generate(name, dtype=dtype, seed=seed)
            reference.save_bundle(path, name, arrays, hyperparameters=hyper, dtype=dtype, seed=seed,
                                  notes=reference.SCENARIOS[name].description)
        bundle = reference.load_bundle(path)
    _CACHE[key] = bundle
    return bundle


def _as_bundle(scenario_or_bundle, dtype, seed) -> Bundle | Mapping:
    if isinstance(scenario_or_bundle, Bundle):
        if dtype is not None and dtype != scenario_or_bundle.dtype:
            raise ValueError(f"dtype={dtype!r} but the bundle is {scenario_or_bundle.dtype}; leave dtype out when passing a bundle")
        return scenario_or_bundle
    if isinstance(scenario_or_bundle, str) and scenario_or_bundle in reference.SCENARIOS:
        return reference_bundle(scenario_or_bundle, dtype=dtype or "float64", seed=0 if seed is None else seed)
    if isinstance(scenario_or_bundle, (str, os.PathLike)) and Path(scenario_or_bundle).is_dir():
        return reference.load_bundle(scenario_or_bundle)
    if isinstance(scenario_or_bundle, Mapping):
        return scenario_or_bundle
    raise ValueError(f"scenario_or_bundle={scenario_or_bundle!r} is neither a scenario name ({', '.join(reference.SCENARIOS)}), "
                     "a Bundle, a bundle directory nor a dict of expected arrays")


def assert_port_matches(scenario_or_bundle: Any, outputs: Any, *, dtype: str | None = None, seed: int | None = None,
                        rtol: float | None = None, atol: float | None = None, strict_dtype: bool = False,
                        names=None) -> CompareReport:
    """Assert that a port's outputs reproduce an egdnp scenario.

    Parameters
    ----------
    scenario_or_bundle : str, Bundle, path or dict
        A scenario name (its bundle comes from :func:`reference_bundle` with
        ``dtype``/``seed``), a :class:`~egdnp.reference.Bundle`, a bundle
        directory, or a dict of expected arrays.
    outputs : dict of str to array, or path
        The port's arrays by bundle name (torch tensors, JAX, CuPy or NumPy
        arrays; ``activations/*`` and ``grad_activations/*`` optional), or a
        ``.npz`` / directory written with :func:`egdnp.reference.dump_arrays`.
    dtype : {"float32", "float64"}, optional
        With a scenario name: the bundle's dtype (default float64).  With a
        bundle: must be its dtype if given.
    seed : int, optional
        With a scenario name: the bundle's seed (default 0).
    rtol, atol : float, optional
        Default: the bundle dtype's (float64: 1e-10, 1e-12; float32: 1e-4, 2e-5).
    strict_dtype : bool
        Fail a float array of another dtype than the bundle's.
    names : iterable of str, optional
        Check only these expected arrays.

    Returns
    -------
    CompareReport
        When the port matches (``.format()`` prints the table).

    Raises
    ------
    AssertionError
        The port does not match; the message is the report, naming the first divergence.
    ValueError, TypeError
        Bad arguments (unknown scenario, a dtype that contradicts the bundle, bad tolerances).
    """
    expected = _as_bundle(scenario_or_bundle, dtype, seed)
    report = reference.compare(expected, outputs, rtol=rtol, atol=atol, strict_dtype=strict_dtype, names=names,
                               dtype=None if isinstance(expected, Bundle) else dtype)
    if not report.ok:
        raise AssertionError(report.format())
    return report
