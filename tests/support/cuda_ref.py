"""The CUDA tests' references and helpers: device arrays to the host,
tolerances, and adapters to the float64 references of :mod:`tests.support.naive`
(independent of both backends' kernels)."""

from __future__ import annotations

import numpy as np

from tests.support import naive


def to_host(a):
    """A device array (numba, simulator) or numpy array -> numpy."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def f64(a):
    return np.asarray(to_host(a), dtype=np.float64)


# The float64 references are tests.support.naive's, shared with the CPU suite;
# these adapters only bring device arrays to the host first.
def forward(X, W, b):
    return naive.forward(to_host(X), to_host(W), to_host(b))


def sse(P, T):
    return naive.mse(to_host(P), to_host(T), "sum")


def gradients(X, T, W, b, reduction="mean"):
    """(loss, dW, db) of the MSE loss, ``c = 2/(N·O)`` or 2."""
    return naive.mse_grad(to_host(X), to_host(T), to_host(W), to_host(b), reduction)


def backward(X, dY, W):
    return naive.backward(to_host(X), to_host(dY), to_host(W))


sgd = naive.sgd_update
epoch_permutation = naive.epoch_permutation


def fit(X, T, W, b, steps, *, shuffle=True, **kwargs):
    """``Linear.fit`` in float64 numpy (shuffling by default, as ``fit``
    does): returns (losses, W, b)."""
    return naive.fit(to_host(X), to_host(T), to_host(W), to_host(b), steps, shuffle=shuffle, **kwargs)


def tol(dtype):
    """(rtol, atol) for comparing a result of ``dtype`` data with float64 maths."""
    return (2e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-13)


def assert_close(actual, expected, dtype, scale=1.0):
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(f64(actual), f64(expected), rtol=rtol * scale, atol=atol * scale)
