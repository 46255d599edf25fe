"""Bad input over every public entry point: a clear error, and nothing changed.

Each row of the table calls one public function with one bad argument and asserts

* the exception type (exactly: a ``ValueError`` row fails on a ``TypeError``);
* that the message names the argument (every string of the row's ``names``
  appears in it: the argument, and where it matters both array libraries);
* that every input is unchanged afterwards: the arrays, dicts and states passed
  in (compared byte for byte), the object a method belongs to (an ``EGD``'s
  params and state), the files given as paths, and the folder they sit in (no
  temporary file left behind).

A row is ``row(id, exception, names, make)`` with ``make(tmp) -> (fn, args,
kwargs)``; the inputs are built afresh for each row.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import array_api_strict as strict
import numpy as np
import pytest

import egdnp
from egdnp import _backend, data, es, nn, optim, reference, rng
from egdnp.nn import layers as L
from egdnp.optim import egd as E
from egdnp.optim import schedules as S

ROWS: list = []


def row(id_, exc, names, make):
    """Add a row: ``make(tmp) -> (fn, args, kwargs)``; ``names`` is a str or a tuple of str."""
    ROWS.append(pytest.param(exc, (names,) if isinstance(names, str) else names, make, id=id_))


def call(fn, *args, **kwargs):
    """A ``make`` that ignores the folder (inputs built when the row runs)."""
    return lambda tmp: (fn, args, kwargs)


# ----------------------------------------------------------------------------
# fresh inputs
# ----------------------------------------------------------------------------
MODEL = nn.mlp((4, 3, 2))  # static configuration only: sharing it between rows is safe


def P():
    return MODEL.init(0)


def X(n=5, dtype=np.float32):
    return np.linspace(-1.0, 1.0, n * 4, dtype=dtype).reshape(n, 4)


def Y(n=5):
    return np.arange(n, dtype=np.int64) % 2


def W():
    return {"w.weight": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4), "w.bias": np.ones(3, np.float32)}


def G():
    return {"w.weight": np.full((3, 4), 0.5, np.float32), "w.bias": np.full(3, 0.25, np.float32)}


def strict_copy(a):
    return strict.asarray(np.asarray(a))


def quad(params):
    return float(sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in params.values()))


def sgd_state(momentum=0.9, params=None):
    return optim.sgd(0.1, momentum=momentum).init(W() if params is None else params)


def eggroll(pop=4, **kw):
    strategy = es.Eggroll(pop_size=pop, **kw)
    state = strategy.init(P(), seed=0)
    return strategy, state, strategy.ask(state)


def saved_state_file(tmp, name="good.npz"):
    path = tmp / name
    optim.save_state(path, sgd_state())
    return path


def zero_file(tmp):
    path = tmp / "zero.npz"
    path.write_bytes(b"")
    return path


def truncated_file(tmp):
    good = saved_state_file(tmp, "whole.npz")
    path = tmp / "truncated.npz"
    path.write_bytes(good.read_bytes()[:100])
    return path


def foreign_file(tmp):
    path = tmp / "foreign.npz"
    np.savez(path, weights=np.ones(3))
    return path


def text_file(tmp):
    path = tmp / "notes.npz"
    path.write_text("not a zip file\n")
    return path


def npy_file(tmp):
    path = tmp / "single.npy"
    np.save(path, np.ones(3))
    return path


# ----------------------------------------------------------------------------
# backend selection
# ----------------------------------------------------------------------------
row("backend-unknown-name", ValueError, "backend='torch'", call(egdnp.get_namespace, "torch"))
row("backend-not-a-namespace", TypeError, "backend=3", call(egdnp.get_namespace, 3))
row("backend-mixed-arrays", TypeError, ("array_api_strict", "numpy"),
    lambda tmp: (egdnp.array_namespace, (np.ones(2), strict.ones(2)), {}))
row("backend-to-host-out-shape", ValueError, "out", lambda tmp: (egdnp.to_host, (np.ones(3),), {"out": np.zeros(4)}))
row("backend-to-host-out-dtype", ValueError, "out",
    lambda tmp: (egdnp.to_host, (np.ones(3),), {"out": np.zeros(3, np.float32)}))
row("backend-model-init-xp", ValueError, "backend='jax'", lambda tmp: (MODEL.init, (0,), {"xp": "jax"}))
row("backend-atomic-write-missing-folder", FileNotFoundError, "missing",
    lambda tmp: (lambda p: egdnp.atomic_write(p).__enter__(), (tmp / "missing" / "x.npz",), {}))
if not _backend.cupy_available():
    row("backend-cupy-unavailable", RuntimeError, "backend='cupy'", call(egdnp.get_namespace, "cupy"))

# ----------------------------------------------------------------------------
# rng
# ----------------------------------------------------------------------------
row("rng-shape-negative", ValueError, "shape", call(rng.normal, (-1,), seed=0))
row("rng-shape-float", TypeError, "shape", call(rng.normal, 2.5, seed=0))
row("rng-seed-negative", ValueError, "seed=-1", call(rng.normal, (3,), seed=-1))
row("rng-seed-too-big", ValueError, "seed", call(rng.normal, (3,), seed=2**64))
row("rng-seed-float", TypeError, "seed=1.0", call(rng.normal, (3,), seed=1.0))
row("rng-seed-bool", TypeError, "seed=True", call(rng.uniform, (3,), seed=True))
row("rng-stream-empty", ValueError, "stream=''", call(rng.normal, (3,), seed=0, stream=""))
row("rng-stream-negative", ValueError, "stream=-1", call(rng.normal, (3,), seed=0, stream=-1))
row("rng-member-too-big", ValueError, "member", call(rng.normal, (3,), seed=0, member=2**32))
row("rng-generation-negative", ValueError, "generation=-1", call(rng.normal, (3,), seed=0, generation=-1))
row("rng-dtype-float16", TypeError, "dtype", call(rng.normal, (3,), seed=0, dtype="float16"))
row("rng-impl-unknown", ValueError, "impl='fast'", call(rng.normal, (3,), seed=0, impl="fast"))
row("rng-xp-unknown", ValueError, "backend='jax'", call(rng.uniform, (3,), seed=0, xp="jax"))
row("rng-random-bits-member-float", TypeError, "member", call(rng.random_bits, (3,), seed=0, member=1.5))
row("rng-ranks-2d", ValueError, "fitness", lambda tmp: (rng.centered_ranks, (np.ones((2, 2)),), {}))
row("rng-ranks-empty", ValueError, "fitness", lambda tmp: (rng.centered_ranks, (np.ones(0),), {}))
row("rng-ranks-nan", ValueError, "fitness", lambda tmp: (rng.centered_ranks, (np.array([1.0, np.nan]),), {}))
row("rng-ranks-complex", TypeError, "fitness", lambda tmp: (rng.centered_ranks, (np.ones(3, np.complex64),), {}))
row("rng-ranks-bool", TypeError, "fitness", lambda tmp: (rng.centered_ranks, (np.ones(3, bool),), {}))
row("rng-ranks-list", TypeError, "fitness", call(rng.centered_ranks, [1.0, 2.0]))
row("rng-weighted-sum-nan", ValueError, "weights",
    lambda tmp: (rng.weighted_noise_sum, (np.array([1.0, np.nan]), (3,)), {"seed": 0}))
row("rng-weighted-sum-members", ValueError, "members",
    lambda tmp: (rng.weighted_noise_sum, (np.ones(2), (3,)), {"seed": 0, "members": np.arange(3)}))
row("rng-stream-id-not-str", TypeError, "name", call(rng.stream_id, 3))

# ----------------------------------------------------------------------------
# nn: builders and layers
# ----------------------------------------------------------------------------
row("nn-mlp-one-size", ValueError, "sizes", call(nn.mlp, (4,)))
row("nn-mlp-float-size", TypeError, "sizes", call(nn.mlp, (4, 2.5, 2)))
row("nn-mlp-zero-size", ValueError, "sizes", call(nn.mlp, (4, 0, 2)))
row("nn-mlp-sizes-int", TypeError, "sizes", call(nn.mlp, 5))
row("nn-mlp-activation", ValueError, "activation='swish'", call(nn.mlp, (4, 3, 2), activation="swish"))
row("nn-mlp-bias-str", TypeError, "bias='yes'", call(nn.mlp, (4, 3, 2), bias="yes"))
row("nn-mlp-batch-norm-int", TypeError, "batch_norm=1", call(nn.mlp, (4, 3, 2), batch_norm=1))
row("nn-mlp-dropout-negative", ValueError, "dropout=-0.5", call(nn.mlp, (4, 3, 2), dropout=-0.5))
row("nn-mlp-dropout-one", ValueError, "dropout=1.0", call(nn.mlp, (4, 3, 2), dropout=1.0))
row("nn-mlp-dropout-str", TypeError, "dropout='0.2'", call(nn.mlp, (4, 3, 2), dropout="0.2"))
row("nn-cnn-image-size", ValueError, "image_size=30", call(nn.cnn, image_size=30))
row("nn-linear-float", TypeError, "n_in=2.5", call(L.Linear, 2.5, 3))
row("nn-linear-zero", ValueError, "n_out=0", call(L.Linear, 3, 0))
row("nn-linear-bias-str", TypeError, "bias='no'", call(L.Linear, 3, 2, bias="no"))
row("nn-conv-channels", ValueError, "c_out=0", call(L.Conv2d, 1, 0, 3))
row("nn-conv-kernel", ValueError, "kernel_size=0", call(L.Conv2d, 1, 2, 0))
row("nn-conv-stride-float", TypeError, "stride=1.5", call(L.Conv2d, 1, 2, 3, stride=1.5))
row("nn-conv-padding", ValueError, "padding=-1", call(L.Conv2d, 1, 2, 3, padding=-1))
row("nn-conv-bias-int", TypeError, "bias=1", call(L.Conv2d, 1, 2, 3, bias=1))
row("nn-dropout-one", ValueError, "rate=1.0", call(L.Dropout, 1.0))
row("nn-dropout-negative", ValueError, "rate=-0.1", call(L.Dropout, -0.1))
row("nn-dropout-str", TypeError, "rate='0.5'", call(L.Dropout, "0.5"))
row("nn-batchnorm-features", ValueError, "num_features=0", call(L.BatchNorm1d, 0))
row("nn-batchnorm-momentum", ValueError, "momentum=2", call(L.BatchNorm1d, 3, momentum=2))
row("nn-batchnorm-eps", ValueError, "eps=0", call(L.BatchNorm2d, 3, eps=0))
row("nn-flatten-axes", ValueError, "n_feature_axes=0", call(L.Flatten, 0))
row("nn-activation-kind", ValueError, "activation='swish'", call(L.Activation, "swish"))
row("nn-maxpool-kernel", ValueError, "kernel_size=0", call(L.MaxPool2d, 0))
row("nn-avgpool-stride", ValueError, "stride=0", call(L.AvgPool2d, 2, stride=0))
row("nn-init-seed", ValueError, "seed=-1", call(MODEL.init, -1))
row("nn-init-dtype", TypeError, "dtype='float16'", call(MODEL.init, 0, dtype="float16"))

# nn: forward, loss_and_grad, losses
row("nn-forward-x-features", ValueError, ("fc1", "x of shape"), lambda tmp: (MODEL.forward, (P(), X()[:, :3]), {}))
row("nn-forward-params-missing", ValueError, "fc2.bias",
    lambda tmp: (MODEL.forward, ({k: v for k, v in P().items() if k != "fc2.bias"}, X()), {}))
row("nn-forward-params-extra", ValueError, "extra.weight",
    lambda tmp: (MODEL.forward, (dict(P(), **{"extra.weight": np.ones(2, np.float32)}), X()), {}))
row("nn-forward-params-shape", ValueError, "fc1.weight",
    lambda tmp: (MODEL.forward, (dict(P(), **{"fc1.weight": np.ones((4, 3), np.float32)}), X()), {}))
row("nn-forward-params-int", TypeError, "fc1.weight",
    lambda tmp: (MODEL.forward, (dict(P(), **{"fc1.weight": np.ones((3, 4), np.int32)}), X()), {}))
row("nn-forward-params-mixed-dtype", TypeError, "fc2.weight",
    lambda tmp: (MODEL.forward, (dict(P(), **{"fc2.weight": np.ones((2, 3), np.float64)}), X()), {}))
row("nn-forward-params-one-strict", TypeError, ("params['fc2.bias']", "array_api_strict", "numpy"),
    lambda tmp: (MODEL.forward, ((lambda p: dict(p, **{"fc2.bias": strict_copy(p["fc2.bias"])}))(P()), X()), {}))
row("nn-forward-params-list-entry", TypeError, "params['fc1.bias']",
    lambda tmp: (MODEL.forward, (dict(P(), **{"fc1.bias": [0.0, 0.0, 0.0]}), X()), {}))
row("nn-forward-params-not-dict", TypeError, "params", lambda tmp: (MODEL.forward, (list(P().values()), X()), {}))
row("nn-forward-x-int", TypeError, "x has dtype", lambda tmp: (MODEL.forward, (P(), np.ones((5, 4), np.int64)), {}))
row("nn-forward-x-strict", TypeError, ("x is an array of array_api_strict", "numpy"),
    lambda tmp: (MODEL.forward, (P(), strict_copy(X())), {}))
row("nn-forward-x-float64", TypeError, "x has dtype float64", lambda tmp: (MODEL.forward, (P(), X(dtype=np.float64)), {}))
row("nn-forward-x-list", TypeError, "x must be an array", lambda tmp: (MODEL.forward, (P(), X().tolist()), {}))
row("nn-forward-dropout-no-seed", ValueError, "seed",
    lambda tmp: (nn.mlp((4, 3, 2), dropout=0.5).forward, (P(), X()), {"train": True}))
row("nn-forward-bn-no-state", ValueError, "state",
    lambda tmp: (nn.mlp((4, 3, 2), batch_norm=True).forward, (nn.mlp((4, 3, 2), batch_norm=True).init(0), X()), {}))
row("nn-forward-bn-batch-of-one", ValueError, ("bn1", "x of shape (1, 3)"),
    lambda tmp: (nn.mlp((4, 3, 2), batch_norm=True).forward, (nn.mlp((4, 3, 2), batch_norm=True).init(0), X(1)),
                 {"train": True, "state": nn.mlp((4, 3, 2), batch_norm=True).init_state()}))
row("nn-forward-bn-state-shape", ValueError, "bn1.running_mean",
    lambda tmp: (nn.mlp((4, 3, 2), batch_norm=True).forward, (nn.mlp((4, 3, 2), batch_norm=True).init(0), X()),
                 {"state": {"bn1.running_mean": np.zeros(4, np.float32), "bn1.running_var": np.ones(3, np.float32)}}))
row("nn-loss-labels-strict", TypeError, ("y is an array of array_api_strict", "numpy"),
    lambda tmp: (MODEL.loss_and_grad, (P(), X(), strict_copy(Y())), {}))
row("nn-loss-empty-batch", ValueError, "x has shape (0, 4)",
    lambda tmp: (MODEL.loss_and_grad, (P(), X(0), Y(0)), {}))
row("nn-loss-labels-range", ValueError, "labels", lambda tmp: (MODEL.loss_and_grad, (P(), X(), Y() + 5), {}))
row("nn-loss-labels-float", TypeError, "labels",
    lambda tmp: (MODEL.loss_and_grad, (P(), X(), Y().astype(np.float32)), {}))
row("nn-loss-labels-shape", ValueError, "labels", lambda tmp: (MODEL.loss_and_grad, (P(), X(), Y(3)), {}))
row("nn-loss-name", ValueError, "loss='hinge'", lambda tmp: (MODEL.loss_and_grad, (P(), X(), Y()), {"loss": "hinge"}))
row("nn-loss-mse-target-shape", ValueError, "target",
    lambda tmp: (MODEL.loss_and_grad, (P(), X(), np.ones((5, 3), np.float32)), {"loss": "mse"}))
row("nn-backward-cache", TypeError, "cache", lambda tmp: (MODEL.backward, (P(), None, np.ones((5, 2), np.float32)), {}))
row("nn-mse-empty", ValueError, "pred holds an empty batch",
    lambda tmp: (nn.mse, (np.ones((0, 2), np.float32), np.ones((0, 2), np.float32)), {}))
row("nn-mse-grad-empty", ValueError, "pred holds an empty batch",
    lambda tmp: (nn.mse_grad, (np.ones((0, 2), np.float32), np.ones((0, 2), np.float32)), {}))
row("nn-mse-target-shape", ValueError, "target",
    lambda tmp: (nn.mse, (np.ones((4, 2), np.float32), np.ones((3, 2), np.float32)), {}))
row("nn-mse-target-strict", TypeError, ("target is an array of array_api_strict", "numpy"),
    lambda tmp: (nn.mse, (np.ones((4, 2), np.float32), strict.ones((4, 2))), {}))
row("nn-mse-reduction", ValueError, "reduction='avg'",
    lambda tmp: (nn.mse, (np.ones((4, 2), np.float32), np.ones((4, 2), np.float32)), {"reduction": "avg"}))
row("nn-xent-empty", ValueError, "logits holds an empty batch",
    lambda tmp: (nn.softmax_cross_entropy, (np.ones((0, 2), np.float32), np.zeros(0, np.int64)), {}))
row("nn-xent-labels-strict", TypeError, ("labels is an array of array_api_strict", "numpy"),
    lambda tmp: (nn.softmax_cross_entropy, (np.ones((3, 2), np.float32), strict.asarray([0, 1, 0])), {}))
row("nn-xent-labels-float", TypeError, "labels",
    lambda tmp: (nn.softmax_cross_entropy, (np.ones((3, 2), np.float32), np.zeros(3, np.float32)), {}))
row("nn-xent-logits-int", TypeError, "logits",
    lambda tmp: (nn.softmax_cross_entropy, (np.ones((3, 2), np.int64), np.zeros(3, np.int64)), {}))
row("nn-accuracy-labels-float", TypeError, "labels",
    lambda tmp: (nn.accuracy, (np.ones((3, 2), np.float32), np.zeros(3, np.float32)), {}))

# ----------------------------------------------------------------------------
# optim: construction
# ----------------------------------------------------------------------------
row("optim-sgd-lr-zero", ValueError, "lr=0.0", call(optim.sgd, 0.0))
row("optim-sgd-lr-negative", ValueError, "lr=-1.0", call(optim.sgd, -1.0))
row("optim-sgd-lr-str", TypeError, "lr='0.1'", call(optim.sgd, "0.1"))
row("optim-sgd-lr-nan", ValueError, "lr=nan", call(optim.sgd, math.nan))
row("optim-sgd-momentum", ValueError, "momentum=-0.1", call(optim.sgd, 0.1, momentum=-0.1))
row("optim-sgd-nesterov-str", TypeError, "nesterov='yes'", call(optim.sgd, 0.1, momentum=0.9, nesterov="yes"))
row("optim-sgd-nesterov-no-momentum", ValueError, "nesterov=True", call(optim.sgd, 0.1, nesterov=True))
row("optim-sgd-weight-decay", ValueError, "weight_decay=-1.0", call(optim.sgd, 0.1, weight_decay=-1.0))
row("optim-adam-betas-one", ValueError, "betas", call(optim.adam, betas=(0.9,)))
row("optim-adam-beta1", ValueError, "betas[0]=1.0", call(optim.adam, betas=(1.0, 0.999)))
row("optim-adam-beta2-str", TypeError, "betas[1]", call(optim.adam, betas=(0.9, "0.999")))
row("optim-adam-eps", ValueError, "eps=-1.0", call(optim.adam, eps=-1.0))
row("optim-adam-amsgrad-int", TypeError, "amsgrad=1", call(optim.adam, amsgrad=1))
row("optim-adamw-weight-decay-nan", ValueError, "weight_decay=nan", call(optim.adamw, weight_decay=math.nan))
row("optim-schedule-cosine-steps", ValueError, "decay_steps=0", call(S.cosine, 0.1, 0))
row("optim-schedule-step-size", ValueError, "step_size=0", call(S.step_decay, 0.1, 0))
row("optim-schedule-gamma", ValueError, "gamma=-1.0", call(S.exponential, 0.1, -1.0))
row("optim-schedule-piecewise", ValueError, "values", call(S.piecewise, [1, 2], [0.1]))
row("optim-schedule-constant-str", TypeError, "value='a'", call(S.constant, "a"))
row("optim-schedule-warmup", ValueError, "warmup_steps=-1", call(S.linear_warmup, 0.0, 1.0, -1))

# optim: init and update
row("optim-sgd-init-int", TypeError, "params['w'] has dtype int32",
    lambda tmp: (optim.sgd(0.1).init, ({"w": np.ones(3, np.int32)},), {}))
row("optim-sgd-init-list", TypeError, "params", lambda tmp: (optim.sgd(0.1).init, ([np.ones(3)],), {}))
row("optim-sgd-init-list-entry", TypeError, "params['w']", call(lambda: optim.sgd(0.1).init({"w": [1.0, 2.0]})))
row("optim-adam-init-int", TypeError, "params['w']", lambda tmp: (optim.adam().init, ({"w": np.ones(3, np.int64)},), {}))
row("optim-adam-init-complex", TypeError, "params['w']",
    lambda tmp: (optim.adam().init, ({"w": np.ones(3, np.complex64)},), {}))
row("optim-sgd-grads-list", TypeError, "grads['w.weight'] is a list",
    lambda tmp: (optim.sgd(0.1).update, ({"w.weight": [[0.0] * 4] * 3}, sgd_state(0.0), W()), {}))
row("optim-adam-grads-list", TypeError, "grads['w.bias'] is a list",
    lambda tmp: (optim.adam().update, ({"w.bias": [0.0, 0.0, 0.0]}, optim.adam().init(W()), W()), {}))
row("optim-sgd-grads-extra", ValueError, "other",
    lambda tmp: (optim.sgd(0.1).update, (dict(G(), other=np.ones(2, np.float32)), sgd_state(0.0), W()), {}))
row("optim-sgd-grads-shape", ValueError, "grads['w.weight'] has shape (4, 3)",
    lambda tmp: (optim.sgd(0.1).update, (dict(G(), **{"w.weight": np.ones((4, 3), np.float32)}), sgd_state(0.0), W()), {}))
row("optim-sgd-grads-int", TypeError, "grads['w.bias'] has dtype int32",
    lambda tmp: (optim.sgd(0.1, momentum=0.9).update, (dict(G(), **{"w.bias": np.ones(3, np.int32)}), sgd_state(), W()), {}))
row("optim-sgd-grads-complex", TypeError, "grads['w.bias'] has dtype complex64",
    lambda tmp: (optim.sgd(0.1).update, (dict(G(), **{"w.bias": np.ones(3, np.complex64)}), sgd_state(0.0), W()), {}))
row("optim-adam-grads-float64", TypeError, "grads['w.bias'] has dtype float64",
    lambda tmp: (optim.adam().update, (dict(G(), **{"w.bias": np.ones(3)}), optim.adam().init(W()), W()), {}))
row("optim-sgd-grads-strict", TypeError, ("grads['w.weight'] is an array of array_api_strict", "numpy"),
    lambda tmp: (optim.sgd(0.1).update, (dict(G(), **{"w.weight": strict.ones((3, 4))}), sgd_state(0.0), W()), {}))
row("optim-sgd-grads-not-dict", TypeError, "grads", lambda tmp: (optim.sgd(0.1).update, (list(G().values()), sgd_state(0.0), W()), {}))
row("optim-sgd-params-not-dict", TypeError, "params", lambda tmp: (optim.sgd(0.1).update, (G(), sgd_state(0.0), [1.0]), {}))
row("optim-sgd-momentum-shape", ValueError, "state.momentum['w.weight'] has shape (4, 3)",
    lambda tmp: (optim.sgd(0.1, momentum=0.9).update,
                 (G(), sgd_state(params={"w.weight": np.ones((4, 3), np.float32), "w.bias": np.ones(3, np.float32)}), W()), {}))
row("optim-sgd-momentum-keys", ValueError, "state.momentum",
    lambda tmp: (optim.sgd(0.1, momentum=0.9).update, (G(), sgd_state(params={"w.weight": np.ones((3, 4), np.float32)}), W()), {}))
row("optim-sgd-momentum-none", ValueError, "state.momentum",
    lambda tmp: (optim.sgd(0.1, momentum=0.9).update, (G(), sgd_state(0.0), W()), {}))
row("optim-sgd-momentum-strict", TypeError, ("state.momentum['w.bias'] is an array of array_api_strict", "numpy"),
    lambda tmp: (optim.sgd(0.1, momentum=0.9).update,
                 (G(), optim.SGDState(0, dict(sgd_state().momentum, **{"w.bias": strict.zeros(3)})), W()), {}))
row("optim-sgd-state-type", TypeError, "state has type AdamState",
    lambda tmp: (optim.sgd(0.1).update, (G(), optim.adam().init(W()), W()), {}))
row("optim-adam-steps-missing", ValueError, "state.steps",
    lambda tmp: (optim.adam().update, (G(), optim.adam().init(W())._replace(steps={"w.weight": 0}), W()), {}))
row("optim-adam-exp-avg-shape", ValueError, "state.exp_avg['w.weight']",
    lambda tmp: (optim.adam().update,
                 (G(), optim.adam().init(W())._replace(exp_avg={"w.weight": np.zeros((2, 2), np.float32),
                                                                "w.bias": np.zeros(3, np.float32)}), W()), {}))
row("optim-adam-amsgrad-state", ValueError, "amsgrad",
    lambda tmp: (optim.adam(amsgrad=True).update, (G(), optim.adam().init(W()), W()), {}))
row("optim-lr-schedule-str", TypeError, "lr schedule",
    lambda tmp: (optim.sgd(lambda step: "x").update, (G(), sgd_state(0.0), W()), {}))
row("optim-lr-schedule-nan", ValueError, "lr schedule",
    lambda tmp: (optim.sgd(lambda step: math.nan).update, (G(), sgd_state(0.0), W()), {}))

# optim: state files
row("optim-save-not-a-state", TypeError, "state", lambda tmp: (optim.save_state, (tmp / "s.npz", {"count": 0}), {}))
row("optim-load-zero-byte", ValueError, "zero.npz", lambda tmp: (optim.load_state, (zero_file(tmp), optim.SGDState), {}))
row("optim-load-truncated", ValueError, "truncated.npz",
    lambda tmp: (optim.load_state, (truncated_file(tmp), optim.SGDState), {}))
row("optim-load-foreign-npz", ValueError, ("foreign.npz", "__meta__"),
    lambda tmp: (optim.load_state, (foreign_file(tmp), optim.SGDState), {}))
row("optim-load-text", ValueError, "notes.npz", lambda tmp: (optim.load_state, (text_file(tmp), optim.SGDState), {}))
row("optim-load-npy", ValueError, "single.npy", lambda tmp: (optim.load_state, (npy_file(tmp), optim.SGDState), {}))
row("optim-load-missing", FileNotFoundError, "absent.npz", lambda tmp: (optim.load_state, (tmp / "absent.npz", optim.SGDState), {}))
row("optim-load-other-type", ValueError, ("good.npz", "SGDState", "AdamState"),
    lambda tmp: (optim.load_state, (saved_state_file(tmp), optim.AdamState), {}))

# ----------------------------------------------------------------------------
# EGD
# ----------------------------------------------------------------------------
for name, value, exc in [
    ("lr", 0.0, ValueError), ("momentum", -1.0, ValueError), ("evo_interval", 2.5, TypeError),
    ("pop_size", 1, ValueError), ("pop_size", 2**32, ValueError), ("pop_size", "8", TypeError),
    ("elite_frac", 0.6, ValueError), ("elite_frac", 0.0, ValueError), ("sigma", 0.0, ValueError),
    ("sigma", math.inf, ValueError), ("sigma_decay", 0.0, ValueError), ("recombine", "median", ValueError),
    ("reset_momentum_on_evo", "yes", TypeError), ("loss_reduce", 3, TypeError), ("seed", -1, ValueError),
    ("seed", 2**64, ValueError), ("seed", 1.5, TypeError), ("sigma_schedule", 1, TypeError),
    ("offload_population_to_cpu", None, TypeError), ("mutate_filter", "fc", TypeError),
    ("population_storage", "disk", ValueError), ("mutation", "half", ValueError), ("rank", 0, ValueError),
    ("accept", "maybe", ValueError), ("temperature", 0.0, ValueError), ("rescore_elites", 1, TypeError),
    ("callback", 1, TypeError),
]:
    row(f"egd-{name}-{value!r}", exc, f"{name}=", call(E.egd, **{name: value}))
row("egd-nesterov-no-momentum", ValueError, "nesterov", call(E.egd, nesterov=True))
row("egd-init-empty", TypeError, "params", lambda tmp: (E.egd().init, ({},), {}))
row("egd-init-int", TypeError, "params['w']", lambda tmp: (E.egd().init, ({"w": np.ones(3, np.int32)},), {}))
row("egd-init-population-too-big", MemoryError, ("pop_size=4294967295", "bytes"),
    lambda tmp: (E.egd(evo_interval=1, pop_size=2**32 - 1).init, ({"w": np.ones((64, 64), np.float32)},), {}))
row("egd-update-no-closure", RuntimeError, "closure", lambda tmp: (E.egd(evo_interval=1).update, (G(), E.egd().init(W()), W()), {}))
row("egd-update-closure-not-callable", TypeError, "closure=3",
    lambda tmp: (E.egd(evo_interval=1).update, (G(), E.egd().init(W()), W()), {"closure": 3}))
row("egd-update-closure-array", ValueError, "closure returned an array of shape (3,)",
    lambda tmp: (E.egd(evo_interval=1).update, (G(), E.egd().init(W()), W()), {"closure": lambda p: np.ones(3)}))
row("egd-update-closure-nan", RuntimeError, "loss is nan",
    lambda tmp: (E.egd(evo_interval=1).update, (G(), E.egd().init(W()), W()), {"closure": lambda p: math.nan}))
row("egd-update-state-type", TypeError, "state has type SGDState",
    lambda tmp: (E.egd().update, (G(), sgd_state(0.0), W()), {}))
row("egd-update-state-seed", ValueError, "seed=-1",
    lambda tmp: (E.egd().update, (G(), E.egd().init(W())._replace(seed=-1), W()), {}))
row("egd-update-state-sigma", ValueError, "state.sigma",
    lambda tmp: (E.egd().update, (G(), E.egd().init(W())._replace(sigma=-0.1), W()), {}))
row("egd-update-state-cycle", ValueError, "state.cycle",
    lambda tmp: (E.egd().update, (G(), E.egd().init(W())._replace(cycle=1.5), W()), {}))
row("egd-update-momentum-shape", ValueError, "state.momentum['w.weight'] has shape (4, 3)",
    lambda tmp: (E.egd(momentum=0.9).update,
                 (G(), E.egd(momentum=0.9).init({"w.weight": np.ones((4, 3), np.float32), "w.bias": np.ones(3, np.float32)}), W()), {}))
row("egd-update-grads-int", TypeError, "grads['w.bias'] has dtype int64",
    lambda tmp: (E.egd().update, (dict(G(), **{"w.bias": np.ones(3, np.int64)}), E.egd().init(W()), W()), {}))
row("egd-update-grads-strict", TypeError, ("grads['w.bias'] is an array of array_api_strict", "numpy"),
    lambda tmp: (E.egd().update, (dict(G(), **{"w.bias": strict.ones(3)}), E.egd().init(W()), W()), {}))
row("egd-evolve-momentum-keys", ValueError, "state.momentum",
    lambda tmp: (E.egd(momentum=0.9).evolve, (E.egd(momentum=0.9).init({"w.weight": np.ones((3, 4), np.float32)}), W(), quad), {}))
row("egd-load-zero-byte", ValueError, "zero.npz", lambda tmp: (E.load, (zero_file(tmp),), {}))
row("egd-load-truncated", ValueError, "truncated.npz", lambda tmp: (E.load, (truncated_file(tmp),), {}))
row("egd-load-foreign", ValueError, "foreign.npz", lambda tmp: (E.load, (foreign_file(tmp),), {}))
row("egd-load-sgd-state", ValueError, ("good.npz", "EGDState"), lambda tmp: (E.load, (saved_state_file(tmp),), {}))


def _egd_checkpoint(tmp, params, name="ck.npz"):
    path = tmp / name
    optim.EGD(params, momentum=0.9).save(path)
    return path


def _egd_state_file(tmp, params, name):
    path = tmp / name
    E.save(path, E.egd(momentum=0.9).init(params))
    return path


row("egd-load-other-model", ValueError, ("big.npz", "shape (5, 4)"),
    lambda tmp: (E.load, (_egd_state_file(tmp, {"w.weight": np.ones((5, 4), np.float32), "w.bias": np.ones(3, np.float32)}, "big.npz"),),
                 {"params": W()}))
row("egd-load-a-checkpoint", ValueError, ("ck.npz", "_Checkpoint", "EGDState"), lambda tmp: (E.load, (_egd_checkpoint(tmp, W()),), {}))
row("EGD-init-pop", ValueError, "pop_size=1", lambda tmp: (optim.EGD, (W(),), {"pop_size": 1}))
row("EGD-load-other-model", ValueError, ("big.npz", "fc1.weight"),
    lambda tmp: (optim.EGD(P(), momentum=0.9).load, (_egd_checkpoint(tmp, nn.mlp((4, 5, 2)).init(0), "big.npz"),), {}))
row("EGD-load-other-keys", ValueError, ("other.npz", "the checkpoint's params"),
    lambda tmp: (optim.EGD(P(), momentum=0.9).load, (_egd_checkpoint(tmp, W(), "other.npz"),), {}))
row("EGD-load-other-momentum", ValueError, ("ck.npz", "momentum"),
    lambda tmp: (optim.EGD(W()).load, (_egd_checkpoint(tmp, W()),), {}))
row("EGD-load-zero-byte", ValueError, "zero.npz", lambda tmp: (optim.EGD(W()).load, (zero_file(tmp),), {}))
row("EGD-load-truncated", ValueError, "truncated.npz", lambda tmp: (optim.EGD(W()).load, (truncated_file(tmp),), {}))
row("EGD-load-foreign", ValueError, "foreign.npz", lambda tmp: (optim.EGD(W()).load, (foreign_file(tmp),), {}))
row("EGD-step-grads-list", TypeError, "grads['w.bias'] is a list",
    lambda tmp: (optim.EGD(W()).step, ({"w.bias": [1.0, 2.0, 3.0]},), {}))

# ----------------------------------------------------------------------------
# es: the strategy
# ----------------------------------------------------------------------------
for kwargs, exc, names in [
    ({"pop_size": 1, "antithetic": False}, ValueError, "pop_size=1"),
    ({"pop_size": 0}, ValueError, "pop_size=0"),
    ({"pop_size": 4.0}, TypeError, "pop_size=4.0"),
    ({"pop_size": "8"}, TypeError, "pop_size='8'"),
    ({"pop_size": 2**34}, ValueError, "pop_size=17179869184"),
    ({"pop_size": 7}, ValueError, "pop_size=7"),
    ({"pop_size": 4, "antithetic": "no"}, TypeError, "antithetic='no'"),
    ({"pop_size": 4, "antithetic": 1}, TypeError, "antithetic=1"),
    ({"pop_size": 4, "rank": 0}, ValueError, "rank=0"),
    ({"pop_size": 4, "rank": 1.5}, ValueError, "rank=1.5"),
    ({"pop_size": 4, "sigma": 0.0}, ValueError, "sigma=0.0"),
    ({"pop_size": 4, "sigma": "0.1"}, TypeError, "sigma='0.1'"),
    ({"pop_size": 4, "sigma": math.nan}, ValueError, "sigma=nan"),
    ({"pop_size": 4, "optimizer": "adam"}, TypeError, ("optimizer='adam'", "optim.adam(1e-3)")),
    ({"pop_size": 4, "optimizer": optim.adam}, TypeError, "optimizer="),
    ({"pop_size": 4, "lr": -1.0}, ValueError, "lr=-1.0"),
    ({"pop_size": 4, "fitness": "rank"}, ValueError, "fitness='rank'"),
    ({"pop_size": 4, "group_size": -1}, ValueError, "group_size=-1"),
    ({"pop_size": 4, "fitness": "group_zscore", "group_size": -1}, ValueError, "group_size=-1"),
    ({"pop_size": 4, "fitness": "group_zscore"}, ValueError, "group_size=0"),
    ({"pop_size": 8, "fitness": "zscore", "group_size": 3}, ValueError, "group_size=3"),
    ({"pop_size": 8, "fitness": "centered_ranks", "group_size": 2}, ValueError, "group_size=2"),
    ({"pop_size": 4, "vectors": "some"}, ValueError, "vectors='some'"),
    ({"pop_size": 4, "noise_reuse": -1}, ValueError, "noise_reuse=-1"),
    ({"pop_size": 4, "noise_reuse": 1.5}, ValueError, "noise_reuse=1.5"),
    ({"pop_size": 4, "convention": "jax"}, ValueError, "convention='jax'"),
]:
    row("eggroll-" + "-".join(f"{k}={v!r}" for k, v in kwargs.items()), exc, names, call(es.Eggroll, **kwargs))
row("eggroll-init-int", TypeError, "params['fc1.weight'] has dtype int32",
    lambda tmp: (es.Eggroll(pop_size=4).init, ({k: v.astype(np.int32) for k, v in P().items()},), {}))
row("eggroll-init-empty", TypeError, "params", lambda tmp: (es.Eggroll(pop_size=4).init, ({},), {}))
row("eggroll-init-rank", ValueError, "rank=3", lambda tmp: (es.Eggroll(pop_size=4, rank=3).init, (P(),), {}))
row("eggroll-init-seed", ValueError, "seed=-1", lambda tmp: (es.Eggroll(pop_size=4).init, (P(),), {"seed": -1}))
row("eggroll-init-mixed", TypeError, ("params['fc1.bias'] is an array of array_api_strict", "numpy"),
    lambda tmp: (es.Eggroll(pop_size=4).init, ((lambda p: dict(p, **{"fc1.bias": strict_copy(p["fc1.bias"])}))(P()),), {}))


def tell(fitness_of, state_of=lambda s: s, perts_of=lambda p, s: p, **kw):
    def make(tmp):
        strategy, state, perts = eggroll(**kw)
        return strategy.tell, (state_of(state), perts_of(perts, strategy), fitness_of()), {}
    return make


row("eggroll-tell-fitness-length", ValueError, "fitness has 3 entries", tell(lambda: np.zeros(3)))
row("eggroll-tell-fitness-nan", ValueError, "fitness has 1 non-finite", tell(lambda: np.array([0.0, np.nan, 1.0, 2.0])))
row("eggroll-tell-fitness-inf", ValueError, "fitness has 1 non-finite", tell(lambda: np.array([0.0, np.inf, 1.0, 2.0])))
row("eggroll-tell-fitness-int", TypeError, "fitness has dtype int64", tell(lambda: np.arange(4)))
row("eggroll-tell-fitness-2d", ValueError, "fitness has shape (4, 1)", tell(lambda: np.zeros((4, 1))))
row("eggroll-tell-fitness-strict", TypeError, ("fitness is an array of array_api_strict", "numpy"),
    tell(lambda: strict.asarray([0.0, 1.0, 2.0, 3.0])))
row("eggroll-tell-fitness-list", TypeError, "fitness is a list", tell(lambda: [0.0, 1.0, 2.0, 3.0]))
row("eggroll-tell-perts-type", TypeError, "perts", tell(lambda: np.arange(4.0), perts_of=lambda p, s: {"noise": {}}))
row("eggroll-tell-perts-stale", ValueError, "generation", tell(lambda: np.arange(4.0), state_of=lambda s: s._replace(generation=1)))
row("eggroll-tell-extra-param", ValueError, "extra.weight",
    tell(lambda: np.arange(4.0), state_of=lambda s: s._replace(params=dict(s.params, **{"extra.weight": np.ones((2, 2), np.float32)}))))
row("eggroll-tell-state-type", TypeError, "state", tell(lambda: np.arange(4.0), state_of=lambda s: tuple(s)))
row("eggroll-tell-other-pop", ValueError, "pop_size=8",
    lambda tmp: (es.Eggroll(pop_size=8).tell, (eggroll()[1], eggroll()[2], np.arange(8.0)), {}))


def _population(fitness_fn, chunk_size=None):
    def make(tmp):
        params = P()
        return es.population_fitness, (MODEL, params, X(), es.generate(params, pop_size=4, seed=0), fitness_fn), {
            "chunk_size": chunk_size}
    return make


row("es-population-fitness-shape", ValueError, "fitness_fn returned (4, 5)", _population(lambda out: out[..., 0]))
row("es-population-fitness-scalar", ValueError, "fitness_fn returned float", _population(lambda out: 1.0))
row("es-population-fitness-not-callable", TypeError, "fitness_fn=3", _population(3))
row("es-population-chunk-zero", ValueError, "chunk_size=0", _population(lambda out: out[:, 0, 0], chunk_size=0))
row("es-population-chunk-float", TypeError, "chunk_size=2.5", _population(lambda out: out[:, 0, 0], chunk_size=2.5))
row("es-generate-pop", ValueError, "pop_size=0", lambda tmp: (es.generate, (W(),), {"pop_size": 0}))
row("es-generate-sigma", ValueError, "sigma=0", lambda tmp: (es.generate, (W(),), {"pop_size": 4, "sigma": 0}))
row("es-generate-rank", ValueError, "rank=4", lambda tmp: (es.generate, (W(),), {"pop_size": 4, "rank": 4}))
row("es-generate-dtype", TypeError, "dtype='float16'", lambda tmp: (es.generate, (W(),), {"pop_size": 4, "dtype": "float16"}))
row("es-generate-factors-shape", ValueError, "factors['w.bias']",
    lambda tmp: (es.generate, (W(),), {"pop_size": 4, "factors": {"w.bias": np.ones((2, 4))}}))
row("es-member-layout-odd", ValueError, "pop_size=3", call(es.perturbations.member_layout, 3, antithetic=True, layout="halves"))
row("es-member-layout-name", ValueError, "layout='diag'", call(es.perturbations.member_layout, 4, antithetic=True, layout="diag"))
row("es-member-layout-antithetic", TypeError, "antithetic='yes'",
    call(es.perturbations.member_layout, 4, antithetic="yes", layout="halves"))
row("es-zscore-nan", ValueError, "fitness", lambda tmp: (es.zscore, (np.array([1.0, np.nan]),), {}))
row("es-zscore-ddof", ValueError, "ddof=2", lambda tmp: (es.zscore, (np.ones(4),), {"ddof": 2}))
row("es-group-zscore-divisor", ValueError, "group_size=3", lambda tmp: (es.group_zscore, (np.ones(4), 3), {}))
row("es-shape-method", ValueError, "method='foo'", lambda tmp: (es.shape_fitness, (np.ones(4), "foo"), {}))
row("es-centered-ranks-complex", TypeError, "fitness", lambda tmp: (es.centered_ranks, (np.ones(3, np.complex64),), {}))
row("es-classification-logits-2d", ValueError, "logits", lambda tmp: (es.classification_fitness, (np.ones((3, 2)), Y(3)), {}))
row("es-convention-name", ValueError, "convention='jax'", call(es.get_convention, "jax"))
row("es-gradient-perts-type", TypeError, "perts", lambda tmp: (es.es_gradient, (np.ones(4), None), {}))

# ----------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------
for name, value, exc in [("batch_size", 2.5, TypeError), ("batch_size", "4", TypeError), ("batch_size", 0, ValueError),
                         ("batch_size", True, TypeError)]:
    row(f"data-iterate-{name}-{value!r}", exc, f"{name}={value!r}",
        lambda tmp, value=value: (data.iterate_batches, (X(), Y(), value), {"seed": 0}))
for name, value, exc in [("epoch", -1, ValueError), ("epoch", 1.0, TypeError), ("seed", -1, ValueError),
                         ("shuffle", "yes", TypeError), ("drop_last", 1, TypeError)]:
    row(f"data-iterate-{name}-{value!r}", exc, f"{name}={value!r}",
        lambda tmp, name=name, value=value: (data.iterate_batches, (X(), Y(), 2), dict({"seed": 0}, **{name: value})))
row("data-iterate-x-list", TypeError, "x is a list", lambda tmp: (data.iterate_batches, (X().tolist(), Y().tolist(), 2), {"seed": 0}))
row("data-iterate-y-list", TypeError, "y is a list", lambda tmp: (data.iterate_batches, (X(), Y().tolist(), 2), {"seed": 0}))
row("data-iterate-lengths", ValueError, "y has 4", lambda tmp: (data.iterate_batches, (X(), Y(4), 2), {"seed": 0}))
row("data-iterate-y-strict", TypeError, ("y is an array of array_api_strict", "numpy"),
    lambda tmp: (data.iterate_batches, (X(), strict_copy(Y()), 2), {"seed": 0}))
row("data-batch-indices-n", ValueError, "n=-1", call(data.batch_indices, -1, 2, seed=0))
row("data-batch-indices-size", ValueError, "batch_size=0", call(data.batch_indices, 10, 0, seed=0))
row("data-digits-size-small", ValueError, "size=4", call(data.load_digits, size=4))
row("data-digits-size-float", TypeError, "size=8.5", call(data.load_digits, size=8.5))
row("data-digits-test-fraction", ValueError, "test_fraction=1.0", call(data.load_digits, test_fraction=1.0))
row("data-digits-test-fraction-str", TypeError, "test_fraction='0.2'", call(data.load_digits, test_fraction="0.2"))
row("data-digits-flat", TypeError, "flat='yes'", call(data.load_digits, flat="yes"))
row("data-digits-dtype", TypeError, "dtype='int8'", call(data.load_digits, dtype="int8"))
row("data-upsample-not-square", ValueError, "images", lambda tmp: (data.upsample, (np.ones((2, 3, 4)), 8), {}))
row("data-upsample-list", TypeError, "images is a list", call(data.upsample, [[1.0, 2.0], [3.0, 4.0]], 4))
row("data-upsample-size", TypeError, "size=2.5", lambda tmp: (data.upsample, (np.ones((2, 2)), 2.5), {}))
row("backend-not-arrays", TypeError, ("expected arrays", "list"), call(egdnp.array_namespace, [1.0]))
row("eggroll-ask-state-type", TypeError, "state", lambda tmp: (eggroll()[0].ask, (tuple(eggroll()[1]),), {}))
row("es-linear-mixed", TypeError, ("array_api_strict", "numpy"),
    lambda tmp: (es.perturbed_linear, (X(), strict.ones((3, 4)), None, es.generate(P(), pop_size=4, seed=0)),
                 {"weight_key": "fc1.weight"}))

# ----------------------------------------------------------------------------
# reference API (the calls a port's test uses)
# ----------------------------------------------------------------------------
row("reference-generate-name", ValueError, "scenario='nope'", call(reference.generate, "nope"))
row("reference-generate-dtype", ValueError, "dtype='float16'", call(reference.generate, "mlp", dtype="float16"))
row("reference-generate-seed", ValueError, "seed=-1", call(reference.generate, "mlp", seed=-1))
row("reference-generate-backend", ValueError, "backend='torch'", call(reference.generate, "mlp", backend="torch"))
row("reference-compare-rtol", ValueError, "rtol=-1.0",
    lambda tmp: (reference.compare, ({"a": np.ones(2)}, {"a": np.ones(2)}), {"rtol": -1.0}))
row("reference-compare-names", ValueError, "names",
    lambda tmp: (reference.compare, ({"a": np.ones(2)}, {"a": np.ones(2)}), {"names": ["b"]}))
row("reference-compare-empty", ValueError, "expected arrays", lambda tmp: (reference.compare, ({}, {"a": np.ones(2)}), {}))
row("reference-compare-type", TypeError, "int", call(reference.compare, 3, {}))
row("reference-load-bundle-missing", FileNotFoundError, "nowhere",
    lambda tmp: (reference.load_bundle, (tmp / "nowhere",), {}))
row("reference-load-arrays-missing", FileNotFoundError, "nowhere.npz",
    lambda tmp: (reference.load_arrays, (tmp / "nowhere.npz",), {}))
row("reference-dump-empty-name", TypeError, "array name ''",
    lambda tmp: (reference.dump_arrays, (tmp / "out.npz", {"": np.ones(2)}), {}))


# ----------------------------------------------------------------------------
# the test
# ----------------------------------------------------------------------------
def snapshot(value, depth=0):
    """A comparable copy of everything reachable from ``value`` that a call could change."""
    if isinstance(value, Path):
        return ("file", str(value), value.read_bytes() if value.is_file() else None)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, type):
        host = _backend.to_host(value)
        return ("array", type(value).__name__, str(host.dtype), host.shape, host.tobytes())
    if isinstance(value, dict):
        return ("dict", tuple((k, snapshot(v, depth)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(snapshot(v, depth) for v in value))
    if isinstance(value, float):
        return ("float", repr(value))
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if depth < 2 and type(value).__module__.startswith("egdnp") and hasattr(value, "__dict__"):
        return ("object", type(value).__name__, snapshot(dict(vars(value)), depth + 1))
    return ("identity", id(value))


def test_the_table_is_broad():
    assert len(ROWS) >= 150
    ids = [p.id for p in ROWS]
    assert len(set(ids)) == len(ids)
    for area in ("backend", "rng", "nn", "optim", "egd", "EGD", "eggroll", "es", "data", "reference"):
        assert any(i.startswith(area + "-") for i in ids), area


@pytest.mark.parametrize("exc, names, make", ROWS)
def test_bad_input_raises_clearly_and_changes_nothing(exc, names, make, tmp_path):
    fn, args, kwargs = make(tmp_path)
    watched = (args, kwargs, getattr(fn, "__self__", None))
    before, listing = snapshot(watched), sorted(os.listdir(tmp_path))
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    err = info.value
    assert type(err) is exc, f"{type(err).__name__}: {err}"
    message = str(err)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert snapshot(watched) == before, "an input was changed"
    assert sorted(os.listdir(tmp_path)) == listing, "a file was left behind or removed"
