"""EGGROLL on a MuJoCo task (default HalfCheetah-v5): the Pendulum loop on a 17-D robot.

The same loop as examples/pendulum_eggroll.py (one environment per member,
common start states, observation normalisation from the population's
rollouts, tanh-squashed deterministic actions, episode returns as fitness)
on a MuJoCo locomotion task: population 32, one full 1000-step episode per
member, rank 1, sigma 0.1 and Adam lr 0.05 (cosine-decayed), 60 generations.
--max-steps shortens the episodes (training and evaluation alike).

Needs ``pip install "gymnasium[mujoco]"`` (the ``mujoco`` extra of egdnp:
``pip install "egdnp[mujoco]"``).  Other tasks: ``--env Hopper-v5``,
``--env Walker2d-v5``, ... (any gymnasium task with a Box action space).

Scale-out: ``--mpi`` splits the population across MPI processes
(egdnp.distributed, as in examples/pendulum_eggroll.py): each process steps
its own block of members' environments; every process gets all members'
returns and observation sums (one all-gather per episode), so the policy and
the observation statistics are bitwise the same on every process and as in
the one-process run (``--check`` verifies it every generation).  Only rank 0
evaluates, prints, plots and writes.

Outputs (in --out, printed at the end): results.json (returns per
generation, evaluations, wall time, evaluations per second), returns.png.

Run::

    python examples/mujoco_eggroll.py                     # a few minutes on a 2-core CPU
    python examples/mujoco_eggroll.py --fast --no-plot    # a few seconds (the tests)
    mpiexec -n 2 python examples/mujoco_eggroll.py --mpi  # the population split over 2 processes
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # find _common.py when run from anywhere

import _common
from pendulum_eggroll import add_es_args, run, train


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__, "mujoco_out")
    parser.add_argument("--env", default="HalfCheetah-v5", help="gymnasium MuJoCo task (default HalfCheetah-v5)")
    add_es_args(parser, generations=60, pop=32, hidden=32, sigma=0.1, lr=0.05, episodes=1, eval_every=5,
                eval_episodes=8, max_steps=1000)
    args = parser.parse_args(argv)
    if args.fast:
        args.generations, args.pop, args.hidden, args.eval_every, args.eval_episodes, args.max_steps = 2, 4, 8, 1, 2, 20
    return run(args, lambda: finish(args))


def finish(args) -> int:
    _common.limit_threads(args.threads)
    summary, history = train(args.env, args, title="EGGROLL")
    if summary is None:  # not rank 0
        return 0
    out = _common.output_dir(args.out)
    gain = summary["final_eval_mean_return"] - summary["first_eval_mean_return"]
    summary["improvement"] = gain
    print(f"evaluation return {summary['first_eval_mean_return']:.1f} (untrained) -> "
          f"{summary['final_eval_mean_return']:.1f} (generation {history['eval_generation'][-1]}); "
          f"{summary['evaluations_per_s']:.2f} evaluations/s, {summary['env_steps_per_s']:.0f} env steps/s")
    _common.write_json(os.path.join(out, "results.json"), {"summary": summary, "history": history})
    if not args.no_plot and _common.plot_returns(history, os.path.join(out, "returns.png"), title=f"EGGROLL on {args.env}"):
        print(f"plot: {os.path.join(out, 'returns.png')}")
    print(f"outputs written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
