"""The exact solve: time to solution against scikit-learn, and the Gram pass
against its roofline.

* ``test_time_to_solution``: ``fastlin.sklearn.LinearRegressor()`` (its
  defaults: the exact solve) against ``Ridge(solver="cholesky")``,
  ``LinearRegression`` and ``SGDRegressor`` on ``make_regression`` data in
  float32, the fit only (X and y made once per case).  Each records its R² on
  the training data, and its gap to Ridge's R², in ``extra_info``: the times
  compare fits that reach the same answer (SGDRegressor's defaults stop
  earlier; its R² gap says how far).
* ``test_gram_roofline``: ``Linear.solve`` on 1,000,000 × 50 and 100,000 ×
  200 float32 against its roofline, ``max(one read of X at the read
  bandwidth measured now over the same X, N·D² flops at the SGEMM rate
  measured now)`` -- SGEMM because float32 data has its products formed in
  float32 (cpu_gram's float32 path; the sums are float64).  The DGEMM rate is
  recorded too, but no limit from it: float32 products beat it (a "fraction"
  of 108% at 100,000 × 200 on 2026-12-01).

Run the 100,000-row cases with ``-k 100000``; the 1,000,000-row ones need
about 3 GB and minutes (SGDRegressor on 1,000,000 × 200 most of all)::

    python -m pytest bench/bench_solve.py --benchmark-only -k 100000
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.datasets import make_regression  # noqa: E402 (after importorskip)
from sklearn.linear_model import LinearRegression, Ridge, SGDRegressor  # noqa: E402 (after importorskip)

import fastlin  # noqa: E402 (after importorskip)
from fastlin.sklearn import LinearRegressor  # noqa: E402 (after importorskip)
from fastlin.tools import roofline  # noqa: E402 (after importorskip)

SHAPES = [(100_000, 50), (100_000, 200), (1_000_000, 50), (1_000_000, 200)]
ESTIMATORS = {  # Ridge first: the others' R² is compared with its
    "ridge_cholesky": lambda: Ridge(solver="cholesky"),
    "fastlin": LinearRegressor,
    "linear_regression": LinearRegression,
    "sgd_regressor": lambda: SGDRegressor(random_state=0),
}
ROUNDS = 3

_DATA = {}
_R2 = {}
_MEDIAN = {}


def _data(n, d):
    """float32 make_regression data, one shape kept at a time."""
    if (n, d) not in _DATA:
        _DATA.clear()
        X, y = make_regression(n_samples=n, n_features=d, n_informative=d, noise=1.0, bias=3.0, random_state=0)
        _DATA[(n, d)] = (X.astype(np.float32), y.astype(np.float32))
    return _DATA[(n, d)]


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize(("n", "d"), SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
def test_time_to_solution(benchmark, n, d, estimator):
    X, y = _data(n, d)
    make = ESTIMATORS[estimator]
    if estimator == "fastlin":
        _compile(lambda rows: make().fit(X[:rows], y[:rows]))
    benchmark.group = f"solve:{n}x{d}"
    benchmark.name = f"fit[{n}x{d}-{estimator}]"
    rounds = 1 if estimator == "sgd_regressor" and n >= 1_000_000 else ROUNDS  # seconds per fit
    fitted = benchmark.pedantic(lambda: make().fit(X, y), setup=_settle, rounds=rounds, iterations=1, warmup_rounds=0)
    r2 = float(fitted.score(X, y))
    _R2[(n, d, estimator)] = r2
    info = benchmark.extra_info
    info.update(case=f"{n}x{d}", library=estimator, r2=r2, loadavg_1min=os.getloadavg()[0], numba_threads=_threads())
    ref = _R2.get((n, d, "ridge_cholesky"))
    if ref is not None:
        info["r2_gap_vs_ridge"] = r2 - ref
    median = benchmark.stats.stats.median if getattr(benchmark, "stats", None) else float("nan")
    _MEDIAN[(n, d, estimator)] = median
    ridge = _MEDIAN.get((n, d, "ridge_cholesky"))
    if ridge is not None and estimator != "ridge_cholesky":
        # the goal's measure: this fit's median time over Ridge's, same run
        info["time_ratio_vs_ridge"] = median / ridge


def _compile(fit):
    """Compile the kernels out of the timing: many chunks (the parallel twin
    of ``_jit.kernel_pair``), then one (the serial twin).

    The order once mattered: before the twins had cache entries of their own
    (fifth session, 2026-12-01), whichever compiled first was served for both,
    and a first call with one chunk left ``gram32_parallel`` serial (cpu time
    = wall time at two threads)."""
    fit(20_000)  # several chunks: the parallel twin
    fit(1000)  # one chunk: the serial twin


def _settle():
    """Untimed pause before each round.  OpenBLAS's threads spin for about
    0.1 s after a call (Ridge's GEMM) before they sleep; on two cores the fit
    timed next shares a core with them (measured: LinearRegressor at
    100,000 × 200 timed 1.2-1.3× slower right after a Ridge fit than after
    its own)."""
    time.sleep(0.25)


def _threads():
    import numba

    return numba.get_num_threads()


def _dgemm_rate(n=2048, repeats=3):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n))
    B = rng.standard_normal((n, n))
    C = np.empty((n, n))
    best = np.inf
    for _ in range(repeats + 1):
        t = time.perf_counter()
        np.matmul(A, B, out=C)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


ROOFLINE_SHAPES = [(1_000_000, 50), (100_000, 200)]


@pytest.mark.parametrize(("n", "d"), ROOFLINE_SHAPES, ids=[f"{n}x{d}" for n, d in ROOFLINE_SHAPES])
def test_gram_roofline(benchmark, n, d):
    X, y = _data(n, d)
    T = y.reshape(-1, 1)
    model = fastlin.Linear(d, 1)
    _compile(lambda rows: model.solve(X[:rows], T[:rows]))
    benchmark.group = "solve:roofline"
    benchmark.name = f"Linear.solve[{n}x{d}]"
    benchmark.pedantic(lambda: model.solve(X, T), setup=_settle, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    read_bps, read_method = roofline.read_bandwidth(X, repeats=5)
    sgemm, _ = roofline.gemm_rate(2048, repeats=3)
    dgemm = _dgemm_rate()
    flops = float(n) * d * d  # the upper triangle of XᵀX: N·D²/2 multiply-adds
    read_s = X.nbytes / read_bps
    limit = max(read_s, flops / sgemm)
    median = benchmark.stats.stats.median if getattr(benchmark, "stats", None) else float("nan")
    benchmark.extra_info.update(
        read_GBps=read_bps / 1e9,
        read_method=read_method,
        dgemm_GFLOPs=dgemm / 1e9,
        sgemm_GFLOPs=sgemm / 1e9,
        limit_s=limit,
        fraction_of_limit=limit / median,
        loadavg_1min=os.getloadavg()[0],
        numba_threads=_threads(),
    )


# --------------------------------------------------------------------------
# Dask: fastlin.dask.solve against dask-ml on a 2-worker LocalCluster
# --------------------------------------------------------------------------
DASK_SOLVERS = ["fastlin", "dask_ml_newton", "dask_ml_admm", "dask_ml_lbfgs"]


@pytest.fixture(scope="module")
def dask_problem():
    """1,000,000 × 50 float64 in 8 row chunks, made and persisted on a
    2-worker (one thread each) LocalCluster.  FASTLIN_BENCH_DASK_ROWS sets
    another row count (for a quick trial)."""
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        n, d = int(os.environ.get("FASTLIN_BENCH_DASK_ROWS", 1_000_000)), 50
        rs = da.random.RandomState(0)
        X = rs.standard_normal((n, d), chunks=(n // 8, d))
        w = np.random.default_rng(1).standard_normal(d)
        y = X @ w + 3.0 + rs.standard_normal(n, chunks=n // 8)
        X, y = client.persist([X, y])
        with client.as_current():
            distributed.wait([X, y])
        yield client, X, y


@pytest.mark.parametrize("solver", DASK_SOLVERS)
def test_dask_solve_vs_dask_ml(benchmark, dask_problem, solver):
    client, X, y = dask_problem
    import fastlin.dask

    if solver == "fastlin":
        model = fastlin.Linear(X.shape[1], 1, dtype=np.float64)

        def fit():
            fastlin.dask.solve(model, X, y)
            return model

        with client.as_current():
            fit()  # the workers compile the kernels (or load them from the cache)
        rounds = ROUNDS
    else:
        linear_model = pytest.importorskip("dask_ml.linear_model")

        def fit():
            # dask-ml's own deprecation and convergence warnings are not ours
            # to fail on (pytest runs with filterwarnings = error)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return linear_model.LinearRegression(solver=solver.removeprefix("dask_ml_")).fit(X, y)

        rounds = 1
    benchmark.group = "solve:dask-1000000x50"
    benchmark.name = f"dask[{solver}]"
    with client.as_current():
        fitted = benchmark.pedantic(fit, rounds=rounds, iterations=1, warmup_rounds=0)
        if solver == "fastlin":
            pred = X @ fitted.weight[0].astype(np.float64) + fitted.bias[0]
        else:
            pred = fitted.predict(X)
        resid = float(((y - pred) ** 2).sum().compute())
        total = float(((y - y.mean()) ** 2).sum().compute())
    benchmark.extra_info.update(library=solver, r2=1.0 - resid / total, loadavg_1min=os.getloadavg()[0])
