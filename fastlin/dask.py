"""Train and predict on dask arrays: data spread over a cluster, or larger than memory.

Install with ``pip install 'fastlin[dask]'``.  ``import fastlin`` never imports
dask; only ``import fastlin.dask`` does.

>>> import dask.array as da, numpy as np, fastlin, fastlin.dask   # doctest: +SKIP
>>> X = da.random.random((1_000_000, 64), chunks=(100_000, 64))   # doctest: +SKIP
>>> T = X[:, :4].sum(axis=1, keepdims=True)                       # doctest: +SKIP
>>> model = fastlin.Linear(64, 1, dtype=np.float64)               # doctest: +SKIP
>>> history = fastlin.dask.fit(model, X, T, steps=50, opt=fastlin.SGD(0.1, momentum=0.9))  # doctest: +SKIP

Works with a ``distributed`` client (the current one, as dask picks it) and with
dask's local schedulers.

How a full-batch step runs
--------------------------
1. Once per fit, row chunk ``i`` of X and of T are packed into one pair, cast
   to the model's dtype and made C-contiguous, and (with ``persist=True``)
   persisted.  A pair lives on one worker, so ``X_i`` and ``T_i`` are never
   apart and no step has to move either of them.
2. Each step submits one small task holding the parameters ``(W, b)`` and, per
   chunk, a task ``sums_i = (Σ r², Σ rᵀx, Σ r)`` with ``r = x·Wᵀ + b − t``
   that depends on the parameters and on pair ``i``.  The scheduler runs it on
   the worker holding the pair, so only the parameters travel.  The sums come
   from the CPU backend's ``mse_grad`` (the code behind ``Linear.gradients``):
   the chunk is read once and no (N, O) array is built.
3. The float64 partial sums are added by a tree of tasks, ``SPLIT_EVERY`` at a
   time and always in chunk order, so the result does not depend on where or
   when tasks ran.
4. The client applies the SGD update once, with the same kernel as
   :meth:`fastlin.Linear.fit` and the momentum state kept by ``opt``.  Nothing
   is written before the step's reduction has arrived, so a step that fails
   (a lost worker, bad data) leaves the weights of the last completed step.
"""

from __future__ import annotations

import math
import os
import time
import uuid

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(f"fastlin.dask needs dask ({exc}); install it with: pip install 'fastlin[dask]'") from exc

from . import _validate, training
from .backends import cpu_ops
from .backends.abi import CNT_STEP, NONFINITE_LOSS, OK
from .history import History
from .layer import Linear

__all__ = ["fit", "predict", "from_npy", "SPLIT_EVERY", "solve"]

# Fan-in of the tree that adds the per-chunk partial sums.  Each combine task
# receives SPLIT_EVERY blocks of O·D float64 numbers; 8 keeps the tree shallow
# (3 levels for 512 chunks) without making one task gather many blocks.
SPLIT_EVERY = 8

# Up to this many bytes of parameters per step ride inside every chunk task.
# A shared parameter task must first be fetched by each worker from the one
# that holds it; embedding skips that hop (measured: a quarter of a small
# step's time on a 2-worker LocalCluster).  Larger layers send W once per
# step, as a task of their own.
EMBED_PARAM_BYTES = 1 << 18

