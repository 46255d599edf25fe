"""Shared plumbing of all optimisers (SGD, Adam, EGD): the (init, update) pair, argument checks, state files.

An optimiser is an :class:`Optimizer` NamedTuple of two pure functions (the
optax shape)::

    state = opt.init(params)
    params, state = opt.update(grads, state, params)

``params`` and ``grads`` are ``dict[str, array]`` with the same keys; states
are small NamedTuples of Python scalars and ``dict[str, array]`` that save to
one ``.npz`` file with :func:`save_state` and load back bit for bit with
:func:`load_state`.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Callable, NamedTuple

from .. import _backend
from .._files import atomic_write

__all__ = [
    "Optimizer",
    "check_params_grads",
    "learning_rate_at",
    "save_state",
    "load_state",
    "register_state_type",
]


class Optimizer(NamedTuple):
    """A pair of pure functions.

    Attributes
    ----------
    init : callable(params) -> state
    update : callable(grads, state, params) -> (params, state)
        Returns new dicts; never mutates ``grads``, ``state`` or ``params``.
    """

    init: Callable[..., Any]
    update: Callable[..., Any]


def check_float(name: str, value: Any, *, low: float | None = None, low_inclusive: bool = True,
                high: float | None = None, high_inclusive: bool = True, fix: str = "") -> float:
    """A finite Python float in the given range, else ValueError/TypeError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a real number{'; ' + fix if fix else ''}")
    value = float(value)
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or (value < low if low_inclusive else value <= low)
    if high is not None:
        bad = bad or (value > high if high_inclusive else value >= high)
    if bad:
        lo = "" if low is None else ("[" if low_inclusive else "(") + f"{low}"
        hi = "" if high is None else f"{high}" + ("]" if high_inclusive else ")")
        rng = f"{lo or '(-inf'}, {hi or 'inf)'}"
        raise ValueError(f"Invalid {name}={value!r}: must lie in {rng}{'; ' + fix if fix else ''}")
    return value


def check_lr(lr: Any) -> Any:
    """``lr`` is a positive float or a callable ``step -> float``."""
    if callable(lr):
        return lr
    return check_float("lr", lr, low=0.0, low_inclusive=False,
                       fix="pass a positive learning rate or a schedule callable(step) -> float")


def learning_rate_at(lr: Any, step: int) -> float:
    """The learning rate of update number ``step`` (0-based) as a Python float."""
    if not callable(lr):
        return lr
    value = lr(step)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"lr schedule returned {value!r} at step {step}; it must return a float") from None
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"lr schedule returned {value!r} at step {step}; it must return a finite float >= 0")
    return value


def check_params(params: Any) -> None:
    """``params`` is a dict of float32/float64 arrays of one library (what every optimiser's init needs)."""
    _backend.check_float_arrays(params, "params")


def check_params_grads(grads: dict, params: dict) -> None:
    """Keys of ``grads`` are keys of ``params``; shapes, dtypes and array libraries agree; ``None`` grads are allowed.

    A parameter whose gradient is missing or ``None`` is skipped by the
    optimisers (PyTorch skips parameters with ``p.grad is None``).  A gradient
    of another dtype (integer, complex, float64 for float32 params) is refused:
    the update would silently change the parameter's dtype.
    """
    _backend.check_float_arrays(params, "params")
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict[str, array] keyed like params; got {type(grads).__name__}")
    # one pass with the cheapest tests first: this runs on every optimiser step
    for k, g in grads.items():
        p = params.get(k)
        if p is None:
            extra = [k for k in grads if k not in params]
            raise ValueError(
                f"grads has keys {extra!r} that are not in params (keys {list(params)!r}); "
                "pass gradients keyed by the parameter names"
            )
        if g is None:
            continue
        if type(g) is not type(p):
            _backend.check_same_library(g, p, f"grads[{k!r}]", f"params[{k!r}]")
        if g.shape != p.shape:
            raise ValueError(
                f"grads[{k!r}] has shape {tuple(g.shape)} but params[{k!r}] has shape "
                f"{tuple(p.shape)}; pass a gradient of the parameter's shape"
            )
        if g.dtype is not p.dtype and g.dtype != p.dtype:
            raise TypeError(
                f"grads[{k!r}] has dtype {g.dtype} but params[{k!r}] is {p.dtype}; pass gradients of the "
                "parameter's dtype (an integer, complex or wider gradient would change the parameter's dtype)"
            )


