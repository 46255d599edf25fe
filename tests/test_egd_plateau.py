"""EGD escapes a zero-gradient plateau where SGD stalls (seeded toy problem), and the example runs."""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from egdnp import optim
from egdnp.optim.egd import egd
from conftest import to_numpy

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "egd_plateau.py"


def _staircase(xp, dim=8):
    # q = |w - c|^2; smooth basin for q < 0.25, flat steps ceil(4q)/4 outside (zero gradient)
    c = xp.asarray([-1.0 + 2.0 * i / (dim - 1) for i in range(dim)], dtype=xp.float64)
    w0 = c + 2.0 / math.sqrt(dim)

    def q(w):
        r = w - c
        return float(xp.sum(r * r))

    def loss(p):
        v = q(p["w"])
        return v if v < 0.25 else math.ceil(4.0 * v) / 4.0

    def grad(p):
        return {"w": 2.0 * (p["w"] - c) if q(p["w"]) < 0.25 else xp.zeros_like(p["w"])}

    return {"w": w0}, loss, grad


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_egd_escapes_plateau_where_sgd_stalls(xp, seed):
    params0, loss, grad = _staircase(xp)
    assert loss(params0) == 4.0
    sgd = optim.sgd(lr=0.1, momentum=0.9)
    p, s = params0, sgd.init(params0)
    for _ in range(200):
        p, s = sgd.update(grad(p), s, p)
    assert loss(p) == 4.0
    np.testing.assert_array_equal(to_numpy(p["w"]), to_numpy(params0["w"]))

    opt = egd(lr=0.1, momentum=0.9, evo_interval=5, pop_size=8, elite_frac=0.25, sigma=0.3, seed=seed)
    p, s = params0, opt.init(params0)
    for _ in range(200):
        p, s, _ = opt.update(grad(p), s, p, closure=loss)
    assert loss(p) < 0.05


def test_example_runs_fast(tmp_path):
    out = tmp_path / "plateau"
    res = subprocess.run([sys.executable, str(EXAMPLE), "--fast", "--no-plot", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sgd_final_loss"] == 4.0 and summary["egd_final_loss"] < 0.05
    assert (out / "curves.csv").read_text().count("\n") == summary["steps"] + 1
    assert not (out / "plateau.png").exists()
    helptext = subprocess.run([sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=60)
    assert helptext.returncode == 0 and "--no-plot" in helptext.stdout
