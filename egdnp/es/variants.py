"""Strategy variants with EGGROLL's ``init`` / ``ask`` / ``tell`` API.

Each variant is an :class:`~egdnp.es.strategy.Eggroll` with one thing changed,
so conventions, noise maps, schedules, optimisers and the perturbed forwards
(:func:`egdnp.es.population_fitness`) work unchanged.  Each reproduces a noiser
of the official HyperscaleES JAX code under ``convention="hyperscalees-jax"``:

=====================  ==========================  ==============================================
class                  official noiser             what changes
=====================  ==========================  ==============================================
:class:`OpenES`        ``OpenES``                  every matrix gets full-rank noise ``s sigma eps``
                                                   (the baseline every ES paper compares against);
                                                   forward ``x W^T + s x eps^T``, memory ``O(N m n)``
:class:`SparseES`      ``Sparse``                  every matrix gets ``k`` random entries
                                                   (default ``max(m, n)``, with replacement) of
                                                   ``s sigma eps``; gradient times ``q = k/(m n)``
                                                   (official) or ``1/q`` (egdnp, see
                                                   :func:`egdnp.es.gradient.sparse_scale`)
:class:`EggrollBaseline`  ``EggRollBS``            the first pair of every group of ``group_size``
                                                   members is unperturbed (the baseline); shaped
                                                   fitness ``(f - f_baseline) / (std_group + 1e-8)``
                                                   with the baseline members' set to 0; the loss
                                                   gradient is clipped to global norm ``clip_norm``
                                                   before the optimiser (``optax.clip_by_global_norm``)
=====================  ==========================  ==============================================
"""

from __future__ import annotations

import math

from .. import _backend
from .fitness import check_fitness
from .perturbations import FullNoise, LowRankNoise, Perturbations, SparseNoise, StackedLowRankNoise, _as_int
from .strategy import Eggroll, EggrollState

__all__ = ["OpenES", "SparseES", "EggrollBaseline", "baseline_zscore", "clip_by_global_norm"]


