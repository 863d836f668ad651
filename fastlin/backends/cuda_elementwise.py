"""Small CUDA kernels over 1-D grids: gradient reduction, the input
gradient, sums of squares, the finiteness scan and dtype-converting copies.

Accuracy: every sum in float64, rounded once on store.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .cuda_config import CACHE, TPB
from .cuda_device import _block_sum, _store


@cuda.jit(cache=CACHE)
def reduce_grad(part, n_parts, scale, dW, db):
    """``dW[o, d] = scale · Σ_s part[s, o·D + d]`` and ``db[o] = scale · Σ_s
    part[s, O·D + o]`` (sums in split order, float64), rounded into dW, db.
    1-D grid over E."""
    n_out, n_in = dW.shape
    od = n_out * n_in
    n_el = od + n_out
    e = cuda.grid(1)
    if e < n_el:
        s = 0.0
        for c in range(n_parts):
            s += part[c * n_el + e]
        _store(dW, db, e, od, n_in, scale * s)


@cuda.jit(cache=CACHE)
def backward(dY, W, dX):
    """``dX = dY·W`` (N, D), float64 sums over O in order.  1-D grid over
    N·D; consecutive threads take consecutive d, so W reads coalesce.
    (``dW = dYᵀX`` and ``db = Σ dY`` come from :func:`grad_partials`.)"""
    n_rows, n_in = dX.shape
    n_out = W.shape[0]
    idx = cuda.grid(1)
    if idx < n_rows * n_in:
        i = idx // n_in
        d = idx - i * n_in
        s = 0.0
        for o in range(n_out):
            s += np.float64(dY[i, o]) * np.float64(W[o, d])
        dX[i, d] = s


@cuda.jit(cache=CACHE)
def sse(P, T, loss_p):
    """Partial sums of ``(P − T)²`` for (N, O) arrays: block ``c`` of the 1-D
    grid sums a grid-stride share of the elements into ``loss_p[c]``."""
    red = cuda.shared.array(TPB, np.float64)
    n_out = P.shape[1]
    total = P.shape[0] * n_out
    s = 0.0
    for idx in range(cuda.grid(1), total, cuda.gridsize(1)):
        i = idx // n_out
        o = idx - i * n_out
        r = np.float64(P[i, o]) - np.float64(T[i, o])
        s += r * r
    block = _block_sum(s, red, TPB)
    if cuda.threadIdx.x == 0:
        loss_p[cuda.blockIdx.x] = block


@cuda.jit(cache=CACHE)
def all_finite(a, flag):
    """Set ``flag[0] = 1`` if the 1-D array ``a`` holds NaN or Inf (flag is
    cleared by the caller; concurrent writers all write 1)."""
    for idx in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        if not math.isfinite(a[idx]):
            flag[0] = 1


@cuda.jit(cache=CACHE)
def cast_copy_1d(src, dst):
    """``dst[i] = src[i]`` with a dtype conversion; ``src`` may be strided."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit(cache=CACHE)
def cast_copy_2d(src, dst):
    """``dst[i, j] = src[i, j]`` with a dtype conversion; ``src`` may be
    strided or Fortran-ordered, ``dst`` is C-contiguous."""
    n_cols = dst.shape[1]
    for idx in range(cuda.grid(1), dst.shape[0] * n_cols, cuda.gridsize(1)):
        i = idx // n_cols
        j = idx - i * n_cols
        dst[i, j] = src[i, j]
