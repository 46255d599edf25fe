#!/usr/bin/env python3
"""GPU checks and benchmarks of issue 16, part B (run by tools/gpu_check.sh; docs/gpu.md).

    python tools/gpu_bench.py OUTDIR [--quick] [--only NAME ...] [--budget-s S]
    python tools/gpu_bench.py OUTDIR --cpu-dry-run      # every code path on NumPy / torch CPU, tiny sizes

Writes ``OUTDIR/gpu_results.json`` (rewritten after every benchmark, so a run
cut short keeps what it measured) and prints a summary.  Without a usable GPU
(and without ``--cpu-dry-run``) it writes ``"status": "no-gpu"`` with the
reason and exits 0.  Exit status 1 when a benchmark raised (the traceback is in
the JSON and the log); targets that are not met are results, not errors.

Benchmarks, in order (each skipped when the time left is below its minimum):

* ``noise_bitwise``    -- words on the device bitwise equal to Numba's for the
  same addresses; device normals (CUDA's own ``logf``/``sincospif``,
  ``log``/``sincospi``) and the fused weighted sum within ``NORMAL_ATOL`` of
  the float64 reference: what the CPU host check (tests/test_cuda_sources.py)
  cannot prove;
* ``philox_normals``   -- 10**8 float32 normals: egdnp vs ``cupy.random`` and
  ``torch.randn``, and egdnp's GB/s against the GPU's write bandwidth
  (a ``fill`` of the same array);
* ``eggroll_linear``   -- perturbed linear / clean GEMM, pop 1024 x batch 64 x
  1024 -> 1024, rank 1;
* ``pinned_h2d``       -- EGD's candidate copies (``HostPopulation.device_params``:
  pinned slot -> device buffer on the copy stream) against a 256 MiB pinned
  copy made with CuPy alone;
* ``egd_cycle``        -- EGD cycle time / its pop + 1 closure calls
  (asv's ``EvolutionCycle``, MLP 784-256-10, batch 512, pop 8), four configurations;
* ``eggroll_generation`` -- one EGGROLL generation, MLP 784-256-10, pop 16384,
  rank 4, batch 256: egdnp vs the same generation in torch CUDA eager.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "asv_bench"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

RESULTS = "gpu_results.json"

SIZES = {
    # the shapes
    "full": dict(words=2**24 + 3, wsum=(16, 2**22 + 1), normals=10**8, lin=(1024, 64, 1024, 1024), pop=16384,
                 chunk=2048, h2d=(4096, 4096), peak=256 * 2**20, egd_rounds=10, reps=20),
    # the same code paths, small: a GPU smoke run (--quick) and the CPU dry run
    "quick": dict(words=2**14 + 3, wsum=(4, 2**12 + 1), normals=10**6, lin=(16, 8, 64, 64), pop=64,
                  chunk=32, h2d=(256, 256), peak=4 * 2**20, egd_rounds=2, reps=3),
}

ADDRESSES = [(42, "fc1.weight", 17, 3), (2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1), (0x0123456789ABCDEF, 0, 0, 0)]


# ----------------------------------------------------------------------------
# context and timing
# ----------------------------------------------------------------------------
class Ctx:
    """Where to run: ``xp`` (CuPy or NumPy), torch and its device, sizes, the time budget."""

    def __init__(self, gpu: bool, sizes: dict, budget_s: float):
        from egdnp import _backend

        self.gpu = gpu
        self.backend = "cupy" if gpu else "numpy"
        self.xp = _backend.get_namespace(self.backend)
        self.s = sizes
        self.deadline = time.perf_counter() + budget_s
        try:
            import torch
        except ImportError:
            torch = None
        self.torch = torch
        self.tdev = "cuda" if gpu else "cpu"
        if gpu and torch is not None and not torch.cuda.is_available():
            self.torch = None  # a CPU-only torch on a GPU machine: no torch comparison

    def sync(self):
        from egdnp import _backend

        _backend.synchronize(self.xp)
        if self.gpu and self.torch is not None:
            self.torch.cuda.synchronize()

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def timed(fn, sync, reps: int, warmup: int = 1) -> dict:
    """Best and median seconds of ``reps`` calls (each followed by ``sync``), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"best_s": times[0], "median_s": times[len(times) // 2], "reps": reps}


def _nothing():
    return None


def target(name: str, goal: str, measured, met) -> dict:
    return {"name": name, "goal": goal, "measured": measured, "met": None if met is None else bool(met)}


# ----------------------------------------------------------------------------
# benchmarks: each returns (results dict, list of targets)
# ----------------------------------------------------------------------------
def bench_noise_bitwise(ctx: Ctx):
    import numpy as np

    from egdnp import _backend, rng
    from egdnp.rng import NORMAL_ATOL

    n = ctx.s["words"]
    out, all_ok, words_ok = {"n_per_address": n, "addresses": []}, True, True
    for seed, stream, member, generation in ADDRESSES:
        kw = dict(seed=seed, stream=stream, member=member, generation=generation)
        dev = _backend.to_host(rng.random_bits((n,), xp=ctx.xp, **kw))
        numba = rng.random_bits((n,), **kw)
        equal = bool(np.array_equal(dev, numba))
        ref = rng.normal((n,), dtype="float64", impl="array_api", **kw) if n <= 2**16 else rng.normal((n,), dtype="float64", **kw)
        errs = {}
        for dt in ("float32", "float64"):
            z = _backend.to_host(rng.normal((n,), dtype=dt, xp=ctx.xp, **kw)).astype(np.float64)
            errs[dt] = float(np.max(np.abs(z - np.asarray(ref))))
        u_equal = bool(np.array_equal(_backend.to_host(rng.uniform((n,), xp=ctx.xp, **kw)), rng.uniform((n,), **kw)))
        ok = equal and u_equal and all(errs[d] <= NORMAL_ATOL[d] for d in errs)
        words_ok &= equal
        all_ok &= ok
        out["addresses"].append({"address": [str(seed), str(stream), member, generation], "words_equal": equal,
                                 "uniform_equal": u_equal, "normal_max_abs_err": errs, "ok": ok})
    pop, p = ctx.s["wsum"]
    w = np.random.default_rng(0).standard_normal(pop)
    members = list(range(100, 100 + pop))
    kw = dict(seed=7, stream="fc1.weight", members=members, generation=5)
    ref = rng.weighted_noise_sum(w, (p,), dtype="float64", **kw)
    for dt in ("float32", "float64"):
        g = _backend.to_host(rng.weighted_noise_sum(w, (p,), dtype=dt, xp=ctx.xp, **kw)).astype(np.float64)
        err = float(np.max(np.abs(g - ref)))
        tol = float(np.sum(np.abs(w))) * NORMAL_ATOL[dt] + float(np.finfo(dt).eps) * float(np.max(np.abs(ref)))
        out[f"weighted_sum_{dt}"] = {"pop": pop, "n": p, "max_abs_err": err, "tolerance": tol, "ok": err <= tol}
        all_ok &= err <= tol
    out["ok"] = bool(all_ok)
    return out, [
        target("noise words bitwise equal to Numba's for the same addresses, on the device", "equal",
               f"{len(ADDRESSES)} addresses x {n} words", words_ok),
        target("device normals and weighted sums within NORMAL_ATOL of the float64 reference", "within",
               {a["address"][0]: a["normal_max_abs_err"] for a in out["addresses"]}, all_ok),
    ]


def bench_philox_normals(ctx: Ctx):
    import numpy as np

    from egdnp import rng

    n, reps, xp = ctx.s["normals"], ctx.s["reps"], ctx.xp
    out = {"n": n, "dtype": "float32"}
    out["egdnp"] = timed(lambda: rng.normal((n,), seed=1, stream=2, dtype="float32", xp=xp), ctx.sync, reps)
    if ctx.gpu:
        import cupy

        out["cupy.random.standard_normal"] = timed(lambda: cupy.random.standard_normal(n, dtype=cupy.float32), ctx.sync, reps)
        g = cupy.random.default_rng(0)
        out["cupy.random.default_rng().standard_normal"] = timed(lambda: g.standard_normal(n, dtype=cupy.float32), ctx.sync, reps)
        buf = cupy.empty(n, dtype=cupy.float32)
        fill = timed(lambda: buf.fill(0.5), ctx.sync, reps)
    else:
        g = np.random.default_rng(0)
        out["numpy default_rng().standard_normal"] = timed(lambda: g.standard_normal(n, dtype=np.float32), ctx.sync, reps)
        buf = np.empty(n, dtype=np.float32)
        fill = timed(lambda: buf.fill(0.5), ctx.sync, reps)
    fills = [fill["best_s"]]
    if ctx.torch is not None:
        torch = ctx.torch
        out["torch.randn"] = timed(lambda: torch.randn(n, device=ctx.tdev), ctx.sync, reps)
        tb = torch.empty(n, device=ctx.tdev)
        fills.append(timed(lambda: tb.fill_(0.5), ctx.sync, reps)["best_s"])
    write_gbps = 4 * n / min(fills) / 1e9
    ours_gbps = 4 * n / out["egdnp"]["best_s"] / 1e9
    out.update(write_bandwidth_gbps=write_gbps, egdnp_gbps=ours_gbps, fraction_of_write_bandwidth=ours_gbps / write_gbps)
    t = out["egdnp"]["best_s"]
    targets = [target("Philox normals, float32: share of the GPU's write bandwidth", ">= 0.80",
                      round(ours_gbps / write_gbps, 3), ours_gbps / write_gbps >= 0.8)]
    for other in ("cupy.random.standard_normal", "torch.randn"):
        if other in out:
            ratio = out[other]["best_s"] / t
            out[f"speedup_vs_{other}"] = ratio
            targets.append(target(f"Philox normals, float32, {n} values: egdnp vs {other} (their time / ours)",
                                  ">= 1.0", round(ratio, 3), ratio >= 1.0))
    return out, targets


def bench_eggroll_linear(ctx: Ctx):
    import numpy as np

    from benchmarks.bench_eggroll import _alternating_ratio
    from egdnp import _backend, es

    pop, batch, n_in, n_out = ctx.s["lin"]
    xp = ctx.xp
    g = np.random.default_rng(0)
    x = _backend.to_device(g.standard_normal((pop, batch, n_in), dtype=np.float32), xp)
    w = _backend.to_device(g.standard_normal((n_out, n_in), dtype=np.float32) * 0.05, xp)
    x2 = xp.reshape(x, (pop * batch, n_in))
    perts = es.generate({"fc.weight": w}, pop_size=pop, rank=1, sigma=0.05, seed=0, xp=xp)

    def clean():
        return xp.matmul(x2, w.T)

    def perturbed():
        return es.perturbed_linear(x, w, None, perts, weight_key="fc.weight")

    t_clean = timed(clean, ctx.sync, ctx.s["reps"])
    t_pert = timed(perturbed, ctx.sync, ctx.s["reps"])
    ratio = _alternating_ratio(clean, perturbed, rounds=3 * ctx.s["reps"], sync=ctx.sync)
    flops = 2.0 * pop * batch * n_in * n_out
    out = {"shape": {"pop": pop, "batch": batch, "n_in": n_in, "n_out": n_out, "rank": 1}, "clean": t_clean,
           "perturbed": t_pert, "clean_tflops": flops / t_clean["best_s"] / 1e12, "throughput_ratio": ratio}
    return out, [target(f"EGGROLL perturbed linear / clean GEMM, pop {pop} x batch {batch} x {n_in} -> {n_out}, rank 1 "
                        "(clean time / perturbed time)", ">= 0.91", round(ratio, 3), ratio >= 0.91)]


def bench_pinned_h2d(ctx: Ctx):
    import numpy as np

    from egdnp import _backend, nn, rng
    from egdnp.optim import _egd_population
    from egdnp.optim.egd import make_config

    if not ctx.gpu:
        # NumPy: host memory is the device's, HostPopulation copies nothing; run the path once for the dry run
        params = nn.mlp((784, 256, 10)).init(seed=0)
        cfg = make_config(pop_size=4)
        store = _egd_population.HostPopulation(cfg, ctx.xp, params, list(params),
                                          {k: 0.01 for k in params}, 1, _egd_population.Workspace(), cfg.seed)
        store.begin()
        store.device_params(store.prepare(1))
        return {"skipped": "CPU dry run: NumPy host memory is the device memory, nothing is copied"}, []
    import cupy

    xp, reps = ctx.xp, max(5, ctx.s["reps"])
    out = {}
    configs = {
        "mlp 784-256-10 (4 tensors)": nn.mlp((784, 256, 10)).init(seed=0, xp=xp),
        "one {}x{} float32 layer".format(*ctx.s["h2d"]): {"big.weight": rng.normal(ctx.s["h2d"], seed=0, stream=9, xp=xp)},
    }
    stream = cupy.cuda.Stream(non_blocking=True)

    def cupy_copy(pairs):
        for h, d in pairs:
            d.set(h, stream=stream)
        stream.synchronize()

    def pinned_pair(nbytes):
        mem = cupy.cuda.alloc_pinned_memory(nbytes)
        h = np.frombuffer(mem, dtype=np.uint8, count=nbytes)
        h[...] = 1
        return h, cupy.empty(nbytes, dtype=cupy.uint8)

    for label, params in configs.items():
        cfg = make_config(pop_size=8, seed=0)
        store = _egd_population.HostPopulation(cfg, xp, params, list(params), {k: 0.01 for k in params}, 1,
                                          _egd_population.Workspace(), cfg.seed)
        store.begin()
        handle = store.prepare(1)
        nbytes = sum(int(v.nbytes) for v in params.values())
        # device_params and cupy_copy end with their stream's synchronize: no extra device sync in the timing
        t = timed(lambda: store.device_params(handle), _nothing, reps)
        same_size = [pinned_pair(int(v.nbytes)) for v in params.values()]
        t_same = timed(lambda: cupy_copy(same_size), _nothing, reps)
        out[label] = {"bytes": nbytes, "egd": t, "egd_gbps": nbytes / t["best_s"] / 1e9,
                      "cupy_same_sizes_gbps": nbytes / t_same["best_s"] / 1e9}
    big = [pinned_pair(ctx.s["peak"])]
    t_peak = timed(lambda: cupy_copy(big), _nothing, reps)
    peak = ctx.s["peak"] / t_peak["best_s"] / 1e9
    out["cupy_pinned_peak"] = {"bytes": ctx.s["peak"], "copy": t_peak, "gbps": peak}
    targets = []
    for label in configs:
        frac = out[label]["egd_gbps"] / peak
        out[label]["fraction_of_peak"] = frac
        targets.append(target(f"EGD population transfer ({label}) / CuPy pinned-copy peak", ">= 0.80",
                              round(frac, 3), frac >= 0.8))
    return out, targets


def bench_egd_cycle(ctx: Ctx):
    from benchmarks.bench_egd import EvolutionCycle, overhead_ratio

    out, targets = {}, []
    for storage in ("array", "seed"):
        for mutation in ("full", "lowrank"):
            b = EvolutionCycle()
            b.setup(ctx.backend, storage, mutation)
            ratio = overhead_ratio(b.cycle, b.closures, b.sync, rounds=ctx.s["egd_rounds"])
            report = b.cycle()
            key = f"{storage}/{mutation}"
            out[key] = {"overhead_ratio": ratio, "bytes_moved": getattr(report, "bytes_moved", None)}
            targets.append(target(f"EGD cycle / its pop+1 closure calls ({key}, MLP 784-256-10, batch 512, pop 8)",
                                  "<= 1.10", round(ratio, 3), ratio <= 1.10))
    return out, targets


def bench_eggroll_generation(ctx: Ctx):
    from benchmarks.bench_eggroll import G_LR, G_RANK, G_SIGMA, SIZES as MLP, _synthetic, egdnp_generation, torch_generation
    from egdnp import _backend, es, nn, optim

    pop, chunk, xp = ctx.s["pop"], ctx.s["chunk"], ctx.xp
    x_host, y_host = _synthetic()
    x, y = _backend.to_device(x_host, xp), _backend.to_device(y_host, xp)
    model = nn.mlp(MLP, activation="tanh")
    strategy = es.Eggroll(pop_size=pop, rank=G_RANK, sigma=G_SIGMA, optimizer=optim.sgd(G_LR))
    state = strategy.init(model.init(seed=0, xp=xp), seed=3)
    out = {"pop": pop, "rank": G_RANK, "batch": int(x_host.shape[0]), "chunk": chunk}
    t0 = time.perf_counter()
    egdnp_generation(strategy, model, state, x, y, chunk=chunk)
    ctx.sync()
    first = time.perf_counter() - t0
    reps = max(1, min(ctx.s["reps"] // 4, int(ctx.left() / 4 / max(first, 1e-3))))
    out["egdnp_first_s"] = first
    out["egdnp"] = timed(lambda: egdnp_generation(strategy, model, state, x, y, chunk=chunk), ctx.sync, reps, warmup=0)
    targets = []
    if ctx.torch is not None:
        torch = ctx.torch
        tp = {k: torch.as_tensor(_backend.to_host(v), device=ctx.tdev) for k, v in state.params.items()}
        tx, ty = torch.as_tensor(x_host, device=ctx.tdev), torch.as_tensor(y_host, device=ctx.tdev)

        def run_torch():
            with torch.no_grad():
                return torch_generation(torch, tp, tx, ty, 0, chunk=chunk, pop=pop, device=ctx.tdev)

        out["torch_eager"] = timed(run_torch, ctx.sync, reps)
        ratio = out["torch_eager"]["best_s"] / out["egdnp"]["best_s"]
        out["speedup_vs_torch"] = ratio
        targets.append(target(f"EGGROLL generation, MLP 784-256-10, pop {pop}, rank {G_RANK}, batch 256: "
                              f"torch {ctx.tdev} eager time / egdnp time", ">= 1.0", round(ratio, 3), ratio >= 1.0))
    return out, targets


BENCHMARKS = {  # name: (function, minimum seconds left to start it)
    "noise_bitwise": (bench_noise_bitwise, 10),
    "philox_normals": (bench_philox_normals, 10),
    "eggroll_linear": (bench_eggroll_linear, 15),
    "pinned_h2d": (bench_pinned_h2d, 10),
    "egd_cycle": (bench_egd_cycle, 30),
    "eggroll_generation": (bench_eggroll_generation, 30),
}


# ----------------------------------------------------------------------------
# environment, JSON, main
# ----------------------------------------------------------------------------
def environment(gpu: bool) -> dict:
    env = {"python": platform.python_version(), "machine": platform.machine(), "host": platform.node(),
           "cpu_count": os.cpu_count()}
    for mod in ("numpy", "numba", "array_api_compat", "array_api_strict", "torch", "cupy"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - a missing package is a fact to record
            env[mod] = f"unavailable ({type(exc).__name__})"
    if gpu:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        env["gpu"] = name.decode() if isinstance(name, bytes) else name
        env["compute_capability"] = f"{props['major']}.{props['minor']}"
        env["gpu_memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
        env["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
        env["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        env["device_count"] = cupy.cuda.runtime.getDeviceCount()
    return env


def write_json(path: Path, doc: dict) -> None:
    from egdnp._files import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", help="folder for gpu_results.json ($OUT on the device machine)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run; the numbers mean little)")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every benchmark's code on NumPy / torch CPU at --quick sizes (no GPU needed)")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), metavar="NAME",
                    help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    ap.add_argument("--budget-s", type=float, default=200.0, help="seconds for all benchmarks (default 200)")
    ap.add_argument("--no-gpu-reason", default=None, help="(gpu_check.sh) record that no GPU was found, and stop")
    ap.add_argument("--tests", nargs=2, action="append", default=[], metavar=("LABEL", "JUNIT_XML"),
                    help="(gpu_check.sh) a pytest junit file to summarise in the JSON")
    args = ap.parse_args(argv)
    if args.budget_s <= 0:
        ap.error(f"--budget-s={args.budget_s} must be > 0")
    return args


def junit_summary(path: str) -> dict:
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"file": path, "error": f"{type(exc).__name__}: {exc}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    summary = {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}
    summary["time_s"] = round(sum(float(s.get("time", 0.0)) for s in suites), 1)
    summary["failed"] = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
                         if c.find("failure") is not None or c.find("error") is not None][:50]
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.outdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS
    doc = {"schema": 1, "started": _now(), "argv": list(sys.argv[1:] if argv is None else argv),
           "tests": {label: junit_summary(xml) for label, xml in args.tests}}
    if args.no_gpu_reason is not None:
        doc.update(status="no-gpu", reason=args.no_gpu_reason)
        write_json(path, doc)
        print(f"gpu_bench: no GPU ({args.no_gpu_reason}); wrote {path}")
        return 0
    from egdnp import _backend

    gpu = _backend.cupy_available()
    if not gpu and not args.cpu_dry_run:
        try:
            _backend.get_namespace("cupy")
        except RuntimeError as exc:
            reason = str(exc)
        doc.update(status="no-gpu", reason=reason)
        write_json(path, doc)
        print(f"gpu_bench: no usable GPU here, nothing measured ({reason.split(';')[0]}).\n"
              f"  Run tools/gpu_check.sh on a GPU machine (docs/gpu.md), or --cpu-dry-run to exercise the code. "
              f"Wrote {path}")
        return 0
    mode = "gpu" if gpu and not args.cpu_dry_run else "cpu-dry-run"
    sizes = SIZES["quick" if (args.quick or mode == "cpu-dry-run") else "full"]
    ctx = Ctx(mode == "gpu", sizes, args.budget_s)
    doc.update(status="running", mode=mode, sizes="quick" if sizes is SIZES["quick"] else "full",
               env=environment(ctx.gpu), benchmarks={}, targets=[])
    if mode == "cpu-dry-run":
        doc["note"] = "CPU dry run: NumPy and torch CPU at tiny sizes; the numbers say nothing about a GPU"
    write_json(path, doc)
    print(f"gpu_bench: mode {mode}, sizes {doc['sizes']}, budget {args.budget_s:.0f} s; env {json.dumps(doc['env'])}")
    failed = 0
    for name in args.only or list(BENCHMARKS):
        fn, minimum = BENCHMARKS[name]
        if ctx.left() < minimum:
            doc["benchmarks"][name] = {"skipped": f"{ctx.left():.0f} s left, {minimum} s needed"}
            print(f"-- {name}: skipped ({ctx.left():.0f} s left)")
            continue
        t0 = time.perf_counter()
        try:
            res, targets = fn(ctx)
        except Exception:  # noqa: BLE001 - record it, go on with the next benchmark
            failed += 1
            tb = traceback.format_exc()
            res, targets = {"error": tb}, []
            print(f"-- {name}: ERROR\n{tb}")
        res["seconds"] = round(time.perf_counter() - t0, 2)
        doc["benchmarks"][name] = res
        doc["targets"].extend(dict(t, benchmark=name) for t in targets)
        for t in targets:
            mark = {True: "met", False: "NOT MET", None: "-"}[t["met"]]
            print(f"-- {name}: {t['name']}: {t['measured']} (goal {t['goal']}): {mark}")
        if "error" not in res:
            print(f"-- {name}: done in {res['seconds']} s")
        write_json(path, doc)
    doc["status"] = "errors" if failed else "ok"
    doc["finished"] = _now()
    write_json(path, doc)
    print(f"gpu_bench: {doc['status']}; {sum(bool(t['met']) for t in doc['targets'])}/{len(doc['targets'])} "
          f"targets met; wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
