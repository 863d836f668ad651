"""CUDA kernels (``numba.cuda``): the twins of :mod:`fastlin.backends.cpu`.

Kernels only: no validation, no allocation.  :mod:`fastlin.backends.cuda_ops`
allocates, picks the launch configuration and launches.  The same operation
has the same name as on the CPU: ``forward``, ``sse``, ``model_sse``,
``mse_grad``, ``backward``, ``fused_step``, ``fit_steps``, ``apply_update``,
``epoch_permutation``, ``all_finite``.  A few are pairs of launches or have
helpers for large shapes (``fused_step`` = ``step_partials`` +
``step_update``; ``residual``, ``grad_partials``, ``update_check`` /
``update_apply``).  ``epoch_permutation`` draws the order of
:mod:`.permute` in parallel (``shuffle_epoch``, ``counter_permutation``).

This module imports ``numba.cuda``, so only :mod:`cuda_ops` imports it, and
only once a CUDA device was asked for.  ``cuda.jit`` without a signature
compiles on the first launch of each argument-type combination, never at
import.  Inside kernels the module is always called ``cuda``: numba's
simulator (``NUMBA_ENABLE_CUDASIM=1``) swaps that global name.

Shapes and conventions
    As in :mod:`cpu`: ``X`` (N, D), ``T`` (N, O), ``W`` (O, D), ``b`` (O,),
    C-contiguous, one float dtype.  A layer without bias passes a zero ``b``
    and ``has_bias`` False.  The parameters are numbered as one vector of
    ``E = O·D + O`` elements: element ``e < O·D`` is ``W[e // D, e % D]``,
    element ``O·D + o`` is ``b[o]``.  Gradient partials use the same numbering.

Accuracy
    The row-tile kernels of path F (the hot paths) follow the CPU kernels: a
    dot product over one row is formed in the data's dtype (in ``parts``
    pieces added in float64), the residual, the loss and every long sum in
    float64, and gradient contributions in the data's dtype over runs of at
    most TILE_ROWS rows, flushed into float64 sums -- one conversion per
    gradient element and tile, not one per multiply-add.  The tiled path G
    and the small kernels form every product and sum in float64 (values
    converted on load, rounded once on store).

Determinism
    Nothing is summed with atomics.  Every block writes its own partial sums;
    they are added in a fixed order (strided shares in block index order,
    then a fixed shared-memory tree).  The split depends on the shape and the
    block size only, so
    results are bit-identical from run to run.  They can differ from the CPU
    in the last bits, because the CPU splits the rows differently.

Block size
    ``TPB`` threads per 1-D block and ``TS``×``TS`` per 2-D tile are fixed at
    import from ``FASTLIN_CUDA_TPB`` (default 256, a power of two up to
    ``TPB_MAX`` = 256) and ``FASTLIN_CUDA_TILE`` (default 16, a power of two
    up to ``TS_MAX`` = 16; larger values raise ValueError at import, as they
    would not fit 48 KB of static shared memory or an SM's registers): kernels size their
    shared memory with them, so they are compile-time constants.  Tests set
    small values so that several blocks and the cross-block reduction run on
    tiny arrays.

Caching
    Kernels are cached on disk (numba's ``cache=True``, switched as for the
    CPU kernels by :mod:`fastlin._jit`) only with the default block sizes: a
    cache entry is keyed by the source file, not by the values of ``TPB`` and
    ``TS`` baked into it, so other geometries always compile afresh.  (Nor
    by :mod:`.cuda_loads` and :mod:`.permute`: after editing those, clear
    the cache.)

Device state
    ``state`` is a small int64 device vector: the host ``flags`` of
    :mod:`.abi` (momentum-initialised, epoch, position) followed by
    ``S_STATUS`` (the first non-OK status of a fit; later steps do nothing),
    ``S_DONE`` (steps completed), ``S_COUNT`` (unused; kept so the layout stays) and the
    ``S_BAD``/``S_BADGRAD`` flags of the two-kernel update.  A fit keeps it,
    the losses and the shuffle order on the device and reads them back once.

SGD
    ``torch.optim.SGD``, element by element, in float64, as in :mod:`cpu`.
    An update is first *checked* (every new parameter finite and within the
    dtype's range), then written, so a step that would create NaN/Inf writes
    nothing.
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import cuda
from numba.cuda import config as _cuda_config

from .._jit import CACHE as _CACHE_ALLOWED
from . import permute as _permute
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
from .cuda_loads import copy16, vec_width


def _env_pow2(name, default, largest):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not 1 <= value <= largest or value & (value - 1):
        raise ValueError(
            f"{name} must be a power of two between 1 and {largest}, got {value} "
            "(larger blocks exceed 48 KB of static shared memory or the registers of an SM)"
        )
    return value


# Compile-time launch geometry (see "Block size" above).  The caps are what
# compiles for sm_90 within 48 KB of static shared memory per block and the
# register budget of a block (65,536 registers per SM): bench/gpu_static.py
# measures both and tests/cuda/test_gpu_static.py checks them at the caps.
TPB_MAX = 256
TS_MAX = 16
TPB = _env_pow2("FASTLIN_CUDA_TPB", 256, TPB_MAX)
TS = _env_pow2("FASTLIN_CUDA_TILE", 16, TS_MAX)
TS2 = TS * TS
# Row-tile kernels (path "F"): at most min(OMAX, TPB) outputs and at most
# ACC gradient elements per thread (float64 register accumulators), so that
# W (E <= ACC·TPB elements with its padding) fits the shared WS_SIZE.  A
# tile of at most TILE_ROWS rows (the float32 run length, as the CPU's
# FLUSH_ROWS) with rows padded to D + 1 lives in XS_SIZE.  At TPB = 256 the
# shared memory is 23.5 KB for float32 data, 44.5 KB for float64.  Larger
# layers take the tiled path "G".
OMAX = 32
ACC = 8
TILE_ROWS = 64
XS_SIZE = 12 * TPB
WS_SIZE = ACC * TPB
# The streaming kernels of path F promise ptxas TPB-thread blocks and 4
# resident blocks per SM, which caps them at 64 registers: 50% occupancy
# (bench/gpu_static.py checks that they do not spill).  numba's simulator
# takes no launch bounds.
ROWS_BOUNDS = {} if _cuda_config.ENABLE_CUDASIM else {"launch_bounds": (TPB, 4)}
# _finish_step: at most this many threads add one element's partials.
TEAM_MAX = min(32, TPB)
TILE_SIZE = TS * (TS + 1)  # one padded TS×TS tile; the pad avoids bank conflicts
CACHE = bool(_CACHE_ALLOWED and TPB == 256 and TS == 16)

# Device state vector (see "Device state" above).
S_HAS_BUF = ST_HAS_BUF
S_EPOCH = ST_EPOCH
S_POS = ST_POS
S_STATUS = 3
S_DONE = 4
S_COUNT = 5
S_BAD = 6
S_BADGRAD = 7
S_SIZE = 8

# ``cfg``: the int64 device vector that describes a fit plan.
C_NROWS = 0  # rows of the data set
C_BATCH = 1  # rows per batch
C_SHUFFLE = 2  # 1: batch row k is data row perm[pos + k]
C_HAS_BIAS = 3
C_ADVANCE = 4  # 1: a step moves (epoch, pos) on, as a fit does; 0: a lone step
C_CHUNK = 5  # path F: batch rows per block
C_GROUPS = 6  # path F: row groups of the gradient phase (0: loss only)
C_KROWS = 7  # path G: batch rows per split of the gradient
C_VEC = 8  # path F: 1 when X's rows are 16-byte aligned (128-bit loads)
C_SIZE = 9


# ==========================================================================
# device helpers
# ==========================================================================
@cuda.jit(device=True)
def _block_sum(value, red, n_threads):
    """Sum of ``value`` over the block's first ``n_threads`` (a power of two)
    threads, returned to every thread.

    ``red`` is a shared float64 array of at least ``n_threads``.  The tree has
    a fixed shape, so the result does not depend on scheduling.  Every thread
    of the block must call it (it synchronises).
    """
    t = cuda.threadIdx.x + cuda.threadIdx.y * cuda.blockDim.x
    red[t] = value
    cuda.syncthreads()
    half = n_threads // 2
    while half > 0:
        if t < half:
            red[t] += red[t + half]
        cuda.syncthreads()
        half //= 2
    total = red[0]
    cuda.syncthreads()  # red may be reused as soon as this returns
    return total


# The counter-based permutation of :mod:`.permute`, compiled for the GPU from
# the functions the CPU compiles (so both draw the same order).
_half_bits = cuda.jit(device=True)(_permute.half_bits)
_round_key = cuda.jit(device=True)(_permute.round_key)
_permuted_index = cuda.jit(device=True)(_permute.permuted_index)


@cuda.jit(device=True)
def epoch_permutation(seed, epoch, h, perm, first, stride):
    """Entries ``first, first + stride, ...`` of the row order
    :func:`fastlin.backends.cpu.epoch_permutation` gives for (seed, epoch),
    ``h = permute.half_bits(len(perm))``: each entry is computed on its own,
    so the threads of a block or a grid fill ``perm`` together, O(n / threads).
    """
    keys = (
        _round_key(seed, epoch, 0),
        _round_key(seed, epoch, 1),
        _round_key(seed, epoch, 2),
        _round_key(seed, epoch, 3),
        _round_key(seed, epoch, 4),
        _round_key(seed, epoch, 5),
        _round_key(seed, epoch, 6),
        _round_key(seed, epoch, 7),
    )  # permute.ROUNDS of them
    n = perm.shape[0]
    for i in range(first, n, stride):
        perm[i] = _permuted_index(i, n, h, keys)


@cuda.jit(device=True)
def _param(W, b, e, od, n_in):
    """Element ``e`` of the parameter vector (W, then b), as float64."""
    if e < od:
        o = e // n_in
        return np.float64(W[o, e - o * n_in])
    return np.float64(b[e - od])


@cuda.jit(device=True)
def _store(W, b, e, od, n_in, value):
    """Write element ``e`` of the parameter vector (rounded to its dtype)."""
    if e < od:
        o = e // n_in
        W[o, e - o * n_in] = value
    else:
        b[e - od] = value


@cuda.jit(device=True)
def _sgd_value(p, g, buf, has_buf, hp):
    """New (parameter, momentum buffer) for one element; all float64.
    Twin of :func:`fastlin.backends.cpu._sgd_value`."""
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


@cuda.jit(device=True)
def _new_value(W, b, bufW, bufb, hp, e, od, n_in, grad, has_buf, scratch, n_el):
    """Compute the SGD update of element ``e`` into ``scratch`` (new value at
    ``e``, new buffer at ``n_el + e``); returns True when it is acceptable:
    the new value AND the new momentum buffer are finite and within the
    dtype's range (abi.NONFINITE_UPDATE covers both)."""
    buf = 0.0
    if hp[HP_MOMENTUM] != 0.0 and has_buf:
        buf = _param(bufW, bufb, e, od, n_in)
    p, buf = _sgd_value(_param(W, b, e, od, n_in), grad, buf, has_buf, hp)
    scratch[e] = p
    scratch[n_el + e] = buf
    limit = hp[HP_MAX]
    return abs(p) <= limit and abs(buf) <= limit  # False for NaN too


