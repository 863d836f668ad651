"""The tiled plan's two products through cuBLAS (CuPy's ``matmul``), with
fastlin's own kernels around them: the ``cublas`` extra
(``pip install "fastlin[cuda,cublas]"``).

A step of the tiled plan is two GEMM-shaped products, ``P = X_b·Wᵀ`` (batch,
O) and ``G = Rᵀ·X_b`` (O, D).  When CuPy imports (see :func:`cupy_module`
and ``cuda_config.USE_CUPY``) a fit's tiled steps form both with
``cupy.matmul`` on zero-copy CuPy views of fastlin's numba device arrays
(``cupy.asarray`` on their ``__cuda_array_interface__``), on the stream
numba launches on, and fastlin's kernels do the rest:

:func:`gather_rows`
    (shuffled batches only) the batch rows of X into a contiguous buffer, so
    cuBLAS reads a plain matrix;
:func:`residual_rows`
    ``R = P + b − T`` in place of P, the loss partials ``Σ R²`` and the bias
    gradient partials ``Σ_k R[k, o]`` (float64) of each block of rows;
:func:`pack_grad`
    G and the bias partials (in block order) into the float64 gradient
    vector that ``update_check`` / ``update_apply`` of :mod:`.cuda_tiled`
    turn into the checked update, exactly as the numba tiles do.

Accuracy
    cuBLAS's SGEMM multiplies and accumulates float32 data in float32 (CuPy
    leaves TF32 off unless ``CUPY_TF32=1``), in an order of its own: each
    element of P and G carries float32 rounding of about ``√K·2⁻²⁴`` of
    the sum of its terms' magnitudes (K = D for P, the batch for G; at
    worst ``K·2⁻²⁴``), against at most ``2⁻²⁴·64`` per run plus float64 sums
    for the numba tiles.  The residual, the loss and the bias gradient are
    formed in float64 from P, and R is rounded once to the data's dtype
    before the second product.  float64 data goes through DGEMM.  cuBLAS's
    results are bit-identical from run to run on the same GPU model and
    toolkit version (its documented reproducibility), not across them.

Where this is tested
    The glue (views, shapes, the stream, the kernels around the products) is
    tested in numba's simulator with a stand-in for the few CuPy calls used
    (``tests/cuda/fake_cupy.py``, numpy underneath), against a float64
    reference.  cuBLAS itself runs only on a real GPU: there the same tests
    (``tests/cuda/test_cuda_cublas.py``) use the real CuPy, and
    ``bench/gpu_check.sh`` times the wide case with CuPy and with the numba
    tiles (``USE_CUPY`` off) and checks the first loss against torch.  No GPU
    has run it yet.

Only the fit path (``fused_step``, ``fit_steps``) uses cuBLAS; ``mse_grad``
and ``backward`` keep the numba tiles.
"""

from __future__ import annotations

import importlib

import numpy as np
from numba import cuda
from numba import types as _types
from numba.cuda import config as _cuda_config

from . import cuda_config as config
from .abi import CNT_BAD, CNT_BAD_GRAD, CNT_POS, CNT_STATUS, OK
from .cuda_config import CACHE, TPB
from .cuda_device import C_BATCH, C_NROWS, C_SHUFFLE, _block_sum

SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)


def _import_cupy():
    """``import cupy``: the one import hook (tests replace it with a stand-in).
    (By name: CuPy is optional, and its absence is no error for mypy either.)"""
    return importlib.import_module("cupy")


# What the automatic choice found, by import hook (tests replace the hook):
# a failed import is not cached by Python, and costs about 0.1 ms a fit call.
_AUTOMATIC: dict = {}


