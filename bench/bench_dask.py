"""fastlin.dask: what training on a dask cluster costs, and whether it scales.

Three questions, each answered on a 127.0.0.1 ``LocalCluster`` that the
benchmark starts (start-up excluded from the timings):

per-step overhead
    ``fastlin.dask.fit`` on data generated and persisted on the workers (8
    row chunks) against ``model.fit`` on the same numbers as numpy arrays in
    this process, with all numba threads and with one.  "mid" is
    1,000,000 × 64 → 4 float32 (X = 256 MB), where a step does real work;
    "small" is 10,000 × 64 → 4 (2.6 MB), where a step is all overhead.  A bare
    one-task round trip (``client.submit(noop).result()``) is timed in the
    same run: it is the floor any dask step pays on this machine.
scaling
    the same mid fit on 1 and on 2 worker processes, one thread and one
    numba thread each (``NUMBA_NUM_THREADS=1``), so a worker is one core.
out of core
    a 2.2 GB ``.npy`` dataset read with :func:`fastlin.dask.from_npy` by 2
    workers whose memory limit is 640 MiB each (1.25 GiB together), with
    ``persist=False``: every step reads every chunk from the file again.  The
    peak resident memory of each worker process is read from the kernel
    (``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``).

Each benchmark times whole 20-step fits: median / 20 and min / 20 are the
per-step costs including the fit's set-up (the machine is shared, so the min
is the less noisy of the two; the 1-minute load average is recorded with
each number).  Dask fits also record the steady-state step: the median
interval between two ``callback`` calls.

Run: ``python -m pytest bench/ --benchmark-only -k bench_dask`` (about 2
minutes; needs 2.5 GB of free disk in the temporary directory).  The numbers
are also written to ``bench/out/dask.json``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pytest

dask = pytest.importorskip("dask", reason="needs dask: pip install 'fastlin[dask]'")
da = pytest.importorskip("dask.array", reason="needs dask: pip install 'fastlin[dask]'")
distributed = pytest.importorskip("distributed", reason="needs distributed: pip install 'fastlin[dask]'")

import fastlin  # noqa: E402
import fastlin.dask as fd  # noqa: E402

STEPS = 20
ROUNDS = 7
SIZES = {"mid": (1_000_000, 64, 4), "small": (10_000, 64, 4)}
N_CHUNKS = 8
# Out of core: 8.4 M rows × 64 float32 = 2.15 GB of X (+ 134 MB of T) on disk,
# read in 262,144-row (64 MiB) chunks by workers allowed 640 MiB each.
OOC_ROWS, OOC_CHUNK_ROWS, OOC_LIMIT, OOC_STEPS = 8_388_608, 262_144, "640MiB", 3

RESULTS: dict = {}
OUT = Path(__file__).parent / "out" / "dask.json"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def make_data(n, d, o, seed=0):
    """Lazy float32 (X, T) with N_CHUNKS row chunks, ``T = X·Wᵀ + noise``.

    Generated where it is computed (on the workers), as a cluster user loads
    data, so no data goes through the client's graph; computed locally it
    gives the same numbers for the single-machine baseline.
    """
    rows = -(-n // N_CHUNKS)
    rng = da.random.default_rng(seed)
    X = rng.standard_normal((n, d), chunks=(rows, d), dtype=np.float32)
    W = np.random.default_rng(seed).standard_normal((o, d)).astype(np.float32)
    T = X @ W.T + np.float32(0.1) * rng.standard_normal((n, o), chunks=(rows, o), dtype=np.float32)
    return X, T.astype(np.float32)


@contextlib.contextmanager
def local_cluster(n_workers, **kw):
    # One thread and one numba thread per worker: a worker is one core, so
    # 1 -> 2 workers is 1 -> 2 cores.  OpenBLAS is already 1 thread there.
    with (
        distributed.LocalCluster(
            n_workers=n_workers,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # 8787 may be taken by another cluster
            env={"NUMBA_NUM_THREADS": "1"},
            **kw,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        client.as_current(),
    ):
        yield cluster, client


def step_timer():
    """A fit callback stamping each step, and a function giving the median interval."""
    stamps = []

    def cb(step, loss):
        stamps.append(time.perf_counter())

    def median_step():
        gaps = np.diff(stamps[-STEPS:])
        return float(np.median(gaps))

    return cb, median_step, stamps


def roundtrip_seconds(client, n=30):
    client.submit(int, 0, pure=False).result()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.submit(int, 0, pure=False).result()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def save(key, value):
    # The machine is shared: the load average says how noisy each number is.
    RESULTS[key] = dict(value, loadavg_1min=os.getloadavg()[0])
    OUT.parent.mkdir(exist_ok=True)
    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        versions={name: md.version(name) for name in ("numpy", "numba", "dask", "distributed", "fastlin")},
    )
    OUT.write_text(json.dumps({"meta": meta, **RESULTS}, indent=2))


# --------------------------------------------------------------------------
# per-step overhead and 1 -> 2 worker scaling
# --------------------------------------------------------------------------
@pytest.mark.parametrize("threads", ["1", "all"])
@pytest.mark.parametrize("size", list(SIZES))
def test_single_machine(benchmark, size, threads):
    """model.fit in this process, with all numba threads and with one (what a
    one-thread worker gets, so dask's own overhead can be read off)."""
    import numba

    n, d, o = SIZES[size]
    X, T = dask.compute(*make_data(n, d, o), scheduler="threads")
    model = fastlin.Linear(d, o, seed=0)
    opt = fastlin.SGD(1e-3, momentum=0.9)
    before = numba.get_num_threads()
    numba.set_num_threads(1 if threads == "1" else numba.config.NUMBA_NUM_THREADS)
    try:
        n_threads = numba.get_num_threads()
        model.fit(X, T, steps=2, opt=opt)  # compile, allocate scratch
        benchmark.group = f"dask:{size}"
        benchmark.name = f"model.fit[{size}-{threads}thread]"
        benchmark.pedantic(
            model.fit, args=(X, T), kwargs=dict(steps=STEPS, opt=opt), rounds=ROUNDS, iterations=1, warmup_rounds=1
        )
    finally:
        numba.set_num_threads(before)
    per_step = benchmark.stats.stats.median / STEPS
    best = benchmark.stats.stats.min / STEPS
    benchmark.extra_info.update(per_step_s=per_step, per_step_min_s=best, numba_threads=n_threads, shape=[n, d, o])
    save(f"single:{size}:{threads}thread", dict(per_step_s=per_step, per_step_min_s=best, numba_threads=n_threads))


@pytest.mark.parametrize("n_workers", [1, 2])
@pytest.mark.parametrize("size", list(SIZES))
def test_dask_fit(benchmark, size, n_workers):
    n, d, o = SIZES[size]
    with local_cluster(n_workers) as (_, client):
        # Persisted once, as a user fitting several times would; each fit then
        # packs its (X_i, T_i) pairs from worker memory.
        Xd, Td = client.persist(list(make_data(n, d, o)))
        distributed.wait([Xd, Td])
        model = fastlin.Linear(d, o, seed=0)
        opt = fastlin.SGD(1e-3, momentum=0.9)
        cb, median_step, _ = step_timer()
        fd.fit(model, Xd, Td, steps=3, opt=opt, callback=cb)  # warm the workers' kernels
        benchmark.group = f"dask:{size}"
        benchmark.name = f"fastlin.dask.fit[{size}-{n_workers}w]"
        hist = benchmark.pedantic(
            fd.fit, args=(model, Xd, Td), kwargs=dict(steps=STEPS, opt=opt, callback=cb), rounds=ROUNDS, iterations=1
        )
        assert len(hist) == STEPS
        floor = roundtrip_seconds(client)
    per_step = benchmark.stats.stats.median / STEPS
    best = benchmark.stats.stats.min / STEPS
    info = dict(
        per_step_s=per_step,
        per_step_min_s=best,
        steady_step_s=median_step(),
        roundtrip_s=floor,
        n_workers=n_workers,
        chunks=N_CHUNKS,
        shape=[n, d, o],
    )
    benchmark.extra_info.update(info)
    save(f"dask:{size}:{n_workers}w", info)


# --------------------------------------------------------------------------
# out of core
# --------------------------------------------------------------------------
def _write_dataset(directory):
    """X (OOC_ROWS, 64) and T (OOC_ROWS, 4) float32 .npy files, written in blocks."""
    d, o = 64, 4
    xp, tp = directory / "X.npy", directory / "T.npy"
    X = np.lib.format.open_memmap(xp, mode="w+", dtype=np.float32, shape=(OOC_ROWS, d))
    T = np.lib.format.open_memmap(tp, mode="w+", dtype=np.float32, shape=(OOC_ROWS, o))
    rng = np.random.default_rng(1)
    W = rng.standard_normal((o, d)).astype(np.float32)
    block = 1 << 20
    for lo in range(0, OOC_ROWS, block):
        x = rng.standard_normal((min(block, OOC_ROWS - lo), d), dtype=np.float32)
        X[lo : lo + len(x)] = x
        T[lo : lo + len(x)] = x @ W.T
    X.flush()
    T.flush()
    del X, T
    return xp, tp


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM)


