"""Optimiser quality: what SGD, EGD and EGGROLL reach on the digits for a fixed amount of work.

asv ``track_`` benchmarks, so that ``asv compare`` shows an optimiser getting
better or worse between commits the way users compare optimisers: by the
accuracy and loss they reach, not only by speed.

Setting (seeded, so every number is a pure function of the code)
-----------------------------------------------------------------
* data: scikit-learn's digits (1348 train / 449 test), egdnp.data split seed 0;
* ``mlp``: 64-64-10 tanh on the 8x8 images; budget 2**18 = 262,144 forward evaluations;
* ``cnn``: egdnp.nn.cnn on 16x16 upsampled images, channels (8, 16);
  budget 2**16 = 65,536 forward evaluations;
* one *forward evaluation* is one example through one model: an SGD step on a
  batch of 64 costs 64 (its backward pass is not counted), an EGD evolution
  cycle ``(pop_size + 1) * selection batch``, an EGGROLL generation
  ``pop_size * batch``.  Every method stops when its next step would exceed the budget;
* SGD: lr 0.1 (CNN 0.05), Nesterov momentum 0.9, batch 64; EGD: the same, plus
  a cycle every 32 steps (pop 8, sigma 0.02, selection batch 128); EGGROLL:
  rank 1, sigma 0.05, Adam (MLP: pop 64, batch 32, lr 0.03; CNN: pop 16, batch 16, lr 0.01).

Tracks
------
``track_test_accuracy``, ``track_test_loss``, ``track_train_loss`` after the
budget; ``track_seconds_to_target``: training wall time (evaluations
excluded) until the test accuracy first reaches 0.8, checked every 1/64 of
the budget -- NaN (shown as failed) when the budget runs out first.  Wall
times depend on the machine; the accuracies and losses do not (on one backend).

All runs happen once, in ``setup_cache`` (about 20 s per backend on a 2-core
CPU), with BLAS and Numba capped at one thread: the models are tiny, and a
parallel region on a shared machine can stall for a scheduler time slice per
call, which would make ``seconds_to_target`` measure the neighbours.  CuPy rows
are skipped where CuPy cannot be used.
"""

from __future__ import annotations

import math
import time

from egdnp import _backend, data, es, nn, optim
from egdnp.optim.egd import egd

from ._common import BACKENDS, namespace_or_skip

MODELS = ["mlp", "cnn"]
METHODS = ["sgd", "egd", "eggroll"]
TARGET_ACCURACY = 0.8
CHECKS = 64  # test-accuracy checks per run, for the time-to-target track

CONFIG = {
    "mlp": dict(budget=2**18, lr=0.1, es_pop=64, es_batch=32, es_lr=0.03),
    "cnn": dict(budget=2**16, lr=0.05, es_pop=16, es_batch=16, es_lr=0.01),
}
BATCH = 64
EVO_INTERVAL = 32
EGD_POP = 8
SELECTION_BATCH = 128
SEED = 0


def _setting(model_name, xp):
    if model_name == "mlp":
        return nn.mlp((64, 64, 10), activation="tanh"), data.load_digits(xp=xp)
    return nn.cnn(image_size=16, channels=(8, 16)), data.load_digits(size=16, flat=False, xp=xp)


def _evaluate(model, params, x, y):
    """(mean cross-entropy, accuracy) over a whole split, 512 examples at a time."""
    n = int(x.shape[0])
    loss, correct = 0.0, 0.0
    for start in range(0, n, 512):
        stop = min(n, start + 512)
        logits = model.apply(params, x[start:stop, ...])
        loss += float(nn.softmax_cross_entropy(logits, y[start:stop], reduction="sum"))
        correct += float(nn.accuracy(logits, y[start:stop])) * (stop - start)
    return loss / n, correct / n


def _batches(x, y, batch_size):
    epoch = 0
    while True:
        yield from data.iterate_batches(x, y, batch_size, seed=SEED, epoch=epoch, drop_last=True)
        epoch += 1


def _take(xp, x, idx):
    if _backend.is_numpy(xp):
        return x[idx]
    return xp.take(x, xp.asarray(idx, device=_backend.device_of(x)), axis=0)


