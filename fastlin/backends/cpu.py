"""CPU kernels (``@njit``).  Kernels only: no validation, no allocation.

Every kernel writes into arrays it is given; :mod:`fastlin.backends.cpu_ops`
allocates them and picks the kernel.  The CUDA twins carry the same names.

Shapes and conventions
    ``X`` (N, D) inputs, ``T`` (N, O) targets, ``W`` (O, D) weight, ``b`` (O,)
    bias, all C-contiguous and of one float dtype (float32 or float64).  When
    the layer has no bias, ``b`` is a zero vector (so adding it changes
    nothing) and ``has_bias`` is False (so the update leaves it alone).
    Arguments come in the contract's order (:mod:`.protocol`): data,
    parameters, the optimiser's state (``slots_w``, ``slots_b``,
    ``counters``) and ``hyper``, settings (``reduce_sum``, ``limit``, the
    plan), scratch, outputs.

Accuracy: where each product and sum is formed
    * A prediction ``x·w`` over one row is a dot product in the data's dtype
      (as BLAS forms it): ``forward``, ``model_sse`` and the streaming
      kernels below.  Adding ``b`` and subtracting ``t``, the residual ``r``,
      its square and every sum of them (the loss, ``gb``) are float64.
    * The streaming kernels' weight gradient multiplies ``r`` rounded to the
      data's dtype by ``x`` in the data's dtype and sums those products over
      at most ``FLUSH_ROWS`` rows in the data's dtype, then in float64 (the
      last rows of a chunk add their products straight into float64).
    * ``backward`` forms ``dY·W`` and ``dYᵀ·X`` with float64 products and sums.
    * The GEMM path of :mod:`.cpu_ops` forms ``X·Wᵀ`` and ``Rᵀ·X`` in BLAS, in
      the data's dtype over a block of rows, and adds the blocks in float64.
    * Every update is float64 arithmetic (:mod:`.rules`), stored rounded to
      the data's dtype.
    Everything long -- the loss, the gradient sums over many rows, the
    reduction across chunks -- is float64: over 10^7 float32 rows the loss
    stays within 1e-6 of a float64 reference; a float32 accumulator drifts by
    ~10%.

Determinism
    Reductions over rows are split into fixed chunks of ``chunk_rows`` rows.
    Each chunk writes its own partial sums, and the partials are added in
    chunk order.  ``chunk_rows`` depends only on the problem's shape, so the
    result is bit-identical for any number of threads.

Work buffers
    Reductions take ``acc`` (C, O, D) in the data's dtype, each chunk's
    short-run gradient accumulator, and one flat float64 ``work`` array
    (fewer arguments means a cheaper call from Python).
    :func:`scratch_layout` is its one description -- its size for the
    allocation, its offsets for the kernels (:func:`_carve`)::

        [ gW (O·D) | gb (O) | loss_p (C) | gW_p (C·O·D) | gb_p (C·O) | WT (D·P) | R_p (C·FLUSH_ROWS·P) ]

    where C is the number of chunks: ``gW``/``gb`` hold a batch's gradient
    sums, the ``_p`` arrays each chunk's partial sums; the last two, read in
    the data's dtype, are the many-output kernel's: W transposed and
    zero-padded to P outputs (O rounded up to 8), and each chunk's residuals.

Streaming kernels (one read of X per step)
    ``_rows_partials`` picks, by the number of outputs O alone:

    * O < ``TILE_MIN_OUT``: ``_rows_partials_pairs``, dot products along D
      by groups of 4 rows and pairs of outputs (the tall case, O = 1);
    * from ``TILE_MIN_OUT`` outputs, float32: ``_rows_partials_tiled``,
      register tiles across outputs written with the vector intrinsics of
      :mod:`._simd` (Numba's loop vectorizer would turn each accumulator of
      a tile into a reduction over D and spill them).

    Both follow the accuracy rules above and give the same sums up to
    rounding.  Both prefetch every cache line of the rows they will read
    next (``_simd.prefetch``): ``PREFETCH_ROWS`` positions ahead in a
    shuffled mini-batch (``_prefetch_rows``), ``STREAM_AHEAD`` rows ahead
    otherwise (``_prefetch_block``).

The update
    ``hyper[0]`` (an :data:`.abi.HYPER` record) names the rule and its
    hyper-parameters; each step takes the learning rate
    ``rules.scheduled_lr(hp, counters[CNT_STEP])`` and sends every element
    of W and b, with its ``k`` slots (``slots_w`` (k, O, D), ``slots_b``
    (k, O); slot ``j`` only when ``j < k``), through
    ``rules.update_element``: torch's SGD (momentum, dampening, Nesterov,
    weight decay) or Adam/AdamW.  ``limit`` is the dtype's largest finite
    value: a new value beyond it is refused like a NaN.

Status codes and counters: see :mod:`fastlin.backends.abi`.
"""

from __future__ import annotations

import operator
from collections import namedtuple
from typing import NamedTuple

import numpy as np
from numba import prange, types
from numba.extending import intrinsic, overload

from .._jit import kernel, kernel_pair
from . import counters as _counters
from . import permute as _permute
from . import rules as _rules
from ._simd import (
    prefetch,
    vadd8,
    vaddto8,
    vbroadcast8,
    vload8,
    vmuladd8,
    vresidual8,
    vstore8,
    vsum8,
    vzeros8,
)
from .abi import (
    CNT_EPOCH,
    CNT_HAS_BUF,
    CNT_POS,
    CNT_STEP,
    HYPER,
    NONFINITE_LOSS,
    NONFINITE_UPDATE,
    OK,
    RULE_SGD,
)

# Rows processed together: each load of a weight and of an X element then
# feeds several multiply-adds, and the inner loops vectorise.
GROUP = 4
# Rows whose gradient contributions are summed in the data's dtype before
# they are added into the float64 sums (a multiple of GROUP).
FLUSH_ROWS = 64
# From TILE_MIN_OUT outputs the streaming kernel forms predictions in tiles of
# TILE_ROWS rows x OUT_TILE outputs held in registers: each step over d
# broadcasts X[i, d] and multiplies it by the vector WT[d, o0:o0+8] of a
# packed, transposed copy of W, so no dot product needs a horizontal sum.
TILE_ROWS = 8
OUT_TILE = 8
TILE_MIN_OUT = 7  # measured: bench/RESULTS.md, kernel log
# From this many outputs (and below TILE_MIN_OUT) the pair kernel sums its
# gradient in the register tiles of the tiled kernel (measured 1.05-1.2x for
# 4-6 outputs; 0.85-0.95x for 2, ~1.0x for 3).
TILE_GRADIENT_MIN_OUT = 4
# A shuffled batch asks for the row this many positions ahead while it works
# on the current one (its address is random, so no hardware prefetcher can
# guess it).  Measured on 1M x 64 float32 (bench/RESULTS.md, kernel log).
PREFETCH_ROWS = 16
# An unshuffled batch asks for the rows this far ahead: the hardware
# prefetchers alone left the reads and the arithmetic of a 64-row run one
# after the other (measured 1M x 64 -> 1, 8: 1.2-1.4x faster with it; 32 to
# 256 rows ahead all within the noise).
STREAM_AHEAD = 64


class ScratchLayout(NamedTuple):
    """Where each part of the flat float64 ``work`` buffer starts (see the module docstring).

    ``gb`` .. ``tiles`` are offsets in float64 elements (``gW`` starts at 0);
    the many-output kernel's part, from ``tiles`` to ``size``, is read in the
    data's dtype: ``WT`` (D, pad) first, then ``R_p`` from ``r_p`` (an offset
    in elements of the data's dtype, from ``tiles``).  ``pad`` is O rounded
    up to a multiple of ``OUT_TILE``; ``size`` is the buffer's length.
    """

    gb: int
    loss_p: int
    gW_p: int
    gb_p: int
    tiles: int
    r_p: int
    size: int
    pad: int