def _memory():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


def test_out_of_core(benchmark, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ooc")
    xp, tp = _write_dataset(directory)
    data_bytes = xp.stat().st_size + tp.stat().st_size
    try:
        with local_cluster(2, memory_limit=OOC_LIMIT) as (_, client):
            limit = sum(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
            assert data_bytes > limit, (data_bytes, limit)
            X, T = fd.from_npy(xp, chunk_rows=OOC_CHUNK_ROWS), fd.from_npy(tp, chunk_rows=OOC_CHUNK_ROWS)
            model = fastlin.Linear(64, 4, seed=0)
            opt = fastlin.SGD(0.05, momentum=0.9)
            pids = client.run(os.getpid)
            client.run(_reset_peak)
            baseline = client.run(_memory)
            cb, _, stamps = step_timer()
            benchmark.group = "dask:out-of-core"
            benchmark.name = "fastlin.dask.fit[out-of-core-2w]"
            hist = benchmark.pedantic(
                fd.fit,
                args=(model, X, T),
                kwargs=dict(steps=OOC_STEPS, opt=opt, callback=cb, persist=False),
                rounds=1,
                iterations=1,
            )
            peaks = client.run(_memory)
            # No worker was restarted (a memory-limit kill would change its pid).
            assert client.run(os.getpid) == pids
    finally:
        for p in (xp, tp):
            p.unlink(missing_ok=True)
    assert len(hist) == OOC_STEPS and hist.loss[-1] < hist.loss[0]
    info = dict(
        data_bytes=data_bytes,
        memory_limit_total=limit,
        memory_limit_per_worker=limit // 2,
        chunk_bytes=OOC_CHUNK_ROWS * 64 * 4,
        peak_rss_per_worker=[v["VmHWM"] for v in peaks.values()],
        rss_before_fit=[v["VmRSS"] for v in baseline.values()],
        seconds=hist.seconds,
        per_step_s=hist.seconds / OOC_STEPS,
        steady_step_s=float(np.median(np.diff(stamps))) if len(stamps) > 1 else None,
        read_GBps=data_bytes * OOC_STEPS / hist.seconds / 1e9,
        loss=hist.loss.tolist(),
    )
    assert max(info["peak_rss_per_worker"]) < info["memory_limit_per_worker"]
    benchmark.extra_info.update(info)
    save("out_of_core", info)
