"""Planted bugs in the worked torch CNN port are located by the default command-line comparison.

Each variant of ``examples/ports/torch_cnn.py`` has one bug a porter really makes: a flipped
kernel (convolution instead of egdnp's cross-correlation), a wrong padding (reflect instead of
zeros, same shapes), an NHWC flatten before the linear layer, and a float32 step hidden in a
float64 port (with the outputs cast back to float64, and without).  The default run
``python -m egdnp.reference compare BUNDLE OUT`` (no tolerance flags: float64 defaults from the
bundle) must name the layer where the bug is, or the dtype, as its first divergence.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from egdnp.reference import bundle_dir_name, load_bundle
from egdnp.reference.__main__ import main

torch = pytest.importorskip("torch", reason="torch is needed for the torch CNN port")
F = torch.nn.functional

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(__file__).parent / "reference_bundles" / bundle_dir_name("cnn", "float64", 42)


def _port():
    spec = importlib.util.spec_from_file_location("egdnp_port_torch_cnn_debug", ROOT / "examples" / "ports" / "torch_cnn.py")
    port = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(port)
    return port


PORT = _port()


class FlippedConv(torch.nn.Conv2d):
    """A true convolution: the kernel flipped in both spatial axes (scipy.signal.convolve2d's convention)."""

    def forward(self, x):
        return F.conv2d(x, self.weight.flip(-2, -1), self.bias, padding=1)


class NHWCFlatten(torch.nn.Module):
    """Flattens (N, H, W, C): the order of a port written for flax/TensorFlow layouts."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


class Float32(torch.nn.Module):
    """Runs a layer in float32 (a stray ``.float()``), optionally casting the result back to float64."""

    def __init__(self, layer, cast_back=True):
        super().__init__()
        self.layer, self.cast_back = layer.float(), cast_back

    def forward(self, x):
        out = self.layer(x.float())
        return out.double() if self.cast_back else out


def _swap(model, name, make):
    """Replace child ``name`` by ``make(old)``, keeping the weights."""
    setattr(model, name, make(getattr(model, name)))
    return model


def _flipped(old):
    new = FlippedConv(old.in_channels, old.out_channels, 3, padding=1).to(old.weight.dtype)
    new.load_state_dict(old.state_dict())
    return new


def _reflect_padding(old):
    new = torch.nn.Conv2d(old.in_channels, old.out_channels, 3, padding=1, padding_mode="reflect").to(old.weight.dtype)
    new.load_state_dict(old.state_dict())
    return new


def _fc_float32_without_cast(model):
    # float32 from the last layer on: its output, and all the gradients flowing back through it, stay float32
    return _swap(model, "fc", lambda old: Float32(old, cast_back=False))


BUGS = {
    "flipped kernel": (lambda m: _swap(_swap(m, "conv1", _flipped), "conv2", _flipped),
                       "first divergence: conv1 forward output `activations/conv1` (max abs err"),
    "wrong padding": (lambda m: _swap(m, "conv2", _reflect_padding),
                      "first divergence: conv2 forward output `activations/conv2` (max abs err"),
    "NHWC flatten": (lambda m: _swap(m, "flatten", lambda old: NHWCFlatten()),
                     "first divergence: flatten forward output `activations/flatten` (max abs err"),
    "float32 step": (lambda m: _swap(m, "relu2", Float32),
                     "first divergence: relu2 forward output `activations/relu2` (max abs err"),
    "float32 outputs": (_fc_float32_without_cast,
                        "first divergence: fc forward output `activations/fc` (max abs err"),
}


def _default_cli_run(out, *extra):
    """`python -m egdnp.reference compare BUNDLE OUT` in-process (the same main(); a subprocess costs seconds)."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main(["compare", str(BUNDLE), str(out), *extra])
    return status, buffer.getvalue()


def test_the_unmodified_port_passes_the_default_run(tmp_path):
    status, text = _default_cli_run(PORT.run(BUNDLE, tmp_path / "ok.npz"))
    assert status == 0 and text.rstrip().endswith("PASS") and "(float64 defaults)" in text


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_planted_bug_is_named_at_its_first_diverging_layer(bug, tmp_path):
    plant, expected = BUGS[bug]
    out = PORT.run(BUNDLE, tmp_path / "out.npz", model=plant(PORT.build_model(load_bundle(BUNDLE))))
    status, text = _default_cli_run(out)
    assert status == 1, text
    first = [line for line in text.splitlines() if line.startswith("first divergence:")]
    assert len(first) == 1 and first[0].startswith(expected), text
    assert first[0].endswith("everything before it matches"), first[0]
    if bug == "float32 outputs":  # the dtype is named in the divergence line and flagged in the summary
        assert "its dtype is float32, the reference's float64" in first[0]
        assert "port arrays are float32 where the reference's are float64" in text
        status, strict = _default_cli_run(out, "--strict-dtype")
        assert status == 1 and "(a failure under strict dtype)" in strict


def test_a_float32_step_is_caught_by_the_dtype_defaults_but_passed_by_the_old_flat_tolerance(tmp_path):
    """The motivating case: rtol 1e-5 / atol 1e-6 for every dtype let a float32 step in a float64 port through."""
    out = PORT.run(BUNDLE, tmp_path / "out.npz", model=BUGS["float32 step"][0](PORT.build_model(load_bundle(BUNDLE))))
    assert _default_cli_run(out, "--rtol", "1e-5", "--atol", "1e-6")[0] == 0
    assert _default_cli_run(out)[0] == 1


def test_the_command_line_itself_names_the_flipped_kernel(tmp_path):
    model = BUGS["flipped kernel"][0](PORT.build_model(load_bundle(BUNDLE)))
    out = PORT.run(BUNDLE, tmp_path / "flipped.npz", model=model)
    run = subprocess.run([sys.executable, "-m", "egdnp.reference", "compare", str(BUNDLE), str(out)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 1 and "first divergence: conv1 forward output `activations/conv1`" in run.stdout, run.stdout
