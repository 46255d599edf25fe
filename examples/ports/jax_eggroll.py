"""A JAX port of one EGGROLL generation on an MLP, checked against egdnp.

Written the way the HyperscaleES JAX noiser works: a pure forward for ONE
population member (``thread_id``) whose matrix products go through ``do_mm``
(``x W^T + s (x B) A^T``, never forming ``W + A B^T``) and whose biases
through ``get_noisy_standard``, ``jax.vmap`` over the members,
``convert_fitnesses`` and ``do_update``, all under ``jax.jit``.  The raw
factors come from the reference bundle (``inputs/factors/...``) instead of
``jax.random``, so the port sees exactly egdnp's perturbations.

It handles the bundles of ``eggroll_hyperscalees_jax`` (this port's native
convention), ``eggroll_egdnp`` and ``eggroll_hyperscalees_torch``::

    python -m egdnp.reference generate eggroll_hyperscalees_jax --out /tmp/ref --dtype float64
    python examples/ports/jax_eggroll.py /tmp/ref /tmp/jax_out.npz
    python -m egdnp.reference compare /tmp/ref /tmp/jax_out.npz --rtol 1e-10 --atol 1e-12

float64 bundles need ``jax_enable_x64`` (set below); float32 inputs stay float32.
"""

from __future__ import annotations

import argparse
import math
from functools import partial

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from egdnp.reference import dump_arrays, load_bundle  # noqa: E402

CONVENTIONS = {
    "hyperscalees-jax": dict(layout="interleaved", vectors=True, fitness="zscore_var_eps", grad_scale="sqrt_n"),
    "hyperscalees-torch": dict(layout="halves", vectors=False, fitness="zscore_ddof1", grad_scale="sqrt_n"),
    "egdnp": dict(layout="interleaved", vectors=True, fitness="centered_ranks", grad_scale="n_sigma"),
}
LAYERS = ("fc1", "fc2")


def member_layout(thread_id, pop_size: int, layout: str):
    """(pair, sign) of a member: interleaved pairs (2k, 2k+1) or halves (i, i + N/2)."""
    if layout == "halves":
        half = pop_size // 2
        return thread_id % half, jnp.where(thread_id < half, 1, -1)
    return thread_id // 2, jnp.where(thread_id % 2 == 0, 1, -1)


def do_mm(x, weight, a, b, sign):
    """``x (W + s A B^T)^T`` as ``x W^T + s (x B) A^T``; x (batch, n), A (m, r), B (n, r)."""
    return x @ weight.T + sign * ((x @ b) @ a.T)


def get_noisy_standard(v, eps, sign):
    return v + sign * eps


def forward_member(params, noise, x, thread_id, *, pop_size, sigma, rank, layout):
    """The MLP ``fc1 -> tanh -> fc2`` as seen by one member; x (batch, n_in) -> (batch, n_out)."""
    pair, sign = member_layout(thread_id, pop_size, layout)
    sign = sign.astype(x.dtype)
    h = x
    for i, name in enumerate(LAYERS):
        w, b = params[name + ".weight"], params[name + ".bias"]
        if name + ".weight" in noise:
            a = noise[name + ".weight"]["A"][pair] * (sigma / math.sqrt(rank))
            h_out = do_mm(h, w, a, noise[name + ".weight"]["B"][pair], sign)
        else:
            h_out = h @ w.T
        if name + ".bias" in noise:
            b = get_noisy_standard(b, sigma * noise[name + ".bias"]["eps"][pair], sign)
        h = h_out + b
        if i < len(LAYERS) - 1:
            h = jnp.tanh(h)
    return h


def centered_ranks(f):
    n = f.shape[0]
    ranks = jnp.zeros_like(f).at[jnp.argsort(f, stable=True)].set(jnp.arange(n, dtype=f.dtype))
    tied = (f[:, None] == f[None, :]).astype(f.dtype)
    return (tied @ ranks) / tied.sum(axis=1) / (n - 1) - 0.5


