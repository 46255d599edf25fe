"""Layers: static configuration plus a forward and its backward, side by side.

Layer contract
--------------
A layer object holds configuration only (sizes, stride, rate, ...), never
arrays.  Its parameters and buffers live in dicts that the caller passes in,
keyed by *local* names (``"weight"``, ``"bias"``, ``"running_mean"``); a model
prefixes them with the layer's name (``"fc1.weight"``).

``param_shapes() -> {local: shape}``
    Shapes of the trainable parameters (empty for parameter-free layers).
``init(seed, name, *, xp, dtype) -> {local: array}``
    Fresh parameters; ``name`` is the layer name, the noise stream of each
    parameter is ``"init/" + name + "." + local``.
``state_shapes() / init_state(name, *, xp, dtype) -> {local: array}``
    Non-trainable buffers (BatchNorm running statistics).
``check_input(x, name)``
    Raise a ValueError naming the layer and the expected shape.
``forward(params, state, x, ctx) -> (out, cache, new_state)``
    ``ctx`` is a :class:`Context` (train flag, dropout seed/step, layer name).
    ``new_state`` is ``state`` itself when nothing changes.
``backward(params, cache, dout, need_dx=True) -> (dx, grads)``
    ``grads`` has the keys of ``param_shapes()``; ``dx`` is None when
    ``need_dx`` is False.

Shapes: leading axes are batch axes.  Dense layers take ``(..., features)``,
image layers ``(..., C, H, W)``, so ``(batch, ...)`` and ``(pop, batch, ...)``
inputs run through the same code without a Python loop over members.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from .._checks import check_bool, check_int, check_rate
from . import functional as F
from . import init as initialisers

__all__ = [
    "Context",
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
]


class Context(NamedTuple):
    """Per-call settings handed to every layer's forward.

    Attributes
    ----------
    name : str
        The layer's name in its model (``"fc1"``).
    train : bool
        Training mode (dropout active, BatchNorm uses and updates batch statistics).
    seed : int or None
        Dropout noise seed; required when a Dropout layer runs in training mode.
    step : int
        Dropout noise generation (the training step), so every step draws a new mask.
    """

    name: str = ""
    train: bool = False
    seed: int | None = None
    step: int = 0


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


class Layer:
    """Base class of layers: static configuration, no arrays (see the module docstring).

    Subclasses override the methods below; the defaults describe a layer
    without parameters or buffers.  Subclass methods without a docstring of
    their own inherit these.  Inputs have shape (batch, ...) or (pop, batch,
    ...): leading axes are batch axes.

    Attributes
    ----------
    prefix : str
        Stem of automatic names in :func:`egdnp.nn.serial` (``"fc"`` -> ``fc1``).
    """

    prefix = "layer"  # stem of automatic names: prefix + running number

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the trainable parameters.

        Returns
        -------
        dict[str, tuple of int]
            ``{local name: shape}``, e.g. ``{"weight": (n_out, n_in), "bias": (n_out,)}``;
            empty for parameter-free layers.
        """
        return {}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the non-trainable buffers (BatchNorm running statistics).

        Returns
        -------
        dict[str, tuple of int]
            ``{local name: shape}``; empty for layers without buffers.
        """
        return {}

    def init(self, seed: int, name: str, *, xp=None, dtype="float32") -> dict[str, Any]:
        """Fresh parameters drawn from :mod:`egdnp.rng`.

        Parameters
        ----------
        seed : int
        name : str
            The layer's name in its model; parameter ``local`` uses the noise
            stream ``"init/" + name + "." + local``.
        xp : namespace or name, default NumPy
        dtype : {"float32", "float64"}

        Returns
        -------
        dict[str, array]
            ``{local name: array of shape param_shapes()[local]}``.
        """
        return {}

    def init_state(self, name: str, *, xp=None, dtype="float32") -> dict[str, Any]:
        """Fresh buffers.

        Parameters
        ----------
        name : str
        xp : namespace or name, default NumPy
        dtype : {"float32", "float64"}

        Returns
        -------
        dict[str, array]
            ``{local name: array of shape state_shapes()[local]}``.
        """
        return {}

    def check_input(self, x, name: str) -> None:
        """Raise a ValueError naming the layer and the expected shape when ``x`` does not fit.

        Parameters
        ----------
        x : array
            The layer's input, e.g. (batch, n_in) or (pop, batch, C, H, W).
        name : str
            The layer's name, quoted in the message.
        """
        return None

    def forward(self, params, state, x, ctx: Context):
        """Forward pass keeping what :meth:`backward` needs.

        Parameters
        ----------
        params : dict[str, array]
            Local parameters (``{"weight": ..., "bias": ...}``), shapes from :meth:`param_shapes`.
        state : dict[str, array]
            Local buffers, shapes from :meth:`state_shapes` (``{}`` when none).
        x : array, shape (batch, ...) or (pop, batch, ...)
        ctx : Context
            Layer name, train flag, dropout seed and step.

        Returns
        -------
        out : array, shape (batch, ...) or (pop, batch, ...)
            Same leading axes as ``x``.
        cache : opaque, for :meth:`backward`
        new_state : dict[str, array]
            Updated buffers (``state`` itself when nothing changes).
        """
        raise NotImplementedError

    def backward(self, params, cache, dout, need_dx: bool = True):
        """Gradients of :meth:`forward`.

        Parameters
        ----------
        params : dict[str, array]
            The local parameters of the forward.
        cache : from :meth:`forward`
        dout : array, shape of the forward's ``out``
            ``dL/dout``.
        need_dx : bool
            ``False`` skips ``dx`` (returned as None).

        Returns
        -------
        dx : array, shape of the forward's ``x``, or None
        grads : dict[str, array]
            The keys and shapes of :meth:`param_shapes` (summed over every leading axis).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def _torch_init(init, weight_init, bias_init):
    """``init="torch"`` -> both initialisers ``"torch_uniform"``; None keeps the given ones."""
    if init is None:
        return weight_init, bias_init
    if init != "torch":
        raise ValueError(f"init={init!r} must be None (use weight_init/bias_init) or 'torch' (PyTorch's default initialisation)")
    return "torch_uniform", "torch_uniform"


