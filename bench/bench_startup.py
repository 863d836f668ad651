"""Start-up and memory: ``python -m fastlin demo`` twice, the first call's
compile time, and the peak memory of one step.

Each measurement runs in a fresh process (see ``memory_startup.py``, which
also prints all of this as a table).  The timed quantity is the whole child
process; the numbers that matter are in ``extra_info``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import memory_startup as ms
import pytest

MEMORY_PARAMS = [pytest.param(c, lib, id=f"{c}-{lib}") for c in ("tall16", "wide") for lib in ms.MEMORY_LIBRARIES]


def _wall(cmd, env):
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=env, cwd=ms.ROOT, timeout=600, check=True)
    return time.perf_counter() - t0


def test_demo_second_start(benchmark):
    """A second ``python -m fastlin demo`` finds its kernels cached (target < 1 s)."""
    benchmark.group = "startup"
    demo = [sys.executable, "-m", "fastlin", "demo"]
    with tempfile.TemporaryDirectory(prefix="fastlin-cache-") as cache:
        env = ms._env(NUMBA_CACHE_DIR=cache)
        first = _wall(demo, env)  # empty cache: compiles and writes it
        benchmark.pedantic(
            subprocess.run,
            args=(demo,),
            kwargs={"capture_output": True, "env": env, "cwd": ms.ROOT, "check": True},
            rounds=5,
        )
    floor = statistics.median(_wall([sys.executable, "-c", "import numba"], ms._env()) for _ in range(3))
    benchmark.extra_info.update(first_run_cold_cache_s=first, python_import_numba_s=floor, target_s=1.0)
    if benchmark.stats:
        benchmark.extra_info["median_s"] = benchmark.stats.stats.median


def test_first_call_compile(benchmark):
    """import fastlin, first step and first fit with an empty Numba cache, then with it filled."""
    benchmark.group = "startup"
    result = benchmark.pedantic(ms.compile_times, rounds=1)
    benchmark.extra_info.update(result)


def test_cold_first_fit_against_torch(benchmark):
    """A fresh process's first float32 fit (empty kernel cache) against torch's
    first training step, as whole processes in one run (issue 11 §5: target
    no slower)."""
    pytest.importorskip("torch")
    benchmark.group = "startup"
    result = benchmark.pedantic(ms.cold_first_fit, rounds=1)
    benchmark.extra_info.update(result)


@pytest.mark.parametrize(("case", "library"), MEMORY_PARAMS)
def test_step_peak_memory(benchmark, case, library):
    """Peak memory of one warm step: fastlin builds no (N, O) temporary."""
    from fastlin.tools import peers as _peers

    reason = _peers.unavailable(library)
    if reason:
        pytest.skip(f"{library}: {reason}")
    benchmark.group = "memory"
    result = benchmark.pedantic(ms.peak_memory, args=(case, library), rounds=1)
    benchmark.extra_info.update(result)
    if os.environ.get("FASTLIN_BENCH_STRICT") and _peers.BACKENDS[library].fastlin:
        # Opt-in check, never in the test suite: the scratch stays far below one (N, O) temporary.
        assert result["steady"]["tracemalloc_peak_bytes"] < result["NxO_float32_bytes"] / 4