@cuda.jit(device=True)
def _write_value(W, b, bufW, bufb, hp, e, od, n_in, scratch, n_el):
    """Commit element ``e`` of a checked update from ``scratch``."""
    _store(W, b, e, od, n_in, scratch[e])
    if hp[HP_MOMENTUM] != 0.0:
        _store(bufW, bufb, e, od, n_in, scratch[n_el + e])


@cuda.jit(device=True)
def _advance(state, n, n_rows):
    """A successful fit step: move (epoch, pos) past the batch just used."""
    pos = state[S_POS] + n
    if pos >= n_rows:
        pos = 0
        state[S_EPOCH] += 1
    state[S_POS] = pos


# ==========================================================================
# path F: row tiles, X read once per step
# ==========================================================================
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
def _finish_step(W, b, bufW, bufb, hp, state, cfg, loss_p, part, n_parts, scratch, n, losses, red):
    """Block level: add the partials, check the SGD update, write it (or
    nothing), and record the loss and status in ``state``.

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
    has_bias = cfg[C_HAS_BIAS] != 0
    n_upd = n_el if has_bias else od
    s = 0.0
    for c in range(t, n_parts, TPB):
        s += loss_p[c]
    sse = _block_sum(s, red, TPB)
    if hp[HP_SUM] != 0.0:
        loss = sse
        scale = 2.0
    else:
        loss = sse / (n * n_out)
        scale = 2.0 / (n * n_out)
    has_buf = state[S_HAS_BUF] != 0
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
            and not _new_value(W, b, bufW, bufb, hp, e, od, n_in, scale * grad, has_buf, scratch, n_el)
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
            _write_value(W, b, bufW, bufb, hp, e, od, n_in, scratch, n_el)
    if t == 0:
        losses[state[S_DONE]] = loss
        if status == OK:
            if hp[HP_MOMENTUM] != 0.0:
                state[S_HAS_BUF] = 1
            if cfg[C_ADVANCE] != 0:
                _advance(state, n, cfg[C_NROWS])
            state[S_DONE] += 1
        else:
            state[S_STATUS] = status
    cuda.syncthreads()  # the next step (fit_steps) reads state
    return status


@cuda.jit(cache=CACHE, **ROWS_BOUNDS)
def mse_grad(X, T, W, b, has_bias, chunk_rows, groups, vec, loss_p, part):
    """Partial MSE sums of chunk ``blockIdx.x`` (path F; see
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
def step_partials(X, T, W, b, state, perm, cfg, work, has_bias, shuffle, groups, vec, chunk_rows):
    """First kernel of an SGD step on the current batch (path F): the partials.

    Grid: one block of TPB threads per chunk of ``chunk_rows`` batch rows;
    block ``c`` writes its loss and gradient partials (see
    :func:`_rows_partials`) into ``work`` = [loss_p (C) | part (C·E) |
    scratch (2E)].  The batch is rows ``pos..pos+n`` of the (shuffled, via
    ``perm``) data, ``pos = state[S_POS]``.  Does nothing once
    ``state[S_STATUS]`` is not OK, so a fit can queue its steps without
    waiting for each.  :func:`step_update` follows it.  The plan's fixed
    settings come as scalars (``cfg``'s C_HAS_BIAS, C_SHUFFLE, C_GROUPS,
    C_VEC, C_CHUNK): values read from memory would stay in registers across
    the row loop, and the kernel would spill.
    """
    xs = cuda.shared.array(XS_SIZE, X.dtype)
    ws = cuda.shared.array(WS_SIZE, X.dtype)
    rs = cuda.shared.array(TPB, X.dtype)
    ridx = cuda.shared.array(TILE_ROWS, np.int64)
    red = cuda.shared.array(TPB, np.float64)
    if state[S_STATUS] != OK:
        return
    c = cuda.blockIdx.x
    pos = state[S_POS]
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
def step_update(W, b, bufW, bufb, hp, state, cfg, work, n_chunks, losses):
    """Second kernel of a path-F step, ONE block of TPB threads: add the
    ``n_chunks`` partials of :func:`step_partials` (:func:`_finish_step`: a
    fixed tree per element), check and apply the update, and record the
    loss in ``losses[state[S_DONE]]`` and the status in ``state``.

    A kernel of its own rather than the last block of the first: the
    kernel boundary orders the partials before their reader (no fence, no
    counter), and the streaming kernel keeps to the 64 registers of 50%
    occupancy (with the update inside it, ptxas spilled).
    """
    red = cuda.shared.array(TPB, np.float64)
    if state[S_STATUS] != OK:
        return
    n_el = W.shape[0] * W.shape[1] + W.shape[0]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - state[S_POS])
    loss_p = work[0:n_chunks]
    part = work[n_chunks : n_chunks + n_chunks * n_el]
    scratch = work[n_chunks + n_chunks * n_el : n_chunks + (n_chunks + 2) * n_el]
    _finish_step(W, b, bufW, bufb, hp, state, cfg, loss_p, part, n_chunks, scratch, n, losses, red)


