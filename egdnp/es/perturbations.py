"""Low-rank (and full-rank) perturbations of a parameter dict, addressed not stored.

For a matrix parameter ``W`` of shape (m, n) -- a conv weight (C_out, C_in,
kh, kw) is treated as the row-major flattening (C_out, C_in*kh*kw) -- member
``i`` of the population is evaluated at

    W_i = W + E_i,    E_i = A_i B_i^T,    A_i (m, r),  B_i (n, r)

and a vector parameter ``v`` (a bias, a norm scale) at ``v + s_i sigma eps_k``
(or not perturbed at all, ``vectors="frozen"``).

Antithetic sampling pairs members: both members of pair ``k`` share ``B_k``
and the unsigned ``A_k``, with opposite signs ``s_i = +1 / -1``.  Which members
form a pair is the convention's ``layout`` (see :mod:`egdnp.es.conventions`).

egdnp's own noise for pair ``k`` of parameter ``name`` in noise generation ``g``::

    L = egdnp.rng.normal(((m + n) * r,), seed=seed, stream=name, member=k, generation=g)
    B_k  = reshape(L[: n * r], (n, r))
    A~_k = reshape(L[n * r :], (m, r))          # the JAX noiser's split
    A_k  = sigma / sqrt(r) * A~_k
    eps_k = egdnp.rng.normal(shape, seed=seed, stream=name, member=k, generation=g)   # vectors

so nothing needs to be stored beyond one generation: any party holding
(seed, name, k, g) regenerates the same numbers on any backend.  Ports can pass
their own raw factors instead (``factors=``), and egdnp then applies exactly the
same scaling and signs to them.

Memory: ``O(P r (m + n))`` per matrix (``P`` pairs), never ``P m n``.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from typing import Any, NamedTuple

import numpy as np  # host-side only: the member -> (pair, sign) tables

from .. import _backend
from .. import rng as _rng
from .conventions import get_convention, noise_generation

__all__ = [
    "LowRankNoise",
    "StackedLowRankNoise",
    "SparseNoise",
    "FullNoise",
    "Perturbations",
    "matrix_shape",
    "plan_parameters",
    "member_layout",
    "generate",
    "check_rank",
    "pair_normals",
    "resolve_noise_map",
    "slice_stream",
    "slice_perturbations",
    "dense_noise",
]

KINDS = ("lowrank", "full", "frozen")


class LowRankNoise(NamedTuple):
    """Factors of one matrix parameter.

    Attributes
    ----------
    A : array, shape (P, m, r)
        Unsigned, scaled factors ``sigma / sqrt(r) * A~`` (one per pair).
    B : array, shape (P, n, r)
        Unscaled factors, shared by both members of a pair.
    shape : tuple of int
        The parameter's own shape ((m, n), or (C_out, C_in, kh, kw)).
    """

    A: Any
    B: Any
    shape: tuple


class StackedLowRankNoise(NamedTuple):
    """Factors of a stack of L matrices, a 3-D parameter (L, m, n): rank-r noise per slice.

    Slice ``l`` is its own matrix with its own factors (the official noiser's
    scan map): member ``i`` evaluates slice ``l`` at ``W[l] + s_i A[p_i, l] B[p_i, l]^T``.
    egdnp's own noise of slice ``l`` is addressed by the stream
    :func:`slice_stream` ``(name, l)`` = ``"<name>[<l>]"``.

    Attributes
    ----------
    A : array, shape (P, L, m, r)
        Unsigned, scaled factors ``sigma / sqrt(r) * A~``.
    B : array, shape (P, L, n, r)
    shape : tuple of int
        (L, m, n).
    """

    A: Any
    B: Any
    shape: tuple


class SparseNoise(NamedTuple):
    """Sparse perturbation of one matrix: ``k`` random entries per pair.

    Pair ``p`` adds ``values[p, j]`` at entry ``(rows[p, j], cols[p, j])``
    for ``j < k`` (entries drawn uniformly with replacement; a repeated entry
    adds up).  Member ``i`` evaluates ``W + s_i E_{p_i}``.

    Attributes
    ----------
    values : array, shape (P, k)
        Unsigned, scaled values ``sigma * eps``.
    rows, cols : array of int64, shape (P, k)
        Entry positions in the (m, n) matrix (a conv weight's row-major flattening).
    shape : tuple of int
        The parameter's own shape.
    """

    values: Any
    rows: Any
    cols: Any
    shape: tuple


class FullNoise(NamedTuple):
    """Full-rank noise of one vector (or any non-matrix) parameter.

    Attributes
    ----------
    eps : array, shape (P, *shape)
        Unsigned, scaled noise ``sigma * eps`` (one per pair).
    shape : tuple of int
    """

    eps: Any
    shape: tuple


class Perturbations(NamedTuple):
    """The perturbations of one generation (what :meth:`Eggroll.ask` returns).

    Attributes
    ----------
    noise : dict[str, LowRankNoise or FullNoise]
        Only the perturbed parameters; a missing key is not perturbed.
    pair : numpy.ndarray of int64, shape (N,)
        Host-side, read-only: the pair (noise index) of every member.
    sign : numpy.ndarray of int8, shape (N,)
        Host-side, read-only: the antithetic sign of every member (+1 or -1).
    pop_size : int
        N.
    rank : int
    sigma : float
    seed : int or None
        None when the factors were supplied by the caller.
    generation : int
        The generation of the strategy.
    noise_generation : int
        The generation index that addressed the noise (see noise_reuse).
    convention : str
    layout : {"halves", "interleaved", "none"}
    external : frozenset of str
        Names whose noise the caller supplied (the rest is egdnp's own,
        regenerable from ``seed``).
    first_pair : int
        Pair ``k`` of this object is noise index ``first_pair + k`` (``0``
        unless it holds a window of a larger population: ``generate(pairs=...)``).
    """

    noise: dict
    pair: tuple
    sign: tuple
    pop_size: int
    rank: int
    sigma: float
    seed: int | None
    generation: int
    noise_generation: int
    convention: str
    layout: str
    external: frozenset = frozenset()
    first_pair: int = 0

    @property
    def n_pairs(self) -> int:
        """Number of distinct noise draws P (N/2 with antithetic sampling, else N)."""
        if self.layout in ("halves", "interleaved"):
            return self.pop_size // 2
        if self.layout == "none":
            return self.pop_size
        return int(np.unique(np.asarray(self.pair)).size)


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------
def _as_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return value


def _as_sigma(sigma) -> float:
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise TypeError(f"sigma={sigma!r} must be a positive float") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"sigma={sigma!r} must be a finite float > 0")
    return value


def matrix_shape(shape) -> tuple[int, int] | None:
    """(m, n) of a 2-D parameter, (C_out, C_in*kh*kw) of a 4-D one, else None.

    Parameters
    ----------
    shape : tuple of int

    Returns
    -------
    (int, int) or None
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 4:
        return shape[0], shape[1] * shape[2] * shape[3]
    return None


def check_rank(rank, shapes: dict[str, tuple[int, int]]) -> int:
    """Validate ``1 <= rank <= min(m, n)`` for every matrix; return the rank as int.

    Parameters
    ----------
    rank : int
    shapes : dict of str to (int, int)
        Matrix shapes (m, n) of the low-rank parameters.

    Returns
    -------
    int

    Raises
    ------
    TypeError, ValueError
        Not an int, < 1, or larger than a matrix allows.
    """
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank={rank!r} must be an int >= 1")
    rank = int(rank)
    if rank < 1:
        raise ValueError(f"rank={rank} must be >= 1 (rank 1 is the usual EGGROLL setting)")
    for name, (m, n) in shapes.items():
        if rank > min(m, n):
            raise ValueError(
                f"rank={rank} exceeds min(m, n)={min(m, n)} of parameter {name!r} with matrix shape ({m}, {n}); "
                f"pass rank <= {min(m, n)} (a larger rank is no longer low rank)"
            )
    return rank


def slice_stream(name: str, index: int) -> str:
    """The noise stream of slice ``index`` of a stacked (L, m, n) parameter: ``"<name>[<index>]"``.

    Parameters
    ----------
    name : str
        The parameter key (``"blocks.weight"``).
    index : int
        Slice number in ``0 .. L - 1``.

    Returns
    -------
    str
    """
    return f"{name}[{int(index)}]"


def _is_pattern(key: str) -> bool:
    return any(c in key for c in "*?[")


def resolve_noise_map(noise_map, shapes: dict) -> dict[str, str]:
    """The kinds a noise map assigns: ``{name: "lowrank" | "full" | "frozen"}`` for the names it covers.

    Parameters
    ----------
    noise_map : dict, callable or None
        * a dict ``{key or glob pattern: kind}``: an exact key wins; otherwise
          the first pattern (``fnmatch``: ``*``, ``?``, ``[...]``) that matches,
          in the dict's order.  An exact key that is no parameter raises (a typo
          would otherwise be ignored silently).
        * a callable ``fn(name, value) -> kind or None`` with ``value`` the
          entry of ``shapes`` (the array when a params dict is given, else the
          shape tuple); None keeps the default for that name.
    shapes : dict[str, tuple of int or array]
        The parameters (or their shapes).

    Returns
    -------
    dict[str, str]
        Only the names the map decides.

    Raises
    ------
    TypeError, ValueError
        Not a dict/callable, a kind not in ``("lowrank", "full", "frozen")``,
        or an exact key that is not a parameter.
    """
    if noise_map is None:
        return {}
    out: dict[str, str] = {}
    if isinstance(noise_map, dict):
        for key, kind in noise_map.items():
            if not isinstance(key, str):
                raise TypeError(f"noise_map key {key!r} must be a parameter name or a glob pattern (str)")
            if kind not in KINDS:
                raise ValueError(f"noise_map[{key!r}]={kind!r} must be one of {KINDS}")
            if not _is_pattern(key) and key not in shapes:
                raise ValueError(f"noise_map names {key!r}, which is not a parameter; parameters are {list(shapes)} "
                                 "(use a glob pattern such as 'fc*.bias' to match several)")
        patterns = [(k, v) for k, v in noise_map.items() if _is_pattern(k)]
        for name in shapes:
            if name in noise_map:
                out[name] = noise_map[name]
                continue
            for pattern, kind in patterns:
                if fnmatch.fnmatchcase(name, pattern):
                    out[name] = kind
                    break
        return out
    if callable(noise_map):
        for name, value in shapes.items():
            kind = noise_map(name, value)
            if kind is None:
                continue
            if kind not in KINDS:
                raise ValueError(f"noise_map({name!r}, ...) returned {kind!r}; it must return one of {KINDS} or None")
            out[name] = kind
        return out
    raise TypeError(f"noise_map must be a dict {{name or pattern: kind}} or a callable (name, array) -> kind; "
                    f"got {type(noise_map).__name__}")


def plan_parameters(shapes: dict, *, convention="egdnp", vectors: str | None = None, noise_map=None) -> dict[str, str]:
    """How each parameter is perturbed: ``"lowrank"``, ``"full"`` or ``"frozen"``.

    Default: 2-D and 4-D parameters low rank, 3-D parameters (L stacked
    matrices) low rank per slice, everything else full rank (or frozen with
    ``vectors="frozen"``); ``"hyperscalees-torch"`` perturbs only ``*weight*``
    2-D/4-D parameters.  A ``noise_map`` overrides the default per parameter.

    Parameters
    ----------
    shapes : dict[str, tuple of int]
        Parameter shapes (a params dict works too: its arrays' shapes are used).
    convention : str
    vectors : {"full", "frozen"}, optional
        Treatment of parameters that are not matrices; the convention's default
        when None.  Ignored by ``"hyperscalees-torch"`` (only ``*weight*``
        2-D/4-D parameters are perturbed there).
    noise_map : dict or callable, optional
        Per-parameter override (see :func:`resolve_noise_map`), e.g.
        ``{"emb.weight": "frozen", "head.weight": "full", "*.bias": "frozen"}``.
        ``"lowrank"`` needs a 2-D, 3-D (stacked) or 4-D parameter.

    Returns
    -------
    dict[str, str], in the order of ``shapes``
    """
    conv = get_convention(convention)
    vectors = conv.vectors if vectors is None else vectors
    if vectors not in ("full", "frozen"):
        raise ValueError(f"vectors={vectors!r} must be 'full' (full-rank noise) or 'frozen' (not perturbed)")
    overrides = resolve_noise_map(noise_map, shapes)
    plan = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in (shape.shape if hasattr(shape, "shape") else shape))
        is_matrix = matrix_shape(shape) is not None
        if name in overrides:
            kind = overrides[name]
            if kind == "lowrank" and not (is_matrix or len(shape) == 3):
                raise ValueError(f"noise_map asks for low-rank noise on {name!r} of shape {shape}, which is not a matrix "
                                 "(2-D, 3-D stacked or 4-D conv); use 'full' or 'frozen' for it")
            plan[name] = kind
        elif conv.weight_names_only:
            plan[name] = "lowrank" if (is_matrix and "weight" in name) else "frozen"
        elif is_matrix or len(shape) == 3:
            plan[name] = "lowrank"
        else:
            plan[name] = "frozen" if vectors == "frozen" else "full"
    return plan


