"""The exact solve: the Gram pass (cpu_ops.gram_sums) and Linear.solve.

References are float64 numpy: the shifted sums by matrix products, and the
solution by ``numpy.linalg.lstsq`` on the stacked least-squares problem
(minimum-norm when it is not unique).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastlin
from fastlin import _solve
from fastlin.backends import cpu_gram, cpu_ops


# --------------------------------------------------------------------------
# float64 references
# --------------------------------------------------------------------------
def gram_ref(X, T, w=None):
    """The shifted sums of cpu_ops.gram_sums, by float64 matrix products."""
    X = np.asarray(X, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    Xs, Ts = X - X[0], T - T[0]
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    return {
        "xx": (Xs * w[:, None]).T @ Xs,
        "xt": (Xs * w[:, None]).T @ Ts,
        "sx": w @ Xs,
        "st": w @ Ts,
        "tt": w @ (Ts * Ts),
        "sw": w.sum(),
    }


def solve_ref(X, T, weight_decay=0.0, w=None, bias=True):
    """argmin Σ w‖x·Wᵀ + b − t‖²/(O·Σw) + λ/2(‖W‖² + ‖b‖²) by float64 lstsq.

    Stacked as ‖[√w·A; √μ·I] θ − [√w·T; 0]‖² with A = [X, 1] and
    μ = λ·O·Σw/2; lstsq's answer has minimum ‖θ‖ when it is not unique.
    """
    X = np.asarray(X, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64).reshape(len(X), -1)
    n, d = X.shape
    o = T.shape[1]
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    A = np.column_stack([X, np.ones(n)]) if bias else X
    sq = np.sqrt(w)[:, None]
    mu = weight_decay * o * w.sum() / 2.0
    if mu > 0:
        A_ = np.vstack([sq * A, np.sqrt(mu) * np.eye(A.shape[1])])
        T_ = np.vstack([sq * T, np.zeros((A.shape[1], o))])
    else:
        A_, T_ = sq * A, sq * T
    theta = np.linalg.lstsq(A_, T_, rcond=None)[0]
    W = theta[:d].T
    b = theta[d] if bias else None
    return W, b


def loss_ref(X, T, W, b, w=None):
    X = np.asarray(X, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64).reshape(len(X), -1)
    R = X @ np.asarray(W, dtype=np.float64).T - T
    if b is not None:
        R += np.asarray(b, dtype=np.float64)
    w = np.ones(len(X)) if w is None else np.asarray(w, dtype=np.float64)
    return float(w @ (R * R).sum(axis=1)) / (T.shape[1] * w.sum())


def make(n, d, o, dtype=np.float64, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(o, d))
    T = X @ W.T + rng.normal(size=o) + noise * rng.normal(size=(n, o))
    return X.astype(dtype), T.astype(dtype)


@pytest.fixture(params=["default", "many-chunks"])
def gram_chunking(request, monkeypatch):
    """fastlin's own chunks, or tiny chunks and row blocks, so that the
    parallel kernel, partial blocks and the ordered reduction always run."""
    if request.param == "many-chunks":
        monkeypatch.setattr(cpu_ops, "MIN_CHUNK_WORK", 1)
        monkeypatch.setattr(cpu_gram, "BLOCK_ROWS", 4)
        monkeypatch.setattr(cpu_gram, "RUN_ROWS", 4)
        monkeypatch.setattr(cpu_gram, "CHUNK_MIN_ROWS", 4)
    return request.param


def _abs_sums(Z, w):
    Z = np.abs(Z)
    return (Z * w[:, None]).T @ Z


def gram_abs_ref(X, T, w=None):
    """What the float32 path's error bound is relative to, per entry of S:
    ``Σ w·(|z| + |δ|)(|z| + |δ|)ᵀ`` with z = [x − r, 1, t − s] about each
    chunk's own reference (r, s) (the mean of the chunk's first run, rounded
    to float32: cpu_gram._chunk_sums32) and δ its distance to X[0], T[0];
    and ``Σ |w·z zᵀ|`` about X[0] and T[0] (for the float64 rounding), as
    ``(local, shifted)`` dicts."""
    X = np.asarray(X, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    n, d = X.shape
    o = T.shape[1]
    w = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)
    chunk_rows, n_chunks = cpu_ops.plan_gram_chunks(n, d, o, np.float32)
    run = min(cpu_gram.RUN_ROWS, chunk_rows)
    local = np.zeros((d + 1 + o, d + 1 + o))
    for c in range(n_chunks):
        rows = slice(c * chunk_rows, min((c + 1) * chunk_rows, n))
        first = slice(c * chunk_rows, min(c * chunk_rows + run, n))
        r = X[first].mean(axis=0).astype(np.float32)
        s = T[first].mean(axis=0).astype(np.float32)
        Z = np.column_stack([X[rows] - r, np.ones(len(X[rows])), T[rows] - s])
        # the float64 move to X[0], T[0] multiplies the float32 error of the
        # ones column (Σ w·z) by the shift δ: bound |z| + |δ| per value
        delta = np.concatenate([r - X[0], [0.0], s - T[0]])
        local += _abs_sums(np.abs(Z) + np.abs(delta), w[rows])
    shifted = _abs_sums(np.column_stack([X - X[0], np.ones(n), T - T[0]]), w)

    def split(A):
        return {
            "xx": A[:d, :d],
            "xt": A[:d, d + 1 :],
            "sx": A[:d, d],
            "st": A[d, d + 1 :],
            "tt": np.diagonal(A)[d + 1 :],
        }

    return split(local), split(shifted)


def float32_bound(abs_ref, key):
    """The float32 path's documented bound on the error of one entry:
    ``(RUN_ROWS + 4)·2⁻²⁴·Σ w·(|z| + |δ|)(|z| + |δ|)ᵀ`` about the chunks' own
    references, plus float64 rounding (1e-13) of the sums about X[0]
    (cpu_gram's docstring)."""
    local, shifted = abs_ref
    return (cpu_gram.RUN_ROWS + 4) * 2.0**-24 * local[key] + 1e-13 * shifted[key]


# --------------------------------------------------------------------------
# the Gram pass
# --------------------------------------------------------------------------
SHAPES = [(1, 1, 1), (2, 1, 1), (17, 3, 2), (33, 5, 1), (130, 7, 3), (300, 2, 9), (257, 33, 1), (129, 4, 4)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_gram_sums_match_float64_reference(shape, weighted, dtype, gram_chunking):
    n, d, o = shape
    rng = np.random.default_rng(n * 100 + d)
    X = rng.normal(size=(n, d)).astype(dtype)
    T = (3.0 + rng.normal(size=(n, o))).astype(dtype)
    w = rng.random(n) if weighted else None
    if weighted and n > 2:
        w[::3] = 0.0
    got = cpu_ops.gram_sums(X, T, w)
    ref = gram_ref(X, T, w)
    bound = gram_abs_ref(X, T, w)
    for key, value in ref.items():
        scale = np.max(np.abs(value)) + 1e-300
        err = np.abs(np.asarray(getattr(got, key)) - value)
        if dtype == np.float32 and key == "sw":
            assert err <= (cpu_gram.RUN_ROWS + 4) * 2.0**-24 * value
        elif dtype == np.float32:
            # float32 products (cpu_gram's float32 path): the documented bound
            assert np.all(err <= float32_bound(bound, key) + 1e-13 * scale), key
        else:
            np.testing.assert_allclose(np.asarray(getattr(got, key)), value, rtol=0, atol=1e-13 * scale, err_msg=key)
    np.testing.assert_array_equal(got.x_ref, X[0].astype(np.float64))
    np.testing.assert_array_equal(got.t_ref, T[0].astype(np.float64))
    assert got.n_rows == n
    assert got.xx.shape == (d, d) and got.xt.shape == (d, o) and got.tt.shape == (o,)
    np.testing.assert_array_equal(got.xx, got.xx.T)


def test_gram_sums_with_a_given_reference_row():
    X, T = make(50, 4, 2)
    x_ref, t_ref = np.arange(4.0), np.array([1.0, -1.0])
    got = cpu_ops.gram_sums(X, T, None, x_ref, t_ref)
    Xs, Ts = X - x_ref, T - t_ref
    np.testing.assert_allclose(got.xx, Xs.T @ Xs, rtol=1e-13)
    np.testing.assert_allclose(got.xt, Xs.T @ Ts, rtol=1e-13)
    np.testing.assert_allclose(got.tt, (Ts * Ts).sum(axis=0), rtol=1e-13)


def test_gram_sums_keep_large_offsets_exact():
    # Timestamps: 1e9 plus a spread of 1e4, float32.  Unshifted float64 sums
    # of x² (~1e18 per row) would keep only ~8 digits of the variance.
    rng = np.random.default_rng(3)
    n = 5000
    X = (1e9 + 1e4 * rng.random((n, 3))).astype(np.float32)
    T = (2e9 + 1e4 * rng.random((n, 1))).astype(np.float32)
    got = cpu_ops.gram_sums(X, T)
    ref = gram_ref(X, T)
    for key in ("xx", "xt", "sx", "st", "tt"):
        np.testing.assert_allclose(np.asarray(getattr(got, key)), ref[key], rtol=1e-12, err_msg=key)
    # X itself was not modified
    assert X[0, 0] != 0 and np.all(X > 1e8)


def test_gram_sums_planning_depends_on_shape_only():
    rows, chunks = cpu_ops.plan_gram_chunks(1_000_000, 50, 1)
    assert chunks <= cpu_ops.MAX_CHUNKS and rows % cpu_gram.BLOCK_ROWS == 0 and rows * chunks >= 1_000_000
    assert cpu_ops.plan_gram_chunks(5, 3, 1) == (5, 1)
    rows, chunks = cpu_ops.plan_gram_chunks(1_000_000, 200, 1, np.float32)
    assert chunks <= cpu_ops.MAX_CHUNKS and rows % cpu_gram.RUN_ROWS == 0 and rows * chunks >= 1_000_000
    assert cpu_ops.plan_gram_chunks(5, 3, 1, np.float32) == (5, 1)


@pytest.mark.parametrize("n", [1, 63, 64, 2047, 2048, 4095, 4096, 8191, 8192, 9000, 100_000, 262_143, 1_000_000])
@pytest.mark.parametrize("d", [1, 50, 200, 2000])
def test_float32_gram_chunks_power_of_two_with_enough_rows(n, d):
    rows, chunks = cpu_ops.plan_gram_chunks(n, d, 1, np.float32)
    least = cpu_gram.CHUNK_MIN_ROWS
    # every row in exactly one chunk, each chunk whole runs (the last may be short)
    assert (chunks - 1) * rows < n <= chunks * rows
    assert rows % cpu_gram.RUN_ROWS == 0 or (chunks == 1 and rows == n)
    # the count is a power of two, at most MAX_CHUNKS, within the scratch budget
    assert chunks & (chunks - 1) == 0 and chunks <= cpu_ops.MAX_CHUNKS
    rows_pad, cols_pad = cpu_gram.padded_shape32(d, 1)
    assert chunks == 1 or chunks * 8 * rows_pad * cols_pad <= cpu_ops.SCRATCH_BYTES
    # chunks of at least CHUNK_MIN_ROWS rows (two of at least half from half that many rows on)
    if chunks > 2:
        assert n // chunks >= least
    if n < least // 2:
        assert chunks == 1
    elif n < 2 * least and d <= 200:
        assert chunks == 2


# --------------------------------------------------------------------------
# float32 data: float32 products over runs of RUN_ROWS rows, float64 sums
# --------------------------------------------------------------------------
F32_SHAPES = [(1, 1, 1), (389, 1, 1), (1031, 3, 2), (777, 50, 1), (1003, 200, 1), (517, 257, 3)]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", F32_SHAPES, ids=[f"{n}x{d}x{o}" for n, d, o in F32_SHAPES])
def test_float32_gram_sums_within_the_documented_bound(shape, weighted, gram_chunking):
    n, d, o = shape
    rng = np.random.default_rng(n + d)
    X = (rng.normal(size=(n, d)) + rng.normal(size=d)).astype(np.float32)
    T = (3.0 + rng.normal(size=(n, o))).astype(np.float32)
    w = 3.0 * rng.random(n) if weighted else None
    if weighted and n > 2:
        w[1::5] = 0.0
    got = cpu_ops.gram_sums(X, T, w)
    ref = gram_ref(X, T, w)
    bound = gram_abs_ref(X, T, w)
    for key in ("xx", "xt", "sx", "st", "tt"):
        err = np.abs(np.asarray(getattr(got, key)) - ref[key])
        assert np.all(err <= float32_bound(bound, key)), key
        # and what it costs in practice (the docstring's measured figure):
        # a few 1e-8 of the largest Σ|w·z zᵀ|, far inside the worst case
        assert err.max() <= 2e-7 * bound[0][key].max() + 1e-13 * bound[1][key].max(), key
    # Σw: float32-rounded weights summed over runs in float32, so exact
    # without weights and within the same bound with them
    assert abs(got.sw - ref["sw"]) <= (cpu_gram.RUN_ROWS + 4) * 2.0**-24 * ref["sw"]
    if not weighted:
        assert got.sw == n
    np.testing.assert_array_equal(got.xx, got.xx.T)


@pytest.mark.parametrize("weighted", [False, True])
def test_float32_gram_sums_keep_large_offsets(weighted, gram_chunking):
    # timestamps near 1e9 with a spread of 1e4, as float32: the shift is
    # exact (Sterbenz), and the sums keep the spread's digits
    rng = np.random.default_rng(11)
    n = 3001
    X = (1e9 + 1e4 * rng.random((n, 5))).astype(np.float32)
    T = (2e9 + 1e4 * rng.random((n, 2))).astype(np.float32)
    w = rng.random(n) if weighted else None
    got = cpu_ops.gram_sums(X, T, w)
    ref = gram_ref(X, T, w)
    bound = gram_abs_ref(X, T, w)
    for key in ("xx", "xt", "sx", "st", "tt"):
        err = np.abs(np.asarray(getattr(got, key)) - ref[key])
        assert np.all(err <= float32_bound(bound, key)), key
        assert err.max() <= 1e-6 * np.abs(ref[key]).max(), key
    assert np.all(X > 1e8)  # X itself was not modified


@pytest.mark.parametrize(
    "case", ["huge-values", "tiny-values", "huge-weights", "tiny-weights", "one-huge-row", "infinite"]
)
def test_float32_values_outside_the_safe_range_are_summed_in_float64(case, gram_chunking):
    """Beyond 2**±60 a float32 product could overflow or lose digits to
    underflow: such chunks take the float64 path (float64 accuracy)."""
    rng = np.random.default_rng(12)
    n, d = 700, 4
    X = rng.normal(size=(n, d))
    T = rng.normal(size=(n, 1))
    w = None
    if case == "huge-values":
        X, T = X * 1e25, T * 1e30
    elif case == "tiny-values":
        X, T = X * 1e-25, T * 1e-30
    elif case == "huge-weights":
        w = 1e30 * (1.0 + rng.random(n))
    elif case == "tiny-weights":
        w = 1e-30 * (1.0 + rng.random(n))
    elif case == "one-huge-row":
        X[n // 2, 1] = 3e20
    X, T = X.astype(np.float32), T.astype(np.float32)
    if case == "infinite":
        X[5, 2] = np.inf
        got = cpu_ops.gram_sums(X, T)
        assert not np.isfinite(got.xx).all()
        return
    got = cpu_ops.gram_sums(X, T, w)
    ref = gram_ref(X, T, w)
    for key in ("xx", "xt", "sx", "st", "tt"):
        value = ref[key]
        if case == "one-huge-row":
            # the chunk holding the row is exact to float64; the others float32
            bound = float32_bound(gram_abs_ref(X, T, w), key) + 1e-13 * np.abs(value).max()
            assert np.all(np.abs(np.asarray(getattr(got, key)) - value) <= bound), key
        else:
            np.testing.assert_allclose(
                np.asarray(getattr(got, key)), value, rtol=0, atol=1e-13 * np.abs(value).max(), err_msg=key
            )


# Widths around the 8-lane shift (_fill32: 8 columns at a time, a scalar
# tail) and the 6 × 16 / 6 × 8 tiles, with N below, at and off 64 rows.
F32_LANE_SHAPES = [
    (1, 8, 1),
    (63, 9, 2),
    (64, 15, 1),
    (65, 16, 1),
    (130, 17, 3),
    (200, 23, 5),
    (70, 40, 16),
    (129, 7, 1),
]


@pytest.mark.parametrize("shape", F32_LANE_SHAPES, ids=[f"{n}x{d}x{o}" for n, d, o in F32_LANE_SHAPES])
def test_float32_gram_sums_vector_shift_and_tiles(shape, gram_chunking):
    n, d, o = shape
    rng = np.random.default_rng(7 * n + d)
    X = (rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + 100.0 * rng.normal(size=d)).astype(np.float32)
    X[:, d // 2] = 4.25  # a constant column
    T = (rng.normal(size=(n, o)) - 50.0).astype(np.float32)
    before = X.copy()
    got = cpu_ops.gram_sums(X, T)
    ref = gram_ref(X, T)
    bound = gram_abs_ref(X, T)
    for key in ("xx", "xt", "sx", "st", "tt"):
        err = np.abs(np.asarray(getattr(got, key)) - ref[key])
        assert np.all(err <= float32_bound(bound, key)), key
    assert got.sw == n
    np.testing.assert_array_equal(got.xx, got.xx.T)
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize("column", [0, 7, 8, 12])
@pytest.mark.parametrize("value", [3e20, -3e20, "tiny-column", np.inf, -np.inf])
def test_float32_out_of_range_value_in_any_lane_takes_float64(column, value):
    """d = 13: columns 0-7 are shifted as one vector, 8-12 one by one; a value
    out of float32's safe range in either part sends its chunk (here the
    only one) to float64."""
    rng = np.random.default_rng(column)
    n, d = 100, 13
    X = rng.normal(size=(n, d))
    T = rng.normal(size=(n, 1))
    if value == "tiny-column":  # every shifted value of the column below 2**-60
        X[:, column] *= 1e-25
        value = 1e-25
    else:
        X[n // 3, column] = value
    X, T = X.astype(np.float32), T.astype(np.float32)
    assert cpu_ops.plan_gram_chunks(n, d, 1, np.float32)[1] == 1
    got = cpu_ops.gram_sums(X, T)
    if not np.isfinite(value):
        assert not np.isfinite(got.xx).all()
        return
    ref = gram_ref(X, T)
    for key in ("xx", "xt", "sx", "st", "tt"):
        value_ref = ref[key]
        np.testing.assert_allclose(
            np.asarray(getattr(got, key)), value_ref, rtol=0, atol=1e-13 * np.abs(value_ref).max(), err_msg=key
        )
    # the column's own sums to float64 accuracy (float32 products of values
    # near 1e-25 would underflow to zero)
    np.testing.assert_allclose(got.xx[column, column], ref["xx"][column, column], rtol=1e-12)
    np.testing.assert_allclose(got.sx[column], ref["sx"][column], rtol=1e-12)


@pytest.mark.parametrize("column", [2, 10])
def test_float32_nan_makes_the_sums_nan(column):
    X, T = make(200, 11, 1, dtype=np.float32)
    X[50, column] = np.nan
    got = cpu_ops.gram_sums(X, T)
    assert np.isnan(got.xx).any()


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 3), (17, 1), (64, 5), (201, 2)])
def test_solve_triangular_matches_numpy(n, m, lower):
    rng = np.random.default_rng(n + m)
    R = rng.normal(size=(n, n)) + 2.0 * np.sqrt(n) * np.eye(n)
    R = np.tril(R) if lower else np.triu(R)
    # the other triangle is never read
    full = R + (np.triu(np.full((n, n), np.nan), 1) if lower else np.tril(np.full((n, n), np.nan), -1))
    Q = rng.normal(size=(n, m))
    out = np.empty((n, m))
    cpu_gram.solve_triangular(full, Q, lower, out)
    np.testing.assert_allclose(out, np.linalg.solve(R, Q), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(50, 1, 1), (300, 7, 2), (2000, 40, 1)])
def test_ridge_solution_triangular_shortcut_matches_least_squares(shape):
    """alpha = 0 with a Cholesky factor: one back substitution, the same
    answer as the QR of least_squares (which the shortcut skips)."""
    n, d, o = shape
    X, T = make(n, d, o, seed=d)
    X += 1e3
    sums = cpu_ops.gram_sums(X, T)
    W, b, _ = _solve.ridge_solution(sums, 0.0, True)
    xx, xt, _, mx, mt = _solve.centred(sums)
    R, q, null = _solve.factor(xx, xt)
    assert not null.shape[1] and _solve._is_upper(R)
    W_qr = _solve.least_squares(R, q, null, np.eye(d), np.zeros((d, o)), 0.0).T
    np.testing.assert_allclose(W, W_qr, rtol=1e-9, atol=1e-12)
    A = np.column_stack([X, np.ones(n)])
    ref = np.linalg.lstsq(A, T, rcond=None)[0]
    np.testing.assert_allclose(W, ref[:d].T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, ref[d], rtol=1e-8, atol=1e-8)


def test_float32_gram_sums_with_a_given_reference_row():
    X, T = make(300, 3, 1, dtype=np.float32)
    x_ref, t_ref = np.array([0.1, 0.2, 0.3]), np.array([0.7])
    got = cpu_ops.gram_sums(X, T, None, x_ref, t_ref)
    np.testing.assert_array_equal(got.x_ref, x_ref)
    np.testing.assert_array_equal(got.t_ref, t_ref)
    Xs, Ts = X.astype(np.float64) - x_ref, T.astype(np.float64) - t_ref
    np.testing.assert_allclose(got.xx, Xs.T @ Xs, rtol=1e-6)
    np.testing.assert_allclose(got.xt, Xs.T @ Ts, rtol=1e-6)
    np.testing.assert_allclose(got.tt, (Ts * Ts).sum(axis=0), rtol=1e-6)


def test_linear_regressor_float32_200_features_matches_ridge_r2():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import make_regression
    from sklearn.linear_model import Ridge

    from fastlin.sklearn import LinearRegressor

    assert sklearn
    X, y = make_regression(n_samples=20_000, n_features=200, n_informative=200, noise=1.0, bias=3.0, random_state=0)
    X, y = X.astype(np.float32), y.astype(np.float32)
    ours = LinearRegressor().fit(X, y)
    ridge = Ridge(solver="cholesky").fit(X, y)
    assert abs(ours.score(X, y) - ridge.score(X, y)) <= 1e-6
    # and against the float64 least-squares answer itself
    W_ref, b_ref = solve_ref(X, y)
    np.testing.assert_allclose(ours.coef_, W_ref[0], rtol=0, atol=1e-5 * np.abs(W_ref).max())


_THREADS_SCRIPT = """
import json, sys, numpy as np, numba, fastlin
from fastlin.backends import cpu_ops
rng = np.random.default_rng(5)
X = rng.normal(size=(40000, 23)).astype(np.float32)
T = rng.normal(size=(40000, 2)).astype(np.float32)
w = rng.random(40000)
g = cpu_ops.gram_sums(X, T, w)
X2 = rng.normal(size=(9000, 200)).astype(np.float32)
T2 = rng.normal(size=(9000, 1)).astype(np.float32)
g2 = cpu_ops.gram_sums(X2, T2, w[:9000])
g3 = cpu_ops.gram_sums(X.astype(np.float64), T.astype(np.float64), w)
m = fastlin.Linear(23, 2, seed=0)
loss = m.solve(X, T, weight_decay=1e-3)
out = {"threads": numba.get_num_threads(),
       "sums": [np.asarray(a).tobytes().hex() for s in (g, g2, g3) for a in (s.xx, s.xt, s.sx, s.st, s.tt, s.sw)],
       "weights": [m.weight.tobytes().hex(), m.bias.tobytes().hex()], "loss": loss.hex()}
print(json.dumps(out))
"""


def test_gram_sums_and_solve_are_bit_identical_for_1_and_2_threads():
    """numba and BLAS threads, float32 (D = 23 and 200) and float64 data."""
    results = []
    for threads in ("1", "2"):
        # BLAS's thread count too: the pass calls no BLAS, and the solve of
        # these small systems holds BLAS to one thread (_solve.SERIAL_SOLVE_MAX)
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
        proc = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT], check=False, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert [r["threads"] for r in results] == [1, 2]
    # the parallel kernels ran
    assert cpu_ops.plan_gram_chunks(40000, 23, 2, np.float32)[1] > 1
    assert cpu_ops.plan_gram_chunks(9000, 200, 1, np.float32)[1] > 1
    assert cpu_ops.plan_gram_chunks(40000, 23, 2)[1] > 1
    for key in ("sums", "weights", "loss"):
        assert results[0][key] == results[1][key], key


