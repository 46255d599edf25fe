"""Scenarios run under ``mpiexec`` by tests/test_distributed_mpi.py (and, as one process, as their references).

``python tests/mpi_scenarios.py SCENARIO OUT [ARGS...]``: every rank runs the
scenario; rank 0 writes its results to the ``.npz`` file OUT.  The same
functions run in the test process itself (one process, no MPI) to give the
single-process reference.
"""

from __future__ import annotations

import sys

import numpy as np

from egdnp import atomic_write, distributed, es, nn, optim
from egdnp.optim.egd import egd

MODEL = nn.mlp((10, 12, 3), activation="tanh")
CONVENTIONS = ("egdnp", "hyperscalees-torch", "hyperscalees-jax")


def batch(generation, n=24, n_in=10, n_out=3):
    r = np.random.default_rng(1000 + generation)
    return r.standard_normal((n, n_in)), r.integers(0, n_out, n)


def params64():
    return {k: v.astype(np.float64) for k, v in MODEL.init(seed=3).items()}


def make_strategy(convention, antithetic=True, pop=22):
    # pop 22 = 11 pairs: blocks of 6/5 pairs on 2 ranks, 4/4/3 on 3
    return es.Eggroll(pop_size=pop if antithetic else pop - 1, rank=2, sigma=0.05, optimizer=optim.adam(0.05),
                      convention=convention, antithetic=antithetic)


def run_eggroll(dist, state, generations, fail_rank=None, fail_at=None, inputs="shared"):
    """``inputs="shared"``: one data batch for all members (the first layer's x B product is one GEMM over the
    scored pairs, whose rounding can depend on how many pairs a rank scores); ``"member"``: every member gets
    its own copy of the batch, and with these narrow layers each member is computed on its own (bitwise the
    same in any slice of the population)."""
    for _ in range(generations):
        xb, yb = batch(state.generation)

        def score(local, g=state.generation, params=state.params, xb=xb, yb=yb):
            if dist.comm.rank == fail_rank and g == fail_at:
                raise RuntimeError(f"injected failure in the fitness function at generation {g}")
            if inputs == "member":
                xm = np.ascontiguousarray(np.broadcast_to(xb, (local.pop_size,) + xb.shape))
                return es.classification_fitness(es.perturbed_model_forward(MODEL, params, xm, local), yb)
            return es.population_fitness(MODEL, params, xb, local, lambda out: es.classification_fitness(out, yb),
                                         chunk_size=4)

        state, info = dist.step(state, score)
    return state, info


def eggroll_cases():
    """(name, convention, antithetic, mode, inputs) of every EGGROLL case."""
    cases = [(f"{c}-{m}-{i}", c, True, m, i) for c in CONVENTIONS for m in distributed.MODES
             for i in ("shared", "member")]
    cases.append(("noanti-fitness-member", "egdnp", False, "fitness", "member"))
    return cases


def eggroll(comm=None, generations=10):
    """Every case for ``generations`` generations, float64; params by case name."""
    out = {}
    for name, conv, anti, mode, inputs in eggroll_cases():
        dist = distributed.DistributedEggroll(make_strategy(conv, anti), comm, mode=mode, check=True)
        state, info = run_eggroll(dist, dist.init(params64(), seed=11), generations, inputs=inputs)
        for k, v in state.params.items():
            out[f"{name}/{k}"] = v
        out[f"{name}/bytes"] = np.array(info["bytes_sent"])
    return out


def variant_cases():
    """(name, strategy factory, mode) of the variants whose tell adds work between gradient and optimiser."""
    def baseline():  # clip_norm 0.05: the clipping is active in every generation
        return es.EggrollBaseline(pop_size=24, group_size=8, rank=2, sigma=0.05, clip_norm=0.05,
                                  optimizer=optim.adam(0.05))

    def sparse():
        return es.SparseES(pop_size=24, sigma=0.05, optimizer=optim.sgd(0.1))

    def frozen_zeros():  # the official convention hands the optimiser zeros for the unperturbed biases
        return es.Eggroll(pop_size=24, rank=2, sigma=0.05, optimizer=optim.adamw(0.05, weight_decay=0.1),
                          convention="hyperscalees-jax", noise_map={"*.b": "frozen"})

    return [(f"{n}-{m}", f, m) for n, f in (("baseline", baseline), ("sparse", sparse), ("frozen", frozen_zeros))
            for m in distributed.MODES]


