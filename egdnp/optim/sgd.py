"""Stochastic gradient descent with exactly ``torch.optim.SGD`` semantics (dampening 0).

For every parameter ``p`` with gradient ``g`` (update number ``t``, 0-based)::

    d_p = g + weight_decay * p                    # weight decay added to the gradient
    buf = d_p                     if t == 0       # first step: the buffer is the gradient
        = momentum * buf + d_p    otherwise
    d   = d_p + momentum * buf    if nesterov
        = buf                     if momentum != 0
        = d_p                     otherwise
    p   = p - lr(t) * d

A parameter whose gradient is missing or ``None`` is left alone and its
buffer untouched, as PyTorch does for ``p.grad is None``.  Buffers start as
zeros, so ``momentum * 0 + d_p == d_p`` reproduces PyTorch's first step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import _backend
from ._base import (Optimizer, check_float, check_lr, check_params, check_params_grads, check_state_keys,
                    check_state_type, learning_rate_at, register_state_type)

__all__ = ["SGDState", "sgd", "sgd_direction", "sgd_step"]


@register_state_type
class SGDState(NamedTuple):
    """State of :func:`sgd`.

    Attributes
    ----------
    count : int
        Number of updates done (the step passed to an ``lr`` schedule).
    momentum : dict[str, array] or None
        Momentum buffers keyed like params (``None`` when ``momentum == 0``).
    """

    count: int
    momentum: dict | None


def check_sgd_hyper(lr, momentum, nesterov, weight_decay):
    """Validate SGD hyper-parameters (the spec's checks); returns them as Python values."""
    lr = check_lr(lr)
    momentum = check_float("momentum", momentum, low=0.0, fix="pass momentum >= 0 (0 disables it)")
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov={nesterov!r} must be True or False")
    if nesterov and momentum <= 0.0:
        raise ValueError(f"Invalid nesterov=True with momentum={momentum}: Nesterov requires momentum > 0")
    weight_decay = check_float("weight_decay", weight_decay, low=0.0, fix="pass weight_decay >= 0")
    return lr, momentum, nesterov, weight_decay


def sgd_direction(grad, param, buf, *, momentum: float, nesterov: bool, weight_decay: float):
    """One parameter's descent direction and new momentum buffer.

    Parameters
    ----------
    grad, param : array, same shape
    buf : array or None
        Current momentum buffer (zeros before the first step); ``None`` when
        ``momentum == 0``.
    momentum, nesterov, weight_decay :
        As in :func:`sgd`.

    Returns
    -------
    d : array
        Direction; the update is ``param - lr * d``.
    new_buf : array or None
    """
    d_p = grad if weight_decay == 0.0 else grad + weight_decay * param
    if momentum == 0.0:
        return d_p, buf
    new_buf = momentum * buf + d_p
    d = d_p + momentum * new_buf if nesterov else new_buf
    return d, new_buf


def sgd_step(grads: dict, params: dict, bufs: dict | None, step_lr: float, *, momentum: float, nesterov: bool,
             weight_decay: float) -> tuple[dict, dict | None]:
    """One SGD step over a params dict: ``p - step_lr * d`` for every parameter with a gradient.

    Shared by :func:`sgd` and EGD's SGD step; the arguments are already checked.

    Parameters
    ----------
    grads : dict[str, array or None]
        Gradients keyed like ``params`` (a missing or ``None`` gradient skips its parameter).
    params : dict[str, array]
    bufs : dict[str, array] or None
        Momentum buffers keyed like ``params``; ``None`` when ``momentum == 0``.
    step_lr : float
        The learning rate of this step.
    momentum, nesterov, weight_decay :
        As in :func:`sgd`.

    Returns
    -------
    new_params : dict[str, array]
    new_bufs : dict[str, array] or None
        New dicts; the inputs are not modified.
    """
    new_params = dict(params)
    new_bufs = None if bufs is None else dict(bufs)
    for k, g in grads.items():
        if g is None:
            continue
        buf = None if new_bufs is None else new_bufs[k]
        d, buf = sgd_direction(g, params[k], buf, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        new_params[k] = params[k] - step_lr * d
        if new_bufs is not None:
            new_bufs[k] = buf
    return new_params, new_bufs


def sgd(lr: Any = 1e-2, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> Optimizer:
    """SGD with momentum, Nesterov and weight decay (``torch.optim.SGD``, dampening 0).

    Parameters
    ----------
    lr : float > 0 or callable(step: int) -> float
        Learning rate, or a schedule called with the 0-based update number.
    momentum : float >= 0
    nesterov : bool
        Requires ``momentum > 0``.
    weight_decay : float >= 0
        L2 penalty added to the gradient.

    Returns
    -------
    Optimizer
        ``init(params) -> SGDState``;
        ``update(grads, state, params) -> (params, state)``, pure (new dicts).

    Raises
    ------
    ValueError
        ``lr <= 0``, ``momentum < 0``, Nesterov without momentum, ``weight_decay < 0``.
    """
    lr, momentum, nesterov, weight_decay = check_sgd_hyper(lr, momentum, nesterov, weight_decay)

    def init(params: dict) -> SGDState:
        check_params(params)
        if momentum == 0.0:
            return SGDState(0, None)
        bufs = {}
        for k, p in params.items():
            xp = _backend.array_namespace(p)
            bufs[k] = xp.zeros_like(p)
        return SGDState(0, bufs)

    def update(grads: dict, state: SGDState, params: dict):
        check_params_grads(grads, params)
        check_state_type(state, SGDState)
        if (state.momentum is None) != (momentum == 0.0):
            raise ValueError(
                f"state.momentum is {'None' if state.momentum is None else 'a dict of buffers'} but this sgd has "
                f"momentum={momentum}; pass the state of an sgd with the same momentum setting (or init(params))"
            )
        check_state_keys(state.momentum, params, "state.momentum")
        new_params, new_bufs = sgd_step(grads, params, state.momentum, learning_rate_at(lr, state.count),
                                        momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        return new_params, SGDState(state.count + 1, new_bufs)

    return Optimizer(init, update)
