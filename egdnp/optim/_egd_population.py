"""EGD's population stores: where a cycle keeps its base, its candidates and its elites.

Three stores share one interface (``begin``, ``prepare``, ``device_params``,
``release``, ``recombine``), so the cycle (:mod:`egdnp.optim._egd_cycle`)
is written once:

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
  regenerated.  No parameter array crosses between host and device.

A handle is what ``prepare(member)`` returns (a host slot, a dict of device
arrays, or the member itself); :data:`BASE` is the base member's.  The
kernels (mutants, recombination, mixing) are chosen in
:mod:`egdnp.optim._egd_mutation`.  Parameters that are not mutated
(``mutate_filter`` said no, or empty tensors) are never copied: every
candidate uses the live array.
"""

from __future__ import annotations

from .. import _backend
from ._egd_mutation import dtype_name, mix, mutant, mutant_plans, seed_recombination

__all__ = ["BASE", "Workspace", "SeedPopulation", "DevicePopulation", "HostPopulation", "store_for",
           "population_bytes", "check_population_fits", "nbytes"]

BASE = "base"  # handle of the base member (member 0) in every store


class Workspace:
    """Scratch memory reused across cycles (not optimiser state: never saved, never needed to resume).

    Attributes
    ----------
    pools : dict
        One :class:`egdnp._backend.BufferPool` per backend name.
    device_buffers : dict
        The device candidate buffer of every mutated parameter (CuPy), and
        NumPy's reused candidate/scratch buffers.
    copy_streams : dict
        CuPy only: the stream the candidates are copied on.
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


def nbytes(x) -> int:
    """Bytes of array ``x`` (any namespace)."""
    n = 1
    for d in x.shape:
        n *= int(d)
    return n * _backend.numpy_dtype(_backend.array_namespace(x), x.dtype).itemsize


def population_bytes(cfg, params: dict, mutated) -> int:
    """Bytes the population buffers of one cycle hold at once (0 for ``population_storage="seed"``).

    Array storage holds ``k + 2`` candidate slots of every mutated tensor (the
    elites, the candidate being scored, the one being built) and the
    recombined copy.
    """
    if cfg.population_storage == "seed":
        return 0
    return (cfg.n_elites + 3) * sum(nbytes(params[n]) for n in mutated)


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
        self.plans: dict = {}

    def _plans(self, ns, bases: dict) -> dict:
        return mutant_plans(ns, bases, self.scales, seed=self.seed, cycle=self.cycle, mutation=self.cfg.mutation,
                            rank=self.cfg.rank)

    def _mutant(self, ns, base, name, member, device=None, out=None):
        """The mutant of ``member`` (written into ``out`` when given): its plan's kernel, else :func:`mutant`."""
        plan = self.plans.get(name) if out is not None else None
        if plan is not None:
            plan.write(out, member)
            return out
        return mutant(base, self.scales[name], seed=self.seed, name=name, member=member, cycle=self.cycle,
                      xp=ns, device=device, mutation=self.cfg.mutation, rank=self.cfg.rank, out=out)

    def _fresh_candidate(self, member: int) -> dict:
        dev = None if self.numpy or _backend.is_cupy(self.xp) else self.device
        return {n: self._mutant(self.xp, self.params[n], n, member, device=dev) for n in self.mutated}

    def release(self, handle) -> None:
        pass


class SeedPopulation(_Population):
    """Members are noise addresses; everything is regenerated on the device."""

    def begin(self, n_slots: int | None = None) -> None:
        # NumPy: one reused candidate buffer per parameter (the device holds one candidate at a time)
        self.plans = self._plans(self.xp, {n: self.params[n] for n in self.mutated})

    def prepare(self, member: int):
        return member

    def device_params(self, handle) -> dict:
        if handle == BASE:
            return self.params
        cand = dict(self.params)
        if self.numpy:
            for n in self.mutated:
                p = self.params[n]
                out = self.ws.device_buffer(self.xp, ("candidate", n), p.shape, p.dtype)
                cand[n] = self._mutant(self.xp, p, n, handle, out=out)
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
            out[n] = seed_recombination(self.params[n], ws, ms, self.scales[n], seed=self.seed, name=n,
                                        cycle=self.cycle, xp=self.xp, device=dev, mutation=self.cfg.mutation,
                                        rank=self.cfg.rank)
        return out


class _ArrayPopulation(_Population):
    """A store whose candidates are arrays: recombination mixes the elites' arrays tensor by tensor."""

    def _part(self, handle, name: str):
        raise NotImplementedError

    def _mix(self, name: str, parts: list, weights, uniform: bool):
        raise NotImplementedError

    def recombine(self, handles, members, weights) -> dict:
        if all(h == BASE for h in handles):
            return dict(self.params)
        out = dict(self.params)
        uniform = len(set(weights)) == 1
        for n in self.mutated:
            out[n] = self._mix(n, [self._part(h, n) for h in handles], weights, uniform)
        return out


class DevicePopulation(_ArrayPopulation):
    """``offload_population_to_cpu=False``: candidates and elites are device arrays (k + 2 at most)."""

    def begin(self, n_slots: int | None = None) -> None:
        pass

    def prepare(self, member: int) -> dict:
        # fresh arrays: a candidate may stay as an elite while the next ones are built
        return self._fresh_candidate(member)

    def device_params(self, handle) -> dict:
        if handle == BASE:
            return self.params
        cand = dict(self.params)
        cand.update(handle)
        return cand

    def _part(self, handle, name: str):
        return self.params[name] if handle == BASE else handle[name]

    def _mix(self, name: str, parts: list, weights, uniform: bool):
        return mix(self.xp, parts, weights, uniform)


class HostPopulation(_ArrayPopulation):
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
        self.plans = self._plans(self.hxp, self.base_host)

    def prepare(self, member: int) -> int:
        slot = self.free_slots.pop()
        for n in self.mutated:
            self._mutant(self.hxp, self.base_host[n], n, member, out=self.slots[slot, n])
        return slot

    def release(self, handle) -> None:
        if handle != BASE:
            self.free_slots.append(handle)

    def device_params(self, handle) -> dict:
        if handle == BASE:
            return self.params
        cand = dict(self.params)
        for n in self.mutated:
            host = self.slots[handle, n]
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

    def _part(self, handle, name: str):
        return self.base_host[name] if handle == BASE else self.slots[handle, name]

    def _mix(self, name: str, parts: list, weights, uniform: bool):
        if self.same_memory:
            # NumPy: one pass straight into the new parameter array
            return mix(self.hxp, parts, weights, uniform)
        mixed = mix(self.hxp, parts, weights, uniform, out=self.pool.get(("mixed", name), parts[0].shape,
                                                                         parts[0].dtype))
        self.bytes_to_device += mixed.nbytes
        return _backend.to_device(mixed, self.xp, device=None if self.is_cupy else self.device)

    def recombine(self, handles, members, weights) -> dict:
        out = super().recombine(handles, members, weights)
        if self.is_cupy:
            _backend.synchronize(self.xp)  # the mixed parameters are complete when returned
        return out


def store_for(cfg):
    """The store class of ``cfg.population_storage`` and ``cfg.offload_population_to_cpu``."""
    if cfg.population_storage == "seed":
        return SeedPopulation
    return HostPopulation if cfg.offload_population_to_cpu else DevicePopulation
