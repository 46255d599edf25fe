"""EGD escapes a plateau where SGD stalls.

The toy loss is a "staircase" bowl around a centre ``c`` in 8 dimensions::

    q(w) = ||w - c||^2
    L(w) = q                  if q < 0.25   (a smooth basin: gradient 2 (w - c))
         = ceil(4 q) / 4      otherwise     (flat steps: gradient exactly 0)

Like a 0-1 loss or dead ReLUs, the steps give no gradient: SGD started at
``q = 4`` never moves.  EGD's evolution cycles (every 5 steps, 8 members, the
spec's mean recombination of the 2 best) find lower steps, reach the basin,
and SGD finishes the descent.  With the spec's unconditional recombination
later cycles keep kicking the parameters out of the minimum (the sawtooth);
``accept="if_better"`` keeps the base when the recombination is worse.

Each cycle is scored by a population scorer (egdnp's extension beyond the
EvoSGD spec, ``scorer=``): the staircase loss of all 8 members at once from
their stacked candidates, one vectorised expression instead of 9 closure
calls; ``--closure`` scores one candidate at a time as the spec does (the
same losses, the same elites, the same curves).

Run::

    python examples/egd_plateau.py --out runs/plateau          # writes curves.csv, summary.json, plateau.png
    python examples/egd_plateau.py --fast --no-plot --out /tmp/p  # the quick version the tests run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys

from egdnp import _backend, atomic_write, optim
from egdnp.optim.egd import egd

DIM = 8


def centre(xp, dtype="float64"):
    """The centre ``c`` of the staircase bowl, shape (DIM,)."""
    return xp.asarray([-1.0 + 2.0 * i / (DIM - 1) for i in range(DIM)], dtype=getattr(xp, dtype))


def make_problem(xp, dtype="float64"):
    """Centre ``c``, start ``w0`` (q(w0) = 4), loss and gradient functions in namespace ``xp``."""
    c = centre(xp, dtype)
    w0 = c + 2.0 / math.sqrt(DIM)

    def sq_dist(w):
        r = w - c
        return float(xp.sum(r * r))

    def loss(params):
        q = sq_dist(params["w"])
        return q if q < 0.25 else math.ceil(q * 4.0) / 4.0

    def grad(params):
        w = params["w"]
        return {"w": 2.0 * (w - c) if sq_dist(w) < 0.25 else xp.zeros_like(w)}

    return {"w": w0}, loss, grad


def make_population_scorer(xp, loss):
    """EGD population scorer of the staircase: every member's loss from ``mutations`` at once.

    ``mutations.candidates("w")`` stacks the members' ``w`` (shape (n, 8),
    bit for bit the candidates the closure would see); the staircase of all
    rows is one vectorised expression.
    """

    def scorer(mutations):
        if "w" not in mutations.mutated:
            return [loss(mutations.params)] * len(mutations.members)
        w = mutations.candidates("w")                                     # (n, DIM)
        r = w - centre(xp)
        q = [float(v) for v in _backend.to_host(xp.sum(r * r, axis=1))]  # host-side: n floats
        return [v if v < 0.25 else math.ceil(v * 4.0) / 4.0 for v in q]

    return scorer


def run(steps=300, seed=0, xp="numpy", evo_interval=5, pop_size=8, sigma=0.3, lr=0.1, momentum=0.9,
        population=True):
    """Train SGD and EGD from the same start; returns their loss curves and EGD's reports.

    ``population``: score EGD's cycles with the population scorer (else one closure call per member).
    """
    xp = _backend.get_namespace(xp)
    params0, loss, grad = make_problem(xp)
    sgd = optim.sgd(lr=lr, momentum=momentum)
    p, s = dict(params0), sgd.init(params0)
    sgd_curve = []
    for _ in range(steps):
        p, s = sgd.update(grad(p), s, p)
        sgd_curve.append(loss(p))

    curves, all_reports = {}, {}
    for accept in ("always", "if_better"):
        reports = []
        opt = egd(lr=lr, momentum=momentum, evo_interval=evo_interval, pop_size=pop_size, elite_frac=0.25,
                  sigma=sigma, sigma_decay=0.98, seed=seed, accept=accept, callback=reports.append)
        p, s = dict(params0), opt.init(params0)
        curve = []
        score = {"scorer": make_population_scorer(xp, loss)} if population else {"closure": loss}
        for _ in range(steps):
            p, s, _ = opt.update(grad(p), s, p, **score)
            curve.append(loss(p))
        curves[accept], all_reports[accept] = curve, reports
    return {"sgd": sgd_curve, "egd": curves["always"], "egd_if_better": curves["if_better"],
            "reports": all_reports["always"], "start_loss": loss(params0)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="SGD steps for each optimiser (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="EGD noise seed (default 0)")
    parser.add_argument("--backend", default="numpy", help="numpy, cupy or array_api_strict (default numpy)")
    parser.add_argument("--out", default="egd_plateau_out", help="output directory (created)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw plateau.png (no matplotlib needed)")
    parser.add_argument("--fast", action="store_true", help="150 steps (for tests)")
    parser.add_argument("--closure", action="store_true",
                        help="score EGD's members one closure call at a time (the spec's path) instead of the "
                             "population scorer")
    args = parser.parse_args(argv)
    steps = 150 if args.fast else args.steps
    result = run(steps=steps, seed=args.seed, xp=args.backend, population=not args.closure)
    scoring = ("closure: one call per member (the spec's path)" if args.closure else
               "population scorer: all members of a cycle in one vectorised call (egdnp's extension)")
    print(f"EGD cycles scored by the {scoring}")
    os.makedirs(args.out, exist_ok=True)
    with atomic_write(os.path.join(args.out, "curves.csv"), "w") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "sgd_loss", "egd_loss", "egd_if_better_loss"])
        for t, (a, b, c) in enumerate(zip(result["sgd"], result["egd"], result["egd_if_better"]), start=1):
            writer.writerow([t, repr(a), repr(b), repr(c)])
    reports = result["reports"]
    summary = {
        "steps": steps,
        "seed": args.seed,
        "start_loss": result["start_loss"],
        "sgd_final_loss": result["sgd"][-1],
        "egd_final_loss": result["egd"][-1],
        "egd_if_better_final_loss": result["egd_if_better"][-1],
        "egd_first_step_in_basin": next((t + 1 for t, v in enumerate(result["egd"]) if v < 0.25), None),
        "egd_scoring": "closure" if args.closure else "population",
        "cycles": len(reports),
        "cycles_accepted_lower": sum(1 for r in reports if r.loss < r.base_loss),
    }
    with atomic_write(os.path.join(args.out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    print(json.dumps(summary, indent=2))
    if not args.no_plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed; skipping the plot (use --no-plot to silence this)", file=sys.stderr)
        else:
            fig, (ax, ax_rep) = plt.subplots(1, 2, figsize=(11, 3.8))
            ax.plot(range(1, steps + 1), result["sgd"], label="SGD (momentum 0.9)")
            ax.plot(range(1, steps + 1), result["egd"], label="EGD (pop 8, every 5 steps)")
            ax.plot(range(1, steps + 1), result["egd_if_better"], label='EGD, accept="if_better"')
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.set_title("Staircase plateau: zero gradient outside the basin")
            ax.legend()
            # the per-cycle evolution report: every member's loss, the base, the recombined result
            cycles = [r.cycle for r in reports]
            for r in reports:
                members = [v for v in r.member_losses[1:] if math.isfinite(v)]
                ax_rep.scatter([r.cycle] * len(members), members, s=6, color="0.6",
                               label="mutants" if r is reports[0] else None)
            ax_rep.plot(cycles, [r.base_loss for r in reports], "o-", ms=3, label="base (member 0)")
            ax_rep.plot(cycles, [r.recombined_loss for r in reports], "s-", ms=3, label="recombined elites")
            ax_twin = ax_rep.twinx()
            ax_twin.plot(cycles, [r.sigma for r in reports], ":", color="tab:red", label="sigma")
            ax_twin.set_ylabel("sigma", color="tab:red")
            ax_rep.set_yscale("log")
            ax_rep.set_xlabel("evolution cycle")
            ax_rep.set_ylabel("loss")
            ax_rep.set_title("EGD evolution report, cycle by cycle")
            ax_rep.legend(loc="upper right", fontsize=8)
            fig.tight_layout()
            with atomic_write(os.path.join(args.out, "plateau.png")) as fh:
                fig.savefig(fh, format="png", dpi=120)
            plt.close(fig)
    print(f"outputs written to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
