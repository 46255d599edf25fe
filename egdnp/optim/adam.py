"""Adam and AdamW with exactly ``torch.optim.Adam`` / ``torch.optim.AdamW`` semantics.

For every parameter ``p`` with gradient ``g``, at update ``t = count + 1``
(PyTorch's single-tensor code path, written out)::

    Adam:   g = g + weight_decay * p                  (L2 added to the gradient)
    AdamW:  p = p * (1 - lr * weight_decay)           (decoupled decay, before the moments)
    m   = m + (1 - beta1) * (g - m)                   (torch's lerp)
    v   = beta2 * v + (1 - beta2) * g * g
    vmax = max(vmax, v)                               (amsgrad only; v below is then vmax)
    bc1 = 1 - beta1**t;  bc2 = 1 - beta2**t
    p   = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)

A parameter whose gradient is missing or ``None`` is skipped (moments untouched).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .. import _backend
from ._base import (Optimizer, check_float, check_lr, check_params, check_params_grads, check_state_keys,
                    check_state_type, learning_rate_at, register_state_type)

__all__ = ["AdamState", "adam", "adamw"]


@register_state_type
class AdamState(NamedTuple):
    """State of :func:`adam` / :func:`adamw`.

    Attributes
    ----------
    count : int
        Updates done so far (the lr schedule's step).
    steps : dict[str, int]
        Per-parameter step counts (PyTorch keeps one per parameter: a
        parameter skipped because its gradient was ``None`` does not advance).
    exp_avg, exp_avg_sq : dict[str, array]
        First and second moments keyed like params.
    max_exp_avg_sq : dict[str, array] or None
        Running maximum of ``exp_avg_sq`` (amsgrad only).
    """

    count: int
    steps: dict
    exp_avg: dict
    exp_avg_sq: dict
    max_exp_avg_sq: dict | None


def _make(lr, betas, eps, weight_decay, amsgrad, decoupled: bool, name: str) -> Optimizer:
    lr = check_lr(lr)
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"Invalid betas={betas!r}: pass a pair (beta1, beta2) in [0, 1)") from None
    beta1 = check_float("betas[0]", beta1, low=0.0, high=1.0, high_inclusive=False)
    beta2 = check_float("betas[1]", beta2, low=0.0, high=1.0, high_inclusive=False)
    eps = check_float("eps", eps, low=0.0, fix="pass eps >= 0 (1e-8 is usual)")
    weight_decay = check_float("weight_decay", weight_decay, low=0.0, fix="pass weight_decay >= 0")
    if not isinstance(amsgrad, bool):
        raise TypeError(f"amsgrad={amsgrad!r} must be True or False")

    def init(params: dict) -> AdamState:
        check_params(params)
        zeros = {}
        for k, p in params.items():
            zeros[k] = _backend.array_namespace(p).zeros_like(p)
        return AdamState(
            0,
            {k: 0 for k in params},
            dict(zeros),
            {k: _backend.array_namespace(p).zeros_like(p) for k, p in params.items()},
            {k: _backend.array_namespace(p).zeros_like(p) for k, p in params.items()} if amsgrad else None,
        )

    def update(grads: dict, state: AdamState, params: dict):
        check_params_grads(grads, params)
        check_state_type(state, AdamState)
        if not isinstance(state.steps, dict) or state.steps.keys() != params.keys():
            keys = sorted(state.steps) if isinstance(state.steps, dict) else type(state.steps).__name__
            raise ValueError(
                f"state.steps has keys {keys!r} but params has keys {sorted(params)!r}; "
                "initialise the optimiser state with init(params) for these params"
            )
        if (state.max_exp_avg_sq is None) == amsgrad:
            raise ValueError(
                f"state.max_exp_avg_sq is {'None' if state.max_exp_avg_sq is None else 'a dict'} but this optimiser "
                f"has amsgrad={amsgrad}; pass the state of an optimiser with the same amsgrad setting"
            )
        check_state_keys(state.exp_avg, params, "state.exp_avg")
        check_state_keys(state.exp_avg_sq, params, "state.exp_avg_sq")
        check_state_keys(state.max_exp_avg_sq, params, "state.max_exp_avg_sq")
        step_lr = learning_rate_at(lr, state.count)
        new_params, steps = dict(params), dict(state.steps)
        m_all, v_all = dict(state.exp_avg), dict(state.exp_avg_sq)
        vmax_all = None if state.max_exp_avg_sq is None else dict(state.max_exp_avg_sq)
        for k, g in grads.items():
            if g is None:
                continue
            xp = _backend.array_namespace(g)
            p = params[k]
            t = steps[k] + 1
            if weight_decay != 0.0:
                if decoupled:
                    p = p * (1.0 - step_lr * weight_decay)
                else:
                    g = g + weight_decay * p
            m = m_all[k] + (1.0 - beta1) * (g - m_all[k])
            v = beta2 * v_all[k] + (1.0 - beta2) * (g * g)
            bc1 = 1.0 - beta1**t
            bc2_sqrt = math.sqrt(1.0 - beta2**t)
            step_size = step_lr / bc1
            if vmax_all is not None:
                vmax = xp.maximum(vmax_all[k], v)
                vmax_all[k] = vmax
                denom = xp.sqrt(vmax) / bc2_sqrt + eps
            else:
                denom = xp.sqrt(v) / bc2_sqrt + eps
            new_params[k] = p - step_size * (m / denom)
            m_all[k], v_all[k], steps[k] = m, v, t
        return new_params, AdamState(state.count + 1, steps, m_all, v_all, vmax_all)

    init.__qualname__ = f"{name}.init"
    update.__qualname__ = f"{name}.update"
    return Optimizer(init, update)


def adam(lr: Any = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
         amsgrad: bool = False) -> Optimizer:
    """Adam (``torch.optim.Adam``): L2 weight decay added to the gradient.

    Parameters
    ----------
    lr : float > 0 or callable(step: int) -> float
    betas : (float, float) in [0, 1)
    eps : float >= 0
    weight_decay : float >= 0
    amsgrad : bool

    Returns
    -------
    Optimizer
        ``init(params) -> AdamState``; ``update(grads, state, params) -> (params, state)``.
    """
    return _make(lr, betas, eps, weight_decay, amsgrad, decoupled=False, name="adam")


def adamw(lr: Any = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
          amsgrad: bool = False) -> Optimizer:
    """AdamW (``torch.optim.AdamW``): decoupled decay ``p *= 1 - lr * weight_decay``.

    Parameters and return value as in :func:`adam` (default ``weight_decay=1e-2``).

    Parameters
    ----------
    lr : float or callable
    betas : (float, float)
    eps : float
    weight_decay : float
    amsgrad : bool

    Returns
    -------
    Optimizer
    """
    return _make(lr, betas, eps, weight_decay, amsgrad, decoupled=True, name="adamw")
