"""egdnp.es.rl: observation normalisation, policy heads, episode returns, one ES generation on a real env."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import to_numpy
from egdnp import es, nn, optim
from egdnp.es import rl


class CountdownEnv:
    """A vector env written out here: env i ends its episode after i + 2 steps (then auto-resets).

    Observation: (step, i, action of the last step); reward: the action (or its first entry).
    """

    def __init__(self, n):
        self.n = n

    def reset(self, seed=None):
        self.t = np.zeros(self.n)
        self.seed = seed
        return np.stack([self.t, np.arange(self.n, dtype=float), np.zeros(self.n)], axis=1), {}

    def step(self, actions):
        a = np.asarray(actions, dtype=float).reshape(self.n, -1)[:, 0]
        self.t = self.t + 1
        terminated = self.t >= np.arange(self.n) + 2
        obs = np.stack([self.t, np.arange(self.n, dtype=float), a], axis=1)
        self.t = np.where(terminated, 0.0, self.t)  # auto-reset: the next episode must not count
        return obs, a, terminated, np.zeros(self.n, dtype=bool), {}


def test_episode_returns_counts_first_episodes_only():
    env = CountdownEnv(4)
    seen = []

    def act(obs):
        seen.append(np.asarray(obs))
        return np.full(4, 1.5)

    r = rl.episode_returns(env, act, seed=[7] * 4)
    assert env.seed == [7] * 4
    np.testing.assert_array_equal(r.lengths, [2, 3, 4, 5])
    np.testing.assert_allclose(r.returns, 1.5 * np.array([2, 3, 4, 5]))
    # the observations the policy acted on while alive: env i at steps 0 .. i+1
    alive_obs = np.concatenate([o[i:i + 1] for step, o in enumerate(seen) for i in range(4) if step < i + 2])
    assert r.obs_count == len(alive_obs) == 14
    np.testing.assert_allclose(r.obs_sum, alive_obs.sum(0))
    np.testing.assert_allclose(r.obs_sumsq, (alive_obs ** 2).sum(0))
    capped = rl.episode_returns(CountdownEnv(4), act, max_steps=3)
    np.testing.assert_array_equal(capped.lengths, [2, 3, 3, 3])
    # per_member: env i's own rows, summed in time order (the examples' --mpi mode gathers these)
    seen.clear()
    rows = rl.episode_returns(CountdownEnv(4), act, seed=[7] * 4, per_member=True)
    assert rows.obs_sum.shape == rows.obs_sumsq.shape == (4, alive_obs.shape[1]) and rows.obs_count == 14
    for i in range(4):
        own = np.concatenate([o[i:i + 1] for o in seen[:i + 2]])
        np.testing.assert_allclose(rows.obs_sum[i], own.sum(0))
        np.testing.assert_allclose(rows.obs_sumsq[i], (own ** 2).sum(0))
    np.testing.assert_allclose(rows.obs_sum.sum(0), r.obs_sum)
    with pytest.raises(TypeError, match="per_member=1"):
        rl.episode_returns(CountdownEnv(4), act, per_member=1)


def test_obs_norm_matches_numpy_over_batches(xp):
    g = np.random.default_rng(0)
    batches = [g.standard_normal((n, 3)) * [1.0, 10.0, 0.01] + [0.0, 5.0, 1.0] for n in (5, 17, 40)]
    norm = rl.ObsNorm.init(3, xp=xp)
    np.testing.assert_array_equal(to_numpy(norm.std()), np.ones(3))
    for b in batches:
        norm = norm.update((b.sum(0)), (b * b).sum(0), len(b))
    allobs = np.concatenate(batches)
    assert norm.count == len(allobs)
    np.testing.assert_allclose(to_numpy(norm.mean), allobs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(norm.std()), np.sqrt(np.maximum(allobs.var(0), 1e-2)), rtol=1e-10)
    o = xp.asarray(np.array([[0.0, 5.0, 1.0], [100.0, 5.0, 1.0]], dtype=np.float32))
    y = to_numpy(norm.apply(o))
    assert y.dtype == np.float32 and y[1, 0] == 5.0  # clipped
    np.testing.assert_allclose(y[0], (np.array([0.0, 5.0, 1.0]) - allobs.mean(0)) / to_numpy(norm.std()), atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        norm.update(np.zeros(2), np.zeros(2), 3)
    with pytest.raises(ValueError, match="dim"):
        rl.ObsNorm.init(0)


def test_policy_heads_and_population_actions(xp):
    class Box:
        low, high, shape = np.array([-2.0, 0.0]), np.array([2.0, 1.0]), (2,)

    class Discrete:
        n = 3

    cont = rl.policy_mlp(4, Box(), hidden=(5,))
    disc = rl.policy_mlp(4, Discrete(), hidden=(5,))
    assert cont.head == "tanh" and disc.head == "discrete" and cont.out_dim == 2 and disc.out_dim == 3
    g = np.random.default_rng(1)
    obs = xp.asarray(g.standard_normal((6, 4)))
    for policy in (cont, disc):
        params = policy.model.init(0, xp=xp, dtype="float64")
        perts = es.generate(params, pop_size=6, rank=1, sigma=0.5, seed=2, dtype="float64")
        acts = to_numpy(policy.act(params, obs, perts=perts))
        for i in range(6):
            out = to_numpy(policy.model.apply(es.dense_perturbed_params(params, perts, i), obs[i:i + 1, ...]))[0]
            if policy.head == "tanh":
                ref = np.array([-2.0, 0.0]) + (np.tanh(out) + 1.0) / 2.0 * np.array([4.0, 1.0])
                np.testing.assert_allclose(acts[i], ref, rtol=0, atol=1e-12)
            else:
                assert acts[i] == np.argmax(out)
    with pytest.raises(ValueError, match="one environment per member"):
        cont.act(params, obs[:3, ...], perts=perts)
    with pytest.raises(ValueError, match="low=... and high="):
        rl.Policy(nn.mlp((4, 2)), head="tanh")
    with pytest.raises(ValueError, match="head="):
        rl.Policy(nn.mlp((4, 2)), head="gaussian")


def test_one_generation_on_pendulum_improves_nothing_breaks():
    """A few ES generations on gymnasium's Pendulum-v1 with observation normalisation run end to end."""
    gymnasium = pytest.importorskip("gymnasium")
    envs = gymnasium.make_vec("Pendulum-v1", num_envs=8, vectorization_mode="sync", max_episode_steps=20)
    policy = rl.policy_mlp(3, envs.single_action_space, hidden=(8,))
    strategy = es.Eggroll(pop_size=8, rank=1, sigma=0.1, optimizer=optim.adam(0.02))
    state = strategy.init(policy.model.init(seed=0), seed=0)
    norm = rl.ObsNorm.init(3)
    for gen in range(2):
        perts = strategy.ask(state)
        roll = rl.episode_returns(envs, lambda o: policy.act(state.params, o, obs_norm=norm, perts=perts), seed=[gen] * 8)
        assert roll.returns.shape == (8,) and np.all(roll.lengths == 20) and roll.obs_count == 160
        norm = norm.update(roll.obs_sum, roll.obs_sumsq, roll.obs_count)
        state, info = strategy.tell(state, perts, roll.returns.astype(np.float32))
    assert norm.count == 320 and np.isfinite(info["grad_norm"])