# --------------------------------------------------------------------------
# Linear.solve against lstsq
# --------------------------------------------------------------------------
def _check_solution(model, X, T, weight_decay=0.0, w=None, rtol=1e-8):
    W_ref, b_ref = solve_ref(X, T, weight_decay, w, bias=model.has_bias)
    W, b = model.numpy()
    scale = max(np.abs(W_ref).max(), 1.0 if b_ref is None else np.abs(b_ref).max())
    np.testing.assert_allclose(W, W_ref, rtol=0, atol=rtol * scale)
    if b_ref is not None:
        np.testing.assert_allclose(b, b_ref, rtol=0, atol=rtol * scale)


CASES = {
    "tall": (200, 5, 1),
    "multi-output": (150, 6, 3),
    "D=1": (40, 1, 1),
    "N<D": (4, 9, 2),
    "N=D": (7, 6, 1),
    "one-row": (1, 3, 2),
    "partial-blocks": (261, 33, 2),
}


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_solve_matches_lstsq_float64(case, bias, weight_decay, gram_chunking):
    n, d, o = CASES[case]
    X, T = make(n, d, o, seed=len(case))
    model = fastlin.Linear(d, o, bias=bias, dtype=np.float64, seed=1)
    loss = model.solve(X, T, weight_decay=weight_decay)
    _check_solution(model, X, T, weight_decay)
    W, b = model.numpy()
    assert abs(loss - loss_ref(X, T, W, b)) <= 1e-10 * max(1.0, float(np.var(T)))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_solve_float32_layer(bias, weight_decay):
    X, T = make(300, 8, 2, dtype=np.float32, seed=9)
    model = fastlin.Linear(8, 2, bias=bias, seed=1)
    loss = model.solve(X, T, weight_decay=weight_decay)
    assert model.weight.dtype == np.float32
    _check_solution(model, X, T, weight_decay, rtol=1e-6)
    # The loss comes from the sums, whose float32 products carry ~1e-7 of
    # the shifted targets' mean square (cpu_gram): an absolute error, which
    # a well-fitted loss (here ~1e-3 of it) reads relatively.
    mean_sq = float(np.mean((T.astype(np.float64) - T[0]) ** 2))
    assert abs(loss - model.loss(X, T)) <= 1e-6 * mean_sq


