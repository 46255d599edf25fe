"""egdnp.distributed without MPI: partitions, local views, the one-process communicator, device choice,
CUDA-aware detection, bad input.  (Real MPI runs: tests/test_distributed_mpi.py.)"""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from egdnp import distributed, es, nn, optim
from egdnp.distributed import comm as C

MODEL = nn.mlp((6, 5, 3), activation="tanh")


def one():
    return distributed.Comm(None)


@pytest.mark.parametrize("pop, size, anti, layout", [(20, 3, True, "interleaved"), (20, 3, True, "halves"),
                                                     (7, 2, False, "interleaved"), (8, 4, True, "halves")])
def test_partition_covers_every_member_once_and_keeps_pairs(pop, size, anti, layout):
    blocks = distributed.partition(pop, size, antithetic=anti, layout=layout)
    members = np.concatenate([b.members for b in blocks])
    assert sorted(members.tolist()) == list(range(pop))
    pairs = es.perturbations.member_layout(pop, antithetic=anti, layout=layout)[0]
    sizes = [b.pairs[1] - b.pairs[0] for b in blocks]
    assert max(sizes) - min(sizes) <= 1
    for b in blocks:  # a block holds exactly the members of its pairs: no pair is split
        assert sorted(pairs[m] for m in b.members.tolist()) == sorted(list(range(*b.pairs)) * (2 if anti else 1))


@pytest.mark.parametrize("pop, size, match", [(10, 6, "at most 5 ranks"), (9, 2, "odd"), (0, 1, "pop_size"),
                                              (10, 0, "size")])
def test_partition_bad_input(pop, size, match):
    with pytest.raises(ValueError, match=match):
        distributed.partition(pop, size)


@pytest.mark.parametrize("convention", ["egdnp", "hyperscalees-torch"])
def test_local_views_score_exactly_the_members_of_the_whole_population(convention):
    strategy = es.Eggroll(pop_size=12, rank=1, convention=convention)
    params = MODEL.init(seed=0)
    perts = strategy.ask(strategy.init(params, seed=2))
    x = np.random.default_rng(0).random((4, 6), dtype=np.float32)
    fit = lambda out: es.classification_fitness(out, np.array([0, 1, 2, 0]))  # noqa: E731
    whole = es.population_fitness(MODEL, params, x, perts, fit)
    for block in distributed.partition(12, 3, layout=strategy.convention.layout):
        part = es.population_fitness(MODEL, params, x, distributed.local_view(perts, block), fit)
        np.testing.assert_array_equal(part, whole[block.members])


def test_one_process_comm_runs_the_same_code_path():
    comm = one()
    assert (comm.rank, comm.size, comm.is_root, comm.local_rank) == (0, 1, True, 0)
    np.testing.assert_array_equal(comm.allgatherv(np.arange(3.0), [3]), np.arange(3.0))
    buf = np.ones(4)
    assert comm.allreduce_sum(buf) is buf
    assert comm.bcast_float(2.5, 0) == 2.5 and comm.allgather_object("x") == ["x"] and comm.bcast_object(7) == 7
    assert comm.bytes_sent == 0  # one process sends nothing
    x = np.arange(6.0).reshape(2, 3)[:, ::2]
    h = comm.host_buffer(x, "k")
    assert h.flags.c_contiguous and np.array_equal(h, x) and not np.shares_memory(h, x)
    with pytest.raises(ValueError, match="counts"):
        comm.allgatherv(np.arange(2.0), [3])
    grads = {"a": np.ones((2, 2), np.float32), "b": None}
    avg = distributed.average_gradients(grads, comm)
    assert avg["b"] is None and avg["a"].dtype == np.float32 and np.array_equal(avg["a"], grads["a"])
    assert distributed.mean_loss(comm)(np.float64(1.25)) == 1.25


def test_world_without_mpi_is_one_process():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from egdnp import distributed; c = distributed.world(); print(c.size, c.mpi is None)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["1", "True"], res.stderr


