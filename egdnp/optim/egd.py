"""Evolutionary Gradient Descent (EGD): SGD with periodic evolution cycles.

The specification is the EvoSGD optimiser (``seeds/egd_evosgd_spec.md``);
this is a framework-free version over a params dict, with explicit state.

Contract
--------
::

    from egdnp.optim.egd import egd
    opt = egd(lr=1e-2, momentum=0.9, nesterov=True, evo_interval=100, pop_size=8, seed=0)
    state = opt.init(params)                                   # EGDState
    params, state, report = opt.update(grads, state, params, closure=closure)

``update`` is pure: it returns a new params dict and a new state and never
modifies ``grads``, ``state`` or ``params``.  ``report`` is ``None`` on plain
SGD steps and an :class:`EvolutionReport` on evolution steps; the spec's
return value, *the loss after recombination*, is ``report.loss``.  The
torch-style wrapper :class:`EGD` holds params and state and its
``step(grads, closure)`` returns exactly the spec's value (a float or None).

Step order of one ``update`` (the spec's)
-----------------------------------------
1. SGD with the given gradients: ``d_p = g + weight_decay * p``; momentum
   buffer ``buf = momentum * buf + d_p``; Nesterov ``d = d_p + momentum * buf``;
   ``p = p - lr(step) * d`` (``torch.optim.SGD``, dampening 0).  A ``None``
   gradient (or ``grads=None``) skips that parameter.
2. ``step += 1``.
3. ``sigma = sigma_schedule(step, sigma)`` when a schedule is given.
4. When ``evo_interval > 0`` and ``step % evo_interval == 0``: the evolution
   cycle on the new parameters (a closure is required):

   a. snapshot the base and score it (member 0); a non-finite base loss
      raises RuntimeError naming the cycle, and nothing is changed;
   b. score ``pop_size - 1`` mutants ``base + sigma * max(rms(base), 1e-8) * z``
      one at a time, keeping the ``k = ceil(elite_frac * pop_size)`` best
      (streaming: at most k candidates are ever held); the base starts as
      an elite; a candidate with a non-finite loss ranks last and is never
      kept;
   c. (``rescore_elites``) re-score the elites and the base on a fresh batch
      (``phase="rescore"``) and use those losses from here on;
   d. recombine the elites: mean, or weights ``softmax(-loss / temperature)``;
   e. load the recombined parameters, zero the momentum buffers
      (``reset_momentum_on_evo``), ``sigma *= sigma_decay``;
   f. score the recombined parameters (member -1): ``report.loss``; with
      ``accept="if_better"`` the base is kept when the recombined score is
      worse than the base's (then momentum is not reset).

The closure
-----------
``closure(params) -> loss`` is forward-only (no gradients), returns a float
or a 0-d array, and must not keep references to ``params`` (candidate
buffers are reused).  If its signature accepts them (or ``**kwargs``) it is
also given the keywords ``member`` (0 base, 1..pop_size-1 mutants, -1 the
recombined parameters), ``cycle`` (0-based cycle number) and ``phase``
(``"score"`` for the selection batch, ``"rescore"`` for the fresh batch of
``rescore_elites``).  Score every member of a cycle on the same batch by
choosing the batch from ``(cycle, phase)`` only.

One cycle makes ``pop_size + 1`` closure calls (plus ``k + 1`` at most
with ``rescore_elites``).

Population scoring (egdnp's extension, beyond the spec)
-------------------------------------------------------
Instead of the closure, ``update``/``evolve`` accept ``scorer=``, a
population scorer ``scorer(mutations) -> losses`` that scores every member
of a cycle at once from the base parameters and the cycle's noise addresses
(:class:`Mutations`; :func:`egdnp.es.egd_scorer.model_scorer` builds one for
``egdnp.nn`` models, which never forms a low-rank candidate).  A cycle then
makes 2 scorer calls (3 with ``rescore_elites``: all members, the elites
again, the recombined parameters); selection, recombination and the report
are the closure path's.

Noise
-----
Mutation ``z`` of member ``m`` for parameter ``name`` in cycle ``c`` is
``egdnp.rng.normal(shape, seed=seed, stream=name, member=m, generation=c)``
(or its low-rank form, see :mod:`egdnp.optim._egd_mutation`): the same array
on every backend, a run is reproducible bit for bit on one backend, and
``save``/``load`` of the state resumes bit-identically.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple

from .. import _backend
from .. import rng as _rng
from ._egd_base import check_float, check_lr, check_params_grads, check_state_keys, check_state_type, learning_rate_at
from ._egd_base import load_state as _load_state
from ._egd_base import save_state as _save_state
from ._egd_cycle import Workspace, check_population_fits, run_cycle
from ._egd_population import Mutations
from .sgd import check_sgd_hyper, sgd_direction

__all__ = ["EGDConfig", "EGDState", "EvolutionReport", "EGDOptimizer", "Mutations", "egd", "EGD", "save", "load"]

MAX_SEED = 2**64 - 1
RECOMBINE = ("mean", "softmax")
STORAGE = ("array", "seed")
MUTATION = ("full", "lowrank")
ACCEPT = ("always", "if_better")


@dataclasses.dataclass(frozen=True)
class EGDConfig:
    """Static hyper-parameters of EGD (validated by :func:`egd`); see :func:`egd` for their meaning.

    Attributes
    ----------
    lr, momentum, nesterov, weight_decay :
        The SGD step.
    evo_interval, pop_size, elite_frac, sigma, sigma_decay, sigma_schedule :
        When evolution cycles run, how many members, how many elites, the mutation scale.
    recombine, temperature, accept, rescore_elites, reset_momentum_on_evo :
        What a cycle does with its elites.
    population_storage, offload_population_to_cpu, mutation, rank, mutate_filter :
        How mutants are stored and drawn.
    seed, loss_reduce, callback :
        Noise seed, closure-result reduction, per-cycle report hook.

    Every field is the keyword argument of :func:`egd` of the same name, with its
    default and meaning.
    """

    lr: Any = 1e-2
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    evo_interval: int = 200
    pop_size: int = 8
    elite_frac: float = 0.25
    sigma: float = 0.02
    sigma_decay: float = 0.98
    recombine: str = "mean"
    reset_momentum_on_evo: bool = True
    loss_reduce: Callable | None = None
    seed: int = 0
    sigma_schedule: Callable | None = None
    offload_population_to_cpu: bool = True
    mutate_filter: Callable | None = None
    population_storage: str = "array"
    mutation: str = "full"
    rank: int = 1
    accept: str = "always"
    temperature: float = 1.0
    rescore_elites: bool = False
    callback: Callable | None = None

    @property
    def n_elites(self) -> int:
        """``k = max(1, ceil(elite_frac * pop_size))``."""
        return max(1, int(math.ceil(self.elite_frac * self.pop_size)))


class EGDState(NamedTuple):
    """Everything a run needs to resume bit for bit.

    Attributes
    ----------
    step : int
        SGD steps done (the spec's ``_t``); the lr schedule sees ``step``
        before it is incremented.
    cycle : int
        Evolution cycles done; the mutations of the next cycle use
        ``generation=cycle``.
    sigma : float
        Current relative mutation scale.
    seed : int
        Noise seed; ``(seed, cycle)`` is the whole rng position.
    momentum : dict[str, array] or None
        Momentum buffers keyed like params (``None`` when momentum is 0).
    """

    step: int
    cycle: int
    sigma: float
    seed: int
    momentum: dict | None


@dataclasses.dataclass(frozen=True)
class EvolutionReport:
    """What one evolution cycle did (returned by ``update`` and passed to ``callback``).

    Attributes
    ----------
    cycle, step : int
        Cycle number (0-based) and the SGD step count that triggered it.
    base_loss : float
        Loss of the parameters after the SGD step (member 0).
    member_losses : tuple of float, length pop_size
        Loss of every member (index = member; 0 is the base).  Non-finite
        values are reported as returned.
    elite_indices : tuple of int
        Members recombined, best first.
    elite_losses, elite_weights : tuple of float
        Their losses (re-scored ones with ``rescore_elites``) and weights.
    rescore_losses : dict[int, float] or None
        Losses on the fresh batch (``rescore_elites``), member -> loss.
    recombined_loss : float
        Loss of the recombined parameters (member -1).
    loss : float
        Loss of the parameters the update returns: ``recombined_loss``, or
        the base's when ``accept="if_better"`` rejected the recombination.
        This is the spec's return value.
    accepted : bool
    sigma : float
        Sigma the mutations used (before the decay).
    scales : dict[str, float]
        Absolute noise std per mutated parameter, ``sigma * max(rms, 1e-8)``.
    mutated : tuple of str
    bytes_to_device, bytes_to_host, bytes_moved : int
        Parameter bytes copied host->device, device->host, and their sum.
        0 in ``population_storage="seed"`` mode and on NumPy, where host and
        device memory are the same.
    closure_calls : int
        Closure calls, or population scorer calls (``scored_by="population"``).
    closure_seconds : float
        Wall time spent in the closure or the scorer (and ``loss_reduce``).
    seconds : float
        Wall time of the whole cycle; ``seconds / closure_seconds - 1`` is
        the overhead of mutation, selection and recombination.
    population_storage : str
    host_buffer_bytes : int
        Host (pinned with CuPy) memory held by the population buffers.
    scored_by : {"closure", "population"}
        Whether the members were scored one at a time by the closure or all
        at once by a population scorer.
    """

    cycle: int
    step: int
    base_loss: float
    member_losses: tuple
    elite_indices: tuple
    elite_losses: tuple
    elite_weights: tuple
    rescore_losses: dict | None
    recombined_loss: float
    loss: float
    accepted: bool
    sigma: float
    scales: dict
    mutated: tuple
    bytes_to_device: int
    bytes_to_host: int
    bytes_moved: int
    closure_calls: int
    closure_seconds: float
    seconds: float
    population_storage: str
    host_buffer_bytes: int
    scored_by: str = "closure"

    @property
    def overhead(self) -> float:
        """``seconds / closure_seconds``: 1.0 means the cycle cost nothing beyond its closure calls."""
        return self.seconds / self.closure_seconds if self.closure_seconds > 0 else math.inf


class EGDOptimizer(NamedTuple):
    """EGD as pure functions plus its static config and scratch workspace.

    Attributes
    ----------
    init : callable(params) -> EGDState
    update : callable(grads, state, params, closure=None, *, scorer=None) -> (params, state, EvolutionReport | None)
    evolve : callable(state, params, closure=None, *, scorer=None) -> (params, state, EvolutionReport)
        Run one evolution cycle now (no SGD step, ``step`` unchanged).
    config : EGDConfig
    workspace : Workspace
        Reused host/device buffers (scratch, not state).
    """

    init: Callable
    update: Callable
    evolve: Callable
    config: EGDConfig
    workspace: Workspace


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------
def _check_int(name, value, low=None, fix=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int{'; ' + fix if fix else ''}")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"Invalid {name}={value}: must be >= {low}{'; ' + fix if fix else ''}")
    return value


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"Invalid {name}={value!r}: use one of {choices}")
    return value


def _check_callable(name, value):
    if value is not None and not callable(value):
        raise TypeError(f"{name}={value!r} must be callable or None")
    return value


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be True or False")
    return value


def make_config(**kw) -> EGDConfig:
    """Validate the knobs (the spec's checks and the extensions'); returns an :class:`EGDConfig`."""
    cfg = EGDConfig(**kw)
    lr, momentum, nesterov, weight_decay = check_sgd_hyper(cfg.lr, cfg.momentum, cfg.nesterov, cfg.weight_decay)
    evo_interval = _check_int("evo_interval", cfg.evo_interval, fix="0 or less disables evolution")
    pop_size = _check_int("pop_size", cfg.pop_size)
    if pop_size < 2:
        raise ValueError(f"Invalid pop_size={pop_size}: pop_size must be >= 2 (the current params count as one member)")
    if pop_size > _rng.MAX_POP_SIZE:
        raise ValueError(
            f"Invalid pop_size={pop_size}: member ids are 32-bit words of the noise address; "
            f"pass pop_size <= {_rng.MAX_POP_SIZE} (2**32 - 1)"
        )
    elite_frac = check_float("elite_frac", cfg.elite_frac, low=0.0, low_inclusive=False, high=0.5,
                             fix="elite_frac must be in (0, 0.5]")
    sigma = check_float("sigma", cfg.sigma, low=0.0, low_inclusive=False, fix="sigma must be > 0")
    sigma_decay = check_float("sigma_decay", cfg.sigma_decay, low=0.0, low_inclusive=False,
                              fix="sigma_decay must be > 0 (1.0 keeps sigma constant)")
    recombine = _check_choice("recombine", cfg.recombine, RECOMBINE)
    _check_bool("reset_momentum_on_evo", cfg.reset_momentum_on_evo)
    _check_callable("loss_reduce", cfg.loss_reduce)
    seed = _check_int("seed", cfg.seed, low=0)
    if seed > MAX_SEED:
        raise ValueError(f"Invalid seed={seed}: must be in [0, 2**64 - 1]")
    _check_callable("sigma_schedule", cfg.sigma_schedule)
    _check_bool("offload_population_to_cpu", cfg.offload_population_to_cpu)
    _check_callable("mutate_filter", cfg.mutate_filter)
    _check_choice("population_storage", cfg.population_storage, STORAGE)
    _check_choice("mutation", cfg.mutation, MUTATION)
    rank = _check_int("rank", cfg.rank, low=1)
    _check_choice("accept", cfg.accept, ACCEPT)
    temperature = check_float("temperature", cfg.temperature, low=0.0, low_inclusive=False,
                              fix="temperature must be > 0")
    _check_bool("rescore_elites", cfg.rescore_elites)
    _check_callable("callback", cfg.callback)
    return dataclasses.replace(
        cfg, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, evo_interval=evo_interval,
        pop_size=pop_size, elite_frac=elite_frac, sigma=sigma, sigma_decay=sigma_decay, recombine=recombine,
        seed=seed, rank=rank, temperature=temperature,
    )


def _check_params(params: dict) -> None:
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict[str, array]; got {type(params).__name__}")
    _backend.check_float_arrays(params, "params", fix="EGD mutates float32 or float64 parameters")


def _check_state(cfg: EGDConfig, state, params: dict) -> None:
    """The state is an EGDState whose scalars are valid and whose buffers fit ``params``."""
    check_state_type(state, EGDState)
    for name in ("step", "cycle"):
        value = getattr(state, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"state.{name}={value!r} must be an int >= 0; pass the state init or update returned")
    check_float("state.sigma", state.sigma, low=0.0, low_inclusive=False,
                fix="pass the state init or update returned")
    _rng._check_seed(state.seed)
    if (state.momentum is None) != (cfg.momentum == 0.0):
        raise ValueError(
            f"state.momentum is {'None' if state.momentum is None else 'a dict of buffers'} but this optimiser "
            f"has momentum={cfg.momentum}; pass a state of an EGD with the same momentum setting (or init(params))"
        )
    check_state_keys(state.momentum, params, "state.momentum")


def _new_sigma(cfg: EGDConfig, step: int, sigma: float) -> float:
    if cfg.sigma_schedule is None:
        return sigma
    value = cfg.sigma_schedule(step, sigma)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"sigma_schedule returned {value!r} at step {step}; it must return a float") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"sigma_schedule returned sigma={value!r} at step {step}; sigma must stay finite and > 0")
    return value


# ----------------------------------------------------------------------------
# the optimiser
# ----------------------------------------------------------------------------
def egd(lr: Any = 1e-2, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, *,
        evo_interval: int = 200, pop_size: int = 8, elite_frac: float = 0.25, sigma: float = 0.02,
        sigma_decay: float = 0.98, recombine: str = "mean", reset_momentum_on_evo: bool = True,
        loss_reduce: Callable | None = None, seed: int = 0, sigma_schedule: Callable | None = None,
        offload_population_to_cpu: bool = True, mutate_filter: Callable | None = None,
        population_storage: str = "array", mutation: str = "full", rank: int = 1, accept: str = "always",
        temperature: float = 1.0, rescore_elites: bool = False, callback: Callable | None = None) -> EGDOptimizer:
    """Evolutionary Gradient Descent as pure ``init``/``update`` functions.

    Parameters (the spec's, same defaults)
    --------------------------------------
    lr : float > 0 or callable(step) -> float
    momentum : float >= 0
    nesterov : bool
        Requires ``momentum > 0``.
    weight_decay : float >= 0
    evo_interval : int
        Run a cycle after every ``evo_interval``-th step; ``<= 0`` disables evolution.
    pop_size : int >= 2
        Population size; the current parameters count as one member.
    elite_frac : float in (0, 0.5]
        ``k = ceil(elite_frac * pop_size)`` elites are recombined.
    sigma : float > 0
        Mutation std relative to each tensor's RMS (clamped at 1e-8).
    sigma_decay : float > 0
        ``sigma *= sigma_decay`` after every cycle.
    recombine : {"mean", "softmax"}
        Elite mean, or weights ``softmax(-loss / temperature)``.
    reset_momentum_on_evo : bool
        Zero the momentum buffers after an accepted cycle.
    loss_reduce : callable(loss) -> loss, optional
        Applied to every closure result (e.g. an all-reduce mean across processes).
    seed : int in [0, 2**64 - 1]
        Noise seed (the spec's ``rng``).
    sigma_schedule : callable(step, sigma) -> sigma, optional
        Called after every step with the new step count.
    offload_population_to_cpu : bool
        ``population_storage="array"``: keep the base snapshot and elites in
        pinned host buffers (CuPy) and send one candidate at a time to the
        device; ``False`` keeps them on the device.  NumPy: host is device.
    mutate_filter : callable(name, array) -> bool, optional
        Mutate only the parameters for which it returns True.

    Parameters (beyond the spec, off by default)
    --------------------------------------------
    population_storage : {"array", "seed"}
        ``"seed"``: members are noise addresses; candidates and the
        recombination are regenerated on the device; no parameter bytes
        move between host and device.
    mutation : {"full", "lowrank"}
        ``"lowrank"``: matrices and conv filter banks (as their
        ``(C_out, C_in*kh*kw)`` flattening) get ``A Bᵀ / sqrt(rank)``
        mutations (unit RMS in expectation, like full rank); other tensors
        stay full rank.
    rank : int >= 1
    accept : {"always", "if_better"}
        ``"if_better"``: keep the base when the recombined loss is worse.
    temperature : float > 0
        Softmax temperature.
    rescore_elites : bool
        Re-score the elites and the base on a fresh batch (``phase="rescore"``).
    callback : callable(EvolutionReport), optional
        Called after every cycle.

    Returns
    -------
    EGDOptimizer
        ``(init, update, evolve, config, workspace)``.

    Raises
    ------
    ValueError
        A knob out of range (the message names it); TypeError for wrong types.
    """
    cfg = make_config(
        lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, evo_interval=evo_interval,
        pop_size=pop_size, elite_frac=elite_frac, sigma=sigma, sigma_decay=sigma_decay, recombine=recombine,
        reset_momentum_on_evo=reset_momentum_on_evo, loss_reduce=loss_reduce, seed=seed,
        sigma_schedule=sigma_schedule, offload_population_to_cpu=offload_population_to_cpu,
        mutate_filter=mutate_filter, population_storage=population_storage, mutation=mutation, rank=rank,
        accept=accept, temperature=temperature, rescore_elites=rescore_elites, callback=callback,
    )
    workspace = Workspace()

    def init(params: dict) -> EGDState:
        """Fresh state: step 0, cycle 0, sigma = config.sigma, zero momentum buffers."""
        _check_params(params)
        if cfg.evo_interval > 0 and cfg.mutate_filter is None:
            # refused here rather than after the first training steps; with a filter the
            # cycle checks (the filter is called once per cycle by contract)
            check_population_fits(cfg, params, list(params))
        bufs = None
        if cfg.momentum != 0.0:
            bufs = {k: _backend.array_namespace(p).zeros_like(p) for k, p in params.items()}
        return EGDState(0, 0, cfg.sigma, cfg.seed, bufs)

    def _sgd(grads, state, params):
        if grads is None:
            grads = {}
        check_params_grads(grads, params)
        check_state_keys(state.momentum, params, "state.momentum")
        step_lr = learning_rate_at(cfg.lr, state.step)
        new_params = dict(params)
        new_bufs = None if state.momentum is None else dict(state.momentum)
        for k, g in grads.items():
            if g is None:
                continue
            buf = None if new_bufs is None else new_bufs[k]
            d, buf = sgd_direction(g, params[k], buf, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                   weight_decay=cfg.weight_decay)
            new_params[k] = params[k] - step_lr * d
            if new_bufs is not None:
                new_bufs[k] = buf
        return new_params, new_bufs

    def _cycle(state: EGDState, params: dict, momentum, step: int, sigma: float, closure, scorer=None):
        if closure is not None and scorer is not None:
            raise ValueError(
                "pass closure=... (members scored one at a time) or scorer=... (all members at once), not both"
            )
        if scorer is not None and not callable(scorer):
            raise TypeError(f"scorer={scorer!r} must be callable(mutations) -> losses, e.g. "
                            "egdnp.es.egd_scorer.model_scorer(model, x, y)")
        if closure is None and scorer is None:
            raise RuntimeError(
                f"EGD step {step} is an evolution step (evo_interval={cfg.evo_interval}) and needs a "
                "forward-only closure(params) -> loss; pass closure=... (or a population scorer=...)"
            )
        if state.cycle > 2**32 - 1:
            raise RuntimeError(f"cycle={state.cycle} exceeds the 32-bit generation counter of the noise")
        # the state's seed is the rng position of this run; cfg.seed only seeds init
        result = run_cycle(cfg, params, sigma=sigma, cycle=state.cycle, step=step, closure=closure,
                           workspace=workspace, seed=state.seed, scorer=scorer)
        if result.accepted and cfg.reset_momentum_on_evo and momentum is not None:
            momentum = {k: _backend.array_namespace(b).zeros_like(b) for k, b in momentum.items()}
        new_state = EGDState(step, state.cycle + 1, sigma * cfg.sigma_decay, state.seed, momentum)
        report = EvolutionReport(**result.report_fields)
        if cfg.callback is not None:
            cfg.callback(report)
        return result.params, new_state, report

    def update(grads: dict | None, state: EGDState, params: dict, closure: Callable | None = None, *,
               scorer: Callable | None = None):
        """One EGD step (see the module docstring for the order).

        Parameters
        ----------
        grads : dict[str, array] or None
            Gradients keyed like params (``None`` entries skip a parameter).
        state : EGDState
        params : dict[str, array]
        closure : callable(params, **kw) -> loss, optional
            Forward-only; required on evolution steps unless ``scorer`` is given.
        scorer : callable(Mutations) -> losses, optional
            A population scorer (egdnp's extension): scores all members of a
            cycle at once; instead of ``closure``.

        Returns
        -------
        params : dict[str, array]
        state : EGDState
        report : EvolutionReport or None
            ``None`` on plain SGD steps.
        """
        _check_params(params)
        _check_state(cfg, state, params)
        new_params, momentum = _sgd(grads, state, params)
        step = state.step + 1
        sigma = _new_sigma(cfg, step, state.sigma)
        if cfg.evo_interval <= 0 or step % cfg.evo_interval != 0:
            return new_params, EGDState(step, state.cycle, sigma, state.seed, momentum), None
        return _cycle(state, new_params, momentum, step, sigma, closure, scorer)

    def evolve(state: EGDState, params: dict, closure: Callable | None = None, *, scorer: Callable | None = None):
        """One evolution cycle now, without an SGD step (``state.step`` unchanged); ``closure`` or ``scorer``."""
        _check_params(params)
        _check_state(cfg, state, params)
        return _cycle(state, params, state.momentum, state.step, state.sigma, closure, scorer)

    return EGDOptimizer(init, update, evolve, cfg, workspace)


def save(path, state: EGDState) -> None:
    """Write an :class:`EGDState` to one ``.npz`` file (momentum, sigma, step, cycle, seed).

    Parameters
    ----------
    path : str or path-like
    state : EGDState

    Returns
    -------
    None
    """
    _save_state(path, state)


def load(path, *, xp: Any = "numpy", device: Any = None, params: dict | None = None) -> EGDState:
    """Read an :class:`EGDState` written by :func:`save`; resuming from it is bit-identical.

    Parameters
    ----------
    path : str or path-like
    xp : namespace or {"numpy", "cupy"}
        Where to put the momentum buffers.
    device : optional
    params : dict[str, array], optional
        The parameters the state will update: the momentum buffers must have
        their keys, shapes and dtypes (a checkpoint of another model is refused).

    Returns
    -------
    EGDState

    Raises
    ------
    ValueError
        The file is not a readable EGD state (empty, truncated, another format),
        or its buffers do not match ``params``; the message names the file.
    """
    state = _load_state(path, EGDState, xp=xp, device=device)
    if params is not None:
        _check_params(params)
        try:
            check_state_keys(state.momentum, params, "the checkpoint's momentum")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path!s} does not fit these params: {exc}") from None
    return state


# ----------------------------------------------------------------------------
# torch-style wrapper
# ----------------------------------------------------------------------------
class EGD:
    """Torch-style object around :func:`egd`: holds ``params`` and ``state``.

    ``step(grads, closure=None)`` returns the spec's value: the loss after
    recombination on evolution steps, ``None`` otherwise; the full report is
    ``last_report``.

    Parameters
    ----------
    params : dict[str, array]
    **knobs :
        Every keyword of :func:`egd`.
    """

    def __init__(self, params: dict, lr: Any = 1e-2, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, **knobs):
        self.opt = egd(lr, momentum, nesterov, weight_decay, **knobs)
        self.params = dict(params)
        self.state = self.opt.init(self.params)
        self.last_report: EvolutionReport | None = None

    @property
    def config(self) -> EGDConfig:
        """The static hyper-parameters (:class:`EGDConfig`)."""
        return self.opt.config

    @property
    def sigma(self) -> float:
        """The current mutation scale (a Python float; decays after every cycle)."""
        return self.state.sigma

    def step(self, grads: dict | None, closure: Callable | None = None, *,
             scorer: Callable | None = None) -> float | None:
        """One SGD step (+ evolution cycle on every ``evo_interval``-th step); see :func:`egd`.

        Parameters
        ----------
        grads : dict of str to array, or None
            Gradients keyed like ``params``, each of its parameter's shape.
        closure : callable, optional
            ``closure(params) -> loss``; needed on evolution steps unless ``scorer`` is given.
        scorer : callable, optional
            A population scorer ``scorer(mutations) -> losses`` of shape
            (n_members,), instead of ``closure`` (egdnp's extension; see
            :func:`egdnp.es.egd_scorer.model_scorer`).

        Returns
        -------
        float or None
            The loss after recombination on evolution steps, else None.
        """
        params, state, report = self.opt.update(grads, self.state, self.params, closure=closure, scorer=scorer)
        self.params, self.state = params, state
        if report is not None:
            self.last_report = report
            return report.loss
        return None

    def evolve(self, closure: Callable | None = None, *, scorer: Callable | None = None) -> EvolutionReport:
        """Run one evolution cycle now (no SGD step).

        Parameters
        ----------
        closure : callable, optional
            ``closure(params) -> loss`` (forward only), as for :func:`egd`.
        scorer : callable, optional
            A population scorer instead of ``closure``.

        Returns
        -------
        EvolutionReport
            Also kept as ``last_report``; ``params`` and ``state`` are replaced.
        """
        params, state, report = self.opt.evolve(self.state, self.params, closure, scorer=scorer)
        self.params, self.state, self.last_report = params, state, report
        return report

    def save(self, path) -> None:
        """Save the optimiser state and the parameters to one ``.npz`` file.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        None
        """
        _save_state(path, _Checkpoint(self.state.step, self.state.cycle, self.state.sigma, self.state.seed,
                                      self.state.momentum, self.params))

    def load(self, path) -> None:
        """Load what :meth:`save` wrote (onto the namespace/device of the current params).

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        None
            ``params`` and ``state`` are replaced by the file's.
        """
        first = next(iter(self.params.values()))
        xp = _backend.array_namespace(first)
        device = None if _backend.is_numpy(xp) or _backend.is_cupy(xp) else _backend.device_of(first)
        ck = _load_state(path, _Checkpoint, xp=xp, device=device)
        try:
            check_state_keys(ck.params, self.params, "the checkpoint's params")
            _check_state(self.opt.config, EGDState(ck.step, ck.cycle, ck.sigma, ck.seed, ck.momentum), self.params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path!s} is not a checkpoint of this model and optimiser: {exc}") from None
        self.params = dict(ck.params)
        self.state = EGDState(ck.step, ck.cycle, ck.sigma, ck.seed, ck.momentum)


class _Checkpoint(NamedTuple):
    step: int
    cycle: int
    sigma: float
    seed: int
    momentum: dict | None
    params: dict
