"""The CPU backend: allocates outputs and scratch, picks a kernel, calls it.

:class:`fastlin.Linear` talks to a backend only through the functions in this
module; :mod:`fastlin.backends.cuda_ops` provides the same functions for GPUs.
It implements :class:`fastlin.backends.protocol.Ops`, in the contract's
argument order (data, parameters, optimiser state and ``hyper``, settings,
scratch); ``tests/test_contract.py`` checks the names.  Arguments arrive
validated (right shapes, C-contiguous, the model's dtype).
``ws`` is a dict owned by the caller that caches scratch buffers, so a step
on a fixed shape allocates nothing after the first call.  One ``ws`` must
serve one call at a time: the layer keeps one per thread (and one for its
training calls, which hold the model's lock).

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
    (N, O) array is formed.  Each BLAS call runs on one BLAS thread and the
    blocks run on fastlin's own threads, in chunks fixed by the shape, so the
    bits follow no thread count (see ``_BlasThreads``).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .. import _jit
from .._validate import as_host_array
from . import cpu
from .abi import OK

name = "cpu"

# The dtype's largest finite value, which the kernels refuse to exceed
# (a dict look-up: 65 ns against 370 ns for float(np.finfo(dtype).max).
_LIMITS = {np.dtype(t): float(np.finfo(t).max) for t in (np.float32, np.float64)}

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
    """``(chunk_rows, n_chunks, work, acc, step_kernel, entries)`` for a
    reduction over ``n_rows`` rows: the plan and the kernels' scratch -- the
    flat float64 ``work`` and the per-chunk accumulators ``acc`` (n_chunks,
    O, D) in the data's dtype -- and, for :func:`fused_step`, its kernel and
    entry-point table (see "Entry-point keys" below).

    Cached in ``ws`` per row count (the last few), so a repeated step on one
    shape neither plans nor allocates again.
    """
    key = ("scratch", n_rows, W.shape, W.dtype)
    got = ws.get(key)
    if got is None:
        n_out, n_in = W.shape
        chunk_rows, n_chunks = plan_chunks(n_rows, n_out, n_in)
        work = np.empty(cpu.scratch_layout(n_out, n_in, n_chunks).size, dtype=np.float64)
        acc = np.empty((n_chunks, n_out, n_in), dtype=W.dtype)
        # The last two: the fused step's kernel for this shape and its entry points.
        got = ws[key] = (chunk_rows, n_chunks, work, acc, _step_kernel(n_rows, n_out, n_in, n_chunks), {})
        stale = [k for k in ws if isinstance(k, tuple) and k[0] == "scratch"][:-SCRATCH_CACHE]
        for k in stale:
            del ws[k]
    return got


def _rows_buffer(ws, key, n, shape):
    """The first ``n`` rows of a kept float64 (rows, *shape) buffer, grown as
    needed (a mini-batch fit's short last batch then reuses the full one's)."""
    buf = ws.get(key)
    if buf is None or buf.shape[0] < n or buf.shape[1:] != shape:
        buf = ws[key] = np.empty((n,) + shape, dtype=np.float64)
    return buf[:n]


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
# BLAS results depend on how many threads BLAS splits a product over
# (OpenBLAS blocks the inner dimension differently when threaded).  So the
# GEMM path makes every product single-threaded and runs the row blocks in
# parallel itself: blocks and their grouping into chunks depend on the shape
# only, each chunk sums its blocks in order into its own float64 partials, and
# the partials are added in chunk order.  The bits then depend on neither
# OPENBLAS_NUM_THREADS nor NUMBA_NUM_THREADS (nor on the pool's size).
class _BlasThreads:
    """Holds numpy's OpenBLAS at one thread while GEMM-path work runs.

    Reference-counted across threads: the first caller saves the thread
    count and sets 1, the last one restores it.  ``controlled`` is False
    where numpy's BLAS is not an OpenBLAS we can find (MKL, Accelerate, ...):
    there the GEMM path runs as before and its bits may follow the BLAS
    thread count.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None
        self._get = self._set = None
        self._looked = False

    @property
    def controlled(self):
        self._find()
        return self._set is not None

    def _find(self):
        if self._looked:
            return
        with self._lock:
            if not self._looked:
                self._get, self._set = _find_openblas()
                self._looked = True

    def __enter__(self):
        self._find()
        if self._set is None:
            return self
        with self._lock:
            if self._depth == 0:
                self._saved = int(self._get())
                if self._saved != 1:
                    self._set(1)
            self._depth += 1
        return self

    def __exit__(self, *exc):
        if self._set is None:
            return
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._saved not in (None, 1):
                self._set(self._saved)

    def _after_fork(self):
        # A fork taken while another thread held BLAS at one thread: the
        # child has no such thread, so nothing would ever restore the count.
        self._lock = threading.Lock()
        if self._depth and self._set is not None and self._saved not in (None, 1):
            self._set(self._saved)
        self._depth = 0


