"""Train one network three ways -- SGD, EGD and EGGROLL -- and compare them.

The model is a small MLP (64 -> 64 -> 10, tanh) on scikit-learn's handwritten
digits (8x8 images, 1348 train / 449 test, bundled with scikit-learn: no
download).  Every random number comes from egdnp.rng, so a run is reproducible
bit for bit; only the wall times change.

* SGD      backpropagation + Nesterov momentum            (egdnp.optim.sgd)
* EGD      the same SGD, plus an evolution cycle every N steps: a population
           of Gaussian-mutated copies scored forward-only, the elites
           recombined                                     (egdnp.optim.egd)
* EGGROLL  no gradients at all: a population of low-rank perturbations
           W + A Bᵀ scored forward-only, their fitness-weighted sum fed to
           Adam                                           (egdnp.es.Eggroll)

Outputs (in --out, printed at the end): results.json (the table and the
curves), table.md, learning_curves.png.

Run::

    python examples/quickstart.py                      # 10-30 s on a 2-core CPU
    python examples/quickstart.py --backend cupy       # on a GPU (CuPy installed)
    python examples/quickstart.py --fast --no-plot     # a few seconds (the tests)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # find _common.py when run from anywhere

from egdnp import _backend, data, es, nn, optim
from egdnp.optim.egd import egd

import _common


# ----------------------------------------------------------------------------
# monitoring: what every method reports at its checkpoints
# ----------------------------------------------------------------------------
class Recorder:
    """Learning curves and counters of one training run.

    ``record(params)`` evaluates the full train and test sets (outside the
    stopwatch, so monitoring does not count as training time).
    """

    def __init__(self, name, model, digits, xp, *, eval_batch=512):
        self.name, self.model, self.digits, self.xp = name, model, digits, xp
        self.eval_batch = eval_batch
        self.forward_evals = 0   # examples pushed through the model (one member = one model)
        self.backward_evals = 0  # examples backpropagated
        self.clock = _common.Stopwatch(xp)
        self.history = {k: [] for k in ("forward_evals", "wall_s", "train_loss", "train_acc", "test_loss", "test_acc")}

    def _loss_acc(self, params, x, y):
        n = int(x.shape[0])
        loss_sum, correct = 0.0, 0.0
        for start in range(0, n, self.eval_batch):
            stop = min(n, start + self.eval_batch)
            logits = self.model.apply(params, x[start:stop, ...])
            loss_sum += float(nn.softmax_cross_entropy(logits, y[start:stop], reduction="sum"))
            correct += float(nn.accuracy(logits, y[start:stop])) * (stop - start)
        return loss_sum / n, correct / n

    def record(self, params):
        d = self.digits
        train_loss, train_acc = self._loss_acc(params, d.x_train, d.y_train)
        test_loss, test_acc = self._loss_acc(params, d.x_test, d.y_test)
        for key, value in (("forward_evals", self.forward_evals), ("wall_s", self.clock.total),
                           ("train_loss", train_loss), ("train_acc", train_acc),
                           ("test_loss", test_loss), ("test_acc", test_acc)):
            self.history[key].append(value)
        return test_acc

    def summary(self, peak_mib):
        h = self.history
        return {"method": self.name, "train_acc": h["train_acc"][-1], "test_acc": h["test_acc"][-1],
                "train_loss": h["train_loss"][-1], "test_loss": h["test_loss"][-1], "wall_s": self.clock.total,
                "forward_evals": self.forward_evals, "backward_evals": self.backward_evals, "peak_mib": peak_mib}


# ----------------------------------------------------------------------------
# the three training loops
# ----------------------------------------------------------------------------
def train_sgd(model, digits, xp, *, steps, batch_size, lr, momentum, seed, n_evals=25, show_progress=True):
    """Backpropagation + SGD (Nesterov momentum)."""
    rec = Recorder("SGD", model, digits, xp)
    params = model.init(seed=seed, xp=xp)
    opt = optim.sgd(lr=lr, momentum=momentum, nesterov=True)
    state = opt.init(params)
    batches = _common.batch_stream(digits.x_train, digits.y_train, batch_size, seed=seed)
    eval_at = _common.checkpoints(steps, n_evals)
    rec.record(params)
    bar = _common.progress(steps, "SGD    ", disable=not show_progress)
    for step in range(1, steps + 1):
        rec.clock.start()
        xb, yb = next(batches)
        loss, grads = model.loss_and_grad(params, xb, yb)       # forward + backward of one batch
        params, state = opt.update(grads, state, params)         # pure: new dicts back
        rec.forward_evals += batch_size
        rec.backward_evals += batch_size
        rec.clock.pause()
        bar.update()
        if step in eval_at:
            bar.set_postfix(loss=f"{float(loss):.3f}", test_acc=f"{rec.record(params):.3f}")
    bar.close()
    return params, rec, {}


def train_egd(model, digits, xp, *, steps, batch_size, lr, momentum, seed, n_evals=25, evo_interval, pop_size,
              sigma, selection_batch, show_progress=True, population=True):
    """The same SGD steps, plus an evolution cycle every ``evo_interval`` steps.

    ``population``: score each cycle with the population scorer
    (``egdnp.es.egd_scorer.model_scorer``: all members in population forwards,
    egdnp's extension beyond the EvoSGD spec) instead of one closure call per member.
    """
    rec = Recorder("EGD", model, digits, xp)
    params = model.init(seed=seed, xp=xp)
    reports = []
    opt = egd(lr=lr, momentum=momentum, nesterov=True, evo_interval=evo_interval, pop_size=pop_size, sigma=sigma,
              seed=seed, callback=reports.append)
    state = opt.init(params)
    batches = _common.batch_stream(digits.x_train, digits.y_train, batch_size, seed=seed)
    # Every member of a cycle is scored on the same selection batch, chosen by the cycle number.
    selection = {}

    def selection_batch_of(cycle, phase="score"):
        if cycle not in selection:
            selection.clear()
            idx = data.batch_indices(int(digits.x_train.shape[0]), selection_batch, seed=seed + 1, epoch=cycle)[0]
            selection[cycle] = _take(xp, digits.x_train, idx), _take(xp, digits.y_train, idx)
        return selection[cycle]

    def closure(candidate, cycle=0, phase="score"):
        xs, ys = selection_batch_of(cycle, phase)
        rec.forward_evals += selection_batch
        return nn.softmax_cross_entropy(model.apply(candidate, xs), ys)   # forward only

    # The population scorer: every member of a cycle in one population-batched forward.
    population_scorer = es.egd_scorer.model_scorer(model, batch=selection_batch_of)

    def scorer(mutations):
        rec.forward_evals += selection_batch * len(mutations.members)
        return population_scorer(mutations)

    score = {"scorer": scorer} if population else {"closure": closure}
    if show_progress or population:
        print("EGD: cycles scored by " + ("the population scorer (all members of a cycle in one population forward; "
                                          "egdnp's extension beyond the EvoSGD spec)" if population else
                                          "the closure (one forward per member, the spec's path)"))

    eval_at = _common.checkpoints(steps, n_evals)
    rec.record(params)
    bar = _common.progress(steps, "EGD    ", disable=not show_progress)
    for step in range(1, steps + 1):
        rec.clock.start()
        xb, yb = next(batches)
        loss, grads = model.loss_and_grad(params, xb, yb)
        params, state, report = opt.update(grads, state, params, **score)   # report: None or a cycle's
        rec.forward_evals += batch_size
        rec.backward_evals += batch_size
        rec.clock.pause()
        bar.update()
        if step in eval_at:
            bar.set_postfix(loss=f"{float(loss):.3f}", test_acc=f"{rec.record(params):.3f}", cycles=len(reports))
    bar.close()
    extra = {"cycles": len(reports),
             "scoring": "population" if population else "closure",
             "cycles_improving": sum(1 for r in reports if r.loss < r.base_loss),
             "mean_cycle_gain": (sum(r.base_loss - r.loss for r in reports) / len(reports)) if reports else 0.0,
             "evolution_seconds": sum(r.seconds for r in reports)}
    return params, rec, extra


def train_eggroll(model, digits, xp, *, generations, batch_size, pop_size, rank, sigma, lr, seed, n_evals=25,
                  chunk_size=None, show_progress=True):
    """EGGROLL: forward passes only, low-rank perturbations, Adam on the ES gradient."""
    rec = Recorder("EGGROLL", model, digits, xp)
    params = model.init(seed=seed, xp=xp)
    strategy = es.Eggroll(pop_size=pop_size, rank=rank, sigma=sigma, optimizer=optim.adam(lr))
    state = strategy.init(params, seed=seed)
    batches = _common.batch_stream(digits.x_train, digits.y_train, batch_size, seed=seed)
    eval_at = _common.checkpoints(generations, n_evals)
    rec.record(state.params)
    bar = _common.progress(generations, "EGGROLL", disable=not show_progress)
    for gen in range(1, generations + 1):
        rec.clock.start()
        xb, yb = next(batches)
        perts = strategy.ask(state)                                   # this generation's A_i, B_i
        fitness = es.population_fitness(model, state.params, xb, perts,  # (pop,) = -cross-entropy
                                        lambda logits: es.classification_fitness(logits, yb), chunk_size=chunk_size)
        state, info = strategy.tell(state, perts, fitness)            # shaped fitness -> ES gradient -> Adam
        rec.forward_evals += pop_size * batch_size
        rec.clock.pause()
        bar.update()
        if gen in eval_at:
            bar.set_postfix(fitness=f"{info['fitness_mean']:.3f}", test_acc=f"{rec.record(state.params):.3f}")
    bar.close()
    return state.params, rec, {}


def _take(xp, x, idx):
    """Rows ``idx`` (host int array) of ``x`` on any backend."""
    if _backend.is_numpy(xp):
        return x[idx]
    return xp.take(x, xp.asarray(idx, device=_backend.device_of(x)), axis=0)


def run_all(runs, out, title, plot=True, warmups=None):
    """Run each ``(name, fn)`` under peak-memory tracking, print and save the table and the curves.

    ``warmups`` maps a name to a short run of the same method, made first and
    outside the tracing: on a fresh install it compiles the Numba kernels
    (cached for later processes).  Under tracemalloc every Python allocation
    is traced, so compiling there took ~2.5x longer (the quickstart's first
    EGGROLL generation: 4.2 s against 1.8 s) and counted the compiler's own
    objects in the method's peak MiB.
    """
    rows, histories, extras = [], {}, {}
    for name, fn in runs:
        if warmups and name in warmups:
            start = time.perf_counter()
            warmups[name]()
            print(f"{name}: warm-up run {time.perf_counter() - start:.1f} s "
                  "(compiles the kernels on a fresh install; not in the table)")
        with _common.peak_memory() as mem:
            _, rec, extra = fn()
        rows.append(rec.summary(mem["peak_mib"]))
        histories[name] = rec.history
        extras[name] = extra
    table = _common.format_table(rows)
    print()
    print(table)
    _common.write_text(os.path.join(out, "table.md"), table + "\n")
    rss = _common.max_rss_mib()
    print(f"process peak resident memory (all three runs, Python and libraries included): {rss:.0f} MiB")
    _common.write_json(os.path.join(out, "results.json"),
                       {"title": title, "table": rows, "extra": extras, "max_rss_mib": rss, "curves": histories})
    if plot and _common.plot_learning_curves(histories, os.path.join(out, "learning_curves.png"), title):
        print(f"plot: {os.path.join(out, 'learning_curves.png')}")
    return rows


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__, "quickstart_out")
    parser.add_argument("--steps", type=int, default=600, help="SGD/EGD steps of batch 64 (default 600, ~28 epochs)")
    parser.add_argument("--generations", type=int, default=400, help="EGGROLL generations (default 400)")
    parser.add_argument("--pop", type=int, default=256, help="EGGROLL population (default 256)")
    parser.add_argument("--pop-batch", type=int, default=128,
                        help="EGGROLL examples per generation, shared by all members (default 128)")
    args = parser.parse_args(argv)
    if args.fast:
        args.steps, args.generations, args.pop, args.pop_batch = 40, 10, 16, 32
    _common.limit_threads(args.threads)
    xp = _common.namespace(args.backend)
    out = _common.output_dir(args.out)
    digits = data.load_digits(xp=xp)                  # x: (n, 64) float32 in [0, 1]; y: (n,) int64
    model = nn.mlp((64, 64, 10), activation="tanh")   # layers fc1, tanh1, fc2
    show = not args.no_progress
    print(f"digits: {digits.x_train.shape[0]} train / {digits.x_test.shape[0]} test, model 64-64-10 "
          f"({model.num_params():,} parameters), backend {_backend.backend_name(xp)}, seed {args.seed}")
    sgd_like = dict(steps=args.steps, batch_size=64, lr=0.1, momentum=0.9, seed=args.seed,
                    show_progress=show)
    egd_like = dict(evo_interval=max(2, args.steps // 20), pop_size=8, sigma=0.02, selection_batch=256)
    eggroll_like = dict(batch_size=args.pop_batch, pop_size=args.pop, rank=1, sigma=0.05, lr=0.03, seed=args.seed)
    runs = [
        ("SGD", lambda: train_sgd(model, digits, xp, **sgd_like)),
        ("EGD", lambda: train_egd(model, digits, xp, **sgd_like, **egd_like)),
        ("EGGROLL", lambda: train_eggroll(model, digits, xp, generations=args.generations, show_progress=show,
                                          **eggroll_like)),
    ]
    # one step, one evolution cycle, one generation: the code paths of the runs
    quiet = dict(sgd_like, show_progress=False)
    warmups = {
        "SGD": lambda: train_sgd(model, digits, xp, **dict(quiet, steps=1)),
        "EGD": lambda: train_egd(model, digits, xp, **dict(quiet, steps=egd_like["evo_interval"]), **egd_like),
        "EGGROLL": lambda: train_eggroll(model, digits, xp, generations=1, show_progress=False, **eggroll_like),
    }
    run_all(runs, out, f"digits MLP 64-64-10, {_backend.backend_name(xp)}, seed {args.seed}", plot=not args.no_plot,
            warmups=warmups)
    print(f"outputs written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
