"""The CUDA backend: allocates device arrays, picks a launch plan, launches.

The interface of :mod:`fastlin.backends.protocol` (``Ops``), as
:mod:`fastlin.backends.cpu_ops`.  Arrays are numba device arrays; losses
come back as Python floats.  An optimiser's ``state`` has its slots on the
device and its ``counters`` on the host (they are copied into the device
counters at the start of a call and back at the end); ``hyper`` is a host
``abi.HYPER`` array, copied to the device once per array.

Two launch plans, chosen from the layer's shape (:func:`path_for`):

``"rows"`` (row streaming; at most ``min(OMAX, TPB)`` outputs and
    ``ACC·TPB`` parameters, see :mod:`.cuda_config`)
    A step is two launches: :func:`fastlin.backends.cuda_rows.step_partials`
    reads X once (128-bit loads where the rows are 16-byte aligned) into
    per-block partials, and :func:`fastlin.backends.cuda_rows.step_update` (one
    block) adds them with a fixed tree and applies the update.  Problems of the seed's size (``batch·O·D <= ONE_LAUNCH_WORK``)
    run a whole fit in one launch of one block
    (:func:`fastlin.backends.cuda_rows.fit_steps`).
``"tiled"`` (any shape)
    Register-blocked tiles (BT×BT outputs per block of TS×TS threads):
    ``residual``, ``grad_partials``, ``update_check``, ``update_apply`` (four
    launches a step).  With CuPy installed (the ``cublas`` extra;
    ``cuda_config.USE_CUPY``), a fit's two products go to cuBLAS instead,
    with fastlin's kernels around them (:mod:`.cuda_cublas`).

A fit of many launches never waits between steps: every kernel reads the
batch position and the fit's status from the device counters, the losses
stay on the device, and the host reads the counters back once at the end.
"""

from __future__ import annotations

import collections
import functools
import sys
import threading
import warnings

import numpy as np
from numba import cuda as _cuda
from numba.cuda import config as _cuda_config

from .._dispatch import is_device_array
from .._errors import DeviceError
from .._validate import as_host_array, check_dtype_kind, check_not_requires_grad
from . import cuda as K
from . import cuda_config as config
from .abi import CNT_DEVICE_SIZE, CNT_DONE, CNT_POS, CNT_SIZE, CNT_STATUS, HYPER, OK
from .cuda_device import C_ADVANCE, C_BATCH, C_CHUNK, C_GROUPS, C_KROWS, C_NROWS, C_SHUFFLE, C_SIZE, C_VEC

name = "cuda"

SIMULATOR = bool(_cuda_config.ENABLE_CUDASIM)

# Every tuning knob (block sizes, chunk counts, the forced plans of the
# tests) lives in cuda_config and is read there at each call, so that tests
# can patch it.