BATCH_CHUNK = "chunk"


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def fit(
    model,
    X,
    T,
    *,
    steps=None,
    epochs=None,
    opt,
    batch_size=None,
    shuffle=True,
    seed=None,
    reduction="mean",
    callback=None,
    persist=True,
):
    """Train ``model`` in place on dask arrays by SGD; like :meth:`fastlin.Linear.fit`.

    Parameters
    ----------
    model : fastlin.Linear
        A layer on the CPU (``device="cpu"``).  Its weights are updated in
        place on the client, once per step.
    X : dask.array.Array, shape (N, in_features)
        Inputs, chunked by rows only (one chunk spans all columns).  Any real
        dtype; chunks are cast to ``model.dtype`` on the workers.
    T : dask.array.Array, shape (N, out_features), or (N,) when out_features == 1
        Targets, with the same row chunks as X.
    steps : int, optional
        Number of SGD updates.  Give ``steps`` or ``epochs``; with neither,
        100 steps (as ``Linear.fit``).
    epochs : int, optional
        Passes over the data: one step each for full-batch training, one step
        per mini-batch otherwise.
    opt : fastlin.SGD, Adam or AdamW
        The optimiser; its momentum state for ``model`` carries over between
        calls, exactly as with ``Linear.fit``.
    batch_size : None, "chunk" or int, default None
        ``None``: full-batch gradient descent, one step per pass over all rows.
        ``"chunk"``: each step trains on one row chunk of X.  An int: each
        chunk is cut into batches of that many rows (the last batch of a
        chunk may be shorter); a batch never spans two chunks.  Mini-batch
        steps run one task each, on the worker that holds the chunk.
    shuffle : bool, default True
        Mini-batch only: visit the batches of epoch ``e`` in the order
        ``numpy.random.default_rng((seed, e)).permutation(n_batches)``;
        otherwise in row order.
    seed : int, optional
        Seed of the shuffle; drawn at random (and kept in ``History.seed``)
        when a shuffled fit is given none.
    reduction : {"mean", "sum"}
        ``"mean"``: loss ``Σ r² / (n·O)`` over the step's ``n`` rows and
        gradient ``2/(n·O) · Σ rᵀx``; ``"sum"``: ``Σ r²`` and ``2 · Σ rᵀx``.
    callback : callable, optional
        ``callback(step, loss)`` on the client after every step (1-based,
        after its update); return True to stop early.
    persist : bool, default True
        Load X and T into the workers' memory once, at the start of the fit
        (they are released when it returns).  ``False`` leaves them where they
        are: every step recomputes each chunk from its source, e.g. reads it
        from disk with :func:`from_npy` -- use it for data larger than the
        cluster's memory.  Either way the client never sends data per step;
        with ``False`` the source tasks themselves must not carry the data
        (``da.from_array`` of an in-memory or memory-mapped numpy array does).

    Returns
    -------
    History
        ``.loss`` (float64, one entry per step, measured before that step's
        update), ``.seconds``, ``.seed``, ``.stopped_early``.

    Raises
    ------
    TypeError, ValueError
        Bad arguments, raised before any dask work starts: X or T not dask
        arrays, chunked along columns, with unknown chunk sizes (call
        ``compute_chunk_sizes()``), with different row chunks, or with shapes
        that do not fit the model.
    ValueError
        X or T hold NaN or Inf (found when a step's loss is not finite); the
        weights and momentum are restored to their values before the fit.
    fastlin.DivergenceError
        The loss or an update became NaN/Inf; the weights of the last finite
        step are kept and ``err.history`` holds the steps done.
    Exception
        Whatever dask raises when a step cannot be computed (e.g.
        ``distributed.KilledWorker`` after repeated worker deaths; a single
        lost worker is normally survived, its chunks recomputed).  The model
        then holds the weights of its last completed step.

    Notes
    -----
    Full-batch fits give the same result as ``model.fit`` on the same data
    up to the order of float64 additions (chunk partial sums added in a
    tree): in float64, 20 momentum steps agree to about 1e-15 relative.

    Each step costs at least one dask round trip (client -> scheduler ->
    workers -> client), some milliseconds, plus a few hundred microseconds
    per chunk; chunks of tens of MB keep that overhead small next to the work.

    With ``persist=True`` on dask's local schedulers the "workers" are this
    process: the chunks are loaded into its memory once.

    Several worker threads in one process may run the CPU kernels at once.
    That is safe with numba's ``tbb`` and ``omp`` threading layers (numba's
    first choices when installed), not with its fallback ``workqueue``
    layer, which aborts on concurrent parallel launches: there, run one
    thread per worker process.
    """
    spec = _check_fit(model, X, T, steps, epochs, opt, batch_size, shuffle, seed, reduction, callback, persist)
    with model._lock:  # as Linear.fit: one fit or step of a model at a time
        return _Fit(model, opt, spec).run()


