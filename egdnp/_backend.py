"""The only module of egdnp that knows concrete array libraries.

Everything above this layer receives an array-API namespace ``xp`` and does its
array math through it.  This module turns user choices (``"numpy"``,
``"cupy"``, or any array-API namespace such as ``array_api_strict``) into such
namespaces, moves arrays between host and device, and owns pinned host memory.

Host arrays are always NumPy arrays.  "Device" means whatever the namespace
``xp`` computes on: for NumPy and array-api-strict's default device this is
the host as well, for CuPy it is the current GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import types
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "BufferPool",
    "get_namespace",
    "array_namespace",
    "backend_name",
    "is_numpy",
    "is_cupy",
    "device_of",
    "to_device",
    "to_host",
    "new_stream",
    "synchronize",
    "pinned_empty",
    "numpy_dtype",
    "device_count",
    "select_device",
    "check_same_library",
    "check_float_arrays",
    "host_memory_bytes",
    "device_memory_bytes",
    "check_fits",
    "import_cupy",
    "IMPLS",
    "resolve_impl",
    "keep_freed_memory",
]

_CUPY_HELP = (
    'install the CUDA extra that matches your driver, e.g. pip install "egdnp[cuda12]" '
    '(CUDA 12.x) or pip install "egdnp[cuda13]" (CUDA 13.x), on a machine with an NVIDIA GPU; '
    'or use backend="numpy"'
)


def import_cupy():
    """Import CuPy and check that a GPU is usable; one clear error otherwise."""
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:  # ImportError, or a broken CUDA install raising at import
        raise RuntimeError(
            f"backend='cupy' was requested but CuPy cannot be imported ({type(exc).__name__}: "
            f"{exc}); {_CUPY_HELP}"
        ) from None
    try:
        usable = bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001 - any driver error means "not usable"
        usable = False
    if not usable:
        raise RuntimeError(
            "backend='cupy' was requested but CuPy reports no usable GPU "
            f"(cupy.cuda.is_available() is False); {_CUPY_HELP}"
        )
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports and a GPU is usable (never raises).

    Returns
    -------
    bool
    """
    try:
        import_cupy()
    except RuntimeError:
        return False
    return True


def device_count() -> int:
    """Number of GPUs CuPy can use in this process; 0 where CuPy or a GPU is missing (never raises).

    Returns
    -------
    int
        ``cupy.cuda.runtime.getDeviceCount()`` when a GPU is usable, else 0.
    """
    try:
        cupy = import_cupy()
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: none usable
        return 0


