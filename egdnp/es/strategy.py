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

import math
from typing import Any, NamedTuple

from .. import _backend
from .. import optim as _optim
from .conventions import get_convention
from .fitness import METHODS, check_fitness, shape_fitness
from .gradient import loss_gradients
from .perturbations import Perturbations, _lowrank_dims, check_rank, generate, plan_parameters

__all__ = ["Eggroll", "EggrollState"]


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
        N; even with antithetic sampling.
    rank : int
        Rank r of every matrix perturbation (``1 <= r <= min(m, n)``).
    sigma : float or callable(generation) -> float
        Noise scale, or a schedule (e.g. from :mod:`egdnp.optim.schedules`).
    optimizer : egdnp.optim.Optimizer, optional
        Receives the loss gradient ``-g``.  Default ``optim.sgd(lr)``.
    lr : float or callable(step) -> float
        Only used to build the default optimiser.
    convention : {"egdnp", "hyperscalees-torch", "hyperscalees-jax"}
        See :mod:`egdnp.es.conventions`.
    antithetic : bool
    fitness : str, optional
        Fitness shaping method (:data:`egdnp.es.fitness.METHODS`); default the convention's.
    group_size : int
        Group size for group shaping (0: global).
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
    """

    def __init__(self, *, pop_size: int, rank: int = 1, sigma: Any = 0.05, optimizer=None, lr: Any = 0.01,
                 convention="egdnp", antithetic: bool = True, fitness: str | None = None, group_size: int = 0,
                 vectors: str | None = None, noise_reuse: Any = "default", noise_map=None):
        self.convention = get_convention(convention)
        if isinstance(pop_size, bool) or not isinstance(pop_size, int) or pop_size < 1:
            raise ValueError(f"pop_size={pop_size!r} must be an int >= 1")
        if antithetic and pop_size % 2:
            raise ValueError(f"pop_size={pop_size} is odd but antithetic=True needs pairs; pass an even pop_size or antithetic=False")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank={rank!r} must be an int >= 1")
        if not callable(sigma):
            sigma = float(sigma)
            if not math.isfinite(sigma) or sigma <= 0.0:
                raise ValueError(f"sigma={sigma!r} must be a finite float > 0 (or a schedule callable)")
        fitness = self.convention.fitness if fitness is None else fitness
        if fitness not in METHODS:
            raise ValueError(f"fitness={fitness!r} is not one of {METHODS}")
        if vectors is not None and vectors not in ("full", "frozen"):
            raise ValueError(f"vectors={vectors!r} must be 'full' or 'frozen'")
        self.pop_size, self.rank, self.sigma = int(pop_size), int(rank), sigma
        self.antithetic = bool(antithetic)
        self.fitness, self.group_size, self.vectors = fitness, int(group_size), vectors
        self.noise_reuse = self.convention.noise_reuse if noise_reuse == "default" else noise_reuse
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
            ``params`` is not a non-empty dict.
        ValueError
            The rank exceeds ``min(m, n)`` of a perturbed matrix, or the seed is out of range.
        """
        if not isinstance(params, dict) or not params:
            raise TypeError("params must be a non-empty dict[str, array]")
        plan = plan_parameters(params, convention=self.convention, vectors=self.vectors, noise_map=self.noise_map)
        check_rank(self.rank, {k: _lowrank_dims(params[k].shape) for k, how in plan.items() if how == "lowrank"})
        from .. import rng as _rng

        seed = _rng._check_seed(seed)
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
        if not isinstance(perts, Perturbations):
            raise TypeError(f"perts must come from ask(), got {type(perts).__name__}")
        if perts.generation != state.generation:
            raise ValueError(f"perts are for generation {perts.generation} but the state is at {state.generation}; call ask(state) again")
        xp = check_fitness(fitness, self.pop_size)
        f_hat = self.shape(fitness)
        grads = self._transform_grads(loss_gradients(f_hat, perts, state.params, convention=self.convention))
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
        from . import checkpoint

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
        from . import checkpoint

        return checkpoint.load(path, self, like=like, xp=xp, device=device)
