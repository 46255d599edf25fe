"""Every example runs (fast mode) and writes what it promises; the README snippets run.

The examples run as subprocesses, as a user would run them, with one thread
each (``--threads 1`` is their default; the environment variables also pin
the libraries that read them at import) so that other processes on the
machine do not stall them.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SECTIONS = ROOT / "README.md"  # its EGD and EGGROLL code examples run as written

pytest.importorskip("sklearn")  # the digits live in scikit-learn
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ENV = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
           NUMBA_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
TABLE_ROW = re.compile(r"^\| (SGD|EGD|EGGROLL) +\|", re.M)


def run_example(name, *args, timeout=120, cwd=ROOT):
    res = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True, text=True,
                         env=ENV, timeout=timeout, cwd=cwd)
    assert res.returncode == 0, f"{name} {' '.join(map(str, args))} failed:\n{res.stdout}\n{res.stderr}"
    return res


def _png(path: pathlib.Path):
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


@pytest.mark.parametrize("name", ["quickstart.py", "cnn_digits.py"])
def test_digits_examples(tmp_path, name):
    out = tmp_path / "out"
    res = run_example(name, "--fast", "--out", out)
    assert sorted(TABLE_ROW.findall(res.stdout)) == ["EGD", "EGGROLL", "SGD"], res.stdout
    assert str(out) in res.stdout  # the output directory is printed
    _png(out / "learning_curves.png")
    assert (out / "table.md").read_text().count("\n") == 5
    results = json.loads((out / "results.json").read_text())
    rows = {row["method"]: row for row in results["table"]}
    assert set(rows) == {"SGD", "EGD", "EGGROLL"}
    for row in rows.values():
        assert 0.0 <= row["test_acc"] <= 1.0 and row["forward_evals"] > 0 and row["peak_mib"] >= 0.0
    assert rows["EGGROLL"]["backward_evals"] == 0
    assert rows["EGD"]["forward_evals"] > rows["SGD"]["forward_evals"]  # the evolution cycles' closure calls
    assert results["extra"]["EGD"]["cycles"] > 0
    # Even the fast mode learns something with backpropagation.
    assert rows["SGD"]["test_acc"] > 0.2


def test_quickstart_is_reproducible(tmp_path):
    """Same seed, same numbers (only times and memory differ); --no-plot writes no PNG."""
    results = []
    for run in ("a", "b"):
        out = tmp_path / run
        run_example("quickstart.py", "--fast", "--no-plot", "--no-progress", "--seed", 3, "--out", out)
        assert not (out / "learning_curves.png").exists()
        data = json.loads((out / "results.json").read_text())
        assert data.pop("max_rss_mib") > 0
        for row in data["table"]:
            row.pop("wall_s"), row.pop("peak_mib")
        for name in data["curves"]:
            data["curves"][name].pop("wall_s")
        for extra in data["extra"].values():
            extra.pop("evolution_seconds", None)
        results.append(data)
    assert results[0] == results[1]


def test_quickstart_warms_up_each_method_before_its_measured_run(tmp_path):
    """One untraced short run per method comes before that method's measured run (compiles the kernels there)."""
    import importlib.util
    import tracemalloc

    spec = importlib.util.spec_from_file_location("quickstart_for_test", EXAMPLES / "quickstart.py")
    sys.path.insert(0, str(EXAMPLES))
    try:
        quickstart = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(quickstart)
    finally:
        sys.path.remove(str(EXAMPLES))
    events = []

    class Rec:
        history = {}

        def summary(self, peak_mib):
            row = {key: 0 for key, _, _ in quickstart._common.COLUMNS}
            return dict(row, method="x", peak_mib=peak_mib)

    def run(name):
        def fn():
            events.append((name, "run", tracemalloc.is_tracing()))
            return None, Rec(), {}
        return fn

    def warm(name):
        return lambda: events.append((name, "warm-up", tracemalloc.is_tracing()))

    runs = [("A", run("A")), ("B", run("B"))]
    quickstart.run_all(runs, str(tmp_path), "t", plot=False, warmups={"A": warm("A"), "B": warm("B")})
    assert events == [("A", "warm-up", False), ("A", "run", True), ("B", "warm-up", False), ("B", "run", True)]
    res = run_example("quickstart.py", "--fast", "--no-plot", "--no-progress", "--out", tmp_path / "q")
    lines = [line.split(":")[0] for line in res.stdout.splitlines() if "warm-up run" in line]
    assert lines == ["SGD", "EGD", "EGGROLL"]


def test_cartpole_example(tmp_path):
    pytest.importorskip("gymnasium")
    out = tmp_path / "cp"
    res = run_example("cartpole_eggroll.py", "--fast", "--out", out)
    assert re.search(r"^\| EGGROLL +\|", res.stdout, re.M), res.stdout
    assert str(out) in res.stdout  # the output directory is printed
    _png(out / "returns.png")
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["generations"] >= 1
    assert len(results["history"]["mean_return"]) == results["summary"]["generations"]
    assert results["history"]["eval_mean_return"]