def predict(model, X):
    """``X·Wᵀ + b`` as a lazy dask array, with the weights ``model`` has now.

    Parameters
    ----------
    model : fastlin.Linear
        A layer on the CPU.  Its weights are copied when ``predict`` is
        called: training the model afterwards does not change the result.
    X : dask.array.Array, shape (N, in_features)
        Chunked by rows only.  Unknown row-chunk sizes are fine.

    Returns
    -------
    dask.array.Array, shape (N, out_features), dtype ``model.dtype``
        Row chunks as X's.  Computing a chunk raises ValueError if that chunk
        of X holds NaN or Inf (as ``model.forward`` does).
    """
    _check_model(model)
    _check_dask_array(X, "X", allow_unknown_rows=True)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D dask array (N, {model.in_features}), got shape {X.shape}")
    _validate.check_input_shape((1, X.shape[1]), model.in_features)
    _check_row_chunked(X, "X")
    W, b = model._W.copy(), model._bvec.copy()
    # One task holds the weights; every chunk task depends on it, so they
    # are serialised once per worker, not once per chunk.
    params = dask.delayed((W, b), name=f"fastlin-weights-{uuid.uuid4().hex}", traverse=False)
    return da.map_blocks(
        _predict_block,
        X,
        params,
        model.has_bias,
        dtype=model.dtype,
        chunks=(X.chunks[0], (model.out_features,)),
        name=f"fastlin-predict-{uuid.uuid4().hex}",
        meta=np.empty((0, 0), dtype=model.dtype),
    )


def from_npy(path, *, chunk_rows):
    """A dask array over the ``.npy`` file at ``path``, read in row chunks.

    Each chunk is read from the file by the worker that computes it, with
    one ``read`` of its bytes; the task graph holds the file's path and
    header, never its data.  (``dask.array.from_array`` of a memory-mapped
    array would pickle the whole array into the graph.)  Every worker must
    see the file at ``path``: a local path on one machine, or a shared
    file system.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` file in C order (``numpy.save`` writes C order by default).
    chunk_rows : int
        Rows per chunk (the last chunk may be shorter).

    Returns
    -------
    dask.array.Array
        Same shape and dtype as the file; chunked by rows only.
    """
    chunk_rows = _validate.check_int(chunk_rows, "chunk_rows", 1)
    reader = _NpyRows(os.fspath(path))
    if not reader.shape:
        raise ValueError(f"{path} holds a 0-d array; from_npy needs at least one dimension")
    return da.from_array(
        reader,
        chunks=(chunk_rows,) + reader.shape[1:],
        meta=np.empty((0,) * len(reader.shape), dtype=reader.dtype),
        asarray=True,
        fancy=False,
    )


# --------------------------------------------------------------------------
# validation (all of it runs before any dask work)
# --------------------------------------------------------------------------
class _Spec:
    """Validated arguments of one ``fit`` call."""

    __slots__ = ("X", "T", "steps", "batches", "shuffle", "seed", "reduction_sum", "callback", "persist", "n_rows")


def _check_model(model):
    if not isinstance(model, Linear):
        raise TypeError(f"model must be a fastlin.Linear, got {type(model).__name__}")
    if model.device != "cpu":
        raise ValueError(
            f"fastlin.dask computes on the workers' CPUs, but the model is on {model.device!r}; "
            "move it with model.to('cpu') first"
        )


def _check_dask_array(a, name, allow_unknown_rows=False):
    if not isinstance(a, da.Array):
        raise TypeError(
            f"{name} must be a dask array, got {type(a).__module__}.{type(a).__name__}; "
            f"use model.fit for in-memory data, or wrap it with dask.array.from_array"
        )
    _validate.check_dtype_kind(a.dtype, name)
    dims = a.chunks[1:] if allow_unknown_rows else a.chunks
    if any(math.isnan(c) for dim in dims for c in dim):
        raise ValueError(
            f"{name} has unknown chunk sizes (NaN in {name}.chunks, as after boolean indexing); "
            f"call {name}.compute_chunk_sizes() first"
        )


def _check_row_chunked(a, name):
    if a.ndim == 2 and a.numblocks[1] != 1:
        raise ValueError(
            f"{name} is chunked along its columns ({name}.chunks[1] = {a.chunks[1]}); fastlin.dask needs "
            f"whole rows in every chunk: use {name} = {name}.rechunk({{1: -1}})"
        )


