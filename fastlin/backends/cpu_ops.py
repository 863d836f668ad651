"""The CPU backend: allocates outputs and scratch, picks a kernel, calls it.

:class:`fastlin.Linear` talks to a backend only through the functions in this
module; :mod:`fastlin.backends.cuda_ops` provides the same functions for GPUs.
Arguments arrive validated (right shapes, C-contiguous, the model's dtype).
``ws`` is a dict owned by the caller that caches scratch buffers, so a step
on a fixed shape allocates nothing after the first call.

Two paths, chosen by shape alone:

streaming (few outputs)
    One ``@njit`` pass over X per step (``cpu.fused_step``): each row's
    prediction, residual, loss and gradient contribution are formed while the
    row is in cache.  Memory-bound, so reading X once is what counts.
GEMM (``n_out >= GEMM_MIN_OUT``)
    Arithmetic dominates, and nothing beats BLAS at it.  Rows go in blocks of
    ``GEMM_BLOCK_ROWS``: ``Y = X_b·Wᵀ`` (BLAS), the residual, loss and bias
    gradient in one ``@njit`` pass over the small block ``Y``
    (``cpu.residual``), then ``G = Rᵀ·X_b`` (BLAS) while ``X_b`` is still in
    cache, added into float64 sums.  X is still read from memory once, and no
    (N, O) array is formed.
"""

from __future__ import annotations

import numpy as np

from .._validate import as_host_array
from . import cpu
from .abi import OK

name = "cpu"

# Work splitting for row reductions.  A chunk is worth a thread hand-off only
# above ~32k multiply-adds; 64 chunks keep up to 64 threads busy; and the
# partial gradients (one O·D float64 block per chunk) are capped at 64 MiB.
MAX_CHUNKS = 64
MIN_CHUNK_WORK = 1 << 15
SCRATCH_BYTES = 64 << 20
# forward() runs its rows in parallel above this many multiply-adds.
PARALLEL_FORWARD_WORK = 1 << 16
# The GEMM path takes over from this many outputs (measured: bench/RESULTS.md).
GEMM_MIN_OUT = 32
GEMM_BLOCK_ROWS = 2048
# Row counts whose plan and scratch a model keeps (see _scratch).
SCRATCH_CACHE = 4