def _init_bias(bias_init, shape, fan_in, seed, name, xp, dtype):
    """A bias; ``"torch_uniform"`` needs the weight's fan_in (torch's bias bound 1/sqrt(fan_in))."""
    if bias_init == "torch_uniform":
        return initialisers.torch_uniform(shape, seed=seed, name=name + ".bias", xp=xp, dtype=dtype, fan_in=fan_in)
    return initialisers.get(bias_init)(shape, seed=seed, name=name + ".bias", xp=xp, dtype=dtype)


# ----------------------------------------------------------------------------
class Linear(Layer):
    """Fully connected ``y = x @ weight.T + bias``.

    Parameters
    ----------
    n_in, n_out : int
    bias : bool
    weight_init, bias_init : str or callable
        Names from :data:`egdnp.nn.init.INITIALISERS`.
    init : {None, "torch"}
        ``"torch"``: PyTorch's default initialisation of weight and bias,
        U(+-1/sqrt(n_in)) (overrides ``weight_init`` and ``bias_init``).

    Shapes: x (..., n_in) -> y (..., n_out); ``weight`` (n_out, n_in), ``bias`` (n_out,).
    """

    prefix = "fc"

    def __init__(self, n_in: int, n_out: int, *, bias: bool = True, weight_init="glorot_uniform", bias_init="zeros",
                 init=None):
        self.n_in, self.n_out = check_int("n_in", n_in, 1), check_int("n_out", n_out, 1)
        self.bias = check_bool("bias", bias)
        weight_init, bias_init = _torch_init(init, weight_init, bias_init)
        self.weight_init, self.bias_init = weight_init, bias_init
        initialisers.get(weight_init), initialisers.get(bias_init)

    def param_shapes(self):
        shapes = {"weight": (self.n_out, self.n_in)}
        if self.bias:
            shapes["bias"] = (self.n_out,)
        return shapes

    def init(self, seed, name, *, xp=None, dtype="float32"):
        params = {"weight": initialisers.get(self.weight_init)((self.n_out, self.n_in), seed=seed, name=name + ".weight", xp=xp, dtype=dtype)}
        if self.bias:
            params["bias"] = _init_bias(self.bias_init, (self.n_out,), self.n_in, seed, name, xp, dtype)
        return params

    def check_input(self, x, name):
        if len(x.shape) < 2 or int(x.shape[-1]) != self.n_in:
            raise ValueError(
                f"layer {name!r} (Linear {self.n_in}->{self.n_out}) got x of shape {_shape_str(x.shape)}; "
                f"expected (..., {self.n_in}) such as (batch, {self.n_in}) or (pop, batch, {self.n_in})"
            )

    def forward(self, params, state, x, ctx):
        out, cache = F.linear_forward(x, params["weight"], params.get("bias"))
        return out, cache, state

    def backward(self, params, cache, dout, need_dx=True):
        dx, dw, db = F.linear_backward(dout, cache, need_dx=need_dx)
        grads = {"weight": dw}
        if self.bias:
            grads["bias"] = db
        return dx, grads