def scratch_layout(n_out, n_in, n_chunks):
    """The :class:`ScratchLayout` of the work buffer for ``n_chunks`` chunks.

    The one description of the buffer: :mod:`.cpu_ops` allocates
    ``scratch_layout(...).size`` elements, and the kernels carve it with the
    same function (compiled below as ``_layout``), through :func:`_carve`.
    The tile part counts one float64 slot per element of the data's dtype,
    which leaves float32 data room to spare.
    """
    od = n_out * n_in
    pad = (n_out + OUT_TILE - 1) // OUT_TILE * OUT_TILE
    loss_p = od + n_out
    gW_p = loss_p + n_chunks
    gb_p = gW_p + n_chunks * od
    tiles = gb_p + n_chunks * n_out
    r_p = n_in * pad
    size = tiles + r_p + n_chunks * FLUSH_ROWS * pad
    return ScratchLayout(od, loss_p, gW_p, gb_p, tiles, r_p, size, pad)


_layout = kernel(inline=True)(scratch_layout)


@kernel
def _carve(work, X, W, n_chunks):
    """``(gW, gb, loss_p, gW_p, gb_p, tiled, WT, R_p)``: the views of ``work``.

    ``gW`` (O, D) and ``gb`` (O,) hold a batch's float64 gradient sums,
    ``loss_p`` (C,), ``gW_p`` (C, O, D) and ``gb_p`` (C, O) each chunk's
    partial sums.  ``WT`` (D, P) for the packed weight and ``R_p``
    (C, FLUSH_ROWS, P) for each chunk's residuals are in X's dtype; they are
    there for float32 data with at least TILE_GRADIENT_MIN_OUT outputs, when
    ``work`` has room for them and X's rows are unit-stride (the vector loads
    assume so); otherwise they are empty.  With them, ``tiled`` from
    TILE_MIN_OUT outputs (the many-output kernel runs), and below that the
    pair kernel forms its gradient in register tiles.  float64 keeps the
    plain pair kernel: a tile of 8 float64 lanes takes two AVX2 registers,
    the tiles spill, and measured 0.7-0.8x its speed.
    """
    n_out, n_in = W.shape
    at = _layout(n_out, n_in, n_chunks)
    gW = work[0 : at.gb].reshape((n_out, n_in))
    gb = work[at.gb : at.loss_p]
    loss_p = work[at.loss_p : at.gW_p]
    gW_p = work[at.gW_p : at.gb_p].reshape((n_chunks, n_out, n_in))
    gb_p = work[at.gb_p : at.tiles].reshape((n_chunks, n_out))
    usable = (
        n_out >= TILE_GRADIENT_MIN_OUT and X.itemsize == 4 and work.shape[0] >= at.size and X.strides[1] == X.itemsize
    )
    tiled = usable and n_out >= TILE_MIN_OUT
    if usable:
        p, rows, chunks, r_p, end = at.pad, n_in, n_chunks, at.r_p, at.size - at.tiles
    else:
        p = rows = chunks = r_p = end = 0
    tail = work[at.tiles : at.tiles + end].view(X.dtype)
    WT = tail[0:r_p].reshape((rows, p))
    R_p = tail[r_p:end].reshape((chunks, FLUSH_ROWS, p))
    return gW, gb, loss_p, gW_p, gb_p, tiled, WT, R_p


@kernel
def all_finite(a):
    """True when no element of the 1-D array ``a`` is NaN or Inf (stops at the first)."""
    for i in range(a.shape[0]):
        if not np.isfinite(a[i]):
            return False
    return True


@kernel
def _dot(X, i, W, o):
    """``X[i]·W[o]`` in the data's dtype."""
    s = X.dtype.type(0.0)
    for d in range(X.shape[1]):
        s += X[i, d] * W[o, d]
    return s


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------
def _forward(X, W, b, Y):
    """``Y = X·Wᵀ + b`` row by row.  ``Y`` is (N, O)."""
    for i in prange(X.shape[0]):
        for o in range(W.shape[0]):
            Y[i, o] = np.float64(_dot(X, i, W, o)) + b[o]


forward, forward_parallel = kernel_pair(_forward)


# --------------------------------------------------------------------------
# MSE: loss and analytic gradient
# --------------------------------------------------------------------------
def _sse(P, T, chunk_rows, loss_p):
    """Sum of squared errors of (N, O) arrays, chunked; returns the sum."""
    n_rows, n_out = P.shape
    n_chunks = loss_p.shape[0]
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n_rows)
        s = 0.0
        for i in range(lo, hi):
            for o in range(n_out):
                r = np.float64(P[i, o]) - np.float64(T[i, o])
                s += r * r
        loss_p[c] = s
    total = 0.0
    for c in range(n_chunks):
        total += loss_p[c]
    return total


sse, sse_parallel = kernel_pair(_sse)


def _model_sse(X, T, W, b, chunk_rows, loss_p):
    """``Σ (X·Wᵀ + b − T)²`` without forming the (N, O) prediction."""
    n_rows = X.shape[0]
    n_chunks = loss_p.shape[0]
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n_rows)
        acc = 0.0
        for i in range(lo, hi):
            for o in range(W.shape[0]):
                r = np.float64(_dot(X, i, W, o)) + b[o] - T[i, o]
                acc += r * r
        loss_p[c] = acc
    total = 0.0
    for c in range(n_chunks):
        total += loss_p[c]
    return total


model_sse, model_sse_parallel = kernel_pair(_model_sse)


@intrinsic
def _unliteral(typingctx, value):
    """``value``, typed as a plain number or bool instead of a literal.

    A kernel that is not inlined is compiled once for every distinct set of
    argument types it is called with, and numba types a constant argument
    (``False``, ``0``, ``FLUSH_ROWS``) as a literal of that value: so the
    row kernels compiled twice, once for the full-batch step's constants and
    once for the variables of a fit, 3-5 s each (bench/RESULTS.md, fifth
    session).  Their scalar arguments pass through this first.
    """
    plain = types.unliteral(value)

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], plain)

    return plain(value), codegen


@kernel(inline=True)  # a separate function would be optimised once more, with both kernels in it
def _rows_partials(X, T, W, WT, b, rows, use_rows, start, lo, hi, gW, gb, acc, R, tiled):
    """Loss and gradient sums over batch rows ``lo..hi`` (one chunk).

    The many-output kernel when ``tiled`` (``WT`` packed by ``_pack_weight``,
    ``R`` its residual scratch; see :func:`_carve`), else the
    pair-of-outputs kernel (which ignores ``WT``, and uses ``R`` when it is
    not empty).
    """
    use_rows, start, lo, hi = _unliteral(use_rows), _unliteral(start), _unliteral(lo), _unliteral(hi)
    if tiled:
        return _rows_partials_tiled(X, T, W, WT, b, rows, use_rows, start, lo, hi, gW, gb, acc, R)
    return _rows_partials_pairs(X, T, W, b, rows, use_rows, start, lo, hi, gW, gb, acc, R)


