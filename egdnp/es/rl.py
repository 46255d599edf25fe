"""Reinforcement learning with evolution strategies: policies, observation normalisation, episode returns.

The pieces ES needs for control tasks (Salimans et al. 2017, "Evolution
Strategies as a Scalable Alternative to Reinforcement Learning"):

* :class:`Policy` -- an :mod:`egdnp.nn` network with a head that turns its
  output into actions: ``"discrete"`` (argmax of logits) or ``"tanh"``
  (deterministic, tanh-squashed into the action box ``[low, high]``).  It acts
  for one parameter set or, with perturbations, for a whole population at
  once (member ``i`` acts in environment ``i`` with ``W + A_i B_i^T``).
* :class:`ObsNorm` -- running mean and variance of observations, updated from
  the population's rollouts after every generation (fixed during one, so
  every member sees the same normalisation); observations are normalised to
  ``clip((o - mean) / std, -clip, clip)`` with ``std = sqrt(max(var, min_var))``
  (the OpenAI ES code's floor 1e-2 and clip 5).
* :func:`episode_returns` -- runs a gymnasium vector environment until each
  sub-environment's first episode ends and returns the episode returns (the
  fitness) and the observation sums for :class:`ObsNorm`.

Environments speak NumPy: the rollout loop is host-side bookkeeping (returns,
masks, sums); the policy math runs in the parameters' namespace.  gymnasium
is not imported here -- pass any object with the vector-env ``reset``/``step``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

from .. import _backend
from ..nn import functional as F
from ..nn import mlp
from .layers import perturbed_model_forward

__all__ = ["Policy", "ObsNorm", "Rollout", "episode_returns", "policy_mlp"]


class ObsNorm(NamedTuple):
    """Running observation statistics (explicit state; float64).

    Attributes
    ----------
    count : float
        Observations seen.
    mean : array, shape (d,)
    m2 : array, shape (d,)
        Sum of squared deviations from the mean (``var = m2 / count``).
    clip : float
        Normalised observations are clipped to ``[-clip, clip]``.
    min_var : float
        Variance floor: ``std = sqrt(max(var, min_var))``.
    """

    count: float
    mean: Any
    m2: Any
    clip: float = 5.0
    min_var: float = 1e-2

    @classmethod
    def init(cls, dim: int, *, xp=None, device=None, clip: float = 5.0, min_var: float = 1e-2) -> "ObsNorm":
        """Empty statistics (mean 0, std 1 until the first update).

        Parameters
        ----------
        dim : int
            Observation size d.
        xp : namespace or name, default NumPy
        device : optional
        clip, min_var : float > 0

        Returns
        -------
        ObsNorm
            ``mean`` and ``m2`` zeros of shape (d,), float64.
        """
        dim = int(dim)
        if dim < 1:
            raise ValueError(f"dim={dim} must be a positive observation size")
        clip, min_var = float(clip), float(min_var)
        if not (clip > 0.0 and min_var > 0.0 and math.isfinite(clip) and math.isfinite(min_var)):
            raise ValueError(f"clip={clip} and min_var={min_var} must be finite floats > 0")
        xp = _backend.get_namespace("numpy" if xp is None else xp)
        zeros = xp.zeros((dim,), dtype=xp.float64, device=device)
        return cls(0.0, zeros, xp.zeros((dim,), dtype=xp.float64, device=device), clip, min_var)

    def update(self, obs_sum, obs_sumsq, count: float) -> "ObsNorm":
        """Merge a batch given by its sums (Chan et al.'s parallel variance update).

        Parameters
        ----------
        obs_sum, obs_sumsq : array, shape (d,)
            Sum and sum of squares of the batch's observations (any namespace; host NumPy from
            :func:`episode_returns`).
        count : float
            Number of observations in the batch (0: no change).

        Returns
        -------
        ObsNorm
            New statistics (this one is not changed).
        """
        count = float(count)
        if count <= 0.0:
            return self
        xp = _backend.array_namespace(self.mean)
        device = _backend.device_of(self.mean)
        s = xp.asarray(_backend.to_host(obs_sum), dtype=xp.float64, device=device)
        ss = xp.asarray(_backend.to_host(obs_sumsq), dtype=xp.float64, device=device)
        if tuple(s.shape) != tuple(self.mean.shape) or tuple(ss.shape) != tuple(self.mean.shape):
            raise ValueError(f"obs_sum {tuple(s.shape)} / obs_sumsq {tuple(ss.shape)} must have the shape "
                             f"{tuple(self.mean.shape)} of the statistics")
        mean_b = s / count
        m2_b = xp.maximum(ss - count * mean_b * mean_b, 0.0)
        total = self.count + count
        delta = mean_b - self.mean
        mean = self.mean + delta * (count / total)
        m2 = self.m2 + m2_b + delta * delta * (self.count * count / total)
        return self._replace(count=total, mean=mean, m2=m2)

    def std(self):
        """``sqrt(max(var, min_var))`` (ones before the first update).

        Returns
        -------
        array, shape (d,), float64
        """
        xp = _backend.array_namespace(self.mean)
        if self.count <= 0.0:
            return xp.ones_like(self.mean)
        return xp.sqrt(xp.maximum(self.m2 / self.count, self.min_var))

    def apply(self, obs):
        """``clip((obs - mean) / std, -clip, clip)`` in the dtype of ``obs``.

        Parameters
        ----------
        obs : array, shape (..., d)

        Returns
        -------
        array, shape of obs
        """
        xp = _backend.array_namespace(obs)
        mean = xp.astype(self.mean, obs.dtype)
        std = xp.astype(self.std(), obs.dtype)
        return xp.clip((obs - mean) / std, -self.clip, self.clip)


class Policy:
    """A network plus an action head (static configuration).

    Parameters
    ----------
    model : egdnp.nn.Serial
        Maps observations (..., d) to (..., n_actions) logits (discrete) or
        (..., action_dim) pre-squash values (tanh).
    head : {"discrete", "tanh"}
    low, high : sequence of float, optional
        The action box for ``head="tanh"``: ``a = low + (tanh(out) + 1) / 2 * (high - low)``.

    Attributes
    ----------
    obs_dim, out_dim : int
    """

    def __init__(self, model, *, head: str, low=None, high=None):
        if head not in ("discrete", "tanh"):
            raise ValueError(f"head={head!r} must be 'discrete' (argmax of logits) or 'tanh' (squashed continuous)")
        self.model, self.head = model, head
        first = model.layers[0][1]
        self.obs_dim = int(getattr(first, "n_in", 0)) or None
        last = model.layers[-1][1]
        self.out_dim = int(getattr(last, "n_out", 0)) or None
        if head == "tanh":
            if low is None or high is None:
                raise ValueError("head='tanh' needs the action bounds low=... and high=... (e.g. env.single_action_space.low)")
            low = tuple(float(v) for v in _flat(low))
            high = tuple(float(v) for v in _flat(high))
            if len(low) != len(high) or any(not (lo < hi) for lo, hi in zip(low, high)):
                raise ValueError(f"low={low} and high={high} must have the same length with low < high everywhere")
            if self.out_dim is not None and len(low) != self.out_dim:
                raise ValueError(f"the action box has {len(low)} dims but the network outputs {self.out_dim}")
        self.low, self.high = low, high

    def __repr__(self) -> str:
        return f"Policy(head={self.head!r}, obs_dim={self.obs_dim}, out_dim={self.out_dim}, low={self.low}, high={self.high})"

    def actions(self, out):
        """The head: network output -> actions.

        Parameters
        ----------
        out : array, shape (..., out_dim)

        Returns
        -------
        array
            ``"discrete"``: int64 of shape (...,); ``"tanh"``: shape (..., out_dim) in [low, high].
        """
        xp = _backend.array_namespace(out)
        if self.head == "discrete":
            return xp.argmax(out, axis=-1)
        device = _backend.device_of(out)
        low = xp.asarray(self.low, dtype=out.dtype, device=device)
        span = xp.asarray([h - lo for lo, h in zip(self.low, self.high)], dtype=out.dtype, device=device)
        return low + (F.tanh(out) + 1.0) * 0.5 * span

    def act(self, params: dict, obs, *, obs_norm: ObsNorm | None = None, perts=None, state=None):
        """Actions for a batch of observations, one parameter set or one member each.

        Parameters
        ----------
        params : dict[str, array]
        obs : array, shape (n, d)
            In the params' namespace and dtype.
        obs_norm : ObsNorm, optional
            Normalise first.
        perts : Perturbations, optional
            Member ``i`` acts on ``obs[i]`` with its own perturbed parameters
            (``n`` must be the population size).
        state : dict, optional
            Model buffers.

        Returns
        -------
        array
            Shape (n,) (discrete) or (n, action_dim).
        """
        if obs_norm is not None:
            obs = obs_norm.apply(obs)
        if perts is None:
            return self.actions(self.model.apply(params, obs, state=state))
        xp = _backend.array_namespace(obs)
        n = int(obs.shape[0])
        if n != perts.pop_size:
            raise ValueError(f"obs has {n} rows but the population has {perts.pop_size} members; one environment per member")
        out = perturbed_model_forward(self.model, params, xp.reshape(obs, (n, 1) + tuple(int(s) for s in obs.shape[1:])),
                                      perts, state=state)
        return self.actions(out[:, 0, ...])


def _flat(values):
    host = _backend.to_host(values) if hasattr(values, "shape") else values
    try:
        return list(host.reshape(-1).tolist()) if hasattr(host, "reshape") else list(host)
    except TypeError:
        return [host]


def policy_mlp(obs_dim: int, action_space, *, hidden=(32, 32), activation: str = "tanh", init: str | None = None) -> Policy:
    """An MLP policy for a gymnasium action space (duck-typed, gymnasium is not imported).

    Parameters
    ----------
    obs_dim : int
        Observation size d (flat observations).
    action_space : gymnasium Discrete (``.n``) or Box (``.low``, ``.high``, ``.shape``)
        A ``Discrete(n)`` gives ``head="discrete"`` with ``n`` logits; a
        ``Box`` gives ``head="tanh"`` with one output per action dim.
    hidden : sequence of int
    activation : {"tanh", "relu", "gelu", "silu", "sigmoid"}
    init : {None, "torch"}

    Returns
    -------
    Policy
        ``policy.model`` maps (..., obs_dim) -> (..., n or action_dim).
    """
    if hasattr(action_space, "n"):
        sizes = (int(obs_dim),) + tuple(int(h) for h in hidden) + (int(action_space.n),)
        return Policy(mlp(sizes, activation=activation, init=init), head="discrete")
    if hasattr(action_space, "low") and hasattr(action_space, "high"):
        low, high = _flat(action_space.low), _flat(action_space.high)
        if not all(math.isfinite(v) for v in low + high):
            raise ValueError("a tanh head needs a bounded action box; this space has infinite bounds")
        sizes = (int(obs_dim),) + tuple(int(h) for h in hidden) + (len(low),)
        return Policy(mlp(sizes, activation=activation, init=init), head="tanh", low=low, high=high)
    raise TypeError(f"action_space {action_space!r} is neither Discrete (.n) nor Box (.low/.high)")


class Rollout(NamedTuple):
    """What :func:`episode_returns` measured (host-side NumPy).

    Attributes
    ----------
    returns : ndarray, shape (n,)
        Return of every sub-environment's first episode (float64).
    lengths : ndarray, shape (n,)
        Its length in steps (int64).
    obs_sum, obs_sumsq : ndarray, shape (d,), or (n, d) with ``per_member=True``
        Sum and sum of squares of every observation the policy acted on (for :meth:`ObsNorm.update`);
        per sub-environment with ``per_member=True`` (its observations summed in time order).
    obs_count : int
        How many observations that was (with ``per_member=True`` sub-environment ``i`` contributed
        ``lengths[i]`` of them).
    """

    returns: Any
    lengths: Any
    obs_sum: Any
    obs_sumsq: Any
    obs_count: int


def episode_returns(envs, act: Callable, *, seed=None, max_steps: int | None = None, xp=None, dtype="float32",
                    per_member: bool = False) -> Rollout:
    """Run each sub-environment until its first episode ends; the episode returns are the fitness.

    Parameters
    ----------
    envs : gymnasium vector environment
        ``reset(seed=) -> (obs (n, d), info)``, ``step(actions) -> (obs, reward, terminated, truncated, info)``.
    act : callable
        ``act(obs) -> actions``: observations (n, d) in namespace ``xp`` and ``dtype`` to
        actions (n,) or (n, action_dim) (e.g. ``lambda o: policy.act(params, o, obs_norm=norm, perts=perts)``).
    seed : int or list of int, optional
        Passed to ``envs.reset`` (an int seeds sub-environment ``i`` with ``seed + i``).
    max_steps : int, optional
        Stop after this many steps even if episodes are still running (their
        returns so far count).  Default: until every first episode has ended.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}
    per_member : bool
        Keep the observation sums per sub-environment, shape (n, d).  Each row
        depends only on its own sub-environment, so rows scored in different
        processes can be gathered and summed in member order with the same
        rounding as one process (``row_sums.sum(axis=0)``; the examples'
        ``--mpi`` mode).

    Returns
    -------
    Rollout
        ``returns`` (n,), ``lengths`` (n,), observation sums (d,) (or (n, d)) and count.
    """
    import numpy as np  # host-side bookkeeping: environments speak NumPy

    xp = _backend.get_namespace("numpy" if xp is None else xp)
    obs, _ = envs.reset(seed=seed)
    obs = np.asarray(obs, dtype=np.float64)
    n = obs.shape[0]
    obs = obs.reshape(n, -1)
    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    if not isinstance(per_member, bool):
        raise TypeError(f"per_member={per_member!r} must be True or False")
    obs_sum = np.zeros((n, obs.shape[1]) if per_member else obs.shape[1])
    obs_sumsq = np.zeros_like(obs_sum)
    count = 0
    steps = 0
    while alive.any() and (max_steps is None or steps < int(max_steps)):
        live = obs[alive]
        if per_member:
            obs_sum[alive] += live
            obs_sumsq[alive] += live * live
        else:
            obs_sum += live.sum(axis=0)
            obs_sumsq += (live * live).sum(axis=0)
        count += int(alive.sum())
        actions = _backend.to_host(act(_backend.to_device(obs.astype(dtype), xp)))
        obs, reward, terminated, truncated, _ = envs.step(np.asarray(actions))
        obs = np.asarray(obs, dtype=np.float64).reshape(n, -1)
        returns += np.asarray(reward, dtype=np.float64) * alive
        lengths += alive
        alive &= ~(np.asarray(terminated) | np.asarray(truncated))
        steps += 1
    return Rollout(returns, lengths, obs_sum, obs_sumsq, count)
