"""The dense layer ``Y = X·Wᵀ + b`` and its training loop.  No kernels here.

Every public method follows one path: validate all arguments (raising before
anything changes), hand clean arrays to the backend chosen at construction,
and translate the backend's status codes into exceptions.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from typing import NamedTuple

import numpy as np

from . import _dispatch, _log, _notices, _validate
from . import init as _init
from ._errors import DeviceError, DivergenceError
from ._progress import progress as _progress
from ._typing import Array, ArrayLike, Callback, Data, Device, DTypeLike, FloatArray, InitFn, Reduction, Seed, StrPath
from .backends.abi import NONFINITE_LOSS, OK, ST_EPOCH
from .history import History
from .optim import SGD

logger = logging.getLogger("fastlin")

DEFAULT_STEPS = 100  # the seed post's loop length
DEFAULT_LR = 0.01
# A fit runs in one compiled call when its work is below this many
# multiply-adds (well under a second); longer fits run in segments of about
# SEGMENT_SECONDS so that logging, progress and Ctrl-C stay responsive.
ONE_CALL_WORK = 1 << 27
SEGMENT_SECONDS = 0.1
# First size of a fit's loss buffer when it runs in segments (it then doubles).
HISTORY_START = 1024


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
    ("_ops", "device", "out_features", "in_features", "dtype", "_W", "_b", "_bvec", "_scratch", "_step_ws", "_lock")
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
        weight = _host_param(weight, "weight", None)
        if weight.ndim != 2 or weight.size == 0:
            raise ValueError(
                f"weight must be a non-empty 2-D array (out_features, in_features), got shape {weight.shape}"
            )
        if bias is not None:
            bias = _host_param(bias, "bias", weight.dtype)
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
        value = _host_param(value, "weight", self.dtype)
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
        value = _host_param(value, "bias", self.dtype)
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
        from ._io import save

        save(self, path)

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
        Y = self._ops.forward(self._W, self._bvec, self.has_bias, X)
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
        X, n_rows, single = self._inputs(X)
        T = self._targets(T, n_rows, single)
        sse = self._ops.model_sse(self._W, self._bvec, self.has_bias, X, T, self._scratch.ws)
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
        sse, dW, db = self._ops.mse_grad(self._W, self._bvec, self.has_bias, X, T, scale, self._scratch.ws)
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
        dX, dW, db = self._ops.backward(self._W, X, dY, self._scratch.ws)
        # Any NaN/Inf in X or dY reaches dW = dYᵀ·X, which is small to scan.
        if check_finite and not self._ops.all_finite(dW):
            self._check_data(X, dY, names=("X", "dY"))
        return (dX[0] if single else dX), dW, (db if self.has_bias else None)

    # ------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------
    def step(self, X: Data, T: Data, opt: SGD, *, reduction: Reduction = "mean", check_finite: bool = True) -> float:
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
        if not isinstance(opt, SGD):
            raise TypeError(f"opt must be a fastlin.SGD, got {type(opt).__name__}")
        reduction_sum = _validate.check_reduction(reduction)
        X, n_rows, single = self._inputs(X)
        T = self._targets(T, n_rows, single)
        # Steps and fits of one model run one at a time.  (acquire/release
        # rather than ``with``: half the cost on Python 3.11, on a 6 µs step.)
        self._lock.acquire()
        try:
            st = opt.state_for(self, self._ops)
            hp = opt.hyper(reduction_sum, self.dtype)
            loss, status = self._ops.fused_step(
                self._W, self._bvec, self.has_bias, st.weight, st.bias, hp, st.flags, X, T, self._step_ws
            )
        finally:
            self._lock.release()
        if status != OK:
            if check_finite:
                self._check_data(X, T)
            raise _divergence(status, loss, 1, opt, None)
        return loss

    def fit(
        self,
        X: Data,
        T: Data,
        *,
        steps: int | None = None,
        epochs: int | None = None,
        opt: SGD | None = None,
        lr: float | None = None,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: Seed = None,
        reduction: Reduction = "mean",
        log_every: int = 0,
        callback: Callback | None = None,
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
        X, n_rows, single = self._inputs(X)
        T = self._targets(T, n_rows, single)
        steps = _validate.check_int(steps, "steps", 0, allow_none=True)
        epochs = _validate.check_int(epochs, "epochs", 0, allow_none=True)
        if steps is not None and epochs is not None:
            raise ValueError("give steps or epochs, not both")
        batch_size = _validate.check_int(batch_size, "batch_size", 1, allow_none=True)
        shuffle = _validate.check_bool(shuffle, "shuffle")
        seed = _validate.check_seed(seed)
        log_every = _validate.check_int(log_every, "log_every", 0)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        progress = _validate.check_bool(progress, "progress")
        check_finite = _validate.check_bool(check_finite, "check_finite")
        if opt is None:
            opt = SGD(DEFAULT_LR if lr is None else lr)
        elif lr is not None:
            raise ValueError("give lr or opt, not both (the optimiser carries its own lr)")
        elif not isinstance(opt, SGD):
            raise TypeError(f"opt must be a fastlin.SGD, got {type(opt).__name__}")

        batch = n_rows if batch_size is None else min(batch_size, n_rows)
        if steps is None:
            steps = DEFAULT_STEPS if epochs is None else epochs * -(-n_rows // batch)
        shuffle = shuffle and batch < n_rows  # a full batch has no order to shuffle
        if shuffle and seed is None:
            seed = random.getrandbits(63)  # kept in History.seed, to repeat the fit
        elif isinstance(seed, np.random.Generator):
            seed = int(seed.integers(1 << 63))
        self._lock.acquire()  # one fit or step of this model at a time; others wait
        try:
            return _Fit(self, opt, X, T, reduction_sum, batch, shuffle, seed, check_finite).run(
                steps, log_every, callback, progress
            )
        finally:
            self._lock.release()

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
        ``Σ w·x``, ``Σ w·t`` and ``Σ w·t²`` (shifted by the first row, so that
        columns with large offsets, such as timestamps, lose no digits), in
        fixed chunks added in order (the same bits for any number of
        threads); then a float64 solve of size ``in_features + 1``: Cholesky
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
            1e-16 × the variance of T, so a perfect fit reads as about 0).

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


class _Fit:
    """One call of ``Linear.fit``: runs the compiled loop in segments and
    turns status codes into exceptions."""

    def __init__(self, model, opt, X, T, reduction_sum, batch, shuffle, seed, check_finite):
        ops = model._ops
        self.model, self.opt, self.ops = model, opt, ops
        self.X, self.T = X, T
        self.seed = seed
        self.check_finite = check_finite
        self.state = opt.state_for(model, ops)
        self.reduction_sum = reduction_sum
        self.plan = ops.fit_plan(X.shape[0], model.out_features, model.in_features, batch, shuffle, seed, model.dtype)
        self.work_per_step = batch * model.out_features * model.in_features
        # Bad data found after some updates must undo them.  Only mini-batch
        # fits can get that far: a full batch meets all of the data at step 1.
        self.needs_snapshot = check_finite and batch < X.shape[0]

    def _snapshot(self):
        ops, m, st = self.ops, self.model, self.state
        return [(dst, ops.to_host(dst)) for dst in (m._W, m._bvec, st.weight, st.bias)], st.flags.copy()

    def _restore(self, snapshot):
        arrays, flags = snapshot
        for dst, saved in arrays:
            self.ops.copy_into(dst, saved)
        self.state.flags[:] = flags

    def _segment(self, done, total, seconds_per_step, hooks):
        """How many steps the next compiled call runs."""
        left = total - done
        if not hooks and left * self.work_per_step <= ONE_CALL_WORK:
            return left
        if seconds_per_step is None:
            return 1  # measure one step first
        return max(1, min(left, int(SEGMENT_SECONDS / max(seconds_per_step, 1e-9))))

    def run(self, total, log_every, callback, progress):
        ops, m, st = self.ops, self.model, self.state
        snapshot = self._snapshot() if self.needs_snapshot else None
        st.flags[ST_EPOCH:] = 0  # a fit starts at epoch 0, row 0
        losses, capacity = None, 0  # allocated, then grown, as the fit goes (steps may be huge)
        bar = _progress(total, progress)
        hooks = bool(log_every or callback or progress)
        done, seconds_per_step, stopped = 0, None, False
        hp = self.opt.hyper(self.reduction_sum, m.dtype)
        start = time.perf_counter()
        try:
            while done < total and not stopped:
                k = 1 if callback else self._segment(done, total, seconds_per_step, hooks)
                if done + k > capacity:
                    # Capacity at least doubles (from HISTORY_START), so copies cost O(1)
                    # a step and memory follows the steps run; a fit run in one call
                    # gets one buffer of exactly its length.
                    end = done + k
                    capacity = total if end == total else min(total, max(end, 2 * capacity, HISTORY_START))
                    grown = ops.empty((capacity,), np.float64)
                    if done:
                        ops.copy_into(grown[:done], losses[:done])
                    losses = grown
                t0 = time.perf_counter()
                n, status = ops.fit_steps(
                    m._W,
                    m._bvec,
                    m.has_bias,
                    st.weight,
                    st.bias,
                    hp,
                    st.flags,
                    self.X,
                    self.T,
                    self.plan,
                    losses[done : done + k],
                )
                seconds_per_step = (time.perf_counter() - t0) / max(n, 1)
                if status != OK:
                    self._fail(status, losses, done, n, snapshot, time.perf_counter() - start)
                if hooks and n:
                    stopped = self._report(ops.to_host(losses[done : done + n]), done, total, log_every, callback, bar)
                    # Asked again after user code ran: a callback may have changed opt.lr.
                    hp = self.opt.hyper(self.reduction_sum, m.dtype)
                done += n
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        history = np.empty(0, dtype=np.float64) if losses is None else ops.to_host(losses[:done])
        return History(history, seconds, self.seed, stopped_early=stopped)

    @staticmethod
    def _report(segment_losses, done, total, log_every, callback, bar):
        """Log, call back and draw progress for the steps just run; True = stop."""
        for j, loss in enumerate(segment_losses.tolist(), start=done + 1):
            if log_every and j % log_every == 0:
                _log.info(logger, "step %d/%d: loss %.9g", j, total, loss)  # printed when logging is not configured
            if callback is not None and callback(j, loss):
                bar.update(j, loss)
                return True
        bar.update(done + len(segment_losses), segment_losses[-1])
        return False

    def _fail(self, status, losses, done, n, snapshot, seconds):
        failed_step = done + n + 1
        loss = float(self.ops.to_host(losses[done + n : done + n + 1])[0])
        if self.check_finite:
            try:
                self.model._check_data(self.X, self.T)
            except ValueError:
                if snapshot is not None:
                    self._restore(snapshot)  # bad data: the fit never happened
                raise
        history = History(self.ops.to_host(losses[: done + n]), seconds, self.seed)
        raise _divergence(status, loss, failed_step, self.opt, history)


def _divergence(status, loss, step, opt, history):
    what = f"the loss is {loss}" if status == NONFINITE_LOSS else "the update would make a weight NaN or Inf"
    return DivergenceError(
        f"training diverged at step {step}: {what}. The weights of the last finite step were kept. "
        f"Try a smaller learning rate (lr={opt.lr}) or scale the inputs (e.g. standardise X).",
        step=step,
        loss=loss,
        history=history,
    )


def _apply_gradients(model, opt, weight_grad, bias_grad):
    """SGD.apply's body: validate the gradients, then update (or raise)."""
    if not isinstance(model, Linear):
        raise TypeError(f"model must be a fastlin.Linear, got {type(model).__name__}")
    ops = model._ops
    gW = _host_param(weight_grad, "weight_grad", np.float64)
    if gW.shape != (model.out_features, model.in_features):
        raise ValueError(f"weight_grad must have shape {(model.out_features, model.in_features)}, got {gW.shape}")
    if model.has_bias:
        if bias_grad is None:
            raise ValueError("this layer has a bias: give bias_grad too")
        gb = _host_param(bias_grad, "bias_grad", np.float64)
        if gb.shape != (model.out_features,):
            raise ValueError(f"bias_grad must have shape ({model.out_features},), got {gb.shape}")
    elif bias_grad is not None:
        raise ValueError("this layer has no bias: bias_grad must be None")
    else:
        gb = np.zeros(model.out_features)
    with model._lock:
        st = opt.state_for(model, ops)
        hp = opt.hyper(False, model.dtype)
        status = ops.sgd_update(model._W, model._bvec, model.has_bias, st.weight, st.bias, hp, st.flags, gW, gb, 1.0)
    if status != OK:
        raise _divergence(status, float("nan"), 1, opt, None)


def _host_param(value, name, dtype):
    """A parameter given by the user -> a finite host numpy array.

    ``dtype`` None picks float32 for float32 input and float64 otherwise.
    """
    # Refuses what data inputs refuse (masked entries, tensors that require
    # grad, NA, non-real dtypes) and values that would overflow ``dtype``.
    arr = _validate.host_numpy(value.copy_to_host() if hasattr(value, "copy_to_host") else value, name)
    if dtype is None:
        dtype = _validate.natural_float_dtype(arr)  # float32 in either byte order
    return _validate.finite_param(arr, name, dtype)