@kernel
def _rows_partials_pairs(X, T, W, b, rows, use_rows, start, lo, hi, gW, gb, acc, R):
    """Loss and gradient sums over batch rows ``lo..hi`` (one chunk).

    Row ``k`` of the batch is row ``rows[start + k]`` of X when ``use_rows``
    (a shuffled mini-batch), else row ``start + k``.  Writes ``gW = Σ r·x``
    and ``gb = Σ r`` (float64) with ``r = x·Wᵀ + b − t``; returns ``Σ r²``.

    How the work is arranged, all measured on tall/tall16 (bench/RESULTS.md):

    * rows go in groups of ``GROUP``, outputs in pairs, so that each load of
      an X element feeds eight multiply-adds;
    * the gradient accumulates in ``acc`` (O, D), in the data's dtype, and
      is added into the float64 ``gW`` every ``FLUSH_ROWS`` rows: few float64
      conversions, and float32 sums of at most 64 terms;
    * or, when ``R`` (FLUSH_ROWS, P >= O) is given (float32, from
      ``TILE_GRADIENT_MIN_OUT`` outputs), the rounded residuals go into ``R``
      and each run of FLUSH_ROWS rows is summed by ``_tile_gradient`` in
      register tiles (the same rule: at most FLUSH_ROWS rows in the data's
      dtype);
    * the rows ``PREFETCH_ROWS`` positions ahead in a shuffled batch
      (``use_rows``), or ``STREAM_AHEAD`` rows ahead otherwise, are
      prefetched, X and T, every cache line.
    """
    n_out, n_in = W.shape
    cast = X.dtype.type
    use_R = R.shape[0] > 0
    for o in range(n_out):  # (explicit loops: slice assignment costs ~10 ns here)
        gb[o] = 0.0
        for d in range(n_in):
            gW[o, d] = 0.0
            acc[o, d] = 0.0
    for g in range(R.shape[0]):  # padding outputs: zero, so the gradient tiles add nothing
        for o in range(n_out, R.shape[1]):
            R[g, o] = 0.0
    loss = 0.0
    k = lo
    while k + GROUP <= hi:
        if use_rows:
            _prefetch_rows(X, T, rows, start + k + PREFETCH_ROWS, GROUP)
            i0, i1, i2, i3 = rows[start + k], rows[start + k + 1], rows[start + k + 2], rows[start + k + 3]
        else:
            _prefetch_block(X, T, start + k + STREAM_AHEAD, GROUP)
            i0 = start + k
            i1, i2, i3 = i0 + 1, i0 + 2, i0 + 3
        o = 0
        while o < n_out:
            p = min(o + 1, n_out - 1)  # the pair (o, p); p == o for a last odd output
            a0 = a1 = a2 = a3 = c0 = c1 = c2 = c3 = cast(0.0)
            for d in range(n_in):
                w = W[o, d]
                v = W[p, d]
                x0, x1, x2, x3 = X[i0, d], X[i1, d], X[i2, d], X[i3, d]
                a0 += x0 * w
                a1 += x1 * w
                a2 += x2 * w
                a3 += x3 * w
                c0 += x0 * v
                c1 += x1 * v
                c2 += x2 * v
                c3 += x3 * v
            r0 = np.float64(a0) + b[o] - T[i0, o]
            r1 = np.float64(a1) + b[o] - T[i1, o]
            r2 = np.float64(a2) + b[o] - T[i2, o]
            r3 = np.float64(a3) + b[o] - T[i3, o]
            loss += r0 * r0 + r1 * r1 + r2 * r2 + r3 * r3
            gb[o] += r0 + r1 + r2 + r3
            f0, f1, f2, f3 = cast(r0), cast(r1), cast(r2), cast(r3)
            g = (k - lo) % FLUSH_ROWS  # the group's first row in R
            if use_R:
                R[g, o], R[g + 1, o], R[g + 2, o], R[g + 3, o] = f0, f1, f2, f3
            if p == o:
                if not use_R:
                    for d in range(n_in):
                        acc[o, d] += f0 * X[i0, d] + f1 * X[i1, d] + f2 * X[i2, d] + f3 * X[i3, d]
                break
            q0 = np.float64(c0) + b[p] - T[i0, p]
            q1 = np.float64(c1) + b[p] - T[i1, p]
            q2 = np.float64(c2) + b[p] - T[i2, p]
            q3 = np.float64(c3) + b[p] - T[i3, p]
            loss += q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3
            gb[p] += q0 + q1 + q2 + q3
            e0, e1, e2, e3 = cast(q0), cast(q1), cast(q2), cast(q3)
            if use_R:
                R[g, p], R[g + 1, p], R[g + 2, p], R[g + 3, p] = e0, e1, e2, e3
            else:
                for d in range(n_in):
                    x0, x1, x2, x3 = X[i0, d], X[i1, d], X[i2, d], X[i3, d]
                    acc[o, d] += f0 * x0 + f1 * x1 + f2 * x2 + f3 * x3
                    acc[p, d] += e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
            o += 2
        k += GROUP
        if (k - lo) % FLUSH_ROWS == 0:
            if use_R:
                for t in range(0, n_out, OUT_TILE):
                    _tile_gradient(X, R, rows, use_rows, start + k - FLUSH_ROWS, _unliteral(FLUSH_ROWS), t, gW)
            else:
                _flush(acc, gW)
    m = (k - lo) % FLUSH_ROWS  # rows of the last, shorter run
    if use_R:
        if m:
            for t in range(0, n_out, OUT_TILE):
                _tile_gradient(X, R, rows, use_rows, start + k - m, m, t, gW)
    else:
        _flush(acc, gW)
    while k < hi:  # the last rows of the chunk, one at a time, straight into float64
        i = rows[start + k] if use_rows else start + k
        for o in range(n_out):
            r = np.float64(_dot(X, i, W, o)) + b[o] - T[i, o]
            loss += r * r
            gb[o] += r
            f = cast(r)
            for d in range(n_in):
                gW[o, d] += f * X[i, d]
        k += 1
    return loss


# --------------------------------------------------------------------------
# many outputs: register tiles across outputs
# --------------------------------------------------------------------------


@kernel
def _tile_forward(X, WT, ii, o0, R, g):
    """``R[g + r, o0:o0+8] = X[ii[r]] · WT[:, o0:o0+8]`` for the 8 rows ``ii``.

    The 8 x 8 tile stays in eight vector registers over the whole dot
    product; each step over d costs one vector load of WT and eight
    broadcasts of X for eight vector multiply-adds.
    """
    y0 = y1 = y2 = y3 = y4 = y5 = y6 = y7 = vzeros8(X)
    i0, i1, i2, i3, i4, i5, i6, i7 = ii
    for d in range(X.shape[1]):
        w = vload8(WT, d, o0)
        y0 = vmuladd8(y0, X[i0, d], w)
        y1 = vmuladd8(y1, X[i1, d], w)
        y2 = vmuladd8(y2, X[i2, d], w)
        y3 = vmuladd8(y3, X[i3, d], w)
        y4 = vmuladd8(y4, X[i4, d], w)
        y5 = vmuladd8(y5, X[i5, d], w)
        y6 = vmuladd8(y6, X[i6, d], w)
        y7 = vmuladd8(y7, X[i7, d], w)
    vstore8(R, g, o0, y0)
    vstore8(R, g + 1, o0, y1)
    vstore8(R, g + 2, o0, y2)
    vstore8(R, g + 3, o0, y3)
    vstore8(R, g + 4, o0, y4)
    vstore8(R, g + 5, o0, y5)
    vstore8(R, g + 6, o0, y6)
    vstore8(R, g + 7, o0, y7)


@kernel
def _tile_forward16(X, WT, ii, o0, R, g):
    """``R[g + r, o0:o0+16] = X[ii[r]] · WT[:, o0:o0+16]`` for the 4 rows ``ii``.

    The wider tile for 16 outputs: two vector loads of WT and four
    broadcasts of X feed eight multiply-adds (the 8 x 8 tile needs nine).
    """
    y0 = y1 = y2 = y3 = z0 = z1 = z2 = z3 = vzeros8(X)
    i0, i1, i2, i3 = ii
    o1 = o0 + 8
    for d in range(X.shape[1]):
        w = vload8(WT, d, o0)
        v = vload8(WT, d, o1)
        x = X[i0, d]
        y0 = vmuladd8(y0, x, w)
        z0 = vmuladd8(z0, x, v)
        x = X[i1, d]
        y1 = vmuladd8(y1, x, w)
        z1 = vmuladd8(z1, x, v)
        x = X[i2, d]
        y2 = vmuladd8(y2, x, w)
        z2 = vmuladd8(z2, x, v)
        x = X[i3, d]
        y3 = vmuladd8(y3, x, w)
        z3 = vmuladd8(z3, x, v)
    vstore8(R, g, o0, y0)
    vstore8(R, g, o1, z0)
    vstore8(R, g + 1, o0, y1)
    vstore8(R, g + 1, o1, z1)
    vstore8(R, g + 2, o0, y2)
    vstore8(R, g + 2, o1, z2)
    vstore8(R, g + 3, o0, y3)
    vstore8(R, g + 3, o1, z3)


