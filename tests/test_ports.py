"""The worked ports in examples/ports/ reproduce the checked-in reference bundles.

Each port (PyTorch, JAX and optax: MLP + EGGROLL generation, one EGD cycle, the CNN layer by layer, the
optimiser steps, the noise) reads a bundle's inputs,
writes its outputs with egdnp.reference.dump_arrays, and the comparator must accept them at the
tolerances documented in docs/validating-a-port.md:

* float64: rtol=1e-10, atol=1e-12 -- the port and egdnp evaluate the same formulas in a
  different order (BLAS blocking, einsum contraction order, log-sum-exp), <= 8.3e-15 apart;
* float32: rtol=1e-4, atol=2e-5 -- a few float32 ulps of the inputs, but the z-scored fitness
  divides rounding errors of the raw fitness by its (small) standard deviation, so its absolute
  error reaches 4.5e-6 and its relative error is large where it crosses zero.

These are the comparator's defaults for the bundle's dtype (reference.DEFAULT_TOLERANCES): every
port here passes the default ``python -m egdnp.reference compare BUNDLE OUT`` run.

Integer outputs (member pairs and signs, elite indices) must match exactly.  Skipped, with the
reason, where torch or JAX is not installed; CI installs both.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from egdnp import reference
from egdnp.reference import bundle_dir_name

ROOT = Path(__file__).resolve().parent.parent
PORTS = ROOT / "examples" / "ports"
BUNDLES = Path(__file__).parent / "reference_bundles"
SEED = 42
PORT_TOL = {dtype: dict(rtol=rtol, atol=atol) for dtype, (rtol, atol) in reference.DEFAULT_TOLERANCES.items()}
EGGROLL = ["eggroll_hyperscalees_torch", "eggroll_hyperscalees_jax", "eggroll_egdnp"]
DTYPES = ["float32", "float64"]


def load_port(module: str, framework: str):
    pytest.importorskip(framework, reason=f"{framework} is not installed; the {module} port needs it")
    return _load(module)


@functools.lru_cache(maxsize=None)
def _load(module: str):
    """Import a port once (JAX then reuses its compiled functions across tests)."""
    spec = importlib.util.spec_from_file_location(f"egdnp_port_{module}", PORTS / f"{module}.py")
    port = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(port)
    return port


def bundle_path(name: str, dtype: str) -> Path:
    path = BUNDLES / bundle_dir_name(name, dtype, SEED)
    assert path.is_dir(), f"{path} missing: add ({name!r}, {dtype!r}, {SEED}) to TEST_BUNDLES and regenerate"
    return path


def check(port, name, dtype, tmp_path):
    """The port passes with the comparator's defaults, which are the documented tolerances of its dtype."""
    bundle = bundle_path(name, dtype)
    out = port.run(bundle, tmp_path / f"{name}-{dtype}.npz")
    report = reference.compare(bundle, out)
    assert report.tolerance_source == f"{dtype} defaults" and (report.rtol, report.atol) == tuple(PORT_TOL[dtype].values())
    assert report.ok, report.format()
    assert not report.extra and not report.dtype_mismatch and not report.not_produced, report.format()
    return report


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", EGGROLL)
def test_torch_eggroll_port(name, dtype, tmp_path):
    check(load_port("torch_eggroll", "torch"), name, dtype, tmp_path)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", EGGROLL)
def test_jax_eggroll_port(name, dtype, tmp_path):
    check(load_port("jax_eggroll", "jax"), name, dtype, tmp_path)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", EGGROLL)
def test_torch_eggroll_port_with_its_own_philox_noise(name, dtype, tmp_path):
    """No factors from the bundle: the port regenerates them from their addresses (docs/noise.md)."""
    port = load_port("torch_eggroll", "torch")
    bundle = bundle_path(name, dtype)
    report = reference.compare(bundle, port.run(bundle, tmp_path / "out.npz", own_noise=True), **PORT_TOL[dtype])
    assert report.ok, report.format()


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_noise_port_words_bitwise_normals_within_normal_atol(dtype, tmp_path):
    """Integer words must match exactly; normals within egdnp.rng.NORMAL_ATOL (float32: egdnp's CPU
    kernel uses float32 polynomials for log/sin/cos, the port float64 libm then a cast)."""
    from egdnp import rng

    port = load_port("torch_noise", "torch")
    bundle = bundle_path("noise", dtype)
    report = reference.compare(bundle, port.run(bundle, tmp_path / "noise.npz"), rtol=0.0, atol=rng.NORMAL_ATOL[dtype])
    assert report.ok, report.format()
    words = {a.name: a for a in report.arrays if a.name.startswith("noise/words")}
    assert len(words) == 2 and all(a.max_abs_err == 0.0 for a in words.values())


EGD = [("egd_cycle", "float32"), ("egd_cycle", "float64"), ("egd_cycle_softmax", "float32")]


