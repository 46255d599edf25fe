"""EGD and gradient training across processes: data-parallel and member-parallel.

Data-parallel (the EGD spec's ``loss_reduce`` case; also plain SGD/Adam):
every rank holds a shard of the batch and the same parameters.

* :func:`average_gradients`: the mean of every rank's gradients with ONE
  ``Allreduce`` over one flat buffer (not one call per tensor);
* :func:`mean_loss`: a ``loss_reduce`` for :func:`egdnp.optim.egd.egd` -- each
  candidate's loss is the mean of the ranks' closure values (one float per
  candidate), so every rank selects the same elites.

Parameters stay bitwise identical on all ranks: every rank applies the same
update to the same numbers.

Member-parallel (:func:`member_parallel`): every rank has the whole batch;
rank ``r`` scores members ``r, r + size, ...`` of each evolution cycle and
the losses are exchanged (one 8-byte broadcast per member, from its scorer);
every rank selects the same elites and recombines them from their noise
addresses (use ``population_storage="seed"``), so no weights cross the
network.

>>> from egdnp import distributed
>>> from egdnp.optim.egd import egd
>>> opt = egd(lr=0.1, evo_interval=10, pop_size=8, loss_reduce=distributed.mean_loss())   # data-parallel
>>> # grads = distributed.average_gradients(model.loss_and_grad(params, x_shard, y_shard)[1])
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np  # host-side communication buffers

from .. import _backend
from .comm import Comm, cuda_aware, world

__all__ = ["average_gradients", "mean_loss", "member_parallel"]


def average_gradients(grads: dict, comm: Comm | None = None) -> dict:
    """The mean over ranks of every gradient, with one ``Allreduce`` of one flat buffer.

    Parameters
    ----------
    grads : dict of str to array or None
        This rank's gradients (e.g. of its shard of the batch), keyed like the
        params; every rank must pass the same keys, shapes and ``None`` entries.
    comm : Comm, optional
        Default :func:`egdnp.distributed.world`.

    Returns
    -------
    dict of str to array or None
        New arrays of the same shapes and dtypes (``None`` entries kept):
        ``sum_r grads_r / size``, identical on every rank.
    """
    comm = world() if comm is None else comm
    if not isinstance(grads, dict):
        raise TypeError(f"grads must be a dict[str, array] keyed like the params, got {type(grads).__name__}")
    keys = [k for k, g in grads.items() if g is not None]
    if not keys:
        return dict(grads)
    xp = _backend.array_namespace(*(grads[k] for k in keys))
    dtypes = {str(grads[k].dtype) for k in keys}
    if len(dtypes) != 1:
        raise TypeError(f"grads mix dtypes {sorted(dtypes)}; cast them to one float dtype before averaging")
    flat = xp.concat([xp.reshape(grads[k], (-1,)) for k in keys])
    if cuda_aware(xp):
        total = comm.allreduce_sum(flat)
    else:
        host = comm.allreduce_sum(comm.host_buffer(flat, "gradients"))
        total = _backend.to_device(host, xp, device=_backend.device_of(flat))
    total = total / float(comm.size)
    out, offset = dict(grads), 0
    for k in keys:
        shape = tuple(int(s) for s in grads[k].shape)
        size = math.prod(shape)
        out[k] = xp.reshape(total[offset:offset + size], shape)
        offset += size
    return out


def mean_loss(comm: Comm | None = None) -> Callable[[Any], float]:
    """A ``loss_reduce`` for EGD: the mean over ranks of a closure's loss (one float all-reduced).

    Parameters
    ----------
    comm : Comm, optional
        Default :func:`egdnp.distributed.world`.

    Returns
    -------
    callable(loss) -> float
        ``loss`` is a float or a 0-d/size-1 array (this rank's shard's mean
        loss); the result is the mean over ranks, the same float on every rank.
    """
    comm = world() if comm is None else comm

    def reduce(loss) -> float:
        value = np.array([float(_backend.to_host(loss).reshape(()) if hasattr(loss, "shape") else loss)],
                         dtype=np.float64)
        return float(comm.allreduce_sum(value)[0]) / comm.size

    return reduce


class _RemoteLoss:
    """A member's loss that its scoring rank broadcasts when EGD reads it (``float(...)``)."""

    __slots__ = ("comm", "owner", "value")

    def __init__(self, comm: Comm, owner: int, value: float | None):
        self.comm, self.owner, self.value = comm, owner, value

    def __float__(self) -> float:
        return self.comm.bcast_float(self.value, root=self.owner)


def member_parallel(closure: Callable, comm: Comm | None = None) -> Callable:
    """Wrap an EGD closure so that the ranks share each cycle's members.

    Member ``m >= 1`` of a cycle's ``"score"`` phase is scored only by rank
    ``m % size``; when EGD reads its loss (in member order, on every rank) the
    scoring rank broadcasts it (8 bytes).  The base (member 0), the
    recombined parameters (member -1) and ``"rescore"`` calls are scored on
    every rank (the same numbers everywhere).  Every rank therefore sees every
    loss, selects the same elites and -- with ``population_storage="seed"`` --
    recombines them from their noise addresses: parameters stay bitwise
    identical on all ranks and equal to a one-process run.

    Parameters
    ----------
    closure : callable(params, **kw) -> loss
        The forward-only EGD closure (every rank uses the same batch of a cycle).
    comm : Comm, optional
        Default :func:`egdnp.distributed.world`.

    Returns
    -------
    callable(params, member, cycle, phase) -> loss
        Pass it as EGD's closure (with ``loss_reduce=None``).

    Notes
    -----
    EGD still builds every candidate on every rank (regenerating its noise)
    before calling the closure; only the forward is split.
    """
    comm = world() if comm is None else comm
    if not callable(closure):
        raise TypeError(f"closure={closure!r} must be callable(params, **kw) -> loss")
    params_of = inspect.signature(closure).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params_of):
        names = ("member", "cycle", "phase")
    else:  # EGD's contract: the closure gets those of these keywords it accepts
        names = tuple(p.name for p in params_of if p.name in ("member", "cycle", "phase"))

    def wrapped(params, member=0, cycle=0, phase="score"):
        kw = {k: v for k, v in (("member", member), ("cycle", cycle), ("phase", phase)) if k in names}
        if member < 1 or phase != "score" or comm.size == 1:
            return closure(params, **kw)
        owner = member % comm.size
        if owner != comm.rank:
            return _RemoteLoss(comm, owner, None)
        raw = closure(params, **kw)
        value = float(_backend.to_host(raw).reshape(())) if hasattr(raw, "shape") else float(raw)
        return _RemoteLoss(comm, owner, value)

    return wrapped
