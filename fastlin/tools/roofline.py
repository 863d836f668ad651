"""Hardware limits measured in the same run as the benchmarks that use them.

Used by ``python -m fastlin compare`` and by the pytest-benchmark suite in
``bench/``.  Never imported by ``import fastlin``.

Two ceilings bound one training step of a dense layer:

read bandwidth
    Bytes over the time of a plain read of the *same* array (the step's X):
    a parallel float32 sum in Numba and numpy's own reduction, whichever is
    faster.  An ideal step reads X and T once, so ``bytes / bandwidth`` is
    the least time it can take.
SGEMM rate
    Flops over the time of a large float32 matrix product (numpy's BLAS,
    and torch's when torch is installed; the faster counts).  A step does two
    products of ``N·D·O`` multiply-adds each: ``4·N·D·O`` flops.

A step's *limit* is the larger of the two times (a roofline), and the
*fraction of the limit* a measured step reaches is ``limit / measured``.
Timings here take the fastest of several repeats: a ceiling is the best the
machine has shown, not its typical time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

_read_kernel = None


def format_seconds(seconds):
    """A duration with 3 significant digits and a unit ("–" for None)."""
    if seconds is None:
        return "–"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def _compile_read_kernel():
    """A parallel float32 sum: each chunk reads its rows once, in order."""
    global _read_kernel
    if _read_kernel is None:
        import numba
        from numba import prange

        from .._jit import CACHE, FASTMATH_FLAGS

        # fastlin's own flags: reassoc lets LLVM keep several vector
        # accumulators, as fastlin's kernels may.
        @numba.njit(parallel=True, fastmath=set(FASTMATH_FLAGS), nogil=True, cache=CACHE)
        def read_sum(a, partial):
            n = a.shape[0]
            n_chunks = partial.shape[0]
            chunk = (n + n_chunks - 1) // n_chunks
            for c in prange(n_chunks):
                lo = c * chunk
                hi = min(lo + chunk, n)
                s = np.float32(0.0)
                for i in range(lo, hi):
                    s += a[i]
                partial[c] = s
            return partial.sum()

        _read_kernel = read_sum
    return _read_kernel


def _best_time(fn, repeats, min_seconds=0.0):
    """Fastest of ``repeats`` timed calls (after one untimed call)."""
    fn()
    best = float("inf")
    start = time.perf_counter()
    done = 0
    while done < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        done += 1
        if done >= 50 * repeats:
            break
    return best


def read_bandwidth(a, repeats=7):
    """Bytes/s of the fastest plain read of array ``a`` (any float dtype, any shape).

    Returns ``(bytes_per_second, method)``.  Only contiguous arrays are read as
    they lie in memory, so ``a`` is flattened without copying when it can be.
    """
    flat = np.ravel(a)  # a view for C-contiguous input
    nbytes = flat.nbytes
    results = {}
    kernel = _compile_read_kernel()
    partial = np.empty(64, dtype=np.float64)
    if flat.dtype == np.float32:
        results["numba parallel sum"] = _best_time(lambda: kernel(flat, partial), repeats)
    results["numpy sum"] = _best_time(lambda: np.add.reduce(flat), repeats)
    method = min(results, key=results.get)
    return nbytes / results[method], method


def gemm_rate(n=2048, repeats=5, use_torch=True):
    """FLOP/s of the fastest float32 ``n×n @ n×n`` product here.

    Returns ``(flops_per_second, method)``; tries numpy's BLAS and, when
    installed and ``use_torch``, torch's CPU BLAS.
    """
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    C = np.empty((n, n), dtype=np.float32)
    flops = 2.0 * n * n * n
    results = {"numpy matmul": _best_time(lambda: np.matmul(A, B, out=C), repeats)}
    if use_torch:
        try:
            import torch
        except ImportError:
            pass
        else:
            tA, tB, tC = torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(C)
            results["torch.mm"] = _best_time(lambda: torch.mm(tA, tB, out=tC), repeats)
    method = min(results, key=results.get)
    return flops / results[method], method


def blas_info():
    """The BLAS libraries numpy (and torch) loaded, as threadpoolctl sees them.

    Returns a list of dicts (``internal_api``, ``architecture`` -- the kernel
    family OpenBLAS picked, ``num_threads``, ``version``, ``filepath``) and
    a note on ``OPENBLAS_CORETYPE``; an empty list when threadpoolctl is not
    installed (``pip install 'fastlin[bench]'``).
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "prefix", "architecture", "num_threads", "version", "threading_layer")
    return [{k: info.get(k) for k in keep} for info in threadpool_info() if info.get("user_api") == "blas"]


def blas_summary():
    """One line naming the BLAS kernel in use, e.g. ``openblas 0.3.31 SkylakeX, 2 threads``."""
    infos = blas_info()
    core = os.environ.get("OPENBLAS_CORETYPE")
    coretype = f"; OPENBLAS_CORETYPE={core}" if core else "; OPENBLAS_CORETYPE unset"
    if not infos:
        return "unknown (pip install threadpoolctl to name it)" + coretype
    parts = []
    for info in infos:
        arch = f" {info['architecture']}" if info.get("architecture") else ""
        parts.append(
            f"{info['internal_api']} {info.get('version') or ''}{arch}, {info['num_threads']} threads ({info['prefix']})"
        )
    return "; ".join(parts) + coretype


def cpu_name():
    """The CPU's model name and the number of CPUs this process may use."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        import platform

        model = platform.processor() or model
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {n} CPUs"


@dataclass
class Limits:
    """Ceilings measured on this machine, in this run."""

    read_bytes_per_s: float
    read_method: str
    read_bytes_measured: int
    gemm_flops_per_s: float
    gemm_method: str
    blas: str = ""
    cpu: str = ""
    extra: dict = field(default_factory=dict)

    def step_seconds(self, nbytes, flops):
        """The roofline time of a step that moves ``nbytes`` and does ``flops``."""
        return max(nbytes / self.read_bytes_per_s, flops / self.gemm_flops_per_s)

    def bound(self, nbytes, flops):
        """ "memory" or "compute": which ceiling binds a step of this size."""
        return "memory" if nbytes / self.read_bytes_per_s >= flops / self.gemm_flops_per_s else "compute"


def step_bytes(n_rows, n_in, n_out, itemsize=4):
    """Bytes an ideal training step moves: X and T read once, W and b read and written."""
    return itemsize * (n_rows * n_in + n_rows * n_out + 2 * (n_out * n_in + n_out))


def step_flops(n_rows, n_in, n_out):
    """Flops of one step's two products (X·Wᵀ and Rᵀ·X); the O(N·O) rest is ignored."""
    return 4 * n_rows * n_in * n_out