# ----------------------------------------------------------------------------
class Conv2d(Layer):
    """2-D cross-correlation (im2col + GEMM).

    Parameters
    ----------
    c_in, c_out : int
    kernel_size, stride, padding, dilation : int or (int, int)
    bias : bool
    weight_init, bias_init : str or callable
    init : {None, "torch"}
        ``"torch"``: PyTorch's default initialisation of weight and bias,
        U(+-1/sqrt(c_in*kh*kw)) (overrides ``weight_init`` and ``bias_init``).

    Shapes: x (..., c_in, H, W) -> y (..., c_out, H', W'); ``weight`` (c_out, c_in, kh, kw).
    """

    prefix = "conv"

    def __init__(self, c_in, c_out, kernel_size, *, stride=1, padding=0, dilation=1, bias=True, weight_init="he_normal", bias_init="zeros",
                 init=None):
        weight_init, bias_init = _torch_init(init, weight_init, bias_init)
        self.c_in, self.c_out = check_int("c_in", c_in, 1), check_int("c_out", c_out, 1)
        self.kernel_size = F._pair(kernel_size, "kernel_size", minimum=1)
        self.stride = F._pair(stride, "stride", minimum=1)
        self.padding = F._pair(padding, "padding", minimum=0)
        self.dilation = F._pair(dilation, "dilation", minimum=1)
        self.bias = check_bool("bias", bias)
        self.weight_init, self.bias_init = weight_init, bias_init
        initialisers.get(weight_init), initialisers.get(bias_init)

    def param_shapes(self):
        shapes = {"weight": (self.c_out, self.c_in) + self.kernel_size}
        if self.bias:
            shapes["bias"] = (self.c_out,)
        return shapes

    def init(self, seed, name, *, xp=None, dtype="float32"):
        shapes = self.param_shapes()
        params = {"weight": initialisers.get(self.weight_init)(shapes["weight"], seed=seed, name=name + ".weight", xp=xp, dtype=dtype)}
        if self.bias:
            fan_in = self.c_in * self.kernel_size[0] * self.kernel_size[1]
            params["bias"] = _init_bias(self.bias_init, shapes["bias"], fan_in, seed, name, xp, dtype)
        return params

    def check_input(self, x, name):
        if len(x.shape) < 4 or int(x.shape[-3]) != self.c_in:
            raise ValueError(
                f"layer {name!r} (Conv2d {self.c_in}->{self.c_out}) got x of shape {_shape_str(x.shape)}; "
                f"expected (N, {self.c_in}, H, W) or (pop, N, {self.c_in}, H, W)"
            )

    def forward(self, params, state, x, ctx):
        out, cache = F.conv2d_forward(x, params["weight"], params.get("bias"), self.stride, self.padding, self.dilation)
        return out, cache, state

    def backward(self, params, cache, dout, need_dx=True):
        dx, dw, db = F.conv2d_backward(dout, cache, need_dx=need_dx)
        grads = {"weight": dw}
        if self.bias:
            grads["bias"] = db
        return dx, grads


