"""``python -m egdnp.reference explain SCENARIO``: everything a porter needs, as text.

The description is built from a run of the scenario (shapes and dtypes are
those of the arrays, never restated by hand) and its manifest entries: the
data flow in the order the comparator reads it, every array's name, shape,
dtype and layout, the conventions (cross-correlation vs convolution, the
C, H, W flatten order, torch.optim semantics, member layouts) and the noise
addresses.  Host-side module.
"""

from __future__ import annotations

import json

import numpy as np

from .compare import DEFAULT_TOLERANCES, OPTIONAL_PREFIXES
from .scenarios import SCENARIOS

__all__ = ["explain", "array_layout"]

_NOISE_WORDS = ("noise", "address", "factors", "stream", "weighted_sum")


def array_layout(name: str, shape: tuple, steps: int = 0, *, stacked: bool = False) -> str:
    """The meaning of an array's axes, from its name and shape.

    Parameters
    ----------
    name : str
        A bundle array name (``"params/conv1.weight"``, ``"activations/pool1"``).
    shape : tuple of int
    steps : int
        The data-flow ``steps`` stride of an expected array (1: axis 0 is the
        step axis; k > 1: axis 0 counts events every k steps, e.g. EGD cycles).
    stacked : bool
        The scenario is a multi-step one: its inputs carry a leading step axis
        (``inputs/x`` (steps, batch, n_in)); EGD noise a cycle axis.

    Returns
    -------
    str
        E.g. ``"(C_out, C_in, kh, kw)"``, ``"(N, C, H, W)"``, ``"(steps, n_out, n_in)"``;
        ``""`` when there is nothing to say beyond the shape.
    """
    lead: list[str] = []
    if steps:
        lead = ["steps"] if steps == 1 else ["cycles"]
    elif stacked and name.startswith(("inputs/x", "inputs/y", "inputs/grads/", "inputs/factors/")):
        lead = ["steps"]
    elif stacked and name.startswith("inputs/noise/"):
        lead = ["cycles"]
    if name.startswith(("inputs/noise/", "outputs/mutants/")):
        lead.append("member-1")
    if name.startswith("inputs/factors/"):
        kind = name.rsplit("/", 1)[1]
        return "(" + ", ".join(lead + ["pair"] + {"A": ["m", "r"], "B": ["n", "r"]}.get(kind, ["*param shape"])) + ")"
    nd = len(shape) - len(lead)
    axes: list[str] = []
    if name.startswith(("params/", "grads/", "outputs/params/", "outputs/recombined/", "outputs/es_gradient/",
                        "outputs/state/", "inputs/grads/", "outputs/mutants/", "inputs/noise/")):
        axes = {4: ["C_out", "C_in", "kh", "kw"], 2: ["n_out", "n_in"], 1: ["n_out"]}.get(nd, [])
    elif name.startswith(("activations/", "grad_activations/", "inputs/x", "outputs/dx")):
        axes = {4: ["N", "C", "H", "W"], 2: ["N", "features"]}.get(nd, [])
    elif name in ("outputs/logits", "outputs/dlogits"):
        axes = {2: ["N", "classes"], 3: ["member", "N", "classes"]}.get(nd, [])
    elif name == "inputs/y":
        axes = ["N"] if nd == 1 else []
    elif name in ("outputs/fitness", "outputs/shaped_fitness", "outputs/member_pair", "outputs/member_sign",
                  "outputs/member_losses", "outputs/cycles/member_losses"):
        axes = ["member"] if nd == 1 else []
    if not lead and not axes:
        return ""
    return "(" + ", ".join(lead + (axes or ["..."] if nd > 0 else [])) + ")"


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def explain(name: str, *, dtype: str = "float32", seed: int = 0) -> str:
    """A porter's description of a scenario.

    Parameters
    ----------
    name : str
        A key of :data:`~egdnp.reference.scenarios.SCENARIOS`.
    dtype : {"float32", "float64"}
        The dtype the arrays are shown in.
    seed : int
        Seed of the run (shapes do not depend on it).

    Returns
    -------
    str
        Sections: the scenario, its conventions and formulas, the noise
        addresses, the inputs a port reads, the data flow of the expected
        arrays (stage, name, shape, dtype, layout, what), the hyper-parameters
        and the default tolerances.

    Raises
    ------
    ValueError
        Unknown scenario or dtype.
    """
    from . import generate  # here, not at the head: the package imports this module before it defines generate

    arrays, hyper = generate(name, dtype=dtype, seed=seed)
    scenario = SCENARIOS[name]
    doc = (scenario.fn.__doc__ or "").strip().split("\n")[0]
    lines = [f"scenario {name}: {scenario.description}"]
    if doc:
        lines.append(f"  {doc}")
    lines.append(f"  (arrays shown as generated with --dtype {dtype} --seed {seed}; "
                 f"`python -m egdnp.reference generate {name} --out DIR` writes them)")

    flow = hyper.get("data_flow", [])
    noise = {k: v for k, v in hyper.items() if k != "data_flow" and any(w in k for w in _NOISE_WORDS)}
    notes = {k: v for k, v in hyper.items() if k != "data_flow" and k not in noise and isinstance(v, str)}
    numbers = {k: v for k, v in hyper.items() if k != "data_flow" and k not in noise and k not in notes}

    lines += ["", "Conventions and formulas"]
    lines += [f"  {k}: {v}" for k, v in notes.items()] or ["  (none beyond the hyper-parameters)"]
    lines += ["", "Noise"]
    lines += [f"  {k}: {_value(v)}" for k, v in noise.items()] or ["  this scenario uses no noise"]

    def table(names, info):
        rows = []
        for n in names:
            a = np.asarray(arrays[n])
            steps, stage, what = info.get(n, (0, "", ""))
            rows.append((stage, n, str(tuple(a.shape)), a.dtype.name, array_layout(n, tuple(a.shape), steps, stacked=stacked), what))
        widths = [max([len(r[i]) for r in rows] + [1]) for i in range(5)]
        return ["  " + "  ".join(f"{r[i]:<{widths[i]}}" for i in range(5)) + (f"  {r[5]}" if r[5] else "") for r in rows]

    stacked = any(int(e.get("steps", 0)) for e in flow)
    inputs = [n for n in arrays if n.startswith(("inputs/", "params/"))]
    lines += ["", "Inputs (read by the port): name, shape, dtype, layout"]
    lines += ["  " + row.strip() for row in table(inputs, {})]
    info = {e["array"]: (int(e.get("steps", 0)), e.get("stage", ""), e.get("what", "")) for e in flow}
    expected = [e["array"] for e in flow] + sorted(n for n in arrays if not n.startswith(("inputs/", "params/")) and n not in info)
    lines += ["", "Data flow: the expected arrays in the order they are computed (the comparator reports the first that diverges)",
              "  stage, name, shape, dtype, layout, what"]
    lines += table(expected, info)
    if any(n.startswith(OPTIONAL_PREFIXES) for n in expected):
        lines.append("  activations/* and grad_activations/* are optional: a port is compared on those it writes")
    if stacked:
        lines.append("  stacked arrays: row r of an array with a steps/cycles axis belongs to step r + 1 (cycles: see 'cycles')")
    lines += ["", "Hyper-parameters"]
    lines += [f"  {k}: {_value(v)}" for k, v in numbers.items()] or ["  (none)"]
    lines += ["", "Default tolerances of `compare` (element i matches when |a_i - e_i| <= atol + rtol * |e_i|; integers exactly)"]
    lines += [f"  {d}: rtol={r:g} atol={a:g}" for d, (r, a) in DEFAULT_TOLERANCES.items()]
    return "\n".join(lines)
