"""Every CPU kernel against the float64 reference, on awkward shapes.

Shapes: N in {1, 17, 33, 1000}, D in {1, 5, 63}, O in {1, 2, 7}; float32 and
float64; with and without bias; C- and Fortran-ordered inputs; fastlin's own
work split and a forced split into many chunks (so the parallel twins and the
chunk-ordered reduction run even on small N).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastlin
from fastlin.backends import cpu
from tests.support import naive
from tests.support.helpers import assert_sums_close, make_data, tol

SHAPES = list(itertools.product([1, 17, 33, 1000], [1, 5, 63], [1, 2, 7]))


def _model(W, b, bias):
    return fastlin.Linear.from_weights(W, b if bias else None)


@pytest.mark.parametrize("n,d,o", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("order", ["C", "F"])
def test_every_operation_matches_reference(n, d, o, dtype, bias, order, chunking):
    X, T, W, b = make_data(n, d, o, dtype, seed=n * 100 + d * 10 + o, order=order)
    b_ref = b if bias else None
    model = _model(W, b, bias)
    t = tol(dtype)

    # forward
    np.testing.assert_allclose(model(X), naive.forward(X, W, b_ref), **t)
    assert model(X).dtype == dtype

    for reduction in ("mean", "sum"):
        loss, dW, db = naive.mse_grad(X, T, W, b_ref, reduction)
        # loss without storing the prediction, and mse_loss on a stored one
        np.testing.assert_allclose(model.loss(X, T, reduction=reduction), loss, **t)
        np.testing.assert_allclose(
            fastlin.mse_loss(model(X), T, reduction=reduction), naive.mse(model(X), T, reduction), **t
        )
        # analytic gradient
        g = model.gradients(X, T, reduction=reduction)
        np.testing.assert_allclose(g.loss, loss, **t)
        assert_sums_close(g.weight, dW, naive.mse_grad_magnitude(X, T, W, b_ref, reduction), dtype)
        if bias:
            np.testing.assert_allclose(g.bias, db, **t)
        else:
            assert g.bias is None

    # backward with an arbitrary upstream gradient
    dY = np.random.default_rng(7).standard_normal((n, o)).astype(dtype)
    dX, dW_b, db_b = model.backward(X, dY)
    rX, rW, rb = naive.backward(X, dY, W)
    np.testing.assert_allclose(dX, rX, **t)
    np.testing.assert_allclose(dW_b, rW, **t)
    if bias:
        np.testing.assert_allclose(db_b, rb, **t)
    else:
        assert db_b is None

    # fused step: returns the loss before the update, then updates in place
    lr = 0.05
    loss, dW, db = naive.mse_grad(X, T, W, b_ref)
    got = model.step(X, T, fastlin.SGD(lr))
    np.testing.assert_allclose(got, loss, **t)
    # the new weight rounds to the dtype; its step carries the gradient's error
    W_ref = W.astype(np.float64) - lr * dW
    magnitude = lr * naive.mse_grad_magnitude(X, T, W, b_ref)
    assert_sums_close(model.weight, W_ref, magnitude, dtype, rounding=np.finfo(dtype).eps * np.abs(W_ref))
    if bias:
        np.testing.assert_allclose(model.bias, b.astype(np.float64) - lr * db, **t)


@pytest.mark.parametrize("n,d,o", [(1, 5, 2), (33, 63, 7), (1000, 5, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_sample_shapes(n, d, o, dtype):
    X, T, W, b = make_data(n, d, o, dtype)
    model = _model(W, b, True)
    x, t_ = X[0], T[0]
    assert model(x).shape == (o,)
    np.testing.assert_allclose(model(x), naive.forward(X[:1], W, b)[0], **tol(dtype))
    dX, dW, db = model.backward(x, t_)
    assert dX.shape == (d,) and dW.shape == (o, d) and db.shape == (o,)
    np.testing.assert_allclose(model.loss(x, t_), naive.mse_grad(X[:1], T[:1], W, b)[0], **tol(dtype))


def test_one_output_accepts_1d_targets():
    X, T, W, b = make_data(50, 4, 1)
    model = _model(W, b, True)
    assert model.loss(X, T[:, 0]) == model.loss(X, T)
    g1, g2 = model.gradients(X, T[:, 0]), model.gradients(X, T)
    np.testing.assert_array_equal(g1.weight, g2.weight)


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5, 2**64 - 1])
@pytest.mark.parametrize("epoch", [0, 1, 7])
@pytest.mark.parametrize("n", [1, 2, 17, 100])
def test_epoch_permutation_matches_documented_shuffle(seed, epoch, n):
    perm = np.empty(n, dtype=np.int64)
    cpu.epoch_permutation(np.uint64(seed), epoch, perm)
    np.testing.assert_array_equal(perm, naive.epoch_permutation(seed, epoch, n))
    assert sorted(perm.tolist()) == list(range(n))


def test_epoch_permutations_differ_between_epochs_and_seeds():
    perms = set()
    for seed, epoch in itertools.product([1, 2], [0, 1, 2]):
        perm = np.empty(50, dtype=np.int64)
        cpu.epoch_permutation(np.uint64(seed), epoch, perm)
        perms.add(tuple(perm))
    assert len(perms) == 6


def test_all_finite_kernel_finds_each_kind_of_bad_value():
    a = np.random.default_rng(0).standard_normal(1001)
    assert cpu.all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[-1] = bad
        assert not cpu.all_finite(b)
