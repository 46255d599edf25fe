"""EGGROLL on continuous control: Pendulum-v1 (gymnasium, no extra packages).

The policy is a small MLP (3 -> 32 -> 32 -> 1, tanh) with a tanh-squashed
deterministic action in [-2, 2] (egdnp.es.rl.policy_mlp).  Each generation,
gymnasium's vector environment runs one environment per population member;
member ``i`` acts with its own low-rank perturbation ``W + A_i B_iᵀ`` of every
weight matrix, for all members at once.  All members start from the same
initial states (common random numbers: ``--episodes`` start states per
generation, new ones every generation), so fitness differences come from the
policies, not from the luck of the start.  A member's fitness is its mean
episode return; observations are normalised by running statistics updated
from the population's rollouts after every generation (Salimans et al. 2017).
Defaults: population 64 x 5 episodes, rank 1, sigma 0.5 and Adam lr 0.1,
both decaying on cosine schedules (to 0.1 and 0.01) over 200 generations.

Every --eval-every generations the unperturbed policy runs --eval-episodes
fresh episodes.  Pendulum-v1 has no official "solved" threshold; this example
aims at a mean return above -250 over 20 test episodes (a random policy scores
about -1200, a good swing-up controller about -150).

Outputs (in --out, printed at the end): results.json (returns per generation,
evaluations, wall time, evaluations per second), returns.png (return curves).

``--mpi``: the population is split across MPI processes (egdnp.distributed):
each process steps only its own block of members' environments; one
all-gather per episode exchanges every member's return and observation sums
(``2 d + 2`` float64 a member), so every process updates the observation
statistics from ALL rollouts, summed in member order -- bitwise the same
statistics, on every process and as in the one-process run -- and the tell
exchanges the fitness (4 bytes a member).  Member i acts and is scored
exactly as in the one-process run, so the result is bitwise the same on any
number of processes (``--check`` verifies the processes agree after every
generation; rank 0 prints a checksum of the final policy and
statistics).  Only rank 0 evaluates, prints, plots and writes.

Run::

    python examples/pendulum_eggroll.py                    # a few minutes on a 2-core CPU
    python examples/pendulum_eggroll.py --fast --no-plot   # a few seconds (the tests)
    mpiexec -n 2 python examples/pendulum_eggroll.py --mpi
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # find _common.py when run from anywhere

import numpy as np  # host-side: gymnasium speaks NumPy

from egdnp import _backend, es, optim
from egdnp.es import rl
from egdnp.optim import schedules

import _common

TARGET = -250.0


def make_envs(env_id, n, max_steps=None):
    """gymnasium's vector environment of ``n`` copies of ``env_id`` (sync: one Python env each)."""
    try:
        import gymnasium
    except ImportError:
        raise SystemExit('gymnasium is needed: pip install "egdnp[examples]" (or pip install gymnasium)') from None
    kwargs = {} if max_steps is None else {"max_episode_steps": int(max_steps)}
    try:
        return gymnasium.make_vec(env_id, num_envs=n, vectorization_mode="sync", **kwargs)
    except gymnasium.error.DependencyNotInstalled as exc:
        raise SystemExit(f"{env_id} needs extra packages: {exc}") from None


def add_es_args(parser, *, generations, pop, hidden, sigma, lr, episodes, eval_every, eval_episodes, max_steps):
    """The options of the ES loop (shared with mujoco_eggroll.py); defaults per example."""
    parser.add_argument("--generations", type=int, default=generations, help=f"generations (default {generations})")
    parser.add_argument("--pop", type=int, default=pop, help=f"population = environments (default {pop})")
    parser.add_argument("--hidden", type=int, default=hidden, help=f"hidden units per layer, two layers (default {hidden})")
    parser.add_argument("--rank", type=int, default=1, help="rank of the perturbations (default 1)")
    parser.add_argument("--sigma", type=float, default=sigma, help=f"perturbation scale (default {sigma})")
    parser.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default {lr})")
    parser.add_argument("--no-decay", dest="decay", action="store_false",
                        help="constant sigma and lr (default: cosine decay to sigma/5 and lr/10 over the run)")
    parser.add_argument("--episodes", type=int, default=episodes,
                        help=f"episodes per member per generation, common start states (default {episodes})")
    parser.add_argument("--eval-every", type=int, default=eval_every, help=f"evaluate every N generations (default {eval_every})")
    parser.add_argument("--eval-episodes", type=int, default=eval_episodes, help=f"episodes per evaluation (default {eval_episodes})")
    parser.add_argument("--max-steps", type=int, default=max_steps,
                        help="episode length limit (default: the environment's own)" if max_steps is None
                        else f"episode length limit (default {max_steps})")
    parser.add_argument("--mpi", action="store_true",
                        help="split the population across MPI processes (run under mpiexec; egdnp.distributed)")
    parser.add_argument("--check", action="store_true",
                        help="debug with --mpi: after every generation check that all processes hold bitwise the "
                             "same policy and observation statistics (a checksum all-gather)")


