"""The comparator's second edition: data-flow order, the first divergence, dtype-aware tolerances,
optional layer-by-layer arrays, the explain command and the CLI's bad-input handling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egdnp import reference
from egdnp.reference import bundle_dir_name

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = Path(__file__).parent / "reference_bundles"


def _bundle(name, dtype="float64"):
    return reference.load_bundle(BUNDLES / bundle_dir_name(name, dtype, 42))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "egdnp.reference", *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


# ----------------------------------------------------------------------------
# layer-by-layer arrays
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_layer_arrays_are_the_models_own_numbers(name, dtype):
    """activations/<layer> and grad_activations/<layer> for every layer, named by the model's layer names;
    the last layer's are the logits and dlogits bit for bit, and the flow ends in dx."""
    from egdnp import nn

    arrays, hyper = reference.generate(name, dtype=dtype, seed=3)
    model = nn.mlp((5, 7, 3)) if name == "mlp" else nn.cnn(in_channels=2, image_size=8, n_classes=3, channels=(3, 4))
    assert sorted(k.split("/", 1)[1] for k in arrays if k.startswith("activations/")) == sorted(model.names)
    assert sorted(k.split("/", 1)[1] for k in arrays if k.startswith("grad_activations/")) == sorted(model.names)
    last = model.names[-1]
    np.testing.assert_array_equal(arrays[f"activations/{last}"], arrays["outputs/logits"])
    np.testing.assert_array_equal(arrays[f"grad_activations/{last}"], arrays["outputs/dlogits"])
    for n in model.names:
        assert arrays[f"activations/{n}"].shape == arrays[f"grad_activations/{n}"].shape
        assert arrays[f"activations/{n}"].dtype == np.dtype(dtype)
    # the gradient at the first layer's output, pushed through that layer's backward, is outputs/dx
    first = model.names[0]
    single = nn.Serial((first, model[first]))
    local = {k: arrays["params/" + k] for k in single.param_shapes()}
    _, cache = single.forward(local, arrays["inputs/x"])
    dx, _ = single.backward(local, cache, arrays[f"grad_activations/{first}"])
    np.testing.assert_array_equal(dx, arrays["outputs/dx"])