def convert_fitnesses(f, method):
    if method == "zscore_var_eps":
        return (f - f.mean()) / jnp.sqrt(f.var() + 1e-5)
    if method == "zscore_ddof1":
        return (f - f.mean()) / (f.std(ddof=1) + 1e-8)
    return centered_ranks(f)


def do_update(params, noise, f_hat, *, pop_size, sigma, rank, lr, layout, grad_scale):
    """ES ascent direction per perturbed parameter and an SGD step on the loss gradient ``-g``."""
    pair, sign = member_layout(jnp.arange(pop_size), pop_size, layout)
    w = f_hat * sign.astype(f_hat.dtype)  # signed shaped fitness of every member
    scale = 1.0 / math.sqrt(pop_size) if grad_scale == "sqrt_n" else 1.0 / (pop_size * sigma)
    grads = {}
    for key, item in noise.items():
        if "A" in item:  # sum_i w_i A_i B_i^T in one contraction over members and rank
            a = item["A"][pair] * (sigma / math.sqrt(rank))
            grads[key] = scale * jnp.einsum("i,imr,inr->mn", w, a, item["B"][pair])
        else:
            grads[key] = scale * jnp.einsum("i,im->m", w, sigma * item["eps"][pair])
    new_params = {k: (p - lr * (-grads[k]) if k in grads else p) for k, p in params.items()}
    return new_params, grads


def classification_fitness(logits, labels):
    """Negative mean cross-entropy per member; logits (pop, batch, C) -> (pop,)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[None, :, None], axis=-1)[..., 0]
    return -nll.mean(axis=-1)


@partial(jax.jit, static_argnames=("pop_size", "sigma", "rank", "lr", "convention"))
def generation(params, noise, x, y, *, pop_size, sigma, rank, lr, convention):
    conv = CONVENTIONS[convention]
    forward = partial(forward_member, pop_size=pop_size, sigma=sigma, rank=rank, layout=conv["layout"])
    logits = jax.vmap(forward, in_axes=(None, None, None, 0))(params, noise, x, jnp.arange(pop_size))
    fitness = classification_fitness(logits, y)
    f_hat = convert_fitnesses(fitness, conv["fitness"])
    new_params, grads = do_update(params, noise, f_hat, pop_size=pop_size, sigma=sigma, rank=rank, lr=lr,
                                  layout=conv["layout"], grad_scale=conv["grad_scale"])
    return logits, fitness, f_hat, grads, new_params


def run(bundle_dir, out_path):
    bundle = load_bundle(bundle_dir)
    hp = bundle.params
    conv = CONVENTIONS[hp["convention"]]
    params = {k[len("params/"):]: jnp.asarray(v) for k, v in bundle.arrays.items() if k.startswith("params/")}
    noise: dict = {}
    for k, v in bundle.arrays.items():
        if k.startswith("inputs/factors/"):
            key, part = k[len("inputs/factors/"):].rsplit("/", 1)
            noise.setdefault(key, {})[part] = jnp.asarray(v)
    if not conv["vectors"]:
        noise = {k: v for k, v in noise.items() if "A" in v}
    x, y = jnp.asarray(bundle["inputs/x"]), jnp.asarray(bundle["inputs/y"])

    pop = hp["pop_size"]
    logits, fitness, f_hat, grads, new_params = generation(params, noise, x, y, pop_size=pop, sigma=hp["sigma"],
                                                           rank=hp["rank"], lr=hp["lr"], convention=hp["convention"])
    pair, sign = member_layout(jnp.arange(pop), pop, conv["layout"])
    outputs = {
        "outputs/member_pair": pair.astype(jnp.int64),
        "outputs/member_sign": sign.astype(jnp.int64),
        "outputs/logits": logits,
        "outputs/fitness": fitness,
        "outputs/shaped_fitness": f_hat,
        **{f"outputs/es_gradient/{k}": g for k, g in grads.items()},
        **{f"outputs/params/{k}": p for k, p in new_params.items()},
    }
    return dump_arrays(out_path, outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="scenarios: eggroll_hyperscalees_jax, eggroll_egdnp, eggroll_hyperscalees_torch; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate SCENARIO --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
