"""egdnp.distributed under real MPI: ``mpiexec -n 2`` / ``-n 3`` launched from pytest.

Each launch is a subprocess with a timeout, so a hang fails the test instead of
blocking CI.  The scenarios live in tests/mpi_scenarios.py; their
single-process references run in this process (no MPI: the same code path).
Skipped, with the reason, only when ``mpiexec`` (or mpi4py) is absent.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import mpi_scenarios as S
from egdnp import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
MPIEXEC = shutil.which("mpiexec") or (shutil.which("mpiexec", path=os.path.dirname(sys.executable)))

try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

pytestmark = pytest.mark.skipif(
    MPIEXEC is None or not HAVE_MPI4PY,
    reason="mpiexec or mpi4py is not installed (pip install -e '.[mpi]' brings both)",
)

ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
           PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
ENV.pop("EGDNP_MPI", None)


def mpirun(n, *args, timeout=120, check=True):
    cmd = [MPIEXEC, "-n", str(n), sys.executable, str(ROOT / "tests" / "mpi_scenarios.py"), *map(str, args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)
    if check:
        assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def one_process():
    return distributed.Comm(None)


@pytest.fixture(scope="module")
def eggroll_reference():
    return S.eggroll(one_process())


@pytest.mark.parametrize("n", [2, 3])
def test_eggroll_across_ranks_matches_one_process(tmp_path, eggroll_reference, n):
    """check=True verified after every generation that all ranks hold bitwise the same parameters.
    Against the single-process run (all three conventions; with and without antithetic pairs):
    fitness mode with per-member inputs (each member computed on its own): bitwise equal;
    fitness mode with a shared batch (one x B GEMM over the scored pairs: BLAS rounding may depend on
    the number of pairs) and the allreduce mode: float64 rel 1e-12 after 10 generations."""
    out = tmp_path / "out.npz"
    mpirun(n, "eggroll", out)
    got = np.load(out)
    assert int(got["size"]) == n
    for name, _, _, mode, inputs in S.eggroll_cases():
        for k in S.MODEL.init(seed=0):
            key = f"{name}/{k}"
            ref = eggroll_reference[key]
            if mode == "fitness" and inputs == "member":
                np.testing.assert_array_equal(got[key], ref, err_msg=key)
            else:
                np.testing.assert_allclose(got[key], ref, rtol=1e-12, atol=1e-14, err_msg=key)
    # rank 0's payload in the default mode: its members' fitness, 8 bytes each in float64
    blocks = distributed.partition(22, n, layout="interleaved")
    assert int(got["egdnp-fitness-shared/bytes"]) == 8 * len(blocks[0].members)
    n_params = sum(v.size for v in S.params64().values())  # plus one float64 gradient of every parameter
    assert int(got["egdnp-allreduce-shared/bytes"]) == 8 * len(blocks[0].members) + 8 * n_params


@pytest.mark.parametrize("n", [2, 3])
def test_variants_shape_and_transform_the_whole_population_in_both_modes(tmp_path, n):
    """EggrollBaseline (baseline z-score shaping, global-norm clipping at 0.05: active every generation),
    SparseES and the frozen-zeros convention with AdamW, 6 generations on n ranks (check=True: identical
    on every rank).  Fitness mode: bitwise the one-process strategy.tell (per-member inputs).  All-reduce
    mode: the variant's shape on the whole fitness and its clipping on the whole summed gradient (after
    the all-reduce; clipping per rank would move the parameters by up to n times more), within float64
    rounding (rel 1e-11) of the one-process run."""
    out = tmp_path / "out.npz"
    mpirun(n, "variants", out)
    got = np.load(out)
    ref = S.variants(one_process())
    for name, _, mode in S.variant_cases():
        for k in S.MODEL.init(seed=0):
            key = f"{name}/{k}"
            if mode == "fitness":
                np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
            else:
                np.testing.assert_allclose(got[key], ref[key], rtol=1e-11, atol=1e-14, err_msg=key)
    for mode in distributed.MODES:
        assert float(got[f"baseline-{mode}/grad_norm"]) == pytest.approx(0.05, rel=1e-12)  # clipped


def test_checkpoint_from_2_ranks_resumes_on_3_ranks(tmp_path):
    """Rank 0 writes after 3 generations on 2 ranks; 3 ranks resume; 6 generations == the one-process run."""
    path = tmp_path / "ck.npz"
    mpirun(2, "checkpoint_first", tmp_path / "unused.npz", path)
    assert path.is_file() and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    out = tmp_path / "out.npz"
    mpirun(3, "checkpoint_resume", out, path)
    got = np.load(out)
    dist = distributed.DistributedEggroll(S.make_strategy("egdnp"), one_process())
    ref, _ = S.run_eggroll(dist, dist.init(S.params64(), seed=5), 6, inputs="member")
    assert int(got["generation"]) == 6
    for k, v in ref.params.items():
        np.testing.assert_array_equal(got[f"resumed/{k}"], v, err_msg=k)


def test_egd_member_parallel_and_data_parallel(tmp_path):
    """member-parallel EGD: bitwise the one-process run; data-parallel (shards, averaged gradients and losses):
    identical on every rank, within float64 rounding of the one-process run on the whole batch."""
    out = tmp_path / "out.npz"
    mpirun(2, "egd", out)
    got = np.load(out)
    ref = S.egd_runs(one_process())
    for k in S.MODEL.init(seed=0):
        np.testing.assert_array_equal(got[f"member/{k}"], ref[f"member/{k}"], err_msg=k)
        np.testing.assert_allclose(got[f"data/{k}"], ref[f"data/{k}"], rtol=1e-10, atol=1e-13, err_msg=k)
    assert len(set(got["member/checksums"].tolist())) == 1 and len(got["member/checksums"]) == 2
    assert len(set(got["data/checksums"].tolist())) == 1


def test_one_rank_failing_ends_the_whole_job_quickly(tmp_path):
    """Rank 1 raises inside its fitness function at generation 3 of a 2-rank run: non-zero exit within 30 s,
    with the failing rank's message."""
    t0 = time.perf_counter()
    res = mpirun(2, "fault", tmp_path / "unused.npz", timeout=60, check=False)
    elapsed = time.perf_counter() - t0
    assert res.returncode != 0, res.stdout + res.stderr
    assert elapsed < 30, elapsed
    assert "injected failure in the fitness function at generation 3" in res.stderr
    assert "rank 1 of 2 failed" in res.stderr


