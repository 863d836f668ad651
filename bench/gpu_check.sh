#!/usr/bin/env bash
# fastlin on a real GPU, in ONE device call of at most 10 minutes, on a bare
# machine without network (shared/GPU.md section 3: Python 3.12, numpy 2.5.2,
# numba-cuda 0.30.4, torch 2.11, CuPy 14.2).
#
#   bash bench/gpu_check.sh             on the GPU machine (carry [".whl"])
#   bash bench/gpu_check.sh --dry-run   here, without a GPU: the same steps
#                                       under NUMBA_ENABLE_CUDASIM=1, tiny sizes
#
# Steps, each under its own time limit (one hang cannot eat the budget; a
# failure does not stop the later steps, except the first two):
#   1. numpy < 2.5 from the carried .whl/ into /tmp/site; STOP if numpy is
#      still >= 2.5 (numba-cuda 0.30 cannot compile under it)
#   2. one one-line kernel compiled and run; STOP if that fails
#   3. versions, nvidia-smi
#   4. the GPU benchmarks (bench/bench_gpu.py: tall, tall16, huge_tall, wide,
#      seed fit; fastlin against torch eager and a replayed CUDA graph, with
#      the HBM read rate of the same run) -> $OUT/bench_gpu.json; the wide
#      case (the tiled plan) twice for fastlin: "fastlin-cuda" (cuBLAS through
#      CuPy when it imports, as shipped) and "fastlin-cuda-tiles" (the numba
#      register-blocked tiles, USE_CUPY off)
#   5. `python -m fastlin compare` on the GPU (its crossover is what
#      device="auto" should use) -> $OUT/compare.json
#   6. compute-sanitizer racecheck and memcheck on a tiny fit (the tiled
#      shape with the numba tiles and, where CuPy imports, through cuBLAS)
#   7. the tests: tests/cuda on the GPU (16-thread blocks, conftest.py), then
#      the model tests with the shipped 256-thread blocks
#   8. the logs in ONE tarball, and a short table printed last
#
# What comes back from that machine: at most 8 files under $OUT, each under
# 16 MiB, no deeper than $OUT/a/b/file, names of [A-Za-z0-9._-]; and the last
# 12,000 characters of output.  This script writes exactly: bench_gpu.json,
# compare.json, summary.txt, table.txt, logs.tar.gz (5 files, flat).  The
# numba cache and all scratch live under /tmp.  Benchmarks run before the
# tests (a killed pytest writes nothing) and warm the kernel cache for them.
#
# Device call: carry [".whl"], timeout_s 600, command `bash bench/gpu_check.sh`.

set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=1
fi
OUT="${OUT:-$(mktemp -d /tmp/fastlin-gpu-out.XXXXXX)}"
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/fastlin-gpu-work.XXXXXX)" # logs and scratch (tarred at the end)
BUDGET="${GPU_CHECK_BUDGET:-570}"                 # seconds for the whole script (call limit 600)
START=$SECONDS
PY="${PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1
export NUMBA_CACHE_DIR=/tmp/fastlin-numba-cache
export SCIPY_ARRAY_API=1
unset FASTLIN_CUDA_TPB FASTLIN_CUDA_TILE
if ((DRY)); then
    # The simulator runs every GPU thread as a Python thread: small blocks
    # everywhere (the shipped 256-thread blocks only where a step says so).
    export NUMBA_ENABLE_CUDASIM=1 FASTLIN_BENCH_GPU_TINY=1 FASTLIN_CUDA_TPB=16 FASTLIN_CUDA_TILE=4
else
    unset NUMBA_ENABLE_CUDASIM FASTLIN_BENCH_GPU_TINY
fi

left() { echo $((BUDGET - (SECONDS - START))); }

# run NAME LIMIT CMD...: CMD with a timeout of at most LIMIT seconds (never
# past the budget), output to $WORK/NAME.log; records a one-line status.
declare -A STATUS=()
ORDER=()
run() {
    local name=$1 limit=$2
    shift 2
    ORDER+=("$name")
    local remaining
    remaining=$(left)
    if ((remaining < 15)); then
        echo "== $name: skipped, ${remaining}s left" | tee "$WORK/$name.log"
        STATUS[$name]="not run (out of time)"
        return
    fi
    ((limit > remaining)) && limit=$remaining
    echo "== $name (limit ${limit}s, $(left)s left)"
    local t0=$SECONDS rc=0
    timeout --kill-after=5 "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    local summary
    summary=$(grep -E "(passed|failed|error|skipped|no tests ran|ERROR SUMMARY)" "$WORK/$name.log" | tail -n 1)
    if ((rc == 124 || rc == 137)); then
        STATUS[$name]="TIMED OUT after ${limit}s"
    else
        STATUS[$name]="rc=$rc in $((SECONDS - t0))s: ${summary:-see $name.log}"
    fi
    echo "   ${STATUS[$name]}"
}

