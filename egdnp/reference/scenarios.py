"""Named, deterministic scenarios: everything a port needs to check itself.

A scenario is a function ``(xp, dtype, seed) -> (arrays, hyperparameters)``.
``arrays`` maps names to arrays: ``inputs/...`` and ``params/...`` are what a
port reads, the rest (``outputs/``, ``grads/``, ``noise/`` ...) is what it must
reproduce.  Scenarios are small (kilobytes) so their bundles can live in git.

Array naming
------------
``params/<key>``
    Model parameters keyed as in egdnp (``"fc1.weight"`` of shape (n_out, n_in),
    ``"conv1.weight"`` of shape (C_out, C_in, kh, kw)).
``inputs/x``, ``inputs/y``
    A batch (``x`` float, ``y`` int64 class labels).
``inputs/noise/...``, ``inputs/factors/...``
    Noise a port may read instead of reimplementing docs/noise.md: EGD unit
    mutations ``z`` (``inputs/noise/<key>``, members 1..pop-1 stacked on axis 0)
    and EGGROLL raw factors (``inputs/factors/<key>/A`` (P, m, r), ``.../B``
    (P, n, r), ``.../eps`` (P, *shape)).
``grads/<key>``
    Loss gradients keyed like params.
``activations/<layer>``, ``grad_activations/<layer>``
    Model scenarios (``mlp``, ``cnn``): every layer's forward output and the
    gradient of the loss with respect to it, named by the model's layer names
    (``activations/conv2`` (N, C, H, W)); optional for a port.
``outputs/...``
    Everything else a port must reproduce.

Data flow
---------
Every scenario's hyper-parameters hold ``"data_flow"``: the expected arrays in
the order they are computed (``{"array", "stage", "what", "steps"}``; forward
layers, loss, backward layers, parameter gradients, optimiser state, ...).
The comparator lists arrays in that order and names the first divergence.

Multi-step scenarios (optimiser steps, training trajectories) stack the
per-step arrays on a leading step axis (``inputs/x`` (steps, batch, n_in),
``outputs/params/<key>`` (steps, *shape)): few arrays keep the bundles small.

Inputs are drawn from :mod:`egdnp.rng` at the addresses ``stream="reference/" +
what`` (member 0, generation = step), so every scenario is the same on every
backend up to the normals' tolerance (docs/noise.md).  Scenario functions use
only the public APIs of :mod:`egdnp.nn`, :mod:`egdnp.optim` and :mod:`egdnp.es`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .. import _backend, es, nn, optim, rng
from ..es.perturbations import matrix_shape, pair_normals
from ..optim import egd as egd_mod


__all__ = ["SCENARIOS", "Scenario", "scenario"]


@dataclass(frozen=True)
class Scenario:
    """A registered scenario: its function and a one-line description.

    Attributes
    ----------
    fn : callable
        ``fn(xp, dtype, seed) -> (arrays, hyperparameters)``: ``arrays`` a dict
        of names to arrays of namespace ``xp``, ``hyperparameters`` a
        JSON-serialisable dict.
    description : str
        What a port reproduces (``python -m egdnp.reference list``).
    """

    fn: Callable
    description: str


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str):
    """Decorator registering a scenario function under ``name``.

    Parameters
    ----------
    name : str
        The scenario's name; must not be registered yet.
    description : str
        One line on what a port reproduces.

    Returns
    -------
    callable
        The decorator; it returns the function unchanged.
    """

    def register(fn):
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} is registered twice")
        SCENARIOS[name] = Scenario(fn, description)
        return fn

    return register


@scenario("noise", "Philox words, uniforms, normals, a weighted noise sum and centered ranks for fixed addresses")
def noise(xp, dtype, seed):
    """Addresses: (seed, "fc1.weight", member 17, generation 3) and (seed, stream 7, member 0, generation 0)."""
    a = dict(seed=seed, stream="fc1.weight", member=17, generation=3)
    b = dict(seed=seed, stream=7, member=0, generation=0)
    weights = [0.5, -1.25, 2.0, 0.0, -0.75]
    fitness = xp.asarray([0.3, -1.0, 0.3, 2.0, 0.3, -4.0, 1.5], dtype=getattr(xp, dtype))
    arrays = {
        "noise/words_a": rng.random_bits(64, **a, xp=xp),
        "noise/words_b": rng.random_bits((3, 5), **b, xp=xp),
        "noise/uniform_a": rng.uniform(64, **a, dtype=dtype, xp=xp),
        "noise/normal_a": rng.normal(64, **a, dtype=dtype, xp=xp),
        "noise/normal_b": rng.normal((4, 6), **b, dtype=dtype, xp=xp),
        "noise/weighted_sum": rng.weighted_noise_sum(weights, (6, 5), seed=seed, stream="fc1.weight", generation=3, dtype=dtype, xp=xp),
        "inputs/fitness": fitness,
        "outputs/centered_ranks": rng.centered_ranks(fitness, xp=xp),
    }
    hyper = {
        "address_a": a, "address_b": b, "weights": weights, "weighted_sum_members": list(range(len(weights))),
        "weighted_sum_address": dict(seed=seed, stream="fc1.weight", members=list(range(len(weights))), generation=3),
        "weighted_sum": "noise/weighted_sum (6, 5) = sum_i weights[i] * normal((6, 5), seed, stream='fc1.weight', member=i, "
                        "generation=3) for members i = 0..4 (address a's stream and generation, not its member 17); "
                        "summed in float64 and cast to the dtype at the end (egdnp's CPU kernel draws each member's normals "
                        "in the dtype, the array-API oracle in float64: they agree within egdnp.rng.NORMAL_ATOL)",
        "streams": "a str stream is crc32(name.encode('utf-8')) (address a: 'fc1.weight' -> 980894944); "
                   "an int stream is used as is, without crc32 (address b: stream 7 is the word 7)",
        "uniform": "24-bit uniforms: (word >> 8) * 2**-24, in [0, 1)",
        "normal": "Box-Muller on pairs of uniforms (docs/noise.md)",
        "centered_ranks": "rank / (n - 1) - 0.5 of inputs/fitness, ties averaged",
        "data_flow": [
            _entry("noise/words_a", "words", "Philox4x32-10 words at address a"),
            _entry("noise/words_b", "words", "Philox4x32-10 words at address b (integer stream 7)"),
            _entry("noise/uniform_a", "uniforms", "24-bit uniforms at address a"),
            _entry("noise/normal_a", "normals", "Box-Muller normals at address a"),
            _entry("noise/normal_b", "normals", "Box-Muller normals at address b"),
            _entry("noise/weighted_sum", "weighted sum", "weighted sum of members 0..4's normals (stream 'fc1.weight', generation 3)"),
            _entry("outputs/centered_ranks", "ranks", "centered ranks of inputs/fitness"),
        ],
    }
    return arrays, hyper


# ----------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------
MLP_SIZES = (5, 7, 3)  # small enough for kilobyte bundles, two layers so backprop goes through tanh


def _normal(xp, dtype, shape, seed, what, generation=0, scale=1.0):
    """Inputs of scenarios: ``scale * normal`` at stream ``"reference/" + what``."""
    z = rng.normal(shape, seed=seed, stream="reference/" + what, generation=generation, dtype=dtype, xp=xp)
    return z if scale == 1.0 else z * float(scale)


def _labels(xp, n, n_classes, seed, what, generation=0):
    """int64 class labels in [0, n_classes) from the words at ``"reference/" + what``."""
    words = rng.random_bits(n, seed=seed, stream="reference/" + what, generation=generation, xp=xp)
    return xp.astype(words % n_classes, xp.int64)


def _model_params(model, xp, dtype, seed):
    """``model.init(seed)`` with the (zero-initialised) biases replaced by ``0.1 * normal``.

    Non-zero biases make the bias terms of forward, backward and perturbations visible.
    """
    params = model.init(seed, xp=xp, dtype=dtype)
    for key, value in params.items():
        if key.endswith(".bias"):
            params[key] = _normal(xp, dtype, tuple(value.shape), seed, "bias/" + key, scale=0.1)
    return params


def _copy(a):
    return _backend.array_namespace(a).asarray(a, copy=True)


def _prefixed(prefix, arrays):
    return {f"{prefix}/{k}": v for k, v in arrays.items()}


def _append(history: dict, arrays: dict) -> None:
    for k, v in arrays.items():
        history.setdefault(k, []).append(v)


def _stacked(xp, history: dict) -> dict:
    """Lists of same-shape arrays -> arrays with a leading axis (few, larger arrays keep bundles small)."""
    return {k: xp.stack(v, axis=0) for k, v in history.items()}


def _scalar(xp, value, dtype):
    return xp.asarray(float(value), dtype=getattr(xp, dtype))


def _entry(array: str, stage: str, what: str, steps: int = 0) -> dict:
    """One data-flow entry; ``steps=k``: row r of the stacked array belongs to step (r + 1) * k."""
    entry = {"array": array, "stage": stage, "what": what}
    if steps:
        entry["steps"] = int(steps)
    return entry


# ----------------------------------------------------------------------------
# models: forward and backward
# ----------------------------------------------------------------------------
def _layer_trace(model, params, x, dout):
    """Every layer's output and ``d loss / d output``, layer by layer, through the public ``Serial`` API.

    Each layer runs as a one-layer ``Serial`` with its own params (the same
    layer forward/backward calls, in the same order, as ``model.forward`` /
    ``model.backward``, so the results are the model's bit for bit).  Models
    without buffers only.  Returns ``(activations, grad_activations, dx)``,
    the first two keyed by layer name.
    """
    activations, steps, h = {}, [], x
    for name, layer in model.layers:
        single = nn.Serial((name, layer))
        local = {k: v for k, v in params.items() if k.split(".", 1)[0] == name}
        h, cache = single.forward(local, h)
        activations[name] = h
        steps.append((name, single, local, cache))
    grad_activations, d = {}, dout
    for name, single, local, cache in reversed(steps):
        grad_activations[name] = d
        d, _ = single.backward(local, cache, d)
    return activations, grad_activations, d


def _model_flow(model) -> list:
    """Data flow of a forward/backward scenario: forward layers, loss, backward layers, parameter gradients."""
    names = list(model.names)
    flow = [_entry(f"activations/{n}", "forward", f"{n} forward output") for n in names]
    flow += [_entry("outputs/logits", "forward", "logits (the last layer's output)"),
             _entry("outputs/loss", "loss", "mean softmax cross-entropy"),
             _entry("outputs/dlogits", "loss", "d loss / d logits")]
    for i in range(len(names) - 1, -1, -1):
        by = f"{names[i + 1]} backward's input gradient" if i + 1 < len(names) else "= dlogits"
        flow.append(_entry(f"grad_activations/{names[i]}", "backward", f"gradient at {names[i]}'s output ({by})"))
    flow.append(_entry("outputs/dx", "backward", f"d loss / d x ({names[0]} backward's input gradient)"))
    for n in reversed(names):
        for key in model.param_shapes():
            if key.split(".", 1)[0] == n:
                flow.append(_entry(f"grads/{key}", "parameter gradients", f"d loss / d {key}"))
    return flow


MODEL_CONVENTIONS = {
    "linear": "y = x @ weight.T + bias, weight (n_out, n_in) (torch.nn.functional.linear)",
    "activations": "activations/<layer> is the layer's output; grad_activations/<layer> is d loss / d (that output), "
                   "what torch's tensor.retain_grad() on the layer's output holds after loss.backward(); both optional for a port",
    "loss": "softmax cross-entropy, mean over the batch (torch.nn.functional.cross_entropy)",
}


def _forward_backward(model, params, x, y, xp):
    logits, cache = model.forward(params, x)
    loss, dlogits = nn.softmax_cross_entropy_with_grad(logits, y, "mean")
    dx, grads = model.backward(params, cache, dlogits)
    activations, grad_activations, _ = _layer_trace(model, params, x, dlogits)
    arrays = {"inputs/x": x, "inputs/y": y}
    arrays.update(_prefixed("params", params))
    arrays.update(_prefixed("activations", activations))
    arrays.update({"outputs/logits": logits, "outputs/loss": loss, "outputs/dlogits": dlogits})
    arrays.update(_prefixed("grad_activations", grad_activations))
    arrays.update({"outputs/dx": dx})
    arrays.update(_prefixed("grads", grads))
    return arrays


@scenario("mlp", "MLP 5-7-3 (tanh) forward and backward: every layer's output and gradient, logits, mean cross-entropy, "
                "d loss/d logits, d loss/d x, every parameter gradient")
def mlp_forward_backward(xp, dtype, seed):
    """``fc1 -> tanh -> fc2``; ``y = x @ W.T + b``; loss = mean softmax cross-entropy over the batch."""
    model = nn.mlp(MLP_SIZES, activation="tanh")
    params = _model_params(model, xp, dtype, seed)
    x = _normal(xp, dtype, (4, MLP_SIZES[0]), seed, "mlp/x")
    y = _labels(xp, 4, MLP_SIZES[-1], seed, "mlp/y")
    hyper = {
        "model": "egdnp.nn.mlp(sizes, activation='tanh')",
        "sizes": list(MLP_SIZES),
        "layers": ["fc1 (Linear)", "tanh1", "fc2 (Linear)"],
        **MODEL_CONVENTIONS,
        "batch": 4,
        "data_flow": _model_flow(model),
    }
    return _forward_backward(model, params, x, y, xp), hyper


@scenario("cnn", "CNN conv(2->3,3x3,pad1)-relu-maxpool2-conv(3->4,3x3,pad1)-relu-maxpool2-flatten-fc(16->3) on a batch of 2 "
                "2x8x8 images: every layer's output and gradient, logits, loss, d loss/d x, every parameter gradient")
def cnn_forward_backward(xp, dtype, seed):
    """``egdnp.nn.cnn(in_channels=2, image_size=8, n_classes=3, channels=(3, 4))``; cross-correlation as torch.nn.functional.conv2d."""
    model = nn.cnn(in_channels=2, image_size=8, n_classes=3, channels=(3, 4))
    params = _model_params(model, xp, dtype, seed)
    x = _normal(xp, dtype, (2, 2, 8, 8), seed, "cnn/x")
    y = _labels(xp, 2, 3, seed, "cnn/y")
    hyper = {
        "model": "egdnp.nn.cnn(in_channels=2, image_size=8, n_classes=3, channels=(3, 4))",
        "layers": ["conv1 Conv2d(2, 3, 3, padding=1)", "relu1", "pool1 MaxPool2d(2)", "conv2 Conv2d(3, 4, 3, padding=1)",
                   "relu2", "pool2 MaxPool2d(2)", "flatten (C, H, W) row-major", "fc Linear(16, 3)"],
        "conv": "cross-correlation (torch.nn.functional.conv2d, no kernel flip), weight (C_out, C_in, kh, kw), "
                "zero padding 1 on every side, stride 1",
        "pool": "max pooling, 2x2 windows, stride 2 (torch.nn.functional.max_pool2d); its gradient goes to the first maximum",
        "flatten": "(N, C, H, W) -> (N, C*H*W) in C, H, W row-major order (torch's x.flatten(1) on NCHW; "
                   "not NHWC as in TensorFlow/flax): fc.weight column c*H*W + h*W + w",
        "layout": "images and feature maps (N, C, H, W); activations/<layer> have the layer's output shape",
        **MODEL_CONVENTIONS,
        "batch": 2,
        "data_flow": _model_flow(model),
    }
    return _forward_backward(model, params, x, y, xp), hyper


# ----------------------------------------------------------------------------
# optimisers: steps on fixed gradients
# ----------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd": ("sgd", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
    "nesterov": ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "adam": ("adam", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)),
    "adamw": ("adamw", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)),
}
OPT_STEPS = 3


def _make_optimizer(kind):
    factory, kw = OPTIMIZERS[kind]
    torch_name = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}[factory]
    hyper = {"optimizer": f"egdnp.optim.{factory}", **kw, "semantics": "torch.optim." + torch_name}
    if factory == "sgd":
        hyper.update(nesterov=kw.get("nesterov", False), dampening=0.0, maximize=False,
                     state="outputs/state/momentum/<key> is torch.optim.SGD's state[p]['momentum_buffer']: "
                           "buf = momentum * buf + (grad + weight_decay * p) (the first step sets buf = grad + weight_decay * p); "
                           "p -= lr * (grad + weight_decay * p + momentum * buf if nesterov else buf)")
    else:
        hyper.update(amsgrad=False, maximize=False,
                     state="outputs/state/exp_avg/<key>, outputs/state/exp_avg_sq/<key> are torch.optim."
                           f"{torch_name}'s state[p]['exp_avg'], ['exp_avg_sq'] (after the step; bias correction "
                           "1 - beta**t is applied in the update, not stored)",
                     weight_decay_rule="decoupled: p *= 1 - lr * weight_decay before the Adam step (AdamW)" if factory == "adamw"
                     else "L2: grad + weight_decay * p enters the moments (torch.optim.Adam)")
    return getattr(optim, factory)(**kw), hyper


def _optimizer_flow(kind, keys, stage_params="params after the update") -> list:
    fields = ["momentum"] if OPTIMIZERS[kind][0] == "sgd" else ["exp_avg", "exp_avg_sq"]
    flow = [_entry(f"outputs/state/{f}/{k}", "optimiser state", f"{f} buffer of {k} after the step", steps=1)
            for f in fields for k in keys]
    return flow + [_entry(f"outputs/params/{k}", stage_params, f"{k} after the step", steps=1) for k in keys]


def _state_arrays(state):
    """The arrays of an optimiser state (momentum / exp_avg / exp_avg_sq), keyed ``<field>/<param>``."""
    out = {}
    for field in ("momentum", "exp_avg", "exp_avg_sq"):
        table = getattr(state, field, None)
        if table:
            out.update({f"{field}/{k}": v for k, v in table.items()})
    return out


def _optimizer_steps(kind):
    def fn(xp, dtype, seed):
        opt, hyper = _make_optimizer(kind)
        shapes = {"fc1.weight": (3, 4), "fc1.bias": (3,)}
        params = {k: _normal(xp, dtype, s, seed, "opt/params/" + k) for k, s in shapes.items()}
        arrays = _prefixed("params", params)
        state = opt.init(params)
        history: dict = {}
        for t in range(1, OPT_STEPS + 1):
            grads = {k: _normal(xp, dtype, s, seed, "opt/grads/" + k, generation=t) for k, s in shapes.items()}
            params, state = opt.update(grads, state, params)
            _append(history, _prefixed("inputs/grads", grads))
            _append(history, _prefixed("outputs/params", params))
            _append(history, _prefixed("outputs/state", _state_arrays(state)))
        arrays.update(_stacked(xp, history))
        hyper.update(steps=OPT_STEPS, layout="inputs/grads/<key> and outputs/params/<key>, outputs/state/<buffer>/<key> "
                     "have a leading step axis: row t-1 is the gradient of / the value after update t; buffers start at zero",
                     data_flow=_optimizer_flow(kind, list(shapes)))
        return arrays, hyper

    fn.__name__ = f"{kind}_steps"
    fn.__doc__ = f"{OPT_STEPS} updates of {kind} on fixed gradients ``inputs/grads/<key>`` (steps, *shape)."
    return fn


for _kind, _label in [("sgd", "SGD (momentum 0.9, weight decay 0.01)"), ("nesterov", "SGD Nesterov (momentum 0.9, weight decay 0.01)"),
                      ("adam", "Adam (L2 weight decay 0.01)"), ("adamw", "AdamW (decoupled weight decay 0.1)")]:
    scenario(f"{_kind}_steps", f"{OPT_STEPS} steps of {_label} on fixed gradients: params and state after each step")(_optimizer_steps(_kind))


# ----------------------------------------------------------------------------
# EGD: one evolution cycle
# ----------------------------------------------------------------------------
EGD_CYCLE = dict(pop_size=6, elite_frac=0.5, sigma=0.1, sigma_decay=0.9, cycle=2)


def _loss_closure(model, x, y, record=None):
    def closure(params, member=None):
        if record is not None:
            record[member] = {k: _copy(v) for k, v in params.items()}  # EGD reuses candidate buffers
        return nn.softmax_cross_entropy(model.apply(params, x), y)

    return closure


def _egd_cycle(recombine, temperature):
    def fn(xp, dtype, seed):
        model = nn.mlp(MLP_SIZES, activation="tanh")
        params = _model_params(model, xp, dtype, seed)
        x = _normal(xp, dtype, (8, MLP_SIZES[0]), seed, "egd/x")
        y = _labels(xp, 8, MLP_SIZES[-1], seed, "egd/y")
        c = EGD_CYCLE
        opt = egd_mod.egd(lr=0.1, evo_interval=1, pop_size=c["pop_size"], elite_frac=c["elite_frac"], sigma=c["sigma"],
                          sigma_decay=c["sigma_decay"], recombine=recombine, temperature=temperature, seed=seed)
        state = opt.init(params)._replace(cycle=c["cycle"])
        record: dict = {}
        new_params, new_state, report = opt.evolve(state, params, _loss_closure(model, x, y, record))
        dt = getattr(xp, dtype)
        arrays = {"inputs/x": x, "inputs/y": y}
        arrays.update(_prefixed("params", params))
        history: dict = {}
        for m in range(1, c["pop_size"]):
            _append(history, {f"inputs/noise/{k}": rng.normal(tuple(p.shape), seed=seed, stream=k, member=m, generation=c["cycle"],
                                                              dtype=dtype, xp=xp) for k, p in params.items()})
            _append(history, _prefixed("outputs/mutants", record[m]))
        arrays.update(_stacked(xp, history))
        arrays.update({
            "outputs/scales": xp.asarray([report.scales[k] for k in params], dtype=dt),
            "outputs/base_loss": _scalar(xp, report.base_loss, dtype),
            "outputs/member_losses": xp.asarray(list(report.member_losses), dtype=dt),
            "outputs/elite_indices": xp.asarray(list(report.elite_indices), dtype=xp.int64),
            "outputs/elite_losses": xp.asarray(list(report.elite_losses), dtype=dt),
            "outputs/elite_weights": xp.asarray(list(report.elite_weights), dtype=dt),
            "outputs/recombined_loss": _scalar(xp, report.recombined_loss, dtype),
            "outputs/sigma_next": _scalar(xp, new_state.sigma, "float64"),
        })
        arrays.update(_prefixed("outputs/recombined", new_params))
        k = max(1, math.ceil(c["elite_frac"] * c["pop_size"]))
        hyper = {
            **c, "n_elites": k, "recombine": recombine, "temperature": temperature, "seed": seed,
            "param_order": list(params),
            "model": "egdnp.nn.mlp(sizes, activation='tanh')", "sizes": list(MLP_SIZES),
            "loss": "softmax cross-entropy, mean over the batch (inputs/x, inputs/y) for every member",
            "noise": "z_m = egdnp.rng.normal(shape, seed=seed, stream=<param key>, member=m, generation=cycle) "
                     "= inputs/noise/<key>[m - 1] (members 1..pop_size-1 stacked on axis 0)",
            "mutant": "outputs/mutants/<key>[m - 1] = base + scale * z_m, scale = sigma * max(sqrt(mean(base**2)), 1e-8) "
                      "per tensor (outputs/scales, in param_order)",
            "selection": "member 0 is the base; streaming top-k: the first k members scored are kept, later a candidate "
                         "replaces the first worst elite when strictly better; elites sorted by loss, best first",
            "recombination": "mean of the elites' params" if recombine == "mean" else
                             "sum_i w_i params_i with w = softmax(-(loss - min loss) / temperature) over the elites",
            "sigma_next": "sigma * sigma_decay",
            "data_flow": [_entry("outputs/scales", "mutation", "per-tensor mutation scales (param_order)")]
            + [_entry(f"outputs/mutants/{k}", "mutation", f"mutants of {k} (members 1..pop-1)") for k in params]
            + [_entry("outputs/base_loss", "scoring", "loss of the base (member 0)"),
               _entry("outputs/member_losses", "scoring", "every member's loss"),
               _entry("outputs/elite_indices", "selection", "elite members, best first"),
               _entry("outputs/elite_losses", "selection", "elite losses, best first"),
               _entry("outputs/elite_weights", "recombination", "recombination weights of the elites")]
            + [_entry(f"outputs/recombined/{k}", "recombination", f"recombined {k}") for k in params]
            + [_entry("outputs/recombined_loss", "recombination", "loss of the recombined params"),
               _entry("outputs/sigma_next", "sigma schedule", "sigma of the next cycle")],
        }
        return arrays, hyper

    fn.__name__ = f"egd_cycle_{recombine}"
    return fn


scenario("egd_cycle", "One EGD evolution cycle (pop 6, 3 elites, mean recombination) on an MLP: mutants, every member's loss, elites, recombined params")(
    _egd_cycle("mean", 1.0))
scenario("egd_cycle_softmax", "One EGD evolution cycle with softmax recombination (temperature 0.05): elite weights and recombined params")(
    _egd_cycle("softmax", 0.05))


# ----------------------------------------------------------------------------
# EGGROLL: one generation per convention
# ----------------------------------------------------------------------------
EGGROLL = dict(pop_size=8, rank=2, sigma=0.1, lr=0.05, batch=6)


def _raw_factors(params, plan, *, n_pairs, rank, seed, generation, xp, dtype):
    """egdnp's own raw noise of one generation (docs/noise.md addresses), stacked over pairs.

    Matrix (m, n): ``L = normal(((m + n) r,))``, ``B = L[:n r]`` (n, r), ``A~ = L[n r:]`` (m, r).
    Other tensors: ``eps = normal(shape)``.  Returns ``{key: (A~ (P, m, r), B (P, n, r)) or eps (P, *shape)}``.
    """
    factors = {}
    for key, how in plan.items():
        if how == "frozen":
            continue
        shape = tuple(int(s) for s in params[key].shape)
        # pair_normals(P, size)[k] == rng.normal((size,), member=k): one kernel launch for all pairs on NumPy
        if how == "lowrank":
            m, n = matrix_shape(shape)
            flat = pair_normals(n_pairs, (m + n) * rank, seed=seed, stream=key, generation=generation, dtype=dtype, xp=xp)
            factors[key] = (xp.reshape(flat[:, n * rank:], (n_pairs, m, rank)), xp.reshape(flat[:, : n * rank], (n_pairs, n, rank)))
        else:
            flat = pair_normals(n_pairs, math.prod(shape), seed=seed, stream=key, generation=generation, dtype=dtype, xp=xp)
            factors[key] = xp.reshape(flat, (n_pairs,) + shape)
    return factors


def _factor_arrays(factors, prefix="inputs/factors"):
    out = {}
    for key, value in factors.items():
        if isinstance(value, tuple):
            out[f"{prefix}/{key}/A"], out[f"{prefix}/{key}/B"] = value
        else:
            out[f"{prefix}/{key}/eps"] = value
    return out


def _eggroll_generation(xp, dtype, seed, convention, *, model, params, x, y, strategy, state):
    """One generation: ask (with egdnp's own raw factors passed explicitly), score, shape, tell."""
    plan = es.plan_parameters(params, convention=convention)
    gen_noise = es.noise_generation(state.generation, strategy.noise_reuse)
    n_pairs = strategy.pop_size // 2
    factors = _raw_factors(params, plan, n_pairs=n_pairs, rank=strategy.rank, seed=seed, generation=gen_noise, xp=xp, dtype=dtype)
    perts = strategy.ask(state, factors=factors)
    logits = es.perturbed_model_forward(model, state.params, x, perts)
    fitness = es.classification_fitness(logits, y)
    shaped = strategy.shape(fitness)
    ascent = es.es_gradient(shaped, perts)
    new_state, _ = strategy.tell(state, perts, fitness)
    return factors, perts, logits, fitness, shaped, ascent, new_state


CONVENTION_NOTES = {
    "egdnp": dict(layout="interleaved: member 2k = (+, pair k), 2k+1 = (-, pair k)", perturbed="every param; matrices low rank, vectors full rank",
                  fitness="centered ranks: rank/(N-1) - 0.5, ties averaged", es_gradient="g = sum_i f_hat_i E_i / (N sigma)",
                  update="egdnp.optim.sgd(lr) on the loss gradient -g: W <- W + lr g"),
    "hyperscalees-torch": dict(layout="halves: member i < N/2 = (+, pair i), member i + N/2 = (-, pair i)",
                               perturbed="only params whose name contains 'weight' with 2 or 4 dims (low rank); biases frozen",
                               fitness="(f - mean f) / (std(f, ddof=1) + 1e-8)", es_gradient="g = sum_i f_hat_i E_i / sqrt(N)",
                               update="W <- W + lr g (the port's update_params)"),
    "hyperscalees-jax": dict(layout="interleaved: member 2k = (+, pair k), 2k+1 = (-, pair k)",
                             perturbed="every param; matrices low rank, vectors full rank",
                             fitness="(f - mean f) / sqrt(var(f, ddof=0) + 1e-5)", es_gradient="g = sum_i f_hat_i E_i / sqrt(N)",
                             update="SGD(lr) on the loss gradient -g: W <- W + lr g"),
}


def _eggroll_scenario(convention):
    def fn(xp, dtype, seed):
        c = EGGROLL
        model = nn.mlp(MLP_SIZES, activation="tanh")
        params = _model_params(model, xp, dtype, seed)
        x = _normal(xp, dtype, (c["batch"], MLP_SIZES[0]), seed, "eggroll/x")
        y = _labels(xp, c["batch"], MLP_SIZES[-1], seed, "eggroll/y")
        strategy = es.Eggroll(pop_size=c["pop_size"], rank=c["rank"], sigma=c["sigma"], optimizer=optim.sgd(c["lr"]), convention=convention)
        state = strategy.init(params, seed=seed)
        factors, perts, logits, fitness, shaped, ascent, new_state = _eggroll_generation(
            xp, dtype, seed, convention, model=model, params=params, x=x, y=y, strategy=strategy, state=state)
        arrays = {"inputs/x": x, "inputs/y": y}
        arrays.update(_prefixed("params", params))
        arrays.update(_factor_arrays(factors))
        arrays.update({
            "outputs/member_pair": xp.asarray(list(perts.pair), dtype=xp.int64),
            "outputs/member_sign": xp.asarray([int(s) for s in perts.sign], dtype=xp.int64),
            "outputs/logits": logits,
            "outputs/fitness": fitness,
            "outputs/shaped_fitness": shaped,
        })
        arrays.update(_prefixed("outputs/es_gradient", ascent))
        arrays.update(_prefixed("outputs/params", new_state.params))
        hyper = {
            **c, "convention": convention, "generation": 0, "seed": seed, "antithetic": True,
            "model": "egdnp.nn.mlp(sizes, activation='tanh')", "sizes": list(MLP_SIZES),
            "perturbed_params": sorted(k for k, v in es.plan_parameters(params, convention=convention).items() if v != "frozen"),
            "factors": "inputs/factors/<key>/A = raw A~ (P, m, r), /B = B (P, n, r), /eps (P, *shape); P = N/2 pairs; "
                       "egdnp draws them as L = normal(((m+n) r,), seed, stream=key, member=pair, generation), B = L[:n r], A~ = L[n r:]",
            "perturbation": "member i (pair p, sign s): W_i = W + s (sigma/sqrt(r)) A~_p B_p^T; v_i = v + s sigma eps_p",
            "fitness_raw": "f_i = -mean_b cross_entropy(logits_i[b], y[b])",
            **CONVENTION_NOTES[convention],
            "data_flow": [_entry("outputs/member_pair", "layout", "antithetic pair of each member"),
                          _entry("outputs/member_sign", "layout", "sign of each member's perturbation"),
                          _entry("outputs/logits", "forward", "perturbed logits (pop, batch, classes)"),
                          _entry("outputs/fitness", "fitness", "raw fitness of each member"),
                          _entry("outputs/shaped_fitness", "shaping", "shaped fitness")]
            + [_entry(f"outputs/es_gradient/{k}", "ES gradient", f"ES gradient of {k}") for k in sorted(ascent)]
            + [_entry(f"outputs/params/{k}", "update", f"{k} after the update") for k in new_state.params],
        }
        return arrays, hyper

    fn.__name__ = "eggroll_" + convention.replace("-", "_")
    return fn


for _conv in ("egdnp", "hyperscalees-torch", "hyperscalees-jax"):
    scenario("eggroll_" + _conv.replace("-", "_"),
             f"One EGGROLL generation, convention {_conv!r} (MLP, pop 8, rank 2): factors, perturbed logits, raw/shaped fitness, ES gradient, updated params")(
        _eggroll_scenario(_conv))


# ----------------------------------------------------------------------------
# training trajectories
# ----------------------------------------------------------------------------
TRAIN_STEPS = 4
TRAIN_BATCH = 6


def _batch(xp, dtype, seed, step):
    x = _normal(xp, dtype, (TRAIN_BATCH, MLP_SIZES[0]), seed, "train/x", generation=step)
    y = _labels(xp, TRAIN_BATCH, MLP_SIZES[-1], seed, "train/y", generation=step)
    return x, y


TRAIN_HYPER = {
    "model": "egdnp.nn.mlp(sizes, activation='tanh')", "sizes": list(MLP_SIZES), "steps": TRAIN_STEPS, "batch": TRAIN_BATCH,
    "loss": "softmax cross-entropy, mean over the batch",
    "layout": "a leading step axis everywhere: step t (1-based) trains on inputs/x[t-1], inputs/y[t-1]; "
              "outputs/losses[t-1] is its loss before the update, outputs/params/<key>[t-1] the params after it",
}


def _train_gradient(kind):
    def fn(xp, dtype, seed):
        model = nn.mlp(MLP_SIZES, activation="tanh")
        params = _model_params(model, xp, dtype, seed)
        opt, hyper = _make_optimizer(kind)
        arrays = _prefixed("params", params)
        state = opt.init(params)
        history: dict = {}
        for t in range(1, TRAIN_STEPS + 1):
            x, y = _batch(xp, dtype, seed, t)
            loss, grads = model.loss_and_grad(params, x, y)
            params, state = opt.update(grads, state, params)
            _append(history, {"inputs/x": x, "inputs/y": y, "outputs/losses": loss})
            _append(history, _prefixed("outputs/params", params))
        arrays.update(_stacked(xp, history))
        hyper.update(TRAIN_HYPER)
        hyper["data_flow"] = [_entry("outputs/losses", "loss", "loss of the step's batch before the update", steps=1)] + [
            _entry(f"outputs/params/{k}", "update", f"{k} after the step", steps=1) for k in params]
        return arrays, hyper

    fn.__name__ = f"train_{kind}"
    return fn


for _kind in OPTIMIZERS:
    scenario(f"train_{_kind}", f"{TRAIN_STEPS}-step training trajectory of an MLP with {_kind}: loss per step, params after every step")(_train_gradient(_kind))


EGD_TRAIN = dict(lr=0.1, momentum=0.9, nesterov=True, evo_interval=2, pop_size=4, elite_frac=0.5, sigma=0.05, sigma_decay=0.9)


@scenario("train_egd", f"{TRAIN_STEPS}-step EGD trajectory (Nesterov SGD, evolution every 2 steps, pop 4): losses, cycle reports, params after every step")
def train_egd(xp, dtype, seed):
    """EGD training: ``update(grads, state, params, closure)`` with the closure scoring the step's own batch."""
    model = nn.mlp(MLP_SIZES, activation="tanh")
    params = _model_params(model, xp, dtype, seed)
    opt = egd_mod.egd(**EGD_TRAIN, seed=seed)
    state = opt.init(params)
    arrays = _prefixed("params", params)
    dt = getattr(xp, dtype)
    history: dict = {}
    for t in range(1, TRAIN_STEPS + 1):
        x, y = _batch(xp, dtype, seed, t)
        loss, grads = model.loss_and_grad(params, x, y)
        cycle = state.cycle
        params, state, report = opt.update(grads, state, params, closure=_loss_closure(model, x, y))
        _append(history, {"inputs/x": x, "inputs/y": y, "outputs/losses": loss})
        _append(history, _prefixed("outputs/params", params))
        if report is not None:
            noise = {f"inputs/noise/{k}": xp.stack([rng.normal(tuple(p.shape), seed=seed, stream=k, member=m, generation=cycle,
                                                               dtype=dtype, xp=xp) for m in range(1, EGD_TRAIN["pop_size"])])
                     for k, p in params.items()}
            _append(history, noise)
            _append(history, {"outputs/cycles/member_losses": xp.asarray(list(report.member_losses), dtype=dt),
                              "outputs/cycles/elite_indices": xp.asarray(list(report.elite_indices), dtype=xp.int64),
                              "outputs/cycles/recombined_loss": _scalar(xp, report.recombined_loss, dtype)})
    arrays.update(_stacked(xp, history))
    hyper = {
        "optimizer": "egdnp.optim.egd.egd", **EGD_TRAIN, "seed": seed, **TRAIN_HYPER,
        "order": "each step: SGD update with the batch's gradients, then (every evo_interval-th step) an evolution "
                 "cycle scored on the same batch; momentum buffers are zeroed after a cycle",
        "noise": "cycle c (0-based) uses inputs/noise/<key>[c, m - 1] = normal(shape, seed, stream=key, member=m, generation=c)",
        "cycles": "outputs/cycles/*[c] report cycle c (after step (c + 1) * evo_interval)",
        "data_flow": [_entry("outputs/losses", "loss", "loss of the step's batch before the update", steps=1),
                      _entry("outputs/cycles/member_losses", "evolution cycle", "every member's loss in the cycle",
                             steps=EGD_TRAIN["evo_interval"]),
                      _entry("outputs/cycles/elite_indices", "evolution cycle", "elite members, best first", steps=EGD_TRAIN["evo_interval"]),
                      _entry("outputs/cycles/recombined_loss", "evolution cycle", "loss of the recombined params",
                             steps=EGD_TRAIN["evo_interval"])]
        + [_entry(f"outputs/params/{k}", "update", f"{k} after the step", steps=1) for k in params],
    }
    return arrays, hyper


EGGROLL_TRAIN = dict(pop_size=8, rank=1, sigma=0.1, lr=0.1)


@scenario("train_eggroll", f"{TRAIN_STEPS}-generation EGGROLL trajectory (convention 'egdnp', pop 8, rank 1, SGD): factors per generation, fitness, params")
def train_eggroll(xp, dtype, seed):
    """EGGROLL training, egdnp convention; generation g (0-based) uses batch ``inputs/x[g]``."""
    model = nn.mlp(MLP_SIZES, activation="tanh")
    params = _model_params(model, xp, dtype, seed)
    c = EGGROLL_TRAIN
    strategy = es.Eggroll(pop_size=c["pop_size"], rank=c["rank"], sigma=c["sigma"], optimizer=optim.sgd(c["lr"]), convention="egdnp")
    state = strategy.init(params, seed=seed)
    arrays = _prefixed("params", params)
    history: dict = {}
    for t in range(1, TRAIN_STEPS + 1):
        x, y = _batch(xp, dtype, seed, t)
        factors, _, _, fitness, _, _, state = _eggroll_generation(xp, dtype, seed, "egdnp", model=model, params=state.params,
                                                                  x=x, y=y, strategy=strategy, state=state)
        _append(history, {"inputs/x": x, "inputs/y": y, "outputs/fitness": fitness})
        _append(history, _factor_arrays(factors))
        _append(history, _prefixed("outputs/params", state.params))
    arrays.update(_stacked(xp, history))
    hyper = {"convention": "egdnp", **c, "seed": seed, **TRAIN_HYPER, **CONVENTION_NOTES["egdnp"],
             "noise": "step t (generation t-1) uses inputs/factors/<key>/{A,B,eps}[t-1] (noise addresses of generation t-1)",
             "data_flow": [_entry("outputs/fitness", "fitness", "raw fitness of each member", steps=1)]
             + [_entry(f"outputs/params/{k}", "update", f"{k} after the generation", steps=1) for k in state.params]}
    return arrays, hyper
