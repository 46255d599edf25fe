"""EGGROLL solves CartPole: one environment per population member, no gradients.

The policy is a small MLP (4 -> 16 -> 2, tanh; the action is the argmax of its
two outputs).  Each generation, gymnasium's vectorised CartPole runs one
environment per member; member ``i`` acts with its own low-rank perturbation
``W + A_i B_iᵀ`` of every weight matrix, applied inside the forward pass of all
members at once (egdnp.es.perturbed_model_forward on observations of shape
(pop, 1, 4)).  A member's fitness is its episode return (<= 500); the shaped
fitness weights the perturbations into an ES gradient that Adam follows.

Every few generations the unperturbed policy is evaluated on --eval-episodes
fresh episodes; CartPole-v1 counts as solved at a mean return >= 475, and the
run stops there.

Outputs (in --out, printed at the end): results.json (returns per
generation, evaluations), returns.png (the return curve).

``--mpi``: the population is split across MPI processes (egdnp.distributed):
each rank steps only its own members' environments and scores them, one
all-gather exchanges the returns, and every rank applies the same update.
Member i starts from the same state as in the one-process run, so the result
is the same on any number of processes (only rank 0 prints and writes).

Run::

    python examples/cartpole_eggroll.py                   # solves in a few seconds on a 2-core CPU
    python examples/cartpole_eggroll.py --fast --no-plot  # a few seconds (the tests)
    mpiexec -n 2 python examples/cartpole_eggroll.py --mpi
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # find _common.py when run from anywhere

import numpy as np  # host-side: gymnasium speaks NumPy

from egdnp import _backend, es, nn, optim

import _common

SOLVED = 475.0


def make_envs(n, max_steps):
    """gymnasium's NumPy-vectorised CartPole-v1 with ``n`` environments."""
    try:
        import gymnasium
    except ImportError:
        raise SystemExit('gymnasium is needed: pip install "egdnp[examples]" (or pip install gymnasium)') from None
    try:
        from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv  # gymnasium >= 1.0
    except ImportError:  # older gymnasium: n Python environments stepped in a loop (same dynamics, slower)
        return gymnasium.vector.SyncVectorEnv(
            [lambda: gymnasium.make("CartPole-v1", max_episode_steps=max_steps) for _ in range(n)])
    return CartPoleVectorEnv(num_envs=n, max_episode_steps=max_steps)


def rollout(envs, act, *, seed, max_steps, xp, members=None, pop=None):
    """Run every environment until its first episode ends; returns the episode returns (host (n,)).

    ``act(obs) -> actions`` maps observations (n, 4) in namespace ``xp`` to integer actions (n,).
    The vector env resets a finished environment on its next step: rewards after an
    environment's first episode are masked out.  ``members`` (with ``--mpi``): these
    environments are members ``members`` of a population of ``pop``, and start where a
    ``pop``-environment reset with ``seed`` would start them.
    """
    obs, _ = envs.reset(seed=seed)
    if members is not None:
        from gymnasium.utils import seeding

        # CartPoleVectorEnv.reset draws uniform(-0.05, 0.05, size=(4, num_envs)) from its seeded generator
        envs.state = seeding.np_random(seed)[0].uniform(low=-0.05, high=0.05, size=(4, pop))[:, members]
        obs = envs.state.T.astype(np.float32)
    n = obs.shape[0]
    returns = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    for _ in range(max_steps):
        actions = _backend.to_host(act(_backend.to_device(obs, xp)))
        obs, reward, terminated, truncated, _ = envs.step(actions.astype(np.int64))
        returns += reward * alive
        alive &= ~(terminated | truncated)
        if not alive.any():
            break
    return returns


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__, "cartpole_out")
    parser.add_argument("--generations", type=int, default=200, help="maximum generations (default 200)")
    parser.add_argument("--pop", type=int, default=32, help="population = number of environments (default 32)")
    parser.add_argument("--hidden", type=int, default=16, help="hidden units of the policy (default 16)")
    parser.add_argument("--sigma", type=float, default=0.3, help="perturbation scale (default 0.3)")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam learning rate (default 0.1)")
    parser.add_argument("--eval-every", type=int, default=5, help="evaluate the policy every N generations (default 5)")
    parser.add_argument("--eval-episodes", type=int, default=100, help="episodes per evaluation (default 100)")
    parser.add_argument("--max-steps", type=int, default=500, help="episode length limit (default 500, CartPole-v1's)")
    parser.add_argument("--mpi", action="store_true",
                        help="split the population across MPI processes (run under mpiexec; egdnp.distributed)")
    args = parser.parse_args(argv)
    if args.mpi:
        from egdnp import distributed

        with distributed.abort_on_error():
            return train(args)
    return train(args)


