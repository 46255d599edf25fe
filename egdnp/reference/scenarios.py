"""Named, deterministic scenarios: everything a port needs to check itself.

A scenario is a function ``(xp, dtype, seed) -> (arrays, hyperparameters)``.
``arrays`` maps names to arrays: ``inputs/...`` and ``params/...`` are what a
port reads, the rest (``outputs/``, ``grads/``, ``noise/`` ...) is what it must
reproduce.  Scenarios are small (kilobytes) so their bundles can live in git.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .. import rng


@dataclass(frozen=True)
class Scenario:
    """A registered scenario: its function and a one-line description."""

    fn: Callable
    description: str


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, description: str):
    """Decorator registering a scenario function under ``name``."""

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
    hyper = {"address_a": a, "address_b": b, "weights": weights, "weighted_sum_members": list(range(len(weights)))}
    return arrays, hyper
