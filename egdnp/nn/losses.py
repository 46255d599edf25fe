"""Losses with their gradients side by side, and accuracy.

Every loss takes predictions with any leading axes, so a population of
models scored on one batch -- logits of shape ``(pop, batch, C)`` with labels
of shape ``(batch,)`` -- gives per-member, per-example losses with
``reduction="none"`` (shape ``(pop, batch)``) without a Python loop.

``reduction``: ``"mean"`` averages over every example (all leading axes),
``"sum"`` adds them up, ``"none"`` returns one loss per example.  The
``*_grad`` function of a loss returns ``dL/dpredictions`` for the same
reduction (``"none"`` means the gradient of the *sum* of the per-example
losses, i.e. each example's own gradient).
"""

from __future__ import annotations

from .. import _backend
from .functional import _kernels, _namespace

__all__ = [
    "softmax_cross_entropy",
    "softmax_cross_entropy_grad",
    "softmax_cross_entropy_with_grad",
    "log_softmax",
    "softmax",
    "mse",
    "mse_grad",
    "accuracy",
    "REDUCTIONS",
]

REDUCTIONS = ("mean", "sum", "none")

_EMPTY = ("{what} holds an empty batch (examples of shape {shape}); a mean over no examples is undefined: pass "
          "at least one example, or reduction='sum'")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")


def _reduce(xp, per_example, reduction: str, what: str = "logits"):
    if reduction == "none":
        return per_example
    total = xp.sum(per_example)
    if reduction == "sum":
        return total
    count = 1
    for s in per_example.shape:
        count *= int(s)
    if count == 0:
        raise ValueError(_EMPTY.format(what=what, shape=tuple(per_example.shape)))
    return total / float(count)


def _check_labels(xp, logits, labels):
    """Validate integer labels in [0, C) whose shape broadcasts against logits.shape[:-1]."""
    if not hasattr(labels, "shape") or not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(
            f"labels must be an integer array (got {getattr(labels, 'dtype', type(labels).__name__)}); "
            "pass class indices, e.g. xp.asarray(y, dtype=xp.int64)"
        )
    if not xp.isdtype(logits.dtype, "real floating"):
        raise TypeError(f"logits must be a floating array (got dtype {logits.dtype})")
    lead = tuple(int(s) for s in logits.shape[:-1])
    lshape = tuple(int(s) for s in labels.shape)
    # Labels broadcast against the trailing axes of logits' leading shape: (batch,) vs (pop, batch).
    if len(lshape) > len(lead) or any(a != b and a != 1 for a, b in zip(reversed(lshape), reversed(lead))):
        raise ValueError(
            f"labels have shape {lshape} but logits have shape {tuple(logits.shape)}; labels must "
            f"broadcast against {lead} (e.g. shape {lead[-1:] if lead else ()})"
        )
    n_classes = int(logits.shape[-1])
    if bool(xp.any((labels < 0) | (labels >= n_classes))):
        lo, hi = int(xp.min(labels)), int(xp.max(labels))
        raise ValueError(f"labels range over [{lo}, {hi}] but must lie in [0, {n_classes - 1}] for {n_classes} classes")
    return n_classes


def _one_hot(xp, labels, n_classes: int, dtype, device):
    classes = xp.arange(n_classes, device=device)
    return xp.astype(xp.expand_dims(labels, axis=-1) == xp.astype(classes, labels.dtype), dtype)


def log_softmax(logits):
    """``logits - logsumexp(logits)`` over the last axis, computed stably.

    Parameters
    ----------
    logits : array, shape (..., C)

    Returns
    -------
    array, shape (..., C)
    """
    xp = _namespace(logits)
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))


def softmax(logits):
    """Softmax over the last axis, computed stably.

    Parameters
    ----------
    logits : array, shape (..., C)

    Returns
    -------
    array, shape (..., C); each row sums to 1
    """
    xp = _namespace(logits)
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=-1, keepdims=True)


def softmax_cross_entropy(logits, labels, reduction: str = "mean"):
    """Cross-entropy of softmax(logits) against integer labels (log-sum-exp, stable).

    Parameters
    ----------
    logits : array, shape (..., C)
        E.g. (batch, C) or (pop, batch, C).
    labels : integer array, shape broadcastable to logits.shape[:-1]
        E.g. (batch,) against logits (pop, batch, C).  Values in [0, C).
    reduction : {"mean", "sum", "none"}

    Returns
    -------
    array
        Scalar for "mean"/"sum"; shape ``logits.shape[:-1]`` for "none".
    """
    return softmax_cross_entropy_with_grad(logits, labels, reduction, need_grad=False)[0]


def softmax_cross_entropy_grad(logits, labels, reduction: str = "mean"):
    """Gradient of :func:`softmax_cross_entropy`: ``(softmax(logits) - one_hot(labels)) / count``.

    Parameters and reduction are those of :func:`softmax_cross_entropy`; ``count``
    is the number of examples for "mean" and 1 otherwise.

    Returns
    -------
    array, shape of logits
    """
    return softmax_cross_entropy_with_grad(logits, labels, reduction)[1]