def _lowrank_dims(shape) -> tuple[int, int]:
    """(m, n) of a low-rank parameter: a matrix, a conv weight, or one slice of a stack."""
    shape = tuple(int(s) for s in shape)
    return (shape[1], shape[2]) if len(shape) == 3 else matrix_shape(shape)


def slice_perturbations(perts: "Perturbations", indices: dict) -> "Perturbations":
    """The perturbations of single slices of stacked parameters, as ordinary entries.

    ``indices={"stack.weight": l, "stack.bias": l}`` replaces the noise of a
    stacked (L, m, n) weight by the :class:`LowRankNoise` of its slice ``l``
    (and a (L, m) bias's :class:`FullNoise` by row ``l``), so the usual
    perturbed layers run slice ``l`` as its own matrix::

        h = es.perturbed_linear(h, W[l], b[l], es.slice_perturbations(perts, {"w": l, "b": l}),
                                weight_key="w", bias_key="b")

    Parameters
    ----------
    perts : Perturbations
    indices : dict[str, int]
        Stacked parameter key -> slice index.

    Returns
    -------
    Perturbations
        A new tuple sharing the arrays (slices are views); other entries unchanged.
    """
    noise = dict(perts.noise)
    for key, index in indices.items():
        item = noise.get(key)
        if item is None:
            continue  # not perturbed: nothing to slice
        length = int(item.shape[0])
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= int(index) < length:
            raise ValueError(f"slice index {index!r} for {key!r} must be an int in [0, {length})")
        index = int(index)
        if isinstance(item, StackedLowRankNoise):
            noise[key] = LowRankNoise(item.A[:, index, ...], item.B[:, index, ...], tuple(item.shape[1:]))
        elif isinstance(item, FullNoise) and len(item.shape) >= 2:
            noise[key] = FullNoise(item.eps[:, index, ...], tuple(item.shape[1:]))
        else:
            raise TypeError(f"perts.noise[{key!r}] is a {type(item).__name__} of shape {item.shape}; only stacked "
                            "low-rank noise or full noise with a leading slice axis can be sliced")
    return perts._replace(noise=noise)


