"""tools/gpu_check.sh and tools/gpu_bench.py on a CPU machine (issue 16, part B prepared).

The GPU run itself needs a GPU machine (docs/gpu.md); here: the no-GPU exit,
the argument handling, the JSON, and every benchmark's code path on NumPy /
torch CPU at tiny sizes (``--cpu-dry-run``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from egdnp import _backend

ROOT = Path(__file__).resolve().parents[1]
needs_no_gpu = pytest.mark.skipif(_backend.cupy_available(), reason="a GPU is usable here: the no-GPU path is not taken")


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "tools" / "gpu_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_no_gpu
def test_no_gpu_is_a_clean_exit_with_the_reason(gpu_bench, tmp_path, capsys):
    assert gpu_bench.main([str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "gpu_results.json").read_text())
    assert doc["status"] == "no-gpu" and "backend='cupy' was requested" in doc["reason"]
    assert "no usable GPU here, nothing measured" in capsys.readouterr().out
    assert gpu_bench.main([str(tmp_path), "--no-gpu-reason", "nvidia-smi found no GPU"]) == 0
    assert json.loads((tmp_path / "gpu_results.json").read_text())["reason"] == "nvidia-smi found no GPU"


@pytest.mark.parametrize("argv", [[], ["out", "--budget-s", "0"], ["out", "--only", "nonsense"], ["out", "--tests", "x"]])
def test_bad_arguments_exit_2(gpu_bench, argv, capsys):
    with pytest.raises(SystemExit) as info:
        gpu_bench.parse_args(argv)
    assert info.value.code == 2


def test_cpu_dry_run_runs_every_benchmark_path(gpu_bench, tmp_path):
    names = [n for n in gpu_bench.BENCHMARKS if n != "egd_cycle"]  # egd_cycle is asv's EvolutionCycle (asv check)
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the dry run's comparisons need it)")
    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1" time="1.5">'
                     '<testcase classname="tests.test_rng" name="test_a[cupy]"><failure/></testcase>'
                     '<testcase classname="tests.test_rng" name="test_b[cupy]"/></testsuite></testsuites>')
    rc = gpu_bench.main([str(tmp_path), "--cpu-dry-run", "--only", *names, "--tests", "cupy", str(junit)])
    assert rc == 0
    doc = json.loads((tmp_path / "gpu_results.json").read_text())
    assert doc["status"] == "ok" and doc["mode"] == "cpu-dry-run" and doc["sizes"] == "quick"
    assert doc["tests"]["cupy"] == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1, "time_s": 1.5,
                                    "failed": ["tests.test_rng::test_a[cupy]"]}
    assert set(doc["benchmarks"]) == set(names)
    for name, res in doc["benchmarks"].items():
        assert "error" not in res, (name, res.get("error"))
        assert res["seconds"] >= 0
    assert doc["benchmarks"]["noise_bitwise"]["ok"] is True
    assert "skipped" in doc["benchmarks"]["pinned_h2d"]  # nothing to copy on the CPU
    assert {t["benchmark"] for t in doc["targets"]} >= {"noise_bitwise", "philox_normals", "eggroll_linear",
                                                        "eggroll_generation"}
    assert all({"name", "goal", "measured", "met"} <= set(t) for t in doc["targets"])


def test_a_raising_benchmark_is_recorded_and_the_rest_run(gpu_bench, tmp_path, monkeypatch):
    def boom(ctx):
        raise ValueError("planted failure")

    monkeypatch.setitem(gpu_bench.BENCHMARKS, "noise_bitwise", (boom, 0))
    rc = gpu_bench.main([str(tmp_path), "--cpu-dry-run", "--only", "noise_bitwise", "pinned_h2d"])
    assert rc == 1
    doc = json.loads((tmp_path / "gpu_results.json").read_text())
    assert doc["status"] == "errors" and "planted failure" in doc["benchmarks"]["noise_bitwise"]["error"]
    assert "error" not in doc["benchmarks"]["pinned_h2d"]


def test_out_of_time_benchmarks_are_skipped(gpu_bench, tmp_path):
    assert gpu_bench.main([str(tmp_path), "--cpu-dry-run", "--only", "egd_cycle", "--budget-s", "1"]) == 0
    doc = json.loads((tmp_path / "gpu_results.json").read_text())
    assert "needed" in doc["benchmarks"]["egd_cycle"]["skipped"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="nvidia-smi is on the PATH: a GPU machine")
def test_gpu_check_sh_without_a_gpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no NVIDIA GPU on this machine" in done.stdout
    assert json.loads((out / "gpu_results.json").read_text())["status"] == "no-gpu"
    assert "nothing to check" in (out / "gpu_check.log").read_text()
    usage = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