def _cdiv(a, b):
    return -(-a // b)


def _launch(kernel, grid, block):
    """``kernel[grid, block]``, configured once per geometry on a GPU.

    numba-cuda warns about grids of fewer than 128 blocks; fastlin launches
    small grids on purpose (one block runs a whole small fit), so the warning
    is silenced here, once per configuration, and nowhere else.  The
    simulator's configured kernels share state, so there it is built anew.
    """
    if SIMULATOR:
        return kernel[grid, block]
    return _configured(kernel, grid, block)


@functools.lru_cache(maxsize=1024)
def _configured(kernel, grid, block):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Grid size .* will likely result in GPU under-utilization")
        return kernel[grid, block]


def n_params(n_out, n_in):
    """Length E of the parameter vector (W then b)."""
    return n_out * n_in + n_out


def path_for(n_out, n_in):
    """The launch plan for a layer: "rows" (row streaming) or "tiled" (TS×TS tiles)."""
    if (
        not config.FORCE_TILED
        and n_out <= min(config.OMAX, config.TPB)
        and n_params(n_out, n_in) <= config.ACC * config.TPB
    ):
        return "rows"
    return "tiled"


def rows_aligned(X):
    """True when every row of the C-contiguous device array X starts on a
    16-byte boundary, so that the rows plan may read it with 128-bit loads."""
    if (X.shape[1] * X.dtype.itemsize) % 16:
        return False
    iface = X.__array_interface__ if SIMULATOR else X.__cuda_array_interface__
    return iface["data"][0] % 16 == 0


def plan_chunks(n_rows):
    """Rows plan: ``(rows per block, blocks)`` for a batch of ``n_rows``."""
    n_chunks = max(1, min(config.MAX_CHUNKS, _cdiv(n_rows, config.TPB)))
    chunk_rows = _cdiv(n_rows, n_chunks)
    return chunk_rows, _cdiv(n_rows, chunk_rows)


def plan_splits(n_rows, n_out, n_in):
    """Tiled plan: ``(rows per split, splits)`` of the gradient over a batch."""
    tiles = _cdiv(n_out, config.BT) * _cdiv(n_in, config.BT)
    splits = max(1, min(_cdiv(config.TARGET_BLOCKS, tiles), _cdiv(n_rows, config.MIN_SPLIT_ROWS)))
    rows = _cdiv(_cdiv(n_rows, splits), config.TS) * config.TS
    return rows, _cdiv(n_rows, rows)


def row_groups(n_out, n_in):
    """Rows plan: how many row groups share the gradient phase of a tile."""
    n_el = n_params(n_out, n_in)
    return config.TPB // n_el if n_el <= config.TPB else 1


# --------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------
def _device_view(a, name):
    """A numba device array viewing ``a``'s GPU memory (no copy), or None for
    host data."""
    if getattr(a, "__cuda_ndarray__", False):
        return a
    if not is_device_array(a):
        return None
    check_not_requires_grad(a, name)  # the same message as for host tensors
    try:
        has_cai = hasattr(a, "__cuda_array_interface__")
    except Exception:
        has_cai = True  # it refuses to export; as_cuda_array says why
    if not has_cai:
        return _from_dlpack(a, name)
    try:
        # A v3 interface names its producer's stream, which numba waits for.
        view = _cuda.as_cuda_array(a)
    except Exception as exc:  # a producer that refuses to export its memory
        raise TypeError(f"{name}: cannot view this GPU array through __cuda_array_interface__ ({exc})") from None
    _wait_for_torch_stream(a)
    return view


def _consumer_stream():
    """The DLPack number of the stream fastlin's kernels run on: numba
    launches on the default stream, legacy (1) or per-thread (2)."""
    return 2 if getattr(_cuda_config, "CUDA_PER_THREAD_DEFAULT_STREAM", 0) else 1


def _wait_for_torch_stream(a):
    """Order fastlin's kernels after the work queued on a torch tensor.

    torch exports ``__cuda_array_interface__`` version 2, without a stream:
    a tensor written on a side stream (``with torch.cuda.stream(s)``) may
    still be in flight.  fastlin launches on the default stream, so make
    torch's default stream wait for its current one: a device-side wait, no
    host synchronisation, nothing at all on the default stream.  torch is
    looked up, never imported (a torch tensor means torch is loaded).
    """
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(a, torch.Tensor) or not a.is_cuda:
        return
    current = torch.cuda.current_stream(a.device)
    default = torch.cuda.default_stream(a.device)
    if current != default:
        default.wait_stream(current)


def _from_dlpack(a, name):
    """View a DLPack-only GPU array (e.g. a JAX array) as a numba device array.

    The producer is told the consumer's stream (DLPack's ``stream``
    argument), so it orders its own pending work before fastlin's kernels;
    nothing waits for the whole device.  Any failure is a TypeError naming
    the argument; a missing ``cuda.core`` (it comes with numba-cuda) is a
    DeviceError.
    """
    try:
        from cuda.core.utils import StridedMemoryView
    except ImportError as exc:
        raise DeviceError(f"{name}: DLPack GPU arrays need cuda.core (installed with numba-cuda): {exc}") from None
    try:
        view = StridedMemoryView.from_dlpack(a, stream_ptr=_consumer_stream())
        dtype = np.dtype(view.dtype)
    except Exception as exc:  # noqa: BLE001 (whatever the producer raises, the user learns it as a TypeError)
        raise TypeError(f"{name}: cannot view this DLPack array on the GPU ({exc})") from None
    strides = None if view.strides is None else tuple(int(s) * dtype.itemsize for s in view.strides)
    desc = {
        "shape": tuple(int(s) for s in view.shape),
        "strides": strides,
        "typestr": dtype.str,
        "data": (int(view.ptr), bool(getattr(view, "readonly", False))),
        "version": 3,
    }
    try:
        return _cuda.from_cuda_array_interface(desc, owner=a, sync=False)
    except Exception as exc:  # noqa: BLE001 (as above)
        raise TypeError(f"{name}: cannot view this DLPack array on the GPU ({exc})") from None


def as_input(a, name, dtype):
    """User data -> C-contiguous device array of ``dtype``.

    GPU arrays of the right dtype and layout are used as they are (no copy);
    other GPU arrays are converted on the device; host data is validated and
    cast like on the CPU, then copied to the device once.
    """
    view = _device_view(a, name)
    if view is None:
        return _cuda.to_device(as_host_array(a, name, dtype))
    check_dtype_kind(view.dtype, name)
    if view.dtype == dtype and view.is_c_contiguous():
        return view
    if view.ndim not in (1, 2) or view.size == 0:
        return view  # the caller's shape check reports it
    out = _cuda.device_array(view.shape, dtype=dtype)
    kernel = K.cast_copy_1d if view.ndim == 1 else K.cast_copy_2d
    _launch(kernel, min(config.MAX_CHUNKS, _cdiv(view.size, config.TPB)), config.TPB)(view, out)
    return out


def from_host(a):
    """A host array -> a device array (a private copy)."""
    return _cuda.to_device(np.ascontiguousarray(a))


def to_host(a):
    """A device array -> a numpy array (a copy)."""
    if hasattr(a, "copy_to_host"):
        return a.copy_to_host()
    return np.array(a, copy=True)


def empty(shape, dtype):
    return _cuda.device_array(shape, dtype=dtype)


def zeros(shape, dtype):
    return _cuda.to_device(np.zeros(shape, dtype=dtype))


def copy_into(dst, src):
    """``dst[...] = src``; ``src`` is a host array of dst's shape or a device array."""
    if getattr(src, "__cuda_ndarray__", False):
        dst.copy_to_device(src)
    else:
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))


