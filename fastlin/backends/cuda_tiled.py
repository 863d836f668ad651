"""Tiled CUDA kernels (the "tiled" launch plan): TS×TS shared-memory tiles, any shape.

A step is four launches: :func:`residual`, :func:`grad_partials`,
:func:`update_check`, :func:`update_apply`; the last two also apply a
gradient the user gives (``apply_update``).  :func:`forward` and
:func:`model_sse` use the same tiles for every shape.

Accuracy
    Every product and sum is formed in float64 (values converted on load,
    rounded once on store).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .abi import (
    CNT_BAD,
    CNT_BAD_GRAD,
    CNT_DONE,
    CNT_HAS_BUF,
    CNT_POS,
    CNT_STATUS,
    CNT_STEP,
    NONFINITE_LOSS,
    NONFINITE_UPDATE,
    OK,
)
from .cuda_config import CACHE, TILE_SIZE, TPB, TS, TS2
from .cuda_device import (
    C_ADVANCE,
    C_BATCH,
    C_KROWS,
    C_NROWS,
    C_SHUFFLE,
    _block_sum,
    _new_value,
    _write_value,
    advance,
    scheduled_lr,
    step_taken,
    uses_buffers,
)


@cuda.jit(device=True)
def _xw_tile(X, W, rows, use_rows, start, n, xs, ws):
    """``Σ_d X[row(k), d] · W[o, d]`` (float64) for this thread's batch row
    ``k = blockIdx.x·TS + threadIdx.y`` and output ``o = blockIdx.y·TS +
    threadIdx.x``; out-of-range (k, o) get a meaningless value.  (Rows go on
    the grid's x axis, which allows 2³¹ blocks; y allows only 65,535.)

    X and W go through shared TS×TS tiles ``xs``, ``ws`` (float64), so each
    element is read from global memory once per block.  The sum runs over d
    in order, as on the CPU.  Every thread of the block must call it.
    """
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n_out, n_in = W.shape
    k = cuda.blockIdx.x * TS + ty
    o = cuda.blockIdx.y * TS + ty  # the W row this thread loads
    acc = 0.0
    for d0 in range(0, n_in, TS):
        d = d0 + tx
        v = 0.0
        if k < n and d < n_in:
            i = rows[start + k] if use_rows else start + k
            v = np.float64(X[i, d])
        xs[ty * (TS + 1) + tx] = v
        w = 0.0
        if o < n_out and d < n_in:
            w = np.float64(W[o, d])
        ws[ty * (TS + 1) + tx] = w
        cuda.syncthreads()
        for j in range(min(TS, n_in - d0)):
            acc += xs[ty * (TS + 1) + j] * ws[tx * (TS + 1) + j]
        cuda.syncthreads()
    return acc


@cuda.jit(cache=CACHE)
def forward(X, W, b, has_bias, Y):
    """``Y = X·Wᵀ + b``, float64 sums, rounded once into Y (N, O).

    Grid (ceil(N/TS), ceil(O/TS)) of TS×TS blocks.
    """
    xs = cuda.shared.array(TILE_SIZE, np.float64)
    ws = cuda.shared.array(TILE_SIZE, np.float64)
    no_rows = cuda.local.array(1, np.int64)
    acc = _xw_tile(X, W, no_rows, False, 0, X.shape[0], xs, ws)
    k = cuda.blockIdx.x * TS + cuda.threadIdx.y
    o = cuda.blockIdx.y * TS + cuda.threadIdx.x
    if k < X.shape[0] and o < W.shape[0]:
        if has_bias:
            acc += b[o]
        Y[k, o] = acc


@cuda.jit(cache=CACHE)
def model_sse(X, T, W, b, has_bias, loss_p):
    """Partial sums of ``(X·Wᵀ + b − T)²`` without storing the prediction.

    Grid (ceil(N/TS), ceil(O/TS)) of TS×TS blocks; block (bx, by) writes
    ``loss_p[bx + by·gridDim.x]``.
    """
    xs = cuda.shared.array(TILE_SIZE, np.float64)
    ws = cuda.shared.array(TILE_SIZE, np.float64)
    red = cuda.shared.array(TS2, np.float64)
    no_rows = cuda.local.array(1, np.int64)
    acc = _xw_tile(X, W, no_rows, False, 0, X.shape[0], xs, ws)
    k = cuda.blockIdx.x * TS + cuda.threadIdx.y
    o = cuda.blockIdx.y * TS + cuda.threadIdx.x
    r2 = 0.0
    if k < X.shape[0] and o < W.shape[0]:
        if has_bias:
            acc += b[o]
        r = acc - T[k, o]
        r2 = r * r
    total = _block_sum(r2, red, TS2)
    if cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0:
        loss_p[cuda.blockIdx.x + cuda.blockIdx.y * cuda.gridDim.x] = total


@cuda.jit(cache=CACHE)
def residual(X, T, W, b, has_bias, counters, cfg, perm, R, loss_p):
    """First kernel of a tiled step: ``R[k, o] = x·Wᵀ + b − t`` (float64)
    for the batch rows, and per-block partials of ``Σ R²`` into ``loss_p``
    (one per block, row-major over the grid).

    Grid (ceil(batch/TS), ceil(O/TS)) of TS×TS blocks.  Also clears the
    update-check flags of the step.  Does nothing once a fit has failed.
    """
    xs = cuda.shared.array(TILE_SIZE, np.float64)
    ws = cuda.shared.array(TILE_SIZE, np.float64)
    red = cuda.shared.array(TS2, np.float64)
    if counters[CNT_STATUS] != OK:
        return
    pos = counters[CNT_POS]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - pos)
    shuffle = cfg[C_SHUFFLE] != 0
    first = cuda.blockIdx.x == 0 and cuda.blockIdx.y == 0 and cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0
    if first:
        counters[CNT_BAD] = 0
        counters[CNT_BAD_GRAD] = 0
    acc = _xw_tile(X, W, perm, shuffle, pos, n, xs, ws)
    k = cuda.blockIdx.x * TS + cuda.threadIdx.y
    o = cuda.blockIdx.y * TS + cuda.threadIdx.x
    r2 = 0.0
    if k < n and o < W.shape[0]:
        i = perm[pos + k] if shuffle else pos + k
        if has_bias:
            acc += b[o]
        r = acc - T[i, o]
        R[k, o] = r
        r2 = r * r
    total = _block_sum(r2, red, TS2)
    if cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0:
        loss_p[cuda.blockIdx.x + cuda.blockIdx.y * cuda.gridDim.x] = total


@cuda.jit(cache=CACHE)
def grad_partials(X, R, counters, cfg, perm, part):
    """Tiled: ``part[s, o·D + d] = Σ_k R[k, o] · X[row(k), d]`` and
    ``part[s, O·D + o] = Σ_k R[k, o]`` over the batch rows of split ``s``.

    ``R`` (batch, O) is the residual (any float dtype: backward passes dY).
    Grid (ceil(D/TS), ceil(O/TS), splits) of TS×TS blocks; split ``s`` takes
    batch rows ``s·cfg[C_KROWS] ..``.  Sums run over rows in order.
    """
    rt = cuda.shared.array(TILE_SIZE, np.float64)
    xt = cuda.shared.array(TILE_SIZE, np.float64)
    if counters[CNT_STATUS] != OK:
        return
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n_out = R.shape[1]
    n_in = X.shape[1]
    od = n_out * n_in
    n_el = od + n_out
    pos = counters[CNT_POS]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - pos)
    shuffle = cfg[C_SHUFFLE] != 0
    d0 = cuda.blockIdx.x * TS
    o0 = cuda.blockIdx.y * TS
    split = cuda.blockIdx.z
    lo = split * cfg[C_KROWS]
    hi = min(lo + cfg[C_KROWS], n)
    acc = 0.0
    acc_b = 0.0
    for k0 in range(lo, hi, TS):
        k = k0 + ty
        rv = 0.0
        xv = 0.0
        if k < hi:
            if o0 + tx < n_out:
                rv = np.float64(R[k, o0 + tx])
            if d0 + tx < n_in:
                i = perm[pos + k] if shuffle else pos + k
                xv = np.float64(X[i, d0 + tx])
        rt[ty * (TS + 1) + tx] = rv  # rt[k][o]
        xt[ty * (TS + 1) + tx] = xv  # xt[k][d]
        cuda.syncthreads()
        for j in range(min(TS, hi - k0)):
            r = rt[j * (TS + 1) + ty]
            acc += r * xt[j * (TS + 1) + tx]
            acc_b += r
        cuda.syncthreads()
    o = o0 + ty
    d = d0 + tx
    if o < n_out:
        if d < n_in:
            part[split * n_el + o * n_in + d] = acc
        if cuda.blockIdx.x == 0 and tx == 0:
            part[split * n_el + od + o] = acc_b


@cuda.jit(cache=CACHE)
def update_check(
    loss_p,
    n_loss,
    part,
    n_parts,
    fixed_scale,
    W,
    b,
    has_bias,
    slots_w,
    slots_b,
    counters,
    hyper,
    reduce_sum,
    limit,
    cfg,
    scratch,
    losses,
):
    """The tiled step and :func:`fastlin.backends.cuda_ops.apply_update`,
    first half: add the gradient partials (``part``, n_parts × E, in order),
    compute every new parameter and slot into ``scratch`` [new values (E) |
    new slots (k·E) | sse (1)] and flag ``counters[CNT_BAD]`` if one is not
    acceptable (``counters[CNT_BAD_GRAD]`` if a gradient is NaN/Inf).

    ``fixed_scale > 0`` scales the gradient by it (a gradient given by the
    user); otherwise by the MSE factor of the current batch.  Block 0 also
    adds the ``n_loss`` partials of ``loss_p`` and records the loss (none for
    a user's gradient).  1-D grid over E.
    """
    red = cuda.shared.array(TPB, np.float64)
    if counters[CNT_STATUS] != OK:
        return
    hp = hyper[0]
    n_out, n_in = W.shape
    od = n_out * n_in
    n_el = od + n_out
    n_upd = n_el if has_bias else od
    n_sse = (1 + slots_w.shape[0]) * n_el
    n = min(cfg[C_BATCH], cfg[C_NROWS] - counters[CNT_POS])
    if fixed_scale > 0.0:
        scale = fixed_scale
    elif reduce_sum:
        scale = 2.0
    else:
        scale = 2.0 / (n * n_out)
    if cuda.blockIdx.x == 0:
        s = 0.0
        for c in range(cuda.threadIdx.x, n_loss, TPB):
            s += loss_p[c]
        sse = _block_sum(s, red, TPB)
        if cuda.threadIdx.x == 0:
            scratch[n_sse] = sse
            if n_loss > 0:
                losses[counters[CNT_DONE]] = sse if reduce_sum else sse / (n * n_out)
    e = cuda.grid(1)
    if e < n_upd:
        grad = 0.0
        for c in range(n_parts):
            grad += part[c * n_el + e]
        if not math.isfinite(grad):
            counters[CNT_BAD_GRAD] = 1
        step = counters[CNT_STEP]
        has_buf = counters[CNT_HAS_BUF] != 0
        lr = scheduled_lr(hp, step)
        if not _new_value(
            W, b, slots_w, slots_b, hp, lr, step, has_buf, limit, e, od, n_in, scale * grad, scratch, n_el
        ):
            counters[CNT_BAD] = 1


@cuda.jit(cache=CACHE)
def update_apply(W, b, has_bias, slots_w, slots_b, counters, hyper, cfg, grad_is_loss, scratch):
    """Second half: decide the status (NaN/Inf loss — or, with
    ``grad_is_loss``, a NaN/Inf gradient — first, then an unacceptable
    update), write the checked update when OK, and record the status and
    the step in ``counters``.  1-D grid over E.  Nothing reads what thread
    0 changes in ``counters`` here except later launches.
    """
    if counters[CNT_STATUS] != OK:
        return
    n_out, n_in = W.shape
    od = n_out * n_in
    n_el = od + n_out
    n_upd = n_el if has_bias else od
    if not math.isfinite(scratch[(1 + slots_w.shape[0]) * n_el]) or (grad_is_loss and counters[CNT_BAD_GRAD] != 0):
        status = NONFINITE_LOSS
    elif counters[CNT_BAD] != 0:
        status = NONFINITE_UPDATE
    else:
        status = OK
    e = cuda.grid(1)
    if status == OK and e < n_upd:
        _write_value(W, b, slots_w, slots_b, e, od, n_in, scratch, n_el)
    if e == 0:
        if status == OK:
            step_taken(counters, uses_buffers(hyper[0]))
            if cfg[C_ADVANCE] != 0:
                advance(counters, min(cfg[C_BATCH], cfg[C_NROWS] - counters[CNT_POS]), cfg[C_NROWS])
            counters[CNT_DONE] += 1
        else:
            counters[CNT_STATUS] = status
