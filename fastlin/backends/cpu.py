"""CPU kernels (``@njit``).  Kernels only: no validation, no allocation.

Every kernel writes into arrays it is given; :mod:`fastlin.backends.cpu_ops`
allocates them and picks the kernel.  The CUDA twins in
:mod:`fastlin.backends.cuda` carry the same names.

Shapes and conventions
    ``X`` (N, D) inputs, ``T`` (N, O) targets, ``W`` (O, D) weight, ``b`` (O,)
    bias, all C-contiguous and of one float dtype (float32 or float64).  When
    the layer has no bias, ``b`` is a zero vector and ``has_bias`` is False.

Accuracy
    Products ``x·w`` are formed in float64 (exact for float32 inputs) and every
    sum -- outputs, loss, gradients -- accumulates in float64, whatever the
    data's dtype.  Over 10^7 float32 rows the loss stays within 1e-6 of a
    float64 reference; a float32 accumulator drifts by ~10%.

Determinism
    Reductions over rows are split into fixed chunks of ``chunk_rows`` rows.
    Each chunk writes its own partial sums, and the partials are added in
    chunk order.  ``chunk_rows`` depends only on the problem's shape, so the
    result is bit-identical for any number of threads.

Work buffer
    Reductions take one flat float64 ``work`` array (fewer arguments means a
    cheaper call from Python), carved up by :func:`_carve`::

        [ W64 (O·D) | gW (O·D) | gb (O) | loss_p (C) | gW_p (C·O·D) | gb_p (C·O) ]

    where C is the number of chunks.  ``work_size`` gives its length.

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


def work_size(n_out, n_in, n_chunks):
    """Length of the flat float64 work buffer for the reduction kernels."""
    return 2 * n_out * n_in + n_out + n_chunks * (1 + n_out * n_in + n_out)


@kernel
def _carve(work, n_out, n_in, n_chunks):
    od = n_out * n_in
    W64 = work[0:od].reshape((n_out, n_in))
    gW = work[od : 2 * od].reshape((n_out, n_in))
    at = 2 * od
    gb = work[at : at + n_out]
    at += n_out
    loss_p = work[at : at + n_chunks]
    at += n_chunks
    gW_p = work[at : at + n_chunks * od].reshape((n_chunks, n_out, n_in))
    at += n_chunks * od
    gb_p = work[at : at + n_chunks * n_out].reshape((n_chunks, n_out))
    return W64, gW, gb, loss_p, gW_p, gb_p


@kernel
def all_finite(a):
    """True when no element of the 1-D array ``a`` is NaN or Inf (stops at the first)."""
    for i in range(a.shape[0]):
        if not np.isfinite(a[i]):
            return False
    return True


# --------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------
def _forward(X, W, b, has_bias, Y):
    """``Y = X·Wᵀ + b`` row by row, with float64 sums.  ``Y`` is (N, O)."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    for i in prange(n_rows):
        for o in range(n_out):
            s = 0.0
            for d in range(n_in):
                s += np.float64(X[i, d]) * np.float64(W[o, d])
            if has_bias:
                s += b[o]
            Y[i, o] = s


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