def cupy_module():
    """The CuPy module the tiled plan should use now, or None.

    ``cuda_config.USE_CUPY``: False, never; None (the default), when CuPy
    imports, except in numba's simulator (CuPy needs a GPU); True, always:
    an ImportError naming the extra when CuPy is missing.
    """
    use = config.USE_CUPY
    if use is False or (use is None and SIMULATOR):
        return None
    hook = _import_cupy
    if use is None and hook in _AUTOMATIC:
        return _AUTOMATIC[hook]
    try:
        found = _AUTOMATIC[hook] = hook()
        return found
    except Exception as exc:  # noqa: BLE001 (a broken CuPy install is "no CuPy" unless it was asked for)
        _AUTOMATIC[hook] = None
        if use:
            raise ImportError(
                f"cuda_config.USE_CUPY (FASTLIN_CUDA_CUPY=1) asks for CuPy, which does not import ({exc}); "
                'install the extra: pip install "fastlin[cublas]"'
            ) from None
        return None


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------
@cuda.jit(cache=CACHE)
def gather_rows(X, counters, cfg, perm, Xb):
    """``Xb[k, d] = X[perm[pos + k], d]`` for the batch rows ``k < n``.
    1-D grid-stride over ``n·D``; consecutive threads take consecutive d."""
    if counters[CNT_STATUS] != OK:
        return
    pos = counters[CNT_POS]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - pos)
    n_in = X.shape[1]
    for idx in range(cuda.grid(1), n * n_in, cuda.gridsize(1)):
        k = idx // n_in
        d = idx - k * n_in
        Xb[k, d] = X[perm[pos + k], d]


@cuda.jit(cache=CACHE)
def residual_rows(P, T, b, has_bias, counters, cfg, perm, chunk_rows, loss_p, part_b):
    """``P[k, o] ← P[k, o] + b[o] − T[row(k), o]`` (float64, rounded once) for
    the batch rows, where P holds ``X_b·Wᵀ`` on entry.  Block ``c`` of the
    1-D grid takes batch rows ``c·chunk_rows ..`` and writes ``loss_p[c] =
    Σ r²`` and ``part_b[c·O + o] = Σ_k r[k, o]`` (float64, rows in order);
    threads run across o, so every row is read and written coalesced.  Also
    clears the update-check flags of the step.  Does nothing once a fit has
    failed."""
    red = cuda.shared.array(TPB, np.float64)
    if counters[CNT_STATUS] != OK:
        return
    n_out = P.shape[1]
    pos = counters[CNT_POS]
    n = min(cfg[C_BATCH], cfg[C_NROWS] - pos)
    shuffle = cfg[C_SHUFFLE] != 0
    t = cuda.threadIdx.x
    c = cuda.blockIdx.x
    if c == 0 and t == 0:
        counters[CNT_BAD] = 0
        counters[CNT_BAD_GRAD] = 0
    lo = c * chunk_rows
    hi = min(lo + chunk_rows, n)
    s2 = 0.0
    for o in range(t, n_out, TPB):
        bias = np.float64(b[o]) if has_bias else 0.0
        s = 0.0
        for k in range(lo, hi):
            row = perm[pos + k] if shuffle else pos + k
            r = np.float64(P[k, o]) + bias - np.float64(T[row, o])
            P[k, o] = r
            s += r
            s2 += r * r
        part_b[c * n_out + o] = s
    total = _block_sum(s2, red, TPB)
    if t == 0:
        loss_p[c] = total


@cuda.jit(cache=CACHE)
def pack_grad(G, part_b, n_chunks, counters, part):
    """``part[o·D + d] = G[o, d]`` and ``part[O·D + o] = Σ_c part_b[c·O + o]``
    (float64, blocks in order): the gradient vector of one split for
    ``update_check``.  1-D grid over E."""
    if counters[CNT_STATUS] != OK:
        return
    n_out, n_in = G.shape
    od = n_out * n_in
    e = cuda.grid(1)
    if e < od:
        o = e // n_in
        part[e] = G[o, e - o * n_in]
    elif e < od + n_out:
        o = e - od
        s = 0.0
        for c in range(n_chunks):
            s += part_b[c * n_out + o]
        part[e] = s


def launch_signatures(dtype):
    """Argument types of this module's kernels as launched (the compile
    checks, as :func:`fastlin.backends.cuda.launch_signatures`)."""
    f = getattr(_types, dtype)
    a2, a1 = _types.Array(f, 2, "C"), _types.Array(f, 1, "C")
    f1 = _types.Array(_types.float64, 1, "C")
    i1 = _types.Array(_types.int64, 1, "C")
    i8, b1 = _types.int64, _types.boolean
    return {
        "gather_rows": [a2, i1, i1, i1, a2],
        "residual_rows": [a2, a2, a1, b1, i1, i1, i1, i8, f1, f1],
        "pack_grad": [a2, f1, i8, i1, f1],
    }


KERNELS = tuple(launch_signatures("float32"))