# ----------------------------------------------------------------------------
class _Pool2d(Layer):
    prefix = "pool"

    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size, self.stride, self.padding = F._pool_args(kernel_size, stride, padding)

    def check_input(self, x, name):
        if len(x.shape) < 4:
            raise ValueError(
                f"layer {name!r} ({type(self).__name__}) got x of shape {_shape_str(x.shape)}; "
                "expected (N, C, H, W) or (pop, N, C, H, W)"
            )


class MaxPool2d(_Pool2d):
    """Max pooling, torch semantics (floor mode, ``-inf`` padding; gradient to the first maximum).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), default ``kernel_size``
    padding : int or (int, int), at most half the kernel

    Shapes: x (..., C, H, W) -> (..., C, H', W'); no parameters.
    """

    def forward(self, params, state, x, ctx):
        out, cache = F.max_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out, cache, state

    def backward(self, params, cache, dout, need_dx=True):
        return (F.max_pool2d_backward(dout, cache) if need_dx else None), {}


class AvgPool2d(_Pool2d):
    """Average pooling, torch semantics (zero padding counted in the divisor).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), default ``kernel_size``
    padding : int or (int, int), at most half the kernel

    Shapes: x (..., C, H, W) -> (..., C, H', W'); no parameters.
    """

    def forward(self, params, state, x, ctx):
        out, cache = F.avg_pool2d_forward(x, self.kernel_size, self.stride, self.padding)
        return out, cache, state

    def backward(self, params, cache, dout, need_dx=True):
        return (F.avg_pool2d_backward(dout, cache) if need_dx else None), {}


# ----------------------------------------------------------------------------
class Flatten(Layer):
    """Merge the last ``n_feature_axes`` axes.

    Parameters
    ----------
    n_feature_axes : int, default 3

    Shapes: x (..., C, H, W) -> (..., C*H*W) (with the default 3); no parameters.
    """

    prefix = "flatten"

    def __init__(self, n_feature_axes: int = 3):
        self.n_feature_axes = check_int("n_feature_axes", n_feature_axes, 1)

    def check_input(self, x, name):
        if len(x.shape) <= self.n_feature_axes:
            raise ValueError(
                f"layer {name!r} (Flatten of the last {self.n_feature_axes} axes) got x of shape "
                f"{_shape_str(x.shape)}; it needs at least one leading batch axis"
            )

    def forward(self, params, state, x, ctx):
        out, cache = F.flatten_forward(x, self.n_feature_axes)
        return out, cache, state

    def backward(self, params, cache, dout, need_dx=True):
        return (F.flatten_backward(dout, cache) if need_dx else None), {}


# ----------------------------------------------------------------------------
class Dropout(Layer):
    """Inverted dropout; identity in eval mode.

    The mask of layer ``name`` at training step ``ctx.step`` is drawn from
    ``egdnp.rng.uniform(x.shape, seed=ctx.seed, stream="dropout/" + name,
    generation=ctx.step)``.  A population axis gets a different mask per member.

    Parameters
    ----------
    rate : float in [0, 1)
        Probability of zeroing an entry; kept entries are scaled by ``1/(1-rate)``.

    Shapes: x (any shape, leading batch axes) -> out of the same shape; no parameters.
    """

    prefix = "dropout"

    def __init__(self, rate: float = 0.5):
        self.rate = check_rate("rate", rate)

    def forward(self, params, state, x, ctx):
        if ctx.train and self.rate > 0.0 and ctx.seed is None:
            raise ValueError(
                f"layer {ctx.name!r} (Dropout) runs in training mode and needs a noise seed; "
                "pass seed=<int> (and step=<training step>) to forward/loss_and_grad"
            )
        out, mask = F.dropout_forward(
            x, self.rate, seed=0 if ctx.seed is None else ctx.seed, stream="dropout/" + ctx.name,
            generation=int(ctx.step), train=ctx.train,
        )
        return out, mask, state

    def backward(self, params, cache, dout, need_dx=True):
        return (F.dropout_backward(dout, cache) if need_dx else None), {}


