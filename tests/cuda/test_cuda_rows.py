"""The row-streaming kernels (``cuda_rows._rows_partials``: tall and O <= 32)
on the shapes that reach each of their branches, in the simulator.

With conftest.py's 16-thread blocks: XS_SIZE = 192 elements, so a tile holds
``min(64, 192 // (D + 1), 16 // O)`` rows and every shape below needs
several tiles and several blocks; D a multiple of 4 (float32) or 2 (float64)
with an aligned base takes the 16-byte loads (``copy16``), an odd D or a base
one element off the element-wise loads; E > TPB accumulates in ``part``, E <=
TPB/2 splits rows into groups.  Every result is compared with the float64
reference by the CPU tests' own bound (tests/support/helpers.py: the rounding of a
float32 sum grows with the sum of the terms' absolute values).
"""

from __future__ import annotations

import types

import numpy as np
import pytest

from fastlin import SGD
from fastlin.backends import abi, cpu_ops
from tests.support import cuda_ref as ref
from tests.support.cuda_ref import f64, to_host
from tests.support.helpers import assert_sums_close

# (N, D, O): vector loads, one output (E = 9, one element a thread); E = 26
# > TPB (part accumulators); D odd (element loads), 3 outputs; row groups
# (E = 5 <= TPB/2); O = TPB // 2 (two rows a tile).
SHAPES = [(70, 8, 1), (45, 12, 2), (41, 7, 3), (53, 4, 1), (29, 4, 8)]
DTYPES = [np.float32, np.float64]


def make(n, d, o, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    T = rng.standard_normal((n, o)).astype(dtype)
    W = (rng.standard_normal((o, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return X, T, W, b


def misaligned(cops, X):
    """X on the device, its base one element past a 16-byte boundary."""
    flat = np.zeros(X.size + 1, dtype=X.dtype)
    flat[1:] = X.ravel()
    d = cops.from_host(flat)[1:].reshape(X.shape)
    assert not cops.rows_aligned(d)
    return d


def _state(ops, W):
    """An SGD-with-momentum state (one slot) on ``ops``'s device."""
    n_out, n_in = W.shape
    return types.SimpleNamespace(
        slots_w=ops.zeros((1, n_out, n_in), W.dtype),
        slots_b=ops.zeros((1, n_out), W.dtype),
        counters=np.zeros(abi.CNT_SIZE, dtype=np.int64),
    )


def magnitudes(X, T, W, b):
    """Sums of |terms| of the loss and of each gradient element (float64)."""
    X, T, W, b = (np.asarray(a, dtype=np.float64) for a in (X, T, W, b))
    r = np.abs(X) @ np.abs(W).T + np.abs(b) + np.abs(T)
    return (r**2).sum(), r.T @ np.abs(X), r.sum(axis=0)


@pytest.mark.parametrize("layout", ["aligned", "misaligned"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_mse_grad_row_tiles(cops, shape, dtype, layout):
    X, T, W, b = make(*shape, dtype)
    _, d, o = shape
    assert cops.path_for(o, d) == "rows"
    dX = cops.from_host(X) if layout == "aligned" else misaligned(cops, X)
    vec = (d * np.dtype(dtype).itemsize) % 16 == 0 and layout == "aligned"
    assert cops.rows_aligned(dX) == vec
    loss, gW, gb = ref.gradients(X, T, W, b, "sum")
    sse, dW, db = cops.mse_grad(
        dX, cops.from_host(T), cops.from_host(W), cops.from_host(b), True, 2.0, {}, dtype=np.float64
    )
    m_loss, m_gW, m_gb = magnitudes(X, T, W, b)
    assert_sums_close(sse, loss, m_loss, dtype)
    assert_sums_close(to_host(dW), gW, 2 * m_gW, dtype)
    assert_sums_close(to_host(db), gb, 2 * m_gb, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(70, 8, 1), (45, 12, 2), (41, 7, 3)])
def test_step_row_tiles_match_cpu_and_are_bit_identical(cops, shape, dtype):
    """Two runs of three steps: identical bits; against the CPU within the
    float32/float64 tolerances."""
    X, T, W, b = make(*shape, dtype)
    hyper = SGD(0.05, momentum=0.9).hyper()
    runs = []
    for _ in range(2):
        dX, dT, dW, db = (cops.from_host(a) for a in (X, T, W, b))
        st = _state(cops, W)
        losses = [cops.fused_step(dX, dT, dW, db, True, st, hyper, False, {})[0] for _ in range(3)]
        runs.append((losses, to_host(dW), to_host(db)))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    cW, cb = W.copy(), b.copy()
    cst = _state(cpu_ops, W)
    closses = [cpu_ops.fused_step(X, T, cW, cb, True, cst, hyper, False, {})[0] for _ in range(3)]
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(runs[0][0], closses, rtol=rtol)
    np.testing.assert_allclose(f64(runs[0][1]), cW, rtol=10 * rtol, atol=10 * rtol)
    np.testing.assert_allclose(f64(runs[0][2]), cb, rtol=10 * rtol, atol=10 * rtol)


def test_float32_loss_over_many_rows_keeps_float64_accuracy(cops):
    """The accuracy argument of the CPU tests, at a size the simulator can
    run: float32 runs of at most TILE_ROWS rows, everything longer in
    float64 (a float32 running sum of 6000 terms may be off by ~1e-4)."""
    n, d = 6000, 8
    rng = np.random.default_rng(3)
    X = (rng.random((n, d)) * 0.1).astype(np.float32)
    W = np.full((1, d), 0.1, dtype=np.float32)
    b = np.zeros(1, dtype=np.float32)
    T = np.zeros((n, 1), dtype=np.float32)
    loss, gW, gb = ref.gradients(X, T, W, b, "sum")
    dX, dT, dW, db = (cops.from_host(a) for a in (X, T, W, b))
    sse, dW, db = cops.mse_grad(dX, dT, dW, db, True, 2.0, {}, dtype=np.float64)
    # all terms positive: the magnitude is the sum itself
    assert abs(sse - loss) <= 1e-6 * loss
    np.testing.assert_allclose(to_host(dW), gW, rtol=1e-6)
    np.testing.assert_allclose(to_host(db), gb, rtol=1e-6)
