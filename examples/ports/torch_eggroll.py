"""A PyTorch port of one EGGROLL generation on an MLP, checked against egdnp.

Written the way the HyperscaleES PyTorch port is used (``get_weight_shapes``,
``generate_perturbations``, ``perturbed_forward``, ``normalize_fitnesses``,
``compute_gradients``, ``update_params``), with one difference: the raw noise
is read from the reference bundle (``inputs/factors/...``) instead of drawn
from a ``torch.Generator``, so the port sees exactly egdnp's perturbations.

It handles the bundles of the scenarios ``eggroll_hyperscalees_torch`` (this
port's native convention), ``eggroll_egdnp`` and ``eggroll_hyperscalees_jax``::

    python -m egdnp.reference generate eggroll_hyperscalees_torch --out /tmp/ref --dtype float64
    python examples/ports/torch_eggroll.py /tmp/ref /tmp/torch_out.npz
    python -m egdnp.reference compare /tmp/ref /tmp/torch_out.npz --rtol 1e-10 --atol 1e-12

The three conventions differ only in the table below (see
``egdnp/es/conventions.py``).

``--own-noise`` ignores the bundle's factors and regenerates them from their
noise addresses with the PyTorch Philox of ``torch_noise.py`` (docs/noise.md):
the way a port runs without egdnp at hand.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from egdnp.reference import dump_arrays, load_bundle

CONVENTIONS = {
    # layout: where the antithetic partner of member i sits; vectors: are biases perturbed (full rank)?
    "hyperscalees-torch": dict(layout="halves", vectors=False, fitness="zscore_ddof1", grad_scale="sqrt_n"),
    "hyperscalees-jax": dict(layout="interleaved", vectors=True, fitness="zscore_var_eps", grad_scale="sqrt_n"),
    "egdnp": dict(layout="interleaved", vectors=True, fitness="centered_ranks", grad_scale="n_sigma"),
}


def member_layout(pop_size: int, layout: str):
    """Pair index and antithetic sign of every member, as int64 tensors of shape (pop,)."""
    i = torch.arange(pop_size)
    if layout == "halves":  # member i and i + N/2 share noise, with signs + and -
        return i % (pop_size // 2), torch.where(i < pop_size // 2, 1, -1)
    return i // 2, torch.where(i % 2 == 0, 1, -1)  # interleaved: (2k, 2k+1)


def get_weight_shapes(params: dict, vectors: bool) -> dict:
    """The perturbed parameters: 2-D weights (low rank) and, if ``vectors``, 1-D ones (full rank)."""
    shapes = {}
    for key, p in params.items():
        if p.dim() == 2 and "weight" in key:
            shapes[key] = tuple(p.shape)
        elif p.dim() == 1 and vectors:
            shapes[key] = tuple(p.shape)
    return shapes


def generate_perturbations(shapes: dict, factors: dict, pop_size: int, rank: int, sigma: float, layout: str) -> dict:
    """Per-member perturbations from raw pair factors.

    Low rank (the port's ``U``/``V``): member ``i`` with pair ``p``, sign ``s``
    perturbs ``W`` by ``U_i^T V_i`` with ``U_i = s sigma/sqrt(r) A~_p^T`` (r, m)
    and ``V_i = B_p^T`` (r, n).  Vectors: ``eps_i = s sigma eps_p``.
    """
    pair, sign = member_layout(pop_size, layout)
    perts = {}
    for key, shape in shapes.items():
        if len(shape) == 2:
            a_raw, b = factors[key + "/A"], factors[key + "/B"]  # (P, m, r), (P, n, r)
            s = sign.to(a_raw.dtype).view(-1, 1, 1)
            perts[key] = {"U": s * (sigma / math.sqrt(rank)) * a_raw[pair].transpose(1, 2), "V": b[pair].transpose(1, 2)}
        else:
            eps = factors[key + "/eps"]  # (P, m)
            perts[key] = {"eps": sign.to(eps.dtype).view(-1, 1) * sigma * eps[pair]}
    return perts


def perturbed_forward(x, weight, bias, perts: dict, key: str, bias_key: str | None = None):
    """``x_i W_i^T + b_i`` for every member without forming ``W_i``; x (pop, batch, in) -> (pop, batch, out)."""
    out = x @ weight.T
    if key in perts:
        u, v = perts[key]["U"], perts[key]["V"]
        out = out + torch.bmm(torch.bmm(x, v.transpose(1, 2)), u)  # (x V^T) U: rank-r correction
    if bias is not None:
        out = out + bias
        if bias_key in perts:
            out = out + perts[bias_key]["eps"][:, None, :]
    return out


def forward_perturbed(x, params, perts):
    """The MLP ``fc1 -> tanh -> fc2`` for every member."""
    h = torch.tanh(perturbed_forward(x, params["fc1.weight"], params["fc1.bias"], perts, "fc1.weight", "fc1.bias"))
    return perturbed_forward(h, params["fc2.weight"], params["fc2.bias"], perts, "fc2.weight", "fc2.bias")


def compute_classification_fitness(logits, labels):
    """Negative mean cross-entropy per member (higher is better); logits (pop, batch, C) -> (pop,)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    labels_exp = labels.unsqueeze(0).expand(logits.shape[0], -1)
    nll = -torch.gather(log_probs, 2, labels_exp.unsqueeze(-1)).squeeze(-1)
    return -nll.mean(dim=-1)


def centered_ranks(f):
    """``rank / (N - 1) - 0.5`` with tied values given the mean of their ranks."""
    n = f.numel()
    ranks = torch.empty_like(f)
    ranks[torch.argsort(f, stable=True)] = torch.arange(n, dtype=f.dtype)
    tied = (f[:, None] == f[None, :]).to(f.dtype)
    ranks = (tied @ ranks) / tied.sum(dim=1)
    return ranks / (n - 1) - 0.5


def normalize_fitnesses(f, method: str):
    if method == "zscore_ddof1":
        return (f - f.mean()) / (f.std() + 1e-8)  # torch.std is the sample std (ddof=1)
    if method == "zscore_var_eps":
        return (f - f.mean()) / torch.sqrt(f.var(unbiased=False) + 1e-5)
    return centered_ranks(f)


def compute_gradients(f_hat, perts: dict, pop_size: int, scale: float) -> dict:
    """Ascent direction ``g = scale * sum_i f_hat_i E_i`` per perturbed parameter."""
    grads = {}
    for key, p in perts.items():
        if "U" in p:  # sum_i f_i U_i^T V_i: contract members and rank in one einsum, never (pop, m, n)
            grads[key] = scale * torch.einsum("i,irm,irn->mn", f_hat, p["U"], p["V"])
        else:
            grads[key] = scale * torch.einsum("i,im->m", f_hat, p["eps"])
    return grads


@torch.no_grad()
def update_params(params: dict, grads: dict, lr: float) -> None:
    """In place, as the port does: ``W <- W + lr g`` (ascend the fitness)."""
    for key, g in grads.items():
        params[key].add_(g, alpha=lr)


def own_factors(shapes: dict, *, n_pairs: int, rank: int, seed: int, generation: int, dtype) -> dict:
    """egdnp's raw factors regenerated from their addresses (stream = param name, member = pair).

    ``L = normal(((m + n) r,))``, ``B = L[:n r]`` as (n, r), ``A~ = L[n r:]`` as (m, r); vectors ``eps = normal(shape)``.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from torch_noise import normal

    factors = {}
    for key, shape in shapes.items():
        if len(shape) == 2:
            (m, n), parts = shape, {"A": [], "B": []}
            for k in range(n_pairs):
                flat = normal(((m + n) * rank,), seed=seed, stream=key, member=k, generation=generation, dtype=dtype)
                parts["B"].append(flat[: n * rank].reshape(n, rank))
                parts["A"].append(flat[n * rank:].reshape(m, rank))
            factors[key + "/A"], factors[key + "/B"] = torch.stack(parts["A"]), torch.stack(parts["B"])
        else:
            factors[key + "/eps"] = torch.stack([normal(shape, seed=seed, stream=key, member=k, generation=generation, dtype=dtype)
                                                 for k in range(n_pairs)])
    return factors


def run(bundle_dir, out_path, *, own_noise: bool = False):
    bundle = load_bundle(bundle_dir)
    hp = bundle.params
    conv = CONVENTIONS[hp["convention"]]
    pop, rank, sigma, lr = hp["pop_size"], hp["rank"], hp["sigma"], hp["lr"]
    arrays = {k: torch.from_numpy(v) for k, v in bundle.arrays.items()}
    params = {k[len("params/"):]: v.clone() for k, v in arrays.items() if k.startswith("params/")}
    x, y = arrays["inputs/x"], arrays["inputs/y"]

    shapes = get_weight_shapes(params, conv["vectors"])
    if own_noise:
        factors = own_factors(shapes, n_pairs=pop // 2, rank=rank, seed=hp["seed"], generation=hp["generation"], dtype=x.dtype)
    else:
        factors = {k[len("inputs/factors/"):]: v for k, v in arrays.items() if k.startswith("inputs/factors/")}
    perts = generate_perturbations(shapes, factors, pop, rank, sigma, conv["layout"])
    x_pop = x.unsqueeze(0).expand(pop, -1, -1)
    logits = forward_perturbed(x_pop, params, perts)
    fitness = compute_classification_fitness(logits, y)
    f_hat = normalize_fitnesses(fitness, conv["fitness"])
    scale = 1.0 / math.sqrt(pop) if conv["grad_scale"] == "sqrt_n" else 1.0 / (pop * sigma)
    grads = compute_gradients(f_hat, perts, pop, scale)
    update_params(params, grads, lr)

    pair, sign = member_layout(pop, conv["layout"])
    outputs = {
        "outputs/member_pair": pair,
        "outputs/member_sign": sign,
        "outputs/logits": logits,
        "outputs/fitness": fitness,
        "outputs/shaped_fitness": f_hat,
        **{f"outputs/es_gradient/{k}": g for k, g in grads.items()},
        **{f"outputs/params/{k}": p for k, p in params.items()},
    }
    return dump_arrays(out_path, outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="scenarios: eggroll_hyperscalees_torch, eggroll_egdnp, eggroll_hyperscalees_jax; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate SCENARIO --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    parser.add_argument("--own-noise", action="store_true",
                        help="regenerate the factors from their addresses (torch_noise.py) instead of reading them")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out, own_noise=args.own_noise)}")