# --------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def plan_chunks(n_rows):
    """``(rows per block, blocks)`` of :func:`residual_rows` for a batch: blocks
    of TILE_ROWS rows, at most MAX_CHUNKS of them (shape-dependent only)."""
    n_chunks = max(1, min(config.MAX_CHUNKS, _cdiv(n_rows, config.TILE_ROWS)))
    chunk_rows = _cdiv(n_rows, n_chunks)
    return chunk_rows, _cdiv(n_rows, chunk_rows)


def numba_stream_handle():
    """The CUDA stream numba launches on: the legacy default stream (0) or,
    with numba's per-thread default stream, ``cudaStreamPerThread`` (2)."""
    return 2 if getattr(_cuda_config, "CUDA_PER_THREAD_DEFAULT_STREAM", 0) else 0


class CublasStep:
    """The device buffers and CuPy views of a fit's cuBLAS steps (one per
    :class:`fastlin.backends.cuda_ops.FitPlan` of the tiled plan)."""

    def __init__(self, cp, n_rows, batch, n_out, n_in, shuffle, dtype):
        self.cp = cp
        self.n_rows, self.batch = n_rows, batch
        self.n_out, self.n_in = n_out, n_in
        self.shuffle = shuffle
        self.dtype = np.dtype(dtype)
        self.chunk_rows, self.n_chunks = plan_chunks(batch)
        self.P = cuda.device_array((batch, n_out), dtype=self.dtype)  # X_b·Wᵀ, then R
        self.G = cuda.device_array((n_out, n_in), dtype=self.dtype)  # Rᵀ·X_b
        self.Xb = cuda.device_array((batch, n_in), dtype=self.dtype) if shuffle else None
        self.loss_p = cuda.device_array(self.n_chunks, dtype=np.float64)
        self.part_b = cuda.device_array(self.n_chunks * n_out, dtype=np.float64)
        self.part = cuda.device_array(n_out * n_in + n_out, dtype=np.float64)
        self.cP, self.cG = cp.asarray(self.P), cp.asarray(self.G)
        self.cXb = cp.asarray(self.Xb) if shuffle else None
        handle = numba_stream_handle()
        self.stream = cp.cuda.Stream.null if handle == 0 else cp.cuda.ExternalStream(handle)

    def views(self, X, W):
        """CuPy views (no copy) of a call's X and W."""
        if X.dtype != self.dtype or W.dtype != self.dtype:
            raise TypeError(f"cuBLAS step: X {X.dtype} and W {W.dtype} must both be {self.dtype}")
        return self.cp.asarray(X), self.cp.asarray(W)

    def step(
        self,
        launch,
        kernels,
        views,
        pos,
        X,
        T,
        W,
        b,
        has_bias,
        slots_w,
        slots_b,
        counters,
        hyper,
        cfg,
        perm,
        reduce_sum,
        limit,
        scratch,
        losses,
    ):
        """Queue one step (nothing waits).  ``pos`` is the batch position the
        host follows (as the device counters will have it when the step runs);
        ``launch`` is cuda_ops' launcher, ``kernels`` :mod:`.cuda`."""
        cX, cW = views
        n = min(self.batch, self.n_rows - pos)
        if self.shuffle:
            launch(gather_rows, max(1, min(config.MAX_CHUNKS, _cdiv(n * self.n_in, TPB))), TPB)(
                X, counters, cfg, perm, self.Xb
            )
            xb = self.cXb[:n]
        else:
            xb = cX[pos : pos + n]
        p = self.cP[:n]
        with self.stream:
            self.cp.matmul(xb, cW.T, out=p)
        launch(residual_rows, self.n_chunks, TPB)(
            self.P, T, b, has_bias, counters, cfg, perm, self.chunk_rows, self.loss_p, self.part_b
        )
        with self.stream:
            self.cp.matmul(p.T, xb, out=self.cG)
        n_el = self.part.shape[0]
        grid = _cdiv(n_el, TPB)
        launch(pack_grad, grid, TPB)(self.G, self.part_b, self.n_chunks, counters, self.part)
        launch(kernels.update_check, grid, TPB)(
            self.loss_p,
            self.n_chunks,
            self.part,
            1,
            0.0,
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
        )
        launch(kernels.update_apply, grid, TPB)(W, b, has_bias, slots_w, slots_b, counters, hyper, cfg, False, scratch)