def _one_hot(xp, index, size, dtype):
    """``(..., k) int -> (..., k, size)`` one-hot rows (array-API: a comparison, no scatter)."""
    grid = xp.reshape(xp.arange(size, dtype=index.dtype, device=_backend.device_of(index)), (1,) * len(index.shape) + (size,))
    return xp.astype(index[..., None] == grid, dtype)


def dense_noise(item, pair: int):
    """The explicit perturbation ``E_p`` of one pair, in the parameter's shape (tests, small models).

    Parameters
    ----------
    item : LowRankNoise, StackedLowRankNoise, SparseNoise or FullNoise
    pair : int
        Pair (noise) index.

    Returns
    -------
    array, shape ``item.shape``
        Unsigned: member ``i`` adds ``sign[i] * dense_noise(item, pair[i])``.
    """
    if isinstance(item, FullNoise):
        return item.eps[pair, ...]
    if isinstance(item, LowRankNoise):
        xp = _backend.array_namespace(item.A)
        return xp.reshape(xp.matmul(item.A[pair, ...], item.B[pair, ...].T), tuple(item.shape))
    if isinstance(item, StackedLowRankNoise):
        xp = _backend.array_namespace(item.A)
        return xp.matmul(item.A[pair, ...], xp.permute_dims(item.B[pair, ...], (0, 2, 1)))
    if isinstance(item, SparseNoise):
        xp = _backend.array_namespace(item.values)
        m, n = matrix_shape(item.shape)
        rows = _one_hot(xp, item.rows[pair, ...], m, item.values.dtype)  # (k, m)
        cols = _one_hot(xp, item.cols[pair, ...], n, item.values.dtype)  # (k, n)
        return xp.reshape(xp.matmul(rows.T * item.values[pair, ...], cols), tuple(item.shape))
    raise TypeError(f"{type(item).__name__} is not a noise item of egdnp.es.perturbations")


