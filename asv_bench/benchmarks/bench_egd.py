"""EGD evolution cycle: overhead over its closure calls, and host<->device traffic.

Targets (issue 4), MLP 784-256-10 (ReLU), batch 512, pop_size 8, float32:
* one evolution cycle takes at most 1.15x the time of the (pop_size + 1)
  closure calls it makes (mutation, selection, recombination <= 15%):
  ``track_overhead_ratio`` reports ``cycle time / time of pop_size + 1 closure calls``;
* ``population_storage="seed"`` moves zero parameter bytes between host and
  device: ``track_seed_bytes_moved`` (must be 0); ``track_array_bytes_moved``
  gives the array mode's traffic for comparison (0 on NumPy, where host is device).
"""

from __future__ import annotations

import os

# Numba's OpenMP workers spin-wait after every parallel kernel and then fight OpenBLAS's
# threads: on a 2-core machine a noise kernel followed by a matmul ran 8x slower than
# the two alone.  Without spinning (set before Numba starts its thread pool) the pair
# costs the sum of its parts.  Remove this line once egdnp sets it itself.
os.environ.setdefault("GOMP_SPINCOUNT", "0")

from egdnp import _backend, rng  # noqa: E402
from egdnp.optim.egd import egd

from ._common import BACKENDS, best_time, namespace_or_skip  # noqa: E402

SIZES = (784, 256, 10)
BATCH = 512
POP = 8


def _model_and_closure(xp):
    """Params and a forward-only closure (egdnp.nn.mlp when available, else a local two-layer forward)."""
    x = rng.normal((BATCH, SIZES[0]), seed=1, stream="data/bench_x", xp=xp)
    labels_host = (_backend.to_host(rng.random_bits((BATCH,), seed=1, stream="data/bench_y")) % SIZES[-1]).astype("int64")
    y = _backend.to_device(labels_host, xp)
    try:
        from egdnp.nn import mlp, softmax_cross_entropy

        model = mlp(SIZES, activation="relu")
        params = model.init(seed=0, xp=xp)

        def closure(p):
            return softmax_cross_entropy(model.apply(p, x), y)

        return params, closure
    except ImportError:  # the nn package is not there yet
        pass
    params = {
        "fc1.weight": rng.normal((SIZES[1], SIZES[0]), seed=0, stream="init/fc1.weight", xp=xp) * (2.0 / SIZES[0]) ** 0.5,
        "fc1.bias": xp.zeros((SIZES[1],), dtype=xp.float32),
        "fc2.weight": rng.normal((SIZES[2], SIZES[1]), seed=0, stream="init/fc2.weight", xp=xp) * (2.0 / SIZES[1]) ** 0.5,
        "fc2.bias": xp.zeros((SIZES[2],), dtype=xp.float32),
    }
    one_hot = xp.astype(xp.reshape(y, (-1, 1)) == xp.reshape(xp.arange(SIZES[2]), (1, -1)), xp.float32)

    def closure(p):
        h = xp.maximum(xp.matmul(x, xp.permute_dims(p["fc1.weight"], (1, 0))) + p["fc1.bias"], 0.0)
        logits = xp.matmul(h, xp.permute_dims(p["fc2.weight"], (1, 0))) + p["fc2.bias"]
        m = xp.max(logits, axis=1, keepdims=True)
        lse = xp.log(xp.sum(xp.exp(logits - m), axis=1)) + xp.reshape(m, (-1,))
        return xp.mean(lse - xp.sum(logits * one_hot, axis=1))

    return params, closure


class EvolutionCycle:
    """One evolution cycle of the MLP 784-256-10, batch 512, pop 8, against its closure calls."""

    params = (BACKENDS, ["array", "seed"], ["full", "lowrank"])
    param_names = ["backend", "storage", "mutation"]
    timeout = 300

    def setup(self, backend, storage, mutation):
        self.xp = namespace_or_skip(backend)
        self.sync = lambda: _backend.synchronize(self.xp)
        self.params, self.closure = _model_and_closure(self.xp)
        self.opt = egd(lr=0.01, evo_interval=1, pop_size=POP, elite_frac=0.25, sigma=0.02, seed=0,
                       population_storage=storage, mutation=mutation, rank=4)
        self.state = self.opt.init(self.params)
        self.cycle()  # allocate the host buffers and compile the kernels outside the timing
        self.sync()

    def cycle(self):
        # evolve never changes self.params/self.state (pure), so every call does the same work
        return self.opt.evolve(self.state, self.params, self.closure)[2]

    def closures(self):
        for _ in range(POP + 1):
            float(self.closure(self.params))

    def time_cycle(self, backend, storage, mutation):
        self.cycle()
        self.sync()

    def time_closure_calls(self, backend, storage, mutation):
        self.closures()
        self.sync()

    def track_overhead_ratio(self, backend, storage, mutation):
        """Cycle time / time of its pop_size + 1 closure calls (target <= 1.15).

        Both are the best of 15 rounds, interleaved so that machine load hits both alike.
        """
        t_cycle, t_calls = float("inf"), float("inf")
        for _ in range(15):
            t_cycle = min(t_cycle, best_time(self.cycle, repeat=1, sync=self.sync))
            t_calls = min(t_calls, best_time(self.closures, repeat=1, sync=self.sync))
        return t_cycle / t_calls

    track_overhead_ratio.unit = "ratio"

    def track_bytes_moved(self, backend, storage, mutation):
        """Parameter bytes copied host<->device in one cycle (seed storage: must be 0)."""
        return self.cycle().bytes_moved

    track_bytes_moved.unit = "bytes"


class SeedStorageTraffic:
    """Full-weight host<->device copies of one cycle in seed storage mode (must be 0 on every backend)."""

    params = (BACKENDS,)
    param_names = ["backend"]

    def setup(self, backend):
        self.xp = namespace_or_skip(backend)
        self.params, self.closure = _model_and_closure(self.xp)
        self.opt = egd(lr=0.01, evo_interval=1, pop_size=POP, population_storage="seed")
        self.state = self.opt.init(self.params)

    def track_seed_bytes_moved(self, backend):
        return self.opt.evolve(self.state, self.params, self.closure)[2].bytes_moved

    track_seed_bytes_moved.unit = "bytes"

    def track_seed_full_weight_copies(self, backend):
        rep = self.opt.evolve(self.state, self.params, self.closure)[2]
        full = sum(_backend.to_host(v).nbytes for v in self.params.values())
        return rep.bytes_moved / full

    track_seed_full_weight_copies.unit = "copies"
