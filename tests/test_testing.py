"""egdnp.testing: assert_port_matches, reference_bundle and the pytest plugin (the documented example runs)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egdnp import reference, testing

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "validating-a-port.md"


def test_assert_port_matches_returns_the_report_or_raises_it():
    bundle = testing.reference_bundle("mlp")
    assert bundle.dtype == "float64" and bundle is testing.reference_bundle("mlp")  # once per process
    report = testing.assert_port_matches(bundle, bundle.expected())
    assert report.ok and (report.rtol, report.atol) == (1e-10, 1e-12)
    outputs = {k: v.copy() for k, v in bundle.expected().items()}
    outputs["grad_activations/tanh1"][0, 0] += 1e-9
    with pytest.raises(AssertionError) as info:
        testing.assert_port_matches("mlp", outputs)
    message = str(info.value)
    assert message == reference.compare(bundle, outputs).format()
    assert "first divergence: gradient at tanh1's output" in message and message.endswith("FAIL: 1 of 14 expected arrays")
    # a looser tolerance, given explicitly, passes; only some names can be checked
    assert testing.assert_port_matches("mlp", outputs, rtol=1e-6, atol=1e-8).tolerance_source == "given"
    assert testing.assert_port_matches("mlp", outputs, names=["outputs/logits"]).ok


def test_assert_port_matches_accepts_names_bundles_directories_and_files(tmp_path):
    bundle = testing.reference_bundle("noise", dtype="float32", seed=3)
    assert bundle.seed == 3
    out = reference.dump_arrays(tmp_path / "port.npz", bundle.expected())
    path = reference.save_bundle(tmp_path / "b", "noise", bundle.arrays, hyperparameters=bundle.hyperparameters, dtype="float32", seed=3)
    for expected in (bundle, path, str(path), bundle.expected()):
        assert testing.assert_port_matches(expected, out).ok
    assert testing.assert_port_matches("noise", out, dtype="float32", seed=3).ok
    with pytest.raises(AssertionError, match="first divergence"):
        testing.assert_port_matches("noise", out, dtype="float32", seed=4)
    with pytest.raises(AssertionError, match=r"has dtype float64, the reference's is float32 \(strict dtype\)"):
        testing.assert_port_matches(bundle, {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in bundle.expected().items()},
                                    strict_dtype=True)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="scenario_or_bundle='nope'"):
        testing.assert_port_matches("nope", {})
    with pytest.raises(ValueError, match="dtype='float32' but the bundle is float64"):
        testing.assert_port_matches(testing.reference_bundle("mlp"), {}, dtype="float32")
    with pytest.raises(ValueError, match="name='nope' is not a scenario"):
        testing.reference_bundle("nope")
    with pytest.raises(ValueError, match="rtol=nan"):
        testing.assert_port_matches("mlp", {}, rtol=float("nan"))


def test_reference_bundle_keeps_bundles_in_a_directory(tmp_path):
    first = testing.reference_bundle("sgd_steps", dtype="float32", seed=1, directory=tmp_path)
    path = tmp_path / "sgd_steps-float32-seed1"
    assert (path / "manifest.json").is_file() and first.dtype == "float32"
    testing._CACHE.clear()  # a new session: loaded from the file (checksums verified), not generated
    again = testing.reference_bundle("sgd_steps", dtype="float32", seed=1, directory=tmp_path)
    assert again is not first and all(np.array_equal(again[k], first[k]) for k in first.arrays)


def test_egdnp_never_imports_testing_and_testing_never_imports_pytest():
    code = ("import sys, egdnp, egdnp.reference, egdnp.nn, egdnp.optim, egdnp.es; assert 'egdnp.testing' not in sys.modules; "
            "import egdnp.testing; assert 'pytest' not in sys.modules, 'pytest imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    users = [p for p in (ROOT / "egdnp").rglob("*.py") if "testing" not in p.parts and re.search(r"\btesting\b", p.read_text())
             and re.search(r"^\s*(from|import)\s+(egdnp\.|\.+)testing", p.read_text(), re.M)]
    assert not users, users


def _guide_block(label: str) -> str:
    """The code block after ``<!-- example: LABEL -->`` in docs/validating-a-port.md."""
    text = GUIDE.read_text()
    match = re.search(rf"<!-- example: {re.escape(label)} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"docs/validating-a-port.md lost its {label} example"
    return match.group(1)


def _run_pytest(directory: Path, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(directory)]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(directory)],
                          capture_output=True, text=True, timeout=300, cwd=directory, env=env)


def test_the_documented_pytest_example_runs_and_reports_a_bug(tmp_path):
    """The 15-line example of the guide, verbatim, against the worked torch CNN port, and a copy of it
    against the port with a planted bug (conv2 padded by reflection) -- one pytest session."""
    pytest.importorskip("torch", reason="the documented example uses the torch CNN port")
    conftest, test_file = _guide_block("conftest.py"), _guide_block("test_port.py")
    assert len(conftest.splitlines()) + len(test_file.splitlines()) <= 15
    suite = tmp_path / "port_suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(conftest)
    (suite / "test_port.py").write_text(test_file + "\n\ndef test_same_bundle_every_time(egdnp_bundle):\n"
                                        "    assert egdnp_bundle('cnn', dtype='float64') is egdnp_bundle('cnn', dtype='float64')\n")
    assert "from my_port import" in test_file
    (suite / "test_buggy_port.py").write_text(test_file.replace("from my_port import", "from my_buggy_port import"))
    source = (ROOT / "examples" / "ports" / "torch_cnn.py").read_text()
    (suite / "my_port.py").write_text(source)
    buggy = source.replace("self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)", "self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, padding_mode='reflect')")
    assert buggy != source
    (suite / "my_buggy_port.py").write_text(buggy)
    run = _run_pytest(suite, "--egdnp-bundles", "bundles")
    assert run.returncode == 1 and "1 failed, 2 passed" in run.stdout, run.stdout + run.stderr
    assert "FAILED test_buggy_port.py::test_cnn_matches_egdnp" in run.stdout
    assert "first divergence: conv2 forward output `activations/conv2`" in run.stdout, run.stdout
    assert (suite / "bundles" / "cnn-float64-seed0" / "manifest.json").is_file()