@kernel
def _tile_gradient(X, R, rows, use_rows, first, m, o0, gW):
    """``gW[o0:o0+8] += R[:m, o0:o0+8]ᵀ · X[batch rows first .. first+m]``.

    By 4 outputs x 16 columns of X: their sums over the m rows stay in eight
    vector registers (a row costs two vector loads of X, four broadcasts of
    R and eight multiply-adds; more accumulators would spill one onto the
    stack, and its store-to-load round trip then sets the pace), and go into
    the float64 ``gW`` once, after at most FLUSH_ROWS rows.  Outputs past
    ``O`` (zero padding in R) are skipped; the last ``D % 16`` columns go by
    8, then one at a time.
    """
    n_out, n_in = gW.shape
    n16 = n_in // 16 * 16
    n8 = n_in // 8 * 8
    for q in range(o0, min(o0 + OUT_TILE, n_out), 4):
        left = n_out - q  # real outputs among q .. q+3
        for d0 in range(0, n16, 16):
            a0 = a1 = a2 = a3 = c0 = c1 = c2 = c3 = vzeros8(X)
            for g in range(m):
                i = rows[first + g] if use_rows else first + g
                xa = vload8(X, i, d0)
                xc = vload8(X, i, d0 + 8)
                r = vbroadcast8(R, g, q)
                a0 = vmuladd8(a0, r, xa)
                c0 = vmuladd8(c0, r, xc)
                r = vbroadcast8(R, g, q + 1)
                a1 = vmuladd8(a1, r, xa)
                c1 = vmuladd8(c1, r, xc)
                r = vbroadcast8(R, g, q + 2)
                a2 = vmuladd8(a2, r, xa)
                c2 = vmuladd8(c2, r, xc)
                r = vbroadcast8(R, g, q + 3)
                a3 = vmuladd8(a3, r, xa)
                c3 = vmuladd8(c3, r, xc)
            vaddto8(gW, q, d0, a0)
            vaddto8(gW, q, d0 + 8, c0)
            if left > 1:
                vaddto8(gW, q + 1, d0, a1)
                vaddto8(gW, q + 1, d0 + 8, c1)
            if left > 2:
                vaddto8(gW, q + 2, d0, a2)
                vaddto8(gW, q + 2, d0 + 8, c2)
            if left > 3:
                vaddto8(gW, q + 3, d0, a3)
                vaddto8(gW, q + 3, d0 + 8, c3)
        if n8 > n16:
            a0 = a1 = a2 = a3 = vzeros8(X)
            for g in range(m):
                i = rows[first + g] if use_rows else first + g
                xa = vload8(X, i, n16)
                a0 = vmuladd8(a0, vbroadcast8(R, g, q), xa)
                a1 = vmuladd8(a1, vbroadcast8(R, g, q + 1), xa)
                a2 = vmuladd8(a2, vbroadcast8(R, g, q + 2), xa)
                a3 = vmuladd8(a3, vbroadcast8(R, g, q + 3), xa)
            vaddto8(gW, q, n16, a0)
            if left > 1:
                vaddto8(gW, q + 1, n16, a1)
            if left > 2:
                vaddto8(gW, q + 2, n16, a2)
            if left > 3:
                vaddto8(gW, q + 3, n16, a3)
    for o in range(o0, min(o0 + OUT_TILE, n_out)):
        for g in range(m):
            i = rows[first + g] if use_rows else first + g
            f = R[g, o]
            for d in range(n8, n_in):
                gW[o, d] += f * X[i, d]


@kernel
def _pack_weight(W, WT):
    """``WT[d, o] = W[o, d]``, and zero in the padding columns ``o >= O``."""
    n_out, n_in = W.shape
    for d in range(n_in):
        for o in range(n_out):
            WT[d, o] = W[o, d]
        for o in range(n_out, WT.shape[1]):
            WT[d, o] = 0.0


@kernel
def _rows_partials_tiled(X, T, W, WT, b, rows, use_rows, start, lo, hi, gW, gb, acc, R):
    """:func:`_rows_partials_pairs` for many outputs (same sums, other arrangement).

    ``WT`` (D, P) is W transposed and zero-padded to P columns (O rounded up
    to a multiple of ``OUT_TILE``); ``R`` (FLUSH_ROWS, P) is scratch in the
    data's dtype; ``acc`` is not used.  Each run of up to FLUSH_ROWS rows
    (a multiple of TILE_ROWS) goes in three passes over rows that then sit
    in L1:

    1. predictions into ``R``, in register tiles of 4 rows x 16 outputs
       (``_tile_forward16``) and, for a last odd tile, 8 rows x 8 outputs
       (``_tile_forward``): each dot product in the data's dtype;
    2. residuals ``r = y + b − t`` in float64 (8 outputs at a time,
       ``vresidual8``): the loss and ``gb``, and ``r`` rounded to the data's
       dtype back into ``R``;
    3. ``gW += Rᵀ·X`` in register tiles of 4 outputs x 16 columns summed over
       the run in the data's dtype, then added into the float64 ``gW``
       (``_tile_gradient``): at most FLUSH_ROWS rows in the data's dtype.

    The last ``< TILE_ROWS`` rows of a chunk go one at a time straight into
    float64, as in the pair kernel.  The loss of the whole tiles is summed
    lane by lane across rows, then over the lanes in a fixed order.
    """
    n_out, n_in = W.shape
    n_tiles = WT.shape[1] // OUT_TILE
    cast = X.dtype.type
    for o in range(n_out):
        gb[o] = 0.0
        for d in range(n_in):
            gW[o, d] = 0.0
    for g in range(R.shape[0]):  # padding outputs: zero, so the gradient tiles add nothing
        for o in range(n_out, R.shape[1]):
            R[g, o] = 0.0
    loss = 0.0
    sq = vzeros8(gW)  # the whole tiles' squared residuals, lane by lane
    k = lo
    while k + TILE_ROWS <= hi:
        m = min(FLUSH_ROWS, hi - k) // TILE_ROWS * TILE_ROWS
        first = start + k
        for g in range(0, m, TILE_ROWS):
            at = first + g
            if use_rows:
                _prefetch_rows(X, T, rows, at + PREFETCH_ROWS, TILE_ROWS)
                ii = (
                    rows[at],
                    rows[at + 1],
                    rows[at + 2],
                    rows[at + 3],
                    rows[at + 4],
                    rows[at + 5],
                    rows[at + 6],
                    rows[at + 7],
                )
            else:
                _prefetch_block(X, T, at + STREAM_AHEAD, TILE_ROWS)
                ii = (at, at + 1, at + 2, at + 3, at + 4, at + 5, at + 6, at + 7)
            t = 0
            while t + 2 <= n_tiles:  # 16 outputs at a time
                _tile_forward16(X, WT, ii[:4], t * OUT_TILE, R, g)
                _tile_forward16(X, WT, ii[4:], t * OUT_TILE, R, g + 4)
                t += 2
            if t < n_tiles:
                _tile_forward(X, WT, ii, t * OUT_TILE, R, g)
        full = n_out // OUT_TILE * OUT_TILE  # outputs in whole tiles: 8 residuals at a time
        for g in range(m):
            i = rows[first + g] if use_rows else first + g
            for o0 in range(0, full, OUT_TILE):
                sq = vadd8(sq, vresidual8(R, g, o0, T, i, b, gb))
            for o in range(full, n_out):
                r = np.float64(R[g, o]) + b[o] - T[i, o]
                loss += r * r
                gb[o] += r
                R[g, o] = cast(r)
        for t in range(n_tiles):
            _tile_gradient(X, R, rows, use_rows, first, m, t * OUT_TILE, gW)
        k += m
    loss += vsum8(sq)
    while k < hi:  # the last rows of the chunk, one at a time, straight into float64
        i = rows[start + k] if use_rows else start + k
        for o in range(n_out):
            r = np.float64(_dot(X, i, W, o)) + b[o] - T[i, o]
            loss += r * r
            gb[o] += r
            f = cast(r)
            for d in range(n_in):
                gW[o, d] += f * X[i, d]
        k += 1
    return loss


