"""Scoring a whole EGD population at once: the mutations of a cycle as one description.

The spec scores one candidate at a time with ``closure(params)``.  Every
member of a cycle is scored on the same batch, though, so a model that runs
on a population axis can score them all in one forward -- with low-rank
mutations without ever forming a candidate (``x Wᵀ`` once, ``(x B) Aᵀ`` per
member).  This module is the optimiser's side of that contract; it knows no
model.  A **population scorer** is any callable

    scorer(mutations: Mutations) -> losses, array or sequence of shape (len(mutations.members),)

that returns the loss of every member listed in ``mutations.members``, in
that order, on one batch chosen from ``(mutations.cycle, mutations.phase)``.
:func:`egdnp.es.egd_scorer.model_scorer` builds one for ``egdnp.nn`` models.

A :class:`Mutations` addresses the noise, it holds none: a scorer asks for
the low-rank factors, the noise or the stacked candidate tensors of the
members (or of a chunk of them) it is about to score.  Everything it hands
out is the per-candidate path's own arithmetic: the same addresses, the same
scales, the same rounding of the scaled factor; ``candidates`` is bit for bit
what the per-candidate path hands the closure.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from .. import _backend
from ._egd_mutation import dtype_name, is_lowrank, member_factors, mutant, unit_noise

__all__ = ["Mutations", "PopulationScoring"]


class Mutations:
    """The mutations of some members of one EGD cycle, by noise address (nothing materialised).

    Member ``m >= 1`` of cycle ``c`` evaluates every mutated tensor at
    ``params[name] + scales[name] * z`` with ``z`` the unit noise of
    ``(seed, name, m, c)`` (full rank, or ``(A Bᵀ / sqrt(rank)).reshape(shape)``
    for matrices and filter banks when ``mutation == "lowrank"``, see
    :mod:`egdnp.optim._egd_mutation`).  Members ``0`` (the base) and ``-1``
    (the recombined parameters) are ``params`` themselves, unmutated.

    Attributes
    ----------
    params : dict[str, array]
        The parameters every member mutates (all of them, mutated or not).
    members : tuple of int
        The members to score, in the order the losses must come back.
    mutated : tuple of str
        Names of the mutated tensors; every other tensor is ``params[name]`` for every member.
    scales : dict[str, float]
        Absolute noise std of every mutated tensor, ``sigma * max(rms, 1e-8)``.
    seed, cycle : int
        The noise address (``cycle`` is the noise generation).
    phase : {"score", "rescore"}
        ``"score"``: the cycle's selection batch; ``"rescore"``: the fresh batch
        of ``rescore_elites``.  Choose the batch from ``(cycle, phase)`` only.
    mutation : {"full", "lowrank"}
    rank : int
    xp : namespace
        The namespace of ``params``.
    """

    __slots__ = ("params", "members", "mutated", "scales", "seed", "cycle", "phase", "mutation", "rank", "xp",
                 "_device")

    def __init__(self, params: dict, members, *, mutated, scales: dict, seed: int, cycle: int, phase: str,
                 mutation: str, rank: int):
        self.params = params
        self.members = tuple(int(m) for m in members)
        self.mutated = tuple(mutated)
        self.scales = dict(scales)
        self.seed, self.cycle, self.phase = int(seed), int(cycle), str(phase)
        self.mutation, self.rank = str(mutation), int(rank)
        self.xp = _backend.array_namespace(*params.values())
        first = params[self.mutated[0]] if self.mutated else next(iter(params.values()))
        self._device = _backend.device_of(first)

    def __repr__(self) -> str:
        return (f"Mutations(members={self.members}, cycle={self.cycle}, phase={self.phase!r}, "
                f"mutation={self.mutation!r}, rank={self.rank}, mutated={self.mutated})")

    # -- helpers ------------------------------------------------------------------
    def _members(self, members) -> tuple:
        return self.members if members is None else tuple(int(m) for m in members)

    def _check(self, name: str) -> Any:
        if name not in self.mutated:
            raise KeyError(f"{name!r} is not mutated in this cycle; mutated tensors are {list(self.mutated)}")
        return self.params[name]

    def _dev(self):
        xp = self.xp
        return None if _backend.is_numpy(xp) or _backend.is_cupy(xp) else self._device

    def is_lowrank(self, name: str) -> bool:
        """Whether tensor ``name`` gets low-rank mutations (see :meth:`factors`).

        Parameters
        ----------
        name : str
            A mutated tensor.

        Returns
        -------
        bool
        """
        return is_lowrank(tuple(self._check(name).shape), self.mutation)

    def factors(self, name: str, members=None):
        """Stacked low-rank factors: member ``i``'s mutation of ``name`` is ``(A[i] @ B[i].T).reshape(shape)``.

        ``A`` is pre-scaled by ``scales[name] / sqrt(rank)`` (rounded to the
        dtype once, as the per-candidate path does); members ``0``/``-1`` get
        zero factors.  A conv filter bank ``(C_out, C_in, kh, kw)`` has
        ``(rows, cols) = (C_out, C_in * kh * kw)``.

        Parameters
        ----------
        name : str
            A mutated tensor with ``is_lowrank(name)``.
        members : sequence of int, optional
            Default: ``self.members``.

        Returns
        -------
        A : array, shape (n, rows, rank)
        B : array, shape (n, cols, rank)
        """
        p = self._check(name)
        shape = tuple(int(s) for s in p.shape)
        if not is_lowrank(shape, self.mutation):
            raise ValueError(f"{name!r} (shape {shape}) gets full-rank mutations; use noise() or candidates()")
        return member_factors(shape, self._members(members), self.scales[name], seed=self.seed, name=name,
                              cycle=self.cycle, rank=self.rank, dtype=p.dtype, xp=self.xp, device=self._dev())

    def noise(self, name: str, members=None):
        """Stacked scaled full-rank noise ``scales[name] * z`` of the members (zeros for ``0``/``-1``).

        Parameters
        ----------
        name : str
            A mutated tensor with full-rank mutations.
        members : sequence of int, optional
            Default: ``self.members``.

        Returns
        -------
        array, shape (n, *params[name].shape)
        """
        p = self._check(name)
        shape = tuple(int(s) for s in p.shape)
        if is_lowrank(shape, self.mutation):
            raise ValueError(f"{name!r} (shape {shape}) gets low-rank mutations; use factors()")
        xp, dev = self.xp, self._dev()
        parts = []
        for m in self._members(members):
            if m > 0:
                parts.append(unit_noise(shape, seed=self.seed, name=name, member=m, cycle=self.cycle,
                                        dtype=dtype_name(xp, p.dtype), xp=xp, device=dev, factor=self.scales[name]))
            else:
                parts.append(xp.zeros(shape, dtype=p.dtype) if dev is None else
                             xp.zeros(shape, dtype=p.dtype, device=dev))
        return xp.stack(parts, axis=0)

    def candidates(self, name: str, members=None):
        """Stacked candidate tensors ``params[name] + scales[name] * z`` (materialised: memory ``n * size``).

        Bit for bit the tensors the per-candidate path hands the closure
        (``params[name]`` itself for members ``0``/``-1``).

        Parameters
        ----------
        name : str
            Any parameter; an unmutated one is repeated.
        members : sequence of int, optional
            Default: ``self.members``.

        Returns
        -------
        array, shape (n, *params[name].shape)
        """
        p = self.params[name]
        members = self._members(members)
        xp = self.xp
        if name not in self.mutated:
            return xp.stack([p] * len(members), axis=0)
        shape = tuple(int(s) for s in p.shape)
        out = xp.empty((len(members),) + shape, dtype=p.dtype) if self._dev() is None else xp.empty(
            (len(members),) + shape, dtype=p.dtype, device=self._dev())
        numpy = _backend.is_numpy(xp)
        for i, m in enumerate(members):
            if m <= 0:
                out[i, ...] = p
            elif numpy:
                mutant(p, self.scales[name], seed=self.seed, name=name, member=m, cycle=self.cycle, xp=xp,
                       mutation=self.mutation, rank=self.rank, out=out[i])
            else:
                out[i, ...] = mutant(p, self.scales[name], seed=self.seed, name=name, member=m, cycle=self.cycle,
                                     xp=xp, device=self._dev(), mutation=self.mutation, rank=self.rank)
        return out


class PopulationScoring:
    """Calls a population scorer for the cycle, checks what it returns, applies ``loss_reduce``.

    Counts calls and wall time like the closure's scorer (the report's
    ``closure_calls`` and ``closure_seconds``).

    Parameters
    ----------
    scorer : callable(Mutations) -> losses of shape (n,)
    cfg : EGDConfig
    mutated : list of str
    scales : dict[str, float]
    cycle : int
    seed : int
        The state's seed (the rng position of the run; not ``cfg.seed``).
    """

    def __init__(self, scorer: Callable, cfg, mutated, scales: dict, cycle: int, seed: int):
        if not callable(scorer):
            raise TypeError(f"scorer={scorer!r} must be callable(mutations) -> losses of shape (n_members,)")
        self.scorer = scorer
        self.cfg, self.mutated, self.scales, self.cycle = cfg, tuple(mutated), dict(scales), int(cycle)
        self.seed = int(seed)
        self.calls = 0
        self.seconds = 0.0

    def mutations(self, params: dict, members, phase: str) -> Mutations:
        """The :class:`Mutations` of ``members`` relative to ``params`` in this cycle."""
        return Mutations(params, members, mutated=self.mutated, scales=self.scales, seed=self.seed,
                         cycle=self.cycle, phase=phase, mutation=self.cfg.mutation, rank=self.cfg.rank)

    def __call__(self, params: dict, members, phase: str) -> list:
        """Losses of ``members`` (Python floats, ``loss_reduce`` applied to each), in order."""
        muts = self.mutations(params, members, phase)
        n = len(muts.members)
        t0 = time.perf_counter()
        raw = self.scorer(muts)
        self.calls += 1
        try:
            if hasattr(raw, "shape"):
                shape = tuple(int(s) for s in raw.shape)
                items = [raw[i] for i in range(shape[0])] if len(shape) == 1 else None
            else:
                items = list(raw)
                shape = (len(items),)
        except TypeError:
            raise TypeError(
                f"the population scorer returned {type(raw).__name__}; it must return the losses of "
                f"mutations.members as an array or sequence of shape ({n},)"
            ) from None
        if shape != (n,) or items is None:
            raise ValueError(
                f"the population scorer returned losses of shape {shape} for {n} members {muts.members} "
                f"(phase {phase!r}); it must return one loss per member of mutations.members, shape ({n},)"
            )
        reduce = self.cfg.loss_reduce
        if reduce is None and hasattr(raw, "shape"):
            items = list(_backend.to_host(raw))  # one device->host copy for all members
        values = [_loss_float(reduce(v) if reduce is not None else v, i, muts.members) for i, v in enumerate(items)]
        self.seconds += time.perf_counter() - t0
        return values


def _loss_float(value, i: int, members) -> float:
    if isinstance(value, bool):
        raise TypeError(f"the population scorer's loss {i} (member {members[i]}) is a bool; return real losses")
    if isinstance(value, (int, float)):
        return float(value)
    if hasattr(value, "shape"):
        host = _backend.to_host(value)
        if host.size != 1 or host.dtype.kind not in "fiu":
            raise TypeError(
                f"the population scorer's loss {i} (member {members[i]}) has shape {tuple(host.shape)} and dtype "
                f"{host.dtype}; each loss must be a real scalar"
            )
        return float(host.reshape(()))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"the population scorer's loss {i} (member {members[i]}) is a {type(value).__name__}; "
            "each loss must be a real scalar"
        ) from None
