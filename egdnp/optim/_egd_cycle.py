"""One EGD evolution cycle: score the base and pop_size - 1 mutants, keep streaming
top-k elites, recombine, score the result.

Two population stores share the cycle loop:

* :class:`HostPopulation` (``population_storage="array"``): the base snapshot
  and the candidates/elites live in host buffers from a
  :class:`egdnp._backend.BufferPool` (pinned with CuPy, allocated once and
  reused every cycle).  A candidate is built on the host and copied to one
  device buffer; with CuPy the copy is asynchronous on its own stream and the
  next candidate is built on the host while the device is still scoring the
  current one (the loss is read only after the next candidate is built).
  Elites are host slots: keeping a candidate as an elite moves no data (the
  slot changes owner).
* :class:`DevicePopulation` (``offload_population_to_cpu=False``): the
  candidates and elites are arrays of the compute namespace (device memory
  with CuPy); nothing is copied between host and device.
* :class:`SeedPopulation` (``population_storage="seed"``): a member is its
  noise address; candidates are regenerated on the device and the recombined
  parameters are ``base + scale * sum_i w_i z_i`` with the elites' noise
  regenerated (:func:`weighted_unit_noise`).  No parameter array crosses
  between host and device.

Parameters that are not mutated (``mutate_filter`` said no, or empty tensors)
are never copied: every candidate uses the live array.
"""

from __future__ import annotations

import inspect
import math
import time
from typing import Any, Callable

from .. import _backend, rng
from ._egd_mutation import dtype_name, is_lowrank, mutant, param_scale, weighted_unit_noise
from ._egd_population import PopulationScoring

__all__ = ["Workspace", "run_cycle", "CycleResult", "population_bytes", "check_population_fits"]

BASE = "base"  # handle of the base member (member 0) in both stores
LAZY = "lazy"  # population scoring: an elite whose candidate is built only once it is recombined
PHASES = ("score", "rescore")


class Workspace:
    """Scratch memory reused across cycles (not optimiser state: never saved, never needed to resume).

    Attributes
    ----------
    pools : dict
        One :class:`egdnp._backend.BufferPool` per backend name.
    device_buffers : dict
        CuPy only: the device candidate buffer of every mutated parameter.
    """

    def __init__(self):
        self.pools: dict = {}
        self.device_buffers: dict = {}
        self.copy_streams: dict = {}

    def pool(self, xp) -> _backend.BufferPool:
        key = _backend.backend_name(xp)
        if key not in self.pools:
            self.pools[key] = _backend.BufferPool(xp)
        return self.pools[key]

    @property
    def host_allocations(self) -> int:
        """Host buffers allocated so far (stays constant once the first cycle has run)."""
        return sum(p.allocations for p in self.pools.values())

    @property
    def host_nbytes(self) -> int:
        return sum(p.nbytes for p in self.pools.values())

    def copy_stream(self, xp):
        key = _backend.backend_name(xp)
        if key not in self.copy_streams:
            self.copy_streams[key] = _backend.new_stream(xp)
        return self.copy_streams[key]

    def device_buffer(self, xp, name, shape, dtype):
        key = (_backend.backend_name(xp), name)
        buf = self.device_buffers.get(key)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != dtype:
            buf = xp.empty(tuple(shape), dtype=dtype)
            self.device_buffers[key] = buf
        return buf


def _nbytes(x) -> int:
    n = 1
    for d in x.shape:
        n *= int(d)
    return n * _backend.numpy_dtype(_backend.array_namespace(x), x.dtype).itemsize


