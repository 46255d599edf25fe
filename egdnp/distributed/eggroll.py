"""EGGROLL across processes: every rank scores a block of the population, fitness values are exchanged.

With addressed noise a rank needs only the other ranks' fitness values, never
their perturbations, to apply the same update.  One generation on every rank:

1. ``strategy.ask(state)``: the perturbations of the whole population, regenerated
   from ``(seed, name, pair, generation)`` -- the same numbers on every rank
   (in the ``"allreduce"`` mode only this rank's pairs: ``ask(state, pairs=...)``);
2. score this rank's block of pairs (:func:`partition`: contiguous blocks of
   antithetic pairs, never split; sizes differ by at most one pair) with the
   ordinary perturbed forwards on :func:`local_view`, a population of just
   those members;
3. one ``Allgatherv`` of the fitness vector (4 bytes a member in float32);
4. ``mode="fitness"`` (default): every rank shapes the whole fitness vector
   and forms the whole update itself (``strategy.tell``);
   ``mode="allreduce"``: every rank forms the ES-gradient terms of its own
   pairs only and one ``Allreduce`` of one flat gradient buffer sums them
   (the update costs ``1/size`` per rank; deterministic for a given number
   of ranks).

In both modes all ranks hold **bitwise identical parameters** after every
generation.  Against the single-process run: the fitness mode is bitwise
equal when every member's fitness is computed the same way in any slice of
the population (per-member inputs such as environments, narrow layers); with
one shared data batch the first layer's ``x B`` product is one BLAS GEMM over
the scored pairs, and OpenBLAS rounds a column differently depending on how
many columns the product has (up to ~3e-6 absolute in float32), so fitness
values -- and the runs -- agree within float rounding (float64: rel 1e-12
after 10 generations in the tests).  The all-reduce mode agrees within float
rounding.

Bytes sent per generation, summed over ranks: ``4 N`` (float32 fitness) in
the default mode; plus ``4 P_params`` per rank for the all-reduce.
See docs/distributed.md for the measured cost model.

>>> from egdnp import distributed, es, nn, optim
>>> dist = distributed.DistributedEggroll(es.Eggroll(pop_size=64, rank=1, optimizer=optim.sgd(0.1)))
>>> state = dist.init(nn.mlp((4, 8, 2)).init(seed=0), seed=0)    # same on every rank
>>> # state, info = dist.step(state, lambda perts: es.population_fitness(model, state.params, xb, perts, fit))
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, NamedTuple

import numpy as np  # host-side bookkeeping: member indices, communication buffers

from .. import _backend
from .. import es as _es
from .comm import Comm, cuda_aware, world

__all__ = ["MODES", "Block", "partition", "local_view", "params_checksum", "DistributedEggroll"]

MODES = ("fitness", "allreduce")


class Block(NamedTuple):
    """The members one rank scores.

    Attributes
    ----------
    rank : int
    pairs : (int, int)
        Noise indices ``[lo, hi)`` (antithetic pairs, or members without antithetic sampling).
    members : numpy.ndarray of int64, shape (n_local,)
        Global member indices in the order of :func:`local_view`'s population.
    """

    rank: int
    pairs: tuple
    members: Any


def partition(pop_size: int, size: int, *, antithetic: bool = True, layout: str = "interleaved") -> list[Block]:
    """Split a population into ``size`` contiguous blocks of noise pairs, one per rank.

    Rank ``r`` gets pairs ``[P r // size, P (r + 1) // size)`` (``P`` pairs;
    block sizes differ by at most one pair; a pair is never split).  With the
    ``"interleaved"`` layout a block is the contiguous members ``[2 lo, 2 hi)``;
    with ``"halves"`` (member ``i`` pairs with ``i + N/2``) it is ``[lo, hi)``
    followed by ``[N/2 + lo, N/2 + hi)``; without antithetic sampling ``[lo, hi)``.

    Parameters
    ----------
    pop_size : int
        N.
    size : int
        Number of ranks; at most the number of pairs.
    antithetic : bool
    layout : {"interleaved", "halves"}
        The convention's layout (ignored without antithetic sampling).

    Returns
    -------
    list of Block, length size
    """
    for name, value in (("pop_size", pop_size), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}={value!r} must be an int >= 1")
    n_pairs = pop_size // 2 if antithetic else pop_size
    if antithetic and pop_size % 2:
        raise ValueError(f"pop_size={pop_size} is odd but antithetic sampling needs pairs")
    if size > n_pairs:
        raise ValueError(f"the job has {size} ranks but pop_size={pop_size} has only {n_pairs} noise pairs; "
                         f"every rank needs at least one pair: run on at most {n_pairs} ranks or enlarge the population")
    if antithetic and layout not in ("interleaved", "halves"):
        raise ValueError(f"layout={layout!r} must be 'interleaved' or 'halves'")
    blocks = []
    for r in range(size):
        lo, hi = n_pairs * r // size, n_pairs * (r + 1) // size
        if not antithetic:
            members = np.arange(lo, hi, dtype=np.int64)
        elif layout == "interleaved":
            members = np.arange(2 * lo, 2 * hi, dtype=np.int64)
        else:
            members = np.concatenate([np.arange(lo, hi), np.arange(n_pairs + lo, n_pairs + hi)]).astype(np.int64)
        blocks.append(Block(r, (lo, hi), members))
    return blocks


def local_view(perts: _es.Perturbations, block: Block) -> _es.Perturbations:
    """The members of ``block`` as a population of their own (for the perturbed forwards).

    Noise arrays are sliced to the block's pairs (views, no copy); member
    ``j`` of the view is member ``block.members[j]`` of ``perts`` with the same
    perturbation, so ``es.population_fitness(model, params, x, view, fn)`` gives
    those members' fitness, in block order.

    Parameters
    ----------
    perts : Perturbations
        The whole population's (``Eggroll.ask``).
    block : Block

    Returns
    -------
    Perturbations
        ``pop_size = len(block.members)``, ``first_pair = lo``: the same
        object as ``strategy.ask(state, pairs=block.pairs)`` draws directly.
    """
    lo, hi = block.pairs
    noise = {}
    for key, item in perts.noise.items():
        # every noise kind (low-rank, stacked, sparse, full) holds per-pair arrays, then the parameter's shape
        noise[key] = item._replace(**{f: getattr(item, f)[lo:hi, ...] for f in item._fields if f != "shape"})
    members = np.asarray(block.members, dtype=np.int64)
    pair = np.asarray(perts.pair)[members] - lo  # host-side member table, like es.member_layout's
    sign = np.asarray(perts.sign)[members]
    pair.setflags(write=False)
    sign.setflags(write=False)
    return perts._replace(
        noise=noise,
        pair=pair,
        sign=sign,
        pop_size=len(members),
        first_pair=perts.first_pair + lo,
    )


def params_checksum(params: dict) -> int:
    """CRC-32 of every parameter's bytes, in key order (for checking that ranks agree bit for bit).

    Parameters
    ----------
    params : dict of str to array

    Returns
    -------
    int
        Equal for two dicts exactly when (up to CRC collisions) keys, shapes, dtypes and bits are equal.
    """
    crc = 0
    for key, value in params.items():
        host = np.ascontiguousarray(_backend.to_host(value))
        crc = zlib.crc32(f"{key}:{host.dtype.str}:{host.shape}".encode(), crc)
        crc = zlib.crc32(host.view(np.uint8).reshape(-1), crc)
    return crc


class DistributedEggroll:
    """An :class:`egdnp.es.Eggroll` run on all ranks of a communicator.

    Every rank builds the same strategy and calls the same methods with the
    same arguments (the same data batch); only the scoring is split.

    Parameters
    ----------
    strategy : egdnp.es.Eggroll
    comm : Comm, optional
        Default :func:`egdnp.distributed.world` (one process without MPI).
    mode : {"fitness", "allreduce"}
        ``"fitness"``: one ``Allgatherv`` of the fitness; every rank forms the
        whole update (bitwise equal to the single-process run when members
        are scored the same way in any slice; see the module docstring).
        ``"allreduce"``: each rank forms its own pairs' gradient terms, plus
        one ``Allreduce`` of the flat gradient (within float rounding of the
        single-process run).  A variant's work between gradient and
        optimiser is done as its ``tell`` does it: its own ``shape`` on the
        whole fitness vector, its ``_transform_grads`` (e.g.
        :class:`~egdnp.es.EggrollBaseline`'s global-norm clipping) on the
        whole summed gradient, after the all-reduce.  A strategy that
        overrides ``tell`` otherwise is refused (``ValueError``: use
        ``"fitness"``).
    check : bool
        Debug: after every update compare a checksum of the parameters
        across ranks and raise ``RuntimeError`` if any rank differs.

    Attributes
    ----------
    strategy, comm, mode, check :
        As given.
    blocks : list of Block
        Every rank's members (:func:`partition`).
    block : Block
        This rank's.
    """

    def __init__(self, strategy: _es.Eggroll, comm: Comm | None = None, *, mode: str = "fitness",
                 check: bool = False):
        if not isinstance(strategy, _es.Eggroll):
            raise TypeError(f"strategy must be an es.Eggroll, got {type(strategy).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}: 'fitness' exchanges only fitness values, "
                             "'allreduce' also sums one gradient buffer")
        if not isinstance(check, bool):
            raise TypeError(f"check={check!r} must be True or False")
        own_tell = type(strategy).tell
        if mode == "allreduce" and own_tell not in (_es.Eggroll.tell, _es.EggrollBaseline.tell):
            raise ValueError(f"mode='allreduce' cannot run {type(strategy).__name__}: it overrides tell() "
                             f"({own_tell.__qualname__}), and the all-reduce mode forms the update without calling "
                             "it; use mode='fitness' (every rank calls strategy.tell on the whole fitness), or put "
                             "the extra work in the variant's shape() / _transform_grads(), which the all-reduce "
                             "mode applies to the whole population's fitness / summed gradient")
        self.strategy, self.mode, self.check = strategy, mode, check
        self.comm = world() if comm is None else comm
        if not isinstance(self.comm, Comm):
            raise TypeError(f"comm must be an egdnp.distributed.Comm (distributed.world()), got {type(self.comm).__name__}")
        layout = strategy.convention.layout
        self.blocks = partition(strategy.pop_size, self.comm.size, antithetic=strategy.antithetic, layout=layout)
        self.block = self.blocks[self.comm.rank]
        self._counts = [len(b.members) for b in self.blocks]
        self._order = np.concatenate([b.members for b in self.blocks])  # gathered position -> member

    def __repr__(self) -> str:
        return f"DistributedEggroll({self.strategy!r}, mode={self.mode!r}, rank {self.comm.rank} of {self.comm.size})"

    def init(self, params: dict, *, seed: int = 0) -> _es.EggrollState:
        """``strategy.init`` (every rank must pass the same params and seed).

        Parameters
        ----------
        params : dict of str to array
        seed : int

        Returns
        -------
        EggrollState
        """
        state = self.strategy.init(params, seed=seed)
        if self.check:
            self.check_identical(state.params)
        return state

    def ask(self, state: _es.EggrollState) -> tuple[_es.Perturbations, _es.Perturbations]:
        """The whole population's perturbations and this rank's view of them.

        Parameters
        ----------
        state : EggrollState

        Returns
        -------
        perts : Perturbations
            What :meth:`tell` needs: all ``N`` members in the ``"fitness"``
            mode; in the ``"allreduce"`` mode only this rank's pairs (drawn
            alone: noise generation is split across ranks too).
        local : Perturbations
            This rank's members (:func:`local_view`): score these.
        """
        if self.mode == "allreduce":
            local = self.strategy.ask(state, pairs=self.block.pairs)
            return local, local
        perts = self.strategy.ask(state)
        return perts, local_view(perts, self.block)

    def gather_fitness(self, local_fitness) -> Any:
        """All ranks' fitness blocks as the whole population's fitness vector (one ``Allgatherv``).

        Parameters
        ----------
        local_fitness : array, shape (n_local,)
            This rank's members' raw fitness, in :func:`local_view` order.

        Returns
        -------
        array, shape (N,)
            In member order, same namespace, device and dtype as ``local_fitness``.
        """
        n_local = len(self.block.members)
        if not hasattr(local_fitness, "shape") or not hasattr(local_fitness, "dtype"):
            raise TypeError(f"local_fitness must be an array of shape ({n_local},), got {type(local_fitness).__name__}")
        xp = _backend.array_namespace(local_fitness)
        if tuple(int(s) for s in local_fitness.shape) != (n_local,):
            raise ValueError(f"local_fitness has shape {tuple(local_fitness.shape)} but rank {self.comm.rank} scores "
                             f"{n_local} members; return one fitness per member of the local population")
        if not xp.isdtype(local_fitness.dtype, "real floating"):
            raise TypeError(f"local_fitness has dtype {local_fitness.dtype}; pass float32 or float64 fitness")
        # non-finite values are refused after the exchange, by every rank at once (no rank is left waiting)
        gathered = self.comm.allgatherv(self.comm.host_buffer(local_fitness, "fitness"), self._counts)
        full = np.empty_like(gathered)
        full[self._order] = gathered
        return _backend.to_device(full, xp, device=_backend.device_of(local_fitness))

    def gather_members(self, local_rows) -> np.ndarray:
        """Every rank's per-member host rows as the whole population's, in member order (one ``Allgatherv``).

        For small per-member side results that every rank needs, e.g. the
        observation sums of an RL rollout (the examples' ``--mpi`` mode: each
        rank then sums the rows of all ``N`` members in member order, with the
        same rounding as one process).

        Parameters
        ----------
        local_rows : numpy.ndarray, shape (n_local, ...)
            One row per member of this rank's block, in :func:`local_view`
            order; the same trailing shape and dtype on every rank.

        Returns
        -------
        numpy.ndarray, shape (N, ...)
            Row ``i`` is member ``i``'s.
        """
        rows = np.ascontiguousarray(local_rows)
        n_local = len(self.block.members)
        if rows.ndim < 1 or int(rows.shape[0]) != n_local:
            raise ValueError(f"local_rows has shape {rows.shape} but rank {self.comm.rank} scores {n_local} members; "
                             f"pass one row per member of the local population, shape ({n_local}, ...)")
        tail = tuple(int(d) for d in rows.shape[1:])
        width = math.prod(tail)
        gathered = self.comm.allgatherv(rows.reshape(-1), [c * width for c in self._counts])
        gathered = gathered.reshape((self.strategy.pop_size,) + tail)
        full = np.empty_like(gathered)
        full[self._order] = gathered
        return full

    def tell(self, state: _es.EggrollState, perts: _es.Perturbations, local_fitness) -> tuple[_es.EggrollState, dict]:
        """Exchange the fitness and update (the same new state on every rank).

        Parameters
        ----------
        state : EggrollState
        perts : Perturbations
            The first value :meth:`ask` returned.
        local_fitness : array, shape (n_local,)
            This rank's members' raw fitness (higher is better).

        Returns
        -------
        state : EggrollState
        info : dict
            ``strategy.tell``'s (``fitness_mean``, ``fitness_max``, ``sigma``,
            ``grad_norm``) plus ``bytes_sent``: payload bytes this rank sent
            during the update.
        """
        sent = self.comm.bytes_sent
        fitness = self.gather_fitness(local_fitness)
        if self.mode == "fitness":
            state, info = self.strategy.tell(state, perts, fitness)
        else:
            state, info = self._tell_allreduce(state, perts, fitness)
        if self.check:
            self.check_identical(state.params)
        info["bytes_sent"] = self.comm.bytes_sent - sent
        return state, info

    def step(self, state: _es.EggrollState, score: Callable) -> tuple[_es.EggrollState, dict]:
        """One generation: ask, ``score`` this rank's members, tell.

        Parameters
        ----------
        state : EggrollState
        score : callable(Perturbations) -> array, shape (n_local,)
            Fitness of the members of the local population it is given, e.g.
            ``lambda p: es.population_fitness(model, state.params, xb, p, fit)``.

        Returns
        -------
        state : EggrollState
        info : dict
            As for :meth:`tell`.
        """
        perts, local = self.ask(state)
        return self.tell(state, perts, score(local))

    def _tell_allreduce(self, state, local, fitness):
        strategy = self.strategy
        if not isinstance(local, _es.Perturbations) or local.pop_size != len(self.block.members):
            raise ValueError(f"perts must be what ask() returned in the 'allreduce' mode (this rank's "
                             f"{len(self.block.members)} members); call ask(state) again")
        if local.generation != state.generation:
            raise ValueError(f"perts are for generation {local.generation} but the state is at {state.generation}; "
                             "call ask(state) again")
        xp = _es.fitness.check_fitness(fitness, strategy.pop_size)
        # the whole population's shaped fitness, exactly as strategy.tell shapes it (a variant's own shape included)
        if type(strategy).shape is _es.Eggroll.shape:
            f_hat = _es.fitness.shape_checked(xp, fitness, strategy.fitness, group_size=strategy.group_size)
        else:
            f_hat = strategy.shape(fitness)
        idx = xp.asarray(self.block.members.tolist(), dtype=xp.int64, device=_backend.device_of(fitness))
        # this rank's terms of sum_i f_hat_i E_i, scaled by the WHOLE population's c
        part = _es.es_gradient(xp.take(f_hat, idx, axis=0), local)
        whole = local._replace(pop_size=strategy.pop_size)
        rescale = _es.gradient.gradient_scale(whole) / _es.gradient.gradient_scale(local)
        keys = list(part)
        ref = state.params[keys[0]]
        pxp = _backend.array_namespace(ref)
        flat = pxp.concat([pxp.reshape(part[k], (-1,)) for k in keys]) * rescale
        if cuda_aware(pxp):
            total = self.comm.allreduce_sum(flat)
        else:
            host = self.comm.allreduce_sum(self.comm.host_buffer(flat, "gradient"))
            total = _backend.to_device(host, pxp, device=_backend.device_of(ref))
        summed, offset = {}, 0
        for k in keys:
            shape = tuple(int(s) for s in part[k].shape)
            size = math.prod(shape)
            summed[k] = -pxp.reshape(total[offset:offset + size], shape)
            offset += size
        # the loss gradient of every parameter as strategy.tell forms it (frozen ones: None, or zeros where the
        # convention hands the optimiser zeros), then the variant's transform on the WHOLE summed gradient
        # (EggrollBaseline's global-norm clipping): after the all-reduce, never per rank
        frozen_zeros = _es.conventions.get_convention(local.convention).frozen_grads == "zeros"
        grads = {k: summed[k] if k in summed else (pxp.zeros_like(v) if frozen_zeros else None)
                 for k, v in state.params.items()}
        grads = strategy._transform_grads(grads)
        params, opt_state = strategy.optimizer.update(grads, state.opt_state, state.params)
        norm2 = sum(float(pxp.sum(g * g)) for g in grads.values() if g is not None)
        info = {"fitness_mean": float(xp.mean(fitness)), "fitness_max": float(xp.max(fitness)),
                "sigma": local.sigma, "grad_norm": math.sqrt(norm2)}
        if isinstance(strategy, _es.EggrollBaseline):  # the entry its tell adds
            base = xp.asarray(list(strategy.baseline_members()), dtype=xp.int64, device=_backend.device_of(fitness))
            info["baseline_mean"] = float(xp.mean(xp.take(fitness, base, axis=0)))
        return _es.EggrollState(params, opt_state, state.generation + 1, state.seed), info

    def check_identical(self, params: dict) -> int:
        """Raise unless every rank holds bitwise the same ``params`` (one small all-gather).

        Parameters
        ----------
        params : dict of str to array
            This rank's parameters.

        Returns
        -------
        int
            The common :func:`params_checksum`.

        Raises
        ------
        RuntimeError
            Some ranks differ; the message lists every rank's checksum.
        """
        mine = params_checksum(params)
        every = self.comm.allgather_object(mine)
        if len(set(every)) != 1:
            raise RuntimeError(f"parameters differ across ranks (CRC-32 per rank: {every}); every rank must pass the "
                               "same data and seed, and the update must be deterministic")
        return mine

    def save(self, path: Any, state: _es.EggrollState) -> None:
        """Rank 0 writes the checkpoint (atomically); every rank returns once it is on disk.

        A failure on rank 0 raises the same error on every rank (nobody is left waiting).

        Parameters
        ----------
        path : str or path-like
            Where rank 0 writes (its folder must exist there).
        state : EggrollState
            The same on every rank; rank 0's is written.

        Returns
        -------
        None
        """
        error = None
        if self.comm.is_root:
            try:
                self.strategy.save(path, state)
            except Exception as exc:  # noqa: BLE001 - reported to every rank below
                error = f"{type(exc).__name__}: {exc}"
        error = self.comm.bcast_object(error, root=0)
        if error is not None:
            raise RuntimeError(f"rank 0 could not write the checkpoint {path!s}: {error}")

    def load(self, path: Any, *, like: dict | None = None, xp: Any = None, device: Any = None) -> _es.EggrollState:
        """Every rank reads the same checkpoint (any number of ranks can resume a run).

        Parameters
        ----------
        path : str or path-like
            Readable by every rank (a shared file system on a cluster).
        like, xp, device :
            As for :meth:`egdnp.es.Eggroll.load`.

        Returns
        -------
        EggrollState
            Checked to be bitwise the same on every rank.
        """
        errors = None
        try:
            state = self.strategy.load(path, like=like, xp=xp, device=device)
        except Exception as exc:  # noqa: BLE001 - every rank must learn of any rank's failure
            state, errors = None, f"{type(exc).__name__}: {exc}"
        every = self.comm.allgather_object(errors)
        failed = [(r, e) for r, e in enumerate(every) if e is not None]
        if failed:
            raise ValueError(f"could not resume from {path!s}: " + "; ".join(f"rank {r}: {e}" for r, e in failed))
        self.check_identical(state.params)
        return state