def run(backend, model_name, method):
    """Train once within the forward-evaluation budget; returns the tracked numbers (a dict of floats)."""
    xp = _backend.get_namespace(backend)
    model, digits = _setting(model_name, xp)
    cfg = CONFIG[model_name]
    budget = cfg["budget"]
    params = model.init(seed=SEED, xp=xp)
    batches = _batches(digits.x_train, digits.y_train, BATCH if method != "eggroll" else cfg["es_batch"])
    used = 0
    trained = 0.0
    seconds_to_target = math.nan
    next_check = budget / CHECKS

    if method == "sgd":
        opt = optim.sgd(lr=cfg["lr"], momentum=0.9, nesterov=True)
        state = opt.init(params)
        cost = BATCH
    elif method == "egd":
        opt = egd(lr=cfg["lr"], momentum=0.9, nesterov=True, evo_interval=EVO_INTERVAL, pop_size=EGD_POP,
                  sigma=0.02, seed=SEED)
        state = opt.init(params)
        cost = BATCH
        cycle_cost = (EGD_POP + 1) * SELECTION_BATCH
        n_train = int(digits.x_train.shape[0])

        def closure(p, cycle=0):
            idx = data.batch_indices(n_train, SELECTION_BATCH, seed=SEED + 1, epoch=cycle)[0]
            return nn.softmax_cross_entropy(model.apply(p, _take(xp, digits.x_train, idx)),
                                            _take(xp, digits.y_train, idx))
    else:
        strategy = es.Eggroll(pop_size=cfg["es_pop"], rank=1, sigma=0.05, optimizer=optim.adam(cfg["es_lr"]))
        state = strategy.init(params, seed=SEED)
        cost = cfg["es_pop"] * cfg["es_batch"]

    step = 0
    while True:
        step_cost = cost
        if method == "egd" and (step + 1) % EVO_INTERVAL == 0:
            step_cost += cycle_cost
        if used + step_cost > budget:
            break
        t0 = time.perf_counter()
        xb, yb = next(batches)
        if method == "sgd":
            _, grads = model.loss_and_grad(params, xb, yb)
            params, state = opt.update(grads, state, params)
        elif method == "egd":
            _, grads = model.loss_and_grad(params, xb, yb)
            params, state, _ = opt.update(grads, state, params, closure=closure)
        else:
            perts = strategy.ask(state)
            fitness = es.classification_fitness(es.perturbed_model_forward(model, state.params, xb, perts), yb)
            state, _ = strategy.tell(state, perts, fitness)
            params = state.params
        _backend.synchronize(xp)
        trained += time.perf_counter() - t0
        used += step_cost
        step += 1
        if used >= next_check:
            next_check += budget / CHECKS
            if math.isnan(seconds_to_target) and _evaluate(model, params, digits.x_test, digits.y_test)[1] >= TARGET_ACCURACY:
                seconds_to_target = trained
    test_loss, test_acc = _evaluate(model, params, digits.x_test, digits.y_test)
    train_loss, _ = _evaluate(model, params, digits.x_train, digits.y_train)
    if math.isnan(seconds_to_target) and test_acc >= TARGET_ACCURACY:
        seconds_to_target = trained
    return {"test_accuracy": test_acc, "test_loss": test_loss, "train_loss": train_loss,
            "seconds_to_target": seconds_to_target, "forward_evals": used, "steps": step}


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    import numba

    numba.set_num_threads(1)


class DigitsQuality:
    """Accuracy and loss after a fixed forward-evaluation budget, and time to 80% test accuracy."""

    params = (BACKENDS, MODELS, METHODS)
    param_names = ["backend", "model", "method"]
    timeout = 900

    def setup_cache(self):
        _one_thread()
        results = {}
        for backend in BACKENDS:
            try:
                namespace_or_skip(backend)
            except NotImplementedError:
                continue
            for model_name in MODELS:
                for method in METHODS:
                    results[(backend, model_name, method)] = run(backend, model_name, method)
        return results

    def setup(self, results, backend, model_name, method):
        if (backend, model_name, method) not in results:
            raise NotImplementedError(f"backend {backend} is not usable here")

    def track_test_accuracy(self, results, backend, model_name, method):
        return results[(backend, model_name, method)]["test_accuracy"]

    track_test_accuracy.unit = "accuracy"

    def track_test_loss(self, results, backend, model_name, method):
        return results[(backend, model_name, method)]["test_loss"]

    track_test_loss.unit = "cross-entropy"

    def track_train_loss(self, results, backend, model_name, method):
        return results[(backend, model_name, method)]["train_loss"]

    track_train_loss.unit = "cross-entropy"

    def track_seconds_to_target(self, results, backend, model_name, method):
        return results[(backend, model_name, method)]["seconds_to_target"]

    track_seconds_to_target.unit = "seconds"
