"""The CUDA backend: allocates device arrays, picks a launch plan, launches.

The same interface as :mod:`fastlin.backends.cpu_ops` (see
:mod:`fastlin.backends`).  Arrays are numba device arrays; losses come back
as Python floats; ``flags`` stays a host numpy int64 vector (it is copied to
the device state at the start of a call and back at the end).

Two launch plans, chosen from the layer's shape (:func:`path_for`):

``"F"`` (row tiles; at most ``min(OMAX, TPB)`` outputs and
    ``ACC·TPB`` parameters, see :mod:`.cuda_config`)
    A step is two launches: :func:`fastlin.backends.cuda_rows.step_partials`
    reads X once (128-bit loads where the rows are 16-byte aligned) into
    per-block partials, and :func:`fastlin.backends.cuda_rows.step_update` (one
    block) adds them with a fixed tree and applies the update.  Problems of the seed's size (``batch·O·D <= ONE_LAUNCH_WORK``)
    run a whole fit in one launch of one block
    (:func:`fastlin.backends.cuda_rows.fit_steps`).
``"G"`` (any shape)
    TS×TS shared-memory tiles: ``residual``, ``grad_partials``,
    ``update_check``, ``update_apply`` (four launches a step).

A fit of many launches never waits between steps: every kernel reads the
batch position and the fit's status from the device state, the losses stay
on the device, and the host reads the state back once at the end.
"""

from __future__ import annotations

import functools
import sys
import warnings

import numpy as np
from numba import cuda as _cuda
from numba.cuda import config as _cuda_config

from .._dispatch import is_device_array
from .._errors import DeviceError
from .._validate import as_host_array, check_dtype_kind, check_not_requires_grad
from . import cuda as K
from . import cuda_config as config
from . import cuda_device as dev
from .abi import OK, ST_SIZE

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
    """The launch plan for a layer: "F" (row tiles) or "G" (TS×TS tiles)."""
    if (
        not config.FORCE_TILED
        and n_out <= min(config.OMAX, config.TPB)
        and n_params(n_out, n_in) <= config.ACC * config.TPB
    ):
        return "F"
    return "G"


def rows_aligned(X):
    """True when every row of the C-contiguous device array X starts on a
    16-byte boundary, so that path F may read it with 128-bit loads."""
    if (X.shape[1] * X.dtype.itemsize) % 16:
        return False
    iface = X.__array_interface__ if SIMULATOR else X.__cuda_array_interface__
    return iface["data"][0] % 16 == 0


def plan_chunks(n_rows):
    """Path F: ``(rows per block, blocks)`` for a batch of ``n_rows``."""
    n_chunks = max(1, min(config.MAX_CHUNKS, _cdiv(n_rows, config.TPB)))
    chunk_rows = _cdiv(n_rows, n_chunks)
    return chunk_rows, _cdiv(n_rows, chunk_rows)


def plan_splits(n_rows, n_out, n_in):
    """Path G: ``(rows per split, splits)`` of the gradient over a batch."""
    tiles = _cdiv(n_out, config.TS) * _cdiv(n_in, config.TS)
    splits = max(1, min(_cdiv(config.TARGET_BLOCKS, tiles), _cdiv(n_rows, config.MIN_SPLIT_ROWS)))
    rows = _cdiv(_cdiv(n_rows, splits), config.TS) * config.TS
    return rows, _cdiv(n_rows, rows)


def row_groups(n_out, n_in):
    """Path F: how many row groups share the gradient phase of a tile."""
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
    """Device state and plan for a lone full-batch op (no fit): status OK,
    position 0, no shuffle, no update."""

    def __init__(self, n_rows, n_out, n_in, has_bias):
        self.state = _cuda.to_device(np.zeros(dev.S_SIZE, dtype=np.int64))
        cfg = np.zeros(dev.C_SIZE, dtype=np.int64)
        cfg[dev.C_NROWS] = cfg[dev.C_BATCH] = n_rows
        cfg[dev.C_HAS_BIAS] = int(has_bias)
        self.split_rows, self.n_splits = plan_splits(n_rows, n_out, n_in)
        cfg[dev.C_KROWS] = self.split_rows
        self.cfg = _cuda.to_device(cfg)
        self.perm = _cuda.device_array(1, dtype=np.int64)


def _static(ws, n_rows, n_out, n_in, has_bias):
    key = ("cuda-static", n_rows, n_out, n_in, bool(has_bias))
    st = ws.get(key)
    if st is None:
        st = ws[key] = _Static(n_rows, n_out, n_in, has_bias)
    return st


# --------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------
def _tiles2d(n_rows, n_out):
    return (_cdiv(n_rows, config.TS), _cdiv(n_out, config.TS)), (config.TS, config.TS)