class Scorer:
    """Calls the forward-only closure, applies ``loss_reduce`` and turns the loss into a float.

    The closure is called as ``closure(params)``, plus the keyword arguments
    ``member``, ``cycle`` and ``phase`` that its signature accepts (all of
    them when it takes ``**kwargs``).
    """

    def __init__(self, closure: Callable, loss_reduce: Callable | None, cycle: int):
        if not callable(closure):
            raise TypeError(f"closure={closure!r} must be callable(params, **kw) -> loss")
        self.closure = closure
        self.loss_reduce = loss_reduce
        self.cycle = cycle
        self.calls = 0
        self.seconds = 0.0
        self.kw_names = _accepted_keywords(closure, ("member", "cycle", "phase"))

    def call(self, params: dict, member: int, phase: str):
        """Start scoring; returns the raw loss (may still be computing on a device)."""
        kw = {}
        if "member" in self.kw_names:
            kw["member"] = member
        if "cycle" in self.kw_names:
            kw["cycle"] = self.cycle
        if "phase" in self.kw_names:
            kw["phase"] = phase
        t0 = time.perf_counter()
        raw = self.closure(params, **kw)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return raw

    def value(self, raw) -> float:
        """The loss as a Python float (waits for the device)."""
        t0 = time.perf_counter()
        if self.loss_reduce is not None:
            raw = self.loss_reduce(raw)
        value = _to_float(raw)
        self.seconds += time.perf_counter() - t0
        return value

    def __call__(self, params: dict, member: int, phase: str) -> float:
        return self.value(self.call(params, member, phase))


def _accepted_keywords(fn: Callable, names) -> tuple:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return ()
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return tuple(names)
    ok = {p.name for p in params if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}
    return tuple(n for n in names if n in ok)


def _to_float(raw) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    if hasattr(raw, "shape"):
        host = _backend.to_host(raw)
        if host.size != 1:
            raise ValueError(
                f"the closure returned an array of shape {tuple(host.shape)}; it must return a scalar loss "
                "(a float or a 0-d/size-1 array)"
            )
        return float(host.reshape(()))
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise TypeError(f"the closure returned {type(raw).__name__}; it must return a scalar loss") from None


def population_bytes(cfg, params: dict, mutated) -> int:
    """Bytes the population buffers of one cycle hold at once (0 for ``population_storage="seed"``).

    Array storage holds ``k + 2`` candidate slots of every mutated tensor (the
    elites, the candidate being scored, the one being built) and the
    recombined copy.
    """
    if cfg.population_storage == "seed":
        return 0
    return (cfg.n_elites + 3) * sum(_nbytes(params[n]) for n in mutated)


def check_population_fits(cfg, params: dict, mutated) -> None:
    """MemoryError, before anything is allocated, when the population buffers exceed the memory they go to."""
    nbytes = population_bytes(cfg, params, mutated)
    if nbytes == 0:
        return
    xp = _backend.array_namespace(next(iter(params.values())))
    on_device = not cfg.offload_population_to_cpu and not _backend.is_numpy(xp)
    limit = _backend.device_memory_bytes(xp) if on_device else _backend.host_memory_bytes()
    _backend.check_fits(
        nbytes, limit,
        f"EGD with pop_size={cfg.pop_size}, elite_frac={cfg.elite_frac} and population_storage='array' "
        f"({cfg.n_elites} elites + 3 copies of the mutated parameters {'on the device' if on_device else 'in host memory'})",
        "lower pop_size or elite_frac, or pass population_storage='seed' (members kept as noise addresses)",
    )


# ----------------------------------------------------------------------------
# population stores
# ----------------------------------------------------------------------------
class _Population:
    def __init__(self, cfg, xp, params: dict, mutated: list, scales: dict, cycle: int, workspace: Workspace,
                 seed: int):
        self.cfg, self.xp, self.params, self.mutated, self.scales = cfg, xp, params, mutated, scales
        self.cycle, self.ws, self.seed = cycle, workspace, seed
        self.bytes_to_device = 0
        self.bytes_to_host = 0
        first = params[mutated[0]] if mutated else next(iter(params.values()))
        self.device = _backend.device_of(first)
        self.dtypes = {n: dtype_name(xp, params[n].dtype) for n in mutated}
        self.numpy = _backend.is_numpy(xp)

    def _mutant(self, ns, base, name, member, device=None, out=None):
        return mutant(base, self.scales[name], seed=self.seed, name=name, member=member, cycle=self.cycle,
                      xp=ns, device=device, mutation=self.cfg.mutation, rank=self.cfg.rank, out=out)

    def _plans(self, bases: dict) -> dict:
        """NumPy: the fused full-rank kernel's per-parameter arguments, converted once per cycle."""
        from . import _egd_cpu

        plans = {}
        for n in self.mutated:
            base = bases[n]
            if is_lowrank(tuple(base.shape), self.cfg.mutation):
                if base.flags.c_contiguous:
                    plans[n] = _egd_cpu.LowRankPlan(base, self.scales[n], self.cfg.rank, self.seed,
                                                    rng.stream_id(n), self.cycle)
            else:
                plans[n] = _egd_cpu.MutantPlan(base, self.scales[n], self.seed, rng.stream_id(n), self.cycle)
        return plans

    def _write_mutant(self, name, base, member, out, plans) -> None:
        """``out[...] = mutant of member`` (NumPy fast path when a plan exists)."""
        plan = plans.get(name)
        if plan is not None:
            plan.write(out, member)
        else:
            self._mutant(self.xp, base, name, member, out=out)


