"""egdnp: evolutionary optimisation of neural networks in plain NumPy/CuPy.

egdnp is a framework-free reference library: every layer's backward is
written by hand beside its forward, every optimiser is a pair of pure
functions over explicit state, and all noise is addressed by
``(seed, parameter name, member, generation)`` so that it is the same array
on NumPy, CuPy and in a PyTorch or JAX port.

Subpackages
-----------
egdnp.rng        counter-based Philox4x32-10 noise (NumPy/Numba, CuPy, array API)
egdnp.nn         manual-gradient layers, losses, MLP and CNN builders, digits data
egdnp.optim      SGD, Adam/AdamW and EGD (Evolutionary Gradient Descent)
egdnp.es         EGGROLL low-rank evolution strategies
egdnp.reference  reference bundles and a comparator for ports

Backends are chosen by name (``"numpy"``, ``"cupy"``) or by passing any
array-API namespace (``array_api_strict``); see :func:`egdnp.get_namespace`.
"""

from ._backend import BufferPool, array_namespace, get_namespace, synchronize, to_device, to_host

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "get_namespace",
    "array_namespace",
    "to_device",
    "to_host",
    "synchronize",
    "BufferPool",
]
