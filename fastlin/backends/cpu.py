"""CPU kernels (``@njit``).  Kernels only: no validation, no allocation.

Every kernel writes into arrays it is given; :mod:`fastlin.backends.cpu_ops`
allocates them and picks the kernel.  The CUDA twins in
:mod:`fastlin.backends.cuda` carry the same names.

Shapes and conventions
    ``X`` (N, D) inputs, ``T`` (N, O) targets, ``W`` (O, D) weight, ``b`` (O,)
    bias, all C-contiguous and of one float dtype (float32 or float64).  When
    the layer has no bias, ``b`` is a zero vector (so adding it changes
    nothing) and ``has_bias`` is False (so the update leaves it alone).

Accuracy
    A dot product ``x·w`` over one row is formed in the data's dtype (as BLAS
    does), and so are gradient contributions summed over up to
    ``FLUSH_ROWS`` rows.  Everything longer -- residuals, the loss, the
    gradient sums over many rows, the reduction across chunks -- accumulates
    in float64.  Over 10^7 float32 rows the loss stays within 1e-6 of a float64
    reference; a float32 accumulator drifts by ~10%.

Determinism
    Reductions over rows are split into fixed chunks of ``chunk_rows`` rows.
    Each chunk writes its own partial sums, and the partials are added in
    chunk order.  ``chunk_rows`` depends only on the problem's shape, so the
    result is bit-identical for any number of threads.

Work buffers
    Reductions take ``acc`` (C, O, D) in the data's dtype, each chunk's
    short-run gradient accumulator, and one flat float64 ``work`` array
    (fewer arguments means a cheaper call from Python), carved up by
    :func:`_carve`::

        [ gW (O·D) | gb (O) | loss_p (C) | gW_p (C·O·D) | gb_p (C·O) ]

    where C is the number of chunks: ``gW``/``gb`` hold a batch's gradient
    sums, the ``_p`` arrays each chunk's partial sums.  ``work_size`` gives
    its length.

SGD hyper-parameters
    ``hp`` is a float64 vector indexed by ``abi.HP_*``.  The update is
    ``torch.optim.SGD``'s, element by element::

        g   = grad + weight_decay · p
        buf = g                                       (first step)
        buf = momentum · buf + (1 − dampening) · g    (later steps)
        g   = g + momentum · buf  if nesterov  else  buf
        p   = p − lr · g

Status codes and training flags: see :mod:`fastlin.backends.abi`.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .._jit import kernel, kernel_pair
from .abi import (
    HP_DAMPENING,
    HP_LR,
    HP_MAX,
    HP_MOMENTUM,
    HP_NESTEROV,
    HP_SUM,
    HP_WEIGHT_DECAY,
    NONFINITE_LOSS,
    NONFINITE_UPDATE,
    OK,
    ST_EPOCH,
    ST_HAS_BUF,
    ST_POS,
)


# Rows processed together: each load of a weight and of an X element then
# feeds several multiply-adds, and the inner loops vectorise.
GROUP = 4
# Rows whose gradient contributions are summed in the data's dtype before
# they are added into the float64 sums (a multiple of GROUP).
FLUSH_ROWS = 64


def work_size(n_out, n_in, n_chunks):
    """Length of the flat float64 work buffer for the reduction kernels."""
    return n_out * n_in + n_out + n_chunks * (1 + n_out * n_in + n_out)


@kernel
def _carve(work, n_out, n_in, n_chunks):
    od = n_out * n_in
    gW = work[0:od].reshape((n_out, n_in))
    at = od
    gb = work[at : at + n_out]
    at += n_out
    loss_p = work[at : at + n_chunks]
    at += n_chunks
    gW_p = work[at : at + n_chunks * od].reshape((n_chunks, n_out, n_in))
    at += n_chunks * od
    gb_p = work[at : at + n_chunks * n_out].reshape((n_chunks, n_out))
    return gW, gb, loss_p, gW_p, gb_p


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


@kernel
def _rows_partials(X, T, W, b, rows, use_rows, start, lo, hi, gW, gb, acc):
    """Loss and gradient sums over batch rows ``lo..hi`` (one chunk).

    Row ``k`` of the batch is row ``rows[start + k]`` of X when ``use_rows``
    (a shuffled mini-batch), else row ``start + k``.  Writes ``gW = Σ r·x``
    and ``gb = Σ r`` (float64) with ``r = x·Wᵀ + b − t``; returns ``Σ r²``.

    How the work is arranged, all measured on tall/tall16 (bench/RESULTS.md):

    * rows go in groups of ``GROUP``, outputs in pairs, so that each load of
      an X element feeds eight multiply-adds;
    * the gradient accumulates in ``acc`` (O, D), in the data's dtype, and
      is added into the float64 ``gW`` every ``FLUSH_ROWS`` rows: few float64
      conversions, and float32 sums of at most 64 terms.
    """
    n_out, n_in = W.shape
    cast = X.dtype.type
    for o in range(n_out):  # (explicit loops: slice assignment costs ~10 ns here)
        gb[o] = 0.0
        for d in range(n_in):
            gW[o, d] = 0.0
            acc[o, d] = 0.0
    loss = 0.0
    k = lo
    while k + GROUP <= hi:
        if use_rows:
            i0, i1, i2, i3 = rows[start + k], rows[start + k + 1], rows[start + k + 2], rows[start + k + 3]
        else:
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
            if p == o:
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
            for d in range(n_in):
                x0, x1, x2, x3 = X[i0, d], X[i1, d], X[i2, d], X[i3, d]
                acc[o, d] += f0 * x0 + f1 * x1 + f2 * x2 + f3 * x3
                acc[p, d] += e0 * x0 + e1 * x1 + e2 * x2 + e3 * x3
            o += 2
        k += GROUP
        if (k - lo) % FLUSH_ROWS == 0:
            _flush(acc, gW)
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


@kernel(inline=True)
def _flush(acc, gW):
    """``gW += acc; acc = 0`` (acc in the data's dtype, gW in float64)."""
    for o in range(gW.shape[0]):
        for d in range(gW.shape[1]):
            gW[o, d] += acc[o, d]
            acc[o, d] = 0.0


@kernel(inline=True)
def _chunked_sums(X, T, W, b, rows, use_rows, start, n, chunk_rows, gW, gb, loss_p, gW_p, gb_p, acc_p):
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
        loss_p[c] = _rows_partials(X, T, W, b, rows, use_rows, start, lo, hi, gW_p[c], gb_p[c], acc_p[c])
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
    return _rows_partials(X, T, W, b, no_rows, False, 0, 0, X.shape[0], dW, db, acc[0])


@kernel(parallel=True)
def mse_grad_parallel(X, T, W, b, chunk_rows, work, acc, dW, db):
    """:func:`mse_grad` over chunks of ``chunk_rows`` rows, in parallel."""
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    _, _, loss_p, gW_p, gb_p = _carve(work, n_out, n_in, (n_rows + chunk_rows - 1) // chunk_rows)
    no_rows = np.empty(0, dtype=np.int64)
    return _chunked_sums(X, T, W, b, no_rows, False, 0, n_rows, chunk_rows, dW, db, loss_p, gW_p, gb_p, acc)


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
    _, _, _, gW_p, gb_p = _carve(work, n_out, n_in, n_chunks)
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
# SGD update (torch.optim.SGD semantics)
# --------------------------------------------------------------------------
@kernel(inline=True)
def _sgd_value(p, g, buf, has_buf, lr, momentum, dampening, weight_decay, nesterov):
    """New (parameter, momentum buffer) for one element; all float64."""
    g = g + weight_decay * p
    if momentum != 0.0:
        if has_buf:
            buf = momentum * buf + (1.0 - dampening) * g
        else:
            buf = g
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf
    return p - lr * g, buf


@kernel(inline=True)
def _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, commit):
    """Apply the update when ``commit``; otherwise only check it stays finite.

    Running the same arithmetic twice (check, then write) keeps W, b and the
    momentum buffers untouched when any new value would be NaN/Inf.  For
    small layers this is cheaper than computing into scratch and copying
    (measured with callgrind: ~1020 against ~1150 instructions a seed step).
    Returns True when every new value is finite (always True on commit).
    """
    lr = hp[HP_LR]
    momentum = hp[HP_MOMENTUM]
    dampening = hp[HP_DAMPENING]
    weight_decay = hp[HP_WEIGHT_DECAY]
    nesterov = hp[HP_NESTEROV] != 0.0
    limit = hp[HP_MAX]
    read_buf = momentum != 0.0 and has_buf
    finite = True  # no early exit: a branch-free check loop is faster
    n_out, n_in = W.shape
    for o in range(n_out):
        for d in range(n_in):
            buf = np.float64(bufW[o, d]) if read_buf else 0.0
            p, buf = _sgd_value(np.float64(W[o, d]), scale * gW[o, d], buf, has_buf, lr, momentum, dampening, weight_decay, nesterov)
            if commit:
                W[o, d] = p
                if momentum != 0.0:
                    bufW[o, d] = buf
            else:  # the buffer too: it can overflow in float32 while p stays finite
                finite &= (abs(p) <= limit) & (abs(buf) <= limit)  # False for NaN too
    if has_bias:
        for o in range(n_out):
            buf = np.float64(bufb[o]) if read_buf else 0.0
            p, buf = _sgd_value(np.float64(b[o]), scale * gb[o], buf, has_buf, lr, momentum, dampening, weight_decay, nesterov)
            if commit:
                b[o] = p
                if momentum != 0.0:
                    bufb[o] = buf
            else:
                finite &= (abs(p) <= limit) & (abs(buf) <= limit)
    return finite


@kernel(inline=True)
def _update(W, b, has_bias, gW, gb, scale, bufW, bufb, hp, state):
    """SGD with the gradient ``scale·(gW, gb)``: check, then write.  Returns a status."""
    has_buf = state[ST_HAS_BUF] != 0
    if not _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, False):
        return NONFINITE_UPDATE
    _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, True)
    if hp[HP_MOMENTUM] != 0.0:
        state[ST_HAS_BUF] = 1
    return OK


