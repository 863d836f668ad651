"""The streaming kernel's many-output tiles and the shuffled-batch prefetch.

From ``cpu.TILE_MIN_OUT`` outputs on float32 data, ``cpu._rows_partials`` forms predictions
in register tiles of 8 rows x 8 outputs and gradients in tiles of 4 outputs x
16 columns (``cpu._rows_partials_tiled``), with a transposed, zero-padded copy
of W in the work buffer; from 4 outputs below that, the pair kernel sums
its gradient with the same gradient tiles.  These tests check both against the float64 references
of ``tests/support/naive.py`` on shapes that leave partial tiles everywhere: outputs
not a multiple of 8 or 4, columns not a multiple of 16 or 8, rows not a
multiple of 8 or of FLUSH_ROWS; float32 and float64; full batches, shuffled
mini-batches (rows met through the permutation, with prefetching) and a
forced split into many chunks.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

import fastlin
from fastlin.backends import abi, cpu
from tests.support import naive
from tests.support.helpers import assert_sums_close, make_data, tol

NO_ROWS = np.empty(0, dtype=np.int64)


def _magnitude(X, T, W, b, reduction="mean"):
    """The gradient's terms made positive, with each residual's own rounding.

    ``naive.mse_grad_magnitude`` uses ``|r|``; a residual formed from a dot
    product in float32 carries an error of order eps·Σ|x·w|, which matters
    when ``r`` itself is small (one row, a lucky cancellation), so the
    bound here uses ``|r| + Σ|x·w| + |b|``.
    """
    X64, W64 = np.abs(X.astype(np.float64)), np.abs(W.astype(np.float64))
    R = np.abs(naive.forward(X, W, b) - T.astype(np.float64)) + X64 @ W64.T + np.abs(b.astype(np.float64))
    c = 2.0 if reduction == "sum" else 2.0 / R.size
    return c * R.T @ X64


def _tiled_sums(X, T, W, b, rows=None, start=0, n=None):
    """Call the tiled kernel directly on rows ``start .. start+n`` (of ``rows``)."""
    n_out, n_in = W.shape
    n = X.shape[0] if n is None else n
    p = -(-n_out // cpu.OUT_TILE) * cpu.OUT_TILE
    WT = np.full((n_in, p), np.nan, dtype=X.dtype)  # NaN: the padding must be written
    cpu._pack_weight(W, WT)
    R = np.full((cpu.FLUSH_ROWS, p), np.nan, dtype=X.dtype)
    gW = np.full((n_out, n_in), np.nan)
    gb = np.full(n_out, np.nan)
    acc = np.full((n_out, n_in), np.nan, dtype=X.dtype)
    use_rows = rows is not None
    loss = cpu._rows_partials_tiled(
        X, T, W, WT, b, rows if use_rows else NO_ROWS, use_rows, start, 0, n, gW, gb, acc, R
    )
    return loss, gW, gb


@pytest.mark.parametrize("n_out", [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31])
@pytest.mark.parametrize("n_in", [1, 7, 8, 16, 17, 63])
@pytest.mark.parametrize("n_rows", [1, 7, 8, 65, 203])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_kernel_matches_reference(n_out, n_in, n_rows, dtype):
    X, T, W, b = make_data(n_rows, n_in, n_out, dtype, seed=n_out * 1000 + n_in * 10 + n_rows)
    loss, gW, gb = _tiled_sums(X, T, W, b)
    sse, dW, db = naive.mse_grad(X, T, W, b, reduction="sum")  # c = 2: the sums times 2
    np.testing.assert_allclose(loss, sse, **tol(dtype))
    assert_sums_close(2.0 * gW, dW, _magnitude(X, T, W, b, reduction="sum"), dtype)
    np.testing.assert_allclose(2.0 * gb, db, **tol(dtype))


def _pair_sums_with_tiles(X, T, W, b, rows=None, start=0, n=None):
    """The pair kernel with its gradient in tiles (``R`` given), called directly."""
    n_out, n_in = W.shape
    n = X.shape[0] if n is None else n
    p = -(-n_out // cpu.OUT_TILE) * cpu.OUT_TILE
    R = np.full((cpu.FLUSH_ROWS, p), np.nan, dtype=X.dtype)  # NaN: the padding must be zeroed
    gW = np.full((n_out, n_in), np.nan)
    gb = np.full(n_out, np.nan)
    acc = np.full((n_out, n_in), np.nan, dtype=X.dtype)
    use_rows = rows is not None
    loss = cpu._rows_partials_pairs(X, T, W, b, rows if use_rows else NO_ROWS, use_rows, start, 0, n, gW, gb, acc, R)
    return loss, gW, gb


@pytest.mark.parametrize("n_out", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("n_in", [1, 7, 16, 17, 63])
@pytest.mark.parametrize("n_rows", [1, 7, 65, 203])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pair_kernel_with_gradient_tiles_matches_reference(n_out, n_in, n_rows, dtype):
    X, T, W, b = make_data(n_rows, n_in, n_out, dtype, seed=n_out * 777 + n_in * 10 + n_rows)
    loss, gW, gb = _pair_sums_with_tiles(X, T, W, b)
    sse, dW, db = naive.mse_grad(X, T, W, b, reduction="sum")
    np.testing.assert_allclose(loss, sse, **tol(dtype))
    assert_sums_close(2.0 * gW, dW, _magnitude(X, T, W, b, reduction="sum"), dtype)
    np.testing.assert_allclose(2.0 * gb, db, **tol(dtype))
    rows = np.random.default_rng(n_rows).permutation(n_rows).astype(np.int64)
    loss, gW, gb = _pair_sums_with_tiles(X, T, W, b, rows, 0, n_rows)
    np.testing.assert_allclose(loss, sse, **tol(dtype))
    assert_sums_close(2.0 * gW, dW, _magnitude(X, T, W, b, reduction="sum"), dtype)


@pytest.mark.parametrize("n_out", [3, 16, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_kernel_through_a_permutation(n_out, dtype):
    """Rows ``rows[start : start+n]``: prefetching runs ahead into rows outside the batch."""
    X, T, W, b = make_data(300, 19, n_out, dtype, seed=n_out)
    rows = np.random.default_rng(3).permutation(300).astype(np.int64)
    start, n = 37, 150
    loss, gW, gb = _tiled_sums(X, T, W, b, rows, start, n)
    pick = rows[start : start + n]
    sse, dW, db = naive.mse_grad(X[pick], T[pick], W, b, reduction="sum")
    np.testing.assert_allclose(loss, sse, **tol(dtype))
    assert_sums_close(2.0 * gW, dW, _magnitude(X[pick], T[pick], W, b, reduction="sum"), dtype)
    np.testing.assert_allclose(2.0 * gb, db, **tol(dtype))


def test_the_threshold_is_what_the_tests_assume():
    assert cpu.TILE_MIN_OUT <= 8 and cpu.OUT_TILE == 8 and cpu.FLUSH_ROWS % cpu.TILE_ROWS == 0
    assert cpu.TILE_GRADIENT_MIN_OUT == 4 and cpu.FLUSH_ROWS % cpu.GROUP == 0


def test_scratch_layout_carves_disjoint_parts_that_fill_the_buffer():
    """The one layout gives the allocation's size and every view the kernels carve."""
    for n_out, n_in, n_chunks in [(1, 1, 1), (3, 5, 2), (9, 16, 4), (16, 63, 1), (17, 7, 3)]:
        at = cpu.scratch_layout(n_out, n_in, n_chunks)
        pad = -(-n_out // cpu.OUT_TILE) * cpu.OUT_TILE
        assert at.pad == pad and at.r_p == n_in * pad
        od = n_out * n_in
        assert (at.gb, at.loss_p, at.gW_p, at.gb_p, at.tiles) == (
            od,
            od + n_out,
            od + n_out + n_chunks,
            od + n_out + n_chunks + n_chunks * od,
            od + n_out + n_chunks + n_chunks * od + n_chunks * n_out,
        )
        assert at.size == at.tiles + n_in * pad + n_chunks * cpu.FLUSH_ROWS * pad
        X = np.zeros((5, n_in), np.float32)
        W = np.zeros((n_out, n_in), np.float32)
        work = np.arange(at.size, dtype=np.float64)
        gW, gb, loss_p, gW_p, gb_p, tiled, WT, R_p = cpu._carve(work, X, W, n_chunks)
        # the float64 parts, in order and back to back
        seen = np.concatenate([a.ravel() for a in (gW, gb, loss_p, gW_p, gb_p)])
        np.testing.assert_array_equal(seen, np.arange(at.tiles))
        assert gW_p.shape == (n_chunks, n_out, n_in) and gb_p.shape == (n_chunks, n_out)
        if n_out >= cpu.TILE_GRADIENT_MIN_OUT:  # the float32 tail: WT then R_p, inside the buffer
            assert WT.shape == (n_in, pad) and R_p.shape == (n_chunks, cpu.FLUSH_ROWS, pad)
            WT[...] = 1.0
            R_p[...] = 2.0
            tail = work[at.tiles :].view(np.float32)
            assert (tail[: at.r_p] == 1.0).all() and (tail[at.r_p : at.r_p + R_p.size] == 2.0).all()
            np.testing.assert_array_equal(work[: at.tiles], np.arange(at.tiles))  # the sums untouched
        else:
            assert WT.size == 0 and R_p.size == 0 and not tiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tile_scratch_is_used_only_when_it_fits(dtype):
    """A work buffer sized without the tile scratch falls back to the pair kernel."""
    X, T, W, b = make_data(100, 16, 9, dtype)
    n_out, n_in = W.shape

    def carve(work, W_):
        return cpu._carve(work, X, W_, 1)[5:]  # (tiled, WT, R_p)

    full = np.zeros(cpu.scratch_layout(n_out, n_in, 1).size)
    short = np.zeros(cpu.scratch_layout(n_out, n_in, 1).tiles)
    assert carve(full, W)[0] == (dtype == np.float32)
    assert not carve(short, W)[0]
    narrow = carve(np.zeros(cpu.scratch_layout(4, n_in, 1).size), W[:4].copy())
    assert not narrow[0]  # too few outputs for the tiled kernel ...
    assert narrow[2].shape[0] == (1 if dtype == np.float32 else 0)  # ... but the pair kernel's gradient tiles
    for few in (1, 2, 3):  # the tall case (and 2-3 outputs) keep the plain pair kernel
        plain = carve(np.zeros(cpu.scratch_layout(few, n_in, 1).size), W[:few].copy())
        assert not plain[0] and plain[2].shape[0] == 0
    # and the fused step gives the reference's loss either way
    loss = naive.mse_grad(X, T, W, b)[0]
    limit = float(np.finfo(dtype).max)
    for work in (full, short):
        slots_w = np.zeros((0, n_out, n_in), dtype)
        slots_b = np.zeros((0, n_out), dtype)
        counters = np.zeros(abi.CNT_SIZE, np.int64)
        acc = np.zeros((1, n_out, n_in), dtype)
        hyper = abi.new_hyper()
        got, status = cpu.fused_step(
            X,
            T,
            W.copy(),
            b.copy(),
            True,
            slots_w,
            slots_b,
            counters,
            hyper,
            cpu.PLAIN_SGD,
            False,
            limit,
            100,
            work,
            acc,
        )
        assert status == abi.OK and counters[abi.CNT_STEP] == 1
        np.testing.assert_allclose(got, loss, **tol(dtype))


# Shapes at and above the threshold, through the public API (so through
# fused_step / mse_grad / fit_steps and their parallel twins).
API_SHAPES = [
    (203, 17, 3),
    (517, 33, 4),
    (130, 63, 5),
    (1, 5, 7),
    (203, 17, 8),
    (203, 64, 9),
    (517, 33, 15),
    (517, 16, 16),
    (1000, 63, 17),
    (333, 40, 31),
]


@pytest.mark.parametrize("n,d,o", API_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_output_step_and_gradients_match_reference(n, d, o, dtype, chunking):
    X, T, W, b = make_data(n, d, o, dtype, seed=n + d + o)
    model = fastlin.Linear.from_weights(W, b)
    loss, dW, db = naive.mse_grad(X, T, W, b)
    g = model.gradients(X, T)
    t = tol(dtype)
    np.testing.assert_allclose(g.loss, loss, **t)
    assert_sums_close(g.weight, dW, _magnitude(X, T, W, b), dtype)
    np.testing.assert_allclose(g.bias, db, **t)
    lr = 0.05
    got = model.step(X, T, fastlin.SGD(lr))
    np.testing.assert_allclose(got, loss, **t)
    W_ref = W.astype(np.float64) - lr * dW
    assert_sums_close(
        model.weight, W_ref, lr * _magnitude(X, T, W, b), dtype, rounding=np.finfo(dtype).eps * np.abs(W_ref)
    )
    np.testing.assert_allclose(model.bias, b.astype(np.float64) - lr * db, **t)


@pytest.mark.parametrize("o", [4, 7, 17])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shuffle", [False, True])
def test_many_output_minibatch_fit_matches_reference(o, dtype, shuffle, chunking):
    X, T, W, b = make_data(203, 21, o, dtype, seed=o)
    model = fastlin.Linear.from_weights(W, b)
    hist = model.fit(X, T, steps=9, batch_size=50, shuffle=shuffle, seed=5, opt=fastlin.SGD(0.02, momentum=0.5))
    losses, W_ref, b_ref = naive.fit(X, T, W, b, 9, lr=0.02, momentum=0.5, batch_size=50, shuffle=shuffle, seed=5)
    rt = 1e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(np.asarray(hist.loss), losses, rtol=rt, atol=rt)
    np.testing.assert_allclose(model.weight, W_ref, rtol=rt, atol=rt)
    np.testing.assert_allclose(model.bias, b_ref, rtol=rt, atol=rt)


@pytest.mark.parametrize("o", [1, 3, 16])
def test_results_do_not_depend_on_the_thread_count(o):
    """Fixed chunks, added in order: bit-identical with 1 thread and with all."""
    import numba

    X, T, W, b = make_data(40_000, 24, o, np.float32, seed=o)
    out = []
    saved = numba.get_num_threads()
    try:
        for threads in (1, saved):
            numba.set_num_threads(threads)
            model = fastlin.Linear.from_weights(W, b)
            g = model.gradients(X, T)
            model.fit(X, T, steps=3, batch_size=10_000, seed=2, opt=fastlin.SGD(0.01))
            out.append((g.loss, g.weight, model.weight.copy()))
    finally:
        numba.set_num_threads(saved)
    assert out[0][0] == out[1][0]
    np.testing.assert_array_equal(out[0][1], out[1][1])
    np.testing.assert_array_equal(out[0][2], out[1][2])


def test_prefetch_intrinsic_compiles_to_a_prefetch_and_changes_nothing():
    import numba

    from fastlin.backends._simd import prefetch

    @numba.njit
    def touch(a, rows):
        s = 0.0
        for k in range(rows.shape[0]):
            prefetch(a, rows[k], 0)
            s += a[rows[k], 1]
        return s

    a = np.arange(12.0).reshape(4, 3)
    rows = np.array([3, 0, 2], dtype=np.int64)
    assert touch(a, rows) == a[rows, 1].sum()
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "prefetcht0" in touch.inspect_asm(touch.signatures[0])
