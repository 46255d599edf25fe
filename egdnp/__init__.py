"""egdnp: evolutionary optimisation of neural networks in plain NumPy/CuPy.

egdnp is a framework-free reference library for two ways of training neural
networks by evolution: EGD (SGD whose every N-th step runs a small evolution
cycle: mutate, score forward-only, recombine the elites) and EGGROLL
(evolution strategies with low-rank perturbations ``W + A B^T``, no backward
pass).  Every layer's backward is written by hand beside its forward, every
optimiser is a pair of pure functions over explicit state, and all noise is
addressed by ``(seed, parameter name, member, generation)``, so it is the same
array on NumPy, CuPy and in a PyTorch or JAX port.

Start here
----------
``python examples/quickstart.py`` trains a digits MLP with SGD, EGD and
EGGROLL and prints a comparison table; docs/quickstart.md walks through it.
Every public function documents its arguments and array shapes:
``help(egdnp.nn.mlp)``, ``help(egdnp.es.Eggroll)``, ``help(egdnp.optim.egd.egd)``.

Subpackages
-----------
egdnp.rng        counter-based Philox4x32-10 noise (NumPy/Numba, CuPy, array API);
                 docs/noise.md is its specification
egdnp.nn         manual-gradient layers, losses, ``mlp`` and ``cnn`` builders whose
                 params are plain ``dict[str, array]`` (``"fc1.weight"`` (n_out, n_in))
egdnp.optim      SGD, Adam/AdamW, schedules, and EGD (``egdnp.optim.egd``)
egdnp.es         EGGROLL: low-rank perturbed forwards, fitness shaping, the ES
                 gradient, an ask/tell strategy; the HyperscaleES conventions
egdnp.data       scikit-learn's digits (no download), upsampling, seeded batches
egdnp.reference  scenarios, reference bundles and a comparator for validating
                 ports (``python -m egdnp.reference --help``;
                 docs/validating-a-port.md)
egdnp.testing    ``assert_port_matches`` and a pytest fixture for a port's own
                 test suite (imported on request; never imports pytest itself)

Backends
--------
Chosen by name (``"numpy"``, ``"cupy"``) or by passing any array-API
namespace (``array_api_strict``): ``xp = egdnp.get_namespace("numpy")``;
functions take the namespace as ``xp=`` or infer it from their arrays.
float32 is the default dtype, float64 on request.

Example
-------
>>> from egdnp import nn
>>> model = nn.mlp((64, 32, 10))
>>> params = model.init(seed=0)
>>> params["fc1.weight"].shape
(32, 64)
"""

from ._backend import BufferPool, array_namespace, get_namespace, keep_freed_memory, synchronize, to_device, to_host
from ._files import atomic_write

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "get_namespace",
    "array_namespace",
    "to_device",
    "to_host",
    "synchronize",
    "BufferPool",
    "keep_freed_memory",
    "atomic_write",
]
