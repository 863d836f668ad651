"""Test data and tolerances shared by the test modules."""

from __future__ import annotations

import numpy as np

# float32 results are compared with float64 references; sums are float64 in
# the kernels, so the error comes from rounding the inputs and outputs.
RTOL = {np.float32: 2e-5, np.float64: 1e-11}
ATOL = {np.float32: 2e-5, np.float64: 1e-11}


def tol(dtype):
    dtype = np.dtype(dtype).type
    return dict(rtol=RTOL[dtype], atol=ATOL[dtype])


def make_data(n, d, o, dtype=np.float64, seed=0, order="C"):
    """Random, never-zero data: X (n, d), T (n, o), W (o, d), b (o,)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype, order=order)
    T = rng.standard_normal((n, o)).astype(dtype, order=order)
    W = (rng.standard_normal((o, d)) / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return X, T, W, b
