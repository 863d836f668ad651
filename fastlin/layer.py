"""The dense layer ``Y = X·Wᵀ + b`` and its training loop.  No kernels here.

Every public method follows one path: validate all arguments (raising before
anything changes), hand clean arrays to the backend chosen at construction,
and translate the backend's status codes into exceptions.
"""

from __future__ import annotations

import math
import os
import threading
from typing import NamedTuple

import numpy as np

from . import _dispatch, _io, _notices, _validate, training
from . import init as _init
from ._errors import DeviceError, ModelFileError
from ._typing import Array, ArrayLike, Callback, Data, Device, DTypeLike, FloatArray, InitFn, Reduction, Seed, StrPath
from .backends.abi import OK
from .history import History
from .optim import Optimizer


class Gradients(NamedTuple):
    """Result of :meth:`Linear.gradients`.

    Attributes
    ----------
    loss : float
    weight : array, shape (out_features, in_features)
        dL/dW in the layer's dtype, on its device.
    bias : array, shape (out_features,), or None for a layer without bias
        dL/db.
    """

    loss: float
    weight: object
    bias: object


# What _install sets: rebuilt on unpickling, never pickled.
_INSTALLED = frozenset(
    (
        "_ops",
        "device",
        "_plain_numpy",
        "out_features",
        "in_features",
        "dtype",
        "_W",
        "_b",
        "_bvec",
        "_scratch",
        "_step_ws",
        "_lock",
    )
)
PICKLE_FORMAT = 1


class _Scratch(threading.local):
    """The kernels' scratch buffers of one model, one dict per thread.

    A thread's dict is made at its first call and kept, so a repeated call
    on one shape allocates no scratch; concurrent calls never share buffers.
    (``step`` uses the model's own ``_step_ws``: it runs under the lock.)
    """

    def __init__(self):
        self.ws = {}


