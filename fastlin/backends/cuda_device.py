"""Device helpers shared by the CUDA kernel modules, and the layout of the
int64 plan vector they read.

Shapes and conventions
    As in :mod:`cpu`: ``X`` (N, D), ``T`` (N, O), ``W`` (O, D), ``b`` (O,),
    C-contiguous, one float dtype.  A layer without bias passes a zero ``b``
    and ``has_bias`` False.  The parameters are numbered as one vector of
    ``E = O·D + O`` elements: element ``e < O·D`` is ``W[e // D, e % D]``,
    element ``O·D + o`` is ``b[o]``.  Gradient partials use the same
    numbering, and so do the optimiser's slots: slot ``j`` of element ``e``
    is ``slots_w[j, o, d]`` or ``slots_b[j, o]``.

Training state
    ``counters`` is the int64 device vector of :mod:`.abi`: the host's
    ``CNT_SIZE`` counters (momentum initialised, epoch, position, steps)
    followed by the device-only ``CNT_STATUS`` (the first non-OK status of a
    queued fit; later steps do nothing), ``CNT_DONE`` (steps completed) and
    the ``CNT_BAD``/``CNT_BAD_GRAD`` flags of the two-kernel update
    (``CNT_DEVICE_SIZE`` in all).  A fit keeps it, the losses and the
    shuffle order on the device and reads them back once.

The update
    The optimiser's rule of :mod:`.rules` (``update_element`` with the
    learning rate of ``scheduled_lr``), element by element, in float64, and
    the step counting of :mod:`.counters`: the very functions the CPU
    compiles, compiled here with ``cuda.jit(device=True)``.  An update is
    first *checked* (the new parameter and every slot finite and within the
    dtype's range ``limit``), then written, so a step that would create
    NaN/Inf writes nothing.  The candidates wait in a float64 ``scratch`` of
    ``(1 + k)·E + 1`` entries: new parameters (E), new slots (k·E), the loss
    (1; the tiled update only).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from . import counters as _counters
from . import rules as _rules
from .abi import RULE_SGD

# ``cfg``: the int64 device vector that describes a fit plan.
C_NROWS = 0  # rows of the data set
C_BATCH = 1  # rows per batch
C_SHUFFLE = 2  # 1: batch row k is data row perm[pos + k]
C_ADVANCE = 3  # 1: a step moves (epoch, pos) on, as a fit does; 0: a lone step
C_CHUNK = 4  # row streaming: batch rows per block
C_GROUPS = 5  # row streaming: row groups of the gradient phase (0: loss only)
C_KROWS = 6  # tiled: batch rows per split of the gradient
C_VEC = 7  # row streaming: 1 when X's rows are 16-byte aligned (128-bit loads)
C_SIZE = 8

# The shared scalar maths, compiled for the device from the plain Python
# functions the CPU compiles (so both backends take the same steps).
scheduled_lr = cuda.jit(device=True)(_rules.scheduled_lr)
update_element = cuda.jit(device=True)(_rules.update_element)
step_taken = cuda.jit(device=True)(_counters.step_taken)
advance = cuda.jit(device=True)(_counters.advance)


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
def _slot(slots_w, slots_b, j, e, od, n_in):
    """Slot ``j`` of parameter element ``e``, as float64."""
    if e < od:
        o = e // n_in
        return np.float64(slots_w[j, o, e - o * n_in])
    return np.float64(slots_b[j, e - od])


@cuda.jit(device=True)
def _store_slot(slots_w, slots_b, j, e, od, n_in, value):
    """Write slot ``j`` of parameter element ``e`` (rounded to its dtype)."""
    if e < od:
        o = e // n_in
        slots_w[j, o, e - o * n_in] = value
    else:
        slots_b[j, e - od] = value


@cuda.jit(device=True)
def uses_buffers(hp):
    """The rule keeps momentum buffers that start empty (abi.CNT_HAS_BUF)."""
    return hp["rule"] == RULE_SGD and hp["momentum"] != 0.0


@cuda.jit(device=True)
def _new_value(W, b, slots_w, slots_b, hp, lr, step, has_buf, limit, e, od, n_in, grad, scratch, n_el):
    """Compute the update of element ``e`` into ``scratch`` (new value at
    ``e``, new slot ``j`` at ``(1 + j)·E + e``); returns True when it is
    acceptable: the new value AND every new slot finite and within
    ``limit`` (abi.NONFINITE_UPDATE covers them all).  Slots ``j >= k``
    are neither read (0.0 goes in) nor written."""
    k = slots_w.shape[0]
    s0 = _slot(slots_w, slots_b, 0, e, od, n_in) if k > 0 else 0.0
    s1 = _slot(slots_w, slots_b, 1, e, od, n_in) if k > 1 else 0.0
    s2 = _slot(slots_w, slots_b, 2, e, od, n_in) if k > 2 else 0.0
    p, s0, s1, s2 = update_element(hp, lr, step, has_buf, _param(W, b, e, od, n_in), grad, s0, s1, s2)
    scratch[e] = p
    ok = abs(p) <= limit  # False for NaN too
    if k > 0:
        scratch[n_el + e] = s0
        ok = ok and abs(s0) <= limit
    if k > 1:
        scratch[2 * n_el + e] = s1
        ok = ok and abs(s1) <= limit
    if k > 2:
        scratch[3 * n_el + e] = s2
        ok = ok and abs(s2) <= limit
    return ok


@cuda.jit(device=True)
def _write_value(W, b, slots_w, slots_b, e, od, n_in, scratch, n_el):
    """Commit element ``e`` of a checked update from ``scratch``."""
    _store(W, b, e, od, n_in, scratch[e])
    for j in range(slots_w.shape[0]):
        _store_slot(slots_w, slots_b, j, e, od, n_in, scratch[(1 + j) * n_el + e])
