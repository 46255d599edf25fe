"""A JAX port of egdnp's CNN (forward, loss, backward), checked layer by layer.

Written the way a JAX user writes it: a pure ``apply(params, x)`` over a dict
of arrays with ``jax.lax.conv_general_dilated`` (NCHW / OIHW, explicit zero
padding) and ``jax.lax.reduce_window`` max pooling, and ``jax.value_and_grad``
for the gradients.  The gradient flowing into each layer's output comes from
the usual JAX trick: a zero "probe" is added to every layer's output and
differentiated alongside the parameters, so one ``grad`` call returns
``grad_activations/<layer>``, ``d loss / d x`` and every parameter gradient.

    python -m egdnp.reference generate cnn --out /tmp/cnn --dtype float64
    python examples/ports/jax_cnn.py /tmp/cnn /tmp/jax_cnn.npz
    python -m egdnp.reference compare /tmp/cnn /tmp/jax_cnn.npz      # tolerances from the bundle's dtype

Conventions (``python -m egdnp.reference explain cnn``): ``conv_general_dilated``
is a cross-correlation like egdnp's; flatten NCHW maps in (C, H, W) order --
flax users on NHWC must transpose to NCHW first.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from egdnp.reference import dump_arrays, load_bundle  # noqa: E402

LAYERS = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc")


def conv2d(x, w, b):
    """3x3 cross-correlation, stride 1, zero padding 1; x (N, C, H, W), w (C_out, C_in, kh, kw)."""
    out = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding=((1, 1), (1, 1)),
                                       dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return out + b[None, :, None, None]


def max_pool2(x):
    """2x2 max pooling, stride 2 (its gradient goes to the first maximum of each window, as torch's)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def layer_fns(params):
    return {
        "conv1": lambda h: conv2d(h, params["conv1.weight"], params["conv1.bias"]),
        "relu1": jax.nn.relu,
        "pool1": max_pool2,
        "conv2": lambda h: conv2d(h, params["conv2.weight"], params["conv2.bias"]),
        "relu2": jax.nn.relu,
        "pool2": max_pool2,
        "flatten": lambda h: h.reshape(h.shape[0], -1),  # NCHW -> (N, C*H*W)
        "fc": lambda h: h @ params["fc.weight"].T + params["fc.bias"],
    }


def apply(params, x, probes=None):
    """Logits and every layer's output; ``probes[name]`` (zeros) is added to that layer's output."""
    outs, h = {}, x
    for name, fn in layer_fns(params).items():
        h = fn(h)
        if probes is not None:
            h = h + probes[name]
        outs[name] = h
    return h, outs


def cross_entropy(logits, y):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=-1))


@jax.jit
def forward_backward(params, x, y):
    """Loss, logits, layer outputs, and the gradients w.r.t. params, probes (layer outputs), x and the logits."""
    _, outs = apply(params, x)
    probes = {name: jnp.zeros_like(o) for name, o in outs.items()}

    def loss_fn(params, probes, x):
        logits, outs = apply(params, x, probes)
        return cross_entropy(logits, y), (logits, outs)

    (loss, (logits, outs)), (g_params, g_probes, g_x) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(params, probes, x)
    return loss, logits, outs, g_params, g_probes, g_x


def run(bundle_dir, out_path):
    bundle = load_bundle(bundle_dir)
    params = {k[len("params/"):]: jnp.asarray(v) for k, v in bundle.arrays.items() if k.startswith("params/")}
    x, y = jnp.asarray(bundle["inputs/x"]), jnp.asarray(bundle["inputs/y"])
    loss, logits, outs, g_params, g_probes, g_x = forward_backward(params, x, y)
    arrays = {f"activations/{n}": outs[n] for n in LAYERS}
    arrays.update({f"grad_activations/{n}": g_probes[n] for n in LAYERS})
    arrays.update({"outputs/logits": logits, "outputs/loss": loss, "outputs/dlogits": g_probes["fc"], "outputs/dx": g_x})
    arrays.update({f"grads/{k}": v for k, v in g_params.items()})
    return dump_arrays(out_path, arrays)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="scenario: cnn; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate cnn --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
