"""EGGROLL as an explicit-state strategy: ``init``, ``ask``, ``tell`` (the evosax shape).

The :class:`Eggroll` object holds static configuration only; everything that
changes lives in an :class:`EggrollState` that the caller passes in and gets back.

>>> from egdnp import es, nn, optim
>>> model = nn.mlp((64, 32, 10))
>>> strategy = es.Eggroll(pop_size=256, rank=1, sigma=0.05, optimizer=optim.sgd(0.05))
>>> state = strategy.init(model.init(seed=0), seed=1)
>>> for step in range(3):                                          # doctest: +SKIP
...     perts = strategy.ask(state)
...     f = es.classification_fitness(es.perturbed_model_forward(model, state.params, xb, perts), yb)
...     state, info = strategy.tell(state, perts, f)

One generation: ``ask`` draws the perturbations of ``state.generation`` (from
``state.seed``, or from ``factors=`` supplied by a port); the caller scores
every member; ``tell`` shapes the fitness, forms the ES gradient
(:mod:`egdnp.es.gradient`), hands ``-g`` to the optimiser and returns the next
state.  A run is a pure function of (params, seed, data): rerunning it
reproduces every bit.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, NamedTuple

from .. import _backend
from .. import optim as _optim
from .. import rng as _rng
from .conventions import get_convention
from .fitness import METHODS, check_fitness, shape_checked, shape_fitness, shaping_function
from .gradient import loss_gradients_checked
from .perturbations import Perturbations, _lowrank_dims, check_rank, generate, plan_parameters

__all__ = ["Eggroll", "EggrollState"]


def _takes_group_size(fn) -> bool:
    """Whether ``fn(f, group_size=G)`` is a valid call (True when the signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any((p.name == "group_size" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               or p.kind == p.VAR_KEYWORD for p in params)


class EggrollState(NamedTuple):
    """Everything that changes during an EGGROLL run.

    Attributes
    ----------
    params : dict[str, array]
    opt_state : NamedTuple
        The optimiser's state.
    generation : int
        Generations completed (the next ``ask`` draws this generation's noise).
    seed : int
        Noise seed.
    """

    params: dict
    opt_state: Any
    generation: int
    seed: int


class Eggroll:
    """Low-rank evolution strategy (static configuration).

    Parameters
    ----------
    pop_size : int
        N in ``[2, egdnp.rng.MAX_POP_SIZE]``; even with antithetic sampling.
    rank : int
        Rank r of every matrix perturbation (``1 <= r <= min(m, n)``).
    sigma : float or callable(generation) -> float
        Noise scale, or a schedule (e.g. from :mod:`egdnp.optim.schedules`).
    optimizer : egdnp.optim.Optimizer, optional
        Receives the loss gradient ``-g``; an object with ``init`` and
        ``update`` such as ``optim.adam(1e-3)``.  Default ``optim.sgd(lr)``.
    lr : float or callable(step) -> float
        Only used to build the default optimiser.
    convention : {"egdnp", "hyperscalees-torch", "hyperscalees-jax"}
        See :mod:`egdnp.es.conventions`.
    antithetic : bool
    fitness : str or callable, optional
        Fitness shaping: a name of :data:`egdnp.es.fitness.FITNESS_SHAPINGS`
        (the built-in methods and those of
        :func:`~egdnp.es.fitness.register_fitness_shaping`), or a function
        ``fn(f) -> f_hat`` of shape (N,) -> (N,); default the convention's.
        A checkpoint records a function by its registered name.
    group_size : int
        Group size for group shaping (0: global); must divide ``pop_size``.
        A shaping function gets it as ``fn(f, group_size=G)`` when > 0.
    vectors : {"full", "frozen"}, optional
        Non-matrix parameters; default the convention's.
    noise_reuse : int or None, optional
        Default the convention's; ``0`` means the SAME noise every generation
        (see docs/eggroll.md).
    noise_map : dict or callable, optional
        Per-parameter ``"lowrank" | "full" | "frozen"`` overriding the default
        (by number of dims): a dict of names or glob patterns, or
        ``fn(name, array) -> kind or None``; see
        :func:`egdnp.es.perturbations.plan_parameters`.

    Raises
    ------
    TypeError, ValueError
        Every argument is checked here, before any population is scored; the
        message names the argument and the fix.
    """

    def __init__(self, *, pop_size: int, rank: int = 1, sigma: Any = 0.05, optimizer=None, lr: Any = 0.01,
                 convention="egdnp", antithetic: bool = True, fitness: Any = None, group_size: int = 0,
                 vectors: str | None = None, noise_reuse: Any = "default", noise_map=None):
        self.convention = get_convention(convention)
        if isinstance(pop_size, bool) or not isinstance(pop_size, numbers.Integral):
            raise TypeError(f"pop_size={pop_size!r} must be an int >= 2")
        if not 2 <= pop_size <= _rng.MAX_POP_SIZE:
            raise ValueError(
                f"pop_size={pop_size} must lie in [2, {_rng.MAX_POP_SIZE}]: one member gives a zero ES gradient, "
                "and member ids are the 32-bit member word of the noise address"
            )
        if not isinstance(antithetic, bool):
            raise TypeError(f"antithetic={antithetic!r} must be True or False")
        if antithetic and pop_size % 2:
            raise ValueError(f"pop_size={pop_size} is odd but antithetic=True needs pairs; pass an even pop_size or antithetic=False")
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise ValueError(f"rank={rank!r} must be an int >= 1")
        if not callable(sigma):
            if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
                raise TypeError(f"sigma={sigma!r} must be a float > 0 or a schedule callable(generation) -> float")
            sigma = float(sigma)
            if not math.isfinite(sigma) or sigma <= 0.0:
                raise ValueError(f"sigma={sigma!r} must be a finite float > 0 (or a schedule callable)")
        fitness = self.convention.fitness if fitness is None else fitness
        shaping = shaping_function(fitness, arg="fitness")
        if isinstance(group_size, bool) or not isinstance(group_size, numbers.Integral) or group_size < 0:
            raise ValueError(f"group_size={group_size!r} must be an int >= 0 (0: no groups)")
        if fitness == "group_zscore" and group_size < 1:
            raise ValueError(f"group_size={group_size} with fitness='group_zscore'; pass a group size >= 1 that divides pop_size={pop_size}")
        if fitness == "centered_ranks" and group_size:
            raise ValueError(f"group_size={group_size} is not used by fitness='centered_ranks'; pass 0 or fitness='group_zscore'")
        if group_size and pop_size % group_size:
            raise ValueError(f"group_size={group_size} does not divide pop_size={pop_size}; pick a divisor of {pop_size}")
        if group_size and fitness not in METHODS and not _takes_group_size(shaping):
            raise ValueError(f"group_size={group_size} but the fitness shaping {fitness!r} takes no group_size keyword; "
                             "pass group_size=0, or a function fn(f, *, group_size) that uses it")
        if fitness == "zscore_ddof1" and group_size == 1:
            raise ValueError("group_size=1 with fitness='zscore_ddof1' leaves one member per group for a sample std; pass group_size >= 2")
        if vectors is not None and vectors not in ("full", "frozen"):
            raise ValueError(f"vectors={vectors!r} must be 'full' or 'frozen'")
        if noise_reuse != "default" and noise_reuse is not None and (
            isinstance(noise_reuse, bool) or not isinstance(noise_reuse, numbers.Integral) or noise_reuse < 0
        ):
            raise ValueError(f"noise_reuse={noise_reuse!r} must be None or an int >= 0 (1 = fresh noise every generation)")
        if optimizer is not None and not (callable(getattr(optimizer, "init", None))
                                          and callable(getattr(optimizer, "update", None))):
            raise TypeError(
                f"optimizer={optimizer!r} is not an optimiser; pass an object with init and update such as "
                "egdnp.optim.adam(1e-3) or egdnp.optim.sgd(0.01) (or None for sgd(lr))"
            )
        self.pop_size, self.rank, self.sigma = int(pop_size), int(rank), sigma
        self.antithetic = antithetic
        self.fitness, self.group_size, self.vectors = fitness, int(group_size), vectors
        self.noise_reuse = self.convention.noise_reuse if noise_reuse == "default" else (
            None if noise_reuse is None else int(noise_reuse))
        self.optimizer = _optim.sgd(lr) if optimizer is None else optimizer
        if noise_map is not None and not (isinstance(noise_map, dict) or callable(noise_map)):
            raise TypeError(f"noise_map must be a dict {{name or pattern: kind}} or a callable (name, array) -> kind; "
                            f"got {type(noise_map).__name__}")
        self.noise_map = noise_map

    def _generate_kwargs(self) -> dict:
        """Extra keywords of :func:`generate` set by strategy variants (none here)."""
        return {}

    def _transform_grads(self, grads: dict) -> dict:
        """Hook for variants between the ES gradient and the optimiser (identity here)."""
        return grads

    def __repr__(self) -> str:
        return (f"Eggroll(pop_size={self.pop_size}, rank={self.rank}, sigma={self.sigma!r}, "
                f"convention={self.convention.name!r}, antithetic={self.antithetic}, fitness={self.fitness!r})")

    def sigma_at(self, generation: int) -> float:
        """The noise scale of ``generation`` (a Python float).

        Parameters
        ----------
        generation : int
            0-based generation.

        Returns
        -------
        float
            ``sigma`` itself, or ``sigma(generation)`` when ``sigma`` is a schedule.

        Raises
        ------
        ValueError
            The schedule returned a non-finite or non-positive value.
        """
        if not callable(self.sigma):
            return self.sigma
        value = float(self.sigma(int(generation)))
        if not math.isfinite(value) or value <= 0.0:
            raise ValueError(f"sigma schedule returned {value!r} at generation {generation}; it must be a finite float > 0")
        return value

    def init(self, params: dict, *, seed: int = 0) -> EggrollState:
        """First state: copies of nothing -- ``params`` is referenced, never mutated.

        Raises if a perturbed matrix is smaller than the rank.

        Parameters
        ----------
        params : dict of str to array
            Initial parameters (``"fc1.weight"`` (n_out, n_in), ...); float32 or float64.
        seed : int
            In [0, 2**64 - 1]; addresses all of this run's noise.

        Returns
        -------
        EggrollState
            ``params`` (a new dict of the same arrays), the optimiser's initial
            state, ``generation=0`` and ``seed``.

        Raises
        ------
        TypeError
            ``params`` is not a non-empty dict of float32/float64 arrays of one library.
        ValueError
            The rank exceeds ``min(m, n)`` of a perturbed matrix, or the seed is out of range.
        """
        if not isinstance(params, dict) or not params:
            raise TypeError(f"params must be a non-empty dict[str, array]; got {type(params).__name__}")
        _backend.check_float_arrays(params, "params", fix="EGGROLL perturbs float32 or float64 parameters")
        plan = plan_parameters(params, convention=self.convention, vectors=self.vectors, noise_map=self.noise_map)
        check_rank(self.rank, {k: _lowrank_dims(params[k].shape) for k, how in plan.items() if how == "lowrank"})
        seed = _rng.check_seed(seed)
        return EggrollState(params=dict(params), opt_state=self.optimizer.init(params), generation=0, seed=seed)

    def ask(self, state: EggrollState, *, factors: dict | None = None, pairs: tuple | None = None) -> Perturbations:
        """Perturbations of ``state.generation`` (see :func:`egdnp.es.perturbations.generate`).

        Parameters
        ----------
        state : EggrollState
            The current state; its ``generation``, ``seed`` and params (their
            namespace, device and dtype) address and place the noise.
        factors : dict, optional
            Raw noise supplied by the caller instead of egdnp's own: per perturbed
            key ``(A~ (P, m, r), B (P, n, r))`` for matrices or ``eps (P, *shape)``
            for vectors, ``P`` the number of pairs (the layout of a reference
            bundle's ``inputs/factors``).
        pairs : (int, int), optional
            Only the members of noise pairs ``[lo, hi)``, as a population of
            their own (one worker's share, see :func:`egdnp.es.perturbations.generate`).

        Returns
        -------
        Perturbations
            ``pop_size`` members: low-rank factors ``A`` (P, m, r) (already scaled by
            ``sigma / sqrt(rank)``) and ``B`` (P, n, r), or ``eps`` (P, *shape)
            (scaled by ``sigma``), with every member's pair and sign.
        """
        if not isinstance(state, EggrollState):
            raise TypeError(f"state must be the EggrollState of init or tell, got {type(state).__name__}")
        ref = next(iter(state.params.values()))
        xp = _backend.array_namespace(ref)
        dtype = "float64" if ref.dtype == xp.float64 else "float32"
        return generate(
            state.params, pop_size=self.pop_size, rank=self.rank, sigma=self.sigma_at(state.generation),
            seed=state.seed, generation=state.generation, convention=self.convention, antithetic=self.antithetic,
            vectors=self.vectors, noise_reuse=self.noise_reuse, factors=factors, xp=xp, dtype=dtype,
            device=_backend.device_of(ref), pairs=pairs, noise_map=self.noise_map, **self._generate_kwargs(),
        )

    def shape(self, fitness):
        """Shaped fitness of raw ``fitness`` (N,) with this strategy's method.

        Parameters
        ----------
        fitness : array, shape (N,)
            Raw fitness of every member (higher is better), finite floats.

        Returns
        -------
        array, shape (N,)
            The shaped fitness (z-score, centered ranks, ... as configured).
        """
        return shape_fitness(fitness, self.fitness, group_size=self.group_size)

    def tell(self, state: EggrollState, perts: Perturbations, fitness) -> tuple[EggrollState, dict]:
        """Update from the raw fitness of every member (higher is better).

        Parameters
        ----------
        state : EggrollState
        perts : Perturbations
            What :meth:`ask` returned for this state.
        fitness : array, shape (N,)
            Finite raw scores.

        Returns
        -------
        state : EggrollState
            New params, optimiser state, ``generation + 1``.
        info : dict
            ``{"fitness_mean", "fitness_max", "sigma", "grad_norm"}`` as Python floats.
        """
        if not isinstance(state, EggrollState):
            raise TypeError(f"state must be the EggrollState of init or tell, got {type(state).__name__}")
        if not isinstance(perts, Perturbations):
            raise TypeError(f"perts must come from ask(), got {type(perts).__name__}")
        if perts.generation != state.generation:
            raise ValueError(f"perts are for generation {perts.generation} but the state is at {state.generation}; call ask(state) again")
        _backend.check_float_arrays(state.params, "state.params")
        self._check_perts_fit(state.params, perts)
        ref = next(iter(state.params.values()))
        if type(fitness) is not type(ref):
            _backend.check_same_library(fitness, ref, "fitness", "state.params")
        # the only finiteness check of this generation (each one is a device sync on a GPU)
        xp = check_fitness(fitness, self.pop_size)
        if type(self).shape is Eggroll.shape:
            f_hat = shape_checked(xp, fitness, self.fitness, group_size=self.group_size)
        else:  # a variant's own shaping (e.g. EggrollBaseline's baseline-subtracted z-score)
            f_hat = self.shape(fitness)
        grads = self._transform_grads(loss_gradients_checked(xp, f_hat, perts, state.params, convention=self.convention))
        params, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        norm2 = 0.0
        for g in grads.values():
            if g is not None:
                norm2 += float(xp.sum(g * g))
        info = {
            "fitness_mean": float(xp.mean(fitness)),
            "fitness_max": float(xp.max(fitness)),
            "sigma": perts.sigma,
            "grad_norm": math.sqrt(norm2),
        }
        return EggrollState(params, opt_state, state.generation + 1, state.seed), info

    def save(self, path, state: EggrollState) -> None:
        """Write ``state`` and this strategy's noise settings to one ``.npz`` file, atomically.

        See :func:`egdnp.es.checkpoint.save`.

        Parameters
        ----------
        path : str or path-like
        state : EggrollState

        Returns
        -------
        None
        """
        from . import checkpoint  # here, not at the top: checkpoint imports this module

        checkpoint.save(path, self, state)

    def load(self, path, *, like: dict | None = None, xp: Any = None, device: Any = None) -> EggrollState:
        """Read a checkpoint of :meth:`save`; the run resumes bit for bit.

        See :func:`egdnp.es.checkpoint.load`.

        Parameters
        ----------
        path : str or path-like
        like : dict of str to array, optional
            The model's params; keys, shapes and dtypes must match the file's.
        xp : namespace or name, optional
        device : optional

        Returns
        -------
        EggrollState

        Raises
        ------
        ValueError
            The file's noise settings, parameters or optimiser state do not fit this strategy.
        """
        from . import checkpoint  # here, not at the top: checkpoint imports this module

        return checkpoint.load(path, self, like=like, xp=xp, device=device)

    def _check_perts_fit(self, params: dict, perts: Perturbations) -> None:
        """Every parameter this strategy perturbs has noise in ``perts`` and nothing else does.

        A key the perturbations do not cover would get no gradient; an
        optimiser without per-key state (plain SGD) would carry it along
        untrained.
        """
        if perts.pop_size != self.pop_size:
            raise ValueError(f"perts have {perts.pop_size} members but this strategy has pop_size={self.pop_size}; call ask(state)")
        plan = plan_parameters(params, convention=self.convention, vectors=self.vectors, noise_map=self.noise_map)
        expected = {k for k, how in plan.items() if how != "frozen"}
        if expected != perts.noise.keys():
            extra = sorted(expected - perts.noise.keys())
            gone = sorted(perts.noise.keys() - expected)
            raise ValueError(
                "state.params do not match the params the perts were drawn for: "
                + (f"{extra} would be trained but have no noise" if extra else "")
                + ("; " if extra and gone else "")
                + (f"{gone} have noise but are not perturbed params of the state" if gone else "")
                + "; call ask(state) for these params (and init the strategy with them)"
            )
