#!/usr/bin/env bash
# fastlin on a real GPU, in ONE device call of at most 5 minutes.
#
#   bash bench/gpu_check.sh          (on the lent machine, from the repo root)
#
# Order (each phase under its own time limit, so one hang cannot eat the
# budget, and a failure does not stop the later phases):
#   1. numpy < 2.5 from the carried .whl/ (numba-cuda 0.30 cannot compile
#      kernels under numpy 2.5; recipe in shared/GPU.md), versions, nvidia-smi
#   2. the CUDA tests on the GPU with 16-thread blocks (tests/cuda/conftest.py:
#      several blocks on small arrays), then the API tests again with the
#      production block sizes (256 threads, 16x16 tiles; these kernels go to
#      the on-disk cache in $OUT, which the benchmarks then reuse)
#   3. the GPU benchmarks (bench/bench_gpu.py) -> $OUT/bench_gpu.json
#   4. the rest of the test suite (CPU) with the time left
#   5. a short table, last
# Details go under $OUT (logs, junit XML, benchmark JSON, nvidia-smi).
#
# Device call (see shared/GPU.md): carry [".whl"], timeout_s 300, and the
# command `bash bench/gpu_check.sh`.  Without a GPU every test of step 2
# skips and step 3 skips: the script still runs, and says so.

set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$(mktemp -d /tmp/fastlin-gpu.XXXXXX)}"
mkdir -p "$OUT"
BUDGET="${GPU_CHECK_BUDGET:-285}" # seconds for the whole script (call limit 300)
START=$SECONDS
PY="${PYTHON:-python3}"
export PYTHONDONTWRITEBYTECODE=1
export NUMBA_CACHE_DIR="$OUT/numba-cache"
unset NUMBA_ENABLE_CUDASIM

left() { echo $((BUDGET - (SECONDS - START))); }

# run NAME LIMIT CMD...: run CMD with a timeout of at most LIMIT seconds
# (and never past the budget), output to $OUT/NAME.log; records the status.
declare -A STATUS=()
run() {
    local name=$1 limit=$2
    shift 2
    local remaining
    remaining=$(left)
    if ((remaining < 15)); then
        echo "== $name: skipped, ${remaining}s left" | tee "$OUT/$name.log"
        STATUS[$name]="not run (out of time)"
        return
    fi
    ((limit > remaining)) && limit=$remaining
    echo "== $name (limit ${limit}s, $(left)s left)"
    local t0=$SECONDS rc=0
    timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    local summary
    summary=$(grep -E "(passed|failed|error|skipped|no tests ran)" "$OUT/$name.log" | tail -n 1)
    if ((rc == 124 || rc == 137)); then
        STATUS[$name]="TIMED OUT after ${limit}s"
    else
        STATUS[$name]="rc=$rc in $((SECONDS - t0))s: ${summary:-see $name.log}"
    fi
    echo "   ${STATUS[$name]}"
}

# 1. numpy 2.4, versions, the card ---------------------------------------
shopt -s nullglob
wheels=(.whl/numpy-2.4.*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site "${wheels[@]}" >"$OUT/pip.log" 2>&1 || echo "numpy wheel install failed: see $OUT/pip.log"
    export PYTHONPATH="/tmp/site:$PWD"
else
    echo "!! no .whl/numpy-2.4.*.whl carried: numba-cuda may fail under numpy 2.5 (shared/GPU.md has the download recipe)"
    export PYTHONPATH="$PWD"
fi
"$PY" - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib.metadata as md, platform
print("python", platform.python_version())
for dist in ("numpy", "numba", "numba-cuda", "torch", "cupy-cuda13x", "cupy-cuda12x", "pytest", "pytest-benchmark"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        pass
import fastlin
print("fastlin", fastlin.__version__, "cuda:", fastlin._dispatch.cuda_unavailable_reason() or "available")
EOF
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" >>"$OUT/nvidia-smi.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv >"$OUT/gpu.csv" 2>&1 || true
GPU_NAME=$(sed -n 2p "$OUT/gpu.csv" 2>/dev/null)
echo "== GPU: ${GPU_NAME:-unknown}"

# 2. CUDA tests on the GPU ------------------------------------------------
# test_cuda_compile.py is deselected: it proves the kernels compile without a GPU,
# and this run compiles (and runs) every one of them for real.
run tests-cuda 100 "$PY" -m pytest tests/cuda -q -p no:cacheprovider \
    --deselect tests/cuda/test_cuda_compile.py::test_every_kernel_compiles_to_ptx_for_sm90 \
    --junitxml="$OUT/tests-cuda.xml"
run tests-cuda-blocks256 50 env FASTLIN_CUDA_TPB=256 FASTLIN_CUDA_TILE=16 \
    "$PY" -m pytest tests/cuda/test_cuda_model.py tests/cuda/test_cuda_inputs.py -q -p no:cacheprovider \
    --junitxml="$OUT/tests-cuda-blocks256.xml"

# 3. GPU benchmarks --------------------------------------------------------
run bench-gpu 100 "$PY" -m pytest bench/bench_gpu.py --benchmark-only -q -p no:cacheprovider \
    -W "ignore::pytest_benchmark.logger.PytestBenchmarkWarning" \
    --benchmark-json="$OUT/bench_gpu.json"

# 4. the rest of the suite (CPU), with the time left ---------------------
run tests-cpu "$(left)" "$PY" -m pytest tests --ignore=tests/cuda -q -p no:cacheprovider \
    --junitxml="$OUT/tests-cpu.xml"

# 5. the short table, last ------------------------------------------------
echo
echo "== fastlin GPU check, $(date -u +%Y-%m-%dT%H:%MZ), ${GPU_NAME:-unknown GPU}, $((SECONDS - START))s; details in $OUT"
for name in tests-cuda tests-cuda-blocks256 bench-gpu tests-cpu; do
    printf '%-22s %s\n' "$name" "${STATUS[$name]:-not run}"
done
if [[ -s "$OUT/bench_gpu.json" ]]; then
    "$PY" bench/gpu_table.py "$OUT/bench_gpu.json" | tee "$OUT/table.txt"
else
    echo "no benchmark results (see $OUT/bench-gpu.log)"
fi