# ----------------------------------------------------------------------------
class _BatchNorm(Layer):
    prefix = "bn"
    _axes: tuple[int, ...] = ()
    _feature_axis = -1

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5):
        self.num_features = check_int("num_features", num_features, 1)
        self.momentum = check_rate("momentum", momentum, high_open=False)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 < float(eps) < math.inf:
            raise ValueError(f"eps={eps!r} must be a finite float > 0 (1e-5 is usual)")
        self.eps = float(eps)

    def param_shapes(self):
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    def state_shapes(self):
        return {"running_mean": (self.num_features,), "running_var": (self.num_features,)}

    def init(self, seed, name, *, xp=None, dtype="float32"):
        return {
            "weight": initialisers.ones((self.num_features,), xp=xp, dtype=dtype),
            "bias": initialisers.zeros((self.num_features,), xp=xp, dtype=dtype),
        }

    def init_state(self, name, *, xp=None, dtype="float32"):
        return {
            "running_mean": initialisers.zeros((self.num_features,), xp=xp, dtype=dtype),
            "running_var": initialisers.ones((self.num_features,), xp=xp, dtype=dtype),
        }

    def forward(self, params, state, x, ctx):
        if ctx.train:
            count = 1
            for a in self._axes:
                count *= int(x.shape[a])
            if count < 2:
                # every value would normalise to 0 and the running statistics would move (torch raises too)
                raise ValueError(
                    f"layer {ctx.name!r} ({type(self).__name__}) in training mode got x of shape "
                    f"{_shape_str(x.shape)}: one value per channel; batch statistics need more than one, "
                    "so pass a batch of at least 2 (or train=False to use the running statistics)"
                )
        out, cache, (mean, var) = F.batch_norm_forward(
            x, params["weight"], params["bias"], state["running_mean"], state["running_var"],
            axes=self._axes, train=ctx.train, momentum=self.momentum, eps=self.eps,
        )
        new_state = {"running_mean": mean, "running_var": var} if ctx.train else state
        return out, cache, new_state

    def backward(self, params, cache, dout, need_dx=True):
        dx, dgamma, dbeta = F.batch_norm_backward(dout, cache)
        return (dx if need_dx else None), {"weight": dgamma, "bias": dbeta}


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of features: x of shape (N, F) or (pop, N, F), statistics over N.

    Parameters
    ----------
    num_features : int
        F.
    momentum : float in [0, 1], default 0.1
    eps : float > 0, default 1e-5

    Parameters ``weight`` (F,) ones and ``bias`` (F,) zeros; buffers
    ``running_mean`` (F,) zeros and ``running_var`` (F,) ones (torch's
    momentum convention, unbiased running variance).  Eval mode normalises
    with the running statistics.
    """

    _axes = (-2,)

    def check_input(self, x, name):
        if len(x.shape) < 2 or int(x.shape[-1]) != self.num_features:
            raise ValueError(
                f"layer {name!r} (BatchNorm1d) got x of shape {_shape_str(x.shape)}; "
                f"expected (N, {self.num_features}) or (pop, N, {self.num_features})"
            )


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of channels: x of shape (N, C, H, W) or (pop, N, C, H, W), statistics over N, H, W.

    Parameters
    ----------
    num_features : int
        C.
    momentum : float in [0, 1], default 0.1
    eps : float > 0, default 1e-5

    Parameters ``weight`` (C,) ones and ``bias`` (C,) zeros; buffers
    ``running_mean`` (C,) zeros and ``running_var`` (C,) ones (torch's momentum
    convention, unbiased running variance).  Train mode normalises with the
    batch statistics of each population member and returns updated running
    statistics; eval mode normalises with the running statistics.
    """

    _axes = (-4, -2, -1)

    def check_input(self, x, name):
        if len(x.shape) < 4 or int(x.shape[-3]) != self.num_features:
            raise ValueError(
                f"layer {name!r} (BatchNorm2d) got x of shape {_shape_str(x.shape)}; "
                f"expected (N, {self.num_features}, H, W) or (pop, N, {self.num_features}, H, W)"
            )