@kernel
def apply_update(W, b, has_bias, gW, gb, scale, bufW, bufb, hp, state):
    """Apply SGD with the float64 gradient ``scale·(gW, gb)``.

    Returns ``NONFINITE_LOSS`` if the gradient holds NaN/Inf,
    ``NONFINITE_UPDATE`` if the update would, and ``OK`` after writing.
    """
    for o in range(gW.shape[0]):
        if not np.isfinite(gb[o]):
            return NONFINITE_LOSS
        for d in range(gW.shape[1]):
            if not np.isfinite(gW[o, d]):
                return NONFINITE_LOSS
    return _update(W, b, has_bias, gW, gb, scale, bufW, bufb, hp, state)


# --------------------------------------------------------------------------
# fused step and fit
# --------------------------------------------------------------------------
@kernel(inline=True)
def _finish_step(sse_, n, W, b, has_bias, gW, gb, bufW, bufb, hp, state):
    """Turn a batch's sums into its loss and, if all is finite, the update.

    Returns ``(loss, status)``: the loss is measured before the update and
    reduced as ``hp[HP_SUM]`` asks.  On a non-OK status nothing is written.
    """
    n_out = W.shape[0]
    if hp[HP_SUM] != 0.0:
        loss = sse_
        scale = 2.0
    else:
        loss = sse_ / (n * n_out)
        scale = 2.0 / (n * n_out)
    if not np.isfinite(sse_):
        return loss, NONFINITE_LOSS
    return loss, _update(W, b, has_bias, gW, gb, scale, bufW, bufb, hp, state)


