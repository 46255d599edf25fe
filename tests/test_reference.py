"""Tests of egdnp.reference: bundles, the comparator, the CLI, and drift against checked-in bundles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egdnp import reference
from egdnp.reference import TEST_BUNDLES, bundle_dir_name

BUNDLES = Path(__file__).parent / "reference_bundles"


@pytest.mark.parametrize("name,dtype,seed", TEST_BUNDLES)
def test_current_code_reproduces_checked_in_bundles_exactly(name, dtype, seed):
    """Guard against silent numerical drift: regenerate and compare bit for bit.

    Bit-for-bit where the bundle was written on a machine with the same
    platform fingerprint (CPU SIMD features, BLAS, NumPy and Numba versions
    pick the floating-point kernels); elsewhere integers stay exact and floats
    must agree to a few ulps of rounding.  Regenerate after an intended change
    with ``python -m egdnp.reference regenerate-test-bundles``.
    """
    from egdnp.reference.bundle import platform_fingerprint

    bundle = reference.load_bundle(BUNDLES / bundle_dir_name(name, dtype, seed))
    arrays, _ = reference.generate(name, dtype=dtype, seed=seed)
    assert sorted(arrays) == sorted(bundle.arrays)
    same_platform = bundle.manifest.get("platform") == platform_fingerprint()
    rounding = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-13)}[dtype]
    for key, value in arrays.items():
        assert value.dtype == bundle.arrays[key].dtype, key
        if same_platform or value.dtype.kind in "biu":
            np.testing.assert_array_equal(value, bundle.arrays[key], err_msg=key)
        else:
            np.testing.assert_allclose(value, bundle.arrays[key], err_msg=key, **rounding)


@pytest.mark.parametrize("name", sorted(reference.SCENARIOS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_and_array_api_strict_agree(name, dtype):
    """Integer arrays (noise words, ranks of exact inputs) are bitwise equal; floats agree within
    the noise tolerance (normals use float32 polynomials on Numba and libm on the oracle)."""
    fast, _ = reference.generate(name, backend="numpy", dtype=dtype, seed=3)
    strict, _ = reference.generate(name, backend="array_api_strict", dtype=dtype, seed=3)
    assert sorted(fast) == sorted(strict)
    tol = {"float32": dict(rtol=2e-5, atol=2e-5), "float64": dict(rtol=1e-12, atol=1e-12)}[dtype]
    report = reference.compare(strict, fast, **tol)
    assert report.ok, report.format()
    for key in fast:
        if fast[key].dtype.kind in "ui":
            np.testing.assert_array_equal(fast[key], strict[key], err_msg=key)


def test_bundle_round_trip_and_manifest(tmp_path):
    arrays = {"inputs/x": np.arange(6, dtype=np.float32).reshape(2, 3), "outputs/y": np.array([1.5, -2.0])}
    path = reference.save_bundle(tmp_path / "b", "demo", arrays, hyperparameters={"lr": 0.1, "shape": (2, 3)}, seed=7)
    bundle = reference.load_bundle(path)
    assert bundle.scenario == "demo" and bundle.params == {"lr": 0.1, "shape": [2, 3]}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["egdnp_version"]
    assert manifest["arrays"]["inputs/x"] == {"shape": [2, 3], "dtype": "<f4", "sha256": reference.checksum(arrays["inputs/x"])}
    assert sorted(bundle.inputs()) == ["inputs/x"] and sorted(bundle.expected()) == ["outputs/y"]
    with pytest.raises(KeyError, match="outputs/z"):
        bundle["outputs/z"]


def test_missing_manifest_and_corrupted_arrays_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        reference.load_bundle(tmp_path)
    path = reference.save_bundle(tmp_path / "b", "demo", {"outputs/y": np.ones(3)})
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["arrays"]["outputs/y"]["sha256"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="checksum"):
        reference.load_bundle(path)
    manifest["arrays"]["outputs/extra"] = {"shape": [1], "dtype": "<f8", "sha256": ""}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="missing"):
        reference.load_bundle(path)


def test_unknown_scenario_and_dtype():
    with pytest.raises(ValueError, match="scenario='nope'"):
        reference.generate("nope")
    with pytest.raises(ValueError, match="dtype="):
        reference.generate("noise", dtype="float16")


def test_comparator_reports_errors_and_first_mismatch():
    expected = {"outputs/a": np.array([[1.0, 2.0], [3.0, 4.0]]), "outputs/b": np.zeros(3), "outputs/c": np.ones(2), "noise/w": np.array([1, 2], dtype=np.uint32)}
    actual = {"outputs/a": np.array([[1.0, 2.0], [3.5, 4.0]]), "outputs/b": np.zeros(4), "noise/w": np.array([1, 3], dtype=np.uint32), "outputs/extra": np.ones(1)}
    report = reference.compare(expected, actual, rtol=1e-6, atol=1e-6)
    assert not report.ok
    by_name = {a.name: a for a in report.arrays}
    assert by_name["outputs/a"].first_mismatch == (1, 0) and by_name["outputs/a"].max_abs_err == pytest.approx(0.5)
    assert by_name["outputs/a"].expected_value == 3.0 and by_name["outputs/a"].actual_value == 3.5
    assert by_name["noise/w"].mismatches == 1
    assert report.missing == ["outputs/c"] and report.shape_mismatch == {"outputs/b": ((3,), (4,))}
    assert report.extra == ["outputs/extra"]
    text = report.format()
    assert "missing" in text and "FAIL" in text and "(1, 0)" in text


def test_comparator_never_passes_when_an_expected_array_is_absent():
    report = reference.compare({"outputs/a": np.ones(2)}, {})
    assert not report.ok and report.missing == ["outputs/a"]


def test_comparator_handles_nan_and_tolerances():
    e = {"o": np.array([np.nan, 1.0, 100.0])}
    assert reference.compare(e, {"o": np.array([np.nan, 1.0 + 1e-7, 100.0 + 1e-4])}, rtol=1e-5, atol=1e-6).ok
    assert not reference.compare(e, {"o": np.array([0.0, 1.0, 100.0])}).ok
    with pytest.raises(ValueError, match="rtol"):
        reference.compare(e, e, rtol=-1.0)


def test_dump_arrays_layouts_are_read_back(tmp_path):
    arrays = {"outputs/logits": np.ones((2, 3), np.float32), "grads/fc1.weight": np.zeros(4)}
    npz = reference.dump_arrays(tmp_path / "port.npz", arrays)
    folder = reference.dump_arrays(tmp_path / "port_dir", arrays)
    assert (folder / "outputs" / "logits.npy").is_file()
    for source in (npz, folder):
        back = reference.load_arrays(source)
        assert sorted(back) == sorted(arrays)
        assert reference.compare(arrays, source, rtol=0, atol=0).ok


def test_dump_arrays_converts_framework_tensors_without_importing_them(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.arange(4, dtype=torch.float64, requires_grad=True) * 2
    back = reference.load_arrays(reference.dump_arrays(tmp_path / "t.npz", {"outputs/t": t}))
    np.testing.assert_array_equal(back["outputs/t"], [0.0, 2.0, 4.0, 6.0])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "egdnp.reference", *args], capture_output=True, text=True, timeout=300)


def test_command_line_generate_and_compare(tmp_path):
    out = tmp_path / "noise"
    run = _cli("generate", "noise", "--out", str(out), "--dtype", "float64", "--seed", "5")
    assert run.returncode == 0, run.stderr
    good = _cli("compare", str(out), str(out / "arrays.npz"))
    assert good.returncode == 0 and "PASS" in good.stdout
    bad_arrays = reference.load_bundle(out).expected()
    bad_arrays["noise/normal_a"] = bad_arrays["noise/normal_a"] + 1e-3
    del bad_arrays["noise/words_b"]
    reference.dump_arrays(tmp_path / "bad", bad_arrays)
    bad = _cli("compare", str(out), str(tmp_path / "bad"))
    assert bad.returncode == 1 and "noise/words_b" in bad.stdout and "missing" in bad.stdout
    missing = _cli("compare", str(tmp_path / "nowhere"), str(out))
    assert missing.returncode == 2 and "error" in missing.stderr
    unknown = _cli("generate", "nope", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "unknown scenario" in unknown.stderr


def test_unreadable_or_incomplete_manifest_is_refused_clearly(tmp_path):
    path = reference.save_bundle(tmp_path / "b", "demo", {"outputs/y": np.ones(3)})
    (path / "manifest.json").write_text("{ not json")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        reference.load_bundle(path)
    (path / "manifest.json").write_text(json.dumps({"format": 1, "arrays": {}}))
    with pytest.raises(ValueError, match="lacks the field.*scenario"):
        reference.load_bundle(path)
    bad = _cli("compare", str(path), str(path / "arrays.npz"))
    assert bad.returncode == 2 and "scenario" in bad.stderr and "Traceback" not in bad.stderr


def test_missing_arrays_file_and_empty_port_output_are_refused(tmp_path):
    path = reference.save_bundle(tmp_path / "b", "demo", {"outputs/y": np.ones(3)})
    (path / "arrays.npz").unlink()
    with pytest.raises(FileNotFoundError, match="no arrays.npz"):
        reference.load_bundle(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npy files"):
        reference.load_arrays(tmp_path / "empty")
    inputs_only = reference.save_bundle(tmp_path / "inputs_only", "demo", {"inputs/x": np.ones(2)})
    with pytest.raises(ValueError, match="no expected arrays"):
        reference.compare(inputs_only, {"outputs/y": np.ones(3)})


def test_command_line_generate_refuses_an_unusable_backend_without_a_traceback(tmp_path):
    run = _cli("generate", "noise", "--out", str(tmp_path / "x"), "--backend", "nope")
    assert run.returncode == 2 and "backend='nope'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "x").exists()  # nothing half-written
    run = _cli("generate", "noise", "--out", str(tmp_path / "x"), "--seed", "-1")
    assert run.returncode == 2 and "seed=-1" in run.stderr


def test_compare_accepts_framework_tensors_directly():
    torch = pytest.importorskip("torch")
    expected = {"outputs/a": np.array([1.0, 2.0])}
    assert reference.compare(expected, {"outputs/a": torch.tensor([1.0, 2.0], requires_grad=True)}).ok
    assert not reference.compare(expected, {"outputs/a": torch.tensor([1.0, 2.5])}).ok


def test_cupy_agrees_with_numpy_within_the_port_tolerance():
    """On a usable GPU every scenario matches NumPy within the float32 port tolerance (docs/validating-a-port.md):
    integers bitwise (Philox words are integer arithmetic), floats within the normals' tolerance plus
    the rounding of cuBLAS vs OpenBLAS products."""
    from egdnp import _backend

    if not _backend.cupy_available():
        pytest.skip("no usable CuPy/GPU here")
    failures = []
    for name in sorted(reference.SCENARIOS):
        fast, _ = reference.generate(name, backend="numpy", dtype="float32", seed=3)
        gpu, _ = reference.generate(name, backend="cupy", dtype="float32", seed=3)
        report = reference.compare(fast, gpu, rtol=1e-5, atol=1e-5)
        if not report.ok:
            failures.append(f"{name}:\n{report.format()}")
        for key in fast:
            if fast[key].dtype.kind in "ui" and not np.array_equal(fast[key], gpu[key]):
                failures.append(f"{name}: integer array {key} differs")
    assert not failures, "\n".join(failures)


def test_integer_arrays_are_exact_even_when_the_port_writes_floats():
    expected = {"outputs/elite_indices": np.array([0, 3, 5], dtype=np.int64)}
    assert reference.compare(expected, {"outputs/elite_indices": np.array([0.0, 3.0, 5.0])}, rtol=1e-3, atol=1e-3).ok
    report = reference.compare(expected, {"outputs/elite_indices": np.array([0.0, 3.0001, np.nan])}, rtol=1e-3, atol=1e-3)
    assert not report.ok and report.arrays[0].mismatches == 2 and report.arrays[0].first_mismatch == (1,)