def _model_sse(X, T, W, b, has_bias, chunk_rows, loss_p):
    """``Σ (X·Wᵀ + b − T)²`` without forming the (N, O) prediction."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    n_chunks = loss_p.shape[0]
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n_rows)
        acc = 0.0
        for i in range(lo, hi):
            for o in range(n_out):
                s = 0.0
                for d in range(n_in):
                    s += np.float64(X[i, d]) * np.float64(W[o, d])
                if has_bias:
                    s += b[o]
                r = s - T[i, o]
                acc += r * r
        loss_p[c] = acc
    total = 0.0
    for c in range(n_chunks):
        total += loss_p[c]
    return total


model_sse, model_sse_parallel = kernel_pair(_model_sse)


@kernel
def _rows_partials(X, T, W64, b, has_bias, rows, use_rows, start, lo, hi, gW, gb):
    """Loss and gradient sums over batch rows ``lo..hi`` (one chunk).

    Row ``k`` of the batch is row ``rows[start + k]`` of X when ``use_rows``
    (a shuffled mini-batch), else row ``start + k``.  Writes ``gW = Σ r·x``
    and ``gb = Σ r`` with ``r = x·Wᵀ + b − t``, returns ``Σ r²``.
    """
    n_out, n_in = W64.shape
    gW[:, :] = 0.0
    gb[:] = 0.0
    loss = 0.0
    for k in range(lo, hi):
        i = rows[start + k] if use_rows else start + k
        for o in range(n_out):
            s = 0.0
            for d in range(n_in):
                s += X[i, d] * W64[o, d]
            if has_bias:
                s += b[o]
            r = s - T[i, o]
            loss += r * r
            gb[o] += r
            for d in range(n_in):
                gW[o, d] += r * X[i, d]
    return loss


@kernel(inline=True)
def _mse_sums(X, T, W, b, has_bias, rows, use_rows, start, n, chunk_rows, W64, gW, gb, loss_p, gW_p, gb_p):
    """Loss and gradient sums over a batch of ``n`` rows, X read once.

    Chunk ``c`` fills ``loss_p[c]``, ``gW_p[c]``, ``gb_p[c]`` (in parallel in
    a ``parallel`` caller); the partials are then added in chunk order into
    ``gW`` and ``gb``.  Returns ``Σ r²``.
    """
    n_out, n_in = W.shape
    n_chunks = (n + chunk_rows - 1) // chunk_rows
    for o in range(n_out):
        for d in range(n_in):
            W64[o, d] = W[o, d]
    for c in prange(n_chunks):
        lo = c * chunk_rows
        hi = min(lo + chunk_rows, n)
        loss_p[c] = _rows_partials(X, T, W64, b, has_bias, rows, use_rows, start, lo, hi, gW_p[c], gb_p[c])
    loss = 0.0
    gW[:, :] = 0.0
    gb[:] = 0.0
    for c in range(n_chunks):
        loss += loss_p[c]
        for o in range(n_out):
            gb[o] += gb_p[c, o]
            for d in range(n_in):
                gW[o, d] += gW_p[c, o, d]
    return loss


def _mse_grad(X, T, W, b, has_bias, chunk_rows, work, dW, db):
    """Analytic MSE gradient *sums*: ``dW = Σ (Y−T)ᵀX``, ``db = Σ (Y−T)``.

    Returns ``Σ (Y−T)²``.  The caller scales: ``c = 2/(N·O)`` for the mean
    loss, ``c = 2`` for the sum.  ``dW`` (O, D) and ``db`` (O,) are float64.
    """
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows
    W64, gW, gb, loss_p, gW_p, gb_p = _carve(work, n_out, n_in, n_chunks)
    no_rows = np.empty(0, dtype=np.int64)
    loss = _mse_sums(X, T, W, b, has_bias, no_rows, False, 0, n_rows, chunk_rows, W64, gW, gb, loss_p, gW_p, gb_p)
    dW[:, :] = gW
    db[:] = gb
    return loss


mse_grad, mse_grad_parallel = kernel_pair(_mse_grad)


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
    _, _, _, _, gW_p, gb_p = _carve(work, n_out, n_in, n_chunks)
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
@kernel
def _sgd_value(p, g, buf, has_buf, hp):
    """New (parameter, momentum buffer) for one element; all float64."""
    momentum = hp[HP_MOMENTUM]
    g = g + hp[HP_WEIGHT_DECAY] * p
    if momentum != 0.0:
        if has_buf:
            buf = momentum * buf + (1.0 - hp[HP_DAMPENING]) * g
        else:
            buf = g
        if hp[HP_NESTEROV] != 0.0:
            g = g + momentum * buf
        else:
            g = buf
    return p - hp[HP_LR] * g, buf


@kernel
def _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, commit):
    """Apply the update when ``commit``; otherwise only check it stays finite.

    Running the same arithmetic twice (check, then write) keeps W, b and the
    momentum buffers untouched when any new value would be NaN/Inf, without a
    scratch copy of the parameters.
    """
    n_out, n_in = W.shape
    use_buf = hp[HP_MOMENTUM] != 0.0
    limit = hp[HP_MAX]
    for o in range(n_out):
        for d in range(n_in):
            buf = bufW[o, d] if use_buf and has_buf else 0.0
            p, buf = _sgd_value(np.float64(W[o, d]), scale * gW[o, d], np.float64(buf), has_buf, hp)
            if commit:
                W[o, d] = p
                if use_buf:
                    bufW[o, d] = buf
            elif not abs(p) <= limit:  # also catches NaN
                return False
    if has_bias:
        for o in range(n_out):
            buf = bufb[o] if use_buf and has_buf else 0.0
            p, buf = _sgd_value(np.float64(b[o]), scale * gb[o], np.float64(buf), has_buf, hp)
            if commit:
                b[o] = p
                if use_buf:
                    bufb[o] = buf
            elif not abs(p) <= limit:
                return False
    return True


@kernel
def apply_update(W, b, has_bias, gW, gb, scale, bufW, bufb, hp, state):
    """Apply SGD with the given float64 gradient ``scale·(gW, gb)``.

    The check-then-write of :func:`_sgd_pass`: returns ``NONFINITE_LOSS`` if
    the gradient holds NaN/Inf, ``NONFINITE_UPDATE`` if the update would,
    ``OK`` after writing.
    """
    for o in range(gW.shape[0]):
        if not np.isfinite(gb[o]):
            return NONFINITE_LOSS
        for d in range(gW.shape[1]):
            if not np.isfinite(gW[o, d]):
                return NONFINITE_LOSS
    has_buf = state[ST_HAS_BUF] != 0
    if not _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, False):
        return NONFINITE_UPDATE
    _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, True)
    if hp[HP_MOMENTUM] != 0.0:
        state[ST_HAS_BUF] = 1
    return OK


# --------------------------------------------------------------------------
# fused step and fit
# --------------------------------------------------------------------------
@kernel(inline=True)
def _step_rows(X, T, W, b, has_bias, bufW, bufb, hp, state, rows, use_rows, start, n, chunk_rows, W64, gW, gb, loss_p, gW_p, gb_p):
    """Forward, loss, gradient and SGD update on one batch; X is read once.

    Returns ``(loss, status)``: the loss is measured before the update and
    reduced as ``hp[HP_SUM]`` asks.  On a non-OK status nothing is written.
    """
    sse_ = _mse_sums(X, T, W, b, has_bias, rows, use_rows, start, n, chunk_rows, W64, gW, gb, loss_p, gW_p, gb_p)
    n_out = W.shape[0]
    if hp[HP_SUM] != 0.0:
        loss = sse_
        scale = 2.0
    else:
        loss = sse_ / (n * n_out)
        scale = 2.0 / (n * n_out)
    if not np.isfinite(sse_):
        return loss, NONFINITE_LOSS
    has_buf = state[ST_HAS_BUF] != 0
    if not _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, False):
        return loss, NONFINITE_UPDATE
    _sgd_pass(W, b, has_bias, gW, gb, scale, bufW, bufb, has_buf, hp, True)
    if hp[HP_MOMENTUM] != 0.0:
        state[ST_HAS_BUF] = 1
    return loss, OK


def _fused_step(X, T, W, b, has_bias, bufW, bufb, hp, state, chunk_rows, work):
    """One full-batch SGD step on (X, T), updating W, b (and momentum) in place.

    Returns ``(loss before the update, status)``.
    """
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    W64, gW, gb, loss_p, gW_p, gb_p = _carve(work, n_out, n_in, (n_rows + chunk_rows - 1) // chunk_rows)
    no_rows = np.empty(0, dtype=np.int64)
    return _step_rows(
        X, T, W, b, has_bias, bufW, bufb, hp, state, no_rows, False, 0, n_rows, chunk_rows, W64, gW, gb, loss_p, gW_p, gb_p
    )


fused_step, fused_step_parallel = kernel_pair(_fused_step)


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


def _fit_steps(X, T, W, b, has_bias, bufW, bufb, hp, state, perm, batch_size, shuffle, seed, chunk_rows, work, losses):
    """Run ``len(losses)`` SGD steps in one call, writing each step's loss.

    Batches of ``batch_size`` rows walk through the data; an epoch ends after
    its last (possibly shorter) batch.  With ``shuffle`` each epoch visits the
    rows in the order ``epoch_permutation(seed, epoch)``.  ``state`` carries
    (momentum-initialised, epoch, position) so that a fit can resume across
    calls.  Returns ``(steps done, status)``; on a non-OK status the failing
    step wrote nothing and ``losses[steps done]`` holds its loss.
    """
    n_rows = X.shape[0]
    n_out, n_in = W.shape
    W64, gW, gb, loss_p, gW_p, gb_p = _carve(work, n_out, n_in, (batch_size + chunk_rows - 1) // chunk_rows)
    for s in range(losses.shape[0]):
        pos = state[ST_POS]
        if shuffle and pos == 0:
            epoch_permutation(seed, state[ST_EPOCH], perm)
        n = min(batch_size, n_rows - pos)
        loss, status = _step_rows(
            X, T, W, b, has_bias, bufW, bufb, hp, state, perm, shuffle, pos, n, chunk_rows, W64, gW, gb, loss_p, gW_p, gb_p
        )
        losses[s] = loss
        if status != OK:
            return s, status
        pos += n
        if pos >= n_rows:
            pos = 0
            state[ST_EPOCH] += 1
        state[ST_POS] = pos
    return losses.shape[0], OK


fit_steps, fit_steps_parallel = kernel_pair(_fit_steps)
