"""EGD against an independent torch implementation of the spec's EvoSGD, fed the same mutations.

``TorchEvoSGD`` below is written from seeds/egd_evosgd_spec.md (SGD part and
evolution cycle, same loop structure and tie rules), with the spec's
``randn_like`` replaced by the egdnp noise addresses so both sides mutate with
the same arrays.  Differences from the spec text, all to make a float64
comparison meaningful: softmax weights are computed in float64 (the spec
builds a float32 loss tensor), and the noise comes from ``noise_fn``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from egdnp import _backend, rng
from egdnp.optim.egd import egd
from conftest import to_numpy

torch = pytest.importorskip("torch")


class TorchEvoSGD:
    def __init__(self, params, noise_fn, *, lr, momentum=0.0, nesterov=False, weight_decay=0.0, evo_interval=200,
                 pop_size=8, elite_frac=0.25, sigma=0.02, sigma_decay=0.98, recombine="mean",
                 reset_momentum_on_evo=True, loss_reduce=None, sigma_schedule=None, mutate_filter=None):
        self.params = params  # dict name -> torch tensor (float64)
        self.names = list(params)
        self.noise_fn = noise_fn
        self.lr, self.mom, self.nesterov, self.wd = lr, momentum, nesterov, weight_decay
        self.evo_interval, self.pop_size, self.elite_frac = evo_interval, pop_size, elite_frac
        self.sigma, self.sigma_decay, self.recombine = float(sigma), float(sigma_decay), recombine
        self.reset = reset_momentum_on_evo
        self.loss_reduce, self.sigma_schedule, self.mutate_filter = loss_reduce, sigma_schedule, mutate_filter
        self.bufs = {}
        self._t = 0
        self.cycle = 0

    @torch.no_grad()
    def step(self, grads, closure):
        for n in self.names:
            p = self.params[n]
            d_p = grads[n]
            if self.wd != 0:
                d_p = d_p.add(p, alpha=self.wd)
            if self.mom != 0:
                buf = self.bufs.get(n)
                if buf is None:
                    buf = torch.zeros_like(p)
                buf.mul_(self.mom).add_(d_p)
                self.bufs[n] = buf
                d = d_p.add(buf, alpha=self.mom) if self.nesterov else buf
            else:
                d = d_p
            p.add_(d, alpha=-self.lr)
        self._t += 1
        if self.sigma_schedule is not None:
            self.sigma = float(self.sigma_schedule(self._t, self.sigma))
        if self.evo_interval <= 0 or self._t % self.evo_interval != 0:
            return None
        mask = [True if self.mutate_filter is None else bool(self.mutate_filter(n, self.params[n])) for n in self.names]

        def scale_of(p):
            s = torch.sqrt(torch.mean(p.pow(2)))
            return torch.clamp(s, min=1e-8)

        def load(src):
            for n, s in zip(self.names, src):
                self.params[n].copy_(s)

        def evaluate():
            v = closure(self.params)
            v = torch.as_tensor(v)
            if self.loss_reduce is not None:
                v = self.loss_reduce(v)
            return float(v)

        base = [self.params[n].detach().clone() for n in self.names]
        base_loss = evaluate()
        k = max(1, int(math.ceil(self.elite_frac * self.pop_size)))
        elites = [(base_loss, base)]
        for i in range(1, self.pop_size):
            cand = []
            for use, n, p0 in zip(mask, self.names, base):
                if not use:
                    cand.append(p0)
                    continue
                scale = scale_of(p0) * self.sigma
                noise = self.noise_fn(n, i, self.cycle) * scale
                cand.append(p0 + noise)
            load(cand)
            loss = evaluate()
            if len(elites) < k:
                elites.append((loss, [t.clone() for t in cand]))
            else:
                worst = max(range(len(elites)), key=lambda j: elites[j][0])
                if loss < elites[worst][0]:
                    elites[worst] = (loss, [t.clone() for t in cand])
        elites.sort(key=lambda e: e[0])
        parts_list = [e[1] for e in elites]
        losses = torch.tensor([e[0] for e in elites], dtype=torch.float64)
        mixed = []
        for parts in zip(*parts_list):
            stacked = torch.stack(list(parts), dim=0)
            if self.recombine == "mean" or len(parts_list) == 1:
                mixed.append(stacked.mean(dim=0))
            else:
                w = torch.softmax(-losses, dim=0).view(-1, *([1] * (stacked.dim() - 1)))
                mixed.append((stacked * w).sum(dim=0))
        load(mixed)
        if self.reset:
            for b in self.bufs.values():
                b.zero_()
        self.sigma *= self.sigma_decay
        self.cycle += 1
        return evaluate()


def _problem(xp, dtype="float64"):
    x = rng.normal((32, 6), seed=11, stream="data/x", dtype=dtype)
    y = np.tanh(x @ rng.normal((6, 3), seed=11, stream="data/w", dtype=dtype))
    params = {
        "fc1.weight": rng.normal((6, 4), seed=12, stream="init/fc1.weight", dtype=dtype) * 0.5,
        "fc1.bias": rng.normal((4,), seed=12, stream="init/fc1.bias", dtype=dtype) * 0.1,
        "fc2.weight": rng.normal((4, 3), seed=12, stream="init/fc2.weight", dtype=dtype) * 0.5,
        "fc2.bias": np.zeros((3,), dtype=dtype),
    }
    return x, y, params


def _t(ns, a):
    return a.T if ns is torch else ns.permute_dims(a, (1, 0))


def _sum0(ns, a):
    return torch.sum(a, dim=0) if ns is torch else ns.sum(a, axis=0)


def _forward_np(ns, x, y, p):
    h = ns.tanh(ns.matmul(x, p["fc1.weight"]) + p["fc1.bias"])
    out = ns.matmul(h, p["fc2.weight"]) + p["fc2.bias"]
    r = out - y
    return ns.mean(r * r), (h, r)


def _grads(ns, x, y, p):
    _, (h, r) = _forward_np(ns, x, y, p)
    n = r.shape[0] * r.shape[1]
    dout = 2.0 * r / n
    g = {"fc2.weight": ns.matmul(_t(ns, h), dout), "fc2.bias": _sum0(ns, dout)}
    dh = ns.matmul(dout, _t(ns, p["fc2.weight"])) * (1.0 - h * h)
    g["fc1.weight"] = ns.matmul(_t(ns, x), dh)
    g["fc1.bias"] = _sum0(ns, dh)
    return g


CASES = {
    "mean": dict(),
    "softmax": dict(recombine="softmax", elite_frac=0.5),
    "nesterov_wd": dict(momentum=0.9, nesterov=True, weight_decay=1e-3),
    "momentum_no_reset": dict(momentum=0.5, reset_momentum_on_evo=False),
    "filter": dict(momentum=0.9, mutate_filter=lambda n, p: n.endswith("weight")),
    "schedule": dict(sigma_schedule=lambda t, s: s * 0.9 if t % 2 else s),
    "reduce": dict(loss_reduce=lambda v: v * 2.0 + 1.0),
    "pop2": dict(pop_size=2, elite_frac=0.5, sigma=0.3),
    "lowrank": dict(mutation="lowrank", rank=2, recombine="softmax", elite_frac=0.5),
}


@pytest.mark.parametrize("storage", ["array", "seed", "array_device"])
@pytest.mark.parametrize("case", list(CASES))
def test_egd_matches_torch_evosgd(xp, case, storage):
    knobs = dict(lr=0.05, evo_interval=3, pop_size=6, elite_frac=0.34, sigma=0.2, sigma_decay=0.9, seed=7)
    knobs.update(CASES[case])
    seed = knobs.pop("seed")
    egd_only = {k: knobs.pop(k) for k in ("mutation", "rank") if k in knobs}
    x, y, params0 = _problem(xp)
    xd, yd = _backend.to_device(x, xp), _backend.to_device(y, xp)
    tx, ty = torch.tensor(x), torch.tensor(y)

    def noise_fn(name, member, cycle):
        shape = params0[name].shape
        if egd_only.get("mutation") == "lowrank" and len(shape) == 2:
            # A Bᵀ / sqrt(r) from the ((rows + cols) * r) normals of the address
            r = egd_only["rank"]
            f = torch.tensor(rng.normal(((shape[0] + shape[1]) * r,), seed=seed, stream=name, member=member,
                                        generation=cycle, dtype="float64"))
            a, b = f[: shape[0] * r].reshape(shape[0], r), f[shape[0] * r:].reshape(shape[1], r)
            return a @ b.T / math.sqrt(r)
        return torch.tensor(rng.normal(shape, seed=seed, stream=name, member=member, generation=cycle,
                                       dtype="float64"))

    tparams = {k: torch.tensor(v) for k, v in params0.items()}
    tref = TorchEvoSGD(tparams, noise_fn, **knobs)

    extra = {}
    if storage == "seed":
        extra["population_storage"] = "seed"
    if storage == "array_device":
        extra["offload_population_to_cpu"] = False
    opt = egd(seed=seed, **knobs, **extra, **egd_only)
    params = {k: _backend.to_device(v, xp) for k, v in params0.items()}
    state = opt.init(params)

    def closure(p):
        return _forward_np(xp, xd, yd, p)[0]

    def tclosure(p):
        return _forward_np(torch, tx, ty, p)[0]

    tol = dict(rtol=1e-12, atol=1e-13) if storage != "seed" else dict(rtol=1e-10, atol=1e-12)
    n_cycles = 0
    for t in range(7):
        g = _grads(xp, xd, yd, params)
        tg = _grads(torch, tx, ty, tref.params)
        expected = tref.step(tg, tclosure)
        params, state, report = opt.update(g, state, params, closure=closure)
        assert (report is None) == (expected is None)
        if report is not None:
            n_cycles += 1
            assert report.loss == pytest.approx(expected, rel=1e-11, abs=1e-13)
            assert report.closure_calls == knobs["pop_size"] + 1
        for k in params:
            np.testing.assert_allclose(to_numpy(params[k]), tref.params[k].numpy(), **tol)
        assert state.sigma == pytest.approx(tref.sigma, rel=1e-15)
        if tref.bufs:
            for k in params:
                np.testing.assert_allclose(to_numpy(state.momentum[k]), tref.bufs[k].numpy(), **tol)
    assert n_cycles == 2 and state.cycle == 2 and state.step == 7
