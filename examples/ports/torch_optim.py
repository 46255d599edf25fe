"""``torch.optim`` against egdnp's optimiser steps: SGD (momentum, Nesterov), Adam, AdamW.

A PyTorch user does not port these: egdnp's SGD/Adam/AdamW follow
``torch.optim`` semantics, so the port *is* ``torch.optim`` -- built from the
bundle's hyper-parameters, fed the bundle's gradients (``p.grad =
inputs/grads/<key>[t - 1]``), ``opt.step()`` three times, and the state read
back from ``opt.state[p]``: ``momentum_buffer`` is egdnp's
``outputs/state/momentum/<key>``, ``exp_avg`` / ``exp_avg_sq`` its
``outputs/state/exp_avg[_sq]/<key>``.

    python -m egdnp.reference generate adam_steps --out /tmp/adam --dtype float64
    python examples/ports/torch_optim.py /tmp/adam /tmp/torch_adam.npz
    python -m egdnp.reference compare /tmp/adam /tmp/torch_adam.npz      # tolerances from the bundle's dtype

Works for ``sgd_steps``, ``nesterov_steps``, ``adam_steps`` and ``adamw_steps``.
"""

from __future__ import annotations

import argparse

import torch

from egdnp.reference import dump_arrays, load_bundle

# egdnp's state buffer name -> torch.optim's per-parameter state key
STATE_KEYS = {"momentum": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


def make_optimizer(params: list, hp: dict) -> torch.optim.Optimizer:
    """The torch optimiser a bundle's hyper-parameters describe (``hp["semantics"]``, e.g. ``"torch.optim.SGD"``)."""
    kind = hp["semantics"].rsplit(".", 1)[1]
    if kind == "SGD":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"], nesterov=hp["nesterov"],
                               dampening=hp["dampening"], weight_decay=hp["weight_decay"])
    cls = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}[kind]
    return cls(params, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"], weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"])


def run(bundle_dir, out_path):
    bundle = load_bundle(bundle_dir)
    hp = bundle.hyperparameters
    params = {k[len("params/"):]: torch.tensor(v) for k, v in bundle.arrays.items() if k.startswith("params/")}
    grads = {k: torch.from_numpy(bundle[f"inputs/grads/{k}"]) for k in params}
    opt = make_optimizer(list(params.values()), hp)
    history: dict = {}
    for t in range(hp["steps"]):
        for k, p in params.items():
            p.grad = grads[k][t].clone()
        opt.step()
        for k, p in params.items():
            history.setdefault(f"outputs/params/{k}", []).append(p.detach().clone())
            for ours, theirs in STATE_KEYS.items():
                if theirs in opt.state[p]:
                    history.setdefault(f"outputs/state/{ours}/{k}", []).append(opt.state[p][theirs].clone())
    return dump_arrays(out_path, {name: torch.stack(rows) for name, rows in history.items()})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="scenarios: sgd_steps, nesterov_steps, adam_steps, adamw_steps; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate adam_steps --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
