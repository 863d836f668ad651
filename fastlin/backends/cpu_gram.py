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

Arithmetic, float64 data
    Each row block is converted to float64 (and shifted) into a small
    transposed scratch ``Zt`` (P_pad, BLOCK_ROWS): the inner loops are dot
    products of two contiguous float64 vectors, which LLVM vectorises
    (``reassoc``).  Tiles of 4 × 2 entries of ``S`` are accumulated at once,
    so six loads of ``Zt`` feed eight multiply-adds.

Arithmetic, float32 data (X and T both float32)
    The products are formed in float32 over runs of at most ``RUN_ROWS`` (64)
    rows and each run's sums go into the float64 ``S`` -- the rule the
    gradient kernels follow (products in the data's dtype over at most 64
    rows, ``cpu.FLUSH_ROWS``; every long sum in float64).  A run is shifted into a row-major float32
    scratch ``Z`` (RUN_ROWS, P + padding; one float32 subtraction per value),
    and tiles of 6 × 16 entries of ``S`` are summed over its rows in twelve
    8-lane vector registers (two vector loads of ``Z``, six broadcasts and
    twelve fused multiply-adds per row; ``_tile32``), from the diagonal on.
    The shift goes eight values at a time (``_fill32``); each tile's float64
    sums sit in a packed store, tile after tile in the order they run, so a
    run's flush walks memory in order (``_chunk_sums32``); and the next run's
    rows of X are prefetched while a run's tiles compute.
    Within a chunk the shift is by the chunk's own reference (the mean of
    its first run, rounded to float32: values near the chunk's centre make
    the smallest products, hence the smallest rounding errors), and the
    chunk's float64 sums are then moved to (x_ref, t_ref) exactly as
    :func:`fastlin._solve.shift_sums` does.  Large offsets still cannot
    cancel: values near 1e9 with a spread of 1e4 are shifted by a float32
    reference of the same size, exactly (Sterbenz), before any product.

    What it costs.  Each entry of ``S`` is within
    ``(RUN_ROWS + 4)·2⁻²⁴·Σ w·(|z| + |δ|)(|z| + |δ|)ᵀ`` (plus float64
    rounding) of the exact sum, z the values about the chunk's reference and
    δ that reference's distance to (x_ref, t_ref): the worst case, ~4e-6 of
    the sum of absolute products.  Measured (tests/test_solve.py; make_regression
    data, float64 numpy reference of the same shifted sums): the largest
    error was 2e-8 to 6e-8 of the largest entry of ``S`` on a few hundred to
    a thousand rows, 3e-9 at 100,000 rows and 6e-10 at 1,000,000 (rounding
    errors of different runs partly cancel), and the largest per-entry error
    below 2e-7 of its ``Σ|w·z zᵀ|``.  Float32 data with a large offset sits
    on a coarse grid (spacing 2⁻¹⁰ near 1e4), and there the rounding errors
    of the runs do not cancel: 2.9e-7 of the largest ``Σx'²`` on 2,000 rows
    (offset 1e4, spread 1), the weights 3.5e-7 and the bias 5.5e-5 from the
    float64-product answer (the bias carries the weights' error times the
    offset; predictions stay within 5e-7).  The solution on ordinary data does not notice (weights
    within 1e-7 of float64 ``lstsq``; scikit-learn's Ridge, whose XᵀX is a
    float32 SGEMM, is at 1e-5), but a training loss computed from the sums
    (``_solve.layer_loss``: ``Σt'² − θᵀg``, a difference of two numbers about
    1/(1 − R²) times larger than it) carries an absolute error of about
    1e-8 (large N) to 1e-7 (small N) times ``Σ w·t'²/Σw``, where float64
    products gave 1e-16.

    Safe range.  A chunk with a nonzero shifted (or weighted) value outside
    [2⁻⁶⁰, 2⁶⁰] in magnitude, an infinity, or a positive weight outside
    [2⁻⁶⁰, 2⁶⁰] is summed by the float64 kernels instead (``_fill32`` tests
    every value; float32 products of such values could overflow, or lose
    digits to underflow).  NaN makes the sums NaN on either path (the
    8-lane shift sends its chunk to float64, the scalar one does not test
    for it); the callers reject NaN or look for it when the sums are not
    finite.

