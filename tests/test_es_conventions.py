"""The three conventions against independent implementations written here.

One generation of a small tanh MLP (perturb, forward, fitness, shaping,
gradient, SGD update) is run by egdnp with caller-supplied raw factors
``A+ (P, m, r)``, ``B+ (P, n, r)`` (and ``eps+`` for full-rank vectors) and by

* a dense per-member float64 NumPy implementation (always),
* a PyTorch implementation in the style of the HyperscaleES port (torch installed),
* a JAX implementation in the style of the HyperscaleES noiser (jax installed),

and the results must agree: float64 to 1e-10, float32 to 1e-5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from egdnp import es, nn, optim

N, R, SIGMA, LR = 8, 2, 0.15, 0.3
SIZES = (6, 5, 3)
BATCH = 7


def _scenario():
    g = np.random.default_rng(1234)
    params = {
        "fc1.weight": g.standard_normal((5, 6)) * 0.5,
        "fc1.bias": g.standard_normal(5) * 0.1,
        "fc2.weight": g.standard_normal((3, 5)) * 0.5,
        "fc2.bias": g.standard_normal(3) * 0.1,
    }
    x = g.standard_normal((BATCH, 6))
    y = g.integers(0, 3, BATCH)
    P = N // 2
    raw = {
        "fc1.weight": (g.standard_normal((P, 5, R)), g.standard_normal((P, 6, R))),
        "fc2.weight": (g.standard_normal((P, 3, R)), g.standard_normal((P, 5, R))),
        "fc1.bias": g.standard_normal((P, 5)),
        "fc2.bias": g.standard_normal((P, 3)),
    }
    return params, x, y, raw


# ----------------------------------------------------------------------------
# independent float64 NumPy reference: explicit dense W_i per member
# ----------------------------------------------------------------------------
def _np_forward(p, x):
    h = np.tanh(x @ p["fc1.weight"].T + p["fc1.bias"])
    return h @ p["fc2.weight"].T + p["fc2.bias"]


def _np_ce_fitness(logits, y):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.mean(logp[np.arange(len(y)), y])


def numpy_reference(params, x, y, raw, convention):
    members = []
    for i in range(N):
        if convention == "hyperscalees-torch":
            k, s = i % (N // 2), (1.0 if i < N // 2 else -1.0)
        else:
            k, s = i // 2, (1.0 if i % 2 == 0 else -1.0)
        members.append((k, s))
    perturbed_vectors = convention != "hyperscalees-torch"
    E = []  # per member: dict of explicit perturbations
    for k, s in members:
        e = {}
        for name in ("fc1.weight", "fc2.weight"):
            a, b = raw[name]
            e[name] = s * (SIGMA / math.sqrt(R)) * a[k] @ b[k].T
        for name in ("fc1.bias", "fc2.bias"):
            e[name] = s * SIGMA * raw[name][k] if perturbed_vectors else np.zeros_like(params[name])
        E.append(e)
    f = np.array([_np_ce_fitness(_np_forward({n: params[n] + E[i][n] for n in params}, x), y) for i in range(N)])
    if convention == "hyperscalees-torch":
        fh = (f - f.mean()) / (f.std(ddof=1) + 1e-8)
        c = 1 / math.sqrt(N)
    elif convention == "hyperscalees-jax":
        fh = (f - f.mean()) / np.sqrt(f.var() + 1e-5)
        c = 1 / math.sqrt(N)
    else:
        order = np.argsort(np.argsort(f))
        fh = order / (N - 1) - 0.5
        c = 1 / (N * SIGMA)
    g = {n: c * sum(fh[i] * E[i][n] for i in range(N)) for n in params}
    new = {n: params[n] + LR * g[n] for n in params}
    if convention == "hyperscalees-torch":
        g = {n: g[n] for n in ("fc1.weight", "fc2.weight")}
        new.update({n: params[n] for n in ("fc1.bias", "fc2.bias")})
    return f, fh, g, new


# ----------------------------------------------------------------------------
# egdnp
# ----------------------------------------------------------------------------
def egdnp_generation(params, x, y, raw, convention, dtype):
    cast = {k: v.astype(dtype) for k, v in params.items()}
    plan = es.plan_parameters(cast, convention=convention)
    factors = {}
    for k, how in plan.items():
        if how == "lowrank":
            factors[k] = (raw[k][0].astype(dtype), raw[k][1].astype(dtype))
        elif how == "full":
            factors[k] = raw[k].astype(dtype)
    model = nn.mlp(SIZES, activation="tanh")
    strategy = es.Eggroll(pop_size=N, rank=R, sigma=SIGMA, optimizer=optim.sgd(LR), convention=convention)
    state = strategy.init(cast, seed=0)
    perts = strategy.ask(state, factors=factors)
    f = es.classification_fitness(es.perturbed_model_forward(model, state.params, x.astype(dtype), perts), y)
    fh = strategy.shape(f)
    g = es.es_gradient(fh, perts)
    state, _ = strategy.tell(state, perts, f)
    return f, fh, g, state.params


CONVENTIONS = ["hyperscalees-torch", "hyperscalees-jax", "egdnp"]


def _compare(got, ref, atol):
    f, fh, g, new = got
    rf, rfh, rg, rnew = ref
    np.testing.assert_allclose(np.asarray(f, np.float64), rf, rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(fh, np.float64), rfh, rtol=0, atol=atol * 10)
    assert set(g) == set(rg)
    for k in rg:
        np.testing.assert_allclose(np.asarray(g[k], np.float64), np.asarray(rg[k]), rtol=0, atol=atol * 10, err_msg=k)
    for k in rnew:
        np.testing.assert_allclose(np.asarray(new[k], np.float64), np.asarray(rnew[k]), rtol=0, atol=atol * 10, err_msg=k)


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("dtype,atol", [("float64", 1e-12), ("float32", 1e-5)])
def test_against_numpy_reference(convention, dtype, atol):
    params, x, y, raw = _scenario()
    _compare(egdnp_generation(params, x, y, raw, convention, dtype), numpy_reference(params, x, y, raw, convention), atol)


# ----------------------------------------------------------------------------
# PyTorch, in the style of the HyperscaleES functional port
# ----------------------------------------------------------------------------
def torch_reference(params, x, y, raw, convention, dtype):
    torch = pytest.importorskip("torch")
    td = getattr(torch, dtype)
    p = {k: torch.tensor(v, dtype=td) for k, v in params.items()}
    xt = torch.tensor(x, dtype=td).unsqueeze(0).expand(N, -1, -1)
    yt = torch.tensor(y, dtype=torch.int64)
    half = N // 2
    perts = {}
    for k in ("fc1.weight", "fc2.weight"):
        a, b = (torch.tensor(t, dtype=td) for t in raw[k])
        if convention == "hyperscalees-torch":  # halves: member i pairs with i + N/2
            A = torch.cat([a, -a]) * (SIGMA / math.sqrt(R))
            B = torch.cat([b, b])
        else:  # interleaved pairs (2k, 2k+1)
            A = torch.stack([a, -a], 1).reshape(N, *a.shape[1:]) * (SIGMA / math.sqrt(R))
            B = torch.repeat_interleave(b, 2, dim=0)
        perts[k] = (A, B)
    vec = {}
    if convention == "hyperscalees-jax":
        for k in ("fc1.bias", "fc2.bias"):
            e = torch.tensor(raw[k], dtype=td)
            vec[k] = torch.stack([e, -e], 1).reshape(N, -1) * SIGMA

    def pforward(h, wk, bk):
        A, B = perts[wk]
        out = h @ p[wk].T + torch.bmm(torch.bmm(h, B), A.transpose(1, 2)) + p[bk]
        return out + vec[bk].unsqueeze(1) if bk in vec else out

    logits = pforward(torch.tanh(pforward(xt, "fc1.weight", "fc1.bias")), "fc2.weight", "fc2.bias")
    logp = torch.log_softmax(logits, -1)
    f = logp.gather(2, yt.view(1, -1, 1).expand(N, -1, 1)).squeeze(-1).mean(-1)
    if convention == "hyperscalees-torch":
        fh = (f - f.mean()) / (f.std() + 1e-8)  # torch std is ddof=1
    else:
        fh = (f - f.mean()) / torch.sqrt(f.var(unbiased=False) + 1e-5)
    g = {k: torch.einsum("p,pmr,pnr->mn", fh, A, B) / math.sqrt(N) for k, (A, B) in perts.items()}
    g.update({k: (fh[:, None] * e).sum(0) / math.sqrt(N) for k, e in vec.items()})
    new = {k: (v + LR * g[k] if k in g else v) for k, v in p.items()}
    return f.numpy(), fh.numpy(), {k: v.numpy() for k, v in g.items()}, {k: v.numpy() for k, v in new.items()}


@pytest.mark.parametrize("convention", ["hyperscalees-torch", "hyperscalees-jax"])
@pytest.mark.parametrize("dtype,atol", [("float64", 1e-10), ("float32", 1e-5)])
def test_against_torch(convention, dtype, atol):
    params, x, y, raw = _scenario()
    ref = torch_reference(params, x, y, raw, convention, dtype)
    _compare(egdnp_generation(params, x, y, raw, convention, dtype), ref, atol)


# ----------------------------------------------------------------------------
# JAX, in the style of the HyperscaleES noiser (do_mm, convert_fitnesses, do_update)
# ----------------------------------------------------------------------------
def jax_reference(params, x, y, raw, convention, dtype):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    old_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", dtype == "float64")
    try:
        jd = getattr(jnp, dtype)
        p = {k: jnp.asarray(v, dtype=jd) for k, v in params.items()}
        weights = ("fc1.weight", "fc2.weight")
        vectors = ("fc1.bias", "fc2.bias") if convention == "hyperscalees-jax" else ()
        # One normal draw L (m+n, r) per pair: B = L[:n], A = L[n:] (the noiser's split).
        L = {k: jnp.concatenate([jnp.asarray(raw[k][1], jd), jnp.asarray(raw[k][0], jd)], axis=1) for k in weights}

        def member_noise(thread):
            if convention == "hyperscalees-torch":
                k, s = thread % (N // 2), jnp.where(thread < N // 2, 1.0, -1.0)
            else:
                k, s = thread // 2, jnp.where(thread % 2 == 0, 1.0, -1.0)
            out = {}
            for name in weights:
                n_in = p[name].shape[1]
                lk = L[name][k]
                out[name] = (lk[n_in:] * s * SIGMA / math.sqrt(R), lk[:n_in])
            for name in vectors:
                out[name] = s * SIGMA * jnp.asarray(raw[name], jd)[k]
            return out

        def do_mm(xv, name, noise):
            A, B = noise[name]
            return xv @ p[name].T + (xv @ B) @ A.T

        def fitness_of(thread):
            noise = member_noise(thread)
            b1 = p["fc1.bias"] + (noise["fc1.bias"] if vectors else 0.0)
            b2 = p["fc2.bias"] + (noise["fc2.bias"] if vectors else 0.0)
            h = jnp.tanh(do_mm(jnp.asarray(x, jd), "fc1.weight", noise) + b1)
            logits = do_mm(h, "fc2.weight", noise) + b2
            logp = jax.nn.log_softmax(logits, -1)
            return jnp.mean(logp[jnp.arange(BATCH), jnp.asarray(y)])

        threads = jnp.arange(N)
        f = jax.vmap(fitness_of)(threads)
        if convention == "hyperscalees-torch":
            fh = (f - f.mean()) / (jnp.std(f, ddof=1) + 1e-8)
        else:
            fh = (f - jnp.mean(f)) / jnp.sqrt(jnp.var(f) + 1e-5)  # convert_fitnesses, group_size 0
        noises = jax.vmap(member_noise)(threads)
        raw_grad = {}
        for name in weights:
            A, B = noises[name]
            raw_grad[name] = jnp.einsum("p,pmr,pnr->mn", fh, A, B) / N  # mean over threads
        for name in vectors:
            raw_grad[name] = jnp.mean(fh[:, None] * noises[name], axis=0)
        g = {k: math.sqrt(N) * v for k, v in raw_grad.items()}  # optimiser sees -sqrt(N) * raw
        new = {k: (v - LR * (-g[k]) if k in g else v) for k, v in p.items()}  # optax.sgd on the loss gradient
        as_np = lambda t: np.asarray(t, dtype=np.float64)  # noqa: E731
        return as_np(f), as_np(fh), {k: as_np(v) for k, v in g.items()}, {k: as_np(v) for k, v in new.items()}
    finally:
        jax.config.update("jax_enable_x64", old_x64)


@pytest.mark.parametrize("convention", ["hyperscalees-torch", "hyperscalees-jax"])
@pytest.mark.parametrize("dtype,atol", [("float64", 1e-10), ("float32", 1e-5)])
def test_against_jax(convention, dtype, atol):
    params, x, y, raw = _scenario()
    ref = jax_reference(params, x, y, raw, convention, dtype)
    _compare(egdnp_generation(params, x, y, raw, convention, dtype), ref, atol)


def test_jax_group_size_and_noise_reuse():
    """JAX group shaping (group mean, global variance) and noise_reuse=0 (same noise forever)."""
    strategy = es.Eggroll(pop_size=8, convention="hyperscalees-jax", group_size=4)
    f = np.array([1.0, 2.0, 0.5, 3.0, -1.0, 4.0, 2.0, 0.0])
    g = f.reshape(2, 4)
    np.testing.assert_allclose(strategy.shape(f), ((g - g.mean(1, keepdims=True)) / np.sqrt(f.var() + 1e-5)).ravel(), atol=1e-14)
    params = {"w.weight": np.zeros((3, 3))}
    trap = es.Eggroll(pop_size=4, convention="hyperscalees-jax", noise_reuse=0)
    state = trap.init(params, seed=0)
    first = trap.ask(state).noise["w.weight"].A
    state = state._replace(generation=7)
    np.testing.assert_array_equal(trap.ask(state).noise["w.weight"].A, first)


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-10), ("float32", 1e-5)])
def test_conv_against_torch_port_style(dtype, atol):
    """hyperscalees-torch on a conv weight: flattened row-major to (C_out, C_in*kh*kw); forward and gradient
    against torch (dense per-member F.conv2d, and the port's unfold + low-rank route)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    g = np.random.default_rng(7)
    c_out, c_in, k, pop, r, sigma = 4, 2, 3, 6, 2, 0.2
    w = g.standard_normal((c_out, c_in, k, k)) * 0.3
    x = g.standard_normal((3, c_in, 6, 5))
    a_raw, b_raw = g.standard_normal((pop // 2, c_out, r)), g.standard_normal((pop // 2, c_in * k * k, r))
    fit = g.standard_normal(pop)
    perts = es.generate({"conv1.weight": w.astype(dtype)}, pop_size=pop, rank=r, sigma=sigma, seed=None,
                        convention="hyperscalees-torch", dtype=dtype,
                        factors={"conv1.weight": (a_raw.astype(dtype), b_raw.astype(dtype))})
    out = es.perturbed_conv2d(x.astype(dtype), w.astype(dtype), None, perts, weight_key="conv1.weight", padding=1)
    grad = es.es_gradient(fit.astype(dtype), perts)["conv1.weight"]

    td = getattr(torch, dtype)
    wt, xt = torch.tensor(w, dtype=td), torch.tensor(x, dtype=td)
    a, b = torch.tensor(a_raw, dtype=td), torch.tensor(b_raw, dtype=td)
    A = torch.cat([a, -a]) * (sigma / math.sqrt(r))  # halves
    B = torch.cat([b, b])
    dense = torch.stack([F.conv2d(xt, wt + (A[i] @ B[i].T).reshape(wt.shape), padding=1) for i in range(pop)])
    patches = F.unfold(xt, k, padding=1)  # (batch, C_in*k*k, L), rows ordered (C_in, kh, kw)
    base = torch.einsum("ok,bkl->bol", wt.reshape(c_out, -1), patches)
    low = torch.einsum("ikr,bkl,ior->ibol", B, patches, A)
    port = (base.unsqueeze(0) + low).reshape(pop, 3, c_out, 6, 5)
    ref_grad = (torch.einsum("i,imr,inr->mn", torch.tensor(fit, dtype=td), A, B) / math.sqrt(pop)).reshape(wt.shape)
    for ref in (dense, port):
        np.testing.assert_allclose(np.asarray(out, np.float64), ref.double().numpy(), rtol=0, atol=atol)
    np.testing.assert_allclose(np.asarray(grad, np.float64), ref_grad.double().numpy(), rtol=0, atol=atol)


@pytest.mark.parametrize("convention,decays", [("hyperscalees-jax", True), ("egdnp", False), ("hyperscalees-torch", False)])
def test_frozen_leaves_and_adamw_weight_decay(convention, decays):
    """Frozen leaves (vectors="frozen", the official freeze_nonlora=True) under AdamW: the official JAX
    noiser hands optax a zero gradient for them and optax's adamw still decays them; egdnp does the
    same under "hyperscalees-jax" (checked against optax itself, float64, three generations) and
    skips them (None) under the other two conventions."""
    params, x, y, raw = _scenario()
    lr, wd = 0.05, 0.3
    strategy = es.Eggroll(pop_size=N, rank=R, sigma=SIGMA, convention=convention, vectors="frozen",
                          optimizer=optim.adamw(lr, weight_decay=wd))
    model = nn.mlp(SIZES, activation="tanh")
    state = strategy.init(dict(params), seed=3)
    history = []
    for _ in range(3):
        perts = strategy.ask(state)
        f = es.population_fitness(model, state.params, x, perts, lambda out: es.classification_fitness(out, y))
        grads = es.loss_gradients(strategy.shape(f), perts, state.params, convention=convention)
        history.append(grads)
        state, _ = strategy.tell(state, perts, f)
    for k in ("fc1.bias", "fc2.bias"):
        if decays:
            assert all(np.array_equal(g[k], np.zeros_like(params[k])) for g in history)
            np.testing.assert_allclose(state.params[k], params[k] * (1.0 - lr * wd) ** 3, rtol=1e-13)
        else:
            assert all(g[k] is None for g in history)
            np.testing.assert_array_equal(state.params[k], params[k])
    if not decays:
        return
    optax = pytest.importorskip("optax")
    jax = pytest.importorskip("jax")
    old_x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        solver = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
        p = {k: jax.numpy.asarray(v) for k, v in params.items()}
        opt_state = solver.init(p)
        for grads in history:  # the same gradients egdnp computed; optax applies them to every leaf
            g = {k: jax.numpy.asarray(v) for k, v in grads.items()}
            updates, opt_state = solver.update(g, opt_state, p)
            p = optax.apply_updates(p, updates)
    finally:
        jax.config.update("jax_enable_x64", old_x64)
    for k in params:
        np.testing.assert_allclose(state.params[k], np.asarray(p[k]), rtol=1e-12, atol=1e-14)