def select_device(index: int) -> Any:
    """Make GPU ``index`` the current CuPy device of the calling thread.

    Every CuPy array, kernel launch, stream and pinned copy that egdnp makes
    afterwards in this thread goes to that device.  One process per GPU picks
    its own, e.g. ``select_device(local_rank % device_count())``.

    Parameters
    ----------
    index : int
        A device ordinal in ``[0, device_count())`` (as CUDA numbers them,
        after ``CUDA_VISIBLE_DEVICES``).

    Returns
    -------
    cupy.cuda.Device
        The device now current.

    Raises
    ------
    TypeError
        ``index`` is not an int.
    ValueError
        ``index`` is outside ``[0, device_count())``.
    RuntimeError
        CuPy cannot be imported or no GPU is usable.
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index={index!r} must be an int GPU ordinal, e.g. local_rank % device_count()")
    cupy = import_cupy()
    device = cupy.cuda.Device(_gpu_ordinal(cupy, index, "index"))
    device.use()
    return device


def _gpu_ordinal(cupy: Any, device: Any, what: str = "device") -> int:
    """The ordinal of a GPU given as an int or a ``cupy.cuda.Device``; errors name the fix."""
    index = getattr(device, "id", device)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(
            f"{what}={device!r} is not a GPU: pass an int ordinal or a cupy.cuda.Device (e.g. device_of(x))"
        )
    count = int(cupy.cuda.runtime.getDeviceCount())
    index = int(index)
    if not 0 <= index < count:
        raise ValueError(
            f"{what}={index} is not a GPU of this process: CuPy sees {count} device(s), ordinals "
            f"0..{count - 1}; pass index % device_count() or check CUDA_VISIBLE_DEVICES"
        )
    return index


def get_namespace(backend: Any = "numpy") -> types.ModuleType:
    """Return the array-API namespace for a backend choice.

    Parameters
    ----------
    backend : {"numpy", "cupy"} or array-API namespace
        A name, or any namespace that implements the array API standard
        (``array_api_strict``, ``array_api_compat.numpy``, ...), which is
        returned through :func:`array_api_compat.array_namespace` semantics.

    Returns
    -------
    xp : module
        An array-API compatible namespace.
    """
    if isinstance(backend, str):
        name = backend.lower()
        if name == "numpy":
            return array_api_compat.array_namespace(np.empty(0))
        if name == "cupy":
            cupy = import_cupy()
            return array_api_compat.array_namespace(cupy.empty(0))
        if name in ("array_api_strict", "array-api-strict", "strict"):
            return importlib.import_module("array_api_strict")
        raise ValueError(
            f"backend={backend!r} is not known; use 'numpy', 'cupy' or pass an array-API "
            "namespace (e.g. array_api_strict)"
        )
    if isinstance(backend, types.ModuleType):
        if backend is np or getattr(backend, "__name__", "") == "numpy":
            return array_api_compat.array_namespace(np.empty(0))
        if getattr(backend, "__name__", "") == "cupy":
            return get_namespace("cupy")
        if hasattr(backend, "asarray") and hasattr(backend, "matmul"):
            return backend
    raise TypeError(
        f"backend={backend!r} is neither a backend name nor an array-API namespace; "
        "use 'numpy', 'cupy' or a namespace such as array_api_strict"
    )


def array_namespace(*arrays: Any) -> types.ModuleType:
    """The array-API namespace of the given arrays (array-api-compat dispatch).

    Parameters
    ----------
    *arrays : array
        Arrays of one library (NumPy, CuPy, array-api-strict, ...), any shapes.

    Returns
    -------
    xp : module
        Their array-API namespace (array-api-compat's wrapper for NumPy and CuPy).

    Raises
    ------
    TypeError
        The arrays belong to different libraries or are not arrays.
    """
    # Memoised on the argument types, which alone decide the namespace: the
    # uncached lookup costs several microseconds, a visible share of a small
    # layer call.  Failed lookups are not stored, so they raise every time.
    key = tuple(map(type, arrays))
    xp = _NAMESPACES.get(key)
    if xp is None:
        try:
            xp = array_api_compat.array_namespace(*arrays)
        except TypeError:
            raise TypeError(_mixed_message(arrays)) from None
        _NAMESPACES[key] = xp
    return xp


def _library_of(x: Any) -> str:
    """A short name for the array library of one value ("numpy", "array_api_strict", ...)."""
    try:
        return backend_name(array_api_compat.array_namespace(x))
    except TypeError:
        return f"not an array ({type(x).__name__})"


def _mixed_message(arrays) -> str:
    not_arrays = [type(a).__name__ for a in arrays if _library_of(a).startswith("not an array")]
    if not_arrays:
        return f"expected arrays but got {', '.join(not_arrays)}; pass arrays (e.g. xp.asarray(value))"
    names = sorted({_library_of(a) for a in arrays})
    if len(names) == 1 and not names[0].startswith("not an array"):
        names = sorted({type(a).__module__.split(".")[0] for a in arrays})
    return (
        f"arrays of different libraries were mixed in one call: {', '.join(names)}; pass arrays of one "
        "library (move one side with egdnp.to_device(x, xp))"
    )


def check_same_library(value: Any, ref: Any, what: str, ref_what: str) -> None:
    """Raise one clear TypeError unless ``value`` is an array of the same library as ``ref``.

    The common case (the same array type) costs one ``type`` comparison.

    Parameters
    ----------
    value : array
        The argument being checked (any shape).
    ref : array
        An array of the library the call works in (any shape).
    what, ref_what : str
        How the two are called in the message (``"grads['fc1.weight']"``, ``"params"``).

    Returns
    -------
    None

    Raises
    ------
    TypeError
        ``value`` is not an array, or belongs to another array library than ``ref``;
        the message names both libraries and the argument.
    """
    if type(value) is type(ref):
        return
    ref_lib = _library_of(ref)
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise TypeError(
            f"{what} is a {type(value).__name__}, not an array; pass an array of {ref_lib} like {ref_what}"
        )
    lib = _library_of(value)
    if lib != ref_lib:
        raise TypeError(
            f"{what} is an array of {lib} but {ref_what} is of {ref_lib}; egdnp does not mix array libraries in "
            f"one call: move {what} with egdnp.to_device({what}, egdnp.get_namespace({ref_lib!r}))"
        )


_NAMESPACES: dict[tuple[type, ...], types.ModuleType] = {}


def backend_name(xp: types.ModuleType) -> str:
    """A short name for a namespace.

    Parameters
    ----------
    xp : module
        An array-API namespace.

    Returns
    -------
    str
        ``"numpy"``, ``"cupy"``, ``"array_api_strict"`` or the namespace's module name.
    """
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    return getattr(xp, "__name__", type(xp).__name__)


def is_numpy(xp: types.ModuleType) -> bool:
    """True if ``xp`` computes with NumPy arrays (so Numba kernels can run on them).

    Parameters
    ----------
    xp : module
        An array-API namespace.

    Returns
    -------
    bool
    """
    known = _IS_NUMPY.get(xp)
    if known is None:
        # memoised: array-api-compat's check costs ~0.4 us and the nn layers ask
        # it several times per layer call
        known = _IS_NUMPY[xp] = bool(array_api_compat.is_numpy_namespace(xp))
    return known


_IS_NUMPY: dict[Any, bool] = {}


def is_cupy(xp: types.ModuleType) -> bool:
    """True if ``xp`` computes with CuPy arrays.

    Parameters
    ----------
    xp : module
        An array-API namespace.

    Returns
    -------
    bool
    """
    return bool(array_api_compat.is_cupy_namespace(xp))


#: Every implementation name an op can be asked for with ``impl=``.
IMPLS = ("auto", "numba", "cupy", "array_api")


def resolve_impl(xp: types.ModuleType, impl: str, *, kernels: tuple[str, ...] = ("numba",), usable: bool = True,
                 needs: str = "") -> str:
    """Which implementation of an op runs for namespace ``xp``: ``"numba"``, ``"cupy"`` or ``"array_api"``.

    Every op with fast kernels takes ``impl="auto"|<its kernels>|"array_api"``;
    the array-API code is the oracle the kernels are tested against.  This is
    the one place that turns that choice into an implementation.

    Parameters
    ----------
    xp : namespace
        The namespace the op computes in (NumPy runs Numba kernels, CuPy runs
        CUDA kernels, any other namespace the array-API code).
    impl : {"auto", "numba", "cupy", "array_api"}
        What the caller asked for; the op accepts ``"auto"``, ``"array_api"``
        and the names in ``kernels``.
    kernels : tuple of {"numba", "cupy"}
        The fast implementations this op has (empty: array-API code only).
    usable : bool
        Whether the fast kernel takes these arguments (a dtype, a shape, a
        mutation kind).  ``False`` makes ``"auto"`` run the array-API code and
        an explicit kernel request an error.
    needs : str
        What the kernel needs beyond its namespace, for that error
        (``"a full-rank mutation"``).

    Returns
    -------
    str, one of ``kernels`` or ``"array_api"``.
    """
    accepted = ("auto", *kernels, "array_api")
    if not isinstance(impl, str) or impl not in accepted:
        raise ValueError(f"impl={impl!r} is not one of {accepted}")
    native = "numba" if is_numpy(xp) else "cupy" if is_cupy(xp) else None
    if impl == "auto":
        return native if native in kernels and usable else "array_api"
    if impl == "array_api":
        return impl
    if impl != native:
        library = "NumPy" if impl == "numba" else "CuPy"
        raise ValueError(f"impl={impl!r} computes {library} arrays; xp={backend_name(xp)} is not {library}; "
                         "use impl='auto' or impl='array_api'")
    if not usable:
        raise ValueError(f"impl={impl!r} needs {needs or 'other arguments'}; use impl='auto' or impl='array_api'")
    return impl


def device_of(x: Any) -> Any:
    """The device an array lives on (array-api-compat ``device``).

    Parameters
    ----------
    x : array
        An array of any backend and shape.

    Returns
    -------
    device
        ``"cpu"`` for NumPy, a ``cupy.cuda.Device`` for CuPy, the namespace's
        device object otherwise; pass it as ``device=`` to create arrays beside ``x``.
    """
    return array_api_compat.device(x)


def numpy_dtype(xp: types.ModuleType, dtype: Any) -> np.dtype:
    """The NumPy dtype equal to a namespace dtype (``xp.float32`` -> ``np.float32``).

    Parameters
    ----------
    xp : module
        The namespace ``dtype`` belongs to.
    dtype : namespace dtype, numpy dtype or str
        For example ``xp.float32``, ``np.float64`` or ``"uint32"``.

    Returns
    -------
    numpy.dtype
    """
    if isinstance(dtype, (str, np.dtype)) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
        return np.dtype(dtype)
    for name in ("float32", "float64", "uint32", "int32", "int64", "uint64", "bool", "uint8", "int8"):
        if getattr(xp, name, None) == dtype:
            return np.dtype(name)
    return np.dtype(dtype)


def to_device(
    x: Any,
    xp: types.ModuleType,
    *,
    device: Any = None,
    stream: Any = None,
    non_blocking: bool = False,
    out: Any = None,
) -> Any:
    """Move a host (NumPy) array, or any array, into namespace ``xp``.

    Parameters
    ----------
    x : array
        Source array (usually a NumPy host array).
    xp : module
        Target namespace.
    device : optional
        Target device of ``xp`` (default: its default device).  CuPy: a GPU
        ordinal or a ``cupy.cuda.Device``; default the current device, and a
        CuPy array already there is returned as it is (one on another GPU is
        copied through the host).
    stream : optional
        CuPy stream for the copy; ignored on CPU backends.
    non_blocking : bool
        With CuPy, copy asynchronously on ``stream`` (the source must be pinned
        and must not be modified until the stream is synchronised).
    out : array, optional
        CuPy only: an existing device array to copy into (no allocation).

    Returns
    -------
    array in ``xp``
    """
    if is_cupy(xp):
        cupy = import_cupy()
        if device is not None:
            index = _gpu_ordinal(cupy, device)
            if out is not None and out.device.id != index:
                raise ValueError(f"out lives on GPU {out.device.id}, not on device={index}; pass an out on that GPU")
            if isinstance(x, cupy.ndarray) and x.device.id != index:
                x = to_host(x)  # between GPUs through the host: simple, and rare in egdnp
            if index != cupy.cuda.Device().id:
                with cupy.cuda.Device(index):
                    return to_device(x, xp, stream=stream, non_blocking=non_blocking, out=out)
        src = np.asarray(x) if not isinstance(x, cupy.ndarray) else x
        if isinstance(src, cupy.ndarray):
            if out is not None:
                out[...] = src
                return out
            return src
        if out is None:
            out = cupy.empty(src.shape, dtype=src.dtype)
        # ndarray.set copies asynchronously on ``stream`` when one is given (and the
        # source is pinned); without a stream it is a synchronous copy.
        out.set(src, stream=stream if non_blocking else None)
        return out
    if is_numpy(xp):
        arr = np.asarray(x)
        if out is not None:
            np.copyto(out, arr)
            return out
        return arr.copy() if arr is x else arr
    # Generic array-API namespace (array-api-strict among them).
    kwargs = {} if device is None else {"device": device}
    if not isinstance(x, np.ndarray) and array_api_compat.is_array_api_obj(x) and array_api_compat.array_namespace(x) is xp:
        return xp.asarray(x, copy=True, **kwargs)
    return xp.asarray(to_host(x), **kwargs)  # to_host made a fresh copy: no aliasing of the caller's array


def to_host(x: Any, *, out: np.ndarray | None = None, stream: Any = None, non_blocking: bool = False) -> np.ndarray:
    """Copy an array of any backend to a NumPy host array.

    Parameters
    ----------
    x : array
        Source array.
    out : numpy.ndarray, optional
        Host buffer to write into (e.g. a pinned buffer); must match shape and dtype.
    stream, non_blocking :
        CuPy asynchronous device-to-host copy on ``stream`` into a pinned ``out``;
        call :func:`synchronize` before reading ``out``.

    Returns
    -------
    numpy.ndarray
    """
    if out is not None and (not isinstance(out, np.ndarray) or out.shape != tuple(x.shape)
                            or out.dtype != (x.dtype if isinstance(x.dtype, np.dtype)  # NumPy, CuPy
                                             else numpy_dtype(array_namespace(x), x.dtype))):
        # np.copyto would broadcast or cast silently; a host buffer must match exactly
        raise ValueError(
            f"out has shape {getattr(out, 'shape', None)} and dtype {getattr(out, 'dtype', type(out).__name__)} "
            f"but the source has shape {tuple(x.shape)} and dtype {x.dtype}; pass a NumPy host buffer of the "
            "same shape and dtype"
        )
    if isinstance(x, np.ndarray):
        if out is None:
            return x.copy()
        np.copyto(out, x)
        return out
    mod = type(x).__module__
    if mod.startswith("cupy"):
        if out is None:
            return x.get(stream=stream)
        x.get(out=out, stream=stream, blocking=not non_blocking)
        return out
    try:
        host = np.asarray(x)
    except RuntimeError:
        # An array on a non-CPU device of a generic namespace (array-api-strict's simulated
        # devices refuse conversion): move it to the namespace's default device first.
        ns = array_api_compat.array_namespace(x)
        host = np.asarray(x.to_device(ns.__array_namespace_info__().default_device()))
    if out is None:
        return np.array(host, copy=True)
    np.copyto(out, host)
    return out


def new_stream(xp: types.ModuleType, non_blocking: bool = True) -> Any:
    """A new CuPy stream for ``xp`` = CuPy, else ``None`` (CPU work is synchronous).

    Parameters
    ----------
    xp : module
        The compute namespace.
    non_blocking : bool
        CuPy: a stream that does not synchronise with the legacy default stream.

    Returns
    -------
    cupy.cuda.Stream or None
    """
    if is_cupy(xp):
        cupy = import_cupy()
        return cupy.cuda.Stream(non_blocking=non_blocking)
    return None


def synchronize(xp: types.ModuleType, stream: Any = None) -> None:
    """Wait until all queued work of ``xp`` (or only ``stream``) is done; no-op on CPU.

    Call it before reading a host buffer filled by an asynchronous copy and
    around wall-clock timings on a GPU.

    Parameters
    ----------
    xp : module
        The compute namespace.
    stream : cupy.cuda.Stream, optional
        Wait for this stream only; default: the current stream and the device.

    Returns
    -------
    None
    """
    if is_cupy(xp):
        cupy = import_cupy()
        if stream is not None:
            stream.synchronize()
        else:
            cupy.cuda.get_current_stream().synchronize()
            cupy.cuda.Device().synchronize()


def pinned_empty(shape: tuple[int, ...], dtype: Any, xp: types.ModuleType) -> np.ndarray:
    """An uninitialised host array, page-locked when ``xp`` is CuPy.

    With CuPy the memory comes from ``cupy.cuda.alloc_pinned_memory`` so that
    host<->device copies can run asynchronously at full bandwidth; on every
    other backend it is ordinary NumPy memory.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype or namespace dtype
    xp : module
        The compute namespace that decides whether pinning is useful.

    Returns
    -------
    numpy.ndarray, shape ``shape``
        Uninitialised host memory.
    """
    dt = numpy_dtype(xp, dtype)
    shape = tuple(int(s) for s in shape)
    if is_cupy(xp):
        cupy = import_cupy()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        mem = cupy.cuda.alloc_pinned_memory(max(nbytes, 1))
        return np.frombuffer(mem, dtype=dt, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)
    return np.empty(shape, dtype=dt)


class BufferPool:
    """Reusable host buffers, pinned when the backend is CuPy.

    ``pool.get(key, shape, dtype)`` returns the same array for the same key
    while shape and dtype stay the same, so an evolution cycle allocates host
    memory only the first time it runs.  ``allocations`` counts real
    allocations (tests use it to prove reuse); ``nbytes`` is the memory held.

    Parameters
    ----------
    xp : module
        Compute namespace; decides pinned (CuPy) versus ordinary host memory.
    """

    def __init__(self, xp: types.ModuleType):
        self.xp = xp
        self._buffers: dict[Any, np.ndarray] = {}
        self.allocations = 0

    def get(self, key: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The host buffer for ``key``, allocated on first use or when shape/dtype change.

        Parameters
        ----------
        key : hashable
            Names the buffer (e.g. ``("population", "fc1.weight")``).
        shape : tuple of int
        dtype : numpy dtype or namespace dtype

        Returns
        -------
        numpy.ndarray, shape ``shape``
            Uninitialised (or holding what was last written to it); pinned with CuPy.
        """
        dt = numpy_dtype(self.xp, dtype)
        shape = tuple(int(s) for s in shape)
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dt:
            buf = pinned_empty(shape, dt, self.xp)
            self._buffers[key] = buf
            self.allocations += 1
        return buf

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool."""
        return sum(b.nbytes for b in self._buffers.values())

    def clear(self) -> None:
        """Release every buffer."""
        self._buffers.clear()

    def __len__(self) -> int:
        return len(self._buffers)


def check_float_arrays(arrays: Any, what: str = "params", *, fix: str = "") -> None:
    """Raise unless ``arrays`` is a dict of float32/float64 arrays of one library, keyed by str.

    Costs a type comparison and two dtype comparisons per entry (no device work).

    Parameters
    ----------
    arrays : dict[str, array]
        Any shapes.
    what : str
        How the dict is called in messages.
    fix : str
        Extra advice for a wrong dtype.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        Not a dict, a key that is not a str, an entry that is not an array, an
        entry of another array library than the first, or an integer, bool or
        complex dtype.
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"{what} must be a dict[str, array]; got {type(arrays).__name__}")
    ref = ref_key = f32 = f64 = None
    for k, v in arrays.items():
        if not isinstance(k, str):
            raise TypeError(f"{what} keys must be str parameter names; got {k!r}")
        if ref is None:
            if not (hasattr(v, "shape") and hasattr(v, "dtype")):
                raise TypeError(f"{what}[{k!r}] is a {type(v).__name__}, not an array; pass float32 or float64 arrays")
            ref, ref_key = v, k
            f32, f64 = _float_dtypes(type(v), v)
        elif type(v) is not type(ref):
            check_same_library(v, ref, f"{what}[{k!r}]", f"{what}[{ref_key!r}]")
        dt = v.dtype
        # identity first: NumPy's native dtypes are singletons, and this runs on every optimiser step
        if dt is not f32 and dt is not f64 and dt != f32 and dt != f64:
            raise TypeError(
                f"{what}[{k!r}] has dtype {v.dtype}; parameters must be float32 or float64"
                + (f"; {fix}" if fix else "; cast them, e.g. xp.astype(p, xp.float32)")
            )