Determinism
    Rows are split into fixed chunks (chosen from the shape and dtype alone);
    each chunk writes its own partial ``S`` (its run boundaries, reference and
    float32-or-float64 choice depend on its rows only), and the partials are
    added in chunk order, so the result is bit-identical for any number of
    threads.  No BLAS is called.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import prange

from .._jit import kernel, kernel_pair
from ._simd import (
    LANES,
    prefetch,
    vaddto8,
    vany8,
    vbroadcast8,
    vload8,
    vload8_first,
    vmask8,
    vmuladd8,
    voutside8,
    vstore8,
    vsub8,
    vzeros8,
)

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


# --------------------------------------------------------------------------
# float32 data: float32 products over runs of RUN_ROWS rows, float64 sums
# --------------------------------------------------------------------------
# Rows whose float32 products are summed in float32 before they go into the
# float64 sums (as cpu.FLUSH_ROWS).  128 was 4% faster at 100,000 × 200 and
# the same at 1,000,000 × 50 (one thread, measured), but on float32 data with
# a large offset (values on a coarse grid, whose rounding errors do not
# average out) its sums were less accurate: 4.2e-7 against 2.9e-7 of the
# largest Σx'² (2,000 rows, offset 1e4, spread 1).
RUN_ROWS = 64
# The fewest rows of a float32-path chunk (cpu_ops.plan_gram_chunks): each
# chunk costs O(P²) once (its reference shift, zeroing, its partial's share
# of the reduction).  At 100,000 × 200, 16 chunks of 6,272 rows took 0.86-0.92
# of the time of 63 chunks of 1,600 (median of per-round ratios, 1 and 2
# threads; 8 chunks 0.90-0.93, 32 chunks 0.99-1.04; 2026-12-01).
CHUNK_MIN_ROWS = 4096
# A tile of S is TILE_ROWS rows by TILE_COLS columns: two 8-lane vectors per
# row, twelve accumulators in all.
TILE_ROWS = 6
TILE_COLS = 16
# Shifted values (and weighted ones) within [2**-RANGE_EXP, 2**RANGE_EXP] in
# magnitude, or zero, keep every float32 product and run sum a normal float
# (RUN_ROWS · 2**(2·RANGE_EXP) < float32's largest, 2**(-2·RANGE_EXP) above
# its smallest normal).  A chunk with any value outside is summed in float64.
RANGE_EXP = 60
_RANGE_HI = np.float32(2.0**RANGE_EXP)
_RANGE_LO = np.float32(2.0**-RANGE_EXP)
# Sample weights within [2**-WEIGHT_EXP, 2**WEIGHT_EXP] (or zero) keep a
# weighted value of the safe range from rounding to zero in float32.
WEIGHT_EXP = 60
# Values of X between two prefetches of the next run (one 64-byte line of float32).
PREFETCH_STEP = 16


