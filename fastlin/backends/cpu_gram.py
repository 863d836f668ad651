"""CPU kernels (``@njit``) for the Gram sums behind the exact solve.

One read of X and T gives, in float64, every sum a least-squares solve
needs (:func:`fastlin.backends.cpu_ops.gram_sums` allocates and calls)::

    Z = [x − x_ref, 1, t − t_ref]          (one row, width P = D + 1 + O)
    S = Σ_rows w · Zᵀ·Z                     (P, P)

so ``S`` holds ``Σ w·x'x'ᵀ``, ``Σ w·x'``, ``Σ w``, ``Σ w·x't'ᵀ``, ``Σ w·t'``
and, on its diagonal, ``Σ w·t'²`` (the rest of the ``t'·t'ᵀ`` block is not
computed).  ``w`` is 1 without sample weights.

Why the shift
    Columns with a large offset (timestamps near 1e9 with a spread of 1e4)
    would make ``Σ x²`` about 1e8 times larger than the variance it has to
    carry, and float64 would lose those 8 digits.  Subtracting a fixed
    reference row (the first row of X and T) inside the kernel keeps every
    sum at the scale of the data's spread, and the solve works in the shifted
    coordinates (:mod:`fastlin._solve`), so nothing large is ever subtracted.
    X itself is never copied or modified.

Arithmetic
    Each row block is converted to float64 (and shifted) into a small
    transposed scratch ``Zt`` (P_pad, BLOCK_ROWS): the products of float32
    values are then exact, and the inner loops are dot products of two
    contiguous float64 vectors, which LLVM vectorises (``reassoc``).  Tiles of
    4 × 2 entries of ``S`` are accumulated at once, so six loads of ``Zt``
    feed eight multiply-adds.

Determinism
    Rows are split into fixed chunks (chosen from the shape alone); each
    chunk writes its own partial ``S``, and the partials are added in chunk
    order, so the result is bit-identical for any number of threads.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from .._jit import kernel, kernel_pair

# P is padded to a multiple of TILE (the row count of a tile of S).
TILE = 4
# Rows converted into the float64 scratch at a time.  The dot products run
# over BLOCK_ROWS values, and the scratch of one chunk (P_pad · BLOCK_ROWS
# doubles, twice with sample weights) stays in L1/L2.
BLOCK_ROWS = 128


class GramSums(NamedTuple):
    """Float64 sums over the rows of (X, T), shifted by a reference row.

    With ``x' = x − x_ref`` and ``t' = t − t_ref`` (per column) and ``w`` the
    sample weight (1 without weights):

    Attributes
    ----------
    xx : ndarray (D, D)     Σ w·x'x'ᵀ
    xt : ndarray (D, O)     Σ w·x't'ᵀ
    sx : ndarray (D,)       Σ w·x'
    st : ndarray (O,)       Σ w·t'
    tt : ndarray (O,)       Σ w·t'²  (per output)
    sw : float              Σ w
    n_rows : int            rows summed (zero-weight rows included)
    x_ref : ndarray (D,)    the reference row of X (float64)
    t_ref : ndarray (O,)    the reference row of T (float64)
    """

    xx: np.ndarray
    xt: np.ndarray
    sx: np.ndarray
    st: np.ndarray
    tt: np.ndarray
    sw: float
    n_rows: int
    x_ref: np.ndarray
    t_ref: np.ndarray


def padded_width(n_in, n_out):
    """P = D + 1 + O rounded up to a multiple of TILE."""
    p = n_in + 1 + n_out
    return -(-p // TILE) * TILE


@kernel
def _fill(X, T, w, use_w, x_ref, t_ref, lo, hi, Zt, Zw):
    """Rows lo..hi of [x − x_ref, 1, t − t_ref] in float64, transposed into
    ``Zt[:, 0:hi-lo]``; ``Zw`` gets the same times the row weights."""
    n_in = X.shape[1]
    n_out = T.shape[1]
    m = hi - lo
    # Four rows at a time: each X row is read contiguously, and the writes
    # (strided in Zt) go to four neighbouring doubles of each Zt row.
    full = m - m % 4
    for ii in range(0, full, 4):
        i = lo + ii
        for d in range(n_in):
            r = x_ref[d]
            Zt[d, ii] = np.float64(X[i, d]) - r
            Zt[d, ii + 1] = np.float64(X[i + 1, d]) - r
            Zt[d, ii + 2] = np.float64(X[i + 2, d]) - r
            Zt[d, ii + 3] = np.float64(X[i + 3, d]) - r
    for ii in range(full, m):
        for d in range(n_in):
            Zt[d, ii] = np.float64(X[lo + ii, d]) - x_ref[d]
    for ii in range(m):
        Zt[n_in, ii] = 1.0
        for o in range(n_out):
            Zt[n_in + 1 + o, ii] = np.float64(T[lo + ii, o]) - t_ref[o]
    if use_w:
        p = n_in + 1 + n_out
        for q in range(p):
            for ii in range(hi - lo):
                Zw[q, ii] = Zt[q, ii] * w[lo + ii]


@kernel(inline=True)
def _tile(A, B, j, k, m, S):
    """``S[j:j+4, k:k+2] += A[j:j+4, :m] · B[k:k+2, :m]ᵀ`` (8 dot products).

    4 × 2 measured fastest on Zen 3 (AVX2): 8 vector accumulators and 6
    loads fit the 16 registers; 4 × 4 spills, 2 × 2 loads too much.
    Inlined into its caller: a call per tile (about 130 cycles of work)
    cost ~15% of the whole pass (measured, 1,000,000 × 50, one thread).
    """
    s00 = s01 = s10 = s11 = 0.0
    s20 = s21 = s30 = s31 = 0.0
    a0 = A[j]
    a1 = A[j + 1]
    a2 = A[j + 2]
    a3 = A[j + 3]
    b0 = B[k]
    b1 = B[k + 1]
    for i in range(m):
        x0 = a0[i]
        x1 = a1[i]
        x2 = a2[i]
        x3 = a3[i]
        y0 = b0[i]
        y1 = b1[i]
        s00 += x0 * y0
        s01 += x0 * y1
        s10 += x1 * y0
        s11 += x1 * y1
        s20 += x2 * y0
        s21 += x2 * y1
        s30 += x3 * y0
        s31 += x3 * y1
    S[j, k] += s00
    S[j, k + 1] += s01
    S[j + 1, k] += s10
    S[j + 1, k + 1] += s11
    S[j + 2, k] += s20
    S[j + 2, k + 1] += s21
    S[j + 3, k] += s30
    S[j + 3, k + 1] += s31


@kernel
def _chunk_sums(X, T, w, use_w, x_ref, t_ref, lo, hi, Zt, Zw, S):
    """``S = Σ w·ZᵀZ`` over rows lo..hi (upper tiles only; see the module doc)."""
    n_in = X.shape[1]
    p_pad = S.shape[0]
    # The t'·t'ᵀ block is needed on its diagonal only: tile rows that start at
    # or after the first t column are computed on the diagonal, no further.
    t_tiles = -(-(n_in + 1) // TILE)
    for a in range(p_pad):
        for b in range(p_pad):
            S[a, b] = 0.0
    A = Zw if use_w else Zt
    block = Zt.shape[1]
    for start in range(lo, hi, block):
        stop = min(start + block, hi)
        _fill(X, T, w, use_w, x_ref, t_ref, start, stop, Zt, Zw)
        m = stop - start
        for tj in range(p_pad // TILE):
            j = tj * TILE
            last = p_pad if tj < t_tiles else j + TILE
            # 4-row tiles by 2-column tiles from the diagonal on (the entries
            # below the diagonal that the first ones cover are ignored)
            for k in range(j, last, 2):
                _tile(A, Zt, j, k, m, S)


def _gram(X, T, w, use_w, x_ref, t_ref, chunk_rows, Zt, Zw, partial, S):
    """Chunked ``S = Σ w·ZᵀZ``: chunk c writes ``partial[c]``, then the
    partials are added into ``S`` in chunk order (upper triangle, mirrored).

    Zt, Zw (C, P_pad, block) float64 scratch, zero-filled (Zw unused
    without weights), ``block`` the rows converted at a time;
    partial (C, P_pad, P_pad); S (P_pad, P_pad).
    """
    n_rows = X.shape[0]
    n_chunks = partial.shape[0]
    p_pad = S.shape[0]
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n_rows)
        _chunk_sums(X, T, w, use_w, x_ref, t_ref, lo, hi, Zt[c], Zw[c], partial[c])
    for a in range(p_pad):
        for b in range(p_pad):
            S[a, b] = 0.0
    for c in range(n_chunks):
        for a in range(p_pad):
            for b in range(a, p_pad):
                S[a, b] += partial[c, a, b]
    for a in range(p_pad):
        for b in range(a + 1, p_pad):
            S[b, a] = S[a, b]


gram, gram_parallel = kernel_pair(_gram)