class SeedPopulation(_Population):
    """Members are noise addresses; everything is regenerated on the device."""

    def begin(self, n_slots: int | None = None) -> None:
        # NumPy: one reused candidate buffer per parameter (the device holds one candidate at a time)
        self.plans = self._plans(self.params) if self.numpy else {}

    def prepare(self, member: int):
        return member

    def release(self, handle) -> None:
        pass

    def _fresh_candidate(self, member: int) -> dict:
        dev = None if self.numpy or _backend.is_cupy(self.xp) else self.device
        return {n: self._mutant(self.xp, self.params[n], n, member, device=dev) for n in self.mutated}

    def device_params(self, handle) -> dict:
        if handle == BASE:
            return self.params
        cand = dict(self.params)
        if self.numpy:
            for n in self.mutated:
                p = self.params[n]
                out = self.ws.device_buffer(self.xp, ("candidate", n), p.shape, p.dtype)
                self._write_mutant(n, p, handle, out, self.plans)
                cand[n] = out
        else:
            cand.update(self._fresh_candidate(handle))
        return cand

    def recombine(self, handles, members, weights) -> dict:
        # sum_i w_i (base + s z_i) = base + s * sum_{i != base} w_i z_i  because sum_i w_i = 1
        pairs = [(w, m) for h, m, w in zip(handles, members, weights) if h != BASE]
        if not pairs:
            return dict(self.params)
        ws, ms = [w for w, _ in pairs], [m for _, m in pairs]
        dev = None if self.numpy or _backend.is_cupy(self.xp) else self.device
        out = dict(self.params)
        for n in self.mutated:
            p = self.params[n]
            if self.numpy and not is_lowrank(tuple(p.shape), self.cfg.mutation):
                from . import _egd_cpu

                # one pass: regenerate the elites' noise, weight, round, add the base
                g = self.xp.empty(p.shape, dtype=p.dtype)
                _egd_cpu.seed_recombine_into(g, p, [w * self.scales[n] for w in ws], ms, self.seed,
                                             rng.stream_id(n), self.cycle)
            else:
                g = weighted_unit_noise(ws, ms, p.shape, seed=self.seed, name=n, cycle=self.cycle,
                                        dtype=self.dtypes[n], xp=self.xp, device=dev, mutation=self.cfg.mutation,
                                        rank=self.cfg.rank, factor=self.scales[n])
                g += p
            out[n] = g
        return out


class DevicePopulation(SeedPopulation):
    """``offload_population_to_cpu=False``: candidates and elites are device arrays (k + 2 at most)."""

    def begin(self, n_slots: int | None = None) -> None:
        self.plans = {}

    def prepare(self, member: int) -> dict:
        # fresh arrays: a candidate may stay as an elite while the next ones are built
        return self._fresh_candidate(member)

    def device_params(self, handle) -> dict:
        if handle == BASE:
            return self.params
        cand = dict(self.params)
        cand.update(handle)
        return cand

    def recombine(self, handles, members, weights) -> dict:
        if all(h == BASE for h in handles):
            return dict(self.params)
        out = dict(self.params)
        uniform = len(set(weights)) == 1
        for n in self.mutated:
            parts = [self.params[n] if h == BASE else h[n] for h in handles]
            if self.numpy:
                from . import _egd_cpu

                out[n] = _egd_cpu.mix_into(self.xp.empty(parts[0].shape, dtype=parts[0].dtype), parts, weights,
                                           uniform)
                continue
            if uniform:
                mixed = parts[0] + parts[1] if len(parts) > 1 else parts[0] * 1.0
                for x in parts[2:]:
                    mixed += x
                mixed /= float(len(parts))
            else:
                mixed = parts[0] * weights[0]
                for w, x in zip(weights[1:], parts[1:]):
                    mixed += x * w
            out[n] = mixed
        return out


