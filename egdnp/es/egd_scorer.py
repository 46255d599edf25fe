"""EGD's population scorer for ``egdnp.nn`` models: a whole evolution cycle in population forwards.

The spec's EGD scores one candidate at a time with ``closure(params)``.  Every
member of a cycle is scored on the same batch, so for an ``egdnp.nn.Serial``
model the cycle can score all of them in population-batched forwards
(:func:`model_scorer`, egdnp's extension beyond the EvoSGD spec)::

    from egdnp.es.egd_scorer import model_scorer
    scorer = model_scorer(model, x, y, loss="cross_entropy")     # or batch=fn(cycle, phase) -> (x, y)
    params, state, report = opt.update(grads, state, params, scorer=scorer)

How a member is evaluated
-------------------------
* ``mutation="lowrank"``: member ``m`` evaluates a matrix or filter bank at
  ``W + (A_m B_mᵀ).reshape(shape)``, EGD's low-rank mutation with
  ``A_m = a_m * scale / sqrt(rank)`` and ``B_m = b_m`` from
  :meth:`egdnp.optim.egd.Mutations.factors`.  These are handed to EGGROLL's
  perturbed forwards (:func:`egdnp.es.layers.perturbed_model_forward`) as
  explicit factors (``LowRankNoise(A, B)``, one "pair" per member, sign
  ``+1``): ``x Wᵀ`` runs once for the shared batch, each member adds
  ``(x B_m) A_mᵀ``; no candidate matrix is ever formed.  Vectors (biases,
  batch-norm scales) add their scaled noise (``FullNoise``).  Conv layers
  with a per-member input run the fast ``egdnp.nn`` convolution with the
  member's ``r`` columns of ``B`` appended as extra filters
  (``conv(x, [W; B_mᵀ])``, then ``A_m`` mixes the extra channels), the same
  sum as the perturbed product.
* ``mutation="full"``: the mutated tensors of a chunk of members are stacked
  (``Mutations.candidates``, bit for bit the per-candidate path's tensors) and
  every Linear layer runs one batched product ``h @ W_stackᵀ``; conv layers
  run the member's filters; batch norm its member's scale and shift.

Members ``0`` (the base) and ``-1`` (the recombined parameters) are the
parameters themselves (zero factors).  Batch norm uses its running
statistics (eval mode), like :meth:`egdnp.nn.Serial.apply`.

Memory
------
Members are scored in chunks: ``chunk = max(1, memory_budget // per_member)``
with ``per_member = batch * itemsize * (sum of the layer outputs + conv
im2col columns)`` (plus the stacked mutated tensors with full-rank
mutations), estimated once per input shape from a one-example forward.  The
shared products (``x Wᵀ`` and ``x B`` of the first layer) are computed once
per call and shared by the chunks.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import _backend
from ..nn import functional as F
from ..nn import layers as L
from ..nn import losses as nn_losses
from .layers import member_range, perturbed_model_forward
from .perturbations import FullNoise, LowRankNoise, Perturbations

__all__ = ["ModelScorer", "model_scorer", "DEFAULT_MEMORY_BUDGET"]

DEFAULT_MEMORY_BUDGET = 64 * 2**20  # bytes of activations per member chunk
LOSSES = {"cross_entropy": nn_losses.softmax_cross_entropy, "mse": nn_losses.mse}
_SUPPORTED = (L.Linear, L.Conv2d, L.BatchNorm1d, L.BatchNorm2d)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class ModelScorer:
    """Population scorer of an ``egdnp.nn`` model for EGD (see the module docstring).

    Call it as ``scorer(mutations)``; it returns the losses of
    ``mutations.members`` as an array of shape ``(n,)``.

    Parameters
    ----------
    model : egdnp.nn.Serial
    x : array, shape (batch, ...), optional
        The batch every member is scored on (with ``y``); or pass ``batch``.
    y : array, optional
        Labels ``(batch,)`` for cross-entropy, targets for MSE.
    loss : {"cross_entropy", "mse"} or callable
        A callable is ``loss(out, y) -> scalar`` on one member's output
        ``(batch, n_out)`` -- e.g. any loss of :mod:`egdnp.nn.losses` -- the
        loss the per-candidate closure would compute.
    batch : callable(cycle, phase) -> (x, y), optional
        Chooses the batch of a cycle's scoring phase (``"score"`` or
        ``"rescore"``) instead of a fixed ``x, y``.
    state : dict, optional
        Model buffers (BatchNorm running statistics, eval mode).
    memory_budget : int
        Bytes of activations per chunk of members (see the module docstring);
        at least one member per chunk.
    impl : {"auto", "array_api"}
        ``"array_api"`` skips the NumPy fast paths (the oracle in tests).
    """

    def __init__(self, model, x=None, y=None, loss: Any = "cross_entropy", *, batch: Callable | None = None,
                 state: dict | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET, impl: str = "auto"):
        if not hasattr(model, "layers") or not hasattr(model, "apply"):
            raise TypeError(f"model={model!r} must be an egdnp.nn.Serial (e.g. egdnp.nn.mlp(...))")
        if batch is None:
            if x is None or y is None:
                raise ValueError("pass the batch every member is scored on, x=... and y=..., or batch=fn(cycle, phase)")
        else:
            if not callable(batch):
                raise TypeError(f"batch={batch!r} must be callable(cycle, phase) -> (x, y)")
            if x is not None or y is not None:
                raise ValueError("pass x and y, or batch=fn(cycle, phase), not both")
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"loss={loss!r} must be one of {tuple(LOSSES)} or a callable loss(out, y) -> scalar")
            loss_fn = LOSSES[loss]
        elif callable(loss):
            loss_fn = loss
        else:
            raise TypeError(f"loss={loss!r} must be one of {tuple(LOSSES)} or a callable loss(out, y) -> scalar")
        if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
            raise ValueError(f"memory_budget={memory_budget!r} must be a positive int (bytes per member chunk)")
        if impl not in ("auto", "array_api"):
            raise ValueError(f"impl={impl!r} must be 'auto' or 'array_api'")
        self.model, self.x, self.y, self.batch = model, x, y, batch
        self.loss, self.loss_fn, self.state = loss, loss_fn, state
        self.memory_budget, self.impl = int(memory_budget), impl
        self._owners = {f"{n}.{k}": layer for n, layer in model.layers for k in layer.param_shapes()}
        self._per_member: dict = {}
        self.last_chunk = None  # members per chunk of the last call (for reports and tests)

    def __repr__(self) -> str:
        return f"ModelScorer(loss={self.loss!r}, memory_budget={self.memory_budget})"

    # -- the batch ------------------------------------------------------------------
    def _batch(self, mutations):
        if self.batch is None:
            return self.x, self.y
        got = self.batch(mutations.cycle, mutations.phase)
        if not isinstance(got, tuple) or len(got) != 2:
            raise TypeError(f"batch(cycle, phase) returned {type(got).__name__}; it must return a pair (x, y)")
        return got

    # -- memory ---------------------------------------------------------------------
    def member_bytes(self, params: dict, x, stacked_names=()) -> int:
        """Estimated bytes one member needs: activations (and im2col columns) of ``x``, plus its stacked tensors.

        Parameters
        ----------
        params : dict[str, array]
        x : array, shape (batch, ...)
        stacked_names : sequence of str
            Tensors stacked per member (full-rank mutations).

        Returns
        -------
        int
        """
        key = (tuple(int(s) for s in x.shape[1:]), str(x.dtype))
        per_example = self._per_member.get(key)
        if per_example is None:
            sizes = []

            def record(name, layer, local, h):
                sizes.append(_prod(h.shape[1:]))
                if isinstance(layer, L.Conv2d):
                    kh, kw = layer.kernel_size
                    c = int(h.shape[-3])
                    oh = F.conv_output_size(int(h.shape[-2]), kh, layer.stride[0], layer.padding[0], layer.dilation[0])
                    ow = F.conv_output_size(int(h.shape[-1]), kw, layer.stride[1], layer.padding[1], layer.dilation[1])
                    sizes.append(c * kh * kw * oh * (ow + 2 * layer.padding[1]))
                return None

            out = self.model.apply(params, x[:1, ...], state=self.state, layer_fn=record)
            per_example = sum(sizes) + _prod(out.shape[1:])
            self._per_member[key] = per_example
        itemsize = _backend.numpy_dtype(_backend.array_namespace(x), x.dtype).itemsize
        stacked = sum(_prod(params[n].shape) for n in stacked_names)
        return (int(x.shape[0]) * per_example + stacked) * itemsize

    def chunk_size(self, params: dict, x, n_members: int, stacked_names=()) -> int:
        """Members per chunk under :attr:`memory_budget` (at least 1, at most ``n_members``).

        Parameters
        ----------
        params : dict[str, array]
        x : array, shape (batch, ...)
        n_members : int
        stacked_names : sequence of str

        Returns
        -------
        int
        """
        per = max(1, self.member_bytes(params, x, stacked_names))
        return max(1, min(int(n_members), self.memory_budget // per))

    # -- scoring --------------------------------------------------------------------
    def __call__(self, mutations):
        """Losses of ``mutations.members``.

        Parameters
        ----------
        mutations : egdnp.optim.egd.Mutations

        Returns
        -------
        array, shape (len(mutations.members),)
        """
        params = mutations.params
        self.model.check_params(params)
        for name in mutations.mutated:
            layer = self._owners.get(name)
            if not isinstance(layer, _SUPPORTED):
                kind = type(layer).__name__ if layer is not None else "no"
                raise ValueError(
                    f"EGD mutates {name!r}, a parameter of a {kind} layer, which has no population forward "
                    f"(supported: Linear, Conv2d, BatchNorm1d/2d); score with closure=... instead, or leave it out "
                    "with mutate_filter"
                )
        x, y = self._batch(mutations)
        xp = _backend.array_namespace(x)
        members = mutations.members
        n = len(members)
        if all(m <= 0 for m in members):
            # only unmutated members (the base, the recombined parameters): the plain forward, as the closure runs it
            self.last_chunk = n
            loss = xp.reshape(xp.asarray(self.loss_fn(self.model.apply(params, x, state=self.state), y)), ())
            return xp.stack([loss] * n, axis=0)
        lowrank = [nm for nm in mutations.mutated if mutations.is_lowrank(nm)]
        full = [nm for nm in mutations.mutated if nm not in lowrank]
        if mutations.mutation == "lowrank":
            chunk = self.chunk_size(params, x, n)
            outs = self._lowrank_chunks(mutations, params, x, lowrank, full, chunk)
        else:
            chunk = self.chunk_size(params, x, n, full)
            outs = self._full_chunks(mutations, params, x, full, chunk)
        self.last_chunk = chunk
        losses = []
        for out in outs:
            for i in range(int(out.shape[0])):
                losses.append(xp.reshape(xp.asarray(self.loss_fn(out[i, ...], y)), ()))
        return xp.stack(losses, axis=0)

    def _lowrank_chunks(self, mutations, params, x, lowrank, full, chunk):
        n = len(mutations.members)
        noise = {}
        for name in lowrank:
            a, b = mutations.factors(name)
            noise[name] = LowRankNoise(a, b, tuple(int(s) for s in params[name].shape))
        for name in full:
            noise[name] = FullNoise(mutations.noise(name), tuple(int(s) for s in params[name].shape))
        # one "pair" per member, sign +1: the factors are EGD's, already scaled
        perts = Perturbations(noise=noise, pair=tuple(range(n)), sign=(1.0,) * n, pop_size=n, rank=mutations.rank,
                              sigma=1.0, seed=None, generation=mutations.cycle, noise_generation=mutations.cycle,
                              convention="egdnp", layout="none", external=frozenset(noise))
        cache: dict = {}
        impl = self.impl
        # the NumPy layer_fn below is this scorer's "numba" implementation (NumPy arrays, impl="auto")
        fast_conv = _backend.resolve_impl(_backend.array_namespace(x), impl) == "numba"
        outs = []
        for start in range(0, n, chunk):
            members = (start, min(n, start + chunk))
            layer_fn = _numpy_fast_fn(perts, members, cache) if fast_conv else None
            outs.append(perturbed_model_forward(self.model, params, x, perts, members=members, state=self.state,
                                                impl=impl, cache=cache, layer_fn=layer_fn))
        return outs

    def _full_chunks(self, mutations, params, x, full, chunk):
        n = len(mutations.members)
        xp = _backend.array_namespace(x)
        outs = []
        for start in range(0, n, chunk):
            members = mutations.members[start:start + chunk]
            stacked = {name: mutations.candidates(name, members) for name in full}
            out = self.model.apply(params, x, state=self.state,
                                   layer_fn=_stacked_fn(stacked, self.state, len(members)))
            if len(out.shape) == len(x.shape[:1]) + 1:  # nothing mutated on the way: shared output
                out = xp.broadcast_to(out[None, ...], (len(members),) + tuple(int(s) for s in out.shape))
            outs.append(out)
        return outs


def model_scorer(model, x=None, y=None, loss: Any = "cross_entropy", *, batch: Callable | None = None,
                 state: dict | None = None, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                 impl: str = "auto") -> ModelScorer:
    """A population scorer for EGD from ``(model, x, y, loss)``: ``opt.update(..., scorer=model_scorer(...))``.

    Parameters
    ----------
    model : egdnp.nn.Serial
    x : array, shape (batch, ...), optional
    y : array, optional
        Labels (batch,) or targets (batch, n_out).
    loss : {"cross_entropy", "mse"} or callable(out, y) -> scalar
    batch : callable(cycle, phase) -> (x, y), optional
        Instead of a fixed ``x, y``.
    state : dict, optional
        BatchNorm running statistics.
    memory_budget : int
        Bytes of activations per member chunk.
    impl : {"auto", "array_api"}

    Returns
    -------
    ModelScorer
        ``scorer(mutations) -> losses`` of shape (len(mutations.members),).
    """
    return ModelScorer(model, x, y, loss, batch=batch, state=state, memory_budget=memory_budget, impl=impl)


# ----------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------
def _numpy_fast_fn(perts, members, cache):
    """NumPy layer_fn of the low-rank path: the conv layers of :func:`_lowrank_conv_fn`, and ReLU in place.

    A ReLU right after a Linear or Conv2d layer overwrites that layer's output
    (a fresh array of this forward, used by nothing else) instead of
    allocating another ``(chunk, batch, width)`` array: the same numbers
    (``max`` is exact), one large temporary less -- on a small VM the
    first-touch page faults of such temporaries cost more than the arithmetic.
    """
    conv = _lowrank_conv_fn(perts, members, cache)
    prev = [None]

    def layer_fn(name, layer, local, h):
        before, prev[0] = prev[0], layer
        if (isinstance(layer, L.Activation) and layer.kind == "relu" and isinstance(before, (L.Linear, L.Conv2d))
                and h.flags.writeable):
            import numpy as np  # NumPy-only fast path (dispatched on is_numpy)

            return np.maximum(h, h.dtype.type(0), out=h)
        return conv(name, layer, local, h)

    return layer_fn


def _lowrank_conv_fn(perts, members, cache):
    """NumPy: conv layers (low-rank filter banks) through the fast ``egdnp.nn`` convolution.

    * shared input (the model's first layer): ``conv(x, W)`` and
      ``conv(x, B_iᵀ)`` for every member's ``r`` filters run once per call;
      member ``i`` adds ``A_i`` times its ``r`` channels (``x Wᵀ + (x B_i) A_iᵀ``
      on the patches, without forming ``W + A_i B_iᵀ``);
    * per-member input: nothing is shared, so member ``i`` runs one
      convolution with its filter bank ``W + A_i B_iᵀ`` (``C_out x C_in kh kw``
      numbers, formed as the per-candidate path forms it).

    Every other layer is left to :func:`perturbed_model_forward`.
    """
    start, stop = member_range(perts, members)

    def layer_fn(name, layer, local, h):
        if not isinstance(layer, L.Conv2d):
            return None
        wk, bk = f"{name}.weight", f"{name}.bias"
        wn, bn = perts.noise.get(wk), perts.noise.get(bk)
        if wn is None and bn is None:
            return None
        if len(h.shape) == 4:
            return _shared_conv(h, local["weight"], local.get("bias"), wn, bn, start, stop, layer, cache, wk)
        return _member_conv(h, local["weight"], local.get("bias"), wn, bn, start, layer)

    return layer_fn


def _member_bias(bias, bn, m, c_out, like):
    if bias is None and bn is None:
        return None
    if bn is None:
        return bias
    return bn.eps[m] if bias is None else bias + bn.eps[m]


def _shared_conv(x, weight, bias, wn, bn, start, stop, layer, cache, key):
    import numpy as np  # NumPy-only fast path (dispatched on is_numpy)

    held = cache.get(("egd-conv", key))
    if held is None or held[0] is not x or held[1] is not weight:
        base = F.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation)  # (batch, C_out, oh, ow)
        xb = None
        if wn is not None:
            n_all, _, r = (int(s) for s in wn.B.shape)
            filters = np.ascontiguousarray(np.transpose(wn.B, (0, 2, 1))).reshape((n_all * r,) + tuple(weight.shape[1:]))
            xb = F.conv2d(x, filters, None, layer.stride, layer.padding, layer.dilation)  # (batch, n r, oh, ow)
        held = (x, weight, base, xb)
        cache[("egd-conv", key)] = held
    base, xb = held[2], held[3]
    nb, c_out, oh, ow = (int(s) for s in base.shape)
    out = np.empty((stop - start, nb, c_out, oh, ow), dtype=base.dtype)
    for i, m in enumerate(range(start, stop)):
        if wn is not None:
            r = int(wn.A.shape[2])
            z = np.ascontiguousarray(xb[:, m * r:(m + 1) * r]).reshape(nb, r, oh * ow)
            np.matmul(wn.A[m], z, out=out[i].reshape(nb, c_out, oh * ow))
            out[i] += base
        else:
            out[i] = base
        b = _member_bias(bias, bn, m, c_out, base)
        if b is not None:
            out[i] += b.reshape(1, c_out, 1, 1)
    return out


def _member_conv(h, weight, bias, wn, bn, start, layer):
    import numpy as np  # NumPy-only fast path (dispatched on is_numpy)

    c_out = int(weight.shape[0])
    w2 = weight.reshape(c_out, -1)
    out = None
    for i in range(int(h.shape[0])):
        m = start + i
        w_m = weight
        if wn is not None:
            # W + A Bᵀ as the per-candidate path builds it: the product, then the base added
            w_m = np.matmul(wn.A[m], np.transpose(wn.B[m], (1, 0)))
            w_m += w2
            w_m = w_m.reshape(weight.shape)
        y = F.conv2d(h[i], w_m, _member_bias(bias, bn, m, c_out, weight), layer.stride, layer.padding,
                     layer.dilation)
        if out is None:
            out = np.empty((int(h.shape[0]),) + tuple(y.shape), dtype=y.dtype)
        out[i] = y
    return out


def _stacked_fn(stacked: dict, state, n: int):
    """layer_fn for full-rank mutations: Linear/Conv2d/BatchNorm with per-member (stacked) tensors."""

    def layer_fn(name, layer, local, h):
        wk, bk = f"{name}.weight", f"{name}.bias"
        if wk not in stacked and bk not in stacked:
            return None
        xp = _backend.array_namespace(h)
        w = stacked.get(wk, local.get("weight"))
        b = stacked.get(bk, local.get("bias"))
        w_st, b_st = wk in stacked, bk in stacked
        if isinstance(layer, L.Linear):
            shared = len(h.shape) == 2
            if w_st:
                out = xp.matmul(h, xp.permute_dims(w, (0, 2, 1)))  # (n, batch, m): one batched product
            else:
                out = F.linear(h, w)
                if shared:
                    out = xp.broadcast_to(out[None, ...], (n,) + tuple(int(s) for s in out.shape))
            if b is not None:
                out = out + (b[:, None, :] if b_st else b)
            return out
        if isinstance(layer, L.Conv2d):
            shared = len(h.shape) == 4
            outs = []
            for i in range(n):
                hi = h if shared else h[i, ...]
                wi = w[i, ...] if w_st else w
                bi = None if b is None else (b[i, ...] if b_st else b)
                outs.append(F.conv2d(hi, wi, bi, layer.stride, layer.padding, layer.dilation))
            return xp.stack(outs, axis=0)
        if isinstance(layer, (L.BatchNorm1d, L.BatchNorm2d)):
            fa = -1 if isinstance(layer, L.BatchNorm1d) else -3
            nd = len(h.shape)
            features = int(h.shape[fa])
            bshape = tuple(features if a == fa % nd else 1 for a in range(nd))
            xhat = (h - xp.reshape(state[f"{name}.running_mean"], bshape)) / xp.sqrt(
                xp.reshape(state[f"{name}.running_var"], bshape) + float(layer.eps))
            shared = nd == (2 if fa == -1 else 4)
            if shared:
                xhat = xhat[None, ...]
            mshape = (n,) + tuple(features if a == (fa % (nd + shared)) else 1 for a in range(1, nd + shared))

            def vec(v, st):
                return xp.reshape(v, mshape) if st else xp.reshape(v, (1,) + mshape[1:])

            return xhat * vec(w, w_st) + vec(b, b_st)
        raise ValueError(f"parameter {wk if w_st else bk!r} belongs to a {type(layer).__name__} layer, which has no "
                         "population forward; score with closure=... instead")

    return layer_fn