def _check_training_data(model, X, T):
    """X and T of ``fit`` and ``solve``: dask arrays chunked by rows only, with the
    same row chunks and shapes that fit ``model``.  Returns the number of rows."""
    _check_dask_array(X, "X")
    _check_dask_array(T, "T")
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D dask array (N, {model.in_features}), got shape {X.shape}")
    n_rows, _ = _validate.check_input_shape(X.shape, model.in_features)
    _validate.target_shape(T.shape, n_rows, False, model.out_features)
    _check_row_chunked(X, "X")
    _check_row_chunked(T, "T")
    if T.chunks[0] != X.chunks[0]:
        raise ValueError(
            f"X and T must have the same row chunks, got X.chunks[0] = {X.chunks[0]} and "
            f"T.chunks[0] = {T.chunks[0]}; use T = T.rechunk({{0: X.chunks[0]}})"
        )
    return n_rows


def _check_batch_size(batch_size):
    if batch_size is None or (isinstance(batch_size, str) and batch_size == BATCH_CHUNK):
        return batch_size
    if isinstance(batch_size, str):
        raise ValueError(f"batch_size must be None, {BATCH_CHUNK!r} or a positive integer, got {batch_size!r}")
    return _validate.check_int(batch_size, "batch_size", 1)


def _check_fit(model, X, T, steps, epochs, opt, batch_size, shuffle, seed, reduction, callback, persist):
    _check_model(model)
    if opt is None:  # required here: a cluster fit has no default learning rate
        raise TypeError("opt must be a fastlin.SGD, fastlin.Adam or fastlin.AdamW, got NoneType")
    opt = training.check_optimizer(opt)
    reduction_sum = _validate.check_reduction(reduction)
    steps, epochs, shuffle, seed, callback = training.check_loop_args(steps, epochs, shuffle, seed, callback)
    batch_size = _check_batch_size(batch_size)
    persist = _validate.check_bool(persist, "persist")

    n_rows = _check_training_data(model, X, T)

    spec = _Spec()
    spec.X, spec.T, spec.n_rows = X, T, n_rows
    spec.batches = None if batch_size is None else _batches(X.chunks[0], batch_size)
    per_epoch = 1 if spec.batches is None else len(spec.batches)
    # As Linear.fit: only mini-batches have an order to shuffle, and only a
    # shuffled fit draws a seed (kept in History.seed, to repeat the fit).
    spec.steps, spec.shuffle, spec.seed = training.resolve_loop(steps, epochs, per_epoch, shuffle, seed)
    spec.reduction_sum = reduction_sum
    spec.callback = callback
    spec.persist = persist
    return spec


def _batches(row_chunks, batch_size):
    """Mini-batches as ``(chunk index, first row, end row)`` within their chunk."""
    out = []
    for i, n in enumerate(row_chunks):
        step = n if batch_size == BATCH_CHUNK else batch_size
        out.extend((i, lo, min(lo + step, n)) for lo in range(0, n, max(step, 1)))
    return out


