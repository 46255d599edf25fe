"""A pytest plugin for a port's test suite: the ``egdnp_bundle`` fixture.

Enable it in the port's ``conftest.py``::

    pytest_plugins = ["egdnp.testing.pytest_plugin"]

(or ``pytest -p egdnp.testing.pytest_plugin``).  It adds

* the session fixture ``egdnp_bundle``: ``egdnp_bundle("cnn", dtype="float64", seed=0)``
  returns the scenario's :class:`~egdnp.reference.Bundle`, generated (or loaded)
  once per test session however many tests ask for it;
* the option ``--egdnp-bundles DIR`` (ini: ``egdnp_bundles``): keep the bundles in
  ``DIR`` -- loaded when present, written there when generated -- so later
  sessions and CI check against the same files (commit them).

Then a test is one line: ``assert_port_matches(bundle, my_port(bundle))``
(:func:`egdnp.testing.assert_port_matches`).
"""

from __future__ import annotations

import pytest

__all__ = ["pytest_addoption", "egdnp_bundle"]


def pytest_addoption(parser) -> None:
    """Register ``--egdnp-bundles DIR`` and the ini key ``egdnp_bundles``.

    Parameters
    ----------
    parser : pytest.Parser
    """
    group = parser.getgroup("egdnp", "egdnp reference bundles")
    group.addoption("--egdnp-bundles", default=None, metavar="DIR",
                    help="directory of egdnp reference bundles: loaded when present, written when generated")
    parser.addini("egdnp_bundles", "directory of egdnp reference bundles (as --egdnp-bundles)", default="")


@pytest.fixture(scope="session")
def egdnp_bundle(request):
    """Session-wide factory of reference bundles: ``egdnp_bundle(name, dtype="float64", seed=0) -> Bundle``.

    Parameters
    ----------
    request : pytest.FixtureRequest

    Returns
    -------
    callable
        ``get(name, dtype="float64", seed=0)`` returning the scenario's
        :class:`~egdnp.reference.Bundle`, generated or loaded once per session
        (kept in ``--egdnp-bundles DIR`` when given; see :func:`egdnp.testing.reference_bundle`).
    """
    from egdnp.testing import reference_bundle

    directory = request.config.getoption("egdnp_bundles") or request.config.getini("egdnp_bundles") or None
    if directory is not None:
        directory = request.config.rootpath / directory  # relative to the rootdir, absolute kept as is
    cache: dict = {}

    def get(name: str, dtype: str = "float64", seed: int = 0):
        key = (name, dtype, seed)
        if key not in cache:
            cache[key] = reference_bundle(name, dtype=dtype, seed=seed, directory=directory)
        return cache[key]

    return get