def test_solve_with_collinear_and_constant_columns_gives_minimum_norm(gram_chunking):
    rng = np.random.default_rng(4)
    base = rng.normal(size=(60, 3))
    # column 3 = 2·column 0 (exact in binary), column 4 constant, column 5 = col 1 + col 2
    X = np.column_stack([base, 2.0 * base[:, 0], np.full(60, 3.0), base[:, 1] + base[:, 2]])
    T = base @ [1.0, -2.0, 0.5] + 1.0 + 0.01 * rng.normal(size=60)
    for bias in (True, False):
        model = fastlin.Linear(6, 1, bias=bias, dtype=np.float64)
        model.solve(X, T)
        _check_solution(model, X, T, rtol=1e-7)


def test_solve_all_zero_and_constant_inputs():
    X = np.zeros((10, 3))
    T = np.arange(10.0)
    model = fastlin.Linear(3, 1, dtype=np.float64, seed=0)
    loss = model.solve(X, T)
    np.testing.assert_allclose(model.weight, 0.0, atol=1e-12)
    assert model.bias[0] == pytest.approx(4.5)
    assert loss == pytest.approx(np.var(T))
    # a layer without bias on constant X = 2: W·2 ≈ mean(T), spread evenly (minimum norm)
    model = fastlin.Linear(3, 1, bias=False, dtype=np.float64)
    model.solve(np.full((10, 3), 2.0), T)
    np.testing.assert_allclose(model.weight, np.full((1, 3), 4.5 / 6.0), rtol=1e-10)