def all_finite(a):
    flat = a.reshape(a.size) if a.ndim != 1 else a
    flag = _cuda.to_device(np.zeros(1, dtype=np.int32))
    if flat.size:
        _launch(K.all_finite, min(config.MAX_CHUNKS, _cdiv(flat.size, config.TPB)), config.TPB)(flat, flag)
    return int(flag.copy_to_host()[0]) == 0


def _scratch(ws, key, shape, dtype=np.float64):
    """A device buffer cached in the model's workspace dict."""
    full = ("cuda", key, shape, np.dtype(dtype).str)
    buf = ws.get(full)
    if buf is None:
        buf = ws[full] = _cuda.device_array(shape, dtype=dtype)
    return buf


def _host_sum(partials):
    """Add device partial sums on the host, in index order."""
    return float(sum(partials.copy_to_host().tolist()))


class _Static:
    """Device counters and plan for a lone full-batch op (no fit): status
    OK, position 0, no shuffle, no update."""

    def __init__(self, n_rows, n_out, n_in):
        self.counters = _cuda.to_device(np.zeros(CNT_DEVICE_SIZE, dtype=np.int64))
        cfg = np.zeros(C_SIZE, dtype=np.int64)
        cfg[C_NROWS] = cfg[C_BATCH] = n_rows
        self.split_rows, self.n_splits = plan_splits(n_rows, n_out, n_in)
        cfg[C_KROWS] = self.split_rows
        self.cfg = _cuda.to_device(cfg)
        self.perm = _cuda.device_array(1, dtype=np.int64)