finish() {
    {
        echo "fastlin GPU check $( ((DRY)) && echo '(DRY RUN, simulator)') $(date -u +%Y-%m-%dT%H:%MZ), ${GPU_NAME:-no GPU}, $((SECONDS - START))s"
        for name in "${ORDER[@]}"; do
            printf '%-18s %s\n' "$name" "${STATUS[$name]:-not run}"
        done
    } >"$OUT/summary.txt"
    if [[ -s "$OUT/bench_gpu.json" ]]; then
        "$PY" bench/gpu_table.py "$OUT/bench_gpu.json" >"$OUT/table.txt" 2>&1
    else
        echo "no benchmark results (see bench-gpu.log in logs.tar.gz)" >"$OUT/table.txt"
    fi
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" . 2>/dev/null
    echo
    cat "$OUT/summary.txt" "$OUT/table.txt"
}

# 1. numpy < 2.5 ------------------------------------------------------------
shopt -s nullglob
wheels=(.whl/numpy-2.4.*-cp312-*.whl)
shopt -u nullglob
export PYTHONPATH="$PWD"
if ((${#wheels[@]})) && "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}" >"$WORK/pip.log" 2>&1 || echo "numpy wheel install failed (pip.log)"
    export PYTHONPATH="/tmp/site:$PWD"
fi
NUMPY=$("$PY" -c 'import numpy; print(numpy.__version__)' 2>&1)
echo "== numpy $NUMPY (PYTHONPATH=$PYTHONPATH)"
ORDER+=(numpy)
if ! "$PY" -c 'import numpy, sys; sys.exit(tuple(map(int, numpy.__version__.split(".")[:2])) >= (2, 5))' 2>>"$WORK/pip.log"; then
    STATUS[numpy]="STOP: numpy $NUMPY >= 2.5 (no .whl/numpy-2.4.*-cp312 carried? see shared/GPU.md)"
    echo "!! ${STATUS[numpy]}"
    finish
    exit 3
fi
STATUS[numpy]="numpy $NUMPY"

# 2. one one-line kernel ----------------------------------------------------
cat >"$WORK/kernel_smoke.py" <<'EOF'
import numpy as np
from numba import cuda
from numba.cuda import config


@cuda.jit
def one(a):
    a[0] = 1.0


a = cuda.to_device(np.zeros(1))
one[1, 1](a)
assert a.copy_to_host()[0] == 1.0
print("a one-line kernel compiled and ran; simulator:", bool(config.ENABLE_CUDASIM))
EOF
run kernel-smoke 120 "$PY" "$WORK/kernel_smoke.py"
if [[ "${STATUS[kernel-smoke]}" != rc=0* ]]; then
    STATUS[kernel-smoke]="STOP: ${STATUS[kernel-smoke]} (kernel-smoke.log)"
    tail -n 5 "$WORK/kernel-smoke.log"
    finish
    exit 4
fi

# 3. versions and the card --------------------------------------------------
"$PY" - >"$WORK/versions.txt" 2>&1 <<'EOF'
import importlib.metadata as md, platform
print("python", platform.python_version())
for dist in ("numpy", "numba", "numba-cuda", "torch", "cupy-cuda13x", "cupy-cuda12x", "jax", "pytest", "pytest-benchmark"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        pass
import fastlin
print("fastlin", fastlin.__version__, "cuda:", fastlin._dispatch.cuda_unavailable_reason() or "available")
try:
    from fastlin.backends import cuda_cublas
    cp = cuda_cublas.cupy_module()
    print("tiled plan products:", "cuBLAS via CuPy " + cp.__version__ if cp is not None else "numba tiles (no CuPy)")
except Exception as exc:  # the line must not stop the check
    print("tiled plan products: unknown,", type(exc).__name__, exc)
EOF
nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$WORK/nvidia-smi.txt"
GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
echo "== GPU: ${GPU_NAME:-none}"

# 4. benchmarks first -------------------------------------------------------
# (the dry run times the seed, tall and wide cases only: each simulated call
# takes a good part of a second; its tiny wide case still takes the tiled plan)
BSEL=()
((DRY)) && BSEL=(-k "seed or tall or wide")
run bench-gpu 300 "$PY" -m pytest bench/bench_gpu.py --benchmark-only -q -p no:cacheprovider "${BSEL[@]}" \
    -W "ignore::pytest_benchmark.logger.PytestBenchmarkWarning" \
    --benchmark-json="$OUT/bench_gpu.json"

# 5. compare on the GPU: the crossover for device="auto" --------------------
if ((DRY)); then
    run compare 60 "$PY" -m fastlin compare --quick --sizes 10,40 --shapes 4x1 --backends fastlin-cpu,fastlin-cuda,numpy \
        --no-plot --out "$WORK/compare"
else
    run compare 90 "$PY" -m fastlin compare --quick --backends fastlin-cpu,fastlin-cuda,torch-cuda,torch-cuda-graph \
        --no-plot --out "$WORK/compare"
fi
[[ -s "$WORK/compare/compare.json" ]] && cp "$WORK/compare/compare.json" "$OUT/compare.json"

# 6. compute-sanitizer on a tiny fit (rows and tiled plans, shuffled) -------
cat >"$WORK/tiny_fit.py" <<'EOF'
import numpy as np
import fastlin
from fastlin.backends import cuda_config
rng = np.random.default_rng(0)
# rows (128-bit loads), rows, tiled with the numba tiles, tiled as shipped (cuBLAS where CuPy imports)
for n, d, o, cupy in ((37, 8, 1, None), (29, 5, 3, None), (13, 6, 17, False), (13, 6, 40, None)):
    cuda_config.USE_CUPY = cupy
    X = rng.standard_normal((n, d)).astype(np.float32)
    T = rng.standard_normal((n, o)).astype(np.float32)
    m = fastlin.Linear(d, o, device="cuda", seed=0)
    m.step(X, T, fastlin.SGD(0.05, momentum=0.9))
    h = m.fit(X, T, steps=6, lr=0.05, batch_size=7, seed=3)
    print(n, d, o, "USE_CUPY", cupy, h.loss[-1])
EOF
if ((DRY)) || ! command -v compute-sanitizer >/dev/null; then
    ORDER+=(sanitizer)
    STATUS[sanitizer]="not run ($( ((DRY)) && echo 'dry run' || echo 'no compute-sanitizer'))"
    run tiny-fit 60 env FASTLIN_CUDA_TPB=16 FASTLIN_CUDA_TILE=4 "$PY" "$WORK/tiny_fit.py"
else
    run racecheck 60 env FASTLIN_CUDA_TPB=16 FASTLIN_CUDA_TILE=4 compute-sanitizer --tool racecheck --error-exitcode 9 "$PY" "$WORK/tiny_fit.py"
    run memcheck 60 env FASTLIN_CUDA_TPB=16 FASTLIN_CUDA_TILE=4 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" "$WORK/tiny_fit.py"
fi

# 7. the tests --------------------------------------------------------------
if ((DRY)); then
    # the same commands on a few tests: the simulator needs minutes for all
    SEL=(-k "test_fused_step and float32 and plain and auto")
    SEL256=(-k "test_fit_in_segments")
else
    SEL=()
    SEL256=()
fi
run tests-cuda "$(left)" "$PY" -m pytest tests/cuda -q -p no:cacheprovider -x "${SEL[@]}" \
    --deselect tests/cuda/test_cuda_compile.py::test_every_kernel_compiles_to_ptx_for_sm90 \
    --deselect tests/cuda/test_gpu_static.py --junitxml="$WORK/tests-cuda.xml"
run tests-cuda-256 "$(left)" env FASTLIN_CUDA_TPB=256 FASTLIN_CUDA_TILE=16 \
    "$PY" -m pytest tests/cuda/test_conformance.py tests/cuda/test_cuda_model.py -q -p no:cacheprovider "${SEL256[@]}" --junitxml="$WORK/tests-cuda-256.xml"

# 8. logs, table -------------------------------------------------------------
finish