def test_solve_single_sample_1d():
    model = fastlin.Linear(3, 2, dtype=np.float64)
    x, t = np.array([1.0, 2.0, -1.0]), np.array([0.5, -3.0])
    loss = model.solve(x, t)
    np.testing.assert_allclose(model(x), t, atol=1e-12)
    assert loss == pytest.approx(0.0, abs=1e-20)
    # minimum norm: (W, b) ∝ (x, 1) per output
    W, b = model.numpy()
    np.testing.assert_allclose(W, np.outer(t, x) / (x @ x + 1.0), rtol=1e-12)
    np.testing.assert_allclose(b, t / (x @ x + 1.0), rtol=1e-12)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_solve_with_sample_weights_including_zeros(weight_decay, gram_chunking):
    X, T = make(80, 4, 2, seed=2)
    w = np.random.default_rng(1).random(80) * 3
    w[::4] = 0.0
    model = fastlin.Linear(4, 2, dtype=np.float64)
    loss = model.solve(X, T, weight_decay=weight_decay, sample_weight=w)
    _check_solution(model, X, T, weight_decay, w)
    W, b = model.numpy()
    assert abs(loss - loss_ref(X, T, W, b, w)) <= 1e-10
    # an integer weight k is the same as the row repeated k times
    k = np.random.default_rng(2).integers(0, 4, 80)
    k[0] = 1
    m1, m2 = fastlin.Linear(4, 2, dtype=np.float64), fastlin.Linear(4, 2, dtype=np.float64)
    m1.solve(X, T, weight_decay=weight_decay, sample_weight=k)
    m2.solve(np.repeat(X, k, axis=0), np.repeat(T, k, axis=0), weight_decay=weight_decay)
    np.testing.assert_allclose(m1.weight, m2.weight, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m1.bias, m2.bias, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_solve_large_offsets_float32(bias):
    # timestamps near 1e9 with a spread of 1e4; the answer has a slope of order 1e-3
    rng = np.random.default_rng(7)
    n = 4000
    X = (1e9 + 1e4 * rng.random((n, 2))).astype(np.float32)
    Xd = X.astype(np.float64)
    t = 1e-3 * (Xd[:, 0] - 1e9) - 2e-3 * (Xd[:, 1] - 1e9) + 5.0 + 0.01 * rng.normal(size=n)
    T = t.astype(np.float32)
    sums = cpu_ops.gram_sums(X, T.reshape(-1, 1))
    W, b = _solve.layer_solution(sums, bias, 0.0)
    if bias:
        # lstsq on [X, 1] itself would lose the slope (a singular-value ratio
        # near 1e-13): the reference solves the shifted problem instead, which
        # has the same unique solution.
        r = Xd[0]
        W_ref, c = solve_ref(Xd - r, T, bias=True)
        b_ref = c - W_ref @ r
    else:
        W_ref, b_ref = solve_ref(X, T, bias=False)
    # float32 data: float32 products (2⁻²⁴ each, cpu_gram) bound the digits
    # of W, and b = c − W·r carries W's relative error times |W·r| (~1e6)
    np.testing.assert_allclose(W, W_ref, rtol=1e-6)
    if bias:
        np.testing.assert_allclose(b, b_ref, rtol=1e-6)
        np.testing.assert_allclose(W[0], [1e-3, -2e-3], rtol=1e-3)
    # and through the float32 layer
    model = fastlin.Linear(2, 1, bias=bias)
    model.solve(X, T)
    np.testing.assert_allclose(model.weight, W_ref, rtol=1e-5)


def test_solve_large_offsets_with_weight_decay_float64():
    rng = np.random.default_rng(8)
    X = 1e6 + 1e2 * rng.random((500, 2))
    T = X @ [0.5, -0.25] + rng.normal(size=500)
    model = fastlin.Linear(2, 1, dtype=np.float64)
    model.solve(X, T, weight_decay=1e-6)
    W_ref, b_ref = solve_ref(X, T, 1e-6)
    np.testing.assert_allclose(model.weight, W_ref, rtol=1e-6)
    np.testing.assert_allclose(model.bias, b_ref, rtol=1e-6)


def test_solve_matches_sklearn_ridge_without_bias():
    linear_model = pytest.importorskip("sklearn.linear_model")
    X, T = make(120, 5, 3, seed=6)
    lam = 0.2
    model = fastlin.Linear(5, 3, bias=False, dtype=np.float64)
    model.solve(X, T, weight_decay=lam)
    ridge = linear_model.Ridge(alpha=lam * 120 * 3 / 2, fit_intercept=False, solver="svd").fit(X, T)
    np.testing.assert_allclose(model.weight, ridge.coef_, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# errors: named, and nothing changes
# --------------------------------------------------------------------------
def _bad(model, X, T, exc, match, **kw):
    W, b = model.numpy()
    with pytest.raises(exc, match=match):
        model.solve(X, T, **kw)
    np.testing.assert_array_equal(model.weight, W)
    np.testing.assert_array_equal(model.bias, b)


def test_solve_errors_leave_the_weights_alone():
    X, T = make(20, 3, 1)
    model = fastlin.Linear(3, 1, seed=0)
    Xn = X.copy()
    Xn[3, 1] = np.nan
    Tn = T.copy()
    Tn[5, 0] = np.inf
    _bad(model, Xn, T, ValueError, "X")
    _bad(model, X, Tn, ValueError, "T")
    _bad(model, X, T, ValueError, "weight_decay", weight_decay=-1.0)
    _bad(model, X, T, TypeError, "weight_decay", weight_decay="big")
    _bad(model, X, T, ValueError, "sample_weight", sample_weight=np.ones(19))
    _bad(model, X, T, ValueError, "sample_weight", sample_weight=-np.ones(20))
    _bad(model, X, T, ValueError, "zero", sample_weight=np.zeros(20))
    w = np.ones(20)
    w[2] = np.nan
    _bad(model, X, T, ValueError, "sample_weight", sample_weight=w)
    _bad(model, X, T, TypeError, "sample_weight", sample_weight=np.array(["a"] * 20))
    _bad(model, X[:, :2], T, ValueError, "X")
    _bad(model, X, T[:5], ValueError, "T")
    # finite float64 data whose squares overflow
    m64 = fastlin.Linear(3, 1, dtype=np.float64, seed=0)
    _bad(m64, X * 1e200, T, ValueError, "overflow")


def test_solve_error_messages_match_fit():
    X, T = make(20, 3, 1)
    model = fastlin.Linear(3, 1, seed=0)
    for bad in (X[:, :2], np.zeros((0, 3))):
        with pytest.raises(ValueError) as e_fit:
            model.fit(bad, T[: len(bad)], steps=1)
        with pytest.raises(ValueError) as e_solve:
            model.solve(bad, T[: len(bad)])
        assert str(e_fit.value) == str(e_solve.value)


@pytest.mark.skipif(not fastlin.cuda_available(), reason="needs a usable CUDA GPU (or NUMBA_ENABLE_CUDASIM=1)")
def test_cuda_model_solve_raises_not_implemented_and_changes_nothing():
    X, T = make(20, 3, 1, dtype=np.float32)
    model = fastlin.Linear(3, 1, device="cuda", seed=0)
    W, b = model.numpy()
    with pytest.raises(NotImplementedError, match=r"model\.to\('cpu'\)"):
        model.solve(X, T)
    np.testing.assert_array_equal(model.numpy()[0], W)
    np.testing.assert_array_equal(model.numpy()[1], b)
    model.to("cpu").solve(X, T)  # the alternative it names works
    _check_solution(model, X, T, rtol=1e-5)


def test_cuda_gram_sums_say_what_to_do_instead():
    # No GPU is needed to reach the refusal, but the module needs numba-cuda
    # (numba's own numba.cuda, present without it, cannot build the kernels).
    pytest.importorskip("numba_cuda", reason="needs numba-cuda: pip install 'fastlin[cudasim]'")
    from fastlin.backends import cuda_ops

    with pytest.raises(NotImplementedError, match=r"model\.to\('cpu'\).*fit"):
        cuda_ops.gram_sums(np.zeros((2, 2)), np.zeros((2, 1)))


# --------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    d=st.integers(1, 8),
    o=st.integers(1, 3),
    bias=st.booleans(),
    weight_decay=st.sampled_from([0.0, 1e-3, 0.5]),
    seed=st.integers(0, 2**31),
)
def test_property_gradient_vanishes_at_the_solution(n, d, o, bias, weight_decay, seed):
    X, T = make(n, d, o, seed=seed)
    model = fastlin.Linear(d, o, bias=bias, dtype=np.float64)
    model.solve(X, T, weight_decay=weight_decay)
    W, b = model.numpy()
    if weight_decay == 0.0 and n <= d + bias:
        # interpolation: every residual is zero
        np.testing.assert_allclose(model(X), T, atol=1e-8 * (1 + np.abs(T).max()))
        return
    g = model.gradients(X, T)
    scale = 1.0 + float(np.abs(T).max()) * (1.0 + float(np.abs(X).max())) ** 2
    np.testing.assert_allclose(g.weight + weight_decay * W, 0.0, atol=1e-9 * scale)
    if bias:
        np.testing.assert_allclose(g.bias + weight_decay * b, 0.0, atol=1e-9 * scale)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31), weight_decay=st.sampled_from([0.0, 0.01]))
