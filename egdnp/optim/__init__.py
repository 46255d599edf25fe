"""Optimisers as pairs of pure functions over explicit state, and EGD.

Contract (the optax shape)::

    from egdnp import optim
    opt = optim.sgd(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    state = opt.init(params)                           # params: dict[str, array]
    params, state = opt.update(grads, state, params)   # pure: new dicts, inputs untouched

* :func:`sgd`   -- ``torch.optim.SGD`` (dampening 0), momentum, Nesterov, weight decay;
* :func:`adam`  -- ``torch.optim.Adam`` (L2 decay in the gradient, bias correction, amsgrad);
* :func:`adamw` -- ``torch.optim.AdamW`` (decoupled decay);
* :mod:`egdnp.optim.schedules` -- learning-rate/sigma schedules as plain callables;
* :mod:`egdnp.optim.egd` -- Evolutionary Gradient Descent: ``egd.egd(...)`` (pure
  ``init``/``update``) and the torch-style wrapper :class:`EGD`.

``lr`` is a float or a callable ``step -> float`` (``step`` = updates done so
far, 0-based).  States are NamedTuples; :func:`save_state`/:func:`load_state`
write and read them as one ``.npz`` file and a reloaded state resumes bit for bit.
"""

from __future__ import annotations

from . import schedules
from ._base import Optimizer, load_state, register_state_type, save_state
from .adam import AdamState, adam, adamw
from .sgd import SGDState, sgd
from . import egd  # noqa: E402  (the module; the functional factory is egd.egd)
from .egd import EGD, EGDState, EvolutionReport

__all__ = [
    "Optimizer",
    "SGDState",
    "AdamState",
    "sgd",
    "adam",
    "adamw",
    "schedules",
    "save_state",
    "load_state",
    "register_state_type",
    "egd",
    "EGD",
    "EGDState",
    "EvolutionReport",
]
