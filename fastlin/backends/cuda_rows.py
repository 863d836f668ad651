"""Row-streaming CUDA kernels (the "rows" launch plan): row tiles, X read once per step.

For layers of at most ``min(OMAX, TPB)`` outputs and ``ACC·TPB``
parameters.  Each block streams a chunk of rows through shared memory
(128-bit loads where the rows are 16-byte aligned) into per-block partial
sums; one block then adds them and applies the update
(:func:`step_update`), or one block runs a whole small fit
(:func:`fit_steps`).

Accuracy
    These kernels follow the CPU kernels: a dot product over one row is
    formed in the data's dtype (in ``parts`` pieces added in float64), the
    residual, the loss and every long sum in float64, and gradient
    contributions in the data's dtype over runs of at most TILE_ROWS rows,
    flushed into float64 sums -- one conversion per gradient element and
    tile, not one per multiply-add.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .abi import CNT_DONE, CNT_EPOCH, CNT_HAS_BUF, CNT_POS, CNT_STATUS, CNT_STEP, NONFINITE_LOSS, NONFINITE_UPDATE, OK
from .cuda_config import ACC, CACHE, ROWS_BOUNDS, TEAM_MAX, TILE_ROWS, TPB, WS_SIZE, XS_SIZE
from .cuda_device import (
    C_ADVANCE,
    C_BATCH,
    C_GROUPS,
    C_NROWS,
    C_SHUFFLE,
    C_VEC,
    _block_sum,
    _new_value,
    _write_value,
    advance,
    scheduled_lr,
    step_taken,
    uses_buffers,
)
from .cuda_loads import copy16, vec_width
from .cuda_shuffle import _half_bits, epoch_permutation


@cuda.jit(device=True)
def _rows_partials(
    X,
    T,
    W,
    b,
    has_bias,
    rows,
    use_rows,
    start,
    lo,
    hi,
    groups,
    vec,
    c,
    loss_p,
    loss_at,
    part,
    part_at,
    xs,
    ws,
    rs,
    ridx,
    red,
):
    """Block level: loss and gradient sums over batch rows ``lo..hi``.

    Batch row ``k`` is data row ``rows[start + k]`` when ``use_rows`` (a
    shuffled mini-batch), else ``start + k``.  With ``r = x·Wᵀ + b − t``
    writes the partials of chunk ``c`` (``loss_at``, ``part_at``: where
    they start in those arrays; fused_step passes one array for both)::

        loss_p[loss_at + c]            = Σ r²
        part[part_at + c·E + o·D + d]  = Σ r_o · x_d
        part[part_at + c·E + O·D + o]  = Σ r_o

    ``groups == 0`` computes the loss only.  W is copied into shared ``ws``
    once; rows then go in tiles of ``tile_rows`` (at most TILE_ROWS, as many
    as fit ``xs``, and at most TPB/O):

    1. the block loads the tile into shared ``xs`` -- consecutive threads
       take consecutive 16-byte pieces (``vec``: one ``LDG.E.128`` each,
       see :mod:`.cuda_loads`) or elements, so every warp load is
       coalesced and X is read from global memory once;
    2. ``parts`` threads per (row, output) form the dot product from
       shared memory in the data's dtype; their parts are added in float64,
       the residual ``r`` (float64) gives the loss and goes to shared ``rs``
       rounded to the data's dtype, as on the CPU;
    3. each thread adds the tile into the gradient elements it owns (at
       most ACC), in the data's dtype (a run of at most TILE_ROWS rows), and
       flushes that run into its float64 sums.  When E < TPB the threads
       split the tile's rows into ``groups`` interleaved groups, added in
       order at the end.

    Rows of ``xs`` and ``ws`` are padded to D + 1 elements, so that threads
    reading one column of different rows hit different banks.  Shared
    scratch: ``xs`` (XS_SIZE), ``ws`` (WS_SIZE), ``rs`` (TPB), all of X's
    dtype; ``ridx`` (TILE_ROWS, int64); ``red`` (TPB, float64).
    """
    t = cuda.threadIdx.x
    n_out, n_in = W.shape
    od = n_out * n_in
    n_el = od + n_out
    stride = n_in + 1
    zero = X.dtype.type(0.0)
    for idx in range(t, od, TPB):
        o = idx // n_in
        ws[idx + o] = W[o, idx - o * n_in]  # ws[o·stride + d]
    tile_rows = min(TILE_ROWS, XS_SIZE // stride, TPB // n_out)
    parts = TPB // (tile_rows * n_out)
    width = vec_width(X)
    n_vec = n_in // width
    # The float64 sums: a register when a thread owns one element (E <= TPB),
    # else the thread's own entries of ``part`` (no register array: it would
    # cost the registers that 50% occupancy needs).
    own = part_at + c * n_el
    acc0 = 0.0
    lanes = min(n_el, TPB)
    g = t // lanes
    e0 = t - g * lanes
    if n_el > TPB and groups == 1:
        for k in range(ACC):
            e = e0 + k * TPB
            if e < n_el:
                part[own + e] = 0.0
    loss = 0.0
    for tile in range(lo, hi, tile_rows):
        nr = min(tile_rows, hi - tile)
        # (thread roles are recomputed per tile: cheaper than the registers)
        p = t // parts  # this thread's (row, output) pair of step 2
        q = t - p * parts
        lanes = min(n_el, TPB)
        g = t // lanes  # this thread's row group of step 3 ...
        e0 = t - g * lanes  # ... and its first gradient element
        if t < nr:
            k = tile + t
            ridx[t] = rows[start + k] if use_rows else start + k
        cuda.syncthreads()  # ridx (and ws, the first time)
        if vec:
            for v in range(t, nr * n_vec, TPB):
                j = v // n_vec
                col = (v - j * n_vec) * width
                copy16(X, ridx[j], col, xs, j * stride + col)
        else:
            for v in range(t, nr * n_in, TPB):
                j = v // n_in
                d = v - j * n_in
                xs[j * stride + d] = X[ridx[j], d]
        cuda.syncthreads()
        s = zero
        if p < nr * n_out:
            j = p // n_out
            o = p - j * n_out
            for d in range(q, n_in, parts):
                s += xs[j * stride + d] * ws[o * stride + d]
        red[t] = s
        cuda.syncthreads()
        if q == 0 and p < nr * n_out:
            j = p // n_out
            o = p - j * n_out
            dot = 0.0
            for qq in range(parts):
                dot += red[t + qq]
            if has_bias:
                dot += b[o]
            r = dot - T[ridx[j], o]
            rs[p] = r  # rs[j·O + o], rounded to X's dtype
            loss += r * r
        cuda.syncthreads()
        if g < groups:
            for k in range(ACC):
                e = e0 + k * TPB
                if e < n_el:
                    a = zero
                    if e < od:
                        o = e // n_in
                        d = e - o * n_in
                        for j in range(g, nr, groups):
                            a += rs[j * n_out + o] * xs[j * stride + d]
                    else:
                        o = e - od
                        for j in range(g, nr, groups):
                            a += rs[j * n_out + o]
                    if n_el > TPB:
                        part[own + e] += a
                    else:
                        acc0 += a
        cuda.syncthreads()  # xs, rs and ridx are overwritten by the next tile
    total = _block_sum(loss, red, TPB)
    lanes = min(n_el, TPB)
    g = t // lanes
    e0 = t - g * lanes
    if t == 0:
        loss_p[loss_at + c] = total
    if groups == 1:
        if n_el <= TPB and g == 0:
            part[own + e0] = acc0
    elif groups > 1:
        # groups > 1 only when E <= TPB/2: one element per thread.
        red[t] = acc0 if g < groups else 0.0
        cuda.syncthreads()
        if g == 0:
            s2 = 0.0
            for gg in range(groups):
                s2 += red[gg * lanes + e0]
            part[own + e0] = s2
        cuda.syncthreads()


@cuda.jit(device=True)
def _team_size(n_parts, n_upd):
    """Threads that add one element's partials together in :func:`_finish_step`:
    a power of two up to TEAM_MAX, while at most 4 rounds of the block cover
    the elements (and never more threads than partials)."""
    tm = 1
    while tm * 2 <= TEAM_MAX and tm * 2 <= n_parts and tm * 2 * n_upd <= 4 * TPB:
        tm *= 2
    return tm


@cuda.jit(device=True)
def _finish_step(
    W,
    b,
    has_bias,
    slots_w,
    slots_b,
    counters,
    hp,
    reduce_sum,
    limit,
    cfg,
    loss_p,
    part,
    n_parts,
    n,
    scratch,
    losses,
    red,
):
    """Block level: add the partials, check the update, write it (or
    nothing), and record the loss and status in ``counters``.

    Called by :func:`step_update` and by every step of
    :func:`fit_steps`.  Each element's ``n_parts`` partials are added by a
    team of :func:`_team_size` threads (each a fixed strided share, then a
    fixed shared-memory tree), so a long list of partials is not a serial
    tail and the result does not depend on scheduling.  Returns the status.
    """
    t = cuda.threadIdx.x
    n_out, n_in = W.shape
    od = n_out * n_in
    n_el = od + n_out
    n_upd = n_el if has_bias else od
    s = 0.0
    for c in range(t, n_parts, TPB):
        s += loss_p[c]
    sse = _block_sum(s, red, TPB)
    if reduce_sum:
        loss = sse
        scale = 2.0
    else:
        loss = sse / (n * n_out)
        scale = 2.0 / (n * n_out)
    step = counters[CNT_STEP]
    lr = scheduled_lr(hp, step)
    has_buf = counters[CNT_HAS_BUF] != 0
    bad = 0
    tm = _team_size(n_parts, n_upd)
    per_round = TPB // tm
    slot = t // tm
    m = t - slot * tm
    for e_first in range(0, n_upd, per_round):
        e = e_first + slot
        grad = 0.0
        if e < n_upd:
            for c in range(m, n_parts, tm):
                grad += part[c * n_el + e]
        if tm > 1:
            red[t] = grad
            cuda.syncthreads()
            half = tm // 2
            while half > 0:
                if m < half:
                    red[t] += red[t + half]
                cuda.syncthreads()
                half //= 2
            grad = red[t]
            cuda.syncthreads()  # red is written again by the next round
        if (
            m == 0
            and e < n_upd
            and not _new_value(
                W, b, slots_w, slots_b, hp, lr, step, has_buf, limit, e, od, n_in, scale * grad, scratch, n_el
            )
        ):
            bad = 1
    any_bad = cuda.syncthreads_or(bad)
    if not math.isfinite(sse):
        status = NONFINITE_LOSS
    elif any_bad:
        status = NONFINITE_UPDATE
    else:
        status = OK
    if status == OK:
        for e in range(t, n_upd, TPB):
            _write_value(W, b, slots_w, slots_b, e, od, n_in, scratch, n_el)
    if t == 0:
        losses[counters[CNT_DONE]] = loss
        if status == OK:
            step_taken(counters, uses_buffers(hp))
            if cfg[C_ADVANCE] != 0:
                advance(counters, n, cfg[C_NROWS])
            counters[CNT_DONE] += 1
        else:
            counters[CNT_STATUS] = status
    cuda.syncthreads()  # the next step (fit_steps) reads counters
    return status


@cuda.jit(cache=CACHE, **ROWS_BOUNDS)
def mse_grad(X, T, W, b, has_bias, chunk_rows, groups, vec, loss_p, part):
    """Partial MSE sums of chunk ``blockIdx.x`` (row streaming; see
    :func:`_rows_partials`).  Grid: one block of TPB threads per chunk of
    ``chunk_rows`` rows.  ``loss_p`` float64 (C,), ``part`` float64 (C·E,);
    :func:`reduce_grad` adds them up.  ``groups == 0``: loss only; ``vec``:
    X's rows are 16-byte aligned (128-bit loads).
    """
    xs = cuda.shared.array(XS_SIZE, X.dtype)
    ws = cuda.shared.array(WS_SIZE, X.dtype)
    rs = cuda.shared.array(TPB, X.dtype)
    ridx = cuda.shared.array(TILE_ROWS, np.int64)
    red = cuda.shared.array(TPB, np.float64)
    c = cuda.blockIdx.x
    lo = c * chunk_rows
    hi = min(lo + chunk_rows, X.shape[0])
    _rows_partials(
        X, T, W, b, has_bias, ridx, False, 0, lo, hi, groups, vec, c, loss_p, 0, part, 0, xs, ws, rs, ridx, red
    )


@cuda.jit(cache=CACHE, **ROWS_BOUNDS)
def step_partials(X, T, W, b, has_bias, counters, cfg, perm, shuffle, groups, vec, chunk_rows, work):
    """First kernel of a row-streaming step on the current batch: the partials.

    Grid: one block of TPB threads per chunk of ``chunk_rows`` batch rows;
    block ``c`` writes its loss and gradient partials (see
    :func:`_rows_partials`) into ``work`` = [loss_p (C) | part (C·E) |
    scratch]. The batch is rows ``pos..pos+n`` of the (shuffled, via
    ``perm``) data, ``pos = counters[CNT_POS]``.  Does nothing once
    ``counters[CNT_STATUS]`` is not OK, so a fit can queue its steps without
    waiting for each.  :func:`step_update` follows it.  The plan's fixed
    settings come as scalars (``shuffle``, ``groups``, ``vec``,
    ``chunk_rows``: ``cfg``'s C_SHUFFLE, C_GROUPS, C_VEC, C_CHUNK): values
    read from memory would stay in registers across the row loop, and the
    kernel would spill.
    """
    xs = cuda.shared.array(XS_SIZE, X.dtype)
    ws = cuda.shared.array(WS_SIZE, X.dtype)
    rs = cuda.shared.array(TPB, X.dtype)
    ridx = cuda.shared.array(TILE_ROWS, np.int64)
    red = cuda.shared.array(TPB, np.float64)
    if counters[CNT_STATUS] != OK:
        return
    c = cuda.blockIdx.x
    pos = counters[CNT_POS]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - pos)
    lo = c * chunk_rows
    hi = min(lo + chunk_rows, n)  # a short last batch leaves late chunks empty (zeros)
    _rows_partials(
        X,
        T,
        W,
        b,
        has_bias,
        perm,
        shuffle,
        pos,
        lo,
        hi,
        groups,
        vec,
        c,
        work,
        0,
        work,
        cuda.gridDim.x,
        xs,
        ws,
        rs,
        ridx,
        red,
    )


@cuda.jit(cache=CACHE)
def step_update(W, b, has_bias, slots_w, slots_b, counters, hyper, reduce_sum, limit, cfg, n_chunks, work, losses):
    """Second kernel of a row-streaming step, ONE block of TPB threads: add
    the ``n_chunks`` partials of :func:`step_partials` (:func:`_finish_step`:
    a fixed tree per element), check and apply the update of ``hyper[0]``'s
    rule, and record the loss in ``losses[counters[CNT_DONE]]`` and the
    status in ``counters``.  ``work`` = [loss_p (C) | part (C·E) | scratch
    ((1 + k)·E)].

    A kernel of its own rather than the last block of the first: the
    kernel boundary orders the partials before their reader (no fence, no
    counter), and the streaming kernel keeps to the 64 registers of 50%
    occupancy (with the update inside it, ptxas spilled).
    """
    red = cuda.shared.array(TPB, np.float64)
    if counters[CNT_STATUS] != OK:
        return
    n_el = W.shape[0] * W.shape[1] + W.shape[0]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - counters[CNT_POS])
    loss_p = work[0:n_chunks]
    part = work[n_chunks : n_chunks + n_chunks * n_el]
    scratch = work[n_chunks + n_chunks * n_el :]
    _finish_step(
        W,
        b,
        has_bias,
        slots_w,
        slots_b,
        counters,
        hyper[0],
        reduce_sum,
        limit,
        cfg,
        loss_p,
        part,
        n_chunks,
        n,
        scratch,
        losses,
        red,
    )


@cuda.jit(cache=CACHE)
def fit_steps(
    X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, reduce_sum, limit, cfg, perm, seed, n_steps, work, losses
):
    """``n_steps`` optimiser steps in ONE launch of ONE block (small problems).

    Twin of :func:`fastlin.backends.cpu.fit_steps`: batches of
    ``cfg[C_BATCH]`` rows walk through the data; with ``cfg[C_SHUFFLE]``
    the block's threads draw each epoch's order with :func:`epoch_permutation`.
    ``work`` = [loss_p (1) | part (E) | scratch ((1 + k)·E)].  Stops at the
    first non-OK status (recorded in ``counters``).
    """
    xs = cuda.shared.array(XS_SIZE, X.dtype)
    ws = cuda.shared.array(WS_SIZE, X.dtype)
    rs = cuda.shared.array(TPB, X.dtype)
    ridx = cuda.shared.array(TILE_ROWS, np.int64)
    red = cuda.shared.array(TPB, np.float64)
    t = cuda.threadIdx.x
    n_out, n_in = W.shape
    n_el = n_out * n_in + n_out
    loss_p = work[0:1]
    part = work[1 : 1 + n_el]
    scratch = work[1 + n_el :]
    n_rows = cfg[C_NROWS]
    shuffle = cfg[C_SHUFFLE] != 0
    for _ in range(n_steps):
        if counters[CNT_STATUS] != OK:
            return
        pos = counters[CNT_POS]
        if shuffle and pos == 0:
            # the block's threads draw the order together (every thread
            # reads the same pos, so all of them reach the barrier)
            epoch_permutation(seed, counters[CNT_EPOCH], _half_bits(n_rows), perm, t, TPB)
            cuda.syncthreads()
        n = min(cfg[C_BATCH], n_rows - pos)
        _rows_partials(
            X,
            T,
            W,
            b,
            has_bias,
            perm,
            shuffle,
            pos,
            0,
            n,
            cfg[C_GROUPS],
            cfg[C_VEC] != 0,
            0,
            loss_p,
            0,
            part,
            0,
            xs,
            ws,
            rs,
            ridx,
            red,
        )
        cuda.syncthreads()
        _finish_step(
            W,
            b,
            has_bias,
            slots_w,
            slots_b,
            counters,
            hyper[0],
            reduce_sum,
            limit,
            cfg,
            loss_p,
            part,
            1,
            n,
            scratch,
            losses,
            red,
        )
