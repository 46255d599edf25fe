"""A JAX port of one EGD evolution cycle, checked against egdnp.

A JAX user scores the whole (small) population at once: build every mutant
with ``jax.tree_util.tree_map``, ``jax.vmap`` the loss over the members, take
the ``k`` smallest losses with a stable ``argsort`` (the same elites as
EvoSGD's streaming top-k, whose base starts as an elite and whose candidates
replace the worst elite only when strictly better), recombine with mean or
softmax weights, and score the result -- all under ``jax.jit``.  The unit
noise of the mutants comes from the bundle (``inputs/noise/<key>``, members 1..pop-1 stacked).

    python -m egdnp.reference generate egd_cycle --out /tmp/egd --dtype float64
    python examples/ports/jax_egd_cycle.py /tmp/egd /tmp/jax_egd.npz
    python -m egdnp.reference compare /tmp/egd /tmp/jax_egd.npz --rtol 1e-10 --atol 1e-12

Works for ``egd_cycle`` (mean) and ``egd_cycle_softmax``.
"""

from __future__ import annotations

import argparse
import math
from functools import partial

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from egdnp.reference import dump_arrays, load_bundle  # noqa: E402


def mlp_loss(params, x, y):
    """``fc1 -> tanh -> fc2``, mean cross-entropy; params is a dict of arrays."""
    h = jnp.tanh(x @ params["fc1.weight"].T + params["fc1.bias"])
    logits = h @ params["fc2.weight"].T + params["fc2.bias"]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=-1))


@partial(jax.jit, static_argnames=("n_elites", "sigma", "recombine", "temperature"))
def evolution_cycle(base, noise, x, y, *, n_elites, sigma, recombine, temperature):
    """One cycle.  ``noise[key]`` stacks the unit noise of members 1..pop-1: shape (pop - 1, *param shape)."""
    scales = jax.tree_util.tree_map(lambda p: sigma * jnp.maximum(jnp.sqrt(jnp.mean(p * p)), 1e-8), base)
    mutants = jax.tree_util.tree_map(lambda p, z, s: p[None] + s * z, base, noise, scales)
    population = jax.tree_util.tree_map(lambda p, m: jnp.concatenate([p[None], m], axis=0), base, mutants)  # member 0 = base
    losses = jax.vmap(mlp_loss, in_axes=(0, None, None))(population, x, y)
    elite_indices = jnp.argsort(losses, stable=True)[:n_elites]
    elite_losses = losses[elite_indices]
    if recombine == "softmax":
        weights = jax.nn.softmax(-elite_losses / temperature)
        recombined = jax.tree_util.tree_map(lambda pop: jnp.tensordot(weights, pop[elite_indices], axes=1), population)
    else:
        weights = jnp.full((n_elites,), 1.0 / n_elites, dtype=losses.dtype)
        recombined = jax.tree_util.tree_map(lambda pop: jnp.mean(pop[elite_indices], axis=0), population)
    return dict(scales=scales, mutants=mutants, losses=losses, elite_indices=elite_indices, elite_losses=elite_losses,
                elite_weights=weights, recombined=recombined, recombined_loss=mlp_loss(recombined, x, y))


def run(bundle_dir, out_path):
    bundle = load_bundle(bundle_dir)
    hp = bundle.params
    base = {k[len("params/"):]: jnp.asarray(v) for k, v in bundle.arrays.items() if k.startswith("params/")}
    noise = {key: jnp.asarray(bundle[f"inputs/noise/{key}"]) for key in base}
    x, y = jnp.asarray(bundle["inputs/x"]), jnp.asarray(bundle["inputs/y"])
    n_elites = max(1, math.ceil(hp["elite_frac"] * hp["pop_size"]))

    r = evolution_cycle(base, noise, x, y, n_elites=n_elites, sigma=hp["sigma"], recombine=hp["recombine"],
                        temperature=hp["temperature"])
    outputs = {
        "outputs/scales": jnp.stack([r["scales"][k] for k in hp["param_order"]]),
        "outputs/base_loss": r["losses"][0],
        "outputs/member_losses": r["losses"],
        "outputs/elite_indices": r["elite_indices"].astype(jnp.int64),
        "outputs/elite_losses": r["elite_losses"],
        "outputs/elite_weights": r["elite_weights"],
        "outputs/recombined_loss": r["recombined_loss"],
        "outputs/sigma_next": jnp.asarray(hp["sigma"] * hp["sigma_decay"], dtype=jnp.float64),
        **{f"outputs/recombined/{k}": v for k, v in r["recombined"].items()},
        **{f"outputs/mutants/{k}": v for k, v in r["mutants"].items()},
    }
    return dump_arrays(out_path, outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="scenarios: egd_cycle, egd_cycle_softmax; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate SCENARIO --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