def test_import_egdnp_does_not_import_mpi4py():
    code = ("import sys, egdnp, egdnp.es, egdnp.optim, egdnp.distributed\n"
            "print('mpi4py' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False", res.stderr


def test_distributed_eggroll_on_one_process_equals_plain_eggroll():
    strategy = es.Eggroll(pop_size=16, rank=1, optimizer=optim.sgd(0.1))
    params = MODEL.init(seed=0)
    x, y = np.random.default_rng(1).random((8, 6), dtype=np.float32), np.arange(8) % 3
    fit = lambda out: es.classification_fitness(out, y)  # noqa: E731
    plain = strategy.init(params, seed=3)
    for mode in distributed.MODES:
        dist = distributed.DistributedEggroll(strategy, one(), mode=mode, check=True)
        state = dist.init(params, seed=3)
        ref = plain
        for _ in range(3):
            state, info = dist.step(state, lambda p, s=state: es.population_fitness(MODEL, s.params, x, p, fit))
            perts = strategy.ask(ref)
            ref, _ = strategy.tell(ref, perts, es.population_fitness(MODEL, ref.params, x, perts, fit))
        assert info["bytes_sent"] == 0
        for k in params:
            np.testing.assert_array_equal(state.params[k], ref.params[k])


def test_distributed_eggroll_bad_input():
    strategy = es.Eggroll(pop_size=16)
    with pytest.raises(ValueError, match="mode='gossip'"):
        distributed.DistributedEggroll(strategy, one(), mode="gossip")
    with pytest.raises(TypeError, match="es.Eggroll"):
        distributed.DistributedEggroll("eggroll", one())
    with pytest.raises(TypeError, match="check="):
        distributed.DistributedEggroll(strategy, one(), check=1)
    with pytest.raises(TypeError, match="Comm"):
        distributed.DistributedEggroll(strategy, comm=object())
    dist = distributed.DistributedEggroll(strategy, one())
    with pytest.raises(ValueError, match="local_fitness has shape \\(15,\\).*16 members"):
        dist.gather_fitness(np.zeros(15, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        dist.gather_fitness(np.zeros(16, np.int32))
    state = dist.init(MODEL.init(seed=0), seed=0)
    perts, _ = dist.ask(state)
    with pytest.raises(ValueError, match="finite|NaN|inf"):  # refused after the exchange, on every rank
        dist.tell(state, perts, np.full(16, np.nan, np.float32))


def test_allreduce_mode_refuses_a_strategy_with_its_own_tell_and_keeps_the_variants_it_knows():
    """A tell override the all-reduce mode cannot reproduce is refused, naming the fix; EggrollBaseline (its
    shape and clipping are what its tell adds) and the fitness mode are accepted; local views slice every
    noise kind (SparseES's, OpenES's) to the block's pairs."""

    class Logged(es.Eggroll):
        def tell(self, state, perts, fitness):
            return super().tell(state, perts, fitness * 2.0)

    with pytest.raises(ValueError, match="mode='allreduce' cannot run Logged.*overrides tell.*use mode='fitness'"):
        distributed.DistributedEggroll(Logged(pop_size=16), one(), mode="allreduce")
    distributed.DistributedEggroll(Logged(pop_size=16), one(), mode="fitness")
    baseline = es.EggrollBaseline(pop_size=16, group_size=8, clip_norm=1e-3, optimizer=optim.sgd(0.1))
    params = MODEL.init(seed=0)
    x = np.random.default_rng(1).random((16, 4, 6), dtype=np.float32)
    y = np.array([0, 1, 2, 0])
    for strategy in (baseline, es.SparseES(pop_size=16, optimizer=optim.sgd(0.1)),
                     es.OpenES(pop_size=16, optimizer=optim.sgd(0.1))):
        states = {}
        for mode in distributed.MODES:
            dist = distributed.DistributedEggroll(strategy, one(), mode=mode)
            state = dist.init(params, seed=3)
            state, info = dist.step(state, lambda p: es.classification_fitness(
                es.perturbed_model_forward(MODEL, state.params, x[:p.pop_size], p), y))
            states[mode] = (state, info)
        for k in params:
            np.testing.assert_allclose(states["allreduce"][0].params[k], states["fitness"][0].params[k],
                                       rtol=1e-5, atol=1e-7, err_msg=f"{strategy!r} {k}")
        assert states["allreduce"][1].keys() == states["fitness"][1].keys()
        if strategy is baseline:  # clipped to the global norm in both modes; the baseline's entry in both infos
            assert [states[m][1]["grad_norm"] for m in distributed.MODES] == pytest.approx([1e-3, 1e-3], rel=1e-5)
            assert "baseline_mean" in states["allreduce"][1]


def test_allreduce_mode_shapes_with_a_registered_name_or_a_callable(monkeypatch):
    """The all-reduce mode shapes the whole fitness exactly as strategy.tell does, for a registered shaping name
    and for a shaping function (the fitness mode calls strategy.tell)."""

    def halves(f):  # +1 for the better half, -1 for the rest
        return es.centered_ranks(f) * 2.0

    monkeypatch.setitem(es.FITNESS_SHAPINGS, "halves", halves)
    params = MODEL.init(seed=0)
    x = np.random.default_rng(1).random((16, 4, 6), dtype=np.float32)
    y = np.array([0, 1, 2, 0])
    for fitness in ("halves", halves):
        strategy = es.Eggroll(pop_size=16, fitness=fitness, optimizer=optim.sgd(0.1))
        states = {}
        for mode in distributed.MODES:
            dist = distributed.DistributedEggroll(strategy, one(), mode=mode)
            state = dist.init(params, seed=3)
            states[mode], _ = dist.step(state, lambda p: es.classification_fitness(
                es.perturbed_model_forward(MODEL, state.params, x[:p.pop_size], p), y))
        moved = False
        for k in params:
            np.testing.assert_allclose(states["allreduce"].params[k], states["fitness"].params[k],
                                       rtol=1e-5, atol=1e-7, err_msg=f"{fitness!r} {k}")
            moved |= not np.array_equal(states["fitness"].params[k], params[k])
        assert moved


def test_gather_members_on_one_process_and_bad_input():
    """One process: the rows come back in member order (a copy); rows that do not match the block are refused."""
    dist = distributed.DistributedEggroll(es.Eggroll(pop_size=8), one())
    rows = np.arange(8 * 3, dtype=np.float64).reshape(8, 3)
    got = dist.gather_members(rows)
    np.testing.assert_array_equal(got, rows)
    assert got is not rows
    with pytest.raises(ValueError, match=r"local_rows has shape \(7, 3\).*8 members"):
        dist.gather_members(rows[:7])


def test_checkpoint_save_failure_reaches_every_rank_and_load_checks(tmp_path):
    strategy = es.Eggroll(pop_size=8, optimizer=optim.sgd(0.1))
    dist = distributed.DistributedEggroll(strategy, one())
    state = dist.init(MODEL.init(seed=0), seed=1)
    with pytest.raises(RuntimeError, match="rank 0 could not write"):
        dist.save(tmp_path / "missing-folder" / "ck.npz", state)
    dist.save(tmp_path / "ck.npz", state)
    with pytest.raises(ValueError, match="could not resume.*rank 0: ValueError.*pop_size"):
        distributed.DistributedEggroll(es.Eggroll(pop_size=10, optimizer=optim.sgd(0.1)), one()).load(tmp_path / "ck.npz")
    back = dist.load(tmp_path / "ck.npz")
    assert distributed.params_checksum(back.params) == distributed.params_checksum(state.params)


def test_params_checksum_sees_one_bit():
    p = MODEL.init(seed=0)
    q = {k: v.copy() for k, v in p.items()}
    q["fc2.bias"].view(np.uint32)[0] ^= 1
    assert distributed.params_checksum(p) != distributed.params_checksum(q)
    assert distributed.params_checksum(p) == distributed.params_checksum({k: v.copy() for k, v in p.items()})


def test_device_choice_is_local_rank_modulo_device_count():
    assert [distributed.device_index(r, 4) for r in range(10)] == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert distributed.device_index(5, 1) == 0
    for bad in [(-1, 2), (0, 0), (1.5, 2), (True, 2)]:
        with pytest.raises(ValueError):
            distributed.device_index(*bad)
    assert distributed.select_device("numpy", one()) == "cpu"


def test_cuda_aware_detection(monkeypatch):
    assert distributed.cuda_aware("numpy") is False  # host buffers always
    fake = types.SimpleNamespace(Query_cuda_support=lambda: True)
    monkeypatch.setitem(sys.modules, "mpi4py", types.SimpleNamespace(MPI=fake))
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", fake)
    monkeypatch.delenv("EGDNP_MPI_CUDA_AWARE", raising=False)
    assert C._mpi_reports_cuda() is True
    fake.Query_cuda_support = lambda: False
    assert C._mpi_reports_cuda() is False
    del fake.Query_cuda_support  # an MPI (like MPICH's mpi4py here) without the query: not CUDA-aware
    assert C._mpi_reports_cuda() is False
    monkeypatch.setenv("EGDNP_MPI_CUDA_AWARE", "1")
    assert C._mpi_reports_cuda() is True


def test_abort_on_error_with_one_process_just_raises():
    with pytest.raises(KeyError):
        with distributed.abort_on_error(one()):
            raise KeyError("x")


def test_member_parallel_on_one_process_is_the_closure():
    calls = []
    wrapped = distributed.member_parallel(lambda p, member=0: calls.append(member) or 1.5, one())
    assert wrapped({}, member=3, cycle=0, phase="score") == 1.5 and calls == [3]
    with pytest.raises(TypeError, match="callable"):
        distributed.member_parallel(3, one())


@pytest.mark.parametrize("convention, antithetic", [("egdnp", True), ("hyperscalees-torch", True), ("egdnp", False)])
def test_a_window_of_pairs_is_the_local_view_of_the_whole_draw(convention, antithetic):
    """ask(state, pairs=...) draws exactly what local_view slices from the whole population, and the ES gradient
    of every window (fused regeneration of a >= 4096-entry vector included) sums to the whole one."""
    model = nn.mlp((70, 64, 3))  # fc1.bias (64,) is small; add a large vector parameter below
    params = dict(model.init(seed=0), big=np.zeros(5000, np.float32))
    pop = 10 if antithetic else 9
    strategy = es.Eggroll(pop_size=pop, rank=2, convention=convention, antithetic=antithetic)
    state = strategy.init(params, seed=4)
    whole = strategy.ask(state)
    f_hat = strategy.shape(np.linspace(-1.0, 2.0, pop).astype(np.float32))
    total = {k: np.zeros(v.shape, np.float64) for k, v in es.es_gradient(f_hat, whole).items()}
    for block in distributed.partition(pop, 3, antithetic=antithetic, layout=strategy.convention.layout):
        window = strategy.ask(state, pairs=block.pairs)
        view = distributed.local_view(whole, block)
        assert np.array_equal(window.pair, view.pair) and np.array_equal(window.sign, view.sign)
        assert window.first_pair == block.pairs[0]
        for k, item in window.noise.items():
            for a, b in zip(item[:-1], view.noise[k][:-1]):
                np.testing.assert_array_equal(a, b)
        part = es.es_gradient(f_hat[block.members], window)
        scale = es.gradient.gradient_scale(whole) / es.gradient.gradient_scale(window)
        for k in total:
            total[k] += part[k] * scale
    for k, g in es.es_gradient(f_hat, whole).items():
        np.testing.assert_allclose(total[k], g, rtol=1e-5, atol=1e-7, err_msg=k)
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        strategy.ask(state, pairs=(3, 3))


def test_nothing_below_imports_distributed():
    """egdnp.distributed is a top floor: no other egdnp module imports it."""
    import ast
    import pathlib

    import egdnp

    root = pathlib.Path(egdnp.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "distributed" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            if "distributed" in module or any("distributed" in n for n in names):
                offenders.append(str(path.relative_to(root)))
    assert not offenders, offenders


def test_select_device_on_the_cupy_path(monkeypatch):
    """With the CuPy stand-in (tests/_fake_cupy.py, 4 GPUs): a process's GPU is its local rank % 4."""
    from _fake_cupy import make_fake_cupy

    fake = make_fake_cupy(n_devices=4)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    comm = one()
    for local_rank in (0, 1, 5, 7):
        comm._local_rank = local_rank
        assert distributed.select_device(fake, comm).id == local_rank % 4
        assert fake.world.current == local_rank % 4
    assert distributed.select_device("numpy", comm) == "cpu"
