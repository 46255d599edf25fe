"""Driver of bench_distributed: time EGGROLL generations on every rank of an MPI job.

    mpiexec -n 2 python asv_bench/benchmarks/_mpi_generation.py --mode fitness --generations 6

One generation of the 784-256-10 tanh MLP, pop 4096, rank 4, batch 256 (the
bench_eggroll ``MLPGeneration`` set-up), run by :class:`egdnp.distributed.DistributedEggroll`:
every rank scores its block of pairs, the fitness is all-gathered, and the
update is formed on every rank (``fitness``) or summed with one all-reduce
(``allreduce``).  Generations are timed barrier to barrier on rank 0 after
two warm-up generations; rank 0 prints one JSON line: the per-generation
seconds, the CPU seconds of one generation summed over ranks (``cpu_total``:
the work, which other load on the machine hardly changes), the payload bytes
every rank sent (summed) and the split of one generation into ask / score /
tell on rank 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

POP, RANK, BATCH, SIGMA, LR, CHUNK = 4096, 4, 256, 0.02, 0.1, 64
SIZES = (784, 256, 10)


def main(argv=None):
    try:  # the installed egdnp (asv's environment of the commit under test) ...
        from egdnp import distributed, es, nn, optim
    except ImportError:  # ... or, where the installed one predates egdnp.distributed, the checkout's
        for name in [m for m in sys.modules if m == "egdnp" or m.startswith("egdnp.")]:
            del sys.modules[name]
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        from egdnp import distributed, es, nn, optim

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("fitness", "allreduce"), default="fitness")
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--pop", type=int, default=POP)
    ap.add_argument("--batch", type=int, default=BATCH)
    args = ap.parse_args(argv)
    comm = distributed.world()
    with distributed.abort_on_error(comm):
        g = np.random.default_rng(1)
        x = g.random((args.batch, SIZES[0]), dtype=np.float32)
        y = g.integers(0, SIZES[-1], args.batch)
        model = nn.mlp(SIZES, activation="tanh")
        strategy = es.Eggroll(pop_size=args.pop, rank=RANK, sigma=SIGMA, optimizer=optim.sgd(LR))
        dist = distributed.DistributedEggroll(strategy, comm, mode=args.mode)
        state = dist.init(model.init(seed=0), seed=0)
        fit = lambda out: es.classification_fitness(out, y)  # noqa: E731
        times, cpu, parts, sent = [], [], [], []
        for gen in range(args.generations + 2):
            comm.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            perts, local = dist.ask(state)
            t1 = time.perf_counter()
            f = es.population_fitness(model, state.params, x, local, fit, chunk_size=CHUNK)
            t2 = time.perf_counter()
            state, info = dist.tell(state, perts, f)
            t3, c3 = time.perf_counter(), time.process_time()
            comm.barrier()
            t4 = time.perf_counter()
            if gen >= 2:
                times.append(t4 - t0)
                cpu.append(c3 - c0)
                parts.append((t1 - t0, t2 - t1, t3 - t2))
                sent.append(info["bytes_sent"])
        total_sent = sum(comm.allgather_object(sent[-1]))
        # CPU seconds of one generation summed over ranks (best generation of each rank): the work,
        # nearly independent of other load on the machine (the wall time is not)
        cpu_total = sum(comm.allgather_object(min(cpu)))
        if comm.is_root:
            print(json.dumps({"size": comm.size, "mode": args.mode, "times": times, "best": min(times),
                              "median": float(np.median(times)), "cpu_total": cpu_total,
                              "bytes_per_generation": total_sent,
                              "ask_score_tell_best": [min(p[i] for p in parts) for i in range(3)]}), flush=True)


if __name__ == "__main__":
    main()
