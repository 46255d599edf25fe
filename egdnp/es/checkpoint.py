"""Save and resume a whole EGGROLL run: params, optimiser state, generation, seed, noise position.

A checkpoint is one ``.npz`` file written atomically (:func:`egdnp.atomic_write`
via :func:`egdnp.optim.save_state`: a failed save never costs the previous
file).  It holds the :class:`~egdnp.es.strategy.EggrollState` and the
strategy's settings that address or scale the noise (population size, rank,
antithetic sampling, convention, vector treatment, ``noise_reuse``, sigma,
fitness shaping), so that

    N generations  ==  N/2 generations + save + load into a fresh Eggroll + N/2 generations

bit for bit, and loading into a strategy that would draw other noise raises
a ``ValueError`` that names the setting, both values and the file.

>>> strategy.save(path, state)                     # doctest: +SKIP
>>> state = es.Eggroll(**same_settings).load(path)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from .. import _backend
from .. import optim as _optim
from .fitness import shaping_name
from .strategy import Eggroll, EggrollState

__all__ = ["save", "load", "noise_settings"]


class _EggrollCheckpoint(NamedTuple):
    params: dict
    opt_state: Any
    generation: int
    seed: int
    settings: dict


def noise_settings(strategy: Eggroll) -> dict:
    """The settings of ``strategy`` that decide which noise a generation draws and how it is used.

    Parameters
    ----------
    strategy : Eggroll

    Returns
    -------
    dict of str to (int, float, str, bool or None)
        ``pop_size``, ``rank``, ``antithetic``, ``convention``, ``vectors``,
        ``noise_reuse``, ``sigma`` (``"schedule"`` for a callable), ``fitness``
        (a shaping function by its registered name),
        ``group_size``, plus the strategy class, its noise map (a dict as text,
        ``"callable"`` for a function, which cannot be compared) and a
        variant's own settings (``SparseES.k``, ``EggrollBaseline.clip_norm``):
        a checkpoint can only be resumed by a strategy with the same values.

    Raises
    ------
    ValueError
        The strategy shapes fitness with a function that is not registered
        (:func:`egdnp.es.fitness.register_fitness_shaping`): a file could not
        say which shaping resumes the run.
    """
    if not isinstance(strategy, Eggroll):
        raise TypeError(f"strategy must be an es.Eggroll, got {type(strategy).__name__}")
    extra = _extra_settings(strategy)
    return {
        "strategy": extra.pop("strategy"),  # first: the most telling mismatch
        "pop_size": int(strategy.pop_size),
        "rank": int(strategy.rank),
        "antithetic": bool(strategy.antithetic),
        "convention": strategy.convention.name,
        "vectors": strategy.vectors,
        "noise_reuse": strategy.noise_reuse,
        "sigma": "schedule" if callable(strategy.sigma) else float(strategy.sigma),
        "fitness": _fitness_setting(strategy.fitness),
        "group_size": int(strategy.group_size),
        **extra,
    }


# Settings added after the first checkpoints were written: a file without them was
# written by a plain Eggroll without a noise map.
_EXTRA_DEFAULTS = {"strategy": "Eggroll", "noise_map": None}


def _fitness_setting(fitness) -> str:
    """The shaping as a checkpoint records it: its name (a registered function's name, too)."""
    if not callable(fitness):
        return fitness  # a name (or a variant's own label such as "baseline_zscore")
    name = shaping_name(fitness)
    if name is None:
        label = getattr(fitness, "__name__", repr(fitness))
        raise ValueError(
            f"fitness={label} is a shaping function without a registered name, and a checkpoint records the shaping "
            f"by name; register it first, es.register_fitness_shaping('{label}', fn): a run saved with it then resumes "
            f"with fitness='{label}' or with the function itself")
    return name


def _extra_settings(strategy) -> dict:
    noise_map = getattr(strategy, "noise_map", None)
    if isinstance(noise_map, dict):
        noise_map = repr(sorted(noise_map.items()))
    elif noise_map is not None:
        noise_map = "callable"
    extra = {"strategy": type(strategy).__name__, "noise_map": noise_map}
    for name in ("k", "clip_norm"):  # SparseES, EggrollBaseline
        if hasattr(strategy, name):
            extra[name] = getattr(strategy, name)
    return extra


def save(path: Any, strategy: Eggroll, state: EggrollState) -> None:
    """Write ``state`` and ``strategy``'s noise settings to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str or path-like
        The file; its folder must exist.  An existing file is replaced only
        when the new one is completely written.
    strategy : Eggroll
        The strategy that produced ``state``.
    state : EggrollState
        ``params`` (dict of arrays, any shapes), the optimiser state, ``generation``, ``seed``.

    Returns
    -------
    None
    """
    if not isinstance(state, EggrollState):
        raise TypeError(f"state must be an es.EggrollState (from Eggroll.init/tell), got {type(state).__name__}")
    ck = _EggrollCheckpoint(dict(state.params), state.opt_state, int(state.generation), int(state.seed),
                            noise_settings(strategy))
    _optim.save_state(path, ck)


def load(path: Any, strategy: Eggroll, *, like: dict | None = None, xp: Any = None, device: Any = None) -> EggrollState:
    """Read a checkpoint written by :func:`save` and check that ``strategy`` can resume it.

    Parameters
    ----------
    path : str or path-like
    strategy : Eggroll
        Must have the checkpoint's noise settings (:func:`noise_settings`)
        and an optimiser whose state has the saved type.
    like : dict of str to array, optional
        Parameters of the model being resumed (e.g. ``model.init(seed=0)``):
        the checkpoint's keys, shapes and dtypes must match them.  Their
        namespace and device are also where the arrays are put.
    xp : namespace or {"numpy", "cupy"}, optional
        Where to put the arrays (default: the namespace of ``like``, else NumPy).
    device : optional
        Device of ``xp``.

    Returns
    -------
    EggrollState
        Resumes bit for bit: the next ``ask`` draws generation ``state.generation``.

    Raises
    ------
    ValueError
        The file is not an EGGROLL checkpoint, a noise setting differs (the
        message names it, both values and the file), the parameters do not
        match ``like``, or the optimiser state has another type.
    """
    if not isinstance(strategy, Eggroll):
        raise TypeError(f"strategy must be an es.Eggroll, got {type(strategy).__name__}")
    if like is not None:
        if not isinstance(like, dict) or not like:
            raise TypeError(f"like must be a non-empty params dict (e.g. model.init(seed=0)), got {type(like).__name__}")
        first = next(iter(like.values()))
        if xp is None:
            xp = _backend.array_namespace(first)
            device = _backend.device_of(first) if device is None and not (
                _backend.is_numpy(xp) or _backend.is_cupy(xp)) else device
    xp = "numpy" if xp is None else xp
    where = os.fspath(path)
    try:
        ck = _optim.load_state(path, _EggrollCheckpoint, xp=xp, device=device)
    except ValueError as exc:
        raise ValueError(f"{where} is not an EGGROLL checkpoint written by es.save / Eggroll.save: {exc}") from None
    want = noise_settings(strategy)
    for key, value in want.items():
        saved = ck.settings.get(key, _EXTRA_DEFAULTS.get(key, "<missing>"))
        if saved != value:
            raise ValueError(
                f"{where} was saved by a strategy with {key}={saved!r}, but this Eggroll has {key}={value!r}; "
                f"resuming would draw or weigh different noise. Build the Eggroll with {key}={saved!r}"
            )
    if like is not None:
        if list(ck.params) != list(like):
            raise ValueError(f"{where} holds parameters {list(ck.params)}, but like= has {list(like)}; "
                             "load it into the model it was saved from")
        for k, v in like.items():
            got = ck.params[k]
            if tuple(got.shape) != tuple(v.shape) or str(got.dtype) != str(v.dtype):
                raise ValueError(f"{where}: parameter {k!r} is {tuple(got.shape)} {got.dtype} in the file but "
                                 f"{tuple(v.shape)} {v.dtype} in like=; load it into the model it was saved from")
    expected = type(strategy.optimizer.init(ck.params))
    if type(ck.opt_state) is not expected:
        raise ValueError(f"{where} holds a {type(ck.opt_state).__name__} optimiser state, but this Eggroll's "
                         f"optimiser makes a {expected.__name__}; build it with the optimiser of the saved run")
    return EggrollState(params=dict(ck.params), opt_state=ck.opt_state, generation=int(ck.generation),
                        seed=int(ck.seed))