def _example(args, n=None, timeout=120, cwd=ROOT):
    launcher = [] if n is None else [MPIEXEC, "-n", str(n)]
    res = subprocess.run([*launcher, sys.executable, *map(str, args)], capture_output=True, text=True,
                         env=dict(ENV, MPLBACKEND="Agg"), timeout=timeout, cwd=cwd)  # MuJoCo logs to the cwd
    assert res.returncode == 0, f"{args} on {n} ranks failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_eggroll_mpi_example_prints_the_one_process_accuracy(tmp_path):
    """examples/eggroll_mpi.py --fast: 2 ranks (and 3 ranks resuming from the 2-rank checkpoint) print the
    one-process run's test accuracy, and only rank 0 prints."""
    script = ROOT / "examples" / "eggroll_mpi.py"
    alone = _example([script, "--fast", "--no-progress", "--out", tmp_path / "one"])
    two = _example([script, "--fast", "--no-progress", "--out", tmp_path / "two", "--check"], n=2)
    pick = lambda text: [l for l in text.splitlines() if l.startswith("test accuracy")]  # noqa: E731
    assert pick(alone) == pick(two) and pick(alone)[0].startswith("test accuracy 0.")
    assert two.count("test accuracy") == 1  # rank 1 stays quiet
    ck = tmp_path / "ck.npz"
    _example([script, "--fast", "--no-progress", "--out", tmp_path / "a", "--checkpoint", ck, "--epochs", "1"], n=2)
    resumed = _example([script, "--fast", "--no-progress", "--out", tmp_path / "b", "--checkpoint", ck], n=3)
    assert "resumed from" in resumed and pick(resumed)[0] == pick(alone)[0]


def test_cartpole_mpi_mode_matches_the_one_process_run(tmp_path):
    pytest.importorskip("gymnasium")
    script = ROOT / "examples" / "cartpole_eggroll.py"
    _example([script, "--fast", "--no-plot", "--no-progress", "--out", tmp_path / "one"])
    text = _example([script, "--fast", "--no-plot", "--no-progress", "--mpi", "--out", tmp_path / "two"], n=2)
    assert text.count("| EGGROLL") == 1
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["history"] == two["history"]


@pytest.mark.parametrize("script, needs", [("pendulum_eggroll.py", "gymnasium"), ("mujoco_eggroll.py", "mujoco")])
def test_continuous_control_mpi_mode_is_bitwise_the_one_process_run(tmp_path, script, needs):
    """--fast --mpi --check on 2 processes: every process held bitwise the same policy AND observation
    statistics after every generation (--check), and the run is bitwise the one-process run: every member
    acts with its own perturbation from the same start state (the per-member computation is the same in any
    slice), and the statistics are summed from per-member rows gathered in member order (the same rounding
    as one process) -- same history, same evaluations, same checksum.  Only rank 0 prints."""
    pytest.importorskip(needs)
    path = ROOT / "examples" / script
    one = _example([path, "--fast", "--no-plot", "--no-progress", "--out", tmp_path / "one"], cwd=tmp_path)
    two = _example([path, "--fast", "--no-plot", "--no-progress", "--mpi", "--check", "--out", tmp_path / "two"],
                   n=2, cwd=tmp_path)
    assert two.count("| EGGROLL") == 1 and "2 MPI process(es)" in two
    a = json.loads((tmp_path / "one" / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["summary"]["processes"] == 2 and a["summary"]["processes"] == 1
    assert a["summary"]["params_checksum"] == b["summary"]["params_checksum"]
    drop = ("wall_s",)
    assert {k: v for k, v in a["history"].items() if k not in drop} == {k: v for k, v in b["history"].items()
                                                                         if k not in drop}
    assert a["summary"]["env_steps"] == b["summary"]["env_steps"]
    assert a["summary"]["final_eval_mean_return"] == b["summary"]["final_eval_mean_return"]
