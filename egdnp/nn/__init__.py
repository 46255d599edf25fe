"""Manual-gradient neural networks: layers, losses, initialisers, models.

No autograd: every forward returns ``(out, cache)`` and its backward, written
right beside it, turns ``dL/dout`` into ``dL/dx`` and parameter gradients.

Modules
-------
egdnp.nn.functional  stateless ops (linear, conv2d via im2col, pooling,
                     activations, dropout, batch norm), forward + backward
egdnp.nn.losses      softmax cross-entropy, MSE (with gradients), accuracy
egdnp.nn.init        He / Glorot / LeCun / zeros initialisers on egdnp.rng
egdnp.nn.layers      layer objects (static config) used by models
egdnp.nn.model       ``Serial`` composition, ``mlp``, ``cnn`` and ``residual_mlp`` builders

Quick start
-----------
>>> from egdnp.nn import mlp
>>> model = mlp((64, 128, 10))
>>> params = model.init(seed=0)
>>> loss, grads = model.loss_and_grad(params, x, y)        # doctest: +SKIP

See docs/nn.md for the layer contract, shapes and naming.
"""

from . import functional, init, layers, losses
from .layers import (
    Activation,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    GELU,
    Layer,
    LayerNorm,
    Linear,
    MaxPool2d,
    ReLU,
    Residual,
    Sigmoid,
    SiLU,
    Tanh,
)
from .losses import (
    accuracy,
    log_softmax,
    mse,
    mse_grad,
    softmax,
    softmax_cross_entropy,
    softmax_cross_entropy_grad,
    softmax_cross_entropy_with_grad,
)
from .model import ForwardCache, Serial, cnn, mlp, residual_mlp, serial


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Opt-in, process-wide: let glibc malloc reuse freed blocks instead of returning them.

    Removes most page faults of the megabyte-sized temporaries of a CNN step
    (about a quarter of its time on a small VM).  See
    :func:`egdnp.nn._cpu.keep_freed_memory`.  No arrays involved.

    Parameters
    ----------
    mmap_threshold, trim_threshold : int
        Bytes for glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``.

    Returns
    -------
    bool
        True when applied; False off glibc.
    """
    from ._cpu import keep_freed_memory as _keep

    return _keep(mmap_threshold, trim_threshold)


def release_step_scratch() -> None:
    """Free the calling thread's step scratch block (NumPy backend).

    :meth:`Serial.loss_and_grad` on NumPy serves its kernel temporaries (im2col
    columns, padded inputs, pooled maps and their gradients) from one per-thread
    block that is reused every step, so steady-state steps allocate no fresh
    pages.  The block stays as large as the largest step so far; call this after
    training to hand it back.  The next step grows a new one.  No arrays involved.
    """
    from ._cpu import release_step_scratch as _release

    _release()

__all__ = [
    "functional",
    "init",
    "layers",
    "losses",
    "Layer",
    "Linear",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Flatten",
    "Dropout",
    "BatchNorm1d",
    "BatchNorm2d",
    "Activation",
    "ReLU",
    "Tanh",
    "GELU",
    "Sigmoid",
    "SiLU",
    "LayerNorm",
    "Residual",
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_with_grad",
    "log_softmax",
    "softmax",
    "mse",
    "mse_grad",
    "accuracy",
    "Serial",
    "ForwardCache",
    "serial",
    "mlp",
    "cnn",
    "residual_mlp",
    "keep_freed_memory",
    "release_step_scratch",
]
