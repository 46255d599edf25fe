"""egdnp.distributed: one EGGROLL generation on 1 and 2 MPI processes, one thread each.

The ``MLPGeneration`` set-up of bench_eggroll (784-256-10 tanh MLP, pop 4096,
rank 4, batch 256, SGD) run by :class:`egdnp.distributed.DistributedEggroll`
under ``mpiexec -n 1`` and ``mpiexec -n 2`` (the driver is
``_mpi_generation.py``, a script: ``mpiexec -n 2 python
asv_bench/benchmarks/_mpi_generation.py --mode fitness``).  Targets (issue 15):

* ``track_efficiency``: parallel efficiency ``T1 / (2 T2)`` on this 2-core
  machine, ``T`` the best seconds per generation (barrier to barrier);
  target >= 0.9.  The 1- and 2-process runs alternate (``ROUNDS`` each) so
  both see the same machine load.
* ``track_work_efficiency``: ``C1 / C2`` with ``C`` the CPU seconds of one
  generation summed over the processes: the redundant work of the parallel
  run (the replicated update in the ``"fitness"`` mode, the collectives),
  without the waiting that other load on a shared machine adds to wall time.
* ``track_bytes_per_generation``: payload bytes all ranks send per generation,
  summed: ``4 x pop`` (float32 fitness) in the default ``"fitness"`` mode,
  plus one float32 gradient of every parameter per rank in ``"allreduce"``.

Skipped (asv: NotImplementedError) where mpiexec or mpi4py is missing
(``pip install -e ".[mpi]"``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_mpi_generation.py")
MODES = ["fitness", "allreduce"]
ROUNDS, GENERATIONS = 2, 5
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _mpiexec():
    found = shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        raise NotImplementedError("mpiexec / mpi4py not installed: pip install -e '.[mpi]'")
    return found


def run_generation(n: int, mode: str, generations: int = GENERATIONS) -> dict:
    """The driver's JSON result for ``mpiexec -n n`` (seconds per generation, bytes, ask/score/tell split)."""
    cmd = [_mpiexec(), "-n", str(n), sys.executable, DRIVER, "--mode", mode, "--generations", str(generations)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **ONE_THREAD), timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][-1])


class MPIGeneration:
    """One EGGROLL generation on 1 vs 2 processes (both modes measured once, in setup_cache)."""

    params = (MODES,)
    param_names = ["mode"]
    timeout = 1200

    def setup_cache(self):
        _mpiexec()
        out = {}
        for mode in MODES:
            best = {1: float("inf"), 2: float("inf")}
            cpu = {1: float("inf"), 2: float("inf")}
            for _ in range(ROUNDS):
                for n in (1, 2):
                    r = run_generation(n, mode)
                    best[n], cpu[n] = min(best[n], r["best"]), min(cpu[n], r["cpu_total"])
                    out[(mode, "bytes")] = r["bytes_per_generation"] if n == 2 else out.get((mode, "bytes"))
            out[(mode, "t1")], out[(mode, "t2")] = best[1], best[2]
            out[(mode, "c1")], out[(mode, "c2")] = cpu[1], cpu[2]
        return {f"{k[0]}/{k[1]}": v for k, v in out.items()}

    def track_efficiency(self, cache, mode):
        """T1 / (2 T2), best seconds per generation on 1 and 2 processes (target >= 0.9)."""
        return cache[f"{mode}/t1"] / (2.0 * cache[f"{mode}/t2"])

    track_efficiency.unit = "ratio"

    def track_work_efficiency(self, cache, mode):
        """CPU seconds of a generation on 1 process / summed over 2 processes (load-insensitive)."""
        return cache[f"{mode}/c1"] / cache[f"{mode}/c2"]

    track_work_efficiency.unit = "ratio"

    def track_bytes_per_generation(self, cache, mode):
        """Payload bytes sent per generation by all ranks together on 2 processes (4 x pop in 'fitness')."""
        return cache[f"{mode}/bytes"]

    track_bytes_per_generation.unit = "bytes"

    def track_seconds_2_processes(self, cache, mode):
        """Best seconds per generation on 2 processes (1 thread each)."""
        return cache[f"{mode}/t2"]

    track_seconds_2_processes.unit = "seconds"