class Linear:
    """A dense layer ``Y = X·Wᵀ + b`` trained by minimising mean squared error.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input sample and each output sample (both >= 1).
    bias : bool, default True
        Learn an additive bias ``b``.
    init : str or callable, default "torch"
        Initialiser name from :mod:`fastlin.init` (``"uniform01"`` is the seed
        post's ``rand``; ``"kaiming_*"``, ``"glorot_*"``, ``"torch"``,
        ``"zeros"``) or a callable ``(rng, out, in) -> (W, b)``.
    dtype : float32 or float64, default float32
        Dtype of the parameters; inputs are cast to it.
    device : {"cpu", "cuda", "auto"}, default "cpu"
        Where parameters live and kernels run.  ``"cuda"`` raises
        :class:`fastlin.DeviceError` when no GPU is usable.
    seed : int or numpy.random.Generator, optional
        Seeds the initialiser.

    Attributes
    ----------
    weight : array, shape (out_features, in_features)
    bias : array, shape (out_features,), or None
        numpy arrays on the CPU (numba device arrays on CUDA).  They are the
        live parameters: training updates them in place.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init: str | InitFn = "torch",
        dtype: DTypeLike = np.float32,
        device: Device = "cpu",
        seed: Seed = None,
    ) -> None:
        in_features = _validate.check_features(in_features, "in_features")
        out_features = _validate.check_features(out_features, "out_features")
        bias = _validate.check_bool(bias, "bias")
        dtype = _validate.float_dtype(dtype)
        initializer = _init.get(init)
        seed = _validate.check_seed(seed)
        device = _dispatch.resolve(device, n_params=out_features * (in_features + 1))

        result = initializer(np.random.default_rng(seed), out_features, in_features)
        # Checked as from_weights checks (finite, no float32 overflow) before any state is set.
        W, b = _init.checked(result, init, out_features, in_features, dtype, bias)
        self._install(device, W, b)

    @classmethod
    def from_weights(cls, weight: ArrayLike, bias: ArrayLike | None = None, *, device: Device = "cpu") -> Linear:
        """Build a layer from existing parameters (copied, never shared).

        Parameters
        ----------
        weight : array-like, shape (out_features, in_features)
            Sets the dtype: float32 (in either byte order) stays float32;
            float64 and any other real dtype (integers included) become
            float64.  Must be finite.
        bias : array-like, shape (out_features,), optional
            Without it the layer has no bias.
        device : {"cpu", "cuda", "auto"}

        Returns
        -------
        Linear
        """
        weight = _validate.host_param(weight, "weight", None)
        if weight.ndim != 2 or weight.size == 0:
            raise ValueError(
                f"weight must be a non-empty 2-D array (out_features, in_features), got shape {weight.shape}"
            )
        if bias is not None:
            bias = _validate.host_param(bias, "bias", weight.dtype)
            if bias.shape != (weight.shape[0],):
                raise ValueError(
                    f"bias must have shape ({weight.shape[0]},) to match weight {weight.shape}, got {bias.shape}"
                )
        device = _dispatch.resolve(device, n_params=weight.size)
        model = cls.__new__(cls)
        model._install(device, weight, bias)
        return model

    def _install(self, device, W, b):
        """Place host parameters on ``device`` (the only place state is set)."""
        ops = _dispatch.backend(device)
        self._ops = ops
        self.device = device
        self._plain_numpy = device == "cpu"  # numpy arrays are the kernels' own inputs (see _data)
        self.out_features, self.in_features = W.shape
        self.dtype = W.dtype
        self._W = ops.from_host(W)
        self._b = None if b is None else ops.from_host(b)
        # Kernels always take a bias vector; a layer without bias passes zeros.
        self._bvec = self._b if b is not None else ops.zeros((W.shape[0],), W.dtype)
        # Kernel scratch belongs to the calling thread, so read-only calls
        # from many threads never share partial sums; training is serialised
        # by the lock (reentrant: a fit's callback may step the same model).
        self._scratch = _Scratch()
        self._step_ws = {}  # step's scratch: used only under the lock
        if not hasattr(self, "_lock"):  # kept across .to(), which reinstalls
            self._lock = threading.RLock()

    # ------------------------------------------------------------------
    # parameters
    # ------------------------------------------------------------------
    @property
    def weight(self) -> Array:
        """The weight, shape (out_features, in_features)."""
        return self._W

    @weight.setter
    def weight(self, value: ArrayLike) -> None:
        value = _validate.host_param(value, "weight", self.dtype)
        if value.shape != self._W.shape:
            raise ValueError(f"weight must have shape {self._W.shape}, got {value.shape}")
        with self._lock:
            self._ops.copy_into(self._W, value)

    @property
    def bias(self) -> Array | None:
        """The bias, shape (out_features,), or None for a layer without bias."""
        return self._b

    @bias.setter
    def bias(self, value: ArrayLike) -> None:
        if self._b is None:
            raise AttributeError("this layer was built with bias=False")
        value = _validate.host_param(value, "bias", self.dtype)
        if value.shape != self._b.shape:
            raise ValueError(f"bias must have shape {self._b.shape}, got {value.shape}")
        with self._lock:
            self._ops.copy_into(self._b, value)

    @property
    def has_bias(self) -> bool:
        """True when the layer has a bias vector."""
        return self._b is not None

    def numpy(self) -> tuple[FloatArray, FloatArray | None]:
        """Host copies of the parameters.

        Returns
        -------
        weight : ndarray, shape (out_features, in_features), the layer's dtype
        bias : ndarray, shape (out_features,), or None without bias
        """
        return self._ops.to_host(self._W), None if self._b is None else self._ops.to_host(self._b)

    def to(self, device: Device) -> Linear:
        """Move the parameters to ``device`` ("cpu", "cuda" or "auto").

        Returns the layer itself (moved in place, as ``torch.nn.Module.to``).
        An optimiser's momentum buffers follow at its next step.
        """
        device = _dispatch.resolve(device, n_params=self.out_features * (self.in_features + 1))
        if device != self.device:
            with self._lock:
                self._install(device, *self.numpy())
        return self

    def copy(self) -> Linear:
        """An independent copy of the layer (same values, dtype and device)."""
        W, b = self.numpy()
        return Linear.from_weights(W, b, device=self.device)

    def save(self, path: StrPath) -> None:
        """Write the layer to ``path`` as a .npz file (read it with :func:`fastlin.load`).

        Atomic: the file is written under a temporary name in the same
        directory, flushed to disk, then renamed over ``path``, so a crash
        leaves the old file or none, never a truncated one.  ``path`` is used
        as given (no ".npz" is appended).
        """
        _io.save(_io.ModelArrays(*self.numpy()), path)

    # ------------------------------------------------------------------
    # pickle and copy
    # ------------------------------------------------------------------
    def __getstate__(self):
        """Plain data for pickle and :mod:`copy`: host copies of the
        parameters and the device's name (never the backend module, the lock
        or the scratch buffers, which :meth:`__setstate__` makes anew).

        Taken under the training lock, so a copy made while another thread
        trains the model waits for that step or fit and never mixes two steps.
        """
        with self._lock:
            weight, bias = self.numpy()
        extra = {k: v for k, v in self.__dict__.items() if k not in _INSTALLED}
        return {"format": PICKLE_FORMAT, "device": self.device, "weight": weight, "bias": bias, "extra": extra}

    def __setstate__(self, state):
        if not isinstance(state, dict) or state.get("format") != PICKLE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"cannot restore a fastlin.Linear from this pickle (format {got!r}; this fastlin reads {PICKLE_FORMAT})"
            )
        device = state["device"]
        if device == "cuda":
            reason = _dispatch.cuda_unavailable_reason()
            if reason is not None:
                raise DeviceError(
                    f"this fastlin.Linear was pickled on CUDA, which cannot be used here: {reason}. "
                    "Move it to the CPU before pickling (model.to('cpu')), or save it with model.save() "
                    "and read it with fastlin.load(path, device='cpu')."
                )
        weight = np.asarray(state["weight"])
        bias = None if state["bias"] is None else np.asarray(state["bias"])
        self.__dict__.update(state["extra"])
        self._install(device, weight, bias)  # copies: out-of-band (read-only) pickle buffers are fine

    def __repr__(self) -> str:
        return (
            f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.has_bias}, dtype={self.dtype.name}, device={self.device!r})"
        )

    # ------------------------------------------------------------------
    # input handling
    # ------------------------------------------------------------------
    def _inputs(self, X):
        """X -> (2-D backend array, n_rows, single_sample)."""
        _notices.note_cast(self, X, "X")  # once per model: a cast copies X at every call
        X = self._ops.as_input(X, "X", self.dtype)
        n_rows, single = _validate.check_input_shape(X.shape, self.in_features)
        if single:
            X = X.reshape(1, self.in_features)
        return X, n_rows, single

    def _targets(self, T, n_rows, single, name="T"):
        _notices.note_cast(self, T, name)
        T = self._ops.as_input(T, name, self.dtype)
        shape = _validate.target_shape(T.shape, n_rows, single, self.out_features, name)
        return T.reshape(shape)

    def _data(self, X, T):
        """``(X, T, n_rows)``: data and targets as the kernels take them.

        The common case on the CPU -- 2-D C-contiguous numpy arrays of the
        model's dtype and shapes -- is recognised in a few attribute reads
        (about 0.4 µs, against 1.7 µs for the general path, on a seed step
        of 6 µs); anything else goes through :meth:`_inputs` and
        :meth:`_targets`, which cast, reshape and explain what is wrong.
        """
        dtype = self.dtype
        if (
            self._plain_numpy
            and type(X) is np.ndarray
            and type(T) is np.ndarray
            and X.dtype is dtype
            and T.dtype is dtype
            and X.ndim == 2
            and T.ndim == 2
            and X.flags.c_contiguous
            and T.flags.c_contiguous
        ):
            n_rows, n_in = X.shape
            if n_rows and n_in == self.in_features and T.shape == (n_rows, self.out_features):
                return X, T, n_rows
        X, n_rows, single = self._inputs(X)
        return X, self._targets(T, n_rows, single), n_rows

    def _check_data(self, X, T, names=("X", "T")):
        """Raise ValueError if X or T holds NaN/Inf (only called after a
        kernel reported a non-finite result, so the happy path pays nothing)."""
        for name, a in zip(names, (X, T)):
            if a is not None and not self._ops.all_finite(a):
                raise ValueError(_validate.nonfinite_message(name))

    # ------------------------------------------------------------------
    # forward, loss, gradients
    # ------------------------------------------------------------------
    def forward(self, X: Data, *, check_finite: bool = True) -> Array:
        """The layer's output ``X·Wᵀ + b`` (also ``model(X)``).

        Parameters
        ----------
        X : array-like, shape (in_features,) or (N, in_features)
            Cast to the layer's dtype.
        check_finite : bool, default True
            If the output holds NaN/Inf, scan X and raise ValueError when X
            is to blame (an overflowing but finite X is returned as is).

        Returns
        -------
        ndarray, shape (out_features,) or (N, out_features), the layer's dtype
        """
        X, _, single = self._inputs(X)
        Y = self._ops.forward(X, self._W, self._bvec, self.has_bias)
        if check_finite and not self._ops.all_finite(Y):
            self._check_data(X, None)
        return Y[0] if single else Y

    __call__ = forward

    def loss(self, X: Data, T: Data, *, reduction: Reduction = "mean", check_finite: bool = True) -> float:
        """Mean squared error of the prediction for X against T, without storing it.

        Parameters
        ----------
        X : array-like, shape (in_features,) or (N, in_features)
        T : array-like, shape (out_features,), (N, out_features), or (N,) when out_features == 1
        reduction : {"mean", "sum"}
            The mean over all N·out_features elements, or their sum.
        check_finite : bool, default True
            On a NaN/Inf loss, raise ValueError naming X or T if they hold NaN/Inf.

        Returns
        -------
        float
        """
        reduction_sum = _validate.check_reduction(reduction)
        X, T, n_rows = self._data(X, T)
        sse = self._ops.model_sse(X, T, self._W, self._bvec, self.has_bias, self._scratch.ws)
        if check_finite and not math.isfinite(sse):
            self._check_data(X, T)
        return sse if reduction_sum else sse / (n_rows * self.out_features)

    def gradients(self, X: Data, T: Data, *, reduction: Reduction = "mean", check_finite: bool = True) -> Gradients:
        """Analytic gradient of the MSE loss; changes nothing.

        With ``R = X·Wᵀ + b − T`` and ``c = 2/(N·O)`` ("mean") or ``2``
        ("sum")::

            dW = c · Rᵀ·X      db = c · Σ_rows R

        Parameters are those of :meth:`loss`.

        Returns
        -------
        Gradients
            ``loss`` (float), ``weight`` (out_features, in_features) and
            ``bias`` (out_features,) or None, in the layer's dtype and on its
            device.
        """
        reduction_sum = _validate.check_reduction(reduction)
        X, n_rows, single = self._inputs(X)
        T = self._targets(T, n_rows, single)
        scale = 2.0 if reduction_sum else 2.0 / (n_rows * self.out_features)
        sse, dW, db = self._ops.mse_grad(X, T, self._W, self._bvec, self.has_bias, scale, self._scratch.ws)
        if check_finite and not math.isfinite(sse):
            self._check_data(X, T)
        loss = sse if reduction_sum else sse / (n_rows * self.out_features)
        return Gradients(loss, dW, db if self.has_bias else None)

    def backward(self, X: Data, dY: Data, *, check_finite: bool = True) -> tuple[Array, Array, Array | None]:
        """Back-propagate an upstream gradient ``dY = dL/dY`` through the layer.

        Nothing is updated; apply the gradients with :meth:`fastlin.SGD.apply`.

        Parameters
        ----------
        X : array-like, shape (in_features,) or (N, in_features)
            The layer's input in the forward pass.
        dY : array-like, shape (out_features,) or (N, out_features)
            dL/dY for the layer's output (N, out_features).
        check_finite : bool, default True
            If dW comes out NaN/Inf, raise ValueError naming X or dY when
            they hold NaN/Inf.

        Returns
        -------
        dX : ndarray, shape like X
            ``dY·W``, the gradient for the layer below.
        dW : ndarray, shape (out_features, in_features)
            ``dYᵀ·X``.
        db : ndarray, shape (out_features,), or None without bias
            ``Σ_rows dY``.

        All in the layer's dtype (sums in float64 inside).
        """
        X, n_rows, single = self._inputs(X)
        dY = self._targets(dY, n_rows, single, name="dY")
        dX, dW, db = self._ops.backward(X, dY, self._W, self._scratch.ws)
        # Any NaN/Inf in X or dY reaches dW = dYᵀ·X, which is small to scan.
        if check_finite and not self._ops.all_finite(dW):
            self._check_data(X, dY, names=("X", "dY"))
        return (dX[0] if single else dX), dW, (db if self.has_bias else None)

    # ------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------
    def step(
        self, X: Data, T: Data, opt: Optimizer, *, reduction: Reduction = "mean", check_finite: bool = True
    ) -> float:
        """One SGD step on the whole of (X, T): forward, loss, gradient and
        update, fused so that X is read once.

        Parameters
        ----------
        X, T, reduction, check_finite
            As for :meth:`loss`.
        opt : SGD
            Its momentum buffers for this layer carry over between calls.

        Returns
        -------
        float
            The loss measured before the update.

        Raises
        ------
        ValueError
            X or T holds NaN/Inf (found only when the loss is not finite, so
            the check costs no extra pass); the weights are untouched.
        DivergenceError
            The loss or the update is NaN/Inf; the weights are untouched.
        """
        if not isinstance(opt, Optimizer):
            raise TypeError(f"opt must be a fastlin.SGD, fastlin.Adam or fastlin.AdamW, got {type(opt).__name__}")
        reduce_sum = _validate.check_reduction(reduction)
        X, T, n_rows = self._data(X, T)
        # Steps and fits of one model run one at a time.  (acquire/release
        # rather than ``with``: half the cost on Python 3.11, on a 6 µs step.)
        self._lock.acquire()
        try:
            loss, status = training.fused_step(self, opt, X, T, reduce_sum)
        finally:
            self._lock.release()
        if status != OK:
            if check_finite:
                self._check_data(X, T)
            raise training.divergence(status, loss, 1, opt, None)
        return loss

    def fit(
        self,
        X: Data,
        T: Data,
        *,
        steps: int | None = None,
        epochs: int | None = None,
        opt: Optimizer | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: Seed = None,
        reduction: Reduction = "mean",
        log_every: int = 0,
        callback: Callback | None = None,
        epoch_callback: Callback | None = None,
        progress: bool = False,
        check_finite: bool = True,
    ) -> History:
        """Train by SGD; the loop runs inside compiled code.

        Parameters
        ----------
        X : array-like, (N, in) or (in,)
        T : array-like, (N, out), (N,) when out == 1, or (out,)
        steps : int, optional
            Number of SGD updates.  Give ``steps`` or ``epochs``; with
            neither, 100 steps (the seed post's loop).
        epochs : int, optional
            Passes over the data (``ceil(N / batch_size)`` steps each).
        opt : SGD, optional
            The optimiser (its momentum state carries over between calls).
        lr : float, optional
            Shorthand for ``opt=SGD(lr)``; default 0.01 when neither is given.
        batch_size : int, optional
            Rows per mini-batch; None (default) trains on the full batch.
        shuffle : bool, default True
            Visit mini-batches in a fresh random order each epoch.
        seed : int, optional
            Seed of the shuffle; drawn at random (and kept in
            ``History.seed``) when omitted.
        reduction : {"mean", "sum"}
        log_every : int, default 0
            Report the loss every this many steps (0: never): printed to
            stdout (``[ Info: step 10/100: loss 0.25``) when logging is not
            configured, else logged at INFO through the ``"fastlin"`` logger
            (see :mod:`fastlin._log`).
        callback : callable, optional
            ``callback(step, loss)`` after every step (1-based); return True
            to stop early.  It makes every step a separate compiled call.
        epoch_callback : callable, optional
            ``epoch_callback(epoch, loss)`` after every epoch (1-based), with
            the epoch's mean loss (its batches' losses weighted by their
            rows); return True to stop.  The steps of an epoch still run in
            one compiled call, so early stopping costs little.
        progress : bool, default False
            Show a progress bar (tqdm when installed).
        check_finite : bool, default True
            On a NaN/Inf loss, scan X and T to report bad data as ValueError
            (the weights are then restored to their values before the fit).

        Returns
        -------
        History
            ``.loss`` (one entry per step), ``.seconds``, ``.seed``.

        Raises
        ------
        DivergenceError
            The loss or weights became NaN/Inf; the weights of the last
            finite step are kept and ``err.history`` holds the steps done.
        """
        reduction_sum = _validate.check_reduction(reduction)
        X, T, n_rows = self._data(X, T)
        steps, epochs, shuffle, seed, callback = training.check_loop_args(steps, epochs, shuffle, seed, callback)
        if epoch_callback is not None and not callable(epoch_callback):
            raise TypeError(f"epoch_callback must be callable, got {type(epoch_callback).__name__}")
        batch_size = _validate.check_int(batch_size, "batch_size", 1, allow_none=True)
        log_every = _validate.check_int(log_every, "log_every", 0)
        progress = _validate.check_bool(progress, "progress")
        check_finite = _validate.check_bool(check_finite, "check_finite")
        opt = training.check_optimizer(opt, lr, cache=self._scratch.ws)  # this thread's dict

        batch = n_rows if batch_size is None else min(batch_size, n_rows)
        steps, shuffle, seed = training.resolve_loop(steps, epochs, -(-n_rows // batch), shuffle, seed)
        self._lock.acquire()  # one fit or step of this model at a time; others wait
        try:
            fit = training.CompiledFit(self, opt, X, T, reduction_sum, batch, shuffle, seed, check_finite)
            rows = None if epoch_callback is None else training.batch_rows(n_rows, batch)
            hooks = training.Hooks(steps, log_every, callback, progress, epoch_callback, rows)
            return fit.run(steps, hooks)
        finally:
            self._lock.release()

    def _apply_gradients(self, opt: Optimizer, weight_grad: ArrayLike, bias_grad: ArrayLike | None) -> None:
        """What ``opt.apply(self, ...)`` runs (the optimiser never updates a model itself)."""
        training.apply_gradients(self, opt, weight_grad, bias_grad)

    def solve(self, X: Data, T: Data, *, weight_decay: float = 0.0, sample_weight: ArrayLike | None = None) -> float:
        """Set the weights to the exact minimiser of the loss, in one read of X.

        Minimises the mean loss plus an L2 penalty on every parameter::

            Σ_i w_i·‖x_i·Wᵀ + b − t_i‖² / (O·Σ_i w_i)  +  weight_decay/2 · (‖W‖² + ‖b‖²)

        (``w_i = 1`` without ``sample_weight``: then the first term is
        :meth:`loss`).  This is the point that :meth:`fit` with
        ``SGD(weight_decay=...)`` converges to (torch's weight decay reaches
        the bias too); for a layer without bias it is ``W`` of
        ``sklearn.linear_model.Ridge(alpha=weight_decay·Σw·O/2,
        fit_intercept=False)``.  With ``weight_decay=0`` it is the
        least-squares solution and, when that is not unique (collinear or
        constant columns, fewer rows than features), the one with the
        smallest ``‖W‖² + ‖b‖²``.

        One pass over X and T forms the float64 sums ``Σ w·xxᵀ``, ``Σ w·xtᵀ``,
        ``Σ w·x``, ``Σ w·t`` and ``Σ w·t²`` (shifted by a reference row, so
        that columns with large offsets, such as timestamps, lose no digits),
        in fixed chunks added in order (the same bits for any number of
        threads).  For float32 data the products are formed in float32 over
        runs of 64 rows and flushed into the float64 sums, as the gradient
        kernels do (measured: sums within about 4e-9 of their largest entry;
        see :mod:`fastlin.backends.cpu_gram`).  Then a float64 solve of size ``in_features + 1``: Cholesky
        when well conditioned, else an eigendecomposition with the
        minimum-norm choice (see :mod:`fastlin._solve` for where that stops).

        Parameters
        ----------
        X : array-like, shape (in_features,) or (N, in_features)
        T : array-like, shape (out_features,), (N, out_features), or (N,) when out_features == 1
        weight_decay : float, default 0
            The penalty (>= 0), as ``SGD(weight_decay=...)``.
        sample_weight : array-like, shape (N,), optional
            Non-negative, finite row weights, not all zero.  A weight k counts
            a row k times.

        Returns
        -------
        float
            The training loss (the first term above) of the new weights as
            stored (rounded to the layer's dtype), computed from the sums (absolute error about
            1e-16 × the variance of T for float64 data, so a perfect fit reads as about 0;
            about 1e-8 × the mean square of T for float32 data).

        Raises
        ------
        TypeError, ValueError
            Bad arguments; X or T holding NaN/Inf (named).  The weights are
            untouched on any error.
        NotImplementedError
            The layer is on a GPU: move it with ``model.to("cpu")`` first, or
            train it with :meth:`fit`.
        """
        from . import _solve

        weight_decay = _validate.check_real(weight_decay, "weight_decay", minimum=0.0)
        X, n_rows, single = self._inputs(X)
        T = self._targets(T, n_rows, single)
        w = _solve.check_sample_weight(sample_weight, n_rows, single)
        sums = self._ops.gram_sums(X, T, w)
        if not all(np.isfinite(a).all() for a in (sums.xx, sums.xt, sums.sx, sums.st, sums.tt)):
            self._check_data(X, T)
            raise ValueError(
                "the sums of squares of X and T overflow float64 (values beyond about 1e150); "
                "scale X and T (e.g. standardise them) before solving"
            )
        return self._set_solution(sums, weight_decay)

    def _set_solution(self, sums, weight_decay):
        """The end of :meth:`solve` (and of :func:`fastlin.dask.solve`): the
        float64 solution of the Gram sums, rounded to the layer's dtype,
        checked, then written; returns its training loss."""
        from . import _solve

        W, b = _solve.layer_solution(sums, self.has_bias, weight_decay)
        W = W.astype(self.dtype)
        b = None if b is None else b.astype(self.dtype)
        if not np.isfinite(W).all() or (b is not None and not np.isfinite(b).all()):
            raise ValueError(
                f"the solution does not fit in {self.dtype.name} (a parameter beyond its range); "
                "scale X and T, or use a float64 layer"
            )
        with self._lock:
            self._ops.copy_into(self._W, W)
            if b is not None:
                self._ops.copy_into(self._b, b)
        return _solve.layer_loss(sums, W, b)


def load(path: StrPath, *, device: Device = "cpu") -> Linear:
    """Read a layer written by :meth:`fastlin.Linear.save`.

    Parameters
    ----------
    path : str or path-like
    device : {"cpu", "cuda", "auto"}
        Where to put the loaded layer.

    Returns
    -------
    Linear
        With the saved dtype (float32 or float64; either byte order is read)
        and bias (or none).

    Raises
    ------
    ModelFileError
        (a ValueError) for every file that cannot be read as a fastlin model,
        saying what it is not or what is wrong: missing (then a
        :class:`fastlin.ModelFileError` that is also a FileNotFoundError), a
        directory, empty, a text file, a single-array .npy, another .npz,
        damaged (a checksum or CRC mismatch, truncated), a format version
        that is not a single integer or not known, invalid parameters.
    TypeError, ValueError, DeviceError
        ``path`` is not path-like, or ``device`` is unknown or unusable
        (checked before the file is read).
    """
    weight, bias = _io.read(path, device=device)
    try:
        return Linear.from_weights(weight, bias, device=device)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{os.fspath(path)!r} holds invalid parameters: {exc}") from exc