def test_pendulum_example(tmp_path):
    pytest.importorskip("gymnasium")
    out = tmp_path / "pend"
    res = run_example("pendulum_eggroll.py", "--fast", "--out", out)
    assert re.search(r"^\| EGGROLL +\|", res.stdout, re.M), res.stdout
    assert "evaluations/s" in res.stdout and str(out) in res.stdout
    _png(out / "returns.png")
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert summary["env"] == "Pendulum-v1" and summary["evaluations_per_s"] > 0
    assert summary["member_episodes"] == summary["generations"] * summary["population"] * summary["episodes_per_member"]
    assert len(results["history"]["mean_return"]) == summary["generations"]
    assert all(r < 0 for r in results["history"]["mean_return"])  # Pendulum's rewards are costs


def test_mujoco_example(tmp_path):
    pytest.importorskip("gymnasium")
    pytest.importorskip("mujoco")
    out = tmp_path / "mj"
    res = run_example("mujoco_eggroll.py", "--fast", "--no-plot", "--out", out, cwd=tmp_path)  # MuJoCo logs to the cwd
    assert "HalfCheetah-v5" in res.stdout and "evaluations/s" in res.stdout
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["env"] == "HalfCheetah-v5" and summary["parameters"] > 0 and "improvement" in summary


def test_egd_plateau_example(tmp_path):
    out = tmp_path / "plateau"
    run_example("egd_plateau.py", "--fast", "--out", out)
    assert (out / "summary.json").is_file()
    _png(out / "plateau.png")


def test_noise_demo_example(tmp_path):
    res = run_example("noise_demo.py", "--n", 100000, "--out", tmp_path)
    assert "same on array-api-strict: True" in res.stdout
    assert str(tmp_path) in res.stdout  # where the figures went
    figures = json.loads((tmp_path / "noise_demo.json").read_text())
    assert figures["n"] == 100000 and figures["egdnp_normal_s"] > 0


@pytest.mark.parametrize("name", ["quickstart.py", "cnn_digits.py", "cartpole_eggroll.py", "egd_plateau.py",
                                  "noise_demo.py", "pendulum_eggroll.py", "mujoco_eggroll.py"])
def test_examples_have_help(name):
    res = subprocess.run([sys.executable, str(EXAMPLES / name), "--help"], capture_output=True, text=True, env=ENV,
                         timeout=60, cwd=ROOT)
    assert res.returncode == 0 and "usage:" in res.stdout


def _snippets():
    text = SECTIONS.read_text()
    return re.findall(r"<!-- test: (\w+) -->\s*```python\n(.*?)```", text, re.S)


def test_readme_sections_have_snippets():
    names = [name for name, _ in _snippets()]
    assert {"egd", "eggroll"} <= set(names), names


@pytest.mark.parametrize("index", range(2))
def test_readme_snippet_runs(tmp_path, index):
    name, code = sorted(_snippets())[index]
    script = tmp_path / f"snippet_{name}.py"
    script.write_text(code)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, f"README snippet {name!r} failed:\n{code}\n{res.stdout}\n{res.stderr}"
    assert "test accuracy" in res.stdout


DOC_PAGES = ["quickstart.md", "validating-a-port.md", "noise.md", "benchmarks.md"]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_page_python_snippets_run_in_order(page, tmp_path, monkeypatch, capsys):
    """The ```python blocks of a docs page, run one after the other as a reader would paste them.

    In-process (egdnp is already imported, so this takes a second), in a scratch directory:
    the pages write bundles to relative paths such as ``ref/``.
    """
    # blocks marked <!-- example: FILE --> are files of a separate project, run by their own test
    # (validating-a-port.md's pytest example: tests/test_testing.py)
    blocks = [code for marker, code in re.findall(r"(<!-- example: [\w.]+ -->\n)?```python\n(.*?)```",
                                                  (ROOT / "docs" / page).read_text(), re.S) if not marker]
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"docs/{page} python block {i + 1}", "exec"), namespace)  # noqa: S102 - our own docs
        except Exception as exc:  # noqa: BLE001 - report which block is stale
            pytest.fail(f"docs/{page} python block {i + 1} is stale: {type(exc).__name__}: {exc}\n{code}")
    capsys.readouterr()


def test_validating_a_port_scenario_table_lists_every_scenario():
    from egdnp import reference

    text = (ROOT / "docs" / "validating-a-port.md").read_text()
    listed = set(re.findall(r"`(\w+)`", text))
    assert set(reference.SCENARIOS) <= listed, sorted(set(reference.SCENARIOS) - listed)


def test_quickstart_doc_shows_the_current_help():
    """docs/quickstart.md's "Options" block is what ``--help`` prints (argparse's wording aside)."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    documented = set(re.findall(r"^  (--[a-z-]+)", text, re.M))
    res = run_example("quickstart.py", "--help", timeout=60)
    actual = set(re.findall(r"^  (--[a-z-]+)", res.stdout, re.M))
    assert documented == actual, (sorted(documented ^ actual))
