"""fastlin.dask.solve: the exact solve in one pass over dask chunks, against
the in-memory Linear.solve (and through it float64 lstsq)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.array", reason="fastlin.dask needs dask: pip install 'fastlin[dask]'")

import dask  # noqa: E402
import dask.array as da  # noqa: E402

import fastlin  # noqa: E402
import fastlin.dask as fd  # noqa: E402
from fastlin import _solve  # noqa: E402
from fastlin.backends import cpu_ops  # noqa: E402


def data(n=3001, d=7, o=3, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    X = offset + rng.standard_normal((n, d))
    W = rng.standard_normal((o, d))
    T = X @ W.T + 2.0 + 0.1 * rng.standard_normal((n, o))
    return X, T


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunks", [3001, 1000, 97, 7])
def test_dask_solve_equals_the_in_memory_solve(chunks, bias, weight_decay):
    X, T = data()
    local = fastlin.Linear(7, 3, bias=bias, dtype=np.float64, seed=0)
    loss = local.solve(X, T, weight_decay=weight_decay)
    model = fastlin.Linear(7, 3, bias=bias, dtype=np.float64, seed=1)
    got = fd.solve(
        model, da.from_array(X, chunks=(chunks, 7)), da.from_array(T, chunks=(chunks, 3)), weight_decay=weight_decay
    )
    assert rel(model.weight, local.weight) < 1e-10
    if bias:
        assert rel(model.bias, local.bias) < 1e-10
    assert got == pytest.approx(loss, rel=1e-8)


def test_dask_solve_with_offsets_float32_and_1d_targets():
    X, T = data(n=2000, d=3, o=1, seed=2, offset=1e4)
    X32, t32 = X.astype(np.float32), T[:, 0].astype(np.float32)
    local = fastlin.Linear(3, 1, seed=0)
    local.solve(X32, t32)
    model = fastlin.Linear(3, 1, seed=0)
    fd.solve(model, da.from_array(X32, chunks=(300, 3)), da.from_array(t32, chunks=300))
    assert model.weight.dtype == np.float32
    # float32 sums follow the chunks' float32 runs: the two agree to float32
    # accuracy; the bias carries the weights' rounding times the 1e4 offset
    np.testing.assert_allclose(model.weight, local.weight, rtol=1e-6)
    np.testing.assert_allclose(model.bias, local.bias, rtol=1e-5)
    np.testing.assert_allclose(model(X32), local(X32), rtol=1e-6)


def test_dask_solve_skips_empty_chunks_and_casts_integers():
    X, T = data(n=50, d=2, o=1, seed=3)
    Xi = np.round(10 * X).astype(np.int64)
    dX = da.concatenate(
        [
            da.from_array(Xi[:20], chunks=(20, 2)),
            da.zeros((0, 2), dtype=np.int64, chunks=(0, 2)),
            da.from_array(Xi[20:], chunks=(30, 2)),
        ]
    )
    dT = da.concatenate(
        [da.from_array(T[:20], chunks=(20, 1)), da.zeros((0, 1), chunks=(0, 1)), da.from_array(T[20:], chunks=(30, 1))]
    )
    model = fastlin.Linear(2, 1, dtype=np.float64)
    fd.solve(model, dX, dT)
    local = fastlin.Linear(2, 1, dtype=np.float64)
    local.solve(Xi.astype(np.float64), T)
    assert rel(model.weight, local.weight) < 1e-12


def test_chunk_sums_shifted_and_added_match_one_pass():
    X, T = data(n=500, d=4, o=2, seed=4, offset=100.0)
    parts = [cpu_ops.gram_sums(X[lo : lo + 73], T[lo : lo + 73]) for lo in range(0, 500, 73)]
    whole = cpu_ops.gram_sums(X, T)
    added = _solve.add_sums(parts)
    for key in ("xx", "xt", "sx", "st", "tt"):
        np.testing.assert_allclose(getattr(added, key), getattr(whole, key), rtol=1e-11, atol=1e-9, err_msg=key)
    assert added.sw == whole.sw == 500 and added.n_rows == 500
    np.testing.assert_array_equal(added.x_ref, whole.x_ref)


def test_dask_solve_reads_each_chunk_once():
    X, T = data(n=400, d=3, o=1)
    calls = []

    def counted(block):
        calls.append(block.shape[0])
        return block

    dX = da.from_array(X, chunks=(100, 3)).map_blocks(counted, dtype=X.dtype)
    calls.clear()  # map_blocks may call it once on an empty block, for its meta
    model = fastlin.Linear(3, 1, dtype=np.float64)
    with dask.config.set(scheduler="sync"):
        fd.solve(model, dX, da.from_array(T, chunks=(100, 1)))
    assert sorted(calls) == [100, 100, 100, 100]


def test_dask_solve_errors_are_raised_before_any_work_and_change_nothing():
    X, T = data(n=100, d=3, o=1)
    model = fastlin.Linear(3, 1, dtype=np.float64, seed=0)
    W, b = model.numpy()
    dX, dT = da.from_array(X, chunks=(30, 3)), da.from_array(T, chunks=(30, 1))
    cases = [
        ((X, dT), TypeError, "dask array"),
        ((dX, T), TypeError, "dask array"),
        ((da.from_array(X, chunks=(30, 1)), dT), ValueError, "chunked along its columns"),
        ((dX, da.from_array(T, chunks=(40, 1))), ValueError, "same row chunks"),
        ((dX[:, :2], dT), ValueError, "X"),
        ((dX[dX[:, 0] > 0], dT), ValueError, "unknown chunk sizes"),
    ]
    for args, exc, match in cases:
        with pytest.raises(exc, match=match):
            fd.solve(model, *args)
    with pytest.raises(ValueError, match="weight_decay"):
        fd.solve(model, dX, dT, weight_decay=-1.0)
    with pytest.raises(TypeError, match="fastlin.Linear"):
        fd.solve("model", dX, dT)
    Xn = X.copy()
    Xn[57, 1] = np.nan
    with pytest.raises(ValueError, match="X"):
        fd.solve(model, da.from_array(Xn, chunks=(30, 3)), dT)
    Tn = T.copy()
    Tn[3, 0] = np.inf
    with pytest.raises(ValueError, match="T"):
        fd.solve(model, dX, da.from_array(Tn, chunks=(30, 1)))
    np.testing.assert_array_equal(model.weight, W)
    np.testing.assert_array_equal(model.bias, b)


def test_dask_solve_on_a_local_cluster():
    distributed = pytest.importorskip("distributed", reason="the cluster test needs distributed")
    X, T = data(n=4000, d=5, o=2, seed=5)
    local = fastlin.Linear(5, 2, dtype=np.float64)
    local.solve(X, T)
    model = fastlin.Linear(5, 2, dtype=np.float64)
    # as tests/test_dask.py: one thread per worker, a free dashboard port
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
        client.as_current(),
    ):
        dX = client.persist(da.from_array(X, chunks=(500, 5)))
        dT = client.persist(da.from_array(T, chunks=(500, 2)))
        fd.solve(model, dX, dT)
    assert rel(model.weight, local.weight) < 1e-10
    assert rel(model.bias, local.bias) < 1e-10