@kernel
def fused_step(X, T, W, b, has_bias, bufW, bufb, hp, state, chunk_rows, work, acc):
    """One full-batch SGD step on (X, T), updating W, b (and momentum) in
    place; X is read once.  Returns ``(loss before the update, status)``."""
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    gW, gb, _, _, _ = _carve(work, n_out, n_in, 1)
    no_rows = np.empty(0, dtype=np.int64)
    sse_ = _rows_partials(X, T, W, b, no_rows, False, 0, 0, n_rows, gW, gb, acc[0])
    return _finish_step(sse_, n_rows, W, b, has_bias, gW, gb, bufW, bufb, hp, state)


@kernel(parallel=True)
def fused_step_parallel(X, T, W, b, has_bias, bufW, bufb, hp, state, chunk_rows, work, acc):
    """:func:`fused_step` over chunks of ``chunk_rows`` rows, in parallel."""
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    gW, gb, loss_p, gW_p, gb_p = _carve(work, n_out, n_in, (n_rows + chunk_rows - 1) // chunk_rows)
    no_rows = np.empty(0, dtype=np.int64)
    sse_ = _chunked_sums(X, T, W, b, no_rows, False, 0, n_rows, chunk_rows, gW, gb, loss_p, gW_p, gb_p, acc)
    return _finish_step(sse_, n_rows, W, b, has_bias, gW, gb, bufW, bufb, hp, state)


@kernel
def _splitmix64(x):
    """One step of SplitMix64: returns (next state, 64 random bits)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x, z ^ (z >> np.uint64(31))


@kernel
def epoch_permutation(seed, epoch, perm):
    """Fill ``perm`` with a permutation of ``range(len(perm))`` that depends on
    (seed, epoch) only (Fisher-Yates driven by SplitMix64)."""
    n = perm.shape[0]
    for i in range(n):
        perm[i] = i
    x = np.uint64(seed) ^ (np.uint64(epoch) * np.uint64(0xD1B54A32D192ED03))
    for i in range(n - 1, 0, -1):
        x, z = _splitmix64(x)
        j = np.int64(z % np.uint64(i + 1))
        tmp = perm[i]
        perm[i] = perm[j]
        perm[j] = tmp


@kernel(inline=True)
def next_batch(state, perm, shuffle, seed, batch_size, n_rows):
    """``(first row, rows)`` of a fit's next batch; reshuffles at an epoch's start.

    Batches of ``batch_size`` rows walk through the data; an epoch ends after
    its last (possibly shorter) batch.  With ``shuffle`` each epoch visits the
    rows in the order ``epoch_permutation(seed, epoch)``.
    """
    pos = state[ST_POS]
    if shuffle and pos == 0:
        epoch_permutation(seed, state[ST_EPOCH], perm)
    return pos, min(batch_size, n_rows - pos)


@kernel(inline=True)
def advance(state, pos, n, n_rows):
    """Move a fit's position past a batch of ``n`` rows starting at ``pos``."""
    pos += n
    if pos >= n_rows:
        pos = 0
        state[ST_EPOCH] += 1
    state[ST_POS] = pos


@kernel
def fit_steps(X, T, W, b, has_bias, bufW, bufb, hp, state, perm, batch_size, shuffle, seed, chunk_rows, work, acc, losses):
    """Run ``len(losses)`` SGD steps in one call, writing each step's loss.

    ``state`` carries (momentum-initialised, epoch, position), so a fit can
    resume across calls.  Returns ``(steps done, status)``; on a non-OK
    status the failing step wrote nothing and ``losses[steps done]`` holds
    its loss.
    """
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    gW, gb, _, _, _ = _carve(work, n_out, n_in, 1)
    for s in range(losses.shape[0]):
        pos, n = next_batch(state, perm, shuffle, seed, batch_size, n_rows)
        sse_ = _rows_partials(X, T, W, b, perm, shuffle, pos, 0, n, gW, gb, acc[0])
        loss, status = _finish_step(sse_, n, W, b, has_bias, gW, gb, bufW, bufb, hp, state)
        losses[s] = loss
        if status != OK:
            return s, status
        advance(state, pos, n, n_rows)
    return losses.shape[0], OK


@kernel(parallel=True)
def fit_steps_parallel(X, T, W, b, has_bias, bufW, bufb, hp, state, perm, batch_size, shuffle, seed, chunk_rows, work, acc, losses):
    """:func:`fit_steps` with each batch split in chunks of ``chunk_rows`` rows."""
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    gW, gb, loss_p, gW_p, gb_p = _carve(work, n_out, n_in, (batch_size + chunk_rows - 1) // chunk_rows)
    for s in range(losses.shape[0]):
        pos, n = next_batch(state, perm, shuffle, seed, batch_size, n_rows)
        sse_ = _chunked_sums(X, T, W, b, perm, shuffle, pos, n, chunk_rows, gW, gb, loss_p, gW_p, gb_p, acc)
        loss, status = _finish_step(sse_, n, W, b, has_bias, gW, gb, bufW, bufb, hp, state)
        losses[s] = loss
        if status != OK:
            return s, status
        advance(state, pos, n, n_rows)
    return losses.shape[0], OK
