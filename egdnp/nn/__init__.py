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
from ._scratch import release_step_scratch
from .._backend import keep_freed_memory  # re-exported: a process-wide host setting, also egdnp.keep_freed_memory

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