@kernel(inline=True)
def _prefetch_block(X, T, at, count):
    """Prefetch every cache line of rows ``at .. at+count`` of X and T (those that exist)."""
    n_in = X.shape[1]
    n_out = T.shape[1]
    step = max(1, 64 // X.itemsize)
    for i in range(at, min(at + count, X.shape[0])):
        for d in range(0, n_in, step):
            prefetch(X, i, d)
        prefetch(X, i, n_in - 1)
        prefetch(T, i, 0)
        prefetch(T, i, n_out - 1)


@kernel(inline=True)
def _prefetch_rows(X, T, rows, at, count):
    """Prefetch every cache line of rows ``rows[at : at + count]`` of X and T.

    Positions past the end of ``rows`` are skipped; they may lie beyond the
    current batch or chunk, which is what hides the latency at its start.
    """
    n_in = X.shape[1]
    n_out = T.shape[1]
    step = max(1, 64 // X.itemsize)  # elements per 64-byte line
    for k in range(at, min(at + count, rows.shape[0])):
        i = rows[k]
        for d in range(0, n_in, step):
            prefetch(X, i, d)
        prefetch(X, i, n_in - 1)  # rows need not start on a line
        prefetch(T, i, 0)
        prefetch(T, i, n_out - 1)


@kernel(inline=True)
def _flush(acc, gW):
    """``gW += acc; acc = 0`` (acc in the data's dtype, gW in float64)."""
    for o in range(gW.shape[0]):
        for d in range(gW.shape[1]):
            gW[o, d] += acc[o, d]
            acc[o, d] = 0.0


@kernel(inline=True)
def _chunked_sums(X, T, W, WT, b, rows, use_rows, start, n, chunk_rows, gW, gb, loss_p, gW_p, gb_p, acc_p, R_p, tiled):
    """Loss and gradient sums over a batch of ``n`` rows, split in chunks.

    Chunk ``c`` fills ``loss_p[c]``, ``gW_p[c]``, ``gb_p[c]`` -- in parallel,
    as this is inlined into the ``*_parallel`` kernels -- and the partials are
    then added in chunk order into ``gW`` and ``gb``.  Returns ``Σ r²``.
    """
    n_out, n_in = W.shape
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n)
        R = R_p[c] if R_p.shape[0] else R_p[0:0].reshape((0, 0))
        loss_p[c] = _rows_partials(X, T, W, WT, b, rows, use_rows, start, lo, hi, gW_p[c], gb_p[c], acc_p[c], R, tiled)
    loss = 0.0
    for o in range(n_out):
        gb[o] = 0.0
        for d in range(n_in):
            gW[o, d] = 0.0
    for c in range(n_chunks):
        loss += loss_p[c]
        for o in range(n_out):
            gb[o] += gb_p[c, o]
            for d in range(n_in):
                gW[o, d] += gW_p[c, o, d]
    return loss


@kernel
def residual(Y, T, b, gb):
    """``Y ← Y + b − T`` in place; ``gb += Σ_rows`` of it; returns its ``Σ r²``.

    The elementwise middle of the GEMM path (see ``cpu_ops``), with float64
    arithmetic: ``Y`` (rows, O) holds ``X·Wᵀ`` from BLAS on entry.
    """
    loss = 0.0
    for i in range(Y.shape[0]):
        for o in range(Y.shape[1]):
            r = np.float64(Y[i, o]) + b[o] - T[i, o]
            Y[i, o] = r
            loss += r * r
            gb[o] += r
    return loss


# Twins that differ in how the batch sums are formed: the serial one runs the
# whole batch as one chunk (chosen when the plan has a single chunk); the
# parallel one splits it.  Keeping the chunk machinery out of the serial twin
# keeps a tiny step at tens of nanoseconds.
@kernel
def mse_grad(X, T, W, b, chunk_rows, work, acc, dW, db):
    """Analytic MSE gradient *sums*: ``dW = Σ (Y−T)ᵀX``, ``db = Σ (Y−T)``.

    Returns ``Σ (Y−T)²``.  The caller scales: ``c = 2/(N·O)`` for the mean
    loss, ``c = 2`` for the sum.  ``dW`` (O, D) and ``db`` (O,) are float64.
    """
    no_rows = np.empty(0, dtype=np.int64)
    _, _, _, _, _, tiled, WT, R_p = _carve(work, X, W, 1)
    if tiled:
        _pack_weight(W, WT)
    R = R_p[0] if R_p.shape[0] else R_p.reshape((0, 0))
    return _rows_partials(X, T, W, WT, b, no_rows, False, 0, 0, X.shape[0], dW, db, acc[0], R, tiled)


@kernel(parallel=True)
def mse_grad_parallel(X, T, W, b, chunk_rows, work, acc, dW, db):
    """:func:`mse_grad` over chunks of ``chunk_rows`` rows, in parallel."""
    n_rows = X.shape[0]
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows
    _, _, loss_p, gW_p, gb_p, tiled, WT, R_p = _carve(work, X, W, n_chunks)
    if tiled:
        _pack_weight(W, WT)
    no_rows = np.empty(0, dtype=np.int64)
    return _chunked_sums(
        X, T, W, WT, b, no_rows, False, 0, n_rows, chunk_rows, dW, db, loss_p, gW_p, gb_p, acc, R_p, tiled
    )


# --------------------------------------------------------------------------
# backward for an arbitrary upstream gradient dY
# --------------------------------------------------------------------------
def _backward(X, dY, W, chunk_rows, work, dX, dW, db):
    """``dX = dY·W``, ``dW = dYᵀ·X``, ``db = Σ dY`` (sums in float64).

    ``dX`` has the data's dtype; ``dW`` and ``db`` are float64.
    """
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows
    _, _, _, gW_p, gb_p, _, _, _ = _carve(work, X, W, n_chunks)
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n_rows)
        gW = gW_p[c]
        gb = gb_p[c]
        gW[:, :] = 0.0
        gb[:] = 0.0
        for i in range(lo, hi):
            for d in range(n_in):
                s = 0.0
                for o in range(n_out):
                    s += np.float64(dY[i, o]) * np.float64(W[o, d])
                dX[i, d] = s
            for o in range(n_out):
                g = np.float64(dY[i, o])
                gb[o] += g
                for d in range(n_in):
                    gW[o, d] += g * X[i, d]
    dW[:, :] = 0.0
    db[:] = 0.0
    for c in range(n_chunks):
        for o in range(n_out):
            db[o] += gb_p[c, o]
            for d in range(n_in):
                dW[o, d] += gW_p[c, o, d]


backward, backward_parallel = kernel_pair(_backward)


# --------------------------------------------------------------------------
# the optimiser's update (the rule of hyper[0], element by element)
# --------------------------------------------------------------------------
# The shared scalar maths (fastlin/backends/rules.py, counters.py), compiled
# for the CPU; cuda.py compiles the same functions for the GPU.
_scheduled_lr = kernel(inline=True)(_rules.scheduled_lr)
_update_element = kernel(inline=True)(_rules.update_element)
step_taken = kernel(inline=True)(_counters.step_taken)
advance = kernel(inline=True)(_counters.advance)


# The rule reads ``hp["lr"]`` and so on once per element.  From a record in
# ``hyper``'s memory every such read is a load that LLVM must repeat after
# each store into W (it cannot prove they do not overlap), so the rule's
# branches stay inside the loop even where the caller has already tested
# the same fields.  So each step copies the record's fields once into a
# named tuple, held in registers, which the rule subscripts the same way
# (the overload below); the copies specialised by kind (:func:`_update`)
# then lose the branches they do not take.
_HYPER_NAMES: tuple[str, ...] = tuple(HYPER.names or ())
# (mypy wants literal field names; these come from the record.)
HyperValues = namedtuple("HyperValues", _HYPER_NAMES)  # type: ignore[misc]


@overload(operator.getitem, prefer_literal=True)
def _hyper_values_getitem(values, key):
    """``values["lr"]`` on a :data:`HyperValues` inside compiled code, as on a record."""
    if (
        isinstance(values, types.BaseNamedTuple)
        and values.instance_class is HyperValues
        and isinstance(key, types.StringLiteral)
    ):
        at = HyperValues._fields.index(key.literal_value)
        return lambda values, key: values[at]
    return None


# ``_hyper_values(hp)``: ``HyperValues(hp["rule"], hp["lr"], ...)``, every
# field of abi.HYPER in its order.  Generated from HYPER.names, so a field
# added to the record needs no change here; compiled under this file's name,
# which numba's cache needs.
_SOURCE = "def _hyper_values(hp):\n    return HyperValues({})\n".format(
    ", ".join(f'hp["{name}"]' for name in _HYPER_NAMES)
)
exec(compile(_SOURCE, __file__, "exec"))
_hyper_values = kernel(inline=True)(_hyper_values)  # type: ignore[has-type]  # noqa: F821 (made by the exec above)


