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


def check_params_grads(grads: dict, params: dict) -> None:
    """Keys of ``grads`` are keys of ``params`` and shapes agree; ``None`` grads are allowed.

    A parameter whose gradient is missing or ``None`` is skipped by the
    optimisers (PyTorch skips parameters with ``p.grad is None``).
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict[str, array]; got {type(params).__name__}")
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict[str, array] keyed like params; got {type(grads).__name__}")
    extra = [k for k in grads if k not in params]
    if extra:
        raise ValueError(
            f"grads has keys {extra!r} that are not in params (keys {list(params)!r}); "
            "pass gradients keyed by the parameter names"
        )
    for k, g in grads.items():
        if g is None:
            continue
        if tuple(g.shape) != tuple(params[k].shape):
            raise ValueError(
                f"grads[{k!r}] has shape {tuple(g.shape)} but params[{k!r}] has shape "
                f"{tuple(params[k].shape)}; pass a gradient of the parameter's shape"
            )


def check_state_keys(state_dict: dict | None, params: dict, what: str) -> None:
    """The state's buffers are keyed like ``params``."""
    if state_dict is None:
        return
    if set(state_dict) != set(params):
        raise ValueError(
            f"{what} has keys {sorted(state_dict)!r} but params has keys {sorted(params)!r}; "
            "initialise the optimiser state with init(params) for these params"
        )


# ----------------------------------------------------------------------------
# saving and loading states
# ----------------------------------------------------------------------------
_SEP = "\x1f"  # unit separator: cannot appear in sensible parameter names


# NamedTuple types that may sit INSIDE a saved state (an EGGROLL state's ``opt_state``),
# rebuilt by name on load; the optimisers' own states are known without registering.
_STATE_TYPES: dict[str, type] = {}


def register_state_type(cls: type) -> type:
    """Let :func:`load_state` rebuild ``cls`` when it is nested inside a saved state.

    A state field that is itself a NamedTuple (an EGGROLL state's optimiser
    state, say) is saved with its type's name and fields; on loading, the name
    is looked up among the registered types.  ``SGDState``, ``AdamState`` and
    ``EGDState`` are always known.

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
    if "SGDState" not in _STATE_TYPES:  # the optimisers' own states, imported on first use
        from .adam import AdamState
        from .egd import EGDState
        from .sgd import SGDState

        for cls in (SGDState, AdamState, EGDState):
            _STATE_TYPES.setdefault(cls.__name__, cls)
    cls = _STATE_TYPES.get(name)
    if cls is None:
        raise ValueError(
            f"state field {where!r} was saved as a {name}, which is not a known state type "
            f"(known: {sorted(_STATE_TYPES)}); call egdnp.optim.register_state_type({name}) before loading"
        )
    if list(cls._fields) != list(fields):
        raise ValueError(
            f"state field {where!r} was saved as a {name} with fields {list(fields)}, but {name} now has fields "
            f"{list(cls._fields)}; the file was written by another version"
        )
    return cls


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
    import numpy as np  # host-side file I/O

    xp = _backend.get_namespace(xp)
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["__meta__"]).decode("utf-8"))
        names = meta["__arrays__"]
        arrays = {name: np.array(data[f"a{i}"]) for i, name in enumerate(names)}
    if meta["__type__"] != state_type.__name__ or list(meta["__fields__"]) != list(state_type._fields):
        raise ValueError(
            f"{path!s} holds a {meta['__type__']} with fields {meta['__fields__']}, not a "
            f"{state_type.__name__}; load it with the matching state type"
        )
    values = {f: _unflatten(f, meta, arrays, xp, device) for f in state_type._fields}
    return state_type(**values)