# ----------------------------------------------------------------------------
class Activation(Layer):
    """Elementwise activation by name.

    Parameters
    ----------
    kind : {"relu", "tanh", "gelu", "sigmoid", "silu"}
        GELU is the exact erf form; SiLU is ``x * sigmoid(x)``.

    Shapes: x (any shape) -> out of the same shape; no parameters.
    """

    def __init__(self, kind: str):
        if kind not in F.ACTIVATIONS:
            raise ValueError(f"activation={kind!r} is not one of {sorted(F.ACTIVATIONS)}")
        self.kind = kind

    @property
    def prefix(self):
        """Stem of automatic names: the activation's kind (``relu1``, ``tanh1``, ...)."""
        return self.kind

    def forward(self, params, state, x, ctx):
        out, cache = F.ACTIVATIONS[self.kind][0](x)
        return out, cache, state

    def backward(self, params, cache, dout, need_dx=True):
        return (F.ACTIVATIONS[self.kind][1](dout, cache) if need_dx else None), {}


def ReLU() -> Activation:
    """``Activation("relu")``: x (any shape) -> out of the same shape.

    Returns
    -------
    Activation
    """
    return Activation("relu")


def Tanh() -> Activation:
    """``Activation("tanh")``: x (any shape) -> out of the same shape.

    Returns
    -------
    Activation
    """
    return Activation("tanh")


def GELU() -> Activation:
    """``Activation("gelu")`` (exact erf form): x (any shape) -> out of the same shape.

    Returns
    -------
    Activation
    """
    return Activation("gelu")


def Sigmoid() -> Activation:
    """``Activation("sigmoid")``: x (any shape) -> out of the same shape.

    Returns
    -------
    Activation
    """
    return Activation("sigmoid")


def SiLU() -> Activation:
    """``Activation("silu")`` (``x * sigmoid(x)``, swish): x (any shape) -> out of the same shape.

    Returns
    -------
    Activation
    """
    return Activation("silu")


# ----------------------------------------------------------------------------
class LayerNorm(Layer):
    """Layer normalisation over the last axis (``torch.nn.LayerNorm(F)``).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the mean and
    biased variance of each row; no running statistics, the same in train and
    eval mode.

    Parameters
    ----------
    num_features : int
        F, the size of the last axis.
    eps : float > 0, default 1e-5
    affine : bool, default True
        Learn ``weight`` (F,) ones and ``bias`` (F,) zeros; False: no parameters.

    Shapes: x (..., F) -> out (..., F).
    """

    prefix = "ln"

    def __init__(self, num_features: int, *, eps: float = 1e-5, affine: bool = True):
        self.num_features = check_int("num_features", num_features, 1)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"LayerNorm eps={eps!r} must be a float > 0 (1e-5 is torch's default)")
        self.eps = float(eps)
        if not (math.isfinite(self.eps) and self.eps > 0.0):
            raise ValueError(f"LayerNorm eps={eps} must be positive (1e-5 is torch's default)")
        if not isinstance(affine, bool):
            raise TypeError(f"LayerNorm affine={affine!r} must be True or False")
        self.affine = affine

    def param_shapes(self):
        if not self.affine:
            return {}
        return {"weight": (self.num_features,), "bias": (self.num_features,)}

    def init(self, seed, name, *, xp=None, dtype="float32"):
        if not self.affine:
            return {}
        return {
            "weight": initialisers.ones((self.num_features,), xp=xp, dtype=dtype),
            "bias": initialisers.zeros((self.num_features,), xp=xp, dtype=dtype),
        }

    def check_input(self, x, name):
        if len(x.shape) < 2 or int(x.shape[-1]) != self.num_features:
            raise ValueError(
                f"layer {name!r} (LayerNorm) got x of shape {_shape_str(x.shape)}; "
                f"expected (..., {self.num_features}) such as (batch, {self.num_features}) or (pop, batch, {self.num_features})"
            )

    def forward(self, params, state, x, ctx):
        out, cache = F.layer_norm_forward(x, params.get("weight"), params.get("bias"), self.eps)
        return out, cache, state

    def backward(self, params, cache, dout, need_dx=True):
        dx, dgamma, dbeta = F.layer_norm_backward(dout, cache)
        grads = {} if not self.affine else {"weight": dgamma, "bias": dbeta}
        return (dx if need_dx else None), grads