# Which copy of the update a kernel compiles.  The choice is made from the
# record's values (plain SGD or not) on the host, and handed to the kernels
# as the *type* of an argument, so that numba compiles each kernel for the
# kinds it is called with and no more:
#
# * PLAIN_SGD: SGD without momentum or weight decay, the seed's rule and the
#   default.  Its HyperValues hold those fields as constants, so LLVM folds
#   the rule down to ``p - lr * g`` and no slot is read.
# * SGD: SGD with momentum or weight decay.  The rule is a constant (Adam's
#   branch folds away), its fields come from the record, and slot 0 (the
#   momentum buffer) is read when slots_w has it.
# * ANY_RULE: every other rule (Adam, AdamW), read from the record; slot j
#   is read when j < slots_w.shape[0].
#
# The kind is the dtype of an empty array: numba's dispatcher types an array
# argument in tens of nanoseconds, a namedtuple in 1.4 us (measured), which
# a 4 us step would feel.  One generic copy inside every kernel made a
# plain-SGD user compile all the rules (the first fit_steps call: 45 s
# against 22 s before the rules were shared), and the seed fit's update ran
# 3-5x longer than this one.
PLAIN_SGD = np.empty(0, dtype=np.uint8)
SGD = np.empty(0, dtype=np.uint16)
ANY_RULE = np.empty(0, dtype=np.int8)
PLAIN_SGD.flags.writeable = SGD.flags.writeable = ANY_RULE.flags.writeable = False


def update_kind(hp):
    """The kind of update for one :data:`.abi.HYPER` record ``hp`` (``hyper[0]``)."""
    if hp["rule"] != RULE_SGD:
        return ANY_RULE
    plain = hp["momentum"] == 0.0 and hp["weight_decay"] == 0.0
    return PLAIN_SGD if plain else SGD


# Plain SGD's HyperValues: the fields the SGD rule tests are constants (the
# rest of the rule fields too: plain SGD never reads them), the learning rate
# and the schedule come from the record.
_PLAIN_SGD_CONSTANTS = {
    "rule": str(RULE_SGD),
    "weight_decay": "0.0",
    "momentum": "0.0",
    "dampening": "0.0",
    "nesterov": "False",
    "beta1": "0.0",
    "beta2": "0.0",
    "eps": "0.0",
    "amsgrad": "False",
    "decoupled": "False",
}
_PLAIN_SOURCE = "def _plain_sgd_values(hp):\n    return HyperValues({})\n".format(
    ", ".join(_PLAIN_SGD_CONSTANTS.get(name, f'hp["{name}"]') for name in _HYPER_NAMES)
)
exec(compile(_PLAIN_SOURCE, __file__, "exec"))
_plain_sgd_values = kernel(inline=True)(_plain_sgd_values)  # type: ignore[has-type]  # noqa: F821 (made by the exec above)

# SGD's: the rule and Adam's fields constant, SGD's own fields and the
# schedule from the record.
_SGD_CONSTANTS = {
    "rule": str(RULE_SGD),
    "beta1": "0.0",
    "beta2": "0.0",
    "eps": "0.0",
    "amsgrad": "False",
    "decoupled": "False",
}
_SGD_SOURCE = "def _sgd_values(hp):\n    return HyperValues({})\n".format(
    ", ".join(_SGD_CONSTANTS.get(name, f'hp["{name}"]') for name in _HYPER_NAMES)
)
exec(compile(_SGD_SOURCE, __file__, "exec"))
_sgd_values = kernel(inline=True)(_sgd_values)  # type: ignore[has-type]  # noqa: F821 (made by the exec above)


def _is_plain(kind):
    return isinstance(kind, types.Array) and kind.dtype == types.uint8


def _is_sgd(kind):
    return isinstance(kind, types.Array) and kind.dtype == types.uint16


def _values_for(kind, record):
    """``HyperValues`` of ``record`` for an update of ``kind`` (compiled code only)."""
    raise NotImplementedError("compiled code only")


@overload(_values_for, inline="always")
def _values_for_overload(kind, record):
    if _is_plain(kind):
        return lambda kind, record: _plain_sgd_values(record)
    if _is_sgd(kind):
        return lambda kind, record: _sgd_values(record)
    return lambda kind, record: _hyper_values(record)


def _slots_for(kind, slots_w):
    """How many optimiser slots an update of ``kind`` reads (compiled code only)."""
    raise NotImplementedError("compiled code only")


@overload(_slots_for, inline="always")
def _slots_for_overload(kind, slots_w):
    if _is_plain(kind):
        return lambda kind, slots_w: 0
    return lambda kind, slots_w: slots_w.shape[0]


def _rule_pass(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit):
    """Check the update of every parameter, then write them all: returns
    False, having written nothing, when any new value (a slot included) would
    be NaN/Inf or beyond ``limit``; else writes and returns True.

    The rule is computed twice (the check pass, then the write pass): for
    small layers that is cheaper than computing into scratch and copying
    (callgrind: ~1020 against ~1150 instructions a seed step).  Slot ``j`` is
    read and written only when ``j < k`` (``k`` <= ``slots_w.shape[0]``); a
    missing one enters the rule as 0.0 and comes back unchanged.

    One call site of the rule for both passes and for W and b alike: numba
    inlines the rule's IR into every call site, and with four (check and
    write, W and b) the update compiled in 12.5 s a kind, against 6.4 s with
    this one (bench/RESULTS.md, fifth session).  The price is a branch per
    element: the seed's 1 x 5 -> 2 momentum fit(5000) took 947-1,720 us
    against 878-1,572 before, within the scatter of those runs.
    """
    n_out, n_in = W.shape
    n_cols = n_in + 1 if has_bias else n_in  # column n_in is the bias
    for commit in range(2):
        finite = True  # no early exit: a branch-free check loop is faster
        for o in range(n_out):
            for d in range(n_cols):
                weight = d < n_in
                if weight:
                    p0 = np.float64(W[o, d])
                    g0 = gW[o, d]
                    s0 = np.float64(slots_w[0, o, d]) if k > 0 else 0.0
                    s1 = np.float64(slots_w[1, o, d]) if k > 1 else 0.0
                    s2 = np.float64(slots_w[2, o, d]) if k > 2 else 0.0
                else:
                    p0 = np.float64(b[o])
                    g0 = gb[o]
                    s0 = np.float64(slots_b[0, o]) if k > 0 else 0.0
                    s1 = np.float64(slots_b[1, o]) if k > 1 else 0.0
                    s2 = np.float64(slots_b[2, o]) if k > 2 else 0.0
                p, s0, s1, s2 = _update_element(hp, lr, step, has_buf, p0, scale * g0, s0, s1, s2)
                if commit == 0:  # the slots too: they can overflow in float32 while p stays finite
                    finite &= (abs(p) <= limit) & (abs(s0) <= limit) & (abs(s1) <= limit) & (abs(s2) <= limit)
                elif weight:
                    W[o, d] = p
                    if k > 0:
                        slots_w[0, o, d] = s0
                    if k > 1:
                        slots_w[1, o, d] = s1
                    if k > 2:
                        slots_w[2, o, d] = s2
                else:
                    b[o] = p
                    if k > 0:
                        slots_b[0, o] = s0
                    if k > 1:
                        slots_b[1, o] = s1
                    if k > 2:
                        slots_b[2, o] = s2
        if not finite:
            return False
    return True


def _plain_sgd_pass(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit):
    """:func:`_rule_pass` for PLAIN_SGD: ``p - lr * g`` with ``g = scale *
    gradient``, the expression rules.update_element's SGD branch reduces to
    without momentum and weight decay (tests/test_small_fits.py checks that
    the two give the same bits).  Written out because the whole rule, which
    LLVM folded down to this anyway, was most of the seed's first compile:
    17.3 s before, 4.9 s with these loops (bench/RESULTS.md, fifth session).
    No slots."""
    n_out, n_in = W.shape
    finite = True
    for o in range(n_out):
        for d in range(n_in):
            finite &= abs(np.float64(W[o, d]) - lr * (scale * gW[o, d])) <= limit
    if has_bias:
        for o in range(n_out):
            finite &= abs(np.float64(b[o]) - lr * (scale * gb[o])) <= limit
    if not finite:
        return False
    for o in range(n_out):
        for d in range(n_in):
            W[o, d] = np.float64(W[o, d]) - lr * (scale * gW[o, d])
    if has_bias:
        for o in range(n_out):
            b[o] = np.float64(b[o]) - lr * (scale * gb[o])
    return True


_plain_sgd_inline = kernel(inline=True)(_plain_sgd_pass)
_rule_compiled = kernel(_rule_pass)  # its own function: inlined here it compiled in 4 s more