# --------------------------------------------------------------------------
# the fit loop (client side)
# --------------------------------------------------------------------------
class _Fit:
    def __init__(self, model, opt, spec):
        self.model, self.opt, self.spec = model, opt, spec
        self.ops = model._ops
        self.state = opt.state_for(model, self.ops)
        self.tag = uuid.uuid4().hex[:12]

    def _pairs(self):
        """One Delayed per row chunk: ``(x, t)`` in the model's dtype, persisted if asked."""
        spec, m = self.spec, self.model
        xs = spec.X.to_delayed().ravel()
        ts = spec.T.to_delayed().ravel()
        # Empty chunks (possible in dask) add nothing; leaving them out spares
        # every kernel the zero-row case.
        keep = [i for i, n in enumerate(spec.X.chunks[0]) if n]
        pairs = [
            _PAIR(xs[i], ts[i], m.dtype, m.out_features, dask_key_name=f"fastlin-data-{self.tag}-{i}") for i in keep
        ]
        if spec.persist:
            pairs = dask.persist(*pairs, optimize_graph=False)
        return dict(zip(keep, pairs))

    def _params(self, step, n_tasks):
        """``(W, b)`` for this step's ``n_tasks`` chunk tasks: embedded in each
        when that is cheap, else one shared task they all depend on."""
        # Copies: the local threaded scheduler would otherwise hand the live
        # arrays to the tasks, and the update writes into them in place.
        W, b = self.model._W.copy(), self.model._bvec.copy()
        if n_tasks * (W.nbytes + b.nbytes) <= EMBED_PARAM_BYTES:
            return (W, b)
        return dask.delayed((W, b), name=f"fastlin-weights-{self.tag}-{step}", traverse=False)

    def _full_batch_sums(self, pairs, step):
        params = self._params(step, len(pairs))
        has_bias = self.model.has_bias
        level = [
            _PAIR_SUMS(params, pair, has_bias, 0, None, dask_key_name=f"fastlin-sums-{self.tag}-{step}-{i}")
            for i, pair in pairs.items()
        ]
        depth = 0
        while len(level) > 1:
            level = [
                _COMBINE(*level[j : j + SPLIT_EVERY], dask_key_name=f"fastlin-combine-{self.tag}-{step}-{depth}-{k}")
                for k, j in enumerate(range(0, len(level), SPLIT_EVERY))
            ]
            depth += 1
        (sums,) = dask.compute(level[0], optimize_graph=False)
        return sums, self.spec.n_rows

    def _batch_sums(self, pairs, step, batch):
        i, lo, hi = batch
        task = _PAIR_SUMS(
            self._params(step, 1),
            pairs[i],
            self.model.has_bias,
            lo,
            hi,
            dask_key_name=f"fastlin-sums-{self.tag}-{step}-{i}",
        )
        (sums,) = dask.compute(task, optimize_graph=False)
        return sums, hi - lo

    def _order(self, epoch):
        n = len(self.spec.batches)
        if not self.spec.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.spec.seed, epoch)).permutation(n)

    def run(self):
        spec, m, st, ops = self.spec, self.model, self.state, self.ops
        snapshot = training.Snapshot(m, st)
        losses, rates = [], []
        stopped = False
        start = time.perf_counter()
        pairs = self._pairs() if spec.steps else {}
        order, epoch = None, -1
        for step in range(spec.steps):
            if spec.batches is None:
                (sse, gW, gb), n = self._full_batch_sums(pairs, step)
            else:
                k = step % len(spec.batches)
                if k == 0:
                    epoch += 1
                    order = self._order(epoch)
                (sse, gW, gb), n = self._batch_sums(pairs, step, spec.batches[order[k]])
            if spec.reduction_sum:
                loss, scale = sse, 2.0
            else:
                loss, scale = sse / (n * m.out_features), 2.0 / (n * m.out_features)
            # The same check-then-write kernel as Linear.fit's fused step: it
            # refuses a non-finite gradient or update without writing.
            # Asked at every step: a callback may have changed opt.lr.
            hyper, first_step = self.opt.hyper(), int(st.counters[CNT_STEP])
            status = (
                NONFINITE_LOSS
                if not math.isfinite(sse)
                else ops.apply_update(gW, gb, scale, m._W, m._bvec, m.has_bias, st, hyper)
            )
            if status != OK:
                self._fail(status, loss, losses, rates, pairs, snapshot, time.perf_counter() - start)
            losses.append(loss)
            rates.append(self.opt.lr_at(first_step))
            if spec.callback is not None and spec.callback(step + 1, loss):
                stopped = True
                break
        seconds = time.perf_counter() - start
        return History(
            np.array(losses, dtype=np.float64), seconds, spec.seed, stopped_early=stopped, lr=np.array(rates)
        )

    def _fail(self, status, loss, losses, rates, pairs, snapshot, seconds):
        """Raise ValueError (bad data, fit undone) or DivergenceError."""
        checks = [_PAIR_FINITE(pair, dask_key_name=f"fastlin-finite-{self.tag}-{i}") for i, pair in pairs.items()]
        finite = dask.compute(*checks, optimize_graph=False)
        if not all(x for x, _ in finite):
            snapshot.restore()
            raise ValueError(_validate.nonfinite_message("X"))
        if not all(t for _, t in finite):
            snapshot.restore()
            raise ValueError(_validate.nonfinite_message("T"))
        history = History(np.array(losses, dtype=np.float64), seconds, self.spec.seed, lr=np.array(rates))
        raise training.divergence(status, loss, len(losses) + 1, self.opt, history)


