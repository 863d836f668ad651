"""Device helpers shared by the CUDA kernel modules, and the layouts of the
int64 device vectors they read.

Shapes and conventions
    As in :mod:`cpu`: ``X`` (N, D), ``T`` (N, O), ``W`` (O, D), ``b`` (O,),
    C-contiguous, one float dtype.  A layer without bias passes a zero ``b``
    and ``has_bias`` False.  The parameters are numbered as one vector of
    ``E = O·D + O`` elements: element ``e < O·D`` is ``W[e // D, e % D]``,
    element ``O·D + o`` is ``b[o]``.  Gradient partials use the same numbering.

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

import numpy as np
from numba import cuda

from .abi import (
    HP_DAMPENING,
    HP_LR,
    HP_MAX,
    HP_MOMENTUM,
    HP_NESTEROV,
    HP_WEIGHT_DECAY,
    ST_EPOCH,
    ST_HAS_BUF,
    ST_POS,
)

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
