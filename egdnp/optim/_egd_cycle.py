"""One EGD evolution cycle: score the base and pop_size - 1 mutants, keep streaming
top-k elites, recombine, score the result.

:func:`run_cycle` is three steps over a population store
(:mod:`egdnp.optim._egd_population`):

1. :func:`select` -- score the base (member 0) and the mutants and keep the
   ``k`` best as they come (the spec's streaming top-k: at most ``k``
   candidates are held);
2. :func:`rescore` -- (``rescore_elites``) score the elites and the base
   again on a fresh batch and rank them by those losses;
3. :func:`recombine` -- weight the elites (the registered ``recombine`` rule,
   :mod:`egdnp.optim._egd_recombination`), mix them and score the result.

Members are scored one at a time by the closure (:class:`Scorer`, the
spec's path) or all at once by a population scorer
(:class:`egdnp.optim._egd_scoring.PopulationScoring`); the same losses give
the same elites and the same recombination either way.  The cycle builds
its :class:`EvolutionReport` itself.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Callable

from .. import _backend
from ._egd_mutation import param_scale
from ._egd_population import BASE, HostPopulation, Workspace, check_population_fits, nbytes, store_for
from ._egd_recombination import recombination_weights
from ._egd_scoring import PopulationScoring
from ._egd_types import EvolutionReport

__all__ = ["run_cycle", "select", "rescore", "recombine", "Scorer"]

LAZY = "lazy"  # population scoring: an elite whose candidate is built only once it is recombined


class Scorer:
    """Calls the forward-only closure, applies ``loss_reduce`` and turns the loss into a float.

    The closure is called as ``closure(params)``, plus the keyword arguments
    ``member``, ``cycle`` and ``phase`` that its signature accepts (all of
    them when it takes ``**kwargs``).
    """

    def __init__(self, closure: Callable, loss_reduce: Callable | None, cycle: int):
        if not callable(closure):
            raise TypeError(f"closure={closure!r} must be callable(params, **kw) -> loss")
        self.closure = closure
        self.loss_reduce = loss_reduce
        self.cycle = cycle
        self.calls = 0
        self.seconds = 0.0
        self.kw_names = _accepted_keywords(closure, ("member", "cycle", "phase"))

    def call(self, params: dict, member: int, phase: str):
        """Start scoring; returns the raw loss (may still be computing on a device)."""
        kw = {}
        if "member" in self.kw_names:
            kw["member"] = member
        if "cycle" in self.kw_names:
            kw["cycle"] = self.cycle
        if "phase" in self.kw_names:
            kw["phase"] = phase
        t0 = time.perf_counter()
        raw = self.closure(params, **kw)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return raw

    def value(self, raw) -> float:
        """The loss as a Python float (waits for the device)."""
        t0 = time.perf_counter()
        if self.loss_reduce is not None:
            raw = self.loss_reduce(raw)
        value = _to_float(raw)
        self.seconds += time.perf_counter() - t0
        return value

    def __call__(self, params: dict, member: int, phase: str) -> float:
        return self.value(self.call(params, member, phase))


def _accepted_keywords(fn: Callable, names) -> tuple:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ()
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return tuple(names)
    ok = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return tuple(n for n in names if n in ok)


def _to_float(raw) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if hasattr(raw, "shape"):
        host = _backend.to_host(raw)
        if host.size != 1:
            raise ValueError(
                f"the closure returned an array of shape {tuple(host.shape)}; it must return a scalar loss "
                "(a float or a 0-d/size-1 array)"
            )
        return float(host.reshape(()))
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise TypeError(f"the closure returned {type(raw).__name__}; it must return a scalar loss") from None


def _mutated(cfg, params: dict) -> list:
    """Names of the tensors the cycle mutates: non-empty ones ``mutate_filter`` accepts (called once per cycle)."""
    return [n for n, p in params.items()
            if nbytes(p) > 0 and (cfg.mutate_filter is None or bool(cfg.mutate_filter(n, p)))]


def _scales(xp, params: dict, mutated: list, sigma: float, workspace: Workspace, transient: bool) -> dict:
    """Absolute noise std of every mutated tensor, ``sigma * max(rms, 1e-8)``."""
    if not _backend.is_numpy(xp) or transient:
        # population scoring holds no candidate buffer: a transient temporary, the same bits
        return {n: param_scale(xp, params[n], sigma) for n in mutated}
    # NumPy: the squares go to the (still free) candidate buffer instead of a fresh temporary
    return {n: param_scale(xp, params[n], sigma, scratch=workspace.device_buffer(
        xp, ("candidate", n), params[n].shape, params[n].dtype) if params[n].flags.c_contiguous else None)
        for n in mutated}


def select(cfg, params: dict, store, score, *, cycle: int, step: int):
    """Score every member once and keep the ``k = cfg.n_elites`` best (streaming; the base starts as an elite).

    Returns
    -------
    member_losses : list of float, length pop_size
        Index = member; a non-finite loss ranks last and is never kept.
    elites : list of [loss, member, handle], best first
        At most ``k``; the base's handle is :data:`BASE`.

    Raises
    ------
    RuntimeError
        The base loss is not finite (nothing has been changed).
    """
    population = isinstance(score, PopulationScoring)
    if population:
        pop_losses = score(params, range(cfg.pop_size), "score")  # every member in one call (0 is the base)
        base_loss = pop_losses[0]
    else:
        base_loss = score(params, 0, "score")
    if not math.isfinite(base_loss):
        raise RuntimeError(
            f"EGD evolution cycle {cycle} (step {step}): the base parameters' loss is {base_loss!r}; "
            "a cycle needs a finite base loss. Nothing was changed (params and state are as before this update); "
            "lower lr or check the data/closure"
        )
    k = cfg.n_elites
    store.begin(k if population else None)
    member_losses = [math.nan] * cfg.pop_size
    member_losses[0] = base_loss
    elites: list = [[base_loss, 0, BASE]]  # kept in the spec's order (append, replace in place)

    def release(handle):
        if handle != LAZY:
            store.release(handle)

    def admit(member, handle, loss):
        member_losses[member] = loss
        if not math.isfinite(loss):
            release(handle)
            return
        if len(elites) < k:
            elites.append([loss, member, handle])
            return
        worst = max(range(len(elites)), key=lambda i: elites[i][0])
        if loss < elites[worst][0]:
            release(elites[worst][2])
            elites[worst] = [loss, member, handle]
        else:
            release(handle)

    if population:
        # the same streaming selection over the population's losses; only the elites are built
        for member in range(1, cfg.pop_size):
            admit(member, LAZY, pop_losses[member])
        for e in elites:
            if e[2] == LAZY:
                e[2] = store.prepare(e[1])
    else:
        pending = None
        for member in range(1, cfg.pop_size):
            handle = store.prepare(member)  # host work overlaps the device still scoring `pending`
            if pending is not None:
                admit(pending[0], pending[1], score.value(pending[2]))
            cand = store.device_params(handle)
            pending = (member, handle, score.call(cand, member, "score"))
            del cand
        if pending is not None:
            admit(pending[0], pending[1], score.value(pending[2]))
    elites.sort(key=lambda e: e[0])
    return member_losses, elites


def rescore(params: dict, store, score, elites: list, *, cycle: int, step: int):
    """Score the elites and the base again (``phase="rescore"``) and rank the elites by those losses.

    Returns
    -------
    elites : list of [loss, member, handle], best first
        The finite re-scored ones (the base alone when none is).
    rescore_losses : dict[int, float]
        Member -> loss on the fresh batch (the base included).
    base_loss : float
        The base's re-scored loss (what ``accept="if_better"`` compares with).
    """
    population = isinstance(score, PopulationScoring)
    if population:
        again = [e[1] for e in elites] + ([] if any(e[1] == 0 for e in elites) else [0])
        fresh = dict(zip(again, score(params, again, "rescore")))
    rescore_losses, rescored = {}, []
    for _, member, handle in elites:
        r = fresh[member] if population else score(store.device_params(handle), member, "rescore")
        rescore_losses[member] = r
        if math.isfinite(r) or member == 0:
            rescored.append([r, member, handle])
    if 0 not in rescore_losses:
        rescore_losses[0] = fresh[0] if population else score(params, 0, "rescore")
    base_loss = rescore_losses[0]
    if not math.isfinite(base_loss):
        raise RuntimeError(
            f"EGD evolution cycle {cycle} (step {step}): the base parameters' re-scored loss is "
            f"{base_loss!r}; nothing was changed"
        )
    rescored = [e for e in rescored if math.isfinite(e[0])] or [[base_loss, 0, BASE]]
    rescored.sort(key=lambda e: e[0])
    return rescored, rescore_losses, base_loss


def recombine(cfg, store, score, elites: list, phase: str):
    """Weight and mix the elites, then score the result (member -1).

    Returns
    -------
    new_params : dict[str, array]
    weights : list of float
        One per elite, from the registered ``cfg.recombine`` rule.
    loss : float
        The recombined parameters' loss on ``phase``'s batch.
    """
    weights = recombination_weights(cfg.recombine, [e[0] for e in elites], cfg.temperature)
    handles = [e[2] for e in elites]
    new_params = store.recombine(handles, [e[1] for e in elites], weights)
    for h in handles:
        store.release(h)
    if isinstance(score, PopulationScoring):
        return new_params, weights, score(new_params, (-1,), phase)[0]
    return new_params, weights, score(new_params, -1, phase)


def run_cycle(cfg, params: dict, *, sigma: float, cycle: int, step: int, closure: Callable | None,
              workspace: Workspace, seed: int, scorer: Callable | None = None):
    """Run one evolution cycle on ``params`` (the parameters after the SGD step).

    The mutations are addressed by ``seed`` (the state's, not ``cfg.seed``).
    Members are scored one at a time with ``closure`` (the spec's path), or
    all at once with the population ``scorer``.

    Returns
    -------
    params : dict[str, array]
        The recombined parameters (``params`` itself when rejected); ``params`` is never modified.
    report : EvolutionReport

    Raises
    ------
    RuntimeError
        The base loss is not finite.
    """
    t0 = time.perf_counter()
    xp = _backend.array_namespace(*params.values())
    mutated = _mutated(cfg, params)
    check_population_fits(cfg, params, mutated)
    scales = _scales(xp, params, mutated, sigma, workspace, transient=scorer is not None)
    if scorer is None:
        score = Scorer(closure, cfg.loss_reduce, cycle)
    else:
        score = PopulationScoring(scorer, cfg, mutated, scales, cycle, seed)
    store_cls = store_for(cfg)
    store = store_cls(cfg, xp, params, mutated, scales, cycle, workspace, seed)

    member_losses, elites = select(cfg, params, store, score, cycle=cycle, step=step)
    base_loss = compare_loss = member_losses[0]
    rescore_losses = None
    if cfg.rescore_elites:
        elites, rescore_losses, compare_loss = rescore(params, store, score, elites, cycle=cycle, step=step)
    new_params, weights, recombined_loss = recombine(cfg, store, score, elites,
                                                     "rescore" if cfg.rescore_elites else "score")
    accepted = cfg.accept != "if_better" or recombined_loss <= compare_loss
    if not accepted:
        new_params = params
    if _backend.is_cupy(xp):
        _backend.synchronize(xp)
    report = EvolutionReport(
        cycle=cycle,
        step=step,
        base_loss=base_loss,
        member_losses=tuple(member_losses),
        elite_indices=tuple(e[1] for e in elites),
        elite_losses=tuple(e[0] for e in elites),
        elite_weights=tuple(weights),
        rescore_losses=rescore_losses,
        recombined_loss=recombined_loss,
        loss=recombined_loss if accepted else compare_loss,
        accepted=accepted,
        sigma=float(sigma),
        scales=dict(scales),
        mutated=tuple(mutated),
        bytes_to_device=store.bytes_to_device,
        bytes_to_host=store.bytes_to_host,
        bytes_moved=store.bytes_to_device + store.bytes_to_host,
        closure_calls=score.calls,
        closure_seconds=score.seconds,
        seconds=time.perf_counter() - t0,
        population_storage=cfg.population_storage,
        host_buffer_bytes=workspace.host_nbytes if store_cls is HostPopulation else 0,
        scored_by="population" if scorer is not None else "closure",
    )
    return new_params, report
