"""Models: a ``Serial`` chain of named layers, and the MLP/CNN builders.

A model holds static configuration only.  Everything that changes lives in
plain dicts that the caller owns and passes in:

* ``params``  ``{"fc1.weight": array, "fc1.bias": array, ...}`` trainable;
* ``state``   ``{"bn1.running_mean": array, ...}`` buffers (empty dict when
  the model has none);
* gradients use exactly the keys of ``params``.

Calls
-----
``params = model.init(seed, xp=..., dtype=...)``
    Weights from :mod:`egdnp.rng` with stream ``"init/" + key``: the same
    numbers on every backend.
``state = model.init_state(xp=..., dtype=...)``
``out, cache = model.forward(params, x, state=state, train=False, seed=None, step=0)``
    ``cache`` is a :class:`ForwardCache`; ``cache.state`` is the updated state
    (a new dict; equal to ``state`` in eval mode or without buffers).
``dx, grads = model.backward(params, cache, dout, need_dx=True)``
``out = model.apply(params, x, state=state)``
    Evaluation forward without caches.
``loss, grads = model.loss_and_grad(params, x, y, loss="cross_entropy")``
    One call for the mean loss of a batch and all gradients;
    ``return_state=True`` adds the updated state as a third item.

Population axis: ``x`` may carry a leading population axis, ``(pop, batch,
...)``, with shared ``params``; labels of shape ``(batch,)`` broadcast.  No
layer loops over members in Python.
"""

from __future__ import annotations

import contextlib
import numbers

from typing import Any, Callable, NamedTuple

from .. import _backend
from .._checks import check_bool, check_rate
from . import _scratch, losses
from . import functional as F
from . import layers as L
from .functional import ACTIVATIONS, _namespace

__all__ = ["Serial", "ForwardCache", "serial", "mlp", "cnn", "residual_mlp"]


class ForwardCache(NamedTuple):
    """What :meth:`Serial.forward` keeps for :meth:`Serial.backward`.

    Attributes
    ----------
    layers : tuple
        One opaque cache per layer, in forward order.
    state : dict
        The updated buffers (BatchNorm running statistics after a training
        forward); ``{}`` for models without buffers.
    input_shape : tuple of int
        Shape of ``x``.
    """

    layers: tuple
    state: dict
    input_shape: tuple


def _dtype_name(xp, dtype) -> str:
    for name in ("float32", "float64"):
        if dtype == name or dtype == getattr(xp, name, None):
            return name
    raise TypeError(f"dtype={dtype!r} is not supported; use 'float32' or 'float64'")


def _dtype_str(dtype) -> str:
    """``float32`` rather than ``array_api_strict.float32`` in messages."""
    return str(dtype).rsplit(".", 1)[-1]


def _shape(a) -> tuple[int, ...]:
    return tuple(map(int, a.shape))


