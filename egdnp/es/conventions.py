"""Conventions: the small choices where EGGROLL implementations disagree.

Three conventions are built in.  Two reproduce the public HyperscaleES
reference implementations exactly (given the same factors), the third is
egdnp's own default.  ``N`` is the population size, ``r`` the rank, ``sigma``
the noise scale, ``f_hat`` the shaped fitness, ``s_i = +-1`` the antithetic
sign of member ``i``, ``A~, B`` the raw standard-normal factors.

===========================  ==========================  ==========================  ==========================
item                         ``"hyperscalees-torch"``    ``"hyperscalees-jax"``      ``"egdnp"`` (default)
===========================  ==========================  ==========================  ==========================
antithetic layout            halves: ``i`` pairs with    interleaved: ``(2k,2k+1)``  interleaved: ``(2k,2k+1)``
                             ``i + N/2``                 sign ``+`` even, ``-`` odd  sign ``+`` even, ``-`` odd
matrix factors               ``A = s sigma/sqrt(r) A~``  ``A = s sigma/sqrt(r) A~``  ``A = s sigma/sqrt(r) A~``
                             ``B`` unscaled, shared      ``B`` unscaled, shared      ``B`` unscaled, shared
egdnp noise draw             ``L = normal((m+n) r)`` per (param name, pair, generation); ``B = L[:n r]`` as (n, r),
                             ``A~ = L[n r:]`` as (m, r) -- the JAX noiser's split, the same for all three
which params are perturbed   names containing            every param;                every param;
                             ``"weight"`` with 2 or 4    2-D and 4-D low rank        2-D and 4-D low rank
                             dims, low rank; nothing     (4-D flattened), others     (4-D flattened), others
                             else                        full rank ``s sigma eps``   full rank ``s sigma eps``
                                                                                     (``vectors="frozen"``
                                                                                     freezes them)
fitness shaping              ``(f - mean) /``            ``(f - mean) /``            centered ranks
                             ``(std_ddof1 + 1e-8)``      ``sqrt(var_ddof0 + 1e-5)``  ``rank/(N-1) - 0.5``
                                                         group_size > 0: group mean
                                                         subtracted, global var
ascent direction ``g``       ``1/sqrt(N) sum f_hat E``   ``1/sqrt(N) sum f_hat E``   ``1/(N sigma) sum f_hat E``
(``E`` = perturbation)       (= the port's ``g``)        (= ``-sqrt(N) raw``,        (Gaussian-smoothing
                                                         ``raw = sum f_hat E / N``)  gradient estimate)
update                       ``W <- W + lr g``           optimiser on loss grad      optimiser on loss grad
                                                         ``-g``                      ``-g``
noise across generations     fresh each generation       ``noise_reuse=0``: SAME     fresh each generation
                             (caller's generator)        noise every generation;
                                                         ``K >= 1``: new every K
frozen params and the        not updated at all (the     a ZERO gradient goes to     skipped (``None``): no
optimiser (``frozen_grads``) port's SGD touches only     the optimiser, which still  weight decay, no moment
                             perturbed weights):         runs on them: AdamW / SGD   update, no step count
                             ``None``, skipped           weight decay shrinks them   (``"none"``)
                                                         (optax on every leaf;
                                                         ``"zeros"``)
===========================  ==========================  ==========================  ==========================

The noise_reuse trap
--------------------
In the JAX noiser the generation index used to address noise is
``epoch // noise_reuse`` when ``noise_reuse >= 1`` and ``0`` when
``noise_reuse == 0``.  So ``noise_reuse=0`` does NOT mean "no reuse": it means
every generation sees the same perturbations forever, and training stalls
after the first few steps.  Use ``noise_reuse=1`` for fresh noise every
generation.  egdnp's default convention ignores noise_reuse unless it is
passed (fresh noise every generation), and :func:`noise_generation` documents
the mapping.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Convention", "CONVENTIONS", "get_convention", "noise_generation"]


@dataclass(frozen=True)
class Convention:
    """One implementation's choices (see the module table).

    Attributes
    ----------
    name : str
    layout : {"halves", "interleaved"}
        Where the antithetic partner of member ``i`` sits.
    fitness : {"zscore_ddof1", "zscore_var_eps", "centered_ranks"}
        Default fitness shaping (:func:`egdnp.es.fitness.shape_fitness`).
    grad_scale : {"sqrt_n", "n_sigma"}
        ``g = sum f_hat E / sqrt(N)`` or ``g = sum f_hat E / (N sigma)``.
    weight_names_only : bool
        Perturb only parameters whose name contains ``"weight"`` and that
        have 2 or 4 dims (the PyTorch port); everything else is frozen.
    vectors : {"full", "frozen"}
        Default treatment of parameters that are not low rank.
    noise_reuse : int or None
        Default noise_reuse (None: the generation addresses the noise).
    frozen_grads : {"none", "zeros"}
        What the optimiser receives for a parameter that is not perturbed
        (frozen by ``vectors="frozen"``, a noise map or the convention):
        ``"none"`` -- nothing, the optimiser skips it (no weight decay, no
        moment update); ``"zeros"`` -- a zero gradient, so the optimiser still
        runs on it (AdamW / SGD weight decay shrink it), as optax does for
        every leaf in the official JAX noiser.
    """

    name: str
    layout: str
    fitness: str
    grad_scale: str
    weight_names_only: bool
    vectors: str
    noise_reuse: int | None
    frozen_grads: str = "none"


CONVENTIONS: dict[str, Convention] = {
    "hyperscalees-torch": Convention(
        name="hyperscalees-torch",
        layout="halves",
        fitness="zscore_ddof1",
        grad_scale="sqrt_n",
        weight_names_only=True,
        vectors="frozen",
        noise_reuse=None,
    ),
    "hyperscalees-jax": Convention(
        name="hyperscalees-jax",
        layout="interleaved",
        fitness="zscore_var_eps",
        grad_scale="sqrt_n",
        weight_names_only=False,
        vectors="full",
        noise_reuse=1,
        frozen_grads="zeros",
    ),
    "egdnp": Convention(
        name="egdnp",
        layout="interleaved",
        fitness="centered_ranks",
        grad_scale="n_sigma",
        weight_names_only=False,
        vectors="full",
        noise_reuse=None,
    ),
}


def get_convention(convention) -> Convention:
    """Return the :class:`Convention` for a name (or pass one through).

    Raises
    ------
    ValueError
        Unknown name; the message lists the known ones.

    Parameters
    ----------
    convention : str or Convention
        ``"egdnp"``, ``"hyperscalees-torch"``, ``"hyperscalees-jax"`` or a Convention.

    Returns
    -------
    Convention
    """
    if isinstance(convention, Convention):
        return convention
    if convention not in CONVENTIONS:
        raise ValueError(f"convention={convention!r} is not one of {sorted(CONVENTIONS)}; pick one of those names")
    return CONVENTIONS[convention]


def noise_generation(generation: int, noise_reuse: int | None) -> int:
    """The generation index that addresses the noise of ``generation``.

    ``noise_reuse=None``: ``generation`` itself (fresh noise every generation).
    ``noise_reuse=0``: ``0`` -- the SAME noise for every generation (the JAX
    noiser's behaviour; almost never what you want).
    ``noise_reuse=K >= 1``: ``generation // K`` (new noise every K generations).

    Parameters
    ----------
    generation : int
    noise_reuse : int or None

    Returns
    -------
    int
    """
    generation = int(generation)
    if generation < 0:
        raise ValueError(f"generation={generation} must be >= 0")
    if noise_reuse is None:
        return generation
    if isinstance(noise_reuse, bool) or int(noise_reuse) != noise_reuse or noise_reuse < 0:
        raise ValueError(f"noise_reuse={noise_reuse!r} must be None or an int >= 0 (1 = fresh noise every generation)")
    noise_reuse = int(noise_reuse)
    return 0 if noise_reuse == 0 else generation // noise_reuse