def _cdiv(a, b):
    return -(-a // b)


def plan_chunks(n_rows, n_out, n_in):
    """Rows per chunk for a reduction over ``n_rows`` rows.

    Depends on the shape only (never on the thread count), which is what makes
    results bit-identical for any number of threads.  Returns
    ``(chunk_rows, n_chunks)``.
    """
    per_row = n_out * n_in + n_out
    rows = max(_cdiv(n_rows, MAX_CHUNKS), _cdiv(MIN_CHUNK_WORK, per_row))
    by_memory = max(1, SCRATCH_BYTES // (8 * (per_row + 1)))
    rows = max(rows, _cdiv(n_rows, by_memory))
    rows = max(1, min(rows, n_rows))
    return rows, _cdiv(n_rows, rows)


def uses_gemm(n_out, n_in):
    """True when a layer of this shape trains on the GEMM path."""
    return n_out >= GEMM_MIN_OUT


def _scratch(ws, n_rows, W):
    """``(chunk_rows, n_chunks, work, acc)`` for a reduction over ``n_rows``
    rows: the plan and the kernels' scratch -- the flat float64 ``work`` and
    the per-chunk accumulators ``acc`` (n_chunks, O, D) in the data's dtype.

    Cached in ``ws`` per row count (the last few), so a repeated step on one
    shape neither plans nor allocates again.
    """
    key = ("scratch", n_rows, W.shape, W.dtype)
    got = ws.get(key)
    if got is None:
        n_out, n_in = W.shape
        chunk_rows, n_chunks = plan_chunks(n_rows, n_out, n_in)
        work = np.empty(cpu.work_size(n_out, n_in, n_chunks), dtype=np.float64)
        acc = np.empty((n_chunks, n_out, n_in), dtype=W.dtype)
        got = ws[key] = (chunk_rows, n_chunks, work, acc)
        stale = [k for k in ws if isinstance(k, tuple) and k[0] == "scratch"][:-SCRATCH_CACHE]
        for k in stale:
            del ws[k]
    return got


def _buffer(ws, key, shape, dtype):
    buf = ws.get(key)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = ws[key] = np.empty(shape, dtype=dtype)
    return buf


# --------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------
def as_input(a, name, dtype):
    """User data -> C-contiguous numpy array of ``dtype``."""
    return as_host_array(a, name, dtype)


def from_host(a):
    """A host array -> this backend's array (a private copy)."""
    return np.array(a, copy=True, order="C")


def to_host(a):
    """This backend's array -> a numpy array (a copy)."""
    return np.array(a, copy=True)


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def copy_into(dst, src):
    dst[...] = src


def all_finite(a):
    return bool(cpu.all_finite(a.reshape(-1)))


# --------------------------------------------------------------------------
# the GEMM path
# --------------------------------------------------------------------------
def _gemm_sums(W, b, X, T, ws, rows=None, start=0, n=None, grad=True):
    """``(Σ r², Σ rᵀX, Σ r)`` over a batch by blocks of BLAS calls.

    The batch is rows ``start .. start+n`` of X, or ``X[rows[start:start+n]]``
    (gathered block by block) for a shuffled mini-batch.  Sums are float64.
    """
    n_out, n_in = W.shape
    n = X.shape[0] - start if n is None else n
    block = min(GEMM_BLOCK_ROWS, n)
    Y = _buffer(ws, "gemm_Y", (block, n_out), W.dtype)
    G = _buffer(ws, "gemm_G", (n_out, n_in), W.dtype)
    if rows is not None:
        Xg = _buffer(ws, "gemm_X", (block, n_in), W.dtype)
        Tg = _buffer(ws, "gemm_T", (block, n_out), W.dtype)
    # float64 sums, reused across steps (wide: 2 MiB that a step used to allocate)
    gW = _buffer(ws, "gemm_gW", (n_out, n_in), np.float64)
    gb = _buffer(ws, "gemm_gb", (n_out,), np.float64)
    gW.fill(0.0)
    gb.fill(0.0)
    sse = 0.0
    WT = W.T
    for lo in range(start, start + n, block):
        hi = min(lo + block, start + n)
        if rows is None:
            Xb, Tb = X[lo:hi], T[lo:hi]
        else:
            Xb = np.take(X, rows[lo:hi], axis=0, out=Xg[: hi - lo])
            Tb = np.take(T, rows[lo:hi], axis=0, out=Tg[: hi - lo])
        Yb = Y[: hi - lo]
        np.matmul(Xb, WT, out=Yb)
        sse += cpu.residual(Yb, Tb, b, gb)
        if grad:
            np.matmul(Yb.T, Xb, out=G)
            gW += G
    return float(sse), gW, gb


def _gemm_step(W, b, has_bias, bufW, bufb, hp, state, X, T, ws, rows=None, start=0, n=None):
    n = X.shape[0] - start if n is None else n
    sse, gW, gb = _gemm_sums(W, b, X, T, ws, rows, start, n)
    loss, status = cpu._finish_step(sse, n, W, b, has_bias, gW, gb, bufW, bufb, hp, state)
    return float(loss), int(status)


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------
def forward(W, b, has_bias, X):
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    if uses_gemm(n_out, n_in):
        Y = np.matmul(X, W.T)
        Y += b
        return Y
    Y = np.empty((n_rows, n_out), dtype=W.dtype)
    kernel = cpu.forward_parallel if n_rows * n_in * n_out > PARALLEL_FORWARD_WORK else cpu.forward
    kernel(X, W, b, Y)
    return Y


def sse(P, T):
    """Sum of squared differences of two (N, O) arrays, as a float."""
    chunk_rows, n_chunks = plan_chunks(P.shape[0], P.shape[1], 1)
    partial = np.empty(n_chunks, dtype=np.float64)
    kernel = cpu.sse_parallel if n_chunks > 1 else cpu.sse
    return float(kernel(P, T, chunk_rows, partial))


def model_sse(W, b, has_bias, X, T, ws=None):
    """``Σ (X·Wᵀ + b − T)²`` without materialising the prediction."""
    if uses_gemm(*W.shape):
        return _gemm_sums(W, b, X, T, {} if ws is None else ws, grad=False)[0]
    chunk_rows, n_chunks = plan_chunks(X.shape[0], W.shape[0], W.shape[1])
    partial = np.empty(n_chunks, dtype=np.float64)
    kernel = cpu.model_sse_parallel if n_chunks > 1 else cpu.model_sse
    return float(kernel(X, T, W, b, chunk_rows, partial))


def mse_grad(W, b, has_bias, X, T, scale, ws, dtype=None):
    """Returns ``(Σ r², scale·Σ rᵀX, scale·Σ r)`` with ``r = X·Wᵀ + b − T``.

    Sums are float64; the gradients come back in ``dtype`` (default: the
    parameters' dtype).
    """
    n_out, n_in = W.shape
    if uses_gemm(n_out, n_in):
        loss, dW, db = _gemm_sums(W, b, X, T, ws)
    else:
        chunk_rows, n_chunks, work, acc = _scratch(ws, X.shape[0], W)
        dW = np.empty((n_out, n_in), dtype=np.float64)
        db = np.empty(n_out, dtype=np.float64)
        kernel = cpu.mse_grad_parallel if n_chunks > 1 else cpu.mse_grad
        loss = kernel(X, T, W, b, chunk_rows, work, acc, dW, db)
    dtype = W.dtype if dtype is None else dtype
    return float(loss), (scale * dW).astype(dtype, copy=False), (scale * db).astype(dtype, copy=False)


def backward(W, X, dY, ws):
    """Returns ``(dX, dW, db)`` in the parameters' dtype (float64 sums inside)."""
    n_out, n_in = W.shape
    chunk_rows, n_chunks, work, _ = _scratch(ws, X.shape[0], W)
    dX = np.empty(X.shape, dtype=W.dtype)
    dW = np.empty((n_out, n_in), dtype=np.float64)
    db = np.empty(n_out, dtype=np.float64)
    kernel = cpu.backward_parallel if n_chunks > 1 else cpu.backward
    kernel(X, dY, W, chunk_rows, work, dX, dW, db)
    return dX, dW.astype(W.dtype), db.astype(W.dtype)


def fused_step(W, b, has_bias, bufW, bufb, hp, state, X, T, ws):
    """One full-batch SGD step in place.  Returns ``(loss, status)``."""
    n_out, n_in = W.shape
    if uses_gemm(n_out, n_in):
        return _gemm_step(W, b, has_bias, bufW, bufb, hp, state, X, T, ws)
    chunk_rows, n_chunks, work, acc = _scratch(ws, X.shape[0], W)
    kernel = cpu.fused_step_parallel if n_chunks > 1 else cpu.fused_step
    loss, status = kernel(X, T, W, b, has_bias, bufW, bufb, hp, state, chunk_rows, work, acc)
    return float(loss), int(status)


def sgd_update(W, b, has_bias, bufW, bufb, hp, flags, gW, gb, scale):
    """SGD update from a given gradient ``scale·(gW, gb)``.  Returns a status."""
    gW = np.ascontiguousarray(gW, dtype=np.float64)
    gb = np.ascontiguousarray(gb, dtype=np.float64)
    return int(cpu.apply_update(W, b, has_bias, gW, gb, scale, bufW, bufb, hp, flags))


class FitPlan:
    """What a fit keeps between its segments: batch size, shuffle order, scratch."""

    def __init__(self, n_rows, n_out, n_in, batch_size, shuffle, seed, dtype):
        self.batch_size = n_rows if batch_size is None else min(batch_size, n_rows)
        # Shuffling a full batch changes nothing but the rounding order.
        self.shuffle = bool(shuffle) and self.batch_size < n_rows
        self.seed = np.uint64(0 if seed is None else seed % (1 << 64))
        self.perm = np.empty(n_rows if self.shuffle else 0, dtype=np.int64)
        self.gemm = uses_gemm(n_out, n_in)
        self.ws = {}
        self.chunk_rows, n_chunks = plan_chunks(self.batch_size, n_out, n_in)
        if self.gemm:
            n_chunks = 0  # no kernel scratch on the GEMM path
        self.work = np.empty(cpu.work_size(n_out, n_in, n_chunks), dtype=np.float64)
        self.acc = np.empty((n_chunks, n_out, n_in), dtype=dtype)
        self.kernel = cpu.fit_steps_parallel if n_chunks > 1 else cpu.fit_steps


def fit_plan(n_rows, n_out, n_in, batch_size, shuffle, seed, dtype):
    return FitPlan(n_rows, n_out, n_in, batch_size, shuffle, seed, dtype)


def fit_steps(W, b, has_bias, bufW, bufb, hp, state, X, T, plan, losses):
    """Run ``len(losses)`` steps, writing each loss.  Returns ``(steps done, status)``."""
    if plan.gemm:
        return _gemm_fit_steps(W, b, has_bias, bufW, bufb, hp, state, X, T, plan, losses)
    done, status = plan.kernel(
        X, T, W, b, has_bias, bufW, bufb, hp, state,
        plan.perm, plan.batch_size, plan.shuffle, plan.seed, plan.chunk_rows, plan.work, plan.acc, losses,
    )
    return int(done), int(status)


def _gemm_fit_steps(W, b, has_bias, bufW, bufb, hp, state, X, T, plan, losses):
    """The loop of ``cpu.fit_steps`` around GEMM-path steps (each step costs
    milliseconds, so the Python loop costs nothing that shows)."""
    n_rows = X.shape[0]
    for s in range(len(losses)):
        pos, n = cpu.next_batch(state, plan.perm, plan.shuffle, plan.seed, plan.batch_size, n_rows)
        rows = plan.perm if plan.shuffle else None
        losses[s], status = _gemm_step(W, b, has_bias, bufW, bufb, hp, state, X, T, plan.ws, rows, pos, n)
        if status != OK:
            return s, status
        cpu.advance(state, pos, n, n_rows)
    return len(losses), OK