class HostPopulation(_Population):
    """Base snapshot and candidate/elite slots in (pinned) host buffers; one device candidate buffer."""

    def begin(self, n_slots: int | None = None) -> None:
        xp = self.xp
        self.hxp = _backend.get_namespace("numpy")
        self.pool = self.ws.pool(xp)
        # Host and device are the same memory for NumPy: candidates are handed to the
        # closure straight from their host slot, nothing is copied.
        self.same_memory = self.numpy
        self.is_cupy = _backend.is_cupy(xp)
        self.stream = self.ws.copy_stream(xp) if self.is_cupy else None
        self.base_host = {}
        for n in self.mutated:
            p = self.params[n]
            if self.same_memory and p.flags.c_contiguous:
                # NumPy: the cycle never writes into params, so the live array is the snapshot
                self.base_host[n] = p
                continue
            buf = self.pool.get(("base", n), tuple(p.shape), self.dtypes[n])
            _backend.to_host(p, out=buf)
            if not self.same_memory:
                self.bytes_to_host += buf.nbytes
            self.base_host[n] = buf
        # k elites + the candidate whose loss is pending + the one being built
        # (population scoring builds only the k elites, after scoring)
        n_slots = self.cfg.n_elites + 2 if n_slots is None else n_slots
        self.free_slots = list(range(n_slots))[::-1]
        self.slots = {
            (slot, n): self.pool.get(("slot", slot, n), tuple(self.params[n].shape), self.dtypes[n])
            for slot in range(n_slots) for n in self.mutated
        }
        self.plans = self._plans(self.base_host)

    def _slot(self, slot: int, n: str):
        return self.slots[slot, n]

    def prepare(self, member: int) -> int:
        slot = self.free_slots.pop()
        for n in self.mutated:
            out = self._slot(slot, n)
            plan = self.plans.get(n)
            if plan is not None:
                plan.write(out, member)
            else:
                self._mutant(self.hxp, self.base_host[n], n, member, out=out)
        return slot

    def release(self, handle) -> None:
        if handle != BASE:
            self.free_slots.append(handle)

    def device_params(self, handle) -> dict:
        if handle == BASE:
            return self.params
        cand = dict(self.params)
        for n in self.mutated:
            host = self._slot(handle, n)
            if self.same_memory:
                cand[n] = host
                continue
            if self.is_cupy:
                out = self.ws.device_buffer(self.xp, n, host.shape, self.params[n].dtype)
                cand[n] = _backend.to_device(host, self.xp, stream=self.stream, non_blocking=True, out=out)
            else:
                cand[n] = _backend.to_device(host, self.xp, device=self.device)
            self.bytes_to_device += host.nbytes
        if self.is_cupy:
            _backend.synchronize(self.xp, self.stream)
        return cand

    def recombine(self, handles, members, weights) -> dict:
        if all(h == BASE for h in handles):
            return dict(self.params)
        out = dict(self.params)
        uniform = len(set(weights)) == 1
        for n in self.mutated:
            parts = [self.base_host[n] if h == BASE else self._slot(h, n) for h in handles]
            if self.same_memory:
                from . import _egd_cpu

                # NumPy: one pass straight into the new parameter array
                out[n] = _egd_cpu.mix_into(self.xp.empty(parts[0].shape, dtype=parts[0].dtype), parts, weights,
                                           uniform)
                continue
            mixed = self.pool.get(("mixed", n), parts[0].shape, parts[0].dtype)
            if uniform:
                # the spec's stack(...).mean(0): sum, then divide by k
                mixed[...] = parts[0]
                for x in parts[1:]:
                    mixed += x
                mixed /= float(len(parts))
            else:
                mixed[...] = parts[0] * weights[0]
                for w, x in zip(weights[1:], parts[1:]):
                    mixed += x * w
            out[n] = _backend.to_device(mixed, self.xp, device=None if self.is_cupy else self.device)
            self.bytes_to_device += mixed.nbytes
        if self.is_cupy:
            _backend.synchronize(self.xp)
        return out