def _find_openblas():
    """``(get_num_threads, set_num_threads)`` of numpy's OpenBLAS, or ``(None, None)``."""
    import ctypes
    import glob

    here = os.path.dirname(os.path.abspath(np.__file__))
    paths = []
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", ".libs/*openblas*"):
        paths += sorted(glob.glob(os.path.join(here, pattern)))
    if not paths:
        try:  # a numpy built against a system OpenBLAS: use it if it is the only one loaded
            with open("/proc/self/maps") as maps:
                loaded = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
            paths = sorted(loaded) if len(loaded) == 1 else []
        except OSError:
            paths = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # the copy numpy already loaded (same path)
        except OSError:
            continue
        for prefix in ("scipy_openblas_", "openblas_"):
            for suffix in ("64_", "_64", ""):
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, set_
    return None, None


_BLAS = _BlasThreads()
# OpenBLAS runs a product of at most this many multiply-adds (M·N·K) on one
# thread whatever its thread count (SMP_THRESHOLD_MIN × the default
# GEMM_MULTITHREAD_THRESHOLD), so smaller blocks skip the hold, which costs
# ~2 µs (setting the count and back) -- a tenth of a small GEMM-path step.
BLAS_SERIAL_WORK = 65536 * 4


def _hold_blas(block, n_out, n_in):
    """The context a GEMM-path call runs its products in."""
    return _BLAS if block * n_out * n_in > BLAS_SERIAL_WORK else _NO_HOLD


class _NoHold:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


_NO_HOLD = _NoHold()
_POOL = None
_POOL_LOCK = threading.Lock()


def _pool():
    """The GEMM path's worker threads (made on first use, NUMBA_NUM_THREADS of them)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                from concurrent.futures import ThreadPoolExecutor

                import numba

                _POOL = ThreadPoolExecutor(
                    max_workers=numba.config.NUMBA_NUM_THREADS, thread_name_prefix="fastlin-gemm"
                )
    return _POOL


def _reset_after_fork():
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()  # the parent's workers do not exist here
    _BLAS._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _workers(n_tasks):
    """How many workers share ``n_tasks`` chunks (numba's thread count, which
    changes the speed only: each chunk's work and the sums' order are fixed)."""
    if n_tasks <= 1:
        return 1
    import numba

    return max(1, min(n_tasks, numba.get_num_threads()))


def _run(n_workers, work):
    """``work(k)`` for k in range(n_workers): k = 0 on this thread, the rest in the pool."""
    if n_workers == 1:
        work(0)
        return
    futures = [_pool().submit(work, k) for k in range(1, n_workers)]
    try:
        work(0)
    finally:
        for f in futures:
            f.result()


def plan_gemm(n, n_out, n_in):
    """``(block_rows, n_blocks, blocks_per_chunk, n_chunks)`` for the GEMM
    path over ``n`` rows, from the shape alone.

    Chunks are runs of whole blocks; there are at most ``MAX_CHUNKS`` of them
    and their float64 partial gradients fit in ``SCRATCH_BYTES``.
    """
    block = max(1, min(GEMM_BLOCK_ROWS, n))
    n_blocks = _cdiv(n, block)
    by_memory = max(1, SCRATCH_BYTES // (8 * (n_out * n_in + n_out)))
    per_chunk = _cdiv(n_blocks, max(1, min(n_blocks, MAX_CHUNKS, by_memory)))
    return block, n_blocks, per_chunk, _cdiv(n_blocks, per_chunk)


def _gemm_blocks(W, b, X, T, rows, start, n, block, j0, j1, pW, pb, Y, G, Xg, Tg):
    """Blocks ``j0 .. j1`` of a batch, in order: ``pb += Σ r`` and (when G is
    given) ``pW += Σ rᵀX`` into the zeroed float64 sums; returns ``Σ r²``.
    Y, G, Xg, Tg are the caller's scratch (Xg, Tg only for a gathered batch)."""
    WT = W.T
    loss = 0.0
    for j in range(j0, j1):
        lo = start + j * block
        hi = min(lo + block, start + n)
        if rows is None:
            Xb, Tb = X[lo:hi], T[lo:hi]
        else:
            Xb = np.take(X, rows[lo:hi], axis=0, out=Xg[: hi - lo])
            Tb = np.take(T, rows[lo:hi], axis=0, out=Tg[: hi - lo])
        Yb = Y[: hi - lo]
        np.matmul(Xb, WT, out=Yb)
        loss += cpu.residual(Yb, Tb, b, pb)
        if G is not None:
            np.matmul(Yb.T, Xb, out=G)
            pW += G
    return loss


def _gemm_scratch(ws, k, block, W, grad, gather):
    """Worker ``k``'s ``(Y, G, Xg, Tg)``, kept in the caller's ws (so
    concurrent calls never share them)."""
    n_out, n_in = W.shape
    Y = _buffer(ws, ("gemm_Y", k), (block, n_out), W.dtype)
    G = _buffer(ws, ("gemm_G", k), (n_out, n_in), W.dtype) if grad else None
    if not gather:
        return Y, G, None, None
    return (
        Y,
        G,
        _buffer(ws, ("gemm_X", k), (block, n_in), W.dtype),
        _buffer(ws, ("gemm_T", k), (block, W.shape[0]), W.dtype),
    )


def _gemm_sums(W, b, X, T, ws, rows=None, start=0, n=None, grad=True):
    """``(Σ r², Σ rᵀX, Σ r)`` over a batch by blocks of BLAS calls.

    The batch is rows ``start .. start+n`` of X, or ``X[rows[start:start+n]]``
    (gathered block by block) for a shuffled mini-batch.  Sums are float64,
    and their bits do not depend on any thread count (see ``_BlasThreads``).
    """
    n_out, n_in = W.shape
    n = X.shape[0] - start if n is None else n
    key = ("gemm_plan", n, n_out, n_in)
    plan = ws.get(key)
    if plan is None:
        plan = ws[key] = plan_gemm(n, n_out, n_in)
    block, n_blocks, per_chunk, n_chunks = plan
    # float64 sums, reused across steps (wide: 2 MiB that a step used to allocate)
    gW = _buffer(ws, "gemm_gW", (n_out, n_in), np.float64)
    gb = _buffer(ws, "gemm_gb", (n_out,), np.float64)
    gather = rows is not None
    if n_chunks == 1:  # the whole batch on this thread, into the sums themselves
        gW.fill(0.0)
        gb.fill(0.0)
        Y, G, Xg, Tg = _gemm_scratch(ws, 0, block, W, grad, gather)
        with _hold_blas(block, n_out, n_in):
            sse = _gemm_blocks(W, b, X, T, rows, start, n, block, 0, n_blocks, gW, gb, Y, G, Xg, Tg)
        return sse, gW, gb
    n_workers = _workers(n_chunks)
    parts_W = _rows_buffer(ws, "gemm_parts_W", n_chunks, (n_out, n_in)) if grad else None
    parts_b = _rows_buffer(ws, "gemm_parts_b", n_chunks, (n_out,))
    sse = [0.0] * n_chunks

    def work(k):
        Y, G, Xg, Tg = _gemm_scratch(ws, k, block, W, grad, gather)
        for c in range(k, n_chunks, n_workers):
            pW, pb = (parts_W[c] if grad else None), parts_b[c]
            if grad:
                pW.fill(0.0)
            pb.fill(0.0)
            j1 = min((c + 1) * per_chunk, n_blocks)
            sse[c] = _gemm_blocks(W, b, X, T, rows, start, n, block, c * per_chunk, j1, pW, pb, Y, G, Xg, Tg)

    with _hold_blas(block, n_out, n_in):
        _run(n_workers, work)
    # in chunk order
    np.sum(parts_b, axis=0, out=gb)
    if grad:
        np.sum(parts_W, axis=0, out=gW)
    total = 0.0
    for c in range(n_chunks):
        total += sse[c]
    return total, gW, gb


def _gemm_forward(W, b, X):
    """``X·Wᵀ + b`` by row blocks of single-threaded BLAS calls, run in parallel."""
    n_out, n_in = W.shape
    n = X.shape[0]
    if n <= GEMM_BLOCK_ROWS:  # one block
        with _hold_blas(n, n_out, n_in):
            Y = np.matmul(X, W.T)
        Y += b
        return Y
    Y = np.empty((n, n_out), dtype=W.dtype)
    block, n_blocks, _, _ = plan_gemm(n, n_out, n_in)
    n_workers = _workers(n_blocks)
    WT = W.T

    def work(k):
        for j in range(k, n_blocks, n_workers):
            lo, hi = j * block, min((j + 1) * block, n)
            np.matmul(X[lo:hi], WT, out=Y[lo:hi])

    with _hold_blas(block, n_out, n_in):
        _run(n_workers, work)
    Y += b
    return Y


# The update kind (cpu.PLAIN_SGD or cpu.ANY_RULE) of each hyper array seen
# lately, by id.  An optimiser hands out a new array whenever a value changes
# and never mutates one it handed out; the entry keeps its array alive, so
# the id is not reused while the entry exists.
_KINDS: dict[int, tuple[np.ndarray, object]] = {}
_KINDS_SIZE = 64


# The parallel kernels and the GEMM path take every rule through the generic
# copy of the update (cpu.ANY_RULE), whatever the optimiser: they run where a
# step's rows cost far more than its O·D updates, and compiled for each kind
# they cost 12-20 s of compilation apiece, once for every optimiser a user
# (or the test suite) tries (bench/RESULTS.md, fifth session).  Every copy
# gives the same bits (tests/test_small_fits.py), so this changes no result.
# The serial and small-problem kernels, where the update is a visible part of
# a step, keep the copies.
GENERIC = cpu.ANY_RULE


def _update_kind(hyper):
    """The kind of update the kernels compile for ``hyper`` (see cpu.update_kind)."""
    hit = _KINDS.get(id(hyper))
    if hit is not None and hit[0] is hyper:
        return hit[1]
    kind = cpu.update_kind(hyper[0])
    if len(_KINDS) >= _KINDS_SIZE:
        _KINDS.clear()  # (rare: a callback changing lr every step; a lost entry is only recomputed)
    _KINDS[id(hyper)] = (hyper, kind)
    return kind


# Entry-point keys.  A fused step or fit looks its compiled code up
# (fastlin._jit.find_entry) in a table kept with the shape's plan, which
# fixes the kernel, the dtype and the scratch, under ``id(kind)``, the update
# kind (one of cpu's three constants).  That decides the numba types of every
# argument: the rest is made by fastlin the same way every time (the model's
# parameters and optimiser state, C-contiguous and writeable, in the model's
# dtype or float64; the plan's scratch; Python bools, ints and floats), and X
# and T arrive 2-D and C-contiguous in the model's dtype (the contract above;
# :func:`as_input`), typed read-only whether or not they are (numba's array
# types ignore alignment).  The suite checks every call against numba's own
# typing (CHECK_ENTRY_TYPES).  Written out at the call sites: each function
# call or argument tuple on this path costs about 0.1 µs.


# Entry points of the other kernel calls (forward, losses, gradients), by
# (kernel, dtype): see _direct.
_ENTRIES: dict = {}


def _direct(kernel, *args):
    """``kernel(*args)`` through an entry point (fastlin._jit.find_entry).

    The first two arguments are the user's data (or X and the weight), typed
    read-only so that read-only data share the compiled code, and arrive
    C-contiguous (the contract above); every other argument is made here,
    in the first one's dtype or float64 (see "Entry-point keys").  For calls
    outside the training loop: the point is one compiled copy for
    writeable and read-only data.
    """
    key = (kernel, args[0].dtype)
    entry = _ENTRIES.get(key)
    if entry is None or _jit.CHECK_ENTRY_TYPES:
        entry = _jit.find_entry(_ENTRIES, key, kernel, args)
    return entry(*args)


def _gemm_step(X, T, W, b, has_bias, state, hyper, reduce_sum, ws, rows=None, start=0, n=None):
    n = X.shape[0] - start if n is None else n
    sse, gW, gb = _gemm_sums(W, b, X, T, ws, rows, start, n)
    loss, status = cpu._finish_step(
        gW,
        gb,
        sse,
        n,
        W,
        b,
        has_bias,
        state.slots_w,
        state.slots_b,
        state.counters,
        hyper,
        GENERIC,
        reduce_sum,
        _LIMITS[W.dtype],
    )
    return float(loss), int(status)


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------
def forward(X, W, b, has_bias):
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    if uses_gemm(n_out, n_in):
        return _gemm_forward(W, b, X)
    Y = np.empty((n_rows, n_out), dtype=W.dtype)
    kernel = cpu.forward_parallel if n_rows * n_in * n_out > PARALLEL_FORWARD_WORK else cpu.forward
    _direct(kernel, X, W, b, Y)
    return Y


def sse(P, T):
    """Sum of squared differences of two (N, O) arrays, as a float."""
    chunk_rows, n_chunks = plan_chunks(P.shape[0], P.shape[1], 1)
    partial = np.empty(n_chunks, dtype=np.float64)
    kernel = cpu.sse_parallel if n_chunks > 1 else cpu.sse
    return float(_direct(kernel, P, T, chunk_rows, partial))


def model_sse(X, T, W, b, has_bias, ws):
    """``Σ (X·Wᵀ + b − T)²`` without materialising the prediction."""
    if uses_gemm(*W.shape):
        return _gemm_sums(W, b, X, T, {} if ws is None else ws, grad=False)[0]
    chunk_rows, n_chunks = plan_chunks(X.shape[0], W.shape[0], W.shape[1])
    partial = np.empty(n_chunks, dtype=np.float64)
    kernel = cpu.model_sse_parallel if n_chunks > 1 else cpu.model_sse
    return float(_direct(kernel, X, T, W, b, chunk_rows, partial))


def mse_grad(X, T, W, b, has_bias, scale, ws, dtype=None):
    """Returns ``(Σ r², scale·Σ rᵀX, scale·Σ r)`` with ``r = X·Wᵀ + b − T``.

    Sums are float64; the gradients come back in ``dtype`` (default: the
    parameters' dtype).
    """
    n_out, n_in = W.shape
    if uses_gemm(n_out, n_in):
        loss, dW, db = _gemm_sums(W, b, X, T, ws)
    else:
        chunk_rows, n_chunks, work, acc, _, _ = _scratch(ws, X.shape[0], W)
        dW = np.empty((n_out, n_in), dtype=np.float64)
        db = np.empty(n_out, dtype=np.float64)
        kernel = cpu.mse_grad_parallel if n_chunks > 1 else cpu.mse_grad
        loss = _direct(kernel, X, T, W, b, chunk_rows, work, acc, dW, db)
    dtype = W.dtype if dtype is None else dtype
    return float(loss), (scale * dW).astype(dtype, copy=False), (scale * db).astype(dtype, copy=False)


def backward(X, dY, W, ws):
    """Returns ``(dX, dW, db)`` in the parameters' dtype (float64 sums inside)."""
    n_out, n_in = W.shape
    chunk_rows, n_chunks, work, _, _, _ = _scratch(ws, X.shape[0], W)
    dX = np.empty(X.shape, dtype=W.dtype)
    dW = np.empty((n_out, n_in), dtype=np.float64)
    db = np.empty(n_out, dtype=np.float64)
    kernel = cpu.backward_parallel if n_chunks > 1 else cpu.backward
    _direct(kernel, X, dY, W, chunk_rows, work, dX, dW, db)
    return dX, dW.astype(W.dtype), db.astype(W.dtype)


def _small(n_rows, n_out, n_in):
    """A batch this small runs in the plain-loop kernels (cpu.SMALL_WORK)."""
    return n_rows * n_out * n_in <= cpu.SMALL_WORK


def _step_kernel(n_rows, n_out, n_in, n_chunks):
    """The fused-step kernel for a batch of this shape (the shape alone decides)."""
    if _small(n_rows, n_out, n_in):
        return cpu.fused_step_small
    return cpu.fused_step_parallel if n_chunks > 1 else cpu.fused_step


def _fit_kernel(batch_size, n_out, n_in, n_chunks):
    """The fit kernel for batches of ``batch_size`` rows: the one
    :func:`_step_kernel` picks for a batch that size, so that a fit's steps
    round as lone steps do."""
    if _small(batch_size, n_out, n_in):
        return cpu.fit_steps_small
    return cpu.fit_steps_parallel if n_chunks > 1 else cpu.fit_steps


def fused_step(X, T, W, b, has_bias, state, hyper, reduce_sum, ws):
    """One full-batch step in place (W, b, ``state``).  Returns ``(loss, status)``."""
    n_out, n_in = W.shape
    if uses_gemm(n_out, n_in):
        return _gemm_step(X, T, W, b, has_bias, state, hyper, reduce_sum, ws)
    chunk_rows, _, work, acc, kernel, entries = _scratch(ws, X.shape[0], W)
    kind = GENERIC if kernel is cpu.fused_step_parallel else _update_kind(hyper)
    limit = _LIMITS[W.dtype]
    slots_w, slots_b, counters = state.slots_w, state.slots_b, state.counters
    entry = entries.get(id(kind))  # (see "Entry-point keys")
    if entry is None or _jit.CHECK_ENTRY_TYPES:
        args = (X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit, chunk_rows, work, acc)
        entry = _jit.find_entry(entries, id(kind), kernel, args)
    loss, status = entry(
        X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit, chunk_rows, work, acc
    )
    return float(loss), int(status)


def learning_rates(hyper, first_step, n):
    """The float64 learning rates of ``n`` steps from step ``first_step``
    under ``hyper``'s schedule (host-side, whatever the model's device)."""
    out = np.empty(n, dtype=np.float64)
    if n:
        cpu.learning_rates(hyper, first_step, out)
    return out


def apply_update(gW, gb, scale, W, b, has_bias, state, hyper):
    """The update of ``hyper`` from a given gradient ``scale·(gW, gb)``.  Returns a status."""
    gW = np.ascontiguousarray(gW, dtype=np.float64)
    gb = np.ascontiguousarray(gb, dtype=np.float64)
    return int(
        cpu.apply_update(
            gW,
            gb,
            scale,
            W,
            b,
            has_bias,
            state.slots_w,
            state.slots_b,
            state.counters,
            hyper,
            _update_kind(hyper),
            _LIMITS[W.dtype],
        )
    )


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
        self.work = np.empty(cpu.scratch_layout(n_out, n_in, n_chunks).size, dtype=np.float64)
        self.acc = np.empty((n_chunks, n_out, n_in), dtype=dtype)
        self.kernel = _fit_kernel(self.batch_size, n_out, n_in, n_chunks)
        self.entries = {}  # the kernel's entry points (see "Entry-point keys")


def fit_plan(n_rows, n_out, n_in, batch_size, shuffle, seed, dtype):
    return FitPlan(n_rows, n_out, n_in, batch_size, shuffle, seed, dtype)


def fit_steps(X, T, W, b, has_bias, state, hyper, reduce_sum, plan, losses):
    """Run ``len(losses)`` steps, writing each loss.  Returns ``(steps done, status)``."""
    if plan.gemm:
        return _gemm_fit_steps(X, T, W, b, has_bias, state, hyper, reduce_sum, plan, losses)
    kind = GENERIC if plan.kernel is cpu.fit_steps_parallel else _update_kind(hyper)
    limit = _LIMITS[W.dtype]
    slots_w, slots_b, counters = state.slots_w, state.slots_b, state.counters
    entry = plan.entries.get(id(kind))  # (see "Entry-point keys")
    if entry is None or _jit.CHECK_ENTRY_TYPES:
        args = (
            X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit,
            plan.batch_size, plan.shuffle, plan.seed, plan.chunk_rows, plan.perm, plan.work, plan.acc, losses,
        )  # fmt: skip
        entry = _jit.find_entry(plan.entries, id(kind), plan.kernel, args)
    done, status = entry(
        X, T, W, b, has_bias, slots_w, slots_b, counters, hyper, kind, reduce_sum, limit,
        plan.batch_size, plan.shuffle, plan.seed, plan.chunk_rows, plan.perm, plan.work, plan.acc, losses,
    )  # fmt: skip
    return int(done), int(status)


def _gemm_fit_steps(X, T, W, b, has_bias, state, hyper, reduce_sum, plan, losses):
    """The loop of ``cpu.fit_steps`` around GEMM-path steps (each step costs
    milliseconds, so the Python loop costs nothing that shows)."""
    n_rows = X.shape[0]
    counters = state.counters
    # One hold of BLAS's thread count for the whole segment (each step's own is then free).
    with _hold_blas(min(GEMM_BLOCK_ROWS, plan.batch_size), *W.shape):
        for s in range(len(losses)):
            pos, n = cpu.next_batch(counters, plan.perm, plan.shuffle, plan.seed, plan.batch_size, n_rows)
            rows = plan.perm if plan.shuffle else None
            losses[s], status = _gemm_step(X, T, W, b, has_bias, state, hyper, reduce_sum, plan.ws, rows, pos, n)
            if status != OK:
                return s, status
            cpu.advance(counters, n, n_rows)
    return len(losses), OK


# --------------------------------------------------------------------------
# the exact solve: Gram sums in one read of X (kernels: cpu_gram.py)
# --------------------------------------------------------------------------
def plan_gram_chunks(n_rows, n_in, n_out, dtype=np.float64):
    """``(chunk_rows, n_chunks)`` for :func:`gram_sums`, from the shape (and
    the data's dtype) alone.

    A chunk is a whole number of row blocks (``cpu_gram.BLOCK_ROWS`` for
    float64 data, ``cpu_gram.RUN_ROWS`` for float32); at most ``MAX_CHUNKS``
    chunks; and the per-chunk partial sums and scratch within
    ``SCRATCH_BYTES``.  For float64 data a chunk has at least ~32k
    multiply-adds.  For float32 data it has at least
    ``cpu_gram.CHUNK_MIN_ROWS`` rows (two chunks from half that many rows
    on), and the number of chunks is a power of two, rows shared evenly
    (the last chunk may be shorter): each chunk costs O(P²) once (its
    reference shift, the zeroing and the reduction of its partial), which
    at 100,000 × 200 in 63 chunks of 1,600 rows was about a tenth of the
    pass (bench/RESULTS.md, issue 15); and a power of two splits evenly
    over 1, 2, 4, ... threads.
    """
    from . import cpu_gram

    if np.dtype(dtype) == np.float32:
        rows_pad, cols_pad = cpu_gram.padded_shape32(n_in, n_out)
        block = cpu_gram.RUN_ROWS
        per_chunk = 8 * rows_pad * cols_pad + 2 * 4 * block * cols_pad
        least = cpu_gram.CHUNK_MIN_ROWS
        want = n_rows // least if n_rows >= 2 * least else (2 if 2 * n_rows >= least else 1)
        want = max(1, min(want, MAX_CHUNKS, SCRATCH_BYTES // per_chunk))
        n_chunks = 1 << (int(want).bit_length() - 1)
        rows = _cdiv(_cdiv(n_rows, n_chunks), block) * block
        rows = max(1, min(rows, n_rows))
        return rows, _cdiv(n_rows, rows)
    else:
        p_pad = cpu_gram.padded_width(n_in, n_out)
        block = cpu_gram.BLOCK_ROWS
        per_chunk = 8 * p_pad * (p_pad + 2 * block)
        per_row = max(1, p_pad * p_pad // 2)
    rows = max(_cdiv(n_rows, MAX_CHUNKS), _cdiv(MIN_CHUNK_WORK, per_row))
    by_memory = max(1, SCRATCH_BYTES // per_chunk)
    rows = max(rows, _cdiv(n_rows, by_memory))
    rows = _cdiv(rows, block) * block
    rows = max(1, min(rows, n_rows))
    return rows, _cdiv(n_rows, rows)


def gram_sums(X, T, sample_weight=None, x_ref=None, t_ref=None):
    """Float64 Gram sums of (X, T) in one read, shifted by a reference row.

    Parameters
    ----------
    X : ndarray (N, D), T : ndarray (N, O)
        C-contiguous, one float dtype (float32 or float64), N >= 1.
    sample_weight : ndarray (N,) float64, optional
        Non-negative row weights.
    x_ref, t_ref : ndarray (D,), (O,), optional
        The reference row subtracted before summing (default: ``X[0]`` and
        ``T[0]``).  Chunks of one data set summed separately (Dask) pass the
        same reference so that their sums can be added.

    Returns
    -------
    cpu_gram.GramSums
        Bit-identical for any number of threads (fixed chunks, added in
        order).
    """
    from . import cpu_gram

    n_rows, n_in = X.shape
    n_out = T.shape[1]
    x_ref = np.array(X[0] if x_ref is None else x_ref, dtype=np.float64)
    t_ref = np.array(T[0] if t_ref is None else t_ref, dtype=np.float64)
    single = X.dtype == np.float32 and T.dtype == np.float32
    use_w = sample_weight is not None
    w = np.ascontiguousarray(sample_weight, dtype=np.float64) if use_w else np.empty(0, dtype=np.float64)
    chunk_rows, n_chunks = plan_gram_chunks(n_rows, n_in, n_out, np.float32 if single else np.float64)
    if single:
        rows_pad, cols_pad = cpu_gram.padded_shape32(n_in, n_out)
        run = min(cpu_gram.RUN_ROWS, chunk_rows)
        # zeros: the padding columns of the scratch are never written and must read 0
        Z = np.zeros((n_chunks, run, cols_pad), dtype=np.float32)
        Zw = np.zeros((n_chunks, run, cols_pad) if use_w else (n_chunks, 0, 0), dtype=np.float32)
        partial = np.empty((n_chunks, rows_pad, cols_pad), dtype=np.float64)
        p = n_in + 1 + n_out
        S = np.empty((p, p), dtype=np.float64)
        kernel = cpu_gram.gram32_parallel if n_chunks > 1 else cpu_gram.gram32
        kernel(X, T, w, use_w, x_ref, t_ref, chunk_rows, Z, Zw, partial, S)
    else:
        p_pad = cpu_gram.padded_width(n_in, n_out)
        block = min(cpu_gram.BLOCK_ROWS, chunk_rows)
        # zeros: the padding rows of the scratch are never written and must read 0
        Zt = np.zeros((n_chunks, p_pad, block), dtype=np.float64)
        Zw = np.zeros((n_chunks, p_pad, block) if use_w else (n_chunks, 0, 0), dtype=np.float64)
        partial = np.empty((n_chunks, p_pad, p_pad), dtype=np.float64)
        S = np.empty((p_pad, p_pad), dtype=np.float64)
        kernel = cpu_gram.gram_parallel if n_chunks > 1 else cpu_gram.gram
        kernel(X, T, w, use_w, x_ref, t_ref, chunk_rows, Zt, Zw, partial, S)
    d1 = n_in + 1
    return cpu_gram.GramSums(
        xx=S[:n_in, :n_in].copy(),
        xt=S[:n_in, d1 : d1 + n_out].copy(),
        sx=S[:n_in, n_in].copy(),
        st=S[n_in, d1 : d1 + n_out].copy(),
        tt=np.diagonal(S)[d1 : d1 + n_out].copy(),
        sw=float(S[n_in, n_in]),
        n_rows=int(n_rows),
        x_ref=x_ref,
        t_ref=t_ref,
    )
