"""Acceptance: plain SGD (a tiny local loop) on the bundled digits reaches >= 95% test accuracy.

Seeded and deterministic: the initial weights come from egdnp.rng (stream
"init/<key>"), the batch order from stream "data/batches", the split from
"data/split".  BLAS runs single-threaded here so the run time stays a few
seconds even when other processes share the machine's two cores.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
threadpoolctl = pytest.importorskip("threadpoolctl")

from egdnp import data, nn  # noqa: E402


def sgd_momentum(model, ds, *, steps, lr, batch_size, momentum=0.9, seed=0):
    """Heavy-ball SGD written out in full: v = m v + g; p = p - lr v."""
    params = model.init(seed)
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    step, epoch, losses = 0, 0, []
    while step < steps:
        for xb, yb in data.iterate_batches(ds.x_train, ds.y_train, batch_size, seed=seed, epoch=epoch, drop_last=True):
            loss, grads = model.loss_and_grad(params, xb, yb)
            losses.append(float(loss))
            for k in params:
                velocity[k] = momentum * velocity[k] + grads[k]
                params[k] = params[k] - lr * velocity[k]
            step += 1
            if step == steps:
                break
        epoch += 1
    return params, losses


def test_mlp_reaches_95_percent_on_digits():
    ds = data.load_digits()  # (n, 64) pixels in [0, 1]
    model = nn.mlp((64, 256, 10), activation="relu")
    with threadpoolctl.threadpool_limits(1):
        params, losses = sgd_momentum(model, ds, steps=400, lr=0.05, batch_size=64)
    acc = float(nn.accuracy(model.apply(params, ds.x_test), ds.y_test))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.25 * np.mean(losses[:5])
    assert acc >= 0.95, f"MLP test accuracy {acc:.4f} after 400 SGD steps"


def test_default_mlp_784_256_10_tanh_reaches_95_percent():
    """The issue's MLP as built by ``nn.mlp()`` on the 28x28 digits, flattened to 784 inputs."""
    ds = data.load_digits(size=28, flat=True)  # (n, 784)
    model = nn.mlp()
    assert model.param_shapes()["fc1.weight"] == (256, 784) and model.names == ("fc1", "tanh1", "fc2")
    with threadpoolctl.threadpool_limits(1):
        params, losses = sgd_momentum(model, ds, steps=300, lr=0.05, batch_size=64)
    acc = float(nn.accuracy(model.apply(params, ds.x_test), ds.y_test))
    assert np.all(np.isfinite(losses))
    assert acc >= 0.95, f"MLP 784-256-10 tanh test accuracy {acc:.4f} after 300 SGD steps"


def test_cnn_reaches_95_percent_on_upsampled_digits():
    ds = data.load_digits(size=28)  # (n, 1, 28, 28), bilinear upsampling
    model = nn.cnn()
    with threadpoolctl.threadpool_limits(1):
        params, losses = sgd_momentum(model, ds, steps=150, lr=0.05, batch_size=64)
        acc = float(nn.accuracy(model.apply(params, ds.x_test), ds.y_test))
    assert np.all(np.isfinite(losses))
    assert acc >= 0.95, f"CNN test accuracy {acc:.4f} after 150 SGD steps"


def test_training_is_deterministic():
    ds = data.load_digits()
    model = nn.mlp((64, 32, 10))
    with threadpoolctl.threadpool_limits(1):
        a, la = sgd_momentum(model, ds, steps=20, lr=0.05, batch_size=32, seed=5)
        b, lb = sgd_momentum(model, ds, steps=20, lr=0.05, batch_size=32, seed=5)
    assert la == lb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
