"""Reference outputs for ports: scenarios, bundles and a comparator.

egdnp is the oracle PyTorch and JAX ports of EGD and EGGROLL are checked
against.  The workflow (docs/validating-a-port.md):

1. ``python -m egdnp.reference generate SCENARIO --out DIR`` writes a bundle:
   ``arrays.npz`` + ``manifest.json`` (scenario, versions, hyper-parameters,
   shapes, dtypes and a SHA-256 per array).
2. The port reads ``inputs/*`` and ``params/*`` (and the noise, if it does not
   reimplement docs/noise.md), computes, and writes its outputs with
   :func:`dump_arrays` (``.npz`` or a directory of ``.npy``).
3. ``python -m egdnp.reference compare DIR PORT_OUT`` reports per array, in
   data-flow order, the max absolute/relative error and the first mismatch,
   names the first divergence, and exits non-zero on failure.  Tolerances
   default to the bundle's dtype (float64: rtol 1e-10, atol 1e-12).

``python -m egdnp.reference explain SCENARIO`` prints everything a porter needs:
the data flow, every array's shape, dtype and layout, the conventions and the
noise addresses.  :mod:`egdnp.testing` wraps the comparison for a port's own
test suite.

Scenarios (``python -m egdnp.reference list``): ``noise``; ``mlp``/``cnn``
forward and backward, layer by layer; ``sgd_steps``, ``nesterov_steps``, ``adam_steps``,
``adamw_steps``; ``egd_cycle`` (mean / ``_softmax``); ``eggroll_egdnp``,
``eggroll_hyperscalees_torch``, ``eggroll_hyperscalees_jax``; ``train_<sgd|nesterov|
adam|adamw|egd|eggroll>`` trajectories.  Worked PyTorch and JAX ports that pass
them are in ``examples/ports/``.

Functions
---------
generate(name, backend, dtype, seed)    run a scenario -> (arrays, hyperparameters)
scenario_bundle(name, dtype, seed)      the same as an in-memory Bundle (no files)
save_bundle / load_bundle               write / read (and verify) a bundle directory
dump_arrays / load_arrays               a port's outputs in the comparator's layout
compare(expected, actual, rtol, atol)   -> CompareReport (.ok, .format(), .first_divergence)
explain(name)                           the porter's description of a scenario, as text
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import _backend
from .bundle import Bundle, checksum, dump_arrays, load_arrays, load_bundle, make_manifest, save_bundle, to_numpy_arrays
from .compare import DEFAULT_TOLERANCES, OPTIONAL_PREFIXES, ArrayReport, CompareReport, compare, default_tolerances
from .explain import explain
from .scenarios import SCENARIOS, Scenario

__all__ = [
    "SCENARIOS",
    "Scenario",
    "Bundle",
    "generate",
    "scenario_bundle",
    "explain",
    "save_bundle",
    "load_bundle",
    "dump_arrays",
    "load_arrays",
    "to_numpy_arrays",
    "checksum",
    "compare",
    "CompareReport",
    "ArrayReport",
    "DEFAULT_TOLERANCES",
    "OPTIONAL_PREFIXES",
    "default_tolerances",
    "TEST_BUNDLES",
    "regenerate_test_bundles",
]

# The bundles checked into tests/reference_bundles: (scenario, dtype, seed).  The core scenarios
# in float32, and in float64 where a port is tested against them (tests/test_ports.py) or the
# model code has float64-specific paths; 10-52 kB each (~520 kB in all).
TEST_BUNDLES = [
    ("noise", "float32", 42),
    ("noise", "float64", 42),
    ("mlp", "float32", 42),
    ("mlp", "float64", 42),
    ("cnn", "float32", 42),
    ("cnn", "float64", 42),
    ("sgd_steps", "float32", 42),
    ("sgd_steps", "float64", 42),
    ("nesterov_steps", "float32", 42),
    ("nesterov_steps", "float64", 42),
    ("adam_steps", "float32", 42),
    ("adam_steps", "float64", 42),
    ("adamw_steps", "float32", 42),
    ("adamw_steps", "float64", 42),
    ("egd_cycle", "float32", 42),
    ("egd_cycle", "float64", 42),
    ("egd_cycle_softmax", "float32", 42),
    ("eggroll_egdnp", "float32", 42),
    ("eggroll_egdnp", "float64", 42),
    ("eggroll_hyperscalees_torch", "float32", 42),
    ("eggroll_hyperscalees_torch", "float64", 42),
    ("eggroll_hyperscalees_jax", "float32", 42),
    ("eggroll_hyperscalees_jax", "float64", 42),
    ("train_nesterov", "float32", 42),
    ("train_adam", "float32", 42),
    ("train_egd", "float32", 42),
    ("train_eggroll", "float32", 42),
]


def generate(name: str, *, backend="numpy", dtype: str = "float32", seed: int = 0):
    """Run a scenario.

    Parameters
    ----------
    name : str
        A key of :data:`SCENARIOS`.
    backend : str or namespace
        ``"numpy"``, ``"cupy"``, ``"array_api_strict"`` or a namespace.
    dtype : {"float32", "float64"}
        Float dtype of every input, parameter and output (integer arrays stay
        uint32 / int64).
    seed : int
        In [0, 2**64 - 1]; every input and all noise derive from it.

    Returns
    -------
    arrays : dict of str to numpy.ndarray
        Host copies, named as in the module docstring of
        :mod:`egdnp.reference.scenarios` (``params/fc1.weight`` (7, 5), ...).
    hyperparameters : dict
        JSON-serialisable: every setting and a sentence on each formula.

    Raises
    ------
    ValueError
        Unknown scenario, dtype, backend name or seed.
    RuntimeError
        ``backend="cupy"`` without a usable CuPy/GPU.
    """
    if name not in SCENARIOS:
        raise ValueError(f"scenario={name!r} is not known; choose one of {sorted(SCENARIOS)}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype={dtype!r} must be 'float32' or 'float64'")
    xp = _backend.get_namespace(backend)
    arrays, hyper = SCENARIOS[name].fn(xp, dtype, seed)
    return to_numpy_arrays(arrays), hyper


def scenario_bundle(name: str, *, dtype: str = "float64", seed: int = 0, backend="numpy") -> Bundle:
    """Run a scenario and hold the result as an in-memory :class:`Bundle` (nothing is written).

    Parameters
    ----------
    name : str
        A key of :data:`SCENARIOS`.
    dtype : {"float32", "float64"}
        Default float64: check a port in float64 first.
    seed : int
    backend : str or namespace
        As for :func:`generate`.

    Returns
    -------
    Bundle
        With the manifest :func:`save_bundle` would write (``bundle.dtype``,
        ``bundle.hyperparameters``, ``bundle.data_flow``) and every array.

    Raises
    ------
    ValueError
        As for :func:`generate`.
    """
    arrays, hyper = generate(name, backend=backend, dtype=dtype, seed=seed)
    backend_name = backend if isinstance(backend, str) else _backend.backend_name(backend)
    manifest = make_manifest(name, arrays, hyperparameters=hyper, backend=backend_name, dtype=dtype, seed=seed,
                             notes=SCENARIOS[name].description)
    manifest = json.loads(json.dumps(manifest))  # exactly what a saved and reloaded manifest holds
    return Bundle(manifest=manifest, arrays=arrays)


def bundle_dir_name(name: str, dtype: str, seed: int) -> str:
    """Directory name of a checked-in test bundle.

    Parameters
    ----------
    name : str
        Scenario name.
    dtype : {"float32", "float64"}
    seed : int

    Returns
    -------
    str
        ``"<name>-<dtype>-seed<seed>"``.
    """
    return f"{name}-{dtype}-seed{seed}"


def regenerate_test_bundles(directory="tests/reference_bundles") -> list[Path]:
    """Rewrite every bundle of :data:`TEST_BUNDLES` under ``directory`` (NumPy backend).

    Run it (``python -m egdnp.reference regenerate-test-bundles``) only after
    an intended numerical change: the drift test compares against these files.

    Parameters
    ----------
    directory : path
        Where the bundles live (default ``tests/reference_bundles``, relative
        to the current directory).

    Returns
    -------
    list of pathlib.Path
        The bundle directories written.
    """
    paths = []
    for name, dtype, seed in TEST_BUNDLES:
        arrays, hyper = generate(name, dtype=dtype, seed=seed)
        paths.append(save_bundle(Path(directory) / bundle_dir_name(name, dtype, seed), name, arrays,
                                 hyperparameters=hyper, backend="numpy", dtype=dtype, seed=seed,
                                 notes=SCENARIOS[name].description))
    return paths
