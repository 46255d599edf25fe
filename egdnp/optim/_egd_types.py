"""EGD's static config, its state and its cycle report, with their checks.

:class:`EGDConfig` holds the knobs of :func:`egdnp.optim.egd.egd` (validated
by :func:`make_config`), :class:`EGDState` everything a run needs to resume
bit for bit, :class:`EvolutionReport` what one cycle did (built by the cycle,
:mod:`egdnp.optim._egd_cycle`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple

from .. import _backend
from .. import rng as _rng
from ._base import check_float, check_state_keys, check_state_type, register_state_type
from ._egd_recombination import check_recombination
from .sgd import check_sgd_hyper

__all__ = ["EGDConfig", "EGDState", "EvolutionReport", "make_config", "check_params", "check_state", "new_sigma"]

MAX_SEED = 2**64 - 1
STORAGE = ("array", "seed")
MUTATION = ("full", "lowrank")
ACCEPT = ("always", "if_better")


@dataclasses.dataclass(frozen=True)
class EGDConfig:
    """Static hyper-parameters of EGD (validated by :func:`make_config`); see :func:`egdnp.optim.egd.egd`.

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

    Every field is the keyword argument of :func:`egdnp.optim.egd.egd` of the
    same name, with its default and meaning.
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


@register_state_type
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
    recombine : str or None
        The recombination the run uses (``EGDConfig.recombine``), recorded so
        that a saved state names it; ``None`` in states saved before it was
        recorded.  ``update`` and ``evolve`` write their optimiser's name;
        loading a state whose recombination is not registered is refused.
    """

    step: int
    cycle: int
    sigma: float
    seed: int
    momentum: dict | None
    recombine: str | None = None


@dataclasses.dataclass(frozen=True)
class EvolutionReport:
    """What one evolution cycle did (built by the cycle, returned by ``update`` and passed to ``callback``).

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
    recombine = check_recombination(cfg.recombine)
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


def check_params(params: dict) -> None:
    """``params`` is a non-empty dict of float32/float64 arrays of one library."""
    if not isinstance(params, dict) or not params:
        raise TypeError(f"params must be a non-empty dict[str, array]; got {type(params).__name__}")
    _backend.check_float_arrays(params, "params", fix="EGD mutates float32 or float64 parameters")


def check_state(cfg: EGDConfig, state, params: dict) -> None:
    """The state is an EGDState whose scalars are valid and whose buffers fit ``params``."""
    check_state_type(state, EGDState)
    for name in ("step", "cycle"):
        value = getattr(state, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"state.{name}={value!r} must be an int >= 0; pass the state init or update returned")
    check_float("state.sigma", state.sigma, low=0.0, low_inclusive=False,
                fix="pass the state init or update returned")
    _rng.check_seed(state.seed)
    if (state.momentum is None) != (cfg.momentum == 0.0):
        raise ValueError(
            f"state.momentum is {'None' if state.momentum is None else 'a dict of buffers'} but this optimiser "
            f"has momentum={cfg.momentum}; pass a state of an EGD with the same momentum setting (or init(params))"
        )
    check_state_keys(state.momentum, params, "state.momentum")
    if state.recombine is not None:
        check_recombination(state.recombine, "state.recombine")


def new_sigma(cfg: EGDConfig, step: int, sigma: float) -> float:
    """Sigma after step ``step``: ``cfg.sigma_schedule(step, sigma)`` checked, or ``sigma`` without a schedule."""
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