@pytest.mark.parametrize("name,dtype", EGD)
def test_torch_egd_cycle_port(name, dtype, tmp_path):
    check(load_port("torch_egd_cycle", "torch"), name, dtype, tmp_path)


@pytest.mark.parametrize("name,dtype", EGD)
def test_jax_egd_cycle_port(name, dtype, tmp_path):
    check(load_port("jax_egd_cycle", "jax"), name, dtype, tmp_path)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("module,framework", [("torch_cnn", "torch"), ("jax_cnn", "jax")])
def test_cnn_ports_layer_by_layer(module, framework, dtype, tmp_path):
    """Every layer's output and gradient, the logits, loss, dx and parameter gradients of the ``cnn`` scenario."""
    report = check(load_port(module, framework), "cnn", dtype, tmp_path)
    assert len(report.arrays) == 26 and [a.name for a in report.arrays][0] == "activations/conv1"


OPTIMIZER_STEPS = ["sgd_steps", "nesterov_steps", "adam_steps", "adamw_steps"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", OPTIMIZER_STEPS)
@pytest.mark.parametrize("module,framework", [("torch_optim", "torch"), ("optax_optim", "optax")])
def test_optimizer_ports(module, framework, name, dtype, tmp_path):
    """torch.optim and optax reproduce egdnp's steps: params and every state buffer after each step."""
    report = check(load_port(module, framework), name, dtype, tmp_path)
    assert any(a.name.startswith("outputs/state/") for a in report.arrays)


def test_the_worked_float32_ports_pass_the_default_command_line_run(tmp_path):
    """`compare BUNDLE OUT` without tolerance flags: the port whose z-scored fitness failed the old defaults passes."""
    pytest.importorskip("jax", reason="jax is not installed; the jax port needs it")
    port = load_port("jax_eggroll", "jax")
    bundle = bundle_path("eggroll_hyperscalees_jax", "float32")
    out = port.run(bundle, tmp_path / "out.npz")
    run = subprocess.run([sys.executable, "-m", "egdnp.reference", "compare", str(bundle), str(out)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("PASS"), run.stdout + run.stderr
    assert "rtol=0.0001 atol=2e-05 (float32 defaults)" in run.stdout


def test_comparator_tells_conventions_apart(tmp_path):
    """A port run in one convention fails against another convention's bundle (same inputs and noise):
    the perturbed logits agree, the fitness shaping, gradient and update do not."""
    port = load_port("torch_eggroll", "torch")
    out = port.run(bundle_path("eggroll_egdnp", "float64"), tmp_path / "egdnp.npz")
    report = reference.compare(bundle_path("eggroll_hyperscalees_jax", "float64"), out, **PORT_TOL["float64"])
    verdict = {a.name: a.ok for a in report.arrays}
    assert not report.ok
    assert verdict["outputs/logits"] and verdict["outputs/fitness"] and verdict["outputs/member_pair"]
    assert not verdict["outputs/shaped_fitness"] and not verdict["outputs/es_gradient/fc1.weight"]


def test_port_command_line_and_compare_command_line(tmp_path):
    """The documented workflow: generate, run the port script, compare -- exit status 0."""
    pytest.importorskip("torch", reason="torch is not installed; the torch port needs it")
    ref, out = tmp_path / "ref", tmp_path / "torch_out"

    def run(*args):
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)

    gen = run("-m", "egdnp.reference", "generate", "eggroll_hyperscalees_torch", "--out", str(ref), "--dtype", "float64", "--seed", "5")
    assert gen.returncode == 0, gen.stderr
    port = run(str(PORTS / "torch_eggroll.py"), str(ref), str(out))  # a directory of .npy files
    assert port.returncode == 0, port.stderr
    assert (out / "outputs" / "logits.npy").is_file()
    cmp_ = run("-m", "egdnp.reference", "compare", str(ref), str(out), "--rtol", "1e-10", "--atol", "1e-12")
    assert cmp_.returncode == 0 and "PASS" in cmp_.stdout, cmp_.stdout + cmp_.stderr


@pytest.mark.parametrize("module,framework", [("torch_eggroll", "torch"), ("torch_egd_cycle", "torch"), ("torch_noise", "torch"),
                                              ("jax_eggroll", "jax"), ("jax_egd_cycle", "jax"), ("torch_cnn", "torch"),
                                              ("jax_cnn", "jax"), ("torch_optim", "torch"), ("optax_optim", "optax")])
def test_port_scripts_take_help(module, framework, monkeypatch, capsys):
    """Each port script has an argparse command line (run in-process: importing JAX again would take seconds)."""
    import runpy

    pytest.importorskip(framework, reason=f"{framework} is not installed; the {module} port needs it")
    monkeypatch.setattr(sys, "argv", [f"{module}.py", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(PORTS / f"{module}.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage:" in out and "bundle" in out and "out" in out