def _any_rule_pass(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit):
    """ANY_RULE's pass: plain SGD's written-out loops when the record is
    plain SGD, else the rule's.  The parallel kernels send every optimiser
    here (cpu_ops.GENERIC), and the rule's loop, which tests the rule's
    fields for every element, made a plain-SGD step of 1,000 x 64 -> 16
    13-17% slower than its own copy (bench/RESULTS.md, fifth session)."""
    if hp["rule"] == RULE_SGD and hp["momentum"] == 0.0 and hp["weight_decay"] == 0.0:
        return _plain_sgd_inline(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit)
    return _rule_compiled(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit)


def _update_pass(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit):
    """Check, then write, the update of an update of ``kind`` (compiled code
    only): :func:`_plain_sgd_pass` for PLAIN_SGD, :func:`_rule_pass` for SGD,
    :func:`_any_rule_pass` for ANY_RULE."""
    raise NotImplementedError("compiled code only")


def _inline_plain_only(expr, caller_info, callee_info):
    """numba's inlining choice for :func:`_update_pass`: the few lines of the
    plain pass go inline into the caller (called, they cost the seed's fit
    60-80 ns of its ~100 a step); the rule's pass stays one compiled function per kind
    that every kernel calls (compiling its copies inline is what made the
    update slow to compile)."""
    return _is_plain(callee_info.signature.args[0])


@overload(_update_pass, inline=_inline_plain_only)
def _update_pass_overload(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit):
    if _is_plain(kind):
        return _plain_sgd_pass
    return _rule_pass if _is_sgd(kind) else _any_rule_pass


@kernel(inline=True)
def _update_body(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, counters, hp, k, limit):
    """:func:`_update` with the record's values ``hp`` and slot count ``k``
    already taken (once per call, by the small-problem kernels)."""
    step = counters[CNT_STEP]
    lr = _scheduled_lr(hp, step)
    has_buf = counters[CNT_HAS_BUF] != 0
    if not _update_pass(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, k, hp, lr, step, has_buf, limit):
        return NONFINITE_UPDATE
    step_taken(counters, hp["rule"] == RULE_SGD and hp["momentum"] != 0.0)
    return OK


# Not inlined into the streaming kernels that call it, but compiled once per
# kind for all of them: inlined into each kernel, the rule's copies made the
# first fit_steps call compile in 109 s against 45 s (when the rule had four
# call sites, see :func:`_rule_pass`).  The small-problem kernels inline its
# body (:func:`_update_body`).
@kernel
def _update(gW, gb, scale, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, limit):
    """The update of ``hyper[0]``'s rule (compiled for ``kind``, see
    :data:`PLAIN_SGD`) with the gradient ``scale·(gW, gb)``: check, then write.

    The learning rate is the schedule's at ``counters[CNT_STEP]``; after
    writing, the step is counted (:func:`.counters.step_taken`).  Returns a
    status; on ``NONFINITE_UPDATE`` nothing was written, counters included.
    """
    hp = _values_for(kind, hyper[0])
    k = _slots_for(kind, slots_w)
    return _update_body(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, counters, hp, k, limit)


@kernel
def learning_rates(hyper, first_step, out):
    """``out[k]`` = the learning rate of the model's step ``first_step + k``
    under ``hyper[0]``'s schedule: the numbers the step kernels use (the same
    compiled rule), for ``History.lr``."""
    for k in range(out.shape[0]):
        out[k] = _scheduled_lr(hyper[0], first_step + k)


@kernel
def apply_update(gW, gb, scale, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, limit):
    """Apply the update of ``hyper[0]`` with the float64 gradient ``scale·(gW, gb)``.

    Returns ``NONFINITE_LOSS`` if the gradient holds NaN/Inf,
    ``NONFINITE_UPDATE`` if the update would, and ``OK`` after writing.
    A lone step: it counts the step but moves no fit position.
    """
    for o in range(gW.shape[0]):
        if not np.isfinite(gb[o]):
            return NONFINITE_LOSS
        for d in range(gW.shape[1]):
            if not np.isfinite(gW[o, d]):
                return NONFINITE_LOSS
    return _update(gW, gb, scale, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, limit)


# --------------------------------------------------------------------------
# fused step and fit
# --------------------------------------------------------------------------
@kernel(inline=True)
def _loss_and_scale(sse_, n, n_out, reduce_sum):
    """A batch's loss from its sum of squares, and the factor that turns its
    gradient sums into the gradient of that loss: the sum when
    ``reduce_sum``, else the mean over ``n·O`` elements."""
    if reduce_sum:
        return sse_, 2.0
    return sse_ / (n * n_out), 2.0 / (n * n_out)


@kernel(inline=True)
def _finish_step(gW, gb, sse_, n, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit):
    """Turn a batch's sums into its loss and, if all is finite, the update.

    Returns ``(loss, status)``: the loss is measured before the update
    (:func:`_loss_and_scale`).  On a non-OK status nothing is written.
    """
    loss, scale = _loss_and_scale(sse_, n, W.shape[0], reduce_sum)
    if not np.isfinite(sse_):
        return loss, NONFINITE_LOSS
    return loss, _update(gW, gb, scale, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, limit)


@kernel
def fused_step(X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit, chunk_rows, work, acc):
    """One full-batch step on (X, T), updating W, b and the slots in place;
    X is read once.  Returns ``(loss before the update, status)``."""
    n_rows = X.shape[0]
    gW, gb, _, _, _, tiled, WT, R_p = _carve(work, X, W, 1)
    if tiled:
        _pack_weight(W, WT)
    R = R_p[0] if R_p.shape[0] else R_p.reshape((0, 0))
    no_rows = np.empty(0, dtype=np.int64)
    sse_ = _rows_partials(X, T, W, WT, b, no_rows, False, 0, 0, n_rows, gW, gb, acc[0], R, tiled)
    return _finish_step(
        gW, gb, sse_, n_rows, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit
    )


@kernel(parallel=True)
def fused_step_parallel(
    X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit, chunk_rows, work, acc
):
    """:func:`fused_step` over chunks of ``chunk_rows`` rows, in parallel."""
    n_rows = X.shape[0]
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows
    gW, gb, loss_p, gW_p, gb_p, tiled, WT, R_p = _carve(work, X, W, n_chunks)
    if tiled:
        _pack_weight(W, WT)
    no_rows = np.empty(0, dtype=np.int64)
    sse_ = _chunked_sums(
        X, T, W, WT, b, no_rows, False, 0, n_rows, chunk_rows, gW, gb, loss_p, gW_p, gb_p, acc, R_p, tiled
    )
    return _finish_step(
        gW, gb, sse_, n_rows, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit
    )


# The counter-based permutation of :mod:`.permute`, compiled for the CPU
# (the GPU compiles the same functions, so both draw the same order).
# Only the per-row function is inlined.  The round keys are computed in a
# loop by one compiled round_key: with round_key inlined eight times (with
# literal round numbers) this kernel, which every fit compiles, shuffled or
# not, took 2.2 s to compile, against 1.2 s now (bench/RESULTS.md, fifth
# session).
_half_bits = kernel(_permute.half_bits)
_round_key = kernel(_permute.round_key)
_permuted_index = kernel(inline=True)(_permute.permuted_index)


@kernel
def epoch_permutation(seed, epoch, perm):
    """Fill ``perm`` (int64, n) with the row order of epoch ``epoch`` of a fit
    seeded ``seed`` (uint64): ``perm[i] = permute.permuted_index(i, ...)``,
    a permutation of ``range(n)`` that depends on (seed, epoch, n) only, the
    one :func:`fastlin.backends.cuda_shuffle.shuffle_epoch` draws on the GPU.

    Each entry is computed independently (an 8-round Feistel network with
    cycle-walking, see :mod:`.permute`); the array is kept because the row
    kernels read ``perm[pos + k]`` and prefetch rows ahead from it.
    """
    n = perm.shape[0]
    h = _half_bits(n)
    k = np.empty(_permute.ROUNDS, dtype=np.uint64)
    for r in range(_permute.ROUNDS):
        k[r] = _round_key(seed, epoch, r)
    keys = (k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7])  # permute.ROUNDS of them, held in registers
    for i in range(n):
        perm[i] = _permuted_index(i, n, h, keys)