class OpenES(Eggroll):
    """Full-rank OpenAI-ES (Salimans et al. 2017) with EGGROLL's API and conventions.

    Every parameter the plan would perturb with low-rank noise gets full-rank
    noise ``s_i sigma eps`` instead (addressed like a vector's: stream = its
    name); the ES gradient is ``c * sum_i f_hat_i E_i`` with the convention's
    ``c``.  Under ``"hyperscalees-jax"`` this is the official ``OpenES``
    noiser: ``-sqrt(N) mean(f_hat E)`` to the optimiser.

    Parameters
    ----------
    **kwargs
        As for :class:`~egdnp.es.strategy.Eggroll` (``pop_size``, ``sigma``,
        ``optimizer``, ``convention``, ``noise_map``, ...); ``rank`` is not used.

    Notes
    -----
    Perturbations hold ``eps`` of shape (P, *param shape) for every matrix:
    memory ``O(P m n)`` per matrix, which is exactly what EGGROLL avoids.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("rank", 1)
        super().__init__(**kwargs)

    def __repr__(self) -> str:
        return (f"OpenES(pop_size={self.pop_size}, sigma={self.sigma!r}, convention={self.convention.name!r}, "
                f"antithetic={self.antithetic}, fitness={self.fitness!r})")

    def _generate_kwargs(self) -> dict:
        return {"matrix_noise": "full"}


class SparseES(Eggroll):
    """Sparse perturbations: ``k`` random entries per matrix, with EGGROLL's API.

    Pair ``p`` of a matrix (m, n) perturbs ``k`` entries drawn uniformly with
    replacement by ``sigma * eps`` (:class:`~egdnp.es.perturbations.SparseNoise`);
    vectors are as in EGGROLL.  The forward adds ``s_i x_i E_{p_i}^T`` without
    a dense matrix, the gradient is a sum of one-hot products
    (:func:`~egdnp.es.gradient.sparse_weighted_sum`) times ``q = k/(m n)``
    under the HyperscaleES conventions (the official ``Sparse`` noiser) or
    ``1/q`` under egdnp's.

    Parameters
    ----------
    k : int, optional
        Entries per matrix; default ``max(m, n)`` (the official choice).
    **kwargs
        As for :class:`~egdnp.es.strategy.Eggroll`; ``rank`` is not used.
    """

    def __init__(self, *, k: int | None = None, **kwargs):
        kwargs.setdefault("rank", 1)
        super().__init__(**kwargs)
        self.k = None if k is None else _as_int("k", k, 1)

    def __repr__(self) -> str:
        return (f"SparseES(pop_size={self.pop_size}, k={self.k!r}, sigma={self.sigma!r}, "
                f"convention={self.convention.name!r}, fitness={self.fitness!r})")

    def _generate_kwargs(self) -> dict:
        return {"matrix_noise": "sparse", "sparse_k": self.k}


def baseline_zscore(fitness, group_size: int, *, eps: float = 1e-8):
    """Baseline-subtracted group z-score (the official ``EggRollBS.convert_fitnesses``).

    For every group of ``group_size`` consecutive members (members ``0`` and
    ``1`` of each group are the unperturbed baseline pair)::

        z = (f - f[group start]) / (std_ddof0(group) + eps);   z[baseline members] = 0

    Parameters
    ----------
    fitness : array, shape (N,)
        Raw fitness, ``N`` a multiple of ``group_size``.
    group_size : int
        G, even and >= 4 (one baseline pair plus at least one perturbed pair).
    eps : float

    Returns
    -------
    array, shape (N,)
    """
    xp = check_fitness(fitness)
    n = int(fitness.shape[0])
    g = _as_int("group_size", group_size, 4)
    if g % 2 or n % g:
        raise ValueError(f"group_size={g} must be even and divide the population {n} (one baseline pair per group)")
    s = xp.reshape(fitness, (n // g, g))
    z = (s - s[:, 0:1]) / (xp.std(s, axis=1, keepdims=True) + float(eps))
    keep = xp.asarray([0.0, 0.0] + [1.0] * (g - 2), dtype=fitness.dtype, device=_backend.device_of(fitness))
    return xp.reshape(z * keep, (n,))


def clip_by_global_norm(grads: dict, max_norm: float) -> tuple[dict, float]:
    """Scale every entry by ``max_norm / norm`` when the global norm exceeds ``max_norm`` (optax's rule).

    Parameters
    ----------
    grads : dict[str, array or None]
        Arrays of any shapes; None entries are left as they are.
    max_norm : float > 0

    Returns
    -------
    grads : dict[str, array or None]
        A new dict (the arrays themselves when no clipping happens).
    norm : float
        The global norm before clipping, ``sqrt(sum of squares of every entry)``.
    """
    norm2 = 0.0
    for g in grads.values():
        if g is not None:
            norm2 += float(_backend.array_namespace(g).sum(g * g))
    norm = math.sqrt(norm2)
    if norm < max_norm:
        return dict(grads), norm
    scale = float(max_norm) / norm
    return {k: (None if g is None else g * scale) for k, g in grads.items()}, norm


class EggrollBaseline(Eggroll):
    """EGGROLL with baseline subtraction (the official ``EggRollBS`` noiser).

    The population is ``N / group_size`` groups of ``group_size`` members.  The
    first pair of each group (members ``gG``, ``gG + 1``) is evaluated
    UNPERTURBED: its noise addresses are drawn as usual and then zeroed, as
    the official mask ``thread_id % G >= 2`` does.  Fitness is shaped by
    :func:`baseline_zscore` (improvement over the group's baseline in units
    of the group's spread), and the loss gradient is clipped to global norm
    ``clip_norm`` (over every parameter, frozen zeros included) before the
    optimiser -- the official ``optax.chain(clip_by_global_norm(trust_region_norm), solver)``.

    Parameters
    ----------
    group_size : int
        G, even, >= 4, dividing ``pop_size``.  A group shares one baseline;
        score the members of a group on the same data / environment seeds.
    clip_norm : float or None
        Global-norm bound of the update (official default 1.0); None: no clipping.
    **kwargs
        As for :class:`~egdnp.es.strategy.Eggroll`.  Antithetic sampling with
        the interleaved layout is required (the baseline is a pair).

    Notes
    -----
    With one group (``group_size == pop_size``) every number equals the
    official noiser's.  With several groups egdnp gives every group its own
    directions and keeps one shaped fitness per member; the official
    ``convert_fitnesses`` instead averages ``z`` over groups into ``G``
    per-direction values (its groups are repeated evaluations of the same
    ``G`` directions).
    """

    def __init__(self, *, group_size: int, clip_norm: float | None = 1.0, **kwargs):
        if "fitness" in kwargs:
            raise TypeError("EggrollBaseline shapes fitness by baseline_zscore; do not pass fitness=")
        super().__init__(**kwargs)
        if not self.antithetic or self.convention.layout != "interleaved":
            raise ValueError("EggrollBaseline needs antithetic=True and an interleaved-pair convention ('egdnp' or "
                             f"'hyperscalees-jax'); got antithetic={self.antithetic}, convention={self.convention.name!r}")
        g = _as_int("group_size", group_size, 4)
        if g % 2 or self.pop_size % g:
            raise ValueError(f"group_size={g} must be even, >= 4 and divide pop_size={self.pop_size} "
                             "(each group = one unperturbed baseline pair + perturbed pairs)")
        if clip_norm is not None:
            clip_norm = float(clip_norm)
            if not math.isfinite(clip_norm) or clip_norm <= 0.0:
                raise ValueError(f"clip_norm={clip_norm!r} must be a finite float > 0 (1.0 is the official default) or None")
        self.group_size, self.clip_norm, self.fitness = g, clip_norm, "baseline_zscore"

    def __repr__(self) -> str:
        return (f"EggrollBaseline(pop_size={self.pop_size}, group_size={self.group_size}, rank={self.rank}, "
                f"sigma={self.sigma!r}, clip_norm={self.clip_norm!r}, convention={self.convention.name!r})")

    def baseline_members(self) -> tuple[int, ...]:
        """Indices of the unperturbed members (the first pair of every group).

        Returns
        -------
        tuple of int
            ``(0, 1, G, G + 1, 2G, ...)``, ``2 * pop_size / group_size`` entries.
        """
        return tuple(i for i in range(self.pop_size) if i % self.group_size < 2)

    def ask(self, state: EggrollState, *, factors: dict | None = None, pairs: tuple | None = None) -> Perturbations:
        """Perturbations of ``state.generation`` with the baseline pairs' noise set to zero.

        Parameters
        ----------
        state : EggrollState
        factors : dict, optional
            Raw noise as for :meth:`Eggroll.ask` (the baseline pairs' entries are zeroed too).
        pairs : (int, int), optional
            A window of pairs, as for :meth:`Eggroll.ask` (baseline pairs keep their global index).

        Returns
        -------
        Perturbations
            As :meth:`Eggroll.ask`, factors of shape (P, ...) with pair ``k``
            zero when ``2k % group_size == 0``.
        """
        perts = super().ask(state, factors=factors, pairs=pairs)
        n_pairs, first = perts.pop_size // 2, perts.first_pair
        noise = {}
        for key, item in perts.noise.items():
            ref = item.values if isinstance(item, SparseNoise) else (item.eps if isinstance(item, FullNoise) else item.A)
            xp = _backend.array_namespace(ref)
            mask_host = [0.0 if (2 * (first + k)) % self.group_size == 0 else 1.0 for k in range(n_pairs)]
            mask = xp.asarray(mask_host, dtype=ref.dtype, device=_backend.device_of(ref))

            def masked(a):
                return a * xp.reshape(mask, (n_pairs,) + (1,) * (len(a.shape) - 1))

            if isinstance(item, (LowRankNoise, StackedLowRankNoise)):
                noise[key] = item._replace(A=masked(item.A), B=masked(item.B))
            elif isinstance(item, FullNoise):
                noise[key] = item._replace(eps=masked(item.eps))
            else:
                noise[key] = item._replace(values=masked(item.values))
        return perts._replace(noise=noise)

    def shape(self, fitness):
        """:func:`baseline_zscore` of the raw fitness with this strategy's group size.

        Parameters
        ----------
        fitness : array, shape (N,)

        Returns
        -------
        array, shape (N,)
        """
        return baseline_zscore(fitness, self.group_size)

    def _transform_grads(self, grads: dict) -> dict:
        if self.clip_norm is None:
            return grads
        return clip_by_global_norm(grads, self.clip_norm)[0]

    def tell(self, state: EggrollState, perts: Perturbations, fitness) -> tuple[EggrollState, dict]:
        """As :meth:`Eggroll.tell`, with baseline shaping and the clipped update.

        Parameters
        ----------
        state : EggrollState
        perts : Perturbations
            From :meth:`ask`.
        fitness : array, shape (N,)

        Returns
        -------
        state : EggrollState
        info : dict
            :meth:`Eggroll.tell`'s entries (``grad_norm`` after clipping) plus
            ``"baseline_mean"``, the mean raw fitness of the baseline members.
        """
        new_state, info = super().tell(state, perts, fitness)
        xp = check_fitness(fitness, self.pop_size)
        idx = xp.asarray(list(self.baseline_members()), dtype=xp.int64, device=_backend.device_of(fitness))
        info["baseline_mean"] = float(xp.mean(xp.take(fitness, idx, axis=0)))
        return new_state, info

