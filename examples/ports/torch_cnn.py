"""A PyTorch port of egdnp's CNN (forward, loss, backward), checked layer by layer.

Written the way a PyTorch user writes it: an ``nn.Module`` whose children carry
egdnp's layer names (``conv1, relu1, pool1, conv2, relu2, pool2, flatten,
fc``), so egdnp's parameter keys are its ``state_dict`` keys and the bundle's
``params/<key>`` load with ``load_state_dict``.  Forward hooks record every
layer's output and ``retain_grad`` keeps the gradient flowing into it; one
``loss.backward()`` gives ``grad_activations/<layer>``, ``d loss / d x`` and
every parameter gradient.

    python -m egdnp.reference generate cnn --out /tmp/cnn --dtype float64
    python examples/ports/torch_cnn.py /tmp/cnn /tmp/torch_cnn.npz
    python -m egdnp.reference compare /tmp/cnn /tmp/torch_cnn.npz      # tolerances from the bundle's dtype

Conventions it has to get right (``python -m egdnp.reference explain cnn``):
cross-correlation (``F.conv2d``, no kernel flip), zero padding 1, max-pool
gradient to the first maximum, and the (C, H, W) flatten order of NCHW maps.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from egdnp.reference import dump_arrays, load_bundle


class CNN(nn.Module):
    """``egdnp.nn.cnn(in_channels, image_size, n_classes, channels)`` as a torch module, same layer names."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, channels=(3, 4)):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()                    # (N, C, H, W) -> (N, C*H*W), C-major as egdnp
        self.fc = nn.Linear(c2 * (image_size // 4) ** 2, n_classes)

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x


def build_model(bundle) -> CNN:
    """The CNN with the bundle's weights, in the bundle's dtype."""
    x = bundle["inputs/x"]
    weights = {k[len("params/"):]: torch.from_numpy(v) for k, v in bundle.arrays.items() if k.startswith("params/")}
    model = CNN(in_channels=x.shape[1], image_size=x.shape[-1], n_classes=weights["fc.bias"].shape[0],
                channels=(weights["conv1.bias"].shape[0], weights["conv2.bias"].shape[0]))
    model.to(torch.float64 if x.dtype.name == "float64" else torch.float32)
    model.load_state_dict(weights)
    return model


def forward_backward(model: nn.Module, x, y) -> dict:
    """Every array of the ``cnn`` scenario: layer outputs and their gradients, logits, loss, dx, parameter gradients."""
    outputs = {}

    def record(name):
        def hook(module, inputs, out):
            out.retain_grad()
            outputs[name] = out
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_children()]
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    for h in handles:
        h.remove()
    arrays = {f"activations/{n}": t.detach() for n, t in outputs.items()}
    arrays.update({f"grad_activations/{n}": t.grad for n, t in outputs.items()})
    arrays.update({"outputs/logits": logits.detach(), "outputs/loss": loss.detach(), "outputs/dlogits": logits.grad,
                   "outputs/dx": x.grad})
    arrays.update({f"grads/{k}": p.grad for k, p in model.named_parameters()})
    return arrays


def run(bundle_dir, out_path, model: nn.Module | None = None):
    """Read the bundle, compute, write the outputs; ``model`` replaces :func:`build_model`'s (a variant to test)."""
    bundle = load_bundle(bundle_dir)
    model = build_model(bundle) if model is None else model
    x, y = torch.from_numpy(bundle["inputs/x"]), torch.from_numpy(bundle["inputs/y"])
    return dump_arrays(out_path, forward_backward(model, x, y))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="scenario: cnn; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate cnn --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
