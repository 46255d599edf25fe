#!/usr/bin/env bash
# Issue 16, part B: every CuPy path and the GPU targets, in one run on a GPU machine.
#
#   tools/gpu_check.sh OUTDIR
#
# 1. no NVIDIA GPU (nvidia-smi missing or listing none): says so, writes
#    OUTDIR/gpu_results.json with "status": "no-gpu" and exits 0;
# 2. installs the carried wheels from .whl/ (array-api-compat, array-api-strict: the GPU
#    image lacks them) into /tmp/egdnp-site, then egdnp itself with pip install --no-deps -e .
#    (no build isolation: nothing can be downloaded there);
# 3. runs the CuPy side of the test suite (every test with "cupy" in its id: the xp
#    fixture's cupy cases and the CuPy-only tests), then tests/test_cuda_sources.py;
# 4. runs tools/gpu_bench.py (noise bitwise on the device, Philox normals vs cupy.random and
#    torch.randn, EGGROLL linear and generation, pinned H2D, EGD cycle overhead).
#
# Everything printed goes to OUTDIR/gpu_check.log as well; OUTDIR also receives
# gpu_results.json and the two pytest junit files (4 files).  Time limits (seconds,
# environment): GPU_CHECK_TESTS_S (default 170) for the test runs together,
# GPU_CHECK_BENCH_S (default 200) for the benchmarks; GPU_CHECK_SKIP_TESTS=1 or
# GPU_CHECK_SKIP_BENCH=1 leaves a part out (a rerun after a fix), GPU_CHECK_BENCH_ARGS adds
# arguments for gpu_bench.py (e.g. "--only noise_bitwise philox_normals").  Whole run:
# under 7 minutes with the defaults.  docs/gpu.md says how to launch it with the device tool.
#
# GPU_CHECK_CPU_DRY_RUN=1 walks the whole flow on a CPU machine: no GPU check, no
# pip install -e (the checkout must import), CuPy tests collected and skipped,
# gpu_bench.py --cpu-dry-run.  Nothing it prints is a GPU result.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: tools/gpu_check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

run_all() {  # (not indented: it holds a heredoc)
PY=${PYTHON:-python3}
TESTS_S=${GPU_CHECK_TESTS_S:-170}
BENCH_S=${GPU_CHECK_BENCH_S:-200}
t_start=$(date +%s)
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) in $PWD ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"

DRY=${GPU_CHECK_CPU_DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
    echo "gpu_check: CPU DRY RUN (GPU_CHECK_CPU_DRY_RUN=1): the flow only, no GPU results"
elif ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU on this machine (nvidia-smi is missing or lists no device): nothing to check."
    echo "gpu_check: run it on a GPU machine through the device tool (docs/gpu.md)."
    "$PY" tools/gpu_bench.py "$OUT" --no-gpu-reason "nvidia-smi found no GPU on $(uname -n)"
    exit 0
fi
[ "$DRY" = 1 ] || nvidia-smi

echo "== install"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/egdnp-site .whl/*.whl || { echo "gpu_check: installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/egdnp-site${PYTHONPATH:+:$PYTHONPATH}
    echo "wheels: $(cd .whl && ls *.whl | tr '\n' ' ')"
else
    echo "gpu_check: WARNING no wheels in .whl/: array-api-compat and array-api-strict must already be installed (docs/gpu.md)"
fi
if [ "$DRY" = 1 ]; then
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
elif ! "$PY" -m pip install -q --no-deps --no-build-isolation -e .; then
    echo "gpu_check: pip install -e . failed; using the checkout through PYTHONPATH"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
GPU_CHECK_CPU_DRY_RUN=$DRY "$PY" - <<'EOF' || { echo "gpu_check: egdnp or its dependencies do not import"; exit 1; }
import os
import array_api_compat, array_api_strict, numba, numpy
import egdnp
from egdnp import _backend
print("egdnp", egdnp.__file__, "| numpy", numpy.__version__, "| numba", numba.__version__,
      "| array-api-compat", array_api_compat.__version__, "| array-api-strict", array_api_strict.__version__)
print("cupy usable:", _backend.cupy_available(), "| GPUs:", _backend.device_count())
if os.environ["GPU_CHECK_CPU_DRY_RUN"] != "1":
    import cupy
    print("cupy", cupy.__version__)
    assert _backend.cupy_available(), "CuPy sees no usable GPU"
EOF

tests_rc=0
tests_args=()
if [ "${GPU_CHECK_SKIP_TESTS:-0}" != 1 ]; then
    echo "== CuPy side of the test suite (limit ${TESTS_S} s)"
    # pytest-timeout (on the GPU image): no test may hang, and with >= 2.3 the session stops
    # itself before the limit so that the junit file is still written
    extra=()
    ptt=$("$PY" -c "import importlib.metadata as m; print(m.version('pytest-timeout'))" 2>/dev/null)
    if [ -n "$ptt" ]; then
        extra=(--timeout=120)
        if "$PY" -c "import sys; sys.exit(tuple(map(int, '$ptt'.split('.')[:2])) < (2, 3))"; then
            extra+=(--session-timeout=$(( TESTS_S - 40 )))
        fi
    fi
    echo "pytest-timeout: ${ptt:-not installed} ${extra[*]}"
    t0=$(date +%s)
    timeout -k 10 "$TESTS_S" "$PY" -m pytest -q -rfEs -p no:cacheprovider "${extra[@]}" tests \
        -k "cupy and not test_cupy_path_without_gpu" --junitxml="$OUT/pytest_cupy.xml"
    tests_rc=$?
    left=$(( TESTS_S - ($(date +%s) - t0) ))
    if [ "$left" -gt 20 ]; then
        timeout -k 5 "$left" "$PY" -m pytest -q -rfEs -p no:cacheprovider tests/test_cuda_sources.py \
            --junitxml="$OUT/pytest_cuda_sources.xml"
        rc=$?
        [ "$tests_rc" -eq 0 ] && tests_rc=$rc
    else
        echo "gpu_check: no time left for tests/test_cuda_sources.py"
    fi
    [ -f "$OUT/pytest_cupy.xml" ] && tests_args+=(--tests cupy "$OUT/pytest_cupy.xml")
    [ -f "$OUT/pytest_cuda_sources.xml" ] && tests_args+=(--tests cuda_sources "$OUT/pytest_cuda_sources.xml")
fi

bench_rc=0
if [ "${GPU_CHECK_SKIP_BENCH:-0}" != 1 ]; then
    echo "== benchmarks (limit ${BENCH_S} s)"
    # shellcheck disable=SC2086
    dry=()
    [ "$DRY" = 1 ] && dry=(--cpu-dry-run)
    timeout -k 10 "$BENCH_S" "$PY" tools/gpu_bench.py "$OUT" --budget-s $(( BENCH_S - 20 )) \
        "${dry[@]}" "${tests_args[@]}" ${GPU_CHECK_BENCH_ARGS:-}
    bench_rc=$?
fi

echo "== gpu_check done in $(( $(date +%s) - t_start )) s: tests rc=$tests_rc, benchmarks rc=$bench_rc; results in $OUT"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
}

# everything printed also goes to the log; the pipeline ends only when tee has written it all
run_all 2>&1 | tee -a "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