class Serial:
    """A chain of named layers applied in order.

    Parameters
    ----------
    *layers : Layer or (str, Layer)
        Unnamed layers get ``prefix + number`` names counted per prefix
        (``fc1``, ``fc2``, ``relu1``, ``conv1``, ...).  Parameter keys are
        ``name + "." + local`` (``"fc1.weight"``).

    Attributes
    ----------
    layers : tuple of (str, Layer)

    Inputs ``x`` have shape (batch, ...) or (pop, batch, ...); see :meth:`forward`.
    """

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)) and layers[0] and not isinstance(layers[0][0], str):
            layers = tuple(layers[0])
        named = []
        counters: dict[str, int] = {}
        for item in layers:
            if isinstance(item, tuple):
                if len(item) != 2 or not isinstance(item[0], str) or not isinstance(item[1], L.Layer):
                    raise TypeError(f"serial item {item!r} must be a Layer or a (name, Layer) pair")
                named.append(item)
                continue
            if not isinstance(item, L.Layer):
                raise TypeError(f"serial item {item!r} is not a Layer; use egdnp.nn.layers classes")
            prefix = item.prefix
            counters[prefix] = counters.get(prefix, 0) + 1
            named.append((f"{prefix}{counters[prefix]}", item))
        names = [n for n, _ in named]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"layer names {dupes} are used more than once; give each layer a unique name")
        for n in names:
            if not n or "." in n:
                raise ValueError(f"layer name {n!r} must be non-empty and contain no '.'")
        self.layers: tuple[tuple[str, L.Layer], ...] = tuple(named)
        self._first_param_layer = next((i for i, (_, layer) in enumerate(self.layers) if layer.param_shapes()), len(self.layers))
        # Layers are static configuration, so their key lists are computed once
        # here (rebuilding them on every call was a visible share of a small step).
        self._param_shapes = {f"{n}.{k}": tuple(s) for n, layer in self.layers for k, s in layer.param_shapes().items()}
        self._state_shapes = {f"{n}.{k}": tuple(s) for n, layer in self.layers for k, s in layer.state_shapes().items()}
        self._keys = tuple(
            (tuple((k, f"{n}.{k}") for k in layer.param_shapes()), tuple((k, f"{n}.{k}") for k in layer.state_shapes()))
            for n, layer in self.layers
        )
        # Conv2d -> ReLU -> MaxPool2d runs as one block (F.conv2d_relu_max_pool2d_*),
        # whose Numba path never stores the convolution's output or its gradient:
        # {index of the conv: index of the pool} for every such triple.
        self._conv_blocks = {
            i: i + 2
            for i in range(len(self.layers) - 2)
            if type(self.layers[i][1]) is L.Conv2d
            and type(self.layers[i + 1][1]) is L.Activation and self.layers[i + 1][1].kind == "relu"
            and type(self.layers[i + 2][1]) is L.MaxPool2d
        }
        # The passes as precomputed tuples (a Python loop over them costs what the
        # old loop over the layers did): forward (name, layer, param keys, state
        # keys, the block's pool layer or None), a block's entry standing for its
        # three layers; backward (layer index, the block's conv index or None).
        self._forward_plan, i = [], 0
        while i < len(self.layers):
            pool = self.layers[i + 2][1] if i in self._conv_blocks else None
            self._forward_plan.append(self.layers[i] + self._keys[i] + (pool,))
            i += 1 if pool is None else 3
        self._forward_plan = tuple(self._forward_plan)
        block_of_pool = {end: start for start, end in self._conv_blocks.items()}
        self._backward_plan, i = [], len(self.layers) - 1
        while i >= 0:
            start = block_of_pool.get(i)
            self._backward_plan.append((i, start))
            i = (i if start is None else start) - 1
        self._backward_plan = tuple(self._backward_plan)

    # -- structure ------------------------------------------------------------
    def __repr__(self) -> str:
        inner = ",\n  ".join(f"{n}: {layer!r}" for n, layer in self.layers)
        return f"Serial(\n  {inner}\n)"

    @property
    def names(self) -> tuple[str, ...]:
        """The layer names in order, e.g. ``("fc1", "tanh1", "fc2")``."""
        return tuple(n for n, _ in self.layers)

    def __getitem__(self, name: str) -> L.Layer:
        """The layer called ``name`` (KeyError listing the names otherwise)."""
        for n, layer in self.layers:
            if n == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers are {list(self.names)}")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{key: shape}`` of every trainable parameter, in layer order."""
        return dict(self._param_shapes)

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{key: shape}`` of every buffer (BatchNorm running statistics)."""
        return dict(self._state_shapes)

    def num_params(self) -> int:
        """Number of trainable scalars: the sum of the sizes of :meth:`param_shapes`."""
        total = 0
        for shape in self.param_shapes().values():
            size = 1
            for s in shape:
                size *= s
            total += size
        return total

    # -- creation -------------------------------------------------------------
    def init(self, seed: int = 0, *, xp=None, dtype="float32") -> dict[str, Any]:
        """Fresh parameters (``stream = "init/" + key``, member 0, generation 0).

        Parameters
        ----------
        seed : int
        xp : namespace or name, default NumPy
        dtype : {"float32", "float64"}

        Returns
        -------
        dict[str, array]
            ``{key: array of shape param_shapes()[key]}`` in layer order.
        """
        xp = _backend.get_namespace("numpy" if xp is None else xp)
        dname = _dtype_name(xp, dtype)
        params: dict[str, Any] = {}
        for n, layer in self.layers:
            for k, v in layer.init(seed, n, xp=xp, dtype=dname).items():
                params[f"{n}.{k}"] = v
        return params

    def init_state(self, *, xp=None, dtype="float32") -> dict[str, Any]:
        """Fresh buffers (BatchNorm: running_mean zeros, running_var ones); ``{}`` when none.

        Parameters
        ----------
        xp : namespace or name, default NumPy
        dtype : {"float32", "float64"}

        Returns
        -------
        dict[str, array]
            ``{key: array of shape state_shapes()[key]}``, e.g. ``"bn1.running_mean"`` of shape (F,).
        """
        xp = _backend.get_namespace("numpy" if xp is None else xp)
        dname = _dtype_name(xp, dtype)
        state: dict[str, Any] = {}
        for n, layer in self.layers:
            for k, v in layer.init_state(n, xp=xp, dtype=dname).items():
                state[f"{n}.{k}"] = v
        return state

    # -- validation -----------------------------------------------------------
    def check_params(self, params, *, what: str = "params", shapes=None) -> None:
        """Raise if ``params`` lacks keys, has extra keys, or has a wrong shape/dtype.

        The message names each offending key and the expected shape.

        Parameters
        ----------
        params : dict[str, array]
        what : str
            How the dict is called in messages (``"params"``, ``"state"``, ``"grads"``).
        shapes : dict[str, tuple of int], optional
            Expected ``{key: shape}``; default :meth:`param_shapes`.
        """
        expected = self._param_shapes if shapes is None else shapes
        if not isinstance(params, dict):
            raise TypeError(f"{what} must be a dict of arrays keyed like {list(expected)[:3]}..., got {type(params).__name__}")
        missing = [k for k in expected if k not in params]
        extra = [k for k in params if k not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(f"{k!r} (shape {expected[k]})" for k in missing))
            if extra:
                parts.append("unexpected " + ", ".join(repr(k) for k in extra))
            raise ValueError(f"{what} do not match the model: " + "; ".join(parts) + f". Expected keys: {list(expected)}")
        dtype = ref = None
        for k, shape in expected.items():
            v = params[k]
            if not hasattr(v, "shape") or not hasattr(v, "dtype"):
                raise TypeError(f"{what}[{k!r}] is a {type(v).__name__}, expected an array of shape {shape}")
            if ref is None:
                ref, ref_key = v, k
            elif type(v) is not type(ref):
                _backend.check_same_library(v, ref, f"{what}[{k!r}]", f"{what}[{ref_key!r}]")
            if v.shape != shape and _shape(v) != shape:
                raise ValueError(f"{what}[{k!r}] has shape {_shape(v)}, expected {shape}")
            if dtype is None:
                vxp = _namespace(v)
                if v.dtype != vxp.float32 and v.dtype != vxp.float64:
                    raise TypeError(f"{what}[{k!r}] has dtype {_dtype_str(v.dtype)}; parameters must be float32 or float64")
                dtype = v.dtype
            elif v.dtype != dtype:
                raise TypeError(f"{what}[{k!r}] has dtype {_dtype_str(v.dtype)} but other entries are {_dtype_str(dtype)}; use one dtype")

    def _check_x(self, params, x) -> None:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"x must be an array, got {type(x).__name__}")
        xp = _namespace(x)
        if x.dtype != xp.float32 and x.dtype != xp.float64:
            raise TypeError(
                f"x has dtype {_dtype_str(x.dtype)}; models run in float32 or float64: cast it to the parameters' "
                "dtype, e.g. xp.astype(x, xp.float32)"
            )
        if params:
            ref = next(iter(params.values()))
            if type(x) is not type(ref):
                _backend.check_same_library(x, ref, "x", "params")
            if x.dtype != ref.dtype:
                raise TypeError(
                    f"x has dtype {_dtype_str(x.dtype)} but params are {_dtype_str(ref.dtype)}; cast x (xp.astype) "
                    f"or init the model with dtype={_dtype_str(x.dtype)!r}"
                )

    def _prepare_state(self, state, train):
        shapes = self._state_shapes
        if not shapes:
            return {}
        if state is None:
            raise ValueError(
                f"this model has buffers {list(shapes)}; pass state=model.init_state(xp=..., dtype=...) "
                "(and keep the state returned in cache.state after training forwards)"
            )
        self.check_params(state, what="state", shapes=shapes)
        return state

    # -- forward / backward ---------------------------------------------------
    def forward(self, params, x, *, state=None, train: bool = False, seed: int | None = None, step: int = 0):
        """Forward pass keeping what :meth:`backward` needs.

        Parameters
        ----------
        params : dict[str, array]
        x : array, shape (batch, ...) or (pop, batch, ...)
            ``...`` is the model's input shape, e.g. ``(784,)`` or ``(1, 28, 28)``.
        state : dict[str, array] or None
            Buffers; required when the model has any (see :meth:`init_state`).
        train : bool
            Training mode: dropout active, BatchNorm on batch statistics.
        seed, step : int
            Dropout noise address (``stream="dropout/" + layer``, ``generation=step``).

        Returns
        -------
        out : array, shape (batch, n_out) or (pop, batch, n_out)
        cache : ForwardCache
            ``cache.state`` holds the updated buffers.
        """
        self.check_params(params)
        self._check_x(params, x)
        state = self._prepare_state(state, train)
        caches = []
        new_state: dict[str, Any] = {}
        h = x
        train, step = bool(train), int(step)
        for n, layer, pkeys, skeys, pool in self._forward_plan:
            layer.check_input(h, n)
            local_p = {k: params[key] for k, key in pkeys}
            if pool is not None:
                h, cache = F.conv2d_relu_max_pool2d_forward(
                    h, local_p["weight"], local_p.get("bias"), layer.stride, layer.padding, layer.dilation,
                    pool.kernel_size, pool.stride, pool.padding,
                )
                # the block's cache sits in the pool's slot; the conv's and the relu's stay empty
                caches += [None, None, cache]
                continue
            local_s = {k: state[key] for k, key in skeys}
            h, cache, s_out = layer.forward(local_p, local_s, h, L.Context(n, train, seed, step))
            caches.append(cache)
            for k, v in s_out.items():
                new_state[f"{n}.{k}"] = v
        return h, ForwardCache(tuple(caches), new_state, _shape(x))

    def backward(self, params, cache: ForwardCache, dout, *, need_dx: bool = True):
        """Backward pass through the chain.

        Parameters
        ----------
        params : dict[str, array]
            The same params as the forward.
        cache : ForwardCache
        dout : array, shape of the forward's ``out``
            ``dL/dout``.
        need_dx : bool
            ``False`` stops before the first parameterised layer's input
            gradient (saves the first conv's col2im); ``dx`` is then None.

        Returns
        -------
        dx : array, shape of x, or None
        grads : dict[str, array], the keys of ``params``
        """
        if not isinstance(cache, ForwardCache) or len(cache.layers) != len(self.layers):
            raise TypeError("cache must be the ForwardCache returned by this model's forward")
        grads: dict[str, Any] = {}
        d = dout
        for i, start in self._backward_plan:
            if not need_dx and i < self._first_param_layer:
                d = None
                break
            if start is not None:  # a conv -> relu -> pool block, i its pool
                n = self.layers[start][0]
                d, dw, db = F.conv2d_relu_max_pool2d_backward(d, cache.layers[i],
                                                              need_dx=need_dx or start > self._first_param_layer)
                grads[f"{n}.weight"] = dw
                if db is not None:
                    grads[f"{n}.bias"] = db
                continue
            n, layer = self.layers[i]
            local_p = {k: params[key] for k, key in self._keys[i][0]}
            layer_need_dx = need_dx or i > self._first_param_layer
            d, g = layer.backward(local_p, cache.layers[i], d, layer_need_dx)
            for k, v in g.items():
                grads[f"{n}.{k}"] = v
        ordered = {k: grads[k] for k in self._param_shapes}
        return (d if need_dx else None), ordered

    def apply(self, params, x, *, state=None, layer_fn: Callable | None = None):
        """Evaluation forward (no caches, no dropout, running BatchNorm statistics).

        Parameters
        ----------
        params : dict[str, array]
        x : array, shape (batch, ...) or (pop, batch, ...)
        state : dict or None
            Buffers, when the model has any.
        layer_fn : callable, optional
            ``layer_fn(name, layer, layer_params, h) -> out or None``; a
            non-None result replaces that layer's own output.  EGGROLL uses
            it to run a perturbed linear layer without forming ``W + A B^T``.

        Returns
        -------
        array, shape (batch, n_out) or (pop, batch, n_out)
        """
        self.check_params(params)
        self._check_x(params, x)
        state = self._prepare_state(state, False)
        h = x
        for (n, layer), (pkeys, skeys) in zip(self.layers, self._keys):
            layer.check_input(h, n)
            local_p = {k: params[key] for k, key in pkeys}
            if layer_fn is not None:
                replaced = layer_fn(n, layer, local_p, h)
                if replaced is not None:
                    h = replaced
                    continue
            local_s = {k: state[key] for k, key in skeys}
            h = layer.forward(local_p, local_s, h, L.Context(n, False, None, 0))[0]
        return h

    def loss_and_grad(self, params, x, y, *, loss="cross_entropy", state=None, train: bool = True,
                      seed: int | None = None, step: int = 0, return_state: bool = False):
        """Mean loss over a batch and the gradient of every parameter, in one call.

        Parameters
        ----------
        params : dict[str, array]
        x : array, shape (batch, ...) or (pop, batch, ...)
        y : array
            ``loss="cross_entropy"``: integer labels (batch,);
            ``loss="mse"``: targets broadcastable to the output.
        loss : {"cross_entropy", "mse"} or callable
            A callable is ``fn(out, y) -> (loss, dout)``.
        state, train, seed, step :
            As for :meth:`forward` (``train`` defaults to True here).
        return_state : bool
            Also return the updated buffers.

        Returns
        -------
        loss : 0-d array
        grads : dict[str, array]
        state : dict[str, array], only with ``return_state=True``
        """
        if not (loss in ("cross_entropy", "mse") or callable(loss)):
            raise ValueError(f"loss={loss!r} must be 'cross_entropy', 'mse' or a callable fn(out, y) -> (loss, dout)")
        if hasattr(x, "shape"):
            if 0 in x.shape:
                raise ValueError(
                    f"x has shape {_shape(x)}: an empty batch; the mean loss over no examples is undefined, "
                    "pass at least one example"
                )
            if type(y) is not type(x):
                _backend.check_same_library(y, x, "y", "x")
        if not (hasattr(x, "shape") and _backend.is_numpy(_namespace(x))):  # forward reports bad x
            return self._loss_and_grad(params, x, y, loss, state, train, seed, step, return_state, None)
        # The step's kernel temporaries come from a per-thread block reused every
        # step (no page faults).  Nothing returned lives there: gradients are
        # fresh GEMM outputs, and the loss runs outside the block on a copy of
        # an output that lives in it.
        with _scratch.step_scratch() as scratch:
            return self._loss_and_grad(params, x, y, loss, state, train, seed, step, return_state, scratch)

    def _loss_and_grad(self, params, x, y, loss, state, train, seed, step, return_state, scratch):
        out, cache = self.forward(params, x, state=state, train=train, seed=seed, step=step)
        if scratch is not None and scratch.holds(out):
            out = out.copy()
        with contextlib.nullcontext() if scratch is None else scratch.paused():
            if loss == "cross_entropy":
                value, dout = losses.softmax_cross_entropy_with_grad(out, y, "mean")
            elif loss == "mse":
                value, dout = losses.mse(out, y), losses.mse_grad(out, y)
            else:
                value, dout = loss(out, y)
        _, grads = self.backward(params, cache, dout, need_dx=False)
        if return_state:
            return value, grads, cache.state
        return value, grads


def serial(*layers) -> Serial:
    """Compose layers in order (see :class:`Serial`).

    Parameters
    ----------
    *layers : Layer or (str, Layer)
        Unnamed layers are called ``prefix + number`` (``fc1``, ``relu1``, ...).

    Returns
    -------
    Serial
        Input x of shape (batch, ...) or (pop, batch, ...); parameter keys ``name + "." + local``.
    """
    return Serial(*layers)


def mlp(sizes=(784, 256, 10), activation: str = "tanh", bias: bool = True, *, weight_init: str | None = None,
        dropout: float = 0.0, batch_norm: bool = False, init: str | None = None) -> Serial:
    """A multilayer perceptron ``fc1, <act>1, fc2, ...`` (no activation after the last layer).

    Parameters
    ----------
    sizes : sequence of int
        ``(n_in, hidden..., n_out)``, at least two entries.
    activation : {"tanh", "relu", "gelu", "sigmoid"}
    bias : bool
    weight_init : str, optional
        Default: ``"he_normal"`` for ReLU/GELU, ``"glorot_uniform"`` otherwise.
    dropout : float
        Adds ``dropout<i>`` after each hidden activation when > 0.
    batch_norm : bool
        Adds ``bn<i>`` (BatchNorm1d) before each hidden activation.
    init : {None, "torch"}
        ``"torch"``: PyTorch's default initialisation for every Linear
        (weights and biases U(+-1/sqrt(n_in))); overrides ``weight_init``.

    Returns
    -------
    Serial
        Layer names ``fc1, [bn1], tanh1, [dropout1], fc2, ...``; input x of
        shape (batch, sizes[0]) or (pop, batch, sizes[0]), output (..., sizes[-1]);
        ``fc<i>.weight`` of shape (sizes[i], sizes[i-1]), ``fc<i>.bias`` (sizes[i],).
    """
    try:
        ok = all(not isinstance(s, bool) and isinstance(s, numbers.Integral) for s in sizes)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"sizes={sizes!r} must be a sequence of ints (n_in, hidden..., n_out)")
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes={sizes} must have at least two positive entries (n_in, ..., n_out)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    check_bool("bias", bias)
    check_bool("batch_norm", batch_norm)
    dropout = check_rate("dropout", dropout)
    if weight_init is None:
        weight_init = "he_normal" if activation in ("relu", "gelu") else "glorot_uniform"
    layers: list = []
    for i in range(len(sizes) - 1):
        layers.append((f"fc{i + 1}", L.Linear(sizes[i], sizes[i + 1], bias=bias, weight_init=weight_init, init=init)))
        if i < len(sizes) - 2:
            if batch_norm:
                layers.append((f"bn{i + 1}", L.BatchNorm1d(sizes[i + 1])))
            layers.append((f"{activation}{i + 1}", L.Activation(activation)))
            if dropout > 0.0:
                layers.append((f"dropout{i + 1}", L.Dropout(dropout)))
    return Serial(*layers)


def cnn(in_channels: int = 1, image_size: int = 28, n_classes: int = 10, channels=(16, 32), *, batch_norm: bool = False,
        init: str | None = None) -> Serial:
    """The small CNN of the EGGROLL literature (defaults: 28x28 grey images, 10 classes).

    ``conv1`` (1->16, 3x3, pad 1), ``relu1``, ``pool1`` (max 2), ``conv2``
    (16->32, 3x3, pad 1), ``relu2``, ``pool2`` (max 2), ``flatten``, ``fc``
    (32*7*7 -> 10).  ``batch_norm=True`` inserts ``bn1``/``bn2`` after each conv.

    Parameters
    ----------
    in_channels : int
    image_size : int
        Side of the square input images; divisible by 4.
    n_classes : int
    channels : (int, int)
        Output channels of conv1 and conv2.
    batch_norm : bool
    init : {None, "torch"}
        ``"torch"``: PyTorch's default initialisation for every Conv2d and
        Linear (weights and biases U(+-1/sqrt(fan_in))).

    Returns
    -------
    Serial
        Input x of shape (batch, in_channels, image_size, image_size) or
        (pop, batch, in_channels, image_size, image_size); output (..., n_classes).
    """
    c1, c2 = (int(c) for c in channels)
    if image_size % 4:
        raise ValueError(f"image_size={image_size} must be divisible by 4 (two 2x2 max pools)")
    layers = [("conv1", L.Conv2d(in_channels, c1, 3, padding=1, init=init))]
    if batch_norm:
        layers.append(("bn1", L.BatchNorm2d(c1)))
    layers += [("relu1", L.ReLU()), ("pool1", L.MaxPool2d(2)), ("conv2", L.Conv2d(c1, c2, 3, padding=1, init=init))]
    if batch_norm:
        layers.append(("bn2", L.BatchNorm2d(c2)))
    side = image_size // 4
    layers += [
        ("relu2", L.ReLU()),
        ("pool2", L.MaxPool2d(2)),
        ("flatten", L.Flatten()),
        ("fc", L.Linear(c2 * side * side, n_classes, weight_init="glorot_uniform", init=init)),
    ]
    return Serial(*layers)


def residual_mlp(n_in: int, n_out: int, *, width: int = 64, depth: int = 2, hidden: int | None = None,
                 activation: str = "silu", norm: bool = True, affine: bool = True, final_norm: bool = True,
                 init: str | None = None) -> Serial:
    """Pre-norm residual MLP (the EGGROLL experiments' blocks).

    ``fc_in`` (n_in -> width), then ``depth`` blocks ``block<i>`` =
    ``Residual(ln, fc1 (width -> hidden), <activation>, fc2 (hidden -> width))``
    (``y = x + fc2(act(fc1(ln(x))))``), then ``ln_out`` and ``fc_out``
    (width -> n_out).

    Parameters
    ----------
    n_in, n_out : int
    width : int
        Residual stream width.
    depth : int >= 0
        Number of residual blocks.
    hidden : int, optional
        Inner width of each block (default ``4 * width``).
    activation : {"silu", "gelu", "relu", "tanh", "sigmoid"}
    norm : bool
        LayerNorm ``ln`` at the start of each block (pre-norm).
    affine : bool
        LayerNorms with learnable weight and bias.
    final_norm : bool
        LayerNorm ``ln_out`` before ``fc_out``.
    init : {None, "torch"}
        ``"torch"``: PyTorch's default initialisation of every Linear.

    Returns
    -------
    Serial
        Input x of shape (batch, n_in) or (pop, batch, n_in), output (..., n_out);
        keys ``fc_in.weight``, ``block1.ln.weight``, ``block1.fc1.weight`` (hidden, width), ...
    """
    n_in, n_out, width, depth = int(n_in), int(n_out), int(width), int(depth)
    hidden = 4 * width if hidden is None else int(hidden)
    if min(n_in, n_out, width, hidden) < 1 or depth < 0:
        raise ValueError(f"residual_mlp sizes n_in={n_in}, n_out={n_out}, width={width}, hidden={hidden} must be positive "
                         f"and depth={depth} >= 0")
    layers: list = [("fc_in", L.Linear(n_in, width, init=init))]
    for i in range(depth):
        body = [("ln", L.LayerNorm(width, affine=affine))] if norm else []
        body += [("fc1", L.Linear(width, hidden, init=init)), (activation, L.Activation(activation)),
                 ("fc2", L.Linear(hidden, width, init=init))]
        layers.append((f"block{i + 1}", L.Residual(*body)))
    if final_norm:
        layers.append(("ln_out", L.LayerNorm(width, affine=affine)))
    layers.append(("fc_out", L.Linear(width, n_out, init=init)))
    return Serial(*layers)