def variants(comm=None, generations=6):
    """Every variant case, float64, per-member inputs; params and the last grad_norm by case name."""
    out = {}
    for name, factory, mode in variant_cases():
        dist = distributed.DistributedEggroll(factory(), comm, mode=mode, check=True)
        state, info = run_eggroll(dist, dist.init(params64(), seed=7), generations, inputs="member")
        out |= {f"{name}/{k}": v for k, v in state.params.items()}
        out[f"{name}/grad_norm"] = np.array(info["grad_norm"])
    return out


def checkpoint_first(path, comm=None):
    dist = distributed.DistributedEggroll(make_strategy("egdnp"), comm, check=True)
    state, _ = run_eggroll(dist, dist.init(params64(), seed=5), 3, inputs="member")
    dist.save(path, state)
    return {}


def checkpoint_resume(path, comm=None):
    dist = distributed.DistributedEggroll(make_strategy("egdnp"), comm, check=True)
    state = dist.load(path, like=params64())
    state, _ = run_eggroll(dist, state, 3, inputs="member")
    return {f"resumed/{k}": v for k, v in state.params.items()} | {"generation": np.array(state.generation)}


def fault(comm=None):
    with distributed.abort_on_error(comm):
        dist = distributed.DistributedEggroll(make_strategy("egdnp"), comm)
        run_eggroll(dist, dist.init(params64(), seed=5), 6, fail_rank=1, fail_at=3)
    return {}


def _egd_closure(cycle_batch):
    def closure(params, cycle=0, phase="score"):
        xb, yb = cycle_batch(cycle, phase)
        return float(nn.softmax_cross_entropy(MODEL.apply(params, xb), yb))

    return closure


def egd_runs(comm=None):
    """Data-parallel SGD+EGD on batch shards, and member-parallel EGD cycles."""
    comm = distributed.world() if comm is None else comm
    out = {}
    # member-parallel: every rank has the whole batch, members are shared out
    opt = egd(lr=0.1, momentum=0.9, evo_interval=3, pop_size=7, population_storage="seed", seed=4)
    params = params64()
    state = opt.init(params)
    closure = distributed.member_parallel(_egd_closure(lambda c, ph: batch(50 + c + (100 if ph == "rescore" else 0))),
                                          comm)
    for step in range(9):
        xb, yb = batch(step)
        _, grads = MODEL.loss_and_grad(params, xb, yb)
        params, state, _ = opt.update(grads, state, params, closure=closure)
    out |= {f"member/{k}": v for k, v in params.items()}
    out["member/checksums"] = np.array(comm.allgather_object(distributed.params_checksum(params)), dtype=np.int64)
    # data-parallel: rank r holds rows r::size of every batch; gradient and loss are averaged
    opt = egd(lr=0.1, momentum=0.9, evo_interval=3, pop_size=5, seed=4, loss_reduce=distributed.mean_loss(comm))
    params = params64()
    state = opt.init(params)

    def shard(xy):
        return xy[0][comm.rank::comm.size], xy[1][comm.rank::comm.size]

    closure = _egd_closure(lambda c, ph: shard(batch(70 + c, n=24)))
    for step in range(9):
        xb, yb = shard(batch(step, n=24))
        _, grads = MODEL.loss_and_grad(params, xb, yb)
        grads = distributed.average_gradients(grads, comm)
        params, state, _ = opt.update(grads, state, params, closure=closure)
    out |= {f"data/{k}": v for k, v in params.items()}
    out["data/checksums"] = np.array(comm.allgather_object(distributed.params_checksum(params)), dtype=np.int64)
    return out


SCENARIOS = {"eggroll": eggroll, "checkpoint_first": checkpoint_first, "checkpoint_resume": checkpoint_resume,
             "fault": fault, "egd": egd_runs, "variants": variants}


def main(argv):
    name, out_path, *args = argv
    comm = distributed.world()
    result = SCENARIOS[name](*args, comm=comm) if args else SCENARIOS[name](comm=comm)
    if comm.is_root:
        result["size"] = np.array(comm.size)
        with atomic_write(out_path) as fh:
            np.savez(fh, **result)


if __name__ == "__main__":
    main(sys.argv[1:])