def train(env_id, args, *, title):
    """The ES loop: ask, roll out every member, tell, update the observation statistics, evaluate.

    With ``args.mpi`` the members are split across MPI processes
    (:class:`egdnp.distributed.DistributedEggroll`): each process runs the
    environments of its block of members, and every process gets the whole
    population's returns and observation sums, so all hold the same policy
    and statistics.  Only rank 0 evaluates, prints and returns results.

    Returns ``(summary, history)`` (plain Python values for results.json), or
    ``(None, None)`` on ranks other than 0.
    """
    from egdnp import distributed  # no MPI needed: without --mpi nothing here communicates

    xp = _common.namespace(args.backend)
    # noise scale and learning rate decay on cosine schedules to a fifth and a tenth over the run:
    # large early steps find the swing-up, small late ones settle it
    sigma = schedules.cosine(args.sigma, args.generations, alpha=0.2) if args.decay else args.sigma
    lr = schedules.cosine(args.lr, args.generations, alpha=0.1) if args.decay else args.lr
    strategy = es.Eggroll(pop_size=args.pop, rank=args.rank, sigma=sigma, optimizer=optim.adam(lr))
    dist = distributed.DistributedEggroll(strategy, check=args.check) if args.mpi else None
    root = dist is None or dist.comm.is_root
    n_local = args.pop if dist is None else len(dist.block.members)  # this process's environments
    envs = make_envs(env_id, n_local, args.max_steps)
    eval_envs = make_envs(env_id, args.eval_episodes, args.max_steps) if root else None
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    policy = rl.policy_mlp(obs_dim, envs.single_action_space, hidden=(args.hidden, args.hidden), activation="tanh")
    params = policy.model.init(seed=args.seed, xp=xp)
    state = strategy.init(params, seed=args.seed) if dist is None else dist.init(params, seed=args.seed)
    norm = rl.ObsNorm.init(obs_dim, xp=xp)
    say = print if root else (lambda *a, **k: None)
    say(f"{env_id}: policy {obs_dim}-{args.hidden}-{args.hidden}-{policy.out_dim} ({policy.model.num_params()} "
        f"parameters, {policy.head} head), population {args.pop} x {args.episodes} episode(s), rank {args.rank}, "
        f"backend {_backend.backend_name(xp)}, seed {args.seed}"
        + ("" if dist is None else f", {dist.comm.size} MPI process(es), {n_local} members on rank 0"))

    def evaluate(params, norm, generation):
        # fresh start states no training generation uses
        roll = rl.episode_returns(eval_envs, lambda o: policy.act(params, o, obs_norm=norm),
                                  seed=10**9 + 1000 * args.seed + generation, xp=xp)
        return roll.returns

    def whole_population(roll):
        # one row per member: return, length, observation sums and squares (summed over that member's steps);
        # with --mpi one Allgatherv gives every process all N rows in member order, so the sums below
        # -- and the observation statistics -- are bitwise those of the one-process run
        rows = np.concatenate([roll.returns[:, None], roll.lengths[:, None].astype(np.float64), roll.obs_sum,
                               roll.obs_sumsq], axis=1)
        return rows if dist is None else dist.gather_members(rows)

    history = {"generation": [], "mean_return": [], "max_return": [], "eval_generation": [], "eval_mean_return": [],
               "eval_std_return": [], "wall_s": []}
    env_steps, episodes_run, rollout_s = 0, 0, 0.0
    t0 = time.perf_counter()
    if root:
        ev = evaluate(state.params, norm, 0)  # the untrained policy, the baseline of the curve
        history["eval_generation"].append(0)
        history["eval_mean_return"].append(float(ev.mean()))
        history["eval_std_return"].append(float(ev.std()))
    bar = _common.progress(args.generations, "EGGROLL", disable=args.no_progress or not root)
    for gen in range(1, args.generations + 1):
        perts, local = (strategy.ask(state),) * 2 if dist is None else dist.ask(state)
        fitness = np.zeros(args.pop)
        t_roll = time.perf_counter()
        for e in range(args.episodes):
            # every member starts from the same state (common random numbers); a new one each episode/generation
            start = 1000 * args.seed + args.episodes * gen + e
            roll = rl.episode_returns(envs, lambda o, local=local, norm=norm: policy.act(state.params, o, obs_norm=norm,
                                                                                          perts=local),
                                      seed=[start] * n_local, xp=xp, per_member=True)
            rows = whole_population(roll)
            fitness += rows[:, 0] / args.episodes
            env_steps += int(rows[:, 1].sum())
            episodes_run += args.pop
            total = rows.sum(axis=0)  # member order, on every process alike
            norm = norm.update(total[2:2 + obs_dim], total[2 + obs_dim:], total[1])  # seen by the next rollout
        rollout_s += time.perf_counter() - t_roll
        if dist is None:
            state, info = strategy.tell(state, perts, _backend.to_device(fitness.astype(np.float32), xp))
        else:  # this process's members' fitness: tell all-gathers it (4 bytes a member) and updates
            mine = fitness[dist.block.members].astype(np.float32)
            state, info = dist.tell(state, perts, _backend.to_device(mine, xp))
        if args.check:  # debug: the policy AND the observation statistics, bit for bit, on every process
            check_identical(dist, state.params, norm)
        history["generation"].append(gen)
        history["mean_return"].append(float(fitness.mean()))
        history["max_return"].append(float(fitness.max()))
        history["wall_s"].append(time.perf_counter() - t0)
        bar.update()
        postfix = {"mean_return": f"{fitness.mean():.0f}"}
        if root and (gen % args.eval_every == 0 or gen == args.generations):
            ev = evaluate(state.params, norm, gen)
            history["eval_generation"].append(gen)
            history["eval_mean_return"].append(float(ev.mean()))
            history["eval_std_return"].append(float(ev.std()))
            postfix["eval"] = f"{ev.mean():.0f}"
        bar.set_postfix(postfix)
    bar.close()
    wall = time.perf_counter() - t0
    checksum = distributed.params_checksum(state_and_norm(state.params, norm))
    if not root:
        return None, None
    procs = 1 if dist is None else dist.comm.size
    summary = {"env": env_id, "final_eval_mean_return": history["eval_mean_return"][-1],
               "final_eval_std_return": history["eval_std_return"][-1],
               "best_eval_mean_return": max(history["eval_mean_return"]),
               "first_eval_mean_return": history["eval_mean_return"][0], "eval_episodes": args.eval_episodes,
               "generations": args.generations, "population": args.pop, "episodes_per_member": args.episodes,
               "member_episodes": episodes_run, "env_steps": env_steps, "wall_s": wall,
               "evaluations_per_s": episodes_run / wall, "env_steps_per_s": env_steps / wall,
               "rollout_share": rollout_s / wall, "parameters": policy.model.num_params(), "seed": args.seed,
               "processes": procs, "params_checksum": checksum}
    rows = [{"method": title, "procs": procs, "generations": args.generations, "episodes": episodes_run,
             "eval": summary["final_eval_mean_return"], "evals_s": summary["evaluations_per_s"],
             "steps_s": summary["env_steps_per_s"], "wall_s": wall}]
    print()
    print(_common.format_table(rows, [("method", "method", "{}"), ("procs", "processes", "{}"),
                                      ("generations", "generations", "{}"),
                                      ("episodes", "member episodes", "{:,}"),
                                      ("eval", f"eval mean return ({args.eval_episodes} ep.)", "{:.1f}"),
                                      ("evals_s", "evaluations/s", "{:.1f}"), ("steps_s", "env steps/s", "{:,.0f}"),
                                      ("wall_s", "wall s", "{:.1f}")]))
    print(f"policy + observation statistics checksum (CRC-32): {checksum}")
    return summary, history