def _static(ws, n_rows, n_out, n_in):
    key = ("cuda-static", n_rows, n_out, n_in)
    st = ws.get(key)
    if st is None:
        st = ws[key] = _Static(n_rows, n_out, n_in)
    return st


def _limit(dtype):
    """The largest finite value of the model's dtype: no update may go beyond it."""
    return float(np.finfo(dtype).max)


# Device copies of ``hyper`` arrays.  An optimiser hands out a new array
# whenever a value changes and never mutates one it handed out, so the id of
# a host array (kept alive by the entry, so that the id is not reused)
# names its content.
_HYPER_CACHE: collections.OrderedDict = collections.OrderedDict()
_HYPER_CACHE_SIZE = 32
_HYPER_LOCK = threading.Lock()


def _device_hyper(hyper):
    """The device copy of the one-element ``abi.HYPER`` host array ``hyper``."""
    key = id(hyper)
    with _HYPER_LOCK:
        hit = _HYPER_CACHE.get(key)
        if hit is not None and hit[0] is hyper:
            _HYPER_CACHE.move_to_end(key)
            return hit[1]
    if hyper.dtype != HYPER or hyper.shape != (1,):
        raise TypeError(f"hyper must be a one-element array of abi.HYPER, got {hyper.dtype} {hyper.shape}")
    device = _cuda.to_device(np.ascontiguousarray(hyper))
    with _HYPER_LOCK:
        _HYPER_CACHE[key] = (hyper, device)
        while len(_HYPER_CACHE) > _HYPER_CACHE_SIZE:
            _HYPER_CACHE.popitem(last=False)
    return device


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------
def _tiles2d(n_rows, n_out):
    return (_cdiv(n_rows, config.TS), _cdiv(n_out, config.TS)), (config.TS, config.TS)


def _residual_grid(n_rows, n_out):
    """Grid and block of ``residual``: BT×BT outputs per TS×TS block."""
    return (_cdiv(n_rows, config.BT), _cdiv(n_out, config.BT)), (config.TS, config.TS)


def _grad_grid(n_out, n_in, n_splits):
    """Grid of ``grad_partials``: BT×BT gradient elements per block and split."""
    return (_cdiv(n_in, config.BT), _cdiv(n_out, config.BT), n_splits)


def forward(X, W, b, has_bias):
    n_rows = X.shape[0]
    n_out = W.shape[0]
    Y = _cuda.device_array((n_rows, n_out), dtype=W.dtype)
    grid, block = _tiles2d(n_rows, n_out)
    _launch(K.forward, grid, block)(X, W, b, has_bias, Y)
    return Y


def sse(P, T):
    """Sum of squared differences of two (N, O) device arrays, as a float."""
    n_blocks = max(1, min(config.MAX_CHUNKS, _cdiv(P.shape[0] * P.shape[1], config.TPB)))
    partial = _cuda.device_array(n_blocks, dtype=np.float64)
    _launch(K.sse, n_blocks, config.TPB)(P, T, partial)
    return _host_sum(partial)


def model_sse(X, T, W, b, has_bias, ws):
    """``Σ (X·Wᵀ + b − T)²`` without materialising the prediction."""
    grid, block = _tiles2d(X.shape[0], W.shape[0])
    partial = _cuda.device_array(grid[0] * grid[1], dtype=np.float64)
    _launch(K.model_sse, grid, block)(X, T, W, b, has_bias, partial)
    return _host_sum(partial)