def check_state_keys(state_dict: dict | None, params: dict, what: str) -> None:
    """The state's buffers are keyed like ``params`` and have their shapes, dtypes and array library."""
    if state_dict is None:
        return
    if not isinstance(state_dict, dict):
        raise TypeError(f"{what} must be a dict[str, array] keyed like params; got {type(state_dict).__name__}")
    if state_dict.keys() != params.keys():
        raise ValueError(
            f"{what} has keys {sorted(state_dict)!r} but params has keys {sorted(params)!r}; "
            "initialise the optimiser state with init(params) for these params"
        )
    for k, b in state_dict.items():
        p = params[k]
        if type(b) is not type(p):
            _backend.check_same_library(b, p, f"{what}[{k!r}]", f"params[{k!r}]")
        if b.shape != p.shape or (b.dtype is not p.dtype and b.dtype != p.dtype):
            raise ValueError(
                f"{what}[{k!r}] has shape {tuple(b.shape)} and dtype {b.dtype} but params[{k!r}] has shape "
                f"{tuple(p.shape)} and dtype {p.dtype}; this state belongs to other params: initialise it "
                "with init(params) (or load the checkpoint of this model)"
            )


def check_state_type(state: Any, state_type: type, what: str = "state") -> None:
    """``state`` is a ``state_type`` (what this optimiser's ``init`` returned)."""
    if not isinstance(state, state_type):
        raise TypeError(
            f"{what} has type {type(state).__name__}, not {state_type.__name__}; pass the state returned by this "
            "optimiser's init (or update)"
        )


# ----------------------------------------------------------------------------
# saving and loading states
# ----------------------------------------------------------------------------
_SEP = "\x1f"  # unit separator: cannot appear in sensible parameter names


# NamedTuple types that may sit INSIDE a saved state (an EGGROLL state's ``opt_state``),
# rebuilt by name on load; the optimisers' own modules register their states when imported.
_STATE_TYPES: dict[str, type] = {}


def register_state_type(cls: type) -> type:
    """Let :func:`load_state` rebuild ``cls`` when it is nested inside a saved state.

    A state field that is itself a NamedTuple (an EGGROLL state's optimiser
    state, say) is saved with its type's name and fields; on loading, the name
    is looked up among the registered types.  ``SGDState``, ``AdamState`` and
    ``EGDState`` are registered by their modules (always, once
    :mod:`egdnp.optim` is imported).

    Parameters
    ----------
    cls : type
        A NamedTuple class.

    Returns
    -------
    type
        ``cls`` itself (so this works as a class decorator).

    Raises
    ------
    TypeError
        ``cls`` is not a NamedTuple class.
    ValueError
        Another class of the same name is already registered.
    """
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise TypeError(f"cls={cls!r} must be a NamedTuple class")
    known = _STATE_TYPES.get(cls.__name__)
    if known is not None and known is not cls:
        raise ValueError(f"a state type named {cls.__name__!r} is already registered ({known!r}); rename the class")
    _STATE_TYPES[cls.__name__] = cls
    return cls


def _state_type(name: str, fields: list, where: str) -> type:
    cls = _STATE_TYPES.get(name)
    if cls is None:
        raise ValueError(
            f"state field {where!r} was saved as a {name}, which is not a known state type "
            f"(known: {sorted(_STATE_TYPES)}); call egdnp.optim.register_state_type({name}) before loading"
        )
    if not _fields_fit(fields, cls):
        raise ValueError(
            f"state field {where!r} was saved as a {name} with fields {list(fields)}, but {name} now has fields "
            f"{list(cls._fields)}; the file was written by another version"
        )
    return cls


def _fields_fit(saved: list, cls: type) -> bool:
    """A file's fields load into ``cls``: its fields, or their first ones when the rest have defaults.

    So a state type may grow a field with a default and still read the files
    written before (an EGD state's ``recombine``).
    """
    saved, fields = list(saved), list(cls._fields)
    return saved == fields[:len(saved)] and all(f in cls._field_defaults for f in fields[len(saved):])


def _flatten(prefix: str, value: Any, arrays: dict, meta: dict) -> None:
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        # a nested NamedTuple (e.g. the optimiser state inside an EGGROLL state): keep its type
        meta[prefix] = {"kind": "namedtuple", "type": type(value).__name__, "fields": list(value._fields)}
        for field in value._fields:
            _flatten(prefix + _SEP + field, getattr(value, field), arrays, meta)
        return
    if isinstance(value, dict):
        if all(isinstance(v, (int, float, str, bool)) or v is None for v in value.values()) and value and not any(
            hasattr(v, "shape") for v in value.values()
        ):
            meta[prefix] = {"kind": "scalars", "value": value}
            return
        meta[prefix] = {"kind": "dict", "keys": list(value)}
        for k, v in value.items():
            _flatten(prefix + _SEP + k, v, arrays, meta)
        return
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        arrays[prefix] = _backend.to_host(value)
        meta[prefix] = {"kind": "array"}
        return
    if value is None or isinstance(value, (bool, int, float, str)):
        meta[prefix] = {"kind": "scalar", "value": value}
        return
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str)) or v is None for v in value):
        meta[prefix] = {"kind": "list", "value": list(value), "tuple": isinstance(value, tuple)}
        return
    raise TypeError(f"state field {prefix.replace(_SEP, '.')!r} has type {type(value).__name__}, which cannot be saved")


