"""Every public function and class of egdnp has a numpydoc docstring.

"Public" is what a user can reach by the documented names: ``egdnp.__all__``,
the ``__all__`` of every subpackage and of every public module under them
(``egdnp.nn.functional``, ``egdnp.optim.egd``, ``egdnp.reference.bundle``, ...,
plus ``egdnp._backend``, whose helpers ``egdnp`` re-exports), and the public
methods and properties of the public classes.  A function, class or method
passes when its docstring has a numpydoc ``Parameters``, ``Returns``,
``Yields`` or ``Attributes`` section, or when it takes no arguments at all
(then a one-line docstring says everything); a property needs a docstring.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

import pytest

import egdnp

SECTION = re.compile(r"^(Parameters|Returns|Yields|Attributes)\n-{3,}$", re.M)

# Public callables allowed to lack a numpydoc section (none now); the test fails for any other.
KNOWN_MISSING: frozenset[str] = frozenset()


def public_modules() -> list[str]:
    names = ["egdnp", "egdnp._backend"]
    for info in pkgutil.walk_packages(egdnp.__path__, "egdnp."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            names.append(info.name)
    return names


def _takes_no_arguments(obj) -> bool:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return all(p.name in ("self", "cls") for p in signature.parameters.values())


def public_callables() -> dict[str, object]:
    """``{qualified name: object}`` of every public function, class, method and property (each object once)."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            found[f"{module_name}.{name}"] = obj
            if not inspect.isclass(obj) or not getattr(obj, "__module__", "").startswith("egdnp"):
                continue
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, property):
                    found[f"{module_name}.{name}.{attr}"] = value
                    continue
                function = getattr(value, "__func__", value)  # classmethod / staticmethod
                if inspect.isfunction(function):
                    found[f"{module_name}.{name}.{attr}"] = function
    return found


def docstring_problem(obj) -> str | None:
    """Why ``obj``'s docstring falls short, or None."""
    doc = obj.__doc__ if isinstance(obj, property) else inspect.getdoc(obj)
    if not doc or not doc.strip():
        return "no docstring"
    if isinstance(obj, property) or _takes_no_arguments(obj):
        return None
    if inspect.isclass(obj):
        # A class documents its constructor in the class docstring or in __init__'s.
        init_doc = inspect.getdoc(obj.__init__) if "__init__" in vars(obj) else None
        if SECTION.search(doc) or (init_doc and SECTION.search(init_doc)):
            return None
        return "no Parameters/Attributes section"
    if SECTION.search(doc):
        return None
    return "no Parameters/Returns section"


def test_public_modules_have_all_and_a_docstring():
    for name in public_modules():
        module = importlib.import_module(name)
        assert (module.__doc__ or "").strip(), f"module {name} has no docstring"
        assert isinstance(getattr(module, "__all__", None), (list, tuple)), f"module {name} defines no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what the module does not have: {missing}"


def test_the_walk_finds_the_library():
    names = public_callables()
    for expected in ("egdnp.get_namespace", "egdnp.rng.normal", "egdnp.nn.mlp", "egdnp.optim.sgd",
                     "egdnp.es.Eggroll", "egdnp.es.Eggroll.ask", "egdnp.reference.compare", "egdnp.data.load_digits"):
        assert expected in names, expected
    assert len(names) > 150


def test_every_public_callable_has_a_numpydoc_docstring():
    problems = {}
    for name, obj in public_callables().items():
        if name in KNOWN_MISSING:
            continue
        problem = docstring_problem(obj)
        if problem:
            problems[name] = problem
    assert not problems, "public callables lacking numpydoc docstrings:\n" + "\n".join(
        f"  {name}: {why}" for name, why in sorted(problems.items()))


def test_checker_rejects_what_it_should():
    def bare(x):
        pass

    def one_line(x):
        """Does something."""

    def numpydoc(x):
        """Does something.

        Parameters
        ----------
        x : array, shape (n,)
        """

    def no_arguments():
        """Does something."""

    assert docstring_problem(bare) == "no docstring"
    assert docstring_problem(one_line) == "no Parameters/Returns section"
    assert docstring_problem(numpydoc) is None
    assert docstring_problem(no_arguments) is None


def test_help_of_the_package_reads_well():
    """``python -c "import egdnp; help(egdnp)"``: what it is, the subpackages, where to start."""
    text = subprocess.run([sys.executable, "-c", "import egdnp, pydoc; print(pydoc.render_doc(egdnp, renderer=pydoc.plaintext))"],
                          capture_output=True, text=True, timeout=120).stdout
    for words in ("EGD", "EGGROLL", "examples/quickstart.py", "egdnp.rng", "egdnp.nn", "egdnp.optim", "egdnp.es",
                  "egdnp.data", "egdnp.reference", "get_namespace"):
        assert words in text, words


@pytest.mark.parametrize("module", ["egdnp", "egdnp.rng._spec", "egdnp.testing"])
def test_docstring_examples_run(module):
    import doctest

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_the_port_testing_helpers_are_covered():
    """egdnp.testing (and its pytest plugin) are public modules: their names are held to the same rule."""
    names = public_callables()
    for name in ("egdnp.testing.assert_port_matches", "egdnp.testing.reference_bundle",
                 "egdnp.testing.pytest_plugin.egdnp_bundle", "egdnp.reference.explain", "egdnp.reference.Bundle.dtype"):
        assert name in names, name


def test_the_walk_finds_the_distributed_package():
    names = public_callables()
    for expected in ("egdnp.distributed.DistributedEggroll", "egdnp.distributed.DistributedEggroll.step",
                     "egdnp.distributed.Comm.allgatherv", "egdnp.distributed.average_gradients",
                     "egdnp.es.checkpoint.load", "egdnp.es.Eggroll.save"):
        assert expected in names, expected