def test_property_solve_agrees_with_a_long_sgd_fit(seed, weight_decay):
    X, T = make(200, 4, 2, seed=seed)
    solved = fastlin.Linear(4, 2, dtype=np.float64)
    solved.solve(X, T, weight_decay=weight_decay)
    trained = fastlin.Linear(4, 2, dtype=np.float64, seed=0)
    trained.fit(X, T, steps=3000, opt=fastlin.SGD(0.1, momentum=0.9, weight_decay=weight_decay))
    np.testing.assert_allclose(trained.weight, solved.weight, atol=1e-6)
    np.testing.assert_allclose(trained.bias, solved.bias, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    d=st.integers(1, 6),
    o=st.integers(1, 2),
    bias=st.booleans(),
    duplicate=st.booleans(),
    weight_decay=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**31),
)
def test_property_solve_is_lstsq_minimum_norm(n, d, o, bias, duplicate, weight_decay, seed):
    X, T = make(n, d, o, seed=seed)
    if duplicate:  # an exactly collinear column
        X = np.column_stack([X, 0.5 * X[:, 0]])
    model = fastlin.Linear(X.shape[1], o, bias=bias, dtype=np.float64)
    model.solve(X, T, weight_decay=weight_decay)
    _check_solution(model, X, T, weight_decay, rtol=1e-7)