def _float_dtypes(array_type: type, example: Any) -> tuple[Any, Any]:
    """The float32 and float64 dtype objects of an array type (NumPy dtype instances for NumPy)."""
    known = _FLOAT_DTYPES.get(array_type)
    if known is None:
        xp = array_namespace(example)
        known = (np.dtype(np.float32), np.dtype(np.float64)) if is_numpy(xp) else (xp.float32, xp.float64)
        _FLOAT_DTYPES[array_type] = known
    return known


_FLOAT_DTYPES: dict[type, tuple[Any, Any]] = {}


def host_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes, or None where the OS does not say.

    Returns
    -------
    int or None
    """
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def device_memory_bytes(xp: types.ModuleType) -> int | None:
    """Total memory of ``xp``'s current device: the GPU's for CuPy, the host's otherwise.

    Parameters
    ----------
    xp : module
        The compute namespace.

    Returns
    -------
    int or None
        None where it cannot be found out.
    """
    if is_cupy(xp):
        try:
            return int(import_cupy().cuda.Device().mem_info[1])
        except Exception:  # noqa: BLE001 - unknown is not an error
            return None
    return host_memory_bytes()


def check_fits(nbytes: int, limit: int | None, what: str, fix: str) -> None:
    """Refuse an allocation of ``nbytes`` up front when it exceeds ``limit`` bytes.

    Parameters
    ----------
    nbytes : int
        Bytes the caller is about to allocate.
    limit : int or None
        Bytes available (None: unknown, nothing is refused).
    what, fix : str
        What needs the memory, and what the user can change.

    Returns
    -------
    None

    Raises
    ------
    MemoryError
        ``nbytes > limit``; the message states both figures.
    """
    if limit is not None and nbytes > limit:
        raise MemoryError(
            f"{what} needs {nbytes:,} bytes ({nbytes / 2**30:.1f} GiB) but the machine has {limit:,} bytes "
            f"({limit / 2**30:.1f} GiB); {fix}"
        )


# ----------------------------------------------------------------------------
# host memory policy (process-wide, opt-in)
# ----------------------------------------------------------------------------
def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (process-wide, opt-in).

    A training step allocates tens of megabytes of short-lived arrays.  With
    glibc's defaults many of them are fresh pages each time (mmap'ed blocks,
    heap trimming), which cost 2000-3500 page faults per CNN step on the 2-core
    test VM -- about a quarter of the step.  Raising ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` makes freed blocks come back without faults, at the
    price of the process keeping its peak heap size.  (``Serial.loss_and_grad``
    on NumPy already serves its temporaries from a reused per-thread block, so
    this matters for other code.)  No arrays involved.

    Parameters
    ----------
    mmap_threshold, trim_threshold : int
        Bytes for glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``.

    Returns
    -------
    bool
        True when applied; False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    ok = mallopt(m_mmap_threshold, int(mmap_threshold)) == 1
    ok = (mallopt(m_trim_threshold, int(trim_threshold)) == 1) and ok
    return bool(ok)
