"""The cuBLAS path of the tiled plan (fastlin.backends.cuda_cublas): the
switch, and the glue around the two products, in the simulator with a numpy
stand-in for CuPy (tests/cuda/fake_cupy.py) injected through the module's
import hook.  cuBLAS itself is exercised only on a GPU: there these tests
run with the real CuPy (skipped without it), and bench/gpu_check.sh times
and checks the wide case with CuPy and with the numba tiles.

Whole fits (momentum, weight decay, mini-batches with a short last batch,
shuffled on the device, resumed mid-epoch) against the float64 reference
of tests/support/naive.py, on shapes whose O and D are not multiples of a
tile, with one row, and with more outputs than rows.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from fastlin import SGD
from fastlin.backends import abi
from tests.cuda import fake_cupy
from tests.support import cuda_ref as ref
from tests.support.cuda_ref import f64, to_host


@pytest.fixture
def cublas(monkeypatch, simulated):
    """The tiled plan through CuPy: the stand-in in the simulator; on a GPU
    the real CuPy (cuBLAS), or a skip without it."""
    from fastlin.backends import cuda_config, cuda_cublas

    monkeypatch.setattr(cuda_config, "FORCE_TILED", True)
    monkeypatch.setattr(cuda_config, "USE_CUPY", True)
    if simulated:
        monkeypatch.setattr(cuda_cublas, "_import_cupy", lambda: fake_cupy)
    else:
        pytest.importorskip("cupy", reason="the cuBLAS path needs CuPy on a GPU (the cublas extra)")
    fake_cupy.reset()
    yield cuda_cublas
    fake_cupy.reset()


def _faked(cublas):
    """True when the products run in the stand-in (whose calls are recorded)."""
    return cublas.cupy_module() is fake_cupy


def make(n, d, o, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    T = rng.standard_normal((n, o)).astype(dtype)
    W = (rng.standard_normal((o, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return X, T, W, b


def _state(ops, W, k):
    n_out, n_in = W.shape
    return types.SimpleNamespace(
        slots_w=ops.zeros((k, n_out, n_in), W.dtype),
        slots_b=ops.zeros((k, n_out), W.dtype),
        counters=np.zeros(abi.CNT_SIZE, dtype=np.int64),
    )


def test_the_switch(monkeypatch):
    from fastlin.backends import cuda_config, cuda_cublas

    monkeypatch.setattr(cuda_cublas, "SIMULATOR", True)  # as in the simulator, also on a GPU

    def no_cupy():
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(cuda_cublas, "_import_cupy", no_cupy)
    monkeypatch.setattr(cuda_config, "USE_CUPY", None)
    assert cuda_cublas.cupy_module() is None  # automatic, no CuPy: the numba tiles
    monkeypatch.setattr(cuda_config, "USE_CUPY", True)
    with pytest.raises(ImportError, match=r"fastlin\[cublas\]"):
        cuda_cublas.cupy_module()
    monkeypatch.setattr(cuda_cublas, "_import_cupy", lambda: fake_cupy)
    assert cuda_cublas.cupy_module() is fake_cupy
    monkeypatch.setattr(cuda_config, "USE_CUPY", False)
    assert cuda_cublas.cupy_module() is None
    # automatic: used when it imports on a GPU; never in the simulator, where CuPy cannot run
    monkeypatch.setattr(cuda_config, "USE_CUPY", None)
    monkeypatch.setattr(cuda_cublas, "SIMULATOR", False)
    assert cuda_cublas.cupy_module() is fake_cupy
    monkeypatch.setattr(cuda_cublas, "SIMULATOR", True)
    assert cuda_cublas.cupy_module() is None


def test_the_automatic_choice_tries_the_import_once(monkeypatch):
    from fastlin.backends import cuda_config, cuda_cublas

    tries = []

    def no_cupy():
        tries.append(1)
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(cuda_cublas, "SIMULATOR", False)  # as on a GPU without CuPy
    monkeypatch.setattr(cuda_cublas, "_import_cupy", no_cupy)
    monkeypatch.setattr(cuda_config, "USE_CUPY", None)
    assert [cuda_cublas.cupy_module() for _ in range(3)] == [None] * 3
    assert tries == [1]  # (a failed import is not cached by Python: it would cost every fit call)


def test_environment_variable(monkeypatch):
    from fastlin.backends import cuda_config

    for raw, want in (("", None), ("auto", None), ("0", False), ("off", False), ("1", True)):
        monkeypatch.setenv("FASTLIN_CUDA_CUPY", raw)
        assert cuda_config._env_cupy() is want
    monkeypatch.setenv("FASTLIN_CUDA_CUPY", "maybe")
    with pytest.raises(ValueError, match="FASTLIN_CUDA_CUPY"):
        cuda_config._env_cupy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 5, 2), (19, 9, 3), (6, 2, 17)])
def test_fused_steps_match_the_reference(cops, cublas, shape, dtype):
    """Three lone steps with momentum and weight decay through the cuBLAS
    glue match float64 SGD; both products went through matmul, on numba's
    stream, from views made once per call."""
    X, T, W, b = make(*shape, dtype)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    hyper = SGD(**kw).hyper()
    dX, dT, dW, db = (cops.from_host(a) for a in (X, T, W, b))
    st = _state(cops, W, 1)
    ws = {}
    pW, pb, bW, bb = f64(W), f64(b), None, None
    rel = 1e-5 if dtype == np.float32 else 1e-12
    rtol, atol = ref.tol(dtype)
    for _ in range(3):
        loss, status = cops.fused_step(dX, dT, dW, db, True, st, hyper, False, ws)
        assert status == abi.OK
        rloss, gW, gb = ref.gradients(X, T, pW, pb)
        pW, bW = ref.sgd(pW, gW, bW, **kw)
        pb, bb = ref.sgd(pb, gb, bb, **kw)
        assert loss == pytest.approx(rloss, rel=rel)
        np.testing.assert_allclose(f64(dW), pW, rtol=5 * rtol, atol=5 * atol)
        np.testing.assert_allclose(f64(db), pb, rtol=5 * rtol, atol=5 * atol)
    if not _faked(cublas):
        return
    n, d, o = shape
    calls = fake_cupy.calls()
    assert calls == [((n, d), (d, o), np.dtype(dtype), 0), ((o, n), (n, d), np.dtype(dtype), 0)] * 3
    assert fake_cupy.views_made() == 2 + 3 * 2  # P and G once; X and W once per call


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_matches_the_reference(cops, cublas, dtype, shuffle):
    """A fit in two calls (4 + 5 steps, resumed mid-epoch), mini-batches of
    7 rows over 17 (a short last batch), shuffled on the device: losses and
    parameters of float64 SGD; the counters follow the epochs."""
    X, T, W, b = make(17, 6, 5, dtype, seed=3)
    kw = dict(lr=0.05, momentum=0.9, weight_decay=0.01)
    hyper = SGD(**kw).hyper()
    seed = 12345
    dX, dT, dW, db = (cops.from_host(a) for a in (X, T, W, b))
    st = _state(cops, W, 1)
    plan = cops.fit_plan(17, 5, 6, 7, shuffle, seed, dtype)
    assert plan.path == "tiled"
    losses = cops.empty((9,), np.float64)
    assert cops.fit_steps(dX, dT, dW, db, True, st, hyper, False, plan, losses[:4]) == (4, abi.OK)
    assert cops.fit_steps(dX, dT, dW, db, True, st, hyper, False, plan, losses[4:]) == (5, abi.OK)
    assert plan.cublas is not None and plan.R is None  # the numba tiles' scratch was never made
    rlosses, rW, rb = ref.fit(X, T, W, b, 9, batch_size=7, shuffle=shuffle, seed=seed, **kw)
    expected = np.zeros(abi.CNT_SIZE, dtype=np.int64)
    expected[[abi.CNT_HAS_BUF, abi.CNT_EPOCH, abi.CNT_POS, abi.CNT_STEP]] = [1, 3, 0, 9]
    np.testing.assert_array_equal(st.counters, expected)
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(to_host(losses), rlosses, rtol=rtol)
    np.testing.assert_allclose(f64(dW), rW, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(f64(db), rb, rtol=rtol, atol=rtol)
    if not _faked(cublas):
        return
    # batch rows (7, 7, 3) per epoch: the last product of each epoch has 3 rows
    sizes = [a[0] for a, _, _, _ in fake_cupy.calls()[::2]]
    assert sizes == [7, 7, 3] * 3


def test_cublas_and_numba_tiles_agree_and_repeat(cops, cublas, monkeypatch):
    """The same step through the glue twice is bit-identical, and within
    float32's bound of the numba tiles' step."""
    from fastlin.backends import cuda_config

    X, T, W, b = make(23, 10, 6, np.float32, seed=7)
    hyper = SGD(lr=0.1).hyper()
    results = []
    for use in (True, True, False):
        monkeypatch.setattr(cuda_config, "USE_CUPY", use)
        dX, dT, dW, db = (cops.from_host(a) for a in (X, T, W, b))
        st = _state(cops, W, 0)
        loss, status = cops.fused_step(dX, dT, dW, db, True, st, hyper, False, {})
        assert status == abi.OK
        results.append((loss, to_host(dW), to_host(db)))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])
    assert results[0][0] == pytest.approx(results[2][0], rel=1e-6)
    rtol, atol = ref.tol(np.float32)
    np.testing.assert_allclose(results[0][1], results[2][1], rtol=rtol, atol=atol)
    np.testing.assert_allclose(results[0][2], results[2][2], rtol=rtol, atol=atol)
    if _faked(cublas):
        assert len(fake_cupy.calls()) == 4  # two steps through matmul, none from the numba tiles


def test_nonfinite_step_writes_nothing(cops, cublas):
    """A NaN in X: the step is refused through the glue as through the tiles."""
    X, T, W, b = make(9, 5, 4, np.float32)
    X[3, 2] = np.nan
    dX, dT, dW, db = (cops.from_host(a) for a in (X, T, W, b))
    st = _state(cops, W, 0)
    _, status = cops.fused_step(dX, dT, dW, db, True, st, SGD(lr=0.1).hyper(), False, {})
    assert status == abi.NONFINITE_LOSS
    np.testing.assert_array_equal(to_host(dW), W)
    np.testing.assert_array_equal(to_host(db), b)
    assert st.counters[abi.CNT_STEP] == 0


def test_fake_cupy_refuses_host_arrays_and_mixed_dtypes():
    with pytest.raises(TypeError, match="device arrays only"):
        fake_cupy.asarray(np.zeros(3))
    with pytest.raises(TypeError, match="dtypes"):
        fake_cupy.matmul(np.zeros((2, 2), np.float32), np.zeros((2, 2)), out=np.zeros((2, 2)))