# ----------------------------------------------------------------------------
# the cycle
# ----------------------------------------------------------------------------
class CycleResult:
    """What :func:`run_cycle` hands back to ``egd.update``."""

    __slots__ = ("params", "accepted", "report_fields")

    def __init__(self, params, accepted, report_fields):
        self.params, self.accepted, self.report_fields = params, accepted, report_fields


def _softmax_weights(losses, temperature: float):
    m = min(losses)
    ex = [math.exp(-(l - m) / temperature) for l in losses]
    s = sum(ex)
    return [e / s for e in ex]


def run_cycle(cfg, params: dict, *, sigma: float, cycle: int, step: int, closure: Callable | None,
              workspace: Workspace, seed: int, scorer: Callable | None = None) -> CycleResult:
    """Run one evolution cycle on ``params`` (the parameters after the SGD step).

    The mutations are addressed by ``seed`` (the state's, not ``cfg.seed``).
    Members are scored one at a time with ``closure`` (the spec's path), or
    all at once with the population ``scorer`` (see
    :mod:`egdnp.optim._egd_population`); the same losses give the same
    elites and the same recombination either way.

    Returns a :class:`CycleResult`; never modifies ``params``.  Raises
    RuntimeError when the base loss is not finite.
    """
    t0 = time.perf_counter()
    xp = _backend.array_namespace(*params.values())
    mutated = [
        n for n, p in params.items()
        if _nbytes(p) > 0 and (cfg.mutate_filter is None or bool(cfg.mutate_filter(n, p)))
    ]
    check_population_fits(cfg, params, mutated)
    if _backend.is_numpy(xp) and scorer is None:
        # NumPy: the squares go to the (still free) candidate buffer instead of a fresh temporary
        # (population scoring holds no candidate buffer: a transient temporary, the same bits)
        scales = {
            n: param_scale(xp, params[n], sigma, scratch=workspace.device_buffer(
                xp, ("candidate", n), params[n].shape, params[n].dtype) if params[n].flags.c_contiguous else None)
            for n in mutated
        }
    else:
        scales = {n: param_scale(xp, params[n], sigma) for n in mutated}
    population = None if scorer is None else PopulationScoring(scorer, cfg, mutated, scales, cycle, seed)
    scorer = Scorer(closure, cfg.loss_reduce, cycle) if population is None else population
    if cfg.population_storage == "seed":
        store_cls = SeedPopulation
    else:
        store_cls = HostPopulation if cfg.offload_population_to_cpu else DevicePopulation
    store = store_cls(cfg, xp, params, mutated, scales, cycle, workspace, seed)

    if population is not None:
        # every member in one call (member 0 is the base itself)
        pop_losses = population(params, range(cfg.pop_size), "score")
        base_loss = pop_losses[0]
    else:
        base_loss = scorer(params, 0, "score")
    if not math.isfinite(base_loss):
        raise RuntimeError(
            f"EGD evolution cycle {cycle} (step {step}): the base parameters' loss is {base_loss!r}; "
            "a cycle needs a finite base loss. Nothing was changed (params and state are as before this update); "
            "lower lr or check the data/closure"
        )
    k = cfg.n_elites
    store.begin(None if population is None else k)

    member_losses = [math.nan] * cfg.pop_size
    member_losses[0] = base_loss
    # [loss, member, handle]; kept in the spec's order (append, replace in place)
    elites: list = [[base_loss, 0, BASE]]

    def release(handle):
        if handle != LAZY:
            store.release(handle)

    def admit(member, handle, loss):
        member_losses[member] = loss
        if not math.isfinite(loss):
            # non-finite losses rank last: such a candidate is never an elite
            release(handle)
            return
        if len(elites) < k:
            elites.append([loss, member, handle])
            return
        worst = max(range(len(elites)), key=lambda i: elites[i][0])
        if loss < elites[worst][0]:
            release(elites[worst][2])
            elites[worst] = [loss, member, handle]
        else:
            release(handle)

    if population is not None:
        # the same streaming selection over the population's losses; only the elites are built
        for member in range(1, cfg.pop_size):
            admit(member, LAZY, pop_losses[member])
        for e in elites:
            if e[2] == LAZY:
                e[2] = store.prepare(e[1])
    else:
        pending = None
        for member in range(1, cfg.pop_size):
            handle = store.prepare(member)  # host work overlaps the device still scoring `pending`
            if pending is not None:
                admit(pending[0], pending[1], scorer.value(pending[2]))
            cand = store.device_params(handle)
            pending = (member, handle, scorer.call(cand, member, "score"))
            del cand
        if pending is not None:
            admit(pending[0], pending[1], scorer.value(pending[2]))

    elites.sort(key=lambda e: e[0])
    rescore_losses = None
    compare_loss = base_loss
    if cfg.rescore_elites:
        rescore_losses = {}
        rescored = []
        if population is not None:
            again = [e[1] for e in elites] + ([] if any(e[1] == 0 for e in elites) else [0])
            fresh = dict(zip(again, population(params, again, "rescore")))
        for loss, member, handle in elites:
            r = fresh[member] if population is not None else scorer(store.device_params(handle), member, "rescore")
            rescore_losses[member] = r
            if math.isfinite(r) or member == 0:
                rescored.append([r, member, handle])
        if 0 not in rescore_losses:
            rescore_losses[0] = fresh[0] if population is not None else scorer(params, 0, "rescore")
        compare_loss = rescore_losses[0]
        if not math.isfinite(compare_loss):
            raise RuntimeError(
                f"EGD evolution cycle {cycle} (step {step}): the base parameters' re-scored loss is "
                f"{compare_loss!r}; nothing was changed"
            )
        rescored = [e for e in rescored if math.isfinite(e[0])] or [[compare_loss, 0, BASE]]
        rescored.sort(key=lambda e: e[0])
        elites = rescored

    sel_losses = [e[0] for e in elites]
    if cfg.recombine == "softmax" and len(elites) > 1:
        weights = _softmax_weights(sel_losses, cfg.temperature)
    else:
        weights = [1.0 / len(elites)] * len(elites)
    handles = [e[2] for e in elites]
    members = [e[1] for e in elites]
    new_params = store.recombine(handles, members, weights)
    for h in handles:
        store.release(h)

    final_phase = "rescore" if cfg.rescore_elites else "score"
    if population is not None:
        recombined_loss = population(new_params, (-1,), final_phase)[0]
    else:
        recombined_loss = scorer(new_params, -1, final_phase)
    accepted = True
    final_loss = recombined_loss
    if cfg.accept == "if_better" and not recombined_loss <= compare_loss:
        accepted = False
        new_params = params
        final_loss = compare_loss
    if _backend.is_cupy(xp):
        _backend.synchronize(xp)
    seconds = time.perf_counter() - t0
    fields = dict(
        cycle=cycle,
        step=step,
        base_loss=base_loss,
        member_losses=tuple(member_losses),
        elite_indices=tuple(members),
        elite_losses=tuple(sel_losses),
        elite_weights=tuple(weights),
        rescore_losses=None if rescore_losses is None else dict(rescore_losses),
        recombined_loss=recombined_loss,
        loss=final_loss,
        accepted=accepted,
        sigma=float(sigma),
        scales=dict(scales),
        mutated=tuple(mutated),
        bytes_to_device=store.bytes_to_device,
        bytes_to_host=store.bytes_to_host,
        bytes_moved=store.bytes_to_device + store.bytes_to_host,
        closure_calls=scorer.calls,
        closure_seconds=scorer.seconds,
        seconds=seconds,
        population_storage=cfg.population_storage,
        host_buffer_bytes=workspace.host_nbytes if store_cls is HostPopulation else 0,
        scored_by="closure" if population is None else "population",
    )
    return CycleResult(new_params, accepted, fields)