def test_layer_arrays_match_torch_hooks():
    """grad_activations/<layer> is what torch's retain_grad on the layer's output holds (float64, 1e-12)."""
    torch = pytest.importorskip("torch", reason="torch is needed for the autograd cross-check")
    F = torch.nn.functional
    b = _bundle("cnn")
    p = {k[len("params/"):]: torch.tensor(v) for k, v in b.arrays.items() if k.startswith("params/")}
    x = torch.tensor(b["inputs/x"])
    p = {k: v.requires_grad_(True) for k, v in p.items()}
    outs = {}
    h = outs["conv1"] = F.conv2d(x, p["conv1.weight"], p["conv1.bias"], padding=1)
    h = outs["relu1"] = F.relu(h)
    h = outs["pool1"] = F.max_pool2d(h, 2)
    h = outs["conv2"] = F.conv2d(h, p["conv2.weight"], p["conv2.bias"], padding=1)
    h = outs["relu2"] = F.relu(h)
    h = outs["pool2"] = F.max_pool2d(h, 2)
    h = outs["flatten"] = h.flatten(1)
    outs["fc"] = F.linear(h, p["fc.weight"], p["fc.bias"])
    for t in outs.values():
        t.retain_grad()
    F.cross_entropy(outs["fc"], torch.tensor(b["inputs/y"])).backward()
    for name, t in outs.items():
        np.testing.assert_allclose(t.detach().numpy(), b[f"activations/{name}"], rtol=1e-10, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(t.grad.numpy(), b[f"grad_activations/{name}"], rtol=1e-10, atol=1e-12, err_msg=name)


def test_every_scenario_records_its_data_flow():
    for name in reference.SCENARIOS:
        arrays, hyper = reference.generate(name, dtype="float32", seed=1)
        flow = [e["array"] for e in hyper["data_flow"]]
        assert len(flow) == len(set(flow)), name
        assert sorted(flow) == sorted(k for k in arrays if not k.startswith(("inputs/", "params/"))), name
        assert all(e["stage"] and e["what"] for e in hyper["data_flow"]), name


def test_bundle_exposes_hyperparameters_dtype_and_data_flow():
    b = _bundle("cnn")
    assert b.dtype == "float64" and b.seed == 42
    assert b.hyperparameters is b.params or b.hyperparameters == b.params
    assert "pop_size" not in b.hyperparameters and b.hyperparameters["batch"] == 2
    flow = [e["array"] for e in b.data_flow]
    assert flow[:3] == ["activations/conv1", "activations/relu1", "activations/pool1"]
    assert flow.index("outputs/loss") < flow.index("grad_activations/fc") < flow.index("outputs/dx") < flow.index("grads/fc.weight")
    mem = reference.scenario_bundle("cnn", dtype="float64", seed=42)
    assert mem.data_flow == b.data_flow and mem.dtype == "float64" and sorted(mem.arrays) == sorted(b.arrays)


def test_manifests_state_the_documented_conventions():
    sgd = _bundle("sgd_steps").hyperparameters
    assert sgd["dampening"] == 0.0 and sgd["nesterov"] is False and "momentum_buffer" in sgd["state"]
    assert _bundle("nesterov_steps").hyperparameters["nesterov"] is True
    noise = _bundle("noise").hyperparameters
    assert noise["weighted_sum_address"] == {"seed": 42, "stream": "fc1.weight", "members": [0, 1, 2, 3, 4], "generation": 3}
    assert "without crc32" in noise["streams"]
    cnn = _bundle("cnn").hyperparameters
    assert "cross-correlation" in cnn["conv"] and "C, H, W row-major" in cnn["flatten"]


# ----------------------------------------------------------------------------
# the report: data-flow order and the first divergence
# ----------------------------------------------------------------------------
def test_report_lists_arrays_in_data_flow_order_and_names_the_first_divergence():
    b = _bundle("cnn")
    actual = b.expected()
    for name in ("activations/conv2", "activations/relu2", "outputs/logits", "grads/conv1.weight"):
        actual[name] = actual[name] + 0.5
    actual["activations/conv2"][1, 2, 3, 0] += 0.33
    report = reference.compare(b, actual)
    assert not report.ok
    assert [a.name for a in report.arrays][:4] == ["activations/conv1", "activations/relu1", "activations/pool1", "activations/conv2"]
    first = report.first_divergence
    assert first.startswith("first divergence: conv2 forward output `activations/conv2` (max abs err 0.83 at [1, 2, 3, 0];")
    assert first.endswith("everything before it matches")
    text = report.format()
    assert first in text and "FAIL: 4 of 26 expected arrays" in text
    assert text.index("activations/pool1") < text.index("activations/conv2") < text.index("outputs/loss") < text.index("grads/fc.weight")


def test_a_port_is_compared_on_the_layer_arrays_it_produces():
    b = _bundle("cnn")
    only_required = {k: v for k, v in b.expected().items() if not k.startswith(reference.OPTIONAL_PREFIXES)}
    report = reference.compare(b, only_required)
    assert report.ok and len(report.not_produced) == 16 and not report.missing
    assert "not produced by the port" in report.format()
    some = dict(only_required, **{"activations/conv1": b["activations/conv1"], "activations/pool1": b["activations/pool1"] + 1})
    report = reference.compare(b, some)
    assert not report.ok
    assert "first divergence: pool1 forward output" in report.first_divergence
    assert "everything before it that the port produced matches (1 earlier layer-by-layer arrays not produced)" in report.first_divergence
    del only_required["outputs/logits"]  # required arrays stay required
    report = reference.compare(b, only_required)
    assert report.missing == ["outputs/logits"]
    assert report.first_divergence == ("first divergence: logits (the last layer's output) `outputs/logits` is missing from the "
                                       "port's outputs; everything before it that the port produced matches "
                                       "(8 earlier layer-by-layer arrays not produced)")


def test_first_divergence_of_a_shape_mismatch_and_of_later_steps():
    b = _bundle("cnn")
    actual = b.expected()
    actual["activations/conv1"] = actual["activations/conv1"][:, :, 1:-1, 1:-1]  # padding 0
    assert "conv1 forward output `activations/conv1` has shape (2, 3, 6, 6), expected (2, 3, 8, 8)" in \
        reference.compare(b, actual).first_divergence
    # multi-step scenarios: the earliest failing step wins, then the data flow within the step
    b = _bundle("adam_steps")
    actual = {k: v.copy() for k, v in b.expected().items()}
    actual["outputs/params/fc1.weight"][1:] += 1e-3      # from step 2 on
    actual["outputs/state/exp_avg_sq/fc1.bias"][2] += 1e-3  # only step 3
    actual["outputs/state/exp_avg/fc1.bias"][1] += 1e-3    # step 2, earlier in the flow than params
    first = reference.compare(b, actual).first_divergence
    assert first.startswith("first divergence: step 2: exp_avg buffer of fc1.bias after the step `outputs/state/exp_avg/fc1.bias`")


@pytest.mark.parametrize("name,bad,where", [
    ("eggroll_hyperscalees_jax", "outputs/shaped_fitness", "shaped fitness"),
    ("egd_cycle", "outputs/elite_indices", "elite members, best first"),
    ("noise", "noise/normal_b", "Box-Muller normals at address b"),
])
def test_first_divergence_for_egd_eggroll_and_noise(name, bad, where):
    b = _bundle(name)
    actual = b.expected()
    actual[bad] = actual[bad][::-1].copy()
    for later in [e["array"] for e in b.data_flow][[e["array"] for e in b.data_flow].index(bad) + 1:]:
        actual[later] = actual[later] + 1  # everything downstream also fails
    assert reference.compare(b, actual).first_divergence.startswith(f"first divergence: {where} `{bad}`")


# ----------------------------------------------------------------------------
# tolerances from the dtype, dtype flags
# ----------------------------------------------------------------------------
def test_default_tolerances_come_from_the_bundle_dtype():
    for dtype in ("float32", "float64"):
        b = _bundle("mlp", dtype)
        report = reference.compare(b, b.expected())
        assert (report.rtol, report.atol) == reference.DEFAULT_TOLERANCES[dtype] and report.dtype == dtype
        assert f"rtol={report.rtol:g} atol={report.atol:g} ({dtype} defaults)" in report.format()
    report = reference.compare(_bundle("mlp"), _bundle("mlp").expected(), rtol=1e-3)
    assert (report.rtol, report.atol) == (1e-3, 1e-12) and "rtol given, atol float64 default" in report.format()
    assert reference.DEFAULT_TOLERANCES["float64"] == (1e-10, 1e-12)
    # a plain dict: float32 when any expected float array is float32
    assert reference.compare({"o": np.ones(2, np.float32)}, {"o": np.ones(2)}).dtype == "float32"
    assert reference.compare({"o": np.ones(2)}, {"o": np.ones(2)}).atol == 1e-12
    assert reference.compare({"o": np.ones(2)}, {"o": np.ones(2)}, dtype="float32").atol == 2e-5
    with pytest.raises(ValueError, match="dtype='float16' must be 'float32' or 'float64'"):
        reference.compare({"o": np.ones(2)}, {"o": np.ones(2)}, dtype="float16")
    assert reference.compare({"i": np.arange(3)}, {"i": np.arange(3)}).dtype is None  # integers only: exact anyway


def test_a_float32_step_hidden_in_a_float64_port_fails_the_defaults():
    b = _bundle("mlp")
    actual = b.expected()
    actual["activations/tanh1"] = actual["activations/tanh1"].astype(np.float32).astype(np.float64)
    report = reference.compare(b, actual)
    assert not report.ok and report.first_divergence.startswith("first divergence: tanh1 forward output")


def test_a_float_dtype_other_than_the_bundles_is_flagged_and_fails_when_strict():
    b = _bundle("mlp", "float32")
    actual = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in b.expected().items()}
    report = reference.compare(b, actual)
    assert report.ok and len(report.dtype_mismatch) == len([v for v in actual.values() if v.dtype.kind == "f"])
    assert "[dtype float64, reference float32]" in report.format() and "flagged; --strict-dtype" in report.format()
    strict = reference.compare(b, actual, strict_dtype=True)
    assert not strict.ok
    assert strict.first_divergence.startswith("first divergence: fc1 forward output `activations/fc1` has dtype float64, "
                                              "the reference's is float32 (strict dtype)")


