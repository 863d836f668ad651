"""One full-batch step of 1,000,000 x 64 -> O for O = 1, 2, 4, ... 64 (BENCH.md's O-sweep).

Where the step turns from memory-bound (one read of X and T) to
arithmetic-bound (4·N·D·O flops).  fastlin's ``model.step`` against numpy
(two BLAS products) and torch eager (``nn.Linear``, autograd, ``optim.SGD``),
through the same ``fastlin.tools.peers`` backends as bench_step.py, in the same
run, each O in turn.  ``extra_info`` carries bytes, flops, the read bandwidth
over this X and the SGEMM rate measured in the same run, the roofline time
(the larger of the two) and the fraction of it reached; the closing roofline
table of bench/conftest.py lists every O (groups ``osweep:O=…``).

Run: ``python -m pytest bench/bench_osweep.py --benchmark-only``.
"""

from __future__ import annotations

import gc
import os
import time

import numba
import numpy as np
import pytest
from conftest import _RESULTS
from hardware import step_bytes, step_flops
from peers import LIBRARIES as LIBRARY_NAMES
from peers import Problem, is_peer, label, make

from fastlin.backends._simd import (
    prefetch,  # fastlin's own intrinsic: the same hint its kernels give
)

N_ROWS, N_IN = 1_000_000, 64
OUTPUTS = (1, 2, 4, 8, 16, 32, 64)
LIBRARIES = ("fastlin-cpu", "numpy", "torch")


@numba.njit(parallel=True, nogil=True, fastmath={"reassoc", "contract"})
def _prefetched_read(a, partial, ahead):
    """A parallel float32 sum of the 2-D ``a`` that prefetches ``ahead`` rows ahead.

    bench/hardware.py's read limit is a plain sum, which on some machines
    (this 2-core EPYC VM, 2026-12) reads slower than fastlin's kernels now
    do with software prefetch; this is the same sum with the same hint, so
    that a fraction of the limit stays a fraction.
    """
    n, n_in = a.shape
    n_chunks = partial.shape[0]
    chunk = (n + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        lo = c * chunk
        hi = min(lo + chunk, n)
        s = np.float32(0.0)
        for i in range(lo, hi):
            j = i + ahead
            if j < n:
                for d in range(0, n_in, 16):
                    prefetch(a, j, d)
                prefetch(a, j, n_in - 1)
            for d in range(n_in):
                s += a[i, d]
        partial[c] = s
    return partial.sum()


_PREFETCHED = {}  # case -> best bytes/s of _prefetched_read


def prefetched_read_bandwidth(case, X, repeats=5):
    """Best bytes/s of :func:`_prefetched_read` over ``X`` seen so far for ``case`` (measured now too)."""
    partial = np.empty(64)
    _prefetched_read(X, partial, 64)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        _prefetched_read(X, partial, 64)
        best = min(best, time.perf_counter() - t0)
    _PREFETCHED[case] = max(_PREFETCHED.get(case, 0.0), X.nbytes / best)
    return _PREFETCHED[case]


class _Data:
    """One O's problem at a time (X is 256 MB); X itself is shared by every O."""

    def __init__(self):
        self.n_out = None
        self.problem = None

    def get(self, n_out):
        if n_out != self.n_out:
            old = self.problem
            self.problem = Problem(N_ROWS, N_IN, n_out, seed=0)
            if old is not None:  # same seed, same X: keep the one already drawn
                X = old.data()[0]
                _, T, W0, b0 = self.problem.data()
                self.problem._data = (X, T, W0, b0)
                old.drop()
            gc.collect()
            self.n_out = n_out
        return self.problem


@pytest.fixture(scope="module")
def data():
    return _Data()


def record_limits(benchmark, hardware, *, group, case, library, X, nbytes, flops, extra=None):
    """Fill ``extra_info`` (bytes, flops, limits, fraction) and the run's roofline table.

    ``case`` names the array whose read bandwidth is the limit (measured over
    ``X`` before the first benchmark of the case and again now; the best
    counts, as in bench/hardware.py).
    """
    hardware.observe(case, X)
    lim = hardware.for_case(case)
    read_pf = prefetched_read_bandwidth(case, X)
    info = benchmark.extra_info
    info.update(
        case=case,
        library=library,
        label=label(library) if library in LIBRARY_NAMES else library,
        peer=is_peer(library),
        bytes=nbytes,
        flops=flops,
        loadavg_1min=os.getloadavg()[0],
        **(extra or {}),
    )
    stats = getattr(benchmark, "stats", None)
    if not stats:
        return
    median = stats.stats.median
    limit_s = lim.step_seconds(nbytes, flops)
    # the same roofline with the faster of the two reads
    limit_pf_s = max(nbytes / max(read_pf, lim.read_bytes_per_s), flops / lim.gemm_flops_per_s)
    info.update(
        median_s=median,
        limit_s=limit_s,
        limit_bound=lim.bound(nbytes, flops),
        read_GBps=lim.read_bytes_per_s / 1e9,
        read_prefetched_GBps=read_pf / 1e9,
        gemm_GFLOPs=lim.gemm_flops_per_s / 1e9,
        fraction_of_limit=limit_s / median,
        limit_prefetched_read_s=limit_pf_s,
        fraction_of_limit_prefetched_read=limit_pf_s / median,
    )
    print(
        f"\n{group} {library}: median {median * 1e3:.2f} ms; limit {limit_s * 1e3:.2f} ms "
        f"({100 * limit_s / median:.0f}%), with the prefetched read {limit_pf_s * 1e3:.2f} ms ({100 * limit_pf_s / median:.0f}%); "
        f"read {lim.read_bytes_per_s / 1e9:.1f} / prefetched {read_pf / 1e9:.1f} GB/s, SGEMM {lim.gemm_flops_per_s / 1e9:.0f} GFLOP/s; "
        f"load {os.getloadavg()[0]:.2f}"
        + "".join(f"; {k} {v:.4g}" for k, v in (extra or {}).items() if isinstance(v, float))
    )
    _RESULTS.setdefault(group, {})[library] = {
        "median": median,
        "iqr": stats.stats.iqr,
        "rounds": stats.stats.rounds,
        "case": case,
        "kind": "step",
        "steps": 1,
        "bytes": nbytes,
        "flops": flops,
        "roofline": True,
    }


PARAMS = [pytest.param(o, library, id=f"O{o}-{library}") for o in OUTPUTS for library in LIBRARIES]


@pytest.mark.parametrize(("n_out", "library"), PARAMS)
def test_osweep_step(benchmark, data, hardware, n_out, library):
    problem = data.get(n_out)
    X = problem.data()[0]
    case = "osweep"  # one X for every O: one read-bandwidth limit
    hardware.for_case(case, X)  # measured before the first benchmark only
    backend = make(library, problem)
    benchmark.group = f"osweep:O={n_out}"
    benchmark.name = f"osweep[O={n_out}-{library}]"
    try:
        with backend.context():
            for _ in range(3):  # compile, allocate scratch, fill caches
                backend.step()
            benchmark(backend.step)
        record_limits(
            benchmark,
            hardware,
            group=benchmark.group,
            case=case,
            library=library,
            X=X,
            nbytes=step_bytes(N_ROWS, N_IN, n_out),
            flops=step_flops(N_ROWS, N_IN, n_out),
            extra={"kind": "step", "shape": [N_ROWS, N_IN, n_out]},
        )
    finally:
        backend.close()
