"""Reference bundles: one ``arrays.npz`` of named arrays plus a ``manifest.json``.

A bundle directory holds::

    manifest.json   scenario, egdnp version, backend, dtype, seed, hyper-parameters,
                    and for every array: shape, dtype and a SHA-256 checksum
    arrays.npz      the arrays, stored uncompressed with numpy.savez

Array names are paths such as ``"inputs/x"``, ``"params/fc1.weight"``,
``"outputs/logits"`` or ``"grads/fc1.weight"``: ``inputs/`` and ``params/``
are what a port reads, everything else is what it must reproduce.

The checksum of an array is the SHA-256 of its dtype string, its shape and its
C-order bytes, so a changed value, shape or dtype is detected on load.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from .._files import atomic_write

__all__ = ["Bundle", "checksum", "to_numpy_arrays", "save_bundle", "make_manifest", "load_bundle", "load_arrays", "dump_arrays",
           "platform_fingerprint", "MANIFEST", "ARRAYS", "FORMAT_VERSION"]

MANIFEST = "manifest.json"
ARRAYS = "arrays.npz"
FORMAT_VERSION = 1


def platform_fingerprint() -> dict:
    """What decides the last bits of floating-point results on this machine.

    BLAS kernels and NumPy's SIMD loops are chosen at run time from the CPU's
    features, so a bundle reproduces bit for bit only where this fingerprint
    is the same; elsewhere floats agree to rounding (see docs/validating-a-port.md).

    Returns
    -------
    dict
        ``machine``, ``system``, ``numpy``, ``numba``, ``blas`` (name and
        version) and ``simd_found`` (the CPU features NumPy dispatches on).
    """
    import platform

    import numba

    config = np.show_config(mode="dicts")
    blas = config.get("Build Dependencies", {}).get("blas", {})
    simd = config.get("SIMD Extensions", {})
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "blas": f"{blas.get('name', '?')} {blas.get('version', '?')}",
        "simd_found": sorted(simd.get("found", [])),
    }


def checksum(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and C-order bytes.

    Parameters
    ----------
    array : numpy.ndarray, any shape and dtype

    Returns
    -------
    str
        64 hex digits; changes when any value, the shape or the dtype
        (including byte order) changes.
    """
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(a.dtype.str.encode())
    h.update(repr(tuple(a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def to_numpy_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Convert arrays of any framework to NumPy by plain conversion.

    Works for NumPy, CuPy (``.get()``), array-API arrays, and CPU tensors of
    PyTorch or JAX through ``__array__`` / ``__dlpack__`` -- egdnp imports neither.

    Parameters
    ----------
    arrays : mapping of str to array-like

    Returns
    -------
    dict of str to numpy.ndarray
    """
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"array name {name!r} must be a non-empty str such as 'outputs/logits'")
        if hasattr(value, "get") and type(value).__module__.startswith("cupy"):
            value = value.get()
        elif hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, without importing torch
            value = value.detach().cpu().numpy()
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 - array-api-strict arrays convert through DLPack
            arr = np.from_dlpack(value)
        if arr.dtype == object:
            raise TypeError(f"array {name!r} has no numeric dtype (got {type(value).__name__}); pass arrays or tensors")
        out[name] = np.array(arr, copy=True)
    return out


@dataclass
class Bundle:
    """A loaded reference bundle.

    Attributes
    ----------
    manifest : dict
        The manifest (scenario, versions, hyper-parameters, array table).
    arrays : dict of str to numpy.ndarray
        Every array of the bundle by name (``"inputs/x"``, ``"outputs/logits"``),
        with the shapes and dtypes the manifest lists.
    """

    manifest: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def scenario(self) -> str:
        """The scenario name recorded in the manifest (``"egd_cycle"``, ...)."""
        return self.manifest["scenario"]

    @property
    def hyperparameters(self) -> dict:
        """The scenario's hyper-parameters and formulas (the manifest's ``"hyperparameters"``).

        Not the weights: those are the arrays ``params/<key>`` (:meth:`inputs`).
        """
        return self.manifest.get("hyperparameters", {})

    @property
    def params(self) -> dict:
        """Same as :attr:`hyperparameters` (the older name; the weights are the arrays ``params/<key>``)."""
        return self.hyperparameters

    @property
    def dtype(self) -> str | None:
        """The float dtype the bundle was generated in (``"float32"`` or ``"float64"``; None if the manifest lacks it)."""
        return self.manifest.get("dtype")

    @property
    def seed(self) -> int | None:
        """The seed every input and all noise derive from (None if the manifest lacks it)."""
        return self.manifest.get("seed")

    @property
    def data_flow(self) -> list:
        """The expected arrays in data-flow order: ``[{"array", "stage", "what", "steps"}, ...]``.

        ``steps`` is 0 for a plain array, or ``k`` for an array stacked over
        steps whose row ``r`` belongs to step ``(r + 1) * k``.  Empty for
        bundles that do not record it (the comparator then sorts by name).
        """
        return list(self.hyperparameters.get("data_flow", []))

    def inputs(self) -> dict[str, np.ndarray]:
        """Arrays a port reads: names under ``inputs/`` and ``params/``.

        Returns
        -------
        dict of str to numpy.ndarray
        """
        return {k: v for k, v in self.arrays.items() if k.startswith(("inputs/", "params/"))}

    def expected(self) -> dict[str, np.ndarray]:
        """Arrays a port must reproduce: every name not under ``inputs/`` or ``params/``.

        Returns
        -------
        dict of str to numpy.ndarray
        """
        return {k: v for k, v in self.arrays.items() if not k.startswith(("inputs/", "params/"))}

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.arrays[name]
        except KeyError:
            raise KeyError(f"bundle of scenario {self.scenario!r} has no array {name!r}; it has {sorted(self.arrays)}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def save_bundle(
    directory: str | os.PathLike,
    scenario: str,
    arrays: Mapping[str, Any],
    *,
    hyperparameters: Mapping[str, Any] | None = None,
    backend: str = "numpy",
    dtype: str = "float32",
    seed: int | None = None,
    notes: str = "",
) -> Path:
    """Write a bundle directory (``manifest.json`` + ``arrays.npz``).

    Parameters
    ----------
    directory : path
        Created if missing; an existing bundle there is replaced.
    scenario : str
        Scenario name (``egdnp.reference.scenarios.SCENARIOS``) or a port's own label.
    arrays : mapping of str to array
        Converted to NumPy with :func:`to_numpy_arrays`.
    hyperparameters, backend, dtype, seed, notes :
        Recorded in the manifest.

    Returns
    -------
    pathlib.Path of the directory.
    """
    directory = Path(directory)
    host = to_numpy_arrays(arrays)
    manifest = make_manifest(scenario, host, hyperparameters=hyperparameters, backend=backend, dtype=dtype, seed=seed, notes=notes)
    directory.mkdir(parents=True, exist_ok=True)
    # Both files are written in full to temporary names before either replaces the old one, so a
    # failed write leaves the previous bundle as it was (and no temporary file behind).
    with atomic_write(directory / ARRAYS) as fh_arrays:
        np.savez(fh_arrays, **host)
        with atomic_write(directory / MANIFEST, "w") as fh_manifest:
            fh_manifest.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def make_manifest(scenario: str, arrays: Mapping[str, np.ndarray], *, hyperparameters: Mapping[str, Any] | None = None,
                  backend: str = "numpy", dtype: str = "float32", seed: int | None = None, notes: str = "") -> dict:
    """The manifest :func:`save_bundle` writes for these arrays (also used for in-memory bundles).

    Parameters
    ----------
    scenario : str
    arrays : mapping of str to numpy.ndarray
        Host arrays, any shapes.
    hyperparameters, backend, dtype, seed, notes :
        As for :func:`save_bundle`.

    Returns
    -------
    dict
        JSON-serialisable: format, scenario, versions, backend, dtype, seed,
        hyper-parameters, notes, platform fingerprint and the array table
        (shape, dtype, SHA-256 per array).
    """
    host = {name: np.asarray(a) for name, a in arrays.items()}
    return {
        "format": FORMAT_VERSION,
        "scenario": scenario,
        "egdnp_version": __version__,
        "numpy_version": np.__version__,
        "backend": backend,
        "dtype": dtype,
        "seed": seed,
        "hyperparameters": _jsonable(dict(hyperparameters or {})),
        "notes": notes,
        "platform": platform_fingerprint(),
        "arrays": {
            name: {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": checksum(a)} for name, a in sorted(host.items())
        },
    }


def load_bundle(directory: str | os.PathLike, *, verify: bool = True) -> Bundle:
    """Load a bundle directory and verify every checksum.

    Parameters
    ----------
    directory : path
        A directory holding ``manifest.json`` and ``arrays.npz``.
    verify : bool
        Check every array's shape, dtype and SHA-256 against the manifest
        (default); ``False`` only skips those checks.

    Returns
    -------
    Bundle

    Raises
    ------
    FileNotFoundError
        The directory, its manifest or its arrays file is missing.
    ValueError
        The manifest is not valid JSON or lacks a required field; a checksum,
        shape or dtype differs from the manifest, or arrays are missing from /
        extra to the manifest; ``arrays.npz`` is empty, truncated or not an
        ``.npz`` archive.
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a reference bundle: {MANIFEST} is missing; "
            "create bundles with `python -m egdnp.reference generate SCENARIO --out DIR` or egdnp.reference.save_bundle"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{manifest_path} is not valid JSON ({exc}); regenerate the bundle") from None
    required = ("scenario", "arrays")
    absent = [key for key in required if key not in manifest] if isinstance(manifest, dict) else list(required)
    if absent or not isinstance(manifest.get("arrays"), dict):
        raise ValueError(f"{manifest_path} lacks the field(s) {absent or ['arrays']} of a bundle manifest "
                         f"(format {FORMAT_VERSION}); regenerate the bundle with egdnp.reference")
    arrays_path = directory / ARRAYS
    if not arrays_path.is_file():
        raise FileNotFoundError(f"bundle {directory} has a manifest but no {ARRAYS}")
    arrays = _read_npz(arrays_path, what=f"the arrays of bundle {directory}")
    if verify:
        table = manifest.get("arrays", {})
        missing = sorted(set(table) - set(arrays))
        extra = sorted(set(arrays) - set(table))
        if missing or extra:
            raise ValueError(f"bundle {directory}: arrays missing from {ARRAYS}: {missing}; not in the manifest: {extra}")
        for name, entry in table.items():
            a = arrays[name]
            if list(a.shape) != entry["shape"] or a.dtype.str != entry["dtype"]:
                raise ValueError(
                    f"bundle {directory}: array {name!r} has shape {list(a.shape)} dtype {a.dtype.str}, "
                    f"the manifest says shape {entry['shape']} dtype {entry['dtype']}"
                )
            if checksum(a) != entry["sha256"]:
                raise ValueError(
                    f"bundle {directory}: checksum of array {name!r} does not match the manifest "
                    "(the file was modified or corrupted); regenerate the bundle"
                )
    return Bundle(manifest=manifest, arrays=arrays)


def _unreadable(path, what: str, exc: BaseException) -> ValueError:
    size = path.stat().st_size if path.is_file() else 0
    state = "empty (0 bytes)" if size == 0 else f"truncated or not written by NumPy ({size} bytes)"
    return ValueError(f"{what} {path} cannot be read: the file is {state} ({type(exc).__name__}: {exc}); "
                      "write it again (egdnp.reference.dump_arrays / save_bundle) or regenerate the bundle")


def _read_npz(path: Path, what: str = "the arrays file") -> dict[str, np.ndarray]:
    """Every array of a ``.npz``; a zero-byte, truncated or foreign file raises a ValueError naming it."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not an .npz archive")
        with data:
            return {name: data[name] for name in data.files}
    except (EOFError, ValueError, OSError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise  # not a content problem: the caller's message says what it is
        raise _unreadable(path, what, exc) from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (EOFError, ValueError, OSError) as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise _unreadable(path, "the array file", exc) from None


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Arrays from a bundle directory, a ``.npz`` file, or a directory of ``.npy`` files.

    In a directory of ``.npy`` files, nested folders give ``/``-separated names
    (``outputs/logits.npy`` -> ``"outputs/logits"``).

    Parameters
    ----------
    path : path
        A bundle directory (checksums verified), a ``.npz`` file, or a
        directory tree of ``.npy`` files.

    Returns
    -------
    dict of str to numpy.ndarray
        Every array found, by name; a bundle gives its inputs too.

    Raises
    ------
    FileNotFoundError
        ``path`` is none of these, or a directory without any ``.npy`` file.
    ValueError
        A ``.npz``/``.npy`` file that is empty, truncated or not written by
        NumPy (the message names the file).
    """
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        return load_bundle(path).arrays
    if path.is_file() and path.suffix == ".npz":
        return _read_npz(path)
    if path.is_dir():
        found = sorted(path.rglob("*.npy"))
        if not found:
            raise FileNotFoundError(f"{path} holds no manifest.json and no .npy files; nothing to compare")
        return {p.relative_to(path).with_suffix("").as_posix(): _read_npy(p) for p in found}
    raise FileNotFoundError(f"{path} is neither a bundle directory, a .npz file nor a directory of .npy files")


def dump_arrays(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Write a port's arrays in the layout the comparator reads.

    ``path`` ending in ``.npz`` gives one ``.npz`` file; otherwise a directory
    of ``.npy`` files (``"outputs/logits"`` -> ``outputs/logits.npy``).  Values
    are converted by plain NumPy conversion (torch/JAX CPU tensors included).

    Parameters
    ----------
    path : path
        ``something.npz``, or a directory (created if missing).
    arrays : mapping of str to array-like
        Names as in the bundle (``"outputs/logits"``, ``"grads/fc1.weight"``)
        to arrays or tensors of any shape; converted with :func:`to_numpy_arrays`.

    Returns
    -------
    pathlib.Path
        ``path``, to hand to :func:`egdnp.reference.compare`.
    """
    path = Path(path)
    host = to_numpy_arrays(arrays)
    if path.suffix == ".npz":
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as fh:
            np.savez(fh, **host)
        return path
    for name, a in host.items():
        target = path / (name + ".npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as fh:
            np.save(fh, a, allow_pickle=False)
    return path
