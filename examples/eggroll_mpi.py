"""EGGROLL on the digits across MPI processes: each rank scores its block of the population.

The README's EGGROLL example (64-64-10 tanh MLP, 256 members, rank 1, Adam)
run by egdnp.distributed.DistributedEggroll.  Every rank builds the same
strategy and draws the same batches; rank r scores only its contiguous block
of antithetic pairs; one MPI_Allgatherv of the fitness vector (4 bytes a
member) is the generation's communication; every rank then forms the whole
update itself from the addressed noise.  So every rank holds bitwise the same
parameters, and the final accuracy is the same on 1, 2 or 4 processes (the
parameters agree up to BLAS rounding: the shared batch's x B product is one
GEMM over the pairs a process scores; ``--mode allreduce``: each rank forms
only its pairs' gradient and one all-reduce sums them).

Only rank 0 prints and writes files.  ``--checkpoint PATH`` saves after every
epoch (rank 0, atomically) and resumes from PATH when it exists, on any number
of processes.

Run::

    mpiexec -n 2 python examples/eggroll_mpi.py           # ~3 s per epoch on 2 cores
    python examples/eggroll_mpi.py                        # the same run in one process (no MPI needed)
    mpiexec -n 2 python examples/eggroll_mpi.py --fast    # a few seconds (the tests)
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # find _common.py when run from anywhere

from egdnp import data, distributed, es, nn, optim

import _common


def main(argv=None) -> int:
    parser = _common.make_parser(__doc__, "eggroll_mpi_out")
    parser.add_argument("--epochs", type=int, default=None, help="epochs over the training digits (default 25; 2 with --fast)")
    parser.add_argument("--pop", type=int, default=256, help="population size (default 256)")
    parser.add_argument("--mode", choices=distributed.MODES, default="fitness",
                        help="fitness: exchange fitness only (default); allreduce: also sum one gradient buffer")
    parser.add_argument("--checkpoint", default=None, help="save after every epoch, resume from it when it exists")
    parser.add_argument("--check", action="store_true", help="verify after every generation that all ranks agree")
    args = parser.parse_args(argv)
    if args.fast:
        args.pop = 64
    if args.epochs is None:
        args.epochs = 2 if args.fast else 25
    _common.limit_threads(args.threads)
    comm = distributed.world()
    with distributed.abort_on_error(comm):
        xp = _common.namespace(args.backend)
        if _common._backend.is_cupy(xp):
            distributed.select_device(xp, comm)  # local rank % GPU count
        out = _common.output_dir(args.out) if comm.is_root else None
        digits = data.load_digits(xp=xp)
        model = nn.mlp((64, 64, 10), activation="tanh")
        strategy = es.Eggroll(pop_size=args.pop, rank=1, sigma=0.05, optimizer=optim.adam(0.03))
        dist = distributed.DistributedEggroll(strategy, comm, mode=args.mode, check=args.check)
        state = dist.init(model.init(seed=args.seed, xp=xp), seed=args.seed)
        start_epoch = 0
        if args.checkpoint and os.path.exists(args.checkpoint):
            state = dist.load(args.checkpoint, like=state.params)
            start_epoch = state.generation // _generations_per_epoch(digits, args.seed)
            comm.print(f"resumed from {args.checkpoint} at generation {state.generation} (epoch {start_epoch})")
        comm.print(f"EGGROLL on {comm.size} process(es): population {args.pop}, {len(dist.block.members)} members "
                   f"on rank 0, mode {args.mode}")
        bar = _common.progress(args.epochs - start_epoch, "EGGROLL", disable=args.no_progress or not comm.is_root)
        t0 = time.perf_counter()
        info = {"bytes_sent": 0}
        for epoch in range(start_epoch, args.epochs):
            for xb, yb in data.iterate_batches(digits.x_train, digits.y_train, 128, seed=args.seed, epoch=epoch,
                                               drop_last=True):
                def score(local, params=state.params, xb=xb, yb=yb):
                    return es.population_fitness(model, params, xb, local, lambda o: es.classification_fitness(o, yb))

                state, info = dist.step(state, score)
            if args.checkpoint:
                dist.save(args.checkpoint, state)
            bar.update()
            bar.set_postfix({"fitness": f"{info['fitness_mean']:.3f}"})
        bar.close()
        wall = time.perf_counter() - t0
        acc = float(nn.accuracy(model.apply(state.params, digits.x_test), digits.y_test))
        checksum = dist.check_identical(state.params)
        comm.print(f"test accuracy {acc:.3f}")
        comm.print(f"parameters CRC-32 {checksum:08x} on all {comm.size} rank(s); {wall:.1f} s; "
                   f"{info['bytes_sent']} bytes sent by rank 0 in the last generation run")
        if comm.is_root:
            _common.write_json(os.path.join(out, "results.json"),
                               {"test_acc": acc, "processes": comm.size, "mode": args.mode, "pop": args.pop,
                                "epochs": args.epochs, "generations": state.generation, "wall_s": wall,
                                "params_crc32": checksum})
            print(f"outputs written to {out}")
    return 0


def _generations_per_epoch(digits, seed) -> int:
    return sum(1 for _ in data.iterate_batches(digits.x_train, digits.y_train, 128, seed=seed, epoch=0, drop_last=True))


if __name__ == "__main__":
    sys.exit(main())