def _grad_tiled(X, T, W, b, has_bias, ws):
    """Tiled gradient partials of a full batch: (loss partials, part, splits)."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    st = _static(ws, n_rows, n_out, n_in)
    grid, block = _residual_grid(n_rows, n_out)
    R = _scratch(ws, "R", (n_rows, n_out))
    loss_p = _scratch(ws, "loss_tiled", (grid[0] * grid[1],))
    part = _scratch(ws, "part_tiled", (st.n_splits * n_params(n_out, n_in),))
    _launch(K.residual, grid, block)(X, T, W, b, has_bias, st.counters, st.cfg, st.perm, R, loss_p)
    ggrid = _grad_grid(n_out, n_in, st.n_splits)
    _launch(K.grad_partials, ggrid, block)(X, R, st.counters, st.cfg, st.perm, part)
    return loss_p, part, st.n_splits


def mse_grad(X, T, W, b, has_bias, scale, ws, dtype=None):
    """Returns ``(Σ r², scale·Σ rᵀX, scale·Σ r)`` with ``r = X·Wᵀ + b − T``;
    the gradients are device arrays of ``dtype`` (default: W's)."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    n_el = n_params(n_out, n_in)
    if path_for(n_out, n_in) == "rows":
        chunk_rows, n_parts = plan_chunks(n_rows)
        loss_p = _scratch(ws, "loss_rows", (n_parts,))
        part = _scratch(ws, "part_rows", (n_parts * n_el,))
        groups = row_groups(n_out, n_in)
        _launch(K.mse_grad, n_parts, config.TPB)(
            X, T, W, b, has_bias, chunk_rows, groups, rows_aligned(X), loss_p, part
        )
    else:
        loss_p, part, n_parts = _grad_tiled(X, T, W, b, has_bias, ws)
    dtype = W.dtype if dtype is None else np.dtype(dtype)
    dW = _cuda.device_array((n_out, n_in), dtype=dtype)
    db = _cuda.device_array(n_out, dtype=dtype)
    _launch(K.reduce_grad, _cdiv(n_el, config.TPB), config.TPB)(part, n_parts, float(scale), dW, db)
    return _host_sum(loss_p), dW, db


def backward(X, dY, W, ws):
    """Returns ``(dX, dW, db)`` as device arrays of W's dtype (float64 sums)."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    dX = _cuda.device_array((n_rows, n_in), dtype=W.dtype)
    _launch(K.backward, _cdiv(n_rows * n_in, config.TPB), config.TPB)(dY, W, dX)
    st = _static(ws, n_rows, n_out, n_in)
    n_el = n_params(n_out, n_in)
    part = _scratch(ws, "part_tiled", (st.n_splits * n_el,))
    ggrid = _grad_grid(n_out, n_in, st.n_splits)
    _launch(K.grad_partials, ggrid, (config.TS, config.TS))(X, dY, st.counters, st.cfg, st.perm, part)
    dW = _cuda.device_array((n_out, n_in), dtype=W.dtype)
    db = _cuda.device_array(n_out, dtype=W.dtype)
    _launch(K.reduce_grad, _cdiv(n_el, config.TPB), config.TPB)(part, st.n_splits, 1.0, dW, db)
    return dX, dW, db


def fused_step(X, T, W, b, has_bias, state, hyper, reduce_sum, ws):
    """One full-batch optimiser step in place.  Returns ``(loss, status)``;
    ``state.counters`` counts the step (CNT_STEP, CNT_HAS_BUF) but the fit
    position (CNT_EPOCH, CNT_POS) stays."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    key = ("cuda-step", n_rows, n_out, n_in)
    plan = ws.get(key)
    if plan is None:
        plan = ws[key] = FitPlan(n_rows, n_out, n_in, None, False, 0, advance=False)
        plan.step_loss = _cuda.device_array(1, dtype=np.float64)
    _, status = fit_steps(X, T, W, b, has_bias, state, hyper, reduce_sum, plan, plan.step_loss)
    return float(plan.step_loss.copy_to_host()[0]), status


def apply_update(gW, gb, scale, W, b, has_bias, state, hyper):
    """The optimiser's update from a given float64 gradient ``scale·(gW,
    gb)`` (host arrays).  Returns a status; nothing is written unless it is
    OK.  Counts the step (CNT_STEP) like a lone fused step."""
    n_out, n_in = W.shape
    n_el = n_params(n_out, n_in)
    grad = np.empty(n_el, dtype=np.float64)
    grad[: n_out * n_in] = np.asarray(gW, dtype=np.float64).reshape(-1)
    grad[n_out * n_in :] = np.asarray(gb, dtype=np.float64)
    part = _cuda.to_device(grad)
    host = np.zeros(CNT_DEVICE_SIZE, dtype=np.int64)
    host[:CNT_SIZE] = state.counters[:CNT_SIZE]
    counters = _cuda.to_device(host)
    cfg = np.zeros(C_SIZE, dtype=np.int64)
    cfg[C_NROWS] = cfg[C_BATCH] = 1
    cfg = _cuda.to_device(cfg)
    k = state.slots_w.shape[0]
    scratch = _cuda.device_array((1 + k) * n_el + 1, dtype=np.float64)
    no_loss = _cuda.device_array(1, dtype=np.float64)
    hyper_d = _device_hyper(hyper)
    limit = _limit(W.dtype)
    grid = _cdiv(n_el, config.TPB)
    slots_w, slots_b = state.slots_w, state.slots_b
    _launch(K.update_check, grid, config.TPB)(
        no_loss,
        0,
        part,
        1,
        float(scale),
        W,
        b,
        has_bias,
        slots_w,
        slots_b,
        counters,
        hyper_d,
        False,
        limit,
        cfg,
        scratch,
        no_loss,
    )
    _launch(K.update_apply, grid, config.TPB)(W, b, has_bias, slots_w, slots_b, counters, hyper_d, cfg, True, scratch)
    counters.copy_to_host(host)
    state.counters[:CNT_SIZE] = host[:CNT_SIZE]
    return int(host[CNT_STATUS])


class FitPlan:
    """What a fit keeps between its segments: batch size, launch plan, the
    device counters, the shuffle order and scratch (all on the device)."""

    def __init__(self, n_rows, n_out, n_in, batch_size, shuffle, seed, *, advance=True):
        self.n_rows = n_rows
        self.n_out, self.n_in = n_out, n_in
        self.batch_size = n_rows if batch_size is None else min(batch_size, n_rows)
        # Shuffling a full batch changes nothing but the rounding order.
        self.shuffle = bool(shuffle) and self.batch_size < n_rows
        self.seed = np.uint64(0 if seed is None else seed % (1 << 64))
        self.advance = advance
        self.path = path_for(n_out, n_in)
        batch = self.batch_size
        self.perm = _cuda.device_array(n_rows if self.shuffle else 1, dtype=np.int64)
        cfg = np.zeros(C_SIZE, dtype=np.int64)
        cfg[C_NROWS] = n_rows
        cfg[C_BATCH] = batch
        cfg[C_SHUFFLE] = int(self.shuffle)
        cfg[C_ADVANCE] = int(advance)
        if self.path == "rows":
            one = (
                batch * n_out * n_in <= config.ONE_LAUNCH_WORK
                if config.FORCE_ONE_LAUNCH is None
                else config.FORCE_ONE_LAUNCH
            )
            self.one_launch = bool(one)
            cfg[C_GROUPS] = row_groups(n_out, n_in)
            if self.one_launch:
                cfg[C_CHUNK] = batch
                self.n_chunks = 1
            else:
                cfg[C_CHUNK], self.n_chunks = plan_chunks(batch)
        else:
            self.one_launch = False
            cfg[C_KROWS], self.n_splits = plan_splits(batch, n_out, n_in)
            self.grid2, self.block2 = _residual_grid(batch, n_out)
            self.n_loss = self.grid2[0] * self.grid2[1]
            self.R = self.loss_p = self.part = None  # the numba tiles' buffers (_tiled_buffers)
        self.cublas = None  # the cuBLAS step's buffers and views (_cublas_step)
        self.work = None  # sized by the optimiser's slot count k (_work)
        self._work_slots = -1
        self._cfg_host = cfg
        self.cfg = None  # uploaded by fit_steps, which knows X's alignment
        self.counters = _cuda.device_array(CNT_DEVICE_SIZE, dtype=np.int64)
        self._counters_host = np.zeros(CNT_DEVICE_SIZE, dtype=np.int64)

    def _work(self, k):
        """The float64 work buffer for an optimiser with ``k`` slots: row
        streaming [loss_p (C) | part (C·E) | scratch ((1 + k)·E + 1)], tiled
        the scratch alone (see cuda_device, "The update")."""
        if k != self._work_slots:
            n_el = n_params(self.n_out, self.n_in)
            size = (1 + k) * n_el + 1
            if self.path == "rows":
                size += self.n_chunks * (1 + n_el)
            self.work = _cuda.device_array(size, dtype=np.float64)
            self._work_slots = k
        return self.work

    def _tiled_buffers(self):
        """Allocate the numba tiles' scratch on first use."""
        if self.R is None:
            self.R = _cuda.device_array((self.batch_size, self.n_out), dtype=np.float64)
            self.loss_p = _cuda.device_array(self.n_loss, dtype=np.float64)
            self.part = _cuda.device_array(self.n_splits * n_params(self.n_out, self.n_in), dtype=np.float64)

    def _cublas_step(self, dtype):
        """The cuBLAS step for data of ``dtype`` when CuPy is to be used now
        (``cuda_config.USE_CUPY``, read at every call), else None."""
        from . import cuda_cublas

        cp = cuda_cublas.cupy_module()
        if cp is None:
            return None
        cb = self.cublas
        if cb is None or cb.cp is not cp or cb.dtype != dtype:
            cb = self.cublas = cuda_cublas.CublasStep(
                cp, self.n_rows, self.batch_size, self.n_out, self.n_in, self.shuffle, dtype
            )
        return cb

    def _upload(self, vec):
        if self.cfg is None or self._cfg_host[C_VEC] != int(vec):
            self._cfg_host[C_VEC] = int(vec)
            self.cfg = _cuda.to_device(self._cfg_host)

    def _launch_steps(self, n_steps, X, T, W, b, has_bias, state, hyper, reduce_sum, limit, losses):
        slots_w, slots_b, counters = state.slots_w, state.slots_b, self.counters
        work = self._work(slots_w.shape[0])
        if self.one_launch:
            _launch(K.fit_steps, 1, config.TPB)(
                X,
                T,
                W,
                b,
                has_bias,
                slots_w,
                slots_b,
                counters,
                hyper,
                reduce_sum,
                limit,
                self.cfg,
                self.perm,
                self.seed,
                n_steps,
                work,
                losses,
            )
            return
        # Two (row streaming) or four (tiled) launches a step, queued without
        # waiting; the host follows the batch position only to know when an
        # epoch starts, and kernels do nothing once a step has failed.
        pos = int(state.counters[CNT_POS])
        cfg = self._cfg_host
        cublas = views = None
        if self.path == "tiled":
            cublas = self._cublas_step(X.dtype)
            if cublas is None:
                self._tiled_buffers()
            else:
                views = cublas.views(X, W)
        for _ in range(n_steps):
            if self.shuffle and pos == 0:
                # one thread per row: the order is drawn in parallel
                _launch(K.shuffle_epoch, _cdiv(self.perm.shape[0], config.TPB), config.TPB)(
                    counters, self.seed, self.perm
                )
            if self.path == "rows":
                _launch(K.step_partials, self.n_chunks, config.TPB)(
                    X,
                    T,
                    W,
                    b,
                    has_bias,
                    counters,
                    self.cfg,
                    self.perm,
                    bool(cfg[C_SHUFFLE]),
                    int(cfg[C_GROUPS]),
                    bool(cfg[C_VEC]),
                    int(cfg[C_CHUNK]),
                    work,
                )
                _launch(K.step_update, 1, config.TPB)(
                    W,
                    b,
                    has_bias,
                    slots_w,
                    slots_b,
                    counters,
                    hyper,
                    reduce_sum,
                    limit,
                    self.cfg,
                    self.n_chunks,
                    work,
                    losses,
                )
            elif cublas is not None:
                cublas.step(
                    _launch,
                    K,
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
                    self.cfg,
                    self.perm,
                    reduce_sum,
                    limit,
                    work,
                    losses,
                )
            else:
                self._step_tiled(X, T, W, b, has_bias, slots_w, slots_b, hyper, reduce_sum, limit, work, losses)
            if self.advance:
                pos += min(self.batch_size, self.n_rows - pos)
                if pos >= self.n_rows:
                    pos = 0

    def _step_tiled(self, X, T, W, b, has_bias, slots_w, slots_b, hyper, reduce_sum, limit, scratch, losses):
        n_el = n_params(self.n_out, self.n_in)
        counters = self.counters
        _launch(K.residual, self.grid2, self.block2)(
            X, T, W, b, has_bias, counters, self.cfg, self.perm, self.R, self.loss_p
        )
        ggrid = _grad_grid(self.n_out, self.n_in, self.n_splits)
        _launch(K.grad_partials, ggrid, self.block2)(X, self.R, counters, self.cfg, self.perm, self.part)
        grid = _cdiv(n_el, config.TPB)
        _launch(K.update_check, grid, config.TPB)(
            self.loss_p,
            self.n_loss,
            self.part,
            self.n_splits,
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
            self.cfg,
            scratch,
            losses,
        )
        _launch(K.update_apply, grid, config.TPB)(
            W, b, has_bias, slots_w, slots_b, counters, hyper, self.cfg, False, scratch
        )


def fit_plan(n_rows, n_out, n_in, batch_size, shuffle, seed, dtype):
    """A fit's plan; ``dtype`` is part of the interface (the CPU sizes scratch by it)."""
    return FitPlan(n_rows, n_out, n_in, batch_size, shuffle, seed)


def fit_steps(X, T, W, b, has_bias, state, hyper, reduce_sum, plan, losses):
    """Run ``len(losses)`` steps, writing each loss into the device array
    ``losses``.  Returns ``(steps done, status)``; ``state.counters`` is
    updated (the one wait of the call reads them back)."""
    n_steps = losses.shape[0]
    if n_steps == 0:
        return 0, OK
    plan._upload(plan.path == "rows" and rows_aligned(X))
    host = plan._counters_host
    host[:] = 0
    host[:CNT_SIZE] = state.counters[:CNT_SIZE]
    plan.counters.copy_to_device(host)
    plan._launch_steps(
        n_steps, X, T, W, b, bool(has_bias), state, _device_hyper(hyper), bool(reduce_sum), _limit(W.dtype), losses
    )
    plan.counters.copy_to_host(host)  # the one wait of the call
    state.counters[:CNT_SIZE] = host[:CNT_SIZE]
    return int(host[CNT_DONE]), int(host[CNT_STATUS])


def gram_sums(X, T, sample_weight=None, x_ref=None, t_ref=None):
    """Not on the GPU yet: the exact solve's Gram pass runs on the CPU only."""
    raise NotImplementedError(
        "Linear.solve has no CUDA kernel yet: move the model to the CPU with model.to('cpu') "
        "and solve there, or train it on the GPU with fit"
    )