def padded_shape32(n_in, n_out):
    """``(rows, cols)`` of a float32-path partial ``S`` (and ``cols``, the
    width of its scratch): P rounded up to a multiple of TILE_ROWS, and P
    rounded up to a multiple of 8 plus TILE_COLS (a row of tiles starts on the
    diagonal, so the last one may reach TILE_COLS − 1 columns past P)."""
    p = n_in + 1 + n_out
    return -(-p // TILE_ROWS) * TILE_ROWS, -(-p // 8) * 8 + TILE_COLS


@kernel
def _fill32(X, T, w, use_w, x_ref, t_ref, lo, hi, Z, Zw):
    """Rows lo..hi of ``[x − x_ref, 1, t − t_ref]`` into ``Z[0:hi-lo]``
    (float32, one rounding: X and the reference are float32); ``Zw`` the same
    times the row weights (rounded once more).  Returns True when a nonzero
    value of either, or a positive weight, is outside the safe range
    (RANGE_EXP, WEIGHT_EXP; infinities and NaN included).

    Without weights, and where X's rows are contiguous, the columns of X go
    eight at a time (``_simd``: a vector subtraction, a store and a lane mask
    of the range test, reduced once per call); the values are the same as
    ``_fill32_scalar``'s, bit for bit (one float32 subtraction each).  The
    scalar loop's OR of comparisons did not vectorise well: it took 39 ms of
    a one-thread 1,000,000 × 50 pass whose tiles took 48 (measured).
    """
    n_in = X.shape[1]
    if use_w or X.strides[1] != X.itemsize:
        return _fill32_scalar(X, T, w, use_w, x_ref, t_ref, lo, hi, Z, Zw)
    n_out = T.shape[1]
    xr = x_ref.reshape((1, n_in))
    vec = n_in - n_in % LANES
    rest = n_in - vec
    mask = vmask8(Z)
    bad = False
    for ii in range(hi - lo):
        i = lo + ii
        for d in range(0, vec, LANES):
            v = vsub8(vload8(X, i, d), vload8(xr, 0, d))
            vstore8(Z, ii, d, v)
            mask = voutside8(mask, v, _RANGE_LO, _RANGE_HI)
        if rest:
            # the row's last columns, zeros after them (written into Z's
            # padding, which must read zero, or overwritten just below)
            v = vsub8(vload8_first(X, i, vec, rest), vload8_first(xr, 0, vec, rest))
            vstore8(Z, ii, vec, v)
            mask = voutside8(mask, v, _RANGE_LO, _RANGE_HI)
        Z[ii, n_in] = 1.0
        for o in range(n_out):
            v = T[i, o] - t_ref[o]
            Z[ii, n_in + 1 + o] = v
            a = abs(v)
            bad |= (not (a <= _RANGE_HI)) | ((a < _RANGE_LO) & (a > 0.0))
    return bad | vany8(mask)


@kernel
def _fill32_scalar(X, T, w, use_w, x_ref, t_ref, lo, hi, Z, Zw):
    """``_fill32`` one value at a time (any strides, sample weights)."""
    n_in = X.shape[1]
    n_out = T.shape[1]
    p = n_in + 1 + n_out
    bad = False
    # The range test is an OR-reduction of comparisons, which vectorises (a
    # float max would not without no-NaN fast math).  NaN fails every
    # comparison; the callers reject NaN input before the pass.
    for ii in range(hi - lo):
        i = lo + ii
        for d in range(n_in):
            v = X[i, d] - x_ref[d]
            Z[ii, d] = v
            a = abs(v)
            bad |= (a > _RANGE_HI) | ((a < _RANGE_LO) & (a > 0.0))
        Z[ii, n_in] = 1.0
        for o in range(n_out):
            v = T[i, o] - t_ref[o]
            Z[ii, n_in + 1 + o] = v
            a = abs(v)
            bad |= (a > _RANGE_HI) | ((a < _RANGE_LO) & (a > 0.0))
        if use_w:
            wi = w[i]
            bad |= wi > 0.0 and (wi < 2.0**-WEIGHT_EXP or wi > 2.0**WEIGHT_EXP)
            for q in range(p):
                v = np.float32(wi * np.float64(Z[ii, q]))
                Zw[ii, q] = v
                a = abs(v)
                bad |= (a > _RANGE_HI) | ((a < _RANGE_LO) & (a > 0.0))
    return bad


@kernel(inline=True)
def _tile32(A, B, j, k, m, S, si):
    """``S[si:si+6, 0:16] += A[:m, j:j+6]ᵀ · B[:m, k:k+16]`` (float32 sums
    over the m rows, added to the float64 S once; S holds one tile per six
    rows, ``_tile_plan``).

    Each row costs two vector loads of B, six broadcasts of A and twelve
    multiply-adds; the twelve accumulators, the two loads and one broadcast
    fill the sixteen AVX2 registers.
    """
    a0 = a1 = a2 = a3 = a4 = a5 = vzeros8(B)
    c0 = c1 = c2 = c3 = c4 = c5 = vzeros8(B)
    for i in range(m):
        xa = vload8(B, i, k)
        xc = vload8(B, i, k + 8)
        r = vbroadcast8(A, i, j)
        a0 = vmuladd8(a0, r, xa)
        c0 = vmuladd8(c0, r, xc)
        r = vbroadcast8(A, i, j + 1)
        a1 = vmuladd8(a1, r, xa)
        c1 = vmuladd8(c1, r, xc)
        r = vbroadcast8(A, i, j + 2)
        a2 = vmuladd8(a2, r, xa)
        c2 = vmuladd8(c2, r, xc)
        r = vbroadcast8(A, i, j + 3)
        a3 = vmuladd8(a3, r, xa)
        c3 = vmuladd8(c3, r, xc)
        r = vbroadcast8(A, i, j + 4)
        a4 = vmuladd8(a4, r, xa)
        c4 = vmuladd8(c4, r, xc)
        r = vbroadcast8(A, i, j + 5)
        a5 = vmuladd8(a5, r, xa)
        c5 = vmuladd8(c5, r, xc)
    vaddto8(S, si, 0, a0)
    vaddto8(S, si, 8, c0)
    vaddto8(S, si + 1, 0, a1)
    vaddto8(S, si + 1, 8, c1)
    vaddto8(S, si + 2, 0, a2)
    vaddto8(S, si + 2, 8, c2)
    vaddto8(S, si + 3, 0, a3)
    vaddto8(S, si + 3, 8, c3)
    vaddto8(S, si + 4, 0, a4)
    vaddto8(S, si + 4, 8, c4)
    vaddto8(S, si + 5, 0, a5)
    vaddto8(S, si + 5, 8, c5)


@kernel(inline=True)
def _tile32_narrow(A, B, j, k, m, S, si):
    """``S[si:si+6, 0:8] += A[:m, j:j+6]ᵀ · B[:m, k:k+8]``: the last tile of
    a row of tiles when at most 8 columns are left (half the work of
    ``_tile32``, which would compute 8 columns past the end)."""
    a0 = a1 = a2 = a3 = a4 = a5 = vzeros8(B)
    for i in range(m):
        xa = vload8(B, i, k)
        a0 = vmuladd8(a0, vbroadcast8(A, i, j), xa)
        a1 = vmuladd8(a1, vbroadcast8(A, i, j + 1), xa)
        a2 = vmuladd8(a2, vbroadcast8(A, i, j + 2), xa)
        a3 = vmuladd8(a3, vbroadcast8(A, i, j + 3), xa)
        a4 = vmuladd8(a4, vbroadcast8(A, i, j + 4), xa)
        a5 = vmuladd8(a5, vbroadcast8(A, i, j + 5), xa)
    vaddto8(S, si, 0, a0)
    vaddto8(S, si + 1, 0, a1)
    vaddto8(S, si + 2, 0, a2)
    vaddto8(S, si + 3, 0, a3)
    vaddto8(S, si + 4, 0, a4)
    vaddto8(S, si + 5, 0, a5)


@kernel
def _local_reference(X, T, lo, hi, xr, tr):
    """``xr``, ``tr``: the mean of rows lo..hi of X and T (in float64),
    rounded to float32."""
    m = hi - lo
    for d in range(X.shape[1]):
        acc = 0.0
        for i in range(lo, hi):
            acc += np.float64(X[i, d])
        xr[d] = np.float32(acc / m)
    for o in range(T.shape[1]):
        acc = 0.0
        for i in range(lo, hi):
            acc += np.float64(T[i, o])
        tr[o] = np.float32(acc / m)


@kernel
def _tile_plan(p, t_start):
    """The tiles of a ``p`` × ``p`` upper triangle, in the order they are
    summed: an (n, 3) array of (first row j, first column k, width 16 or 8).

    Rows go in blocks of TILE_ROWS; a block's tiles start on its diagonal
    (the entries below it that the first one covers are ignored) and the
    last is 8 wide when at most 8 columns are left; blocks from the t'
    columns on need their diagonal only.
    """
    n = 0
    for j in range(0, p, TILE_ROWS):
        last = p if j < t_start else j + 1
        n += -(-(last - j) // TILE_COLS)
    plan = np.empty((n, 3), dtype=np.int64)
    n = 0
    for j in range(0, p, TILE_ROWS):
        last = p if j < t_start else j + 1
        for k in range(j, last, TILE_COLS):
            plan[n, 0] = j
            plan[n, 1] = k
            plan[n, 2] = TILE_COLS // 2 if last - k <= TILE_COLS // 2 else TILE_COLS
            n += 1
    return plan


@kernel
def _chunk_sums32(X, T, w, use_w, x_ref, t_ref, lo, hi, Z, Zw, plan, partial):
    """The tiles of ``Σ w·ZᵀZ`` over rows lo..hi for float32 X, T, about
    (x_ref, t_ref), packed into the memory of ``partial`` (``_packed_view``):
    tile ``t`` of ``plan`` (``_tile_plan``) in rows ``6t .. 6t+5`` of the
    (n_tiles · 6, 16) view.

    The float32 products are formed about the chunk's own reference (the
    mean of its first run, rounded to float32: products of values near the
    chunk's centre carry the smallest rounding errors), and the float64 sums
    are then moved to (x_ref, t_ref) exactly as ``_solve.shift_sums`` does.
    In float64 throughout (``_chunk_sums``) when a value is out of float32's
    safe range.

    Memory.  Each run adds every tile into float64 sums, so those are read
    and written once a run: they are kept tile after tile in the order the
    tiles run (6 × 16 doubles each, about half the size of a square ``S``:
    180 KB at D = 200, which stays in L2 beside the run's scratch).  While
    one run's tiles compute, the next run's rows of X are prefetched, a share
    before each tile, for the read of X to overlap the arithmetic.  Neither
    showed a gain beyond the spread on the 2-core Zen 3 VM under load
    (2026-12-01: one thread, 1M × 50 and 100k × 200, within ±5%; bench/RESULTS.md).
    Measured again later that day at 1 and 2 threads, 1M × 50: no prefetch,
    or prefetching the run after next, took the same time as this (within
    the ±10% spread); all of the next run at the start of a run was 1.7×
    slower at one thread.
    """
    n_in = X.shape[1]
    n_out = T.shape[1]
    p = n_in + 1 + n_out
    n_tiles = plan.shape[0]
    packed = _packed_view(partial, n_tiles)
    packed[:, :] = 0.0
    A = Zw if use_w else Z
    run = Z.shape[0]
    xr = np.empty(n_in, dtype=np.float32)
    tr = np.empty(n_out, dtype=np.float32)
    _local_reference(X, T, lo, min(lo + run, hi), xr, tr)
    for start in range(lo, hi, run):
        stop = min(start + run, hi)
        if _fill32(X, T, w, use_w, xr, tr, start, stop, Z, Zw):
            _chunk_sums64(X, T, w, use_w, x_ref, t_ref, lo, hi, plan, packed)
            return
        m = stop - start
        # the next run's rows of X: contiguous in memory when X is C-ordered
        # (else the hints go elsewhere, harmlessly); one line more, as the
        # run need not start on a line
        ahead = min(hi, stop + run) - stop
        last_value = ahead * n_in - 1
        lines = -(-(ahead * n_in) // PREFETCH_STEP) + 1 if ahead > 0 else 0
        per_tile = -(-lines // n_tiles)
        line = 0
        for t in range(n_tiles):
            for _ in range(per_tile):
                if line < lines:
                    f = min(line * PREFETCH_STEP, last_value)
                    prefetch(X, stop + f // n_in, f % n_in)
                    line += 1
            if plan[t, 2] == TILE_COLS:
                _tile32(A, Z, plan[t, 0], plan[t, 1], m, packed, t * TILE_ROWS)
            else:
                _tile32_narrow(A, Z, plan[t, 0], plan[t, 1], m, packed, t * TILE_ROWS)
    delta = np.zeros(p)
    for d in range(n_in):
        delta[d] = np.float64(xr[d]) - x_ref[d]
    for o in range(n_out):
        delta[n_in + 1 + o] = np.float64(tr[o]) - t_ref[o]
    _shift_packed(packed, plan, n_in, n_out, delta)


@kernel
def _chunk_sums64(X, T, w, use_w, x_ref, t_ref, lo, hi, plan, packed):
    """The float64 path for one chunk of float32 data, into the float32
    path's packed tiles: scratch of its own, then copied (upper part)."""
    p_pad = -(-(X.shape[1] + 1 + T.shape[1]) // TILE) * TILE
    block = BLOCK_ROWS
    Zt = np.zeros((p_pad, block))
    Zw = np.zeros((p_pad, block) if use_w else (0, 0))
    S64 = np.empty((p_pad, p_pad))
    _chunk_sums(X, T, w, use_w, x_ref, t_ref, lo, hi, Zt, Zw, S64)
    p = X.shape[1] + 1 + T.shape[1]
    packed[:, :] = 0.0
    for t in range(plan.shape[0]):
        for r in range(TILE_ROWS):
            a = plan[t, 0] + r
            for c in range(plan[t, 2]):
                b = plan[t, 1] + c
                if a <= b < p:
                    packed[t * TILE_ROWS + r, c] = S64[a, b]


@kernel
def _shift_packed(packed, plan, n_in, n_out, delta):
    """The upper triangle of ``Σ w·zzᵀ`` (z = [x', 1, t'], as packed tiles)
    about another reference: z gains ``delta`` (0 at the ones column), so
    each entry gains ``δ·sᵀ + s·δᵀ + sw·δδᵀ`` with ``s`` the ones column and
    ``sw = Σw`` (as ``_solve.shift_sums``)."""
    p = n_in + 1 + n_out
    one = n_in
    n_tiles = plan.shape[0]
    s = np.zeros(p)
    for t in range(n_tiles):
        for r in range(TILE_ROWS):
            a = plan[t, 0] + r
            for c in range(plan[t, 2]):
                b = plan[t, 1] + c
                if a <= b < p:
                    if b == one:
                        s[a] = packed[t * TILE_ROWS + r, c]
                    elif a == one:
                        s[b] = packed[t * TILE_ROWS + r, c]
    sw = s[one]
    for t in range(n_tiles):
        for r in range(TILE_ROWS):
            a = plan[t, 0] + r
            if a >= p:
                break
            da = delta[a]
            for c in range(plan[t, 2]):
                b = plan[t, 1] + c
                if a <= b < p:
                    packed[t * TILE_ROWS + r, c] += da * s[b] + s[a] * delta[b] + sw * da * delta[b]


@kernel
def _packed_view(partial, n_tiles):
    """A chunk's packed tiles, in the first rows' memory of its partial
    (PR, PC): n_tiles · 6 · 16 doubles always fit (``padded_shape32``)."""
    return partial.reshape(-1)[: n_tiles * TILE_ROWS * TILE_COLS].reshape((n_tiles * TILE_ROWS, TILE_COLS))


def _gram32(X, T, w, use_w, x_ref, t_ref, chunk_rows, Z, Zw, partial, S):
    """As ``_gram`` for float32 X, T: chunk c writes its packed tiles into
    the memory of ``partial[c]`` (C, PR, PC) by ``_chunk_sums32``; Z, Zw
    (C, RUN, width) float32 scratch, zero-filled; the tiles are added in
    chunk order and S (P, P) gets their upper triangle, mirrored.

    Only the first half (about) of each partial's memory is touched: the
    packed tiles, not a square matrix.
    """
    n_rows, n_in = X.shape
    n_chunks = partial.shape[0]
    p = S.shape[0]
    plan = _tile_plan(p, n_in + 1)
    n_tiles = plan.shape[0]
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n_rows)
        _chunk_sums32(X, T, w, use_w, x_ref, t_ref, lo, hi, Z[c], Zw[c], plan, partial[c])
    total = np.zeros((n_tiles * TILE_ROWS, TILE_COLS))
    for c in range(n_chunks):
        packed = _packed_view(partial[c], n_tiles)
        for q in range(n_tiles * TILE_ROWS):
            for r in range(TILE_COLS):
                total[q, r] += packed[q, r]
    for a in range(p):
        for b in range(p):
            S[a, b] = 0.0
    for t in range(n_tiles):
        for r in range(TILE_ROWS):
            a = plan[t, 0] + r
            for c in range(plan[t, 2]):
                b = plan[t, 1] + c
                if a <= b < p:
                    S[a, b] = total[t * TILE_ROWS + r, c]
    for a in range(p):
        for b in range(a + 1, p):
            S[b, a] = S[a, b]


gram32, gram32_parallel = kernel_pair(_gram32)


# --------------------------------------------------------------------------
# the small triangular systems of the solve (fastlin._solve)
# --------------------------------------------------------------------------
@kernel
def solve_triangular(R, Q, lower, out):
    """``out = R⁻¹·Q`` for a triangular float64 R (n, n) with a nonzero
    diagonal, Q and out (n, m): substitution, row by row (forward when
    ``lower``, else backward), O(n²·m).

    numpy has no triangular solve; ``numpy.linalg.solve`` factors R again
    (O(n³)), and a QR of R costs more still: 0.5 and 1.3 ms at n = 200 where
    this takes well under 0.1 ms.  Only the triangle is read.
    """
    n = R.shape[0]
    for o in range(Q.shape[1]):
        for s in range(n):
            i = s if lower else n - 1 - s
            acc = Q[i, o]
            if lower:
                for k in range(i):
                    acc -= R[i, k] * out[k, o]
            else:
                for k in range(i + 1, n):
                    acc -= R[i, k] * out[k, o]
            out[i, o] = acc / R[i, i]