def state_and_norm(params, norm):
    """The policy's parameters and the observation statistics as one dict (for checksums)."""
    return {**params, "obs_norm.count": np.asarray([norm.count], dtype=np.float64), "obs_norm.mean": norm.mean,
            "obs_norm.m2": norm.m2}


def check_identical(dist, params, norm):
    """``--check``: raise unless every process holds bitwise the same policy and observation statistics."""
    if dist is not None:
        dist.check_identical(state_and_norm(params, norm))


def run(args, body):
    """``body()``, under :func:`egdnp.distributed.abort_on_error` with ``--mpi`` (a failing process ends the job)."""
    if args.check and not args.mpi:
        raise SystemExit("--check compares the policies of the MPI processes of an --mpi run; add --mpi "
                         "(mpiexec -n 2 python ... --mpi --check) or drop --check")
    if not args.mpi:
        return body()
    from egdnp import distributed

    with distributed.abort_on_error():
        return body()


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__, "pendulum_out")
    add_es_args(parser, generations=200, pop=64, hidden=32, sigma=0.5, lr=0.1, episodes=5, eval_every=10,
                eval_episodes=20, max_steps=None)
    args = parser.parse_args(argv)
    if args.fast:
        args.generations, args.pop, args.hidden, args.episodes, args.eval_every, args.eval_episodes = 3, 8, 8, 1, 2, 4
        args.max_steps = 50
    return run(args, lambda: finish(args))


def finish(args) -> int:
    _common.limit_threads(args.threads)
    summary, history = train("Pendulum-v1", args, title="EGGROLL")
    if summary is None:  # not rank 0
        return 0
    out = _common.output_dir(args.out)
    summary["target"] = TARGET
    summary["reached_target"] = summary["final_eval_mean_return"] > TARGET
    print(f"final evaluation: {summary['final_eval_mean_return']:.1f} +- {summary['final_eval_std_return']:.1f} over "
          f"{args.eval_episodes} episodes (target > {TARGET:g}: {'yes' if summary['reached_target'] else 'no'}); "
          f"{summary['evaluations_per_s']:.1f} evaluations/s")
    _common.write_json(os.path.join(out, "results.json"), {"summary": summary, "history": history})
    if not args.no_plot and _common.plot_returns(history, os.path.join(out, "returns.png"), title="EGGROLL on Pendulum-v1",
                                         target=TARGET):
        print(f"plot: {os.path.join(out, 'returns.png')}")
    print(f"outputs written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
