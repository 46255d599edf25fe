"""Helpers shared by the example scripts (not part of the egdnp library).

What lives here is plumbing a reader of the examples can skip: command-line
pieces, progress bars, the results table, plots, the output directory and
peak-memory measurement.  The training loops themselves stay in the examples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
import tracemalloc
from typing import Iterator

from egdnp import _backend, atomic_write
from egdnp import data as _data


# ----------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------
def make_parser(doc: str, default_out: str) -> argparse.ArgumentParser:
    """An argparse parser with the options every example takes.

    ``--backend``, ``--seed``, ``--out``, ``--no-plot``, ``--fast``,
    ``--no-progress``; the module docstring becomes the help text.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--backend", default="numpy",
                        help="array backend: numpy (default), cupy (needs a usable GPU) or array_api_strict")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random number (default 0)")
    parser.add_argument("--out", default=default_out, help=f"output directory, created if needed (default {default_out})")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot (matplotlib not needed)")
    parser.add_argument("--fast", action="store_true", help="tiny sizes, a few seconds (what the tests run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for BLAS and Numba (default 1: these models are small, and a parallel "
                             "region on a busy machine stalls; 0 keeps the libraries' defaults)")
    return parser


def limit_threads(n: int) -> None:
    """Cap BLAS (threadpoolctl) and Numba threads at ``n``; ``n <= 0`` leaves them alone.

    With tiny matrices a parallel region costs more than it saves, and when
    other processes share the cores a thread waiting for its partner can lose
    a whole scheduler time slice per call (milliseconds for microseconds of work).
    """
    if n <= 0:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    try:
        import numba

        numba.set_num_threads(min(int(n), numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass


def namespace(backend: str):
    """The array namespace for ``--backend``, or exit with a readable message."""
    try:
        return _backend.get_namespace(backend)
    except (RuntimeError, ValueError, TypeError, ImportError) as exc:
        raise SystemExit(f"--backend {backend}: {exc}") from None


def output_dir(path: str) -> str:
    """Create ``path`` and return its absolute form (printed by the examples)."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    return path


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON, atomically (a failed write keeps the previous file)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically (temporary file, fsync, rename)."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def save_figure(fig, path: str, dpi: int = 110) -> None:
    """Save a matplotlib figure as PNG, atomically."""
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=dpi)


# ----------------------------------------------------------------------------
# progress, timing, memory
# ----------------------------------------------------------------------------
def progress(total: int, desc: str, disable: bool = False):
    """A tqdm progress bar on stderr (a silent stand-in when tqdm is missing or ``disable``)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        disable = True
    if disable:
        return _NoBar()
    return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=True, file=sys.stderr)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


class Stopwatch:
    """Wall time of the training work only: ``pause()`` around monitoring evaluations."""

    def __init__(self, xp=None):
        self.xp = xp
        self.total = 0.0
        self._t0 = None

    def start(self):
        self._t0 = time.perf_counter()

    def pause(self):
        if self.xp is not None:
            _backend.synchronize(self.xp)  # GPU work is asynchronous: count it where it was queued
        self.total += time.perf_counter() - self._t0
        self._t0 = None


@contextlib.contextmanager
def peak_memory() -> Iterator[dict]:
    """Peak host memory allocated inside the ``with`` block, in MiB (``result["peak_mib"]``).

    tracemalloc sees every NumPy buffer (NumPy reports its allocations to it),
    so this is the peak of the arrays and Python objects created in the block,
    not the process's resident size (which :func:`max_rss_mib` reports).
    Device (GPU) memory is not included.
    """
    result = {"peak_mib": float("nan")}
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield result
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        result["peak_mib"] = max(0, peak - base) / 2**20
        if not was_tracing:
            tracemalloc.stop()


def max_rss_mib() -> float:
    """Resident set size high-water mark of this process in MiB (Linux: ru_maxrss is in KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------
def batch_stream(x, y, batch_size: int, *, seed: int) -> Iterator[tuple]:
    """Endless seeded mini-batches: epoch after epoch of :func:`egdnp.data.iterate_batches`."""
    epoch = 0
    while True:
        yield from _data.iterate_batches(x, y, batch_size, seed=seed, epoch=epoch, drop_last=True)
        epoch += 1


def checkpoints(total: int, n: int = 25) -> set:
    """About ``n`` log-spaced step numbers in 1..total (always including ``total``): even points on log axes."""
    total, n = int(total), max(2, int(n))
    marks = {total}
    for i in range(n):
        marks.add(max(1, int(round(total ** (i / (n - 1))))))
    return marks


# ----------------------------------------------------------------------------
# results table and plots
# ----------------------------------------------------------------------------
COLUMNS = [
    ("method", "method", "{}"),
    ("train_acc", "train acc", "{:.3f}"),
    ("test_acc", "test acc", "{:.3f}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("wall_s", "wall s", "{:.1f}"),
    ("forward_evals", "fwd evals", "{:,}"),
    ("backward_evals", "bwd evals", "{:,}"),
    ("peak_mib", "peak MiB", "{:.1f}"),
]


def format_table(rows: list[dict], columns=COLUMNS) -> str:
    """A Markdown table (readable in a terminal too) of result dicts."""
    header = [title for _, title, _ in columns]
    body = [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    sep = "|" + "|".join(("-" * (w + 2)) if i == 0 else ("-" * (w + 1) + ":") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in body])


def plot_learning_curves(histories: dict, path: str, title: str) -> bool:
    """Test accuracy and train loss against forward evaluations and wall time; False without matplotlib.

    ``histories[name]`` is a dict of equal-length lists ``forward_evals``,
    ``wall_s``, ``test_acc``, ``train_loss``.
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for name, h in histories.items():
        # The first point (before training) sits at 0 evaluations / 0 s: off a log axis.
        axes[0].plot(h["forward_evals"][1:], h["train_loss"][1:], marker=".", label=name)
        axes[1].plot(h["forward_evals"][1:], h["test_acc"][1:], marker=".", label=name)
        axes[2].plot(h["wall_s"][1:], h["test_acc"][1:], marker=".", label=name)
    axes[0].set(xlabel="forward evaluations (examples through the model)", ylabel="train loss (cross-entropy)",
                xscale="log", yscale="log", title="loss vs. work")
    axes[1].set(xlabel="forward evaluations (examples through the model)", ylabel="test accuracy", xscale="log",
                title="accuracy vs. work")
    axes[2].set(xlabel="wall time of training (s)", ylabel="test accuracy", xscale="log", title="accuracy vs. time")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    for ax in axes[1:]:
        ax.set_ylim(0.0, 1.0)
    # One legend for the three panels, below them: a legend inside a panel covers curves.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save_figure(fig, path)
    plt.close(fig)
    return True


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib, or pass --no-plot)", file=sys.stderr)
        return None
    return plt


def plot_returns(history, path, *, title, target=None, target_label="target") -> bool:
    """Episode returns per generation (population mean and best, evaluations with their spread), as PNG.

    ``history`` holds lists ``generation``, ``mean_return``, ``max_return``,
    ``eval_generation``, ``eval_mean_return`` and optionally ``eval_std_return``
    (drawn as a band).  Returns False when matplotlib is missing.
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.8))
    ax.plot(history["generation"], history["mean_return"], label="population mean (perturbed policies)")
    ax.plot(history["generation"], history["max_return"], alpha=0.5, label="population best")
    ev_gen, ev_mean = history["eval_generation"], history["eval_mean_return"]
    ax.plot(ev_gen, ev_mean, marker="o", label="evaluation mean (unperturbed)")
    if "eval_std_return" in history:
        ev_std = history["eval_std_return"]
        ax.fill_between(ev_gen, [m - s for m, s in zip(ev_mean, ev_std)], [m + s for m, s in zip(ev_mean, ev_std)],
                        alpha=0.2)
    if target is not None:
        ax.axhline(target, color="k", linestyle="--", linewidth=1, label=f"{target_label} ({target:g})")
    ax.set(xlabel="generation", ylabel="episode return", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True