def softmax_cross_entropy_with_grad(logits, labels, reduction: str = "mean", *, need_grad: bool = True, impl: str = "auto"):
    """Loss and gradient of :func:`softmax_cross_entropy` from one softmax.

    ``impl="auto"`` runs a one-pass Numba kernel for NumPy logits of shape
    (batch, C) with labels (batch,); ``"numba"`` insists on it (an error for
    other arguments); ``"array_api"`` forces the array-API code (the oracle the
    tests compare the kernel with).

    Parameters
    ----------
    logits : array, shape (..., C)
    labels : integer array, shape broadcastable to logits.shape[:-1], values in [0, C)
    reduction : {"mean", "sum", "none"}
    need_grad : bool
    impl : {"auto", "numba", "array_api"}

    Returns
    -------
    loss : array (see :func:`softmax_cross_entropy`)
    dlogits : array, shape of logits, or None when ``need_grad`` is False
    """
    _check_reduction(reduction)
    if type(labels) is not type(logits):
        _backend.check_same_library(labels, logits, "labels", "logits")
    xp = _namespace(logits, labels)
    usable = (  # is_numpy first: dtype.kind is NumPy's
        _backend.is_numpy(xp) and len(logits.shape) == 2 and labels.shape == logits.shape[:1]
        and labels.dtype.kind in "iu" and logits.dtype.kind == "f" and labels.shape[0] > 0
    )
    needs = "float logits of shape (B, C) with B >= 1 and integer labels of shape (B,)"
    if _backend.resolve_impl(xp, impl, usable=usable, needs=needs) == "numba":
        # Numba fast path for the common (batch, C) case of NumPy arrays: one
        # pass, no one-hot matrix.
        _cpu = _kernels()
        count = int(labels.shape[0])
        scale = 1.0 / count if reduction == "mean" else 1.0
        per_example, grad, bad = _cpu.softmax_xent(logits, labels, scale)
        if bad:
            _check_labels(xp, logits, labels)  # raises with the label range
        if reduction == "none":
            return per_example, (grad if need_grad else None)
        # per_example.sum() is the np.sum that _reduce's xp.sum runs, minus its wrapper
        total = per_example.sum()
        return (total / float(count) if reduction == "mean" else total), (grad if need_grad else None)
    n_classes = _check_labels(xp, logits, labels)
    one_hot = _one_hot(xp, labels, n_classes, logits.dtype, _backend.device_of(logits))
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    exp = xp.exp(shifted)
    sum_exp = xp.sum(exp, axis=-1, keepdims=True)
    log_z = xp.log(sum_exp)
    # logits of the true class, picked with a one-hot mask (the array API has no fancy indexing)
    true_logit = xp.sum(shifted * one_hot, axis=-1, keepdims=True)
    per_example = xp.squeeze(log_z - true_logit, axis=-1)
    if tuple(per_example.shape) != tuple(logits.shape[:-1]):  # labels broadcast wider than logits
        raise ValueError(f"labels of shape {tuple(labels.shape)} broadcast beyond logits' leading shape")
    loss = _reduce(xp, per_example, reduction, "logits")
    if not need_grad:
        return loss, None
    grad = exp / sum_exp - one_hot
    if reduction == "mean":
        count = 1
        for s in per_example.shape:
            count *= int(s)
        grad = grad / float(max(count, 1))
    return loss, grad


def mse(pred, target, reduction: str = "mean"):
    """Mean squared error ``(pred - target)**2`` averaged over the last axis per example.

    Parameters
    ----------
    pred : array, shape (..., D)
    target : array, shape broadcastable to pred (e.g. (batch, D) against (pop, batch, D))
    reduction : {"mean", "sum", "none"}
        Over the examples (the leading axes of pred).

    Returns
    -------
    array: scalar, or shape pred.shape[:-1] for "none"
    """
    _check_reduction(reduction)
    _check_target(pred, target)
    xp = _namespace(pred, target)
    if int(pred.shape[-1]) == 0:
        raise ValueError(f"pred has shape {tuple(pred.shape)}: no outputs to compare (last axis D = 0)")
    diff = pred - target
    per_example = xp.mean(diff * diff, axis=-1)
    return _reduce(xp, per_example, reduction, "pred")


def mse_grad(pred, target, reduction: str = "mean"):
    """Gradient of :func:`mse` with respect to ``pred``: ``2 (pred - target) / (D * count)``.

    Parameters
    ----------
    pred : array, shape (..., D)
    target : array, shape broadcastable to pred
    reduction : {"mean", "sum", "none"}
        ``count`` is the number of examples for "mean" and 1 otherwise.

    Returns
    -------
    array, shape of pred
    """
    _check_reduction(reduction)
    _check_target(pred, target)
    xp = _namespace(pred, target)
    d = int(pred.shape[-1])
    if d == 0:
        raise ValueError(f"pred has shape {tuple(pred.shape)}: no outputs to compare (last axis D = 0)")
    grad = (pred - target) * (2.0 / d)
    if reduction == "mean":
        count = 1
        for s in pred.shape[:-1]:
            count *= int(s)
        if count == 0:
            raise ValueError(_EMPTY.format(what="pred", shape=tuple(pred.shape[:-1])))
        grad = grad / float(count)
    return xp.broadcast_to(grad, pred.shape) if tuple(grad.shape) != tuple(pred.shape) else grad


def _check_target(pred, target):
    if type(target) is not type(pred):
        _backend.check_same_library(target, pred, "target", "pred")
    ps, ts = tuple(pred.shape), tuple(target.shape)
    if len(ts) > len(ps) or any(a != b and a != 1 for a, b in zip(reversed(ts), reversed(ps))):
        raise ValueError(f"target has shape {ts} but pred has shape {ps}; target must broadcast against pred")


def accuracy(logits, labels):
    """Fraction of examples whose arg-max logit is the label.

    Parameters
    ----------
    logits : array, shape (..., C)
    labels : integer array, broadcastable to logits.shape[:-1]

    Returns
    -------
    array
        Shape ``logits.shape[:-2]``: one accuracy per population member for
        (pop, batch, C) logits, a scalar for (batch, C).
    """
    xp = _namespace(logits, labels)
    _check_labels(xp, logits, labels)
    pred = xp.argmax(logits, axis=-1)
    hits = xp.astype(pred == xp.astype(labels, pred.dtype), logits.dtype)
    return xp.mean(hits, axis=-1)