def train(args) -> int:
    if args.fast:
        args.generations, args.pop, args.max_steps, args.eval_every, args.eval_episodes = 4, 8, 100, 2, 4
    _common.limit_threads(args.threads)
    xp = _common.namespace(args.backend)
    dist = None
    if args.mpi:
        from egdnp import distributed

        dist = distributed.DistributedEggroll(
            es.Eggroll(pop_size=args.pop, rank=1, sigma=args.sigma, optimizer=optim.adam(args.lr)))
    root = dist is None or dist.comm.is_root
    say = print if root else (lambda *a, **k: None)
    out = _common.output_dir(args.out) if root else None
    solved_at = min(SOLVED, 0.95 * args.max_steps)

    policy = nn.mlp((4, args.hidden, 2), activation="tanh")
    strategy = es.Eggroll(pop_size=args.pop, rank=1, sigma=args.sigma, optimizer=optim.adam(args.lr))
    state = strategy.init(policy.init(seed=args.seed, xp=xp), seed=args.seed)
    members = None if dist is None else dist.block.members  # this process's environments
    train_envs = make_envs(args.pop if dist is None else len(members), args.max_steps)
    eval_envs = make_envs(args.eval_episodes, args.max_steps)
    say(f"CartPole-v1: policy 4-{args.hidden}-2 ({policy.num_params()} parameters), population {args.pop} "
        f"(one environment each), backend {_backend.backend_name(xp)}, seed {args.seed}"
        + ("" if dist is None else f", {dist.comm.size} MPI process(es)"))

    def evaluate(params, generation):
        def act(obs):  # obs: (episodes, 4) -> greedy actions (episodes,)
            return xp.argmax(policy.apply(params, obs), axis=-1)

        # Evaluation episodes use seeds no training generation uses.
        return rollout(eval_envs, act, seed=10**9 + 1000 * args.seed + generation, max_steps=args.max_steps, xp=xp)

    history = {"generation": [], "mean_return": [], "max_return": [], "eval_generation": [], "eval_mean_return": [],
               "eval_min_return": []}
    env_steps, solved_generation = 0, None
    t0 = time.perf_counter()
    bar = _common.progress(args.generations, "EGGROLL", disable=args.no_progress or not root)
    for gen in range(1, args.generations + 1):
        perts, local = (strategy.ask(state),) * 2 if dist is None else dist.ask(state)

        def act(obs, local=local):  # obs: (members, 4) -> member i acts with W + A_i B_iᵀ
            n = local.pop_size
            logits = es.perturbed_model_forward(policy, state.params, xp.reshape(obs, (n, 1, 4)), local)
            return xp.argmax(logits[:, 0, :], axis=-1)

        returns = rollout(train_envs, act, seed=1000 * args.seed + gen, max_steps=args.max_steps, xp=xp,
                          members=members, pop=args.pop)
        returns = _backend.to_device(returns.astype(np.float32), xp)
        # with --mpi, tell all-gathers every process's returns first; info holds the whole population's
        state, info = strategy.tell(state, perts, returns) if dist is None else dist.tell(state, perts, returns)
        env_steps += int(round(info["fitness_mean"] * args.pop))
        history["generation"].append(gen)
        history["mean_return"].append(info["fitness_mean"])
        history["max_return"].append(info["fitness_max"])
        bar.update()
        postfix = {"mean_return": f"{info['fitness_mean']:.1f}"}
        if gen % args.eval_every == 0 or gen == args.generations:
            ev = evaluate(state.params, gen)
            history["eval_generation"].append(gen)
            history["eval_mean_return"].append(float(ev.mean()))
            history["eval_min_return"].append(float(ev.min()))
            postfix["eval"] = f"{ev.mean():.1f}"
            if ev.mean() >= solved_at:
                solved_generation = gen
        bar.set_postfix(postfix)
        if solved_generation is not None:
            break
    bar.close()
    wall = time.perf_counter() - t0

    final = history["eval_mean_return"][-1]
    summary = {"solved": solved_generation is not None, "solved_generation": solved_generation,
               "solve_threshold": solved_at, "final_eval_mean_return": final,
               "final_eval_min_return": history["eval_min_return"][-1], "eval_episodes": args.eval_episodes,
               "generations": history["generation"][-1], "population": args.pop, "env_steps": env_steps,
               "wall_s": wall, "seed": args.seed}
    rows = [{"method": "EGGROLL", "generations": summary["generations"], "env_steps": env_steps,
             "eval": final, "solved": "yes" if summary["solved"] else "no", "wall_s": wall}]
    if not root:
        return 0
    print()
    print(_common.format_table(rows, [("method", "method", "{}"), ("generations", "generations", "{}"),
                                      ("env_steps", "env steps", "{:,}"),
                                      ("eval", f"eval mean return ({args.eval_episodes} ep.)", "{:.1f}"),
                                      ("solved", f"solved (>= {solved_at:g})", "{}"), ("wall_s", "wall s", "{:.1f}")]))
    _common.write_json(os.path.join(out, "results.json"), {"summary": summary, "history": history})
    if not args.no_plot and _common.plot_returns(history, os.path.join(out, "returns.png"), title="EGGROLL on CartPole-v1",
                                                     target=solved_at, target_label="solved"):
        print(f"plot: {os.path.join(out, 'returns.png')}")
    print(f"outputs written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