@kernel(inline=True)
def next_batch(counters, perm, shuffle, seed, batch_size, n_rows):
    """``(first row, rows)`` of a fit's next batch; reshuffles at an epoch's start.

    Batches of ``batch_size`` rows walk through the data from
    ``counters[CNT_POS]``; an epoch ends after its last (possibly shorter)
    batch (:func:`.counters.advance`).  With ``shuffle`` each epoch visits the
    rows in the order ``epoch_permutation(seed, counters[CNT_EPOCH])``.
    """
    pos = counters[CNT_POS]
    if shuffle and pos == 0:
        epoch_permutation(seed, counters[CNT_EPOCH], perm)
    return pos, min(batch_size, n_rows - pos)


@kernel
def fit_steps(
    X,
    T,
    W,
    b,
    has_bias,
    slots_w,
    slots_b,
    counters,
    hyper,
    kind,
    reduce_sum,
    limit,
    batch_size,
    shuffle,
    seed,
    chunk_rows,
    perm,
    work,
    acc,
    losses,
):
    """Run ``len(losses)`` steps in one call, writing each step's loss.

    ``counters`` carries the steps taken, whether the momentum buffers hold
    a value, the epoch and the position, so a fit resumes across calls.
    ``perm`` (n_rows when ``shuffle``) is scratch for the epoch's row order.
    Returns ``(steps done, status)``; on a non-OK status the failing step
    wrote nothing and ``losses[steps done]`` holds its loss.
    """
    n_rows = X.shape[0]
    gW, gb, _, _, _, tiled, WT, R_p = _carve(work, X, W, 1)
    R = R_p[0] if R_p.shape[0] else R_p.reshape((0, 0))
    for s in range(losses.shape[0]):
        pos, n = next_batch(counters, perm, shuffle, seed, batch_size, n_rows)
        if tiled:
            _pack_weight(W, WT)
        sse_ = _rows_partials(X, T, W, WT, b, perm, shuffle, pos, 0, n, gW, gb, acc[0], R, tiled)
        loss, status = _finish_step(
            gW, gb, sse_, n, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit
        )
        losses[s] = loss
        if status != OK:
            return s, status
        advance(counters, n, n_rows)
    return losses.shape[0], OK


@kernel(parallel=True)
def fit_steps_parallel(
    X,
    T,
    W,
    b,
    has_bias,
    slots_w,
    slots_b,
    counters,
    hyper,
    kind,
    reduce_sum,
    limit,
    batch_size,
    shuffle,
    seed,
    chunk_rows,
    perm,
    work,
    acc,
    losses,
):
    """:func:`fit_steps` with each batch split in chunks of ``chunk_rows`` rows."""
    n_rows = X.shape[0]
    n_chunks = (batch_size + chunk_rows - 1) // chunk_rows
    gW, gb, loss_p, gW_p, gb_p, tiled, WT, R_p = _carve(work, X, W, n_chunks)
    for s in range(losses.shape[0]):
        pos, n = next_batch(counters, perm, shuffle, seed, batch_size, n_rows)
        if tiled:
            _pack_weight(W, WT)
        sse_ = _chunked_sums(
            X, T, W, WT, b, perm, shuffle, pos, n, chunk_rows, gW, gb, loss_p, gW_p, gb_p, acc, R_p, tiled
        )
        loss, status = _finish_step(
            gW, gb, sse_, n, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit
        )
        losses[s] = loss
        if status != OK:
            return s, status
        advance(counters, n, n_rows)
    return losses.shape[0], OK


# --------------------------------------------------------------------------
# small problems: one plain loop, everything inlined
# --------------------------------------------------------------------------
# Below SMALL_WORK multiply-adds a batch (rows x D x O), a step's arithmetic
# takes tens of nanoseconds, and what the streaming kernels add around it --
# calls of non-inlined functions with a dozen array arguments, the group and
# flush bookkeeping, the record read at every step -- cost several times
# that (the seed's 1 x 5 -> 2: about 480 ns a step in fit_steps, 95 ns
# here).  These kernels read the record once a call and run the batch as
# plain loops.  Their gradient adds each row straight into float64, so from
# about 1000 multiply-adds the streaming kernels are faster again (measured
# per step of a 100-step fit: 16 x 16 -> 2, 500 against 520 ns; 32 x 16 -> 2,
# 1550 against 1280 ns; bench/RESULTS.md).
SMALL_WORK = 512


@kernel(inline=True)
def _small_sums(X, T, W, b, rows, use_rows, start, n, gW, gb):
    """Loss and gradient sums of a small batch (rows ``start..start+n``, via
    ``rows`` when ``use_rows``): ``gW = Σ r·x``, ``gb = Σ r``, returns ``Σ r²``.

    The accuracy rules of the streaming kernels' last rows: a row's dot
    product in the data's dtype, the residual and every sum in float64, and
    each gradient product ``r·x`` formed in the data's dtype and added
    straight into float64.
    """
    n_out, n_in = W.shape
    cast = X.dtype.type
    for o in range(n_out):
        gb[o] = 0.0
        for d in range(n_in):
            gW[o, d] = 0.0
    loss = 0.0
    for k in range(n):
        i = rows[start + k] if use_rows else start + k
        for o in range(n_out):
            a = cast(0.0)
            for d in range(n_in):
                a += X[i, d] * W[o, d]
            r = np.float64(a) + b[o] - T[i, o]
            loss += r * r
            gb[o] += r
            f = cast(r)
            for d in range(n_in):
                gW[o, d] += f * X[i, d]
    return loss


@kernel(inline=True)
def _small_step(
    X, T, W, b, has_bias, slots_w, slots_b, counters, kind, hp, k, reduce_sum, limit, rows, use_rows, pos, n, gW, gb
):
    """One step on a small batch: ``(loss before the update, status)``."""
    sse_ = _small_sums(X, T, W, b, rows, use_rows, pos, n, gW, gb)
    loss, scale = _loss_and_scale(sse_, n, W.shape[0], reduce_sum)
    if not np.isfinite(sse_):
        return loss, NONFINITE_LOSS
    return loss, _update_body(kind, gW, gb, scale, W, b, has_bias, slots_w, slots_b, counters, hp, k, limit)


@kernel
def fused_step_small(
    X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit, chunk_rows, work, acc
):
    """:func:`fused_step` for a batch under SMALL_WORK (same arguments;
    ``chunk_rows`` and ``acc`` unused, ``work`` holds gW and gb)."""
    n_out, n_in = W.shape
    gW = work[0 : n_out * n_in].reshape((n_out, n_in))
    gb = work[n_out * n_in : n_out * n_in + n_out]
    hp = _values_for(kind, hyper[0])
    n_slots = _slots_for(kind, slots_w)
    no_rows = np.empty(0, dtype=np.int64)
    return _small_step(
        X, T, W, b, has_bias, slots_w, slots_b, counters, kind, hp, n_slots, reduce_sum, limit, no_rows, False, 0,
        X.shape[0], gW, gb,
    )  # fmt: skip


@kernel
def fit_steps_small(
    X,
    T,
    W,
    b,
    has_bias,
    slots_w,
    slots_b,
    counters,
    hyper,
    kind,
    reduce_sum,
    limit,
    batch_size,
    shuffle,
    seed,
    chunk_rows,
    perm,
    work,
    acc,
    losses,
):
    """:func:`fit_steps` for batches under SMALL_WORK (same arguments and
    results; ``chunk_rows`` and ``acc`` unused, ``work`` holds gW and gb)."""
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    gW = work[0 : n_out * n_in].reshape((n_out, n_in))
    gb = work[n_out * n_in : n_out * n_in + n_out]
    hp = _values_for(kind, hyper[0])
    n_slots = _slots_for(kind, slots_w)
    for s in range(losses.shape[0]):
        pos, n = next_batch(counters, perm, shuffle, seed, batch_size, n_rows)
        loss, status = _small_step(
            X, T, W, b, has_bias, slots_w, slots_b, counters, kind, hp, n_slots, reduce_sum, limit, perm, shuffle, pos, n,
            gW, gb,
        )  # fmt: skip
        losses[s] = loss
        if status != OK:
            return s, status
        advance(counters, n, n_rows)
    return losses.shape[0], OK