# ``fused_step`` is the CPU name of a whole SGD step; on the GPU (path F) it
# is these two launches.
fused_step = (step_partials, step_update)


@cuda.jit(cache=CACHE)
def fit_steps(X, T, W, b, bufW, bufb, hp, state, perm, cfg, seed, work, losses, n_steps):
    """``n_steps`` SGD steps in ONE launch of ONE block (small problems).

    Twin of :func:`fastlin.backends.cpu.fit_steps`: batches of
    ``cfg[C_BATCH]`` rows walk through the data; with ``cfg[C_SHUFFLE]``
    the block's threads draw each epoch's order with :func:`epoch_permutation`.
    ``work`` = [loss_p (1) | part (E) | scratch (2E)].  Stops at the first
    non-OK status (recorded in ``state``).
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
    scratch = work[1 + n_el : 1 + 3 * n_el]
    n_rows = cfg[C_NROWS]
    shuffle = cfg[C_SHUFFLE] != 0
    for _ in range(n_steps):
        if state[S_STATUS] != OK:
            return
        pos = state[S_POS]
        if shuffle and pos == 0:
            # the block's threads draw the order together (every thread
            # reads the same pos, so all of them reach the barrier)
            epoch_permutation(seed, state[S_EPOCH], _half_bits(n_rows), perm, t, TPB)
            cuda.syncthreads()
        n = min(cfg[C_BATCH], n_rows - pos)
        _rows_partials(
            X,
            T,
            W,
            b,
            cfg[C_HAS_BIAS] != 0,
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
        _finish_step(W, b, bufW, bufb, hp, state, cfg, loss_p, part, 1, scratch, n, losses, red)


@cuda.jit(cache=CACHE)
def counter_permutation(seed, epoch, h, perm):
    """``perm`` = the whole row order of (seed, epoch), ``h =
    permute.half_bits(len(perm))``, unconditionally: one entry per thread
    (grid-stride), the numbers :func:`fastlin.backends.cpu.epoch_permutation`
    gives.  Fits use :func:`shuffle_epoch`; this one serves tests and
    benchmarks."""
    epoch_permutation(seed, epoch, h, perm, cuda.grid(1), cuda.gridsize(1))


@cuda.jit(cache=CACHE)
def shuffle_epoch(seed, state, perm):
    """Draw this epoch's row order when a fit is at the start of an epoch
    (launched by the host before such steps of a multi-launch fit): one
    thread per row, in as many blocks as needed (grid-stride beyond that)."""
    if state[S_STATUS] == OK and state[S_POS] == 0:
        epoch_permutation(seed, state[S_EPOCH], _half_bits(perm.shape[0]), perm, cuda.grid(1), cuda.gridsize(1))


# ==========================================================================
# path G: TS×TS shared-memory tiles (any shape)
# ==========================================================================
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
def residual(X, T, W, b, state, perm, cfg, R, loss_p):
    """Path G, first kernel of a step: ``R[k, o] = x·Wᵀ + b − t`` (float64)
    for the batch rows, and per-block partials of ``Σ R²`` into ``loss_p``
    (one per block, row-major over the grid).

    Grid (ceil(batch/TS), ceil(O/TS)) of TS×TS blocks.  Also clears the
    update-check flags of the step.  Does nothing once a fit has failed.
    """
    xs = cuda.shared.array(TILE_SIZE, np.float64)
    ws = cuda.shared.array(TILE_SIZE, np.float64)
    red = cuda.shared.array(TS2, np.float64)
    if state[S_STATUS] != OK:
        return
    pos = state[S_POS]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - pos)
    shuffle = cfg[C_SHUFFLE] != 0
    first = cuda.blockIdx.x == 0 and cuda.blockIdx.y == 0 and cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0
    if first:
        state[S_BAD] = 0
        state[S_BADGRAD] = 0
    acc = _xw_tile(X, W, perm, shuffle, pos, n, xs, ws)
    k = cuda.blockIdx.x * TS + cuda.threadIdx.y
    o = cuda.blockIdx.y * TS + cuda.threadIdx.x
    r2 = 0.0
    if k < n and o < W.shape[0]:
        i = perm[pos + k] if shuffle else pos + k
        if cfg[C_HAS_BIAS] != 0:
            acc += b[o]
        r = acc - T[i, o]
        R[k, o] = r
        r2 = r * r
    total = _block_sum(r2, red, TS2)
    if cuda.threadIdx.x == 0 and cuda.threadIdx.y == 0:
        loss_p[cuda.blockIdx.x + cuda.blockIdx.y * cuda.gridDim.x] = total


@cuda.jit(cache=CACHE)
def grad_partials(X, R, state, perm, cfg, part):
    """Path G: ``part[s, o·D + d] = Σ_k R[k, o] · X[row(k), d]`` and
    ``part[s, O·D + o] = Σ_k R[k, o]`` over the batch rows of split ``s``.

    ``R`` (batch, O) is the residual (any float dtype: backward passes dY).
    Grid (ceil(D/TS), ceil(O/TS), splits) of TS×TS blocks; split ``s`` takes
    batch rows ``s·cfg[C_KROWS] ..``.  Sums run over rows in order.
    """
    rt = cuda.shared.array(TILE_SIZE, np.float64)
    xt = cuda.shared.array(TILE_SIZE, np.float64)
    if state[S_STATUS] != OK:
        return
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n_out = R.shape[1]
    n_in = X.shape[1]
    od = n_out * n_in
    n_el = od + n_out
    pos = state[S_POS]
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
def update_check(W, b, bufW, bufb, hp, state, cfg, loss_p, n_loss, part, n_parts, scratch, fixed_scale, losses):
    """Path G and :func:`apply_update`, first half: add the gradient partials
    (``part``, n_parts × E, in order), compute every new parameter into
    ``scratch`` [new values (E) | new buffers (E) | sse (1)] and flag
    ``state[S_BAD]`` if one is not acceptable (``state[S_BADGRAD]`` if a
    gradient is NaN/Inf).

    ``fixed_scale > 0`` scales the gradient by it (a gradient given by the
    user); otherwise by the MSE factor of the current batch.  Block 0 also
    adds the ``n_loss`` partials of ``loss_p`` and records the loss (none for
    a user's gradient).  1-D grid over E.
    """
    red = cuda.shared.array(TPB, np.float64)
    if state[S_STATUS] != OK:
        return
    n_out, n_in = W.shape
    od = n_out * n_in
    n_el = od + n_out
    n_upd = n_el if cfg[C_HAS_BIAS] != 0 else od
    n = min(cfg[C_BATCH], cfg[C_NROWS] - state[S_POS])
    if fixed_scale > 0.0:
        scale = fixed_scale
    elif hp[HP_SUM] != 0.0:
        scale = 2.0
    else:
        scale = 2.0 / (n * n_out)
    if cuda.blockIdx.x == 0:
        s = 0.0
        for c in range(cuda.threadIdx.x, n_loss, TPB):
            s += loss_p[c]
        sse = _block_sum(s, red, TPB)
        if cuda.threadIdx.x == 0:
            scratch[2 * n_el] = sse
            if n_loss > 0:
                losses[state[S_DONE]] = sse if hp[HP_SUM] != 0.0 else sse / (n * n_out)
    e = cuda.grid(1)
    if e < n_upd:
        grad = 0.0
        for c in range(n_parts):
            grad += part[c * n_el + e]
        if not math.isfinite(grad):
            state[S_BADGRAD] = 1
        if not _new_value(W, b, bufW, bufb, hp, e, od, n_in, scale * grad, state[S_HAS_BUF] != 0, scratch, n_el):
            state[S_BAD] = 1


@cuda.jit(cache=CACHE)
def update_apply(W, b, bufW, bufb, hp, state, cfg, scratch, grad_is_loss):
    """Second half: decide the status (NaN/Inf loss — or, with
    ``grad_is_loss``, a NaN/Inf gradient — first, then an unacceptable
    update), write the checked update when OK, and record the status.
    1-D grid over E.  Nothing reads what thread 0 changes in ``state`` here
    except later launches.
    """
    if state[S_STATUS] != OK:
        return
    n_out, n_in = W.shape
    od = n_out * n_in
    n_el = od + n_out
    n_upd = n_el if cfg[C_HAS_BIAS] != 0 else od
    if not math.isfinite(scratch[2 * n_el]) or (grad_is_loss and state[S_BADGRAD] != 0):
        status = NONFINITE_LOSS
    elif state[S_BAD] != 0:
        status = NONFINITE_UPDATE
    else:
        status = OK
    e = cuda.grid(1)
    if status == OK and e < n_upd:
        _write_value(W, b, bufW, bufb, hp, e, od, n_in, scratch, n_el)
    if e == 0:
        if status == OK:
            if hp[HP_MOMENTUM] != 0.0:
                state[S_HAS_BUF] = 1
            if cfg[C_ADVANCE] != 0:
                _advance(state, min(cfg[C_BATCH], cfg[C_NROWS] - state[S_POS]), cfg[C_NROWS])
            state[S_DONE] += 1
        else:
            state[S_STATUS] = status


# ``apply_update`` is the CPU name of the SGD update from a given gradient;
# on the GPU it takes two launches so that every block sees the whole check.
apply_update = (update_check, update_apply)


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


# ==========================================================================
# small element-wise kernels
# ==========================================================================
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


def launch_signatures(dtype):
    """Argument types of every kernel as cuda_ops launches it, for ``dtype``
    ("float32" or "float64") data: what the compile checks
    (tests/cuda/ptx_check.py, bench/gpu_static.py) compile without a GPU."""
    f = dtype
    a2, a1 = f"{f}[:, ::1]", f"{f}[::1]"
    f1, i1, r2 = "float64[::1]", "int64[::1]", "float64[:, ::1]"
    return {
        "forward": [a2, a2, a1, "boolean", a2],
        "sse": [a2, a2, f1],
        "model_sse": [a2, a2, a2, a1, "boolean", f1],
        "mse_grad": [a2, a2, a2, a1, "boolean", "int64", "int64", "boolean", f1, f1],
        "backward": [a2, a2, a2],
        "step_partials": [a2, a2, a2, a1, i1, i1, i1, f1, "boolean", "boolean", "int64", "boolean", "int64"],
        "step_update": [a2, a1, a2, a1, f1, i1, i1, f1, "int64", f1],
        "fit_steps": [a2, a2, a2, a1, a2, a1, f1, i1, i1, i1, "uint64", f1, f1, "int64"],
        "shuffle_epoch": ["uint64", i1, i1],
        "counter_permutation": ["uint64", "int64", "int64", i1],
        "residual": [a2, a2, a2, a1, i1, i1, i1, r2, f1],
        "grad_partials": [a2, r2, i1, i1, i1, f1],
        "update_check": [a2, a1, a2, a1, f1, i1, i1, f1, "int64", f1, "int64", f1, "float64", f1],
        "update_apply": [a2, a1, a2, a1, f1, i1, i1, f1, "boolean"],
        "reduce_grad": [f1, "int64", "float64", a2, a1],
        "all_finite": [a1, "int32[::1]"],
        "cast_copy_1d": ["int64[:]", a1],
        "cast_copy_2d": ["float64[:, :]", a2],
    }


# Every kernel, for the compile checks.
KERNELS = tuple(launch_signatures("float32"))