# --------------------------------------------------------------------------
# tasks (run on the workers; module-level so they pickle by reference)
# --------------------------------------------------------------------------
def _pair(x, t, dtype, n_out):
    """Row chunk of X and T -> C-contiguous arrays of the model's dtype, T as (n, O)."""
    x = np.ascontiguousarray(x, dtype=dtype)
    t = np.ascontiguousarray(t, dtype=dtype).reshape(x.shape[0], n_out)
    return x, t


def _pair_sums(params, pair, has_bias, lo, hi):
    """``(Σ r², Σ rᵀx, Σ r)`` over rows ``lo:hi`` of one chunk, from one read of x.

    Returns a float and float64 arrays of shapes (O, D) and (O,), unscaled.
    """
    W, b = params
    x, t = pair
    if lo or hi is not None:
        x, t = x[lo:hi], t[lo:hi]  # row slices of C-contiguous arrays stay C-contiguous
    # scale 1 and float64: the raw sums, so the client can add them exactly as
    # the single-machine kernel adds its own chunk partials.  A fresh scratch
    # dict per call: several tasks may run at once in one process.
    sse, dW, db = cpu_ops.mse_grad(x, t, W, b, has_bias, 1.0, {}, dtype=np.float64)
    return float(sse), dW, db


def _combine(*parts):
    """Add partial sums in the order given (chunk order)."""
    sse, dW, db = parts[0]
    dW, db = dW.copy(), db.copy()  # the inputs may be cached results: never add into them
    for s, w, c in parts[1:]:
        sse += s
        dW += w
        db += c
    return sse, dW, db


def _pair_finite(pair):
    x, t = pair
    return cpu_ops.all_finite(x), cpu_ops.all_finite(t)


def _predict_block(x, params, has_bias):
    W, b = params
    x = np.ascontiguousarray(x, dtype=W.dtype)
    y = cpu_ops.forward(x, W, b, has_bias)
    if not cpu_ops.all_finite(y) and not cpu_ops.all_finite(x):
        raise ValueError(_validate.nonfinite_message("X"))
    return y


# Delayed wrappers made once: wrapping a function per call costs a token each time.
_PAIR = dask.delayed(_pair, pure=True)
_PAIR_SUMS = dask.delayed(_pair_sums, pure=True)
_COMBINE = dask.delayed(_combine, pure=True)
_PAIR_FINITE = dask.delayed(_pair_finite, pure=True)


