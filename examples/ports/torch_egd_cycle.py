"""A PyTorch port of one EGD evolution cycle, checked against egdnp.

Written like the EvoSGD optimiser of the specification (``seeds/egd_evosgd_spec.md``):
score the base, stream ``pop_size - 1`` mutants through a top-k of elites,
recombine (mean or softmax), score the result.  The only change: the unit
noise of each mutant comes from the bundle (``inputs/noise/<key>[m - 1]``)
instead of ``torch.randn_like``, so the port sees exactly egdnp's mutations.

    python -m egdnp.reference generate egd_cycle --out /tmp/egd --dtype float64
    python examples/ports/torch_egd_cycle.py /tmp/egd /tmp/torch_egd.npz
    python -m egdnp.reference compare /tmp/egd /tmp/torch_egd.npz --rtol 1e-10 --atol 1e-12

Works for the scenarios ``egd_cycle`` (mean) and ``egd_cycle_softmax``.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from egdnp.reference import dump_arrays, load_bundle


def mlp_loss(params: dict, x, y):
    """The closure: ``fc1 -> tanh -> fc2``, mean cross-entropy on the cycle's batch (forward only)."""
    h = torch.tanh(F.linear(x, params["fc1.weight"], params["fc1.bias"]))
    return F.cross_entropy(F.linear(h, params["fc2.weight"], params["fc2.bias"]), y)


def param_scale(p):
    """RMS of a tensor, clamped at 1e-8 (the spec's param_scale)."""
    return torch.clamp(torch.sqrt(torch.mean(p.pow(2))), min=1e-8)


@torch.no_grad()
def evolution_cycle(base: dict, closure, noise: dict, *, pop_size: int, elite_frac: float, sigma: float,
                    recombine: str, temperature: float):
    """One cycle; ``noise[m][key]`` is the unit noise of member m (1..pop_size-1)."""
    scales = {k: param_scale(p) * sigma for k, p in base.items()}
    base_loss = float(closure(base))
    member_losses = [base_loss]
    mutants = {}
    k = max(1, int(math.ceil(elite_frac * pop_size)))
    elites = [(base_loss, 0, base)]  # (loss, member, params); the base starts as an elite
    for m in range(1, pop_size):
        cand = {key: p + noise[m][key] * scales[key] for key, p in base.items()}
        mutants[m] = cand
        loss = float(closure(cand))
        member_losses.append(loss)
        if len(elites) < k:
            elites.append((loss, m, cand))
        else:
            worst = max(range(len(elites)), key=lambda i: elites[i][0])
            if loss < elites[worst][0]:
                elites[worst] = (loss, m, cand)
    elites.sort(key=lambda e: e[0])
    elite_losses = torch.tensor([e[0] for e in elites], dtype=torch.float64)
    if recombine == "softmax" and len(elites) > 1:
        weights = torch.softmax(-elite_losses / temperature, dim=0)
    else:
        weights = torch.full((len(elites),), 1.0 / len(elites), dtype=torch.float64)
    recombined = {}
    for key in base:
        stacked = torch.stack([e[2][key] for e in elites], dim=0)
        if recombine == "softmax":
            w = weights.to(stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
            recombined[key] = (stacked * w).sum(dim=0)
        else:
            recombined[key] = stacked.mean(dim=0)
    return {
        "scales": scales, "base_loss": base_loss, "member_losses": member_losses, "mutants": mutants,
        "elite_indices": [e[1] for e in elites], "elite_losses": elite_losses, "elite_weights": weights,
        "recombined": recombined, "recombined_loss": float(closure(recombined)),
    }


def run(bundle_dir, out_path):
    bundle = load_bundle(bundle_dir)
    hp = bundle.params
    arrays = {k: torch.from_numpy(v) for k, v in bundle.arrays.items()}
    base = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
    noise = {m: {key: arrays[f"inputs/noise/{key}"][m - 1] for key in base} for m in range(1, hp["pop_size"])}
    x, y = arrays["inputs/x"], arrays["inputs/y"]
    dtype = x.dtype

    result = evolution_cycle(base, lambda p: mlp_loss(p, x, y), noise, pop_size=hp["pop_size"], elite_frac=hp["elite_frac"],
                             sigma=hp["sigma"], recombine=hp["recombine"], temperature=hp["temperature"])
    outputs = {
        "outputs/scales": torch.stack([result["scales"][k] for k in hp["param_order"]]),
        "outputs/base_loss": torch.tensor(result["base_loss"], dtype=dtype),
        "outputs/member_losses": torch.tensor(result["member_losses"], dtype=dtype),
        "outputs/elite_indices": torch.tensor(result["elite_indices"], dtype=torch.int64),
        "outputs/elite_losses": result["elite_losses"].to(dtype),
        "outputs/elite_weights": result["elite_weights"].to(dtype),
        "outputs/recombined_loss": torch.tensor(result["recombined_loss"], dtype=dtype),
        "outputs/sigma_next": torch.tensor(hp["sigma"] * hp["sigma_decay"], dtype=torch.float64),
        **{f"outputs/recombined/{k}": v for k, v in result["recombined"].items()},
        # members 1..pop_size-1 stacked on axis 0, as in the bundle
        **{f"outputs/mutants/{k}": torch.stack([cand[k] for cand in result["mutants"].values()]) for k in base},
    }
    return dump_arrays(out_path, outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="scenarios: egd_cycle, egd_cycle_softmax; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate SCENARIO --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
