"""An optax port of egdnp's optimiser steps: SGD (momentum, Nesterov), Adam, AdamW.

egdnp's optimisers follow ``torch.optim``; in optax the same updates are
chains of gradient transformations:

* ``torch.optim.SGD(lr, momentum, nesterov, weight_decay)`` (dampening 0) is
  ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum, nesterov))``:
  weight decay enters the gradient before the momentum trace, and optax's trace
  ``t = g + momentum * t`` starting from zero is torch's ``momentum_buffer``;
* ``torch.optim.Adam`` (L2 weight decay) is ``chain(add_decayed_weights(wd), optax.adam(...))``;
  optax's ``mu`` / ``nu`` are torch's ``exp_avg`` / ``exp_avg_sq``;
* ``torch.optim.AdamW`` is ``optax.adamw(lr, b1, b2, eps, weight_decay)`` (decoupled decay).

The steps run under ``jax.jit``; the bundle's gradients ``inputs/grads/<key>[t - 1]`` feed step t.

    python -m egdnp.reference generate nesterov_steps --out /tmp/nag --dtype float64
    python examples/ports/optax_optim.py /tmp/nag /tmp/optax_nag.npz
    python -m egdnp.reference compare /tmp/nag /tmp/optax_nag.npz      # tolerances from the bundle's dtype

Works for ``sgd_steps``, ``nesterov_steps``, ``adam_steps`` and ``adamw_steps``.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from egdnp.reference import dump_arrays, load_bundle  # noqa: E402


def make_optimizer(hp: dict) -> optax.GradientTransformation:
    """The optax chain equivalent to the bundle's torch.optim optimiser (``hp["semantics"]``)."""
    kind = hp["semantics"].rsplit(".", 1)[1]
    if kind == "SGD":
        assert hp["dampening"] == 0.0, "optax.sgd has no dampening"
        return optax.chain(optax.add_decayed_weights(hp["weight_decay"]),
                           optax.sgd(hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"]))
    b1, b2 = hp["betas"]
    if kind == "AdamW":
        return optax.adamw(hp["lr"], b1=b1, b2=b2, eps=hp["eps"], weight_decay=hp["weight_decay"])
    return optax.chain(optax.add_decayed_weights(hp["weight_decay"]), optax.adam(hp["lr"], b1=b1, b2=b2, eps=hp["eps"]))


def buffers(opt_state) -> dict:
    """egdnp's state names -> the dicts of arrays inside an optax state (trace, or Adam's mu and nu)."""
    found = {}
    for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: isinstance(s, (optax.TraceState, optax.ScaleByAdamState))):
        if isinstance(leaf, optax.TraceState):
            found["momentum"] = leaf.trace
        elif isinstance(leaf, optax.ScaleByAdamState):
            found["exp_avg"], found["exp_avg_sq"] = leaf.mu, leaf.nu
    return found


def run(bundle_dir, out_path):
    bundle = load_bundle(bundle_dir)
    hp = bundle.hyperparameters
    params = {k[len("params/"):]: jnp.asarray(v) for k, v in bundle.arrays.items() if k.startswith("params/")}
    grads = {k: jnp.asarray(bundle[f"inputs/grads/{k}"]) for k in params}
    opt = make_optimizer(hp)

    @jax.jit
    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    history: dict = {}
    for t in range(hp["steps"]):
        params, state = step(params, state, {k: v[t] for k, v in grads.items()})
        for k, p in params.items():
            history.setdefault(f"outputs/params/{k}", []).append(p)
        for name, table in buffers(state).items():
            for k, v in table.items():
                history.setdefault(f"outputs/state/{name}/{k}", []).append(v)
    return dump_arrays(out_path, {name: jnp.stack(rows) for name, rows in history.items()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="scenarios: sgd_steps, nesterov_steps, adam_steps, adamw_steps; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate adam_steps --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
