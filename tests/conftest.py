"""Shared fixtures: the ``xp`` fixture runs a test on every usable backend.

* ``numpy``            -- always (through array-api-compat's NumPy namespace);
* ``array_api_strict`` -- always; the strict namespace proves the code uses only
  the array API standard;
* ``cupy``             -- only where CuPy imports and a GPU is usable; skipped
  otherwise with the reason shown in the test report.
"""

from __future__ import annotations

import numpy as np
import pytest

from egdnp import _backend


def _cupy_skip_reason() -> str | None:
    try:
        _backend.get_namespace("cupy")
    except RuntimeError as exc:
        return "no usable CuPy/GPU here (" + str(exc).split(";")[0].split("(")[-1].rstrip(")") + ")"
    return None


_CUPY_REASON = _cupy_skip_reason()

XP_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("array_api_strict", id="array_api_strict"),
    pytest.param(
        "cupy",
        id="cupy",
        marks=pytest.mark.skipif(_CUPY_REASON is not None, reason=_CUPY_REASON or ""),
    ),
]


@pytest.fixture(params=XP_PARAMS)
def xp(request):
    """An array-API namespace: numpy, array_api_strict, and cupy where usable."""
    return _backend.get_namespace(request.param)


@pytest.fixture
def strict_devices():
    """array-api-strict's default device and one extra simulated device."""
    import array_api_strict as strict

    devices = strict.__array_namespace_info__().devices()
    return devices[0], devices[1]


def to_numpy(x) -> np.ndarray:
    """Host copy of any backend's array, for assertions."""
    return _backend.to_host(x)


@pytest.fixture
def es_registries():
    """egdnp.es's registries (``FITNESS_SHAPINGS``, ``PERTURBED_FORWARDS``), restored after the test:
    registrations are process-wide."""
    from egdnp import es

    saved = [(registry, dict(registry)) for registry in (es.FITNESS_SHAPINGS, es.PERTURBED_FORWARDS)]
    yield es
    for registry, items in saved:
        registry.clear()
        registry.update(items)
