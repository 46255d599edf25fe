"""Test helpers for egdnp's CUDA sources on machines without a GPU.

Two tools, both fed the exact source text egdnp hands to ``cupy.RawModule``
(``egdnp.rng._gpu.CUDA_SOURCES``):

* :func:`nvcc_compile` compiles a source for a GPU architecture with the
  options CuPy's compiler receives (egdnp's options, then ``-ftz=true`` that
  CuPy appends, then ``-arch``), with the templates named in
  ``name_expressions`` explicitly instantiated the way NVRTC instantiates them.
* :func:`build_host_library` compiles the same source as *host* code with g++
  through a shim header (``__global__``/``__device__`` become plain functions,
  ``blockIdx``/``threadIdx``/... become variables, ``sincospif``/``sincospi``
  get host versions) and adds one C launcher per kernel that runs every thread
  of a grid in turn.  :class:`FakeCupy` then stands in for CuPy so that
  ``egdnp.rng._gpu``'s own Python code (argument marshalling, launch shape,
  dtype choice) drives those launchers.

What the host run proves, and what it cannot, is written in docs/gpu.md.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np

#: Options CuPy appends to a RawModule's own (cupy/cuda/compiler.py: ``options += ('-ftz=true',)``).
CUPY_APPENDED_OPTIONS = ("-ftz=true",)

_KERNEL_RE = re.compile(
    r'(?:template\s*<\s*typename\s+(?P<tparam>\w+)\s*>\s*)?(?:extern\s+"C"\s+)?__global__\s+void\s+'
    r"(?P<name>\w+)\s*\((?P<params>[^)]*)\)",
    re.S,
)
_PARAM_RE = re.compile(r"^(?P<type>.*?)(?P<name>\w+)$", re.S)

# C type of a by-value kernel argument -> (ctypes type, the NumPy scalar type CuPy must be handed)
_SCALARS = {
    "u32": (ctypes.c_uint32, np.uint32),
    "unsigned int": (ctypes.c_uint32, np.uint32),
    "int": (ctypes.c_int32, np.int32),
    "long long": (ctypes.c_int64, np.int64),
    "float": (ctypes.c_float, np.float32),
    "double": (ctypes.c_double, np.float64),
}
# element type of a pointer argument -> NumPy dtype of the array passed for it
_POINTEES = {"u32": np.uint32, "unsigned int": np.uint32, "int": np.int32, "long long": np.int64,
             "float": np.float32, "double": np.float64}


def which(tool: str) -> str | None:
    return shutil.which(tool)


# ----------------------------------------------------------------------------
# kernel signatures, parsed from the source text
# ----------------------------------------------------------------------------
def kernel_templates(code: str) -> dict:
    """``{kernel name: (template parameter or None, [(c type, param name), ...])}`` of every ``__global__``."""
    out = {}
    for m in _KERNEL_RE.finditer(code):
        params = []
        for raw in m.group("params").split(","):
            raw = " ".join(raw.split())
            if not raw:
                continue
            pm = _PARAM_RE.match(raw)
            params.append((pm.group("type").strip(), pm.group("name")))
        out[m.group("name")] = (m.group("tparam"), params)
    return out


def resolve(code: str, expression: str):
    """The kernel of a name expression (``"egdnp_normal<float>"``): (base name, template arg, params)."""
    m = re.fullmatch(r"\s*(\w+)\s*(?:<\s*([\w ]+?)\s*>)?\s*", expression)
    if m is None:
        raise ValueError(f"name expression {expression!r} is not NAME or NAME<TYPE>")
    name, targ = m.group(1), m.group(2)
    templates = kernel_templates(code)
    if name not in templates:
        raise ValueError(f"name expression {expression!r}: no __global__ function {name!r} in the source")
    tparam, params = templates[name]
    if (tparam is None) != (targ is None):
        raise ValueError(f"name expression {expression!r} does not match the template-ness of {name!r}")
    if tparam is not None:
        params = [(re.sub(rf"\b{tparam}\b", targ, t), p) for t, p in params]
    return name, targ, params


def instantiation_lines(code: str, expressions) -> str:
    """Explicit instantiations of the templated name expressions (what NVRTC does for ``name_expressions``)."""
    lines = []
    for expr in expressions:
        name, targ, params = resolve(code, expr)
        if targ is not None:
            plist = ", ".join(f"{t} {p}" for t, p in params)
            lines.append(f"template __global__ void {name}<{targ}>({plist});")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# nvcc: the device compile
# ----------------------------------------------------------------------------
def cupy_options(src, arch: str) -> tuple:
    """The options NVRTC receives from CuPy for ``src`` on a device of compute capability ``arch`` ("80")."""
    return tuple(src.options) + CUPY_APPENDED_OPTIONS + (f"-arch=sm_{arch}",)


def nvcc_compile(src, arch: str, kind: str, workdir: Path):
    """Compile ``src`` to ``kind`` ("cubin" or "ptx") for ``sm_{arch}``.

    Returns (output path, the exact .cu text compiled, nvcc's combined output).
    Raises AssertionError with nvcc's log on any error or warning.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    text = src.code + "\n/* test harness only: what NVRTC instantiates from name_expressions */\n"
    text += instantiation_lines(src.code, src.name_expressions)
    cu = workdir / f"{src.name.replace(' ', '_')}_sm{arch}.cu"
    cu.write_text(text)
    out = cu.with_suffix("." + kind)
    cmd = ["nvcc", f"--{kind}", *cupy_options(src, arch), "-Werror", "all-warnings", "-Xptxas", "-v",
           str(cu), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed for {src.name!r} (sm_{arch}):\n$ {' '.join(cmd)}\n{log}"
    return out, text, log


# ----------------------------------------------------------------------------
# g++: the same source as host code
# ----------------------------------------------------------------------------
SHIM = r"""
/* Host shim for egdnp's CUDA sources (tests only).  The kernel text that
   follows is compiled unchanged: execution-space qualifiers vanish, the
   built-in index variables become globals that the launchers below set, and
   CUDA's sincospif/sincospi get host versions (exact reduction to
   [-1/4, 1/4], then libm sin/cos in double).  logf, sqrtf, log and sqrt are
   the host libm's. */
#include <math.h>
#include <stdint.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
struct egdnp_uint3 { unsigned int x, y, z; };
static egdnp_uint3 threadIdx, blockIdx, blockDim, gridDim;

static inline void egdnp_host_sincospi(double x, double* s, double* c) {
    double q = nearbyint(2.0 * x);  /* x = q/2 + r, |r| <= 1/4, both exact */
    double r = x - 0.5 * q;
    double sr = sin(M_PI * r), cr = cos(M_PI * r);
    switch (((long long)q) & 3) {
        case 0: *s = sr; *c = cr; break;
        case 1: *s = cr; *c = -sr; break;
        case 2: *s = -sr; *c = -cr; break;
        default: *s = -cr; *c = sr; break;
    }
}
static inline void sincospif(float x, float* s, float* c) {
    double sd, cd;
    egdnp_host_sincospi((double)x, &sd, &cd);
    *s = (float)sd; *c = (float)cd;
}
static inline void sincospi(double x, double* s, double* c) { egdnp_host_sincospi(x, s, c); }

/* CuPy compiles with -ftz=true: flush float32 denormals on the host too. */
struct egdnp_ftz_scope {
#if defined(__SSE__)
    unsigned int saved;
    egdnp_ftz_scope() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
    ~egdnp_ftz_scope() { _mm_setcsr(saved); }
#endif
};
"""


def _launcher(index: int, expr: str, params) -> str:
    plist = ", ".join(f"{t} {p}" for t, p in params)
    names = ", ".join(p for _, p in params)
    return f"""
extern "C" void egdnp_host_launch_{index}(unsigned int egdnp_grid, unsigned int egdnp_grid_y,
                                           unsigned int egdnp_block, {plist}) {{
    egdnp_ftz_scope ftz;
    gridDim.x = egdnp_grid; gridDim.y = egdnp_grid_y; gridDim.z = 1;
    blockDim.x = egdnp_block; blockDim.y = blockDim.z = 1;
    for (unsigned int by = 0; by < egdnp_grid_y; ++by) {{
        for (unsigned int bx = 0; bx < egdnp_grid; ++bx) {{
            for (unsigned int tx = 0; tx < egdnp_block; ++tx) {{
                blockIdx.x = bx; blockIdx.y = by; blockIdx.z = 0;
                threadIdx.x = tx; threadIdx.y = threadIdx.z = 0;
                {expr}({names});
            }}
        }}
    }}
}}
"""


_PHILOX_WRAPPER = """
/* Philox4x32-10 of n arbitrary counters (block[i], c1[i], c2[i], c3[i]) under one key. */
extern "C" void egdnp_host_philox(long long n, const u32* b, const u32* c1, const u32* c2, const u32* c3,
                                  u32 k0, u32 k1, u32* out) {
    for (long long i = 0; i < n; ++i) egdnp_philox4x32_10(b[i], c1[i], c2[i], c3[i], k0, k1, out + 4 * i);
}
"""


class HostKernels:
    """The kernels of one CUDA source, compiled as host code and loaded with ctypes."""

    def __init__(self, src, lib_path: Path, kernel_text: str):
        self.src, self.path, self.kernel_text = src, lib_path, kernel_text
        self.lib = ctypes.CDLL(str(lib_path))
        self.signatures = {}
        self.functions = {}
        for i, expr in enumerate(src.name_expressions):
            _, _, params = resolve(src.code, expr)
            fn = getattr(self.lib, f"egdnp_host_launch_{i}")
            fn.restype = None
            fn.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32] + [
                ctypes.c_void_p if t.endswith("*") else _SCALARS[t][0] for t, _ in params
            ]
            self.signatures[expr] = params
            self.functions[expr] = fn

    def philox(self, counters, key):
        """Philox4x32-10 of the source's own round function: counters (n, 4) uint32, key (k0, k1) -> (n, 4)."""
        c = np.ascontiguousarray(np.asarray(counters, dtype=np.uint32).reshape(-1, 4).T)
        out = np.empty((c.shape[1], 4), dtype=np.uint32)
        fn = self.lib.egdnp_host_philox
        fn.restype = None
        fn.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 4 + [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
        fn(c.shape[1], *(c[i].ctypes.data for i in range(4)), int(key[0]), int(key[1]), out.ctypes.data)
        return out

    def check_args(self, expr: str, args) -> None:
        """Assert that ``args`` are what a CuPy launch of ``expr`` must be handed (dtypes exact)."""
        params = self.signatures[expr]
        assert len(args) == len(params), f"{expr}: {len(args)} arguments for {len(params)} parameters"
        for a, (t, name) in zip(args, params):
            if t.endswith("*"):
                elem = t[:-1].replace("const", "").strip()
                assert isinstance(a, np.ndarray), f"{expr}: parameter {name} ({t}) got {type(a).__name__}"
                assert a.dtype == _POINTEES[elem], f"{expr}: parameter {name} ({t}) got an array of {a.dtype}"
                assert a.flags.c_contiguous, f"{expr}: parameter {name} got a non-contiguous array"
            else:
                want = _SCALARS[t][1]
                # CuPy passes a Python int as a 64-bit integer: every by-value argument must be a
                # NumPy scalar of exactly the parameter's width and signedness
                assert isinstance(a, np.generic) and type(a) is want, (
                    f"{expr}: parameter {name} ({t}) got {type(a).__name__} {a!r}, want {want.__name__}")

    def launch(self, expr: str, grid, block: int, args) -> None:
        """Run every thread of a ``grid`` (int, or (x, y) for a 2-D grid) of ``block`` threads in turn."""
        self.check_args(expr, args)
        gx, gy = grid if isinstance(grid, tuple) else (grid, 1)
        cargs = [a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in args]
        self.functions[expr](gx, gy, block, *cargs)


def build_host_library(src, workdir: Path) -> HostKernels:
    """Compile ``src.code`` unchanged as host C++ (g++, no FMA contraction) with one launcher per kernel."""
    workdir.mkdir(parents=True, exist_ok=True)
    kernel = workdir / "kernel.cu"
    kernel.write_bytes(src.code.encode("utf-8"))
    (workdir / "egdnp_host_shim.h").write_text(SHIM)
    harness = ['#include "egdnp_host_shim.h"', '#include "kernel.cu"']
    for i, expr in enumerate(src.name_expressions):
        name, targ, params = resolve(src.code, expr)
        harness.append(_launcher(i, f"{name}<{targ}>" if targ else name, params))
    if "egdnp_philox4x32_10" in src.code:
        harness.append(_PHILOX_WRAPPER)
    (workdir / "harness.cpp").write_text("\n".join(harness))
    lib = workdir / "libegdnp_cuda_host.so"
    # -ffp-contract=off mirrors --fmad=false: no product is fused into a sum
    cmd = ["g++", "-std=c++14", "-O2", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
           "-Wall", "-Werror", "-Wno-unused-function", str(workdir / "harness.cpp"), "-o", str(lib)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir)
    assert proc.returncode == 0, f"host build of {src.name!r} failed:\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    return HostKernels(src, lib, kernel.read_text())


# ----------------------------------------------------------------------------
# a CuPy stand-in that runs RawModule kernels through the host launchers
# ----------------------------------------------------------------------------
class FakeCupy(types.ModuleType):
    """Just enough of CuPy for ``egdnp.rng._gpu``: NumPy arrays stand in for device arrays,
    ``RawModule`` checks what egdnp compiles and launches, and runs the host-compiled kernels."""

    def __init__(self, kernels: HostKernels):
        super().__init__("cupy")
        self.kernels = kernels
        self.launches: list = []
        self.modules: list = []
        self.ndarray = np.ndarray
        for name in ("uint32", "int32", "int64", "float32", "float64"):
            setattr(self, name, getattr(np, name))
        self.empty, self.zeros, self.asarray = np.empty, np.zeros, np.asarray
        fake = self

        class RawModule:
            def __init__(self, code, options=(), name_expressions=None, **kwargs):
                assert code == fake.kernels.src.code, "RawModule got a source other than the registered one"
                assert tuple(options) == tuple(fake.kernels.src.options)
                assert tuple(name_expressions) == tuple(fake.kernels.src.name_expressions)
                fake.modules.append(self)
                self.name_expressions = tuple(name_expressions)

            def get_function(self, name):
                assert name in self.name_expressions, f"get_function({name!r}) was not in name_expressions"

                def kernel(grid, block, args):
                    assert isinstance(grid, tuple) and isinstance(block, tuple)
                    assert len(grid) in (1, 2) and len(block) == 1, "egdnp's grids are 1-D or 2-D, its blocks 1-D"
                    g, b = int(grid[0]), int(block[0])
                    assert 1 <= g <= 2**31 - 1 and 1 <= b <= 1024, f"launch {grid}, ({b},) is not valid on CUDA"
                    if len(grid) == 2:
                        gy = int(grid[1])
                        assert 1 <= gy <= 65535, f"launch {grid}: grid y must be in [1, 65535] on CUDA"
                        fake.launches.append((name, (g, gy), b))
                        fake.kernels.launch(name, (g, gy), b, args)
                        return
                    fake.launches.append((name, g, b))
                    fake.kernels.launch(name, g, b, args)

                return kernel

        self.RawModule = RawModule