class _NpyRows:
    """Row slices of a C-order ``.npy`` file, read on demand (for :func:`from_npy`).

    Pickles as its path and header fields, so a task graph that holds it stays
    a few hundred bytes whatever the file's size.
    """

    def __init__(self, path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
        if fortran and len(shape) > 1:
            raise ValueError(f"{path} is stored in Fortran order; from_npy reads rows, so save it in C order")
        if dtype.hasobject:
            raise TypeError(f"{path} holds Python objects; from_npy reads numeric arrays only")
        stat = os.stat(path)
        self.path, self.shape, self.dtype, self.offset = path, tuple(shape), dtype, offset
        self.ndim = len(shape)
        self._stamp = (stat.st_size, stat.st_mtime_ns)

    def __dask_tokenize__(self):
        # A rewritten file gets a new token, so dask never reuses stale chunks.
        return (
            "fastlin.dask.from_npy",
            os.path.abspath(self.path),
            self.shape,
            self.dtype.str,
            self.offset,
            self._stamp,
        )

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        rows, rest = key[0], key[1:]
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise IndexError(f"_NpyRows reads contiguous row slices only, got {rows!r}")
        lo, hi, _ = rows.indices(self.shape[0])
        hi = max(hi, lo)
        row_items = math.prod(self.shape[1:])
        with open(self.path, "rb") as f:
            data = np.fromfile(
                f,
                dtype=self.dtype,
                count=(hi - lo) * row_items,
                offset=self.offset + lo * row_items * self.dtype.itemsize,
            )
        if data.size != (hi - lo) * row_items:
            raise OSError(f"{self.path} is shorter than its header says (was it truncated after from_npy?)")
        data = data.reshape((hi - lo,) + self.shape[1:])
        return data[(slice(None),) + rest] if rest else data


# --------------------------------------------------------------------------
# the exact solve: one pass over the chunks
# --------------------------------------------------------------------------
def solve(model, X, T, *, weight_decay=0.0):
    """Set ``model``'s weights to the exact minimiser of its loss on dask
    arrays, in one pass over the chunks; like :meth:`fastlin.Linear.solve`.

    Each row chunk's float64 Gram sums (``Σ xxᵀ``, ``Σ xtᵀ``, ``Σ x``,
    ``Σ t``, ``Σ t²``, shifted by the chunk's first row) are formed on the
    worker that holds the chunk by the kernel behind ``Linear.solve``; the
    (D + 1)² sums are added by a tree of tasks, ``SPLIT_EVERY`` at a time
    and always in chunk order (each moved exactly to the first chunk's
    reference row first), and the client does the same float64 solve as
    ``Linear.solve``.  Nothing is persisted: the data is read once.

    Parameters
    ----------
    model : fastlin.Linear
        A layer on the CPU; its weight (and bias) are set on the client.
    X : dask.array.Array, shape (N, in_features)
        Chunked by rows only; any real dtype (cast to ``model.dtype`` on
        the workers).
    T : dask.array.Array, shape (N, out_features), or (N,) when out_features == 1
        With the same row chunks as X.
    weight_decay : float, default 0
        The L2 penalty on all parameters, as ``Linear.solve``.

    Returns
    -------
    float
        The mean training loss of the new weights (from the sums).

    Raises
    ------
    TypeError, ValueError
        Bad arguments, raised before any dask work starts (the rules of
        :func:`fit`).
    ValueError
        X or T hold NaN or Inf (named); the weights are untouched.

    Notes
    -----
    The result equals ``model.solve`` on the same data in memory up to the
    order of the float64 additions (about 1e-13 relative on well-conditioned
    float64 data, tested to 1e-10).  float32 data is summed in float32 runs
    that follow the chunks, so the two agree to float32's accuracy (tested:
    predictions to 1e-6 relative).
    """
    from . import _solve

    _check_model(model)
    weight_decay = _validate.check_real(weight_decay, "weight_decay", minimum=0.0)
    _check_training_data(model, X, T)

    tag = uuid.uuid4().hex[:12]
    xs = X.to_delayed().ravel()
    ts = T.to_delayed().ravel()
    level = [
        _GRAM_SUMS(
            _PAIR(xs[i], ts[i], model.dtype, model.out_features, dask_key_name=f"fastlin-data-{tag}-{i}"),
            dask_key_name=f"fastlin-gram-{tag}-{i}",
        )
        for i, n in enumerate(X.chunks[0])
        if n
    ]
    depth = 0
    while len(level) > 1:
        level = [
            _ADD_GRAM(*level[j : j + SPLIT_EVERY], dask_key_name=f"fastlin-gram-add-{tag}-{depth}-{k}")
            for k, j in enumerate(range(0, len(level), SPLIT_EVERY))
        ]
        depth += 1
    (result,) = dask.compute(level[0], optimize_graph=False)
    sums, x_ok, t_ok = result
    if not x_ok:
        raise ValueError(_validate.nonfinite_message("X"))
    if not t_ok:
        raise ValueError(_validate.nonfinite_message("T"))
    if not _solve.sums_finite(sums):
        raise ValueError(
            "the sums of squares of X and T overflow float64 (values beyond about 1e150); "
            "scale X and T (e.g. standardise them) before solving"
        )
    return model._set_solution(sums, weight_decay)


def _gram_sums(pair):
    """One chunk's Gram sums, and whether its x and t are finite (scanned
    only when the sums are not, so the happy path reads the chunk once)."""
    from . import _solve

    x, t = pair
    sums = cpu_ops.gram_sums(x, t)
    if _solve.sums_finite(sums):
        return sums, True, True
    return sums, cpu_ops.all_finite(x), cpu_ops.all_finite(t)


def _add_gram(*parts):
    """Add the sums of consecutive chunks, in chunk order."""
    from . import _solve

    sums = _solve.add_sums([p[0] for p in parts])
    return sums, all(p[1] for p in parts), all(p[2] for p in parts)


_GRAM_SUMS = dask.delayed(_gram_sums, pure=True)
_ADD_GRAM = dask.delayed(_add_gram, pure=True)