def test_integer_arrays_whose_expected_value_is_zero_have_no_absurd_relative_error():
    report = reference.compare({"outputs/i": np.array([0, 3], np.int64)}, {"outputs/i": np.array([1, 3], np.int64)})
    a = report.arrays[0]
    assert a.max_abs_err == 1.0 and a.max_rel_err == 0.0 and a.mismatches == 1
    report = reference.compare({"outputs/i": np.array([0, 0], np.int64)}, {"outputs/i": np.array([1, 0], np.int64)})
    assert np.isnan(report.arrays[0].max_rel_err) and " - " in report.format().splitlines()[2] + " "
    report = reference.compare({"o": np.array([0.0, 2.0])}, {"o": np.array([1e-3, 2.0])})
    assert report.arrays[0].max_rel_err == 0.0 and report.arrays[0].max_abs_err == pytest.approx(1e-3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_tolerances_are_refused(value):
    with pytest.raises(ValueError, match="rtol=.* must be a finite number >= 0"):
        reference.compare({"o": np.ones(2)}, {"o": np.ones(2)}, rtol=value)
    with pytest.raises(ValueError, match="atol=.* must be a finite number >= 0"):
        reference.compare({"o": np.ones(2)}, {"o": np.ones(2)}, atol=value)


# ----------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [("--rtol", "nan"), ("--rtol", "inf"), ("--atol", "-inf"), ("--atol", "1e-3x")])
def test_cli_rejects_non_finite_tolerances_with_status_2(flag, value):
    bundle = BUNDLES / bundle_dir_name("mlp", "float64", 42)
    run = _cli("compare", str(bundle), str(bundle), f"{flag}={value}")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and flag in run.stderr and value in run.stderr


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
@pytest.mark.parametrize("which", ["port output", "bundle arrays"])
def test_cli_refuses_empty_or_truncated_npz_with_status_2(tmp_path, content, which):
    bundle = reference.save_bundle(tmp_path / "b", "demo", {"outputs/y": np.ones(3)})
    port = tmp_path / "port.npz"
    reference.dump_arrays(port, {"outputs/y": np.ones(3)})
    broken = port if which == "port output" else bundle / "arrays.npz"
    if content:  # a real archive cut in half
        content = broken.read_bytes()[: broken.stat().st_size // 2]
    broken.write_bytes(content)
    run = _cli("compare", str(bundle), str(port))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and str(broken) in run.stderr
    assert ("empty (0 bytes)" if not content else "truncated") in run.stderr
    with pytest.raises(ValueError, match="cannot be read"):
        reference.compare(bundle, port) if which == "port output" else reference.load_bundle(bundle)


def test_cli_compare_uses_dtype_defaults_and_strict_dtype(tmp_path):
    bundle = BUNDLES / bundle_dir_name("mlp", "float32", 42)
    out = reference.dump_arrays(tmp_path / "p.npz", {k: v.astype(np.float64) if v.dtype.kind == "f" else v
                                                     for k, v in reference.load_bundle(bundle).expected().items()})
    run = _cli("compare", str(bundle), str(out))
    assert run.returncode == 0 and "(float32 defaults)" in run.stdout and "flagged" in run.stdout
    run = _cli("compare", str(bundle), str(out), "--strict-dtype")
    assert run.returncode == 1 and "first divergence: fc1 forward output" in run.stdout


@pytest.mark.parametrize("name", sorted(reference.SCENARIOS))
def test_explain_prints_every_array_with_shape_and_dtype(name):
    text = reference.explain(name)
    arrays, hyper = reference.generate(name, dtype="float32", seed=0)
    for key, a in arrays.items():
        assert any(key in line and str(tuple(a.shape)) in line and a.dtype.name in line for line in text.splitlines()), key
    assert "Data flow" in text and "Noise" in text and "Default tolerances" in text


def test_explain_command_line_states_the_conventions():
    run = _cli("explain", "cnn", "--dtype", "float64")
    assert run.returncode == 0, run.stderr
    for phrase in ("cross-correlation", "C, H, W row-major", "activations/conv2", "(N, C, H, W)", "(C_out, C_in, kh, kw)", "float64"):
        assert phrase in run.stdout, phrase
    run = _cli("explain", "sgd_steps")
    assert "momentum_buffer" in run.stdout and "dampening: 0.0" in run.stdout and "nesterov: false" in run.stdout
    run = _cli("explain", "noise")
    assert "weighted_sum_address" in run.stdout and "without crc32" in run.stdout
    bad = _cli("explain", "nope")
    assert bad.returncode == 2 and "unknown scenario" in bad.stderr


def test_truncated_npy_and_foreign_files_are_refused_naming_the_file(tmp_path):
    folder = reference.dump_arrays(tmp_path / "dir", {"outputs/a": np.ones(3), "outputs/b": np.zeros(2)})
    npy = folder / "outputs" / "a.npy"
    npy.write_bytes(npy.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"a\.npy cannot be read: the file is truncated"):
        reference.load_arrays(folder)
    (tmp_path / "foreign.npz").write_bytes(b"not written by numpy")
    with pytest.raises(ValueError, match=r"foreign\.npz cannot be read"):
        reference.compare({"outputs/a": np.ones(3)}, tmp_path / "foreign.npz")
    np.save(tmp_path / "single.npy", np.ones(2))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(ValueError, match="a single .npy array, not an .npz archive"):
        reference.load_arrays(tmp_path / "single.npz")