# ----------------------------------------------------------------------------
class Residual(Layer):
    """Residual combinator ``y = x + f(x)`` over a sub-network ``f``.

    ``f`` is a :class:`egdnp.nn.Serial` (or the layers to build one).  Its
    parameters appear in the outer model as ``<residual name>.<sub-layer
    name>.<local>`` (``"block1.fc1.weight"``); their initialisation streams
    use the same full key.  The backward adds the skip path's ``dout`` to the
    sub-network's input gradient.  A pre-norm residual MLP block::

        Residual(("ln", LayerNorm(d)), ("fc1", Linear(d, h)), ("silu", SiLU()), ("fc2", Linear(h, d)))

    Parameters
    ----------
    *body : Serial, or Layer / (str, Layer) items
        ``f``; its output must have the shape of its input.

    Shapes: x (..., F) (or (..., C, H, W)) -> out of the same shape.

    Notes
    -----
    Dropout inside ``f`` draws its mask from the sub-layer's own name
    (``"dropout/" + sub-name``): name the sub-layers of different blocks
    differently when each block needs its own masks.
    """

    prefix = "block"

    def __init__(self, *body):
        from .model import Serial  # here, not at the head: model imports this module

        if len(body) == 1 and isinstance(body[0], Serial):
            self.body = body[0]
        else:
            self.body = Serial(*body)
        if not self.body.layers:
            raise ValueError("Residual needs at least one layer in its body (y = x + f(x))")

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {layer!r}" for n, layer in self.body.layers)
        return f"Residual({inner})"

    def param_shapes(self):
        return self.body.param_shapes()

    def state_shapes(self):
        return self.body.state_shapes()

    def init(self, seed, name, *, xp=None, dtype="float32"):
        params = {}
        for n, layer in self.body.layers:
            for k, v in layer.init(seed, f"{name}.{n}", xp=xp, dtype=dtype).items():
                params[f"{n}.{k}"] = v
        return params

    def init_state(self, name, *, xp=None, dtype="float32"):
        state = {}
        for n, layer in self.body.layers:
            for k, v in layer.init_state(f"{name}.{n}", xp=xp, dtype=dtype).items():
                state[f"{n}.{k}"] = v
        return state

    def check_input(self, x, name):
        first, layer = self.body.layers[0]
        layer.check_input(x, f"{name}.{first}")

    def forward(self, params, state, x, ctx):
        out, cache = self.body.forward(params, x, state=state if state else None, train=ctx.train, seed=ctx.seed,
                                       step=ctx.step)
        if tuple(out.shape) != tuple(x.shape):
            raise ValueError(
                f"layer {ctx.name!r} (Residual) maps x of shape {_shape_str(x.shape)} to {_shape_str(out.shape)}; "
                "y = x + f(x) needs f to keep the shape (end the body with a layer back to the input width)"
            )
        return x + out, cache, (cache.state if state else state)

    def backward(self, params, cache, dout, need_dx=True):
        dx_body, grads = self.body.backward(params, cache, dout, need_dx=True)
        return ((dout + dx_body) if need_dx else None), grads