def forward(W, b, has_bias, X):
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


def model_sse(W, b, has_bias, X, T, ws=None):
    """``Σ (X·Wᵀ + b − T)²`` without materialising the prediction."""
    grid, block = _tiles2d(X.shape[0], W.shape[0])
    partial = _cuda.device_array(grid[0] * grid[1], dtype=np.float64)
    _launch(K.model_sse, grid, block)(X, T, W, b, has_bias, partial)
    return _host_sum(partial)


def _grad_g(W, b, has_bias, X, T, ws):
    """Path G gradient partials of a full batch: (loss partials, part, splits)."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    st = _static(ws, n_rows, n_out, n_in, has_bias)
    grid, block = _tiles2d(n_rows, n_out)
    R = _scratch(ws, "R", (n_rows, n_out))
    loss_p = _scratch(ws, "loss_g", (grid[0] * grid[1],))
    part = _scratch(ws, "part_g", (st.n_splits * n_params(n_out, n_in),))
    _launch(K.residual, grid, block)(X, T, W, b, st.state, st.perm, st.cfg, R, loss_p)
    ggrid = (_cdiv(n_in, config.TS), _cdiv(n_out, config.TS), st.n_splits)
    _launch(K.grad_partials, ggrid, block)(X, R, st.state, st.perm, st.cfg, part)
    return loss_p, part, st.n_splits


def mse_grad(W, b, has_bias, X, T, scale, ws, dtype=None):
    """Returns ``(Σ r², scale·Σ rᵀX, scale·Σ r)`` with ``r = X·Wᵀ + b − T``;
    the gradients are device arrays of ``dtype`` (default: W's)."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    n_el = n_params(n_out, n_in)
    if path_for(n_out, n_in) == "F":
        chunk_rows, n_parts = plan_chunks(n_rows)
        loss_p = _scratch(ws, "loss_f", (n_parts,))
        part = _scratch(ws, "part_f", (n_parts * n_el,))
        groups = row_groups(n_out, n_in)
        _launch(K.mse_grad, n_parts, config.TPB)(
            X, T, W, b, has_bias, chunk_rows, groups, rows_aligned(X), loss_p, part
        )
    else:
        loss_p, part, n_parts = _grad_g(W, b, has_bias, X, T, ws)
    dtype = W.dtype if dtype is None else np.dtype(dtype)
    dW = _cuda.device_array((n_out, n_in), dtype=dtype)
    db = _cuda.device_array(n_out, dtype=dtype)
    _launch(K.reduce_grad, _cdiv(n_el, config.TPB), config.TPB)(part, n_parts, float(scale), dW, db)
    return _host_sum(loss_p), dW, db


def backward(W, X, dY, ws):
    """Returns ``(dX, dW, db)`` as device arrays of W's dtype (float64 sums)."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    dX = _cuda.device_array((n_rows, n_in), dtype=W.dtype)
    _launch(K.backward, _cdiv(n_rows * n_in, config.TPB), config.TPB)(dY, W, dX)
    st = _static(ws, n_rows, n_out, n_in, True)
    n_el = n_params(n_out, n_in)
    part = _scratch(ws, "part_g", (st.n_splits * n_el,))
    ggrid = (_cdiv(n_in, config.TS), _cdiv(n_out, config.TS), st.n_splits)
    _launch(K.grad_partials, ggrid, (config.TS, config.TS))(X, dY, st.state, st.perm, st.cfg, part)
    dW = _cuda.device_array((n_out, n_in), dtype=W.dtype)
    db = _cuda.device_array(n_out, dtype=W.dtype)
    _launch(K.reduce_grad, _cdiv(n_el, config.TPB), config.TPB)(part, st.n_splits, 1.0, dW, db)
    return dX, dW, db


def fused_step(W, b, has_bias, bufW, bufb, hp, flags, X, T, ws):
    """One full-batch SGD step in place.  Returns ``(loss, status)``."""
    n_rows, n_in = X.shape
    n_out = W.shape[0]
    key = ("cuda-step", n_rows, n_out, n_in)
    plan = ws.get(key)
    if plan is None:
        plan = ws[key] = FitPlan(n_rows, n_out, n_in, None, False, 0, advance=False)
        plan.step_loss = _cuda.device_array(1, dtype=np.float64)
    _, status = fit_steps(W, b, has_bias, bufW, bufb, hp, flags, X, T, plan, plan.step_loss)
    return float(plan.step_loss.copy_to_host()[0]), status


def sgd_update(W, b, has_bias, bufW, bufb, hp, flags, gW, gb, scale):
    """SGD update from a given float64 gradient ``scale·(gW, gb)`` (host
    arrays).  Returns a status; nothing is written unless it is OK."""
    n_out, n_in = W.shape
    n_el = n_params(n_out, n_in)
    grad = np.empty(n_el, dtype=np.float64)
    grad[: n_out * n_in] = np.asarray(gW, dtype=np.float64).reshape(-1)
    grad[n_out * n_in :] = np.asarray(gb, dtype=np.float64)
    part = _cuda.to_device(grad)
    host_state = np.zeros(dev.S_SIZE, dtype=np.int64)
    host_state[:ST_SIZE] = flags[:ST_SIZE]
    state = _cuda.to_device(host_state)
    cfg = np.zeros(dev.C_SIZE, dtype=np.int64)
    cfg[dev.C_NROWS] = cfg[dev.C_BATCH] = 1
    cfg[dev.C_HAS_BIAS] = int(has_bias)
    cfg = _cuda.to_device(cfg)
    scratch = _cuda.device_array(2 * n_el + 1, dtype=np.float64)
    no_loss = _cuda.device_array(1, dtype=np.float64)
    hp_d = _cuda.to_device(np.ascontiguousarray(hp, dtype=np.float64))
    grid = _cdiv(n_el, config.TPB)
    _launch(K.update_check, grid, config.TPB)(
        W, b, bufW, bufb, hp_d, state, cfg, no_loss, 0, part, 1, scratch, float(scale), no_loss
    )
    _launch(K.update_apply, grid, config.TPB)(W, b, bufW, bufb, hp_d, state, cfg, scratch, True)
    state.copy_to_host(host_state)
    flags[:ST_SIZE] = host_state[:ST_SIZE]
    return int(host_state[dev.S_STATUS])


class FitPlan:
    """What a fit keeps between its segments: batch size, launch plan, the
    device state, the shuffle order and scratch (all on the device)."""

    def __init__(self, n_rows, n_out, n_in, batch_size, shuffle, seed, *, advance=True):
        self.n_rows = n_rows
        self.n_out, self.n_in = n_out, n_in
        self.batch_size = n_rows if batch_size is None else min(batch_size, n_rows)
        # Shuffling a full batch changes nothing but the rounding order.
        self.shuffle = bool(shuffle) and self.batch_size < n_rows
        self.seed = np.uint64(0 if seed is None else seed % (1 << 64))
        self.advance = advance
        self.path = path_for(n_out, n_in)
        n_el = n_params(n_out, n_in)
        batch = self.batch_size
        self.perm = _cuda.device_array(n_rows if self.shuffle else 1, dtype=np.int64)
        cfg = np.zeros(dev.C_SIZE, dtype=np.int64)
        cfg[dev.C_NROWS] = n_rows
        cfg[dev.C_BATCH] = batch
        cfg[dev.C_SHUFFLE] = int(self.shuffle)
        cfg[dev.C_ADVANCE] = int(advance)
        if self.path == "F":
            one = (
                batch * n_out * n_in <= config.ONE_LAUNCH_WORK
                if config.FORCE_ONE_LAUNCH is None
                else config.FORCE_ONE_LAUNCH
            )
            self.one_launch = bool(one)
            cfg[dev.C_GROUPS] = row_groups(n_out, n_in)
            if self.one_launch:
                cfg[dev.C_CHUNK] = batch
                self.work = _cuda.device_array(1 + 3 * n_el, dtype=np.float64)
            else:
                cfg[dev.C_CHUNK], self.n_chunks = plan_chunks(batch)
                self.work = _cuda.device_array(self.n_chunks * (1 + n_el) + 2 * n_el, dtype=np.float64)
        else:
            self.one_launch = False
            cfg[dev.C_KROWS], self.n_splits = plan_splits(batch, n_out, n_in)
            self.grid2, self.block2 = _tiles2d(batch, n_out)
            self.n_loss = self.grid2[0] * self.grid2[1]
            self.R = _cuda.device_array((batch, n_out), dtype=np.float64)
            self.loss_p = _cuda.device_array(self.n_loss, dtype=np.float64)
            self.part = _cuda.device_array(self.n_splits * n_el, dtype=np.float64)
            self.scratch = _cuda.device_array(2 * n_el + 1, dtype=np.float64)
        self._cfg_host = cfg
        self.cfg = None  # uploaded by fit_steps, which knows has_bias and X
        self.state = _cuda.device_array(dev.S_SIZE, dtype=np.int64)
        self._state_host = np.zeros(dev.S_SIZE, dtype=np.int64)
        self._hp_host = None
        self._hp = None

    def _upload(self, hp, has_bias, vec):
        if self.cfg is None or self._cfg_host[dev.C_HAS_BIAS] != int(has_bias) or self._cfg_host[dev.C_VEC] != int(vec):
            self._cfg_host[dev.C_HAS_BIAS] = int(has_bias)
            self._cfg_host[dev.C_VEC] = int(vec)
            self.cfg = _cuda.to_device(self._cfg_host)
        if self._hp_host is None or not np.array_equal(self._hp_host, hp):
            self._hp_host = np.array(hp, dtype=np.float64)
            self._hp = _cuda.to_device(self._hp_host)
        return self._hp

    def _launch_steps(self, k, X, T, W, b, bufW, bufb, hp, losses, flags):
        if self.one_launch:
            _launch(K.fit_steps, 1, config.TPB)(
                X, T, W, b, bufW, bufb, hp, self.state, self.perm, self.cfg, self.seed, self.work, losses, k
            )
            return
        # Two (path F) or four (path G) launches a step, queued without
        # waiting; the host follows the batch position only to know when an
        # epoch starts, and kernels do nothing once a step has failed.
        pos = int(flags[dev.S_POS])
        for _ in range(k):
            if self.shuffle and pos == 0:
                # one thread per row: the order is drawn in parallel
                _launch(K.shuffle_epoch, -(-self.perm.shape[0] // config.TPB), config.TPB)(
                    self.seed, self.state, self.perm
                )
            if self.path == "F":
                cfg = self._cfg_host
                _launch(K.step_partials, self.n_chunks, config.TPB)(
                    X,
                    T,
                    W,
                    b,
                    self.state,
                    self.perm,
                    self.cfg,
                    self.work,
                    bool(cfg[dev.C_HAS_BIAS]),
                    bool(cfg[dev.C_SHUFFLE]),
                    int(cfg[dev.C_GROUPS]),
                    bool(cfg[dev.C_VEC]),
                    int(cfg[dev.C_CHUNK]),
                )
                _launch(K.step_update, 1, config.TPB)(
                    W, b, bufW, bufb, hp, self.state, self.cfg, self.work, self.n_chunks, losses
                )
            else:
                self._step_g(X, T, W, b, bufW, bufb, hp, losses)
            if self.advance:
                pos += min(self.batch_size, self.n_rows - pos)
                if pos >= self.n_rows:
                    pos = 0

    def _step_g(self, X, T, W, b, bufW, bufb, hp, losses):
        n_el = n_params(self.n_out, self.n_in)
        _launch(K.residual, self.grid2, self.block2)(X, T, W, b, self.state, self.perm, self.cfg, self.R, self.loss_p)
        ggrid = (_cdiv(self.n_in, config.TS), _cdiv(self.n_out, config.TS), self.n_splits)
        _launch(K.grad_partials, ggrid, self.block2)(X, self.R, self.state, self.perm, self.cfg, self.part)
        grid = _cdiv(n_el, config.TPB)
        _launch(K.update_check, grid, config.TPB)(
            W,
            b,
            bufW,
            bufb,
            hp,
            self.state,
            self.cfg,
            self.loss_p,
            self.n_loss,
            self.part,
            self.n_splits,
            self.scratch,
            0.0,
            losses,
        )
        _launch(K.update_apply, grid, config.TPB)(W, b, bufW, bufb, hp, self.state, self.cfg, self.scratch, False)


def fit_plan(n_rows, n_out, n_in, batch_size, shuffle, seed, dtype=None):
    """A fit's plan; ``dtype`` is part of the interface (the CPU sizes scratch by it)."""
    return FitPlan(n_rows, n_out, n_in, batch_size, shuffle, seed)


def fit_steps(W, b, has_bias, bufW, bufb, hp, flags, X, T, plan, losses):
    """Run ``len(losses)`` steps, writing each loss into the device array
    ``losses``.  Returns ``(steps done, status)``; ``flags`` is updated."""
    k = losses.shape[0]
    if k == 0:
        return 0, OK
    hp_d = plan._upload(hp, has_bias, plan.path == "F" and rows_aligned(X))
    host = plan._state_host
    host[:] = 0
    host[:ST_SIZE] = flags[:ST_SIZE]
    plan.state.copy_to_device(host)
    plan._launch_steps(k, X, T, W, b, bufW, bufb, hp_d, losses, flags)
    plan.state.copy_to_host(host)  # the one wait of the call
    flags[:ST_SIZE] = host[:ST_SIZE]
    return int(host[dev.S_DONE]), int(host[dev.S_STATUS])


def gram_sums(X, T, sample_weight=None, x_ref=None, t_ref=None):
    """Not on the GPU yet: the exact solve's Gram pass runs on the CPU only."""
    raise NotImplementedError(
        "Linear.solve has no CUDA kernel yet: move the model to the CPU with model.to('cpu') "
        "and solve there, or train it on the GPU with fit"
    )
