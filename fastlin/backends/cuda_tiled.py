"""Tiled CUDA kernels (the "tiled" launch plan): shared-memory tiles, any shape.

A step is four launches: :func:`residual`, :func:`grad_partials`,
:func:`update_check`, :func:`update_apply`; the last two also apply a
gradient the user gives (``apply_update``).  :func:`forward` and
:func:`model_sse` use TS×TS tiles, one output per thread, for every shape.

The step's two products are register blocked: each thread of a TS×TS block
forms RB×RB outputs (a block covers BT×BT = 64×64 at the shipped 16×16,
``cuda_config.RB``/``BT``) from TS-deep slices of both operands staged in
shared memory in the data's dtype, so every shared load feeds RB
multiply-adds and the innermost loop is loads and FFMAs only
(``bench/gpu_static.py`` counts them; ``tests/cuda/test_gpu_static.py``
checks that no conversion or fp64 multiply-add is left there).  With CuPy
installed a fit's step forms the same two products with cuBLAS instead
(:mod:`.cuda_cublas`); ``update_check`` and ``update_apply`` are shared.

Accuracy
    :func:`forward`, :func:`model_sse`: every product and sum in float64
    (values converted on load, rounded once on store).
    :func:`residual`, :func:`grad_partials`: products in the data's dtype,
    summed in that dtype over runs of at most TILE_ROWS (64) terms along the
    summed axis (D for the residual, batch rows for the gradient), each run
    added into a float64 accumulator in order; the bias, the target and the
    loss are added in float64.  For float32 data this is the CPU's float32
    bound (its FLUSH_ROWS runs): each result within about ``64·2⁻²⁴`` of the
    sum of its terms' magnitudes, plus float64 rounding -- no longer
    float64-exact.  ``grad_partials`` rounds R (float64) to the data's dtype
    as it stages it.  float64 data keep float64 products throughout.  The
    order of every sum depends on the shape and the block size only, so
    results are bit-identical from run to run.
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
from .cuda_config import BLOCK_SLICE, BT, CACHE, RB, TILE_ROWS, TILE_SIZE, TILED_BOUNDS, TPB, TS, TS2
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

RB2 = RB * RB  # outputs per thread


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


@cuda.jit(cache=CACHE, **TILED_BOUNDS)
def residual(X, T, W, b, has_bias, counters, cfg, perm, R, loss_p):
    """First kernel of a tiled step: ``R[k, o] = x·Wᵀ + b − t`` (float64)
    for the batch rows, and per-block partials of ``Σ R²`` into ``loss_p``
    (one per block, row-major over the grid).

    Grid (ceil(batch/BT), ceil(O/BT)) of TS×TS blocks, BT = RB·TS: thread
    (tx, ty) forms the RB×RB outputs ``k = k0 + ty + i·TS``, ``o = o0 + tx +
    j·TS`` (interleaved, so the shared reads of a warp hit distinct banks
    and the stores of R coalesce).  Each TS-wide slice of d is staged in
    shared memory (X's and W's dtype); the products and runs of up to
    TILE_ROWS of them are summed in that dtype, each run added into a
    float64 accumulator.  Also clears the update-check flags of the step.
    Does nothing once a fit has failed.
    """
    xs = cuda.shared.array(BLOCK_SLICE, X.dtype)  # xs[c·(BT+1) + r] = X[row(k0 + r), d0 + c]
    ws = cuda.shared.array(BLOCK_SLICE, X.dtype)  # ws[c·(BT+1) + q] = W[o0 + q, d0 + c]
    ridx = cuda.shared.array(BT, np.int64)  # the data row of each batch row of the block, -1 past the batch
    red = cuda.shared.array(TS2, np.float64)
    run = cuda.local.array(RB2, X.dtype)
    acc = cuda.local.array(RB2, np.float64)
    xv = cuda.local.array(RB, X.dtype)
    wv = cuda.local.array(RB, X.dtype)
    if counters[CNT_STATUS] != OK:
        return
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n_out, n_in = W.shape
    pos = counters[CNT_POS]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - pos)
    shuffle = cfg[C_SHUFFLE] != 0
    if cuda.blockIdx.x == 0 and cuda.blockIdx.y == 0 and tx == 0 and ty == 0:
        counters[CNT_BAD] = 0
        counters[CNT_BAD_GRAD] = 0
    k0 = cuda.blockIdx.x * BT
    o0 = cuda.blockIdx.y * BT
    for r in range(ty * TS + tx, BT, TS2):
        k = k0 + r
        row = -1
        if k < n:
            row = perm[pos + k] if shuffle else pos + k
        ridx[r] = row
    for e in range(RB2):
        run[e] = 0
        acc[e] = 0.0
    cuda.syncthreads()
    for d0 in range(0, n_in, TS):
        d = d0 + tx
        for i in range(RB):
            q = ty + i * TS
            row = ridx[q]
            # if/else stores, not ``a if c else 0``: that would unify to float64
            if row >= 0 and d < n_in:
                xs[tx * (BT + 1) + q] = X[row, d]
            else:
                xs[tx * (BT + 1) + q] = 0
            if o0 + q < n_out and d < n_in:
                ws[tx * (BT + 1) + q] = W[o0 + q, d]
            else:
                ws[tx * (BT + 1) + q] = 0
        cuda.syncthreads()
        for c in range(TS):  # past D the slice holds zeros
            # unsigned indices: numba adds no negative-index wraparound (a
            # compare and a select per load) to the innermost loop
            xc = np.uint64(c * (BT + 1) + ty)
            wc = np.uint64(c * (BT + 1) + tx)
            for i in range(RB):
                xv[i] = xs[xc + np.uint64(i * TS)]
                wv[i] = ws[wc + np.uint64(i * TS)]
            for i in range(RB):
                for j in range(RB):
                    run[i * RB + j] += xv[i] * wv[j]
        cuda.syncthreads()
        if (d0 + TS) % TILE_ROWS == 0 or d0 + TS >= n_in:
            for e in range(RB2):
                acc[e] += run[e]
                run[e] = 0
    r2 = 0.0
    for i in range(RB):
        k = k0 + ty + i * TS
        if k < n:
            row = ridx[ty + i * TS]
            for j in range(RB):
                o = o0 + tx + j * TS
                if o < n_out:
                    r = acc[i * RB + j]
                    if has_bias:
                        r += b[o]
                    r -= T[row, o]
                    R[k, o] = r
                    r2 += r * r
    total = _block_sum(r2, red, TS2)
    if tx == 0 and ty == 0:
        loss_p[cuda.blockIdx.x + cuda.blockIdx.y * cuda.gridDim.x] = total


@cuda.jit(cache=CACHE, **TILED_BOUNDS)
def grad_partials(X, R, counters, cfg, perm, part):
    """Tiled: ``part[s, o·D + d] = Σ_k R[k, o] · X[row(k), d]`` and
    ``part[s, O·D + o] = Σ_k R[k, o]`` over the batch rows of split ``s``.

    ``R`` (batch, O) is the residual (any float dtype: backward passes dY);
    it is rounded to X's dtype as it is staged.  Grid (ceil(D/BT),
    ceil(O/BT), splits) of TS×TS blocks; thread (tx, ty) forms the RB×RB
    elements ``o = o0 + ty + i·TS``, ``d = d0 + tx + j·TS``.  Split ``s``
    takes batch rows ``s·cfg[C_KROWS] ..`` (a multiple of TS), staged TS
    rows at a time; the products and runs of up to TILE_ROWS rows are summed
    in X's dtype, each run added into a float64 accumulator, in row order.
    The bias sums come from the same staged R (blocks of the first column
    of the grid write them).
    """
    rt = cuda.shared.array(BLOCK_SLICE, X.dtype)  # rt[c·(BT+1) + q] = R[k0 + c, o0 + q]
    xt = cuda.shared.array(BLOCK_SLICE, X.dtype)  # xt[c·(BT+1) + p] = X[row(k0 + c), d0 + p]
    run = cuda.local.array(RB2, X.dtype)
    acc = cuda.local.array(RB2, np.float64)
    run_b = cuda.local.array(RB, X.dtype)
    acc_b = cuda.local.array(RB, np.float64)
    rv = cuda.local.array(RB, X.dtype)
    xv = cuda.local.array(RB, X.dtype)
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
    d0 = cuda.blockIdx.x * BT
    o0 = cuda.blockIdx.y * BT
    split = cuda.blockIdx.z
    lo = split * cfg[C_KROWS]
    hi = min(lo + cfg[C_KROWS], n)
    for e in range(RB2):
        run[e] = 0
        acc[e] = 0.0
    for i in range(RB):
        run_b[i] = 0
        acc_b[i] = 0.0
    for k0 in range(lo, hi, TS):
        k = k0 + ty
        row = -1
        if k < hi:
            row = perm[pos + k] if shuffle else pos + k
        for i in range(RB):
            q = tx + i * TS
            if row >= 0 and o0 + q < n_out:
                rt[ty * (BT + 1) + q] = R[k, o0 + q]
            else:
                rt[ty * (BT + 1) + q] = 0
            if row >= 0 and d0 + q < n_in:
                xt[ty * (BT + 1) + q] = X[row, d0 + q]
            else:
                xt[ty * (BT + 1) + q] = 0
        cuda.syncthreads()
        for c in range(TS):  # past the split the slice holds zeros
            rc = np.uint64(c * (BT + 1) + ty)  # unsigned: no wraparound (see residual)
            xc = np.uint64(c * (BT + 1) + tx)
            for i in range(RB):
                rv[i] = rt[rc + np.uint64(i * TS)]
                xv[i] = xt[xc + np.uint64(i * TS)]
            for i in range(RB):
                run_b[i] += rv[i]
                for j in range(RB):
                    run[i * RB + j] += rv[i] * xv[j]
        cuda.syncthreads()
        if (k0 - lo + TS) % TILE_ROWS == 0 or k0 + TS >= hi:
            for e in range(RB2):
                acc[e] += run[e]
                run[e] = 0
            for i in range(RB):
                acc_b[i] += run_b[i]
                run_b[i] = 0
    base = split * n_el
    for i in range(RB):
        o = o0 + ty + i * TS
        if o < n_out:
            for j in range(RB):
                d = d0 + tx + j * TS
                if d < n_in:
                    part[base + o * n_in + d] = acc[i * RB + j]
            if cuda.blockIdx.x == 0 and tx == 0:
                part[base + od + o] = acc_b[i]


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
