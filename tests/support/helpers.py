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


def assert_sums_close(got, ref, magnitude, dtype, rounding=0.0):
    """Check a sum over many rows against its float64 reference.

    ``magnitude`` is the sum of the terms' absolute values (the same sum with
    every term made positive): rounding error grows with it, not with the
    result, which may be small after cancellation.  float32 data allows
    1e-5 of it (products rounded to float32, runs of up to 64 terms summed in
    float32, the rest in float64); float64 allows 1e-12.  ``rounding`` adds
    any error made after the sum (e.g. storing a weight in float32).
    """
    rel = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    err = np.abs(np.asarray(got, dtype=np.float64) - ref)
    bound = rel * magnitude + rounding + 1e-30
    assert np.all(err <= bound), (
        f"max error {err.max():.3g} exceeds {rel:g} of the terms' magnitude (worst ratio {(err / bound).max():.3g})"
    )