def save_state(path: Any, state: Any) -> None:
    """Write an optimiser state (a NamedTuple of scalars and dicts of arrays) to one ``.npz`` file.

    Arrays are copied to the host; Python floats are stored as JSON (exact
    round trip of float64 via ``repr``), so :func:`load_state` gives back a
    state that resumes bit for bit.

    Parameters
    ----------
    path : str or path-like
    state : NamedTuple
        ``SGDState``, ``AdamState``, ``EGDState``, ...

    Returns
    -------
    None
    """
    if not hasattr(state, "_fields"):
        raise TypeError(f"state must be an optimiser state NamedTuple; got {type(state).__name__}")
    import numpy as np  # host-side file I/O

    arrays: dict = {}
    meta: dict = {"__type__": type(state).__name__, "__fields__": list(state._fields)}
    for field in state._fields:
        _flatten(field, getattr(state, field), arrays, meta)
    payload = {f"a{i}": arr for i, arr in enumerate(arrays.values())}
    meta["__arrays__"] = list(arrays)
    payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    with atomic_write(path) as fh:  # a failed save never costs the previous file
        np.savez(fh, **payload)


def _unflatten(prefix: str, meta: dict, arrays: dict, xp, device) -> Any:
    entry = meta[prefix]
    kind = entry["kind"]
    if kind == "array":
        host = arrays[prefix]
        return _backend.to_device(host, xp, device=device)
    if kind in ("scalar", "scalars"):
        return entry["value"]
    if kind == "list":
        return tuple(entry["value"]) if entry["tuple"] else list(entry["value"])
    if kind == "namedtuple":
        cls = _state_type(entry["type"], entry["fields"], prefix.replace(_SEP, "."))
        return cls(**{f: _unflatten(prefix + _SEP + f, meta, arrays, xp, device) for f in entry["fields"]})
    return {k: _unflatten(prefix + _SEP + k, meta, arrays, xp, device) for k in entry["keys"]}


def load_state(path: Any, state_type: type, *, xp: Any = "numpy", device: Any = None) -> Any:
    """Read a state written by :func:`save_state`.

    Parameters
    ----------
    path : str or path-like
    state_type : type
        The NamedTuple class to rebuild (e.g. ``SGDState``); must match the file.
    xp : namespace or {"numpy", "cupy"}
        Where to put the arrays.
    device : optional
        Device of ``xp``.
    """
    xp = _backend.get_namespace(xp)
    meta, arrays = read_state_file(path)
    if meta["__type__"] != state_type.__name__ or not _fields_fit(meta["__fields__"], state_type):
        raise ValueError(
            f"{path!s} holds a {meta['__type__']} with fields {meta['__fields__']}, not a "
            f"{state_type.__name__}; load it with the matching state type"
        )
    try:
        # fields added since the file was written (all with defaults) keep their defaults
        values = {f: _unflatten(f, meta, arrays, xp, device) for f in meta["__fields__"]}
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{path!s} is not a consistent egdnp state file (its index names an entry it does not hold: "
            f"{type(exc).__name__}: {exc}); pass a file written by save_state"
        ) from None
    return state_type(**values)


class _NotAStateFile(ValueError):
    """A readable file that is not egdnp's (its message is final; re-raised as a plain ValueError)."""


def read_state_file(path: Any) -> tuple[dict, dict]:
    """The JSON index and the host arrays of a file written by :func:`save_state`.

    Every way a file can fail to be one (missing, empty, truncated, another
    format, a ``.npz`` of other arrays) ends in one error naming the file.
    """
    import zipfile

    import numpy as np  # host-side file I/O

    what = "an egdnp state file written by save_state"
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path!s} does not exist; pass the path of {what}") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{path!s} cannot be read as {what} ({type(exc).__name__}: {exc}): it is empty, truncated or of "
            "another format; save the state again"
        ) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!s} holds a single .npy array, not {what}; pass the .npz file save_state wrote")
    try:
        with loaded as data:
            if "__meta__" not in data.files:
                raise _NotAStateFile(
                    f"{path!s} is a .npz file without egdnp's '__meta__' index (it holds {sorted(data.files)[:6]}); "
                    f"pass {what}"
                )
            meta = json.loads(bytes(data["__meta__"]).decode("utf-8"))
            if not isinstance(meta, dict) or not {"__type__", "__fields__", "__arrays__"} <= meta.keys():
                raise _NotAStateFile(f"{path!s} has a '__meta__' entry that is not egdnp's state index; pass {what}")
            arrays = {name: np.array(data[f"a{i}"]) for i, name in enumerate(meta["__arrays__"])}
    except _NotAStateFile as exc:
        raise ValueError(str(exc)) from None
    except ValueError as exc:
        raise ValueError(f"{path!s} cannot be read as {what} ({exc}); save the state again") from None
    except (OSError, EOFError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path!s} cannot be read as {what} ({type(exc).__name__}: {exc}): it is truncated or damaged; "
            "save the state again"
        ) from None
    return meta, arrays