def member_layout(pop_size: int, *, antithetic: bool, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Pair index and sign of every member (host-side NumPy arrays, read-only).

    ``layout="halves"``: member ``i < N/2`` is ``(+, pair i)``, member
    ``i + N/2`` is ``(-, pair i)``.  ``layout="interleaved"``: member ``2k`` is
    ``(+, pair k)``, ``2k+1`` is ``(-, pair k)``.  Without antithetic sampling
    member ``i`` is ``(+, pair i)``.

    Parameters
    ----------
    pop_size : int
    antithetic : bool
    layout : {"halves", "interleaved"}

    Returns
    -------
    pair : numpy.ndarray of int64, shape (pop_size,)
    sign : numpy.ndarray of int8, shape (pop_size,), +1 or -1

    Arrays, not per-member Python objects: 9 bytes a member, so a population
    of 2**26 takes 0.6 GB here instead of several GB of tuples.
    """
    pop_size = _as_int("pop_size", pop_size, 1)
    if pop_size > _rng.MAX_POP_SIZE:
        raise ValueError(f"pop_size={pop_size} exceeds {_rng.MAX_POP_SIZE}: member ids are 32-bit words of the noise address")
    if not isinstance(antithetic, bool):
        raise TypeError(f"antithetic={antithetic!r} must be True or False")
    if not antithetic:
        return _frozen(np.arange(pop_size, dtype=np.int64)), _frozen(np.ones(pop_size, dtype=np.int8))
    if pop_size % 2:
        raise ValueError(
            f"pop_size={pop_size} is odd but antithetic sampling needs pairs; pass an even pop_size "
            "(or antithetic=False)"
        )
    half = pop_size // 2
    if layout == "halves":
        pair = np.concatenate([np.arange(half, dtype=np.int64)] * 2)
        sign = np.concatenate([np.ones(half, dtype=np.int8), np.full(half, -1, dtype=np.int8)])
    elif layout == "interleaved":
        pair = np.arange(pop_size, dtype=np.int64) // 2
        sign = np.tile(np.array([1, -1], dtype=np.int8), half)
    else:
        raise ValueError(f"layout={layout!r} must be 'halves' or 'interleaved'")
    return _frozen(pair), _frozen(sign)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def pair_normals(n_pairs: int, size: int, *, seed: int, stream, generation: int, dtype: str, xp, device=None, impl: str = "auto",
                 first: int = 0):
    """``out[k] = egdnp.rng.normal((size,), seed=seed, stream=stream, member=first + k, generation=generation)``.

    :func:`egdnp.rng.normal_members` under the name EGGROLL's code uses: one
    kernel launch for all pairs on NumPy (Numba) and CuPy, :func:`egdnp.rng.normal`
    per pair on other namespaces.

    Parameters
    ----------
    n_pairs, size : int
    seed : int
    stream : int or str
    generation : int
    dtype : {"float32", "float64"}
    xp : namespace
    device : optional
    impl : {"auto", "numba", "cupy", "array_api"}
    first : int
        Noise index of ``out[0]`` (a window of pairs ``first .. first + n_pairs - 1``).

    Returns
    -------
    array, shape (n_pairs, size)
    """
    return _rng.normal_members(n_pairs, size, seed=seed, stream=stream, first=first, generation=generation, dtype=dtype,
                               xp=xp, device=device, impl=impl)


def _check_external(name, kind, value, n_pairs, shape, rank, xp):
    """Shapes of caller-supplied raw factors; returns arrays in ``xp``."""
    if kind == "sparse":
        raise ValueError(f"factors[{name!r}]: caller-supplied noise is not supported for sparse perturbations; "
                         "leave it out (egdnp draws the entries from the seed)")
    if kind == "lowrank":
        m, n = _lowrank_dims(shape)
        stack = (int(shape[0]),) if len(shape) == 3 else ()
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"factors[{name!r}] must be a pair (A, B) of arrays with shapes {(n_pairs,) + stack + (m, rank)} "
                            f"and {(n_pairs,) + stack + (n, rank)}")
        a, b = value
        want_a, want_b = (n_pairs,) + stack + (m, rank), (n_pairs,) + stack + (n, rank)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise ValueError(
                f"factors[{name!r}] have shapes A {tuple(a.shape)}, B {tuple(b.shape)}; expected A {want_a} and "
                f"B {want_b} (pairs, rows, rank) for parameter shape {shape} with {n_pairs} pairs and rank {rank}"
            )
        return a, b
    want = (n_pairs,) + tuple(shape)
    if tuple(value.shape) != want:
        raise ValueError(f"factors[{name!r}] has shape {tuple(value.shape)}; expected {want} (pairs, *param shape)")
    return value


def generate(shapes: dict, *, pop_size: int, rank: int = 1, sigma: float = 0.05, seed: int | None = 0,
             generation: int = 0, convention="egdnp", antithetic: bool = True, vectors: str | None = None,
             noise_reuse: int | None = "default", factors: dict | None = None, xp=None, dtype="float32",
             device=None, pairs: tuple | None = None, noise_map=None, matrix_noise: str = "lowrank",
             sparse_k: int | None = None) -> Perturbations:
    """Perturbations of one generation.

    Parameters
    ----------
    shapes : dict[str, tuple of int] or dict[str, array]
        Parameter shapes, or the params dict itself.
    pop_size : int
        N (even with ``antithetic=True``).
    rank : int
        ``1 <= rank <= min(m, n)`` for every perturbed matrix.
    sigma : float > 0
    seed : int
        Noise seed (ignored when ``factors`` supplies every perturbed parameter).
    generation : int
        The strategy's generation; the noise is addressed by
        :func:`~egdnp.es.conventions.noise_generation` of it.
    convention : {"egdnp", "hyperscalees-torch", "hyperscalees-jax"}
    antithetic : bool
    vectors : {"full", "frozen"}, optional
    noise_reuse : int or None, optional
        Default: the convention's (see the noise_reuse trap in docs/eggroll.md).
    factors : dict, optional
        Raw standard-normal noise to use instead of egdnp's own:
        ``{name: (A~ (P, m, r), B (P, n, r))}`` for matrices and
        ``{name: eps (P, *shape)}`` for vectors, ``P`` the number of pairs
        (N/2 with antithetic sampling, else N).  egdnp scales them exactly as
        its own noise.  Parameters absent from ``factors`` use egdnp's noise.
    xp : namespace or name, optional
        Default: the namespace of the arrays in ``shapes``/``factors``, else NumPy.
    dtype : {"float32", "float64"}
    pairs : (int, int), optional
        Draw only the noise of pairs ``[lo, hi)`` of the population of
        ``pop_size``: the result is a population of their members (``2 (hi -
        lo)`` with antithetic sampling, in the convention's layout: for
        ``"halves"`` the ``+`` members of the window, then its ``-`` members),
        with ``first_pair = lo``; one worker's share of a distributed
        generation (:mod:`egdnp.distributed`).  Not with ``factors``.
    noise_map : dict or callable, optional
        Per-parameter ``"lowrank" | "full" | "frozen"`` overriding the default
        plan (see :func:`plan_parameters`).  A 3-D parameter (L, m, n) is a
        stack of L matrices: rank-r noise per slice (:class:`StackedLowRankNoise`,
        slice ``l`` addressed by the stream ``"<name>[<l>]"``).
    matrix_noise : {"lowrank", "full", "sparse"}
        How the parameters planned ``"lowrank"`` are perturbed: EGGROLL's
        low-rank factors; full-rank ``sigma * eps`` (OpenAI-ES,
        :class:`FullNoise` addressed like a vector's); or ``sparse_k`` random
        entries (:class:`SparseNoise`: values ``sigma * normal((k,), stream=name)``,
        flat positions ``floor(uniform((k,), stream=name + "#entries") * m n)``
        in float64 -- with replacement; exact for ``m n <= 2**24``).
    sparse_k : int, optional
        Entries per sparse matrix; default ``max(m, n)`` (the official noiser's k).

    Returns
    -------
    Perturbations
    """
    conv = get_convention(convention)
    if matrix_noise not in ("lowrank", "full", "sparse"):
        raise ValueError(f"matrix_noise={matrix_noise!r} must be 'lowrank', 'full' or 'sparse'")
    if sparse_k is not None:
        sparse_k = _as_int("sparse_k", sparse_k, 1)
    pop_size = _as_int("pop_size", pop_size, 1)
    sigma = _as_sigma(sigma)
    generation = _as_int("generation", generation, 0)
    if noise_reuse == "default":
        noise_reuse = conv.noise_reuse
    gen_noise = noise_generation(generation, noise_reuse)
    if not isinstance(shapes, dict):
        raise TypeError(f"shapes must be a dict name -> shape (or the params dict); got {type(shapes).__name__}")
    if xp is None:
        arrays = [v for v in shapes.values() if hasattr(v, "__array_namespace__")]
        if factors:
            for v in factors.values():
                arrays.extend(v if isinstance(v, (tuple, list)) else [v])
        xp = _backend.array_namespace(*arrays) if arrays else _backend.get_namespace("numpy")
    else:
        xp = _backend.get_namespace(xp)
    if dtype not in ("float32", "float64"):
        dtype = "float64" if dtype == getattr(xp, "float64", None) else ("float32" if dtype == getattr(xp, "float32", None) else dtype)
        if dtype not in ("float32", "float64"):
            raise TypeError(f"dtype={dtype!r} is not supported; use 'float32' or 'float64'")
    dt = getattr(xp, dtype)
    plain_shapes = {k: tuple(int(s) for s in (v.shape if hasattr(v, "shape") else v)) for k, v in shapes.items()}
    plan = plan_parameters(plain_shapes, convention=conv, vectors=vectors, noise_map=noise_map)
    if matrix_noise != "lowrank":
        for k, how in plan.items():
            if how == "lowrank" and matrix_noise == "sparse" and len(plain_shapes[k]) == 3:
                raise ValueError(f"matrix_noise='sparse' needs 2-D or 4-D matrices; {k!r} has the stacked shape "
                                 f"{plain_shapes[k]} (mark it 'full' or 'frozen' with noise_map)")
        plan = {k: (matrix_noise if how == "lowrank" else how) for k, how in plan.items()}
    lowrank_shapes = {k: _lowrank_dims(plain_shapes[k]) for k, how in plan.items() if how == "lowrank"}
    rank = check_rank(rank, lowrank_shapes)
    layout = conv.layout if antithetic else "none"
    n_pairs = pop_size // 2 if antithetic else pop_size
    first = 0
    if pairs is not None:  # a window of pairs [lo, hi): a population of just their members
        first, n_pairs = _pair_window(pairs, n_pairs, pop_size, factors)
        pop_size = 2 * n_pairs if antithetic else n_pairs
    pair, sign = member_layout(pop_size, antithetic=antithetic, layout=layout)
    factors = {} if factors is None else dict(factors)
    unknown = [k for k in factors if plan.get(k, "frozen") == "frozen"]
    if unknown:
        raise ValueError(f"factors has keys {unknown} that are not perturbed parameters under convention {conv.name!r}; perturbed: {[k for k, v in plan.items() if v != 'frozen']}")
    checked = {k: _check_external(k, plan[k], v, n_pairs, plain_shapes[k], rank, xp) for k, v in factors.items()}
    needs_seed = any(plan[k] != "frozen" and k not in checked for k in plan)
    if needs_seed:
        if seed is None:
            raise ValueError("seed=None but some perturbed parameters have no supplied factors; pass a seed or factors for every parameter")
        seed = _rng.check_seed(seed)
    a_scale = sigma / math.sqrt(rank)
    noise: dict[str, Any] = {}
    for name, how in plan.items():
        if how == "frozen":
            continue
        shape = plain_shapes[name]
        if how == "sparse":
            m, n = matrix_shape(shape)
            k = max(m, n) if sparse_k is None else sparse_k
            values = pair_normals(n_pairs, k, seed=seed, stream=name, generation=gen_noise, dtype=dtype, xp=xp,
                                  device=device, first=first)
            draws = [_rng.uniform((k,), seed=seed, stream=name + "#entries", member=first + p, generation=gen_noise,
                                  dtype="float64", xp=xp, device=device) for p in range(n_pairs)]
            flat_idx = xp.astype(xp.floor(xp.stack(draws, axis=0) * float(m * n)), xp.int64)
            noise[name] = SparseNoise(values * sigma, flat_idx // n, flat_idx % n, shape)
            continue
        if how == "lowrank" and len(shape) == 3:
            n_stack = shape[0]
            m, n = lowrank_shapes[name]
            if name in checked:
                a_raw, b = (xp.astype(v, dt) for v in checked[name])
            else:
                a_parts, b_parts = [], []
                for sl in range(n_stack):
                    flat = pair_normals(n_pairs, (m + n) * rank, seed=seed, stream=slice_stream(name, sl),
                                        generation=gen_noise, dtype=dtype, xp=xp, device=device, first=first)
                    b_parts.append(xp.reshape(flat[:, : n * rank], (n_pairs, n, rank)))
                    a_parts.append(xp.reshape(flat[:, n * rank :], (n_pairs, m, rank)))
                a_raw, b = xp.stack(a_parts, axis=1), xp.stack(b_parts, axis=1)
            noise[name] = StackedLowRankNoise(a_raw * a_scale, b, shape)
            continue
        if how == "lowrank":
            m, n = lowrank_shapes[name]
            if name in checked:
                a_raw, b = checked[name]
                a_raw, b = xp.astype(a_raw, dt), xp.astype(b, dt)
            else:
                flat = pair_normals(n_pairs, (m + n) * rank, seed=seed, stream=name, generation=gen_noise,
                                    dtype=dtype, xp=xp, device=device, first=first)  # (P, (m+n) r)
                b = xp.reshape(flat[:, : n * rank], (n_pairs, n, rank))
                a_raw = xp.reshape(flat[:, n * rank :], (n_pairs, m, rank))
            noise[name] = LowRankNoise(a_raw * a_scale, b, shape)
        else:
            if name in checked:
                eps = xp.astype(checked[name], dt)
            else:
                size = 1
                for s in shape:
                    size *= s
                flat = pair_normals(n_pairs, size, seed=seed, stream=name, generation=gen_noise, dtype=dtype,
                                    xp=xp, device=device, first=first)
                eps = xp.reshape(flat, (n_pairs,) + shape)
            noise[name] = FullNoise(eps * sigma, shape)
    return Perturbations(
        noise=noise,
        pair=pair,
        sign=sign,
        pop_size=pop_size,
        rank=rank,
        sigma=sigma,
        seed=seed if needs_seed else None,
        generation=generation,
        noise_generation=gen_noise,
        convention=conv.name,
        layout=layout,
        external=frozenset(checked),
        first_pair=first,
    )


def _pair_window(pairs, n_pairs: int, pop_size: int, factors) -> tuple[int, int]:
    """``(lo, hi - lo)`` of a valid window ``pairs=(lo, hi)`` of ``n_pairs`` pairs."""
    try:
        lo, hi = (int(v) for v in pairs)
    except (TypeError, ValueError):
        raise TypeError(f"pairs={pairs!r} must be None or a (lo, hi) pair of ints") from None
    if not 0 <= lo < hi <= n_pairs:
        raise ValueError(f"pairs={pairs!r} must satisfy 0 <= lo < hi <= {n_pairs} (the pairs of pop_size={pop_size})")
    if factors:
        raise ValueError("pairs= draws a window of egdnp's own noise; it cannot be combined with factors=")
    return lo, hi - lo
