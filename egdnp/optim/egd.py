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
   d. recombine the elites: mean, weights ``softmax(-loss / temperature)``,
      or the weights of a rule given to :func:`register_recombination`;
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

from typing import Any, Callable, NamedTuple

from .. import _backend
from ._base import check_params_grads, check_state_keys, learning_rate_at
from ._base import load_state as _load_state
from ._base import save_state as _save_state
from ._egd_cycle import run_cycle
from ._egd_mutation import set_parallel_from
from ._egd_population import Workspace, check_population_fits
from ._egd_recombination import check_recombination, recombination_names, register_recombination
from ._egd_scoring import Mutations
from ._egd_types import EGDConfig, EGDState, EvolutionReport, check_params, check_state, make_config, new_sigma
from .sgd import sgd_step

__all__ = ["EGDConfig", "EGDState", "EvolutionReport", "EGDOptimizer", "Mutations", "egd", "EGD", "save", "load",
           "register_recombination", "recombination_names", "set_parallel_from"]


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
    recombine : str
        ``"mean"`` (elite mean), ``"softmax"`` (weights
        ``softmax(-loss / temperature)``) or a name given to
        :func:`register_recombination`.
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
        check_params(params)
        if cfg.evo_interval > 0 and cfg.mutate_filter is None:
            # refused here rather than after the first training steps; with a filter the
            # cycle checks (the filter is called once per cycle by contract)
            check_population_fits(cfg, params, list(params))
        bufs = None
        if cfg.momentum != 0.0:
            bufs = {k: _backend.array_namespace(p).zeros_like(p) for k, p in params.items()}
        return EGDState(0, 0, cfg.sigma, cfg.seed, bufs, cfg.recombine)

    def _sgd(grads, state, params):
        if grads is None:
            grads = {}
        check_params_grads(grads, params)
        check_state_keys(state.momentum, params, "state.momentum")
        return sgd_step(grads, params, state.momentum, learning_rate_at(cfg.lr, state.step), momentum=cfg.momentum,
                        nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)

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
        new_params, report = run_cycle(cfg, params, sigma=sigma, cycle=state.cycle, step=step, closure=closure,
                                       workspace=workspace, seed=state.seed, scorer=scorer)
        if report.accepted and cfg.reset_momentum_on_evo and momentum is not None:
            momentum = {k: _backend.array_namespace(b).zeros_like(b) for k, b in momentum.items()}
        new_state = EGDState(step, state.cycle + 1, sigma * cfg.sigma_decay, state.seed, momentum, cfg.recombine)
        if cfg.callback is not None:
            cfg.callback(report)
        return new_params, new_state, report

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
        check_params(params)
        check_state(cfg, state, params)
        new_params, momentum = _sgd(grads, state, params)
        step = state.step + 1
        sigma = new_sigma(cfg, step, state.sigma)
        if cfg.evo_interval <= 0 or step % cfg.evo_interval != 0:
            return new_params, EGDState(step, state.cycle, sigma, state.seed, momentum, cfg.recombine), None
        return _cycle(state, new_params, momentum, step, sigma, closure, scorer)

    def evolve(state: EGDState, params: dict, closure: Callable | None = None, *, scorer: Callable | None = None):
        """One evolution cycle now, without an SGD step (``state.step`` unchanged); ``closure`` or ``scorer``."""
        check_params(params)
        check_state(cfg, state, params)
        return _cycle(state, params, state.momentum, state.step, state.sigma, closure, scorer)

    return EGDOptimizer(init, update, evolve, cfg, workspace)


def save(path, state: EGDState) -> None:
    """Write an :class:`EGDState` to one ``.npz`` file (momentum, sigma, step, cycle, seed, recombination name).

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
        its buffers do not match ``params``, or it records a recombination
        that is not registered in this process; the message names the file.
    """
    state = _load_state(path, EGDState, xp=xp, device=device)
    _check_recorded_recombination(path, state.recombine)
    if params is not None:
        check_params(params)
        try:
            check_state_keys(state.momentum, params, "the checkpoint's momentum")
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path!s} does not fit these params: {exc}") from None
    return state


def _check_recorded_recombination(path, name) -> None:
    """A state file's recombination (``None``: saved before it was recorded) must be registered here."""
    if name is None:
        return
    try:
        check_recombination(name, "the recombination recorded in the file")
    except ValueError as exc:
        raise ValueError(f"{path!s} was saved by an EGD with recombine={name!r}, which is not registered in this "
                         f"process ({exc}); register it before loading") from None


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
        st = self.state
        _save_state(path, _Checkpoint(st.step, st.cycle, st.sigma, st.seed, st.momentum, self.params, st.recombine))

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
        _check_recorded_recombination(path, ck.recombine)
        try:
            check_state_keys(ck.params, self.params, "the checkpoint's params")
            state = EGDState(ck.step, ck.cycle, ck.sigma, ck.seed, ck.momentum, ck.recombine)
            check_state(self.opt.config, state, self.params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path!s} is not a checkpoint of this model and optimiser: {exc}") from None
        self.params = dict(ck.params)
        self.state = state


class _Checkpoint(NamedTuple):
    step: int
    cycle: int
    sigma: float
    seed: int
    momentum: dict | None
    params: dict
    recombine: str | None = None  # not in checkpoints saved before it was recorded
