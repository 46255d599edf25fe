"""Learning-rate and sigma schedules as plain callables.

Learning-rate schedules are ``callable(step: int) -> float`` where ``step``
is the 0-based update number (the value the optimiser state's ``count``
holds before the update).  Pass one as ``lr=`` to :func:`egdnp.optim.sgd`,
:func:`egdnp.optim.adam` or :class:`egdnp.optim.egd.EGD`.

The EGD spec's sigma hook has the signature ``sigma_schedule(step, sigma) ->
new_sigma`` and is called after every SGD step with the new step count;
:func:`sigma_from` turns any learning-rate-style schedule into such a hook.

Every schedule returns a Python float and validates its arguments with a
ValueError naming the argument.
"""

from __future__ import annotations

import math
import operator
from typing import Callable

from ._base import check_float

__all__ = [
    "constant",
    "step_decay",
    "multi_step",
    "exponential",
    "cosine",
    "linear_warmup",
    "warmup_cosine",
    "piecewise",
    "sigma_from",
]


def _check_steps(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}={value!r}: must be an int >= {minimum}")
    return int(value)


def _check_step_arg(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int):
        try:
            step = operator.index(step)
        except TypeError:
            raise TypeError(f"step={step!r} must be an int") from None
    if step < 0:
        raise ValueError(f"step={step} must be >= 0")
    return int(step)


def constant(value: float) -> Callable[[int], float]:
    """``f(step) = value``.

    Parameters
    ----------
    value : float

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    value = check_float("value", value, low=0.0)

    def schedule(step: int) -> float:
        _check_step_arg(step)
        return value

    return schedule


def step_decay(init_value: float, step_size: int, gamma: float = 0.1) -> Callable[[int], float]:
    """``f(step) = init_value * gamma ** (step // step_size)`` (``torch.optim.lr_scheduler.StepLR``).

    Parameters
    ----------
    init_value : float
    step_size : int
    gamma : float

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    init_value = check_float("init_value", init_value, low=0.0)
    step_size = _check_steps("step_size", step_size, minimum=1)
    gamma = check_float("gamma", gamma, low=0.0)

    def schedule(step: int) -> float:
        return init_value * gamma ** (_check_step_arg(step) // step_size)

    return schedule


def multi_step(init_value: float, milestones, gamma: float = 0.1) -> Callable[[int], float]:
    """``f(step) = init_value * gamma ** (number of milestones <= step)`` (``MultiStepLR``).

    Parameters
    ----------
    init_value : float
    milestones : sequence of int
    gamma : float

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    init_value = check_float("init_value", init_value, low=0.0)
    gamma = check_float("gamma", gamma, low=0.0)
    ms = sorted(_check_steps("milestones[i]", m) for m in milestones)

    def schedule(step: int) -> float:
        step = _check_step_arg(step)
        return init_value * gamma ** sum(1 for m in ms if m <= step)

    return schedule


def exponential(init_value: float, gamma: float) -> Callable[[int], float]:
    """``f(step) = init_value * gamma ** step`` (``ExponentialLR``).

    Parameters
    ----------
    init_value, gamma : float

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    init_value = check_float("init_value", init_value, low=0.0)
    gamma = check_float("gamma", gamma, low=0.0)

    def schedule(step: int) -> float:
        return init_value * gamma ** _check_step_arg(step)

    return schedule


def cosine(init_value: float, decay_steps: int, alpha: float = 0.0) -> Callable[[int], float]:
    """Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``, then flat.

    ``f(step) = init_value * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, T) / T)) + alpha)``
    (optax ``cosine_decay_schedule``; ``CosineAnnealingLR`` with ``eta_min = alpha * init_value``).

    Parameters
    ----------
    init_value : float
    decay_steps : int
        T.
    alpha : float

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    init_value = check_float("init_value", init_value, low=0.0)
    decay_steps = _check_steps("decay_steps", decay_steps, minimum=1)
    alpha = check_float("alpha", alpha, low=0.0, high=1.0)

    def schedule(step: int) -> float:
        t = min(_check_step_arg(step), decay_steps)
        return init_value * ((1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * t / decay_steps)) + alpha)

    return schedule


def linear_warmup(init_value: float, peak_value: float, warmup_steps: int) -> Callable[[int], float]:
    """Linear ramp from ``init_value`` to ``peak_value`` over ``warmup_steps``, then ``peak_value``.

    Parameters
    ----------
    init_value, peak_value : float
    warmup_steps : int

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    init_value = check_float("init_value", init_value, low=0.0)
    peak_value = check_float("peak_value", peak_value, low=0.0)
    warmup_steps = _check_steps("warmup_steps", warmup_steps)

    def schedule(step: int) -> float:
        step = _check_step_arg(step)
        if warmup_steps == 0 or step >= warmup_steps:
            return peak_value
        return init_value + (peak_value - init_value) * step / warmup_steps

    return schedule


def warmup_cosine(peak_value: float, warmup_steps: int, decay_steps: int, init_value: float = 0.0,
                  end_value: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up to ``peak_value`` then cosine decay to ``end_value`` (``decay_steps`` counts both).

    Parameters
    ----------
    peak_value : float
    warmup_steps, decay_steps : int
    init_value, end_value : float

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    peak_value = check_float("peak_value", peak_value, low=0.0)
    warmup_steps = _check_steps("warmup_steps", warmup_steps)
    decay_steps = _check_steps("decay_steps", decay_steps)
    if decay_steps <= warmup_steps:
        raise ValueError(f"Invalid decay_steps={decay_steps}: must exceed warmup_steps={warmup_steps}")
    end_value = check_float("end_value", end_value, low=0.0)
    warm = linear_warmup(init_value, peak_value, warmup_steps)
    span = decay_steps - warmup_steps

    def schedule(step: int) -> float:
        step = _check_step_arg(step)
        if step < warmup_steps:
            return warm(step)
        t = min(step - warmup_steps, span)
        return end_value + (peak_value - end_value) * 0.5 * (1.0 + math.cos(math.pi * t / span))

    return schedule


def piecewise(boundaries, values) -> Callable[[int], float]:
    """``values[i]`` for ``boundaries[i-1] <= step < boundaries[i]`` (``len(values) == len(boundaries) + 1``).

    Parameters
    ----------
    boundaries : sequence of int
    values : sequence of float

    Returns
    -------
    callable
        ``f(step: int) -> float``.
    """
    bs = [_check_steps("boundaries[i]", b) for b in boundaries]
    if bs != sorted(bs):
        raise ValueError(f"Invalid boundaries={bs!r}: must be increasing")
    vs = [check_float("values[i]", v, low=0.0) for v in values]
    if len(vs) != len(bs) + 1:
        raise ValueError(f"Invalid values: {len(vs)} given, need len(boundaries) + 1 = {len(bs) + 1}")

    def schedule(step: int) -> float:
        step = _check_step_arg(step)
        return vs[sum(1 for b in bs if b <= step)]

    return schedule


def sigma_from(schedule: Callable[[int], float]) -> Callable[[int, float], float]:
    """Turn ``f(step)`` into the EGD hook ``sigma_schedule(step, sigma) -> f(step)`` (ignores the current sigma).

    Parameters
    ----------
    schedule : callable
        ``f(step) -> float``.

    Returns
    -------
    callable
        ``sigma_schedule(step, sigma) -> float`` for :func:`egdnp.optim.egd.egd`.
    """
    if not callable(schedule):
        raise TypeError(f"schedule={schedule!r} must be callable(step) -> float")

    def hook(step: int, sigma: float) -> float:
        return float(schedule(step))

    return hook
